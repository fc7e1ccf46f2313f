// SPDX-License-Identifier: GPL-2.0

//! [`PageOps`] for the host tests: table pages are 4 KiB-aligned, zeroed heap allocations, named
//! by pfn = address >> 12 (the address's provenance is exposed, so a pfn can be turned back into
//! a pointer).
//!
//! Each `HostPages<ID>` has its own counters, so that tests running in parallel, each with its own
//! `ID`, can check their own table leaks and the pages they saw marked dirty.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

use crate::mmu::pgtable::{PageOps, Table};
use crate::mmu::prim::AllocError;

/// How many distinct `HostPages<ID>` there can be.
pub(crate) const MAX_IDS: usize = 74;

/// A 4 KiB page, 4 KiB aligned.
const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(layout) => layout,
    Err(_) => panic!("bad page layout"),
};

/// The counters of one `HostPages<ID>`.
struct Counters {
    allocs: AtomicU64,
    frees: AtomicU64,
    /// Table allocations left before they start failing.
    allocs_left: AtomicU64,
    /// pfns passed to `set_page_dirty()`, in order.
    dirty: Mutex<Vec<u64>>,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            allocs_left: AtomicU64::new(u64::MAX),
            dirty: Mutex::new(Vec::new()),
        }
    }
}

static COUNTERS: [Counters; MAX_IDS] = [const { Counters::new() }; MAX_IDS];

/// Allocates a zeroed page and returns its pfn, or `None` if the allocator refuses.
pub(crate) fn alloc_page() -> Option<u64> {
    // SAFETY: the layout has a nonzero size.
    let page = unsafe { alloc_zeroed(PAGE) };
    if page.is_null() {
        return None;
    }
    Some((page.expose_provenance() >> 12) as u64)
}

/// A pointer to page `pfn`.
pub(crate) fn page_ptr(pfn: u64) -> *mut u8 {
    ptr::with_exposed_provenance_mut((pfn << 12) as usize)
}

/// Frees a page.
///
/// # Safety
///
/// `pfn` came from [`alloc_page()`], was not freed since, and is not used afterwards.
pub(crate) unsafe fn free_page(pfn: u64) {
    // SAFETY: allocated by `alloc_page()` with the same layout, per the caller.
    unsafe { dealloc(page_ptr(pfn), PAGE) };
}

/// Host table pages, with the counters of test `ID`.
pub(crate) struct HostPages<const ID: usize>;

impl<const ID: usize> HostPages<ID> {
    fn counters() -> &'static Counters {
        &COUNTERS[ID]
    }

    /// Table pages allocated so far.
    pub(crate) fn allocs() -> u64 {
        Self::counters().allocs.load(Ordering::Relaxed)
    }

    /// Table pages freed so far.
    pub(crate) fn frees() -> u64 {
        Self::counters().frees.load(Ordering::Relaxed)
    }

    /// Makes table allocations fail after `n` more.
    pub(crate) fn fail_after(n: u64) {
        Self::counters().allocs_left.store(n, Ordering::Relaxed);
    }

    /// Takes the pfns marked dirty so far, in order.
    pub(crate) fn take_dirty() -> Vec<u64> {
        std::mem::take(&mut *Self::counters().dirty.lock().unwrap())
    }
}

impl<const ID: usize> PageOps for HostPages<ID> {
    fn alloc_table() -> Result<u64, AllocError> {
        let c = Self::counters();
        c.allocs_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| AllocError)?;
        let pfn = alloc_page().ok_or(AllocError)?;
        c.allocs.fetch_add(1, Ordering::Relaxed);
        Ok(pfn)
    }

    unsafe fn free_table(pfn: u64) {
        // SAFETY: table pages come from `alloc_page()`, and the caller hands this one back.
        unsafe { free_page(pfn) };
        Self::counters().frees.fetch_add(1, Ordering::Relaxed);
    }

    unsafe fn table<'a>(pfn: u64) -> &'a Table {
        // SAFETY: the page is a live allocation of 4096 bytes, 4096-aligned (more than
        // `AtomicU64` needs), per the caller; zeroed or written only through atomics, every
        // bit pattern being a valid `AtomicU64`.
        unsafe { &*page_ptr(pfn).cast::<Table>() }
    }

    fn set_page_dirty(pfn: u64) {
        Self::counters().dirty.lock().unwrap().push(pfn);
    }
}
