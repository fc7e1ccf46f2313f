// SPDX-License-Identifier: GPL-2.0

//! Files on the anonymous inode: file descriptors backed by an object of
//! the driver, such as KVM's VM and vCPU fds.
//!
//! C header: [`include/linux/anon_inodes.h`](srctree/include/linux/anon_inodes.h)
//!
//! A type implements [`AnonInodeFile`], as a misc device implements
//! `MiscDevice`, and [`getfd`] (or [`getfd_pread`]) makes a file of it:
//! the file's private data is the `T::Ptr` given, handed to each callback
//! borrowed, and to
//! [`AnonInodeFile::release`] by value when the last reference to the file
//! goes. Callbacks the type does not implement stay `NULL` in the
//! `file_operations` (`#[vtable]`). Each file holds a reference on the
//! module that made it.
//!
//! # Examples
//!
//! ```
//! use crate::ext::anon_inode::{self, AnonInodeFile};
//! use kernel::{fs::file::flags, fs::File, prelude::*, sync::{Arc, ArcBorrow}};
//!
//! struct Counter;
//!
//! #[vtable]
//! impl AnonInodeFile for Counter {
//!     type Ptr = Arc<Counter>;
//!
//!     fn ioctl(_me: ArcBorrow<'_, Counter>, _file: &File, cmd: u32, _arg: usize) -> Result<isize> {
//!         Ok(cmd as isize)
//!     }
//! }
//!
//! fn new_counter_fd() -> Result<u32> {
//!     let counter = Arc::new(Counter, GFP_KERNEL)?;
//!     anon_inode::getfd::<Counter>(c"counter", counter, flags::O_RDWR | flags::O_CLOEXEC)
//! }
//! ```

use super::bindings;
use core::marker::PhantomData;
use kernel::{
    error::VTABLE_DEFAULT_ERROR,
    fs::File,
    mm::virt::VmaNew,
    module::this_module,
    prelude::*,
    types::ForeignOwnable,
    uaccess::{UserPtr, UserSlice, UserSliceWriter},
};

/// The operations of a file on the anonymous inode.
#[vtable]
pub(crate) trait AnonInodeFile: Sized {
    /// What kind of pointer the file holds as its private data.
    type Ptr: ForeignOwnable + Send + Sync;

    /// The last reference to the file is gone: the private data is handed
    /// back. The default drops it.
    fn release(data: Self::Ptr, _file: &File) {
        drop(data);
    }

    /// Handles an ioctl on the file.
    fn ioctl(
        _data: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _cmd: u32,
        _arg: usize,
    ) -> Result<isize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Sets up `vma`, a new mapping of the file (`mmap()`): check what is
    /// asked, set the VMA's flags, and map the pages or install the VMA's
    /// operations.
    fn mmap(
        _data: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _vma: &VmaNew,
    ) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Reads from the file at offset `*pos` into `buf` (`read()` at the
    /// file position, `pread()` at its offset): returns the bytes read, 0
    /// at the end, and advances `*pos` by as many. Files made by
    /// [`getfd_pread`] accept `pread()`.
    fn read(
        _data: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _buf: &mut UserSliceWriter,
        _pos: &mut i64,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles an ioctl of a 32-bit task on a 64-bit kernel.
    ///
    /// Only for ioctls whose structures differ between 32 and 64 bits:
    /// without it, [`AnonInodeFile::ioctl`] gets them, the pointer argument
    /// converted (`compat_ptr_ioctl()`).
    #[cfg(CONFIG_COMPAT)]
    fn compat_ioctl(
        _data: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _cmd: u32,
        _arg: usize,
    ) -> Result<isize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// Creates a file of `T` on the anonymous inode, named `name` (what
/// `/proc/self/fd` shows, in brackets), with `data` as its private data,
/// and installs it in a new file descriptor of the current task
/// (`anon_inode_getfd()`). `flags`: `O_CLOEXEC`, and the file's access mode
/// (`O_RDWR`, ...) and status flags.
///
/// Returns the file descriptor. On failure `data` is dropped.
pub(crate) fn getfd<T: AnonInodeFile>(
    name: &'static CStr,
    data: T::Ptr,
    flags: u32,
) -> Result<u32> {
    install::<T>(data, |private| {
        // SAFETY: `name` is a static C string; the ops are a static table
        // whose callbacks take `private_data` as the `T::Ptr` stored here.
        unsafe {
            bindings::anon_inode_getfd(
                name.as_char_ptr(),
                AnonInodeVTable::<T>::build(),
                private,
                flags as c_int,
            )
        }
    })
}

/// [`getfd`] for a file `pread()` may read (`FMODE_PREAD`), as KVM's
/// stats files are (`anon_inode_getfile_fmode()`): with `O_RDONLY` in
/// `flags`, a read-only file that `write()` refuses (`EBADF`).
///
/// Returns the file descriptor. On failure `data` is dropped.
pub(crate) fn getfd_pread<T: AnonInodeFile>(
    name: &'static CStr,
    data: T::Ptr,
    flags: u32,
) -> Result<u32> {
    install::<T>(data, |private| {
        // SAFETY: As in `getfd()`: `name` is a static C string; the ops are
        // a static table whose callbacks take `private_data` as a `T::Ptr`.
        unsafe {
            bindings::secmmu_anon_inode_getfd_pread(
                name.as_char_ptr(),
                AnonInodeVTable::<T>::build(),
                private,
                flags as c_int,
            )
        }
    })
}

/// Hands `data` to `make`, which makes a file owning it as its private data
/// and returns its descriptor, or a negative errno: then no file owns it,
/// and it is dropped.
fn install<T: AnonInodeFile>(data: T::Ptr, make: impl FnOnce(*mut c_void) -> c_int) -> Result<u32> {
    let private = data.into_foreign();
    let fd = make(private);
    if fd < 0 {
        // SAFETY: `private` came from `into_foreign` above, and the failed
        // call made no file that could own it.
        drop(unsafe { T::Ptr::from_foreign(private) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as u32)
}

/// The `file_operations` of the files of a `T`.
struct AnonInodeVTable<T: AnonInodeFile>(PhantomData<T>);

impl<T: AnonInodeFile> AnonInodeVTable<T> {
    /// # Safety
    ///
    /// `file` must be a file made by [`getfd::<T>`](getfd), being released.
    unsafe extern "C" fn release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
        // SAFETY: The release of a file owns its private data, which
        // `getfd()` set to a `T::Ptr`; this is its last use.
        let data = unsafe { T::Ptr::from_foreign((*file).private_data) };
        // SAFETY: The file is valid for the call, and there is no active
        // `fdget_pos()` region on it in this thread.
        T::release(data, unsafe { File::from_raw_file(file) });
        0
    }

    /// # Safety
    ///
    /// `file` must be a file made by [`getfd::<T>`](getfd).
    unsafe extern "C" fn ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
        // SAFETY: An ioctl may borrow the private data: the file, and so the
        // data, lives until the call returns (the release comes after).
        let data = unsafe { T::Ptr::borrow((*file).private_data) };
        // SAFETY: The file is valid for the call, and there is no active
        // `fdget_pos()` region on it in this thread.
        let file = unsafe { File::from_raw_file(file) };
        match T::ioctl(data, file, cmd, arg) {
            Ok(ret) => ret as c_long,
            Err(err) => err.to_errno() as c_long,
        }
    }

    /// # Safety
    ///
    /// `file` must be a file made by [`getfd::<T>`](getfd).
    #[cfg(CONFIG_COMPAT)]
    unsafe extern "C" fn compat_ioctl(
        file: *mut bindings::file,
        cmd: c_uint,
        arg: c_ulong,
    ) -> c_long {
        // SAFETY: As in `ioctl()`.
        let data = unsafe { T::Ptr::borrow((*file).private_data) };
        // SAFETY: As in `ioctl()`.
        let file = unsafe { File::from_raw_file(file) };
        match T::compat_ioctl(data, file, cmd, arg) {
            Ok(ret) => ret as c_long,
            Err(err) => err.to_errno() as c_long,
        }
    }

    /// # Safety
    ///
    /// `file` must be a file made by [`getfd::<T>`](getfd) or
    /// [`getfd_pread::<T>`](getfd_pread), `buf` a user pointer of the
    /// caller's, and `pos` valid for reads and writes for the call.
    unsafe extern "C" fn read(
        file: *mut bindings::file,
        buf: *mut c_char,
        len: usize,
        pos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: As in `ioctl()`: the file and its data live for the call.
        let data = unsafe { T::Ptr::borrow((*file).private_data) };
        // SAFETY: As in `ioctl()`.
        let file = unsafe { File::from_raw_file(file) };
        // A user address: every access through it checks it.
        let mut writer = UserSlice::new(UserPtr::from_addr(buf as usize), len).writer();
        // SAFETY: The VFS passes the position to read at (the file's, under
        // `fdget_pos()`, or `pread()`'s own), valid and unshared for the call.
        let pos = unsafe { &mut *pos };
        match T::read(data, file, &mut writer, pos) {
            Ok(n) => n as isize,
            Err(err) => err.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// `file` must be a file made by [`getfd::<T>`](getfd), and `vma` a
    /// VMA being set up by an `mmap()` of it.
    unsafe extern "C" fn mmap(
        file: *mut bindings::file,
        vma: *mut bindings::vm_area_struct,
    ) -> c_int {
        // SAFETY: As in `ioctl()`: the file and its data live for the call.
        let data = unsafe { T::Ptr::borrow((*file).private_data) };
        // SAFETY: The caller passes a VMA in its initial setup, for the call.
        let vma = unsafe { VmaNew::from_raw(vma) };
        // SAFETY: As in `ioctl()`.
        let file = unsafe { File::from_raw_file(file) };
        match T::mmap(data, file, vma) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    const VTABLE: bindings::file_operations = bindings::file_operations {
        owner: this_module::<T::OwnerModule>().as_ptr(),
        release: Some(Self::release),
        unlocked_ioctl: if T::HAS_IOCTL {
            Some(Self::ioctl)
        } else {
            None
        },
        #[cfg(CONFIG_COMPAT)]
        compat_ioctl: if T::HAS_COMPAT_IOCTL {
            Some(Self::compat_ioctl)
        } else if T::HAS_IOCTL {
            bindings::compat_ptr_ioctl
        } else {
            None
        },
        mmap: if T::HAS_MMAP { Some(Self::mmap) } else { None },
        read: if T::HAS_READ { Some(Self::read) } else { None },
        // Seeking succeeds and does nothing, as on KVM's fds.
        llseek: Some(bindings::noop_llseek),
        ..pin_init::zeroed()
    };

    const fn build() -> &'static bindings::file_operations {
        &Self::VTABLE
    }
}
