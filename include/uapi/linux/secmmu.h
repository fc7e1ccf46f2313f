/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * secmmu: a secondary MMU as a misc device.
 *
 * One open file of /dev/secmmu is one "space": a set of secondary page
 * tables bound, through an mmu_notifier, to the mm of the process that
 * opened it. Every ioctl must come from that mm; from any other mm it
 * fails with -EIO, and so does every ioctl after the mm went away.
 */
#ifndef _UAPI_LINUX_SECMMU_H
#define _UAPI_LINUX_SECMMU_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define SECMMU_API_VERSION	1

#define SECMMUIO		0xB5

/*
 * SECMMU_GET_API_VERSION: returns SECMMU_API_VERSION as the ioctl's
 * return value. Takes no argument.
 */
#define SECMMU_GET_API_VERSION	_IO(SECMMUIO, 0x00)

/*
 * Every struct below has explicit padding and a flags field. Unknown flags
 * and nonzero padding or reserved fields are rejected with -EINVAL, so they
 * can be given meaning later.
 */

/*
 * SECMMU_GET_STATS: event counters of the space. Counters only grow; the
 * reserved tail reads as zero and takes counters of later API versions.
 * Exceptions: @table_pages and @module_table_pages are values now (the
 * latter of the whole module, every space), @rmap_max_chain a peak.
 *
 * The fault counters (@faults, @fault_retries, @memory_faults,
 * @rmap_max_chain, @access_restores, @fault_eagain, @access_flag_faults,
 * @bbm, @mappings_*, @splits, @collapses) are kept by each vCPU; here they
 * are the space's totals: the sum over its live vCPUs and the vCPUs it had
 * (folded in when a vCPU fd is released), so they still only grow. The
 * same values, and more, are in the stats file of SECMMU_GET_STATS_FD.
 */
struct secmmu_stats {
	__u64 invalidations;		/* invalidate_range_start() calls */
	__u64 invalidations_nonblock;	/* ... of which could not sleep */
	__u64 invalidated_pages;	/* 4K pages they covered */
	__u64 faults;			/* faults resolved (SPTE installed) */
	__u64 fault_retries;		/* retried: invalidation raced the fault */
	__u64 memory_faults;		/* unresolvable faults exited to userspace */
	__u64 sptes_zapped;		/* leaf SPTEs zapped */
	__u64 dirty_pages;		/* ... of which were dirty: page marked dirty */
	__u64 zap_yields;		/* zaps that dropped the lock to reschedule */
	__u64 tlb_flushes;		/* remote TLB flush rounds (all vCPUs) */
	__u64 tlb_flushes_elided;	/* flushes skipped: nothing was zapped */
	__u64 rmap_max_chain;		/* longest rmap chain seen (SPTEs) */
	__u64 table_pages;		/* page-table pages now allocated */
	__u64 slot_zaps;		/* memslot deletions that zapped */
	__u64 releases;			/* release() calls (0 or 1) */
	__u64 aging_calls;		/* clear_young/clear_flush_young/test_young */
	__u64 aging_young;		/* ... answered young */
	__u64 aging_lockless;		/* ... walked without the MMU lock */
	__u64 aging_cleared;		/* young SPTEs made old */
	__u64 rmap_contention;		/* rmap bit locks an ager spun on */
	__u64 aging_lost_races;		/* SPTEs changed under aging (young) */
	__u64 access_restores;		/* access-tracked SPTEs restored, no GUP */
	__u64 fault_eagain;		/* faults backed off (-EAGAIN), retried */
	__u64 access_flag_faults;	/* AF set by an access-flag fault, no GUP */
	__u64 bbm;			/* break-before-make sequences */
	__u64 module_table_pages;	/* table pages of the module, all spaces */
	__u64 mappings_4k;		/* leaves installed by faults: 4K, */
	__u64 mappings_2m;		/* ... 2M */
	__u64 mappings_1g;		/* ... and 1G */
	__u64 splits;			/* huge leaves replaced by a table */
	__u64 collapses;		/* tables replaced by a huge leaf */
	__u64 audits;			/* SECMMU_AUDIT runs */
	__u64 audit_mismatches;		/* leaves they found incoherent */
	__u64 reserved;			/* reads as zero */
};

#define SECMMU_GET_STATS	_IOR(SECMMUIO, 0x01, struct secmmu_stats)

/*
 * SECMMU_CONFIGURE: once per space, before any memslot or vCPU.
 */
#define SECMMU_FMT_X86_EPT4	1	/* x86 EPT, 4 levels, 48-bit GPAs */
#define SECMMU_FMT_ARM64_S2	2	/* arm64 stage-2, 4K granule, ia_bits */

#define SECMMU_CFG_NO_AD	(1u << 0)	/* no accessed/dirty bits */
/* Dirty logging: see SECMMU_GET_DIRTY_LOG and SECMMU_CLEAR_DIRTY_LOG */
#define SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT	(1u << 1)
#define SECMMU_CFG_DIRTY_LOG_INITIALLY_SET	(1u << 2)
/*
 * Eager page splitting: starting to log splits the slot's huge mappings
 * into 4K ones (with INITIALLY_SET, SECMMU_CLEAR_DIRTY_LOG splits the
 * range it clears), a chunk at a time, so that the first write to each page
 * takes a fast fault; without it a huge mapping splits on its first write.
 */
#define SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT	(1u << 3)
/*
 * Dirty logging by the dirty bit (Intel's PML, arm64's DBM) instead of write
 * protection: a clean page stays writable (x86: D clear; arm64: W clear with
 * DBM, which the walker sets back), the vCPU's walker sets the dirty state
 * on the first write and logs the page in a 512-entry page-modification log
 * that it flushes into the bitmap; harvesting cleans the pages it reports.
 * Writes to clean 4K pages take no fault. Not with SECMMU_CFG_NO_AD.
 */
#define SECMMU_CFG_DIRTY_LOG_DIRTY_BIT	(1u << 4)
/*
 * Faults map only their own page. Without it, a 4K fault also maps the
 * pages around it, in an aligned group of the same table (module parameter
 * fault_around, default 16 pages), that the primary MMU already maps
 * writable: not accessed, counted in the vCPU statistic fault_around. Never
 * in read-only or dirty-logging slots, nor with SECMMU_CFG_NO_AD.
 */
#define SECMMU_CFG_NO_FAULT_AROUND	(1u << 5)
#define SECMMU_CFG_FLAGS	(SECMMU_CFG_NO_AD | \
				 SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT | \
				 SECMMU_CFG_DIRTY_LOG_INITIALLY_SET | \
				 SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT | \
				 SECMMU_CFG_DIRTY_LOG_DIRTY_BIT | \
				 SECMMU_CFG_NO_FAULT_AROUND)

#define SECMMU_MAX_ROOTS	32

struct secmmu_config {
	__u32 flags;		/* SECMMU_CFG_* */
	__u32 format;		/* SECMMU_FMT_* */
	__u32 nr_roots;		/* 1..SECMMU_MAX_ROOTS */
	__u32 ia_bits;		/* guest-physical bits, 0: 48; arm64: 32..48 */
	__u32 dirty_ring_size;	/* bytes of each vCPU's dirty ring, 0: none */
	__u32 pad;
	__u64 reserved[3];
};

#define SECMMU_CONFIGURE	_IOW(SECMMUIO, 0x02, struct secmmu_config)

/*
 * SECMMU_SET_MEMSLOT: create slot @slot, or delete it when @memory_size is
 * 0 (its mappings are zapped). Addresses and size must be 4K aligned; the
 * guest range must fit the format's guest-physical width and not overlap
 * another slot (-EEXIST); the user range must lie in user space.
 *
 * The same request for an existing slot with only
 * SECMMU_MEM_LOG_DIRTY_PAGES changed is a flags-only change (KVM's
 * KVM_MR_FLAGS_ONLY): setting it starts dirty logging (the slot's pages are
 * write-protected, unless SECMMU_CFG_DIRTY_LOG_INITIALLY_SET, and mapped 4K
 * from then on); clearing it stops logging and zaps the slot, so that the
 * next faults map huge pages again. The same request with the same flags
 * changes nothing. Changing SECMMU_MEM_READONLY is -EINVAL; changing the
 * range or the user address is -EBUSY (delete the slot first).
 */
#define SECMMU_MAX_MEMSLOTS	64
#define SECMMU_MEM_READONLY	(1u << 0)
#define SECMMU_MEM_LOG_DIRTY_PAGES	(1u << 1)

struct secmmu_memslot {
	__u32 slot;
	__u32 flags;		/* SECMMU_MEM_* */
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr;
	__u64 reserved[2];
};

#define SECMMU_SET_MEMSLOT	_IOW(SECMMUIO, 0x03, struct secmmu_memslot)

/*
 * SECMMU_CREATE_VCPU: returns a new vCPU file descriptor, bound to one
 * root (address space) of the space, like KVM_CREATE_VCPU.
 */
#define SECMMU_MAX_VCPUS	64

struct secmmu_vcpu_create {
	__u32 root;
	__u32 flags;
	__u64 reserved[2];
};

#define SECMMU_CREATE_VCPU	_IOW(SECMMUIO, 0x04, struct secmmu_vcpu_create)

/*
 * SECMMU_SNAPSHOT: one byte per guest page of [gpa, gpa + npages * 4K) in
 * root @root, as the secondary page tables map it right now. Host physical
 * addresses are never returned.
 */
#define SECMMU_SNAP_PRESENT	(1u << 0)
#define SECMMU_SNAP_WRITABLE	(1u << 1)
#define SECMMU_SNAP_ACCESSED	(1u << 2)
#define SECMMU_SNAP_DIRTY	(1u << 3)
#define SECMMU_SNAP_LEVEL(b)	(((b) >> 4) & 3)	/* 0 4K, 1 2M, 2 1G */

struct secmmu_snapshot {
	__u32 root;
	__u32 flags;
	__u64 gpa;
	__u64 npages;		/* at most SECMMU_SNAPSHOT_MAX */
	__u64 buf;		/* user pointer to npages bytes */
	__u64 reserved[2];
};

#define SECMMU_SNAPSHOT_MAX	(1u << 20)
#define SECMMU_SNAPSHOT		_IOW(SECMMUIO, 0x05, struct secmmu_snapshot)

/*
 * On a vCPU fd: SECMMU_RUN executes a bounded guest loop in the kernel,
 * through the secondary MMU: for @passes passes, for each 8-byte aligned
 * guest address from @start (inclusive) to @end (exclusive) by @stride,
 * one access: WRITE stores (@pattern ^ address), READ loads, VERIFY loads
 * and compares with (@pattern ^ address). Accesses walk the tables like
 * hardware (setting accessed, and dirty on writes) through the vCPU's
 * software TLB, and fault through the fault path.
 *
 * Returns 0 when done. A fault the space cannot resolve (no memslot, write
 * to a READONLY slot, the process's own mapping missing or not writable)
 * returns -EFAULT with @exit_reason SECMMU_EXIT_MEMORY_FAULT, the guest
 * address in @exit_gpa, the access in @exit_flags and the pass in
 * @exit_pass, so userspace can skip it and resume. A pending signal
 * returns -EINTR with the position in the same fields. -ENOSPC: the space
 * holds the most page-table pages it may (module parameter
 * max_table_pages) and the fault needs another; -ENOMEM: out of memory.
 * -EBUSY: another thread is running the vCPU.
 */
#define SECMMU_RUN_WRITE	1
#define SECMMU_RUN_READ		2
#define SECMMU_RUN_VERIFY	3

#define SECMMU_EXIT_NONE		0
#define SECMMU_EXIT_MEMORY_FAULT	1
#define SECMMU_EXIT_SIGNAL		2
#define SECMMU_EXIT_DIRTY_RING_FULL	3

#define SECMMU_ACCESS_WRITE	(1u << 0)	/* in exit_flags and access flags */

struct secmmu_run {
	/* in */
	__u32 op;		/* SECMMU_RUN_* */
	__u32 flags;
	__u64 start;
	__u64 end;
	__u64 stride;		/* multiple of 8, nonzero */
	__u64 pattern;
	__u32 passes;
	__u32 pad;
	/* out */
	__u64 accesses;		/* accesses completed */
	__u64 mismatches;	/* VERIFY: values that differed */
	__u64 first_mismatch;	/* VERIFY: guest address of the first */
	__u64 exit_gpa;
	__u32 exit_reason;	/* SECMMU_EXIT_* */
	__u32 exit_flags;	/* SECMMU_ACCESS_WRITE for a write */
	__u32 exit_pass;
	__u32 pad2;
	__u64 reserved[4];
};

#define SECMMU_RUN		_IOWR(SECMMUIO, 0x10, struct secmmu_run)

/*
 * On a vCPU fd: SECMMU_ACCESS copies @len bytes between the user buffer
 * @buf and guest memory at @gpa through the secondary MMU, with RUN's
 * fault rules. On -EFAULT, @done bytes were copied and @exit_gpa is the
 * guest address that could not be mapped (or -1 when @buf itself was the
 * bad address).
 */
struct secmmu_access {
	__u64 gpa;
	__u64 len;		/* at most SECMMU_ACCESS_MAX */
	__u64 buf;
	__u32 flags;		/* SECMMU_ACCESS_WRITE: buffer to guest */
	__u32 pad;
	__u64 done;		/* out */
	__u64 exit_gpa;		/* out */
	__u64 reserved[2];
};

#define SECMMU_ACCESS_MAX	(1ull << 32)
#define SECMMU_ACCESS		_IOWR(SECMMUIO, 0x11, struct secmmu_access)

/*
 * On a vCPU fd: SECMMU_PRE_FAULT_MEMORY maps [@gpa, @gpa + @size) into the
 * vCPU's root as read faults would (KVM_PRE_FAULT_MEMORY): pages are faulted
 * in for reading (copy-on-write is never broken), huge leaves are used where
 * the memslot and the primary MMU allow, and on x86 with A/D bits the new
 * leaves are not accessed. On return @gpa and @size describe what is left
 * (a huge leaf may end past the range: @size then becomes 0).
 *
 * Returns 0 if at least one page was processed, else: -EINVAL for nonzero
 * @flags or @padding, @gpa or @size not page aligned, @size 0 or
 * @gpa + @size overflowing; -ENOENT if @gpa is in no memslot (a range that
 * leaves the memslots later stops there); -EINTR if a signal is pending;
 * -EFAULT if the process's memory cannot be faulted in there; -ENOSPC,
 * -ENOMEM as SECMMU_RUN; -EBUSY while another thread runs the vCPU; -EIO
 * after the space was released.
 */
struct secmmu_pre_fault_memory {
	/* in/out */
	__u64 gpa;
	__u64 size;
	/* in */
	__u64 flags;
	__u64 padding[5];
};

#define SECMMU_PRE_FAULT_MEMORY	_IOWR(SECMMUIO, 0x14, struct secmmu_pre_fault_memory)

/*
 * SECMMU_TEST_YOUNG: a debug hook for tests. Asks the space's own
 * mmu_notifier test_young callback, through the ops table the mm core
 * calls, whether the page of the caller's address space at @hva was
 * accessed through the secondary MMU since its accessed state was last
 * cleared: the answer mmu_notifier_test_young() gets from this space (the
 * mm core's function is not exported to modules, and its callers,
 * khugepaged and DAMON, do not report it). Changes nothing, like
 * test_young itself. Returns 1 (young) or 0 as the ioctl's value.
 * -EINVAL: @hva not page aligned or not a user address, or nonzero flags,
 * pad or reserved.
 */
struct secmmu_test_young {
	__u64 hva;
	__u32 flags;
	__u32 pad;
	__u64 reserved[2];
};

#define SECMMU_TEST_YOUNG	_IOW(SECMMUIO, 0x20, struct secmmu_test_young)

/*
 * SECMMU_AUDIT: a coherence check for tests. Walks every leaf of every
 * root and checks that the primary MMU maps, at the user address its
 * memslot gives, the same page with at least the leaf's permissions (a
 * writable leaf needs a writable primary mapping). Leaves whose user range
 * an invalidation in progress covers are counted in @skipped, not checked:
 * the primary may have changed them already and the secondary is allowed
 * until that invalidation's start returns to remove them. Returns 0 with
 * the counts; a debug build also WARNs on a mismatch. @first_gpa and
 * @first_root locate the first mismatch. @pages_4k, @pages_2m and @pages_1g
 * are the leaves mapped at each level when the audit ends, the MMU's
 * instant counters (KVM's pages_4k/2m/1g): with nothing mapping or zapping
 * meanwhile, they add up to @leaves. -EINVAL: unconfigured space, or
 * nonzero flags, pad or reserved.
 */
struct secmmu_audit {
	__u32 flags;
	__u32 pad;
	__u64 leaves;		/* out: leaves checked */
	__u64 mismatches;	/* out: of which the primary does not back */
	__u64 skipped;		/* out: under an invalidation in progress */
	__u64 first_gpa;	/* out: guest address of the first mismatch */
	__u32 first_root;	/* out: its root */
	__u32 pad2;
	__u64 pages_4k;		/* out: 4K leaves mapped now, all roots */
	__u64 pages_2m;		/* out: 2M leaves */
	__u64 pages_1g;		/* out: 1G leaves */
	__u64 reserved;
};

#define SECMMU_AUDIT		_IOWR(SECMMUIO, 0x21, struct secmmu_audit)

/*
 * SECMMU_SET_RUN_PAGE, on a vCPU fd: the vCPU's run page. With
 * SECMMU_RUN_PAGE_ENABLE, the kernel writes a struct secmmu_run_page at
 * guest address @gpa whenever a RUN or ACCESS of this vCPU returns, through
 * a kernel-mapped guest page cache (like KVM's steal-time page); without
 * it, the run page is turned off (@gpa must be 0). @gpa must be 8-byte
 * aligned and the struct must fit in its page. Returns 0 once the page is
 * mapped; -EFAULT if no memslot holds @gpa, or it is read-only, and the
 * run page stays off. Later updates never fail the RUN or ACCESS: an update
 * that cannot be made (its slot was deleted) is counted in
 * secmmu_gpc_stats.run_page_errors. -EINVAL: bad @gpa, unknown flags,
 * nonzero pad or reserved.
 */
#define SECMMU_RUN_PAGE_ENABLE	(1U << 0)

struct secmmu_run_page_setup {
	__u64 gpa;
	__u32 flags;		/* SECMMU_RUN_PAGE_ENABLE */
	__u32 pad;
	__u64 reserved[2];
};

/* What the run page holds, as of the last RUN or ACCESS that returned. */
struct secmmu_run_page {
	__u64 exits;		/* RUN and ACCESS calls returned so far */
	__u64 accesses;		/* guest accesses of the last RUN */
	__u32 exit_reason;	/* SECMMU_EXIT_* of the last RUN */
	__s32 error;		/* its errno (negative), 0 if it succeeded */
};

#define SECMMU_SET_RUN_PAGE	_IOW(SECMMUIO, 0x12, struct secmmu_run_page_setup)

/*
 * SECMMU_GET_GPC_STATS: counters of the space's kernel-mapped guest page
 * caches. Counters only grow; the reserved tail reads as zero.
 */
struct secmmu_gpc_stats {
	__u64 refreshes;		/* refreshes that mapped their page */
	__u64 retries_overlap;		/* restarts: an invalidation of the page */
	__u64 retries_memslots;		/* restarts: the memslots changed */
	__u64 retries_unrelated;	/* restarts for other memory (KVM 7.3 rule) */
	__u64 invalidations;		/* caches invalidated by the notifier */
	__u64 run_page_updates;		/* run pages written */
	__u64 run_page_errors;		/* run page updates that failed */
	__u64 clock_updates;		/* clock pages written by the timer */
	__u64 clock_misses;		/* timer ticks that found the cache invalid */
	__u64 reserved[7];
};

#define SECMMU_GET_GPC_STATS	_IOR(SECMMUIO, 0x06, struct secmmu_gpc_stats)

/*
 * SECMMU_SET_CLOCK_PAGE: the space's clock page. With
 * SECMMU_CLOCK_PAGE_ENABLE, a timer writes a struct secmmu_clock_page at
 * guest address @gpa every @period_ns nanoseconds (10 us to 1 s), from hard
 * IRQ context, through a kernel-mapped guest page cache (like kvmclock or
 * Xen's shared info). A tick that finds the cache invalid (the primary MMU
 * changed the page, or the memslots changed) writes nothing, counts a miss
 * in secmmu_gpc_stats.clock_misses, and leaves the refresh to the next RUN
 * or ACCESS of any vCPU of the space. Without the flag the clock stops
 * (@gpa and @period_ns must be 0). Returns 0 once the page is mapped and
 * the timer runs; -EFAULT if no writable memslot holds @gpa. -EINVAL: bad
 * @gpa (8-byte aligned, the struct within its page) or @period_ns, unknown
 * flags, nonzero pad or reserved.
 */
#define SECMMU_CLOCK_PAGE_ENABLE	(1U << 0)
#define SECMMU_CLOCK_PERIOD_MIN		10000ULL
#define SECMMU_CLOCK_PERIOD_MAX		1000000000ULL

struct secmmu_clock_setup {
	__u64 gpa;
	__u64 period_ns;
	__u32 flags;		/* SECMMU_CLOCK_PAGE_ENABLE */
	__u32 pad;
	__u64 reserved[2];
};

struct secmmu_clock_page {
	__u64 ticks;		/* timer ticks since the clock started */
	__u64 time_ns;		/* monotonic time since then, at the last tick */
};

#define SECMMU_SET_CLOCK_PAGE	_IOW(SECMMUIO, 0x07, struct secmmu_clock_setup)

/*
 * SECMMU_GET_DIRTY_LOG: copies the dirty bitmap of slot @slot, which logs
 * dirty pages, to @bitmap: bit i (of little-endian 64-bit words) for the
 * slot's page i, ALIGN(npages, 64) / 8 bytes (KVM_GET_DIRTY_LOG). Without
 * SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT the bits copied are cleared and their
 * pages write-protected again, so the next write to each is logged; with
 * it, nothing changes (use SECMMU_CLEAR_DIRTY_LOG). -ENOENT: no such slot,
 * or it does not log; -EFAULT: @bitmap not writable (the bits stay set);
 * -EINVAL: nonzero pad or reserved.
 */
struct secmmu_dirty_log {
	__u32 slot;
	__u32 pad;
	__u64 bitmap;		/* user pointer */
	__u64 reserved[2];
};

#define SECMMU_GET_DIRTY_LOG	_IOW(SECMMUIO, 0x08, struct secmmu_dirty_log)

/*
 * SECMMU_CLEAR_DIRTY_LOG: for each bit set in @bitmap (bit i for the slot's
 * page @first_page + i, @num_pages bits), clears the page's dirty bit and,
 * if it was set, write-protects the page, so that its next write is logged
 * (KVM_CLEAR_DIRTY_LOG). Needs SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT
 * (-EINVAL without). @first_page must be a multiple of 64 and @num_pages
 * too, unless the range ends at the slot's end; the range must lie in the
 * slot (-EINVAL). -ENOENT: no such slot, or it does not log; -EFAULT:
 * @bitmap not readable.
 */
struct secmmu_clear_dirty_log {
	__u32 slot;
	__u32 num_pages;
	__u64 first_page;
	__u64 bitmap;		/* user pointer */
	__u64 reserved[2];
};

#define SECMMU_CLEAR_DIRTY_LOG	_IOW(SECMMUIO, 0x09, struct secmmu_clear_dirty_log)

/*
 * Dirty rings (KVM_CAP_DIRTY_LOG_RING): with @dirty_ring_size in
 * SECMMU_CONFIGURE, each vCPU logs the pages it dirties in a ring of
 * struct secmmu_dirty_gfn of that many bytes (a power of two, at least a
 * page and SECMMU_DIRTY_RING_RSVD_ENTRIES entries: -EINVAL; at most
 * SECMMU_DIRTY_RING_MAX_ENTRIES entries: -E2BIG), instead of in the
 * bitmaps of the slots. Userspace maps the ring with mmap() of the vCPU fd,
 * MAP_SHARED, readable and writable, not executable, at page offset
 * SECMMU_DIRTY_LOG_PAGE_OFFSET (in pages; -EINVAL otherwise).
 *
 * Each entry goes 00 (free) -> 01 (DIRTY: pushed by the vCPU, with the
 * slot and the page's offset in it) -> 1X (RESET: collected by userspace)
 * -> 00 (freed by SECMMU_RESET_DIRTY_RINGS). Userspace reads the entries
 * in ring order from where it last stopped, @flags with acquire semantics
 * (stopping at the first not DIRTY), and collects one by setting RESET with
 * release semantics after reading it.
 *
 * SECMMU_RESET_DIRTY_RINGS frees, in each vCPU's ring, the collected entries
 * from the last one it freed on, stopping at the first not collected, and
 * write-protects (or cleans, with SECMMU_CFG_DIRTY_LOG_DIRTY_BIT) their
 * pages, so that their next writes are logged again. Returns how many it
 * freed; -EINVAL without rings. An entry in no valid state (RESET without
 * DIRTY, unknown bits) stops the reset of its ring there, after the entries
 * before it are freed; the other rings are reset, then the call fails with
 * -EINVAL. An entry naming a slot that is gone or does not log, or a page
 * outside its slot, is freed and nothing else. Entries past the last one
 * the vCPU pushed are never read. Copy a collected page after the reset
 * that frees its entry: writes after the reset are logged again.
 *
 * A vCPU whose ring is SECMMU_DIRTY_RING_RSVD_ENTRIES short of full (room
 * for a whole page-modification log) exits SECMMU_RUN and SECMMU_ACCESS
 * before it accesses guest memory again, with -EAGAIN, @exit_reason
 * SECMMU_EXIT_DIRTY_RING_FULL and its position in the exit fields, until a
 * reset frees entries (KVM_EXIT_DIRTY_RING_FULL).
 *
 * Writes that no vCPU makes (the guest page caches: the run page and the
 * clock page) go to the slot's bitmap, which SECMMU_GET_DIRTY_LOG reads as
 * without rings (KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP).
 */
#define SECMMU_DIRTY_GFN_F_DIRTY	(1u << 0)
#define SECMMU_DIRTY_GFN_F_RESET	(1u << 1)
#define SECMMU_DIRTY_LOG_PAGE_OFFSET	64
#define SECMMU_DIRTY_RING_RSVD_ENTRIES	(512 + 64)
#define SECMMU_DIRTY_RING_MAX_ENTRIES	65536

struct secmmu_dirty_gfn {
	__u32 flags;
	__u32 slot;		/* the slot's id */
	__u64 offset;		/* the page's offset in the slot, in pages */
};

#define SECMMU_RESET_DIRTY_RINGS	_IO(SECMMUIO, 0x0a)

/*
 * SECMMU_GET_STATS_FD (space fd) and SECMMU_GET_VCPU_STATS_FD (vCPU fd):
 * return a new read-only file descriptor (O_CLOEXEC) of the space's or the
 * vCPU's statistics, in the layout of KVM's binary statistics
 * (KVM_GET_STATS_FD; same structs, same values, so tools that parse KVM's
 * stats files parse these). The argument must be 0 (-EINVAL otherwise).
 * The file holds a reference on its space (or the vCPU's counters): it
 * stays readable after the space's or the vCPU's fd is closed; a vCPU's
 * counters stop there.
 *
 * The file is: a struct secmmu_stats_header at offset 0; the id string
 * ("secmmu-<pid>" or "secmmu-<pid>/vcpu<N>", NUL-padded to @name_size) at
 * @id_offset; @num_desc descriptors at @desc_offset, each a struct
 * secmmu_stats_desc followed by its NUL-padded name of @name_size bytes;
 * and at @data_offset the values, @size u64s per statistic at @offset
 * bytes into the data. read() and pread() work at any offset and length
 * and return 0 past the end; the values are read at the time of the read.
 * Header, id and descriptors never change for the life of the file.
 * write() fails with -EBADF. Every statistic is listed, with its type, in
 * Documentation/secmmu.rst ("Statistics").
 */
#define SECMMU_STATS_NAME_SIZE		48

struct secmmu_stats_header {
	__u32 flags;		/* 0 */
	__u32 name_size;	/* SECMMU_STATS_NAME_SIZE */
	__u32 num_desc;
	__u32 id_offset;
	__u32 desc_offset;
	__u32 data_offset;
};

#define SECMMU_STATS_TYPE_SHIFT		0
#define SECMMU_STATS_TYPE_MASK		(0xF << SECMMU_STATS_TYPE_SHIFT)
#define SECMMU_STATS_TYPE_CUMULATIVE	(0x0 << SECMMU_STATS_TYPE_SHIFT)
#define SECMMU_STATS_TYPE_INSTANT	(0x1 << SECMMU_STATS_TYPE_SHIFT)
#define SECMMU_STATS_TYPE_PEAK		(0x2 << SECMMU_STATS_TYPE_SHIFT)
#define SECMMU_STATS_TYPE_LINEAR_HIST	(0x3 << SECMMU_STATS_TYPE_SHIFT)
#define SECMMU_STATS_TYPE_LOG_HIST	(0x4 << SECMMU_STATS_TYPE_SHIFT)
#define SECMMU_STATS_TYPE_MAX		SECMMU_STATS_TYPE_LOG_HIST

#define SECMMU_STATS_UNIT_SHIFT		4
#define SECMMU_STATS_UNIT_MASK		(0xF << SECMMU_STATS_UNIT_SHIFT)
#define SECMMU_STATS_UNIT_NONE		(0x0 << SECMMU_STATS_UNIT_SHIFT)
#define SECMMU_STATS_UNIT_BYTES		(0x1 << SECMMU_STATS_UNIT_SHIFT)
#define SECMMU_STATS_UNIT_SECONDS	(0x2 << SECMMU_STATS_UNIT_SHIFT)
#define SECMMU_STATS_UNIT_CYCLES	(0x3 << SECMMU_STATS_UNIT_SHIFT)
#define SECMMU_STATS_UNIT_BOOLEAN	(0x4 << SECMMU_STATS_UNIT_SHIFT)
#define SECMMU_STATS_UNIT_MAX		SECMMU_STATS_UNIT_BOOLEAN

#define SECMMU_STATS_BASE_SHIFT		8
#define SECMMU_STATS_BASE_MASK		(0xF << SECMMU_STATS_BASE_SHIFT)
#define SECMMU_STATS_BASE_POW10		(0x0 << SECMMU_STATS_BASE_SHIFT)
#define SECMMU_STATS_BASE_POW2		(0x1 << SECMMU_STATS_BASE_SHIFT)
#define SECMMU_STATS_BASE_MAX		SECMMU_STATS_BASE_POW2

/*
 * @flags: type | unit | base. @exponent: the value is value * base^exponent
 * (0 for every secmmu statistic). @size: u64s of the value (a histogram's
 * buckets; bucket 0 of a LOG_HIST counts 0, bucket i counts [2^(i-1),
 * 2^i), the last also everything above). @offset: bytes from @data_offset.
 * @bucket_size: LINEAR_HIST only, else 0.
 */
struct secmmu_stats_desc {
	__u32 flags;
	__s16 exponent;
	__u16 size;
	__u32 offset;
	__u32 bucket_size;
	char name[];		/* @name_size bytes, NUL-terminated */
};

#define SECMMU_GET_STATS_FD		_IO(SECMMUIO, 0x0b)
#define SECMMU_GET_VCPU_STATS_FD	_IO(SECMMUIO, 0x13)

#endif /* _UAPI_LINUX_SECMMU_H */
