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

/* vCPU statistic @name from its stats file; ~0 if missing. */
static __u64 vcpu_stat(int vcpu, const char *name)
{
	struct secmmu_stats_header h;
	size_t dsz;
	char *descs;
	__u64 v = ~0ull;
	unsigned int i;
	int sfd = ioctl(vcpu, SECMMU_GET_VCPU_STATS_FD, 0);

	if (sfd < 0)
		return ~0ull;
	if (pread(sfd, &h, sizeof(h), 0) != sizeof(h))
		goto out;
	dsz = sizeof(struct secmmu_stats_desc) + h.name_size;
	descs = malloc(h.num_desc * dsz);
	if (!descs)
		goto out;
	if (pread(sfd, descs, h.num_desc * dsz, h.desc_offset) == (ssize_t)(h.num_desc * dsz)) {
		for (i = 0; i < h.num_desc; i++) {
			struct secmmu_stats_desc *d = (void *)(descs + i * dsz);

			if (strcmp(d->name, name))
				continue;
			if (pread(sfd, &v, sizeof(v), h.data_offset + d->offset) != sizeof(v))
				v = ~0ull;
			break;
		}
	}
	free(descs);
out:
	close(sfd);
	return v;
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

TEST_HARNESS_MAIN
