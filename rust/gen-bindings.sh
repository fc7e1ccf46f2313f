#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Generate rust/bindings_generated.rs from rust/secmmu_helpers.h with the very
# bindgen command (flags, target, include paths) the kernel recorded for its
# own rust/bindings, so the layout of every type matches the kernel's.
#
# usage: gen-bindings.sh KERNEL_OBJTREE HEADER OUTPUT
set -eu
objtree=$1 header=$2 out=$3
cmdfile=$objtree/rust/bindings/.bindings_generated.rs.cmd
[ -f "$cmdfile" ] || { echo "$cmdfile: missing (kernel built without CONFIG_RUST?)" >&2; exit 1; }

# savedcmd_rust/bindings/bindings_generated.rs := bindgen <header> <flags>
#     -o rust/bindings/bindings_generated.rs -- <clang flags>; sed ...
cmd=$(sed -n 's/^savedcmd_[^ ]* := //p' "$cmdfile" | sed 's/; *sed .*$//')
kheader=$(echo "$cmd" | awk '{print $2}')
flags=$(echo "$cmd" | sed "s|^[^ ]* [^ ]* ||; s|-o rust/bindings/bindings_generated.rs||; s|-Wp,-MMD,[^ ]*||; s|\\\$(pound)|#|g")
bindgen=$(echo "$cmd" | awk '{print $1}')
[ -n "$kheader" ] || { echo "cannot parse $cmdfile" >&2; exit 1; }

abs_header=$(cd "$(dirname "$header")" && pwd)/$(basename "$header")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
# <trace/events/secmmu.h>, as Kbuild's ccflags find it.
inc=$(cd "$(dirname "$header")/../include" && pwd)
cd "$objtree"
# Only our own functions and trace events; no recursion, so types come from
# kernel::bindings.
eval "$bindgen \"$abs_header\" --allowlist-function 'secmmu_.*' --allowlist-function anon_inode_getfd" \
	"--allowlist-function remap_vmalloc_range --allowlist-function vunmap" \
	"--allowlist-var '__tracepoint_secmmu_.*' --allowlist-function 'rust_do_trace_secmmu_.*'" \
	"--no-recursive-allowlist -o \"$abs_out.tmp\" $flags -DMODULE -I\"$inc\""
mv "$abs_out.tmp" "$abs_out"
