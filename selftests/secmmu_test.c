// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu selftests: the device, its binding to one mm, and its lifetime.
 *
 * Each test states the behaviour it checks. They need /dev/secmmu (the
 * module loaded) and run as root; unload_while_open also needs the path of
 * secmmu.ko in $SECMMU_KO to load the module again afterwards.
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
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <stdint.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define SECMMU_DEV "/dev/secmmu"

static int secmmu_open(void)
{
	return open(SECMMU_DEV, O_RDWR | O_CLOEXEC);
}

/* Exit status of a child that checks one ioctl's errno. */
#define CHILD_OK	0
#define CHILD_WRONG	1

static int wait_child(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static long module_refcnt(void)
{
	FILE *f = fopen("/sys/module/secmmu/refcnt", "r");
	long n = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &n) != 1)
		n = -1;
	fclose(f);
	return n;
}

/* Opening creates a space; closing destroys it. Many times over. */
TEST(open_close)
{
	int i, fd;

	for (i = 0; i < 256; i++) {
		fd = secmmu_open();
		ASSERT_GE(fd, 0) TH_LOG("open %s: %s", SECMMU_DEV, strerror(errno));
		ASSERT_EQ(0, close(fd));
	}
}

/* The API version is the ioctl's return value; unknown ioctls are ENOTTY. */
TEST(api_version)
{
	int fd = secmmu_open();

	ASSERT_GE(fd, 0);
	EXPECT_EQ(SECMMU_API_VERSION, ioctl(fd, SECMMU_GET_API_VERSION, 0));
	EXPECT_EQ(-1, ioctl(fd, _IO(SECMMUIO, 0x7f), 0));
	EXPECT_EQ(ENOTTY, errno);
	EXPECT_EQ(-1, ioctl(fd, _IO('x', 0x00), 0));
	EXPECT_EQ(ENOTTY, errno);
	close(fd);
}

/* A bad user pointer for an ioctl's output is EFAULT, not a crash. */
TEST(stats_bad_pointer)
{
	int fd = secmmu_open();

	ASSERT_GE(fd, 0);
	EXPECT_EQ(-1, ioctl(fd, SECMMU_GET_STATS, NULL));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(fd, SECMMU_GET_STATS, (void *)-4096L));
	EXPECT_EQ(EFAULT, errno);
	close(fd);
}

/*
 * The space follows its mm: unmapping memory of the opener's mm reaches the
 * space's mmu_notifier as an invalidation of that range.
 */
TEST(notifier_sees_munmap)
{
	const size_t npages = 64, size = npages * 4096;
	struct secmmu_stats before, after;
	char *p;
	int fd;

	fd = secmmu_open();
	ASSERT_GE(fd, 0);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, p);
	memset(p, 0x5a, size);

	ASSERT_EQ(0, ioctl(fd, SECMMU_GET_STATS, &before));
	ASSERT_EQ(0, munmap(p, size));
	ASSERT_EQ(0, ioctl(fd, SECMMU_GET_STATS, &after));

	EXPECT_GT(after.invalidations, before.invalidations);
	EXPECT_GE(after.invalidated_pages - before.invalidated_pages, npages);
	close(fd);
}

/*
 * Only the creator's mm may use a space: a forked child that inherited the
 * fd, and an unrelated process that received it over a unix socket, both
 * get EIO. The creator still can, afterwards.
 */
TEST(other_mm_rejected)
{
	int sv[2], fd, ret;
	pid_t pid;

	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));

	/* A process forked before the open: it never inherited the fd. */
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		int got = recv_fd(sv[1]);

		if (got < 0)
			_exit(2);
		ret = ioctl(got, SECMMU_GET_API_VERSION, 0);
		_exit(ret == -1 && errno == EIO ? CHILD_OK : CHILD_WRONG);
	}

	fd = secmmu_open();
	ASSERT_GE(fd, 0);
	ASSERT_EQ(0, send_fd(sv[0], fd));
	ASSERT_EQ(CHILD_OK, wait_child(pid)) TH_LOG("receiver's ioctl was not EIO");

	/* A forked child: same fd, copy of the mm, but not the same mm. */
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		ret = ioctl(fd, SECMMU_GET_API_VERSION, 0);
		_exit(ret == -1 && errno == EIO ? CHILD_OK : CHILD_WRONG);
	}
	ASSERT_EQ(CHILD_OK, wait_child(pid)) TH_LOG("forked child's ioctl was not EIO");

	EXPECT_EQ(SECMMU_API_VERSION, ioctl(fd, SECMMU_GET_API_VERSION, 0));
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

/*
 * The creator exits (exit_mmap runs the notifier's release) while another
 * process holds the fd. The holder then gets EIO, and closing the last fd
 * afterwards unregisters from the dead mm cleanly.
 */
TEST(exit_with_fd_open)
{
	int sv[2], fd, i;
	pid_t pid;

	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
	for (i = 0; i < 16; i++) {
		pid = fork();
		ASSERT_GE(pid, 0);
		if (pid == 0) {
			int cfd = secmmu_open();
			char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

			if (cfd < 0 || p == MAP_FAILED)
				_exit(2);
			if (ioctl(cfd, SECMMU_GET_API_VERSION, 0) != SECMMU_API_VERSION)
				_exit(3);
			if (send_fd(sv[1], cfd))
				_exit(4);
			/* Exit with the space and the mapping alive. */
			_exit(0);
		}
		fd = recv_fd(sv[0]);
		ASSERT_GE(fd, 0);
		ASSERT_EQ(0, wait_child(pid));

		EXPECT_EQ(-1, ioctl(fd, SECMMU_GET_API_VERSION, 0));
		EXPECT_EQ(EIO, errno);
		ASSERT_EQ(0, close(fd));
	}
	close(sv[0]);
	close(sv[1]);
}

/*
 * An open space holds a module reference: unloading fails while it is open
 * (delete_module says EWOULDBLOCK; rmmod reports "in use") and works after
 * the close. The module is loaded again from $SECMMU_KO for later tests.
 */
TEST(unload_while_open)
{
	const char *ko = getenv("SECMMU_KO");
	int fd, kfd;

	if (!ko)
		SKIP(return, "SECMMU_KO is not set");

	fd = secmmu_open();
	ASSERT_GE(fd, 0);
	EXPECT_EQ(1, module_refcnt());
	EXPECT_EQ(-1, syscall(SYS_delete_module, "secmmu", O_NONBLOCK));
	EXPECT_EQ(EWOULDBLOCK, errno);
	/* Still usable after the refused unload. */
	EXPECT_EQ(SECMMU_API_VERSION, ioctl(fd, SECMMU_GET_API_VERSION, 0));
	ASSERT_EQ(0, close(fd));

	EXPECT_EQ(0, module_refcnt());
	ASSERT_EQ(0, syscall(SYS_delete_module, "secmmu", O_NONBLOCK))
		TH_LOG("delete_module after close: %s", strerror(errno));
	ASSERT_EQ(-1, access(SECMMU_DEV, F_OK));

	kfd = open(ko, O_RDONLY | O_CLOEXEC);
	ASSERT_GE(kfd, 0) TH_LOG("open %s: %s", ko, strerror(errno));
	ASSERT_EQ(0, syscall(SYS_finit_module, kfd, "", 0))
		TH_LOG("reload: %s", strerror(errno));
	close(kfd);

	fd = secmmu_open();
	ASSERT_GE(fd, 0);
	EXPECT_EQ(SECMMU_API_VERSION, ioctl(fd, SECMMU_GET_API_VERSION, 0));
	close(fd);
}

/* A configured space with one slot of @size bytes at guest address 0. */
static int space_with_slot(char **mem, unsigned long size)
{
	int fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0);

	if (fd < 0)
		return fd;
	*mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*mem == MAP_FAILED || set_slot(fd, 0, 0, 0, size, *mem)) {
		close(fd);
		return -ENOMEM;
	}
	return fd;
}

/*
 * Deleting a slot (memory_size 0) checks its flags like creating one does:
 * unknown flags are EINVAL, and the slot stays, still mapped and usable.
 */
TEST(delete_unknown_flags)
{
	static const unsigned int bad[] = { 1u << 2, 1u << 16, 1u << 31 };
	struct secmmu_memslot m = { .slot = 0 };
	unsigned int i;
	int fd, vcpu;
	char *mem;

	fd = space_with_slot(&mem, 4 * PAGE_SZ);
	ASSERT_GE(fd, 0) TH_LOG("space: %s", strerror(-fd));
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		m.flags = bad[i];
		EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_SET_MEMSLOT, &m))
			TH_LOG("delete with flags %#x was accepted", bad[i]);
		/*
		 * Still there: moving it is EBUSY, the same request again
		 * changes nothing, and the guest reaches it.
		 */
		EXPECT_EQ(-EBUSY, set_slot(fd, 0, 0, 4 * PAGE_SZ, 4 * PAGE_SZ, mem))
			TH_LOG("flags %#x: the slot was deleted", bad[i]);
		EXPECT_EQ(0, set_slot(fd, 0, 0, 0, 4 * PAGE_SZ, mem))
			TH_LOG("flags %#x: the slot was deleted", bad[i]);
		EXPECT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, 0, 4 * PAGE_SZ,
				       PAGE_SZ, i, NULL));
		EXPECT_EQ(i ^ (3 * PAGE_SZ), *(uint64_t *)(mem + 3 * PAGE_SZ));
	}
	/* A well-formed deletion works. */
	EXPECT_EQ(0, set_slot(fd, 0, 0, 0, 0, NULL));
	EXPECT_EQ(-ENOENT, set_slot(fd, 0, 0, 0, 0, NULL));
	close(vcpu);
	close(fd);
	munmap(mem, 4 * PAGE_SZ);
}

/* The lowest free file descriptor number. */
static int lowest_free_fd(void)
{
	int fd = dup(0);

	if (fd >= 0)
		close(fd);
	return fd;
}

/*
 * vCPU ids are given back: by a creation that fails after taking one (no
 * file descriptor left: EMFILE), and by closing a vCPU. A space has
 * SECMMU_MAX_VCPUS of them; more failures or closes than that must not
 * leave it unable to create vCPUs (ENOSPC).
 */
TEST(vcpu_id_reuse)
{
	const int n = SECMMU_MAX_VCPUS;
	struct rlimit old, low;
	int fd, i, ret, vcpus[SECMMU_MAX_VCPUS], round;

	fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(0, getrlimit(RLIMIT_NOFILE, &old));

	/* No descriptor left: every creation fails with EMFILE. */
	low = old;
	low.rlim_cur = lowest_free_fd();
	ASSERT_GT(low.rlim_cur, 0);
	ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &low));
	for (i = 0; i < 2 * n; i++) {
		ret = vcpu_create(fd, 0);
		if (ret >= 0)
			close(ret);
		EXPECT_EQ(-EMFILE, ret) TH_LOG("creation %d: %s", i, strerror(-ret));
		if (ret != -EMFILE)
			break;
	}
	ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &old));
	/* None of them kept an id. */
	for (i = 0; i < n; i++) {
		vcpus[i] = vcpu_create(fd, 0);
		ASSERT_GE(vcpus[i], 0)
			TH_LOG("vCPU %d after %d failed creations: %s", i, 2 * n,
			       strerror(-vcpus[i]));
	}
	EXPECT_EQ(-ENOSPC, vcpu_create(fd, 0));
	for (i = 0; i < n; i++)
		close(vcpus[i]);
	close(fd);

	/* Closed vCPUs give their ids back, round after round. */
	fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0);
	ASSERT_GE(fd, 0);
	for (round = 0; round < 3; round++) {
		for (i = 0; i < n; i++) {
			vcpus[i] = vcpu_create(fd, 0);
			ASSERT_GE(vcpus[i], 0)
				TH_LOG("round %d, vCPU %d: %s", round, i,
				       strerror(-vcpus[i]));
		}
		EXPECT_EQ(-ENOSPC, vcpu_create(fd, 0));
		for (i = 0; i < n; i++)
			ASSERT_EQ(0, close(vcpus[i]));
	}
	close(fd);
}

struct busy_runner {
	int vcpu;
	unsigned int passes;
	int ret;
	struct secmmu_run run;
	int done;		/* __atomic */
	pid_t tid;
	double t_end;
};

static void *busy_run_fn(void *arg)
{
	struct busy_runner *b = arg;

	__atomic_store_n(&b->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	b->run = (struct secmmu_run){
		.op = SECMMU_RUN_WRITE, .start = 0, .end = 16 * PAGE_SZ,
		.stride = PAGE_SZ, .pattern = 1, .passes = b->passes,
	};
	b->ret = vcpu_run(b->vcpu, &b->run);
	b->t_end = now_s();
	__atomic_store_n(&b->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Scheduler state of thread @tid of this process ('R', 'S', 'D', ...). */
static char task_state(pid_t tid)
{
	char path[64], buf[512], *p;
	int fd, n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return '?';
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] && p[2] ? p[2] : '?';
}

/* Waits up to @secs for @b to finish; true if it did. */
static int wait_done(struct busy_runner *b, double secs)
{
	double end = now_s() + secs;

	while (!__atomic_load_n(&b->done, __ATOMIC_ACQUIRE) && now_s() < end)
		usleep(10000);
	return __atomic_load_n(&b->done, __ATOMIC_ACQUIRE);
}

/*
 * A RUN on a vCPU another thread is running fails at once with EBUSY, or
 * waits interruptibly: a signal ends the wait with EINTR. It never sleeps
 * uninterruptibly until the other RUN ends (a hung task, if that RUN runs
 * for long). Thread A runs a RUN of "forever" (2^32-1 passes), B a short
 * RUN on the same vCPU, then B gets a signal: B must have returned within
 * a couple of seconds. A is stopped by a signal of its own afterwards.
 */
TEST(run_busy)
{
	struct busy_runner a = { .passes = ~0u }, b = { .passes = 1 };
	pthread_t ta, tb;
	char *mem, state;
	double t0, waited;
	int fd, round, b_done;

	ASSERT_EQ(0, catch_signal(SIGUSR1));
	fd = space_with_slot(&mem, 16 * PAGE_SZ);
	ASSERT_GE(fd, 0);
	a.vcpu = vcpu_create(fd, 0);
	ASSERT_GE(a.vcpu, 0);
	b.vcpu = a.vcpu;
	for (round = 0; round < 3; round++) {
		a.done = 0;
		b.done = 0;
		state = '-';
		ASSERT_EQ(0, pthread_create(&ta, NULL, busy_run_fn, &a));
		/* A is in its RUN once it wrote the slot's first page. */
		while (__atomic_load_n((uint64_t *)mem, __ATOMIC_RELAXED) != 1 &&
		       !__atomic_load_n(&a.done, __ATOMIC_ACQUIRE))
			usleep(1000);
		usleep(50000);
		ASSERT_FALSE(__atomic_load_n(&a.done, __ATOMIC_ACQUIRE))
			TH_LOG("A's RUN ended: %d", a.ret);
		t0 = now_s();
		ASSERT_EQ(0, pthread_create(&tb, NULL, busy_run_fn, &b));
		while (!__atomic_load_n(&b.tid, __ATOMIC_ACQUIRE))
			usleep(1000);
		/* Give B time to block, then signal it (it alone). */
		if (!wait_done(&b, 0.5)) {
			state = task_state(b.tid);
			pthread_kill(tb, SIGUSR1);
			wait_done(&b, 2);
		}
		waited = now_s() - t0;
		b_done = __atomic_load_n(&b.done, __ATOMIC_ACQUIRE);
		if (!b_done)
			TH_LOG("round %d: B's RUN still waits %.1f s after a signal, in state %c",
			       round, waited, state);
		/* Stop A (B, if it still waits, then gets the vCPU and runs once). */
		pthread_kill(ta, SIGUSR1);
		pthread_join(ta, NULL);
		pthread_join(tb, NULL);
		EXPECT_EQ(-EINTR, a.ret);
		EXPECT_TRUE(b.ret == -EBUSY || b.ret == -EINTR)
			TH_LOG("round %d: B's RUN returned %d (%s) after %.1f s, state %c",
			       round, b.ret, strerror(-b.ret), b.t_end - t0, state);
		/* Done on its own, before A's RUN ended. */
		EXPECT_TRUE(b_done);
		EXPECT_LT(b.t_end - t0, 2.5);
		b.tid = 0;
		if (_metadata->exit_code)
			break;
	}
	close(a.vcpu);
	close(fd);
	munmap(mem, 16 * PAGE_SZ);
}

TEST_HARNESS_MAIN
