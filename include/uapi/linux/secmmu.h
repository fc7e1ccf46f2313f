/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * secmmu: a secondary MMU as a misc device.
 *
 * One open file of /dev/secmmu is one "space": a set of secondary page
 * tables bound, through an mmu_notifier, to the mm of the process that
 * opened it. Every ioctl must come from that mm; from any other mm it
 * fails with -EIO, and so does every ioctl after the mm went away.
 */
#ifndef _UAPI_LINUX_SECMMU_H
#define _UAPI_LINUX_SECMMU_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define SECMMU_API_VERSION	1

#define SECMMUIO		0xB5

/*
 * SECMMU_GET_API_VERSION: returns SECMMU_API_VERSION as the ioctl's
 * return value. Takes no argument.
 */
#define SECMMU_GET_API_VERSION	_IO(SECMMUIO, 0x00)

/*
 * SECMMU_GET_STATS: event counters of the space. Counters only grow; the
 * reserved tail reads as zero and takes counters of later API versions.
 */
struct secmmu_stats {
	__u64 invalidations;		/* invalidate_range_start() calls */
	__u64 invalidations_nonblock;	/* ... of which could not sleep */
	__u64 invalidated_pages;	/* 4K pages they covered */
	__u64 reserved[29];
};

#define SECMMU_GET_STATS	_IOR(SECMMUIO, 0x01, struct secmmu_stats)

#endif /* _UAPI_LINUX_SECMMU_H */
