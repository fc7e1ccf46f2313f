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
 * "dontneed" (default): populate 2 MiB of 4K pages and MADV_DONTNEED them,
 * in a loop, as a balloon driver releasing guest memory does (each
 * invalidation zaps and frees 512 pages); "dontneed1": the same with one
 * page populated per round, so that each invalidation is about as short as
 * a refresh; "dontneed-shared": the same on 16 MiB of a shared memfd
 * mapping, populated in one MADV_POPULATE_READ (the pages stay in the page
 * cache, so a round is about half the zap of 4096 entries: an invalidation
 * is in progress much of the time, as when a VMM releases a large range of
 * memfd-backed guest memory over and over);
 * "mprotect": make 64 MiB of populated memory read-only
 * and writable again, in a loop, so that an invalidation is in progress
 * nearly all the time (KVM's worst case: a refresh under its rule waits for
 * a moment with none in progress and none ended since it began).
 *
 * The retry rule is the module's (parameter gpc_any_invalidation, read when
 * a space is opened): guest-bench.sh loads the module once with each rule
 * and runs this for both, in the same VM boot.
 *
 * Refreshes: SECMMU_SET_RUN_PAGE activates a vCPU's run-page cache and
 * refreshes it. REFRESHES of them, one every 50 us, are timed each
 * (median, p99, max); then as many back to back give the rate. The
 * refreshing thread runs on CPU 0 and the storm on CPU 1: sharing a CPU,
 * a refresh would wait for the storm's time slice under either rule.
 * With the range rule a refresh starts over only for an invalidation of
 * its own page; with KVM 7.3's it starts over while any invalidation is in
 * progress, or when one ended since it began.
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
#include <sched.h>
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
#define SHARED_SZ	(16 * SZ_1M)
#define PACE_NS		50000

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

/* A storm on CPU 1, away from the refreshing thread on CPU 0. */
struct storm {
	void *(*fn)(void *arg);
	void *arg;
};

static void *pinned_storm(void *arg)
{
	struct storm *st = arg;

	pin_to_cpu(1);
	return st->fn(st->arg);
}

int main(int argc, char **argv)
{
	const char *label = argc > 1 ? argv[1] : "?";
	unsigned long n = argc > 2 ? strtoul(argv[2], NULL, 0) : 20000, i;
	const char *storm = argc > 3 ? argv[3] : "dontneed";
	int mp = !strcmp(storm, "mprotect");
	struct mprotect_storm ms = { 0 };
	unsigned long *rounds;
	struct secmmu_run_page_setup rp = { .gpa = GPA_BASE + 3 * PAGE_SZ,
					    .flags = SECMMU_RUN_PAGE_ENABLE };
	struct secmmu_clock_setup cs = { .gpa = GPA_BASE + 5 * PAGE_SZ,
					 .period_ns = 20000,
					 .flags = SECMMU_CLOCK_PAGE_ENABLE };
	struct secmmu_gpc_stats a, b;
	int shared = !strcmp(storm, "dontneed-shared");
	struct dontneed_storm s = {
		.size = shared ? SHARED_SZ : SZ_2M,
		.pages = !strcmp(storm, "dontneed1") ? 1 : 512,
		.read = shared,
	};
	struct exits e = { 0 };
	unsigned long *lat;
	pthread_t st, et;
	double t0, t1, next;
	struct storm storm_fn;
	int fd, vcpu, vcpu2;
	char *mem;

	fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0);
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shared) {
		int memfd = memfd_create("secmmu-gpc-storm", 0);

		if (memfd < 0 || ftruncate(memfd, SHARED_SZ))
			return 1;
		s.mem = mmap(NULL, SHARED_SZ, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
		close(memfd);
		if (s.mem != MAP_FAILED)
			memset(s.mem, 1, SHARED_SZ);
	} else {
		s.mem = mmap(NULL, SZ_2M, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
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
	storm_fn.fn = mp ? mprotect_storm : dontneed_storm;
	storm_fn.arg = mp ? (void *)&ms : (void *)&s;
	pin_to_cpu(0);
	pthread_create(&st, NULL, pinned_storm, &storm_fn);
	/*
	 * Latency: refreshes at a steady rate, one every PACE_NS, so that
	 * they sample the storm's time evenly. Back-to-back refreshes would
	 * hide the tail (coordinated omission): one that meets a long
	 * invalidation waits it out, and the loop starts no other refresh
	 * meanwhile, so each invalidation would delay a single sample.
	 */
	next = now_s();
	for (i = 0; i < n; i++) {
		double t;

		while ((t = now_s()) < next)
			;
		next = (next + PACE_NS / 1e9 < t ? t : next + PACE_NS / 1e9);
		if (secmmu_ioctl(vcpu, SECMMU_SET_RUN_PAGE, &rp)) {
			fprintf(stderr, "gpc bench: SET_RUN_PAGE: %s\n", strerror(errno));
			return 1;
		}
		lat[i] = (unsigned long)((now_s() - t) * 1e9);
	}
	/* Throughput: back to back. */
	t0 = now_s();
	for (i = 0; i < n; i++)
		if (secmmu_ioctl(vcpu, SECMMU_SET_RUN_PAGE, &rp))
			return 1;
	t1 = now_s();
	b = get_gpc_stats(fd);
	qsort(lat, n, sizeof(*lat), cmp_u64);
	printf("gpc %-9s %-15s refresh: median %7lu ns  p99 %9lu ns  max %10lu ns  %8.0f /s",
	       label, storm, lat[n / 2], lat[n * 99 / 100], lat[n - 1],
	       n / (t1 - t0));
	printf("  retries: %llu overlap, %llu unrelated; %lu storm rounds\n",
	       b.retries_overlap - a.retries_overlap,
	       b.retries_unrelated - a.retries_unrelated, *rounds);

	/*
	 * The timer's misses, with its page invalidated every 5 ms; its exit
	 * loop runs on any CPU, not on the refresher's.
	 */
	unpin_cpu();
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

		printf("gpc %-9s %-15s timer: %lu ticks, %lu missed (%.2f%%)\n", label,
		       storm, up + miss, miss,
		       up + miss ? 100.0 * miss / (up + miss) : 0);
	}
	close(vcpu2);
	close(vcpu);
	close(fd);
	return 0;
}
