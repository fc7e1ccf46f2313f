// SPDX-License-Identifier: GPL-2.0
/*
 * The trace events of include/trace/events/secmmu.h, and the
 * rust_do_trace_* function of each, which Rust calls once the event's
 * static key says it is enabled (rust/tracepoint.rs).
 */
#define CREATE_TRACE_POINTS
#define CREATE_RUST_TRACE_POINTS
#include <trace/events/secmmu.h>
