// SPDX-License-Identifier: GPL-2.0

//! Guest frame numbers, host page frame numbers and host virtual addresses as types of their
//! own: KVM's `gfn_t`, `kvm_pfn_t` and `hva_t`, which C keeps apart by name only.
//!
//! A [`Gfn`] names a 4 KiB guest page, a [`Pfn`] a 4 KiB host page, an [`Hva`] a byte of the
//! address space whose memory backs the guest.  The three are `u64` underneath
//! (`#[repr(transparent)]`), and what code does with them has a method: step by pages, align to a
//! [`Level`], go to and from addresses.  They are made from and turned back into bare numbers
//! ([`Gfn::new()`], [`Gfn::raw()`]) only at the edges: the uAPI (guest-physical addresses, user
//! addresses, snapshot buffers), the kernel (pinning user pages, the direct map), and the entry
//! encodings of the formats, whose frame-number fields stay bits of a `u64`.  In between, a gfn
//! cannot be passed where a pfn is expected.
//!
//! Kernel-free: built into the module and into the host crate.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

use crate::mmu::level::{Level, PAGE_SHIFT};

/// Defines a frame or address type: the newtype, its conversions and its page arithmetic.
macro_rules! frame_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub(crate) struct $name(u64);

        impl $name {
            #[doc = concat!("The ", $what, " `raw`, as the uAPI or the kernel hands it over.")]
            #[inline(always)]
            pub(crate) const fn new(raw: u64) -> Self {
                $name(raw)
            }

            #[doc = concat!("The number underneath, for the uAPI, the kernel or an entry's bits.")]
            #[inline(always)]
            pub(crate) const fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

/// Defines the page arithmetic of a frame-number type.
macro_rules! frame_arith {
    ($name:ident) => {
        impl $name {
            /// The first frame of the `level`-sized, aligned block around this one.
            #[inline(always)]
            pub(crate) const fn align_down(self, level: Level) -> Self {
                $name(level.align_down(self.0))
            }

            /// The position of this frame in its `level`-sized, aligned block.
            #[inline(always)]
            pub(crate) const fn offset_in(self, level: Level) -> u64 {
                self.0 & (level.pages() - 1)
            }

            /// Whether this frame starts a `level`-sized, aligned block.
            #[inline(always)]
            pub(crate) const fn is_aligned(self, level: Level) -> bool {
                self.offset_in(level) == 0
            }

            /// The frame `pages` before this one, if any.
            #[inline(always)]
            pub(crate) const fn checked_sub(self, pages: u64) -> Option<Self> {
                match self.0.checked_sub(pages) {
                    Some(v) => Some($name(v)),
                    None => None,
                }
            }

            /// The frame `pages` after this one, saturating.
            #[inline(always)]
            pub(crate) const fn saturating_add(self, pages: u64) -> Self {
                $name(self.0.saturating_add(pages))
            }
        }

        /// The frame `pages` after this one.
        impl Add<u64> for $name {
            type Output = $name;

            #[inline(always)]
            fn add(self, pages: u64) -> $name {
                $name(self.0 + pages)
            }
        }

        impl AddAssign<u64> for $name {
            #[inline(always)]
            fn add_assign(&mut self, pages: u64) {
                self.0 += pages;
            }
        }

        /// The frame `pages` before this one.
        impl Sub<u64> for $name {
            type Output = $name;

            #[inline(always)]
            fn sub(self, pages: u64) -> $name {
                $name(self.0 - pages)
            }
        }

        /// The number of pages from `other` up to this frame.
        impl Sub<$name> for $name {
            type Output = u64;

            #[inline(always)]
            fn sub(self, other: $name) -> u64 {
                self.0 - other.0
            }
        }
    };
}

frame_type!(
    /// A guest frame number: guest-physical address >> 12 (KVM's `gfn_t`).
    Gfn,
    "gfn"
);
frame_arith!(Gfn);

frame_type!(
    /// A host page frame number (KVM's `kvm_pfn_t`): a page a leaf maps, or a table page.
    Pfn,
    "pfn"
);
frame_arith!(Pfn);

frame_type!(
    /// A host virtual address in the address space that backs the guest (KVM's `hva_t`).
    Hva,
    "hva"
);

impl Gfn {
    /// The gfn of guest-physical address `gpa` (KVM's `gpa_to_gfn()`).
    #[inline(always)]
    pub(crate) const fn from_gpa(gpa: u64) -> Gfn {
        Gfn(gpa >> PAGE_SHIFT)
    }

    /// The guest-physical address of the page (KVM's `gfn_to_gpa()`).
    #[inline(always)]
    pub(crate) const fn to_gpa(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl Hva {
    /// The address `pages` pages after this one.
    #[inline(always)]
    pub(crate) const fn add_pages(self, pages: u64) -> Hva {
        Hva(self.0 + (pages << PAGE_SHIFT))
    }

    /// The address `pages` pages before this one.
    #[inline(always)]
    pub(crate) const fn sub_pages(self, pages: u64) -> Hva {
        Hva(self.0 - (pages << PAGE_SHIFT))
    }

    /// The number of whole pages from `start` to this address.
    #[inline(always)]
    pub(crate) const fn pages_from(self, start: Hva) -> u64 {
        (self.0 - start.0) >> PAGE_SHIFT
    }

    /// The number of pages from `start` to this address, a partial last page counting.
    #[inline(always)]
    pub(crate) const fn pages_from_up(self, start: Hva) -> u64 {
        (self.0 - start.0).div_ceil(1 << PAGE_SHIFT)
    }

    /// The position of the page of this address in its `level`-sized, aligned block of user
    /// memory: a huge guest page can map a huge host page only where the two agree.
    #[inline(always)]
    pub(crate) const fn page_offset_in(self, level: Level) -> u64 {
        (self.0 >> PAGE_SHIFT) & (level.pages() - 1)
    }

    /// The address `addr`, from the kernel's mm (an `unsigned long`).
    #[inline(always)]
    pub(crate) const fn from_usize(addr: usize) -> Hva {
        Hva(addr as u64)
    }

    /// The address as a `usize`, for the kernel's mm calls.
    #[inline(always)]
    pub(crate) const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn gfn_arithmetic() {
        let g = Gfn::from_gpa(0x4020_3000);
        assert_eq!(g, Gfn::new(0x40203));
        assert_eq!(g.to_gpa(), 0x4020_3000);
        assert_eq!(g.align_down(Level::L2M), Gfn::new(0x40200));
        assert_eq!(g.offset_in(Level::L2M), 3);
        assert!(!g.is_aligned(Level::L2M) && g.align_down(Level::L2M).is_aligned(Level::L2M));
        assert_eq!((g + 5) - g, 5);
        assert_eq!(g - 3, Gfn::new(0x40200));
        assert_eq!(Gfn::new(2).checked_sub(3), None);
    }

    #[test]
    fn hva_arithmetic() {
        let h = Hva::new(0x7f00_0020_0000);
        assert_eq!(h.add_pages(3), Hva::new(0x7f00_0020_3000));
        assert_eq!(Hva::new(0x7f00_0020_3fff).pages_from(h), 3);
        assert_eq!(Hva::new(0x7f00_0020_3001).pages_from_up(h), 4);
        assert_eq!(h.add_pages(5).page_offset_in(Level::L2M), 5);
    }
}
