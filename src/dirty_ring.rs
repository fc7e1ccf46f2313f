// SPDX-License-Identifier: GPL-2.0

//! The kernel side of the vCPUs' dirty rings: the memory userspace maps, and
//! the mapping (the ring's logic is the kernel-free
//! [`crate::mmu::dirty_ring`]).
//!
//! A ring lives as long as its vCPU's file, or longer while a mapping holds
//! its pages (`remap_vmalloc_range()` takes a reference on each): the file
//! keeps the vCPU, the vCPU keeps the ring, and the space holds it too for
//! SECMMU_RESET_DIRTY_RINGS until the vCPU gives its id back.

use crate::{
    ext::user_mappable::{self, UserMappable},
    mmu::dirty_ring::{DirtyRing, RingEntry, ENTRY_BYTES},
    uapi,
};
use kernel::{
    mm::virt::{flags as vm_flags, VmaNew},
    prelude::*,
    sync::Arc,
};

/// The entries of a ring: a buffer userspace maps.
pub(crate) struct RingMem(UserMappable);

impl AsRef<[RingEntry]> for RingMem {
    fn as_ref(&self) -> &[RingEntry] {
        let n = self.0.len() / ENTRY_BYTES as usize;
        // SAFETY: `n` entries, page aligned, zeroed when made, alive as long as `self`;
        // `RingEntry` is `repr(C)` atomics, valid for any bits userspace may write.
        unsafe { core::slice::from_raw_parts(self.0.as_ptr().cast::<RingEntry>(), n) }
    }
}

/// A vCPU's dirty ring.
pub(crate) type VcpuRing = DirtyRing<RingMem>;

/// A ring of `entries` free entries (checked by SECMMU_CONFIGURE). May sleep.
pub(crate) fn new_ring(entries: u32) -> Result<Arc<VcpuRing>> {
    let mem = UserMappable::new(entries as usize * ENTRY_BYTES as usize)?;
    Ok(Arc::new(DirtyRing::new(RingMem(mem)), GFP_KERNEL_ACCOUNT)?)
}

/// Maps `ring` into `vma`, an `mmap()` of its vCPU's file (KVM's
/// `kvm_vcpu_mmap()` for the dirty ring): shared, not executable, now or
/// later, and from page [`uapi::DIRTY_LOG_PAGE_OFFSET`] of the file on,
/// within the ring (`EINVAL` otherwise).
pub(crate) fn mmap(ring: Option<&VcpuRing>, vma: &VmaNew) -> Result {
    let ring = ring.ok_or(EINVAL)?;
    let pgoff = user_mappable::vma_pgoff(vma);
    if pgoff < uapi::DIRTY_LOG_PAGE_OFFSET {
        return Err(EINVAL);
    }
    if vma.flags() & vm_flags::SHARED == 0 || vma.executable() {
        return Err(EINVAL);
    }
    vma.try_clear_mayexec()?;
    ring.mem().0.map(vma, pgoff - uapi::DIRTY_LOG_PAGE_OFFSET)
}
