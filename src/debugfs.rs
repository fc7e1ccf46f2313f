// SPDX-License-Identifier: GPL-2.0

//! debugfs: a directory per space, `/sys/kernel/debug/secmmu/<pid>-<id>/`
//! (KVM's `<pid>-<fd>` per VM), beside the test hooks of `testhooks.rs`.
//!
//! `stats`: every statistic of the space's stats file ("Statistics" in
//! Documentation/secmmu.rst), one per line, `name value`, a histogram's
//! buckets on its line.
//!
//! `mmu_rmaps_stat`: on x86, the rmaps of every memslot now, by level and
//! by log2 of their length (KVM's `mmu_rmaps_stat`), counted without the
//! MMU lock, a batch at a time.
//!
//! The directory holds a reference on the space and goes when the space's
//! file is closed (SecmmuDevice::release()), waiting for its readers; the
//! space itself may live on in its vCPUs' files.

use crate::{mmu::stats, space::Space};
use core::fmt;
use kernel::{
    debugfs::{Dir, Scope},
    prelude::*,
    str::CString,
    sync::{global_lock, Arc},
};

global_lock! {
    // SAFETY: Initialized by `SpacesRoot::new()`, in the module's init,
    // before any space exists.
    unsafe(uninit) static ROOT: Mutex<Option<Dir>> = None;
}

/// The root of the per-space directories while the module is loaded:
/// cleared when dropped, so the root directory goes with the module.
pub(crate) struct SpacesRoot(());

impl SpacesRoot {
    /// Makes `root` the parent of the spaces' directories.
    ///
    /// # Safety
    ///
    /// Called once, from the module's init, before any space is created.
    pub(crate) unsafe fn new(root: Dir) -> Self {
        // SAFETY: Per the caller: once, before any use of `ROOT`.
        unsafe { ROOT.init() };
        *ROOT.lock() = Some(root);
        SpacesRoot(())
    }
}

impl Drop for SpacesRoot {
    fn drop(&mut self) {
        // No space is left: each held the module.
        *ROOT.lock() = None;
    }
}

/// The debugfs directory of a space; removed when dropped.
pub(crate) type SpaceDir = Pin<KBox<Scope<Arc<Space>>>>;

/// Makes the directory of `space`, for the task `pid`: `None` without
/// debugfs (or when it failed: debugfs is for debugging, and a space
/// works without it).
pub(crate) fn space_dir(space: &Arc<Space>, pid: i32) -> Result<Option<SpaceDir>> {
    let root = ROOT.lock();
    let Some(root) = root.as_ref() else {
        return Ok(None);
    };
    let name = CString::try_from_fmt(fmt!("{}-{}", pid, space.id))?;
    let scope = root.scope(space.clone(), &name, |space, dir| {
        dir.read_callback_file(c"stats", space, &show_stats);
        dir.read_callback_file(c"mmu_rmaps_stat", space, &show_rmaps_stat);
    });
    Ok(Some(KBox::pin_init(scope, GFP_KERNEL)?))
}

/// Values of a space's stats file's data.
const SPACE_DATA: usize = stats::data_len(stats::SPACE_STATS);

fn show_stats(space: &Arc<Space>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut values = [0u64; SPACE_DATA];
    space.stats_values(&mut values);
    let mut off = 0;
    for d in stats::SPACE_STATS {
        let Some(v) = values.get(off..off + d.size) else {
            break;
        };
        write!(f, "{}", d.name)?;
        for x in v {
            write!(f, " {x}")?;
        }
        writeln!(f)?;
        off += d.size;
    }
    Ok(())
}

fn show_rmaps_stat(space: &Arc<Space>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if !space.has_rmaps() {
        return writeln!(f, "no rmaps: not an x86 space");
    }
    let Ok(hist) = space.rmaps_stat() else {
        return writeln!(f, "interrupted");
    };
    // The header: bucket 0 counts empty rmaps, bucket i lengths in
    // [2^(i-1), 2^i).
    write!(f, "level")?;
    for i in 0..stats::RMAP_CHAIN_BUCKETS {
        match i {
            0 => write!(f, " 0")?,
            1 => write!(f, " 1")?,
            _ => write!(f, " {}-{}", 1u64 << (i - 1), (1u64 << i) - 1)?,
        }
    }
    writeln!(f)?;
    for (name, counts) in ["4K", "2M", "1G"].iter().zip(hist.iter()) {
        write!(f, "{name}")?;
        for c in counts {
            write!(f, " {c}")?;
        }
        writeln!(f)?;
    }
    Ok(())
}
