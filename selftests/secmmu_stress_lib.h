/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers of secmmu_stress and secmmu_fail_nth: SECMMU_AUDIT, sysfs and
 * debugfs knobs, pagemap, a seeded random generator. They return -errno
 * like secmmu_lib.h's wrappers.
 */
#ifndef _SECMMU_STRESS_LIB_H
#define _SECMMU_STRESS_LIB_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>

#include <linux/secmmu.h>

/* SECMMU_AUDIT into @a: 0 or -errno. */
static inline int stress_audit(int fd, struct secmmu_audit *a)
{
	memset(a, 0, sizeof(*a));
	return ioctl(fd, SECMMU_AUDIT, a) < 0 ? -errno : 0;
}

/* Writes @val to the file @path: 0 or -errno (-ENOENT if it is missing). */
static inline int stress_write_file(const char *path, const char *val)
{
	ssize_t len = strlen(val), ret;
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	ret = write(fd, val, len);
	if (ret < 0)
		ret = -errno;
	close(fd);
	return ret == len ? 0 : ret < 0 ? ret : -EIO;
}

/*
 * Reads the file @path into @buf (NUL-terminated, trailing newline
 * dropped): 0 or -errno.
 */
static inline int stress_read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = 0;
	return 0;
}

/* The pfn backing @addr, from an open /proc/self/pagemap, or 0. */
static inline __u64 stress_pfn(int pagemap, const void *addr)
{
	__u64 e;

	if (pread(pagemap, &e, 8, (uintptr_t)addr / 4096 * 8) != 8)
		return 0;
	return (e & (1ULL << 63)) ? e & ((1ULL << 55) - 1) : 0;
}

static inline __u64 stress_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* splitmix64: seeds; xorshift64*: one generator per thread. */
static inline __u64 stress_mix(__u64 x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

struct stress_rng {
	__u64 s;
};

static inline void stress_rng_init(struct stress_rng *r, __u64 seed)
{
	r->s = stress_mix(seed) | 1;
}

static inline __u64 stress_rand(struct stress_rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545f4914f6cdd1dULL;
}

/* Uniform in [0, n), n > 0. */
static inline __u64 stress_below(struct stress_rng *r, __u64 n)
{
	return (stress_rand(r) >> 11) % n;
}

#endif /* _SECMMU_STRESS_LIB_H */
