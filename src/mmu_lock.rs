// SPDX-License-Identifier: GPL-2.0

//! The MMU lock: an `rwlock_t` guarding a space's page tables and memslots.
//!
//! The kernel's Rust has `Mutex` and `SpinLock` but no reader-writer
//! spinlock, and KVM's MMU lock is one: the x86 shadow MMU changes tables
//! under the write side, arm64 stage-2 faults run in parallel under the read
//! side. Both sides spin; nothing that sleeps may run under either.
//!
//! [`MmuLock::write`] returns a [`WriteGuard`] that derefs mutably, and is
//! the only way to get `&mut T`: a function that takes `&mut T` (or the
//! guard) proves the write side is held. A [`ReadGuard`] derefs shared.
//!
//! The kernel-free core takes its own proof tokens (it is compiled for the
//! host too): they are made here, and only here, from the kernel's real
//! guards.

use crate::{bindings, ext::preempt::PreemptDisabled, prim::NoPreempt};
use core::{
    cell::UnsafeCell,
    ops::{Deref, DerefMut},
};
use kernel::{prelude::*, types::Opaque};

/// An `rwlock_t` and the data it protects.
#[pin_data]
pub(crate) struct MmuLock<T> {
    #[pin]
    lock: Opaque<bindings::rwlock_t>,
    data: UnsafeCell<T>,
}

// SAFETY: The lock serializes writers against everyone and hands out only
// shared references to readers, so `T: Send + Sync` suffices.
unsafe impl<T: Send + Sync> Sync for MmuLock<T> {}
// SAFETY: Moving the lock moves the data; `T: Send` suffices.
unsafe impl<T: Send> Send for MmuLock<T> {}

impl<T> MmuLock<T> {
    /// A new, unlocked MMU lock around `data`.
    pub(crate) fn new(data: T) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `rwlock_init()` initializes the `rwlock_t` in place,
            // which is pinned from here on.
            lock <- Opaque::ffi_init(|slot| unsafe { bindings::secmmu_rwlock_init(slot) }),
            data: UnsafeCell::new(data),
        })
    }

    /// Takes the write side, spinning.
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        // SAFETY: The lock was initialized by `new`.
        unsafe { bindings::secmmu_write_lock(self.lock.get()) };
        WriteGuard { lock: self }
    }

    /// Takes the read side, spinning.
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        // SAFETY: The lock was initialized by `new`.
        unsafe { bindings::secmmu_read_lock(self.lock.get()) };
        ReadGuard { lock: self }
    }
}

/// The write side of an [`MmuLock`], held.
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a MmuLock<T>,
}

impl<T> MmuLock<T> {
    /// Is a CPU spinning for this lock? Long walks under the write side
    /// poll this (next to `need_resched()`) to know when to yield.
    pub(crate) fn contended(&self) -> bool {
        // SAFETY: The lock was initialized by `new`; reading its state is
        // fine whoever holds it.
        unsafe { bindings::secmmu_rwlock_needbreak(self.lock.get()) }
    }
}

impl<T> WriteGuard<'_, T> {
    /// Drops the lock, reschedules if needed, and takes it again. Whatever
    /// was derived from the guard before is gone: the borrow checker ends
    /// every such borrow at this call.
    pub(crate) fn resched(&mut self) {
        // SAFETY: We hold the write side; no reference derived from this
        // guard outlives the `&mut self` borrow of this call.
        unsafe { bindings::secmmu_write_unlock(self.lock.lock.get()) };
        // We hold no spinning lock now.
        crate::ext::sched::cond_resched();
        // SAFETY: The lock is initialized.
        unsafe { bindings::secmmu_write_lock(self.lock.lock.get()) };
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: The write side is held: no one else accesses the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: The write side is held: no one else accesses the data.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: We hold the write side.
        unsafe { bindings::secmmu_write_unlock(self.lock.lock.get()) };
    }
}

/// The read side of an [`MmuLock`], held.
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a MmuLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: The read side is held: writers are excluded, and readers
        // only get shared references.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: We hold the read side.
        unsafe { bindings::secmmu_read_unlock(self.lock.lock.get()) };
    }
}

impl<'a> From<PreemptDisabled<'a>> for NoPreempt<'a> {
    /// The core's proof that preemption is disabled, from the kernel's.
    fn from(_proof: PreemptDisabled<'a>) -> Self {
        // SAFETY: `_proof` shows that preemption stays disabled on this CPU
        // for `'a`, which the token cannot outlive.
        unsafe { NoPreempt::assume() }
    }
}
