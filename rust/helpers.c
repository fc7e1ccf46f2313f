// SPDX-License-Identifier: GPL-2.0
/*
 * C wrappers for the static inline functions and macros secmmu's Rust code
 * calls. Keep each one a single call: the logic belongs in Rust.
 */

#include <linux/sched.h>
#include <linux/sched/mm.h>
#include "secmmu_helpers.h"

bool secmmu_range_blockable(const struct mmu_notifier_range *range)
{
	return mmu_notifier_range_blockable(range);
}

void secmmu_cond_resched(void)
{
	cond_resched();
}

bool secmmu_need_resched(void)
{
	return need_resched();
}

struct mm_struct *secmmu_current_mm(void)
{
	return current->mm;
}
