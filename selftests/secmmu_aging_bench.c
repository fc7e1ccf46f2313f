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
 * The vCPU's fault rate is measured in short windows, interleaved so that
 * a change in the host's load hits every case alike: with CPU 1 idle (the
 * run without aging), with CPU 1 aging, and with CPU 1 spinning in user
 * space. Under TCG each guest CPU is a host thread, so on a host with no
 * spare core a busy CPU 1 slows the vCPU down whatever it does; the
 * spinning case is the run without aging that keeps CPU 1 as busy as the
 * ager does, so the second ratio shows what aging itself costs the vCPU.
 *
 * Prints one line: the vCPU's fault rate with aging relative to the runs
 * without it, the aging thread's ns per page while the vCPU faults and
 * alone (without interference from the vCPU), and the rmap lock
 * contention the lockless walks met. scripts/bench runs it with the module
 * loaded with aging_locked=0 (lockless) and =1 (under the MMU lock).
 *
 * usage: secmmu_aging_bench LABEL [SECONDS]
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "secmmu_lib.h"

#define F_GPA	0x100000000UL
#define F_SIZE	(256 * SZ_1M)
#define F_CHUNK	(16 * SZ_1M)
#define A_GPA	0x200000000UL
#define A_SIZE	SZ_1G
#define A_PAGES	(A_SIZE / PAGE_SZ)
#define ROUNDS	4

static int fd, vcpu;
static char *fmem;
static __u64 *words;		/* the page_idle bitmap words to write */
static unsigned long maxword;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * The vCPU thread faults for @secs seconds; its faults and the time go
 * to *@faults and *@time. The sweep goes on where the previous window
 * left it, 16 MiB at a time, with MADV_DONTNEED after every whole sweep.
 */
static void fault_for(double secs, double *faults, double *time)
{
	static unsigned long off;
	__u64 f0 = get_stats(fd).faults;
	double t0 = now(), t;

	pin_to_cpu(0);
	do {
		run_range(vcpu, SECMMU_RUN_WRITE, F_GPA + off, F_GPA + off + F_CHUNK,
			  PAGE_SZ, 1, NULL);
		off += F_CHUNK;
		if (off == F_SIZE) {
			madvise(fmem, F_SIZE, MADV_DONTNEED);
			off = 0;
		}
		t = now();
	} while (t - t0 < secs);
	*faults += get_stats(fd).faults - f0;
	*time += t - t0;
}

/*
 * The aging process: ages the region in passes until @stop is readable
 * (checked every 64 bitmap words, so that it stops with the vCPU), then
 * writes the pages it aged and the time it took to @out.
 */
static void ager(int stop, int out)
{
	int bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	struct pollfd p = { .fd = stop, .events = POLLIN };
	unsigned long n = 0, w;
	double res[2] = { 0, 0 }, t0;

	pin_to_cpu(1);
	t0 = now();
	while (bitmap >= 0) {
		for (w = 0; w <= maxword; w++) {
			if (!words[w])
				continue;
			pwrite(bitmap, &words[w], 8, w * 8);
			res[0] += __builtin_popcountll(words[w]);
			if (++n % 64 == 0 && poll(&p, 1, 0) != 0)
				goto done;
		}
	}
done:
	res[1] = now() - t0;
	if (write(out, res, sizeof(res)) != sizeof(res))
		_exit(1);
	_exit(0);
}

/* The spinning process: keeps CPU 1 busy in user space until @stop is readable. */
static void spinner(int stop)
{
	struct pollfd p = { .fd = stop, .events = POLLIN };
	unsigned long i;

	pin_to_cpu(1);
	for (;;) {
		for (i = 0; i < 100000; i++)
			__asm__ __volatile__("" ::: "memory");
		if (poll(&p, 1, 0) != 0)
			_exit(0);
	}
}

enum cpu1 { CPU1_IDLE, CPU1_AGING, CPU1_SPINNING };

/*
 * One window: CPU 1 ages (or spins, or idles) while the vCPU faults for
 * @secs seconds (or, without @vcpu_too, while this thread sleeps). Adds
 * the vCPU's faults and time to @f[0], @f[1], and the pages aged and
 * the time it took to @a[0], @a[1].
 */
static void window(enum cpu1 what, double secs, int vcpu_too, double f[2], double a[2])
{
	int stop[2], res[2];
	double r[2];
	pid_t pid = 0;

	if (pipe(stop) || pipe(res))
		exit(1);
	if (what != CPU1_IDLE) {
		pid = fork();
		if (pid < 0)
			exit(1);
	}
	if (pid == 0 && what != CPU1_IDLE) {
		close(stop[1]);	/* EOF on stop[0] once the parent closes its end */
		close(res[0]);
		if (what == CPU1_AGING)
			ager(stop[0], res[1]);
		spinner(stop[0]);
	}
	close(stop[0]);
	close(res[1]);
	if (vcpu_too)
		fault_for(secs, &f[0], &f[1]);
	else
		usleep(secs * 1e6);
	close(stop[1]);
	if (what == CPU1_AGING) {
		if (read(res[0], r, sizeof(r)) != sizeof(r))
			exit(1);
		a[0] += r[0];
		a[1] += r[1];
	}
	close(res[0]);
	if (pid)
		waitpid(pid, NULL, 0);
}

int main(int argc, char **argv)
{
	const char *label = argc > 1 ? argv[1] : "aging";
	double secs = argc > 2 ? atof(argv[2]) : 6;
	double idle[2] = { 0, 0 }, spin[2] = { 0, 0 }, with[2] = { 0, 0 };
	double aged[2] = { 0, 0 }, alone[2] = { 0, 0 }, unused[2];
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	double rate_idle, rate_spin, rate_with;
	struct secmmu_stats s0, s1;
	unsigned long i;
	char *amem;
	int round;

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
		}
	}

	/* The ager alone: what aging costs per page without interference. */
	window(CPU1_AGING, secs / 2, 0, unused, alone);
	s0 = get_stats(fd);
	for (round = 0; round < ROUNDS; round++) {
		window(CPU1_IDLE, secs / ROUNDS, 1, idle, unused);
		window(CPU1_AGING, secs / ROUNDS, 1, with, aged);
		window(CPU1_SPINNING, secs / ROUNDS, 1, spin, unused);
	}
	s1 = get_stats(fd);
	rate_idle = idle[0] / idle[1];
	rate_spin = spin[0] / spin[1];
	rate_with = with[0] / with[1];

	printf("%-9s vCPU faults/s %8.0f alone, %8.0f with aging (%5.1f%%; ",
	       label, rate_idle, rate_with, 100 * rate_with / rate_idle);
	printf("%5.1f%% of %.0f with CPU 1 spinning) | ", 100 * rate_with / rate_spin, rate_spin);
	printf("aging %7.1f ns/page (%7.1f alone) | ",
	       aged[1] * 1e9 / aged[0], alone[1] * 1e9 / alone[0]);
	printf("%llu calls, %llu lockless, %llu rmap contention\n",
	       s1.aging_calls - s0.aging_calls, s1.aging_lockless - s0.aging_lockless,
	       s1.rmap_contention - s0.rmap_contention);
	return 0;
}
