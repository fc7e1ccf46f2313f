// SPDX-License-Identifier: GPL-2.0

//! The one page-table walker of secmmu, shared by every table operation of both formats (x86
//! EPT in `x86/mmu.rs`, arm64 stage-2 in `arm64/mmu.rs`): maps, zaps, aging, lookups, the
//! freeing of subtrees.  Each operation is a [`Visitor`] of [`walk()`], as each stage-2
//! operation of KVM is a `struct kvm_pgtable_walker` of `kvm_pgtable_walk()`
//! (`arch/arm64/kvm/hyp/pgtable.c`); the index arithmetic, the descent and the safety argument
//! for dereferencing a table are written once, here.
//!
//! Geometry.  Both formats have 4 KiB tables of 512 entries (`pgtable::Table`), 9 bits of gfn
//! per level, and up to four levels, [`Level`]s numbered like Linux's `PG_LEVEL_*`: level
//! [`LAST_LEVEL`] ([`Level::L4K`]) maps 4K pages, [`Level::L2M`] 2M, [`Level::L1G`] 1G, and
//! [`Level::L512G`] (x86's root, arm64's level 0) only points at tables; a walk goes down from
//! its start level with [`Level::lower()`] where KVM arm64's goes `level + 1` (`level.rs`).
//! What differs, the encoding of an entry, is the [`PteEncoding`] trait; where a walk
//! starts (the start level, and how many tables are concatenated there) is [`Tables`].
//!
//! The walk.  [`walk()`] visits, in gfn order, every entry that overlaps `[pos, end)`, at every
//! level, descending into the tables that table entries point at, like `__kvm_pgtable_walk()`:
//!
//! - a table entry is visited before its table ([`Visit::TablePre`], `KVM_PGTABLE_WALK_TABLE_PRE`)
//!   and after it ([`Visit::TablePost`], `KVM_PGTABLE_WALK_TABLE_POST`);
//! - any other entry (a leaf, an empty or a locked entry) once ([`Visit::Leaf`],
//!   `KVM_PGTABLE_WALK_LEAF`).
//!
//! A visitor says which of these it wants ([`Visitor::FLAGS`]); after a pre or leaf visit that
//! changed the entry it asks for a reload ([`Step::Reload`]), and the walk goes on from the new
//! value: into the table a map just linked, or past the block a map just put where a table
//! was, as KVM's walker reloads after its callbacks.  A visitor that breaks ([`Step::Break`])
//! ends the walk; the table entries above it get no post visit.
//!
//! Resuming.  The walk position is the caller's (`pos`, the `tdp_iter` way): it moves past every
//! entry the walk is done with, and a break leaves it at the entry the visitor broke on, so a
//! walk started again from the root at `pos` visits that entry again (with its subtree, for a
//! post visit).  Resuming from the root, not from the table the walk stopped in, is what makes
//! it safe to drop the MMU lock in between: that table may be freed meanwhile, the root is not.
//! [`walk_yielding()`] polls its visitor, a [`YieldHook`], every so many entries and, when it
//! asks to yield, has the caller's TLB flush done first, as `tdp_mmu_iter_cond_resched()`
//! flushes before it drops the lock ("Yielding in long walks" in
//! `Documentation/secmmu-protocols.rst`); the zaps yield through the zap driver (`zap.rs`).
//!
//! Why a table the walk dereferences is not freed under it.  A table page is freed only when
//! the MMU is dropped, or once unlinked, with the MMU lock held for write, after the TLB flush
//! that followed the unlink (KVM's `kvm_mmu_commit_zap_page()` after
//! `kvm_flush_remote_tlbs()`, stage-2's `free_unlinked_table()` after its grace period).  So a
//! walk may dereference every table it reaches through a table entry it loaded, for as long as
//! it holds the MMU lock (either side: the unlink and free both need the write side, or the
//! free does and a walk under the read side ends before it), or stays in guest mode (the flush
//! waits for every vCPU to leave it).  The callers of [`walk()`] promise one of these; a walk of
//! an unlinked subtree is done by whoever owns it.  Entries are loaded with `Acquire`, which
//! pairs with the `Release` that published the table or leaf they hold: the walk sees a new
//! table zeroed, and the page a new leaf maps as it was when it was mapped.
//!
//! No allocation, no `dyn`: the walk is generic over the format, the page source and the
//! visitor, and inlined into each operation.
//!
//! Kernel-free: built into the module and into the host crate.

use core::marker::PhantomData;
use core::ops::ControlFlow;

use crate::mmu::level::{Level, TABLE_SHIFT};
use crate::mmu::pgtable::{PageOps, Table, ENTRIES_PER_TABLE};
use crate::mmu::prim::{AtomicU64, Ordering};

/// The last level: its entries map 4K pages, and are never tables.
pub(crate) const LAST_LEVEL: Level = Level::L4K;

/// Most levels of a walk.
const MAX_LEVELS: usize = Level::ALL.len();

const _: () = assert!(ENTRIES_PER_TABLE == 1 << TABLE_SHIFT);

/// How a format encodes its entries, as far as the walker cares: KVM's `kvm_pte_valid()` and
/// `kvm_pte_table()` on arm64, `is_shadow_present_pte()` and `is_last_spte()` on x86.  (The rest
/// of a format, its MMU, is behind the seam of `format.rs`, `format::Format`.)
pub(crate) trait PteEncoding {
    /// The largest level that can hold a leaf (a block; KVM's `KVM_PGTABLE_MIN_BLOCK_LEVEL`):
    /// levels from [`LAST_LEVEL`] up to it map.
    const MAX_LEAF: Level;

    /// Whether the entry is valid (present): the hardware walker uses it.
    fn is_valid(entry: u64) -> bool;

    /// Whether the entry at `level` points at a table.  Never true at [`LAST_LEVEL`].
    fn is_table(entry: u64, level: Level) -> bool;

    /// The pfn of the table the table entry `entry` points at.
    fn table_pfn(entry: u64) -> u64;

    /// Whether the entry at `level` is a valid leaf: a page at the last level, a block above.
    #[inline(always)]
    fn is_leaf(entry: u64, level: Level) -> bool {
        Self::is_valid(entry) && !Self::is_table(entry, level)
    }
}

/// Where walks start: `pfns.len()` concatenated tables at `level` (a root: x86's one table at
/// [`Level::L512G`], a stage-2 start level of up to 16 tables; or an unlinked subtree), the first of
/// which covers gfns from `base`, translating gfns below `limit`.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'a> {
    pfns: &'a [u64],
    level: Level,
    base: u64,
    limit: u64,
}

impl<'a> Tables<'a> {
    /// The tables `pfns` at `level`, covering gfns from `base` (aligned to what one table at
    /// `level` covers) up to `limit` at most.
    #[inline(always)]
    pub(crate) fn new(pfns: &'a [u64], level: Level, base: u64, limit: u64) -> Self {
        debug_assert_eq!(base & (level.table_pages() - 1), 0);
        let span = pfns.len() as u64 * level.table_pages();
        Tables {
            pfns,
            level,
            base,
            limit: limit.min(base + span),
        }
    }

    /// The single table `pfn` at `level`, whose first entry maps `base`: a subtree.
    #[inline(always)]
    pub(crate) fn subtree(pfn: &'a u64, level: Level, base: u64) -> Self {
        Self::new(core::slice::from_ref(pfn), level, base, u64::MAX)
    }

    /// One past the last gfn the tables translate.
    #[inline(always)]
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

/// `KVM_PGTABLE_WALK_LEAF`: visit entries that are not tables.
pub(crate) const LEAF: u32 = 1 << 0;
/// `KVM_PGTABLE_WALK_TABLE_PRE`: visit table entries before their table.
pub(crate) const TABLE_PRE: u32 = 1 << 1;
/// `KVM_PGTABLE_WALK_TABLE_POST`: visit table entries after their table.
pub(crate) const TABLE_POST: u32 = 1 << 2;
/// `KVM_PGTABLE_WALK_SHARED`: the walk runs under the read side of the MMU lock, or none, and
/// others change entries meanwhile: [`Ctx::set()`] compare-exchanges.
pub(crate) const SHARED: u32 = 1 << 3;

/// Which visit of an entry this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Visit {
    /// An entry that is not a table: a leaf, empty, or locked.
    Leaf,
    /// A table entry, before the walk goes into its table.
    TablePre,
    /// A table entry, after the walk went through its table (or the part of it in the range).
    TablePost,
}

impl Visit {
    /// The flag that asks for this visit.
    #[inline(always)]
    const fn flag(self) -> u32 {
        match self {
            Visit::Leaf => LEAF,
            Visit::TablePre => TABLE_PRE,
            Visit::TablePost => TABLE_POST,
        }
    }
}

/// What a visitor sees of an entry (KVM's `struct kvm_pgtable_visit_ctx`).
pub(crate) struct Ctx<'a> {
    /// The entry.  Shared walks change it only with compare-exchanges ([`Ctx::set()`]).
    pub(crate) ptep: &'a AtomicU64,
    /// The value loaded from it (for a post visit: the value the walk went down through).
    pub(crate) old: u64,
    /// Its level.
    pub(crate) level: Level,
    /// Where the walk entered it: its first gfn, or the start of the walk if that lies inside.
    pub(crate) addr: u64,
    /// The visitor's [`Visitor::FLAGS`].
    pub(crate) flags: u32,
}

impl Ctx<'_> {
    /// The first gfn the entry maps.
    #[inline(always)]
    pub(crate) fn base(&self) -> u64 {
        self.level.align_down(self.addr)
    }

    /// Number of gfns the entry maps.
    #[inline(always)]
    pub(crate) fn pages(&self) -> u64 {
        self.level.pages()
    }

    /// One past the last gfn the entry maps.
    #[inline(always)]
    pub(crate) fn end(&self) -> u64 {
        self.base() + self.pages()
    }

    /// Replaces [`Ctx::old`] by `new` (KVM's `stage2_try_set_pte()`): with a compare-exchange
    /// in a [`SHARED`] walk, which fails, returning the value found, if another walker changed
    /// the entry since it was loaded; with a store otherwise (the write side of the MMU lock:
    /// only walkers that set accessed and dirty bits race, and only on leaves).  `Release` on
    /// success publishes what the caller did before (a table's zeroes, a page's contents) to
    /// walkers that `Acquire`-load the entry; `Acquire` on failure, as the caller goes on from
    /// the value found.
    #[inline(always)]
    pub(crate) fn set(&self, new: u64) -> Result<(), u64> {
        if self.flags & SHARED != 0 {
            self.ptep
                .compare_exchange(self.old, new, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| ())
        } else {
            self.ptep.store(new, Ordering::Release);
            Ok(())
        }
    }
}

/// What a visitor wants the walk to do next.
pub(crate) enum Step<B> {
    /// Go on with the value loaded.
    Continue,
    /// The visitor changed the entry: load it again and go on from the new value (into its
    /// table if it is one now).  Only from a leaf or pre visit.
    Reload,
    /// End the walk at this entry: the position stays at it.
    Break(B),
}

/// An operation on the entries of a walk (KVM's `struct kvm_pgtable_walker`).
pub(crate) trait Visitor<'a> {
    /// The visits it wants: [`LEAF`], [`TABLE_PRE`], [`TABLE_POST`], and [`SHARED`] if it runs
    /// under the read side of the MMU lock.
    const FLAGS: u32;

    /// The deepest level whose entries the walk visits: a table entry at this level is visited
    /// before and after its table, but the walk does not go into it.  The zaps that look for
    /// empty tables stop above the last level, whose tables they check whole.
    const BOTTOM: Level = LAST_LEVEL;

    /// Why it ends a walk.
    type Break;

    /// Visits the entry `ctx` as `visit` says.
    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<Self::Break>;
}

/// A table being walked, and the entry that links it, for its post visit.
#[derive(Clone, Copy)]
struct Parent<'a> {
    /// The table that holds the entry.
    table: &'a Table,
    /// The entry.
    ptep: &'a AtomicU64,
    /// The value the walk went down through.
    old: u64,
    /// Where the walk entered the entry.
    addr: u64,
    /// Its level.
    level: Level,
}

/// Visits every entry of `tables` that overlaps `[*pos, end)`, and of the tables under them, in
/// gfn order, as `v` asks (see the module documentation), moving `*pos` past each entry it is
/// done with (KVM's `kvm_pgtable_walk()`).
///
/// Returns [`ControlFlow::Break`] with `*pos` at the entry `v` broke on: a walk from `*pos` visits
/// it again.  Otherwise `*pos` ends at or past `end` (or the tables' limit).
///
/// # Safety
///
/// `tables` are tables of an MMU whose pages come from `P`, and for `'a` none of them, nor any
/// table linked under them, is freed: the caller holds the MMU lock (either side) or stays in
/// guest mode for `'a`, and the MMU is not dropped, or the tables are an unlinked subtree that
/// only the caller can free (see the module documentation).
#[inline(always)]
pub(crate) unsafe fn walk<'a, E: PteEncoding, P: PageOps, V: Visitor<'a>>(
    tables: &Tables<'a>,
    pos: &mut u64,
    end: u64,
    v: &mut V,
) -> ControlFlow<V::Break> {
    let end = end.min(tables.limit);
    if *pos < tables.base {
        *pos = tables.base;
    }
    let top_shift = tables.level.gfn_shift() + TABLE_SHIFT;
    while *pos < end {
        let i = ((*pos - tables.base) >> top_shift) as usize;
        let Some(&pfn) = tables.pfns.get(i) else {
            break;
        };
        // SAFETY: one of `tables`, not freed for 'a, per the caller.
        let table = unsafe { P::table::<'a>(pfn) };
        // SAFETY: as above, for the tables under it.
        unsafe { walk_table::<E, P, V>(table, tables.level, pos, end, v) }?;
    }
    ControlFlow::Continue(())
}

/// [`walk()`] in one table `top` at `top_level`, from `*pos` (inside it) to its end or `end`.
///
/// # Safety
///
/// As for [`walk()`]: `top` and the tables under it are not freed for `'a`.
#[inline(always)]
unsafe fn walk_table<'a, E: PteEncoding, P: PageOps, V: Visitor<'a>>(
    top: &'a Table,
    top_level: Level,
    pos: &mut u64,
    end: u64,
    v: &mut V,
) -> ControlFlow<V::Break> {
    let placeholder = Parent {
        table: top,
        ptep: &top[0],
        old: 0,
        addr: 0,
        level: top_level,
    };
    // The table entries the walk went down through, `parents[..depth]`: at most one per level.
    let mut parents = [placeholder; MAX_LEVELS];
    let mut depth = 0;
    let mut table = top;
    let mut level = top_level;
    loop {
        let addr = *pos;
        let ptep = &table[level.index(addr)];
        // Acquire: pairs with the Release that published the table or leaf (module doc).
        let mut old = ptep.load(Ordering::Acquire);
        let mut is_table = E::is_table(old, level);
        let visit = if is_table {
            Visit::TablePre
        } else {
            Visit::Leaf
        };
        if V::FLAGS & visit.flag() != 0 {
            let ctx = Ctx {
                ptep,
                old,
                level,
                addr,
                flags: V::FLAGS,
            };
            match v.visit(&ctx, visit) {
                Step::Continue => {}
                Step::Reload => {
                    old = ptep.load(Ordering::Acquire);
                    is_table = E::is_table(old, level);
                }
                Step::Break(b) => return ControlFlow::Break(b),
            }
        }
        match level.lower() {
            Some(lower) if is_table && level > V::BOTTOM => {
                parents[depth] = Parent {
                    table,
                    ptep,
                    old,
                    addr,
                    level,
                };
                depth += 1;
                // SAFETY: linked by the table entry `old` just loaded, so not freed for 'a, per
                // the caller (module documentation).
                table = unsafe { P::table::<'a>(E::table_pfn(old)) };
                level = lower;
                continue;
            }
            _ => {}
        }
        if is_table && V::FLAGS & TABLE_POST != 0 {
            // At the bottom: its table is not walked, so it is done with at once.
            let ctx = Ctx {
                ptep,
                old,
                level,
                addr,
                flags: V::FLAGS,
            };
            if let Step::Break(b) = v.visit(&ctx, Visit::TablePost) {
                return ControlFlow::Break(b);
            }
        }
        *pos = level.align_down(addr) + level.pages();
        // Go up from the tables this was the last entry of, or the walk's last entry.
        while *pos >= end || level.index(*pos) == 0 {
            if depth == 0 {
                // The top table is done: the caller goes on in the next one, if any.
                return ControlFlow::Continue(());
            }
            depth -= 1;
            let p = parents[depth];
            table = p.table;
            level = p.level;
            if V::FLAGS & TABLE_POST != 0 {
                let ctx = Ctx {
                    ptep: p.ptep,
                    old: p.old,
                    level: p.level,
                    addr: p.addr,
                    flags: V::FLAGS,
                };
                if let Step::Break(b) = v.visit(&ctx, Visit::TablePost) {
                    *pos = p.addr;
                    return ControlFlow::Break(b);
                }
            }
        }
    }
}

/// The entry a walk to one gfn ends at: the first that is not a table (a leaf, an empty or a
/// locked entry), with the value loaded from it and its level.
#[derive(Clone, Copy)]
pub(crate) struct Found<'a> {
    /// The entry.
    pub(crate) ptep: &'a AtomicU64,
    /// The value loaded from it.
    pub(crate) old: u64,
    /// Its level.
    pub(crate) level: Level,
}

/// The visitor of [`find()`]: breaks at the first entry that is not a table.
struct FindVisitor;

impl<'a> Visitor<'a> for FindVisitor {
    const FLAGS: u32 = LEAF | SHARED;
    type Break = Found<'a>;

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, _visit: Visit) -> Step<Found<'a>> {
        Step::Break(Found {
            ptep: ctx.ptep,
            old: ctx.old,
            level: ctx.level,
        })
    }
}

/// Walks `tables` towards `gfn` down to the first entry that is not a table: the hardware's
/// walk, and the lookups (KVM's `kvm_pgtable_get_leaf()`).  `None` if `gfn` is outside the
/// tables.
///
/// # Safety
///
/// As for [`walk()`].
#[inline(always)]
pub(crate) unsafe fn find<'a, E: PteEncoding, P: PageOps>(
    tables: &Tables<'a>,
    gfn: u64,
) -> Option<Found<'a>> {
    if gfn < tables.base || gfn >= tables.limit {
        return None;
    }
    let mut pos = gfn;
    // SAFETY: per the caller.
    match unsafe { walk::<E, P, _>(tables, &mut pos, gfn + 1, &mut FindVisitor) } {
        ControlFlow::Break(found) => Some(found),
        // Not reached: a walk of a gfn inside the tables ends at an entry that is not a table,
        // at the last level at the latest.
        ControlFlow::Continue(()) => None,
    }
}

/// The visitor of [`first_leaf()`]: breaks at the first valid leaf.
struct FirstLeaf<E>(PhantomData<fn() -> E>);

impl<'a, E: PteEncoding> Visitor<'a> for FirstLeaf<E> {
    const FLAGS: u32 = LEAF;
    type Break = (u64, Found<'a>);

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, _visit: Visit) -> Step<Self::Break> {
        if !E::is_leaf(ctx.old, ctx.level) {
            return Step::Continue;
        }
        let found = Found {
            ptep: ctx.ptep,
            old: ctx.old,
            level: ctx.level,
        };
        Step::Break((ctx.base(), found))
    }
}

/// The first valid leaf of `tables` that maps a gfn in `[from, end)`, with the first gfn it
/// maps: skips empty subtrees a whole entry at a time (the coherence audit's walk).
///
/// # Safety
///
/// As for [`walk()`].
#[inline(always)]
pub(crate) unsafe fn first_leaf<'a, E: PteEncoding, P: PageOps>(
    tables: &Tables<'a>,
    from: u64,
    end: u64,
) -> Option<(u64, Found<'a>)> {
    let mut pos = from;
    // SAFETY: per the caller.
    let flow = unsafe { walk::<E, P, _>(tables, &mut pos, end, &mut FirstLeaf::<E>(PhantomData)) };
    flow.break_value()
}

/// Why a [`Budget`] walk stopped.
pub(crate) enum Stop<B> {
    /// The budget ran out: a safe point to yield at.
    Budget,
    /// The visitor broke.
    Visitor(B),
}

/// A visitor that counts the entries `V` is walked over, and stops the walk when `left` of
/// them are done ([`Stop::Budget`]): the walk's safe points, where it may yield, come every so
/// many entries (KVM's zaps poll `need_resched()` at every entry, the rmap walks every few).
/// Every entry counts once, at its leaf or pre visit, at every level down to `V::BOTTOM`.
pub(crate) struct Budget<'v, V> {
    /// The visitor.
    pub(crate) inner: &'v mut V,
    /// Entries it may still visit before the walk stops.
    pub(crate) left: u64,
    /// Entries visited.
    pub(crate) spent: u64,
}

impl<'v, V> Budget<'v, V> {
    /// `inner`, stopped after `left` entries.
    #[inline(always)]
    pub(crate) fn new(inner: &'v mut V, left: u64) -> Self {
        Budget {
            inner,
            left,
            spent: 0,
        }
    }
}

impl<'a, V: Visitor<'a>> Visitor<'a> for Budget<'_, V> {
    const FLAGS: u32 = V::FLAGS | LEAF | TABLE_PRE;
    const BOTTOM: Level = V::BOTTOM;
    type Break = Stop<V::Break>;

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<Self::Break> {
        if visit != Visit::TablePost {
            if self.left == 0 {
                return Step::Break(Stop::Budget);
            }
            self.left -= 1;
            self.spent += 1;
        }
        if V::FLAGS & visit.flag() == 0 {
            return Step::Continue;
        }
        match self.inner.visit(ctx, visit) {
            Step::Continue => Step::Continue,
            Step::Reload => Step::Reload,
            Step::Break(b) => Step::Break(Stop::Visitor(b)),
        }
    }
}

/// The caller's side of a walk that may yield the MMU lock (KVM's `tdp_mmu_iter_cond_resched()`
/// and the callers of `cond_resched_rwlock_write()`): implemented by the visitor of a
/// [`walk_yielding()`], which knows what its walk cleared.
pub(crate) trait YieldHook {
    /// Whether to yield now: someone needs the CPU or the lock.  Asked at safe points only.
    fn should_yield(&mut self) -> bool;

    /// Called once before every yield, and never otherwise: flush the TLBs of what the walk
    /// cleared and wait for the flush, before the lock is dropped and the tables the walk
    /// unlinked are freed ("TLB flush before dropping the MMU lock" and "TLB flush before
    /// freeing tables" in `Documentation/secmmu-protocols.rst`).  The zaps' hook is the zap
    /// driver's (`zap::Zap`).
    fn flush(&mut self);
}

/// How a [`walk_yielding()`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Walked<B> {
    /// Every entry of the range was visited.
    Done,
    /// The hook asked to yield, and flushed: drop the lock, and resume from `pos`.
    Yielded,
    /// The visitor broke.
    Broke(B),
}

/// [`walk()`] with safe points every `every` entries (counted across calls in `budget`, so that
/// a caller walking several roots polls at the same rate), where the visitor `v` is asked
/// whether to yield: if it says so, it flushes ([`YieldHook::flush()`]) and the walk returns
/// [`Walked::Yielded`] with `*pos` at the next entry to visit; the caller drops the lock and
/// walks again from the root at `*pos` (whatever it walked before may be gone by then).
/// Otherwise the walk goes on, from the root too (the walk of a budget is done with its
/// tables).  `visited` counts the entries visited.
///
/// `every` is larger than the entries on a path from the root to a leaf, so that a walk
/// resumed at `*pos` gets past it before its next safe point: every yield follows progress
/// (as `tdp_mmu_iter_cond_resched()` yields only once the iterator moved).
///
/// # Safety
///
/// As for [`walk()`].
#[inline(always)]
pub(crate) unsafe fn walk_yielding<'a, E: PteEncoding, P: PageOps, V: Visitor<'a> + YieldHook>(
    tables: &Tables<'a>,
    pos: &mut u64,
    end: u64,
    v: &mut V,
    budget: &mut u64,
    every: u64,
    visited: &mut u64,
) -> Walked<V::Break> {
    debug_assert!(every > MAX_LEVELS as u64);
    loop {
        let mut b = Budget::new(v, *budget);
        // SAFETY: per the caller.
        let flow = unsafe { walk::<E, P, _>(tables, pos, end, &mut b) };
        *budget = b.left;
        *visited += b.spent;
        match flow {
            ControlFlow::Continue(()) => return Walked::Done,
            ControlFlow::Break(Stop::Visitor(brk)) => return Walked::Broke(brk),
            ControlFlow::Break(Stop::Budget) => {
                *budget = every;
                if v.should_yield() {
                    v.flush();
                    return Walked::Yielded;
                }
            }
        }
    }
}

/// The visitor of [`free_subtree()`]: with `LEAVES`, it calls `leaf` on every entry that is not
/// a table.
struct Free<E, L, T, const LEAVES: bool> {
    /// Called on every entry that is not a table, with its level.
    leaf: L,
    /// Called on the entry of each table the walk is done with, to free that table.
    free: T,
    _format: PhantomData<fn() -> E>,
}

impl<'a, E: PteEncoding, L: FnMut(u64, Level), T: FnMut(u64), const LEAVES: bool> Visitor<'a>
    for Free<E, L, T, LEAVES>
{
    const FLAGS: u32 = TABLE_POST | if LEAVES { LEAF } else { 0 };
    // Without leaves to see, the entries of the last-level tables need no load.
    const BOTTOM: Level = if LEAVES { LAST_LEVEL } else { Level::L2M };
    type Break = ();

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<()> {
        match visit {
            Visit::Leaf => (self.leaf)(ctx.old, ctx.level),
            // The walk is done with the table under the entry (post-order): free it.  The walk
            // goes on in the table that holds the entry, freed after it.
            _ => (self.free)(E::table_pfn(ctx.old)),
        }
        Step::Continue
    }
}

/// Frees the table `pfn` at `level` and every table under it, bottom-up (KVM's
/// `stage2_free_walker()`, `kvm_pgtable_stage2_destroy()`), calling `freed()` once per table
/// page freed; with `LEAVES`, first calls `leaf(entry, level)` on every entry that is not a
/// table (a leaf, an empty or a locked entry), for the caller's accounting.
///
/// # Safety
///
/// `pfn` came from `P::alloc_table()` and is not freed yet; no walker can reach it any more
/// (it was unlinked and a TLB flush with the MMU lock held for write since waited for every
/// walker, or the MMU is being dropped); and each table under it is linked only from it or the
/// tables under it.
pub(crate) unsafe fn free_subtree<E: PteEncoding, P: PageOps, const LEAVES: bool>(
    pfn: u64,
    level: Level,
    leaf: impl FnMut(u64, Level),
    mut freed: impl FnMut(),
) {
    {
        let mut v = Free::<E, _, _, LEAVES> {
            leaf,
            free: |child| {
                // SAFETY: a table under `pfn`, linked only there, so unreachable like it, and its
                // own tables are freed already (post-order): from `alloc_table()`, not freed yet.
                unsafe { P::free_table(child) };
                freed();
            },
            _format: PhantomData,
        };
        let tables = Tables::subtree(&pfn, level, 0);
        let mut pos = 0;
        // SAFETY: nothing but this walk frees the tables under `pfn` (per the caller), and it
        // frees each only once done with it.
        let _ = unsafe { walk::<E, P, _>(&tables, &mut pos, tables.limit, &mut v) };
    }
    // SAFETY: from `alloc_table()`, unreachable per the caller; the walk is done with it.
    unsafe { P::free_table(pfn) };
    freed();
}
