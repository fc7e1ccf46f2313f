// SPDX-License-Identifier: GPL-2.0

//! What the secondary page tables have in common whatever their format (x86 EPT, arm64 stage-2):
//! where table pages come from ([`PageOps`], [`TableCache`]), and the vocabulary of mapping,
//! walking and zapping ([`MapOutcome`], [`Translation`], [`ZapCursor`], the snapshot byte).
//! Levels are [`Level`]s (`level.rs`).
//!
//! Section names in quotes are those of Documentation/secmmu-protocols.rst.
//!
//! Table pages.  A table is one 4 KiB page of 512 64-bit entries, named by its page frame
//! number.  Entries are only ever accessed atomically: walkers that play the hardware read them
//! without the MMU lock.  A table is allocated zeroed (all entries non-present) before it is
//! linked, and the entry that links it is stored with `Release`, so a walker that loads that
//! entry with `Acquire` sees the zeroes ("Publishing with release").  Tables stay allocated until
//! no walker can reach them: a table a map or a zap unlinks is freed after the TLB flush that waits
//! for every vCPU to leave guest mode, with the MMU lock held for write ([`ZappedTables`]).
//!
//! Allocation happens before the MMU lock is taken, into caches the lock holder takes from
//! (KVM's `kvm_mmu_memory_cache`): the MMU lock spins, so nothing under it may sleep.
//!
//! Kernel-free: built into the module and into the host crate.

use core::marker::PhantomData;

use crate::mmu::addr::Pfn;
use crate::mmu::level::Level;
use crate::mmu::prim::{self, AllocError, AtomicU64, PVec};

/// Entries in one page table.
pub(crate) const ENTRIES_PER_TABLE: usize = 512;

/// A page table as walkers see it.
pub(crate) type Table = [AtomicU64; ENTRIES_PER_TABLE];

/// Where table pages come from, and what the page tables report about the pages they map.
///
/// Implemented by the kernel glue (order-0 pages reached through the direct map) and by the host
/// tests (4 KiB-aligned heap pages, pfn = address >> 12).  The MMU is generic over it.
pub(crate) trait PageOps {
    /// Allocates a zeroed 4 KiB table page and returns its pfn.  May sleep: call it before
    /// taking the MMU lock.
    fn alloc_table() -> Result<u64, AllocError>;

    /// Frees a table page.
    ///
    /// # Safety
    ///
    /// `pfn` came from [`PageOps::alloc_table()`], was not freed since, and no walker can reach
    /// it any more: it is unlinked, or every walker of its tables has finished.
    unsafe fn free_table(pfn: u64);

    /// The entries of table page `pfn`.
    ///
    /// # Safety
    ///
    /// `pfn` came from [`PageOps::alloc_table()`] and is not freed for `'a`.
    unsafe fn table<'a>(pfn: u64) -> &'a Table;

    /// Host page `pfn` was written through the secondary MMU: its mapping was dirty when zapped.
    /// Called under the MMU lock, so it must not sleep.
    fn set_page_dirty(pfn: u64);
}

/// How many table pages a [`TableCache`] holds when topped up: one per level below the root for
/// a 4- or 5-level walk, with room to spare.
pub(crate) const TABLE_CACHE_CAPACITY: usize = 8;

/// A stock of zeroed table pages (KVM's `kvm_mmu_memory_cache` of shadow pages), so that a fault
/// under the spinning MMU lock can link new tables without allocating.  Top it up before taking
/// the lock; what is left when it is dropped goes back to the allocator.
pub(crate) struct TableCache<P: PageOps> {
    /// Pfns of the cached tables, in `pfns[..nr]`.
    pfns: [u64; TABLE_CACHE_CAPACITY],
    nr: usize,
    _ops: PhantomData<fn() -> P>,
}

impl<P: PageOps> Default for TableCache<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: PageOps> TableCache<P> {
    /// An empty cache.
    pub(crate) const fn new() -> Self {
        TableCache {
            pfns: [0; TABLE_CACHE_CAPACITY],
            nr: 0,
            _ops: PhantomData,
        }
    }

    /// Number of tables in the cache.
    pub(crate) fn len(&self) -> usize {
        self.nr
    }

    /// Whether the cache is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.nr == 0
    }

    /// Makes sure the cache holds at least `min` tables, filling it to its capacity when it
    /// holds fewer.  May sleep: call it before taking the MMU lock.  Fails if an allocation
    /// fails (the cache keeps what it had and got) or if `min` exceeds the capacity.
    pub(crate) fn topup(&mut self, min: usize) -> Result<(), AllocError> {
        if self.nr >= min {
            return Ok(());
        }
        if min > TABLE_CACHE_CAPACITY {
            return Err(AllocError);
        }
        while self.nr < TABLE_CACHE_CAPACITY {
            self.pfns[self.nr] = P::alloc_table()?;
            self.nr += 1;
        }
        Ok(())
    }

    /// Takes a zeroed table page, which the caller then owns.
    pub(crate) fn take(&mut self) -> Option<u64> {
        self.nr = self.nr.checked_sub(1)?;
        Some(self.pfns[self.nr])
    }

    /// Gives back a table page taken with [`TableCache::take()`] that was not used: the loser of
    /// a race to link a table.  It goes back into the cache, or to the allocator if the cache is
    /// full.  Never sleeps.
    ///
    /// # Safety
    ///
    /// `pfn` came from [`TableCache::take()`] of a cache of the same [`PageOps`] (so from
    /// [`PageOps::alloc_table()`]), the caller owns it, it is still all zeroes, and nothing else
    /// can reach it: it was never linked, or it was unlinked and every walker is done with it.
    pub(crate) unsafe fn put_back(&mut self, pfn: u64) {
        if self.nr < TABLE_CACHE_CAPACITY {
            self.pfns[self.nr] = pfn;
            self.nr += 1;
        } else {
            // SAFETY: from `alloc_table()`, owned by the caller and unreachable, per the caller.
            unsafe { P::free_table(pfn) };
        }
    }
}

impl<P: PageOps> Drop for TableCache<P> {
    fn drop(&mut self) {
        while let Some(pfn) = self.take() {
            // SAFETY: the page came from `alloc_table()` in `topup()`, and was never handed out
            // (it is still in the cache), so nothing can reach it.
            unsafe { P::free_table(pfn) };
        }
    }
}

/// What a successful map did to the leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapAction {
    /// The entry was empty; a new leaf was installed.
    Installed,
    /// The entry mapped another page (stale): that leaf was zapped, then the new one installed.
    /// TLBs may still hold the old translation: see [`MapOutcome::needs_flush()`].
    Replaced,
    /// The entry mapped the page read-only; it was made writable in place.
    Upgraded,
    /// The entry mapped the page but was access-tracked; its permissions were restored.
    Restored,
    /// The entry already mapped the page with the access asked for.
    Unchanged,
}

/// What a successful map did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MapOutcome {
    /// What happened to the leaf.
    pub(crate) action: MapAction,
    /// Length of the rmap chain the new leaf was added to, counting it; 0 if no leaf was added
    /// (or the format keeps no rmaps).  Chains only grow by adds, so this is enough for a
    /// longest-chain statistic.
    pub(crate) chain_len: usize,
    /// Table pages taken from the cache and linked.
    pub(crate) new_tables: usize,
    /// A huge leaf on the way down was zapped and replaced by a table (a split).
    pub(crate) split: bool,
    /// The huge leaf was installed where a table was (a collapse): the table, emptied of its
    /// leaves, was unlinked, and lockless walkers may still be inside it.  The caller frees it
    /// after the TLB flush that [`MapOutcome::needs_flush()`] asks for, which waits for every
    /// such walker to be done.  Dropping it instead leaks the pages, which is safe.
    pub(crate) unlinked: Option<UnlinkedTable>,
}

impl MapOutcome {
    /// Whether a present mapping of another page was zapped, or a table unlinked: the caller
    /// must flush remote TLBs (and wait for the flush) before it drops the MMU lock, as after
    /// any zap, and before it frees [`MapOutcome::unlinked`].
    pub(crate) fn needs_flush(&self) -> bool {
        self.action == MapAction::Replaced || self.unlinked.is_some()
    }
}

/// A table page that a map unlinked to put a huge leaf in its place, with the tables linked
/// under it: no leaf is left in any of them, but lockless walkers may still be walking them until
/// the next TLB flush has waited for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnlinkedTable {
    /// The table page.
    pub(crate) pfn: u64,
    /// The size the entry that linked it mapped: its entries map the next smaller level.
    pub(crate) covers: Level,
}

/// Why a map was refused.  Nothing was changed, except that tables linked on the way down stay
/// linked (they are empty and harmless), when the error is found at the leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapError {
    /// No such root.
    BadRoot,
    /// The slot has no rmaps, or is not in the memslot set.
    NoSlot,
    /// The gfn is outside the slot, or beyond what the format translates.
    BadGfn,
    /// The pfn does not fit the format, or is not aligned to the level.
    BadPfn,
    /// The level is larger than the format can map (the MMU's `max_map_level()`): nothing was
    /// changed.
    BadLevel,
    /// The table or descriptor cache was not topped up enough for one map.
    NeedTopup,
    /// The map needed a new table, and the MMU holds as many table pages as its limit allows
    /// (the MMU's `set_table_limit()`; the pages it counts are its `table_pages()`, roots and
    /// unlinked tables not yet freed included).  Nothing was changed but tables linked on the
    /// way, which count.  The fault fails until zaps free tables (unmapped memory, deleted
    /// memslots) or the limit is raised.
    TableLimit,
    /// Another walker changed or owns (locked) an entry on the way: the map lost a race under
    /// the read side of the MMU lock (arm64 stage-2's `-EAGAIN`, "Locked entries").  Nothing to
    /// undo: the caller drops nothing and just retries the fault (the vCPU re-enters and faults
    /// again if it still needs the mapping).
    Again,
}

/// A translation found by a lockless walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Translation {
    /// The host page backing the 4K gfn that was walked (within a huge mapping, the right
    /// 4K page of it).
    pub(crate) pfn: Pfn,
    /// The level of the leaf that maps it.
    pub(crate) level: Level,
    /// The leaf allows writes.
    pub(crate) writable: bool,
    /// A write through this translation needs no update of the leaf: it is writable, and dirty
    /// (D set, or A/D not kept).  A TLB may then serve writes without walking.
    pub(crate) dirty: bool,
    /// This walk made the leaf dirty: it set D on a writable 4K leaf (x86), or W on a 4K leaf
    /// that allows it (stage-2's dirty bit modifier).  The vCPU logs the gfn for dirty logging
    /// by the dirty bit, as a CPU logs such a write in its page-modification log (PML).
    pub(crate) dirtied: bool,
}

/// Why a lockless walk found no usable translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkFault {
    /// No present leaf maps the gfn (or it is access-tracked): take the fault path.
    NotPresent,
    /// A present leaf maps the gfn read-only and the access is a write.
    WriteProtected,
}

/// Snapshot byte (`SECMMU_SNAP_*`): a present leaf maps the page.
pub(crate) const SNAP_PRESENT: u8 = 1 << 0;
/// Snapshot byte: the leaf allows writes.
pub(crate) const SNAP_WRITABLE: u8 = 1 << 1;
/// Snapshot byte: the leaf was accessed.
pub(crate) const SNAP_ACCESSED: u8 = 1 << 2;
/// Snapshot byte: the leaf is dirty.
pub(crate) const SNAP_DIRTY: u8 = 1 << 3;
/// Snapshot byte: position of the leaf's level, as the uAPI numbers it ([`Level::uapi()`]).
pub(crate) const SNAP_LEVEL_SHIFT: u32 = 4;

/// The snapshot byte of a present leaf at `level`.
pub(crate) fn snapshot_byte(writable: bool, accessed: bool, dirty: bool, level: Level) -> u8 {
    let mut b = SNAP_PRESENT | (level.uapi() << SNAP_LEVEL_SHIFT);
    if writable {
        b |= SNAP_WRITABLE;
    }
    if accessed {
        b |= SNAP_ACCESSED;
    }
    if dirty {
        b |= SNAP_DIRTY;
    }
    b
}

/// Where a zap through rmaps (x86) of `[start, end)` stands, between the steps it takes under the
/// zap driver (`zap::Zap::run()`): the level being walked and the next gfn to visit at it.
/// Levels go from 4K up; at a huge level the walk starts from the start aligned down to that
/// level ("Ranges and mapping levels"), so a huge page that only partly overlaps the range is
/// zapped too.
///
/// It then walks the tables of the range, root by root, to unlink those the zap left empty:
/// [`ZapCursor::table_root()`] is the root being walked, and [`ZapCursor::gfn()`] the next gfn to
/// visit in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ZapCursor {
    start: u64,
    level: Level,
    gfn: u64,
    table_root: Option<usize>,
    done: bool,
}

impl ZapCursor {
    /// A cursor at the beginning of a zap that starts at `start`.
    pub(crate) const fn new(start: u64) -> Self {
        ZapCursor {
            start,
            level: Level::L4K,
            gfn: start,
            table_root: None,
            done: false,
        }
    }

    /// The root whose tables the walk for empty tables is at, once the leaves are zapped.
    pub(crate) fn table_root(&self) -> Option<usize> {
        self.table_root
    }

    /// Moves to the walk for empty tables of root `root`, from the start of the zap.
    pub(crate) fn walk_tables(&mut self, root: usize) {
        self.table_root = Some(root);
        self.gfn = self.start;
    }

    /// The level being walked.
    pub(crate) fn level(&self) -> Level {
        self.level
    }

    /// The next gfn to visit at [`ZapCursor::level()`].
    pub(crate) fn gfn(&self) -> u64 {
        self.gfn
    }

    /// Whether every level has been walked.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Records that the walk at the current level goes on at `gfn`.
    pub(crate) fn advance_to(&mut self, gfn: u64) {
        debug_assert!(gfn >= self.gfn);
        self.gfn = gfn;
    }

    /// Moves to the start of the next larger level, or marks the zap done after the largest.
    pub(crate) fn next_level(&mut self) {
        match self.level.larger() {
            Some(level) => {
                self.level = level;
                self.gfn = level.align_down(self.start);
            }
            None => self.done = true,
        }
    }

    /// Marks the zap done.
    pub(crate) fn finish(&mut self) {
        self.done = true;
    }
}

/// Tables a zap may unlink before it must flush and free them (`zap::Pause::TablesFull`): the
/// bound on tables unlinked but not yet freed.
pub(crate) const ZAPPED_TABLES: usize = 128;

/// Table pages unlinked by zaps, waiting for the TLB flush after which they can be freed.  Room
/// for [`ZAPPED_TABLES`], allocated with the MMU: a zap runs under the spinning MMU lock.
pub(crate) struct ZappedTables {
    pfns: PVec<u64>,
    nr: usize,
}

impl ZappedTables {
    /// An empty list.  Allocates, and may sleep.
    pub(crate) fn new() -> Result<Self, AllocError> {
        Ok(ZappedTables {
            pfns: prim::try_vec_with(ZAPPED_TABLES, || 0)?,
            nr: 0,
        })
    }

    /// How many more tables the list can take.
    pub(crate) fn room(&self) -> usize {
        ZAPPED_TABLES - self.nr
    }

    /// Adds the unlinked table `pfn`.  The caller checked [`ZappedTables::room()`] first.
    pub(crate) fn push(&mut self, pfn: u64) {
        debug_assert!(self.room() > 0);
        self.pfns[self.nr] = pfn;
        self.nr += 1;
    }

    /// Empties the list, calling `free` on every table in it.
    pub(crate) fn drain(&mut self, mut free: impl FnMut(u64)) {
        for &pfn in &self.pfns[..self.nr] {
            free(pfn);
        }
        self.nr = 0;
    }
}

/// Counters kept by an MMU under its lock, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MmuStats {
    /// Table pages linked (including roots) since the MMU was made (stage-2 counts a table
    /// just before it links it, and takes the count back if it loses the race to).
    pub(crate) tables_allocated: u64,
    /// Table pages freed since the MMU was made.
    pub(crate) tables_freed: u64,
    /// Present leaf entries now, by level ([`Level::idx()`]: 4K, 2M, 1G), as KVM's
    /// `pages_4k`, `pages_2m` and `pages_1g`.
    pub(crate) leaves: [u64; 3],
    /// Leaves zapped since the MMU was made.
    pub(crate) zapped: u64,
    /// ... of which were dirty.
    pub(crate) dirty: u64,
}

impl MmuStats {
    /// Table pages allocated now.
    pub(crate) fn table_pages(&self) -> u64 {
        self.tables_allocated - self.tables_freed
    }

    /// Present leaf entries now, at every level.
    pub(crate) fn leaf_count(&self) -> u64 {
        self.leaves.iter().sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn cursor_walks_levels_from_aligned_start() {
        let mut c = ZapCursor::new(0x40123);
        assert_eq!((c.level(), c.gfn()), (Level::L4K, 0x40123));
        c.advance_to(0x40200);
        c.next_level();
        assert_eq!((c.level(), c.gfn()), (Level::L2M, 0x40000));
        c.next_level();
        assert_eq!((c.level(), c.gfn()), (Level::L1G, 0x40000));
        assert!(!c.is_done());
        assert_eq!(c.table_root(), None);
        c.walk_tables(3);
        assert_eq!((c.table_root(), c.gfn()), (Some(3), 0x40123));
        c.next_level();
        assert!(c.is_done());
    }

    #[test]
    fn snapshot_bytes() {
        assert_eq!(snapshot_byte(false, false, false, Level::L4K), 0x01);
        assert_eq!(snapshot_byte(true, true, true, Level::L4K), 0x0f);
        assert_eq!(snapshot_byte(false, true, false, Level::L2M), 0x15);
        assert_eq!(snapshot_byte(true, false, true, Level::L1G), 0x2b);
    }
}
