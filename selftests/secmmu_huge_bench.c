// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu huge-mapping benchmark: fault-in of SIZE MiB of populated memory
 * through a new space, THP-backed (MADV_HUGEPAGE, 2M-aligned slot) against
 * the same size with THP disabled (MADV_NOHUGEPAGE), for both formats.
 * One vCPU reads one word per 4K page; the figures are the faults the
 * space took (SECMMU_GET_STATS) and the best time of REPS runs.
 *
 * Also the time of a second pass over the memory, once it is all mapped:
 * walks of the tables (and software-TLB misses) with 4K mappings, TLB hits
 * with huge ones, where a huge translation takes one TLB entry as on
 * hardware. It is the floor of the fault-in time: under TCG, touching a
 * new 4K page costs a miss of QEMU's own TLB.
 *
 * Targets: with huge mappings, at least 100x fewer faults and at least
 * 10x less time, for each format.
 *
 * usage: secmmu_huge_bench [MiB]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

#include "secmmu_lib.h"

#define GPA	0x100000000UL
#define REPS	3

/*
 * Seconds to fault in @size bytes; the faults taken in @faults, the huge
 * mappings made in @huge, the seconds of a second pass in @again.
 */
static double fault_in(unsigned int format, unsigned long size, int thp,
		       unsigned long *faults, unsigned long *huge, double *again)
{
	unsigned long len = size + SZ_2M;
	char *raw = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *mem = (char *)(((uintptr_t)raw + SZ_2M - 1) & ~(SZ_2M - 1));
	struct secmmu_stats st;
	int fd, vcpu, ret;
	double t0, t1, t2;

	if (raw == MAP_FAILED) {
		fprintf(stderr, "mmap failed\n");
		exit(1);
	}
	madvise(mem, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	if (madvise(mem, size, MADV_POPULATE_WRITE))
		memset(mem, 1, size);
	fd = space_create(format, 1, 0);
	if (fd < 0 || set_slot(fd, 0, 0, GPA, size, mem)) {
		fprintf(stderr, "setup failed\n");
		exit(1);
	}
	vcpu = vcpu_create(fd, 0);
	if (vcpu < 0) {
		fprintf(stderr, "vcpu: %d\n", vcpu);
		exit(1);
	}
	t0 = now_s();
	ret = run_range(vcpu, SECMMU_RUN_READ, GPA, GPA + size, PAGE_SZ, 0, NULL);
	t1 = now_s();
	if (!ret)
		ret = run_range(vcpu, SECMMU_RUN_READ, GPA, GPA + size, PAGE_SZ, 0, NULL);
	t2 = now_s();
	if (ret) {
		fprintf(stderr, "run failed: %d\n", ret);
		exit(1);
	}
	*again = t2 - t1;
	st = get_stats(fd);
	*faults = st.faults;
	*huge = st.mappings_2m + st.mappings_1g;
	close(vcpu);
	close(fd);
	munmap(raw, len);
	return t1 - t0;
}

int main(int argc, char **argv)
{
	unsigned long size = (argc > 1 ? strtoul(argv[1], NULL, 0) : 1024) << 20;
	const unsigned int formats[] = { SECMMU_FMT_X86_EPT4, SECMMU_FMT_ARM64_S2 };
	double best[2][2] = { { 1e9, 1e9 }, { 1e9, 1e9 } }, t, again;
	double best_again[2][2] = { { 1e9, 1e9 }, { 1e9, 1e9 } };
	unsigned long faults[2][2], huge[2][2];
	int f, thp, i, met = 1;

	/* Interleaved, so that a noisy stretch falls on no one configuration. */
	for (i = 0; i < REPS; i++)
		for (f = 0; f < 2; f++)
			for (thp = 0; thp < 2; thp++) {
				t = fault_in(formats[f], size, thp, &faults[f][thp],
					     &huge[f][thp], &again);
				best[f][thp] = t < best[f][thp] ? t : best[f][thp];
				if (again < best_again[f][thp])
					best_again[f][thp] = again;
			}
	printf("huge fault-in: %lu MiB, one vCPU, one read per 4K page, best of %d\n",
	       size >> 20, REPS);
	printf("%-8s %12s %10s %12s %10s %8s %9s %9s\n", "format", "4K faults",
	       "4K s", "THP faults", "THP s", "huge", "faults/", "time/");
	for (f = 0; f < 2; f++) {
		double fr = (double)faults[f][0] / (faults[f][1] ?: 1);
		double tr = best[f][0] / best[f][1];

		printf("%-8s %12lu %10.4f %12lu %10.4f %8lu %8.1fx %8.1fx\n",
		       format_name(formats[f]), faults[f][0], best[f][0],
		       faults[f][1], best[f][1], huge[f][1], fr, tr);
		printf("%-8s second pass, all mapped: %.4f s with 4K, %.4f s with THP\n",
		       "", best_again[f][0], best_again[f][1]);
		printf("target %s: >= 100x fewer faults and >= 10x less time: %s\n",
		       format_name(formats[f]),
		       fr >= 100 && tr >= 10 ? "met" : "NOT met");
		if (!(fr >= 100 && tr >= 10))
			met = 0;
	}
	return met ? 0 : 1;
}
