// SPDX-License-Identifier: GPL-2.0

//! Loom models of a vCPU's dirty ring (`src/mmu/dirty_ring.rs`; "Dirty logging" in
//! Documentation/secmmu-protocols.rst): the vCPU pushing, userspace collecting and
//! SECMMU_RESET_DIRTY_RINGS freeing, all at once, explored exhaustively on rings of two and four
//! entries.
//!
//! What must hold: userspace reads every entry with the gfn the vCPU wrote into it, in push
//! order, never one the vCPU is still filling or has already reused; a reset frees only what
//! userspace collected, in order, once each; and the vCPU never pushes into an entry that is
//! not free.
//!
//! Userspace collects with a plain release store of DIRTY|RESET, as KVM's selftest does with
//! `|=` on a non-atomic field (and as loom 0.7 wants: it mishandles a relaxed store racing a
//! read-modify-write, see `aging_loom.rs`).

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::vec::Vec;

use crate::mmu::dirty_ring::{DirtyRing, RingEntry, GFN_F_DIRTY, GFN_F_RESET};

type Ring = DirtyRing<Vec<RingEntry>>;

fn ring(n: usize, rsvd: u32) -> Arc<Ring> {
    Arc::new(DirtyRing::with_reserve(
        (0..n).map(|_| RingEntry::new()).collect(),
        rsvd,
    ))
}

/// Two pushes, with userspace collecting what it finds pushed (in order) and a reset, all at
/// once: what userspace reads as DIRTY holds its gfn; the reset frees only collected entries,
/// in order; a final reset frees the rest of what was collected, and nothing else.
#[test]
fn loom_ring_push_collect_reset() {
    loom::model(|| {
        let r = ring(4, 0);
        let freed = Arc::new(AtomicU32::new(0));
        let user = {
            let r = r.clone();
            thread::spawn(move || {
                let mut collected = 0;
                for k in 0..2u32 {
                    let (flags, slot, offset) = r.mem()[k as usize].read();
                    if flags != GFN_F_DIRTY {
                        break;
                    }
                    assert_eq!((slot, offset), (7, u64::from(k) + 1));
                    r.mem()[k as usize].scribble(GFN_F_DIRTY | GFN_F_RESET, 7, offset);
                    collected += 1;
                }
                collected
            })
        };
        let reset = {
            let (r, freed) = (r.clone(), freed.clone());
            thread::spawn(move || {
                r.reset(|slot, offset| {
                    let k = freed.fetch_add(1, Ordering::Relaxed);
                    assert_eq!((slot, offset), (7, u64::from(k) + 1), "freed out of order");
                })
                .unwrap()
            })
        };
        r.push(7, 1).unwrap();
        r.push(7, 2).unwrap();
        let collected = user.join().unwrap();
        let early = reset.join().unwrap();
        assert!(early <= collected, "freed what was not collected");
        let late = r
            .reset(|slot, offset| {
                let k = freed.fetch_add(1, Ordering::Relaxed);
                assert_eq!((slot, offset), (7, u64::from(k) + 1));
            })
            .unwrap();
        assert_eq!(early + late, collected);
        // What was not collected is still there for userspace, pushed.
        for k in collected..2 {
            assert_eq!(
                r.mem()[k as usize].read(),
                (GFN_F_DIRTY, 7, u64::from(k) + 1)
            );
        }
    });
}

/// A full ring of two: entry 0 collected, entry 1 not. A reset racing the vCPU, which pushes
/// only if its ring is not full, and userspace looking at entry 0: the vCPU reuses entry 0 only
/// after the reset freed it, and userspace never sees a stale gfn marked DIRTY.
///
/// That the reset's zeroing of the entry never lands after the new push rests on the release
/// store of `reset_index`, which loom cannot check: it orders the stores to an atomic as they
/// execute, so a relaxed `reset_index` passes here too.
#[test]
fn loom_ring_wraps_only_onto_freed_entries() {
    loom::model(|| {
        let r = ring(2, 0);
        r.push(7, 1).unwrap();
        r.push(7, 2).unwrap();
        r.mem()[0].collect();
        let user = {
            let r = r.clone();
            thread::spawn(move || {
                let (flags, slot, offset) = r.mem()[0].read();
                if flags == GFN_F_DIRTY {
                    assert_eq!((slot, offset), (7, 3), "a stale gfn published");
                }
            })
        };
        let reset = {
            let r = r.clone();
            thread::spawn(move || r.reset(|_, offset| assert_eq!(offset, 1)).unwrap())
        };
        let pushed = !r.soft_full() && r.push(7, 3).is_ok();
        user.join().unwrap();
        assert_eq!(reset.join().unwrap(), 1);
        if pushed {
            assert_eq!(
                r.mem()[0].read(),
                (GFN_F_DIRTY, 7, 3),
                "the push was undone"
            );
        } else {
            assert_eq!(r.mem()[0].read().0, 0);
        }
        assert_eq!(r.mem()[1].read(), (GFN_F_DIRTY, 7, 2));
    });
}
