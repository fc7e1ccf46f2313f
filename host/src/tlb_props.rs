// SPDX-License-Identifier: GPL-2.0

//! Property tests of the software TLB (`src/mmu/tlb.rs`): random sequences of translations, lookups,
//! fills at 4K, 2M and 1G, and changes of the page tables it caches, each change that takes a
//! translation away followed by a flush as the zap path must do ("vCPUs and their TLBs" in
//! `Documentation/secmmu.rst`).  The page tables are a model, which the walk closure
//! reads as the format's lockless walker would.  Checked: a hit always equals what a walk would
//! return now, and no translation cached before a flush is ever returned after it.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use crate::mmu::addr::{Gfn, Pfn};
use crate::mmu::level::Level;
use crate::mmu::pgtable::{Translation, WalkFault};
use crate::mmu::tlb::{SoftTlb, TlbHit};
use crate::test_util::prop_config;

/// A gfn from a small set, so that translations share TLB sets and leaves overlap: one of six
/// 1G regions (four 1G entries), 2M blocks 0, 1, 32 and 33 of it (32 2M entries), pages 0, 1,
/// 64 and 65 of those (64 4K entries).
fn gfn() -> impl Strategy<Value = u64> {
    (
        0..6u64,
        prop::sample::select(vec![0u64, 1, 32, 33]),
        prop::sample::select(vec![0u64, 1, 64, 65]),
    )
        .prop_map(|(g, m, p)| (g << 18) + (m << 9) + p)
}

fn level() -> impl Strategy<Value = Level> {
    prop::sample::select(Level::MAPPABLE.to_vec())
}

#[derive(Clone, Debug)]
enum Op {
    /// Maps the `level` block of `gfn` to page version `version`: zaps (and then flushes) the
    /// leaves it overlaps first, unless there are none.
    Map {
        gfn: u64,
        level: Level,
        version: u64,
        writable: bool,
    },
    /// Zaps the leaf of `gfn`, if any, then flushes.
    Zap { gfn: u64 },
    /// Makes the leaf of `gfn` writable: permissions only grow, so no flush.
    Upgrade { gfn: u64 },
    /// Flushes for no reason.
    Flush,
    /// `SoftTlb::translate()` with the model's walk.
    Translate { gfn: u64, write: bool },
    /// `SoftTlb::lookup()` alone.
    Lookup { gfn: u64, write: bool },
    /// A walk of `gfn` then `SoftTlb::fill()` with its translation, as a vCPU that walked by
    /// itself would.
    Fill { gfn: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (gfn(), level(), 0..3u64, any::<bool>()).prop_map(|(gfn, level, version, writable)| {
            Op::Map { gfn, level, version, writable }
        }),
        1 => gfn().prop_map(|gfn| Op::Zap { gfn }),
        1 => gfn().prop_map(|gfn| Op::Upgrade { gfn }),
        1 => Just(Op::Flush),
        6 => (gfn(), any::<bool>()).prop_map(|(gfn, write)| Op::Translate { gfn, write }),
        3 => (gfn(), any::<bool>()).prop_map(|(gfn, write)| Op::Lookup { gfn, write }),
        2 => gfn().prop_map(|gfn| Op::Fill { gfn }),
    ]
}

/// A leaf of the model's page tables.
#[derive(Clone, Copy, Debug)]
struct Leaf {
    pfn: u64,
    writable: bool,
    dirty: bool,
}

/// The page tables: leaves by (level, first gfn), never overlapping.
#[derive(Default)]
struct Tables(BTreeMap<(Level, u64), Leaf>);

impl Tables {
    fn key(&self, gfn: u64) -> Option<(Level, u64)> {
        Level::MAPPABLE
            .into_iter()
            .map(|l| (l, l.align_down(gfn)))
            .find(|k| self.0.contains_key(k))
    }

    /// The walk: the translation of `gfn`, setting D on a write as the x86 walker does.
    fn walk(&mut self, gfn: u64, write: bool) -> Result<Translation, WalkFault> {
        let key = self.key(gfn).ok_or(WalkFault::NotPresent)?;
        let leaf = self.0.get_mut(&key).unwrap();
        if write && !leaf.writable {
            return Err(WalkFault::WriteProtected);
        }
        leaf.dirty |= write;
        Ok(Translation {
            pfn: Pfn::new(leaf.pfn + (gfn - key.1)),
            level: key.0,
            writable: leaf.writable,
            dirty: leaf.writable && leaf.dirty,
            dirtied: false,
        })
    }

    /// Removes every leaf overlapping the `level` block of `gfn`; returns whether there was one.
    fn zap_block(&mut self, level: Level, gfn: u64) -> bool {
        let (start, end) = (level.align_down(gfn), level.align_down(gfn) + level.pages());
        let before = self.0.len();
        self.0
            .retain(|&(l, g), _| g + l.pages() <= start || g >= end);
        self.0.len() != before
    }
}

/// The host address of page `pfn`, as the TLB's `address` callback gives it.
fn address(pfn: Pfn) -> usize {
    0x4000_0000_0000 + ((pfn.raw() as usize) << 12)
}

/// The translations the TLB may hold: the blocks filled since the last flush.
#[derive(Default)]
struct Filled(Vec<(Level, u64)>);

impl Filled {
    fn covers(&self, gfn: u64) -> bool {
        self.0.iter().any(|&(l, g)| l.align_down(gfn) == g)
    }
}

/// Checks a hit for `gfn` against the tables now: what a walk would return, and something
/// filled since the last flush.
fn check_hit(tables: &Tables, filled: &Filled, gfn: u64, write: bool, hit: TlbHit) {
    assert!(
        filled.covers(gfn),
        "gfn {gfn:#x}: a translation from before a flush"
    );
    let key = tables.key(gfn).expect("a hit for an unmapped gfn");
    let leaf = tables.0[&key];
    assert_eq!(hit.pfn, Pfn::new(leaf.pfn + (gfn - key.1)), "gfn {gfn:#x}");
    assert_eq!(hit.addr, address(hit.pfn), "gfn {gfn:#x}");
    if write {
        assert!(
            leaf.writable && leaf.dirty,
            "gfn {gfn:#x}: write hit of a clean or read-only leaf"
        );
    }
}

fn run(ops: &[Op]) {
    let mut tlb = SoftTlb::new();
    let mut tables = Tables::default();
    let mut filled = Filled::default();
    let (mut lookups, mut flushes) = (0, 0);
    let flush = |tlb: &mut SoftTlb, filled: &mut Filled, flushes: &mut u64| {
        tlb.flush();
        filled.0.clear();
        *flushes += 1;
    };
    for op in ops {
        match *op {
            Op::Map {
                gfn,
                level,
                version,
                writable,
            } => {
                if tables.zap_block(level, gfn) {
                    flush(&mut tlb, &mut filled, &mut flushes);
                }
                let first = level.align_down(gfn);
                let leaf = Leaf {
                    pfn: ((version + 1) << 30) + first,
                    writable,
                    dirty: writable,
                };
                tables.0.insert((level, first), leaf);
            }
            Op::Zap { gfn } => {
                if let Some(key) = tables.key(gfn) {
                    tables.0.remove(&key);
                    flush(&mut tlb, &mut filled, &mut flushes);
                }
            }
            Op::Upgrade { gfn } => {
                if let Some(key) = tables.key(gfn) {
                    tables.0.get_mut(&key).unwrap().writable = true;
                }
            }
            Op::Flush => flush(&mut tlb, &mut filled, &mut flushes),
            Op::Translate { gfn, write } => {
                lookups += 1;
                let mut walked = None;
                let r = tlb.translate(
                    Gfn::new(gfn),
                    write,
                    || {
                        let t = tables.walk(gfn, write);
                        walked = Some(t);
                        t
                    },
                    address,
                );
                match walked {
                    None => check_hit(&tables, &filled, gfn, write, r.unwrap()),
                    Some(t) => {
                        assert_eq!(
                            r,
                            t.map(|t| TlbHit {
                                pfn: t.pfn,
                                addr: address(t.pfn)
                            })
                        );
                        if let Ok(t) = t {
                            filled.0.push((t.level, t.level.align_down(gfn)));
                            // Just filled: a read hits, with what the walk returned.
                            lookups += 1;
                            let hit = tlb
                                .lookup(Gfn::new(gfn), false)
                                .expect("no hit after a fill");
                            assert_eq!(hit.pfn, t.pfn);
                        }
                    }
                }
            }
            Op::Lookup { gfn, write } => {
                lookups += 1;
                if let Some(hit) = tlb.lookup(Gfn::new(gfn), write) {
                    check_hit(&tables, &filled, gfn, write, hit);
                }
            }
            Op::Fill { gfn } => {
                if let Ok(t) = tables.walk(gfn, false) {
                    tlb.fill(Gfn::new(gfn), &t, address(t.pfn));
                    filled.0.push((t.level, t.level.align_down(gfn)));
                }
            }
        }
        assert_eq!(tlb.hits() + tlb.misses(), lookups);
        assert_eq!(tlb.flushes(), flushes);
    }
    // A flush empties the TLB: every lookup misses until the next fill.
    flush(&mut tlb, &mut filled, &mut flushes);
    for op in ops {
        if let Op::Translate { gfn, write } | Op::Lookup { gfn, write } = *op {
            assert_eq!(
                tlb.lookup(Gfn::new(gfn), write),
                None,
                "gfn {gfn:#x} after a flush"
            );
        }
    }
}

proptest! {
    #![proptest_config(prop_config(256))]

    /// A hit equals the walk, and nothing cached survives a flush.
    #[test]
    fn tlb_hits_equal_the_walk_and_never_survive_a_flush(
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run(&ops);
    }
}
