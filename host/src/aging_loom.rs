// SPDX-License-Identifier: GPL-2.0

//! Loom models of lockless aging against the MMU's writers ("Rmap locking", "Lockless rmap walks"
//! and "Aging without the MMU lock" in Documentation/secmmu-protocols.rst, whose section names are
//! quoted below; I1-I4 are the invariants of src/x86/mmu.rs), explored exhaustively.  The rmap lock
//! races themselves (0->1 under a read-only walker, an rmap emptied while a walker spins, a
//! read-only unlock of an empty rmap while a writer adds) are modelled in `src/x86/rmap.rs`.
//!
//! The SPTEs live in plain atomics here, not in table pages: loom's atomics cannot live in raw
//! page memory, and aging reaches SPTEs only through rmap pointers anyway.

use loom::model;
use loom::sync::Arc;
use loom::thread;
use std::ptr::NonNull;

use crate::mmu::aging::{AgeOp, AgeResult};
use crate::mmu::level::Level;
use crate::mmu::pgtable::{MmuStats, PageOps, Table};
use crate::mmu::prim::{AllocError, AtomicU64, NoPreempt, Ordering};
use crate::x86::mmu::{age_leaf, age_rmap, zap_rmap, LeafAge, Lockless};
use crate::x86::rmap::{DescCache, MmuWriteLocked, RmapHead};
use crate::x86::spte;

/// [`PageOps`] for models that zap SPTEs but never walk tables.
struct NoPages;

impl PageOps for NoPages {
    fn alloc_table() -> Result<u64, AllocError> {
        Err(AllocError)
    }

    unsafe fn free_table(_pfn: u64) {
        unreachable!("the models have no tables");
    }

    unsafe fn table<'a>(_pfn: u64) -> &'a Table {
        unreachable!("the models have no tables");
    }

    fn set_page_dirty(_pfn: u64) {}
}

/// An accessed, A/D-enabled 4K leaf of `pfn`; writable and dirty if `dirty`, else writable and
/// clean, so that zapping it takes the atomic exchange (a walker may set D).
fn leaf(pfn: u64, dirty: bool) -> u64 {
    let v = spte::make_leaf(pfn, Level::L4K, true, true);
    if dirty {
        v
    } else {
        v & !spte::DIRTY
    }
}

/// An rmap holding two SPTEs, one dirty and one clean.
struct World {
    head: RmapHead,
    sptes: [AtomicU64; 2],
}

impl World {
    fn new() -> Arc<World> {
        let world = Arc::new(World {
            head: RmapHead::new(),
            sptes: [
                AtomicU64::new(leaf(1, true)),
                AtomicU64::new(leaf(2, false)),
            ],
        });
        let mut cache = DescCache::new(1);
        cache.topup(1).unwrap();
        // SAFETY: no other thread runs yet.
        let mut mmu = unsafe { MmuWriteLocked::assume() };
        let mut guard = world.head.lock(&mut mmu);
        for s in &world.sptes {
            // SAFETY: the SPTEs live in the world, which outlives the rmap entries: each model
            // zaps the rmap before it ends.
            unsafe { guard.add(NonNull::from(s), &mut cache) };
        }
        drop(guard);
        world
    }

    /// Ages the rmap without the MMU lock, as a notifier callback would.
    fn age(&self, op: AgeOp) -> AgeResult {
        let no_preempt = NoPreempt::new();
        let mut result = AgeResult::new(op);
        age_rmap(&mut Lockless(&no_preempt), &self.head, op, &mut result);
        result
    }
}

/// (d) A lockless clear_young racing a zap of the whole rmap (`kvm_zap_rmap()`): the zapped
/// SPTEs stay zapped whatever the interleaving (the clear is a compare-exchange from a present
/// value, I3), the dirty page is reported exactly once (the clear never undoes D, "Clearing the
/// accessed bit"), and the ager sees all of the chain or none of it.
#[test]
fn loom_clear_young_racing_zap_rmap() {
    model(|| {
        let world = World::new();
        let ager = {
            let world = world.clone();
            thread::spawn(move || world.age(AgeOp::Clear))
        };
        // SAFETY: the only writer.
        let mut mmu = unsafe { MmuWriteLocked::assume() };
        let mut stats = MmuStats::default();
        let (zapped, dirty) = zap_rmap::<NoPages>(&world.head, Level::L4K, &mut mmu, &mut stats);
        let r = ager.join().unwrap();

        assert_eq!((zapped, dirty), (2, 1));
        for s in &world.sptes {
            assert_eq!(s.load(Ordering::Relaxed), 0, "zapped SPTE made present");
        }
        assert!(world.head.is_empty());
        let seen = r.cleared + r.lost_races + r.not_present;
        assert!(seen == 0 || seen == 2, "partial chain: {r:?}");
        assert_eq!(r.young, r.cleared + r.lost_races > 0);
    });
}

/// (d) A lockless clear_young racing the zap of one leaf the way `drop_leaf()` does it: the
/// SPTE is cleared before the rmap's bit lock is taken to remove it, so the ager may find it
/// non-present in the chain ("Lockless rmap walks"); it must leave it so.
///
/// The leaf zapped is the clean writable one, which `spte::zap()` clears with an atomic
/// exchange.  Not the dirty one, cleared with a plain store: loom 0.7 builds impossible histories
/// when a relaxed store races a read-modify-write on the same atomic (tokio-rs/loom#254, #389: a
/// later load may read the RMW's value although the RMW came first in modification order), and
/// reports a resurrection that the C11 memory model forbids (the compare-exchange from the present
/// value either comes before the store in modification order, which then overwrites it, or reads
/// the 0 and fails).  In [`loom_clear_young_racing_zap_rmap`] the store cannot race the ager: both
/// hold the rmap's bit lock while they touch the SPTEs.
#[test]
fn loom_clear_young_racing_drop_leaf() {
    model(|| {
        let world = World::new();
        let ager = {
            let world = world.clone();
            thread::spawn(move || world.age(AgeOp::Clear))
        };
        let old = spte::zap(&world.sptes[1]);
        assert!(spte::is_present(old) && !spte::is_dirty(old));
        {
            // SAFETY: the only writer.
            let mut mmu = unsafe { MmuWriteLocked::assume() };
            let mut cache = DescCache::new(1);
            let mut guard = world.head.lock(&mut mmu);
            assert!(guard.remove(NonNull::from(&world.sptes[1]), &mut cache));
        }
        let r = ager.join().unwrap();

        assert_eq!(
            world.sptes[1].load(Ordering::Relaxed),
            0,
            "zapped SPTE made present"
        );
        let other = world.sptes[0].load(Ordering::Relaxed);
        assert_eq!(other | spte::ACCESSED, leaf(1, true), "only A may change");
        assert!(r.cleared <= 2 && r.not_present <= 1, "{r:?}");

        // SAFETY: the ager is done.
        let mut mmu = unsafe { MmuWriteLocked::assume() };
        let mut stats = MmuStats::default();
        assert_eq!(
            zap_rmap::<NoPages>(&world.head, Level::L4K, &mut mmu, &mut stats),
            (1, 1)
        );
    });
}

/// (e) test_young racing clear_young on the same SPTE while a walker (the hardware) sets A and
/// D: test never changes the SPTE, clear only ever clears A, D is never lost, and a clear that
/// lost its race counts young.
#[test]
fn loom_test_young_racing_clear_young_and_walker() {
    model(|| {
        let start = leaf(3, false);
        let sptep = Arc::new(AtomicU64::new(start));
        let tester = {
            let sptep = sptep.clone();
            thread::spawn(move || age_leaf(&sptep, AgeOp::Test, false))
        };
        let walker = {
            let sptep = sptep.clone();
            thread::spawn(move || {
                // A write through the leaf: set A and D with a compare-exchange loop, like
                // `translate()`.
                let mut cur = sptep.load(Ordering::Relaxed);
                loop {
                    let new = cur | spte::ACCESSED | spte::DIRTY;
                    match sptep.compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                        Ok(_) => break,
                        Err(v) => cur = v,
                    }
                }
            })
        };
        let cleared = age_leaf(&sptep, AgeOp::Clear, false);
        let tested = tester.join().unwrap();
        walker.join().unwrap();

        // The leaf was accessed when made: the clear clears it or loses to the walker.
        assert!(
            matches!(cleared, LeafAge::Cleared { .. } | LeafAge::LostRace),
            "{cleared:?}"
        );
        assert!(
            matches!(tested, LeafAge::Young | LeafAge::Old),
            "{tested:?}"
        );
        let end = sptep.load(Ordering::Relaxed);
        assert_ne!(end & spte::DIRTY, 0, "the walker's D was lost");
        assert_eq!(
            end & !(spte::ACCESSED | spte::DIRTY),
            start & !spte::ACCESSED
        );
        // Test changes nothing: whatever it saw, a second test with nobody else running
        // answers from the same final value.
        let again = age_leaf(&sptep, AgeOp::Test, false);
        let again_twice = age_leaf(&sptep, AgeOp::Test, false);
        assert_eq!(again, again_twice);
        assert_eq!(sptep.load(Ordering::Relaxed), end);
    });
}
