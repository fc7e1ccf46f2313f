// SPDX-License-Identifier: GPL-2.0

//! Pages named by their page frame number.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! A secondary MMU names pages by pfn: its own page-table pages, which it
//! allocates here and reaches through the direct map, and the pages its
//! leaves map, which it marks dirty when a leaf that allowed writes goes.
//! The kernel crate's `Page` owns a page by its `struct page`; these
//! functions are for code that keeps only the pfn (e.g. in a page-table
//! entry).

use super::bindings;
use kernel::alloc::AllocError;

/// Allocates a zeroed order-0 page, charged to the current task's memory
/// cgroup (`GFP_KERNEL_ACCOUNT | __GFP_ZERO`), and returns its pfn. May
/// sleep. Free it with [`free_page`].
pub(crate) fn alloc_zeroed_page() -> Result<usize, AllocError> {
    // SAFETY: Plain allocation; always safe to call where sleeping is.
    match unsafe { bindings::secmmu_alloc_table_page() } {
        0 => Err(AllocError),
        pfn => Ok(pfn),
    }
}

/// Frees a page of [`alloc_zeroed_page`].
///
/// # Safety
///
/// `pfn` must come from [`alloc_zeroed_page`], not be freed yet, and not be
/// used after this call.
pub(crate) unsafe fn free_page(pfn: usize) {
    // SAFETY: Per the function's safety requirements.
    unsafe { bindings::secmmu_free_table_page(pfn) };
}

/// The kernel (direct map) address of the page `pfn`.
///
/// # Safety
///
/// `pfn` must be a page of RAM (one with a `struct page`) that is not in
/// highmem.
pub(crate) unsafe fn to_virt(pfn: usize) -> *mut u8 {
    // SAFETY: Per the function's safety requirements, the page has a
    // `struct page` and a direct-map address.
    unsafe { bindings::secmmu_pfn_to_virt(pfn) }.cast()
}

/// Marks the page `pfn` dirty, as KVM's `kvm_set_page_dirty()` does: a
/// no-op for reserved pages.
///
/// # Safety
///
/// The page must be allocated for the duration of the call: the caller
/// holds a reference on it, or a mapping of it that the primary MMU waits
/// for (e.g. one that an MMU notifier invalidation is removing).
pub(crate) unsafe fn set_dirty(pfn: usize) {
    // SAFETY: Per the function's safety requirements.
    unsafe { bindings::secmmu_set_page_dirty(pfn) };
}

/// Copies `len` bytes at offset `off` of the page `pfn` to user address
/// `dst` of the current task (`copy_to_user()`), straight from the page: no
/// bounce buffer. May fault and sleep. `EFAULT` if not every byte could be
/// copied; `EINVAL` if the range is not inside the page.
///
/// # Safety
///
/// `pfn` must be a page of RAM that is not in highmem and stays allocated
/// for the duration of the call: the caller holds a reference on it.
pub(crate) unsafe fn copy_to_user(
    pfn: usize,
    off: usize,
    len: usize,
    dst: kernel::uaccess::UserPtr,
) -> kernel::error::Result {
    let in_page = off
        .checked_add(len)
        .is_some_and(|end| end <= kernel::page::PAGE_SIZE);
    if !in_page {
        return Err(kernel::error::code::EINVAL);
    }
    // SAFETY: Per the function's safety requirements, the page is
    // allocated and in the direct map; `off + len` lies inside it (checked
    // above); `copy_to_user()` checks `dst` and copes with faults. The
    // page's bytes may change meanwhile (the process may write them):
    // copied raw, never seen as a Rust reference.
    let left = unsafe { bindings::secmmu_copy_page_to_user(dst.as_mut_ptr(), pfn, off, len) };
    if left != 0 {
        return Err(kernel::error::code::EFAULT);
    }
    Ok(())
}

/// A reference on a page named by its pfn (`get_page()`), put
/// (`put_page()`) when dropped: keeps a page allocated while it is used
/// away from what guaranteed its lifetime until then, e.g. a secondary
/// MMU's mapping, which an invalidation may remove as soon as the vCPU
/// leaves guest mode.
///
/// # Invariants
///
/// The value owns one reference on the page of frame number `pfn`, a page
/// of RAM not in highmem.
pub(crate) struct PageRef {
    pfn: usize,
}

impl PageRef {
    /// Takes a reference on the page at kernel (direct map) address
    /// `addr`.
    ///
    /// # Safety
    ///
    /// `addr` must be inside a page of RAM, not in highmem, that is
    /// allocated for the duration of the call (e.g. a page mapped by the
    /// secondary MMU, seen in guest mode: the zap that removes the mapping
    /// waits for the vCPU to leave guest mode).
    pub(crate) unsafe fn get_virt(addr: *const u8) -> Self {
        // SAFETY: Per the function's safety requirements, `addr` is in the
        // direct map.
        let pfn = unsafe { bindings::secmmu_virt_to_pfn(addr.cast()) };
        // SAFETY: Per the function's safety requirements, the page is
        // allocated, so its refcount is not zero.
        unsafe { bindings::secmmu_get_page(pfn) };
        // INVARIANT: We took a reference on `pfn`, a page of RAM not in
        // highmem (its address is in the direct map).
        Self { pfn }
    }

    /// [`copy_to_user()`] from this page.
    pub(crate) fn copy_to_user(
        &self,
        off: usize,
        len: usize,
        dst: kernel::uaccess::UserPtr,
    ) -> kernel::error::Result {
        // SAFETY: By the type invariants we hold a reference on the page,
        // a page of RAM not in highmem.
        unsafe { copy_to_user(self.pfn, off, len, dst) }
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: By the type invariants, this is our reference on the page.
        unsafe { bindings::secmmu_put_user_page(self.pfn) };
    }
}
