// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu benchmark against the HMM test driver (lib/test_hmm.c), the
 * kernel's own reference mirror. Same work for both, on freshly populated
 * anonymous memory of 4K pages:
 *
 *   fault-in  secmmu: SECMMU_ACCESS reading the whole range through a new
 *             space (every page faulted in, every byte copied out);
 *             dmirror: HMM_DMIRROR_READ of the same range on a new mirror.
 *   zap       munmap of the mirrored range, timed in the process.
 *   run       secmmu only: one SECMMU_RUN read pass, 4 KiB stride (faults
 *             and walks, no copies).
 *
 * Each figure is the best of REPS runs; ratios are dmirror / secmmu time
 * (above 1.0: secmmu is faster).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/mman.h>

#include "secmmu_lib.h"
#include "test_hmm_uapi.h"

#define GPA	0x100000000UL
#define REPS	3

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *populate(unsigned long size)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	unsigned long i;

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, size, MADV_NOHUGEPAGE);
	for (i = 0; i < size; i += PAGE_SZ)
		p[i] = (char)i;
	return p;
}

struct result {
	double fault, zap;
};

static struct result bench_secmmu(unsigned long size, char *out, int run_only)
{
	struct result r;
	char *mem = populate(size);
	int fd = space_create(SECMMU_FMT_X86_EPT4, 1, 0), vcpu = -1, ret;
	double t;

	if (fd >= 0 && !set_slot(fd, 0, 0, GPA, size, mem))
		vcpu = vcpu_create(fd, 0);
	if (vcpu < 0) {
		fprintf(stderr, "secmmu setup failed\n");
		exit(1);
	}
	t = now();
	if (run_only)
		ret = run_range(vcpu, SECMMU_RUN_READ, GPA, GPA + size, PAGE_SZ, 0, NULL);
	else
		ret = guest_access(vcpu, GPA, out, size, 0);
	r.fault = now() - t;
	if (ret || (!run_only && memcmp(out, mem, size))) {
		fprintf(stderr, "secmmu read failed: %d\n", ret);
		exit(1);
	}
	t = now();
	munmap(mem, size);
	r.zap = now() - t;
	close(vcpu);
	close(fd);
	return r;
}

static struct result bench_dmirror(unsigned long size, char *out)
{
	struct hmm_dmirror_cmd cmd = {};
	struct result r;
	char *mem = populate(size);
	int fd = open("/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
	double t;

	if (fd < 0) {
		perror("open /dev/hmm_dmirror0");
		exit(1);
	}
	cmd.addr = (unsigned long)mem;
	cmd.ptr = (unsigned long)out;
	cmd.npages = size / PAGE_SZ;
	t = now();
	if (ioctl(fd, HMM_DMIRROR_READ, &cmd) || cmd.cpages != size / PAGE_SZ ||
	    memcmp(out, mem, size)) {
		perror("HMM_DMIRROR_READ");
		exit(1);
	}
	r.fault = now() - t;
	t = now();
	munmap(mem, size);
	r.zap = now() - t;
	close(fd);
	return r;
}

static double best(double a, double b)
{
	return a < b ? a : b;
}

int main(int argc, char **argv)
{
	unsigned long size = (argc > 1 ? strtoul(argv[1], NULL, 0) : 1024) << 20;
	unsigned long npages = size / PAGE_SZ;
	struct result s = { 1e9, 1e9 }, d = { 1e9, 1e9 }, run = { 1e9, 1e9 }, x;
	char *out = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	int i;

	if (out == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (i = 0; i < REPS; i++) {
		x = bench_secmmu(size, out, 0);
		s.fault = best(s.fault, x.fault);
		s.zap = best(s.zap, x.zap);
		x = bench_dmirror(size, out);
		d.fault = best(d.fault, x.fault);
		d.zap = best(d.zap, x.zap);
		x = bench_secmmu(size, out, 1);
		run.fault = best(run.fault, x.fault);
		run.zap = best(run.zap, x.zap);
	}
	printf("secmmu vs dmirror: %lu MiB of 4K pages (%lu pages), best of %d\n",
	       size >> 20, npages, REPS);
	printf("%-34s %12s %12s %8s\n", "", "secmmu", "dmirror", "ratio");
	printf("%-34s %9.1f ns %9.1f ns %7.2fx\n", "fault-in + copy (ACCESS/READ)",
	       s.fault * 1e9 / npages, d.fault * 1e9 / npages, d.fault / s.fault);
	printf("%-34s %9.1f ns %9.1f ns %7.2fx\n", "zap (munmap)",
	       s.zap * 1e9 / npages, d.zap * 1e9 / npages, d.zap / s.zap);
	printf("%-34s %9.1f ns %12s %8s\n", "fault-in, RUN 4K stride (no copy)",
	       run.fault * 1e9 / npages, "-", "-");
	printf("%-34s %9.1f ns %12s %8s\n", "zap after RUN (munmap)",
	       run.zap * 1e9 / npages, "-", "-");
	printf("per page, lower is better; ratio = dmirror / secmmu (>1: secmmu faster)\n");
	return 0;
}
