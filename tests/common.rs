//! Shared helpers: configs from text, runs into temp dirs, CSV readers.

use servesim::config::{Config, Source};
use servesim::metrics::RequestRow;
use servesim::run::{run, simulate, RunOptions, RunOutcome, SimOptions};
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
            save_cache: None,
            format: Default::default(),
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

/// One trace row: (session, turn, arrival or think time s, prompt as (content, tokens) segments,
/// response content, output tokens, max tokens).
pub type Row<'a> = (u64, u32, f64, &'a [(u64, u32)], u64, u32, u32);

/// Replays `rows` (closed loop: turn 1 at its arrival, later turns their think time after the previous
/// turn ends) with `engine` lines in the `[engine]` table and `extra` tables appended; returns the rows
/// in request id order and the summary.
pub fn replay(
    rows: &[Row],
    engine: &str,
    extra: &str,
) -> (Vec<RequestRow>, servesim::metrics::Summary) {
    replay_set(rows, engine, extra, &[])
}

/// [`replay`] with `--set` overrides.
pub fn replay_set(
    rows: &[Row],
    engine: &str,
    extra: &str,
    sets: &[&str],
) -> (Vec<RequestRow>, servesim::metrics::Summary) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.csv");
    let mut text = servesim::workload::trace::native::COLUMNS.join(",") + "\n";
    for &(session, turn, t, prompt, resp, out, max) in rows {
        let segs: Vec<String> = prompt
            .iter()
            .map(|&(c, n)| format!("{c:016x}:{n}"))
            .collect();
        let (arrival, think) = if turn == 1 {
            (format!("{t}"), String::new())
        } else {
            (String::new(), format!("{t}"))
        };
        text += &format!(
            "{session},{turn},{arrival},{think},0,{},{resp:016x},{out},{max}\n",
            segs.join(" ")
        );
    }
    std::fs::write(&path, text).unwrap();
    let cfg = config(
        &format!(
            r#"
name = "batching"
[workload]
kind = "trace"
trace = {{ format = "servesim", path = "{}", mode = "closed" }}
[engine]
max_model_len = 4096
num_gpu_blocks = 1000
{engine}
[cost]
kind = "linear"
linear = {{ step_s = 0.01, prefill_token_s = 0.0001, decode_seq_s = 0.001, decode_context_token_s = 0.0 }}
{extra}
"#,
            path.display()
        ),
        sets,
    );
    let sim = simulate(
        &cfg,
        &SimOptions {
            rows: servesim::metrics::Rows::Keep,
            ..SimOptions::default()
        },
    )
    .unwrap();
    let mut rows = sim.requests;
    rows.sort_by_key(|r| r.id);
    (rows, sim.summary)
}

/// Each `--set` override of `cases` is refused by `Config::load` with an error naming its key (the
/// second of the pair).
pub fn assert_refused_by_key(cases: &[(&str, &str)]) {
    for (set, key) in cases {
        let e = Config::load(None, &[set.to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
}
