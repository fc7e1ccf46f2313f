// SPDX-License-Identifier: GPL-2.0

//! Tests of aging (`src/mmu/aging.rs`, the aging walks of `src/x86/mmu.rs`) with host table pages:
//! lockless and locked walks, every level, long rmap chains, non-present SPTEs, access tracking
//! and its restore, the shared rmap table, and a multi-threaded stress test of lockless aging
//! against maps, zaps, walkers and slot changes with an emulated grace period.
//!
//! Each test uses its own `HostPages<ID>` (IDs 40 and up), so that its leak and dirty checks see
//! only its own pages while tests run in parallel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::sync::{Mutex, RwLock};
use std::thread;
use std::time::Duration;
use std::vec::Vec;

use crate::host_pages::HostPages;
use crate::mmu::addr::{Gfn, Hva, Pfn};
use crate::mmu::aging::{use_lockless, AgeOp, AgeResult};
use crate::mmu::level::Level;
use crate::mmu::memslot::{Slot, PAGE_SHIFT};
use crate::mmu::pgtable::{MapAction, TableCache, SNAP_ACCESSED, SNAP_PRESENT};
use crate::mmu::prim::{AtomicU64, NoPreempt, Ordering, PArc};
use crate::mmu::tlb::VcpuMode;
use crate::mmu::zap::{Owned, Zap};
use crate::test_util::{FlushWith, Rng};
use crate::x86::mmu::{translate, WalkFault, X86Mmu, MAP_MIN_DESCS, MAP_MIN_TABLES, MAX_ROOTS};
use crate::x86::rmap::{DescCache, PTE_LIST_EXT};
use crate::x86::spte;
use crate::x86_slots::{slot_ref, TestMmu, TestSlots};

/// Where the test slots' memory starts in the (pretend) user address space.
const HVA: u64 = 0x7000_0000_0000;

fn slot(id: u32, base_gfn: u64, npages: u64, userspace_addr: u64) -> Slot {
    Slot {
        id,
        flags: 0,
        base_gfn: Gfn::new(base_gfn),
        npages,
        userspace_addr: Hva::new(userspace_addr),
    }
}

/// The host-virtual address of `gfn` in `s`.
fn hva(s: &Slot, gfn: u64) -> u64 {
    s.gfn_to_hva(Gfn::new(gfn)).raw()
}

fn pfn_of(gfn: u64) -> u64 {
    0x20_0000 + gfn
}

/// An MMU with host pages of test `ID`, its memslot set (shared with lockless agers), and the
/// caches a fault path would top up.
struct Fixture<const ID: usize> {
    mmu: TestMmu<HostPages<ID>>,
    table: PArc<TestSlots>,
    tables: TableCache<HostPages<ID>>,
    descs: DescCache,
}

impl<const ID: usize> Fixture<ID> {
    fn new(nr_roots: usize, ad_enabled: bool, slots: &[Slot]) -> Self {
        let table = TestSlots::new();
        let mut mmu = TestMmu::with_slots(nr_roots, ad_enabled, table.clone()).unwrap();
        for s in slots {
            assert!(mmu.attach_slot(s).is_ok());
        }
        Fixture {
            mmu,
            table,
            tables: TableCache::new(),
            descs: DescCache::new(4),
        }
    }

    fn map(&mut self, root: usize, slot_id: u32, gfn: u64, writable: bool) -> usize {
        self.tables.topup(MAP_MIN_TABLES).unwrap();
        self.descs.topup(MAP_MIN_DESCS).unwrap();
        let o = self.mmu.map(
            root,
            slot_id,
            Gfn::new(gfn),
            Pfn::new(pfn_of(gfn)),
            writable,
            &mut self.tables,
            &mut self.descs,
        );
        o.unwrap().chain_len
    }

    /// The leaf value of `gfn` in `root`, or 0.
    fn spte(&self, root: usize, gfn: u64) -> u64 {
        self.mmu.leaf(root, Gfn::new(gfn)).map_or(0, |(_, v, _)| v)
    }

    fn sptep(&self, root: usize, gfn: u64) -> &AtomicU64 {
        self.mmu.leaf(root, Gfn::new(gfn)).unwrap().0
    }

    fn lockless(&self, hva_start: u64, hva_end: u64, op: AgeOp) -> AgeResult {
        let no_preempt = NoPreempt::new();
        self.table
            .age_hva_range_lockless(&no_preempt, hva_start, hva_end, op)
    }

    fn lockless_gfns(&self, slot_id: u32, start: u64, end: u64, op: AgeOp) -> AgeResult {
        let no_preempt = NoPreempt::new();
        self.table
            .age_gfn_range_lockless(&no_preempt, slot_id, Gfn::new(start), Gfn::new(end), op)
    }

    fn translate(&self, root: usize, gfn: u64, write: bool) -> Result<u64, WalkFault> {
        let root_pfn = self.mmu.root_pfn(root).unwrap();
        // SAFETY: `root_pfn` is a root of `self.mmu`, which is borrowed for the call.
        unsafe { translate::<HostPages<ID>>(root_pfn, Gfn::new(gfn), write) }.map(|t| t.pfn.raw())
    }

    fn zap(&mut self, slot_id: u32, start: u64, end: u64) -> u64 {
        let (start, end) = (Gfn::new(start), Gfn::new(end));
        let p = self
            .mmu
            .zap_to_end(HostPages::<ID>::frees, slot_id, start, end);
        p.zapped
    }
}

/// Drops the fixture and checks that every table page it allocated was freed.
fn teardown<const ID: usize>(f: Fixture<ID>) {
    drop(f);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

/// Every SPTE of `gfns` in `roots`.
fn all_sptes<const ID: usize>(
    f: &Fixture<ID>,
    roots: usize,
    gfns: core::ops::Range<u64>,
) -> Vec<u64> {
    (0..roots)
        .flat_map(|r| gfns.clone().map(move |g| (r, g)))
        .map(|(r, g)| f.spte(r, g))
        .collect()
}

#[test]
fn lockless_aging_all_roots_long_chains() {
    const ID: usize = 40;
    const N: u64 = 64;
    let s = slot(0, 0x100, N, HVA);
    let mut f = Fixture::<ID>::new(MAX_ROOTS, true, &[s]);
    for root in 0..MAX_ROOTS {
        for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
            assert_eq!(f.map(root, 0, gfn, gfn.is_multiple_of(2)), root + 1);
        }
    }
    // Every 4K rmap holds 32 SPTEs: a chain of three descriptors.
    const { assert!(MAX_ROOTS > 2 * PTE_LIST_EXT) };
    let (hva_start, hva_end) = (HVA, HVA + (N << PAGE_SHIFT));
    let gfns = s.base_gfn.raw()..s.end_gfn().raw();
    let before = all_sptes(&f, MAX_ROOTS, gfns.clone());
    assert!(before.iter().all(|&v| spte::is_accessed(v)));

    // Test stops at the first young SPTE and changes nothing, however often it runs.
    for _ in 0..2 {
        let r = f.lockless(hva_start, hva_end, AgeOp::Test);
        assert!(r.young && r.visited == 1 && r.cleared == 0, "{r:?}");
        assert!(!r.needs_flush());
        assert_eq!(all_sptes(&f, MAX_ROOTS, gfns.clone()), before);
    }

    // Clear makes every SPTE old, and only that: W and D stay.
    // 64 rmaps at 4K, and the one 2M and one 1G block the slot overlaps.
    let rmaps = N + 2;
    let r = f.lockless(hva_start, hva_end, AgeOp::Clear);
    assert!(r.young, "{r:?}");
    assert_eq!(r.cleared, N * MAX_ROOTS as u64);
    assert_eq!(r.visited, rmaps);
    assert_eq!(
        (r.contended, r.lost_races, r.not_present, r.skipped),
        (0, 0, 0, 0)
    );
    assert_eq!((r.write_protected, r.dirty), (0, 0));
    assert!(!r.needs_flush(), "clear_young does not flush");
    let after = all_sptes(&f, MAX_ROOTS, gfns.clone());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(*a, b & !spte::ACCESSED);
    }

    // Now old: Test walks everything and finds nothing; Clear clears nothing.
    let r = f.lockless(hva_start, hva_end, AgeOp::Test);
    assert!(!r.young && r.visited == rmaps, "{r:?}");
    let r = f.lockless(hva_start, hva_end, AgeOp::Clear);
    assert!(!r.young && r.cleared == 0, "{r:?}");

    // An access through one root makes the page young again, for that SPTE only.
    let gfn = 0x123;
    f.translate(5, gfn, false).unwrap();
    let page = hva(&s, gfn);
    assert!(f.lockless(hva_start, hva_end, AgeOp::Test).young);
    let r = f.lockless(page, page + 1, AgeOp::ClearFlush);
    assert_eq!((r.young, r.cleared, r.visited), (true, 1, 3));
    assert!(r.needs_flush(), "clear_flush_young made an SPTE old");
    let r = f.lockless(page, page + 1, AgeOp::ClearFlush);
    assert!(!r.young && !r.needs_flush());

    assert_eq!(f.mmu.zap_all(), N * MAX_ROOTS as u64);
    teardown(f);
}

#[test]
fn hva_ranges_partial_pages_and_aliases() {
    const ID: usize = 41;
    // Slot 1's memory is slot 0's from its ninth page on: the same host pages at two gfns.
    let s0 = slot(0, 0, 16, HVA);
    let s1 = slot(1, 0x1000, 16, HVA + (8 << PAGE_SHIFT));
    let mut f = Fixture::<ID>::new(1, true, &[s0, s1]);
    for s in [s0, s1] {
        for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
            f.map(0, s.id, gfn, false);
        }
    }
    // Part of one page: gfn 8 of slot 0 and gfn 0x1000 of slot 1.
    let page = hva(&s0, 8);
    let r = f.lockless(page + 1, page + 4095, AgeOp::Clear);
    assert_eq!((r.young, r.cleared), (true, 2));
    assert!(!spte::is_accessed(f.spte(0, 8)) && !spte::is_accessed(f.spte(0, 0x1000)));
    assert!(spte::is_accessed(f.spte(0, 7)) && spte::is_accessed(f.spte(0, 9)));

    // The end is exclusive: [page, page + 4096) is that one page.
    let r = f.lockless(page, page + 4096, AgeOp::Test);
    assert!(!r.young, "{r:?}");
    let r = f.lockless(page, page + 4097, AgeOp::Test);
    assert!(r.young, "{r:?}");

    // Outside every slot, empty and reversed ranges: nothing visited.
    for (start, end) in [
        (HVA - 4096, HVA),
        (hva(&s1, 0x100f) + 4096, u64::MAX),
        (page, page),
        (page + 4096, page),
    ] {
        let r = f.lockless(start, end, AgeOp::Clear);
        assert_eq!((r.young, r.visited), (false, 0), "{start:#x}..{end:#x}");
        let mut g = Fixture::<ID>::new(1, true, &[]);
        assert_eq!(
            g.mmu.age_hva_range_locked(start, end, AgeOp::Clear).visited,
            0
        );
        g.mmu.zap_all();
    }
    f.mmu.zap_all();
    teardown(f);
}

/// Huge leaves of test `ID`: heap-allocated SPTE slots added to the rmaps directly, in no table, so
/// that the test holds each leaf and sets and checks its bits itself while the agers reach it only
/// through the rmaps, as they do every leaf.  [`TestMmu::map_level()`] installs huge leaves in the
/// tables.
fn add_huge<const ID: usize>(
    f: &mut Fixture<ID>,
    slot_id: u32,
    level: Level,
    gfn: u64,
) -> Box<AtomicU64> {
    let pfn = level.align_down(0x4000_0000 + gfn);
    let leaf = Box::new(AtomicU64::new(spte::make_leaf(pfn, level, true, true)));
    f.descs.topup(1).unwrap();
    // SAFETY: the caller keeps the box until the MMU is dropped, which zaps it first, and the
    // leaf is present whenever the MMU lock is taken.
    let added = unsafe {
        f.mmu
            .add_test_leaf(slot_id, level, gfn, &leaf, &mut f.descs)
    };
    assert!(added);
    leaf
}

#[test]
fn unaligned_ranges_at_huge_levels() {
    const ID: usize = 42;
    // An unaligned slot over 2M blocks 0 (partly), 1 and 2 (partly), and 1G block 0.
    let s = slot(0, 0x1f0, 0x400, HVA);
    let mut f = Fixture::<ID>::new(1, true, &[s]);
    let b1 = add_huge(&mut f, 0, Level::L2M, 0x200);
    let b2 = add_huge(&mut f, 0, Level::L2M, 0x400);
    let g0 = add_huge(&mut f, 0, Level::L1G, 0);

    // [0x3ff, 0x401) touches 2M blocks 1 and 2: from 0x3ff stepping by 512 would miss block 2
    // (see "Ranges and mapping levels" in Documentation/secmmu-protocols.rst).  Visited: two 4K
    // rmaps, two 2M, one 1G.
    let r = f.lockless_gfns(0, 0x3ff, 0x401, AgeOp::Clear);
    assert_eq!((r.young, r.cleared, r.visited), (true, 3, 5), "{r:?}");
    for leaf in [&b1, &b2, &g0] {
        let v = leaf.load(Ordering::Relaxed);
        assert!(!spte::is_accessed(v) && spte::is_dirty(v) && spte::is_writable(v));
    }
    assert!(!f.lockless_gfns(0, 0x3ff, 0x401, AgeOp::Test).young);

    // The last gfns of the slot are under block 2: an access there shows.
    b2.fetch_or(spte::ACCESSED, Ordering::Relaxed);
    assert!(f.lockless_gfns(0, 0x5ee, 0x5ef, AgeOp::Test).young);
    let page = hva(&s, 0x5ee);
    let r = f.lockless(page, page + 1, AgeOp::Clear);
    assert_eq!((r.cleared, r.visited), (1, 3));
    // The first gfn of the slot is under the partial block 0, which has no leaf, and 1G block 0.
    g0.fetch_or(spte::ACCESSED, Ordering::Relaxed);
    let r = f
        .mmu
        .age_gfn_range_locked(0, Gfn::new(0x1f0), Gfn::new(0x1f1), AgeOp::Clear);
    assert_eq!((r.cleared, r.visited), (1, 3));
    // Beyond the slot: nothing.
    assert_eq!(f.lockless_gfns(0, 0x5f0, 0x700, AgeOp::Test).visited, 0);

    assert_eq!(f.mmu.zap_all(), 3);
    let mut dirty = HostPages::<ID>::take_dirty();
    dirty.sort_unstable();
    assert_eq!(dirty.len(), 3);
    teardown(f);
    drop((b1, b2, g0));
}

#[test]
fn lockless_walk_skips_nonpresent_sptes() {
    const ID: usize = 43;
    const ROOTS: usize = 20;
    let s = slot(0, 0, 8, HVA);
    let mut f = Fixture::<ID>::new(ROOTS, true, &[s]);
    for root in 0..ROOTS {
        f.map(root, 0, 5, true);
    }
    // Zapped by someone else but not removed from the rmap yet, as a lockless walker may see
    // them ("Lockless rmap walks" in Documentation/secmmu-protocols.rst), the first one included.
    let zapped = [0, 3, 7, 15];
    let saved: Vec<u64> = zapped
        .iter()
        .map(|&r| f.sptep(r, 5).swap(0, Ordering::Relaxed))
        .collect();
    let page = hva(&s, 5);
    let r = f.lockless(page, page + 4096, AgeOp::Test);
    assert!(r.young, "a young SPTE behind non-present ones: {r:?}");
    let r = f.lockless(page, page + 4096, AgeOp::Clear);
    assert_eq!(
        (r.young, r.cleared, r.not_present),
        (true, (ROOTS - zapped.len()) as u64, zapped.len() as u64)
    );
    for &r in &zapped {
        assert_eq!(f.spte(r, 5), 0, "aging made a zapped SPTE present");
    }
    assert!(!f.lockless(page, page + 4096, AgeOp::Test).young);
    // Put them back so that the zap under the MMU lock finds the rmap consistent.
    for (&r, &v) in zapped.iter().zip(&saved) {
        f.mmu_restore_zapped(r, 5, v);
    }
    assert_eq!(f.zap(0, 0, 8), ROOTS as u64);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

impl<const ID: usize> Fixture<ID> {
    /// Stores `v` back into the entry of `gfn` in `root`, which a test cleared behind the MMU's
    /// back: the walk stops at the non-present leaf entry, which is the one to restore.
    fn mmu_restore_zapped(&self, root: usize, gfn: u64, v: u64) {
        let root_pfn = self.mmu.root_pfn(root).unwrap();
        let mut table = root_pfn;
        for level in [Level::L512G, Level::L1G, Level::L2M] {
            // SAFETY: tables of `self.mmu`, borrowed for the call.
            let e = unsafe { <HostPages<ID> as crate::mmu::pgtable::PageOps>::table(table) }
                [level.index(gfn)]
            .load(Ordering::Relaxed);
            table = spte::pfn(e);
        }
        // SAFETY: as above.
        let t = unsafe { <HostPages<ID> as crate::mmu::pgtable::PageOps>::table(table) };
        t[Level::L4K.index(gfn)].store(v, Ordering::Relaxed);
    }
}

#[test]
fn no_ad_locked_aging_tracks_captures_dirty_and_restores() {
    const ID: usize = 44;
    const ROOTS: usize = 4;
    const N: u64 = 16;
    let s = slot(0, 0x40, N, HVA);
    let mut f = Fixture::<ID>::new(ROOTS, false, &[s]);
    let writable = |gfn: u64| gfn.is_multiple_of(2);
    for root in 0..ROOTS {
        for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
            f.map(root, 0, gfn, writable(gfn));
        }
    }
    assert!(!f.mmu.ad_enabled());
    assert!(use_lockless(AgeOp::Test, false, false));
    assert!(!use_lockless(AgeOp::Clear, false, false));
    assert!(!use_lockless(AgeOp::ClearFlush, false, false));
    assert!(!use_lockless(AgeOp::Test, true, true));
    let (hs, he) = (HVA, HVA + (N << PAGE_SHIFT));
    let before = all_sptes(&f, ROOTS, s.base_gfn.raw()..s.end_gfn().raw());

    // The lockless walk can test, but must not access-track: it skips, counting young.
    assert!(f.lockless(hs, he, AgeOp::Test).young);
    let r = f.lockless(hs, he, AgeOp::Clear);
    assert_eq!((r.young, r.cleared, r.skipped), (true, 0, N * ROOTS as u64));
    assert_eq!(
        all_sptes(&f, ROOTS, s.base_gfn.raw()..s.end_gfn().raw()),
        before
    );

    // Under the lock: every SPTE tracked, W dropped, dirty captured first.
    let r = f.mmu.age_hva_range_locked(hs, he, AgeOp::Clear);
    let n_writable = (N / 2) * ROOTS as u64;
    assert_eq!((r.young, r.cleared), (true, N * ROOTS as u64));
    assert_eq!((r.write_protected, r.dirty), (n_writable, n_writable));
    assert!(r.needs_flush(), "W dropped: flush even for clear_young");
    let mut dirty = HostPages::<ID>::take_dirty();
    dirty.sort_unstable();
    let mut expect: Vec<u64> = (0..ROOTS)
        .flat_map(|_| {
            (s.base_gfn.raw()..s.end_gfn().raw())
                .filter(|&g| writable(g))
                .map(pfn_of)
        })
        .collect();
    expect.sort_unstable();
    assert_eq!(dirty, expect);
    for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
        for root in 0..ROOTS {
            let v = f.spte(root, gfn);
            assert!(spte::is_present(v) && spte::is_access_tracked(v));
            assert_eq!(f.mmu.snapshot(root, Gfn::new(gfn)), SNAP_PRESENT);
            assert_eq!(f.translate(root, gfn, false), Err(WalkFault::NotPresent));
        }
    }
    assert!(!f.mmu.age_hva_range_locked(hs, he, AgeOp::Test).young);
    assert!(!f.lockless(hs, he, AgeOp::Test).young);
    let r = f.mmu.age_hva_range_locked(hs, he, AgeOp::ClearFlush);
    assert!(!r.young && !r.needs_flush());

    // The fault path restores without resolving the page: a write to a writable one.
    let (even, odd) = (0x42, 0x43);
    assert!(f.mmu.restore_access_tracked(0, Gfn::new(even), true));
    assert_eq!(f.spte(0, even), before[(even - s.base_gfn.raw()) as usize]);
    assert_eq!(f.translate(0, even, true), Ok(pfn_of(even)));
    assert!(
        !f.mmu.restore_access_tracked(0, Gfn::new(even), true),
        "not tracked any more"
    );
    // A write to one that was read-only needs the normal fault; a read does not.
    let tracked = f.spte(0, odd);
    assert!(!f.mmu.restore_access_tracked(0, Gfn::new(odd), true));
    assert_eq!(f.spte(0, odd), tracked);
    assert!(f.mmu.restore_access_tracked(0, Gfn::new(odd), false));
    assert_eq!(f.translate(0, odd, false), Ok(pfn_of(odd)));
    // Nothing mapped, or a bad root: the normal fault path.
    assert!(!f.mmu.restore_access_tracked(0, Gfn::new(0x1000), false));
    assert!(!f.mmu.restore_access_tracked(ROOTS, Gfn::new(even), false));
    // The normal fault path's map restores too.
    f.tables.topup(MAP_MIN_TABLES).unwrap();
    f.descs.topup(MAP_MIN_DESCS).unwrap();
    let o = f
        .mmu
        .map(
            1,
            0,
            Gfn::new(odd),
            Pfn::new(pfn_of(odd)),
            false,
            &mut f.tables,
            &mut f.descs,
        )
        .unwrap();
    assert_eq!(o.action, MapAction::Restored);
    assert_ne!(f.mmu.snapshot(1, Gfn::new(odd)) & SNAP_ACCESSED, 0);

    // The write after aging is not lost: aging again, or zapping, reports the page dirty.
    let r = f
        .mmu
        .age_gfn_range_locked(0, Gfn::new(even), Gfn::new(even + 1), AgeOp::Clear);
    assert_eq!((r.cleared, r.dirty), (1, 1));
    assert_eq!(HostPages::<ID>::take_dirty(), [pfn_of(even)]);
    assert!(f.mmu.restore_access_tracked(0, Gfn::new(even), true));
    assert_eq!(f.zap(0, even, even + 1), ROOTS as u64);
    assert_eq!(HostPages::<ID>::take_dirty(), [pfn_of(even)]);

    f.mmu.zap_all();
    assert!(
        HostPages::<ID>::take_dirty().is_empty(),
        "tracked SPTEs are clean"
    );
    teardown(f);
}

#[test]
fn locked_aging_with_ad_matches_lockless() {
    const ID: usize = 45;
    const ROOTS: usize = 3;
    let s = slot(2, 0x800, 40, HVA);
    let mut f = Fixture::<ID>::new(ROOTS, true, &[s]);
    for root in 0..ROOTS {
        for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
            f.map(root, 2, gfn, gfn.is_multiple_of(3));
        }
    }
    let (hs, he) = (HVA, HVA + (40 << PAGE_SHIFT));
    let before = all_sptes(&f, ROOTS, s.base_gfn.raw()..s.end_gfn().raw());
    let r = f.mmu.age_hva_range_locked(hs, he, AgeOp::Test);
    assert!(r.young && r.visited == 1);
    let r = f.mmu.age_hva_range_locked(hs, he, AgeOp::Clear);
    assert_eq!((r.young, r.cleared), (true, 40 * ROOTS as u64));
    assert_eq!((r.write_protected, r.dirty, r.lost_races), (0, 0, 0));
    assert!(!r.needs_flush());
    let after = all_sptes(&f, ROOTS, s.base_gfn.raw()..s.end_gfn().raw());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(*a, b & !spte::ACCESSED);
    }
    assert!(HostPages::<ID>::take_dirty().is_empty());
    // Accessed again: the lockless walk finds and clears the same.
    for root in 0..ROOTS {
        for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
            f.translate(root, gfn, false).unwrap();
        }
    }
    let r = f.lockless(hs, he, AgeOp::ClearFlush);
    assert_eq!((r.young, r.cleared), (true, 40 * ROOTS as u64));
    assert!(r.needs_flush());
    assert_eq!(
        all_sptes(&f, ROOTS, s.base_gfn.raw()..s.end_gfn().raw()),
        after
    );
    f.mmu.zap_all();
    teardown(f);
}

/// Slots come and go by publishing new sets: a reader of the set from before a change still
/// finds the slot it had, a reader after it does not, and a deleted slot's rmaps live on with
/// the old set until it is freed.
#[test]
fn memslot_set_attach_and_detach() {
    const ID: usize = 46;
    let s = slot(5, 0x10, 8, HVA);
    let table = TestSlots::new();
    let mut mmu = TestMmu::<HostPages<ID>>::with_slots(2, true, table.clone()).unwrap();
    assert!(PArc::ptr_eq(mmu.slots(), &table));
    // Overlapping slot 5, or at its id: refused, the set unchanged.
    assert!(mmu.attach_slot(&s).is_ok());
    assert!(mmu.attach_slot(&slot(4, 0x17, 2, HVA)).is_err());
    assert!(mmu.attach_slot(&slot(5, 0x100, 2, HVA)).is_err());
    {
        let no_preempt = NoPreempt::new();
        let rmaps = table.get(5, &no_preempt).unwrap();
        assert_eq!(*rmaps.slot(), s);
        assert_eq!(rmaps.rmaps().nr_rmaps(Level::L4K), 8);
        assert!(table.get(4, &no_preempt).is_none());
        assert!(table.get(u32::MAX, &no_preempt).is_none());
        assert_eq!(table.read(&no_preempt).iter().count(), 1);
    }
    let mut tables = TableCache::<HostPages<ID>>::new();
    let mut descs = DescCache::new(2);
    for root in 0..2 {
        tables.topup(MAP_MIN_TABLES).unwrap();
        descs.topup(MAP_MIN_DESCS).unwrap();
        mmu.map(
            root,
            5,
            Gfn::new(0x12),
            Pfn::new(7),
            true,
            &mut tables,
            &mut descs,
        )
        .unwrap();
    }
    let no_preempt = NoPreempt::new();
    // A reader that read the set before the deletion.
    let before = table.get(5, &no_preempt).unwrap();
    assert_eq!(mmu.zap_slot(5), 2);
    assert_eq!(HostPages::<ID>::take_dirty(), [7, 7]);
    let detached = mmu.detach_slot(5).unwrap();
    let old = detached.get().by_id(5).and_then(slot_ref).unwrap();
    assert_eq!((*old.slot(), old.sptes()), (s, 0));
    // The old reader still has the slot, emptied; a new one does not find it.
    assert_eq!(before.sptes(), 0);
    assert!(table.get(5, &no_preempt).is_none());
    let r = table.age_hva_range_lockless(&no_preempt, 0, u64::MAX, AgeOp::Clear);
    assert_eq!(r.visited, 0);
    // SAFETY: `before` and `old` are not used any more: no reader of the old set is left.
    unsafe { detached.free_after_grace_period() };
    assert!(mmu.detach_slot(5).is_none());

    // A slot left mapped when the MMU goes is zapped first, its page reported dirty.
    assert!(mmu.attach_slot(&s).is_ok());
    tables.topup(MAP_MIN_TABLES).unwrap();
    descs.topup(MAP_MIN_DESCS).unwrap();
    mmu.map(
        0,
        5,
        Gfn::new(0x13),
        Pfn::new(8),
        true,
        &mut tables,
        &mut descs,
    )
    .unwrap();
    drop((mmu, tables));
    assert_eq!(HostPages::<ID>::take_dirty(), [8]);
    assert_eq!(table.get(5, &no_preempt).unwrap().sptes(), 0);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

/// The set holds slots up to the last id, and the walks age the slots that back a range, in
/// guest-physical order, each once.
#[test]
fn slots_up_to_the_last_id() {
    const ID: usize = 51;
    let (a, b, c) = (
        slot(0, 0x100, 4, HVA),
        slot(5, 0x200, 4, HVA + 0x10_0000),
        slot(63, 0x300, 4, HVA + 0x20_0000),
    );
    let mut f = Fixture::<ID>::new(1, true, &[c, a, b]);
    let ids = |f: &Fixture<ID>| {
        let no_preempt = NoPreempt::new();
        f.table
            .read(&no_preempt)
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&f), [0, 5, 63]);
    // Refused attaches change nothing: id taken, or range taken.
    assert!(f.mmu.attach_slot(&c).is_err());
    assert!(f.mmu.attach_slot(&slot(7, 0x302, 1, HVA)).is_err());
    assert_eq!(ids(&f), [0, 5, 63]);

    f.map(0, 63, 0x302, true);
    let page = hva(&c, 0x302);
    for locked in [false, true] {
        let r = if locked {
            f.mmu
                .age_hva_range_locked(HVA, HVA + 0x30_0000, AgeOp::Test)
        } else {
            f.lockless(HVA, HVA + 0x30_0000, AgeOp::Test)
        };
        assert!(r.young, "{r:?}");
    }
    let r = f.lockless(page, page + 4096, AgeOp::Clear);
    assert_eq!((r.young, r.cleared), (true, 1));

    assert_eq!(f.zap(5, b.base_gfn.raw(), b.end_gfn().raw()), 0);
    let detached = f.mmu.detach_slot(5).unwrap();
    assert_eq!(ids(&f), [0, 63]);
    // SAFETY: no lockless reader runs in this test.
    unsafe { detached.free_after_grace_period() };
    // 4 rmaps at 4K and one each at 2M and 1G per slot, for the two slots left.
    let r = f.lockless(HVA, HVA + 0x30_0000, AgeOp::Test);
    assert_eq!((r.young, r.visited), (false, 2 * 6));
    f.mmu.zap_all();
    teardown(f);
}

#[test]
fn contention_is_counted() {
    const ID: usize = 47;
    let s = slot(0, 0, 4, HVA);
    let mut f = Fixture::<ID>::new(2, true, &[s]);
    f.map(0, 0, 1, true);
    f.map(1, 0, 1, true);
    let table = &f.table;
    let mut contended = 0;
    for _ in 0..20 {
        let started = AtomicBool::new(false);
        let r = thread::scope(|sc| {
            let no_preempt = NoPreempt::new();
            let rmaps = table.get(0, &no_preempt).unwrap();
            let guard = rmaps
                .rmap(Level::L4K, 1)
                .unwrap()
                .lock_readonly(&no_preempt);
            let ager = sc.spawn(|| {
                let no_preempt = NoPreempt::new();
                started.store(true, StdOrdering::Release);
                table.age_gfn_range_lockless(&no_preempt, 0, Gfn::new(1), Gfn::new(2), AgeOp::Clear)
            });
            while !started.load(StdOrdering::Acquire) {
                thread::yield_now();
            }
            thread::sleep(Duration::from_millis(20));
            drop(guard);
            ager.join().unwrap()
        });
        assert!(r.young);
        contended = r.contended;
        if contended != 0 {
            break;
        }
        // The ager did not get to the lock in time: age again.
        f.translate(0, 1, false).unwrap();
    }
    assert_eq!(contended, 1, "the ager spun on the held rmap");
    f.mmu.zap_all();
    HostPages::<ID>::take_dirty();
    teardown(f);
}

const STRESS_ROOTS: usize = 18;
const STRESS_GFNS: u64 = 300;
const STRESS_ROUNDS: usize = 3000;

/// Agers walk random host-virtual ranges without the MMU lock (a mutex here), each call inside
/// an RCU read-side section emulated by the read side of an `RwLock`, while a mapper maps and
/// zaps under the mutex (freeing the tables its zaps empty after a flush that waits for the
/// walker to leave guest mode), a walker sets A and D like the hardware, and a slot changer zaps,
/// detaches and frees slots after a grace period (the write side of the `RwLock`), then attaches
/// them again.  Without A/D the agers clear under the mutex and the mapper also restores
/// access-tracked leaves.  At the end every present leaf must be in an rmap (no zapped SPTE was
/// made present again) and nothing may leak.
fn stress<const ID: usize>(ad_enabled: bool) {
    // Two slots at unaligned bases; the second's memory follows the first's.
    let slots = [
        slot(0, 0x1f0, STRESS_GFNS, HVA),
        slot(1, 0x40_0100, STRESS_GFNS, HVA + (STRESS_GFNS << PAGE_SHIFT)),
    ];
    let hva_end = HVA + ((2 * STRESS_GFNS) << PAGE_SHIFT);
    let table = TestSlots::new();
    let mut mmu =
        TestMmu::<HostPages<ID>>::with_slots(STRESS_ROOTS, ad_enabled, table.clone()).unwrap();
    for s in &slots {
        assert!(mmu.attach_slot(s).is_ok());
    }
    let roots: Vec<u64> = (0..STRESS_ROOTS)
        .map(|r| mmu.root_pfn(r).unwrap())
        .collect();
    let mmu = Mutex::new(mmu);
    let rcu = RwLock::new(());
    let done = AtomicBool::new(false);
    let walker_mode = VcpuMode::new();

    let (totals, restored, unlinked) = thread::scope(|sc| {
        let agers: Vec<_> = (0..2u64)
            .map(|a| {
                let (table, mmu, rcu, done) = (&table, &mmu, &rcu, &done);
                sc.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ a);
                    let mut totals = BTreeMap::new();
                    let ops = [AgeOp::Test, AgeOp::Clear, AgeOp::ClearFlush];
                    while !done.load(StdOrdering::Relaxed) {
                        let op = ops[rng.below(3) as usize];
                        let start = HVA - 4096 + rng.below(hva_end - HVA + 4096);
                        let end = start + rng.below(64 << PAGE_SHIFT);
                        let r = if use_lockless(op, ad_enabled, false) {
                            let _rcu = rcu.read().unwrap();
                            let no_preempt = NoPreempt::new();
                            table.age_hva_range_lockless(&no_preempt, start, end, op)
                        } else {
                            let r = mmu.lock().unwrap().age_hva_range_locked(start, end, op);
                            assert_eq!(r.lost_races, 0, "nothing races under the lock");
                            r
                        };
                        if op == AgeOp::Test {
                            assert_eq!(r.cleared, 0);
                        }
                        assert_eq!(r.skipped, 0, "no lockless clear without A/D");
                        assert!(r.dirty <= r.write_protected);
                        totals
                            .entry(op as u8)
                            .or_insert_with(|| AgeResult::new(op))
                            .merge(&r);
                    }
                    totals
                })
            })
            .collect();

        let walker = {
            let (roots, done, mode) = (&roots, &done, &walker_mode);
            sc.spawn(move || {
                let mut rng = Rng(77);
                while !done.load(StdOrdering::Relaxed) {
                    let s = &slots[rng.below(2) as usize];
                    let gfn = s.base_gfn.raw() + rng.below(STRESS_GFNS);
                    let root = rng.below(STRESS_ROOTS as u64) as usize;
                    mode.enter_guest();
                    // SAFETY: the MMU outlives the scope, and we are in guest mode: tables the
                    // zaps unlink are freed after a flush that waits for us to leave it.
                    let _ = unsafe {
                        translate::<HostPages<ID>>(
                            roots[root],
                            Gfn::new(gfn),
                            rng.next().is_multiple_of(4),
                        )
                    };
                    mode.exit_guest();
                }
            })
        };

        let changer = {
            let (mmu, rcu) = (&mmu, &rcu);
            sc.spawn(move || {
                for i in 0..STRESS_ROUNDS / 30 {
                    let s = &slots[i % 2];
                    let detached = {
                        let mut m = mmu.lock().unwrap();
                        m.zap_slot(s.id);
                        m.detach_slot(s.id).unwrap()
                    };
                    // synchronize_rcu(): wait for every reader that may see the old set.
                    drop(rcu.write().unwrap());
                    // SAFETY: a grace period has passed since the replacement.
                    unsafe { detached.free_after_grace_period() };
                    thread::yield_now();
                    let old = mmu.lock().unwrap().attach_slot_rcu(s).unwrap();
                    drop(rcu.write().unwrap());
                    // SAFETY: as above.
                    unsafe { old.free_after_grace_period() };
                    thread::sleep(Duration::from_micros(200));
                }
            })
        };

        let mut rng = Rng(12345);
        let mut tables = TableCache::<HostPages<ID>>::new();
        let mut descs = DescCache::new(4);
        let (mut restored, mut unlinked) = (0, 0);
        for _ in 0..STRESS_ROUNDS {
            let s = &slots[rng.below(2) as usize];
            tables.topup(MAP_MIN_TABLES).unwrap();
            descs.topup(8 * MAP_MIN_DESCS).unwrap();
            let mut m = mmu.lock().unwrap();
            for _ in 0..8 {
                let gfn = s.base_gfn.raw() + rng.below(STRESS_GFNS);
                let root = rng.below(STRESS_ROOTS as u64) as usize;
                if !ad_enabled && m.restore_access_tracked(root, Gfn::new(gfn), false) {
                    restored += 1;
                    continue;
                }
                // The slot may be detached right now.
                let _ = m.map(
                    root,
                    s.id,
                    Gfn::new(gfn),
                    Pfn::new(pfn_of(gfn)),
                    rng.next().is_multiple_of(2),
                    &mut tables,
                    &mut descs,
                );
            }
            if rng.below(8) == 0 {
                let start = s.base_gfn.raw() + rng.below(STRESS_GFNS);
                let end = start + rng.below(64);
                // Every flush waits for the lockless walker, before the tables go.
                let mut z = Zap::new(FlushWith(|| walker_mode.request_flush()));
                let slots = m.slots().clone();
                let mut lock = Owned(&mut **m);
                X86Mmu::zap_gfn_range(
                    &mut lock,
                    &mut &*slots,
                    &mut z,
                    s.id,
                    Gfn::new(start),
                    Gfn::new(end),
                );
                z.flush_and_free(&mut lock);
                unlinked += z.unlinked;
            }
            drop(m);
            HostPages::<ID>::take_dirty();
        }
        changer.join().unwrap();
        done.store(true, StdOrdering::Relaxed);
        walker.join().unwrap();
        let mut totals: BTreeMap<u8, AgeResult> = BTreeMap::new();
        for a in agers {
            for (k, r) in a.join().unwrap() {
                totals
                    .entry(k)
                    .or_insert_with(|| AgeResult::new(r.op))
                    .merge(&r);
            }
        }
        (totals, restored, unlinked)
    });

    let mut mmu = mmu.into_inner().unwrap();
    // I1 of src/x86/mmu.rs: every present leaf is in an rmap.  A zapped SPTE made present again by
    // aging would be present without being counted.
    let mut present = 0;
    for root in 0..STRESS_ROOTS {
        for s in &slots {
            present += (s.base_gfn.raw()..s.end_gfn().raw())
                .filter(|&gfn| mmu.leaf(root, Gfn::new(gfn)).is_some())
                .count() as u64;
        }
    }
    assert_eq!(present, mmu.leaf_sptes());
    let no_preempt = NoPreempt::new();
    let in_rmaps: u64 = slots
        .iter()
        .map(|s| table.get(s.id, &no_preempt).unwrap().sptes())
        .sum();
    assert_eq!(in_rmaps, present);
    assert_eq!(mmu.zap_all(), present);
    drop(mmu);
    HostPages::<ID>::take_dirty();
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());

    let clear = totals.get(&(AgeOp::Clear as u8)).copied();
    let test = totals.get(&(AgeOp::Test as u8)).copied();
    let (clear, test) = (clear.unwrap(), test.unwrap());
    assert!(clear.visited > 0 && test.visited > 0, "{clear:?} {test:?}");
    assert!(clear.cleared > 0, "nothing was ever young: {clear:?}");
    if !ad_enabled {
        // Whether the mapper hit a tracked leaf to restore depends on the scheduling.
        assert!(clear.write_protected > 0, "{clear:?} {restored}");
    }
    std::println!("ad={ad_enabled} restored={restored} unlinked={unlinked} totals={totals:?}");
}

#[test]
fn stress_lockless_aging_against_maps_zaps_and_slot_changes() {
    stress::<48>(true);
}

#[test]
fn stress_locked_aging_without_ad() {
    stress::<49>(false);
}

/// Per-call cost of aging one page at a time, as page_idle ages (one `clear_young` per page),
/// lockless and locked, in the layout of `selftests/secmmu_aging_bench.c`: a 256 MiB slot and a
/// 1 GiB slot, one root, every page of the second mapped and old.  A timing harness, not a test:
/// `cargo test --release -- --ignored --nocapture aging_per_call_cost`.
#[test]
#[ignore]
fn aging_per_call_cost() {
    use std::time::Instant;
    const ID: usize = 50;
    const F_PAGES: u64 = 256 << 8;
    const A_PAGES: u64 = 1 << 18;
    let fs = slot(0, 0x10_0000, F_PAGES, HVA);
    let a_hva = HVA + (1 << 40);
    let asl = slot(1, 0x20_0000, A_PAGES, a_hva);
    let mut f = Fixture::<ID>::new(1, true, &[fs, asl]);
    for gfn in asl.base_gfn.raw()..asl.end_gfn().raw() {
        f.map(0, 1, gfn, true);
    }
    let pass = |f: &mut Fixture<ID>, locked: bool, base: u64| {
        let t = Instant::now();
        let mut young = 0;
        for i in 0..A_PAGES {
            let h = base + (i << PAGE_SHIFT);
            let r = if locked {
                f.mmu.age_hva_range_locked(h, h + 4096, AgeOp::Clear)
            } else {
                f.lockless(h, h + 4096, AgeOp::Clear)
            };
            young += u64::from(r.young);
        }
        (t.elapsed().as_nanos() as f64 / A_PAGES as f64, young)
    };
    for round in 0..3 {
        for (name, locked, base) in [
            ("lockless", false, a_hva),
            ("locked", true, a_hva),
            ("lockless, no slot", false, HVA + (1 << 44)),
            ("locked, no slot", true, HVA + (1 << 44)),
        ] {
            let (ns, young) = pass(&mut f, locked, base);
            println!("round {round} {name:18} {ns:6.1} ns/page, {young} young");
        }
    }
    f.mmu.zap_all();
    teardown(f);
}
