// SPDX-License-Identifier: GPL-2.0

//! Loom models of the arm64 stage-2 MMU's parallel walkers (the chapter "Stage-2 (arm64)" of
//! Documentation/secmmu-protocols.rst, whose section names are quoted below; I1-I4 are the
//! invariants of src/arm64/mmu.rs), explored exhaustively: two mappers racing to link the same
//! missing tables, a permission relax racing an ager on the same leaf, the hardware walker setting
//! AF racing an ager, and a break-before-make whose locked entry a second mapper and the hardware
//! walker run into.
//!
//! Unlike the x86 models, these run the MMU itself (`src/arm64/mmu.rs`): its table pages are
//! boxed arrays of loom atomics ([`LoomPages`]), named by their index in a registry, so that
//! every entry load, compare-exchange and store is a loom operation.  The walks are kept short
//! with a 36-bit space (three levels, one start-level table).

use loom::sync::Arc;
use loom::thread;
use std::boxed::Box;
use std::sync::Mutex;
use std::vec::Vec;

use crate::arm64::mmu::{translate, MapError, S2Mmu, WalkFault};
use crate::arm64::pte;
use crate::mmu::addr::{Gfn, Pfn};
use crate::mmu::aging::AgeOp;
use crate::mmu::level::Level;
use crate::mmu::pgtable::{MapAction, PageOps, Table, TableCache};
use crate::mmu::prim::{AllocError, AtomicU64};

/// Distinct [`LoomPages`] registries, one per model (models run in parallel test threads).
const MAX_IDS: usize = 8;

/// The live tables of each registry: `pfn - 1` indexes it; `None` once freed.
#[allow(clippy::type_complexity)]
static REGISTRY: [Mutex<Vec<Option<Box<Table>>>>; MAX_IDS] =
    [const { Mutex::new(Vec::new()) }; MAX_IDS];

/// [`PageOps`] whose tables are loom atomics, for model `ID`.  Each execution starts with
/// [`LoomPages::reset()`] and must free every table it allocated ([`LoomPages::live()`]).
struct LoomPages<const ID: usize>;

impl<const ID: usize> LoomPages<ID> {
    fn reset() {
        REGISTRY[ID].lock().unwrap().clear();
    }

    /// Tables allocated and not freed.
    fn live() -> usize {
        REGISTRY[ID]
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.is_some())
            .count()
    }
}

impl<const ID: usize> PageOps for LoomPages<ID> {
    fn alloc_table() -> Result<u64, AllocError> {
        let table: Box<Table> = Box::new(core::array::from_fn(|_| AtomicU64::new(0)));
        let mut reg = REGISTRY[ID].lock().unwrap();
        reg.push(Some(table));
        Ok(reg.len() as u64)
    }

    unsafe fn free_table(pfn: u64) {
        let table = REGISTRY[ID].lock().unwrap()[pfn as usize - 1].take();
        assert!(table.is_some(), "table {pfn} freed twice");
    }

    unsafe fn table<'a>(pfn: u64) -> &'a Table {
        let reg = REGISTRY[ID].lock().unwrap();
        let table: &Table = reg[pfn as usize - 1].as_ref().expect("freed table");
        // SAFETY: the box is not moved or freed until `free_table(pfn)`, which the caller
        // excludes for 'a; the registry's lock only guards the vector, not the tables.
        unsafe { &*core::ptr::from_ref(table) }
    }

    fn set_page_dirty(_pfn: u64) {}
}

/// A table cache holding exactly `n` tables (no top-up to capacity: fewer loom atomics).
fn cache<const ID: usize>(n: usize) -> TableCache<LoomPages<ID>> {
    let mut c = TableCache::new();
    for _ in 0..n {
        let pfn = LoomPages::<ID>::alloc_table().unwrap();
        // SAFETY: fresh and zeroed, owned by us.
        unsafe { c.put_back(pfn) };
    }
    c
}

/// Runs `f` under loom, exhaustively.  Scans of whole tables (the drop's zap and free, aging)
/// are hundreds of atomic loads, each a branch for loom even where one thread runs alone: allow
/// for them.
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

/// Bits of a space whose walk has three levels and one start-level table.
const IA_BITS: u32 = 36;

/// (a) Two mappers fault gfns of the same leaf table while neither the level-2 nor the
/// level-3 table exists: each level is linked exactly once, the loser of each race gives its
/// page back and goes on in the winner's table, both leaves are installed, and no page leaks.
#[test]
fn loom_two_mappers_link_the_same_tables() {
    const ID: usize = 0;
    model(|| {
        LoomPages::<ID>::reset();
        let mmu = Arc::new(S2Mmu::<LoomPages<ID>>::new(1, IA_BITS, true).unwrap());
        let mapper = |gfn: u64| {
            let mmu = mmu.clone();
            move || {
                let mut tables = cache::<ID>(2);
                let r = mmu.map(
                    0,
                    Gfn::new(gfn),
                    Pfn::new(0x100 + gfn),
                    true,
                    Level::L4K,
                    &mut tables,
                    &|| panic!("nothing to flush"),
                );
                // Nobody locks entries here, and each gfn has one mapper: no Again.
                let o = r.unwrap();
                assert_eq!(o.action, MapAction::Installed);
                // Whatever was not linked is back in the cache.
                assert_eq!(tables.len() + o.new_tables, 2);
                o.new_tables
            }
        };
        let other = thread::spawn(mapper(1));
        let mine = mapper(2)();
        let theirs = other.join().unwrap();

        assert_eq!(mine + theirs, 2, "each table linked once");
        assert_eq!(mmu.table_pages(), 3);
        for gfn in [1, 2] {
            let r = mmu.root(0).unwrap();
            // SAFETY: `mmu` is alive.
            let t =
                unsafe { translate::<LoomPages<ID>>(r, Gfn::new(gfn), true, true, false) }.unwrap();
            assert_eq!(t.pfn.raw(), 0x100 + gfn);
        }
        assert_eq!(mmu.eagain(), 0);
        drop(mmu);
        assert_eq!(LoomPages::<ID>::live(), 0, "a table leaked");
    });
}

/// Makes an MMU with gfn 7 mapped read-only to pfn 0x70, old if `old`.
fn one_leaf<const ID: usize>(old: bool) -> Arc<S2Mmu<LoomPages<ID>>> {
    let mmu = S2Mmu::<LoomPages<ID>>::new(1, IA_BITS, true).unwrap();
    let mut tables = cache::<ID>(2);
    mmu.map(
        0,
        Gfn::new(7),
        Pfn::new(0x70),
        false,
        Level::L4K,
        &mut tables,
        &|| (),
    )
    .unwrap();
    if old {
        mmu.age_gfn_range(Gfn::new(7), Gfn::new(8), AgeOp::Clear);
    }
    Arc::new(mmu)
}

/// The leaf of gfn 7, loaded.
fn leaf7<const ID: usize>(mmu: &S2Mmu<LoomPages<ID>>) -> u64 {
    mmu.entry(0, Gfn::new(7)).unwrap().1
}

/// (b) A permission relax (RO -> RW) racing clear_young on the same young leaf, both under the
/// read lock: the ager reports young whatever happens (a lost race counts young, "Stage-2 aging
/// under the read side", "Clearing the accessed bit"), W is never lost (the ager's compare-exchange
/// from a stale value fails, I3), the mapper either upgraded or backed off with Again, and every
/// lost race is counted in `eagain`.
#[test]
fn loom_relax_racing_clear_young() {
    const ID: usize = 1;
    model(|| {
        LoomPages::<ID>::reset();
        let mmu = one_leaf::<ID>(false);
        let ager = {
            let mmu = mmu.clone();
            thread::spawn(move || mmu.age_gfn_range(Gfn::new(0), Gfn::new(16), AgeOp::Clear))
        };
        let mut tables = cache::<ID>(2);
        let r = mmu.map(
            0,
            Gfn::new(7),
            Pfn::new(0x70),
            true,
            Level::L4K,
            &mut tables,
            &|| panic!("a relax never flushes"),
        );
        let aged = ager.join().unwrap();

        assert!(aged.young, "the leaf was young");
        assert_eq!(aged.cleared + aged.lost_races, 1);
        let v = leaf7(&mmu);
        assert!(pte::is_valid(v) && pte::pfn(v) == 0x70);
        match r {
            Ok(o) => {
                assert_eq!(o.action, MapAction::Upgraded);
                assert!(pte::is_writable(v), "W lost");
            }
            Err(e) => {
                assert_eq!(e, MapError::Again);
                assert!(!pte::is_writable(v));
            }
        }
        // If the ager lost, the mapper's relax (which sets AF) came in between.
        if aged.lost_races == 1 {
            assert!(r.is_ok() && pte::is_young(v));
        }
        let again = u64::from(r.is_err());
        assert_eq!(mmu.eagain(), again + aged.lost_races);
        drop(tables);
        drop(mmu);
        assert_eq!(LoomPages::<ID>::live(), 0);
    });
}

/// (b') The hardware walker setting AF on an old leaf racing clear_young and test_young: the
/// translation always succeeds, test never changes the leaf, and a clear that raced is young.
#[test]
fn loom_hardware_af_racing_aging() {
    const ID: usize = 2;
    model(|| {
        LoomPages::<ID>::reset();
        let mmu = one_leaf::<ID>(true);
        let ager = {
            let mmu = mmu.clone();
            thread::spawn(move || {
                let t = mmu.age_gfn_range(Gfn::new(0), Gfn::new(16), AgeOp::Test);
                let c = mmu.age_gfn_range(Gfn::new(0), Gfn::new(16), AgeOp::Clear);
                (t, c)
            })
        };
        let r = mmu.root(0).unwrap();
        // SAFETY: `mmu` is alive.
        let t = unsafe { translate::<LoomPages<ID>>(r, Gfn::new(7), false, true, false) };
        let (tested, cleared) = ager.join().unwrap();

        assert_eq!(t.map(|t| t.pfn.raw()), Ok(0x70));
        assert_eq!(tested.cleared, 0);
        // The clear either saw the leaf old (the walker came after), or young: then it cleared
        // it or lost to nobody (only the walker writes, and only once).
        assert_eq!(cleared.lost_races, 0);
        let v = leaf7(&mmu);
        assert_eq!(
            pte::is_young(v),
            !cleared.young,
            "AF set after the clear, or cleared"
        );
        assert!(pte::is_valid(v) && !pte::is_writable(v));
        drop(mmu);
        assert_eq!(LoomPages::<ID>::live(), 0);
    });
}

/// (c) A break-before-make replacing the stale leaf of gfn 7 while a second mapper faults the
/// same gfn: whoever holds the lock keeps it through its flush (the other backs off with Again
/// or waits for the make, never takes it over, "Locked entries"), each replace flushes exactly
/// once, and the hardware walker sees the old page, the new one, or a fault, never anything else.
#[test]
fn loom_locked_entry_is_never_taken_over() {
    const ID: usize = 3;
    model(|| {
        LoomPages::<ID>::reset();
        let mmu = one_leaf::<ID>(false);
        let replace = |pfn: u64| {
            let mmu = mmu.clone();
            move || {
                let mut tables = cache::<ID>(2);
                let flushes = std::cell::Cell::new(0);
                let flush = || {
                    // During the flush the entry is ours: still locked.
                    let v = mmu.entry(0, Gfn::new(7)).unwrap().1;
                    assert!(pte::is_locked(v), "lock taken over: {v:#x}");
                    flushes.set(flushes.get() + 1);
                };
                let r = mmu.map(
                    0,
                    Gfn::new(7),
                    Pfn::new(pfn),
                    false,
                    Level::L4K,
                    &mut tables,
                    &flush,
                );
                match r {
                    Ok(o) => {
                        assert_eq!(flushes.get(), u64::from(o.action == MapAction::Replaced));
                        Some(o.action)
                    }
                    Err(e) => {
                        assert_eq!(e, MapError::Again);
                        assert_eq!(flushes.get(), 0);
                        None
                    }
                }
            }
        };
        let other = thread::spawn(replace(0x80));
        let walker = {
            let mmu = mmu.clone();
            thread::spawn(move || {
                let r = mmu.root(0).unwrap();
                // SAFETY: `mmu` is alive.
                unsafe { translate::<LoomPages<ID>>(r, Gfn::new(7), false, true, false) }
            })
        };
        let mine = replace(0x90)();
        let theirs = other.join().unwrap();
        let seen = walker.join().unwrap();

        match seen {
            Ok(t) => assert!([0x70, 0x80, 0x90].contains(&t.pfn.raw()), "{t:?}"),
            Err(f) => assert_eq!(f, WalkFault::NotPresent),
        }
        let v = leaf7(&mmu);
        assert!(pte::is_valid(v), "left locked or empty: {v:#x}");
        // The last successful replace wins; a backed-off mapper changed nothing.
        let winners: Vec<u64> = [(mine, 0x90), (theirs, 0x80)]
            .into_iter()
            .filter(|(a, _)| *a == Some(MapAction::Replaced))
            .map(|(_, p)| p)
            .collect();
        assert!(!winners.is_empty(), "nobody replaced the stale leaf");
        assert!(winners.contains(&pte::pfn(v)));
        let backed_off = u64::from(mine.is_none()) + u64::from(theirs.is_none());
        assert_eq!(mmu.eagain(), backed_off);
        assert_eq!(mmu.stats().zapped, winners.len() as u64);
        drop(mmu);
        assert_eq!(LoomPages::<ID>::live(), 0);
    });
}
