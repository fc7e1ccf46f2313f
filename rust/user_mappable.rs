// SPDX-License-Identifier: GPL-2.0

//! Kernel buffers that userspace maps: pages mapped contiguously into the
//! kernel with `vmap(VM_USERMAP)`, and into a VMA with
//! `remap_vmalloc_range()`, as the rings the kernel shares with userspace
//! are (perf's, BPF's ring buffer, KVM's dirty ring through its fault
//! handler).
//!
//! C header: [`include/linux/vmalloc.h`](srctree/include/linux/vmalloc.h)
//!
//! The buffer is zeroed, page aligned and a whole number of pages, charged
//! to the allocating task's memory cgroup, and its allocation fails quietly
//! (`__GFP_NOWARN`: its size may come from userspace; `vmalloc_user()`
//! would warn). The kernel reaches it through [`UserMappable::as_ptr()`];
//! a VMA of a file's `mmap` maps it with [`UserMappable::map()`], taking a
//! reference on each page, so the pages outlive the buffer for as long as
//! a mapping does. Userspace may write anything into a page it maps
//! writable at any time: the kernel must access such a buffer with atomics
//! and trust nothing it reads there.

use super::bindings;
use core::ptr::NonNull;
use kernel::{
    alloc::flags::{__GFP_NOWARN, __GFP_ZERO, GFP_KERNEL, GFP_KERNEL_ACCOUNT},
    error::to_result,
    ffi::{c_uint, c_ulong},
    mm::virt::VmaNew,
    page::{Page, PAGE_SIZE},
    prelude::*,
};

/// Zeroed pages, mapped contiguously in the kernel; unmapped and freed on
/// drop.
///
/// # Invariants
///
/// `ptr` is the start of a `vmap(VM_USERMAP)` mapping of exactly the pages
/// of `pages`, in order, owned by this object.
pub(crate) struct UserMappable {
    ptr: NonNull<u8>,
    pages: KVec<Page>,
}

// SAFETY: The pages and their kernel mapping are owned by the object; any
// thread may unmap and free them, and shared access goes through raw
// pointers whose users synchronize (with atomics) themselves.
unsafe impl Send for UserMappable {}
// SAFETY: As above: `&UserMappable` only hands out the address.
unsafe impl Sync for UserMappable {}

impl UserMappable {
    /// Allocates a zeroed buffer of `size` bytes rounded up to whole pages
    /// (`EINVAL` for 0, `ENOMEM` quietly). May sleep.
    pub(crate) fn new(size: usize) -> Result<Self> {
        let n = size.div_ceil(PAGE_SIZE);
        if n == 0 || n > c_uint::MAX as usize {
            return Err(EINVAL);
        }
        let mut pages = KVec::with_capacity(n, GFP_KERNEL | __GFP_NOWARN)?;
        let mut raw = KVec::with_capacity(n, GFP_KERNEL | __GFP_NOWARN)?;
        for _ in 0..n {
            let page = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN)?;
            raw.push(page.as_ptr(), GFP_KERNEL)?;
            pages.push(page, GFP_KERNEL)?;
        }
        // SAFETY: `raw` holds `n` valid pages, which `pages` keeps allocated
        // until the mapping is gone (`Drop`).
        let ptr = unsafe { bindings::secmmu_vmap_user(raw.as_mut_ptr(), n as c_uint) };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(ENOMEM)?;
        // INVARIANT: Just mapped, the pages of `pages` in order.
        Ok(Self { ptr, pages })
    }

    /// The kernel address of the buffer: valid for [`Self::len()`] bytes,
    /// page aligned, for as long as `self` lives.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The size of the buffer in bytes, a multiple of [`PAGE_SIZE`].
    pub(crate) fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    /// Maps the buffer from its page `pgoff` on into all of `vma`, being set
    /// up by a file's `mmap` (`remap_vmalloc_range()`, which marks the VMA
    /// `VM_DONTEXPAND`): `EINVAL` if the VMA reaches past the buffer's end.
    pub(crate) fn map(&self, vma: &VmaNew, pgoff: usize) -> Result {
        // SAFETY: `vma` is a VMA being set up, which the caller's `mmap` owns
        // for this call; the buffer is a `VM_USERMAP` mapping, alive for the
        // call; the function checks the range against both.
        let ret = unsafe {
            bindings::remap_vmalloc_range(vma.as_ptr(), self.as_ptr().cast(), pgoff as c_ulong)
        };
        to_result(ret)
    }
}

impl Drop for UserMappable {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the mapping is ours and live. The
        // pages go after it, with `self.pages`; those a user mapping still
        // holds keep their own references.
        unsafe { bindings::vunmap(self.ptr.as_ptr().cast()) };
    }
}

/// The offset in the file, in pages, that a VMA being set up maps from
/// (its `vm_pgoff`).
pub(crate) fn vma_pgoff(vma: &VmaNew) -> usize {
    // SAFETY: `vma` is a live VMA, whose `vm_pgoff` does not change while
    // it is being set up (its `mmap` runs with the mmap lock held for write).
    unsafe { (*vma.as_ptr()).vm_pgoff }
}
