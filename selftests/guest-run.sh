#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the test VM as root: load secmmu, collect its KUnit results,
# run the selftests, unload, scan for leaks. Every test's verdict is printed
# as one "SECMMU-RESULT pass|fail|skip NAME" line for the host to count;
# the host fails the run if "SECMMU-DONE" never comes (crash or timeout).
#
# Plain POSIX sh and busybox-level tools: runs on the host's userland
# (virtme-ng, x86_64) and in the arm64 initramfs of scripts/vm-arm64.sh
# (dash and busybox; busybox ash works too).
#
# usage: guest-run.sh TOP   (TOP: a build dir as the guest sees it, with
#                            TOP/secmmu.ko and TOP/selftests/; see
#                            scripts/lib.sh build_dir. A clone with an
#                            in-place build is one too.)
top=$1
ko=$top/secmmu.ko
# Test sizes divided by this (slow guests: arm64 under TCG), for the tests.
export SECMMU_TEST_SCALE=${SECMMU_TEST_SCALE:-1}

result() { echo "SECMMU-RESULT $1 $2"; }

mount -t debugfs none /sys/kernel/debug 2>/dev/null
echo "# kernel $(uname -r) $(uname -m), $(nproc) cpus, preempt: $(cat /sys/kernel/debug/sched/preempt 2>/dev/null)"
echo "# test sizes: 1/$SECMMU_TEST_SCALE"

# Start from a clean leak report: boot-time objects are not ours.
[ -w /sys/kernel/debug/kmemleak ] && echo clear > /sys/kernel/debug/kmemleak

if insmod "$ko"; then
	result pass insmod
else
	result fail insmod
	echo SECMMU-DONE
	exit 0
fi

# KUnit: run the module's suite through debugfs (the kernel's config does
# not autorun suites at load); its KTAP results are in debugfs.
if [ -w /sys/kernel/debug/kunit/secmmu/run ]; then
	echo 1 > /sys/kernel/debug/kunit/secmmu/run
	sed 's/^/# kunit: /' /sys/kernel/debug/kunit/secmmu/results
	sed -n 's/^    \(not ok\|ok\) [0-9]* \([^ #]*\).*$/\1 \2/p' \
		/sys/kernel/debug/kunit/secmmu/results |
	while read -r a b c; do
		if [ "$a" = ok ]; then result pass "kunit.$b"; else result fail "kunit.$c"; fi
	done
else
	result fail kunit.results-missing
fi

# The selftests (kselftest harness, TAP). A binary that dies before its
# plan is complete is one failure. SECMMU_SELFTESTS picks binaries and
# SECMMU_KSFT_ARGS harness options (-r FIXTURE.VARIANT.TEST, -f, -t) for a
# partial run (scripts/vm-test).
for t in ${SECMMU_SELFTESTS:-secmmu_test secmmu_mmu_test secmmu_aging_test secmmu_gpc_test secmmu_dirty_test secmmu_stats_test secmmu_prefault_test secmmu_stress secmmu_fail_nth secmmu_oom_test}; do
	t0=$(date +%s)
	# shellcheck disable=SC2086 # word splitting of the options is wanted
	SECMMU_KO=$ko "$top/selftests/$t" ${SECMMU_KSFT_ARGS:-} > /tmp/$t.tap 2>&1
	echo "# $t exited with $? after $(($(date +%s) - t0)) s"
	cat /tmp/$t.tap
	planned=$(sed -n 's/^1\.\.\([0-9]*\)$/\1/p' /tmp/$t.tap)
	seen=$(grep -cE '^(not )?ok [0-9]+ ' /tmp/$t.tap)
	[ "${planned:-0}" = "$seen" ] && [ "$seen" != 0 ] || result fail "$t.incomplete"
	sed -n 's/^\(not ok\|ok\) [0-9]* \(.*\)$/\1 \2/p' /tmp/$t.tap |
	while read -r a b c; do
		case "$a $b $c" in
		"ok "*"# SKIP"*) result skip "$t.$(echo "$b" | cut -d' ' -f1)" ;;
		"ok "*) result pass "$t.$b" ;;
		*) result fail "$t.$c" ;;
		esac
	done
done

if rmmod secmmu; then result pass rmmod; else result fail rmmod; fi

# kmemleak reports objects unreferenced for at least 5 s, after a scan.
if [ -w /sys/kernel/debug/kmemleak ]; then
	sleep 6
	echo scan > /sys/kernel/debug/kmemleak
	echo scan > /sys/kernel/debug/kmemleak
	if [ -s /sys/kernel/debug/kmemleak ]; then
		cat /sys/kernel/debug/kmemleak
		result fail kmemleak
	else
		result pass kmemleak
	fi
fi
echo SECMMU-DONE
