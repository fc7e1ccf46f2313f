// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu kernel-mapped guest page cache selftests (KVM's gfn_to_pfn_cache):
 * a vCPU's run page, which the kernel writes through such a cache every
 * time a RUN or ACCESS returns. Every test runs once per page-table format
 * (fixture variants "x86" and "arm64").
 *
 * The "gpc" fixture: a space with one root and one vCPU, and one memslot at
 * GPA_BASE backed by a shared memfd mapping of NPAGES, so that a test can
 * map the same pages a second time and see what the kernel wrote there
 * after the first mapping changed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define GPA_BASE	0x40000000UL
#define NPAGES		16UL
#define SIZE		(NPAGES * PAGE_SZ)
/* The run page: page 3 of the slot, 16 bytes in. */
#define RUN_OFF		(3 * PAGE_SZ + 16)
#define RUN_GPA		(GPA_BASE + RUN_OFF)

static int set_run_page(int vcpu, unsigned long gpa, unsigned int flags)
{
	struct secmmu_run_page_setup s = { .gpa = gpa, .flags = flags };

	return secmmu_ioctl(vcpu, SECMMU_SET_RUN_PAGE, &s);
}

/* What the kernel last wrote at offset @off of @base. */
static struct secmmu_run_page run_page_at(void *base, unsigned long off)
{
	struct secmmu_run_page p;

	memcpy(&p, (char *)base + off, sizeof(p));
	return p;
}

FIXTURE(gpc) {
	int fd;
	int vcpu;
	int memfd;
	char *mem;
};

FIXTURE_VARIANT(gpc) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(gpc, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(gpc, arm64) { .format = SECMMU_FMT_ARM64_S2 };

static char *map_memfd(int memfd, void *at)
{
	return mmap(at, SIZE, PROT_READ | PROT_WRITE,
		    MAP_SHARED | (at ? MAP_FIXED : 0), memfd, 0);
}

FIXTURE_SETUP(gpc)
{
	self->fd = space_create(variant->format, 1, 0);
	ASSERT_GE(self->fd, 0) TH_LOG("space: %s", strerror(-self->fd));
	self->memfd = memfd_create("secmmu-gpc", 0);
	ASSERT_GE(self->memfd, 0);
	ASSERT_EQ(0, ftruncate(self->memfd, SIZE));
	self->mem = map_memfd(self->memfd, NULL);
	ASSERT_NE(MAP_FAILED, self->mem);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, SIZE, self->mem));
	self->vcpu = vcpu_create(self->fd, 0);
	ASSERT_GE(self->vcpu, 0);
}

FIXTURE_TEARDOWN(gpc)
{
	close(self->vcpu);
	close(self->fd);
	munmap(self->mem, SIZE);
	close(self->memfd);
}

/* Every malformed setup is refused, and changes nothing. */
TEST_F(gpc, setup_validation)
{
	struct secmmu_run_page_setup s = { .gpa = RUN_GPA,
					   .flags = SECMMU_RUN_PAGE_ENABLE };
	unsigned long last = GPA_BASE + PAGE_SZ - sizeof(struct secmmu_run_page);

	EXPECT_EQ(-EINVAL, set_run_page(self->vcpu, RUN_GPA + 4, SECMMU_RUN_PAGE_ENABLE));
	EXPECT_EQ(-EINVAL, set_run_page(self->vcpu, last + 8, SECMMU_RUN_PAGE_ENABLE));
	EXPECT_EQ(-EINVAL, set_run_page(self->vcpu, RUN_GPA, 2));
	EXPECT_EQ(-EINVAL, set_run_page(self->vcpu, RUN_GPA, 0));
	EXPECT_EQ(-EINVAL, set_run_page(self->vcpu, 1UL << 60, SECMMU_RUN_PAGE_ENABLE));
	s.pad = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(self->vcpu, SECMMU_SET_RUN_PAGE, &s));
	s.pad = 0;
	s.reserved[1] = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(self->vcpu, SECMMU_SET_RUN_PAGE, &s));
	/* No memslot there. */
	EXPECT_EQ(-EFAULT, set_run_page(self->vcpu, GPA_BASE + SIZE, SECMMU_RUN_PAGE_ENABLE));
	/* The last place that fits works; so does turning it off. */
	EXPECT_EQ(0, set_run_page(self->vcpu, last, SECMMU_RUN_PAGE_ENABLE));
	EXPECT_EQ(0, set_run_page(self->vcpu, 0, 0));
	/* On the space fd it is not an ioctl. */
	EXPECT_EQ(-ENOTTY, secmmu_ioctl(self->fd, SECMMU_SET_RUN_PAGE, &s));
	/* Nothing was written: the run page was never on across an exit. */
	EXPECT_EQ(0, guest_access(self->vcpu, GPA_BASE, self->mem, 8, 0));
	EXPECT_EQ(0, get_gpc_stats(self->fd).run_page_updates);
}

/*
 * Each exit writes the run page; userspace and the vCPU read the same
 * values at the guest address. A read-only slot cannot hold it.
 */
TEST_F(gpc, run_page_basic)
{
	struct secmmu_run run;
	struct secmmu_run_page p, g;
	struct secmmu_gpc_stats st;

	ASSERT_EQ(0, set_run_page(self->vcpu, RUN_GPA, SECMMU_RUN_PAGE_ENABLE));
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_READ, GPA_BASE + 8 * PAGE_SZ,
			       GPA_BASE + 12 * PAGE_SZ, 64, 0, &run));
	p = run_page_at(self->mem, RUN_OFF);
	EXPECT_EQ(1, p.exits);
	EXPECT_EQ(run.accesses, p.accesses);
	EXPECT_EQ(4 * PAGE_SZ / 64, p.accesses);
	EXPECT_EQ(0, p.error);
	/* A RUN that fails says why. */
	EXPECT_EQ(-EFAULT, run_range(self->vcpu, SECMMU_RUN_READ, GPA_BASE + SIZE,
				     GPA_BASE + SIZE + PAGE_SZ, 64, 0, &run));
	p = run_page_at(self->mem, RUN_OFF);
	EXPECT_EQ(2, p.exits);
	EXPECT_EQ(SECMMU_EXIT_MEMORY_FAULT, p.exit_reason);
	EXPECT_EQ(-EFAULT, p.error);
	/* The guest sees what the kernel wrote, as of the exit before. */
	ASSERT_EQ(0, guest_access(self->vcpu, RUN_GPA, &g, sizeof(g), 0));
	EXPECT_EQ(2, g.exits);
	EXPECT_EQ(3, run_page_at(self->mem, RUN_OFF).exits);
	st = get_gpc_stats(self->fd);
	EXPECT_EQ(3, st.run_page_updates);
	EXPECT_EQ(0, st.run_page_errors);
	EXPECT_GE(st.refreshes, 1);
	EXPECT_EQ(0, st.retries_unrelated);
	/* Off: no more writes. */
	ASSERT_EQ(0, set_run_page(self->vcpu, 0, 0));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &g, 8, 0));
	EXPECT_EQ(3, run_page_at(self->mem, RUN_OFF).exits);
	/* A read-only slot cannot hold a page the kernel writes. */
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, 0, self->mem));
	ASSERT_EQ(0, set_slot(self->fd, 0, SECMMU_MEM_READONLY, GPA_BASE, SIZE, self->mem));
	EXPECT_EQ(-EFAULT, set_run_page(self->vcpu, RUN_GPA, SECMMU_RUN_PAGE_ENABLE));
}

/*
 * The cache follows every change of the primary mapping under it: after
 * the memfd is mapped anew at the same address, after the page is punched
 * out, made read-only and writable again, and after its memslot is deleted
 * and created again, the next exit writes the page the primary maps there
 * now, and never the page it mapped before.
 */
TEST_F(gpc, coherence)
{
	int memfd2 = memfd_create("secmmu-gpc-2", 0);
	char *old, *mem2;
	struct secmmu_gpc_stats st;
	unsigned long exits;

	ASSERT_GE(memfd2, 0);
	ASSERT_EQ(0, ftruncate(memfd2, SIZE));
	/* A second view of the first memfd, to watch its pages. */
	old = map_memfd(self->memfd, NULL);
	ASSERT_NE(MAP_FAILED, old);
	ASSERT_EQ(0, set_run_page(self->vcpu, RUN_GPA, SECMMU_RUN_PAGE_ENABLE));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(1, run_page_at(old, RUN_OFF).exits);

	/* Another file at the same address: writes go there, not to the old. */
	mem2 = map_memfd(memfd2, self->mem);
	ASSERT_EQ(self->mem, mem2);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(2, run_page_at(self->mem, RUN_OFF).exits);
	EXPECT_EQ(1, run_page_at(old, RUN_OFF).exits);
	st = get_gpc_stats(self->fd);
	EXPECT_GE(st.invalidations, 1);

	/* Punched out of the file: the next exit writes the new page. */
	ASSERT_EQ(0, fallocate(memfd2, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       3 * PAGE_SZ, PAGE_SZ));
	EXPECT_EQ(0, run_page_at(self->mem, RUN_OFF).exits);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(3, run_page_at(self->mem, RUN_OFF).exits);

	/* Read-only: the update fails (the RUN does not); writable again, it works. */
	ASSERT_EQ(0, mprotect(self->mem, SIZE, PROT_READ));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(3, run_page_at(self->mem, RUN_OFF).exits);
	EXPECT_EQ(1, get_gpc_stats(self->fd).run_page_errors);
	ASSERT_EQ(0, mprotect(self->mem, SIZE, PROT_READ | PROT_WRITE));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(5, run_page_at(self->mem, RUN_OFF).exits);

	/* Slot gone: no update; back, at another host address: there. */
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, 0, self->mem));
	EXPECT_EQ(-EFAULT, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(5, run_page_at(self->mem, RUN_OFF).exits);
	EXPECT_EQ(2, get_gpc_stats(self->fd).run_page_errors);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, SIZE, old));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &exits, 8, 0));
	EXPECT_EQ(7, run_page_at(old, RUN_OFF).exits);
	EXPECT_EQ(5, run_page_at(self->mem, RUN_OFF).exits);
	st = get_gpc_stats(self->fd);
	EXPECT_EQ(0, st.retries_unrelated);

	munmap(old, SIZE);
	close(memfd2);
}

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY), ok;

	if (fd < 0)
		return -1;
	ok = write(fd, val, strlen(val)) == (ssize_t)strlen(val);
	close(fd);
	return ok ? 0 : -1;
}

#define MPOL_MF_MOVE	2	/* numaif.h */

/* The pfn of the page at @p (the tests run as root), or 0. */
static unsigned long page_pfn(void *p)
{
	unsigned long e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return 0;
	if (pread(fd, &e, 8, (unsigned long)p / PAGE_SZ * 8) != 8)
		e = 0;
	close(fd);
	return (e >> 63) ? e & ((1UL << 55) - 1) : 0;
}

/* The NUMA node of the page at @p, or -1. */
static int page_node(void *p)
{
	int status = -1;

	if (syscall(__NR_move_pages, 0, 1, &p, NULL, &status, 0))
		return -1;
	return status;
}

/* Makes KSM scan fast; false if this kernel has no KSM. */
static bool ksm_start(void)
{
	if (write_file("/sys/kernel/mm/ksm/run", "1"))
		return false;
	write_file("/sys/kernel/mm/ksm/sleep_millisecs", "0");
	write_file("/sys/kernel/mm/ksm/pages_to_scan", "10000");
	return true;
}

/*
 * Marks @mem (@size bytes) mergeable and waits up to 30 s for KSM to merge
 * @page with its identical @twin: whether it did.
 */
static bool ksm_merge(char *mem, size_t size, char *page, char *twin)
{
	int tries;

	if (madvise(mem, size, MADV_MERGEABLE))
		return false;
	for (tries = 0; tries < 300; tries++) {
		if (page_pfn(page) && page_pfn(page) == page_pfn(twin))
			return true;
		usleep(100000);
	}
	return false;
}

/*
 * The run page in private anonymous memory, through the changes the
 * primary makes to such a page: MADV_DONTNEED frees it, move_pages()
 * migrates it to the other node, KSM merges it with an identical page. After
 * each, the next exit writes the page the primary maps now: userspace sees
 * the new count there, and the page the cache mapped before (freed, the
 * old copy, or the KSM page shared with another address) never changes.
 * The auditor finds the space coherent at the end.
 */
TEST_F_TIMEOUT(gpc, coherence_private, 120)
{
	char *priv = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long gpa = GPA_BASE + SIZE + RUN_OFF;
	char *page = priv + 3 * PAGE_SZ, *twin = priv + 4 * PAGE_SZ;
	struct secmmu_audit a;
	int node, tries;
	char b;

	ASSERT_NE(MAP_FAILED, priv);
	/* Every page different, so that KSM merges only the twins below. */
	for (tries = 0; tries < (int)NPAGES; tries++)
		memset(priv + tries * PAGE_SZ, 0x10 + tries, PAGE_SZ);
	memset(page, 0, PAGE_SZ);
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, SIZE, priv));
	ASSERT_EQ(0, set_run_page(self->vcpu, gpa, SECMMU_RUN_PAGE_ENABLE));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
	EXPECT_EQ(1, run_page_at(priv, RUN_OFF).exits);

	/* Freed: the next exit writes a new page, not the freed one. */
	ASSERT_EQ(0, madvise(page, PAGE_SZ, MADV_DONTNEED));
	EXPECT_EQ(0, run_page_at(priv, RUN_OFF).exits);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
	EXPECT_EQ(2, run_page_at(priv, RUN_OFF).exits);

	/* Migrated to the other node (with two). */
	node = page_node(page);
	if (node >= 0) {
		int to = !node, status = -1;
		void *pg = page;

		if (access("/sys/devices/system/node/node1", F_OK)) {
			TH_LOG("one NUMA node: no migration");
			ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
		} else {
			/* Migrates: the valid cache holds no pin on the page. */
			ASSERT_EQ(0, syscall(__NR_move_pages, 0, 1, &pg, &to, &status,
					     MPOL_MF_MOVE));
			EXPECT_EQ(to, status);
			ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
			EXPECT_EQ(3, run_page_at(priv, RUN_OFF).exits);
			EXPECT_EQ(to, page_node(page));
		}
	}

	/*
	 * Merged by KSM with an identical page: the exit after writes a
	 * private copy again, and the twin (sharing the KSM page) keeps its
	 * content.
	 */
	if (ksm_start()) {
		unsigned long inval = get_gpc_stats(self->fd).invalidations;

		memcpy(twin, page, PAGE_SZ);
		EXPECT_TRUE(ksm_merge(priv, SIZE, page, twin))
			TH_LOG("KSM did not merge the twins");
		EXPECT_GT(get_gpc_stats(self->fd).invalidations, inval);
		ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
		EXPECT_EQ(4, run_page_at(priv, RUN_OFF).exits);
		EXPECT_EQ(3, run_page_at(twin, 16).exits)
			TH_LOG("a write through the cache landed in the KSM page");
		EXPECT_NE(page_pfn(page), page_pfn(twin));
		madvise(priv, SIZE, MADV_UNMERGEABLE);
		write_file("/sys/kernel/mm/ksm/run", "2");
	}
	EXPECT_EQ(0, get_gpc_stats(self->fd).retries_unrelated);
	if (!audit_space(self->fd, &a))
		EXPECT_EQ(0, a.mismatches);
	ASSERT_EQ(0, set_run_page(self->vcpu, 0, 0));
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, 0, priv));
	munmap(priv, SIZE);
}

/*
 * What the kernel writes through the cache of a MAP_SHARED file on a
 * writeback filesystem (ext4 on a loop device) reaches the disk: after
 * writeback cleaned the page (and write-protected it, invalidating the
 * cache), the next refresh dirties it again; the last count survives
 * msync, a cache drop and a remount.
 */
TEST_F_TIMEOUT(gpc, run_page_writeback, 120)
{
	const char *img = "/tmp/secmmu-gpc.img", *mnt = "/tmp/secmmu-gpc-mnt";
	char loopdev[64] = {};
	char *mem, b;
	int ffd, i;

	if (scratch_ext4(img, mnt, loopdev, sizeof(loopdev)))
		SKIP(return, "cannot make an ext4 filesystem on a loop device");
	ffd = open("/tmp/secmmu-gpc-mnt/run", O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT_GE(ffd, 0);
	ASSERT_EQ(0, ftruncate(ffd, SIZE));
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
	ASSERT_NE(MAP_FAILED, mem);
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, SIZE, mem));
	ASSERT_EQ(0, set_run_page(self->vcpu, GPA_BASE + SIZE + RUN_OFF,
				  SECMMU_RUN_PAGE_ENABLE));
	for (i = 1; i <= 4; i++) {
		ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
		EXPECT_EQ(i, run_page_at(mem, RUN_OFF).exits);
		ASSERT_EQ(0, msync(mem, SIZE, MS_SYNC));
	}
	ASSERT_EQ(0, set_run_page(self->vcpu, 0, 0));
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, 0, mem));
	munmap(mem, SIZE);
	close(ffd);

	ASSERT_EQ(0, umount(mnt));
	ASSERT_EQ(0, write_file("/proc/sys/vm/drop_caches", "3"));
	ASSERT_EQ(0, mount(loopdev, mnt, "ext4", 0, NULL));
	ffd = open("/tmp/secmmu-gpc-mnt/run", O_RDONLY);
	ASSERT_GE(ffd, 0);
	mem = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, ffd, 0);
	ASSERT_NE(MAP_FAILED, mem);
	EXPECT_EQ(4, run_page_at(mem, RUN_OFF).exits);
	munmap(mem, SIZE);
	close(ffd);
	scratch_ext4_remove(img, mnt, loopdev);
}

/*
 * A refresh whose own get_user_pages invalidates the page (breaking
 * copy-on-write of the zero page a read mapped) starts over once, and
 * completes.
 */
TEST_F(gpc, self_invalidation)
{
	char *priv = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char buf;
	struct secmmu_gpc_stats before, after;

	ASSERT_NE(MAP_FAILED, priv);
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, SIZE, priv));
	/* Maps the shared zero page, read-only. */
	ASSERT_EQ(0, madvise(priv + 3 * PAGE_SZ, PAGE_SZ, MADV_POPULATE_READ));
	before = get_gpc_stats(self->fd);
	ASSERT_EQ(0, set_run_page(self->vcpu, GPA_BASE + SIZE + RUN_OFF,
				  SECMMU_RUN_PAGE_ENABLE));
	after = get_gpc_stats(self->fd);
	EXPECT_EQ(before.refreshes + 1, after.refreshes);
	EXPECT_GE(after.retries_overlap - before.retries_overlap, 1);
	EXPECT_LE(after.retries_overlap - before.retries_overlap, 2);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &buf, 1, 0));
	EXPECT_EQ(1, run_page_at(priv, RUN_OFF).exits);
	ASSERT_EQ(0, set_run_page(self->vcpu, 0, 0));
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, 0, priv));
	munmap(priv, SIZE);
}

/*
 * A storm of invalidations of other memory never makes a refresh start
 * over: 10000 refreshes (each SECMMU_SET_RUN_PAGE refreshes) while another
 * thread populates a disjoint 2 MiB range and DONTNEEDs it, in a loop.
 */
TEST_F(gpc, unrelated_storm)
{
	struct dontneed_storm s = { .pages = 512 };
	struct secmmu_gpc_stats before, after;
	unsigned long n = 10000 / test_scale(), i;
	pthread_t t;

	s.mem = mmap(NULL, SZ_2M, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, s.mem);
	before = get_gpc_stats(self->fd);
	ASSERT_EQ(0, pthread_create(&t, NULL, dontneed_storm, &s));
	/* At least n refreshes, and for as long as the storm made 100 rounds. */
	for (i = 0; i < n || (s.rounds < 100 && i < 100 * n); i++)
		if (set_run_page(self->vcpu, RUN_GPA, SECMMU_RUN_PAGE_ENABLE))
			break;
	atomic_store(&s.stop, 1);
	pthread_join(t, NULL);
	after = get_gpc_stats(self->fd);
	EXPECT_GE(i, n);
	EXPECT_GE(s.rounds, 100);
	EXPECT_EQ(i, after.refreshes - before.refreshes);
	EXPECT_EQ(0, after.retries_unrelated - before.retries_unrelated);
	EXPECT_EQ(0, after.retries_overlap - before.retries_overlap);
	TH_LOG("%s: %lu refreshes, %llu retries, %lu invalidation rounds elsewhere",
	       format_name(variant->format), i,
	       after.retries_overlap - before.retries_overlap, s.rounds);
	munmap(s.mem, SZ_2M);
}

static int set_clock_page(int fd, unsigned long gpa, unsigned long period_ns,
			  unsigned int flags)
{
	struct secmmu_clock_setup s = {
		.gpa = gpa, .period_ns = period_ns, .flags = flags,
	};

	return secmmu_ioctl(fd, SECMMU_SET_CLOCK_PAGE, &s);
}

static struct secmmu_clock_page clock_at(void *base, unsigned long off)
{
	struct secmmu_clock_page p;

	memcpy(&p, (char *)base + off, sizeof(p));
	return p;
}

/* The clock page: page 5 of the slot. */
/*
 * Makes vCPU exits, a millisecond apart, until the clock page at @base +
 * @off shows more than @ticks ticks: each exit refreshes the clock's cache
 * if the timer found it invalid, and under TCG the timer may fire only
 * every few milliseconds. False after five seconds.
 */
static bool clock_advances(int vcpu, unsigned long gpa, void *base, unsigned long off,
			   unsigned long long ticks)
{
	char c;
	int i;

	for (i = 0; i < 5000; i++) {
		if (clock_at(base, off).ticks > ticks)
			return true;
		if (guest_access(vcpu, gpa, &c, 1, 0))
			return false;
		usleep(1000);
	}
	return false;
}

#define CLOCK_OFF	(5 * PAGE_SZ + 64)
#define CLOCK_GPA	(GPA_BASE + CLOCK_OFF)
#define PERIOD_NS	20000UL

/* Every malformed clock setup is refused. */
TEST_F(gpc, clock_validation)
{
	struct secmmu_clock_setup s = { .gpa = CLOCK_GPA, .period_ns = PERIOD_NS,
					.flags = SECMMU_CLOCK_PAGE_ENABLE };

	EXPECT_EQ(-EINVAL, set_clock_page(self->fd, CLOCK_GPA + 4, PERIOD_NS,
					  SECMMU_CLOCK_PAGE_ENABLE));
	EXPECT_EQ(-EINVAL, set_clock_page(self->fd, GPA_BASE + PAGE_SZ - 8, PERIOD_NS,
					  SECMMU_CLOCK_PAGE_ENABLE));
	EXPECT_EQ(-EINVAL, set_clock_page(self->fd, CLOCK_GPA, SECMMU_CLOCK_PERIOD_MIN - 1,
					  SECMMU_CLOCK_PAGE_ENABLE));
	EXPECT_EQ(-EINVAL, set_clock_page(self->fd, CLOCK_GPA, SECMMU_CLOCK_PERIOD_MAX + 1,
					  SECMMU_CLOCK_PAGE_ENABLE));
	EXPECT_EQ(-EINVAL, set_clock_page(self->fd, CLOCK_GPA, PERIOD_NS, 4));
	EXPECT_EQ(-EINVAL, set_clock_page(self->fd, CLOCK_GPA, 0, 0));
	s.reserved[0] = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(self->fd, SECMMU_SET_CLOCK_PAGE, &s));
	EXPECT_EQ(-EFAULT, set_clock_page(self->fd, GPA_BASE + SIZE, PERIOD_NS,
					  SECMMU_CLOCK_PAGE_ENABLE));
	EXPECT_EQ(-ENOTTY, secmmu_ioctl(self->vcpu, SECMMU_SET_CLOCK_PAGE, &s));
	EXPECT_EQ(0, set_clock_page(self->fd, 0, 0, 0));
	EXPECT_EQ(0, get_gpc_stats(self->fd).clock_updates);
}

/*
 * The timer writes the clock page from hard IRQ context. When the page
 * changes under it (the memfd is mapped anew at the same address), it
 * misses, writes nothing, and the next vCPU exit refreshes the cache: from
 * then on the new page ticks and the old one never changes again.
 */
TEST_F(gpc, clock_follows_remap)
{
	int memfd2 = memfd_create("secmmu-gpc-clock", 0);
	struct secmmu_clock_page a, b;
	struct secmmu_gpc_stats st;
	char *old, c;

	ASSERT_GE(memfd2, 0);
	ASSERT_EQ(0, ftruncate(memfd2, SIZE));
	old = map_memfd(self->memfd, NULL);
	ASSERT_NE(MAP_FAILED, old);
	ASSERT_EQ(0, set_clock_page(self->fd, CLOCK_GPA, PERIOD_NS, SECMMU_CLOCK_PAGE_ENABLE));
	usleep(20000);
	a = clock_at(old, CLOCK_OFF);
	usleep(20000);
	b = clock_at(old, CLOCK_OFF);
	EXPECT_GT(a.ticks, 0);
	EXPECT_GT(b.ticks, a.ticks);
	EXPECT_GT(b.time_ns, a.time_ns);

	/* Remapped: the timer misses until a vCPU exit refreshes. */
	ASSERT_EQ(self->mem, map_memfd(memfd2, self->mem));
	usleep(20000);
	st = get_gpc_stats(self->fd);
	EXPECT_GT(st.clock_misses, 0);
	EXPECT_EQ(0, clock_at(self->mem, CLOCK_OFF).ticks);
	a = clock_at(old, CLOCK_OFF);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &c, 1, 0));
	usleep(20000);
	b = clock_at(old, CLOCK_OFF);
	EXPECT_EQ(a.ticks, b.ticks) TH_LOG("the timer wrote a page the primary no longer maps");
	EXPECT_GT(clock_at(self->mem, CLOCK_OFF).ticks, a.ticks);

	ASSERT_EQ(0, set_clock_page(self->fd, 0, 0, 0));
	a = clock_at(self->mem, CLOCK_OFF);
	usleep(10000);
	EXPECT_EQ(a.ticks, clock_at(self->mem, CLOCK_OFF).ticks);
	munmap(old, SIZE);
	close(memfd2);
}

struct churn {
	int fd, memfd[2];
	char *mem;
	atomic_int stop;
	unsigned long rounds;
};

static void *exit_loop(void *arg)
{
	struct churn *c = arg;
	int vcpu = vcpu_create(c->fd, 0);
	char b;

	while (vcpu >= 0 && !atomic_load(&c->stop))
		guest_access(vcpu, GPA_BASE, &b, 1, 0);
	if (vcpu >= 0)
		close(vcpu);
	return NULL;
}

/*
 * While the timer writes every 10 us and another vCPU exits in a loop, the
 * backing of the cached pages changes over and over (another file at the
 * same address, a punched hole, read-only and back, the memslot deleted and
 * created again). After each change settles, the page the primary maps now
 * gets the writes, and the page it mapped before gets none.
 */
TEST_F(gpc, coherence_under_timer)
{
	struct churn c = { .fd = self->fd, .mem = self->mem };
	unsigned long rounds = 40 / test_scale() + 2, r;
	int mapped = 0;
	char *view[2];
	pthread_t t;

	c.memfd[0] = self->memfd;
	c.memfd[1] = memfd_create("secmmu-gpc-churn", 0);
	ASSERT_GE(c.memfd[1], 0);
	ASSERT_EQ(0, ftruncate(c.memfd[1], SIZE));
	for (r = 0; r < 2; r++) {
		view[r] = map_memfd(c.memfd[r], NULL);
		ASSERT_NE(MAP_FAILED, view[r]);
	}
	ASSERT_EQ(0, set_run_page(self->vcpu, RUN_GPA, SECMMU_RUN_PAGE_ENABLE));
	ASSERT_EQ(0, set_clock_page(self->fd, CLOCK_GPA, SECMMU_CLOCK_PERIOD_MIN,
				    SECMMU_CLOCK_PAGE_ENABLE));
	ASSERT_EQ(0, pthread_create(&t, NULL, exit_loop, &c));
	for (r = 0; r < rounds; r++) {
		/* The file mapped at self->mem before this round, and after. */
		int prev = mapped, cur = mapped;
		unsigned long before;
		char b;

		switch (r % 4) {
		case 0:
		case 2:
			cur = 1 - prev;
			ASSERT_EQ(self->mem, map_memfd(c.memfd[cur], self->mem));
			mapped = cur;
			break;
		case 1:
			/* Punch the clock's page out of the file mapped now. */
			ASSERT_EQ(0, fallocate(c.memfd[cur], FALLOC_FL_PUNCH_HOLE |
					       FALLOC_FL_KEEP_SIZE, 5 * PAGE_SZ, PAGE_SZ));
			ASSERT_EQ(0, mprotect(self->mem, SIZE, PROT_READ));
			ASSERT_EQ(0, mprotect(self->mem, SIZE, PROT_READ | PROT_WRITE));
			break;
		case 3:
			ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, 0, self->mem));
			ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, SIZE, self->mem));
			break;
		}
		/* Settle: exits refresh both caches. */
		ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
		usleep(2000);
		ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, &b, 1, 0));
		if (cur != prev) {
			/* The file mapped before gets no write any more. */
			before = clock_at(view[prev], CLOCK_OFF).ticks;
			usleep(2000);
			EXPECT_EQ(before, clock_at(view[prev], CLOCK_OFF).ticks);
			before = run_page_at(view[prev], RUN_OFF).exits;
			usleep(1000);
			EXPECT_EQ(before, run_page_at(view[prev], RUN_OFF).exits);
		}
		/* The file mapped now does. */
		before = clock_at(view[cur], CLOCK_OFF).ticks;
		EXPECT_TRUE(clock_advances(self->vcpu, GPA_BASE, view[cur], CLOCK_OFF, before));
		EXPECT_GT(run_page_at(view[cur], RUN_OFF).exits, 0);
	}
	atomic_store(&c.stop, 1);
	pthread_join(t, NULL);
	ASSERT_EQ(0, set_clock_page(self->fd, 0, 0, 0));
	TH_LOG("%s: %lu rounds, %llu clock updates, %llu misses, %llu invalidations",
	       format_name(variant->format), rounds, get_gpc_stats(self->fd).clock_updates,
	       get_gpc_stats(self->fd).clock_misses, get_gpc_stats(self->fd).invalidations);
	for (r = 0; r < 2; r++)
		munmap(view[r], SIZE);
	close(c.memfd[1]);
}

/*
 * The clock's timer writes a private anonymous page while the primary frees
 * it (MADV_DONTNEED), migrates it and merges it with KSM. Until a vCPU exit
 * refreshes the cache, the timer only misses: no write lands in the page the
 * primary maps there now, nor in the KSM page it shares with a twin; after
 * the exit the page mapped now gets the writes.
 */
TEST_F_TIMEOUT(gpc, coherence_private_timer, 120)
{
	char *priv = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *page = priv + 5 * PAGE_SZ, *twin = priv + 6 * PAGE_SZ;
	unsigned long misses, tries, gpa;
	int node, migrated = 0, merged = 0;
	struct secmmu_clock_page a;
	struct secmmu_audit au;

	ASSERT_NE(MAP_FAILED, priv);
	/* Every page different, so that KSM merges only the twins below. */
	for (tries = 0; tries < NPAGES; tries++)
		memset(priv + tries * PAGE_SZ, 0x10 + tries, PAGE_SZ);
	memset(page, 0, PAGE_SZ);
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, SIZE, priv));
	ASSERT_EQ(0, set_clock_page(self->fd, GPA_BASE + SIZE + CLOCK_OFF, PERIOD_NS,
				    SECMMU_CLOCK_PAGE_ENABLE));
	/* Exits of a vCPU that touches another page of the slot. */
	gpa = GPA_BASE + SIZE;
	EXPECT_TRUE(clock_advances(self->vcpu, gpa, priv, CLOCK_OFF, 0));

	/* Freed: the page mapped after (the zero page) gets no write. */
	misses = get_gpc_stats(self->fd).clock_misses;
	ASSERT_EQ(0, madvise(page, PAGE_SZ, MADV_DONTNEED));
	for (tries = 0; tries < 5000 && get_gpc_stats(self->fd).clock_misses == misses; tries++)
		usleep(1000);
	EXPECT_GT(get_gpc_stats(self->fd).clock_misses, misses);
	EXPECT_EQ(0, clock_at(priv, CLOCK_OFF).ticks);
	EXPECT_TRUE(clock_advances(self->vcpu, gpa, priv, CLOCK_OFF, 0));

	/* Migrated to the other node (with two): the new page, after an exit. */
	node = page_node(page);
	if (node >= 0 && !access("/sys/devices/system/node/node1", F_OK)) {
		int to = !node, status = -1;
		void *pg = page;

		ASSERT_EQ(0, syscall(__NR_move_pages, 0, 1, &pg, &to, &status, MPOL_MF_MOVE));
		EXPECT_EQ(to, status);
		a = clock_at(priv, CLOCK_OFF);
		usleep(20000);
		EXPECT_EQ(a.ticks, clock_at(priv, CLOCK_OFF).ticks);
		EXPECT_TRUE(clock_advances(self->vcpu, gpa, priv, CLOCK_OFF, a.ticks));
		EXPECT_EQ(to, page_node(page));
		migrated = 1;
	} else {
		TH_LOG("one NUMA node: no migration");
	}

	/*
	 * Merged by KSM with a twin: the cache is invalidated first (the page
	 * must hold still for KSM to merge it), and the timer must not write
	 * the KSM page; the exit after gets a private copy again.
	 */
	if (ksm_start()) {
		ASSERT_EQ(0, mprotect(page, PAGE_SZ, PROT_READ));
		ASSERT_EQ(0, mprotect(page, PAGE_SZ, PROT_READ | PROT_WRITE));
		memcpy(twin, page, PAGE_SZ);
		merged = ksm_merge(priv, SIZE, page, twin);
		EXPECT_TRUE(merged) TH_LOG("KSM did not merge the twins");
		/* The twin's copy of the clock: what the KSM page holds. */
		a = clock_at(twin, CLOCK_OFF % PAGE_SZ);
		usleep(20000);
		EXPECT_EQ(a.ticks, clock_at(twin, CLOCK_OFF % PAGE_SZ).ticks)
			TH_LOG("the timer wrote the KSM page");
		EXPECT_TRUE(clock_advances(self->vcpu, gpa, priv, CLOCK_OFF, a.ticks));
		EXPECT_EQ(a.ticks, clock_at(twin, CLOCK_OFF % PAGE_SZ).ticks);
		EXPECT_NE(page_pfn(page), page_pfn(twin));
		madvise(priv, SIZE, MADV_UNMERGEABLE);
		write_file("/sys/kernel/mm/ksm/run", "2");
	}
	ASSERT_EQ(0, set_clock_page(self->fd, 0, 0, 0));
	EXPECT_EQ(0, get_gpc_stats(self->fd).retries_unrelated);
	if (!audit_space(self->fd, &au))
		EXPECT_EQ(0, au.mismatches);
	TH_LOG("%s: %llu clock updates, %llu misses, %llu invalidations, %s, %s",
	       format_name(variant->format), get_gpc_stats(self->fd).clock_updates,
	       get_gpc_stats(self->fd).clock_misses, get_gpc_stats(self->fd).invalidations,
	       migrated ? "migrated" : "not migrated", merged ? "KSM-merged" : "no KSM");
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, GPA_BASE + SIZE, 0, priv));
	munmap(priv, SIZE);
}

/*
 * The process exits with the run page on and the clock's timer armed, and
 * never closes its files: the release stops the timer and tears the caches
 * down; no splat, nothing leaks (the runner checks the kernel log).
 */
TEST_F(gpc, release)
{
	pid_t pid = fork();
	int status;

	ASSERT_GE(pid, 0);
	if (pid == 0) {
		int fd = space_create(variant->format, 1, 0);
		char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int vcpu;
		char c;

		if (fd < 0 || m == MAP_FAILED ||
		    set_slot(fd, 0, 0, GPA_BASE, SIZE, m))
			_exit(1);
		vcpu = vcpu_create(fd, 0);
		if (vcpu < 0 || set_run_page(vcpu, RUN_GPA, SECMMU_RUN_PAGE_ENABLE) ||
		    guest_access(vcpu, GPA_BASE, &c, 1, 0))
			_exit(2);
		/* The timer is armed when the process exits. */
		if (set_clock_page(fd, CLOCK_GPA, SECMMU_CLOCK_PERIOD_MIN,
				   SECMMU_CLOCK_PAGE_ENABLE))
			_exit(4);
		usleep(1000);
		_exit(run_page_at(m, RUN_OFF).exits == 1 ? 0 : 3);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
}

TEST_HARNESS_MAIN
