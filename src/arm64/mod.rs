// SPDX-License-Identifier: GPL-2.0

//! arm64 pieces of the secondary MMU: the stage-2 descriptors its page tables are made of, and
//! the stage-2 MMU built from them, whose faults and aging run in parallel under the read side
//! of the MMU lock.

pub(crate) mod mmu;
pub(crate) mod pte;
