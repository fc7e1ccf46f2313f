// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu benchmark against the HMM test driver (lib/test_hmm.c), the
 * kernel's own reference mirror, and against the floor. Same work for all,
 * on freshly populated (written) anonymous memory of 4K pages:
 *
 *   fault-in  secmmu: SECMMU_ACCESS reading the whole range through a new
 *             space (every page faulted in, every byte copied out), per
 *             page-table format, with fault-around (the default) and
 *             without (SECMMU_CFG_NO_FAULT_AROUND);
 *             dmirror: HMM_DMIRROR_READ of the same range on a new mirror;
 *             floor: the module's bench-only debugfs hook bench_floor,
 *             which copies the same pages out as SECMMU_ACCESS does
 *             (copy_to_user() straight from each page) but finds them with
 *             get_user_pages_fast(), 64 at a time, with no secondary
 *             tables: what a fault-in and copy cannot beat.
 *   zap       munmap of the mirrored range, timed in the process.
 *   run       secmmu only, per space: one SECMMU_RUN read pass, 4 KiB
 *             stride (faults and walks, no copies).
 *
 * Each figure is the best of REPS runs; ratios are dmirror / secmmu time
 * (above 1.0: secmmu is faster) and secmmu / floor (1.0 is the floor).
 * The first four lines are the x86 format's with fault-around, under the
 * names the trace benchmark (guest-bench.sh) reads.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>

#include "secmmu_lib.h"
#include "test_hmm_uapi.h"
#include "kselftest.h"

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

static struct result bench_secmmu(unsigned long size, char *out, int run_only,
				  unsigned int format, unsigned int flags)
{
	struct result r;
	char *mem = populate(size);
	int fd = space_create(format, 1, flags), vcpu = -1, ret;
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

/* The floor: bench_floor's copy of the same pages, no secondary tables. */
static struct result gup_floor(unsigned long size, char *out)
{
	const char *hook = "/sys/kernel/debug/secmmu/bench_floor";
	struct result r = { 0, 0 };
	char *mem = populate(size), cmd[80];
	int fd = open(hook, O_WRONLY | O_CLOEXEC), n;
	double t;

	if (fd < 0 && !mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL))
		fd = open(hook, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		perror(hook);
		exit(1);
	}
	n = snprintf(cmd, sizeof(cmd), "%lu %lu %lu", (unsigned long)mem,
		     (unsigned long)out, size);
	t = now();
	if (write(fd, cmd, n) != n) {
		perror("bench_floor");
		exit(1);
	}
	r.fault = now() - t;
	if (memcmp(out, mem, size)) {
		fprintf(stderr, "bench_floor copied wrong data\n");
		exit(1);
	}
	munmap(mem, size);
	close(fd);
	return r;
}

static double best(double a, double b)
{
	return a < b ? a : b;
}

static void keep_best(struct result *b, struct result x)
{
	b->fault = best(b->fault, x.fault);
	b->zap = best(b->zap, x.zap);
}

/* The spaces measured: both formats, with and without fault-around. */
static const struct {
	const char *name;
	unsigned int format, flags;
} spaces[] = {
	{ "x86", SECMMU_FMT_X86_EPT4, 0 },
	{ "arm64", SECMMU_FMT_ARM64_S2, 0 },
	{ "x86, no fault-around", SECMMU_FMT_X86_EPT4, SECMMU_CFG_NO_FAULT_AROUND },
	{ "arm64, no fault-around", SECMMU_FMT_ARM64_S2, SECMMU_CFG_NO_FAULT_AROUND },
};

#define NSPACES	ARRAY_SIZE(spaces)

int main(int argc, char **argv)
{
	unsigned long size = (argc > 1 ? strtoul(argv[1], NULL, 0) : 1024) << 20;
	unsigned long npages = size / PAGE_SZ;
	struct result s[NSPACES], run[NSPACES], d = { 1e9, 1e9 };
	struct result floor = { 1e9, 1e9 };
	char *out = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	unsigned int i, k;
	char name[64];

	if (out == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (k = 0; k < NSPACES; k++) {
		s[k] = (struct result){ 1e9, 1e9 };
		run[k] = s[k];
	}
	for (i = 0; i < REPS; i++) {
		for (k = 0; k < NSPACES; k++) {
			keep_best(&s[k], bench_secmmu(size, out, 0, spaces[k].format,
						      spaces[k].flags));
			keep_best(&run[k], bench_secmmu(size, out, 1, spaces[k].format,
							spaces[k].flags));
		}
		keep_best(&d, bench_dmirror(size, out));
		keep_best(&floor, gup_floor(size, out));
	}
	printf("secmmu vs dmirror: %lu MiB of 4K pages (%lu pages), best of %d\n",
	       size >> 20, npages, REPS);
	printf("%-40s %12s %12s %8s\n", "", "secmmu", "dmirror", "ratio");
	printf("%-40s %9.1f ns %9.1f ns %7.2fx\n", "fault-in + copy (ACCESS/READ)",
	       s[0].fault * 1e9 / npages, d.fault * 1e9 / npages, d.fault / s[0].fault);
	printf("%-40s %9.1f ns %9.1f ns %7.2fx\n", "zap (munmap)",
	       s[0].zap * 1e9 / npages, d.zap * 1e9 / npages, d.zap / s[0].zap);
	printf("%-40s %9.1f ns %12s %8s\n", "fault-in, RUN 4K stride (no copy)",
	       run[0].fault * 1e9 / npages, "-", "-");
	printf("%-40s %9.1f ns %12s %8s\n", "zap after RUN (munmap)",
	       run[0].zap * 1e9 / npages, "-", "-");
	for (k = 1; k < NSPACES; k++) {
		snprintf(name, sizeof(name), "fault-in, RUN 4K stride, %s", spaces[k].name);
		printf("%-40s %9.1f ns %12s %8s\n", name, run[k].fault * 1e9 / npages, "-", "-");
	}
	for (k = 1; k < NSPACES; k++) {
		snprintf(name, sizeof(name), "fault-in + copy, %s", spaces[k].name);
		printf("%-40s %9.1f ns %9.1f ns %7.2fx\n", name, s[k].fault * 1e9 / npages,
		       d.fault * 1e9 / npages, d.fault / s[k].fault);
		snprintf(name, sizeof(name), "zap (munmap), %s", spaces[k].name);
		printf("%-40s %9.1f ns %9.1f ns %7.2fx\n", name, s[k].zap * 1e9 / npages,
		       d.zap * 1e9 / npages, d.zap / s[k].zap);
	}
	printf("%-40s %9.1f ns\n", "floor: GUP-fast + copy, no tables", floor.fault * 1e9 / npages);
	for (k = 0; k < NSPACES; k++)
		printf("fault-in + copy, %s: %.2fx the floor, %.2fx faster than dmirror\n",
		       spaces[k].name, s[k].fault / floor.fault, d.fault / s[k].fault);
	printf("per page, lower is better; ratio = dmirror / secmmu (>1: secmmu faster)\n");
	return 0;
}
