// SPDX-License-Identifier: GPL-2.0

//! secmmu: a secondary MMU as a misc device.
//!
//! `/dev/secmmu`: each open creates a [`space::Space`] bound to the opener's
//! mm through an mmu_notifier. See Documentation/secmmu.rst.
//!
//! Holding a space's file open holds a reference on this module (the misc
//! device's file operations name it as owner), so the module cannot be
//! unloaded while any space exists.

// Kernel abstractions the kernel crate lacks, written for rust/kernel/:
// the only code that uses raw bindings.
#[allow(dead_code)]
#[path = "../rust/ext.rs"]
mod ext;
mod fault;
mod format;
mod kpages;
mod mmu_lock;
mod space;
mod testhooks;
mod uapi;
mod vcpu;

// The kernel-free MMU core and the two page-table formats, shared with the
// host crate (../host). Items only the host tests use are not dead code.
#[allow(dead_code)]
mod arm64;
#[allow(dead_code)]
mod mmu;
#[allow(dead_code)]
mod x86;

use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
    sync::{Arc, ArcBorrow},
};
use space::Space;
use vcpu::Vcpu;

module! {
    type: SecmmuModule,
    name: "secmmu",
    authors: ["The secmmu developers"],
    description: "A secondary MMU kept coherent with its process through an mmu_notifier",
    license: "GPL",
    params: {
        aging_locked: bool {
            default: false,
            description: "Age (clear_young/test_young) under the MMU lock even where A/D bits allow lockless aging",
        },
        max_table_pages: u64 {
            default: 262144,
            description: "Page-table pages one space may hold (default 1 GiB worth); past it, faults fail with ENOSPC",
        },
    },
}

// secmmu keeps one guest page in one host page: gfns would alias inside
// larger pages.
const _: () = assert!(
    kernel::page::PAGE_SIZE == 4096,
    "secmmu needs a kernel with 4K pages (CONFIG_ARM64_4K_PAGES on arm64)"
);

// Every vCPU has its fault's watch on the invalidations.
const _: () = assert!(mmu::inval::MAX_WATCHES == uapi::MAX_VCPUS);

#[pin_data]
struct SecmmuModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<SecmmuDevice>,
    #[pin]
    _hooks: testhooks::TestHooks,
}

impl kernel::InPlaceModule for SecmmuModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            _hooks <- testhooks::TestHooks::new(),
            _miscdev <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"secmmu" }),
        })
    }
}

/// The file operations of `/dev/secmmu`.
struct SecmmuDevice;

#[vtable]
impl MiscDevice for SecmmuDevice {
    type Ptr = Arc<Space>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Arc<Space>> {
        let task = kernel::current!();
        // A kernel thread has no mm to mirror.
        let mm = task.mm().ok_or(EINVAL)?;
        Space::create(
            mm,
            module_parameters::aging_locked.value(),
            module_parameters::max_table_pages.value(),
        )
    }

    fn ioctl(space: ArcBorrow<'_, Space>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        space.check_caller()?;
        match cmd {
            uapi::GET_API_VERSION => Ok(uapi::API_VERSION),
            uapi::GET_STATS => uapi::write_arg(arg, &space.stats()).map(|()| 0),
            uapi::CONFIGURE => space.configure(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::SET_MEMSLOT => space.set_memslot(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::CREATE_VCPU => Vcpu::create(&space.into(), &uapi::read_arg(arg)?),
            uapi::SNAPSHOT => space.snapshot(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::TEST_YOUNG => space.test_young_ioctl(&uapi::read_arg(arg)?),
            uapi::AUDIT => {
                let mut req: uapi::secmmu_audit = uapi::read_arg(arg)?;
                space.audit(&mut req)?;
                uapi::write_arg(arg, &req).map(|()| 0)
            }
            _ => Err(ENOTTY),
        }
    }
}

#[kunit_tests(secmmu)]
mod kunit {
    //! In-kernel checks of the kernel-free core, built with the kernel's
    //! compiler and allocator (the host crate runs the exhaustive ones).
    use crate::{
        arm64::{
            mmu::{translate as s2_translate, S2Mmu},
            pte as s2,
        },
        ext::{preempt::PreemptGuard, rwlock::new_rwlock},
        kpages::KernelPages,
        mmu::aging::AgeOp,
        mmu::inval::checks,
        mmu::pgtable::{MapAction, MapError, MapLevel, TableCache},
        mmu::prim::{AtomicU64, Ordering},
        mmu::zap::{NoYield, Owned, Zap},
        mmu_lock::write_locked,
        x86::rmap::{DescCache, RmapHead, PTE_LIST_EXT},
        x86::spte::{self, Level},
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
        for level in 1..=s2::LAST_LEVEL {
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
        assert!(s2::is_table(t, 2) && s2::pfn(t) == 0x1234);
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
            let (gfn, pfn) = (0x40000u64, 0x80000u64);
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            let m = mmu.map(0, gfn, pfn, false, MapLevel::L2M, &mut cache, &flush);
            assert_eq!(m.map(|o| o.action), Ok(MapAction::Installed));
            let root = mmu.root(0).ok_or(EINVAL)?;
            // SAFETY: `mmu` lives until the end of the block.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 7, false, true) };
            assert_eq!(t.map(|t| (t.pfn, t.level)), Ok((pfn + 7, MapLevel::L2M)));
            // A page under the block: break it into a table.
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            let m = mmu.map(0, gfn + 3, 0x1234, false, MapLevel::L4K, &mut cache, &flush);
            assert!(m.is_ok());
            assert_eq!(flushes.get(), 1);
            // SAFETY: as above.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 3, false, true) };
            assert_eq!(t.map(|t| (t.pfn, t.level)), Ok((0x1234, MapLevel::L4K)));
            // SAFETY: as above.
            assert!(unsafe { s2_translate::<KernelPages>(root, gfn + 4, false, true) }.is_err());
            let pages = mmu.table_pages();
            // The block again, over the table.
            cache.topup(mmu.map_min_tables()).map_err(|_| ENOMEM)?;
            let m = mmu.map(0, gfn, pfn, false, MapLevel::L2M, &mut cache, &flush);
            let o = m.map_err(|_| EINVAL)?;
            assert_eq!(o.action, MapAction::Replaced);
            assert_eq!(flushes.get(), 2);
            let t = o.unlinked.ok_or(EINVAL)?;
            // SAFETY: unlinked by the map above, not freed; `&mut mmu`.
            unsafe { mmu.free_unlinked(t) };
            assert_eq!(mmu.table_pages(), pages - 1);
            assert_eq!(mmu.leaves(), 1);
            // SAFETY: as above.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn + 3, false, true) };
            assert_eq!(t.map(|t| (t.pfn, t.level)), Ok((pfn + 3, MapLevel::L2M)));
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
            let pfn = cache.take().ok_or(ENOMEM)?;
            let flush = || {};
            let gfn = 0x12345;
            let m = mmu.map(0, gfn, pfn, false, MapLevel::L4K, &mut cache, &flush);
            assert_eq!(m.map(|o| o.action), Ok(MapAction::Installed));
            assert_eq!(
                mmu.map(0, gfn, pfn, false, MapLevel::L2M, &mut cache, &flush),
                Err(MapError::BadGfn)
            );
            let root = mmu.root(0).ok_or(EINVAL)?;
            // SAFETY: `mmu` lives until the end of the block.
            let t = unsafe { s2_translate::<KernelPages>(root, gfn, false, false) };
            assert_eq!(t.map(|t| t.pfn), Ok(pfn));
            // SAFETY: as above.
            assert!(unsafe { s2_translate::<KernelPages>(root, gfn, true, false) }.is_err());
            // Aged: old, so the walker without hardware AF faults.
            assert!(mmu.age_gfn_range(gfn, gfn + 1, AgeOp::Clear).young);
            assert!(!mmu.age_gfn_range(gfn, gfn + 1, AgeOp::Test).young);
            // SAFETY: as above.
            assert!(unsafe { s2_translate::<KernelPages>(root, gfn, false, false) }.is_err());
            assert!(mmu.mkyoung(0, gfn, false));
            // (Read-only only: a writable leaf would mark the page dirty
            // when zapped, and this one is not a page cache page.)
            let again = mmu.map(0, gfn, pfn, false, MapLevel::L4K, &mut cache, &flush);
            assert_eq!(again.map(|o| o.action), Ok(MapAction::Unchanged));
            let mut mmu = mmu;
            let mut z = Zap::new(NoYield);
            S2Mmu::zap_gfn_range(&mut Owned(&mut mmu), &mut z, 0, 1 << 28);
            // No vCPU walks `mmu`: nothing to flush before the free.
            z.flush_and_free(&mut Owned(&mut mmu));
            assert!(z.zapped == 1);
            // SAFETY: as above.
            assert!(unsafe { s2_translate::<KernelPages>(root, gfn, false, true) }.is_err());
            // SAFETY: `pfn` came from the cache (`alloc_table()`) and was
            // only ever mapped by `mmu`, whose leaf is zapped.
            unsafe { <KernelPages as crate::mmu::pgtable::PageOps>::free_table(pfn) };
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
