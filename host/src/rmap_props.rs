// SPDX-License-Identifier: GPL-2.0

//! Property tests of the rmaps (`src/x86/rmap.rs`): random sequences of adds, removes, drains,
//! write locks holding several changes, and read-only walks, over a few heads and a pool of
//! SPTE slots, checked after every step against a model that is a multiset of SPTE pointers per
//! head.  The sequences grow chains across several descriptors ([`PTE_LIST_EXT`] SPTEs each) and
//! shrink them back, in any order.

use std::collections::BTreeMap;
use std::ptr::{self, NonNull};
use std::vec::Vec;

use proptest::prelude::*;

use crate::mmu::prim::{AtomicU64, NoPreempt, Ordering};
use crate::test_util::prop_config;
use crate::x86::rmap::{DescCache, MmuWriteLocked, RmapHead, PTE_LIST_EXT};

/// rmap heads of a case.
const HEADS: usize = 3;
/// SPTE slots of a case: enough for chains of three descriptors and more.
const SLOTS: usize = 48;
/// The descriptor cache's capacity: more than the descriptors a case can have in chains
/// ([`MAX_OPS`] adds at most), so that it never frees one, and the descriptors in chains are
/// exactly those allocated and not in the cache.
const CACHE: usize = 64;
/// Longest operation sequence.
const MAX_OPS: usize = 300;

/// One step of a case.
#[derive(Clone, Debug)]
enum Op {
    /// Adds slot `slot` to head `head` (again, if it holds it already: the rmap is a multiset).
    Add { head: usize, slot: usize },
    /// Removes slot `slot` from head `head`, once; nothing if the head does not hold it.
    Remove { head: usize, slot: usize },
    /// Several adds (true) and removes (false) under one write lock.
    Batch {
        head: usize,
        ops: Vec<(bool, usize)>,
    },
    /// Empties head `head`.
    Drain { head: usize },
    /// Walks head `head` under a read-only lock, with another head read-locked too.
    Walk { head: usize, other: usize },
    /// Zaps slot `slot` (stores 0 to it) behind the rmaps' back, as a racing zap would before
    /// removing it: read-only walks still list it (they must expect non-present SPTEs).
    Clear { slot: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let head = 0..HEADS;
    let slot = 0..SLOTS;
    prop_oneof![
        // Adds outweigh removes, so that chains grow long before they shrink.
        8 => (head.clone(), slot.clone()).prop_map(|(head, slot)| Op::Add { head, slot }),
        5 => (head.clone(), slot.clone()).prop_map(|(head, slot)| Op::Remove { head, slot }),
        2 => (
            head.clone(),
            prop::collection::vec((any::<bool>(), slot.clone()), 1..2 * PTE_LIST_EXT),
        )
            .prop_map(|(head, ops)| Op::Batch { head, ops }),
        1 => head.clone().prop_map(|head| Op::Drain { head }),
        2 => (head.clone(), head).prop_map(|(head, other)| Op::Walk { head, other }),
        1 => slot.prop_map(|slot| Op::Clear { slot }),
    ]
}

/// The model of one head: how many times it holds each slot, and whether it points at a
/// descriptor chain rather than at its only SPTE.
#[derive(Default)]
struct Head {
    sptes: BTreeMap<usize, usize>,
    /// A second SPTE made the head a chain; like KVM's `pte_list_desc_remove_entry()`, removals
    /// keep it one (with a single SPTE left in its head descriptor) until it empties.
    many: bool,
}

impl Head {
    fn len(&self) -> usize {
        self.sptes.values().sum()
    }

    fn is_empty(&self) -> bool {
        self.sptes.is_empty()
    }

    /// Adds `slot`; returns how many SPTEs the head held before.
    fn add(&mut self, slot: usize) -> usize {
        let before = self.len();
        self.many |= before > 0;
        *self.sptes.entry(slot).or_insert(0) += 1;
        before
    }

    /// Removes one `slot`; returns whether there was one.
    fn remove(&mut self, slot: usize) -> bool {
        let found = match self.sptes.get_mut(&slot) {
            None => false,
            Some(1) => {
                self.sptes.remove(&slot);
                true
            }
            Some(n) => {
                *n -= 1;
                true
            }
        };
        self.many &= !self.is_empty();
        found
    }

    /// Empties the head; returns what it held.
    fn drain(&mut self) -> BTreeMap<usize, usize> {
        self.many = false;
        std::mem::take(&mut self.sptes)
    }

    /// Descriptors the chain has: a head descriptor holding 1 to [`PTE_LIST_EXT`] SPTEs and
    /// full ones behind it, or none if the head points at its only SPTE.
    fn descs(&self) -> usize {
        if self.many {
            self.len().div_ceil(PTE_LIST_EXT)
        } else {
            0
        }
    }
}

/// The model: the heads.
type Model = [Head; HEADS];

/// The SPTE slots of a case, and the index of each from its address.
struct Slots(Vec<AtomicU64>);

impl Slots {
    fn new() -> Self {
        // Nonzero values: 0 stands for a zapped SPTE.
        Slots((0..SLOTS).map(|i| AtomicU64::new(i as u64 + 1)).collect())
    }

    fn ptr(&self, i: usize) -> NonNull<AtomicU64> {
        NonNull::from(&self.0[i])
    }

    fn index(&self, sptep: &AtomicU64) -> usize {
        let found = self.0.iter().position(|s| ptr::eq(s, sptep));
        found.expect("an rmap holds a pointer outside the slots")
    }

    /// The multiset of slots an iteration yields.
    fn count<'a>(&self, sptes: impl Iterator<Item = &'a AtomicU64>) -> BTreeMap<usize, usize> {
        let mut m = BTreeMap::new();
        for s in sptes {
            *m.entry(self.index(s)).or_insert(0) += 1;
        }
        m
    }
}

fn mmu() -> MmuWriteLocked<'static> {
    // SAFETY: a case runs on one thread, which is the rmaps' only writer.
    unsafe { MmuWriteLocked::assume() }
}

/// A descriptor cache that counts the descriptors it was given by top-ups.
struct Cache {
    cache: DescCache,
    allocated: usize,
}

impl Cache {
    fn topup(&mut self, min: usize) {
        let before = self.cache.len();
        self.cache.topup(min).unwrap();
        self.allocated += self.cache.len() - before;
        assert!(self.allocated <= CACHE, "the cache would free descriptors");
    }

    /// Descriptors out of the cache, i.e. in chains.
    fn in_chains(&self) -> usize {
        self.allocated - self.cache.len()
    }
}

/// Checks every head against the model, under the write lock and a read-only lock, and the
/// descriptors in chains against the chain lengths.
fn check(heads: &[RmapHead], slots: &Slots, model: &Model, cache: &Cache) {
    let mut descs = 0;
    for (h, head) in heads.iter().enumerate() {
        let want = &model[h].sptes;
        let n = model[h].len();
        assert_eq!(head.is_empty(), n == 0, "head {h}");
        {
            let mut mmu = mmu();
            let guard = head.lock(&mut mmu);
            assert_eq!(guard.len(), n, "head {h}");
            assert_eq!(guard.is_empty(), n == 0, "head {h}");
            assert_eq!(&slots.count(guard.sptes()), want, "head {h}");
        }
        {
            let no_preempt = NoPreempt::new();
            let guard = head.lock_readonly(&no_preempt);
            assert_eq!((guard.len(), guard.is_empty()), (n, n == 0), "head {h}");
            assert!(!guard.contended());
            assert_eq!(&slots.count(guard.sptes()), want, "head {h}");
        }
        assert!(model[h].many || n <= 1);
        descs += model[h].descs();
    }
    assert_eq!(cache.in_chains(), descs, "descriptors in chains");
}

fn run(ops: &[Op]) {
    let slots = Slots::new();
    let heads: Vec<RmapHead> = (0..HEADS).map(|_| RmapHead::new()).collect();
    let mut model: Model = Default::default();
    let mut cache = Cache {
        cache: DescCache::new(CACHE),
        allocated: 0,
    };
    for op in ops {
        match *op {
            Op::Add { head, slot } => {
                cache.topup(1);
                let mut mmu = mmu();
                let mut guard = heads[head].lock(&mut mmu);
                // SAFETY: the slots outlive the heads, which are drained before the end.
                let before = unsafe { guard.add(slots.ptr(slot), &mut cache.cache) };
                assert_eq!(before, model[head].add(slot));
            }
            Op::Remove { head, slot } => {
                let mut mmu = mmu();
                let mut guard = heads[head].lock(&mut mmu);
                let found = guard.remove(slots.ptr(slot), &mut cache.cache);
                assert_eq!(found, model[head].remove(slot));
            }
            Op::Batch { head, ref ops } => {
                cache.topup(ops.len());
                let was_empty = model[head].is_empty();
                let mut mmu = mmu();
                let mut guard = heads[head].lock(&mut mmu);
                for &(add, slot) in ops {
                    if add {
                        // SAFETY: as for `Op::Add`.
                        let before = unsafe { guard.add(slots.ptr(slot), &mut cache.cache) };
                        assert_eq!(before, model[head].add(slot));
                    } else {
                        let found = guard.remove(slots.ptr(slot), &mut cache.cache);
                        assert_eq!(found, model[head].remove(slot));
                    }
                    assert_eq!(guard.len(), model[head].len());
                    assert_eq!(slots.count(guard.sptes()), model[head].sptes);
                    // Nothing is published before the guard goes: an rmap that was empty
                    // stays 0 (its lock was elided), any other stays locked.
                    assert_eq!(heads[head].is_empty(), was_empty);
                }
            }
            Op::Drain { head } => {
                let mut drained = BTreeMap::new();
                let mut mmu = mmu();
                let n = heads[head].lock(&mut mmu).drain(&mut cache.cache, |s| {
                    *drained.entry(slots.index(s)).or_insert(0) += 1;
                });
                assert_eq!(n, model[head].len());
                assert_eq!(drained, model[head].drain());
            }
            Op::Walk { head, other } => {
                let no_preempt = NoPreempt::new();
                let guard = heads[head].lock_readonly(&no_preempt);
                // Read-only locks of two rmaps, or twice the same empty one, nest; a second
                // read-only lock of a non-empty rmap would spin on its own bit.
                let second = (other != head || model[head].is_empty())
                    .then(|| heads[other].lock_readonly(&no_preempt));
                assert_eq!(slots.count(guard.sptes()), model[head].sptes);
                if let Some(g) = &second {
                    assert_eq!(slots.count(g.sptes()), model[other].sptes);
                }
                // A locked, non-empty rmap does not look empty to writers' quick checks.
                assert_eq!(heads[head].is_empty(), model[head].is_empty());
            }
            Op::Clear { slot } => {
                slots.0[slot].store(0, Ordering::Relaxed);
                let no_preempt = NoPreempt::new();
                for (h, head) in heads.iter().enumerate() {
                    let guard = head.lock_readonly(&no_preempt);
                    let zapped = guard.sptes().filter(|s| s.load(Ordering::Relaxed) == 0);
                    assert_eq!(
                        zapped.count(),
                        model[h].sptes.get(&slot).copied().unwrap_or(0)
                    );
                }
                slots.0[slot].store(slot as u64 + 1, Ordering::Relaxed);
            }
        }
        check(&heads, &slots, &model, &cache);
    }
    for head in &heads {
        head.lock(&mut mmu()).drain(&mut cache.cache, |_| {});
    }
    assert_eq!(cache.in_chains(), 0);
}

proptest! {
    #![proptest_config(prop_config(128))]

    /// Every operation does to the rmap what it does to the multiset, and every chain holds
    /// exactly the descriptors its length needs.
    #[test]
    fn rmap_ops_match_a_multiset_per_head(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        run(&ops);
    }
}
