// SPDX-License-Identifier: GPL-2.0

//! The vCPUs' software TLBs, and the guest-mode/request protocol that lets the zap path flush
//! them (KVM's `vcpu->mode` and `vcpu->requests`, `kvm_make_all_cpus_request()`).
//!
//! The contract (see "Invalidation removes every mapping" and "Translations cached outside the
//! tables" in Documentation/secmmu-protocols.rst).  A software TLB caches translations outside the
//! page tables, so a zap does not remove them.  After `invalidate_range_start()` returns, the
//! primary MMU may free the pages of the range, so by then no vCPU may use a translation, or touch
//! a page, it got before the zap.  The rules that make it so:
//!
//! 1. A vCPU uses its [`SoftTlb`], walks the tables and touches guest pages only in guest mode:
//!    between [`VcpuMode::enter_guest()`] and [`VcpuMode::exit_guest()`], with preemption
//!    disabled, for a bounded time, and without taking any lock there (in particular not the
//!    MMU lock: faults are handled outside guest mode).
//! 2. When `enter_guest()` returns true, the vCPU flushes its TLB before using it.
//! 3. The zap path clears SPTEs, then, still holding the MMU lock, calls
//!    [`VcpuMode::request_flush()`] on every vCPU before it drops the lock ("TLB flush before
//!    dropping the MMU lock").
//!
//! Why it works: a Dekker pairing.  `enter_guest()` stores IN_GUEST, then (after a full fence)
//! reads the requests; `request_flush()` sets the request, then (after a full fence) reads the
//! mode.  With both fences, at least one side sees the other's store:
//!
//! - the vCPU sees the request: it flushes its TLB, and its walks from then on see the zapped
//!   SPTEs (its Acquire read of the request pairs with the Release that set it, after the zap);
//! - or the requester sees the vCPU in guest mode, and waits for it to leave (Acquire on the
//!   mode pairs with the Release of `exit_guest()`, so all the vCPU did in guest mode happened
//!   before `request_flush()` returns), or to take the request on its next entry (Release when
//!   it clears the request, for the same reason).
//!
//! So when `request_flush()` returns, the vCPU has no access in flight through a translation
//! from before the request, and any later one starts with an empty TLB and fresh walks.  A
//! vCPU outside guest mode costs the requester nothing: it gets the flush on its next entry.
//!
//! The requester spins, holding the MMU lock, for at most one guest-mode stretch of each vCPU;
//! that is why guest mode must be short and lock-free.  KVM kicks vCPUs out with an IPI; a
//! vCPU here may poll [`VcpuMode::flush_pending()`] to leave guest mode early.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::{
    mmu::addr::{Gfn, Pfn},
    mmu::level::Level,
    mmu::pgtable::{Translation, WalkFault},
    mmu::prim::{self, fence, AtomicU64, Ordering},
};

/// Entries of a [`SoftTlb`] for each mapping size, indexed by [`Level::idx()`]: like the
/// separate 4K, 2M and 1G arrays of a hardware TLB, so that one huge mapping takes one entry
/// and serves every 4K page under it.
pub(crate) const TLB_ENTRIES: [usize; 3] = [64, 32, 4];

/// Log2 of the size of a 4K page.
const PAGE_SHIFT: u32 = 12;

/// Entry flag: the entry holds a translation.
const TLB_VALID: u8 = 1 << 0;
/// Entry flag: the translation allows writes.
const TLB_WRITABLE: u8 = 1 << 1;
/// Entry flag: the leaf's D is set (or A/D are not kept), so a write needs no walk.
const TLB_DIRTY: u8 = 1 << 2;

/// One cached translation, of the leaf mapping `tag` (the gfn shifted right by its level's
/// [`Level::gfn_shift()`]) to the host pages from `pfn` on, which the host reaches from
/// address `addr` on.
#[derive(Clone, Copy)]
struct TlbEntry {
    tag: u64,
    pfn: Pfn,
    addr: usize,
    flags: u8,
}

impl TlbEntry {
    const EMPTY: TlbEntry = TlbEntry {
        tag: 0,
        pfn: Pfn::new(0),
        addr: 0,
        flags: 0,
    };
}

/// What a TLB hit gives: the host page of the gfn, and the address the host accesses it at
/// (the kernel's direct map, for the module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TlbHit {
    pub(crate) pfn: Pfn,
    pub(crate) addr: usize,
}

/// The tag of the `level`-sized leaf that maps `gfn`: the number of its `level`-sized block.
#[inline]
fn tag(level: Level, gfn: Gfn) -> u64 {
    gfn.align_down(level).raw() >> level.gfn_shift()
}

/// A vCPU's software TLB: direct-mapped arrays, one per mapping size, from a gfn to its host
/// pfn, and the host address of that page, so that a hit costs no lookup of the page's address
/// either.  Only its vCPU's thread touches it, and only in guest mode (see the module
/// documentation).
///
/// A translation is cached at the size of the leaf that maps it, as hardware does.  Two entries
/// of different sizes never both cover a gfn with different translations: a leaf is replaced by
/// one of another size only after it is zapped, and the zap flushes ("Invalidation removes every
/// mapping"; on stage-2, the flush between break and make, "Break-before-make").
///
/// The pages of a huge leaf are one huge page of the host, whose addresses are as contiguous
/// as its pfns (a folio's pages in the direct map): the address of page `i` of a leaf is the
/// address of its first page plus `i` pages.
pub(crate) struct SoftTlb {
    small: [TlbEntry; TLB_ENTRIES[0]],
    large: [TlbEntry; TLB_ENTRIES[1]],
    giant: [TlbEntry; TLB_ENTRIES[2]],
    hits: u64,
    misses: u64,
    flushes: u64,
}

impl Default for SoftTlb {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftTlb {
    /// An empty TLB.
    pub(crate) const fn new() -> Self {
        SoftTlb {
            small: [TlbEntry::EMPTY; TLB_ENTRIES[0]],
            large: [TlbEntry::EMPTY; TLB_ENTRIES[1]],
            giant: [TlbEntry::EMPTY; TLB_ENTRIES[2]],
            hits: 0,
            misses: 0,
            flushes: 0,
        }
    }

    /// The entry that would cache a `level`-sized translation of `gfn`.
    fn entry(&mut self, level: Level, gfn: Gfn) -> &mut TlbEntry {
        let tag = tag(level, gfn);
        let set: &mut [TlbEntry] = match level {
            Level::L4K => &mut self.small,
            Level::L2M => &mut self.large,
            // No format maps 512G leaves: `Level::L1G` only.
            Level::L1G | Level::L512G => &mut self.giant,
        };
        let n = set.len() as u64;
        &mut set[(tag % n) as usize]
    }

    /// The cached translation of `gfn`, if it allows the access: a write needs a writable entry
    /// whose leaf is known dirty, otherwise the walk must set D first.
    pub(crate) fn lookup(&mut self, gfn: Gfn, write: bool) -> Option<TlbHit> {
        let need = if write {
            TLB_VALID | TLB_WRITABLE | TLB_DIRTY
        } else {
            TLB_VALID
        };
        for level in Level::MAPPABLE {
            let e = *self.entry(level, gfn);
            if e.tag == tag(level, gfn) && e.flags & need == need {
                self.hits += 1;
                let off = gfn.offset_in(level);
                return Some(TlbHit {
                    pfn: e.pfn + off,
                    addr: e.addr + ((off as usize) << PAGE_SHIFT),
                });
            }
        }
        self.misses += 1;
        None
    }

    /// Caches `t`, the translation of `gfn` found by a walk, at the size of its leaf: so that
    /// reads (and, if the leaf is writable and dirty, writes) of every gfn the leaf maps need
    /// no walk.  `addr` is the host address of page `t.pfn`.  Replaces whatever the entry held.
    pub(crate) fn fill(&mut self, gfn: Gfn, t: &Translation, addr: usize) {
        let mut flags = TLB_VALID;
        if t.writable {
            flags |= TLB_WRITABLE;
            if t.dirty {
                flags |= TLB_DIRTY;
            }
        }
        let off = gfn.offset_in(t.level);
        *self.entry(t.level, gfn) = TlbEntry {
            tag: tag(t.level, gfn),
            pfn: t.pfn - off,
            addr: addr - ((off as usize) << PAGE_SHIFT),
            flags,
        };
    }

    /// The translation of `gfn` for a read or a `write`: from the TLB, or else from `walk` (the
    /// format's lockless walker), whose translation is then cached with the host address
    /// `address` gives for its page.
    pub(crate) fn translate(
        &mut self,
        gfn: Gfn,
        write: bool,
        walk: impl FnOnce() -> Result<Translation, WalkFault>,
        address: impl FnOnce(Pfn) -> usize,
    ) -> Result<TlbHit, WalkFault> {
        if let Some(hit) = self.lookup(gfn, write) {
            return Ok(hit);
        }
        let t = walk()?;
        let addr = address(t.pfn);
        self.fill(gfn, &t, addr);
        Ok(TlbHit { pfn: t.pfn, addr })
    }

    /// Forgets every translation, of every size.
    pub(crate) fn flush(&mut self) {
        self.small = [TlbEntry::EMPTY; TLB_ENTRIES[0]];
        self.large = [TlbEntry::EMPTY; TLB_ENTRIES[1]];
        self.giant = [TlbEntry::EMPTY; TLB_ENTRIES[2]];
        self.flushes += 1;
    }

    /// Lookups that found a usable translation.
    pub(crate) fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that did not.
    pub(crate) fn misses(&self) -> u64 {
        self.misses
    }

    /// Flushes so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes
    }
}

/// [`VcpuMode`] mode: outside guest mode; the vCPU uses no translation.
pub(crate) const OUTSIDE_GUEST: u64 = 0;
/// [`VcpuMode`] mode: in guest mode; the vCPU may use its TLB and touch guest pages.
pub(crate) const IN_GUEST: u64 = 1;
/// [`VcpuMode`] request: flush the TLB before using it.
pub(crate) const REQ_TLB_FLUSH: u64 = 1 << 0;

/// The part of a vCPU that others look at: whether it is in guest mode, and the requests made to
/// it.  See the module documentation for the protocol.
pub(crate) struct VcpuMode {
    /// [`OUTSIDE_GUEST`] or [`IN_GUEST`]; written only by the vCPU.
    mode: AtomicU64,
    /// `REQ_*` bits: set by requesters, cleared by the vCPU.
    requests: AtomicU64,
}

impl Default for VcpuMode {
    fn default() -> Self {
        Self::new()
    }
}

impl VcpuMode {
    /// A vCPU outside guest mode, with no request pending.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        VcpuMode {
            mode: AtomicU64::new(OUTSIDE_GUEST),
            requests: AtomicU64::new(0),
        }
    }

    /// A vCPU outside guest mode, with no request pending.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        VcpuMode {
            mode: AtomicU64::new(OUTSIDE_GUEST),
            requests: AtomicU64::new(0),
        }
    }

    /// vCPU side: enters guest mode.  Returns true if a TLB flush was requested since the last
    /// entry: the vCPU must then flush its TLB before using it.  Call with preemption disabled,
    /// which stays disabled until [`VcpuMode::exit_guest()`].
    pub(crate) fn enter_guest(&self) -> bool {
        self.mode.store(IN_GUEST, Ordering::Relaxed);
        // Pairs with the fence of `request_flush()`: either we see its request below, or it sees
        // us in guest mode (KVM's `smp_store_mb(vcpu->mode, IN_GUEST_MODE)`).
        fence(Ordering::SeqCst);
        if self.requests.load(Ordering::Relaxed) & REQ_TLB_FLUSH == 0 {
            return false;
        }
        // Acquire: the requester's zaps, made before its Release setting of the request, are
        // visible to our walks from now on.  Release: a requester that sees the request taken
        // knows all we did before, in earlier guest-mode stretches, is over.
        self.requests.fetch_and(!REQ_TLB_FLUSH, Ordering::AcqRel) & REQ_TLB_FLUSH != 0
    }

    /// vCPU side: leaves guest mode.  Release: a requester that sees us outside guest mode sees
    /// every access we made inside it as done.
    pub(crate) fn exit_guest(&self) {
        self.mode.store(OUTSIDE_GUEST, Ordering::Release);
    }

    /// vCPU side, in guest mode: whether a flush was requested, so the vCPU should leave guest
    /// mode soon (the requester is spinning).  A hint only; the flush itself happens on entry.
    pub(crate) fn flush_pending(&self) -> bool {
        self.requests.load(Ordering::Relaxed) & REQ_TLB_FLUSH != 0
    }

    /// Requester side: asks the vCPU to flush its TLB, and waits until it cannot use a
    /// translation from before this call.  Call after the SPTEs were zapped, holding the MMU
    /// lock; never sleeps, but spins while the vCPU is in guest mode with the request pending.
    pub(crate) fn request_flush(&self) {
        // Release: our zaps, before this, are visible to the vCPU that takes the request.
        self.requests.fetch_or(REQ_TLB_FLUSH, Ordering::Release);
        // Pairs with the fence of `enter_guest()`.
        fence(Ordering::SeqCst);
        // Acquire on both: pairs with the Release of `exit_guest()` and of the vCPU taking the
        // request.  A vCPU seen outside guest mode takes the request on its next entry.
        while self.mode.load(Ordering::Acquire) == IN_GUEST
            && self.requests.load(Ordering::Acquire) & REQ_TLB_FLUSH != 0
        {
            prim::cpu_relax();
        }
    }

    /// Whether the vCPU is in guest mode now (a racy snapshot, for tests and statistics).
    pub(crate) fn in_guest(&self) -> bool {
        self.mode.load(Ordering::Relaxed) == IN_GUEST
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn leaf(pfn: u64, level: Level, writable: bool, dirty: bool) -> Translation {
        Translation {
            pfn: Pfn::new(pfn),
            level,
            writable,
            dirty,
            dirtied: false,
        }
    }

    /// Host address of page `pfn` in the tests: anything linear in the pfn.
    fn addr(pfn: Pfn) -> usize {
        0x1000_0000 + ((pfn.raw() as usize) << 12)
    }

    /// [`SoftTlb::lookup()`], checking that the address is that of the pfn.
    fn lookup(tlb: &mut SoftTlb, gfn: u64, write: bool) -> Option<u64> {
        let hit = tlb.lookup(Gfn::new(gfn), write)?;
        assert_eq!(
            hit.addr,
            addr(hit.pfn),
            "gfn {gfn:#x}: address of another page"
        );
        Some(hit.pfn.raw())
    }

    fn fill(tlb: &mut SoftTlb, gfn: u64, t: Translation) {
        tlb.fill(Gfn::new(gfn), &t, addr(t.pfn));
    }

    #[test]
    fn lookup_fill_flush() {
        let mut tlb = SoftTlb::new();
        assert_eq!(lookup(&mut tlb, 5, false), None);
        fill(&mut tlb, 5, leaf(0x1234, Level::L4K, false, false));
        assert_eq!(lookup(&mut tlb, 5, false), Some(0x1234));
        assert_eq!(
            lookup(&mut tlb, 5, true),
            None,
            "read-only entry serves no write"
        );
        fill(&mut tlb, 5, leaf(0x1234, Level::L4K, true, false));
        assert_eq!(
            lookup(&mut tlb, 5, true),
            None,
            "clean entry: the walk must set D"
        );
        assert_eq!(lookup(&mut tlb, 5, false), Some(0x1234));
        fill(&mut tlb, 5, leaf(0x1234, Level::L4K, true, true));
        assert_eq!(lookup(&mut tlb, 5, true), Some(0x1234));
        // Same slot, other gfn: direct-mapped, replaces.
        let alias = 5 + TLB_ENTRIES[0] as u64;
        assert_eq!(lookup(&mut tlb, alias, false), None);
        fill(&mut tlb, alias, leaf(0x99, Level::L4K, false, false));
        assert_eq!(lookup(&mut tlb, 5, false), None);
        assert_eq!(lookup(&mut tlb, alias, false), Some(0x99));
        // gfn 0 in an empty TLB is not a hit on the zeroed entry.
        tlb.flush();
        assert_eq!(lookup(&mut tlb, 0, false), None);
        assert_eq!(lookup(&mut tlb, alias, false), None);
        assert_eq!(
            (tlb.hits(), tlb.misses(), tlb.flushes()),
            (4, 7, 1),
            "hits, misses, flushes"
        );
    }

    /// A huge leaf takes one entry, which serves every 4K page under it (and no other), with
    /// the right pfn; a flush forgets entries of every size.
    #[test]
    fn huge_entries_cover_their_leaf() {
        let mut tlb = SoftTlb::new();
        // gfn 0x40205 is mapped by the 2M leaf of gfns 0x40200..0x40400 at pfn 0x8000.
        fill(&mut tlb, 0x40205, leaf(0x8005, Level::L2M, true, true));
        for gfn in 0x40200..0x40400 {
            assert_eq!(lookup(&mut tlb, gfn, true), Some(0x8000 + gfn - 0x40200));
        }
        assert_eq!(lookup(&mut tlb, 0x401ff, false), None);
        assert_eq!(lookup(&mut tlb, 0x40400, false), None);
        // An alias 2M leaf replaces it.
        let alias = 0x40200 + (TLB_ENTRIES[1] as u64) * 512;
        fill(&mut tlb, alias, leaf(0x10000, Level::L2M, false, false));
        assert_eq!(lookup(&mut tlb, 0x40300, false), None);
        assert_eq!(lookup(&mut tlb, alias + 511, false), Some(0x10000 + 511));
        assert_eq!(
            lookup(&mut tlb, alias + 511, true),
            None,
            "read-only huge entry"
        );
        // 1G leaf: gfns 0x80000..0xc0000 at pfn 0x100000; a 4K entry beside it.
        fill(&mut tlb, 0xbffff, leaf(0x13ffff, Level::L1G, true, false));
        fill(&mut tlb, 0x7, leaf(0x77, Level::L4K, false, false));
        assert_eq!(lookup(&mut tlb, 0x80000, false), Some(0x100000));
        assert_eq!(lookup(&mut tlb, 0xa1234, false), Some(0x121234));
        assert_eq!(
            lookup(&mut tlb, 0xa1234, true),
            None,
            "clean: the walk sets D"
        );
        assert_eq!(lookup(&mut tlb, 0xc0000, false), None);
        assert_eq!(lookup(&mut tlb, 0x7, false), Some(0x77));
        tlb.flush();
        for gfn in [0x7, 0x80000, 0xa1234, alias, 0x40205] {
            assert_eq!(
                lookup(&mut tlb, gfn, false),
                None,
                "gfn {gfn:#x} after flush"
            );
        }
    }

    #[test]
    fn translate_walks_only_on_miss() {
        let mut tlb = SoftTlb::new();
        let mut walks = 0;
        for gfn in 0x200..0x400 {
            let hit = tlb.translate(
                Gfn::new(gfn),
                false,
                || {
                    walks += 1;
                    Ok(leaf(0x1000 + gfn - 0x200, Level::L2M, false, false))
                },
                addr,
            );
            let pfn = Pfn::new(0x1000 + gfn - 0x200);
            assert_eq!(
                hit,
                Ok(TlbHit {
                    pfn,
                    addr: addr(pfn)
                })
            );
        }
        assert_eq!(walks, 1, "one walk for a whole 2M leaf");
        assert_eq!(
            tlb.translate(Gfn::new(0x400), false, || Err(WalkFault::NotPresent), addr),
            Err(WalkFault::NotPresent)
        );
        assert_eq!(
            lookup(&mut tlb, 0x400, false),
            None,
            "a fault caches nothing"
        );
    }

    #[test]
    fn requests_taken_on_entry() {
        let mode = VcpuMode::new();
        assert!(!mode.enter_guest());
        assert!(mode.in_guest());
        mode.exit_guest();
        // Outside guest mode: no wait.
        mode.request_flush();
        mode.request_flush();
        assert!(mode.flush_pending());
        assert!(mode.enter_guest());
        assert!(!mode.flush_pending());
        mode.exit_guest();
        assert!(!mode.enter_guest());
        mode.exit_guest();
    }

    #[test]
    fn requester_waits_for_guest_exit() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        let mode = Arc::new(VcpuMode::new());
        let exited = Arc::new(AtomicBool::new(false));
        // The vCPU entered before the request: the requester must wait for its exit.
        assert!(!mode.enter_guest());
        let requester = {
            let (mode, exited) = (mode.clone(), exited.clone());
            std::thread::spawn(move || {
                mode.request_flush();
                assert!(
                    exited.load(Ordering::Relaxed),
                    "returned while in guest mode"
                );
            })
        };
        while !mode.flush_pending() {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        exited.store(true, Ordering::Relaxed);
        mode.exit_guest();
        requester.join().unwrap();
        assert!(mode.enter_guest());
        mode.exit_guest();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Models of the flush protocol.  A guest page is a loom cell: the requester "frees" it (a
    //! write) after `request_flush()`, the vCPU reads it through a translation in guest mode, so
    //! loom reports any read that is not ordered before the free.  Its value also says whether
    //! the vCPU saw a freed page.

    use super::*;
    use crate::mmu::prim::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// A live page holds this; a freed one anything else.
    const LIVE: u64 = 0x1111;
    const FREED: u64 = 0xdead;

    /// What the vCPU and its requesters share: a leaf per gfn (the pfn + 1, 0 when zapped), the
    /// pages, and the vCPU's guest-mode state.
    struct World {
        sptes: [AtomicU64; 2],
        pages: [UnsafeCell<u64>; 2],
        mode: VcpuMode,
    }

    impl World {
        fn new() -> Arc<World> {
            Arc::new(World {
                // gfn i maps pfn i.
                sptes: [AtomicU64::new(1), AtomicU64::new(2)],
                pages: [UnsafeCell::new(LIVE), UnsafeCell::new(LIVE)],
                mode: VcpuMode::new(),
            })
        }

        /// The zap path: zaps gfn `gfn` under the (implied) MMU lock, flushes, then the primary
        /// MMU frees the page.
        fn zap_and_free(&self, gfn: usize) {
            self.sptes[gfn].store(0, Ordering::Relaxed);
            self.mode.request_flush();
            self.free(gfn);
        }

        /// The primary MMU frees (and reuses) page `pfn`.
        fn free(&self, pfn: usize) {
            self.pages[pfn].with_mut(|p| {
                // SAFETY: loom checks that no vCPU access races with this write.
                unsafe { *p = FREED }
            });
        }

        /// One guest-mode stretch of the vCPU accessing `gfns` through `tlb`.  Returns how many
        /// accesses found a translation.
        fn guest_stretch(&self, tlb: &mut SoftTlb, gfns: &[usize]) -> usize {
            let mut found = 0;
            if self.mode.enter_guest() {
                tlb.flush();
            }
            for &gfn in gfns {
                let hit = tlb.translate(
                    Gfn::new(gfn as u64),
                    false,
                    || {
                        // The walk: Acquire, as the walker's loads are.
                        match self.sptes[gfn].load(Ordering::Acquire) {
                            0 => Err(WalkFault::NotPresent),
                            spte => Ok(Translation {
                                pfn: Pfn::new(spte - 1),
                                level: Level::L4K,
                                writable: false,
                                dirty: false,
                                dirtied: false,
                            }),
                        }
                    },
                    |pfn| pfn.raw() as usize,
                );
                if let Ok(TlbHit { pfn, .. }) = hit {
                    let value = self.pages[pfn.raw() as usize].with(|p| {
                        // SAFETY: loom checks that this read is ordered against the free.
                        unsafe { *p }
                    });
                    assert_eq!(value, LIVE, "vCPU touched a freed page");
                    found += 1;
                }
            }
            self.mode.exit_guest();
            found
        }
    }

    /// (a) A vCPU that filled its TLB before the zap and keeps accessing never uses the stale
    /// translation, or the page, once `request_flush()` returned.
    #[test]
    fn loom_flush_hides_stale_translation() {
        loom::model(|| {
            let world = World::new();
            let mut tlb = SoftTlb::new();
            // The stale entry: filled before the zap.
            assert_eq!(world.guest_stretch(&mut tlb, &[0]), 1);

            let requester = {
                let world = world.clone();
                thread::spawn(move || world.zap_and_free(0))
            };
            world.guest_stretch(&mut tlb, &[0]);
            world.guest_stretch(&mut tlb, &[0]);
            requester.join().unwrap();
            // After the flush, the mapping is gone for good.
            assert_eq!(world.guest_stretch(&mut tlb, &[0]), 0);
        });
    }

    /// (b) An idle vCPU (outside guest mode) does not hold the requester up, and takes the flush
    /// on its next entry.
    #[test]
    fn loom_idle_vcpu_flushes_on_entry() {
        loom::model(|| {
            let world = World::new();
            let mut tlb = SoftTlb::new();
            assert_eq!(world.guest_stretch(&mut tlb, &[0, 1]), 2);

            let requester = {
                let world = world.clone();
                thread::spawn(move || world.zap_and_free(0))
            };
            requester.join().unwrap();
            assert!(world.mode.enter_guest(), "flush request lost");
            tlb.flush();
            assert_eq!(tlb.lookup(Gfn::new(0), false), None);
            world.mode.exit_guest();
            // gfn 1 was not zapped: walked again, still mapped.
            assert_eq!(world.guest_stretch(&mut tlb, &[0, 1]), 1);
        });
    }

    /// (c) Two requesters zap and free different pages while the vCPU runs: each one's flush
    /// covers the vCPU, also when one vCPU flush answers both, or when the second request comes
    /// while the vCPU flushes for the first.  The requesters flush holding the MMU lock, as the
    /// zap path does, so they spin one at a time (two spinning at once would also give loom
    /// endless schedules of the two yielding to each other); the pages are freed after the lock
    /// is dropped, as the primary MMU does after `invalidate_range_start()` returns.
    #[test]
    fn loom_two_requesters() {
        loom::model(|| {
            let world = World::new();
            let mmu_lock = Arc::new(loom::sync::Mutex::new(()));
            let mut tlb = SoftTlb::new();
            assert_eq!(world.guest_stretch(&mut tlb, &[0, 1]), 2);

            let requesters = [0, 1].map(|gfn| {
                let (world, mmu_lock) = (world.clone(), mmu_lock.clone());
                thread::spawn(move || {
                    let guard = mmu_lock.lock().unwrap();
                    world.sptes[gfn].store(0, Ordering::Relaxed);
                    world.mode.request_flush();
                    drop(guard);
                    world.free(gfn);
                })
            });
            world.guest_stretch(&mut tlb, &[0, 1]);
            for r in requesters {
                r.join().unwrap();
            }
            assert_eq!(world.guest_stretch(&mut tlb, &[0, 1]), 0);
        });
    }
}
