// SPDX-License-Identifier: GPL-2.0

//! The x86 EPT MMU: 4-level EPT page tables built like KVM's shadow MMU
//! (`arch/x86/kvm/mmu/mmu.c`), with rmaps to find every SPTE of a gfn, and a lockless walker
//! that plays the hardware.
//!
//! Section names in quotes are those of Documentation/secmmu-protocols.rst, which states the rules
//! cited here and the KVM functions that keep them.
//!
//! Roots.  Each root is an independent set of tables (an address space, like a vCPU's EPT
//! pointer); the same gfn may be mapped in every root, and then its rmap holds one SPTE per
//! root.  Roots are allocated by [`X86Mmu::new()`] and live as long as the MMU; the tables
//! under them come and go (I2).
//!
//! Locking (KVM's `mmu_lock`, a spinning rwlock owned by the caller):
//!
//! - `&mut X86Mmu` means the write side is held: [`X86Mmu::map()`], the zaps.
//!   Only they change SPTEs, except for the A and D bits, which walkers set, and A, which
//!   lockless agers clear ([`age_gfn_range_lockless()`]).
//! - `&X86Mmu` means the read side is held (or the write side): [`X86Mmu::snapshot()`] and the
//!   statistics, which only load entries.
//! - [`translate()`] takes no lock at all, like the hardware walking EPT tables.  Its caller
//!   must keep the MMU from being dropped while it walks (a vCPU holds its space).
//!
//! Invariants, each kept by the code that says so:
//!
//! - I1. Every present leaf SPTE is in exactly one rmap: that of the slot holding its gfn, at its
//!   level, for its gfn; and every SPTE in an rmap is a present leaf while the MMU lock is not
//!   held by someone changing it.  Installing a leaf adds it ([`install_leaf()`]); clearing a
//!   leaf removes it ([`drop_leaf()`], [`zap_rmap()`]).  So zapping through the rmaps of a gfn
//!   range clears every mapping of the range in every root.
//! - I2. Every table page is a root or is linked by exactly one present non-leaf SPTE of this
//!   MMU, or was unlinked and is waiting to be freed: by a collapse ([`X86Mmu::map_level()`]
//!   putting a huge leaf where a table was), or by a zap that left it without a present entry
//!   ([`X86Mmu::zap_gfn_range()`]).  A table page is freed only when the MMU is dropped,
//!   or, once unlinked, with the MMU lock held for write and after a TLB flush that waited for
//!   every vCPU to leave guest mode ([`X86Mmu::free_unlinked()`],
//!   [`ZapTables::free_zapped_tables()`]; KVM's `kvm_mmu_commit_zap_page()` after
//!   `kvm_flush_remote_tlbs()`).  No walker can be inside it then:
//!   - the lockless walker ([`translate()`]) runs only in guest mode, so a walker that read a
//!     non-leaf SPTE may dereference the table it points at until it leaves guest mode, which
//!     the flush waited for;
//!   - walkers under the MMU lock ([`X86Mmu::snapshot()`], the maps, zaps and locked aging)
//!     cannot meet an unlinked table: unlinking and freeing both happen under the lock held for
//!     write;
//!   - lockless agers ([`age_gfn_range_lockless()`]) walk no table: they reach SPTEs only
//!     through rmaps, and dereference one only while they hold its rmap's bit lock (R4).  A
//!     table is unlinked only once it holds no leaf: each was zapped under the MMU lock held for
//!     write and removed from its rmap under the rmap's bit lock ([`zap_rmap()`],
//!     [`drop_leaf()`]), which waited for any ager holding it; an ager that locks the rmap
//!     later does not find the SPTE there (I1), and no map can put it back meanwhile.
//! - I3. A walker changes only A and D, only with a compare-exchange from the value it read, and
//!   only on a present leaf: it can never make a zapped SPTE present again (unlike an
//!   unconditional OR), nor set D on a leaf that lost W meanwhile.
//!
//! rmaps and their lifetime (see "Memslots and their lifetime" in
//! Documentation/secmmu-protocols.rst).  The rmaps of a memslot ([`SlotRmaps`]) belong to the
//! memslot set's entry for the slot, as KVM's `slot->arch.rmap` does; the MMU keeps no slot of
//! its own and reaches rmaps only through a [`SlotRef`] borrowed from a set.  Everything in them
//! is reached through shared references and changed only through atomics (the rmap heads with
//! their bit locks, the SPTE counts), so a lockless ager aliases nothing that a holder of
//! `&mut X86Mmu` may write.
//!
//! - R1. A set never changes.  A change (create, the KVM_MEMSLOT_INVALID step of a deletion, the
//!   removal) makes a new set whose entries share the old ones' rmaps by pointer, never copies
//!   them: the heads change under the MMU lock and under lockless agers while several sets
//!   reach them.  Rmaps are added to or emptied only under the MMU lock held for write
//!   ([`MmuWriteLocked`]); lockless agers lock them read-only.
//! - R2. The current set is published through one RCU pointer, replaced only under the MMU lock
//!   held for write (KVM's `kvm_swap_active_memslots()`).  A holder of the MMU lock, either side,
//!   sees one set for as long as it holds the lock.  A lockless ager reads the set inside an RCU
//!   read side (preemption disabled: [`NoPreempt`]) and may see the set from before a change:
//!   a slot being created then has empty rmaps (nothing was mapped through it before its set was
//!   published), one being deleted is zapped anyway (R4).
//! - R3. A replaced set is freed an RCU grace period after its replacement (polled, so slot
//!   churn does not wait for one; the owner's drop waits with `synchronize_rcu()`), and a
//!   slot's rmaps with the last set that holds them: the rmaps an ager found stay valid for its
//!   whole read side.
//! - R4. A slot is zapped, and TLBs flushed, before a set without it is published: a deletion
//!   first publishes a set where the slot is marked invalid (faults no longer find it;
//!   invalidations and aging still do, while its zap yields the lock), zaps it, then publishes
//!   the set without it.  So the rmaps a late reader may still lock are empty.  Descriptors and
//!   the SPTEs an rmap points at are covered by the bit lock ("Lockless rmap walks", I2), not by
//!   the grace period: a reader dereferences them only while it holds the rmap's bit lock, and
//!   the MMU frees descriptors and table pages only after emptying the rmaps under their bit
//!   locks.
//! - R5. The MMU outlives no leaf: its owner zaps every slot of the set before dropping it
//!   ([`X86Mmu::zap_all()`]; the kernel's `release()` always runs first), since the rmaps, which
//!   live in the set, would otherwise point into freed tables.
//!
//! Aging (`aging.rs`, "Aging without the MMU lock").  The caller turns a host-virtual range
//! into (slot, gfn range) pairs once, from the memslot set (KVM's `kvm_handle_hva_range()`);
//! each pair is aged here.  With A/D enabled,
//! [`age_gfn_range_lockless()`] ages through the rmaps without the MMU lock, each rmap locked
//! read-only; clearing A is a single compare-exchange from the value read (never a store of a stale
//! value, see "Clearing the accessed bit", nor anything that can make a zapped SPTE present again,
//! I3).  Without A/D, aging takes permissions away (access tracking), so it runs under the MMU lock
//! for write: [`X86Mmu::age_gfn_range_locked()`], which also does the A/D case under the lock, for
//! comparison.  The fault path restores an access-tracked leaf without resolving the page again:
//! [`X86Mmu::restore_access_tracked()`].
//!
//! TLBs.  A zap clears SPTEs, but vCPUs may still hold their translations in software TLBs.
//! Whoever zaps must flush every vCPU's TLB, and wait for the flush (`tlb.rs`), before it drops
//! the MMU lock: before each yield of a resumable zap and before returning ("TLB flush before
//! dropping the MMU lock").  Then no vCPU can use a translation of a zapped SPTE, and the primary
//! MMU may free its page.  The same flush lets the caller free the tables the zap unlinked (I2).
//!
//! Table memory.  A zap of a gfn range unlinks the tables it leaves empty in every root, so
//! memslots that come and go at fresh addresses do not grow the tables without bound (KVM's
//! shadow MMU zaps the shadow pages of a deleted memslot, `kvm_arch_flush_shadow_memslot()`).
//! The zaps that do not unlink ([`X86Mmu::zap_all()`] at teardown, [`X86Mmu::zap_slot()`])
//! leave the tables to the drop.
//!
//! Huge pages.  [`X86Mmu::map_level()`] installs leaves at 4K, 2M and 1G, each in the rmap of
//! its level; the zaps, the agers, the walkers and the snapshot handle every level, and visit
//! huge levels from the range start aligned down ("Ranges and mapping levels"), so an invalidation
//! of part of a huge leaf zaps all of it.  The fault path picks the level (`vcpu.rs`): no larger
//! than the primary MMU maps the host range, nor than the slot's alignment allows.  A map below a
//! huge leaf splits it (zaps it and links a table); a huge map over a table collapses it (zaps
//! every leaf under it, unlinks it, and the caller frees it after the TLB flush, I2).
//!
//! Walks.  Every walk of the tables is a visitor of the shared walker (`walk.rs`, [`Ept`] says
//! what an SPTE is to it): the lookups and [`translate()`] ([`walk::find()`]), the map's descent
//! ([`MapWalker`]), the collapse's zap ([`zap_tree()`]), the zap's walk for empty tables
//! ([`UnlinkEmpty`], with the walker's safe points), [`X86Mmu::next_leaf()`] and the frees
//! ([`walk::free_subtree()`]).  The leaves of a gfn range are zapped and aged through the rmaps.
//!
//! Kernel-free: built into the module and into the host crate.

use core::marker::PhantomData;
use core::ops::ControlFlow;
use core::ptr::NonNull;

use crate::mmu::addr::{Gfn, Pfn};
use crate::mmu::aging::{AgeOp, AgeResult};
use crate::mmu::dirty::{Protected, Split, SplitAt};
use crate::mmu::level::Level;
use crate::mmu::memslot::{CurrentSlots, Slot, SlotEntry};
use crate::mmu::pgtable::{
    snapshot_byte, MapAction, MmuStats, PageOps, TableCache, UnlinkedTable, ZapCursor,
    ZappedTables, ENTRIES_PER_TABLE,
};
use crate::mmu::prim::{self, warn_on, AllocError, AtomicU64, NoPreempt, Ordering, PVec};
use crate::mmu::stats::log_hist_bucket;
use crate::mmu::walk::{
    self, walk_yielding, Ctx, PteEncoding, Step, Tables, Visit, Visitor, Walked, YieldHook,
    LAST_LEVEL, LEAF, TABLE_POST, TABLE_PRE,
};
use crate::mmu::zap::{NoYield, Owned, Pause, Yield, Zap, ZapLock, ZapTables};
use crate::x86::rmap::{DescCache, MmuWriteLocked, RmapHead};
use crate::x86::spte;

pub(crate) use crate::mmu::pgtable::{MapError, MapOutcome, Translation, WalkFault};

/// Most roots an MMU can have (`SECMMU_MAX_ROOTS`).
pub(crate) const MAX_ROOTS: usize = 32;

/// Bits of gfn a 4-level EPT walk translates (48-bit guest-physical addresses): a gfn at or above
/// `1 << GFN_BITS` is never mapped.
pub(crate) const GFN_BITS: u32 = 36;

/// Table pages a map may link: one per level below the root.  Top up the [`TableCache`] with at
/// least this many before taking the MMU lock.
pub(crate) const MAP_MIN_TABLES: usize = 3;

/// rmap descriptors a map may take: one add.  Top up the [`DescCache`] with at least this many
/// before taking the MMU lock.
pub(crate) const MAP_MIN_DESCS: usize = 1;

/// rmaps a zap visits between two times it asks whether to yield.
const ZAP_BATCH: u64 = 32;

/// Rmap descriptors an eager split of one huge leaf may take in an MMU of `nr_roots` roots: one
/// per piece if another root maps the piece's gfn at its level already (KVM tops up
/// `SPLIT_DESC_CACHE_MIN_NR_OBJECTS`, 513, whatever the roots), none with one root, where the
/// rmap of every piece is empty (the huge leaf covered its gfn in the only root).
pub(crate) const fn split_min_descs(nr_roots: usize) -> usize {
    if nr_roots > 1 {
        ENTRIES_PER_TABLE
    } else {
        0
    }
}

/// Table entries a zap's walk for the tables it emptied visits between two times it asks
/// whether to yield.  More than the entries on one path from the root to a 4K table, so that a
/// step always gets past the gfn it resumed at.
pub(crate) const TABLE_SCAN_BATCH: u64 = 512;

/// The level of the root tables: 4-level EPT, KVM's `PT64_ROOT_4LEVEL`.
const ROOT_LEVEL: Level = Level::L512G;

/// EPT entries as the shared walker (`walk.rs`) sees them: a present non-leaf SPTE points at a
/// table (every present 4K SPTE is a leaf, and above 4K the large-page bit makes a leaf).
pub(crate) struct Ept;

impl PteEncoding for Ept {
    /// 1G: EPT has no 512G pages.
    const MAX_LEAF: Level = Level::L1G;

    #[inline(always)]
    fn is_valid(entry: u64) -> bool {
        spte::is_present(entry)
    }

    #[inline(always)]
    fn is_table(entry: u64, level: Level) -> bool {
        spte::is_present(entry) && level > LAST_LEVEL && entry & spte::LARGE == 0
    }

    #[inline(always)]
    fn table_pfn(entry: u64) -> u64 {
        spte::pfn(entry)
    }
}

/// The root table `root`, where the walks of a root start: 4 levels translate
/// [`GFN_BITS`].
#[inline(always)]
fn root_tables(root: &u64) -> Tables<'_> {
    Tables::new(core::slice::from_ref(root), ROOT_LEVEL, 0, 1 << GFN_BITS)
}

/// Whether `pfn` fits the SPTE's frame number field.
fn pfn_fits(pfn: u64) -> bool {
    pfn <= spte::PFN_MASK >> spte::PAGE_SHIFT
}

/// Number of rmaps at `level` for the slot `[base, base + npages)`: one per `level`-sized,
/// aligned block the slot overlaps, so from `level.align_down(base)` ("Ranges and mapping levels").
fn rmap_count(base: u64, npages: u64, level: Level) -> u64 {
    if npages == 0 {
        return 0;
    }
    let shift = level.gfn_shift();
    let last = base.saturating_add(npages - 1);
    (last >> shift) - (base >> shift) + 1
}

/// The rmaps of one memslot (KVM's `kvm_arch_memory_slot.rmap`): for each mapping level, one
/// [`RmapHead`] per gfn block of that level the slot overlaps.  They carry no geometry: the
/// memslot set's entry for the slot, which owns them, does ([`SlotRef`]).
///
/// Made with [`SlotRmaps::new()`] outside the MMU lock (it allocates, maybe a lot, and may sleep),
/// and owned, through a shared pointer, by every memslot set that holds the slot; freed with the
/// last of them, which is retired an RCU grace period after a set without the slot replaced it
/// (R3), outside the MMU lock (freeing may sleep).
pub(crate) struct SlotRmaps {
    /// Per [`Level`]: the rmap of gfn `g` is at `(g >> shift) - (base_gfn >> shift)`.
    rmaps: [PVec<RmapHead>; 3],
    /// SPTEs in all these rmaps.  Changed only under the MMU lock held for write (R1); atomic
    /// because lockless readers share the structure, not because anyone races on it.
    sptes: AtomicU64,
}

impl SlotRmaps {
    /// Allocates empty rmaps covering `slot`, at every level.  May sleep.
    pub(crate) fn new(slot: &Slot) -> Result<Self, AllocError> {
        let alloc = |level: Level| {
            let n = rmap_count(slot.base_gfn.raw(), slot.npages, level);
            let n = usize::try_from(n).map_err(|_| AllocError)?;
            prim::try_vec_with(n, RmapHead::new)
        };
        Ok(SlotRmaps {
            rmaps: [alloc(Level::L4K)?, alloc(Level::L2M)?, alloc(Level::L1G)?],
            sptes: AtomicU64::new(0),
        })
    }

    /// Number of rmaps at `level`.
    pub(crate) fn nr_rmaps(&self, level: Level) -> usize {
        self.rmaps[level.idx()].len()
    }

    /// Number of SPTEs in the rmaps: 0 once the slot was zapped.
    pub(crate) fn sptes(&self) -> u64 {
        self.sptes.load(Ordering::Relaxed)
    }

    /// Counts `n` SPTEs added to the rmaps.  Only under the MMU lock held for write (R1).
    fn add_sptes(&self, n: u64) {
        self.sptes.store(self.sptes() + n, Ordering::Relaxed);
    }

    /// Counts `n` SPTEs removed from the rmaps.  Only under the MMU lock held for write (R1).
    fn sub_sptes(&self, n: u64) {
        self.sptes
            .store(self.sptes().saturating_sub(n), Ordering::Relaxed);
    }
}

impl Drop for SlotRmaps {
    fn drop(&mut self) {
        // Non-empty rmaps would leak their descriptors, and their SPTEs would escape zapping.
        debug_assert_eq!(
            self.sptes(),
            0,
            "rmaps dropped before their slot was zapped"
        );
    }
}

/// What a memslot set's entry keeps for the x86 MMU: the slot's rmaps, if it has them.
pub(crate) trait RmapsOf {
    /// The slot's rmaps.
    fn rmaps(&self) -> Option<&SlotRmaps>;
}

/// A memslot and its rmaps, as an entry of the memslot set holds them (KVM's
/// `struct kvm_memory_slot` with its `arch.rmap`): what the MMU maps, zaps and ages through.
/// Borrowed from a set that the borrower keeps alive: by holding the MMU lock, or by an RCU read
/// side (R2, R3).
#[derive(Clone, Copy)]
pub(crate) struct SlotRef<'a> {
    slot: &'a Slot,
    rmaps: &'a SlotRmaps,
}

impl<'a> SlotRef<'a> {
    /// `slot` with `rmaps`, which [`SlotRmaps::new()`] made for a slot of the same geometry.
    pub(crate) fn new(slot: &'a Slot, rmaps: &'a SlotRmaps) -> Self {
        debug_assert_eq!(
            rmaps.nr_rmaps(Level::L4K) as u64,
            rmap_count(slot.base_gfn.raw(), slot.npages, Level::L4K)
        );
        SlotRef { slot, rmaps }
    }

    /// The slot of a memslot set's `entry` with its rmaps, if it has them.
    pub(crate) fn of<D: RmapsOf>(entry: &'a SlotEntry<D>) -> Option<Self> {
        entry
            .data
            .rmaps()
            .map(|rmaps| Self::new(&entry.slot, rmaps))
    }

    /// The slot.
    pub(crate) fn slot(&self) -> &'a Slot {
        self.slot
    }

    /// The slot's rmaps.
    pub(crate) fn rmaps(&self) -> &'a SlotRmaps {
        self.rmaps
    }

    /// First gfn of the slot.
    fn base_gfn(&self) -> u64 {
        self.slot.base_gfn.raw()
    }

    /// One past the last gfn of the slot.
    fn end_gfn(&self) -> u64 {
        self.slot.end_gfn().raw()
    }

    /// Whether the slot holds `gfn`.
    fn contains(&self, gfn: u64) -> bool {
        self.slot.contains(Gfn::new(gfn))
    }

    /// The rmap of `gfn` at `level`; `None` if the slot does not overlap its block.
    pub(crate) fn rmap(&self, level: Level, gfn: u64) -> Option<&'a RmapHead> {
        let shift = level.gfn_shift();
        let i = (gfn >> shift).checked_sub(self.base_gfn() >> shift)?;
        self.rmaps.rmaps[level.idx()].get(usize::try_from(i).ok()?)
    }

    /// Adds the length of each rmap of `level` from index `from` on, at most `n` of them, to its
    /// log2 bucket in `hist` ([`log_hist_bucket()`]; KVM's `kvm_mmu_rmaps_stat_show()`, which
    /// counts under the MMU lock).  Each rmap is read under its bit lock taken read-only, as
    /// lockless aging does ("Lockless rmap walks"), so the counts are each rmap's at some moment
    /// of the walk.  Returns the index to go on from, `None` past the last.
    pub(crate) fn chain_lengths(
        &self,
        level: Level,
        from: usize,
        n: usize,
        no_preempt: &NoPreempt<'_>,
        hist: &mut [u64],
    ) -> Option<usize> {
        let rmaps = &self.rmaps.rmaps[level.idx()];
        let end = from.saturating_add(n).min(rmaps.len());
        for head in (from..end).filter_map(|i| rmaps.get(i)) {
            let len = if head.is_empty() {
                0
            } else {
                head.lock_readonly(no_preempt).len()
            };
            if let Some(b) = hist.get_mut(log_hist_bucket(len as u64, hist.len())) {
                *b += 1;
            }
        }
        (end < rmaps.len()).then_some(end)
    }

    /// Number of SPTEs in the slot's rmaps: 0 once the slot was zapped.
    pub(crate) fn sptes(&self) -> u64 {
        self.rmaps.sptes()
    }

    /// Calls `f` on the rmap of every block that `[start, end)` overlaps in the slot, at every
    /// level, 4K first, until `f` returns true.  At huge levels the walk starts from `start`
    /// aligned down to the level, or the last huge block of an unaligned range would be missed
    /// ("Ranges and mapping levels").  Returns whether `f` stopped the walk.
    fn for_each_rmap(&self, start: Gfn, end: Gfn, mut f: impl FnMut(&RmapHead) -> bool) -> bool {
        let start = start.raw().max(self.base_gfn());
        let end = end.raw().min(self.end_gfn());
        if start >= end {
            return false;
        }
        for level in Level::MAPPABLE {
            // Not below the slot's first block: `start` is in the slot.
            let mut gfn = level.align_down(start);
            while gfn < end {
                if let Some(head) = self.rmap(level, gfn) {
                    if f(head) {
                        return true;
                    }
                }
                gfn += level.pages();
            }
        }
        false
    }
}

/// The x86 EPT MMU.  See the module documentation for its locking and invariants.
///
/// Dropping it frees every table page: no lockless walker ([`translate()`]) may run then, or
/// later, with one of its roots, and every slot must have been zapped before ([`X86Mmu::zap_all()`]
/// with the memslot set): the rmaps live in the set, which the MMU does not reach (R5).
pub(crate) struct X86Mmu<P: PageOps> {
    /// The root tables' pfns, in `roots[..nr_roots]`.
    roots: [u64; MAX_ROOTS],
    nr_roots: usize,
    /// New leaves keep A/D (otherwise aging uses access tracking).
    ad_enabled: bool,
    stats: MmuStats,
    /// Tables zaps unlinked, freed by [`ZapTables::free_zapped_tables()`] after the next flush.
    zapped_tables: ZappedTables,
    /// Most table pages the MMU may hold ([`X86Mmu::set_table_limit()`]).
    table_limit: u64,
    /// Where rmap writers get their proof of the write side: a field of its own, so that the
    /// proof borrows it alone and the other fields stay free to borrow.
    write_side: WriteSide,
    _ops: PhantomData<fn() -> P>,
}

/// The witness, inside an [`X86Mmu`], that whoever borrows the MMU mutably holds the MMU lock for
/// write.
///
/// # Invariants
///
/// A `WriteSide` only exists as the `write_side` field of an [`X86Mmu`], and an `&mut X86Mmu` is
/// only ever formed through the MMU lock's write guard (`format.rs` keeps the tables in the
/// lock's data; the kernel glue takes `&mut` of them nowhere else), or while the MMU is not
/// shared yet (being built, or owned by a host test, which is then the only writer of its rmaps;
/// lockless agers only take rmap locks read-only).  So an `&mut WriteSide` proves the write side.
struct WriteSide(());

impl WriteSide {
    /// The rmaps' proof that the MMU lock is held for write, for as long as `self` is borrowed.
    #[inline(always)]
    fn locked(&mut self) -> MmuWriteLocked<'_> {
        // SAFETY: By the type invariants, `&mut self` is borrowed from an `&mut X86Mmu`, which
        // only the holder of the MMU lock's write side (a spinning lock: preemption is off), or
        // the only owner of an unshared MMU, has; the token cannot outlive the borrow.
        unsafe { MmuWriteLocked::assume() }
    }
}

/// A leaf to install.
#[derive(Clone, Copy)]
struct Mapping {
    gfn: u64,
    pfn: u64,
    level: Level,
    writable: bool,
    /// Made by a pre-fault (KVM's `prefetch`): installed not accessed.
    prefetch: bool,
}

impl<P: PageOps> X86Mmu<P> {
    /// Makes an MMU with `nr_roots` (1 to [`MAX_ROOTS`]) empty roots, whose leaves keep A/D bits
    /// if `ad_enabled`.  Allocates, and may sleep: call it before the MMU is shared.  Fails on
    /// allocation failure, and for a root count out of range (which the caller validates).
    pub(crate) fn new(nr_roots: usize, ad_enabled: bool) -> Result<Self, AllocError> {
        if nr_roots == 0 || nr_roots > MAX_ROOTS {
            return Err(AllocError);
        }
        let zapped_tables = ZappedTables::new()?;
        let mut mmu = X86Mmu {
            roots: [0; MAX_ROOTS],
            nr_roots: 0,
            ad_enabled,
            stats: MmuStats::default(),
            zapped_tables,
            table_limit: u64::MAX,
            // INVARIANT: The field of a new `X86Mmu`.
            write_side: WriteSide(()),
            _ops: PhantomData,
        };
        while mmu.nr_roots < nr_roots {
            // On failure, dropping `mmu` frees the roots allocated so far.
            mmu.roots[mmu.nr_roots] = P::alloc_table()?;
            mmu.nr_roots += 1;
            mmu.stats.tables_allocated += 1;
        }
        Ok(mmu)
    }

    /// Number of roots.
    pub(crate) fn nr_roots(&self) -> usize {
        self.nr_roots
    }

    /// The largest leaf [`X86Mmu::map_level()`] installs: 1G (a 4-level EPT walk has 1G and 2M
    /// entries under its root; EPT has no 512G pages).
    pub(crate) fn max_map_level(&self) -> Level {
        Ept::MAX_LEAF
    }

    /// Whether new leaves keep A/D bits.
    pub(crate) fn ad_enabled(&self) -> bool {
        self.ad_enabled
    }

    /// The pfn of root `root`'s table, for [`translate()`].  It stays the same, and the table
    /// allocated, until the MMU is dropped.
    pub(crate) fn root_pfn(&self, root: usize) -> Option<u64> {
        self.roots[..self.nr_roots].get(root).copied()
    }

    /// The counters.
    pub(crate) fn stats(&self) -> MmuStats {
        self.stats
    }

    /// Limits the table pages the MMU may hold ([`X86Mmu::table_pages()`]) to `pages`: from
    /// now on, a map that needs a new table while the MMU holds `pages` or more fails with
    /// [`MapError::TableLimit`].  Tables already linked stay.  No limit at first (`u64::MAX`).
    pub(crate) fn set_table_limit(&mut self, pages: u64) {
        self.table_limit = pages;
    }

    /// Table pages allocated now, roots included.
    pub(crate) fn table_pages(&self) -> u64 {
        self.stats.table_pages()
    }

    /// Present leaf SPTEs now, in all roots.
    pub(crate) fn leaf_sptes(&self) -> u64 {
        self.stats.leaf_count()
    }

    /// Present leaf SPTEs now, in all roots, by level (4K, 2M, 1G).
    pub(crate) fn leaves_by_level(&self) -> [u64; 3] {
        self.stats.leaves
    }

    /// Maps `gfn` of `slot` to host page `pfn` in root `root`, writable if `writable`,
    /// as a fault does after resolving the page (KVM's `direct_map()` + `mmu_set_spte()`).
    ///
    /// Walks down from the root, linking missing tables from `tables`, then sets the 4K leaf:
    ///
    /// - empty: installs a new leaf and adds it to the rmap ([`MapAction::Installed`]);
    /// - maps `pfn` already: only grows its permissions in place, read-only to writable
    ///   ([`MapAction::Upgraded`]), or restores an access-tracked leaf ([`MapAction::Restored`]);
    ///   never takes W away ([`MapAction::Unchanged`]);
    /// - maps another page (stale): zaps it, with its rmap entry and dirty state, then installs
    ///   the new leaf ([`MapAction::Replaced`]); the caller must flush TLBs before dropping the
    ///   MMU lock ([`MapOutcome::needs_flush()`]).
    ///
    /// `tables` must hold [`MAP_MIN_TABLES`] and `descs` [`MAP_MIN_DESCS`], or the map fails
    /// with [`MapError::NeedTopup`] before changing anything.  A map that needs a new table
    /// while the MMU holds its limit of table pages fails with [`MapError::TableLimit`]
    /// ([`X86Mmu::set_table_limit()`]), leaving linked the tables it linked on the way.
    /// `&mut self`: the MMU lock is held for write.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map(
        &mut self,
        root: usize,
        slot: SlotRef<'_>,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        self.map_level(root, slot, gfn, pfn, writable, Level::L4K, tables, descs)
    }

    /// [`X86Mmu::map()`] at any level: maps the `level`-sized block of gfns that starts at
    /// `gfn` (aligned to `level`, and whole inside the slot) to the host pages that start at
    /// `pfn` (aligned to `level` too), with one leaf.  The caller has made sure that the primary
    /// MMU maps the host range at least that large (see `vcpu.rs`).
    ///
    /// On the way down, a huge leaf where a table must go is zapped and replaced by a table (a
    /// split, [`MapOutcome::split`]): later faults map what the primary maps then.  At the
    /// target level, a table where the huge leaf goes (the range was mapped smaller, and the
    /// primary has collapsed it since) is emptied: every leaf under it is zapped through its
    /// rmap, and the table is unlinked and replaced by the leaf (a collapse).  Lockless walkers
    /// may still be inside the unlinked table: it is handed back in [`MapOutcome::unlinked`],
    /// and the caller frees it with [`X86Mmu::free_unlinked()`] after the TLB flush that
    /// [`MapOutcome::needs_flush()`] asks for (I2).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_level(
        &mut self,
        root: usize,
        slot: SlotRef<'_>,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        level: Level,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        // The walk, the rmaps and the SPTE take the numbers underneath.
        let m = Mapping {
            gfn: gfn.raw(),
            pfn: pfn.raw(),
            level,
            writable,
            prefetch: false,
        };
        self.map_at(root, slot, m, tables, descs)
    }

    /// [`X86Mmu::map_level()`] of a leaf made ahead of any access: a pre-fault
    /// (SECMMU_PRE_FAULT_MEMORY, read-only) or a fault-around (writable if the primary maps the
    /// page writable).  The new leaf is marked for access tracking, as KVM's `make_spte()` marks
    /// a prefetched SPTE (`mark_spte_for_access_track()`): with A/D bits it is installed with A
    /// clear, so aging sees the page unused until the vCPU touches it; without, access-tracked,
    /// so the first access restores it without get_user_pages.  A leaf already present is left
    /// as it is, young or not (KVM's spurious prefetch), but may become writable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_level_prefetch(
        &mut self,
        root: usize,
        slot: SlotRef<'_>,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        level: Level,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let m = Mapping {
            gfn: gfn.raw(),
            pfn: pfn.raw(),
            level,
            writable,
            prefetch: true,
        };
        self.map_at(root, slot, m, tables, descs)
    }

    /// Frees a table that a map unlinked ([`MapOutcome::unlinked`]), and the tables under it.
    ///
    /// # Safety
    ///
    /// `t` came from a [`MapOutcome`] of this MMU and was not freed yet, and no lockless walker
    /// can still be inside it: a TLB flush that waits for every vCPU to leave guest mode (the
    /// only place [`translate()`] runs) has completed since the map unlinked it.
    pub(crate) unsafe fn free_unlinked(&mut self, t: UnlinkedTable) {
        let Some(level) = t.covers.lower() else {
            warn_on!(true, "a 4K entry never links a table");
            return;
        };
        // SAFETY: unlinked by a map of this MMU, so linked nowhere, with only empty entries and
        // tables linked from it alone (I2); no walker is left in it, per the caller.
        unsafe { free_tree::<P>(t.pfn, level, &mut self.stats) };
    }

    /// [`X86Mmu::map_level()`] with the mapping gathered.
    fn map_at(
        &mut self,
        root: usize,
        slot: SlotRef<'_>,
        m: Mapping,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let root_pfn = self.roots[..self.nr_roots]
            .get(root)
            .ok_or(MapError::BadRoot)?;
        let pages = m.level.pages();
        if m.gfn >> GFN_BITS != 0 || m.gfn & (pages - 1) != 0 {
            return Err(MapError::BadGfn);
        }
        if !pfn_fits(m.pfn) || m.pfn & (pages - 1) != 0 {
            return Err(MapError::BadPfn);
        }
        // The whole block is in the slot: every leaf under a table replaced by the huge leaf
        // maps a gfn of this slot, so it is in this slot's rmaps (I1).
        if !slot.contains(m.gfn) || !slot.contains(m.gfn + pages - 1) {
            return Err(MapError::BadGfn);
        }
        if tables.len() < MAP_MIN_TABLES || descs.len() < MAP_MIN_DESCS {
            return Err(MapError::NeedTopup);
        }
        let mut locked = self.write_side.locked();
        let mut v = MapWalker {
            m,
            target: m.level,
            slot,
            locked: &mut locked,
            descs,
            tables,
            stats: &mut self.stats,
            table_limit: self.table_limit,
            ad_enabled: self.ad_enabled,
            new_tables: 0,
            zapped_huge: false,
        };
        let mut pos = m.gfn;
        // SAFETY: a root of this MMU, whose lock is held for write (`&mut self`): every table
        // the walk reaches is linked, and freed only after it is unlinked and a flush (I2).
        let flow =
            unsafe { walk::walk::<Ept, P, _>(&root_tables(root_pfn), &mut pos, m.gfn + 1, &mut v) };
        match flow {
            ControlFlow::Break(mapped) => mapped,
            // Not reached: the walk ends at the target level at the latest.
            ControlFlow::Continue(()) => Err(MapError::BadGfn),
        }
    }

    /// Zaps the gfns `[start, end_gfn)` of slot `slot_id` in every root (KVM's
    /// `kvm_unmap_gfn_range()` through `__walk_slot_rmaps()`), with the MMU lock `lock` held for
    /// write, yielding it and flushing as the zap driver `z` says ([`Zap::run()`]).  The slot's
    /// rmaps are looked up in `slots` again for every step, since a yield may let the slot be
    /// deleted (its deletion zaps it whole): the zap ends when the slot is gone.
    ///
    /// Walks the slot's rmaps at every level, 4K first, huge levels from the start aligned down
    /// ("Ranges and mapping levels"); empties each rmap under its bit lock, clearing every SPTE in
    /// it atomically and marking its page dirty if the SPTE was (D set, or writable without A/D).
    /// Every [`ZAP_BATCH`] rmaps it asks `z` whether to yield (need to reschedule, lock
    /// contention): if so, it flushes and yields, and resumes where it stopped.
    ///
    /// Then it walks the tables of the range in every root and unlinks, bottom-up, every table
    /// below a root that has no present entry left (a table whose last table it unlinked goes
    /// too), as KVM's shadow MMU zaps the shadow pages of a deleted memslot
    /// (`kvm_mmu_prepare_zap_page()`, then `kvm_mmu_commit_zap_page()` after the flush).  They
    /// are freed after the next flush (I2).  This walk asks `z` whether to yield every
    /// [`TABLE_SCAN_BATCH`] entries, flushing inside the walk before it yields
    /// ([`walk_yielding()`]); when the list of unlinked tables is full, `z` flushes and frees
    /// them, and the walk goes on.
    ///
    /// What the zap cleared and unlinked since its last flush is left in `z`: the caller flushes
    /// and frees it ([`Zap::flush_and_free()`]) before dropping the lock (see Invalidation in
    /// `Documentation/secmmu.rst`).  Never sleeps, but in `lock.resched()`.
    pub(crate) fn zap_gfn_range<Y: Yield, D: RmapsOf>(
        lock: &mut impl ZapLock<Mmu = Self>,
        slots: &mut impl CurrentSlots<D>,
        z: &mut Zap<Y>,
        slot_id: u32,
        start: Gfn,
        end: Gfn,
    ) {
        let mut cursor = ZapCursor::new(start.raw());
        let end_gfn = end.raw();
        z.run(lock, |mmu, z| {
            slots.with_slot(slot_id, |slot| match slot.and_then(SlotRef::of) {
                Some(slot) => mmu.zap_step(z, slot, &mut cursor, end_gfn, true),
                None => {
                    cursor.finish();
                    Pause::Done
                }
            })
        });
    }

    /// One step of [`X86Mmu::zap_gfn_range()`] from `cursor`, up to the next yield or until the
    /// list of unlinked tables is full, unlinking the tables it empties if `unlink_tables`.
    fn zap_step<Y: Yield>(
        &mut self,
        z: &mut Zap<Y>,
        slot: SlotRef<'_>,
        cursor: &mut ZapCursor,
        end_gfn: u64,
        unlink_tables: bool,
    ) -> Pause {
        let stats = &mut self.stats;
        let mut locked = self.write_side.locked();

        let stop_gfn = end_gfn.min(slot.end_gfn());
        // rmaps visited by this step: it asks whether to yield after every batch of them.
        let mut visited = 0;
        while cursor.table_root().is_none() && !cursor.is_done() {
            let level = cursor.level();
            // Cursors at huge levels start aligned, and so does the slot's first block.
            let mut gfn = cursor.gfn().max(level.align_down(slot.base_gfn()));
            while gfn < stop_gfn {
                if let Some(head) = slot.rmap(level, gfn) {
                    let (zapped, dirty) = zap_rmap::<P>(head, level, &mut locked, stats);
                    slot.rmaps.sub_sptes(zapped);
                    z.cleared(zapped, dirty);
                }
                visited += 1;
                gfn += level.pages();
                if visited % ZAP_BATCH == 0 && gfn < stop_gfn && z.should_yield() {
                    z.visited += visited;
                    z.flush();
                    cursor.advance_to(gfn);
                    return Pause::Yield;
                }
            }
            if level.larger().is_none() && unlink_tables {
                cursor.walk_tables(0);
            } else {
                cursor.next_level();
            }
        }
        z.visited += visited;

        // The leaves of the range are gone from every root: unlink the tables left empty.
        // The budget of entries between two polls carries over from root to root.
        let mut budget = TABLE_SCAN_BATCH;
        while let Some(root) = cursor.table_root() {
            if root >= self.nr_roots {
                break;
            }
            let from = cursor.gfn().max(slot.base_gfn());
            if from >= stop_gfn {
                cursor.walk_tables(root + 1);
                continue;
            }
            let mut v = UnlinkEmpty::<P, Y> {
                zapped: &mut self.zapped_tables,
                z,
                _ops: PhantomData,
            };
            let mut pos = from;
            let mut visited = 0;
            // SAFETY: a root of this MMU, whose lock is held for write (`&mut self`).
            let walked = unsafe {
                walk_yielding::<Ept, P, _>(
                    &root_tables(&self.roots[root]),
                    &mut pos,
                    stop_gfn,
                    &mut v,
                    &mut budget,
                    TABLE_SCAN_BATCH,
                    &mut visited,
                )
            };
            z.visited += visited;
            match walked {
                Walked::Done => cursor.walk_tables(root + 1),
                // At the table that found no room in the list of unlinked tables: resumed
                // there, it is visited again (with the tables on the way, which hold nothing
                // the walk needs to see before it).
                Walked::Broke(()) => {
                    cursor.advance_to(pos);
                    return Pause::TablesFull;
                }
                // Flushed inside the walk.
                Walked::Yielded => {
                    cursor.advance_to(pos);
                    return Pause::Yield;
                }
            }
        }
        cursor.finish();
        Pause::Done
    }

    /// Zaps every SPTE of `slot` in every root, without yielding and without unlinking tables.
    /// Returns the number zapped; flush TLBs if nonzero.
    pub(crate) fn zap_slot(&mut self, slot: SlotRef<'_>) -> u64 {
        if slot.sptes() == 0 {
            return 0;
        }
        let (start, end) = (slot.base_gfn(), slot.end_gfn());
        let mut cursor = ZapCursor::new(start);
        let mut z = Zap::new(NoYield);
        z.run(&mut Owned(self), |mmu, z| {
            mmu.zap_step(z, slot, &mut cursor, end, false)
        });
        debug_assert!(cursor.is_done());
        z.zapped
    }

    /// Zaps every SPTE of every one of `slots` (all the slots of the memslot set) in every root
    /// (teardown, tests), without yielding.  Returns the number zapped; flush TLBs if nonzero.
    /// The tables stay, empty, until the MMU is dropped or a zap of their range unlinks them:
    /// walkers may still be in them.
    pub(crate) fn zap_all<'s>(&mut self, slots: impl IntoIterator<Item = SlotRef<'s>>) -> u64 {
        slots.into_iter().map(|slot| self.zap_slot(slot)).sum()
    }

    /// The snapshot byte of `gfn` in root `root` (`SECMMU_SNAP_*`): 0 if no present leaf maps
    /// it, otherwise present, writable, accessed, dirty and the leaf's level.  An access-tracked
    /// leaf is present, but neither writable nor accessed.  Loads entries atomically; the read
    /// side of the MMU lock is enough.
    pub(crate) fn snapshot(&self, root: usize, gfn: Gfn) -> u8 {
        let Some((_, spte, level)) = self.leaf(root, gfn) else {
            return 0;
        };
        snapshot_byte(
            spte::is_writable(spte),
            spte::is_accessed(spte),
            spte::is_dirty(spte),
            level,
        )
    }

    /// The present leaf that maps `gfn` in root `root`, the value loaded from it and its level
    /// (for aging and tests).  It may change as soon as it was loaded, unless the MMU lock is
    /// held for write.
    pub(crate) fn leaf(&self, root: usize, gfn: Gfn) -> Option<(&AtomicU64, u64, Level)> {
        let root_pfn = self.roots[..self.nr_roots].get(root)?;
        // SAFETY: `root_pfn` is a root of `self`, which is borrowed, so neither dropped nor
        // freeing unlinked tables (`free_unlinked()` takes `&mut self`), for as long as the entry
        // returned: `&self` stands for the MMU lock (module documentation).
        let w = unsafe { walk::find::<Ept, P>(&root_tables(root_pfn), gfn.raw()) }?;
        spte::is_present(w.old).then_some((w.ptep, w.old, w.level))
    }

    /// The first present leaf of root `root` that maps a gfn in `[gfn, end)`: the first gfn it
    /// maps and the translation of that gfn.  Skips empty subtrees a whole entry at a time, so a
    /// sparse range costs a walk per empty entry, not per gfn (the coherence audit).  Loads only;
    /// the MMU lock, either side, keeps the tables.
    pub(crate) fn next_leaf(&self, root: usize, gfn: Gfn, end: Gfn) -> Option<(Gfn, Translation)> {
        let root_pfn = self.roots[..self.nr_roots].get(root)?;
        let tables = root_tables(root_pfn);
        // SAFETY: as in `leaf()`: `&self` stands for the MMU lock.
        let (base, w) = unsafe { walk::first_leaf::<Ept, P>(&tables, gfn.raw(), end.raw()) }?;
        let base = Gfn::new(base);
        Some((base, translation(w.old, w.level, base)))
    }

    /// Ages the gfns `[start, end)` of `slot` in every root, under the MMU lock for
    /// write (`&mut self`), through the rmaps of every level (huge levels from `start` aligned
    /// down, see "Ranges and mapping levels").
    ///
    /// - [`AgeOp::Test`]: young if some leaf is accessed; changes nothing ("Testing is read-only").
    ///   An access-tracked leaf is not accessed.
    /// - [`AgeOp::Clear`], [`AgeOp::ClearFlush`]: every accessed leaf is made old: A cleared
    ///   with A/D, access-tracked without ("Access tracking without A/D bits"), after capturing its
    ///   dirty state: a writable leaf without A/D counts as dirty, and its page is marked dirty
    ///   before W goes.
    ///
    /// If the result [`needs_flush()`](AgeResult::needs_flush), flush TLBs before dropping the
    /// MMU lock: a vCPU's TLB may still allow writes through a leaf that lost W, and those
    /// writes would not be seen as dirty.
    pub(crate) fn age_gfn_range_locked(
        &mut self,
        slot: SlotRef<'_>,
        start: Gfn,
        end: Gfn,
        op: AgeOp,
    ) -> AgeResult {
        let mut side = Locked::<P>(&mut self.write_side.locked(), PhantomData);
        age_slot(&mut side, slot, start, end, op)
    }

    /// Write-protects every leaf that maps a gfn of `[start, end)` in `slot`, in every root and
    /// at every level, through the slot's rmaps (KVM's `kvm_mmu_slot_remove_write_access()` and
    /// `kvm_mmu_write_protect_pt_masked()` through `rmap_write_protect()`), for dirty logging
    /// ("Dirty logging" in Documentation/secmmu-protocols.rst).  A huge leaf overlapping the range
    /// loses W whole: its next write fault maps 4K under it (the slot maps 4K only while it logs),
    /// which splits it.
    ///
    /// W goes with an atomic AND, since walkers may be setting D meanwhile: D stays, so a later
    /// zap still marks the page dirty.  Without A/D, W is the dirty state, so the page is marked
    /// dirty before W goes.  The saved W of an access-tracked leaf goes too, or restoring it would
    /// bring write access back without a fault.  `&mut self`: the MMU lock is held for write.
    /// If the result [`needs_flush()`](Protected::needs_flush), flush TLBs before dropping it.
    pub(crate) fn write_protect_gfn_range(
        &mut self,
        slot: SlotRef<'_>,
        start: Gfn,
        end: Gfn,
    ) -> Protected {
        self.protect_leaves(slot, start, end, write_protect_leaf::<P>)
    }

    /// Runs `protect` on every leaf that maps a gfn of `[start, end)` in `slot`, through the
    /// slot's rmaps at every level (see [`X86Mmu::write_protect_gfn_range()`]): how many it
    /// visited, and how many `protect` said it changed.  `&mut self`: the MMU lock is held for
    /// write.
    fn protect_leaves(
        &mut self,
        slot: SlotRef<'_>,
        start: Gfn,
        end: Gfn,
        mut protect: impl FnMut(&AtomicU64) -> bool,
    ) -> Protected {
        let mut locked = self.write_side.locked();
        let mut done = Protected::default();
        slot.for_each_rmap(start, end, |head| {
            // Exact under the write side: only its holders add to rmaps.
            if head.is_empty() {
                return false;
            }
            let guard = head.lock(&mut locked);
            for sptep in guard.sptes() {
                done.visited += 1;
                if protect(sptep) {
                    done.leaves += 1;
                }
            }
            false
        });
        done
    }

    /// Clears D on every 4K leaf that maps a gfn of `[start, end)` in `slot`, in every root, and
    /// write-protects the huge ones, for dirty logging by the dirty bit (KVM's
    /// `kvm_mmu_clear_dirty_pt_masked()` through `__rmap_clear_dirty()` when PML logs the
    /// writes): the leaves stay writable, and the walker's next write to each sets D again and
    /// reports it [`Translation::dirtied`] for the vCPU's log.  A huge leaf loses W instead, so
    /// that a write splits it and maps 4K (a clean writable huge leaf would be logged as one
    /// page).  Leaves without A/D (which that mode does not allow) are write-protected too.
    ///
    /// D goes with an atomic AND, since walkers may set it meanwhile, and a page whose D went
    /// is marked dirty for the primary MMU first (KVM's `mmu_spte_update()` does so for a
    /// cleared D).  [`Protected::leaves`] counts the leaves that were dirty or writable: TLBs
    /// may let writes through them without setting D, so flush before dropping the lock.
    /// `&mut self`: the MMU lock is held for write.
    pub(crate) fn clear_dirty_gfn_range(
        &mut self,
        slot: SlotRef<'_>,
        start: Gfn,
        end: Gfn,
    ) -> Protected {
        self.protect_leaves(slot, start, end, |sptep| {
            let old = sptep.load(Ordering::Relaxed);
            if old & spte::LARGE == 0 && spte::is_ad_enabled(old) {
                clear_dirty_leaf::<P>(sptep)
            } else {
                write_protect_leaf::<P>(sptep)
            }
        })
    }

    /// Splits every huge leaf that maps a gfn of `[at.gfn, end)` in `slot`, in every root, down
    /// to 4K leaves with the same permissions (eager page splitting for dirty logging, KVM's
    /// `kvm_mmu_slot_try_split_huge_pages()` through the shadow MMU's rmaps,
    /// `shadow_mmu_try_split_huge_pages()`): a 1G leaf into 2M leaves and those into 4K ones,
    /// so the write faults that dirty logging takes later find 4K leaves to make writable
    /// (KVM's fast page fault, [`X86Mmu::restore_write_protected()`]) instead of splitting and
    /// resolving every page again.
    ///
    /// The range goes 1G region by 1G region, each region's 1G rmap first, then its 2M rmaps,
    /// so that whatever is before the gfn it stops at is split to 4K.  A split takes one table
    /// from `tables` and up to [`split_min_descs()`] descriptors from `descs`: when either is
    /// short the split stops with [`Split::resume`], for the caller to top them up without the
    /// lock.  At the MMU's table limit it stops for good ([`Split::limited`]).  A huge leaf
    /// overlapping the range is split whole, its pieces outside the range too.
    ///
    /// No TLB flush: the pieces map what the huge leaf did, as it did (KVM's TDP MMU splits
    /// without a flush either, `tdp_mmu_split_huge_page()`).  `&mut self`: the MMU lock is held
    /// for write, so no fault maps meanwhile; walkers may set A/D ([`X86Mmu::split_leaf()`]).
    pub(crate) fn split_huge_gfn_range(
        &mut self,
        slot: SlotRef<'_>,
        at: SplitAt,
        end: Gfn,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Split {
        let mut done = Split::default();
        let stop = end.raw().min(slot.end_gfn());
        let mut region = at.gfn.raw().max(slot.base_gfn());
        while region < stop {
            let region_end = stop.min(Level::L1G.align_down(region) + Level::L1G.pages());
            for level in [Level::L1G, Level::L2M] {
                let mut gfn = level.align_down(region);
                while gfn < region_end {
                    let Some(head) = slot.rmap(level, gfn) else {
                        break;
                    };
                    // Exact under the write side: only its holders change rmaps.
                    while !head.is_empty() {
                        if self.stats.table_pages() >= self.table_limit {
                            done.limited = true;
                            return done;
                        }
                        if tables.is_empty() || descs.len() < split_min_descs(self.nr_roots) {
                            done.resume = Some(at.at(0, Gfn::new(gfn.max(region))));
                            return done;
                        }
                        let sptep = {
                            let mut locked = self.write_side.locked();
                            let mut guard = head.lock(&mut locked);
                            let Some(sptep) = guard.sptes().next().map(NonNull::from) else {
                                break;
                            };
                            // Found just now: cannot fail.
                            let removed = guard.remove(sptep, descs);
                            debug_assert!(removed);
                            sptep
                        };
                        slot.rmaps.sub_sptes(1);
                        // SAFETY: an entry of a linked table of this MMU: an rmap holds only
                        // those (I1), and the table is not freed while the lock is held (I2).
                        let sptep = unsafe { sptep.as_ref() };
                        self.split_leaf(sptep, slot, level, level.align_down(gfn), tables, descs);
                        done.split += 1;
                    }
                    gfn += level.pages();
                }
            }
            region = region_end;
        }
        done
    }

    /// Replaces the huge leaf in `sptep`, which maps the block at `gfn` and `level` of `slot`
    /// and was just taken out of its rmap, by a table from `tables` of 512 leaves one level
    /// down that map the same pages as it did (KVM's `shadow_mmu_split_huge_page()`), each in
    /// the rmap of its gfn (I1).
    ///
    /// The pieces are made from the leaf as loaded, and the table goes in with an exchange: a
    /// walker may set A or D on the leaf in between (a leaf out of its rmap is safe from
    /// lockless agers, which only clear).  What it set is given to every piece, as the huge
    /// leaf's D stands for all its pages.  Release: a walker that Acquire-loads the table
    /// entry sees the pieces.  The caller checked the caches.
    fn split_leaf(
        &mut self,
        sptep: &AtomicU64,
        slot: SlotRef<'_>,
        level: Level,
        gfn: u64,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) {
        let old = sptep.load(Ordering::Relaxed);
        let (Some(child), Some(table_pfn)) = (level.lower(), tables.take()) else {
            return;
        };
        if !spte::is_present(old) || !spte::is_leaf(old, level) {
            warn_on!(true, "rmap of level {level:?} holds {old:#x}");
            // SAFETY: taken from `tables` above, never linked, still zeroed.
            unsafe { tables.put_back(table_pfn) };
            return;
        }
        // SAFETY: from `tables`, so from `alloc_table()`; ours until linked below, and from then
        // on a table of this MMU, freed only under the write side we hold (I2).
        let entries = unsafe { P::table(table_pfn) };
        let mut locked = self.write_side.locked();
        for (i, entry) in entries.iter().enumerate() {
            entry.store(spte::make_split_child(old, child, i), Ordering::Relaxed);
            let Some(head) = slot.rmap(child, gfn + i as u64 * child.pages()) else {
                warn_on!(true, "no rmap for gfn {gfn:#x} in its slot");
                continue;
            };
            // SAFETY: `entry` is in a table that is linked below and stays allocated until it
            // is unlinked and freed, which a zap does only after taking every leaf of it out of
            // its rmap (I1, I2).
            unsafe { head.lock(&mut locked).add(NonNull::from(entry), descs) };
        }
        slot.rmaps.add_sptes(ENTRIES_PER_TABLE as u64);
        let prev = sptep.swap(spte::make_nonleaf(table_pfn), Ordering::AcqRel);
        let late = prev & !old & (spte::ACCESSED | spte::DIRTY);
        if late != 0 {
            for entry in entries {
                entry.fetch_or(late, Ordering::Relaxed);
            }
        }
        let leaves = &mut self.stats.leaves;
        leaves[level.idx()] = leaves[level.idx()].saturating_sub(1);
        leaves[child.idx()] += ENTRIES_PER_TABLE as u64;
        self.stats.tables_allocated += 1;
    }

    /// Makes the leaf that maps `gfn` in root `root` writable again for a write fault, if dirty
    /// logging's write protection is all that keeps it read-only (KVM's `fast_page_fault()` for
    /// an MMU-writable SPTE): a present 4K leaf without W that was mapped writable
    /// (MMU-writable, which write protection leaves, [`spte::clear_writable_capture_dirty()`]).
    /// No other SPTE is like that: a read fault maps without MMU-writable, and access tracking
    /// moves W to the saved bits.  The page needs no resolving: the primary MMU maps it
    /// writable still, or an invalidation would have zapped the leaf.  Returns whether it did;
    /// the caller logs the page before it drops the MMU lock.  `&mut self`: the write side.
    ///
    /// Permissions only grow, so TLBs need no flush.  D is set with W, as a walker would on
    /// the write (without A/D, W is the dirty state).
    pub(crate) fn restore_write_protected(&mut self, root: usize, gfn: Gfn) -> bool {
        let Some((sptep, old, level)) = self.leaf(root, gfn) else {
            return false;
        };
        if level != Level::L4K
            || spte::is_writable(old)
            || spte::is_access_tracked(old)
            || old & spte::MMU_WRITABLE == 0
        {
            return false;
        }
        let new = old | spte::WRITABLE | spte::DIRTY;
        sptep
            .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Restores the access-tracked leaf that maps `gfn` in root `root` for the fault that an
    /// access to it caused, a `write` or a read, under the MMU lock for write (`&mut self`):
    /// the fast path of a fault, with no need to resolve the host page again (the leaf still
    /// maps it: an invalidation of the page would have zapped the leaf).
    ///
    /// Returns true if the leaf now allows the access, and the vCPU may retry it.  Returns false,
    /// changing nothing, if there is no present leaf, it is not access-tracked, or the access is
    /// a write and the leaf was not writable before it was tracked: then take the normal fault
    /// path, whose [`X86Mmu::map()`] also restores ([`MapAction::Restored`]) or upgrades it.
    ///
    /// Permissions only grow, so no TLB flush is needed.
    pub(crate) fn restore_access_tracked(&mut self, root: usize, gfn: Gfn, write: bool) -> bool {
        let Some((sptep, old, _)) = self.leaf(root, gfn) else {
            return false;
        };
        if !spte::is_access_tracked(old) {
            return false;
        }
        let new = spte::restore_access_tracked(old);
        if write && !spte::is_writable(new) {
            return false;
        }
        // Nothing changes an A/D-disabled leaf without the MMU lock, but a compare-exchange
        // costs little and cannot undo a change we did not expect.
        sptep
            .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Adds the SPTE `sptep` to the rmap of `gfn` at `level` of `slot`, as if a leaf had
    /// been installed there, for tests of huge levels (which [`X86Mmu::map()`] does not install
    /// yet).  Returns false if the slot has no rmap for it.
    ///
    /// # Safety
    ///
    /// `sptep` stays valid until it has been zapped out of the rmap (the owner zaps every slot
    /// before it drops the MMU, R5), and holds a present leaf whenever the MMU lock is taken.
    #[cfg(all(test, not(loom)))]
    pub(crate) unsafe fn add_test_leaf(
        &mut self,
        slot: SlotRef<'_>,
        level: Level,
        gfn: u64,
        sptep: &AtomicU64,
        descs: &mut DescCache,
    ) -> bool {
        let Some(head) = slot.rmap(level, gfn) else {
            return false;
        };
        let mut locked = self.write_side.locked();
        // SAFETY: `sptep` stays valid until zapped out of the rmap, per the caller.
        unsafe { head.lock(&mut locked).add(NonNull::from(sptep), descs) };
        slot.rmaps.add_sptes(1);
        self.stats.leaves[level.idx()] += 1;
        true
    }
}

impl<P: PageOps> ZapTables for X86Mmu<P> {
    /// Frees the tables zaps unlinked.  Call with the MMU lock held for write (`&mut self`),
    /// after the TLB flush that followed their unlink (the zap driver's): then no walker can be
    /// inside them (I2).
    fn free_zapped_tables(&mut self) {
        let stats = &mut self.stats;
        self.zapped_tables.drain(|pfn| {
            // SAFETY: unlinked by a zap of this MMU, without a present entry, so without a
            // leaf that an rmap could lead a lockless ager to (I1), and not freed since; per the
            // caller, the flush since waited for every vCPU to leave guest mode, where alone
            // the lockless walker runs, and walkers under the MMU lock cannot reach it (I2).
            unsafe { P::free_table(pfn) };
            stats.tables_freed += 1;
        });
    }
}

impl<P: PageOps> Drop for X86Mmu<P> {
    fn drop(&mut self) {
        // Every slot was zapped before (R5): a leaf left would stay in the rmaps of a slot that
        // outlives its tables.
        warn_on!(
            self.stats.leaf_count() != 0,
            "x86 MMU dropped with {:?} leaves mapped",
            self.stats.leaves
        );
        // No walker is left (the owner's guarantee), so no flush is needed first.
        self.free_zapped_tables();
        for &root in &self.roots[..self.nr_roots] {
            // SAFETY: the root is a table of this MMU that no walker can reach any more (the
            // owner of the MMU guarantees no walker runs once it is dropped), and each table
            // under it is linked only there (I2).
            unsafe { free_tree::<P>(root, ROOT_LEVEL, &mut self.stats) };
        }
        self.nr_roots = 0;
        debug_assert_eq!(self.stats.table_pages(), 0);
    }
}

/// The walk of [`X86Mmu::map_level()`] (KVM's `direct_map()`): on the way down to the `target`
/// level, links a table from `tables` where there is none, zapping a huge leaf found there (a
/// split), and has the walk go into it; at the target, installs, grows or replaces the leaf, or
/// empties the table found there and puts the leaf in its place (a collapse), and ends the walk
/// with the outcome.  The MMU lock is held for write (`locked`).
struct MapWalker<'m, 'l, P: PageOps> {
    m: Mapping,
    /// The level of the leaf.
    target: Level,
    slot: SlotRef<'m>,
    locked: &'m mut MmuWriteLocked<'l>,
    descs: &'m mut DescCache,
    tables: &'m mut TableCache<P>,
    stats: &'m mut MmuStats,
    table_limit: u64,
    ad_enabled: bool,
    /// Tables linked on the way.
    new_tables: usize,
    /// A huge leaf on the way, or leaves under the table the leaf replaces, were zapped.
    zapped_huge: bool,
}

impl<'a, P: PageOps> MapWalker<'_, '_, P> {
    /// Links a table in the entry `ctx` on the way down, which is not a table: empty, or a huge
    /// leaf, zapped first.
    fn link_table(&mut self, ctx: &Ctx<'a>) -> Result<(), MapError> {
        if self.stats.table_pages() >= self.table_limit {
            // Before a huge leaf is zapped for it: the failed map changes nothing.
            return Err(MapError::TableLimit);
        }
        if spte::is_present(ctx.old) {
            // A huge leaf where a table must go: zap it, then link a table instead.
            let level = ctx.level;
            drop_leaf::<P>(
                ctx.ptep,
                self.slot,
                level,
                level.align_down(self.m.gfn),
                self.locked,
                self.descs,
                self.stats,
            );
            self.zapped_huge = true;
        }
        // Cannot fail: checked against MAP_MIN_TABLES before the walk.
        let new = self.tables.take().ok_or(MapError::NeedTopup)?;
        // A store with Release (not shared): a walker that Acquire-loads this SPTE sees the
        // table zeroed ("Publishing with release").
        let _ = ctx.set(spte::make_nonleaf(new));
        self.new_tables += 1;
        self.stats.tables_allocated += 1;
        Ok(())
    }

    /// Sets the leaf at the target level, in the entry `ctx`, as [`X86Mmu::map()`] says.
    fn set_leaf(&mut self, ctx: &Ctx<'a>, visit: Visit) -> MapOutcome {
        let m = self.m;
        let sptep = ctx.ptep;
        let mut old = ctx.old;
        let mut unlinked = None;
        if visit == Visit::TablePre {
            // A table where the huge leaf goes: zap every leaf under it, through their rmaps
            // (I1), then unlink it.  Walkers that are inside it find empty entries and fault.
            let pfn = spte::pfn(old);
            // SAFETY: linked by the present non-leaf `old`, so a table of this MMU (I2), whose
            // gfns are all in the slot (`map_at()` checked the block); the lock is held.
            let zapped = match ctx.level.lower() {
                // SAFETY: as above.
                Some(lower) => unsafe {
                    zap_tree::<P>(
                        pfn,
                        lower,
                        m.gfn,
                        self.slot,
                        self.locked,
                        self.descs,
                        self.stats,
                    )
                },
                // Not reached: a 4K entry is never a table.
                None => 0,
            };
            self.zapped_huge |= zapped != 0;
            sptep.store(0, Ordering::Relaxed);
            unlinked = Some(UnlinkedTable {
                pfn,
                covers: m.level,
            });
            old = 0;
        }
        let mut new = spte::make_leaf(m.pfn, m.level, m.writable, self.ad_enabled);
        if m.prefetch {
            // A new leaf: no dirty state to capture first.
            new = spte::mark_access_tracked(new);
        }
        let (slot, stats) = (self.slot, &mut *self.stats);
        let (locked, descs) = (&mut *self.locked, &mut *self.descs);
        let (mut action, chain_len) = if !spte::is_present(old) {
            let len = install_leaf(sptep, new, slot, m.level, m.gfn, locked, descs, stats);
            (MapAction::Installed, len)
        } else if spte::pfn(old) == m.pfn {
            (upgrade_leaf(sptep, old, m), 0)
        } else {
            drop_leaf::<P>(sptep, slot, m.level, m.gfn, locked, descs, stats);
            let len = install_leaf(sptep, new, slot, m.level, m.gfn, locked, descs, stats);
            (MapAction::Replaced, len)
        };
        if self.zapped_huge {
            action = MapAction::Replaced;
        }
        MapOutcome {
            action,
            chain_len,
            new_tables: self.new_tables,
            split: self.zapped_huge && unlinked.is_none(),
            unlinked,
        }
    }
}

impl<'a, P: PageOps> Visitor<'a> for MapWalker<'_, '_, P> {
    const FLAGS: u32 = LEAF | TABLE_PRE;
    type Break = Result<MapOutcome, MapError>;

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, visit: Visit) -> Step<Self::Break> {
        if ctx.level == self.target {
            return Step::Break(Ok(self.set_leaf(ctx, visit)));
        }
        if visit == Visit::TablePre {
            return Step::Continue;
        }
        match self.link_table(ctx) {
            // Into the table just linked.
            Ok(()) => Step::Reload,
            Err(e) => Step::Break(Err(e)),
        }
    }
}

/// Frees `table_pfn`, a table at `level`, and every table under it.
///
/// # Safety
///
/// `table_pfn` is a table of this MMU, not freed yet, that no walker can reach any more, and
/// each table under it is linked only from it or from the tables under it (I2).
unsafe fn free_tree<P: PageOps>(table_pfn: u64, level: Level, stats: &mut MmuStats) {
    // SAFETY: per the caller.
    unsafe {
        walk::free_subtree::<Ept, P, false>(table_pfn, level, |_, _| {}, || stats.tables_freed += 1)
    };
}

/// A zap's walk for the tables it emptied (KVM's shadow MMU zaps the shadow pages of a deleted
/// memslot, `kvm_mmu_prepare_zap_page()`): every table the walk is done with that has no
/// present entry is unlinked into `zapped`, bottom-up, so that a table whose tables all went
/// goes too.  A table the range covers only in part goes as well if it is empty: its other
/// entries were empty already.  The walk does not go into the 4K tables, which link no table:
/// they are checked whole.  When `zapped` has no room for an empty table, the walk breaks at
/// it.  The MMU lock is held for write.  It yields as the zap driver `z` says.
struct UnlinkEmpty<'z, P: PageOps, Y> {
    zapped: &'z mut ZappedTables,
    /// The zap: counts the tables unlinked, which a flush must then cover.
    z: &'z mut Zap<Y>,
    _ops: PhantomData<fn() -> P>,
}

impl<'a, P: PageOps, Y: Yield> Visitor<'a> for UnlinkEmpty<'_, P, Y> {
    const FLAGS: u32 = TABLE_POST;
    const BOTTOM: Level = Level::L2M;
    type Break = ();

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        let child = spte::pfn(ctx.old);
        // SAFETY: linked by a present non-leaf SPTE of this MMU (I2); the lock is held.
        let entries = unsafe { P::table(child) };
        if entries
            .iter()
            .any(|e| spte::is_present(e.load(Ordering::Relaxed)))
        {
            return Step::Continue;
        }
        if self.zapped.room() == 0 {
            return Step::Break(());
        }
        // No present entry: no leaf, so no rmap entry points into the table (I1), and no table
        // under it.  Relaxed: walkers under the lock are excluded (write side); the lockless
        // walker may still be inside until the flush that precedes the free (I2).
        ctx.ptep.store(0, Ordering::Relaxed);
        self.zapped.push(child);
        self.z.unlinked(1);
        Step::Continue
    }
}

impl<P: PageOps, Y: Yield> YieldHook for UnlinkEmpty<'_, P, Y> {
    #[inline]
    fn should_yield(&mut self) -> bool {
        self.z.should_yield()
    }

    /// The zap's flush, which covers the tables this walk unlinked (counted in `z`).
    #[inline]
    fn flush(&mut self) {
        self.z.flush()
    }
}

/// The walk of [`zap_tree()`]: zaps every leaf through its rmap in `slot` (I1).
struct ZapTree<'m, 'l, P: PageOps> {
    slot: SlotRef<'m>,
    locked: &'m mut MmuWriteLocked<'l>,
    descs: &'m mut DescCache,
    stats: &'m mut MmuStats,
    /// Leaves zapped.
    zapped: u64,
    _ops: PhantomData<fn() -> P>,
}

impl<'a, P: PageOps> Visitor<'a> for ZapTree<'_, '_, P> {
    const FLAGS: u32 = LEAF;
    type Break = ();

    #[inline(always)]
    fn visit(&mut self, ctx: &Ctx<'a>, _: Visit) -> Step<()> {
        if spte::is_present(ctx.old) {
            drop_leaf::<P>(
                ctx.ptep,
                self.slot,
                ctx.level,
                ctx.base(),
                self.locked,
                self.descs,
                self.stats,
            );
            self.zapped += 1;
        }
        Step::Continue
    }
}

/// Zaps every leaf in `table_pfn`, a table at `level` whose first entry maps
/// `first_gfn`, and in the tables under it, each through its rmap in `slot` (I1): the
/// unlinking of the table by a collapse.  Tables under it stay linked from it, to be freed with
/// it.  Returns the number of leaves zapped.
///
/// # Safety
///
/// `table_pfn` is a table of this MMU, linked by a present non-leaf SPTE (I2), whose gfns all
/// lie in `slot`, and the MMU lock is held for write (`locked`).
#[allow(clippy::too_many_arguments)]
unsafe fn zap_tree<P: PageOps>(
    table_pfn: u64,
    level: Level,
    first_gfn: u64,
    slot: SlotRef<'_>,
    locked: &mut MmuWriteLocked<'_>,
    descs: &mut DescCache,
    stats: &mut MmuStats,
) -> u64 {
    let mut v = ZapTree::<P> {
        slot,
        locked,
        descs,
        stats,
        zapped: 0,
        _ops: PhantomData,
    };
    let tables = Tables::subtree(&table_pfn, level, first_gfn);
    let mut pos = first_gfn;
    // SAFETY: a table of this MMU, per the caller, and the tables under it, none freed while
    // the lock is held.
    let _ = unsafe { walk::walk::<Ept, P, _>(&tables, &mut pos, tables.limit(), &mut v) };
    v.zapped
}

/// Installs the leaf `new` in the empty entry `sptep`, which maps `gfn` at `level` in `slot`, and
/// adds it to its rmap (I1).  Returns the rmap's length with it.
#[allow(clippy::too_many_arguments)]
fn install_leaf(
    sptep: &AtomicU64,
    new: u64,
    slot: SlotRef<'_>,
    level: Level,
    gfn: u64,
    locked: &mut MmuWriteLocked<'_>,
    descs: &mut DescCache,
    stats: &mut MmuStats,
) -> usize {
    // The caller checked that the slot holds `gfn`, so it has an rmap for it.
    let Some(head) = slot.rmap(level, gfn) else {
        warn_on!(true, "no rmap for gfn {gfn:#x} in its slot");
        return 0;
    };
    // Release: a walker that Acquire-loads the leaf then touches the page, and must see what
    // this thread did to the page before mapping it.
    sptep.store(new, Ordering::Release);
    stats.leaves[level.idx()] += 1;
    let before = {
        let mut guard = head.lock(locked);
        // SAFETY: `sptep` is an entry of a table page that stays allocated until the MMU is
        // dropped or the table is unlinked and freed (I2); every slot is zapped before the drop
        // (R5), a collapse zaps every leaf of the table it unlinks, a zap unlinks only tables
        // without a leaf, and a cleared leaf leaves its rmap (I1), so the entry is removed from
        // the rmap before its table is freed.
        unsafe { guard.add(NonNull::from(sptep), descs) }
    };
    slot.rmaps.add_sptes(1);
    before + 1
}

/// Grows the permissions of the present leaf `sptep`, which maps `m.pfn` already, as `m` asks:
/// read-only to writable, or access-tracked to restored.  Never takes W away.
///
/// A compare-exchange loop, since walkers may set A and D meanwhile (their bits are kept: a
/// writable leaf made here is accessed and dirty anyway, as the fault counts as the access).
/// Permissions only grow, so TLBs need no flush.
fn upgrade_leaf(sptep: &AtomicU64, mut old: u64, m: Mapping) -> MapAction {
    loop {
        let (new, action) = if m.writable && !spte::is_writable(old) {
            let level = m.level;
            let new = spte::make_leaf(m.pfn, level, true, spte::is_ad_enabled(old));
            (new, MapAction::Upgraded)
        } else if spte::is_access_tracked(old) && !m.prefetch {
            (spte::restore_access_tracked(old), MapAction::Restored)
        } else {
            return MapAction::Unchanged;
        };
        match sptep.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return action,
            Err(cur) => {
                // Only holders of the MMU lock for write, like us, clear SPTEs.
                if !spte::is_present(cur) || spte::pfn(cur) != m.pfn {
                    warn_on!(true, "leaf changed under the MMU lock: {cur:#x}");
                    return MapAction::Unchanged;
                }
                old = cur;
            }
        }
    }
}

/// Clears the leaf in `sptep` and marks its page dirty if the leaf was (KVM's
/// `mmu_spte_clear_track_bits()`).  The caller removes it from its rmap.  Returns whether it was
/// dirty, or `None` if it was not present, which under the MMU lock means corruption ("Lockless
/// rmap walks").
fn clear_leaf<P: PageOps>(sptep: &AtomicU64, level: Level, stats: &mut MmuStats) -> Option<bool> {
    // Atomic where a walker's D update could otherwise be lost.
    let old = spte::zap(sptep);
    if !spte::is_present(old) {
        warn_on!(true, "non-present SPTE in an rmap under the MMU lock");
        return None;
    }
    let n = &mut stats.leaves[level.idx()];
    *n = n.saturating_sub(1);
    stats.zapped += 1;
    // Captured atomically with the clear: D set, or without A/D, W.
    let dirty = spte::is_dirty(old);
    if dirty {
        P::set_page_dirty(spte::pfn(old));
        stats.dirty += 1;
    }
    Some(dirty)
}

/// Write-protects the leaf in `sptep` (see [`X86Mmu::write_protect_gfn_range()`]).  Returns
/// whether it was writable, so that TLBs may still allow writes.  MMU lock held for write.
fn write_protect_leaf<P: PageOps>(sptep: &AtomicU64) -> bool {
    let old = sptep.load(Ordering::Relaxed);
    if !spte::is_present(old) || !(spte::is_writable(old) || spte::is_access_tracked(old)) {
        return false;
    }
    let old = spte::clear_writable_capture_dirty(sptep);
    // With A/D, D stays in the leaf for the zap to find; without, W was the dirty state.
    if !spte::is_ad_enabled(old) && spte::is_dirty(old) {
        P::set_page_dirty(spte::pfn(old));
    }
    spte::is_writable(old)
}

/// Clears D in the present 4K leaf `sptep` (see [`X86Mmu::clear_dirty_gfn_range()`]), marking its
/// page dirty if it was.  Returns whether it was.  MMU lock held for write.
fn clear_dirty_leaf<P: PageOps>(sptep: &AtomicU64) -> bool {
    if sptep.load(Ordering::Relaxed) & spte::DIRTY == 0 {
        return false;
    }
    let old = sptep.fetch_and(!spte::DIRTY, Ordering::Relaxed);
    let dirty = old & spte::DIRTY != 0;
    if dirty {
        P::set_page_dirty(spte::pfn(old));
    }
    dirty
}

/// Zaps the present leaf in `sptep`, mapping `gfn` at `level` in `slot`, and removes it from its
/// rmap (KVM's `drop_spte()`).
fn drop_leaf<P: PageOps>(
    sptep: &AtomicU64,
    slot: SlotRef<'_>,
    level: Level,
    gfn: u64,
    locked: &mut MmuWriteLocked<'_>,
    descs: &mut DescCache,
    stats: &mut MmuStats,
) {
    clear_leaf::<P>(sptep, level, stats);
    let Some(head) = slot.rmap(level, gfn) else {
        warn_on!(true, "no rmap for gfn {gfn:#x} in its slot");
        return;
    };
    let found = head.lock(locked).remove(NonNull::from(sptep), descs);
    debug_assert!(found, "leaf for gfn {gfn:#x} not in its rmap");
    if found {
        slot.rmaps.sub_sptes(1);
    }
}

/// Zaps every leaf in the rmap `head` of leaves at `level` (KVM's `kvm_zap_rmap()`): empties it
/// under its bit lock, clearing each leaf.  Returns the number of leaves zapped and how many of them were dirty.
pub(crate) fn zap_rmap<P: PageOps>(
    head: &RmapHead,
    level: Level,
    locked: &mut MmuWriteLocked<'_>,
    stats: &mut MmuStats,
) -> (u64, u64) {
    // Exact under the MMU lock for write: only its holders add to rmaps.
    if head.is_empty() {
        return (0, 0);
    }
    // Zero capacity: descriptors are freed as the chain empties (under its bit lock, see "Lockless
    // rmap walks").
    let mut descs = DescCache::new(0);
    let (mut zapped, mut dirty) = (0, 0);
    head.lock(locked).drain(&mut descs, |sptep| {
        if let Some(d) = clear_leaf::<P>(sptep, level, stats) {
            zapped += 1;
            dirty += u64::from(d);
        }
    });
    (zapped, dirty)
}

/// What aging did to one leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeafAge {
    /// The entry was not present: zapped while in an rmap we walk locklessly ("Lockless rmap
    /// walks").
    NotPresent,
    /// Not accessed since it was made or last aged (or access-tracked).
    Old,
    /// Accessed; left alone ([`AgeOp::Test`]).
    Young,
    /// Accessed, and made old by us.
    Cleared {
        /// The page it maps.
        pfn: u64,
        /// Access tracking took W from a dirty leaf: the caller marks `pfn` dirty.
        dirty: bool,
        /// Access tracking took W away: TLBs must be flushed.
        write_protected: bool,
    },
    /// The entry changed between our load and our compare-exchange: young, not retried ("Clearing
    /// the accessed bit").
    LostRace,
    /// Accessed, without A/D bits, met by a lockless walk, which cannot access-track: young.
    Skipped,
}

impl LeafAge {
    /// Adds what happened to this leaf to `result`.
    fn record(self, result: &mut AgeResult) {
        match self {
            LeafAge::NotPresent => result.not_present += 1,
            LeafAge::Old => {}
            LeafAge::Young => result.young = true,
            LeafAge::Cleared {
                dirty,
                write_protected,
                ..
            } => {
                result.young = true;
                result.cleared += 1;
                result.dirty += u64::from(dirty);
                result.write_protected += u64::from(write_protected);
            }
            LeafAge::LostRace => {
                result.young = true;
                result.lost_races += 1;
            }
            LeafAge::Skipped => {
                result.young = true;
                result.skipped += 1;
            }
        }
    }
}

/// Clears A in the A/D-enabled leaf `sptep`, which held `old`, with one compare-exchange from
/// `old` (KVM's `kvm_rmap_age_gfn_range()`): never a store of a stale value, which could undo a
/// D set by a walker, and never makes a zapped entry present again (I3), since it fails unless the
/// entry still holds the present `old`.  A failure is a lost race, not retried.  Both rules are in
/// "Clearing the accessed bit".
fn clear_accessed_once(sptep: &AtomicU64, old: u64) -> LeafAge {
    debug_assert!(spte::is_present(old) && spte::is_ad_enabled(old));
    match sptep.compare_exchange(
        old,
        old & !spte::ACCESSED,
        Ordering::Relaxed,
        Ordering::Relaxed,
    ) {
        Ok(_) => LeafAge::Cleared {
            pfn: spte::pfn(old),
            dirty: false,
            write_protected: false,
        },
        Err(_) => LeafAge::LostRace,
    }
}

/// Ages the leaf in `sptep` as `op` says, with the MMU lock held for write if `locked`, without
/// it otherwise ("Aging without the MMU lock").
///
/// Testing only loads ("Testing is read-only"), and works for leaves without A/D too (access
/// tracking clears their A).  An A/D-enabled leaf gets A cleared by [`clear_accessed_once()`]:
/// walkers may set A and D meanwhile, whatever the lock.  A leaf without A/D is access-tracked
/// only under the lock, capturing its dirty state first ("Access tracking without A/D bits"); a
/// lockless walk cannot take W away, and counts it young.  Without the lock, the entry may also
/// be zapped by others under us ("Lockless rmap walks"): a non-present one is skipped; under the
/// lock, an rmap holds only present leaves.
pub(crate) fn age_leaf(sptep: &AtomicU64, op: AgeOp, locked: bool) -> LeafAge {
    let old = sptep.load(Ordering::Relaxed);
    if !spte::is_present(old) {
        warn_on!(locked, "non-present SPTE in an rmap under the MMU lock");
        return LeafAge::NotPresent;
    }
    if !spte::is_accessed(old) {
        return LeafAge::Old;
    }
    if !op.clears() {
        return LeafAge::Young;
    }
    if spte::is_ad_enabled(old) {
        return clear_accessed_once(sptep, old);
    }
    if !locked {
        return LeafAge::Skipped;
    }
    // The dirty state is captured atomically with the loss of W: the exchange succeeds only if
    // the leaf still holds `old`.
    let new = spte::mark_access_tracked(old);
    match sptep.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => LeafAge::Cleared {
            pfn: spte::pfn(old),
            dirty: spte::is_dirty(old),
            write_protected: spte::is_writable(old),
        },
        Err(_) => LeafAge::LostRace,
    }
}

/// How an aging walk locks the rmaps it visits: the one difference between aging under the MMU
/// lock and without it, above the leaves ([`age_leaf()`]).
pub(crate) trait AgeSide {
    /// Under the MMU lock for write: leaves are all present, and may be access-tracked.
    const LOCKED: bool;

    /// Calls `f` on each SPTE of `head` until it returns true, with the rmap locked as this side
    /// may lock it.  Returns whether the lock was contended.
    fn for_each_spte(&mut self, head: &RmapHead, f: impl FnMut(&AtomicU64) -> bool) -> bool;

    /// Access tracking took W from a dirty leaf mapping `pfn`: mark the page dirty.
    fn mark_dirty(pfn: u64);
}

/// Aging without the MMU lock (KVM's `kvm_rmap_age_gfn_range()`): rmaps locked read-only, which
/// needs preemption disabled for the whole walk ("Lockless rmap walks").
pub(crate) struct Lockless<'a, 'b>(pub(crate) &'a NoPreempt<'b>);

impl AgeSide for Lockless<'_, '_> {
    const LOCKED: bool = false;

    fn for_each_spte(&mut self, head: &RmapHead, mut f: impl FnMut(&AtomicU64) -> bool) -> bool {
        let guard = head.lock_readonly(self.0);
        for sptep in guard.sptes() {
            if f(sptep) {
                break;
            }
        }
        guard.contended()
    }

    fn mark_dirty(_pfn: u64) {
        // Never called: a lockless walk does not access-track.
        warn_on!(true, "lockless aging took W away");
    }
}

/// Aging under the MMU lock for write: rmaps locked as their writers lock them.
struct Locked<'a, 'b, P>(&'a mut MmuWriteLocked<'b>, PhantomData<fn() -> P>);

impl<P: PageOps> AgeSide for Locked<'_, '_, P> {
    const LOCKED: bool = true;

    fn for_each_spte(&mut self, head: &RmapHead, mut f: impl FnMut(&AtomicU64) -> bool) -> bool {
        let guard = head.lock(self.0);
        for sptep in guard.sptes() {
            if f(sptep) {
                break;
            }
        }
        false
    }

    fn mark_dirty(pfn: u64) {
        P::set_page_dirty(pfn);
    }
}

/// Ages the leaves of the rmap `head` as `side` locks it.  Stops at the first young leaf when
/// testing.
pub(crate) fn age_rmap<S: AgeSide>(
    side: &mut S,
    head: &RmapHead,
    op: AgeOp,
    result: &mut AgeResult,
) {
    result.visited += 1;
    // Most rmaps of a range are empty (the huge levels, unmapped pages): skip them without
    // building a guard (KVM checks `rmap_head->val` first too).  Exact under the MMU lock, whose
    // holders alone add to rmaps; without it, an SPTE added right after is missed, as it would
    // be if it came after the walk ("Imprecise aging").
    if head.is_empty() {
        return;
    }
    let contended = side.for_each_spte(head, |sptep| {
        let aged = age_leaf(sptep, op, S::LOCKED);
        if let LeafAge::Cleared {
            pfn, dirty: true, ..
        } = aged
        {
            S::mark_dirty(pfn);
        }
        aged.record(result);
        result.done()
    });
    result.contended += u64::from(contended);
}

/// Ages the gfns `[start, end)` of `slot` in every root, through the rmaps of every level, huge
/// levels from `start` aligned down ("Ranges and mapping levels"), each rmap locked as `side`
/// locks it.  Testing stops at the first young leaf.
fn age_slot<S: AgeSide>(
    side: &mut S,
    slot: SlotRef<'_>,
    start: Gfn,
    end: Gfn,
    op: AgeOp,
) -> AgeResult {
    let mut result = AgeResult::new(op);
    slot.for_each_rmap(start, end, |head| {
        age_rmap(side, head, op, &mut result);
        result.done()
    });
    result
}

/// Ages the gfns `[start, end)` of `slot` in every root without the MMU lock (KVM's
/// `kvm_rmap_age_gfn_range()`): [`age_slot()`] with each rmap locked read-only.  For spaces
/// whose leaves keep A/D bits, or to test (`aging::use_lockless()`): accessed leaves without A/D
/// are left alone and counted young ([`AgeResult::skipped`]).
///
/// `no_preempt` must cover the whole call: it keeps the bit locks short and, being an RCU
/// read-side critical section, keeps the memslot set that `slot` was read from, and so the
/// slot's rmaps, from being freed (R3).  If the result
/// [`needs_flush()`](AgeResult::needs_flush) (`clear_flush_young` made leaves old), flush TLBs.
pub(crate) fn age_gfn_range_lockless(
    slot: SlotRef<'_>,
    no_preempt: &NoPreempt<'_>,
    start: Gfn,
    end: Gfn,
    op: AgeOp,
) -> AgeResult {
    age_slot(&mut Lockless(no_preempt), slot, start, end, op)
}

/// The translation of `gfn` by the present leaf `spte` at `level`.
fn translation(spte: u64, level: Level, gfn: Gfn) -> Translation {
    let writable = spte::is_writable(spte);
    Translation {
        pfn: Pfn::new(spte::pfn(spte)) + gfn.offset_in(level),
        level,
        writable,
        dirty: writable && spte::is_dirty(spte),
        dirtied: false,
    }
}

/// Translates `gfn` through root table `root_pfn` for a read or a `write`, like the hardware's
/// EPT walk: without any lock, setting A on the leaf, and D too on a write, when A/D are kept.
///
/// The A/D update is a compare-exchange from the value read, retried while the leaf stays
/// present (I3): a leaf zapped meanwhile is not made present again, but reported
/// [`WalkFault::NotPresent`], as the hardware's locked update would fault.  Leaves without A/D
/// are not updated; an access-tracked one is [`WalkFault::NotPresent`] (its restore is the fault
/// path's job).  A write to a read-only leaf is [`WalkFault::WriteProtected`].
///
/// The translation is only good until a zap's TLB flush: use it, and the page, only inside
/// guest mode (`tlb.rs`).
///
/// # Safety
///
/// `root_pfn` is [`X86Mmu::root_pfn()`] of an `X86Mmu<P>` that is not dropped before this
/// returns, and the caller runs in guest mode (or holds the MMU lock) until it returns, so
/// that no table unlinked meanwhile is freed under the walk (I2).
pub(crate) unsafe fn translate<P: PageOps>(
    root_pfn: u64,
    gfn: Gfn,
    write: bool,
) -> Result<Translation, WalkFault> {
    'walk: loop {
        // SAFETY: per the caller, the MMU of `root_pfn` outlives this call, and the caller is
        // in guest mode or holds the MMU lock throughout, so no table the walk reaches is freed
        // (I2).
        let Some(w) = (unsafe { walk::find::<Ept, P>(&root_tables(&root_pfn), gfn.raw()) }) else {
            // Beyond what 4 levels translate.
            return Err(WalkFault::NotPresent);
        };
        let mut spte = w.old;
        loop {
            if !spte::is_present(spte) {
                return Err(WalkFault::NotPresent);
            }
            if Ept::is_table(spte, w.level) {
                // The leaf was replaced by a table meanwhile: walk again.
                continue 'walk;
            }
            if write && !spte::is_writable(spte) {
                // Also the case of access-tracked leaves, which are not writable.
                if spte::is_access_tracked(spte) {
                    return Err(WalkFault::NotPresent);
                }
                return Err(WalkFault::WriteProtected);
            }
            if !spte::is_ad_enabled(spte) {
                if spte::is_access_tracked(spte) {
                    return Err(WalkFault::NotPresent);
                }
                return Ok(translation(spte, w.level, gfn));
            }
            let new = spte | spte::ACCESSED | if write { spte::DIRTY } else { 0 };
            if new == spte {
                return Ok(translation(spte, w.level, gfn));
            }
            // Acquire on failure: the value may be a new leaf, whose page we then touch.
            match w
                .ptep
                .compare_exchange_weak(spte, new, Ordering::Relaxed, Ordering::Acquire)
            {
                Ok(_) => {
                    let mut t = translation(new, w.level, gfn);
                    // Clean to dirty: for the vCPU's log (PML).  Dirty logging keeps no
                    // writable clean huge leaf in a logging slot (it protects those instead of
                    // clearing D), so a whole block is never logged as one page.
                    t.dirtied = write && !spte::is_dirty(spte);
                    return Ok(t);
                }
                Err(cur) => spte = cur,
            }
        }
    }
}
