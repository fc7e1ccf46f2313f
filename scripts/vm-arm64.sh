#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Boot an arm64 secmmu kernel in qemu-system-aarch64 (TCG: -machine virt,
# -cpu max, 2 vCPUs on 2 NUMA nodes) from a busybox initramfs and run a
# command in it, with a hard timeout. The arm64 counterpart of vm.sh.
#
# usage: scripts/vm-arm64.sh KBUILD_DIR TOP TIMEOUT_S LOG CMD [ARG...]
# TOP is an arm64 build dir (scripts/lib.sh build_dir): its secmmu.ko and
# selftests/ go into the initramfs at their own paths, with the clone's
# guest scripts (selftests/*.sh) and the kernel's test_hmm.ko, so CMD sees
# the same paths as on the host. There is no 9p and no host userland: the
# initramfs holds Debian's busybox-static and mke2fs for arm64, fetched
# once into $SECMMU_CACHE.
# Exit status: 0 when the guest powered off, 124 on timeout. The whole
# console (kernel log and the command's output) is in LOG.
. "$(dirname "$0")/lib.sh"

kdir=$1 top=$2 tmo=$3 logf=$4
shift 4

need_host_pkgs qemu-system-arm cpio
image=$kdir/arch/arm64/boot/Image
[ -f "$image" ] || die "no kernel image $image"
[ -f "$top/secmmu.ko" ] || die "no $top/secmmu.ko"

# The arm64 userland: .debs from the host's mirror (trixie, as the
# toolchain root), unpacked once. Busybox for the utilities; the selftests
# make an ext4 image on a loop device through system(), and busybox has no
# mkfs.ext4 and no "losetup -f --show": e2fsprogs' mke2fs and util-linux's
# losetup (mount), with their libraries. /bin/sh is dash, as on a Debian
# host: Debian's busybox ash prefers its own applets to anything in PATH.
suite=trixie
pkgs="busybox-static dash e2fsprogs mount libc6 libext2fs2t64 libcom-err2 libblkid1 libuuid1
	libmount1 libsmartcols1 libselinux1 libpcre2-8-0"
mirror=$(host_mirror)
ukey=$(echo "$suite $mirror" $pkgs | sha256sum | cut -c1-16)
uroot=$SECMMU_CACHE/arm64-userland-$ukey
if [ ! -e "$uroot/.complete" ]; then
	log "fetching the arm64 userland into $uroot"
	rm -rf "$uroot.tmp"
	mkdir -p "$uroot.tmp"/{apt/lists/partial,apt/cache/archives/partial,debs,root}
	touch "$uroot.tmp/apt/status"
	echo "deb $mirror $suite main" > "$uroot.tmp/apt/sources.list"
	# A private apt state, so the host's own apt (architectures, lists)
	# is left alone.
	aptopts=(-q -o Dir::Etc::SourceList="$uroot.tmp/apt/sources.list"
		-o Dir::Etc::SourceParts=/dev/null -o Dir::Etc::Preferences=/dev/null
		-o Dir::Etc::PreferencesParts=/dev/null
		-o Dir::State="$uroot.tmp/apt" -o Dir::State::Lists="$uroot.tmp/apt/lists"
		-o Dir::State::status="$uroot.tmp/apt/status" -o Dir::Cache="$uroot.tmp/apt/cache"
		-o APT::Architecture=arm64 -o APT::Architectures::=arm64
		-o APT::Sandbox::User=root -o Acquire::Check-Valid-Until=false)
	apt-get "${aptopts[@]}" update >&2
	(cd "$uroot.tmp/debs" && apt-get "${aptopts[@]}" download $pkgs >&2)
	for deb in "$uroot.tmp"/debs/*.deb; do
		dpkg-deb -x "$deb" "$uroot.tmp/root"
	done
	# Usr-merged like Debian; no docs, no locales.
	rm -rf "$uroot.tmp"/root/usr/share "$uroot.tmp"/root/usr/lib/aarch64-linux-gnu/gconv
	for d in bin sbin lib; do
		ln -sfn usr/$d "$uroot.tmp/root/$d"
	done
	ln -sfn dash "$uroot.tmp/root/usr/bin/sh"
	rm -rf "$uroot.tmp/apt" "$uroot.tmp/debs"
	touch "$uroot.tmp/.complete"
	rm -rf "$uroot"
	mv "$uroot.tmp" "$uroot"
	# Userlands of older inputs are dead weight now.
	for old in "$SECMMU_CACHE"/arm64-userland-*; do
		case $old in "$uroot" | *.tmp) ;; *) rm -rf "$old" ;; esac
	done
fi

# The initramfs of this run: the userland, the files CMD needs, an /init
# that runs CMD on the console and powers off.
work=$(mktemp -d /tmp/secmmu-arm64-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
ir=$work/root
cp -a "$uroot/root" "$ir"
mkdir -p "$ir"/{proc,sys,dev,tmp,root,etc}
mkdir -p "$ir$top/selftests" "$ir$SECMMU_TOP/selftests"
cp "$top/secmmu.ko" "$ir$top/"
find "$top/selftests" -maxdepth 1 -type f -perm -u+x -exec cp {} "$ir$top/selftests/" \;
cp "$SECMMU_TOP"/selftests/guest-*.sh "$ir$SECMMU_TOP/selftests/"
if [ -f "$kdir/lib/test_hmm.ko" ]; then
	mkdir -p "$ir$kdir/lib"
	cp "$kdir/lib/test_hmm.ko" "$ir$kdir/lib/"
fi
cmd=$(printf '%q ' "$@")
cat > "$ir/init" <<EOF
#!/bin/sh
# secmmu arm64 guest init (written by scripts/vm-arm64.sh)
/usr/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
# No tmpfs on /tmp: the initramfs is in memory already, and the clone (with
# the files CMD needs) may live under /tmp on the host.
echo "secmmu-init: running $cmd"
cd /root
$cmd
echo "secmmu-init: command exited with \$?"
sync
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

# Guest memory (SECMMU_VM_MEM, in G), split over the two nodes.
mem=${SECMMU_VM_MEM:-4G}
half=$((${mem%G} / 2))G
# hugetlbfs pages for the huge-mapping tests (hugetlb_map): 1G and a few
# 2M, reserved at boot while memory is not fragmented yet.
hugepages="hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=8"
# pauth-impdef: QEMU's own pointer-authentication hash, far cheaper under
# TCG than the architected QARMA. One CPU per socket, one socket per node,
# as on x86 (a cluster across nodes trips the topology sanity check).
qemu=(qemu-system-aarch64 -machine virt,gic-version=3 -cpu max,pauth-impdef=on,lpa2=off
	-accel tcg,thread=multi -smp 2,sockets=2,cores=1,threads=1 -m "$mem"
	-object memory-backend-ram,id=m0,size="$half" -object memory-backend-ram,id=m1,size="$half"
	-numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1
	-kernel "$image" -initrd "$work/initrd.gz"
	-append "console=ttyAMA0 rdinit=/init kunit.enable=1 panic=-1 oops=panic softlockup_panic=0 $hugepages ${SECMMU_APPEND:-}"
	-display none -monitor none -serial stdio -no-reboot)

log "booting $(basename "$kdir") (qemu-system-aarch64, TCG), timeout ${tmo}s"
set +e
# setsid + timeout: a hung guest is killed with its whole process group.
timeout --kill-after=15 "$tmo" setsid "${qemu[@]}" </dev/null > "$logf" 2>&1
rc=$?
set -e
[ $rc -eq 124 ] && log "VM run timed out after ${tmo}s"
exit $rc
