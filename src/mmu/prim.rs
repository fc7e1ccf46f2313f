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
use core::ptr::NonNull;

// Atomics and fences.  The shared code uses the Rust memory model throughout: `fence(SeqCst)` is
// its full barrier (`smp_mb()`; an `mfence` or locked instruction on x86), used by the vCPU
// request protocol of `tlb.rs`.
#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
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

/// Allocates an array holding the first `n` values of `values`, in a context that may sleep,
/// charged to the caller's memory cgroup.  For small arrays, such as a memslot set.
#[cfg(not(secmmu_host))]
pub(crate) fn try_vec_collect<T>(
    n: usize,
    values: impl Iterator<Item = T>,
) -> Result<PVec<T>, AllocError> {
    use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;

    let mut v = PVec::with_capacity(n, GFP_KERNEL_ACCOUNT)?;
    for value in values.take(n) {
        // Cannot fail: the capacity is at least `n`.
        v.push_within_capacity(value).map_err(|_| AllocError)?;
    }
    Ok(v)
}

/// Allocates an array holding the first `n` values of `values` (host: fails only if the global
/// allocator refuses).
#[cfg(secmmu_host)]
pub(crate) fn try_vec_collect<T>(
    n: usize,
    values: impl Iterator<Item = T>,
) -> Result<PVec<T>, AllocError> {
    let mut v = std::vec::Vec::new();
    v.try_reserve_exact(n).map_err(|_| AllocError)?;
    v.extend(values.take(n));
    Ok(v)
}

/// A pointer to a heap value that readers load without any lock, inside an RCU read-side
/// critical section, while its owner replaces it (`rcu_dereference()` / `rcu_assign_pointer()`
/// on one `__rcu` pointer, as KVM publishes `struct kvm_memslots` in
/// `kvm_swap_active_memslots()`).
///
/// The read side is a [`NoPreempt`] proof: since the RCU flavours were consolidated, a region
/// with preemption disabled is an RCU read-side critical section, and holders of a spinning lock
/// are in one too.  A replaced value is handed back as [`Unpublished`], to be freed once a grace
/// period has passed.
///
/// # Invariants
///
/// `ptr` is never null and points at a value leaked from a [`PBox`], which the `RcuPtr` owns:
/// only [`RcuPtr::replace()`] unpublishes it, and only the drop frees it.
pub(crate) struct RcuPtr<T> {
    ptr: AtomicPtr<T>,
    _owns: PhantomData<PBox<T>>,
}

// SAFETY: An `RcuPtr` owns a `T` (so it may be sent where `T` may) and shares it with readers on
// other threads (so it needs `T: Sync` as well).
unsafe impl<T: Send + Sync> Send for RcuPtr<T> {}
// SAFETY: Readers on any thread get `&T`, and a replacement hands the old `T` to whichever thread
// replaced it.
unsafe impl<T: Send + Sync> Sync for RcuPtr<T> {}

impl<T> RcuPtr<T> {
    /// Publishes `value`.
    pub(crate) fn new(value: PBox<T>) -> Self {
        // INVARIANT: `into_raw()` of a `PBox` is never null, and the `RcuPtr` owns it.
        Self {
            ptr: AtomicPtr::new(PBox::into_raw(value)),
            _owns: PhantomData,
        }
    }

    /// The value, for a reader in an RCU read-side critical section (`rcu_dereference()`): it
    /// stays valid for as long as the read side lasts, even if it is replaced meanwhile.
    #[inline]
    pub(crate) fn read<'a>(&'a self, _rcu: &'a NoPreempt<'_>) -> &'a T {
        // Acquire pairs with the Release of `replace()`: the reader sees the value as it was
        // built.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: By the type invariants `p` is a live `PBox` value; it is freed by the drop
        // (excluded by `&'a self`) or by `Unpublished::free_after_grace_period()`, which waits
        // for every read side that began before its replacement, as `_rcu` is for `'a`.
        unsafe { &*p }
    }

    /// The value, for a caller that excludes every [`RcuPtr::replace()`] and every free of the
    /// value by other means.
    ///
    /// # Safety
    ///
    /// Until the returned reference is last used, the value is not replaced (the caller holds a
    /// lock that every replacer holds), or is replaced but not freed.
    #[inline]
    pub(crate) unsafe fn get_unchecked(&self) -> &T {
        // Relaxed: the lock the caller holds orders the replacement that published the value
        // before this load.
        let p = self.ptr.load(Ordering::Relaxed);
        // SAFETY: A live `PBox` value (type invariants), not freed while the reference is used,
        // per the caller.
        unsafe { &*p }
    }

    /// Publishes `new` (`rcu_assign_pointer()`) and returns the value it replaces, which readers
    /// may still be using: free it after a grace period.  Replacements must be serialized by
    /// the caller for [`RcuPtr::get_unchecked()`] to mean anything.
    pub(crate) fn replace(&self, new: PBox<T>) -> Unpublished<T> {
        // Release: a reader that loads the new pointer sees the value as it was built.
        let old = self.ptr.swap(PBox::into_raw(new), Ordering::AcqRel);
        // INVARIANT: The new value is a leaked `PBox`, now owned by `self`; the old one goes to
        // the caller.
        // SAFETY: `old` is never null (type invariants).
        Unpublished(unsafe { NonNull::new_unchecked(old) })
    }
}

impl<T> Drop for RcuPtr<T> {
    fn drop(&mut self) {
        let p = self.ptr.load(Ordering::Relaxed);
        // SAFETY: A leaked `PBox` owned by `self` (type invariants); readers borrow `self`, so
        // none is left.
        drop(unsafe { PBox::from_raw(p) });
    }
}

/// A value that [`RcuPtr::replace()`] unpublished: readers that loaded it before may still use
/// it until a grace period has passed.  Free it with
/// [`Unpublished::free_after_grace_period()`]; dropping the handle instead leaks the value (and
/// complains in debug builds): leaking is safe, freeing early is not.
#[must_use = "free the value with free_after_grace_period() after a grace period"]
pub(crate) struct Unpublished<T>(NonNull<T>);

// SAFETY: The handle owns the `T`, which readers only share.
unsafe impl<T: Send + Sync> Send for Unpublished<T> {}

impl<T> Unpublished<T> {
    /// The value, as readers see it.
    pub(crate) fn get(&self) -> &T {
        // SAFETY: Owned by this handle, and freed only when it is consumed.
        unsafe { self.0.as_ref() }
    }

    /// Frees the value.  May sleep, as dropping `T` may: call it without spinning locks held.
    ///
    /// # Safety
    ///
    /// A grace period has passed since the value was unpublished: every reader that may have
    /// loaded it has left its read-side critical section (`synchronize_rcu()` or
    /// `poll_state_synchronize_rcu()` in the kernel; on the host, the readers were joined).
    pub(crate) unsafe fn free_after_grace_period(self) {
        let p = self.0;
        core::mem::forget(self);
        // SAFETY: A `PBox` leaked by `RcuPtr` and unpublished since; no reader can see it any
        // more, per the caller.
        drop(unsafe { PBox::from_raw(p.as_ptr()) });
    }
}

impl<T> Drop for Unpublished<T> {
    fn drop(&mut self) {
        // Readers may still be in there: leak.
        debug_assert!(
            false,
            "unpublished value dropped instead of freed after a grace period"
        );
    }
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

/// Proof that the current thread holds the MMU lock for write, which x86 rmap modifications
/// require ("Rmap locking" in Documentation/secmmu-protocols.rst).  Writers pass it by `&mut`,
/// so one thread cannot have two write guards, and thus two diverging views of one rmap, at
/// once.  The kernel makes it from a write guard of the MMU lock only (`mmu_lock.rs`).
pub(crate) struct MmuWriteLocked<'a>(PhantomData<(&'a (), *mut ())>);

impl MmuWriteLocked<'_> {
    /// Asserts that the MMU lock is held for write.
    ///
    /// # Safety
    ///
    /// For as long as the returned value lives, the current thread holds the MMU lock for
    /// write, and (the MMU lock being a spinning lock) preemption is disabled.  Writers rely on
    /// it for mutual exclusion on empty rmaps, where the bit lock is elided.
    #[inline]
    pub(crate) unsafe fn assume() -> Self {
        MmuWriteLocked(PhantomData)
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
