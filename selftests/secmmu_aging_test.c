// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu aging selftests: the mm core's page aging (page_idle, MGLRU) must
 * see accesses made through the secondary MMU only, via clear_young /
 * test_young / clear_flush_young.
 *
 * page_idle_tracking is a port of KVM's access_tracking_perf_test: two
 * vCPU threads populate a region, the host marks every page idle through
 * /sys/kernel/mm/page_idle/bitmap, the vCPUs touch their pages again, and
 * reading the bitmap back must find (almost) none of them idle, while
 * pages nobody touched stay idle. Sizes are chosen for TCG: 32 MiB.
 *
 * test_young_readonly checks that test_young never clears the accessed
 * state, through SECMMU_TEST_YOUNG (the mm core's test_young is not
 * exported, and its users, khugepaged and DAMON, do not report it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define GPA_BASE	0x40000000UL
#define REGION		(32 * SZ_1M)
#define NPAGES		(REGION / PAGE_SZ)

/* The pfn backing @addr, from /proc/self/pagemap (root only), or 0. */
static __u64 pfn_of(int pagemap, void *addr)
{
	__u64 e;

	if (pread(pagemap, &e, 8, ((uintptr_t)addr / PAGE_SZ) * 8) != 8)
		return 0;
	return (e & (1ULL << 63)) ? e & ((1ULL << 55) - 1) : 0;
}

/* Marks the page at @pfn idle. */
static int mark_idle(int bitmap, __u64 pfn)
{
	__u64 bits = 1ULL << (pfn % 64);

	return pwrite(bitmap, &bits, 8, pfn / 64 * 8) == 8 ? 0 : -1;
}

/*
 * Is the page at @pfn on an LRU list? page_idle tracks only LRU pages: a
 * freshly faulted page can sit in a per-CPU LRU batch for a while, and
 * then reads as not idle whatever the MMUs say.
 */
static int on_lru(int kpageflags, __u64 pfn)
{
	__u64 flags;

	if (pread(kpageflags, &flags, 8, pfn * 8) != 8)
		return 0;
	return !!(flags & (1ULL << 5));	/* KPF_LRU */
}

/* /proc/kpageflags, opened by the fixture (-1: count every page). */
static int kpageflags = -1;

/* Is the page at @pfn idle? Reading asks the MMUs (clear_young). */
static int is_idle(int bitmap, __u64 pfn)
{
	__u64 bits;

	if (pread(bitmap, &bits, 8, pfn / 64 * 8) != 8)
		return -1;
	return !!(bits & (1ULL << (pfn % 64)));
}

struct vcpu_thread {
	int vcpu;
	unsigned long start, end;
	unsigned int op;
	int ret;
};

static void *vcpu_thread(void *arg)
{
	struct vcpu_thread *t = arg;

	t->ret = run_range(t->vcpu, t->op, t->start, t->end, PAGE_SZ, 0, NULL);
	return NULL;
}

/* Both vCPUs run @op over their halves of [start, end) at once. */
static int run_both(int vcpus[2], unsigned int op, unsigned long start, unsigned long end)
{
	unsigned long half = (end - start) / 2;
	struct vcpu_thread t[2] = {
		{ vcpus[0], start, start + half, op },
		{ vcpus[1], start + half, end, op },
	};
	pthread_t th[2];
	int i;

	for (i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, vcpu_thread, &t[i]);
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	return t[0].ret ? t[0].ret : t[1].ret;
}

FIXTURE(aging) {
	int fd, vcpus[2], pagemap, bitmap;
	char *mem;
	__u64 pfns[NPAGES];
};

FIXTURE_VARIANT(aging) {
	unsigned int cfg_flags;
};

FIXTURE_VARIANT_ADD(aging, ad) { .cfg_flags = 0 };
FIXTURE_VARIANT_ADD(aging, no_ad) { .cfg_flags = SECMMU_CFG_NO_AD };

FIXTURE_SETUP(aging)
{
	int i;

	self->bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	if (self->bitmap < 0)
		SKIP(return, "no page_idle");
	self->pagemap = open("/proc/self/pagemap", O_RDONLY);
	kpageflags = open("/proc/kpageflags", O_RDONLY);
	ASSERT_GE(self->pagemap, 0);
	self->fd = space_create(1, variant->cfg_flags);
	ASSERT_GE(self->fd, 0);
	self->mem = mmap(NULL, REGION, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->mem);
	madvise(self->mem, REGION, MADV_NOHUGEPAGE);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, REGION, self->mem));
	for (i = 0; i < 2; i++) {
		self->vcpus[i] = vcpu_create(self->fd, 0);
		ASSERT_GE(self->vcpus[i], 0);
	}
	/* populate: the vCPUs write everything (the host never touches it). */
	ASSERT_EQ(0, run_both(self->vcpus, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + REGION));
	for (i = 0; i < (int)NPAGES; i++) {
		self->pfns[i] = pfn_of(self->pagemap, self->mem + i * PAGE_SZ);
		ASSERT_NE(0, self->pfns[i]);
	}
}

FIXTURE_TEARDOWN(aging)
{
	if (self->bitmap < 0)
		return;
	close(self->vcpus[0]);
	close(self->vcpus[1]);
	close(self->fd);
	munmap(self->mem, REGION);
	close(self->bitmap);
	close(self->pagemap);
}

/* Idle pages among the LRU pages of pfns[from, to); *lru gets how many. */
static unsigned long count_idle_lru(int bitmap, const __u64 *pfns, int from, int to,
				    unsigned long *lru)
{
	unsigned long idle = 0;
	int i;

	*lru = 0;
	for (i = from; i < to; i++) {
		int bit = is_idle(bitmap, pfns[i]);

		if (kpageflags >= 0 && !on_lru(kpageflags, pfns[i]))
			continue;
		(*lru)++;
		idle += bit == 1;
	}
	return idle;
}

static unsigned long count_idle(int bitmap, const __u64 *pfns, int from, int to)
{
	unsigned long lru;

	return count_idle_lru(bitmap, pfns, from, to, &lru);
}

static void mark_all_idle(int bitmap, const __u64 *pfns)
{
	int i;

	for (i = 0; i < (int)NPAGES; i++)
		mark_idle(bitmap, pfns[i]);
}

/*
 * The vCPUs touch the first half after everything was marked idle (write,
 * then again with reads): at most 10% of those may still read as idle; the
 * second half, untouched, must stay idle.
 */
TEST_F_TIMEOUT(aging, page_idle_tracking, 120)
{
	const int half = NPAGES / 2;
	unsigned long idle, lru;
	struct secmmu_run r;
	int pass;

	for (pass = 0; pass < 2; pass++) {
		unsigned int op = pass ? SECMMU_RUN_READ : SECMMU_RUN_WRITE;

		mark_all_idle(self->bitmap, self->pfns);
		ASSERT_EQ(0, run_both(self->vcpus, op, GPA_BASE, GPA_BASE + REGION / 2));
		/* Touched through the secondary MMU only: (almost) none idle. */
		idle = count_idle_lru(self->bitmap, self->pfns, 0, half, &lru);
		EXPECT_LE(idle, lru / 10)
			TH_LOG("pass %d: %lu of %lu touched pages still idle", pass, idle, lru);
		EXPECT_GE(lru, half * 9 / 10);
		/* Untouched: every one still idle. */
		idle = count_idle_lru(self->bitmap, self->pfns, half, NPAGES, &lru);
		EXPECT_EQ(lru, idle)
			TH_LOG("pass %d: %lu of %lu untouched pages idle", pass, idle, lru);
		EXPECT_GE(lru, half * 9 / 10);
	}

	/* Writes after aging are not lost (no-A/D mode restores the SPTE). */
	ASSERT_EQ(0, run_both(self->vcpus, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + REGION));
	ASSERT_EQ(0, run_range(self->vcpus[0], SECMMU_RUN_VERIFY, GPA_BASE,
			       GPA_BASE + REGION, PAGE_SZ, 0, &r));
	EXPECT_EQ(0, r.mismatches);
}

/*
 * Whether secmmu was loaded with aging_locked=1 (all aging under the MMU
 * lock). 7.3 does not show Rust module parameters in sysfs: without the
 * file, the default (lockless) is assumed, as scripts/test-all loads it.
 */
static int module_aging_locked(void)
{
	char c = 'N';
	int fd = open("/sys/module/secmmu/parameters/aging_locked", O_RDONLY);

	if (fd >= 0) {
		if (read(fd, &c, 1) != 1)
			c = 'N';
		close(fd);
	}
	return c == 'Y' || c == '1';
}

/*
 * test_young never clears the accessed state (D20): asked twice in a row,
 * it answers the same, and the SPTE keeps its accessed bit. Pages the
 * vCPUs wrote are young; after clear_young (page_idle) they are old, twice;
 * a vCPU read makes them young again, twice. test_young is lockless in
 * every mode (it only loads SPTEs) unless aging_locked=1.
 */
TEST_F(aging, test_young_readonly)
{
	enum { N = 64 };
	const unsigned long calls = 2 * N, lockless = module_aging_locked() ? 0 : 2 * N;
	struct secmmu_test_young bad = { .hva = (unsigned long)self->mem };
	struct secmmu_stats s0, s1;
	int idx[N], n = 0, i, k;
	unsigned char snap;

	/* The uAPI's validation. */
	bad.hva += 1;
	EXPECT_EQ(-1, ioctl(self->fd, SECMMU_TEST_YOUNG, &bad));
	EXPECT_EQ(EINVAL, errno);
	bad.hva = ~0UL << 12;
	EXPECT_EQ(-1, ioctl(self->fd, SECMMU_TEST_YOUNG, &bad));
	EXPECT_EQ(EINVAL, errno);
	bad.hva = (unsigned long)self->mem;
	bad.flags = 1;
	EXPECT_EQ(-1, ioctl(self->fd, SECMMU_TEST_YOUNG, &bad));
	EXPECT_EQ(EINVAL, errno);

	/* Pages on the LRU: page_idle below clears only those. */
	for (i = 0; i < (int)NPAGES && n < N; i += 61)
		if (kpageflags < 0 || on_lru(kpageflags, self->pfns[i]))
			idx[n++] = i;
	ASSERT_EQ(N, n);

	/* Written by the vCPUs in the fixture: young, and still young. */
	s0 = get_stats(self->fd);
	for (k = 0; k < N; k++) {
		char *page = self->mem + idx[k] * PAGE_SZ;

		ASSERT_EQ(1, test_young(self->fd, page));
		ASSERT_EQ(1, test_young(self->fd, page));
		ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE + idx[k] * PAGE_SZ, 1, &snap));
		EXPECT_TRUE(snap & SECMMU_SNAP_ACCESSED);
	}
	s1 = get_stats(self->fd);
	EXPECT_EQ(calls, s1.aging_calls - s0.aging_calls);
	EXPECT_EQ(calls, s1.aging_young - s0.aging_young);
	EXPECT_EQ(lockless, s1.aging_lockless - s0.aging_lockless);
	EXPECT_EQ(0, s1.aging_cleared - s0.aging_cleared);

	/* clear_young through page_idle: one call per page, each made old. */
	s0 = get_stats(self->fd);
	for (k = 0; k < N; k++)
		ASSERT_EQ(0, mark_idle(self->bitmap, self->pfns[idx[k]]));
	s1 = get_stats(self->fd);
	EXPECT_EQ(N, s1.aging_calls - s0.aging_calls);
	EXPECT_EQ(N, s1.aging_cleared - s0.aging_cleared);

	/* Old now, and still old. */
	s0 = get_stats(self->fd);
	for (k = 0; k < N; k++) {
		char *page = self->mem + idx[k] * PAGE_SZ;

		ASSERT_EQ(0, test_young(self->fd, page));
		ASSERT_EQ(0, test_young(self->fd, page));
		ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE + idx[k] * PAGE_SZ, 1, &snap));
		EXPECT_FALSE(snap & SECMMU_SNAP_ACCESSED);
	}
	s1 = get_stats(self->fd);
	EXPECT_EQ(calls, s1.aging_calls - s0.aging_calls);
	EXPECT_EQ(0, s1.aging_young - s0.aging_young);
	EXPECT_EQ(lockless, s1.aging_lockless - s0.aging_lockless);

	/* A vCPU read makes them young again (without A/D: a restore fault). */
	s0 = get_stats(self->fd);
	for (k = 0; k < N; k++) {
		char *page = self->mem + idx[k] * PAGE_SZ;
		__u64 v;

		ASSERT_EQ(0, guest_access(self->vcpus[0], GPA_BASE + idx[k] * PAGE_SZ,
					  &v, sizeof(v), 0));
		ASSERT_EQ(1, test_young(self->fd, page));
		ASSERT_EQ(1, test_young(self->fd, page));
	}
	s1 = get_stats(self->fd);
	EXPECT_EQ(calls, s1.aging_calls - s0.aging_calls);
	EXPECT_EQ(calls, s1.aging_young - s0.aging_young);
	EXPECT_EQ(variant->cfg_flags ? N : 0, s1.access_restores - s0.access_restores);
	EXPECT_EQ(0, s1.aging_cleared - s0.aging_cleared);
}

struct stress {
	int vcpu, bitmap, stop;
	const __u64 *pfns;
	unsigned long runs, agings;
};

static void *stress_vcpu(void *arg)
{
	struct stress *st = arg;

	while (!__atomic_load_n(&st->stop, __ATOMIC_RELAXED)) {
		/* Faults are expected: the host unmaps and deletes slots. */
		run_range(st->vcpu, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + REGION,
			  PAGE_SZ, 1, NULL);
		st->runs++;
	}
	return NULL;
}

static void *stress_ager(void *arg)
{
	struct stress *st = arg;

	while (!__atomic_load_n(&st->stop, __ATOMIC_RELAXED)) {
		mark_all_idle(st->bitmap, st->pfns);
		count_idle(st->bitmap, st->pfns, 0, NPAGES);
		st->agings++;
	}
	return NULL;
}

/*
 * Aging in a loop (page_idle: clear_young over every page) while two vCPUs
 * run and the host invalidates: MADV_DONTNEED, munmap + mmap, and memslot
 * deletion and re-creation. Lockless walkers meet zapped SPTEs and rmaps
 * emptied under them; nothing may crash or warn, and the counters show
 * the walks happened.
 */
TEST_F(aging, aging_stress)
{
	struct stress v[2], ager;
	struct secmmu_stats st;
	pthread_t t[3];
	int i, round;

	memset(v, 0, sizeof(v));
	memset(&ager, 0, sizeof(ager));
	ager.bitmap = self->bitmap;
	ager.pfns = self->pfns;
	for (i = 0; i < 2; i++) {
		v[i].vcpu = self->vcpus[i];
		ASSERT_EQ(0, pthread_create(&t[i], NULL, stress_vcpu, &v[i]));
	}
	ASSERT_EQ(0, pthread_create(&t[2], NULL, stress_ager, &ager));
	for (round = 0; round < 20; round++) {
		ASSERT_EQ(0, madvise(self->mem, REGION / 4, MADV_DONTNEED));
		ASSERT_EQ(0, munmap(self->mem + REGION / 2, REGION / 4));
		ASSERT_EQ(self->mem + REGION / 2,
			  mmap(self->mem + REGION / 2, REGION / 4, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
		ASSERT_EQ(0, set_slot(self->fd, 0, 0, 0, 0, NULL));
		usleep(2000);
		ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, REGION, self->mem));
		usleep(5000);
	}
	for (i = 0; i < 2; i++)
		__atomic_store_n(&v[i].stop, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&ager.stop, 1, __ATOMIC_RELAXED);
	for (i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	st = get_stats(self->fd);
	TH_LOG("%lu+%lu runs, %lu aging passes", v[0].runs, v[1].runs, ager.agings);
	TH_LOG("aging: %llu calls (%llu lockless), %llu young, %llu cleared",
	       st.aging_calls, st.aging_lockless, st.aging_young, st.aging_cleared);
	TH_LOG("%llu contended, %llu lost races, %llu restores",
	       st.rmap_contention, st.aging_lost_races, st.access_restores);
	EXPECT_GT(st.aging_calls, 0);
	if (!variant->cfg_flags)
		EXPECT_GT(st.aging_lockless, 0);
	/* Coherent again afterwards. */
	ASSERT_EQ(0, run_both(self->vcpus, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + REGION));
}

TEST_HARNESS_MAIN
