//! Command-line definitions (clap) only.

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
    /// List what ships in the catalogs.
    Catalog {
        #[arg(value_enum)]
        what: CatalogKind,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Workload and system config (TOML). Without it, the embedded default chat workload runs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set engine.prefix_caching=false (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Master random seed (overrides the config's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory (default: results/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CatalogKind {
    Models,
    Hardware,
}
