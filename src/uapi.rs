// SPDX-License-Identifier: GPL-2.0

//! The uAPI of `include/uapi/linux/secmmu.h`, in Rust.
//!
//! Keep in step with the header: the selftests use the header, so a
//! mismatch shows up as a failing selftest.

use kernel::{
    ioctl::{_IO, _IOR},
    transmute::AsBytes,
};

/// `SECMMU_API_VERSION`.
pub(crate) const API_VERSION: isize = 1;

const SECMMUIO: u32 = 0xB5;

/// `SECMMU_GET_API_VERSION`.
pub(crate) const GET_API_VERSION: u32 = _IO(SECMMUIO, 0x00);
/// `SECMMU_GET_STATS`.
pub(crate) const GET_STATS: u32 = _IOR::<secmmu_stats>(SECMMUIO, 0x01);

/// `struct secmmu_stats`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
#[allow(non_camel_case_types)]
pub(crate) struct secmmu_stats {
    pub(crate) invalidations: u64,
    pub(crate) invalidations_nonblock: u64,
    pub(crate) invalidated_pages: u64,
    pub(crate) reserved: [u64; 29],
}

// SAFETY: `secmmu_stats` is `repr(C)` of `u64`s only: no padding, every
// byte initialized.
unsafe impl AsBytes for secmmu_stats {}
