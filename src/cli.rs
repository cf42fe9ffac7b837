//! Command-line definitions (clap) only.
//!
//! The doc comments here are the command line's help text, written for a terminal (`results/<name>`),
//! not for rustdoc.
#![allow(rustdoc::invalid_html_tags)]

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "servesim",
    version,
    about = "A discrete-event simulator of LLM serving"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Simulate a workload on a serving system and write per-request results and a summary.
    Run(RunArgs),
    /// Run variants of a config on the identical workload and compare them (paired, with CIs and plots).
    Compare(CompareArgs),
    /// Search the highest load, or the fewest replicas, that meet the `[slo]` criteria in steady state.
    Capacity(CapacityArgs),
    /// Join the shards of one `capacity --shard I/N` command into its answer.
    Merge(MergeArgs),
    /// Time the cost model's operators with candle on this machine and fit a calibrated cost model.
    Calibrate(CalibrateArgs),
    /// Run a simulated schedule on real candle kernels: predicted against measured, per step and request.
    Validate(ValidateArgs),
    /// Compare the roofline, operator by operator, with measured tables (Vidur's mlp.csv, H200 attention).
    RooflineCheck(RooflineCheckArgs),
    /// Predict one engine step's duration and per-operator breakdown with the configured cost model.
    StepCost(StepCostArgs),
    /// List what ships in the catalogs.
    Catalog {
        #[arg(value_enum)]
        what: CatalogKind,
    },
    /// Export or inspect workloads.
    Workload {
        #[command(subcommand)]
        command: WorkloadCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum WorkloadCommand {
    /// Write the generated workload of a config as a native trace (CSV) that replays to the identical run.
    Export {
        #[command(flatten)]
        source: ConfigArgs,
        /// The trace file to write (a regular file), or - for standard output.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a workload's statistics: requests, sessions, rate, length percentiles, prefix reuse.
    Stats {
        /// A trace file (format detected from its first line unless --format is given).
        file: Option<PathBuf>,
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Tokens per hash id for Mooncake traces.
        #[arg(long, default_value_t = 512)]
        block_tokens: u32,
        #[command(flatten)]
        source: ConfigArgs,
    },
}

/// Where a config comes from.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Workload and system config (TOML); without it, the command's embedded default (the chat workload;
    /// for `validate`, workloads/validate.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set engine.prefix_caching=false (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Master random seed (overrides the config's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    Mooncake,
    Azure,
    Burstgpt,
    Servesim,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: ConfigArgs,
    /// Output directory (default: results/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Step the engine one step at a time instead of leaping over runs of pure-decode steps. The outputs
    /// are identical; this exists to check that and to measure the leap.
    #[arg(long)]
    pub no_leap: bool,
    /// Save every replica's KV cache (GPU prefix cache and offload tiers) at the end of the run to this
    /// file, for `--warm-start` (format: `src/kv/persist.rs`, the README's "Warm start").
    #[arg(long, value_name = "FILE")]
    pub save_cache: Option<PathBuf>,
    /// Start every replica's caches from a file `--save-cache` wrote (sets kv.warm_start).
    #[arg(long, value_name = "FILE")]
    pub warm_start: Option<PathBuf>,
    /// The per-request file: requests.csv, or requests.parquet (the same columns, typed; for runs of
    /// millions of requests read into notebooks).
    #[arg(long, value_enum, default_value_t = RowFormatArg::Csv)]
    pub format: RowFormatArg,
}

/// `run --format`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum RowFormatArg {
    Csv,
    Parquet,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub source: ConfigArgs,
    /// A key and the values to compare: --vary engine.prefix_caching=true,false (repeat for a grid; the
    /// first combination is the baseline).
    #[arg(long, required = true, value_name = "KEY=V1,V2,...")]
    pub vary: Vec<String>,
    /// Repeat the comparison over this many workload seeds (seed, seed+1, ...) and report 95% CIs.
    #[arg(long, default_value_t = 1)]
    pub seeds: u32,
    /// Runs at once, one thread each (default: one per core). Results do not depend on it.
    #[arg(long, short = 'j', default_value_t = 0, hide_default_value = true)]
    pub jobs: usize,
    /// Output directory (default: results/compare-<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write plots as PNG instead of SVG.
    #[arg(long)]
    pub png: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum GoalArg {
    /// The highest offered load (sessions/s, or a trace's target_rate) meeting the SLOs.
    MaxRate,
    /// The fewest replicas meeting the SLOs at --rate.
    MinReplicas,
}

#[derive(clap::Args, Debug)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub source: ConfigArgs,
    /// What to search.
    #[arg(long, value_enum)]
    pub goal: GoalArg,
    /// The offered load for --goal min-replicas (sessions/s, or requests/s for a trace).
    #[arg(long, required_if_eq("goal", "min-replicas"))]
    pub rate: Option<f64>,
    /// Search over this many seeds (seed, seed+1, ...); the answer carries a 95% CI across them.
    #[arg(long, default_value_t = 3)]
    pub seeds: u32,
    /// Stop bisecting the rate when the bracket is narrower than this fraction of its lower end.
    #[arg(long, default_value_t = 0.02)]
    pub precision: f64,
    /// The most replicas --goal min-replicas tries.
    #[arg(long, default_value_t = 64)]
    pub max_replicas: u32,
    /// A key and values to answer for each of (repeat for a grid): --grid hardware.name=h100-sxm,h200.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub grid: Vec<String>,
    /// Run only shard I of N of the searches (1-based) and write them for `servesim merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Searches at once, one thread each (default: one per core). Results do not depend on it.
    #[arg(long, short = 'j', default_value_t = 0, hide_default_value = true)]
    pub jobs: usize,
    /// Output directory (default: results/capacity-<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the probes as PNG instead of SVG.
    #[arg(long)]
    pub png: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shards' output directories (each holding capacity-part.json).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Output directory (default: results/capacity-<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the probes as PNG instead of SVG.
    #[arg(long)]
    pub png: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub source: ConfigArgs,
    /// A handful of requests on the tiny model and a quick calibration: seconds.
    #[arg(long)]
    pub quick: bool,
    /// A calibration profile taken on this host (default: calibrate the model first).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Steps executed again to measure the machine's noise.
    #[arg(long, default_value_t = 20)]
    pub noise_steps: usize,
    /// Times each of those steps runs.
    #[arg(long, default_value_t = 5)]
    pub noise_repeats: usize,
    /// Output directory (default: results/validate-<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// Model shape: a catalog name or a config.json path.
    #[arg(long, default_value = "llama-3.1-8b")]
    pub model: String,
    /// Divide the model's widths and heads by this to fit the host (1 = full size).
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// A small grid at scale 8 that runs in well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Threads for candle (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to time the operators: `cpu`, or `cuda` / `cuda:N` (GPU N, in bf16; needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: String,
    /// Measured repeats per point (median taken), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Profile to write (default: results/profile-<model>.toml).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct RooflineCheckArgs {
    /// A Vidur mlp.csv profile (per-layer operators).
    #[arg(long, required_unless_present = "attention")]
    pub table: Option<PathBuf>,
    /// An attention.csv in the H200 format (data/profiles/h200/...): compare attention, row by row.
    #[arg(long)]
    pub attention: Option<PathBuf>,
    #[arg(long, default_value = "llama-2-7b")]
    pub model: String,
    #[arg(long, default_value = "h100-sxm")]
    pub hardware: String,
    #[command(flatten)]
    pub source: ConfigArgs,
}

#[derive(clap::Args, Debug)]
pub struct StepCostArgs {
    /// Model, hardware, tensor parallel size and cost model come from this config (as for `run`).
    #[command(flatten)]
    pub source: ConfigArgs,
    /// A prefill chunk: T prompt tokens from an empty context, or T@C, a chunk of T tokens whose context
    /// (the chunk included) ends at C tokens. Repeatable; every flag adds to the one step.
    #[arg(long, value_name = "T[@C]")]
    pub prefill: Vec<String>,
    /// B sequences decoding one token each at context L (the token computed included). Repeatable.
    #[arg(long, value_name = "B@L")]
    pub decode: Vec<String>,
    /// Print {"step_s": ..., "ops": {"<operator>": seconds, ...}} instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CatalogKind {
    Models,
    Hardware,
}
