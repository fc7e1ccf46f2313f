/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Trace events of secmmu, modelled on KVM's kvm_unmap_hva_range,
 * kvm_age_hva, kvm_test_age_hva, kvm_mmu_spte_requested and
 * kvm_mmu_split_huge_page. Rust calls them through the rust_do_trace_*
 * functions CREATE_RUST_TRACE_POINTS makes (src/trace.c, src/trace.rs).
 *
 * @space is the space's id, unique since the module was loaded:
 * invalidations and aging run in whichever task changes or reclaims the
 * memory, so the task of an event does not say whose tables it is about.
 *
 * No event records a pfn, an SPTE or any other host physical address:
 * tracefs is root's, but perf trace hands tracepoint records to anyone
 * perf_event_paranoid lets in, and a physical address helps an attacker
 * aim at memory (Rowhammer, KASLR). Gfns, host virtual addresses of the
 * space's own process and levels say what the MMU did.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM secmmu

#if !defined(_TRACE_SECMMU_H) || defined(TRACE_HEADER_MULTI_READ)
#define _TRACE_SECMMU_H

#include <linux/mmu_notifier.h>
#include <linux/tracepoint.h>

/* How a fault ended (secmmu_fault's @outcome). */
#define SECMMU_FAULT_INSTALLED	0	/* leaf mapped, or found mapped */
#define SECMMU_FAULT_WP_FIXED	1	/* write protection lifted, no GUP */
#define SECMMU_FAULT_AF_FIXED	2	/* made young again, no GUP */
#define SECMMU_FAULT_RETRY	3	/* an invalidation raced it */
#define SECMMU_FAULT_EAGAIN	4	/* another walker held the entry */
#define SECMMU_FAULT_MEMORY_EXIT 5	/* no memory there: exit to userspace */
#define SECMMU_FAULT_ERROR	6	/* -ENOMEM, -ENOSPC, -EINTR, dead space */

TRACE_DEFINE_ENUM(MMU_NOTIFY_UNMAP);
TRACE_DEFINE_ENUM(MMU_NOTIFY_CLEAR);
TRACE_DEFINE_ENUM(MMU_NOTIFY_PROTECTION_VMA);
TRACE_DEFINE_ENUM(MMU_NOTIFY_PROTECTION_PAGE);
TRACE_DEFINE_ENUM(MMU_NOTIFY_SOFT_DIRTY);
TRACE_DEFINE_ENUM(MMU_NOTIFY_RELEASE);
TRACE_DEFINE_ENUM(MMU_NOTIFY_MIGRATE);
TRACE_DEFINE_ENUM(MMU_NOTIFY_EXCLUSIVE);

/* The mm core's invalidate_range_start(): @event says why. */
TRACE_EVENT(secmmu_invalidate_range_start,
	TP_PROTO(u32 space, unsigned long start, unsigned long end,
		 unsigned int event, bool blockable),
	TP_ARGS(space, start, end, event, blockable),

	TP_STRUCT__entry(
		__field(u32,		space)
		__field(unsigned int,	event)
		__field(unsigned long,	start)
		__field(unsigned long,	end)
		__field(bool,		blockable)
	),

	TP_fast_assign(
		__entry->space		= space;
		__entry->event		= event;
		__entry->start		= start;
		__entry->end		= end;
		__entry->blockable	= blockable;
	),

	TP_printk("space %u hva %#lx-%#lx %s%s", __entry->space,
		  __entry->start, __entry->end,
		  __print_symbolic(__entry->event,
				   { MMU_NOTIFY_UNMAP,		"unmap" },
				   { MMU_NOTIFY_CLEAR,		"clear" },
				   { MMU_NOTIFY_PROTECTION_VMA,	"protection_vma" },
				   { MMU_NOTIFY_PROTECTION_PAGE, "protection_page" },
				   { MMU_NOTIFY_SOFT_DIRTY,	"soft_dirty" },
				   { MMU_NOTIFY_RELEASE,	"release" },
				   { MMU_NOTIFY_MIGRATE,	"migrate" },
				   { MMU_NOTIFY_EXCLUSIVE,	"exclusive" }),
		  __entry->blockable ? "" : " nonblock")
);

TRACE_EVENT(secmmu_invalidate_range_end,
	TP_PROTO(u32 space, unsigned long start, unsigned long end),
	TP_ARGS(space, start, end),

	TP_STRUCT__entry(
		__field(u32,		space)
		__field(unsigned long,	start)
		__field(unsigned long,	end)
	),

	TP_fast_assign(
		__entry->space	= space;
		__entry->start	= start;
		__entry->end	= end;
	),

	TP_printk("space %u hva %#lx-%#lx", __entry->space, __entry->start,
		  __entry->end)
);

/*
 * A zap of the gfns [@start, @end) of memslot @slot in every root: for an
 * invalidation, a memslot change, dirty logging or release. @leaves were
 * zapped, and the zap dropped the MMU lock @yields times.
 */
TRACE_EVENT(secmmu_zap,
	TP_PROTO(u32 space, u32 slot, u64 start, u64 end, u64 leaves,
		 u64 yields),
	TP_ARGS(space, slot, start, end, leaves, yields),

	TP_STRUCT__entry(
		__field(u32,	space)
		__field(u32,	slot)
		__field(u64,	start)
		__field(u64,	end)
		__field(u64,	leaves)
		__field(u64,	yields)
	),

	TP_fast_assign(
		__entry->space	= space;
		__entry->slot	= slot;
		__entry->start	= start;
		__entry->end	= end;
		__entry->leaves	= leaves;
		__entry->yields	= yields;
	),

	TP_printk("space %u slot %u gfn %#llx-%#llx leaves %llu yields %llu",
		  __entry->space, __entry->slot, __entry->start, __entry->end,
		  __entry->leaves, __entry->yields)
);

/*
 * A fault of vCPU @vcpu on @gfn and how it ended. @level is the leaf's
 * (1: 4K, 2: 2M, 3: 1G) once the fault knows it, else 0.
 */
TRACE_EVENT(secmmu_fault,
	TP_PROTO(u32 space, u32 vcpu, u64 gfn, u8 level, bool write,
		 u8 outcome),
	TP_ARGS(space, vcpu, gfn, level, write, outcome),

	TP_STRUCT__entry(
		__field(u32,	space)
		__field(u32,	vcpu)
		__field(u64,	gfn)
		__field(u8,	level)
		__field(bool,	write)
		__field(u8,	outcome)
	),

	TP_fast_assign(
		__entry->space		= space;
		__entry->vcpu		= vcpu;
		__entry->gfn		= gfn;
		__entry->level		= level;
		__entry->write		= write;
		__entry->outcome	= outcome;
	),

	TP_printk("space %u vcpu %u gfn %#llx level %u %s %s",
		  __entry->space, __entry->vcpu, __entry->gfn, __entry->level,
		  __entry->write ? "write" : "read",
		  __print_symbolic(__entry->outcome,
				   { SECMMU_FAULT_INSTALLED,	"installed" },
				   { SECMMU_FAULT_WP_FIXED,	"wp_fixed" },
				   { SECMMU_FAULT_AF_FIXED,	"af_fixed" },
				   { SECMMU_FAULT_RETRY,	"retry" },
				   { SECMMU_FAULT_EAGAIN,	"eagain" },
				   { SECMMU_FAULT_MEMORY_EXIT,	"memory_exit" },
				   { SECMMU_FAULT_ERROR,	"error" }))
);

/*
 * clear_young (@flush false) or clear_flush_young (@flush true) of the
 * host range [@start, @end): @young is the answer to the mm core, and
 * @lockless says the walk did not take the MMU lock for write.
 */
TRACE_EVENT(secmmu_age,
	TP_PROTO(u32 space, unsigned long start, unsigned long end,
		 bool flush, bool young, bool lockless),
	TP_ARGS(space, start, end, flush, young, lockless),

	TP_STRUCT__entry(
		__field(u32,		space)
		__field(unsigned long,	start)
		__field(unsigned long,	end)
		__field(bool,		flush)
		__field(bool,		young)
		__field(bool,		lockless)
	),

	TP_fast_assign(
		__entry->space		= space;
		__entry->start		= start;
		__entry->end		= end;
		__entry->flush		= flush;
		__entry->young		= young;
		__entry->lockless	= lockless;
	),

	TP_printk("space %u hva %#lx-%#lx%s %s%s", __entry->space,
		  __entry->start, __entry->end,
		  __entry->flush ? " flush" : "",
		  __entry->young ? "young" : "old",
		  __entry->lockless ? " lockless" : "")
);

TRACE_EVENT(secmmu_test_young,
	TP_PROTO(u32 space, unsigned long hva, bool young, bool lockless),
	TP_ARGS(space, hva, young, lockless),

	TP_STRUCT__entry(
		__field(u32,		space)
		__field(unsigned long,	hva)
		__field(bool,		young)
		__field(bool,		lockless)
	),

	TP_fast_assign(
		__entry->space		= space;
		__entry->hva		= hva;
		__entry->young		= young;
		__entry->lockless	= lockless;
	),

	TP_printk("space %u hva %#lx %s%s", __entry->space, __entry->hva,
		  __entry->young ? "young" : "old",
		  __entry->lockless ? " lockless" : "")
);

/*
 * A remote TLB flush round, asked of @vcpus vCPUs; or, @elided, one that a
 * zap skipped because it removed nothing valid.
 */
TRACE_EVENT(secmmu_tlb_flush,
	TP_PROTO(u32 space, u32 vcpus, bool elided),
	TP_ARGS(space, vcpus, elided),

	TP_STRUCT__entry(
		__field(u32,	space)
		__field(u32,	vcpus)
		__field(bool,	elided)
	),

	TP_fast_assign(
		__entry->space	= space;
		__entry->vcpus	= vcpus;
		__entry->elided	= elided;
	),

	TP_printk("space %u vcpus %u%s", __entry->space, __entry->vcpus,
		  __entry->elided ? " elided" : "")
);

/* A fault replaced what was at @gfn to map a leaf of @level. */
DECLARE_EVENT_CLASS(secmmu_leaf_change,
	TP_PROTO(u32 space, u64 gfn, u8 level),
	TP_ARGS(space, gfn, level),

	TP_STRUCT__entry(
		__field(u32,	space)
		__field(u64,	gfn)
		__field(u8,	level)
	),

	TP_fast_assign(
		__entry->space	= space;
		__entry->gfn	= gfn;
		__entry->level	= level;
	),

	TP_printk("space %u gfn %#llx level %u", __entry->space, __entry->gfn,
		  __entry->level)
);

/* A huge leaf made way for a table, to map a smaller page under it. */
DEFINE_EVENT(secmmu_leaf_change, secmmu_split,
	TP_PROTO(u32 space, u64 gfn, u8 level),
	TP_ARGS(space, gfn, level)
);

/* A table made way for a huge leaf. */
DEFINE_EVENT(secmmu_leaf_change, secmmu_collapse,
	TP_PROTO(u32 space, u64 gfn, u8 level),
	TP_ARGS(space, gfn, level)
);

/* A valid entry was broken, flushed and made again (arm64). */
DEFINE_EVENT(secmmu_leaf_change, secmmu_bbm,
	TP_PROTO(u32 space, u64 gfn, u8 level),
	TP_ARGS(space, gfn, level)
);

#endif /* _TRACE_SECMMU_H */

/* This part must be outside protection */
#include <trace/define_trace.h>
