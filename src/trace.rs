// SPDX-License-Identifier: GPL-2.0

//! The trace events of secmmu (`include/trace/events/secmmu.h`), with the
//! types the MMU code uses. See "Watching secmmu" in
//! Documentation/secmmu.rst for reading them with tracefs or `perf trace`.
//!
//! Each call is a static branch while its event is disabled.

use crate::ext::tracepoint as tp;
use crate::mmu::addr::{Gfn, Hva};
use crate::mmu::level::Level;

/// How a fault ended: the `outcome` of `secmmu_fault`, whose values are
/// the header's `SECMMU_FAULT_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FaultOutcome {
    /// The leaf was installed, or found installed (counted in `faults`).
    Installed = 0,
    /// Dirty logging's write protection was lifted without get_user_pages
    /// (counted in `faults` and `dirty_fast_faults`).
    WpFixed = 1,
    /// An access-tracked or old leaf was made young again without
    /// get_user_pages (`access_restores`, `access_flag_faults`).
    AfFixed = 2,
    /// An invalidation raced the fault, which starts over
    /// (`fault_retries`).
    Retry = 3,
    /// Another walker held or changed the entry: the fault starts over
    /// (`fault_eagain`).
    Again = 4,
    /// No memory backs the gfn, or it is read-only: exit to userspace
    /// (`memory_faults`).
    MemoryExit = 5,
    /// The fault failed with an errno (no memory, table limit, signal,
    /// dead space).
    Error = 6,
}

/// The level of a leaf as the events give it: 1 for 4K, 2 for 2M, 3 for
/// 1G; 0 while a fault does not know it.
fn level_nr(level: Option<Level>) -> u8 {
    level.map_or(0, |l| l as u8)
}

/// `secmmu_invalidate_range_start`: the mm core's `event`
/// (`enum mmu_notifier_event`), and whether the invalidation may sleep.
#[inline(always)]
pub(crate) fn invalidate_range_start(
    space: u32,
    start: Hva,
    end: Hva,
    event: u32,
    blockable: bool,
) {
    // SAFETY: The event takes integers only.
    unsafe {
        tp::secmmu_invalidate_range_start(space, start.as_usize(), end.as_usize(), event, blockable)
    };
}

/// `secmmu_invalidate_range_end`.
#[inline(always)]
pub(crate) fn invalidate_range_end(space: u32, start: Hva, end: Hva) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_invalidate_range_end(space, start.as_usize(), end.as_usize()) };
}

/// `secmmu_zap`: the gfns `[start, end)` of slot `slot` were zapped,
/// `leaves` of them, and the zap yielded the MMU lock `yields` times.
#[inline(always)]
pub(crate) fn zap(space: u32, slot: u32, start: Gfn, end: Gfn, leaves: u64, yields: u64) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_zap(space, slot, start.raw(), end.raw(), leaves, yields) };
}

/// Whether any of `secmmu_fault`, `secmmu_split` and `secmmu_collapse` is
/// enabled: what a fault that installed a leaf may report.
#[inline(always)]
pub(crate) fn install_enabled() -> bool {
    tp::secmmu_fault_enabled() || tp::secmmu_split_enabled() || tp::secmmu_collapse_enabled()
}

/// Whether `secmmu_fault` is enabled.
#[inline(always)]
pub(crate) fn fault_enabled() -> bool {
    tp::secmmu_fault_enabled()
}

/// Whether `secmmu_bbm` is enabled.
#[inline(always)]
pub(crate) fn bbm_enabled() -> bool {
    tp::secmmu_bbm_enabled()
}

/// `secmmu_fault`.
#[inline(always)]
pub(crate) fn fault(
    space: u32,
    vcpu: usize,
    gfn: Gfn,
    level: Option<Level>,
    write: bool,
    outcome: FaultOutcome,
) {
    // SAFETY: The event takes integers only.
    unsafe {
        tp::secmmu_fault(
            space,
            vcpu as u32,
            gfn.raw(),
            level_nr(level),
            write,
            outcome as u8,
        )
    };
}

/// `secmmu_age` (clear_young, or clear_flush_young if `flush`).
#[inline(always)]
pub(crate) fn age(space: u32, start: Hva, end: Hva, flush: bool, young: bool, lockless: bool) {
    // SAFETY: The event takes integers only.
    unsafe {
        tp::secmmu_age(
            space,
            start.as_usize(),
            end.as_usize(),
            flush,
            young,
            lockless,
        )
    };
}

/// `secmmu_test_young`.
#[inline(always)]
pub(crate) fn test_young(space: u32, hva: Hva, young: bool, lockless: bool) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_test_young(space, hva.as_usize(), young, lockless) };
}

/// `secmmu_tlb_flush`: a flush round asked of `vcpus` vCPUs, or one a zap
/// `elided`.
#[inline(always)]
pub(crate) fn tlb_flush(space: u32, vcpus: u32, elided: bool) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_tlb_flush(space, vcpus, elided) };
}

/// `secmmu_split`: a huge leaf made way for a table, to map `gfn` at
/// `level` under it.
#[inline(always)]
pub(crate) fn split(space: u32, gfn: Gfn, level: Level) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_split(space, gfn.raw(), level_nr(Some(level))) };
}

/// `secmmu_collapse`: a table made way for a huge leaf at `level`.
#[inline(always)]
pub(crate) fn collapse(space: u32, gfn: Gfn, level: Level) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_collapse(space, gfn.raw(), level_nr(Some(level))) };
}

/// `secmmu_bbm`: break-before-make replaced a valid entry to map `gfn` at
/// `level`.
#[inline(always)]
pub(crate) fn bbm(space: u32, gfn: Gfn, level: Level) {
    // SAFETY: The event takes integers only.
    unsafe { tp::secmmu_bbm(space, gfn.raw(), level_nr(Some(level))) };
}
