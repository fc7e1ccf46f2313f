# SPDX-License-Identifier: GPL-2.0
#
# Out-of-tree build of secmmu against a configured and built Rust-enabled
# kernel tree:   make KDIR=/path/to/linux-build LLVM=1
# Lint:          make KDIR=... LLVM=1 CLIPPY=1
# Objects and secmmu.ko go next to the sources, or into MO=DIR (Linux 6.13+),
# so builds for several kernels or arches can live side by side; Kbuild
# refuses MO= while an in-place build's modules.order is there ("make clean").
# Tests, VM, benchmarks, soak: see README.md (scripts/test-all, scripts/demo,
# scripts/bench, scripts/soak).

KDIR ?= /lib/modules/$(shell uname -r)/build
MO ?=

all: modules

modules clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(if $(MO),MO=$(abspath $(MO))) $@

.PHONY: all modules clean

# Benchmarks on the perf kernel, in one VM run (see scripts/bench);
# BASE=REV runs git revision REV's first, in the same VM boot; ICOUNT=1
# counts instructions instead of time (no host noise).
bench:
	SECMMU_BENCH_BASE="$(BASE)" SECMMU_BENCH_ICOUNT="$(ICOUNT)" ./scripts/bench

# The randomized stress test for DURATION seconds per format, on the debug
# kernel of each arch or of ARCH=x86_64|arm64 (see scripts/soak).
DURATION ?= 600
soak:
	SECMMU_SOAK_ARCH="$(ARCH)" ./scripts/soak $(DURATION)

# Host benchmarks of the kernel-free core (release build, timing harnesses
# that cargo test ignores by default): per-vCPU statistics against shared
# atomics, and aging's per-call cost.
bench-host:
	cd host && cargo test --release -- --ignored --nocapture stats_counter_cost
	cd host && cargo test --release -- --ignored --nocapture aging_per_call_cost

.PHONY: bench soak bench-host
