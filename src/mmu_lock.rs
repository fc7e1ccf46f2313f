// SPDX-License-Identifier: GPL-2.0

//! The MMU lock, and the kernel-free core's proof tokens.
//!
//! The MMU lock is an `rwlock_t` ([`RwLock`], in `rust/rwlock.rs`) around a
//! space's page tables, memslots and invalidation retry state, as KVM's
//! `mmu_lock`: one format changes tables under the write side, another
//! faults in parallel under the read side (`Format::FaultSide`). Both sides
//! spin; nothing that sleeps may run under either.
//!
//! The core takes its own proof tokens ([`MmuWriteLocked`], [`NoPreempt`]),
//! as it is compiled for the host too. In the kernel they are made here,
//! and only here, from real guards: a write guard of the MMU lock, or a
//! [`PreemptDisabled`] proof (from a `PreemptGuard` or a lock guard).

use crate::{
    ext::{preempt::PreemptDisabled, rwlock},
    mmu::prim::{MmuWriteLocked, NoPreempt},
};

/// The MMU lock around `T`.
pub(crate) type MmuLock<T> = rwlock::RwLock<T>;

/// The MMU lock, held for write: derefs to `&mut T`.
pub(crate) type WriteGuard<'a, T> = rwlock::WriteGuard<'a, T>;

/// The core's proof that the MMU lock is held for write, from the guard.
///
/// The token borrows the guard mutably, so a thread has one at a time and
/// cannot touch the guarded data through the guard meanwhile.
///
/// # Safety
///
/// The guard's lock must be the one that serializes every writer of the
/// rmaps the token is used on (the space's MMU lock, or in a test the lock
/// of the test's own rmaps): the token does not name its lock.
pub(crate) unsafe fn write_locked<'a, T>(_guard: &'a mut WriteGuard<'_, T>) -> MmuWriteLocked<'a> {
    // SAFETY: The write side is held, with preemption disabled (a spinning
    // lock), until the guard drops, which the token cannot outlive; the
    // caller guarantees that it is the lock of the rmaps' writers.
    unsafe { MmuWriteLocked::assume() }
}

impl<'a> From<PreemptDisabled<'a>> for NoPreempt<'a> {
    /// The core's proof that preemption is disabled, from the kernel's.
    fn from(_proof: PreemptDisabled<'a>) -> Self {
        // SAFETY: `_proof` shows that preemption stays disabled on this CPU
        // for `'a`, which the token cannot outlive.
        unsafe { NoPreempt::assume() }
    }
}
