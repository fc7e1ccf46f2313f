// SPDX-License-Identifier: GPL-2.0

//! Invalidation tracking: the retry half of the mmu_notifier contract.
//!
//! See "Invalidation and the retry sequence" in
//! Documentation/secmmu-protocols.rst (KVM's `kvm_mmu_invalidate_start()`,
//! `kvm_mmu_invalidate_end()` and `mmu_invalidate_retry_gfn()`). Between
//! `invalidate_range_start()` and the matching `invalidate_range_end()` no
//! new mapping of the range may be created. The fault path therefore
//! snapshots [`Invalidations::seq`] before it resolves a host page (which
//! may sleep), and, under the lock that protects this state, gives up and
//! retries when [`Invalidations::retry_range`] says an invalidation
//! overlapping what it maps is in progress or has completed since the
//! snapshot.
//!
//! The state is kept in host virtual addresses, as the notifier reports
//! them. It lives under the space's MMU lock: `start` and `end` change it
//! with the lock held for write, faults read it under either side.
//! Kernel-free: built into the module and into the host crate.

/// How many completed invalidations are remembered with their ranges.
pub(crate) const HISTORY: usize = 64;

/// Invalidations in progress and the sequence of completed ones.
#[derive(Debug)]
pub(crate) struct Invalidations {
    /// Number of `start` calls without their `end` yet.
    in_progress: u32,
    /// Union `[start, end)` of the ranges of the in-progress invalidations.
    /// Only meaningful while `in_progress > 0`.
    start: usize,
    end: usize,
    /// Bumped at every `end`: a fault that began before it must retry
    /// if the range of that `end` overlaps what it maps.
    seq: u64,
    /// `ended[n % HISTORY]`: the range of the invalidation whose end made
    /// the sequence `n`, for the last [`HISTORY`] values of `seq`.
    ended: [(usize, usize); HISTORY],
}

impl Invalidations {
    /// Creates the state of a space that never saw an invalidation.
    pub(crate) const fn new() -> Self {
        Self {
            in_progress: 0,
            start: 0,
            end: 0,
            seq: 0,
            ended: [(0, 0); HISTORY],
        }
    }

    /// The sequence a fault snapshots before resolving a host page.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether any invalidation is in progress.
    pub(crate) fn in_progress(&self) -> bool {
        self.in_progress != 0
    }

    /// Whether an invalidation in progress may cover any of `[start, end)`
    /// (the union of those in progress overlaps it).
    pub(crate) fn in_progress_overlaps(&self, start: usize, end: usize) -> bool {
        self.in_progress != 0 && start < self.end && end > self.start
    }

    /// `invalidate_range_start()`: from now on, until [`Self::end`], no
    /// mapping of `[start, end)` may be installed.
    ///
    /// Nested or concurrent invalidations widen the tracked range to their
    /// union, as KVM does: a fault outside every range but inside the union
    /// retries needlessly, which is rare and harmless.
    pub(crate) fn begin(&mut self, start: usize, end: usize) {
        debug_assert!(start < end);
        if self.in_progress == 0 {
            self.start = start;
            self.end = end;
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.in_progress += 1;
    }

    /// `invalidate_range_end()` of `[start, end)`: the range may be mapped
    /// again, by faults that start after this.
    ///
    /// The sequence is bumped, and the range recorded under it, before the
    /// count drops, so a fault that saw neither the range (count 0) nor the
    /// new sequence cannot exist. Returns false, changing nothing, for an
    /// `end` without a `begin`: the notifier contract is broken, and the
    /// caller warns.
    #[must_use]
    pub(crate) fn end(&mut self, start: usize, end: usize) -> bool {
        if self.in_progress == 0 {
            return false;
        }
        self.seq = self.seq.wrapping_add(1);
        self.ended[self.seq as usize % HISTORY] = (start, end);
        self.in_progress -= 1;
        true
    }

    /// Must a fault on host address `hva`, which snapshotted `seq` before
    /// resolving its page, be retried?
    pub(crate) fn retry(&self, hva: usize, seq: u64) -> bool {
        self.retry_range(hva, hva + 1, seq)
    }

    /// Must a fault that maps the host range `[start, end)` (a huge page's
    /// worth) and snapshotted `seq` before resolving its page be retried?
    /// Yes if an invalidation in progress overlaps any of the range, or one
    /// that overlaps it ended since the snapshot: a split of the primary's
    /// huge mapping, or a partial unmap of it, invalidates part or all of
    /// the range, and the huge mapping must then not be installed. Also yes
    /// when more invalidations ended since the snapshot than the history
    /// holds: their ranges are no longer known.
    pub(crate) fn retry_range(&self, start: usize, end: usize, seq: u64) -> bool {
        if self.in_progress_overlaps(start, end) {
            return true;
        }
        let overlaps = |(s, e): (usize, usize)| start < e && end > s;
        let ended = self.seq.wrapping_sub(seq);
        if ended > HISTORY as u64 {
            return true;
        }
        (1..=ended).any(|i| overlaps(self.ended[seq.wrapping_add(i) as usize % HISTORY]))
    }

    /// Whether any invalidation ended since `seq` was read, whatever its
    /// range (KVM's `mmu_invalidate_retry()` without the range).
    pub(crate) fn any_since(&self, seq: u64) -> bool {
        self.seq != seq
    }
}

#[cfg(any(test, CONFIG_KUNIT))]
pub(crate) mod checks {
    //! Checks shared by the host's `cargo test` and the in-kernel KUnit suite.
    use super::{Invalidations, HISTORY};

    /// A fault racing one invalidation retries while the range is in
    /// progress and after it ended, and not outside it before the end.
    pub(crate) fn retry_around_one_invalidation() -> bool {
        let mut inv = Invalidations::new();
        let seq = inv.seq();
        inv.begin(0x1000, 0x3000);
        let ok_during = inv.retry(0x1000, seq) && inv.retry(0x2fff, seq);
        let ok_outside = !inv.retry(0x3000, seq) && !inv.retry(0x0fff, seq);
        let ended = inv.end(0x1000, 0x3000);
        let ok_after = inv.retry(0x2000, seq) && !inv.retry(0x2000, inv.seq());
        // Range-based: an invalidation elsewhere does not make it retry.
        let ok_elsewhere = !inv.retry(0x5000, seq) && inv.any_since(seq);
        ended && ok_during && ok_outside && ok_after && ok_elsewhere && !inv.in_progress()
    }

    /// Nested invalidations keep the union until the last one ends.
    pub(crate) fn nested_invalidations_keep_union() -> bool {
        let mut inv = Invalidations::new();
        inv.begin(0x1000, 0x2000);
        inv.begin(0x8000, 0x9000);
        let seq = inv.seq();
        let union = inv.retry(0x1000, seq) && inv.retry(0x8fff, seq) && inv.retry(0x5000, seq);
        let e1 = inv.end(0x8000, 0x9000);
        let seq = inv.seq();
        let still = inv.retry(0x1000, seq) && inv.in_progress();
        let e2 = inv.end(0x1000, 0x2000);
        let seq = inv.seq();
        e1 && e2 && union && still && !inv.retry(0x1000, seq) && !inv.in_progress()
    }

    /// A huge range retries if an in-progress invalidation overlaps any part
    /// of it, not only its first page.
    pub(crate) fn range_retry_covers_whole_range() -> bool {
        let mut inv = Invalidations::new();
        let seq = inv.seq();
        inv.begin(0x3ff000, 0x400000);
        let inside = inv.retry_range(0x200000, 0x400000, seq) && !inv.retry(0x200000, seq);
        let outside =
            !inv.retry_range(0x400000, 0x600000, seq) && !inv.retry_range(0x000000, 0x3ff000, seq);
        let ended = inv.end(0x3ff000, 0x400000);
        let after =
            inv.retry_range(0x200000, 0x400000, seq) && !inv.retry_range(0x400000, 0x600000, seq);
        ended && inside && outside && after
    }

    /// Ended invalidations are remembered by range for [`HISTORY`]
    /// sequence numbers; a fault overtaken by more retries whatever its
    /// range, and an `end` without a `begin` changes nothing.
    pub(crate) fn history_bounds_range_retry() -> bool {
        let mut inv = Invalidations::new();
        let unbalanced = !inv.end(0, 0x1000) && inv.seq() == 0;
        let seq = inv.seq();
        let mut ok = true;
        for i in 0..HISTORY {
            inv.begin(0x100000 + i * 0x1000, 0x101000 + i * 0x1000);
            ok &= inv.end(0x100000 + i * 0x1000, 0x101000 + i * 0x1000);
        }
        let within = !inv.retry(0x1000, seq) && inv.retry(0x100000, seq);
        inv.begin(0x900000, 0x901000);
        ok &= inv.end(0x900000, 0x901000);
        let overtaken = inv.retry(0x1000, seq) && !inv.retry(0x1000, seq + 1);
        unbalanced && ok && within && overtaken
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
    fn nested_invalidations_keep_union() {
        assert!(checks::nested_invalidations_keep_union());
    }

    #[test]
    fn range_retry_covers_whole_range() {
        assert!(checks::range_retry_covers_whole_range());
    }

    #[test]
    fn history_bounds_range_retry() {
        assert!(checks::history_bounds_range_retry());
    }
}
