// SPDX-License-Identifier: GPL-2.0

//! Memslots: guest-physical ranges backed by the creator's user memory.
//!
//! A slot maps `npages` guest frames starting at `base_gfn` onto user
//! virtual memory starting at `userspace_addr`. Slots never overlap in
//! guest-physical space; they may overlap (alias) in user space, so one host
//! page can be mapped at several gfns.
//!
//! The set ([`Memslots`]) is a small immutable array sorted by `base_gfn`,
//! published through one RCU-protected pointer: changes make a new set
//! and swap it in under the MMU lock held for write, so a holder of the
//! MMU lock (either side) sees a stable set, and lockless agers read it
//! under RCU (see "Memslots and their lifetime" in
//! Documentation/secmmu-protocols.rst).
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::addr::{Gfn, Hva};
use crate::mmu::level::Level;
use crate::mmu::prim::{self, PVec};

/// Guest page size: 4 KiB.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// Guest page size in bytes.
pub(crate) const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// How many slots a space can have (`SECMMU_MAX_MEMSLOTS`).
pub(crate) const MAX_SLOTS: usize = 64;
/// `SECMMU_MEM_READONLY`: guest writes to the slot fault to userspace.
pub(crate) const MEM_READONLY: u32 = 1 << 0;
/// `SECMMU_MEM_LOG_DIRTY_PAGES`: log the pages the guest writes
/// (`dirty.rs`); set and cleared on an existing slot by a flags-only change.
pub(crate) const MEM_LOG_DIRTY_PAGES: u32 = 1 << 1;
/// Every flag `SECMMU_SET_MEMSLOT` knows.
pub(crate) const MEM_FLAGS: u32 = MEM_READONLY | MEM_LOG_DIRTY_PAGES;
/// Internal, never from userspace: the slot is being deleted (KVM's
/// `KVM_MEMSLOT_INVALID`). Faults treat it as absent; invalidations and
/// aging still see it, so its mappings stay covered by the mmu_notifier
/// until the deletion has zapped them all.
pub(crate) const SLOT_INVALID: u32 = 1 << 31;

/// Why a slot change was refused. Maps to an errno at the uAPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotError {
    /// Malformed: bad id, unknown flags, misaligned, empty, overflowing,
    /// beyond the guest-physical width or outside user space (EINVAL).
    Invalid,
    /// The guest-physical range overlaps another slot (EEXIST).
    Overlap,
    /// The id is in use: delete the slot before recreating it (EBUSY).
    Busy,
    /// Deleting a slot that does not exist (ENOENT).
    NotFound,
    /// The new set could not be allocated (ENOMEM); the old one stays.
    NoMemory,
}

/// One memslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) id: u32,
    pub(crate) flags: u32,
    pub(crate) base_gfn: Gfn,
    pub(crate) npages: u64,
    pub(crate) userspace_addr: Hva,
}

impl Slot {
    /// Checks a request to create a slot, without changing anything.
    pub(crate) fn validate(req: &SlotRequest, limits: &SlotLimits) -> Result<Self, SlotError> {
        if req.id as usize >= MAX_SLOTS || req.flags & !MEM_FLAGS != 0 {
            return Err(SlotError::Invalid);
        }
        let aligned = |v: u64| v & (PAGE_SIZE - 1) == 0;
        if !aligned(req.guest_phys_addr)
            || !aligned(req.memory_size)
            || !aligned(req.userspace_addr)
        {
            return Err(SlotError::Invalid);
        }
        let gpa_end = req
            .guest_phys_addr
            .checked_add(req.memory_size)
            .ok_or(SlotError::Invalid)?;
        let hva_end = req
            .userspace_addr
            .checked_add(req.memory_size)
            .ok_or(SlotError::Invalid)?;
        if req.memory_size == 0
            || limits.gpa_bits >= 64
            || gpa_end > (1u64 << limits.gpa_bits)
            || hva_end > limits.user_end
            || req.userspace_addr == 0
        {
            return Err(SlotError::Invalid);
        }
        Ok(Self {
            id: req.id,
            flags: req.flags,
            base_gfn: Gfn::from_gpa(req.guest_phys_addr),
            npages: req.memory_size >> PAGE_SHIFT,
            userspace_addr: Hva::new(req.userspace_addr),
        })
    }

    /// One past the last gfn of the slot.
    pub(crate) fn end_gfn(&self) -> Gfn {
        self.base_gfn + self.npages
    }

    /// Does the slot map `gfn`?
    pub(crate) fn contains(&self, gfn: Gfn) -> bool {
        gfn >= self.base_gfn && gfn < self.end_gfn()
    }

    /// Whether guest writes must fault to userspace.
    pub(crate) fn readonly(&self) -> bool {
        self.flags & MEM_READONLY != 0
    }

    /// Whether the slot logs the pages the guest writes
    /// ([`MEM_LOG_DIRTY_PAGES`]).
    pub(crate) fn logs_dirty(&self) -> bool {
        self.flags & MEM_LOG_DIRTY_PAGES != 0
    }

    /// Whether the slot is being deleted ([`SLOT_INVALID`]).
    pub(crate) fn is_invalid(&self) -> bool {
        self.flags & SLOT_INVALID != 0
    }

    /// The user address backing `gfn`, which the slot must contain.
    pub(crate) fn gfn_to_hva(&self, gfn: Gfn) -> Hva {
        debug_assert!(self.contains(gfn));
        self.userspace_addr.add_pages(gfn - self.base_gfn)
    }

    /// The largest level up to `max` at which `gfn` may be mapped as far as
    /// the slot is concerned (KVM's `lpage_info` / `kvm_is_gfn_alias` idea):
    /// the guest and user addresses are aligned the same way at that level,
    /// so one huge host page backs one huge guest page, and the whole huge
    /// range lies inside the slot.  The primary MMU must also map the host
    /// range at least that large: the caller takes the minimum.
    ///
    /// A slot that logs dirty pages maps 4K only, as KVM's
    /// `kvm_mmu_max_mapping_level()` does for `kvm_slot_dirty_track_enabled()`:
    /// a write to a huge leaf must not dirty 512 pages at once, and the
    /// write fault of a write-protected huge leaf splits it.
    pub(crate) fn max_level(&self, gfn: Gfn, max: Level) -> Level {
        debug_assert!(self.contains(gfn));
        let hva = self.gfn_to_hva(gfn);
        let mut best = Level::L4K;
        if self.logs_dirty() {
            return best;
        }
        for level in Level::MAPPABLE {
            if level > max {
                break;
            }
            let first = gfn.align_down(level);
            if gfn.offset_in(level) != hva.page_offset_in(level)
                || first < self.base_gfn
                || first.saturating_add(level.pages()) > self.end_gfn()
            {
                break;
            }
            best = level;
        }
        best
    }

    /// The gfns `[start, end)` whose backing pages intersect the user range
    /// `[hva_start, hva_end)`, if any. `hva_end` is exclusive, as the
    /// notifier's is (KVM's `kvm_handle_hva_range()`).
    pub(crate) fn hva_range_to_gfns(&self, hva_start: Hva, hva_end: Hva) -> Option<(Gfn, Gfn)> {
        let slot_end = self.userspace_addr.add_pages(self.npages);
        let start = hva_start.max(self.userspace_addr);
        let end = hva_end.min(slot_end);
        if start >= end {
            return None;
        }
        let first = self.base_gfn + start.pages_from(self.userspace_addr);
        // Round the end up: a partial page at the end still maps that gfn.
        let last = self.base_gfn + end.pages_from_up(self.userspace_addr);
        Some((first, last))
    }
}

/// Limits a slot must respect, fixed per space.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotLimits {
    /// Guest-physical address width of the page-table format.
    pub(crate) gpa_bits: u32,
    /// First address above user space (`TASK_SIZE`).
    pub(crate) user_end: u64,
}

/// A `SECMMU_SET_MEMSLOT` request, as userspace gave it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotRequest {
    pub(crate) id: u32,
    pub(crate) flags: u32,
    pub(crate) guest_phys_addr: u64,
    pub(crate) memory_size: u64,
    pub(crate) userspace_addr: u64,
}

/// A memslot in a set, with what the page-table format keeps for it (x86: its rmaps, KVM's
/// `slot->arch.rmap`; stage-2: nothing).  The format's data is shared by pointer between the
/// sets that hold the slot, never copied: the rmap heads in it change under the MMU lock and
/// under lockless agers while several sets reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotEntry<D> {
    /// The slot.  Slots never change in place: marking one invalid makes a new entry.
    pub(crate) slot: Slot,
    /// The format's data for the slot.
    pub(crate) data: D,
}

impl<D> core::ops::Deref for SlotEntry<D> {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        &self.slot
    }
}

/// The memslot set current under the MMU lock, for a zap that yields the lock and so must find
/// its slot again after each yield, in whatever set is current then (KVM's
/// `kvm_unmap_gfn_range()` gets its slot from the memslots under `mmu_lock`; a slot deleted
/// meanwhile was zapped whole by its deletion).
pub(crate) trait CurrentSlots<D> {
    /// Calls `f` with slot `id` of the current set, `None` if it has no slot `id`.  With the MMU
    /// lock held.
    fn with_slot<R>(&mut self, id: u32, f: impl FnOnce(Option<&SlotEntry<D>>) -> R) -> R;
}

/// An immutable set of memslots, sorted by `base_gfn` (KVM's `struct kvm_memslots`).
///
/// A set never changes once made: a change makes a new set from the current one
/// ([`Memslots::inserted()`], [`Memslots::invalidated()`], [`Memslots::removed()`]), which
/// allocates and so is done before the MMU lock is taken; the owner then publishes it with the
/// MMU lock held for write, and frees the old one after an RCU grace period (KVM's
/// `kvm_swap_active_memslots()` and `synchronize_srcu_expedited()`).  So holders of the MMU lock
/// see one set for as long as they hold it, and lockless readers one set for as long as their
/// RCU read side lasts.  Lookups are binary searches.
pub(crate) struct Memslots<D> {
    slots: PVec<SlotEntry<D>>,
    /// Bumped on every change; faults recheck it under the MMU lock.
    generation: u64,
}

impl<D: Clone> Memslots<D> {
    /// An empty set.  Allocates nothing.
    pub(crate) fn new() -> Self {
        Self {
            slots: PVec::new(),
            generation: 0,
        }
    }

    /// The slots, sorted by guest-physical address.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SlotEntry<D>> {
        self.slots.iter()
    }

    /// Changes count: a fault that resolved its slot under another
    /// generation retries.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The slot with id `id`.
    pub(crate) fn by_id(&self, id: u32) -> Option<&SlotEntry<D>> {
        self.iter().find(|s| s.id == id)
    }

    /// The slot a fault on `gfn` may map through: none for a slot being
    /// deleted.
    pub(crate) fn lookup(&self, gfn: Gfn) -> Option<&SlotEntry<D>> {
        self.lookup_any(gfn).filter(|s| !s.is_invalid())
    }

    /// The slot mapping `gfn`, even one being deleted.
    pub(crate) fn lookup_any(&self, gfn: Gfn) -> Option<&SlotEntry<D>> {
        let idx = self.slots.partition_point(|s| s.base_gfn <= gfn);
        let slot = self.slots.get(idx.checked_sub(1)?)?;
        slot.contains(gfn).then_some(slot)
    }

    /// The slots that back some of the user range `[hva_start, hva_end)` (exclusive end, as
    /// the notifier's), each with the gfns `[first, last)` whose pages intersect it, in
    /// guest-physical order; aliases of one host page in several slots come once per slot
    /// (KVM's `kvm_handle_hva_range()`).  Slots being deleted are included: their mappings
    /// must stay covered by invalidations and aging until their zap is done.
    pub(crate) fn gfn_ranges(
        &self,
        hva_start: Hva,
        hva_end: Hva,
    ) -> impl Iterator<Item = (&SlotEntry<D>, Gfn, Gfn)> {
        self.iter().filter_map(move |s| {
            let (first, last) = s.hva_range_to_gfns(hva_start, hva_end)?;
            Some((s, first, last))
        })
    }

    /// The first of [`Memslots::gfn_ranges()`] in a slot that starts at gfn `from` or above:
    /// for a caller that drops the MMU lock between slots, and so must look its next slot up
    /// again, in whatever set is current then.
    pub(crate) fn next_gfn_range(
        &self,
        hva_start: Hva,
        hva_end: Hva,
        from: Gfn,
    ) -> Option<(&SlotEntry<D>, Gfn, Gfn)> {
        self.gfn_ranges(hva_start, hva_end)
            .find(|(s, _, _)| s.base_gfn >= from)
    }

    /// A new set of the first `len` of `slots`, one generation on from this one.  Allocates,
    /// and may sleep.
    fn derive<'a>(
        &'a self,
        len: usize,
        slots: impl Iterator<Item = SlotEntry<D>> + 'a,
    ) -> Result<Self, SlotError> {
        Ok(Self {
            slots: prim::try_vec_collect(len, slots).map_err(|_| SlotError::NoMemory)?,
            generation: self.generation + 1,
        })
    }

    /// First step of deleting slot `id` (KVM's `kvm_invalidate_memslot()`):
    /// a new set where it is marked [`SLOT_INVALID`], so that no fault maps it any more (the
    /// generation moves, so faults that looked it up before retry), while
    /// it stays in the set for invalidations and aging until
    /// [`Self::removed()`] takes it out once its mappings are gone.  Returns the new set and
    /// the slot as marked.  Allocates, and may sleep.
    pub(crate) fn invalidated(&self, id: u32) -> Result<(Self, Slot), SlotError> {
        let mut slot = self
            .iter()
            .find(|s| s.id == id && !s.is_invalid())
            .ok_or(SlotError::NotFound)?
            .slot;
        slot.flags |= SLOT_INVALID;
        let entries = self.iter().map(|s| {
            let mut s = s.clone();
            if s.id == id {
                s.slot = slot;
            }
            s
        });
        Ok((self.derive(self.slots.len(), entries)?, slot))
    }

    /// Checks that `slot` can be added: its id is free and its range
    /// overlaps no other slot.
    pub(crate) fn check_insert(&self, slot: &Slot) -> Result<(), SlotError> {
        if self.by_id(slot.id).is_some() {
            return Err(SlotError::Busy);
        }
        if self.slots.len() >= MAX_SLOTS {
            // Unreachable while ids are below MAX_SLOTS and unique.
            return Err(SlotError::Invalid);
        }
        let overlaps = self
            .iter()
            .any(|s| s.base_gfn < slot.end_gfn() && slot.base_gfn < s.end_gfn());
        if overlaps {
            return Err(SlotError::Overlap);
        }
        Ok(())
    }

    /// A new set: this one with `slot` added (it must pass [`Self::check_insert()`]), with the
    /// format's `data` for it.  Allocates, and may sleep.
    pub(crate) fn inserted(&self, slot: Slot, data: D) -> Result<Self, SlotError> {
        self.check_insert(&slot)?;
        let idx = self.slots.partition_point(|s| s.base_gfn < slot.base_gfn);
        let new = SlotEntry { slot, data };
        let entries = self.slots[..idx]
            .iter()
            .cloned()
            .chain(core::iter::once(new))
            .chain(self.slots[idx..].iter().cloned());
        self.derive(self.slots.len() + 1, entries)
    }

    /// Checks a `SECMMU_SET_MEMSLOT` of `req` for the id of `current`, a slot
    /// that exists (KVM's `kvm_set_memory_region()` sorting a change into
    /// `KVM_MR_FLAGS_ONLY`): `Ok(true)` if only [`MEM_LOG_DIRTY_PAGES`]
    /// changes, `Ok(false)` if nothing does; [`SlotError::Invalid`] if
    /// [`MEM_READONLY`] would change (as KVM refuses it), and
    /// [`SlotError::Busy`] if the range or the user address would (delete
    /// the slot first: slots do not move).
    pub(crate) fn flags_only_change(current: &Slot, req: &Slot) -> Result<bool, SlotError> {
        if req.base_gfn != current.base_gfn
            || req.npages != current.npages
            || req.userspace_addr != current.userspace_addr
        {
            return Err(SlotError::Busy);
        }
        if (req.flags ^ current.flags) & MEM_READONLY != 0 {
            return Err(SlotError::Invalid);
        }
        Ok(req.flags != current.flags)
    }

    /// A new set: this one with slot `id` given `flags`, and the format's data
    /// `f` makes from its current data (a flags-only change: the slot's range
    /// and its rmaps stay).  Allocates, and may sleep.
    pub(crate) fn flags_updated(
        &self,
        id: u32,
        flags: u32,
        f: impl FnOnce(&D) -> D,
    ) -> Result<Self, SlotError> {
        let mut f = Some(f);
        if self.iter().all(|s| s.id != id || s.is_invalid()) {
            return Err(SlotError::NotFound);
        }
        let entries = self.iter().map(|s| {
            let mut s = s.clone();
            if s.id == id {
                s.slot.flags = flags;
                if let Some(f) = f.take() {
                    s.data = f(&s.data);
                }
            }
            s
        });
        self.derive(self.slots.len(), entries)
    }

    /// A new set: this one without the slot with id `id`, which is returned too.  Allocates,
    /// and may sleep.
    pub(crate) fn removed(&self, id: u32) -> Result<(Self, Slot), SlotError> {
        let slot = self.by_id(id).ok_or(SlotError::NotFound)?.slot;
        let entries = self.iter().filter(|s| s.id != id).cloned();
        Ok((self.derive(self.slots.len() - 1, entries)?, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SlotLimits = SlotLimits {
        gpa_bits: 48,
        user_end: 1 << 47,
    };

    fn req(id: u32, gpa: u64, size: u64, hva: u64) -> SlotRequest {
        SlotRequest {
            id,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        }
    }

    type Set = Memslots<()>;

    fn add(m: &mut Set, r: SlotRequest) -> Result<(), SlotError> {
        *m = m.inserted(Slot::validate(&r, &LIMITS)?, ())?;
        Ok(())
    }

    fn remove(m: &mut Set, id: u32) -> Result<Slot, SlotError> {
        let (new, slot) = m.removed(id)?;
        *m = new;
        Ok(slot)
    }

    fn invalidate(m: &mut Set, id: u32) -> Result<Slot, SlotError> {
        let (new, slot) = m.invalidated(id)?;
        *m = new;
        Ok(slot)
    }

    #[test]
    fn max_level_needs_same_alignment_and_whole_range() {
        // 4 MiB at gpa 1 GiB, user 2 MiB-aligned: 2M, not 1G (not inside).
        let s = Slot::validate(&req(0, 1 << 30, 4 << 20, 0x4020_0000), &LIMITS).unwrap();
        let g = s.base_gfn;
        assert_eq!(s.max_level(g, Level::L1G), Level::L2M);
        assert_eq!(s.max_level(g + 0x3ff, Level::L1G), Level::L2M);
        assert_eq!(s.max_level(g, Level::L4K), Level::L4K);
        // User address off by 4K: 4K only.
        let s = Slot::validate(&req(0, 1 << 30, 4 << 20, 0x4020_1000), &LIMITS).unwrap();
        assert_eq!(s.max_level(s.base_gfn + 5, Level::L1G), Level::L4K);
        // Slot starting inside a 2M block: its first block is not whole.
        let s = Slot::validate(&req(0, (1 << 30) + 4096, 4 << 20, 0x4020_1000), &LIMITS);
        let s = s.unwrap();
        assert_eq!(s.max_level(s.base_gfn, Level::L1G), Level::L4K);
        assert_eq!(s.max_level(s.base_gfn + 511, Level::L1G), Level::L2M);
        // A whole aligned 1G.
        let s = Slot::validate(&req(0, 1 << 30, 1 << 30, 0x4000_0000), &LIMITS).unwrap();
        assert_eq!(s.max_level(s.base_gfn + 77, Level::L1G), Level::L1G);
    }

    #[test]
    fn validation_rejects_malformed_requests() {
        let bad = [
            req(MAX_SLOTS as u32, 0, 4096, 0x10000),
            req(0, 1, 4096, 0x10000),
            req(0, 0, 4095, 0x10000),
            req(0, 0, 4096, 0x10001),
            req(0, 0, 0, 0x10000),
            req(0, u64::MAX & !4095, 8192, 0x10000),
            req(0, 1 << 48, 4096, 0x10000),
            req(0, 0, 4096, (1 << 47) - 4096 + 4096),
            req(0, 0, 4096, u64::MAX & !4095),
            req(0, 0, 4096, 0),
        ];
        for r in bad {
            assert_eq!(
                Slot::validate(&r, &LIMITS),
                Err(SlotError::Invalid),
                "{r:?}"
            );
        }
        let mut flags = req(0, 0, 4096, 0x10000);
        flags.flags = 1 << 2;
        assert_eq!(Slot::validate(&flags, &LIMITS), Err(SlotError::Invalid));
        assert!(Slot::validate(&req(0, (1 << 48) - 4096, 4096, 0x10000), &LIMITS).is_ok());
    }

    #[test]
    fn overlap_busy_and_lookup() {
        let mut m = Set::new();
        add(&mut m, req(3, 0x100000, 0x10000, 0x7000_0000)).unwrap();
        add(&mut m, req(1, 0, 0x10000, 0x7000_0000)).unwrap();
        assert_eq!(
            add(&mut m, req(2, 0x10f000, 0x2000, 0x1000)),
            Err(SlotError::Overlap)
        );
        assert_eq!(
            add(&mut m, req(2, 0xf000, 0x2000, 0x1000)),
            Err(SlotError::Overlap)
        );
        assert_eq!(
            add(&mut m, req(1, 0x200000, 0x1000, 0x1000)),
            Err(SlotError::Busy)
        );
        assert_eq!(m.lookup(Gfn::new(0x100)).map(|s| s.id), Some(3));
        assert_eq!(m.lookup(Gfn::new(0x10f)).map(|s| s.id), Some(3));
        assert_eq!(m.lookup(Gfn::new(0x110)), None);
        assert_eq!(m.lookup(Gfn::new(0xf)).map(|s| s.id), Some(1));
        assert_eq!(m.lookup(Gfn::new(0x10)), None);
        let g = m.generation();
        assert_eq!(remove(&mut m, 3).map(|s| s.id), Ok(3));
        assert!(m.generation() > g);
        assert_eq!(m.lookup(Gfn::new(0x100)), None);
        assert_eq!(remove(&mut m, 3), Err(SlotError::NotFound));
    }

    /// Only MEM_LOG_DIRTY_PAGES may change on an existing slot, and a slot that logs maps 4K.
    #[test]
    fn flags_only_changes_and_logging_slots() {
        let mut m = Set::new();
        add(&mut m, req(3, 1 << 30, 1 << 30, 0x40_0000_0000)).unwrap();
        let cur = m.by_id(3).unwrap().slot;
        let mut r = cur;
        assert_eq!(Set::flags_only_change(&cur, &r), Ok(false));
        r.flags = MEM_LOG_DIRTY_PAGES;
        assert_eq!(Set::flags_only_change(&cur, &r), Ok(true));
        r.flags = MEM_READONLY;
        assert_eq!(Set::flags_only_change(&cur, &r), Err(SlotError::Invalid));
        for moved in [
            Slot {
                base_gfn: cur.base_gfn + 1,
                ..cur
            },
            Slot { npages: 1, ..cur },
            Slot {
                userspace_addr: cur.userspace_addr.add_pages(1),
                ..cur
            },
        ] {
            assert_eq!(Set::flags_only_change(&cur, &moved), Err(SlotError::Busy));
        }
        let gfn = cur.base_gfn + 0x1234;
        assert_eq!(cur.max_level(gfn, Level::L1G), Level::L1G);
        let gen = m.generation();
        let logging = m.flags_updated(3, MEM_LOG_DIRTY_PAGES, |d| *d).unwrap();
        assert!(logging.generation() > gen);
        let s = logging.by_id(3).unwrap();
        assert!(s.logs_dirty() && s.base_gfn == cur.base_gfn);
        assert_eq!(s.max_level(gfn, Level::L1G), Level::L4K);
        assert_eq!(
            m.flags_updated(4, 0, |d| *d).err(),
            Some(SlotError::NotFound)
        );
    }

    #[test]
    fn invalid_slot_is_gone_for_faults_only() {
        let mut m = Set::new();
        add(&mut m, req(3, 0x10000, 0x4000, 0x7000_0000)).unwrap();
        let g = m.generation();
        let s = invalidate(&mut m, 3).unwrap();
        assert!(s.is_invalid() && m.generation() > g);
        assert_eq!(m.lookup(Gfn::new(0x10)), None);
        assert_eq!(m.iter().count(), 1);
        assert_eq!(invalidate(&mut m, 3), Err(SlotError::NotFound));
        // Still occupies its id and range until removed.
        assert_eq!(m.check_insert(&s), Err(SlotError::Busy));
        remove(&mut m, 3).unwrap();
        assert_eq!(m.iter().count(), 0);
    }

    #[test]
    fn hva_to_gfn_ranges_round_out() {
        let s = Slot::validate(&req(0, 0x10000, 0x4000, 0x7000_0000), &LIMITS).unwrap();
        assert_eq!(
            s.hva_range_to_gfns(Hva::new(0x7000_0000), Hva::new(0x7000_4000)),
            Some((Gfn::new(0x10), Gfn::new(0x14)))
        );
        assert_eq!(
            s.hva_range_to_gfns(Hva::new(0x6fff_0000), Hva::new(0x7000_1001)),
            Some((Gfn::new(0x10), Gfn::new(0x12)))
        );
        assert_eq!(
            s.hva_range_to_gfns(Hva::new(0x7000_3fff), Hva::new(0x7001_0000)),
            Some((Gfn::new(0x13), Gfn::new(0x14)))
        );
        assert_eq!(
            s.hva_range_to_gfns(Hva::new(0x7000_4000), Hva::new(0x7001_0000)),
            None
        );
        assert_eq!(s.gfn_to_hva(Gfn::new(0x12)), Hva::new(0x7000_2000));
    }

    #[test]
    fn hva_ranges_split_across_slots() {
        let mut m = Set::new();
        // Three slots back consecutive user pages, in another gfn order: 2 [0x7000_0000, +16K),
        // 0 [+16K, +24K), 1 [+24K, +40K).
        add(&mut m, req(2, 0x40_0000, 0x4000, 0x7000_0000)).unwrap();
        add(&mut m, req(0, 0x1000, 0x2000, 0x7000_4000)).unwrap();
        add(&mut m, req(1, 0x20_0000, 0x4000, 0x7000_6000)).unwrap();
        let ranges = |s: u64, e: u64| {
            m.gfn_ranges(Hva::new(s), Hva::new(e))
                .map(|(slot, first, last)| (slot.id, first.raw(), last.raw()))
                .collect::<Vec<_>>()
        };
        // Guest-physical order, each clipped to the part of the range it backs.
        assert_eq!(
            ranges(0x7000_3000, 0x7000_7001),
            [(0, 0x1, 0x3), (1, 0x200, 0x202), (2, 0x403, 0x404)]
        );
        assert_eq!(ranges(0x7000_4000, 0x7000_6000), [(0, 0x1, 0x3)]);
        assert_eq!(ranges(0x6000_0000, 0x7000_0000), []);
        assert_eq!(ranges(0x7000_a000, 0x8000_0000), []);
        // Everything: each slot whole (how release() zaps).
        assert_eq!(
            ranges(0, u64::MAX),
            [(0, 0x1, 0x3), (1, 0x200, 0x204), (2, 0x400, 0x404)]
        );
        // Resuming after a slot, as a zap that dropped the lock does.
        let next = |from| {
            m.next_gfn_range(Hva::new(0x7000_0000), Hva::new(0x7001_0000), Gfn::new(from))
                .map(|(s, f, l)| (s.id, f.raw(), l.raw()))
        };
        assert_eq!(next(0), Some((0, 0x1, 0x3)));
        assert_eq!(next(0x3), Some((1, 0x200, 0x204)));
        assert_eq!(next(0x204), Some((2, 0x400, 0x404)));
        assert_eq!(next(0x404), None);
    }

    #[test]
    fn aliasing_slots_each_get_their_gfns() {
        let mut m = Set::new();
        // Slots 4 and 5 back the same user pages; 5 only half of them.
        add(&mut m, req(4, 0x10_0000, 0x4000, 0x7000_0000)).unwrap();
        add(&mut m, req(5, 0x2000, 0x2000, 0x7000_2000)).unwrap();
        let got: Vec<_> = m
            .gfn_ranges(Hva::new(0x7000_2000), Hva::new(0x7000_3000))
            .map(|(s, f, l)| (s.id, f.raw(), l.raw()))
            .collect();
        assert_eq!(got, [(5, 0x2, 0x3), (4, 0x102, 0x103)]);
        // A slot being deleted still gets its range (invalidations must zap it).
        invalidate(&mut m, 5).unwrap();
        assert_eq!(
            m.gfn_ranges(Hva::new(0x7000_2000), Hva::new(0x7000_3000))
                .count(),
            2
        );
        remove(&mut m, 5).unwrap();
        assert_eq!(
            m.gfn_ranges(Hva::new(0x7000_2000), Hva::new(0x7000_3000))
                .count(),
            1
        );
    }

    #[test]
    fn sets_are_immutable_and_share_the_format_data() {
        use std::sync::Arc;
        let data = Arc::new(7u32);
        let a: Memslots<Arc<u32>> = Memslots::new();
        let r = req(1, 0x1000, 0x1000, 0x7000_0000);
        let b = a
            .inserted(Slot::validate(&r, &LIMITS).unwrap(), data.clone())
            .unwrap();
        // `a` is untouched; `b` holds the data by pointer.
        assert_eq!(a.iter().count(), 0);
        assert_eq!(b.generation(), a.generation() + 1);
        assert!(Arc::ptr_eq(&b.by_id(1).unwrap().data, &data));
        let (c, slot) = b.invalidated(1).unwrap();
        assert!(slot.is_invalid() && !b.by_id(1).unwrap().is_invalid());
        // The invalid entry shares the data with the valid one: never a copy.
        assert!(Arc::ptr_eq(&c.by_id(1).unwrap().data, &data));
        assert_eq!(Arc::strong_count(&data), 3);
        let (d, _) = c.removed(1).unwrap();
        assert_eq!(d.iter().count(), 0);
        drop((b, c));
        assert_eq!(Arc::strong_count(&data), 1);
        assert_eq!(d.generation(), 3);
    }

    #[cfg(not(loom))]
    #[test]
    fn publish_and_retire_through_the_rcu_pointer() {
        use crate::mmu::prim::{NoPreempt, RcuPtr};
        use std::sync::Arc;
        let data = Arc::new(0u8);
        let ptr = RcuPtr::new(Box::new(Set::new()));
        let rcu = NoPreempt::new();
        let first = ptr.read(&rcu);
        assert_eq!(first.iter().count(), 0);
        let mut next: Memslots<Arc<u8>> = Memslots::new();
        let r = req(2, 0x1000, 0x1000, 0x7000_0000);
        next = next
            .inserted(Slot::validate(&r, &LIMITS).unwrap(), data.clone())
            .unwrap();
        let ptr2 = RcuPtr::new(Box::new(Memslots::new()));
        let old = ptr2.replace(Box::new(next));
        // The reader of the old set still sees it, whole, until it is freed.
        assert_eq!(old.get().iter().count(), 0);
        assert_eq!(ptr2.read(&rcu).by_id(2).map(|s| s.id), Some(2));
        // SAFETY: No reader of `old` is left.
        unsafe { old.free_after_grace_period() };
        assert_eq!(Arc::strong_count(&data), 2);
        drop(ptr2);
        assert_eq!(Arc::strong_count(&data), 1);
        // SAFETY: `first` is not used any more.
        unsafe { ptr.replace(Box::new(Set::new())).free_after_grace_period() };
    }

    /// A reader racing a replacement sees one set or the other, whole, and the old one is freed
    /// only after the reader is done with it (joining it stands for the grace period).
    #[cfg(loom)]
    #[test]
    fn loom_reader_sees_one_whole_set() {
        use crate::mmu::prim::{NoPreempt, RcuPtr};
        loom::model(|| {
            let ptr = loom::sync::Arc::new(RcuPtr::new(Box::new(Set::new())));
            let reader = {
                let ptr = ptr.clone();
                loom::thread::spawn(move || {
                    let rcu = NoPreempt::new();
                    let set = ptr.read(&rcu);
                    match set.by_id(1) {
                        Some(s) => assert_eq!((s.base_gfn.raw(), set.generation()), (1, 1)),
                        None => assert_eq!((set.iter().count(), set.generation()), (0, 0)),
                    }
                })
            };
            let r = req(1, 0x1000, 0x1000, 0x7000_0000);
            let new = Set::new()
                .inserted(Slot::validate(&r, &LIMITS).unwrap(), ())
                .unwrap();
            let old = ptr.replace(Box::new(new));
            reader.join().unwrap();
            // SAFETY: The only reader was joined: the grace period is over.
            unsafe { old.free_after_grace_period() };
        });
    }
}
