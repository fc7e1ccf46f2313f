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
mod debugfs;
mod dirty_ring;
#[allow(dead_code)]
#[path = "../rust/ext.rs"]
mod ext;
mod fault;
mod format;
mod gpc;
mod kpages;
mod mmu_lock;
mod prefault;
mod space;
mod stats_fd;
mod testhooks;
mod trace;
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
        map_writable_on_read: bool {
            default: true,
            description: "A read fault maps writable when the primary already maps the page writable (0: read-only, for comparison)",
        },
        fault_around: u32 {
            default: 16,
            description: "Pages a 4K fault maps around its own when the primary already maps them writable: an aligned group in the same table (0 or 1: none; at most 64)",
        },
        aging_locked: bool {
            default: false,
            description: "Age (clear_young/test_young) under the MMU lock even where A/D bits allow lockless aging",
        },
        gpc_any_invalidation: bool {
            default: false,
            description: "Refresh guest page caches as KVM 7.3 does (retry while any invalidation runs), for comparison",
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

// Fields drop in order: the device first (no space is left then: each
// held the module), then the spaces' debugfs root, then the hooks.
#[pin_data]
struct SecmmuModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<SecmmuDevice>,
    _spaces: debugfs::SpacesRoot,
    #[pin]
    _hooks: testhooks::TestHooks,
}

impl kernel::InPlaceModule for SecmmuModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // The module's debugfs directory: the test hooks and a directory
        // per space.
        let dir = kernel::debugfs::Dir::new(c"secmmu");
        try_pin_init!(Self {
            _hooks <- testhooks::TestHooks::new(dir.clone()),
            // SAFETY: Once, in the module's init, before the device (and
            // so any space) exists.
            _spaces: unsafe { debugfs::SpacesRoot::new(dir) },
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
        let space = Space::create(
            mm,
            module_parameters::aging_locked.value(),
            module_parameters::max_table_pages.value(),
            module_parameters::gpc_any_invalidation.value(),
            module_parameters::map_writable_on_read.value(),
            module_parameters::fault_around.value(),
        )?;
        space.add_debugfs(task.pid())?;
        Ok(space)
    }

    fn release(space: Arc<Space>, _file: &File) {
        // The debugfs directory holds a reference on the space.
        space.remove_debugfs();
    }

    fn ioctl(space: ArcBorrow<'_, Space>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        space.check_caller()?;
        match cmd {
            uapi::GET_API_VERSION => Ok(uapi::API_VERSION),
            uapi::GET_STATS => uapi::write_arg(arg, &space.stats()).map(|()| 0),
            uapi::GET_STATS_FD => stats_fd::StatsFile::for_space(space.into(), arg),
            uapi::CONFIGURE => space.configure(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::SET_MEMSLOT => space.set_memslot(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::CREATE_VCPU => Vcpu::create(&space.into(), &uapi::read_arg(arg)?),
            uapi::SNAPSHOT => space.snapshot(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::GET_GPC_STATS => uapi::write_arg(arg, &space.gpc_stats()).map(|()| 0),
            uapi::SET_CLOCK_PAGE => space.set_clock_page(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::GET_DIRTY_LOG => space.get_dirty_log(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::CLEAR_DIRTY_LOG => space.clear_dirty_log(&uapi::read_arg(arg)?).map(|()| 0),
            uapi::RESET_DIRTY_RINGS => space.reset_dirty_rings(arg),
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
