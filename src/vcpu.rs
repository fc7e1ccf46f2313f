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
//! translation or a page from before. Faults (fault.rs), signal checks,
//! rescheduling and user copies happen outside guest mode.

use crate::{
    dirty_ring::{self, VcpuRing},
    ext::{
        anon_inode::{self, AnonInodeFile},
        pfn,
        preempt::PreemptGuard,
    },
    fault::{exit_point, AroundPages, Exit, FaultIn},
    format::{FaultCaches, Root},
    mmu::addr::Gfn,
    mmu::dirty::PmlLog,
    mmu::pfncache::Target,
    mmu::pgtable::WalkFault,
    mmu::prim::NoPreempt,
    mmu::stats::VcpuStats,
    mmu::tlb::{SoftTlb, VcpuMode},
    prefault::{self, PreFault},
    space::Space,
    stats_fd::StatsFile,
    uapi,
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::{
    fs::{
        file::flags::{O_CLOEXEC, O_RDWR},
        File,
    },
    mm::virt::VmaNew,
    new_mutex,
    prelude::*,
    sync::{Arc, ArcBorrow, Mutex},
    uaccess::{UserPtr, UserSlice},
};

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
    /// Gfns the vCPU's walks made dirty, for dirty logging by the dirty
    /// bit: empty outside guest mode (flushed into the dirty bitmaps before
    /// the vCPU leaves it, and when full).
    pml: PmlLog,
    /// Allocations for a fault, made before the MMU lock is taken.
    caches: FaultCaches,
    /// Room for the pages a fault maps around its own.
    around: AroundPages,
    /// RUN and ACCESS calls that returned, for the run page.
    exits: u64,
    /// Whether the run page is on (its cache is the space's cache of this
    /// vCPU's id).
    run_page: bool,
}

/// A vCPU id of a space, given back when dropped.
struct VcpuId {
    space: Arc<Space>,
    idx: usize,
}

impl VcpuId {
    /// An id for a vCPU with dirty ring `ring` and counters `stats`, which
    /// the space holds (for resets, and for its totals) until the id is
    /// given back.
    fn new(space: &Arc<Space>, ring: Option<Arc<VcpuRing>>, stats: Arc<VcpuStats>) -> Result<Self> {
        Ok(Self {
            idx: space.get_vcpu_id(ring, stats)?,
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
    /// Its dirty ring, if the space has rings: pushed to only by the
    /// vCPU's own thread, under `state`.
    ring: Option<Arc<VcpuRing>>,
    /// Its counters: written only by the thread that holds `state` (the
    /// invariant of [`OwnCounter`](crate::mmu::stats::OwnCounter)), read
    /// by anyone; shared with the space's totals while the vCPU lives and
    /// with its stats files, which may outlive it.
    stats: Arc<VcpuStats>,
    #[pin]
    state: Mutex<VcpuState>,
}

/// Rmap descriptors a vCPU's fault cache keeps when zaps free them.
const CACHED_DESCS: usize = 4;

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
        let pml = PmlLog::new().map_err(|_| ENOMEM)?;
        let ring = match config.ring_entries {
            0 => None,
            n => Some(dirty_ring::new_ring(n)?),
        };
        let stats = Arc::new(VcpuStats::default(), GFP_KERNEL_ACCOUNT)?;
        // Given back if anything below fails, and when the vCPU goes: then
        // its counts are folded into the space's.
        let id = VcpuId::new(space, ring.clone(), stats.clone())?;
        let vcpu = Arc::pin_init(
            try_pin_init!(Vcpu {
                space: space.clone(),
                id,
                root,
                root_tables,
                ring,
                stats,
                state <- new_mutex!(VcpuState {
                    tlb: SoftTlb::new(),
                    pml,
                    caches: FaultCaches::new(CACHED_DESCS),
                    around: AroundPages::new(),
                    exits: 0,
                    run_page: false,
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

    /// Maps the vCPU's dirty ring (`dirty_ring::mmap()`), from the space's
    /// own process only.
    fn mmap(vcpu: ArcBorrow<'_, Vcpu>, _file: &File, vma: &VmaNew) -> Result {
        vcpu.space.check_caller()?;
        dirty_ring::mmap(vcpu.ring.as_deref(), vma)
    }
}

impl Vcpu {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        self.space.check_caller()?;
        match cmd {
            uapi::RUN => {
                let mut run: uapi::secmmu_run = uapi::read_arg(arg)?;
                let ret = self.run(&mut run);
                self.exited(run.accesses, run.exit_reason, &ret);
                uapi::write_arg(arg, &run)?;
                ret.map(|()| 0)
            }
            uapi::ACCESS => {
                let mut acc: uapi::secmmu_access = uapi::read_arg(arg)?;
                let ret = self.access(&mut acc);
                self.exited(0, uapi::EXIT_NONE, &ret);
                uapi::write_arg(arg, &acc)?;
                ret.map(|()| 0)
            }
            uapi::SET_RUN_PAGE => self.set_run_page(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::GET_VCPU_STATS_FD => StatsFile::for_vcpu(self.stats.clone(), self.id.idx, arg),
            uapi::PRE_FAULT_MEMORY => {
                let mut req: uapi::secmmu_pre_fault_memory = uapi::read_arg(arg)?;
                let ret = self.pre_fault(&mut req);
                // Pass back what is left, as KVM does, whatever the result.
                uapi::write_arg(arg, &req)?;
                ret.map(|()| 0)
            }
            _ => Err(ENOTTY),
        }
    }

    /// SECMMU_SET_RUN_PAGE: turns the run page on at a guest address, or
    /// off. On, its cache is refreshed at once, so that a bad address fails
    /// here rather than at every exit.
    fn set_run_page(&self, req: &uapi::secmmu_run_page_setup) -> Result {
        uapi::check_zero(&req.reserved)?;
        if req.flags & !uapi::RUN_PAGE_ENABLE != 0 || req.pad != 0 {
            return Err(EINVAL);
        }
        let mut st = self.busy_or_lock()?;
        let gpcs = &self.space.gpcs;
        let id = self.id.idx;
        if req.flags & uapi::RUN_PAGE_ENABLE == 0 {
            if req.gpa != 0 {
                return Err(EINVAL);
            }
            st.run_page = false;
            gpcs.deactivate(id);
            return Ok(());
        }
        let len = size_of::<uapi::secmmu_run_page>() as u64;
        if req.gpa & 7 != 0 || req.gpa >= 1 << 52 || (req.gpa & 0xfff) + len > 4096 {
            return Err(EINVAL);
        }
        st.run_page = false;
        gpcs.activate(id, Target::Gpa(req.gpa), len, true)?;
        if let Err(e) = gpcs.refresh(&*self.space, id) {
            gpcs.deactivate(id);
            return Err(e);
        }
        st.run_page = true;
        Ok(())
    }

    /// A RUN or ACCESS returned with `ret`, after `accesses` accesses and
    /// exit reason `reason`: count it, and write the run page if it is on
    /// (KVM's `record_steal_time()` writes through its cache the same
    /// way). An update that fails is counted, never reported to the call.
    fn exited(&self, accesses: u64, reason: u32, ret: &Result) {
        // Another thread runs the vCPU: its own exit writes the page.
        let Ok(mut st) = self.busy_or_lock() else {
            return;
        };
        st.exits += 1;
        // Refresh what the clock's timer could not, as KVM does on entry.
        self.space.gpcs.service(&*self.space);
        if !st.run_page {
            return;
        }
        let page = uapi::secmmu_run_page {
            exits: st.exits,
            accesses,
            exit_reason: reason,
            error: ret.as_ref().err().map_or(0, |e| e.to_errno()),
        };
        let stats = &self.space.gpcs.stats;
        let len = size_of::<uapi::secmmu_run_page>() as u64;
        let written = self
            .space
            .gpcs
            .write_with(&*self.space, self.id.idx, len, |p| {
                // SAFETY: `p` is the kernel address of the run page, valid for
                // `len` bytes while the cache stays valid, which its lock
                // (held during this call) guarantees; 8-byte aligned (checked
                // at setup). Volatile: the guest and userspace read the page
                // concurrently.
                unsafe { core::ptr::write_volatile(p.cast::<uapi::secmmu_run_page>(), page) };
            });
        match written {
            Ok(()) => stats.run_page_updates.inc(),
            Err(_) => stats.run_page_errors.inc(),
        }
    }

    /// The vCPU's state for one RUN or ACCESS; `EBUSY` while another
    /// thread runs it. KVM waits on its vCPU mutex killably; secmmu refuses
    /// at once, so no caller ever sleeps behind a RUN that may last long.
    fn busy_or_lock(&self) -> Result<kernel::sync::MutexGuard<'_, VcpuState>> {
        self.state.try_lock().ok_or(EBUSY)
    }

    /// SECMMU_PRE_FAULT_MEMORY: maps `req`'s range into the vCPU's root as
    /// read faults would, and updates it to what is left (prefault.rs).
    fn pre_fault(&self, req: &mut uapi::secmmu_pre_fault_memory) -> Result {
        prefault::check(req)?;
        let mut st = self.busy_or_lock()?;
        self.space.check_alive()?;
        let mut pages = KBox::new(prefault::BatchPages::new(), GFP_KERNEL)?;
        self.root_tables.kind().with_format(PreFault {
            space: &self.space,
            vcpu: self.id.idx,
            root: self.root,
            caches: &mut st.caches,
            pages: &mut pages,
            stats: &self.stats,
            range: req,
        })
    }

    /// Faults guest page `gfn` in for a read or a `write`.
    fn fault(&self, st: &mut VcpuState, gfn: Gfn, write: bool) -> Result<(), Exit> {
        self.root_tables.kind().with_format(FaultIn {
            space: &self.space,
            vcpu: self.id.idx,
            root: self.root,
            caches: &mut st.caches,
            around: &mut st.around,
            ring: self.ring.as_deref(),
            gfn,
            write,
            stats: &self.stats,
        })
    }

    /// The vCPU's exit for a soft-full dirty ring, checked before it enters
    /// the guest (KVM's `kvm_dirty_ring_check_request()`): what one
    /// guest-mode stretch and one fault push fits in the ring then.
    fn check_ring(&self) -> Result<(), Exit> {
        match &self.ring {
            Some(ring) if ring.soft_full() => {
                self.stats.dirty_ring_full_exits.inc();
                Err(Exit::DirtyRingFull)
            }
            _ => Ok(()),
        }
    }

    /// Runs `body` in one guest-mode stretch (tlb.rs, rule 1): preemption
    /// disabled, the TLB flushed first if a flush was requested. `body` gets
    /// the TLB, and a [`GuestMode`] to translate and to see flush requests
    /// with; it must be short and take no lock.
    ///
    /// The page-modification log is flushed before guest mode ends, as a
    /// CPU's PML buffer is on every VM exit: a harvest waits for guest mode
    /// to end (`Space::sync_dirty_log()`), so it finds every write of the
    /// stretch in the bitmaps.
    fn in_guest<R>(
        &self,
        tlb: &mut SoftTlb,
        pml: &mut PmlLog,
        body: impl FnOnce(&mut GuestMode<'_>) -> R,
    ) -> R {
        let mode = self.space.vcpu_mode(self.id.idx);
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        if mode.enter_guest() {
            tlb.flush();
        }
        let mut g = GuestMode {
            tlb,
            pml,
            ring: self.ring.as_deref(),
            space: &self.space,
            stats: &self.stats,
            rcu: &rcu,
            root: self.root_tables,
            mode,
        };
        let r = body(&mut g);
        if !g.pml.is_empty() {
            g.flush_pml();
        }
        mode.exit_guest();
        drop(preempt);
        r
    }

    /// Runs `op` on the kernel address of guest page `gfn`, in guest mode,
    /// faulting the page in first if needed.
    fn with_guest_page(
        &self,
        st: &mut VcpuState,
        gfn: Gfn,
        write: bool,
        op: impl FnOnce(*mut u8),
    ) -> Result<(), Exit> {
        let mut op = Some(op);
        loop {
            exit_point()?;
            self.check_ring()?;
            let r = self.in_guest(&mut st.tlb, &mut st.pml, |g| {
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
            if let Err(e) = exit_point().and_then(|()| self.check_ring()) {
                break Err(e);
            }
            match self.in_guest(&mut st.tlb, &mut st.pml, |g| {
                run_stretch(g, run, &mut cur, write)
            }) {
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
            Exit::DirtyRingFull => {
                run.exit_reason = uapi::EXIT_DIRTY_RING_FULL;
                EAGAIN
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
    /// at most at a time. User copies may fault and sleep, so never in guest
    /// mode: a write goes through a kernel bounce buffer, copied into the
    /// page in guest mode (where the translation is good); a read takes a
    /// reference on the page in guest mode and copies it out straight after,
    /// as KVM's `kvm_vcpu_map()` holds the page it maps (the read happened
    /// when the page was translated: an invalidation meanwhile cannot free
    /// it, and a later access translates again).
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
        let mut bounce = KVec::<u8>::new();
        if write {
            bounce.extend_with(4096, 0u8, GFP_KERNEL)?;
        }
        let user = UserPtr::from_addr(acc.buf as usize);
        let mut reader = UserSlice::new(user, acc.len as usize).reader();
        let mut st = self.busy_or_lock()?;
        st.tlb.flush();
        while acc.done < acc.len {
            let gpa = acc.gpa + acc.done;
            let off = (gpa & 0xfff) as usize;
            let n = (4096 - off).min((acc.len - acc.done) as usize);
            if write && reader.read_slice(&mut bounce[..n]).is_err() {
                acc.exit_gpa = u64::MAX;
                return Err(EFAULT);
            }
            let mut held = None;
            let r = self.with_guest_page(&mut st, Gfn::from_gpa(gpa), write, |page| {
                if write {
                    // SAFETY: `page + off .. + n` lies in one mapped guest
                    // page; `bounce` is our own kernel buffer of at least
                    // `n` bytes.
                    unsafe { core::ptr::copy_nonoverlapping(bounce.as_ptr(), page.add(off), n) };
                } else {
                    // SAFETY: A page mapped by the secondary MMU, in guest
                    // mode: the zap that removes the mapping waits for the
                    // vCPU to leave guest mode, so it is allocated; a page
                    // of RAM (the host's, from GUP) in the direct map.
                    held = Some(unsafe { pfn::PageRef::get_virt(page) });
                }
            });
            match r {
                Ok(()) => {}
                Err(Exit::MemoryFault) => {
                    acc.exit_gpa = gpa;
                    return Err(EFAULT);
                }
                Err(Exit::DirtyRingFull) => {
                    acc.exit_gpa = gpa;
                    return Err(EAGAIN);
                }
                Err(Exit::Errno(e)) => {
                    acc.exit_gpa = gpa;
                    return Err(e);
                }
            }
            if let Some(page) = held {
                // Out of guest mode: the copy may fault and sleep.
                let dst = user.wrapping_byte_add(acc.done as usize);
                if page.copy_to_user(off, n, dst).is_err() {
                    acc.exit_gpa = u64::MAX;
                    return Err(EFAULT);
                }
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
    pml: &'a mut PmlLog,
    /// The vCPU's dirty ring, if the space has rings.
    ring: Option<&'a VcpuRing>,
    space: &'a Space,
    /// The vCPU's counters (this thread is their writer).
    stats: &'a VcpuStats,
    /// Guest mode runs with preemption disabled: an RCU read side.
    rcu: &'a NoPreempt<'a>,
    root: Root,
    mode: &'a VcpuMode,
}

impl GuestMode<'_> {
    /// The kernel address of guest page `gfn`, translated for a read or a
    /// `write` through the TLB or else a walk of the tables, as the
    /// hardware does. Valid until guest mode ends.
    fn page(&mut self, gfn: Gfn, write: bool) -> Result<*mut u8, WalkFault> {
        let root = self.root;
        let mut dirtied = false;
        let hit = self.tlb.translate(
            gfn,
            write,
            || {
                // SAFETY: `root` is a root of the space's MMU, which lives as
                // long as the space, which the vCPU keeps alive; we are in
                // guest mode (`Vcpu::in_guest()`).
                let t = unsafe { root.translate(gfn, write) }?;
                dirtied = t.dirtied;
                Ok(t)
            },
            // SAFETY: A page the walk found mapped: a page of RAM (the
            // host's, from GUP), in the direct map on a 64-bit kernel.
            |pfn| unsafe { pfn::to_virt(pfn.raw() as usize) } as usize,
        )?;
        // The walk made the leaf dirty: log the page, as PML does on the
        // clean-to-dirty transition; a full log is flushed at once (Intel's
        // PML-full exit), before the next walk could need its room.
        if dirtied && self.pml.push(gfn) {
            self.flush_pml();
        }
        // In guest mode the page stays mapped by the secondary MMU, so the
        // primary cannot free it until we exit (the zap waits for us).
        Ok(hit.addr as *mut u8)
    }

    /// Flushes the page-modification log into the vCPU's dirty ring, or
    /// the dirty bitmaps of the slots of the gfns in it (KVM's
    /// `vmx_flush_pml_buffer()`, through `mark_page_dirty()`), under the RCU
    /// read side of guest mode: the set current now, whose bitmaps live
    /// until a grace period after it is replaced. A gfn of a slot that
    /// stopped logging since is dropped. The ring has room for a whole log:
    /// the vCPU entered guest mode with it not soft full.
    fn flush_pml(&mut self) {
        let slots = self.space.memslots(self.rcu);
        let ring = self.ring;
        let mut overflows = 0;
        let n = self.pml.drain(|gfn| {
            if let Some(slot) = slots.lookup(gfn) {
                overflows += u64::from(slot.mark_dirty_by(gfn, ring));
            }
        });
        self.stats.pml_logged.add(n as u64);
        self.stats.dirty_ring_overflows.add(overflows);
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
    Fault(Gfn),
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
        let page = match g.page(Gfn::from_gpa(gpa), write) {
            Ok(page) => page,
            Err(_) => return Stretch::Fault(Gfn::from_gpa(gpa)),
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
