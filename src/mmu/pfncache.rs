// SPDX-License-Identifier: GPL-2.0

//! Kernel-mapped guest page caches: the state machine of KVM's `struct gfn_to_pfn_cache`
//! (`virt/kvm/pfncache.c`), for code that must write guest memory where it cannot fault or
//! sleep (a timer in hard IRQ context, a vCPU's exit path).
//!
//! A cache is *activated* on a guest-physical address (or a plain user address) and a length
//! within one page.  A *refresh*, in process context, resolves it to a user page, gets the page
//! with get_user_pages and records its kernel address; the cache is then *valid*, and a *check*
//! from any context gives that address for as long as it stays so.  No page reference is kept
//! while the cache is valid: the MMU notifier guarantees the page's lifetime, since the primary
//! MMU cannot free or replace it without an `invalidate_range_start()` of its address first, and
//! that invalidates the cache ([`GpcState::invalidate()`]) under the cache's lock, which every
//! user of the address holds.
//!
//! The cache is invalidated at the *start* of an invalidation, not at its end: between the two
//! the primary may already have freed the page (see "Kernel-mapped guest pages" in
//! Documentation/secmmu-protocols.rst).  A refresh that raced an invalidation of its page must
//! start over, and only such a refresh: it watches its page from before it resolves it
//! ([`GpcState::refresh_begin()`]), every invalidation that begins over the page marks the
//! watch stale, one already in progress over it makes it stale at once, and the refresh
//! publishes its page only if the watch is still fresh ([`GpcState::refresh_commit()`]).
//! KVM 7.3 (`mmu_notifier_retry_cache()`) instead retries while *any* invalidation of the VM is
//! in progress or one ended since: [`Policy::AnyInvalidation`] does the same, for comparison.
//!
//! Memslot changes invalidate a guest-physical cache through the memslot generation, as in KVM:
//! a check fails once the generation moved, and the next refresh resolves the address again.
//!
//! The caller keeps the locks: this state lives under the cache's IRQ-safe lock (KVM's
//! `gpc->lock`), refreshes are serialized by a mutex (`gpc->refresh_lock`), and the
//! invalidation calls [`GpcState::invalidate()`] with the MMU lock held for write, after it
//! marked its range in progress.
//!
//! Kernel-free: built into the module and into the host crate.

use crate::mmu::addr::{Hva, Pfn};

/// Bytes in a page.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// What a cache caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A guest-physical address, resolved through the memslots.
    Gpa(u64),
    /// A user address of the space's mm.
    Hva(u64),
}

impl Target {
    /// The address, guest-physical or user.
    fn addr(self) -> u64 {
        match self {
            Target::Gpa(a) | Target::Hva(a) => a,
        }
    }
}

/// Why an activation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActivateError {
    /// The length is zero, or the range crosses a page boundary.
    Invalid,
}

/// When a refresh must start over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Only when an invalidation overlapping the cached page began since the refresh started
    /// watching it, or is in progress: secmmu's rule.
    Range,
    /// Whenever any invalidation of the space is in progress, or one ended since the refresh
    /// began (KVM 7.3's `mmu_notifier_retry_cache()`), for comparison.
    AnyInvalidation,
}

/// What the invalidation state said about a refresh, at its commit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InvalState {
    /// An invalidation overlapping the page is in progress.
    pub(crate) overlapping: bool,
    /// Any invalidation is in progress, or one ended since the refresh began.
    pub(crate) any: bool,
}

/// Why a refresh must start over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// An invalidation of the cached page raced it.
    Overlap,
    /// The memslots changed since it resolved the address.
    Memslots,
    /// Only the [`Policy::AnyInvalidation`] policy says so: an invalidation of other memory.
    Unrelated,
    /// The cache was deactivated or activated anew meanwhile: the refresh is moot.
    Moot,
}

/// The page a valid cache maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    /// The host page.
    pub(crate) pfn: Pfn,
    /// Its kernel address.
    pub(crate) khva: usize,
}

/// One cache's state, under its lock.
#[derive(Debug, Default)]
pub(crate) struct GpcState {
    /// What it caches, if active.
    target: Option<Target>,
    /// Bytes from the target address that its users access.
    len: u64,
    /// Whether its users write through it: the refresh gets the page for write, and the page is
    /// marked dirty when the cache drops it.
    writable: bool,
    /// Bumped by every activation and deactivation: a refresh begun before one is moot.
    epoch: u64,
    /// The user page the target resolved to (page-aligned), watched or mapped.
    uhva: Option<Hva>,
    /// The memslot generation the target resolved at (guest-physical targets).
    generation: u64,
    /// The page mapped: `Some` while valid.
    mapping: Option<Mapping>,
    /// A refresh watches `uhva`: the epoch it began in.
    refreshing: Option<u64>,
    /// An invalidation of `uhva` began since the refresh started watching it.
    stale: bool,
    /// Dirty logging: the guest-physical address a writable cache has mapped since the last
    /// harvest of the dirty log that covers it ([`GpcState::harvest_logged()`]).  Its users may
    /// write through the cache at any time, without faulting, so a harvest reports the page dirty
    /// while the cache maps it, and once more after (KVM's `kvm_gpc_mark_dirty_in_slot()`, at
    /// harvest time rather than at each write, which may come in hard IRQ context).
    logged: Option<u64>,
}

/// A refresh in progress: what [`GpcState::refresh_begin()`] handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refresh {
    /// The user page to resolve.
    pub(crate) uhva: Hva,
    /// Whether to get it for write.
    pub(crate) writable: bool,
    epoch: u64,
}

impl GpcState {
    /// An inactive cache.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// What a refresh resolves: the target, whether the cache is writable,
    /// and the activation it belongs to (for [`GpcState::refresh_begin()`]).
    /// `None` if inactive.
    pub(crate) fn prepare(&self) -> Option<(Target, bool, u64)> {
        Some((self.target?, self.writable, self.epoch))
    }

    /// Activates the cache on `target` for `len` bytes (KVM's `kvm_gpc_activate()`), for
    /// reading and, with `writable`, writing.  It is not valid until a refresh.  Returns the page
    /// a previous activation left mapped, to be marked dirty if it was writable.
    pub(crate) fn activate(
        &mut self,
        target: Target,
        len: u64,
        writable: bool,
    ) -> Result<Option<Pfn>, ActivateError> {
        let off = target.addr() % PAGE_SIZE;
        if len == 0 || len > PAGE_SIZE - off {
            return Err(ActivateError::Invalid);
        }
        let dropped = self.deactivate();
        self.target = Some(target);
        self.len = len;
        self.writable = writable;
        Ok(dropped)
    }

    /// Deactivates the cache (KVM's `kvm_gpc_deactivate()`): invalid, nothing watched.  Returns
    /// the page it mapped if it was writable, for the caller to mark dirty (with the cache's
    /// lock held: the page is alive while the cache maps it).
    pub(crate) fn deactivate(&mut self) -> Option<Pfn> {
        let dropped = self.drop_mapping();
        self.target = None;
        self.uhva = None;
        self.refreshing = None;
        self.stale = false;
        self.epoch = self.epoch.wrapping_add(1);
        dropped
    }

    /// Makes the cache invalid; returns the page if it was mapped writable.
    fn drop_mapping(&mut self) -> Option<Pfn> {
        let m = self.mapping.take()?;
        self.writable.then_some(m.pfn)
    }

    /// The kernel address of the target for an access of `len` bytes, if the cache is valid
    /// for it (KVM's `kvm_gpc_check()`): active, refreshed since its last invalidation, resolved
    /// in memslot generation `generation` (the current one; ignored for a user-address target),
    /// and covering the access.  From any context, with the cache's lock held for as long as the
    /// address is used.
    pub(crate) fn check(&self, generation: u64, len: u64) -> Option<usize> {
        let target = self.target?;
        let m = self.mapping?;
        if matches!(target, Target::Gpa(_)) && self.generation != generation {
            return None;
        }
        if len > self.len {
            return None;
        }
        Some(m.khva + (target.addr() % PAGE_SIZE) as usize)
    }

    /// Whether the cache is valid (mapped), whatever the generation.
    pub(crate) fn is_mapped(&self) -> bool {
        self.mapping.is_some()
    }

    /// A refresh resolved the target of activation `epoch` (from [`GpcState::prepare()`]) to
    /// the user page `uhva` in memslot generation `generation`, and starts watching it;
    /// `in_progress` says whether an invalidation overlapping the page is in progress (then the
    /// watch is stale at once: its end may come before the refresh commits, and the primary may
    /// be changing the page under its lookup).  The cache becomes invalid if it mapped another
    /// page.  `None` if the cache is inactive, or was activated anew since `prepare()`.
    pub(crate) fn refresh_begin(
        &mut self,
        epoch: u64,
        uhva: Hva,
        generation: u64,
        in_progress: bool,
    ) -> Option<(Refresh, Option<Pfn>)> {
        self.target?;
        if epoch != self.epoch {
            return None;
        }
        let dropped = if self.uhva != Some(uhva) || self.generation != generation {
            self.drop_mapping()
        } else {
            None
        };
        self.uhva = Some(uhva);
        self.generation = generation;
        self.refreshing = Some(self.epoch);
        self.stale = in_progress;
        let r = Refresh {
            uhva,
            writable: self.writable,
            epoch: self.epoch,
        };
        Some((r, dropped))
    }

    /// The refresh `r` resolved its page to `mapping`: publishes it, valid, unless it must
    /// start over.  `generation` is the current memslot generation, `inval` what the
    /// invalidation state says now, `policy` the retry rule.  On success returns the page the
    /// cache mapped before, if writable and another, to mark dirty.
    pub(crate) fn refresh_commit(
        &mut self,
        r: &Refresh,
        mapping: Mapping,
        generation: u64,
        inval: InvalState,
        policy: Policy,
    ) -> Result<Option<Pfn>, Retry> {
        if self.target.is_none() || self.refreshing != Some(r.epoch) || self.epoch != r.epoch {
            return Err(Retry::Moot);
        }
        let overlap = self.stale || inval.overlapping;
        let retry = if overlap {
            Some(Retry::Overlap)
        } else if matches!(self.target, Some(Target::Gpa(_))) && self.generation != generation {
            Some(Retry::Memslots)
        } else if policy == Policy::AnyInvalidation && inval.any {
            Some(Retry::Unrelated)
        } else {
            None
        };
        if let Some(why) = retry {
            // The next attempt watches afresh.
            self.refreshing = None;
            self.stale = false;
            return Err(why);
        }
        self.refreshing = None;
        let old = self.mapping.replace(mapping);
        Ok(old
            .filter(|o| self.writable && o.pfn != mapping.pfn)
            .map(|o| o.pfn))
    }

    /// Dirty logging, after a successful [`GpcState::refresh_commit()`]: a writable cache of a
    /// guest-physical address is logged from now on.  Returns the address it was logged at before,
    /// if another, for the caller to mark dirty now (the cache may have written through it since
    /// the last harvest, and no harvest will look for it any more).
    pub(crate) fn log_commit(&mut self) -> Option<u64> {
        let Some(Target::Gpa(gpa)) = self.target.filter(|_| self.writable && self.is_mapped())
        else {
            return None;
        };
        self.logged.replace(gpa).filter(|&old| old != gpa)
    }

    /// A harvest of the dirty log of the guest-physical range `[start, end)`: the address this
    /// cache is logged at, if in the range, for the harvest to mark dirty.  A cache that no longer
    /// maps it is logged no more.
    pub(crate) fn harvest_logged(&mut self, start: u64, end: u64) -> Option<u64> {
        let gpa = self.logged.filter(|g| (start..end).contains(g))?;
        if !self.is_mapped() {
            self.logged = None;
        }
        Some(gpa)
    }

    /// `invalidate_range_start()` of the user range `[start, end)`: a cache that maps a page of
    /// it becomes invalid, and a refresh watching one must start over.  `None` if the range
    /// leaves the cache alone; otherwise the page if the cache mapped it writable, for the caller
    /// to mark dirty (the primary still maps it: the invalidation has only begun).
    pub(crate) fn invalidate(&mut self, start: Hva, end: Hva) -> Option<Option<Pfn>> {
        let uhva = self.uhva?;
        if end <= uhva || start >= uhva.add_pages(1) {
            return None;
        }
        if self.refreshing.is_none() && self.mapping.is_none() {
            return None;
        }
        if self.refreshing.is_some() {
            self.stale = true;
        }
        Some(self.drop_mapping())
    }
}

#[cfg(any(test, CONFIG_KUNIT))]
pub(crate) mod checks {
    //! Checks shared by the host's `cargo test` and the in-kernel KUnit suite.
    use super::{GpcState, InvalState, Mapping, Policy, Retry, Target, PAGE_SIZE};
    use crate::mmu::addr::{Hva, Pfn};

    /// The activation a refresh of `g` begins in.
    fn epoch(g: &GpcState) -> u64 {
        g.prepare().map_or(u64::MAX, |p| p.2)
    }

    fn m(pfn: u64) -> Mapping {
        Mapping {
            pfn: Pfn::new(pfn),
            khva: (pfn * PAGE_SIZE) as usize,
        }
    }

    const QUIET: InvalState = InvalState {
        overlapping: false,
        any: false,
    };

    /// A refresh makes the cache valid for accesses it covers, in its generation; an
    /// invalidation of its page makes it invalid and hands back a writable page to dirty.
    pub(crate) fn refresh_then_invalidate() -> bool {
        let mut g = GpcState::new();
        let mut ok = g.activate(Target::Gpa(0x1010), 16, true) == Ok(None);
        ok &= g.check(1, 16).is_none();
        let uhva = Hva::new(0x7000_0000);
        let Some((r, None)) = g.refresh_begin(epoch(&g), uhva, 1, false) else {
            return false;
        };
        ok &= r.writable && r.uhva == uhva;
        ok &= g.refresh_commit(&r, m(5), 1, QUIET, Policy::Range) == Ok(None);
        ok &= g.check(1, 16) == Some(5 * 4096 + 0x10);
        ok &= g.check(1, 17).is_none() && g.check(2, 16).is_none();
        // Elsewhere: nothing.
        ok &= g
            .invalidate(Hva::new(0x7000_1000), Hva::new(0x7000_2000))
            .is_none();
        ok &= g.check(1, 8).is_some();
        let dirty = g.invalidate(Hva::new(0x6fff_f000), Hva::new(0x7000_0001));
        ok &= dirty == Some(Some(Pfn::new(5)));
        // Invalid already: nothing to do.
        ok &= g
            .invalidate(Hva::new(0x7000_0000), Hva::new(0x7000_1000))
            .is_none();
        ok &= g.check(1, 8).is_none() && !g.is_mapped();
        ok
    }

    /// An invalidation that begins over the page while a refresh resolves it makes the refresh
    /// start over, even if it ended before the commit; one in progress when the refresh began
    /// does too; one of other memory never does under the range policy, and always does under
    /// the KVM 7.3 policy.
    pub(crate) fn refresh_retries_only_for_its_page() -> bool {
        let mut g = GpcState::new();
        let uhva = Hva::new(0x40_0000);
        let mut ok = g.activate(Target::Hva(0x40_0008), 8, false).is_ok();
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 0, false).unwrap();
        g.invalidate(Hva::new(0x40_0000), Hva::new(0x40_1000));
        ok &= g.refresh_commit(&r, m(9), 0, QUIET, Policy::Range) == Err(Retry::Overlap);
        // In progress when it began.
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 0, true).unwrap();
        ok &= g.refresh_commit(&r, m(9), 0, QUIET, Policy::Range) == Err(Retry::Overlap);
        // Overlapping one in progress at the commit.
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 0, false).unwrap();
        let busy = InvalState {
            overlapping: true,
            any: true,
        };
        ok &= g.refresh_commit(&r, m(9), 0, busy, Policy::Range) == Err(Retry::Overlap);
        // Storm elsewhere: the range policy publishes, the KVM policy retries.
        let elsewhere = InvalState {
            overlapping: false,
            any: true,
        };
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 0, false).unwrap();
        g.invalidate(Hva::new(0x80_0000), Hva::new(0x90_0000));
        let kvm = g.refresh_commit(&r, m(9), 0, elsewhere, Policy::AnyInvalidation);
        ok &= kvm == Err(Retry::Unrelated);
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 0, false).unwrap();
        ok &= g.refresh_commit(&r, m(9), 0, elsewhere, Policy::Range) == Ok(None);
        // A read-only cache hands back no page to dirty.
        ok &= g.invalidate(uhva, uhva.add_pages(1)) == Some(None) && !g.is_mapped();
        ok
    }

    /// A memslot change between resolve and commit makes the refresh start over; one after the
    /// commit makes checks fail until the next refresh.  A deactivation or a new activation
    /// makes a refresh in flight moot.
    pub(crate) fn memslots_and_deactivation() -> bool {
        let mut g = GpcState::new();
        let uhva = Hva::new(0x1000);
        let mut ok = g.activate(Target::Gpa(0), 8, true).is_ok();
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 3, false).unwrap();
        ok &= g.refresh_commit(&r, m(1), 4, QUIET, Policy::Range) == Err(Retry::Memslots);
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 4, false).unwrap();
        ok &= g.refresh_commit(&r, m(1), 4, QUIET, Policy::Range) == Ok(None);
        ok &= g.check(4, 8).is_some() && g.check(5, 8).is_none();
        // A refresh to another page drops the old one, to be dirtied.
        let (r, dropped) = g
            .refresh_begin(epoch(&g), Hva::new(0x2000), 5, false)
            .unwrap();
        ok &= dropped == Some(Pfn::new(1));
        ok &= g.deactivate().is_none();
        ok &= g.refresh_commit(&r, m(2), 5, QUIET, Policy::Range) == Err(Retry::Moot);
        ok &= g.check(5, 8).is_none() && g.refresh_begin(epoch(&g), uhva, 5, false).is_none();
        // A refresh prepared before a new activation does not begin in it.
        ok &= g.activate(Target::Gpa(0x3000), 8, true).is_ok();
        let stale = epoch(&g);
        ok &= g.activate(Target::Gpa(0x5000), 8, true).is_ok();
        ok &= g.refresh_begin(stale, Hva::new(0x3000), 5, false).is_none();
        // Bad geometry.
        ok &= g.activate(Target::Gpa(0xff8), 16, false).is_err();
        ok &= g.activate(Target::Gpa(0), 0, false).is_err();
        ok &= g.activate(Target::Gpa(0xff8), 8, false).is_ok();
        ok
    }

    /// Dirty logging: a writable cache of a guest-physical address is logged once it commits;
    /// a harvest of a range holding it reports it while the cache maps it, and once more after
    /// the cache lost it; a refresh to another address hands back the old one to mark at once.
    /// Read-only caches and user-address caches are never logged.
    pub(crate) fn dirty_logging() -> bool {
        let mut g = GpcState::new();
        let uhva = Hva::new(0x1000);
        let mut ok = g.activate(Target::Gpa(0x4010), 8, true).is_ok();
        ok &= g.harvest_logged(0, u64::MAX).is_none();
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 1, false).unwrap();
        ok &= g.refresh_commit(&r, m(1), 1, QUIET, Policy::Range).is_ok();
        ok &= g.log_commit().is_none();
        // Outside the range harvested: nothing; inside: every harvest while mapped.
        ok &= g.harvest_logged(0x5000, 0x6000).is_none();
        ok &= g.harvest_logged(0x4000, 0x5000) == Some(0x4010);
        ok &= g.harvest_logged(0x4000, 0x5000) == Some(0x4010);
        // Invalidated: once more, then no more.
        ok &= g.invalidate(uhva, uhva.add_pages(1)) == Some(Some(Pfn::new(1)));
        ok &= g.harvest_logged(0x4000, 0x5000) == Some(0x4010);
        ok &= g.harvest_logged(0x4000, 0x5000).is_none();
        // Logged again, then moved to another address before any harvest: the old one is
        // handed back.
        let (r, _) = g.refresh_begin(epoch(&g), uhva, 1, false).unwrap();
        ok &= g.refresh_commit(&r, m(1), 1, QUIET, Policy::Range).is_ok();
        ok &= g.log_commit().is_none();
        ok &= g.activate(Target::Gpa(0x9000), 8, true).is_ok();
        let (r, _) = g
            .refresh_begin(epoch(&g), Hva::new(0x2000), 1, false)
            .unwrap();
        ok &= g.refresh_commit(&r, m(2), 1, QUIET, Policy::Range).is_ok();
        ok &= g.log_commit() == Some(0x4010);
        ok &= g.harvest_logged(0x4000, 0x5000).is_none();
        ok &= g.harvest_logged(0x9000, 0xa000) == Some(0x9000);
        // Read-only and user-address caches are never logged.
        for (target, writable) in [(Target::Gpa(0x7000), false), (Target::Hva(0x7000), true)] {
            let mut g = GpcState::new();
            ok &= g.activate(target, 8, writable).is_ok();
            let (r, _) = g.refresh_begin(epoch(&g), uhva, 1, false).unwrap();
            ok &= g.refresh_commit(&r, m(1), 1, QUIET, Policy::Range).is_ok();
            ok &= g.log_commit().is_none() && g.harvest_logged(0, u64::MAX).is_none();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::checks;

    #[test]
    fn dirty_logging() {
        assert!(checks::dirty_logging());
    }

    #[test]
    fn refresh_then_invalidate() {
        assert!(checks::refresh_then_invalidate());
    }

    #[test]
    fn refresh_retries_only_for_its_page() {
        assert!(checks::refresh_retries_only_for_its_page());
    }

    #[test]
    fn memslots_and_deactivation() {
        assert!(checks::memslots_and_deactivation());
    }
}
