// SPDX-License-Identifier: GPL-2.0

//! Trace events of a module, called from Rust.
//!
//! The kernel's `declare_trace!` (`rust/kernel/tracepoint.rs`) finds the
//! tracepoint and its `rust_do_trace_*` function in `kernel::bindings`,
//! which only in-tree code can extend. This is the same macro over this
//! module's own bindings, and the declarations of the secmmu events of
//! `include/trace/events/secmmu.h`, which `src/trace.c` defines with
//! `CREATE_RUST_TRACE_POINTS`.
//!
//! A disabled event costs a static branch (a patched-out jump with
//! `CONFIG_JUMP_LABEL`); the arguments are computed only by the callers
//! that need them, in `src/trace.rs`.

/// Declares the Rust entry point of each tracepoint named, as the kernel's
/// `declare_trace!` does, over `super::bindings`, and `<name>_enabled()`,
/// its static branch alone: a caller whose arguments cost something to
/// compute tests it first, out of line from its hot path.
///
/// The generated functions are unsafe: their requirements are the C
/// tracepoint's (for every secmmu event: none, as they take integers only).
macro_rules! declare_trace {
    ($($(#[$attr:meta])* $pub:vis unsafe fn $name:ident($($argname:ident : $argtyp:ty),* $(,)?);)*) => {$(
        kernel::macros::paste! {
            /// Whether the event is enabled: a static branch.
            #[inline(always)]
            $pub fn [< $name _enabled >]() -> bool {
                #[cfg(all(CONFIG_TRACEPOINTS, not(secmmu_notrace)))]
                {
                    // SAFETY: It is always fine to test the static key of a
                    // tracepoint, which C defines (src/trace.c).
                    unsafe {
                        kernel::static_branch_unlikely!(
                            super::bindings::[< __tracepoint_ $name >],
                            kernel::bindings::tracepoint,
                            key
                        )
                    }
                }
                #[cfg(not(all(CONFIG_TRACEPOINTS, not(secmmu_notrace))))]
                {
                    false
                }
            }
        }

        $( #[$attr] )*
        #[inline(always)]
        $pub unsafe fn $name($($argname : $argtyp),*) {
            #[cfg(all(CONFIG_TRACEPOINTS, not(secmmu_notrace)))]
            {
                // SAFETY: It is always fine to test the static key of a
                // tracepoint, which C defines (src/trace.c).
                let should_trace = unsafe {
                    kernel::macros::paste! {
                        kernel::static_branch_unlikely!(
                            super::bindings::[< __tracepoint_ $name >],
                            kernel::bindings::tracepoint,
                            key
                        )
                    }
                };

                if should_trace {
                    kernel::macros::paste! {
                        // SAFETY: The caller guarantees that it is fine to
                        // call this tracepoint.
                        unsafe { super::bindings::[< rust_do_trace_ $name >]($($argname),*) };
                    }
                }
            }

            #[cfg(not(all(CONFIG_TRACEPOINTS, not(secmmu_notrace))))]
            {
                // Trace events compiled out (or the module built with
                // `SECMMU_NOTRACE=1`): use each argument once.
                $( let _unused = $argname; )*
            }
        }
    )*}
}

declare_trace! {
    /// `secmmu_invalidate_range_start`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_invalidate_range_start(
        space: u32,
        start: usize,
        end: usize,
        event: u32,
        blockable: bool,
    );
    /// `secmmu_invalidate_range_end`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_invalidate_range_end(space: u32, start: usize, end: usize);
    /// `secmmu_zap`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_zap(
        space: u32,
        slot: u32,
        start: u64,
        end: u64,
        leaves: u64,
        yields: u64,
    );
    /// `secmmu_fault`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_fault(
        space: u32,
        vcpu: u32,
        gfn: u64,
        level: u8,
        write: bool,
        outcome: u8,
    );
    /// `secmmu_age`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_age(
        space: u32,
        start: usize,
        end: usize,
        flush: bool,
        young: bool,
        lockless: bool,
    );
    /// `secmmu_test_young`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_test_young(space: u32, hva: usize, young: bool, lockless: bool);
    /// `secmmu_tlb_flush`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_tlb_flush(space: u32, vcpus: u32, elided: bool);
    /// `secmmu_split`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_split(space: u32, gfn: u64, level: u8);
    /// `secmmu_collapse`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_collapse(space: u32, gfn: u64, level: u8);
    /// `secmmu_bbm`.
    ///
    /// # Safety
    ///
    /// None: the event takes integers only.
    pub(crate) unsafe fn secmmu_bbm(space: u32, gfn: u64, level: u8);
}
