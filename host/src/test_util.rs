// SPDX-License-Identifier: GPL-2.0

//! What the host tests share: the small deterministic generator of the multi-threaded stress
//! tests, and the configuration of the property tests.
//!
//! The single-threaded randomized tests use `proptest`, which generates, shrinks and replays
//! their cases.  The stress tests cannot: their interleavings are not reproducible anyway, and
//! each thread wants a cheap stream of numbers of its own, seeded per thread.

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
