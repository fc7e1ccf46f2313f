// SPDX-License-Identifier: GPL-2.0

//! The kernel-free MMU core: what a secondary MMU is, whatever its page-table
//! format and whatever kernel it runs in.
//!
//! It uses no `kernel::` or `std::` item except through [`prim`], so the
//! module and the host crate (`../host`: cargo test, proptest, loom) compile
//! the same files. The kernel glue (`../*.rs`) and the formats (`../x86/`,
//! `../arm64/`) build on it; it builds on nothing of theirs.

pub(crate) mod addr;
pub(crate) mod aging;
pub(crate) mod dirty;
pub(crate) mod dirty_ring;
pub(crate) mod fault;
pub(crate) mod inval;
pub(crate) mod level;
pub(crate) mod memslot;
pub(crate) mod pfncache;
pub(crate) mod pgtable;
pub(crate) mod prim;
pub(crate) mod stats;
pub(crate) mod tlb;
pub(crate) mod walk;
pub(crate) mod zap;
