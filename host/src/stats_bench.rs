// SPDX-License-Identifier: GPL-2.0

//! What per-vCPU statistics save: two threads counting faults, each in a
//! [`Counter`] of the space they share (a locked `fetch_add` on one cache line, as every fault
//! did before per-vCPU counters) and each in its own [`VcpuStats`] (the single writer's relaxed
//! load and store, on lines of its own).  A timing harness, not a test:
//! `cargo test --release -- --ignored --nocapture stats_counter_cost` (`make bench-host`).

use crate::mmu::stats::{Counter, Stats, VcpuStats};
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// Increments per thread and round.
const N: u64 = 20_000_000;
/// Rounds of each kind, interleaved; the best counts (the least disturbed by the host).
const ROUNDS: usize = 5;

/// Runs `body(thread)` on two threads at once, `N` times each, and returns the ns per
/// increment of the slower thread.
fn two_threads<S: Send + Sync + 'static>(shared: Arc<S>, body: fn(&S, usize)) -> f64 {
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (shared, start) = (shared.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                for _ in 0..N {
                    body(&shared, t);
                }
                t0.elapsed().as_nanos() as f64 / N as f64
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold(0.0, f64::max)
}

/// Two vCPUs' counters, as two vCPU objects hold them.
struct TwoVcpus([VcpuStats; 2]);

#[test]
#[ignore]
fn stats_counter_cost() {
    let (mut shared, mut own) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        // Before: every vCPU bumps the space's counter (`Counter::inc()`, `fetch_add`).
        let space = Arc::new(Stats::default());
        shared = shared.min(two_threads(space.clone(), |s: &Stats, _| {
            s.invalidations.inc()
        }));
        assert_eq!(space.invalidations.get(), 2 * N);
        // After: each vCPU bumps its own (`OwnCounter::inc()`, load and store).
        let vcpus = Arc::new(TwoVcpus([VcpuStats::default(), VcpuStats::default()]));
        own = own.min(two_threads(vcpus.clone(), |v: &TwoVcpus, t| {
            v.0[t].faults.inc()
        }));
        assert_eq!(vcpus.0[0].faults.get() + vcpus.0[1].faults.get(), 2 * N);
    }
    // The uncontended atomic add, for reference: one thread, its own counter.
    let alone = Counter::default();
    let t0 = Instant::now();
    for _ in 0..N {
        alone.inc();
    }
    let single = t0.elapsed().as_nanos() as f64 / N as f64;
    println!("counting from 2 threads ({N} increments each, best of {ROUNDS}):");
    println!("  shared Counter (fetch_add, one line):      {shared:7.2} ns/inc");
    println!("  per-vCPU OwnCounter (load+store, own line): {own:7.2} ns/inc");
    println!(
        "  ratio shared / per-vCPU:                   {:7.1}x",
        shared / own
    );
    println!("  (one thread, uncontended fetch_add:        {single:7.2} ns/inc)");
}
