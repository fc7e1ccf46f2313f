// SPDX-License-Identifier: GPL-2.0

//! Polled RCU grace periods.
//!
//! C header: [`include/linux/rcupdate.h`](srctree/include/linux/rcupdate.h)
//!
//! `kernel::sync::rcu` has the read-side guard, `synchronize_rcu()` and
//! `rcu_barrier()`; this adds the polled API, for freeing what readers may
//! still see without waiting for a grace period in place: take a
//! [`GracePeriodState`] when the object is unpublished, and free it once
//! [`GracePeriodState::completed`] says a full grace period has passed.
//! Since the flavours were consolidated, a region with preemption (or
//! interrupts, or bottom halves) disabled is a read side too.
//!
//! # Examples
//!
//! ```
//! use crate::ext::rcu::GracePeriodState;
//!
//! let state = GracePeriodState::get();
//! // ... readers that started before `get()` may still run ...
//! if !state.completed() {
//!     kernel::sync::rcu::synchronize_rcu();
//! }
//! assert!(state.completed());
//! ```

use super::bindings;
use kernel::ffi::c_ulong;

/// A snapshot of RCU's grace-period state (`get_state_synchronize_rcu()`),
/// which tells later whether a full grace period has passed since.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GracePeriodState(c_ulong);

impl GracePeriodState {
    /// Snapshots the grace-period state, without starting a grace period.
    /// Any context.
    #[inline]
    pub(crate) fn get() -> Self {
        // SAFETY: Always safe to call.
        Self(unsafe { bindings::get_state_synchronize_rcu() })
    }

    /// Whether a full grace period has passed since the snapshot
    /// (`poll_state_synchronize_rcu()`): every RCU reader that could have
    /// been running when it was taken has finished. Any context.
    #[inline]
    pub(crate) fn completed(&self) -> bool {
        // SAFETY: Always safe to call, on a value of
        // `get_state_synchronize_rcu()`.
        unsafe { bindings::poll_state_synchronize_rcu(self.0) }
    }
}
