// SPDX-License-Identifier: GPL-2.0

//! `next_leaf()` of both formats, the walk the coherence audit (SECMMU_AUDIT) uses: it finds
//! every leaf of a sparse range, once, with the translation of its first gfn, skipping empty
//! subtrees.

use std::vec::Vec;

use crate::arm64::mmu::{S2Mmu, MAP_MIN_TABLES as S2_MIN_TABLES};
use crate::host_pages::HostPages;
use crate::mmu::addr::{Gfn, Hva, Pfn};
use crate::mmu::level::Level;
use crate::mmu::memslot::Slot;
use crate::mmu::pgtable::{TableCache, Translation};
use crate::x86::mmu::{X86Mmu, MAP_MIN_DESCS, MAP_MIN_TABLES};
use crate::x86::rmap::DescCache;
use crate::x86_slots::TestMmu;

/// Leaves as `(first gfn, pfn of it, level, writable)`: far apart, at every level.
const LEAVES: [(u64, u64, Level, bool); 5] = [
    (0x5, 0x1005, Level::L4K, true),
    (0x200, 0x40200, Level::L2M, false),
    (0x40000, 0x80000, Level::L1G, true),
    (0x100001, 0x1234, Level::L4K, false),
    (0xf_ffff_fe00, 0x600, Level::L2M, true),
];

fn collect(
    mut next: impl FnMut(Gfn) -> Option<(Gfn, Translation)>,
) -> Vec<(u64, u64, Level, bool)> {
    let mut found = Vec::new();
    let mut gfn = Gfn::new(0);
    while let Some((base, t)) = next(gfn) {
        found.push((base.raw(), t.pfn.raw(), t.level, t.writable));
        gfn = base + t.level.pages();
    }
    found
}

/// What `next_leaf` of root 1, which maps [`LEAVES`], and of the empty root 0 find: every leaf
/// once, in order, and nothing in root 0; a range that starts inside a leaf finds it, one that
/// ends before it does not.
fn check_leaves(next_leaf: impl Fn(usize, Gfn, Gfn) -> Option<(Gfn, Translation)>) {
    let end = Gfn::new(u64::MAX);
    assert_eq!(collect(|g| next_leaf(1, g, end)), LEAVES.to_vec());
    assert_eq!(collect(|g| next_leaf(0, g, end)), Vec::new());
    let first = |start, end| next_leaf(1, Gfn::new(start), Gfn::new(end)).map(|(b, _)| b.raw());
    assert_eq!(first(0x201, 0x202), Some(0x200));
    assert_eq!(first(0x6, 0x200), None);
}

#[test]
fn x86_next_leaf_finds_each_leaf_once() {
    let mut mmu = TestMmu::<HostPages<52>>::new(2, true).unwrap();
    // Rmaps for a 48-bit slot would be huge: a small slot per leaf instead.
    let mut tables = TableCache::<HostPages<52>>::new();
    let mut descs = DescCache::new(4);
    for (i, &(gfn, pfn, level, w)) in LEAVES.iter().enumerate() {
        let s = Slot {
            id: i as u32,
            flags: 0,
            base_gfn: Gfn::new(level.align_down(gfn)),
            npages: level.pages(),
            userspace_addr: Hva::new(0),
        };
        assert!(mmu.attach_slot(&s).is_ok());
        tables.topup(MAP_MIN_TABLES).unwrap();
        descs.topup(MAP_MIN_DESCS).unwrap();
        mmu.map_level(
            1,
            s.id,
            Gfn::new(gfn),
            Pfn::new(pfn),
            w,
            level,
            &mut tables,
            &mut descs,
        )
        .unwrap();
    }
    check_leaves(|root, g, end| mmu.next_leaf(root, g, end));
    let slots = mmu.slots().clone();
    for id in 0..LEAVES.len() as u32 {
        crate::test_util::run_zap(
            &mut *mmu,
            HostPages::<52>::frees,
            || false,
            |_| {},
            |lock, z| {
                X86Mmu::zap_gfn_range(lock, &mut &*slots, z, id, Gfn::new(0), Gfn::new(1 << 36))
            },
        );
    }
    assert_eq!(
        mmu.next_leaf(1, Gfn::new(0), Gfn::new(u64::MAX))
            .map(|(b, _)| b.raw()),
        None
    );
}

#[test]
fn s2_next_leaf_finds_each_leaf_once() {
    let mmu = S2Mmu::<HostPages<53>>::new(2, 48, true).unwrap();
    let mut tables = TableCache::<HostPages<53>>::new();
    for &(gfn, pfn, level, w) in &LEAVES {
        tables.topup(S2_MIN_TABLES).unwrap();
        mmu.map(
            1,
            Gfn::new(gfn),
            Pfn::new(pfn),
            w,
            level,
            &mut tables,
            &|| {},
        )
        .unwrap();
    }
    check_leaves(|root, g, end| mmu.next_leaf(root, g, end));
}
