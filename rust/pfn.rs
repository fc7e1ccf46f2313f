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
