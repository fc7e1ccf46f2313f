// SPDX-License-Identifier: GPL-2.0

//! Bindings for what the kernel's Rust lacks.
//!
//! Everything the kernel already binds is re-exported from
//! [`kernel::bindings`]; `bindings_generated.rs` adds only the `secmmu_*`
//! wrappers of `rust/helpers.c`, generated at build time from
//! `rust/secmmu_helpers.h` with the configured kernel's own bindgen command,
//! into the build's output directory (`$SECMMU_BINDINGS`, set by `Kbuild`).
//! Types in their signatures resolve to the kernel's bindings, so a
//! `mmu_notifier_range` is the same Rust type on both sides.
//!
//! The module is private to `ext` (`rust/ext.rs`): the rest of secmmu uses
//! the kernel through the abstractions there and the kernel crate.

#![allow(
    dead_code,
    improper_ctypes,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

pub(crate) use kernel::bindings::*;
// The generated file refers to `ffi::c_int` and friends when a signature
// has C integer types.
#[allow(unused_imports)]
use kernel::ffi;

// In the build's output directory, which is not this one under `make MO=`.
include!(env!("SECMMU_BINDINGS"));
