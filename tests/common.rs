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

/// M/D/1 as a config: one request at a time (`max_num_seqs = 1`), every request one step of S = 0.1 s
/// (a 16-token prompt whose single output token ends it, under the linear cost model), Poisson arrivals at
/// `rate`. `bound` ends the workload (`max_sessions = N` or `duration_s = T`); `output` is the body of
/// `[output]`. Further tables may be appended to the text.
pub fn md1(rate: f64, bound: &str, output: &str) -> String {
    format!(
        r#"
name = "md1"
seed = 11
[workload]
session_rate = {rate}
{bound}
turns = {{ dist = "constant", value = 1 }}
user_tokens = {{ dist = "constant", value = 16 }}
doc_probability = 0.0
response_tokens = {{ dist = "constant", value = 1 }}
system_prompts = []
[engine]
max_num_seqs = 1
prefix_caching = false
max_model_len = 4096
num_gpu_blocks = 300
[cost]
kind = "linear"
linear = {{ step_s = 0.1, prefill_token_s = 0.0, decode_seq_s = 0.0, decode_context_token_s = 0.0 }}
[output]
{output}
"#
    )
}

/// `servesim step-cost --json ARGS`, parsed (the command must succeed).
pub fn step_cost_json(args: &[&str]) -> serde_json::Value {
    let out = assert_cmd::Command::cargo_bin("servesim")
        .unwrap()
        .args(["step-cost", "--json"])
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}
