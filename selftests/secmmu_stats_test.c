// SPDX-License-Identifier: GPL-2.0
/*
 * secmmu statistics: the binary stats files of SECMMU_GET_STATS_FD and
 * SECMMU_GET_VCPU_STATS_FD (KVM's layout), per-vCPU counters and the
 * space's totals of them, and the instant leaf counts. Every test runs once
 * per page-table format (fixture variants "x86" and "arm64").
 *
 * stats_fd: the port of the kernel's kvm_binary_stats_test.c (header, id,
 * descriptors, data; reads at any offset), and hostile use of the files.
 * stats_concurrent: 8 vCPU threads fault disjoint ranges; each vCPU's
 * counts are exactly its own, the space's are their sum, before and after
 * vCPU fds close, and SECMMU_GET_STATS agrees with the stats file.
 * stats_instant: pages_4k/2m/1g follow maps, zaps, splits and collapses.
 * stats_debugfs: the space's debugfs directory, its stats and its rmaps.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "secmmu_lib.h"
#include "kselftest_harness.h"

#define GPA_BASE	SZ_1G

FIXTURE(stats) {
	int unused;
};

FIXTURE_VARIANT(stats) {
	unsigned int format;
};

FIXTURE_VARIANT_ADD(stats, x86) { .format = SECMMU_FMT_X86_EPT4 };
FIXTURE_VARIANT_ADD(stats, arm64) { .format = SECMMU_FMT_ARM64_S2 };

FIXTURE_SETUP(stats)
{
}

FIXTURE_TEARDOWN(stats)
{
}

/* A stats file's header, id and descriptors, as read from it. */
struct stats_file {
	int fd;
	struct secmmu_stats_header h;
	char id[SECMMU_STATS_NAME_SIZE];
	char *descs;
	size_t desc_size;
	size_t data_size;	/* bytes */
};

static struct secmmu_stats_desc *stats_desc(struct stats_file *sf, unsigned int i)
{
	return (struct secmmu_stats_desc *)(sf->descs + i * sf->desc_size);
}

/* SECMMU_GET_STATS_FD on @fd (@cmd: space or vCPU ioctl): fd or -errno. */
static int stats_fd_of(int fd, unsigned long cmd)
{
	int ret = ioctl(fd, cmd, 0);

	return ret < 0 ? -errno : ret;
}

/* Reads @sfd's header, id and descriptors into @sf; 0 or -1. */
static int stats_load(struct stats_file *sf, int sfd)
{
	size_t n;
	unsigned int i;

	memset(sf, 0, sizeof(*sf));
	sf->fd = sfd;
	if (pread(sfd, &sf->h, sizeof(sf->h), 0) != sizeof(sf->h))
		return -1;
	if (sf->h.name_size != SECMMU_STATS_NAME_SIZE)
		return -1;
	if (pread(sfd, sf->id, sizeof(sf->id), sf->h.id_offset) != sizeof(sf->id))
		return -1;
	sf->desc_size = sizeof(struct secmmu_stats_desc) + sf->h.name_size;
	n = sf->h.num_desc * sf->desc_size;
	sf->descs = malloc(n);
	if (!sf->descs || pread(sfd, sf->descs, n, sf->h.desc_offset) != (ssize_t)n)
		return -1;
	for (i = 0; i < sf->h.num_desc; i++) {
		struct secmmu_stats_desc *d = stats_desc(sf, i);
		size_t end = d->offset + d->size * sizeof(__u64);

		if (end > sf->data_size)
			sf->data_size = end;
	}
	return 0;
}

static void stats_unload(struct stats_file *sf)
{
	free(sf->descs);
	sf->descs = NULL;
}

/* The descriptor named @name, or NULL. */
static struct secmmu_stats_desc *stats_find(struct stats_file *sf, const char *name)
{
	unsigned int i;

	for (i = 0; i < sf->h.num_desc; i++)
		if (!strcmp(stats_desc(sf, i)->name, name))
			return stats_desc(sf, i);
	return NULL;
}

/* Statistic @name's value @i (a histogram's bucket), or ~0 if missing. */
static __u64 stat_at(struct stats_file *sf, const char *name, unsigned int i)
{
	struct secmmu_stats_desc *d = stats_find(sf, name);
	__u64 v;

	if (!d || i >= d->size)
		return ~0ull;
	if (pread(sf->fd, &v, sizeof(v), sf->h.data_offset + d->offset +
		  i * sizeof(v)) != sizeof(v))
		return ~0ull;
	return v;
}

static __u64 stat(struct stats_file *sf, const char *name)
{
	return stat_at(sf, name, 0);
}

/* The sum of the buckets of histogram @name. */
static __u64 hist_sum(struct stats_file *sf, const char *name)
{
	struct secmmu_stats_desc *d = stats_find(sf, name);
	__u64 sum = 0;
	unsigned int i;

	for (i = 0; d && i < d->size; i++)
		sum += stat_at(sf, name, i);
	return sum;
}

/*
 * kvm_binary_stats_test.c's stats_test(): the header, the id (which starts
 * with @prefix), every descriptor, and the data read whole and one
 * statistic at a time. Then reads at random offsets and lengths, by
 * pread() and by read() in small steps, against the whole file. The space
 * and its vCPUs are idle, so only module_table_pages (every space's) may
 * change between reads: it is left out of the comparisons.
 */
static void stats_test(struct __test_metadata *_metadata, int sfd, const char *prefix)
{
	struct stats_file sf;
	struct secmmu_stats_desc *mod;
	size_t total, off, len, skip_lo = 0, skip_hi = 0;
	off_t pos;
	__u64 *data;
	char *whole, *buf;
	unsigned int i, j;
	ssize_t ret;

	ASSERT_EQ(0, stats_load(&sf, sfd));
	EXPECT_EQ(0, sf.h.flags);
	EXPECT_EQ(0, strncmp(sf.id, prefix, strlen(prefix))) TH_LOG("id %.48s", sf.id);
	EXPECT_LT(strnlen(sf.id, sizeof(sf.id)), sf.h.name_size);
	ASSERT_GT(sf.h.num_desc, 0);
	EXPECT_GE(sf.h.id_offset, sizeof(sf.h));
	EXPECT_TRUE(sf.h.desc_offset && sf.h.desc_offset >= sizeof(sf.h) &&
		    sf.h.data_offset && sf.h.data_offset >= sizeof(sf.h));
	EXPECT_TRUE(sf.h.desc_offset > sf.h.data_offset ||
		    sf.h.desc_offset + sf.desc_size * sf.h.num_desc <= sf.h.data_offset);
	for (i = 0; i < sf.h.num_desc; i++) {
		struct secmmu_stats_desc *d = stats_desc(&sf, i);
		unsigned int type = d->flags & SECMMU_STATS_TYPE_MASK;
		unsigned int unit = d->flags & SECMMU_STATS_UNIT_MASK;
		unsigned int base = d->flags & SECMMU_STATS_BASE_MASK;

		EXPECT_LT(strnlen(d->name, sf.h.name_size), sf.h.name_size)
			TH_LOG("stat %u: name not NUL-terminated", i);
		EXPECT_GT(strlen(d->name), 0);
		EXPECT_LE(type, SECMMU_STATS_TYPE_MAX) TH_LOG("%s", d->name);
		EXPECT_LE(unit, SECMMU_STATS_UNIT_MAX) TH_LOG("%s", d->name);
		EXPECT_LE(base, SECMMU_STATS_BASE_MAX) TH_LOG("%s", d->name);
		EXPECT_EQ(0, d->flags & ~(SECMMU_STATS_TYPE_MASK | SECMMU_STATS_UNIT_MASK |
					  SECMMU_STATS_BASE_MASK));
		/* Seconds count down from 1, booleans have none, others up. */
		EXPECT_TRUE(unit == SECMMU_STATS_UNIT_SECONDS ? d->exponent <= 0 :
			    unit == SECMMU_STATS_UNIT_BOOLEAN ? d->exponent == 0 :
			    d->exponent >= 0)
			TH_LOG("%s: exponent %d", d->name, d->exponent);
		EXPECT_NE(0, d->size) TH_LOG("%s", d->name);
		/* Only linear histograms have a bucket size. */
		EXPECT_EQ(type == SECMMU_STATS_TYPE_LINEAR_HIST, d->bucket_size != 0)
			TH_LOG("%s", d->name);
		/* Histograms have buckets; every other value is one u64. */
		EXPECT_EQ(type == SECMMU_STATS_TYPE_LOG_HIST ||
			  type == SECMMU_STATS_TYPE_LINEAR_HIST, d->size > 1)
			TH_LOG("%s: size %u", d->name, d->size);
		EXPECT_EQ(0, d->offset % sizeof(__u64));
		/* Unique names, non-overlapping values. */
		for (j = 0; j < i; j++) {
			struct secmmu_stats_desc *e = stats_desc(&sf, j);

			EXPECT_NE(0, strcmp(d->name, e->name)) TH_LOG("%s twice", d->name);
			EXPECT_TRUE(d->offset >= e->offset + e->size * 8 ||
				    e->offset >= d->offset + d->size * 8)
				TH_LOG("%s overlaps %s", d->name, e->name);
		}
	}
	EXPECT_TRUE(sf.h.data_offset >= sf.h.desc_offset ||
		    sf.h.data_offset + sf.data_size <= sf.h.desc_offset);
	EXPECT_GE(sf.data_size, sf.h.num_desc * sizeof(__u64));

	/* The data as a bulk, then one statistic at a time. */
	data = malloc(sf.data_size);
	ASSERT_NE(NULL, data);
	ret = pread(sfd, data, sf.data_size, sf.h.data_offset);
	EXPECT_EQ((ssize_t)sf.data_size, ret);
	mod = stats_find(&sf, "module_table_pages");
	if (mod) {
		skip_lo = sf.h.data_offset + mod->offset;
		skip_hi = skip_lo + 8;
	}
	for (i = 0; i < sf.h.num_desc; i++) {
		struct secmmu_stats_desc *d = stats_desc(&sf, i);
		__u64 v[64];

		ASSERT_LE(d->size, 64);
		ret = pread(sfd, v, d->size * 8, sf.h.data_offset + d->offset);
		EXPECT_EQ(d->size * 8, ret);
		if (d != mod) {
			EXPECT_EQ(0, memcmp(v, (char *)data + d->offset, d->size * 8))
				TH_LOG("%s changed", d->name);
		}
	}

	/* The whole file, then random pieces of it, and past its end. */
	total = sf.h.data_offset + sf.data_size;
	whole = malloc(total + 4096);
	buf = malloc(total + 4096);
	ASSERT_TRUE(whole && buf);
	EXPECT_EQ((ssize_t)total, pread(sfd, whole, total + 4096, 0));
	EXPECT_EQ(0, memcmp(whole, &sf.h, sizeof(sf.h)));
	EXPECT_EQ(0, memcmp(whole + sf.h.desc_offset, sf.descs,
			    sf.h.num_desc * sf.desc_size));
	EXPECT_EQ(0, pread(sfd, buf, 100, total));
	EXPECT_EQ(0, pread(sfd, buf, 100, total + 12345));
	EXPECT_EQ(0, pread(sfd, buf, 0, 0));
	srand(sfd * 7919 + sf.h.num_desc);
	for (i = 0; i < 2000; i++) {
		size_t k, want;

		off = rand() % (total + 64);
		len = rand() % (i & 1 ? 64 : total + 64);
		want = off >= total ? 0 : (len < total - off ? len : total - off);
		memset(buf, 0x5a, len);
		ret = pread(sfd, buf, len, off);
		ASSERT_EQ((ssize_t)want, ret) TH_LOG("pread(%zu, %zu)", len, off);
		for (k = 0; k < want; k++) {
			if (off + k >= skip_lo && off + k < skip_hi)
				continue;
			if (buf[k] != whole[off + k])
				break;
		}
		ASSERT_EQ(want, k) TH_LOG("pread(%zu, %zu) differs at %zu", len, off, off + k);
	}
	/*
	 * read() from the file position (where an earlier call's reads left
	 * it: lseek() does nothing, as on KVM's files), in 7-byte steps: the
	 * same bytes, up to the end.
	 */
	pos = lseek(sfd, 0, SEEK_CUR);
	ASSERT_GE(pos, 0);
	ASSERT_LE(pos, total);
	EXPECT_EQ(pos, lseek(sfd, 0, SEEK_SET));
	for (off = pos;; off += ret) {
		ret = read(sfd, buf + off, 7);
		ASSERT_GE(ret, 0);
		if (!ret)
			break;
		ASSERT_LE(off + ret, total);
	}
	EXPECT_EQ(total, off);
	for (off = pos; off < total; off++)
		if ((off < skip_lo || off >= skip_hi) && buf[off] != whole[off])
			break;
	EXPECT_EQ(total, off);
	EXPECT_EQ(0, read(sfd, buf, 100));

	free(whole);
	free(buf);
	free(data);
	stats_unload(&sf);
}

/* A space with one slot of @size at GPA_BASE backed by @mem (4K pages). */
static int space_with_slot(unsigned int format, char *mem, unsigned long size)
{
	int fd = space_create(format, 1, 0);

	if (fd < 0)
		return fd;
	if (set_slot(fd, 0, 0, GPA_BASE, size, mem)) {
		close(fd);
		return -errno;
	}
	return fd;
}

TEST_F(stats, stats_fd)
{
	const unsigned long size = 64 * PAGE_SZ;
	char prefix[64], *bad, *mem = mmap_2m_aligned(SZ_2M, MADV_NOHUGEPAGE);
	int fd, sfd, vsfd, vcpus[4], vsfds[4], many[200], i;
	struct stats_file sf, vf;

	ASSERT_NE(NULL, mem);
	fd = space_with_slot(variant->format, mem, size);
	ASSERT_GE(fd, 0);
	/* Hostile arguments, wrong files. */
	EXPECT_EQ(-1, ioctl(fd, SECMMU_GET_STATS_FD, 1));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-1, ioctl(fd, SECMMU_GET_STATS_FD, (unsigned long)mem));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-1, ioctl(fd, SECMMU_GET_VCPU_STATS_FD, 0));
	EXPECT_EQ(ENOTTY, errno);

	sfd = ioctl(fd, SECMMU_GET_STATS_FD, 0);
	ASSERT_GE(sfd, 0) TH_LOG("SECMMU_GET_STATS_FD: %s", strerror(errno));
	EXPECT_EQ(FD_CLOEXEC, fcntl(sfd, F_GETFD) & FD_CLOEXEC);
	EXPECT_EQ(O_RDONLY, fcntl(sfd, F_GETFL) & O_ACCMODE);
	/* Read-only, no ioctls. */
	EXPECT_EQ(-1, write(sfd, "x", 1));
	EXPECT_EQ(EBADF, errno);
	/* No FMODE_PWRITE: the VFS refuses before it sees the mode. */
	EXPECT_EQ(-1, pwrite(sfd, "x", 1, 0));
	EXPECT_EQ(ESPIPE, errno);
	EXPECT_EQ(-1, ioctl(sfd, SECMMU_GET_STATS_FD, 0));
	EXPECT_EQ(ENOTTY, errno);
	EXPECT_EQ(-1, pread(sfd, prefix, 8, -1));
	EXPECT_EQ(EINVAL, errno);
	/* A buffer that is not there. */
	bad = mmap(NULL, PAGE_SZ, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, bad);
	ASSERT_EQ(0, munmap(bad, PAGE_SZ));
	EXPECT_EQ(-1, pread(sfd, bad, 8, 0));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, read(sfd, bad, 8));
	EXPECT_EQ(EFAULT, errno);

	snprintf(prefix, sizeof(prefix), "secmmu-");
	stats_test(_metadata, sfd, prefix);

	for (i = 0; i < 4; i++) {
		vcpus[i] = vcpu_create(fd, 0);
		ASSERT_GE(vcpus[i], 0);
		EXPECT_EQ(-1, ioctl(vcpus[i], SECMMU_GET_VCPU_STATS_FD, 2));
		EXPECT_EQ(EINVAL, errno);
		EXPECT_EQ(-1, ioctl(vcpus[i], SECMMU_GET_STATS_FD, 0));
		EXPECT_EQ(ENOTTY, errno);
		vsfds[i] = stats_fd_of(vcpus[i], SECMMU_GET_VCPU_STATS_FD);
		ASSERT_GE(vsfds[i], 0) TH_LOG("%s", strerror(-vsfds[i]));
		/* Each vCPU faults (i + 1) * 4 pages of its own. */
		ASSERT_EQ(0, run_range(vcpus[i], SECMMU_RUN_WRITE,
				       GPA_BASE + i * 16 * PAGE_SZ,
				       GPA_BASE + (i * 16 + (i + 1) * 4) * PAGE_SZ,
				       PAGE_SZ, 1, NULL));
		ASSERT_EQ(0, stats_load(&sf, vsfds[i]));
		EXPECT_NE(NULL, strstr(sf.id, "/vcpu")) TH_LOG("id %.48s", sf.id);
		EXPECT_EQ((i + 1) * 4, stat(&sf, "faults"));
		stats_unload(&sf);
		stats_test(_metadata, vsfds[i], prefix);
	}
	/* The space's id is the vCPUs' id up to the slash. */
	ASSERT_EQ(0, stats_load(&sf, sfd));
	ASSERT_EQ(0, stats_load(&vf, vsfds[0]));
	EXPECT_EQ(0, strncmp(sf.id, vf.id, strlen(sf.id)));
	EXPECT_EQ('/', vf.id[strlen(sf.id)]);
	EXPECT_EQ(40, stat(&sf, "faults"));
	stats_unload(&vf);
	stats_unload(&sf);
	stats_test(_metadata, sfd, prefix);

	/* Many stats files at once, each reads on its own. */
	for (i = 0; i < 200; i++) {
		many[i] = ioctl(i & 1 ? vcpus[i % 4] : fd,
				i & 1 ? SECMMU_GET_VCPU_STATS_FD : SECMMU_GET_STATS_FD, 0);
		ASSERT_GE(many[i], 0) TH_LOG("file %d: %s", i, strerror(errno));
	}
	for (i = 0; i < 200; i++) {
		ASSERT_EQ(0, stats_load(&sf, many[i]));
		EXPECT_EQ(i & 1 ? (i % 4 + 1) * 4 : 40, stat(&sf, "faults"));
		stats_unload(&sf);
		close(many[i]);
	}

	/*
	 * The files outlive the space's and the vCPUs' fds: a vCPU's keeps its
	 * counts, the space's keeps counting the vCPUs that went.
	 */
	vsfd = vsfds[3];
	for (i = 0; i < 4; i++) {
		close(vcpus[i]);
		if (vsfds[i] != vsfd)
			close(vsfds[i]);
	}
	close(fd);
	munmap(mem, SZ_2M);
	ASSERT_EQ(0, stats_load(&sf, vsfd));
	EXPECT_EQ(16, stat(&sf, "faults"));
	EXPECT_EQ(16, stat(&sf, "mappings_4k"));
	stats_unload(&sf);
	stats_test(_metadata, vsfd, prefix);
	ASSERT_EQ(0, stats_load(&sf, sfd));
	EXPECT_EQ(40, stat(&sf, "faults"));
	EXPECT_EQ(40, stat(&sf, "mappings_4k"));
	/* munmap() zapped every leaf: none is mapped now. */
	EXPECT_EQ(0, stat(&sf, "pages_4k"));
	EXPECT_EQ(40, stat(&sf, "sptes_zapped"));
	stats_unload(&sf);
	stats_test(_metadata, sfd, prefix);
	close(vsfd);
	close(sfd);
}

#define NR_VCPUS	8
#define VCPU_PAGES	512UL

struct faulter {
	int vcpu;
	unsigned long gpa;
	unsigned long pages;
	int ret;
};

static void *fault_range(void *arg)
{
	struct faulter *f = arg;

	f->ret = run_range(f->vcpu, SECMMU_RUN_WRITE, f->gpa,
			   f->gpa + f->pages * PAGE_SZ, PAGE_SZ, 3, NULL);
	return NULL;
}

/* The space's totals against GET_STATS and the sum over @vsf. */
static void check_totals(struct __test_metadata *_metadata, struct stats_file *sf,
			 int fd, __u64 faults, __u64 mappings)
{
	struct secmmu_stats st = get_stats(fd);

	EXPECT_EQ(faults, stat(sf, "faults"));
	EXPECT_EQ(mappings, stat(sf, "mappings_4k"));
	EXPECT_EQ(st.faults, stat(sf, "faults"));
	EXPECT_EQ(st.mappings_4k, stat(sf, "mappings_4k"));
	EXPECT_EQ(st.fault_retries, stat(sf, "fault_retries"));
	EXPECT_EQ(st.fault_eagain, stat(sf, "fault_eagain"));
	EXPECT_EQ(st.rmap_max_chain, stat(sf, "rmap_max_chain"));
	EXPECT_EQ(st.table_pages, stat(sf, "table_pages"));
	EXPECT_EQ(st.invalidations, stat(sf, "invalidations"));
	EXPECT_EQ(st.tlb_flushes, stat(sf, "tlb_flushes"));
}

TEST_F(stats, stats_concurrent)
{
	const unsigned long size = NR_VCPUS * VCPU_PAGES * PAGE_SZ;
	struct faulter f[NR_VCPUS];
	pthread_t t[NR_VCPUS];
	__u64 faults = 0, maps = 0, chains = 0, retries = 0;
	struct stats_file sf, vsf[NR_VCPUS];
	char *mem = mmap_2m_aligned(size, MADV_NOHUGEPAGE);
	int fd, sfd, vsfd[NR_VCPUS], i;

	ASSERT_NE(NULL, mem);
	fd = space_with_slot(variant->format, mem, size);
	ASSERT_GE(fd, 0);
	sfd = stats_fd_of(fd, SECMMU_GET_STATS_FD);
	ASSERT_GE(sfd, 0);
	for (i = 0; i < NR_VCPUS; i++) {
		f[i].vcpu = vcpu_create(fd, 0);
		ASSERT_GE(f[i].vcpu, 0);
		/* Different counts per vCPU, so a mixed-up vCPU shows. */
		f[i].pages = VCPU_PAGES - i * 17;
		f[i].gpa = GPA_BASE + i * VCPU_PAGES * PAGE_SZ;
		vsfd[i] = stats_fd_of(f[i].vcpu, SECMMU_GET_VCPU_STATS_FD);
		ASSERT_GE(vsfd[i], 0);
	}
	for (i = 0; i < NR_VCPUS; i++)
		ASSERT_EQ(0, pthread_create(&t[i], NULL, fault_range, &f[i]));
	for (i = 0; i < NR_VCPUS; i++) {
		pthread_join(t[i], NULL);
		EXPECT_EQ(0, f[i].ret) TH_LOG("vCPU %d: %s", i, strerror(-f[i].ret));
	}
	for (i = 0; i < NR_VCPUS; i++) {
		ASSERT_EQ(0, stats_load(&vsf[i], vsfd[i]));
		/* Each page: one fault, one 4K leaf, by this vCPU alone. */
		EXPECT_EQ(f[i].pages, stat(&vsf[i], "faults")) TH_LOG("vCPU %d", i);
		EXPECT_EQ(f[i].pages, stat(&vsf[i], "mappings_4k")) TH_LOG("vCPU %d", i);
		EXPECT_EQ(0, stat(&vsf[i], "mappings_2m"));
		EXPECT_EQ(0, stat(&vsf[i], "memory_faults"));
		/* x86 adds each leaf to an rmap chain; stage-2 keeps none. */
		EXPECT_EQ(variant->format == SECMMU_FMT_X86_EPT4 ? f[i].pages : 0,
			  hist_sum(&vsf[i], "rmap_chain_length"));
		faults += f[i].pages;
		maps += stat(&vsf[i], "mappings_4k");
		chains += hist_sum(&vsf[i], "rmap_chain_length");
		retries += stat(&vsf[i], "fault_retries");
	}
	ASSERT_EQ(0, stats_load(&sf, sfd));
	check_totals(_metadata, &sf, fd, faults, maps);
	EXPECT_EQ(retries, stat(&sf, "fault_retries"));
	EXPECT_EQ(chains, hist_sum(&sf, "rmap_chain_length"));
	EXPECT_EQ(faults, stat(&sf, "pages_4k"));

	/* Half the vCPUs go: their counts fold into the space's, unchanged. */
	for (i = 0; i < NR_VCPUS; i += 2)
		close(f[i].vcpu);
	check_totals(_metadata, &sf, fd, faults, maps);
	EXPECT_EQ(chains, hist_sum(&sf, "rmap_chain_length"));
	/* A closed vCPU's file still reads its own counts. */
	EXPECT_EQ(f[0].pages, stat(&vsf[0], "faults"));
	/* The others count on: each faults its range again after a zap. */
	ASSERT_EQ(0, madvise(mem, size, MADV_DONTNEED));
	EXPECT_EQ(0, stat(&sf, "pages_4k"));
	for (i = 1; i < NR_VCPUS; i += 2) {
		ASSERT_EQ(0, run_range(f[i].vcpu, SECMMU_RUN_WRITE, f[i].gpa,
				       f[i].gpa + PAGE_SZ, PAGE_SZ, 3, NULL));
		EXPECT_EQ(f[i].pages + 1, stat(&vsf[i], "faults"));
		faults++;
		maps++;
	}
	check_totals(_metadata, &sf, fd, faults, maps);
	for (i = 1; i < NR_VCPUS; i += 2)
		close(f[i].vcpu);
	check_totals(_metadata, &sf, fd, faults, maps);
	EXPECT_EQ(NR_VCPUS / 2, stat(&sf, "pages_4k"));

	for (i = 0; i < NR_VCPUS; i++) {
		stats_unload(&vsf[i]);
		close(vsfd[i]);
	}
	stats_unload(&sf);
	close(sfd);
	close(fd);
	munmap(mem, size);
}

/* Leaves now by level, through the stats file, against SECMMU_AUDIT's. */
static void expect_pages(struct __test_metadata *_metadata, struct stats_file *sf,
			 int fd, __u64 p4k, __u64 p2m)
{
	struct secmmu_audit a;

	EXPECT_EQ(p4k, stat(sf, "pages_4k"));
	EXPECT_EQ(p2m, stat(sf, "pages_2m"));
	EXPECT_EQ(0, stat(sf, "pages_1g"));
	if (audit_space(fd, &a) == 0) {
		EXPECT_EQ(a.pages_4k, stat(sf, "pages_4k"));
		EXPECT_EQ(a.pages_2m, stat(sf, "pages_2m"));
	}
}

/* A THP-backed 2M-aligned mapping of @size, faulted in by the host. */
static char *thp_alloc(unsigned long size)
{
	char *mem = mmap_2m_aligned(size, MADV_HUGEPAGE);

	if (!mem)
		return NULL;
	memset(mem, 1, size);
	if (anon_huge_kb(mem) < (long)(size / 1024)) {
		munmap(mem, size);
		return NULL;
	}
	return mem;
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

TEST_F(stats, stats_instant)
{
	const unsigned long size = 4 * SZ_2M;
	__u64 splits, zaps, zapped, tables;
	struct stats_file sf;
	int fd, sfd, vcpu;
	char *mem = thp_alloc(size), *small;

	if (!mem)
		SKIP(return, "no THP available for 2M-aligned MADV_HUGEPAGE memory");
	fd = space_with_slot(variant->format, mem, size);
	ASSERT_GE(fd, 0);
	vcpu = vcpu_create(fd, 0);
	ASSERT_GE(vcpu, 0);
	sfd = stats_fd_of(fd, SECMMU_GET_STATS_FD);
	ASSERT_GE(sfd, 0);
	ASSERT_EQ(0, stats_load(&sf, sfd));
	expect_pages(_metadata, &sf, fd, 0, 0);
	/* The root's table pages, there while the space is. */
	tables = stat(&sf, "table_pages");
	EXPECT_NE(0, tables);

	/* Map: four 2M leaves. */
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, GPA_BASE, GPA_BASE + size,
			       PAGE_SZ, 5, NULL));
	expect_pages(_metadata, &sf, fd, 0, 4);
	EXPECT_EQ(4, stat(&sf, "mappings_2m"));
	EXPECT_LT(tables, stat(&sf, "table_pages"));

	/* Zap by munmap: the last 2M goes. */
	zaps = hist_sum(&sf, "zap_batch_leaves");
	zapped = stat(&sf, "sptes_zapped");
	ASSERT_EQ(0, munmap(mem + 3 * SZ_2M, SZ_2M));
	expect_pages(_metadata, &sf, fd, 0, 3);
	EXPECT_EQ(zapped + 1, stat(&sf, "sptes_zapped"));
	/* One more zap, of one leaf: bucket 1. */
	EXPECT_EQ(zaps + 1, hist_sum(&sf, "zap_batch_leaves"));
	EXPECT_LE(1, stat_at(&sf, "zap_batch_leaves", 1));

	/*
	 * Split: logging the slot's dirty pages, a write fault maps 4K under
	 * a huge leaf, which it replaces by a table (one 4K leaf in it).
	 */
	splits = stat(&sf, "splits");
	ASSERT_EQ(0, set_slot(fd, 0, SECMMU_MEM_LOG_DIRTY_PAGES, GPA_BASE, size, mem));
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_WRITE, GPA_BASE + SZ_2M,
			       GPA_BASE + SZ_2M + PAGE_SZ, PAGE_SZ, 6, NULL));
	EXPECT_EQ(splits + 1, stat(&sf, "splits"));
	expect_pages(_metadata, &sf, fd, 1, 2);
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, size, mem));

	/* Zap by deleting the slot: nothing mapped, the root's tables alone. */
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, 0, mem));
	expect_pages(_metadata, &sf, fd, 0, 0);
	EXPECT_EQ(tables, stat(&sf, "table_pages"));
	EXPECT_EQ(1, stat(&sf, "slot_zaps"));

	/* Collapse: 4K leaves, MADV_COLLAPSE, one 2M leaf. */
	small = mmap_2m_aligned(SZ_2M, MADV_NOHUGEPAGE);
	ASSERT_NE(NULL, small);
	memset(small, 2, SZ_2M);
	ASSERT_EQ(0, set_slot(fd, 1, 0, GPA_BASE, SZ_2M, small));
	ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, GPA_BASE, GPA_BASE + SZ_2M,
			       PAGE_SZ, 0, NULL));
	expect_pages(_metadata, &sf, fd, 512, 0);
	ASSERT_EQ(0, madvise(small, SZ_2M, MADV_HUGEPAGE));
	if (madvise(small, SZ_2M, MADV_COLLAPSE) || anon_huge_kb(small) < 2048) {
		TH_LOG("MADV_COLLAPSE failed (%s): collapse not tested", strerror(errno));
	} else {
		/* The collapse zapped the 4K leaves; the next fault maps 2M. */
		expect_pages(_metadata, &sf, fd, 0, 0);
		EXPECT_LE(1, stat_at(&sf, "zap_batch_leaves", 10));
		ASSERT_EQ(0, run_range(vcpu, SECMMU_RUN_READ, GPA_BASE,
				       GPA_BASE + SZ_2M, PAGE_SZ, 0, NULL));
		expect_pages(_metadata, &sf, fd, 0, 1);
	}

	stats_unload(&sf);
	close(sfd);
	close(vcpu);
	close(fd);
	munmap(small, SZ_2M);
	munmap(mem, 3 * SZ_2M);
}

#define DEBUGFS_SECMMU	"/sys/kernel/debug/secmmu"

/*
 * The debugfs directory of this process's newest space (the highest id
 * among "<pid>-<id>"), into @path; 0, or -1 if there is none.
 */
static int space_debugfs_dir(char *path, size_t size)
{
	DIR *d = opendir(DEBUGFS_SECMMU);
	struct dirent *e;
	long best = -1;
	int pid, id;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (sscanf(e->d_name, "%d-%d", &pid, &id) == 2 && pid == getpid() && id > best)
			best = id;
	closedir(d);
	if (best < 0)
		return -1;
	snprintf(path, size, DEBUGFS_SECMMU "/%d-%ld", getpid(), best);
	return 0;
}

/* The first line of @dir/@file that starts with "@name ", or NULL. */
static char *debugfs_line(const char *dir, const char *file, const char *name,
			  char *line, size_t size)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "r");
	if (!f)
		return NULL;
	while (fgets(line, size, f))
		if (!strncmp(line, name, strlen(name)) && line[strlen(name)] == ' ') {
			fclose(f);
			return line;
		}
	fclose(f);
	return NULL;
}

static unsigned long long debugfs_stat(const char *dir, const char *name)
{
	char line[1024];

	if (!debugfs_line(dir, "stats", name, line, sizeof(line)))
		return -1ULL;
	return strtoull(line + strlen(name) + 1, NULL, 0);
}

/*
 * stats_debugfs: the space's directory (<pid>-<id>, as KVM's <pid>-<fd>)
 * appears with the space, its "stats" says what SECMMU_GET_STATS says,
 * its "mmu_rmaps_stat" counts the rmaps now by length (x86: two roots map
 * every page, so each rmap of a faulted gfn has two SPTEs; stage-2 keeps
 * none), and the directory goes with the space's file, even while a vCPU
 * file keeps the space.
 */
TEST_F(stats, stats_debugfs)
{
	const unsigned long npages = 64;
	unsigned long long rmaps[16];
	char dir[256], line[1024], *p;
	struct secmmu_stats st;
	int fd, vcpu[2], i, n;
	char *mem;

	if (access(DEBUGFS_SECMMU, R_OK))
		SKIP(return, "no %s", DEBUGFS_SECMMU);
	/* A fault per page and vCPU: none mapped around another. */
	fd = space_create(variant->format, 2, SECMMU_CFG_NO_FAULT_AROUND);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(0, space_debugfs_dir(dir, sizeof(dir)));
	mem = mmap(NULL, npages * PAGE_SZ, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, mem);
	ASSERT_EQ(0, set_slot(fd, 0, 0, GPA_BASE, npages * PAGE_SZ, mem));
	for (i = 0; i < 2; i++) {
		vcpu[i] = vcpu_create(fd, i);
		ASSERT_GE(vcpu[i], 0);
		ASSERT_EQ(0, run_range(vcpu[i], SECMMU_RUN_WRITE, GPA_BASE,
				       GPA_BASE + npages * PAGE_SZ, PAGE_SZ, i, NULL));
	}
	st = get_stats(fd);
	EXPECT_EQ(2 * npages, st.faults);
	EXPECT_EQ(st.faults, debugfs_stat(dir, "faults"));
	EXPECT_EQ(st.invalidations, debugfs_stat(dir, "invalidations"));
	EXPECT_EQ(2 * npages, debugfs_stat(dir, "pages_4k"));

	if (variant->format == SECMMU_FMT_X86_EPT4) {
		ASSERT_NE(NULL, debugfs_line(dir, "mmu_rmaps_stat", "4K", line,
					     sizeof(line)));
		TH_LOG("mmu_rmaps_stat: %s", line);
		/* Buckets: 0, 1, 2-3, ...: every rmap holds both roots' SPTE. */
		for (p = line + 3, n = 0; n < 16 && sscanf(p, "%llu%n", &rmaps[n], &i) == 1; n++)
			p += i;
		ASSERT_EQ(16, n);
		EXPECT_EQ(0, rmaps[0]);
		EXPECT_EQ(0, rmaps[1]);
		EXPECT_EQ(npages, rmaps[2]);
		/* The 2M rmaps over them (one or two) are empty. */
		ASSERT_NE(NULL, debugfs_line(dir, "mmu_rmaps_stat", "2M", line, sizeof(line)));
		for (p = line + 3, n = 0; n < 16 && sscanf(p, "%llu%n", &rmaps[n], &i) == 1; n++)
			p += i;
		ASSERT_EQ(16, n);
		EXPECT_GE(rmaps[0], 1);
		for (n = 1; n < 16; n++)
			EXPECT_EQ(0, rmaps[n]);
	} else {
		EXPECT_NE(NULL, debugfs_line(dir, "mmu_rmaps_stat", "no", line,
					     sizeof(line)));
	}

	/* The directory goes with the space's file, not with the space. */
	close(fd);
	snprintf(line, sizeof(line), "%s/stats", dir);
	EXPECT_NE(0, access(line, F_OK));
	EXPECT_NE(0, access(dir, F_OK));
	for (i = 0; i < 2; i++)
		close(vcpu[i]);
	munmap(mem, npages * PAGE_SZ);
}

TEST_HARNESS_MAIN
