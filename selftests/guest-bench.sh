#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the perf VM: load secmmu and the HMM test driver, run the
# benchmarks.  usage: guest-bench.sh TOP KBUILD_DIR [BENCHES [LABEL]]
# (TOP: a build dir: TOP/secmmu.ko, TOP/selftests/, and TOP-notrace/secmmu.ko
# built without trace events; BENCHES: some of
# "dmirror fault huge aging gpc dirty trace prefault", default all; LABEL: names the build in the
# first line, when one VM runs several)
top=$1 kdir=$2 only=${3:-all} label=${4:+ [$4]}
want() { [ "$only" = all ] || case " $only " in *" $1 "*) ;; *) false ;; esac; }
rc=0
insmod "$top/secmmu.ko" || exit 1
insmod "$kdir/lib/test_hmm.ko" || exit 1
echo "== bench$label: $(uname -r), $(nproc) vCPUs, $(grep MemTotal /proc/meminfo)"
if want dmirror; then
	"$top/selftests/secmmu_bench" "${SECMMU_BENCH_MIB:-1024}" || rc=1
fi

# Parallel faults: arm64 stage-2 (read-lock faults) vs x86 (write lock).
if want fault; then
	echo "== bench: parallel fault-in, arm64 vs x86 format"
	"$top/selftests/secmmu_fault_bench" "${SECMMU_BENCH_MIB:-1024}" || rc=1
fi

# Huge mappings: THP-backed vs THP-disabled fault-in, both formats.
if want huge; then
	echo "== bench: fault-in of THP-backed vs 4K memory (targets: >= 100x fewer"
	echo "   faults and >= 10x less time with huge mappings)"
	"$top/selftests/secmmu_huge_bench" "${SECMMU_BENCH_MIB:-1024}" || rc=1
fi

# Dirty logging: enabling, harvesting, split on fault, both formats.
if want dirty && [ -x "$top/selftests/secmmu_dirty_bench" ]; then
	echo "== bench: dirty logging (target: enabling >= 20x faster with"
	echo "   INITIALLY_SET; harvest and clear times per GiB)"
	"$top/selftests/secmmu_dirty_bench" "${SECMMU_BENCH_MIB:-1024}" || rc=1
fi

# Pre-fault (SECMMU_PRE_FAULT_MEMORY) against demand faults, both formats.
if want prefault && [ -x "$top/selftests/secmmu_prefault_bench" ]; then
	echo "== bench: pre-fault vs demand faults of 4K memory (target: pre-fault"
	echo "   >= 3x faster)"
	"$top/selftests/secmmu_prefault_bench" "${SECMMU_BENCH_MIB:-1024}" || rc=1
fi

# Aging: lockless (default) and under the MMU lock, same kernel, same run.
if want aging; then
	echo "== bench: aging while a vCPU faults (targets: lockless >= 90% of the"
	echo "   vCPU's rate alone, and better than locked on both figures; under TCG"
	echo "   a busy CPU 1 slows CPU 0 on a host without a spare core, so the rate"
	echo "   is also given against CPU 1 spinning in user space)"
	for locked in 0 1; do
		rmmod secmmu
		insmod "$top/secmmu.ko" aging_locked=$locked || rc=1
		label=lockless
		[ $locked = 1 ] && label=locked
		"$top/selftests/secmmu_aging_bench" $label "${SECMMU_AGING_SECS:-6}" || rc=1
	done
fi

# Guest page cache refreshes under an unrelated MADV_DONTNEED storm: the
# range retry rule, then KVM 7.3's (module parameter), same kernel, same run.
if want gpc && [ -x "$top/selftests/secmmu_gpc_bench" ]; then
	echo "== bench: gpc: guest page cache refresh while another thread"
	echo "   MADV_DONTNEEDs (or mprotects) unrelated memory (target: p99 >= 10x"
	echo "   lower with the range rule than with KVM 7.3's), and a timer's misses"
	out=
	for any in 0 1; do
		rmmod secmmu
		insmod "$top/secmmu.ko" gpc_any_invalidation=$any || rc=1
		label=range
		[ $any = 1 ] && label=kvm-7.3
		for storm in dontneed dontneed1 dontneed-shared mprotect; do
			o=$("$top/selftests/secmmu_gpc_bench" $label \
				"${SECMMU_GPC_REFRESHES:-20000}" $storm) || rc=1
			echo "$o"
			out="$out$o
"
		done
	done
	echo "$out" | awk '/refresh:/ { p99[$3 " " $2] = $9 }
		END { for (s in p99) { split(s, k, " "); if (k[2] == "range" && p99[k[1] " range"] > 0)
			printf "gpc refresh p99 under the %s storm, kvm-7.3 / range: %.1fx\n",
			       k[1], p99[k[1] " kvm-7.3"] / p99[k[1] " range"] } }'
fi
# Trace events: compiled in but disabled against compiled out, and on,
# in turns in the same boot; best of the rounds for each build.
if want trace && [ -f "$top-notrace/secmmu.ko" ]; then
	echo "== bench: trace events compiled in but disabled vs compiled out"
	echo "   (target: within 2%), and with every secmmu event on; the figures"
	echo "   are secmmu_bench's, per page, best of ${SECMMU_TRACE_ROUNDS:-3} rounds"
	tr=/sys/kernel/tracing
	[ -d $tr/events ] || mount -t tracefs nodev $tr 2>/dev/null
	out=
	for round in $(seq "${SECMMU_TRACE_ROUNDS:-3}"); do
		for build in out disabled on; do
			rmmod secmmu
			ko=$top/secmmu.ko
			[ $build = out ] && ko=$top-notrace/secmmu.ko
			insmod "$ko" || rc=1
			[ $build = on ] && echo 1 > $tr/events/secmmu/enable
			o=$("$top/selftests/secmmu_bench" "${SECMMU_BENCH_MIB:-256}") || rc=1
			[ $build = on ] && echo 0 > $tr/events/secmmu/enable
			out="$out$(echo "$o" | sed -n \
				-e "s/^fault-in, RUN 4K stride (no copy) *\([0-9.]*\) ns.*/$build run \1/p" \
				-e "s/^fault-in + copy (ACCESS\/READ) *\([0-9.]*\) ns.*/$build access \1/p" \
				-e "s/^zap after RUN (munmap) *\([0-9.]*\) ns.*/$build zap \1/p")
"
		done
	done
	rmmod secmmu
	insmod "$top/secmmu.ko" || rc=1
	echo "$out" | awk 'NF == 3 { k = $1 " " $2; if (!(k in b) || $3 < b[k]) b[k] = $3 }
		END {
			printf "%-28s %12s %12s %9s %12s %9s\n", "ns per page", "compiled out",
			       "disabled", "dis/out", "on", "on/out"
			split("run access zap", m, " ")
			name["run"] = "fault-in, RUN 4K stride"
			name["access"] = "fault-in + copy (ACCESS)"
			name["zap"] = "zap after RUN (munmap)"
			for (i = 1; i <= 3; i++) {
				o = b["out " m[i]]; d = b["disabled " m[i]]; n = b["on " m[i]]
				if (o > 0)
					printf "%-28s %12.1f %12.1f %8.3fx %12.1f %8.3fx\n",
					       name[m[i]], o, d, d / o, n, n / o
			}
		}'
fi
echo "SECMMU-BENCH-EXIT $rc"
