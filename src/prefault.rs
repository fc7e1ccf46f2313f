// SPDX-License-Identifier: GPL-2.0

//! SECMMU_PRE_FAULT_MEMORY: mapping a guest-physical range into a vCPU's
//! root ahead of its accesses, as KVM_PRE_FAULT_MEMORY does (KVM's
//! `kvm_vcpu_pre_fault_memory()` and `kvm_arch_vcpu_pre_fault_memory()`):
//! read faults (copy-on-write is never broken, nothing is marked dirty),
//! at the level a fault would map (`Fault::adjust_level()`), and not
//! accessed where the walker can set the accessed bit itself
//! (`X86Mmu::map_level_prefetch()`, `S2Mmu::map_prefetch()`).
//!
//! Unlike KVM, which faults page by page through `kvm_tdp_map_page()`, the
//! range is taken in batches of up to [`BATCH`] pages of one memslot:
//!
//! 1. Under the read side of the MMU lock: the memslot, the generation, and
//!    one watch of the host range every fault of the batch may map
//!    ([`Fault::watch_batch()`]).
//! 2. With no lock held: one `get_user_pages_fast()` for the batch's user
//!    pages ([`UserPages`]), and the primary MMU's level at the first page
//!    of each leaf.
//! 3. Under the format's side of the MMU lock, once: each leaf is checked
//!    with [`Fault::must_retry()`] and installed. The first that must retry
//!    ends the batch there; what was installed before it stands (its check
//!    passed under this same lock hold), and the rest is taken again, with
//!    a new watch and new pages, after the signal and resched check that
//!    every round goes through. So a pre-fault racing an invalidation
//!    retries like any fault, and never maps a page the primary no longer
//!    maps ("Invalidation and the retry sequence" in
//!    Documentation/secmmu-protocols.rst).

use crate::{
    ext::{gup::UserPages, preempt::PreemptGuard, sched},
    fault::host_level,
    format::{FaultCaches, FaultSide, Format, WithFormat},
    mmu::addr::{Gfn, Pfn},
    mmu::fault::Fault,
    mmu::level::Level,
    mmu::memslot::Slot,
    mmu::pgtable::{MapAction, MapError, MapOutcome},
    mmu::prim::NoPreempt,
    mmu::stats::VcpuStats,
    space::Space,
    trace, uapi,
};
use kernel::prelude::*;

/// Pages a batch resolves with one `get_user_pages_fast()` and installs
/// under one hold of the MMU lock: an eighth of a 4K table, so that the
/// lock is held for a bounded time (x86 holds it for write).
pub(crate) const BATCH: usize = 64;

/// The page references of a batch: allocated once per ioctl, not on the
/// stack.
pub(crate) type BatchPages = UserPages<BATCH>;

/// Validates a SECMMU_PRE_FAULT_MEMORY request as KVM's
/// `kvm_vcpu_pre_fault_memory()` does, and more: `flags` and `padding` must
/// be 0, `gpa` and `size` page aligned, `size` nonzero, and the range must
/// not wrap (`EINVAL`).
pub(crate) fn check(req: &uapi::secmmu_pre_fault_memory) -> Result {
    uapi::check_zero(&req.padding)?;
    const MASK: u64 = (kernel::page::PAGE_SIZE as u64) - 1;
    if req.flags != 0 || req.gpa & MASK != 0 || req.size & MASK != 0 || req.size == 0 {
        return Err(EINVAL);
    }
    req.gpa.checked_add(req.size).ok_or(EINVAL)?;
    Ok(())
}

/// A pre-fault of `range` by a vCPU of `space` on root `root`; run for the
/// root's format by [`Kind::with_format()`](crate::format::Kind::with_format).
pub(crate) struct PreFault<'a> {
    pub(crate) space: &'a Space,
    /// The vCPU's id: its watch is the batch's.
    pub(crate) vcpu: usize,
    pub(crate) root: usize,
    pub(crate) caches: &'a mut FaultCaches,
    pub(crate) pages: &'a mut BatchPages,
    /// The vCPU's counters; the pre-fault runs in the thread that holds the
    /// vCPU, their only writer.
    pub(crate) stats: &'a VcpuStats,
    /// The request, validated by [`check()`]; `gpa` and `size` are updated
    /// to what remains.
    pub(crate) range: &'a mut uapi::secmmu_pre_fault_memory,
}

impl WithFormat for PreFault<'_> {
    type Output = Result;

    /// KVM's `kvm_vcpu_pre_fault_memory()`: batches until the range is
    /// done, a signal is pending (`EINTR`) or a batch fails. Returns 0 if
    /// any of the range was mapped (the range then says what is left),
    /// else the error.
    fn run<F: Format>(mut self) -> Result {
        let full = self.range.size;
        let r = loop {
            if self.range.size == 0 {
                break Ok(());
            }
            if kernel::current!().signal_pending() {
                break Err(EINTR);
            }
            sched::cond_resched();
            let gfn = Gfn::from_gpa(self.range.gpa);
            let pages = self.range.size >> kernel::page::PAGE_SHIFT;
            match self.batch::<F>(gfn, pages) {
                Ok(done) => {
                    // A huge leaf may end past the range (KVM's
                    // `kvm_arch_vcpu_pre_fault_memory()` returns the
                    // smaller of the two).
                    let bytes = (done << kernel::page::PAGE_SHIFT).min(self.range.size);
                    self.range.gpa += bytes;
                    self.range.size -= bytes;
                }
                Err(e) => break Err(e),
            }
        };
        self.pages.release();
        if self.range.size != full {
            Ok(())
        } else {
            r
        }
    }
}

/// Where installing a batch stopped.
enum Stop {
    /// Every planned leaf is installed.
    Done,
    /// The caches ran low: top up and go on with the same pages (the watch
    /// still holds, and the next hold of the lock checks it again).
    Topup,
    /// A map unlinked a table, freed with the lock: go on with the same
    /// pages under a new hold.
    Relock,
    /// An invalidation or another walker raced the leaf: end the batch.
    Retry,
}

impl PreFault<'_> {
    /// One batch from `gfn`, of at most `pages` pages (and [`BATCH`], and
    /// the rest of the memslot). Returns how many pages from `gfn` are now
    /// mapped (0 if it must start over; past `pages` if a huge leaf ends
    /// there), or the error: `ENOENT` if no memslot holds `gfn`, `EFAULT`
    /// if its user page cannot be faulted in, `EIO` after release.
    fn batch<F: Format>(&mut self, gfn: Gfn, pages: u64) -> Result<u64> {
        let space = self.space;
        space.check_alive()?;
        // Step 1: the slot, and the watch of the batch.
        let (slot, generation, max_level, n) = {
            let state = space.mmu.read();
            let preempt = PreemptGuard::new();
            let rcu: NoPreempt<'_> = preempt.proof().into();
            let slots = space.memslots(&rcu);
            let slot = slots.lookup(gfn).ok_or(ENOENT)?.slot;
            let max_level = state.mmu.as_ref().ok_or(EIO)?.max_map_level();
            let n = pages.min(BATCH as u64).min(slot.end_gfn() - gfn);
            Fault::watch_batch(&state.inval, self.vcpu, &slot, gfn, gfn + n, max_level);
            (slot, slots.generation(), max_level, n)
        };
        self.caches.topup::<F>()?;

        // Step 2: the user pages, for reading, and the leaves they make.
        let hva = slot.gfn_to_hva(gfn);
        // `n` is at most BATCH.
        let got = self
            .pages
            .get_fast(hva.as_usize(), n as usize, false)
            .map_err(|e| {
                if e == ENOMEM {
                    ENOMEM
                } else if e == EINTR || e == ERESTARTSYS {
                    EINTR
                } else {
                    EFAULT
                }
            })?;
        // The leaves, in order: each the fault of its first page in the
        // batch, sized by the host level looked up now (a snapshot, which
        // the watch covers: `Fault::adjust_level()`).
        let mut plan = [(0u8, Level::L4K); BATCH];
        let mut planned = 0;
        let mut i = 0;
        while i < got {
            let g = gfn + i as u64;
            let mut fault = Fault::new_prefetch(self.vcpu, g, &slot, generation, max_level);
            let pfn = Pfn::new(self.pages.pfn(i) as u64);
            let h = fault.hva;
            let mut host = Level::L4K;
            fault.resolved(pfn, false, || {
                host = host_level(h);
                host
            });
            plan[planned] = (i as u8, host);
            planned += 1;
            let (block, _) = fault.block();
            i = (block + fault.level.pages() - gfn) as usize;
        }

        // Step 3: install, under as few holds of the lock as the caches
        // and collapses allow.
        let mut next = 0;
        let mut done = 0u64;
        loop {
            let (stop, upto, mapped) =
                self.install::<F>(gfn, &plan[next..planned], generation, max_level, &slot)?;
            next += upto;
            done = done.max(mapped);
            match stop {
                Stop::Done | Stop::Retry => break,
                Stop::Relock => {}
                Stop::Topup => self.caches.topup::<F>()?,
            }
        }
        self.pages.release();
        Ok(done)
    }

    /// Installs the planned leaves `plan` of the batch from `gfn` under one
    /// hold of the format's side of the MMU lock. Returns where it stopped,
    /// how many leaves of `plan` it got through, and the pages from `gfn`
    /// mapped by the last of them.
    fn install<F: Format>(
        &mut self,
        gfn: Gfn,
        plan: &[(u8, Level)],
        generation: u64,
        max_level: Level,
        slot0: &Slot,
    ) -> Result<(Stop, usize, u64)> {
        let space = self.space;
        let stats = self.stats;
        let mut guard = F::FaultSide::lock(&space.mmu);
        // A space released since the batch began keeps its tables, but
        // nothing may be mapped into them any more.
        space.check_alive()?;
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        let slots = space.memslots(&rcu);
        let mut mapped_to = 0;
        for (k, &(i, host)) in plan.iter().enumerate() {
            let g = gfn + u64::from(i);
            let mut fault = Fault::new_prefetch(self.vcpu, g, slot0, generation, max_level);
            fault.resolved(Pfn::new(self.pages.pfn(i.into()) as u64), false, || host);
            // The set current under the lock: the one the batch began with
            // unless the generation moved, which `must_retry()` sees.
            if fault.must_retry(&guard.inval, slots.generation()) {
                stats.fault_retries.inc();
                return Ok((Stop::Retry, k, mapped_to));
            }
            let Some(slot) = slots.lookup(g) else {
                // Not reached: the generation did not move.
                return Ok((Stop::Retry, k, mapped_to));
            };
            if self.caches.tables.len() < F::MAP_MIN_TABLES
                || self.caches.descs.len() < F::MAP_MIN_DESCS
            {
                return Ok((Stop::Topup, k, mapped_to));
            }
            let Some(tables) = F::FaultSide::tables::<F>(&mut guard) else {
                // Not reached: a vCPU exists only once its space has tables.
                return Err(EIO);
            };
            let flush = || space.flush_remote_tlbs();
            let outcome = match F::map(tables, self.root, &fault, slot, self.caches, &flush) {
                Ok(o) => o,
                Err(MapError::Again) => {
                    stats.fault_eagain.inc();
                    return Ok((Stop::Retry, k, mapped_to));
                }
                Err(MapError::NeedTopup) => return Ok((Stop::Topup, k, mapped_to)),
                // The space holds its limit of table pages.
                Err(MapError::TableLimit) => return Err(ENOSPC),
                Err(_) => return Err(ENOMEM),
            };
            let (block, _) = fault.block();
            mapped_to = block + fault.level.pages() - gfn;
            count::<F>(space, stats, &fault, &outcome);
            if let Some(t) = outcome.unlinked {
                // `F::map()` flushed after the unlink: free the table once
                // no locked walker can be inside it, which drops the lock.
                drop(preempt);
                F::FaultSide::free_unlinked::<F>(&space.mmu, guard, t);
                return Ok((Stop::Relock, k + 1, mapped_to));
            }
        }
        Ok((Stop::Done, plan.len(), mapped_to))
    }
}

/// Counts a leaf a pre-fault installed, or found, in the vCPU's counters.
/// Not in `faults` nor `mappings_*`, which count the vCPU's own faults:
/// `pre_faults` counts the leaves pre-faults installed, whatever their level.
fn count<F: Format>(space: &Space, stats: &VcpuStats, fault: &Fault, outcome: &MapOutcome) {
    if matches!(outcome.action, MapAction::Installed | MapAction::Replaced) {
        stats.pre_faults.inc();
    }
    if F::BREAK_BEFORE_MAKE && outcome.action == MapAction::Replaced {
        stats.bbm.inc();
        trace::bbm(space.id, fault.gfn, fault.level);
    }
    if outcome.split {
        stats.splits.inc();
        trace::split(space.id, fault.gfn, fault.level);
    }
    if outcome.unlinked.is_some() {
        stats.collapses.inc();
        trace::collapse(space.id, fault.gfn, fault.level);
    }
    if outcome.chain_len != 0 {
        stats.rmap_max_chain.max(outcome.chain_len as u64);
        stats.rmap_chain.record(outcome.chain_len as u64);
    }
}
