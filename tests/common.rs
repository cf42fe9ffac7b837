//! Shared helpers: configs from text, runs into temp dirs, CSV readers.

use servesim::config::{Config, Source};
use servesim::run::{run, RunOptions, RunOutcome};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A config from TOML text plus overrides.
pub fn config(text: &str, overrides: &[&str]) -> Config {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Source {
        origin: "test",
        text,
    }
    .parse(&o)
    .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The embedded default with overrides.
pub fn default_with(overrides: &[&str]) -> Config {
    config(servesim::config::DEFAULT_CONFIG, overrides)
}

/// A small, fast chat workload on a small KV pool (so debug-build invariant checks run every step).
pub const SMALL_CHAT: &str = r#"
name = "small"
seed = 7
[workload]
session_rate = 4.0
duration_s = 60.0
think_time_s = { dist = "lognormal", median = 5.0, sigma = 1.0, max = 60.0 }
doc_probability = 0.05
[[workload.system_prompts]]
tokens = 600
share = 1.0
[engine]
max_model_len = 32768
num_gpu_blocks = 12000
"#;

pub fn run_in(dir: &Path, name: &str, cfg: &Config) -> (RunOutcome, PathBuf) {
    let out = dir.join(name);
    let o = run(
        cfg,
        &RunOptions {
            out: Some(out.clone()),
            progress: false,
            no_leap: false,
            variant: String::new(),
        },
    )
    .unwrap_or_else(|e| panic!("run {name}: {e}"));
    (o, out)
}

/// requests.csv as rows of column -> value.
pub fn read_rows(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

pub fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("column {col} = {:?}", row[col]))
}
