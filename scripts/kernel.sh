#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Configure and build (once) a kernel for secmmu from the toolchain root's
# linux-source: allnoconfig + configs/{base,ARCH,VARIANT}.config.
#
# usage: scripts/kernel.sh [x86_64|arm64] [debug|perf]
# Output: the build directory (O=) on stdout.
. "$(dirname "$0")/lib.sh"

arch=${1:-x86_64}
variant=${2:-debug}
cfg=$SECMMU_TOP/configs
for f in base "$arch" "$variant"; do
	[ -f "$cfg/$f.config" ] || die "no config fragment $cfg/$f.config"
done

root=$("$SECMMU_TOP/scripts/toolchain.sh")
srcver=$(sed -n 's/^\(VERSION\|PATCHLEVEL\|SUBLEVEL\) = //p' "$root/usr/src/linux/Makefile" | paste -sd.)
key=$( (cat "$cfg/base.config" "$cfg/$arch.config" "$cfg/$variant.config" \
	"$SECMMU_TOP/scripts/kernel.sh"; echo "$srcver $(toolchain_key)") | sha256sum | cut -c1-16)
out=$SECMMU_CACHE/kernel-$srcver-$arch-$variant-$key
if [ -e "$out/.complete" ]; then
	echo "$out"
	exit 0
fi
# One build of a kernel at a time: a second caller waits for the first.
exec 8>"$SECMMU_CACHE/kernel-$arch-$variant.lock"
flock 8
if [ -e "$out/.complete" ]; then
	echo "$out"
	exit 0
fi

case $arch in
x86_64) karch=x86_64; image=arch/x86/boot/bzImage ;;
arm64) karch=arm64; image=arch/arm64/boot/Image ;;
*) die "unknown arch $arch" ;;
esac

log "building linux $srcver $arch/$variant in $out"
mkdir -p "$out"
cat "$cfg/base.config" "$cfg/$arch.config" "$cfg/$variant.config" > "$out/secmmu.config"
mk() { in_toolchain /usr/src/linux make -s O="$out" ARCH="$karch" LLVM=1 "$@"; }
mk KCONFIG_ALLCONFIG="$out/secmmu.config" allnoconfig >&2
mk olddefconfig >&2

# Every option a fragment names must have the value it asks for: a silently
# dropped option (a new dependency, a renamed symbol) fails the build here.
bad=0
while IFS= read -r line; do
	case $line in CONFIG_*=*) ;; *) continue ;; esac
	opt=${line%%=*}
	want=${line#*=}
	if [ "$want" = n ]; then
		grep -q "^$opt=" "$out/.config" && { log "config: $opt is set, wanted n"; bad=1; }
	else
		grep -qx "$opt=$want" "$out/.config" || {
			log "config: wanted $line, got: $(grep "^$opt=\|# $opt is not set" "$out/.config" || echo absent)"
			bad=1
		}
	fi
done < "$out/secmmu.config"
[ $bad -eq 0 ] || die "kernel config does not match the fragments"

mk -j"$(($(nproc) + 1))" >&2
[ -f "$out/$image" ] || die "no $image after the build"
touch "$out/.complete"
echo "$out"
