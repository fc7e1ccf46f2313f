// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu dirty logging benchmark, in the spirit of KVM's
 * dirty_log_perf_test.c: SIZE MiB of populated memory in one slot, every
 * page mapped writable by a first guest pass, for each format, best of
 * REPS, each figure against another measured in the same run.
 *
 * - Enabling logging: the time of the flags-only SECMMU_SET_MEMSLOT that
 *   sets SECMMU_MEM_LOG_DIRTY_PAGES, which write-protects every leaf,
 *   against the same with SECMMU_CFG_DIRTY_LOG_INITIALLY_SET, which
 *   protects nothing (target: >= 20x faster; KVM: 460 ms -> 10 ms).
 * - The guest writes every page once, the log is harvested, and it writes
 *   every page again: the faults of that second pass by the dirty bit
 *   (SECMMU_CFG_DIRTY_LOG_DIRTY_BIT, PML-like) against write protection
 *   (target: 0 against one per page), and both passes' times.
 * - One harvest of the whole log: SECMMU_GET_DIRTY_LOG alone (bitmap mode,
 *   which protects what it takes), GET then SECMMU_CLEAR_DIRTY_LOG (manual
 *   protect), and GET by the dirty bit, in seconds per GiB; and for a
 *   dirty ring (1 MiB, 65536 entries), the time spent collecting its
 *   entries and resetting them (SECMMU_RESET_DIRTY_RINGS) over the whole
 *   pass, which exits on a full ring every 64K pages.
 * - The same after a sparse write pass (one page in 512): the bitmap
 *   harvest scans the whole slot however little was written, the ring's
 *   only what was (its ratio against the bitmap printed).
 * - The first guest write pass after enabling on hugetlb-backed memory (a
 *   1G page when SIZE is 1024 and the VM reserved one, else THP): split on
 *   fault, where the first write under each huge leaf splits it and the
 *   other pages fault again in full, against eager splitting
 *   (SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT), where enabling split them
 *   (target: <= 0.2x; KVM, with PML: 2.94 s -> 0.14 s). By the dirty bit,
 *   as KVM measured, and by write protection, where each piece still takes
 *   a fast fault.
 *
 * usage: secmmu_dirty_bench [MiB]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "secmmu_lib.h"
#include "kselftest.h"

#define GPA	0x100000000UL
#define REPS	3
/* Not a SECMMU_CFG_ flag: the bench's own, for a space with dirty rings. */
#define RING		0x80000000u
#define RING_BYTES	0x100000u
#define RING_ENTRIES	(RING_BYTES / sizeof(struct secmmu_dirty_gfn))

static void die(const char *what, int err)
{
	fprintf(stderr, "secmmu_dirty_bench: %s: %s\n", what, strerror(-err));
	exit(1);
}

struct figures {
	double enable;		/* s to start logging */
	double write;		/* s of the first write pass after */
	double faults;		/* faults per page of that pass */
	double harvest;		/* s of one harvest of the whole log */
	double write2;		/* s of the write pass after the harvest */
	double faults2;		/* faults per page of that pass */
	double sparse;		/* s of a harvest after one page in 512 written */
};

/* A space's dirty ring, mapped, and what userspace keeps with it. */
struct ring {
	int fd;
	struct secmmu_dirty_gfn *gfns;	/* NULL: no ring, the bitmap */
	unsigned long next;
	unsigned long *bmap;
	unsigned long npages;
	double harvest;			/* s spent collecting and resetting */
};

/* Collects and resets the ring, adding the time to @r->harvest. */
static void ring_harvest(struct ring *r)
{
	double t0 = now_s();
	long n = dirty_ring_collect(r->gfns, RING_ENTRIES, &r->next, 0, r->bmap,
				    r->npages);
	long freed = n < 0 ? n : dirty_ring_reset(r->fd);

	r->harvest += now_s() - t0;
	if (n < 0 || freed != n)
		die("ring harvest", n < 0 ? n : freed < 0 ? freed : -EPROTO);
}

enum backing { B_4K, B_THP, B_HUGETLB_1G };

static const char * const backing_name[] = { "4K", "THP", "hugetlb 1G" };

/* Memory of @size bytes of @b, 2M aligned, unpopulated; NULL if none. */
static char *bench_alloc(enum backing b, unsigned long size, char **raw,
			 unsigned long *len)
{
	if (b == B_HUGETLB_1G) {
		*len = size;
		*raw = mmap(NULL, size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
			    (30 << 26), -1, 0);
		if (*raw == MAP_FAILED)
			return NULL;
		return *raw;
	}
	*len = size + SZ_2M;
	*raw = mmap(NULL, *len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*raw == MAP_FAILED)
		return NULL;
	return (char *)(((uintptr_t)*raw + SZ_2M - 1) & ~(SZ_2M - 1));
}

/* Whether a 1G hugetlb page of @size bytes can be had and populated. */
static int have_hugetlb_1g(unsigned long size)
{
	unsigned long len;
	char *raw, *mem;
	int ok;

	if (size != SZ_1G)
		return 0;
	mem = bench_alloc(B_HUGETLB_1G, size, &raw, &len);
	if (!mem)
		return 0;
	ok = !madvise(mem, size, MADV_POPULATE_WRITE);
	munmap(raw, len);
	return ok;
}

/*
 * One guest write pass of @pattern over @size bytes, a page in @stride
 * pages: its time in seconds, less the time spent harvesting the ring @r
 * when it fills, and in @faults its faults per page written.
 */
static double write_pass(int fd, int vcpu, unsigned long size,
			 unsigned long stride, unsigned long pattern,
			 struct ring *r, double *faults)
{
	__u64 before = get_stats(fd).faults;
	double spent = r->harvest, t0 = now_s(), t;
	struct secmmu_run run;
	unsigned long start = GPA;
	int ret;

	for (;;) {
		ret = run_range(vcpu, SECMMU_RUN_WRITE, start, GPA + size,
				stride * PAGE_SZ, pattern, &run);
		if (ret != -EAGAIN || !r->gfns)
			break;
		ring_harvest(r);
		start = run.exit_gpa;
	}
	t = now_s() - t0 - (r->harvest - spent);
	if (ret)
		die("write pass", ret);
	*faults = (double)(get_stats(fd).faults - before) /
		  (size / PAGE_SZ / stride);
	return t;
}

/* One harvest of the log: s. The ring's, or GET (and CLEAR) of the bitmap. */
static double harvest(int fd, unsigned int cfg, struct ring *r,
		      struct secmmu_dirty_log *log,
		      struct secmmu_clear_dirty_log *clr)
{
	double spent = r->harvest, t0 = now_s();
	int ret;

	if (r->gfns) {
		ring_harvest(r);
		return r->harvest - spent;
	}
	ret = secmmu_ioctl(fd, SECMMU_GET_DIRTY_LOG, log);
	if (!ret && (cfg & SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT))
		ret = secmmu_ioctl(fd, SECMMU_CLEAR_DIRTY_LOG, clr);
	if (ret)
		die("harvest", ret);
	return now_s() - t0;
}

/*
 * One run of @format over @size bytes of backing @b: space config @cfg,
 * first pass, enable, write pass, harvest, write pass.
 */
static struct figures run_once(unsigned int format, unsigned long size,
			       unsigned int cfg, enum backing b)
{
	unsigned long len, npages = size / PAGE_SZ;
	char *raw, *mem = bench_alloc(b, size, &raw, &len);
	unsigned long *bmap = calloc((npages + 63) / 64, 8);
	struct secmmu_dirty_log log = { .slot = 0, .bitmap = (uintptr_t)bmap };
	struct secmmu_clear_dirty_log clr = {
		.slot = 0, .num_pages = npages, .bitmap = (uintptr_t)bmap,
	};
	struct secmmu_config sc = {
		.flags = cfg & ~RING, .format = format, .nr_roots = 1,
		.dirty_ring_size = cfg & RING ? RING_BYTES : 0,
	};
	struct ring r = { .bmap = bmap, .npages = npages };
	double t0, sparse_faults;
	struct figures f;
	int fd, vcpu, ret;

	if (!mem || !bmap)
		die("memory", -ENOMEM);
	if (b != B_HUGETLB_1G)
		madvise(mem, size, b == B_THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	if (madvise(mem, size, MADV_POPULATE_WRITE))
		memset(mem, 1, size);
	fd = space_create_cfg(&sc);
	if (fd < 0)
		die("space", fd);
	r.fd = fd;
	ret = set_slot(fd, 0, 0, GPA, size, mem);
	if (ret)
		die("slot", ret);
	vcpu = vcpu_create(fd, 0);
	if (vcpu < 0)
		die("vcpu", vcpu);
	if (cfg & RING) {
		r.gfns = mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED,
			      vcpu, SECMMU_DIRTY_LOG_PAGE_OFFSET * PAGE_SZ);
		if (r.gfns == MAP_FAILED)
			die("ring", -errno);
	}
	ret = run_range(vcpu, SECMMU_RUN_WRITE, GPA, GPA + size, PAGE_SZ, 1, NULL);
	if (ret)
		die("first pass", ret);

	t0 = now_s();
	ret = set_slot(fd, 0, SECMMU_MEM_LOG_DIRTY_PAGES, GPA, size, mem);
	f.enable = now_s() - t0;
	if (ret)
		die("enable", ret);
	f.write = write_pass(fd, vcpu, size, 1, 2, &r, &f.faults);
	/* The ring's figure: the harvests of the full ring in the pass too. */
	f.harvest = harvest(fd, cfg, &r, &log, &clr);
	if (r.gfns)
		f.harvest = r.harvest;
	f.write2 = write_pass(fd, vcpu, size, 1, 3, &r, &f.faults2);
	harvest(fd, cfg, &r, &log, &clr);
	write_pass(fd, vcpu, size, 512, 4, &r, &sparse_faults);
	f.sparse = harvest(fd, cfg, &r, &log, &clr);
	if (r.gfns)
		munmap(r.gfns, RING_BYTES);
	close(vcpu);
	close(fd);
	munmap(raw, len);
	free(bmap);
	return f;
}

static double min_d(double a, double b)
{
	return a < b ? a : b;
}

/* Keeps in @best the lowest time of each figure, and the last fault counts. */
static void keep_best(struct figures *best, const struct figures *r)
{
	best->enable = min_d(best->enable, r->enable);
	best->write = min_d(best->write, r->write);
	best->harvest = min_d(best->harvest, r->harvest);
	best->write2 = min_d(best->write2, r->write2);
	best->sparse = min_d(best->sparse, r->sparse);
	best->faults = r->faults;
	best->faults2 = r->faults2;
}

static const char *verdict(int ok)
{
	return ok ? "met" : "NOT met";
}

int main(int argc, char **argv)
{
	unsigned long size = (argc > 1 ? strtoul(argv[1], NULL, 0) : 1024) << 20;
	const unsigned int formats[] = { SECMMU_FMT_X86_EPT4, SECMMU_FMT_ARM64_S2 };
	const unsigned int manual = SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT;
	const unsigned int init_set = manual | SECMMU_CFG_DIRTY_LOG_INITIALLY_SET;
	const unsigned int eager = SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT;
	const unsigned int dbit = SECMMU_CFG_DIRTY_LOG_DIRTY_BIT;
	enum backing huge = have_hugetlb_1g(size) ? B_HUGETLB_1G : B_THP;
	double gib = (double)size / SZ_1G;
	int f, i, ok, met = 1;

	printf("dirty logging: %lu MiB, one vCPU, one write per 4K page, best of %d\n",
	       size >> 20, REPS);
	for (f = 0; f < 2; f++) {
		const char *fmt = format_name(formats[f]);
		const struct figures none = { 1e9, 1e9, 0, 1e9, 1e9, 0, 1e9 };
		struct figures wp = none, is = none, cl = none, db = none;
		struct figures rg = none, rd = none;
		struct figures sp = none, ep = none, dsp = none, dep = none, r;
		const struct {
			unsigned int cfg;
			enum backing b;
			struct figures *best;
		} modes[] = {
			{ 0, B_4K, &wp }, { init_set, B_4K, &is },
			{ manual, B_4K, &cl }, { dbit, B_4K, &db },
			{ 0, huge, &sp }, { eager, huge, &ep },
			{ dbit, huge, &dsp }, { dbit | eager, huge, &dep },
			{ RING, B_4K, &rg }, { RING | dbit, B_4K, &rd },
		};
		unsigned int m;

		/* Interleaved, so that a noisy stretch falls on no one mode. */
		for (i = 0; i < REPS; i++) {
			for (m = 0; m < ARRAY_SIZE(modes); m++) {
				r = run_once(formats[f], size, modes[m].cfg, modes[m].b);
				keep_best(modes[m].best, &r);
			}
		}
		ok = wp.enable >= 20 * is.enable;
		met &= ok;
		printf("%s: enable %.4f s, INITIALLY_SET %.6f s: %.0fx (target >= 20x: %s)\n",
		       fmt, wp.enable, is.enable, wp.enable / is.enable, verdict(ok));
		printf("%s: write protection: pass %.4f s, %.2f faults/page, again %.4f s, %.2f\n",
		       fmt, wp.write, wp.faults, wp.write2, wp.faults2);
		printf("%s: dirty bit: pass %.4f s, %.2f faults/page, again %.4f s, %.2f\n",
		       fmt, db.write, db.faults, db.write2, db.faults2);
		ok = db.faults2 == 0 && wp.faults2 >= 1;
		met &= ok;
		printf("%s: faults/page after harvest: dirty bit %.2f, WP %.2f (target 0, 1: %s)\n",
		       fmt, db.faults2, wp.faults2, verdict(ok));
		printf("%s: ring: pass %.4f s, %.2f faults/page, again %.4f s, %.2f\n",
		       fmt, rg.write, rg.faults, rg.write2, rg.faults2);
		printf("%s: ring, dirty bit: pass %.4f s, %.2f faults/page, again %.4f s, %.2f\n",
		       fmt, rd.write, rd.faults, rd.write2, rd.faults2);
		printf("%s: harvest per GiB: bitmap %.4f s, clear-log %.4f s, dirty bit %.4f s\n",
		       fmt, wp.harvest / gib, cl.harvest / gib, db.harvest / gib);
		printf("%s: harvest per GiB: ring %.4f s, ring by the dirty bit %.4f s\n",
		       fmt, rg.harvest / gib, rd.harvest / gib);
		printf("%s: harvest after 1 page in 512: bitmap %.6f s, ring %.6f s: %.2fx\n",
		       fmt, wp.sparse, rg.sparse, rg.sparse / wp.sparse);
		printf("%s: %s, WP, on fault: enable %.4f s, pass %.4f s, %.2f faults/page\n",
		       fmt, backing_name[huge], sp.enable, sp.write, sp.faults);
		printf("%s: %s, WP, eager: enable %.4f s, pass %.4f s, %.2f faults/page: %.2fx\n",
		       fmt, backing_name[huge], ep.enable, ep.write, ep.faults,
		       ep.write / sp.write);
		printf("%s: %s, dirty bit, on fault: enable %.4f s, pass %.4f s, %.2f f/p\n",
		       fmt, backing_name[huge], dsp.enable, dsp.write, dsp.faults);
		printf("%s: %s, dirty bit, eager: enable %.4f s, pass %.4f s, %.2f f/p: %.2fx\n",
		       fmt, backing_name[huge], dep.enable, dep.write, dep.faults,
		       dep.write / dsp.write);
		ok = dep.write <= 0.2 * dsp.write;
		met &= ok;
		printf("%s: first pass, eager vs on fault, dirty bit: %.2fx (target <= 0.2x: %s)\n",
		       fmt, dep.write / dsp.write, verdict(ok));
	}
	return met ? 0 : 1;
}
