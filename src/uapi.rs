// SPDX-License-Identifier: GPL-2.0

//! The uAPI of `include/uapi/linux/secmmu.h`, in Rust.
//!
//! Keep in step with the header: the selftests use the header, so a
//! mismatch shows up as a failing selftest (and the struct sizes are
//! encoded in the ioctl numbers).

#![allow(non_camel_case_types)]

use kernel::{
    ioctl::{_IO, _IOR, _IOW, _IOWR},
    prelude::*,
    transmute::{AsBytes, FromBytes},
    uaccess::{UserPtr, UserSlice},
};

/// `SECMMU_API_VERSION`.
pub(crate) const API_VERSION: isize = 1;

const SECMMUIO: u32 = 0xB5;

pub(crate) const GET_API_VERSION: u32 = _IO(SECMMUIO, 0x00);
pub(crate) const GET_STATS: u32 = _IOR::<secmmu_stats>(SECMMUIO, 0x01);
pub(crate) const CONFIGURE: u32 = _IOW::<secmmu_config>(SECMMUIO, 0x02);
pub(crate) const SET_MEMSLOT: u32 = _IOW::<secmmu_memslot>(SECMMUIO, 0x03);
pub(crate) const CREATE_VCPU: u32 = _IOW::<secmmu_vcpu_create>(SECMMUIO, 0x04);
pub(crate) const SNAPSHOT: u32 = _IOW::<secmmu_snapshot>(SECMMUIO, 0x05);
pub(crate) const GET_GPC_STATS: u32 = _IOR::<secmmu_gpc_stats>(SECMMUIO, 0x06);
pub(crate) const SET_CLOCK_PAGE: u32 = _IOW::<secmmu_clock_setup>(SECMMUIO, 0x07);
pub(crate) const GET_DIRTY_LOG: u32 = _IOW::<secmmu_dirty_log>(SECMMUIO, 0x08);
pub(crate) const CLEAR_DIRTY_LOG: u32 = _IOW::<secmmu_clear_dirty_log>(SECMMUIO, 0x09);
pub(crate) const RESET_DIRTY_RINGS: u32 = _IO(SECMMUIO, 0x0a);
pub(crate) const GET_STATS_FD: u32 = _IO(SECMMUIO, 0x0b);
pub(crate) const RUN: u32 = _IOWR::<secmmu_run>(SECMMUIO, 0x10);
pub(crate) const ACCESS: u32 = _IOWR::<secmmu_access>(SECMMUIO, 0x11);
pub(crate) const SET_RUN_PAGE: u32 = _IOW::<secmmu_run_page_setup>(SECMMUIO, 0x12);
pub(crate) const GET_VCPU_STATS_FD: u32 = _IO(SECMMUIO, 0x13);
pub(crate) const PRE_FAULT_MEMORY: u32 = _IOWR::<secmmu_pre_fault_memory>(SECMMUIO, 0x14);
pub(crate) const TEST_YOUNG: u32 = _IOW::<secmmu_test_young>(SECMMUIO, 0x20);
pub(crate) const AUDIT: u32 = _IOWR::<secmmu_audit>(SECMMUIO, 0x21);

pub(crate) const FMT_X86_EPT4: u32 = 1;
pub(crate) const FMT_ARM64_S2: u32 = 2;
pub(crate) const IA_BITS_DEFAULT: u32 = 48;
pub(crate) const IA_BITS_MIN_ARM64: u32 = 32;
pub(crate) const CFG_NO_AD: u32 = 1 << 0;
pub(crate) const CFG_DIRTY_LOG_MANUAL_PROTECT: u32 = 1 << 1;
pub(crate) const CFG_DIRTY_LOG_INITIALLY_SET: u32 = 1 << 2;
pub(crate) const CFG_DIRTY_LOG_EAGER_SPLIT: u32 = 1 << 3;
pub(crate) const CFG_DIRTY_LOG_DIRTY_BIT: u32 = 1 << 4;
pub(crate) const CFG_NO_FAULT_AROUND: u32 = 1 << 5;
pub(crate) const CFG_FLAGS: u32 = CFG_NO_AD
    | CFG_DIRTY_LOG_MANUAL_PROTECT
    | CFG_DIRTY_LOG_INITIALLY_SET
    | CFG_DIRTY_LOG_EAGER_SPLIT
    | CFG_DIRTY_LOG_DIRTY_BIT
    | CFG_NO_FAULT_AROUND;
pub(crate) const MAX_ROOTS: u32 = 32;
pub(crate) const MAX_VCPUS: usize = 64;
pub(crate) const SNAPSHOT_MAX: u64 = 1 << 20;
pub(crate) const ACCESS_MAX: u64 = 1 << 32;

pub(crate) const RUN_WRITE: u32 = 1;
pub(crate) const RUN_READ: u32 = 2;
pub(crate) const RUN_VERIFY: u32 = 3;
pub(crate) const EXIT_NONE: u32 = 0;
pub(crate) const EXIT_MEMORY_FAULT: u32 = 1;
pub(crate) const EXIT_SIGNAL: u32 = 2;
pub(crate) const EXIT_DIRTY_RING_FULL: u32 = 3;
/// `SECMMU_DIRTY_LOG_PAGE_OFFSET`: where a vCPU fd maps its dirty ring.
pub(crate) const DIRTY_LOG_PAGE_OFFSET: usize = 64;
pub(crate) const ACCESS_WRITE: u32 = 1 << 0;

/// `struct secmmu_stats`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_stats {
    pub(crate) invalidations: u64,
    pub(crate) invalidations_nonblock: u64,
    pub(crate) invalidated_pages: u64,
    pub(crate) faults: u64,
    pub(crate) fault_retries: u64,
    pub(crate) memory_faults: u64,
    pub(crate) sptes_zapped: u64,
    pub(crate) dirty_pages: u64,
    pub(crate) zap_yields: u64,
    pub(crate) tlb_flushes: u64,
    pub(crate) tlb_flushes_elided: u64,
    pub(crate) rmap_max_chain: u64,
    pub(crate) table_pages: u64,
    pub(crate) slot_zaps: u64,
    pub(crate) releases: u64,
    pub(crate) aging_calls: u64,
    pub(crate) aging_young: u64,
    pub(crate) aging_lockless: u64,
    pub(crate) aging_cleared: u64,
    pub(crate) rmap_contention: u64,
    pub(crate) aging_lost_races: u64,
    pub(crate) access_restores: u64,
    pub(crate) fault_eagain: u64,
    pub(crate) access_flag_faults: u64,
    pub(crate) bbm: u64,
    pub(crate) module_table_pages: u64,
    pub(crate) mappings_4k: u64,
    pub(crate) mappings_2m: u64,
    pub(crate) mappings_1g: u64,
    pub(crate) splits: u64,
    pub(crate) collapses: u64,
    pub(crate) audits: u64,
    pub(crate) audit_mismatches: u64,
    pub(crate) reserved: u64,
}

/// `SECMMU_STATS_NAME_SIZE`: bytes of the id string and of each name.
pub(crate) const STATS_NAME_SIZE: u32 = 48;
pub(crate) const STATS_TYPE_CUMULATIVE: u32 = 0x0;
pub(crate) const STATS_TYPE_INSTANT: u32 = 0x1;
pub(crate) const STATS_TYPE_PEAK: u32 = 0x2;
pub(crate) const STATS_TYPE_LOG_HIST: u32 = 0x4;
pub(crate) const STATS_UNIT_NONE: u32 = 0x0 << 4;
pub(crate) const STATS_BASE_POW10: u32 = 0x0 << 8;

/// `struct secmmu_stats_header` (KVM's `struct kvm_stats_header`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_stats_header {
    pub(crate) flags: u32,
    pub(crate) name_size: u32,
    pub(crate) num_desc: u32,
    pub(crate) id_offset: u32,
    pub(crate) desc_offset: u32,
    pub(crate) data_offset: u32,
}

/// `struct secmmu_stats_desc` (KVM's `struct kvm_stats_desc`) without its
/// name, which follows it in the file (`name_size` bytes).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_stats_desc {
    pub(crate) flags: u32,
    pub(crate) exponent: i16,
    pub(crate) size: u16,
    pub(crate) offset: u32,
    pub(crate) bucket_size: u32,
}

// KVM's layout, which tools parse: no implicit padding anywhere.
const _: () = assert!(size_of::<secmmu_stats_header>() == 24);
const _: () = assert!(size_of::<secmmu_stats_desc>() == 16);

/// `struct secmmu_config`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_config {
    pub(crate) flags: u32,
    pub(crate) format: u32,
    pub(crate) nr_roots: u32,
    pub(crate) ia_bits: u32,
    pub(crate) dirty_ring_size: u32,
    pub(crate) pad: u32,
    pub(crate) reserved: [u64; 3],
}

/// `struct secmmu_memslot`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_memslot {
    pub(crate) slot: u32,
    pub(crate) flags: u32,
    pub(crate) guest_phys_addr: u64,
    pub(crate) memory_size: u64,
    pub(crate) userspace_addr: u64,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_vcpu_create`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_vcpu_create {
    pub(crate) root: u32,
    pub(crate) flags: u32,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_snapshot`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_snapshot {
    pub(crate) root: u32,
    pub(crate) flags: u32,
    pub(crate) gpa: u64,
    pub(crate) npages: u64,
    pub(crate) buf: u64,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_run`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_run {
    pub(crate) op: u32,
    pub(crate) flags: u32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) stride: u64,
    pub(crate) pattern: u64,
    pub(crate) passes: u32,
    pub(crate) pad: u32,
    pub(crate) accesses: u64,
    pub(crate) mismatches: u64,
    pub(crate) first_mismatch: u64,
    pub(crate) exit_gpa: u64,
    pub(crate) exit_reason: u32,
    pub(crate) exit_flags: u32,
    pub(crate) exit_pass: u32,
    pub(crate) pad2: u32,
    pub(crate) reserved: [u64; 4],
}

/// `struct secmmu_access`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_access {
    pub(crate) gpa: u64,
    pub(crate) len: u64,
    pub(crate) buf: u64,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
    pub(crate) done: u64,
    pub(crate) exit_gpa: u64,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_pre_fault_memory` (KVM's `struct kvm_pre_fault_memory`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_pre_fault_memory {
    pub(crate) gpa: u64,
    pub(crate) size: u64,
    pub(crate) flags: u64,
    pub(crate) padding: [u64; 5],
}
const _: () = assert!(size_of::<secmmu_pre_fault_memory>() == 64);

/// `struct secmmu_test_young`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_test_young {
    pub(crate) hva: u64,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_audit`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_audit {
    pub(crate) flags: u32,
    pub(crate) pad: u32,
    pub(crate) leaves: u64,
    pub(crate) mismatches: u64,
    pub(crate) skipped: u64,
    pub(crate) first_gpa: u64,
    pub(crate) first_root: u32,
    pub(crate) pad2: u32,
    pub(crate) pages_4k: u64,
    pub(crate) pages_2m: u64,
    pub(crate) pages_1g: u64,
    pub(crate) reserved: u64,
}

/// `struct secmmu_run_page_setup`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_run_page_setup {
    pub(crate) gpa: u64,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
    pub(crate) reserved: [u64; 2],
}

/// `SECMMU_RUN_PAGE_ENABLE`.
pub(crate) const RUN_PAGE_ENABLE: u32 = 1 << 0;

/// `struct secmmu_run_page`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_run_page {
    pub(crate) exits: u64,
    pub(crate) accesses: u64,
    pub(crate) exit_reason: u32,
    pub(crate) error: i32,
}

/// `struct secmmu_gpc_stats`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_gpc_stats {
    pub(crate) refreshes: u64,
    pub(crate) retries_overlap: u64,
    pub(crate) retries_memslots: u64,
    pub(crate) retries_unrelated: u64,
    pub(crate) invalidations: u64,
    pub(crate) run_page_updates: u64,
    pub(crate) run_page_errors: u64,
    pub(crate) clock_updates: u64,
    pub(crate) clock_misses: u64,
    pub(crate) reserved: [u64; 7],
}

/// `SECMMU_CLOCK_PAGE_ENABLE`.
pub(crate) const CLOCK_PAGE_ENABLE: u32 = 1 << 0;
/// `SECMMU_CLOCK_PERIOD_MIN`, `SECMMU_CLOCK_PERIOD_MAX`.
pub(crate) const CLOCK_PERIOD_MIN: u64 = 10_000;
pub(crate) const CLOCK_PERIOD_MAX: u64 = 1_000_000_000;

/// `struct secmmu_clock_setup`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_clock_setup {
    pub(crate) gpa: u64,
    pub(crate) period_ns: u64,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_clock_page`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_clock_page {
    pub(crate) ticks: u64,
    pub(crate) time_ns: u64,
}

/// `struct secmmu_dirty_log`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_dirty_log {
    pub(crate) slot: u32,
    pub(crate) pad: u32,
    pub(crate) bitmap: u64,
    pub(crate) reserved: [u64; 2],
}

/// `struct secmmu_clear_dirty_log`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct secmmu_clear_dirty_log {
    pub(crate) slot: u32,
    pub(crate) num_pages: u32,
    pub(crate) first_page: u64,
    pub(crate) bitmap: u64,
    pub(crate) reserved: [u64; 2],
}

macro_rules! plain_uapi_struct {
    ($($t:ty),*) => {$(
        // SAFETY: `repr(C)` of integers and integer arrays only, laid out
        // without implicit padding (every gap is an explicit field), so
        // every byte is initialized and every bit pattern is valid.
        unsafe impl AsBytes for $t {}
        // SAFETY: As above.
        unsafe impl FromBytes for $t {}
    )*};
}
plain_uapi_struct!(
    secmmu_stats,
    secmmu_config,
    secmmu_memslot,
    secmmu_vcpu_create,
    secmmu_snapshot,
    secmmu_run,
    secmmu_access,
    secmmu_pre_fault_memory,
    secmmu_test_young,
    secmmu_audit,
    secmmu_run_page_setup,
    secmmu_run_page,
    secmmu_gpc_stats,
    secmmu_clock_setup,
    secmmu_clock_page,
    secmmu_dirty_log,
    secmmu_clear_dirty_log,
    secmmu_stats_header,
    secmmu_stats_desc
);

/// Reads an ioctl's argument struct from user memory.
pub(crate) fn read_arg<T: FromBytes>(arg: usize) -> Result<T> {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .reader()
        .read::<T>()
}

/// Writes an ioctl's result struct back to user memory.
pub(crate) fn write_arg<T: AsBytes>(arg: usize, value: &T) -> Result {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .writer()
        .write(value)
}

/// Rejects nonzero padding and reserved fields (`EINVAL`).
pub(crate) fn check_zero(words: &[u64]) -> Result {
    if words.iter().any(|&w| w != 0) {
        return Err(EINVAL);
    }
    Ok(())
}
