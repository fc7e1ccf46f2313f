// SPDX-License-Identifier: GPL-2.0

//! A Rust wrapper for `struct mmu_notifier`.
//!
//! The kernel's Rust has no mmu_notifier abstraction; this is the thin one
//! secmmu needs. A type embeds an [`MmuNotifier<T>`], implements
//! [`MmuNotifierOps`] for the callbacks and [`HasMmuNotifier`] (with
//! [`impl_has_mmu_notifier!`]) so a callback can find its container.
//!
//! Lifetime rules (protocols.md A5, seed 001):
//! - [`MmuNotifier::register`] binds the notifier to the mm it was created
//!   with; the wrapper holds an `mmgrab()` reference (an `ARef<Mm>`) so the
//!   `mm_struct` outlives the subscription even after `exit_mmap()`.
//! - `release()` runs exactly once: from `exit_mmap()` when the process
//!   exits first, or from `mmu_notifier_unregister()` when the owner drops
//!   first. After it, no other callback runs.
//! - Dropping the wrapper calls `mmu_notifier_unregister()`, which waits
//!   (SRCU) for every callback still running. So a callback's `&T` is valid
//!   for the whole callback as long as the container drops its notifier
//!   before anything a callback uses: make it the container's first field.

use crate::bindings;
use core::{
    marker::PhantomData,
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    mm::{Mm, MmWithUser},
    prelude::*,
    sync::aref::ARef,
    types::Opaque,
};

/// An invalidation as the mm core reports it.
pub(crate) struct Range {
    /// First host virtual address of the range.
    pub(crate) start: usize,
    /// First address past the range (exclusive, A4).
    pub(crate) end: usize,
    /// Whether the callback may sleep (`mmu_notifier_range_blockable()`).
    pub(crate) blockable: bool,
}

/// The callbacks of a secondary MMU.
pub(crate) trait MmuNotifierOps: Sync {
    /// The mm is going away (`exit_mmap()`) or the notifier is being
    /// unregistered: remove every mapping; no callback follows.
    fn release(&self);

    /// Remove every mapping of `range` before returning. When the range is
    /// not blockable, do so without sleeping or yielding.
    ///
    /// It cannot fail: the one error the mm core takes, `-EAGAIN` for a
    /// range that is not blockable, is only for notifiers without an
    /// `invalidate_range_end` (after a failure the mm core calls `end` on
    /// every notifier, so it could not tell whose `start` failed, and
    /// WARNs), and this trait always has one.
    fn invalidate_range_start(&self, range: &Range);

    /// The invalidation of `range` is complete.
    fn invalidate_range_end(&self, range: &Range);

    /// Clear the accessed state of `[start, end)`; was any of it young?
    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    /// As [`Self::clear_young`], and flush the cached translations too.
    fn clear_flush_young(&self, start: usize, end: usize) -> bool {
        self.clear_young(start, end)
    }

    /// Was the page at `addr` accessed? Never clears anything (D20).
    fn test_young(&self, _addr: usize) -> bool {
        false
    }
}

/// A type that embeds an [`MmuNotifier`] of itself.
///
/// # Safety
///
/// [`HasMmuNotifier::container_of`] must return the address of the `Self`
/// that embeds the given notifier, for every notifier embedded in a `Self`.
/// Implement it with [`impl_has_mmu_notifier!`].
pub(crate) unsafe trait HasMmuNotifier: MmuNotifierOps + Sized {
    /// Returns the container of `notifier`.
    ///
    /// # Safety
    ///
    /// `notifier` must point to the notifier field of a valid `Self`.
    unsafe fn container_of(notifier: *const MmuNotifier<Self>) -> *const Self;
}

/// Implements [`HasMmuNotifier`] for a type with a notifier field.
macro_rules! impl_has_mmu_notifier {
    ($type:ty, $field:ident) => {
        // SAFETY: `container_of!` computes the container from the field's
        // offset, which is what the trait requires.
        unsafe impl $crate::notifier::HasMmuNotifier for $type {
            unsafe fn container_of(
                notifier: *const $crate::notifier::MmuNotifier<Self>,
            ) -> *const Self {
                // SAFETY: The caller guarantees that `notifier` is the
                // `$field` of a valid `Self`.
                unsafe { ::kernel::container_of!(notifier.cast_mut(), Self, $field) }
            }
        }
    };
}
pub(crate) use impl_has_mmu_notifier;

/// A `struct mmu_notifier` embedded in a `T`.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct MmuNotifier<T: HasMmuNotifier> {
    /// Must stay the first field: callbacks cast the raw pointer back.
    #[pin]
    raw: Opaque<bindings::mmu_notifier>,
    /// The mm this notifier is (to be) registered with, pinned by mmgrab.
    mm: ARef<Mm>,
    registered: AtomicBool,
    _t: PhantomData<T>,
}

// SAFETY: The raw notifier is only touched by the mm core under its own
// locking, and by `register`/`drop`, which the owner serializes.
unsafe impl<T: HasMmuNotifier> Send for MmuNotifier<T> {}
// SAFETY: As above: no method gives out unsynchronized access to `raw`.
unsafe impl<T: HasMmuNotifier> Sync for MmuNotifier<T> {}

impl<T: HasMmuNotifier> MmuNotifier<T> {
    const OPS: bindings::mmu_notifier_ops = bindings::mmu_notifier_ops {
        release: Some(Self::release_cb),
        clear_flush_young: Some(Self::clear_flush_young_cb),
        clear_young: Some(Self::clear_young_cb),
        test_young: Some(Self::test_young_cb),
        invalidate_range_start: Some(Self::invalidate_range_start_cb),
        invalidate_range_end: Some(Self::invalidate_range_end_cb),
        arch_invalidate_secondary_tlbs: None,
        alloc_notifier: None,
        free_notifier: None,
    };

    /// Creates an unregistered notifier for `mm` (normally `current->mm`).
    pub(crate) fn new(mm: &MmWithUser) -> impl PinInit<Self> {
        let raw = bindings::mmu_notifier {
            ops: &Self::OPS,
            ..Default::default()
        };
        let mm: ARef<Mm> = ARef::from(&**mm);
        pin_init!(Self {
            raw: Opaque::new(raw),
            mm,
            registered: AtomicBool::new(false),
            _t: PhantomData,
        })
    }

    /// The mm this notifier follows. Its `mm_struct` stays allocated, but
    /// its address space may already be gone (after `release`).
    pub(crate) fn mm(&self) -> &Mm {
        &self.mm
    }

    /// Subscribes to the mm's events. Call once, after the container is
    /// fully initialized: callbacks may run before this returns.
    ///
    /// The caller must be a task whose `mm` is this notifier's mm (so the mm
    /// has users, as `mmu_notifier_register()` requires).
    pub(crate) fn register(self: Pin<&Self>, current_mm: &MmWithUser) -> Result {
        if current_mm.as_raw() != self.mm.as_raw() {
            return Err(EINVAL);
        }
        if self.registered.load(Ordering::Relaxed) {
            return Err(EBUSY);
        }
        // SAFETY: `raw` is pinned, initialized with our ops, and not yet
        // registered. `current_mm` proves the mm has users.
        let ret = unsafe { bindings::mmu_notifier_register(self.raw.get(), self.mm.as_raw()) };
        if ret == 0 {
            self.registered.store(true, Ordering::Release);
        }
        kernel::error::to_result(ret)
    }

    /// Calls the `test_young` callback of the registered notifier for `addr` through its ops
    /// table, as `__mmu_notifier_test_young()` calls every notifier of the mm: a debug hook
    /// (SECMMU_TEST_YOUNG), since that function is not exported to modules.  Answers false
    /// while the notifier is not registered.
    pub(crate) fn call_test_young(&self, addr: usize) -> bool {
        if !self.registered.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: `raw` was initialized by `new()` and its ops pointer never changes.
        let ops = unsafe { (*self.raw.get()).ops };
        // SAFETY: `ops` is `&Self::OPS`, a static.
        let Some(test_young) = (unsafe { (*ops).test_young }) else {
            return false;
        };
        // SAFETY: `raw` is registered and embedded in a live `T` (we are borrowed from it), as
        // `test_young_cb()` requires; the callback does not sleep, like the mm core's callers.
        unsafe { test_young(self.raw.get(), self.mm.as_raw(), addr) }
    }

    /// Returns the container of the notifier behind `raw`.
    ///
    /// # Safety
    ///
    /// `raw` must be the `raw` field of a registered `MmuNotifier<T>`
    /// embedded in a `T`, called from one of its callbacks.
    unsafe fn container<'a>(raw: *mut bindings::mmu_notifier) -> &'a T {
        // The container is alive: its drop unregisters the notifier, which
        // waits out running callbacks (SRCU), before it goes away.
        // SAFETY: `raw` is the first field of a `repr(C)` `MmuNotifier<T>`
        // (`Opaque` is `repr(transparent)`), so the cast is exact.
        unsafe { &*T::container_of(raw.cast::<Self>()) }
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`].
    unsafe extern "C" fn release_cb(
        raw: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
    ) {
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.release();
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`].
    unsafe extern "C" fn invalidate_range_start_cb(
        raw: *mut bindings::mmu_notifier,
        range: *const bindings::mmu_notifier_range,
    ) -> c_int {
        // SAFETY: The mm core passes a valid range for the callback's duration.
        let range = unsafe { Self::range(range) };
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.invalidate_range_start(&range);
        0
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`].
    unsafe extern "C" fn invalidate_range_end_cb(
        raw: *mut bindings::mmu_notifier,
        range: *const bindings::mmu_notifier_range,
    ) {
        // SAFETY: The mm core passes a valid range for the callback's duration.
        let range = unsafe { Self::range(range) };
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.invalidate_range_end(&range);
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`].
    unsafe extern "C" fn clear_flush_young_cb(
        raw: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) -> bool {
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.clear_flush_young(start, end)
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`].
    unsafe extern "C" fn clear_young_cb(
        raw: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) -> bool {
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.clear_young(start, end)
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`].
    unsafe extern "C" fn test_young_cb(
        raw: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        addr: c_ulong,
    ) -> bool {
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.test_young(addr)
    }

    /// Reads what secmmu needs of a `struct mmu_notifier_range`.
    ///
    /// # Safety
    ///
    /// `range` must point to a valid `mmu_notifier_range`.
    unsafe fn range(range: *const bindings::mmu_notifier_range) -> Range {
        // SAFETY: `range` is valid per the function's safety requirement.
        let r = unsafe { &*range };
        Range {
            start: r.start,
            end: r.end,
            // SAFETY: `range` is valid per the function's safety requirement.
            blockable: unsafe { bindings::secmmu_range_blockable(range) },
        }
    }
}

#[pinned_drop]
impl<T: HasMmuNotifier> PinnedDrop for MmuNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        if self.registered.load(Ordering::Acquire) {
            // SAFETY: The notifier is registered with `mm`, which our
            // `ARef<Mm>` keeps allocated. This runs `release()` if
            // `exit_mmap()` has not, and waits for running callbacks.
            unsafe { bindings::mmu_notifier_unregister(self.raw.get(), self.mm.as_raw()) };
        }
    }
}
