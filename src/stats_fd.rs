// SPDX-License-Identifier: GPL-2.0

//! Stats files: SECMMU_GET_STATS_FD and SECMMU_GET_VCPU_STATS_FD, KVM's
//! binary statistics (`KVM_GET_STATS_FD`) for a space and for a vCPU.
//!
//! A stats file is a read-only file on the anonymous inode whose content is
//! a header, the id string, the descriptors and the data, laid out exactly
//! as KVM's (`struct kvm_stats_header`, `struct kvm_stats_desc`; the uAPI
//! comment of SECMMU_GET_STATS_FD, and "Statistics" in
//! Documentation/secmmu.rst). Everything before the data is made once,
//! when the file is; the data is read from the counters at every read,
//! into a snapshot, and only when the read reaches it. A read at any offset
//! and length returns what `kvm_stats_read()` returns: the bytes of the
//! content from there on, as many as asked and there are, 0 at or past the
//! end.
//!
//! The file holds what it reads: the space (an `Arc`, as KVM's stats file
//! holds its VM), or the vCPU's counters, which outlive the vCPU.

use crate::{
    ext::anon_inode::{self, AnonInodeFile},
    mmu::stats::{self, StatDesc, StatKind, VcpuStats},
    space::Space,
    uapi,
};
use kernel::{
    fs::{
        file::flags::{O_CLOEXEC, O_RDONLY},
        File,
    },
    prelude::*,
    str::CString,
    sync::Arc,
    transmute::AsBytes,
    uaccess::UserSliceWriter,
};

/// What a stats file reads its data from.
pub(crate) enum Source {
    /// A space: its counters, its vCPUs' totals, its tables now.
    Space(Arc<Space>),
    /// A vCPU's counters.
    Vcpu(Arc<VcpuStats>),
}

impl Source {
    /// The statistics it has, in the file's order.
    fn descs(&self) -> &'static [StatDesc] {
        match self {
            Source::Space(_) => stats::SPACE_STATS,
            Source::Vcpu(_) => stats::VCPU_STATS,
        }
    }

    /// Reads every statistic now into `out`, in [`Self::descs()`]' order.
    fn values(&self, out: &mut [u64]) {
        match self {
            Source::Space(space) => space.stats_values(out),
            Source::Vcpu(v) => stats::vcpu_values(&v.snapshot(), out),
        }
    }
}

/// An open stats file.
pub(crate) struct StatsFile {
    /// The header, the id string and the descriptors: the content before
    /// the data, fixed for the life of the file.
    head: KVec<u8>,
    source: Source,
}

/// `flags` of a descriptor of kind `kind`: type, unit (none: every
/// secmmu statistic counts things) and base (powers of 10, exponent 0).
fn desc_flags(kind: StatKind) -> u32 {
    let ty = match kind {
        StatKind::Cumulative => uapi::STATS_TYPE_CUMULATIVE,
        StatKind::Instant => uapi::STATS_TYPE_INSTANT,
        StatKind::Peak => uapi::STATS_TYPE_PEAK,
        StatKind::LogHist => uapi::STATS_TYPE_LOG_HIST,
    };
    ty | uapi::STATS_UNIT_NONE | uapi::STATS_BASE_POW10
}

/// Appends `s` NUL-padded to `STATS_NAME_SIZE` bytes: the id string and
/// the names are NUL-terminated, so at most `STATS_NAME_SIZE - 1` bytes.
fn push_name(head: &mut KVec<u8>, s: &[u8]) -> Result {
    let size = uapi::STATS_NAME_SIZE as usize;
    if s.len() >= size {
        return Err(EINVAL);
    }
    head.extend_from_slice(s, GFP_KERNEL)?;
    for _ in s.len()..size {
        head.push(0, GFP_KERNEL)?;
    }
    Ok(())
}

impl StatsFile {
    /// Makes the content before the data of a file with id `id` and the
    /// statistics `descs`, laid out as KVM's: the header, then the id, then
    /// the descriptors, then (at `data_offset`) the data.
    fn head(id: &[u8], descs: &[StatDesc]) -> Result<KVec<u8>> {
        let name_size = uapi::STATS_NAME_SIZE;
        let header_size = size_of::<uapi::secmmu_stats_header>() as u32;
        let desc_size = size_of::<uapi::secmmu_stats_desc>() as u32 + name_size;
        let num_desc = descs.len() as u32;
        let header = uapi::secmmu_stats_header {
            flags: 0,
            name_size,
            num_desc,
            id_offset: header_size,
            desc_offset: header_size + name_size,
            data_offset: header_size + name_size + num_desc * desc_size,
        };
        let mut head = KVec::with_capacity(header.data_offset as usize, GFP_KERNEL)?;
        head.extend_from_slice(header.as_bytes(), GFP_KERNEL)?;
        push_name(&mut head, id)?;
        let mut offset = 0u32;
        for d in descs {
            let desc = uapi::secmmu_stats_desc {
                flags: desc_flags(d.kind),
                exponent: 0,
                size: d.size as u16,
                offset,
                bucket_size: 0,
            };
            head.extend_from_slice(desc.as_bytes(), GFP_KERNEL)?;
            push_name(&mut head, d.name.as_bytes())?;
            offset += (d.size * size_of::<u64>()) as u32;
        }
        Ok(head)
    }

    /// Makes a stats file of `source`, with id `id`, and returns its file
    /// descriptor (read-only, close-on-exec).
    fn create(id: &[u8], source: Source) -> Result<isize> {
        let head = Self::head(id, source.descs())?;
        let file = KBox::new(StatsFile { head, source }, GFP_KERNEL_ACCOUNT)?;
        let fd = anon_inode::getfd_pread::<StatsFile>(c"secmmu-stats", file, O_RDONLY | O_CLOEXEC)?;
        Ok(fd as isize)
    }

    /// SECMMU_GET_STATS_FD on a space's file, with ioctl argument `arg`
    /// (must be 0).
    pub(crate) fn for_space(space: Arc<Space>, arg: usize) -> Result<isize> {
        if arg != 0 {
            return Err(EINVAL);
        }
        let mut id = KVec::new();
        write_id(&mut id, format_args!("secmmu-{}", kernel::current!().pid()))?;
        Self::create(&id, Source::Space(space))
    }

    /// SECMMU_GET_VCPU_STATS_FD on the file of vCPU `idx`, whose counters
    /// are `stats`, with ioctl argument `arg` (must be 0).
    pub(crate) fn for_vcpu(stats: Arc<VcpuStats>, idx: usize, arg: usize) -> Result<isize> {
        if arg != 0 {
            return Err(EINVAL);
        }
        let mut id = KVec::new();
        let pid = kernel::current!().pid();
        write_id(&mut id, format_args!("secmmu-{pid}/vcpu{idx}"))?;
        Self::create(&id, Source::Vcpu(stats))
    }

    /// The whole content's length: what is before the data, and the data.
    fn len(&self) -> usize {
        self.head.len() + stats::data_len(self.source.descs()) * size_of::<u64>()
    }
}

/// Formats an id string into `id`.
fn write_id(id: &mut KVec<u8>, args: core::fmt::Arguments<'_>) -> Result {
    let s = CString::try_from_fmt(args)?;
    id.extend_from_slice(s.to_bytes(), GFP_KERNEL)?;
    Ok(())
}

#[vtable]
impl AnonInodeFile for StatsFile {
    type Ptr = KBox<StatsFile>;

    /// `kvm_stats_read()`: the content from `*pos` on, at most
    /// `buf.len()` bytes of it, the data read now. A read that fails to
    /// copy (`EFAULT`) leaves `*pos` alone.
    fn read(
        me: &StatsFile,
        _file: &File,
        buf: &mut UserSliceWriter,
        pos: &mut i64,
    ) -> Result<usize> {
        let total = me.len();
        // The VFS refuses negative offsets; past the end there is nothing.
        let Ok(start) = usize::try_from(*pos) else {
            return Err(EINVAL);
        };
        if start >= total {
            return Ok(0);
        }
        let len = buf.len().min(total - start);
        let end = start + len;
        let head = me.head.len();
        if start < head {
            buf.write_slice(&me.head[start..end.min(head)])?;
        }
        if end > head {
            let descs = me.source.descs();
            let mut data = KVec::from_elem(0u64, stats::data_len(descs), GFP_KERNEL)?;
            me.source.values(&mut data);
            let bytes = AsBytes::as_bytes(data.as_slice());
            buf.write_slice(&bytes[start.max(head) - head..end - head])?;
        }
        *pos += len as i64;
        Ok(len)
    }
}
