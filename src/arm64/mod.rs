// SPDX-License-Identifier: GPL-2.0
//! stub
pub(crate) mod mmu;
