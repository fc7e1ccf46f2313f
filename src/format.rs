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
//! statistics) goes through the methods here. Zaps run under the zap driver
//! of the core (`mmu/zap.rs`), which keeps the flush and yield rules for
//! both formats ([`zap_gfn_range()`]).

use crate::{
    arm64::mmu::{self as s2, S2Mmu, S2Root},
    dirty_ring::VcpuRing,
    ext::{preempt::PreemptGuard, rwlock::ReadGuard},
    kpages::KernelPages,
    mmu::addr::{Gfn, Hva},
    mmu::aging::{self, AgeOp, AgeResult},
    mmu::dirty::{DirtyBitmap, Protected, Split, SplitAt, Tracking},
    mmu::fault::Fault,
    mmu::inval::Invalidations,
    mmu::level::Level,
    mmu::memslot::{CurrentSlots, Memslots, Slot, SlotEntry},
    mmu::pgtable::{
        MapError, MapOutcome, TableCache, Translation, UnlinkedTable, WalkFault,
        TABLE_CACHE_CAPACITY,
    },
    mmu::prim::{self, NoPreempt, PArc},
    mmu::stats::{OwnCounter, VcpuStats},
    mmu::zap::{Yield, Zap, ZapLock, ZapTables},
    mmu_lock::{MmuLock, WriteGuard},
    uapi,
    x86::mmu::{self as x86, age_gfn_range_lockless, RmapsOf, SlotRef, SlotRmaps, X86Mmu},
    x86::rmap::DescCache,
};
use core::{marker::PhantomData, ops::Deref};
use kernel::{alloc::AllocError, error::Result, prelude::ENOMEM};

/// Evaluates `$e` with `$F` standing for the [`Format`] `$kind` names.
macro_rules! with_kind {
    ($kind:expr, $F:ident => $e:expr) => {
        match $kind {
            Kind::X86 => {
                type $F = X86Mmu<KernelPages>;
                $e
            }
            Kind::S2 => {
                type $F = S2Mmu<KernelPages>;
                $e
            }
        }
    };
}

/// What the MMU lock protects.
pub(crate) struct MmuState {
    /// The page tables; `None` until SECMMU_CONFIGURE.
    pub(crate) mmu: Option<Pgt>,
    /// Invalidations in progress, and the retry sequence (KVM's
    /// `mmu_invalidate_seq` and `mmu_invalidate_in_progress`).
    pub(crate) inval: Invalidations,
}

/// What the format glue needs of the space whose tables it runs: its MMU
/// lock, memslot set, statistics and TLB flush (implemented by the device
/// layer's `Space`, which this file does not name: the layers above the
/// seam depend on it, not it on them).
pub(crate) trait SpaceMmu {
    /// The MMU lock, around the tables and the invalidation state.
    fn mmu_lock(&self) -> &MmuLock<MmuState>;

    /// The memslot set current in the RCU read-side critical section
    /// `rcu` (KVM's `kvm_memslots()`), valid until it ends.
    fn slots<'a>(&'a self, rcu: &'a NoPreempt<'_>) -> &'a SlotSet;

    /// Whether the walker sets accessed and dirty bits (A/D bits).
    fn ad_enabled(&self) -> bool;

    /// Whether aging must take the MMU lock even where it need not.
    fn aging_locked(&self) -> bool;

    /// Flushes every vCPU's TLB and waits for the flush (KVM's
    /// `kvm_flush_remote_tlbs()`).
    fn flush_remote_tlbs(&self);
}

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
    /// The start-level tables, whether the walker sets AF itself, and
    /// whether it sets W on a page with DBM.
    S2(S2Root, bool, bool),
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
    pub(crate) unsafe fn translate(self, gfn: Gfn, write: bool) -> Result<Translation, WalkFault> {
        match self {
            // SAFETY: Per the caller, the MMU of the root outlives the call,
            // and the caller is in guest mode throughout.
            Root::X86(pfn) => unsafe { x86::translate::<KernelPages>(pfn, gfn, write) },
            // SAFETY: As above.
            Root::S2(root, hw_af, hw_dbm) => unsafe {
                s2::translate::<KernelPages>(root, gfn, write, hw_af, hw_dbm)
            },
        }
    }
}

impl Pgt {
    /// The lockless walker's handle of root `root`.
    pub(crate) fn root(&self, root: usize) -> Option<Root> {
        match self {
            Pgt::X86(m) => m.root_pfn(root).map(Root::X86),
            Pgt::S2(m) => m.root(root).map(|r| Root::S2(r, m.hw_af(), m.hw_dbm())),
        }
    }

    /// The largest leaf a map may install: the fault path clamps the level it maps at to this
    /// (a stage-2 walk that starts at `Level::L2M` has no 1G entry, and its `map()` refuses 1G).
    pub(crate) fn max_map_level(&self) -> Level {
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

    /// Has the walkers log writes by the dirty bit (dirty logging's
    /// `SECMMU_CFG_DIRTY_LOG_DIRTY_BIT`): x86's walkers set D anyway;
    /// stage-2's set W on a page with DBM instead of faulting. Before the
    /// tables are shared. False if the walkers keep no A/D state.
    pub(crate) fn set_hw_dirty(&mut self) -> bool {
        match self {
            Pgt::X86(m) => m.ad_enabled(),
            Pgt::S2(m) => m.set_hw_dbm(),
        }
    }

    /// Table pages the tables hold now, roots included.
    pub(crate) fn table_pages(&self) -> u64 {
        match self {
            Pgt::X86(m) => m.table_pages(),
            Pgt::S2(m) => m.table_pages(),
        }
    }

    /// Leaves mapped now, in all roots, by level: 4K, 2M, 1G (KVM's `pages_4k`, `pages_2m`,
    /// `pages_1g`).
    pub(crate) fn leaves_by_level(&self) -> [u64; 3] {
        match self {
            Pgt::X86(m) => m.leaves_by_level(),
            Pgt::S2(m) => m.leaves_by_level(),
        }
    }

    /// The snapshot byte of `gfn` in root `root`.
    pub(crate) fn snapshot(&self, root: usize, gfn: Gfn) -> u8 {
        match self {
            Pgt::X86(m) => m.snapshot(root, gfn),
            Pgt::S2(m) => m.snapshot(root, gfn),
        }
    }

    /// The first leaf of root `root` mapping a gfn in `[gfn, end)`: its first
    /// gfn and that gfn's translation. MMU lock held, either side.
    pub(crate) fn next_leaf(&self, root: usize, gfn: Gfn, end: Gfn) -> Option<(Gfn, Translation)> {
        match self {
            Pgt::X86(m) => m.next_leaf(root, gfn, end),
            Pgt::S2(m) => m.next_leaf(root, gfn, end),
        }
    }

    /// Makes the pages `[start, end)` of `slot` clean for dirty logging, in
    /// every root, at every level, so that their next write is logged, as
    /// `tracking` says: write-protects their leaves, or with
    /// [`Tracking::DirtyBit`] clears D on x86's 4K leaves (protecting huge
    /// ones). Stage-2 write-protects either way: with DBM the walker makes W
    /// come back on a write instead of faulting. x86 goes through the
    /// slot's rmaps, stage-2 walks the tables. MMU lock held for write;
    /// flush before dropping it if the result says so.
    pub(crate) fn protect_gfn_range(
        &mut self,
        slot: &MemSlot,
        start: Gfn,
        end: Gfn,
        tracking: Tracking,
    ) -> Protected {
        match self {
            Pgt::X86(m) => x86_slot(slot).map_or(Protected::default(), |slot| match tracking {
                Tracking::WriteProtect => m.write_protect_gfn_range(slot, start, end),
                Tracking::DirtyBit => m.clear_dirty_gfn_range(slot, start, end),
            }),
            Pgt::S2(m) => m.write_protect_gfn_range(start, end),
        }
    }

    /// Splits the huge leaves that map gfns of `[at.gfn, end)` of `slot` down
    /// to 4K, in every root, for dirty logging's eager splitting: x86 through
    /// the slot's rmaps, stage-2 by walking the tables, breaking each block
    /// before making its table, with `flush` flushing the TLBs. Takes tables
    /// and rmap descriptors from `caches` (topped up with
    /// [`FaultCaches::topup_split()`]) and stops when they run out. MMU lock
    /// held for write; no flush is needed after.
    pub(crate) fn split_huge_gfn_range(
        &mut self,
        slot: &MemSlot,
        at: SplitAt,
        end: Gfn,
        caches: &mut FaultCaches,
        flush: &dyn Fn(),
    ) -> Split {
        match self {
            Pgt::X86(m) => x86_slot(slot).map_or(Split::default(), |slot| {
                m.split_huge_gfn_range(slot, at, end, &mut caches.tables, &mut caches.descs)
            }),
            Pgt::S2(m) => m.split_huge_gfn_range(at, end, &mut caches.tables, flush),
        }
    }

    /// The format of the tables.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Pgt::X86(_) => Kind::X86,
            Pgt::S2(_) => Kind::S2,
        }
    }
}

impl ZapTables for Pgt {
    /// Frees the table pages zaps unlinked (both formats unlink the tables a
    /// zap of a range leaves empty). MMU lock held for write, after the TLB
    /// flush that followed the zaps.
    fn free_zapped_tables(&mut self) {
        match self {
            Pgt::X86(m) => m.free_zapped_tables(),
            Pgt::S2(m) => m.free_zapped_tables(),
        }
    }
}

/// Zaps the gfns `[start, end)` of slot `slot_id` in every root of the tables
/// `lock` guards, held for write, flushing and yielding the lock as the zap
/// driver `z` says ([`Format::zap_gfn_range()`]); what it cleared since the
/// last flush is left in `z` for the caller to flush before it drops the
/// lock. The slot is looked up in `space`'s current memslot set at each
/// step, since the set may change while the lock is yielded.
pub(crate) fn zap_gfn_range<Y: Yield>(
    lock: &mut impl ZapLock<Mmu = Pgt>,
    space: &impl SpaceMmu,
    z: &mut Zap<Y>,
    slot_id: u32,
    start: Gfn,
    end: Gfn,
) {
    let Some(kind) = lock.mmu().map(|m| m.kind()) else {
        return;
    };
    with_kind!(kind, F => {
        let mut lock = FormatLock::<_, F>(lock, PhantomData);
        <F as Format>::zap_gfn_range(&mut lock, &mut SpaceSlots(space), z, slot_id, start, end)
    })
}

/// The memslot set of a space current under its MMU lock, where a zap finds
/// its slot again after every yield ([`CurrentSlots`]).
struct SpaceSlots<'a, S>(&'a S);

impl<S: SpaceMmu> CurrentSlots<SlotData> for SpaceSlots<'_, S> {
    fn with_slot<R>(&mut self, id: u32, f: impl FnOnce(Option<&MemSlot>) -> R) -> R {
        // The set is replaced only under the MMU lock held for write, which
        // the zap holds; the RCU read side covers the borrow all the same.
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        f(self.0.slots(&rcu).by_id(id))
    }
}

/// The MMU lock `L` of a space's tables, seen as the lock of its tables of
/// format `F`: what a format's zap yields (the tables of a space are never
/// replaced, so they are of `F` again after every yield).
struct FormatLock<'l, L, F>(&'l mut L, PhantomData<fn() -> F>);

impl<L: ZapLock<Mmu = Pgt>, F: Format> ZapLock for FormatLock<'_, L, F> {
    type Mmu = F;

    fn mmu(&mut self) -> Option<&mut F> {
        F::of_mut(self.0.mmu()?)
    }

    fn resched(&mut self) {
        self.0.resched()
    }
}

/// What a fault preallocates before it takes the MMU lock (KVM's
/// `mmu_topup_memory_caches()`): table pages and rmap descriptors.
pub(crate) struct FaultCaches {
    pub(crate) tables: TableCache<KernelPages>,
    pub(crate) descs: DescCache,
}

impl FaultCaches {
    /// Empty caches; rmap descriptors freed into them are kept up to `descs`.
    pub(crate) fn new(descs: usize) -> Self {
        Self {
            tables: TableCache::new(),
            descs: DescCache::new(descs),
        }
    }

    /// Fills the caches for an eager split
    /// ([`Pgt::split_huge_gfn_range()`]) of tables of format `kind` with
    /// `nr_roots` roots: tables to capacity, and on x86 the descriptors the
    /// split of one huge leaf may take.
    pub(crate) fn topup_split(&mut self, kind: Kind, nr_roots: usize) -> Result {
        self.tables
            .topup(TABLE_CACHE_CAPACITY)
            .map_err(|_| ENOMEM)?;
        if kind == Kind::X86 {
            let descs = x86::split_min_descs(nr_roots);
            self.descs.topup(descs).map_err(|_| ENOMEM)?;
        }
        Ok(())
    }

    /// Fills the caches with what one map of format `F` may use.
    pub(crate) fn topup<F: Format>(&mut self) -> Result {
        self.tables.topup(F::MAP_MIN_TABLES).map_err(|_| ENOMEM)?;
        self.descs.topup(F::MAP_MIN_DESCS).map_err(|_| ENOMEM)?;
        Ok(())
    }
}

/// The operations of a page-table format that the format-independent fault
/// path needs; implemented by [`X86Mmu`] and [`S2Mmu`], which are named
/// together only in this file.
///
/// The formats differ in which side of the MMU lock a fault installs under
/// ([`Format::FaultSide`]), and that is all the fault path needs to know:
/// KVM's x86 fault path likewise takes `mmu_lock` for write for the shadow
/// MMU (`direct_page_fault()`) and for read for the TDP MMU
/// (`kvm_tdp_mmu_page_fault()`), with one `struct kvm_page_fault`.
pub(crate) trait Format: Sized + ZapTables {
    /// The side of the MMU lock a fault holds to install a leaf.
    type FaultSide: FaultSide;
    /// Table pages a fault must have in its cache before it maps.
    const MAP_MIN_TABLES: usize;
    /// Rmap descriptors a fault must have in its cache before it maps.
    const MAP_MIN_DESCS: usize;
    /// A map that replaces a valid leaf breaks it first, flushes, then
    /// makes the new one (stage-2's break-before-make); x86 replaces in one
    /// store and flushes after.
    const BREAK_BEFORE_MAKE: bool;

    /// This format's tables in `pgt`, shared; `None` if `pgt` is of the
    /// other format.
    fn of(pgt: &Pgt) -> Option<&Self>;

    /// This format's tables in `pgt`, exclusive; `None` if `pgt` is of the
    /// other format.
    fn of_mut(pgt: &mut Pgt) -> Option<&mut Self>;

    /// Installs the leaf `fault` resolved, in root `root`, through `slot`
    /// (the fault's slot, from the set current under the lock), with the MMU
    /// lock held on [`Format::FaultSide`]. `flush` flushes every vCPU's
    /// TLB and waits for them: the map calls it whenever it removed a
    /// translation (break-before-make needs it between the break and the
    /// make), so on return nothing stale is cached and a table the outcome
    /// says was unlinked may be freed once no locked walker is in it.
    fn map(
        tables: Tables<'_, Self>,
        root: usize,
        fault: &Fault,
        slot: &MemSlot,
        caches: &mut FaultCaches,
        flush: &dyn Fn(),
    ) -> Result<MapOutcome, MapError>;

    /// Without A/D bits, an access to a leaf that aging made old faults:
    /// makes the leaf of `gfn` young again for the access, if there is one
    /// that allows it, without resolving the page (an invalidation would
    /// have zapped the leaf). With the MMU lock held on
    /// [`Format::FaultSide`].
    fn fix_access_fault(tables: Tables<'_, Self>, root: usize, gfn: Gfn, write: bool) -> bool;

    /// A write fault on a page of a slot that logs dirty pages: makes the
    /// leaf of `gfn` writable again without resolving the page, if dirty
    /// logging's write protection is all that keeps it read-only (KVM's
    /// `fast_page_fault()`). With the MMU lock held on
    /// [`Format::FaultSide`]; the caller logs the page under it.
    fn fix_write_protect_fault(tables: Tables<'_, Self>, root: usize, gfn: Gfn) -> bool;

    /// The statistic [`Format::fix_access_fault()`]'s successes count in.
    fn access_fixes(stats: &VcpuStats) -> &OwnCounter;

    /// Zaps the gfns `[start, end)` of slot `slot_id` in every root, with
    /// `lock` held for write, flushing, freeing the tables it unlinks and
    /// yielding as the zap driver `z` says (the x86 MMU finds the leaves
    /// through the slot's rmaps, looked up in `slots` at every step; stage-2
    /// walks its tables over the range).
    fn zap_gfn_range<Y: Yield>(
        lock: &mut impl ZapLock<Mmu = Self>,
        slots: &mut impl CurrentSlots<SlotData>,
        z: &mut Zap<Y>,
        slot_id: u32,
        start: Gfn,
        end: Gfn,
    );

    /// The guest-physical address bits of a space whose SECMMU_CONFIGURE
    /// asked for `requested` (0: the default), `None` if the format cannot
    /// have them.
    fn ia_bits(requested: u32) -> Option<u32>;

    /// New tables with `nr_roots` empty roots. Allocates, and may sleep:
    /// before the MMU lock.
    fn new_tables(nr_roots: usize, ia_bits: u32, ad_enabled: bool) -> Result<Pgt, AllocError>;

    /// What a new memslot's entry in the set holds for the format,
    /// allocated before the MMU lock (may sleep): x86 gives it rmaps,
    /// stage-2 nothing.
    fn prepare_slot(slot: &Slot) -> Result<SlotData, AllocError>;

    /// Ages the user range `[start, end)` of a configured `space` of this
    /// format, taking whichever side of the MMU lock the format's aging
    /// needs, or none (see "Aging without the MMU lock" in
    /// Documentation/secmmu-protocols.rst), and flushing what
    /// `clear_flush_young` or access tracking requires. The range becomes
    /// (slot, gfn range) pairs once, through [`age_hva_range()`], and the
    /// format ages each pair.
    fn age(space: &impl SpaceMmu, start: Hva, end: Hva, op: AgeOp) -> Option<AgeResult>;

    /// Frees a table that a map unlinked, with the MMU lock held for write.
    ///
    /// # Safety
    ///
    /// `t` was unlinked by a map of `self` and not freed since, and no
    /// walker can be inside it any more: lockless walkers were waited for
    /// by a TLB flush after the unlink, and the caller holds the write side.
    unsafe fn free_unlinked(&mut self, t: UnlinkedTable);
}

/// The tables of format `F`, borrowed as a fault's side of the lock allows.
pub(crate) type Tables<'a, F> = <<F as Format>::FaultSide as FaultSide>::Tables<'a, F>;

/// A side of the MMU lock, as a type: [`Shared`] or [`Exclusive`].
pub(crate) trait FaultSide {
    /// The guard of this side.
    type Guard<'a>: Deref<Target = MmuState>;
    /// A format's tables, borrowed through a guard of this side.
    type Tables<'a, F: 'a>;

    /// Takes this side of `lock`, spinning.
    fn lock(lock: &MmuLock<MmuState>) -> Self::Guard<'_>;

    /// The tables of format `F` behind `guard`; `None` until the space is
    /// configured (a space configured for `F` keeps its tables of `F`
    /// until it is dropped: they are never replaced).
    fn tables<'a, F: Format>(guard: &'a mut Self::Guard<'_>) -> Option<Self::Tables<'a, F>>;

    /// Frees the table a map unlinked under `guard`, after the TLB flush
    /// that waited for the lockless walkers; walkers under the read side
    /// may still be inside it, so that side takes the write side first.
    fn free_unlinked<F: Format>(lock: &MmuLock<MmuState>, guard: Self::Guard<'_>, t: UnlinkedTable);
}

/// The read side of the MMU lock: faults race each other and the agers
/// with compare-exchange and locked entries (stage-2).
pub(crate) struct Shared;

/// The write side of the MMU lock: faults exclude every other walker but
/// the lockless ones (x86 shadow MMU).
pub(crate) struct Exclusive;

impl FaultSide for Shared {
    type Guard<'a> = ReadGuard<'a, MmuState>;
    type Tables<'a, F: 'a> = &'a F;

    fn lock(lock: &MmuLock<MmuState>) -> Self::Guard<'_> {
        lock.read()
    }

    fn tables<'a, F: Format>(guard: &'a mut Self::Guard<'_>) -> Option<&'a F> {
        F::of(guard.mmu.as_ref()?)
    }

    fn free_unlinked<F: Format>(
        lock: &MmuLock<MmuState>,
        guard: Self::Guard<'_>,
        t: UnlinkedTable,
    ) {
        drop(guard);
        let mut guard = lock.write();
        if let Some(mmu) = guard.mmu.as_mut().and_then(F::of_mut) {
            // SAFETY: Unlinked by a map of this MMU (the tables of a space
            // are never replaced) and not freed since; the caller flushed
            // after the unlink; we hold the write side, so no walker under
            // the read side is inside it either.
            unsafe { mmu.free_unlinked(t) };
        }
    }
}

impl FaultSide for Exclusive {
    type Guard<'a> = WriteGuard<'a, MmuState>;
    type Tables<'a, F: 'a> = &'a mut F;

    fn lock(lock: &MmuLock<MmuState>) -> Self::Guard<'_> {
        lock.write()
    }

    fn tables<'a, F: Format>(guard: &'a mut Self::Guard<'_>) -> Option<&'a mut F> {
        F::of_mut(guard.mmu.as_mut()?)
    }

    fn free_unlinked<F: Format>(
        _lock: &MmuLock<MmuState>,
        mut guard: Self::Guard<'_>,
        t: UnlinkedTable,
    ) {
        if let Some(mmu) = guard.mmu.as_mut().and_then(F::of_mut) {
            // SAFETY: Unlinked by a map of this MMU under this guard and not
            // freed since; the caller flushed after the unlink, and the
            // write side excludes every other locked walker.
            unsafe { mmu.free_unlinked(t) };
        }
    }
}

/// [`Format::of()`] and [`Format::of_mut()`] for the format in variant `$v` of [`Pgt`].
macro_rules! pgt_variant {
    ($v:ident) => {
        fn of(pgt: &Pgt) -> Option<&Self> {
            match pgt {
                Pgt::$v(m) => Some(m),
                _ => None,
            }
        }

        fn of_mut(pgt: &mut Pgt) -> Option<&mut Self> {
            match pgt {
                Pgt::$v(m) => Some(m),
                _ => None,
            }
        }
    };
}

impl Format for X86Mmu<KernelPages> {
    type FaultSide = Exclusive;
    const MAP_MIN_TABLES: usize = x86::MAP_MIN_TABLES;
    const MAP_MIN_DESCS: usize = x86::MAP_MIN_DESCS;
    const BREAK_BEFORE_MAKE: bool = false;

    pgt_variant!(X86);

    fn map(
        tables: &mut Self,
        root: usize,
        fault: &Fault,
        slot: &MemSlot,
        caches: &mut FaultCaches,
        flush: &dyn Fn(),
    ) -> Result<MapOutcome, MapError> {
        let (gfn, pfn) = fault.block();
        let slot = x86_slot(slot).ok_or(MapError::NoSlot)?;
        let (tc, dc) = (&mut caches.tables, &mut caches.descs);
        // A leaf made ahead of any access is installed not accessed.
        let map_level = if fault.prefetch {
            Self::map_level_prefetch
        } else {
            Self::map_level
        };
        let (writable, level) = (fault.map_writable, fault.level);
        let mapped = map_level(tables, root, slot, gfn, pfn, writable, level, tc, dc);
        // The leaf or table replaced may be cached: flush before the write
        // side is dropped, and before an unlinked table is freed.
        if mapped.as_ref().is_ok_and(MapOutcome::needs_flush) {
            flush();
        }
        mapped
    }

    fn fix_access_fault(tables: &mut Self, root: usize, gfn: Gfn, write: bool) -> bool {
        tables.restore_access_tracked(root, gfn, write)
    }

    fn fix_write_protect_fault(tables: &mut Self, root: usize, gfn: Gfn) -> bool {
        tables.restore_write_protected(root, gfn)
    }

    fn access_fixes(stats: &VcpuStats) -> &OwnCounter {
        &stats.access_restores
    }

    fn zap_gfn_range<Y: Yield>(
        lock: &mut impl ZapLock<Mmu = Self>,
        slots: &mut impl CurrentSlots<SlotData>,
        z: &mut Zap<Y>,
        slot_id: u32,
        start: Gfn,
        end: Gfn,
    ) {
        X86Mmu::zap_gfn_range(lock, slots, z, slot_id, start, end)
    }

    fn ia_bits(requested: u32) -> Option<u32> {
        // EPT walks 4 levels: 48 bits, always.
        match requested {
            0 | uapi::IA_BITS_DEFAULT => Some(uapi::IA_BITS_DEFAULT),
            _ => None,
        }
    }

    fn new_tables(nr_roots: usize, _ia_bits: u32, ad_enabled: bool) -> Result<Pgt, AllocError> {
        Ok(Pgt::X86(X86Mmu::new(nr_roots, ad_enabled)?))
    }

    fn prepare_slot(slot: &Slot) -> Result<SlotData, AllocError> {
        let rmaps = prim::try_arc_sleepable(SlotRmaps::new(slot)?)?;
        Ok(SlotData {
            rmaps: Some(rmaps),
            dirty: None,
        })
    }

    /// With A/D bits, without the MMU lock: the memslot set is read, and
    /// the rmaps are walked under their bit locks taken read-only, with
    /// preemption disabled, an RCU read side (the set, and a deleted slot's
    /// rmaps with it, are freed after a grace period).
    /// Without them, or when `aging_locked` asks, under the write side:
    /// access tracking takes W away.
    fn age(space: &impl SpaceMmu, start: Hva, end: Hva, op: AgeOp) -> Option<AgeResult> {
        if aging::use_lockless(op, space.ad_enabled(), space.aging_locked()) {
            let mut r = {
                // Nothing in the walk sleeps.
                let preempt = PreemptGuard::new();
                let rcu: NoPreempt<'_> = preempt.proof().into();
                age_hva_range(space.slots(&rcu), start, end, op, |slot, s, e| {
                    x86_slot(slot).map_or(AgeResult::new(op), |slot| {
                        age_gfn_range_lockless(slot, &rcu, s, e, op)
                    })
                })
            };
            r.lockless = true;
            // clear_flush_young: the entries made old must not stay cached
            // as young translations (no MMU lock needed to flush).
            if r.needs_flush() {
                space.flush_remote_tlbs();
            }
            return Some(r);
        }
        let mut guard = space.mmu_lock().write();
        let mmu = Self::of_mut(guard.mmu.as_mut()?)?;
        // The set is the current one for as long as the write side is held.
        let preempt = PreemptGuard::new();
        let rcu: NoPreempt<'_> = preempt.proof().into();
        let r = age_hva_range(space.slots(&rcu), start, end, op, |slot, s, e| {
            x86_slot(slot).map_or(AgeResult::new(op), |slot| {
                mmu.age_gfn_range_locked(slot, s, e, op)
            })
        });
        drop(preempt);
        // Access tracking took W away: flush before other faults can see
        // the lock free (a TLB still allowing writes would hide them from
        // dirty tracking).
        if r.needs_flush() {
            space.flush_remote_tlbs();
        }
        Some(r)
    }

    unsafe fn free_unlinked(&mut self, t: UnlinkedTable) {
        // SAFETY: Per the caller.
        unsafe { X86Mmu::free_unlinked(self, t) }
    }
}

impl Format for S2Mmu<KernelPages> {
    type FaultSide = Shared;
    const MAP_MIN_TABLES: usize = s2::MAP_MIN_TABLES;
    const MAP_MIN_DESCS: usize = 0;
    const BREAK_BEFORE_MAKE: bool = true;

    pgt_variant!(S2);

    fn map(
        tables: &Self,
        root: usize,
        fault: &Fault,
        _slot: &MemSlot,
        caches: &mut FaultCaches,
        flush: &dyn Fn(),
    ) -> Result<MapOutcome, MapError> {
        let (gfn, pfn) = fault.block();
        let (writable, level, tc) = (fault.map_writable, fault.level, &mut caches.tables);
        // Without hardware AF, an old leaf would cost an access-flag fault
        // on the first access: a prefetch maps it young then.
        if fault.prefetch && tables.hw_af() {
            tables.map_prefetch(root, gfn, pfn, writable, level, tc, flush)
        } else {
            tables.map(root, gfn, pfn, writable, level, tc, flush)
        }
    }

    fn fix_access_fault(tables: &Self, root: usize, gfn: Gfn, write: bool) -> bool {
        tables.mkyoung(root, gfn, write)
    }

    fn fix_write_protect_fault(tables: &Self, root: usize, gfn: Gfn) -> bool {
        tables.restore_write_protected(root, gfn)
    }

    fn access_fixes(stats: &VcpuStats) -> &OwnCounter {
        &stats.access_flag_faults
    }

    fn zap_gfn_range<Y: Yield>(
        lock: &mut impl ZapLock<Mmu = Self>,
        _slots: &mut impl CurrentSlots<SlotData>,
        z: &mut Zap<Y>,
        _slot_id: u32,
        start: Gfn,
        end: Gfn,
    ) {
        // No rmaps: the walk finds the slot's leaves by its gfns.
        S2Mmu::zap_gfn_range(lock, z, start, end)
    }

    fn ia_bits(requested: u32) -> Option<u32> {
        match requested {
            0 => Some(uapi::IA_BITS_DEFAULT),
            b if (uapi::IA_BITS_MIN_ARM64..=uapi::IA_BITS_DEFAULT).contains(&b) => Some(b),
            _ => None,
        }
    }

    fn new_tables(nr_roots: usize, ia_bits: u32, ad_enabled: bool) -> Result<Pgt, AllocError> {
        Ok(Pgt::S2(S2Mmu::new(nr_roots, ia_bits, ad_enabled)?))
    }

    fn prepare_slot(_slot: &Slot) -> Result<SlotData, AllocError> {
        // No rmaps: zaps and aging walk the tables.
        Ok(SlotData::default())
    }

    /// Under the read side of the MMU lock, racing faults and the other
    /// walkers, AF cleared with a compare-exchange whose failure counts
    /// young (see "Stage-2 aging under the read side" in
    /// Documentation/secmmu-protocols.rst); under the write side only when
    /// `aging_locked` asks, for comparison. No permission is taken away in
    /// either A/D mode (a writable leaf is dirty already), so only
    /// `clear_flush_young` needs a flush.
    fn age(space: &impl SpaceMmu, start: Hva, end: Hva, op: AgeOp) -> Option<AgeResult> {
        let walk = |state: &MmuState| {
            let mmu = Self::of(state.mmu.as_ref()?)?;
            // The set is the current one for as long as the lock is held.
            let preempt = PreemptGuard::new();
            let rcu: NoPreempt<'_> = preempt.proof().into();
            let r = age_hva_range(space.slots(&rcu), start, end, op, |_, s, e| {
                mmu.age_gfn_range(s, e, op)
            });
            drop(preempt);
            if r.needs_flush() {
                space.flush_remote_tlbs();
            }
            Some(r)
        };
        if space.aging_locked() {
            walk(&space.mmu_lock().write())
        } else {
            walk(&space.mmu_lock().read()).map(|r| AgeResult {
                lockless: true,
                ..r
            })
        }
    }

    unsafe fn free_unlinked(&mut self, t: UnlinkedTable) {
        // SAFETY: Per the caller.
        unsafe { S2Mmu::free_unlinked(self, t) }
    }
}

/// What a memslot's entry in the set holds for the format
/// ([`Format::prepare_slot()`]): x86 its rmaps, shared by pointer by every
/// set that holds the slot (KVM's `slot->arch.rmap`; see "Memslots and
/// their lifetime" in Documentation/secmmu-protocols.rst); stage-2 nothing.
/// Both keep the slot's dirty bitmap there while it logs dirty pages.
#[derive(Clone, Default)]
pub(crate) struct SlotData {
    rmaps: Option<PArc<SlotRmaps>>,
    /// The dirty bitmap (KVM's `memslot->dirty_bitmap`), while the slot
    /// has `SECMMU_MEM_LOG_DIRTY_PAGES`: made before the set that enables
    /// logging is published, and freed with the last set that holds it, a
    /// grace period after logging stopped, like the rmaps.
    dirty: Option<PArc<DirtyBitmap>>,
}

impl SlotData {
    /// The slot's dirty bitmap, while it logs dirty pages.
    pub(crate) fn dirty(&self) -> Option<&DirtyBitmap> {
        self.dirty.as_deref()
    }

    /// This data with the dirty bitmap `dirty` instead (a flags-only change
    /// of the slot: the rmaps stay).
    pub(crate) fn with_dirty(&self, dirty: Option<PArc<DirtyBitmap>>) -> Self {
        Self {
            rmaps: self.rmaps.clone(),
            dirty,
        }
    }
}

/// A space's memslot set.
pub(crate) type SlotSet = Memslots<SlotData>;

/// A memslot of a space's set, with the format's data for it.
pub(crate) type MemSlot = SlotEntry<SlotData>;

impl MemSlot {
    /// Marks `gfn`, a gfn of the slot, dirty in its log if it logs (KVM's
    /// `mark_page_dirty_in_slot()`): from the fault path and its fast path,
    /// the guest page caches and the harvest of their pages, with the MMU
    /// lock held (either side), and from a vCPU flushing its
    /// page-modification log in guest mode ([`crate::mmu::dirty::PmlLog`]).
    pub(crate) fn mark_dirty(&self, gfn: Gfn) {
        if let Some(log) = self.data.dirty() {
            log.mark(gfn - self.base_gfn);
        }
    }

    /// Marks `gfn`, a gfn of the slot, dirty for the vCPU whose dirty ring
    /// is `ring` if the space has rings: pushed there if the slot logs
    /// (KVM's `mark_page_dirty_in_slot()` with a running vCPU), else as
    /// [`MemSlot::mark_dirty()`]. The vCPU's own thread only, from the
    /// same places. Returns whether the gfn went to a full ring and so to
    /// the bitmap instead (not reached while the vCPU exits on a soft-full
    /// ring: `crate::mmu::dirty_ring`).
    pub(crate) fn mark_dirty_by(&self, gfn: Gfn, ring: Option<&VcpuRing>) -> bool {
        let Some(log) = self.data.dirty() else {
            return false;
        };
        let offset = gfn - self.base_gfn;
        match ring.map(|r| r.push(self.id, offset)) {
            Some(Ok(())) => false,
            full => {
                log.mark(offset);
                full.is_some()
            }
        }
    }
}

impl RmapsOf for SlotData {
    fn rmaps(&self) -> Option<&SlotRmaps> {
        self.rmaps.as_deref()
    }
}

/// The x86 MMU's view of `slot`: the slot with its rmaps, if it has them.
fn x86_slot(slot: &MemSlot) -> Option<SlotRef<'_>> {
    SlotRef::of(slot)
}

/// [`SlotRef::chain_lengths()`] of the rmaps of `slot` at `level` (x86);
/// `None` past the last, or for a slot without rmaps (stage-2).
pub(crate) fn rmap_chain_lengths(
    slot: &MemSlot,
    level: Level,
    from: usize,
    n: usize,
    no_preempt: &NoPreempt<'_>,
    hist: &mut [u64],
) -> Option<usize> {
    x86_slot(slot)?.chain_lengths(level, from, n, no_preempt, hist)
}

/// SPTEs left in the rmaps of `slot` (x86; 0 for stage-2): 0 once its zap
/// is done.
pub(crate) fn slot_sptes(slot: &MemSlot) -> u64 {
    x86_slot(slot).map_or(0, |slot| slot.sptes())
}

/// Ages the user range `[start, end)` of the slots in `slots`: `age` on
/// each (slot, gfn range) pair that backs part of it, as
/// [`Memslots::gfn_ranges()`] finds them (KVM's `kvm_handle_hva_range()`),
/// until testing finds a young leaf. A host page aliased by several slots
/// is aged in each.
fn age_hva_range(
    slots: &SlotSet,
    start: Hva,
    end: Hva,
    op: AgeOp,
    mut age: impl FnMut(&MemSlot, Gfn, Gfn) -> AgeResult,
) -> AgeResult {
    let mut r = AgeResult::new(op);
    for (slot, first, last) in slots.gfn_ranges(start, end) {
        r.merge(&age(slot, first, last));
        if r.done() {
            break;
        }
    }
    r
}

/// A page-table format, as a value: what SECMMU_CONFIGURE chose
/// (`SECMMU_FMT_*`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// x86 EPT, 4 levels.
    X86 = uapi::FMT_X86_EPT4 as isize,
    /// arm64 stage-2, 4K granule.
    S2 = uapi::FMT_ARM64_S2 as isize,
}

impl Kind {
    /// The format `SECMMU_FMT_*` value `format` names, if any.
    pub(crate) fn from_uapi(format: u32) -> Option<Kind> {
        match format {
            uapi::FMT_X86_EPT4 => Some(Kind::X86),
            uapi::FMT_ARM64_S2 => Some(Kind::S2),
            _ => None,
        }
    }

    /// Runs `w` for this format: the one place the MMU goes from a format
    /// as a value to code specialized for it.
    pub(crate) fn with_format<W: WithFormat>(self, w: W) -> W::Output {
        with_kind!(self, F => w.run::<F>())
    }

    /// [`Format::ia_bits()`] of this format.
    pub(crate) fn ia_bits(self, requested: u32) -> Option<u32> {
        with_kind!(self, F => <F as Format>::ia_bits(requested))
    }

    /// [`Format::new_tables()`] of this format.
    pub(crate) fn new_tables(
        self,
        nr_roots: usize,
        ia_bits: u32,
        ad_enabled: bool,
    ) -> Result<Pgt, AllocError> {
        with_kind!(self, F => <F as Format>::new_tables(nr_roots, ia_bits, ad_enabled))
    }

    /// [`Format::prepare_slot()`] of this format.
    pub(crate) fn prepare_slot(self, slot: &Slot) -> Result<SlotData, AllocError> {
        with_kind!(self, F => <F as Format>::prepare_slot(slot))
    }

    /// [`Format::age()`] of this format.
    pub(crate) fn age(
        self,
        space: &impl SpaceMmu,
        start: Hva,
        end: Hva,
        op: AgeOp,
    ) -> Option<AgeResult> {
        with_kind!(self, F => <F as Format>::age(space, start, end, op))
    }
}

/// Code generic over the format, run by [`Kind::with_format()`] for the
/// format of a space or a root.
pub(crate) trait WithFormat {
    /// What the code returns.
    type Output;
    /// Runs the code for format `F`.
    fn run<F: Format>(self) -> Self::Output;
}

impl Root {
    /// The format of the root.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Root::X86(_) => Kind::X86,
            Root::S2(..) => Kind::S2,
        }
    }
}

#[kernel::prelude::kunit_tests(secmmu)]
mod kunit {
    //! The module's KUnit suite, `secmmu`: in-kernel checks of the
    //! kernel-free core and of both formats, built with the kernel's
    //! compiler and allocator (the host crate runs the exhaustive ones). It
    //! lives here, in the one file that names both formats.
    use crate::{
        arm64::{
            mmu::{translate as s2_translate, S2Mmu},
            pte as s2,
        },
        ext::{preempt::PreemptGuard, rwlock::new_rwlock},
        kpages::KernelPages,
        mmu::addr::{Gfn, Pfn},
        mmu::aging::AgeOp,
        mmu::inval::checks,
        mmu::level::Level,
        mmu::pgtable::{MapAction, MapError, TableCache},
        mmu::prim::{AtomicU64, Ordering},
        mmu::zap::{NoYield, Owned, Zap},
        mmu_lock::write_locked,
        x86::rmap::{DescCache, RmapHead, PTE_LIST_EXT},
        x86::spte,
    };
    use core::ptr::NonNull;
    use kernel::prelude::*;

    #[test]
    fn inval_retry_around_one_invalidation() {
        assert!(checks::retry_around_one_invalidation());
    }

    #[test]
    fn inval_nested_invalidations_keep_union() {
        assert!(checks::nested_invalidations_keep_union());
    }

    #[test]
    fn inval_storm_elsewhere_never_retries() {
        assert!(checks::storm_elsewhere_never_retries());
    }

    #[test]
    fn inval_watch_during_invalidation_is_stale() {
        assert!(checks::watch_during_invalidation_is_stale());
    }

    #[test]
    fn gpc_refresh_then_invalidate() {
        assert!(crate::mmu::pfncache::checks::refresh_then_invalidate());
    }

    #[test]
    fn gpc_refresh_retries_only_for_its_page() {
        assert!(crate::mmu::pfncache::checks::refresh_retries_only_for_its_page());
    }

    #[test]
    fn gpc_memslots_and_deactivation() {
        assert!(crate::mmu::pfncache::checks::memslots_and_deactivation());
    }

    #[test]
    fn gpc_dirty_logging() {
        assert!(crate::mmu::pfncache::checks::dirty_logging());
    }

    /// Every leaf decodes to what it was made of, at every level.
    #[test]
    fn spte_leaf_encode_decode() {
        for level in [Level::L4K, Level::L2M, Level::L1G] {
            for pfn in [1u64, 0x12345, (1 << 40) - 1] {
                let pfn = pfn & !(level.pages() - 1);
                for writable in [false, true] {
                    for ad in [false, true] {
                        let s = spte::make_leaf(pfn, level, writable, ad);
                        assert!(spte::is_present(s));
                        assert!(spte::is_leaf(s, level));
                        assert_eq!(spte::is_writable(s), writable);
                        assert_eq!(spte::is_ad_enabled(s), ad);
                        assert_eq!(spte::pfn(s), pfn);
                    }
                }
            }
        }
        let table = spte::make_nonleaf(0x4242);
        assert!(spte::is_present(table));
        assert!(!spte::is_leaf(table, Level::L2M));
        assert_eq!(spte::pfn(table), 0x4242);
    }

    /// Access tracking (no A/D bits) removes every permission and restores
    /// them exactly, dirty state included.
    #[test]
    fn spte_access_tracking_round_trip() {
        let s = spte::make_leaf(0x777, Level::L4K, true, false);
        let tracked = spte::mark_access_tracked(s);
        assert!(spte::is_access_tracked(tracked));
        assert!(!spte::is_writable(tracked));
        assert_eq!(spte::restore_access_tracked(tracked), s);
        // Clearing A atomically reports whether it was set ("Clearing the
        // accessed bit" in Documentation/secmmu-protocols.rst).
        let a = AtomicU64::new(spte::make_leaf(0x888, Level::L4K, false, true) | spte::ACCESSED);
        assert!(spte::test_and_clear_accessed(&a));
        assert!(!spte::test_and_clear_accessed(&a));
        assert!(spte::is_present(a.load(Ordering::Relaxed)));
    }

    /// rmap add/remove across descriptor boundaries, in an order that
    /// empties descriptors in the middle of the chain; the head is locked
    /// and unlocked at every step and every descriptor goes back.
    #[test]
    fn rmap_add_remove_across_descriptors() -> Result {
        const N: usize = 3 * PTE_LIST_EXT + 5;
        let mut sptes = KVec::with_capacity(N, GFP_KERNEL)?;
        for i in 0..N {
            let leaf = spte::make_leaf(i as u64 + 1, Level::L4K, true, true);
            sptes.push(AtomicU64::new(leaf), GFP_KERNEL)?;
        }
        let ptr = |i: usize| NonNull::from(&sptes[i]);
        let head = RmapHead::new();
        let mut cache = DescCache::new(8);
        // The MMU lock of this test's rmap: its writers hold it for write.
        let lock = KBox::pin_init(new_rwlock!((), "secmmu_test_mmu_lock"), GFP_KERNEL)?;
        for i in 0..N {
            // Allocates: before the (spinning) lock.
            cache.topup(1).map_err(|_| ENOMEM)?;
            let mut guard = lock.write();
            // SAFETY: `lock` is the only lock the rmap's writers take.
            let mut mmu = unsafe { write_locked(&mut guard) };
            let mut g = head.lock(&mut mmu);
            // SAFETY: `sptes` outlives the rmap's use of its entries: all
            // are removed below.
            let before = unsafe { g.add(ptr(i), &mut cache) };
            assert_eq!(before, i);
            assert_eq!(g.len(), i + 1);
        }
        let mut guard = lock.write();
        // SAFETY: As above.
        let mut mmu = unsafe { write_locked(&mut guard) };
        // Remove every other one, then the rest, back to front.
        for i in Iterator::chain((0..N).step_by(2), (1..N).step_by(2).rev()) {
            let mut g = head.lock(&mut mmu);
            assert!(g.remove(ptr(i), &mut cache));
        }
        assert!(head.is_empty());
        let mut g = head.lock(&mut mmu);
        assert!(!g.remove(ptr(0), &mut cache));
        drop(g);
        drop(guard);
        assert!(cache.len() >= N / PTE_LIST_EXT);
        Ok(())
    }

    /// Stage-2 descriptors decode to what they were made of; the locked
    /// value is invalid and unlike any valid entry; a break of an invalid
    /// entry does not flush, of a valid one flushes once ("Locked entries"
    /// and "Break-before-make" in Documentation/secmmu-protocols.rst).
    #[test]
    fn s2_descriptors_and_break_before_make() {
        for level in [Level::L1G, Level::L2M, s2::LAST_LEVEL] {
            for writable in [false, true] {
                let pfn = 0x40000u64;
                let v = s2::make_leaf(pfn, level, writable);
                assert!(s2::is_valid(v) && s2::is_leaf(v, level) && !s2::is_locked(v));
                assert_eq!(s2::pfn(v), pfn);
                assert_eq!(s2::is_writable(v), writable);
                assert!(s2::is_young(v) && !s2::is_young(s2::mkold(v)));
            }
        }
        let t = s2::make_table(0x1234);
        assert!(s2::is_table(t, Level::L2M) && s2::pfn(t) == 0x1234);
        assert!(!s2::is_valid(s2::LOCKED) && s2::is_locked(s2::LOCKED));

        let flushes = core::cell::Cell::new(0);
        let flush = || flushes.set(flushes.get() + 1);
        let e = AtomicU64::new(0);
        assert!(s2::try_break(&e, 0, &flush));
        assert_eq!(flushes.get(), 0);
        // Locked: nobody else may take it over.
        assert!(!s2::try_break(&e, s2::LOCKED, &flush));
        let leaf = s2::make_leaf(0x99, s2::LAST_LEVEL, true);
        s2::make(&e, leaf);
        assert!(s2::try_break(&e, leaf, &flush));
        assert_eq!(flushes.get(), 1);
        s2::make(&e, 0);
    }

    /// Stage-2 blocks: a 2M block translates each page under it; a page
    /// map under it breaks it into a table; a block map over the table
    /// replaces it (break-before-make) and hands the table back, freed
    /// under the write side; every table page comes back.
    #[test]
    fn s2_blocks_split_and_collapse() -> Result {
        let before = crate::kpages::table_pages_now();
        {
            let mut mmu = S2Mmu::<KernelPages>::new(1, 40, true).map_err(|_| ENOMEM)?;
            let mut cache = TableCache::<KernelPages>::new();
            let flushes = core::cell::Cell::new(0);
            let flush = || flushes.set(flushes.get() + 1);
            // Never dereferenced: read-only leaves are not marked dirty.
            let (gfn, pfn) = (Gfn::new(0x40000), Pfn::new(0x80000));
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            let m = mmu.map(0, gfn, pfn, false, Level::L2M, &mut cache, &flush);
            assert_eq!(m.map(|o| o.action), Ok(MapAction::Installed));
            let root = mmu.root(0).ok_or(EINVAL)?;
            // SAFETY: `mmu` lives until the end of the block.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 7, false, true, false) };
            assert_eq!(t.map(|t| (t.pfn, t.level)), Ok((pfn + 7, Level::L2M)));
            // A page under the block: break it into a table.
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            let m = mmu.map(
                0,
                gfn + 3,
                Pfn::new(0x1234),
                false,
                Level::L4K,
                &mut cache,
                &flush,
            );
            assert!(m.is_ok());
            assert_eq!(flushes.get(), 1);
            // SAFETY: as above.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 3, false, true, false) };
            assert_eq!(
                t.map(|t| (t.pfn, t.level)),
                Ok((Pfn::new(0x1234), Level::L4K))
            );
            // SAFETY: as above.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 4, false, true, false) };
            assert!(t.is_err());
            let pages = mmu.table_pages();
            // The block again, over the table.
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            let m = mmu.map(0, gfn, pfn, false, Level::L2M, &mut cache, &flush);
            let o = m.map_err(|_| EINVAL)?;
            assert_eq!(o.action, MapAction::Replaced);
            assert_eq!(flushes.get(), 2);
            let t = o.unlinked.ok_or(EINVAL)?;
            // SAFETY: unlinked by the map above, not freed; `&mut mmu`.
            unsafe { mmu.free_unlinked(t) };
            assert_eq!(mmu.table_pages(), pages - 1);
            assert_eq!(mmu.leaves(), 1);
            // SAFETY: as above.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 3, false, true, false) };
            assert_eq!(t.map(|t| (t.pfn, t.level)), Ok((pfn + 3, Level::L2M)));
            assert_eq!(mmu.zap_all(), 1);
        }
        assert_eq!(crate::kpages::table_pages_now(), before);
        Ok(())
    }

    /// A stage-2 MMU on kernel pages: map, translate (the walker sets AF
    /// only with hardware AF), age, relax, zap, and every table page back
    /// when it is dropped.
    #[test]
    fn s2_map_translate_age_zap() -> Result {
        let before = crate::kpages::table_pages_now();
        {
            let mmu = S2Mmu::<KernelPages>::new(2, 40, false).map_err(|_| ENOMEM)?;
            let mut cache = TableCache::<KernelPages>::new();
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            // Any host page will do as the mapped pfn: nothing touches it.
            let page = cache.take().ok_or(ENOMEM)?;
            let pfn = Pfn::new(page);
            let flush = || {};
            let gfn = Gfn::new(0x12345);
            let m = mmu.map(0, gfn, pfn, false, Level::L4K, &mut cache, &flush);
            assert_eq!(m.map(|o| o.action), Ok(MapAction::Installed));
            assert_eq!(
                mmu.map(0, gfn, pfn, false, Level::L2M, &mut cache, &flush),
                Err(MapError::BadGfn)
            );
            let root = mmu.root(0).ok_or(EINVAL)?;
            // SAFETY: `mmu` lives until the end of the block.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn, false, false, false) };
            assert_eq!(t.map(|t| t.pfn), Ok(pfn));
            // SAFETY: as above.
            assert!(unsafe { s2_translate::<KernelPages>(root, gfn, true, false, false) }.is_err());
            // Aged: old, so the walker without hardware AF faults.
            assert!(mmu.age_gfn_range(gfn, gfn + 1, AgeOp::Clear).young);
            assert!(!mmu.age_gfn_range(gfn, gfn + 1, AgeOp::Test).young);
            // SAFETY: as above.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn, false, false, false) };
            assert!(t.is_err());
            assert!(mmu.mkyoung(0, gfn, false));
            // (Read-only only: a writable leaf would mark the page dirty
            // when zapped, and this one is not a page cache page.)
            let again = mmu.map(0, gfn, pfn, false, Level::L4K, &mut cache, &flush);
            assert_eq!(again.map(|o| o.action), Ok(MapAction::Unchanged));
            let mut mmu = mmu;
            let mut z = Zap::new(NoYield);
            S2Mmu::zap_gfn_range(&mut Owned(&mut mmu), &mut z, Gfn::new(0), Gfn::new(1 << 28));
            // No vCPU walks `mmu`: nothing to flush before the free.
            z.flush_and_free(&mut Owned(&mut mmu));
            assert!(z.zapped == 1);
            // SAFETY: as above.
            assert!(unsafe { s2_translate::<KernelPages>(root, gfn, false, true, false) }.is_err());
            // SAFETY: `pfn` came from the cache (`alloc_table()`) and was
            // only ever mapped by `mmu`, whose leaf is zapped.
            unsafe { <KernelPages as crate::mmu::pgtable::PageOps>::free_table(page) };
        }
        assert_eq!(crate::kpages::table_pages_now(), before);
        Ok(())
    }

    /// A read-only walker's unlock of an empty rmap writes nothing (KVM's
    /// `kvm_rmap_unlock_readonly()`).
    #[test]
    fn rmap_readonly_unlock_of_empty() {
        let head = RmapHead::new();
        {
            let preempt = PreemptGuard::new();
            let np = preempt.proof().into();
            let g = head.lock_readonly(&np);
            assert!(g.is_empty());
        }
        assert!(head.is_empty());
    }
}
