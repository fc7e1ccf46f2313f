// SPDX-License-Identifier: GPL-2.0
/*
 * Aging benchmark: does aging stall faulting vCPUs?
 *
 * Two CPUs, threads pinned. A vCPU thread on CPU 0 keeps faulting: it
 * sweeps a 256 MiB region with writes (4K stride) and MADV_DONTNEEDs it
 * after every sweep. An aging thread on CPU 1 ages a separate, fully
 * mapped 1 GiB region in a loop through /sys/kernel/mm/page_idle/bitmap
 * (each pass marks every page idle: clear_young on every page). The ager
 * is a separate process, like the kernel's own agers: it shares no mm
 * with the vCPU, so the vCPU's TLB shootdowns (MADV_DONTNEED) do not
 * interrupt it.
 *
 * Prints one line: the vCPU's fault rate with aging relative to the same
 * run without it, the aging thread's ns per page, and the rmap lock
 * contention the lockless walks met. scripts/bench runs it with the module
 * loaded with aging_locked=0 (lockless) and =1 (under the MMU lock).
 *
 * usage: secmmu_aging_bench LABEL [SECONDS]
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "secmmu_lib.h"

#define F_GPA	0x100000000UL
#define F_SIZE	(256 * SZ_1M)
#define A_GPA	0x200000000UL
#define A_SIZE	SZ_1G
#define A_PAGES	(A_SIZE / PAGE_SZ)

static int fd, vcpu;
static char *fmem;
static __u64 *words;		/* the page_idle bitmap words to write */
static unsigned long nwords, maxword;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

/* Faults per second of the vCPU thread over @secs seconds. */
static double fault_rate(double secs)
{
	__u64 f0 = get_stats(fd).faults;
	double t0 = now(), t;

	pin(0);
	do {
		run_range(vcpu, SECMMU_RUN_WRITE, F_GPA, F_GPA + F_SIZE, PAGE_SZ, 1, NULL);
		madvise(fmem, F_SIZE, MADV_DONTNEED);
		t = now();
	} while (t - t0 < secs);
	return (get_stats(fd).faults - f0) / (t - t0);
}

/*
 * The aging process: ages the region in passes until @stop is readable,
 * then writes its ns per page to @out.
 */
static void ager(int stop, int out)
{
	int bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	unsigned long passes = 0, w;
	double t0 = now(), ns;
	struct pollfd p = { .fd = stop, .events = POLLIN };

	pin(1);
	while (bitmap >= 0 && poll(&p, 1, 0) == 0) {
		for (w = 0; w <= maxword; w++)
			if (words[w])
				pwrite(bitmap, &words[w], 8, w * 8);
		passes++;
	}
	ns = passes ? (now() - t0) * 1e9 / (passes * A_PAGES) : 0;
	if (write(out, &ns, sizeof(ns)) != sizeof(ns))
		_exit(1);
	_exit(0);
}

int main(int argc, char **argv)
{
	const char *label = argc > 1 ? argv[1] : "aging";
	double secs = argc > 2 ? atof(argv[2]) : 6, base, with;
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	struct secmmu_stats s0, s1;
	int stop[2], res[2];
	double aging_ns_per_page = 0;
	unsigned long i;
	char *amem;
	pid_t pid;

	fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0);
	fmem = mmap(NULL, F_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	amem = mmap(NULL, A_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || pagemap < 0 || fmem == MAP_FAILED || amem == MAP_FAILED) {
		perror("setup");
		return 1;
	}
	madvise(fmem, F_SIZE, MADV_NOHUGEPAGE);
	madvise(amem, A_SIZE, MADV_NOHUGEPAGE);
	/*
	 * The ager is forked later: without DONTFORK, fork would write-protect
	 * both regions for COW, zapping the very mappings it is to age.
	 */
	madvise(fmem, F_SIZE, MADV_DONTFORK);
	madvise(amem, A_SIZE, MADV_DONTFORK);
	if (set_slot(fd, 0, 0, F_GPA, F_SIZE, fmem) || set_slot(fd, 1, 0, A_GPA, A_SIZE, amem))
		return 1;
	vcpu = vcpu_create(fd, 0);
	/* The aging region: fully mapped by the secondary MMU. */
	if (vcpu < 0 || run_range(vcpu, SECMMU_RUN_WRITE, A_GPA, A_GPA + A_SIZE, PAGE_SZ, 2, NULL))
		return 1;
	/* Its page_idle bitmap words: one bit per pfn. */
	for (i = 0; i < A_PAGES; i++) {
		__u64 e;

		if (pread(pagemap, &e, 8, ((unsigned long)amem / PAGE_SZ + i) * 8) != 8 ||
		    !(e & (1ULL << 63)))
			continue;
		e &= (1ULL << 55) - 1;
		if (e / 64 > maxword)
			maxword = e / 64;
	}
	words = calloc(maxword + 1, 8);
	for (i = 0; i < A_PAGES; i++) {
		__u64 e;

		if (pread(pagemap, &e, 8, ((unsigned long)amem / PAGE_SZ + i) * 8) == 8 &&
		    (e & (1ULL << 63))) {
			e &= (1ULL << 55) - 1;
			words[e / 64] |= 1ULL << (e % 64);
			nwords++;
		}
	}

	base = fault_rate(secs);
	s0 = get_stats(fd);
	if (pipe(stop) || pipe(res))
		return 1;
	pid = fork();
	if (pid == 0) {
		close(stop[1]);	/* EOF on stop[0] once the parent closes its end */
		ager(stop[0], res[1]);
	}
	close(stop[0]);
	close(res[1]);
	with = fault_rate(secs);
	close(stop[1]);
	if (read(res[0], &aging_ns_per_page, sizeof(double)) != sizeof(double))
		return 1;
	waitpid(pid, NULL, 0);
	s1 = get_stats(fd);

	printf("%-9s vCPU faults/s %8.0f alone, %8.0f with aging (%5.1f%%) | ",
	       label, base, with, 100 * with / base);
	printf("aging %7.1f ns/page | %llu calls, %llu lockless, %llu rmap contention\n",
	       aging_ns_per_page, s1.aging_calls - s0.aging_calls,
	       s1.aging_lockless - s0.aging_lockless,
	       s1.rmap_contention - s0.rmap_contention);
	return 0;
}
