# SPDX-License-Identifier: GPL-2.0
#
# Out-of-tree build of secmmu against a configured and built Rust-enabled
# kernel tree:   make KDIR=/path/to/linux-build LLVM=1
# Lint:          make KDIR=... LLVM=1 CLIPPY=1
# Tests, VM, benchmarks: see README.rst (scripts/test-all, scripts/demo).

KDIR ?= /lib/modules/$(shell uname -r)/build

all: modules

modules clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $@

rustfmt:
	rustfmt --check --edition 2021 --config-path $(KDIR)/.rustfmt.toml \
		src/secmmu.rs rust/bindings.rs 2>/dev/null || \
	rustfmt --check --edition 2021 src/secmmu.rs rust/bindings.rs

.PHONY: all modules clean rustfmt
