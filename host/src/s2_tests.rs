// SPDX-License-Identifier: GPL-2.0

//! Tests of the arm64 stage-2 format (`src/arm64/pte.rs`) and MMU (`src/arm64/mmu.rs`) with host
//! table pages, and a multi-threaded stress test of parallel faults, aging and break-before-make
//! under the read side of an `RwLock` standing for the MMU lock.
//!
//! Each test uses its own `HostPages<ID>` (IDs 20 to 39), so that its leak and dirty checks see
//! only its own pages while tests run in parallel.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Barrier, RwLock};
use std::thread;
use std::vec::Vec;

use crate::arm64::mmu::{
    translate, MapError, MapOutcome, S2Mmu, Translation, WalkFault, MAP_MIN_TABLES, MAX_ROOTS,
};
use crate::arm64::pte::{self, Geometry, LAST_LEVEL, MAX_IA_BITS, MIN_IA_BITS};
use crate::host_pages::HostPages;
use crate::mmu::addr::{Gfn, Pfn};
use crate::mmu::aging::AgeOp;
use crate::mmu::level::Level;
use crate::mmu::pgtable::{
    MapAction, PageOps, TableCache, SNAP_ACCESSED, SNAP_DIRTY, SNAP_LEVEL_SHIFT, SNAP_PRESENT,
    SNAP_WRITABLE, TABLE_CACHE_CAPACITY,
};
use crate::mmu::prim::{AtomicU64, Ordering};
use crate::test_util::{drive_split, run_zap, Rng, ZapRun};

/// An MMU with host pages of test `ID`, the table cache a fault path would top up, and a count
/// of the TLB flushes the MMU asked for.
struct Fixture<const ID: usize> {
    mmu: S2Mmu<HostPages<ID>>,
    tables: RefCell<TableCache<HostPages<ID>>>,
    flushes: Cell<u64>,
}

impl<const ID: usize> Fixture<ID> {
    fn new(nr_roots: usize, ia_bits: u32, hw_af: bool) -> Self {
        Fixture {
            mmu: S2Mmu::new(nr_roots, ia_bits, hw_af).unwrap(),
            tables: RefCell::new(TableCache::new()),
            flushes: Cell::new(0),
        }
    }

    fn try_map_at(
        &self,
        root: usize,
        gfn: u64,
        pfn: u64,
        writable: bool,
        level: Level,
    ) -> Result<MapOutcome, MapError> {
        let mut tables = self.tables.borrow_mut();
        tables.topup(MAP_MIN_TABLES).unwrap();
        let flushes = &self.flushes;
        self.mmu.map(
            root,
            Gfn::new(gfn),
            Pfn::new(pfn),
            writable,
            level,
            &mut tables,
            &|| flushes.set(flushes.get() + 1),
        )
    }

    fn try_map(
        &self,
        root: usize,
        gfn: u64,
        pfn: u64,
        writable: bool,
    ) -> Result<MapOutcome, MapError> {
        self.try_map_at(root, gfn, pfn, writable, Level::L4K)
    }

    fn map(&self, root: usize, gfn: u64, pfn: u64, writable: bool) -> MapOutcome {
        self.try_map(root, gfn, pfn, writable).unwrap()
    }

    fn translate(&self, root: usize, gfn: u64, write: bool) -> Result<Translation, WalkFault> {
        let r = self.mmu.root(root).unwrap();
        // SAFETY: `r` is a root of `self.mmu`, which is borrowed for the call.
        unsafe { translate::<HostPages<ID>>(r, Gfn::new(gfn), write, self.mmu.hw_af(), false) }
    }

    /// The leaf value of `gfn` in `root`, or 0.
    fn pte(&self, root: usize, gfn: u64) -> u64 {
        self.mmu.leaf(root, Gfn::new(gfn)).map_or(0, |(_, v, _)| v)
    }

    /// Zaps `[start, end)` to the end, never asked to yield, then flushes and frees as the
    /// kernel's caller does.
    fn zap(&mut self, start: u64, end: u64) -> ZapRun {
        zap_to_end(&mut self.mmu, HostPages::<ID>::frees, start, end)
    }
}

/// Zaps `[start, end)` of `mmu` to the end (see [`Fixture::zap()`]); `frees` counts the table
/// pages freed.
fn zap_to_end<P: PageOps>(mmu: &mut S2Mmu<P>, frees: fn() -> u64, start: u64, end: u64) -> ZapRun {
    let run = run_zap(
        mmu,
        frees,
        || false,
        |_| {},
        |lock, z| S2Mmu::zap_gfn_range(lock, z, Gfn::new(start), Gfn::new(end)),
    );
    // Never asked to yield: only a full list of unlinked tables, and the end, flush.
    assert_eq!(run.yields, 0);
    run
}

/// Drops the fixture and checks that every table page it allocated was freed.
fn teardown<const ID: usize>(f: Fixture<ID>) {
    drop(f);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

/// The largest pfn a stage-2 leaf can hold (48-bit output addresses).
const PFN_MASK: u64 = (1 << 36) - 1;

fn pfn_of(gfn: u64) -> u64 {
    (0x10_0000 + 3 * gfn) & PFN_MASK
}

fn alt_of(gfn: u64) -> u64 {
    (0x80_0000 + 5 * gfn) & PFN_MASK
}

// ---------------------------------------------------------------------------------------------
// Descriptors and geometry.

#[test]
fn leaf_encoding() {
    for level in [pte::MAX_BLOCK_LEVEL, Level::L2M, LAST_LEVEL] {
        let align = level.pages();
        for pfn in [0, 0x1234_5678 & !(align - 1), (1 << 36) - align] {
            for writable in [false, true] {
                let v = pte::make_leaf(pfn, level, writable);
                let what = (level, pfn, writable);
                assert!(pte::is_valid(v) && pte::is_leaf(v, level), "{what:?}");
                assert!(!pte::is_table(v, level) && !pte::is_locked(v), "{what:?}");
                assert_eq!(v & pte::TYPE != 0, level == LAST_LEVEL, "page or block");
                assert_eq!(pte::pfn(v), pfn, "{what:?}");
                assert_eq!(pte::is_writable(v), writable, "{what:?}");
                assert_eq!(pte::is_dirty(v), writable, "{what:?}");
                assert!(pte::is_young(v), "{what:?}");
                assert_ne!(v & pte::S2AP_R, 0);
                assert_eq!((v & pte::MEMATTR_MASK) >> pte::MEMATTR_SHIFT, 0xf);
                assert_eq!((v & pte::SH_MASK) >> pte::SH_SHIFT, 3);
                assert_eq!(v & pte::XN_MASK, 0, "executable");
                // Of the SW bits, only "made writable", on a writable leaf.
                assert_eq!(pte::was_writable(v), writable, "{what:?}");
                assert_eq!(v & pte::SW_MASK & !pte::SW_WRITABLE, 0, "{what:?}");
                // Aging and relaxing touch only their bits.
                assert_eq!(pte::mkold(v), v & !pte::AF);
                assert_eq!(pte::mkyoung(pte::mkold(v)), v);
                let relaxed = pte::S2AP_W | pte::SW_WRITABLE;
                assert_eq!(pte::mkwrite(v) & !relaxed, v & !relaxed);
            }
        }
    }
    // The exact bits of a writable 4K page of pfn 0x12345: KVM's PAGE_S2 | S2AP_W | AF, and
    // the software bit that says a fault made it writable.
    assert_eq!(
        pte::make_leaf(0x12345, arm64_level(3), true),
        0x1234_57ff | pte::SW_WRITABLE
    );
    assert_eq!(pte::make_leaf(0x200, arm64_level(2), false), 0x20_077d);
}

#[test]
fn table_and_special_encodings() {
    for level in [0, 1, 2].map(arm64_level) {
        let v = pte::make_table(0xabcde);
        assert!(pte::is_valid(v) && pte::is_table(v, level) && !pte::is_leaf(v, level));
        assert_eq!(pte::pfn(v), 0xabcde);
        assert_eq!(v, 0xabcd_e003);
    }
    // At the last level the same bits are a page.
    assert!(pte::is_leaf(pte::make_table(1), LAST_LEVEL));
    assert!(!pte::is_valid(0) && !pte::is_locked(0));
    assert_eq!(pte::LOCKED, 1 << 10);
    assert!(pte::is_locked(pte::LOCKED) && !pte::is_valid(pte::LOCKED));
    for level in [0, 1, 2, 3].map(arm64_level) {
        assert!(!pte::is_table(pte::LOCKED, level) && !pte::is_leaf(pte::LOCKED, level));
    }
    assert!(pte::pfn_fits((1 << 36) - 1) && !pte::pfn_fits(1 << 36));
}

#[test]
fn try_set_break_make() {
    let leaf = pte::make_leaf(7, LAST_LEVEL, true);
    let slot = AtomicU64::new(0);
    let flushes = Cell::new(0);
    let flush = || flushes.set(flushes.get() + 1);

    // try_set: only from the value held.
    assert_eq!(pte::try_set(&slot, leaf, 0), Err(0));
    assert_eq!(pte::try_set(&slot, 0, leaf), Ok(()));
    assert_eq!(pte::try_set(&slot, 0, leaf), Err(leaf));

    // Breaking a valid entry locks it and flushes once.
    assert!(!pte::try_break(&slot, 0, &flush), "stale old value");
    assert_eq!(flushes.get(), 0);
    assert!(pte::try_break(&slot, leaf, &flush));
    assert_eq!(slot.load(Ordering::Relaxed), pte::LOCKED);
    assert_eq!(flushes.get(), 1);
    // Nobody takes a lock over: not from its value, not from a stale one.
    assert!(!pte::try_break(&slot, pte::LOCKED, &flush));
    assert!(!pte::try_break(&slot, leaf, &flush));
    assert_eq!(pte::try_set(&slot, leaf, 0), Err(pte::LOCKED));
    assert_eq!(flushes.get(), 1);
    let new = pte::make_leaf(8, LAST_LEVEL, false);
    pte::make(&slot, new);
    assert_eq!(slot.load(Ordering::Relaxed), new);

    // Breaking an invalid entry flushes nothing ("Break-before-make" in
    // Documentation/secmmu-protocols.rst).
    let empty = AtomicU64::new(0);
    assert!(pte::try_break(&empty, 0, &flush));
    assert_eq!(flushes.get(), 1);
    pte::make(&empty, pte::make_table(9));
    assert_eq!(empty.load(Ordering::Relaxed), pte::make_table(9));
}

/// The [`Level`] of KVM's arm64 level `n` (0 to 3, 3 maps 4K pages), for the tests that transcribe
/// KVM's arm64 numbers.
fn arm64_level(n: i32) -> Level {
    [Level::L512G, Level::L1G, Level::L2M, Level::L4K][usize::try_from(n).unwrap()]
}

/// KVM's formulas, transcribed with signed levels as in the C code: `stage2_pgtable_levels()`,
/// `kvm_get_vtcr()`'s minimum of 2, the start level, `kvm_pgd_pages()`.
fn kvm_geometry(ia_bits: u32) -> (u32, i32, u64) {
    const PAGE_SHIFT: i64 = 12;
    const PTDESC_ORDER: i64 = 3;
    const PTDESC_TABLE_SHIFT: i64 = PAGE_SHIFT - PTDESC_ORDER;
    let hw_levels = |va_bits: i64| (va_bits - PTDESC_ORDER - 1) / PTDESC_TABLE_SHIFT;
    let granule_shift = |n: i64| PTDESC_TABLE_SHIFT * (4 - n) + PTDESC_ORDER;
    let lvls = hw_levels(i64::from(ia_bits) - 4).max(2);
    let start_level = 3 + 1 - lvls;
    let mask = (1u64 << ia_bits) - 1;
    let pgd_pages = (mask >> granule_shift(start_level - 1)) + 1;
    (lvls as u32, start_level as i32, pgd_pages)
}

#[test]
fn geometry_matches_kvm() {
    let expect_pages = [
        (32, 4),
        (33, 8),
        (34, 16),
        (35, 1),
        (39, 1),
        (40, 2),
        (43, 16),
        (44, 1),
        (48, 1),
    ];
    for ia_bits in MIN_IA_BITS..=MAX_IA_BITS {
        let g = Geometry::new(ia_bits).unwrap();
        let (levels, start, pages) = kvm_geometry(ia_bits);
        assert_eq!(g.levels, levels, "ia_bits {ia_bits}");
        assert_eq!(g.start_level, arm64_level(start), "ia_bits {ia_bits}");
        assert_eq!(g.pgd_pages as u64, pages, "ia_bits {ia_bits}");
        assert!(g.pgd_pages <= pte::MAX_PGD_PAGES);
        assert_eq!(g.map_min_tables(), levels as usize - 1);
        assert!(g.map_min_tables() <= MAP_MIN_TABLES);
        // The concatenated tables cover the space exactly.
        let covered = g.pgd_pages as u64 * 512 * g.start_level.pages();
        assert!(covered >= g.gfn_limit(), "ia_bits {ia_bits}");
        assert!(covered / 2 < g.gfn_limit() || g.pgd_pages == 1);
        assert_eq!(g.pgd_page(g.gfn_limit() - 1), g.pgd_pages - 1);
        assert_eq!(g.pgd_page(0), 0);
        if let Some(&(_, p)) = expect_pages.iter().find(|(b, _)| *b == ia_bits) {
            assert_eq!(g.pgd_pages, p, "ia_bits {ia_bits}");
        }
    }
    assert_eq!(Geometry::new(48).unwrap().levels, 4);
    assert_eq!(Geometry::new(40).unwrap().start_level, arm64_level(1));
    assert_eq!(Geometry::new(32).unwrap().start_level, arm64_level(2));
    for bad in [0, 31, 49, 52, 64] {
        assert_eq!(Geometry::new(bad), None, "ia_bits {bad}");
    }
}

#[test]
fn level_math() {
    assert_eq!(
        [0, 1, 2, 3].map(arm64_level).map(pte::granule_shift),
        [39, 30, 21, 12],
        "kvm_granule_shift()"
    );
    assert_eq!(arm64_level(2).pages(), 512);
    // gfn with index 0x1a5 at level 3, 0x0f3 at 2, 0x1ff at 1 and 0x002 at 0.
    let gfn = (0x002 << 27) | (0x1ff << 18) | (0x0f3 << 9) | 0x1a5;
    assert_eq!(
        [3, 2, 1, 0].map(|l| arm64_level(l).index(gfn)),
        [0x1a5, 0x0f3, 0x1ff, 0x002]
    );
}

#[test]
fn new_validates_ranges() {
    const ID: usize = 20;
    type M = S2Mmu<HostPages<ID>>;
    assert!(M::new(0, 40, true).is_err());
    assert!(M::new(MAX_ROOTS + 1, 40, true).is_err());
    assert!(M::new(1, MIN_IA_BITS - 1, true).is_err());
    assert!(M::new(1, MAX_IA_BITS + 1, true).is_err());
    assert_eq!(HostPages::<ID>::allocs(), 0);
    for (ia_bits, pages) in [(32, 4), (34, 16), (40, 2), (48, 1)] {
        let m = M::new(3, ia_bits, false).unwrap();
        assert_eq!((m.nr_roots(), m.ia_bits(), m.hw_af()), (3, ia_bits, false));
        assert_eq!(m.table_pages(), 3 * pages);
        let r = m.root(2).unwrap();
        assert_eq!(r.pgd().len() as u64, pages);
        assert_eq!(r.geometry(), Geometry::new(ia_bits).unwrap());
        assert_eq!(r.levels(), r.geometry().levels);
        assert_eq!(r.start_level(), arm64_level(4 - r.levels() as i32));
        assert!(m.root(3).is_none());
        let roots: BTreeSet<u64> = (0..3)
            .flat_map(|i| m.root(i).unwrap().pgd().to_vec())
            .collect();
        assert_eq!(
            roots.len() as u64,
            3 * pages,
            "every start-level table its own"
        );
    }
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());

    // A failed allocation frees what was allocated.
    HostPages::<ID>::fail_after(20);
    assert!(M::new(2, 34, true).is_err());
    HostPages::<ID>::fail_after(u64::MAX);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

// ---------------------------------------------------------------------------------------------
// Map, translate, snapshot.

#[test]
fn map_translate_round_trip_all_geometries() {
    const ID: usize = 21;
    for ia_bits in [32, 34, 36, 40, 43, 44, 48] {
        let mut f = Fixture::<ID>::new(2, ia_bits, true);
        let g = f.mmu.geometry();
        let limit = g.gfn_limit();
        // The first and last 600 gfns: two leaf tables each side, first and last pgd page.
        let gfns: Vec<u64> = (0..600).chain(limit - 600..limit).collect();
        let mut new_tables = 0;
        for root in 0..2 {
            for &gfn in &gfns {
                let o = f.map(root, gfn, pfn_of(gfn), gfn % 2 == 0);
                assert_eq!((o.action, o.chain_len), (MapAction::Installed, 0));
                new_tables += o.new_tables;
            }
        }
        // Per root and side: one table per level below the start, plus one more leaf table.
        let per_side = g.levels as usize - 1 + 1;
        assert_eq!(new_tables, 2 * 2 * per_side, "ia_bits {ia_bits}");
        assert_eq!(
            f.mmu.table_pages(),
            2 * g.pgd_pages as u64 + new_tables as u64
        );
        assert_eq!(f.mmu.stats().leaf_count(), 2 * gfns.len() as u64);
        for root in 0..2 {
            for &gfn in &gfns {
                let w = gfn % 2 == 0;
                let t = f.translate(root, gfn, false).unwrap();
                assert_eq!(
                    t,
                    Translation {
                        pfn: Pfn::new(pfn_of(gfn)),
                        level: Level::L4K,
                        writable: w,
                        dirty: w,
                        dirtied: false,
                    }
                );
                assert_eq!(f.translate(root, gfn, true).is_ok(), w);
                let snap =
                    SNAP_PRESENT | SNAP_ACCESSED | if w { SNAP_WRITABLE | SNAP_DIRTY } else { 0 };
                assert_eq!(f.mmu.snapshot(root, Gfn::new(gfn)), snap);
            }
            for gfn in [600, limit - 601, limit / 2] {
                assert_eq!(f.translate(root, gfn, false), Err(WalkFault::NotPresent));
                assert_eq!(f.mmu.snapshot(root, Gfn::new(gfn)), 0);
            }
            // Outside the space.
            assert_eq!(f.translate(root, limit, false), Err(WalkFault::NotPresent));
            assert_eq!(f.mmu.snapshot(root, Gfn::new(limit)), 0);
            assert_eq!(f.mmu.snapshot(root, Gfn::new(u64::MAX)), 0);
        }
        assert_eq!(f.flushes.get(), 0, "installing never flushes");
        assert_eq!(f.mmu.zap_all(), 2 * gfns.len() as u64);
        let dirty = HostPages::<ID>::take_dirty();
        assert_eq!(dirty.len(), gfns.len(), "both roots, even gfns");
        teardown(f);
    }
}

#[test]
fn map_errors_change_nothing() {
    const ID: usize = 22;
    let f = Fixture::<ID>::new(2, 36, true);
    let limit = f.mmu.geometry().gfn_limit();
    assert_eq!(f.try_map(2, 0, 1, true), Err(MapError::BadRoot));
    assert_eq!(f.try_map(0, limit, 1, true), Err(MapError::BadGfn));
    assert_eq!(f.try_map(0, u64::MAX, 1, true), Err(MapError::BadGfn));
    assert_eq!(f.try_map(0, 0, 1 << 36, true), Err(MapError::BadPfn));
    for level in [Level::L2M, Level::L1G] {
        assert_eq!(f.try_map_at(0, 1, 0, true, level), Err(MapError::BadGfn));
        assert_eq!(f.try_map_at(0, 0, 1, true, level), Err(MapError::BadPfn));
    }
    // An empty cache: NeedTopup before anything.
    let mut empty = TableCache::<HostPages<ID>>::new();
    let r = f.mmu.map(
        0,
        Gfn::new(5),
        Pfn::new(5),
        true,
        Level::L4K,
        &mut empty,
        &|| (),
    );
    assert_eq!(r, Err(MapError::NeedTopup));
    assert_eq!(f.mmu.stats().leaf_count(), 0);
    assert_eq!(f.mmu.table_pages(), 2, "nothing linked");
    assert_eq!(f.mmu.eagain(), 0);
    // One level below the start is enough at 36 bits (3 levels): 2 tables.
    assert_eq!(f.mmu.map_min_tables(), 2);
    teardown(f);
}

/// Block maps: a 2M and a 1G block translate every page under them; a page map under a block
/// breaks it into a table; a block map over a table replaces it with break-before-make, zaps
/// (and marks dirty) what it mapped, and hands it back, to be freed under the write side; a
/// leaf a racing fault put in the unlinked table is dropped with it.  Every table page comes
/// back.
#[test]
fn block_maps_split_and_collapse() {
    const ID: usize = 62;
    let mut f = Fixture::<ID>::new(1, 40, true);
    let o = f.try_map_at(0, 0x200, 0x8_0000, false, Level::L2M).unwrap();
    assert_eq!(o.action, MapAction::Installed);
    let t = f.translate(0, 0x3ff, false).unwrap();
    assert_eq!((t.pfn.raw(), t.level), (0x8_01ff, Level::L2M));
    // A page under the block: broken into a table (one flush).
    f.map(0, 0x205, 0x777, true);
    assert_eq!(f.flushes.get(), 1);
    assert_eq!(f.translate(0, 0x206, false), Err(WalkFault::NotPresent));
    let pages = f.mmu.table_pages();
    // The block again, over the table: break-before-make, the writable page marked dirty.
    let o = f.try_map_at(0, 0x200, 0x8_0000, false, Level::L2M).unwrap();
    assert_eq!(o.action, MapAction::Replaced);
    assert_eq!(f.flushes.get(), 2);
    assert_eq!(HostPages::<ID>::take_dirty(), [0x777]);
    let t = o.unlinked.unwrap();
    assert_eq!(t.covers, Level::L2M);
    // A racing fault that was inside the table puts a leaf there: nothing can reach it.
    // SAFETY: the unlinked table is not freed until `free_unlinked()` below.
    let dead = unsafe { HostPages::<ID>::table(t.pfn) };
    dead[9].store(pte::make_leaf(0x999, LAST_LEVEL, true), Ordering::Release);
    f.mmu.count_test_leaf();
    assert_eq!(f.translate(0, 0x209, false).unwrap().pfn.raw(), 0x8_0009);
    // SAFETY: from this MMU's map, not freed; `&mut` MMU: no walker under the read side.
    unsafe { f.mmu.free_unlinked(t) };
    assert_eq!(f.mmu.table_pages(), pages - 1);
    assert_eq!(f.mmu.leaves_by_level(), [0, 1, 0]);
    assert!(
        HostPages::<ID>::take_dirty().is_empty(),
        "dead leaves are not dirty"
    );
    // A 1G block over tables of tables.
    f.map(0, 1 << 18, 0x10, false);
    let o = f.try_map_at(0, 0, 0x4_0000, false, Level::L1G).unwrap();
    // SAFETY: as above.
    unsafe { f.mmu.free_unlinked(o.unlinked.unwrap()) };
    let t = f.translate(0, 0x3ffff, false).unwrap();
    assert_eq!((t.pfn.raw(), t.level), (0x7_ffff, Level::L1G));
    assert_eq!(f.translate(0, 1 << 18, false).unwrap().pfn.raw(), 0x10);
    assert_eq!(f.mmu.leaves_by_level(), [1, 0, 1]);
    // A zap of one page inside the 1G block zaps it whole ("Ranges and mapping levels" in
    // Documentation/secmmu-protocols.rst).
    assert_eq!(f.zap(0x12345, 0x12346).zapped, 1);
    assert_eq!(f.zap(0, 1 << 20).zapped, 1);
    // The two tables the block maps unlinked were freed before the drop, and the last zap
    // unlinked the two it emptied whole (a level-2 table and a leaf table at 1G), freed since.
    assert_eq!(f.mmu.stats().tables_freed, 4);
    drop(f);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

#[test]
fn relax_permissions_in_place() {
    const ID: usize = 23;
    let f = Fixture::<ID>::new(1, 40, false);
    let gfn = 0x1234;
    let o = f.map(0, gfn, 0x42, false);
    assert_eq!(o.action, MapAction::Installed);
    let (slot, ro, _) = f.mmu.leaf(0, Gfn::new(gfn)).unwrap();
    assert_eq!(f.translate(0, gfn, true), Err(WalkFault::WriteProtected));

    // RO -> RW: the same entry, only W (and that a fault made it writable) added.
    assert_eq!(f.map(0, gfn, 0x42, true).action, MapAction::Upgraded);
    let (again, rw, _) = f.mmu.leaf(0, Gfn::new(gfn)).unwrap();
    assert!(std::ptr::eq(slot, again));
    assert_eq!(rw, pte::mkwrite(ro));
    assert!(f.translate(0, gfn, true).unwrap().dirty);
    // Never takes W away, and has nothing to do.
    assert_eq!(f.map(0, gfn, 0x42, false).action, MapAction::Unchanged);
    assert_eq!(f.map(0, gfn, 0x42, true).action, MapAction::Unchanged);
    assert_eq!(f.pte(0, gfn), rw);

    // An old leaf made young by the map (the access-flag fault done by a full fault).
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(gfn), Gfn::new(gfn + 1), AgeOp::Clear);
    assert_eq!((r.young, r.cleared), (true, 1));
    assert_eq!(f.translate(0, gfn, false), Err(WalkFault::NotPresent));
    assert_eq!(f.map(0, gfn, 0x42, false).action, MapAction::Restored);
    assert_eq!(f.pte(0, gfn), rw);
    // Old and read-only: a writable map both upgrades and sets AF.
    let gfn2 = gfn + 1;
    f.map(0, gfn2, 0x43, false);
    f.mmu
        .age_gfn_range(Gfn::new(gfn2), Gfn::new(gfn2 + 1), AgeOp::Clear);
    assert_eq!(f.map(0, gfn2, 0x43, true).action, MapAction::Upgraded);
    assert_eq!(f.pte(0, gfn2), pte::make_leaf(0x43, LAST_LEVEL, true));

    assert_eq!(f.flushes.get(), 0, "relaxing never flushes");
    assert_eq!(f.mmu.stats().zapped, 0);
    assert_eq!(f.mmu.stats().leaf_count(), 2);
    teardown(f);
}

#[test]
fn stale_leaf_replaced_with_break_before_make() {
    const ID: usize = 24;
    let f = Fixture::<ID>::new(2, 40, true);
    let gfn = 0x777;
    f.map(0, gfn, pfn_of(gfn), true);
    f.map(1, gfn, pfn_of(gfn), false);
    assert_eq!(f.flushes.get(), 0);

    let o = f.map(0, gfn, alt_of(gfn), false);
    assert_eq!(o.action, MapAction::Replaced);
    assert!(o.needs_flush());
    assert_eq!(f.flushes.get(), 1, "one flush between break and make");
    assert_eq!(
        HostPages::<ID>::take_dirty(),
        vec![pfn_of(gfn)],
        "writable = dirty"
    );
    let t = f.translate(0, gfn, false).unwrap();
    assert_eq!((t.pfn.raw(), t.writable), (alt_of(gfn), false));
    // The other root is its own address space.
    assert_eq!(f.translate(1, gfn, false).unwrap().pfn.raw(), pfn_of(gfn));

    // A read-only old leaf: flushed too, but not dirty.
    let o = f.map(1, gfn, alt_of(gfn), true);
    assert_eq!(o.action, MapAction::Replaced);
    assert_eq!(f.flushes.get(), 2);
    assert!(HostPages::<ID>::take_dirty().is_empty());

    let s = f.mmu.stats();
    assert_eq!((s.leaf_count(), s.zapped, s.dirty), (2, 2, 1));
    assert_eq!(f.mmu.leaves(), 2);
    teardown(f);
}

#[test]
fn locked_entries_make_maps_back_off() {
    const ID: usize = 25;
    let f = Fixture::<ID>::new(1, 40, false);
    let gfn = 0x4_0000 + 9;
    f.map(0, gfn, 0x99, true);
    let (slot, old, _) = f.mmu.leaf(0, Gfn::new(gfn)).unwrap();
    // Another walker's break-before-make in progress.
    slot.store(pte::LOCKED, Ordering::Relaxed);

    for pfn in [0x99, 0x100] {
        for writable in [false, true] {
            assert_eq!(f.try_map(0, gfn, pfn, writable), Err(MapError::Again));
            assert_eq!(
                slot.load(Ordering::Relaxed),
                pte::LOCKED,
                "never taken over"
            );
        }
    }
    assert_eq!(f.mmu.eagain(), 4);
    assert_eq!(f.translate(0, gfn, false), Err(WalkFault::NotPresent));
    assert_eq!(f.mmu.snapshot(0, Gfn::new(gfn)), 0);
    assert!(!f.mmu.mkyoung(0, Gfn::new(gfn), false));
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(0), Gfn::new(1 << 20), AgeOp::Clear);
    assert_eq!(
        (r.young, r.visited),
        (false, 0),
        "locked entries are skipped"
    );
    assert_eq!(f.flushes.get(), 0);
    // The owner makes the new entry; maps go on.
    pte::make(slot, old);
    assert_eq!(f.map(0, gfn, 0x99, true).action, MapAction::Unchanged);

    // A locked entry above the leaf level (as while a block there is broken into a table): maps
    // under it back off too, and link nothing.
    let far = 0x20_0000;
    let (upper, v, level) = f.mmu.entry(0, Gfn::new(far)).unwrap();
    assert_eq!((v, level), (0, f.mmu.geometry().start_level));
    upper.store(pte::LOCKED, Ordering::Relaxed);
    let before = f.mmu.table_pages();
    assert_eq!(f.try_map(0, far, 0x5, false), Err(MapError::Again));
    assert_eq!(f.mmu.table_pages(), before);
    assert_eq!(f.mmu.eagain(), 5);
    upper.store(0, Ordering::Relaxed);
    assert_eq!(f.map(0, far, 0x5, false).new_tables, 2);
    teardown(f);
}

#[test]
fn stale_compare_exchanges_fail() {
    const ID: usize = 26;
    let f = Fixture::<ID>::new(1, 36, true);
    // A race lost between a walker's load and its compare-exchange, staged from one thread: a
    // leaf installed from a stale "empty" value fails, and so does a relax from a stale leaf.
    f.map(0, 3, 0x30, false);
    let (slot, v, _) = f.mmu.leaf(0, Gfn::new(3)).unwrap();
    assert_eq!(
        pte::try_set(slot, 0, pte::make_leaf(0x31, LAST_LEVEL, true)),
        Err(v)
    );
    assert!(pte::try_set(slot, pte::mkold(v), pte::mkwrite(v)).is_err());
    assert_eq!(f.pte(0, 3), v);
    teardown(f);
}

#[test]
fn mkyoung_is_the_access_flag_fault() {
    const ID: usize = 27;
    let f = Fixture::<ID>::new(1, 40, false);
    f.map(0, 10, 0x10, false);
    f.map(0, 11, 0x11, true);
    assert!(!f.mmu.mkyoung(0, Gfn::new(12), false), "nothing mapped");
    assert!(!f.mmu.mkyoung(1, Gfn::new(10), false), "no such root");

    let r = f
        .mmu
        .age_gfn_range(Gfn::new(10), Gfn::new(12), AgeOp::ClearFlush);
    assert_eq!((r.young, r.cleared, r.visited), (true, 2, 2));
    assert!(r.needs_flush());
    for gfn in [10, 11] {
        // Without hardware AF, an old leaf faults for reads and writes alike, before any
        // permission check.
        assert_eq!(f.translate(0, gfn, false), Err(WalkFault::NotPresent));
        assert_eq!(f.translate(0, gfn, true), Err(WalkFault::NotPresent));
        assert_eq!(f.mmu.snapshot(0, Gfn::new(gfn)) & SNAP_ACCESSED, 0);
    }
    // A write to the read-only leaf needs the full fault path.
    assert!(!f.mmu.mkyoung(0, Gfn::new(10), true));
    assert!(!pte::is_young(f.pte(0, 10)));
    assert!(f.mmu.mkyoung(0, Gfn::new(10), false));
    assert!(f.mmu.mkyoung(0, Gfn::new(11), true));
    assert!(f.mmu.mkyoung(0, Gfn::new(11), true), "already young");
    assert_eq!(f.translate(0, 10, true), Err(WalkFault::WriteProtected));
    assert_eq!(f.translate(0, 11, true).unwrap().pfn.raw(), 0x11);
    assert_eq!(f.pte(0, 11), pte::make_leaf(0x11, LAST_LEVEL, true));
    teardown(f);
}

#[test]
fn hardware_af_sets_the_flag_on_access() {
    const ID: usize = 28;
    let f = Fixture::<ID>::new(1, 40, true);
    f.map(0, 10, 0x10, false);
    f.mmu
        .age_gfn_range(Gfn::new(0), Gfn::new(100), AgeOp::Clear);
    assert!(!pte::is_young(f.pte(0, 10)));
    // A permission fault does not set AF.
    assert_eq!(f.translate(0, 10, true), Err(WalkFault::WriteProtected));
    assert!(!pte::is_young(f.pte(0, 10)));
    assert_eq!(f.translate(0, 10, false).unwrap().pfn.raw(), 0x10);
    assert!(pte::is_young(f.pte(0, 10)));
    assert_eq!(
        f.mmu.snapshot(0, Gfn::new(10)),
        SNAP_PRESENT | SNAP_ACCESSED
    );
    teardown(f);
}

// ---------------------------------------------------------------------------------------------
// Aging.

#[test]
fn aging_test_clear_and_ranges() {
    const ID: usize = 29;
    let f = Fixture::<ID>::new(3, 44, true);
    // Sparse: a gfn every 100 across several leaf tables, in roots 0 and 2.
    let gfns: Vec<u64> = (0..50).map(|i| 0x10_0000 + 100 * i).collect();
    for root in [0, 2] {
        for &gfn in &gfns {
            f.map(root, gfn, pfn_of(gfn), gfn % 200 == 0);
        }
    }
    let (start, end) = (gfns[0], gfns[49] + 1);

    // Test: young, stops at the first, changes nothing.
    let before: Vec<u64> = gfns.iter().map(|&g| f.pte(0, g)).collect();
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(start), Gfn::new(end), AgeOp::Test);
    assert!(r.young && r.done());
    assert_eq!((r.visited, r.cleared), (1, 0));
    assert_eq!(
        gfns.iter().map(|&g| f.pte(0, g)).collect::<Vec<_>>(),
        before
    );

    // Clear a sub-range: exactly its leaves in both roots.
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(gfns[10]), Gfn::new(gfns[20]), AgeOp::Clear);
    assert_eq!(
        (r.young, r.cleared, r.visited, r.lost_races),
        (true, 20, 20, 0)
    );
    assert!(!r.needs_flush(), "clear_young does not flush");
    for (i, &g) in gfns.iter().enumerate() {
        for root in [0, 2] {
            assert_eq!(pte::is_young(f.pte(root, g)), !(10..20).contains(&i), "{i}");
        }
    }
    // Nothing young left there: test and clear say old.
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(gfns[10]), Gfn::new(gfns[20]), AgeOp::Test);
    assert_eq!((r.young, r.visited), (false, 20));
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(gfns[10]), Gfn::new(gfns[20]), AgeOp::Clear);
    assert_eq!((r.young, r.cleared), (false, 0));
    // Clear-flush the whole range.
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(0), Gfn::new(u64::MAX), AgeOp::ClearFlush);
    assert_eq!((r.young, r.cleared, r.visited), (true, 80, 100));
    assert!(r.needs_flush());
    // Aging never takes permissions or reports dirty pages: writable is dirty (I4 of
    // src/arm64/mmu.rs).
    for &g in &gfns {
        assert_eq!(pte::is_writable(f.pte(0, g)), g % 200 == 0);
    }
    assert_eq!(r.dirty + r.write_protected, 0);
    assert!(HostPages::<ID>::take_dirty().is_empty());
    assert_eq!(f.mmu.eagain(), 0);
    // Empty ranges.
    assert!(
        !f.mmu
            .age_gfn_range(Gfn::new(5), Gfn::new(5), AgeOp::Test)
            .young
    );
    assert_eq!(
        f.mmu
            .age_gfn_range(Gfn::new(0), Gfn::new(0x10_0000), AgeOp::Clear)
            .visited,
        0
    );
    teardown(f);
}

// ---------------------------------------------------------------------------------------------
// Zaps.

#[test]
fn zap_range_reports_exactly_the_dirty_pages() {
    const ID: usize = 30;
    let mut f = Fixture::<ID>::new(4, 40, true);
    let n = 2000;
    for root in 0..4 {
        for gfn in 0..n {
            f.map(root, gfn, pfn_of(gfn), gfn % 3 != 0);
        }
    }
    let (start, end) = (500, 1500);
    let p = f.zap(start, end);
    assert_eq!(p.zapped, 4 * (end - start));
    let dirty_expect: u64 = (start..end).filter(|g| g % 3 != 0).count() as u64;
    assert_eq!(p.dirty, 4 * dirty_expect);
    assert_eq!(p.flushes, 1);
    let dirty = HostPages::<ID>::take_dirty();
    assert_eq!(dirty.len() as u64, 4 * dirty_expect);
    let set: BTreeSet<u64> = dirty.into_iter().collect();
    let expect: BTreeSet<u64> = (start..end).filter(|g| g % 3 != 0).map(pfn_of).collect();
    assert_eq!(set, expect);
    for root in 0..4 {
        for gfn in [0, start - 1, end, n - 1] {
            assert!(f.translate(root, gfn, false).is_ok(), "{root} {gfn}");
        }
        for gfn in [start, end - 1, (start + end) / 2] {
            assert_eq!(f.translate(root, gfn, false), Err(WalkFault::NotPresent));
        }
    }
    let s = f.mmu.stats();
    assert_eq!((s.leaf_count(), s.zapped), (4 * (n - 1000), 4000));
    // Zapping again finds nothing.
    assert_eq!(f.zap(start, end).zapped, 0);
    // And the tables stay, so the same gfns map again without new tables.
    assert_eq!(f.map(0, start, 1, true).new_tables, 0);
    teardown(f);
}

#[test]
fn zap_resumes_where_it_stopped() {
    const ID: usize = 31;
    let mut f = Fixture::<ID>::new(2, 48, true);
    // Spread over the whole space: dense runs, lone gfns and huge empty stretches between.
    let limit = f.mmu.geometry().gfn_limit();
    let mut gfns: Vec<u64> = (0..300).collect();
    gfns.extend((0..40).map(|i| (limit / 40) * i + 7));
    gfns.extend(limit - 100..limit);
    gfns.sort();
    gfns.dedup();
    for &gfn in &gfns {
        f.map(gfn as usize % 2, gfn, pfn_of(gfn), true);
    }
    let total = gfns.len() as u64;

    // Asked to yield at every poll: each step still makes progress, and never goes past the
    // end.  At every yield, the zap is done with the roots before the one it stopped in, and
    // with everything below where it stopped in that root: in (root, gfn) order, the gfns it
    // zapped all lie before those it did not.
    let mut order: Vec<(usize, u64)> = gfns.iter().map(|&g| (g as usize % 2, g)).collect();
    order.sort();
    let mut at_yield = |mmu: &mut S2Mmu<HostPages<ID>>| {
        let mapped = |&&(r, g): &&(usize, u64)| mmu.snapshot(r, Gfn::new(g)) != 0;
        let first_left = order.iter().find(mapped).copied();
        let last_gone = order.iter().rev().find(|e| !mapped(e)).copied();
        assert!(
            last_gone.is_none() || first_left.is_none() || last_gone < first_left,
            "{last_gone:?} {first_left:?}"
        );
    };
    let p = run_zap(
        &mut f.mmu,
        HostPages::<ID>::frees,
        || true,
        &mut at_yield,
        |lock, z| S2Mmu::zap_gfn_range(lock, z, Gfn::new(0), Gfn::new(limit)),
    );
    let zapped = p.zapped;
    // Every poll yielded; each flush for a full list came before a batch, and resumed there.
    assert_eq!(p.polls, 0);
    let steps = p.yields + p.full + 1;
    assert_eq!(zapped, total);
    // The whole space was zapped: every table below the start level went.
    assert_eq!(f.mmu.table_pages(), 2 * f.mmu.geometry().pgd_pages as u64);
    // A bounded number of entries per step: the 300 dense gfns took several steps.
    assert!(steps >= 300 / 64, "{steps} steps");
    // The empty stretches were skipped a subtree at a time, not gfn by gfn.
    assert!(steps < 2000, "{steps} steps");
    assert_eq!(HostPages::<ID>::take_dirty().len() as u64, total);

    // An empty or inverted range does nothing, and never asks to yield.
    let p = run_zap(
        &mut f.mmu,
        HostPages::<ID>::frees,
        || true,
        |_| {},
        |lock, z| S2Mmu::zap_gfn_range(lock, z, Gfn::new(100), Gfn::new(50)),
    );
    assert_eq!((p.zapped, p.yields, p.polls, p.flushes), (0, 0, 0, 0));
    teardown(f);
}

/// A zap unlinks the tables it leaves empty, as KVM's unmap does, whether it covered them whole
/// or in part, and only those.  Unlinked tables are not reachable (walks fault) and wait for
/// `free_zapped_tables()`, after the flush; with many roots, the zap flushes and frees them when
/// its list is full, and goes on.
#[test]
fn zap_frees_the_tables_it_empties() {
    const ID: usize = 37;
    let mut f = Fixture::<ID>::new(1, 40, true);
    let pgd = f.mmu.table_pages();
    // 40 bits: start level 1; level-2 tables of 1G, leaf tables of 2M.  Map two 2M regions
    // (two leaf tables under one level-2 table) and one gfn in the next 1G.
    let (a, b, far) = (0x200, 0x400, 0x40000 + 5);
    for gfn in (a..a + 512).chain(b..b + 512) {
        f.map(0, gfn, pfn_of(gfn), false);
    }
    f.map(0, far, pfn_of(far), false);
    assert_eq!(f.mmu.table_pages(), pgd + 2 + 1 + 2);
    // Part of a leaf table: its leaves go, the table stays.
    assert_eq!(f.zap(a, a + 256).unlinked_tables, 0);
    assert_eq!(f.zap(b + 100, b + 101).unlinked_tables, 0);
    // The rest of it, from another zap, which covers it in part too: it is empty now, and goes.
    let p = f.zap(a + 256, a + 512);
    assert_eq!((p.zapped, p.unlinked_tables), (256, 1));
    assert_eq!(f.mmu.table_pages(), pgd + 4);
    assert_eq!(f.translate(0, a + 300, false), Err(WalkFault::NotPresent));
    // The other region: its leaf table, then the level-2 table above it, empty too, go.
    let p = f.zap(b, b + 512);
    assert_eq!((p.zapped, p.unlinked_tables), (511, 2));
    assert_eq!(f.mmu.table_pages(), pgd + 2);
    assert_eq!(f.translate(0, b + 3, false), Err(WalkFault::NotPresent));
    assert_eq!(
        f.translate(0, far, false).map(|t| t.pfn.raw()),
        Ok(pfn_of(far))
    );
    // A zap of nothing mapped frees nothing.
    assert_eq!(f.zap(0, 0x40000).unlinked_tables, 0);
    // One page, alone in its tables.
    let p = f.zap(far, far + 1);
    assert_eq!((p.zapped, p.unlinked_tables), (1, 2));
    assert_eq!(f.mmu.table_pages(), pgd);
    // Mapping again links new tables.
    f.map(0, a, pfn_of(a), false);
    assert_eq!(f.mmu.table_pages(), pgd + 2);
    assert_eq!(f.mmu.stats().tables_freed, 5);
    teardown(f);

    // Many roots, a mapping in every 2M of 64M: more tables than one step may hold.
    const ID2: usize = 38;
    let mut f = Fixture::<ID2>::new(MAX_ROOTS, 40, true);
    let pgd = f.mmu.table_pages();
    for root in 0..MAX_ROOTS {
        for gfn in (0..32).map(|i| i * 512 + 7) {
            f.map(root, gfn, pfn_of(gfn), true);
        }
    }
    let p = f.zap(0, 0x40000);
    assert!(p.full > 0, "{} tables in one step", MAX_ROOTS * 33);
    assert_eq!(f.mmu.table_pages(), pgd);
    assert_eq!(HostPages::<ID2>::take_dirty().len(), MAX_ROOTS * 32);
    teardown(f);
}

#[test]
fn zap_all_then_drop_frees_every_table() {
    const ID: usize = 32;
    let mut f = Fixture::<ID>::new(MAX_ROOTS, 34, false);
    let pgd = f.mmu.table_pages();
    assert_eq!(pgd, MAX_ROOTS as u64 * 16);
    for root in 0..MAX_ROOTS {
        for gfn in [0, 1 << 10, 1 << 20, (1 << 22) - 1] {
            f.map(root, gfn, pfn_of(gfn), root % 2 == 0);
        }
    }
    assert_eq!(f.mmu.zap_all(), 4 * MAX_ROOTS as u64);
    assert_eq!(f.mmu.stats().dirty, 4 * MAX_ROOTS as u64 / 2);
    assert!(f.mmu.table_pages() > pgd, "tables stay until the drop");
    // Leaves still mapped at drop are zapped (and reported dirty) by it.
    f.map(3, 77, 0x77, true);
    HostPages::<ID>::take_dirty();
    teardown(f);
    assert_eq!(HostPages::<ID>::take_dirty(), vec![0x77]);
}

// ---------------------------------------------------------------------------------------------
// Blocks installed by hand (`install_test_block()`), to test every other path's handling of them
// apart from map().

#[test]
fn blocks_walk_age_zap_and_break() {
    const ID: usize = 33;
    let mut f = Fixture::<ID>::new(1, 40, true);
    // A 4K map links the level-2 table of the first 1G, and the level-3 table of the first 2M.
    f.map(0, 0, 0x1, false);
    // 2M block at gfn 0x400 (the third 2M of the first 1G).
    let (bgfn, bpfn) = (0x400, 0x20_0000);
    assert!(
        !f.mmu
            .install_test_block(0, bgfn, bpfn + 1, Level::L2M, true),
        "unaligned"
    );
    assert!(f.mmu.install_test_block(0, bgfn, bpfn, Level::L2M, true));
    assert!(
        !f.mmu.install_test_block(0, bgfn, bpfn, Level::L2M, true),
        "not empty"
    );

    let t = f.translate(0, bgfn + 0x123, true).unwrap();
    assert_eq!(
        t,
        Translation {
            pfn: Pfn::new(bpfn + 0x123),
            level: Level::L2M,
            writable: true,
            dirty: true,
            dirtied: false,
        }
    );
    let snap = f.mmu.snapshot(0, Gfn::new(bgfn + 511));
    assert_eq!(snap >> SNAP_LEVEL_SHIFT, Level::L2M.uapi());
    assert_eq!(
        snap & 0xf,
        SNAP_PRESENT | SNAP_WRITABLE | SNAP_ACCESSED | SNAP_DIRTY
    );
    assert_eq!(f.mmu.snapshot(0, Gfn::new(bgfn + 512)), 0);

    // Aging a range that only overlaps the block's tail still sees it.
    let r = f
        .mmu
        .age_gfn_range(Gfn::new(bgfn + 500), Gfn::new(bgfn + 501), AgeOp::Clear);
    assert_eq!((r.cleared, r.visited), (1, 1));
    assert_eq!(
        f.translate(0, bgfn, false).unwrap().level,
        Level::L2M,
        "hw AF"
    );

    // A 4K map inside the block breaks it into an empty table: one flush, dirty reported.
    let o = f.map(0, bgfn + 5, 0x55, false);
    assert_eq!((o.action, o.new_tables), (MapAction::Installed, 1));
    assert_eq!(f.flushes.get(), 1);
    assert_eq!(HostPages::<ID>::take_dirty(), vec![bpfn]);
    assert_eq!(f.translate(0, bgfn + 5, false).unwrap().pfn.raw(), 0x55);
    assert_eq!(f.translate(0, bgfn + 6, false), Err(WalkFault::NotPresent));

    // A zap of a range overlapping a block's head zaps the block whole.
    let b2 = 0x800;
    assert!(f
        .mmu
        .install_test_block(0, b2, 0x40_0000, Level::L2M, false));
    let p = f.zap(b2 + 511, b2 + 512);
    assert_eq!((p.zapped, p.dirty), (1, 0));
    assert_eq!(f.mmu.snapshot(0, Gfn::new(b2)), 0);
    let s = f.mmu.stats();
    assert_eq!((s.leaf_count(), s.zapped, s.dirty), (2, 2, 1));
    teardown(f);
}

/// Every geometry maps the largest block its walk can hold, whole, and refuses a larger one
/// without installing anything: a 1G block is an entry at level 1, which a walk starting at
/// level 2 (`ia_bits` 32 to 34) does not have.
#[test]
fn block_maps_fit_every_geometry() {
    const ID: usize = 39;
    for ia_bits in MIN_IA_BITS..=MAX_IA_BITS {
        let mut f = Fixture::<ID>::new(1, ia_bits, true);
        let geo = f.mmu.geometry();
        let max = if geo.start_level >= arm64_level(1) {
            Level::L1G
        } else {
            Level::L2M
        };
        assert_eq!(f.mmu.max_map_level(), max, "ia_bits {ia_bits}");
        let pgd = f.mmu.table_pages();
        // The second 1G, and a 2M block in the third.
        let (g1, p1) = (1u64 << 18, 0x40_0000u64);
        let (g2, p2) = ((2u64 << 18) + 0x600, 0x8_0000u64);
        let o = f.try_map_at(0, g1, p1, true, Level::L1G);
        if max == Level::L1G {
            assert_eq!(o.map(|o| o.action), Ok(MapAction::Installed));
            for gfn in g1..g1 + Level::L1G.pages() {
                let t = f.translate(0, gfn, false).unwrap();
                assert_eq!(
                    (t.pfn.raw(), t.level),
                    (p1 + gfn - g1, Level::L1G),
                    "{gfn:#x}"
                );
            }
        } else {
            assert_eq!(o, Err(MapError::BadLevel), "ia_bits {ia_bits}");
            assert_eq!(
                f.mmu.table_pages(),
                pgd,
                "ia_bits {ia_bits}: no table linked"
            );
            assert_eq!(f.mmu.leaves(), 0);
            for gfn in [g1, g1 + 1, g1 + 0x200, g1 + 0x3_ffff] {
                assert_eq!(f.translate(0, gfn, false), Err(WalkFault::NotPresent));
            }
        }
        let o = f.try_map_at(0, g2, p2, false, Level::L2M).unwrap();
        assert_eq!(o.action, MapAction::Installed);
        for gfn in g2..g2 + Level::L2M.pages() {
            let t = f.translate(0, gfn, false).unwrap();
            assert_eq!(
                (t.pfn.raw(), t.level),
                (p2 + gfn - g2, Level::L2M),
                "{gfn:#x}"
            );
        }
        assert_eq!(f.translate(0, g2 + 512, false), Err(WalkFault::NotPresent));
        let leaves = u64::from(max == Level::L1G) + 1;
        assert_eq!(f.zap(0, geo.gfn_limit()).zapped, leaves);
        assert_eq!(f.mmu.table_pages(), pgd);
        teardown(f);
    }
}

/// A table limit on stage-2: a map that needs a table past it fails with nothing changed, and
/// takes nothing from the cache (a block it would break stays); maps that need no new table go
/// on; once a zap frees tables, maps that need tables work again.
#[test]
fn table_limit_refuses_new_tables_until_freed() {
    const ID: usize = 55;
    let mut f = Fixture::<ID>::new(1, 40, true);
    let pgd = f.mmu.table_pages();
    f.mmu.set_table_limit(pgd + 2);
    // 40 bits: start level 1, a level-2 table and a leaf table for the first page.
    assert_eq!(f.map(0, 0x5, 0x10, true).new_tables, 2);
    assert_eq!(f.mmu.table_pages(), pgd + 2);
    let cached = f.tables.borrow().len();
    for gfn in [0x205, 0x4_0005] {
        assert_eq!(f.try_map(0, gfn, 0x11, true), Err(MapError::TableLimit));
        assert_eq!(f.mmu.entry(0, Gfn::new(gfn)).map(|(_, v, _)| v), Some(0));
    }
    assert_eq!(f.tables.borrow().len(), cached);
    assert_eq!(f.mmu.stats().tables_allocated, pgd + 2);
    assert_eq!(f.mmu.eagain(), 0);
    // No new table needed: a page next to the first, a 2M block in the level-2 table.
    assert_eq!(f.map(0, 0x6, 0x12, false).new_tables, 0);
    let o = f.try_map_at(0, 0x400, 0x8_0000, false, Level::L2M).unwrap();
    assert_eq!(o.new_tables, 0);
    // A page under the block would break it into a new table: refused, no flush, the block
    // stays.
    assert_eq!(f.try_map(0, 0x401, 0x13, true), Err(MapError::TableLimit));
    assert_eq!(f.flushes.get(), 0);
    assert_eq!(
        f.translate(0, 0x401, false).map(|t| (t.pfn.raw(), t.level)),
        Ok((0x8_0001, Level::L2M))
    );
    // A zap frees the leaf table: room for one.
    assert_eq!(f.zap(0, 0x200).unlinked_tables, 1);
    assert_eq!(f.map(0, 0x205, 0x11, true).new_tables, 1);
    assert_eq!(f.try_map(0, 0x5, 0x10, true), Err(MapError::TableLimit));
    f.mmu.set_table_limit(u64::MAX);
    assert_eq!(f.map(0, 0x4_0005, 0x14, true).new_tables, 2);
    assert_eq!(f.map(0, 0x401, 0x13, true).new_tables, 1);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

#[test]
fn table_cache_put_back() {
    const ID: usize = 34;
    let mut c = TableCache::<HostPages<ID>>::new();
    c.topup(1).unwrap();
    assert_eq!(c.len(), TABLE_CACHE_CAPACITY);
    let pfn = c.take().unwrap();
    // SAFETY: just taken, never used.
    unsafe { c.put_back(pfn) };
    assert_eq!(c.len(), TABLE_CACHE_CAPACITY);
    // Full: the page goes back to the allocator.
    let extra = <HostPages<ID> as PageOps>::alloc_table().unwrap();
    // SAFETY: fresh, zeroed, ours.
    unsafe { c.put_back(extra) };
    assert_eq!(c.len(), TABLE_CACHE_CAPACITY);
    assert_eq!(HostPages::<ID>::frees(), 1);
    drop(c);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

// ---------------------------------------------------------------------------------------------
// Stress: parallel faults under the read lock.

/// What the faulting threads did, summed.
#[derive(Default)]
struct Tally {
    installed: StdAtomicU64,
    replaced: StdAtomicU64,
    relaxed: StdAtomicU64,
    again: StdAtomicU64,
    new_tables: StdAtomicU64,
    mkyoung: StdAtomicU64,
    flushes: StdAtomicU64,
    translations: StdAtomicU64,
}

impl Tally {
    fn add(c: &StdAtomicU64, n: u64) {
        c.fetch_add(n, StdOrdering::Relaxed);
    }

    fn get(c: &StdAtomicU64) -> u64 {
        c.load(StdOrdering::Relaxed)
    }
}

const STRESS_THREADS: usize = 3;
const STRESS_ROUNDS: u64 = 24;
/// gfns per round: three leaf tables' worth, plus a bit of a fourth.
const STRESS_GFNS: u64 = 3 * 512 + 64;
const STRESS_ROOTS: usize = 2;

/// The gfn region of `round`: a 1G region never mapped before, so every table below the start
/// level must be linked by the racing faults.
fn stress_base(round: u64) -> u64 {
    (round + 1) << 18
}

/// Resolves an access to `gfn` in `root` as a vCPU would: translate, and on a fault take the
/// read lock and map (or mkyoung) until the translation works.  Returns the pfn translated.
fn fault_in<const ID: usize>(
    lock: &RwLock<S2Mmu<HostPages<ID>>>,
    tables: &mut TableCache<HostPages<ID>>,
    tally: &Tally,
    root: usize,
    gfn: u64,
    pfn: u64,
    write: bool,
) -> u64 {
    let flush = || Tally::add(&tally.flushes, 1);
    loop {
        // Top up before taking the (spinning, in the kernel) lock.
        tables.topup(MAP_MIN_TABLES).unwrap();
        let mmu = lock.read().unwrap();
        let r = mmu.root(root).unwrap();
        // SAFETY: the read guard keeps the MMU alive for the call.
        let t = unsafe { translate::<HostPages<ID>>(r, Gfn::new(gfn), write, mmu.hw_af(), false) };
        match t {
            Ok(t) => {
                Tally::add(&tally.translations, 1);
                assert!(!write || (t.writable && t.dirty));
                return t.pfn.raw();
            }
            Err(WalkFault::NotPresent) if mmu.mkyoung(root, Gfn::new(gfn), write) => {
                Tally::add(&tally.mkyoung, 1);
            }
            Err(_) => match mmu.map(
                root,
                Gfn::new(gfn),
                Pfn::new(pfn),
                write,
                Level::L4K,
                tables,
                &flush,
            ) {
                Ok(o) => {
                    Tally::add(&tally.new_tables, o.new_tables as u64);
                    let c = match o.action {
                        MapAction::Installed => &tally.installed,
                        MapAction::Replaced => &tally.replaced,
                        MapAction::Upgraded | MapAction::Restored | MapAction::Unchanged => {
                            &tally.relaxed
                        }
                    };
                    Tally::add(c, 1);
                }
                Err(MapError::Again) => Tally::add(&tally.again, 1),
                Err(e) => panic!("map of gfn {gfn:#x}: {e:?}"),
            },
        }
    }
}

fn stress<const ID: usize>(hw_af: bool) {
    let lock = RwLock::new(S2Mmu::<HostPages<ID>>::new(STRESS_ROOTS, 40, hw_af).unwrap());
    let pgd_tables = lock.read().unwrap().table_pages();
    let tally = Tally::default();
    let stop_aging = AtomicBool::new(false);
    let aged = StdAtomicU64::new(0);
    let lost_races = StdAtomicU64::new(0);
    // Remapped rounds: every gfn is then remapped to `alt_of()`, racing break-before-makes.
    let remap = |round: u64| round % 3 == 2;

    for round in 0..STRESS_ROUNDS {
        let base = stress_base(round);
        // Between the faulting and the remapping phases of a round.
        let phase = Barrier::new(STRESS_THREADS);
        let (start, end) = (base, base + STRESS_GFNS);
        thread::scope(|s| {
            // The ager: all three operations, over the round's region, under the read lock.
            s.spawn(|| {
                let mut rng = Rng(0x9e37_79b9 + round);
                while !stop_aging.load(StdOrdering::Relaxed) {
                    let op =
                        [AgeOp::Test, AgeOp::Clear, AgeOp::ClearFlush][rng.next() as usize % 3];
                    let a = start + rng.next() % STRESS_GFNS;
                    let b = (a + 1 + rng.next() % 700).min(end);
                    let r = lock
                        .read()
                        .unwrap()
                        .age_gfn_range(Gfn::new(a), Gfn::new(b), op);
                    Tally::add(&aged, r.cleared);
                    Tally::add(&lost_races, r.lost_races);
                    assert!(op != AgeOp::Test || r.cleared == 0);
                    thread::yield_now();
                }
            });
            let faulters: Vec<_> = (0..STRESS_THREADS)
                .map(|t| {
                    let (lock, tally, phase) = (&lock, &tally, &phase);
                    s.spawn(move || {
                        let mut tables = TableCache::<HostPages<ID>>::new();
                        let mut rng = Rng(0x1234_5678 + (round << 8) + t as u64);
                        // Every thread faults every gfn of every root, in its own order: the
                        // same gfns, hence the same tables and leaves, concurrently.
                        let mut order: Vec<(usize, u64)> = (0..STRESS_ROOTS)
                            .flat_map(|root| (start..end).map(move |g| (root, g)))
                            .collect();
                        match t % 3 {
                            0 => {}
                            1 => order.reverse(),
                            _ => {
                                for i in (1..order.len()).rev() {
                                    order.swap(i, rng.next() as usize % (i + 1));
                                }
                            }
                        }
                        for &(root, gfn) in &order {
                            let write = (gfn + t as u64).is_multiple_of(4);
                            let got =
                                fault_in(lock, &mut tables, tally, root, gfn, pfn_of(gfn), write);
                            assert_eq!(got, pfn_of(gfn), "thread {t} gfn {gfn:#x}");
                        }
                        phase.wait();
                        if remap(round) {
                            // The primary remapped every page: stale leaves are replaced by
                            // break-before-make, racing each other.
                            for &(root, gfn) in &order {
                                let write = rng.next().is_multiple_of(2);
                                let mut got = 0;
                                while got != alt_of(gfn) {
                                    // Map unconditionally, as a fault after an invalidation does.
                                    tables.topup(MAP_MIN_TABLES).unwrap();
                                    let mmu = lock.read().unwrap();
                                    let flush = || Tally::add(&tally.flushes, 1);
                                    match mmu.map(
                                        root,
                                        Gfn::new(gfn),
                                        Pfn::new(alt_of(gfn)),
                                        write,
                                        Level::L4K,
                                        &mut tables,
                                        &flush,
                                    ) {
                                        Ok(o) if o.action == MapAction::Replaced => {
                                            Tally::add(&tally.replaced, 1)
                                        }
                                        Ok(_) => Tally::add(&tally.relaxed, 1),
                                        Err(MapError::Again) => Tally::add(&tally.again, 1),
                                        Err(e) => panic!("remap of gfn {gfn:#x}: {e:?}"),
                                    }
                                    drop(mmu);
                                    got = fault_in(
                                        lock,
                                        &mut tables,
                                        tally,
                                        root,
                                        gfn,
                                        alt_of(gfn),
                                        false,
                                    );
                                    assert!(
                                        got == alt_of(gfn) || got == pfn_of(gfn),
                                        "gfn {gfn:#x}: {got:#x}"
                                    );
                                }
                            }
                        }
                        // `tables` is dropped here: its pages, given back ones included, freed.
                    })
                })
                .collect();
            for h in faulters {
                h.join().unwrap();
            }
            stop_aging.store(true, StdOrdering::Relaxed);
        });
        stop_aging.store(false, StdOrdering::Relaxed);

        // Between rounds, the write side: check, then zap the round's region.
        let mut mmu = lock.write().unwrap();
        let want = if remap(round) { alt_of } else { pfn_of };
        for root in 0..STRESS_ROOTS {
            for gfn in start..end {
                let (_, v, level) = mmu.leaf(root, Gfn::new(gfn)).unwrap();
                assert_eq!(
                    (pte::pfn(v), level),
                    (want(gfn), Level::L4K),
                    "gfn {gfn:#x}"
                );
            }
        }
        let p = zap_to_end(&mut *mmu, HostPages::<ID>::frees, start, end);
        assert_eq!(p.zapped, STRESS_ROOTS as u64 * STRESS_GFNS);
        assert_eq!(mmu.stats().leaf_count(), 0);
        // The round's region is alone in its 1G: its four leaf tables and the level-2 table
        // above them went, in each root.
        assert_eq!(p.unlinked_tables, STRESS_ROOTS as u64 * 5);
    }

    let mmu = lock.into_inner().unwrap();
    let installed = Tally::get(&tally.installed);
    let replaced = Tally::get(&tally.replaced);
    let remapped_rounds = (0..STRESS_ROUNDS).filter(|&r| remap(r)).count() as u64;
    // Exactly one install per leaf per round, and one replace per leaf per remapped round:
    // every other racer backed off (Again) or found the winner's leaf.
    let leaves_per_round = STRESS_ROOTS as u64 * STRESS_GFNS;
    assert_eq!(installed, STRESS_ROUNDS * leaves_per_round);
    assert_eq!(replaced, remapped_rounds * leaves_per_round);
    // One flush per break-before-make of a valid leaf, none for installs.
    assert_eq!(Tally::get(&tally.flushes), replaced);
    // Exactly the tables needed were linked: per root and round one level-2 table and four
    // leaf tables; every loser gave its page back.
    assert_eq!(
        Tally::get(&tally.new_tables),
        STRESS_ROUNDS * STRESS_ROOTS as u64 * 5
    );
    let s = mmu.stats();
    assert_eq!(
        s.tables_allocated,
        pgd_tables + Tally::get(&tally.new_tables)
    );
    assert_eq!(s.tables_freed, STRESS_ROUNDS * STRESS_ROOTS as u64 * 5);
    assert_eq!(s.zapped, installed + replaced);
    eprintln!(
        "s2 stress (hw_af {hw_af}): {installed} installed, {replaced} replaced, {} relaxed, {} \
         mkyoung, {} Again, {} translations, {} aged, {} aging races lost, eagain {}",
        Tally::get(&tally.relaxed),
        Tally::get(&tally.mkyoung),
        Tally::get(&tally.again),
        Tally::get(&tally.translations),
        Tally::get(&aged),
        Tally::get(&lost_races),
        mmu.eagain(),
    );
    assert_eq!(
        mmu.eagain(),
        Tally::get(&tally.again) + Tally::get(&lost_races)
    );
    drop(mmu);
    assert_eq!(HostPages::<ID>::allocs(), HostPages::<ID>::frees());
}

#[test]
fn stress_parallel_faults_hw_af() {
    stress::<35>(true);
}

#[test]
fn stress_parallel_faults_no_hw_af() {
    stress::<36>(false);
}

/// Dirty logging's write protection (`S2Mmu::write_protect_gfn_range()`): every valid leaf of
/// the range loses W in every root, a block whole; a writable leaf counts as dirty, so its page
/// is marked as W goes (I4); a write map afterwards upgrades a page in place, and breaks the
/// block to map a page under it.
#[test]
fn write_protection_for_dirty_logging() {
    const ID: usize = 67;
    let mut f = Fixture::<ID>::new(2, 40, true);
    for root in 0..2 {
        for gfn in 0..64 {
            f.map(root, gfn, pfn_of(gfn), gfn % 4 != 3);
        }
    }
    f.try_map_at(0, 0x400, 0x8_0000, true, Level::L2M).unwrap();
    HostPages::<ID>::take_dirty();
    // A range that ends inside the block and leaves gfns 0..8 alone.
    let done = f.mmu.write_protect_gfn_range(Gfn::new(8), Gfn::new(0x401));
    let writable_4k = (8..64).filter(|g| g % 4 != 3).count() as u64;
    assert_eq!(done.leaves, 2 * writable_4k + 1);
    assert_eq!(done.visited, 2 * 56 + 1);
    assert_eq!(HostPages::<ID>::take_dirty().len() as u64, done.leaves);
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
    assert_eq!(f.translate(0, 0x5ff, true), Err(WalkFault::WriteProtected));
    let again = f
        .mmu
        .write_protect_gfn_range(Gfn::new(0), Gfn::new(1 << 20));
    assert_eq!((again.leaves, again.visited), (2 * 6, 2 * 64 + 1));
    HostPages::<ID>::take_dirty();
    // The fast path of a write fault: only a page leaf a fault made writable.
    assert!(f.mmu.restore_write_protected(0, Gfn::new(10)));
    assert!(f.translate(0, 10, true).is_ok());
    assert!(
        !f.mmu.restore_write_protected(0, Gfn::new(11)),
        "mapped read-only"
    );
    assert!(
        !f.mmu.restore_write_protected(0, Gfn::new(10)),
        "writable already"
    );
    assert!(!f.mmu.restore_write_protected(0, Gfn::new(0x405)), "block");
    assert!(
        !f.mmu.restore_write_protected(0, Gfn::new(0x9999)),
        "not mapped"
    );
    assert_eq!(f.translate(1, 10, true), Err(WalkFault::WriteProtected));
    // The write faults of logged pages.
    assert_eq!(f.map(0, 9, pfn_of(9), true).action, MapAction::Upgraded);
    assert!(f.translate(0, 9, true).is_ok());
    let flushes = f.flushes.get();
    f.map(0, 0x405, 0x8_0005, true);
    assert!(
        f.flushes.get() > flushes,
        "the block is broken before the make"
    );
    assert_eq!(f.translate(0, 0x405, true).unwrap().level, Level::L4K);
    assert_eq!(f.translate(0, 0x406, false), Err(WalkFault::NotPresent));
    f.zap(0, 1 << 20);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

/// Eager splitting (`S2Mmu::split_huge_gfn_range()`): after the write protection, 1G and 2M
/// blocks in two roots become pages that translate to the same pages with the same attributes
/// (read-only, young, made writable by the fast path of a write fault), each block broken with a
/// flush first; a range touching a block splits it whole; an empty cache stops the split where
/// it is, to go on from there (in the same root or the next), and the table limit stops it.
#[test]
fn eager_split_for_dirty_logging() {
    const ID: usize = 69;
    const G1: u64 = 1 << 18;
    let mut f = Fixture::<ID>::new(2, 40, true);
    f.try_map_at(0, G1, 1 << 20, true, Level::L1G).unwrap();
    for root in 0..2 {
        f.try_map_at(root, 0x400, 0x8_0000, true, Level::L2M)
            .unwrap();
    }
    f.map(0, 0x200, 0x3000, true);
    let _ = f
        .mmu
        .write_protect_gfn_range(Gfn::new(0), Gfn::new(1 << 20));
    HostPages::<ID>::take_dirty();
    let split = |f: &mut Fixture<ID>, start: u64, end: u64| {
        let mut tables = TableCache::<HostPages<ID>>::new();
        let flushes = &f.flushes;
        let mmu = &mut f.mmu;
        drive_split(Gfn::new(start), |at| {
            tables.topup(TABLE_CACHE_CAPACITY).unwrap();
            mmu.split_huge_gfn_range(at, Gfn::new(end), &mut tables, &|| {
                flushes.set(flushes.get() + 1)
            })
        })
    };

    // One gfn of the 2M block: that block, in both roots, each broken with a flush.
    let (leaves, flushes) = (f.mmu.leaves(), f.flushes.get());
    assert_eq!(f.mmu.leaves_by_level(), [1, 2, 1]);
    let (done, _) = split(&mut f, 0x450, 0x451);
    assert_eq!((done.split, done.limited), (2, false));
    assert_eq!(f.flushes.get() - flushes, 2);
    assert_eq!(f.mmu.leaves(), leaves + 2 * 511);
    assert_eq!(f.mmu.leaves_by_level(), [1 + 2 * 512, 0, 1]);
    assert_eq!(f.translate(0, G1 + 5, false).unwrap().level, Level::L1G);

    let (done, calls) = split(&mut f, 0, 1 << 20);
    assert_eq!(done.split, 513);
    assert!(calls > 513 / TABLE_CACHE_CAPACITY, "{calls} calls");
    assert_eq!(f.mmu.leaves_by_level(), [1 + 2 * 512 + 512 * 512, 0, 0]);
    for (gfn, pfn) in [
        (0x400, 0x8_0000),
        (0x5ff, 0x8_01ff),
        (G1, 1 << 20),
        (G1 + 0x3_1234, (1 << 20) + 0x3_1234),
    ] {
        for root in 0..2 {
            if root == 1 && gfn >= G1 {
                continue;
            }
            let t = f.translate(root, gfn, false).unwrap();
            assert_eq!((t.pfn.raw(), t.level, t.writable), (pfn, Level::L4K, false));
            assert_eq!(f.translate(root, gfn, true), Err(WalkFault::WriteProtected));
            assert!(pte::is_young(f.pte(root, gfn)));
        }
    }
    assert!(f.mmu.restore_write_protected(0, Gfn::new(G1 + 7)));
    assert!(f.translate(0, G1 + 7, true).unwrap().writable);
    let (done, calls) = split(&mut f, 0, 1 << 20);
    assert_eq!((done.split, calls), (0, 1));

    // The zap finds every piece; only the one made writable since is dirty (I4).
    let p = f.zap(0, 1 << 20);
    assert_eq!(p.zapped, 1 + 2 * 512 + 512 * 512);
    assert_eq!(f.mmu.leaves_by_level(), [0, 0, 0]);
    assert_eq!(HostPages::<ID>::take_dirty(), [(1 << 20) + 7]);

    // At the table limit the split stops for good, leaving the rest as blocks.
    f.try_map_at(0, G1, 1 << 20, true, Level::L1G).unwrap();
    let limit = f.mmu.table_pages() + 3;
    f.mmu.set_table_limit(limit);
    let (done, _) = split(&mut f, 0, 1 << 20);
    assert_eq!((done.split, done.limited), (3, true));
    assert_eq!(
        f.translate(0, G1 + 3 * 512, false).unwrap().level,
        Level::L2M
    );
    f.mmu.set_table_limit(u64::MAX);
    f.zap(0, 1 << 20);
    HostPages::<ID>::take_dirty();
    teardown(f);
}

/// The dirty bit modifier (`translate()` with `hw_dbm`): a write to a page that a fault made
/// writable and dirty logging protected sets W itself, once reporting `dirtied`; a page mapped
/// read-only, a block, or a walker without DBM still takes a permission fault.
#[test]
fn dbm_walker_sets_w_on_logged_pages() {
    const ID: usize = 71;
    let mut f = Fixture::<ID>::new(1, 40, true);
    f.map(0, 1, pfn_of(1), true);
    f.map(0, 2, pfn_of(2), false);
    f.try_map_at(0, 0x400, 0x8_0000, true, Level::L2M).unwrap();
    let _ = f
        .mmu
        .write_protect_gfn_range(Gfn::new(0), Gfn::new(1 << 20));
    HostPages::<ID>::take_dirty();
    let r = f.mmu.root(0).unwrap();
    // SAFETY: `r` is a root of `f.mmu`, alive for the calls.
    let walk = |gfn: u64, dbm: bool| unsafe {
        translate::<HostPages<ID>>(r, Gfn::new(gfn), true, true, dbm)
    };
    assert_eq!(walk(1, false), Err(WalkFault::WriteProtected), "no DBM");
    let t = walk(1, true).unwrap();
    assert!(t.writable && t.dirty && t.dirtied);
    assert!(pte::is_writable(f.pte(0, 1)));
    assert!(!walk(1, true).unwrap().dirtied, "dirty already");
    assert_eq!(
        walk(2, true),
        Err(WalkFault::WriteProtected),
        "mapped read-only"
    );
    assert_eq!(walk(0x405, true), Err(WalkFault::WriteProtected), "a block");
    assert!(!f.mmu.hw_dbm());
    assert!(f.mmu.set_hw_dbm());
    assert!(f.mmu.hw_dbm());
    let mut g = Fixture::<ID>::new(1, 40, false);
    assert!(!g.mmu.set_hw_dbm(), "DBM needs hardware AF");
    drop(g);
    // A writable page counts as dirty: the zap marks it (I4).
    let p = f.zap(0, 1 << 20);
    assert_eq!(p.zapped, 3);
    assert_eq!(HostPages::<ID>::take_dirty(), [pfn_of(1)]);
    teardown(f);
}

/// A prefetched leaf (a pre-fault or a fault-around, with hardware AF) is installed old, so aging
/// sees the page unused; the walker's first access makes it young without a fault.  A valid leaf
/// of the page keeps its age, and may only gain W.
#[test]
fn prefetch_leaves_are_old_until_accessed() {
    const ID: usize = 73;
    let f = Fixture::<ID>::new(1, 40, true);
    let prefetch = |gfn: u64, writable: bool| {
        let mut tables = f.tables.borrow_mut();
        tables.topup(MAP_MIN_TABLES).unwrap();
        f.mmu
            .map_prefetch(
                0,
                Gfn::new(gfn),
                Pfn::new(pfn_of(gfn)),
                writable,
                Level::L4K,
                &mut tables,
                &|| {},
            )
            .unwrap()
            .action
    };
    assert_eq!(prefetch(3, true), MapAction::Installed);
    let v = f.pte(0, 3);
    assert!(pte::is_valid(v) && pte::is_writable(v) && !pte::is_young(v));
    // The same again: nothing to do; nor for a young leaf, which stays young.
    assert_eq!(prefetch(3, true), MapAction::Unchanged);
    f.map(0, 4, pfn_of(4), false);
    assert_eq!(prefetch(4, false), MapAction::Unchanged);
    assert!(pte::is_young(f.pte(0, 4)));
    // A read-only old leaf gains W, not AF.
    assert_eq!(prefetch(5, false), MapAction::Installed);
    assert_eq!(prefetch(5, true), MapAction::Upgraded);
    let v = f.pte(0, 5);
    assert!(pte::is_writable(v) && !pte::is_young(v));
    // The walker sets AF on the first access: no fault.
    assert!(f.translate(0, 3, true).is_ok());
    assert!(pte::is_young(f.pte(0, 3)));
    let mut f = f;
    f.zap(0, 16);
    teardown(f);
}
