// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu dirty logging selftests: SECMMU_MEM_LOG_DIRTY_PAGES with the
 * bitmap ioctls SECMMU_GET_DIRTY_LOG and SECMMU_CLEAR_DIRTY_LOG, the ports
 * of KVM's dirty_log_test.c and dirty_log_page_splitting_test.c.
 *
 * The "dirty" fixture: one memslot at GPA_BASE over private memory of one
 * backing (4K pages, THP, or 2M hugetlb pages), in a space of either
 * page-table format, with one vCPU. Every test first writes every page
 * through the vCPU, so the tables hold writable leaves, huge ones where the
 * backing allows, before logging starts: write protection has work to do.
 * The "dirty_api" fixture is the same over 4K pages only, for the tests
 * whose subject is not the backing (the run page, the uAPI's checks).
 *
 * With dirty rings (SECMMU_CONFIGURE's dirty_ring_size), the vCPU logs
 * into its ring, which the tests map and harvest as KVM's
 * dirty_log_test.c does in its ring mode; dirty_ring_full fills it.
 *
 * The round-tagged workload (KVM's dirty_log_test.c): a writer thread
 * writes the round number into random pages through the vCPU while the main
 * thread harvests the log; at the end of each round the writer pauses, the
 * main thread harvests once more and checks every page: a page that holds
 * this round's number must have been reported (nothing written goes
 * unreported), and a page reported must hold it (every bit comes from a
 * write of the round: write protection logs exactly the pages written).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define MPOL_MF_MOVE		2	/* numaif.h */
#define MIGRATE_PAGES		16

/* 1G-aligned, so 2M leaves line up with the backing's huge pages. */
#define GPA_BASE	0x40000000UL
#define ROUNDS		32
#define LOG		SECMMU_MEM_LOG_DIRTY_PAGES
#define MANUAL		SECMMU_CFG_DIRTY_LOG_MANUAL_PROTECT
#define INIT_SET	SECMMU_CFG_DIRTY_LOG_INITIALLY_SET
#define EAGER		SECMMU_CFG_DIRTY_LOG_EAGER_SPLIT
#define DBIT		SECMMU_CFG_DIRTY_LOG_DIRTY_BIT
/* Not a SECMMU_CFG_ flag: the tests' own, for a space with dirty rings. */
#define RING		0x80000000u
/* 1024 entries: soft full at 448, SECMMU_DIRTY_RING_RSVD_ENTRIES short. */
#define RING_BYTES	(16 * 1024)
/* Nor this: an mprotect() storm on the slot's memory during the rounds. */
#define MPROTECT	0x40000000u
#define RING_ENTRIES	(RING_BYTES / sizeof(struct secmmu_dirty_gfn))

enum backing { B_4K, B_THP, B_HUGETLB };

/*
 * Private memory of @size (a multiple of 2M) at a 2M-aligned address, of
 * backing @b, faulted in; NULL if the VM has no such memory.
 */
static char *backing_alloc(enum backing b, unsigned long size)
{
	char *p, *a;

	if (b == B_HUGETLB) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
			 (21 << MAP_HUGE_SHIFT), -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		if (madvise(p, size, MADV_POPULATE_WRITE)) {
			munmap(p, size);
			return NULL;
		}
		return p;
	}
	a = mmap_2m_aligned(size, b == B_THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	if (!a)
		return NULL;
	if (madvise(a, size, MADV_POPULATE_WRITE)) {
		munmap(a, size);
		return NULL;
	}
	if (b == B_THP && anon_huge_kb(a) < (long)(size / 1024)) {
		munmap(a, size);
		return NULL;
	}
	return a;
}

static int get_log(int fd, unsigned int slot, void *bitmap)
{
	struct secmmu_dirty_log log = {
		.slot = slot,
		.bitmap = (uintptr_t)bitmap,
	};

	return secmmu_ioctl(fd, SECMMU_GET_DIRTY_LOG, &log);
}

static int clear_log(int fd, unsigned int slot, unsigned long first,
		     unsigned int num, void *bitmap)
{
	struct secmmu_clear_dirty_log c = {
		.slot = slot,
		.num_pages = num,
		.first_page = first,
		.bitmap = (uintptr_t)bitmap,
	};

	return secmmu_ioctl(fd, SECMMU_CLEAR_DIRTY_LOG, &c);
}

static bool test_bit(const unsigned long *map, unsigned long i)
{
	return map[i / 64] >> (i % 64) & 1;
}

static unsigned long count_set(const unsigned long *map, unsigned long n)
{
	unsigned long i, c = 0;

	for (i = 0; i < n; i++)
		c += test_bit(map, i);
	return c;
}

/* The vCPU writing round numbers into random pages (dirty_log_test's guest). */
struct writer {
	int vcpu;
	unsigned long npages;
	atomic_ulong round;
	atomic_bool pause, paused, stop;
	atomic_ulong writes;
	/* Dirty rings: exits for a full ring, and waiting for a harvest now. */
	atomic_ulong ring_full;
	atomic_bool full;
	/*
	 * A page may be read-only for a while (MPROTECT): retry its write,
	 * unless asked to pause, then drop it. A dropped write's first fault
	 * may have logged the page already (it was logged as the leaf was
	 * made writable, then an invalidation zapped the leaf before the
	 * write): such pages, in @dropped, may be reported unwritten.
	 */
	bool mprotect_race;
	unsigned long *dropped;
	atomic_ulong efaults;
	int err;
	unsigned int seed;
};

static void *writer_fn(void *arg)
{
	struct writer *w = arg;

	while (!atomic_load(&w->stop)) {
		unsigned long page;
		__u64 v;
		int ret;

		if (atomic_load(&w->pause)) {
			atomic_store(&w->paused, true);
			while (atomic_load(&w->pause) && !atomic_load(&w->stop))
				usleep(100);
			atomic_store(&w->paused, false);
			continue;
		}
		page = rand_r(&w->seed) % w->npages;
		v = atomic_load(&w->round);
		for (;;) {
			ret = guest_access(w->vcpu, GPA_BASE + page * PAGE_SZ,
					   &v, sizeof(v), 1);
			if (atomic_load(&w->stop))
				break;
			if (ret == -EAGAIN) {
				/* The ring is full: again once it was harvested. */
				atomic_fetch_add(&w->ring_full, 1);
				atomic_store(&w->full, true);
				usleep(100);
				continue;
			}
			/* Read-only now: again, unless asked to pause. */
			if (ret == -EFAULT && w->mprotect_race &&
			    !atomic_load(&w->pause)) {
				atomic_fetch_add(&w->efaults, 1);
				usleep(20);
				continue;
			}
			break;
		}
		atomic_store(&w->full, false);
		if (ret == -EFAULT && w->mprotect_race) {
			w->dropped[page / 64] |= 1UL << (page % 64);
			continue;
		}
		if (ret) {
			w->err = ret;
			break;
		}
		atomic_fetch_add(&w->writes, 1);
	}
	atomic_store(&w->paused, true);
	return NULL;
}

/* Stops the writer between two writes, and waits until it has. */
static void writer_pause(struct writer *w)
{
	atomic_store(&w->pause, true);
	while (!atomic_load(&w->paused))
		usleep(50);
}

static void writer_resume(struct writer *w)
{
	atomic_store(&w->paused, false);
	atomic_store(&w->pause, false);
}

/* Lets the writer do @n more writes, or run for 2 s, whichever first. */
static void writer_wait(struct writer *w, unsigned long n)
{
	unsigned long goal = atomic_load(&w->writes) + n;
	double end = now_s() + 2;

	while (atomic_load(&w->writes) < goal && now_s() < end && !w->err &&
	       !atomic_load(&w->full))
		usleep(200);
}

/* What the tests of both fixtures share: a space over one slot of memory. */
struct dlog {
	int fd;
	int vcpu;
	char *mem;
	unsigned long size;
	unsigned long npages;
	unsigned long nwords;
	unsigned long *bmap;	/* one harvest (64-bit words) */
	unsigned long *seen;	/* a round's harvests, ORed */
	unsigned long *excused;	/* pages that may be reported unwritten */
	unsigned char *snap;
	struct secmmu_dirty_gfn *ring;	/* the vCPU's dirty ring, mapped */
	unsigned long ring_next;	/* the next entry to collect */
};

static void ring_unmap(struct dlog *d)
{
	if (d->ring)
		munmap(d->ring, RING_BYTES);
	d->ring = NULL;
}

/* Closes the space of a test and its vCPU, for another space. */
static void dlog_close(struct dlog *d)
{
	ring_unmap(d);
	close(d->vcpu);
	close(d->fd);
	d->vcpu = -1;
	d->fd = -1;
}

/* Memory of @backing for a test, and its bitmaps; no space yet. */
static void dlog_setup(struct __test_metadata *_metadata, struct dlog *d,
		       enum backing backing)
{
	/* 8M of 4K pages (a bitmap tail that is not a word: +3 pages), 8M huge. */
	unsigned long size = 8 * SZ_1M;

	d->fd = -1;
	d->vcpu = -1;
	d->excused = NULL;
	d->size = size;
	d->mem = backing_alloc(backing, size);
	if (backing == B_4K && d->mem)
		d->size -= 61 * PAGE_SZ;
	d->npages = d->size / PAGE_SZ;
	d->nwords = (d->npages + 63) / 64;
	d->bmap = calloc(d->nwords, 8);
	d->seen = calloc(d->nwords, 8);
	d->snap = calloc(d->npages, 1);
	ASSERT_NE(NULL, d->bmap);
	ASSERT_NE(NULL, d->seen);
	ASSERT_NE(NULL, d->snap);
}

static void dlog_teardown(struct dlog *d, enum backing backing)
{
	ring_unmap(d);
	if (d->vcpu >= 0)
		close(d->vcpu);
	if (d->fd >= 0)
		close(d->fd);
	if (d->mem)
		munmap(d->mem, backing == B_4K ?
		       d->size + 61 * PAGE_SZ : d->size);
	free(d->bmap);
	free(d->seen);
	free(d->snap);
}

FIXTURE(dirty) {
	struct dlog d;
};

FIXTURE_VARIANT(dirty) {
	unsigned int format;
	enum backing backing;
};

FIXTURE_VARIANT_ADD(dirty, x86_4k) { SECMMU_FMT_X86_EPT4, B_4K };
FIXTURE_VARIANT_ADD(dirty, x86_thp) { SECMMU_FMT_X86_EPT4, B_THP };
FIXTURE_VARIANT_ADD(dirty, x86_hugetlb) { SECMMU_FMT_X86_EPT4, B_HUGETLB };
FIXTURE_VARIANT_ADD(dirty, arm64_4k) { SECMMU_FMT_ARM64_S2, B_4K };
FIXTURE_VARIANT_ADD(dirty, arm64_thp) { SECMMU_FMT_ARM64_S2, B_THP };
FIXTURE_VARIANT_ADD(dirty, arm64_hugetlb) { SECMMU_FMT_ARM64_S2, B_HUGETLB };

FIXTURE_SETUP(dirty)
{
	dlog_setup(_metadata, &self->d, variant->backing);
}

FIXTURE_TEARDOWN(dirty)
{
	dlog_teardown(&self->d, variant->backing);
}

/* The tests one backing is enough for: 4K pages, per format. */
FIXTURE(dirty_api) {
	struct dlog d;
};

FIXTURE_VARIANT(dirty_api) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(dirty_api, x86) { SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(dirty_api, arm64) { SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(dirty_api)
{
	dlog_setup(_metadata, &self->d, B_4K);
}

FIXTURE_TEARDOWN(dirty_api)
{
	dlog_teardown(&self->d, B_4K);
}

/* Maps the dirty ring of @d's vCPU: 0 or -errno. */
static int ring_map(struct dlog *d)
{
	void *p = mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED,
		       d->vcpu, SECMMU_DIRTY_LOG_PAGE_OFFSET * PAGE_SZ);

	if (p == MAP_FAILED)
		return -errno;
	d->ring = p;
	d->ring_next = 0;
	return 0;
}

/*
 * The space of a test: configured with @cfg_flags (RING: with dirty rings,
 * the vCPU's mapped), slot 0 over the memory (not logging yet), one vCPU,
 * every page written through it (the value written is its gpa, never a
 * round number). 0 or -errno.
 */
static int dirty_space(struct dlog *d, unsigned int format,
		       unsigned int cfg_flags)
{
	struct secmmu_config cfg = {
		.flags = cfg_flags & ~RING,
		.format = format,
		.nr_roots = 1,
		.dirty_ring_size = cfg_flags & RING ? RING_BYTES : 0,
	};
	int ret;

	d->fd = space_create_cfg(&cfg);
	if (d->fd < 0)
		return d->fd;
	ret = set_slot(d->fd, 0, 0, GPA_BASE, d->size, d->mem);
	if (ret)
		return ret;
	d->vcpu = vcpu_create(d->fd, 0);
	if (d->vcpu < 0)
		return d->vcpu;
	if (cfg_flags & RING) {
		ret = ring_map(d);
		if (ret)
			return ret;
	}
	return run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			 GPA_BASE + d->size, PAGE_SZ, 0, NULL);
}

/* Collects the ring's dirty entries from where the last collection stopped. */
static long ring_collect(struct dlog *d)
{
	return dirty_ring_collect(d->ring, RING_ENTRIES, &d->ring_next, 0,
				  d->bmap, d->npages);
}

static unsigned long snap_count(struct dlog *d, unsigned int bits,
				int level)
{
	unsigned long i, n = 0;

	for (i = 0; i < d->npages; i++) {
		unsigned char b = d->snap[i];

		if ((b & bits) == bits &&
		    (level < 0 || (int)SECMMU_SNAP_LEVEL(b) == level))
			n++;
	}
	return n;
}

static int take_snapshot(struct dlog *d)
{
	return snapshot(d->fd, 0, GPA_BASE, d->npages, d->snap);
}

/*
 * One harvest into @d->bmap, ORed into @d->seen: SECMMU_GET_DIRTY_LOG,
 * and with manual protection SECMMU_CLEAR_DIRTY_LOG of what it returned, in
 * two pieces (a first half of whole words, then the rest up to the slot's
 * end, whose last word is partial for the 4K backing).
 */
static int harvest(struct dlog *d, bool manual)
{
	unsigned long half = (d->npages / 2) & ~63UL, i;
	int ret;

	if (d->ring) {
		/* Collect, then reset: it frees exactly what was collected. */
		long n, freed;

		memset(d->bmap, 0, d->nwords * 8);
		n = ring_collect(d);
		if (n < 0)
			return n;
		freed = dirty_ring_reset(d->fd);
		if (freed < 0)
			return freed;
		if (freed != n)
			return -EPROTO;
		for (i = 0; i < d->nwords; i++)
			d->seen[i] |= d->bmap[i];
		return 0;
	}
	memset(d->bmap, 0xa5, d->nwords * 8);
	ret = get_log(d->fd, 0, d->bmap);
	if (ret)
		return ret;
	/* Bits past the slot's end are zero. */
	if (d->npages % 64 &&
	    d->bmap[d->nwords - 1] >> (d->npages % 64))
		return -EPROTO;
	if (manual) {
		ret = clear_log(d->fd, 0, 0, half, d->bmap);
		if (!ret)
			ret = clear_log(d->fd, 0, half, d->npages - half,
					d->bmap + half / 64);
		if (ret)
			return ret;
	}
	for (i = 0; i < d->nwords; i++)
		d->seen[i] |= d->bmap[i];
	return 0;
}

/*
 * The check of round @r: every page holding @r was reported; unless @any,
 * every page reported holds @r. Returns the pages reported.
 */
static unsigned long verify_round(struct __test_metadata *_metadata,
				  struct dlog *d, unsigned long r,
				  bool any)
{
	unsigned long page, reported = 0;

	for (page = 0; page < d->npages; page++) {
		/* The writer is paused: nothing changes the page meanwhile. */
		unsigned long val = *(__u64 *)(d->mem + page * PAGE_SZ);
		bool dirty = test_bit(d->seen, page);

		reported += dirty;
		if (val == r && !dirty) {
			TH_LOG("round %lu: page %lu written, not reported", r, page);
			ASSERT_TRUE(dirty);
		}
		if (dirty && !any && val != r &&
		    !(d->excused && test_bit(d->excused, page))) {
			TH_LOG("round %lu: page %lu reported, holds %#lx", r,
			       page, (unsigned long)val);
			ASSERT_EQ(r, val);
		}
	}
	return reported;
}

/*
 * The mprotect() storm of MPROTECT: a chunk of the slot's memory at a time
 * (16 pages, or a 2M hugetlb page) made read-only, then writable again, so
 * the primary MMU invalidates (and splits THPs) under the vCPU and the
 * harvests; the content stays.
 */
struct mprotector {
	char *mem;
	unsigned long size, chunk;
	atomic_bool stop;
	atomic_ulong flips;
	unsigned int seed;
	int err;
};

static void *mprotect_fn(void *arg)
{
	struct mprotector *m = arg;

	while (!atomic_load(&m->stop)) {
		char *p = m->mem + rand_r(&m->seed) % (m->size / m->chunk) * m->chunk;

		if (mprotect(p, m->chunk, PROT_READ)) {
			m->err = -errno;
			break;
		}
		usleep(50);
		if (mprotect(p, m->chunk, PROT_READ | PROT_WRITE)) {
			m->err = -errno;
			break;
		}
		atomic_fetch_add(&m->flips, 1);
		usleep(100);
	}
	return NULL;
}

/*
 * Pauses the writer as writer_pause() does; with a ring, harvests into
 * @d->seen while the writer waits for room, so that it finishes its write.
 */
static int writer_pause_harvest(struct writer *w, struct dlog *d)
{
	atomic_store(&w->pause, true);
	while (!atomic_load(&w->paused)) {
		if (d->ring && atomic_load(&w->full)) {
			int ret = harvest(d, false);

			if (ret)
				return ret;
		}
		usleep(50);
	}
	return 0;
}

/*
 * The round-tagged workload of dirty_log_test.c for one mode: @cfg_flags
 * chooses manual protection and INITIALLY_SET. Returns after checking all
 * ROUNDS rounds and the coherence auditor.
 */
static void dirty_log_rounds(struct __test_metadata *_metadata,
			     struct dlog *d,
			     const struct _fixture_variant_dirty *variant,
			     unsigned int cfg_flags)
{
	bool manual = cfg_flags & MANUAL, init_set = cfg_flags & INIT_SET;
	unsigned long r, total = 0, huge_before;
	struct writer w = { .seed = 42, .mprotect_race = cfg_flags & MPROTECT };
	struct mprotector m = { .mem = d->mem, .size = d->size, .seed = 3 };
	struct secmmu_audit a;
	pthread_t t, mt;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, cfg_flags & ~MPROTECT));
	ASSERT_EQ(0, take_snapshot(d));
	huge_before = d->npages - snap_count(d, SECMMU_SNAP_PRESENT, 0);
	if (variant->backing != B_4K && !huge_before)
		TH_LOG("no huge leaf before logging started");

	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	ASSERT_EQ(0, take_snapshot(d));
	/*
	 * Clean at once, huge leaves too: write-protected, or by the dirty
	 * bit no leaf both writable and dirty (stage-2 counts W as dirty).
	 * INITIALLY_SET cleans nothing.
	 */
	if (!init_set)
		ASSERT_EQ(0, snap_count(d, SECMMU_SNAP_WRITABLE |
					(cfg_flags & DBIT ? SECMMU_SNAP_DIRTY : 0), -1));

	w.vcpu = d->vcpu;
	w.npages = d->npages;
	atomic_store(&w.pause, true);
	ASSERT_EQ(0, pthread_create(&t, NULL, writer_fn, &w));
	writer_pause(&w);
	if (cfg_flags & MPROTECT) {
		w.dropped = calloc(d->nwords, 8);
		ASSERT_NE(NULL, w.dropped);
		d->excused = w.dropped;
		m.chunk = variant->backing == B_HUGETLB ? SZ_2M : 16 * PAGE_SZ;
		ASSERT_EQ(0, pthread_create(&mt, NULL, mprotect_fn, &m));
	}
	for (r = 1; r <= ROUNDS; r++) {
		memset(d->seen, 0, d->nwords * 8);
		if (w.dropped)
			memset(w.dropped, 0, d->nwords * 8);
		atomic_store(&w.round, r);
		writer_resume(&w);
		/* With a ring, long enough to fill it: the writer waits for this. */
		writer_wait(&w, d->npages / (cfg_flags & RING ? 2 : 8));
		/* Harvest while the vCPU writes, then once more after it stopped. */
		ASSERT_EQ(0, harvest(d, manual));
		writer_wait(&w, 16);
		ASSERT_EQ(0, writer_pause_harvest(&w, d));
		ASSERT_EQ(0, w.err);
		ASSERT_EQ(0, harvest(d, manual));
		if (init_set && r == 1) {
			/* Every page dirty: the bitmap started full. */
			ASSERT_EQ(d->npages, verify_round(_metadata, d, r, true));
			continue;
		}
		total += verify_round(_metadata, d, r, false);
	}
	atomic_store(&w.stop, true);
	pthread_join(t, NULL);
	if (cfg_flags & MPROTECT) {
		atomic_store(&m.stop, true);
		pthread_join(mt, NULL);
		ASSERT_EQ(0, m.err);
		TH_LOG("%lu mprotect() flips, %lu writes retried on a memory fault",
		       (unsigned long)atomic_load(&m.flips),
		       (unsigned long)atomic_load(&w.efaults));
		ASSERT_LT(0, atomic_load(&m.flips));
		d->excused = NULL;
		free(w.dropped);
	}
	ASSERT_EQ(0, w.err);
	TH_LOG("%s %s%s%s: %lu pages, %lu writes, %lu reported dirty in %d rounds, %lu ring-full",
	       format_name(variant->format),
	       cfg_flags & RING ? "ring" : manual ?
	       (init_set ? "clear-log initially-set" : "clear-log") :
	       "bitmap", cfg_flags & EAGER ? " eager" : "",
	       cfg_flags & DBIT ? " dirty-bit" : "", d->npages,
	       (unsigned long)atomic_load(&w.writes), total, ROUNDS,
	       (unsigned long)atomic_load(&w.ring_full));
	ASSERT_LT(0, total);
	/* Every leaf is 4K while the slot logs. */
	ASSERT_EQ(0, take_snapshot(d));
	EXPECT_EQ(snap_count(d, SECMMU_SNAP_PRESENT, -1),
		  snap_count(d, SECMMU_SNAP_PRESENT, 0));
	if (!audit_space(d->fd, &a))
		EXPECT_EQ(0, a.mismatches);
}

/* GET_DIRTY_LOG takes the bits and write-protects their pages. */
TEST_F_TIMEOUT(dirty, dirty_log_bitmap, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, 0);
}

/* GET_DIRTY_LOG copies; CLEAR_DIRTY_LOG clears and write-protects. */
TEST_F_TIMEOUT(dirty, dirty_log_clear, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, MANUAL);
}

/* Logging starts with every page dirty and nothing write-protected. */
TEST_F_TIMEOUT(dirty, dirty_log_initially_set, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, MANUAL | INIT_SET);
}

/* Each vCPU logs into its dirty ring; a reset write-protects again. */
TEST_F_TIMEOUT(dirty, dirty_log_ring, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, RING);
}

/*
 * The rounds with the primary MMU invalidating under them: an mprotect()
 * storm on the slot's memory, racing the vCPU's faults and writes, the
 * harvests and (with a ring) the resets; nothing written goes unreported.
 */
TEST_F_TIMEOUT(dirty, dirty_log_mprotect_race, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, MPROTECT);
}

TEST_F_TIMEOUT(dirty, dirty_log_ring_mprotect_race, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, RING | MPROTECT);
}

/* The same by the dirty bit: the page-modification log flushes to the ring. */
TEST_F_TIMEOUT(dirty, dirty_log_ring_dirty_bit, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, RING | DBIT);
}

/* The same by the dirty bit: the vCPU's page-modification log reports. */
TEST_F_TIMEOUT(dirty, dirty_log_dirty_bit, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, DBIT);
}

TEST_F_TIMEOUT(dirty, dirty_log_dirty_bit_clear, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, MANUAL | DBIT | EAGER);
}

/*
 * Write faults of a pass over every page after logging started, and after
 * a harvest, by the dirty bit against write protection (the target of KVM's
 * PML: none against one per page). With eager splitting, so that huge
 * leaves are split into writable pieces before they are cleaned: the dirty
 * bit takes no fault on any backing. Every page is reported both times.
 */
TEST_F_TIMEOUT(dirty, dirty_log_dirty_bit_no_faults, 300)
{
	struct dlog *d = &self->d;
	unsigned long faults[2][2];
	int mode, pass;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	for (mode = 0; mode < 2; mode++) {
		ASSERT_EQ(0, dirty_space(d, variant->format,
					 EAGER | (mode ? DBIT : 0)));
		ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
		for (pass = 0; pass < 2; pass++) {
			__u64 before = get_stats(d->fd).faults;

			ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
					       GPA_BASE + d->size, PAGE_SZ,
					       pass + 1, NULL));
			faults[mode][pass] = get_stats(d->fd).faults - before;
			ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
			EXPECT_EQ(d->npages, count_set(d->bmap, d->npages));
		}
		dlog_close(d);
	}
	TH_LOG("%s: faults per pass, write protection %lu, %lu; dirty bit %lu, %lu (%lu pages)",
	       format_name(variant->format), faults[0][0], faults[0][1],
	       faults[1][0], faults[1][1], d->npages);
	EXPECT_EQ(d->npages, faults[0][1]);
	EXPECT_EQ(0, faults[1][0]);
	EXPECT_EQ(0, faults[1][1]);
}

/*
 * Clearing splits what it clears (eager splitting with INITIALLY_SET),
 * while the vCPU writes: the splits lose no write.
 */
TEST_F_TIMEOUT(dirty, dirty_log_eager_initially_set, 300)
{
	dirty_log_rounds(_metadata, &self->d, variant, MANUAL | INIT_SET | EAGER);
}

/*
 * The port of dirty_log_page_splitting_test.c, counting leaves by level
 * in SECMMU_SNAPSHOT: huge leaves before; once logging starts, none is
 * writable, and with eager splitting (@cfg_flags EAGER) none is huge
 * either: every page is mapped by a 4K leaf at once; after the guest writes
 * every page, every leaf is 4K and writable (without eager splitting, each
 * write fault split what was over it); after logging stops and the guest
 * writes again, huge leaves are back as many as before.
 */
/*
 * Takes a snapshot, and checks the MMU's instant counts of leaves by level
 * (SECMMU_AUDIT's pages_4k/2m/1g, KVM's pages_4k/2m/1g) against it and
 * against the leaves the audit walked: one root, one slot, nothing running.
 * Returns the count of 2M leaves.
 */
static unsigned long check_counts(struct __test_metadata *_metadata,
				  struct dlog *d)
{
	struct secmmu_audit a;

	EXPECT_EQ(0, take_snapshot(d));
	EXPECT_EQ(0, audit_space(d->fd, &a));
	EXPECT_EQ(a.leaves, a.pages_4k + a.pages_2m + a.pages_1g);
	EXPECT_EQ(snap_count(d, SECMMU_SNAP_PRESENT, 0), a.pages_4k);
	EXPECT_EQ(snap_count(d, SECMMU_SNAP_PRESENT, 1), a.pages_2m * 512);
	EXPECT_EQ(0, a.pages_1g);
	return a.pages_2m;
}

static void page_splitting(struct __test_metadata *_metadata,
			   struct dlog *d,
			   const struct _fixture_variant_dirty *variant,
			   unsigned int cfg_flags)
{
	unsigned long huge_2m;

	unsigned long huge_before, huge_after;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, cfg_flags));
	huge_2m = check_counts(_metadata, d);
	huge_before = d->npages - snap_count(d, SECMMU_SNAP_PRESENT, 0);
	if (variant->backing == B_4K)
		ASSERT_EQ(0, huge_before);

	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	/* Eager: no huge leaf left, 4K leaves over the whole slot. */
	EXPECT_EQ(cfg_flags & EAGER ? 0 : huge_2m, check_counts(_metadata, d));
	EXPECT_EQ(0, snap_count(d, SECMMU_SNAP_WRITABLE, -1));
	if (cfg_flags & EAGER)
		EXPECT_EQ(d->npages, snap_count(d, SECMMU_SNAP_PRESENT, 0));
	/* Reads go through the protected leaves, huge or not. */
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_VERIFY, GPA_BASE,
			       GPA_BASE + d->size, PAGE_SZ, 0, NULL));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + d->size, PAGE_SZ, 0, NULL));
	EXPECT_EQ(0, check_counts(_metadata, d));
	EXPECT_EQ(d->npages, snap_count(d, SECMMU_SNAP_PRESENT |
					   SECMMU_SNAP_WRITABLE, 0));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(d->npages, count_set(d->bmap, d->npages));

	ASSERT_EQ(0, set_slot(d->fd, 0, 0, GPA_BASE, d->size, d->mem));
	EXPECT_EQ(-ENOENT, get_log(d->fd, 0, d->bmap));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + d->size, PAGE_SZ, 0, NULL));
	/* The 2M leaves are back. */
	EXPECT_EQ(huge_2m, check_counts(_metadata, d));
	huge_after = d->npages - snap_count(d, SECMMU_SNAP_PRESENT, 0);
	TH_LOG("%s%s: pages in huge leaves: %lu before logging, %lu after",
	       format_name(variant->format),
	       cfg_flags & EAGER ? " eager" : "", huge_before, huge_after);
	EXPECT_EQ(huge_before, huge_after);
}

/* Split on fault: each huge leaf splits on its first write. */
TEST_F_TIMEOUT(dirty, dirty_log_page_splitting, 300)
{
	page_splitting(_metadata, &self->d, variant, 0);
}

/* Eager splitting: starting to log splits every huge leaf. */
TEST_F_TIMEOUT(dirty, dirty_log_eager_split, 300)
{
	page_splitting(_metadata, &self->d, variant, EAGER);
}

/*
 * Eager splitting with INITIALLY_SET: starting splits and protects
 * nothing; each SECMMU_CLEAR_DIRTY_LOG splits and protects what it clears,
 * and no more: after the first half is cleared, its pages are mapped 4K and
 * read-only, and the second half's leaves are as they were.
 */
TEST_F_TIMEOUT(dirty, dirty_log_eager_split_on_clear, 300)
{
	struct dlog *d = &self->d;
	unsigned long half = (d->npages / 2) & ~63UL, huge, huge2, i, n4k, nw;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, MANUAL | INIT_SET | EAGER));
	ASSERT_EQ(0, take_snapshot(d));
	huge = d->npages - snap_count(d, SECMMU_SNAP_PRESENT, 0);
	for (i = half, huge2 = 0; i < d->npages; i++)
		huge2 += SECMMU_SNAP_LEVEL(d->snap[i]) != 0;
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	ASSERT_EQ(0, take_snapshot(d));
	EXPECT_EQ(huge, d->npages - snap_count(d, SECMMU_SNAP_PRESENT, 0));
	EXPECT_EQ(d->npages, snap_count(d, SECMMU_SNAP_WRITABLE, -1));

	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	ASSERT_EQ(d->npages, count_set(d->bmap, d->npages));
	ASSERT_EQ(0, clear_log(d->fd, 0, 0, half, d->bmap));
	ASSERT_EQ(0, take_snapshot(d));
	for (i = n4k = nw = 0; i < half; i++) {
		unsigned char b = d->snap[i];

		n4k += (b & SECMMU_SNAP_PRESENT) && !SECMMU_SNAP_LEVEL(b);
		nw += !!(b & SECMMU_SNAP_WRITABLE);
	}
	EXPECT_EQ(half, n4k);
	EXPECT_EQ(0, nw);
	for (i = half, n4k = 0; i < d->npages; i++)
		n4k += (d->snap[i] & SECMMU_SNAP_PRESENT) &&
		       !SECMMU_SNAP_LEVEL(d->snap[i]);
	/* Huge leaves lie on 2M boundaries, and half is one: none crosses it. */
	EXPECT_EQ(d->npages - half, snap_count(d, SECMMU_SNAP_WRITABLE, -1));
	EXPECT_EQ(d->npages - half - huge2, n4k);

	ASSERT_EQ(0, clear_log(d->fd, 0, half, d->npages - half,
			       d->bmap + half / 64));
	ASSERT_EQ(0, take_snapshot(d));
	EXPECT_EQ(d->npages, snap_count(d, SECMMU_SNAP_PRESENT, 0));
	EXPECT_EQ(0, snap_count(d, SECMMU_SNAP_WRITABLE, -1));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + d->size, PAGE_SZ, 0, NULL));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(d->npages, count_set(d->bmap, d->npages));
}

/*
 * The primary MMU's invalidations of dirty_log_invalidation: MADV_DONTNEED
 * of the first quarter of the memory, mprotect() of the second, a
 * MAP_FIXED replacement of the third (not hugetlb). 0 or -errno.
 */
static int invalidate_quarters(struct dlog *d, enum backing backing)
{
	unsigned long quarter = d->npages / 4 * PAGE_SZ;
	char *p;

	if (madvise(d->mem, quarter, MADV_DONTNEED) ||
	    mprotect(d->mem + quarter, quarter, PROT_READ) ||
	    mprotect(d->mem + quarter, quarter, PROT_READ | PROT_WRITE))
		return -errno;
	if (backing == B_HUGETLB)
		return 0;
	p = mmap(d->mem + 2 * quarter, quarter, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	return p == d->mem + 2 * quarter ? 0 : -EFAULT;
}

/*
 * Invalidations of logged pages lose nothing: pages the guest wrote stay
 * reported through MADV_DONTNEED, mprotect(), a MAP_FIXED replacement of
 * their memory (munmap and mmap) and migration to the other node; the
 * tables stay coherent (the auditor); a deleted slot's log is gone
 * (-ENOENT), and a new slot at the same place starts clean.
 */
TEST_F_TIMEOUT(dirty, dirty_log_invalidation, 300)
{
	struct dlog *d = &self->d;
	unsigned long quarter = d->npages / 4 * PAGE_SZ, page;
	struct secmmu_audit a;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, MANUAL));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	/* The guest writes every other page. */
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + d->size, 2 * PAGE_SZ, 7, NULL));

	ASSERT_EQ(0, invalidate_quarters(d, variant->backing));
	/* Written pages of the last quarter migrate to the other node (with two). */
	if (variant->backing != B_HUGETLB &&
	    !access("/sys/devices/system/node/node1", F_OK)) {
		void *pages[MIGRATE_PAGES];
		int nodes[MIGRATE_PAGES], status[MIGRATE_PAGES], i, moved = 0;

		for (i = 0; i < MIGRATE_PAGES; i++)
			pages[i] = d->mem + 3 * quarter + 2 * i * PAGE_SZ;
		ASSERT_EQ(0, syscall(__NR_move_pages, 0, MIGRATE_PAGES, pages, NULL,
				     status, 0));
		for (i = 0; i < MIGRATE_PAGES; i++)
			nodes[i] = status[i] == 0;
		ASSERT_EQ(0, syscall(__NR_move_pages, 0, MIGRATE_PAGES, pages, nodes,
				     status, MPOL_MF_MOVE));
		for (i = 0; i < MIGRATE_PAGES; i++)
			moved += status[i] == nodes[i];
		TH_LOG("%d of %d pages migrated", moved, MIGRATE_PAGES);
		/* The guest reads what it wrote there, from the new pages. */
		ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_VERIFY, GPA_BASE + 3 * quarter,
				       GPA_BASE + 3 * quarter + 2 * MIGRATE_PAGES * PAGE_SZ,
				       2 * PAGE_SZ, 7, NULL));
	}
	if (!audit_space(d->fd, &a))
		EXPECT_EQ(0, a.mismatches);
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	for (page = 0; page < d->npages; page++)
		if (!(page & 1) && !test_bit(d->bmap, page)) {
			TH_LOG("page %lu written, not reported", page);
			ASSERT_TRUE(test_bit(d->bmap, page));
		}
	EXPECT_EQ((d->npages + 1) / 2, count_set(d->bmap, d->npages));

	/* The guest writes the invalidated memory again: logged. */
	ASSERT_EQ(0, clear_log(d->fd, 0, 0, d->npages, d->bmap));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(0, count_set(d->bmap, d->npages));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + 3 * quarter, PAGE_SZ, 9, NULL));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(3 * quarter / PAGE_SZ, count_set(d->bmap, d->npages));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_VERIFY, GPA_BASE,
			       GPA_BASE + 3 * quarter, PAGE_SZ, 9, NULL));

	/* Deleted while logging: its log goes with it. */
	ASSERT_EQ(0, set_slot(d->fd, 0, 0, GPA_BASE, 0, NULL));
	EXPECT_EQ(-ENOENT, get_log(d->fd, 0, d->bmap));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(0, count_set(d->bmap, d->npages));
	if (!audit_space(d->fd, &a))
		EXPECT_EQ(0, a.mismatches);
}

/*
 * One RUN pass of @op over [start, end) by @stride; with a ring, a ring-full
 * exit is harvested into @d->seen and the pass goes on from where it
 * stopped. 0 or -errno.
 */
static int ring_run(struct dlog *d, unsigned int op, unsigned long start,
		    unsigned long end, unsigned long stride,
		    unsigned long pattern)
{
	struct secmmu_run run;
	int ret;

	for (;;) {
		ret = run_range(d->vcpu, op, start, end, stride, pattern, &run);
		if (ret != -EAGAIN || !d->ring ||
		    run.exit_reason != SECMMU_EXIT_DIRTY_RING_FULL)
			return ret;
		ret = harvest(d, false);
		if (ret)
			return ret;
		start = run.exit_gpa;
	}
}

/*
 * dirty_log_invalidation with a dirty ring: what the guest wrote is in the
 * ring whatever the primary did to the pages since; written again, they
 * are logged again; entries of a slot deleted before they are reset are
 * freed by the reset (which protects those pages of a new slot with the
 * same id, as KVM's does: harmless, they fault once more).
 */
TEST_F_TIMEOUT(dirty, dirty_ring_invalidation, 300)
{
	struct dlog *d = &self->d;
	unsigned long quarter = d->npages / 4 * PAGE_SZ, page;
	struct secmmu_audit a;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, RING));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	memset(d->seen, 0, d->nwords * 8);
	/* The guest writes every other page, filling the ring twice. */
	ASSERT_EQ(0, ring_run(d, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + d->size,
			      2 * PAGE_SZ, 7));

	ASSERT_EQ(0, invalidate_quarters(d, variant->backing));
	if (!audit_space(d->fd, &a))
		EXPECT_EQ(0, a.mismatches);
	ASSERT_EQ(0, harvest(d, false));
	for (page = 0; page < d->npages; page++)
		if (test_bit(d->seen, page) != !(page & 1)) {
			TH_LOG("page %lu: written %d, reported %d", page,
			       !(page & 1), test_bit(d->seen, page));
			ASSERT_EQ(!(page & 1), test_bit(d->seen, page));
		}

	/* Written again, after the resets protected them: logged again. */
	memset(d->seen, 0, d->nwords * 8);
	ASSERT_EQ(0, ring_run(d, SECMMU_RUN_WRITE, GPA_BASE,
			      GPA_BASE + 3 * quarter, PAGE_SZ, 9));
	ASSERT_EQ(0, harvest(d, false));
	EXPECT_EQ(3 * quarter / PAGE_SZ, count_set(d->seen, d->npages));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_VERIFY, GPA_BASE,
			       GPA_BASE + 3 * quarter, PAGE_SZ, 9, NULL));

	/* Deleted with 16 entries not reset, and made again. */
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + 16 * PAGE_SZ, PAGE_SZ, 11, NULL));
	ASSERT_EQ(0, set_slot(d->fd, 0, 0, GPA_BASE, 0, NULL));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	memset(d->seen, 0, d->nwords * 8);
	ASSERT_EQ(0, harvest(d, false));
	EXPECT_EQ(16, count_set(d->seen, d->npages));
	/* Nothing of the new slot is in the ring until the guest writes it. */
	memset(d->seen, 0, d->nwords * 8);
	ASSERT_EQ(0, harvest(d, false));
	EXPECT_EQ(0, count_set(d->seen, d->npages));
	ASSERT_EQ(0, ring_run(d, SECMMU_RUN_WRITE, GPA_BASE,
			      GPA_BASE + 64 * PAGE_SZ, 2 * PAGE_SZ, 13));
	ASSERT_EQ(0, harvest(d, false));
	EXPECT_EQ(32, count_set(d->seen, d->npages));
	if (!audit_space(d->fd, &a))
		EXPECT_EQ(0, a.mismatches);
}

/*
 * Starting and stopping logging while the vCPU writes (the flags-only
 * change racing faults that began under the other flags): nothing fails,
 * and once logging is on for good, rounds check out as in
 * dirty_log_bitmap; the tables stay coherent.
 */
static void toggle_race(struct __test_metadata *_metadata, struct dlog *d,
			const struct _fixture_variant_dirty *variant,
			unsigned int cfg_flags)
{
	struct writer w = { .seed = 7 };
	struct secmmu_audit a;
	unsigned long r;
	pthread_t t;
	int i;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, cfg_flags));
	w.vcpu = d->vcpu;
	w.npages = d->npages;
	atomic_store(&w.round, 1000);
	ASSERT_EQ(0, pthread_create(&t, NULL, writer_fn, &w));
	for (i = 0; i < 40; i++) {
		ASSERT_EQ(0, set_slot(d->fd, 0, i & 1 ? 0 : LOG, GPA_BASE,
				      d->size, d->mem));
		writer_wait(&w, 8);
		if (!(i & 1))
			ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
		ASSERT_EQ(0, w.err);
	}
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	writer_pause(&w);
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	for (r = 1; r <= 4; r++) {
		memset(d->seen, 0, d->nwords * 8);
		atomic_store(&w.round, r);
		writer_resume(&w);
		writer_wait(&w, d->npages / 16);
		ASSERT_EQ(0, harvest(d, false));
		writer_pause(&w);
		ASSERT_EQ(0, harvest(d, false));
		verify_round(_metadata, d, r, false);
	}
	atomic_store(&w.stop, true);
	pthread_join(t, NULL);
	ASSERT_EQ(0, w.err);
	if (!audit_space(d->fd, &a))
		EXPECT_EQ(0, a.mismatches);
}

TEST_F_TIMEOUT(dirty, dirty_log_toggle_race, 300)
{
	toggle_race(_metadata, &self->d, variant, 0);
}

/* The same with eager splitting: each start splits under the writer. */
TEST_F_TIMEOUT(dirty, dirty_log_toggle_race_eager, 300)
{
	toggle_race(_metadata, &self->d, variant, EAGER);
}

struct long_writer {
	int vcpu;
	unsigned int passes;
	atomic_bool started, done;
	int err;
};

static void *long_writer_fn(void *arg)
{
	struct long_writer *lw = arg;
	struct secmmu_run run = {
		.op = SECMMU_RUN_WRITE, .start = GPA_BASE,
		.end = GPA_BASE + 16 * PAGE_SZ, .stride = PAGE_SZ,
		.pattern = 0x5eed, .passes = lw->passes,
	};

	atomic_store(&lw->started, true);
	lw->err = vcpu_run(lw->vcpu, &run);
	atomic_store(&lw->done, true);
	return NULL;
}

/*
 * The TLB flush of a harvest: a vCPU writes 16 pages over and over in one
 * long SECMMU_RUN, which keeps its TLB across guest-mode stretches unless a
 * flush is requested; a harvest in the middle cleans the pages. Every page
 * is written again after it, so the harvest after the run must report all
 * 16: without the flush, the vCPU would go on writing through writable (or
 * dirty) translations it cached before, and nothing would log them. Both
 * ways of tracking writes.
 */
TEST_F_TIMEOUT(dirty_api, dirty_log_tlb_flush, 120)
{
	struct dlog *d = &self->d;
	unsigned int passes = 20000;
	int mode, tries;

	for (mode = 0; mode < 2; mode++) {
		ASSERT_EQ(0, dirty_space(d, variant->format, mode ? DBIT : 0));
		ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
		for (tries = 0; tries < 8; tries++) {
			struct long_writer lw = { .vcpu = d->vcpu, .passes = passes };
			pthread_t t;
			bool spanned;

			ASSERT_EQ(0, pthread_create(&t, NULL, long_writer_fn, &lw));
			while (!atomic_load(&lw.started))
				sched_yield();
			usleep(20000);
			ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
			spanned = !atomic_load(&lw.done);
			pthread_join(t, NULL);
			ASSERT_EQ(0, lw.err);
			ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
			if (!spanned) {
				/* The run ended before the harvest: longer. */
				passes *= 4;
				continue;
			}
			EXPECT_EQ(16, count_set(d->bmap, 16))
				TH_LOG("%s, %s: pages written after a harvest, not reported",
				       format_name(variant->format),
				       mode ? "dirty bit" : "write protection");
			break;
		}
		ASSERT_LT(tries, 8) TH_LOG("no run outlasted a harvest");
		dlog_close(d);
	}
}

struct pass_writer {
	int vcpu;
	unsigned long npages;
	__u64 pattern;
	int err;
	atomic_bool done;
};

static void *pass_writer_fn(void *arg)
{
	struct pass_writer *pw = arg;

	pw->err = run_range(pw->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			    GPA_BASE + pw->npages * PAGE_SZ, PAGE_SZ,
			    pw->pattern, NULL);
	atomic_store(&pw->done, true);
	return NULL;
}

/*
 * By the dirty bit, a harvest reports what vCPUs still running logged: a
 * vCPU writes the pages in order in one SECMMU_RUN, logging each in its
 * page-modification log, which it flushes only every so many accesses; as
 * soon as the host sees page 257 written (just past the start of a
 * guest-mode stretch, with most of it to go), it takes the log, which must
 * report pages 0 to 257. Without the kick that makes running vCPUs flush
 * their logs first, the last of them would sit in the vCPU's log while the
 * stretch lasts: a window of a few hundred accesses, which a round hits
 * now and then, hence many rounds.
 */
TEST_F_TIMEOUT(dirty_api, dirty_log_pml_sync, 120)
{
	struct dlog *d = &self->d;
	const unsigned long seen = 257, n = 1024;
	int round;

	ASSERT_LE(n, d->npages);
	ASSERT_EQ(0, dirty_space(d, variant->format, DBIT));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	for (round = 1; round <= 64; round++) {
		struct pass_writer pw = {
			.vcpu = d->vcpu, .npages = n, .pattern = 0x1000 + round,
		};
		__u64 *word = (__u64 *)(d->mem + seen * PAGE_SZ);
		__u64 want = pw.pattern ^ (GPA_BASE + seen * PAGE_SZ);
		unsigned long i, missing = 0;
		pthread_t t;

		ASSERT_EQ(0, pthread_create(&t, NULL, pass_writer_fn, &pw));
		while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != want &&
		       !atomic_load(&pw.done))
			;
		ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
		pthread_join(t, NULL);
		ASSERT_EQ(0, pw.err);
		for (i = 0; i <= seen; i++)
			missing += !test_bit(d->bmap, i);
		EXPECT_EQ(0, missing)
			TH_LOG("%s, round %d: %lu pages written before page %lu not reported",
			       format_name(variant->format), round, missing, seen);
		/* What the rest of the pass dirtied, for a clean next round. */
		ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	}
}

/*
 * A page the kernel writes through a kernel-mapped guest page cache (the
 * vCPU's run page) takes no fault: it is reported at every harvest while
 * the cache maps it, once more after the cache lost it (an invalidation),
 * and not after that until the cache maps it again.
 */
TEST_F_TIMEOUT(dirty_api, dirty_log_run_page, 120)
{
	struct dlog *d = &self->d;
	struct secmmu_run_page_setup rp = {
		.gpa = GPA_BASE + 5 * PAGE_SZ + 64,
		.flags = SECMMU_RUN_PAGE_ENABLE,
	};
	char b;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, MANUAL));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	ASSERT_EQ(0, secmmu_ioctl(d->vcpu, SECMMU_SET_RUN_PAGE, &rp));
	ASSERT_EQ(0, guest_access(d->vcpu, GPA_BASE, &b, 1, 0));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_TRUE(test_bit(d->bmap, 5));
	EXPECT_EQ(1, count_set(d->bmap, d->npages));
	ASSERT_EQ(0, clear_log(d->fd, 0, 0, d->npages, d->bmap));
	/* Still mapped: reported again, written or not. */
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_TRUE(test_bit(d->bmap, 5));
	ASSERT_EQ(0, clear_log(d->fd, 0, 0, d->npages, d->bmap));
	/* The primary drops the page: the cache goes, reported once more. */
	ASSERT_EQ(0, madvise(d->mem + 5 * PAGE_SZ, PAGE_SZ, MADV_DONTNEED));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_TRUE(test_bit(d->bmap, 5));
	ASSERT_EQ(0, clear_log(d->fd, 0, 0, d->npages, d->bmap));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(0, count_set(d->bmap, d->npages));
	/* The next exit maps it again. */
	ASSERT_EQ(0, guest_access(d->vcpu, GPA_BASE, &b, 1, 0));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_TRUE(test_bit(d->bmap, 5));
}

/*
 * The uAPI's validation: every malformed request gets its errno and
 * changes nothing; a harvest whose copy-out faults loses no bit.
 */
TEST_F(dirty_api, dirty_log_uapi)
{
	struct dlog *d = &self->d;
	struct secmmu_dirty_log log = { .slot = 0 };
	struct secmmu_clear_dirty_log c = { .slot = 0 };
	unsigned long n;
	char *buf;
	int fd;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	/* INITIALLY_SET needs manual protection. */
	EXPECT_EQ(-EINVAL, space_create(variant->format, 1, INIT_SET));
	/* The lowest flag not defined. */
	EXPECT_EQ(-EINVAL, space_create(variant->format, 1,
					~SECMMU_CFG_FLAGS & (SECMMU_CFG_FLAGS + 1)));
	/* The dirty bit needs A/D. */
	EXPECT_EQ(-EINVAL, space_create(variant->format, 1,
					DBIT | SECMMU_CFG_NO_AD));
	ASSERT_EQ(0, dirty_space(d, variant->format, 0));
	n = d->npages;

	/* No such slot, or not logging: ENOENT; an id no slot can have: EINVAL. */
	EXPECT_EQ(-ENOENT, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(-ENOENT, get_log(d->fd, 1, d->bmap));
	EXPECT_EQ(-EINVAL, get_log(d->fd, SECMMU_MAX_MEMSLOTS, d->bmap));
	/* Flags-only changes: READONLY may not change, the slot may not move. */
	EXPECT_EQ(-EINVAL, set_slot(d->fd, 0, SECMMU_MEM_READONLY | LOG,
				    GPA_BASE, d->size, d->mem));
	EXPECT_EQ(-EBUSY, set_slot(d->fd, 0, LOG, GPA_BASE + SZ_2M,
				   d->size, d->mem));
	EXPECT_EQ(-EBUSY, set_slot(d->fd, 0, LOG, GPA_BASE,
				   d->size - PAGE_SZ, d->mem));
	EXPECT_EQ(-EINVAL, set_slot(d->fd, 0, 1u << 7, GPA_BASE,
				    d->size, d->mem));
	EXPECT_EQ(-ENOENT, get_log(d->fd, 0, d->bmap));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	/* The same flags again: nothing to do. */
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));

	log.bitmap = (uintptr_t)d->bmap;
	log.pad = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(d->fd, SECMMU_GET_DIRTY_LOG, &log));
	log.pad = 0;
	log.reserved[1] = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(d->fd, SECMMU_GET_DIRTY_LOG, &log));
	log.reserved[1] = 0;
	/* Without manual protection, CLEAR_DIRTY_LOG is refused. */
	EXPECT_EQ(-EINVAL, clear_log(d->fd, 0, 0, n, d->bmap));

	/* A harvest that cannot be delivered keeps its bits. */
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + 64 * PAGE_SZ, PAGE_SZ, 3, NULL));
	EXPECT_EQ(-EFAULT, get_log(d->fd, 0, (void *)16));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(64, count_set(d->bmap, n));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(0, count_set(d->bmap, n));
	/*
	 * Nor one that faults after its first word reached the buffer: the
	 * call fails, so that word is not delivered either.
	 */
	buf = mmap(NULL, 2 * PAGE_SZ, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, buf);
	ASSERT_EQ(0, munmap(buf + PAGE_SZ, PAGE_SZ));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + 128 * PAGE_SZ, PAGE_SZ, 4, NULL));
	EXPECT_EQ(-EFAULT, get_log(d->fd, 0, buf + PAGE_SZ - 8));
	EXPECT_EQ(~0UL, *(unsigned long *)(buf + PAGE_SZ - 8));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(128, count_set(d->bmap, n));
	munmap(buf, PAGE_SZ);

	/* Manual protection: the ranges of CLEAR_DIRTY_LOG. */
	fd = space_create(variant->format, 1, MANUAL);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, set_slot(fd, 0, LOG, GPA_BASE, d->size, d->mem));
	memset(d->bmap, 0xff, d->nwords * 8);
	EXPECT_EQ(-EINVAL, clear_log(fd, 0, 1, 64, d->bmap));
	EXPECT_EQ(-EINVAL, clear_log(fd, 0, 0, 65, d->bmap));
	EXPECT_EQ(-EINVAL, clear_log(fd, 0, 64, n, d->bmap));
	EXPECT_EQ(-EINVAL, clear_log(fd, 0, (n + 63) / 64 * 64, 0, d->bmap));
	EXPECT_EQ(-ENOENT, clear_log(fd, 1, 0, 64, d->bmap));
	EXPECT_EQ(-EINVAL, clear_log(fd, SECMMU_MAX_MEMSLOTS, 0, 64, d->bmap));
	c.first_page = 0;
	c.num_pages = 64;
	c.bitmap = (uintptr_t)d->bmap;
	c.reserved[0] = 1;
	EXPECT_EQ(-EINVAL, secmmu_ioctl(fd, SECMMU_CLEAR_DIRTY_LOG, &c));
	EXPECT_EQ(-EFAULT, clear_log(fd, 0, 0, 64, (void *)16));
	EXPECT_EQ(-EFAULT, get_log(fd, 0, (void *)16));
	/* The tail of a slot whose size is not a multiple of 64 pages. */
	EXPECT_EQ(0, clear_log(fd, 0, n / 64 * 64, n % 64, d->bmap));
	EXPECT_EQ(0, clear_log(fd, 0, 0, n, d->bmap));
	EXPECT_EQ(0, clear_log(fd, 0, 0, 0, d->bmap));
	close(fd);
}

/* Whether exactly the pages [@first, @first + @n) are set in @d->bmap. */
static bool bmap_is_run(struct dlog *d, unsigned long first, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < d->npages; i++)
		if (test_bit(d->bmap, i) != (i >= first && i < first + n))
			return false;
	return true;
}

/*
 * The ring fills (KVM's KVM_EXIT_DIRTY_RING_FULL): one RUN pass writes
 * every page of a logging slot; it exits with -EAGAIN and
 * SECMMU_EXIT_DIRTY_RING_FULL once the ring is soft full, before an access
 * it has not done, and again at once, doing nothing, until a reset frees
 * entries; then it goes on from where it stopped. Write protection pushes
 * at each fault, so the vCPU stops exactly at the soft limit; the dirty bit
 * pushes a guest-mode stretch's log at once, into the reserved room.
 */
static void ring_full(struct __test_metadata *_metadata, struct dlog *d,
		      unsigned int format, unsigned int flags)
{
	unsigned long soft = RING_ENTRIES - SECMMU_DIRTY_RING_RSVD_ENTRIES;
	struct secmmu_run run = {
		.op = SECMMU_RUN_WRITE, .start = GPA_BASE,
		.end = GPA_BASE + d->size, .stride = PAGE_SZ, .pattern = 5,
		.passes = 1,
	};
	unsigned long first = 0, exits = 0, page;
	long n;

	ASSERT_EQ(0, dirty_space(d, format, flags | RING));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	for (;;) {
		struct secmmu_run again;
		int ret = vcpu_run(d->vcpu, &run);

		if (!ret)
			break;
		ASSERT_EQ(-EAGAIN, ret);
		ASSERT_EQ(SECMMU_EXIT_DIRTY_RING_FULL, run.exit_reason);
		ASSERT_EQ(0, run.exit_pass);
		exits++;
		again = run;
		again.start = run.exit_gpa;
		ASSERT_EQ(-EAGAIN, vcpu_run(d->vcpu, &again));
		ASSERT_EQ(0, again.accesses);
		ASSERT_EQ(SECMMU_EXIT_DIRTY_RING_FULL, again.exit_reason);

		memset(d->bmap, 0, d->nwords * 8);
		n = ring_collect(d);
		ASSERT_LE((long)soft, n);
		ASSERT_GT((long)RING_ENTRIES, n);
		if (!(flags & DBIT))
			ASSERT_EQ((long)soft, n);
		/* The pages written since the last resume, each once, in order. */
		ASSERT_TRUE(bmap_is_run(d, first, n));
		/* Collected but not reset: still full. */
		ASSERT_EQ(-EAGAIN, vcpu_run(d->vcpu, &again));
		ASSERT_EQ(n, dirty_ring_reset(d->fd));
		/* Go on from the access it had not done. */
		first = (run.exit_gpa - GPA_BASE) / PAGE_SZ;
		run.start = run.exit_gpa;
	}
	TH_LOG("%s%s: %lu ring-full exits over %lu pages", format_name(format),
	       flags & DBIT ? " dirty-bit" : "", exits, d->npages);
	ASSERT_LE(d->npages / RING_ENTRIES, exits);
	memset(d->bmap, 0, d->nwords * 8);
	n = ring_collect(d);
	ASSERT_TRUE(bmap_is_run(d, first, d->npages - first));
	ASSERT_EQ(n, dirty_ring_reset(d->fd));
	/* Every write landed, once resumed. */
	for (page = 0; page < d->npages; page++) {
		unsigned long gpa = GPA_BASE + page * PAGE_SZ;

		ASSERT_EQ(5 ^ gpa, *(__u64 *)(d->mem + page * PAGE_SZ));
	}
}

TEST_F_TIMEOUT(dirty_api, dirty_ring_full, 120)
{
	if (!self->d.mem)
		SKIP(return, "no memory of this backing in the VM");
	ring_full(_metadata, &self->d, variant->format, 0);
	dlog_close(&self->d);
	ring_full(_metadata, &self->d, variant->format, DBIT);
}

/*
 * With rings, writes that no vCPU makes go to the bitmap: the run page,
 * written through its guest page cache at every exit, is reported by
 * SECMMU_GET_DIRTY_LOG (KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP), and the
 * vCPU's own writes by its ring only.
 */
TEST_F_TIMEOUT(dirty_api, dirty_ring_run_page, 120)
{
	struct dlog *d = &self->d;
	struct secmmu_run_page_setup rp = {
		.gpa = GPA_BASE + 5 * PAGE_SZ + 64,
		.flags = SECMMU_RUN_PAGE_ENABLE,
	};
	__u64 v = 1;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	ASSERT_EQ(0, dirty_space(d, variant->format, RING));
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	ASSERT_EQ(0, secmmu_ioctl(d->vcpu, SECMMU_SET_RUN_PAGE, &rp));
	ASSERT_EQ(0, guest_access(d->vcpu, GPA_BASE + 7 * PAGE_SZ, &v, 8, 1));
	memset(d->bmap, 0, d->nwords * 8);
	ASSERT_EQ(1, ring_collect(d));
	EXPECT_TRUE(test_bit(d->bmap, 7));
	ASSERT_EQ(1, dirty_ring_reset(d->fd));
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_TRUE(test_bit(d->bmap, 5));
	EXPECT_EQ(1, count_set(d->bmap, d->npages));
}

/* The ring's uAPI: its size, its mapping, and resets of broken entries. */
TEST_F(dirty_api, dirty_ring_uapi)
{
	struct secmmu_config cfg = { .format = variant->format, .nr_roots = 1 };
	unsigned long ring_pages = RING_BYTES / PAGE_SZ;
	unsigned long off = SECMMU_DIRTY_LOG_PAGE_OFFSET * PAGE_SZ;
	struct dlog *d = &self->d;
	struct secmmu_dirty_gfn *e;
	void *p;
	int i;

	if (!d->mem)
		SKIP(return, "no memory of this backing in the VM");
	/* A power of two, of at least a page and the reserved entries. */
	cfg.dirty_ring_size = PAGE_SZ;
	EXPECT_EQ(-EINVAL, space_create_cfg(&cfg));
	cfg.dirty_ring_size = 8192;
	EXPECT_EQ(-EINVAL, space_create_cfg(&cfg));
	cfg.dirty_ring_size = 3 * 8192;
	EXPECT_EQ(-EINVAL, space_create_cfg(&cfg));
	cfg.dirty_ring_size = 2 * SECMMU_DIRTY_RING_MAX_ENTRIES * 16;
	EXPECT_EQ(-E2BIG, space_create_cfg(&cfg));
	cfg.dirty_ring_size = 1u << 31;
	EXPECT_EQ(-E2BIG, space_create_cfg(&cfg));
	cfg.dirty_ring_size = RING_BYTES;
	cfg.pad = 1;
	EXPECT_EQ(-EINVAL, space_create_cfg(&cfg));

	/* Without rings: no reset, nothing to map. */
	ASSERT_EQ(0, dirty_space(d, variant->format, 0));
	EXPECT_EQ(-EINVAL, dirty_ring_reset(d->fd));
	p = mmap(NULL, PAGE_SZ, PROT_READ, MAP_SHARED, d->vcpu, off);
	EXPECT_EQ(MAP_FAILED, p);
	EXPECT_EQ(EINVAL, errno);
	dlog_close(d);

	ASSERT_EQ(0, dirty_space(d, variant->format, RING));
	EXPECT_EQ(-1, ioctl(d->fd, SECMMU_RESET_DIRTY_RINGS, 1));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(0, dirty_ring_reset(d->fd));
	/* Shared, not executable, from the ring's offset, within the ring. */
	p = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE, d->vcpu, off);
	EXPECT_EQ(MAP_FAILED, p);
	p = mmap(NULL, PAGE_SZ, PROT_READ | PROT_EXEC, MAP_SHARED, d->vcpu, off);
	EXPECT_EQ(MAP_FAILED, p);
	p = mmap(NULL, PAGE_SZ, PROT_READ, MAP_SHARED, d->vcpu, 0);
	EXPECT_EQ(MAP_FAILED, p);
	p = mmap(NULL, PAGE_SZ, PROT_READ, MAP_SHARED, d->vcpu, off - PAGE_SZ);
	EXPECT_EQ(MAP_FAILED, p);
	p = mmap(NULL, 2 * RING_BYTES, PROT_READ, MAP_SHARED, d->vcpu, off);
	EXPECT_EQ(MAP_FAILED, p);
	p = mmap(NULL, PAGE_SZ, PROT_READ, MAP_SHARED, d->vcpu,
		 off + RING_BYTES);
	EXPECT_EQ(MAP_FAILED, p);
	/* Its last page alone, which is the ring's. */
	p = mmap(NULL, PAGE_SZ, PROT_READ, MAP_SHARED, d->vcpu,
		 off + (ring_pages - 1) * PAGE_SZ);
	ASSERT_NE(MAP_FAILED, p);
	EXPECT_EQ(0, memcmp(p, (char *)d->ring + RING_BYTES - PAGE_SZ, PAGE_SZ));
	munmap(p, PAGE_SZ);
	EXPECT_EQ(-1, mprotect(d->ring, PAGE_SZ, PROT_READ | PROT_EXEC));

	/* Four entries: pages 0-3 written while the slot logs. */
	ASSERT_EQ(0, set_slot(d->fd, 0, LOG, GPA_BASE, d->size, d->mem));
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE,
			       GPA_BASE + 4 * PAGE_SZ, PAGE_SZ, 1, NULL));
	e = d->ring;
	for (i = 0; i < 4; i++) {
		EXPECT_EQ(SECMMU_DIRTY_GFN_F_DIRTY, e[i].flags);
		EXPECT_EQ(0, e[i].slot);
		EXPECT_EQ(i, e[i].offset);
	}
	EXPECT_EQ(0, e[4].flags);
	/* Not collected: nothing to free. */
	EXPECT_EQ(0, dirty_ring_reset(d->fd));
	/* RESET without DIRTY: refused there, and left as it is. */
	e[0].flags = SECMMU_DIRTY_GFN_F_RESET;
	EXPECT_EQ(-EINVAL, dirty_ring_reset(d->fd));
	EXPECT_EQ(SECMMU_DIRTY_GFN_F_RESET, e[0].flags);
	/* An unknown bit: the entries before it are freed. */
	e[0].flags = SECMMU_DIRTY_GFN_F_DIRTY | SECMMU_DIRTY_GFN_F_RESET;
	e[1].flags = 7;
	EXPECT_EQ(-EINVAL, dirty_ring_reset(d->fd));
	EXPECT_EQ(0, e[0].flags);
	EXPECT_EQ(7, e[1].flags);
	/* A slot that does not exist, a page far past the slot: freed. */
	e[1].flags = SECMMU_DIRTY_GFN_F_DIRTY | SECMMU_DIRTY_GFN_F_RESET;
	e[2].slot = 99;
	e[2].flags |= SECMMU_DIRTY_GFN_F_RESET;
	e[3].offset = ~0ULL;
	e[3].flags |= SECMMU_DIRTY_GFN_F_RESET;
	/* Entries the vCPU never pushed are never read. */
	for (i = 4; i < 8; i++)
		e[i].flags = SECMMU_DIRTY_GFN_F_DIRTY | SECMMU_DIRTY_GFN_F_RESET;
	EXPECT_EQ(3, dirty_ring_reset(d->fd));
	EXPECT_EQ(0, dirty_ring_reset(d->fd));
	/* The next push overwrites what userspace wrote there. */
	ASSERT_EQ(0, run_range(d->vcpu, SECMMU_RUN_WRITE, GPA_BASE + 10 * PAGE_SZ,
			       GPA_BASE + 11 * PAGE_SZ, PAGE_SZ, 1, NULL));
	EXPECT_EQ(SECMMU_DIRTY_GFN_F_DIRTY, e[4].flags);
	EXPECT_EQ(10, e[4].offset);
	e[4].flags |= SECMMU_DIRTY_GFN_F_RESET;
	EXPECT_EQ(1, dirty_ring_reset(d->fd));
	/* vCPU writes went to the ring, none to the bitmap, which still reads. */
	ASSERT_EQ(0, get_log(d->fd, 0, d->bmap));
	EXPECT_EQ(0, count_set(d->bmap, d->npages));
	/* The mapping outlives the vCPU; the space has no ring to reset. */
	close(d->vcpu);
	d->vcpu = -1;
	EXPECT_EQ(10, e[4].offset);
	EXPECT_EQ(0, dirty_ring_reset(d->fd));
}

TEST_HARNESS_MAIN
