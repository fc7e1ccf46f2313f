#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build secmmu.ko against a kernel build directory, in the toolchain root,
# into build/ARCH (Kbuild MO=), so an x86_64 and an arm64 build coexist.
# Also the lint that needs the kernel tree: clippy (into build/ARCH-clippy).
#
# usage: scripts/module.sh KBUILD_DIR [--clippy|--notrace]
# --notrace builds, into build/ARCH-notrace, a secmmu.ko without its trace
# events: the trace benchmark's baseline.
. "$(dirname "$0")/lib.sh"

kdir=$1
mode=${2:-}
karch=x86_64
grep -q '^CONFIG_ARM64=y' "$kdir/.config" && karch=arm64
out=$(build_dir $karch)

mk() { in_toolchain "$SECMMU_TOP" make KDIR="$kdir" ARCH=$karch LLVM=1 "$@"; }

# Kbuild refuses MO= builds while an in-place build (make KDIR=... by hand)
# has left its modules.order next to the sources: clean that one first.
[ -f "$SECMMU_TOP/modules.order" ] && mk -s clean >&2

if [ "$mode" = --clippy ]; then
	# A clean clippy build: every warning is an error for the test command.
	mk -s MO="$out-clippy" clean >&2
	res=$(mk MO="$out-clippy" CLIPPY=1 2>&1) || {
		echo "$res" >&2
		die "clippy build failed"
	}
	if echo "$res" | grep -qE '^(warning|error)'; then
		echo "$res" | grep -A12 -E '^(warning|error)' >&2
		die "clippy or rustc warnings"
	fi
	exit 0
fi

if [ "$mode" = --notrace ]; then
	out=$out-notrace
	mk() { in_toolchain "$SECMMU_TOP" make KDIR="$kdir" ARCH=$karch LLVM=1 SECMMU_NOTRACE=1 "$@"; }
fi
res=$(mk -s MO="$out" 2>&1) || {
	echo "$res" >&2
	die "module build failed"
}
[ -n "$res" ] && echo "$res" >&2
[ -f "$out/secmmu.ko" ] || die "secmmu.ko was not built in $out"
# objtool's warnings (e.g. a call it does not know cannot return, so code
# "falls through" into the next function) are errors here: the kernel
# build would print them for every user of the module.
if echo "$res" | grep -q 'objtool:'; then
	die "objtool warnings in the module build"
fi
