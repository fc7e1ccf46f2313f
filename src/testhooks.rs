// SPDX-License-Identifier: GPL-2.0

//! Hooks for tests, in debugfs (root only): `/sys/kernel/debug/secmmu/`.
//!
//! `test_skip_zap`: 0 (the default) or N > 0, in which case every
//! invalidation leaves the 4K gfns that are multiples of N mapped: the
//! incoherence SECMMU_AUDIT must find. Only for memory whose pages stay
//! allocated (the page cache's): a skipped page the primary frees would be
//! used after free. The selftest `audit_detects_stale` sets and clears it.
//!
//! `test_zap_resched`: 0 (the default) or N > 0, in which case a zap
//! that may block acts as if this CPU were wanted every Nth time it asks
//! whether to yield (once per batch of entries): it flushes, frees what it
//! unlinked, drops the MMU lock, reschedules and goes on, as when the
//! scheduler asks. The scheduler asks only when a zap outlasts a slice,
//! which a test under TCG cannot count on; the selftest `zap_yield` sets
//! it to make every large zap yield.
//!
//! `bench_floor` (write-only, benchmarks only): writing "SRC DST LEN"
//! (decimal; SRC and DST page aligned) copies LEN bytes from user address
//! SRC of the writer to DST as SECMMU_ACCESS copies guest memory out (a
//! page at a time, `copy_to_user()` straight from the page), but finds the
//! pages with `get_user_pages_fast()`, 64 at a time, with no secondary
//! tables at all: the floor of a fault-in and copy, which the benchmark
//! prints secmmu's figure against (`selftests/secmmu_bench.c`).
//!
//! `nonblock_zapped` (read-only): the leaves zapped by invalidations that
//! could not block (`mmu_notifier_range_blockable()` false: the OOM reaper
//! and `process_mrelease()`) since the module was loaded, in every space.
//! A space's own counters (SECMMU_GET_STATS) answer only its process,
//! which is the one the OOM reaper reaps: this one tells the test in the
//! parent that the reaper's invalidation found live mappings to zap
//! (secmmu_oom_test).

use crate::ext::{gup::UserPages, pfn, sched};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};
use kernel::{
    debugfs::Dir,
    prelude::*,
    uaccess::{UserPtr, UserSliceReader},
};

static SKIP_ZAP: AtomicU64 = AtomicU64::new(0);
static ZAP_RESCHED: AtomicU64 = AtomicU64::new(0);
static NONBLOCK_ZAPPED: AtomicU64 = AtomicU64::new(0);

/// The `test_skip_zap` setting: 0, or skip the zap of gfns that are
/// multiples of it.
pub(crate) fn skip_zap() -> u64 {
    SKIP_ZAP.load(Ordering::Relaxed)
}

fn show(_: &(), f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", skip_zap())
}

/// The `test_zap_resched` setting: 0, or yield every Nth time a zap that
/// may block asks.
pub(crate) fn zap_resched() -> u64 {
    ZAP_RESCHED.load(Ordering::Relaxed)
}

fn show_zap_resched(_: &(), f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", zap_resched())
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

/// Parses the `N` decimal numbers, separated by white space, written to a
/// hook.
fn read_u64s<const N: usize>(r: &mut UserSliceReader) -> Result<[u64; N]> {
    let mut buf = [0u8; 72];
    let n = r.len();
    if n == 0 || n > buf.len() {
        return Err(EINVAL);
    }
    r.read_slice(&mut buf[..n])?;
    let text = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?;
    let mut values = [0u64; N];
    let mut words = text.split_ascii_whitespace();
    for v in &mut values {
        *v = words.next().ok_or(EINVAL)?.parse().map_err(|_| EINVAL)?;
    }
    if words.next().is_some() {
        return Err(EINVAL);
    }
    Ok(values)
}

/// Parses the decimal number written to a hook.
fn read_u64(r: &mut UserSliceReader) -> Result<u64> {
    read_u64s::<1>(r).map(|[v]| v)
}

fn store(_: &(), r: &mut UserSliceReader) -> Result {
    SKIP_ZAP.store(read_u64(r)?, Ordering::Relaxed);
    Ok(())
}

fn store_zap_resched(_: &(), r: &mut UserSliceReader) -> Result {
    ZAP_RESCHED.store(read_u64(r)?, Ordering::Relaxed);
    Ok(())
}

/// `bench_floor`: the copy described in the module documentation above.
fn store_floor(_: &(), r: &mut UserSliceReader) -> Result {
    const PAGE: usize = kernel::page::PAGE_SIZE;
    let [src, dst, len] = read_u64s::<3>(r)?;
    let (src, dst, len) = (
        usize::try_from(src).map_err(|_| EINVAL)?,
        usize::try_from(dst).map_err(|_| EINVAL)?,
        usize::try_from(len).map_err(|_| EINVAL)?,
    );
    if src % PAGE != 0 || dst % PAGE != 0 || len % PAGE != 0 {
        return Err(EINVAL);
    }
    let mut pages = KBox::new(UserPages::<64>::new(), GFP_KERNEL)?;
    let mut done = 0;
    while done < len {
        if kernel::current!().signal_pending() {
            return Err(EINTR);
        }
        let want = ((len - done) / PAGE).min(64);
        let got = pages.get_fast(src + done, want, false)?;
        for i in 0..got {
            let to = UserPtr::from_addr(dst).wrapping_byte_add(done + i * PAGE);
            // SAFETY: We hold a reference on page `i`, a page of RAM from
            // GUP, in the direct map on a 64-bit kernel.
            unsafe { pfn::copy_to_user(pages.pfn(i), 0, PAGE, to) }?;
        }
        pages.release();
        done += got * PAGE;
        sched::cond_resched();
    }
    Ok(())
}

/// The hooks' debugfs directory; removed when dropped.
#[pin_data]
pub(crate) struct TestHooks {
    #[pin]
    _skip_zap: kernel::debugfs::File<()>,
    #[pin]
    _zap_resched: kernel::debugfs::File<()>,
    #[pin]
    _nonblock_zapped: kernel::debugfs::File<()>,
    #[pin]
    _bench_floor: kernel::debugfs::File<()>,
    _dir: Dir,
}

impl TestHooks {
    /// The hooks, in the module's debugfs directory `dir`.
    pub(crate) fn new(dir: Dir) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            _skip_zap <- dir.read_write_callback_file(c"test_skip_zap", (), &show, &store),
            _zap_resched <- dir.read_write_callback_file(
                c"test_zap_resched",
                (),
                &show_zap_resched,
                &store_zap_resched
            ),
            _nonblock_zapped <- dir.read_callback_file(c"nonblock_zapped", (), &show_nonblock_zapped),
            _bench_floor <- dir.write_callback_file(c"bench_floor", (), &store_floor),
            _dir: dir,
        })
    }
}
