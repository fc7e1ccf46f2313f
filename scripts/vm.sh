#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Boot a secmmu kernel with virtme-ng on the host's own userland and run a
# command in it, with a hard timeout. 2 vCPUs, 2 NUMA nodes.
#
# usage: scripts/vm.sh KBUILD_DIR TIMEOUT_S LOG CMD [ARG...]
# Exit status: the command's, or 124 on timeout. The whole console (kernel
# log and the command's output) is in LOG.
#
# The cache (kernel builds: test_hmm.ko) is visible read-only in the guest;
# virtme-ng overlays /var with a tmpfs otherwise.
# One CPU per socket, one socket per node: two CPUs of one socket on two
# nodes would trip the scheduler's topology sanity WARN at boot.
# KUnit suites run at module load (kunit.enable=1).
#
# KVM is used only where a probe boot shows it works (SECMMU_KVM=auto, the
# default; 0 or 1 force it): on some hosts /dev/kvm exists but guests hang.
. "$(dirname "$0")/lib.sh"

kdir=$1 tmo=$2 logf=$3
shift 3

need_host_pkgs qemu-system-x86 kmod busybox-static
command -v vng >/dev/null || {
	log "installing virtme-ng"
	pip install -q virtme-ng==1.42 >&2
}
image=$kdir/arch/x86/boot/bzImage
[ -f "$image" ] || die "no kernel image $image"

# Guest memory (SECMMU_VM_MEM, in G), split over the two nodes.
mem=${SECMMU_VM_MEM:-4G}
half=$((${mem%G} / 2))G
# hugetlbfs pages for the huge-mapping tests (hugetlb_map): 1G and a few
# 2M, reserved at boot while memory is not fragmented yet.
hugepages="hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=8"

vng_run() {
	local t=$1; shift
	# setsid + timeout: a hung guest is killed with its whole process group.
	timeout --kill-after=15 "$t" setsid vng --run "$image" --disable-microvm --force-9p \
		--cpus 2,sockets=2,cores=1,threads=1 --memory "$mem" \
		--numa "$half",cpus=0 --numa "$half",cpus=1 \
		--rodir="$SECMMU_CACHE" --verbose --append "kunit.enable=1 panic=-1 oops=panic softlockup_panic=0 $hugepages ${SECMMU_APPEND:-}" \
		"$@" </dev/null
}

kvm_ok() {
	case ${SECMMU_KVM:-auto} in
	0) return 1 ;;
	1) return 0 ;;
	esac
	[ -w /dev/kvm ] || return 1
	local stamp=/run/secmmu-kvm-probe
	if [ ! -f $stamp ]; then
		if vng_run 40 --exec "echo secmmu-kvm-probe-ok" 2>&1 | grep -q secmmu-kvm-probe-ok; then
			echo 1 > $stamp
		else
			echo 0 > $stamp
		fi
	fi
	[ "$(cat $stamp)" = 1 ]
}

accel=--disable-kvm
kvm_ok && accel=
mode=KVM; [ -n "$accel" ] && mode=TCG
log "booting $(basename "$kdir") ($mode), timeout ${tmo}s"
set +e
# SECMMU_QEMU_OPTS: more QEMU options, e.g. "-icount shift=0" to make the
# guest's clock count instructions (1 ns each): code-path lengths compared
# without the host's noise (the vCPUs then run in turns).
vng_run "$tmo" $accel ${SECMMU_QEMU_OPTS:+--qemu-opts="$SECMMU_QEMU_OPTS"} --exec "$*" > "$logf" 2>&1
rc=$?
set -e
[ $rc -eq 124 ] && log "VM run timed out after ${tmo}s"
exit $rc
