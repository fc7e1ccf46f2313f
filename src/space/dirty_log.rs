// SPDX-License-Identifier: GPL-2.0

//! Dirty logging of a space by write protection: the flags-only change that
//! starts and stops it, and the bitmap ioctls (KVM's KVM_GET_DIRTY_LOG and
//! KVM_CLEAR_DIRTY_LOG with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
//!
//! The rule all of it keeps ("Dirty logging" in
//! Documentation/secmmu-protocols.rst): a page whose bit is clear is mapped
//! writable by no leaf and no TLB of the space, so its next write faults and
//! sets the bit ([`crate::fault`] marks it under the MMU lock). So a harvest
//! takes bits and write-protects their pages under the MMU lock held for
//! write, and flushes TLBs before dropping it; enabling write-protects the
//! whole slot the same way, after publishing a set that makes faults map 4K
//! and log.
//!
//! Everything here holds [`Space::config`], so the slot and its bitmap stay
//! as they are throughout (KVM's `slots_lock`).

use super::{slot_errno, Config, Space};
use crate::{
    dirty_ring::VcpuRing,
    ext::{preempt::PreemptGuard, sched},
    format::{FaultCaches, Kind, MemSlot, MmuState, Pgt, SlotSet},
    mmu::addr::Gfn,
    mmu::dirty::{self, DirtyBitmap, Protected, SplitAt, Tracking, WORD_PAGES},
    mmu::dirty_ring::{Coalesce, Masked},
    mmu::memslot::{MAX_SLOTS, MEM_LOG_DIRTY_PAGES},
    mmu::prim::{self, NoPreempt},
    mmu_lock::WriteGuard,
    uapi,
    x86::mmu as x86,
};
use kernel::{
    alloc::KVVec,
    prelude::*,
    sync::{Arc, MutexGuard},
    uaccess::{UserPtr, UserSlice},
};

/// Bitmap words handled under one hold of the MMU lock (32768 pages): a
/// harvest or a write protection of a large slot yields between them, as
/// KVM's `slot_handle_level_range()` does.
const WORDS_PER_LOCK: usize = 512;

impl Space {
    /// A flags-only change of slot `id` (KVM_MR_FLAGS_ONLY) to `flags`,
    /// which differ from its own in [`MEM_LOG_DIRTY_PAGES`] only.
    ///
    /// Starting: a new bitmap (every bit set with INITIALLY_SET) goes into a
    /// new set, published under the MMU lock: the generation moves, so
    /// faults that began under the old flags retry, and from then on every
    /// fault of the slot maps 4K and logs its writes. Then, unless
    /// INITIALLY_SET says every page is dirty already, the slot's leaves
    /// are write-protected ([`Space::write_protect_gfns()`]).
    ///
    /// Stopping: the set without the bitmap is published, then the slot is
    /// zapped, so the next faults map as large as the primary allows again
    /// (KVM recovers huge pages by zapping the collapsible SPTEs,
    /// `kvm_mmu_zap_collapsible_sptes()`; here every leaf of the slot is
    /// 4K while it logs, so all of them are). The bitmap goes with the last
    /// set that holds it, a grace period later.
    pub(super) fn set_dirty_logging(
        &self,
        config: &MutexGuard<'_, Option<Config>>,
        cfg: &Config,
        id: u32,
        flags: u32,
    ) -> Result {
        let current = self.memslots_of_config(config);
        let slot = current.by_id(id).ok_or(ENOENT)?.slot;
        let enable = flags & MEM_LOG_DIRTY_PAGES != 0;
        let log = if enable {
            let bitmap = DirtyBitmap::new(slot.npages, cfg.initially_set)?;
            Some(prim::try_arc_sleepable(bitmap)?)
        } else {
            None
        };
        let new = current
            .flags_updated(id, flags, |d| d.with_dirty(log))
            .map_err(slot_errno)?;
        let new = prim::try_box_sleepable(new)?;
        let old = self.publish_memslots(new);
        if !enable {
            let mut guard = self.mmu.write();
            let mut zapped = self.zap(true);
            self.zap_gfns(&mut guard, &mut zapped, id, slot.base_gfn, slot.end_gfn());
            self.flush_and_free(&mut guard, &mut zapped);
            drop(guard);
            self.count_zapped(&zapped);
        } else if !cfg.initially_set {
            if cfg.eager_split {
                self.split_gfns(cfg, id, slot.base_gfn, slot.end_gfn());
            }
            self.protect_gfns(id, slot.base_gfn, slot.end_gfn(), cfg.tracking);
        }
        self.retire_memslots(old);
        Ok(())
    }

    /// Makes the gfns `[start, end)` of slot `id` clean in every root, as
    /// `tracking` says (write-protected, or with D clear), in chunks of
    /// [`WORDS_PER_LOCK`] words' worth of pages, each under the MMU lock held
    /// for write and flushed before it is dropped, rescheduling in between
    /// (KVM's `kvm_mmu_slot_remove_write_access()`, or
    /// `kvm_mmu_slot_leaf_clear_dirty()` with PML).
    fn protect_gfns(&self, id: u32, start: Gfn, end: Gfn, tracking: Tracking) {
        let chunk = WORDS_PER_LOCK as u64 * WORD_PAGES;
        let mut gfn = start;
        while gfn < end {
            let next = end.min(gfn + chunk);
            self.protect_locked(id, |mmu, slot| {
                mmu.protect_gfn_range(slot, gfn, next, tracking)
            });
            sched::cond_resched();
            gfn = next;
        }
    }

    /// Splits the huge leaves over the gfns `[start, end)` of slot `id` down
    /// to 4K (eager page splitting: KVM's `kvm_mmu_split_memory_region()`,
    /// with a chunk of KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, and x86's
    /// `kvm_mmu_slot_try_split_huge_pages()`). Each hold of the MMU lock for
    /// write splits what one top-up of the caches allows (16 MiB of 2M leaves),
    /// then the lock is dropped to top them up again and reschedule.
    ///
    /// The pieces keep the leaf's permissions: after the write protection of
    /// a start, read-only 4K leaves whose first write is a fast fault. Best
    /// effort, as KVM's: if an allocation fails or the MMU holds its limit of
    /// tables, what is left huge splits on its first write fault instead.
    fn split_gfns(&self, cfg: &Config, id: u32, start: Gfn, end: Gfn) {
        let Some(kind) = Kind::from_uapi(cfg.format) else {
            return;
        };
        let nr_roots = cfg.nr_roots as usize;
        let mut caches = FaultCaches::new(x86::split_min_descs(nr_roots));
        let mut at = SplitAt::new(start);
        while caches.topup_split(kind, nr_roots).is_ok() {
            let mut guard = self.mmu.write();
            let flush = || self.flush_remote_tlbs();
            let done = self.with_slot_tables(&mut guard, id, |mmu, slot| {
                mmu.split_huge_gfn_range(slot, at, end, &mut caches, &flush)
            });
            drop(guard);
            let done = done.unwrap_or_default();
            self.stats.eager_splits.add(done.split);
            let Some(next) = done.resume else {
                break;
            };
            at = next;
            sched::cond_resched();
        }
    }

    /// Runs `f` on the tables and on slot `id` of the current set, with the
    /// MMU lock held for write (`guard`): `None` if either is missing.
    fn with_slot_tables<R>(
        &self,
        guard: &mut WriteGuard<'_, MmuState>,
        id: u32,
        f: impl FnOnce(&mut Pgt, &MemSlot) -> R,
    ) -> Option<R> {
        // The set is the current one for as long as the lock is held.
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        let slot = self.memslots(&rcu).by_id(id)?;
        Some(f(guard.mmu.as_mut()?, slot))
    }

    /// Runs `f` on the tables and on slot `id` of the current set, with the
    /// MMU lock held for write, and flushes the TLBs before the lock is
    /// dropped if what `f` write-protected needs it ("TLB flush before
    /// dropping the MMU lock" in Documentation/secmmu-protocols.rst): a TLB
    /// still allowing writes would let them go unlogged.
    fn protect_locked(&self, id: u32, f: impl FnOnce(&mut Pgt, &MemSlot) -> Protected) {
        self.protect_in_set(|mmu, slots| {
            slots
                .by_id(id)
                .map_or_else(Protected::default, |slot| f(mmu, slot))
        });
    }

    /// [`Space::protect_locked()`] for `f` given the whole current set.
    fn protect_in_set(&self, f: impl FnOnce(&mut Pgt, &SlotSet) -> Protected) {
        let mut guard = self.mmu.write();
        let done = {
            // The set is the current one for as long as the lock is held.
            let preempt = PreemptGuard::new();
            let rcu: NoPreempt<'_> = preempt.proof().into();
            let slots = self.memslots(&rcu);
            guard
                .mmu
                .as_mut()
                .map_or_else(Protected::default, |mmu| f(mmu, slots))
        };
        if done.needs_flush() {
            self.flush_remote_tlbs();
        }
        drop(guard);
        self.stats.dirty_protected.add(done.leaves);
    }

    /// The slot `id` of the set `config` keeps current, and its dirty
    /// bitmap: `EINVAL` for an id no slot can have, `ENOENT` if there is no
    /// such slot or it does not log.
    fn logging_slot<'a>(
        &'a self,
        config: &'a MutexGuard<'_, Option<Config>>,
        id: u32,
    ) -> Result<(&'a MemSlot, &'a DirtyBitmap)> {
        if id as usize >= MAX_SLOTS {
            return Err(EINVAL);
        }
        let slots: &SlotSet = self.memslots_of_config(config);
        let slot = slots.by_id(id).ok_or(ENOENT)?;
        let log = slot.data.dirty().ok_or(ENOENT)?;
        Ok((slot, log))
    }

    /// With [`Tracking::DirtyBit`], brings what the vCPUs logged in their
    /// page-modification logs into the bitmaps (KVM's
    /// `kvm_arch_sync_dirty_log()`, which kicks every vCPU so that it
    /// flushes its PML buffer): a vCPU flushes its log before it leaves
    /// guest mode, and a TLB flush request waits for every vCPU in guest
    /// mode to leave it, so every write that was done when this was called
    /// is in the bitmap when it returns. A vCPU outside guest mode has
    /// nothing logged.
    fn sync_dirty_log(&self, cfg: &Config) {
        if cfg.tracking == Tracking::DirtyBit {
            self.flush_remote_tlbs();
        }
    }

    /// SECMMU_GET_DIRTY_LOG (KVM's `kvm_get_dirty_log_protect()`).
    ///
    /// First the pages that writable guest page caches may have written
    /// without a fault are marked ([`crate::gpc::GpcSet::harvest_logged()`]).
    /// With manual protection the bitmap is only copied. Without, each word
    /// is taken (left clear) and the pages of its bits write-protected, under
    /// the MMU lock, a chunk at a time; the words are copied out at the end,
    /// and if that faults, they are put back: the pages stay reported.
    pub(crate) fn get_dirty_log(&self, req: &uapi::secmmu_dirty_log) -> Result {
        uapi::check_zero(&req.reserved)?;
        if req.pad != 0 {
            return Err(EINVAL);
        }
        let config = self.config.lock();
        let cfg = (*config).ok_or(ENOENT)?;
        let (slot, log) = self.logging_slot(&config, req.slot)?;
        let id = slot.id;
        self.sync_dirty_log(&cfg);
        {
            let _lock = self.mmu.read();
            let (start, end) = (slot.base_gfn.to_gpa(), slot.end_gfn().to_gpa());
            self.gpcs
                .harvest_logged(start, end, |gpa| slot.mark_dirty(Gfn::from_gpa(gpa)));
        }
        let nwords = log.nwords();
        let mut words = KVVec::with_capacity(nwords, GFP_KERNEL_ACCOUNT)?;
        let mut w = 0;
        while w < nwords {
            let n = (nwords - w).min(WORDS_PER_LOCK);
            if cfg.manual_protect {
                for i in w..w + n {
                    words.push(log.word(i), GFP_KERNEL)?;
                }
                sched::cond_resched();
            } else {
                self.protect_locked(id, |mmu, slot| {
                    let mut done = Protected::default();
                    for i in w..w + n {
                        let bits = log.take_word(i);
                        // Cannot fail: the capacity is there.
                        let _ = words.push(bits, GFP_ATOMIC);
                        done.add(protect_bits(mmu, slot, i, bits, cfg.tracking));
                    }
                    done
                });
                sched::cond_resched();
            }
            w += n;
        }
        let mut writer =
            UserSlice::new(UserPtr::from_addr(req.bitmap as usize), nwords * 8).writer();
        for (i, bits) in words.iter().enumerate() {
            if i % WORDS_PER_LOCK == WORDS_PER_LOCK - 1 {
                sched::cond_resched();
            }
            if let Err(e) = writer.write(bits) {
                if !cfg.manual_protect {
                    // Taken and protected, but the call fails: the caller
                    // cannot trust what did reach its buffer, so all of
                    // them are reported again next time.
                    for (j, bits) in words.iter().enumerate() {
                        log.restore_word(j, *bits);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// SECMMU_CLEAR_DIRTY_LOG (KVM's `kvm_clear_dirty_log_protect()`): for
    /// each bit set in the user's bitmap, clears the page's dirty bit and,
    /// if it was set, write-protects the page, under the MMU lock a chunk at
    /// a time. Only with manual protection.
    pub(crate) fn clear_dirty_log(&self, req: &uapi::secmmu_clear_dirty_log) -> Result {
        uapi::check_zero(&req.reserved)?;
        let config = self.config.lock();
        let cfg = (*config).ok_or(ENOENT)?;
        if !cfg.manual_protect {
            return Err(EINVAL);
        }
        let (slot, log) = self.logging_slot(&config, req.slot)?;
        let id = slot.id;
        self.sync_dirty_log(&cfg);
        let (first, npages) = (req.first_page, u64::from(req.num_pages));
        dirty::check_clear_range(log.npages(), first, npages).map_err(|_| EINVAL)?;
        let nwords = npages.div_ceil(WORD_PAGES) as usize;
        let mut reader =
            UserSlice::new(UserPtr::from_addr(req.bitmap as usize), nwords * 8).reader();
        // A chunk of the caller's bitmap at a time: the copy is bounded
        // however large the slot (what was cleared before a faulting chunk
        // stays cleared, and protected).
        let mut masks = KVec::with_capacity(WORDS_PER_LOCK, GFP_KERNEL)?;
        let first_word = (first / WORD_PAGES) as usize;
        let mut w = 0;
        while w < nwords {
            let n = (nwords - w).min(WORDS_PER_LOCK);
            masks.clear();
            for i in w..w + n {
                let mut mask: u64 = reader.read()?;
                // Bits past `num_pages` in the last word are not the caller's.
                let left = npages - i as u64 * WORD_PAGES;
                if left < WORD_PAGES {
                    mask &= (1 << left) - 1;
                }
                masks.push(mask, GFP_KERNEL)?;
            }
            if cfg.eager_split && cfg.initially_set {
                // Nothing was protected or split when logging started: split
                // what this chunk clears first, as x86 KVM does
                // (`kvm_arch_mmu_enable_log_dirty_pt_masked()`). No fault
                // maps huge in a logging slot, so it stays split.
                let base = slot.base_gfn + (first_word + w) as u64 * WORD_PAGES;
                if let Some((lo, hi)) = dirty::span(&masks) {
                    self.split_gfns(&cfg, id, base + lo, base + hi);
                }
            }
            self.protect_locked(id, |mmu, slot| {
                let mut done = Protected::default();
                for (i, &mask) in masks.iter().enumerate() {
                    let word = first_word + w + i;
                    let cleared = log.clear_word(word, mask);
                    done.add(protect_bits(mmu, slot, word, cleared, cfg.tracking));
                }
                done
            });
            sched::cond_resched();
            w += n;
        }
        Ok(())
    }
}

/// Makes the pages of `slot` whose bits are set in `bits`, word `word` of
/// its bitmap, clean as `tracking` says. MMU lock held for write.
fn protect_bits(
    mmu: &mut Pgt,
    slot: &MemSlot,
    word: usize,
    bits: u64,
    tracking: Tracking,
) -> Protected {
    protect_mask(mmu, slot, word as u64 * WORD_PAGES, bits, tracking)
}

/// Makes page `offset + i` of `slot` clean as `tracking` says for each bit
/// `i` set in `mask`, a run of pages at a time; bits past the slot's end
/// are ignored. MMU lock held for write.
fn protect_mask(
    mmu: &mut Pgt,
    slot: &MemSlot,
    offset: u64,
    mask: u64,
    tracking: Tracking,
) -> Protected {
    let mut done = Protected::default();
    if offset >= slot.npages {
        return done;
    }
    let left = slot.npages - offset;
    let mask = if left < WORD_PAGES {
        mask & ((1 << left) - 1)
    } else {
        mask
    };
    let base = slot.base_gfn + offset;
    for (first, last) in dirty::runs(mask) {
        done.add(mmu.protect_gfn_range(slot, base + first, base + last, tracking));
    }
    done
}

/// Runs of pages a reset of the dirty rings write-protects under one hold
/// of the MMU lock.
const MASKS_PER_LOCK: usize = 256;

/// The pages a reset of the dirty rings makes clean: gathered into runs
/// ([`Coalesce`]), and the runs into batches that are protected a lock hold
/// each (KVM takes the MMU lock once per run, `kvm_reset_dirty_gfn()`).
struct RingReset<'a> {
    space: &'a Space,
    tracking: Tracking,
    coalesce: Coalesce,
    batch: KVec<Masked>,
}

impl RingReset<'_> {
    /// Page `offset` of slot `slot`, from an entry being freed.
    fn add(&mut self, slot: u32, offset: u64) {
        if let Some(run) = self.coalesce.add(slot, offset) {
            if self.batch.len() == MASKS_PER_LOCK {
                self.protect_batch();
            }
            // Cannot fail: the capacity is there.
            let _ = self.batch.push(run, GFP_ATOMIC);
        }
    }

    /// Protects the runs gathered so far, including the open one.
    fn finish(&mut self) {
        if let Some(run) = self.coalesce.finish() {
            if self.batch.len() == MASKS_PER_LOCK {
                self.protect_batch();
            }
            let _ = self.batch.push(run, GFP_ATOMIC);
        }
        self.protect_batch();
    }

    /// Protects the batch, in the slots of the current set: a run of a slot
    /// that is gone (or was never one), or that stopped logging, has nothing
    /// to protect, as in KVM.
    fn protect_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let (batch, tracking) = (&self.batch, self.tracking);
        self.space.protect_in_set(|mmu, slots| {
            let mut done = Protected::default();
            for run in batch.iter() {
                let slot = slots.by_id(run.slot).filter(|s| s.logs_dirty());
                if let Some(slot) = slot {
                    done.add(protect_mask(mmu, slot, run.offset, run.mask, tracking));
                }
            }
            done
        });
        self.batch.clear();
        sched::cond_resched();
    }
}

impl Space {
    /// SECMMU_RESET_DIRTY_RINGS (KVM's `kvm_vm_ioctl_reset_dirty_pages()`):
    /// frees the entries userspace collected in every vCPU's ring, and
    /// write-protects (or cleans) their pages again, so that their next
    /// writes are logged; returns how many entries it freed. A ring with a
    /// broken entry is reset up to it, the others wholly, and the call then
    /// fails with `EINVAL`. `EINVAL` too if the space has no rings.
    ///
    /// Userspace copies a page it collected after the reset returns (as
    /// QEMU sends the pages of the entries it collected after the reset):
    /// every write before the reset is in the copy, and every write after
    /// it faults (or sets the dirty bit) and is logged again.
    pub(crate) fn reset_dirty_rings(&self, arg: usize) -> Result<isize> {
        // An `_IO` ioctl: no argument.
        if arg != 0 {
            return Err(EINVAL);
        }
        let config = self.config.lock();
        let cfg = (*config).ok_or(EINVAL)?;
        if cfg.ring_entries == 0 {
            return Err(EINVAL);
        }
        // The vCPUs cannot go while the rings are reset: their Arcs are held.
        let rings: [Option<Arc<VcpuRing>>; uapi::MAX_VCPUS] = self.dirty_rings.lock().clone();
        let mut reset = RingReset {
            space: self,
            tracking: cfg.tracking,
            coalesce: Coalesce::default(),
            batch: KVec::with_capacity(MASKS_PER_LOCK, GFP_KERNEL)?,
        };
        let mut freed: u64 = 0;
        let mut broken = false;
        for ring in rings.iter().flatten() {
            match ring.reset(|slot, offset| reset.add(slot, offset)) {
                Ok(n) => freed += u64::from(n),
                Err(_) => broken = true,
            }
        }
        reset.finish();
        drop(config);
        self.stats.dirty_ring_resets.add(freed);
        if broken {
            return Err(EINVAL);
        }
        Ok(freed as isize)
    }
}
