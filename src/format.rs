// SPDX-License-Identifier: GPL-2.0

//! The page-table format of a space, chosen by SECMMU_CONFIGURE, and what
//! the kernel glue asks of it whatever it is.
//!
//! The two formats differ in how faults synchronize, and that shapes the
//! callers more than the tables do:
//!
//! - x86 EPT ([`X86Mmu`], shadow-MMU style): faults, zaps and locked aging
//!   hold the MMU lock for write; rmaps find every SPTE of a gfn; A/D-bit
//!   aging walks the rmaps with no MMU lock at all.
//! - arm64 stage-2 ([`S2Mmu`]): faults and aging hold the MMU lock for
//!   read and race each other with compare-exchange and the locked-entry
//!   protocol (see "Stage-2 (arm64)" in Documentation/secmmu-protocols.rst);
//!   only zaps hold it for write. No rmaps: zaps and aging walk the tables.
//!
//! Whatever touches the tables of a specific format (the fault path, aging)
//! matches on [`Pgt`]; what is the same for both (roots, snapshots, zaps,
//! statistics) goes through the methods here.

use crate::{
    arm64::mmu::{self as s2, S2Mmu, S2Root},
    kpages::KernelPages,
    pgtable::{MapLevel, Translation, WalkFault, ZapCursor, ZapProgress},
    x86::mmu::{self as x86, X86Mmu},
};

/// The page tables of a space.
pub(crate) enum Pgt {
    /// x86 EPT, 4 levels.
    X86(X86Mmu<KernelPages>),
    /// arm64 stage-2, 4K granule.
    S2(S2Mmu<KernelPages>),
}

/// What a vCPU needs to walk its root without any lock, as the hardware
/// does: fixed once the space is configured, valid while the space lives.
#[derive(Clone, Copy)]
pub(crate) enum Root {
    /// The root table's pfn.
    X86(u64),
    /// The start-level tables, and whether the walker sets AF itself.
    S2(S2Root, bool),
}

impl Root {
    /// Translates `gfn` for a read or a `write`, setting accessed (and
    /// dirty) state as the format's hardware would.
    ///
    /// # Safety
    ///
    /// `self` came from [`Pgt::root()`] of page tables that are not dropped
    /// before this returns, and the caller is in guest mode until it
    /// returns (tables a map or a zap unlinks are freed only after a TLB
    /// flush that waited for guest mode to end).
    pub(crate) unsafe fn translate(self, gfn: u64, write: bool) -> Result<Translation, WalkFault> {
        match self {
            // SAFETY: Per the caller, the MMU of the root outlives the call,
            // and the caller is in guest mode throughout.
            Root::X86(pfn) => unsafe { x86::translate::<KernelPages>(pfn, gfn, write) },
            // SAFETY: As above.
            Root::S2(root, hw_af) => unsafe {
                s2::translate::<KernelPages>(root, gfn, write, hw_af)
            },
        }
    }
}

impl Pgt {
    /// The lockless walker's handle of root `root`.
    pub(crate) fn root(&self, root: usize) -> Option<Root> {
        match self {
            Pgt::X86(m) => m.root_pfn(root).map(Root::X86),
            Pgt::S2(m) => m.root(root).map(|r| Root::S2(r, m.hw_af())),
        }
    }

    /// The largest leaf a map may install: the fault path clamps the level it maps at to this
    /// (a stage-2 walk that starts at level 2 has no 1G entry, and its `map()` refuses 1G).
    pub(crate) fn max_map_level(&self) -> MapLevel {
        match self {
            Pgt::X86(m) => m.max_map_level(),
            Pgt::S2(m) => m.max_map_level(),
        }
    }

    /// Limits the table pages the tables may hold ([`Pgt::table_pages()`],
    /// roots and tables unlinked but not yet freed included) to `pages`:
    /// past it, a map that needs a new table fails with
    /// `MapError::TableLimit` (nothing changed; the fault fails until zaps
    /// free tables). MMU lock held for write.
    pub(crate) fn set_table_limit(&mut self, pages: u64) {
        match self {
            Pgt::X86(m) => m.set_table_limit(pages),
            Pgt::S2(m) => m.set_table_limit(pages),
        }
    }

    /// Table pages the tables hold now, roots included.
    pub(crate) fn table_pages(&self) -> u64 {
        match self {
            Pgt::X86(m) => m.table_pages(),
            Pgt::S2(m) => m.table_pages(),
        }
    }

    /// The snapshot byte of `gfn` in root `root`.
    pub(crate) fn snapshot(&self, root: usize, gfn: u64) -> u8 {
        match self {
            Pgt::X86(m) => m.snapshot(root, gfn),
            Pgt::S2(m) => m.snapshot(root, gfn),
        }
    }

    /// One step of a resumable zap of the gfns `[cursor, end)` of slot
    /// `slot_id` (the x86 MMU finds them through the slot's rmaps; stage-2
    /// walks its tables over the range), which also unlinks the tables it
    /// leaves empty: flush, then [`Pgt::free_zapped_tables()`]; on
    /// `tables_full`, flush, free and go on. MMU lock held for write.
    pub(crate) fn zap_gfn_range_step(
        &mut self,
        slot_id: u32,
        cursor: &mut ZapCursor,
        end: u64,
        should_stop: &mut dyn FnMut() -> bool,
    ) -> ZapProgress {
        match self {
            Pgt::X86(m) => m.zap_gfn_range_step(slot_id, cursor, end, should_stop),
            Pgt::S2(m) => m.zap_gfn_range_step(cursor, end, should_stop),
        }
    }

    /// The first leaf of root `root` mapping a gfn in `[gfn, end)`: its first
    /// gfn and that gfn's translation. MMU lock held, either side.
    pub(crate) fn next_leaf(&self, root: usize, gfn: u64, end: u64) -> Option<(u64, Translation)> {
        match self {
            Pgt::X86(m) => m.next_leaf(root, gfn, end),
            Pgt::S2(m) => m.next_leaf(root, gfn, end),
        }
    }

    /// Frees the table pages zaps unlinked (both formats unlink the tables a
    /// zap of a range leaves empty). MMU lock held for write, after the TLB
    /// flush that followed the zaps.
    pub(crate) fn free_zapped_tables(&mut self) {
        match self {
            Pgt::X86(m) => m.free_zapped_tables(),
            Pgt::S2(m) => m.free_zapped_tables(),
        }
    }
}
