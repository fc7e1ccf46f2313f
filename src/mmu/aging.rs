// SPDX-License-Identifier: GPL-2.0

//! Aging: answering the mm core's `clear_young`, `clear_flush_young` and `test_young` notifier
//! callbacks (page_idle, MGLRU, reclaim) from the secondary page tables.  The rules are those of
//! "Aging without the MMU lock" in Documentation/secmmu-protocols.rst, whose subsections the
//! comments below cite by title.
//!
//! This file holds what does not depend on the page-table format: the operation ([`AgeOp`]),
//! what an aging walk found and did ([`AgeResult`]), and the choice between the lockless and the
//! locked walk ([`use_lockless`]).  The walks themselves are the format's: for x86,
//! `age_gfn_range_lockless()` and `X86Mmu::age_gfn_range_locked()` in `x86/mmu.rs`, on the
//! (slot, gfn range) pairs the memslot set turns a host range into (`Memslots::gfn_ranges()`).
//!
//! Two walks:
//!
//! - Lockless: without the MMU lock, with preemption disabled, each rmap locked read-only
//!   ("Lockless rmap walks").  Only where the walkers keep accessed bits in the entries (x86 A/D
//!   enabled): clearing A is then a compare-exchange on the entry ("Clearing the accessed bit")
//!   that leaves every other bit alone.  Testing is lockless in every mode, since it only loads
//!   entries ("Testing is read-only").
//! - Locked: under the MMU lock for write.  Needed to clear without A/D bits, where aging
//!   marks entries for access tracking, which takes permissions away, W included: the dirty
//!   state must be captured first and TLBs flushed before the lock is dropped ("Access tracking
//!   without A/D bits").
//!
//! Aging tolerates rare false young and false old answers ("Imprecise aging"): a lost race is young
//! ("Clearing the accessed bit").
//!
//! Kernel-free: built into the module and into the host crate.

/// What the mm core asks of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgeOp {
    /// `test_young`: was any page of the range accessed?  Changes nothing, stops at the first
    /// young entry (KVM's `kvm_test_age_gfn()`).
    Test,
    /// `clear_young`: was any accessed, and make them all old.  No TLB flush: a translation
    /// cached meanwhile only makes the page look old for longer ("Imprecise aging").
    Clear,
    /// `clear_flush_young`: as [`AgeOp::Clear`], then flush the TLBs of the entries made old,
    /// so that the next access through them shows ([`AgeResult::needs_flush()`]).
    ClearFlush,
}

impl AgeOp {
    /// Whether the operation makes young entries old.
    #[inline]
    pub(crate) fn clears(self) -> bool {
        self != AgeOp::Test
    }
}

/// What an aging walk found and did.  The counters are for statistics and for the caller's
/// flush decision; only [`AgeResult::young`] is the answer to the mm core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AgeResult {
    /// The operation.
    pub(crate) op: AgeOp,
    /// Some entry of the range was accessed (or raced with us): the mm core's answer.
    pub(crate) young: bool,
    /// Young entries this walk made old.
    pub(crate) cleared: u64,
    /// ... of which lost write permission to access tracking: TLBs may still allow writes
    /// that would not be seen as dirty, so they must be flushed before the MMU lock is dropped
    /// whatever the operation (locked walk only).
    pub(crate) write_protected: u64,
    /// Pages marked dirty because aging took W from a dirty entry (locked walk only).
    pub(crate) dirty: u64,
    /// rmaps (or table entries) visited.
    pub(crate) visited: u64,
    /// rmap bit locks found held by someone else, so that the walk had to spin.
    pub(crate) contended: u64,
    /// Entries that changed between our load and our compare-exchange: counted young, not
    /// retried ("Clearing the accessed bit").
    pub(crate) lost_races: u64,
    /// Non-present entries met in rmaps: zapped and not yet removed (lockless walk).
    pub(crate) not_present: u64,
    /// Accessed entries without A/D bits that the lockless walk could not clear: counted
    /// young; the space should age with the locked walk.
    pub(crate) skipped: u64,
    /// The walk did not hold the MMU lock for write: lockless (x86, with A/D bits) or under the
    /// read side (stage-2): the `aging_lockless` count.
    pub(crate) lockless: bool,
}

impl AgeResult {
    /// Nothing found yet.
    pub(crate) const fn new(op: AgeOp) -> Self {
        AgeResult {
            op,
            young: false,
            cleared: 0,
            write_protected: 0,
            dirty: 0,
            visited: 0,
            contended: 0,
            lost_races: 0,
            not_present: 0,
            skipped: 0,
            lockless: false,
        }
    }

    /// Whether the caller must flush the TLBs (and wait for the flush) before reporting to the
    /// mm core, and, after a locked walk, before dropping the MMU lock: after
    /// [`AgeOp::ClearFlush`] made entries old, or whenever access tracking took W away.
    pub(crate) fn needs_flush(&self) -> bool {
        (self.op == AgeOp::ClearFlush && self.cleared != 0) || self.write_protected != 0
    }

    /// Whether a [`AgeOp::Test`] walk can stop: it found a young entry.
    #[inline]
    pub(crate) fn done(&self) -> bool {
        self.op == AgeOp::Test && self.young
    }

    /// Adds what another walk of the same operation found.
    pub(crate) fn merge(&mut self, other: &AgeResult) {
        debug_assert_eq!(self.op, other.op);
        self.young |= other.young;
        self.cleared += other.cleared;
        self.write_protected += other.write_protected;
        self.dirty += other.dirty;
        self.visited += other.visited;
        self.contended += other.contended;
        self.lost_races += other.lost_races;
        self.not_present += other.not_present;
        self.skipped += other.skipped;
    }
}

/// Whether `op` may run on the lockless walk in a space whose entries keep A/D bits if
/// `ad_enabled`; `force_locked` is a knob that sends everything to the locked walk (to compare
/// the two).  Testing only loads, so it is lockless in every mode; clearing is lockless only
/// with A/D bits ("Access tracking without A/D bits").
#[inline]
pub(crate) fn use_lockless(op: AgeOp, ad_enabled: bool, force_locked: bool) -> bool {
    !force_locked && (ad_enabled || op == AgeOp::Test)
}
