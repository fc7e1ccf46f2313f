// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu demo: mirror 16 MiB of this process into a space, let a vCPU
 * fault it in and write it, change the memory the ways the mm core reports
 * to secondary MMUs, and print what the secondary MMU did each time. Once
 * per page-table format: x86 EPT, then arm64 stage-2.
 *
 * usage: secmmu_demo [x86|arm64]   (default: both)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "secmmu_lib.h"

#define GPA	0x100000000UL
#define SIZE	(16UL << 20)
#define NPAGES	(SIZE / PAGE_SZ)

static int fd, vcpu;
static unsigned char snap[NPAGES];

static void die(const char *what, int err)
{
	fprintf(stderr, "secmmu-demo: %s: %s\n", what, strerror(-err));
	exit(1);
}

static void show(const char *what)
{
	struct secmmu_stats s = get_stats(fd);
	int ret = snapshot(fd, 0, GPA, NPAGES, snap);

	if (ret)
		die("SECMMU_SNAPSHOT", ret);
	printf("%-28s mapped %4lu (writable %4lu, dirty %4lu) | ", what,
	       count_bits(snap, NPAGES, SECMMU_SNAP_PRESENT),
	       count_bits(snap, NPAGES, SECMMU_SNAP_PRESENT | SECMMU_SNAP_WRITABLE),
	       count_bits(snap, NPAGES, SECMMU_SNAP_PRESENT | SECMMU_SNAP_DIRTY));
	printf("faults %5llu retries %llu zapped %5llu (dirty %5llu) ",
	       s.faults, s.fault_retries, s.sptes_zapped, s.dirty_pages);
	printf("TLB flushes %4llu invalidations %4llu tables %llu\n", s.tlb_flushes,
	       s.invalidations, s.table_pages);
}

static void run(unsigned int op, unsigned long off, unsigned long len, const char *what)
{
	struct secmmu_run r;
	int ret = run_range(vcpu, op, GPA + off, GPA + off + len, PAGE_SZ, 0x5ec, &r);

	if (ret == -EFAULT)
		printf("%-28s memory-fault exit at gpa 0x%llx\n", "", r.exit_gpa);
	else if (ret)
		die("SECMMU_RUN", ret);
	show(what);
}

static void demo(unsigned int format)
{
	char *mem;
	int ret;

	fd = space_create(format, 1, 0);
	if (fd < 0)
		die("open + SECMMU_CONFIGURE", fd);
	printf("\nsecmmu API version %d: %s, 1 root, 16 MiB slot at gpa 0x%lx\n",
	       ioctl(fd, SECMMU_GET_API_VERSION, 0),
	       format == SECMMU_FMT_X86_EPT4 ? "x86 EPT (4 levels, rmaps)" :
	       "arm64 stage-2 (4K granule, 48-bit IPA, parallel faults)", GPA);
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap", -errno);
	ret = set_slot(fd, 0, 0, GPA, SIZE, mem);
	if (ret)
		die("SECMMU_SET_MEMSLOT", ret);
	vcpu = vcpu_create(fd, 0);
	if (vcpu < 0)
		die("SECMMU_CREATE_VCPU", vcpu);

	show("start:");
	run(SECMMU_RUN_READ, 0, SIZE, "vCPU reads 16 MiB:");
	run(SECMMU_RUN_WRITE, 0, SIZE, "vCPU writes 16 MiB:");
	printf("%-28s host reads 0x%llx (= 0x5ec ^ gpa)\n", "",
	       (unsigned long long)*(unsigned long *)mem);
	madvise(mem, SIZE / 2, MADV_DONTNEED);
	show("host MADV_DONTNEED 8 MiB:");
	mprotect(mem + SIZE / 2, SIZE / 4, PROT_READ);
	show("host mprotect RO 4 MiB:");
	run(SECMMU_RUN_WRITE, SIZE / 2, SIZE / 4, "vCPU writes the RO part:");
	run(SECMMU_RUN_READ, 0, SIZE, "vCPU reads 16 MiB again:");
	munmap(mem, SIZE);
	show("host munmap 16 MiB:");
	run(SECMMU_RUN_READ, 0, SIZE, "vCPU reads after munmap:");
	close(vcpu);
	close(fd);
}

int main(int argc, char **argv)
{
	const char *which = argc > 1 ? argv[1] : "both";

	if (strcmp(which, "arm64"))
		demo(SECMMU_FMT_X86_EPT4);
	if (strcmp(which, "x86"))
		demo(SECMMU_FMT_ARM64_S2);
	return 0;
}
