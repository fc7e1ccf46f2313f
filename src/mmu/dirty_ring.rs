// SPDX-License-Identifier: GPL-2.0

//! A vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING, `virt/kvm/dirty_ring.c`):
//! the gfns the vCPU dirtied, in entries that userspace maps and reads while
//! the vCPU runs, instead of a bitmap per slot that a harvest scans whole.
//!
//! Each entry goes through three states, its `flags` (KVM's
//! `Documentation/virt/kvm/api.rst`, "KVM_CAP_DIRTY_LOG_RING"):
//!
//! ```text
//!   00 (free) --push by the vCPU--> 01 (dirty) --collect by userspace-->
//!   1X (collected) --reset by SECMMU_RESET_DIRTY_RINGS--> 00
//! ```
//!
//! The vCPU fills an entry's gfn, then publishes it with a release store of
//! DIRTY: userspace, which reads `flags` with acquire, sees the gfn that
//! goes with it. Userspace collects by storing RESET (with release, after
//! its last read of the entry); the reset reads `flags` with acquire, makes
//! the gfn clean again (write-protects it), and frees the entry with a
//! release store of 0 before it moves `reset_index` past it.
//!
//! Two indices, free-running `u32`s: `dirty_index`, the next entry the vCPU
//! fills, moved only by the vCPU; `reset_index`, the next entry a reset
//! frees, moved only by a reset (one at a time: the space's configuration
//! mutex). Entries `[reset_index, dirty_index)` are in use; a reset never
//! goes past `dirty_index`, so an entry userspace marked before the vCPU
//! filled it is not taken for a collected one.
//!
//! The vCPU exits with "ring full" before it enters the guest while the ring
//! is *soft full*, [`RSVD_ENTRIES`] short of full: what one stretch of guest
//! mode can push (a whole page-modification log, and a fault) always fits
//! then, so a push never finds the ring full. If one ever did, the gfn goes
//! into its slot's bitmap instead: nothing is lost.

use super::dirty::PML_ENTRIES;
use super::prim::{AtomicU32, AtomicU64, Ordering};

/// `SECMMU_DIRTY_GFN_F_DIRTY`: pushed by the vCPU, not yet collected.
pub(crate) const GFN_F_DIRTY: u32 = 1 << 0;
/// `SECMMU_DIRTY_GFN_F_RESET`: collected by userspace, to be reset.
pub(crate) const GFN_F_RESET: u32 = 1 << 1;

/// Entries a soft-full ring still has free (KVM's
/// `kvm_dirty_ring_get_rsvd_entries()`: `KVM_DIRTY_RING_RSVD_ENTRIES` plus
/// the PML buffer): a page-modification log flush, and room to spare.
pub(crate) const RSVD_ENTRIES: u32 = PML_ENTRIES as u32 + 64;

/// The most entries a ring may have (`KVM_DIRTY_RING_MAX_ENTRIES`).
pub(crate) const MAX_ENTRIES: u32 = 65536;

/// Bytes of one entry, `struct secmmu_dirty_gfn`.
pub(crate) const ENTRY_BYTES: u32 = 16;

/// One entry, with the layout of `struct secmmu_dirty_gfn`. Userspace may
/// write any value into any field at any time: the fields are atomics, and
/// nothing the kernel reads from them is trusted.
#[repr(C)]
pub(crate) struct RingEntry {
    flags: AtomicU32,
    /// The slot id (bits 15:0; the address space, bits 31:16, is 0).
    slot: AtomicU32,
    /// The page's offset in the slot, in pages.
    offset: AtomicU64,
}

impl RingEntry {
    /// A free entry (the module's are zeroed memory).
    #[cfg(secmmu_host)]
    pub(crate) fn new() -> Self {
        Self {
            flags: AtomicU32::new(0),
            slot: AtomicU32::new(0),
            offset: AtomicU64::new(0),
        }
    }

    /// What userspace sees: `(flags, slot, offset)`, `flags` read with
    /// acquire. For tests, which play userspace.
    #[cfg(secmmu_host)]
    pub(crate) fn read(&self) -> (u32, u32, u64) {
        let flags = self.flags.load(Ordering::Acquire);
        (
            flags,
            self.slot.load(Ordering::Relaxed),
            self.offset.load(Ordering::Relaxed),
        )
    }

    /// Userspace collects the entry: ORs in RESET with release, as
    /// `dirty_ring_collect_dirty_pages()` of KVM's selftests does.
    #[cfg(secmmu_host)]
    pub(crate) fn collect(&self) {
        self.flags.fetch_or(GFN_F_RESET, Ordering::Release);
    }

    /// Userspace writes raw values (a hostile or buggy one).
    #[cfg(secmmu_host)]
    pub(crate) fn scribble(&self, flags: u32, slot: u32, offset: u64) {
        self.slot.store(slot, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
        self.flags.store(flags, Ordering::Release);
    }
}

/// Why a ring size is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingSizeError {
    /// Not a power of two, smaller than a page, or smaller than the
    /// reserved entries (`EINVAL`).
    Invalid,
    /// More than [`MAX_ENTRIES`] entries (`E2BIG`).
    TooBig,
}

/// The number of entries of a ring of `bytes` bytes, checked as
/// KVM's `kvm_vm_ioctl_enable_dirty_log_ring()` checks its size.
pub(crate) fn ring_entries(bytes: u32, page_size: u32) -> Result<u32, RingSizeError> {
    if !bytes.is_power_of_two() || bytes < page_size || bytes < RSVD_ENTRIES * ENTRY_BYTES {
        return Err(RingSizeError::Invalid);
    }
    if bytes / ENTRY_BYTES > MAX_ENTRIES {
        return Err(RingSizeError::TooBig);
    }
    Ok(bytes / ENTRY_BYTES)
}

/// A push found the ring full (the caller puts the gfn in the bitmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingFull;

/// A reset found an entry userspace broke: `flags` neither free, dirty nor
/// collected (RESET without DIRTY, or an unknown bit). The reset stops
/// there: that entry and those after it stay as they are (`EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadEntry {
    /// Its index in the ring.
    pub(crate) index: u32,
    pub(crate) flags: u32,
}

/// A vCPU's dirty ring over the entries `mem` holds (a power of two of
/// them, at least [`RSVD_ENTRIES`]): kernel memory that userspace maps.
///
/// # Concurrency
///
/// One producer, the ring's vCPU ([`DirtyRing::push()`],
/// [`DirtyRing::soft_full()`]: under its mutex), and one resetter at a time
/// ([`DirtyRing::reset()`]: under the space's configuration mutex), running
/// in parallel with each other and with userspace. Calling either from two
/// threads at once corrupts the ring's content, never memory.
pub(crate) struct DirtyRing<M> {
    mem: M,
    /// Entries, a power of two.
    size: u32,
    /// `size - RSVD_ENTRIES`: a ring with this many in use is soft full.
    soft_limit: u32,
    /// The next entry to fill. Release-stored by the vCPU after the entry.
    dirty_index: AtomicU32,
    /// The next entry to reset. Release-stored by the reset after freeing.
    reset_index: AtomicU32,
}

impl<M: AsRef<[RingEntry]>> DirtyRing<M> {
    /// A ring over `mem`, every entry of which is free (zeroed).
    ///
    /// # Panics
    ///
    /// If `mem` does not hold a power of two of entries, at least
    /// [`RSVD_ENTRIES`] and at most [`MAX_ENTRIES`] (see [`ring_entries()`]).
    pub(crate) fn new(mem: M) -> Self {
        Self::with_reserve(mem, RSVD_ENTRIES)
    }

    /// A ring over `mem` that is soft full `rsvd` entries short of full:
    /// [`RSVD_ENTRIES`] in the module, fewer in models of tiny rings.
    ///
    /// # Panics
    ///
    /// If `mem` does not hold a power of two of entries, more than `rsvd`
    /// and at most [`MAX_ENTRIES`].
    pub(crate) fn with_reserve(mem: M, rsvd: u32) -> Self {
        let n = mem.as_ref().len();
        assert!(n.is_power_of_two() && n > rsvd as usize && n <= MAX_ENTRIES as usize);
        let size = n as u32;
        Self {
            mem,
            size,
            soft_limit: size - rsvd,
            dirty_index: AtomicU32::new(0),
            reset_index: AtomicU32::new(0),
        }
    }

    /// The entries.
    pub(crate) fn mem(&self) -> &M {
        &self.mem
    }

    fn entry(&self, index: u32) -> &RingEntry {
        &self.mem.as_ref()[(index & (self.size - 1)) as usize]
    }

    /// Entries in use: pushed and not reset yet. The vCPU's view (it owns
    /// `dirty_index`); acquire on `reset_index` pairs with the reset's
    /// release, so the entries it freed read as free.
    fn used(&self) -> u32 {
        let dirty = self.dirty_index.load(Ordering::Relaxed);
        dirty.wrapping_sub(self.reset_index.load(Ordering::Acquire))
    }

    /// Whether the vCPU must exit with "ring full" rather than enter the
    /// guest (KVM's `kvm_dirty_ring_soft_full()`). vCPU only.
    pub(crate) fn soft_full(&self) -> bool {
        self.used() >= self.soft_limit
    }

    /// Logs page `offset` of slot `slot` (KVM's `kvm_dirty_ring_push()`).
    /// vCPU only.
    pub(crate) fn push(&self, slot: u32, offset: u64) -> Result<(), RingFull> {
        if self.used() >= self.size {
            return Err(RingFull);
        }
        let index = self.dirty_index.load(Ordering::Relaxed);
        let e = self.entry(index);
        e.slot.store(slot, Ordering::Relaxed);
        e.offset.store(offset, Ordering::Relaxed);
        // Publishes the gfn to userspace (KVM: smp_wmb(), then the store).
        e.flags.store(GFN_F_DIRTY, Ordering::Release);
        // Publishes the entry to a reset, which reads it only below this.
        self.dirty_index
            .store(index.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Frees the collected entries from `reset_index` on, in order, up to
    /// the first that userspace has not collected, handing each one's
    /// `(slot, offset)` to `clean` first, which makes the page clean again
    /// (KVM's `kvm_dirty_ring_reset()`; [`Coalesce`] batches them as it
    /// does). Returns how many it freed, or where it stopped on a broken
    /// entry. One resetter at a time.
    pub(crate) fn reset(&self, mut clean: impl FnMut(u32, u64)) -> Result<u32, BadEntry> {
        // Acquire pairs with `push()`: entries below it are filled.
        let dirty = self.dirty_index.load(Ordering::Acquire);
        let mut index = self.reset_index.load(Ordering::Relaxed);
        let mut n = 0;
        while index != dirty {
            let e = self.entry(index);
            // Acquire pairs with userspace's release of RESET: its reads of
            // the entry are done before the entry is reused.
            let flags = e.flags.load(Ordering::Acquire);
            if flags & GFN_F_RESET == 0 {
                break;
            }
            if flags != GFN_F_DIRTY | GFN_F_RESET {
                return Err(BadEntry {
                    index: index & (self.size - 1),
                    flags,
                });
            }
            clean(
                e.slot.load(Ordering::Relaxed),
                e.offset.load(Ordering::Relaxed),
            );
            e.flags.store(0, Ordering::Release);
            index = index.wrapping_add(1);
            // Release: the vCPU that sees the entry as free sees it zeroed.
            self.reset_index.store(index, Ordering::Release);
            n += 1;
        }
        Ok(n)
    }
}

/// Reset entries gathered into runs of one slot within 64 pages (KVM's
/// `kvm_dirty_ring_reset()`, which hands each to
/// `kvm_arch_mmu_enable_log_dirty_pt_masked()`): a vCPU writing pages in
/// order fills consecutive entries with neighbouring gfns.
#[derive(Default)]
pub(crate) struct Coalesce {
    cur: Option<Masked>,
}

/// Pages `offset + i` of slot `slot` for each bit `i` set in `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Masked {
    pub(crate) slot: u32,
    pub(crate) offset: u64,
    pub(crate) mask: u64,
}

impl Coalesce {
    /// Adds page `offset` of slot `slot`; returns the run it ends, if any.
    pub(crate) fn add(&mut self, slot: u32, offset: u64) -> Option<Masked> {
        if let Some(cur) = &mut self.cur {
            if cur.slot == slot {
                if offset >= cur.offset && offset - cur.offset < 64 {
                    cur.mask |= 1 << (offset - cur.offset);
                    return None;
                }
                // Below the run: move its start down if no bit falls off.
                if offset < cur.offset {
                    let delta = cur.offset - offset;
                    if delta < 64 && u64::from(cur.mask.leading_zeros()) >= delta {
                        cur.mask = (cur.mask << delta) | 1;
                        cur.offset = offset;
                        return None;
                    }
                }
            }
        }
        self.cur.replace(Masked {
            slot,
            offset,
            mask: 1,
        })
    }

    /// The run being gathered, if any; the gatherer starts over.
    pub(crate) fn finish(&mut self) -> Option<Masked> {
        self.cur.take()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn ring(n: usize) -> DirtyRing<Vec<RingEntry>> {
        DirtyRing::new((0..n).map(|_| RingEntry::new()).collect())
    }

    #[test]
    fn sizes_are_checked_like_kvm() {
        assert_eq!(ring_entries(0, 4096), Err(RingSizeError::Invalid));
        assert_eq!(
            ring_entries(4096, 4096),
            Err(RingSizeError::Invalid),
            "< rsvd"
        );
        assert_eq!(ring_entries(12288, 4096), Err(RingSizeError::Invalid));
        assert_eq!(ring_entries(16384, 4096), Ok(1024));
        assert_eq!(ring_entries(1 << 20, 4096), Ok(65536));
        assert_eq!(ring_entries(1 << 21, 4096), Err(RingSizeError::TooBig));
        assert_eq!(ring_entries(1 << 31, 4096), Err(RingSizeError::TooBig));
    }

    #[test]
    fn entries_go_free_dirty_collected_free() {
        let r = ring(1024);
        r.push(3, 17).unwrap();
        assert_eq!(r.mem()[0].read(), (GFN_F_DIRTY, 3, 17));
        // Not collected: the reset leaves it.
        assert_eq!(r.reset(|_, _| panic!("not collected")), Ok(0));
        r.mem()[0].collect();
        let mut seen = Vec::new();
        assert_eq!(r.reset(|s, o| seen.push((s, o))), Ok(1));
        assert_eq!(seen, [(3, 17)]);
        assert_eq!(r.mem()[0].read().0, 0);
        assert_eq!(r.reset(|_, _| panic!("nothing")), Ok(0));
    }

    #[test]
    fn soft_full_leaves_room_for_a_pml_flush_and_wraps() {
        let r = ring(1024);
        let soft = 1024 - RSVD_ENTRIES;
        for i in 0..soft {
            assert!(!r.soft_full());
            r.push(0, u64::from(i)).unwrap();
        }
        assert!(r.soft_full());
        // A whole page-modification log still fits, and more.
        for i in 0..RSVD_ENTRIES {
            r.push(0, u64::from(soft + i)).unwrap();
        }
        assert_eq!(r.push(0, 0), Err(RingFull), "hard full");
        // Userspace collects the first 700; the reset frees exactly them.
        for e in &r.mem()[..700] {
            e.collect();
        }
        let mut next = 0;
        assert_eq!(
            r.reset(|_, o| {
                assert_eq!(o, next);
                next += 1;
            }),
            Ok(700)
        );
        assert!(!r.soft_full());
        // Around the end of the ring, many times.
        for round in 0..200u64 {
            r.push(1, round).unwrap();
            let i = (1024 + round as usize) % 1024;
            assert_eq!(r.mem()[i].read(), (GFN_F_DIRTY, 1, round));
            for e in r.mem().iter() {
                if e.read().0 == GFN_F_DIRTY {
                    e.collect();
                }
            }
            assert!(r.reset(|_, _| {}).unwrap() >= 1);
            assert_eq!(r.used(), 0);
        }
    }

    #[test]
    fn reset_stops_at_broken_and_at_unpushed_entries() {
        let r = ring(1024);
        for i in 0..4 {
            r.push(0, i).unwrap();
        }
        // Userspace marks entries the vCPU never filled: not taken.
        for e in &r.mem()[4..] {
            e.scribble(GFN_F_DIRTY | GFN_F_RESET, 9, 9);
        }
        r.mem()[0].collect();
        r.mem()[1].scribble(GFN_F_RESET, 0, 1);
        r.mem()[2].collect();
        let mut n = 0;
        assert_eq!(
            r.reset(|_, _| n += 1),
            Err(BadEntry {
                index: 1,
                flags: GFN_F_RESET
            })
        );
        assert_eq!(n, 1, "the entry before the broken one is reset");
        // Userspace repairs it: the reset goes on, and stops at 3, then 4.
        r.mem()[1].scribble(GFN_F_DIRTY | GFN_F_RESET, 0, 1);
        assert_eq!(r.reset(|_, _| {}), Ok(2));
        r.mem()[3].scribble(GFN_F_DIRTY | GFN_F_RESET | 4, 0, 3);
        assert!(r.reset(|_, _| {}).is_err(), "unknown flag");
        r.mem()[3].collect();
        r.mem()[3].scribble(GFN_F_DIRTY | GFN_F_RESET, 0, 3);
        assert_eq!(r.reset(|_, _| {}), Ok(1));
        assert_eq!(r.used(), 0);
    }

    #[test]
    fn coalesce_gathers_runs_as_kvm() {
        let m = |slot, offset, mask| Masked { slot, offset, mask };
        let mut c = Coalesce::default();
        let mut out = Vec::new();
        for (s, o) in [
            (1, 100),
            (1, 101),
            (1, 98),
            (1, 161),
            (1, 162),
            (2, 0),
            (2, 0),
            (1, 0),
        ] {
            out.extend(c.add(s, o));
        }
        out.extend(c.finish());
        assert_eq!(
            out,
            [
                // 98 moves the start down; 161 is the last page of the run.
                m(1, 98, 1 | 1 << 2 | 1 << 3 | 1 << 63),
                m(1, 162, 1),
                m(2, 0, 1),
                m(1, 0, 1),
            ]
        );
        // A step down that would push a bit off the top starts a new run.
        let mut c = Coalesce::default();
        assert_eq!(c.add(0, 100), None);
        assert_eq!(c.add(0, 163), None);
        assert_eq!(c.add(0, 99), Some(m(0, 100, 1 | 1 << 63)));
        assert_eq!(c.finish(), Some(m(0, 99, 1)));
        assert_eq!(c.finish(), None);
    }

    /// Resets `r`, counting in `cleaned` each page of the runs it gathers.
    fn reset_coalesced(
        r: &DirtyRing<Vec<RingEntry>>,
        cleaned: &mut std::collections::BTreeMap<(u32, u64), u32>,
    ) {
        let mut c = Coalesce::default();
        let mut runs = Vec::new();
        r.reset(|s, o| runs.extend(c.add(s, o))).unwrap();
        runs.extend(c.finish());
        for m in runs {
            for i in (0..64).filter(|i| m.mask & 1 << i != 0) {
                *cleaned.entry((m.slot, m.offset + i)).or_default() += 1;
            }
        }
    }

    /// Every page pushed and collected comes out of a reset exactly once,
    /// whatever the order and the collection pattern.
    #[test]
    fn coalesced_resets_cover_every_collected_page() {
        use crate::test_util::Rng;
        let mut rng = Rng(7);
        let r = ring(1024);
        let mut pushed = std::collections::BTreeMap::<(u32, u64), u32>::new();
        let mut cleaned = std::collections::BTreeMap::<(u32, u64), u32>::new();
        for _ in 0..2000 {
            for _ in 0..rng.below(300) {
                if r.soft_full() {
                    break;
                }
                let (s, o) = (rng.below(3) as u32, rng.below(200));
                r.push(s, o).unwrap();
                *pushed.entry((s, o)).or_default() += 1;
            }
            for e in r.mem().iter() {
                if e.read().0 == GFN_F_DIRTY && rng.below(4) != 0 {
                    e.collect();
                }
            }
            reset_coalesced(&r, &mut cleaned);
        }
        for e in r.mem().iter() {
            if e.read().0 == GFN_F_DIRTY {
                e.collect();
            }
        }
        reset_coalesced(&r, &mut cleaned);
        assert_eq!(r.used(), 0);
        // A run may cover a page twice only if it was pushed twice.
        assert_eq!(
            pushed.keys().collect::<Vec<_>>(),
            cleaned.keys().collect::<Vec<_>>()
        );
        for (k, n) in &cleaned {
            assert!(n <= &pushed[k]);
        }
    }
}
