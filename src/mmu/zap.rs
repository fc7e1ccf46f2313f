// SPDX-License-Identifier: GPL-2.0

//! The zap driver: how a zap of a gfn range flushes, frees the tables it unlinked, and yields
//! the MMU lock, for both formats (KVM's `tdp_mmu_iter_cond_resched()` for the TDP MMU zaps, and
//! the shadow MMU's `__walk_slot_rmaps()` with `cond_resched_rwlock_write()`).
//!
//! A zap clears leaves and unlinks the tables it leaves empty, with the MMU lock held for write.
//! Two rules of "Yielding in long walks" in `Documentation/secmmu-protocols.rst` bind it:
//!
//! - "TLB flush before dropping the MMU lock": whatever it cleared is flushed from every vCPU's
//!   TLB before the lock is dropped, at a yield or at the end;
//! - "TLB flush before freeing tables": a table it unlinked is freed only after such a flush.
//!
//! Both are kept here, once.  The caller supplies what a flush and a yield are ([`Yield`],
//! [`ZapLock`]); the format's zap (`X86Mmu::zap_gfn_range()` through the rmaps,
//! `S2Mmu::zap_gfn_range()` over the tables) runs under [`Zap::run()`], records what it clears
//! and unlinks in the [`Zap`], and at its safe points asks the [`Zap`] whether to yield
//! ([`YieldHook::should_yield()`]): if so, it flushes ([`YieldHook::flush()`], inside the walk
//! for a table walk, [`walk::walk_yielding()`]) and hands back [`Pause::Yield`]; the driver
//! frees the tables unlinked so far and yields.  A format whose list of unlinked tables is
//! full hands back [`Pause::TablesFull`]: the driver flushes and frees them, exactly as before
//! a yield, and the zap goes on without yielding, so the tables waiting for a flush stay
//! bounded.  After a yield the format starts again from the root (its tables may be gone): it
//! borrows the MMU afresh from the lock for every step.
//!
//! A zap that may not block (an OOM reaper's invalidation) has a [`Yield`] that never says
//! yield: it flushes and frees only when its list is full, and at the end.
//!
//! [`walk::walk_yielding()`]: crate::mmu::walk::walk_yielding
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::walk::YieldHook;

/// What a flush and a yield are, to the caller of a zap: the kernel glue asks `need_resched()`
/// and the lock's contention, and flushes with `flush_remote_tlbs()`.
pub(crate) trait Yield {
    /// Whether to yield the MMU lock now: someone needs the CPU or the lock.  Never true for a
    /// zap that may not block.
    fn should_yield(&mut self) -> bool;

    /// Flushes every vCPU's TLB and waits for the flush (KVM's `kvm_flush_remote_tlbs()`).
    fn flush_tlbs(&mut self);

    /// Counts a flush the zap did not need: nothing was cleared or unlinked since the last.
    fn flush_elided(&mut self);
}

/// The tables of an MMU that a zap unlinks, waiting for the flush after which no walker can be
/// inside them.
pub(crate) trait ZapTables {
    /// Frees the tables zaps unlinked.  With the MMU lock held for write, after the TLB flush
    /// that followed their unlink.
    fn free_zapped_tables(&mut self);
}

/// The MMU lock a zap holds for write, which it may drop and take again.
pub(crate) trait ZapLock {
    /// The tables it guards.
    type Mmu: ZapTables;

    /// The tables, borrowed from the lock until the next [`ZapLock::resched()`]; `None` if
    /// there are none (a space that has no tables of the zap's format).
    fn mmu(&mut self) -> Option<&mut Self::Mmu>;

    /// Drops the lock, reschedules if needed, and takes the lock again (KVM's
    /// `cond_resched_rwlock_write()` once it decided to yield).
    fn resched(&mut self);
}

/// Why a step of a format's zap handed back to [`Zap::run()`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pause {
    /// The range is zapped.
    Done,
    /// The MMU's list of unlinked tables is full: flush, free them, and go on.
    TablesFull,
    /// The [`Zap`] said to yield, and the step flushed ([`YieldHook::flush()`]): free the
    /// unlinked tables, yield, and go on.
    Yield,
}

/// A zap in progress, over one or more ranges under one hold of the MMU lock: what it did, and
/// whether a flush is due.
pub(crate) struct Zap<Y> {
    y: Y,
    /// Leaves were cleared or tables unlinked since the last flush.
    unflushed: bool,
    /// Leaves cleared.
    pub(crate) zapped: u64,
    /// ... of which were dirty, so their page was marked dirty.
    pub(crate) dirty: u64,
    /// rmaps or table entries visited, empty or not.
    pub(crate) visited: u64,
    /// Tables unlinked.
    pub(crate) unlinked: u64,
}

impl<Y: Yield> Zap<Y> {
    /// A zap that flushes and yields as `y` says.
    pub(crate) fn new(y: Y) -> Self {
        Zap {
            y,
            unflushed: false,
            zapped: 0,
            dirty: 0,
            visited: 0,
            unlinked: 0,
        }
    }

    /// The caller's [`Yield`].
    pub(crate) fn hook(&mut self) -> &mut Y {
        &mut self.y
    }

    /// Records `zapped` leaves cleared, `dirty` of them dirty: TLBs may still hold them.
    #[inline(always)]
    pub(crate) fn cleared(&mut self, zapped: u64, dirty: u64) {
        self.zapped += zapped;
        self.dirty += dirty;
        self.unflushed |= zapped != 0;
    }

    /// Records `tables` tables unlinked: a vCPU may still walk them.
    #[inline(always)]
    pub(crate) fn unlinked(&mut self, tables: u64) {
        self.unlinked += tables;
        self.unflushed |= tables != 0;
    }

    /// Whether something was cleared or unlinked since the last flush.
    pub(crate) fn needs_flush(&self) -> bool {
        self.unflushed
    }

    /// Runs a format's zap to its end: calls `step` with the tables borrowed from `lock` until
    /// it is [`Pause::Done`], flushing and freeing when its list of unlinked tables is full,
    /// and freeing and yielding when it asks to yield.  What the last step cleared and
    /// unlinked is left for [`Zap::flush_and_free()`], once the caller is done with the lock.
    pub(crate) fn run<L: ZapLock>(
        &mut self,
        lock: &mut L,
        mut step: impl FnMut(&mut L::Mmu, &mut Self) -> Pause,
    ) {
        loop {
            let Some(mmu) = lock.mmu() else {
                return;
            };
            match step(mmu, self) {
                Pause::Done => return,
                Pause::TablesFull => self.flush_and_free(lock),
                Pause::Yield => {
                    // The step flushed when it decided to yield; never drop the lock with
                    // anything unflushed, whatever a step does.
                    debug_assert!(!self.unflushed, "a zap yields before it flushes");
                    if self.unflushed {
                        self.flush();
                    }
                    self.free(lock);
                    lock.resched();
                }
            }
        }
    }

    /// Flushes if anything was cleared or unlinked since the last flush, counting an elided
    /// flush otherwise; then frees the tables unlinked, which only that flush made sure no vCPU
    /// walks any more.  The end of every zap, before the lock is dropped.
    pub(crate) fn flush_and_free<L: ZapLock>(&mut self, lock: &mut L) {
        self.flush();
        self.free(lock);
    }

    /// Frees the tables unlinked, after the flush that followed their unlink.
    fn free<L: ZapLock>(&mut self, lock: &mut L) {
        if let Some(mmu) = lock.mmu() {
            mmu.free_zapped_tables();
        }
    }
}

impl<Y: Yield> YieldHook for Zap<Y> {
    #[inline]
    fn should_yield(&mut self) -> bool {
        self.y.should_yield()
    }

    #[inline]
    fn flush(&mut self) {
        if self.unflushed {
            self.y.flush_tlbs();
            self.unflushed = false;
        } else {
            self.y.flush_elided();
        }
    }
}

/// A [`Yield`] that never yields, and leaves flushing to the caller of the zap: for zaps that
/// unlink no table (the teardown's, a slot's detach), so that nothing is freed before the
/// caller's flush, or of tables no vCPU walks (tests).
pub(crate) struct NoYield;

impl Yield for NoYield {
    #[inline]
    fn should_yield(&mut self) -> bool {
        false
    }

    #[inline]
    fn flush_tlbs(&mut self) {}

    #[inline]
    fn flush_elided(&mut self) {}
}

/// A [`ZapLock`] for tables the caller owns, or borrows mutably and does not give up: its
/// [`ZapLock::resched()`] has no lock to drop.
pub(crate) struct Owned<'m, M>(pub(crate) &'m mut M);

impl<M: ZapTables> ZapLock for Owned<'_, M> {
    type Mmu = M;

    #[inline]
    fn mmu(&mut self) -> Option<&mut M> {
        Some(self.0)
    }

    #[inline]
    fn resched(&mut self) {}
}
