// SPDX-License-Identifier: GPL-2.0

//! [`PageOps`] for the kernel: table pages are order-0 pages from the page
//! allocator, reached through the direct map; guest pages are the host's
//! own pages, named by pfn.

use crate::{
    ext::pfn,
    mmu::pgtable::PageOps,
    mmu::prim::{AllocError, AtomicU64, Ordering},
};

/// Page operations backed by the kernel's page allocator.
pub(crate) struct KernelPages;

/// Table pages the module holds now, in every space and vCPU cache: what
/// the selftests check returns to where it was after a space is gone.
static TABLE_PAGES: AtomicU64 = AtomicU64::new(0);

/// The number of table pages the module holds now.
pub(crate) fn table_pages_now() -> u64 {
    TABLE_PAGES.load(Ordering::Relaxed)
}

impl PageOps for KernelPages {
    fn alloc_table() -> Result<u64, AllocError> {
        // May sleep: callers only top up their caches outside the MMU lock.
        let pfn = pfn::alloc_zeroed_page()?;
        TABLE_PAGES.fetch_add(1, Ordering::Relaxed);
        Ok(pfn as u64)
    }

    unsafe fn free_table(pfn: u64) {
        // SAFETY: The caller guarantees `pfn` came from `alloc_table` and that
        // no walker can reach it any more.
        unsafe { pfn::free_page(pfn as usize) };
        TABLE_PAGES.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn table<'a>(pfn: u64) -> &'a [AtomicU64; 512] {
        // SAFETY: The caller guarantees `pfn` is a live table page from
        // `alloc_table`: a 4 KiB, 8-byte aligned page in the direct map,
        // whose entries are only ever accessed atomically.
        unsafe { &*pfn::to_virt(pfn as usize).cast::<[AtomicU64; 512]>() }
    }

    fn set_page_dirty(pfn: u64) {
        // SAFETY: `pfn` is a page the secondary MMU mapped; the caller is
        // zapping that mapping inside `invalidate_range_start()` or with the
        // MMU lock held, so the primary has not freed the page yet.
        unsafe { pfn::set_dirty(pfn as usize) };
    }
}
