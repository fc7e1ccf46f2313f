// SPDX-License-Identifier: GPL-2.0

//! Hooks for tests, in debugfs (root only): `/sys/kernel/debug/secmmu/`.
//!
//! `test_skip_zap`: 0 (the default) or N > 0, in which case every
//! invalidation leaves the 4K gfns that are multiples of N mapped: the
//! incoherence SECMMU_AUDIT must find. Only for memory whose pages stay
//! allocated (the page cache's): a skipped page the primary frees would be
//! used after free. The selftest `audit_detects_stale` sets and clears it.
//!
//! `nonblock_zapped` (read-only): the leaves zapped by invalidations that
//! could not block (`mmu_notifier_range_blockable()` false: the OOM reaper
//! and `process_mrelease()`) since the module was loaded, in every space.
//! A space's own counters (SECMMU_GET_STATS) answer only its process,
//! which is the one the OOM reaper reaps: this one tells the test in the
//! parent that the reaper's invalidation found live mappings to zap
//! (secmmu_oom_test).

use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};
use kernel::{debugfs::Dir, prelude::*, uaccess::UserSliceReader};

static SKIP_ZAP: AtomicU64 = AtomicU64::new(0);
static NONBLOCK_ZAPPED: AtomicU64 = AtomicU64::new(0);

/// The `test_skip_zap` setting: 0, or skip the zap of gfns that are
/// multiples of it.
pub(crate) fn skip_zap() -> u64 {
    SKIP_ZAP.load(Ordering::Relaxed)
}

fn show(_: &(), f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", skip_zap())
}

/// Counts `n` leaves zapped by an invalidation that could not block.
/// Never sleeps: called from such an invalidation.
pub(crate) fn count_nonblock_zapped(n: u64) {
    if n != 0 {
        NONBLOCK_ZAPPED.fetch_add(n, Ordering::Relaxed);
    }
}

fn show_nonblock_zapped(_: &(), f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", NONBLOCK_ZAPPED.load(Ordering::Relaxed))
}

fn store(_: &(), r: &mut UserSliceReader) -> Result {
    let mut buf = [0u8; 24];
    let n = r.len();
    if n == 0 || n > buf.len() {
        return Err(EINVAL);
    }
    r.read_slice(&mut buf[..n])?;
    let text = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?;
    let v = text.trim().parse::<u64>().map_err(|_| EINVAL)?;
    SKIP_ZAP.store(v, Ordering::Relaxed);
    Ok(())
}

/// The hooks' debugfs directory; removed when dropped.
#[pin_data]
pub(crate) struct TestHooks {
    #[pin]
    _skip_zap: kernel::debugfs::File<()>,
    #[pin]
    _nonblock_zapped: kernel::debugfs::File<()>,
    _dir: Dir,
}

impl TestHooks {
    pub(crate) fn new() -> impl PinInit<Self, Error> {
        let dir = Dir::new(c"secmmu");
        try_pin_init!(Self {
            _skip_zap <- dir.read_write_callback_file(c"test_skip_zap", (), &show, &store),
            _nonblock_zapped <- dir.read_callback_file(c"nonblock_zapped", (), &show_nonblock_zapped),
            _dir: dir,
        })
    }
}
