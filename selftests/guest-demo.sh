#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the VM: load secmmu, run the demo workload with secmmu's
# trace events on, show what the MMU did, unload.  usage: guest-demo.sh TOP
# (TOP: a build dir: TOP/secmmu.ko, TOP/selftests/)
top=$1
tr=/sys/kernel/tracing
insmod "$top/secmmu.ko" || exit 1
echo "== secmmu loaded: $(ls -l /dev/secmmu)"
# The events go to a tracefs instance of their own (a kernel without
# CONFIG_TRACING has none: the demo runs without them).
[ -d $tr/events ] || mount -t tracefs nodev $tr 2>/dev/null
inst=
if [ -d $tr/events/secmmu ] && mkdir $tr/instances/secmmu_demo 2>/dev/null; then
	inst=$tr/instances/secmmu_demo
	echo 16384 > $inst/buffer_size_kb
	echo 1 > $inst/events/secmmu/enable
fi
"$top/selftests/secmmu_demo"
rc=$?
if [ -n "$inst" ]; then
	echo 0 > $inst/tracing_on
	echo "== trace events of the run, by event (tracefs: events/secmmu):"
	grep -o ' secmmu_[a-z_]*:' $inst/trace | sort | uniq -c
	echo "== faults by outcome:"
	grep ' secmmu_fault:' $inst/trace | awk '{ print $NF }' | sort | uniq -c
	echo "== invalidations by cause:"
	grep ' secmmu_invalidate_range_start:' $inst/trace |
		awk '{ print $NF }' | sort | uniq -c
	echo "== a few of them:"
	grep -E ' secmmu_(invalidate_range_start|zap|tlb_flush|split|age):' \
		$inst/trace | head -n 12
	echo 0 > $inst/events/secmmu/enable
	rmdir $inst
fi
rmmod secmmu
echo "== kernel log of the module:"
dmesg | grep -E "\] secmmu: " | tail -n 20
echo "SECMMU-DEMO-EXIT $rc"
