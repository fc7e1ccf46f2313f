// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu_stress: hostile concurrency, as a seeded random program.
 *
 * One space (4 roots) mirrors 4 MiB of THP-advised anonymous memory: two
 * 2M chunks, one memslot each (so huge mappings are possible), of 8
 * regions each. Worker threads pick operations at random: guest writes,
 * reads and verifies (RUN, ACCESS) and host ones; memslot delete and
 * re-add (read-only or not); munmap and mmap again at the same address;
 * MADV_DONTNEED, MADV_FREE, MADV_PAGEOUT; mprotect read-only and back;
 * mremap away and back; new THPs or MADV_COLLAPSE; move_pages between the
 * NUMA nodes; KSM;
 * page_idle aging and SECMMU_TEST_YOUNG; SNAPSHOT; CREATE_VCPU and close;
 * dirty logging started, harvested and stopped on a chunk's slot;
 * fork (the child must get EIO); and a child process that creates its own
 * space and is killed (SIGKILL) or exits in the middle of RUN. Another
 * thread runs SECMMU_AUDIT in a loop: no leaf may be incoherent, ever.
 *
 * The model: each region has a mutex and an owner thread. Operations that
 * change data or what faults (writes, mprotect, munmap, mremap, DONTNEED,
 * FREE) run under the region's lock, on the owner's regions only; memslot
 * and THP operations take every region lock of their chunk. Every page is
 * modelled by its probe words (one every PROBE bytes): KNOWN (word =
 * pattern ^ gpa, what RUN WRITE stores), FILL (every byte one value; 0 is
 * a page nobody wrote since it was zapped), either of them "or zero" after
 * MADV_FREE (the kernel may discard the page until it is written again).
 * Checks under the lock: every guest access faults (EFAULT with a memory-
 * fault exit) exactly where the model says it cannot succeed (no slot, a
 * write to a read-only slot or to a PROT_READ page), and nowhere else;
 * every value read (RUN VERIFY, ACCESS, userspace) is what the model says;
 * after a slot deletion, a mprotect or a munmap nothing is mapped that
 * may not be; every page the guest wrote since the last harvest of a
 * logging slot is in the dirty log (under the chunk's locks, as the slot
 * operations). Data-preserving operations (move_pages, PAGEOUT, KSM, aging,
 * fork, SNAPSHOT, unchecked reads) run without locks, on any region, at
 * the same time as the checked ones.
 *
 * The seed is printed ("# seed N"); SECMMU_STRESS_SEED=N replays a run:
 * each thread makes the same choices, the interleaving is the scheduler's.
 * SECMMU_STRESS_SECONDS sets the duration (default 40 s divided by
 * SECMMU_TEST_SCALE). Any unexpected errno, data mismatch or audit
 * mismatch fails the test, with the seed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "secmmu_lib.h"
#include "secmmu_stress_lib.h"
#include "kselftest_harness.h"

#define GPA_BASE	0x40000000UL
#define NR_REGIONS	16
#define REGION_PAGES	64
#define REGION_SZ	(REGION_PAGES * PAGE_SZ)
#define MEM_SZ		(NR_REGIONS * REGION_SZ)
#define NR_CHUNKS	(MEM_SZ / SZ_2M)
#define CHUNK_REGIONS	(SZ_2M / REGION_SZ)
#define PROBE		1024UL
#define PAGE_PROBES	(PAGE_SZ / PROBE)
#define NR_ROOTS	4
#define NR_WORKERS	3
#define CHILD_SZ	SZ_1M
#define FILL_BYTES	0x0101010101010101ULL
#define DEFAULT_SECONDS	40

#ifndef MADV_FREE
#define MADV_FREE	8
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE	25
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT	21
#endif
#define MPOL_MF_MOVE	2	/* numaif.h */

enum { SLOT_NONE, SLOT_RW, SLOT_RO };

struct page_model {
	__u64 val;		/* KNOWN: the pattern; FILL: the byte */
	__u8 fill;		/* FILL, not KNOWN */
	__u8 maybe_zero;	/* MADV_FREE'd since written: zero is fine */
	__u8 host_ro;	/* mprotect(PROT_READ) */
	__u8 logged;	/* the guest wrote it since its logging slot's last harvest */
};

struct region {
	pthread_mutex_t lock;
	int idx;
	char *hva;
	char *tmp;		/* where mremap moves it away to */
	unsigned long gpa;
	int chunk;		/* its 2M chunk, one memslot */
	struct page_model pg[REGION_PAGES];
};

enum {
	OP_RUN_WRITE, OP_ACCESS_WRITE, OP_HOST_WRITE, OP_VERIFY, OP_DONTNEED,
	OP_FREE, OP_MPROTECT, OP_SLOT, OP_REMAP, OP_MREMAP, OP_MERGEABLE,
	OP_SNAPCHECK, OP_THP, OP_VCPU, OP_READ, OP_PAGEOUT, OP_MOVE, OP_IDLE,
	OP_FORK, OP_CHILD, OP_SNAPSHOT, OP_CHURN, OP_VCPUS_FULL, OP_DIRTY, NR_OPS
};

static const char * const op_names[NR_OPS] = {
	"run_write", "access_write", "host_write", "verify", "dontneed",
	"free", "mprotect", "slot", "remap", "mremap", "mergeable",
	"snapcheck", "thp", "vcpu", "read", "pageout", "move_pages", "idle",
	"fork", "child", "snapshot", "churn", "vcpus_full", "dirty_log",
};

/* Relative frequencies. */
static const unsigned int op_weights[NR_OPS] = {
	12, 6, 6, 14, 4, 4, 5, 2, 3, 3, 1,
	3, 1, 2, 8, 3, 3, 3,
	1, 1, 2, 2, 1, 2,
};

struct worker {
	int id;
	struct stress_rng rng;
	int vcpu;
	char *buf;		/* one region's worth */
	pthread_t thread;
};

static struct {
	unsigned int format;
	int fd;
	unsigned long long seed;
	__u64 deadline;
	char *mem;
	struct region reg[NR_REGIONS];
	int slot[NR_CHUNKS];	/* SLOT_*: under all the chunk's region locks */
	int logging[NR_CHUNKS];	/* its slot logs dirty pages: the same locks */
	pthread_mutex_t vcpu_lock;
	unsigned int nr_vcpus;	/* live */
	int stop;
	pthread_mutex_t fail_lock;
	int failed;
	char why[1024];
	int pagemap, bitmap;
	int ksm, numa, madv_free;
	unsigned long ops[NR_OPS];
	unsigned long audits, audit_leaves, audit_skipped;
	unsigned long memfaults, tolerated;	/* expected memory faults; see below */
} S = {
	.fail_lock = PTHREAD_MUTEX_INITIALIZER,
	.vcpu_lock = PTHREAD_MUTEX_INITIALIZER,
};

static __printf(1, 2) void fail(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&S.fail_lock);
	if (!S.failed) {
		va_start(ap, fmt);
		vsnprintf(S.why, sizeof(S.why), fmt, ap);
		va_end(ap);
		S.failed = 1;
		fprintf(stderr, "# FAIL (seed %llu): %s\n", S.seed, S.why);
	}
	pthread_mutex_unlock(&S.fail_lock);
	__atomic_store_n(&S.stop, 1, __ATOMIC_RELAXED);
}

#define SLOT_OF(r)	S.slot[(r)->chunk]

/* The guest wrote page @p of @r: its logging slot must report it. */
static void guest_wrote(struct region *r, unsigned int p)
{
	if (S.logging[r->chunk])
		r->pg[p].logged = 1;
}

static int stopped(void)
{
	return __atomic_load_n(&S.stop, __ATOMIC_RELAXED);
}

static void count(unsigned long *c)
{
	__atomic_add_fetch(c, 1, __ATOMIC_RELAXED);
}

static unsigned long stress_seconds(void)
{
	const char *s = getenv("SECMMU_STRESS_SECONDS");
	unsigned long v = DEFAULT_SECONDS / test_scale();

	if (s && strtoul(s, NULL, 0))
		v = strtoul(s, NULL, 0);
	return v ? v : 1;
}

static unsigned long page_gpa(struct region *r, unsigned int p)
{
	return r->gpa + p * PAGE_SZ;
}

/* Does a guest access (@write or read) to page @p of @r fault? */
static int page_faults(struct region *r, unsigned int p, int write)
{
	if (SLOT_OF(r) == SLOT_NONE)
		return 1;
	return write && (SLOT_OF(r) == SLOT_RO || r->pg[p].host_ro);
}

static __u64 probe_val(const struct page_model *m, unsigned long gpa)
{
	return m->fill ? m->val * FILL_BYTES : m->val ^ gpa;
}

/* Checks the probe words of page @p of @r as read into @data by @how. */
static int check_page(struct region *r, unsigned int p, const char *data,
		      const char *how)
{
	const struct page_model *m = &r->pg[p];
	unsigned int k;

	for (k = 0; k < PAGE_PROBES; k++) {
		unsigned long gpa = page_gpa(r, p) + k * PROBE;
		__u64 v = *(const __u64 *)(data + k * PROBE);

		if (v == probe_val(m, gpa) || (m->maybe_zero && !v))
			continue;
		fail("%s: region %d page %u gpa %#lx: %#llx, model %s %#llx%s, slot %d%s",
		     how, r->idx, p, gpa, (unsigned long long)v,
		     m->fill ? "fill" : "pattern", (unsigned long long)m->val,
		     m->maybe_zero ? " or 0" : "", SLOT_OF(r), m->host_ro ? " ro" : "");
		return -1;
	}
	return 0;
}

/* Model: page @p now holds what a write of @val (@fill) stored. */
static void set_page(struct region *r, unsigned int p, __u64 val, int fill)
{
	r->pg[p].val = val;
	r->pg[p].fill = fill;
	r->pg[p].maybe_zero = 0;
}

/* Fills @buf with page @p of @r as the model says it reads (KNOWN or FILL). */
static void make_page(struct region *r, unsigned int p, char *buf,
		      __u64 val, int fill)
{
	unsigned int k;

	if (fill) {
		memset(buf, (int)val, PAGE_SZ);
		return;
	}
	memset(buf, 0xee, PAGE_SZ);
	for (k = 0; k < PAGE_PROBES; k++)
		*(__u64 *)(buf + k * PROBE) = val ^ (page_gpa(r, p) + k * PROBE);
}

/*
 * RUN @op with @pattern over the probes of pages [a, b) of @r, resuming
 * after every memory-fault exit: each must come at the first page from
 * where it started that the model says faults, after every access before
 * it. Writes update the model.
 */
static int guest_run(struct worker *w, struct region *r, unsigned int op,
		     unsigned int a, unsigned int b, __u64 pattern)
{
	int write = op == SECMMU_RUN_WRITE;
	unsigned long gpa = page_gpa(r, a), end = page_gpa(r, b);

	while (gpa < end) {
		unsigned int p = (gpa - r->gpa) / PAGE_SZ, f, q;
		unsigned long fgpa, want;
		struct secmmu_run run;
		int ret;

		for (f = p; f < b && !page_faults(r, f, write); f++)
			;
		fgpa = f < b ? page_gpa(r, f) : end;
		want = fgpa > gpa ? (fgpa - gpa) / PROBE : 0;
		ret = run_range(w->vcpu, op, gpa, end, PROBE, pattern, &run);
		if (op == SECMMU_RUN_VERIFY && run.mismatches) {
			unsigned long bad = run.first_mismatch;

			fail("VERIFY %#llx region %d from %#lx: %llu bad, first %#lx (host %#llx)",
			     (unsigned long long)pattern, r->idx, gpa,
			     (unsigned long long)run.mismatches, bad,
			     bad >= r->gpa && bad < r->gpa + REGION_SZ ?
			     (unsigned long long)*(__u64 *)(r->hva + bad - r->gpa) : 0ULL);
			return -1;
		}
		if (ret == -EINTR && run.exit_reason == SECMMU_EXIT_SIGNAL &&
		    run.exit_gpa >= gpa && run.exit_gpa < fgpa) {
			if (write)
				for (q = p; q <= (run.exit_gpa - r->gpa) / PAGE_SZ; q++) {
					set_page(r, q, pattern, 0);
					guest_wrote(r, q);
				}
			gpa = run.exit_gpa;
			continue;
		}
		if (f == b) {
			if (ret || run.accesses != want) {
				fail("RUN %u region %d %#lx slot %d: %s, exit %u %#llx, %llu/%lu",
				     op, r->idx, gpa, SLOT_OF(r), strerror(-ret),
				     run.exit_reason, (unsigned long long)run.exit_gpa,
				     (unsigned long long)run.accesses, want);
				return -1;
			}
		} else if (ret != -EFAULT || run.exit_reason != SECMMU_EXIT_MEMORY_FAULT ||
			   run.exit_gpa != fgpa || run.accesses != want ||
			   run.exit_flags != (write ? SECMMU_ACCESS_WRITE : 0)) {
			char got[128];

			snprintf(got, sizeof(got), "%s, exit %u at %#llx flags %u, %llu accesses",
				 ret ? strerror(-ret) : "success", run.exit_reason,
				 (unsigned long long)run.exit_gpa, run.exit_flags,
				 (unsigned long long)run.accesses);
			fail("RUN %u region %d %#lx slot %d%s: want fault %#lx after %lu: %s",
			     op, r->idx, gpa, SLOT_OF(r), r->pg[f].host_ro ? " ro" : "", fgpa,
			     want, got);
			return -1;
		}
		if (write)
			for (q = p; q < f; q++) {
				set_page(r, q, pattern, 0);
				guest_wrote(r, q);
			}
		if (f < b)
			count(&S.memfaults);
		gpa = fgpa + PAGE_SZ;
	}
	return 0;
}

/*
 * ACCESS pages [a, b) of @r to or from @buf (page a at @buf), resuming
 * after each fault, which must come where the model says. Sets @faulted[p]
 * for the pages that faulted. Writes do not update the model.
 */
static int guest_access_pages(struct worker *w, struct region *r, unsigned int a,
			      unsigned int b, char *buf, int write, char *faulted)
{
	unsigned int p = a;

	while (p < b) {
		unsigned int f;
		struct secmmu_access acc;
		unsigned long fgpa;
		int ret;

		for (f = p; f < b && !page_faults(r, f, write); f++)
			;
		fgpa = f < b ? page_gpa(r, f) : page_gpa(r, b);
		memset(&acc, 0, sizeof(acc));
		acc.gpa = page_gpa(r, p);
		acc.len = (b - p) * PAGE_SZ;
		acc.buf = (unsigned long)(buf + (p - a) * PAGE_SZ);
		acc.flags = write ? SECMMU_ACCESS_WRITE : 0;
		ret = secmmu_ioctl(w->vcpu, SECMMU_ACCESS, &acc);
		if (f == b ? ret != 0 :
		    ret != -EFAULT || acc.exit_gpa != fgpa || acc.done != fgpa - page_gpa(r, p)) {
			fail("ACCESS %s region %d [%u, %u) slot %d: want %s %#lx: %s, %llu, %#llx",
			     write ? "write" : "read", r->idx, p, b, SLOT_OF(r),
			     f == b ? "success" : "a fault", fgpa,
			     ret ? strerror(-ret) : "success",
			     (unsigned long long)acc.done,
			     (unsigned long long)acc.exit_gpa);
			return -1;
		}
		if (f == b)
			break;
		faulted[f] = 1;
		count(&S.memfaults);
		p = f + 1;
	}
	return 0;
}

/* A random page range [*a, *b) of a region, often short. */
static void pick_range(struct worker *w, unsigned int *a, unsigned int *b)
{
	unsigned int len;

	switch (stress_below(&w->rng, 4)) {
	case 0:
		*a = 0;
		*b = REGION_PAGES;
		return;
	case 1:
		len = 1 + stress_below(&w->rng, REGION_PAGES);
		break;
	default:
		len = 1 + stress_below(&w->rng, 8);
		break;
	}
	*a = stress_below(&w->rng, REGION_PAGES - len + 1);
	*b = *a + len;
}

static __u64 pick_fill(struct worker *w)
{
	static const __u8 fills[] = { 0, 0x5a, 0xa5 };

	return fills[stress_below(&w->rng, 3)];
}

static void op_run_write(struct worker *w, struct region *r, unsigned int a, unsigned int b)
{
	guest_run(w, r, SECMMU_RUN_WRITE, a, b, stress_rand(&w->rng));
}

static void op_access_write(struct worker *w, struct region *r, unsigned int a,
			    unsigned int b)
{
	int fill = stress_below(&w->rng, 2);
	__u64 val = fill ? pick_fill(w) : stress_rand(&w->rng);
	char faulted[REGION_PAGES] = {};
	unsigned int p;

	for (p = a; p < b; p++)
		make_page(r, p, w->buf + (p - a) * PAGE_SZ, val, fill);
	if (guest_access_pages(w, r, a, b, w->buf, 1, faulted))
		return;
	for (p = a; p < b; p++)
		if (!faulted[p]) {
			set_page(r, p, val, fill);
			guest_wrote(r, p);
		}
}

/* Userspace writes: PROT_READ pages are left alone. */
static void op_host_write(struct worker *w, struct region *r, unsigned int a,
			  unsigned int b)
{
	int fill = stress_below(&w->rng, 2);
	__u64 val = fill ? pick_fill(w) : stress_rand(&w->rng);
	unsigned int p;

	for (p = a; p < b; p++) {
		if (r->pg[p].host_ro)
			continue;
		make_page(r, p, r->hva + p * PAGE_SZ, val, fill);
		set_page(r, p, val, fill);
	}
}

static int host_check(struct region *r, unsigned int a, unsigned int b)
{
	unsigned int p;

	for (p = a; p < b; p++)
		if (check_page(r, p, r->hva + p * PAGE_SZ, "host read"))
			return -1;
	return 0;
}

/*
 * Checks pages [a, b) against the model: by RUN VERIFY over runs of pages
 * of one pattern (ACCESS for the others), by ACCESS reads, or by userspace
 * reads; pages the guest cannot read are read by userspace.
 */
static void op_verify(struct worker *w, struct region *r, unsigned int a, unsigned int b,
		      unsigned int how)
{
	char faulted[REGION_PAGES] = {};
	unsigned int p, q;

	switch (how) {
	case 0:
		for (p = a; p < b; p = q) {
			const struct page_model *m = &r->pg[p];

			q = p + 1;
			if (m->fill || m->maybe_zero) {
				if (guest_access_pages(w, r, p, q, w->buf, 0, faulted))
					return;
				if (!faulted[p] && check_page(r, p, w->buf, "ACCESS read"))
					return;
				continue;
			}
			while (q < b && !r->pg[q].fill && !r->pg[q].maybe_zero &&
			       r->pg[q].val == m->val)
				q++;
			if (guest_run(w, r, SECMMU_RUN_VERIFY, p, q, m->val))
				return;
		}
		if (SLOT_OF(r) == SLOT_NONE)
			host_check(r, a, b);
		return;
	case 1:
		if (guest_access_pages(w, r, a, b, w->buf, 0, faulted))
			return;
		for (p = a; p < b; p++)
			if (!faulted[p] &&
			    check_page(r, p, w->buf + (p - a) * PAGE_SZ, "ACCESS read"))
				return;
		if (SLOT_OF(r) == SLOT_NONE)
			host_check(r, a, b);
		return;
	default:
		host_check(r, a, b);
	}
}

/* Under the lock: no root maps pages [a, b) beyond what the model allows. */
static int snap_check(struct region *r, unsigned int a, unsigned int b, int none,
		      const char *after)
{
	unsigned char snap[REGION_PAGES];
	unsigned int root, p;

	for (root = 0; root < NR_ROOTS; root++) {
		int ret = snapshot(S.fd, root, page_gpa(r, a), b - a, snap);

		if (ret) {
			fail("SNAPSHOT: %s", strerror(-ret));
			return -1;
		}
		for (p = a; p < b; p++) {
			unsigned char s = snap[p - a];

			if (!(s & SECMMU_SNAP_PRESENT))
				continue;
			if (none || SLOT_OF(r) == SLOT_NONE ||
			    ((s & SECMMU_SNAP_WRITABLE) &&
			     (SLOT_OF(r) == SLOT_RO || r->pg[p].host_ro))) {
				fail("after %s: root %u maps %#lx (snapshot %#x), slot %d%s",
				     after, root, page_gpa(r, p), s, SLOT_OF(r),
				     r->pg[p].host_ro ? " ro" : "");
				return -1;
			}
		}
	}
	return 0;
}

static void op_dontneed(struct region *r, unsigned int a, unsigned int b)
{
	unsigned int p;

	if (madvise(r->hva + a * PAGE_SZ, (b - a) * PAGE_SZ, MADV_DONTNEED)) {
		fail("MADV_DONTNEED: %s", strerror(errno));
		return;
	}
	for (p = a; p < b; p++)
		set_page(r, p, 0, 1);
}

static void op_free(struct region *r, unsigned int a, unsigned int b)
{
	unsigned int p;

	if (!S.madv_free)
		return;
	if (madvise(r->hva + a * PAGE_SZ, (b - a) * PAGE_SZ, MADV_FREE)) {
		if (errno == EINVAL) {
			S.madv_free = 0;
			return;
		}
		fail("MADV_FREE: %s", strerror(errno));
		return;
	}
	for (p = a; p < b; p++)
		r->pg[p].maybe_zero = 1;
}

static void op_mprotect(struct worker *w, struct region *r, unsigned int a,
			unsigned int b)
{
	int ro = stress_below(&w->rng, 2);
	unsigned int p;

	if (!ro && stress_below(&w->rng, 2)) {
		a = 0;
		b = REGION_PAGES;
	}
	if (mprotect(r->hva + a * PAGE_SZ, (b - a) * PAGE_SZ,
		     ro ? PROT_READ : PROT_READ | PROT_WRITE)) {
		fail("mprotect: %s", strerror(errno));
		return;
	}
	for (p = a; p < b; p++)
		r->pg[p].host_ro = ro;
	if (ro)
		snap_check(r, a, b, 0, "mprotect(PROT_READ)");
}

static int slot_set(unsigned int c, int slot)
{
	int ret = set_slot(S.fd, c, slot == SLOT_RO ? SECMMU_MEM_READONLY : 0,
			   slot == SLOT_NONE ? 0 : GPA_BASE + c * SZ_2M,
			   slot == SLOT_NONE ? 0 : SZ_2M,
			   slot == SLOT_NONE ? NULL : S.mem + c * SZ_2M);

	if (ret) {
		fail("SET_MEMSLOT %u (%d -> %d): %s", c, S.slot[c], slot, strerror(-ret));
		return -1;
	}
	S.slot[c] = slot;
	if (slot == SLOT_NONE)
		S.logging[c] = 0;
	return 0;
}

static void lock_chunk(unsigned int c)
{
	unsigned int i;

	for (i = 0; i < CHUNK_REGIONS; i++)
		pthread_mutex_lock(&S.reg[c * CHUNK_REGIONS + i].lock);
}

static void unlock_chunk(unsigned int c)
{
	unsigned int i;

	for (i = 0; i < CHUNK_REGIONS; i++)
		pthread_mutex_unlock(&S.reg[c * CHUNK_REGIONS + i].lock);
}

/* Delete the slot of a chunk (and maybe re-add it read-only), or add it. */
static void op_slot(struct worker *w, unsigned int c)
{
	unsigned int i;

	if (S.slot[c] == SLOT_NONE) {
		slot_set(c, stress_below(&w->rng, 3) ? SLOT_RW : SLOT_RO);
		return;
	}
	if (slot_set(c, SLOT_NONE))
		return;
	for (i = 0; i < CHUNK_REGIONS; i++)
		if (snap_check(&S.reg[c * CHUNK_REGIONS + i], 0, REGION_PAGES, 1,
			       "slot deletion"))
			return;
	if (stress_below(&w->rng, 2))
		slot_set(c, SLOT_RO);
}

/*
 * Dirty logging on the slot of a chunk: start it, or harvest it
 * (SECMMU_GET_DIRTY_LOG, which write-protects what it reports) and check
 * that every page the guest wrote since the last harvest is reported, and
 * maybe stop it. Under every region lock of the chunk, so no guest write
 * of the chunk runs meanwhile.
 */
static void op_dirty(struct worker *w, unsigned int c)
{
	unsigned int flags = S.slot[c] == SLOT_RO ? SECMMU_MEM_READONLY : 0, i, p;
	__u64 map[SZ_2M / PAGE_SZ / 64];
	struct secmmu_dirty_log log = { .slot = c, .bitmap = (uintptr_t)map };
	int ret;

	if (S.slot[c] == SLOT_NONE)
		return;
	if (!S.logging[c]) {
		ret = set_slot(S.fd, c, flags | SECMMU_MEM_LOG_DIRTY_PAGES,
			       GPA_BASE + c * SZ_2M, SZ_2M, S.mem + c * SZ_2M);
		if (ret) {
			fail("SET_MEMSLOT %u: start logging: %s", c, strerror(-ret));
			return;
		}
		S.logging[c] = 1;
		for (i = 0; i < CHUNK_REGIONS; i++)
			for (p = 0; p < REGION_PAGES; p++)
				S.reg[c * CHUNK_REGIONS + i].pg[p].logged = 0;
		return;
	}
	ret = secmmu_ioctl(S.fd, SECMMU_GET_DIRTY_LOG, &log);
	if (ret) {
		fail("GET_DIRTY_LOG %u: %s", c, strerror(-ret));
		return;
	}
	for (i = 0; i < CHUNK_REGIONS; i++) {
		struct region *r = &S.reg[c * CHUNK_REGIONS + i];

		for (p = 0; p < REGION_PAGES; p++) {
			unsigned int bit = i * REGION_PAGES + p;

			if (r->pg[p].logged && !(map[bit / 64] >> (bit % 64) & 1)) {
				fail("dirty log of slot %u: page %#lx written, not reported",
				     c, page_gpa(r, p));
				return;
			}
			r->pg[p].logged = 0;
		}
	}
	if (!stress_below(&w->rng, 3)) {
		ret = set_slot(S.fd, c, flags, GPA_BASE + c * SZ_2M, SZ_2M,
			       S.mem + c * SZ_2M);
		if (ret) {
			fail("SET_MEMSLOT %u: stop logging: %s", c, strerror(-ret));
			return;
		}
		S.logging[c] = 0;
	}
}

/*
 * Huge pages again for a chunk: new THP-backed memory with new data, or
 * MADV_COLLAPSE of what is there (it may well refuse).
 */
static void op_thp(struct worker *w, unsigned int c)
{
	char *addr = S.mem + c * SZ_2M;
	unsigned int i, p;

	if (stress_below(&w->rng, 2)) {
		if (madvise(addr, SZ_2M, MADV_COLLAPSE))
			count(&S.tolerated);
		return;
	}
	if (mmap(addr, SZ_2M, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != addr) {
		fail("mmap MAP_FIXED: %s", strerror(errno));
		return;
	}
	madvise(addr, SZ_2M, MADV_HUGEPAGE);
	for (i = 0; i < CHUNK_REGIONS; i++) {
		struct region *r = &S.reg[c * CHUNK_REGIONS + i];
		__u64 pattern = stress_rand(&w->rng);

		for (p = 0; p < REGION_PAGES; p++) {
			make_page(r, p, r->hva + p * PAGE_SZ, pattern, 0);
			set_page(r, p, pattern, 0);
			r->pg[p].host_ro = 0;
		}
	}
}

/*
 * Pages [a, b) of @r have no host mapping: a guest read of the first one
 * must exit with a memory fault, before any access.
 */
static int expect_hole(struct worker *w, struct region *r, unsigned int a, unsigned int b)
{
	struct secmmu_run run;
	int ret;

	if (SLOT_OF(r) == SLOT_NONE)
		return 0;
	ret = run_range(w->vcpu, SECMMU_RUN_READ, page_gpa(r, a), page_gpa(r, b),
			PROBE, 0, &run);
	if (ret != -EFAULT || run.exit_reason != SECMMU_EXIT_MEMORY_FAULT ||
	    run.exit_gpa != page_gpa(r, a) || run.accesses) {
		fail("RUN READ of unmapped %#lx (region %d): %s, exit %u at %#llx, %llu",
		     page_gpa(r, a), r->idx, ret ? strerror(-ret) : "success",
		     run.exit_reason, (unsigned long long)run.exit_gpa,
		     (unsigned long long)run.accesses);
		return -1;
	}
	count(&S.memfaults);
	return snap_check(r, a, b, 1, "unmapping");
}

/* munmap and mmap again (or mmap over): new zero pages, read-write. */
static void op_remap(struct worker *w, struct region *r, unsigned int a, unsigned int b)
{
	char *addr = r->hva + a * PAGE_SZ;
	size_t len = (b - a) * PAGE_SZ;
	unsigned int p;

	if (stress_below(&w->rng, 2)) {
		if (munmap(addr, len)) {
			fail("munmap: %s", strerror(errno));
			return;
		}
		if (expect_hole(w, r, a, b))
			return;
	}
	if (mmap(addr, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != addr) {
		fail("mmap MAP_FIXED: %s", strerror(errno));
		return;
	}
	for (p = a; p < b; p++) {
		set_page(r, p, 0, 1);
		r->pg[p].host_ro = 0;
	}
}

/* The end of the mapping (VMA) that holds @addr, from /proc/self/maps. */
static unsigned long vma_end(unsigned long addr)
{
	FILE *f = fopen("/proc/self/maps", "re");
	unsigned long start, end, found = 0;
	char line[512];

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx", &start, &end) == 2 &&
		    start <= addr && addr < end) {
			found = end;
			break;
		}
	}
	fclose(f);
	return found;
}

/*
 * mremap pages [a, b) (within one mapping) away, check that the guest
 * cannot see them, and move them back: the data comes back with them.
 */
static void op_mremap(struct worker *w, struct region *r, unsigned int a, unsigned int b)
{
	unsigned long addr = (unsigned long)r->hva + a * PAGE_SZ;
	unsigned long end = vma_end(addr);
	char *tmp = r->tmp + a * PAGE_SZ;
	size_t len;

	if (!end) {
		fail("no mapping at %#lx in /proc/self/maps", addr);
		return;
	}
	if (end < addr + (b - a) * PAGE_SZ)
		b = a + (end - addr) / PAGE_SZ;
	len = (b - a) * PAGE_SZ;
	if (mremap((void *)addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, tmp) != tmp) {
		fail("mremap away [%#lx, +%#zx): %s", addr, len, strerror(errno));
		return;
	}
	if (expect_hole(w, r, a, b))
		return;
	if (mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)addr) !=
	    (void *)addr) {
		fail("mremap back [%#lx, +%#zx): %s", addr, len, strerror(errno));
		return;
	}
	/* Keep the place reserved. */
	if (mmap(tmp, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
		 MAP_NORESERVE, -1, 0) != tmp)
		fail("mmap PROT_NONE: %s", strerror(errno));
}

static void op_mergeable(struct region *r)
{
	if (!S.ksm)
		return;
	if (madvise(r->hva, REGION_SZ, MADV_MERGEABLE))
		fail("MADV_MERGEABLE: %s", strerror(errno));
}

/*
 * vCPUs are created and closed under vcpu_lock, which counts the live
 * ones: their ids are recycled on close, and at SECMMU_MAX_VCPUS live
 * CREATE_VCPU must refuse with ENOSPC (op_vcpus_full). op_fork holds it
 * while its child holds references to the fds.
 */
static int new_vcpu(struct worker *w)
{
	unsigned int root = stress_below(&w->rng, NR_ROOTS);
	int vcpu;

	pthread_mutex_lock(&S.vcpu_lock);
	vcpu = vcpu_create(S.fd, root);
	if (vcpu >= 0)
		S.nr_vcpus++;
	pthread_mutex_unlock(&S.vcpu_lock);
	if (vcpu < 0)
		fail("CREATE_VCPU (%u live): %s", S.nr_vcpus, strerror(-vcpu));
	return vcpu;
}

/* Closes a vCPU new_vcpu() made: its id is free again. */
static void close_vcpu(int vcpu)
{
	pthread_mutex_lock(&S.vcpu_lock);
	close(vcpu);
	S.nr_vcpus--;
	pthread_mutex_unlock(&S.vcpu_lock);
}

/* Close the vCPU and use a new one. */
static void op_vcpu(struct worker *w)
{
	int vcpu = new_vcpu(w);

	if (vcpu < 0)
		return;
	close_vcpu(w->vcpu);
	w->vcpu = vcpu;
}

/*
 * Create vCPUs up to SECMMU_MAX_VCPUS live: one more gets ENOSPC; close
 * one and its id is free again. Then close them all.
 */
static void op_vcpus_full(struct worker *w)
{
	int fds[SECMMU_MAX_VCPUS], n = 0, ret, i;

	pthread_mutex_lock(&S.vcpu_lock);
	while (S.nr_vcpus + n < SECMMU_MAX_VCPUS) {
		fds[n] = vcpu_create(S.fd, stress_below(&w->rng, NR_ROOTS));
		if (fds[n] < 0) {
			fail("CREATE_VCPU %u of %u: %s", S.nr_vcpus + n + 1, SECMMU_MAX_VCPUS,
			     strerror(-fds[n]));
			goto out;
		}
		n++;
	}
	ret = vcpu_create(S.fd, 0);
	if (ret != -ENOSPC) {
		fail("CREATE_VCPU beyond %u live vCPUs: %s", SECMMU_MAX_VCPUS,
		     ret < 0 ? strerror(-ret) : "success");
		if (ret >= 0)
			close(ret);
		goto out;
	}
	if (n) {
		i = stress_below(&w->rng, n);
		close(fds[i]);
		fds[i] = vcpu_create(S.fd, NR_ROOTS - 1);
		if (fds[i] < 0) {
			fail("CREATE_VCPU after a close at the limit: %s", strerror(-fds[i]));
			fds[i] = fds[--n];
		}
	}
out:
	for (i = 0; i < n; i++)
		close(fds[i]);
	pthread_mutex_unlock(&S.vcpu_lock);
}

/*
 * Unlocked: RUN READ or ACCESS read over a random range of the whole
 * memory (and a page past it): every access succeeds or exits with a
 * memory fault, the model may be changing under it.
 */
static void op_read(struct worker *w)
{
	static const unsigned long strides[] = { PROBE, PAGE_SZ, 3 * PAGE_SZ + 8, 8 };
	unsigned long len = PAGE_SZ * (1 + stress_below(&w->rng, REGION_PAGES));
	unsigned long gpa = GPA_BASE + PAGE_SZ *
			    stress_below(&w->rng, MEM_SZ / PAGE_SZ + 1 - len / PAGE_SZ + 1);
	unsigned long end = gpa + len;
	struct secmmu_access acc;
	struct secmmu_run run;
	int ret;

	if (stress_below(&w->rng, 2)) {
		unsigned long stride = strides[stress_below(&w->rng, 4)];

		if (stride == 8)
			end = gpa + PAGE_SZ;
		while (gpa < end) {
			ret = run_range(w->vcpu, SECMMU_RUN_READ, gpa, end, stride, 0, &run);
			if (!ret)
				return;
			if (ret == -EINTR && run.exit_reason == SECMMU_EXIT_SIGNAL) {
				gpa = run.exit_gpa;
				continue;
			}
			if (ret != -EFAULT || run.exit_reason != SECMMU_EXIT_MEMORY_FAULT ||
			    run.exit_gpa < gpa || run.exit_gpa >= end) {
				fail("unlocked RUN READ [%#lx, %#lx): %s, exit %u at %#llx",
				     gpa, end, strerror(-ret), run.exit_reason,
				     (unsigned long long)run.exit_gpa);
				return;
			}
			count(&S.memfaults);
			gpa = (run.exit_gpa | (PAGE_SZ - 1)) + 1;
		}
		return;
	}
	while (gpa < end) {
		memset(&acc, 0, sizeof(acc));
		acc.gpa = gpa;
		acc.len = end - gpa;
		acc.buf = (unsigned long)w->buf;
		ret = secmmu_ioctl(w->vcpu, SECMMU_ACCESS, &acc);
		if (!ret)
			return;
		if (ret != -EFAULT || acc.exit_gpa < gpa || acc.exit_gpa >= end ||
		    acc.exit_gpa & (PAGE_SZ - 1) || acc.done != acc.exit_gpa - gpa) {
			fail("unlocked ACCESS read [%#lx, %#lx): %s, done %llu exit %#llx",
			     gpa, end, strerror(-ret), (unsigned long long)acc.done,
			     (unsigned long long)acc.exit_gpa);
			return;
		}
		count(&S.memfaults);
		gpa = acc.exit_gpa + PAGE_SZ;
	}
}

/*
 * Unlocked: MADV_PAGEOUT (reclaims MADV_FREE'd pages, among others).
 * ENOMEM: part of the range is unmapped by its owner right now.
 */
static void op_pageout(struct worker *w)
{
	struct region *r = &S.reg[stress_below(&w->rng, NR_REGIONS)];
	unsigned int a, b;

	pick_range(w, &a, &b);
	if (madvise(r->hva + a * PAGE_SZ, (b - a) * PAGE_SZ, MADV_PAGEOUT)) {
		if (errno == ENOMEM) {
			count(&S.tolerated);
			return;
		}
		if (errno == EINVAL)
			return;
		fail("MADV_PAGEOUT: %s", strerror(errno));
	}
}

/* Whether move_pages() works here (a query of one page's node). */
static int numa_probe(void)
{
	void *page = S.mem;
	int status = -1;

	return !syscall(__NR_move_pages, 0, 1, &page, NULL, &status, 0) && status >= 0;
}

/* Unlocked: move_pages of a random page range to random nodes. */
static void op_move(struct worker *w)
{
	struct region *r = &S.reg[stress_below(&w->rng, NR_REGIONS)];
	void *pages[REGION_PAGES];
	int nodes[REGION_PAGES], status[REGION_PAGES];
	unsigned int a, b, p;
	long ret;

	if (!S.numa)
		return;
	pick_range(w, &a, &b);
	for (p = a; p < b; p++) {
		pages[p - a] = r->hva + p * PAGE_SZ;
		nodes[p - a] = stress_below(&w->rng, 2);
	}
	ret = syscall(__NR_move_pages, 0, b - a, pages, nodes, status, MPOL_MF_MOVE);
	if (ret < 0 && errno == ENODEV) {
		S.numa = 0;	/* one node */
		return;
	}
	if (ret < 0 && errno != ENOENT)
		fail("move_pages: %s", strerror(errno));
}

/*
 * Unlocked: page_idle aging of a random range (marking its pages idle asks
 * every MMU to clear the accessed state, reading the bitmap to test it),
 * and SECMMU_TEST_YOUNG.
 */
static void op_idle(struct worker *w)
{
	struct region *r = &S.reg[stress_below(&w->rng, NR_REGIONS)];
	__u64 ent[REGION_PAGES], bits;
	unsigned int a, b, p;
	int ret;

	pick_range(w, &a, &b);
	ret = test_young(S.fd, r->hva + a * PAGE_SZ);
	if (ret < 0) {
		fail("TEST_YOUNG: %s", strerror(-ret));
		return;
	}
	if (S.bitmap < 0 || S.pagemap < 0)
		return;
	if (pread(S.pagemap, ent, (b - a) * 8, (uintptr_t)(r->hva + a * PAGE_SZ) / PAGE_SZ * 8) !=
	    (ssize_t)((b - a) * 8)) {
		fail("pagemap: %s", strerror(errno));
		return;
	}
	for (p = 0; p < b - a; p++) {
		__u64 pfn = ent[p] & ((1ULL << 55) - 1);

		if (!(ent[p] & (1ULL << 63)))
			continue;
		bits = 1ULL << (pfn % 64);
		if (pwrite(S.bitmap, &bits, 8, pfn / 64 * 8) != 8 && errno != ENXIO) {
			fail("page_idle write: %s", strerror(errno));
			return;
		}
	}
	for (p = 0; p < b - a; p++) {
		__u64 pfn = ent[p] & ((1ULL << 55) - 1);

		if (!(ent[p] & (1ULL << 63)))
			continue;
		if (pread(S.bitmap, &bits, 8, pfn / 64 * 8) < 0 && errno != ENXIO) {
			fail("page_idle read: %s", strerror(errno));
			return;
		}
	}
}

/* Unlocked: a forked child gets EIO from the space and the vCPU, and exits. */
static void op_fork(struct worker *w)
{
	int status;
	pid_t pid;

	pthread_mutex_lock(&S.vcpu_lock);
	pid = fork();
	if (pid < 0) {
		pthread_mutex_unlock(&S.vcpu_lock);
		fail("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		struct secmmu_stats st;
		struct secmmu_run run = {
			.op = SECMMU_RUN_READ, .start = GPA_BASE,
			.end = GPA_BASE + PAGE_SZ, .stride = 8, .passes = 1,
		};
		int bad = 0;

		if (ioctl(S.fd, SECMMU_GET_STATS, &st) != -1 || errno != EIO)
			bad |= 1;
		if (ioctl(w->vcpu, SECMMU_RUN, &run) != -1 || errno != EIO)
			bad |= 2;
		_exit(bad);
	}
	/* Its exit dropped its references to our files before waitpid returns. */
	if (waitpid(pid, &status, 0) != pid)
		status = -1;
	pthread_mutex_unlock(&S.vcpu_lock);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail("forked child: status %#x (1: space not EIO, 2: vCPU not EIO)",
		     status);
}

/* In the child of op_child(): its own space, RUN until killed or exit. */
struct child_runner {
	int vcpu;
	unsigned int op;
	char *mem;
};

static void *child_thread(void *arg)
{
	struct child_runner *c = arg;

	for (;;) {
		struct secmmu_run run;
		int ret = run_range(c->vcpu, c->op, GPA_BASE, GPA_BASE + CHILD_SZ,
				    PAGE_SZ, 7, &run);

		if (ret && !(ret == -EFAULT && run.exit_reason == SECMMU_EXIT_MEMORY_FAULT))
			_exit(20);
	}
	return NULL;
}

static int child_main(unsigned int format, unsigned int exit_us)
{
	struct child_runner c[2];
	pthread_t t;
	__u64 end;
	char *mem;
	int fd, i;

	fd = space_create(format, 2, 0);
	if (fd < 0)
		return 10;
	mem = mmap(NULL, CHILD_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || set_slot(fd, 0, 0, GPA_BASE, CHILD_SZ, mem))
		return 11;
	for (i = 0; i < 2; i++) {
		c[i].vcpu = vcpu_create(fd, i);
		c[i].op = i ? SECMMU_RUN_READ : SECMMU_RUN_WRITE;
		c[i].mem = mem;
		if (c[i].vcpu < 0 || pthread_create(&t, NULL, child_thread, &c[i]))
			return 12;
	}
	/* Zap under the runners until the time is up (or the parent kills us). */
	end = stress_now_ns() + (exit_us ? exit_us : 30000000ULL) * 1000ULL;
	while (stress_now_ns() < end) {
		madvise(mem, CHILD_SZ / 2, MADV_DONTNEED);
		usleep(500);
	}
	/* exit_group() while both threads are in RUN. */
	return 0;
}

/* SECMMU_STRESS_CHILD=format,exit_us: op_child()'s child, after exec. */
static void __attribute__((constructor)) stress_child(void)
{
	const char *e = getenv("SECMMU_STRESS_CHILD");
	unsigned int format, exit_us;

	if (!e || sscanf(e, "%u,%u", &format, &exit_us) != 2)
		return;
	_exit(child_main(format, exit_us));
}

/*
 * Unlocked: a child process creates its own space and runs two vCPUs; it
 * is killed (SIGKILL) or exits by itself while they are in RUN.
 */
static void op_child(struct worker *w)
{
	unsigned int us = 1000 + stress_below(&w->rng, 50000);
	int kill_it = stress_below(&w->rng, 2), status;
	char env[64], *argv[] = { "secmmu_stress", NULL }, *envp[] = { env, NULL };
	pid_t pid;

	snprintf(env, sizeof(env), "SECMMU_STRESS_CHILD=%u,%u", S.format, kill_it ? 0 : us);
	/*
	 * vfork, under vcpu_lock: we go on once the child has closed what it
	 * inherited (a vCPU's id is only recycled once every reference to its
	 * file is gone) and exec'd; until then no vCPU may be closed.
	 */
	pthread_mutex_lock(&S.vcpu_lock);
	pid = vfork();
	if (pid == 0) {
		syscall(__NR_close_range, 3, ~0U, 0);
		execve("/proc/self/exe", argv, envp);
		_exit(99);
	}
	pthread_mutex_unlock(&S.vcpu_lock);
	if (pid < 0) {
		fail("vfork: %s", strerror(errno));
		return;
	}
	if (kill_it) {
		usleep(us);
		kill(pid, SIGKILL);
	}
	if (waitpid(pid, &status, 0) != pid) {
		fail("waitpid: %s", strerror(errno));
		return;
	}
	if (WIFSIGNALED(status) ? WTERMSIG(status) != SIGKILL || !kill_it :
	    !WIFEXITED(status) || WEXITSTATUS(status))
		fail("child space: status %#x (10-12: setup, 20: RUN, 99: exec failed)",
		     status);
}

/* Unlocked: SNAPSHOT of a random range of a random root. */
static void op_snapshot(struct worker *w)
{
	static __thread unsigned char snap[MEM_SZ / PAGE_SZ + 1];
	unsigned long n = 1 + stress_below(&w->rng, MEM_SZ / PAGE_SZ);
	unsigned long gpa = GPA_BASE + PAGE_SZ * stress_below(&w->rng, MEM_SZ / PAGE_SZ - n + 2);
	int ret = snapshot(S.fd, stress_below(&w->rng, NR_ROOTS), gpa, n, snap);

	if (ret)
		fail("SNAPSHOT: %s", strerror(-ret));
}

/* Unlocked: a short-lived vCPU, on a random root, reads a little. */
static void op_churn(struct worker *w)
{
	int vcpu = new_vcpu(w);
	struct secmmu_run run;
	unsigned long gpa;
	int ret;

	if (vcpu < 0)
		return;
	gpa = GPA_BASE + PAGE_SZ * stress_below(&w->rng, MEM_SZ / PAGE_SZ);
	ret = run_range(vcpu, SECMMU_RUN_READ, gpa, gpa + 4 * PAGE_SZ, PROBE, 0, &run);
	if (ret && ret != -EINTR &&
	    !(ret == -EFAULT && run.exit_reason == SECMMU_EXIT_MEMORY_FAULT))
		fail("RUN on a new vCPU: %s", strerror(-ret));
	close_vcpu(vcpu);
}

static unsigned int pick_op(struct worker *w)
{
	unsigned int total = 0, i, x;

	for (i = 0; i < NR_OPS; i++)
		total += op_weights[i];
	x = stress_below(&w->rng, total);
	for (i = 0; x >= op_weights[i]; i++)
		x -= op_weights[i];
	return i;
}

/* One operation on a region this worker owns, under its lock. */
static void locked_op(struct worker *w, unsigned int op)
{
	struct region *r = &S.reg[w->id + NR_WORKERS *
				  stress_below(&w->rng, (NR_REGIONS - w->id + NR_WORKERS - 1) /
						   NR_WORKERS)];
	unsigned int a, b;

	if (op == OP_SLOT || op == OP_THP || op == OP_DIRTY) {
		unsigned int c = stress_below(&w->rng, NR_CHUNKS);

		lock_chunk(c);
		if (op == OP_SLOT)
			op_slot(w, c);
		else if (op == OP_THP)
			op_thp(w, c);
		else
			op_dirty(w, c);
		unlock_chunk(c);
		return;
	}
	pick_range(w, &a, &b);
	pthread_mutex_lock(&r->lock);
	switch (op) {
	case OP_RUN_WRITE:
		op_run_write(w, r, a, b);
		break;
	case OP_ACCESS_WRITE:
		op_access_write(w, r, a, b);
		break;
	case OP_HOST_WRITE:
		op_host_write(w, r, a, b);
		break;
	case OP_VERIFY:
		op_verify(w, r, a, b, stress_below(&w->rng, 3));
		break;
	case OP_DONTNEED:
		op_dontneed(r, a, b);
		break;
	case OP_FREE:
		op_free(r, a, b);
		break;
	case OP_MPROTECT:
		op_mprotect(w, r, a, b);
		break;
	case OP_REMAP:
		op_remap(w, r, a, b);
		break;
	case OP_MREMAP:
		op_mremap(w, r, a, b);
		break;
	case OP_MERGEABLE:
		op_mergeable(r);
		break;
	case OP_SNAPCHECK:
		snap_check(r, 0, REGION_PAGES, 0, "nothing");
		break;
	}
	pthread_mutex_unlock(&r->lock);
}

static void *worker_thread(void *arg)
{
	struct worker *w = arg;

	while (!stopped() && stress_now_ns() < S.deadline) {
		unsigned int op = pick_op(w);

		count(&S.ops[op]);
		switch (op) {
		case OP_VCPU:
			op_vcpu(w);
			break;
		case OP_READ:
			op_read(w);
			break;
		case OP_PAGEOUT:
			op_pageout(w);
			break;
		case OP_MOVE:
			op_move(w);
			break;
		case OP_IDLE:
			op_idle(w);
			break;
		case OP_FORK:
			op_fork(w);
			break;
		case OP_CHILD:
			op_child(w);
			break;
		case OP_SNAPSHOT:
			op_snapshot(w);
			break;
		case OP_CHURN:
			op_churn(w);
			break;
		case OP_VCPUS_FULL:
			op_vcpus_full(w);
			break;
		default:
			locked_op(w, op);
		}
	}
	return NULL;
}

static int audit_once(const char *when)
{
	struct secmmu_audit a;
	int ret = stress_audit(S.fd, &a);

	if (ret) {
		fail("SECMMU_AUDIT (%s): %s", when, strerror(-ret));
		return -1;
	}
	__atomic_add_fetch(&S.audits, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&S.audit_leaves, a.leaves, __ATOMIC_RELAXED);
	__atomic_add_fetch(&S.audit_skipped, a.skipped, __ATOMIC_RELAXED);
	if (a.mismatches) {
		fail("SECMMU_AUDIT (%s): %llu of %llu leaves incoherent, first gpa %#llx root %u",
		     when, (unsigned long long)a.mismatches,
		     (unsigned long long)a.leaves, (unsigned long long)a.first_gpa,
		     a.first_root);
		return -1;
	}
	return 0;
}

/* The auditor: SECMMU_AUDIT in a loop, and snapshot checks under the locks. */
static void *auditor_thread(void *arg)
{
	struct stress_rng *rng = arg;

	while (!stopped() && stress_now_ns() < S.deadline) {
		struct region *r = &S.reg[stress_below(rng, NR_REGIONS)];

		if (audit_once("running"))
			break;
		pthread_mutex_lock(&r->lock);
		snap_check(r, 0, REGION_PAGES, 0, "nothing");
		pthread_mutex_unlock(&r->lock);
		usleep(2000);
	}
	return NULL;
}

FIXTURE(stress) {
	char ksm_run[16];
	char ksm_sleep[16];
};

FIXTURE_VARIANT(stress) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(stress, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(stress, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(stress)
{
	self->ksm_run[0] = 0;
	if (!stress_read_file("/sys/kernel/mm/ksm/run", self->ksm_run, sizeof(self->ksm_run)))
		stress_read_file("/sys/kernel/mm/ksm/sleep_millisecs", self->ksm_sleep,
				 sizeof(self->ksm_sleep));
}

FIXTURE_TEARDOWN(stress)
{
	if (self->ksm_run[0]) {
		stress_write_file("/sys/kernel/mm/ksm/sleep_millisecs", self->ksm_sleep);
		stress_write_file("/sys/kernel/mm/ksm/run", self->ksm_run);
	}
}

/* At the end, with every worker stopped: everything as the model says. */
static void final_check(struct worker *w)
{
	int i;

	for (i = 0; i < NR_CHUNKS; i++) {
		if (S.slot[i] == SLOT_RO)
			slot_set(i, SLOT_NONE);
		if (S.slot[i] == SLOT_NONE)
			slot_set(i, SLOT_RW);
	}
	for (i = 0; i < NR_REGIONS && !S.failed; i++) {
		struct region *r = &S.reg[i];
		unsigned int p;

		pthread_mutex_lock(&r->lock);
		if (!mprotect(r->hva, REGION_SZ, PROT_READ | PROT_WRITE))
			for (p = 0; p < REGION_PAGES; p++)
				r->pg[p].host_ro = 0;
		host_check(r, 0, REGION_PAGES);
		for (p = 0; p < 3; p++)
			op_verify(w, r, 0, REGION_PAGES, p);
		guest_run(w, r, SECMMU_RUN_WRITE, 0, REGION_PAGES, 0xf1a1 + i);
		guest_run(w, r, SECMMU_RUN_VERIFY, 0, REGION_PAGES, 0xf1a1 + i);
		host_check(r, 0, REGION_PAGES);
		pthread_mutex_unlock(&r->lock);
	}
	if (!S.failed)
		audit_once("at the end");
}

TEST_F_TIMEOUT(stress, stress_random, 100)
{
	const char *seed_env = getenv("SECMMU_STRESS_SEED");
	struct worker w[NR_WORKERS];
	struct stress_rng arng;
	unsigned long seconds = stress_seconds(), total = 0;
	struct secmmu_stats st;
	pthread_t auditor;
	__u64 t0, next;
	int i;
	unsigned int p;
	char *raw;

	S.format = variant->format;
	S.seed = seed_env ? strtoull(seed_env, NULL, 0) : stress_now_ns() ^ getpid();
	fprintf(stderr, "# seed %llu\n", S.seed);
	fprintf(stderr, "# %s: %lu s, %d workers, %d regions of %lu KiB, %d roots%s%s\n",
		format_name(S.format), seconds, NR_WORKERS, NR_REGIONS, REGION_SZ / 1024,
		NR_ROOTS, S.seed & 1 ? ", eager split" : "",
		S.seed & 2 ? ", dirty bit" : "");

	/*
	 * Half the seeds split huge leaves when a dirty_log op starts
	 * logging, and half track writes by the dirty bit.
	 */
	S.fd = space_create(S.format, NR_ROOTS,
			    (S.seed & 1 ? SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT : 0) |
			    (S.seed & 2 ? SECMMU_CFG_DIRTY_LOG_DIRTY_BIT : 0));
	ASSERT_GE(S.fd, 0) TH_LOG("space: %s", strerror(-S.fd));
	/* 2M-aligned, THP-advised: huge mappings until the ops split them. */
	raw = mmap(NULL, MEM_SZ + SZ_2M, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, raw);
	S.mem = (char *)(((unsigned long)raw + SZ_2M - 1) & ~(SZ_2M - 1));
	madvise(S.mem, MEM_SZ, MADV_HUGEPAGE);
	raw = mmap(NULL, MEM_SZ, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(MAP_FAILED, raw);
	for (i = 0; i < NR_REGIONS; i++) {
		struct region *r = &S.reg[i];
		__u64 pattern = stress_mix(S.seed + 1000 + i);

		pthread_mutex_init(&r->lock, NULL);
		r->idx = i;
		r->hva = S.mem + i * REGION_SZ;
		r->tmp = raw + i * REGION_SZ;
		r->gpa = GPA_BASE + i * REGION_SZ;
		r->chunk = i / CHUNK_REGIONS;
		for (p = 0; p < REGION_PAGES; p++) {
			make_page(r, p, r->hva + p * PAGE_SZ, pattern, 0);
			set_page(r, p, pattern, 0);
		}
	}
	for (i = 0; i < NR_CHUNKS; i++)
		ASSERT_EQ(0, slot_set(i, SLOT_RW));

	S.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	S.bitmap = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR | O_CLOEXEC);
	S.ksm = self->ksm_run[0] && !stress_write_file("/sys/kernel/mm/ksm/run", "1");
	if (S.ksm)
		stress_write_file("/sys/kernel/mm/ksm/sleep_millisecs", "20");
	S.numa = numa_probe();
	S.madv_free = 1;
	fprintf(stderr, "# page_idle %s, KSM %s\n", S.bitmap >= 0 ? "yes" : "no",
		S.ksm ? "yes" : "no");

	t0 = stress_now_ns();
	S.deadline = t0 + seconds * 1000000000ULL;
	for (i = 0; i < NR_WORKERS; i++) {
		w[i].id = i;
		stress_rng_init(&w[i].rng, S.seed + i);
		w[i].buf = malloc(REGION_SZ);
		ASSERT_NE(NULL, w[i].buf);
		w[i].vcpu = vcpu_create(S.fd, i % NR_ROOTS);
		ASSERT_GE(w[i].vcpu, 0);
		S.nr_vcpus++;
		ASSERT_EQ(0, pthread_create(&w[i].thread, NULL, worker_thread, &w[i]));
	}
	stress_rng_init(&arng, S.seed + 999);
	ASSERT_EQ(0, pthread_create(&auditor, NULL, auditor_thread, &arng));
	next = t0 + 10000000000ULL;
	while (!stopped() && stress_now_ns() < S.deadline) {
		usleep(100000);
		if (stress_now_ns() >= next) {
			next += 10000000000ULL;
			for (i = 0, total = 0; i < NR_OPS; i++)
				total += S.ops[i];
			fprintf(stderr, "# %llu s: %lu ops, %lu audits\n",
				(unsigned long long)((stress_now_ns() - t0) / 1000000000ULL),
				total, S.audits);
		}
	}
	for (i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i].thread, NULL);
	pthread_join(auditor, NULL);
	if (!S.failed)
		final_check(&w[0]);

	for (i = 0, total = 0; i < NR_OPS; i++)
		total += S.ops[i];
	fprintf(stderr, "# %lu ops in %llu s:", total,
		(unsigned long long)((stress_now_ns() - t0) / 1000000000ULL));
	for (i = 0; i < NR_OPS; i++)
		fprintf(stderr, " %s %lu", op_names[i], S.ops[i]);
	fprintf(stderr, "\n# %lu memory faults as expected, %lu PAGEOUT/COLLAPSE refused\n",
		S.memfaults, S.tolerated);
	fprintf(stderr, "# %lu audits: %lu leaves checked, %lu skipped\n",
		S.audits, S.audit_leaves, S.audit_skipped);
	st = get_stats(S.fd);
	fprintf(stderr, "# stats: faults %llu retries %llu zapped %llu dirty %llu",
		(unsigned long long)st.faults, (unsigned long long)st.fault_retries,
		(unsigned long long)st.sptes_zapped, (unsigned long long)st.dirty_pages);
	fprintf(stderr, " invalidations %llu splits %llu collapses %llu 2M %llu\n",
		(unsigned long long)st.invalidations, (unsigned long long)st.splits,
		(unsigned long long)st.collapses, (unsigned long long)st.mappings_2m);
	fprintf(stderr, "# leaves mapped around faults %llu, pre-faulted %llu\n",
		(unsigned long long)stat_named(S.fd, SECMMU_GET_STATS_FD, "fault_around"),
		(unsigned long long)stat_named(S.fd, SECMMU_GET_STATS_FD, "pre_faults"));
	for (i = 0; i < NR_WORKERS; i++) {
		close_vcpu(w[i].vcpu);
		free(w[i].buf);
	}
	close(S.fd);
	EXPECT_EQ(0, S.failed) TH_LOG("seed %llu: %s", S.seed, S.why);
}

/*
 * The harness timeout is fixed at build time: a longer run
 * (SECMMU_STRESS_SECONDS, make soak) gets its duration and a margin.
 */
static void __attribute__((constructor(KSELFTEST_PRIO_XFAIL + 1))) stress_timeout(void)
{
	if (getenv("SECMMU_STRESS_SECONDS") && _stress_stress_random_object)
		_stress_stress_random_object->timeout = stress_seconds() + 120;
}

TEST_HARNESS_MAIN
