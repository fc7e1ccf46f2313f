// SPDX-License-Identifier: GPL-2.0

//! Kernel-mapped guest page caches (KVM's `gfn_to_pfn_cache`,
//! `virt/kvm/pfncache.c`): the kernel side of the state machine in
//! `mmu/pfncache.rs`.
//!
//! A space has one cache per vCPU id, for the vCPU's run page
//! (SECMMU_SET_RUN_PAGE), and one for its clock page (SECMMU_SET_CLOCK_PAGE),
//! which an hrtimer updates in hard IRQ context ([`Clock`], as KVM's Xen
//! timers and kvmclock write guest memory). Each cache's state is under a
//! raw spinlock taken with interrupts disabled (KVM's `gpc->lock`; raw, as
//! it must spin on `PREEMPT_RT` too), so that a check may come from any
//! context; a refresh runs in the space creator's process context, since it
//! resolves the page with get_user_pages in the current mm. The timer cannot
//! refresh: when the clock's cache is invalid it counts a miss and leaves
//! the refresh to the next vCPU exit ([`GpcSet::service()`], as KVM leaves
//! it to a vCPU request).
//!
//! Lock order: the MMU lock, then a cache's lock. `invalidate_range_start()`
//! calls [`GpcSet::invalidate()`] with the MMU lock held for write, after it
//! marked its range in progress; a refresh watches its page under the read
//! side ([`GpcSet::refresh()`]), and publishes it under the cache's lock
//! only, which the invalidation takes too. Why the invalidation must make
//! the cache invalid at its start, and why a refresh retries only for an
//! invalidation of its own page: "Kernel-mapped guest pages" in
//! Documentation/secmmu-protocols.rst.

use crate::{
    ext::{
        gup::UserPageRef,
        pfn,
        preempt::PreemptGuard,
        raw_spinlock::{new_raw_spinlock_irq, RawSpinLockIrq, RawSpinLockIrqGuard},
    },
    format::SpaceMmu,
    mmu::addr::{Gfn, Hva, Pfn},
    mmu::pfncache::{GpcState, InvalState, Mapping, Policy, Retry, Target},
    mmu::prim::NoPreempt,
    mmu::stats::Counter,
    uapi,
};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::{
    impl_has_hr_timer, new_mutex,
    prelude::*,
    sync::{Arc, ArcBorrow, Mutex},
    time::{
        hrtimer::{
            ArcHrTimerHandle, HrTimer, HrTimerCallback, HrTimerCallbackContext, HrTimerPointer,
            HrTimerRestart, RelativeHardMode,
        },
        Delta, Instant, Monotonic,
    },
};

/// The id of the clock page's cache: after the vCPUs'.
pub(crate) const CLOCK: usize = uapi::MAX_VCPUS;

/// Caches of a space: one per vCPU id, and the clock's.
const NR_CACHES: usize = uapi::MAX_VCPUS + 1;

/// Marks `dropped`, a page a writable cache stopped mapping, dirty.
///
/// The caller holds the cache's lock, under which the cache mapped the page
/// until now: no invalidation of its address ran since it was published,
/// so the primary MMU still maps it and it is allocated.
fn dirty(dropped: Option<Pfn>) {
    if let Some(p) = dropped {
        // SAFETY: Per the above: the page is allocated.
        unsafe { pfn::set_dirty(p.raw() as usize) };
    }
}

/// Marks the page of guest-physical address `gpa` dirty in the dirty log of
/// its slot, if that logs: a writable cache may have written it. With the
/// MMU lock held, either side.
fn mark_logged(space: &impl SpaceMmu, gpa: u64) {
    let preempt = PreemptGuard::new();
    let rcu: NoPreempt<'_> = preempt.proof().into();
    let gfn = Gfn::new(gpa >> 12);
    if let Some(slot) = space.slots(&rcu).lookup_any(gfn) {
        slot.mark_dirty(gfn);
    }
}

/// One cache.
#[pin_data]
pub(crate) struct Gpc {
    #[pin]
    state: RawSpinLockIrq<GpcState>,
}

impl Gpc {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            state <- new_raw_spinlock_irq!(GpcState::new(), "secmmu_gpc"),
        })
    }

    /// The cache's state, locked (IRQs off): any context.
    pub(crate) fn lock(&self) -> RawSpinLockIrqGuard<'_, GpcState> {
        self.state.lock()
    }
}

/// The caches of a space: by vCPU id, then the clock's ([`CLOCK`]).
#[pin_data(PinnedDrop)]
pub(crate) struct GpcSet {
    #[pin]
    caches: [Gpc; NR_CACHES],
    /// Bit `i % 64` of word `i / 64`: cache `i` is active. Set before an
    /// activation, cleared after a deactivation: an invalidation looks at
    /// every cache that may map a page. A refresh takes the MMU lock after
    /// the bit is set, so every invalidation that begins after the refresh
    /// started watching sees it.
    active: [AtomicU64; 2],
    /// Retry as KVM 7.3 does (module parameter `gpc_any_invalidation`).
    policy: Policy,
    /// The generation of the memslot set current now, for checks from
    /// contexts that cannot read the set (the timer): updated with the set,
    /// under the MMU lock held for write.
    generation: AtomicU64,
    /// The clock's cache was found invalid by its timer: the next vCPU exit
    /// refreshes it.
    clock_pending: AtomicBool,
    /// The space was released: its address space is going, and no
    /// invalidation will come any more ("Release and the dead address
    /// space" in Documentation/secmmu-protocols.rst). No cache may become
    /// valid again: a refresh checks this under the cache's lock, which
    /// [`GpcSet::release()`] takes after setting it.
    dead: AtomicBool,
    /// The clock's timer, while it runs: dropping the handle cancels the
    /// timer and waits for a callback in progress.
    #[pin]
    clock: Mutex<Option<ArcHrTimerHandle<Clock>>>,
    pub(crate) stats: GpcStats,
}

/// The counters of the caches (SECMMU_GET_GPC_STATS).
#[derive(Default)]
pub(crate) struct GpcStats {
    pub(crate) refreshes: Counter,
    pub(crate) retries_overlap: Counter,
    pub(crate) retries_memslots: Counter,
    pub(crate) retries_unrelated: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) run_page_updates: Counter,
    pub(crate) run_page_errors: Counter,
    pub(crate) clock_updates: Counter,
    pub(crate) clock_misses: Counter,
}

impl GpcSet {
    /// Inactive caches, refreshed under `policy`.
    pub(crate) fn new(policy: Policy) -> impl PinInit<Self> {
        pin_init!(Self {
            caches <- pin_init::pin_init_array_from_fn(|_| Gpc::new()),
            active: [AtomicU64::new(0), AtomicU64::new(0)],
            policy,
            generation: AtomicU64::new(0),
            clock_pending: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            clock <- new_mutex!(None, "secmmu_gpc_clock"),
            stats: GpcStats::default(),
        })
    }

    /// The memslot set of generation `generation` is current from now on.
    /// With the MMU lock held for write.
    pub(crate) fn memslots_changed(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// `release()` of the space: stops the clock and deactivates every
    /// cache, for good.
    pub(crate) fn release(&self) {
        self.dead.store(true, Ordering::Relaxed);
        self.stop_clock();
        for id in 0..NR_CACHES {
            self.deactivate(id);
        }
    }

    /// The word and bit of cache `id` in `active`.
    fn bit(&self, id: usize) -> (&AtomicU64, u64) {
        (&self.active[id / 64], 1 << (id % 64))
    }

    /// Activates cache `id` on `target` for `len` bytes (KVM's
    /// `kvm_gpc_activate()`); `EINVAL` if the range is not within a page.
    pub(crate) fn activate(&self, id: usize, target: Target, len: u64, writable: bool) -> Result {
        let (word, bit) = self.bit(id);
        word.fetch_or(bit, Ordering::Relaxed);
        let mut st = self.caches[id].lock();
        let dropped = st.activate(target, len, writable).map_err(|_| EINVAL)?;
        dirty(dropped);
        Ok(())
    }

    /// Deactivates cache `id` (KVM's `kvm_gpc_deactivate()`).
    pub(crate) fn deactivate(&self, id: usize) {
        {
            let mut st = self.caches[id].lock();
            dirty(st.deactivate());
        }
        let (word, bit) = self.bit(id);
        word.fetch_and(!bit, Ordering::Relaxed);
    }

    /// `invalidate_range_start()` of `[start, end)`, with the MMU lock held
    /// for write after the range was marked in progress: every active cache
    /// that maps a page of it becomes invalid (a writable one marks the page
    /// dirty), and every refresh watching one will start over.
    pub(crate) fn invalidate(&self, start: Hva, end: Hva) {
        for (w, word) in self.active.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let id = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let mut st = self.caches[id].lock();
                if let Some(dropped) = st.invalidate(start, end) {
                    dirty(dropped);
                    self.stats.invalidations.inc();
                }
            }
        }
    }

    /// Dirty logging: a harvest of the dirty log of the guest-physical
    /// range `[start, end)` (one slot's) reports dirty, through `mark`, the
    /// pages that writable caches have mapped since the last harvest: they
    /// may have been written without a fault. With the MMU lock held, either
    /// side (then no refresh commits meanwhile).
    pub(crate) fn harvest_logged(&self, start: u64, end: u64, mut mark: impl FnMut(u64)) {
        for gpc in &self.caches {
            let logged = gpc.lock().harvest_logged(start, end);
            if let Some(gpa) = logged {
                mark(gpa);
            }
        }
    }

    /// Refreshes cache `id` of `space` (KVM's `kvm_gpc_refresh()`), in the
    /// space creator's process context: resolves its target to a user page,
    /// watches that page, gets it with get_user_pages (which may sleep and
    /// may itself invalidate the page, e.g. to break copy-on-write), and
    /// publishes its kernel address unless an invalidation of the page raced
    /// it (then it starts over: the next get_user_pages finds the page the
    /// invalidation left). Keeps no page reference: the notifier keeps the
    /// page alive while the cache is valid.
    ///
    /// `EFAULT` if no memslot holds the target, or a writable cache's slot is
    /// read-only, or the page cannot be had; `EINVAL` if the cache is
    /// inactive; `EINTR` on a signal; `EAGAIN` if the cache was deactivated
    /// or activated anew meanwhile.
    pub(crate) fn refresh(&self, space: &impl SpaceMmu, id: usize) -> Result {
        let stats = &self.stats;
        let gpc = &self.caches[id];
        loop {
            let (target, writable, epoch) = gpc.lock().prepare().ok_or(EINVAL)?;
            // Resolve the target, with the memslot generation it holds in.
            let (uhva, generation) = {
                let preempt = PreemptGuard::new();
                let rcu: NoPreempt<'_> = preempt.proof().into();
                let slots = space.slots(&rcu);
                match target {
                    Target::Gpa(gpa) => {
                        let gfn = Gfn::new(gpa >> 12);
                        let slot = slots.lookup(gfn).ok_or(EFAULT)?;
                        if writable && slot.readonly() {
                            return Err(EFAULT);
                        }
                        (slot.gfn_to_hva(gfn), slots.generation())
                    }
                    Target::Hva(hva) => (Hva::new(hva & !0xfff), 0),
                }
            };
            let page_end = uhva.add_pages(1);
            // Watch the page, under the MMU lock: an invalidation either
            // began before (and is in progress, or over) or will see the
            // watch.
            let (refresh, seq) = {
                let guard = space.mmu_lock().read();
                let in_progress = guard.inval.in_progress_overlaps(uhva, page_end);
                let mut st = gpc.lock();
                let Some((r, dropped)) = st.refresh_begin(epoch, uhva, generation, in_progress)
                else {
                    // Deactivated, or activated anew, since `prepare()`.
                    return Err(EAGAIN);
                };
                dirty(dropped);
                (r, guard.inval.seq())
            };
            let page = UserPageRef::get_fast(uhva.as_usize(), refresh.writable).map_err(|e| {
                if e == EINTR || e == ERESTARTSYS {
                    EINTR
                } else if e == ENOMEM {
                    ENOMEM
                } else {
                    EFAULT
                }
            })?;
            // SAFETY: A page that get_user_pages returned is RAM with a
            // `struct page`, and 64-bit kernels have no highmem.
            let khva = unsafe { pfn::to_virt(page.pfn()) } as usize;
            let mapping = Mapping {
                pfn: Pfn::new(page.pfn() as u64),
                khva,
            };
            let committed = {
                let guard = space.mmu_lock().read();
                let inval = InvalState {
                    overlapping: guard.inval.in_progress_overlaps(uhva, page_end),
                    any: guard.inval.in_progress() || guard.inval.seq() != seq,
                };
                // The generation the checks compare: the set's, as it is
                // updated with the set under the write side, which the read
                // side held here excludes.
                let generation = self.generation.load(Ordering::Relaxed);
                let mut st = gpc.lock();
                // Under the cache's lock, which `release()` takes after it
                // set `dead`.
                if self.dead.load(Ordering::Relaxed) {
                    return Err(EIO);
                }
                let r = st.refresh_commit(&refresh, mapping, generation, inval, self.policy);
                let unlogged = if let Ok(dropped) = r {
                    dirty(dropped);
                    st.log_commit()
                } else {
                    None
                };
                drop(st);
                if let Some(gpa) = unlogged {
                    mark_logged(space, gpa);
                }
                r
            };
            // Like KVM: a page a writable cache maps is dirty from now on.
            if committed.is_ok() && refresh.writable {
                page.set_dirty();
            }
            drop(page);
            match committed {
                Ok(_) => {
                    stats.refreshes.inc();
                    return Ok(());
                }
                Err(Retry::Overlap) => stats.retries_overlap.inc(),
                Err(Retry::Memslots) => stats.retries_memslots.inc(),
                Err(Retry::Unrelated) => stats.retries_unrelated.inc(),
                Err(Retry::Moot) => return Err(EAGAIN),
            }
            // Start over through the exit point: an invalidation that never
            // ends must not keep the thread from a signal or the CPU.
            crate::fault::exit_point().map_err(|_| EINTR)?;
        }
    }

    /// Writes through cache `id` of `space`: runs `write` on the kernel
    /// address of its target, valid for `len` bytes, refreshing the cache as
    /// long as it is not valid (KVM's `kvm_gpc_check()` /
    /// `kvm_gpc_refresh()` loop). Process context of the space's creator.
    pub(crate) fn write_with(
        &self,
        space: &impl SpaceMmu,
        id: usize,
        len: u64,
        write: impl FnOnce(*mut u8),
    ) -> Result {
        let mut write = Some(write);
        loop {
            {
                let generation = self.generation.load(Ordering::Relaxed);
                let st = self.caches[id].lock();
                if let Some(khva) = st.check(generation, len) {
                    if let Some(w) = write.take() {
                        // The cache is valid and its lock held: no
                        // invalidation of the page can run until it drops.
                        w(khva as *mut u8);
                    }
                    return Ok(());
                }
            }
            self.refresh(space, id)?;
        }
    }

    /// Starts the clock: its page at guest address `gpa`, updated every
    /// `period` by a timer in hard IRQ context. Replaces a running clock.
    /// The caller serializes clock changes.
    pub(crate) fn start_clock(&self, space: &impl SpaceMmu, gpa: u64, period: Delta) -> Result {
        self.stop_clock();
        let len = size_of::<uapi::secmmu_clock_page>() as u64;
        self.activate(CLOCK, Target::Gpa(gpa), len, true)?;
        if let Err(e) = self.refresh(space, CLOCK) {
            self.deactivate(CLOCK);
            return Err(e);
        }
        let clock = Arc::pin_init(
            pin_init!(Clock {
                timer <- HrTimer::new(),
                // INVARIANT: A `GpcSet` is `!Unpin` and made only in place,
                // by `GpcSet::new()`'s initializer: it never moves. It
                // drops the handle of this clock's timer before it goes.
                set: SetRef(core::ptr::from_ref(self)),
                period,
                start: Instant::now(),
                ticks: AtomicU64::new(0),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        *self.clock.lock() = Some(clock.start(period));
        Ok(())
    }

    /// Stops the clock, if it runs: the timer is cancelled (a callback in
    /// progress is waited for) before its cache is deactivated.
    pub(crate) fn stop_clock(&self) {
        // Dropping the handle cancels the timer.
        drop(self.clock.lock().take());
        self.clock_pending.store(false, Ordering::Relaxed);
        self.deactivate(CLOCK);
    }

    /// One tick of the clock, in hard IRQ context: writes the clock page if
    /// its cache is valid, or counts a miss and asks the next vCPU exit to
    /// refresh it.
    fn clock_tick(&self, page: uapi::secmmu_clock_page) {
        let generation = self.generation.load(Ordering::Relaxed);
        let len = size_of::<uapi::secmmu_clock_page>() as u64;
        let st = self.caches[CLOCK].lock();
        match st.check(generation, len) {
            Some(khva) => {
                // SAFETY: The kernel address of the clock page, valid for
                // `len` bytes while the cache stays valid, which its lock
                // (held) guarantees; 8-byte aligned (checked at setup).
                // Volatile: the guest and userspace read it concurrently.
                unsafe { core::ptr::write_volatile(khva as *mut uapi::secmmu_clock_page, page) };
                self.stats.clock_updates.inc();
            }
            None => {
                self.stats.clock_misses.inc();
                self.clock_pending.store(true, Ordering::Relaxed);
            }
        }
    }

    /// What a vCPU exit does for the caches, in process context: refreshes
    /// the clock's cache if its timer found it invalid (KVM handles such
    /// requests when a vCPU enters). A refresh that fails leaves the clock
    /// missing until the next exit.
    pub(crate) fn service(&self, space: &impl SpaceMmu) {
        if !self.clock_pending.swap(false, Ordering::Relaxed) {
            return;
        }
        if self.refresh(space, CLOCK).is_err() {
            self.clock_pending.store(true, Ordering::Relaxed);
        }
    }
}

#[pinned_drop]
impl PinnedDrop for GpcSet {
    fn drop(self: Pin<&mut Self>) {
        // Before anything of the set goes: the timer's callback uses it.
        self.stop_clock();
    }
}

/// A pointer to the [`GpcSet`] a [`Clock`] updates.
///
/// # Invariants
///
/// The set is pinned and outlives the clock's timer: the set holds the
/// timer's handle and drops it (cancelling the timer, waiting for a
/// callback in progress) before it is dropped itself.
struct SetRef(*const GpcSet);

// SAFETY: The set is `Sync` (locks and atomics), and the pointer is only
// dereferenced to `&GpcSet`.
unsafe impl Send for SetRef {}
// SAFETY: As above.
unsafe impl Sync for SetRef {}

/// A space's clock: a timer that writes the time into the clock page
/// through the clock's cache (KVM's kvmclock and Xen shared-info updates).
#[pin_data]
pub(crate) struct Clock {
    #[pin]
    timer: HrTimer<Self>,
    set: SetRef,
    period: Delta,
    start: Instant<Monotonic>,
    ticks: AtomicU64,
}

impl HrTimerCallback for Clock {
    type Pointer<'a> = Arc<Self>;

    fn run(this: ArcBorrow<'_, Self>, mut ctx: HrTimerCallbackContext<'_, Self>) -> HrTimerRestart {
        // SAFETY: By the invariants of `SetRef`, the set outlives the timer,
        // whose callback this is.
        let set = unsafe { &*this.set.0 };
        let ticks = this.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        set.clock_tick(uapi::secmmu_clock_page {
            ticks,
            time_ns: this.start.elapsed().as_nanos() as u64,
        });
        ctx.forward_now(this.period);
        HrTimerRestart::Restart
    }
}

impl_has_hr_timer! {
    impl HasHrTimer<Self> for Clock {
        mode: RelativeHardMode<Monotonic>, field: self.timer
    }
}
