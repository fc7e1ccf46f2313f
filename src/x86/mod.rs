// SPDX-License-Identifier: GPL-2.0

//! x86 pieces of the secondary MMU: the EPT-format SPTEs its page tables are made of, and the
//! shadow-MMU-style EPT MMU built from them.

pub(crate) mod mmu;
pub(crate) mod rmap;
pub(crate) mod spte;
