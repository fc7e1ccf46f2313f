// SPDX-License-Identifier: GPL-2.0

//! Loom model of a kernel-mapped guest page cache ("Kernel-mapped guest pages" in
//! Documentation/secmmu-protocols.rst): a user that checks the cache and writes through it, a
//! refresh, and the primary MMU replacing the page under them, explored exhaustively.  The
//! cache's state machine is `src/mmu/pfncache.rs`, the invalidation state `src/mmu/inval.rs`;
//! the locks and the order the kernel glue (`src/gpc.rs`, `invalidate_range_start()`) takes
//! them in are modelled with loom's.
//!
//! What must hold: a user never writes a page the primary has freed, and once everything is
//! done a valid cache maps the page the primary maps.

use loom::model;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Mutex, RwLock};
use loom::thread;

use crate::mmu::addr::{Hva, Pfn};
use crate::mmu::inval::Invalidations;
use crate::mmu::pfncache::{GpcState, InvalState, Mapping, Policy, Target};

const UHVA: u64 = 0x10_0000;

/// The space: the MMU lock around the invalidation state, one cache under its own lock, and the
/// primary MMU's mapping of the cached page (`pfn` 1, then 2) with each page's liveness.
struct World {
    mmu: RwLock<Invalidations>,
    gpc: Mutex<GpcState>,
    /// The pfn the primary maps at `UHVA`.
    primary: AtomicU64,
    /// `freed[p]`: the primary freed page `p`.
    freed: [AtomicBool; 3],
}

impl World {
    fn new() -> Self {
        let mut gpc = GpcState::new();
        gpc.activate(Target::Hva(UHVA), 8, true).unwrap();
        World {
            mmu: RwLock::new(Invalidations::new().unwrap()),
            gpc: Mutex::new(gpc),
            primary: AtomicU64::new(1),
            freed: core::array::from_fn(|_| AtomicBool::new(false)),
        }
    }

    fn page() -> (Hva, Hva) {
        (Hva::new(UHVA), Hva::new(UHVA + 4096))
    }

    /// One refresh attempt, as `GpcSet::refresh()` does it; true if it published.
    fn refresh_once(&self) -> bool {
        let (start, end) = Self::page();
        let (r, seq) = {
            let inval = self.mmu.read().unwrap();
            let in_progress = inval.in_progress_overlaps(start, end);
            let mut g = self.gpc.lock().unwrap();
            let epoch = g.prepare().unwrap().2;
            let (r, _) = g.refresh_begin(epoch, start, 0, in_progress).unwrap();
            (r, inval.seq())
        };
        // get_user_pages: whatever the primary maps now (the page's own refcount would keep it
        // until the commit; the model only asks what happens after).
        let pfn = self.primary.load(Ordering::SeqCst);
        let inval = self.mmu.read().unwrap();
        let state = InvalState {
            overlapping: inval.in_progress_overlaps(start, end),
            any: inval.in_progress() || inval.seq() != seq,
        };
        let mapping = Mapping {
            pfn: Pfn::new(pfn),
            khva: pfn as usize,
        };
        let mut g = self.gpc.lock().unwrap();
        g.refresh_commit(&r, mapping, 0, state, Policy::Range)
            .is_ok()
    }

    /// The primary replaces the page: `invalidate_range_start()` (mark in progress, invalidate
    /// the cache), unmap and free the old page, map the new one, `invalidate_range_end()`.
    fn replace_page(&self) {
        let (start, end) = Self::page();
        {
            let mut inval = self.mmu.write().unwrap();
            inval.begin(start, end);
            self.gpc.lock().unwrap().invalidate(start, end);
        }
        let old = self.primary.swap(2, Ordering::SeqCst);
        self.freed[old as usize].store(true, Ordering::SeqCst);
        assert!(self.mmu.write().unwrap().end());
    }

    /// A user (a timer, an exit) writes through the cache if it is valid: the page must be live.
    fn use_cache(&self) {
        let g = self.gpc.lock().unwrap();
        if let Some(khva) = g.check(0, 8) {
            assert!(
                !self.freed[khva].load(Ordering::SeqCst),
                "a write through the cache lands in freed page {khva}"
            );
        }
    }
}

/// Refresh and use race the primary replacing the page: no write lands in the freed page, and
/// once all is done a valid cache maps the new page, never the old one.
#[test]
fn refresh_use_and_replace() {
    model(|| {
        let w = Arc::new(World::new());
        let refresher = {
            let w = w.clone();
            thread::spawn(move || {
                // Two attempts: the second starts over after one that raced (it may race the
                // same invalidation again, if that is still in progress).
                if !w.refresh_once() {
                    w.refresh_once();
                }
                w.use_cache();
            })
        };
        let user = {
            let w = w.clone();
            thread::spawn(move || w.use_cache())
        };
        w.replace_page();
        refresher.join().unwrap();
        user.join().unwrap();
        // Quiet now: a valid cache maps what the primary maps.
        let g = w.gpc.lock().unwrap();
        if let Some(khva) = g.check(0, 8) {
            assert_eq!(khva as u64, w.primary.load(Ordering::SeqCst));
        }
    });
}
