// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu MMU selftests: memslots, faults, and coherence of the secondary
 * page tables with every change the primary MMU makes. Every test runs once
 * per page-table format (fixture variants "x86" and "arm64").
 *
 * Most tests use the "mirror" fixture: a space with one root, one vCPU,
 * and one memslot at GPA_BASE backed by an anonymous mapping of NPAGES.
 * The others use "fmt", which only carries the format.
 * A guest access is a SECMMU_RUN or SECMMU_ACCESS on the vCPU; what the
 * secondary MMU maps is read back with SECMMU_SNAPSHOT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define GPA_BASE	0x40000000UL
#define NPAGES		256UL
#define SIZE		(NPAGES * PAGE_SZ)

#define PRESENT		SECMMU_SNAP_PRESENT
#define WRITABLE	SECMMU_SNAP_WRITABLE

/* Buffers of one region's size, for exact comparisons. */
static char bounce[SIZE], expect[SIZE];

FIXTURE(mirror) {
	int fd;
	int vcpu;
	char *mem;
	unsigned char snap[NPAGES];
};

FIXTURE_VARIANT(mirror) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(mirror, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(mirror, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE(fmt) {
	int unused;
};

FIXTURE_VARIANT(fmt) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(fmt, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(fmt, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(fmt)
{
}

FIXTURE_TEARDOWN(fmt)
{
}

FIXTURE_SETUP(mirror)
{
	self->fd = space_create(variant->format, 1, 0);
	ASSERT_GE(self->fd, 0) TH_LOG("space: %s", strerror(-self->fd));
	self->mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->mem);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, SIZE, self->mem));
	self->vcpu = vcpu_create(self->fd, 0);
	ASSERT_GE(self->vcpu, 0);
}

/* Test hook of the auditor's test: invalidations skip some zaps. */
#define SKIP_ZAP_PARAM	"/sys/kernel/debug/secmmu/test_skip_zap"
/* Test hook: a zap that may block yields every Nth time it asks. */
#define ZAP_RESCHED_PARAM	"/sys/kernel/debug/secmmu/test_zap_resched"

static int write_file(const char *path, const char *val);

/*
 * Every leaf of @fd's page tables is backed by the primary MMU as the
 * SECMMU_AUDIT auditor sees it, checked with EXPECTs so a teardown goes on.
 * A module without the auditor (ENOTTY) is not audited.
 */
static void expect_coherent(struct __test_metadata *_metadata, int fd)
{
	struct secmmu_audit a;
	int ret = audit_space(fd, &a);

	if (ret == -ENOTTY)
		return;
	EXPECT_EQ(0, ret) TH_LOG("SECMMU_AUDIT: %s", strerror(-ret));
	EXPECT_EQ(0, a.mismatches)
		TH_LOG("audit: %llu of %llu leaves incoherent, the first at gpa %#llx in root %u",
		       a.mismatches, a.leaves, a.first_gpa, a.first_root);
}

FIXTURE_TEARDOWN(mirror)
{
	if (access(SKIP_ZAP_PARAM, W_OK) == 0)
		write_file(SKIP_ZAP_PARAM, "0");
	expect_coherent(_metadata, self->fd);
	close(self->vcpu);
	close(self->fd);
	munmap(self->mem, SIZE);
}

/* Guest writes one word per page: pattern ^ gpa. */
static int guest_write_all(int vcpu, unsigned long pattern)
{
	return run_range(vcpu, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + SIZE,
			 PAGE_SZ, pattern, NULL);
}

/* Number of pages whose first word the guest does not read as expected. */
static long guest_mismatches(int vcpu, unsigned long pattern)
{
	struct secmmu_run r;
	int ret = run_range(vcpu, SECMMU_RUN_VERIFY, GPA_BASE, GPA_BASE + SIZE,
			    PAGE_SZ, pattern, &r);

	return ret ? ret : (long)r.mismatches;
}

/* Host writes what guest_mismatches() expects, into @mem. */
static void host_write_all(char *mem, unsigned long pattern)
{
	unsigned long i;

	for (i = 0; i < NPAGES; i++)
		*(uint64_t *)(mem + i * PAGE_SZ) = pattern ^ (GPA_BASE + i * PAGE_SZ);
}

static unsigned long host_mismatches(char *mem, unsigned long pattern)
{
	unsigned long i, bad = 0;

	for (i = 0; i < NPAGES; i++)
		bad += *(uint64_t *)(mem + i * PAGE_SZ) !=
		       (pattern ^ (GPA_BASE + i * PAGE_SZ));
	return bad;
}

/*
 * Every malformed request is refused with the documented errno and changes
 * nothing; well-formed ones work.
 */
TEST_F(fmt, memslot_validation)
{
	char *mem = mmap(NULL, 4 * PAGE_SZ, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct secmmu_config cfg = { .format = variant->format, .nr_roots = 1 };
	int arm64 = variant->format == SECMMU_FMT_ARM64_S2;
	struct secmmu_memslot m = { .memory_size = PAGE_SZ };
	struct secmmu_run run = { .op = SECMMU_RUN_READ, .stride = 8, .passes = 1 };
	unsigned char snap[4];
	int fd, vcpu;

	ASSERT_NE(MAP_FAILED, mem);
	fd = open("/dev/secmmu", O_RDWR);
	ASSERT_GE(fd, 0);

	/* Nothing before CONFIGURE. */
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0, PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, vcpu_create(fd, 0));

	/* CONFIGURE's own validation. */
	cfg.nr_roots = 0;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.nr_roots = SECMMU_MAX_ROOTS + 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.nr_roots = 1;
	cfg.format = 99;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.format = variant->format;
	cfg.flags = 1u << 31;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.flags = 0;
	/* Guest-physical width: x86 EPT4 is 48 bits; arm64 takes 32..48. */
	cfg.ia_bits = 31;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.ia_bits = 49;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.ia_bits = 40;
	if (!arm64)
		EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.ia_bits = arm64 ? 40 : 0;
	cfg.reserved[2] = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	cfg.reserved[2] = 0;
	ASSERT_EQ(0, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	EXPECT_EQ(-EBUSY, secmmu_ioctl(fd, SECMMU_CONFIGURE, &cfg));
	/* A slot must fit the configured width. */
	if (arm64) {
		EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 1UL << 40, PAGE_SZ, mem));
		EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, (1UL << 40) - PAGE_SZ,
					    2 * PAGE_SZ, mem));
		ASSERT_EQ(0, set_slot(fd, 0, 0, (1UL << 40) - PAGE_SZ, PAGE_SZ, mem));
		ASSERT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
	}

	/* Malformed slots. */
	EXPECT_EQ(-EINVAL, set_slot(fd, SECMMU_MAX_MEMSLOTS, 0, 0, PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 1u << 7, 0, PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0x800, PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0, PAGE_SZ + 1, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0, PAGE_SZ, mem + 1));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 1UL << 48, PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, (1UL << 48) - PAGE_SZ, 2 * PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, -PAGE_SZ, 2 * PAGE_SZ, mem));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0, PAGE_SZ, (void *)0xffff888000000000UL));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0, 2 * PAGE_SZ, (void *)-PAGE_SZ));
	EXPECT_EQ(-EINVAL, set_slot(fd, 0, 0, 0, PAGE_SZ, NULL));
	m.slot = 0;
	m.userspace_addr = (unsigned long)mem;
	m.reserved[1] = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_SET_MEMSLOT, &m));
	EXPECT_EQ(-ENOENT, set_slot(fd, 5, 0, 0, 0, NULL));

	/* Overlap, reuse of an id, deletion and re-creation. */
	ASSERT_EQ(0, set_slot(fd, 0, 0, 0x10000, 2 * PAGE_SZ, mem));
	EXPECT_EQ(-EEXIST, set_slot(fd, 1, 0, 0x11000, 2 * PAGE_SZ, mem));
	EXPECT_EQ(-EEXIST, set_slot(fd, 1, 0, 0x0f000, 2 * PAGE_SZ, mem));
	EXPECT_EQ(-EBUSY, set_slot(fd, 0, 0, 0x20000, PAGE_SZ, mem));
	EXPECT_EQ(0, set_slot(fd, 1, 0, 0x12000, 2 * PAGE_SZ, mem)); /* alias */
	EXPECT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
	EXPECT_EQ(0, set_slot(fd, 0, 0, 0x20000, PAGE_SZ, mem));

	/* vCPU, snapshot and run arguments. */
	EXPECT_EQ(-EINVAL, vcpu_create(fd, 1));
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);
	EXPECT_EQ(-EINVAL, snapshot(fd, 1, 0x20000, 1, snap));
	EXPECT_EQ(-EINVAL, snapshot(fd, 0, 0x20001, 1, snap));
	EXPECT_EQ(-EINVAL, snapshot(fd, 0, 0x20000, 0, snap));
	EXPECT_EQ(-EFAULT, snapshot(fd, 0, 0x20000, 4, NULL));
	run.stride = 0;
	EXPECT_EQ(-EINVAL, vcpu_run(vcpu, &run));
	run.stride = 8;
	run.start = 4;
	EXPECT_EQ(-EINVAL, vcpu_run(vcpu, &run));
	run.start = 0;
	run.op = 0;
	EXPECT_EQ(-EINVAL, vcpu_run(vcpu, &run));
	EXPECT_EQ(-EFAULT, guest_access(vcpu, 0x20000, NULL, 8, 0));
	EXPECT_EQ(-ENOTTY, secmmu_ioctl(vcpu, SECMMU_GET_STATS, &run));

	close(vcpu);
	close(fd);
	munmap(mem, 4 * PAGE_SZ);
}

/* Guest writes are seen by the host pointer, host writes by the guest. */
TEST_F(mirror, access_roundtrip)
{
	char buf[3 * PAGE_SZ], back[3 * PAGE_SZ];
	struct secmmu_run r;
	unsigned long i;

	host_write_all(self->mem, 0x1234);
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 0x1234));
	ASSERT_EQ(0, guest_write_all(self->vcpu, 0xabcd));
	EXPECT_EQ(0, host_mismatches(self->mem, 0xabcd));

	/* Unaligned copies across page boundaries, both ways. */
	for (i = 0; i < sizeof(buf); i++)
		buf[i] = (char)(i * 7 + 3);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE + 100, buf, sizeof(buf), 1));
	EXPECT_EQ(0, memcmp(self->mem + 100, buf, sizeof(buf)));
	memset(self->mem + 5000, 0x77, 3000);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE + 100, back, sizeof(back), 0));
	EXPECT_EQ(0, memcmp(self->mem + 100, back, sizeof(back)));

	/* Everything the guest wrote is mapped writable, accessed and dirty. */
	ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE, NPAGES, self->snap));
	EXPECT_EQ(NPAGES, count_bits(self->snap, NPAGES, PRESENT | WRITABLE |
				     SECMMU_SNAP_ACCESSED | SECMMU_SNAP_DIRTY));

	/* Outside every slot: a memory-fault exit with the address. */
	EXPECT_EQ(-EFAULT, run_range(self->vcpu, SECMMU_RUN_READ, 0x1000,
				     0x2000, 8, 0, &r));
	EXPECT_EQ(SECMMU_EXIT_MEMORY_FAULT, r.exit_reason);
	EXPECT_EQ(0x1000, r.exit_gpa);
}

/*
 * A read copies out of guest mode, holding the page it translated: the
 * copy may fault and sleep. Into a buffer that is not mapped: -EFAULT,
 * with the progress made and exit_gpa ~0. Into the guest's own memory,
 * whose copy-on-write break then invalidates the page being read (the
 * zero page here, read into itself): the data is right, and later reads
 * see the process's new page.
 */
TEST_F(mirror, access_read_copy_faults)
{
	struct secmmu_access a = {};
	char *buf = mmap(NULL, 2 * PAGE_SZ, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	__u64 word;

	ASSERT_NE(MAP_FAILED, buf);
	/* 8 bytes of room, then a page that cannot be written. */
	ASSERT_EQ(0, mprotect(buf + PAGE_SZ, PAGE_SZ, PROT_NONE));
	host_write_all(self->mem, 0x1234);
	a.gpa = GPA_BASE + PAGE_SZ - 8;
	a.len = 16;
	a.buf = (unsigned long)buf + PAGE_SZ - 8;
	EXPECT_EQ(-EFAULT, secmmu_ioctl(self->vcpu, SECMMU_ACCESS, &a));
	EXPECT_EQ(8, a.done);
	EXPECT_EQ(~0ull, a.exit_gpa);

	/* Pages 1 and 2: the zero page, mapped by the vCPU's reads. */
	ASSERT_EQ(0, madvise(self->mem + PAGE_SZ, 2 * PAGE_SZ, MADV_DONTNEED));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE + PAGE_SZ, &word, 8, 0));
	EXPECT_EQ(0, word);
	/* Page 0 read into page 1; page 2 read into itself. */
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, self->mem + PAGE_SZ, PAGE_SZ, 0));
	EXPECT_EQ(0, memcmp(self->mem, self->mem + PAGE_SZ, PAGE_SZ));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE + 2 * PAGE_SZ,
				  self->mem + 2 * PAGE_SZ, PAGE_SZ, 0));
	EXPECT_EQ(0, *(__u64 *)(self->mem + 2 * PAGE_SZ));
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE + PAGE_SZ, &word, 8, 0));
	EXPECT_EQ(*(__u64 *)self->mem, word);
	expect_coherent(_metadata, self->fd);
	munmap(buf, 2 * PAGE_SZ);
}

/*
 * SECMMU_RUN is a guest loop that stays in guest mode across accesses, and
 * leaves it only to fault or every so many accesses: every access is made
 * once per pass, in order, also across those exits; the counts and the
 * position of an exit are exact.
 */
TEST_F(mirror, run_loop)
{
	unsigned long stride = 3 * PAGE_SZ + 8, n = (SIZE + stride - 1) / stride;
	struct secmmu_run r = {
		.op = SECMMU_RUN_WRITE, .start = GPA_BASE, .end = GPA_BASE + SIZE,
		.stride = stride, .pattern = 0x77, .passes = 3,
	};
	unsigned long i;

	/* Three passes of writes, stride not a page: n accesses each. */
	ASSERT_EQ(0, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(3 * n, r.accesses);
	EXPECT_EQ(SECMMU_EXIT_NONE, r.exit_reason);
	for (i = 0; i < n; i++)
		EXPECT_EQ(0x77 ^ (GPA_BASE + i * stride),
			  *(uint64_t *)(self->mem + i * stride));
	/* Verify: no mismatch; then a wrong pattern, all of them. */
	r.op = SECMMU_RUN_VERIFY;
	ASSERT_EQ(0, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(3 * n, r.accesses);
	EXPECT_EQ(0, r.mismatches);
	r.pattern = 0x78;
	ASSERT_EQ(0, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(3 * n, r.mismatches);
	EXPECT_EQ(GPA_BASE, r.first_mismatch);

	/* An empty range, or no pass: no access. */
	r.end = r.start;
	ASSERT_EQ(0, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(0, r.accesses);
	r.end = GPA_BASE + SIZE;
	r.passes = 0;
	ASSERT_EQ(0, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(0, r.accesses);

	/* A stride past the end of the address space: one access a pass. */
	r.op = SECMMU_RUN_READ;
	r.passes = 5;
	r.end = 1UL << 48;
	r.stride = 1UL << 63;
	ASSERT_EQ(0, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(5, r.accesses);
	r.end = (1UL << 48) + 8;
	EXPECT_EQ(-EINVAL, vcpu_run(self->vcpu, &r));

	/*
	 * A range running off the slot: the first access past it exits with
	 * its address and pass, after every access before it.
	 */
	r.op = SECMMU_RUN_WRITE;
	r.passes = 2;
	r.stride = PAGE_SZ;
	r.end = GPA_BASE + SIZE + 4 * PAGE_SZ;
	EXPECT_EQ(-EFAULT, vcpu_run(self->vcpu, &r));
	EXPECT_EQ(SECMMU_EXIT_MEMORY_FAULT, r.exit_reason);
	EXPECT_EQ(GPA_BASE + SIZE, r.exit_gpa);
	EXPECT_EQ(0, r.exit_pass);
	EXPECT_EQ(SECMMU_ACCESS_WRITE, r.exit_flags);
	EXPECT_EQ(NPAGES, r.accesses);
}

/* munmap zaps the mirror: the guest faults, then sees the new mapping. */
TEST_F(mirror, munmap_coherence)
{
	struct secmmu_stats before, after;
	struct secmmu_run r;
	char *p;

	ASSERT_EQ(0, guest_write_all(self->vcpu, 1));
	ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE, NPAGES, self->snap));
	ASSERT_EQ(NPAGES, count_bits(self->snap, NPAGES, PRESENT));

	before = get_stats(self->fd);
	ASSERT_EQ(0, munmap(self->mem, SIZE));
	after = get_stats(self->fd);
	EXPECT_GE(after.sptes_zapped - before.sptes_zapped, NPAGES);
	EXPECT_GT(after.tlb_flushes, before.tlb_flushes);
	ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE, NPAGES, self->snap));
	EXPECT_EQ(0, count_bits(self->snap, NPAGES, PRESENT));

	EXPECT_EQ(-EFAULT, run_range(self->vcpu, SECMMU_RUN_READ, GPA_BASE,
				     GPA_BASE + SIZE, PAGE_SZ, 0, &r));
	EXPECT_EQ(GPA_BASE, r.exit_gpa);

	/* New memory at the same address: the guest sees it, not the old. */
	p = mmap(self->mem, SIZE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT_EQ(self->mem, p);
	host_write_all(self->mem, 2);
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 2));
}

/* MADV_DONTNEED zaps: the guest then reads the zero page, not old data. */
TEST_F(mirror, dontneed_coherence)
{
	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x55));
	EXPECT_EQ(0, host_mismatches(self->mem, 0x55));
	ASSERT_EQ(0, madvise(self->mem, SIZE, MADV_DONTNEED));
	ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE, NPAGES, self->snap));
	EXPECT_EQ(0, count_bits(self->snap, NPAGES, PRESENT));
	/* The pattern is gone: the guest reads zeroes, as the host does. */
	EXPECT_EQ(NPAGES, guest_mismatches(self->vcpu, 0x55));
	memset(bounce, 0xff, SIZE);
	memset(expect, 0, SIZE);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, bounce, SIZE, 0));
	EXPECT_EQ(0, memcmp(bounce, expect, SIZE));
	/* Then new host data is what the guest sees. */
	host_write_all(self->mem, 0x66);
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 0x66));
}

/*
 * mprotect(PROT_READ) write-protects the mirror: every guest write faults
 * (and userspace can skip it), reads still work; PROT_READ|WRITE restores.
 */
TEST_F(mirror, mprotect_ro_rw)
{
	struct secmmu_run r;
	unsigned long gpa, faults = 0;

	ASSERT_EQ(0, guest_write_all(self->vcpu, 7));
	ASSERT_EQ(0, mprotect(self->mem, SIZE, PROT_READ));
	ASSERT_EQ(0, snapshot(self->fd, 0, GPA_BASE, NPAGES, self->snap));
	EXPECT_EQ(0, count_bits(self->snap, NPAGES, WRITABLE));

	/* Write every page, skipping each memory fault like mmu_stress_test. */
	for (gpa = GPA_BASE; gpa < GPA_BASE + SIZE; ) {
		int ret = run_range(self->vcpu, SECMMU_RUN_WRITE, gpa,
				    GPA_BASE + SIZE, PAGE_SZ, 8, &r);
		if (!ret)
			break;
		ASSERT_EQ(-EFAULT, ret);
		ASSERT_EQ(SECMMU_EXIT_MEMORY_FAULT, r.exit_reason);
		ASSERT_EQ(SECMMU_ACCESS_WRITE, r.exit_flags);
		ASSERT_EQ(gpa, r.exit_gpa);
		faults++;
		gpa = r.exit_gpa + PAGE_SZ;
	}
	EXPECT_EQ(NPAGES, faults);
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 7));
	EXPECT_EQ(0, host_mismatches(self->mem, 7));

	ASSERT_EQ(0, mprotect(self->mem, SIZE, PROT_READ | PROT_WRITE));
	ASSERT_EQ(0, guest_write_all(self->vcpu, 9));
	EXPECT_EQ(0, host_mismatches(self->mem, 9));
}

/*
 * After fork, the parent's private pages are COW-shared. A parent write
 * breaks COW: the guest must see the parent's new page, and guest writes
 * must land in it, never in the child's copy.
 */
TEST_F(mirror, fork_cow)
{
	int pipefd[2], status;
	pid_t pid;
	char c;

	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x100));
	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		/* Wait until the parent is done, then check our copy. */
		if (read(pipefd[0], &c, 1) != 1)
			_exit(2);
		_exit(host_mismatches(self->mem, 0x100) ? 1 : 0);
	}
	/* Host write: COW break, new pages in the parent. */
	host_write_all(self->mem, 0x200);
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 0x200));
	/* Guest write: into the parent's pages only. */
	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x300));
	EXPECT_EQ(0, host_mismatches(self->mem, 0x300));
	ASSERT_EQ(1, write(pipefd[1], "x", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
		TH_LOG("the child's copy changed");
	close(pipefd[0]);
	close(pipefd[1]);
}

/*
 * One gfn mapped in all 32 roots: each rmap holds 32 SPTEs, a chain longer
 * than one descriptor. One munmap zaps every one of them.
 */
TEST_F(fmt, multi_root)
{
	const unsigned long npages = 64, size = npages * PAGE_SZ;
	int fd, vcpus[SECMMU_MAX_ROOTS], r;
	unsigned char snap[64];
	struct secmmu_stats st;
	char *mem;

	fd = space_create(variant->format, SECMMU_MAX_ROOTS, 0);
	ASSERT_GE(fd, 0);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, mem);
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, size, mem));
	for (r = 0; r < SECMMU_MAX_ROOTS; r++) {
		vcpus[r] = vcpu_create(fd, r);
		ASSERT_GE(vcpus[r], 0) TH_LOG("vcpu %d: %s", r, strerror(-vcpus[r]));
		ASSERT_EQ(0, run_range(vcpus[r], SECMMU_RUN_WRITE, GPA_BASE,
				       GPA_BASE + size, PAGE_SZ, r, NULL));
	}
	st = get_stats(fd);
	/* Only x86 keeps rmaps; stage-2 zaps by walking each root's tables. */
	EXPECT_EQ(variant->format == SECMMU_FMT_X86_EPT4 ? SECMMU_MAX_ROOTS : 0,
		  st.rmap_max_chain);
	for (r = 0; r < SECMMU_MAX_ROOTS; r++) {
		ASSERT_EQ(0, snapshot(fd, r, GPA_BASE, npages, snap));
		EXPECT_EQ(npages, count_bits(snap, npages, PRESENT | WRITABLE));
	}
	ASSERT_EQ(0, munmap(mem, size));
	EXPECT_GE(get_stats(fd).sptes_zapped - st.sptes_zapped,
		  SECMMU_MAX_ROOTS * npages);
	for (r = 0; r < SECMMU_MAX_ROOTS; r++) {
		ASSERT_EQ(0, snapshot(fd, r, GPA_BASE, npages, snap));
		EXPECT_EQ(0, count_bits(snap, npages, PRESENT));
		close(vcpus[r]);
	}
	close(fd);
}

/*
 * mremap moves the pages: the old range is gone (the guest faults), and a
 * slot over the new range sees the data.
 */
TEST_F(mirror, mremap_coherence)
{
	struct secmmu_run r;
	char *dst;

	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x4242));
	dst = mmap(NULL, SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, dst);
	ASSERT_EQ(dst, mremap(self->mem, SIZE, SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst));
	EXPECT_EQ(-EFAULT, run_range(self->vcpu, SECMMU_RUN_READ, GPA_BASE,
				     GPA_BASE + SIZE, PAGE_SZ, 0, &r));
	EXPECT_EQ(GPA_BASE, r.exit_gpa);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, 0, 0, NULL));
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, GPA_BASE, SIZE, dst));
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 0x4242));
	EXPECT_EQ(0, host_mismatches(dst, 0x4242));
	self->mem = dst;	/* for the teardown's munmap */
}

/* move_pages() to the other node: the guest follows the data. */
TEST_F(mirror, migrate_coherence)
{
	void *pages[NPAGES];
	int nodes[NPAGES], status[NPAGES];
	struct secmmu_stats st;
	unsigned long i, moved = 0;
	long ret;

	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x77));
	/* Where are they now? Then move each to the other node. */
	for (i = 0; i < NPAGES; i++)
		pages[i] = self->mem + i * PAGE_SZ;
	ret = syscall(SYS_move_pages, 0, NPAGES, pages, NULL, status, 0);
	ASSERT_EQ(0, ret) TH_LOG("move_pages query: %s", strerror(errno));
	if (status[0] < 0)
		SKIP(return, "move_pages: %s", strerror(-status[0]));
	for (i = 0; i < NPAGES; i++)
		nodes[i] = status[i] == 0 ? 1 : 0;
	st = get_stats(self->fd);
	ret = syscall(SYS_move_pages, 0, NPAGES, pages, nodes, status, 2 /* MPOL_MF_MOVE */);
	if (ret < 0 && errno == ENODEV)
		SKIP(return, "only one NUMA node");
	ASSERT_GE(ret, 0) TH_LOG("move_pages: %s", strerror(errno));
	for (i = 0; i < NPAGES; i++)
		moved += status[i] == nodes[i];
	EXPECT_GT(moved, NPAGES / 2) TH_LOG("only %lu pages moved", moved);
	EXPECT_GE(get_stats(self->fd).sptes_zapped - st.sptes_zapped, moved);
	EXPECT_EQ(0, guest_mismatches(self->vcpu, 0x77));
	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x88));
	EXPECT_EQ(0, host_mismatches(self->mem, 0x88));
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

static long read_long(const char *path)
{
	char buf[64] = {};
	int fd = open(path, O_RDONLY);
	long v = -1;

	if (fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0)
		v = atol(buf);
	if (fd >= 0)
		close(fd);
	return v;
}

/*
 * KSM merges identical pages behind the guest's back (write-protecting and
 * replacing them): the guest still reads the data, and a guest write breaks
 * the sharing instead of writing into the shared page.
 */
TEST_F(mirror, ksm_coherence)
{
	unsigned long i;
	int tries;

	if (write_file("/sys/kernel/mm/ksm/run", "1"))
		SKIP(return, "no KSM");
	write_file("/sys/kernel/mm/ksm/sleep_millisecs", "0");
	write_file("/sys/kernel/mm/ksm/pages_to_scan", "10000");
	/* All pages identical, then mapped by the guest. */
	memset(self->mem, 0x5a, SIZE);
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_READ, GPA_BASE,
			       GPA_BASE + SIZE, PAGE_SZ, 0, NULL));
	ASSERT_EQ(0, madvise(self->mem, SIZE, MADV_MERGEABLE));
	for (tries = 0; tries < 300; tries++) {
		if (read_long("/sys/kernel/mm/ksm/pages_sharing") >= (long)NPAGES / 2)
			break;
		usleep(100000);
	}
	EXPECT_GE(read_long("/sys/kernel/mm/ksm/pages_sharing"), (long)NPAGES / 2);
	/* The guest reads the merged data... */
	memset(expect, 0x5a, SIZE);
	ASSERT_EQ(0, guest_access(self->vcpu, GPA_BASE, bounce, SIZE, 0));
	EXPECT_EQ(0, memcmp(bounce, expect, SIZE));
	/* ...and its writes land in private pages, one per page. */
	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x99));
	EXPECT_EQ(0, host_mismatches(self->mem, 0x99));
	for (i = 0; i < NPAGES; i++)
		EXPECT_EQ(0x5a, (unsigned char)self->mem[i * PAGE_SZ + 8]);
	madvise(self->mem, SIZE, MADV_UNMERGEABLE);
	write_file("/sys/kernel/mm/ksm/run", "2");
}

/*
 * Writes through secmmu to a MAP_SHARED file on a writeback filesystem
 * (ext4 on a loop device) reach the disk: they survive msync, a cache drop
 * and a remount.
 */
TEST_F_TIMEOUT(fmt, shared_file_dirty, 120)
{
	const char *img = "/tmp/secmmu-ext4.img", *mnt = "/tmp/secmmu-mnt";
	char loopdev[64] = {};
	int fd, vcpu, ffd;
	char *mem;

	if (scratch_ext4(img, mnt, loopdev, sizeof(loopdev)))
		SKIP(return, "cannot make an ext4 filesystem on a loop device");
	ffd = open("/tmp/secmmu-mnt/data", O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT_GE(ffd, 0);
	ASSERT_EQ(0, ftruncate(ffd, SIZE));
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
	ASSERT_NE(MAP_FAILED, mem);

	fd = space_create(variant->format, 1, 0);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, SIZE, mem));
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);

	/* Write, write back, write again (after writeback cleaned the pages). */
	ASSERT_EQ(0, guest_write_all(vcpu, 0xd1));
	ASSERT_EQ(0, msync(mem, SIZE, MS_SYNC));
	ASSERT_EQ(0, guest_write_all(vcpu, 0xd2));
	ASSERT_EQ(0, msync(mem, SIZE, MS_SYNC));
	close(vcpu);
	close(fd);
	munmap(mem, SIZE);
	close(ffd);

	/* Drop every cache: remount and read the file back from disk. */
	ASSERT_EQ(0, umount(mnt));
	ASSERT_EQ(0, write_file("/proc/sys/vm/drop_caches", "3"));
	ASSERT_EQ(0, mount(loopdev, mnt, "ext4", 0, NULL));
	ffd = open("/tmp/secmmu-mnt/data", O_RDONLY);
	ASSERT_GE(ffd, 0);
	mem = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, ffd, 0);
	ASSERT_NE(MAP_FAILED, mem);
	EXPECT_EQ(0, host_mismatches(mem, 0xd2));
	munmap(mem, SIZE);
	close(ffd);
	scratch_ext4_remove(img, mnt, loopdev);
}

struct runner {
	int vcpu;
	unsigned long start, end, pattern;
	unsigned int op;
	int stop;		/* read with __atomic_load_n() */
	unsigned long runs, faults, errors;
};

/* Runs RUN in a loop until told to stop; faults are expected, errors not. */
static void *runner_thread(void *arg)
{
	struct runner *r = arg;
	struct secmmu_run run;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		int ret = run_range(r->vcpu, r->op, r->start, r->end, PAGE_SZ,
				    r->pattern, &run);
		if (ret == -EFAULT)
			r->faults++;
		else if (ret)
			r->errors++;
		r->runs++;
	}
	return NULL;
}

/*
 * RUN on one thread while another unmaps and remaps the memory, many
 * rounds: every access either completes or exits with a memory fault.
 */
TEST_F(mirror, teardown_race)
{
	struct runner r = {
		.vcpu = self->vcpu, .start = GPA_BASE, .end = GPA_BASE + SIZE,
		.op = SECMMU_RUN_WRITE, .pattern = 1,
	};
	pthread_t t;
	int i;

	ASSERT_EQ(0, pthread_create(&t, NULL, runner_thread, &r));
	for (i = 0; i < 200; i++) {
		ASSERT_EQ(0, munmap(self->mem + SIZE / 2, SIZE / 2));
		usleep(1000);
		ASSERT_EQ(self->mem + SIZE / 2,
			  mmap(self->mem + SIZE / 2, SIZE / 2, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
		ASSERT_EQ(0, madvise(self->mem, SIZE / 2, MADV_DONTNEED));
	}
	__atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	EXPECT_EQ(0, r.errors);
	EXPECT_GT(r.runs, 0);
	TH_LOG("%lu runs, %lu memory faults", r.runs, r.faults);
	/* After the storm, everything is coherent again. */
	ASSERT_EQ(0, guest_write_all(self->vcpu, 0x31));
	EXPECT_EQ(0, host_mismatches(self->mem, 0x31));
}

/*
 * The process exits (release() from exit_mmap) while its vCPU threads run
 * and another process holds the space's fd: the threads die cleanly, the
 * holder gets EIO, and closing the fd afterwards is clean.
 */
TEST_F_TIMEOUT(fmt, release_while_running, 180)
{
	int sv[2], round;

	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
	for (round = 0; round < 8; round++) {
		pid_t pid = fork();
		int status, held;

		ASSERT_GE(pid, 0);
		if (pid == 0) {
			struct runner r[2];
			pthread_t t[2];
			char *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			int fd = space_create(variant->format, 1, 0), i;

			if (fd < 0 || mem == MAP_FAILED ||
			    set_slot(fd, 0, 0, GPA_BASE, SIZE, mem))
				_exit(2);
			for (i = 0; i < 2; i++) {
				memset(&r[i], 0, sizeof(r[i]));
				r[i].vcpu = vcpu_create(fd, 0);
				r[i].start = GPA_BASE;
				r[i].end = GPA_BASE + SIZE;
				r[i].op = i ? SECMMU_RUN_READ : SECMMU_RUN_WRITE;
				if (r[i].vcpu < 0 ||
				    pthread_create(&t[i], NULL, runner_thread, &r[i]))
					_exit(3);
			}
			if (send_fd(sv[1], fd))
				_exit(4);
			usleep(20000 * (round + 1));
			/* exit_group() with the vCPUs in the middle of RUN. */
			_exit(0);
		}
		held = recv_fd(sv[0]);
		ASSERT_GE(held, 0);
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
		ASSERT_TRUE(WIFEXITED(status));
		ASSERT_EQ(0, WEXITSTATUS(status));
		EXPECT_EQ(-EIO, secmmu_ioctl(held, SECMMU_GET_API_VERSION, NULL));
		EXPECT_EQ(0, close(held));
	}
	close(sv[0]);
	close(sv[1]);
}

/*
 * A port of KVM's mmu_stress_test: 2 vCPU threads over several slots.
 * run1 writes everything, run2 writes again, ro: the host mprotects RO, the
 * vCPUs read everything and then write until every write has faulted
 * (each counted), rw: RW again and a final write. Then the teardown of
 * KVM's test: delete the even slots, unmap half the memory, and exit with
 * the other slots still present (release() does the rest).
 * Sizes are chosen for TCG: 4 slots of 8 MiB.
 */
#define STRESS_SLOTS	4
#define STRESS_SLOT_SZ	(8 * SZ_1M)
#define STRESS_SZ	(STRESS_SLOTS * STRESS_SLOT_SZ)

struct stress_vcpu {
	int vcpu;
	unsigned long start, end;	/* guest range of this vCPU */
	unsigned long faults;
	int err;
};

/* One pass of @op over the vCPU's range, skipping every memory fault. */
static void stress_pass(struct stress_vcpu *v, unsigned int op, unsigned long pattern)
{
	unsigned long gpa = v->start;
	struct secmmu_run r;

	while (gpa < v->end) {
		int ret = run_range(v->vcpu, op, gpa, v->end, PAGE_SZ, pattern, &r);

		if (!ret)
			return;
		if (ret != -EFAULT) {
			v->err = ret;
			return;
		}
		v->faults++;
		gpa = r.exit_gpa + PAGE_SZ;
	}
}

struct stress_phase {
	struct stress_vcpu *v;
	unsigned int op;
	unsigned long pattern;
};

static void *stress_thread(void *arg)
{
	struct stress_phase *p = arg;

	stress_pass(p->v, p->op, p->pattern);
	return NULL;
}

/* Runs one phase on both vCPUs at once; returns the faults it counted. */
static unsigned long stress_phase(struct stress_vcpu *v, unsigned int op,
				  unsigned long pattern)
{
	struct stress_phase p[2] = { { &v[0], op, pattern }, { &v[1], op, pattern } };
	pthread_t t[2];
	unsigned long faults;
	int i;

	v[0].faults = 0;
	v[1].faults = 0;
	for (i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, stress_thread, &p[i]))
			return -1UL;
	for (i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	faults = v[0].faults + v[1].faults;
	return v[0].err || v[1].err ? -1UL : faults;
}

/* The space, its memory and two vCPUs over halves of it (steps 10-12). */
static int mmu_stress_setup(unsigned int format, struct stress_vcpu *v,
			    int *fdp, char **memp)
{
	char *mem;
	int fd, s, i;

	fd = space_create(format, 1, 0);
	mem = mmap(NULL, STRESS_SZ, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || mem == MAP_FAILED)
		return 10;
	*fdp = fd;
	*memp = mem;
	for (s = 0; s < STRESS_SLOTS; s++)
		if (set_slot(fd, s, 0, GPA_BASE + s * STRESS_SLOT_SZ, STRESS_SLOT_SZ,
			     mem + s * STRESS_SLOT_SZ))
			return 11;
	for (i = 0; i < 2; i++) {
		v[i].vcpu = vcpu_create(fd, 0);
		v[i].start = GPA_BASE + i * STRESS_SZ / 2;
		v[i].end = v[i].start + STRESS_SZ / 2;
		if (v[i].vcpu < 0)
			return 12;
	}
	return 0;
}

/* KVM's mmu_stress_test phases, racing mprotect() (steps 13-21). */
static int mmu_stress_phases(struct stress_vcpu *v, char *mem)
{
	const unsigned long npages = STRESS_SZ / PAGE_SZ;
	unsigned long i;

	if (stress_phase(v, SECMMU_RUN_WRITE, 1))		/* run1 */
		return 13;
	if (stress_phase(v, SECMMU_RUN_WRITE, 2))		/* run2 */
		return 14;
	if (stress_phase(v, SECMMU_RUN_VERIFY, 2))
		return 15;
	if (mprotect(mem, STRESS_SZ, PROT_READ))		/* ro */
		return 16;
	if (stress_phase(v, SECMMU_RUN_READ, 0))
		return 17;
	if (stress_phase(v, SECMMU_RUN_WRITE, 3) != npages)
		return 18;
	if (mprotect(mem, STRESS_SZ, PROT_READ | PROT_WRITE))	/* rw */
		return 19;
	if (stress_phase(v, SECMMU_RUN_WRITE, 4))
		return 20;
	for (i = 0; i < npages; i++)
		if (*(uint64_t *)(mem + i * PAGE_SZ) != (4 ^ (GPA_BASE + i * PAGE_SZ)))
			return 21;
	return 0;
}

/* Teardown: even slots deleted, half unmapped (steps 22-23). */
static int mmu_stress_teardown(int fd, char *mem)
{
	int s;

	for (s = 0; s < STRESS_SLOTS; s += 2)
		if (set_slot(fd, s, 0, 0, 0, NULL))
			return 22;
	if (munmap(mem, STRESS_SZ / 2))
		return 23;
	return 0;
}

/* The rest is left to exit. */
static int mmu_stress_child(unsigned int format)
{
	struct stress_vcpu v[2] = {};
	char *mem;
	int fd, step;

	step = mmu_stress_setup(format, v, &fd, &mem);
	if (!step)
		step = mmu_stress_phases(v, mem);
	if (!step)
		step = mmu_stress_teardown(fd, mem);
	return step;
}

TEST_F_TIMEOUT(fmt, mmu_stress, 180)
{
	int status;
	pid_t pid = fork();

	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(mmu_stress_child(variant->format));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status)) TH_LOG("failed at step %d", WEXITSTATUS(status));
}

/*
 * read_then_write_one_fault: a read of a private page the process already
 * wrote (the primary maps it writable) maps it writable, so the guest's
 * write after the read takes no second fault (KVM's map_writable); a page
 * never written (the zero page) is mapped read-only, and the write after
 * the read breaks copy-on-write through a second fault, landing in the
 * process's own new page. The data is checked from both sides. In a slot
 * that logs dirty pages, reads map read-only, so every write is logged.
 */
TEST_F(fmt, read_then_write_one_fault)
{
	const unsigned long npages = 64, size = 2 * npages * PAGE_SZ;
	struct secmmu_stats b, r, w;
	unsigned long i;
	int fd, vcpu;
	char *mem;

	/* The faults' own counts: no leaves mapped around them. */
	fd = space_create(variant->format, 1, SECMMU_CFG_NO_FAULT_AROUND);
	ASSERT_GE(fd, 0);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, mem);
	ASSERT_EQ(0, madvise(mem, size, MADV_NOHUGEPAGE));
	/* The first half written by the process: writable and dirty. */
	memset(mem, 0x5a, npages * PAGE_SZ);
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, size, mem));
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);

	b = get_stats(fd);
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, GPA_BASE, GPA_BASE + size, PAGE_SZ,
			       0, NULL));
	r = get_stats(fd);
	EXPECT_EQ(2 * npages, r.faults - b.faults);
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + size, PAGE_SZ,
			       7, NULL));
	w = get_stats(fd);
	/* Only the zero-page half faults again, to break COW. */
	EXPECT_EQ(npages, w.faults - r.faults);
	EXPECT_EQ(0, w.memory_faults - b.memory_faults);
	for (i = 0; i < 2 * npages; i++)
		ASSERT_EQ(7 ^ (GPA_BASE + i * PAGE_SZ), *(uint64_t *)(mem + i * PAGE_SZ))
			TH_LOG("page %lu", i);
	/* And the guest reads what the process writes now. */
	for (i = 0; i < 2 * npages; i++)
		*(uint64_t *)(mem + i * PAGE_SZ) = 9 ^ (GPA_BASE + i * PAGE_SZ);
	EXPECT_EQ(0, run_range(vcpu, SECMMU_RUN_VERIFY, GPA_BASE, GPA_BASE + size, PAGE_SZ,
			       9, NULL));

	/*
	 * In a slot that logs dirty pages, a read maps read-only even a page
	 * the process wrote: the write after it must fault, to be logged
	 * ("Dirty logging" in Documentation/secmmu-protocols.rst).
	 */
	{
		unsigned char bitmap[2 * 64 / 8] = {};
		unsigned long n;
		struct secmmu_dirty_log log = {
			.slot = 0, .bitmap = (unsigned long)bitmap,
		};

		ASSERT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
		ASSERT_EQ(0, set_slot(fd, 0, SECMMU_MEM_LOG_DIRTY_PAGES, GPA_BASE, size, mem));
		/* Clears the bitmap a new logging slot starts with. */
		ASSERT_EQ(0, secmmu_ioctl(fd, SECMMU_GET_DIRTY_LOG, &log));
		b = get_stats(fd);
		ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, GPA_BASE,
				       GPA_BASE + npages * PAGE_SZ, PAGE_SZ, 0, NULL));
		ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, GPA_BASE,
				       GPA_BASE + npages * PAGE_SZ, PAGE_SZ, 11, NULL));
		w = get_stats(fd);
		EXPECT_EQ(2 * npages, w.faults - b.faults);
		memset(bitmap, 0, sizeof(bitmap));
		ASSERT_EQ(0, secmmu_ioctl(fd, SECMMU_GET_DIRTY_LOG, &log));
		for (i = 0, n = 0; i < 2 * npages; i++)
			n += (bitmap[i / 8] >> (i % 8)) & 1;
		EXPECT_EQ(npages, n);
	}
	expect_coherent(_metadata, fd);
	close(vcpu);
	close(fd);
	munmap(mem, size);
}

/*
 * trace_counts: secmmu's trace events, read from a tracefs instance of
 * their own, count what the space's statistics count. One pass of the
 * mmu_stress workload (faults racing mprotect(), memslot deletions, a
 * munmap; zaps made to yield by the test_zap_resched hook), then aging by
 * test_young and by page_idle's clear_young, with
 * the events of this space only (a filter on its id), in a buffer that
 * drops rather than overwrites: every statistic's delta must equal what
 * its events add up to.
 */
#define TRACEFS		"/sys/kernel/tracing"
#define TRACE_INST	TRACEFS "/instances/secmmu_trace_counts"

enum {
	FO_INSTALLED, FO_WP_FIXED, FO_AF_FIXED, FO_RETRY, FO_EAGAIN,
	FO_MEMORY_EXIT, FO_ERROR, FO_NR
};

static const char * const fault_outcomes[FO_NR] = {
	"installed", "wp_fixed", "af_fixed", "retry", "eagain", "memory_exit",
	"error",
};

struct trace_counts {
	unsigned long long inval_start, inval_end, zaps, zap_leaves, zap_yields;
	unsigned long long faults[FO_NR];
	unsigned long long flushes, flushes_elided;
	unsigned long long aging, aging_young, aging_lockless;
	unsigned long long splits, collapses, bbm, other_space, unknown;
};

static int trace_write(const char *file, const char *val)
{
	char path[256];

	snprintf(path, sizeof(path), TRACE_INST "/%s", file);
	return write_file(path, val);
}

/* The trace of the instance, as text (malloc'ed), or NULL. */
static char *trace_read(void)
{
	size_t len = 0, cap = 1 << 20;
	char *buf = malloc(cap);
	int fd = open(TRACE_INST "/trace", O_RDONLY);
	ssize_t n;

	if (fd < 0 || !buf) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
		len += n;
		if (cap - len < 4096) {
			char *more = realloc(buf, cap * 2);

			if (!more)
				break;
			buf = more;
			cap *= 2;
		}
	}
	close(fd);
	buf[len] = 0;
	return buf;
}

/* Events the instance lost: dropped or overrun, over every CPU. */
static unsigned long long trace_lost(void)
{
	unsigned long long lost = 0, v;
	char path[256], line[128];
	int cpu;

	for (cpu = 0; cpu < 64; cpu++) {
		FILE *f;

		snprintf(path, sizeof(path), TRACE_INST "/per_cpu/cpu%d/stats", cpu);
		f = fopen(path, "r");
		if (!f)
			break;
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "overrun: %llu", &v) == 1 ||
			    sscanf(line, "dropped events: %llu", &v) == 1)
				lost += v;
		fclose(f);
	}
	return lost;
}

/* The id of the space whose vCPU faulted on @gfn, per the trace, or -1. */
static long trace_space_of(const char *text, unsigned long long gfn)
{
	const char *p = text;
	unsigned long long g;
	unsigned int space, vcpu;

	while ((p = strstr(p, ": secmmu_fault: "))) {
		p += strlen(": secmmu_fault: ");
		if (sscanf(p, "space %u vcpu %u gfn %llx", &space, &vcpu, &g) == 3 &&
		    g == gfn)
			return space;
	}
	return -1;
}

/* Adds up the events of space @id in @text, which it splits into lines. */
static void trace_count(char *text, unsigned int id, struct trace_counts *c)
{
	char *line, *save = NULL;

	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *p = strstr(line, ": secmmu_");
		unsigned long long a, b, n, y;
		char ev[32], w[16], o[16];
		unsigned int space, u, lvl;
		int i;

		if (!p)
			continue;
		if (sscanf(p + 2, "%31[^:]: space %u", ev, &space) != 2) {
			c->unknown++;
			continue;
		}
		if (space != id) {
			c->other_space++;
			continue;
		}
		p = strchr(p + 2, ':') + 2;
		if (!strcmp(ev, "secmmu_invalidate_range_start")) {
			c->inval_start++;
		} else if (!strcmp(ev, "secmmu_invalidate_range_end")) {
			c->inval_end++;
		} else if (!strcmp(ev, "secmmu_zap")) {
			if (sscanf(p, "space %u slot %u gfn %llx-%llx leaves %llu yields %llu",
				   &space, &u, &a, &b, &n, &y) != 6) {
				c->unknown++;
				continue;
			}
			c->zaps++;
			c->zap_leaves += n;
			c->zap_yields += y;
		} else if (!strcmp(ev, "secmmu_fault")) {
			if (sscanf(p, "space %u vcpu %u gfn %llx level %u %15s %15s",
				   &space, &u, &a, &lvl, w, o) != 6) {
				c->unknown++;
				continue;
			}
			for (i = 0; i < FO_NR; i++)
				if (!strcmp(o, fault_outcomes[i]))
					break;
			if (i == FO_NR)
				c->unknown++;
			else
				c->faults[i]++;
		} else if (!strcmp(ev, "secmmu_age") || !strcmp(ev, "secmmu_test_young")) {
			/* "space N hva A[-B][ flush] young|old[ lockless]" */
			c->aging++;
			if (strstr(p, " young"))
				c->aging_young++;
			if (strstr(p, " lockless"))
				c->aging_lockless++;
		} else if (!strcmp(ev, "secmmu_tlb_flush")) {
			if (strstr(p, " elided"))
				c->flushes_elided++;
			else
				c->flushes++;
		} else if (!strcmp(ev, "secmmu_split")) {
			c->splits++;
		} else if (!strcmp(ev, "secmmu_collapse")) {
			c->collapses++;
		} else if (!strcmp(ev, "secmmu_bbm")) {
			c->bbm++;
		} else {
			c->unknown++;
		}
	}
}

/* Empties the instance's buffer. */
static int trace_clear(void)
{
	int fd = open(TRACE_INST "/trace", O_WRONLY | O_TRUNC);

	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* Clears young through page_idle for @n pages at @mem; returns how many. */
static int page_idle_clear(char *mem, int n)
{
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	int i, done = 0;

	for (i = 0; pagemap >= 0 && bitmap >= 0 && i < n; i++) {
		__u64 e, pfn, word;

		if (pread(pagemap, &e, 8, ((uintptr_t)(mem + i * PAGE_SZ) / PAGE_SZ) * 8) != 8 ||
		    !(e & (1ULL << 63)))
			continue;
		pfn = e & ((1ULL << 55) - 1);
		word = 1ULL << (pfn % 64);
		/* Setting the idle bit clears young through the notifiers. */
		if (pwrite(bitmap, &word, 8, pfn / 64 * 8) == 8)
			done++;
	}
	if (pagemap >= 0)
		close(pagemap);
	if (bitmap >= 0)
		close(bitmap);
	return done;
}

TEST_F_TIMEOUT(fmt, trace_counts, 300)
{
	struct secmmu_stats b, a;
	struct trace_counts c = {};
	struct stress_vcpu v[2] = {};
	char *text, filter[32];
	long id;
	int fd, i, step, idle;
	char *mem;

	if (access(TRACEFS "/events/secmmu", F_OK)) {
		mount("nodev", TRACEFS, "tracefs", 0, NULL);
		if (access(TRACEFS "/events/secmmu", F_OK))
			SKIP(return, "no secmmu trace events (kernel without TRACING?)");
	}
	rmdir(TRACE_INST);
	ASSERT_EQ(0, mkdir(TRACE_INST, 0755)) TH_LOG("%s: %s", TRACE_INST, strerror(errno));
	ASSERT_EQ(0, trace_write("buffer_size_kb", "16384"));
	ASSERT_EQ(0, trace_write("options/overwrite", "0"));
	ASSERT_EQ(0, trace_write("events/secmmu/enable", "1"));

	step = mmu_stress_setup(variant->format, v, &fd, &mem);
	ASSERT_EQ(0, step);
	/* The space's id: the one of the fault on the first gfn. */
	ASSERT_EQ(0, run_range(v[0].vcpu, SECMMU_RUN_READ, GPA_BASE, GPA_BASE + PAGE_SZ,
			       PAGE_SZ, 0, NULL));
	text = trace_read();
	ASSERT_NE(NULL, text);
	id = trace_space_of(text, GPA_BASE / PAGE_SZ);
	free(text);
	ASSERT_GE(id, 0) TH_LOG("no secmmu_fault on gfn %#lx in the trace", GPA_BASE / PAGE_SZ);
	snprintf(filter, sizeof(filter), "space == %ld", id);
	ASSERT_EQ(0, trace_write("events/secmmu/filter", filter));
	ASSERT_EQ(0, trace_clear());

	/* Zaps yield too: every other time they ask. */
	write_file(ZAP_RESCHED_PARAM, "2");
	b = get_stats(fd);
	step = mmu_stress_phases(v, mem);
	EXPECT_EQ(0, step) TH_LOG("failed at step %d", step);
	for (i = 0; i < 64; i++)
		test_young(fd, mem + i * PAGE_SZ);
	idle = page_idle_clear(mem + 64 * PAGE_SZ, 64);
	step = mmu_stress_teardown(fd, mem);
	EXPECT_EQ(0, step) TH_LOG("failed at step %d", step);
	a = get_stats(fd);
	ASSERT_EQ(0, trace_write("tracing_on", "0"));
	write_file(ZAP_RESCHED_PARAM, "0");

	EXPECT_EQ(0, trace_lost()) TH_LOG("the trace buffer lost events: make it larger");
	text = trace_read();
	ASSERT_NE(NULL, text);
	trace_count(text, id, &c);
	free(text);
	TH_LOG("%s space %ld: %llu faults, %llu retries, %llu eagain, %llu invalidations",
	       format_name(variant->format), id,
	       c.faults[FO_INSTALLED] + c.faults[FO_WP_FIXED], c.faults[FO_RETRY],
	       c.faults[FO_EAGAIN], c.inval_start);
	TH_LOG("%llu zaps of %llu leaves (%llu yields), %llu+%llu elided flushes",
	       c.zaps, c.zap_leaves, c.zap_yields, c.flushes, c.flushes_elided);
	TH_LOG("%llu aging (%llu young, %llu lockless; idle %d)",
	       c.aging, c.aging_young, c.aging_lockless, idle);
	TH_LOG("%llu split, %llu collapse, %llu bbm", c.splits, c.collapses, c.bbm);
	EXPECT_EQ(0, c.unknown);
	EXPECT_EQ(0, c.other_space);
	EXPECT_EQ(a.faults - b.faults, c.faults[FO_INSTALLED] + c.faults[FO_WP_FIXED]);
	EXPECT_EQ(a.fault_retries - b.fault_retries, c.faults[FO_RETRY]);
	EXPECT_EQ(a.fault_eagain - b.fault_eagain, c.faults[FO_EAGAIN]);
	EXPECT_EQ(a.memory_faults - b.memory_faults, c.faults[FO_MEMORY_EXIT]);
	EXPECT_EQ(a.access_restores - b.access_restores +
		  a.access_flag_faults - b.access_flag_faults, c.faults[FO_AF_FIXED]);
	EXPECT_EQ(0, c.faults[FO_ERROR]);
	EXPECT_EQ(a.invalidations - b.invalidations, c.inval_start);
	EXPECT_EQ(c.inval_start, c.inval_end);
	EXPECT_EQ(a.sptes_zapped - b.sptes_zapped, c.zap_leaves);
	EXPECT_EQ(a.zap_yields - b.zap_yields, c.zap_yields);
	EXPECT_EQ(a.tlb_flushes - b.tlb_flushes, c.flushes);
	EXPECT_EQ(a.tlb_flushes_elided - b.tlb_flushes_elided, c.flushes_elided);
	EXPECT_EQ(a.aging_calls - b.aging_calls, c.aging);
	EXPECT_EQ(a.aging_young - b.aging_young, c.aging_young);
	EXPECT_EQ(a.aging_lockless - b.aging_lockless, c.aging_lockless);
	EXPECT_EQ(a.splits - b.splits, c.splits);
	EXPECT_EQ(a.collapses - b.collapses, c.collapses);
	EXPECT_EQ(a.bbm - b.bbm, c.bbm);
	/* The workload did each of these: counts of nothing prove nothing. */
	EXPECT_GT(c.faults[FO_INSTALLED], 0);
	EXPECT_GT(c.inval_start, 0);
	EXPECT_GT(c.zap_leaves, 0);
	EXPECT_GT(c.zap_yields, 0);
	EXPECT_GT(c.flushes, 0);
	EXPECT_GE(c.aging, 64);

	trace_write("events/secmmu/enable", "0");
	for (i = 0; i < 2; i++)
		close(v[i].vcpu);
	close(fd);
	munmap(mem + STRESS_SZ / 2, STRESS_SZ / 2);
	rmdir(TRACE_INST);
}

/*
 * munmap of 1 GiB of 4K mappings (divided by SECMMU_TEST_SCALE): the zap
 * walks 262144 rmaps (x86) or the tables over the range (arm64) and must
 * yield the MMU lock (cond_resched) when another task wants the CPU, then
 * go on where it stopped and zap everything. The scheduler asks only when
 * the zap outlasts a slice, which TCG does not promise, so the debugfs
 * hook test_zap_resched asks at every 8th safe point: what is tested is
 * what the zap does once asked. After the munmap no leaf may be left, and
 * the MMU must not have been taken by anyone else at the unsafe points
 * (the vCPU faults the memory back in, coherently, afterwards).
 */
TEST_F_TIMEOUT(fmt, zap_yield, 180)
{
	const unsigned long size = SZ_1G / test_scale(), npages = size / PAGE_SZ;
	struct secmmu_stats before, after;
	struct secmmu_audit a;
	int fd, vcpu;
	char *mem;

	if (access(ZAP_RESCHED_PARAM, W_OK))
		SKIP(return, "no %s", ZAP_RESCHED_PARAM);
	fd = space_create(variant->format, 1, 0);
	ASSERT_GE(fd, 0);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, mem);
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, size, mem));
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, GPA_BASE, GPA_BASE + size,
			       PAGE_SZ, 0, NULL));
	before = get_stats(fd);
	/* Every page mapped, by a fault or around one. */
	ASSERT_EQ(npages, before.faults + stat_named(fd, SECMMU_GET_STATS_FD, "fault_around"));

	ASSERT_EQ(0, write_file(ZAP_RESCHED_PARAM, "8"));
	ASSERT_EQ(0, munmap(mem, size));
	ASSERT_EQ(0, write_file(ZAP_RESCHED_PARAM, "0"));
	after = get_stats(fd);
	TH_LOG("zapped %llu SPTEs, %llu yields, %llu TLB flushes",
	       after.sptes_zapped - before.sptes_zapped,
	       after.zap_yields - before.zap_yields,
	       after.tlb_flushes - before.tlb_flushes);
	EXPECT_GE(after.sptes_zapped - before.sptes_zapped, npages);
	EXPECT_GT(after.zap_yields, before.zap_yields);
	/* A yield flushes what it zapped first: a flush per yield. */
	EXPECT_GE(after.tlb_flushes - before.tlb_flushes,
		  after.zap_yields - before.zap_yields);
	ASSERT_EQ(0, audit_space(fd, &a));
	EXPECT_EQ(0, a.leaves);
	EXPECT_EQ(0, a.pages_4k + a.pages_2m + a.pages_1g);

	/* Mapped again at the same place, the memory faults back in. */
	ASSERT_EQ(mem, mmap(mem, size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + size, PAGE_SZ, 0, NULL));
	expect_coherent(_metadata, fd);
	close(vcpu);
	close(fd);
	munmap(mem, size);
}

/*
 * The module-wide table page count, once it reads @want (if nonzero) or
 * stops changing: a space a previous test's process left behind is torn
 * down by its exit, which may still be running.
 */
static struct secmmu_stats settled_stats(int probe, unsigned long long want)
{
	struct secmmu_stats s = get_stats(probe), prev;
	int i;

	for (i = 0; i < 50; i++) {
		usleep(100 * 1000);
		prev = s;
		s = get_stats(probe);
		if (want ? s.module_table_pages == want :
			   s.module_table_pages == prev.module_table_pages)
			break;
	}
	return s;
}

/* One vCPU thread of parallel_fault_race: waits at the barrier, then runs. */
struct racer {
	int vcpu;
	unsigned int op;
	unsigned long start, end, pattern;
	pthread_barrier_t *barrier;
	int ret;
	unsigned long mismatches;
};

static void *racer_fn(void *arg)
{
	struct racer *r = arg;
	struct secmmu_run out;

	pthread_barrier_wait(r->barrier);
	r->ret = run_range(r->vcpu, r->op, r->start, r->end, PAGE_SZ, r->pattern,
			   &out);
	r->mismatches = out.mismatches;
	return NULL;
}

/* Runs @op on both vCPUs over the same range at the same moment. */
static int race_pass(int vcpus[2], unsigned int op, unsigned long start,
		     unsigned long end, unsigned long pattern,
		     unsigned long *mismatches)
{
	pthread_barrier_t barrier;
	struct racer r[2];
	pthread_t t[2];
	int i, ret = 0;

	pthread_barrier_init(&barrier, NULL, 2);
	for (i = 0; i < 2; i++) {
		r[i] = (struct racer){ .vcpu = vcpus[i], .op = op, .start = start,
				       .end = end, .pattern = pattern,
				       .barrier = &barrier };
		pthread_create(&t[i], NULL, racer_fn, &r[i]);
	}
	*mismatches = 0;
	for (i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
		ret = ret ?: r[i].ret;
		*mismatches += r[i].mismatches;
	}
	pthread_barrier_destroy(&barrier);
	return ret;
}

/*
 * Two vCPUs fault the same never-mapped gfns at the same time, reading,
 * then writing, round after round: each round's slot lies in a new 1 GiB
 * of guest-physical space, so the faults also race to install the tables
 * at every level. On stage-2 the faults run in parallel under the read
 * side of the MMU lock: losers of a table install reuse the winner's
 * table; losers of a leaf install back off (-EAGAIN) and fault again.
 * The data must be right, and every table page must come back once the
 * space is gone, the losers' included.
 */
#define RACE_ROUNDS	48
#define RACE_PAGES	512UL

/*
 * The race above, in a space configured with @cfg: with fault-around, a
 * vCPU's fault also installs leaves the other vCPU is faulting at the same
 * time, in the same table.
 */
static void parallel_race(struct __test_metadata *_metadata, unsigned int format,
			  unsigned int cfg)
{
	const unsigned long size = RACE_PAGES * PAGE_SZ;
	const unsigned long rounds = RACE_ROUNDS / test_scale() ?: 1;
	unsigned long round, i, bad, roots;
	struct secmmu_stats base, st;
	int probe, fd, vcpus[2];
	__u64 around;
	char *mem;

	/* A space without tables, to read the module-wide count with. */
	probe = open("/dev/secmmu", O_RDWR);
	ASSERT_GE(probe, 0);
	base = settled_stats(probe, 0);

	fd = space_create(format, 1, cfg);
	ASSERT_GE(fd, 0);
	roots = get_stats(fd).table_pages;
	for (i = 0; i < 2; i++) {
		vcpus[i] = vcpu_create(fd, 0);
		ASSERT_GE(vcpus[i], 0);
	}
	for (round = 0; round < rounds; round++) {
		unsigned long gpa = (round + 1) * SZ_1G;

		mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT_NE(MAP_FAILED, mem);
		for (i = 0; i < RACE_PAGES; i++)
			*(uint64_t *)(mem + i * PAGE_SZ) = round ^ (gpa + i * PAGE_SZ);
		ASSERT_EQ(0, set_slot(fd, 0, 0, gpa, size, mem));
		ASSERT_EQ(0, race_pass(vcpus, SECMMU_RUN_VERIFY, gpa, gpa + size,
				       round, &bad));
		EXPECT_EQ(0, bad) TH_LOG("round %lu: reads saw wrong data", round);
		ASSERT_EQ(0, race_pass(vcpus, SECMMU_RUN_WRITE, gpa, gpa + size,
				       ~round, &bad));
		for (i = 0; i < RACE_PAGES; i++)
			bad += *(uint64_t *)(mem + i * PAGE_SZ) != (~round ^ (gpa + i * PAGE_SZ));
		EXPECT_EQ(0, bad) TH_LOG("round %lu: the host saw wrong data", round);
		ASSERT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
		ASSERT_EQ(0, munmap(mem, size));
	}
	st = get_stats(fd);
	around = stat_named(fd, SECMMU_GET_STATS_FD, "fault_around");
	TH_LOG("%s: %llu faults, %llu leaves around them, %llu -EAGAIN retries",
	       format_name(format), st.faults, around, st.fault_eagain);
	TH_LOG("%llu invalidation retries, %llu table pages", st.fault_retries, st.table_pages);
	/* Each page is mapped by a fault (or around one, if on). */
	EXPECT_GE(st.faults + around, rounds * RACE_PAGES);
	EXPECT_EQ(!(cfg & SECMMU_CFG_NO_FAULT_AROUND), around > 0);
	/*
	 * Each round's slot deletion zapped its GiB, and freed the tables it
	 * emptied, in either format: only the roots are left.
	 */
	EXPECT_EQ(roots, st.table_pages);
	EXPECT_GT(get_stats(probe).module_table_pages, base.module_table_pages);
	for (i = 0; i < 2; i++)
		close(vcpus[i]);
	close(fd);
	st = settled_stats(probe, base.module_table_pages);
	EXPECT_EQ(base.module_table_pages, st.module_table_pages);
	close(probe);
}

TEST_F_TIMEOUT(fmt, parallel_fault_race, 180)
{
	parallel_race(_metadata, variant->format, SECMMU_CFG_NO_FAULT_AROUND);
}

TEST_F_TIMEOUT(fmt, parallel_fault_around_race, 180)
{
	parallel_race(_metadata, variant->format, 0);
}

/*
 * Huge mappings. The secondary MMU maps a gfn range with a 2M or 1G entry
 * (x86 large SPTE, arm64 stage-2 block) only where the primary maps the
 * memory at least that large and the slot's guest and user addresses are
 * aligned alike.
 */
/*
 * Tables a zap leaves empty are freed after the TLB flush, in either format
 * (stage-2 as KVM's arm64 unmap does, x86 as KVM's shadow MMU zaps the
 * shadow pages of a deleted memslot); the next faults link new ones. A zap
 * that leaves a table in use frees nothing.
 */
TEST_F(fmt, empty_tables_freed)
{
	const unsigned long size = 4 * SZ_1M, gpa = 2 * SZ_1G;
	unsigned long roots, mapped, i;
	struct secmmu_stats st;
	struct secmmu_run r;
	int fd, vcpu;
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(MAP_FAILED, mem);
	/* 4K pages: two leaf tables under one 1G table in either format. */
	ASSERT_EQ(0, madvise(mem, size, MADV_NOHUGEPAGE));
	fd = space_create(variant->format, 1, 0);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(0, set_slot(fd, 0, 0, gpa, size, mem));
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);
	roots = get_stats(fd).table_pages;
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, gpa, gpa + size,
			       PAGE_SZ, 1, NULL));
	mapped = get_stats(fd).table_pages;
	EXPECT_LE(roots + 3, mapped);

	/* One page: its leaf table still maps the others. */
	ASSERT_EQ(0, madvise(mem + SZ_1M, PAGE_SZ, MADV_DONTNEED));
	EXPECT_EQ(mapped, get_stats(fd).table_pages);
	/* All of it. */
	ASSERT_EQ(0, madvise(mem, size, MADV_DONTNEED));
	st = get_stats(fd);
	EXPECT_EQ(size / PAGE_SZ, st.sptes_zapped);
	EXPECT_EQ(roots, st.table_pages);
	/* Faults link tables again, and the data is the host's. */
	for (i = 0; i < size / PAGE_SZ; i++)
		*(uint64_t *)(mem + i * PAGE_SZ) = 5 ^ (gpa + i * PAGE_SZ);
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_VERIFY, gpa, gpa + size,
			       PAGE_SZ, 5, &r));
	EXPECT_EQ(0, r.mismatches);
	EXPECT_EQ(mapped, get_stats(fd).table_pages);
	/* Deleting the slot zaps all of it too. */
	ASSERT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
	EXPECT_EQ(roots, get_stats(fd).table_pages);
	close(vcpu);
	close(fd);
	munmap(mem, size);
}

#define HUGE_GPA	SZ_1G
#define HUGE_SIZE	(2 * SZ_2M)
#define HUGE_PAGES	(HUGE_SIZE / PAGE_SZ)

static unsigned char huge_snap[SZ_1G / PAGE_SZ];

/*
 * The level the format maps a 2M (@level 1) or 1G (2) host page at: the
 * same in both formats (kept as a function to say so where it matters).
 */
static unsigned int huge_level(unsigned int format, unsigned int level)
{
	return format == SECMMU_FMT_X86_EPT4 || format == SECMMU_FMT_ARM64_S2 ?
	       level : 0;
}

/* Host writes pattern ^ gpa in the first word of each page of @mem. */
static void host_fill(char *mem, unsigned long size, unsigned long gpa,
		      unsigned long pattern)
{
	unsigned long off;

	for (off = 0; off < size; off += PAGE_SZ)
		*(uint64_t *)(mem + off) = pattern ^ (gpa + off);
}

/* THP-backed memory of @size (2M-aligned), all PMD-mapped, or NULL. */
static char *thp_alloc(unsigned long size)
{
	char *mem = mmap_2m_aligned(size, MADV_HUGEPAGE);

	if (!mem)
		return NULL;
	host_fill(mem, size, HUGE_GPA, 0);
	if (anon_huge_kb(mem) < (long)(size / 1024)) {
		munmap(mem, size);
		return NULL;
	}
	return mem;
}

/* Pages of [gpa, gpa + npages) mapped, and how many of them at @level. */
static unsigned long mapped_at(int fd, unsigned long gpa, unsigned long npages,
			       unsigned int level, unsigned long *present)
{
	unsigned long i, n = 0;

	*present = 0;
	if (snapshot(fd, 0, gpa, npages, huge_snap))
		return 0;
	for (i = 0; i < npages; i++) {
		if (!(huge_snap[i] & PRESENT))
			continue;
		(*present)++;
		n += SECMMU_SNAP_LEVEL(huge_snap[i]) == level;
	}
	return n;
}

/* Guest pages of [gpa, gpa + size) whose first word is not pattern ^ gpa. */
static long guest_bad(int vcpu, unsigned long gpa, unsigned long size,
		      unsigned long pattern)
{
	struct secmmu_run r;
	int ret = run_range(vcpu, SECMMU_RUN_VERIFY, gpa, gpa + size, PAGE_SZ,
			    pattern, &r);

	return ret ? ret : (long)r.mismatches;
}

#define HUGE_SETUP(mem, size, gpa)					\
	int fd, vcpu;							\
	fd = space_create(variant->format, 1, 0);			\
	ASSERT_GE(fd, 0);						\
	ASSERT_EQ(0, set_slot(fd, 0, 0, gpa, size, mem));		\
	vcpu = vcpu_create(fd, 0);					\
	ASSERT_GE(vcpu, 0)

#define HUGE_TEARDOWN()	do {						\
	expect_coherent(_metadata, fd);					\
	close(vcpu);							\
	close(fd);							\
} while (0)

/* A 2M-aligned THP-backed slot maps with 2M entries. */
TEST_F(fmt, thp_map)
{
	unsigned int lvl = huge_level(variant->format, 1);
	unsigned long present;
	struct secmmu_stats st;
	char *mem = thp_alloc(HUGE_SIZE);

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	HUGE_SETUP(mem, HUGE_SIZE, HUGE_GPA);
	EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA, HUGE_SIZE, 0));
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA,
			       HUGE_GPA + HUGE_SIZE, PAGE_SZ, 7, NULL));
	EXPECT_EQ(HUGE_PAGES, mapped_at(fd, HUGE_GPA, HUGE_PAGES, lvl, &present));
	EXPECT_EQ(HUGE_PAGES, present);
	EXPECT_EQ(HUGE_PAGES, count_bits(huge_snap, HUGE_PAGES, PRESENT | WRITABLE));
	st = get_stats(fd);
	if (lvl) {
		EXPECT_EQ(2, st.mappings_2m);
		EXPECT_EQ(0, st.mappings_4k);
		/* A read fault, then a write upgrade, per 2M. */
		EXPECT_LE(st.faults, 4);
	} else {
		EXPECT_EQ(HUGE_PAGES, st.mappings_4k);
	}
	{
		unsigned long off, bad = 0;

		for (off = 0; off < HUGE_SIZE; off += PAGE_SZ)
			bad += *(uint64_t *)(mem + off) != (7 ^ (HUGE_GPA + off));
		EXPECT_EQ(0, bad);
	}
	HUGE_TEARDOWN();
	munmap(mem, HUGE_SIZE);
}

/* The same memory, with guest and user addresses aligned differently: 4K. */
TEST_F(fmt, misaligned_slot)
{
	unsigned long present, gpa = HUGE_GPA + PAGE_SZ;
	char *mem = thp_alloc(HUGE_SIZE);

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	host_fill(mem, HUGE_SIZE, gpa, 3);
	HUGE_SETUP(mem, HUGE_SIZE, gpa);
	EXPECT_EQ(0, guest_bad(vcpu, gpa, HUGE_SIZE, 3));
	EXPECT_EQ(HUGE_PAGES, mapped_at(fd, gpa, HUGE_PAGES, 0, &present));
	EXPECT_EQ(HUGE_PAGES, present);
	EXPECT_EQ(0, get_stats(fd).mappings_2m);
	HUGE_TEARDOWN();
	munmap(mem, HUGE_SIZE);
}

/*
 * munmap of 4K inside a huge mapping: that page faults with -EFAULT, the
 * rest still reads the right data (mapped again as the primary maps it).
 */
TEST_F(fmt, partial_munmap)
{
	const unsigned long hole = SZ_2M + 5 * PAGE_SZ;
	unsigned long present, n;
	struct secmmu_run r;
	char *mem = thp_alloc(HUGE_SIZE);

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	host_fill(mem, HUGE_SIZE, HUGE_GPA, 0x77);
	HUGE_SETUP(mem, HUGE_SIZE, HUGE_GPA);
	ASSERT_EQ(0, guest_bad(vcpu, HUGE_GPA, HUGE_SIZE, 0x77));
	EXPECT_EQ(HUGE_PAGES, mapped_at(fd, HUGE_GPA, HUGE_PAGES,
					huge_level(variant->format, 1), &present));
	ASSERT_EQ(0, munmap(mem + hole, PAGE_SZ));
	/*
	 * The hole is not mapped; on x86 the whole 2M entry around it went,
	 * and the other one stays.
	 */
	n = mapped_at(fd, HUGE_GPA, HUGE_PAGES, huge_level(variant->format, 1),
		      &present);
	EXPECT_EQ(0, huge_snap[hole / PAGE_SZ] & PRESENT);
	if (huge_level(variant->format, 1)) {
		EXPECT_EQ(SZ_2M / PAGE_SZ, n);
		EXPECT_EQ(SZ_2M / PAGE_SZ, present);
	}
	EXPECT_EQ(-EFAULT, run_range(vcpu, SECMMU_RUN_READ, HUGE_GPA + hole,
				     HUGE_GPA + hole + PAGE_SZ, PAGE_SZ, 0, &r));
	EXPECT_EQ(HUGE_GPA + hole, r.exit_gpa);
	EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA, hole, 0x77));
	EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA + hole + PAGE_SZ,
			       HUGE_SIZE - hole - PAGE_SZ, 0x77));
	/* The second 2M is PTE-mapped by the primary now: 4K there. */
	EXPECT_EQ(SZ_2M / PAGE_SZ - 1,
		  mapped_at(fd, HUGE_GPA + SZ_2M, SZ_2M / PAGE_SZ, 0, &present));
	HUGE_TEARDOWN();
	munmap(mem, hole);
	munmap(mem + hole + PAGE_SZ, HUGE_SIZE - hole - PAGE_SZ);
}

/* mprotect RO of 4K inside: writes there fault, writes elsewhere work. */
TEST_F(fmt, partial_mprotect)
{
	const unsigned long ro = 3 * PAGE_SZ;
	unsigned long present;
	struct secmmu_run r;
	char *mem = thp_alloc(HUGE_SIZE);

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	HUGE_SETUP(mem, HUGE_SIZE, HUGE_GPA);
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA,
			       HUGE_GPA + HUGE_SIZE, PAGE_SZ, 1, NULL));
	ASSERT_EQ(0, mprotect(mem + ro, PAGE_SZ, PROT_READ));
	EXPECT_EQ(-EFAULT, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA + ro,
				     HUGE_GPA + ro + PAGE_SZ, PAGE_SZ, 2, &r));
	EXPECT_EQ(HUGE_GPA + ro, r.exit_gpa);
	EXPECT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA,
			       HUGE_GPA + ro, PAGE_SZ, 2, NULL));
	EXPECT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA + ro + PAGE_SZ,
			       HUGE_GPA + HUGE_SIZE, PAGE_SZ, 2, NULL));
	/* The read-only page still reads, and kept the old data. */
	EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA + ro, PAGE_SZ, 1));
	EXPECT_EQ(1 ^ (HUGE_GPA + ro), *(uint64_t *)(mem + ro));
	EXPECT_EQ(2 ^ HUGE_GPA, *(uint64_t *)mem);
	/* Around the read-only page, 4K: the primary maps it with PTEs. */
	EXPECT_EQ(SZ_2M / PAGE_SZ, mapped_at(fd, HUGE_GPA, SZ_2M / PAGE_SZ, 0,
					     &present));
	EXPECT_EQ(0, huge_snap[3] & WRITABLE);
	HUGE_TEARDOWN();
	munmap(mem, HUGE_SIZE);
}

/* A THP the primary maps with PTEs is mapped 4K, never from the folio size. */
TEST_F(fmt, pte_mapped_thp)
{
	unsigned long present;
	char *mem = thp_alloc(SZ_2M);

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	/* Split the PMD, not the folio: mprotect of part, then back. */
	ASSERT_EQ(0, mprotect(mem + PAGE_SZ, PAGE_SZ, PROT_READ));
	ASSERT_EQ(0, mprotect(mem + PAGE_SZ, PAGE_SZ, PROT_READ | PROT_WRITE));
	/* And keep khugepaged from mapping it with a PMD again meanwhile. */
	ASSERT_EQ(0, madvise(mem, SZ_2M, MADV_NOHUGEPAGE));
	EXPECT_EQ(0, anon_huge_kb(mem));
	host_fill(mem, SZ_2M, HUGE_GPA, 9);
	HUGE_SETUP(mem, SZ_2M, HUGE_GPA);
	EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA, SZ_2M, 9));
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA,
			       HUGE_GPA + SZ_2M, PAGE_SZ, 10, NULL));
	EXPECT_EQ(SZ_2M / PAGE_SZ, mapped_at(fd, HUGE_GPA, SZ_2M / PAGE_SZ, 0,
					     &present));
	EXPECT_EQ(SZ_2M / PAGE_SZ, present);
	EXPECT_EQ(0, get_stats(fd).mappings_2m);
	HUGE_TEARDOWN();
	munmap(mem, SZ_2M);
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* 4K mappings, then MADV_COLLAPSE: the next faults map 2M. */
TEST_F(fmt, collapse)
{
	unsigned int lvl = huge_level(variant->format, 1);
	unsigned long present, tables;
	struct secmmu_stats st;
	char *mem = mmap_2m_aligned(SZ_2M, MADV_NOHUGEPAGE);

	ASSERT_NE(NULL, mem);
	host_fill(mem, SZ_2M, HUGE_GPA, 4);
	HUGE_SETUP(mem, SZ_2M, HUGE_GPA);
	ASSERT_EQ(0, guest_bad(vcpu, HUGE_GPA, SZ_2M, 4));
	EXPECT_EQ(SZ_2M / PAGE_SZ, mapped_at(fd, HUGE_GPA, SZ_2M / PAGE_SZ, 0,
					     &present));
	tables = get_stats(fd).table_pages;
	ASSERT_EQ(0, madvise(mem, SZ_2M, MADV_HUGEPAGE));
	if (madvise(mem, SZ_2M, MADV_COLLAPSE) || anon_huge_kb(mem) < 2048) {
		HUGE_TEARDOWN();
		munmap(mem, SZ_2M);
		SKIP(return, "MADV_COLLAPSE failed: %s", strerror(errno));
	}
	/* The collapse invalidated the range: nothing is mapped. */
	mapped_at(fd, HUGE_GPA, SZ_2M / PAGE_SZ, 0, &present);
	EXPECT_EQ(0, present);
	EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA, SZ_2M, 4));
	EXPECT_EQ(SZ_2M / PAGE_SZ, mapped_at(fd, HUGE_GPA, SZ_2M / PAGE_SZ, lvl,
					     &present));
	st = get_stats(fd);
	if (lvl) {
		EXPECT_EQ(1, st.mappings_2m);
		/*
		 * The 4K table went: the collapse's zap freed it (and the
		 * tables above it left empty), in either format, so the 2M
		 * leaf took an empty entry rather than replacing a table.
		 */
		EXPECT_EQ(0, st.collapses);
		EXPECT_EQ(tables - 1, st.table_pages);
	}
	HUGE_TEARDOWN();
	munmap(mem, SZ_2M);
}

/* One hugetlbfs page of @size, faulted in, or NULL. */
static char *hugetlb_alloc(unsigned long size, int shift)
{
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
			 (shift << MAP_HUGE_SHIFT), -1, 0);

	if (mem == MAP_FAILED)
		return NULL;
	return mem;
}

/* hugetlbfs pages of 2M and 1G map with entries of their size. */
TEST_F(fmt, hugetlb_map)
{
	unsigned long present, n;
	struct secmmu_stats st;
	char *mem = hugetlb_alloc(HUGE_SIZE, 21);

	if (!mem)
		SKIP(return, "no 2M hugetlb pages (hugepages= on the command line)");
	host_fill(mem, HUGE_SIZE, HUGE_GPA, 5);
	{
		HUGE_SETUP(mem, HUGE_SIZE, HUGE_GPA);
		EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA, HUGE_SIZE, 5));
		EXPECT_EQ(HUGE_PAGES, mapped_at(fd, HUGE_GPA, HUGE_PAGES,
						huge_level(variant->format, 1), &present));
		EXPECT_EQ(HUGE_PAGES, present);
		HUGE_TEARDOWN();
	}
	munmap(mem, HUGE_SIZE);

	mem = hugetlb_alloc(SZ_1G, 30);
	if (!mem) {
		TH_LOG("no 1G hugetlb page: 1G not tested");
		return;
	}
	{
		HUGE_SETUP(mem, SZ_1G, SZ_1G);
		/* One word per 2M, written by the host, read by the guest. */
		for (n = 0; n < SZ_1G; n += SZ_2M)
			*(uint64_t *)(mem + n) = 6 ^ (SZ_1G + n);
		ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_VERIFY, SZ_1G, 2 * SZ_1G,
				       SZ_2M, 6, NULL));
		n = mapped_at(fd, SZ_1G, SZ_1G / PAGE_SZ,
			      huge_level(variant->format, 2), &present);
		st = get_stats(fd);
		if (huge_level(variant->format, 2)) {
			EXPECT_EQ(SZ_1G / PAGE_SZ, n);
			EXPECT_EQ(1, st.mappings_1g);
		} else {
			EXPECT_EQ(SZ_1G / SZ_2M, n);
		}
		HUGE_TEARDOWN();
	}
	munmap(mem, SZ_1G);
}

/*
 * Aging of a huge entry over ranges that start inside it (see "Ranges and
 * mapping levels" in Documentation/secmmu-protocols.rst): page_idle on a
 * THP makes the primary clear young over the THP's range, which ages the 2M
 * entry; a later guest access to another 4K page inside the entry makes it
 * young again. test_young of single 4K pages inside the entry, pages the
 * guest never touched, follows the entry's state each time. (The primary
 * always clears young on a PMD-mapped THP over its aligned 2M range;
 * clear_young over a range starting inside a huge entry is checked by the
 * host tests, unaligned_ranges_at_huge_levels.)
 */
TEST_F(fmt, unaligned_huge_range)
{
	int bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	struct secmmu_stats before, after;
	unsigned long present;
	__u64 e, pfn = 0, bits;
	char *mem;

	if (bitmap < 0 || pagemap < 0)
		SKIP(return, "no page_idle or pagemap");
	mem = thp_alloc(SZ_2M);
	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	if (pread(pagemap, &e, 8, (uintptr_t)mem / PAGE_SZ * 8) == 8 &&
	    (e & (1ULL << 63)))
		pfn = e & ((1ULL << 55) - 1);
	ASSERT_NE(0, pfn);
	HUGE_SETUP(mem, SZ_2M, HUGE_GPA);
	/* One guest access maps (and makes young) the whole 2M entry. */
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, HUGE_GPA, HUGE_GPA + 8, 8,
			       0, NULL));
	EXPECT_EQ(huge_level(variant->format, 1) ? SZ_2M / PAGE_SZ : 1,
		  mapped_at(fd, HUGE_GPA, SZ_2M / PAGE_SZ,
			    huge_level(variant->format, 1), &present));
	/*
	 * test_young of one 4K page in the middle of the entry: the range
	 * starts inside the 2M entry, on a page the guest never touched, and
	 * the entry's accessed state answers for it.
	 */
	if (huge_level(variant->format, 1))
		EXPECT_EQ(1, test_young(fd, mem + SZ_1M + 2 * PAGE_SZ));
	before = get_stats(fd);
	bits = 1ULL << (pfn % 64);
	ASSERT_EQ(8, pwrite(bitmap, &bits, 8, pfn / 64 * 8));
	after = get_stats(fd);
	EXPECT_GT(after.aging_calls, before.aging_calls);
	EXPECT_GE(after.aging_cleared, before.aging_cleared + 1);
	ASSERT_EQ(0, snapshot(fd, 0, HUGE_GPA, 1, huge_snap));
	EXPECT_EQ(0, huge_snap[0] & SECMMU_SNAP_ACCESSED);
	EXPECT_EQ(0, test_young(fd, mem + SZ_1M + 2 * PAGE_SZ));
	EXPECT_EQ(0, test_young(fd, mem));
	/* The guest touches another 4K page of the entry: young again. */
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, HUGE_GPA + SZ_1M + PAGE_SZ,
			       HUGE_GPA + SZ_1M + PAGE_SZ + 8, 8, 0, NULL));
	ASSERT_EQ(0, snapshot(fd, 0, HUGE_GPA, 1, huge_snap));
	if (huge_level(variant->format, 1)) {
		EXPECT_NE(0, huge_snap[0] & SECMMU_SNAP_ACCESSED);
		/* Pages the guest did not touch, on either side of it. */
		EXPECT_EQ(1, test_young(fd, mem + SZ_1M + 2 * PAGE_SZ));
		EXPECT_EQ(1, test_young(fd, mem + PAGE_SZ));
	}
	ASSERT_EQ(8, pread(bitmap, &bits, 8, pfn / 64 * 8));
	EXPECT_EQ(0, bits & (1ULL << (pfn % 64)));
	HUGE_TEARDOWN();
	munmap(mem, SZ_2M);
	close(bitmap);
	close(pagemap);
}

#define BBM_SIZE	(4 * SZ_2M)
#define BBM_ROUNDS	200

struct bbm_vcpu {
	int vcpu, write, ret;
	unsigned long bad;
	int *stop;
};

/* Reads, or writes then reads back, the whole region until told to stop. */
static void *bbm_vcpu_fn(void *arg)
{
	struct bbm_vcpu *v = arg;
	struct secmmu_run r;
	unsigned long pattern = v->write ? 0x5a : 0xa5;

	while (!__atomic_load_n(v->stop, __ATOMIC_RELAXED)) {
		v->ret = run_range(v->vcpu, v->write ? SECMMU_RUN_WRITE :
				   SECMMU_RUN_READ, HUGE_GPA, HUGE_GPA + BBM_SIZE,
				   PAGE_SZ, pattern, &r);
		if (v->ret == -EFAULT || v->ret == -EINTR)
			v->ret = 0;	/* a page DONTNEED'ed under us: retry */
		if (v->ret)
			break;
	}
	return NULL;
}

/*
 * Break-before-make against parallel faults: 2 vCPUs read and write a
 * THP-backed region while the host loops MADV_COLLAPSE and MADV_DONTNEED of
 * single pages inside it, so the secondary MMU keeps replacing tables by
 * blocks and blocks by tables under racing walkers. At the end every page
 * reads what the host sees, the table pages come back at teardown, and on
 * arm64 the break-before-make sequences were counted.
 */
TEST_F_TIMEOUT(fmt, bbm_race, 300)
{
	const unsigned long rounds = BBM_ROUNDS / test_scale() ?: 1;
	struct bbm_vcpu v[2];
	struct secmmu_stats st, base;
	int stop = 0;
	unsigned long round, off, bad = 0, collapsed = 0;
	pthread_t t[2];
	int probe, i;
	char *mem = thp_alloc(BBM_SIZE);

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	probe = open("/dev/secmmu", O_RDWR);
	ASSERT_GE(probe, 0);
	base = settled_stats(probe, 0);
	{
		HUGE_SETUP(mem, BBM_SIZE, HUGE_GPA);
		for (i = 0; i < 2; i++) {
			v[i] = (struct bbm_vcpu){ .write = i, .stop = &stop };
			v[i].vcpu = vcpu_create(fd, 0);
			ASSERT_GE(v[i].vcpu, 0);
			ASSERT_EQ(0, pthread_create(&t[i], NULL, bbm_vcpu_fn, &v[i]));
		}
		for (round = 0; round < rounds; round++) {
			off = (round * 7919 % (BBM_SIZE / PAGE_SZ)) * PAGE_SZ;
			madvise(mem + off, PAGE_SZ, MADV_DONTNEED);
			collapsed += !madvise(mem + (off & ~(SZ_2M - 1)), SZ_2M,
					      MADV_COLLAPSE);
		}
		__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
		for (i = 0; i < 2; i++) {
			pthread_join(t[i], NULL);
			EXPECT_EQ(0, v[i].ret);
		}
		/* Data: the guest reads what the host has, page by page. */
		for (off = 0; off < BBM_SIZE; off += PAGE_SZ)
			*(uint64_t *)(mem + off) = 0x33 ^ (HUGE_GPA + off);
		EXPECT_EQ(0, guest_bad(vcpu, HUGE_GPA, BBM_SIZE, 0x33));
		ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, HUGE_GPA,
				       HUGE_GPA + BBM_SIZE, PAGE_SZ, 0x44, NULL));
		for (off = 0; off < BBM_SIZE; off += PAGE_SZ)
			bad += *(uint64_t *)(mem + off) != (0x44 ^ (HUGE_GPA + off));
		EXPECT_EQ(0, bad);
		st = get_stats(fd);
		TH_LOG("%s: %lu rounds, %lu collapses by the host",
		       format_name(variant->format), rounds, collapsed);
		TH_LOG("%llu 2M maps, %llu splits, %llu collapses, %llu bbm",
		       st.mappings_2m, st.splits, st.collapses, st.bbm);
		TH_LOG("%llu -EAGAIN, %llu invalidation retries",
		       st.fault_eagain, st.fault_retries);
		EXPECT_GT(st.mappings_2m, 0);
		for (i = 0; i < 2; i++)
			close(v[i].vcpu);
		HUGE_TEARDOWN();
	}
	st = settled_stats(probe, base.module_table_pages);
	EXPECT_EQ(base.module_table_pages, st.module_table_pages);
	close(probe);
	munmap(mem, BBM_SIZE);
}

/*
 * Every stage-2 geometry (ia_bits 32 to 48: start level 2, 1 or 0, one to
 * 16 concatenated start-level tables) with every backing: 4K pages, THP,
 * 2M and 1G hugetlb pages (each skipped if the VM has none), in a slot at
 * the bottom and at the top of the guest-physical space. The guest writes
 * then verifies every page (first word, stride 4K), and the first and last
 * words of the slot. A geometry that cannot map what a fault asks for at
 * the level asked (e.g. a 1G block where the start level is 2) must map it
 * smaller; a fault that "succeeds" without mapping the page would fault
 * forever: every RUN has an alarm, whose signal ends it with EINTR. x86
 * has one geometry, 48 bits: it runs the same backings and slots.
 */
enum geo_backing { GEO_4K, GEO_THP, GEO_2M, GEO_1G, GEO_NR };

static const char *const geo_backing_name[GEO_NR] = {
	"4K", "THP", "hugetlb-2M", "hugetlb-1G",
};

/* One RUN of @op over [gpa, gpa + size) by @stride, ended by an alarm. */
static int geo_run(int vcpu, unsigned int op, unsigned long gpa,
		   unsigned long size, unsigned long stride, unsigned long pattern,
		   struct secmmu_run *r)
{
	int ret;

	alarm(10);
	ret = run_range(vcpu, op, gpa, gpa + size, stride, pattern, r);
	alarm(0);
	return ret;
}

/* Writes and verifies the slot; 0, or a description of what went wrong. */
static const char *geo_check(int vcpu, unsigned long gpa, unsigned long size,
			     unsigned long stride, unsigned long pattern,
			     struct secmmu_run *r, int *ret)
{
	const unsigned long ends[2] = { gpa, gpa + size - 8 };
	int i;

	*ret = geo_run(vcpu, SECMMU_RUN_WRITE, gpa, size, stride, pattern, r);
	if (*ret)
		return "write";
	*ret = geo_run(vcpu, SECMMU_RUN_VERIFY, gpa, size, stride, pattern, r);
	if (*ret || r->mismatches)
		return "verify";
	for (i = 0; i < 2; i++) {
		*ret = geo_run(vcpu, SECMMU_RUN_WRITE, ends[i], 8, 8, ~pattern, r);
		if (*ret)
			return "write of an end";
		*ret = geo_run(vcpu, SECMMU_RUN_VERIFY, ends[i], 8, 8, ~pattern, r);
		if (*ret || r->mismatches)
			return "verify of an end";
	}
	return NULL;
}

TEST_F_TIMEOUT(fmt, s2_all_geometries, 600)
{
	int arm64 = variant->format == SECMMU_FMT_ARM64_S2;
	unsigned long size[GEO_NR] = { 2 * SZ_2M, 2 * SZ_2M, 2 * SZ_2M, SZ_1G };
	char *mem[GEO_NR] = {};
	unsigned int ia, b, top, bad = 0, runs = 0;
	double t0 = now_s();

	ASSERT_EQ(0, catch_signal(SIGALRM));
	mem[GEO_4K] = mmap_2m_aligned(size[GEO_4K], MADV_NOHUGEPAGE);
	ASSERT_NE(NULL, mem[GEO_4K]);
	mem[GEO_THP] = thp_alloc(size[GEO_THP]);
	mem[GEO_2M] = hugetlb_alloc(size[GEO_2M], 21);
	mem[GEO_1G] = hugetlb_alloc(size[GEO_1G], 30);
	for (b = 0; b < GEO_NR; b++) {
		/* Fault the hugetlb pages in now: a missing one is a skip. */
		if (mem[b] && madvise(mem[b], size[b], MADV_POPULATE_WRITE)) {
			munmap(mem[b], size[b]);
			mem[b] = NULL;
		}
		if (!mem[b])
			TH_LOG("no %s backing: not tested", geo_backing_name[b]);
	}
	for (ia = arm64 ? 32 : 48; ia <= 48; ia++) {
		for (b = 0; b < GEO_NR; b++) {
			/* 1G: a stride of 4K times the scale (slow guests). */
			unsigned long stride = b == GEO_1G ? PAGE_SZ * test_scale() : PAGE_SZ;

			if (!mem[b])
				continue;
			for (top = 0; top < 2; top++) {
				unsigned long gpa = top ? (1UL << ia) - size[b] : 0;
				const char *what;
				struct secmmu_run r;
				int fd, vcpu, ret;

				fd = space_create_ia(variant->format, 1, 0, arm64 ? ia : 0);
				ASSERT_GE(fd, 0) TH_LOG("ia_bits %u: %s", ia, strerror(-fd));
				ASSERT_EQ(0, set_slot(fd, 0, 0, gpa, size[b], mem[b]));
				vcpu = vcpu_create(fd, 0);
				ASSERT_GE(vcpu, 0);
				what = geo_check(vcpu, gpa, size[b], stride, ia * 4 + b, &r, &ret);
				runs++;
				if (what) {
					bad++;
					TH_LOG("ia_bits %u, %s at %#lx: %s: %s",
					       ia, geo_backing_name[b], gpa, what,
					       ret ? strerror(-ret) : "ok");
					TH_LOG("  exit at %#llx, %llu accesses, %llu bad%s",
					       r.exit_gpa, r.accesses, r.mismatches,
					       ret == -EINTR ? ": livelock" : "");
				}
				expect_coherent(_metadata, fd);
				close(vcpu);
				close(fd);
			}
		}
	}
	TH_LOG("%s: %u geometry/backing/slot combinations in %.1f s, %u failed",
	       format_name(variant->format), runs, now_s() - t0, bad);
	EXPECT_EQ(0, bad);
	for (b = 0; b < GEO_NR; b++)
		if (mem[b])
			munmap(mem[b], size[b]);
}

/*
 * release() of a big space: the process is killed (SIGKILL) while a vCPU
 * thread is in the middle of a RUN, and exit_mmap() calls release(), which
 * must zap everything without hogging the CPU (no soft lockup, no RCU
 * stall). Two spaces, each in its own child: 32 roots over REL_MAPPED of
 * 4K pages (divided by the scale), mapped in every root and once more
 * through an alias slot; and 32 roots over a sparse slot of 512 GiB
 * (MAP_NORESERVE, one page a GiB touched in every root; halved until the
 * slot's bookkeeping fits the VM). The child's exit runs on CPU 0, where
 * the parent spins meanwhile, measuring the longest time it did not get
 * the CPU: an exit that does not yield for long keeps it off. The parent
 * checks that each child died of its SIGKILL, and that gap.
 */
#define REL_MAPPED	(64 * SZ_1M)
#define REL_SPARSE	(512 * SZ_1G)

struct rel_runner {
	int vcpu;
	unsigned long start, end, stride;
};

static void *rel_run_fn(void *arg)
{
	struct rel_runner *r = arg;
	struct secmmu_run run = {
		.op = SECMMU_RUN_READ, .start = r->start, .end = r->end,
		.stride = r->stride, .passes = ~0u,
	};

	vcpu_run(r->vcpu, &run);	/* until the SIGKILL */
	return NULL;
}

/*
 * The child: builds the space, moves to CPU 0, starts vCPU threads, writes
 * a byte to @ready and waits to be killed. Returns (exits with) a step
 * number if something failed.
 */
static int release_child(unsigned int format, int sparse, int ready)
{
	unsigned long size = sparse ? REL_SPARSE : REL_MAPPED / test_scale();
	unsigned long stride = sparse ? SZ_1G : PAGE_SZ;
	unsigned long alias = sparse ? 0 : 1UL << 40;
	struct rel_runner r[2];
	pthread_t t[2];
	int fd, root, vcpu, i, ret;
	char *mem;

	fd = space_create(format, SECMMU_MAX_ROOTS, 0);
	if (fd < 0)
		return 10;
	for (;;) {
		mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (mem == MAP_FAILED)
			return 11;
		madvise(mem, size, MADV_NOHUGEPAGE);
		ret = set_slot(fd, 0, 0, 0, size, mem);
		if (!ret)
			break;
		munmap(mem, size);
		if (ret != -ENOMEM || !sparse || size <= 16 * SZ_1G)
			return 12;
		size /= 2;
	}
	if (alias && set_slot(fd, 1, 0, alias, size, mem))
		return 13;
	printf("# child: %lu MiB slot%s, %s\n", size >> 20,
	       alias ? " and an alias" : "", sparse ? "sparse" : "mapped");
	fflush(stdout);
	for (root = 0; root < SECMMU_MAX_ROOTS; root++) {
		vcpu = vcpu_create(fd, root);
		if (vcpu < 0)
			return 14;
		if (run_range(vcpu, SECMMU_RUN_WRITE, 0, size, stride, root, NULL))
			return 15;
		if (alias && run_range(vcpu, SECMMU_RUN_READ, alias, alias + size,
				       stride, 0, NULL))
			return 16;
		if (root < 2) {
			r[root] = (struct rel_runner){
				.vcpu = vcpu, .start = root ? alias : 0,
				.end = (root ? alias : 0) + size, .stride = stride,
			};
		} else {
			close(vcpu);
		}
	}
	if (pin_to_cpu(0))
		return 17;
	for (i = 0; i < (alias ? 2 : 1); i++)
		if (pthread_create(&t[i], NULL, rel_run_fn, &r[i]))
			return 18;
	if (write(ready, "r", 1) != 1)
		return 19;
	for (;;)
		pause();
}

TEST_F_TIMEOUT(fmt, release_huge_space, 300)
{
	const double max_gap = 0.5 + 0.5 * test_scale();
	int sparse;

	for (sparse = 0; sparse < 2; sparse++) {
		double t0, t1, last, now, gap = 0;
		int pipefd[2], status = 0;
		pid_t pid, got;
		char c;

		ASSERT_EQ(0, pipe(pipefd));
		t0 = now_s();
		pid = fork();
		ASSERT_GE(pid, 0);
		if (pid == 0) {
			close(pipefd[0]);
			_exit(release_child(variant->format, sparse, pipefd[1]));
		}
		close(pipefd[1]);
		if (read(pipefd[0], &c, 1) == 1) {
			ASSERT_EQ(0, pin_to_cpu(0));
			usleep(200000);		/* the vCPUs are in their RUN */
			ASSERT_EQ(0, kill(pid, SIGKILL));
		}
		close(pipefd[0]);
		t1 = now_s();
		last = t1;
		/* Spin on CPU 0 beside the exit; the longest time off it. */
		while ((got = waitpid(pid, &status, WNOHANG)) == 0) {
			now = now_s();
			if (now - last > gap)
				gap = now - last;
			last = now;
		}
		ASSERT_EQ(pid, got);
		EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
			TH_LOG("%s space: the child exited with %d before the kill",
			       sparse ? "sparse" : "mapped",
			       WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		TH_LOG("%s: %s space: set up in %.1f s, exit took %.2f s, CPU 0 kept %.2f s",
		       format_name(variant->format), sparse ? "sparse" : "mapped",
		       t1 - t0, now_s() - t1, gap);
		EXPECT_LT(gap, max_gap)
			TH_LOG("the exit ran %.2f s on CPU 0 without letting it go", gap);
	}
}

/*
 * Fault retries are for invalidations of what the fault maps, and a fault
 * that keeps retrying still answers signals.
 *
 * First, a vCPU faults in 4096 pages (divided by the scale) while another
 * thread MADV_DONTNEEDs one page elsewhere in a tight loop: the RUN must
 * complete (an alarm after 20 s ends it otherwise), and the retries it
 * took must stay below a quarter of its faults. An invalidation that does
 * not overlap the fault's host range is no reason to retry: a module that
 * retries only for those should see none here; the quarter leaves room
 * for conservative approximations (e.g. a union of concurrent ranges),
 * while a module that retries for every invalidation of the mm that ends
 * during a fault retries for most faults, as the other CPU finishes a
 * DONTNEED every few microseconds.
 *
 * Then a RUN that can never complete (2^32-1 passes) over 64 pages that
 * the other thread keeps invalidating: every fault there may retry
 * forever, but a SIGALRM after 1 s must end the RUN within a few seconds
 * with EINTR and a signal exit.
 */
#define STORM_GPA	(2 * SZ_1G)
#define STORM_PAGES	4096UL
/* Slow faults: 32 huge pages, 1 GiB above the 4K slot. */
#define STORM_THP_GPA	(3 * SZ_1G)
#define STORM_THP	(64 * SZ_1M)

struct storm {
	char *addr;
	unsigned long len;
	double deadline;
	int stop;		/* __atomic */
	unsigned long rounds;
};

/* MADV_DONTNEEDs its range until told to stop or the deadline passes. */
static void *storm_fn(void *arg)
{
	struct storm *s = arg;
	sigset_t set;

	/* Signals are for the vCPU thread. */
	sigfillset(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED) && now_s() < s->deadline) {
		madvise(s->addr, s->len, MADV_DONTNEED);
		s->rounds++;
	}
	return NULL;
}

TEST_F_TIMEOUT(mirror, retry_storm, 120)
{
	const unsigned long npages = STORM_PAGES / test_scale();
	const unsigned long size = npages * PAGE_SZ;
	struct secmmu_stats before, after;
	struct storm s = {};
	struct secmmu_run r = {};
	unsigned long faults, retries;
	pthread_t t;
	double t0, dt;
	char *mem, *thp;
	int ret;

	ASSERT_EQ(0, catch_signal(SIGALRM));
	mem = mmap_2m_aligned(size, MADV_NOHUGEPAGE);
	ASSERT_NE(NULL, mem);
	memset(mem, 0x11, size);
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, STORM_GPA, size, mem));

	/* 1. A storm of invalidations elsewhere: one page of slot 0. */
	s.addr = self->mem;
	s.len = PAGE_SZ;
	s.deadline = now_s() + 60;
	ASSERT_EQ(0, pthread_create(&t, NULL, storm_fn, &s));
	usleep(10000);
	before = get_stats(self->fd);
	alarm(20);
	ret = run_range(self->vcpu, SECMMU_RUN_READ, STORM_GPA, STORM_GPA + size,
			PAGE_SZ, 0, &r);
	alarm(0);
	after = get_stats(self->fd);
	__atomic_store_n(&s.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	faults = after.faults - before.faults;
	retries = after.fault_retries - before.fault_retries;
	TH_LOG("%s: %lu faults, %lu retries, %llu invalidations elsewhere",
	       format_name(variant->format), faults, retries,
	       after.invalidations - before.invalidations);
	EXPECT_EQ(0, ret) TH_LOG("RUN: %s after %llu of %lu accesses",
				 strerror(-ret), r.accesses, npages);
	EXPECT_LT(retries, npages / 4)
		TH_LOG("disjoint invalidations made %lu of %lu faults retry",
		       retries, faults);

	/*
	 * 1b. The same storm against slow faults: write faults on THP memory
	 * not populated yet, where GUP allocates and zeroes 2 MiB between
	 * the fault's sequence snapshot and its check, long enough for the
	 * storm to finish several invalidations in between. A retry policy
	 * that looks at any invalidation of the mm (not the fault's range)
	 * retries nearly every one of these faults.
	 */
	thp = mmap_2m_aligned(STORM_THP, MADV_HUGEPAGE);
	ASSERT_NE(NULL, thp);
	ASSERT_EQ(0, set_slot(self->fd, 2, 0, STORM_THP_GPA, STORM_THP, thp));
	s.stop = 0;
	s.deadline = now_s() + 60;
	ASSERT_EQ(0, pthread_create(&t, NULL, storm_fn, &s));
	usleep(10000);
	before = get_stats(self->fd);
	alarm(20);
	memset(&r, 0, sizeof(r));
	ret = run_range(self->vcpu, SECMMU_RUN_WRITE, STORM_THP_GPA,
			STORM_THP_GPA + STORM_THP, SZ_2M, 0x5e, &r);
	alarm(0);
	after = get_stats(self->fd);
	__atomic_store_n(&s.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	retries = after.fault_retries - before.fault_retries;
	TH_LOG("%s, slow faults: %llu faults, %lu retries, %llu invalidations elsewhere",
	       format_name(variant->format), after.faults - before.faults,
	       retries, after.invalidations - before.invalidations);
	EXPECT_EQ(0, ret) TH_LOG("RUN: %s after %llu accesses", strerror(-ret),
				 r.accesses);
	EXPECT_LE(retries, STORM_THP / SZ_2M / 8)
		TH_LOG("disjoint invalidations made %lu of %lu slow faults retry",
		       retries, STORM_THP / SZ_2M);
	ASSERT_EQ(0, set_slot(self->fd, 2, 0, 0, 0, NULL));
	munmap(thp, STORM_THP);

	/* 2. A RUN that cannot complete, over a range invalidated nonstop. */
	s.stop = 0;
	s.rounds = 0;
	s.addr = mem;
	s.len = 64 * PAGE_SZ;
	s.deadline = now_s() + 20;
	before = get_stats(self->fd);
	ASSERT_EQ(0, pthread_create(&t, NULL, storm_fn, &s));
	memset(&r, 0, sizeof(r));
	r.op = SECMMU_RUN_READ;
	r.start = STORM_GPA;
	r.end = STORM_GPA + 64 * PAGE_SZ;
	r.stride = PAGE_SZ;
	r.passes = ~0u;
	t0 = now_s();
	alarm(1);
	ret = vcpu_run(self->vcpu, &r);
	dt = now_s() - t0;
	alarm(0);
	__atomic_store_n(&s.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	after = get_stats(self->fd);
	TH_LOG("RUN returned %d after %.1f s: %llu accesses, %llu faults, %llu retries",
	       ret, dt, r.accesses, after.faults - before.faults,
	       after.fault_retries - before.fault_retries);
	TH_LOG("%lu DONTNEEDs meanwhile", s.rounds);
	EXPECT_EQ(-EINTR, ret);
	EXPECT_EQ(SECMMU_EXIT_SIGNAL, r.exit_reason);
	EXPECT_LT(dt, 4.0) TH_LOG("the signal took %.1f s to end the RUN", dt);

	ASSERT_EQ(0, set_slot(self->fd, 1, 0, 0, 0, NULL));
	munmap(mem, size);
}

/*
 * Slot churn: 10000 times (divided by the scale), create a one-page slot
 * at a fresh guest address (1 GiB + 2 MiB further each time, wrapping
 * inside the 48-bit space), touch its page, delete it. Each touch needs
 * tables at every level below the root; each deletion leaves them empty.
 * The tables a space holds must stay bounded: after every deletion, at
 * most a few more than before the first (x86 may keep a walk's worth of
 * empty tables, e.g. cached for the next fault; stage-2 frees them all).
 */
#define CHURN_CYCLES	10000UL
#define CHURN_SLACK	8

TEST_F_TIMEOUT(fmt, slot_churn_bounded, 120)
{
	const unsigned long cycles = CHURN_CYCLES / test_scale();
	const unsigned long step = SZ_1G + SZ_2M, span = (1UL << 48) - SZ_1G;
	unsigned long long base, peak = 0, tables;
	unsigned long i, gpa = 0;
	double t0 = now_s();
	int fd, vcpu;
	char *mem;

	mem = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, mem);
	fd = space_create(variant->format, 1, 0);
	ASSERT_GE(fd, 0);
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);
	base = get_stats(fd).table_pages;
	for (i = 0; i < cycles; i++) {
		gpa = (gpa + step) % span & ~(PAGE_SZ - 1);
		ASSERT_EQ(0, set_slot(fd, 0, 0, gpa, PAGE_SZ, mem));
		ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, gpa, gpa + 8, 8, i, NULL));
		ASSERT_EQ(i ^ gpa, *(uint64_t *)mem);
		ASSERT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
		tables = get_stats(fd).table_pages;
		if (tables > peak)
			peak = tables;
		if (tables > base + CHURN_SLACK)
			break;
	}
	TH_LOG("%s: %lu cycles in %.1f s: %llu table pages first, at most %llu",
	       format_name(variant->format), i, now_s() - t0, base, peak);
	EXPECT_LE(peak, base + CHURN_SLACK)
		TH_LOG("%llu table pages after %lu cycles", peak, i + 1);
	close(vcpu);
	close(fd);
	munmap(mem, PAGE_SZ);
}

/*
 * The auditor finds what an invalidation left behind. With the debugfs
 * hook secmmu/test_skip_zap at 4, invalidations skip the zap of every gfn
 * that is a multiple of 4: over a memfd (shared memory, no huge pages),
 * written by the guest, MADV_DONTNEED drops the primary's PTEs while the
 * page cache keeps the pages, so the skipped leaves stay mapped, pointing
 * to pages the primary no longer maps there: the audit must count them.
 * The same sequence with the knob at 0 leaves nothing to find. Skipped
 * where the module has no such hook.
 */
#define AUDIT_GPA	(2 * SZ_1G)

static long stale_audit(struct __test_metadata *_metadata, int fd, int vcpu,
			char *mem, const char *knob, struct secmmu_audit *a)
{
	int ret;

	if (write_file(SKIP_ZAP_PARAM, knob))
		return -1;
	if (set_slot(fd, 1, 0, AUDIT_GPA, SIZE, mem))
		return -2;
	if (run_range(vcpu, SECMMU_RUN_WRITE, AUDIT_GPA, AUDIT_GPA + SIZE,
		      PAGE_SZ, 0xa0d17, NULL))
		return -3;
	if (madvise(mem, SIZE, MADV_DONTNEED))
		return -4;
	ret = audit_space(fd, a);
	write_file(SKIP_ZAP_PARAM, "0");
	/* Deleting the slot zaps whatever the invalidation left. */
	if (set_slot(fd, 1, 0, 0, 0, NULL))
		return -5;
	TH_LOG("test_skip_zap=%s: audit %d: %llu leaves, %llu mismatches (first %#llx)",
	       knob, ret, a->leaves, a->mismatches, a->first_gpa);
	return ret;
}

TEST_F(mirror, audit_detects_stale)
{
	struct secmmu_audit a;
	char *mem;
	int mfd;

	if (access(SKIP_ZAP_PARAM, W_OK))
		SKIP(return, "no %s", SKIP_ZAP_PARAM);
	mfd = memfd_create("secmmu-audit", MFD_CLOEXEC);
	ASSERT_GE(mfd, 0);
	ASSERT_EQ(0, ftruncate(mfd, SIZE));
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ASSERT_NE(MAP_FAILED, mem);
	madvise(mem, SIZE, MADV_NOHUGEPAGE);

	ASSERT_EQ(0, stale_audit(_metadata, self->fd, self->vcpu, mem, "4", &a));
	/* Every 4th page, if every leaf of the slot is a 4K one. */
	EXPECT_GT(a.mismatches, 0);
	EXPECT_LE(a.mismatches, NPAGES / 4);
	EXPECT_EQ(0, a.first_gpa % (4 * PAGE_SZ));
	EXPECT_GE(a.first_gpa, AUDIT_GPA);
	EXPECT_LT(a.first_gpa, AUDIT_GPA + SIZE);

	ASSERT_EQ(0, stale_audit(_metadata, self->fd, self->vcpu, mem, "0", &a));
	EXPECT_EQ(0, a.mismatches);
	munmap(mem, SIZE);
	close(mfd);
}

/*
 * Slot deletion against munmap of the slot's memory (KVM's memslot
 * deletion vs. mmu_notifier rule: once invalidate_range_start() returns,
 * no secondary mapping of the range may remain, whether or not its slot
 * is being deleted). A fully written slot of 1 GiB of 4K pages (divided
 * by SECMMU_TEST_SCALE); from one barrier, one thread deletes the slot,
 * one munmaps its upper half, and the vCPU reads the slot's last page
 * over and over until the deletion returned. Once munmap returned, a read
 * there must fault (EFAULT, a memory-fault exit): a read that succeeds
 * used a mapping of a page the primary unmapped, and maybe freed. Round
 * after round; the console must stay clean (KASAN, "Bad page state").
 */
#define DSM_GPA		(4 * SZ_1G)
#define DSM_SLOT	1
#define DSM_ROUNDS	100

struct dsm_race {
	pthread_barrier_t barrier;
	int fd, vcpu;
	char *mem;
	unsigned long size;
	int del_ret, unmap_ret;
	int del_done, unmap_done;	/* __atomic */
	unsigned long reads, faults, stale;
	int run_err;
};

static void *dsm_delete_fn(void *arg)
{
	struct dsm_race *d = arg;

	pthread_barrier_wait(&d->barrier);
	d->del_ret = set_slot(d->fd, DSM_SLOT, 0, 0, 0, NULL);
	__atomic_store_n(&d->del_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *dsm_munmap_fn(void *arg)
{
	struct dsm_race *d = arg;

	pthread_barrier_wait(&d->barrier);
	d->unmap_ret = munmap(d->mem + d->size / 2, d->size / 2);
	__atomic_store_n(&d->unmap_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* The vCPU: reads the last page of the slot until the deletion is done. */
static void dsm_reader(struct dsm_race *d)
{
	unsigned long last = DSM_GPA + d->size - PAGE_SZ;
	struct secmmu_run r;
	int unmapped, ret;

	pthread_barrier_wait(&d->barrier);
	do {
		unmapped = __atomic_load_n(&d->unmap_done, __ATOMIC_ACQUIRE);
		ret = run_range(d->vcpu, SECMMU_RUN_READ, last, last + PAGE_SZ,
				PAGE_SZ, 0, &r);
		d->reads++;
		if (ret == -EFAULT && r.exit_reason == SECMMU_EXIT_MEMORY_FAULT)
			d->faults++;
		else if (ret)
			d->run_err = ret;
		else if (unmapped)
			d->stale++;
	} while (!__atomic_load_n(&d->del_done, __ATOMIC_ACQUIRE) ||
		 !__atomic_load_n(&d->unmap_done, __ATOMIC_ACQUIRE));
}

TEST_F_TIMEOUT(mirror, delete_slot_vs_munmap, 300)
{
	const unsigned long size = SZ_1G / test_scale();
	const unsigned long rounds = DSM_ROUNDS / test_scale() ?: 1;
	const double budget = 60.0;
	struct dsm_race d = { .fd = self->fd, .vcpu = self->vcpu, .size = size };
	unsigned long round, stale = 0, present;
	pthread_t t[2];
	double t0 = now_s();
	char *mem;

	mem = mmap_2m_aligned(size, MADV_NOHUGEPAGE);
	ASSERT_NE(NULL, mem);
	d.mem = mem;
	for (round = 0; round < rounds; round++) {
		struct secmmu_run r;

		if (round) {
			ASSERT_EQ(mem + size / 2,
				  mmap(mem + size / 2, size / 2, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
			ASSERT_EQ(0, madvise(mem + size / 2, size / 2, MADV_NOHUGEPAGE));
		}
		ASSERT_EQ(0, set_slot(self->fd, DSM_SLOT, 0, DSM_GPA, size, mem));
		/* Fully written: every page allocated, mapped 4K and dirty. */
		ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_WRITE, DSM_GPA,
				       DSM_GPA + size, PAGE_SZ, round, &r));
		d.del_done = 0;
		d.unmap_done = 0;
		d.reads = 0;
		d.faults = 0;
		d.stale = 0;
		ASSERT_EQ(0, pthread_barrier_init(&d.barrier, NULL, 3));
		ASSERT_EQ(0, pthread_create(&t[0], NULL, dsm_delete_fn, &d));
		ASSERT_EQ(0, pthread_create(&t[1], NULL, dsm_munmap_fn, &d));
		dsm_reader(&d);
		pthread_join(t[0], NULL);
		pthread_join(t[1], NULL);
		pthread_barrier_destroy(&d.barrier);
		ASSERT_EQ(0, d.del_ret);
		ASSERT_EQ(0, d.unmap_ret);
		ASSERT_EQ(0, d.run_err) TH_LOG("round %lu: RUN: %s", round,
					       strerror(-d.run_err));
		/* The slot is gone: nothing of it is mapped. */
		mapped_at(self->fd, DSM_GPA, size / PAGE_SZ, 0, &present);
		EXPECT_EQ(0, present) TH_LOG("round %lu: %lu pages still mapped",
					     round, present);
		if (d.stale)
			TH_LOG("round %lu: %lu of %lu reads after munmap used its page",
			       round, d.stale, d.reads);
		stale += d.stale;
		if (stale || now_s() - t0 > budget)
			break;
	}
	TH_LOG("%s: %lu rounds of %lu MiB in %.1f s", format_name(variant->format),
	       round + (round < rounds), size >> 20, now_s() - t0);
	EXPECT_EQ(0, stale) TH_LOG("the secondary MMU mapped memory after its munmap returned");
	munmap(mem, size);
}

TEST_HARNESS_MAIN
