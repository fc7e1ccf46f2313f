// SPDX-License-Identifier: GPL-2.0

//! Dirty logging by write protection: a memslot's dirty bitmap (KVM's
//! `memslot->dirty_bitmap`) and the checks of the bitmap ioctls.
//!
//! A slot with `SECMMU_MEM_LOG_DIRTY_PAGES` has one bit per page. A fault
//! that maps a page of the slot writable sets its bit under the MMU lock
//! (either side: stage-2 faults hold the read side and race, so bits are set
//! with an atomic OR), before the vCPU can write through the leaf. Harvesting
//! takes bits away under the write side and write-protects the pages whose
//! bits it took, and flushes the TLBs before the lock is dropped, so the next
//! write to such a page faults and sets its bit again. That keeps the one
//! invariant dirty logging rests on ("Dirty logging" in
//! Documentation/secmmu-protocols.rst): a page whose bit is clear is mapped
//! writable by no leaf and no TLB of the slot's space.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::addr::Gfn;
use crate::mmu::prim::{self, AllocError, AtomicU64, Ordering, PVec};

/// Pages per bitmap word, and the unit of `SECMMU_CLEAR_DIRTY_LOG`.
pub(crate) const WORD_PAGES: u64 = 64;

/// The dirty bitmap of one slot: bit `i` of word `i / 64` for the slot's page `i`.
pub(crate) struct DirtyBitmap {
    words: PVec<AtomicU64>,
    npages: u64,
}

impl DirtyBitmap {
    /// A bitmap for a slot of `npages` pages, clean, or with every page dirty if
    /// `initially_set` (KVM_DIRTY_LOG_INITIALLY_SET). Allocates, and may sleep.
    pub(crate) fn new(npages: u64, initially_set: bool) -> Result<Self, AllocError> {
        let nwords = usize::try_from(npages.div_ceil(WORD_PAGES)).map_err(|_| AllocError)?;
        let words = prim::try_vec_with(nwords, || AtomicU64::new(0))?;
        let map = Self { words, npages };
        if initially_set {
            for w in 0..nwords {
                map.words[w].store(map.valid_bits(w), Ordering::Relaxed);
            }
        }
        Ok(map)
    }

    /// Pages the bitmap covers.
    pub(crate) fn npages(&self) -> u64 {
        self.npages
    }

    /// Words in the bitmap.
    pub(crate) fn nwords(&self) -> usize {
        self.words.len()
    }

    /// The bits of word `w` that stand for pages of the slot: all but the
    /// tail of the last word.
    pub(crate) fn valid_bits(&self, w: usize) -> u64 {
        let first = w as u64 * WORD_PAGES;
        match self.npages.saturating_sub(first) {
            n if n >= WORD_PAGES => u64::MAX,
            n => (1u64 << n) - 1,
        }
    }

    /// Marks page `page` of the slot dirty (KVM's `mark_page_dirty_in_slot()`).
    /// Any context. The caller holds the MMU lock, either side, so that a
    /// harvest (write side) sees the bit before or write-protects after it;
    /// or it is a vCPU in guest mode flushing its page-modification log,
    /// for pages its walks made dirty: a harvest waits for guest mode to end
    /// before it takes bits, and a bit set after a take is taken next time.
    pub(crate) fn mark(&self, page: u64) {
        debug_assert!(page < self.npages);
        if let Some(w) = self.words.get((page / WORD_PAGES) as usize) {
            // Relaxed: the MMU lock, or the end of guest mode that a harvest
            // waits for, orders the bit against harvests.
            w.fetch_or(1 << (page % WORD_PAGES), Ordering::Relaxed);
        }
    }

    /// Whether page `page` is marked dirty.
    pub(crate) fn is_dirty(&self, page: u64) -> bool {
        self.word(page as usize / WORD_PAGES as usize) & (1 << (page % WORD_PAGES)) != 0
    }

    /// Word `w`, as it is now (the manual-protect `SECMMU_GET_DIRTY_LOG`,
    /// which takes nothing away).
    pub(crate) fn word(&self, w: usize) -> u64 {
        self.words.get(w).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Takes word `w`: returns it and leaves it clear (the
    /// `SECMMU_GET_DIRTY_LOG` without manual protect, KVM's `xchg()` in
    /// `kvm_get_dirty_log_protect()`). With the MMU lock held for write, so
    /// that the pages taken are write-protected before any fault can see the
    /// lock free.
    pub(crate) fn take_word(&self, w: usize) -> u64 {
        self.words
            .get(w)
            .map_or(0, |w| w.swap(0, Ordering::Relaxed))
    }

    /// Clears the bits of `mask` in word `w` and returns those of them that
    /// were set (KVM's `atomic_long_fetch_andnot()` in
    /// `kvm_clear_dirty_log_protect()`): only those pages need write
    /// protection. Bits beyond the slot are ignored. MMU lock held for write.
    pub(crate) fn clear_word(&self, w: usize, mask: u64) -> u64 {
        let mask = mask & self.valid_bits(w);
        if mask == 0 {
            return 0;
        }
        self.words
            .get(w)
            .map_or(0, |word| word.fetch_and(!mask, Ordering::Relaxed) & mask)
    }

    /// Sets the bits of `mask` in word `w` again: what a harvest took but
    /// could not hand to userspace (the copy out faulted) stays reported.
    pub(crate) fn restore_word(&self, w: usize, mask: u64) {
        if let Some(word) = self.words.get(w) {
            word.fetch_or(mask & self.valid_bits(w), Ordering::Relaxed);
        }
    }

    /// Pages marked dirty now.
    pub(crate) fn count(&self) -> u64 {
        (0..self.nwords())
            .map(|w| u64::from(self.word(w).count_ones()))
            .sum()
    }
}

/// What a write protection of a gfn range did (the formats'
/// `write_protect_gfn_range()`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Protected {
    /// Leaves that were writable and are not any more.
    pub(crate) leaves: u64,
    /// Leaves visited.
    pub(crate) visited: u64,
}

impl Protected {
    /// Whether TLBs may still allow writes that the leaves no longer do:
    /// flush before the MMU lock is dropped, or those writes go unlogged.
    pub(crate) fn needs_flush(&self) -> bool {
        self.leaves != 0
    }

    /// Adds `other` to this.
    pub(crate) fn add(&mut self, other: Protected) {
        self.leaves += other.leaves;
        self.visited += other.visited;
    }
}

/// How a space tracks the writes of the slots that log (x86 KVM chooses
/// between the two in `tdp_mmu.c`: write protection, or D bits with PML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracking {
    /// A clean page is read-only: its first write faults, and the fault
    /// logs it.
    WriteProtect,
    /// A clean page stays writable, with D clear (x86) or W clear and DBM
    /// set (stage-2): the walker sets the dirty state on the first write and
    /// the vCPU logs the page in its page-modification log
    /// ([`PmlLog`]), which it flushes into the bitmap.
    DirtyBit,
}

/// Entries of a vCPU's page-modification log, as Intel's PML buffer.
pub(crate) const PML_ENTRIES: usize = 512;

/// A vCPU's page-modification log (Intel PML): the gfns whose leaves the
/// vCPU's walks made dirty ([`crate::mmu::pgtable::Translation::dirtied`]),
/// to be flushed into the dirty bitmaps of their slots when it is full and
/// whenever the vCPU leaves guest mode (KVM flushes PML on every VM exit,
/// `vmx_flush_pml_buffer()`). Only its vCPU touches it.
pub(crate) struct PmlLog {
    /// [`PML_ENTRIES`] entries, the first `len` logged (a page of its own,
    /// as Intel's PML buffer, not 4 KiB on the stack of whoever makes it).
    gfns: PVec<Gfn>,
    len: usize,
}

impl PmlLog {
    /// An empty log. Allocates, and may sleep.
    pub(crate) fn new() -> Result<Self, AllocError> {
        Ok(Self {
            gfns: prim::try_vec_with(PML_ENTRIES, || Gfn::new(0))?,
            len: 0,
        })
    }

    /// Logs `gfn`. Returns true if the log is full now: flush it before the
    /// next walk (Intel's PML-full exit).
    pub(crate) fn push(&mut self, gfn: Gfn) -> bool {
        if self.len < PML_ENTRIES {
            self.gfns[self.len] = gfn;
            self.len += 1;
        }
        self.len == PML_ENTRIES
    }

    /// Whether nothing is logged.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands every logged gfn to `f`, oldest first, and empties the log.
    /// Returns how many there were.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(Gfn)) -> usize {
        let n = self.len;
        for &gfn in &self.gfns[..n] {
            f(gfn);
        }
        self.len = 0;
        n
    }
}

/// Where an eager split of huge leaves of a range goes on: the root
/// (stage-2 splits root by root; x86 splits through the rmaps, which span
/// the roots, and keeps 0) and the gfn in it, with the start of the range
/// for the roots after it. Everything before it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitAt {
    pub(crate) start: Gfn,
    pub(crate) root: usize,
    pub(crate) gfn: Gfn,
}

impl SplitAt {
    /// The beginning of a split of a range from `start`.
    pub(crate) fn new(start: Gfn) -> Self {
        Self {
            start,
            root: 0,
            gfn: start,
        }
    }

    /// The same split, going on at `gfn` of `root`.
    pub(crate) fn at(self, root: usize, gfn: Gfn) -> Self {
        Self { root, gfn, ..self }
    }
}

/// What one call of an eager split (`split_huge_gfn_range()` of either
/// format; KVM's `kvm_mmu_try_split_huge_pages()` and
/// `kvm_pgtable_stage2_split()`) did under one hold of the MMU lock.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Split {
    /// Huge leaves replaced by a table of leaves one level down.
    pub(crate) split: u64,
    /// The caches ran out before the range was done: top them up with the
    /// lock dropped and call again from here.
    pub(crate) resume: Option<SplitAt>,
    /// The MMU holds its limit of table pages: the rest of the range stays
    /// huge and splits on its write faults, as when eager splitting is off.
    pub(crate) limited: bool,
}

/// Why a `SECMMU_CLEAR_DIRTY_LOG` range is refused (`EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadClearRange;

/// Checks the range of a `SECMMU_CLEAR_DIRTY_LOG` of a slot of `npages`
/// pages, as KVM's `kvm_clear_dirty_log_protect()` does: `first_page` a
/// multiple of 64, the range inside the slot, and `num_pages` a multiple of
/// 64 unless the range ends at the slot's end. An empty range is valid and
/// clears nothing.
pub(crate) fn check_clear_range(
    npages: u64,
    first_page: u64,
    num_pages: u64,
) -> Result<(), BadClearRange> {
    if first_page % WORD_PAGES != 0 || first_page > npages || num_pages > npages - first_page {
        return Err(BadClearRange);
    }
    if num_pages < npages - first_page && num_pages % WORD_PAGES != 0 {
        return Err(BadClearRange);
    }
    Ok(())
}

/// The runs of set bits in `mask`, as `[first, last)` bit numbers, lowest
/// first: the gfn ranges a word's harvest write-protects.
pub(crate) fn runs(mut mask: u64) -> impl Iterator<Item = (u64, u64)> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let first = u64::from(mask.trailing_zeros());
        let ones = u64::from((mask >> first).trailing_ones());
        let last = first + ones;
        mask &= if last >= 64 { 0 } else { !0u64 << last };
        Some((first, last))
    })
}

/// The pages from the first bit set in `words` to the last, as `[first,
/// last)` page numbers from the first word's first page; `None` if no bit is
/// set. What a clear with INITIALLY_SET splits before it protects.
pub(crate) fn span(words: &[u64]) -> Option<(u64, u64)> {
    let first = words.iter().position(|&w| w != 0)?;
    let last = words.iter().rposition(|&w| w != 0)?;
    let lo = first as u64 * WORD_PAGES + u64::from(words[first].trailing_zeros());
    let hi = last as u64 * WORD_PAGES + WORD_PAGES - u64::from(words[last].leading_zeros());
    Some((lo, hi))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pml_log_fills_and_drains() {
        let mut log = PmlLog::new().unwrap();
        assert!(log.is_empty());
        for i in 0..PML_ENTRIES as u64 - 1 {
            assert!(!log.push(Gfn::new(i)));
        }
        assert!(log.push(Gfn::new(1000)), "full at 512");
        // Full: more pushes are dropped, and it says so (the caller flushes first).
        assert!(log.push(Gfn::new(2000)));
        let mut seen = std::vec::Vec::new();
        assert_eq!(log.drain(|g| seen.push(g.raw())), PML_ENTRIES);
        assert_eq!(seen[0], 0);
        assert_eq!(seen[PML_ENTRIES - 1], 1000);
        assert!(log.is_empty());
        assert_eq!(log.drain(|_| panic!("empty")), 0);
    }

    #[test]
    fn span_of_set_bits() {
        assert_eq!(span(&[]), None);
        assert_eq!(span(&[0, 0]), None);
        assert_eq!(span(&[1]), Some((0, 1)));
        assert_eq!(span(&[1 << 63]), Some((63, 64)));
        assert_eq!(span(&[0, 0b1100, 0, 1 << 5, 0]), Some((66, 198)));
        assert_eq!(span(&[u64::MAX; 3]), Some((0, 192)));
    }

    #[test]
    fn bitmap_marks_takes_clears_and_restores() {
        for npages in [1u64, 63, 64, 65, 200, 4096] {
            let b = DirtyBitmap::new(npages, false).unwrap();
            assert_eq!(b.nwords() as u64, npages.div_ceil(64));
            assert_eq!(b.count(), 0);
            b.mark(npages - 1);
            b.mark(0);
            assert!(b.is_dirty(0) && b.is_dirty(npages - 1));
            assert_eq!(b.count(), if npages == 1 { 1 } else { 2 });
            // Clearing bits beyond the slot, or clear ones, returns nothing.
            let last = b.nwords() - 1;
            assert_eq!(b.clear_word(last, !b.valid_bits(last)), 0);
            let took = b.take_word(0);
            assert_eq!(took & 1, 1);
            assert!(!b.is_dirty(0));
            b.restore_word(0, took | !b.valid_bits(0));
            assert!(b.is_dirty(0));
            assert_eq!(b.word(0) & !b.valid_bits(0), 0);
            let before = b.word(last);
            assert_ne!(before & (1 << ((npages - 1) % 64)), 0);
            assert_eq!(b.clear_word(last, u64::MAX), before);
            assert_eq!(b.word(last), 0);
            assert!(!b.is_dirty(npages - 1));

            let all = DirtyBitmap::new(npages, true).unwrap();
            assert_eq!(all.count(), npages);
            assert_eq!(all.clear_word(0, 0b101), 0b101 & all.valid_bits(0));
        }
    }

    #[test]
    fn clear_ranges_are_checked_like_kvm() {
        let n = 1000;
        assert!(check_clear_range(n, 0, n).is_ok());
        assert!(check_clear_range(n, 0, 0).is_ok());
        assert!(check_clear_range(n, 64, 128).is_ok());
        // To the end, with a tail that is not a multiple of 64.
        assert!(check_clear_range(n, 960, 40).is_ok());
        assert!(check_clear_range(n, n - n % 64, n % 64).is_ok());
        assert_eq!(check_clear_range(n, 1, 64), Err(BadClearRange));
        assert_eq!(check_clear_range(n, 0, 65), Err(BadClearRange));
        assert_eq!(check_clear_range(n, 960, 41), Err(BadClearRange));
        assert_eq!(check_clear_range(n, 1024, 0), Err(BadClearRange));
        assert_eq!(check_clear_range(n, 64, u64::MAX), Err(BadClearRange));
        assert_eq!(check_clear_range(n, u64::MAX - 63, 64), Err(BadClearRange));
    }

    #[test]
    fn runs_cover_exactly_the_set_bits() {
        for mask in [
            0u64,
            1,
            u64::MAX,
            0b1011_0110,
            1 << 63,
            0x8000_0000_0000_0001,
        ] {
            let mut rebuilt = 0u64;
            let mut prev_end = 0;
            for (first, last) in runs(mask) {
                assert!(first < last && last <= 64 && first >= prev_end);
                assert!(first == 0 || first > prev_end || prev_end == 0);
                for b in first..last {
                    rebuilt |= 1 << b;
                }
                prev_end = last;
            }
            assert_eq!(rebuilt, mask);
        }
    }
}
