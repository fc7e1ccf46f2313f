// SPDX-License-Identifier: GPL-2.0
/*
 * SECMMU_PRE_FAULT_MEMORY, per page-table format (fixture variants "x86"
 * and "arm64"), after the kernel's kvm/pre_fault_memory_test.c.
 *
 * Memslots: slot 0 [BASE, BASE + 4M) and slot 1 [BASE + 4M, BASE + 6M)
 * back to back, then a gap up to slot 2 [BASE + 8M, BASE + 10M); private
 * anonymous memory without THP, so every leaf is 4K.
 *
 * pre_fault_memory: the range in pieces and whole; the vCPU then reads it
 *   with no fault, and the right data; the leaves are old until that
 *   read (x86: A clear; stage-2: AF clear, with hardware AF); they are
 *   read-only and counted in pre_faults.
 * ranges: across two slots, into a gap (progress, then -ENOENT), from a gap.
 * bad_args: each -EINVAL, -EFAULT, and -EIO from another process.
 * signal_pending: -EINTR and an unchanged range with no progress, 0 and the
 *   rest of the range with some, under a stream of signals.
 * write_after: a write after a pre-fault faults once; on the zero page it
 *   gets a page of its own, and on a page shared with a forked child it
 *   breaks copy-on-write (the child keeps the old data).
 * race_dontneed: pre-faults while another thread MADV_DONTNEEDs, munmaps
 *   and maps the memory again: SECMMU_AUDIT finds no stale leaf.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define BASE		SZ_1G
#define SLOT0_SIZE	(4 * SZ_1M)
#define SLOT1_SIZE	(2 * SZ_1M)
#define SLOT2_GPA	(BASE + 8 * SZ_1M)
#define SLOT2_SIZE	(2 * SZ_1M)
#define PATTERN		0x5ec3a11f00d5eedULL

/* SECMMU_PRE_FAULT_MEMORY of [*gpa, *gpa + *size): 0 or -errno. */
static int pre_fault(int vcpu, struct secmmu_pre_fault_memory *r)
{
	return secmmu_ioctl(vcpu, SECMMU_PRE_FAULT_MEMORY, r);
}

/* Pre-faults [gpa, gpa + size) with one call; -errno, or what is left. */
static long pre_fault_range(int vcpu, unsigned long gpa, unsigned long size,
			    struct secmmu_pre_fault_memory *out)
{
	struct secmmu_pre_fault_memory r = { .gpa = gpa, .size = size };
	int ret = pre_fault(vcpu, &r);

	if (out)
		*out = r;
	return ret ? ret : (long)r.size;
}

/* Writes PATTERN ^ gpa into the first word of each page of [hva, hva+size). */
static void fill(char *hva, unsigned long gpa, unsigned long size)
{
	unsigned long off;

	for (off = 0; off < size; off += PAGE_SZ)
		*(__u64 *)(hva + off) = PATTERN ^ (gpa + off);
}

FIXTURE(prefault) {
	int fd, vcpu;
	char *mem;	/* slots 0 and 1, back to back */
	char *mem2;	/* slot 2 */
};

FIXTURE_VARIANT(prefault) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(prefault, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(prefault, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(prefault)
{
	self->fd = space_create(variant->format, 1, 0);
	ASSERT_GE(self->fd, 0) TH_LOG("space_create: %s", strerror(-self->fd));
	self->mem = mmap(NULL, SLOT0_SIZE + SLOT1_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->mem);
	self->mem2 = mmap(NULL, SLOT2_SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->mem2);
	madvise(self->mem, SLOT0_SIZE + SLOT1_SIZE, MADV_NOHUGEPAGE);
	madvise(self->mem2, SLOT2_SIZE, MADV_NOHUGEPAGE);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, BASE, SLOT0_SIZE, self->mem));
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, BASE + SLOT0_SIZE, SLOT1_SIZE,
			      self->mem + SLOT0_SIZE));
	ASSERT_EQ(0, set_slot(self->fd, 2, 0, SLOT2_GPA, SLOT2_SIZE, self->mem2));
	self->vcpu = vcpu_create(self->fd, 0);
	ASSERT_GE(self->vcpu, 0);
}

FIXTURE_TEARDOWN(prefault)
{
	struct secmmu_audit a;

	/* Whatever the test did, the secondary MMU is coherent. */
	if (audit_space(self->fd, &a) == 0)
		EXPECT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
	close(self->vcpu);
	close(self->fd);
	munmap(self->mem, SLOT0_SIZE + SLOT1_SIZE);
	munmap(self->mem2, SLOT2_SIZE);
}

TEST_F(prefault, pre_fault_memory)
{
	const unsigned long npages = SLOT0_SIZE / PAGE_SZ;
	unsigned char *snap = malloc(npages);
	struct secmmu_pre_fault_memory r;
	struct secmmu_run run;
	__u64 faults, pre;
	unsigned long i;

	ASSERT_NE(NULL, snap);
	fill(self->mem, BASE, SLOT0_SIZE);
	pre = vcpu_stat(self->vcpu, "pre_faults");
	ASSERT_NE(~0ull, pre) TH_LOG("no pre_faults statistic");

	/* In pieces: a page, 64K unaligned to a batch, then the rest. */
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE, PAGE_SZ, &r));
	EXPECT_EQ(BASE + PAGE_SZ, r.gpa);
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE + 3 * PAGE_SZ, 16 * PAGE_SZ, &r));
	EXPECT_EQ(BASE + 19 * PAGE_SZ, r.gpa);
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE, SLOT0_SIZE, &r));
	EXPECT_EQ(BASE + SLOT0_SIZE, r.gpa);
	EXPECT_EQ(0, r.size);
	/* Again: nothing new, still success. */
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE, SLOT0_SIZE, NULL));
	/* Each leaf was counted once, when it was installed. */
	EXPECT_EQ(pre + npages, vcpu_stat(self->vcpu, "pre_faults"));

	/* Read-only 4K leaves everywhere, not accessed. */
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE, npages, snap));
	EXPECT_EQ(npages, count_bits(snap, npages, SECMMU_SNAP_PRESENT));
	EXPECT_EQ(0, count_bits(snap, npages, SECMMU_SNAP_WRITABLE));
	for (i = 0; i < npages; i++)
		if (SECMMU_SNAP_LEVEL(snap[i]) != 0)
			break;
	EXPECT_EQ(npages, i);
	EXPECT_EQ(0, count_bits(snap, npages, SECMMU_SNAP_ACCESSED));
	for (i = 0; i < npages; i += 97)
		EXPECT_EQ(0, test_young(self->fd, self->mem + i * PAGE_SZ))
			TH_LOG("page %lu young after pre-fault", i);

	/* The vCPU reads it all without a fault, and reads the right data. */
	faults = vcpu_stat(self->vcpu, "faults");
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_VERIFY, BASE, BASE + SLOT0_SIZE,
			       PAGE_SZ, PATTERN, &run));
	EXPECT_EQ(npages, run.accesses);
	EXPECT_EQ(0, run.mismatches) TH_LOG("first at %#llx", run.first_mismatch);
	EXPECT_EQ(faults, vcpu_stat(self->vcpu, "faults"));
	EXPECT_EQ(pre + npages, vcpu_stat(self->vcpu, "pre_faults"));
	/* And now they are young. */
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE, npages, snap));
	EXPECT_EQ(npages, count_bits(snap, npages, SECMMU_SNAP_ACCESSED));
	EXPECT_EQ(1, test_young(self->fd, self->mem));
	free(snap);
}

TEST_F(prefault, ranges)
{
	struct secmmu_pre_fault_memory r;
	unsigned long end1 = BASE + SLOT0_SIZE + SLOT1_SIZE;
	__u64 pre = vcpu_stat(self->vcpu, "pre_faults");

	/* Ending in another slot: both are mapped. */
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE + SLOT0_SIZE - 8 * PAGE_SZ,
				     16 * PAGE_SZ, &r));
	EXPECT_EQ(BASE + SLOT0_SIZE + 8 * PAGE_SZ, r.gpa);
	EXPECT_EQ(pre + 16, vcpu_stat(self->vcpu, "pre_faults"));

	/* Into the gap: progress up to the slot's end, then stop. */
	EXPECT_EQ(32 * PAGE_SZ, pre_fault_range(self->vcpu, end1 - 8 * PAGE_SZ,
						40 * PAGE_SZ, &r));
	EXPECT_EQ(end1, r.gpa);
	EXPECT_EQ(pre + 24, vcpu_stat(self->vcpu, "pre_faults"));
	/* What is left starts in the gap: -ENOENT, the range unchanged. */
	EXPECT_EQ(-ENOENT, pre_fault(self->vcpu, &r));
	EXPECT_EQ(end1, r.gpa);
	EXPECT_EQ(32 * PAGE_SZ, r.size);
	/* Starting in the gap, even across slot 2. */
	EXPECT_EQ(-ENOENT, pre_fault_range(self->vcpu, SLOT2_GPA - PAGE_SZ,
					   2 * PAGE_SZ, &r));
	EXPECT_EQ(SLOT2_GPA - PAGE_SZ, r.gpa);
	EXPECT_EQ(-ENOENT, pre_fault_range(self->vcpu, 0, PAGE_SZ, NULL));
	/* Past the address width. */
	EXPECT_EQ(-ENOENT, pre_fault_range(self->vcpu, 1ull << 60, PAGE_SZ, NULL));
	/* The end of slot 2, exactly. */
	EXPECT_EQ(0, pre_fault_range(self->vcpu, SLOT2_GPA + SLOT2_SIZE - PAGE_SZ,
				     PAGE_SZ, NULL));
	EXPECT_EQ(pre + 25, vcpu_stat(self->vcpu, "pre_faults"));
}

TEST_F(prefault, bad_args)
{
	struct secmmu_pre_fault_memory r;
	unsigned int i;
	pid_t pid;
	int status;
	__u64 pre = vcpu_stat(self->vcpu, "pre_faults");

	memset(&r, 0, sizeof(r));
	r.gpa = BASE;
	r.size = PAGE_SZ;
	r.flags = 1;
	EXPECT_EQ(-EINVAL, pre_fault(self->vcpu, &r));
	r.flags = 1ull << 63;
	EXPECT_EQ(-EINVAL, pre_fault(self->vcpu, &r));
	r.flags = 0;
	for (i = 0; i < 5; i++) {
		r.padding[i] = 1;
		EXPECT_EQ(-EINVAL, pre_fault(self->vcpu, &r)) TH_LOG("padding[%u]", i);
		r.padding[i] = 0;
	}
	/* Unaligned, empty, wrapping. */
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, BASE + 8, PAGE_SZ, NULL));
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, BASE, PAGE_SZ + 8, NULL));
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, BASE, PAGE_SZ - 1, NULL));
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, BASE, 0, NULL));
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, -PAGE_SZ, PAGE_SZ, NULL));
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, BASE, -PAGE_SZ, NULL));
	EXPECT_EQ(-EINVAL, pre_fault_range(self->vcpu, -2 * PAGE_SZ, 4 * PAGE_SZ, NULL));
	/* A bad pointer. */
	EXPECT_EQ(-1, ioctl(self->vcpu, SECMMU_PRE_FAULT_MEMORY, (void *)8));
	EXPECT_EQ(EFAULT, errno);
	/* On the space fd: not its ioctl. */
	r.gpa = BASE;
	r.size = PAGE_SZ;
	EXPECT_EQ(-ENOTTY, secmmu_ioctl(self->fd, SECMMU_PRE_FAULT_MEMORY, &r));
	/* Nothing above mapped anything. */
	EXPECT_EQ(pre, vcpu_stat(self->vcpu, "pre_faults"));

	/* Backing the process cannot fault in: -EFAULT. */
	ASSERT_EQ(0, mprotect(self->mem, PAGE_SZ, PROT_NONE));
	EXPECT_EQ(-EFAULT, pre_fault_range(self->vcpu, BASE, PAGE_SZ, NULL));
	ASSERT_EQ(0, mprotect(self->mem, PAGE_SZ, PROT_READ | PROT_WRITE));
	/* No VMA at all: -EFAULT; after progress, 0 and the rest. */
	ASSERT_EQ(0, munmap(self->mem2 + SZ_1M, SZ_1M));
	EXPECT_EQ(-EFAULT, pre_fault_range(self->vcpu, SLOT2_GPA + SZ_1M, PAGE_SZ, NULL));
	EXPECT_EQ(SZ_1M, pre_fault_range(self->vcpu, SLOT2_GPA, SLOT2_SIZE, &r));
	EXPECT_EQ(SLOT2_GPA + SZ_1M, r.gpa);
	ASSERT_EQ((void *)(self->mem2 + SZ_1M),
		  mmap(self->mem2 + SZ_1M, SZ_1M, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));

	/* Another process (a forked child): -EIO, as every vCPU ioctl. */
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		struct secmmu_pre_fault_memory c = { .gpa = BASE, .size = PAGE_SZ };

		_exit(pre_fault(self->vcpu, &c) == -EIO ? 0 : 1);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

struct flood {
	pthread_t target;
	int stop;
	unsigned long sent;
};

static void *flood_thread(void *arg)
{
	struct flood *f = arg;

	while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
		pthread_kill(f->target, SIGUSR1);
		f->sent++;
	}
	return NULL;
}

TEST_F_TIMEOUT(prefault, signal_pending, 90)
{
	const unsigned long size = SLOT0_SIZE + SLOT1_SIZE;
	unsigned long eintr = 0, partial = 0, calls = 0, rounds = 0;
	struct flood f = { .target = pthread_self() };
	struct secmmu_pre_fault_memory r;
	pthread_t t;
	double end;

	ASSERT_EQ(0, catch_signal(SIGUSR1));
	ASSERT_EQ(0, pthread_create(&t, NULL, flood_thread, &f));
	end = now_s() + 20;
	/*
	 * Whole ranges, over and over (zapped between rounds), while the
	 * signals come: each call maps some and returns 0 with the rest, or
	 * maps nothing and returns -EINTR with the range as it was.
	 */
	while (now_s() < end && (!eintr || rounds < 4)) {
		struct secmmu_pre_fault_memory before;
		int ret;

		r.gpa = BASE;
		r.size = size;
		memset(r.padding, 0, sizeof(r.padding));
		r.flags = 0;
		while (r.size) {
			before = r;
			ret = pre_fault(self->vcpu, &r);
			calls++;
			if (ret == -EINTR) {
				eintr++;
				ASSERT_EQ(0, memcmp(&before, &r, sizeof(r)))
					TH_LOG("-EINTR with the range changed");
				continue;
			}
			ASSERT_EQ(0, ret) TH_LOG("%s", strerror(-ret));
			ASSERT_LT(r.size, before.size) TH_LOG("0 without progress");
			ASSERT_EQ(before.gpa + before.size, r.gpa + r.size);
			if (r.size)
				partial++;
		}
		rounds++;
		madvise(self->mem, size, MADV_DONTNEED);
	}
	__atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	signal(SIGUSR1, SIG_DFL);
	ksft_print_msg("%lu calls, %lu -EINTR, %lu partial, %lu signals\n",
		       calls, eintr, partial, f.sent);
	EXPECT_GT(eintr, 0) TH_LOG("no call saw the signal before any progress");
}

TEST_F(prefault, write_after)
{
	struct secmmu_pre_fault_memory r;
	unsigned char s;
	struct secmmu_run run;
	__u64 faults, buf[PAGE_SZ / 8];
	int pipefd[2], status;
	unsigned long i;
	pid_t pid;

	/* Never written: a read fault maps the zero page, read-only. */
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE, 64 * PAGE_SZ, &r));
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE + 5 * PAGE_SZ, 1, &s));
	EXPECT_EQ(SECMMU_SNAP_PRESENT, s & (SECMMU_SNAP_PRESENT | SECMMU_SNAP_WRITABLE));
	faults = vcpu_stat(self->vcpu, "faults");
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_WRITE, BASE + 5 * PAGE_SZ,
			       BASE + 6 * PAGE_SZ, PAGE_SZ, PATTERN, &run));
	/* One write fault, and the page is the process's own now. */
	EXPECT_EQ(faults + 1, vcpu_stat(self->vcpu, "faults"));
	EXPECT_EQ(PATTERN ^ (BASE + 5 * PAGE_SZ), *(__u64 *)(self->mem + 5 * PAGE_SZ));
	/* The other pages still read zero, through the vCPU and here. */
	ASSERT_EQ(0, guest_access(self->vcpu, BASE + 6 * PAGE_SZ, buf, PAGE_SZ, 0));
	for (i = 0; i < PAGE_SZ / 8; i++)
		ASSERT_EQ(0, buf[i]);
	EXPECT_EQ(0, *(__u64 *)(self->mem + 4 * PAGE_SZ));
	EXPECT_EQ(faults + 1, vcpu_stat(self->vcpu, "faults"));

	/*
	 * Shared with a child after fork(): the pre-fault maps the shared
	 * page and leaves it shared; the vCPU's write breaks copy-on-write
	 * for this process only.
	 */
	fill(self->mem + SZ_1M, BASE + SZ_1M, 16 * PAGE_SZ);
	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		char c;
		int bad = 0;

		if (read(pipefd[0], &c, 1) != 1)
			_exit(2);
		for (i = 0; i < 16; i++)
			bad |= *(__u64 *)(self->mem + SZ_1M + i * PAGE_SZ) !=
			       (PATTERN ^ (BASE + SZ_1M + i * PAGE_SZ));
		_exit(bad);
	}
	EXPECT_EQ(0, pre_fault_range(self->vcpu, BASE + SZ_1M, 16 * PAGE_SZ, NULL));
	faults = vcpu_stat(self->vcpu, "faults");
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_VERIFY, BASE + SZ_1M,
			       BASE + SZ_1M + 16 * PAGE_SZ, PAGE_SZ, PATTERN, &run));
	EXPECT_EQ(0, run.mismatches);
	EXPECT_EQ(faults, vcpu_stat(self->vcpu, "faults"));
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_WRITE, BASE + SZ_1M,
			       BASE + SZ_1M + 16 * PAGE_SZ, PAGE_SZ, ~PATTERN, &run));
	EXPECT_EQ(faults + 16, vcpu_stat(self->vcpu, "faults"));
	for (i = 0; i < 16; i++)
		EXPECT_EQ(~PATTERN ^ (BASE + SZ_1M + i * PAGE_SZ),
			  *(__u64 *)(self->mem + SZ_1M + i * PAGE_SZ));
	ASSERT_EQ(1, write(pipefd[1], "x", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
		TH_LOG("the child saw the vCPU's writes");
	close(pipefd[0]);
	close(pipefd[1]);
}

struct churn {
	char *mem;
	unsigned long size;
	int stop;
	unsigned long rounds;
};

static void *churn_thread(void *arg)
{
	struct churn *c = arg;

	while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
		unsigned long off = (c->rounds * 37 % (c->size / SZ_1M)) * SZ_1M;

		memset(c->mem + off, 0x5a, PAGE_SZ * 8);
		madvise(c->mem + off, SZ_1M, MADV_DONTNEED);
		if (c->rounds % 8 == 0) {
			munmap(c->mem + off, SZ_1M);
			mmap(c->mem + off, SZ_1M, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		}
		c->rounds++;
	}
	return NULL;
}

TEST_F(prefault, race_dontneed)
{
	const unsigned long size = SLOT0_SIZE + SLOT1_SIZE;
	struct churn c = { .mem = self->mem, .size = size };
	unsigned long calls = 0, efault = 0;
	struct secmmu_audit a;
	struct secmmu_run run;
	pthread_t t;
	double end;

	ASSERT_EQ(0, pthread_create(&t, NULL, churn_thread, &c));
	end = now_s() + 10 / test_scale();
	while (now_s() < end) {
		struct secmmu_pre_fault_memory r = { .gpa = BASE, .size = size };

		while (r.size) {
			int ret = pre_fault(self->vcpu, &r);

			calls++;
			if (ret == -EFAULT) {
				/* The hole of a munmap: skip its page. */
				efault++;
				r.gpa += PAGE_SZ;
				r.size -= PAGE_SZ;
				continue;
			}
			ASSERT_EQ(0, ret) TH_LOG("%s", strerror(-ret));
		}
		ASSERT_EQ(0, audit_space(self->fd, &a));
		ASSERT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
	}
	__atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	ASSERT_EQ(0, audit_space(self->fd, &a));
	EXPECT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
	ksft_print_msg("%lu calls, %lu -EFAULT, %lu churn rounds, %llu retries\n",
		       calls, efault, c.rounds,
		       (unsigned long long)vcpu_stat(self->vcpu, "fault_retries"));
	/* What the vCPU reads now is what the process has. */
	fill(self->mem, BASE, size);
	ASSERT_EQ(0, pre_fault_range(self->vcpu, BASE, size, NULL));
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_VERIFY, BASE, BASE + size,
			       PAGE_SZ, PATTERN, &run));
	EXPECT_EQ(0, run.mismatches) TH_LOG("first at %#llx", run.first_mismatch);
}

/*
 * Fault-around: a 4K fault also maps the pages of its aligned group of
 * AROUND pages (module parameter fault_around, default 16) that the
 * primary MMU already maps writable, not accessed, counted in the vCPU
 * statistic fault_around. Memory: slot 0 only, 4K pages.
 */
#define AROUND	16

FIXTURE(around) {
	int fd, vcpu;
	char *mem;
	unsigned char snap[SLOT0_SIZE / 4096];
};

FIXTURE_VARIANT(around) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(around, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(around, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(around)
{
	self->fd = space_create(variant->format, 1, 0);
	ASSERT_GE(self->fd, 0) TH_LOG("space_create: %s", strerror(-self->fd));
	self->mem = mmap(NULL, SLOT0_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->mem);
	madvise(self->mem, SLOT0_SIZE, MADV_NOHUGEPAGE);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, BASE, SLOT0_SIZE, self->mem));
	self->vcpu = vcpu_create(self->fd, 0);
	ASSERT_GE(self->vcpu, 0);
}

FIXTURE_TEARDOWN(around)
{
	struct secmmu_audit a;

	if (audit_space(self->fd, &a) == 0)
		EXPECT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
	close(self->vcpu);
	close(self->fd);
	munmap(self->mem, SLOT0_SIZE);
}

/* One read of page @page of slot 0 by @vcpu: its faults and fault_around. */
static int read_page(int vcpu, unsigned long page, __u64 *faults, __u64 *around)
{
	__u64 f = vcpu_stat(vcpu, "faults"), a = vcpu_stat(vcpu, "fault_around");
	int ret = run_range(vcpu, SECMMU_RUN_READ, BASE + page * PAGE_SZ,
			    BASE + (page + 1) * PAGE_SZ, PAGE_SZ, 0, NULL);

	*faults = vcpu_stat(vcpu, "faults") - f;
	*around = vcpu_stat(vcpu, "fault_around") - a;
	return ret;
}

/* Bit @bit of snapshot entries [first, end) equals @want for each. */
static unsigned long snap_mismatch(const unsigned char *snap, unsigned long first,
				   unsigned long end, unsigned char bit, int want)
{
	unsigned long i, bad = 0;

	for (i = first; i < end; i++)
		bad += !!(snap[i] & bit) != want;
	return bad;
}

/*
 * A read fault on written memory maps its group: the faulting page young,
 * the others writable but old (aging sees them unused), nothing outside
 * the group; the vCPU then reads and writes the group with no fault.
 */
TEST_F(around, maps_the_group)
{
	const unsigned long npages = 256, page = 37, first = 32;
	struct secmmu_run run;
	__u64 faults, around;

	fill(self->mem, BASE, npages * PAGE_SZ);
	ASSERT_EQ(0, read_page(self->vcpu, page, &faults, &around));
	EXPECT_EQ(1, faults);
	ASSERT_EQ(AROUND - 1, around);

	ASSERT_EQ(0, snapshot(self->fd, 0, BASE, npages, self->snap));
	EXPECT_EQ(0, snap_mismatch(self->snap, 0, first, SECMMU_SNAP_PRESENT, 0));
	EXPECT_EQ(0, snap_mismatch(self->snap, first, first + AROUND, SECMMU_SNAP_PRESENT, 1));
	EXPECT_EQ(0, snap_mismatch(self->snap, first + AROUND, npages, SECMMU_SNAP_PRESENT, 0));
	EXPECT_EQ(0, snap_mismatch(self->snap, first, first + AROUND, SECMMU_SNAP_WRITABLE, 1));
	/* Old but the faulting page: A (x86), AF with hardware AF (arm64). */
	EXPECT_EQ(1, count_bits(self->snap + first, AROUND, SECMMU_SNAP_ACCESSED));
	EXPECT_NE(0, self->snap[page] & SECMMU_SNAP_ACCESSED);
	EXPECT_EQ(1, test_young(self->fd, self->mem + page * PAGE_SZ));
	EXPECT_EQ(0, test_young(self->fd, self->mem + first * PAGE_SZ));
	EXPECT_EQ(0, test_young(self->fd, self->mem + (first + AROUND - 1) * PAGE_SZ));

	/* The group reads right, and takes writes, with no further fault. */
	faults = vcpu_stat(self->vcpu, "faults");
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_VERIFY, BASE + first * PAGE_SZ,
			       BASE + (first + AROUND) * PAGE_SZ, PAGE_SZ, PATTERN, &run));
	EXPECT_EQ(0, run.mismatches) TH_LOG("first at %#llx", run.first_mismatch);
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_WRITE, BASE + first * PAGE_SZ,
			       BASE + (first + AROUND) * PAGE_SZ, PAGE_SZ, ~PATTERN, &run));
	EXPECT_EQ(faults, vcpu_stat(self->vcpu, "faults"));
	EXPECT_EQ(~PATTERN ^ (BASE + first * PAGE_SZ), *(__u64 *)(self->mem + first * PAGE_SZ));
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE + first * PAGE_SZ, AROUND, self->snap));
	EXPECT_EQ(AROUND, count_bits(self->snap, AROUND, SECMMU_SNAP_ACCESSED));
	EXPECT_EQ(1, test_young(self->fd, self->mem + first * PAGE_SZ));
}

/*
 * Only pages the primary maps writable, looked up without faulting: never
 * written ones (not mapped, or the zero page, read-only) stay unmapped and
 * fault on their own; the runs go from the page above the fault's up and
 * from the group's first page up, each to the first page missing.
 */
TEST_F(around, only_what_the_primary_maps_writable)
{
	__u64 faults, around;

	/* Group [64, 80): 64..71 written, 72..75 read (zero page), rest never. */
	fill(self->mem + 64 * PAGE_SZ, BASE + 64 * PAGE_SZ, 8 * PAGE_SZ);
	ASSERT_EQ(0, madvise(self->mem + 72 * PAGE_SZ, 4 * PAGE_SZ, MADV_POPULATE_READ));
	ASSERT_EQ(0, read_page(self->vcpu, 64, &faults, &around));
	EXPECT_EQ(1, faults);
	EXPECT_EQ(7, around);
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE + 64 * PAGE_SZ, AROUND, self->snap));
	EXPECT_EQ(0, snap_mismatch(self->snap, 0, 8, SECMMU_SNAP_PRESENT, 1));
	EXPECT_EQ(0, snap_mismatch(self->snap, 8, AROUND, SECMMU_SNAP_PRESENT, 0));
	/* The zero page reads as zero, after its own fault. */
	ASSERT_EQ(0, read_page(self->vcpu, 73, &faults, &around));
	EXPECT_EQ(1, faults);
	EXPECT_EQ(0, around);

	/* Group [128, 144): 128..129 and 140..143 written; a fault at 130. */
	fill(self->mem + 128 * PAGE_SZ, BASE + 128 * PAGE_SZ, 2 * PAGE_SZ);
	fill(self->mem + 140 * PAGE_SZ, BASE + 140 * PAGE_SZ, 4 * PAGE_SZ);
	ASSERT_EQ(0, read_page(self->vcpu, 130, &faults, &around));
	EXPECT_EQ(1, faults);
	/* Below: 128, 129; above: 131 is missing, so nothing. */
	EXPECT_EQ(2, around);
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE + 128 * PAGE_SZ, AROUND, self->snap));
	EXPECT_EQ(3, count_bits(self->snap, AROUND, SECMMU_SNAP_PRESENT));
	EXPECT_EQ(0, snap_mismatch(self->snap, 0, 3, SECMMU_SNAP_PRESENT, 1));
}

/* Never past the slot: a group cut by the slot's end maps what is inside. */
TEST_F(around, stays_in_its_slot)
{
	__u64 faults, around;

	/* Slot 0 becomes [BASE, BASE + 20 pages), slot 1 the next 20 pages. */
	fill(self->mem, BASE, 64 * PAGE_SZ);
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, BASE, 0, self->mem));
	ASSERT_EQ(0, set_slot(self->fd, 0, 0, BASE, 20 * PAGE_SZ, self->mem));
	ASSERT_EQ(0, set_slot(self->fd, 1, 0, BASE + 20 * PAGE_SZ, 20 * PAGE_SZ,
			      self->mem + 20 * PAGE_SZ));
	ASSERT_EQ(0, read_page(self->vcpu, 18, &faults, &around));
	EXPECT_EQ(1, faults);
	EXPECT_EQ(3, around);	/* 16, 17, 19 */
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE, 40, self->snap));
	EXPECT_EQ(4, count_bits(self->snap, 40, SECMMU_SNAP_PRESENT));
	EXPECT_EQ(0, snap_mismatch(self->snap, 16, 20, SECMMU_SNAP_PRESENT, 1));
	/* And from slot 1's first page: its group [16, 32) is cut at 20. */
	ASSERT_EQ(0, read_page(self->vcpu, 20, &faults, &around));
	EXPECT_EQ(1, faults);
	EXPECT_EQ(11, around);	/* 21..31 */
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE, 40, self->snap));
	EXPECT_EQ(16, count_bits(self->snap, 40, SECMMU_SNAP_PRESENT));
	EXPECT_EQ(0, snap_mismatch(self->snap, 32, 40, SECMMU_SNAP_PRESENT, 0));
}

/*
 * None where it would be wrong or was asked away: SECMMU_CFG_NO_FAULT_AROUND,
 * SECMMU_CFG_NO_AD (prefetched pages would look used to aging), read-only
 * slots, dirty-logging slots (writes must fault to be logged).
 */
TEST_F(around, not_where_it_must_not)
{
	static const struct {
		unsigned int cfg, slot;
		const char *why;
	} cases[] = {
		{ SECMMU_CFG_NO_FAULT_AROUND, 0, "NO_FAULT_AROUND" },
		{ SECMMU_CFG_NO_AD, 0, "NO_AD" },
		{ 0, SECMMU_MEM_READONLY, "READONLY slot" },
		{ 0, SECMMU_MEM_LOG_DIRTY_PAGES, "logging slot" },
	};
	__u64 faults, around;
	unsigned int i;

	fill(self->mem, BASE, 64 * PAGE_SZ);
	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		int fd = space_create(variant->format, 1, cases[i].cfg), vcpu;

		ASSERT_GE(fd, 0) TH_LOG("%s: %s", cases[i].why, strerror(-fd));
		ASSERT_EQ(0, set_slot(fd, 0, cases[i].slot, BASE, SLOT0_SIZE, self->mem));
		vcpu = vcpu_create(fd, 0);
		ASSERT_GE(vcpu, 0);
		ASSERT_EQ(0, read_page(vcpu, 5, &faults, &around)) TH_LOG("%s", cases[i].why);
		EXPECT_EQ(1, faults) TH_LOG("%s", cases[i].why);
		EXPECT_EQ(0, around) TH_LOG("%s", cases[i].why);
		ASSERT_EQ(0, snapshot(fd, 0, BASE, AROUND, self->snap));
		EXPECT_EQ(1, count_bits(self->snap, AROUND, SECMMU_SNAP_PRESENT))
			TH_LOG("%s", cases[i].why);
		close(vcpu);
		close(fd);
	}
	/* An unknown flag past NO_FAULT_AROUND is refused. */
	EXPECT_EQ(-EINVAL, space_create(variant->format, 1, SECMMU_CFG_NO_FAULT_AROUND << 1));
}

/*
 * fault_around_coherence: leaves mapped around a fault are zapped by
 * invalidations like any leaf: DONTNEED, munmap and a new mapping at the
 * same address, mprotect; the vCPU then reads what the process has.
 */
TEST_F(around, fault_around_coherence)
{
	unsigned char s;
	struct secmmu_run run;
	struct secmmu_audit a;
	__u64 faults, around, buf;

	fill(self->mem, BASE, 64 * PAGE_SZ);
	ASSERT_EQ(0, read_page(self->vcpu, 0, &faults, &around));
	ASSERT_EQ(AROUND - 1, around);

	/* DONTNEED of a neighbour: its leaf goes; it reads zero after. */
	ASSERT_EQ(0, madvise(self->mem + 5 * PAGE_SZ, PAGE_SZ, MADV_DONTNEED));
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE + 5 * PAGE_SZ, 1, &s));
	EXPECT_EQ(0, s & SECMMU_SNAP_PRESENT);
	ASSERT_EQ(0, guest_access(self->vcpu, BASE + 5 * PAGE_SZ, &buf, sizeof(buf), 0));
	EXPECT_EQ(0, buf);

	/* A new page mapped at a neighbour's address: the vCPU reads it. */
	ASSERT_EQ((void *)(self->mem + 7 * PAGE_SZ),
		  mmap(self->mem + 7 * PAGE_SZ, PAGE_SZ, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
	*(__u64 *)(self->mem + 7 * PAGE_SZ) = 0x7777;
	ASSERT_EQ(0, guest_access(self->vcpu, BASE + 7 * PAGE_SZ, &buf, sizeof(buf), 0));
	EXPECT_EQ(0x7777, buf);

	/* Read-only in the primary: no longer writable here either. */
	ASSERT_EQ(0, mprotect(self->mem + 9 * PAGE_SZ, PAGE_SZ, PROT_READ));
	ASSERT_EQ(0, snapshot(self->fd, 0, BASE + 9 * PAGE_SZ, 1, &s));
	EXPECT_EQ(0, s & SECMMU_SNAP_WRITABLE);
	EXPECT_NE(0, run_range(self->vcpu, SECMMU_RUN_WRITE, BASE + 9 * PAGE_SZ,
			       BASE + 10 * PAGE_SZ, PAGE_SZ, 1, NULL));
	ASSERT_EQ(0, mprotect(self->mem + 9 * PAGE_SZ, PAGE_SZ, PROT_READ | PROT_WRITE));

	ASSERT_EQ(0, audit_space(self->fd, &a));
	EXPECT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
	/* The rest of the group still reads what was written. */
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_VERIFY, BASE + 10 * PAGE_SZ,
			       BASE + AROUND * PAGE_SZ, PAGE_SZ, PATTERN, &run));
	EXPECT_EQ(0, run.mismatches);
}

struct rewrite {
	char *mem;
	unsigned long pages;
	int stop;
	unsigned long rounds;
};

/* DONTNEEDs a few pages at a time and writes them again, in a loop. */
static void *rewrite_thread(void *arg)
{
	struct rewrite *r = arg;
	unsigned int seed = 1;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		unsigned long p = rand_r(&seed) % r->pages, n = 1 + rand_r(&seed) % 8;

		if (p + n > r->pages)
			n = r->pages - p;
		madvise(r->mem + p * PAGE_SZ, n * PAGE_SZ, MADV_DONTNEED);
		fill(r->mem + p * PAGE_SZ, BASE + p * PAGE_SZ, n * PAGE_SZ);
		r->rounds++;
	}
	return NULL;
}

/*
 * fault_around_coherence, racing: the vCPU reads random groups while
 * another thread DONTNEEDs pages and writes them again; no leaf is ever
 * stale (SECMMU_AUDIT after each round), and the groups were mapped
 * around faults all along.
 */
TEST_F_TIMEOUT(around, race_with_invalidations, 60)
{
	const unsigned long pages = SZ_1M / PAGE_SZ;
	struct rewrite r = { .mem = self->mem, .pages = pages };
	unsigned long rounds = 0;
	unsigned int seed = 7;
	struct secmmu_audit a;
	struct secmmu_run run;
	__u64 around = vcpu_stat(self->vcpu, "fault_around");
	pthread_t t;
	double end;

	fill(self->mem, BASE, SZ_1M);
	ASSERT_EQ(0, pthread_create(&t, NULL, rewrite_thread, &r));
	end = now_s() + 10 / test_scale();
	while (now_s() < end) {
		unsigned long p = rand_r(&seed) % pages;

		ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_READ, BASE + p * PAGE_SZ,
				       BASE + (p + 1) * PAGE_SZ, PAGE_SZ, 0, NULL));
		if (++rounds % 64 == 0) {
			ASSERT_EQ(0, audit_space(self->fd, &a));
			ASSERT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
		}
	}
	__atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	ASSERT_EQ(0, audit_space(self->fd, &a));
	EXPECT_EQ(0, a.mismatches) TH_LOG("first at %#llx", a.first_gpa);
	around = vcpu_stat(self->vcpu, "fault_around") - around;
	ksft_print_msg("%lu reads, %lu rewrites, %llu leaves around faults, %llu retries\n",
		       rounds, r.rounds, (unsigned long long)around,
		       (unsigned long long)vcpu_stat(self->vcpu, "fault_retries"));
	EXPECT_GT(around, 0);
	/* What the vCPU reads now is what the process has. */
	ASSERT_EQ(0, run_range(self->vcpu, SECMMU_RUN_VERIFY, BASE, BASE + SZ_1M,
			       PAGE_SZ, PATTERN, &run));
	EXPECT_EQ(0, run.mismatches) TH_LOG("first at %#llx", run.first_mismatch);
}

TEST_HARNESS_MAIN
