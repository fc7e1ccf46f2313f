// SPDX-License-Identifier: GPL-2.0

//! The fault path: one for both page-table formats.
//!
//! A vCPU whose walk found no usable translation faults here (KVM's
//! `kvm_mmu_page_fault()`). The fault is described by a [`Fault`] of the
//! kernel-free core (`mmu/fault.rs`), like KVM's `struct kvm_page_fault`,
//! and goes through three steps:
//!
//! 1. Under the read side of the MMU lock: find the memslot, snapshot the
//!    slot generation and watch the host range ([`Fault::new()`]).
//! 2. With no lock held: resolve the host page (get_user_pages, which may
//!    sleep and may itself invalidate), and size the mapping
//!    ([`Fault::resolved()`], KVM's `kvm_mmu_hugepage_adjust()`).
//! 3. Under the side of the MMU lock the format's faults hold
//!    ([`Format::FaultSide`]: the write side for x86, the read side for
//!    stage-2): install the leaf unless the slots changed or an
//!    invalidation of the mapped range ran since step 1 (then start over,
//!    through the vCPU's exit point, as a vCPU re-entering the guest would).
//!
//! Why step 3's check is enough: "Invalidation and the retry sequence" in
//! Documentation/secmmu-protocols.rst.

use crate::{
    dirty_ring::VcpuRing,
    ext::{
        gup::{UserPageRef, UserPages},
        mm::{self, LeafLevel},
        preempt::PreemptGuard,
        sched,
    },
    format::{FaultCaches, FaultSide, Format, MemSlot, WithFormat},
    mmu::addr::{Gfn, Hva, Pfn},
    mmu::fault::Fault,
    mmu::level::Level,
    mmu::pgtable::{MapAction, MapError, MapOutcome},
    mmu::prim::NoPreempt,
    mmu::stats::VcpuStats,
    space::Space,
    trace::{self, FaultOutcome},
};
use kernel::prelude::*;

/// What stops an access: the ioctl returns its errno.
pub(crate) enum Exit {
    /// The fault cannot be resolved (`EFAULT`, memory-fault exit).
    MemoryFault,
    /// Another error: `EINTR` for a signal, `EIO` after release, `ENOMEM`.
    Errno(Error),
    /// The vCPU's dirty ring is soft full (`EAGAIN`, ring-full exit).
    DirtyRingFull,
}

impl From<Error> for Exit {
    fn from(e: Error) -> Self {
        Exit::Errno(e)
    }
}

/// How installing a resolved page went.
enum Installed {
    /// The map ran (and may have failed, e.g. past the table limit).
    Mapped(Result<MapOutcome, MapError>),
    /// An invalidation or another walker raced the fault: start over.
    Retry,
    /// The space was released: nothing may be mapped any more.
    Dead,
}

/// The places a real vCPU exits for, between guest-mode stretches: a
/// pending signal (`EINTR`) and rescheduling. No lock may be held.
pub(crate) fn exit_point() -> Result<(), Exit> {
    if kernel::current!().signal_pending() {
        return Err(Exit::Errno(EINTR));
    }
    sched::cond_resched();
    Ok(())
}

/// The most pages a fault-around window holds (module parameter
/// `fault_around`).
pub(crate) const AROUND_MAX: usize = 64;

/// The fault-around window, in pages, for the module parameter
/// `fault_around`: 1 (none) below 2, else the power of two at or below it,
/// at most [`AROUND_MAX`].
pub(crate) fn around_pages(param: u32) -> u32 {
    if param < 2 {
        1
    } else {
        1 << param.min(AROUND_MAX as u32).ilog2()
    }
}

/// The user pages of a fault-around (KVM's `direct_pte_prefetch()`): the
/// pages the primary MMU maps writable in the fault's window
/// ([`Fault::around()`]), as runs from the page above the fault's and from
/// the window's first page, found by the lockless walk alone
/// ([`UserPages::get_fast_only()`]: nothing is faulted in, no
/// copy-on-write broken). A vCPU keeps one, out of its stack.
pub(crate) struct AroundPages {
    above: UserPages<AROUND_MAX>,
    below: UserPages<AROUND_MAX>,
    /// The gfns of the first pages of `above` and `below`.
    above_gfn: Gfn,
    below_gfn: Gfn,
    /// Pages of `above` and `below` mapped writable: marked dirty when put.
    written: [u64; 2],
}

impl AroundPages {
    pub(crate) const fn new() -> Self {
        Self {
            above: UserPages::new(),
            below: UserPages::new(),
            above_gfn: Gfn::new(0),
            below_gfn: Gfn::new(0),
            written: [0; 2],
        }
    }

    /// Looks up the pages of `fault`'s window of `pages` pages, with no
    /// lock held: after the fault's watch began ([`Fault::new_around()`]),
    /// so that [`Fault::must_retry()`] of each neighbour's fault says
    /// whether the primary may have changed it since.
    fn get(&mut self, fault: &Fault, pages: u64) {
        let (first, end) = fault.around(pages);
        let slot = &fault.slot;
        self.above_gfn = fault.gfn + 1;
        self.below_gfn = first;
        // Both runs are at most the window, AROUND_MAX pages.
        let above = (end - self.above_gfn) as usize;
        let below = (fault.gfn - first) as usize;
        if above == 0 {
            self.above.release();
        } else {
            let hva = slot.gfn_to_hva(self.above_gfn).as_usize();
            self.above.get_fast_only(hva, above, true);
        }
        if below == 0 {
            self.below.release();
        } else {
            let hva = slot.gfn_to_hva(first).as_usize();
            self.below.get_fast_only(hva, below, true);
        }
    }

    /// Maps the pages found around `fault`, whose own leaf (4K) was just
    /// installed under `guard`, in `slot`, of the set of generation
    /// `generation`: each not accessed and writable, as KVM's
    /// `kvm_mmu_prefetch_sptes()` maps them, unless its fault must retry
    /// (the window was watched with the fault: an invalidation of a
    /// neighbour only leaves it unmapped) or the caches ran low. Leaves
    /// that are there already are left as they are, but for write
    /// permission (the primary maps the page writable). Those mapped
    /// writable are marked dirty by [`AroundPages::release()`], after the
    /// lock is dropped.
    #[allow(clippy::too_many_arguments)]
    fn map<F: Format>(
        &mut self,
        space: &Space,
        guard: &mut <F::FaultSide as FaultSide>::Guard<'_>,
        root: usize,
        fault: &Fault,
        slot: &MemSlot,
        generation: u64,
        caches: &mut FaultCaches,
        stats: &VcpuStats,
    ) {
        let written = &mut self.written;
        for (run, first) in [(0, self.above_gfn), (1, self.below_gfn)] {
            let pages = if run == 0 { &self.above } else { &self.below };
            for i in 0..pages.len() {
                let gfn = first + i as u64;
                let nf = fault.new_neighbour(gfn, Pfn::new(pages.pfn(i) as u64), true);
                // Under the lock, the retry state cannot change: checked
                // before the tables are borrowed from the guard.
                if nf.must_retry(&guard.inval, generation) {
                    break;
                }
                if caches.tables.len() < F::MAP_MIN_TABLES || caches.descs.len() < F::MAP_MIN_DESCS
                {
                    break;
                }
                let Some(tables) = F::FaultSide::tables::<F>(guard) else {
                    break;
                };
                let flush = || space.flush_remote_tlbs();
                match F::map(tables, root, &nf, slot, caches, &flush) {
                    Ok(o) if o.unlinked.is_none() => {
                        if matches!(o.action, MapAction::Installed | MapAction::Replaced) {
                            stats.fault_around.inc();
                        }
                        if o.action != MapAction::Unchanged {
                            written[run] |= 1 << i;
                        }
                    }
                    // A 4K leaf never unlinks a table; a lost race (stage-2)
                    // or a full table limit ends the fault-around.
                    _ => break,
                }
            }
        }
    }

    /// Puts the pages held, marking dirty those [`AroundPages::map()`]
    /// mapped writable, as KVM's `kvm_mmu_prefetch_sptes()` does (the guest
    /// may write them without a fault). With no lock held: a put may free
    /// the page.
    fn release(&mut self) {
        for (run, mask) in core::mem::take(&mut self.written).into_iter().enumerate() {
            let pages = if run == 0 { &self.above } else { &self.below };
            let mut m = mask;
            while m != 0 {
                pages.set_dirty(m.trailing_zeros() as usize);
                m &= m - 1;
            }
        }
        self.above.release();
        self.below.release();
    }
}

/// The level the primary MMU maps user address `hva` of the calling task
/// with now: a snapshot, see [`Fault`]. The calling
/// task is the space's creator (`Space::check_caller()`): its mm is the one
/// the space mirrors.
pub(crate) fn host_level(hva: Hva) -> Level {
    let task = kernel::current!();
    let host = task
        .mm()
        .map_or(LeafLevel::Pte, |mm| mm::mapping_level(mm, hva.as_usize()));
    match host {
        LeafLevel::Pud => Level::L1G,
        LeafLevel::Pmd => Level::L2M,
        LeafLevel::Pte => Level::L4K,
    }
}

/// A fault of guest page `gfn` by a vCPU of `space` on root `root`, for a
/// read or a `write`; run for the root's format by
/// [`Kind::with_format()`](crate::format::Kind::with_format).
pub(crate) struct FaultIn<'a> {
    pub(crate) space: &'a Space,
    /// The faulting vCPU's id.
    pub(crate) vcpu: usize,
    pub(crate) root: usize,
    pub(crate) caches: &'a mut FaultCaches,
    /// Room for the pages of a fault-around.
    pub(crate) around: &'a mut AroundPages,
    /// The faulting vCPU's dirty ring, if the space has rings: a write
    /// fault in a logging slot logs there.
    pub(crate) ring: Option<&'a VcpuRing>,
    pub(crate) gfn: Gfn,
    pub(crate) write: bool,
    /// The faulting vCPU's counters: the fault runs in the vCPU's thread,
    /// their only writer.
    pub(crate) stats: &'a VcpuStats,
}

impl WithFormat for FaultIn<'_> {
    type Output = Result<(), Exit>;

    fn run<F: Format>(self) -> Result<(), Exit> {
        let (space, vcpu, gfn, write) = (self.space, self.vcpu, self.gfn, self.write);
        let r = self.fault_in::<F>();
        // What ended in a fault exit or an errno; the other outcomes are
        // traced where they are counted.
        if let Err(e) = &r {
            if trace::fault_enabled() {
                trace_exit(space, vcpu, gfn, write, e);
            }
        }
        r
    }
}

/// Traces a fault that ended in a fault exit or an errno (nothing for a
/// full dirty ring, which is no fault's outcome).
#[cold]
#[inline(never)]
fn trace_exit(space: &Space, vcpu: usize, gfn: Gfn, write: bool, e: &Exit) {
    let outcome = match e {
        Exit::DirtyRingFull => return,
        Exit::MemoryFault => FaultOutcome::MemoryExit,
        Exit::Errno(_) => FaultOutcome::Error,
    };
    trace::fault(space.id, vcpu, gfn, None, write, outcome);
}

impl FaultIn<'_> {
    // Inline in `run()`: the fault's inputs, used all along, stay in the
    // registers they are in for the exit's event.
    #[inline(always)]
    fn fault_in<F: Format>(self) -> Result<(), Exit> {
        let FaultIn {
            space,
            vcpu,
            root,
            caches,
            around,
            ring,
            gfn,
            write,
            stats,
        } = self;
        loop {
            space.check_alive()?;
            // Dirty logging write-protected the leaf: make it writable again
            // and log the page, without get_user_pages, and before anything
            // else, as KVM's fast_page_fault() runs first.
            if write
                && logs_dirty(space, gfn)
                && fix_write_protect::<F>(space, root, gfn, ring, stats)
            {
                if trace::fault_enabled() {
                    trace_outcome(space, vcpu, gfn, write, FaultOutcome::WpFixed);
                }
                return Ok(());
            }
            let (mut fault, around_pages) = begin(space, vcpu, gfn, write, stats)?;
            if write && fault.slot.readonly() {
                stats.memory_faults.inc();
                return Err(Exit::MemoryFault);
            }
            // Aging without A/D bits made the leaf access-tracked (x86) or
            // old (arm64: an access-flag fault): make it young again without
            // get_user_pages (an invalidation would have zapped it, so no
            // sequence check is needed). With A/D bits the walker keeps
            // entries young itself: skip the extra trip through the lock.
            if !space.ad_enabled() && fix_access_fault::<F>(space, root, gfn, write, stats) {
                if trace::fault_enabled() {
                    trace_outcome(space, vcpu, gfn, write, FaultOutcome::AfFixed);
                }
                return Ok(());
            }
            caches.topup::<F>()?;

            // `hva` is a user address of the current mm (the caller is the
            // space's creator). A read of a page the primary already maps
            // writable maps it writable too (see `may_map_writable()`).
            let writable_page = (!write && may_map_writable(space, &fault))
                .then(|| UserPageRef::get_fast_only(fault.hva.as_usize(), true))
                .flatten();
            let map_writable = write || writable_page.is_some();
            let page = match writable_page {
                Some(page) => page,
                None => UserPageRef::get_fast(fault.hva.as_usize(), write).map_err(|e| {
                    if e == ENOMEM || e == EINTR || e == ERESTARTSYS {
                        Exit::Errno(if e == ENOMEM { ENOMEM } else { EINTR })
                    } else {
                        stats.memory_faults.inc();
                        Exit::MemoryFault
                    }
                })?,
            };
            // The kernel's pfn, an unsigned long: as wide as a u64 on 64-bit.
            let hva = fault.hva;
            fault.resolved(Pfn::new(page.pfn() as u64), map_writable, || {
                host_level(hva)
            });
            // A 4K leaf: the pages around it that the primary maps too.
            let with_around = fault.level == Level::L4K && around_pages > 1;
            if with_around {
                around.get(&fault, around_pages);
            }
            let installed = install::<F>(
                space,
                root,
                &fault,
                caches,
                ring,
                stats,
                with_around.then_some(&mut *around),
            );
            // Out of the lock: the pages the install mapped get marked
            // dirty, and every one is put.
            around.release();
            let mapped = match installed {
                Installed::Mapped(m) => m,
                Installed::Dead => return Err(Exit::Errno(EIO)),
                Installed::Retry => {
                    drop(page);
                    // Retry through the exit point, as a vCPU re-entering
                    // the guest would: an invalidation that never ends
                    // must not keep the thread from a signal or the CPU.
                    exit_point()?;
                    continue;
                }
            };
            // Like KVM: a page mapped writable is dirty from now on; the
            // zap marks it dirty again if the guest wrote it (D bit).
            if mapped.is_ok() && map_writable {
                page.set_dirty();
                if !write {
                    stats.writable_on_read.inc();
                }
            }
            drop(page);
            let outcome = mapped.map_err(|e| match e {
                // The space holds its limit of table pages.
                MapError::TableLimit => ENOSPC,
                _ => ENOMEM,
            })?;
            count_fault(space, stats, &fault, &outcome);
            return Ok(());
        }
    }
}

/// Whether a read `fault` may map writable the page the primary already maps
/// writable, so that the guest's first write after the read does not fault
/// again (KVM's `hva_to_pfn_fast()` with `map_writable`). The lockless walk
/// alone is asked (`UserPageRef::get_fast_only()`), which breaks no
/// copy-on-write: a private page not yet written stays read-only, and the
/// write breaks COW through the fault path as before. Not in a read-only
/// slot, nor in a slot that logs dirty pages, whose writes must fault (or
/// be seen by the walker) to be logged; nor with the module parameter
/// `map_writable_on_read` off.
fn may_map_writable(space: &Space, fault: &Fault) -> bool {
    space.map_writable_on_read() && !fault.slot.readonly() && !fault.slot.logs_dirty()
}

/// Step 1 of a fault: its slot and the retry state, under the read side:
/// the fault watches the host range of the largest leaf the slot allows it,
/// which contains whatever it maps in the end, and its fault-around window
/// (returned: 1 page for none).
fn begin(
    space: &Space,
    vcpu: usize,
    gfn: Gfn,
    write: bool,
    stats: &VcpuStats,
) -> Result<(Fault, u64), Exit> {
    let state = space.mmu.read();
    let preempt = PreemptGuard::new();
    let rcu: NoPreempt<'_> = preempt.proof().into();
    let slots = space.memslots(&rcu);
    let Some(slot) = slots.lookup(gfn) else {
        stats.memory_faults.inc();
        return Err(Exit::MemoryFault);
    };
    let max_level = state.mmu.as_ref().ok_or(EIO)?.max_map_level();
    let generation = slots.generation();
    let around = space.fault_around(slot);
    let fault = Fault::new_around(
        &state.inval,
        vcpu,
        gfn,
        write,
        slot,
        generation,
        max_level,
        around,
    );
    Ok((fault, around))
}

/// Step 3 of a fault: installs the leaf under the format's side of the MMU
/// lock, unless the fault must start over.
#[allow(clippy::too_many_arguments)]
fn install<F: Format>(
    space: &Space,
    root: usize,
    fault: &Fault,
    caches: &mut FaultCaches,
    ring: Option<&VcpuRing>,
    stats: &VcpuStats,
    around: Option<&mut AroundPages>,
) -> Installed {
    let mut guard = F::FaultSide::lock(&space.mmu);
    // A space released since the fault began keeps its tables, but nothing
    // may be mapped into them any more.
    if space.check_alive().is_err() {
        return Installed::Dead;
    }
    let mapped = {
        // The set current under the lock: the one the fault began with
        // unless the generation moved.
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        let slots = space.memslots(&rcu);
        if fault.must_retry(&guard.inval, slots.generation()) {
            stats.fault_retries.inc();
            if trace::fault_enabled() {
                trace_fault(space, fault, None, FaultOutcome::Retry);
            }
            return Installed::Retry;
        }
        let Some(slot) = slots.lookup(fault.gfn) else {
            // Not reached: the generation did not move.
            return Installed::Retry;
        };
        let Some(tables) = F::FaultSide::tables::<F>(&mut guard) else {
            // Not reached: a vCPU exists only once its space has tables.
            return Installed::Dead;
        };
        let flush = || space.flush_remote_tlbs();
        let mapped = F::map(tables, root, fault, slot, caches, &flush);
        // Dirty logging: the page is logged before the lock is dropped, so
        // before the vCPU can write through the leaf, and a harvest (write
        // side) sees the bit or comes after and write-protects the leaf
        // ("Dirty logging" in Documentation/secmmu-protocols.rst). A write
        // fault maps writable; it logs even when it found the leaf writable.
        if fault.write && mapped.is_ok() && slot.mark_dirty_by(fault.gfn, ring) {
            stats.dirty_ring_overflows.inc();
        }
        // The neighbours, under the same hold, once the fault's own leaf
        // left the last-level table linked (a 4K leaf never unlinks one).
        if let Some(around) = around {
            if mapped.as_ref().is_ok_and(|o| o.unlinked.is_none()) {
                let generation = slots.generation();
                around.map::<F>(
                    space, &mut guard, root, fault, slot, generation, caches, stats,
                );
            }
        }
        mapped
    };
    if F::BREAK_BEFORE_MAKE
        && mapped
            .as_ref()
            .is_ok_and(|o| o.action == MapAction::Replaced)
    {
        stats.bbm.inc();
        if trace::bbm_enabled() {
            trace_bbm(space, fault);
        }
    }
    match mapped {
        Err(MapError::Again) => {
            stats.fault_eagain.inc();
            if trace::fault_enabled() {
                trace_fault(space, fault, Some(fault.level), FaultOutcome::Again);
            }
            Installed::Retry
        }
        Ok(MapOutcome {
            unlinked: Some(t), ..
        }) => {
            // `F::map()` flushed after the unlink: free the table once no
            // locked walker can be inside it.
            F::FaultSide::free_unlinked::<F>(&space.mmu, guard, t);
            Installed::Mapped(mapped)
        }
        _ => Installed::Mapped(mapped),
    }
}

/// The fast path of an access fault without A/D bits: x86 restores an
/// access-tracked leaf, stage-2 sets AF on an old leaf (KVM's
/// `handle_access_fault()`), each under its format's side of the lock.
/// False if there is no such leaf: take the full fault path.
fn fix_access_fault<F: Format>(
    space: &Space,
    root: usize,
    gfn: Gfn,
    write: bool,
    stats: &VcpuStats,
) -> bool {
    let mut guard = F::FaultSide::lock(&space.mmu);
    let Some(tables) = F::FaultSide::tables::<F>(&mut guard) else {
        return false;
    };
    if !F::fix_access_fault(tables, root, gfn, write) {
        return false;
    }
    drop(guard);
    F::access_fixes(stats).inc();
    true
}

/// Whether `gfn` is in a slot that logs dirty pages now: a look at the
/// current set without the MMU lock (it is published with RCU), so that a
/// write fault outside logging slots pays nothing for the fast path.
fn logs_dirty(space: &Space, gfn: Gfn) -> bool {
    let preempt = PreemptGuard::new();
    let rcu: NoPreempt<'_> = preempt.proof().into();
    space
        .memslots(&rcu)
        .lookup(gfn)
        .is_some_and(|slot| slot.logs_dirty())
}

/// The fast path of a write fault on a page of a logging slot (KVM's
/// `fast_page_fault()`): the format makes the leaf writable again if only
/// dirty logging's write protection kept it read-only, and the page is
/// logged before the lock is dropped ("Dirty logging" in
/// Documentation/secmmu-protocols.rst). False if the format cannot, or the
/// slot does not log under the lock: take the full fault path.
///
/// It needs no invalidation sequence: the leaf maps the page as the
/// primary MMU still does, or an invalidation would have zapped it, and the
/// set read under the lock is the current one.
fn fix_write_protect<F: Format>(
    space: &Space,
    root: usize,
    gfn: Gfn,
    ring: Option<&VcpuRing>,
    stats: &VcpuStats,
) -> bool {
    let mut guard = F::FaultSide::lock(&space.mmu);
    if space.check_alive().is_err() {
        return false;
    }
    let preempt = PreemptGuard::new();
    let rcu: NoPreempt<'_> = preempt.proof().into();
    // A slot that stopped logging since the look before the lock has no
    // log to mark, and its leaves are not protected any more.
    let Some(slot) = space.memslots(&rcu).lookup(gfn).filter(|s| s.logs_dirty()) else {
        return false;
    };
    let Some(tables) = F::FaultSide::tables::<F>(&mut guard) else {
        return false;
    };
    if !F::fix_write_protect_fault(tables, root, gfn) {
        return false;
    }
    if slot.mark_dirty_by(gfn, ring) {
        stats.dirty_ring_overflows.inc();
    }
    drop(preempt);
    drop(guard);
    stats.faults.inc();
    stats.dirty_fast_faults.inc();
    true
}

/// Traces how `fault` went (`secmmu_fault`).
///
/// The fault path's events are traced out of line, and only once their
/// static branch says they are on (`trace::*_enabled()`): their arguments
/// are then loaded in cold code, and the hot path keeps no register for
/// them (the trace benchmark counts the difference).
#[cold]
#[inline(never)]
fn trace_fault(space: &Space, fault: &Fault, level: Option<Level>, outcome: FaultOutcome) {
    trace::fault(
        space.id,
        fault.vcpu(),
        fault.gfn,
        level,
        fault.write,
        outcome,
    );
}

/// Traces how the fault of `vcpu` on `gfn` ended, before it knew its level.
#[cold]
#[inline(never)]
fn trace_outcome(space: &Space, vcpu: usize, gfn: Gfn, write: bool, outcome: FaultOutcome) {
    trace::fault(space.id, vcpu, gfn, None, write, outcome);
}

/// Traces a break-before-make of `fault`'s install (`secmmu_bbm`).
#[cold]
#[inline(never)]
fn trace_bbm(space: &Space, fault: &Fault) {
    trace::bbm(space.id, fault.gfn, fault.level);
}

/// Counts a fault that installed (or found) its leaf, in the vCPU's
/// counters, and traces it.
fn count_fault(space: &Space, stats: &VcpuStats, fault: &Fault, outcome: &MapOutcome) {
    stats.faults.inc();
    if matches!(outcome.action, MapAction::Installed | MapAction::Replaced) {
        stats.mappings.at(fault.level.idx()).inc();
    }
    if outcome.split {
        stats.splits.inc();
    }
    if outcome.unlinked.is_some() {
        stats.collapses.inc();
    }
    // The chain the new leaf joined (x86; 0 where no leaf was added, or
    // the format keeps no rmaps: not a chain).
    if outcome.chain_len != 0 {
        stats.rmap_max_chain.max(outcome.chain_len as u64);
        stats.rmap_chain.record(outcome.chain_len as u64);
    }
    // Last, and out of line: the events' arguments are loaded only when
    // one is enabled, and nothing is live across their calls.
    if trace::install_enabled() {
        trace_installed(space, fault, outcome);
    }
}

/// Traces a fault that installed (or found) its leaf: `secmmu_fault`, and
/// `secmmu_split` or `secmmu_collapse` if it replaced a leaf or a table.
#[cold]
#[inline(never)]
fn trace_installed(space: &Space, fault: &Fault, outcome: &MapOutcome) {
    trace_fault(space, fault, Some(fault.level), FaultOutcome::Installed);
    if outcome.split {
        trace::split(space.id, fault.gfn, fault.level);
    }
    if outcome.unlinked.is_some() {
        trace::collapse(space.id, fault.gfn, fault.level);
    }
}
