// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu pre-fault benchmark: mapping SIZE MiB of populated 4K memory
 * (THP disabled) into a new space with SECMMU_PRE_FAULT_MEMORY (batches of
 * 64 pages: one get_user_pages_fast() and one hold of the MMU lock each),
 * against demand faults, one per page, taken by a vCPU reading one word
 * per 4K page (SECMMU_RUN); both formats, best of REPS interleaved runs.
 * Also the vCPU's read pass after the pre-fault (no fault: table walks
 * alone), and the faults each run took.
 *
 * Target: the pre-fault at least 3x faster than the demand faults, for
 * each format.
 *
 * usage: secmmu_prefault_bench [MiB]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "secmmu_lib.h"

#define GPA	0x100000000UL
#define REPS	3

struct result {
	double map_s;		/* demand: the read pass; pre-fault: the ioctls */
	double read_s;		/* pre-fault: the read pass after */
	unsigned long faults;	/* vCPU faults in all */
	unsigned long calls;	/* pre-fault: ioctl calls */
};

/* Maps @mem (@size bytes) into a new space by demand or by @prefault. */
static struct result map_in(unsigned int format, char *mem, unsigned long size,
			    int prefault)
{
	struct result r = { 0 };
	int fd, vcpu, ret = 0;
	double t0;

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
	if (prefault) {
		struct secmmu_pre_fault_memory p = { .gpa = GPA, .size = size };

		while (p.size && !ret) {
			ret = secmmu_ioctl(vcpu, SECMMU_PRE_FAULT_MEMORY, &p);
			r.calls++;
		}
		r.map_s = now_s() - t0;
		t0 = now_s();
		if (!ret)
			ret = run_range(vcpu, SECMMU_RUN_READ, GPA, GPA + size, PAGE_SZ, 0, NULL);
		r.read_s = now_s() - t0;
	} else {
		ret = run_range(vcpu, SECMMU_RUN_READ, GPA, GPA + size, PAGE_SZ, 0, NULL);
		r.map_s = now_s() - t0;
	}
	if (ret) {
		fprintf(stderr, "%s failed: %d\n", prefault ? "pre-fault" : "run", ret);
		exit(1);
	}
	r.faults = get_stats(fd).faults;
	close(vcpu);
	close(fd);
	return r;
}

int main(int argc, char **argv)
{
	unsigned long size = (argc > 1 ? strtoul(argv[1], NULL, 0) : 1024) << 20;
	const unsigned int formats[] = { SECMMU_FMT_X86_EPT4, SECMMU_FMT_ARM64_S2 };
	struct result best[2][2], r;
	int f, pre, i, met = 1;
	char *mem;

	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "mmap failed\n");
		return 1;
	}
	madvise(mem, size, MADV_NOHUGEPAGE);
	if (madvise(mem, size, MADV_POPULATE_WRITE))
		memset(mem, 1, size);
	memset(best, 0, sizeof(best));
	/* Interleaved, so that a noisy stretch falls on no one configuration. */
	for (i = 0; i < REPS; i++)
		for (f = 0; f < 2; f++)
			for (pre = 0; pre < 2; pre++) {
				r = map_in(formats[f], mem, size, pre);
				if (!i || r.map_s < best[f][pre].map_s)
					best[f][pre] = r;
			}
	printf("pre-fault: %lu MiB of 4K pages, one vCPU, best of %d\n", size >> 20, REPS);
	printf("%-8s %10s %10s %12s %8s %10s %10s %8s\n", "format", "demand s",
	       "faults", "pre-fault s", "calls", "read s", "faults", "speedup");
	for (f = 0; f < 2; f++) {
		double ratio = best[f][0].map_s / best[f][1].map_s;

		printf("%-8s %10.4f %10lu %12.4f %8lu %10.4f %10lu %7.1fx\n",
		       format_name(formats[f]), best[f][0].map_s, best[f][0].faults,
		       best[f][1].map_s, best[f][1].calls, best[f][1].read_s,
		       best[f][1].faults, ratio);
		printf("%-8s ns per page: demand %.0f, pre-fault %.0f\n", "",
		       best[f][0].map_s * 1e9 / (size / PAGE_SZ),
		       best[f][1].map_s * 1e9 / (size / PAGE_SZ));
		printf("target %s: pre-fault >= 3x faster than demand faults: %s\n",
		       format_name(formats[f]), ratio >= 3 ? "met" : "NOT met");
		if (ratio < 3)
			met = 0;
	}
	munmap(mem, size);
	return met ? 0 : 1;
}
