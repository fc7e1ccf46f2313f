// SPDX-License-Identifier: GPL-2.0

//! What a fault is, whatever its format (KVM's `struct kvm_page_fault`): the
//! guest page a vCPU asked for, the memslot and host page it resolved to, and
//! the size of the leaf it maps, with the two decisions that need no kernel:
//! how large a leaf to map ([`Fault::adjust_level()`], KVM's
//! `kvm_mmu_hugepage_adjust()`) and whether an invalidation makes the fault
//! start over ([`Fault::must_retry()`], KVM's `mmu_invalidate_retry_gfn()`).
//!
//! The kernel glue (`../fault.rs`) drives a fault through its steps: it makes
//! one under the MMU lock ([`Fault::new()`], which also watches the host
//! range), resolves the host page with no lock held
//! ([`Fault::resolved()`]), and installs what [`Fault::block()`] says unless
//! [`Fault::must_retry()`]. The formats' `map()` read it.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::addr::{Gfn, Hva, Pfn};
use crate::mmu::inval::Invalidations;
use crate::mmu::level::Level;
use crate::mmu::memslot::Slot;

/// One fault: what the vCPU asked for, what the host resolved it to, and
/// what gets mapped.
pub(crate) struct Fault {
    /// The faulting guest page, and whether the access writes it.
    pub(crate) gfn: Gfn,
    pub(crate) write: bool,
    /// Whether the leaf is mapped writable (KVM's `fault->map_writable`):
    /// for a write, and for a read whose page the primary MMU already maps
    /// writable ([`Fault::resolved()`]).
    pub(crate) map_writable: bool,
    /// Its memslot, as it was when the fault began.
    pub(crate) slot: Slot,
    /// The memslot set's generation when the fault began.
    generation: u64,
    /// The vCPU whose fault it is: its watch on the host range the fault
    /// may map stands in for KVM's `mmu_seq` ([`Invalidations::watch()`]).
    vcpu: usize,
    /// The user address backing `gfn`.
    pub(crate) hva: Hva,
    /// The host page backing `hva`, as get_user_pages resolved it.
    pfn: Pfn,
    /// The largest leaf the slot allows at `gfn` in tables whose leaves are
    /// at most the fault's `max_level` (a stage-2 walk that starts at
    /// `Level::L2M` has no 1G entry; KVM's `max_level`): the range the
    /// fault watches, and the most [`Fault::adjust_level()`] may map.
    slot_level: Level,
    /// The size of the leaf to install (KVM's `goal_level`).
    pub(crate) level: Level,
    /// A read fault made ahead of any access (SECMMU_PRE_FAULT_MEMORY, KVM's
    /// `fault->prefetch`): the leaf is installed not accessed where the
    /// format keeps an accessed bit (KVM's `make_spte()` marks prefetched
    /// SPTEs for access tracking).
    pub(crate) prefetch: bool,
}

impl Fault {
    /// The vCPU whose fault it is.
    pub(crate) fn vcpu(&self) -> usize {
        self.vcpu
    }

    /// Begins a fault of vCPU `vcpu` on `gfn` of `slot`, which the memslot set
    /// of generation `generation` holds, in tables whose leaves are at most
    /// `max_level`: the fault watches the host range of the largest leaf the
    /// slot allows it, which contains whatever it maps in the end, so that
    /// every invalidation of that range that begins from now on makes it
    /// retry ("Invalidation and the retry sequence" in
    /// Documentation/secmmu-protocols.rst). `inval` is borrowed from the MMU
    /// lock, either side. The fault maps 4K until [`Fault::adjust_level()`].
    pub(crate) fn new(
        inval: &Invalidations,
        vcpu: usize,
        gfn: Gfn,
        write: bool,
        slot: &Slot,
        generation: u64,
        max_level: Level,
    ) -> Self {
        Self::new_around(inval, vcpu, gfn, write, slot, generation, max_level, 1)
    }

    /// Begins a fault as [`Fault::new()`] that may also map the pages of
    /// its fault-around window of `around` pages ([`Fault::around()`]): it
    /// watches the union of the two host ranges, so that the faults of the
    /// window's pages ([`Fault::new_neighbour()`]) retry, as its own does,
    /// for any invalidation of what they map that begins from now on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_around(
        inval: &Invalidations,
        vcpu: usize,
        gfn: Gfn,
        write: bool,
        slot: &Slot,
        generation: u64,
        max_level: Level,
        around: u64,
    ) -> Self {
        let slot_level = slot.max_level(gfn, max_level);
        let mut fault = Fault {
            gfn,
            write,
            map_writable: write,
            slot: *slot,
            generation,
            vcpu,
            hva: slot.gfn_to_hva(gfn),
            pfn: Pfn::new(0),
            slot_level,
            level: slot_level,
            prefetch: false,
        };
        let (mut start, mut end) = fault.hva_range();
        if around > 1 {
            // One range: the slot maps its gfns onto consecutive user
            // addresses, and the window holds `gfn`, which the leaf's range
            // holds too.
            let (first, last) = fault.around(around);
            start = start.min(slot.gfn_to_hva(first));
            end = end.max(slot.gfn_to_hva(last - 1).add_pages(1));
        }
        inval.watch(vcpu, start, end);
        fault.level = Level::L4K;
        fault
    }

    /// The fault-around window of `pages` pages (a power of two, at most a
    /// last-level table's 512): the gfns `[first, end)` of the aligned group
    /// of `pages` that holds the fault's gfn, less what lies outside its
    /// slot. Always inside one last-level table, which a 4K leaf of the
    /// fault leaves linked (KVM's `__direct_pte_prefetch()` takes the
    /// aligned group of `PTE_PREFETCH_NUM` in the faulting SPTE's table).
    pub(crate) fn around(&self, pages: u64) -> (Gfn, Gfn) {
        debug_assert!(pages.is_power_of_two() && pages <= Level::L2M.pages());
        let first = self.gfn.raw() & !(pages - 1);
        let first = first.max(self.slot.base_gfn.raw());
        let end = (first | (pages - 1)) + 1;
        let end = end.min(self.slot.end_gfn().raw());
        (Gfn::new(first), Gfn::new(end))
    }

    /// The fault of the fault-around of `self` on `gfn`, a page of its
    /// window ([`Fault::around()`]) other than its own, whose host page the
    /// primary MMU maps at 4K or more: made ahead of any access (not
    /// accessed where the format can tell), mapped 4K, writable if
    /// `writable`, and covered by `self`'s watch ([`Fault::new_around()`]).
    pub(crate) fn new_neighbour(&self, gfn: Gfn, pfn: Pfn, writable: bool) -> Self {
        debug_assert!(self.slot.contains(gfn) && gfn != self.gfn);
        Fault {
            gfn,
            write: false,
            map_writable: writable,
            slot: self.slot,
            generation: self.generation,
            vcpu: self.vcpu,
            hva: self.slot.gfn_to_hva(gfn),
            pfn,
            slot_level: Level::L4K,
            level: Level::L4K,
            prefetch: true,
        }
    }

    /// Begins the read fault of a pre-fault batch (SECMMU_PRE_FAULT_MEMORY)
    /// on `gfn` of `slot`, as [`Fault::new()`] but without a watch of its
    /// own: the batch watches for all its faults ([`Fault::watch_batch()`],
    /// called before any of its pages is resolved).
    pub(crate) fn new_prefetch(
        vcpu: usize,
        gfn: Gfn,
        slot: &Slot,
        generation: u64,
        max_level: Level,
    ) -> Self {
        let slot_level = slot.max_level(gfn, max_level);
        Fault {
            gfn,
            write: false,
            map_writable: false,
            slot: *slot,
            generation,
            vcpu,
            hva: slot.gfn_to_hva(gfn),
            pfn: Pfn::new(0),
            slot_level,
            level: Level::L4K,
            prefetch: true,
        }
    }

    /// Vcpu `vcpu` is about to resolve the host pages of the gfns `[first,
    /// end)` of `slot` (non-empty, all in the slot) for a pre-fault batch:
    /// it watches the union of the host ranges the faults of these gfns
    /// watch one by one (the largest leaf the slot allows at each, so
    /// whatever any of them maps in the end), one range since the slot maps
    /// its gfns onto consecutive user addresses. [`Fault::must_retry()`] of
    /// each [`Fault::new_prefetch()`] fault of the batch then holds as for a
    /// fault that watched alone: an invalidation of what it maps that began
    /// since the watch makes it retry ("Invalidation and the retry
    /// sequence" in Documentation/secmmu-protocols.rst); one of another
    /// page of the batch makes it retry too, for nothing, which is rare.
    pub(crate) fn watch_batch(
        inval: &Invalidations,
        vcpu: usize,
        slot: &Slot,
        first: Gfn,
        end: Gfn,
        max_level: Level,
    ) {
        debug_assert!(first < end && slot.contains(first) && slot.contains(end - 1));
        // Blocks are aligned: the first gfn's block starts lowest and the
        // last gfn's ends highest, unless a gfn in between has a larger
        // one, which then contains the first's or the last's (the slot
        // allows a level at one gfn of an aligned block iff at all of
        // them). Taking each gfn's block keeps that argument out of the
        // proof, for a few shifts per page.
        let mut lo = u64::MAX;
        let mut hi = 0;
        let mut gfn = first;
        while gfn < end {
            let level = slot.max_level(gfn, max_level);
            let start = gfn.align_down(level);
            lo = lo.min(start.raw());
            hi = hi.max(start.raw() + level.pages());
            gfn += 1;
        }
        let base = slot.base_gfn.raw();
        let start = slot.userspace_addr.add_pages(lo - base);
        inval.watch(vcpu, start, start.add_pages(hi - lo));
    }

    /// The host page get_user_pages resolved the fault's `hva` to, whether
    /// the primary maps it `writable` (always, for a write fault), and how
    /// large the primary MMU maps it now (a snapshot, see
    /// [`Fault::adjust_level()`]).
    pub(crate) fn resolved(
        &mut self,
        pfn: Pfn,
        writable: bool,
        host_level: impl FnOnce() -> Level,
    ) {
        debug_assert!(writable || !self.write);
        self.pfn = pfn;
        self.map_writable = writable;
        self.adjust_level(host_level);
    }

    /// The first gfn and pfn of the `level`-sized block the fault maps.
    pub(crate) fn block(&self) -> (Gfn, Pfn) {
        let off = self.gfn.offset_in(self.level);
        (self.gfn - off, self.pfn - off)
    }

    /// The user range the mapping covers, `[start, end)`.
    fn hva_range(&self) -> (Hva, Hva) {
        let start = self.hva.sub_pages(self.gfn.offset_in(self.level));
        (start, start.add_pages(self.level.pages()))
    }

    /// Sizes the mapping (KVM's `kvm_mmu_hugepage_adjust()`): the largest
    /// leaf up to `max_level` that the slot allows (`Slot::max_level()`:
    /// same alignment, whole range in the slot) and the primary MMU maps
    /// `hva` with now, never the folio size alone: a PTE-mapped THP or a
    /// partly unmapped huge page is mapped 4K.
    ///
    /// The primary's level is a snapshot taken after get_user_pages: it may
    /// split right after, but only inside an invalidation of the huge
    /// range, which makes [`Fault::must_retry()`] over that range (the
    /// fault's watch predates the lookup and covers every level the slot
    /// allows) send the fault round again.
    fn adjust_level(&mut self, host_level: impl FnOnce() -> Level) {
        let mut level = self.slot_level;
        if level > Level::L4K {
            level = level.min(host_level());
        }
        // A huge host page maps its pfns in order; should it not (the pfn
        // of the faulting page is not where a huge page of the level would
        // put it), map what is known to be right.
        while level > Level::L4K {
            // The pfn sits where a huge page of the level would put it.
            if self.pfn.offset_in(level) == self.gfn.offset_in(level) {
                break;
            }
            level = match level {
                Level::L1G => Level::L2M,
                _ => Level::L4K,
            };
        }
        self.level = level;
    }

    /// Whether the fault must start over: the memslot set's generation is
    /// no longer `generation` (that of the set current under the MMU lock),
    /// or an invalidation of any of the host range the fault maps began
    /// since it started watching that range, or is in progress. `inval` is
    /// borrowed from an MMU lock guard, either side: invalidations change
    /// the retry state with the lock held for write before they zap, so a
    /// fault that passes this check installs before the zap and is zapped
    /// by it (KVM's `mmu_invalidate_retry_gfn()`, but by range whether the
    /// invalidation has ended or not: an invalidation of other memory never
    /// makes it retry).
    ///
    /// The whole huge range is checked, not only the faulting page: the
    /// primary MMU splits a huge mapping, or unmaps part of it, only inside
    /// an invalidation of (at least) that part, so a split or partial unmap
    /// that ran after the fault began, and so maybe after the host level was
    /// looked up, makes the fault retry and look again.
    pub(crate) fn must_retry(&self, inval: &Invalidations, generation: u64) -> bool {
        let (start, end) = self.hva_range();
        generation != self.generation || inval.fault_must_retry(self.vcpu, start, end)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mmu::memslot::{SlotLimits, SlotRequest};

    const LIMITS: SlotLimits = SlotLimits {
        gpa_bits: 48,
        user_end: 1 << 47,
    };

    fn slot(gpa: u64, size: u64, hva: u64) -> Slot {
        let req = SlotRequest {
            id: 0,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        };
        Slot::validate(&req, &LIMITS).unwrap()
    }

    /// Every combination of where the slot puts the gfn (how its guest and
    /// user addresses agree), how large the primary maps the page, where
    /// the pfn sits in its huge page and the tables' largest leaf: the leaf
    /// is never larger than any of them allows, its block lies whole in the
    /// slot and maps the faulting pfn at the faulting gfn, and it is the
    /// largest they all allow.
    #[test]
    fn adjust_level_takes_the_largest_leaf_everything_allows() {
        const G1: u64 = 1 << 30;
        const M2: u64 = 2 << 20;
        let inval = Invalidations::new().unwrap();
        let mut seen = [0u32; 3];
        for (gpa, hva_off) in [
            (G1, 0),
            (G1, M2),
            (G1, 4096),
            (G1 + M2, 0),
            (G1 + 4096, 4096),
        ] {
            let s = slot(gpa, 2 * G1, 0x40_0000_0000 + hva_off);
            for page in [0u64, 1, 511, 512, 0x3ffff, 0x40000 + 7] {
                let gfn = s.base_gfn + page;
                for host in Level::MAPPABLE {
                    for pfn_off in [0u64, 3, 512, 0x3ffff] {
                        for max in Level::MAPPABLE {
                            let mut f = Fault::new(&inval, 0, gfn, false, &s, 0, max);
                            // The host page of `gfn`: where a huge page of
                            // `host`'s size at 1T would put it, or off by
                            // `pfn_off`.
                            let pfn = Pfn::new((1 << 28) + gfn.offset_in(host) + pfn_off);
                            f.resolved(pfn, false, || host);
                            let l = f.level;
                            let (g, p) = f.block();
                            assert!(l <= host && l <= max, "{l:?} {host:?} {max:?}");
                            assert!(
                                g.is_aligned(l) && s.contains(g) && s.contains(g + (l.pages() - 1))
                            );
                            assert_eq!(p + (gfn - g), pfn);
                            assert_eq!(pfn.offset_in(l), gfn.offset_in(l));
                            // The largest: the next size up is refused by
                            // one of them.
                            if let Some(up) = l.larger().filter(|&u| u <= Level::MAX_LEAF) {
                                assert!(
                                    up > host
                                        || up > max
                                        || s.max_level(gfn, up) < up
                                        || pfn.offset_in(up) != gfn.offset_in(up),
                                    "{l:?} could be {up:?}"
                                );
                            }
                            seen[l.idx()] += 1;
                        }
                    }
                }
            }
        }
        // Every size came out somewhere.
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    /// A pre-fault batch's one watch covers what every fault of the batch
    /// may map (`fault_must_retry()` asserts it in debug builds), whatever
    /// the batch's place and length and the slot's alignment: none retries
    /// while nothing is invalidated, and an invalidation of any page one of
    /// them maps makes that one retry.
    #[test]
    fn watch_batch_covers_every_fault_of_the_batch() {
        const G1: u64 = 1 << 30;
        const M2: u64 = 2 << 20;
        for (gpa, hva_off) in [(G1, 0), (G1, 4096), (G1 + M2 - 4096 * 3, 0)] {
            let s = slot(gpa, 2 * G1, 0x40_0000_0000 + hva_off);
            for first in [0u64, 1, 509, 511, 512, 0x3ffff - 3, s.npages - 64] {
                for len in [1u64, 3, 64] {
                    let len = len.min(s.npages - first);
                    let start = s.base_gfn + first;
                    for max in Level::MAPPABLE {
                        let mut inval = Invalidations::new().unwrap();
                        Fault::watch_batch(&inval, 5, &s, start, start + len, max);
                        for host in Level::MAPPABLE {
                            for p in 0..len {
                                let g = start + p;
                                let mut f = Fault::new_prefetch(5, g, &s, 9, max);
                                assert!(f.prefetch && !f.write);
                                f.resolved(Pfn::new((1 << 28) + g.offset_in(host)), false, || host);
                                assert!(!f.must_retry(&inval, 9));
                                assert!(f.must_retry(&inval, 10));
                            }
                        }
                        // The last page's block, invalidated: its fault retries.
                        let g = start + (len - 1);
                        let mut f = Fault::new_prefetch(5, g, &s, 9, max);
                        f.resolved(Pfn::new((1 << 28) + g.offset_in(Level::L4K)), false, || {
                            Level::L4K
                        });
                        let h = s.gfn_to_hva(g);
                        inval.begin(h, h.add_pages(1));
                        assert!(inval.end());
                        assert!(f.must_retry(&inval, 9));
                    }
                }
            }
        }
    }

    /// A fault-around window is the aligned group of its size that holds the
    /// fault's gfn, clipped to the slot, inside one last-level table; the
    /// fault's watch covers every neighbour's fault (`fault_must_retry()`
    /// asserts it in debug builds), which retries for an invalidation of
    /// its page and not while nothing is invalidated, whatever the slot's
    /// alignment (down to 4K leaves only) and the gfn's place.
    #[test]
    fn around_window_and_watch_cover_every_neighbour() {
        const G1: u64 = 1 << 30;
        const M2: u64 = 2 << 20;
        for (gpa, size, hva_off) in [
            (G1, 2 * G1, 0),
            (G1, 2 * G1, 4096),
            (G1 + M2 - 4096 * 5, 40 * 4096, 0),
            (G1 + 4096 * 3, 9 * 4096, 4096),
        ] {
            let s = slot(gpa, size, 0x40_0000_0000 + hva_off);
            for page in [0u64, 1, 5, 15, 16, 63, 511, 512, s.npages - 1] {
                if page >= s.npages {
                    continue;
                }
                let gfn = s.base_gfn + page;
                for pages in [2u64, 8, 16, 64] {
                    for max in Level::MAPPABLE {
                        let mut inval = Invalidations::new().unwrap();
                        let f = Fault::new_around(&inval, 2, gfn, false, &s, 4, max, pages);
                        let (first, end) = f.around(pages);
                        assert!(first <= gfn && gfn < end && s.contains(first));
                        assert!(s.contains(end - 1));
                        assert!(end - first <= pages);
                        assert_eq!(first.raw() / pages, (end.raw() - 1) / pages);
                        assert_eq!(
                            first.align_down(Level::L2M),
                            (end - 1).align_down(Level::L2M)
                        );
                        // Whole unless the slot cut it.
                        if (end - first) < pages {
                            assert!(first == s.base_gfn || end == s.end_gfn());
                        }
                        let mut g = first;
                        while g < end {
                            if g != gfn {
                                let n = f.new_neighbour(g, Pfn::new(0x1000 + g.raw()), true);
                                assert!(n.prefetch && !n.write && n.map_writable);
                                assert_eq!(n.level, Level::L4K);
                                assert!(!n.must_retry(&inval, 4));
                                assert!(n.must_retry(&inval, 5));
                            }
                            g += 1;
                        }
                        // The window's last page invalidated: its fault
                        // retries, and so does the fault itself (one watch).
                        let last = end - 1;
                        let h = s.gfn_to_hva(last);
                        inval.begin(h, h.add_pages(1));
                        assert!(inval.end());
                        if last != gfn {
                            let n = f.new_neighbour(last, Pfn::new(0x1000), true);
                            assert!(n.must_retry(&inval, 4));
                        }
                    }
                }
            }
        }
    }

    /// A fault retries for an invalidation that began since it was made over
    /// any of what it watches (the largest leaf its slot allows: here 1G,
    /// although it maps 2M), for one in progress over its block, or for a
    /// new memslot generation; not for one outside what it watches, nor for
    /// one that ended before it began.
    #[test]
    fn must_retry_follows_the_watch_and_the_generation() {
        let s = slot(1 << 30, 1 << 30, 0x7000_0000_0000);
        let gfn = s.base_gfn + 0x203;
        let hva = s.gfn_to_hva(gfn);
        let mut inval = Invalidations::new().unwrap();
        inval.begin(hva, hva.add_pages(1));
        assert!(inval.end());
        let mut f = Fault::new(&inval, 3, gfn, true, &s, 7, Level::L1G);
        f.resolved(Pfn::new(0x80203), true, || Level::L2M);
        assert_eq!(f.level, Level::L2M);
        assert!(!f.must_retry(&inval, 7));
        assert!(f.must_retry(&inval, 8));
        // Outside the watched 1G: just below the slot, and just above it.
        let below = s.userspace_addr.sub_pages(1);
        let above = s.userspace_addr.add_pages(s.npages);
        for h in [below, above] {
            inval.begin(h, h.add_pages(1));
            assert!(!f.must_retry(&inval, 7));
            assert!(inval.end());
        }
        assert!(!f.must_retry(&inval, 7));
        // Inside the watch, outside the 2M block: the primary may have
        // changed what the host level was read from.
        let far = s.userspace_addr.add_pages(s.npages - 1);
        inval.begin(far, far.add_pages(1));
        assert!(f.must_retry(&inval, 7));
        assert!(inval.end());
        assert!(f.must_retry(&inval, 7));
        // Watching again after the end: quiet.
        let mut f = Fault::new(&inval, 3, gfn, true, &s, 7, Level::L1G);
        f.resolved(Pfn::new(0x80203), true, || Level::L2M);
        assert!(!f.must_retry(&inval, 7));
    }
}
