// SPDX-License-Identifier: GPL-2.0

//! The memslot set of the x86 MMU's host tests, as the kernel glue keeps it (`space.rs`,
//! `format.rs`): an immutable [`Memslots`] whose entries own their rmaps by shared pointer,
//! published through an [`RcuPtr`], plus [`TestMmu`], an [`X86Mmu`] with such a set, whose
//! methods take slot ids and look the slots up as the kernel glue does (under the "MMU lock",
//! here `&mut TestMmu`).
//!
//! Readers outside the lock read the set with a [`NoPreempt`] proof; a test that runs such
//! readers in other threads emulates the grace period itself (an `RwLock` whose read side the
//! readers hold) before freeing what [`TestMmu::detach_slot()`] unpublished.

use core::ops::{Deref, DerefMut};

use crate::mmu::addr::{Gfn, Hva, Pfn};
use crate::mmu::aging::{AgeOp, AgeResult};
use crate::mmu::dirty::{Protected, Split};
use crate::mmu::level::Level;
use crate::mmu::memslot::{CurrentSlots, Memslots, Slot, SlotEntry, SlotError};
use crate::mmu::pgtable::{MapError, MapOutcome, PageOps, TableCache, TABLE_CACHE_CAPACITY};
use crate::mmu::prim::{warn_on, AllocError, AtomicU64, NoPreempt, PArc, RcuPtr, Unpublished};
use crate::test_util::{drive_split, run_zap, ZapRun};
use crate::x86::mmu::{
    age_gfn_range_lockless, split_min_descs, RmapsOf, SlotRef, SlotRmaps, X86Mmu,
};
use crate::x86::rmap::DescCache;

/// The format data of a test slot: its rmaps.
pub(crate) type Rmaps = PArc<SlotRmaps>;

/// A memslot set of the tests.
pub(crate) type TestSet = Memslots<Option<Rmaps>>;

/// `slot` with its rmaps, as the x86 MMU takes it.
pub(crate) fn slot_ref(slot: &SlotEntry<Option<Rmaps>>) -> Option<SlotRef<'_>> {
    SlotRef::of(slot)
}

impl RmapsOf for Option<Rmaps> {
    fn rmaps(&self) -> Option<&SlotRmaps> {
        self.as_deref()
    }
}

/// A published memslot set, shared by an MMU and lockless agers.
pub(crate) struct TestSlots {
    set: RcuPtr<TestSet>,
}

impl TestSlots {
    /// An empty set, published.
    pub(crate) fn new() -> PArc<Self> {
        PArc::new(Self {
            set: RcuPtr::new(Box::new(TestSet::new())),
        })
    }

    /// The set, for a reader in an RCU read side.
    pub(crate) fn read<'a>(&'a self, rcu: &'a NoPreempt<'_>) -> &'a TestSet {
        self.set.read(rcu)
    }

    /// Slot `id` with its rmaps, for a reader in an RCU read side.
    pub(crate) fn get<'a>(&'a self, id: u32, rcu: &'a NoPreempt<'_>) -> Option<SlotRef<'a>> {
        self.read(rcu).by_id(id).and_then(slot_ref)
    }

    /// Ages the host range `[hva_start, hva_end)` without the MMU lock, as the kernel's x86
    /// `Format::age()` does: each (slot, gfn range) pair of the set, in turn.
    pub(crate) fn age_hva_range_lockless(
        &self,
        rcu: &NoPreempt<'_>,
        hva_start: u64,
        hva_end: u64,
        op: AgeOp,
    ) -> AgeResult {
        let mut r = AgeResult::new(op);
        for (slot, s, e) in self
            .read(rcu)
            .gfn_ranges(Hva::new(hva_start), Hva::new(hva_end))
        {
            if let Some(slot) = slot_ref(slot) {
                r.merge(&age_gfn_range_lockless(slot, rcu, s, e, op));
            }
            if r.done() {
                break;
            }
        }
        r
    }

    /// Ages the gfns `[start, end)` of slot `id` without the MMU lock.
    pub(crate) fn age_gfn_range_lockless(
        &self,
        rcu: &NoPreempt<'_>,
        id: u32,
        start: Gfn,
        end: Gfn,
        op: AgeOp,
    ) -> AgeResult {
        match self.get(id, rcu) {
            Some(slot) => age_gfn_range_lockless(slot, rcu, start, end, op),
            None => AgeResult::new(op),
        }
    }

    /// The set, for the owner of the MMU (`&mut TestMmu` is the MMU lock and the only
    /// replacer).
    fn locked(&self) -> &TestSet {
        // SAFETY: Only `TestMmu` replaces the set, through `&mut self`, and callers borrow the
        // `TestMmu` for as long as they use the reference.
        unsafe { self.set.get_unchecked() }
    }
}

/// Where an x86 zap finds its slot again at every step, as the kernel glue's lookup in the set
/// current under the MMU lock: the set is read in an RCU read side, so a slot detached while the
/// zap yielded ends the zap.
impl CurrentSlots<Option<Rmaps>> for &TestSlots {
    fn with_slot<R>(
        &mut self,
        id: u32,
        f: impl FnOnce(Option<&SlotEntry<Option<Rmaps>>>) -> R,
    ) -> R {
        let no_preempt = NoPreempt::new();
        f(self.read(&no_preempt).by_id(id))
    }
}

/// An x86 MMU with its memslot set, taking slot ids.  Dropping it zaps every slot first, as
/// the kernel's `release()` does before the MMU goes.
pub(crate) struct TestMmu<P: PageOps> {
    mmu: X86Mmu<P>,
    slots: PArc<TestSlots>,
}

impl<P: PageOps> Deref for TestMmu<P> {
    type Target = X86Mmu<P>;

    fn deref(&self) -> &X86Mmu<P> {
        &self.mmu
    }
}

impl<P: PageOps> DerefMut for TestMmu<P> {
    fn deref_mut(&mut self) -> &mut X86Mmu<P> {
        &mut self.mmu
    }
}

impl<P: PageOps> TestMmu<P> {
    /// An MMU with an empty set of its own.
    pub(crate) fn new(nr_roots: usize, ad_enabled: bool) -> Result<Self, AllocError> {
        Self::with_slots(nr_roots, ad_enabled, TestSlots::new())
    }

    /// An MMU using `slots`, shared with lockless agers.
    pub(crate) fn with_slots(
        nr_roots: usize,
        ad_enabled: bool,
        slots: PArc<TestSlots>,
    ) -> Result<Self, AllocError> {
        Ok(Self {
            mmu: X86Mmu::new(nr_roots, ad_enabled)?,
            slots,
        })
    }

    /// The set the MMU uses.
    pub(crate) fn slots(&self) -> &PArc<TestSlots> {
        &self.slots
    }

    /// Slot `id` of the current set, with its rmaps.
    pub(crate) fn slot(&self, id: u32) -> Option<SlotRef<'_>> {
        self.slots.locked().by_id(id).and_then(slot_ref)
    }

    /// Write-protects the gfns `[start, end)` of slot `id` (dirty logging), as the kernel glue
    /// does under the MMU lock.
    pub(crate) fn write_protect(&mut self, id: u32, start: Gfn, end: Gfn) -> Protected {
        let slots = self.slots.clone();
        let set = slots.locked();
        let slot = set.by_id(id).and_then(slot_ref).expect("no such slot");
        self.mmu.write_protect_gfn_range(slot, start, end)
    }

    /// Clears D on the 4K leaves of the gfns `[start, end)` of slot `id`, and write-protects
    /// the huge ones (dirty logging by the dirty bit), as the kernel glue does under the MMU
    /// lock.
    pub(crate) fn clear_dirty(&mut self, id: u32, start: Gfn, end: Gfn) -> Protected {
        let slots = self.slots.clone();
        let set = slots.locked();
        let slot = set.by_id(id).and_then(slot_ref).expect("no such slot");
        self.mmu.clear_dirty_gfn_range(slot, start, end)
    }

    /// Splits the huge leaves over the gfns `[start, end)` of slot `id` down to 4K (dirty
    /// logging's eager split), as the kernel glue does: the caches topped up to their capacity
    /// before each call, called again from where it stopped until it is done.  Returns the
    /// leaves split and the number of calls.
    pub(crate) fn split(
        &mut self,
        id: u32,
        start: Gfn,
        end: Gfn,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> (Split, usize) {
        let slots = self.slots.clone();
        let set = slots.locked();
        let slot = set.by_id(id).and_then(slot_ref).expect("no such slot");
        drive_split(start, |at| {
            tables.topup(TABLE_CACHE_CAPACITY).unwrap();
            descs.topup(split_min_descs(self.mmu.nr_roots())).unwrap();
            self.mmu.split_huge_gfn_range(slot, at, end, tables, descs)
        })
    }

    /// Publishes a set with `slot` added, with new rmaps (SECMMU_SET_MEMSLOT).  No reader can
    /// see a set with the slot's rmaps mapped before this, so the old set is freed at once
    /// unless a reader of another thread may hold it: then use [`TestMmu::attach_slot_rcu()`].
    pub(crate) fn attach_slot(&mut self, slot: &Slot) -> Result<(), SlotError> {
        let old = self.attach_slot_rcu(slot)?;
        // SAFETY: Tests that call this run no reader in another thread.
        unsafe { old.free_after_grace_period() };
        Ok(())
    }

    /// [`TestMmu::attach_slot()`], returning the old set for the caller to free after a grace
    /// period.
    pub(crate) fn attach_slot_rcu(
        &mut self,
        slot: &Slot,
    ) -> Result<Unpublished<TestSet>, SlotError> {
        let rmaps = SlotRmaps::new(slot).map_err(|_| SlotError::NoMemory)?;
        let new = self
            .slots
            .locked()
            .inserted(*slot, Some(PArc::new(rmaps)))?;
        Ok(self.slots.set.replace(Box::new(new)))
    }

    /// Publishes a set without slot `id`, which the caller zapped, and returns the old set for
    /// the caller to free after a grace period (the slot's rmaps go with it).  `None` if there
    /// is no such slot.  A slot left with SPTEs is a bug: they are zapped here so that none
    /// escapes later zaps.
    pub(crate) fn detach_slot(&mut self, id: u32) -> Option<Unpublished<TestSet>> {
        let left = self.slot(id)?.sptes();
        if left != 0 {
            warn_on!(true, "detaching slot {id} with {left} SPTEs");
            self.zap_slot(id);
        }
        let (new, _) = self.slots.locked().removed(id).ok()?;
        Some(self.slots.set.replace(Box::new(new)))
    }

    /// [`X86Mmu::map()`] through slot `slot_id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map(
        &mut self,
        root: usize,
        slot_id: u32,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let slots = self.slots.locked();
        let slot = slots
            .by_id(slot_id)
            .and_then(slot_ref)
            .ok_or(MapError::NoSlot)?;
        self.mmu.map(root, slot, gfn, pfn, writable, tables, descs)
    }

    /// [`X86Mmu::map_level()`] through slot `slot_id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_level(
        &mut self,
        root: usize,
        slot_id: u32,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        level: Level,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let slots = self.slots.locked();
        let slot = slots
            .by_id(slot_id)
            .and_then(slot_ref)
            .ok_or(MapError::NoSlot)?;
        self.mmu
            .map_level(root, slot, gfn, pfn, writable, level, tables, descs)
    }

    /// [`X86Mmu::map_level_prefetch()`] through slot `slot_id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_level_prefetch(
        &mut self,
        root: usize,
        slot_id: u32,
        gfn: Gfn,
        pfn: Pfn,
        writable: bool,
        level: Level,
        tables: &mut TableCache<P>,
        descs: &mut DescCache,
    ) -> Result<MapOutcome, MapError> {
        let slots = self.slots.locked();
        let slot = slots
            .by_id(slot_id)
            .and_then(slot_ref)
            .ok_or(MapError::NoSlot)?;
        self.mmu
            .map_level_prefetch(root, slot, gfn, pfn, writable, level, tables, descs)
    }

    /// [`X86Mmu::zap_gfn_range()`] of `[start, end)` of slot `slot_id`, to the end, never
    /// asked to yield (so only a full list of unlinked tables, and the end, flush); `frees`
    /// counts the table pages freed.
    pub(crate) fn zap_to_end(
        &mut self,
        frees: fn() -> u64,
        slot_id: u32,
        start: Gfn,
        end: Gfn,
    ) -> ZapRun {
        let slots = self.slots.clone();
        let run = run_zap(
            &mut self.mmu,
            frees,
            || false,
            |_| {},
            |lock, z| X86Mmu::zap_gfn_range(lock, &mut &*slots, z, slot_id, start, end),
        );
        assert_eq!(run.yields, 0);
        run
    }

    /// [`X86Mmu::zap_slot()`] of slot `slot_id`, 0 if there is no such slot.
    pub(crate) fn zap_slot(&mut self, slot_id: u32) -> u64 {
        let slots = self.slots.locked();
        match slots.by_id(slot_id).and_then(slot_ref) {
            Some(slot) => self.mmu.zap_slot(slot),
            None => 0,
        }
    }

    /// [`X86Mmu::zap_all()`] with every slot of the set.
    pub(crate) fn zap_all(&mut self) -> u64 {
        let slots = self.slots.locked();
        self.mmu.zap_all(slots.iter().filter_map(slot_ref))
    }

    /// [`X86Mmu::age_gfn_range_locked()`] of slot `slot_id`.
    pub(crate) fn age_gfn_range_locked(
        &mut self,
        slot_id: u32,
        start: Gfn,
        end: Gfn,
        op: AgeOp,
    ) -> AgeResult {
        let slots = self.slots.locked();
        match slots.by_id(slot_id).and_then(slot_ref) {
            Some(slot) => self.mmu.age_gfn_range_locked(slot, start, end, op),
            None => AgeResult::new(op),
        }
    }

    /// Ages the host range `[hva_start, hva_end)` under the MMU lock, as the kernel's x86
    /// `Format::age()` does: each (slot, gfn range) pair of the set, in turn.
    pub(crate) fn age_hva_range_locked(
        &mut self,
        hva_start: u64,
        hva_end: u64,
        op: AgeOp,
    ) -> AgeResult {
        let slots = self.slots.locked();
        let mut r = AgeResult::new(op);
        for (slot, s, e) in slots.gfn_ranges(Hva::new(hva_start), Hva::new(hva_end)) {
            if let Some(slot) = slot_ref(slot) {
                r.merge(&self.mmu.age_gfn_range_locked(slot, s, e, op));
            }
            if r.done() {
                break;
            }
        }
        r
    }

    /// [`X86Mmu::add_test_leaf()`] in slot `slot_id`.
    ///
    /// # Safety
    ///
    /// As for [`X86Mmu::add_test_leaf()`].
    pub(crate) unsafe fn add_test_leaf(
        &mut self,
        slot_id: u32,
        level: Level,
        gfn: u64,
        sptep: &AtomicU64,
        descs: &mut DescCache,
    ) -> bool {
        let slots = self.slots.locked();
        let Some(slot) = slots.by_id(slot_id).and_then(slot_ref) else {
            return false;
        };
        // SAFETY: Per the caller.
        unsafe { self.mmu.add_test_leaf(slot, level, gfn, sptep, descs) }
    }
}

impl<P: PageOps> Drop for TestMmu<P> {
    fn drop(&mut self) {
        // Empties every rmap (freeing the descriptors) and reports dirty pages, as the kernel's
        // release() does before the tables go.
        self.zap_all();
    }
}
