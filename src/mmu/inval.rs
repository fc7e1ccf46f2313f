// SPDX-License-Identifier: GPL-2.0

//! Invalidation tracking: the retry half of the mmu_notifier contract.
//!
//! See "Invalidation and the retry sequence" in
//! Documentation/secmmu-protocols.rst (KVM's `kvm_mmu_invalidate_start()`,
//! `kvm_mmu_invalidate_end()` and `mmu_invalidate_retry_gfn()`). Between
//! `invalidate_range_start()` and the matching `invalidate_range_end()` no
//! new mapping of the range may be created.
//!
//! A fault resolves its host page with no lock held (it may sleep), so it
//! must learn whether the primary changed that page meanwhile. KVM snapshots
//! a sequence that every `end` bumps and retries if it moved, whatever the
//! range of the invalidation that moved it: a fault that takes longer than
//! the gap between two invalidations of unrelated memory retries forever.
//! Here a fault instead *watches* the host range it may map
//! ([`Invalidations::watch()`], one watch per vCPU): every `begin` that
//! overlaps a watched range marks the watch stale, and the fault retries
//! only if its watch went stale or an overlapping invalidation is still in
//! progress ([`Invalidations::fault_must_retry()`]). Retries then follow
//! the invalidations of what the fault maps, and nothing else.
//!
//! The state is kept in host virtual addresses, as the notifier reports
//! them. It lives under the space's MMU lock: `begin` and `end` change it
//! with the lock held for write; faults watch and check under either side
//! (a watch is written only by its own vCPU, so faults under the read side
//! never write the same watch).
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::addr::Hva;
use crate::mmu::prim::{self, AllocError, AtomicBool, AtomicU64, Ordering, PVec};

/// How many faults may watch at once: one per vCPU (`SECMMU_MAX_VCPUS`).
pub(crate) const MAX_WATCHES: usize = 64;

/// The host range `[start, end)` one fault may map, and whether an
/// invalidation of it began since the fault started watching.
///
/// Relaxed atomics: the MMU lock orders every access (a watch is written
/// under the read side by its vCPU only, and by `begin` under the write
/// side); they are atomics only because the read side hands out `&self`.
///
/// A cache line each, written by its vCPU at every fault: vCPUs faulting
/// in parallel under the read side must not pass a line back and forth.
#[derive(Debug)]
#[repr(align(64))]
struct Watch {
    start: AtomicU64,
    end: AtomicU64,
    stale: AtomicBool,
}

impl Watch {
    fn new() -> Self {
        Self {
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            stale: AtomicBool::new(false),
        }
    }

    fn overlaps(&self, start: Hva, end: Hva) -> bool {
        start.raw() < self.end.load(Ordering::Relaxed)
            && end.raw() > self.start.load(Ordering::Relaxed)
    }
}

/// Invalidations in progress, the sequence of completed ones, and the
/// ranges faults watch.
#[derive(Debug)]
pub(crate) struct Invalidations {
    /// Number of `start` calls without their `end` yet.
    in_progress: u32,
    /// Union `[start, end)` of the ranges of the in-progress invalidations.
    /// Only meaningful while `in_progress > 0`.
    start: Hva,
    end: Hva,
    /// Bumped at every `end` (KVM's `mmu_invalidate_seq`): for readers that
    /// need no range, such as the coherence audit.
    seq: u64,
    /// One per vCPU, by vCPU id ([`MAX_WATCHES`] of them). Out of line:
    /// the rest of the state, which every fault reads beside the MMU lock,
    /// stays in one cache line.
    watches: PVec<Watch>,
}

impl Invalidations {
    /// Creates the state of a space that never saw an invalidation.
    pub(crate) fn new() -> Result<Self, AllocError> {
        Ok(Self {
            in_progress: 0,
            start: Hva::new(0),
            end: Hva::new(0),
            seq: 0,
            watches: prim::try_vec_with(MAX_WATCHES, Watch::new)?,
        })
    }

    /// The number of invalidations that ended so far.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether any invalidation is in progress.
    pub(crate) fn in_progress(&self) -> bool {
        self.in_progress != 0
    }

    /// Whether an invalidation in progress may cover any of `[start, end)`
    /// (the union of those in progress overlaps it).
    pub(crate) fn in_progress_overlaps(&self, start: Hva, end: Hva) -> bool {
        self.in_progress != 0 && start < self.end && end > self.start
    }

    /// `invalidate_range_start()`: from now on, until [`Self::end`], no
    /// mapping of `[start, end)` may be installed; a fault watching any of
    /// it must start over.
    ///
    /// Nested or concurrent invalidations widen the tracked range to their
    /// union, as KVM does: a fault outside every range but inside the union
    /// retries needlessly, which is rare and harmless.
    pub(crate) fn begin(&mut self, start: Hva, end: Hva) {
        debug_assert!(start < end);
        if self.in_progress == 0 {
            self.start = start;
            self.end = end;
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.in_progress += 1;
        for w in self.watches.iter() {
            if w.overlaps(start, end) {
                w.stale.store(true, Ordering::Relaxed);
            }
        }
    }

    /// `invalidate_range_end()`: its range may be mapped again, by faults
    /// that start watching it after this (the union of the ranges in
    /// progress only shrinks when the last one ends, as in KVM).
    ///
    /// Returns false, changing nothing, for an `end` without a `begin`: the
    /// notifier contract is broken, and the caller warns.
    #[must_use]
    pub(crate) fn end(&mut self) -> bool {
        if self.in_progress == 0 {
            return false;
        }
        self.seq = self.seq.wrapping_add(1);
        self.in_progress -= 1;
        true
    }

    /// Fault `id` (a vCPU id) is about to resolve a host page it may map
    /// anywhere in `[start, end)`: from now on every invalidation that
    /// begins over any of it makes [`Self::fault_must_retry()`] true. One
    /// already in progress over it does so at once: its `end` may come
    /// before the fault looks, and the primary may be changing the page
    /// under the fault's look-up right now.
    pub(crate) fn watch(&self, id: usize, start: Hva, end: Hva) {
        let w = &self.watches[id];
        w.start.store(start.raw(), Ordering::Relaxed);
        w.end.store(end.raw(), Ordering::Relaxed);
        w.stale
            .store(self.in_progress_overlaps(start, end), Ordering::Relaxed);
    }

    /// Must fault `id`, which watched a range containing `[start, end)`
    /// since before it resolved its page, start over instead of mapping
    /// `[start, end)`? Yes if an invalidation overlapping its watch began
    /// since it started watching, or one overlapping `[start, end)` is in
    /// progress.
    pub(crate) fn fault_must_retry(&self, id: usize, start: Hva, end: Hva) -> bool {
        let w = &self.watches[id];
        debug_assert!(
            w.start.load(Ordering::Relaxed) <= start.raw()
                && end.raw() <= w.end.load(Ordering::Relaxed)
        );
        w.stale.load(Ordering::Relaxed) || self.in_progress_overlaps(start, end)
    }

    /// Whether anything since `seq` (a value of [`Self::seq()`]) may have
    /// changed the primary's mapping of `[start, end)`: an invalidation of
    /// it is in progress, or any invalidation ended since. Conservative
    /// (any range), for readers that are not faults.
    pub(crate) fn changed_since(&self, start: Hva, end: Hva, seq: u64) -> bool {
        self.in_progress_overlaps(start, end) || self.seq != seq
    }
}

#[cfg(any(test, CONFIG_KUNIT))]
pub(crate) mod checks {
    //! Checks shared by the host's `cargo test` and the in-kernel KUnit suite.
    use super::{Hva, Invalidations, MAX_WATCHES};

    /// The host address `a`.
    fn h(a: u64) -> Hva {
        Hva::new(a)
    }

    /// A fault racing one invalidation of its range retries whether the
    /// invalidation is in progress or over when it looks; one that started
    /// watching after the end does not.
    pub(crate) fn retry_around_one_invalidation() -> bool {
        let mut inv = Invalidations::new().unwrap();
        inv.watch(0, h(0x1000), h(0x3000));
        let quiet = !inv.fault_must_retry(0, h(0x1000), h(0x2000));
        inv.begin(h(0x2000), h(0x3000));
        let during = inv.fault_must_retry(0, h(0x1000), h(0x2000));
        let ended = inv.end();
        let after = inv.fault_must_retry(0, h(0x1000), h(0x2000));
        inv.watch(0, h(0x1000), h(0x3000));
        let fresh = !inv.fault_must_retry(0, h(0x1000), h(0x3000));
        quiet && during && ended && after && fresh && !inv.in_progress()
    }

    /// Invalidations elsewhere, however many, never make a fault retry; nor
    /// those of another vCPU's range.
    pub(crate) fn storm_elsewhere_never_retries() -> bool {
        let mut inv = Invalidations::new().unwrap();
        inv.watch(0, h(0x200000), h(0x400000));
        inv.watch(1, h(0x800000), h(0x801000));
        let seq = inv.seq();
        let mut ok = true;
        for i in 0..1000 {
            let a = 0x800000 + (i % 16) * 0x1000;
            inv.begin(h(a), h(a + 0x1000));
            ok &= !inv.fault_must_retry(0, h(0x200000), h(0x400000));
            ok &= inv.end();
        }
        ok && !inv.fault_must_retry(0, h(0x200000), h(0x400000))
            && inv.fault_must_retry(1, h(0x800000), h(0x801000))
            && inv.changed_since(h(0x200000), h(0x400000), seq)
    }

    /// Watching a range that an invalidation in progress covers is stale at
    /// once, even if that invalidation ends before the fault looks.
    pub(crate) fn watch_during_invalidation_is_stale() -> bool {
        let mut inv = Invalidations::new().unwrap();
        inv.begin(h(0x3ff000), h(0x400000));
        inv.watch(2, h(0x200000), h(0x400000));
        let ended = inv.end();
        let stale = inv.fault_must_retry(2, h(0x3fe000), h(0x3ff000));
        inv.watch(3, h(0x400000), h(0x600000));
        ended && stale && !inv.fault_must_retry(3, h(0x400000), h(0x600000))
    }

    /// Nested invalidations keep the union until the last one ends, and an
    /// `end` without a `begin` changes nothing.
    pub(crate) fn nested_invalidations_keep_union() -> bool {
        let mut inv = Invalidations::new().unwrap();
        let unbalanced = !inv.end() && inv.seq() == 0;
        inv.begin(h(0x1000), h(0x2000));
        inv.begin(h(0x8000), h(0x9000));
        let union = inv.in_progress_overlaps(h(0x5000), h(0x6000));
        let e1 = inv.end();
        let still = inv.in_progress_overlaps(h(0x1000), h(0x1001)) && inv.in_progress();
        let e2 = inv.end();
        inv.watch(MAX_WATCHES - 1, h(0x1000), h(0x2000));
        unbalanced
            && e1
            && e2
            && union
            && still
            && !inv.in_progress()
            && inv.seq() == 2
            && !inv.fault_must_retry(MAX_WATCHES - 1, h(0x1000), h(0x2000))
    }
}

#[cfg(test)]
mod tests {
    use super::checks;

    #[test]
    fn retry_around_one_invalidation() {
        assert!(checks::retry_around_one_invalidation());
    }

    #[test]
    fn storm_elsewhere_never_retries() {
        assert!(checks::storm_elsewhere_never_retries());
    }

    #[test]
    fn watch_during_invalidation_is_stale() {
        assert!(checks::watch_during_invalidation_is_stale());
    }

    #[test]
    fn nested_invalidations_keep_union() {
        assert!(checks::nested_invalidations_keep_union());
    }
}
