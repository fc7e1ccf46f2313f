// SPDX-License-Identifier: GPL-2.0

//! A reader-writer spinlock (`rwlock_t`).
//!
//! C header: [`include/linux/rwlock.h`](srctree/include/linux/rwlock.h)
//!
//! The kernel crate has `Mutex` and `SpinLock` but no reader-writer
//! spinlock. [`RwLock::write`] returns a [`WriteGuard`] that derefs
//! mutably: the only way to get `&mut T`, so a function that takes `&mut T`
//! (or the guard) proves the write side is held. A [`ReadGuard`] derefs
//! shared; readers run in parallel. Both sides spin, with preemption
//! disabled: nothing that sleeps may run under either, and both guards
//! hand out a [`PreemptDisabled`] proof.
//!
//! Each [`new_rwlock!`] call site is a lockdep class of its own, as for
//! `new_spinlock!`. Long walks under the write side poll
//! [`RwLock::contended`] and [`need_resched()`](super::sched::need_resched)
//! and call [`WriteGuard::resched`], as C code calls
//! `cond_resched_rwlock_write()`.
//!
//! On `PREEMPT_RT`, `rwlock_t` is a sleeping lock that keeps preemption
//! enabled: the guards give no [`PreemptDisabled`] proof there.
//!
//! # Examples
//!
//! ```
//! use crate::ext::rwlock::{new_rwlock, RwLock};
//!
//! #[pin_data]
//! struct Counter {
//!     #[pin]
//!     value: RwLock<u64>,
//! }
//!
//! let c = KBox::pin_init(pin_init!(Counter { value <- new_rwlock!(0) }), GFP_KERNEL)?;
//! *c.value.write() += 1;
//! assert_eq!(*c.value.read(), 1);
//! # Ok::<(), Error>(())
//! ```

use super::bindings;
#[cfg(not(CONFIG_PREEMPT_RT))]
use super::preempt::PreemptDisabled;
use core::{
    cell::UnsafeCell,
    ops::{Deref, DerefMut},
};
use kernel::{
    prelude::*,
    sync::LockClassKey,
    types::{NotThreadSafe, Opaque},
};

/// Creates a [`RwLock`] initializer with the given name and a lockdep class
/// of its own for the call site.
///
/// The name defaults to the file name and line of the call.
macro_rules! new_rwlock {
    ($inner:expr $(, $name:literal)? $(,)?) => {
        $crate::ext::rwlock::RwLock::new(
            $inner,
            ::kernel::optional_name!($($name)?),
            ::kernel::static_lock_class!(),
        )
    };
}
pub(crate) use new_rwlock;

/// An `rwlock_t` and the data it protects.
///
/// The data is not structurally pinned.
///
/// # Invariants
///
/// `lock` is an initialized `rwlock_t` (it is pinned from its
/// initialization on).
#[pin_data]
pub(crate) struct RwLock<T> {
    #[pin]
    lock: Opaque<bindings::rwlock_t>,
    data: UnsafeCell<T>,
}

// SAFETY: Moving the lock moves the data: `T: Send` suffices.
unsafe impl<T: Send> Send for RwLock<T> {}
// SAFETY: The lock hands out `&mut T` to one writer at a time, with no
// reader, and `&T` to readers in parallel: `T: Send + Sync` suffices.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}

impl<T> RwLock<T> {
    /// A new, unlocked lock around `data`, of the lockdep class `key`. Use
    /// [`new_rwlock!`] instead: it makes a class for its call site.
    pub(crate) fn new(
        data: T,
        name: &'static CStr,
        key: Pin<&'static LockClassKey>,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            // INVARIANT: The lock is initialized in place, and pinned.
            // SAFETY: `slot` is valid for writes during the call; `name` and
            // `key` are static, so they outlive the lock.
            lock <- Opaque::ffi_init(|slot| unsafe {
                bindings::secmmu_rwlock_init(slot, name.as_char_ptr(), key.as_ptr())
            }),
            data: UnsafeCell::new(data),
        })
    }

    /// Takes the write side (`write_lock()`), spinning.
    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        // SAFETY: By the type invariants, the lock is initialized.
        unsafe { bindings::secmmu_write_lock(self.lock.get()) };
        // INVARIANT: We just took the write side.
        WriteGuard {
            lock: self,
            _not_send: NotThreadSafe,
        }
    }

    /// Takes the read side (`read_lock()`), spinning.
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        // SAFETY: By the type invariants, the lock is initialized.
        unsafe { bindings::secmmu_read_lock(self.lock.get()) };
        // INVARIANT: We just took the read side.
        ReadGuard {
            lock: self,
            _not_send: NotThreadSafe,
        }
    }

    /// Whether another CPU waits for the lock, on a preemptible kernel
    /// (`rwlock_needbreak()`): a long walk under the write side then drops
    /// it ([`WriteGuard::resched`]). Always false on other preemption
    /// models, as in C.
    #[inline]
    pub(crate) fn contended(&self) -> bool {
        // SAFETY: By the type invariants, the lock is initialized; reading
        // its state is fine whoever holds it.
        unsafe { bindings::secmmu_rwlock_needbreak(self.lock.get()) }
    }
}

/// The write side of a [`RwLock`], held; released when dropped.
///
/// # Invariants
///
/// The current thread holds the write side of `lock`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a RwLock<T>,
    _not_send: NotThreadSafe,
}

impl<'a, T> WriteGuard<'a, T> {
    /// The lock this guard holds.
    pub(crate) fn lock_ref(&self) -> &'a RwLock<T> {
        self.lock
    }

    /// Drops the lock, reschedules if needed (`cond_resched()`), and takes
    /// it again: what `cond_resched_rwlock_write()` does once it decided to
    /// yield. Whatever was derived from the guard before is gone: the
    /// borrow checker ends every such borrow at this call.
    pub(crate) fn resched(&mut self) {
        // SAFETY: By the type invariants we hold the write side; no
        // reference derived from this guard outlives the `&mut self` borrow
        // of this call.
        unsafe { bindings::secmmu_write_unlock(self.lock.lock.get()) };
        // We hold no spinning lock now.
        super::sched::cond_resched();
        // INVARIANT: We hold the write side again.
        // SAFETY: By the type invariants of `RwLock`, the lock is
        // initialized.
        unsafe { bindings::secmmu_write_lock(self.lock.lock.get()) };
    }

    /// The proof that preemption is disabled while the guard is borrowed.
    #[cfg(not(CONFIG_PREEMPT_RT))]
    pub(crate) fn preempt_disabled(&self) -> PreemptDisabled<'_> {
        // SAFETY: The write side of a spinning rwlock is held, by the type
        // invariants, until the guard drops: preemption is disabled until
        // then.
        unsafe { PreemptDisabled::new_unchecked() }
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: By the type invariants the write side is held: no one
        // else accesses the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: By the type invariants the write side is held: no one
        // else accesses the data.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: By the type invariants we hold the write side.
        unsafe { bindings::secmmu_write_unlock(self.lock.lock.get()) };
    }
}

/// The read side of a [`RwLock`], held; released when dropped.
///
/// # Invariants
///
/// The current thread holds the read side of `lock`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a RwLock<T>,
    _not_send: NotThreadSafe,
}

impl<'a, T> ReadGuard<'a, T> {
    /// The lock this guard holds.
    pub(crate) fn lock_ref(&self) -> &'a RwLock<T> {
        self.lock
    }

    /// The proof that preemption is disabled while the guard is borrowed.
    #[cfg(not(CONFIG_PREEMPT_RT))]
    pub(crate) fn preempt_disabled(&self) -> PreemptDisabled<'_> {
        // SAFETY: The read side of a spinning rwlock is held, by the type
        // invariants, until the guard drops: preemption is disabled until
        // then.
        unsafe { PreemptDisabled::new_unchecked() }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: By the type invariants the read side is held: writers are
        // excluded, and readers only get shared references.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: By the type invariants we hold the read side.
        unsafe { bindings::secmmu_read_unlock(self.lock.lock.get()) };
    }
}
