#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Print the kernel splats in a console log; exit 1 if there is any once
# the guest's test script started (its first line, "# kernel ..."). A
# splat fails a run even when every test passed. Splats while the test
# kernel boots are printed but not counted: they are the kernel's own,
# before secmmu is loaded (seen: under TCG an early IRQ once in a few
# boots trips KASAN in handle_edge_irq() during identify_cpu()). A log
# without that line (a boot that never got there) counts everything.
# usage: scripts/splats.sh LOG
pat='WARNING:|BUG:|BUG kmalloc|KASAN:|UBSAN:|KFENCE:|Oops|general protection fault|Kernel panic|'
pat+='possible circular locking|possible recursive locking|inconsistent lock state|'
pat+='suspicious RCU usage|lockdep: |DEBUG_LOCKS_WARN_ON|detected stall|stalls on CPUs|soft lockup|'
pat+='blocked for more than|unreferenced object|Call Trace:|list_add corruption|list_del corruption'
# The lines of $1 that match $pat, numbered as by grep -n. The OOM
# killer's report (dump_header() in mm/oom_kill.c) dumps the stack of the
# task that invoked it, by design: that "Call Trace:" (x86's; arm64 prints
# "Call trace:") is not a splat and is dropped. The report's other lines
# match nothing. secmmu_oom_test makes such reports.
matches() {
	grep -anE "$pat|invoked oom-killer:" "$1" | awk -F: '
		/invoked oom-killer:/ { oom = $1; next }
		oom && $1 - oom <= 8 && /Call Trace:/ { oom = 0; next }
		{ print }'
}
start=$(grep -anm1 '^# kernel ' "$1" | cut -d: -f1)
start=${start:-0}
boot=$(matches "$1" | awk -F: -v s="$start" '$1 < s' | head -n 20)
if [ -n "$boot" ]; then
	echo "splats while the test kernel booted in $1 (not counted):"
	echo "$boot" | sed 's/^/  /'
fi
if matches "$1" | grep -v 'SECMMU-RESULT' |
	awk -F: -v s="$start" '$1 >= s' > /tmp/secmmu-splats.$$ && [ -s /tmp/secmmu-splats.$$ ]; then
	echo "kernel splats in $1:"
	sed 's/^/  /' /tmp/secmmu-splats.$$ | head -n 40
	rm -f /tmp/secmmu-splats.$$
	exit 1
fi
rm -f /tmp/secmmu-splats.$$
exit 0
