// SPDX-License-Identifier: GPL-2.0

//! Memslots: guest-physical ranges backed by the creator's user memory.
//!
//! A slot maps `npages` guest frames starting at `base_gfn` onto user
//! virtual memory starting at `userspace_addr`. Slots never overlap in
//! guest-physical space; they may overlap (alias) in user space, so one host
//! page can be mapped at several gfns.
//!
//! The set is a small array sorted by `base_gfn`; lookups are binary
//! searches. Changes happen under the MMU lock held for write, so a holder
//! of the MMU lock (either side) sees a stable set.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::pgtable::MapLevel;

/// Guest page size: 4 KiB.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// Guest page size in bytes.
pub(crate) const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// How many slots a space can have (`SECMMU_MAX_MEMSLOTS`).
pub(crate) const MAX_SLOTS: usize = 64;
/// `SECMMU_MEM_READONLY`: guest writes to the slot fault to userspace.
pub(crate) const MEM_READONLY: u32 = 1 << 0;
/// Every flag `SECMMU_SET_MEMSLOT` knows.
pub(crate) const MEM_FLAGS: u32 = MEM_READONLY;
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
}

/// One memslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) id: u32,
    pub(crate) flags: u32,
    pub(crate) base_gfn: u64,
    pub(crate) npages: u64,
    pub(crate) userspace_addr: u64,
}

impl Slot {
    /// One past the last gfn of the slot.
    pub(crate) fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    /// Does the slot map `gfn`?
    pub(crate) fn contains(&self, gfn: u64) -> bool {
        gfn >= self.base_gfn && gfn < self.end_gfn()
    }

    /// Whether guest writes must fault to userspace.
    pub(crate) fn readonly(&self) -> bool {
        self.flags & MEM_READONLY != 0
    }

    /// Whether the slot is being deleted ([`SLOT_INVALID`]).
    pub(crate) fn is_invalid(&self) -> bool {
        self.flags & SLOT_INVALID != 0
    }

    /// The user address backing `gfn`, which the slot must contain.
    pub(crate) fn gfn_to_hva(&self, gfn: u64) -> u64 {
        debug_assert!(self.contains(gfn));
        self.userspace_addr + ((gfn - self.base_gfn) << PAGE_SHIFT)
    }

    /// The largest level up to `max` at which `gfn` may be mapped as far as
    /// the slot is concerned (KVM's `lpage_info` / `kvm_is_gfn_alias` idea):
    /// the guest and user addresses are aligned the same way at that level,
    /// so one huge host page backs one huge guest page, and the whole huge
    /// range lies inside the slot.  The primary MMU must also map the host
    /// range at least that large: the caller takes the minimum.
    pub(crate) fn max_level(&self, gfn: u64, max: MapLevel) -> MapLevel {
        debug_assert!(self.contains(gfn));
        let hfn = self.gfn_to_hva(gfn) >> PAGE_SHIFT;
        let mut best = MapLevel::L4K;
        for level in MapLevel::ALL {
            if level > max {
                break;
            }
            let mask = level.pages() - 1;
            let first = level.align_down(gfn);
            if (gfn ^ hfn) & mask != 0
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
    pub(crate) fn hva_range_to_gfns(&self, hva_start: u64, hva_end: u64) -> Option<(u64, u64)> {
        let slot_end = self.userspace_addr + (self.npages << PAGE_SHIFT);
        let start = hva_start.max(self.userspace_addr);
        let end = hva_end.min(slot_end);
        if start >= end {
            return None;
        }
        let first = self.base_gfn + ((start - self.userspace_addr) >> PAGE_SHIFT);
        // Round the end up: a partial page at the end still maps that gfn.
        let last = self.base_gfn + ((end - self.userspace_addr).div_ceil(PAGE_SIZE));
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

/// The slots of a space, sorted by `base_gfn`.
pub(crate) struct Memslots {
    slots: [Slot; MAX_SLOTS],
    len: usize,
    /// Bumped on every change; faults recheck it under the MMU lock.
    generation: u64,
}

impl Memslots {
    /// An empty set.
    pub(crate) const fn new() -> Self {
        const EMPTY: Slot = Slot {
            id: 0,
            flags: 0,
            base_gfn: 0,
            npages: 0,
            userspace_addr: 0,
        };
        Self {
            slots: [EMPTY; MAX_SLOTS],
            len: 0,
            generation: 0,
        }
    }

    /// The slots, sorted by guest-physical address.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots[..self.len].iter()
    }

    /// Changes count: a fault that resolved its slot under another
    /// generation retries.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The slot with id `id`.
    pub(crate) fn by_id(&self, id: u32) -> Option<&Slot> {
        self.iter().find(|s| s.id == id)
    }

    /// The slot a fault on `gfn` may map through: none for a slot being
    /// deleted.
    pub(crate) fn lookup(&self, gfn: u64) -> Option<&Slot> {
        self.lookup_any(gfn).filter(|s| !s.is_invalid())
    }

    /// The slot mapping `gfn`, even one being deleted.
    pub(crate) fn lookup_any(&self, gfn: u64) -> Option<&Slot> {
        let slots = &self.slots[..self.len];
        let idx = slots.partition_point(|s| s.base_gfn <= gfn);
        let slot = slots.get(idx.checked_sub(1)?)?;
        slot.contains(gfn).then_some(slot)
    }

    /// First step of deleting slot `id` (KVM's `kvm_invalidate_memslot()`):
    /// marks it [`SLOT_INVALID`], so that no fault maps it any more (the
    /// generation moves, so faults that looked it up before retry), while
    /// it stays in the set for invalidations and aging until
    /// [`Self::remove`] takes it out once its mappings are gone.
    pub(crate) fn invalidate(&mut self, id: u32) -> Result<Slot, SlotError> {
        let slot = self.slots[..self.len]
            .iter_mut()
            .find(|s| s.id == id && !s.is_invalid())
            .ok_or(SlotError::NotFound)?;
        slot.flags |= SLOT_INVALID;
        let slot = *slot;
        self.generation += 1;
        Ok(slot)
    }

    /// Checks a request to create a slot, without changing anything.
    pub(crate) fn validate(req: &SlotRequest, limits: &SlotLimits) -> Result<Slot, SlotError> {
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
        Ok(Slot {
            id: req.id,
            flags: req.flags,
            base_gfn: req.guest_phys_addr >> PAGE_SHIFT,
            npages: req.memory_size >> PAGE_SHIFT,
            userspace_addr: req.userspace_addr,
        })
    }

    /// Checks that `slot` can be added: its id is free and its range
    /// overlaps no other slot.
    pub(crate) fn check_insert(&self, slot: &Slot) -> Result<(), SlotError> {
        if self.by_id(slot.id).is_some() {
            return Err(SlotError::Busy);
        }
        if self.len == MAX_SLOTS {
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

    /// Adds a slot that passed [`Self::check_insert`].
    pub(crate) fn insert(&mut self, slot: Slot) -> Result<(), SlotError> {
        self.check_insert(&slot)?;
        let idx = self.slots[..self.len].partition_point(|s| s.base_gfn < slot.base_gfn);
        self.slots.copy_within(idx..self.len, idx + 1);
        self.slots[idx] = slot;
        self.len += 1;
        self.generation += 1;
        Ok(())
    }

    /// Removes the slot with id `id` and returns it.
    pub(crate) fn remove(&mut self, id: u32) -> Result<Slot, SlotError> {
        let idx = self.slots[..self.len]
            .iter()
            .position(|s| s.id == id)
            .ok_or(SlotError::NotFound)?;
        let slot = self.slots[idx];
        self.slots.copy_within(idx + 1..self.len, idx);
        self.len -= 1;
        self.generation += 1;
        Ok(slot)
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

    fn add(m: &mut Memslots, r: SlotRequest) -> Result<(), SlotError> {
        m.insert(Memslots::validate(&r, &LIMITS)?)
    }

    #[test]
    fn max_level_needs_same_alignment_and_whole_range() {
        // 4 MiB at gpa 1 GiB, user 2 MiB-aligned: 2M, not 1G (not inside).
        let s = Memslots::validate(&req(0, 1 << 30, 4 << 20, 0x4020_0000), &LIMITS).unwrap();
        let g = s.base_gfn;
        assert_eq!(s.max_level(g, MapLevel::L1G), MapLevel::L2M);
        assert_eq!(s.max_level(g + 0x3ff, MapLevel::L1G), MapLevel::L2M);
        assert_eq!(s.max_level(g, MapLevel::L4K), MapLevel::L4K);
        // User address off by 4K: 4K only.
        let s = Memslots::validate(&req(0, 1 << 30, 4 << 20, 0x4020_1000), &LIMITS).unwrap();
        assert_eq!(s.max_level(s.base_gfn + 5, MapLevel::L1G), MapLevel::L4K);
        // Slot starting inside a 2M block: its first block is not whole.
        let s = Memslots::validate(&req(0, (1 << 30) + 4096, 4 << 20, 0x4020_1000), &LIMITS);
        let s = s.unwrap();
        assert_eq!(s.max_level(s.base_gfn, MapLevel::L1G), MapLevel::L4K);
        assert_eq!(s.max_level(s.base_gfn + 511, MapLevel::L1G), MapLevel::L2M);
        // A whole aligned 1G.
        let s = Memslots::validate(&req(0, 1 << 30, 1 << 30, 0x4000_0000), &LIMITS).unwrap();
        assert_eq!(s.max_level(s.base_gfn + 77, MapLevel::L1G), MapLevel::L1G);
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
                Memslots::validate(&r, &LIMITS),
                Err(SlotError::Invalid),
                "{r:?}"
            );
        }
        let mut flags = req(0, 0, 4096, 0x10000);
        flags.flags = 2;
        assert_eq!(Memslots::validate(&flags, &LIMITS), Err(SlotError::Invalid));
        assert!(Memslots::validate(&req(0, (1 << 48) - 4096, 4096, 0x10000), &LIMITS).is_ok());
    }

    #[test]
    fn overlap_busy_and_lookup() {
        let mut m = Memslots::new();
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
        assert_eq!(m.lookup(0x100).map(|s| s.id), Some(3));
        assert_eq!(m.lookup(0x10f).map(|s| s.id), Some(3));
        assert_eq!(m.lookup(0x110), None);
        assert_eq!(m.lookup(0xf).map(|s| s.id), Some(1));
        assert_eq!(m.lookup(0x10), None);
        let g = m.generation();
        assert_eq!(m.remove(3).map(|s| s.id), Ok(3));
        assert!(m.generation() > g);
        assert_eq!(m.lookup(0x100), None);
        assert_eq!(m.remove(3), Err(SlotError::NotFound));
    }

    #[test]
    fn invalid_slot_is_gone_for_faults_only() {
        let mut m = Memslots::new();
        add(&mut m, req(3, 0x10000, 0x4000, 0x7000_0000)).unwrap();
        let g = m.generation();
        let s = m.invalidate(3).unwrap();
        assert!(s.is_invalid() && m.generation() > g);
        assert_eq!(m.lookup(0x10), None);
        assert_eq!(m.iter().count(), 1);
        assert_eq!(m.invalidate(3), Err(SlotError::NotFound));
        // Still occupies its id and range until removed.
        assert_eq!(m.check_insert(&s), Err(SlotError::Busy));
        m.remove(3).unwrap();
        assert_eq!(m.iter().count(), 0);
    }

    #[test]
    fn hva_to_gfn_ranges_round_out() {
        let s = Memslots::validate(&req(0, 0x10000, 0x4000, 0x7000_0000), &LIMITS).unwrap();
        assert_eq!(
            s.hva_range_to_gfns(0x7000_0000, 0x7000_4000),
            Some((0x10, 0x14))
        );
        assert_eq!(
            s.hva_range_to_gfns(0x6fff_0000, 0x7000_1001),
            Some((0x10, 0x12))
        );
        assert_eq!(
            s.hva_range_to_gfns(0x7000_3fff, 0x7001_0000),
            Some((0x13, 0x14))
        );
        assert_eq!(s.hva_range_to_gfns(0x7000_4000, 0x7001_0000), None);
        assert_eq!(s.gfn_to_hva(0x12), 0x7000_2000);
    }
}
