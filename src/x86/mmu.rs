// SPDX-License-Identifier: GPL-2.0

//! The x86 EPT MMU: 4-level EPT page tables built like KVM's shadow MMU
//! (`arch/x86/kvm/mmu/mmu.c`), with rmaps to find every SPTE of a gfn, and a lockless walker
//! that plays the hardware.
//!
//! Roots.  Each root is an independent set of tables (an address space, like a vCPU's EPT
//! pointer); the same gfn may be mapped in every root, and then its rmap holds one SPTE per
//! root.  Roots are allocated by [`X86Mmu::new()`] and live as long as the MMU.
//!
//! Locking (KVM's `mmu_lock`, a spinning rwlock owned by the caller):
//!
//! - `&mut X86Mmu` means the write side is held: [`X86Mmu::map()`], the zaps, slot changes.
//!   Only they change SPTEs, except for the A and D bits, which walkers set.
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
//!   MMU, and table pages are freed only when the MMU is dropped.  So a walker that read a
//!   non-leaf SPTE, however long ago, may still dereference the table it points at (no
//!   lifetime tracking is needed while tables are never unlinked; freeing them earlier, as
//!   zapping huge ranges will want, needs a grace period for walkers first).
//! - I3. A walker changes only A and D, only with a compare-exchange from the value it read, and
//!   only on a present leaf: it can never make a zapped SPTE present again (unlike an
//!   unconditional OR), nor set D on a leaf that lost W meanwhile.
//!
//! TLBs.  A zap clears SPTEs, but vCPUs may still hold their translations in software TLBs.
//! Whoever zaps must flush every vCPU's TLB, and wait for the flush (`tlb.rs`), before it drops
//! the MMU lock: before each yield of a resumable zap and before returning (protocols B7, B8).
//! Then no vCPU can use a translation of a zapped SPTE, and the primary MMU may free its page.
//!
//! Huge pages.  Only 4K leaves are installed for now, but the rmaps, the zaps, the walkers and
//! the snapshot already handle leaves at 2M and 1G, and [`X86Mmu::map()`] is written for any
//! target level (a huge leaf found on the way down is zapped and replaced by a table).
//!
//! Kernel-free: built into the module and into the host crate.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::memslot::{Slot, MAX_SLOTS};
use crate::pgtable::{snapshot_byte, MapAction, MapLevel, MmuStats, PageOps, TableCache};
use crate::prim::{self, AllocError, AtomicU64, Ordering, PVec};
use crate::rmap::{DescCache, MmuWriteLocked, RmapHead};
use crate::x86::spte::{self, Level};

pub(crate) use crate::pgtable::{
    MapError, MapOutcome, Translation, WalkFault, ZapCursor, ZapProgress,
};

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

/// rmaps a zap visits between two polls of its `should_stop`.
const ZAP_BATCH: u64 = 32;

/// The level of the root tables.
const ROOT_LEVEL: Level = Level::L512G;

/// The SPTE level of leaves that map `level`.
fn spte_level(level: MapLevel) -> Level {
    match level {
        MapLevel::L4K => Level::L4K,
        MapLevel::L2M => Level::L2M,
        MapLevel::L1G => Level::L1G,
    }
}

/// The mapping level of a leaf SPTE found at `level` (never the root level: EPT has no 512G
/// pages).
fn map_level(level: Level) -> MapLevel {
    debug_assert!(level <= Level::MAX_LEAF);
    match level {
        Level::L4K => MapLevel::L4K,
        Level::L2M => MapLevel::L2M,
        Level::L1G | Level::L512G => MapLevel::L1G,
    }
}

/// Whether `pfn` fits the SPTE's frame number field.
fn pfn_fits(pfn: u64) -> bool {
    pfn <= spte::PFN_MASK >> spte::PAGE_SHIFT
}

/// Number of rmaps at `level` for the slot `[base, base + npages)`: one per `level`-sized,
/// aligned block the slot overlaps, so from `level.align_down(base)` (protocols D23).
fn rmap_count(base: u64, npages: u64, level: MapLevel) -> u64 {
    if npages == 0 {
        return 0;
    }
    let shift = level.gfn_shift();
    let last = base.saturating_add(npages - 1);
    (last >> shift) - (base >> shift) + 1
}

/// The rmaps of one memslot (KVM's `kvm_arch_memory_slot.rmap`): for each mapping level, one
/// [`RmapHead`] per gfn block of that level the slot overlaps.
///
/// Made with [`SlotRmaps::new()`] outside the MMU lock (it allocates, maybe a lot, and may sleep),
/// handed to [`X86Mmu::attach_slot()`] under it, taken back with [`X86Mmu::detach_slot()`] after
/// the slot was zapped, and dropped after the MMU lock is released (freeing may sleep).
pub(crate) struct SlotRmaps {
    base_gfn: u64,
    npages: u64,
    /// Per [`MapLevel`]: the rmap of gfn `g` is at `(g >> shift) - (base_gfn >> shift)`.
    rmaps: [PVec<RmapHead>; 3],
    /// SPTEs in all these rmaps.
    sptes: u64,
}

impl SlotRmaps {
    /// Allocates empty rmaps covering `slot`, at every level.  May sleep.
    pub(crate) fn new(slot: &Slot) -> Result<Self, AllocError> {
        let alloc = |level: MapLevel| {
            let n = rmap_count(slot.base_gfn, slot.npages, level);
            let n = usize::try_from(n).map_err(|_| AllocError)?;
            prim::try_vec_with(n, RmapHead::new)
        };
        Ok(SlotRmaps {
            base_gfn: slot.base_gfn,
            npages: slot.npages,
            rmaps: [
                alloc(MapLevel::L4K)?,
                alloc(MapLevel::L2M)?,
                alloc(MapLevel::L1G)?,
            ],
            sptes: 0,
        })
    }

    /// One past the last gfn of the slot.
    fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    /// Whether the slot holds `gfn`.
    fn contains(&self, gfn: u64) -> bool {
        gfn >= self.base_gfn && gfn < self.end_gfn()
    }

    /// The rmap of `gfn` at `level`; `None` if the slot does not overlap its block.
    fn rmap(&self, level: MapLevel, gfn: u64) -> Option<&RmapHead> {
        let shift = level.gfn_shift();
        let i = (gfn >> shift).checked_sub(self.base_gfn >> shift)?;
        self.rmaps[level.idx()].get(usize::try_from(i).ok()?)
    }

    /// Number of rmaps at `level`.
    pub(crate) fn nr_rmaps(&self, level: MapLevel) -> usize {
        self.rmaps[level.idx()].len()
    }

    /// Number of SPTEs in the rmaps: 0 once the slot was zapped.
    pub(crate) fn sptes(&self) -> u64 {
        self.sptes
    }
}

impl Drop for SlotRmaps {
    fn drop(&mut self) {
        // Non-empty rmaps would leak their descriptors, and their SPTEs would escape zapping.
        debug_assert_eq!(self.sptes, 0, "rmaps dropped before their slot was zapped");
    }
}

/// The x86 EPT MMU.  See the module documentation for its locking and invariants.
///
/// Dropping it zaps whatever is still mapped and frees every table page: no lockless walker
/// ([`translate()`]) may run then, or later, with one of its roots.
pub(crate) struct X86Mmu<P: PageOps> {
    /// The root tables' pfns, in `roots[..nr_roots]`.
    roots: [u64; MAX_ROOTS],
    nr_roots: usize,
    /// New leaves keep A/D (otherwise aging uses access tracking).
    ad_enabled: bool,
    /// rmaps per slot id, `MAX_SLOTS` entries.
    slots: PVec<Option<SlotRmaps>>,
    stats: MmuStats,
    _ops: PhantomData<fn() -> P>,
}

/// A leaf to install.
#[derive(Clone, Copy)]
struct Mapping {
    gfn: u64,
    pfn: u64,
    level: MapLevel,
    writable: bool,
}

/// A leaf found by a walk: the entry, the value loaded from it, and its level.
struct Walk<'a> {
    sptep: &'a AtomicU64,
    spte: u64,
    level: Level,
}

impl<P: PageOps> X86Mmu<P> {
    /// Makes an MMU with `nr_roots` (1 to [`MAX_ROOTS`]) empty roots, whose leaves keep A/D bits
    /// if `ad_enabled`.  Allocates, and may sleep: call it before the MMU is shared.  Fails on
    /// allocation failure, and for a root count out of range (which the caller validates).
    pub(crate) fn new(nr_roots: usize, ad_enabled: bool) -> Result<Self, AllocError> {
        if nr_roots == 0 || nr_roots > MAX_ROOTS {
            return Err(AllocError);
        }
        let mut mmu = X86Mmu {
            roots: [0; MAX_ROOTS],
            nr_roots: 0,
            ad_enabled,
            slots: prim::try_vec_with(MAX_SLOTS, || None)?,
            stats: MmuStats::default(),
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

    /// Table pages allocated now, roots included.
    pub(crate) fn table_pages(&self) -> u64 {
        self.stats.table_pages()
    }

    /// Present leaf SPTEs now, in all roots.
    pub(crate) fn leaf_sptes(&self) -> u64 {
        self.stats.leaves
    }

    /// Attaches the rmaps of slot `id`, which must be made for the slot now at `id` and be
    /// empty.  Gives them back if `id` is out of range or already has rmaps; the caller then
    /// drops them after releasing the MMU lock.
    pub(crate) fn attach_slot(&mut self, id: u32, rmaps: SlotRmaps) -> Result<(), SlotRmaps> {
        debug_assert_eq!(rmaps.sptes, 0);
        match self.slots.get_mut(id as usize) {
            Some(entry) if entry.is_none() => {
                *entry = Some(rmaps);
                Ok(())
            }
            _ => Err(rmaps),
        }
    }

    /// Detaches the rmaps of slot `id`.  The caller must have zapped the slot and flushed TLBs
    /// first (SPTEs left would have no rmap to be zapped through); it drops the returned value
    /// after releasing the MMU lock, since freeing it may sleep.
    ///
    /// Should SPTEs be left anyway (a bug, flagged by debug builds), they are zapped here so
    /// that none escapes later zaps; their TLB entries are then the caller's problem.
    pub(crate) fn detach_slot(&mut self, id: u32) -> Option<SlotRmaps> {
        let left = self.slots.get(id as usize)?.as_ref()?.sptes;
        if left != 0 {
            debug_assert!(false, "detaching slot {id} with {left} SPTEs");
            self.zap_slot(id);
        }
        self.slots.get_mut(id as usize)?.take()
    }

    /// Maps `gfn` of slot `slot_id` to host page `pfn` in root `root`, writable if `writable`,
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
    /// with [`MapError::NeedTopup`] before changing anything.  `&mut self`: the MMU lock is held
    /// for write.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map(
        &mut self,
        root: usize,
        slot_id: u32,
        gfn: u64,
        pfn: u64,
        writable: bool,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let m = Mapping {
            gfn,
            pfn,
            level: MapLevel::L4K,
            writable,
        };
        self.map_at(root, slot_id, m, tables, descs)
    }

    /// [`X86Mmu::map()`] at any level.  Only [`MapLevel::L4K`] is accepted until huge mappings
    /// are: mapping a huge leaf over a table also needs the tables under it zapped and freed.
    fn map_at(
        &mut self,
        root: usize,
        slot_id: u32,
        m: Mapping,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let root_pfn = self.root_pfn(root).ok_or(MapError::BadRoot)?;
        if m.level != MapLevel::L4K {
            return Err(MapError::BadLevel);
        }
        if m.gfn >> GFN_BITS != 0 {
            return Err(MapError::BadGfn);
        }
        if !pfn_fits(m.pfn) || m.pfn & (m.level.pages() - 1) != 0 {
            return Err(MapError::BadPfn);
        }
        let slot = self
            .slots
            .get_mut(slot_id as usize)
            .and_then(Option::as_mut)
            .ok_or(MapError::NoSlot)?;
        if !slot.contains(m.gfn) {
            return Err(MapError::BadGfn);
        }
        if tables.len() < MAP_MIN_TABLES || descs.len() < MAP_MIN_DESCS {
            return Err(MapError::NeedTopup);
        }
        let stats = &mut self.stats;
        // SAFETY: `&mut self` proves the MMU lock is held for write: an `&mut X86Mmu` is only
        // reachable through the write guard of the MMU lock (a spinning lock, so preemption is
        // disabled too), or before the MMU is shared, when no one else can reach its rmaps.  The
        // token does not outlive this call.
        let mut locked = unsafe { MmuWriteLocked::assume() };

        let target = spte_level(m.level);
        let mut level = ROOT_LEVEL;
        let mut table_pfn = root_pfn;
        let mut new_tables = 0;
        let mut zapped_huge = false;
        while level > target {
            // SAFETY: `table_pfn` is a root or was linked by a present non-leaf SPTE of this
            // MMU, so it came from `alloc_table()` and is freed only when the MMU is (I2).
            let sptep = &unsafe { P::table(table_pfn) }[level.index(m.gfn)];
            let mut e = sptep.load(Ordering::Relaxed);
            if spte::is_present(e) && spte::is_leaf(e, level) {
                // A huge leaf where a table must go: zap it, then link a table instead.
                drop_leaf::<P>(
                    sptep,
                    slot,
                    map_level(level),
                    m.gfn,
                    &mut locked,
                    descs,
                    stats,
                );
                zapped_huge = true;
                e = 0;
            }
            if !spte::is_present(e) {
                // Cannot fail: checked against MAP_MIN_TABLES above.
                let new = tables.take().ok_or(MapError::NeedTopup)?;
                e = spte::make_nonleaf(new);
                // Release: a walker that Acquire-loads this SPTE sees the table zeroed (E27).
                sptep.store(e, Ordering::Release);
                new_tables += 1;
                stats.tables_allocated += 1;
            }
            table_pfn = spte::pfn(e);
            match level.lower() {
                Some(lower) => level = lower,
                None => break,
            }
        }

        // SAFETY: as above.
        let sptep = &unsafe { P::table(table_pfn) }[level.index(m.gfn)];
        let old = sptep.load(Ordering::Relaxed);
        let new = spte::make_leaf(m.pfn, level, m.writable, self.ad_enabled);
        let (mut action, chain_len) = if !spte::is_present(old) {
            let len = install_leaf(sptep, new, slot, m.level, m.gfn, &mut locked, descs, stats);
            (MapAction::Installed, len)
        } else if spte::pfn(old) == m.pfn {
            (upgrade_leaf(sptep, old, m), 0)
        } else {
            drop_leaf::<P>(sptep, slot, m.level, m.gfn, &mut locked, descs, stats);
            let len = install_leaf(sptep, new, slot, m.level, m.gfn, &mut locked, descs, stats);
            (MapAction::Replaced, len)
        };
        if zapped_huge {
            action = MapAction::Replaced;
        }
        Ok(MapOutcome {
            action,
            chain_len,
            new_tables,
        })
    }

    /// One step of zapping the gfns `[cursor, end_gfn)` of slot `slot_id` in every root
    /// (KVM's `kvm_unmap_gfn_range()` through `__walk_slot_rmaps()`), resumable so that the
    /// caller can yield the MMU lock between steps.
    ///
    /// Walks the slot's rmaps at every level, 4K first, huge levels from the start aligned down
    /// (D23); empties each rmap under its bit lock, clearing every SPTE in it atomically and
    /// marking its page dirty if the SPTE was (D set, or writable without A/D).  Every
    /// [`ZAP_BATCH`] rmaps it polls `should_stop`: when that says so (need to reschedule, lock
    /// contention) it returns with the cursor where to resume, after at least one batch.
    ///
    /// If the returned progress [`needs_flush()`](ZapProgress::needs_flush), flush TLBs before
    /// dropping the lock (B7).  Make the cursor with [`ZapCursor::new()`] from the range start.
    /// A slot without rmaps has nothing to zap.  Never sleeps.
    pub(crate) fn zap_gfn_range_step(
        &mut self,
        slot_id: u32,
        cursor: &mut ZapCursor,
        end_gfn: u64,
        should_stop: &mut dyn FnMut() -> bool,
    ) -> ZapProgress {
        let mut progress = ZapProgress::default();
        let Some(slot) = self
            .slots
            .get_mut(slot_id as usize)
            .and_then(Option::as_mut)
        else {
            cursor.finish();
            progress.done = true;
            return progress;
        };
        let stats = &mut self.stats;
        // SAFETY: as in `map_at()`, `&mut self` proves the MMU lock is held for write.
        let mut locked = unsafe { MmuWriteLocked::assume() };

        let stop_gfn = end_gfn.min(slot.end_gfn());
        while !cursor.is_done() {
            let level = cursor.level();
            // Cursors at huge levels start aligned, and so does the slot's first block.
            let mut gfn = cursor.gfn().max(level.align_down(slot.base_gfn));
            while gfn < stop_gfn {
                if let Some(head) = slot.rmap(level, gfn) {
                    let (zapped, dirty) = zap_rmap::<P>(head, &mut locked, stats);
                    slot.sptes = slot.sptes.saturating_sub(zapped);
                    progress.zapped += zapped;
                    progress.dirty += dirty;
                }
                progress.visited += 1;
                gfn += level.pages();
                if progress.visited % ZAP_BATCH == 0 && gfn < stop_gfn && should_stop() {
                    cursor.advance_to(gfn);
                    return progress;
                }
            }
            cursor.next_level();
        }
        progress.done = true;
        progress
    }

    /// Zaps every SPTE of slot `slot_id` in every root, without yielding.  Returns the number
    /// zapped; flush TLBs if nonzero.
    pub(crate) fn zap_slot(&mut self, slot_id: u32) -> u64 {
        let Some(slot) = self.slots.get(slot_id as usize).and_then(Option::as_ref) else {
            return 0;
        };
        if slot.sptes == 0 {
            return 0;
        }
        let (start, end) = (slot.base_gfn, slot.end_gfn());
        let mut cursor = ZapCursor::new(start);
        let progress = self.zap_gfn_range_step(slot_id, &mut cursor, end, &mut || false);
        debug_assert!(progress.done);
        progress.zapped
    }

    /// Zaps every SPTE of every slot in every root (release, teardown), without yielding.
    /// Returns the number zapped; flush TLBs if nonzero.  The tables stay, empty, until the
    /// MMU is dropped: walkers may still be in them.
    pub(crate) fn zap_all(&mut self) -> u64 {
        (0..MAX_SLOTS as u32).map(|id| self.zap_slot(id)).sum()
    }

    /// The snapshot byte of `gfn` in root `root` (`SECMMU_SNAP_*`): 0 if no present leaf maps
    /// it, otherwise present, writable, accessed, dirty and the leaf's level.  An access-tracked
    /// leaf is present, but neither writable nor accessed.  Loads entries atomically; the read
    /// side of the MMU lock is enough.
    pub(crate) fn snapshot(&self, root: usize, gfn: u64) -> u8 {
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
    pub(crate) fn leaf(&self, root: usize, gfn: u64) -> Option<(&AtomicU64, u64, MapLevel)> {
        let root_pfn = self.root_pfn(root)?;
        if gfn >> GFN_BITS != 0 {
            return None;
        }
        // SAFETY: `root_pfn` is a root of `self`, which is borrowed, so not dropped, for as long
        // as the entry returned.
        let w = unsafe { walk::<P>(root_pfn, gfn) };
        spte::is_present(w.spte).then(|| (w.sptep, w.spte, map_level(w.level)))
    }
}

impl<P: PageOps> Drop for X86Mmu<P> {
    fn drop(&mut self) {
        // Empties every rmap (freeing the descriptors) and reports dirty pages: the primary MMU
        // still has every page mapped, or `release()` would have zapped them already.
        self.zap_all();
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

/// Frees `table_pfn`, a table at `level`, and every table under it.
///
/// # Safety
///
/// `table_pfn` is a table of this MMU, not freed yet, that no walker can reach any more, and
/// each table under it is linked only from it or from the tables under it (I2).
unsafe fn free_tree<P: PageOps>(table_pfn: u64, level: Level, stats: &mut MmuStats) {
    if let Some(lower) = level.lower() {
        // SAFETY: the table is allocated, per the caller.
        let table = unsafe { P::table(table_pfn) };
        for entry in table {
            let e = entry.load(Ordering::Relaxed);
            if spte::is_present(e) && !spte::is_leaf(e, level) {
                // SAFETY: a present non-leaf SPTE of this MMU links a table only it links
                // (I2); it is unreachable like its parent.
                unsafe { free_tree::<P>(spte::pfn(e), lower, stats) };
            }
        }
    }
    // SAFETY: from `alloc_table()` (I2), unreachable per the caller, and its subtables, freed
    // above, were the last users of its entries.
    unsafe { P::free_table(table_pfn) };
    stats.tables_freed += 1;
}

/// Installs the leaf `new` in the empty entry `sptep`, which maps `gfn` at `level` in `slot`, and
/// adds it to its rmap (I1).  Returns the rmap's length with it.
#[allow(clippy::too_many_arguments)]
fn install_leaf(
    sptep: &AtomicU64,
    new: u64,
    slot: &mut SlotRmaps,
    level: MapLevel,
    gfn: u64,
    locked: &mut MmuWriteLocked<'_>,
    descs: &mut DescCache,
    stats: &mut MmuStats,
) -> usize {
    // The caller checked that the slot holds `gfn`, so it has an rmap for it.
    let Some(head) = slot.rmap(level, gfn) else {
        debug_assert!(false, "no rmap for gfn {gfn:#x} in its slot");
        return 0;
    };
    // Release: a walker that Acquire-loads the leaf then touches the page, and must see what
    // this thread did to the page before mapping it.
    sptep.store(new, Ordering::Release);
    stats.leaves += 1;
    let before = {
        let mut guard = head.lock(locked);
        // SAFETY: `sptep` is an entry of a table page that stays allocated until the MMU is
        // dropped (I2); the MMU's drop first zaps everything, and a cleared leaf leaves its rmap
        // (I1), so the entry is removed from the rmap before its table is freed.
        unsafe { guard.add(NonNull::from(sptep), descs) }
    };
    slot.sptes += 1;
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
            let level = spte_level(m.level);
            let new = spte::make_leaf(m.pfn, level, true, spte::is_ad_enabled(old));
            (new, MapAction::Upgraded)
        } else if spte::is_access_tracked(old) {
            (spte::restore_access_tracked(old), MapAction::Restored)
        } else {
            return MapAction::Unchanged;
        };
        match sptep.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return action,
            Err(cur) => {
                // Only holders of the MMU lock for write, like us, clear SPTEs.
                if !spte::is_present(cur) || spte::pfn(cur) != m.pfn {
                    debug_assert!(false, "leaf changed under the MMU lock: {cur:#x}");
                    return MapAction::Unchanged;
                }
                old = cur;
            }
        }
    }
}

/// Clears the leaf in `sptep` and marks its page dirty if the leaf was (KVM's
/// `mmu_spte_clear_track_bits()`).  The caller removes it from its rmap.  Returns whether it was
/// dirty, or `None` if it was not present, which under the MMU lock means corruption (C17).
fn clear_leaf<P: PageOps>(sptep: &AtomicU64, stats: &mut MmuStats) -> Option<bool> {
    // Atomic where a walker's D update could otherwise be lost.
    let old = spte::zap(sptep);
    if !spte::is_present(old) {
        debug_assert!(false, "non-present SPTE in an rmap under the MMU lock");
        return None;
    }
    stats.leaves = stats.leaves.saturating_sub(1);
    stats.zapped += 1;
    // Captured atomically with the clear: D set, or without A/D, W.
    let dirty = spte::is_dirty(old);
    if dirty {
        P::set_page_dirty(spte::pfn(old));
        stats.dirty += 1;
    }
    Some(dirty)
}

/// Zaps the present leaf in `sptep`, mapping `gfn` at `level` in `slot`, and removes it from its
/// rmap (KVM's `drop_spte()`).
fn drop_leaf<P: PageOps>(
    sptep: &AtomicU64,
    slot: &mut SlotRmaps,
    level: MapLevel,
    gfn: u64,
    locked: &mut MmuWriteLocked<'_>,
    descs: &mut DescCache,
    stats: &mut MmuStats,
) {
    clear_leaf::<P>(sptep, stats);
    let Some(head) = slot.rmap(level, gfn) else {
        debug_assert!(false, "no rmap for gfn {gfn:#x} in its slot");
        return;
    };
    let found = head.lock(locked).remove(NonNull::from(sptep), descs);
    debug_assert!(found, "leaf for gfn {gfn:#x} not in its rmap");
    if found {
        slot.sptes = slot.sptes.saturating_sub(1);
    }
}

/// Zaps every leaf in the rmap `head` (KVM's `kvm_zap_rmap()`): empties it under its bit lock,
/// clearing each leaf.  Returns the number of leaves zapped and how many of them were dirty.
fn zap_rmap<P: PageOps>(
    head: &RmapHead,
    locked: &mut MmuWriteLocked<'_>,
    stats: &mut MmuStats,
) -> (u64, u64) {
    // Exact under the MMU lock for write: only its holders add to rmaps.
    if head.is_empty() {
        return (0, 0);
    }
    // Zero capacity: descriptors are freed as the chain empties (under its bit lock, C16).
    let mut descs = DescCache::new(0);
    let (mut zapped, mut dirty) = (0, 0);
    head.lock(locked).drain(&mut descs, |sptep| {
        if let Some(d) = clear_leaf::<P>(sptep, stats) {
            zapped += 1;
            dirty += u64::from(d);
        }
    });
    (zapped, dirty)
}

/// Walks from the root table `root_pfn` towards `gfn`, with `Acquire` loads (each pairs with the
/// `Release` store that linked the table or leaf, E27), down to the present leaf that maps
/// `gfn` or the first non-present entry.  `gfn` must be below `1 << GFN_BITS`.
///
/// # Safety
///
/// `root_pfn` is a root of an [`X86Mmu<P>`] that is not dropped for `'a`.
unsafe fn walk<'a, P: PageOps>(root_pfn: u64, gfn: u64) -> Walk<'a> {
    debug_assert_eq!(gfn >> GFN_BITS, 0);
    let mut table_pfn = root_pfn;
    let mut level = ROOT_LEVEL;
    loop {
        // SAFETY: `table_pfn` is the root, or was linked by a present non-leaf SPTE of the MMU,
        // and tables are freed only when the MMU is dropped (I2), which the caller excludes.
        let sptep = &unsafe { P::table::<'a>(table_pfn) }[level.index(gfn)];
        let spte = sptep.load(Ordering::Acquire);
        if !spte::is_present(spte) || spte::is_leaf(spte, level) {
            return Walk { sptep, spte, level };
        }
        match level.lower() {
            Some(lower) => {
                level = lower;
                table_pfn = spte::pfn(spte);
            }
            // Unreachable: every present 4K SPTE is a leaf.
            None => return Walk { sptep, spte, level },
        }
    }
}

/// The translation of `gfn` by the present leaf `spte` at `level`.
fn translation(spte: u64, level: Level, gfn: u64) -> Translation {
    let level = map_level(level);
    let writable = spte::is_writable(spte);
    Translation {
        pfn: spte::pfn(spte) + (gfn & (level.pages() - 1)),
        level,
        writable,
        dirty: writable && spte::is_dirty(spte),
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
/// returns.
pub(crate) unsafe fn translate<P: PageOps>(
    root_pfn: u64,
    gfn: u64,
    write: bool,
) -> Result<Translation, WalkFault> {
    if gfn >> GFN_BITS != 0 {
        return Err(WalkFault::NotPresent);
    }
    'walk: loop {
        // SAFETY: per the caller, the MMU of `root_pfn` outlives this call.
        let w = unsafe { walk::<P>(root_pfn, gfn) };
        let mut spte = w.spte;
        loop {
            if !spte::is_present(spte) {
                return Err(WalkFault::NotPresent);
            }
            if !spte::is_leaf(spte, w.level) {
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
                .sptep
                .compare_exchange_weak(spte, new, Ordering::Relaxed, Ordering::Acquire)
            {
                Ok(_) => return Ok(translation(new, w.level, gfn)),
                Err(cur) => spte = cur,
            }
        }
    }
}
