// SPDX-License-Identifier: GPL-2.0

//! Host build of secmmu's kernel-free code: the rmap and the x86 SPTE format, compiled from the
//! same files as the kernel module, with `std` and (under `--cfg loom`) loom behind
//! `src/prim.rs`.  It exists to run their unit and loom tests; see `README.md`.
//!
//! The module tree mirrors the kernel crate root (`mod prim; mod rmap; mod x86;`), so that
//! `crate::prim`, `crate::rmap` and `crate::x86::spte` resolve the same in both.

// The items are for the kernel module; here only the unit tests use them (the loom build runs
// just the rmap models).
#![cfg_attr(any(not(test), loom), allow(dead_code))]

#[path = "../../src/prim.rs"]
mod prim;

#[path = "../../src/rmap.rs"]
pub mod rmap;

#[path = "../../src/x86/mod.rs"]
pub mod x86;
