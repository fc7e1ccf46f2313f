// SPDX-License-Identifier: GPL-2.0

//! Reverse maps: for one gfn at one mapping level, the SPTEs that map it (KVM's rmaps, see
//! `arch/x86/kvm/mmu/mmu.c`).  The rules they keep are the sections "Rmap encoding", "Rmap
//! locking" and "Lockless rmap walks" of Documentation/secmmu-protocols.rst, cited below by
//! title.
//!
//! An rmap is one word, [`RmapHead`]:
//!
//! - 0: empty;
//! - bit 0 (`MANY`) clear: a pointer to the only SPTE;
//! - bit 0 set: a pointer to a chain of [`PteListDesc`] descriptors holding the SPTE pointers;
//! - bit 1 (`LOCKED`): the rmap's bit spinlock.
//!
//! SPTE slots and descriptors are at least 8-byte aligned, so both low bits are free.
//!
//! Locking.  Only holders of the MMU lock for write modify rmaps ([`MmuWriteLocked`], "Rmap
//! locking"), and they also take the bit lock ([`RmapHead::lock()`]), so that lockless walkers,
//! which hold only the bit lock ([`RmapHead::lock_readonly()`], "Lockless rmap walks"), see a
//! stable chain.  The bit lock protects the chain, not the SPTEs: SPTEs behind a locked rmap may
//! still be changed or zapped by others (a zap clears an SPTE before it removes it), so lockless
//! walkers must expect non-present SPTEs in the chain.
//!
//! Locking elides the bit lock when the rmap is empty (as KVM's `__kvm_rmap_lock()` does): a
//! lockless walker has nothing to walk then, and writers are serialized by the MMU lock.  That
//! is why a read-only unlock of an empty rmap must write nothing: writing back the 0 it saw would
//! discard an SPTE that a writer added meanwhile (KVM's `kvm_rmap_unlock_readonly()`).
//!
//! Every operation reads the head once when locking, computes the new value locally, and writes
//! it once when unlocking ("Rmap encoding").  The lock is a compare-exchange with `Acquire`, the
//! unlock a store with `Release` ("Rmap locking"): a lockless walker that takes the bit lock
//! sees every descriptor write made by the writer that released it.
//!
//! Descriptors are freed only under the bit lock ("Lockless rmap walks"), into a [`DescCache`]:
//! no lockless walker can be looking at them then.  They are also allocated from a `DescCache`,
//! topped up before the MMU lock is taken, so that adding to an rmap under the spinning MMU lock
//! neither sleeps nor fails.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};

pub(crate) use crate::mmu::prim::MmuWriteLocked;
use crate::mmu::prim::{self, AllocError, AtomicU64, AtomicUsize, NoPreempt, Ordering, UnsafeCell};

/// SPTE pointers per descriptor: with its 16-byte header a descriptor is two cache lines, and
/// one holding at most 6 SPTEs is used within its first (KVM's `PTE_LIST_EXT`).
pub(crate) const PTE_LIST_EXT: usize = 14;

/// Head bit: the rest of the head points at a descriptor chain, not at the only SPTE.
const RMAP_MANY: usize = 1 << 0;
/// Head bit: the rmap's bit spinlock.
const RMAP_LOCKED: usize = 1 << 1;
/// Low head bits that are not part of a pointer.
const RMAP_TAGS: usize = RMAP_MANY | RMAP_LOCKED;

/// A chunk of an rmap chain (KVM's `struct pte_list_desc`).
///
/// New SPTEs go into the first descriptor, the chain's head, which gets a new head pushed in
/// front of it once it is full; a removed SPTE is replaced by the head's last one, and an
/// emptied head is freed.  So every descriptor behind the head is full, and a descriptor's
/// `tail_count` never changes while it is in a chain: the rmap's length is the head's
/// `spte_count + tail_count`.
#[repr(C)]
struct PteListDesc {
    /// The next descriptor, full; `None` at the end of the chain.  Links the free list while
    /// the descriptor is in a [`DescCache`].
    more: Option<NonNull<Desc>>,
    /// SPTEs in `sptes[..spte_count]`; the rest of `sptes` is `None`.
    spte_count: u32,
    /// SPTEs in all the descriptors behind this one.
    tail_count: u32,
    /// The SPTE slots, each an [`AtomicU64`] in some page table.
    sptes: [Option<NonNull<AtomicU64>>; PTE_LIST_EXT],
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<PteListDesc>() == 128);

impl PteListDesc {
    const EMPTY: PteListDesc = PteListDesc {
        more: None,
        spte_count: 0,
        tail_count: 0,
        sptes: [None; PTE_LIST_EXT],
    };

    fn count(&self) -> usize {
        self.spte_count as usize
    }

    fn is_full(&self) -> bool {
        self.count() == PTE_LIST_EXT
    }
}

/// A descriptor as allocated.  Linked in an rmap, it is written only by a holder of both the MMU
/// lock for write and the rmap's bit lock, and read by holders of either ("Rmap locking").
/// Otherwise it belongs to a [`DescCache`] or to the operation that just took it from one.
struct Desc(UnsafeCell<PteListDesc>);

impl Desc {
    /// Calls `f` on the descriptor at `this` to read it.
    ///
    /// # Safety
    ///
    /// `this` points at a live descriptor that nobody writes meanwhile: it is linked in an rmap
    /// whose bit lock or MMU write lock the caller holds, or the caller owns it.
    unsafe fn read<R>(this: NonNull<Desc>, f: impl FnOnce(&PteListDesc) -> R) -> R {
        // SAFETY: `this` is live, per the caller.
        let desc = unsafe { this.as_ref() };
        desc.0.with(|p| {
            // SAFETY: the cell is valid and, per the caller, not written meanwhile.
            f(unsafe { &*p })
        })
    }

    /// Calls `f` on the descriptor at `this` to modify it.
    ///
    /// # Safety
    ///
    /// `this` points at a live descriptor that nobody else reads or writes meanwhile: it is
    /// linked in an rmap whose bit lock and MMU write lock the caller holds, or the caller owns
    /// it.
    unsafe fn write<R>(this: NonNull<Desc>, f: impl FnOnce(&mut PteListDesc) -> R) -> R {
        // SAFETY: `this` is live, per the caller.
        let desc = unsafe { this.as_ref() };
        desc.0.with_mut(|p| {
            // SAFETY: the cell is valid and, per the caller, not accessed by anyone else.
            f(unsafe { &mut *p })
        })
    }

    /// Allocates a descriptor with `alloc`.
    fn alloc(
        alloc: fn(Desc) -> Result<prim::PBox<Desc>, AllocError>,
    ) -> Result<NonNull<Desc>, AllocError> {
        let desc = alloc(Desc(UnsafeCell::new(PteListDesc::EMPTY)))?;
        #[cfg(all(test, not(loom)))]
        tests::live_descs_add(1);
        Ok(NonNull::from(prim::PBox::leak(desc)))
    }

    /// Frees a descriptor.
    ///
    /// # Safety
    ///
    /// `this` came from [`Desc::alloc()`], is owned by the caller, and is not used afterwards.
    unsafe fn free(this: NonNull<Desc>) {
        #[cfg(all(test, not(loom)))]
        tests::live_descs_add(-1);
        // SAFETY: `this` was leaked from a `PBox` by `Desc::alloc()` and is owned by the caller.
        drop(unsafe { prim::PBox::from_raw(this.as_ptr()) });
    }
}

/// A stock of descriptors (KVM's `kvm_mmu_memory_cache` for `pte_list_desc`), so that rmap
/// operations under the spinning MMU lock need no allocation: top it up before taking the MMU
/// lock with enough descriptors for the adds to come, at most one per add.  Removals return
/// freed descriptors to it, or free them when it holds `capacity` already.
pub(crate) struct DescCache {
    /// Free descriptors, linked through `more`.
    free: Option<NonNull<Desc>>,
    /// Number of descriptors on `free`.
    nr: usize,
    /// Top-ups fill the cache to this; frees beyond it go back to the allocator.
    capacity: usize,
}

// SAFETY: the descriptors on the free list are owned by the cache alone; nothing else points at
// them, so the cache may move to another thread with them.
unsafe impl Send for DescCache {}

impl DescCache {
    /// Makes an empty cache that top-ups fill to `capacity` descriptors.
    pub(crate) const fn new(capacity: usize) -> Self {
        DescCache {
            free: None,
            nr: 0,
            capacity,
        }
    }

    /// Number of descriptors in the cache.
    pub(crate) fn len(&self) -> usize {
        self.nr
    }

    /// Makes sure the cache holds at least `min` descriptors, filling it to its capacity (or
    /// `min`, if larger) when it holds fewer.  May sleep: call it before taking the MMU lock.
    /// On failure the cache keeps what it had and got.
    pub(crate) fn topup(&mut self, min: usize) -> Result<(), AllocError> {
        if self.nr >= min {
            return Ok(());
        }
        let target = min.max(self.capacity);
        while self.nr < target {
            let desc = Desc::alloc(prim::try_box_sleepable)?;
            self.push(desc);
        }
        Ok(())
    }

    /// Takes an empty descriptor, owned by the caller until it is linked into an rmap.
    fn take(&mut self) -> NonNull<Desc> {
        if let Some(desc) = self.pop() {
            // SAFETY: just taken off the free list, the descriptor is the caller's alone.
            unsafe { Desc::write(desc, |d| *d = PteListDesc::EMPTY) };
            return desc;
        }
        // The caller broke the top-up contract.  Like KVM, survive it with an atomic
        // allocation if possible; tests and debug builds flag it.
        if cfg!(debug_assertions) {
            panic!("rmap: descriptor cache was not topped up");
        }
        match Desc::alloc(prim::try_box_atomic) {
            Ok(desc) => desc,
            Err(_) => panic!("rmap: descriptor cache empty and atomic allocation failed"),
        }
    }

    /// Takes back a descriptor that has been unlinked from every rmap (under the bit lock).
    fn put(&mut self, desc: NonNull<Desc>) {
        if self.nr < self.capacity {
            self.push(desc);
        } else {
            // SAFETY: unlinked, the descriptor is the caller's, which hands it over here.
            unsafe { Desc::free(desc) };
        }
    }

    fn push(&mut self, desc: NonNull<Desc>) {
        let next = self.free;
        // SAFETY: the caller hands over the descriptor, so nobody else accesses it.
        unsafe { Desc::write(desc, |d| d.more = next) };
        self.free = Some(desc);
        self.nr += 1;
    }

    fn pop(&mut self) -> Option<NonNull<Desc>> {
        let desc = self.free?;
        // SAFETY: descriptors on the free list belong to the cache alone.
        self.free = unsafe { Desc::read(desc, |d| d.more) };
        self.nr -= 1;
        Some(desc)
    }
}

impl Drop for DescCache {
    fn drop(&mut self) {
        while let Some(desc) = self.pop() {
            // SAFETY: off the free list, the descriptor is ours and no longer reachable.
            unsafe { Desc::free(desc) };
        }
    }
}

/// The contents of an rmap, decoded from a head value without `LOCKED`.
#[derive(Clone, Copy)]
enum Chain {
    Empty,
    One(NonNull<AtomicU64>),
    Many(NonNull<Desc>),
}

impl Chain {
    fn decode(val: usize) -> Chain {
        debug_assert_eq!(val & RMAP_LOCKED, 0);
        let addr = val & !RMAP_TAGS;
        if val & RMAP_MANY == 0 {
            NonNull::new(ptr::with_exposed_provenance_mut(addr)).map_or(Chain::Empty, Chain::One)
        } else {
            let desc = NonNull::new(ptr::with_exposed_provenance_mut(addr));
            debug_assert!(desc.is_some(), "rmap: MANY without a descriptor");
            desc.map_or(Chain::Empty, Chain::Many)
        }
    }

    fn encode(self) -> usize {
        match self {
            Chain::Empty => 0,
            Chain::One(sptep) => sptep.as_ptr().expose_provenance(),
            Chain::Many(desc) => desc.as_ptr().expose_provenance() | RMAP_MANY,
        }
    }

    /// Number of SPTEs in the chain.
    ///
    /// # Safety
    ///
    /// The chain is stable: the caller holds its rmap's bit lock, or built it itself.
    unsafe fn len(self) -> usize {
        match self {
            Chain::Empty => 0,
            Chain::One(_) => 1,
            // SAFETY: the chain is stable, per the caller.
            Chain::Many(head) => unsafe { Desc::read(head, |d| d.count() + d.tail_count as usize) },
        }
    }

    /// Iterates over the SPTEs of the chain.
    ///
    /// # Safety
    ///
    /// The chain stays stable and its SPTEs stay valid for `'a`: the caller holds its rmap's
    /// bit lock, or owns it, for `'a`.
    unsafe fn iter<'a>(self) -> RmapIter<'a> {
        let pos = match self {
            Chain::Empty => IterPos::Done,
            Chain::One(sptep) => IterPos::One(sptep),
            Chain::Many(head) => IterPos::Desc(head, 0),
        };
        RmapIter {
            pos,
            _lock: PhantomData,
        }
    }
}

/// The head of an rmap (KVM's `struct kvm_rmap_head`).  All-zero bytes are an empty rmap, so
/// arrays of them may come from zeroed allocations.  Drain an rmap before freeing it: it does
/// not free its descriptors when dropped (and its SPTEs would escape zapping).
#[repr(transparent)]
pub(crate) struct RmapHead(AtomicUsize);

impl Default for RmapHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RmapHead {
    /// Makes an empty rmap.
    pub(crate) fn new() -> Self {
        RmapHead(AtomicUsize::new(0))
    }

    /// Whether the rmap is empty.  A racy snapshot, for skipping empty rmaps in walks (KVM's
    /// `slot_rmap_walk_next()`); lock the rmap to act on its contents.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    /// Locks the rmap to modify it (KVM's `kvm_rmap_lock()`).  The guard unlocks when dropped.
    #[inline]
    pub(crate) fn lock<'a>(&'a self, _mmu: &'a mut MmuWriteLocked<'_>) -> RmapGuard<'a> {
        let old = self.raw_lock();
        RmapGuard {
            head: self,
            old,
            new: old,
            _not_send: PhantomData,
        }
    }

    /// Locks the rmap to walk it without the MMU lock (KVM's `kvm_rmap_lock_readonly()`).
    /// The guard can only read the chain, and its unlock writes back the value it saw.
    #[inline]
    pub(crate) fn lock_readonly<'a>(&'a self, _no_preempt: &'a NoPreempt<'_>) -> RmapReadGuard<'a> {
        let (val, contended) = self.raw_lock_contended();
        RmapReadGuard {
            head: self,
            val,
            contended,
            _not_send: PhantomData,
        }
    }

    /// Takes the bit lock unless the rmap is empty, and returns the value it held, without
    /// `LOCKED`; 0 means empty and not locked (KVM's `__kvm_rmap_lock()`).
    fn raw_lock(&self) -> usize {
        self.raw_lock_contended().0
    }

    /// [`RmapHead::raw_lock()`], also telling whether it found the rmap `LOCKED` and had to
    /// spin (for contention statistics).
    fn raw_lock_contended(&self) -> (usize, bool) {
        let mut old = self.0.load(Ordering::Relaxed);
        let mut contended = false;
        // Read-only lockers never walk an empty rmap, and writers are serialized by the MMU
        // lock: no need to lock an empty rmap.
        if old == 0 {
            return (0, false);
        }
        loop {
            // Wait for the holder to unlock before trying, rather than bouncing the cache
            // line with failing compare-exchanges.
            while old & RMAP_LOCKED != 0 {
                contended = true;
                prim::cpu_relax();
                old = self.0.load(Ordering::Relaxed);
            }
            // The previous holder may have emptied the rmap.  Then there is no lock to take,
            // and the 0 returned tells the read-only unlock to write nothing.
            if old == 0 {
                return (0, contended);
            }
            // Acquire pairs with the Release of `raw_unlock()`: the previous holder's chain
            // updates are visible once we own the lock.
            match self.0.compare_exchange_weak(
                old,
                old | RMAP_LOCKED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (old, contended),
                Err(cur) => old = cur,
            }
        }
    }

    /// Stores `val`, which unlocks the rmap if it was locked.  Release makes the chain updates
    /// made under the lock visible to the next locker.
    fn raw_unlock(&self, val: usize) {
        debug_assert_eq!(val & RMAP_LOCKED, 0);
        self.0.store(val, Ordering::Release);
    }

    /// The raw head value, for tests.
    #[cfg(test)]
    fn raw(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A write lock of an rmap, taken under the MMU lock for write.  The operations change the
/// chain it holds; dropping it writes the new head once and unlocks (KVM's
/// `kvm_rmap_unlock()`).
pub(crate) struct RmapGuard<'a> {
    head: &'a RmapHead,
    /// The head value when locked, without `LOCKED`; 0 if the rmap was empty and the bit lock
    /// was elided.
    old: usize,
    /// The head value to store on unlock: the chain as changed under this guard.
    new: usize,
    _not_send: PhantomData<(&'a mut (), *mut ())>,
}

impl Drop for RmapGuard<'_> {
    fn drop(&mut self) {
        // An empty rmap was not locked; if it stays empty there is nothing to write.
        if self.old != 0 || self.new != 0 {
            self.head.raw_unlock(self.new);
        }
    }
}

impl RmapGuard<'_> {
    fn chain(&self) -> Chain {
        Chain::decode(self.new)
    }

    /// Number of SPTEs in the rmap (KVM's `pte_list_count()`).
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the guard holds the bit lock, or the chain is empty or was built under it.
        unsafe { self.chain().len() }
    }

    /// Whether the rmap is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.new == 0
    }

    /// Iterates over the SPTEs.  Under the MMU lock a non-present SPTE in an rmap means corruption
    /// ("Lockless rmap walks"): zapped SPTEs are removed before the MMU lock is dropped.
    pub(crate) fn sptes(&self) -> RmapIter<'_> {
        // SAFETY: the chain is stable while `self` is borrowed: only `&mut self` changes it, and
        // other writers are excluded by the bit lock or, for an rmap that was empty, by the MMU
        // lock.  Its SPTEs stay valid until removed, per `add()`.
        unsafe { self.chain().iter() }
    }

    /// Adds `sptep` to the rmap (KVM's `pte_list_add()`), taking a descriptor from `cache` if
    /// needed.  Returns the number of SPTEs the rmap held before.
    ///
    /// # Safety
    ///
    /// `sptep` points at an SPTE slot that stays valid until it has been removed from this
    /// rmap, by [`RmapGuard::remove()`] or [`RmapGuard::drain()`], and that guard dropped:
    /// walkers dereference the SPTE pointers of an rmap they locked ("Lockless rmap walks").
    pub(crate) unsafe fn add(&mut self, sptep: NonNull<AtomicU64>, cache: &mut DescCache) -> usize {
        debug_assert_eq!(sptep.as_ptr().addr() & RMAP_TAGS, 0);

        let (chain, count) = match self.chain() {
            Chain::Empty => (Chain::One(sptep), 0),
            Chain::One(only) => {
                let desc = cache.take();
                // SAFETY: fresh from the cache, the descriptor is ours until unlock publishes it.
                unsafe {
                    Desc::write(desc, |d| {
                        d.sptes[0] = Some(only);
                        d.sptes[1] = Some(sptep);
                        d.spte_count = 2;
                    })
                };
                (Chain::Many(desc), 1)
            }
            Chain::Many(head) => {
                // SAFETY: we hold the bit lock of the chain (or built it under this guard).
                let (count, full) = unsafe {
                    Desc::read(head, |d| (d.count() + d.tail_count as usize, d.is_full()))
                };
                // Tails are always full: when the head is, push a new head.
                let target = if full {
                    let desc = cache.take();
                    // SAFETY: fresh from the cache, the descriptor is ours until published.
                    unsafe {
                        Desc::write(desc, |d| {
                            d.more = Some(head);
                            d.tail_count = count as u32;
                        })
                    };
                    desc
                } else {
                    head
                };
                // SAFETY: `target` is new, or the head of the chain whose bit lock we hold (and
                // we hold the MMU lock for write): nobody else reads or writes it.
                unsafe {
                    Desc::write(target, |d| {
                        d.sptes[d.count()] = Some(sptep);
                        d.spte_count += 1;
                    })
                };
                (Chain::Many(target), count)
            }
        };
        self.new = chain.encode();
        count
    }

    /// Removes `sptep` from the rmap (KVM's `pte_list_remove()`), giving a descriptor that
    /// empties back to `cache`.  Returns false if the rmap did not hold `sptep`, which means
    /// corruption.
    #[must_use]
    pub(crate) fn remove(&mut self, sptep: NonNull<AtomicU64>, cache: &mut DescCache) -> bool {
        match self.chain() {
            Chain::Empty => false,
            Chain::One(only) => {
                if only != sptep {
                    return false;
                }
                self.new = 0;
                true
            }
            Chain::Many(head) => {
                let mut next = Some(head);
                while let Some(desc) = next {
                    // SAFETY: we hold the bit lock of the chain (or built it under this guard).
                    let (pos, more) = unsafe {
                        Desc::read(desc, |d| {
                            let pos = d.sptes[..d.count()].iter().position(|s| *s == Some(sptep));
                            (pos, d.more)
                        })
                    };
                    if let Some(i) = pos {
                        self.remove_entry(head, desc, i, cache);
                        return true;
                    }
                    next = more;
                }
                false
            }
        }
    }

    /// Removes entry `i` of `desc` from the chain that starts at `head` (KVM's
    /// `pte_list_desc_remove_entry()`).
    fn remove_entry(
        &mut self,
        head: NonNull<Desc>,
        desc: NonNull<Desc>,
        i: usize,
        cache: &mut DescCache,
    ) {
        // Fill the hole with the head's last entry, so tails stay full and their tail_count
        // stays right.  The head is never empty: an emptied head is freed right away.
        // SAFETY: we hold the bit lock and the MMU write lock, so nobody else reads or writes
        // the chain's descriptors.
        let (j, last) = unsafe {
            Desc::write(head, |h| {
                debug_assert!(h.spte_count > 0, "rmap: empty head descriptor");
                h.spte_count -= 1;
                let j = h.count();
                (j, h.sptes[j].take())
            })
        };
        // Unless the hole was the head's last entry itself, which is gone already.
        if desc != head || i != j {
            // SAFETY: as above.
            unsafe { Desc::write(desc, |d| d.sptes[i] = last) };
        }
        // SAFETY: as above.
        let (empty, more) = unsafe { Desc::read(head, |h| (h.spte_count == 0, h.more)) };
        if empty {
            // The new head is the next descriptor, or nothing.
            self.new = more.map_or(Chain::Empty, Chain::Many).encode();
            // Unlinked under the bit lock, it cannot be in use by a lockless walker.
            cache.put(head);
        }
    }

    /// Empties the rmap, handing each SPTE to `f` first (KVM's `kvm_zap_all_rmap_sptes()`,
    /// with `f` zapping), and giving the descriptors back to `cache` while the bit lock is
    /// held ("Lockless rmap walks").  Returns the number of SPTEs.
    pub(crate) fn drain(&mut self, cache: &mut DescCache, mut f: impl FnMut(&AtomicU64)) -> usize {
        let chain = self.chain();
        self.new = 0;
        match chain {
            Chain::Empty => 0,
            Chain::One(sptep) => {
                // SAFETY: the SPTE is still valid: removing it is what we are doing, per `add()`.
                f(unsafe { sptep.as_ref() });
                1
            }
            Chain::Many(head) => {
                let mut count = 0;
                let mut next = Some(head);
                while let Some(desc) = next {
                    // SAFETY: we hold the bit lock of the chain (or built it under this guard).
                    let (sptes, more) = unsafe { Desc::read(desc, |d| (d.sptes, d.more)) };
                    // Entries past the count are `None`.
                    let n = sptes.iter().flatten().count();
                    for sptep in sptes.iter().flatten() {
                        // SAFETY: as for `Chain::One` above.
                        f(unsafe { sptep.as_ref() });
                    }
                    count += n;
                    next = more;
                    // Unlinked under the bit lock: no lockless walker is looking at it.
                    cache.put(desc);
                }
                count
            }
        }
    }

    /// Checks the chain's invariants, for tests.
    #[cfg(test)]
    fn check(&self) {
        let Chain::Many(head) = self.chain() else {
            return;
        };
        let mut next = Some(head);
        let mut behind = self.len();
        while let Some(desc) = next {
            // SAFETY: we hold the bit lock of the chain.
            let (d_count, tail_count, more, nones) = unsafe {
                Desc::read(desc, |d| {
                    let nones = d.sptes[d.count()..].iter().all(Option::is_none);
                    (d.count(), d.tail_count as usize, d.more, nones)
                })
            };
            assert!(nones, "entries beyond spte_count");
            assert!(d_count > 0, "empty descriptor in a chain");
            if desc != head {
                assert_eq!(d_count, PTE_LIST_EXT, "tail descriptor not full");
            }
            assert_eq!(d_count + tail_count, behind, "tail_count off");
            behind -= d_count;
            next = more;
        }
        assert_eq!(behind, 0);
    }
}

/// A read-only lock of an rmap, for walking it without the MMU lock and with preemption disabled
/// ("Lockless rmap walks").  It has no way to change the chain; dropping it writes back the value
/// it saw, or nothing if the rmap was empty (KVM's `kvm_rmap_unlock_readonly()`).
pub(crate) struct RmapReadGuard<'a> {
    head: &'a RmapHead,
    /// The head value when locked, without `LOCKED`; 0 if empty and not locked.
    val: usize,
    /// Locking found the rmap `LOCKED` and had to spin.
    contended: bool,
    _not_send: PhantomData<(&'a (), *mut ())>,
}

impl Drop for RmapReadGuard<'_> {
    fn drop(&mut self) {
        // Not locked: writing back 0 could discard an SPTE added meanwhile.
        if self.val == 0 {
            return;
        }
        debug_assert_eq!(self.head.0.load(Ordering::Relaxed), self.val | RMAP_LOCKED);
        self.head.raw_unlock(self.val);
    }
}

impl RmapReadGuard<'_> {
    /// Number of SPTEs in the rmap.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the guard holds the bit lock, or the chain is empty.
        unsafe { Chain::decode(self.val).len() }
    }

    /// Whether the rmap was empty when locked.
    pub(crate) fn is_empty(&self) -> bool {
        self.val == 0
    }

    /// Whether locking found the rmap `LOCKED` by someone else and had to spin (contention
    /// statistics for lockless walkers: `rmap_contention`).
    pub(crate) fn contended(&self) -> bool {
        self.contended
    }

    /// Iterates over the SPTEs.  They may be changed or zapped concurrently: walkers must load
    /// each one and skip non-present ones (KVM's `for_each_rmap_spte_lockless()`).
    pub(crate) fn sptes(&self) -> RmapIter<'_> {
        // SAFETY: the guard holds the bit lock (or the chain is empty), so no writer changes
        // the chain or removes an SPTE, which keeps the SPTEs valid, per `add()`.
        unsafe { Chain::decode(self.val).iter() }
    }
}

/// An iterator over the SPTEs of a locked rmap (KVM's `rmap_iterator`).
pub(crate) struct RmapIter<'a> {
    pos: IterPos,
    _lock: PhantomData<&'a ()>,
}

#[derive(Clone, Copy)]
enum IterPos {
    Done,
    One(NonNull<AtomicU64>),
    Desc(NonNull<Desc>, usize),
}

impl<'a> Iterator for RmapIter<'a> {
    type Item = &'a AtomicU64;

    fn next(&mut self) -> Option<&'a AtomicU64> {
        loop {
            match self.pos {
                IterPos::Done => return None,
                IterPos::One(sptep) => {
                    self.pos = IterPos::Done;
                    // SAFETY: the chain's SPTEs stay valid for 'a, see `Chain::iter()`.
                    return Some(unsafe { sptep.as_ref() });
                }
                IterPos::Desc(desc, i) => {
                    // SAFETY: the chain is stable for 'a, see `Chain::iter()`.
                    let (sptep, more) = unsafe {
                        Desc::read(desc, |d| {
                            (d.sptes[..d.count()].get(i).copied().flatten(), d.more)
                        })
                    };
                    if let Some(sptep) = sptep {
                        self.pos = IterPos::Desc(desc, i + 1);
                        // SAFETY: as for `IterPos::One` above.
                        return Some(unsafe { sptep.as_ref() });
                    }
                    self.pos = more.map_or(IterPos::Done, |m| IterPos::Desc(m, 0));
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    std::thread_local! {
        static LIVE_DESCS: Cell<isize> = const { Cell::new(0) };
    }

    /// Counts descriptors allocated and not yet freed, per test thread.
    pub(super) fn live_descs_add(n: isize) {
        LIVE_DESCS.with(|c| c.set(c.get() + n));
    }

    fn live_descs() -> isize {
        LIVE_DESCS.with(Cell::get)
    }

    fn slots(n: usize) -> Vec<AtomicU64> {
        // Nonzero values: 0 stands for a zapped SPTE.
        (0..n).map(|i| AtomicU64::new(i as u64 + 1)).collect()
    }

    fn ptr(slot: &AtomicU64) -> NonNull<AtomicU64> {
        NonNull::from(slot)
    }

    fn mmu() -> MmuWriteLocked<'static> {
        // SAFETY: each test is single-threaded; its only writer is the test itself.
        unsafe { MmuWriteLocked::assume() }
    }

    fn contents(guard: &RmapGuard<'_>) -> BTreeSet<usize> {
        let set: BTreeSet<usize> = guard.sptes().map(|s| ptr::from_ref(s).addr()).collect();
        assert_eq!(set.len(), guard.len(), "duplicate or missing entries");
        set
    }

    fn add(head: &RmapHead, slot: &AtomicU64, cache: &mut DescCache) -> usize {
        let mut mmu = mmu();
        let mut guard = head.lock(&mut mmu);
        // SAFETY: the test's slots outlive its rmaps, which are drained before they go.
        let before = unsafe { guard.add(ptr(slot), cache) };
        guard.check();
        before
    }

    fn remove(head: &RmapHead, slot: &AtomicU64, cache: &mut DescCache) -> bool {
        let mut mmu = mmu();
        let mut guard = head.lock(&mut mmu);
        let found = guard.remove(ptr(slot), cache);
        guard.check();
        found
    }

    /// A small deterministic shuffle (xorshift), to avoid a dependency.
    fn shuffled(n: usize, seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = seed | 1;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        order
    }

    fn add_remove_in_order(n: usize, add_order: &[usize], remove_order: &[usize]) {
        let table = slots(n);
        let head = RmapHead::new();
        let mut cache = DescCache::new(4);
        let mut expect = BTreeSet::new();
        for (k, &i) in add_order.iter().enumerate() {
            cache.topup(1).unwrap();
            assert_eq!(add(&head, &table[i], &mut cache), k);
            expect.insert(ptr::from_ref(&table[i]).addr());
            assert_eq!(contents(&head.lock(&mut mmu())), expect);
        }
        // A chain of n > 1 SPTEs has ceil(n / PTE_LIST_EXT) descriptors.
        let descs = if n > 1 { n.div_ceil(PTE_LIST_EXT) } else { 0 };
        assert_eq!(live_descs() as usize, descs + cache.len());
        for &i in remove_order {
            assert!(remove(&head, &table[i], &mut cache));
            assert!(!remove(&head, &table[i], &mut cache), "removed twice");
            expect.remove(&ptr::from_ref(&table[i]).addr());
            assert_eq!(contents(&head.lock(&mut mmu())), expect);
        }
        assert!(head.is_empty());
        assert_eq!(live_descs() as usize, cache.len());
        drop(cache);
        assert_eq!(live_descs(), 0);
    }

    #[test]
    fn add_remove_all_sizes_and_orders() {
        for n in 1..=100 {
            let forward: Vec<usize> = (0..n).collect();
            let reverse: Vec<usize> = (0..n).rev().collect();
            add_remove_in_order(n, &forward, &forward);
            add_remove_in_order(n, &forward, &reverse);
            add_remove_in_order(n, &reverse, &forward);
            add_remove_in_order(n, &shuffled(n, n as u64), &shuffled(n, !(n as u64)));
        }
    }

    #[test]
    fn interleaved_add_remove_across_chunks() {
        let n = 3 * PTE_LIST_EXT + 5;
        let table = slots(n);
        let head = RmapHead::new();
        let mut cache = DescCache::new(8);
        let mut present = BTreeSet::new();
        for (step, i) in shuffled(4 * n, 7).into_iter().map(|i| i % n).enumerate() {
            cache.topup(1).unwrap();
            if present.contains(&i) && step % 3 != 0 {
                assert!(remove(&head, &table[i], &mut cache));
                present.remove(&i);
            } else if !present.contains(&i) {
                assert_eq!(add(&head, &table[i], &mut cache), present.len());
                present.insert(i);
            }
            let expect: BTreeSet<usize> = present
                .iter()
                .map(|&i| ptr::from_ref(&table[i]).addr())
                .collect();
            assert_eq!(contents(&head.lock(&mut mmu())), expect);
        }
        let mut drained = 0;
        assert_eq!(
            head.lock(&mut mmu()).drain(&mut cache, |_| drained += 1),
            present.len()
        );
        assert_eq!(drained, present.len());
        assert_eq!(live_descs() as usize, cache.len());
    }

    #[test]
    fn head_encoding() {
        let table = slots(3);
        let head = RmapHead::new();
        let mut cache = DescCache::new(2);
        cache.topup(2).unwrap();
        assert_eq!(head.raw(), 0);

        add(&head, &table[0], &mut cache);
        assert_eq!(
            head.raw(),
            ptr::from_ref(&table[0]).addr(),
            "one SPTE: the bare pointer"
        );

        add(&head, &table[1], &mut cache);
        let raw = head.raw();
        assert_eq!(raw & RMAP_TAGS, RMAP_MANY, "two SPTEs: MANY, not LOCKED");
        assert_eq!(cache.len(), 1);

        add(&head, &table[2], &mut cache);
        assert_eq!(head.raw(), raw, "third SPTE goes into the same descriptor");

        head.lock(&mut mmu()).drain(&mut cache, |_| {});
        assert_eq!(head.raw(), 0);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn lock_and_unlock_values() {
        let table = slots(2);
        let head = RmapHead::new();
        let mut cache = DescCache::new(1);
        cache.topup(1).unwrap();

        // Empty: no lock taken, nothing written back.
        {
            let mut mmu = mmu();
            let guard = head.lock(&mut mmu);
            assert!(guard.is_empty());
            assert_eq!(head.raw(), 0);
        }
        assert_eq!(head.raw(), 0);

        for n in 1..=2 {
            add(&head, &table[n - 1], &mut cache);
            let raw = head.raw();
            {
                let mut mmu = mmu();
                let guard = head.lock(&mut mmu);
                assert_eq!(guard.len(), n);
                assert_eq!(head.raw(), raw | RMAP_LOCKED);
            }
            assert_eq!(head.raw(), raw);

            let no_preempt = NoPreempt::new();
            {
                let guard = head.lock_readonly(&no_preempt);
                assert_eq!(guard.len(), n);
                assert_eq!(guard.sptes().count(), n);
                assert_eq!(head.raw(), raw | RMAP_LOCKED);
            }
            assert_eq!(head.raw(), raw, "read-only unlock writes back what it saw");
        }
        head.lock(&mut mmu()).drain(&mut cache, |_| {});
    }

    #[test]
    fn readonly_unlock_of_empty_writes_nothing() {
        let table = slots(1);
        let head = RmapHead::new();
        let mut cache = DescCache::new(1);
        let no_preempt = NoPreempt::new();

        let reader = head.lock_readonly(&no_preempt);
        assert!(reader.is_empty());
        assert_eq!(reader.sptes().count(), 0);
        // A writer adds the first SPTE while the reader "holds" the empty rmap.
        add(&head, &table[0], &mut cache);
        drop(reader);
        assert_eq!(
            head.raw(),
            ptr::from_ref(&table[0]).addr(),
            "the reader must not write 0"
        );

        assert!(remove(&head, &table[0], &mut cache));
    }

    #[test]
    fn readonly_walk_sees_nonpresent_sptes() {
        let table = slots(PTE_LIST_EXT + 1);
        let head = RmapHead::new();
        let mut cache = DescCache::new(2);
        cache.topup(2).unwrap();
        for slot in &table {
            add(&head, slot, &mut cache);
        }
        // Zapped, but not yet removed from the rmap: lockless walkers must cope.
        table[3].store(0, Ordering::Relaxed);
        let no_preempt = NoPreempt::new();
        let guard = head.lock_readonly(&no_preempt);
        assert_eq!(guard.sptes().count(), table.len());
        assert_eq!(
            guard
                .sptes()
                .filter(|s| s.load(Ordering::Relaxed) == 0)
                .count(),
            1
        );
        drop(guard);
        head.lock(&mut mmu()).drain(&mut cache, |_| {});
    }

    #[test]
    fn drain_hands_out_every_spte_once() {
        for n in [
            0,
            1,
            2,
            PTE_LIST_EXT,
            PTE_LIST_EXT + 1,
            2 * PTE_LIST_EXT + 1,
            100,
        ] {
            let table = slots(n);
            let head = RmapHead::new();
            let mut cache = DescCache::new(16);
            for slot in &table {
                cache.topup(1).unwrap();
                add(&head, slot, &mut cache);
            }
            let mut seen = BTreeSet::new();
            let mut mmu = mmu();
            let mut guard = head.lock(&mut mmu);
            let count = guard.drain(
                &mut cache,
                |s| assert!(seen.insert(ptr::from_ref(s).addr())),
            );
            assert_eq!(count, n);
            assert_eq!(seen.len(), n);
            assert!(guard.is_empty() && guard.sptes().next().is_none());
            drop(guard);
            assert_eq!(head.raw(), 0);
            assert_eq!(live_descs() as usize, cache.len());
        }
        assert_eq!(live_descs(), 0);
    }

    #[test]
    fn removing_unknown_spte_changes_nothing() {
        let table = slots(PTE_LIST_EXT + 2);
        let head = RmapHead::new();
        let mut cache = DescCache::new(2);
        let stranger = AtomicU64::new(0);
        assert!(!remove(&head, &stranger, &mut cache));
        for slot in &table {
            cache.topup(1).unwrap();
            add(&head, slot, &mut cache);
            let before = contents(&head.lock(&mut mmu()));
            assert!(!remove(&head, &stranger, &mut cache));
            assert_eq!(contents(&head.lock(&mut mmu())), before);
        }
        head.lock(&mut mmu()).drain(&mut cache, |_| {});
    }

    #[test]
    fn several_operations_under_one_guard() {
        let table = slots(2 * PTE_LIST_EXT);
        let head = RmapHead::new();
        let mut cache = DescCache::new(4);
        cache.topup(4).unwrap();
        {
            let mut mmu = mmu();
            let mut guard = head.lock(&mut mmu);
            for slot in &table {
                // SAFETY: the slots outlive the rmap, which is drained below.
                unsafe { guard.add(ptr(slot), &mut cache) };
            }
            assert!(guard.remove(ptr(&table[0]), &mut cache));
            guard.check();
            // Nothing is published before the guard goes.
            assert_eq!(head.raw(), 0);
        }
        assert_eq!(head.lock(&mut mmu()).len(), table.len() - 1);
        head.lock(&mut mmu()).drain(&mut cache, |_| {});
    }

    #[test]
    fn cache_topup_capacity_and_drop() {
        let mut cache = DescCache::new(3);
        cache.topup(1).unwrap();
        assert_eq!(cache.len(), 3, "top-ups fill to capacity");
        cache.topup(2).unwrap();
        assert_eq!(cache.len(), 3);
        cache.topup(5).unwrap();
        assert_eq!(cache.len(), 5, "or to the minimum asked for");
        assert_eq!(live_descs(), 5);

        // Frees beyond the capacity go back to the allocator.
        let mut other = DescCache::new(0);
        let table = slots(PTE_LIST_EXT + 1);
        let head = RmapHead::new();
        for slot in &table {
            add(&head, slot, &mut cache);
        }
        assert_eq!(cache.len(), 3);
        head.lock(&mut mmu()).drain(&mut other, |_| {});
        assert_eq!(other.len(), 0);
        assert_eq!(live_descs(), 3);
        drop(cache);
        assert_eq!(live_descs(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Models of the races the bit lock guards against ("Rmap locking", "Lockless rmap walks"),
    //! explored exhaustively (no preemption bound; each takes milliseconds).  Each thread that
    //! writes holds its own [`DescCache`], as a vCPU would; leak checks count descriptors back into
    //! the caches.

    use super::*;
    use loom::model;
    use loom::sync::Arc;
    use loom::thread;
    use std::vec::Vec;

    /// The shared state of a model: an rmap and the page-table slots its SPTEs live in.
    struct World {
        head: RmapHead,
        table: [AtomicU64; 4],
    }

    impl World {
        fn new() -> Arc<World> {
            Arc::new(World {
                head: RmapHead::new(),
                table: [0, 1, 2, 3].map(AtomicU64::new),
            })
        }

        fn slot(&self, i: usize) -> NonNull<AtomicU64> {
            NonNull::from(&self.table[i])
        }

        /// Which slots the rmap holds, read under a read-only lock.
        fn walk(&self) -> Vec<usize> {
            let no_preempt = NoPreempt::new();
            let guard = self.head.lock_readonly(&no_preempt);
            let mut seen: Vec<usize> = guard.sptes().map(|s| self.index(s)).collect();
            seen.sort_unstable();
            seen
        }

        fn index(&self, sptep: &AtomicU64) -> usize {
            let found = self.table.iter().position(|s| ptr::eq(s, sptep));
            found.expect("rmap holds a pointer outside the table")
        }

        /// Adds slots `idx` under one write guard.
        fn add(&self, idx: &[usize], cache: &mut DescCache) {
            // SAFETY: the caller is the only writer, or the rmap never empties (see the tests).
            let mut mmu = unsafe { MmuWriteLocked::assume() };
            let mut guard = self.head.lock(&mut mmu);
            for &i in idx {
                // SAFETY: the slots live in `self`, which outlives every rmap entry: each
                // model drains the rmap before it ends.
                unsafe { guard.add(self.slot(i), cache) };
            }
        }

        /// Empties the rmap and returns how many SPTEs it held.
        fn drain(&self, cache: &mut DescCache) -> usize {
            // SAFETY: called when no other writer runs.
            let mut mmu = unsafe { MmuWriteLocked::assume() };
            let mut guard = self.head.lock(&mut mmu);
            guard.drain(cache, |_| {})
        }
    }

    /// (a) The 0->1 transition under a read-only walker: the walker sees either nothing or the
    /// new SPTE, and its unlock must not discard it.
    #[test]
    fn loom_first_add_under_readonly_walker() {
        model(|| {
            let world = World::new();
            let reader = {
                let world = world.clone();
                thread::spawn(move || world.walk())
            };
            let mut cache = DescCache::new(1);
            world.add(&[0], &mut cache);
            let seen = reader.join().unwrap();
            assert!(seen.is_empty() || seen == [0]);
            assert_eq!(world.walk(), [0]);
            assert_eq!(world.drain(&mut cache), 1);
        });
    }

    /// (b) The rmap is emptied while the other side spins on LOCKED: a reader spinning behind
    /// the draining writer must find it empty and not lock it; a writer spinning behind the
    /// reader must then empty it.  The reader never sees a partial chain.
    #[test]
    fn loom_emptied_while_spinning() {
        model(|| {
            let world = World::new();
            let mut cache = DescCache::new(1);
            cache.topup(1).unwrap();
            world.add(&[0, 1, 2], &mut cache);
            assert_eq!(cache.len(), 0);

            let reader = {
                let world = world.clone();
                thread::spawn(move || world.walk())
            };
            assert_eq!(world.drain(&mut cache), 3);
            let seen = reader.join().unwrap();
            assert!(
                seen.is_empty() || seen == [0, 1, 2],
                "partial chain {seen:?}"
            );
            assert!(world.head.is_empty());
            assert_eq!(cache.len(), 1, "descriptor leaked or freed twice");
        });
    }

    /// (c) A read-only walker holding the guard of an empty rmap while a writer adds to it must
    /// write nothing when it unlocks.
    #[test]
    fn loom_readonly_unlock_of_empty_writes_nothing() {
        model(|| {
            let world = World::new();
            let locked = Arc::new(loom::sync::atomic::AtomicBool::new(false));
            let added = Arc::new(loom::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (world, locked, added) = (world.clone(), locked.clone(), added.clone());
                thread::spawn(move || {
                    let no_preempt = NoPreempt::new();
                    let guard = world.head.lock_readonly(&no_preempt);
                    let empty = guard.is_empty();
                    locked.store(true, Ordering::Release);
                    while !added.load(Ordering::Acquire) {
                        thread::yield_now();
                    }
                    drop(guard);
                    empty
                })
            };
            let mut cache = DescCache::new(1);
            while !locked.load(Ordering::Acquire) {
                thread::yield_now();
            }
            world.add(&[0], &mut cache);
            added.store(true, Ordering::Release);
            assert!(reader.join().unwrap(), "the reader locked an empty rmap");
            assert_eq!(world.walk(), [0]);
            assert_eq!(world.drain(&mut cache), 1);
        });
    }

    /// (d) Two writers add and remove concurrently; neither loses the other's update.  The
    /// rmap never empties (slot 0 stays), so every lock takes the bit lock, and the bit lock
    /// alone must serialize them, including the descriptor they both touch.
    #[test]
    fn loom_two_writers_no_lost_entries() {
        model(|| {
            let world = World::new();
            let mut cache = DescCache::new(2);
            cache.topup(1).unwrap();
            world.add(&[0, 1], &mut cache);

            let adder = {
                let world = world.clone();
                thread::spawn(move || {
                    let mut cache = DescCache::new(1);
                    cache.topup(1).unwrap();
                    world.add(&[2, 3], &mut cache);
                    cache
                })
            };
            {
                // SAFETY: the rmap never empties here (slot 0 is never removed), so the bit
                // lock is always taken and excludes the other writer, which is what the MMU
                // lock requirement is for.
                let mut mmu = unsafe { MmuWriteLocked::assume() };
                let mut guard = world.head.lock(&mut mmu);
                assert!(guard.remove(world.slot(1), &mut cache));
            }
            let adder_cache = adder.join().unwrap();
            assert_eq!(world.walk(), [0, 2, 3]);
            assert_eq!(world.drain(&mut cache), 3);
            assert_eq!(cache.len() + adder_cache.len(), 3, "descriptor leaked");
        });
    }

    /// (e) A walker locking the rmap after a writer turned its single SPTE into a descriptor
    /// chain must see the descriptor's contents (Acquire on lock pairs with Release on unlock).
    #[test]
    fn loom_chain_published_to_walker() {
        model(|| {
            let world = World::new();
            let mut cache = DescCache::new(1);
            world.add(&[0], &mut cache);
            cache.topup(1).unwrap();

            let reader = {
                let world = world.clone();
                thread::spawn(move || world.walk())
            };
            world.add(&[1], &mut cache);
            let seen = reader.join().unwrap();
            assert!(seen == [0] || seen == [0, 1], "saw {seen:?}");
            assert_eq!(world.drain(&mut cache), 2);
            assert_eq!(cache.len(), 1);
        });
    }
}
