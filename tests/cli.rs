//! The CLI as a user runs it: the default run, overrides, and bad input (clear error, exit 2, no output).

use assert_cmd::Command;
use predicates::str::contains;
use std::path::Path;

fn servesim() -> Command {
    Command::cargo_bin("servesim").unwrap()
}

const FILES: [&str; 5] = [
    "requests.csv",
    "summary.json",
    "summary.csv",
    "timeseries.csv",
    "resolved.toml",
];

#[test]
fn default_run_prints_a_summary_and_writes_five_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("default");
    // The embedded default, shortened so the debug build stays quick; everything else as shipped.
    servesim()
        .args(["run", "--set", "workload.duration_s=20", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("servesim run: llama-3.1-8b on h100-sxm"))
        .stdout(contains("prefix cache hit rate"));
    for f in FILES {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Nothing else, and no temporary directory left beside it.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), FILES.len());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    // The resolved config re-runs as is.
    let out2 = tmp.path().join("again");
    servesim()
        .args(["run", "--quiet", "--config"])
        .arg(out.join("resolved.toml"))
        .arg("--out")
        .arg(&out2)
        .assert()
        .success()
        .stdout("");
    assert_eq!(
        std::fs::read(out.join("requests.csv")).unwrap(),
        std::fs::read(out2.join("requests.csv")).unwrap()
    );
}

fn assert_bad_input(args: &[&str], config: Option<&str>, expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cmd = servesim();
    cmd.arg("run");
    if let Some(text) = config {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        cmd.arg("--config").arg(&p);
    }
    cmd.args(args).arg("--out").arg(&out);
    let mut a = cmd.assert().code(2);
    for e in expect {
        a = a.stderr(contains(*e));
    }
    assert!(!out.exists(), "output directory left behind");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "bad.toml")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn unknown_key_in_a_file_names_file_line_and_key() {
    assert_bad_input(
        &[],
        Some("name = \"x\"\n[workload]\nduration_s = 5.0\nsesion_rate = 3.0\n"),
        &["bad.toml", "line 4", "sesion_rate", "expected one of"],
    );
}

#[test]
fn unknown_key_in_an_override_is_named() {
    assert_bad_input(
        &["--set", "engine.prefix_cachin=false"],
        None,
        &["prefix_cachin", "--set"],
    );
}

#[test]
fn wrong_type_is_named() {
    assert_bad_input(
        &["--set", "engine.max_num_seqs=\"many\""],
        None,
        &["engine.max_num_seqs", "invalid type"],
    );
}

#[test]
fn negative_rate_names_the_key() {
    assert_bad_input(
        &["--set", "workload.session_rate=-2"],
        None,
        &["workload.session_rate", "positive"],
    );
}

#[test]
fn model_that_does_not_fit_says_so() {
    assert_bad_input(
        &["--set", "model.name=llama-3.1-70b"],
        None,
        &["does not fit", "GiB", "smaller model"],
    );
}

#[test]
fn unknown_model_lists_the_catalog() {
    assert_bad_input(
        &["--set", "model.name=gpt-9"],
        None,
        &["model.name", "llama-3.1-8b"],
    );
}

#[test]
fn missing_config_file_is_exit_2() {
    assert_bad_input(
        &["--config", "/nonexistent/servesim.toml"],
        None,
        &["cannot read config file"],
    );
}

#[test]
fn bad_trace_names_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\": 0, \"input_length\": 20, \"output_length\": 3, \"hash_ids\": [0]}\n\
         {\"timestamp\": 10, \"input_length\": 20, \"hash_ids\": [0]}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    servesim()
        .args(["run", "--set", "workload.kind=trace", "--set"])
        .arg(format!("workload.trace.path={}", trace.display()))
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("t.jsonl line 2"))
        .stderr(contains("output_length"));
    assert!(!out.exists());
}

#[test]
fn output_dir_that_is_not_a_run_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("thesis.tex"), "x").unwrap();
    servesim()
        .args(["run", "--set", "workload.duration_s=5", "--out"])
        .arg(&precious)
        .assert()
        .code(2)
        .stderr(contains("not a servesim run directory"));
    assert!(Path::new(&precious.join("thesis.tex")).exists());
}

#[test]
fn catalog_lists_models_and_hardware() {
    servesim()
        .args(["catalog", "models"])
        .assert()
        .success()
        .stdout(contains("llama-3.1-8b"))
        .stdout(contains("131072"));
    servesim()
        .args(["catalog", "hardware"])
        .assert()
        .success()
        .stdout(contains("h100-sxm"))
        .stdout(contains("a100-80gb"));
}

/// Runs the binary on the embedded default with `sets`, linear step costs (10 ms a step, 0.1 ms a
/// prefill token, 1 ms a decode sequence, no context term) and one replica; returns the finished rows as
/// (scheduled, first token, finish, prompt, cached, output) with times in seconds.
fn toy_rows(sets: &[&str]) -> Vec<(f64, f64, f64, f64, f64, f64)> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("toy");
    let mut cmd = servesim();
    cmd.args(["run", "--quiet", "--out"]).arg(&out);
    for s in [
        "workload.duration_s=30",
        "cluster.replicas=1",
        "cost.kind=\"linear\"",
        "cost.linear.step_s=0.01",
        "cost.linear.prefill_token_s=0.0001",
        "cost.linear.decode_seq_s=0.001",
        "cost.linear.decode_context_token_s=0",
    ]
    .iter()
    .chain(sets)
    {
        cmd.args(["--set", s]);
    }
    cmd.assert().success();
    let mut rdr = csv::Reader::from_path(out.join("requests.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let cols = [
        col("scheduled_s"),
        col("first_token_s"),
        col("finish_s"),
        col("prompt_tokens"),
        col("cached_tokens"),
        col("output_tokens"),
        col("status"),
    ];
    let rows: Vec<_> = rdr
        .records()
        .map(|r| r.unwrap())
        .filter(|r| &r[cols[6]] == "finished")
        .map(|r| {
            let f = |i: usize| r[cols[i]].parse::<f64>().unwrap();
            (f(0), f(1), f(2), f(3), f(4), f(5))
        })
        .collect();
    assert!(rows.len() > 5, "the scenario must finish requests");
    rows
}

/// The test-only toy scheduler (`scheduler/toy_fifo.rs`, one `EngineKind` arm) runs through the CLI: one
/// request at a time, so no two requests' [scheduled, finish] overlap, and each decode step runs one
/// sequence alone: 0.010 + 0.001 = 0.011 s per output token after the first.
#[test]
fn toy_fifo_runs_one_request_at_a_time_through_the_cli() {
    let mut rows = toy_rows(&["engine.kind=\"toy_fifo\""]);
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in rows.windows(2) {
        assert!(
            w[1].0 >= w[0].2 - 1e-6,
            "overlap: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    for r in &rows {
        let decode = r.2 - r.1;
        let expect = (r.5 - 1.0) * 0.011;
        assert!(
            (decode - expect).abs() < 2e-6,
            "{r:?}: {decode} vs {expect}"
        );
    }
}

/// The test-only toy store (`kv/toy_recompute.rs`, one `KvKind` arm) runs through the CLI under the
/// one-at-a-time scheduler: nothing is cached, and decode step k (k = 1 .. output - 1) recomputes the
/// prompt P plus k outputs as a prefill: 0.010 + 0.0001 (P + k) s, so the decode phase takes
/// (o - 1) 0.010 + 0.0001 ((o - 1) P + (o - 1) o / 2) s.
#[test]
fn toy_recompute_store_prices_every_decode_token_as_a_full_prefill_through_the_cli() {
    let rows = toy_rows(&[
        "engine.kind=\"toy_fifo\"",
        "engine.kv_cache=\"toy_recompute\"",
    ]);
    for r in &rows {
        let (p, o) = (r.3, r.5);
        assert_eq!(r.4, 0.0, "no prefix hits without a cache: {r:?}");
        let decode = r.2 - r.1;
        let expect = (o - 1.0) * 0.010 + 0.0001 * ((o - 1.0) * p + (o - 1.0) * o / 2.0);
        assert!(
            (decode - expect).abs() < 2e-6,
            "{r:?}: {decode} vs {expect}"
        );
    }
}

/// `servesim step-cost --json ARGS`, parsed.
fn step_cost_json(args: &[&str]) -> serde_json::Value {
    let out = servesim()
        .args(["step-cost", "--json"])
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

/// `step-cost --json` prices the step it is given: with the linear model (10 ms a step, 0.1 ms a prefill
/// token, 1 ms a decode sequence, 0.1 us a decode context token), `--prefill 100 --prefill 50@300
/// --decode 4@1000` is 0.010 + 0.0001 x 150 + 0.001 x 4 + 1e-7 x 4 x 1000 = 0.0294 s, each term its own
/// operator.
#[test]
fn step_cost_prices_the_step_it_is_given() {
    let v = step_cost_json(&[
        "--set",
        "cost.kind=\"linear\"",
        "--set",
        "cost.linear.step_s=0.01",
        "--set",
        "cost.linear.prefill_token_s=0.0001",
        "--set",
        "cost.linear.decode_seq_s=0.001",
        "--set",
        "cost.linear.decode_context_token_s=1e-7",
        "--prefill",
        "100",
        "--prefill",
        "50@300",
        "--decode",
        "4@1000",
    ]);
    let close = |x: &serde_json::Value, want: f64| (x.as_f64().unwrap() - want).abs() < 1e-12;
    assert!(close(&v["step_s"], 0.0294), "{v}");
    assert!(close(&v["ops"]["step"], 0.01), "{v}");
    assert!(close(&v["ops"]["prefill_tokens"], 0.015), "{v}");
    assert!(close(&v["ops"]["decode_seqs"], 0.004), "{v}");
    assert!(close(&v["ops"]["decode_context"], 0.0004), "{v}");
}

/// The roofline reads a chunk's context: 512 tokens at the end of an 8,192-token context attend to
/// 512 x 7,680 + 512 x 513 / 2 pairs, against 512 x 513 / 2 from an empty context, so prefill attention
/// costs more while the linear layers, which see only the 512 tokens, cost the same.
#[test]
fn step_cost_prices_a_chunk_at_its_context() {
    let ops = |arg: &str| step_cost_json(&["--prefill", arg])["ops"].clone();
    let (empty, late) = (ops("512"), ops("512@8192"));
    assert!(late["attn_prefill"].as_f64() > empty["attn_prefill"].as_f64());
    assert_eq!(late["mlp_up"], empty["mlp_up"]);
}

#[test]
fn step_cost_bad_steps_are_errors_naming_the_flag() {
    for (args, expect) in [
        (vec!["--decode", "4"], "--decode 4: expected B@L"),
        (vec!["--prefill", "10@5"], "cannot be below T"),
        (vec!["--prefill", "0"], "whole number from 1"),
        (vec!["--decode", "x@10"], "the sequence count B"),
        (vec![], "the step is empty"),
    ] {
        servesim()
            .arg("step-cost")
            .args(&args)
            .assert()
            .code(2)
            .stderr(contains(expect));
    }
}

/// `roofline-check --attention` compares the roofline's attention with every measured H200 row. Where
/// decode attention is bound by reading the KV cache, the split-KV kernel and the roofline agree: 64
/// sequences at 4,096 tokens read 262,144 tokens x 4,096 B (K and V, 8 heads x 128 x 2 B each) = 1.07 GB
/// per layer, which at 0.8 x 4.8 TB/s takes 0.280 ms, against the measured 0.264 ms (ratio 1.06).
#[test]
fn roofline_check_compares_attention_row_by_row() {
    let out = servesim()
        .args([
            "roofline-check",
            "--model",
            "llama-3.1-8b",
            "--hardware",
            "h200",
        ])
        .args([
            "--attention",
            "data/profiles/h200/llama-3.1-8b/attention.csv",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for group in [
        "decode   triton_splitkv",
        "decode   flash",
        "prefill  flash",
        "prefill  cudnn",
    ] {
        assert!(text.contains(group), "{group} missing:\n{text}");
    }
    let ratio = text
        .lines()
        .find(|l| l.starts_with("decode_B64_L4096") && l.contains("triton_splitkv"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap();
    assert!((0.9..1.1).contains(&ratio), "{ratio}");
}

#[test]
fn step_cost_refuses_steps_past_its_bounds() {
    for (args, expect) in [
        (vec!["--prefill", "4294967295"], "from 1 to 16777216"),
        (
            vec!["--prefill", "16000000", "--prefill", "16000000"],
            "at most 16777216 prefill tokens",
        ),
        (
            vec!["--decode", "1000000@10", "--decode", "100000@10"],
            "at most 1048576 decode sequences",
        ),
    ] {
        servesim()
            .arg("step-cost")
            .args(&args)
            .assert()
            .code(2)
            .stderr(contains(expect));
    }
}
