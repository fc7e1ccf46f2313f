// SPDX-License-Identifier: GPL-2.0

//! Host build of secmmu's kernel-free code: the rmap, the memslots, the page-table pieces common
//! to all formats, the page-table walker, the x86 SPTE format and MMU, the arm64 stage-2 format and MMU, aging, and the
//! software TLB, compiled from the same files as the kernel module, with `std` and (under
//! `--cfg loom`) loom behind `src/mmu/prim.rs`.
//! It exists to run their unit, stress and loom tests; see `README.md`.
//!
//! The module tree mirrors the kernel crate root (`mod prim; mod rmap; mod x86; ...`), so that
//! `crate::mmu::prim`, `crate::x86::rmap`, `crate::mmu::pgtable` and `crate::x86::spte` resolve the same in
//! both.

// The items are for the kernel module; here only the unit tests use them (the loom build runs
// just the loom models).
#![cfg_attr(any(not(test), loom), allow(dead_code))]

// The whole core, though the tests here use only some of it (the statistics
// and the memslot flags serve the kernel glue).
#[path = "../../src/mmu/mod.rs"]
#[allow(dead_code, clippy::identity_op)]
pub mod mmu;

#[path = "../../src/x86/mod.rs"]
pub mod x86;

#[path = "../../src/arm64/mod.rs"]
pub mod arm64;

// Host table pages: not under loom, whose atomics cannot live in raw zeroed memory.
#[cfg(not(loom))]
pub mod host_pages;

// The generator of the stress tests and the configuration of the property tests.
#[cfg(all(test, not(loom)))]
mod test_util;

#[cfg(all(test, not(loom)))]
mod rmap_props;

#[cfg(all(test, not(loom)))]
mod tlb_props;

#[cfg(all(test, not(loom)))]
mod mmu_props;

// The x86 MMU's memslot set, as the kernel glue keeps it, for the tests.
#[cfg(all(test, not(loom)))]
mod x86_slots;

#[cfg(all(test, not(loom)))]
mod mmu_tests;

#[cfg(all(test, not(loom)))]
mod aging_tests;

#[cfg(all(test, loom))]
mod aging_loom;

#[cfg(all(test, not(loom)))]
mod s2_tests;

#[cfg(all(test, not(loom)))]
mod leaf_walk_tests;

#[cfg(all(test, loom))]
mod s2_loom;

#[cfg(all(test, loom))]
mod gpc_loom;

#[cfg(all(test, loom))]
mod ring_loom;

#[cfg(all(test, not(loom)))]
mod walk_tests;

// Per-vCPU statistics against shared atomics (an ignored timing harness).
#[cfg(all(test, not(loom)))]
mod stats_bench;
