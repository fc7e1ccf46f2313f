// SPDX-License-Identifier: GPL-2.0

//! The arm64 stage-2 MMU: stage-2 page tables with a 4 KiB granule (`pte.rs`), built and walked
//! like KVM's `arch/arm64/kvm/hyp/pgtable.c` with parallel faults, and a lockless walker that
//! plays the hardware ([`translate()`]).
//!
//! Section names in quotes are those of Documentation/secmmu-protocols.rst, which states the rules
//! cited here and the KVM functions that keep them.
//!
//! Roots.  Each root is an independent set of tables (an address space), like the x86 MMU's.
//! A root's start level may concatenate up to 16 tables (`pte::Geometry`).  Hardware needs them
//! physically contiguous and aligned to their total size (one `VTTBR_EL2` base); a software walker
//! does not, so each root keeps an array of start-level table pfns (`S2Root`), each table
//! allocated alone.  Roots are allocated by [`S2Mmu::new()`] and live as long as the MMU.
//!
//! No rmaps: zaps and aging walk the tables over the gfn range, skipping empty subtrees (an empty
//! entry at level `l` covers `512^(3-l)` gfns).
//!
//! Locking (KVM's `mmu_lock`, a spinning rwlock owned by the caller):
//!
//! - `&S2Mmu` means the read side is held (or the write side).  Faults run in parallel under it,
//!   like KVM's stage-2 faults since 6.2 ("Locked entries", "Break-before-make", "Publishing with
//!   release"): [`S2Mmu::map()`], which links tables, installs leaves, relaxes permissions and
//!   replaces stale leaves, and [`S2Mmu::mkyoung()`] (the access-flag fault, KVM's
//!   `handle_access_fault()`).  Aging runs under it too ("Stage-2 aging under the read side", KVM
//!   since 6.11): [`S2Mmu::age_gfn_range()`].  So do the snapshot and the statistics, which only
//!   load.  Every change of an entry under the read side is a compare-exchange from the value the
//!   walker loaded, and fails if another walker changed it.
//! - `&mut S2Mmu` means the write side is held: the zaps and the teardown.  Only they remove
//!   valid leaves outside a break-before-make.
//! - [`translate()`] takes no lock, like the hardware walking stage-2 tables.  Its caller keeps
//!   the MMU from being dropped while it walks (a vCPU holds its space).
//!
//! Invariants, each kept by the code that says so:
//!
//! - I1. Every table page is a start-level table of a root, or is linked by exactly one valid
//!   table entry of this MMU, or was unlinked (by a block map, or by a zap that emptied it) and
//!   waits to be freed.  A table page is freed only when the MMU is dropped, or, once unlinked,
//!   with the write side of the MMU lock held ([`S2Mmu::free_unlinked()`],
//!   [`ZapTables::free_zapped_tables()`]) and after a TLB flush that followed the unlink: no walker
//!   under the read side (faults, agers, the snapshot) can be inside it then, and the hardware
//!   walker ([`translate()`], guest mode only) left it at that flush, after which it cannot
//!   reach it again.  So a walker that read a table entry may dereference the table it points
//!   at for as long as it holds the MMU lock (either side) or stays in guest mode.  Links appear
//!   with a compare-exchange from invalid, or with the make of a block broken into a table;
//!   they go when a table is replaced by a block (KVM frees such a table after an RCU grace
//!   period, `free_unlinked_table()`; here the write side plays the grace period), and when a
//!   zap under the write side leaves a table empty (KVM's `stage2_unmap_walker()` frees a
//!   table whose last entry it cleared).
//! - I2. An entry holding [`LOCKED`](pte::LOCKED) is owned by the walker that locked it with
//!   `pte::try_break()`, and only that walker changes it, once, with `pte::make()`.  Everybody
//!   else fails on it: a mapper returns [`MapError::Again`] (never takes it over, "Locked
//!   entries"), an ager skips it, the hardware walker faults.  The owner does not drop the MMU lock
//!   in between, so a holder of the write side never sees a locked entry.
//! - I3. Only compare-exchanges from a value loaded from the entry change it under the read side
//!   or without lock, and the new value is computed from that value.  So a change can never
//!   undo another one made in between: a leaf zapped or broken meanwhile is not made valid again
//!   by setting or clearing AF, and a table linked by a racing mapper is not overwritten.
//! - I4. A stage-2 leaf has no dirty bit: a writable leaf counts as dirty.  Whoever removes a
//!   writable leaf (zap, break-before-make) marks its page dirty; permission changes under the
//!   read side only add permissions (relax), never remove W.  With dirty-bit logging
//!   ([`S2Mmu::set_hw_dbm()`]) the walker also adds W, to a page that [`pte::SW_WRITABLE`]
//!   marks (the dirty bit modifier), as hardware DBM does: W stays the dirty state, and only the
//!   write side takes it away (dirty logging's write protection).
//!
//! Memory orderings.  Walkers load entries with `Acquire` (each pairs with the `Release` that
//! published the table or leaf, "Publishing with release"); every publish of a table or a leaf is
//! `Release`: the compare-exchange that links a table or installs a leaf (`pte::try_set()`), and
//! the store that ends a break-before-make (`pte::make()`).  The statistics are relaxed counters
//! that order nothing.
//!
//! TLBs.  A break-before-make flushes through the caller's `flush` before making the new entry
//! (the architecture's rule, "Break-before-make"): [`MapAction::Replaced`] was already flushed when
//! `map` returns.  A zap clears leaves without flushing: the caller flushes before dropping the MMU
//! lock ("TLB flush before dropping the MMU lock"), as for x86.  Aging flushes nothing: after
//! [`AgeOp::ClearFlush`] the caller flushes if [`AgeResult::cleared`] is nonzero.
//!
//! Huge mappings.  [`S2Mmu::map()`] installs blocks at [`Level::L1G`] and [`Level::L2M`] (KVM's
//! arm64 levels 1 and 2) as well as pages, but none above the start level: a walk that starts
//! at [`Level::L2M`] has no 1G entry, so it
//! refuses 1G maps ([`S2Mmu::max_map_level()`], which the fault path clamps to).  A block met
//! where a table must go is broken into an empty table with break-before-make (KVM's
//! `stage2_map_walk_leaf()`); a table where a block goes is replaced by the block with
//! break-before-make too (lock, flush, zap what the table maps, make the block), and freed later
//! under the write side (I1).  The walks, zaps, aging, snapshot and [`translate()`] handle
//! blocks; a zap or an ager visits every leaf overlapping its range, so a range starting inside a
//! block reaches it ("Ranges and mapping levels").
//!
//! KVM functions followed: `kvm_pgtable_stage2_map()` (`stage2_map_walk_leaf()`,
//! `stage2_map_walker_try_leaf()`) for [`S2Mmu::map()`], `kvm_pgtable_stage2_relax_perms()` for
//! its permission relax, `kvm_pgtable_stage2_mkyoung()` for [`S2Mmu::mkyoung()`],
//! `kvm_pgtable_stage2_test_clear_young()` (`stage2_age_walker()`) for
//! [`S2Mmu::age_gfn_range()`], `kvm_pgtable_stage2_unmap()` for the zaps,
//! `kvm_pgtable_stage2_destroy()` for the drop, `kvm_pgtable_stage2_init()` /
//! `kvm_pgd_pages()` for [`S2Mmu::new()`].
//!
//! Walks.  Every walk of the tables is a visitor of the shared walker (`walk.rs`, [`S2`] says
//! what a descriptor is to it), as every walk of KVM's stage-2 is a `kvm_pgtable_walker`: the
//! lookups and [`translate()`] ([`walk::find()`]), [`S2Mmu::map()`] ([`MapWalker`]), the
//! collapse's zap ([`zap_unlinked()`]), aging ([`AgeWalker`]), the zaps ([`ZapWalker`], resumable
//! with [`walk_yielding()`]), [`S2Mmu::next_leaf()`] and the frees ([`walk::free_subtree()`]).
//!
//! Kernel-free: built into the module and into the host crate.

use core::marker::PhantomData;
use core::ops::ControlFlow;
// Statistics are plain counters, kept out of the loom models: they order nothing, and loom would
// only explore their interleavings for nothing.
use core::sync::atomic::{AtomicU64 as Counter, Ordering as CounterOrdering};

use crate::arm64::pte::{self, Geometry, MAX_PGD_PAGES};
use crate::mmu::addr::{Gfn, Pfn};
use crate::mmu::aging::{AgeOp, AgeResult};
use crate::mmu::dirty::{Protected, Split, SplitAt};
use crate::mmu::level::Level;
use crate::mmu::pgtable::{
    snapshot_byte, MapAction, MmuStats, PageOps, TableCache, UnlinkedTable, ZappedTables,
    ENTRIES_PER_TABLE,
};
use crate::mmu::prim::{self, warn_on, AllocError, AtomicU64, Ordering, PVec};
use crate::mmu::walk::{
    self, walk_yielding, Ctx, PteEncoding, Step, Tables, Visit, Visitor, Walked, YieldHook, LEAF,
    SHARED, TABLE_POST, TABLE_PRE,
};
use crate::mmu::zap::{NoYield, Owned, Pause, Yield, Zap, ZapLock, ZapTables};

pub(crate) use crate::mmu::pgtable::{MapError, MapOutcome, Translation, WalkFault};

/// Most roots an MMU can have (`SECMMU_MAX_ROOTS`).
pub(crate) const MAX_ROOTS: usize = 32;

/// Table pages a map may link: one per level below the start level of the deepest walk (four
/// levels, `ia_bits` 44 to 48).  Top up the [`TableCache`] with at least this many before taking
/// the MMU lock; a shallower MMU needs fewer ([`S2Mmu::map_min_tables()`]).
pub(crate) const MAP_MIN_TABLES: usize = (pte::MAX_LEVELS - 1) as usize;

/// Entries a zap visits between two times it asks whether to yield, counted across roots
/// ([`walk_yielding()`]): more than a path from a root to a leaf, so that every yield follows
/// progress.  KVM's TDP MMU zaps ask at every entry; asking every few entries costs less and
/// holds the lock about as briefly.
const ZAP_YIELD_EVERY: u64 = 64;

/// The entries of table page `pfn`.
///
/// # Safety
///
/// `pfn` is a table of an [`S2Mmu<P>`] that is not dropped for `'a`, and not freed for `'a`
/// either: it is linked and the caller holds the MMU lock (either side) or stays in guest mode,
/// or it is unlinked and the caller frees it (I1).
#[inline]
unsafe fn table<'a, P: PageOps>(pfn: u64) -> &'a crate::mmu::pgtable::Table {
    // SAFETY: tables of a live MMU came from `alloc_table()` and are freed only when it is
    // dropped, or once unlinked under the write side (I1): the caller excludes both for 'a.
    unsafe { P::table::<'a>(pfn) }
}

/// A root, for [`translate()`]: where its walk starts.  A copy; the start-level tables it names
/// stay allocated until the MMU is dropped (I1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct S2Root {
    /// The concatenated start-level tables, in `pgd[..geo.pgd_pages]`.
    pgd: [u64; MAX_PGD_PAGES],
    geo: Geometry,
}

impl S2Root {
    /// The shape of the walk.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Levels of the walk.
    pub(crate) fn levels(&self) -> u32 {
        self.geo.levels
    }

    /// Level of the start-level tables.
    pub(crate) fn start_level(&self) -> Level {
        self.geo.start_level
    }

    /// The start-level tables (hardware would need them contiguous: see the module doc).
    pub(crate) fn pgd(&self) -> &[u64] {
        &self.pgd[..self.geo.pgd_pages]
    }

    /// Where the walks of the root start.
    fn tables(&self) -> Tables<'_> {
        root_tables(self.pgd(), &self.geo)
    }
}

/// The stage-2 descriptors as the shared walker (`walk.rs`) sees them.
pub(crate) struct S2;

impl PteEncoding for S2 {
    const MAX_LEAF: Level = pte::MAX_BLOCK_LEVEL;

    #[inline(always)]
    fn is_valid(entry: u64) -> bool {
        pte::is_valid(entry)
    }

    #[inline(always)]
    fn is_table(entry: u64, level: Level) -> bool {
        pte::is_table(entry, level)
    }

    #[inline(always)]
    fn table_pfn(entry: u64) -> u64 {
        pte::pfn(entry)
    }
}

/// The start-level tables `pgd` of a root of geometry `geo`, where its walks start.
#[inline(always)]
fn root_tables<'a>(pgd: &'a [u64], geo: &Geometry) -> Tables<'a> {
    Tables::new(pgd, geo.start_level, 0, geo.gfn_limit())
}

/// The translation of `gfn` by the valid leaf `v` at `level`.
fn translation(v: u64, level: Level, gfn: Gfn) -> Translation {
    let writable = pte::is_writable(v);
    Translation {
        pfn: Pfn::new(pte::pfn(v)) + gfn.offset_in(level),
        level,
        writable,
        // I4: no dirty bit, a writable leaf is dirty already; writes need no update.
        dirty: writable,
        dirtied: false,
    }
}

/// Translates `gfn` through `root` for a read or a `write`, like the hardware's stage-2 walk:
/// without any lock.
///
/// - An empty or locked entry on the way is [`WalkFault::NotPresent`] (a translation fault; a
///   locked entry is invalid to the hardware).
/// - A leaf whose AF is clear: with hardware AF management (`hw_af`, `VTCR_EL2.HA`), AF is set
///   with a compare-exchange from the value read, the hardware's atomic AF update; a failure
///   reloads the entry and looks again, so a leaf zapped or broken meanwhile is never made valid
///   again (I3).  Without it, [`WalkFault::NotPresent`]: an access-flag fault, which the fault
///   path resolves with [`S2Mmu::mkyoung()`] without resolving the page again.  As on hardware,
///   the access-flag fault comes before a permission fault.
/// - A write to a read-only leaf is [`WalkFault::WriteProtected`] (a permission fault), unless
///   the walker manages dirty state (`hw_dbm`, `VTCR_EL2.HD`) and the leaf is a page with
///   [`SW_WRITABLE`](pte::SW_WRITABLE), this format's dirty bit modifier (DBM): a fault made it
///   writable, and only dirty logging's write protection took W since.  Then the walker sets W
///   (and AF) with a compare-exchange from the value read, as the hardware's DBM update makes a
///   writable-clean entry writable-dirty, and reports [`Translation::dirtied`], for the vCPU to
///   log the page.  Blocks never: a block with W is a whole block dirty, and dirty logging
///   splits them (a logging slot maps pages only).
///
/// The translation is only good until a zap's (or a break-before-make's) TLB flush: use it, and
/// the page, only inside guest mode (`tlb.rs`).
///
/// # Safety
///
/// `root` is [`S2Mmu::root()`] of an `S2Mmu<P>` that is not dropped before this returns, and
/// the caller stays in guest mode (or holds the MMU lock) until it returns, so that no table
/// unlinked by a block map or a zap is freed under the walk (I1).
pub(crate) unsafe fn translate<P: PageOps>(
    root: S2Root,
    gfn: Gfn,
    write: bool,
    hw_af: bool,
    hw_dbm: bool,
) -> Result<Translation, WalkFault> {
    'walk: loop {
        // SAFETY: per the caller, the MMU of `root` outlives this call, and the caller stays in
        // guest mode (or holds the MMU lock) until it returns (I1).
        let Some(w) = (unsafe { walk::find::<S2, P>(&root.tables(), gfn.raw()) }) else {
            // Outside the space.
            return Err(WalkFault::NotPresent);
        };
        let mut v = w.old;
        loop {
            if !pte::is_valid(v) {
                return Err(WalkFault::NotPresent);
            }
            if pte::is_table(v, w.level) {
                // A block was broken into a table meanwhile: walk again.
                continue 'walk;
            }
            if !pte::is_young(v) && !hw_af {
                return Err(WalkFault::NotPresent);
            }
            if write && !pte::is_writable(v) {
                if !(hw_dbm && w.level == pte::LAST_LEVEL && pte::was_writable(v)) {
                    return Err(WalkFault::WriteProtected);
                }
                // DBM: writable-clean to writable-dirty, and young.
                let new = pte::mkyoung(pte::mkwrite(v));
                match pte::try_set(w.ptep, v, new) {
                    Ok(()) => {
                        let mut t = translation(new, w.level, gfn);
                        t.dirtied = true;
                        return Ok(t);
                    }
                    Err(cur) => {
                        v = cur;
                        continue;
                    }
                }
            }
            if pte::is_young(v) {
                return Ok(translation(v, w.level, gfn));
            }
            match pte::try_set(w.ptep, v, pte::mkyoung(v)) {
                Ok(()) => return Ok(translation(pte::mkyoung(v), w.level, gfn)),
                Err(cur) => v = cur,
            }
        }
    }
}

/// The MMU's counters.  Relaxed: statistics only, nothing is ordered by them.
#[derive(Default)]
struct Counters {
    tables_allocated: Counter,
    tables_freed: Counter,
    /// Valid leaves now, by level ([`Level::idx()`]).
    leaves: [Counter; 3],
    zapped: Counter,
    dirty: Counter,
    eagain: Counter,
}

impl Counters {
    fn add(c: &Counter, n: u64) {
        c.fetch_add(n, CounterOrdering::Relaxed);
    }

    fn get(c: &Counter) -> u64 {
        c.load(CounterOrdering::Relaxed)
    }

    /// A valid leaf was made at `level`.
    fn leaf_added(&self, level: Level) {
        Self::add(&self.leaves[level.idx()], 1);
    }

    /// A valid leaf at `level` went.
    fn leaf_gone(&self, level: Level) {
        self.leaves[level.idx()].fetch_sub(1, CounterOrdering::Relaxed);
    }
}

/// The arm64 stage-2 MMU.  See the module documentation for its locking and invariants.
///
/// Dropping it zaps whatever is still mapped (marking writable pages dirty, I4) and frees every
/// table page: no lockless walker ([`translate()`]) may run then, or later, with one of its
/// roots.  Dropping may sleep (the root array may be vmalloc'ed): not under a spinning lock.
pub(crate) struct S2Mmu<P: PageOps> {
    geo: Geometry,
    /// Complete roots, each with `geo.pgd_pages` start-level tables.
    nr_roots: usize,
    /// The start-level tables of root `r` are `pgd[r * geo.pgd_pages..][..geo.pgd_pages]`.
    pgd: PVec<u64>,
    /// Entries of `pgd` holding an allocated table: all of them once `new()` succeeded.
    pgd_allocated: usize,
    /// The walkers set AF in hardware (`VTCR_EL2.HA`); otherwise accesses to old leaves take
    /// access-flag faults.
    hw_af: bool,
    /// The walkers manage dirty state (`VTCR_EL2.HD`, [`translate()`]): a write to a page whose
    /// write protection only dirty logging made takes no fault.
    hw_dbm: bool,
    counters: Counters,
    /// Tables zaps unlinked, freed by [`ZapTables::free_zapped_tables()`] after the next flush.
    zapped_tables: ZappedTables,
    /// Most table pages the MMU may hold ([`S2Mmu::set_table_limit()`]).
    table_limit: u64,
    _ops: PhantomData<fn() -> P>,
}

impl<P: PageOps> S2Mmu<P> {
    /// Makes an MMU with `nr_roots` (1 to [`MAX_ROOTS`]) empty roots translating `ia_bits`
    /// (`pte::MIN_IA_BITS` to `pte::MAX_IA_BITS`) of guest-physical address, whose walkers set
    /// AF themselves if `hw_af`.  Allocates the start-level tables of every root, and may sleep:
    /// call it before the MMU is shared.  Fails on allocation failure, and for a root count or
    /// address size out of range (which the caller validates).
    pub(crate) fn new(nr_roots: usize, ia_bits: u32, hw_af: bool) -> Result<Self, AllocError> {
        if nr_roots == 0 || nr_roots > MAX_ROOTS {
            return Err(AllocError);
        }
        let geo = Geometry::new(ia_bits).ok_or(AllocError)?;
        let pgd = prim::try_vec_with(nr_roots * geo.pgd_pages, || 0)?;
        let mut mmu = S2Mmu {
            geo,
            nr_roots: 0,
            pgd,
            pgd_allocated: 0,
            hw_af,
            hw_dbm: false,
            counters: Counters::default(),
            zapped_tables: ZappedTables::new()?,
            table_limit: u64::MAX,
            _ops: PhantomData,
        };
        while mmu.pgd_allocated < mmu.pgd.len() {
            // On failure, dropping `mmu` frees the tables allocated so far.
            mmu.pgd[mmu.pgd_allocated] = P::alloc_table()?;
            mmu.pgd_allocated += 1;
            Counters::add(&mmu.counters.tables_allocated, 1);
        }
        mmu.nr_roots = nr_roots;
        Ok(mmu)
    }

    /// Number of roots.
    pub(crate) fn nr_roots(&self) -> usize {
        self.nr_roots
    }

    /// Input (guest-physical) address bits.
    pub(crate) fn ia_bits(&self) -> u32 {
        self.geo.ia_bits
    }

    /// The shape of the walks.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Whether the walkers set AF themselves (hardware access-flag management); false: an access
    /// to an old leaf takes an access-flag fault ([`S2Mmu::mkyoung()`]).
    pub(crate) fn hw_af(&self) -> bool {
        self.hw_af
    }

    /// Has the walkers manage dirty state from now on ([`S2Mmu::hw_dbm()`]), for dirty logging
    /// by the dirty bit.  Needs `hw_af`, as `VTCR_EL2.HD` needs `HA`: returns false, changing
    /// nothing, without it.  Call it before the MMU is shared (the vCPUs copy it with their
    /// root).
    pub(crate) fn set_hw_dbm(&mut self) -> bool {
        self.hw_dbm = self.hw_af;
        self.hw_dbm
    }

    /// Whether the walkers set W themselves on a write to a page whose write protection only
    /// dirty logging made, as hardware dirty state management does with DBM.
    pub(crate) fn hw_dbm(&self) -> bool {
        self.hw_dbm
    }

    /// Table pages a map may link in this MMU: one per level below the start level
    /// (at most [`MAP_MIN_TABLES`]).
    pub(crate) fn map_min_tables(&self) -> usize {
        self.geo.map_min_tables()
    }

    /// The largest leaf this MMU can install (see [`S2Mmu::map()`]): a block is an entry at
    /// its level (KVM's `kvm_level_supports_block_mapping()`: 1G and 2M with 4K pages), so a
    /// 1G block needs a walk that starts at [`Level::L1G`] or above (`ia_bits` 35 and up), and a
    /// walk that starts at [`Level::L2M`] (`ia_bits` 32 to 34) holds 2M blocks at most.  The fault path
    /// clamps the level it asks for to this.
    pub(crate) fn max_map_level(&self) -> Level {
        self.geo.start_level.min(S2::MAX_LEAF)
    }

    /// Root `root`, for [`translate()`].  Its start-level tables stay the same, and allocated,
    /// until the MMU is dropped.
    pub(crate) fn root(&self, root: usize) -> Option<S2Root> {
        if root >= self.nr_roots {
            return None;
        }
        let n = self.geo.pgd_pages;
        let mut pgd = [0; MAX_PGD_PAGES];
        pgd[..n].copy_from_slice(&self.pgd[root * n..][..n]);
        Some(S2Root { pgd, geo: self.geo })
    }

    /// The start-level tables of root `root` (which must exist).
    fn root_pgd(&self, root: usize) -> &[u64] {
        let n = self.geo.pgd_pages;
        &self.pgd[root * n..][..n]
    }

    /// The counters.
    pub(crate) fn stats(&self) -> MmuStats {
        let c = &self.counters;
        MmuStats {
            tables_allocated: Counters::get(&c.tables_allocated),
            tables_freed: Counters::get(&c.tables_freed),
            leaves: c.leaves.each_ref().map(Counters::get),
            zapped: Counters::get(&c.zapped),
            dirty: Counters::get(&c.dirty),
        }
    }

    /// Limits the table pages the MMU may hold ([`S2Mmu::table_pages()`]) to `pages`: from
    /// now on, a map that needs a new table while the MMU holds `pages` or more fails with
    /// [`MapError::TableLimit`].  Tables already linked stay.  No limit at first (`u64::MAX`).
    pub(crate) fn set_table_limit(&mut self, pages: u64) {
        self.table_limit = pages;
    }

    /// Counts a table about to be linked in [`MmuStats::tables_allocated`], unless the MMU
    /// holds its limit of table pages already ([`MapError::TableLimit`]).  Counting first makes
    /// the limit exact with maps racing under the read side: each one's count is in before it
    /// links.  A map that does not link the table after all gives its count back
    /// ([`S2Mmu::unreserve_table()`]).
    fn reserve_table(&self) -> Result<(), MapError> {
        let c = &self.counters;
        // Tables are freed only under the write side, which the caller's read side excludes:
        // `tables_freed` does not change meanwhile.
        let freed = Counters::get(&c.tables_freed);
        c.tables_allocated
            .fetch_update(CounterOrdering::Relaxed, CounterOrdering::Relaxed, |n| {
                (n - freed < self.table_limit).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| MapError::TableLimit)
    }

    /// Gives back the count of [`S2Mmu::reserve_table()`] for a table that was not linked.
    fn unreserve_table(&self) {
        self.counters
            .tables_allocated
            .fetch_sub(1, CounterOrdering::Relaxed);
    }

    /// Table pages allocated now, start-level tables included.
    pub(crate) fn table_pages(&self) -> u64 {
        self.stats().table_pages()
    }

    /// Valid leaves now, in all roots.
    pub(crate) fn leaves(&self) -> u64 {
        self.stats().leaf_count()
    }

    /// Valid leaves now, in all roots, by level (4K, 2M, 1G).
    pub(crate) fn leaves_by_level(&self) -> [u64; 3] {
        self.stats().leaves
    }

    /// Races lost so far (`-EAGAIN`): maps that returned [`MapError::Again`] and aging
    /// compare-exchanges that failed.
    pub(crate) fn eagain(&self) -> u64 {
        Counters::get(&self.counters.eagain)
    }

    /// Counts a lost race and answers it.
    fn again<T>(&self) -> Result<T, MapError> {
        Counters::add(&self.counters.eagain, 1);
        Err(MapError::Again)
    }

    /// Accounts for the valid leaf `old` at `level` having been removed from its entry (zap or
    /// break-before-make): one leaf less, one zapped, and its page marked dirty if it was
    /// writable (I4).  Returns whether it was dirty.
    fn leaf_removed(&self, old: u64, level: Level) -> bool {
        leaf_removed::<P>(&self.counters, old, level)
    }

    /// Maps `gfn` to host page `pfn` in root `root` at `level`, writable if `writable`, as a
    /// fault does after resolving the page (KVM's `kvm_pgtable_stage2_map()` of a shared walk,
    /// or `kvm_pgtable_stage2_relax_perms()` when the leaf is there).  The read side of the MMU
    /// lock is enough: faults run in parallel.
    ///
    /// Walks down from the start level, linking missing tables from `tables` with a
    /// compare-exchange from empty; the loser of a race to link gives its page back to `tables`
    /// and goes on with the winner's table.  Then, at the leaf:
    ///
    /// - empty: installs the leaf with a compare-exchange ([`MapAction::Installed`]);
    /// - maps `pfn` already: only grows it in place with a compare-exchange, never taking a
    ///   permission away: read-only to writable ([`MapAction::Upgraded`], which also sets AF),
    ///   AF set on an old leaf ([`MapAction::Restored`]: the access-flag fault done by a map),
    ///   or nothing to do ([`MapAction::Unchanged`]);
    /// - maps another page (stale: the primary MMU remapped the page between an invalidation's
    ///   end and this fault): break-before-make, i.e. lock the entry, `flush()` (which must
    ///   invalidate the TLBs of the vCPUs and wait until none can use the old translation), mark
    ///   the old page dirty if it was writable, and make the new leaf ([`MapAction::Replaced`]).
    ///   The flush is done when `map` returns.
    ///
    /// A block met where a table must go is broken into an empty table the same way (`flush()`
    /// called once), and the map goes on in it.
    ///
    /// Errors, with nothing changed but tables linked on the way (empty, harmless):
    /// [`MapError::BadRoot`], [`MapError::BadLevel`] if `level` is larger than
    /// [`S2Mmu::max_map_level()`] (nothing is linked then), [`MapError::BadGfn`] outside the
    /// space or not aligned to `level`, [`MapError::BadPfn`], [`MapError::NeedTopup`] if
    /// `tables` holds fewer than [`S2Mmu::map_min_tables()`], [`MapError::TableLimit`] if a
    /// table is needed while the MMU holds its limit of table pages
    /// ([`S2Mmu::set_table_limit()`]; a block is not broken for it), and [`MapError::Again`] if
    /// another walker changed or locked an entry on the way (counted in [`S2Mmu::eagain()`]):
    /// retry the fault, nothing to drop.  A lock is never taken over.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map(
        &self,
        root: usize,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        level: Level,
        tables: &mut TableCache<P>,
        flush: &dyn Fn(),
    ) -> Result<MapOutcome, MapError> {
        self.map_aged(root, gfn, pfn, writable, true, level, tables, flush)
    }

    /// [`S2Mmu::map()`] of a leaf made ahead of any access (a pre-fault or a fault-around, KVM's
    /// prefetch), with hardware AF management (`hw_af`): the new leaf is old (AF clear), so that
    /// aging sees the page unused until a walker sets AF on the first access, which takes no
    /// fault.  A valid leaf of the page is left as old or young as it is, and may only gain W.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_prefetch(
        &self,
        root: usize,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        level: Level,
        tables: &mut TableCache<P>,
        flush: &dyn Fn(),
    ) -> Result<MapOutcome, MapError> {
        debug_assert!(self.hw_af());
        self.map_aged(root, gfn, pfn, writable, false, level, tables, flush)
    }

    #[allow(clippy::too_many_arguments)]
    fn map_aged(
        &self,
        root: usize,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        young: bool,
        level: Level,
        tables: &mut TableCache<P>,
        flush: &dyn Fn(),
    ) -> Result<MapOutcome, MapError> {
        if root >= self.nr_roots {
            return Err(MapError::BadRoot);
        }
        if level > self.max_map_level() {
            // No entry of the walk maps that size: a leaf at the start level would map a
            // smaller block than asked, and the rest of the range would fault forever.
            return Err(MapError::BadLevel);
        }
        if !gfn.is_aligned(level) {
            return Err(MapError::BadGfn);
        }
        if gfn >= Gfn::new(self.geo.gfn_limit()) {
            return Err(MapError::BadGfn);
        }
        if !pte::pfn_fits(pfn.raw()) || !pfn.is_aligned(level) {
            return Err(MapError::BadPfn);
        }
        if tables.len() < self.map_min_tables() {
            return Err(MapError::NeedTopup);
        }

        let mut v = MapWalker {
            mmu: self,
            target: level,
            pfn,
            writable,
            young,
            covers: level,
            tables,
            flush,
            new_tables: 0,
            split: false,
        };
        // The walker's position: a bare gfn.
        let mut pos = gfn.raw();
        // SAFETY: the start-level tables of root `root` of `self`, which is borrowed (the
        // read side of the MMU lock, at least): no table the walk reaches is freed (I1).
        let flow = unsafe {
            walk::walk::<S2, P, _>(
                &root_tables(self.root_pgd(root), &self.geo),
                &mut pos,
                gfn.raw() + 1,
                &mut v,
            )
        };
        match flow {
            ControlFlow::Break(mapped) => mapped,
            // The entry on the way, just linked, was not a table any more when loaded again:
            // another walker broke it meanwhile: a lost race.
            ControlFlow::Continue(()) => self.again(),
        }
    }

    /// Replaces the table entry `ptep` at `level`, which held `old`, by the block `new` mapping
    /// `covers` (the primary collapsed the range since it was mapped smaller), with
    /// break-before-make under the read side of the MMU lock: lock the entry ("Locked entries":
    /// another walker's lock is never taken over), flush (the entry was valid: no vCPU can use a
    /// translation through the table any more, and none can enter it again, "Break-before-make"),
    /// zap every leaf of the table and the tables under it, then make the block.
    ///
    /// The table is unlinked but not freed: other walkers under the read side (faults, agers,
    /// the snapshot) may still be inside it, and may even install leaves or link tables in it
    /// (which nothing can reach: harmless).  It is returned for
    /// [`S2Mmu::free_unlinked()`], under the write side (I1).
    fn collapse(
        &self,
        ptep: &AtomicU64,
        old: u64,
        new: u64,
        level: Level,
        covers: Level,
        flush: &dyn Fn(),
    ) -> Result<UnlinkedTable, MapError> {
        if !pte::try_break(ptep, old, flush) {
            return self.again();
        }
        if let Some(lower) = level.lower() {
            // SAFETY: linked by the valid table entry `old` of `self` until the break just now,
            // so a table of `self`, and freed only by `free_unlinked()`, with the write side
            // held, which our read side excludes (I1).
            unsafe { zap_unlinked::<P>(pte::pfn(old), lower, self) };
        }
        self.counters.leaf_added(level);
        pte::make(ptep, new);
        Ok(UnlinkedTable {
            pfn: pte::pfn(old),
            covers,
        })
    }

    /// Frees a table a block map unlinked ([`MapOutcome::unlinked`]), and the tables under it,
    /// with the write side of the MMU lock held (`&mut self`), so that no walker under the read
    /// side is left in it.  Leaves that racing faults installed in it after it was unlinked are
    /// dropped without marking their pages dirty: no vCPU could reach them to write.
    ///
    /// # Safety
    ///
    /// `t` came from a [`MapOutcome`] of this MMU and was not freed yet.  (The break-before-make
    /// that unlinked it flushed the TLBs, which waited for every vCPU that could be walking
    /// inside it: hardware walkers run only in guest mode.)
    pub(crate) unsafe fn free_unlinked(&mut self, t: UnlinkedTable) {
        let Some(level) = t.covers.lower() else {
            warn_on!(true, "a 4K entry never links a table");
            return;
        };
        // SAFETY: unlinked, per the caller; `&mut self`: no walker under the read side, and
        // none in guest mode since the break's flush.
        unsafe { drop_unlinked::<P>(t.pfn, level, &self.counters) };
    }

    /// Links a table from `tables` in `ptep`, an entry at `level` (not the last) on the way down
    /// a map that held `old` (not a table): the walk goes on in the new table, or in the table a
    /// racing mapper linked first.
    fn link_table(
        &self,
        ptep: &AtomicU64,
        old: u64,
        level: Level,
        tables: &mut TableCache<P>,
        flush: &dyn Fn(),
        new_tables: &mut usize,
    ) -> Result<(), MapError> {
        if pte::is_locked(old) {
            // Another walker owns the entry (I2, "Locked entries").
            return self.again();
        }
        // Before a block is broken for it: a map refused for the limit changes nothing.
        self.reserve_table()?;
        // Cannot fail: checked against `map_min_tables()`, one per level.
        let Some(new_pfn) = tables.take() else {
            self.unreserve_table();
            return Err(MapError::NeedTopup);
        };
        let new = pte::make_table(new_pfn);

        if pte::is_valid(old) {
            // A block where a table must go (KVM's `stage2_map_walk_leaf()`): break it, then
            // make an empty table; the rest of the block faults back in lazily.
            if !pte::try_break(ptep, old, flush) {
                // SAFETY: taken from `tables` above, never linked, still zeroed.
                unsafe { tables.put_back(new_pfn) };
                self.unreserve_table();
                return self.again();
            }
            self.leaf_removed(old, level);
            *new_tables += 1;
            // Release (in `make()`): walkers that load the table entry see the zeroed table.
            pte::make(ptep, new);
            return Ok(());
        }

        // Empty: link with a compare-exchange from the value loaded (I3), Release on success so
        // that a walker that Acquire-loads the entry sees the table zeroed ("Publishing with
        // release").  Nothing was valid, so there is nothing to flush ("Break-before-make"): no
        // break is needed.
        match pte::try_set(ptep, old, new) {
            Ok(()) => {
                *new_tables += 1;
                Ok(())
            }
            Err(cur) => {
                // SAFETY: taken from `tables` above; the compare-exchange failed, so it was never
                // linked and nobody wrote to it: still zeroed, reachable only by us.
                unsafe { tables.put_back(new_pfn) };
                self.unreserve_table();
                if pte::is_table(cur, level) {
                    // The winner's table: the walk goes on in it.  Its reload is Acquire, and
                    // pairs with the winner's Release: its table is seen zeroed.
                    Ok(())
                } else {
                    self.again()
                }
            }
        }
    }

    /// Sets the leaf entry `ptep` at `level`, which held `old`, to `new` as [`S2Mmu::map()`]
    /// says.
    fn set_leaf(
        &self,
        ptep: &AtomicU64,
        old: u64,
        new: u64,
        level: Level,
        flush: &dyn Fn(),
    ) -> Result<MapAction, MapError> {
        if pte::is_locked(old) {
            // Another walker owns the entry (I2, "Locked entries").
            return self.again();
        }
        if !pte::is_valid(old) {
            // Release (in `try_set()`): a walker that Acquire-loads the leaf then touches the
            // page, and must see what was done to it before it was mapped.
            return match pte::try_set(ptep, old, new) {
                Ok(()) => {
                    self.counters.leaf_added(level);
                    Ok(MapAction::Installed)
                }
                Err(_) => self.again(),
            };
        }
        if pte::is_table(old, level) {
            // A table where a block goes: `map()` collapses it before it gets here.
            warn_on!(true, "table at the leaf level {level:?}");
            return Err(MapError::BadLevel);
        }
        if pte::pfn(old) == pte::pfn(new) {
            // Relax (`kvm_pgtable_stage2_relax_perms()`): only ever add W and AF (I4); a
            // prefetch (an old `new`) adds no AF.
            let mut want = if pte::is_young(new) {
                pte::mkyoung(old)
            } else {
                old
            };
            if pte::is_writable(new) {
                want = pte::mkwrite(want);
            }
            if want == old {
                return Ok(MapAction::Unchanged);
            }
            let action = if pte::is_writable(want) && !pte::is_writable(old) {
                MapAction::Upgraded
            } else {
                MapAction::Restored
            };
            // Permissions only grow: no TLB flush (a TLB entry of `old` faults at worst).
            return match pte::try_set(ptep, old, want) {
                Ok(()) => Ok(action),
                Err(_) => self.again(),
            };
        }
        // Another page: "Break-before-make".  The break flushes, since `old` is valid.
        if !pte::try_break(ptep, old, flush) {
            return self.again();
        }
        self.leaf_removed(old, level);
        self.counters.leaf_added(level);
        pte::make(ptep, new);
        Ok(MapAction::Replaced)
    }

    /// The access-flag fault (KVM's `handle_access_fault()` / `kvm_pgtable_stage2_mkyoung()`):
    /// sets AF on the valid leaf that maps `gfn` in root `root`, with a compare-exchange from the
    /// value loaded (retried while the entry stays a valid leaf: a leaf zapped or broken
    /// meanwhile is never made valid again, I3).  The read side of the MMU lock is enough; no
    /// page needs resolving (the leaf still maps it: an invalidation would have zapped it).
    ///
    /// Returns true if the leaf is now young and allows the access (`write` or read): the vCPU
    /// may retry it.  False, changing nothing, if there is no valid leaf (empty, locked) or the
    /// access is a write to a read-only leaf: take the full fault path.  Permissions only grow,
    /// so no TLB flush.
    pub(crate) fn mkyoung(&self, root: usize, gfn: Gfn, write: bool) -> bool {
        let Some((ptep, mut v, level)) = self.entry(root, gfn) else {
            return false;
        };
        loop {
            if !pte::is_leaf(v, level) || (write && !pte::is_writable(v)) {
                return false;
            }
            if pte::is_young(v) {
                return true;
            }
            match pte::try_set(ptep, v, pte::mkyoung(v)) {
                Ok(()) => return true,
                Err(cur) => v = cur,
            }
        }
    }

    /// Makes the page leaf that maps `gfn` in root `root` writable again for a write fault, if
    /// dirty logging's write protection is all that keeps it read-only: a valid 4K leaf without
    /// [`S2AP_W`](pte::S2AP_W) that a fault made writable ([`pte::SW_WRITABLE`], which the
    /// protection leaves; aging never takes W).  The page needs no resolving: the primary MMU
    /// maps it writable still, or an invalidation would have zapped the leaf.  Returns whether
    /// it did; the caller logs the page before it drops the MMU lock.
    ///
    /// The read side is enough: a compare-exchange from the value loaded, retried on a change
    /// (a racing fault or ager), fails on a locked entry (I2, I3).  Permissions only grow, so
    /// TLBs need no flush.  AF is set too: the write is an access.
    pub(crate) fn restore_write_protected(&self, root: usize, gfn: Gfn) -> bool {
        let Some((ptep, mut v, level)) = self.entry(root, gfn) else {
            return false;
        };
        loop {
            if level != Level::L4K
                || !pte::is_leaf(v, level)
                || pte::is_writable(v)
                || !pte::was_writable(v)
            {
                return false;
            }
            match pte::try_set(ptep, v, pte::mkyoung(pte::mkwrite(v))) {
                Ok(()) => return true,
                Err(cur) => v = cur,
            }
        }
    }

    /// Ages the gfns `[start, end)` in every root under the read side of the MMU lock (KVM's
    /// `kvm_pgtable_stage2_test_clear_young()` since it runs under the read lock, see "Stage-2
    /// aging under the read side" and "Aging without the MMU lock"), walking the tables over the
    /// range (leaves at any level overlapping it).
    ///
    /// - [`AgeOp::Test`]: young if some leaf has AF; changes nothing, stops at the first ("Testing
    ///   is read-only").
    /// - [`AgeOp::Clear`], [`AgeOp::ClearFlush`]: clears AF of every young leaf with a
    ///   compare-exchange from the value loaded ("Clearing the accessed bit", I3).  One that fails
    ///   lost a race with a fault, the hardware or another ager: the page is most likely young, so
    ///   it counts young ([`AgeResult::lost_races`], and [`S2Mmu::eagain()`]), and is not retried,
    ///   as in KVM's `stage2_age_walker()` ("Clearing the accessed bit").
    ///
    /// Works with and without hardware AF: without, the next access to an old leaf takes an
    /// access-flag fault ([`S2Mmu::mkyoung()`]).  No permission is taken and no dirty state
    /// needs capturing (I4).  Locked entries are skipped (their new leaf will be young).  If the
    /// result [`needs_flush()`](AgeResult::needs_flush) (`ClearFlush` cleared some), flush TLBs.
    pub(crate) fn age_gfn_range(&self, start: Gfn, end: Gfn, op: AgeOp) -> AgeResult {
        let mut result = AgeResult::new(op);
        let mut v = AgeWalker {
            op,
            result: &mut result,
        };
        for root in 0..self.nr_roots {
            let mut pos = start.raw();
            // SAFETY: the start-level tables of a root of `self`, which is borrowed (the read
            // side of the MMU lock, at least): no table the walk reaches is freed (I1).
            let flow = unsafe {
                walk::walk::<S2, P, _>(
                    &root_tables(self.root_pgd(root), &self.geo),
                    &mut pos,
                    end.raw(),
                    &mut v,
                )
            };
            if flow.is_break() {
                break;
            }
        }
        Counters::add(&self.counters.eagain, result.lost_races);
        result
    }

    /// Write-protects every valid leaf overlapping the gfns `[start, end)` in every root (KVM's
    /// `kvm_pgtable_stage2_wrprotect()`, `stage2_wp_range()`), for dirty logging ("Dirty logging"
    /// in Documentation/secmmu-protocols.rst).  A block overlapping the range loses W whole: its
    /// next write fault maps a page under it (the slot maps pages only while it logs), breaking
    /// it into a table.
    ///
    /// `&mut self`: the write side, as KVM write-protects under the write lock, so no fault is
    /// relaxing a permission or holding a locked entry meanwhile (I2).  The hardware walker may
    /// still set AF with a compare-exchange, so W goes with an atomic AND, which its
    /// compare-exchange then fails on (I3).  A writable leaf counts as dirty (I4): its page is
    /// marked dirty as W goes.  If the result [`needs_flush()`](Protected::needs_flush), flush
    /// TLBs before dropping the lock.
    pub(crate) fn write_protect_gfn_range(&mut self, start: Gfn, end: Gfn) -> Protected {
        let mut v = WriteProtectWalker::<P> {
            done: Protected::default(),
            _ops: PhantomData,
        };
        for root in 0..self.nr_roots {
            let mut pos = start.raw();
            // SAFETY: the start-level tables of a root of `self`, which we hold `&mut`: no table
            // the walk reaches is freed (I1).
            let _ = unsafe {
                walk::walk::<S2, P, _>(
                    &root_tables(self.root_pgd(root), &self.geo),
                    &mut pos,
                    end.raw().min(self.geo.gfn_limit()),
                    &mut v,
                )
            };
        }
        v.done
    }

    /// Splits every block overlapping the gfns `[at.gfn, end)` down to pages with the same
    /// attributes, root by root from `at.root` (eager page splitting for dirty logging, KVM's
    /// `kvm_mmu_split_huge_pages()` through `kvm_pgtable_stage2_split()`): a 1G block into 2M
    /// blocks, which the walk then goes into and splits in turn.  The write faults that dirty
    /// logging takes later then find pages to make writable
    /// ([`S2Mmu::restore_write_protected()`]) instead of breaking a block and resolving every
    /// page again.
    ///
    /// Each split takes a table from `tables`: when it is empty the split stops with
    /// [`Split::resume`] at the block it could not split, for the caller to top it up without
    /// the lock (KVM's `need_split_memcache_topup_or_resched()`).  At the MMU's table limit it
    /// stops for good ([`Split::limited`]).
    ///
    /// `&mut self`: the write side, as KVM splits under the write lock: no fault holds a locked
    /// entry or relaxes one meanwhile.  The hardware walker ([`translate()`]) still runs, so a
    /// block becomes a table with break-before-make, each break flushing through `flush`
    /// ("Break-before-make"; the table maps what the block did, but the architecture allows no
    /// TLB to hold both sizes).  The pieces are made from the block as the break took it, so an
    /// AF the walker set before is kept, and the walker faults on the locked entry and waits for
    /// the lock until the table is in.
    pub(crate) fn split_huge_gfn_range(
        &mut self,
        at: SplitAt,
        end: Gfn,
        tables: &mut TableCache<P>,
        flush: &dyn Fn(),
    ) -> Split {
        let mut v = SplitWalker {
            mmu: self,
            tables,
            flush,
            done: Split::default(),
        };
        let end = end.raw().min(self.geo.gfn_limit());
        for root in at.root..self.nr_roots {
            let mut pos = if root == at.root { at.gfn } else { at.start }.raw();
            // SAFETY: the start-level tables of a root of `self`, which we hold `&mut`: no table
            // the walk reaches is freed (I1).
            let flow = unsafe {
                walk::walk::<S2, P, _>(
                    &root_tables(self.root_pgd(root), &self.geo),
                    &mut pos,
                    end,
                    &mut v,
                )
            };
            if flow.is_break() {
                if !v.done.limited {
                    v.done.resume = Some(at.at(root, Gfn::new(pos)));
                }
                break;
            }
        }
        v.done
    }

    /// Zaps the gfns `[start, end)` in every root (KVM's `kvm_pgtable_stage2_unmap()`), with the
    /// MMU lock `lock` held for write, yielding it and flushing as the zap driver `z` says
    /// ([`Zap::run()`]; "TLB flush before dropping the MMU lock").  The walk covers leaves of
    /// every level at once (a block overlapping the range is zapped whole).
    ///
    /// Root by root, as KVM's TDP MMU zaps (`kvm_tdp_mmu_zap_leafs()`): one resumable walk of
    /// each root ([`walk_yielding()`], KVM's `tdp_mmu_iter_cond_resched()`) clears every valid
    /// leaf overlapping the range, marking the pages of writable leaves dirty (I4), and skips
    /// empty subtrees whole.  Every [`ZAP_YIELD_EVERY`] entries it asks `z` whether to yield; if
    /// so, the walk flushes and stops, the driver yields, and the walk resumes from the root at
    /// the entry it stopped at (the tables it was in may be gone by then).
    ///
    /// A table below a start-level table that is empty when the walk is done with it is
    /// unlinked, bottom-up, as KVM's unmap does (`stage2_unmap_walker()`), and freed after the
    /// next flush (I1).  When the list of unlinked tables is full, the walk stops at that table
    /// and `z` flushes and frees them; the walk resumes there.
    ///
    /// What the zap cleared and unlinked since its last flush is left in `z`: the caller flushes
    /// and frees it ([`Zap::flush_and_free()`]) before dropping the lock.  Never sleeps, but in
    /// `lock.resched()`.
    pub(crate) fn zap_gfn_range<Y: Yield>(
        lock: &mut impl ZapLock<Mmu = Self>,
        z: &mut Zap<Y>,
        start: Gfn,
        end: Gfn,
    ) {
        let mut at = ZapAt {
            root: 0,
            pos: start.raw(),
        };
        z.run(lock, |mmu, z| {
            mmu.zap_step(z, &mut at, start.raw(), end.raw(), true)
        });
    }

    /// One step of [`S2Mmu::zap_gfn_range()`] of `[start, end)` from `at`, up to the next yield
    /// or until the list of unlinked tables is full, unlinking the tables it empties if
    /// `unlink_tables`.
    fn zap_step<Y: Yield>(
        &mut self,
        z: &mut Zap<Y>,
        at: &mut ZapAt,
        start: u64,
        end: u64,
        unlink_tables: bool,
    ) -> Pause {
        let end = end.min(self.geo.gfn_limit());
        let n = self.geo.pgd_pages;
        // Entries until the next safe point: carried over from root to root.
        let mut budget = ZAP_YIELD_EVERY;
        while at.root < self.nr_roots {
            let mut v = ZapWalker::<P, Y> {
                unlink_tables,
                counters: &self.counters,
                zapped: &mut self.zapped_tables,
                z,
                _ops: PhantomData,
            };
            let mut visited = 0;
            // SAFETY: the start-level tables of a root of `self`, which we hold `&mut`: the
            // write side.
            let walked = unsafe {
                walk_yielding::<S2, P, _>(
                    &root_tables(&self.pgd[at.root * n..][..n], &self.geo),
                    &mut at.pos,
                    end,
                    &mut v,
                    &mut budget,
                    ZAP_YIELD_EVERY,
                    &mut visited,
                )
            };
            z.visited += visited;
            match walked {
                Walked::Done => {
                    at.root += 1;
                    at.pos = start;
                }
                // At the empty table that found no room: resumed there, it is visited again.
                Walked::Broke(()) => return Pause::TablesFull,
                // Flushed inside the walk.
                Walked::Yielded => return Pause::Yield,
            }
        }
        Pause::Done
    }

    /// Zaps every leaf in every root (release, teardown), without yielding.  Returns the number
    /// zapped; flush TLBs if nonzero.  The tables stay, empty, until the MMU is dropped: walkers
    /// may still be in them (I1).
    pub(crate) fn zap_all(&mut self) -> u64 {
        let end = self.geo.gfn_limit();
        let mut at = ZapAt { root: 0, pos: 0 };
        let mut z = Zap::new(NoYield);
        z.run(&mut Owned(self), |mmu, z| {
            mmu.zap_step(z, &mut at, 0, end, false)
        });
        debug_assert!(at.root >= self.nr_roots);
        z.zapped
    }

    /// The snapshot byte of `gfn` in root `root` (`SECMMU_SNAP_*`, `pgtable::snapshot_byte()`):
    /// 0 if no valid leaf maps it (empty or locked), otherwise present, writable, accessed (AF),
    /// dirty (= writable, I4) and the leaf's level.  Loads only; the read side is enough.
    pub(crate) fn snapshot(&self, root: usize, gfn: Gfn) -> u8 {
        let Some((_, v, level)) = self.leaf(root, gfn) else {
            return 0;
        };
        snapshot_byte(
            pte::is_writable(v),
            pte::is_young(v),
            pte::is_dirty(v),
            level,
        )
    }

    /// The valid leaf that maps `gfn` in root `root`, the value loaded from it and its level
    /// (for tests and the snapshot).  It may change as soon as it was loaded, unless the MMU lock
    /// is held for write.
    pub(crate) fn leaf(&self, root: usize, gfn: Gfn) -> Option<(&AtomicU64, u64, Level)> {
        let (ptep, v, level) = self.entry(root, gfn)?;
        pte::is_leaf(v, level).then_some((ptep, v, level))
    }

    /// The last entry a walk to `gfn` in root `root` loads: a leaf, an empty or a locked entry,
    /// with the value loaded and its level (for tests, which lock entries by hand).
    pub(crate) fn entry(&self, root: usize, gfn: Gfn) -> Option<(&AtomicU64, u64, Level)> {
        if root >= self.nr_roots {
            return None;
        }
        // SAFETY: the start-level tables of a root of `self`, which is borrowed for the returned
        // lifetime (the MMU lock, either side): no table the walk reaches is freed (I1).
        let w = unsafe {
            walk::find::<S2, P>(&root_tables(self.root_pgd(root), &self.geo), gfn.raw())
        }?;
        Some((w.ptep, w.old, w.level))
    }

    /// The first valid leaf of root `root` that maps a gfn in `[gfn, end)`: the first gfn it
    /// maps and the translation of that gfn.  Skips empty (and locked) entries a whole entry at a
    /// time, so a sparse range costs a walk per empty entry, not per gfn (the coherence audit).
    /// Loads only; the MMU lock, either side, keeps the tables.
    pub(crate) fn next_leaf(&self, root: usize, gfn: Gfn, end: Gfn) -> Option<(Gfn, Translation)> {
        if root >= self.nr_roots {
            return None;
        }
        let tables = root_tables(self.root_pgd(root), &self.geo);
        // SAFETY: the start-level tables of a root of `self`, which is borrowed (the MMU lock,
        // either side): no table the walk reaches is freed (I1).
        let (base, w) = unsafe { walk::first_leaf::<S2, P>(&tables, gfn.raw(), end.raw()) }?;
        let base = Gfn::new(base);
        Some((base, translation(w.old, w.level, base)))
    }

    /// Counts a leaf installed by hand, as a racing fault that put it in a table being unlinked
    /// would have, for tests of [`S2Mmu::free_unlinked()`].
    #[cfg(all(test, not(loom)))]
    pub(crate) fn count_test_leaf(&self) {
        self.counters.leaf_added(Level::L4K);
    }

    /// Installs a block leaf mapping `gfn`'s aligned block at `level` to `pfn` in root `root`,
    /// in an empty entry whose table exists, as a block map would, for tests of the paths that
    /// handle blocks apart from [`S2Mmu::map()`].  Returns false if there is no empty entry at that
    /// level.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn install_test_block(
        &self,
        root: usize,
        gfn: u64,
        pfn: u64,
        level: Level,
        writable: bool,
    ) -> bool {
        let Some((ptep, v, at)) = self.entry(root, Gfn::new(gfn)) else {
            return false;
        };
        if at != level || v != 0 || pfn & (level.pages() - 1) != 0 {
            return false;
        }
        let ok = pte::try_set(ptep, 0, pte::make_leaf(pfn, level, writable)).is_ok();
        if ok {
            self.counters.leaf_added(level);
        }
        ok
    }
}

impl<P: PageOps> ZapTables for S2Mmu<P> {
    /// Frees the tables zaps unlinked.  Call with the write side held (`&mut self`), after the
    /// TLB flush that followed their unlink (the zap driver's): then no walker can be inside
    /// them (I1).
    fn free_zapped_tables(&mut self) {
        let counters = &self.counters;
        self.zapped_tables.drain(|pfn| {
            // SAFETY: unlinked by a zap of this MMU, empty, not freed since; per the caller no
            // walker is left in it.
            unsafe { P::free_table(pfn) };
            Counters::add(&counters.tables_freed, 1);
        });
    }
}

impl<P: PageOps> Drop for S2Mmu<P> {
    fn drop(&mut self) {
        // Reports the dirty pages: the primary MMU still has them mapped, or `release()` would
        // have zapped them already.
        self.zap_all();
        // No walker is left (the owner's guarantee), so no flush is needed first.
        self.free_zapped_tables();
        for i in 0..self.pgd_allocated {
            // SAFETY: a start-level table of this MMU that no walker can reach any more (the
            // owner of the MMU guarantees no walker runs once it is dropped), and each table
            // under it is linked only there (I1).
            unsafe { free_tree::<P>(self.pgd[i], self.geo.start_level, &self.counters) };
        }
        self.pgd_allocated = 0;
        self.nr_roots = 0;
        debug_assert_eq!(self.table_pages(), 0);
    }
}

/// The walk of [`S2Mmu::map()`] (KVM's `stage2_map_walker()`): on the way down to the
/// `target` level, links a table where there is none (or breaks a block into one) and has the
/// walk go into it; at the target, installs, relaxes or replaces the leaf, or replaces a table
/// by the block, and ends the walk with the outcome.
struct MapWalker<'m, P: PageOps> {
    mmu: &'m S2Mmu<P>,
    /// The level of the leaf.
    target: Level,
    pfn: Pfn,
    writable: bool,
    /// AF of a new leaf: clear for a prefetch ([`S2Mmu::map_prefetch()`]).
    young: bool,
    /// The size of the leaf.
    covers: Level,
    tables: &'m mut TableCache<P>,
    flush: &'m dyn Fn(),
    /// Tables linked on the way.
    new_tables: usize,
    /// A block on the way down was broken for a table (a split).
    split: bool,
}

impl<'a, P: PageOps> Visitor<'a> for MapWalker<'_, P> {
    const FLAGS: u32 = LEAF | TABLE_PRE | SHARED;
    type Break = Result<MapOutcome, MapError>;

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<Self::Break> {
        if ctx.level > self.target {
            if visit == Visit::TablePre {
                return Step::Continue;
            }
            let linked = self.mmu.link_table(
                ctx.ptep,
                ctx.old,
                ctx.level,
                self.tables,
                self.flush,
                &mut self.new_tables,
            );
            return match linked {
                // Into the table now linked there; a valid entry there was a block, which
                // the table replaced.
                Ok(()) => {
                    self.split |= pte::is_valid(ctx.old);
                    Step::Reload
                }
                Err(e) => Step::Break(Err(e)),
            };
        }
        let mut new = pte::make_leaf(self.pfn.raw(), ctx.level, self.writable);
        if !self.young {
            new = pte::mkold(new);
        }
        let mut unlinked = None;
        let action = if visit == Visit::TablePre {
            self.mmu
                .collapse(ctx.ptep, ctx.old, new, ctx.level, self.covers, self.flush)
                .map(|t| {
                    unlinked = Some(t);
                    MapAction::Replaced
                })
        } else {
            self.mmu
                .set_leaf(ctx.ptep, ctx.old, new, ctx.level, self.flush)
        };
        Step::Break(action.map(|action| MapOutcome {
            action,
            chain_len: 0,
            new_tables: self.new_tables,
            split: self.split,
            unlinked,
        }))
    }
}

/// The walk of [`zap_unlinked()`]: clears every valid leaf with a compare-exchange from the
/// value loaded, retried while the entry stays a valid leaf.
struct ZapUnlinked<'m, P: PageOps>(&'m S2Mmu<P>);

impl<'a, P: PageOps> Visitor<'a> for ZapUnlinked<'_, P> {
    const FLAGS: u32 = LEAF | SHARED;
    type Break = ();

    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        let mut v = ctx.old;
        loop {
            if !pte::is_leaf(v, ctx.level) {
                // A table a racing fault linked since the load: the walk goes into it.  Empty
                // and locked entries (I2) are left alone.
                return if pte::is_table(v, ctx.level) {
                    Step::Reload
                } else {
                    Step::Continue
                };
            }
            match pte::try_set(ctx.ptep, v, 0) {
                Ok(()) => {
                    self.0.leaf_removed(v, ctx.level);
                    return Step::Continue;
                }
                Err(cur) => v = cur,
            }
        }
    }
}

/// Zaps every valid leaf of `table_pfn`, a table at `level` just unlinked by a block map's
/// break-before-make, and of the tables under it: each with a compare-exchange from the value
/// loaded (I3: other walkers under the read side may still be inside), counted as removed with
/// its page marked dirty if it was writable (I4; the primary MMU still maps the page: zaps that
/// would unmap it need the write side).  Locked entries belong to their owner (I2): skipped.
///
/// # Safety
///
/// `table_pfn` is a table of `mmu`, not freed while this runs.
unsafe fn zap_unlinked<P: PageOps>(table_pfn: u64, level: Level, mmu: &S2Mmu<P>) {
    let tables = Tables::subtree(&table_pfn, level, 0);
    let mut pos = 0;
    // SAFETY: the table and those linked from it are freed only by `free_unlinked()`, after
    // this returns, per the caller (I1).
    let _ =
        unsafe { walk::walk::<S2, P, _>(&tables, &mut pos, tables.limit(), &mut ZapUnlinked(mmu)) };
}

/// Frees `table_pfn`, a table at `level` unlinked by a block map, and every table under it,
/// counting the leaves left in them (installed by racing faults after the unlink) as removed,
/// without marking their pages dirty (nothing could reach them to write).
///
/// # Safety
///
/// As for [`free_tree()`]; besides, no walker under the read side of the MMU lock is left in
/// it (the caller holds the write side).
unsafe fn drop_unlinked<P: PageOps>(table_pfn: u64, level: Level, counters: &Counters) {
    // SAFETY: unreachable, per the caller, and each table under it linked only there (I1).
    unsafe {
        walk::free_subtree::<S2, P, true>(
            table_pfn,
            level,
            |v, level| {
                if pte::is_leaf(v, level) {
                    counters.leaf_gone(level);
                    Counters::add(&counters.zapped, 1);
                }
            },
            || Counters::add(&counters.tables_freed, 1),
        )
    };
}

/// [`S2Mmu::leaf_removed()`], on an MMU's `counters`.
fn leaf_removed<P: PageOps>(c: &Counters, old: u64, level: Level) -> bool {
    c.leaf_gone(level);
    Counters::add(&c.zapped, 1);
    let dirty = pte::is_dirty(old);
    if dirty {
        P::set_page_dirty(pte::pfn(old));
        Counters::add(&c.dirty, 1);
    }
    dirty
}

/// Where a zap resumes: the root, and the gfn in it.
struct ZapAt {
    root: usize,
    pos: u64,
}

/// The walk of a zap in one root (KVM's `stage2_unmap_walker()`), under the write side: clears
/// every valid leaf it visits, counting into the zap `z` and `counters` and marking the pages of
/// writable leaves dirty (I4).  With `unlink_tables`, a table the walk is done with that is
/// empty is unlinked into `zapped`, as KVM's unmap frees a table whose last entry it cleared:
/// whether the zap covered it whole, or in part and nothing else is mapped there.  When
/// `zapped` has no room for it, the walk breaks at it.
struct ZapWalker<'z, P: PageOps, Y> {
    unlink_tables: bool,
    counters: &'z Counters,
    zapped: &'z mut ZappedTables,
    z: &'z mut Zap<Y>,
    _ops: PhantomData<fn() -> P>,
}

impl<'a, P: PageOps, Y: Yield> Visitor<'a> for ZapWalker<'_, P, Y> {
    const FLAGS: u32 = LEAF | TABLE_POST;
    type Break = ();

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<()> {
        if visit == Visit::Leaf {
            // The write side: no map, ager or break-before-make runs, so no entry is locked
            // (I2) and only the hardware walker may change one (setting AF).
            if pte::is_valid(ctx.old) {
                // Swap, not store: the hardware walker may set AF meanwhile, and the dirty state
                // must not be lost.  Relaxed: the caller's TLB flush, before the lock is
                // dropped, orders the clear before anything the primary MMU does to the page
                // next ("TLB flush before dropping the MMU lock").
                let old = ctx.ptep.swap(0, Ordering::Relaxed);
                debug_assert!(pte::is_valid(old) && !pte::is_locked(old));
                if pte::is_valid(old) {
                    let dirty = leaf_removed::<P>(self.counters, old, ctx.level);
                    self.z.cleared(1, u64::from(dirty));
                }
            }
            return Step::Continue;
        }
        let child = pte::pfn(ctx.old);
        // SAFETY: linked by a valid table entry of the MMU (I1); write side held.
        if !self.unlink_tables || !unsafe { table_is_empty::<P>(child) } {
            return Step::Continue;
        }
        if self.zapped.room() == 0 {
            return Step::Break(());
        }
        unlink_table(ctx.ptep, child, self.zapped);
        self.z.unlinked(1);
        Step::Continue
    }
}

impl<P: PageOps, Y: Yield> YieldHook for ZapWalker<'_, P, Y> {
    #[inline]
    fn should_yield(&mut self) -> bool {
        self.z.should_yield()
    }

    /// The zap's flush, which covers the leaves cleared and the tables unlinked (counted in
    /// `z`).
    #[inline]
    fn flush(&mut self) {
        self.z.flush()
    }
}

/// Whether every entry of the table `table_pfn` is empty.
///
/// # Safety
///
/// `table_pfn` is a table of an `S2Mmu<P>`, not freed while this runs.
unsafe fn table_is_empty<P: PageOps>(table_pfn: u64) -> bool {
    // SAFETY: per the caller.
    let t = unsafe { table::<P>(table_pfn) };
    t.iter().all(|e| e.load(Ordering::Relaxed) == 0)
}

/// Frees `table_pfn`, a table at `level`, and every table under it.
///
/// # Safety
///
/// `table_pfn` is a table of an `S2Mmu<P>`, not freed yet, that no walker can reach any more,
/// and each table under it is linked only from it or from the tables under it (I1).
unsafe fn free_tree<P: PageOps>(table_pfn: u64, level: Level, counters: &Counters) {
    // SAFETY: per the caller.
    unsafe {
        walk::free_subtree::<S2, P, false>(
            table_pfn,
            level,
            |_, _| {},
            || Counters::add(&counters.tables_freed, 1),
        )
    };
}

/// The walk of [`S2Mmu::age_gfn_range()`] in one root (KVM's `stage2_age_walker()`): ages
/// every valid leaf, and ends the walk once the result is known.
struct AgeWalker<'r> {
    op: AgeOp,
    result: &'r mut AgeResult,
}

impl<'a> Visitor<'a> for AgeWalker<'_> {
    const FLAGS: u32 = LEAF | SHARED;
    type Break = ();

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        // Empty and locked entries are skipped.
        if pte::is_valid(ctx.old) {
            age_leaf(ctx.ptep, ctx.old, self.op, self.result);
            if self.result.done() {
                return Step::Break(());
            }
        }
        Step::Continue
    }
}

/// The walk of [`S2Mmu::write_protect_gfn_range()`] in one root (KVM's `stage2_attr_walker()`
/// clearing `KVM_PTE_LEAF_ATTR_LO_S2AP_W`): takes W from every valid writable leaf.
struct WriteProtectWalker<P> {
    done: Protected,
    _ops: PhantomData<fn() -> P>,
}

impl<'a, P: PageOps> Visitor<'a> for WriteProtectWalker<P> {
    const FLAGS: u32 = LEAF;
    type Break = ();

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        if pte::is_valid(ctx.old) {
            self.done.visited += 1;
            if pte::is_writable(ctx.old) {
                // Atomic: the hardware walker may set AF meanwhile (I3).
                let old = ctx.ptep.fetch_and(!pte::S2AP_W, Ordering::Relaxed);
                if pte::is_writable(old) {
                    // A writable leaf counts as dirty (I4).
                    P::set_page_dirty(pte::pfn(old));
                    self.done.leaves += 1;
                }
            }
        }
        Step::Continue
    }
}

/// The walk of [`S2Mmu::split_huge_gfn_range()`] in one root (KVM's `stage2_split_walker()`):
/// breaks every valid block it meets and makes a table of its pieces in its place, then goes
/// into that table.  Breaks when the cache is empty or the limit is reached.
struct SplitWalker<'m, P: PageOps> {
    mmu: &'m S2Mmu<P>,
    tables: &'m mut TableCache<P>,
    flush: &'m dyn Fn(),
    done: Split,
}

impl<'a, P: PageOps> Visitor<'a> for SplitWalker<'_, P> {
    const FLAGS: u32 = LEAF;
    type Break = ();

    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        let Some(child) = ctx.level.lower() else {
            return Step::Continue;
        };
        if !pte::is_leaf(ctx.old, ctx.level) {
            return Step::Continue;
        }
        if self.tables.is_empty() {
            return Step::Break(());
        }
        if self.mmu.reserve_table().is_err() {
            self.done.limited = true;
            return Step::Break(());
        }
        let Some(table_pfn) = self.tables.take() else {
            self.mmu.unreserve_table();
            return Step::Break(());
        };
        if !pte::try_break(ctx.ptep, ctx.old, self.flush) {
            // The hardware walker set AF meanwhile (nothing else changes an entry under the
            // write side, I2): visit the entry again as it is now.
            // SAFETY: taken from `tables` above, never linked, still zeroed.
            unsafe { self.tables.put_back(table_pfn) };
            self.mmu.unreserve_table();
            return Step::Reload;
        }
        // SAFETY: from `tables`, so from `alloc_table()`; ours until `make()` links it, then a
        // table of this MMU, freed only under the write side we hold (I1).
        let entries = unsafe { table::<P>(table_pfn) };
        for (i, entry) in entries.iter().enumerate() {
            // Relaxed: published by the Release of `make()`.
            entry.store(pte::make_split_child(ctx.old, child, i), Ordering::Relaxed);
        }
        self.mmu.counters.leaf_gone(ctx.level);
        Counters::add(
            &self.mmu.counters.leaves[child.idx()],
            ENTRIES_PER_TABLE as u64,
        );
        pte::make(ctx.ptep, pte::make_table(table_pfn));
        self.done.split += 1;
        // Into the new table: the pieces of a 1G block are 2M blocks to split in turn.
        Step::Reload
    }
}

/// Unlinks the empty table `child` from its entry `ptep` into `zapped`, to be freed after the
/// next TLB flush (I1).  Write side held.
fn unlink_table(ptep: &AtomicU64, child: u64, zapped: &mut ZappedTables) {
    // Relaxed: no other walker under the lock runs (write side), and the flush before the
    // table is freed orders this for the hardware walker (I1).
    ptep.store(0, Ordering::Relaxed);
    zapped.push(child);
}

/// Ages the valid leaf `ptep`, which held `v`, as `op` says, recording into `result` (see
/// [`S2Mmu::age_gfn_range()`]).
pub(crate) fn age_leaf(ptep: &AtomicU64, v: u64, op: AgeOp, result: &mut AgeResult) {
    result.visited += 1;
    if !pte::is_young(v) {
        return;
    }
    result.young = true;
    if !op.clears() {
        return;
    }
    // One compare-exchange from the value loaded (I3); a failure is a lost race, young already, not
    // retried ("Clearing the accessed bit").
    match pte::try_set(ptep, v, pte::mkold(v)) {
        Ok(()) => result.cleared += 1,
        Err(_) => result.lost_races += 1,
    }
}
