// SPDX-License-Identifier: GPL-2.0

//! Kernel buffers that userspace maps: `vmalloc_user()` memory, put into a
//! VMA with `remap_vmalloc_range()`, as the rings the kernel shares with
//! userspace are (perf's, BPF's ring buffer, KVM's dirty ring through its
//! fault handler).
//!
//! C header: [`include/linux/vmalloc.h`](srctree/include/linux/vmalloc.h)
//!
//! The buffer is zeroed, page aligned and a whole number of pages. The
//! kernel reaches it through [`UserMappable::as_ptr()`]; a VMA of a file's
//! `mmap` maps it with [`UserMappable::map()`], taking a reference on each
//! page, so the pages outlive the buffer for as long as a mapping does.
//! Userspace may write anything into a page it maps writable at any time:
//! the kernel must access such a buffer with atomics and trust nothing it
//! reads there.

use super::bindings;
use core::ptr::NonNull;
use kernel::{error::to_result, ffi::c_ulong, mm::virt::VmaNew, page::PAGE_SIZE, prelude::*};

/// A zeroed `vmalloc_user()` buffer, freed on drop.
///
/// # Invariants
///
/// `ptr` is the start of a live `vmalloc_user()` allocation of `size`
/// bytes, a nonzero multiple of [`PAGE_SIZE`], owned by this object.
pub(crate) struct UserMappable {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: The buffer is plain memory owned by the object; any thread may
// free it, and shared access goes through raw pointers whose users
// synchronize (with atomics) themselves.
unsafe impl Send for UserMappable {}
// SAFETY: As above: `&UserMappable` only hands out the address.
unsafe impl Sync for UserMappable {}

impl UserMappable {
    /// Allocates a zeroed buffer of `size` bytes rounded up to whole pages.
    /// May sleep.
    pub(crate) fn new(size: usize) -> Result<Self> {
        let size = size.checked_next_multiple_of(PAGE_SIZE).ok_or(ENOMEM)?;
        if size == 0 {
            return Err(EINVAL);
        }
        // SAFETY: Plain allocation, where sleeping is allowed.
        let ptr = unsafe { bindings::secmmu_vmalloc_user(size as c_ulong) };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(ENOMEM)?;
        // INVARIANT: Just allocated, `size` bytes, a multiple of a page.
        Ok(Self { ptr, size })
    }

    /// The kernel address of the buffer: valid for [`Self::len()`] bytes,
    /// page aligned, for as long as `self` lives.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The size of the buffer in bytes, a multiple of [`PAGE_SIZE`].
    pub(crate) fn len(&self) -> usize {
        self.size
    }

    /// Maps the buffer from its page `pgoff` on into all of `vma`, being set
    /// up by a file's `mmap` (`remap_vmalloc_range()`, which marks the VMA
    /// `VM_DONTEXPAND`): `EINVAL` if the VMA reaches past the buffer's end.
    pub(crate) fn map(&self, vma: &VmaNew, pgoff: usize) -> Result {
        // SAFETY: `vma` is a VMA being set up, which the caller's `mmap` owns
        // for this call; the buffer is a `vmalloc_user()` allocation, alive
        // for the call; the function checks the range against both.
        let ret = unsafe {
            bindings::remap_vmalloc_range(vma.as_ptr(), self.as_ptr().cast(), pgoff as c_ulong)
        };
        to_result(ret)
    }
}

impl Drop for UserMappable {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the allocation is ours and live; the
        // pages a mapping still holds keep their own references.
        unsafe { bindings::vfree(self.ptr.as_ptr().cast()) };
    }
}

/// The offset in the file, in pages, that a VMA being set up maps from
/// (its `vm_pgoff`).
pub(crate) fn vma_pgoff(vma: &VmaNew) -> usize {
    // SAFETY: `vma` is a live VMA, whose `vm_pgoff` does not change while
    // it is being set up (its `mmap` runs with the mmap lock held for write).
    unsafe { (*vma.as_ptr()).vm_pgoff }
}
