// SPDX-License-Identifier: GPL-2.0

//! secmmu: a secondary MMU as a misc device.
//!
//! `/dev/secmmu`: each open creates a [`space::Space`] bound to the opener's
//! mm through an mmu_notifier. See Documentation/secmmu.rst.
//!
//! Holding a space's file open holds a reference on this module (the misc
//! device's file operations name it as owner), so the module cannot be
//! unloaded while any space exists.

#[path = "../rust/bindings.rs"]
mod bindings;
mod inval;
mod notifier;
mod space;
mod stats;
mod uapi;

// The kernel-free core (shared with the host crate). Parts not yet wired
// into a space are allowed to be unused until the x86 MMU lands.
#[allow(dead_code, unused_imports)]
mod memslot;
#[allow(dead_code, unused_imports)]
mod prim;
#[allow(dead_code, unused_imports)]
mod rmap;
#[allow(dead_code, unused_imports)]
mod x86;

use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
    sync::{Arc, ArcBorrow},
    uaccess::{UserPtr, UserSlice},
};
use space::Space;

module! {
    type: SecmmuModule,
    name: "secmmu",
    authors: ["The secmmu developers"],
    description: "A secondary MMU kept coherent with its process through an mmu_notifier",
    license: "GPL",
}

#[pin_data]
struct SecmmuModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<SecmmuDevice>,
}

impl kernel::InPlaceModule for SecmmuModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
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
        Space::create(mm)
    }

    fn ioctl(space: ArcBorrow<'_, Space>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        space.check_caller()?;
        match cmd {
            uapi::GET_API_VERSION => Ok(uapi::API_VERSION),
            uapi::GET_STATS => {
                let stats = space.stats();
                let size = core::mem::size_of_val(&stats);
                UserSlice::new(UserPtr::from_addr(arg), size)
                    .writer()
                    .write(&stats)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

#[kunit_tests(secmmu)]
mod kunit {
    use crate::inval::checks;

    #[test]
    fn inval_retry_around_one_invalidation() {
        assert!(checks::retry_around_one_invalidation());
    }

    #[test]
    fn inval_nested_invalidations_keep_union() {
        assert!(checks::nested_invalidations_keep_union());
    }
}
