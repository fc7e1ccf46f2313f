// SPDX-License-Identifier: GPL-2.0

//! Tests of the x86 MMU (`src/x86/mmu.rs`) with host table pages, and a multi-threaded stress
//! test of the MMU with lockless walkers, software TLBs and the flush protocol (`src/mmu/tlb.rs`).
//!
//! Each test uses its own `HostPages<ID>`, so that its leak and dirty checks see only its own
//! pages while tests run in parallel.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::vec::Vec;

use crate::host_pages::{alloc_page, free_page, page_ptr, HostPages};
use crate::mmu::addr::{Gfn, Hva, Pfn};
use crate::mmu::aging::AgeOp;
use crate::mmu::level::Level;
use crate::mmu::memslot::Slot;
use crate::mmu::pgtable::ZAPPED_TABLES;
use crate::mmu::pgtable::{
    MapAction, TableCache, SNAP_ACCESSED, SNAP_DIRTY, SNAP_PRESENT, SNAP_WRITABLE,
    TABLE_CACHE_CAPACITY,
};
use crate::mmu::prim::Ordering;
use crate::mmu::tlb::{SoftTlb, VcpuMode};
use crate::mmu::zap::{Yield, Zap, ZapLock};
use crate::test_util::{
    check_zap_log, run_zap, unasked_flushes, Rng, TestLock, TestYield, ZapEvent, ZapRun,
};
use crate::x86::mmu::TABLE_SCAN_BATCH;
use crate::x86::mmu::{
    translate, MapError, MapOutcome, SlotRmaps, Translation, WalkFault, X86Mmu, GFN_BITS,
    MAP_MIN_DESCS, MAP_MIN_TABLES, MAX_ROOTS,
};
use crate::x86::rmap::DescCache;
use crate::x86::spte;
use crate::x86_slots::{slot_ref, TestMmu};

fn slot(id: u32, base_gfn: u64, npages: u64) -> Slot {
    Slot {
        id,
        flags: 0,
        base_gfn: Gfn::new(base_gfn),
        npages,
        userspace_addr: Hva::new(0x7000_0000_0000),
    }
}

/// An MMU with host pages of test `ID`, and the caches a fault path would top up.
struct Fixture<const ID: usize> {
    mmu: TestMmu<HostPages<ID>>,
    tables: TableCache<HostPages<ID>>,
    descs: DescCache,
}

impl<const ID: usize> Fixture<ID> {
    fn new(nr_roots: usize, ad_enabled: bool, slots: &[Slot]) -> Self {
        let mut mmu = TestMmu::new(nr_roots, ad_enabled).unwrap();
        for s in slots {
            assert!(mmu.attach_slot(s).is_ok());
        }
        Fixture {
            mmu,
            tables: TableCache::new(),
            descs: DescCache::new(4),
        }
    }

    fn try_map(
        &mut self,
        root: usize,
        slot_id: u32,
        gfn: u64,
        pfn: u64,
        writable: bool,
    ) -> Result<MapOutcome, MapError> {
        self.tables.topup(MAP_MIN_TABLES).unwrap();
        self.descs.topup(MAP_MIN_DESCS).unwrap();
        self.mmu.map(
            root,
            slot_id,
            Gfn::new(gfn),
            Pfn::new(pfn),
            writable,
            &mut self.tables,
            &mut self.descs,
        )
    }

    fn map(&mut self, root: usize, slot_id: u32, gfn: u64, pfn: u64, writable: bool) -> MapOutcome {
        self.try_map(root, slot_id, gfn, pfn, writable).unwrap()
    }

    fn translate(&self, root: usize, gfn: u64, write: bool) -> Result<Translation, WalkFault> {
        let root_pfn = self.mmu.root_pfn(root).unwrap();
        // SAFETY: `root_pfn` is a root of `self.mmu`, which is borrowed for the call.
        unsafe { translate::<HostPages<ID>>(root_pfn, Gfn::new(gfn), write) }
    }

    /// The leaf value of `gfn` in `root`, or 0.
    fn spte(&self, root: usize, gfn: u64) -> u64 {
        self.mmu.leaf(root, Gfn::new(gfn)).map_or(0, |(_, v, _)| v)
    }

    /// Clears `bits` in the leaf of `gfn` in `root`, as aging or a test would.
    fn clear_bits(&self, root: usize, gfn: u64, bits: u64) {
        let (sptep, _, _) = self.mmu.leaf(root, Gfn::new(gfn)).unwrap();
        sptep.fetch_and(!bits, Ordering::Relaxed);
    }

    /// Zaps `[start, end)` of `slot_id` to the end, never asked to yield, then flushes and
    /// frees as the kernel's caller does.
    fn zap(&mut self, slot_id: u32, start: u64, end: u64) -> ZapRun {
        self.mmu.zap_to_end(
            HostPages::<ID>::frees,
            slot_id,
            Gfn::new(start),
            Gfn::new(end),
        )
    }
}

/// Drops the fixture and checks that every table page it allocated was freed.
fn teardown<const ID: usize>(f: Fixture<ID>) {
    drop(f);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

fn pfn_of(gfn: u64) -> u64 {
    0x10_0000 + 3 * gfn
}

#[test]
fn map_translate_round_trip_all_roots() {
    const ID: usize = 1;
    // Crosses a 1G boundary: per root, one table of 1G entries, two of 2M, two of 4K.
    let (base, n) = (0x3fe00, 1024);
    let mut f = Fixture::<ID>::new(MAX_ROOTS, true, &[slot(0, base, n)]);
    assert_eq!((f.mmu.nr_roots(), f.mmu.ad_enabled()), (MAX_ROOTS, true));
    assert_eq!(f.mmu.root_pfn(MAX_ROOTS), None);
    let mut new_tables = 0;
    for root in 0..MAX_ROOTS {
        for gfn in base..base + n {
            let o = f.map(root, 0, gfn, pfn_of(gfn), gfn % 2 == 0);
            assert_eq!(o.action, MapAction::Installed);
            // Chains grow past one descriptor (32 roots > 14 per descriptor).
            assert_eq!(o.chain_len, root + 1);
            assert!(!o.needs_flush());
            new_tables += o.new_tables;
        }
    }
    assert_eq!(new_tables, 5 * MAX_ROOTS);
    assert_eq!(f.mmu.table_pages(), 6 * MAX_ROOTS as u64);
    assert_eq!(f.mmu.leaf_sptes(), MAX_ROOTS as u64 * n);

    for root in 0..MAX_ROOTS {
        for gfn in base..base + n {
            let writable = gfn % 2 == 0;
            let t = f.translate(root, gfn, false).unwrap();
            assert_eq!(t.pfn.raw(), pfn_of(gfn));
            assert_eq!(t.level, Level::L4K);
            assert_eq!((t.writable, t.dirty), (writable, writable));
            let snap = if writable {
                SNAP_PRESENT | SNAP_WRITABLE | SNAP_ACCESSED | SNAP_DIRTY
            } else {
                SNAP_PRESENT | SNAP_ACCESSED
            };
            assert_eq!(f.mmu.snapshot(root, Gfn::new(gfn)), snap);
        }
        assert_eq!(
            f.translate(root, base - 1, false),
            Err(WalkFault::NotPresent)
        );
        assert_eq!(
            f.translate(root, base + n, false),
            Err(WalkFault::NotPresent)
        );
    }

    assert_eq!(f.mmu.zap_all(), MAX_ROOTS as u64 * n);
    assert_eq!(f.mmu.leaf_sptes(), 0);
    for root in [0, MAX_ROOTS - 1] {
        for gfn in base..base + n {
            assert_eq!(f.translate(root, gfn, false), Err(WalkFault::NotPresent));
            assert_eq!(f.mmu.snapshot(root, Gfn::new(gfn)), 0);
        }
    }
    // Fresh writable leaves are dirty: every root's mapping of every writable page reported.
    let dirty = HostPages::<ID>::take_dirty();
    assert_eq!(dirty.len(), MAX_ROOTS * n as usize / 2);
    let expect: BTreeSet<u64> = (base..base + n)
        .filter(|g| g % 2 == 0)
        .map(pfn_of)
        .collect();
    assert_eq!(dirty.into_iter().collect::<BTreeSet<_>>(), expect);
    // Tables stay until the MMU goes.
    assert_eq!(f.mmu.table_pages(), 6 * MAX_ROOTS as u64);
    teardown(f);
}

#[test]
fn read_only_upgraded_in_place() {
    const ID: usize = 2;
    let mut f = Fixture::<ID>::new(2, true, &[slot(0, 0, 16)]);
    let o = f.map(0, 0, 3, 0x42, false);
    assert_eq!(
        (o.action, o.chain_len, o.new_tables),
        (MapAction::Installed, 1, 3)
    );
    let (before, _, _) = f.mmu.leaf(0, Gfn::new(3)).unwrap();
    let before = std::ptr::from_ref(before);

    assert_eq!(f.translate(0, 3, true), Err(WalkFault::WriteProtected));
    let t = f.translate(0, 3, false).unwrap();
    assert_eq!((t.pfn.raw(), t.writable, t.dirty), (0x42, false, false));
    // A read fault on a read-only leaf changes nothing.
    assert_eq!(f.map(0, 0, 3, 0x42, false).action, MapAction::Unchanged);

    let o = f.map(0, 0, 3, 0x42, true);
    assert_eq!(
        (o.action, o.chain_len, o.new_tables),
        (MapAction::Upgraded, 0, 0)
    );
    assert!(!o.needs_flush());
    let (after, spte, _) = f.mmu.leaf(0, Gfn::new(3)).unwrap();
    assert!(std::ptr::eq(before, after), "upgraded in place");
    assert!(spte::is_writable(spte) && spte::is_dirty(spte));
    let t = f.translate(0, 3, true).unwrap();
    assert_eq!((t.pfn.raw(), t.writable, t.dirty), (0x42, true, true));
    // A read-only map never takes W away.
    assert_eq!(f.map(0, 0, 3, 0x42, false).action, MapAction::Unchanged);
    assert!(f.translate(0, 3, true).is_ok());
    // The other root is untouched.
    assert_eq!(f.translate(1, 3, false), Err(WalkFault::NotPresent));

    assert_eq!(f.mmu.leaf_sptes(), 1);
    // One rmap entry: one SPTE zapped.
    let p = f.zap(0, 0, 16);
    assert_eq!((p.zapped, p.dirty), (1, 1));
    assert_eq!(HostPages::<ID>::take_dirty(), [0x42]);
    teardown(f);
}

#[test]
fn walker_sets_accessed_and_dirty() {
    const ID: usize = 3;
    let mut f = Fixture::<ID>::new(1, true, &[slot(0, 0x100, 16)]);
    f.map(0, 0, 0x105, 0x77, true);
    f.clear_bits(0, 0x105, spte::ACCESSED | spte::DIRTY);
    assert_eq!(
        f.mmu.snapshot(0, Gfn::new(0x105)),
        SNAP_PRESENT | SNAP_WRITABLE
    );

    let t = f.translate(0, 0x105, false).unwrap();
    assert!(t.writable && !t.dirty, "a read does not set D");
    let v = f.spte(0, 0x105);
    assert!(spte::is_accessed(v) && !spte::is_dirty(v));
    assert_eq!(
        f.mmu.snapshot(0, Gfn::new(0x105)),
        SNAP_PRESENT | SNAP_WRITABLE | SNAP_ACCESSED
    );

    f.clear_bits(0, 0x105, spte::ACCESSED);
    let t = f.translate(0, 0x105, true).unwrap();
    assert!(t.writable && t.dirty);
    let v = f.spte(0, 0x105);
    assert!(spte::is_accessed(v) && spte::is_dirty(v));

    // A walk that finds A (and D) set already leaves the SPTE alone.
    assert!(f.translate(0, 0x105, true).is_ok());
    assert_eq!(f.spte(0, 0x105), v);

    // Clean when zapped: not reported dirty.
    f.clear_bits(0, 0x105, spte::DIRTY);
    assert_eq!(f.zap(0, 0x100, 0x110).dirty, 0);
    assert!(HostPages::<ID>::take_dirty().is_empty());
    teardown(f);
}

#[test]
fn ad_disabled_walks_and_access_tracking() {
    const ID: usize = 4;
    let mut f = Fixture::<ID>::new(1, false, &[slot(0, 0, 8)]);
    assert!(!f.mmu.ad_enabled());
    f.map(0, 0, 1, 0x11, true);
    f.map(0, 0, 2, 0x22, false);
    let (v1, v2) = (f.spte(0, 1), f.spte(0, 2));
    assert!(!spte::is_ad_enabled(v1));

    // No A/D updates without A/D; writable counts as dirty.
    let t = f.translate(0, 1, true).unwrap();
    assert!(t.writable && t.dirty);
    assert_eq!(f.translate(0, 2, true), Err(WalkFault::WriteProtected));
    assert!(f.translate(0, 2, false).is_ok());
    assert_eq!((f.spte(0, 1), f.spte(0, 2)), (v1, v2));
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1)), 0x0f);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(2)), SNAP_PRESENT | SNAP_ACCESSED);

    // Access-tracked: present for the MMU, a fault for the walker.
    let (sptep, _, _) = f.mmu.leaf(0, Gfn::new(1)).unwrap();
    sptep.store(spte::mark_access_tracked(v1), Ordering::Relaxed);
    assert_eq!(f.translate(0, 1, false), Err(WalkFault::NotPresent));
    assert_eq!(f.translate(0, 1, true), Err(WalkFault::NotPresent));
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1)), SNAP_PRESENT);
    // The fault path restores it.
    assert_eq!(f.map(0, 0, 1, 0x11, false).action, MapAction::Restored);
    assert_eq!(f.spte(0, 1), v1);
    assert!(f.translate(0, 1, true).is_ok());

    // A write fault on a tracked read-only leaf makes it writable.
    let (sptep, _, _) = f.mmu.leaf(0, Gfn::new(2)).unwrap();
    sptep.store(spte::mark_access_tracked(v2), Ordering::Relaxed);
    assert_eq!(f.map(0, 0, 2, 0x22, true).action, MapAction::Upgraded);
    assert!(f.translate(0, 2, true).is_ok());

    // Without A/D, writable leaves are dirty when zapped.
    assert_eq!(f.zap(0, 0, 8).dirty, 2);
    let dirty: BTreeSet<u64> = HostPages::<ID>::take_dirty().into_iter().collect();
    assert_eq!(dirty, BTreeSet::from([0x11, 0x22]));
    teardown(f);
}

/// A pre-fault's leaf (KVM's prefetched SPTE, `mark_spte_for_access_track()`): read-only and
/// not accessed with A/D bits, until the walker's first access sets A; access-tracked without
/// them, until the fault path restores it.  A leaf already there is left as it is, young or
/// access-tracked.
#[test]
fn prefetch_leaves_are_not_accessed() {
    const ID: usize = 72;
    for ad in [true, false] {
        let mut f = Fixture::<ID>::new(1, ad, &[slot(0, 0, 1024)]);
        let prefetch_w = |f: &mut Fixture<ID>, gfn: u64, level: Level, writable: bool| {
            f.tables.topup(MAP_MIN_TABLES).unwrap();
            f.descs.topup(MAP_MIN_DESCS).unwrap();
            f.mmu
                .map_level_prefetch(
                    0,
                    0,
                    Gfn::new(gfn),
                    Pfn::new(0x4_0000 + gfn),
                    writable,
                    level,
                    &mut f.tables,
                    &mut f.descs,
                )
                .unwrap()
        };
        let prefetch =
            |f: &mut Fixture<ID>, gfn: u64, level: Level| prefetch_w(f, gfn, level, false);
        assert_eq!(prefetch(&mut f, 3, Level::L4K).action, MapAction::Installed);
        assert_eq!(
            prefetch(&mut f, 512, Level::L2M).action,
            MapAction::Installed
        );
        for (gfn, level) in [(3, Level::L4K), (512, Level::L2M)] {
            let v = f.spte(0, gfn);
            assert!(spte::is_present(v) && !spte::is_writable(v) && !spte::is_accessed(v));
            assert_eq!(f.mmu.snapshot(0, Gfn::new(gfn)) & SNAP_ACCESSED, 0);
            if ad {
                let t = f.translate(0, gfn, false).unwrap();
                assert!(!t.writable);
                assert!(spte::is_accessed(f.spte(0, gfn)), "the walker sets A");
            } else {
                assert!(spte::is_access_tracked(v));
                assert_eq!(f.translate(0, gfn, false), Err(WalkFault::NotPresent));
                // A pre-fault does not restore it either; a fault does.
                let again = prefetch(&mut f, gfn, level).action;
                assert_eq!(again, MapAction::Unchanged);
                assert!(spte::is_access_tracked(f.spte(0, gfn)));
                if level == Level::L4K {
                    let restored = f.map(0, 0, gfn, 0x4_0000 + gfn, false).action;
                    assert_eq!(restored, MapAction::Restored);
                    assert!(f.translate(0, gfn, false).is_ok());
                }
            }
        }
        // A young leaf stays young, and a writable one writable.
        f.map(0, 0, 7, 0x4_0007, true);
        let v = f.spte(0, 7);
        assert_eq!(prefetch(&mut f, 7, Level::L4K).action, MapAction::Unchanged);
        assert_eq!(f.spte(0, 7), v);
        // A fault-around's leaf: writable but not accessed, until the walker
        // (or, without A/D, a fault) makes it so; a read-only leaf there
        // gains W and keeps its age.
        let got = prefetch_w(&mut f, 9, Level::L4K, true).action;
        assert_eq!(got, MapAction::Installed);
        let v = f.spte(0, 9);
        assert!(spte::is_present(v) && !spte::is_accessed(v));
        if ad {
            assert!(spte::is_writable(v));
            assert!(f.translate(0, 9, true).unwrap().writable);
            assert!(spte::is_accessed(f.spte(0, 9)), "the walker sets A");
        } else {
            assert!(spte::is_access_tracked(v));
            f.map(0, 0, 9, 0x4_0009, true);
            let v = f.spte(0, 9);
            assert!(spte::is_writable(v) && !spte::is_access_tracked(v));
        }
        f.map(0, 0, 11, 0x4_000b, false);
        let got = prefetch_w(&mut f, 11, Level::L4K, true).action;
        assert_eq!(got, MapAction::Upgraded);
        assert!(spte::is_writable(f.spte(0, 11)));
        f.zap(0, 0, 1024);
        teardown(f);
    }
}

#[test]
fn zap_range_reports_exactly_the_dirty_pages() {
    const ID: usize = 5;
    let n = 2048;
    let mut f = Fixture::<ID>::new(2, true, &[slot(0, 0, n)]);
    for root in 0..2 {
        for gfn in 0..n {
            f.map(root, 0, gfn, pfn_of(gfn), gfn % 3 != 0);
            f.clear_bits(root, gfn, spte::DIRTY);
        }
    }
    // Guest writes: root 0 to multiples of 7, root 1 to multiples of 11, when writable.
    let written =
        |root: usize, gfn: u64| !gfn.is_multiple_of(3) && gfn.is_multiple_of([7, 11][root]);
    for root in 0..2 {
        for gfn in 0..n {
            assert!(f.translate(root, gfn, written(root, gfn)).is_ok());
        }
    }

    let (start, end) = (100, 1500);
    let p = f.zap(0, start, end);
    assert_eq!(p.zapped, 2 * (end - start));
    assert_eq!(p.flushes, 1);
    let expect_count = (0..2)
        .flat_map(|root| (start..end).filter(move |&g| written(root, g)))
        .count();
    assert_eq!(p.dirty, expect_count as u64);
    let dirty = HostPages::<ID>::take_dirty();
    assert_eq!(dirty.len(), expect_count);
    let expect: BTreeSet<u64> = (start..end)
        .filter(|&g| written(0, g) || written(1, g))
        .map(pfn_of)
        .collect();
    assert_eq!(dirty.into_iter().collect::<BTreeSet<_>>(), expect);

    for root in 0..2 {
        for gfn in 0..n {
            let mapped = f.translate(root, gfn, false).is_ok();
            assert_eq!(
                mapped,
                !(start..end).contains(&gfn),
                "root {root} gfn {gfn}"
            );
        }
    }
    assert_eq!(f.mmu.leaf_sptes(), 2 * (n - (end - start)));
    // Zapping again finds nothing, and needs no flush.
    let p = f.zap(0, start, end);
    assert_eq!((p.zapped, p.flushes), (0, 0));
    teardown(f);
}

#[test]
fn zap_resumes_where_it_stopped() {
    const ID: usize = 6;
    let (base, n) = (0x10, 5000);
    let mut f = Fixture::<ID>::new(3, true, &[slot(0, base, n)]);
    for root in 0..3 {
        for gfn in base..base + n {
            f.map(root, 0, gfn, pfn_of(gfn), true);
        }
    }
    // No level ends on a batch boundary (0x12e1 4K rmaps), so every step but the last stops
    // after exactly one batch.
    let (start, end) = (0x20, 0x1301);
    // The leaves each step zapped: it ends at a yield.
    let mut at = Vec::new();
    let slots = f.mmu.slots().clone();
    let p = run_zap(
        &mut *f.mmu,
        HostPages::<ID>::frees,
        || true,
        |mmu: &mut X86Mmu<_>| at.push(mmu.stats().zapped),
        |lock, z| X86Mmu::zap_gfn_range(lock, &mut &*slots, z, 0, Gfn::new(start), Gfn::new(end)),
    );
    let steps = p.yields as u64 + 1;
    let (zapped, visited) = (p.zapped, p.visited);
    // Asked at every poll, so every poll yielded, after one batch: progress every step, and
    // what a step zapped flushed before its yield.
    assert_eq!(p.polls, 0);
    for (i, w) in p.log.windows(3).enumerate() {
        if w[2].0 == ZapEvent::Resched {
            let yield_no = p.log[..i]
                .iter()
                .filter(|e| e.0 == ZapEvent::Resched)
                .count();
            let before = if yield_no == 0 { 0 } else { at[yield_no - 1] };
            let flush = if at[yield_no] > before {
                ZapEvent::Flush
            } else {
                ZapEvent::Elided
            };
            assert_eq!(w[1].0, flush, "{:?}", p.log);
        }
    }
    // Every SPTE of the range zapped once (a second zap of one would trip the MMU's debug
    // check of a non-present SPTE in an rmap).
    assert_eq!(zapped, 3 * (end - start));
    // 4K rmaps, then the 2M blocks from 0 (aligned down) to 0x1300, then one 1G block; then,
    // in each root, the table entries walked for empty tables (none: the slot is mapped on
    // both sides of the range), whose visits do not reach a poll: the root's entry, the 1G
    // entry's and the ten 2M entries'.
    let rmaps = (end - start) + (0x1300 >> 9) + 1 + 1;
    assert_eq!(visited, rmaps + 3 * (1 + 1 + 10));
    assert_eq!(steps, rmaps.div_ceil(32));
    assert_eq!(f.mmu.leaf_sptes(), 3 * (n - (end - start)));
    for gfn in [base, start - 1, end, base + n - 1] {
        assert!(f.translate(2, gfn, false).is_ok());
    }
    for gfn in [start, end - 1] {
        assert_eq!(f.translate(2, gfn, false), Err(WalkFault::NotPresent));
    }
    teardown(f);
}

#[test]
fn unaligned_slots_and_ranges() {
    const ID: usize = 7;
    // Not 2M-aligned at either end: 4 blocks of 2M (0x000-0x1ff .. 0x600-0x7ff).
    let a = slot(0, 0x1f0, 0x420);
    // Across a 1G boundary: two 1G blocks, two 2M blocks.
    let b = slot(1, 0x3ffff, 2);
    let (ra, rb) = (SlotRmaps::new(&a).unwrap(), SlotRmaps::new(&b).unwrap());
    let counts = |r: &SlotRmaps| Level::MAPPABLE.map(|l| r.nr_rmaps(l));
    assert_eq!(counts(&ra), [0x420, 4, 1]);
    assert_eq!(counts(&rb), [2, 2, 2]);
    drop((ra, rb));

    let mut f = Fixture::<ID>::new(1, true, &[a, b]);
    let map_all = |f: &mut Fixture<ID>| {
        for s in [a, b] {
            for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
                f.map(0, s.id, gfn, pfn_of(gfn), true);
            }
        }
    };
    let check = |f: &Fixture<ID>, s: Slot, zapped: &dyn Fn(u64) -> bool| {
        for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
            let mapped = f.translate(0, gfn, false).is_ok();
            assert_eq!(mapped, !zapped(gfn), "gfn {gfn:#x}");
        }
    };
    map_all(&mut f);

    // (range, rmaps visited at 4K + 2M + 1G + table entries walked for empty tables: the
    // root's, the 1G entry's and the 2M entries' over the part of the range in the slot)
    let cases = [
        ((0x1f5, 0x3f7), 0x202 + 2 + 1 + 4),
        ((0, 0x1f8), 8 + 1 + 1 + 3),
        ((0x600, 0x10000), 0x10 + 1 + 1 + 3),
        ((0x1f0, 0x610), 0x420 + 4 + 1 + 6),
        ((0x3ff, 0x401), 2 + 2 + 1 + 4),
        // Past the slot's last gfn, but its last 2M block and its 1G block overlap the range;
        // no table to walk.
        ((0x700, 0x800), 1 + 1),
    ];
    for ((start, end), visited) in cases {
        let p = f.zap(0, start, end);
        assert_eq!(p.visited, visited, "[{start:#x}, {end:#x})");
        let expect = end
            .min(a.end_gfn().raw())
            .saturating_sub(start.max(a.base_gfn.raw()));
        assert_eq!(p.zapped, expect);
        check(&f, a, &|g| g >= start && g < end);
        check(&f, b, &|_| false);
        map_all(&mut f);
    }

    // Slot b, across the 1G boundary: the second gfn's huge blocks are the second rmaps.  Its
    // 4K and 2M tables hold nothing else: unlinked (3 table entries walked).
    let p = f.zap(1, 0x40000, 0x40001);
    assert_eq!((p.zapped, p.visited, p.unlinked_tables), (1, 3 + 3, 2));
    check(&f, b, &|g| g == 0x40000);
    check(&f, a, &|_| false);
    // The root's entry, two 1G entries, the 2M entry of the first gfn.  Its 4K table goes;
    // the 2M table of the first 1G also links slot a's tables, and stays.
    let p = f.zap(1, 0, u64::MAX);
    assert_eq!((p.zapped, p.visited, p.unlinked_tables), (1, 6 + 4, 1));
    teardown(f);
}

#[test]
fn zap_all_then_drop_frees_every_table() {
    const ID: usize = 8;
    let slots = [
        slot(0, 0, 600),
        slot(5, 1 << 20, 100),
        slot(63, 1 << 30, 10),
    ];
    let mut f = Fixture::<ID>::new(4, true, &slots);
    let mut mapped = 0;
    for root in 0..4 {
        for s in &slots {
            for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
                f.map(root, s.id, gfn, pfn_of(gfn), gfn % 2 == 1);
                mapped += 1;
            }
        }
    }
    assert_eq!(f.mmu.zap_all(), mapped);
    assert_eq!(f.mmu.zap_all(), 0);
    assert_eq!(f.mmu.stats().zapped, mapped);
    assert_eq!(
        f.mmu.stats().dirty,
        HostPages::<ID>::take_dirty().len() as u64
    );
    // Mapped again, then dropped without zapping: the drop zaps.
    for s in &slots {
        f.map(3, s.id, s.base_gfn.raw(), 1, true);
    }
    // Allocated: the tables linked, and those left in the cache.
    let allocated = f.mmu.table_pages() + f.tables.len() as u64;
    assert_eq!(allocated, HostPages::<ID>::allocs());
    teardown(f);
    assert_eq!(HostPages::<ID>::take_dirty(), [1, 1, 1]);
}

#[test]
fn snapshot_bytes() {
    const ID: usize = 9;
    let mut f = Fixture::<ID>::new(2, true, &[slot(0, 0, 4)]);
    f.map(0, 0, 0, 0x10, false);
    f.map(0, 0, 1, 0x11, true);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(0)), 0x05);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1)), 0x0f);
    f.clear_bits(0, 0, spte::ACCESSED);
    f.clear_bits(0, 1, spte::ACCESSED | spte::DIRTY);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(0)), 0x01);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1)), 0x03);
    f.translate(0, 1, false).unwrap();
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1)), 0x07);
    f.translate(0, 1, true).unwrap();
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1)), 0x0f);
    // Unmapped, other root, no such root, beyond the guest-physical width.
    assert_eq!(f.mmu.snapshot(0, Gfn::new(2)), 0);
    assert_eq!(f.mmu.snapshot(1, Gfn::new(1)), 0);
    assert_eq!(f.mmu.snapshot(2, Gfn::new(1)), 0);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(1 | (1 << GFN_BITS))), 0);
    assert_eq!(
        f.translate(0, 1 | (1 << GFN_BITS), false),
        Err(WalkFault::NotPresent)
    );
    teardown(f);
}

#[test]
fn stale_leaf_is_zapped_and_replaced() {
    const ID: usize = 10;
    let mut f = Fixture::<ID>::new(2, true, &[slot(0, 0, 4)]);
    f.map(0, 0, 2, 0xa, true);
    f.map(1, 0, 2, 0xa, true);
    let o = f.map(0, 0, 2, 0xb, false);
    assert_eq!((o.action, o.chain_len), (MapAction::Replaced, 2));
    assert!(o.needs_flush());
    assert_eq!(HostPages::<ID>::take_dirty(), [0xa]);
    let t = f.translate(0, 2, false).unwrap();
    assert_eq!((t.pfn.raw(), t.writable), (0xb, false));
    assert_eq!(f.translate(1, 2, false).unwrap().pfn.raw(), 0xa);
    assert_eq!(f.mmu.leaf_sptes(), 2);
    assert_eq!(f.mmu.zap_all(), 2);
    assert_eq!(HostPages::<ID>::take_dirty(), [0xa]);
    teardown(f);
}

impl<const ID: usize> Fixture<ID> {
    fn map_huge(&mut self, gfn: u64, pfn: u64, level: Level) -> MapOutcome {
        self.map_huge_in(0, gfn, pfn, level)
    }

    fn map_huge_in(&mut self, root: usize, gfn: u64, pfn: u64, level: Level) -> MapOutcome {
        self.tables.topup(MAP_MIN_TABLES).unwrap();
        self.descs.topup(MAP_MIN_DESCS).unwrap();
        let o = self
            .mmu
            .map_level(
                root,
                0,
                Gfn::new(gfn),
                Pfn::new(pfn),
                true,
                level,
                &mut self.tables,
                &mut self.descs,
            )
            .unwrap();
        if let Some(t) = o.unlinked {
            // SAFETY: no walker runs in this test, so none can be inside the unlinked table.
            unsafe { self.mmu.free_unlinked(t) };
        }
        o
    }
}

/// 2M and 1G leaves translate every 4K page under them, show their level, and are zapped by a
/// range that only touches them.
#[test]
fn huge_leaves_map_translate_and_zap() {
    const ID: usize = 60;
    let mut f = Fixture::<ID>::new(1, true, &[slot(0, 0, 1 << 19)]);
    assert_eq!(f.mmu.max_map_level(), Level::L1G);
    let o = f.map_huge(0x200, 0x8_0000, Level::L2M);
    assert_eq!(
        (o.action, o.new_tables, o.split),
        (MapAction::Installed, 2, false)
    );
    let t = f.translate(0, 0x2ff, true).unwrap();
    assert_eq!((t.pfn.raw(), t.level), (0x8_00ff, Level::L2M));
    assert_eq!(f.mmu.snapshot(0, Gfn::new(0x3ff)) >> 4, Level::L2M.uapi());
    let o = f.map_huge(1 << 18, 1 << 20, Level::L1G);
    assert_eq!(o.action, MapAction::Installed);
    assert_eq!(
        f.translate(0, (1 << 18) + 7, false).unwrap().pfn.raw(),
        (1 << 20) + 7
    );
    // Unaligned: refused.
    assert_eq!(
        f.mmu.map_level(
            0,
            0,
            Gfn::new(0x201),
            Pfn::new(0x8_0000),
            true,
            Level::L2M,
            &mut f.tables,
            &mut f.descs
        ),
        Err(MapError::BadGfn)
    );
    assert_eq!(
        f.mmu.map_level(
            0,
            0,
            Gfn::new(0x400),
            Pfn::new(0x8_0001),
            true,
            Level::L2M,
            &mut f.tables,
            &mut f.descs
        ),
        Err(MapError::BadPfn)
    );
    // One 4K gfn at the end of each: both huge leaves go ("Ranges and mapping levels" in
    // Documentation/secmmu-protocols.rst).
    let p = f.zap(0, 0x3ff, 0x400);
    assert_eq!(p.zapped, 1);
    let p = f.zap(0, (1 << 18) + 5, (1 << 18) + 6);
    assert_eq!(p.zapped, 1);
    assert_eq!(f.mmu.leaf_sptes(), 0);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

/// A 4K map under a huge leaf splits it; a huge map over a table collapses it, zapping every
/// leaf under it and handing the table back to be freed after the flush.
#[test]
fn split_and_collapse() {
    const ID: usize = 61;
    let mut f = Fixture::<ID>::new(1, true, &[slot(0, 0, 1 << 19)]);
    f.map_huge(0x400, 0x1000, Level::L2M);
    let o = f.map(0, 0, 0x405, 0x2005, true);
    assert!(o.split && o.needs_flush() && o.unlinked.is_none());
    assert_eq!(f.mmu.leaves_by_level(), [1, 0, 0]);
    assert_eq!(f.translate(0, 0x405, false).unwrap().level, Level::L4K);
    assert_eq!(f.translate(0, 0x406, false), Err(WalkFault::NotPresent));
    f.map(0, 0, 0x407, 0x2007, true);
    let pages = f.mmu.table_pages();
    let o = f.map_huge(0x400, 0x1000, Level::L2M);
    assert_eq!(o.unlinked.map(|t| t.covers), Some(Level::L2M));
    assert!(o.needs_flush() && !o.split && o.action == MapAction::Replaced);
    assert_eq!(f.mmu.table_pages(), pages - 1);
    assert_eq!(f.mmu.leaves_by_level(), [0, 1, 0]);
    assert_eq!(f.translate(0, 0x405, false).unwrap().pfn.raw(), 0x1005);
    // A 1G collapse over 2M leaves, 4K tables and an empty table.
    f.map(0, 0, 0x600, 0x3000, true);
    let pages = f.mmu.table_pages();
    let o = f.map_huge(0, 0, Level::L1G);
    assert_eq!(o.unlinked.map(|t| t.covers), Some(Level::L1G));
    assert_eq!(f.mmu.table_pages(), pages - 2);
    assert_eq!(f.mmu.leaves_by_level(), [0, 0, 1]);
    assert_eq!(f.translate(0, 0x405, false).unwrap().pfn.raw(), 0x405);
    // Empty tables (a zap of a range unlinks them, but not a zap of the whole slot, as at
    // release): still unlinked and freed.
    f.map(0, 0, 1 << 18, 0x5000, true);
    f.mmu.zap_slot(0);
    let o = f.map_huge(1 << 18, 1 << 18, Level::L1G);
    assert!(o.unlinked.is_some() && o.action == MapAction::Installed && o.needs_flush());
    HostPages::<ID>::take_dirty();
    teardown(f);
}

#[test]
fn map_errors_change_nothing() {
    const ID: usize = 11;
    let mut f = Fixture::<ID>::new(1, true, &[slot(0, 0x100, 4)]);
    let pages = f.mmu.table_pages();
    assert_eq!(f.try_map(1, 0, 0x100, 1, true), Err(MapError::BadRoot));
    assert_eq!(f.try_map(0, 1, 0x100, 1, true), Err(MapError::NoSlot));
    assert_eq!(f.try_map(0, 64, 0x100, 1, true), Err(MapError::NoSlot));
    assert_eq!(f.try_map(0, 0, 0x104, 1, true), Err(MapError::BadGfn));
    assert_eq!(f.try_map(0, 0, 0xff, 1, true), Err(MapError::BadGfn));
    assert_eq!(
        f.try_map(0, 0, 1 << GFN_BITS, 1, true),
        Err(MapError::BadGfn)
    );
    assert_eq!(f.try_map(0, 0, 0x100, 1 << 40, true), Err(MapError::BadPfn));

    let mut tables = TableCache::<HostPages<ID>>::new();
    let mut descs = DescCache::new(1);
    let r = f.mmu.map(
        0,
        0,
        Gfn::new(0x100),
        Pfn::new(1),
        true,
        &mut tables,
        &mut descs,
    );
    assert_eq!(r, Err(MapError::NeedTopup));
    tables.topup(MAP_MIN_TABLES).unwrap();
    let r = f.mmu.map(
        0,
        0,
        Gfn::new(0x100),
        Pfn::new(1),
        true,
        &mut tables,
        &mut descs,
    );
    assert_eq!(r, Err(MapError::NeedTopup), "descriptor cache empty");
    assert_eq!(f.mmu.table_pages(), pages);
    assert_eq!(f.mmu.snapshot(0, Gfn::new(0x100)), 0);
    descs.topup(MAP_MIN_DESCS).unwrap();
    let r = f.mmu.map(
        0,
        0,
        Gfn::new(0x100),
        Pfn::new(1),
        true,
        &mut tables,
        &mut descs,
    );
    assert_eq!(r.unwrap().new_tables, 3);
    assert_eq!(tables.len(), TABLE_CACHE_CAPACITY - 3);
    drop((tables, descs));
    teardown(f);
}

#[test]
fn attach_and_detach_slots() {
    const ID: usize = 12;
    let s = slot(3, 0x1000, 8);
    let mut f = Fixture::<ID>::new(1, true, &[]);
    assert_eq!(f.try_map(0, 3, 0x1000, 1, true), Err(MapError::NoSlot));
    assert!(f.mmu.attach_slot(&s).is_ok());
    let again = f.mmu.attach_slot(&s);
    assert!(again.is_err(), "slot 3 has rmaps already");
    let bad = f.mmu.attach_slot(&slot(4, 0x1004, 2));
    assert!(bad.is_err(), "overlaps slot 3");

    f.map(0, 3, 0x1007, 1, true);
    assert_eq!(f.mmu.zap_slot(3), 1);
    let rmaps = f.mmu.detach_slot(3).unwrap();
    let old = rmaps.get().by_id(3).and_then(slot_ref).unwrap();
    assert_eq!(old.sptes(), 0);
    // SAFETY: no lockless reader runs in this test: the grace period is trivially over.
    unsafe { rmaps.free_after_grace_period() };
    assert!(f.mmu.detach_slot(3).is_none());
    assert_eq!(f.try_map(0, 3, 0x1007, 1, true), Err(MapError::NoSlot));
    // Recreated at the same id, with another range.
    let s2 = slot(3, 0, 8);
    assert!(f.mmu.attach_slot(&s2).is_ok());
    f.map(0, 3, 7, 2, false);
    assert_eq!(f.mmu.zap_slot(3), 1);
    teardown(f);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "detaching slot 0")]
fn detaching_a_mapped_slot_is_a_bug() {
    const ID: usize = 13;
    let mut f = Fixture::<ID>::new(1, true, &[slot(0, 0, 8)]);
    f.map(0, 0, 1, 1, true);
    f.mmu.detach_slot(0);
}

/// Memslots that come and go at fresh addresses: each is mapped (one page, in two roots),
/// zapped as its deletion zaps it (the range, then the flush and the free), and detached.  The
/// zap unlinks every table the page needed, so the tables shrink back to the roots every time
/// instead of growing without bound.
#[test]
fn slots_at_fresh_addresses_free_their_tables() {
    const ID: usize = 18;
    let mut f = Fixture::<ID>::new(2, true, &[]);
    let roots = f.mmu.table_pages();
    assert_eq!(roots, 2);
    for i in 0..10_000u64 {
        // A fresh 512G, 1G or 2M each time: all three tables are new for the first 512 slots,
        // the 2M and 4K ones after.
        let base = ((i % 512) << 27) | (((i / 512) % 512) << 18) | ((i % 509) << 9) | 0x40;
        let s = slot(7, base, 16);
        assert!(f.mmu.attach_slot(&s).is_ok());
        for root in 0..2 {
            let o = f.map(root, 7, base + 5, pfn_of(i), true);
            assert!(o.new_tables >= 2, "cycle {i}");
        }
        assert!(f.mmu.table_pages() >= roots + 4);
        let p = f.zap(7, s.base_gfn.raw(), s.end_gfn().raw());
        assert_eq!(p.zapped, 2);
        assert_eq!(f.mmu.table_pages(), roots, "cycle {i}: {p:?}");
        assert_eq!(f.translate(1, base + 5, false), Err(WalkFault::NotPresent));
        let rmaps = f.mmu.detach_slot(7).unwrap();
        // SAFETY: no lockless reader runs in this test: the grace period is trivially over.
        unsafe { rmaps.free_after_grace_period() };
    }
    HostPages::<ID>::take_dirty();
    assert!(HostPages::<ID>::allocs() > 40_000);
    teardown(f);
}

/// A zap unlinks only the tables it leaves without a present entry: a table that still holds a
/// leaf (outside the range, of another slot, or a huge leaf in a 2M table) stays, with every
/// translation through it; once its last leaf goes, it goes, and so do the tables above it
/// that it leaves empty.
#[test]
fn partial_zaps_keep_tables_with_live_leaves() {
    const ID: usize = 19;
    // Slot 0 covers two 2M blocks; slot 1 the rest of the first 1G, slot 2 a page of the next.
    let (a, b, c) = (
        slot(0, 0x200, 0x400),
        slot(1, 0x600, 0x3fa00),
        slot(2, 0x40000, 1),
    );
    let mut f = Fixture::<ID>::new(1, true, &[a, b, c]);
    let roots = f.mmu.table_pages();
    for gfn in [0x200, 0x3ff, 0x400, 0x401] {
        f.map(0, 0, gfn, pfn_of(gfn), false);
    }
    // Slot 1 has a page in the fourth 2M, and a 2M leaf in the fifth, in the 2M table that
    // links slot 0's 4K tables.
    f.map(0, 1, 0x601, pfn_of(0x601), false);
    f.tables.topup(MAP_MIN_TABLES).unwrap();
    f.descs.topup(MAP_MIN_DESCS).unwrap();
    f.mmu
        .map_level(
            0,
            1,
            Gfn::new(0x800),
            Pfn::new(0x10_0000),
            false,
            Level::L2M,
            &mut f.tables,
            &mut f.descs,
        )
        .unwrap();
    f.map(0, 2, 0x40000, pfn_of(0x40000), false);
    // A 1G table, two 2M tables, and the 4K tables of 0x200, 0x400, 0x600 and 0x40000.
    assert_eq!(f.mmu.table_pages(), roots + 1 + 2 + 4);

    // Part of a 4K table: it keeps its other leaf.
    let p = f.zap(0, 0x200, 0x201);
    assert_eq!((p.zapped, p.unlinked_tables), (1, 0));
    assert_eq!(
        f.translate(0, 0x3ff, false).map(|t| t.pfn.raw()),
        Ok(pfn_of(0x3ff))
    );
    // Its last leaf, by another zap that covers it in part: it goes.
    let p = f.zap(0, 0x300, 0x400);
    assert_eq!((p.zapped, p.unlinked_tables), (1, 1));
    assert_eq!(f.mmu.table_pages(), roots + 1 + 2 + 3);
    // All of slot 0: the second 4K table goes; the 2M table stays for slot 1's tables and leaf.
    let p = f.zap(0, 0, u64::MAX);
    assert_eq!((p.zapped, p.unlinked_tables), (2, 1));
    assert_eq!(f.mmu.table_pages(), roots + 1 + 2 + 2);
    assert_eq!(
        f.translate(0, 0x601, false).map(|t| t.pfn.raw()),
        Ok(pfn_of(0x601))
    );
    assert_eq!(
        f.translate(0, 0x9ff, false).map(|t| (t.pfn.raw(), t.level)),
        Ok((0x10_01ff, Level::L2M))
    );
    // Slot 1's 4K page: its table goes, the 2M table stays for the 2M leaf.
    let p = f.zap(1, 0x600, 0x800);
    assert_eq!((p.zapped, p.unlinked_tables), (1, 1));
    assert_eq!(f.mmu.table_pages(), roots + 1 + 2 + 1);
    assert!(f.translate(0, 0x800, false).is_ok());
    // Part of the 2M leaf: all of it goes (huge levels are zapped from the range start aligned
    // down), then the 2M table it leaves empty.
    let p = f.zap(1, 0x9ff, 0xa00);
    assert_eq!((p.zapped, p.unlinked_tables), (1, 1));
    assert_eq!(f.mmu.table_pages(), roots + 1 + 1 + 1);
    // The last page: its 4K and 2M tables, then the 1G table, empty now.
    let p = f.zap(2, 0, u64::MAX);
    assert_eq!((p.zapped, p.unlinked_tables), (1, 3));
    assert_eq!(f.mmu.table_pages(), roots);
    // Zapping again finds nothing to unlink; mapping again links new tables.
    assert_eq!(f.zap(1, 0, u64::MAX).unlinked_tables, 0);
    assert_eq!(f.map(0, 2, 0x40000, 9, true).new_tables, 3);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

/// A zap asked to stop at every poll, with 32 roots whose emptied tables overflow the list of
/// unlinked tables many times over: each step makes progress, stops either for the poll or for a
/// full list, and the zap still unlinks every table it empties; the caller frees them between
/// steps.
/// The yield protocol of the x86 zap, through the rmaps and then the walk for empty tables,
/// with the zap driver's hook: one flush right before each yield, after the poll that asked for
/// it, and no other but for a full list of unlinked tables and the end; no yield while a vCPU
/// could still use a translation of a leaf the zap cleared; tables freed only right after a
/// flush (`check_zap_log()`), never more of them waiting than the list holds.
#[test]
fn zap_flushes_exactly_once_before_each_yield() {
    const ID: usize = 64;
    // 1G in every root, one page in every 15th 2M and a 2M leaf: 32 4K tables, a 2M and a 1G
    // table per root, more than the list of unlinked tables holds; the walk for them visits the
    // 512 2M entries of each root, and polls on the way.
    let s = slot(0, 0x4_0000, 1 << 18);
    let roots = 8;
    let mut f = Fixture::<ID>::new(roots, true, &[s]);
    let mut mapped = Vec::new();
    for root in 0..roots {
        for i in 0..32 {
            let gfn = s.base_gfn.raw() + i * 15 * 512 + 3 * i;
            f.map(root, 0, gfn, pfn_of(gfn), true);
            mapped.push((root, gfn));
        }
    }
    let huge = s.base_gfn.raw() + 500 * 512;
    f.map_huge(huge, 0x8_0000, Level::L2M);
    mapped.push((0, huge));
    // The vCPUs' TLBs: the translations they hold, filled with every leaf before the zap.
    let tlb = std::cell::RefCell::new(mapped.iter().copied().collect::<BTreeSet<_>>());
    let polls = std::cell::Cell::new(0u64);
    let log = crate::test_util::ZapLog::default();

    /// The test's yield: every seventh poll, and a flush empties the TLBs.
    struct Hook<'t> {
        inner: TestYield<Box<dyn FnMut() -> bool + 't>, fn() -> u64>,
        tlb: &'t std::cell::RefCell<BTreeSet<(usize, u64)>>,
    }
    impl Yield for Hook<'_> {
        fn should_yield(&mut self) -> bool {
            self.inner.should_yield()
        }
        fn flush_tlbs(&mut self) {
            self.tlb.borrow_mut().clear();
            self.inner.flush_tlbs();
        }
        fn flush_elided(&mut self) {
            self.inner.flush_elided();
        }
    }

    let mut z = Zap::new(Hook {
        inner: TestYield {
            stop: Box::new(|| {
                polls.set(polls.get() + 1);
                polls.get().is_multiple_of(7)
            }),
            frees: HostPages::<ID>::frees,
            log: log.clone(),
        },
        tlb: &tlb,
    });
    let mut yields_with_leaves = 0;
    let slots = f.mmu.slots().clone();
    let mut lock = TestLock {
        mmu: &mut *f.mmu,
        // The lock is dropped: the vCPUs run, on what their TLBs hold and what the tables map.
        at_yield: |mmu: &mut X86Mmu<HostPages<ID>>| {
            let mut tlb = tlb.borrow_mut();
            let walk = |root: usize, gfn: u64| {
                // SAFETY: a root of `mmu`, which is borrowed for the call.
                unsafe {
                    translate::<HostPages<ID>>(mmu.root_pfn(root).unwrap(), Gfn::new(gfn), false)
                }
            };
            for &(root, gfn) in tlb.iter() {
                assert!(
                    walk(root, gfn).is_ok(),
                    "gfn {gfn:#x} of root {root} cached"
                );
            }
            tlb.clear();
            for &(root, gfn) in &mapped {
                if walk(root, gfn).is_ok() {
                    tlb.insert((root, gfn));
                }
            }
            yields_with_leaves += u64::from(!tlb.is_empty());
        },
        frees: HostPages::<ID>::frees,
        log: log.clone(),
    };
    X86Mmu::zap_gfn_range(&mut lock, &mut &*slots, &mut z, 0, s.base_gfn, s.end_gfn());
    // What the last step cleared is still cached until the caller's flush.
    assert!(z.needs_flush());
    z.flush_and_free(&mut lock);
    assert!(tlb.borrow().is_empty());
    drop(lock);
    let yields = check_zap_log(&log, HostPages::<ID>::frees());
    let log = log.take();
    let mut freed = 0;
    for e in &log {
        assert!(e.1 - freed <= ZAPPED_TABLES as u64, "{log:?}");
        freed = e.1;
    }
    // Yields while leaves were left, and while the tables were walked; flushes for a full list.
    assert!(yields_with_leaves > 0 && yields as u64 > yields_with_leaves);
    assert!(unasked_flushes(&log) > 1);
    assert_eq!(z.zapped, mapped.len() as u64);
    assert_eq!(z.unlinked, roots as u64 * 34);
    assert_eq!(f.mmu.leaf_sptes(), 0);
    assert_eq!(f.mmu.table_pages(), roots as u64);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

#[test]
fn zap_stopped_often_still_frees_everything() {
    const ID: usize = 59;
    // 128 MiB, one page mapped in every 2M: 64 4K tables, one 2M and one 1G table per root.
    let s = slot(0, 0x4_0000, 64 * 512);
    let mut f = Fixture::<ID>::new(MAX_ROOTS, true, &[s]);
    let roots = f.mmu.table_pages();
    for root in 0..MAX_ROOTS {
        for i in 0..64 {
            let gfn = s.base_gfn.raw() + i * 512 + 3;
            f.map(root, 0, gfn, pfn_of(gfn), true);
        }
    }
    assert_eq!(f.mmu.table_pages(), roots + MAX_ROOTS as u64 * 66);
    let slots = f.mmu.slots().clone();
    let p = run_zap(
        &mut *f.mmu,
        HostPages::<ID>::frees,
        || true,
        |_| {},
        |lock, z| X86Mmu::zap_gfn_range(lock, &mut &*slots, z, 0, s.base_gfn, s.end_gfn()),
    );
    let (zapped, unlinked, stopped) = (p.zapped, p.unlinked_tables, p.yields);
    let full = p.full as u64;
    // Never more unlinked tables waiting for a flush than the list holds: each flush frees at
    // most that many.
    let mut freed = 0;
    for e in &p.log {
        assert!(e.1 - freed <= ZAPPED_TABLES as u64, "{:?}", p.log);
        freed = e.1;
    }
    assert_eq!(zapped, MAX_ROOTS as u64 * 64);
    assert_eq!(unlinked, MAX_ROOTS as u64 * 66);
    assert!(full >= unlinked / ZAPPED_TABLES as u64, "{full} full stops");
    assert!(stopped > 0, "{stopped} yields");
    assert_eq!(f.mmu.table_pages(), roots);
    assert_eq!(f.mmu.leaf_sptes(), 0);
    for root in [0, MAX_ROOTS - 1] {
        assert_eq!(
            f.translate(root, s.base_gfn.raw() + 3, false),
            Err(WalkFault::NotPresent)
        );
    }
    assert_eq!(HostPages::<ID>::take_dirty().len(), MAX_ROOTS * 64);
    teardown(f);

    // A sparse 4G slot: the walk for empty tables visits a 2M entry for every 2M, and stops for
    // polls on the way, then resumes where it stopped.
    const ID2: usize = 63;
    let s = slot(0, 1 << 20, 1 << 20);
    let mut f = Fixture::<ID2>::new(1, true, &[s]);
    let roots = f.mmu.table_pages();
    for gfn in [
        s.base_gfn.raw(),
        s.base_gfn.raw() + (1 << 19) + 7,
        s.end_gfn().raw() - 1,
    ] {
        f.map(0, 0, gfn, pfn_of(gfn), false);
    }
    let slots = f.mmu.slots().clone();
    let p = run_zap(
        &mut *f.mmu,
        HostPages::<ID2>::frees,
        || true,
        |_| {},
        |lock, z| X86Mmu::zap_gfn_range(lock, &mut &*slots, z, 0, s.base_gfn, s.end_gfn()),
    );
    let unlinked = p.unlinked_tables;
    // Yields while walking the rmaps, every 32 of them, but where a batch ends a level: of the
    // 4K ones, and of the 2M ones (the count goes on from the last 4K batch, a whole one); none
    // in the four 1G ones.
    let n = s.npages;
    let rmap_yields = (n / 32 - 1) + (n / 512 / 32 - 1);
    let table_stops = p.yields as u64 - rmap_yields;
    // Every table-walk stop after a budget of table entries.
    assert!(p.visited >= n + n / 512 + 4 + table_stops * TABLE_SCAN_BATCH);
    // The slot spans the fifth to the eighth 1G, and has pages in three of them: the 512
    // entries of their three 2M tables, four 1G entries and a root entry make three polls.
    assert_eq!(table_stops, 3);
    // Three 4K tables, three 2M tables, one 1G table.
    assert_eq!(unlinked, 3 + 3 + 1);
    assert_eq!(f.mmu.table_pages(), roots);
    teardown(f);
}

/// A table limit: a map that needs a table past it fails and changes nothing (a huge leaf it
/// would split stays); maps that need no new table go on; once a zap frees tables, or the
/// limit is raised, maps that need tables work again.
#[test]
fn table_limit_refuses_new_tables_until_freed() {
    const ID: usize = 54;
    let mut f = Fixture::<ID>::new(1, true, &[slot(0, 0, 1 << 19)]);
    let roots = f.mmu.table_pages();
    f.mmu.set_table_limit(roots + 4);
    // A 1G table, a 2M table and two 4K tables: up to the limit.
    assert_eq!(f.map(0, 0, 0x5, 0x10, true).new_tables, 3);
    assert_eq!(f.map(0, 0, 0x205, 0x11, true).new_tables, 1);
    assert_eq!(f.mmu.table_pages(), roots + 4);
    // Past it: a third 4K table, a 2M table of another 1G.
    for gfn in [0x405, (1 << 18) + 5] {
        assert_eq!(f.try_map(0, 0, gfn, 0x12, true), Err(MapError::TableLimit));
        assert_eq!(f.mmu.snapshot(0, Gfn::new(gfn)), 0);
    }
    assert_eq!(f.mmu.table_pages(), roots + 4);
    assert_eq!(f.mmu.stats().tables_allocated, roots + 4);
    // No new table needed: a page in a 4K table there is, a 2M leaf in the 2M table.
    assert_eq!(f.map(0, 0, 0x206, 0x13, false).new_tables, 0);
    assert_eq!(f.map_huge(0x600, 0x8_0000, Level::L2M).new_tables, 0);
    // A page under the 2M leaf would split it into a new table: refused, the leaf stays.
    assert_eq!(
        f.try_map(0, 0, 0x601, 0x14, true),
        Err(MapError::TableLimit)
    );
    assert_eq!(
        f.translate(0, 0x601, false).map(|t| (t.pfn.raw(), t.level)),
        Ok((0x8_0001, Level::L2M))
    );
    // A zap frees the first 4K table: room for one.
    assert_eq!(f.zap(0, 0, 0x200).unlinked_tables, 1);
    assert_eq!(f.map(0, 0, 0x405, 0x12, true).new_tables, 1);
    assert_eq!(f.try_map(0, 0, 0x5, 0x10, true), Err(MapError::TableLimit));
    // Raised: the other 1G too.
    f.mmu.set_table_limit(u64::MAX);
    assert_eq!(f.map(0, 0, (1 << 18) + 5, 0x15, true).new_tables, 2);
    assert_eq!(f.map(0, 0, 0x601, 0x14, true).new_tables, 1);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

#[test]
fn table_cache_topup_take_drop() {
    const ID: usize = 14;
    let mut c = TableCache::<HostPages<ID>>::new();
    assert!(c.is_empty() && c.take().is_none());
    c.topup(1).unwrap();
    assert_eq!(c.len(), TABLE_CACHE_CAPACITY);
    c.topup(TABLE_CACHE_CAPACITY).unwrap();
    assert_eq!(HostPages::<ID>::allocs(), TABLE_CACHE_CAPACITY as u64);
    assert!(c.topup(TABLE_CACHE_CAPACITY + 1).is_err());
    let pfn = c.take().unwrap();
    // SAFETY: a fresh table page from the cache.
    let table = unsafe { <HostPages<ID> as crate::mmu::pgtable::PageOps>::table(pfn) };
    assert!(
        table.iter().all(|e| e.load(Ordering::Relaxed) == 0),
        "zeroed"
    );
    // SAFETY: taken from the cache, so ours, and unreachable.
    unsafe { <HostPages<ID> as crate::mmu::pgtable::PageOps>::free_table(pfn) };

    // A failing top-up keeps what it got.
    HostPages::<ID>::fail_after(0);
    c.topup(TABLE_CACHE_CAPACITY).unwrap_err();
    assert_eq!(c.len(), TABLE_CACHE_CAPACITY - 1);
    drop(c);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

#[test]
fn failed_new_frees_its_roots() {
    const ID: usize = 15;
    assert!(TestMmu::<HostPages<ID>>::new(0, true).is_err());
    assert!(TestMmu::<HostPages<ID>>::new(MAX_ROOTS + 1, true).is_err());
    HostPages::<ID>::fail_after(5);
    assert!(TestMmu::<HostPages<ID>>::new(MAX_ROOTS, true).is_err());
    assert_eq!(HostPages::<ID>::allocs(), 5);
    assert_eq!(HostPages::<ID>::frees(), 5);
}

/// Poison a freed guest page holds: a vCPU reading it used a stale translation.
const POISON: u64 = u64::MAX;

/// The first word of a guest page: the gfn it backs, or [`POISON`].
fn header(pfn: u64) -> &'static StdAtomicU64 {
    // SAFETY: guest pages of the stress test are live allocations until the end of the test,
    // 4096-aligned, and accessed only atomically.
    unsafe { &*page_ptr(pfn).cast::<StdAtomicU64>() }
}

/// The second word of a guest page: written by the vCPUs' writes.
fn data(pfn: u64) -> &'static StdAtomicU64 {
    // SAFETY: as for `header()`.
    unsafe { &*page_ptr(pfn).add(8).cast::<StdAtomicU64>() }
}

/// What the stress test's MMU lock (a mutex) protects.
struct StressWorld<const ID: usize> {
    mmu: TestMmu<HostPages<ID>>,
    /// The page backing each gfn; `None` while an invalidation of the gfn is in progress, when
    /// faults must retry ("Invalidation and the retry sequence" in
    /// Documentation/secmmu-protocols.rst).
    backing: Vec<Option<u64>>,
    /// Pages backing nothing, oldest first.
    free_pages: VecDeque<u64>,
}

/// The stress test's MMU lock, held by the zapper: a yield drops it, and the vCPUs fault
/// meanwhile.
struct StressLock<'w, const ID: usize> {
    world: &'w Mutex<StressWorld<ID>>,
    /// Always `Some` but inside `resched()`.
    guard: Option<MutexGuard<'w, StressWorld<ID>>>,
    yields: u64,
}

impl<const ID: usize> ZapLock for StressLock<'_, ID> {
    type Mmu = X86Mmu<HostPages<ID>>;

    fn mmu(&mut self) -> Option<&mut Self::Mmu> {
        self.guard.as_mut().map(|w| &mut *w.mmu)
    }

    fn resched(&mut self) {
        self.guard = None;
        self.yields += 1;
        thread::yield_now();
        self.guard = Some(self.world.lock().unwrap());
    }
}

/// The stress test's flush and yield: a flush asks every vCPU to flush its TLB, and waits.
struct StressYield<'r> {
    rng: &'r mut Rng,
    modes: &'r [VcpuMode],
}

impl Yield for StressYield<'_> {
    fn should_yield(&mut self) -> bool {
        self.rng.next().is_multiple_of(2)
    }

    fn flush_tlbs(&mut self) {
        for m in self.modes {
            m.request_flush();
        }
    }

    fn flush_elided(&mut self) {}
}

const STRESS_GFNS: u64 = 600;
const STRESS_VCPUS: usize = 4;

/// One thread plays the primary MMU: it invalidates random ranges (zapping them with yields,
/// flushing the vCPUs' TLBs before each yield), frees and poisons their pages, and backs them
/// with other pages.  vCPU threads access random gfns in guest mode through their software
/// TLBs and the lockless walker, faulting outside guest mode under the lock.  No vCPU may ever
/// read a page that does not back the gfn it accessed.
fn stress<const ID: usize>(ad_enabled: bool) {
    let s = slot(0, 0x1f0, STRESS_GFNS);
    let mut mmu = TestMmu::<HostPages<ID>>::new(STRESS_VCPUS, ad_enabled).unwrap();
    assert!(mmu.attach_slot(&s).is_ok());
    let roots: Vec<u64> = (0..STRESS_VCPUS)
        .map(|r| mmu.root_pfn(r).unwrap())
        .collect();
    let all_pages: Vec<u64> = (0..2 * STRESS_GFNS)
        .map(|_| alloc_page().unwrap())
        .collect();
    let mut free_pages: VecDeque<u64> = all_pages.iter().copied().collect();
    let mut backing = Vec::new();
    for gfn in s.base_gfn.raw()..s.end_gfn().raw() {
        let pfn = free_pages.pop_front().unwrap();
        header(pfn).store(gfn, StdOrdering::Relaxed);
        backing.push(Some(pfn));
    }
    let world = Arc::new(Mutex::new(StressWorld::<ID> {
        mmu,
        backing,
        free_pages,
    }));
    let modes: Arc<Vec<VcpuMode>> = Arc::new((0..STRESS_VCPUS).map(|_| VcpuMode::new()).collect());
    let stop = Arc::new(AtomicBool::new(false));

    let vcpus: Vec<_> = (0..STRESS_VCPUS)
        .map(|v| {
            let (world, modes, stop) = (world.clone(), modes.clone(), stop.clone());
            let root_pfn = roots[v];
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (v as u64 + 1));
                let mut tlb = SoftTlb::new();
                let mut tables = TableCache::<HostPages<ID>>::new();
                let mut descs = DescCache::new(4);
                let (mut accesses, mut faults) = (0u64, 0u64);
                while !stop.load(StdOrdering::Relaxed) || accesses < 20_000 {
                    let r = rng.next();
                    let gfn = s.base_gfn.raw() + r % STRESS_GFNS;
                    let write = r & (1 << 40) != 0;
                    loop {
                        // Guest mode: TLB, walker and page only in here.
                        if modes[v].enter_guest() {
                            tlb.flush();
                        }
                        let pfn = tlb
                            .translate(
                                Gfn::new(gfn),
                                write,
                                // SAFETY: the MMU of `root_pfn` is dropped only after this
                                // thread is joined.
                                || unsafe {
                                    translate::<HostPages<ID>>(root_pfn, Gfn::new(gfn), write)
                                },
                                |pfn| pfn.raw() as usize,
                            )
                            .map(|hit| hit.pfn.raw());
                        if let Ok(pfn) = pfn {
                            let h = header(pfn).load(StdOrdering::Relaxed);
                            assert_eq!(h, gfn, "vCPU {v}: stale translation of gfn {gfn:#x}");
                            if write {
                                data(pfn).fetch_add(1, StdOrdering::Relaxed);
                            }
                        }
                        modes[v].exit_guest();
                        if pfn.is_ok() {
                            break;
                        }
                        // The fault path: allocate, then lock; retry while invalidated.
                        tables.topup(MAP_MIN_TABLES).unwrap();
                        descs.topup(MAP_MIN_DESCS).unwrap();
                        let mut w = world.lock().unwrap();
                        let Some(page) = w.backing[(gfn - s.base_gfn.raw()) as usize] else {
                            drop(w);
                            thread::yield_now();
                            continue;
                        };
                        w.mmu
                            .map(
                                v,
                                0,
                                Gfn::new(gfn),
                                Pfn::new(page),
                                write,
                                &mut tables,
                                &mut descs,
                            )
                            .unwrap();
                        faults += 1;
                    }
                    accesses += 1;
                }
                (tlb.hits(), faults)
            })
        })
        .collect();

    let slots = world.lock().unwrap().mmu.slots().clone();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut zapped, mut yields, mut unlinked) = (0u64, 0u64, 0u64);
    for _ in 0..1500 {
        let mut w = world.lock().unwrap();
        let start = s.base_gfn.raw() + rng.next() % STRESS_GFNS;
        let end = (start + 1 + rng.next() % 160).min(s.end_gfn().raw());
        // invalidate_range_start: from now on faults of the range retry...
        let mut old = BTreeMap::new();
        for gfn in start..end {
            let page = w.backing[(gfn - s.base_gfn.raw()) as usize].take().unwrap();
            old.insert(gfn, page);
        }
        // ... and its mappings are zapped, yielding now and then: the zap driver flushes and
        // frees the tables unlinked before each yield, and at the end.
        let mut lock = StressLock {
            world: &world,
            guard: Some(w),
            yields: 0,
        };
        let mut z = Zap::new(StressYield {
            rng: &mut rng,
            modes: &modes,
        });
        X86Mmu::zap_gfn_range(
            &mut lock,
            &mut &*slots,
            &mut z,
            0,
            Gfn::new(start),
            Gfn::new(end),
        );
        z.flush_and_free(&mut lock);
        zapped += z.zapped;
        unlinked += z.unlinked;
        yields += lock.yields;
        let mut w = lock.guard.take().unwrap();
        // Every mapping gone and every TLB flushed: the primary frees the pages...
        for &page in old.values() {
            header(page).store(POISON, StdOrdering::Relaxed);
            w.free_pages.push_back(page);
        }
        // ... and invalidate_range_end: the range is backed again, by other pages.
        for gfn in start..end {
            let page = w.free_pages.pop_front().unwrap();
            header(page).store(gfn, StdOrdering::Relaxed);
            w.backing[(gfn - s.base_gfn.raw()) as usize] = Some(page);
        }
        drop(w);
        thread::yield_now();
    }
    stop.store(true, StdOrdering::Relaxed);
    let mut faults = 0;
    for vcpu in vcpus {
        faults += vcpu.join().unwrap().1;
    }
    assert!(zapped > 0 && yields > 0 && faults > 0 && unlinked > 0);

    let world = Arc::into_inner(world).unwrap().into_inner().unwrap();
    let StressWorld { mut mmu, .. } = world;
    let left = mmu.zap_all();
    assert_eq!(mmu.stats().zapped, zapped + left);
    assert_eq!(mmu.leaf_sptes(), 0);
    drop(mmu);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
    let dirty = HostPages::<ID>::take_dirty();
    assert!(dirty.iter().all(|pfn| all_pages.contains(pfn)));
    for pfn in all_pages {
        // SAFETY: every thread that used the page is gone.
        unsafe { free_page(pfn) };
    }
}

#[test]
fn stress_lockless_walkers_against_zaps() {
    stress::<16>(true);
}

#[test]
fn stress_lockless_walkers_against_zaps_without_ad() {
    stress::<17>(false);
}

/// Dirty logging's write protection (`X86Mmu::write_protect_gfn_range()`): every leaf of the
/// range loses W in every root, huge ones whole, D stays for the zap to report, read-only and
/// access-tracked leaves are handled, and a write map afterwards upgrades (4K) or splits (huge).
#[test]
fn write_protection_for_dirty_logging() {
    const ID: usize = 65;
    for ad in [true, false] {
        let mut f = Fixture::<ID>::new(2, ad, &[slot(0, 0, 1 << 19)]);
        for root in 0..2 {
            for gfn in 0..64 {
                f.map(root, 0, gfn, pfn_of(gfn), gfn % 4 != 3);
            }
        }
        f.map_huge(0x400, 0x1000, Level::L2M);
        // A range that ends inside the huge leaf and leaves gfns 0..8 alone.
        let done = f.mmu.write_protect(0, Gfn::new(8), Gfn::new(0x401));
        let writable_4k = (8..64).filter(|g| g % 4 != 3).count() as u64;
        assert_eq!(done.leaves, 2 * writable_4k + 1);
        assert_eq!(done.visited, 2 * 56 + 1);
        assert!(done.needs_flush());
        for root in 0..2 {
            for gfn in 0..64 {
                let w = f.translate(root, gfn, true);
                if gfn < 8 && gfn % 4 != 3 {
                    assert!(w.is_ok(), "gfn {gfn} outside the range");
                } else {
                    assert_eq!(w, Err(WalkFault::WriteProtected), "gfn {gfn}");
                    assert!(f.translate(root, gfn, false).is_ok());
                }
            }
        }
        assert_eq!(
            f.translate(0, 0x5ff, true),
            Err(WalkFault::WriteProtected),
            "the whole huge leaf"
        );
        // Without A/D, W was the dirty state: the pages were marked as W went.  With A/D, D
        // stays in the leaf, and the zap reports it.
        let marked = HostPages::<ID>::take_dirty().len() as u64;
        assert_eq!(marked, if ad { 0 } else { 2 * writable_4k + 1 });
        // Again: nothing is writable any more, nothing to flush.
        let again = f.mmu.write_protect(0, Gfn::new(0), Gfn::new(1 << 19));
        assert_eq!(again.leaves, 2 * 6);
        assert_eq!(again.visited, 2 * 64 + 1);
        // The fast path of a write fault: only a leaf that was writable before the protection.
        assert!(f.mmu.restore_write_protected(0, Gfn::new(10)));
        let t = f.translate(0, 10, true).unwrap();
        assert!(t.writable && t.dirty);
        assert!(
            !f.mmu.restore_write_protected(0, Gfn::new(11)),
            "mapped read-only"
        );
        assert!(
            !f.mmu.restore_write_protected(0, Gfn::new(10)),
            "writable already"
        );
        assert!(!f.mmu.restore_write_protected(0, Gfn::new(0x405)), "huge");
        assert!(
            !f.mmu.restore_write_protected(0, Gfn::new(0x9999)),
            "not mapped"
        );
        assert_eq!(f.translate(1, 10, true), Err(WalkFault::WriteProtected));
        // The write fault of a logged page: a 4K upgrade in place, and a split of the huge leaf.
        assert_eq!(f.map(0, 0, 9, pfn_of(9), true).action, MapAction::Upgraded);
        assert!(f.translate(0, 9, true).is_ok());
        let o = f.map(0, 0, 0x405, 0x1005, true);
        assert!(o.split && o.needs_flush());
        assert!(f.translate(0, 0x405, true).is_ok());
        // Every leaf left is zapped, and with A/D every leaf that was writable reports dirty.
        let p = f.zap(0, 0, 1 << 19);
        // 64 4K leaves in each root, and the one the split put under the huge leaf.
        assert_eq!(p.zapped, 2 * 64 + 1);
        if ad {
            let mut dirty = HostPages::<ID>::take_dirty();
            dirty.sort_unstable();
            dirty.dedup();
            assert_eq!(
                dirty.len() as u64,
                48 + 1 + 1,
                "48 4K pages, 0x1000 split, 0x1005"
            );
        } else {
            HostPages::<ID>::take_dirty();
        }
        teardown(f);
    }
}

/// Dirty logging by the dirty bit (`X86Mmu::clear_dirty_gfn_range()`): 4K leaves of the range
/// keep W and lose D in every root, their pages marked dirty for the primary as D goes; huge
/// leaves lose W instead; the walker's next write sets D again and reports the clean-to-dirty
/// transition once (`Translation::dirtied`), for the vCPU's log.
#[test]
fn dirty_bit_clearing_for_dirty_logging() {
    const ID: usize = 70;
    let mut f = Fixture::<ID>::new(2, true, &[slot(0, 0, 1 << 19)]);
    for root in 0..2 {
        for gfn in 0..16 {
            f.map(root, 0, gfn, pfn_of(gfn), gfn != 15);
        }
    }
    f.map_huge(0x400, 0x1000, Level::L2M);
    HostPages::<ID>::take_dirty();
    let done = f.mmu.clear_dirty(0, Gfn::new(4), Gfn::new(0x401));
    // 11 dirty 4K leaves per root, and the huge leaf.
    assert_eq!((done.leaves, done.visited), (2 * 11 + 1, 2 * 12 + 1));
    let mut marked = HostPages::<ID>::take_dirty();
    marked.sort_unstable();
    marked.dedup();
    assert_eq!(
        marked.len(),
        11,
        "each page dirty in both roots, marked as D went"
    );
    for root in 0..2 {
        for gfn in 4..15 {
            let t = f.translate(root, gfn, false).unwrap();
            assert!(t.writable && !t.dirty && !t.dirtied, "gfn {gfn}");
            let t = f.translate(root, gfn, true).unwrap();
            assert!(t.dirty && t.dirtied, "the first write dirties, gfn {gfn}");
            let t = f.translate(root, gfn, true).unwrap();
            assert!(t.dirty && !t.dirtied, "only the first, gfn {gfn}");
        }
        assert!(f.translate(root, 3, true).unwrap().dirty);
        assert!(
            !f.translate(root, 3, true).unwrap().dirtied,
            "outside the range"
        );
    }
    assert_eq!(f.translate(0, 15, true), Err(WalkFault::WriteProtected));
    assert_eq!(
        f.translate(0, 0x4ff, true),
        Err(WalkFault::WriteProtected),
        "huge: W went"
    );
    // Again: nothing left dirty in the range but what the walks dirtied.
    let again = f.mmu.clear_dirty(0, Gfn::new(0), Gfn::new(0x401));
    assert_eq!(again.leaves, 2 * 15);
    let _ = f.zap(0, 0, 1 << 19);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

/// Eager splitting (`X86Mmu::split_huge_gfn_range()`): after the write protection of a slot,
/// its 1G and 2M leaves in two roots become 4K leaves that translate to the same pages,
/// read-only, each in its rmap (a zap through the rmaps finds every one), dirty where the huge
/// leaf was, and made writable by the fast path of a write fault; a split of a range that
/// touches a huge leaf splits it whole; the caches are topped up between calls, and the table
/// limit stops it.
#[test]
fn eager_split_for_dirty_logging() {
    const ID: usize = 68;
    const G1: u64 = 1 << 18;
    for ad in [true, false] {
        let mut f = Fixture::<ID>::new(2, ad, &[slot(0, 0, 1 << 19)]);
        // Root 0: a 1G leaf, a 2M leaf; root 1: the same 2M leaf, and a 4K leaf beside it in
        // root 0, so the pieces' rmaps need descriptors.
        f.map_huge_in(0, G1, 1 << 20, Level::L1G);
        f.map_huge_in(0, 0x400, 0x1000, Level::L2M);
        f.map_huge_in(1, 0x400, 0x1000, Level::L2M);
        f.map(0, 0, 0x200, 0x3000, true);
        let leaves = f.mmu.leaf_sptes();
        assert_eq!(leaves, 4);
        assert_eq!(f.mmu.leaves_by_level(), [1, 2, 1]);
        let _ = f.mmu.write_protect(0, Gfn::new(0), Gfn::new(1 << 19));
        HostPages::<ID>::take_dirty();

        // A range of one gfn splits the whole 2M leaf over it, in both roots, and nothing else.
        let (done, _) = f.mmu.split(
            0,
            Gfn::new(0x450),
            Gfn::new(0x451),
            &mut f.tables,
            &mut f.descs,
        );
        assert_eq!((done.split, done.limited), (2, false));
        assert_eq!(f.mmu.leaf_sptes(), leaves - 2 + 2 * 512);
        assert_eq!(f.mmu.leaves_by_level(), [1 + 2 * 512, 0, 1]);
        assert_eq!(f.translate(0, G1 + 5, false).unwrap().level, Level::L1G);

        // The whole slot: 1 + 512 more splits, the caches topped up on the way.
        let (done, calls) = f.mmu.split(
            0,
            Gfn::new(0),
            Gfn::new(1 << 19),
            &mut f.tables,
            &mut f.descs,
        );
        assert_eq!(done.split, 513);
        assert!(calls > 513 / TABLE_CACHE_CAPACITY, "{calls} calls");
        let leaves = 1 + 2 * 512 + 512 * 512;
        assert_eq!(f.mmu.leaf_sptes(), leaves);
        assert_eq!(f.mmu.leaves_by_level(), [leaves, 0, 0]);
        for (gfn, pfn) in [
            (0x400, 0x1000),
            (0x5ff, 0x11ff),
            (G1, 1 << 20),
            (G1 + 0x3_1234, (1 << 20) + 0x3_1234),
        ] {
            for root in 0..2 {
                if root == 1 && gfn >= G1 {
                    continue;
                }
                let t = f.translate(root, gfn, false).unwrap();
                assert_eq!(
                    (t.pfn.raw(), t.level, t.writable),
                    (pfn, Level::L4K, false),
                    "gfn {gfn:#x}"
                );
                assert_eq!(f.translate(root, gfn, true), Err(WalkFault::WriteProtected));
            }
        }
        // The pieces were writable before the protection: a write fault's fast path.
        assert!(f.mmu.restore_write_protected(0, Gfn::new(G1 + 7)));
        assert!(f.translate(0, G1 + 7, true).unwrap().writable);
        // Nothing huge is left: splitting again does nothing.
        let (done, calls) = f.mmu.split(
            0,
            Gfn::new(0),
            Gfn::new(1 << 19),
            &mut f.tables,
            &mut f.descs,
        );
        assert_eq!((done.split, calls), (0, 1));

        // Every piece is in its rmap: the zap through the rmaps finds them all, and with A/D
        // every piece of the (dirty) huge leaves reports its page dirty.
        let p = f.zap(0, 0, 1 << 19);
        assert_eq!(p.zapped, leaves);
        assert_eq!(f.mmu.leaves_by_level(), [0, 0, 0]);
        let mut dirty = HostPages::<ID>::take_dirty();
        dirty.sort_unstable();
        dirty.dedup();
        // Without A/D, W was the dirty state, marked as the protection took it: only the
        // piece made writable since is dirty.
        assert_eq!(dirty.len() as u64, if ad { 1 + 512 + 512 * 512 } else { 1 });

        // At the table limit the split stops for good, leaving the rest huge.
        f.map_huge_in(0, G1, 1 << 20, Level::L1G);
        let limit = f.mmu.table_pages() + 3;
        f.mmu.set_table_limit(limit);
        let (done, _) = f.mmu.split(
            0,
            Gfn::new(0),
            Gfn::new(1 << 19),
            &mut f.tables,
            &mut f.descs,
        );
        assert_eq!((done.split, done.limited), (3, true));
        assert_eq!(
            f.translate(0, G1 + 3 * 512, false).unwrap().level,
            Level::L2M
        );
        f.mmu.set_table_limit(u64::MAX);
        let _ = f.zap(0, 0, 1 << 19);
        HostPages::<ID>::take_dirty();
        teardown(f);

        // With one root no piece's rmap holds an SPTE already: no descriptor is needed (an
        // empty cache would panic in a test build).
        let mut f = Fixture::<ID>::new(1, ad, &[slot(0, 0, 1 << 19)]);
        f.map_huge(G1, 1 << 20, Level::L1G);
        let mut descs = DescCache::new(0);
        let (done, _) = f
            .mmu
            .split(0, Gfn::new(0), Gfn::new(1 << 19), &mut f.tables, &mut descs);
        assert_eq!((done.split, descs.len()), (513, 0));
        assert_eq!(f.zap(0, 0, 1 << 19).zapped, 512 * 512);
        HostPages::<ID>::take_dirty();
        teardown(f);
    }
}

/// Without A/D, an access-tracked leaf loses its saved W too: restoring it after the write
/// protection gives read access only, so the next write still faults and is logged.
#[test]
fn write_protection_covers_access_tracked_leaves() {
    const ID: usize = 66;
    let mut f = Fixture::<ID>::new(1, false, &[slot(0, 0, 64)]);
    f.map(0, 0, 5, 0x55, true);
    let r = f
        .mmu
        .age_gfn_range_locked(0, Gfn::new(0), Gfn::new(64), AgeOp::Clear);
    assert_eq!(r.cleared, 1);
    assert_eq!(HostPages::<ID>::take_dirty(), [0x55]);
    let done = f.mmu.write_protect(0, Gfn::new(0), Gfn::new(64));
    assert_eq!((done.leaves, done.visited), (0, 1));
    assert!(
        !f.mmu.restore_write_protected(0, Gfn::new(5)),
        "access-tracked"
    );
    assert!(f.mmu.restore_access_tracked(0, Gfn::new(5), false));
    assert_eq!(f.translate(0, 5, true), Err(WalkFault::WriteProtected));
    assert!(f.mmu.restore_write_protected(0, Gfn::new(5)));
    assert!(f.translate(0, 5, true).is_ok());
    assert!(!f.mmu.restore_access_tracked(0, Gfn::new(5), true));
    f.zap(0, 0, 64);
    HostPages::<ID>::take_dirty();
    teardown(f);
}
