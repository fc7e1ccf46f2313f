// SPDX-License-Identifier: GPL-2.0

//! What the host tests share: the small deterministic generator of the multi-threaded stress
//! tests.
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
