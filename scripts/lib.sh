# SPDX-License-Identifier: GPL-2.0
# Common helpers for secmmu's build, boot and test scripts. Sourced, not run.
#
# Every cache lives outside the clone under $SECMMU_CACHE, in a directory
# named by a hash of its inputs, so a warm machine reuses it and a change of
# input (package list, config fragment, source version) builds a new one.

set -euo pipefail

SECMMU_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECMMU_CACHE=${SECMMU_CACHE:-/var/cache/secmmu}
mkdir -p "$SECMMU_CACHE"

log() { printf '[secmmu] %s\n' "$*" >&2; }
die() { printf '[secmmu] error: %s\n' "$*" >&2; exit 1; }

# hash_of FILE... : a short stable key of the given files' contents.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# phase NAME CMD... : run CMD, print how long it took, keep the timing in
# $SECMMU_PHASES so the top-level scripts can print a summary.
SECMMU_PHASES=${SECMMU_PHASES:-}
phase() {
	local name=$1; shift
	local t0 t1
	t0=$(date +%s)
	log "phase $name: start"
	"$@"
	t1=$(date +%s)
	log "phase $name: $((t1 - t0)) s"
	SECMMU_PHASES+="$name=$((t1 - t0))s "
}

# need_host_pkgs PKG... : install Debian packages on the host if missing.
need_host_pkgs() {
	local missing=()
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing host packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || true
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# host_mirror : the Debian archive URI the host's own apt sources use.
host_mirror() {
	local uri
	uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '/^URIs:/ {u=$2} /^Suites:/ && u !~ /security/ && $0 !~ /security/ {print u; exit}')
	if [ -z "$uri" ]; then
		uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			grep -v security | awk '{print $2; exit}')
	fi
	[ -n "$uri" ] || die "cannot find a Debian mirror in the host's apt sources"
	echo "$uri"
}

# build_dir ARCH : where secmmu.ko (Kbuild MO=) and selftests/ of one arch
# are built, so x86_64 and arm64 builds of one clone live side by side. The
# guest scripts take it as their TOP: TOP/secmmu.ko, TOP/selftests/.
build_dir() { echo "$SECMMU_TOP/build/$1"; }

# The toolchain root: see scripts/toolchain.sh.
TOOLCHAIN_PKGS=$SECMMU_TOP/scripts/toolchain.pkgs
toolchain_key() { hash_of "$TOOLCHAIN_PKGS" "$SECMMU_TOP/scripts/toolchain.sh"; }
toolchain_root() { echo "$SECMMU_CACHE/toolchain-$(toolchain_key)"; }

# in_toolchain DIR CMD... : run CMD in directory DIR (a path as seen inside
# the root) of the toolchain root, with the clone and the cache bind-mounted
# at their own paths, in a private mount namespace so no mount outlives the
# command.
in_toolchain() {
	local dir=$1; shift
	local root
	root=$(toolchain_root)
	[ -x "$root/usr/bin/rustc" ] || die "toolchain root missing: run scripts/toolchain.sh"
	unshare -m --propagation private bash -euc '
		root=$1; shift; dir=$1; shift
		mount -t proc proc "$root/proc"
		mount --rbind /dev "$root/dev"
		mount -t tmpfs tmpfs "$root/tmp"
		for d in "'"$SECMMU_TOP"'" "'"$SECMMU_CACHE"'"; do
			mkdir -p "$root$d"
			mount --bind "$d" "$root$d"
		done
		exec chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
			LANG=C.UTF-8 bash -euc "cd \"\$0\" && exec \"\$@\"" "$dir" "$@"
	' secmmu-chroot "$root" "$dir" "$@"
}

# prune_kernels KEEP_DIR : remove kernel builds of the same arch and variant
# as KEEP_DIR made from older inputs (dead weight once KEEP_DIR exists).
prune_kernels() {
	local keep=$1 old tag
	tag=$(basename "$keep" | sed 's/^kernel-[^-]*-\([a-z0-9_]*-[a-z]*\)-.*$/\1/')
	for old in "$SECMMU_CACHE"/kernel-*-"$tag"-*; do
		[ -e "$old" ] && [ "$old" != "$keep" ] && rm -rf "$old"
	done
	return 0
}
