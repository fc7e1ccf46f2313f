#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build (once) the Debian trixie root with trixie-backports that holds the
# kernel source and the Rust-for-Linux toolchain: rustc, rust-src, bindgen,
# clang/lld, rustfmt, clippy. The mirror is the one the host's apt uses.
# Output: the root's path on stdout.
. "$(dirname "$0")/lib.sh"

root=$(toolchain_root)
if [ -e "$root/.complete" ]; then
	echo "$root"
	exit 0
fi

need_host_pkgs mmdebstrap
mirror=$(host_mirror)
pkgs=$(grep -v '^#' "$TOOLCHAIN_PKGS" | paste -sd, -)
rm -rf "$root.tmp"
log "creating toolchain root $root from $mirror (trixie + trixie-backports)"
# Backports are preferred (Default-Release), so rustc, bindgen and
# linux-source come from the same backports snapshot and match each other.
mmdebstrap --variant=apt --mode=root --format=directory \
	--aptopt='Acquire::Check-Valid-Until "false"' \
	--aptopt='APT::Default-Release "trixie-backports"' \
	--aptopt='APT::Install-Recommends "false"' \
	--include="$pkgs" \
	trixie "$root.tmp" \
	"deb $mirror trixie main" \
	"deb $mirror trixie-updates main" \
	"deb $mirror trixie-backports main" >&2
# Unpack the kernel source once, next to the root, as the build's source tree.
tarball=$(ls "$root.tmp"/usr/src/linux-source-*.tar.* | head -n1)
mkdir -p "$root.tmp/usr/src/linux"
tar -xf "$tarball" -C "$root.tmp/usr/src/linux" --strip-components=1
rm -f "$tarball"
touch "$root.tmp/.complete"
mv "$root.tmp" "$root"
echo "$root"
