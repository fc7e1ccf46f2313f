// SPDX-License-Identifier: GPL-2.0
/*
 * C wrappers for the static inline functions and macros secmmu's Rust code
 * calls. Keep each one a single call or close to it: logic belongs in Rust.
 */

#include <linux/irqflags.h>
#include <linux/mm.h>
#include <linux/pgtable.h>
#include <linux/page-flags.h>
#include <linux/preempt.h>
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

unsigned long secmmu_task_size(void)
{
	return TASK_SIZE;
}

void secmmu_preempt_disable(void)
{
	preempt_disable();
}

void secmmu_preempt_enable(void)
{
	preempt_enable();
}

void secmmu_rwlock_init(rwlock_t *lock)
{
	rwlock_init(lock);
}

void secmmu_read_lock(rwlock_t *lock)
{
	read_lock(lock);
}

void secmmu_read_unlock(rwlock_t *lock)
{
	read_unlock(lock);
}

void secmmu_write_lock(rwlock_t *lock)
{
	write_lock(lock);
}

void secmmu_write_unlock(rwlock_t *lock)
{
	write_unlock(lock);
}

bool secmmu_rwlock_needbreak(rwlock_t *lock)
{
	return rwlock_needbreak(lock);
}

unsigned long secmmu_alloc_table_page(void)
{
	struct page *page = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);

	return page ? page_to_pfn(page) : 0;
}

void secmmu_free_table_page(unsigned long pfn)
{
	__free_page(pfn_to_page(pfn));
}

void *secmmu_pfn_to_virt(unsigned long pfn)
{
	return page_address(pfn_to_page(pfn));
}

int secmmu_get_user_page(unsigned long hva, bool write, unsigned long *pfn)
{
	struct page *page;
	int ret;

	ret = get_user_pages_fast(hva, 1, write ? FOLL_WRITE : 0, &page);
	if (ret != 1)
		return ret < 0 ? ret : -EFAULT;
	*pfn = page_to_pfn(page);
	return 0;
}

void secmmu_put_user_page(unsigned long pfn)
{
	put_page(pfn_to_page(pfn));
}

void secmmu_set_page_dirty(unsigned long pfn)
{
	struct page *page = pfn_to_page(pfn);

	if (!PageReserved(page))
		SetPageDirty(page);
}

/*
 * KVM's host_pfn_mapping_level(): how large the primary MMU maps @hva in
 * @mm right now. IRQs are off, so page tables cannot be freed under the
 * walk (their freeing waits for an IPI or an RCU grace period, as for
 * GUP-fast), and each entry is read exactly once: a table may be promoted
 * to a huge leaf (or split) during the walk, and reading an entry twice
 * could mix the two.
 */
int secmmu_host_mapping_level(struct mm_struct *mm, unsigned long hva)
{
	int level = 0;
	unsigned long flags;
	pgd_t pgd;
	p4d_t p4d;
	pud_t pud;
	pmd_t pmd;

	local_irq_save(flags);
	pgd = READ_ONCE(*pgd_offset(mm, hva));
	if (pgd_none(pgd))
		goto out;
	p4d = READ_ONCE(*p4d_offset(&pgd, hva));
	if (p4d_none(p4d) || !p4d_present(p4d))
		goto out;
	pud = READ_ONCE(*pud_offset(&p4d, hva));
	if (pud_none(pud) || !pud_present(pud))
		goto out;
	if (pud_leaf(pud)) {
		level = 2;
		goto out;
	}
	pmd = READ_ONCE(*pmd_offset(&pud, hva));
	if (pmd_none(pmd) || !pmd_present(pmd))
		goto out;
	if (pmd_leaf(pmd))
		level = 1;
out:
	local_irq_restore(flags);
	return level;
}
