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
