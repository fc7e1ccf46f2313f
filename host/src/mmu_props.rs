// SPDX-License-Identifier: GPL-2.0

//! Property tests of the two MMUs with host table pages: random maps at 4K, 2M and 1G (which
//! split and collapse when the level of a block changes), translations, zaps of gfn ranges
//! (driven to completion, also with a hook that yields at every chance), aging and the
//! fault paths' fast restores, over several roots, checked after every step against a model
//! of the leaves of each root.
//!
//! - x86 (`src/x86/mmu.rs`), with and without A/D bits, over two slots, one of them unaligned
//!   so that huge maps at its edges fail; aging locked and lockless.
//! - arm64 stage-2 (`src/arm64/mmu.rs`), at every geometry (`ia_bits` 32 to 48), with and
//!   without hardware AF.
//!
//! Each test has its own `HostPages<ID>`; a case checks its table pages against the counts
//! before it, so that a failed case does not spoil the next one while proptest shrinks.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use crate::host_pages::HostPages;
use crate::mmu::addr::{Gfn, Hva, Pfn};
use crate::mmu::aging::{AgeOp, AgeResult};
use crate::mmu::level::Level;
use crate::mmu::memslot::Slot;
use crate::mmu::pgtable::{snapshot_byte, MapAction, TableCache, Translation, WalkFault};
use crate::test_util::{prop_config, run_zap};

/// A leaf of the model: the block of gfns from its key's gfn, at its key's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leaf {
    /// The first page of the block.
    pfn: u64,
    /// Writable when not access-tracked (x86 without A/D saves W while tracked).
    writable: bool,
    /// A (x86) or AF (stage-2).
    accessed: bool,
    /// D, for x86 with A/D.
    d: bool,
    /// Access-tracked: x86 without A/D, aged under the lock.
    tracked: bool,
}

impl Leaf {
    /// A leaf as a map makes it: accessed, and dirty if writable.
    fn new(pfn: u64, writable: bool) -> Self {
        Leaf {
            pfn,
            writable,
            accessed: true,
            d: writable,
            tracked: false,
        }
    }

    /// W as the entry has it now.
    fn w(&self) -> bool {
        self.writable && !self.tracked
    }
}

/// The leaves of one root, by (level, first gfn); they never overlap.
#[derive(Clone, Default, Debug)]
struct Root(BTreeMap<(Level, u64), Leaf>);

impl Root {
    /// The leaf that maps `gfn`.
    fn find(&mut self, gfn: u64) -> Option<(Level, u64, &mut Leaf)> {
        let key = Level::MAPPABLE
            .into_iter()
            .map(|l| (l, l.align_down(gfn)))
            .find(|k| self.0.contains_key(k))?;
        Some((key.0, key.1, self.0.get_mut(&key).unwrap()))
    }

    /// The keys of the leaves overlapping `[start, end)`.
    fn overlapping(&self, start: u64, end: u64) -> Vec<(Level, u64)> {
        self.0
            .keys()
            .filter(|&&(l, g)| g < end && g + l.pages() > start)
            .copied()
            .collect()
    }
}

/// What a map of the `level` block at `first` finds in a root, before it is changed.
struct MapEffect {
    /// A larger leaf was in the way (split), and whether it was dirty.
    larger: Option<bool>,
    /// Smaller leaves under the block (collapse), and how many of them were dirty.
    smaller: (u64, u64),
    /// The leaf at the same level and gfn.
    same: Option<Leaf>,
}

/// Removes the leaves a map of the `level` block at `first` replaces: a larger one it splits,
/// smaller ones it collapses.  `dirty` says whether a leaf counts as dirty when removed.
fn clear_for_map(
    root: &mut Root,
    level: Level,
    first: u64,
    dirty: impl Fn(&Leaf) -> bool,
) -> MapEffect {
    let mut larger = None;
    let mut smaller = (0, 0);
    for key in root.overlapping(first, first + level.pages()) {
        if key.0 > level {
            larger = Some(dirty(&root.0.remove(&key).unwrap()));
        } else if key.0 < level {
            smaller.0 += 1;
            smaller.1 += u64::from(dirty(&root.0.remove(&key).unwrap()));
        }
    }
    MapEffect {
        larger,
        smaller,
        same: root.0.get(&(level, first)).copied(),
    }
}

/// Removes the leaves of every root overlapping `[start, end)`; returns how many, and how many
/// of them were dirty.
fn zap_model(
    roots: &mut [Root],
    start: u64,
    end: u64,
    dirty: impl Fn(&Leaf) -> bool,
) -> (u64, u64) {
    let (mut zapped, mut dirtied) = (0, 0);
    for root in roots {
        for key in root.overlapping(start, end) {
            let leaf = root.0.remove(&key).unwrap();
            zapped += 1;
            dirtied += u64::from(dirty(&leaf));
        }
    }
    (zapped, dirtied)
}

/// Ages the leaves of every root overlapping `[start, end)` as `op` says, with `clear` making a
/// young leaf old; returns whether one was young, and how many.
fn age_model(
    roots: &mut [Root],
    start: u64,
    end: u64,
    op: AgeOp,
    mut clear: impl FnMut(&mut Leaf),
) -> (bool, u64) {
    let mut young = 0;
    for root in roots.iter_mut() {
        for key in root.overlapping(start, end) {
            let leaf = root.0.get_mut(&key).unwrap();
            if leaf.accessed {
                young += 1;
                if op.clears() {
                    clear(leaf);
                }
            }
        }
    }
    (young != 0, young)
}

/// The translation of `gfn` by the leaf at (`level`, `first`).
fn translation(level: Level, first: u64, leaf: &Leaf, gfn: u64, dirty: bool) -> Translation {
    Translation {
        pfn: Pfn::new(leaf.pfn + (gfn - first)),
        level,
        writable: leaf.w(),
        dirty,
        dirtied: false,
    }
}

/// The page a map of the `level` block at `first` maps it to: one of a few versions, so that
/// maps replace leaves of other pages as well as find their own.  Aligned like `first`, and
/// below 2^36 (stage-2 output addresses have 48 bits).
fn pfn_for(first: u64, version: u64) -> u64 {
    ((version + 1) << 28) | (first & ((1 << 28) - 1))
}

/// Lengths of zapped and aged ranges.
fn range_len() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![
        1u64,
        2,
        511,
        512,
        513,
        1 << 18,
        (1 << 18) + 1,
        1 << 20,
    ])
}

fn age_op() -> impl Strategy<Value = AgeOp> {
    prop::sample::select(vec![AgeOp::Test, AgeOp::Clear, AgeOp::ClearFlush])
}

fn level() -> impl Strategy<Value = Level> {
    prop::sample::select(Level::MAPPABLE.to_vec())
}

/// 2M blocks and pages within their larger block that the gfns use: the first ones, and the
/// last one, so that ranges cross block boundaries.
fn index() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0u64, 1, 2, 511])
}

/// The table pages of `HostPages<ID>` allocated and not freed.
fn live_pages<const ID: usize>() -> u64 {
    HostPages::<ID>::allocs() - HostPages::<ID>::frees()
}

mod x86 {
    use super::*;

    use crate::mmu::prim::NoPreempt;
    use crate::x86::mmu::{translate, MapError, X86Mmu, MAP_MIN_DESCS, MAP_MIN_TABLES};
    use crate::x86::rmap::DescCache;
    use crate::x86::spte;
    use crate::x86_slots::{TestMmu, TestSlots};

    const ID: usize = 56;

    /// The slots: the first holds a whole 1G block and two 2M blocks of the next; the second
    /// starts 256 pages below a 1G boundary, in the middle of a 2M block, and holds the 1G
    /// block above and one 2M block more.
    const SLOTS: [Slot; 2] = [
        Slot {
            id: 0,
            flags: 0,
            base_gfn: Gfn::new(1 << 18),
            npages: (1 << 18) + 1024,
            userspace_addr: Hva::new(0x7000_0000_0000),
        },
        Slot {
            id: 1,
            flags: 0,
            base_gfn: Gfn::new((3 << 18) - 0x100),
            npages: (1 << 18) + 0x100 + 512,
            userspace_addr: Hva::new(0x7100_0000_0000),
        },
    ];

    /// The two regions of gfns of each slot: of the first, its 1G block and the next (where
    /// only 4K and 2M maps fit); of the second, the 2M block its start is in, and its 1G block.
    const REGIONS: [[u64; 2]; 2] = [[1 << 18, 2 << 18], [(3 << 18) - 512, 3 << 18]];

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            root: usize,
            slot: usize,
            gfn: u64,
            level: Level,
            version: u64,
            writable: bool,
        },
        Translate {
            root: usize,
            slot: usize,
            gfn: u64,
            write: bool,
        },
        /// `TestMmu::restore_access_tracked()`, the fault's fast path.
        Restore {
            root: usize,
            slot: usize,
            gfn: u64,
            write: bool,
        },
        Zap {
            slot: usize,
            gfn: u64,
            len: u64,
            stop_often: bool,
        },
        Age {
            slot: usize,
            gfn: u64,
            len: u64,
            op: AgeOp,
            locked: bool,
        },
    }

    /// A gfn of slot `slot`, or just outside it.
    fn gfn() -> impl Strategy<Value = (usize, u64)> {
        (0..2usize, 0..2usize, index(), index())
            .prop_map(|(s, r, m, p)| (s, REGIONS[s][r] + (m << 9) + p))
    }

    fn op(roots: usize) -> impl Strategy<Value = Op> {
        let root = 0..roots;
        prop_oneof![
            6 => (root.clone(), gfn(), level(), 0..3u64, any::<bool>()).prop_map(
                |(root, (slot, gfn), level, version, writable)| Op::Map {
                    root, slot, gfn, level, version, writable,
                }
            ),
            3 => (root.clone(), gfn(), any::<bool>())
                .prop_map(|(root, (slot, gfn), write)| Op::Translate { root, slot, gfn, write }),
            1 => (root, gfn(), any::<bool>())
                .prop_map(|(root, (slot, gfn), write)| Op::Restore { root, slot, gfn, write }),
            1 => (gfn(), range_len(), any::<bool>()).prop_map(|((slot, gfn), len, stop_often)| {
                Op::Zap { slot, gfn, len, stop_often }
            }),
            2 => (gfn(), range_len(), age_op(), any::<bool>()).prop_map(
                |((slot, gfn), len, op, locked)| Op::Age { slot, gfn, len, op, locked }
            ),
        ]
    }

    fn case() -> impl Strategy<Value = (usize, bool, Vec<Op>)> {
        (1..=3usize, any::<bool>()).prop_flat_map(|(roots, ad)| {
            (
                Just(roots),
                Just(ad),
                prop::collection::vec(op(roots), 1..60),
            )
        })
    }

    struct World {
        mmu: TestMmu<HostPages<ID>>,
        table: crate::mmu::prim::PArc<TestSlots>,
        tables: TableCache<HostPages<ID>>,
        descs: DescCache,
        ad: bool,
        /// Per slot, the model's roots.
        model: [Vec<Root>; 2],
        /// gfns whose leaves are checked after every step.
        probes: Vec<u64>,
        /// Table pages live before the case.
        pages_before: u64,
    }

    impl World {
        /// Whether the leaf counts as dirty when zapped: D, or without A/D, W.
        fn dirty(ad: bool) -> impl Fn(&Leaf) -> bool {
            move |l| if ad { l.d } else { l.w() }
        }

        fn snapshot(&self, leaf: &Leaf, level: Level) -> u8 {
            snapshot_byte(leaf.w(), leaf.accessed, Self::dirty(self.ad)(leaf), level)
        }

        fn map(&mut self, root: usize, s: usize, gfn: u64, level: Level, pfn: u64, w: bool) {
            let slot = &SLOTS[s];
            let first = level.align_down(gfn);
            self.tables.topup(MAP_MIN_TABLES).unwrap();
            self.descs.topup(MAP_MIN_DESCS).unwrap();
            let r = self.mmu.map_level(
                root,
                s as u32,
                Gfn::new(first),
                Pfn::new(pfn),
                w,
                level,
                &mut self.tables,
                &mut self.descs,
            );
            if !slot.contains(Gfn::new(first))
                || !slot.contains(Gfn::new(first + level.pages() - 1))
            {
                assert_eq!(r.unwrap_err(), MapError::BadGfn);
                return;
            }
            let o = r.unwrap();
            let ad = self.ad;
            let m = &mut self.model[s][root];
            let effect = clear_for_map(m, level, first, Self::dirty(ad));
            let action = match effect.same {
                Some(old) if old.pfn == pfn => {
                    let leaf = m.0.get_mut(&(level, first)).unwrap();
                    if w && !old.w() {
                        *leaf = Leaf::new(pfn, true);
                        MapAction::Upgraded
                    } else if old.tracked {
                        leaf.tracked = false;
                        leaf.accessed = true;
                        MapAction::Restored
                    } else {
                        MapAction::Unchanged
                    }
                }
                Some(_) => {
                    m.0.insert((level, first), Leaf::new(pfn, w));
                    MapAction::Replaced
                }
                None => {
                    m.0.insert((level, first), Leaf::new(pfn, w));
                    if effect.larger.is_some() || effect.smaller.0 != 0 {
                        MapAction::Replaced
                    } else {
                        MapAction::Installed
                    }
                }
            };
            assert_eq!(
                o.action,
                action,
                "{effect:?}",
                effect = (effect.larger, effect.smaller)
            );
            assert_eq!(o.split, effect.larger.is_some());
            if effect.smaller.0 != 0 {
                assert!(o.unlinked.is_some(), "a collapse unlinks the table");
            }
            if let Some(t) = o.unlinked {
                assert_eq!(t.covers, level);
                // SAFETY: from this map; no walker runs (the flush it asks for is a no-op).
                unsafe { self.mmu.free_unlinked(t) };
            }
        }

        /// The slot whose model holds the leaves of `gfn`: the slot that holds `gfn` (the gfns
        /// generated for the first slot reach into the second, which starts near the end of the
        /// first's second 1G), or `s` when neither does (then neither model maps it).
        fn slot_of(s: usize, gfn: u64) -> usize {
            SLOTS
                .iter()
                .position(|sl| sl.contains(Gfn::new(gfn)))
                .unwrap_or(s)
        }

        fn translate(&mut self, root: usize, s: usize, gfn: u64, write: bool) {
            // A translation knows no slot.
            let s = Self::slot_of(s, gfn);
            let root_pfn = self.mmu.root_pfn(root).unwrap();
            // SAFETY: a root of `self.mmu`, which is borrowed for the call.
            let got = unsafe { translate::<HostPages<ID>>(root_pfn, Gfn::new(gfn), write) };
            let ad = self.ad;
            let want = match self.model[s][root].find(gfn) {
                None => Err(WalkFault::NotPresent),
                Some((_, _, l)) if write && !l.w() => Err(if l.tracked {
                    WalkFault::NotPresent
                } else {
                    WalkFault::WriteProtected
                }),
                Some((_, _, l)) if l.tracked => Err(WalkFault::NotPresent),
                Some((level, first, l)) => {
                    if ad {
                        l.accessed = true;
                        l.d |= write;
                    }
                    let dirty = l.w() && if ad { l.d } else { true };
                    Ok(translation(level, first, l, gfn, dirty))
                }
            };
            assert_eq!(got, want, "root {root} gfn {gfn:#x} write {write}");
        }

        fn restore(&mut self, root: usize, s: usize, gfn: u64, write: bool) {
            // Neither does a restore.
            let s = Self::slot_of(s, gfn);
            let got = self.mmu.restore_access_tracked(root, Gfn::new(gfn), write);
            let want = match self.model[s][root].find(gfn) {
                Some((_, _, l)) if l.tracked && (!write || l.writable) => {
                    l.tracked = false;
                    l.accessed = true;
                    true
                }
                _ => false,
            };
            assert_eq!(got, want, "root {root} gfn {gfn:#x} write {write}");
        }

        fn zap(&mut self, s: usize, start: u64, end: u64, stop_often: bool) {
            // The zap driver flushes before every yield and at the end, after which the tables
            // it emptied can go (`run_zap()` checks that it does).
            let slots = self.mmu.slots().clone();
            let p = run_zap(
                &mut *self.mmu,
                HostPages::<ID>::frees,
                || stop_often,
                |_| {},
                |lock, z| {
                    X86Mmu::zap_gfn_range(
                        lock,
                        &mut &*slots,
                        z,
                        s as u32,
                        Gfn::new(start),
                        Gfn::new(end),
                    )
                },
            );
            let (zapped, dirty) = (p.zapped, p.dirty);
            assert!(
                stop_often || p.yields == 0,
                "yielded without being asked to"
            );
            assert!(p.yields < 1 << 16, "the zap does not progress");
            let slot = &SLOTS[s];
            let (lo, hi) = (
                start.max(slot.base_gfn.raw()),
                end.min(slot.end_gfn().raw()),
            );
            let want = if lo < hi {
                zap_model(&mut self.model[s], lo, hi, Self::dirty(self.ad))
            } else {
                (0, 0)
            };
            assert_eq!((zapped, dirty), want, "zap of [{start:#x}, {end:#x})");
        }

        fn age(&mut self, s: usize, start: u64, end: u64, op: AgeOp, locked: bool) {
            let r: AgeResult = if locked {
                self.mmu
                    .age_gfn_range_locked(s as u32, Gfn::new(start), Gfn::new(end), op)
            } else {
                let no_preempt = NoPreempt::new();
                self.table.age_gfn_range_lockless(
                    &no_preempt,
                    s as u32,
                    Gfn::new(start),
                    Gfn::new(end),
                    op,
                )
            };
            let slot = &SLOTS[s];
            let (lo, hi) = (
                start.max(slot.base_gfn.raw()),
                end.min(slot.end_gfn().raw()),
            );
            if lo >= hi {
                assert!(!r.young && r.visited == 0, "{r:?}");
                return;
            }
            let (ad, m) = (self.ad, &mut self.model[s]);
            let what = format!("{op:?} locked {locked} of [{start:#x}, {end:#x}): {r:?}");
            if ad || op == AgeOp::Test {
                let (young, n) = age_model(m, lo, hi, op, |l| l.accessed = false);
                assert_eq!(r.young, young, "{what}");
                if op.clears() {
                    assert_eq!(r.cleared, n, "{what}");
                } else {
                    assert_eq!(r.cleared, 0, "{what}");
                }
                assert_eq!((r.skipped, r.write_protected, r.dirty), (0, 0, 0), "{what}");
            } else if locked {
                // Access tracking takes W away, capturing the dirty state first.
                let mut w = 0;
                let (young, n) = age_model(m, lo, hi, op, |l| {
                    w += u64::from(l.w());
                    l.tracked = true;
                    l.accessed = false;
                });
                assert_eq!((r.young, r.cleared), (young, n), "{what}");
                assert_eq!((r.write_protected, r.dirty), (w, w), "{what}");
                assert_eq!(r.skipped, 0, "{what}");
            } else {
                // The lockless walk cannot access-track: young leaves are left alone.
                let (young, n) = age_model(m, lo, hi, AgeOp::Test, |_| {});
                assert_eq!((r.young, r.skipped, r.cleared), (young, n, 0), "{what}");
            }
            assert_eq!(
                (r.lost_races, r.not_present, r.contended),
                (0, 0, 0),
                "{what}"
            );
        }

        /// Checks the leaves of the probes, the counters, and the table pages.
        fn check(&mut self) {
            let no_preempt = NoPreempt::new();
            let mut leaves = 0;
            for s in 0..2 {
                let n: usize = self.model[s].iter().map(|r| r.0.len()).sum();
                let rmaps = self.table.get(s as u32, &no_preempt).unwrap();
                assert_eq!(rmaps.sptes(), n as u64, "slot {s}");
                leaves += n as u64;
            }
            assert_eq!(self.mmu.leaf_sptes(), leaves);
            let by_level = Level::MAPPABLE.map(|l| {
                let in_root = |r: &Root| r.0.keys().filter(|k| k.0 == l).count() as u64;
                self.model.iter().flatten().map(in_root).sum::<u64>()
            });
            assert_eq!(self.mmu.leaves_by_level(), by_level);
            for &gfn in &self.probes {
                // Leaves lie whole in their slot: outside the slots, nothing is mapped.
                let s = SLOTS.iter().position(|s| s.contains(Gfn::new(gfn)));
                for root in 0..self.mmu.nr_roots() {
                    let want = s.and_then(|s| {
                        let found = self.model[s][root].find(gfn);
                        found.map(|(l, f, leaf)| (l, f, *leaf))
                    });
                    let got = self.mmu.leaf(root, Gfn::new(gfn)).map(|(_, v, l)| (v, l));
                    match (want, got) {
                        (None, None) => {}
                        (Some((level, first, leaf)), Some((v, l))) => {
                            assert_eq!(l, level, "root {root} gfn {gfn:#x}");
                            assert_eq!(
                                spte::pfn(v),
                                leaf.pfn,
                                "root {root} gfn {gfn:#x} ({first:#x})"
                            );
                            assert_eq!(
                                self.mmu.snapshot(root, Gfn::new(gfn)),
                                self.snapshot(&leaf, level),
                                "root {root} gfn {gfn:#x}: {leaf:?}"
                            );
                        }
                        _ => panic!("root {root} gfn {gfn:#x}: model {want:?}, MMU {got:?}"),
                    }
                }
            }
            let st = self.mmu.stats();
            assert_eq!(
                st.tables_allocated - st.tables_freed,
                self.mmu.table_pages()
            );
            assert_eq!(
                live_pages::<ID>() - self.pages_before,
                self.mmu.table_pages() + self.tables.len() as u64
            );
        }
    }

    fn run(roots: usize, ad: bool, ops: &[Op]) {
        HostPages::<ID>::take_dirty();
        let pages_before = live_pages::<ID>();
        let table = TestSlots::new();
        let mut mmu = TestMmu::with_slots(roots, ad, table.clone()).unwrap();
        for s in &SLOTS {
            assert!(mmu.attach_slot(s).is_ok());
        }
        let mut probes = Vec::new();
        for op in ops {
            let (Op::Map { gfn, .. }
            | Op::Translate { gfn, .. }
            | Op::Restore { gfn, .. }
            | Op::Zap { gfn, .. }
            | Op::Age { gfn, .. }) = *op;
            for level in Level::MAPPABLE {
                let first = level.align_down(gfn);
                probes.extend([first, first + level.pages() - 1]);
            }
            probes.push(gfn);
        }
        probes.sort_unstable();
        probes.dedup();
        let mut w = World {
            mmu,
            table,
            tables: TableCache::new(),
            descs: DescCache::new(4),
            ad,
            model: [vec![Root::default(); roots], vec![Root::default(); roots]],
            probes,
            pages_before,
        };
        for op in ops {
            match *op {
                Op::Map {
                    root,
                    slot,
                    gfn,
                    level,
                    version,
                    writable,
                } => {
                    let pfn = pfn_for(level.align_down(gfn), version);
                    w.map(root, slot, gfn, level, pfn, writable);
                }
                Op::Translate {
                    root,
                    slot,
                    gfn,
                    write,
                } => w.translate(root, slot, gfn, write),
                Op::Restore {
                    root,
                    slot,
                    gfn,
                    write,
                } => w.restore(root, slot, gfn, write),
                Op::Zap {
                    slot,
                    gfn,
                    len,
                    stop_often,
                } => w.zap(slot, gfn, gfn + len, stop_often),
                Op::Age {
                    slot,
                    gfn,
                    len,
                    op,
                    locked,
                } => w.age(slot, gfn, gfn + len, op, locked),
            }
            w.check();
        }
        // Zapping everything leaves no leaf.
        for s in 0..2 {
            w.zap(s, 0, u64::MAX, false);
        }
        w.check();
        assert_eq!(w.mmu.leaf_sptes(), 0);
        for &gfn in &w.probes {
            for root in 0..roots {
                assert!(
                    w.mmu.leaf(root, Gfn::new(gfn)).is_none(),
                    "root {root} gfn {gfn:#x}"
                );
            }
        }
        let World { mmu, tables, .. } = w;
        drop(mmu);
        drop(tables);
        assert_eq!(live_pages::<ID>(), pages_before, "table pages leaked");
    }

    proptest! {
        #![proptest_config(prop_config(64))]

        /// Maps, translations, restores, zaps and aging do to the x86 MMU what they do to the
        /// model, in every root and slot, with and without A/D.
        #[test]
        fn x86_mmu_matches_a_model((roots, ad, ops) in case()) {
            run(roots, ad, &ops);
        }
    }
}

mod s2 {
    use super::*;

    use std::cell::Cell;

    use crate::arm64::mmu::{translate, MapError, S2Mmu};
    use crate::arm64::pte::{self, MAX_IA_BITS, MIN_IA_BITS};

    const ID: usize = 57;

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            root: usize,
            gfn: u64,
            level: Level,
            version: u64,
            writable: bool,
        },
        Translate {
            root: usize,
            gfn: u64,
            write: bool,
        },
        /// `S2Mmu::mkyoung()`, the access-flag fault.
        Mkyoung {
            root: usize,
            gfn: u64,
            write: bool,
        },
        Zap {
            gfn: u64,
            len: u64,
            stop_often: bool,
        },
        Age {
            gfn: u64,
            len: u64,
            op: AgeOp,
        },
    }

    /// The regions of gfns, as 1G blocks: the first two of the space, the last one, and the
    /// one past the end (where every map fails).
    fn gfn(limit: u64) -> impl Strategy<Value = u64> {
        let regions = vec![0, 1 << 18, limit - (1 << 18), limit];
        (prop::sample::select(regions), index(), index()).prop_map(|(r, m, p)| r + (m << 9) + p)
    }

    fn op(roots: usize, limit: u64) -> impl Strategy<Value = Op> {
        let root = 0..roots;
        prop_oneof![
            6 => (root.clone(), gfn(limit), level(), 0..3u64, any::<bool>()).prop_map(
                |(root, gfn, level, version, writable)| Op::Map {
                    root, gfn, level, version, writable,
                }
            ),
            3 => (root.clone(), gfn(limit), any::<bool>())
                .prop_map(|(root, gfn, write)| Op::Translate { root, gfn, write }),
            1 => (root, gfn(limit), any::<bool>())
                .prop_map(|(root, gfn, write)| Op::Mkyoung { root, gfn, write }),
            1 => (gfn(limit), range_len(), any::<bool>())
                .prop_map(|(gfn, len, stop_often)| Op::Zap { gfn, len, stop_often }),
            2 => (gfn(limit), range_len(), age_op())
                .prop_map(|(gfn, len, op)| Op::Age { gfn, len, op }),
        ]
    }

    fn case() -> impl Strategy<Value = (u32, usize, bool, Vec<Op>)> {
        (MIN_IA_BITS..=MAX_IA_BITS, 1..=3usize, any::<bool>()).prop_flat_map(
            |(ia_bits, roots, hw_af)| {
                let limit = pte::Geometry::new(ia_bits).unwrap().gfn_limit();
                (
                    Just(ia_bits),
                    Just(roots),
                    Just(hw_af),
                    prop::collection::vec(op(roots, limit), 1..60),
                )
            },
        )
    }

    struct World {
        mmu: S2Mmu<HostPages<ID>>,
        tables: TableCache<HostPages<ID>>,
        model: Vec<Root>,
        /// The largest level a leaf can have: a walk starting at level 2 has no 1G blocks.
        max_level: Level,
        probes: Vec<u64>,
        pages_before: u64,
    }

    /// A stage-2 leaf has no dirty bit: a writable one is dirty.
    fn dirty(l: &Leaf) -> bool {
        l.writable
    }

    impl World {
        fn map(&mut self, root: usize, gfn: u64, level: Level, pfn: u64, w: bool) {
            let first = level.align_down(gfn);
            self.tables.topup(self.mmu.map_min_tables()).unwrap();
            let flushes = Cell::new(0);
            let r = self.mmu.map(
                root,
                Gfn::new(first),
                Pfn::new(pfn),
                w,
                level,
                &mut self.tables,
                &|| flushes.set(flushes.get() + 1),
            );
            if first >= self.mmu.geometry().gfn_limit() {
                assert_eq!(r.unwrap_err(), MapError::BadGfn);
                return;
            }
            let o = r.unwrap();
            let m = &mut self.model[root];
            let effect = clear_for_map(m, level, first, dirty);
            let what = format!("map of {level:?} {first:#x}: {o:?}");
            match effect.same {
                Some(old) if old.pfn == pfn => {
                    let leaf = m.0.get_mut(&(level, first)).unwrap();
                    let action = if w && !old.writable {
                        MapAction::Upgraded
                    } else if !old.accessed {
                        MapAction::Restored
                    } else {
                        MapAction::Unchanged
                    };
                    leaf.writable |= w;
                    leaf.accessed = true;
                    assert_eq!(o.action, action, "{what}");
                    assert_eq!(flushes.get(), 0, "{what}");
                }
                Some(_) => {
                    m.0.insert((level, first), Leaf::new(pfn, w));
                    assert_eq!(o.action, MapAction::Replaced, "{what}");
                    assert_eq!(flushes.get(), 1, "{what}");
                }
                None => {
                    m.0.insert((level, first), Leaf::new(pfn, w));
                    if effect.larger.is_some() {
                        // The block was broken into a new, empty table.
                        assert_eq!(o.action, MapAction::Installed, "{what}");
                        assert_eq!(flushes.get(), 1, "{what}");
                    } else if effect.smaller.0 != 0 {
                        assert_eq!(o.action, MapAction::Replaced, "{what}");
                        assert_eq!(flushes.get(), 1, "{what}");
                    } else {
                        // Replaced if a table, empty, was there.
                        let replaced = o.action == MapAction::Replaced;
                        assert!(replaced || o.action == MapAction::Installed, "{what}");
                        assert_eq!(flushes.get(), u32::from(replaced), "{what}");
                    }
                }
            }
            // A split is a block broken on the way down for the new leaf's table.
            assert_eq!(o.split, effect.larger.is_some(), "{what}");
            assert_eq!(
                o.unlinked.is_some(),
                effect.same.is_none() && effect.larger.is_none() && o.action == MapAction::Replaced,
                "{what}"
            );
            if let Some(t) = o.unlinked {
                assert_eq!(t.covers, level);
                // SAFETY: from this map; the break-before-make flushed.
                unsafe { self.mmu.free_unlinked(t) };
            }
        }

        fn translate(&mut self, root: usize, gfn: u64, write: bool) {
            let r = self.mmu.root(root).unwrap();
            let hw_af = self.mmu.hw_af();
            // SAFETY: a root of `self.mmu`, which is borrowed for the call.
            let got = unsafe { translate::<HostPages<ID>>(r, Gfn::new(gfn), write, hw_af, false) };
            let want = match self.model[root].find(gfn) {
                None => Err(WalkFault::NotPresent),
                Some((_, _, l)) if !l.accessed && !hw_af => Err(WalkFault::NotPresent),
                Some((_, _, l)) if write && !l.writable => Err(WalkFault::WriteProtected),
                Some((level, first, l)) => {
                    l.accessed = true;
                    Ok(translation(level, first, l, gfn, l.writable))
                }
            };
            assert_eq!(got, want, "root {root} gfn {gfn:#x} write {write}");
        }

        fn mkyoung(&mut self, root: usize, gfn: u64, write: bool) {
            let got = self.mmu.mkyoung(root, Gfn::new(gfn), write);
            let want = match self.model[root].find(gfn) {
                Some((_, _, l)) if !write || l.writable => {
                    l.accessed = true;
                    true
                }
                _ => false,
            };
            assert_eq!(got, want, "root {root} gfn {gfn:#x} write {write}");
        }

        fn zap(&mut self, start: u64, end: u64, stop_often: bool) {
            // The zap driver flushes before every yield and at the end, after which its tables
            // can go (`run_zap()` checks that it does).
            let p = run_zap(
                &mut self.mmu,
                HostPages::<ID>::frees,
                || stop_often,
                |_| {},
                |lock, z| S2Mmu::zap_gfn_range(lock, z, Gfn::new(start), Gfn::new(end)),
            );
            let (zapped, dirtied) = (p.zapped, p.dirty);
            assert!(
                stop_often || p.yields == 0,
                "yielded without being asked to"
            );
            assert!(p.yields < 1 << 16, "the zap does not progress");
            let end = end.min(self.mmu.geometry().gfn_limit());
            let want = zap_model(&mut self.model, start, end, dirty);
            assert_eq!((zapped, dirtied), want, "zap of [{start:#x}, {end:#x})");
        }

        fn age(&mut self, start: u64, end: u64, op: AgeOp) {
            let r = self.mmu.age_gfn_range(Gfn::new(start), Gfn::new(end), op);
            let (young, n) = age_model(&mut self.model, start, end, op, |l| l.accessed = false);
            let what = format!("{op:?} of [{start:#x}, {end:#x}): {r:?}");
            assert_eq!(r.young, young, "{what}");
            assert_eq!(r.cleared, if op.clears() { n } else { 0 }, "{what}");
            assert_eq!(
                (r.lost_races, r.write_protected, r.dirty),
                (0, 0, 0),
                "{what}"
            );
        }

        fn check(&mut self) {
            let leaves: usize = self.model.iter().map(|r| r.0.len()).sum();
            assert_eq!(self.mmu.leaves(), leaves as u64);
            let by_level = Level::MAPPABLE.map(|l| {
                let in_root = |r: &Root| r.0.keys().filter(|k| k.0 == l).count() as u64;
                self.model.iter().map(in_root).sum::<u64>()
            });
            assert_eq!(self.mmu.leaves_by_level(), by_level);
            for &gfn in &self.probes {
                for root in 0..self.mmu.nr_roots() {
                    let want = self.model[root].find(gfn).map(|(l, f, leaf)| (l, f, *leaf));
                    let got = self.mmu.leaf(root, Gfn::new(gfn)).map(|(_, v, l)| (v, l));
                    match (want, got) {
                        (None, None) => {}
                        (Some((level, first, leaf)), Some((v, l))) => {
                            assert!(level <= self.max_level);
                            assert_eq!(l, level, "root {root} gfn {gfn:#x}");
                            assert_eq!(
                                pte::pfn(v),
                                leaf.pfn,
                                "root {root} gfn {gfn:#x} ({first:#x})"
                            );
                            assert_eq!(
                                self.mmu.snapshot(root, Gfn::new(gfn)),
                                snapshot_byte(leaf.writable, leaf.accessed, leaf.writable, level),
                                "root {root} gfn {gfn:#x}: {leaf:?}"
                            );
                        }
                        _ => panic!("root {root} gfn {gfn:#x}: model {want:?}, MMU {got:?}"),
                    }
                }
            }
            let st = self.mmu.stats();
            assert_eq!(
                st.tables_allocated - st.tables_freed,
                self.mmu.table_pages()
            );
            assert_eq!(
                live_pages::<ID>() - self.pages_before,
                self.mmu.table_pages() + self.tables.len() as u64
            );
        }
    }

    fn run(ia_bits: u32, roots: usize, hw_af: bool, ops: &[Op]) {
        let pages_before = live_pages::<ID>();
        let mmu = S2Mmu::<HostPages<ID>>::new(roots, ia_bits, hw_af).unwrap();
        let geo = mmu.geometry();
        assert_eq!(mmu.root(0).unwrap().start_level(), geo.start_level);
        // Only levels the walk can hold: 1G blocks need a walk starting at level 1 or 0.
        let max_level = if geo.start_level >= Level::L1G {
            Level::L1G
        } else {
            Level::L2M
        };
        let limit = geo.gfn_limit();
        let mut probes = Vec::new();
        for op in ops {
            let (Op::Map { gfn, .. }
            | Op::Translate { gfn, .. }
            | Op::Mkyoung { gfn, .. }
            | Op::Zap { gfn, .. }
            | Op::Age { gfn, .. }) = *op;
            for level in Level::MAPPABLE {
                let first = level.align_down(gfn);
                probes.extend([first, first + level.pages() - 1]);
            }
            probes.push(gfn);
        }
        probes.retain(|&g| g < limit);
        probes.sort_unstable();
        probes.dedup();
        let mut w = World {
            mmu,
            tables: TableCache::new(),
            model: vec![Root::default(); roots],
            max_level,
            probes,
            pages_before,
        };
        let pgd_pages = w.mmu.table_pages();
        for op in ops {
            match *op {
                Op::Map {
                    root,
                    gfn,
                    level,
                    version,
                    writable,
                } => {
                    let level = level.min(max_level);
                    let pfn = pfn_for(level.align_down(gfn), version);
                    w.map(root, gfn, level, pfn, writable);
                }
                Op::Translate { root, gfn, write } => w.translate(root, gfn, write),
                Op::Mkyoung { root, gfn, write } => w.mkyoung(root, gfn, write),
                Op::Zap {
                    gfn,
                    len,
                    stop_often,
                } => w.zap(gfn, gfn + len, stop_often),
                Op::Age { gfn, len, op } => w.age(gfn, gfn + len, op),
            }
            w.check();
        }
        // Zapping everything leaves no leaf, and no table below the start level.
        w.zap(0, limit, false);
        w.check();
        assert_eq!(w.mmu.leaves(), 0);
        assert_eq!(
            w.mmu.table_pages(),
            pgd_pages,
            "tables left after zapping everything"
        );
        let World { mmu, tables, .. } = w;
        drop(mmu);
        drop(tables);
        assert_eq!(live_pages::<ID>(), pages_before, "table pages leaked");
    }

    proptest! {
        #![proptest_config(prop_config(256))]

        /// Maps, translations, access-flag faults, zaps and aging do to the stage-2 MMU what
        /// they do to the model, in every root, at every geometry, with and without hardware
        /// AF.
        #[test]
        fn s2_mmu_matches_a_model((ia_bits, roots, hw_af, ops) in case()) {
            run(ia_bits, roots, hw_af, &ops);
        }
    }
}

/// A map of a 1G block in a stage-2 walk that starts at level 2 (`ia_bits` 32 to 34), which has
/// no 1G blocks, must fail or map 1G; it used to map a single 2M block instead, leaving the other
/// 511 2M blocks of the request unmapped while the caller believed the whole 1G was.  The map
/// now refuses it, and the fault path clamps the level to `S2Mmu::max_map_level()`; the property
/// test above only asks for levels the geometry can hold.
#[test]
fn s2_1g_map_at_start_level_2() {
    use crate::arm64::mmu::{S2Mmu, MAP_MIN_TABLES};
    const ID: usize = 58;
    for ia_bits in 32..=34 {
        let mmu = S2Mmu::<HostPages<ID>>::new(1, ia_bits, true).unwrap();
        assert_eq!(mmu.root(0).unwrap().start_level(), Level::L2M);
        let mut tables = TableCache::<HostPages<ID>>::new();
        tables.topup(MAP_MIN_TABLES).unwrap();
        let r = mmu.map(
            0,
            Gfn::new(1 << 18),
            Pfn::new(1 << 28),
            true,
            Level::L1G,
            &mut tables,
            &|| {},
        );
        assert!(r.is_err(), "ia_bits {ia_bits}: a 1G map must be refused");
        if r.is_ok() {
            let last = (2 << 18) - 1;
            let leaf = mmu.leaf(0, Gfn::new(last)).map(|(_, _, level)| level);
            assert_eq!(
                leaf,
                Some(Level::L1G),
                "ia_bits {ia_bits}: the 1G map left {last:#x} unmapped"
            );
        }
    }
}
