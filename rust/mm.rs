// SPDX-License-Identifier: GPL-2.0

//! What a secondary MMU reads of the primary MMU: where user space ends,
//! and how the page tables of an mm map an address right now.
//!
//! C header: [`include/linux/pgtable.h`](srctree/include/linux/pgtable.h)
//!
//! The lookups are snapshots, as KVM's `host_pfn_mapping_level()` is: the
//! mapping may change as soon as they return. A user that maps what it
//! found checks afterwards, under its own lock, that no MMU notifier
//! invalidation of the address ran since before the lookup.

use super::bindings;
use kernel::mm::MmWithUser;

/// The first address above the current task's user address space
/// (`TASK_SIZE`: it depends on the task, e.g. 32-bit or 5-level paging).
#[inline]
pub(crate) fn task_size() -> usize {
    // SAFETY: Reads the current task's state; always safe.
    unsafe { bindings::secmmu_task_size() }
}

/// The page-table level of a present leaf of the primary MMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LeafLevel {
    /// A PTE: one base page.
    Pte,
    /// A PMD leaf (2M with 4K pages).
    Pmd,
    /// A PUD leaf (1G with 4K pages).
    Pud,
}

/// A present leaf of the primary MMU, as [`leaf()`] found it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Leaf {
    /// The level of the leaf.
    pub(crate) level: LeafLevel,
    /// The page frame number of the base page of the address looked up
    /// (not of the leaf's first page).
    pub(crate) pfn: usize,
    /// Whether the leaf allows writes.
    pub(crate) writable: bool,
}

/// The present leaf that maps `addr` in `mm`, if any.
///
/// The walk is GUP-fast's: with interrupts off, so page tables freed meanwhile
/// wait for it, each entry read once (a table may become a huge leaf, or
/// the other way round, under the walk). `mm` has users, so its top-level
/// table is not torn down. Does not sleep.
pub(crate) fn leaf(mm: &MmWithUser, addr: usize) -> Option<Leaf> {
    let (mut pfn, mut writable) = (0, false);
    // SAFETY: `mm` is a valid mm with users, as the helper requires; it
    // walks its page tables with interrupts off, only reading. The out
    // pointers are valid.
    let level = unsafe { bindings::secmmu_host_leaf(mm.as_raw(), addr, &mut pfn, &mut writable) };
    let level = match level {
        0 => LeafLevel::Pte,
        1 => LeafLevel::Pmd,
        2 => LeafLevel::Pud,
        _ => return None,
    };
    Some(Leaf {
        level,
        pfn,
        writable,
    })
}

/// The level at which `mm` maps `addr` now (KVM's
/// `host_pfn_mapping_level()`): [`LeafLevel::Pte`] too when nothing maps
/// it. A secondary MMU maps no larger than this, whatever the folio size:
/// a PTE-mapped THP, or a huge page partly unmapped, is mapped with base
/// pages.
pub(crate) fn mapping_level(mm: &MmWithUser, addr: usize) -> LeafLevel {
    leaf(mm, addr).map_or(LeafLevel::Pte, |leaf| leaf.level)
}
