/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What secmmu needs from the kernel that the kernel's Rust bindings lack:
 * static inline functions and macros, wrapped as real functions in
 * rust/helpers.c. bindgen turns this header (the functions named secmmu_*
 * and the few exported functions listed in gen-bindings.sh) into
 * rust/bindings_generated.rs; every type it refers to comes from
 * kernel::bindings, so each kernel type stays one Rust type.
 */
#ifndef _SECMMU_HELPERS_H
#define _SECMMU_HELPERS_H

#include <linux/anon_inodes.h>
#include <linux/mmu_notifier.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/vmalloc.h>

/*
 * The trace events: bindgen takes their __tracepoint_secmmu_* keys and the
 * rust_do_trace_secmmu_* functions src/trace.c defines (rust/tracepoint.rs).
 */
#include <trace/events/secmmu.h>

/* mmu_notifier_range_blockable(): may this invalidation sleep? */
bool secmmu_range_blockable(const struct mmu_notifier_range *range);

/* cond_resched(): a voluntary preemption point. */
void secmmu_cond_resched(void);

/* need_resched(): would cond_resched() reschedule now? */
bool secmmu_need_resched(void);

/* TASK_SIZE of the current task: the first address above user space. */
unsigned long secmmu_task_size(void);

/* preempt_disable() / preempt_enable(). */
void secmmu_preempt_disable(void);
void secmmu_preempt_enable(void);

/*
 * raw_spin_lock_init() with the lockdep class @key and @name (a lock that
 * spins on PREEMPT_RT too, for hard IRQ context), and the irqsave pair.
 */
void secmmu_raw_spin_lock_init(raw_spinlock_t *lock, const char *name,
			       struct lock_class_key *key);
unsigned long secmmu_raw_spin_lock_irqsave(raw_spinlock_t *lock);
bool secmmu_raw_spin_trylock_irqsave(raw_spinlock_t *lock, unsigned long *flags);
void secmmu_raw_spin_unlock_irqrestore(raw_spinlock_t *lock, unsigned long flags);
void secmmu_raw_spin_assert_is_held(raw_spinlock_t *lock);

/*
 * rwlock_init() with the lockdep class @key and @name, as the kernel's Rust
 * helper does for spinlocks (without CONFIG_DEBUG_SPINLOCK, rwlock_init()).
 */
void secmmu_rwlock_init(rwlock_t *lock, const char *name,
			struct lock_class_key *key);
void secmmu_read_lock(rwlock_t *lock);
void secmmu_read_unlock(rwlock_t *lock);
void secmmu_write_lock(rwlock_t *lock);
void secmmu_write_unlock(rwlock_t *lock);
/* Is another CPU waiting for this lock (rwlock_needbreak())? */
bool secmmu_rwlock_needbreak(rwlock_t *lock);

/*
 * Page-table pages: zeroed order-0 pages charged to the caller's memcg.
 * Returns the page's pfn, or 0 if the allocation failed.
 */
unsigned long secmmu_alloc_table_page(void);
void secmmu_free_table_page(unsigned long pfn);

/* The kernel (direct map) address of the page at @pfn. */
void *secmmu_pfn_to_virt(unsigned long pfn);

/* The frame number of the page at kernel (direct map) address @addr. */
unsigned long secmmu_virt_to_pfn(const void *addr);

/* get_page(): takes a reference on the (allocated) page at @pfn. */
void secmmu_get_page(unsigned long pfn);

/*
 * copy_to_user() of @len bytes at offset @off of the page at @pfn to @dst:
 * the bytes not copied. May fault and sleep.
 */
unsigned long secmmu_copy_page_to_user(void __user *dst, unsigned long pfn,
				       unsigned long off, unsigned long len);

/*
 * Resolves the user address @hva of the current mm to its page, faulting
 * it in (for writing when @write) unless @nofault, and takes a reference on
 * it. Returns 0 and the pfn in @pfn, or a negative errno (-EFAULT when
 * @nofault and the page is not mapped, or not writable for @write).
 */
int secmmu_get_user_page(unsigned long hva, bool write, bool nofault,
			 unsigned long *pfn);

/*
 * get_user_page_fast_only(): the page the lockless walk finds mapped at
 * @hva (writable if @write), with a reference, without faulting or
 * sleeping; false if there is none.
 */
bool secmmu_get_user_page_fast_only(unsigned long hva, bool write,
				    unsigned long *pfn);

/* Drops the reference secmmu_get_user_page() took. */
void secmmu_put_user_page(unsigned long pfn);

/* page_to_pfn(): the frame number of @page. */
unsigned long secmmu_page_to_pfn(struct page *page);

/* put_page(): drops a reference get_user_pages_fast() took on @page. */
void secmmu_put_page(struct page *page);

/*
 * Marks the page at @pfn dirty, because it was written through the
 * secondary MMU (like KVM's kvm_set_page_dirty(): not for reserved pages).
 */
void secmmu_set_page_dirty(unsigned long pfn);

/*
 * The primary MMU's present leaf at @hva in @mm, walked as above: its level
 * (0: 4K, 1: 2M, 2: 1G) with the pfn of @hva's 4K page and whether it is
 * writable; -1 if nothing maps @hva. Any context.
 */
int secmmu_host_leaf(struct mm_struct *mm, unsigned long hva,
		     unsigned long *pfn, bool *writable);

/*
 * vmap() of @count pages as one kernel mapping that remap_vmalloc_range()
 * may map into user space (VM_USERMAP, PAGE_KERNEL: a macro).
 */
void *secmmu_vmap_user(struct page **pages, unsigned int count);

/*
 * anon_inode_getfd() for a file that pread() may read: a new fd (with
 * @flags' O_CLOEXEC) of a new file on the anonymous inode, with @fops and
 * @priv and open @flags, and FMODE_PREAD (KVM's stats fds,
 * anon_inode_getfile_fmode()). On failure @priv is not consumed.
 */
int secmmu_anon_inode_getfd_pread(const char *name,
				  const struct file_operations *fops,
				  void *priv, int flags);

#endif /* _SECMMU_HELPERS_H */
