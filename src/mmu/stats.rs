// SPDX-License-Identifier: GPL-2.0

//! Per-space event counters, reported by `SECMMU_GET_STATS`.
//!
//! Counters are relaxed atomics: they order nothing and are read as a
//! snapshot that may mix values from slightly different moments.
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::prim::{AtomicU64, Ordering};

/// One event counter.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Counts one event.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events.  Adding 0 writes nothing: callers add per-call results that are mostly
    /// 0, and an atomic add is not free on a hot path (aging is called once per page).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if n != 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Raises the counter to `v` if it is lower (a high-water mark).
    pub(crate) fn max(&self, v: u64) {
        // Load first: most calls raise nothing, and then write nothing to a
        // cache line that every vCPU's faults share.
        if v > self.0.load(Ordering::Relaxed) {
            self.0.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The number of events so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of one space. Field names match `struct secmmu_stats`.
#[derive(Default)]
pub(crate) struct Stats {
    /// `invalidate_range_start()` calls.
    pub(crate) invalidations: Counter,
    /// ... of which were not blockable (may not sleep).
    pub(crate) invalidations_nonblock: Counter,
    /// Pages (4K) covered by those invalidations.
    pub(crate) invalidated_pages: Counter,
    /// Faults resolved by installing an SPTE.
    pub(crate) faults: Counter,
    /// Faults retried because an invalidation raced them (see "Invalidation
    /// and the retry sequence" in Documentation/secmmu-protocols.rst).
    pub(crate) fault_retries: Counter,
    /// Faults that could not be resolved and exited to userspace.
    pub(crate) memory_faults: Counter,
    /// Leaf SPTEs zapped.
    pub(crate) sptes_zapped: Counter,
    /// ... of which were dirty, so their page was marked dirty.
    pub(crate) dirty_pages: Counter,
    /// Zaps that dropped the MMU lock to reschedule ("Yielding in long
    /// walks").
    pub(crate) zap_yields: Counter,
    /// Remote TLB flush rounds.
    pub(crate) tlb_flushes: Counter,
    /// Flushes skipped because nothing was zapped.
    pub(crate) tlb_flushes_elided: Counter,
    /// Longest rmap chain seen, in SPTEs.
    pub(crate) rmap_max_chain: Counter,
    /// Memslot deletions.
    pub(crate) slot_zaps: Counter,
    /// `release()` calls.
    pub(crate) releases: Counter,
    /// clear_young / clear_flush_young / test_young calls.
    pub(crate) aging_calls: Counter,
    /// ... answered young.
    pub(crate) aging_young: Counter,
    /// ... walked without the MMU lock.
    pub(crate) aging_lockless: Counter,
    /// Young entries made old.
    pub(crate) aging_cleared: Counter,
    /// rmap bit locks a lockless walk found held and spun on.
    pub(crate) rmap_contention: Counter,
    /// Entries that changed under an aging compare-exchange (counted young).
    pub(crate) aging_lost_races: Counter,
    /// Access-tracked SPTEs restored by a fault without get_user_pages.
    pub(crate) access_restores: Counter,
    /// Faults that found an entry locked or changed by another walker
    /// (-EAGAIN, "Locked entries") and started over.
    pub(crate) fault_eagain: Counter,
    /// Access-flag faults fixed without get_user_pages (arm64, no A/D).
    pub(crate) access_flag_faults: Counter,
    /// Break-before-make sequences of the fault path (arm64).
    pub(crate) bbm: Counter,
    /// Leaves installed by faults, per level (4K, 2M, 1G).
    pub(crate) mappings: [Counter; 3],
    /// Huge leaves a fault zapped and replaced by a table, to map a
    /// smaller page under it.
    pub(crate) splits: Counter,
    /// Tables a fault zapped and replaced by a huge leaf.
    pub(crate) collapses: Counter,
    /// Leaves that dirty logging write-protected (they were writable).
    pub(crate) dirty_protected: Counter,
    /// Gfns the vCPUs' page-modification logs brought into dirty bitmaps
    /// (dirty logging by the dirty bit).
    pub(crate) pml_logged: Counter,
    /// Huge leaves dirty logging split before any write faulted on them
    /// (eager page splitting).
    pub(crate) eager_splits: Counter,
    /// Write faults that made such a leaf writable again without
    /// get_user_pages (x86, KVM's fast page fault).
    pub(crate) dirty_fast_faults: Counter,
    /// Dirty-ring entries SECMMU_RESET_DIRTY_RINGS freed.
    pub(crate) dirty_ring_resets: Counter,
    /// vCPU exits for a soft-full dirty ring.
    pub(crate) dirty_ring_full_exits: Counter,
    /// Gfns that found their vCPU's ring full and went to the bitmap.
    pub(crate) dirty_ring_overflows: Counter,
    /// SECMMU_AUDIT runs.
    pub(crate) audits: Counter,
    /// Leaves they found incoherent with the primary MMU.
    pub(crate) audit_mismatches: Counter,
}
