// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu demo: create a space, change the mirrored process's memory the
 * ways the mm core reports to secondary MMUs, and print what the space saw.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <linux/secmmu.h>

static void die(const char *what)
{
	fprintf(stderr, "secmmu-demo: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void show(int fd, const char *after)
{
	struct secmmu_stats s;

	if (ioctl(fd, SECMMU_GET_STATS, &s))
		die("SECMMU_GET_STATS");
	printf("%-28s invalidations %4llu (non-blocking %llu), pages %6llu\n",
	       after, (unsigned long long)s.invalidations,
	       (unsigned long long)s.invalidations_nonblock,
	       (unsigned long long)s.invalidated_pages);
}

int main(void)
{
	const size_t size = 16 << 20;
	char *p;
	int fd;

	fd = open("/dev/secmmu", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open /dev/secmmu");
	printf("secmmu API version %d\n", ioctl(fd, SECMMU_GET_API_VERSION, 0));
	show(fd, "after open:");

	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	memset(p, 1, size);
	show(fd, "after touching 16 MiB:");
	if (madvise(p, size / 2, MADV_DONTNEED))
		die("madvise");
	show(fd, "after MADV_DONTNEED 8 MiB:");
	if (mprotect(p + size / 2, size / 4, PROT_READ))
		die("mprotect");
	show(fd, "after mprotect RO 4 MiB:");
	if (munmap(p, size))
		die("munmap");
	show(fd, "after munmap 16 MiB:");
	close(fd);
	return 0;
}
