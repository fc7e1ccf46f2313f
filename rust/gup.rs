// SPDX-License-Identifier: GPL-2.0

//! References on user pages, from `get_user_pages_fast()`.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! A [`UserPageRef`] keeps the page behind a user address of the current
//! task allocated (not mapped: the primary MMU may unmap it meanwhile, and
//! an MMU notifier tells who mirrors the mapping) until it is dropped, as
//! KVM's fault path holds the page it maps until the mapping is installed.
//!
//! # Examples
//!
//! ```
//! use crate::ext::gup::UserPageRef;
//!
//! fn touch(addr: usize) -> Result<usize> {
//!     let page = UserPageRef::get_fast(addr, true)?;
//!     // ... map `page.pfn()` somewhere, written through ...
//!     page.set_dirty();
//!     Ok(page.pfn())
//! } // put_page()
//! ```

use super::bindings;
use kernel::{error::to_result, prelude::*};

/// A reference on the page at a user address (`get_user_pages_fast()`),
/// put (`put_page()`) when dropped.
///
/// # Invariants
///
/// The value owns one reference on the page of frame number `pfn`.
pub(crate) struct UserPageRef {
    pfn: usize,
}

impl UserPageRef {
    /// Resolves the user address `addr` of the current task to its page,
    /// faulting it in (for writing when `write`, breaking copy-on-write),
    /// and takes a reference on it. May sleep.
    ///
    /// Fails with `EFAULT` if nothing may be mapped there (or the task has
    /// no mm, as a kernel thread), and otherwise with GUP's errors: `ENOMEM`,
    /// `EINTR` or `ERESTARTSYS` on a fatal signal, `EHWPOISON`, ...
    pub(crate) fn get_fast(addr: usize, write: bool) -> Result<Self> {
        Self::get(addr, write, false)
    }

    /// The page the current task's primary MMU maps at `addr` now, with a
    /// reference on it, without faulting anything in: `EFAULT` if nothing
    /// is mapped there, or (for `write`) nothing writable. May sleep.
    ///
    /// Where the lockless walk (`get_user_pages_fast()`) finds no page, the
    /// slow path reads the entry under the mmap lock and the page-table
    /// lock, so an entry that the primary MMU clears and sets again under
    /// that lock without telling MMU notifiers (arm64's `contpte_convert()`
    /// folding or unfolding a contiguous block) is seen as it is before or
    /// after, never in between.
    pub(crate) fn get_mapped(addr: usize, write: bool) -> Result<Self> {
        Self::get(addr, write, true)
    }

    /// The page the current task's primary MMU maps at `addr` now, mapped
    /// writable if `write`, with a reference on it: the lockless walk alone
    /// (`get_user_page_fast_only()`), which neither faults nor sleeps.
    /// `None` if it finds no such page. KVM's `hva_to_pfn_fast()` asks it
    /// whether a read fault may map writable.
    pub(crate) fn get_fast_only(addr: usize, write: bool) -> Option<Self> {
        kernel::current!().mm()?;
        let mut pfn = 0;
        // SAFETY: As in `get()`: the current task has an mm; any address is
        // fine; `pfn` is a valid out pointer.
        let found = unsafe { bindings::secmmu_get_user_page_fast_only(addr, write, &mut pfn) };
        // Not `found.then_some(Self { .. })`: that would make (and drop,
        // putting a reference never taken) a value for a page not found.
        if !found {
            return None;
        }
        // INVARIANT: It found the page: it took a reference on `pfn`.
        Some(Self { pfn })
    }

    fn get(addr: usize, write: bool, nofault: bool) -> Result<Self> {
        if kernel::current!().mm().is_none() {
            return Err(EFAULT);
        }
        let mut pfn = 0;
        // SAFETY: The current task has an mm, whose pages GUP resolves; any
        // address is fine (GUP checks it); `pfn` is a valid out pointer.
        to_result(unsafe { bindings::secmmu_get_user_page(addr, write, nofault, &mut pfn) })?;
        // INVARIANT: The call succeeded: it took a reference on `pfn`.
        Ok(Self { pfn })
    }

    /// The page frame number of the page.
    pub(crate) fn pfn(&self) -> usize {
        self.pfn
    }

    /// Marks the page dirty: it was (or is about to be) written through
    /// another mapping than the primary MMU's. Like KVM's
    /// `kvm_set_page_dirty()`, a no-op for reserved pages.
    pub(crate) fn set_dirty(&self) {
        // SAFETY: By the type invariants we hold a reference on the page,
        // so it is allocated.
        unsafe { bindings::secmmu_set_page_dirty(self.pfn) };
    }
}

impl Drop for UserPageRef {
    fn drop(&mut self) {
        // SAFETY: By the type invariants, this is our reference on the page.
        unsafe { bindings::secmmu_put_user_page(self.pfn) };
    }
}

/// References on the pages behind a run of user addresses of the current
/// task, from one `get_user_pages_fast()` call: up to `N` pages, put
/// (`put_page()`) when released or dropped.
///
/// The batch form of [`UserPageRef`], for callers that resolve many
/// consecutive pages at once (KVM's `kvm_prefault_memory()`-like loops): one
/// call walks the page tables once for the whole run, and takes the
/// references of a large folio in one go.
///
/// # Examples
///
/// ```
/// use crate::ext::gup::UserPages;
///
/// fn pfns(addr: usize) -> Result<usize> {
///     let mut pages = KBox::new(UserPages::<64>::new(), GFP_KERNEL)?;
///     let n = pages.get_fast(addr, 64, false)?;
///     // ... map `pages.pfn(0..n)` somewhere, read-only ...
///     Ok(n)
/// } // put_page() on each
/// ```
///
/// # Invariants
///
/// `pages[..nr]` are pages on each of which the value owns one reference.
pub(crate) struct UserPages<const N: usize> {
    pages: [*mut bindings::page; N],
    nr: usize,
}

impl<const N: usize> UserPages<N> {
    /// An empty batch.
    pub(crate) const fn new() -> Self {
        // INVARIANT: No page is held.
        Self {
            pages: [core::ptr::null_mut(); N],
            nr: 0,
        }
    }

    /// Puts the pages held, if any, then resolves the `nr` pages from user
    /// address `addr` (page aligned) of the current task, faulting them in
    /// (for writing when `write`, breaking copy-on-write; for reading
    /// never), and takes a reference on each. May sleep.
    ///
    /// Returns how many pages it holds, from the first: at least one, and
    /// fewer than `nr` if a page past the first cannot be resolved (the
    /// end of a VMA, ...). Fails, holding nothing, with `EINVAL` if `nr`
    /// is 0 or more than `N` or `addr` is not page aligned, `EFAULT` if the
    /// first page cannot be mapped (or the task has no mm), and otherwise
    /// with GUP's errors: `ENOMEM`, `EINTR` or `ERESTARTSYS` on a fatal
    /// signal, `EHWPOISON`, ...
    pub(crate) fn get_fast(&mut self, addr: usize, nr: usize, write: bool) -> Result<usize> {
        self.release();
        if nr == 0 || nr > N || addr % kernel::page::PAGE_SIZE != 0 {
            return Err(EINVAL);
        }
        if kernel::current!().mm().is_none() {
            return Err(EFAULT);
        }
        let flags: u32 = if write { bindings::FOLL_WRITE } else { 0 };
        // `nr` is at most `N`; a batch larger than `c_int` is refused.
        let count = i32::try_from(nr).map_err(|_| EINVAL)?;
        let pages = self.pages.as_mut_ptr();
        // SAFETY: The current task has an mm, whose pages GUP resolves; any
        // address is fine (GUP checks it); `pages` has room for `nr` page
        // pointers, and GUP writes at most that many.
        let got = unsafe { bindings::get_user_pages_fast(addr, count, flags, pages) };
        if got < 0 {
            return Err(Error::from_errno(got));
        }
        // Not expected (GUP fails rather than return nothing), but never
        // trust a count beyond what was asked.
        let got = (got as usize).min(nr);
        if got == 0 {
            return Err(EFAULT);
        }
        // INVARIANT: GUP took one reference on each of the first `got`
        // pages it stored.
        self.nr = got;
        Ok(got)
    }

    /// Puts the pages held, if any, then takes a reference on each page the
    /// current task's primary MMU maps (writable, if `write`) from user
    /// address `addr` (page aligned) on, up to `nr` pages and the first that
    /// it does not map so: the lockless walk alone
    /// (`get_user_pages_fast_only()`), which neither faults nor sleeps, as
    /// KVM's `kvm_prefetch_pages()` asks for the pages around a fault.
    ///
    /// Returns how many pages it holds, from the first: 0 if the first page
    /// is not mapped so, if `nr` is 0 or more than `N`, if `addr` is not
    /// page aligned, or if the task has no mm.
    pub(crate) fn get_fast_only(&mut self, addr: usize, nr: usize, write: bool) -> usize {
        self.release();
        if nr == 0 || nr > N || addr % kernel::page::PAGE_SIZE != 0 {
            return 0;
        }
        if kernel::current!().mm().is_none() {
            return 0;
        }
        let flags: u32 = if write { bindings::FOLL_WRITE } else { 0 };
        let Ok(count) = i32::try_from(nr) else {
            return 0;
        };
        let pages = self.pages.as_mut_ptr();
        // SAFETY: The current task has an mm, whose pages the lockless walk
        // looks up; any address is fine (it checks it); `pages` has room for
        // `nr` page pointers, and it writes at most that many.
        let got = unsafe { bindings::get_user_pages_fast_only(addr, count, flags, pages) };
        // Negative: nothing taken. Never trust a count beyond what was asked.
        let got = usize::try_from(got).unwrap_or(0).min(nr);
        // INVARIANT: The walk took one reference on each of the first `got`
        // pages it stored.
        self.nr = got;
        got
    }

    /// How many pages the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.nr
    }

    /// Whether the batch holds no page.
    pub(crate) fn is_empty(&self) -> bool {
        self.nr == 0
    }

    /// The frame number of page `i` of the batch (`i < len()`).
    pub(crate) fn pfn(&self, i: usize) -> usize {
        assert!(i < self.nr);
        // SAFETY: By the type invariants we hold a reference on page `i`,
        // so it is a valid, allocated page.
        unsafe { bindings::secmmu_page_to_pfn(self.pages[i]) }
    }

    /// Marks page `i` (`i < len()`) dirty, as [`UserPageRef::set_dirty()`].
    pub(crate) fn set_dirty(&self, i: usize) {
        let pfn = self.pfn(i);
        // SAFETY: By the type invariants we hold a reference on page `i`,
        // so it is allocated.
        unsafe { bindings::secmmu_set_page_dirty(pfn) };
    }

    /// Puts every page held: the batch is empty after.
    pub(crate) fn release(&mut self) {
        for &page in &self.pages[..self.nr] {
            // SAFETY: By the type invariants, this is our reference on the
            // page; `nr` is reset below, so it is put once.
            unsafe { bindings::secmmu_put_page(page) };
        }
        // INVARIANT: Every reference was put.
        self.nr = 0;
    }
}

impl<const N: usize> Drop for UserPages<N> {
    fn drop(&mut self) {
        self.release();
    }
}

// SAFETY: The page references are not tied to the thread that took them:
// `put_page()` may run on any thread.
unsafe impl<const N: usize> Send for UserPages<N> {}
