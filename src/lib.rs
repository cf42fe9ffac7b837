//! servesim: a discrete-event simulator of LLM serving.
//!
//! Reading guide, in the order a request meets the code:
//! - [`workload`]: the conversational generator draws sessions and releases turns as [`request::Request`]s
//!   whose prompts are segment lists ([`workload::content`]); turn k+1 extends turn k exactly.
//! - [`event`] and [`engine`]: the closed event set, its same-instant order, and the queue with its
//!   integer-nanosecond clock ([`time`]). The engine knows nothing about LLMs.
//! - [`world`]: owns everything and dispatches each event in one `match`: arrivals go through a router
//!   ([`cluster`]: it sees the request and a read-only view of each replica) to a [`replica`].
//!   [`system`] wires all the parts from the config, apart from the loop.
//! - [`replica`]: runs engine steps: its [`scheduler`] (vLLM V1's rules) plans a step through the
//!   [`kv`] store it owns (vLLM's block pool + prefix cache), the [`cost`] model prices it, and at the step's end tokens
//!   are emitted and finished requests leave. Runs of pure-decode steps are advanced at once under the
//!   leap contract written at the top of [`replica`]: read it before adding a scheduler, a KV store, a
//!   cost model or a statistic.
//! - [`metrics`]: the per-request CSV, the time series and the summary; [`run`] runs a config in memory
//!   (`simulate`, for callers that run many) or into an output directory (`run`; [`metrics::output`]: the
//!   rules that keep a run from destroying anything not its own).
//!   [`config`] holds every default and range; [`input`] reads user files safely; [`memory`] refuses a
//!   run that cannot fit; [`rng`] the named random streams.

pub mod app;
#[cfg(feature = "calibrate")]
pub mod calibrate;
pub mod capacity;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod cost;
pub mod engine;
pub mod error;
pub mod event;
pub mod fasthash;
pub mod idtable;
pub mod input;
pub mod kv;
pub mod memory;
pub mod metrics;
pub mod replica;
pub mod report;
pub mod request;
pub mod rng;
pub mod run;
pub mod scheduler;
pub mod speculative;
pub mod system;
pub mod time;
#[cfg(feature = "calibrate")]
pub mod validate;
pub mod workload;
pub mod world;
