// SPDX-License-Identifier: GPL-2.0

//! MMU notifiers: keeping a secondary MMU coherent with a process's page
//! tables.
//!
//! C header: [`include/linux/mmu_notifier.h`](srctree/include/linux/mmu_notifier.h)
//!
//! A type that mirrors an address space (KVM's `struct kvm`, a device MMU)
//! embeds an [`MmuNotifier`] of itself, implements [`MmuNotifierOps`] for
//! the callbacks it needs, and [`HasMmuNotifier`] (with
//! [`impl_has_mmu_notifier!`]) so that a callback finds its container.
//! [`MmuNotifierOps`] is a `#[vtable]` trait: a callback the type does not
//! implement stays `NULL` in the `mmu_notifier_ops`, and the mm core skips
//! it, as it does for a C notifier.
//!
//! # Lifetime
//!
//! - [`MmuNotifier::register`] is the notifier's initializer: the
//!   subscription starts while the container is being initialized, and
//!   callbacks may run from that moment on, so it must be the container's
//!   last initializer to run. Its `mm_struct` stays allocated (`mmgrab()`)
//!   as long as the notifier lives, even after `exit_mmap()`.
//! - `release()` runs exactly once: from `exit_mmap()` if the process exits
//!   first, or from `mmu_notifier_unregister()` if the notifier is dropped
//!   first. No other callback starts after it.
//! - Dropping the notifier calls `mmu_notifier_unregister()`, which waits
//!   (SRCU) for every callback still running. A callback's `&T` is thus
//!   valid for the whole callback if the container drops its notifier
//!   before anything a callback uses: make the notifier the container's
//!   first field (fields drop in declaration order).
//!
//! # Examples
//!
//! ```
//! use crate::ext::mmu_notifier::{
//!     impl_has_mmu_notifier, MmuNotifier, MmuNotifierOps, Range,
//! };
//! use kernel::{mm::MmWithUser, prelude::*, sync::Arc};
//!
//! #[pin_data]
//! struct Mirror {
//!     // First: unregistered (and waited for) before `pages` goes.
//!     #[pin]
//!     notifier: MmuNotifier<Mirror>,
//!     pages: KVec<u64>,
//! }
//!
//! impl_has_mmu_notifier!(Mirror, notifier);
//!
//! #[vtable]
//! impl MmuNotifierOps for Mirror {
//!     fn release(&self) {}
//!
//!     fn invalidate_range_start(&self, range: &Range) -> Result {
//!         pr_info!("unmap {:#x}..{:#x}\n", range.start(), range.end());
//!         Ok(())
//!     }
//!
//!     fn invalidate_range_end(&self, _range: &Range) {}
//! }
//!
//! fn mirror(mm: &MmWithUser) -> Result<Arc<Mirror>> {
//!     Arc::pin_init(
//!         try_pin_init!(Mirror {
//!             pages: KVec::new(),
//!             // SAFETY: Last: every other field is initialized.
//!             notifier <- unsafe { MmuNotifier::register(mm) },
//!         }),
//!         GFP_KERNEL,
//!     )
//! }
//! ```

use super::bindings;
use core::marker::PhantomData;
use kernel::{
    error::{to_result, VTABLE_DEFAULT_ERROR},
    mm::{Mm, MmWithUser},
    prelude::*,
    sync::aref::ARef,
    types::Opaque,
};

/// Why the mm core invalidates a range (`enum mmu_notifier_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event(bindings::mmu_notifier_event);

impl Event {
    /// `munmap()`, or `mremap()` moving the range.
    pub(crate) const UNMAP: Event = Event(bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP);
    /// Entries cleared for another reason (`madvise()`, a page replaced,
    /// migration, a THP split, ...).
    pub(crate) const CLEAR: Event = Event(bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR);
    /// The protection of the whole range changes (`mprotect()`).
    pub(crate) const PROTECTION_VMA: Event =
        Event(bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA);
    /// The protection of some pages of the range changes.
    pub(crate) const PROTECTION_PAGE: Event =
        Event(bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE);
    /// Soft-dirty tracking write-protects the range.
    pub(crate) const SOFT_DIRTY: Event = Event(bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY);
    /// The mm is going away (interval notifiers only).
    pub(crate) const RELEASE: Event = Event(bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE);
    /// Device-private migration (`migrate_vma_collect()`).
    pub(crate) const MIGRATE: Event = Event(bindings::mmu_notifier_event_MMU_NOTIFY_MIGRATE);
    /// Conversion of an entry to device-exclusive.
    pub(crate) const EXCLUSIVE: Event = Event(bindings::mmu_notifier_event_MMU_NOTIFY_EXCLUSIVE);

    /// The C value (`MMU_NOTIFY_*`), as trace events record it.
    pub(crate) fn raw(self) -> u32 {
        self.0
    }
}

/// An invalidation as the mm core reports it (`struct mmu_notifier_range`).
///
/// # Invariants
///
/// The wrapped range is valid, and not changed, for as long as the `&Range`
/// lives.
#[repr(transparent)]
pub(crate) struct Range(Opaque<bindings::mmu_notifier_range>);

impl Range {
    /// Creates a reference to a [`Range`] from a valid pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `mmu_notifier_range` that nobody changes
    /// for the lifetime `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *const bindings::mmu_notifier_range) -> &'a Self {
        // SAFETY: `Range` is a transparent wrapper of the C struct, and the
        // caller guarantees that the range is valid and unchanged for `'a`.
        unsafe { &*ptr.cast() }
    }

    fn as_raw(&self) -> *mut bindings::mmu_notifier_range {
        self.0.get()
    }

    /// The first address of the range.
    pub(crate) fn start(&self) -> usize {
        // SAFETY: By the type invariants, the range is valid.
        unsafe { (*self.as_raw()).start }
    }

    /// The first address past the range (it is `[start, end)`).
    pub(crate) fn end(&self) -> usize {
        // SAFETY: By the type invariants, the range is valid.
        unsafe { (*self.as_raw()).end }
    }

    /// Whether the callbacks of this invalidation may sleep
    /// (`mmu_notifier_range_blockable()`). When not, they must not block,
    /// and `invalidate_range_start()` may fail with `EAGAIN` (see
    /// [`MmuNotifierOps::invalidate_range_start`]).
    pub(crate) fn blockable(&self) -> bool {
        // SAFETY: By the type invariants, the range is valid.
        unsafe { bindings::secmmu_range_blockable(self.as_raw()) }
    }

    /// Why the range is invalidated.
    pub(crate) fn event(&self) -> Event {
        // SAFETY: By the type invariants, the range is valid.
        Event(unsafe { (*self.as_raw()).event })
    }
}

/// The callbacks of an MMU notifier (`struct mmu_notifier_ops`).
///
/// Only the callbacks a type implements are in its ops; the mm core skips
/// the others. All run with the mm alive, in the context of whatever
/// changes its page tables: a callback must not take a lock that is held
/// around calls into the mm core (`mmap_lock`, ...).
#[vtable]
pub(crate) trait MmuNotifierOps: Sync + Sized {
    /// The address space is going away (`exit_mmap()`), or the notifier is
    /// being unregistered: remove every mapping; no callback starts after
    /// this one.
    fn release(&self) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Remove every mapping of `range` before returning.
    ///
    /// When `range` is not [blockable](Range::blockable), the callback must
    /// not sleep. The mm core's rule (`mn_hlist_invalidate_range_start()`):
    /// the callback may fail only with `EAGAIN`, only for a range that is
    /// not blockable, and only if the type does not implement
    /// [`invalidate_range_end`](MmuNotifierOps::invalidate_range_end): after
    /// a failure the mm core calls `invalidate_range_end()` of every
    /// notifier of the mm, so one with an `end` could not tell whether its
    /// own `start` ran. Any other failure is a `WARN`.
    fn invalidate_range_start(&self, _range: &Range) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// The invalidation of `range` is complete: the primary MMU's entries
    /// are changed, and the pages may be freed.
    fn invalidate_range_end(&self, _range: &Range) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Clear the accessed state of `[start, end)` and flush the cached
    /// translations; was any of it young?
    fn clear_flush_young(&self, _start: usize, _end: usize) -> bool {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Clear the accessed state of `[start, end)`, without a flush; was any
    /// of it young?
    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Was the page at `addr` accessed? Clears nothing.
    fn test_young(&self, _addr: usize) -> bool {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// A type that embeds an [`MmuNotifier`] of itself.
///
/// # Safety
///
/// [`HasMmuNotifier::container_of`] must return the address of the `Self`
/// that embeds the given notifier, for every notifier embedded in a `Self`.
/// Implement it with [`impl_has_mmu_notifier!`].
pub(crate) unsafe trait HasMmuNotifier: MmuNotifierOps {
    /// Returns the container of `notifier`.
    ///
    /// # Safety
    ///
    /// `notifier` must point to the notifier field of a valid `Self`.
    unsafe fn container_of(notifier: *const MmuNotifier<Self>) -> *const Self;
}

/// Implements [`HasMmuNotifier`] for a type with a notifier field.
///
/// `impl_has_mmu_notifier!(Type, field)`: `Type` embeds the
/// `MmuNotifier<Type>` named `field`.
macro_rules! impl_has_mmu_notifier {
    ($type:ty, $field:ident) => {
        // SAFETY: `container_of!` computes the container from the field's
        // offset, which is what the trait requires.
        unsafe impl $crate::ext::mmu_notifier::HasMmuNotifier for $type {
            unsafe fn container_of(
                notifier: *const $crate::ext::mmu_notifier::MmuNotifier<Self>,
            ) -> *const Self {
                // SAFETY: The caller guarantees that `notifier` is the
                // `$field` of a valid `Self`.
                unsafe { ::kernel::container_of!(notifier.cast_mut(), Self, $field) }
            }
        }
    };
}
pub(crate) use impl_has_mmu_notifier;

/// A `struct mmu_notifier` embedded in a `T`, registered with an mm.
///
/// # Invariants
///
/// - `raw` is registered with `mm` (`mmu_notifier_register()` succeeded),
///   with the ops of `T`, from the end of its initializer until the drop.
/// - `raw` is embedded in a `T` (the `MmuNotifier` is a field of a `T`, as
///   [`MmuNotifier::register`] requires).
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct MmuNotifier<T: HasMmuNotifier> {
    /// First field: a callback's `struct mmu_notifier *` is the address of
    /// the `MmuNotifier`.
    #[pin]
    raw: Opaque<bindings::mmu_notifier>,
    /// The mm, kept allocated (`mmgrab()`) for `mmu_notifier_unregister()`
    /// and [`MmuNotifier::mm`].
    mm: ARef<Mm>,
    _t: PhantomData<T>,
}

// SAFETY: The mm core accesses `raw` under its own locking; the notifier
// may be dropped (unregistered) from any thread.
unsafe impl<T: HasMmuNotifier> Send for MmuNotifier<T> {}
// SAFETY: No `&self` method gives unsynchronized access to `raw`; the
// callbacks only hand out `&T`, and `T: Sync`.
unsafe impl<T: HasMmuNotifier> Sync for MmuNotifier<T> {}

impl<T: HasMmuNotifier> MmuNotifier<T> {
    const OPS: bindings::mmu_notifier_ops = bindings::mmu_notifier_ops {
        release: if T::HAS_RELEASE {
            Some(Self::release_cb)
        } else {
            None
        },
        clear_flush_young: if T::HAS_CLEAR_FLUSH_YOUNG {
            Some(Self::clear_flush_young_cb)
        } else {
            None
        },
        clear_young: if T::HAS_CLEAR_YOUNG {
            Some(Self::clear_young_cb)
        } else {
            None
        },
        test_young: if T::HAS_TEST_YOUNG {
            Some(Self::test_young_cb)
        } else {
            None
        },
        invalidate_range_start: if T::HAS_INVALIDATE_RANGE_START {
            Some(Self::invalidate_range_start_cb)
        } else {
            None
        },
        invalidate_range_end: if T::HAS_INVALIDATE_RANGE_END {
            Some(Self::invalidate_range_end_cb)
        } else {
            None
        },
        ..pin_init::zeroed()
    };

    /// Registers a notifier of `T` with `mm` (`mmu_notifier_register()`):
    /// the initializer of the `T`'s notifier field.
    ///
    /// `mm` has users, as the mm core requires: normally `current->mm`.
    /// May sleep (it takes `mmap_lock` for write).
    ///
    /// # Safety
    ///
    /// The returned initializer must initialize the notifier field of a `T`,
    /// and be the last of the `T`'s initializers to run (in the `T`'s
    /// `pin_init!`, list the field last): callbacks may run as soon as the
    /// notifier is registered, and they get the whole `&T`.
    pub(crate) unsafe fn register<'a>(mm: &'a MmWithUser) -> impl PinInit<Self, Error> + 'a
    where
        T: 'a,
    {
        try_pin_init!(Self {
            // Before the registration: a callback may ask for the mm.
            mm: ARef::from(&**mm),
            _t: PhantomData,
            raw <- Opaque::try_ffi_init(move |slot: *mut bindings::mmu_notifier| {
                // SAFETY: The initializer may write to `slot`.
                unsafe {
                    slot.write(bindings::mmu_notifier {
                        ops: &Self::OPS,
                        ..Default::default()
                    })
                };
                // INVARIANT: On success, `slot` is registered with `mm` (the
                // one in `Self::mm`), with our ops. It is in a `T`, and the
                // `T` is fully initialized once this returns, per the
                // caller's guarantees.
                // SAFETY: `slot` is pinned and holds an unregistered
                // notifier; `MmWithUser` proves that the mm has users. The
                // notifier is unregistered before `slot` is freed: by the
                // drop, which a pinned value gets before its memory goes.
                to_result(unsafe { bindings::mmu_notifier_register(slot, mm.as_raw()) })
            }),
        })
    }

    /// The mm this notifier follows. Its `mm_struct` stays allocated, but
    /// its address space may already be gone (after `release()`).
    pub(crate) fn mm(&self) -> &Mm {
        &self.mm
    }

    /// Calls the `test_young` callback through the notifier's ops, as the
    /// mm core's `__mmu_notifier_test_young()` calls each notifier of the mm
    /// (which modules cannot call); `false` if `T` has none.
    pub(crate) fn call_test_young(&self, addr: usize) -> bool {
        let Some(test_young) = Self::OPS.test_young else {
            return false;
        };
        // SAFETY: By the type invariants, `raw` is registered and embedded
        // in a `T`, which lives as long as `self` is borrowed: what the
        // callback requires.
        unsafe { test_young(self.raw.get(), self.mm.as_raw(), addr) }
    }

    /// Returns the container of the notifier behind `raw`.
    ///
    /// # Safety
    ///
    /// `raw` must be the `raw` field of a registered `MmuNotifier<T>`,
    /// called from one of its callbacks (or with its `T` borrowed).
    unsafe fn container<'a>(raw: *mut bindings::mmu_notifier) -> &'a T {
        // The container is alive: its drop unregisters the notifier, which
        // waits for running callbacks (SRCU), before it goes away.
        // SAFETY: `raw` is the first field of a `repr(C)` `MmuNotifier<T>`
        // (`Opaque` is `repr(transparent)`), so the cast is exact, and by
        // the type invariants the notifier is a field of a `T`.
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
    /// [`MmuNotifier::register`] and `range` valid for the call.
    unsafe extern "C" fn invalidate_range_start_cb(
        raw: *mut bindings::mmu_notifier,
        range: *const bindings::mmu_notifier_range,
    ) -> c_int {
        // SAFETY: The mm core passes a range that is valid, and unchanged,
        // for the duration of the callback.
        let range = unsafe { Range::from_raw(range) };
        // SAFETY: Called by the mm core for a registered notifier.
        match unsafe { Self::container(raw) }.invalidate_range_start(range) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called only by the mm core, with `raw` a notifier registered by
    /// [`MmuNotifier::register`] and `range` valid for the call.
    unsafe extern "C" fn invalidate_range_end_cb(
        raw: *mut bindings::mmu_notifier,
        range: *const bindings::mmu_notifier_range,
    ) {
        // SAFETY: The mm core passes a range that is valid, and unchanged,
        // for the duration of the callback.
        let range = unsafe { Range::from_raw(range) };
        // SAFETY: Called by the mm core for a registered notifier.
        unsafe { Self::container(raw) }.invalidate_range_end(range);
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
}

#[pinned_drop]
impl<T: HasMmuNotifier> PinnedDrop for MmuNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: By the type invariants, `raw` is registered with `mm`,
        // which our `ARef<Mm>` keeps allocated. This runs `release()` if
        // `exit_mmap()` has not, and waits for running callbacks.
        unsafe { bindings::mmu_notifier_unregister(self.raw.get(), self.mm.as_raw()) };
    }
}
