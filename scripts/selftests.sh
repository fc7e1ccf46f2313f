#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the selftests (static binaries) in the toolchain root.
# usage: scripts/selftests.sh [x86_64|arm64]
. "$(dirname "$0")/lib.sh"
arch=${1:-x86_64}
cc=gcc
[ "$arch" = arm64 ] && cc=aarch64-linux-gnu-gcc
in_toolchain "$SECMMU_TOP/selftests" make -s CC=$cc KSFT=/usr/src/linux/tools/testing/selftests >&2
