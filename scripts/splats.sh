#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Print the kernel splats in a console log; exit 1 if there is any.
# A splat fails a run even when every test passed.
# usage: scripts/splats.sh LOG
pat='WARNING:|BUG:|BUG kmalloc|KASAN:|UBSAN:|KFENCE:|Oops|general protection fault|Kernel panic|'
pat+='possible circular locking|possible recursive locking|inconsistent lock state|'
pat+='suspicious RCU usage|lockdep: |DEBUG_LOCKS_WARN_ON|detected stall|stalls on CPUs|soft lockup|'
pat+='blocked for more than|unreferenced object|Call Trace:|list_add corruption|list_del corruption'
if grep -nE "$pat" "$1" | grep -v 'SECMMU-RESULT' > /tmp/secmmu-splats.$$; then
	echo "kernel splats in $1:"
	sed 's/^/  /' /tmp/secmmu-splats.$$ | head -n 40
	rm -f /tmp/secmmu-splats.$$
	exit 1
fi
rm -f /tmp/secmmu-splats.$$
exit 0
