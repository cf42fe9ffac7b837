//! servesim's integration tests: one binary, a module per topic.

mod batching;
mod cache;
mod capacity;
mod cli;
mod cluster;
mod common;
mod compare;
mod cost;
mod determinism;
mod disaggregated;
mod kv_property;
mod leap;
mod mooncake;
mod offload;
mod queueing;
mod report_html;
mod robustness;
mod rules;
mod rules_sglang;
mod runs;
mod speculative;
mod traces;
#[cfg(feature = "calibrate")]
mod validate;
mod workload;
