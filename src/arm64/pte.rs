// SPDX-License-Identifier: GPL-2.0

//! arm64 stage-2 descriptors (4 KiB granule) and the geometry of a stage-2 walk, after KVM's
//! `arch/arm64/include/asm/kvm_pgtable.h` and `arch/arm64/kvm/hyp/pgtable.c`.
//!
//! | bits  | name       | meaning                                                            |
//! |-------|------------|--------------------------------------------------------------------|
//! | 0     | valid      | `KVM_PTE_VALID`: the hardware walker uses the entry                 |
//! | 1     | type       | table (above 4K) or page (at 4K); 0 = block (1G, 2M)                |
//! | 5:2   | MemAttr    | leaf: stage-2 memory attributes, normal write-back (`0xf`)         |
//! | 6     | S2AP R     | leaf: readable                                                     |
//! | 7     | S2AP W     | leaf: writable                                                     |
//! | 9:8   | SH         | leaf: shareability, inner shareable (`3`)                          |
//! | 10    | AF         | leaf: access flag; without it an access takes an access-flag fault |
//! | 47:12 | OA         | output address: the page, block or next table                      |
//! | 54:53 | XN         | leaf: execute never (`0b00`: executable at EL1 and EL0)            |
//! | 58:55 | SW         | software bits (`KVM_PTE_LEAF_ATTR_HI_SW`), ignored by the walker  |
//!
//! Invalid entries (bit 0 clear) are ignored by the hardware walker; software gives two of them
//! a meaning:
//!
//! - `0`: empty.  Tables are allocated zeroed, so every entry of a new table is empty.
//! - [`LOCKED`] (`KVM_INVALID_PTE_LOCKED`, bit 10 with bit 0 clear): a walker owns the entry for
//!   a break-before-make sequence ([`try_break()`] then [`make()`], KVM's
//!   `stage2_try_break_pte()` / `stage2_make_pte()`; see "Locked entries", "Break-before-make" and
//!   "Publishing with release" in Documentation/secmmu-protocols.rst, whose section names are
//!   quoted below).  Nobody else may change a locked entry: compare-exchanges from any other value
//!   fail on it, and no path compare-exchanges from [`LOCKED`] ("Locked entries").  This is the
//!   encoding KVM introduced with parallel stage-2 faults (Linux 6.2, 2022); Linux 7.3 moved the
//!   lock into the invalid-type field `[63:60] = 1` of pKVM's annotations, which secmmu does not
//!   have, so bit 10 stays.
//!
//! Leaves made here are normal write-back memory, inner shareable, readable, executable, and
//! writable only if asked ([`make_leaf()`], KVM's `kvm_init_valid_leaf_pte()` with the attributes
//! of `stage2_set_prot_attr()`).  The software bits are reserved and never set: stage-2 without
//! DBM has no dirty bit, so a writable leaf counts as dirty ([`is_dirty()`]) and nothing needs to
//! be remembered besides what the hardware bits say.
//!
//! Levels are [`Level`]s, numbered like Linux's `PG_LEVEL_*` (`mmu/level.rs`).  KVM numbers
//! arm64's levels the other way round, for 4 KiB pages: its level 3, the last (4K pages), is
//! [`Level::L4K`]; 2, which maps 2M blocks, [`Level::L2M`]; 1, which maps 1G blocks,
//! [`Level::L1G`]; 0, which only points at tables, [`Level::L512G`].  KVM's `level + 1` (a child
//! table) is [`Level::lower()`].  A walk starts at [`Geometry::start_level`],
//! which may use up to 16 concatenated tables ([`Geometry::pgd_pages`], KVM's `kvm_pgd_pages()`).
//!
//! The helpers that change an entry ([`try_set()`], [`try_break()`], [`make()`]) work on a shared
//! `&AtomicU64`: several walkers may change the same entry at the same time under the read side
//! of the MMU lock, or with no lock at all (the hardware walker setting AF).  Each says which
//! ordering it uses and why.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::level::Level;
use crate::mmu::prim::{AtomicU64, Ordering};

/// `KVM_PTE_VALID`: the hardware walker uses the entry.
pub(crate) const VALID: u64 = 1 << 0;
/// `KVM_PTE_TYPE`: table (above [`Level::L4K`]) or page (at it) when set; block when clear.
pub(crate) const TYPE: u64 = 1 << 1;
/// Position of the stage-2 memory attributes of a leaf.
pub(crate) const MEMATTR_SHIFT: u32 = 2;
/// `KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR`.
pub(crate) const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
/// `MT_S2_NORMAL`: normal memory, inner and outer write-back cacheable.
pub(crate) const MEMATTR_NORMAL: u64 = 0xf;
/// `KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R`: readable.
pub(crate) const S2AP_R: u64 = 1 << 6;
/// `KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W`: writable.
pub(crate) const S2AP_W: u64 = 1 << 7;
/// Position of the shareability field of a leaf.
pub(crate) const SH_SHIFT: u32 = 8;
/// `KVM_PTE_LEAF_ATTR_LO_S2_SH`.
pub(crate) const SH_MASK: u64 = 0b11 << SH_SHIFT;
/// `KVM_PTE_LEAF_ATTR_LO_S2_SH_IS`: inner shareable.
pub(crate) const SH_IS: u64 = 3;
/// `KVM_PTE_LEAF_ATTR_LO_S2_AF`: access flag.
pub(crate) const AF: u64 = 1 << 10;
/// Log2 of the size of a 4K page.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// `KVM_PTE_ADDR_MASK`: the output address, bits 47:12 (no 52-bit PAs here).
pub(crate) const ADDR_MASK: u64 = ((1 << 48) - 1) & !((1 << PAGE_SHIFT) - 1);
/// Position of the execute-never field of a leaf.
pub(crate) const XN_SHIFT: u32 = 53;
/// `KVM_PTE_LEAF_ATTR_HI_S2_XN`.
pub(crate) const XN_MASK: u64 = 0b11 << XN_SHIFT;
/// `KVM_PTE_LEAF_ATTR_HI_SW`: bits the walker ignores, for software.
pub(crate) const SW_MASK: u64 = 0b1111 << 55;
/// A software bit of [`SW_MASK`]: a fault made the leaf writable (it resolved the page for
/// write).  Dirty logging's write protection takes [`S2AP_W`] and leaves this, so a write fault
/// may make the leaf writable again without resolving the page (x86's MMU-writable SPTE bit;
/// KVM's arm64 keeps no such bit and resolves the page again).
pub(crate) const SW_WRITABLE: u64 = 1 << 55;
/// `KVM_INVALID_PTE_LOCKED`: the invalid value of an entry owned by a break-before-make.
pub(crate) const LOCKED: u64 = AF;

// The fields must not overlap, and the locked value must be invalid.
const _: () = {
    let fields = [
        VALID,
        TYPE,
        MEMATTR_MASK,
        S2AP_R,
        S2AP_W,
        SH_MASK,
        AF,
        ADDR_MASK,
        XN_MASK,
        SW_MASK,
    ];
    let mut seen = 0;
    let mut i = 0;
    while i < fields.len() {
        assert!(seen & fields[i] == 0);
        seen |= fields[i];
        i += 1;
    }
    assert!(LOCKED & VALID == 0);
};

/// The last level (KVM's `KVM_PGTABLE_LAST_LEVEL`, 3): its entries map 4K pages.
pub(crate) const LAST_LEVEL: Level = Level::L4K;
/// The largest level that can map blocks with 4 KiB pages (`KVM_PGTABLE_MIN_BLOCK_LEVEL`, 1).
pub(crate) const MAX_BLOCK_LEVEL: Level = Level::L1G;
/// Address bits one table translates (512 entries, KVM's `PTDESC_TABLE_SHIFT`).
pub(crate) const TABLE_SHIFT: u32 = PAGE_SHIFT - 3;

/// Smallest input (guest-physical) address size, in bits, an MMU may have.
pub(crate) const MIN_IA_BITS: u32 = 32;
/// Largest input address size: 48 bits, four levels; no LPA2 (52 bits, level -1).
pub(crate) const MAX_IA_BITS: u32 = 48;
/// Most tables concatenated at the start level (the architecture's limit, 16).
pub(crate) const MAX_PGD_PAGES: usize = 16;
/// Most levels of a walk.
pub(crate) const MAX_LEVELS: u32 = 4;

/// Log2 of the bytes one entry at `level` covers (KVM's `kvm_granule_shift()`,
/// `ARM64_HW_PGTABLE_LEVEL_SHIFT()`): 12 at [`Level::L4K`], 21, 30, 39 at [`Level::L512G`].
#[inline]
pub(crate) const fn granule_shift(level: Level) -> u32 {
    level.page_shift()
}

/// `ARM64_HW_PGTABLE_LEVELS(va_bits)` for 4 KiB pages: levels needed to translate `va_bits`.
#[inline]
pub(crate) const fn hw_pgtable_levels(va_bits: u32) -> u32 {
    (va_bits - 3 - 1) / TABLE_SHIFT
}

/// `stage2_pgtable_levels(ipa)`: levels of a stage-2 walk of `ia_bits`, which can resolve 4 more
/// bits at its start level than a stage-1 walk by concatenating up to 16 tables.
#[inline]
pub(crate) const fn stage2_pgtable_levels(ia_bits: u32) -> u32 {
    hw_pgtable_levels(ia_bits - 4)
}

/// The shape of the stage-2 walk of one input address size (KVM's `kvm_pgtable::ia_bits` and
/// `start_level`, and `kvm_pgd_pages()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Input (guest-physical) address bits.
    pub(crate) ia_bits: u32,
    /// Levels of the walk, 2 to 4 (KVM's `kvm_get_vtcr()` uses at least 2).
    pub(crate) levels: u32,
    /// First level of the walk: the root of a walk of `levels` (KVM's `KVM_PGTABLE_LAST_LEVEL + 1
    /// - levels`).
    pub(crate) start_level: Level,
    /// Concatenated tables at the start level, 1 to 16.
    pub(crate) pgd_pages: usize,
}

impl Geometry {
    /// The geometry for `ia_bits` ([`MIN_IA_BITS`]..=[`MAX_IA_BITS`]), or `None` out of range.
    pub(crate) const fn new(ia_bits: u32) -> Option<Geometry> {
        if ia_bits < MIN_IA_BITS || ia_bits > MAX_IA_BITS {
            return None;
        }
        let mut levels = stage2_pgtable_levels(ia_bits);
        // kvm_get_vtcr(): "Use a minimum 2 level page table to prevent splitting host PMD huge
        // pages at stage2" (stage2_pgtable_levels() is 2 from 32 bits anyway).
        if levels < 2 {
            levels = 2;
        }
        let start_level = Level::root_of(levels);
        // kvm_pgd_pages(): the index of the start-level table holding the last address, + 1.
        // granule_shift(start_level - 1) (one level up, in KVM's numbering) is the span of a
        // whole start-level table.
        let pgd_shift = granule_shift(start_level) + TABLE_SHIFT;
        let mask = (1u64 << ia_bits) - 1;
        let pgd_pages = (mask >> pgd_shift) as usize + 1;
        if pgd_pages > MAX_PGD_PAGES {
            return None;
        }
        Some(Geometry {
            ia_bits,
            levels,
            start_level,
            pgd_pages,
        })
    }

    /// Bits of gfn translated: gfns at or above `1 << gfn_bits()` are outside the space.
    #[inline]
    pub(crate) const fn gfn_bits(&self) -> u32 {
        self.ia_bits - PAGE_SHIFT
    }

    /// One past the last gfn of the space.
    #[inline]
    pub(crate) const fn gfn_limit(&self) -> u64 {
        1 << self.gfn_bits()
    }

    /// Which of the concatenated start-level tables holds the entry of `gfn` (KVM's
    /// `kvm_pgd_page_idx()`); `gfn` must be below [`Geometry::gfn_limit()`].
    #[inline]
    pub(crate) const fn pgd_page(&self, gfn: u64) -> usize {
        (gfn >> (self.start_level.gfn_shift() + TABLE_SHIFT)) as usize
    }

    /// Table pages a map may need to link below the start level: one per level.
    #[inline]
    pub(crate) const fn map_min_tables(&self) -> usize {
        (self.levels - 1) as usize
    }
}

/// Whether the entry is valid: the hardware walker uses it (`kvm_pte_valid()`).
#[inline]
pub(crate) const fn is_valid(pte: u64) -> bool {
    pte & VALID != 0
}

/// Whether the entry is locked by a walker's break-before-make (`stage2_pte_is_locked()`).
#[inline]
pub(crate) const fn is_locked(pte: u64) -> bool {
    !is_valid(pte) && pte & LOCKED != 0
}

/// Whether the entry at `level` points at a table (`kvm_pte_table()`).
#[inline]
pub(crate) const fn is_table(pte: u64, level: Level) -> bool {
    !matches!(level, LAST_LEVEL) && is_valid(pte) && pte & TYPE != 0
}

/// Whether the entry at `level` is a valid leaf: a page at the last level, a block above.
#[inline]
pub(crate) const fn is_leaf(pte: u64, level: Level) -> bool {
    is_valid(pte) && !is_table(pte, level)
}

/// The host page frame number of the page, block or table the entry points at
/// (`kvm_pte_to_pfn()`).
#[inline]
pub(crate) const fn pfn(pte: u64) -> u64 {
    (pte & ADDR_MASK) >> PAGE_SHIFT
}

/// Whether `pfn` fits the output address field.
#[inline]
pub(crate) const fn pfn_fits(pfn: u64) -> bool {
    pfn <= ADDR_MASK >> PAGE_SHIFT
}

/// Whether the leaf allows writes.
#[inline]
pub(crate) const fn is_writable(pte: u64) -> bool {
    pte & S2AP_W != 0
}

/// Whether a fault made the leaf writable, even if write protection took [`S2AP_W`] since.
#[inline]
pub(crate) const fn was_writable(pte: u64) -> bool {
    pte & SW_WRITABLE != 0
}

/// Whether the leaf's access flag is set: accessed since made or last aged.
#[inline]
pub(crate) const fn is_young(pte: u64) -> bool {
    pte & AF != 0
}

/// Whether the page a valid leaf maps may have been written through it.  Stage-2 without DBM has
/// no dirty bit: a writable leaf counts as dirty, so whoever removes it marks its page dirty.
#[inline]
pub(crate) const fn is_dirty(pte: u64) -> bool {
    is_writable(pte)
}

/// The leaf with its access flag set (what `kvm_pgtable_stage2_mkyoung()` sets).
#[inline]
pub(crate) const fn mkyoung(pte: u64) -> u64 {
    pte | AF
}

/// The leaf with its access flag clear (what `stage2_age_walker()` writes).
#[inline]
pub(crate) const fn mkold(pte: u64) -> u64 {
    pte & !AF
}

/// The leaf made writable, keeping every other bit (a permission relax,
/// `kvm_pgtable_stage2_relax_perms()`), and marked as made writable ([`SW_WRITABLE`]).
#[inline]
pub(crate) const fn mkwrite(pte: u64) -> u64 {
    pte | S2AP_W | SW_WRITABLE
}

/// A table entry pointing at the table in host page `table_pfn` (`kvm_init_table_pte()`).
#[inline]
pub(crate) const fn make_table(table_pfn: u64) -> u64 {
    ((table_pfn << PAGE_SHIFT) & ADDR_MASK) | TYPE | VALID
}

/// A leaf at `level` mapping host page `pfn` (aligned to the level), as a fault installs it:
/// normal write-back, inner shareable, readable, executable, writable if `writable`, and young
/// (the fault counts as the access, like KVM's `stage2_set_prot_attr()`, which always sets AF).
/// A page at the last level, a block above (`kvm_init_valid_leaf_pte()`).
#[inline]
pub(crate) const fn make_leaf(pfn: u64, level: Level, writable: bool) -> u64 {
    let mut pte = ((pfn << PAGE_SHIFT) & ADDR_MASK)
        | (MEMATTR_NORMAL << MEMATTR_SHIFT)
        | S2AP_R
        | (SH_IS << SH_SHIFT)
        | AF
        | VALID;
    if matches!(level, LAST_LEVEL) {
        pte |= TYPE;
    }
    if writable {
        pte |= S2AP_W | SW_WRITABLE;
    }
    pte
}

/// The entry at index `i` of the table that replaces the block `block` when it is split into
/// leaves at `child` level (KVM's `stage2_split_walker()`, which has
/// `kvm_pgtable_stage2_create_unlinked()` map the block's range with its attributes one level
/// down): the same attributes (S2AP, AF, the software bits), the output address of the `i`-th
/// piece, and a page descriptor at the last level, a block above.
#[inline]
pub(crate) const fn make_split_child(block: u64, child: Level, i: usize) -> u64 {
    let pfn = pfn(block) + i as u64 * child.pages();
    let mut pte = (block & !(ADDR_MASK | TYPE)) | ((pfn << PAGE_SHIFT) & ADDR_MASK);
    if matches!(child, LAST_LEVEL) {
        pte |= TYPE;
    }
    pte
}

/// Replaces `old`, the value the caller loaded from `ptep`, by `new` with one compare-exchange
/// (`stage2_try_set_pte()` of a shared walk).  Returns the value found instead on failure.
///
/// Orderings: `Release` on success publishes whatever the caller did before: the zeroes of a
/// table being linked, the page being mapped, for a walker that `Acquire`-loads the entry
/// ("Publishing with release"); `Acquire` on success and failure, because the caller goes on from
/// the value it read: it follows a table, or reports a replaced page dirty, published by another
/// walker's `Release`.
#[inline]
pub(crate) fn try_set(ptep: &AtomicU64, old: u64, new: u64) -> Result<(), u64> {
    ptep.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
        .map(|_| ())
}

/// The break of break-before-make (`stage2_try_break_pte()`): takes ownership of the entry
/// `ptep`, which held `old`, by replacing it with [`LOCKED`], then, if `old` was valid, calls
/// `flush` to invalidate the TLBs that may hold its translation (or, for a table, anything under
/// it), and waits until no vCPU can use it.  No flush when `old` was invalid: nothing could cache
/// it ("Break-before-make").
///
/// Returns false, changing nothing, if `old` is locked already (another walker owns it: back off,
/// never take it over, "Locked entries") or the entry changed since it was loaded.  On success the
/// caller owns the entry and must finish with [`make()`]: every other walker backs off meanwhile.
#[inline]
pub(crate) fn try_break(ptep: &AtomicU64, old: u64, flush: &dyn Fn()) -> bool {
    if is_locked(old) {
        // Kept although the compare-exchange below would fail anyway (old == LOCKED), as KVM
        // keeps it ("Locked entries"): owning an entry is never taken over.
        return false;
    }
    if try_set(ptep, old, LOCKED).is_err() {
        return false;
    }
    if is_valid(old) {
        flush();
    }
    true
}

/// The make of break-before-make (`stage2_make_pte()`): stores `new` in `ptep`, which the caller
/// locked with [`try_break()`], releasing the ownership.
///
/// `Release`: a walker that `Acquire`-loads `new` sees everything done before, the zeroes of a
/// new table, and the TLB invalidation of the old value ("Publishing with release").  A plain store
/// is enough: nobody else changes a locked entry.
#[inline]
pub(crate) fn make(ptep: &AtomicU64, new: u64) {
    debug_assert!(is_locked(ptep.load(Ordering::Relaxed)));
    ptep.store(new, Ordering::Release);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn locked_is_invalid_and_unique() {
        assert!(!is_valid(LOCKED));
        assert!(is_locked(LOCKED));
        assert!(!is_locked(0));
        // A valid leaf with AF set is not locked.
        assert!(!is_locked(make_leaf(1, LAST_LEVEL, false)));
        assert!(!is_table(LOCKED, Level::L512G) && !is_leaf(LOCKED, LAST_LEVEL));
    }
}
