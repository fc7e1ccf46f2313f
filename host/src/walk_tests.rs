// SPDX-License-Identifier: GPL-2.0

//! Tests of the shared page-table walker (`src/mmu/walk.rs`) on a toy format: the order and kinds of
//! the visits, the range, breaks and resuming, reloads after a visitor links a table, the bottom
//! level, lookups, and the yield protocol (the flush comes exactly before each yield, and a
//! walk resumed from the root after every yield visits every entry once).

use core::ops::ControlFlow;

use crate::host_pages::HostPages;
use crate::mmu::level::Level;
use crate::mmu::pgtable::PageOps;
use crate::mmu::prim::{AtomicU64, Ordering};
use crate::mmu::walk::{
    self, find, walk, walk_yielding, Ctx, PteEncoding, Step, Tables, Visit, Visitor, Walked,
    YieldHook, LEAF, TABLE_POST, TABLE_PRE,
};

type P = HostPages<48>;

// The levels of the toy's 4-level tables, named as KVM numbers arm64's: level 0 is the root,
// level 3 maps 4K pages.
const L0: Level = Level::L512G;
const L1: Level = Level::L1G;
const L2: Level = Level::L2M;
const L3: Level = Level::L4K;

/// A toy format: bit 0 valid, bit 1 table (below the last level), the pfn from bit 12.
struct Toy;

const VALID: u64 = 1;
const TABLE: u64 = 2;

impl PteEncoding for Toy {
    const MAX_LEAF: Level = Level::L1G;

    fn is_valid(e: u64) -> bool {
        e & VALID != 0
    }

    fn is_table(e: u64, level: Level) -> bool {
        level > walk::LAST_LEVEL && e & (VALID | TABLE) == VALID | TABLE
    }

    fn table_pfn(e: u64) -> u64 {
        e >> 12
    }
}

fn leaf(pfn: u64) -> u64 {
    (pfn << 12) | VALID
}

fn table_entry(pfn: u64) -> u64 {
    (pfn << 12) | VALID | TABLE
}

/// Tables built by hand, freed on drop.
struct Tree {
    root: u64,
    pages: Vec<u64>,
}

impl Tree {
    fn new() -> Self {
        let root = P::alloc_table().unwrap();
        Tree {
            root,
            pages: vec![root],
        }
    }

    fn entry(pfn: u64, i: usize) -> &'static AtomicU64 {
        // SAFETY: the page lives as long as the tree, and the tests do not keep entries longer.
        let table = unsafe { P::table(pfn) };
        &table[i]
    }

    /// Links a new table from entry `i` of table `pfn`, and returns it.
    fn link(&mut self, pfn: u64, i: usize) -> u64 {
        let t = P::alloc_table().unwrap();
        self.pages.push(t);
        Self::entry(pfn, i).store(table_entry(t), Ordering::Relaxed);
        t
    }

    fn set(&self, pfn: u64, i: usize, v: u64) {
        Self::entry(pfn, i).store(v, Ordering::Relaxed);
    }

    fn tables(&self) -> Tables<'_> {
        Tables::new(core::slice::from_ref(&self.root), L0, 0, 1 << 36)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for &p in &self.pages {
            // SAFETY: allocated by the tree, not freed yet, and nothing walks it any more.
            unsafe { P::free_table(p) };
        }
    }
}

/// The tree of most tests: under root entry 0, a level-1 table whose entry 1 links a level-2
/// table with a 2M block at entry 3 and a level-3 table at entry 4 with pages at 5 and 6; and a
/// 1G block at root entry 0's level-1 entry 7.
fn sample() -> (Tree, u64, u64) {
    let mut t = Tree::new();
    let l1 = t.link(t.root, 0);
    let l2 = t.link(l1, 1);
    t.set(l2, 3, leaf(0x1000));
    let l3 = t.link(l2, 4);
    t.set(l3, 5, leaf(0x2005));
    t.set(l3, 6, leaf(0x2006));
    t.set(l1, 7, leaf(0x40000));
    (t, l2, l3)
}

/// Gfn of entry `i` at each level below the root's entry 0.
fn gfn(l1: u64, l2: u64, l3: u64) -> u64 {
    l1 * L1.pages() + l2 * L2.pages() + l3 * L3.pages()
}

/// Records every visit as (kind, level, addr), breaking where asked.
struct Recorder<const FLAGS: u32> {
    seen: Vec<(Visit, Level, u64)>,
    break_at: Option<(Visit, u64)>,
}

impl<const FLAGS: u32> Recorder<FLAGS> {
    fn new() -> Self {
        Recorder {
            seen: Vec::new(),
            break_at: None,
        }
    }
}

impl<'a, const FLAGS: u32> Visitor<'a> for Recorder<FLAGS> {
    const FLAGS: u32 = FLAGS;
    type Break = u64;

    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<u64> {
        if self.break_at == Some((visit, ctx.addr)) {
            self.break_at = None;
            return Step::Break(ctx.addr);
        }
        // Only valid leaves, to keep the lists short.
        if visit != Visit::Leaf || Toy::is_valid(ctx.old) {
            self.seen.push((visit, ctx.level, ctx.addr));
        }
        Step::Continue
    }
}

const ALL: u32 = LEAF | TABLE_PRE | TABLE_POST;

fn run<const FLAGS: u32>(
    t: &Tree,
    v: &mut Recorder<FLAGS>,
    pos: &mut u64,
    end: u64,
) -> ControlFlow<u64> {
    // SAFETY: the tree is alive, and nothing frees its tables meanwhile.
    unsafe { walk::<Toy, P, _>(&t.tables(), pos, end, v) }
}

#[test]
fn visits_in_order_with_the_flags_asked() {
    let (t, _, _) = sample();
    let mut v = Recorder::<ALL>::new();
    let mut pos = 0;
    assert_eq!(
        run(&t, &mut v, &mut pos, 1 << 36),
        ControlFlow::Continue(())
    );
    assert_eq!(pos, 1 << 36);
    use Visit::*;
    assert_eq!(
        v.seen,
        [
            (TablePre, L0, 0),
            (TablePre, L1, gfn(1, 0, 0)),
            (Leaf, L2, gfn(1, 3, 0)),
            (TablePre, L2, gfn(1, 4, 0)),
            (Leaf, L3, gfn(1, 4, 5)),
            (Leaf, L3, gfn(1, 4, 6)),
            (TablePost, L2, gfn(1, 4, 0)),
            (TablePost, L1, gfn(1, 0, 0)),
            (Leaf, L1, gfn(7, 0, 0)),
            (TablePost, L0, 0),
        ]
    );

    // Leaves only, over a range that starts inside the 2M block and ends inside the 4K table:
    // the block is visited from the start of the range, the pages past the end are not.
    let mut v = Recorder::<LEAF>::new();
    let mut pos = gfn(1, 3, 9);
    let end = gfn(1, 4, 6);
    assert_eq!(run(&t, &mut v, &mut pos, end), ControlFlow::Continue(()));
    assert_eq!(v.seen, [(Leaf, L2, gfn(1, 3, 9)), (Leaf, L3, gfn(1, 4, 5))]);
    assert_eq!(pos, end);

    // Posts only: a table the range covers in part gets its post visit too, as KVM's; each
    // table entry was entered where the walk started.
    let mut v = Recorder::<TABLE_POST>::new();
    let mut pos = gfn(1, 4, 0);
    assert_eq!(
        run(&t, &mut v, &mut pos, gfn(1, 4, 1)),
        ControlFlow::Continue(())
    );
    assert_eq!(
        v.seen,
        [
            (TablePost, L2, gfn(1, 4, 0)),
            (TablePost, L1, gfn(1, 4, 0)),
            (TablePost, L0, gfn(1, 4, 0))
        ]
    );
}

#[test]
fn a_break_leaves_the_walk_at_the_entry_and_resumes_there() {
    let (t, _, _) = sample();
    let mut whole = Recorder::<ALL>::new();
    let _ = run(&t, &mut whole, &mut 0, 1 << 36);

    // Break at a leaf: the walk resumes at it, and visits it then.
    let mut v = Recorder::<ALL>::new();
    v.break_at = Some((Visit::Leaf, gfn(1, 4, 6)));
    let mut pos = 0;
    assert_eq!(
        run(&t, &mut v, &mut pos, 1 << 36),
        ControlFlow::Break(gfn(1, 4, 6))
    );
    assert_eq!(pos, gfn(1, 4, 6));
    let pos_at = pos;
    let first = v.seen.len();
    assert_eq!(&v.seen[..], &whole.seen[..first]);
    assert_eq!(
        run(&t, &mut v, &mut pos, 1 << 36),
        ControlFlow::Continue(())
    );
    // The resumed walk went down from the root again (pre visits of the path, entered at the
    // position), then on: every leaf once.
    use Visit::*;
    assert_eq!(
        v.seen[first..first + 3],
        [
            (TablePre, L0, pos_at),
            (TablePre, L1, pos_at),
            (TablePre, L2, pos_at)
        ]
    );
    let leaves = |s: &[(Visit, Level, u64)]| -> Vec<(Level, u64)> {
        s.iter()
            .filter(|e| e.0 == Leaf)
            .map(|e| (e.1, e.2))
            .collect()
    };
    assert_eq!(leaves(&v.seen), leaves(&whole.seen));

    // Break at a post visit: the walk resumes where it entered that table entry, so the table
    // gets its post visit again after its entries.
    let mut v = Recorder::<TABLE_POST>::new();
    v.break_at = Some((Visit::TablePost, gfn(1, 4, 5)));
    let mut pos = gfn(1, 4, 5);
    assert_eq!(
        run(&t, &mut v, &mut pos, 1 << 36),
        ControlFlow::Break(gfn(1, 4, 5))
    );
    assert_eq!(pos, gfn(1, 4, 5));
    assert_eq!(
        run(&t, &mut v, &mut pos, 1 << 36),
        ControlFlow::Continue(())
    );
    assert_eq!(v.seen[0], (Visit::TablePost, L2, gfn(1, 4, 5)));
}

/// Links a table from every empty entry above the last level on the way to its range, as a
/// map does, and records the leaves it then meets.
struct Linker {
    tree: Tree,
    leaves: Vec<(Level, u64)>,
}

impl<'a> Visitor<'a> for Linker {
    const FLAGS: u32 = LEAF;
    type Break = ();

    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        if ctx.old == 0 && ctx.level > walk::LAST_LEVEL {
            let t = P::alloc_table().unwrap();
            self.tree.pages.push(t);
            assert_eq!(ctx.set(table_entry(t)), Ok(()));
            return Step::Reload;
        }
        self.leaves.push((ctx.level, ctx.addr));
        Step::Continue
    }
}

#[test]
fn a_reload_goes_into_the_table_the_visitor_linked() {
    let mut v = Linker {
        tree: Tree::new(),
        leaves: Vec::new(),
    };
    let root = v.tree.root;
    let mut pos = gfn(2, 3, 4);
    // SAFETY: the tree is alive; tables are only added.
    let flow = unsafe {
        walk::<Toy, P, _>(
            &Tables::new(core::slice::from_ref(&root), L0, 0, 1 << 36),
            &mut pos,
            gfn(2, 3, 6),
            &mut v,
        )
    };
    assert_eq!(flow, ControlFlow::Continue(()));
    // Three tables linked on the way down, then the two 4K entries of the range.
    assert_eq!(v.tree.pages.len(), 4);
    assert_eq!(v.leaves, [(L3, gfn(2, 3, 4)), (L3, gfn(2, 3, 5))]);
}

/// Counts visits, down to level 2 only.
struct Shallow(Vec<(Visit, Level)>);

impl<'a> Visitor<'a> for Shallow {
    const FLAGS: u32 = ALL;
    const BOTTOM: Level = L2;
    type Break = ();

    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<()> {
        if visit != Visit::Leaf || ctx.old != 0 {
            self.0.push((visit, ctx.level));
        }
        Step::Continue
    }
}

#[test]
fn the_walk_does_not_go_below_the_bottom() {
    let (t, _, _) = sample();
    let mut v = Shallow(Vec::new());
    // SAFETY: the tree is alive, and nothing frees its tables meanwhile.
    let _ = unsafe { walk::<Toy, P, _>(&t.tables(), &mut 0, 1 << 36, &mut v) };
    use Visit::*;
    assert_eq!(
        v.0,
        [
            (TablePre, L0),
            (TablePre, L1),
            (Leaf, L2),
            (TablePre, L2),
            (TablePost, L2),
            (TablePost, L1),
            (Leaf, L1),
            (TablePost, L0)
        ]
    );
}

#[test]
fn find_stops_at_the_first_entry_that_is_not_a_table() {
    let (t, l2, l3) = sample();
    // SAFETY: the tree is alive, and nothing frees its tables meanwhile.
    let f = |g| unsafe { find::<Toy, P>(&t.tables(), g) };
    let page = f(gfn(1, 4, 6)).unwrap();
    assert_eq!((page.old, page.level), (leaf(0x2006), L3));
    assert!(core::ptr::eq(page.ptep, Tree::entry(l3, 6)));
    let block = f(gfn(1, 3, 100)).unwrap();
    assert_eq!((block.old, block.level), (leaf(0x1000), L2));
    assert!(core::ptr::eq(block.ptep, Tree::entry(l2, 3)));
    let empty = f(gfn(1, 4, 7)).unwrap();
    assert_eq!((empty.old, empty.level), (0, L3));
    let empty = f(gfn(3, 0, 0)).unwrap();
    assert_eq!((empty.old, empty.level), (0, L1));
    assert!(f(1 << 36).is_none());
}

/// A hook that yields at every `n`-th poll and records what was asked of it.
struct Hook {
    polls: u64,
    n: u64,
    events: Vec<&'static str>,
}

impl YieldHook for Hook {
    fn should_yield(&mut self) -> bool {
        self.polls += 1;
        self.events.push("poll");
        self.polls.is_multiple_of(self.n)
    }

    fn flush(&mut self) {
        self.events.push("flush");
    }
}

/// A visitor `v` that yields as `hook` says: what [`walk_yielding()`] walks with.
struct Yielding<V> {
    v: V,
    hook: Hook,
}

impl<'a, V: Visitor<'a>> Visitor<'a> for Yielding<V> {
    const FLAGS: u32 = V::FLAGS;
    const BOTTOM: Level = V::BOTTOM;
    type Break = V::Break;

    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<V::Break> {
        self.v.visit(ctx, visit)
    }
}

impl<V> YieldHook for Yielding<V> {
    fn should_yield(&mut self) -> bool {
        self.hook.should_yield()
    }

    fn flush(&mut self) {
        self.hook.flush()
    }
}

#[test]
fn a_yielding_walk_flushes_exactly_before_each_yield_and_visits_everything_once() {
    let mut t = Tree::new();
    // 40 pages spread over two 4K tables and a block, in two 1G regions.
    let a = t.link(t.root, 0);
    let a2 = t.link(a, 0);
    let a3 = t.link(a2, 0);
    let b3 = t.link(a2, 9);
    for i in 0..20 {
        t.set(a3, i * 3, leaf(0x100 + i as u64));
        t.set(b3, 500 - i, leaf(0x200 + i as u64));
    }
    let b2 = t.link(a, 5);
    t.set(b2, 17, leaf(0x4000));

    for (every, n) in [(5, 1), (6, 2), (7, 1), (50, 3), (10_000, 1)] {
        let mut y = Yielding {
            v: Recorder::<LEAF>::new(),
            hook: Hook {
                polls: 0,
                n,
                events: Vec::new(),
            },
        };
        let (mut pos, mut budget, mut visited, mut yields) = (0, every, 0, 0);
        loop {
            let tables = t.tables();
            // SAFETY: the tree is alive, and nothing frees its tables meanwhile.
            let w = unsafe {
                walk_yielding::<Toy, P, _>(
                    &tables,
                    &mut pos,
                    1 << 36,
                    &mut y,
                    &mut budget,
                    every,
                    &mut visited,
                )
            };
            match w {
                Walked::Done => break,
                Walked::Yielded => {
                    let hook = &y.hook;
                    // Flushed just now, after the poll that asked for the yield.
                    assert_eq!(hook.events[hook.events.len() - 2..], ["poll", "flush"]);
                    yields += 1;
                }
                Walked::Broke(_) => unreachable!(),
            }
        }
        let (v, hook) = (&y.v, &y.hook);
        // Every valid leaf exactly once, in order, whatever the yields.
        let leaves: Vec<u64> = v.seen.iter().map(|&(_, _, a)| a).collect();
        let mut sorted = leaves.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(leaves, sorted, "every {every}");
        assert_eq!(leaves.len(), 41, "every {every}");
        // One flush per yield, each right after the poll that asked for it, and no other.
        let flushes = hook.events.iter().filter(|e| **e == "flush").count();
        assert_eq!(flushes, yields, "every {every}");
        for (i, e) in hook.events.iter().enumerate() {
            if *e == "flush" {
                assert_eq!(hook.events[i - 1], "poll");
            }
        }
        assert_eq!(hook.polls / n, yields as u64, "every {every}");
        if every == 10_000 {
            assert_eq!((hook.polls, yields), (0, 0));
        }
        assert!(visited >= 41);
    }
}
