#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the VM: load secmmu, run the demo workload, show what the
# MMU did, unload.  usage: guest-demo.sh TOP
# (TOP: a build dir: TOP/secmmu.ko, TOP/selftests/)
top=$1
insmod "$top/secmmu.ko" || exit 1
echo "== secmmu loaded: $(ls -l /dev/secmmu)"
"$top/selftests/secmmu_demo"
rc=$?
rmmod secmmu
echo "== kernel log of the module:"
dmesg | grep -E "\] secmmu: " | tail -n 20
echo "SECMMU-DEMO-EXIT $rc"
