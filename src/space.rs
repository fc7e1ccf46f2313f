// SPDX-License-Identifier: GPL-2.0

//! A space: one open `/dev/secmmu`, bound to its opener's mm.
//!
//! Lock order (outermost first):
//! 1. the mm core's locks around notifier callbacks (mmap_lock, i_mmap,
//!    page table locks): callbacks may run with any of them held, so
//!    nothing below may be held while calling into the mm core;
//! 2. [`Space::inval`], a spinlock: held only to update or check the
//!    invalidation state, never across a sleep.
//!
//! Lifetime: a space lives in an `Arc`. Its notifier is its first field, so
//! when the last reference goes, `mmu_notifier_unregister()` (which waits for
//! running callbacks) runs before any other field is dropped.

use crate::{
    inval::Invalidations,
    notifier::{impl_has_mmu_notifier, MmuNotifier, MmuNotifierOps, Range},
    stats::Stats,
    uapi,
};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    mm::MmWithUser,
    new_spinlock,
    prelude::*,
    sync::{Arc, SpinLock},
};

/// The state of one open `/dev/secmmu`.
#[pin_data]
pub(crate) struct Space {
    /// First field: dropped (unregistered) before everything else.
    #[pin]
    notifier: MmuNotifier<Space>,
    /// Invalidations in progress, and the retry sequence (A2).
    #[pin]
    inval: SpinLock<Invalidations>,
    /// Set by `release()`: the mm's address space is gone (A5).
    released: AtomicBool,
    stats: Stats,
}

impl_has_mmu_notifier!(Space, notifier);

impl Space {
    /// Creates a space for the calling task's mm and subscribes to it.
    pub(crate) fn create(mm: &MmWithUser) -> Result<Arc<Self>> {
        let space = Arc::pin_init(
            try_pin_init!(Self {
                notifier <- MmuNotifier::new(mm),
                inval <- new_spinlock!(Invalidations::new(), "secmmu_inval"),
                released: AtomicBool::new(false),
                stats: Stats::default(),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: The space lives in an `Arc`, which never moves its
        // contents, so its notifier is pinned.
        let notifier = unsafe { Pin::new_unchecked(&space.notifier) };
        notifier.register(mm)?;
        Ok(space)
    }

    /// Checks that an ioctl may use this space: it must come from the
    /// creator's mm (a forked child or a process the fd was passed to gets
    /// `EIO`, like KVM), and that mm must still have its address space.
    pub(crate) fn check_caller(&self) -> Result {
        let task = kernel::current!();
        let Some(mm) = task.mm() else {
            return Err(EIO);
        };
        if mm.as_raw() != self.notifier.mm().as_raw() {
            return Err(EIO);
        }
        // Acquire pairs with the release store in `release()`: a caller that
        // sees the space alive also sees everything set up before.
        if self.released.load(Ordering::Acquire) {
            return Err(EIO);
        }
        Ok(())
    }

    /// Fills `SECMMU_GET_STATS`'s answer.
    pub(crate) fn stats(&self) -> uapi::secmmu_stats {
        uapi::secmmu_stats {
            invalidations: self.stats.invalidations.get(),
            invalidations_nonblock: self.stats.invalidations_nonblock.get(),
            invalidated_pages: self.stats.invalidated_pages.get(),
            ..Default::default()
        }
    }
}

impl MmuNotifierOps for Space {
    fn release(&self) {
        // From here on every ioctl fails with EIO and nothing may touch the
        // mm's pages: the address space is being (or has been) torn down.
        self.released.store(true, Ordering::Release);
    }

    fn invalidate_range_start(&self, range: &Range) -> Result {
        self.stats.invalidations.inc();
        if !range.blockable {
            self.stats.invalidations_nonblock.inc();
        }
        let pages = (range.end - range.start) >> kernel::page::PAGE_SHIFT;
        self.stats.invalidated_pages.add(pages as u64);
        self.inval.lock().begin(range.start, range.end);
        Ok(())
    }

    fn invalidate_range_end(&self, _range: &Range) {
        self.inval.lock().end();
    }
}
