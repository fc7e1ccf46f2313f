// SPDX-License-Identifier: GPL-2.0

//! Voluntary preemption points.
//!
//! C header: [`include/linux/sched.h`](srctree/include/linux/sched.h)
//!
//! Long loops in process context call [`cond_resched()`] between steps, and
//! loops under a spinning lock poll [`need_resched()`] (next to the lock's
//! own contention check, e.g. [`RwLock::contended`]) to know when to drop
//! the lock and call it, like the kernel's `cond_resched_rwlock_write()`.
//!
//! [`RwLock::contended`]: super::rwlock::RwLock::contended

use super::bindings;

/// Gives the CPU away if the scheduler wants it (`cond_resched()`).
///
/// Only in a context that may sleep: no spinning lock held, preemption and
/// interrupts enabled. On a fully preemptible kernel it is (nearly) a no-op;
/// elsewhere it is where a long kernel loop lets other tasks run.
#[inline]
pub(crate) fn cond_resched() {
    // SAFETY: Always safe to call; calling it in atomic context is a bug the
    // kernel reports (`might_resched()`), not undefined behaviour.
    unsafe { bindings::secmmu_cond_resched() };
}

/// Whether the scheduler wants the CPU back (`need_resched()`): a task
/// holding a spinning lock should drop it and call [`cond_resched()`].
#[inline]
pub(crate) fn need_resched() -> bool {
    // SAFETY: Reads the current task's flags; always safe.
    unsafe { bindings::secmmu_need_resched() }
}
