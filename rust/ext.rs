// SPDX-License-Identifier: GPL-2.0

//! Kernel abstractions secmmu needs that the kernel crate (Linux 7.3) lacks.
//!
//! Each file is written as it would be proposed for `rust/kernel/`: safe
//! types over the C API, with the rules of the C side in their docs. The
//! secmmu code in `src/` uses the kernel through these and the kernel crate
//! only, never through raw bindings.
//!
//! Their API is what the C side offers, not trimmed to what secmmu calls
//! today, so some items have no user yet.

// The raw bindings: private to these abstractions.
mod bindings;

pub(crate) mod anon_inode;
pub(crate) mod gup;
pub(crate) mod mm;
pub(crate) mod mmu_notifier;
pub(crate) mod pfn;
pub(crate) mod preempt;
pub(crate) mod raw_spinlock;
pub(crate) mod rcu;
pub(crate) mod rwlock;
pub(crate) mod sched;
pub(crate) mod tracepoint;
pub(crate) mod user_mappable;
