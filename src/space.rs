// SPDX-License-Identifier: GPL-2.0

//! A space: one open `/dev/secmmu`, bound to its opener's mm.
//!
//! Lock order, outermost first (the whole story, with what the mm core
//! holds around each callback: "Lifetime and lock order" in
//! Documentation/secmmu.rst):
//! 1. a vCPU's mutex (`Vcpu::state`), only ever tried;
//! 2. [`Space::config`], a mutex: serializes CONFIGURE, SET_MEMSLOT and
//!    vCPU ids (KVM's `slots_lock`); never held with a vCPU's mutex;
//! 3. [`Space::retired`], the mutex of replaced memslot sets waiting for
//!    their grace period;
//! 4. the mm core's locks: under the mutexes above secmmu calls into the mm
//!    core (get_user_pages, user copies, allocations) holding no spinning
//!    lock; the mm core calls the notifier callbacks with its own held, so
//!    a callback takes only the spinning locks below;
//! 5. [`Space::mmu`], the MMU lock (an `rwlock_t`, spinning): page tables,
//!    the publication of memslot sets ([`Space::memslots`] is replaced only
//!    under the write side) and the invalidation retry state. Nothing that sleeps runs
//!    under it; a fault allocates before it takes it (vCPU caches).
//!    Invalidations change the retry state with it held for write, like
//!    KVM's `kvm_mmu_invalidate_start/end()`, so faults read it under the
//!    read side, in parallel, with no lock of their own;
//! 6. rmap bit locks (inside the MMU lock, or alone with preemption off for
//!    lockless aging);
//! 7. guest mode, waited on as a lock: TLB flushes are requested with the
//!    MMU lock held (or none) and spin until every vCPU in guest mode has
//!    acknowledged. vCPUs never take a lock in guest mode, so the wait is
//!    bounded by one guest access.
//!
//! Lifetime: a space lives in an `Arc`, held by its file and by each vCPU
//! file. Its notifier is its first field, so when the last reference goes,
//! `mmu_notifier_unregister()` (which waits for running callbacks) runs
//! before any other field is dropped.

use crate::{
    debugfs,
    dirty_ring::VcpuRing,
    ext::{
        gup::UserPageRef,
        mm::{self, LeafLevel},
        mmu_notifier::{impl_has_mmu_notifier, MmuNotifier, MmuNotifierOps, Range},
        preempt::PreemptGuard,
        rcu::GracePeriodState,
        rwlock::new_rwlock,
        sched,
    },
    fault,
    format::{self, Kind, MmuState, Pgt, SlotSet, SpaceMmu},
    gpc::GpcSet,
    kpages,
    mmu::addr::{Gfn, Hva, Pfn},
    mmu::aging::{AgeOp, AgeResult},
    mmu::dirty::{DirtyBitmap, Tracking},
    mmu::dirty_ring::{self, RingSizeError},
    mmu::inval::Invalidations,
    mmu::level::Level,
    mmu::memslot::{Slot, SlotError, SlotLimits, SlotRequest},
    mmu::pfncache::Policy,
    mmu::prim::{self, NoPreempt, RcuPtr, Unpublished},
    mmu::stats::{self, SpaceView, Stats, VcpuStats, VcpuTotals},
    mmu::tlb::VcpuMode,
    mmu::zap::{Yield, Zap, ZapLock},
    mmu_lock::{MmuLock, WriteGuard},
    trace, uapi,
};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::{
    mm::MmWithUser,
    new_mutex,
    page::PAGE_SIZE,
    prelude::*,
    sync::{rcu, Arc, Mutex, MutexGuard},
};

/// The configuration SECMMU_CONFIGURE fixed.
#[derive(Clone, Copy)]
pub(crate) struct Config {
    /// `SECMMU_FMT_*`.
    pub(crate) format: u32,
    pub(crate) nr_roots: u32,
    /// Guest-physical address bits: memslots must fit below `1 << ia_bits`.
    pub(crate) ia_bits: u32,
    /// `SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT`: SECMMU_GET_DIRTY_LOG only
    /// copies, SECMMU_CLEAR_DIRTY_LOG clears and write-protects.
    pub(crate) manual_protect: bool,
    /// `SECMMU_CFG_DIRTY_LOG_INITIALLY_SET`: logging starts with every page
    /// dirty and nothing write-protected.
    pub(crate) initially_set: bool,
    /// `SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT`: starting to log splits the slot's
    /// huge leaves (with INITIALLY_SET, clearing a range splits its own),
    /// instead of leaving each to split on its first write fault.
    pub(crate) eager_split: bool,
    /// How logging slots track writes: `SECMMU_CFG_DIRTY_LOG_DIRTY_BIT`
    /// chooses the dirty bit and the vCPUs' page-modification logs.
    pub(crate) tracking: Tracking,
    /// Entries of each vCPU's dirty ring (`dirty_ring_size`), 0 for none:
    /// then vCPUs log into the slots' bitmaps.
    pub(crate) ring_entries: u32,
}

/// The state of one open `/dev/secmmu`.
#[pin_data(PinnedDrop)]
pub(crate) struct Space {
    /// First field: dropped (unregistered, waiting for running callbacks)
    /// before everything else; initialized (registered) last.
    #[pin]
    notifier: MmuNotifier<Space>,
    /// Unique among the spaces since the module was loaded: names the
    /// space in trace events and its debugfs directory.
    pub(crate) id: u32,
    /// The space's debugfs directory (`debugfs.rs`), while its file is
    /// open: it holds a reference on the space, which `release` drops.
    #[pin]
    debugfs: Mutex<Option<debugfs::SpaceDir>>,
    /// Serializes configuration changes; holds the configuration.
    #[pin]
    config: Mutex<Option<Config>>,
    #[pin]
    pub(crate) mmu: MmuLock<MmuState>,
    /// The memslot set (KVM's `kvm->memslots`), with each slot's format
    /// data (x86: its rmaps): replaced only under `config` and the MMU lock
    /// held for write, so holders of the MMU lock see one set; lockless
    /// agers read it in an RCU read side (see "Memslots and their lifetime"
    /// in Documentation/secmmu-protocols.rst). After `notifier`: `release()`
    /// zaps through it.
    memslots: RcuPtr<SlotSet>,
    /// Replaced memslot sets that RCU readers may still see, each with the
    /// RCU state (`get_state_synchronize_rcu()`) of its replacement: freed
    /// by later slot changes once that grace period is over, and by the
    /// drop. A deleted slot's rmaps go with the last set that holds them.
    #[pin]
    retired: Mutex<KVec<(Unpublished<SlotSet>, GracePeriodState)>>,
    /// Age under the MMU lock even where A/D bits allow lockless aging
    /// (module parameter `aging_locked`, read at open).
    aging_locked: bool,
    /// Read faults map writable what the primary already maps writable
    /// (module parameter `map_writable_on_read`, read at open).
    map_writable_on_read: bool,
    /// The fault-around window, in pages: a power of two up to
    /// [`fault::AROUND_MAX`], 1 for none (module parameter `fault_around`,
    /// read at open; 1 once SECMMU_CONFIGURE asked for
    /// `SECMMU_CFG_NO_FAULT_AROUND`).
    fault_around: AtomicU32,
    /// The most table pages the space's tables may hold (module parameter
    /// `max_table_pages`, read at open): past it, faults that need a new
    /// table fail with `ENOSPC` until zaps free some.
    max_table_pages: u64,
    /// The walkers keep accessed (and, on x86, dirty) state in the entries:
    /// true unless SECMMU_CONFIGURE asked for `SECMMU_CFG_NO_AD`. Written
    /// once, before the space has tables.
    ad_enabled: AtomicBool,
    /// `SECMMU_FMT_*` once configured, 0 before: lets the mm core's
    /// callbacks pick the format's aging walk without any lock.
    format: AtomicU32,
    /// Guest-mode state of each vCPU, for TLB flush requests, by vCPU id;
    /// they live as long as the space.
    vcpu_modes: [VcpuMode; uapi::MAX_VCPUS],
    /// The ids of the vCPUs that exist: bit `i` for vCPU `i`. Ids are
    /// taken under `config` and given back when a vCPU goes (or its
    /// creation fails), so they are reused.
    vcpu_ids: AtomicU64,
    /// The dirty ring of each vCPU, by vCPU id, while it has one and the id
    /// is taken: for SECMMU_RESET_DIRTY_RINGS. Taken inside `config`.
    #[pin]
    dirty_rings: Mutex<[Option<Arc<VcpuRing>>; uapi::MAX_VCPUS]>,
    /// Set by `release()`: the mm's address space is gone ("Release and the
    /// dead address space" in Documentation/secmmu-protocols.rst).
    released: AtomicBool,
    /// The counters no vCPU keeps: bumped by notifier callbacks, zaps,
    /// aging and ioctls of any thread.
    pub(crate) stats: Stats,
    /// The vCPUs' counters, for the space's totals ("Statistics" in
    /// Documentation/secmmu.rst). Taken inside `config`, alone by readers.
    #[pin]
    vcpu_stats: Mutex<VcpuStatsSet>,
    /// Kernel-mapped guest page caches: one per vCPU id (its run page) and
    /// the clock page's. The notifier invalidates them; `release()` stops
    /// the clock and deactivates them all.
    #[pin]
    pub(crate) gpcs: GpcSet,
}

impl_has_mmu_notifier!(Space, notifier);

/// Rmaps [`Space::rmaps_stat()`] counts with preemption off at a time.
const RMAPS_STAT_BATCH: usize = 4096;

/// The id of the next space ([`Space::id`]); ids start at 1.
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// The counters of a space's vCPUs: the live ones', by vCPU id, and the
/// sum of those of the vCPUs gone. One lock over both, so a vCPU's counts
/// move from the live set to the sum at once: a reader sees them in one
/// place or the other, never both or neither, and the totals never go
/// backwards.
struct VcpuStatsSet {
    live: [Option<Arc<VcpuStats>>; uapi::MAX_VCPUS],
    exited: VcpuTotals,
}

mod dirty_log;

/// What a flush and a yield of a zap are to a space ([`Yield`]): a zap
/// that may block yields when this CPU should reschedule or another waits
/// for the MMU lock (KVM's `cond_resched_rwlock_write()` tests), and flushes
/// with [`Space::flush_remote_tlbs()`].
struct SpaceYield<'s> {
    space: &'s Space,
    /// The zap may sleep: an invalidation that is not blockable (the OOM
    /// reaper's) never yields.
    may_block: bool,
    /// The times it asked whether to yield, for the `test_zap_resched`
    /// hook (`testhooks.rs`).
    asked: u64,
}

impl Yield for SpaceYield<'_> {
    fn should_yield(&mut self) -> bool {
        if !self.may_block {
            return false;
        }
        self.asked += 1;
        let every = crate::testhooks::zap_resched();
        (every != 0 && self.asked % every == 0)
            || sched::need_resched()
            || self.space.mmu.contended()
    }

    fn flush_tlbs(&mut self) {
        self.space.flush_remote_tlbs();
    }

    fn flush_elided(&mut self) {
        self.space.stats.tlb_flushes_elided.inc();
        trace::tlb_flush(self.space.id, 0, true);
    }
}

/// The MMU lock of a space, held for write by a zap ([`ZapLock`]).
struct SpaceLock<'g, 'a> {
    guard: &'g mut WriteGuard<'a, MmuState>,
    stats: &'g Stats,
    /// The times the zap dropped the lock.
    yields: u64,
}

impl<'g, 'a> SpaceLock<'g, 'a> {
    fn new(guard: &'g mut WriteGuard<'a, MmuState>, stats: &'g Stats) -> Self {
        SpaceLock {
            guard,
            stats,
            yields: 0,
        }
    }
}

impl ZapLock for SpaceLock<'_, '_> {
    type Mmu = Pgt;

    fn mmu(&mut self) -> Option<&mut Pgt> {
        self.guard.mmu.as_mut()
    }

    fn resched(&mut self) {
        self.stats.zap_yields.inc();
        self.yields += 1;
        self.guard.resched();
    }
}

impl Space {
    /// Creates a space for the calling task's mm and subscribes to it.
    /// Its tables may hold at most `max_table_pages` pages.
    pub(crate) fn create(
        mm: &MmWithUser,
        aging_locked: bool,
        max_table_pages: u64,
        gpc_any_invalidation: bool,
        map_writable_on_read: bool,
        fault_around: u32,
    ) -> Result<Arc<Self>> {
        let gpc_policy = if gpc_any_invalidation {
            Policy::AnyInvalidation
        } else {
            Policy::Range
        };
        let memslots = RcuPtr::new(prim::try_box_sleepable(SlotSet::new())?);
        let inval = Invalidations::new()?;
        let space = Arc::pin_init(
            try_pin_init!(Self {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                debugfs <- new_mutex!(None, "secmmu_debugfs"),
                config <- new_mutex!(None, "secmmu_config"),
                mmu <- new_rwlock!(
                    MmuState {
                        mmu: None,
                        inval,
                    },
                    "secmmu_mmu_lock"
                ),
                memslots,
                retired <- new_mutex!(KVec::new(), "secmmu_retired_memslots"),
                aging_locked,
                map_writable_on_read,
                fault_around: AtomicU32::new(fault::around_pages(fault_around)),
                max_table_pages,
                ad_enabled: AtomicBool::new(true),
                format: AtomicU32::new(0),
                vcpu_modes: [const { VcpuMode::new() }; uapi::MAX_VCPUS],
                vcpu_ids: AtomicU64::new(0),
                dirty_rings <- new_mutex!([const { None }; uapi::MAX_VCPUS], "secmmu_dirty_rings"),
                released: AtomicBool::new(false),
                stats: Stats::default(),
                vcpu_stats <- new_mutex!(
                    VcpuStatsSet {
                        live: [const { None }; uapi::MAX_VCPUS],
                        exited: VcpuTotals::default(),
                    },
                    "secmmu_vcpu_stats"
                ),
                gpcs <- GpcSet::new(gpc_policy),
                // SAFETY: Last: callbacks may run from here on, and every
                // other field is initialized.
                notifier <- unsafe { MmuNotifier::register(mm) },
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        Ok(space)
    }

    /// Checks that an ioctl may use this space: it must come from the
    /// creator's mm (a forked child or a process the fd was passed to gets
    /// `EIO`, like KVM), and that mm must still have its address space.
    pub(crate) fn check_caller(&self) -> Result {
        let task = kernel::current!();
        let Some(mm) = task.mm() else {
            return Err(EIO);
        };
        if mm.as_raw() != self.notifier.mm().as_raw() {
            return Err(EIO);
        }
        self.check_alive()
    }

    /// Gives the space its debugfs directory, named for the task `pid`.
    pub(crate) fn add_debugfs(self: &Arc<Self>, pid: i32) -> Result {
        let dir = debugfs::space_dir(self, pid)?;
        *self.debugfs.lock() = dir;
        Ok(())
    }

    /// Removes the space's debugfs directory, once its file is closed:
    /// waits for the directory's readers, and drops its reference.
    pub(crate) fn remove_debugfs(&self) {
        let dir = self.debugfs.lock().take();
        drop(dir);
    }

    /// Whether a read fault may map writable a page the primary already
    /// maps writable (module parameter `map_writable_on_read`).
    pub(crate) fn map_writable_on_read(&self) -> bool {
        self.map_writable_on_read
    }

    /// The pages a 4K fault of a page of `slot` may map around its own
    /// ([`Fault::around()`](crate::mmu::fault::Fault::around)): 1 (none)
    /// unless fault-around is on, the walkers keep accessed bits (without,
    /// pages mapped ahead of any access would look used to aging, as KVM's
    /// `direct_pte_prefetch()` reasons), and the slot is writable and does
    /// not log dirty pages (neighbours are mapped writable, KVM's
    /// `gfn_to_memslot_dirty_bitmap()`).
    pub(crate) fn fault_around(&self, slot: &Slot) -> u64 {
        let pages = self.fault_around.load(Ordering::Relaxed);
        if pages > 1 && self.ad_enabled() && !slot.readonly() && !slot.logs_dirty() {
            pages.into()
        } else {
            1
        }
    }

    /// Whether the space's tables keep rmaps (x86).
    pub(crate) fn has_rmaps(&self) -> bool {
        Kind::from_uapi(self.format.load(Ordering::Acquire)) == Some(Kind::X86)
    }

    /// The rmaps of every memslot now (x86), by level (4K, 2M, 1G) and by
    /// log2 of their length (bucket 0: empty; KVM's `mmu_rmaps_stat`):
    /// walked without the MMU lock, each rmap under its bit lock taken
    /// read-only, [`RMAPS_STAT_BATCH`] rmaps per preemption-off stretch,
    /// rescheduling between them. Slots are taken in id order, each looked
    /// up again at each batch: one deleted meanwhile ends early. `EINTR`
    /// on a signal.
    pub(crate) fn rmaps_stat(&self) -> Result<[[u64; stats::RMAP_CHAIN_BUCKETS]; 3]> {
        let mut hist = [[0u64; stats::RMAP_CHAIN_BUCKETS]; 3];
        let mut last: Option<u32> = None;
        loop {
            let next = {
                let preempt = PreemptGuard::new();
                let rcu: NoPreempt<'_> = preempt.proof().into();
                self.memslots(&rcu)
                    .iter()
                    .map(|e| e.slot.id)
                    .filter(|&id| last.is_none_or(|l| id > l))
                    .min()
            };
            let Some(id) = next else {
                return Ok(hist);
            };
            last = Some(id);
            for (level, counts) in Level::MAPPABLE.iter().zip(hist.iter_mut()) {
                let mut from = Some(0);
                while let Some(at) = from {
                    if kernel::current!().signal_pending() {
                        return Err(EINTR);
                    }
                    from = {
                        let preempt = PreemptGuard::new();
                        let rcu: NoPreempt<'_> = preempt.proof().into();
                        self.memslots(&rcu).by_id(id).and_then(|slot| {
                            format::rmap_chain_lengths(
                                slot,
                                *level,
                                at,
                                RMAPS_STAT_BATCH,
                                &rcu,
                                counts,
                            )
                        })
                    };
                    sched::cond_resched();
                }
            }
        }
    }

    /// `EIO` once `release()` ran.
    pub(crate) fn check_alive(&self) -> Result {
        // Acquire pairs with the release store in `release()`.
        if self.released.load(Ordering::Acquire) {
            return Err(EIO);
        }
        Ok(())
    }

    /// Whether the space's walkers keep accessed/dirty state in the
    /// entries (true until SECMMU_CONFIGURE says otherwise: nothing is
    /// mapped before it). Without it, x86 ages by access tracking and
    /// arm64 by access-flag faults.
    pub(crate) fn ad_enabled(&self) -> bool {
        self.ad_enabled.load(Ordering::Relaxed)
    }

    /// The configuration, once SECMMU_CONFIGURE succeeded.
    pub(crate) fn config(&self) -> Option<Config> {
        *self.config.lock()
    }

    /// SECMMU_CONFIGURE.
    pub(crate) fn configure(&self, cfg: &uapi::secmmu_config) -> Result {
        uapi::check_zero(&cfg.reserved)?;
        if cfg.flags & !uapi::CFG_FLAGS != 0 {
            return Err(EINVAL);
        }
        if cfg.nr_roots == 0 || cfg.nr_roots > uapi::MAX_ROOTS || cfg.pad != 0 {
            return Err(EINVAL);
        }
        let ring_entries = match cfg.dirty_ring_size {
            0 => 0,
            size => dirty_ring::ring_entries(size, PAGE_SIZE as u32).map_err(|e| match e {
                RingSizeError::Invalid => EINVAL,
                RingSizeError::TooBig => E2BIG,
            })?,
        };
        // As KVM_DIRTY_LOG_INITIALLY_SET, only with manual protection.
        let manual_protect = cfg.flags & uapi::CFG_DIRTY_LOG_MANUAL_PROTECT != 0;
        let initially_set = cfg.flags & uapi::CFG_DIRTY_LOG_INITIALLY_SET != 0;
        if initially_set && !manual_protect {
            return Err(EINVAL);
        }
        let kind = Kind::from_uapi(cfg.format).ok_or(EINVAL)?;
        let ia_bits = kind.ia_bits(cfg.ia_bits).ok_or(EINVAL)?;
        let mut config = self.config.lock();
        if config.is_some() {
            return Err(EBUSY);
        }
        let ad_enabled = cfg.flags & uapi::CFG_NO_AD == 0;
        let nr_roots = cfg.nr_roots as usize;
        // Allocates the roots: may sleep, so before the MMU lock.
        let mut mmu = kind.new_tables(nr_roots, ia_bits, ad_enabled)?;
        mmu.set_table_limit(self.max_table_pages);
        let tracking = if cfg.flags & uapi::CFG_DIRTY_LOG_DIRTY_BIT == 0 {
            Tracking::WriteProtect
        } else if mmu.set_hw_dirty() {
            Tracking::DirtyBit
        } else {
            // As PML needs EPT A/D bits: no dirty bit without A/D.
            return Err(EINVAL);
        };
        self.ad_enabled.store(ad_enabled, Ordering::Relaxed);
        if cfg.flags & uapi::CFG_NO_FAULT_AROUND != 0 {
            self.fault_around.store(1, Ordering::Relaxed);
        }
        self.mmu.write().mmu = Some(mmu);
        // Release: an ager that sees the format sees the tables published
        // (it takes the MMU lock anyway, which orders it too).
        self.format.store(cfg.format, Ordering::Release);
        *config = Some(Config {
            format: cfg.format,
            nr_roots: cfg.nr_roots,
            ia_bits,
            manual_protect,
            initially_set,
            eager_split: cfg.flags & uapi::CFG_DIRTY_LOG_EAGER_SPLIT != 0,
            tracking,
            ring_entries,
        });
        Ok(())
    }

    /// SECMMU_SET_MEMSLOT.
    pub(crate) fn set_memslot(&self, req: &uapi::secmmu_memslot) -> Result {
        uapi::check_zero(&req.reserved)?;
        let config = self.config.lock();
        let Some(cfg) = *config else {
            return Err(EINVAL);
        };
        if req.memory_size == 0 {
            // A deletion names a slot and nothing else; unknown flags are
            // refused here as for a creation.
            if req.flags & !crate::mmu::memslot::MEM_FLAGS != 0 {
                return Err(EINVAL);
            }
            return self.delete_memslot(&config, req.slot);
        }
        let limits = SlotLimits {
            gpa_bits: cfg.ia_bits,
            user_end: mm::task_size() as u64,
        };
        let slot = Slot::validate(
            &SlotRequest {
                id: req.slot,
                flags: req.flags,
                guest_phys_addr: req.guest_phys_addr,
                memory_size: req.memory_size,
                userspace_addr: req.userspace_addr,
            },
            &limits,
        )
        .map_err(slot_errno)?;
        let current = self.memslots_of_config(&config);
        if let Some(old) = current.by_id(slot.id) {
            // A flags-only change (KVM_MR_FLAGS_ONLY), or nothing to do.
            if !SlotSet::flags_only_change(old, &slot).map_err(slot_errno)? {
                return Ok(());
            }
            return self.set_dirty_logging(&config, &cfg, slot.id, slot.flags);
        }
        // Check before allocating the rmaps.
        current.check_insert(&slot).map_err(slot_errno)?;
        // The format's share of the slot (x86: its rmaps) and the new set,
        // made before the lock: they may sleep. A failure leaves the
        // current set as it is.
        let kind = Kind::from_uapi(cfg.format).ok_or(EINVAL)?;
        let mut data = kind.prepare_slot(&slot)?;
        if slot.logs_dirty() {
            // Created logging: nothing is mapped yet, so nothing to protect.
            let log = DirtyBitmap::new(slot.npages, cfg.initially_set)?;
            data = data.with_dirty(Some(prim::try_arc_sleepable(log)?));
        }
        let new = current.inserted(slot, data).map_err(slot_errno)?;
        let new = prim::try_box_sleepable(new)?;
        let old = self.publish_memslots(new);
        self.retire_memslots(old);
        drop(config);
        Ok(())
    }

    /// Deletes a memslot: zaps its mappings in every root, flushes, and
    /// retires the sets that held it (with its rmaps) after dropping the
    /// lock.
    ///
    /// The slot stays in the set, marked invalid, until its zap is done,
    /// as KVM keeps a `KVM_MEMSLOT_INVALID` slot visible: the zap yields
    /// the lock, and an `invalidate_range_start()` that runs meanwhile must
    /// still find the slot and zap its range, or it would return with the
    /// slot's mappings of pages the primary MMU then frees. Faults no longer
    /// find the slot from the moment it is marked.
    ///
    /// Both sets are made before the lock is taken: a failed allocation
    /// leaves the current set as it is (`ENOMEM`), and nothing can fail
    /// once the zap has begun.
    fn delete_memslot(&self, config: &MutexGuard<'_, Option<Config>>, id: u32) -> Result {
        let current = self.memslots_of_config(config);
        let (invalid, slot) = current.invalidated(id).map_err(slot_errno)?;
        let (removed, _) = invalid.removed(id).map_err(slot_errno)?;
        let invalid = prim::try_box_sleepable(invalid)?;
        let removed = prim::try_box_sleepable(removed)?;
        let mut guard = self.mmu.write();
        let before = self.swap_memslots(&guard, invalid);
        let mut zapped = self.zap(true);
        self.zap_gfns(&mut guard, &mut zapped, id, slot.base_gfn, slot.end_gfn());
        self.flush_and_free(&mut guard, &mut zapped);
        {
            // SPTEs left in the slot's rmaps (a bug) would escape later
            // zaps once the slot is gone.
            let preempt = PreemptGuard::new();
            let rcu: NoPreempt<'_> = preempt.proof().into();
            let left = self.memslots(&rcu).by_id(id).map_or(0, format::slot_sptes);
            kernel::warn_on!(left != 0);
        }
        let during = self.swap_memslots(&guard, removed);
        drop(guard);
        self.retire_memslots(before);
        self.retire_memslots(during);
        self.stats.slot_zaps.inc();
        self.count_zapped(&zapped);
        Ok(())
    }

    /// The memslot set, for a reader in an RCU read side (`rcu`; a holder
    /// of the MMU lock, either side, is in one, and reads the set that stays
    /// current until it drops the lock). Lockless agers read it so, as KVM's
    /// `kvm_memslots()` under SRCU.
    pub(crate) fn memslots<'a>(&'a self, rcu: &'a NoPreempt<'_>) -> &'a SlotSet {
        self.memslots.read(rcu)
    }

    /// The memslot set, for the holder of `config`, which every change of
    /// the set holds (KVM's `slots_lock`): it stays current, and allocated,
    /// for as long as `config` is held, even across sleeps.
    fn memslots_of_config<'a>(
        &'a self,
        _config: &'a MutexGuard<'_, Option<Config>>,
    ) -> &'a SlotSet {
        // SAFETY: Sets are replaced and retired only with `config` held,
        // which the caller holds for as long as the reference lives.
        unsafe { self.memslots.get_unchecked() }
    }

    /// Publishes `new` as the memslot set under the MMU lock held for write
    /// (KVM's `kvm_swap_active_memslots()`): holders of the lock see one
    /// set, and faults that resolved their slot in the old one retry (the
    /// generation moved). Returns the old set, for [`Self::retire_memslots()`].
    /// Called with `config` held.
    fn publish_memslots(&self, new: prim::PBox<SlotSet>) -> Unpublished<SlotSet> {
        let guard = self.mmu.write();
        self.swap_memslots(&guard, new)
    }

    /// Makes `new` the current memslot set, with the MMU lock held for
    /// write (`_guard`), and tells the guest page caches its generation.
    fn swap_memslots(
        &self,
        _guard: &WriteGuard<'_, MmuState>,
        new: prim::PBox<SlotSet>,
    ) -> Unpublished<SlotSet> {
        self.gpcs.memslots_changed(new.generation());
        self.memslots.replace(new)
    }

    /// SECMMU_SET_CLOCK_PAGE: starts the clock at a guest address, or stops
    /// it.
    pub(crate) fn set_clock_page(&self, req: &uapi::secmmu_clock_setup) -> Result {
        uapi::check_zero(&req.reserved)?;
        if req.flags & !uapi::CLOCK_PAGE_ENABLE != 0 || req.pad != 0 {
            return Err(EINVAL);
        }
        let _config = self.config.lock();
        if req.flags & uapi::CLOCK_PAGE_ENABLE == 0 {
            if req.gpa != 0 || req.period_ns != 0 {
                return Err(EINVAL);
            }
            self.gpcs.stop_clock();
            return Ok(());
        }
        let len = size_of::<uapi::secmmu_clock_page>() as u64;
        if req.gpa & 7 != 0 || req.gpa >= 1 << 52 || (req.gpa & 0xfff) + len > 4096 {
            return Err(EINVAL);
        }
        if !(uapi::CLOCK_PERIOD_MIN..=uapi::CLOCK_PERIOD_MAX).contains(&req.period_ns) {
            return Err(EINVAL);
        }
        let period = kernel::time::Delta::from_nanos(req.period_ns as i64);
        // Clock changes are serialized by `config`, held.
        self.gpcs.start_clock(self, req.gpa, period)
    }

    /// Takes the lowest free vCPU id, for a vCPU with dirty ring `ring` if
    /// the space has rings, and counters `stats`, which count in the
    /// space's totals from now on; `ENOSPC` if all `SECMMU_MAX_VCPUS`
    /// exist. Give it back with [`Self::put_vcpu_id`].
    pub(crate) fn get_vcpu_id(
        &self,
        ring: Option<Arc<VcpuRing>>,
        stats: Arc<VcpuStats>,
    ) -> Result<usize> {
        let _config = self.config.lock();
        let ids = self.vcpu_ids.load(Ordering::Relaxed);
        let idx = (!ids).trailing_zeros() as usize;
        if idx >= uapi::MAX_VCPUS {
            return Err(ENOSPC);
        }
        self.dirty_rings.lock()[idx] = ring;
        self.vcpu_stats.lock().live[idx] = Some(stats);
        // Release: a flusher that sees the id sees the mode as its last
        // user left it (out of guest mode).
        self.vcpu_ids.fetch_or(1 << idx, Ordering::Release);
        Ok(idx)
    }

    /// Gives back vCPU id `idx`: its vCPU is gone, or was never made. The
    /// vCPU is out of guest mode for good, so flushers may skip it.
    pub(crate) fn put_vcpu_id(&self, idx: usize) {
        // The next vCPU with this id starts without a run page, or the ring.
        self.gpcs.deactivate(idx);
        self.dirty_rings.lock()[idx] = None;
        // The vCPU is gone, so its counters are final: fold them into the
        // space's sum of exited vCPUs, under the same lock as the move.
        let mut set = self.vcpu_stats.lock();
        if let Some(gone) = set.live[idx].take() {
            set.exited.add(&gone.snapshot());
        }
        drop(set);
        self.vcpu_ids.fetch_and(!(1 << idx), Ordering::Release);
    }

    /// The guest-mode state of vCPU `idx`.
    pub(crate) fn vcpu_mode(&self, idx: usize) -> &VcpuMode {
        &self.vcpu_modes[idx]
    }

    /// Flushes every vCPU's software TLB and waits until none can use a
    /// translation from before the call (KVM's `kvm_flush_remote_tlbs()`;
    /// "Translations cached outside the tables" in
    /// Documentation/secmmu-protocols.rst).
    pub(crate) fn flush_remote_tlbs(&self) {
        let mut ids = self.vcpu_ids.load(Ordering::Acquire);
        let vcpus = ids.count_ones();
        while ids != 0 {
            self.vcpu_modes[ids.trailing_zeros() as usize].request_flush();
            ids &= ids - 1;
        }
        self.stats.tlb_flushes.inc();
        trace::tlb_flush(self.id, vcpus, false);
    }

    /// A zap of this space, which yields only if `may_block`.
    fn zap(&self, may_block: bool) -> Zap<SpaceYield<'_>> {
        Zap::new(SpaceYield {
            space: self,
            may_block,
            asked: 0,
        })
    }

    /// Zaps the gfns `[start, end)` of slot `id` in every root, yielding the
    /// MMU lock when `z` may block and someone needs the CPU or the lock
    /// (the core's zap driver, `mmu/zap.rs`, flushes what it zapped and
    /// frees what it unlinked before every yield). What it zapped since is
    /// left in `z` for [`Self::flush_and_free()`], before the caller drops
    /// the lock for good ("TLB flush before dropping the MMU lock" in
    /// Documentation/secmmu-protocols.rst).
    fn zap_gfns(
        &self,
        guard: &mut WriteGuard<'_, MmuState>,
        z: &mut Zap<SpaceYield<'_>>,
        id: u32,
        start: Gfn,
        end: Gfn,
    ) {
        let mut lock = SpaceLock::new(guard, &self.stats);
        let before = z.zapped;
        // The slot is looked up in the set current under the lock, again
        // after every yield: a slot deleted meanwhile was zapped whole.
        format::zap_gfn_range(&mut lock, self, z, id, start, end);
        trace::zap(self.id, id, start, end, z.zapped - before, lock.yields);
    }

    /// Ends the zaps of `z`: flushes the TLBs if anything was zapped or
    /// unlinked since the last flush, counting an elided flush otherwise
    /// (nothing valid was removed, as in "Break-before-make"); then frees
    /// the tables the zaps unlinked, which only that flush made sure no vCPU
    /// walks any more ("TLB flush before freeing tables" in
    /// Documentation/secmmu-protocols.rst).
    fn flush_and_free(&self, guard: &mut WriteGuard<'_, MmuState>, z: &mut Zap<SpaceYield<'_>>) {
        z.flush_and_free(&mut SpaceLock::new(guard, &self.stats));
    }

    /// Adds what the zaps of `z` did to the statistics: one zap, of
    /// `z.zapped` leaves, in the histogram of zap sizes.
    fn count_zapped<Y>(&self, z: &Zap<Y>) {
        self.stats.zap_batch.record(z.zapped);
        self.stats.sptes_zapped.add(z.zapped);
        self.stats.dirty_pages.add(z.dirty);
    }

    /// Fills `SECMMU_GET_GPC_STATS`'s answer.
    pub(crate) fn gpc_stats(&self) -> uapi::secmmu_gpc_stats {
        let s = &self.gpcs.stats;
        uapi::secmmu_gpc_stats {
            refreshes: s.refreshes.get(),
            retries_overlap: s.retries_overlap.get(),
            retries_memslots: s.retries_memslots.get(),
            retries_unrelated: s.retries_unrelated.get(),
            invalidations: s.invalidations.get(),
            run_page_updates: s.run_page_updates.get(),
            run_page_errors: s.run_page_errors.get(),
            clock_updates: s.clock_updates.get(),
            clock_misses: s.clock_misses.get(),
            reserved: [0; 7],
        }
    }

    /// The totals of the vCPUs' counters: those of the vCPUs gone, and of
    /// the live ones now (see [`VcpuStatsSet`]).
    pub(crate) fn vcpu_totals(&self) -> VcpuTotals {
        let set = self.vcpu_stats.lock();
        let mut t = set.exited;
        for v in set.live.iter().flatten() {
            t.add(&v.snapshot());
        }
        t
    }

    /// Reads the space's statistics, in [`stats::SPACE_STATS`]' order,
    /// into `out`: the cumulative ones the space's counters plus its
    /// vCPUs' totals, the instant ones from the tables now.
    pub(crate) fn stats_values(&self, out: &mut [u64]) {
        let vcpus = self.vcpu_totals();
        let (table_pages, leaves) = {
            let state = self.mmu.read();
            state
                .mmu
                .as_ref()
                .map_or((0, [0; 3]), |m| (m.table_pages(), m.leaves_by_level()))
        };
        let view = SpaceView {
            stats: &self.stats,
            vcpus: &vcpus,
            table_pages,
            module_table_pages: kpages::table_pages_now(),
            leaves,
        };
        stats::space_values(&view, out);
    }

    /// Fills `SECMMU_GET_STATS`'s answer: the space's counters plus the
    /// totals of its vCPUs, live and gone, as the stats file reports them.
    pub(crate) fn stats(&self) -> uapi::secmmu_stats {
        let s = &self.stats;
        let v = self.vcpu_totals();
        uapi::secmmu_stats {
            invalidations: s.invalidations.get(),
            invalidations_nonblock: s.invalidations_nonblock.get(),
            invalidated_pages: s.invalidated_pages.get(),
            faults: v.faults,
            fault_retries: v.fault_retries,
            memory_faults: v.memory_faults,
            sptes_zapped: s.sptes_zapped.get(),
            dirty_pages: s.dirty_pages.get(),
            zap_yields: s.zap_yields.get(),
            tlb_flushes: s.tlb_flushes.get(),
            tlb_flushes_elided: s.tlb_flushes_elided.get(),
            rmap_max_chain: v.rmap_max_chain,
            table_pages: self.mmu.read().mmu.as_ref().map_or(0, |m| m.table_pages()),
            fault_eagain: v.fault_eagain,
            access_flag_faults: v.access_flag_faults,
            bbm: v.bbm,
            module_table_pages: kpages::table_pages_now(),
            mappings_4k: v.mappings.0[0],
            mappings_2m: v.mappings.0[1],
            mappings_1g: v.mappings.0[2],
            splits: v.splits,
            collapses: v.collapses,
            audits: s.audits.get(),
            audit_mismatches: s.audit_mismatches.get(),
            slot_zaps: s.slot_zaps.get(),
            releases: s.releases.get(),
            aging_calls: s.aging_calls.get(),
            aging_young: s.aging_young.get(),
            aging_lockless: s.aging_lockless.get(),
            aging_cleared: s.aging_cleared.get(),
            rmap_contention: s.rmap_contention.get(),
            aging_lost_races: s.aging_lost_races.get(),
            access_restores: v.access_restores,
            ..Default::default()
        }
    }

    /// SECMMU_SNAPSHOT.
    pub(crate) fn snapshot(&self, req: &uapi::secmmu_snapshot) -> Result {
        uapi::check_zero(&req.reserved)?;
        let config = self.config().ok_or(EINVAL)?;
        if req.flags != 0 || req.root >= config.nr_roots || req.gpa & 0xfff != 0 {
            return Err(EINVAL);
        }
        if req.npages == 0 || req.npages > uapi::SNAPSHOT_MAX {
            return Err(EINVAL);
        }
        let first = Gfn::from_gpa(req.gpa);
        first
            .raw()
            .checked_add(req.npages)
            .filter(|&e| e <= 1 << 36)
            .ok_or(EINVAL)?;
        let mut buf = KVec::with_capacity(CHUNK, GFP_KERNEL)?;
        let mut writer = kernel::uaccess::UserSlice::new(
            kernel::uaccess::UserPtr::from_addr(req.buf as usize),
            req.npages as usize,
        )
        .writer();
        const CHUNK: usize = 4096;
        let mut done = 0u64;
        while done < req.npages {
            let n = (req.npages - done).min(CHUNK as u64);
            buf.clear();
            {
                let state = self.mmu.read();
                let mmu = state.mmu.as_ref().ok_or(EINVAL)?;
                for i in done..done + n {
                    buf.push(mmu.snapshot(req.root as usize, first + i), GFP_ATOMIC)?;
                }
            }
            writer.write_slice(&buf)?;
            done += n;
        }
        Ok(())
    }
}

/// Pages SECMMU_AUDIT checks under one hold of the MMU lock.
const AUDIT_BATCH: u64 = 4096;

/// Suspect pages SECMMU_AUDIT collects under one hold of the MMU lock
/// before it drops the lock to confirm them.
const AUDIT_SUSPECTS: usize = 16;

/// What SECMMU_AUDIT found so far.
#[derive(Default)]
struct Audit {
    leaves: u64,
    mismatches: u64,
    skipped: u64,
    first: Option<(u32, Gfn)>,
    /// Pages that looked incoherent to the lockless look-up, to confirm
    /// ([`Space::audit_confirm()`]) once the MMU lock is dropped.
    suspects: [Suspect; AUDIT_SUSPECTS],
    nr_suspects: usize,
}

/// A page of a leaf that did not match the primary MMU's lockless look-up.
#[derive(Clone, Copy, Default)]
struct Suspect {
    root: u32,
    gfn: Gfn,
    /// What the leaf maps the gfn to, and whether writably.
    pfn: Pfn,
    writable: bool,
    /// The user address the gfn's memslot gives.
    hva: Hva,
    /// The invalidation sequence when the leaf was looked at.
    seq: u64,
}

impl Audit {
    fn mismatch(&mut self, root: u32, gfn: Gfn) {
        self.mismatches += 1;
        self.first.get_or_insert((root, gfn));
    }
}

impl Space {
    /// SECMMU_AUDIT: checks every leaf of every root against the primary
    /// MMU (see Documentation/secmmu.rst, "Coherence audit"). In batches
    /// under the MMU lock for write, so that no fault or ager changes a
    /// leaf under the check, and no invalidation starts or ends during a
    /// batch: a leaf is either checked against a primary MMU that has not
    /// been told to drop it, or covered by an invalidation in progress.
    /// What the lockless look-up finds incoherent is confirmed under the
    /// primary's page-table lock before it counts.
    pub(crate) fn audit(&self, req: &mut uapi::secmmu_audit) -> Result {
        if req.flags != 0 || req.pad != 0 || req.pad2 != 0 || req.reserved != 0 {
            return Err(EINVAL);
        }
        let cfg = self.config().ok_or(EINVAL)?;
        // The caller's mm is the space's (`check_caller()`): its page
        // tables are alive while it runs.
        let task = kernel::current!();
        let mm = task.mm().ok_or(EIO)?;
        if mm.as_raw() != self.notifier.mm().as_raw() {
            return Err(EIO);
        }
        let mut a = Audit::default();
        for root in 0..cfg.nr_roots {
            let mut gfn = Gfn::new(0);
            loop {
                if kernel::current!().signal_pending() {
                    return Err(EINTR);
                }
                let state = self.mmu.write();
                let mmu = state.mmu.as_ref().ok_or(EINVAL)?;
                let preempt = PreemptGuard::new();
                let rcu: NoPreempt<'_> = preempt.proof().into();
                let slots = self.memslots(&rcu);
                let next = self.audit_batch(&state, slots, mm, mmu, root, gfn, &mut a);
                drop(preempt);
                drop(state);
                // No lock is held.
                self.audit_confirm(&mut a);
                let Some(next) = next else {
                    break;
                };
                gfn = next;
                sched::cond_resched();
            }
        }
        let pages = {
            let state = self.mmu.read();
            state.mmu.as_ref().map_or([0; 3], |m| m.leaves_by_level())
        };
        self.stats.audits.inc();
        self.stats.audit_mismatches.add(a.mismatches);
        // A debug kernel makes an incoherent mapping loud, unless a test
        // asked for one.
        if cfg!(CONFIG_DEBUG_VM) && crate::testhooks::skip_zap() == 0 {
            kernel::warn_on!(a.mismatches != 0);
        }
        *req = uapi::secmmu_audit {
            leaves: a.leaves,
            mismatches: a.mismatches,
            skipped: a.skipped,
            first_gpa: a.first.map_or(0, |(_, gfn)| gfn.to_gpa()),
            first_root: a.first.map_or(0, |(root, _)| root),
            pages_4k: pages[0],
            pages_2m: pages[1],
            pages_1g: pages[2],
            ..Default::default()
        };
        Ok(())
    }

    /// Audits the leaves of `root` from `gfn` on, about [`AUDIT_BATCH`]
    /// pages' worth, or until [`AUDIT_SUSPECTS`] pages are suspect; returns
    /// where to go on, or `None` at the end.
    #[allow(clippy::too_many_arguments)]
    fn audit_batch(
        &self,
        state: &MmuState,
        slots: &SlotSet,
        mm: &MmWithUser,
        mmu: &Pgt,
        root: u32,
        mut gfn: Gfn,
        a: &mut Audit,
    ) -> Option<Gfn> {
        let mut budget = AUDIT_BATCH;
        while budget > 0 && a.nr_suspects < AUDIT_SUSPECTS {
            let (base, t) = mmu.next_leaf(root as usize, gfn, Gfn::new(u64::MAX))?;
            let pages = t.level.pages();
            budget = budget.saturating_sub(pages.min(512));
            gfn = base + pages;
            a.leaves += 1;
            match self.audit_leaf(state, slots, mm, base, pages, t.pfn, t.writable) {
                LeafAudit::Coherent => {}
                LeafAudit::Stale => a.mismatch(root, base),
                LeafAudit::Suspect { gfn, hva } => {
                    a.suspects[a.nr_suspects] = Suspect {
                        root,
                        gfn,
                        pfn: t.pfn + (gfn - base),
                        writable: t.writable,
                        hva,
                        seq: state.inval.seq(),
                    };
                    a.nr_suspects += 1;
                }
                LeafAudit::Invalidating => a.skipped += 1,
            }
        }
        Some(gfn)
    }

    /// Checks each page of the leaf `[base, base + pages)` against the
    /// primary MMU's lockless look-up: it must map the page to `pfn + i`,
    /// writable if the leaf is.
    #[allow(clippy::too_many_arguments)]
    fn audit_leaf(
        &self,
        state: &MmuState,
        slots: &SlotSet,
        mm: &MmWithUser,
        base: Gfn,
        pages: u64,
        pfn: Pfn,
        writable: bool,
    ) -> LeafAudit {
        let mut i = 0;
        while i < pages {
            // A leaf outside every memslot is stale: the slot's deletion
            // should have zapped it.
            let Some(slot) = slots.lookup_any(base + i) else {
                return LeafAudit::Stale;
            };
            let hva = slot.gfn_to_hva(base + i);
            if state.inval.in_progress_overlaps(hva, hva.add_pages(1)) {
                return LeafAudit::Invalidating;
            }
            let suspect = LeafAudit::Suspect { gfn: base + i, hva };
            let Some(host) = mm::leaf(mm, hva.as_usize()) else {
                return suspect;
            };
            // The kernel's pfn, an unsigned long: as wide as a u64 on 64-bit.
            if Pfn::new(host.pfn as u64) != pfn + i || (writable && !host.writable) {
                return suspect;
            }
            // The rest of a huge host leaf maps on in order: skip it.
            let host_level = match host.level {
                LeafLevel::Pud => Level::L1G,
                LeafLevel::Pmd => Level::L2M,
                LeafLevel::Pte => Level::L4K,
            };
            let left_in_host = host_level.pages() - hva.page_offset_in(host_level);
            i += left_in_host.min(slot.end_gfn() - (base + i));
        }
        LeafAudit::Coherent
    }

    /// Confirms the suspects of `a` with the MMU lock dropped, and counts
    /// those that are real.
    ///
    /// The lockless look-up reads the primary's entries without their
    /// page-table lock, and the primary may clear and set an entry under
    /// that lock without telling MMU notifiers when the mapping does not
    /// change (arm64's `contpte_convert()` folds or unfolds a contiguous
    /// block that way): a lockless reader in that window sees nothing
    /// mapped. So each suspect is looked up again under the page-table
    /// lock ([`UserPageRef::get_mapped()`]), which cannot be taken under
    /// the MMU lock (aging callbacks take the MMU lock with a page-table
    /// lock held). It is a mismatch only if that look-up disagrees too,
    /// and then, under the MMU lock again, the leaf still maps the same
    /// page and no invalidation of the page began or ended since the first
    /// look: the primary changed nothing it had to tell us about, so the
    /// disagreement was there when the leaf was first checked.
    fn audit_confirm(&self, a: &mut Audit) {
        let suspects = a.suspects;
        for s in &suspects[..a.nr_suspects] {
            if let Ok(page) = UserPageRef::get_mapped(s.hva.as_usize(), s.writable) {
                if Pfn::new(page.pfn() as u64) == s.pfn {
                    continue;
                }
            }
            let state = self.mmu.write();
            let same_leaf = state.mmu.as_ref().is_some_and(|mmu| {
                mmu.next_leaf(s.root as usize, s.gfn, s.gfn + 1)
                    .is_some_and(|(base, t)| {
                        t.pfn + (s.gfn - base) == s.pfn && t.writable == s.writable
                    })
            });
            let quiet = !state.inval.changed_since(s.hva, s.hva.add_pages(1), s.seq);
            drop(state);
            if same_leaf && quiet {
                a.mismatch(s.root, s.gfn);
            } else {
                a.skipped += 1;
            }
        }
        a.nr_suspects = 0;
    }
}

/// What the audit of one leaf found.
enum LeafAudit {
    /// The primary maps every page of the leaf as the leaf does.
    Coherent,
    /// The leaf lies outside every memslot.
    Stale,
    /// The lockless look-up of the page at `gfn` (user address `hva`)
    /// disagrees with the leaf.
    Suspect { gfn: Gfn, hva: Hva },
    /// An invalidation in progress covers part of the leaf.
    Invalidating,
}

impl SpaceMmu for Space {
    fn mmu_lock(&self) -> &MmuLock<MmuState> {
        &self.mmu
    }

    fn slots<'a>(&'a self, rcu: &'a NoPreempt<'_>) -> &'a SlotSet {
        self.memslots(rcu)
    }

    fn ad_enabled(&self) -> bool {
        Space::ad_enabled(self)
    }

    fn aging_locked(&self) -> bool {
        Space::aging_locked(self)
    }

    fn flush_remote_tlbs(&self) {
        Space::flush_remote_tlbs(self)
    }
}

/// The errno of a refused memslot change.
fn slot_errno(e: SlotError) -> Error {
    match e {
        SlotError::Invalid => EINVAL,
        SlotError::Overlap => EEXIST,
        SlotError::Busy => EBUSY,
        SlotError::NotFound => ENOENT,
        SlotError::NoMemory => ENOMEM,
    }
}

#[vtable]
impl MmuNotifierOps for Space {
    fn release(&self) {
        // From here on every ioctl and fault fails with EIO and nothing may
        // touch the mm's pages: the address space is being torn down.
        self.released.store(true, Ordering::Release);
        self.stats.releases.inc();
        // No cache may map a page of the dying address space; refreshes
        // fail from now on (the caller's mm is not the space's any more).
        // The clock's timer goes first: it writes through its cache.
        self.gpcs.release();
        // Zap slot by slot, yielding like an invalidation: a space may map
        // many GiB in many roots, and `exit_mmap()` may sleep here (KVM's
        // `kvm_mmu_zap_all()` yields with `cond_resched_rwlock_write()`).
        let mut guard = self.mmu.write();
        let mut zapped = self.zap(true);
        let mut from = Gfn::new(0);
        // Every slot, whole: the whole user range.
        let (start, end) = (Hva::new(0), Hva::new(u64::MAX));
        while let Some((id, slot_end, first, last)) = self.next_gfn_range(start, end, from) {
            from = slot_end;
            self.zap_gfns(&mut guard, &mut zapped, id, first, last);
        }
        self.flush_and_free(&mut guard, &mut zapped);
        drop(guard);
        self.count_zapped(&zapped);
    }

    /// Never fails: the mm core takes `EAGAIN` only from a notifier without
    /// `invalidate_range_end()`, and a space needs its `end` (the retry
    /// state). A range that is not blockable is zapped without yielding.
    fn invalidate_range_start(&self, range: &Range) -> Result {
        let (start, end) = (Hva::from_usize(range.start()), Hva::from_usize(range.end()));
        let blockable = range.blockable();
        trace::invalidate_range_start(self.id, start, end, range.event().raw(), blockable);
        self.stats.invalidations.inc();
        if !blockable {
            self.stats.invalidations_nonblock.inc();
        }
        self.stats.invalidated_pages.add(end.pages_from(start));
        // First make every fault of the range retry, then remove the
        // mappings that exist (KVM's kvm_mmu_notifier_invalidate_range_start()
        // does the same): a fault that installed before `begin`
        // is zapped below, one that checks after it retries. Both under the
        // MMU lock for write: faults check under the read side at least.
        let mut guard = self.mmu.write();
        guard.inval.begin(start, end);
        // Caches of kernel-mapped guest pages go at the start too: from
        // here on the primary may free their pages ("Kernel-mapped guest
        // pages" in Documentation/secmmu-protocols.rst).
        self.gpcs.invalidate(start, end);
        // The slots this range backs, in guest-physical order, found again
        // after every slot's zap, since `zap_gfns` may yield the lock. A
        // slot created meanwhile maps nothing of the range (its faults
        // retry until `end`); a slot being deleted stays in the set, marked
        // invalid, until its own zap is done, so it is zapped here too.
        let mut zapped = self.zap(blockable);
        let mut from = Gfn::new(0);
        loop {
            let next = self.next_gfn_range(start, end, from);
            let Some((id, slot_end, gfn_start, gfn_end)) = next else {
                break;
            };
            from = slot_end;
            let skip = crate::testhooks::skip_zap();
            if skip == 0 {
                self.zap_gfns(&mut guard, &mut zapped, id, gfn_start, gfn_end);
                continue;
            }
            // Tests only: leave every gfn that is a multiple of `skip`
            // mapped, for SECMMU_AUDIT to find.
            let (mut gfn, gfn_end) = (gfn_start.raw(), gfn_end.raw());
            while gfn < gfn_end {
                let next = (gfn / skip + 1) * skip;
                let first = if gfn % skip == 0 { gfn + 1 } else { gfn };
                let last = next.min(gfn_end);
                if first < last {
                    let (first, last) = (Gfn::new(first), Gfn::new(last));
                    self.zap_gfns(&mut guard, &mut zapped, id, first, last);
                }
                gfn = next;
            }
        }
        self.flush_and_free(&mut guard, &mut zapped);
        drop(guard);
        self.count_zapped(&zapped);
        if !range.blockable() {
            crate::testhooks::count_nonblock_zapped(zapped.zapped);
        }
        Ok(())
    }

    fn invalidate_range_end(&self, range: &Range) {
        let (start, end) = (Hva::from_usize(range.start()), Hva::from_usize(range.end()));
        trace::invalidate_range_end(self.id, start, end);
        let balanced = self.mmu.write().inval.end();
        // An end without its start: the mm core broke the contract.
        kernel::warn_on!(!balanced);
    }

    fn clear_young(&self, start: usize, end: usize) -> bool {
        self.age(start, end, AgeOp::Clear)
    }

    fn clear_flush_young(&self, start: usize, end: usize) -> bool {
        self.age(start, end, AgeOp::ClearFlush)
    }

    fn test_young(&self, addr: usize) -> bool {
        self.age(addr, addr + kernel::page::PAGE_SIZE, AgeOp::Test)
    }
}

impl Space {
    /// SECMMU_TEST_YOUNG: what the mm core's `mmu_notifier_test_young()`
    /// would hear from this space for the page at `req.hva`: asks our
    /// notifier's `test_young` callback, which changes nothing ("Testing is
    /// read-only" in Documentation/secmmu-protocols.rst).
    pub(crate) fn test_young_ioctl(&self, req: &uapi::secmmu_test_young) -> Result<isize> {
        uapi::check_zero(&req.reserved)?;
        let user_end = mm::task_size() as u64;
        if req.flags != 0 || req.pad != 0 {
            return Err(EINVAL);
        }
        if req.hva & (kernel::page::PAGE_SIZE as u64 - 1) != 0 || req.hva >= user_end {
            return Err(EINVAL);
        }
        Ok(isize::from(self.notifier.call_test_young(req.hva as usize)))
    }
}

impl Space {
    /// Ages the host range `[start, end)` as the space's format does it
    /// ([`Format::age()`](crate::format::Format::age)): without the MMU
    /// lock where A/D bits allow, under it otherwise (see "Aging without
    /// the MMU lock" in Documentation/secmmu-protocols.rst).
    fn age(&self, start: usize, end: usize, op: AgeOp) -> bool {
        if self.released.load(Ordering::Acquire) {
            return false;
        }
        self.stats.aging_calls.inc();
        let (start, end) = (Hva::from_usize(start), Hva::from_usize(end));
        let r = Kind::from_uapi(self.format.load(Ordering::Acquire))
            .and_then(|kind| kind.age(self, start, end, op));
        let (young, lockless) = r.as_ref().map_or((false, false), |r| (r.young, r.lockless));
        match op {
            AgeOp::Test => trace::test_young(self.id, start, young, lockless),
            AgeOp::Clear => trace::age(self.id, start, end, false, young, lockless),
            AgeOp::ClearFlush => trace::age(self.id, start, end, true, young, lockless),
        }
        if let Some(r) = r {
            self.count_aging(&r);
        }
        young
    }

    /// Whether aging must take the MMU lock even where A/D bits allow
    /// lockless aging (module parameter `aging_locked`).
    pub(crate) fn aging_locked(&self) -> bool {
        self.aging_locked
    }

    fn count_aging(&self, r: &AgeResult) {
        let s = &self.stats;
        if r.lockless {
            s.aging_lockless.inc();
        }
        if r.young {
            s.aging_young.inc();
        }
        s.aging_cleared.add(r.cleared);
        s.rmap_contention.add(r.contended);
        s.aging_lost_races.add(r.lost_races);
        s.dirty_pages.add(r.dirty);
    }
}

impl Space {
    /// The next slot at or above gfn `from` that backs part of the user
    /// range `[start, end)`: its id, its end, and the gfns `[first, last)`
    /// that back the range ([`Memslots::next_gfn_range()`], KVM's
    /// `kvm_handle_hva_range()`), in the set current under the MMU lock,
    /// which the caller holds for write. Looked up again after every slot's
    /// zap, which may yield the lock: a slot created meanwhile maps nothing
    /// of an invalidated range (its faults retry until `end`); a slot being
    /// deleted stays in the set, marked invalid, until its own zap is done.
    ///
    /// [`Memslots::next_gfn_range()`]: crate::mmu::memslot::Memslots::next_gfn_range
    fn next_gfn_range(&self, start: Hva, end: Hva, from: Gfn) -> Option<(u32, Gfn, Gfn, Gfn)> {
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        let (slot, first, last) = self.memslots(&rcu).next_gfn_range(start, end, from)?;
        Some((slot.id, slot.end_gfn(), first, last))
    }

    /// Frees a replaced memslot set once no RCU reader can still see it:
    /// after a grace period (lockless agers read it with preemption off).
    /// A deleted slot's rmaps go with the last set that holds them.
    ///
    /// Not by waiting for one here: a grace period is tens of ms under
    /// load, and a VMM that creates and deletes slots in a loop would
    /// crawl. The sets wait in `retired` instead, and each change frees
    /// those whose grace period has ended since (the polled grace-period
    /// API); the drop frees the rest after `synchronize_rcu()`. Called with
    /// `config` held and no spinning lock.
    fn retire_memslots(&self, old: Unpublished<SlotSet>) {
        let state = GracePeriodState::get();
        let mut retired = self.retired.lock();
        let mut i = 0;
        while i < retired.len() {
            if !retired[i].1.completed() {
                i += 1;
                continue;
            }
            if let Ok((done, _)) = retired.remove(i) {
                // SAFETY: A grace period has passed since this set was
                // replaced: RCU readers cannot reach it any more.
                unsafe { done.free_after_grace_period() };
            }
        }
        // Room first: a failed push would drop the set.
        if retired.reserve(1, GFP_KERNEL_ACCOUNT).is_ok() {
            // Cannot fail: there is room.
            let _ = retired.push((old, state), GFP_KERNEL_ACCOUNT);
        } else {
            drop(retired);
            // Waits for every preempt-disabled (RCU) reader; may sleep, and
            // no spinlock is held here.
            rcu::synchronize_rcu();
            // SAFETY: A grace period has passed since the replacement.
            unsafe { old.free_after_grace_period() };
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Space {
    fn drop(self: Pin<&mut Self>) {
        let mut retired = self.retired.lock();
        if retired.is_empty() {
            return;
        }
        // Waits for every preempt-disabled (RCU) reader; may sleep (the last
        // reference goes from a file's release or a vCPU's, both process
        // context), and no spinlock is held.
        rcu::synchronize_rcu();
        while let Some((set, _)) = retired.pop() {
            // SAFETY: A grace period has passed since every replacement.
            unsafe { set.free_after_grace_period() };
        }
    }
}
