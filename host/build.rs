// SPDX-License-Identifier: GPL-2.0

//! Selects the host variant of `src/mmu/prim.rs`.

fn main() {
    println!("cargo:rustc-cfg=secmmu_host");
    println!("cargo:rerun-if-changed=build.rs");
}
