// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu OOM selftests: the invalidations that may not block.
 *
 * The OOM reaper (__oom_reap_task_mm() in mm/oom_kill.c) unmaps the
 * anonymous memory of an OOM victim whose mm is still alive, and calls
 * mmu_notifier_invalidate_range_start_nonblock() for each of its VMAs: the
 * one invalidation whose range is not blockable. The mm core runs it
 * between non_block_start() and non_block_end(), so on the debug kernel
 * (CONFIG_DEBUG_ATOMIC_SLEEP) anything that may sleep in secmmu's
 * invalidate_range_start() or invalidate_range_end() then splats ("BUG:
 * sleeping function called from invalid context ... non_block: 1", or "BUG:
 * scheduling in a non-blocking section"), and the VM runner fails the run.
 * process_mrelease() runs the same reaping for a killed process from the
 * caller's context.
 *
 * Each round forks a victim that creates a space, a memslot over an
 * anonymous region that a vCPU faults in and keeps reading (RUN), and then
 * dies with the space still mapping the region:
 *   oom_reaper: the victim is in a memory cgroup v2 whose memory.max it
 *     allocates past; the memcg OOM killer kills it and the OOM reaper, two
 *     seconds later (OOM_REAPER_DELAY), reaps it.
 *   mrelease: the parent kills it with SIGKILL and reaps it at once with
 *     process_mrelease().
 * A killed process normally exits, and runs exit_mmap(), long before the
 * reaper's delay is over (its vCPU threads see the signal and return from
 * RUN). Here its reader threads keep its mm alive: each is in a preadv()
 * of a sparse tmpfs file into a small populated buffer, 2 GiB of holes read
 * as zeros, which a fatal signal does not stop (shmem_file_read_iter()
 * checks for none). Once the reaper has unmapped the buffer, the next copy
 * into it faults (the mm is MMF_UNSTABLE) and the read returns: the reaping
 * is what lets the victim exit.
 *
 * That the non-blockable invalidation ran, and found live mappings to zap,
 * is read from the module's debugfs counter nonblock_zapped (the victim's
 * own SECMMU_GET_STATS dies with it); the OOM reaper's "oom_reaper: reaped
 * process" line in /dev/kmsg says that the reaper did it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#ifndef __NR_pidfd_open
#define __NR_pidfd_open		434
#endif
#ifndef __NR_process_mrelease
#define __NR_process_mrelease	448
#endif

#define GPA_BASE	0x40000000UL
/* The region the space maps, divided by SECMMU_TEST_SCALE. */
#define REGION_SZ	(32 * SZ_1M)
/* memory.max: the region, the readers' buffer and the rest, plus this. */
#define OOM_SLACK	(16 * SZ_1M)

/* The readers: each preadv() reads IOVS x CHUNK of holes into one buffer. */
#define READERS		2
#define IOVS		1024
#define CHUNK		(2 * SZ_1M)
#define HOLE_FILE_SZ	(4 * SZ_1G)

#define NONBLOCK_ZAPPED	"/sys/kernel/debug/secmmu/nonblock_zapped"
#define CGROUP_ROOT	"/sys/fs/cgroup"

enum victim_mode { VICTIM_OOM, VICTIM_KILLED };

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	n = n < 0 ? -errno : 0;
	close(fd);
	return n;
}

/* The first line of @path, or "" (@buf holds @len bytes). */
static char *read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? 0 : read(fd, buf, len - 1);

	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static unsigned long long nonblock_zapped(void)
{
	char buf[32];

	return strtoull(read_file(NONBLOCK_ZAPPED, buf, sizeof(buf)), NULL, 0);
}

/*
 * The victim's vCPU: reads the region over and over (every page mapped by
 * the first pass stays mapped) until the process is killed.
 */
struct victim_vcpu {
	int vcpu;
	unsigned long size;
};

static void *vcpu_reader(void *arg)
{
	struct victim_vcpu *v = arg;

	for (;;)
		run_range(v->vcpu, SECMMU_RUN_READ, GPA_BASE, GPA_BASE + v->size,
			  PAGE_SZ, 0, NULL);
	return NULL;
}

/* The readers that keep the victim's mm alive after it is killed. */
struct hole_reader {
	int fd;			/* a sparse tmpfs file */
	struct iovec iov[IOVS];
	int started;		/* __atomic: readers about to call preadv() */
};

static void *hole_reader(void *arg)
{
	struct hole_reader *h = arg;

	/* This thread only: leave the CPUs to the victim's allocations. */
	setpriority(PRIO_PROCESS, 0, 19);
	for (;;) {
		__atomic_add_fetch(&h->started, 1, __ATOMIC_RELEASE);
		preadv(h->fd, h->iov, IOVS, 0);
	}
	return NULL;
}

/*
 * The victim, in a child: joins the cgroup of @procs (a cgroup.procs file)
 * unless it is NULL, maps @size bytes of anonymous memory in a space of
 * @format, faults it all in, starts the threads, and says so with one byte
 * on @ready. Then it allocates until the OOM killer kills it (VICTIM_OOM),
 * or waits for the parent's SIGKILL. The exit codes say where it failed:
 * it is meant to die of SIGKILL.
 */
static int victim(unsigned int format, unsigned long size, const char *procs,
		  int ready, enum victim_mode mode)
{
	static struct hole_reader h;
	struct victim_vcpu v;
	pthread_t t;
	char *mem, *buf;
	unsigned long i;
	int fd;

	/* Die with the test: the readers would keep it alive for long. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Only the victim is in the cgroup: it is the one the OOM kills. */
	if (procs && write_file(procs, "0"))
		return 9;
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fd = space_create(format, 1, 0);
	if (mem == MAP_FAILED || fd < 0 || set_slot(fd, 0, 0, GPA_BASE, size, mem))
		return 10;
	v.vcpu = vcpu_create(fd, 0);
	v.size = size;
	if (v.vcpu < 0 ||
	    run_range(v.vcpu, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + size,
		      PAGE_SZ, 1, NULL))
		return 11;
	if (pthread_create(&t, NULL, vcpu_reader, &v))
		return 12;

	h.fd = memfd_create("secmmu-holes", MFD_CLOEXEC);
	buf = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h.fd < 0 || ftruncate(h.fd, HOLE_FILE_SZ) || buf == MAP_FAILED)
		return 13;
	memset(buf, 1, CHUNK);
	for (i = 0; i < IOVS; i++) {
		h.iov[i].iov_base = buf;
		h.iov[i].iov_len = CHUNK;
	}
	for (i = 0; i < READERS; i++)
		if (pthread_create(&t, NULL, hole_reader, &h))
			return 14;
	while (__atomic_load_n(&h.started, __ATOMIC_ACQUIRE) < READERS)
		usleep(1000);
	/* Let them get into the kernel. */
	usleep(20000);
	if (write(ready, "r", 1) != 1)
		return 15;
	if (mode == VICTIM_KILLED) {
		for (;;)
			pause();
	}
	/* Allocate until killed; 1 GiB past memory.max is far enough. */
	for (i = 0; i < SZ_1G / SZ_1M; i++) {
		char *p = mmap(NULL, SZ_1M, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return 16;
		memset(p, 2, SZ_1M);
	}
	return 17;
}

/*
 * Forks a victim (see victim()), waits until it is ready and returns its
 * pid; -1 if it did not get ready, with its wait status in *@status.
 */
static pid_t start_victim(unsigned int format, unsigned long size,
			  const char *procs, enum victim_mode mode, int *status)
{
	int pipefd[2];
	pid_t pid;
	char c;

	if (pipe2(pipefd, O_CLOEXEC))
		return -1;
	pid = fork();
	if (pid == 0) {
		close(pipefd[0]);
		_exit(victim(format, size, procs, pipefd[1], mode));
	}
	close(pipefd[1]);
	if (pid > 0 && read(pipefd[0], &c, 1) != 1) {
		waitpid(pid, status, 0);
		pid = -1;
	}
	close(pipefd[0]);
	return pid;
}

/* Whether /dev/kmsg, from where @fd was left, has a line with @what. */
static int kmsg_has(int fd, const char *what)
{
	char rec[2048];
	int found = 0;

	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);

		if (n < 0 && errno == EPIPE)	/* overwritten: go on */
			continue;
		if (n <= 0)
			return found;
		rec[n] = '\0';
		found |= !!strstr(rec, what);
	}
}

FIXTURE(oom) {
	char cgroup[64];	/* the victims' memory cgroup, or "" */
	int mounted;		/* we mounted cgroup2 on CGROUP_ROOT */
	unsigned long size;
	double budget;		/* seconds of rounds */
};

FIXTURE_VARIANT(oom) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(oom, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(oom, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(oom)
{
	if (access(NONBLOCK_ZAPPED, R_OK))
		SKIP(return, "no %s (debugfs not mounted?)", NONBLOCK_ZAPPED);
	self->size = REGION_SZ / test_scale();
	self->budget = 12;
}

FIXTURE_TEARDOWN(oom)
{
	if (self->cgroup[0])
		rmdir(self->cgroup);
	if (self->mounted)
		umount(CGROUP_ROOT);
}

/*
 * Makes a memory cgroup v2 for the victims, limited to @max bytes, and
 * puts its path in @cgroup (of @len bytes); sets *@mounted if it had to
 * mount cgroup2. Returns NULL, or why not.
 */
static const char *oom_cgroup(char *cgroup, size_t len, int *mounted,
			      unsigned long max)
{
	char path[128], buf[256];

	if (access(CGROUP_ROOT "/cgroup.controllers", F_OK)) {
		if (mount("cgroup2", CGROUP_ROOT, "cgroup2", 0, NULL))
			return "cgroup v2 is not mounted and cannot be";
		*mounted = 1;
	}
	if (!strstr(read_file(CGROUP_ROOT "/cgroup.controllers", buf, sizeof(buf)),
		    "memory"))
		return "no memory controller in cgroup v2";
	if (!strstr(read_file(CGROUP_ROOT "/cgroup.subtree_control", buf, sizeof(buf)),
		    "memory") &&
	    write_file(CGROUP_ROOT "/cgroup.subtree_control", "+memory"))
		return "cannot enable the memory controller";
	snprintf(cgroup, len, CGROUP_ROOT "/secmmu-oom-%d", getpid());
	if (mkdir(cgroup, 0755)) {
		cgroup[0] = '\0';
		return "cannot create a cgroup";
	}
	snprintf(path, sizeof(path), "%s/memory.max", cgroup);
	snprintf(buf, sizeof(buf), "%lu", max);
	if (write_file(path, buf))
		return "cannot set memory.max";
	/* No swap device in the guest, but make sure: the limit is all. */
	snprintf(path, sizeof(path), "%s/memory.swap.max", cgroup);
	write_file(path, "0");
	return NULL;
}

/*
 * The memcg OOM killer kills the victim and the OOM reaper reaps it:
 * every round, the reaper's non-blockable invalidation zaps the space's
 * mappings of the region (nonblock_zapped grows) and the reaper says it
 * reaped the victim.
 */
TEST_F_TIMEOUT(oom, oom_reaper, 180)
{
	unsigned long long zapped = 0;
	int rounds = 0, kmsg;
	const char *why;
	char procs[128];
	double t0;

	why = oom_cgroup(self->cgroup, sizeof(self->cgroup), &self->mounted,
			 self->size + CHUNK + OOM_SLACK);
	if (why)
		SKIP(return, "%s", why);
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", self->cgroup);
	kmsg = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	t0 = now_s();
	do {
		unsigned long long before = nonblock_zapped(), delta;
		int status = 0;
		char line[64];
		pid_t pid;

		if (kmsg >= 0)
			lseek(kmsg, 0, SEEK_END);
		pid = start_victim(variant->format, self->size, procs, VICTIM_OOM,
				   &status);
		ASSERT_GT(pid, 0) TH_LOG("the victim exited with %d", WEXITSTATUS(status));
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
		ASSERT_TRUE(WIFSIGNALED(status))
			TH_LOG("round %d: the victim exited with %d", rounds,
			       WEXITSTATUS(status));
		ASSERT_EQ(SIGKILL, WTERMSIG(status));
		delta = nonblock_zapped() - before;
		EXPECT_GT(delta, 0)
			TH_LOG("round %d: no mapping zapped by a non-blockable invalidation",
			       rounds);
		zapped += delta;
		if (kmsg >= 0) {
			snprintf(line, sizeof(line), "oom_reaper: reaped process %d ", pid);
			EXPECT_TRUE(kmsg_has(kmsg, line))
				TH_LOG("round %d: no \"%s\" in /dev/kmsg", rounds, line);
		}
		rounds++;
	} while (now_s() - t0 < self->budget);
	if (kmsg >= 0)
		close(kmsg);
	TH_LOG("%d rounds, %llu leaves zapped by the OOM reaper", rounds, zapped);
}

/*
 * process_mrelease() right after SIGKILL: the same reaping, in the
 * parent's context, while the vCPU may still be in RUN. The parent has
 * just run and is often due for rescheduling in the middle of the zap: a
 * module that yields there (cond_resched() in a non-blockable
 * invalidation) splats here within a few rounds.
 */
TEST_F_TIMEOUT(oom, mrelease, 180)
{
	unsigned long long zapped = 0;
	int rounds = 0;
	double t0 = now_s();

	do {
		unsigned long long before = nonblock_zapped(), delta;
		int status = 0, pidfd, ret;
		pid_t pid;

		pid = start_victim(variant->format, self->size, NULL, VICTIM_KILLED,
				   &status);
		ASSERT_GT(pid, 0) TH_LOG("the victim exited with %d", WEXITSTATUS(status));
		pidfd = syscall(__NR_pidfd_open, pid, 0);
		ASSERT_GE(pidfd, 0);
		ASSERT_EQ(0, kill(pid, SIGKILL));
		ret = syscall(__NR_process_mrelease, pidfd, 0) ? -errno : 0;
		EXPECT_EQ(0, ret) TH_LOG("process_mrelease: %s", strerror(-ret));
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
		close(pidfd);
		ASSERT_TRUE(WIFSIGNALED(status));
		ASSERT_EQ(SIGKILL, WTERMSIG(status));
		delta = nonblock_zapped() - before;
		EXPECT_GT(delta, 0)
			TH_LOG("round %d: no mapping zapped by a non-blockable invalidation",
			       rounds);
		zapped += delta;
		rounds++;
	} while (now_s() - t0 < self->budget / 2);
	TH_LOG("%d rounds, %llu leaves zapped by process_mrelease()", rounds, zapped);
}

TEST_HARNESS_MAIN
