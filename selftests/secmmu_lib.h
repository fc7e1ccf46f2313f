/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the secmmu selftests: thin wrappers of the uAPI that
 * return -errno instead of setting errno, so tests can ASSERT_EQ on them.
 */
#ifndef _SECMMU_LIB_H
#define _SECMMU_LIB_H

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>

#include <linux/secmmu.h>

#define PAGE_SZ		4096UL
#define SZ_1M		(1024UL * 1024)
#define SZ_2M		(2 * SZ_1M)
#define SZ_1G		(1024 * SZ_1M)

/* What older C libraries lack. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE	23
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT		26
#endif

/*
 * What the big tests divide their sizes by: SECMMU_TEST_SCALE from the
 * environment (guest-run.sh sets it, e.g. 4 under emulated arm64), 1 if
 * unset or invalid.
 */
static inline unsigned long test_scale(void)
{
	const char *s = getenv("SECMMU_TEST_SCALE");
	unsigned long v = s ? strtoul(s, NULL, 0) : 1;

	return v ? v : 1;
}

/*
 * Runs the calling thread on CPU @cpu only: 0, or -errno (-EINVAL if there
 * is no such CPU online; callers that only prefer a CPU ignore it). The
 * including file defines _GNU_SOURCE, as every selftest here does.
 */
static inline int pin_to_cpu(int cpu)
{
	cpu_set_t set;

	if (cpu < 0 || cpu >= sysconf(_SC_NPROCESSORS_ONLN))
		return -EINVAL;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? -errno : 0;
}

/* Lets the calling thread run on every online CPU again: 0 or -errno. */
static inline int unpin_cpu(void)
{
	long i, n = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;

	CPU_ZERO(&set);
	for (i = 0; i < n && i < CPU_SETSIZE; i++)
		CPU_SET(i, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? -errno : 0;
}

static inline int secmmu_ioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) < 0 ? -errno : 0;
}

/* Name of a page-table format, for test logs and fixture variants. */
static inline const char *format_name(unsigned int format)
{
	return format == SECMMU_FMT_ARM64_S2 ? "arm64" : "x86";
}

/*
 * A space configured with @nr_roots roots of page-table format @format and
 * @ia_bits guest-physical bits (0: the format's default, 48).
 */
/* A space configured with @cfg; returns its fd or -errno. */
static inline int space_create_cfg(struct secmmu_config *cfg)
{
	int fd = open("/dev/secmmu", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (secmmu_ioctl(fd, SECMMU_CONFIGURE, cfg)) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static inline int space_create_ia(unsigned int format, unsigned int nr_roots,
				  unsigned int flags, unsigned int ia_bits)
{
	struct secmmu_config cfg = {
		.flags = flags,
		.format = format,
		.nr_roots = nr_roots,
		.ia_bits = ia_bits,
	};

	return space_create_cfg(&cfg);
}

/* A space configured with @nr_roots roots of page-table format @format. */
static inline int space_create(unsigned int format, unsigned int nr_roots,
			       unsigned int flags)
{
	return space_create_ia(format, nr_roots, flags, 0);
}

static inline int set_slot(int fd, unsigned int slot, unsigned int flags,
			   unsigned long gpa, unsigned long size, void *hva)
{
	struct secmmu_memslot m = {
		.slot = slot,
		.flags = flags,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (unsigned long)hva,
	};

	return secmmu_ioctl(fd, SECMMU_SET_MEMSLOT, &m);
}

/* A vCPU on @root; returns its fd or -errno. */
static inline int vcpu_create(int fd, unsigned int root)
{
	struct secmmu_vcpu_create c = { .root = root };
	int ret = ioctl(fd, SECMMU_CREATE_VCPU, &c);

	return ret < 0 ? -errno : ret;
}

static inline int vcpu_run(int vcpu, struct secmmu_run *run)
{
	return secmmu_ioctl(vcpu, SECMMU_RUN, run);
}

/* One RUN pass of @op over [start, end) by @stride. */
static inline int run_range(int vcpu, unsigned int op, unsigned long start,
			    unsigned long end, unsigned long stride,
			    unsigned long pattern, struct secmmu_run *out)
{
	struct secmmu_run run = {
		.op = op, .start = start, .end = end, .stride = stride,
		.pattern = pattern, .passes = 1,
	};
	int ret = vcpu_run(vcpu, &run);

	if (out)
		*out = run;
	return ret;
}

static inline int guest_access(int vcpu, unsigned long gpa, void *buf,
			       unsigned long len, int write)
{
	struct secmmu_access a = {
		.gpa = gpa, .len = len, .buf = (unsigned long)buf,
		.flags = write ? SECMMU_ACCESS_WRITE : 0,
	};

	return secmmu_ioctl(vcpu, SECMMU_ACCESS, &a);
}

/*
 * Collects the dirty entries of a mapped dirty ring of @entries entries from
 * entry *@next on, setting their pages' bits in @bmap (slot @slot, of
 * @npages pages), as dirty_ring_collect_dirty_pages() of KVM's
 * dirty_log_test.c does: flags read with acquire, RESET set with release.
 * Returns how many, or -EPROTO for an entry the kernel should not have
 * pushed (another slot, a page past @npages, flags other than DIRTY).
 */
static inline long dirty_ring_collect(struct secmmu_dirty_gfn *ring,
				      unsigned long entries,
				      unsigned long *next, unsigned int slot,
				      unsigned long *bmap, unsigned long npages)
{
	long n = 0;

	for (;;) {
		struct secmmu_dirty_gfn *e = &ring[*next % entries];
		__u32 flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);

		if (!(flags & SECMMU_DIRTY_GFN_F_DIRTY))
			return n;
		if (flags != SECMMU_DIRTY_GFN_F_DIRTY || e->slot != slot ||
		    e->offset >= npages)
			return -EPROTO;
		bmap[e->offset / 64] |= 1UL << (e->offset % 64);
		__atomic_store_n(&e->flags, flags | SECMMU_DIRTY_GFN_F_RESET,
				 __ATOMIC_RELEASE);
		(*next)++;
		n++;
	}
}

/* SECMMU_RESET_DIRTY_RINGS: the entries it freed, or -errno. */
static inline long dirty_ring_reset(int fd)
{
	long ret = ioctl(fd, SECMMU_RESET_DIRTY_RINGS, 0);

	return ret < 0 ? -errno : ret;
}

static inline int snapshot(int fd, unsigned int root, unsigned long gpa,
			   unsigned long npages, unsigned char *buf)
{
	struct secmmu_snapshot s = {
		.root = root, .gpa = gpa, .npages = npages,
		.buf = (unsigned long)buf,
	};

	return secmmu_ioctl(fd, SECMMU_SNAPSHOT, &s);
}

/* How many of @n snapshot bytes have all of @bits. */
static inline unsigned long count_bits(const unsigned char *b, unsigned long n,
				       unsigned int bits)
{
	unsigned long i, c = 0;

	for (i = 0; i < n; i++)
		c += (b[i] & bits) == bits;
	return c;
}

static inline struct secmmu_stats get_stats(int fd)
{
	struct secmmu_stats s;

	memset(&s, 0, sizeof(s));
	ioctl(fd, SECMMU_GET_STATS, &s);
	return s;
}

/*
 * Statistic @name of the binary stats file that @cmd (SECMMU_GET_STATS_FD
 * on a space, SECMMU_GET_VCPU_STATS_FD on a vCPU) opens on @fd: its first
 * value, or ~0 if missing.
 */
static inline __u64 stat_named(int fd, unsigned long cmd, const char *name)
{
	struct secmmu_stats_header h;
	size_t dsz;
	char *descs;
	__u64 v = ~0ull;
	unsigned int i;
	int sfd = ioctl(fd, cmd, 0);

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

/* vCPU statistic @name; ~0 if missing. */
static inline __u64 vcpu_stat(int vcpu, const char *name)
{
	return stat_named(vcpu, SECMMU_GET_VCPU_STATS_FD, name);
}

/*
 * SECMMU_TEST_YOUNG: 1 if the space says the page at @hva is young, 0 if
 * not, -errno on error.
 */
static inline int test_young(int fd, const void *hva)
{
	struct secmmu_test_young t = { .hva = (unsigned long)hva };
	int ret = ioctl(fd, SECMMU_TEST_YOUNG, &t);

	return ret < 0 ? -errno : ret;
}

/*
 * SECMMU_AUDIT: checks every leaf of every root against the primary MMU.
 * 0 with @a filled in, or -errno (-ENOTTY: a module without the auditor).
 */
static inline int audit_space(int fd, struct secmmu_audit *a)
{
	memset(a, 0, sizeof(*a));
	return secmmu_ioctl(fd, SECMMU_AUDIT, a);
}

/* kB of the VMA holding @p that are PMD-mapped THPs (smaps AnonHugePages). */
static inline long anon_huge_kb(void *p)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	unsigned long start, end;
	char line[256];
	long kb = -1;
	int in = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
			in = start <= (uintptr_t)p && (uintptr_t)p < end;
		else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

/*
 * A private anonymous mapping of @size bytes (a multiple of 2M) at a
 * 2M-aligned address, advised with @advice (MADV_HUGEPAGE or
 * MADV_NOHUGEPAGE), not populated; munmap(p, @size) frees it. NULL on
 * failure.
 */
static inline char *mmap_2m_aligned(unsigned long size, int advice)
{
	unsigned long len = size + SZ_2M;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		return NULL;
	a = (char *)(((uintptr_t)p + SZ_2M - 1) & ~(SZ_2M - 1));
	if (a > p)
		munmap(p, a - p);
	if (p + len > a + size)
		munmap(a + size, p + len - (a + size));
	if (madvise(a, size, advice)) {
		munmap(a, size);
		return NULL;
	}
	return a;
}

/* Seconds on the monotonic clock. */
static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline void secmmu_noop_handler(int sig)
{
	(void)sig;
}

/*
 * Makes @sig interrupt, with a handler that does nothing and without
 * SA_RESTART: an ioctl sleeping interruptibly, or a RUN checking for
 * signals, returns EINTR when it arrives; one that does neither does not.
 */
static inline int catch_signal(int sig)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = secmmu_noop_handler;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, NULL);
}

/* Send @fd over the unix socket @sock (SCM_RIGHTS). */
static inline int send_fd(int sock, int fd)
{
	char byte = 0;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);

	memset(u.buf, 0, sizeof(u.buf));
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

/* Receive a file descriptor from the unix socket @sock, or -1. */
static inline int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cmsg;
	int fd;

	if (recvmsg(sock, &msg, 0) != 1)
		return -1;
	cmsg = CMSG_FIRSTHDR(&msg);
	if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
	return fd;
}

/*
 * A scratch ext4 filesystem (writeback, unlike tmpfs): a 64 MiB image
 * @img on a loop device, mounted at @mnt. The device's name goes to
 * @loopdev (@n bytes). Returns 0, or -1 if this machine cannot make one
 * (the caller skips). Undo with scratch_ext4_remove().
 */
static inline int scratch_ext4(const char *img, const char *mnt, char *loopdev, size_t n)
{
	char cmd[512];
	FILE *f;

	snprintf(cmd, sizeof(cmd),
		 "rm -f %s && truncate -s 64M %s && mkfs.ext4 -q -F %s && mkdir -p %s",
		 img, img, img, mnt);
	if (system(cmd))
		return -1;
	snprintf(cmd, sizeof(cmd), "losetup -f --show %s", img);
	f = popen(cmd, "r");
	if (!f || !fgets(loopdev, n, f)) {
		if (f)
			pclose(f);
		return -1;
	}
	pclose(f);
	loopdev[strcspn(loopdev, "\n")] = 0;
	return mount(loopdev, mnt, "ext4", 0, NULL) ? -1 : 0;
}

static inline void scratch_ext4_remove(const char *img, const char *mnt, const char *loopdev)
{
	char cmd[512];

	umount(mnt);
	snprintf(cmd, sizeof(cmd), "losetup -d %s; rm -f %s", loopdev, img);
	if (system(cmd))
		return;
}

/* The counters of the space's guest page caches (zero on error). */
static inline struct secmmu_gpc_stats get_gpc_stats(int fd)
{
	struct secmmu_gpc_stats s;

	memset(&s, 0, sizeof(s));
	ioctl(fd, SECMMU_GET_GPC_STATS, &s);
	return s;
}

/*
 * A thread that invalidates @mem in a loop until @stop, one
 * invalidate_range_start()/end() of the whole range per round: each round
 * populates @pages of its 4K pages and MADV_DONTNEEDs it. @size is the
 * range (0: 2 MiB); @pages 0 or 1 populates one page, a different one each
 * round, more populate that many from the start (all of a private range:
 * each invalidation zaps and frees them, as a balloon releasing guest
 * memory does); @read instead populates all of it in one
 * MADV_POPULATE_READ, for a shared mapping whose pages stay in the page
 * cache: a round is then about half invalidation (the zap of every entry).
 * @rounds counts the rounds.
 */
struct dontneed_storm {
	char *mem;
	unsigned long size;
	unsigned int pages;
	int read;
	atomic_int stop;
	unsigned long rounds;
};

static inline void *dontneed_storm(void *arg)
{
	struct dontneed_storm *s = arg;
	unsigned long size = s->size ? s->size : SZ_2M, i;

	madvise(s->mem, size, MADV_NOHUGEPAGE);
	while (!atomic_load(&s->stop)) {
		if (s->read) {
			madvise(s->mem, size, MADV_POPULATE_READ);
		} else if (s->pages > 1) {
			for (i = 0; i < s->pages && i < size / PAGE_SZ; i++)
				s->mem[i * PAGE_SZ] = 1;
		} else {
			s->mem[(s->rounds % (size / PAGE_SZ)) * PAGE_SZ] = 1;
		}
		madvise(s->mem, size, MADV_DONTNEED);
		s->rounds++;
	}
	return NULL;
}

#endif /* _SECMMU_LIB_H */
