// SPDX-License-Identifier: GPL-2.0

//! Statistics: the counters of a space and of each vCPU, reported by
//! `SECMMU_GET_STATS` and by the stats files (`SECMMU_GET_STATS_FD`, KVM's
//! binary statistics; "Statistics" in Documentation/secmmu.rst).
//!
//! Two kinds of counter, by who writes them:
//!
//! - [`Counter`]: a space's, bumped by any thread (notifier callbacks,
//!   zaps, aging, dirty-log ioctls): a relaxed atomic read-modify-write.
//! - [`OwnCounter`]: a vCPU's ([`VcpuStats`]), bumped only by the thread
//!   that runs the vCPU (the fault path and the vCPU loop, which hold the
//!   vCPU's mutex, so one thread at a time and in order): a relaxed load and
//!   a relaxed store, no locked instruction, on cache lines of its own (as
//!   KVM's `vcpu->stat`, which `++` bumps).
//!
//! Readers load relaxed: each value is one some writer stored, never torn
//! and never below one an earlier read returned (coherence of a single
//! location), but a snapshot of several counters may mix moments. A space's
//! totals of the vCPU counters are what its live vCPUs counted plus what
//! exited vCPUs counted ([`VcpuTotals`], folded in when a vCPU goes), so
//! they never go backwards.
//!
//! The descriptor tables ([`SPACE_STATS`], [`VCPU_STATS`]) say what a stats
//! file holds, in its order; the same list makes the values
//! ([`space_values()`], [`vcpu_values()`]), so the two cannot disagree.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::prim::{AtomicU64, Ordering};

/// One event counter of a space, which any thread may bump.
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
        // Load first: most calls raise nothing, and then write nothing.
        if v > self.0.load(Ordering::Relaxed) {
            self.0.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The number of events so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter with one writer at a time: a vCPU's.
///
/// Invariant (its users': every bump of a [`VcpuStats`] runs in the
/// thread that holds the vCPU's mutex): no two bumps run at once, and each
/// happens after the one before. So a bump is a load and a store, which
/// loses nothing, and readers on other CPUs may load at any time.
#[derive(Default)]
pub(crate) struct OwnCounter(AtomicU64);

impl OwnCounter {
    /// Counts one event.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events: the sole writer's load and store, not a locked
    /// read-modify-write (see the type's invariant).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if n != 0 {
            let v = self.0.load(Ordering::Relaxed);
            self.0.store(v.wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Raises the counter to `v` if it is lower (a high-water mark).
    #[inline]
    pub(crate) fn max(&self, v: u64) {
        if v > self.0.load(Ordering::Relaxed) {
            self.0.store(v, Ordering::Relaxed);
        }
    }

    /// The count so far.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The bucket of `value` in a logarithmic histogram of `buckets` buckets
/// (KVM's `kvm_stats_log_hist_update()`): bucket 0 counts 0, bucket `i`
/// counts `[2^(i-1), 2^i)`, and the last bucket everything above too.
pub(crate) const fn log_hist_bucket(value: u64, buckets: usize) -> usize {
    let i = (u64::BITS - value.leading_zeros()) as usize;
    if i < buckets {
        i
    } else {
        buckets - 1
    }
}

/// Buckets of the histogram of rmap chain lengths.
pub(crate) const RMAP_CHAIN_BUCKETS: usize = 16;
/// Buckets of the histogram of leaves zapped per zap.
pub(crate) const ZAP_BATCH_BUCKETS: usize = 32;

/// `N` counters of a space, any thread bumping them: a histogram.
pub(crate) struct Hist<const N: usize>([Counter; N]);

impl<const N: usize> Default for Hist<N> {
    fn default() -> Self {
        Self(core::array::from_fn(|_| Counter::default()))
    }
}

impl<const N: usize> Hist<N> {
    /// Counts `value` in its logarithmic bucket ([`log_hist_bucket()`]).
    pub(crate) fn record(&self, value: u64) {
        self.0[log_hist_bucket(value, N)].inc();
    }

    /// The buckets now.
    pub(crate) fn get(&self) -> [u64; N] {
        core::array::from_fn(|i| self.0[i].get())
    }
}

/// `N` counters of a vCPU ([`OwnCounter`]s): per level, or a histogram.
pub(crate) struct OwnCounters<const N: usize>([OwnCounter; N]);

impl<const N: usize> Default for OwnCounters<N> {
    fn default() -> Self {
        Self(core::array::from_fn(|_| OwnCounter::default()))
    }
}

impl<const N: usize> OwnCounters<N> {
    /// Counter `i`.
    #[inline]
    pub(crate) fn at(&self, i: usize) -> &OwnCounter {
        &self.0[i]
    }

    /// Counts `value` in its logarithmic bucket ([`log_hist_bucket()`]).
    #[inline]
    pub(crate) fn record(&self, value: u64) {
        self.0[log_hist_bucket(value, N)].inc();
    }
}

/// A vCPU's high-water mark ([`OwnCounter::max()`]): merged by maximum.
#[derive(Default)]
pub(crate) struct OwnPeak(OwnCounter);

impl OwnPeak {
    /// Raises the mark to `v` if it is lower.
    #[inline]
    pub(crate) fn max(&self, v: u64) {
        self.0.max(v);
    }
}

/// `N` values read from [`OwnCounters`], which add up element by element.
#[derive(Clone, Copy)]
pub(crate) struct Values<const N: usize>(pub(crate) [u64; N]);

impl<const N: usize> Default for Values<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

/// A vCPU statistic: read into a plain value, and merged into a total.
pub(crate) trait Snap {
    /// What it reads as.
    type Value: Copy + Default;
    /// Its value now (relaxed loads).
    fn snap(&self) -> Self::Value;
    /// Adds `v` to `into`, as the total of several vCPUs counts it.
    fn merge(into: &mut Self::Value, v: &Self::Value);
}

impl Snap for OwnCounter {
    type Value = u64;
    fn snap(&self) -> u64 {
        self.get()
    }
    fn merge(into: &mut u64, v: &u64) {
        *into = into.wrapping_add(*v);
    }
}

impl Snap for OwnPeak {
    type Value = u64;
    fn snap(&self) -> u64 {
        self.0.get()
    }
    fn merge(into: &mut u64, v: &u64) {
        *into = (*into).max(*v);
    }
}

impl<const N: usize> Snap for OwnCounters<N> {
    type Value = Values<N>;
    fn snap(&self) -> Values<N> {
        Values(core::array::from_fn(|i| self.0[i].get()))
    }
    fn merge(into: &mut Values<N>, v: &Values<N>) {
        for (a, b) in into.0.iter_mut().zip(v.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }
}

/// Defines [`VcpuStats`] and [`VcpuTotals`] from one list of fields.
macro_rules! vcpu_stats {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty,)*) => {
        /// The counters of one vCPU, bumped by the vCPU's own thread only
        /// (see [`OwnCounter`]). Aligned to a cache line, so no other
        /// vCPU's bumps share its lines.
        #[repr(align(64))]
        #[derive(Default)]
        pub(crate) struct VcpuStats {
            $($(#[doc = $doc])* pub(crate) $name: $ty,)*
        }

        /// The values of [`VcpuStats`]: one vCPU's, or the sum over
        /// several (peaks: their maximum).
        #[derive(Clone, Copy, Default)]
        pub(crate) struct VcpuTotals {
            $($(#[doc = $doc])* pub(crate) $name: <$ty as Snap>::Value,)*
        }

        impl VcpuStats {
            /// Reads every counter (relaxed loads: see [`OwnCounter`]).
            pub(crate) fn snapshot(&self) -> VcpuTotals {
                VcpuTotals {
                    $($name: self.$name.snap(),)*
                }
            }
        }

        impl VcpuTotals {
            /// Adds `other` in: counters sum, peaks take the maximum.
            pub(crate) fn add(&mut self, other: &VcpuTotals) {
                $(<$ty as Snap>::merge(&mut self.$name, &other.$name);)*
            }
        }
    };
}

vcpu_stats! {
    /// Faults resolved by installing an SPTE (or finding it installed).
    faults: OwnCounter,
    /// Faults retried because an invalidation raced them (see "Invalidation
    /// and the retry sequence" in Documentation/secmmu-protocols.rst).
    fault_retries: OwnCounter,
    /// Faults that could not be resolved and exited to userspace.
    memory_faults: OwnCounter,
    /// Faults that found an entry locked or changed by another walker
    /// (-EAGAIN, "Locked entries") and started over.
    fault_eagain: OwnCounter,
    /// Access-tracked SPTEs restored by a fault without get_user_pages.
    access_restores: OwnCounter,
    /// Access-flag faults fixed without get_user_pages (arm64, no A/D).
    access_flag_faults: OwnCounter,
    /// Break-before-make sequences of the fault path (arm64).
    bbm: OwnCounter,
    /// Leaves installed by faults, per level (4K, 2M, 1G).
    mappings: OwnCounters<3>,
    /// Huge leaves a fault zapped and replaced by a table, to map a
    /// smaller page under it.
    splits: OwnCounter,
    /// Tables a fault zapped and replaced by a huge leaf.
    collapses: OwnCounter,
    /// Write faults that made a write-protected leaf writable again without
    /// get_user_pages (x86, KVM's fast page fault).
    dirty_fast_faults: OwnCounter,
    /// Read faults that mapped writable: the primary already mapped the
    /// page writable (KVM's `map_writable`), so a write after the read
    /// takes no second fault.
    writable_on_read: OwnCounter,
    /// vCPU exits for a soft-full dirty ring.
    dirty_ring_full_exits: OwnCounter,
    /// Gfns that found the vCPU's ring full and went to the bitmap.
    dirty_ring_overflows: OwnCounter,
    /// Gfns the vCPU's page-modification log brought into dirty bitmaps
    /// (dirty logging by the dirty bit).
    pml_logged: OwnCounter,
    /// Leaves installed by SECMMU_PRE_FAULT_MEMORY (KVM_PRE_FAULT_MEMORY):
    /// read faults made ahead of the vCPU's accesses, at any level.
    pre_faults: OwnCounter,
    /// Leaves a fault installed around its own, in the same last-level
    /// table, for pages the primary already mapped writable (KVM's
    /// `direct_pte_prefetch()`): not counted in `faults` nor `mappings_*`.
    fault_around: OwnCounter,
    /// Longest rmap chain a fault added an SPTE to, counting it.
    rmap_max_chain: OwnPeak,
    /// Lengths of the rmap chains faults added an SPTE to (x86; stage-2
    /// keeps no rmaps), a logarithmic histogram.
    rmap_chain: OwnCounters<RMAP_CHAIN_BUCKETS>,
}

/// The counters of one space that are not any vCPU's. Field names match
/// `struct secmmu_stats` where it has them.
#[derive(Default)]
pub(crate) struct Stats {
    /// `invalidate_range_start()` calls.
    pub(crate) invalidations: Counter,
    /// ... of which were not blockable (may not sleep).
    pub(crate) invalidations_nonblock: Counter,
    /// Pages (4K) covered by those invalidations.
    pub(crate) invalidated_pages: Counter,
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
    /// Leaves that dirty logging write-protected (they were writable).
    pub(crate) dirty_protected: Counter,
    /// Huge leaves dirty logging split before any write faulted on them
    /// (eager page splitting).
    pub(crate) eager_splits: Counter,
    /// Dirty-ring entries SECMMU_RESET_DIRTY_RINGS freed.
    pub(crate) dirty_ring_resets: Counter,
    /// SECMMU_AUDIT runs.
    pub(crate) audits: Counter,
    /// Leaves they found incoherent with the primary MMU.
    pub(crate) audit_mismatches: Counter,
    /// Leaves zapped per zap (one invalidation, memslot deletion, release
    /// or end of dirty logging, across its yields), a logarithmic histogram.
    pub(crate) zap_batch: Hist<ZAP_BATCH_BUCKETS>,
}

/// What a statistic is: `SECMMU_STATS_TYPE_*` (KVM's `KVM_STATS_TYPE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StatKind {
    /// A count of events since the space (or vCPU) was made.
    Cumulative,
    /// A value now, which goes up and down.
    Instant,
    /// The highest value seen.
    Peak,
    /// A logarithmic histogram: bucket 0 counts 0, bucket `i` counts
    /// `[2^(i-1), 2^i)`.
    LogHist,
}

/// What a stats file says of one statistic (a `struct secmmu_stats_desc`
/// but the layout).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatDesc {
    /// Its name, unique in its file, shorter than `SECMMU_STATS_NAME_SIZE`.
    pub(crate) name: &'static str,
    pub(crate) kind: StatKind,
    /// Its u64 values: 1, or a histogram's buckets.
    pub(crate) size: usize,
}

/// The `N` u64s a statistic's value takes in a stats file's data.
pub(crate) trait IntoStat<const N: usize> {
    /// The value as the file stores it.
    fn into_stat(self) -> [u64; N];
}

impl IntoStat<1> for u64 {
    fn into_stat(self) -> [u64; 1] {
        [self]
    }
}

impl<const N: usize> IntoStat<N> for [u64; N] {
    fn into_stat(self) -> [u64; N] {
        self
    }
}

impl<const N: usize> IntoStat<N> for Values<N> {
    fn into_stat(self) -> [u64; N] {
        self.0
    }
}

/// Defines a descriptor table and the function that writes the values it
/// describes, in its order, from one list: `"name": Kind[size] = value`,
/// `value` an expression of the view `$v` whose type must take `size` u64s
/// (checked at compile time through [`IntoStat`]).
macro_rules! stat_table {
    ($(#[doc = $ddoc:literal])* $descs:ident,
     $(#[doc = $fdoc:literal])* $fill:ident($v:ident: $view:ty),
     [$($name:literal: $kind:ident[$size:expr] = $val:expr,)*]) => {
        $(#[doc = $ddoc])*
        pub(crate) const $descs: &[StatDesc] = &[
            $(StatDesc { name: $name, kind: StatKind::$kind, size: $size },)*
        ];

        $(#[doc = $fdoc])*
        pub(crate) fn $fill($v: &$view, out: &mut [u64]) {
            let mut off = 0;
            $(
                let value: [u64; $size] = IntoStat::<{ $size }>::into_stat($val);
                if let Some(dst) = out.get_mut(off..off + $size) {
                    dst.copy_from_slice(&value);
                }
                off += $size;
            )*
            let _ = off;
        }
    };
}

/// What a space's statistics are read from: its own counters, the totals
/// of its vCPUs (live and exited), and the values now of its tables.
pub(crate) struct SpaceView<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) vcpus: &'a VcpuTotals,
    /// Page-table pages the space holds now.
    pub(crate) table_pages: u64,
    /// Page-table pages of the whole module (every space) now.
    pub(crate) module_table_pages: u64,
    /// Valid leaves now, in all roots, by level (4K, 2M, 1G).
    pub(crate) leaves: [u64; 3],
}

stat_table! {
    /// The statistics of a space's stats file, in its order.
    SPACE_STATS,
    /// Writes a space's statistics, in [`SPACE_STATS`]' order, into `out`
    /// ([`data_len`]`(SPACE_STATS)` u64s).
    space_values(v: SpaceView<'_>),
    [
        "invalidations": Cumulative[1] = v.stats.invalidations.get(),
        "invalidations_nonblock": Cumulative[1] = v.stats.invalidations_nonblock.get(),
        "invalidated_pages": Cumulative[1] = v.stats.invalidated_pages.get(),
        "faults": Cumulative[1] = v.vcpus.faults,
        "fault_retries": Cumulative[1] = v.vcpus.fault_retries,
        "memory_faults": Cumulative[1] = v.vcpus.memory_faults,
        "sptes_zapped": Cumulative[1] = v.stats.sptes_zapped.get(),
        "dirty_pages": Cumulative[1] = v.stats.dirty_pages.get(),
        "zap_yields": Cumulative[1] = v.stats.zap_yields.get(),
        "tlb_flushes": Cumulative[1] = v.stats.tlb_flushes.get(),
        "tlb_flushes_elided": Cumulative[1] = v.stats.tlb_flushes_elided.get(),
        "rmap_max_chain": Peak[1] = v.vcpus.rmap_max_chain,
        "table_pages": Instant[1] = v.table_pages,
        "slot_zaps": Cumulative[1] = v.stats.slot_zaps.get(),
        "releases": Cumulative[1] = v.stats.releases.get(),
        "aging_calls": Cumulative[1] = v.stats.aging_calls.get(),
        "aging_young": Cumulative[1] = v.stats.aging_young.get(),
        "aging_lockless": Cumulative[1] = v.stats.aging_lockless.get(),
        "aging_cleared": Cumulative[1] = v.stats.aging_cleared.get(),
        "rmap_contention": Cumulative[1] = v.stats.rmap_contention.get(),
        "aging_lost_races": Cumulative[1] = v.stats.aging_lost_races.get(),
        "access_restores": Cumulative[1] = v.vcpus.access_restores,
        "fault_eagain": Cumulative[1] = v.vcpus.fault_eagain,
        "access_flag_faults": Cumulative[1] = v.vcpus.access_flag_faults,
        "bbm": Cumulative[1] = v.vcpus.bbm,
        "module_table_pages": Instant[1] = v.module_table_pages,
        "mappings_4k": Cumulative[1] = v.vcpus.mappings.0[0],
        "mappings_2m": Cumulative[1] = v.vcpus.mappings.0[1],
        "mappings_1g": Cumulative[1] = v.vcpus.mappings.0[2],
        "splits": Cumulative[1] = v.vcpus.splits,
        "collapses": Cumulative[1] = v.vcpus.collapses,
        "audits": Cumulative[1] = v.stats.audits.get(),
        "audit_mismatches": Cumulative[1] = v.stats.audit_mismatches.get(),
        "pages_4k": Instant[1] = v.leaves[0],
        "pages_2m": Instant[1] = v.leaves[1],
        "pages_1g": Instant[1] = v.leaves[2],
        "dirty_protected": Cumulative[1] = v.stats.dirty_protected.get(),
        "eager_splits": Cumulative[1] = v.stats.eager_splits.get(),
        "dirty_fast_faults": Cumulative[1] = v.vcpus.dirty_fast_faults,
        "writable_on_read": Cumulative[1] = v.vcpus.writable_on_read,
        "dirty_ring_resets": Cumulative[1] = v.stats.dirty_ring_resets.get(),
        "dirty_ring_full_exits": Cumulative[1] = v.vcpus.dirty_ring_full_exits,
        "dirty_ring_overflows": Cumulative[1] = v.vcpus.dirty_ring_overflows,
        "pml_logged": Cumulative[1] = v.vcpus.pml_logged,
        "pre_faults": Cumulative[1] = v.vcpus.pre_faults,
        "fault_around": Cumulative[1] = v.vcpus.fault_around,
        "rmap_chain_length": LogHist[RMAP_CHAIN_BUCKETS] = v.vcpus.rmap_chain,
        "zap_batch_leaves": LogHist[ZAP_BATCH_BUCKETS] = v.stats.zap_batch.get(),
    ]
}

stat_table! {
    /// The statistics of a vCPU's stats file, in its order.
    VCPU_STATS,
    /// Writes a vCPU's statistics, in [`VCPU_STATS`]' order, into `out`
    /// ([`data_len`]`(VCPU_STATS)` u64s).
    vcpu_values(v: VcpuTotals),
    [
        "faults": Cumulative[1] = v.faults,
        "fault_retries": Cumulative[1] = v.fault_retries,
        "memory_faults": Cumulative[1] = v.memory_faults,
        "fault_eagain": Cumulative[1] = v.fault_eagain,
        "access_restores": Cumulative[1] = v.access_restores,
        "access_flag_faults": Cumulative[1] = v.access_flag_faults,
        "bbm": Cumulative[1] = v.bbm,
        "mappings_4k": Cumulative[1] = v.mappings.0[0],
        "mappings_2m": Cumulative[1] = v.mappings.0[1],
        "mappings_1g": Cumulative[1] = v.mappings.0[2],
        "splits": Cumulative[1] = v.splits,
        "collapses": Cumulative[1] = v.collapses,
        "dirty_fast_faults": Cumulative[1] = v.dirty_fast_faults,
        "writable_on_read": Cumulative[1] = v.writable_on_read,
        "dirty_ring_full_exits": Cumulative[1] = v.dirty_ring_full_exits,
        "dirty_ring_overflows": Cumulative[1] = v.dirty_ring_overflows,
        "pml_logged": Cumulative[1] = v.pml_logged,
        "pre_faults": Cumulative[1] = v.pre_faults,
        "fault_around": Cumulative[1] = v.fault_around,
        "rmap_max_chain": Peak[1] = v.rmap_max_chain,
        "rmap_chain_length": LogHist[RMAP_CHAIN_BUCKETS] = v.rmap_chain,
    ]
}

/// The u64s of the data a table of statistics describes.
pub(crate) const fn data_len(descs: &[StatDesc]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < descs.len() {
        n += descs[i].size;
        i += 1;
    }
    n
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn log_hist_buckets_are_kvms() {
        assert_eq!(log_hist_bucket(0, 16), 0);
        assert_eq!(log_hist_bucket(1, 16), 1);
        assert_eq!(log_hist_bucket(2, 16), 2);
        assert_eq!(log_hist_bucket(3, 16), 2);
        assert_eq!(log_hist_bucket(4, 16), 3);
        assert_eq!(log_hist_bucket((1 << 14) - 1, 16), 14);
        assert_eq!(log_hist_bucket(1 << 14, 16), 15);
        assert_eq!(log_hist_bucket(u64::MAX, 16), 15);
        assert_eq!(log_hist_bucket(u64::MAX, 65), 64);
    }

    fn check_table(descs: &[StatDesc]) {
        for (i, d) in descs.iter().enumerate() {
            assert!(!d.name.is_empty() && d.name.len() < 48, "{}", d.name);
            assert!(d
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(
                descs[..i].iter().all(|e| e.name != d.name),
                "{} twice",
                d.name
            );
            assert_eq!(d.size > 1, d.kind == StatKind::LogHist, "{}", d.name);
        }
    }

    #[test]
    fn tables_are_well_formed() {
        check_table(SPACE_STATS);
        check_table(VCPU_STATS);
        // Every vCPU statistic is one of the space's too, of the same kind.
        for d in VCPU_STATS {
            let s = SPACE_STATS.iter().find(|s| s.name == d.name).unwrap();
            assert_eq!((s.kind, s.size), (d.kind, d.size), "{}", d.name);
        }
    }

    #[test]
    fn space_totals_are_the_vcpus_summed() {
        let (a, b) = (VcpuStats::default(), VcpuStats::default());
        a.faults.add(3);
        b.faults.inc();
        a.rmap_max_chain.max(7);
        b.rmap_max_chain.max(5);
        a.rmap_chain.record(5);
        b.rmap_chain.record(6);
        b.mappings.at(1).inc();
        let mut t = VcpuTotals::default();
        t.add(&a.snapshot());
        t.add(&b.snapshot());
        let stats = Stats::default();
        stats.zap_batch.record(0);
        stats.zap_batch.record(512);
        let view = SpaceView {
            stats: &stats,
            vcpus: &t,
            table_pages: 9,
            module_table_pages: 10,
            leaves: [1, 2, 3],
        };
        let mut out = [u64::MAX; data_len(SPACE_STATS)];
        space_values(&view, &mut out);
        let at = |name: &str| {
            let mut off = 0;
            for d in SPACE_STATS {
                if d.name == name {
                    return &out[off..off + d.size];
                }
                off += d.size;
            }
            panic!("{name}");
        };
        assert_eq!(at("faults"), [4]);
        assert_eq!(at("rmap_max_chain"), [7]);
        assert_eq!(at("mappings_2m"), [1]);
        assert_eq!(at("table_pages"), [9]);
        assert_eq!(at("pages_1g"), [3]);
        assert_eq!(at("rmap_chain_length")[3], 2);
        assert_eq!(at("zap_batch_leaves")[0], 1);
        assert_eq!(at("zap_batch_leaves")[10], 1);
        assert!(!out.contains(&u64::MAX));
        let mut v = [u64::MAX; data_len(VCPU_STATS)];
        vcpu_values(&a.snapshot(), &mut v);
        assert_eq!(v[0], 3);
        assert!(!v.contains(&u64::MAX));
    }
}
