#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the selftests (static binaries) in the toolchain root, into
# build/ARCH/selftests so the x86_64 and arm64 binaries coexist.
# usage: scripts/selftests.sh [x86_64|arm64]
. "$(dirname "$0")/lib.sh"
arch=${1:-x86_64}
cc=gcc
[ "$arch" = arm64 ] && cc=aarch64-linux-gnu-gcc
in_toolchain "$SECMMU_TOP/selftests" make -s CC=$cc OUT="$(build_dir "$arch")/selftests" \
	KSFT=/usr/src/linux/tools/testing/selftests >&2
