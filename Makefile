# SPDX-License-Identifier: GPL-2.0
#
# Out-of-tree build of secmmu against a configured and built Rust-enabled
# kernel tree:   make KDIR=/path/to/linux-build LLVM=1
# Lint:          make KDIR=... LLVM=1 CLIPPY=1
# Objects and secmmu.ko go next to the sources, or into MO=DIR (Linux 6.13+),
# so builds for several kernels or arches can live side by side; Kbuild
# refuses MO= while an in-place build's modules.order is there ("make clean").
# Tests, VM, benchmarks: see README.md (scripts/test-all, scripts/demo, scripts/bench).

KDIR ?= /lib/modules/$(shell uname -r)/build
MO ?=

all: modules

modules clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(if $(MO),MO=$(abspath $(MO))) $@

.PHONY: all modules clean

# Benchmarks on the perf kernel, in one VM run (see scripts/bench).
bench:
	./scripts/bench

.PHONY: bench
