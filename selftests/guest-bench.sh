#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the perf VM: load secmmu and the HMM test driver, run the
# benchmarks.  usage: guest-bench.sh TOP KBUILD_DIR
top=$1 kdir=$2
insmod "$top/secmmu.ko" || exit 1
insmod "$kdir/lib/test_hmm.ko" || exit 1
echo "== bench: $(uname -r), $(nproc) vCPUs, $(grep MemTotal /proc/meminfo)"
"$top/selftests/secmmu_bench" "${SECMMU_BENCH_MIB:-1024}"
rc=$?
echo "SECMMU-BENCH-EXIT $rc"
