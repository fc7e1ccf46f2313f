// SPDX-License-Identifier: GPL-2.0
/*
 * C wrappers for the static inline functions and macros secmmu's Rust code
 * calls. Keep each one a single call or close to it: logic belongs in Rust.
 */

#include <linux/file.h>
#include <linux/irqflags.h>
#include <linux/mm.h>
#include <linux/pgtable.h>
#include <linux/page-flags.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/vmalloc.h>
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

void secmmu_raw_spin_lock_init(raw_spinlock_t *lock, const char *name,
			       struct lock_class_key *key)
{
#ifdef CONFIG_DEBUG_SPINLOCK
	__raw_spin_lock_init(lock, name, key, LD_WAIT_SPIN);
#else
	raw_spin_lock_init(lock);
#endif
}

unsigned long secmmu_raw_spin_lock_irqsave(raw_spinlock_t *lock)
{
	unsigned long flags;

	raw_spin_lock_irqsave(lock, flags);
	return flags;
}

bool secmmu_raw_spin_trylock_irqsave(raw_spinlock_t *lock, unsigned long *flags)
{
	return raw_spin_trylock_irqsave(lock, *flags);
}

void secmmu_raw_spin_unlock_irqrestore(raw_spinlock_t *lock, unsigned long flags)
{
	raw_spin_unlock_irqrestore(lock, flags);
}

void secmmu_raw_spin_assert_is_held(raw_spinlock_t *lock)
{
	lockdep_assert_held(lock);
}

void secmmu_rwlock_init(rwlock_t *lock, const char *name,
			struct lock_class_key *key)
{
#if defined(CONFIG_DEBUG_SPINLOCK) && !defined(CONFIG_PREEMPT_RT)
	__rwlock_init(lock, name, key);
#else
	rwlock_init(lock);
#endif
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

unsigned long secmmu_virt_to_pfn(const void *addr)
{
	return page_to_pfn(virt_to_page(addr));
}

void secmmu_get_page(unsigned long pfn)
{
	get_page(pfn_to_page(pfn));
}

unsigned long secmmu_copy_page_to_user(void __user *dst, unsigned long pfn,
				       unsigned long off, unsigned long len)
{
	return copy_to_user(dst, page_address(pfn_to_page(pfn)) + off, len);
}

int secmmu_get_user_page(unsigned long hva, bool write, bool nofault,
			 unsigned long *pfn)
{
	struct page *page;
	int ret;

	ret = get_user_pages_fast(hva, 1, (write ? FOLL_WRITE : 0) |
				  (nofault ? FOLL_NOFAULT : 0), &page);
	if (ret != 1)
		return ret < 0 ? ret : -EFAULT;
	*pfn = page_to_pfn(page);
	return 0;
}

bool secmmu_get_user_page_fast_only(unsigned long hva, bool write,
				    unsigned long *pfn)
{
	struct page *page;

	if (!get_user_page_fast_only(hva, write ? FOLL_WRITE : 0, &page))
		return false;
	*pfn = page_to_pfn(page);
	return true;
}

void secmmu_put_user_page(unsigned long pfn)
{
	put_page(pfn_to_page(pfn));
}

unsigned long secmmu_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

void secmmu_put_page(struct page *page)
{
	put_page(page);
}

void secmmu_set_page_dirty(unsigned long pfn)
{
	struct page *page = pfn_to_page(pfn);

	if (!PageReserved(page))
		SetPageDirty(page);
}

/*
 * How the primary MMU maps @hva in @mm right now: returns the level of the
 * present leaf (0: 4K, 1: 2M, 2: 1G) and fills @pfn (the 4K page of @hva)
 * and @writable; -1 if nothing maps it. KVM's host_pfn_mapping_level()
 * walk: IRQs are off, so page tables cannot be freed under the walk (their
 * freeing waits for an IPI or an RCU grace period, as for GUP-fast), and
 * each entry is read exactly once: a table may be promoted to a huge leaf
 * (or split) during the walk, and reading an entry twice could mix the
 * two. The next level is found from the entry read, through the
 * *_offset_lockless() forms gup_fast_pgd_range() uses: on arm64 with
 * levels folded at run time (52-bit VA without FEAT_LPA2), p4d_offset() of
 * a stack copy would return the copy's own address, not the table's.
 */
int secmmu_host_leaf(struct mm_struct *mm, unsigned long hva,
		     unsigned long *pfn, bool *writable)
{
	int level = -1;
	unsigned long flags;
	pgd_t *pgdp, pgd;
	p4d_t *p4dp, p4d;
	pud_t *pudp, pud;
	pmd_t *pmdp, pmd;
	pte_t *ptep, pte;

	local_irq_save(flags);
	pgdp = pgd_offset(mm, hva);
	pgd = READ_ONCE(*pgdp);
	if (pgd_none(pgd))
		goto out;
	p4dp = p4d_offset_lockless(pgdp, pgd, hva);
	p4d = READ_ONCE(*p4dp);
	if (p4d_none(p4d) || !p4d_present(p4d))
		goto out;
	pudp = pud_offset_lockless(p4dp, p4d, hva);
	pud = READ_ONCE(*pudp);
	if (pud_none(pud) || !pud_present(pud))
		goto out;
	if (pud_leaf(pud)) {
		*pfn = pud_pfn(pud) + ((hva & ~PUD_MASK) >> PAGE_SHIFT);
		*writable = pud_write(pud);
		level = 2;
		goto out;
	}
	pmdp = pmd_offset_lockless(pudp, pud, hva);
	pmd = pmdp_get_lockless(pmdp);
	if (pmd_none(pmd) || !pmd_present(pmd))
		goto out;
	if (pmd_leaf(pmd)) {
		*pfn = pmd_pfn(pmd) + ((hva & ~PMD_MASK) >> PAGE_SHIFT);
		*writable = pmd_write(pmd);
		level = 1;
		goto out;
	}
	/*
	 * pte_offset_map() is not for modules; on a 64-bit kernel page tables
	 * are never in highmem, so the table @pmd (read once, a table) names
	 * is in the direct map, and stays allocated while IRQs are off.
	 */
	ptep = pte_offset_kernel(&pmd, hva);
	pte = ptep_get_lockless(ptep);
	if (pte_present(pte)) {
		*pfn = pte_pfn(pte);
		*writable = pte_write(pte);
		level = 0;
	}
out:
	local_irq_restore(flags);
	return level;
}

void *secmmu_vmap_user(struct page **pages, unsigned int count)
{
	return vmap(pages, count, VM_USERMAP, PAGE_KERNEL);
}

int secmmu_anon_inode_getfd_pread(const char *name,
				  const struct file_operations *fops,
				  void *priv, int flags)
{
	struct file *file;
	int fd;

	fd = get_unused_fd_flags(flags);
	if (fd < 0)
		return fd;
	file = anon_inode_getfile_fmode(name, fops, priv, flags, FMODE_PREAD);
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		return PTR_ERR(file);
	}
	fd_install(fd, file);
	return fd;
}
