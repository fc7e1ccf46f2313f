// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu_fail_nth: allocation-failure injection, after the kernel's
 * tools/testing/selftests/iommu/iommufd_fail_nth.c.
 *
 * A whole space lifecycle (open, CONFIGURE with 32 roots, memslots on 4K
 * and THP memory, CREATE_VCPU, RUN writes and reads, ACCESS, MADV_DONTNEED,
 * mprotect, dirty logging (with a dirty ring in the _ring variants), SNAPSHOT, aging,
 * slot deletion, munmap, close) runs with
 * /proc/self/task/TID/fail-nth armed: the Nth slab or page allocation of
 * this thread fails, for N = 1, 2, ... until a lifecycle runs without
 * reaching N. failslab and fail_page_alloc are set up to fail any
 * allocation (ignore-gfp-wait, ignore-gfp-highmem N, min-order 0), quietly.
 *
 * Every step must succeed or fail cleanly: ENOMEM, EINTR, EAGAIN, EBUSY,
 * or EFAULT with a memory-fault exit, and only in the step where the
 * failure was injected. Then the step is retried (fail-nth fires once) and
 * must succeed: a failure must not leave the space half-changed (a slot
 * that exists, a CONFIGURE that happened). Guest data is checked along
 * the way, and after every lifecycle the module's page-table pages
 * (module_table_pages of a fresh space) are back to what they were.
 *
 * A first lifecycle with nothing injected counts the injection points and
 * times one lifecycle; the sweep then takes every k-th point, k chosen to
 * fit BUDGET_S seconds (at least SECMMU_TEST_SCALE), both printed.
 * SECMMU_FAIL_NTH_STEP=k sets k (1: every point) with no time budget.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "secmmu_lib.h"
#include "secmmu_stress_lib.h"
#include "kselftest_harness.h"

#define GPA_4K		0x40000000UL
#define GPA_THP		0x80000000UL
#define NPAGES_4K	16
#define SIZE_4K		(NPAGES_4K * PAGE_SZ)
#define THP_STRIDE	(64 * 1024UL)
#define NR_ROOTS	SECMMU_MAX_ROOTS
#define BUDGET_S	45
#define BAD		1	/* a step misbehaved; life->why says how */
#define RING_BYTES	(16 * 1024)
#define RING_ENTRIES	(RING_BYTES / sizeof(struct secmmu_dirty_gfn))

struct life {
	unsigned int format, cfg_flags, ring_bytes;
	int fd, vcpu[2];
	struct secmmu_dirty_gfn *ring;	/* vCPU 0's dirty ring, mapped */
	unsigned long ring_next;
	char *mem, *thp, *raw;
	__u64 pattern;
	int pagemap, bitmap;
	char why[256];
};

/* Buffers the kernel copies to: touched before arming, so no user fault allocates. */
static unsigned char snap_buf[512];
static char acc_buf[2 * PAGE_SZ], acc_back[2 * PAGE_SZ];
static __u64 pm_buf[NPAGES_4K];
static __u64 log_buf[SZ_2M / PAGE_SZ / 64];

static __printf(2, 3) int bad(struct life *l, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(l->why, sizeof(l->why), fmt, ap);
	va_end(ap);
	return BAD;
}

/*
 * One RUN: 0; -EFAULT for a memory-fault exit; -errno; BAD for an EFAULT
 * without one or a VERIFY mismatch.
 */
static int run(struct life *l, int vcpu, unsigned int op, unsigned long start,
	       unsigned long end, unsigned long stride, __u64 pattern,
	       unsigned long *exit_gpa)
{
	struct secmmu_run r;
	int ret = run_range(vcpu, op, start, end, stride, pattern, &r);

	if (r.mismatches)
		return bad(l, "RUN VERIFY [%#lx, %#lx): %llu mismatches, first %#llx",
			   start, end, (unsigned long long)r.mismatches,
			   (unsigned long long)r.first_mismatch);
	if (ret == -EFAULT && r.exit_reason != SECMMU_EXIT_MEMORY_FAULT)
		return bad(l, "RUN: EFAULT, exit reason %u", r.exit_reason);
	if (exit_gpa)
		*exit_gpa = ret == -EFAULT ? r.exit_gpa : 0;
	return ret;
}

/* A RUN that must exit with a memory fault at @start: 0 if it does. */
static int run_faults(struct life *l, int vcpu, unsigned int op, unsigned long start,
		      unsigned long end, unsigned long stride)
{
	unsigned long gpa;
	int ret = run(l, vcpu, op, start, end, stride, 0, &gpa);

	if (!ret)
		return bad(l, "RUN %u at %#lx succeeded, want a memory fault", op, start);
	if (ret == -EFAULT && gpa == start)
		return 0;
	return ret;
}

static int st_open(struct life *l)
{
	l->fd = open("/dev/secmmu", O_RDWR | O_CLOEXEC);
	return l->fd < 0 ? -errno : 0;
}

static int st_configure(struct life *l)
{
	struct secmmu_config cfg = {
		.flags = l->cfg_flags,
		.format = l->format,
		.nr_roots = NR_ROOTS,
		.dirty_ring_size = l->ring_bytes,
	};

	return secmmu_ioctl(l->fd, SECMMU_CONFIGURE, &cfg);
}

static int st_slot_4k(struct life *l)
{
	return set_slot(l->fd, 0, 0, GPA_4K, SIZE_4K, l->mem);
}

static int st_slot_thp(struct life *l)
{
	return set_slot(l->fd, 1, 0, GPA_THP, SZ_2M, l->thp);
}

static int st_vcpu(struct life *l, int i, unsigned int root)
{
	l->vcpu[i] = vcpu_create(l->fd, root);
	return l->vcpu[i] < 0 ? l->vcpu[i] : 0;
}

static int st_vcpu0(struct life *l)
{
	return st_vcpu(l, 0, 0);
}

static int st_vcpu1(struct life *l)
{
	return st_vcpu(l, 1, NR_ROOTS - 1);
}

/* Both vCPUs write both slots (root 0 and root 31). */
static int st_write(struct life *l)
{
	int ret, i;

	for (i = 0; i < 2; i++) {
		ret = run(l, l->vcpu[i], SECMMU_RUN_WRITE, GPA_4K, GPA_4K + SIZE_4K,
			  PAGE_SZ, l->pattern, NULL);
		if (ret)
			return ret;
		ret = run(l, l->vcpu[i], SECMMU_RUN_WRITE, GPA_THP, GPA_THP + SZ_2M,
			  THP_STRIDE, l->pattern, NULL);
		if (ret)
			return ret;
	}
	return 0;
}

static int st_verify(struct life *l)
{
	int ret, i;

	for (i = 0; i < 2; i++) {
		ret = run(l, l->vcpu[i], SECMMU_RUN_VERIFY, GPA_4K, GPA_4K + SIZE_4K,
			  PAGE_SZ, l->pattern, NULL);
		if (ret)
			return ret;
		ret = run(l, l->vcpu[i], SECMMU_RUN_VERIFY, GPA_THP, GPA_THP + SZ_2M,
			  THP_STRIDE, l->pattern, NULL);
		if (ret)
			return ret;
	}
	if (*(__u64 *)l->mem != (l->pattern ^ GPA_4K) ||
	    *(__u64 *)(l->thp + THP_STRIDE) != (l->pattern ^ (GPA_THP + THP_STRIDE)))
		return bad(l, "userspace does not read what the guest wrote");
	return 0;
}

/* ACCESS: a write across a page boundary, read back. */
static int st_access(struct life *l)
{
	struct secmmu_access a = {
		.gpa = GPA_4K + PAGE_SZ + 100, .len = PAGE_SZ + 200,
		.buf = (unsigned long)acc_buf, .flags = SECMMU_ACCESS_WRITE,
	};
	int ret = secmmu_ioctl(l->vcpu[0], SECMMU_ACCESS, &a);

	if (ret == -EFAULT && a.exit_gpa == -1ULL)
		return bad(l, "ACCESS write: EFAULT on the user buffer");
	if (ret)
		return ret;
	a.flags = 0;
	a.buf = (unsigned long)acc_back;
	ret = secmmu_ioctl(l->vcpu[1], SECMMU_ACCESS, &a);
	if (ret == -EFAULT && a.exit_gpa == -1ULL)
		return bad(l, "ACCESS read: EFAULT on the user buffer");
	if (ret)
		return ret;
	if (memcmp(acc_buf, acc_back, PAGE_SZ + 200) ||
	    memcmp(acc_buf, l->mem + PAGE_SZ + 100, PAGE_SZ + 200))
		return bad(l, "ACCESS: read back differs");
	return 0;
}

/* MADV_DONTNEED: the guest reads zeroes there, the data elsewhere. */
static int st_dontneed(struct life *l)
{
	unsigned long i;
	int ret;

	if (madvise(l->mem + 8 * PAGE_SZ, 8 * PAGE_SZ, MADV_DONTNEED) ||
	    madvise(l->thp + SZ_1M, THP_STRIDE, MADV_DONTNEED))
		return -errno;
	/* Pages 1 and 2 have ACCESS's data. */
	ret = run(l, l->vcpu[0], SECMMU_RUN_VERIFY, GPA_4K + 3 * PAGE_SZ, GPA_4K + 8 * PAGE_SZ,
		  PAGE_SZ, l->pattern, NULL);
	if (ret)
		return ret;
	ret = run(l, l->vcpu[1], SECMMU_RUN_VERIFY, GPA_THP, GPA_THP + SZ_1M,
		  THP_STRIDE, l->pattern, NULL);
	if (ret)
		return ret;
	memset(acc_back, 0xff, PAGE_SZ);
	ret = guest_access(l->vcpu[0], GPA_4K + 8 * PAGE_SZ, acc_back, PAGE_SZ, 0);
	if (ret)
		return ret;
	for (i = 0; i < PAGE_SZ; i++)
		if (acc_back[i])
			return bad(l, "the guest reads %#x at +%lu after MADV_DONTNEED",
				   acc_back[i], i);
	return 0;
}

/*
 * mprotect half the THP read-only: guest writes fault there; read-write
 * again: they land.
 */
static int st_mprotect(struct life *l)
{
	int ret;

	if (mprotect(l->thp, SZ_1M, PROT_READ))
		return -errno;
	ret = run_faults(l, l->vcpu[0], SECMMU_RUN_WRITE, GPA_THP, GPA_THP + SZ_2M, THP_STRIDE);
	if (ret)
		return ret;
	ret = run(l, l->vcpu[0], SECMMU_RUN_READ, GPA_THP, GPA_THP + SZ_2M, THP_STRIDE, 0, NULL);
	if (ret)
		return ret;
	if (mprotect(l->thp, SZ_1M, PROT_READ | PROT_WRITE))
		return -errno;
	l->pattern ^= 0x5a5a;
	return run(l, l->vcpu[0], SECMMU_RUN_WRITE, GPA_THP, GPA_THP + SZ_2M,
		   THP_STRIDE, l->pattern, NULL);
}

/*
 * Dirty logging starts on the THP slot: a bitmap, a new set, write
 * protection, and with eager splitting the split (whose failures leave the
 * rest to split on fault, unseen).
 */
static int st_log_start(struct life *l)
{
	return set_slot(l->fd, 1, SECMMU_MEM_LOG_DIRTY_PAGES, GPA_THP, SZ_2M, l->thp);
}

/* The guest writes the THP slot: each write splits, maps 4K and logs. */
static int st_log_write(struct life *l)
{
	l->pattern ^= 0x7777;
	return run(l, l->vcpu[0], SECMMU_RUN_WRITE, GPA_THP, GPA_THP + SZ_2M,
		   THP_STRIDE, l->pattern, NULL);
}

/* vCPU 0's dirty ring, mapped: its pages are allocated by the call. */
static int st_ring_map(struct life *l)
{
	void *p;

	if (!l->ring_bytes)
		return 0;
	p = mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, l->vcpu[0],
		 SECMMU_DIRTY_LOG_PAGE_OFFSET * PAGE_SZ);
	if (p == MAP_FAILED)
		return -errno;
	l->ring = p;
	return 0;
}

/*
 * The log holds exactly the pages written, and taking it empties it. With
 * a ring, they are in vCPU 0's ring (collected here, no call), and the
 * bitmap stays empty.
 */
static int st_log_get(struct life *l)
{
	struct secmmu_dirty_log log = { .slot = 1, .bitmap = (uintptr_t)log_buf };
	unsigned long i, n = 0;
	int ret = secmmu_ioctl(l->fd, SECMMU_GET_DIRTY_LOG, &log);

	if (ret)
		return ret;
	if (l->ring) {
		long got;

		for (i = 0; i < ARRAY_SIZE(log_buf); i++)
			if (log_buf[i])
				return bad(l, "a vCPU's write in the bitmap, with a ring");
		got = dirty_ring_collect(l->ring, RING_ENTRIES, &l->ring_next, 1,
					 (unsigned long *)log_buf, SZ_2M / PAGE_SZ);
		if (got < 0)
			return bad(l, "ring entry %lu: not what was pushed", l->ring_next);
	}
	for (i = 0; i < SZ_2M / PAGE_SZ; i++)
		if (log_buf[i / 64] >> (i % 64) & 1) {
			if (i % (THP_STRIDE / PAGE_SZ))
				return bad(l, "page %lu logged, never written", i);
			n++;
		}
	if (n != SZ_2M / THP_STRIDE)
		return bad(l, "%lu pages logged, %lu written", n, SZ_2M / THP_STRIDE);
	return 0;
}

/* The ring's reset frees what was collected: the pages written. */
static int st_ring_reset(struct life *l)
{
	long freed;

	if (!l->ring)
		return 0;
	freed = dirty_ring_reset(l->fd);
	if (freed < 0)
		return freed;
	if (freed != SZ_2M / THP_STRIDE)
		return bad(l, "ring reset freed %ld, %lu collected", freed, SZ_2M / THP_STRIDE);
	return 0;
}

/* Logging stops: the slot is zapped, the data stays. */
static int st_log_stop(struct life *l)
{
	int ret = set_slot(l->fd, 1, 0, GPA_THP, SZ_2M, l->thp);

	if (ret)
		return ret;
	return run(l, l->vcpu[1], SECMMU_RUN_VERIFY, GPA_THP, GPA_THP + SZ_2M,
		   THP_STRIDE, l->pattern, NULL);
}

static int st_snapshot(struct life *l)
{
	int ret = snapshot(l->fd, 0, GPA_THP, SZ_2M / PAGE_SZ, snap_buf);

	if (ret)
		return ret;
	return snapshot(l->fd, NR_ROOTS - 1, GPA_4K, NPAGES_4K, snap_buf);
}

/* page_idle: mark the pages idle (clear_young), read them back (test). */
static int st_aging(struct life *l)
{
	__u64 bits;
	int i, ret;

	if (l->bitmap < 0 || l->pagemap < 0) {
		ret = test_young(l->fd, l->mem);
		return ret < 0 ? ret : 0;
	}
	if (pread(l->pagemap, pm_buf, sizeof(pm_buf), (uintptr_t)l->mem / PAGE_SZ * 8) !=
	    sizeof(pm_buf))
		return -errno;
	for (i = 0; i < NPAGES_4K; i++) {
		__u64 pfn = pm_buf[i] & ((1ULL << 55) - 1);

		if (!(pm_buf[i] & (1ULL << 63)))
			continue;
		bits = 1ULL << (pfn % 64);
		if (pwrite(l->bitmap, &bits, 8, pfn / 64 * 8) != 8)
			return -errno;
		if (pread(l->bitmap, &bits, 8, pfn / 64 * 8) != 8)
			return -errno;
	}
	ret = test_young(l->fd, l->thp);
	return ret < 0 ? ret : 0;
}

static int st_delete_4k(struct life *l)
{
	return set_slot(l->fd, 0, 0, 0, 0, NULL);
}

static int st_deleted_4k(struct life *l)
{
	return run_faults(l, l->vcpu[1], SECMMU_RUN_READ, GPA_4K, GPA_4K + SIZE_4K, PAGE_SZ);
}

/* munmap the THP memory under its slot: the guest faults. */
static int st_munmap(struct life *l)
{
	if (l->thp && munmap(l->thp, SZ_2M))
		return -errno;
	l->thp = NULL;
	return run_faults(l, l->vcpu[0], SECMMU_RUN_READ, GPA_THP, GPA_THP + SZ_2M, THP_STRIDE);
}

static int st_delete_thp(struct life *l)
{
	return set_slot(l->fd, 1, 0, 0, 0, NULL);
}

static int st_close(struct life *l)
{
	if (l->ring)
		munmap(l->ring, RING_BYTES);
	l->ring = NULL;
	close(l->vcpu[0]);
	close(l->vcpu[1]);
	close(l->fd);
	l->vcpu[0] = -1;
	l->vcpu[1] = -1;
	l->fd = -1;
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(struct life *l);
} steps[] = {
	{ "open", st_open },
	{ "configure", st_configure },
	{ "slot_4k", st_slot_4k },
	{ "slot_thp", st_slot_thp },
	{ "vcpu0", st_vcpu0 },
	{ "vcpu31", st_vcpu1 },
	{ "ring_map", st_ring_map },
	{ "write", st_write },
	{ "verify", st_verify },
	{ "access", st_access },
	{ "dontneed", st_dontneed },
	{ "mprotect", st_mprotect },
	{ "log_start", st_log_start },
	{ "log_write", st_log_write },
	{ "log_get", st_log_get },
	{ "ring_reset", st_ring_reset },
	{ "log_stop", st_log_stop },
	{ "snapshot", st_snapshot },
	{ "aging", st_aging },
	{ "delete_4k", st_delete_4k },
	{ "deleted_4k", st_deleted_4k },
	{ "munmap", st_munmap },
	{ "delete_thp", st_delete_thp },
	{ "close", st_close },
};

/* Memory for one lifecycle: 4K pages and a THP, populated (not armed). */
static int life_prepare(struct life *l)
{
	unsigned long i;

	l->fd = -1;
	l->vcpu[0] = -1;
	l->vcpu[1] = -1;
	l->ring = NULL;
	l->ring_next = 0;
	l->mem = mmap(NULL, SIZE_4K, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	l->raw = mmap(NULL, 2 * SZ_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (l->mem == MAP_FAILED || l->raw == MAP_FAILED)
		return -1;
	l->thp = (char *)(((unsigned long)l->raw + SZ_2M - 1) & ~(SZ_2M - 1));
	madvise(l->thp, SZ_2M, MADV_HUGEPAGE);
	for (i = 0; i < SIZE_4K; i += PAGE_SZ)
		l->mem[i] = 1;
	for (i = 0; i < SZ_2M; i += PAGE_SZ)
		l->thp[i] = 1;
	for (i = 0; i < sizeof(acc_buf); i++)
		acc_buf[i] = (char)(i * 7 + l->pattern);
	memset(acc_back, 0, sizeof(acc_back));
	memset(snap_buf, 0, sizeof(snap_buf));
	memset(log_buf, 0, sizeof(log_buf));
	memset(pm_buf, 0, sizeof(pm_buf));
	return 0;
}

static void life_cleanup(struct life *l)
{
	if (l->ring)
		munmap(l->ring, RING_BYTES);
	if (l->vcpu[0] >= 0)
		close(l->vcpu[0]);
	if (l->vcpu[1] >= 0)
		close(l->vcpu[1]);
	if (l->fd >= 0)
		close(l->fd);
	munmap(l->mem, SIZE_4K);
	munmap(l->raw, 2 * SZ_2M);
}

static int nth_fd = -1;

static int nth_set(unsigned int n)
{
	char buf[16];
	int len = snprintf(buf, sizeof(buf), "%u", n);

	return pwrite(nth_fd, buf, len, 0) == len ? 0 : -errno;
}

/* What is left of the fail-nth count: 0 once it fired. */
static long nth_get(void)
{
	char buf[16] = {};

	if (pread(nth_fd, buf, sizeof(buf) - 1, 0) < 0)
		return -errno;
	return atol(buf);
}

/* module_table_pages, as a fresh space sees it; waits for it to reach @want. */
static long table_pages(unsigned int format, long want)
{
	long v = -1;
	int tries, fd;

	for (tries = 0; tries < 100; tries++) {
		fd = space_create(format, 1, 0);
		if (fd < 0)
			return fd;
		v = get_stats(fd).module_table_pages;
		close(fd);
		if (want < 0 || v == want)
			break;
		usleep(10000);
	}
	return v;
}

/* The debugfs knobs and what they were. */
static const char * const knobs[][2] = {
	{ "/sys/kernel/debug/failslab/ignore-gfp-wait", "N" },
	{ "/sys/kernel/debug/fail_page_alloc/ignore-gfp-wait", "N" },
	{ "/sys/kernel/debug/fail_page_alloc/ignore-gfp-highmem", "N" },
	{ "/sys/kernel/debug/fail_page_alloc/min-order", "0" },
	{ "/sys/kernel/debug/failslab/verbose", "0" },
	{ "/sys/kernel/debug/fail_page_alloc/verbose", "0" },
};

#define NR_KNOBS	ARRAY_SIZE(knobs)

FIXTURE(fail_nth) {
	char saved[NR_KNOBS][32];
	int set;
};

FIXTURE_VARIANT(fail_nth) {
	unsigned int format, cfg_flags, ring_bytes;
};

FIXTURE_VARIANT_ADD(fail_nth, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(fail_nth, arm64) { .format = SECMMU_FMT_ARM64_S2 };
/* log_start splits the THP slot eagerly: its allocations fail too. */
FIXTURE_VARIANT_ADD(fail_nth, x86_eager) {
	.format = SECMMU_FMT_X86_EPT4,
	.cfg_flags = SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT,
};

FIXTURE_VARIANT_ADD(fail_nth, arm64_eager) {
	.format = SECMMU_FMT_ARM64_S2,
	.cfg_flags = SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT,
};

/* vCPUs with dirty rings: their allocation, mapping and reset fail too. */
FIXTURE_VARIANT_ADD(fail_nth, x86_ring) {
	.format = SECMMU_FMT_X86_EPT4,
	.ring_bytes = RING_BYTES,
};

FIXTURE_VARIANT_ADD(fail_nth, arm64_ring) {
	.format = SECMMU_FMT_ARM64_S2,
	.cfg_flags = SECMMU_CFG_DIRTY_LOG_DIRTY_BIT,
	.ring_bytes = RING_BYTES,
};

FIXTURE_SETUP(fail_nth)
{
	char path[64];
	unsigned int i;

	self->set = 0;
	snprintf(path, sizeof(path), "/proc/self/task/%ld/fail-nth", syscall(SYS_gettid));
	if (access(path, R_OK | W_OK))
		SKIP(return, "no %s (CONFIG_FAULT_INJECTION)", path);
	for (i = 0; i < NR_KNOBS; i++)
		if (stress_read_file(knobs[i][0], self->saved[i], sizeof(self->saved[i])))
			SKIP(return, "no %s (CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC, debugfs)",
			     knobs[i][0]);
	for (i = 0; i < NR_KNOBS; i++)
		ASSERT_EQ(0, stress_write_file(knobs[i][0], knobs[i][1]));
	self->set = 1;
	nth_fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT_GE(nth_fd, 0);
}

FIXTURE_TEARDOWN(fail_nth)
{
	unsigned int i;

	if (nth_fd >= 0)
		nth_set(0);
	for (i = 0; self->set && i < NR_KNOBS; i++)
		stress_write_file(knobs[i][0], self->saved[i]);
}

static int clean_errno(int ret)
{
	return ret == -ENOMEM || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY ||
	       ret == -EFAULT;
}

/* SECMMU_FAIL_NTH_STEP, or 0. */
static unsigned long env_step(void)
{
	const char *s = getenv("SECMMU_FAIL_NTH_STEP");

	return s ? strtoul(s, NULL, 0) : 0;
}

TEST_F_TIMEOUT(fail_nth, lifecycle, 3 * BUDGET_S)
{
	unsigned long step = env_step(), failed = 0, silent = 0, points;
	unsigned int nth, i;
	long base, now, left = 0;
	struct life l = {
		.format = variant->format, .cfg_flags = variant->cfg_flags,
		.ring_bytes = variant->ring_bytes,
	};
	__u64 t0, t1, deadline = -1ULL;
	int done = 0;

	base = table_pages(variant->format, -1);
	ASSERT_GE(base, 0) TH_LOG("space: %s", strerror(-base));
	l.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	l.bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR | O_CLOEXEC);

	/*
	 * Count the injection points of a lifecycle, and time one: the
	 * second, the first has one-time costs.
	 */
	for (nth = 0; nth < 2; nth++) {
		l.pattern = 0x77;
		ASSERT_EQ(0, life_prepare(&l));
		t0 = stress_now_ns();
		ASSERT_EQ(0, nth_set(1000000));
		for (i = 0; i < ARRAY_SIZE(steps); i++) {
			int ret = steps[i].fn(&l);

			ASSERT_EQ(0, ret) TH_LOG("step %s, nothing injected: %s", steps[i].name,
						 ret == BAD ? l.why : strerror(-ret));
		}
		left = nth_get();
		ASSERT_EQ(0, nth_set(0));
		life_cleanup(&l);
		ASSERT_EQ(base, table_pages(variant->format, base));
		t1 = stress_now_ns();
	}
	points = 1000000 - left;
	if (!step) {
		step = (points * (t1 - t0) + BUDGET_S * 1000000000ULL - 1) /
		       (BUDGET_S * 1000000000ULL);
		if (step < test_scale())
			step = test_scale();
		deadline = t1 + BUDGET_S * 1000000000ULL;
	}
	TH_LOG("%s: %lu injection points, %llu ms a lifecycle: every %lu-th is injected",
	       format_name(variant->format), points,
	       (unsigned long long)((t1 - t0) / 1000000), step);
	t0 = t1;

	for (nth = 1; !done; nth += step) {
		int fired_at = -1;

		l.pattern = 0x1000 * nth + 7;
		ASSERT_EQ(0, life_prepare(&l));
		ASSERT_EQ(0, nth_set(nth));
		for (i = 0; i < ARRAY_SIZE(steps); i++) {
			int ret = steps[i].fn(&l), retry;

			left = nth_get();
			if (!ret) {
				if (!left && fired_at < 0) {
					fired_at = i;
					silent++;
				}
				continue;
			}
			ASSERT_NE(BAD, ret)
				TH_LOG("nth %u, step %s: %s", nth, steps[i].name, l.why);
			ASSERT_TRUE(clean_errno(ret))
				TH_LOG("nth %u, step %s: %s", nth, steps[i].name, strerror(-ret));
			ASSERT_EQ(0, left)
				TH_LOG("nth %u, step %s: %s, but no failure was injected",
				       nth, steps[i].name, strerror(-ret));
			ASSERT_LT(fired_at, 0)
				TH_LOG("nth %u, step %s: %s after a failure injected in step %s",
				       nth, steps[i].name, strerror(-ret), steps[fired_at].name);
			fired_at = i;
			failed++;
			retry = steps[i].fn(&l);
			ASSERT_EQ(0, retry)
				TH_LOG("nth %u, step %s: %s, then on retry: %s", nth,
				       steps[i].name, strerror(-ret),
				       retry == BAD ? l.why : strerror(-retry));
		}
		ASSERT_EQ(0, nth_set(0));
		life_cleanup(&l);
		now = table_pages(variant->format, base);
		ASSERT_EQ(base, now)
			TH_LOG("nth %u (injected in %s): module_table_pages %ld, was %ld",
			       nth, fired_at < 0 ? "no step" : steps[fired_at].name, now, base);
		if (left > 0)
			done = 1;
		else if (stress_now_ns() > deadline)
			break;
	}
	TH_LOG("%s: %lu lifecycles in %llu s", format_name(variant->format),
	       (nth - 1) / step, (unsigned long long)((stress_now_ns() - t0) / 1000000000ULL));
	TH_LOG("%lu injected failures failed a step, %lu were absorbed%s", failed, silent,
	       done ? "" : "; the time budget ran out before the end of the sweep");
	EXPECT_EQ(base, table_pages(variant->format, base));
}

/* A sweep of SECMMU_FAIL_NTH_STEP has no time budget: nor a harness timeout. */
static void __attribute__((constructor(KSELFTEST_PRIO_XFAIL + 1))) fail_nth_timeout(void)
{
	if (env_step() && _fail_nth_lifecycle_object)
		_fail_nth_lifecycle_object->timeout = 24 * 3600;
}

TEST_HARNESS_MAIN
