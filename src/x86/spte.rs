// SPDX-License-Identifier: GPL-2.0

//! EPT-format shadow page-table entries (SPTEs), after KVM's `arch/x86/kvm/mmu/spte.h`.
//!
//! | bits  | name          | meaning                                                        |
//! |-------|---------------|----------------------------------------------------------------|
//! | 0     | R             | readable                                                       |
//! | 1     | W             | writable                                                       |
//! | 2     | X             | executable                                                     |
//! | 5:3   | MT            | memory type, leaf only (always write-back here)                |
//! | 6     | IPAT          | ignore guest PAT, leaf only                                    |
//! | 7     | PS            | maps a page at 2M or 1G instead of pointing at a table         |
//! | 8     | A             | accessed                                                       |
//! | 9     | D             | dirty, leaf only                                               |
//! | 11    | MMU-present   | software: present for the MMU (linked in an rmap), even when   |
//! |       |               | access-tracked with R=W=X=0; KVM's `SPTE_MMU_PRESENT_MASK`     |
//! | 51:12 | PFN           | host page frame number of the page or of the next table        |
//! | 54:52 | saved R/W/X   | software: permissions of an access-tracked SPTE                |
//! | 55    | MMU-writable  | software: the MMU allows making the SPTE writable              |
//! | 56    | host-writable | software: the host page may be written through this mapping    |
//! | 60    | A/D disabled  | software: A and D are not kept by the page walker (see below)  |
//!
//! A non-present SPTE is 0.  Unlike KVM: W is saved together with R and X when access-tracking
//! (so host-writable moved from bit 53 to 56), there is no user-execute (MBEC) bit, no
//! suppress-#VE bit, and the A/D mode is one bit (no write-protect-only mode for PML).
//!
//! With A/D enabled, the walkers (the "hardware") set A and D themselves, with atomic ORs, at any
//! time and without the MMU lock; aging clears A.  With A/D disabled, A and D are plain software
//! bits and accesses are detected by access tracking instead: the SPTE keeps MMU-present but
//! loses R/W/X, saved in bits 54:52, so the next access faults and the fault restores them.
//!
//! Every other change of an SPTE happens under the MMU lock for write.  The helpers here order
//! nothing but the SPTE itself (`Relaxed`): what an SPTE maps is kept alive by the MMU lock and
//! the TLB flush protocol, not by the SPTE's own loads and stores.  Whoever publishes a non-leaf
//! SPTE pointing at a freshly filled table must store it with `Release` ("Publishing with
//! release").
//!
//! Section names in quotes are those of Documentation/secmmu-protocols.rst.

use crate::mmu::level::Level;
use crate::mmu::prim::{AtomicU64, Ordering};

/// Readable.
pub(crate) const READABLE: u64 = 1 << 0;
/// Writable.
pub(crate) const WRITABLE: u64 = 1 << 1;
/// Executable.
pub(crate) const EXECUTABLE: u64 = 1 << 2;
/// The permission bits.
pub(crate) const RWX_MASK: u64 = READABLE | WRITABLE | EXECUTABLE;
/// Position of the EPT memory type of a leaf.
pub(crate) const MT_SHIFT: u32 = 3;
/// The EPT memory type field of a leaf.
pub(crate) const MT_MASK: u64 = 0b111 << MT_SHIFT;
/// Memory type write-back.
pub(crate) const MT_WB: u64 = 6;
/// Ignore the guest's PAT memory type.
pub(crate) const IPAT: u64 = 1 << 6;
/// Leaf above 4K (EPT "PS" bit, KVM's `PT_PAGE_SIZE_MASK`).
pub(crate) const LARGE: u64 = 1 << 7;
/// Accessed.
pub(crate) const ACCESSED: u64 = 1 << 8;
/// Dirty.
pub(crate) const DIRTY: u64 = 1 << 9;
/// Software: present for the MMU, see the module documentation.
pub(crate) const MMU_PRESENT: u64 = 1 << 11;
/// Log2 of the size of a 4K page.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// The host page frame number field.
pub(crate) const PFN_MASK: u64 = ((1 << 52) - 1) & !((1 << PAGE_SHIFT) - 1);
/// Software: where access tracking saves R/W/X.
const SAVED_SHIFT: u32 = 52;
const SAVED_MASK: u64 = RWX_MASK << SAVED_SHIFT;
const SAVED_WRITABLE: u64 = WRITABLE << SAVED_SHIFT;
/// Software: the MMU allows making this SPTE writable (KVM's `shadow_mmu_writable_mask`).
pub(crate) const MMU_WRITABLE: u64 = 1 << 55;
/// Software: the host page may be written through this SPTE (KVM's
/// `shadow_host_writable_mask`).
pub(crate) const HOST_WRITABLE: u64 = 1 << 56;
/// Software: the walkers do not keep A and D for this SPTE.
pub(crate) const AD_DISABLED: u64 = 1 << 60;

// The software bits must stay clear of each other and of what the walker interprets.
const _: () = {
    let software = [
        MMU_PRESENT,
        SAVED_MASK,
        MMU_WRITABLE,
        HOST_WRITABLE,
        AD_DISABLED,
    ];
    let hardware = RWX_MASK | MT_MASK | IPAT | LARGE | ACCESSED | DIRTY | PFN_MASK;
    let mut seen = hardware;
    let mut i = 0;
    while i < software.len() {
        assert!(seen & software[i] == 0);
        seen |= software[i];
        i += 1;
    }
};

/// Makes a leaf SPTE mapping host page `pfn` at `level`, as a fault installs it: readable,
/// executable, write-back, accessed, and if `writable` also writable and dirty (like KVM's
/// `make_spte()`, the fault that maps a page writable counts as the write).
///
/// `pfn` must be aligned to `level`.  With `ad_enabled` false the walkers do not keep A/D for
/// this SPTE and aging must use access tracking.
#[inline]
pub(crate) fn make_leaf(pfn: u64, level: Level, writable: bool, ad_enabled: bool) -> u64 {
    debug_assert!(level <= Level::MAX_LEAF);
    debug_assert_eq!((pfn << PAGE_SHIFT) & !PFN_MASK, 0);
    debug_assert_eq!(pfn & (level.pages() - 1), 0);

    let mut spte = MMU_PRESENT
        | READABLE
        | EXECUTABLE
        | (MT_WB << MT_SHIFT)
        | IPAT
        | ACCESSED
        | ((pfn << PAGE_SHIFT) & PFN_MASK);
    if level > Level::L4K {
        spte |= LARGE;
    }
    if !ad_enabled {
        spte |= AD_DISABLED;
    }
    if writable {
        spte |= WRITABLE | MMU_WRITABLE | HOST_WRITABLE | DIRTY;
    }
    spte
}

/// Makes a non-leaf SPTE pointing at the page table in host page `table_pfn`.  It allows
/// everything (the leaves decide) and is pre-marked accessed, which saves the walker the update
/// (KVM's `make_nonleaf_spte()`).
#[inline]
pub(crate) fn make_nonleaf(table_pfn: u64) -> u64 {
    debug_assert_eq!((table_pfn << PAGE_SHIFT) & !PFN_MASK, 0);

    MMU_PRESENT | RWX_MASK | ACCESSED | ((table_pfn << PAGE_SHIFT) & PFN_MASK)
}

/// The SPTE at index `i` of the table that replaces the huge leaf `huge` when it is split into
/// leaves at `child` level (KVM's `make_small_spte()`, `make_huge_page_split_spte()`): the same
/// permissions, memory type, A/D and software bits, so the split changes no translation and
/// needs no TLB flush; the pfn of the `i`-th piece; the large-page bit only above 4K.  Works
/// for an access-tracked leaf too: its saved bits are copied like the rest.
#[inline]
pub(crate) fn make_split_child(huge: u64, child: Level, i: usize) -> u64 {
    debug_assert!(huge & LARGE != 0 && i < 512);
    let pfn = pfn(huge) + i as u64 * child.pages();
    let mut spte = (huge & !(PFN_MASK | LARGE)) | ((pfn << PAGE_SHIFT) & PFN_MASK);
    if child > Level::L4K {
        spte |= LARGE;
    }
    spte
}

/// Whether the SPTE maps something: a page, a table, or an access-tracked page.
#[inline]
pub(crate) fn is_present(spte: u64) -> bool {
    spte & MMU_PRESENT != 0
}

/// Whether a present SPTE at `level` maps a page rather than pointing at a table.
#[inline]
pub(crate) fn is_leaf(spte: u64, level: Level) -> bool {
    level == Level::L4K || spte & LARGE != 0
}

/// Whether the SPTE allows writes now.
#[inline]
pub(crate) fn is_writable(spte: u64) -> bool {
    spte & WRITABLE != 0
}

/// Whether the walkers keep A and D for this present SPTE.
#[inline]
pub(crate) fn is_ad_enabled(spte: u64) -> bool {
    debug_assert!(is_present(spte));
    spte & AD_DISABLED == 0
}

/// Whether the SPTE was accessed since it was made or last aged.
#[inline]
pub(crate) fn is_accessed(spte: u64) -> bool {
    spte & ACCESSED != 0
}

/// Whether the page mapped by this present leaf may have been written through it.  Without A/D
/// a writable SPTE counts as dirty (KVM's `is_dirty_spte()`), so dropping W, as write
/// protection and access tracking do, is where the dirty state must be captured.
#[inline]
pub(crate) fn is_dirty(spte: u64) -> bool {
    if is_ad_enabled(spte) {
        spte & DIRTY != 0
    } else {
        is_writable(spte)
    }
}

/// The host page frame number of the page or table the SPTE points at.
#[inline]
pub(crate) fn pfn(spte: u64) -> u64 {
    (spte & PFN_MASK) >> PAGE_SHIFT
}

/// Whether a present SPTE is access-tracked: A/D disabled and R=W=X=0.
#[inline]
pub(crate) fn is_access_tracked(spte: u64) -> bool {
    !is_ad_enabled(spte) && spte & RWX_MASK == 0
}

/// Ages a present leaf so that the next access shows (KVM's `mark_spte_for_access_track()`).
///
/// With A/D enabled that is clearing A.  Without, R/W/X move to the saved bits and A is
/// cleared, so the next access faults; dropping W means the caller must capture the dirty state
/// first ("Access tracking without A/D bits"), and must hold the MMU lock for write.
#[inline]
pub(crate) fn mark_access_tracked(spte: u64) -> u64 {
    if is_ad_enabled(spte) {
        return spte & !ACCESSED;
    }
    if is_access_tracked(spte) {
        return spte;
    }
    debug_assert_eq!(spte & SAVED_MASK, 0);

    (spte | ((spte & RWX_MASK) << SAVED_SHIFT)) & !(RWX_MASK | ACCESSED)
}

/// Undoes [`mark_access_tracked()`] for an access-tracked SPTE, for the fault that the access
/// caused: R/W/X come back from the saved bits, and the SPTE is accessed again.
#[inline]
pub(crate) fn restore_access_tracked(spte: u64) -> u64 {
    debug_assert!(is_access_tracked(spte));

    (spte & !SAVED_MASK) | ((spte >> SAVED_SHIFT) & RWX_MASK) | ACCESSED
}

/// Whether changing this SPTE needs an atomic read-modify-write rather than a plain store,
/// because something may change it without the MMU lock and that change must not be lost
/// (KVM's `spte_needs_atomic_update()`):
///
/// - a write-protected but MMU-writable SPTE may be made writable by a lockless fault;
/// - an A/D-disabled SPTE may be access-tracked or restored outside the MMU lock;
/// - a walker may set D on a writable, clean SPTE.
///
/// A is deliberately ignored: aging tolerates losing an A bit now and then ("Imprecise aging").
/// A non-present SPTE has nothing to lose.
#[inline]
pub(crate) fn needs_atomic_update(spte: u64) -> bool {
    if !is_present(spte) {
        return false;
    }
    if !is_writable(spte) && spte & MMU_WRITABLE != 0 {
        return true;
    }
    if !is_ad_enabled(spte) {
        return true;
    }
    is_writable(spte) && spte & DIRTY == 0
}

/// Clears A in `sptep`, returning whether it was set.  An atomic AND, never a store of a value
/// read earlier, which would undo a D set in between ("Clearing the accessed bit").
///
/// Needs no lock.  Meant for A/D-enabled SPTEs: for A/D-disabled ones use
/// [`test_and_mark_access_tracked()`] under the MMU lock.
#[inline]
pub(crate) fn test_and_clear_accessed(sptep: &AtomicU64) -> bool {
    sptep.fetch_and(!ACCESSED, Ordering::Relaxed) & ACCESSED != 0
}

/// Write-protects `sptep`: clears W, and the saved W of an access-tracked SPTE so that restoring
/// it cannot bring write access back.  MMU-writable stays, as for KVM's write protection for
/// dirty logging.
///
/// Returns the old SPTE: [`is_dirty()`] of it is the dirty state, captured atomically with the
/// write protection, and [`is_writable()`] of it says whether TLBs may still allow writes.  Runs
/// under the MMU lock for write; atomic because walkers may be setting D meanwhile.
#[inline]
pub(crate) fn clear_writable_capture_dirty(sptep: &AtomicU64) -> u64 {
    sptep.fetch_and(!(WRITABLE | SAVED_WRITABLE), Ordering::Relaxed)
}

/// What aging found in one SPTE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Aged {
    /// The SPTE was accessed since it was made or last aged.
    pub(crate) young: bool,
    /// The SPTE lost W to access tracking and was dirty: the caller must mark the page dirty.
    pub(crate) dirty: bool,
}

/// Ages the leaf in `sptep` under the MMU lock for write: clears A if A/D is enabled, otherwise
/// marks it for access tracking, capturing its dirty state before W goes ("Access tracking without
/// A/D bits").
///
/// Losing the race with a lockless update is not an error ("Clearing the accessed bit"): the SPTE
/// changed, so it is most likely young; report it young and leave it.  Its dirty state is then
/// still in the SPTE, to be captured by whoever drops W next.
pub(crate) fn test_and_mark_access_tracked(sptep: &AtomicU64) -> Aged {
    let old = sptep.load(Ordering::Relaxed);
    if !is_present(old) || !is_accessed(old) {
        return Aged::default();
    }
    if is_ad_enabled(old) {
        return Aged {
            young: test_and_clear_accessed(sptep),
            dirty: false,
        };
    }

    let new = mark_access_tracked(old);
    match sptep.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => Aged {
            young: true,
            dirty: is_dirty(old),
        },
        Err(_) => Aged {
            young: true,
            dirty: false,
        },
    }
}

/// Zaps the SPTE in `sptep` (makes it 0) and returns the old value, whose A and D the caller
/// reports to the primary MMU (KVM's `mmu_spte_clear_track_bits()`).  Under the MMU lock for
/// write.  Uses an atomic exchange only when a lockless update could otherwise be lost.
#[inline]
pub(crate) fn zap(sptep: &AtomicU64) -> u64 {
    let old = sptep.load(Ordering::Relaxed);
    if needs_atomic_update(old) {
        sptep.swap(0, Ordering::Relaxed)
    } else {
        sptep.store(0, Ordering::Relaxed);
        old
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const LEAF_LEVELS: [Level; 3] = [Level::L4K, Level::L2M, Level::L1G];
    const MAX_PFN: u64 = (1 << 40) - 1;

    /// Some pfns aligned to `level`: the lowest, a middle one with scattered bits, the highest.
    fn pfns(level: Level) -> [u64; 3] {
        let mask = !(level.pages() - 1);
        [0, 0x12_3456_789a & mask, MAX_PFN & mask]
    }

    #[test]
    fn level_geometry() {
        let expect = [
            (0, 12, 1),
            (9, 21, 512),
            (18, 30, 1 << 18),
            (27, 39, 1 << 27),
        ];
        for (level, (gfn_shift, page_shift, pages)) in Level::ALL.into_iter().zip(expect) {
            assert_eq!(level.gfn_shift(), gfn_shift);
            assert_eq!(level.page_shift(), page_shift);
            assert_eq!(level.pages(), pages);
        }
        assert_eq!(Level::L4K.lower(), None);
        assert_eq!(Level::L2M.lower(), Some(Level::L4K));
        assert_eq!(Level::L1G.lower(), Some(Level::L2M));
        assert_eq!(Level::L512G.lower(), Some(Level::L1G));
    }

    #[test]
    fn level_index_and_align() {
        // gfn with index 0x1a5 at 4K, 0x0f3 at 2M, 0x1ff at 1G and 0x002 at 512G.
        let gfn = (0x002 << 27) | (0x1ff << 18) | (0x0f3 << 9) | 0x1a5;
        let indexes = [0x1a5, 0x0f3, 0x1ff, 0x002];
        for (level, index) in Level::ALL.into_iter().zip(indexes) {
            assert_eq!(level.index(gfn), index);
            let base = level.align_down(gfn);
            assert_eq!(base % level.pages(), 0);
            assert!(base <= gfn && gfn - base < level.pages());
            // The aligned gfn is in the same SPTE at this level and every higher one.
            for upper in Level::ALL.into_iter().filter(|l| *l >= level) {
                assert_eq!(upper.index(base), upper.index(gfn));
            }
        }
        assert_eq!(Level::L4K.align_down(gfn), gfn);
    }

    #[test]
    fn leaf_round_trip() {
        for level in LEAF_LEVELS {
            for frame in pfns(level) {
                for writable in [false, true] {
                    for ad in [false, true] {
                        let spte = make_leaf(frame, level, writable, ad);
                        let what = (level, frame, writable, ad);
                        assert!(is_present(spte), "{what:?}");
                        assert!(is_leaf(spte, level), "{what:?}");
                        assert_eq!(spte & LARGE != 0, level > Level::L4K, "{what:?}");
                        assert_eq!(pfn(spte), frame, "{what:?}");
                        assert_eq!(is_writable(spte), writable, "{what:?}");
                        assert_eq!(spte & (MMU_WRITABLE | HOST_WRITABLE) != 0, writable);
                        assert_eq!(is_ad_enabled(spte), ad, "{what:?}");
                        assert!(is_accessed(spte), "{what:?}");
                        assert_eq!(is_dirty(spte), writable, "{what:?}");
                        assert_eq!(spte & RWX_MASK & !WRITABLE, READABLE | EXECUTABLE);
                        assert_eq!((spte & MT_MASK) >> MT_SHIFT, MT_WB, "{what:?}");
                        assert_ne!(spte & IPAT, 0, "{what:?}");
                        assert!(!is_access_tracked(spte), "{what:?}");
                        assert_eq!(spte & SAVED_MASK, 0, "{what:?}");
                        // Fresh SPTEs are accessed and, if writable, dirty: only A/D-disabled
                        // ones can change under us.
                        assert_eq!(needs_atomic_update(spte), !ad, "{what:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn nonleaf_round_trip() {
        for level in [Level::L2M, Level::L1G, Level::L512G] {
            for table_pfn in pfns(Level::L4K) {
                let spte = make_nonleaf(table_pfn);
                assert!(is_present(spte));
                assert!(!is_leaf(spte, level));
                assert_eq!(pfn(spte), table_pfn);
                assert_eq!(spte & RWX_MASK, RWX_MASK);
                assert!(is_ad_enabled(spte));
                assert!(is_accessed(spte));
                assert!(!is_access_tracked(spte));
            }
        }
        assert!(!is_present(0));
    }

    /// A leaf with exactly the permissions `rwx` and the writable bookkeeping to match.
    fn leaf_with(rwx: u64, level: Level, dirty: bool, ad: bool) -> u64 {
        let spte = make_leaf(pfns(level)[1], level, rwx & WRITABLE != 0, ad);
        let spte = (spte & !RWX_MASK) | rwx;
        if dirty {
            spte | DIRTY
        } else {
            spte & !DIRTY
        }
    }

    #[test]
    fn permissions_round_trip() {
        for level in LEAF_LEVELS {
            for rwx in 0..=RWX_MASK {
                for dirty in [false, true] {
                    for ad in [false, true] {
                        let spte = leaf_with(rwx, level, dirty, ad);
                        assert_eq!(spte & RWX_MASK, rwx);
                        assert_eq!(is_writable(spte), rwx & WRITABLE != 0);
                        assert_eq!(is_dirty(spte), if ad { dirty } else { is_writable(spte) });
                        assert_eq!(pfn(spte), pfns(level)[1]);
                        assert!(is_leaf(spte, level));
                    }
                }
            }
        }
    }

    #[test]
    fn access_tracking_round_trip() {
        for level in LEAF_LEVELS {
            // R=W=X=0 without A/D is indistinguishable from access-tracked, as in KVM.
            for rwx in 1..=RWX_MASK {
                for dirty in [false, true] {
                    let spte = leaf_with(rwx, level, dirty, false);
                    let what = (level, rwx, dirty);
                    let tracked = mark_access_tracked(spte);
                    assert!(is_present(tracked), "{what:?}");
                    assert!(is_access_tracked(tracked), "{what:?}");
                    assert!(!is_accessed(tracked), "{what:?}");
                    assert!(!is_writable(tracked), "{what:?}");
                    assert!(!is_dirty(tracked), "{what:?}");
                    assert_eq!(pfn(tracked), pfn(spte), "{what:?}");
                    assert!(is_leaf(tracked, level), "{what:?}");
                    assert_eq!(tracked & DIRTY, spte & DIRTY, "{what:?}");
                    assert_eq!(mark_access_tracked(tracked), tracked, "{what:?}");
                    // Restoring brings back R, W, X and leaves D alone.
                    assert_eq!(restore_access_tracked(tracked), spte, "{what:?}");
                }
            }
        }
    }

    #[test]
    fn access_tracking_with_ad_clears_only_accessed() {
        for level in LEAF_LEVELS {
            for writable in [false, true] {
                let spte = make_leaf(pfns(level)[2], level, writable, true);
                let aged = mark_access_tracked(spte);
                assert_eq!(aged, spte & !ACCESSED);
                assert!(!is_access_tracked(aged));
                assert_eq!(is_dirty(aged), writable);
            }
        }
    }

    #[test]
    fn atomic_update_cases() {
        let ad_rw = make_leaf(7, Level::L4K, true, true);
        let ad_ro = make_leaf(7, Level::L4K, false, true);
        assert!(!needs_atomic_update(0));
        assert!(!needs_atomic_update(ad_rw));
        assert!(needs_atomic_update(ad_rw & !DIRTY));
        // Clobbering A is tolerated.
        assert!(!needs_atomic_update(ad_rw & !ACCESSED));
        assert!(!needs_atomic_update(ad_ro));
        // Write-protected but MMU-writable: a lockless fault may restore W.
        assert!(needs_atomic_update(ad_rw & !WRITABLE));
        assert!(needs_atomic_update(make_leaf(7, Level::L4K, false, false)));
        let tracked = mark_access_tracked(make_leaf(512, Level::L2M, true, false));
        assert!(needs_atomic_update(tracked));
    }

    #[test]
    fn test_and_clear_accessed_is_one_shot() {
        let slot = AtomicU64::new(make_leaf(9, Level::L4K, true, true));
        assert!(test_and_clear_accessed(&slot));
        assert!(!test_and_clear_accessed(&slot));
        let spte = slot.load(Ordering::Relaxed);
        assert!(is_dirty(spte) && is_writable(spte) && !is_accessed(spte));
    }

    #[test]
    fn write_protect_captures_dirty() {
        for ad in [false, true] {
            let spte = make_leaf(9, Level::L4K, true, ad);
            let slot = AtomicU64::new(spte & !DIRTY);
            let old = clear_writable_capture_dirty(&slot);
            assert_eq!(is_dirty(old), !ad, "without A/D, writable means dirty");
            assert!(is_writable(old));
            let now = slot.load(Ordering::Relaxed);
            assert!(!is_writable(now));
            assert_ne!(now & MMU_WRITABLE, 0);
            let old = clear_writable_capture_dirty(&slot);
            assert!(!is_writable(old) && !is_dirty(old));
        }
    }

    #[test]
    fn write_protect_of_tracked_spte_survives_restore() {
        let slot = AtomicU64::new(mark_access_tracked(make_leaf(9, Level::L4K, true, false)));
        let old = clear_writable_capture_dirty(&slot);
        assert!(!is_writable(old));
        let restored = restore_access_tracked(slot.load(Ordering::Relaxed));
        assert_eq!(restored & RWX_MASK, READABLE | EXECUTABLE);
    }

    #[test]
    fn aging_under_mmu_lock() {
        // A/D enabled: clears A once, never reports dirty.
        let slot = AtomicU64::new(make_leaf(3, Level::L4K, true, true));
        let aged = test_and_mark_access_tracked(&slot);
        assert_eq!(
            aged,
            Aged {
                young: true,
                dirty: false
            }
        );
        assert_eq!(test_and_mark_access_tracked(&slot), Aged::default());
        assert!(is_writable(slot.load(Ordering::Relaxed)));

        // A/D disabled: access-tracks, capturing dirty from W.
        for writable in [false, true] {
            let spte = make_leaf(3, Level::L4K, writable, false);
            let slot = AtomicU64::new(spte);
            let aged = test_and_mark_access_tracked(&slot);
            assert_eq!(
                aged,
                Aged {
                    young: true,
                    dirty: writable
                }
            );
            let tracked = slot.load(Ordering::Relaxed);
            assert!(is_access_tracked(tracked));
            assert_eq!(test_and_mark_access_tracked(&slot), Aged::default());
            assert_eq!(restore_access_tracked(tracked), spte);
        }

        let slot = AtomicU64::new(0);
        assert_eq!(test_and_mark_access_tracked(&slot), Aged::default());
    }

    #[test]
    fn zap_returns_old_value() {
        for ad in [false, true] {
            for writable in [false, true] {
                let spte = make_leaf(5, Level::L4K, writable, ad);
                let slot = AtomicU64::new(spte);
                assert_eq!(zap(&slot), spte);
                assert_eq!(slot.load(Ordering::Relaxed), 0);
                assert_eq!(zap(&slot), 0);
            }
        }
    }
}
