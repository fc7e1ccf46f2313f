// SPDX-License-Identifier: GPL-2.0

//! Disabling preemption.
//!
//! C header: [`include/linux/preempt.h`](srctree/include/linux/preempt.h)
//!
//! [`PreemptGuard`] keeps the current task on its CPU, unpreempted, until it
//! is dropped. Code that needs preemption disabled (a bit lock other CPUs
//! spin on, an RCU-sched read side, per-CPU state) takes a
//! [`PreemptDisabled`] proof, which the guard hands out, and so do the
//! guards of spinning locks.
//!
//! # Examples
//!
//! ```
//! use crate::ext::preempt::{PreemptDisabled, PreemptGuard};
//!
//! fn spin_on_bit(_proof: PreemptDisabled<'_>) {}
//!
//! let guard = PreemptGuard::new();
//! spin_on_bit(guard.proof());
//! drop(guard); // preempt_enable()
//! ```

use super::bindings;
use core::marker::PhantomData;
use kernel::types::NotThreadSafe;

/// Evidence that preemption is disabled on the current CPU for `'a`.
///
/// Not `Send`: the property is the current CPU's.
///
/// # Invariants
///
/// Preemption is disabled on the current CPU while the value lives.
#[derive(Clone, Copy)]
pub(crate) struct PreemptDisabled<'a> {
    _lifetime: PhantomData<&'a ()>,
    _not_send: NotThreadSafe,
}

impl PreemptDisabled<'_> {
    /// Creates the proof for a context that disables preemption by other
    /// means (a held spinning lock, disabled interrupts).
    ///
    /// # Safety
    ///
    /// Preemption must stay disabled on the current CPU for as long as the
    /// returned value lives.
    #[inline]
    pub(crate) unsafe fn new_unchecked() -> Self {
        // INVARIANT: The caller guarantees that preemption stays disabled.
        Self {
            _lifetime: PhantomData,
            _not_send: NotThreadSafe,
        }
    }
}

/// Preemption disabled on the current CPU (`preempt_disable()`) until the
/// guard is dropped (`preempt_enable()`, which reschedules if needed).
///
/// Nothing that sleeps may run while it lives. Guards nest.
///
/// # Invariants
///
/// The guard owns one `preempt_disable()` of the current CPU, not yet undone.
#[must_use = "preemption is enabled again as soon as the guard is dropped"]
pub(crate) struct PreemptGuard(NotThreadSafe);

impl PreemptGuard {
    /// Disables preemption.
    #[inline]
    pub(crate) fn new() -> Self {
        // SAFETY: Always safe; undone by the drop, on this CPU since the
        // guard is not `Send`.
        unsafe { bindings::secmmu_preempt_disable() };
        // INVARIANT: Preemption was just disabled.
        Self(NotThreadSafe)
    }

    /// The proof that preemption is disabled, for as long as the guard is
    /// borrowed.
    #[inline]
    pub(crate) fn proof(&self) -> PreemptDisabled<'_> {
        // SAFETY: By the type invariants, preemption stays disabled until
        // the guard drops, which the borrow outlives.
        unsafe { PreemptDisabled::new_unchecked() }
    }
}

impl Default for PreemptGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PreemptGuard {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: By the type invariants, this undoes the guard's own
        // `preempt_disable()`, on the same CPU.
        unsafe { bindings::secmmu_preempt_enable() };
    }
}
