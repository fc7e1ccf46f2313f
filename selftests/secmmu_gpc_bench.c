// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu guest page cache benchmark: how long a refresh of a kernel-mapped
 * guest page cache takes while another thread MADV_DONTNEEDs unrelated
 * memory in a loop, and how often a timer writing through such a cache
 * finds it invalid.
 *
 * usage: secmmu_gpc_bench LABEL [REFRESHES [STORM]]
 *
 * STORM is what the other thread does to memory the caches never map:
 * "dontneed" (default): populate one page of 2 MiB and MADV_DONTNEED the
 * 2 MiB, in a loop; "mprotect": make 64 MiB of populated memory read-only
 * and writable again, in a loop, so that an invalidation is in progress
 * nearly all the time (KVM's worst case: a refresh under its rule waits for
 * a moment with none in progress and none ended since it began).
 *
 * The retry rule is the module's (parameter gpc_any_invalidation, read when
 * a space is opened): guest-bench.sh loads the module once with each rule
 * and runs this for both, in the same VM boot.
 *
 * Refreshes: SECMMU_SET_RUN_PAGE activates a vCPU's run-page cache and
 * refreshes it; each call is timed. With the range rule a refresh starts
 * over only for an invalidation of its own page; with KVM 7.3's it starts
 * over while any invalidation is in progress, or when one ended since it
 * began.
 *
 * Timer: the clock page ticks every 20 us from hard IRQ context, a vCPU
 * exits in a loop (each exit refreshes the clock's cache if the timer found
 * it invalid), the clock's page is write-protected and made writable again
 * every 5 ms (each time invalidating the cache), and the storm goes on. The
 * miss rate is the ticks that found the cache invalid.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "secmmu_lib.h"

#define GPA_BASE	0x40000000UL
#define SIZE		(16 * PAGE_SZ)

#define MPROTECT_SZ	(64 * SZ_1M)

struct mprotect_storm {
	char *mem;
	atomic_int stop;
	unsigned long rounds;
};

static void *mprotect_storm(void *arg)
{
	struct mprotect_storm *s = arg;

	while (!atomic_load(&s->stop)) {
		mprotect(s->mem, MPROTECT_SZ, PROT_READ);
		mprotect(s->mem, MPROTECT_SZ, PROT_READ | PROT_WRITE);
		s->rounds++;
	}
	return NULL;
}

struct exits {
	int vcpu;
	atomic_int stop;
};

static void *exit_loop(void *arg)
{
	struct exits *e = arg;
	char b;

	while (!atomic_load(&e->stop))
		guest_access(e->vcpu, GPA_BASE, &b, 1, 0);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	const char *label = argc > 1 ? argv[1] : "?";
	unsigned long n = argc > 2 ? strtoul(argv[2], NULL, 0) : 20000, i;
	int mp = argc > 3 && !strcmp(argv[3], "mprotect");
	struct mprotect_storm ms = { 0 };
	unsigned long *rounds;
	struct secmmu_run_page_setup rp = { .gpa = GPA_BASE + 3 * PAGE_SZ,
					    .flags = SECMMU_RUN_PAGE_ENABLE };
	struct secmmu_clock_setup cs = { .gpa = GPA_BASE + 5 * PAGE_SZ,
					 .period_ns = 20000,
					 .flags = SECMMU_CLOCK_PAGE_ENABLE };
	struct secmmu_gpc_stats a, b;
	struct dontneed_storm s = { 0 };
	struct exits e = { 0 };
	unsigned long *lat;
	pthread_t st, et;
	double t0, t1;
	int fd, vcpu, vcpu2;
	char *mem;

	fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0);
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s.mem = mmap(NULL, SZ_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	lat = calloc(n, sizeof(*lat));
	rounds = mp ? &ms.rounds : &s.rounds;
	if (mp) {
		ms.mem = mmap(NULL, MPROTECT_SZ, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (ms.mem == MAP_FAILED)
			return 1;
		memset(ms.mem, 1, MPROTECT_SZ);
	}
	if (fd < 0 || mem == MAP_FAILED || s.mem == MAP_FAILED || !lat ||
	    set_slot(fd, 0, 0, GPA_BASE, SIZE, mem)) {
		fprintf(stderr, "gpc bench: setup failed\n");
		return 1;
	}
	memset(mem, 0, SIZE);
	vcpu = vcpu_create(fd, 0);
	vcpu2 = vcpu_create(fd, 0);
	if (vcpu < 0 || vcpu2 < 0)
		return 1;

	/* Refresh latency under the storm. */
	a = get_gpc_stats(fd);
	if (mp)
		pthread_create(&st, NULL, mprotect_storm, &ms);
	else
		pthread_create(&st, NULL, dontneed_storm, &s);
	t0 = now_s();
	for (i = 0; i < n; i++) {
		double t = now_s();

		if (secmmu_ioctl(vcpu, SECMMU_SET_RUN_PAGE, &rp)) {
			fprintf(stderr, "gpc bench: SET_RUN_PAGE: %s\n", strerror(errno));
			return 1;
		}
		lat[i] = (unsigned long)((now_s() - t) * 1e9);
	}
	t1 = now_s();
	b = get_gpc_stats(fd);
	qsort(lat, n, sizeof(*lat), cmp_u64);
	printf("gpc %-9s %-8s refresh: median %7lu ns  p99 %9lu ns  max %10lu ns  %8.0f /s",
	       label, mp ? "mprotect" : "dontneed", lat[n / 2], lat[n * 99 / 100], lat[n - 1],
	       n / (t1 - t0));
	printf("  retries: %llu overlap, %llu unrelated; %lu storm rounds\n",
	       b.retries_overlap - a.retries_overlap,
	       b.retries_unrelated - a.retries_unrelated, *rounds);

	/* The timer's misses, with its page invalidated every 5 ms. */
	a = get_gpc_stats(fd);
	if (secmmu_ioctl(fd, SECMMU_SET_CLOCK_PAGE, &cs)) {
		fprintf(stderr, "gpc bench: SET_CLOCK_PAGE: %s\n", strerror(errno));
		return 1;
	}
	e.vcpu = vcpu2;
	pthread_create(&et, NULL, exit_loop, &e);
	for (i = 0; i < 200; i++) {
		usleep(5000);
		mprotect(mem + 5 * PAGE_SZ, PAGE_SZ, PROT_READ);
		mprotect(mem + 5 * PAGE_SZ, PAGE_SZ, PROT_READ | PROT_WRITE);
	}
	atomic_store(&e.stop, 1);
	pthread_join(et, NULL);
	memset(&cs, 0, sizeof(cs));
	secmmu_ioctl(fd, SECMMU_SET_CLOCK_PAGE, &cs);
	b = get_gpc_stats(fd);
	atomic_store(&s.stop, 1);
	atomic_store(&ms.stop, 1);
	pthread_join(st, NULL);
	{
		unsigned long up = b.clock_updates - a.clock_updates;
		unsigned long miss = b.clock_misses - a.clock_misses;

		printf("gpc %-9s %-8s timer: %lu ticks, %lu missed (%.2f%%)\n", label,
		       mp ? "mprotect" : "dontneed", up + miss, miss,
		       up + miss ? 100.0 * miss / (up + miss) : 0);
	}
	close(vcpu2);
	close(vcpu);
	close(fd);
	return 0;
}
