# SPDX-License-Identifier: GPL-2.0
#
# Out-of-tree build of secmmu against a configured and built Rust-enabled
# kernel tree:   make KDIR=/path/to/linux-build LLVM=1
# Lint:          make KDIR=... LLVM=1 CLIPPY=1
# Tests, VM, benchmarks: see README.md (scripts/test-all, scripts/demo, scripts/bench).

KDIR ?= /lib/modules/$(shell uname -r)/build

all: modules

modules clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $@

.PHONY: all modules clean

# Benchmarks on the perf kernel, in one VM run (see scripts/bench).
bench:
	./scripts/bench

.PHONY: bench
