// SPDX-License-Identifier: GPL-2.0

//! Page-table levels: the one vocabulary of the walker, both formats, the fault path and the
//! TLB.
//!
//! Both formats have 4 KiB tables of 512 entries, 9 bits of gfn per level and at most four
//! levels.  [`Level`] numbers them as Linux's `enum pg_level` and KVM x86 do (`PG_LEVEL_4K` = 1,
//! `PG_LEVEL_2M`, `PG_LEVEL_1G`, `PG_LEVEL_512G` = 4): the number grows with the size an entry
//! covers, so a larger mapping is a larger level (`level > Level::L4K` is a huge page,
//! `level.min(host)` the smaller of two), and the root of an n-level walk is level n
//! ([`Level::root_of()`], KVM x86's `root_level`).  A walk goes down with [`Level::lower()`], as
//! `tdp_iter` does with `level--`.
//!
//! arm64 numbers its levels the other way round, from the start level down to level 3
//! (`KVM_PGTABLE_LAST_LEVEL`), which maps 4 KiB pages: arm64's level 3 is [`Level::L4K`], 2 is
//! [`Level::L2M`], 1 is [`Level::L1G`], 0 is [`Level::L512G`].  KVM's arm64 `level + 1` (the
//! level of a child table) is [`Level::lower()`] here; its start level `4 - levels` is
//! [`Level::root_of(levels)`](Level::root_of).
//!
//! The uAPI has numbers of its own for the levels a leaf maps at (`SECMMU_SNAP_LEVEL`: 0 for
//! 4K), converted in one place: [`Level::uapi()`].
//!
//! Kernel-free: built into the module and into the host crate.

/// Log2 of the entries in a table: the gfn bits one level translates.
pub(crate) const TABLE_SHIFT: u32 = 9;

/// Log2 of the size of a page: the bits of an address below its gfn.
pub(crate) const PAGE_SHIFT: u32 = 12;

/// A page-table level, numbered like Linux's `enum pg_level` (see the module documentation).
/// An entry's level is the level of the table holding it: a leaf at [`Level::L2M`] maps 2 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub(crate) enum Level {
    /// 4 KiB pages: the last table of a walk, whose entries are never tables.
    L4K = 1,
    /// 2 MiB pages, or tables of 4K entries.
    L2M = 2,
    /// 1 GiB pages, or tables of 2M entries.
    L1G = 3,
    /// Tables of 1G entries: the root of a 4-level walk.  Neither format maps 512G pages.
    L512G = 4,
}

impl Level {
    /// Every level, smallest first.
    pub(crate) const ALL: [Level; 4] = [Level::L4K, Level::L2M, Level::L1G, Level::L512G];

    /// The largest level a leaf can map at, in either format.
    pub(crate) const MAX_LEAF: Level = Level::L1G;

    /// Every level a leaf can map at, smallest first: the order zaps visit them in.
    pub(crate) const MAPPABLE: [Level; 3] = [Level::L4K, Level::L2M, Level::L1G];

    /// The level of the root of a walk of `levels` levels (1 to 4): KVM x86's `root_level`,
    /// arm64's start level `KVM_PGTABLE_LAST_LEVEL + 1 - levels`.
    #[inline]
    pub(crate) const fn root_of(levels: u32) -> Level {
        match levels {
            0 | 1 => Level::L4K,
            2 => Level::L2M,
            3 => Level::L1G,
            _ => Level::L512G,
        }
    }

    /// Position in [`Level::ALL`] (and [`Level::MAPPABLE`]), for per-level arrays.
    #[inline]
    pub(crate) const fn idx(self) -> usize {
        self as usize - 1
    }

    /// Log2 of the number of 4K gfns one entry at this level covers.
    #[inline]
    pub(crate) const fn gfn_shift(self) -> u32 {
        TABLE_SHIFT * (self as u32 - 1)
    }

    /// Log2 of the number of bytes one entry at this level covers (KVM's
    /// `kvm_granule_shift()`).
    #[inline]
    pub(crate) const fn page_shift(self) -> u32 {
        PAGE_SHIFT + self.gfn_shift()
    }

    /// Number of 4K gfns one entry at this level covers (KVM's `KVM_PAGES_PER_HPAGE`).
    #[inline]
    pub(crate) const fn pages(self) -> u64 {
        1 << self.gfn_shift()
    }

    /// Number of 4K gfns a whole table at this level covers.
    #[inline]
    pub(crate) const fn table_pages(self) -> u64 {
        self.pages() << TABLE_SHIFT
    }

    /// Index of the entry covering `gfn` in its table at this level (KVM's `SPTE_INDEX`,
    /// `kvm_pgtable_idx()`).
    #[inline]
    pub(crate) const fn index(self, gfn: u64) -> usize {
        ((gfn >> self.gfn_shift()) as usize) & ((1 << TABLE_SHIFT) - 1)
    }

    /// First gfn of the range one entry at this level maps around `gfn`.  Walks over a gfn range
    /// at a huge level must start here, or the last huge page of an unaligned range is skipped
    /// ("Ranges and mapping levels").
    #[inline]
    pub(crate) const fn align_down(self, gfn: u64) -> u64 {
        gfn & !(self.pages() - 1)
    }

    /// The level of the table a table entry at this level points at (KVM arm64's `level + 1`,
    /// x86's `level - 1`); `None` at [`Level::L4K`], whose entries are never tables.
    #[inline]
    pub(crate) const fn lower(self) -> Option<Level> {
        match self {
            Level::L4K => None,
            Level::L2M => Some(Level::L4K),
            Level::L1G => Some(Level::L2M),
            Level::L512G => Some(Level::L1G),
        }
    }

    /// The next larger level a leaf can map at; `None` from [`Level::MAX_LEAF`] up.
    #[inline]
    pub(crate) const fn larger(self) -> Option<Level> {
        match self {
            Level::L4K => Some(Level::L2M),
            Level::L2M => Some(Level::L1G),
            Level::L1G | Level::L512G => None,
        }
    }

    /// The uAPI's number for a leaf at this level (`SECMMU_SNAP_LEVEL`: 0 for 4K, 1 for 2M, 2
    /// for 1G): the one place levels cross the uAPI.
    #[inline]
    pub(crate) const fn uapi(self) -> u8 {
        self as u8 - 1
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(Level::L4K.pages(), 1);
        assert_eq!(Level::L2M.pages(), 512);
        assert_eq!(Level::L1G.pages(), 1 << 18);
        assert_eq!(Level::L2M.align_down(0x3ff), 0x200);
        assert_eq!(Level::L1G.larger(), None);
        for (i, l) in Level::MAPPABLE.into_iter().enumerate() {
            assert_eq!(l.idx(), i);
        }
        for (i, l) in Level::ALL.into_iter().enumerate() {
            assert_eq!(l.idx(), i);
        }
    }

    #[test]
    fn levels_match_kvm() {
        // PG_LEVEL_4K..PG_LEVEL_512G, and arm64's levels 3..0 (kvm_granule_shift()).
        assert_eq!(Level::ALL.map(|l| l as u8), [1, 2, 3, 4]);
        assert_eq!(Level::ALL.map(Level::page_shift), [12, 21, 30, 39]);
        assert_eq!(
            [4, 3, 2].map(Level::root_of),
            [Level::L512G, Level::L1G, Level::L2M]
        );
        assert_eq!(Level::MAPPABLE.map(Level::uapi), [0, 1, 2]);
    }
}
