// SPDX-License-Identifier: GPL-2.0

//! The few platform primitives that differ between the kernel module and the host test crate.
//!
//! Everything else under `src/` that is compiled into both (the rmap, the SPTE format) reaches
//! the platform only through this module, never through `kernel::` or `std::` directly:
//!
//! - `cfg(not(secmmu_host))`: the kernel module (`#![no_std]`, `kernel` crate).
//! - `cfg(secmmu_host)`: the host crate under `host/` (std), which runs the unit tests.
//! - `cfg(all(secmmu_host, loom))`: the host crate with atomics, cells and spinning taken from
//!   `loom`, so the loom models explore every interleaving and memory ordering.

use core::marker::PhantomData;

// Atomics and fences.  The shared code uses the Rust memory model throughout: `fence(SeqCst)` is
// its full barrier (`smp_mb()`; an `mfence` or locked instruction on x86), used by the vCPU
// request protocol of `tlb.rs`.
#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};

#[cfg(not(secmmu_host))]
pub(crate) use kernel::alloc::AllocError;

/// An allocation failed.
#[cfg(secmmu_host)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AllocError;

/// An owned heap allocation.
#[cfg(not(secmmu_host))]
pub(crate) type PBox<T> = kernel::alloc::KBox<T>;
/// An owned heap allocation.
#[cfg(secmmu_host)]
pub(crate) type PBox<T> = std::boxed::Box<T>;

/// Allocates `value` in a context that may sleep, charged to the caller's memory cgroup
/// (`GFP_KERNEL_ACCOUNT`).  For topping up caches before the MMU lock is taken.
#[cfg(not(secmmu_host))]
pub(crate) fn try_box_sleepable<T>(value: T) -> Result<PBox<T>, AllocError> {
    kernel::alloc::KBox::new(value, kernel::alloc::flags::GFP_KERNEL_ACCOUNT)
}

/// A reference-counted heap allocation, shared between threads (`kernel::sync::Arc`).
#[cfg(not(secmmu_host))]
pub(crate) type PArc<T> = kernel::sync::Arc<T>;
/// A reference-counted heap allocation, shared between threads (`std::sync::Arc`).
#[cfg(secmmu_host)]
pub(crate) type PArc<T> = std::sync::Arc<T>;

/// Allocates a [`PArc`] holding `value`, in a context that may sleep, charged to the caller's
/// memory cgroup (`GFP_KERNEL_ACCOUNT`).
#[cfg(not(secmmu_host))]
pub(crate) fn try_arc_sleepable<T>(value: T) -> Result<PArc<T>, AllocError> {
    kernel::sync::Arc::new(value, kernel::alloc::flags::GFP_KERNEL_ACCOUNT)
}

/// Allocates a [`PArc`] holding `value` (host: the global allocator; never fails).
#[cfg(secmmu_host)]
pub(crate) fn try_arc_sleepable<T>(value: T) -> Result<PArc<T>, AllocError> {
    Ok(std::sync::Arc::new(value))
}

/// Allocates `value` without sleeping (`GFP_ATOMIC`).  Only for the fallback when a cache that
/// should have been topped up is found empty under a spinning lock.
#[cfg(not(secmmu_host))]
pub(crate) fn try_box_atomic<T>(value: T) -> Result<PBox<T>, AllocError> {
    kernel::alloc::KBox::new(value, kernel::alloc::flags::GFP_ATOMIC)
}

/// Allocates `value` (host: the global allocator; never fails, it aborts instead).
#[cfg(secmmu_host)]
pub(crate) fn try_box_sleepable<T>(value: T) -> Result<PBox<T>, AllocError> {
    Ok(std::boxed::Box::new(value))
}

/// Allocates `value` (host: the same as [`try_box_sleepable`]).
#[cfg(secmmu_host)]
pub(crate) fn try_box_atomic<T>(value: T) -> Result<PBox<T>, AllocError> {
    Ok(std::boxed::Box::new(value))
}

/// A heap array whose length is fixed when it is made, such as the rmaps of a memslot.  It may be
/// large, so the kernel falls back to vmalloc (`KVVec`): freeing it may sleep, so drop it outside
/// spinning locks.
#[cfg(not(secmmu_host))]
pub(crate) type PVec<T> = kernel::alloc::KVVec<T>;
/// A heap array whose length is fixed when it is made, such as the rmaps of a memslot.
#[cfg(secmmu_host)]
pub(crate) type PVec<T> = std::vec::Vec<T>;

/// Allocates an array of `n` values made by `f`, in a context that may sleep, charged to the
/// caller's memory cgroup.  Sizes the kernel refuses outright (above `INT_MAX` bytes, which
/// `kvmalloc()` would warn about) fail quietly, as does running out of memory: `n` may come from
/// userspace.
#[cfg(not(secmmu_host))]
pub(crate) fn try_vec_with<T>(n: usize, mut f: impl FnMut() -> T) -> Result<PVec<T>, AllocError> {
    use kernel::alloc::flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT};

    match n.checked_mul(core::mem::size_of::<T>()) {
        Some(bytes) if bytes <= i32::MAX as usize => {}
        _ => return Err(AllocError),
    }
    let mut v = PVec::with_capacity(n, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
    for _ in 0..n {
        // Cannot fail: the capacity is at least `n`.
        v.push_within_capacity(f()).map_err(|_| AllocError)?;
    }
    Ok(v)
}

/// Allocates an array of `n` values made by `f` (host: fails only if the size overflows or the
/// global allocator refuses).
#[cfg(secmmu_host)]
pub(crate) fn try_vec_with<T>(n: usize, f: impl FnMut() -> T) -> Result<PVec<T>, AllocError> {
    let mut v = std::vec::Vec::new();
    v.try_reserve_exact(n).map_err(|_| AllocError)?;
    v.extend(core::iter::repeat_with(f).take(n));
    Ok(v)
}

/// Tells the CPU we are busy-waiting: call once per iteration of a spin loop.
#[inline]
pub(crate) fn cpu_relax() {
    #[cfg(not(secmmu_host))]
    kernel::processor::cpu_relax();
    // loom needs spinning threads to yield, or it would explore the spin loop forever.
    #[cfg(all(secmmu_host, loom))]
    loom::thread::yield_now();
    #[cfg(all(secmmu_host, not(loom)))]
    core::hint::spin_loop();
}

/// Proof that preemption is disabled on the current CPU for the lifetime `'a`.
///
/// Lockless rmap walkers must hold one while they hold an rmap's bit lock (see "Lockless rmap
/// walks" in Documentation/secmmu-protocols.rst): other CPUs spin on that bit, so its holder must
/// not be scheduled out.  It is neither `Send` nor `Sync`: the proof is about the CPU that made it.
pub(crate) struct NoPreempt<'a>(PhantomData<(&'a (), *mut ())>);

impl NoPreempt<'_> {
    /// Asserts that preemption is disabled.
    ///
    /// # Safety
    ///
    /// Preemption must stay disabled on the current CPU (e.g. between `preempt_disable()` and
    /// `preempt_enable()`, or under a spinlock) for as long as the returned value lives.
    #[cfg(not(secmmu_host))]
    #[inline]
    pub(crate) unsafe fn assume() -> Self {
        NoPreempt(PhantomData)
    }

    /// Host threads have no preemption to disable; any thread may make the proof.
    #[cfg(secmmu_host)]
    #[inline]
    pub(crate) fn new() -> Self {
        NoPreempt(PhantomData)
    }
}

/// A cell for data whose accesses are serialized by a lock kept outside of it, e.g. rmap
/// descriptors serialized by the rmap bit lock.  Under loom this is `loom::cell::UnsafeCell`,
/// which checks that every access is ordered after the previous conflicting one.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// A cell for data whose accesses are serialized by a lock kept outside of it, e.g. rmap
/// descriptors serialized by the rmap bit lock.  Same interface as `loom::cell::UnsafeCell`.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer for reading the contents.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Reports a broken invariant that the code survives: a `WARN` in the kernel (the debug kernel
/// of the tests makes it fail the run; a production kernel goes on), a panic in the host tests.
/// Evaluates to the condition, like the kernel's `WARN_ON()`.
#[cfg(not(secmmu_host))]
macro_rules! warn_on {
    ($cond:expr, $($msg:tt)+) => {{
        let cond = $cond;
        if cond {
            ::kernel::pr_err!($($msg)+);
        }
        ::kernel::warn_on!(cond)
    }};
}

/// Reports a broken invariant that the code survives: a `WARN` in the kernel (the debug kernel
/// of the tests makes it fail the run; a production kernel goes on), a panic in the host tests.
/// Evaluates to the condition, like the kernel's `WARN_ON()`.
#[cfg(secmmu_host)]
macro_rules! warn_on {
    ($cond:expr, $($msg:tt)+) => {{
        let cond = $cond;
        assert!(!cond, $($msg)+);
        cond
    }};
}
pub(crate) use warn_on;
