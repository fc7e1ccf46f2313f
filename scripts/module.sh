#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build secmmu.ko and the selftests against a kernel build directory, in the
# toolchain root. Also the lint that needs the kernel tree: clippy.
#
# usage: scripts/module.sh KBUILD_DIR [--clippy]
. "$(dirname "$0")/lib.sh"

kdir=$1
clippy=${2:-}
case $(grep -c '^CONFIG_ARM64=y' "$kdir/.config") in
1) karch=arm64 ;;
*) karch=x86_64 ;;
esac

if [ "$clippy" = --clippy ]; then
	# A clean clippy build: every warning is an error for the test command.
	in_toolchain "$SECMMU_TOP" make -s KDIR="$kdir" ARCH=$karch LLVM=1 clean >&2
	out=$(in_toolchain "$SECMMU_TOP" make KDIR="$kdir" ARCH=$karch LLVM=1 CLIPPY=1 2>&1) || {
		echo "$out" >&2
		die "clippy build failed"
	}
	if echo "$out" | grep -qE '^(warning|error)'; then
		echo "$out" | grep -A12 -E '^(warning|error)' >&2
		die "clippy or rustc warnings"
	fi
	exit 0
fi

in_toolchain "$SECMMU_TOP" make -s KDIR="$kdir" ARCH=$karch LLVM=1 >&2
[ -f "$SECMMU_TOP/secmmu.ko" ] || die "secmmu.ko was not built"
