// SPDX-License-Identifier: GPL-2.0

//! A spinlock that spins on every kernel, `PREEMPT_RT` included, with
//! interrupts disabled while it is held (`raw_spinlock_t` with
//! `raw_spin_lock_irqsave()`).
//!
//! C header: [`include/linux/spinlock.h`](srctree/include/linux/spinlock.h)
//!
//! The kernel crate's `SpinLock` and `SpinLockIrq` wrap `spinlock_t`, which
//! `PREEMPT_RT` turns into a sleeping lock: lockdep's wait-context check
//! (`CONFIG_PROVE_RAW_LOCK_NESTING`) rejects it in hard IRQ context, e.g.
//! in an hrtimer callback of a `*HardMode` timer, on every kernel. Data that
//! hard IRQ code shares with process context takes a [`RawSpinLockIrq`].
//! Its critical sections must be short and must not take a `spinlock_t` or
//! anything that sleeps.
//!
//! It is a [`Lock`] with its own [`Backend`]: [`RawSpinLockIrq::lock()`]
//! returns a [`Guard`] that restores the interrupt state when dropped. Each
//! [`new_raw_spinlock_irq!`] call site is a lockdep class of its own.
//!
//! # Examples
//!
//! ```
//! use crate::ext::raw_spinlock::{new_raw_spinlock_irq, RawSpinLockIrq};
//!
//! #[pin_data]
//! struct Ticks {
//!     #[pin]
//!     n: RawSpinLockIrq<u64>,
//! }
//!
//! let t = KBox::pin_init(pin_init!(Ticks { n <- new_raw_spinlock_irq!(0) }), GFP_KERNEL)?;
//! *t.n.lock() += 1;
//! assert_eq!(*t.n.lock(), 1);
//! # Ok::<(), Error>(())
//! ```

use super::bindings;
use kernel::sync::lock::{Backend, Guard, Lock};

/// Creates a [`RawSpinLockIrq`] initializer with the given name and a
/// lockdep class of its own for the call site.
///
/// The name defaults to the file name and line of the call.
macro_rules! new_raw_spinlock_irq {
    ($inner:expr $(, $name:literal)? $(,)?) => {
        $crate::ext::raw_spinlock::RawSpinLockIrq::new(
            $inner,
            ::kernel::optional_name!($($name)?),
            ::kernel::static_lock_class!(),
        )
    };
}
pub(crate) use new_raw_spinlock_irq;

/// A `raw_spinlock_t` around `T`, taken with interrupts disabled.
pub(crate) type RawSpinLockIrq<T> = Lock<T, RawSpinLockIrqBackend>;

/// A [`RawSpinLockIrq`], held.
pub(crate) type RawSpinLockIrqGuard<'a, T> = Guard<'a, T, RawSpinLockIrqBackend>;

/// The [`Backend`] of [`RawSpinLockIrq`]: `raw_spin_lock_irqsave()`, with
/// the saved interrupt state kept in the guard.
pub(crate) struct RawSpinLockIrqBackend;

// SAFETY: `lock` and `try_lock` take the raw spinlock with interrupts
// disabled and return the saved flags, which `unlock` restores after
// releasing it: only one thread holds it at a time. `relock` is the default,
// which takes it again the same way.
unsafe impl Backend for RawSpinLockIrqBackend {
    type State = bindings::raw_spinlock_t;
    type GuardState = usize;

    unsafe fn init(
        ptr: *mut Self::State,
        name: *const kernel::ffi::c_char,
        key: *mut bindings::lock_class_key,
    ) {
        // SAFETY: The safety requirements ensure that `ptr` is valid for
        // writes, and `name` and `key` are valid indefinitely.
        unsafe { bindings::secmmu_raw_spin_lock_init(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: The safety requirements of this function ensure that
        // `ptr` points to a valid lock, initialized by `init`.
        unsafe { bindings::secmmu_raw_spin_lock_irqsave(ptr) }
    }

    unsafe fn try_lock(ptr: *mut Self::State) -> Option<Self::GuardState> {
        let mut flags = 0;
        // SAFETY: As for `lock`; `flags` is a valid place for the saved
        // interrupt state.
        unsafe { bindings::secmmu_raw_spin_trylock_irqsave(ptr, &mut flags) }.then_some(flags)
    }

    unsafe fn unlock(ptr: *mut Self::State, flags: &Self::GuardState) {
        // SAFETY: The safety requirements of this function ensure that the
        // caller owns the lock, taken with `lock` or `try_lock`, which saved
        // `flags`.
        unsafe { bindings::secmmu_raw_spin_unlock_irqrestore(ptr, *flags) }
    }

    unsafe fn assert_is_held(ptr: *mut Self::State) {
        // SAFETY: The safety requirements ensure that the lock is
        // initialized.
        unsafe { bindings::secmmu_raw_spin_assert_is_held(ptr) }
    }
}
