// SPDX-License-Identifier: GPL-2.0

//! What the host tests share: the small deterministic generator of the multi-threaded stress
//! tests, the configuration of the property tests, and a zap's hook and lock that log what the
//! zap driver asks of them.
//!
//! The single-threaded randomized tests use `proptest`, which generates, shrinks and replays
//! their cases.  The stress tests cannot: their interleavings are not reproducible anyway, and
//! each thread wants a cheap stream of numbers of its own, seeded per thread.

use std::cell::RefCell;
use std::rc::Rc;

use crate::mmu::addr::Gfn;
use crate::mmu::dirty::{Split, SplitAt};
use crate::mmu::zap::{Yield, Zap, ZapLock, ZapTables};

/// A small deterministic generator (xorshift64).  Seed it with anything but 0.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next number of the stream.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`, which must not be 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The configuration of a property test: `cases` cases, few enough that the whole `cargo test`
/// stays quick, unless `PROPTEST_CASES` asks for another number (to search longer locally).
/// Failing cases are shrunk and reported, but not saved under the source tree: keep one worth
/// keeping as a test of its own.
pub(crate) fn prop_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// What a zap asked of a test's [`TestYield`] and [`TestLock`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ZapEvent {
    /// Asked whether to yield, and the answer.
    Poll(bool),
    /// Flushed the TLBs.
    Flush,
    /// A flush elided: nothing cleared or unlinked since the last.
    Elided,
    /// Dropped the lock and took it again.
    Resched,
}

/// The events of a zap, each with the number of table pages the host had freed when it came.
pub(crate) type ZapLog = Rc<RefCell<Vec<(ZapEvent, u64)>>>;

/// A zap's [`Yield`] for the tests: asks `stop` whether to yield, and logs what it is asked,
/// with `frees()` (the table pages freed so far) at each event.
pub(crate) struct TestYield<S, F> {
    pub(crate) stop: S,
    pub(crate) frees: F,
    pub(crate) log: ZapLog,
}

impl<S: FnMut() -> bool, F: Fn() -> u64> Yield for TestYield<S, F> {
    fn should_yield(&mut self) -> bool {
        let y = (self.stop)();
        self.log
            .borrow_mut()
            .push((ZapEvent::Poll(y), (self.frees)()));
        y
    }

    fn flush_tlbs(&mut self) {
        self.log
            .borrow_mut()
            .push((ZapEvent::Flush, (self.frees)()));
    }

    fn flush_elided(&mut self) {
        self.log
            .borrow_mut()
            .push((ZapEvent::Elided, (self.frees)()));
    }
}

/// A zap's [`ZapLock`] for the tests, over tables the test owns: a yield logs, and calls
/// `at_yield` on the tables, which the zap holds no reference into then.
pub(crate) struct TestLock<'m, M, A> {
    pub(crate) mmu: &'m mut M,
    pub(crate) at_yield: A,
    pub(crate) frees: fn() -> u64,
    pub(crate) log: ZapLog,
}

impl<M: ZapTables, A: FnMut(&mut M)> ZapLock for TestLock<'_, M, A> {
    type Mmu = M;

    fn mmu(&mut self) -> Option<&mut M> {
        Some(self.mmu)
    }

    fn resched(&mut self) {
        self.log
            .borrow_mut()
            .push((ZapEvent::Resched, (self.frees)()));
        (self.at_yield)(self.mmu);
    }
}

/// Checks the yield protocol on the events of a zap that ended with `Zap::flush_and_free()`:
/// every yield right after one flush (real or elided), right after the poll that asked for it;
/// every flush after such a poll, or where the list of unlinked tables was full, or at the end;
/// and table pages freed only right after a real flush (`frees_now`: the pages freed after the
/// last event).  Returns the number of yields.
pub(crate) fn check_zap_log(log: &ZapLog, frees_now: u64) -> usize {
    use ZapEvent::*;
    let log = log.borrow();
    let mut yields = 0;
    for (i, &(e, frees)) in log.iter().enumerate() {
        if e == Resched {
            assert!(i >= 2, "{log:?}");
            assert!(
                matches!(log[i - 1].0, Flush | Elided),
                "yield without a flush: {log:?}"
            );
            assert_eq!(log[i - 2].0, Poll(true), "yield not asked for: {log:?}");
            yields += 1;
        }
        if e == Poll(true) {
            // The flush right after it, then the yield.
            assert!(
                matches!(log.get(i + 1).map(|e| e.0), Some(Flush | Elided)),
                "{log:?}"
            );
            assert_eq!(log.get(i + 2).map(|e| e.0), Some(Resched), "{log:?}");
        }
        // Pages freed since the previous event: only right after a real flush.
        if i > 0 && frees != log[i - 1].1 {
            assert_eq!(log[i - 1].0, Flush, "tables freed without a flush: {log:?}");
        }
    }
    if let Some(&(e, frees)) = log.last() {
        assert!(
            frees == frees_now || e == Flush,
            "tables freed without a flush: {log:?}"
        );
    }
    yields
}

/// The flushes (real or elided) in `log` that no poll asked for: for a full list of unlinked
/// tables, and the one at the end.
pub(crate) fn unasked_flushes(log: &[(ZapEvent, u64)]) -> usize {
    log.iter()
        .enumerate()
        .filter(|&(i, e)| {
            matches!(e.0, ZapEvent::Flush | ZapEvent::Elided)
                && (i == 0 || log[i - 1].0 != ZapEvent::Poll(true))
        })
        .count()
}

/// What a zap run by [`run_zap()`] did.
#[derive(Debug)]
pub(crate) struct ZapRun {
    /// Leaves cleared.
    pub(crate) zapped: u64,
    /// ... of which dirty.
    pub(crate) dirty: u64,
    /// rmaps or table entries visited.
    pub(crate) visited: u64,
    /// Tables unlinked.
    pub(crate) unlinked_tables: u64,
    /// TLB flushes (not elided).
    pub(crate) flushes: usize,
    /// Yields of the lock.
    pub(crate) yields: usize,
    /// Polls that did not yield.
    pub(crate) polls: usize,
    /// Flushes (real or elided) for a full list of unlinked tables: neither asked by a poll,
    /// nor the one at the end.
    pub(crate) full: usize,
    /// The events.
    pub(crate) log: Vec<(ZapEvent, u64)>,
}

/// Runs `zap` (a format's `zap_gfn_range()`) on `mmu` as the kernel's caller does: asking
/// `stop` whether to yield, calling `at_yield` on the tables at every yield, then flushing and
/// freeing at the end; checks the yield protocol on what it logged ([`check_zap_log()`]).
/// `frees` counts the table pages the host freed.
pub(crate) fn run_zap<M, S, A>(
    mmu: &mut M,
    frees: fn() -> u64,
    stop: S,
    at_yield: A,
    zap: impl FnOnce(&mut TestLock<'_, M, A>, &mut Zap<TestYield<S, fn() -> u64>>),
) -> ZapRun
where
    M: ZapTables,
    S: FnMut() -> bool,
    A: FnMut(&mut M),
{
    let log = ZapLog::default();
    let mut lock = TestLock {
        mmu,
        at_yield,
        frees,
        log: log.clone(),
    };
    let mut z = Zap::new(TestYield {
        stop,
        frees,
        log: log.clone(),
    });
    zap(&mut lock, &mut z);
    z.flush_and_free(&mut lock);
    let yields = check_zap_log(&log, frees());
    let log = log.take();
    let count = |e| log.iter().filter(|l| l.0 == e).count();
    let unasked = unasked_flushes(&log);
    ZapRun {
        zapped: z.zapped,
        dirty: z.dirty,
        visited: z.visited,
        unlinked_tables: z.unlinked,
        flushes: count(ZapEvent::Flush),
        yields,
        polls: count(ZapEvent::Poll(false)),
        full: unasked - 1,
        log,
    }
}

/// A zap's [`Yield`] that never yields, and flushes by calling its function (which asks the
/// test's vCPUs to flush).
pub(crate) struct FlushWith<F>(pub(crate) F);

impl<F: FnMut()> Yield for FlushWith<F> {
    fn should_yield(&mut self) -> bool {
        false
    }

    fn flush_tlbs(&mut self) {
        (self.0)()
    }

    fn flush_elided(&mut self) {}
}

/// Drives an eager split of a range from `start` as the kernel glue does: `step` tops up its
/// caches and splits from where the last call stopped, until a call finishes.  Returns the
/// total ([`Split::split`], and whether the table limit stopped it) and the number of calls.
pub(crate) fn drive_split(start: Gfn, mut step: impl FnMut(SplitAt) -> Split) -> (Split, usize) {
    let (mut total, mut calls) = (Split::default(), 0);
    let mut at = SplitAt::new(start);
    loop {
        let done = step(at);
        calls += 1;
        total.split += done.split;
        total.limited |= done.limited;
        match done.resume {
            Some(next) => at = next,
            None => return (total, calls),
        }
    }
}
