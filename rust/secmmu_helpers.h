/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What secmmu needs from the kernel that the kernel's Rust bindings lack:
 * static inline functions and macros, wrapped as real functions in
 * rust/helpers.c. bindgen turns this header (and only the functions named
 * secmmu_*) into rust/bindings_generated.rs; every type it refers to comes
 * from kernel::bindings, so each kernel type stays one Rust type.
 */
#ifndef _SECMMU_HELPERS_H
#define _SECMMU_HELPERS_H

#include <linux/mmu_notifier.h>
#include <linux/types.h>

/* mmu_notifier_range_blockable(): may this invalidation sleep? */
bool secmmu_range_blockable(const struct mmu_notifier_range *range);

/* cond_resched(): a voluntary preemption point. */
void secmmu_cond_resched(void);

/* need_resched(): would cond_resched() reschedule now? */
bool secmmu_need_resched(void);

/* current->mm, without taking a reference. */
struct mm_struct *secmmu_current_mm(void);

#endif /* _SECMMU_HELPERS_H */
