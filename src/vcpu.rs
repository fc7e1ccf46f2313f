// SPDX-License-Identifier: GPL-2.0

//! vCPUs: threads that access guest memory through the secondary MMU.
//!
//! A vCPU is a file descriptor from SECMMU_CREATE_VCPU, bound to one root
//! of its space. Its ioctls (RUN, ACCESS) play a guest: every access goes
//! through the vCPU's software TLB, then the lockless walker (which sets
//! accessed/dirty bits like hardware), then, on a miss, the fault path.
//!
//! Guest mode (see tlb.rs): the vCPU touches a guest page or its TLB only
//! between `enter_guest()` and `exit_guest()`, with preemption disabled, and
//! never takes a lock there. A TLB flush request waits for it to leave guest
//! mode, so once `invalidate_range_start()` returns, no vCPU uses a
//! translation or a page from before (protocols.md A1, F29). Faults, signal
//! checks, rescheduling and user copies happen outside guest mode.

use crate::{
    arm64::mmu::MAP_MIN_TABLES as S2_MAP_MIN_TABLES,
    ext::{
        anon_inode::{self, AnonInodeFile},
        gup::UserPageRef,
        mm::{self, LeafLevel},
        pfn,
        preempt::PreemptGuard,
        sched,
    },
    format::{Pgt, Root},
    kpages::KernelPages,
    memslot::Slot,
    pgtable::{MapAction, MapError, MapLevel, MapOutcome, TableCache, WalkFault},
    rmap::DescCache,
    space::{MmuState, Space},
    tlb::{SoftTlb, VcpuMode},
    uapi,
    x86::mmu::{MAP_MIN_DESCS, MAP_MIN_TABLES as X86_MAP_MIN_TABLES},
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::{
    fs::{
        file::flags::{O_CLOEXEC, O_RDWR},
        File,
    },
    new_mutex,
    prelude::*,
    sync::{Arc, ArcBorrow, Mutex},
    uaccess::{UserPtr, UserSlice},
};

/// What stops an access: the ioctl returns its errno.
pub(crate) enum Exit {
    /// The fault cannot be resolved (`EFAULT`, memory-fault exit).
    MemoryFault,
    /// Another error: `EINTR` for a signal, `EIO` after release, `ENOMEM`.
    Errno(Error),
}

impl From<Error> for Exit {
    fn from(e: Error) -> Self {
        Exit::Errno(e)
    }
}

/// How installing a resolved page went.
enum Installed {
    /// The map ran (and may have failed, e.g. a cache not topped up).
    Mapped(Result<MapOutcome, MapError>),
    /// An invalidation or another walker raced the fault: start over.
    Retry,
    /// The space cannot map any more (released, or not configured).
    Dead(Error),
}

/// What a fault maps: the `level`-sized block of gfns from `gfn` to the
/// host pages from `pfn`, backed by the user range from `hva`.
struct Resolved {
    level: MapLevel,
    gfn: u64,
    pfn: u64,
    hva: u64,
}

impl Resolved {
    /// The mapping of the 4K page `gfn` at `level`, `pfn` and `hva` being
    /// those of the faulting page: all three aligned down to the level.
    fn at(level: MapLevel, gfn: u64, pfn: u64, hva: u64) -> Self {
        let off = gfn - level.align_down(gfn);
        Resolved {
            level,
            gfn: gfn - off,
            pfn: pfn - off,
            hva: hva - (off << 12),
        }
    }

    /// The largest mapping of the faulting page `gfn` of `slot`, whose
    /// user address `hva` get_user_pages resolved to `pfn`, up to `max`
    /// (KVM's `kvm_mmu_hugepage_adjust()`): no larger than the slot allows
    /// (`Slot::max_level()`: same alignment, whole range in the slot), nor
    /// than the primary MMU maps `hva` now (never the folio size alone: a
    /// PTE-mapped THP or a partly unmapped huge page is mapped 4K).
    ///
    /// The primary's level is a snapshot taken after get_user_pages: it
    /// may split right after, but only inside an invalidation of the huge
    /// range, which makes `must_retry()` over that range (the fault's
    /// `seq` predates the lookup) send the fault round again.
    fn new(slot: &Slot, gfn: u64, pfn: u64, hva: u64, max: MapLevel) -> Self {
        let mut level = slot.max_level(gfn, max);
        if level > MapLevel::L4K {
            // The calling task is the space's creator (`check_caller()`):
            // its mm is the one the space mirrors.
            let task = kernel::current!();
            let host = task
                .mm()
                .map_or(LeafLevel::Pte, |mm| mm::mapping_level(mm, hva as usize));
            level = level.min(match host {
                LeafLevel::Pud => MapLevel::L1G,
                LeafLevel::Pmd => MapLevel::L2M,
                LeafLevel::Pte => MapLevel::L4K,
            });
        }
        // A huge host page maps its pfns in order; should it not (the
        // pfn of the faulting page is not where a huge page of the level
        // would put it), map what is known to be right.
        while level > MapLevel::L4K {
            let off = gfn - level.align_down(gfn);
            if pfn >= off && (pfn - off) & (level.pages() - 1) == 0 {
                break;
            }
            level = match level {
                MapLevel::L1G => MapLevel::L2M,
                _ => MapLevel::L4K,
            };
        }
        Self::at(level, gfn, pfn, hva)
    }

    /// The user range the mapping covers, `[start, end)`.
    fn hva_range(&self) -> (u64, u64) {
        (self.hva, self.hva + (self.level.pages() << 12))
    }
}

/// What only the vCPU's own thread touches, under its mutex (KVM's
/// `vcpu->mutex`: one ioctl at a time per vCPU).
struct VcpuState {
    /// Untagged (no VPID or ASID): it starts empty at each RUN and ACCESS,
    /// like a TLB that a CPU without VPID flushes on every VM entry.
    /// Within one call, aging that clears accessed bits without a flush
    /// leaves the translations cached, as hardware does, and the pages look
    /// old until a miss; across calls, a page the guest touches again
    /// always looks young.
    tlb: SoftTlb,
    /// Allocations for a fault, made before the MMU lock is taken.
    tables: TableCache<KernelPages>,
    descs: DescCache,
}

/// A vCPU id of a space, given back when dropped.
struct VcpuId {
    space: Arc<Space>,
    idx: usize,
}

impl VcpuId {
    fn new(space: &Arc<Space>) -> Result<Self> {
        Ok(Self {
            idx: space.get_vcpu_id()?,
            space: space.clone(),
        })
    }
}

impl Drop for VcpuId {
    fn drop(&mut self) {
        self.space.put_vcpu_id(self.idx);
    }
}

/// A vCPU.
#[pin_data]
pub(crate) struct Vcpu {
    space: Arc<Space>,
    /// Its id: the index of its guest-mode state in the space.
    id: VcpuId,
    root: usize,
    /// The root's tables for the lockless walker: fixed once the space is
    /// configured, freed only with the space, which this vCPU keeps alive.
    root_tables: Root,
    #[pin]
    state: Mutex<VcpuState>,
}

/// What a fault preallocates: enough for one map in either format (tables
/// of a 4-level walk, one rmap descriptor).
const FAULT_TABLES: usize = if X86_MAP_MIN_TABLES > S2_MAP_MIN_TABLES {
    X86_MAP_MIN_TABLES
} else {
    S2_MAP_MIN_TABLES
};
const FAULT_DESCS: usize = MAP_MIN_DESCS;

impl Vcpu {
    /// SECMMU_CREATE_VCPU: returns the new vCPU's file descriptor.
    pub(crate) fn create(space: &Arc<Space>, req: &uapi::secmmu_vcpu_create) -> Result<isize> {
        uapi::check_zero(&req.reserved)?;
        let config = space.config().ok_or(EINVAL)?;
        if req.flags != 0 || req.root >= config.nr_roots {
            return Err(EINVAL);
        }
        let root = req.root as usize;
        let root_tables = {
            let state = space.mmu.read();
            state
                .mmu
                .as_ref()
                .and_then(|m| m.root(root))
                .ok_or(EINVAL)?
        };
        // Given back if anything below fails, and when the vCPU goes.
        let id = VcpuId::new(space)?;
        let vcpu = Arc::pin_init(
            try_pin_init!(Vcpu {
                space: space.clone(),
                id,
                root,
                root_tables,
                state <- new_mutex!(VcpuState {
                    tlb: SoftTlb::new(),
                    tables: TableCache::new(),
                    descs: DescCache::new(FAULT_DESCS * 4),
                }),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        let fd = anon_inode::getfd::<Vcpu>(c"secmmu-vcpu", vcpu, O_RDWR | O_CLOEXEC)?;
        Ok(fd as isize)
    }
}

/// The file operations of a vCPU file. The ioctl structures have one layout
/// for 32- and 64-bit callers: a compat ioctl only needs its pointer
/// argument converted, which is the default.
#[vtable]
impl AnonInodeFile for Vcpu {
    type Ptr = Arc<Vcpu>;

    fn ioctl(vcpu: ArcBorrow<'_, Vcpu>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        vcpu.ioctl(cmd, arg)
    }
}

impl Vcpu {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        self.space.check_caller()?;
        match cmd {
            uapi::RUN => {
                let mut run: uapi::secmmu_run = uapi::read_arg(arg)?;
                let ret = self.run(&mut run);
                uapi::write_arg(arg, &run)?;
                ret.map(|()| 0)
            }
            uapi::ACCESS => {
                let mut acc: uapi::secmmu_access = uapi::read_arg(arg)?;
                let ret = self.access(&mut acc);
                uapi::write_arg(arg, &acc)?;
                ret.map(|()| 0)
            }
            _ => Err(ENOTTY),
        }
    }

    /// The vCPU's state for one RUN or ACCESS; `EBUSY` while another
    /// thread runs it. KVM waits on its vCPU mutex killably; secmmu refuses
    /// at once, so no caller ever sleeps behind a RUN that may last long.
    fn busy_or_lock(&self) -> Result<kernel::sync::MutexGuard<'_, VcpuState>> {
        self.state.try_lock().ok_or(EBUSY)
    }

    /// The places a real vCPU exits for, between guest-mode stretches: a
    /// pending signal (`EINTR`) and rescheduling.
    fn exit_point(&self) -> Result<(), Exit> {
        if kernel::current!().signal_pending() {
            return Err(Exit::Errno(EINTR));
        }
        // No lock is held.
        sched::cond_resched();
        Ok(())
    }

    /// Runs `body` in one guest-mode stretch (tlb.rs, rule 1): preemption
    /// disabled, the TLB flushed first if a flush was requested. `body` gets
    /// the TLB, and a [`GuestMode`] to translate and to see flush requests
    /// with; it must be short and take no lock.
    fn in_guest<R>(&self, tlb: &mut SoftTlb, body: impl FnOnce(&mut GuestMode<'_>) -> R) -> R {
        let mode = self.space.vcpu_mode(self.id.idx);
        let preempt = PreemptGuard::new();
        if mode.enter_guest() {
            tlb.flush();
        }
        let r = body(&mut GuestMode {
            tlb,
            root: self.root_tables,
            mode,
        });
        mode.exit_guest();
        drop(preempt);
        r
    }

    /// Runs `op` on the kernel address of guest page `gfn`, in guest mode,
    /// faulting the page in first if needed.
    fn with_guest_page(
        &self,
        st: &mut VcpuState,
        gfn: u64,
        write: bool,
        op: impl FnOnce(*mut u8),
    ) -> Result<(), Exit> {
        let mut op = Some(op);
        loop {
            self.exit_point()?;
            let r = self.in_guest(&mut st.tlb, |g| {
                let page = g.page(gfn, write)?;
                if let Some(op) = op.take() {
                    op(page);
                }
                Ok(())
            });
            match r {
                Ok(()) => return Ok(()),
                Err(WalkFault::NotPresent) | Err(WalkFault::WriteProtected) => {
                    self.fault(st, gfn, write)?
                }
            }
        }
    }

    /// The fault path (protocols.md A2): resolve the host page with no lock
    /// held, then install it under the MMU lock unless an invalidation
    /// raced us, in which case start over.
    fn fault(&self, st: &mut VcpuState, gfn: u64, write: bool) -> Result<(), Exit> {
        let space = &self.space;
        loop {
            space.check_alive()?;
            // Snapshot the retry sequence before resolving the page: an
            // invalidation that ends after this point bumps it and we retry.
            let (slot, hva, generation, seq, max_level) = {
                let state = space.mmu.read();
                let Some(slot) = state.slots.lookup(gfn) else {
                    space.stats.memory_faults.inc();
                    return Err(Exit::MemoryFault);
                };
                // The largest leaf the format's geometry can hold: a
                // stage-2 walk that starts at level 2 has no 1G entry.
                let max_level = state.mmu.as_ref().ok_or(EIO)?.max_map_level();
                (
                    *slot,
                    slot.gfn_to_hva(gfn),
                    state.slots.generation(),
                    state.inval.seq(),
                    max_level,
                )
            };
            let readonly = slot.readonly();
            if write && readonly {
                space.stats.memory_faults.inc();
                return Err(Exit::MemoryFault);
            }
            // Aging without A/D bits made the leaf access-tracked (x86) or
            // old (arm64: an access-flag fault): make it young again without
            // get_user_pages (an invalidation would have zapped it, so no
            // sequence check is needed). With A/D bits the walker keeps
            // entries young itself: skip the extra trip through the lock.
            if !space.ad_enabled() && self.fix_access_fault(gfn, write) {
                return Ok(());
            }
            st.tables.topup(FAULT_TABLES).map_err(|_| ENOMEM)?;
            st.descs.topup(FAULT_DESCS).map_err(|_| ENOMEM)?;

            // `hva` is a user address of the current mm (the caller is the
            // space's creator).
            let page = match UserPageRef::get_fast(hva as usize, write) {
                Ok(page) => page,
                Err(e) if e == ENOMEM || e == EINTR || e == ERESTARTSYS => {
                    return Err(Exit::Errno(if e == ENOMEM { ENOMEM } else { EINTR }));
                }
                Err(_) => {
                    space.stats.memory_faults.inc();
                    return Err(Exit::MemoryFault);
                }
            };
            let pfn = page.pfn() as u64;

            let m = Resolved::new(&slot, gfn, pfn, hva, max_level);
            let mapped = if matches!(self.root_tables, Root::S2(..)) {
                self.map_parallel(st, &m, write, generation, seq)
            } else {
                self.map_exclusive(st, slot.id, &m, write, generation, seq)
            };
            let mapped = match mapped {
                Installed::Mapped(m) => m,
                Installed::Retry => {
                    drop(page);
                    // Retry through the exit point, as a vCPU re-entering
                    // the guest would: an invalidation that never ends
                    // must not keep the thread from a signal or the CPU.
                    self.exit_point()?;
                    continue;
                }
                Installed::Dead(e) => {
                    drop(page);
                    return Err(Exit::Errno(e));
                }
            };
            // Like KVM: a page mapped writable is dirty from now on; the
            // zap marks it dirty again if the guest wrote it (D bit).
            if mapped.is_ok() && write {
                page.set_dirty();
            }
            drop(page);
            let outcome = mapped.map_err(|e| match e {
                // The space holds its limit of table pages.
                MapError::TableLimit => ENOSPC,
                _ => ENOMEM,
            })?;
            space.stats.faults.inc();
            if matches!(outcome.action, MapAction::Installed | MapAction::Replaced) {
                space.stats.mappings[m.level.idx()].inc();
            }
            if outcome.split {
                space.stats.splits.inc();
            }
            if outcome.unlinked.is_some() {
                space.stats.collapses.inc();
            }
            space.stats.rmap_max_chain.max(outcome.chain_len as u64);
            return Ok(());
        }
    }

    /// The fast path of an access fault without A/D bits: x86 restores an
    /// access-tracked leaf under the MMU lock for write; stage-2 sets AF on
    /// an old leaf under the read side, like KVM's `handle_access_fault()`.
    /// False if there is no such leaf: take the full fault path.
    fn fix_access_fault(&self, gfn: u64, write: bool) -> bool {
        let space = &self.space;
        if matches!(self.root_tables, Root::S2(..)) {
            let state = space.mmu.read();
            let Some(Pgt::S2(mmu)) = state.mmu.as_ref() else {
                return false;
            };
            if !mmu.mkyoung(self.root, gfn, write) {
                return false;
            }
            drop(state);
            space.stats.access_flag_faults.inc();
            return true;
        }
        let mut state = space.mmu.write();
        let Some(Pgt::X86(mmu)) = state.mmu.as_mut() else {
            return false;
        };
        if !mmu.restore_access_tracked(self.root, gfn, write) {
            return false;
        }
        drop(state);
        space.stats.access_restores.inc();
        true
    }

    /// Whether the fault must start over: the slots changed, or an
    /// invalidation of any of the host range `m` maps ran since `seq` was
    /// read (A2). `state` is borrowed from an MMU lock guard, either side:
    /// invalidations change the retry state with the lock held for write
    /// before they zap, so a fault that passes this check installs before
    /// the zap and is zapped by it.
    ///
    /// The whole huge range is checked, not only the faulting page: the
    /// primary MMU splits a huge mapping, or unmaps part of it, only inside
    /// an invalidation of (at least) that part, so a split or partial unmap
    /// that ran after `seq` was read, and so maybe after the host level was
    /// looked up, makes the fault retry and look again.
    fn must_retry(&self, state: &MmuState, generation: u64, m: &Resolved, seq: u64) -> bool {
        let space = &self.space;
        let (start, end) = m.hva_range();
        let stale = state.slots.generation() != generation
            || state.inval.retry_range(start as usize, end as usize, seq);
        if stale {
            space.stats.fault_retries.inc();
        }
        stale
    }

    /// Installs the leaf on x86: under the MMU lock for write, like KVM's
    /// shadow MMU.
    #[allow(clippy::too_many_arguments)]
    fn map_exclusive(
        &self,
        st: &mut VcpuState,
        slot_id: u32,
        m: &Resolved,
        write: bool,
        generation: u64,
        seq: u64,
    ) -> Installed {
        let space = &self.space;
        let mut state = space.mmu.write();
        if space.check_alive().is_err() {
            return Installed::Dead(EIO);
        }
        if self.must_retry(&state, generation, m, seq) {
            return Installed::Retry;
        }
        let Some(Pgt::X86(mmu)) = state.mmu.as_mut() else {
            return Installed::Dead(EINVAL);
        };
        let mapped = mmu.map_level(
            self.root,
            slot_id,
            m.gfn,
            m.pfn,
            write,
            m.level,
            &mut st.tables,
            &mut st.descs,
        );
        if let Ok(o) = mapped {
            if o.needs_flush() {
                space.flush_remote_tlbs();
            }
            if let Some(t) = o.unlinked {
                // SAFETY: the table was unlinked by this map of this MMU,
                // and the flush above waited for every vCPU to leave guest
                // mode, where alone lockless walkers run; we still hold the
                // lock for write, so no locked walker is in it either.
                unsafe { mmu.free_unlinked(t) };
            }
        }
        Installed::Mapped(mapped)
    }

    /// Installs the leaf on stage-2: under the read side of the MMU lock,
    /// racing other faults and agers (protocols.md E24-E27). An entry
    /// locked or changed by another walker makes the map back off with
    /// -EAGAIN; the fault then starts over, as a vCPU re-executes the
    /// faulting instruction.
    #[allow(clippy::too_many_arguments)]
    fn map_parallel(
        &self,
        st: &mut VcpuState,
        m: &Resolved,
        write: bool,
        generation: u64,
        seq: u64,
    ) -> Installed {
        let space = &self.space;
        let state = space.mmu.read();
        if space.check_alive().is_err() {
            return Installed::Dead(EIO);
        }
        if self.must_retry(&state, generation, m, seq) {
            return Installed::Retry;
        }
        let Some(Pgt::S2(mmu)) = state.mmu.as_ref() else {
            return Installed::Dead(EINVAL);
        };
        // Break-before-make replaces a stale leaf: the flush between break
        // and make waits for every vCPU to drop the old translation.
        let flush = || space.flush_remote_tlbs();
        let mapped = mmu.map(
            self.root,
            m.gfn,
            m.pfn,
            write,
            m.level,
            &mut st.tables,
            &flush,
        );
        drop(state);
        if let Ok(MapOutcome {
            unlinked: Some(t), ..
        }) = mapped
        {
            // A table replaced by a block: other faults and agers under the
            // read side may still be inside it; under the write side none
            // is (the arm64 module's I1).
            let mut state = space.mmu.write();
            if let Some(Pgt::S2(mmu)) = state.mmu.as_mut() {
                // SAFETY: unlinked by the map above, of this MMU (the MMU
                // of a space is never replaced once configured), and not
                // freed since; we hold the write side.
                unsafe { mmu.free_unlinked(t) };
            }
        }
        match mapped {
            Err(MapError::Again) => {
                space.stats.fault_eagain.inc();
                Installed::Retry
            }
            Ok(o) if o.action == MapAction::Replaced => {
                space.stats.bbm.inc();
                Installed::Mapped(mapped)
            }
            _ => Installed::Mapped(mapped),
        }
    }

    /// SECMMU_RUN: accesses `[start, end)` every `stride` bytes, `passes`
    /// times, as a guest loop would. Like a real vCPU, it stays in guest
    /// mode across accesses that hit the TLB or the tables, and leaves it
    /// only to fault, when a TLB flush is requested, and every
    /// [`GUEST_BUDGET`] accesses to check for signals and rescheduling.
    fn run(&self, run: &mut uapi::secmmu_run) -> Result {
        uapi::check_zero(&run.reserved)?;
        let write = match run.op {
            uapi::RUN_WRITE => true,
            uapi::RUN_READ | uapi::RUN_VERIFY => false,
            _ => return Err(EINVAL),
        };
        if run.flags != 0 || run.pad != 0 || run.pad2 != 0 {
            return Err(EINVAL);
        }
        if run.start & 7 != 0 || run.stride == 0 || run.stride & 7 != 0 || run.end < run.start {
            return Err(EINVAL);
        }
        if run.end > 1 << 48 {
            return Err(EINVAL);
        }
        run.accesses = 0;
        run.mismatches = 0;
        run.first_mismatch = 0;
        run.exit_reason = uapi::EXIT_NONE;
        run.exit_flags = 0;
        run.exit_gpa = 0;
        run.exit_pass = 0;
        if run.start == run.end {
            // Passes of no access: nothing to run.
            return Ok(());
        }
        let mut cur = RunCursor {
            pass: 0,
            gpa: run.start,
        };
        let mut st = self.busy_or_lock()?;
        let st = &mut *st;
        st.tlb.flush();
        let r = loop {
            if cur.pass >= run.passes {
                break Ok(());
            }
            if let Err(e) = self.exit_point() {
                break Err(e);
            }
            match self.in_guest(&mut st.tlb, |g| run_stretch(g, run, &mut cur, write)) {
                Stretch::Yield => {}
                Stretch::Fault(gfn) => {
                    if let Err(e) = self.fault(st, gfn, write) {
                        break Err(e);
                    }
                }
            }
        };
        let Err(e) = r else {
            return Ok(());
        };
        run.exit_gpa = cur.gpa;
        run.exit_pass = cur.pass;
        run.exit_flags = if write { uapi::ACCESS_WRITE } else { 0 };
        Err(match e {
            Exit::MemoryFault => {
                run.exit_reason = uapi::EXIT_MEMORY_FAULT;
                EFAULT
            }
            Exit::Errno(e) => {
                if e == EINTR {
                    run.exit_reason = uapi::EXIT_SIGNAL;
                }
                e
            }
        })
    }

    /// SECMMU_ACCESS: copies between a user buffer and guest memory, a page
    /// at most at a time, through a kernel bounce buffer (user copies may
    /// fault and sleep, so never in guest mode).
    fn access(&self, acc: &mut uapi::secmmu_access) -> Result {
        uapi::check_zero(&acc.reserved)?;
        if acc.flags & !uapi::ACCESS_WRITE != 0 || acc.pad != 0 || acc.len > uapi::ACCESS_MAX {
            return Err(EINVAL);
        }
        let end = acc.gpa.checked_add(acc.len).ok_or(EINVAL)?;
        if end > 1 << 48 {
            return Err(EINVAL);
        }
        let write = acc.flags & uapi::ACCESS_WRITE != 0;
        acc.done = 0;
        acc.exit_gpa = 0;
        let mut bounce = KVec::<u8>::from_elem(0u8, 4096, GFP_KERNEL)?;
        let user = UserSlice::new(UserPtr::from_addr(acc.buf as usize), acc.len as usize);
        let (mut reader, mut writer) = user.reader_writer();
        let mut st = self.busy_or_lock()?;
        st.tlb.flush();
        while acc.done < acc.len {
            let gpa = acc.gpa + acc.done;
            let off = (gpa & 0xfff) as usize;
            let n = (4096 - off).min((acc.len - acc.done) as usize);
            let buf = &mut bounce[..n];
            if write && reader.read_slice(buf).is_err() {
                acc.exit_gpa = u64::MAX;
                return Err(EFAULT);
            }
            let r = self.with_guest_page(&mut st, gpa >> 12, write, |page| {
                // SAFETY: `page + off .. + n` lies in one mapped guest page;
                // `buf` is our own kernel buffer of `n` bytes.
                unsafe {
                    if write {
                        core::ptr::copy_nonoverlapping(buf.as_ptr(), page.add(off), n);
                    } else {
                        core::ptr::copy_nonoverlapping(page.add(off), buf.as_mut_ptr(), n);
                    }
                }
            });
            match r {
                Ok(()) => {}
                Err(Exit::MemoryFault) => {
                    acc.exit_gpa = gpa;
                    return Err(EFAULT);
                }
                Err(Exit::Errno(e)) => {
                    acc.exit_gpa = gpa;
                    return Err(e);
                }
            }
            if !write && writer.write_slice(buf).is_err() {
                acc.exit_gpa = u64::MAX;
                return Err(EFAULT);
            }
            acc.done += n as u64;
        }
        Ok(())
    }
}

/// Accesses a SECMMU_RUN guest-mode stretch makes at most: bounds the time
/// with preemption off, and between checks for signals.
const GUEST_BUDGET: u32 = 256;

/// A vCPU in guest mode: what it may use there (tlb.rs, rule 1).
struct GuestMode<'a> {
    tlb: &'a mut SoftTlb,
    root: Root,
    mode: &'a VcpuMode,
}

impl GuestMode<'_> {
    /// The kernel address of guest page `gfn`, translated for a read or a
    /// `write` through the TLB or else a walk of the tables, as the
    /// hardware does. Valid until guest mode ends.
    fn page(&mut self, gfn: u64, write: bool) -> Result<*mut u8, WalkFault> {
        let root = self.root;
        let hit = self.tlb.translate(
            gfn,
            write,
            || {
                // SAFETY: `root` is a root of the space's MMU, which lives as
                // long as the space, which the vCPU keeps alive; we are in
                // guest mode (`Vcpu::in_guest()`).
                unsafe { root.translate(gfn, write) }
            },
            // SAFETY: A page the walk found mapped: a page of RAM (the
            // host's, from GUP), in the direct map on a 64-bit kernel.
            |pfn| unsafe { pfn::to_virt(pfn as usize) } as usize,
        )?;
        // In guest mode the page stays mapped by the secondary MMU, so the
        // primary cannot free it until we exit (the zap waits for us).
        Ok(hit.addr as *mut u8)
    }

    /// Whether a TLB flush was requested: leave guest mode now, the
    /// requester spins until we do.
    fn flush_pending(&self) -> bool {
        self.mode.flush_pending()
    }
}

/// Where SECMMU_RUN is: the pass, and the next access of it.
struct RunCursor {
    pass: u32,
    gpa: u64,
}

/// Why a guest-mode stretch of SECMMU_RUN ended, short of the end.
enum Stretch {
    /// Budget used up, or a flush requested: go round again.
    Yield,
    /// The access at the cursor found no usable translation: fault `gfn`
    /// in, then run it again.
    Fault(u64),
}

/// One guest-mode stretch of SECMMU_RUN: accesses from `cur` on, advancing
/// it past each access done, until the run is over (the cursor reaches
/// `run.passes`), a fault, a flush request or [`GUEST_BUDGET`].
fn run_stretch(
    g: &mut GuestMode<'_>,
    run: &mut uapi::secmmu_run,
    cur: &mut RunCursor,
    write: bool,
) -> Stretch {
    for _ in 0..GUEST_BUDGET {
        if cur.pass >= run.passes {
            return Stretch::Yield;
        }
        if g.flush_pending() {
            return Stretch::Yield;
        }
        let gpa = cur.gpa;
        let page = match g.page(gpa >> 12, write) {
            Ok(page) => page,
            Err(_) => return Stretch::Fault(gpa >> 12),
        };
        let value = run.pattern ^ gpa;
        // SAFETY: `page` is a mapped 4 KiB page, valid in guest mode, and
        // `gpa & 0xfff` an 8-byte aligned offset in it. Userspace may access
        // the same memory concurrently, hence an atomic access.
        let word = unsafe { AtomicU64::from_ptr(page.add((gpa & 0xfff) as usize).cast::<u64>()) };
        if write {
            word.store(value, Ordering::Relaxed);
        } else {
            let seen = word.load(Ordering::Relaxed);
            if run.op == uapi::RUN_VERIFY && seen != value {
                if run.mismatches == 0 {
                    run.first_mismatch = gpa;
                }
                run.mismatches += 1;
            }
        }
        run.accesses += 1;
        cur.gpa = match gpa.checked_add(run.stride) {
            Some(next) if next < run.end => next,
            _ => {
                cur.pass += 1;
                run.start
            }
        };
    }
    Stretch::Yield
}
