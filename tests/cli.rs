//! The CLI as a user runs it: the default run, overrides, and bad input (clear error, exit 2, no output).

use crate::common::step_cost_json;
use assert_cmd::Command;
use predicates::str::contains;
use std::path::Path;

fn servesim() -> Command {
    Command::cargo_bin("servesim").unwrap()
}

const FILES: [&str; 6] = [
    "requests.csv",
    "summary.json",
    "summary.csv",
    "timeseries.csv",
    "replicas.csv",
    "resolved.toml",
];

/// The README's worked example is the default run's real output (all but the wall time).
#[test]
fn the_readme_worked_example_prints_as_shown() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = servesim()
        .current_dir(tmp.path())
        .arg("run")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for line in text.lines().filter(|l| !l.starts_with("  wrote ")) {
        assert!(readme.contains(line), "README lacks: {line}");
    }
    assert!(text.lines().count() >= 10, "{text}");
}

#[test]
fn default_run_prints_a_summary_and_writes_six_files() {
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
fn one_at_a_time_rows(sets: &[&str]) -> Vec<(f64, f64, f64, f64, f64, f64)> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("one");
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

/// `engine.kind = "none"` runs one request at a time, so no two requests' [scheduled, finish] overlap,
/// and each decode step runs one sequence alone: 0.010 + 0.001 = 0.011 s per output token after the
/// first.
#[test]
fn no_batching_runs_one_request_at_a_time_through_the_cli() {
    let mut rows = one_at_a_time_rows(&["engine.kind=\"none\""]);
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

/// `engine.kv_cache = "off"` under no batching: nothing is cached, and decode step k (k from 1 to the
/// output length o less one) recomputes the prompt P plus k outputs as a prefill: 0.010 + 0.0001 (P + k)
/// s, so the decode phase takes (o - 1) 0.010 + 0.0001 ((o - 1) P + (o - 1) o / 2) s.
#[test]
fn kv_off_prices_every_decode_token_as_a_full_prefill_through_the_cli() {
    let rows = one_at_a_time_rows(&["engine.kind=\"none\"", "engine.kv_cache=\"off\""]);
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
    // Bandwidth-bound: the fitted decode-attention efficiency (0.788, over every row, latency-bound ones
    // included) against the 0.87 this row reads at.
    assert!((0.9..1.15).contains(&ratio), "{ratio}");
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

/// Whole engine steps measured on an H200 (`data/profiles/h200/steps/README.md`), predicted by
/// `step-cost --json`: the relative errors predicted / measured - 1, one per row of `file`. For the
/// tensor-parallel rows (one rank's share of the step, measured without its collectives) the measured
/// time gains the two all-reduces per layer of t x hidden bf16 bytes, interpolated (log-log) in NCCL's
/// measured all-reduce table, so the check does not reuse the roofline's own all-reduce formula.
fn whole_step_errors(file: &str, sets: &[&str]) -> Vec<(String, f64)> {
    let read = |path: &str| {
        let mut r = csv::Reader::from_path(path).unwrap();
        let h = r.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        (h, rows)
    };
    let (ah, arows) = read("data/profiles/h200/nccl-2gpu/collectives.csv");
    let col = |h: &csv::StringRecord, n: &str| h.iter().position(|x| x == n).unwrap();
    let allreduce: Vec<(f64, f64)> = arows
        .iter()
        .filter(|r| &r[col(&ah, "op")] == "all_reduce")
        .map(|r| {
            (
                r[col(&ah, "bytes")].parse::<f64>().unwrap(),
                r[col(&ah, "us_median")].parse::<f64>().unwrap() / 1e6,
            )
        })
        .collect();
    let allreduce_s = |b: f64| {
        if b <= allreduce[0].0 {
            return allreduce[0].1;
        }
        for w in allreduce.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if b <= x1 {
                let u = (b.ln() - x0.ln()) / (x1.ln() - x0.ln());
                return (y0.ln() * (1.0 - u) + y1.ln() * u).exp();
            }
        }
        let (x, y) = allreduce[allreduce.len() - 1];
        y * b / x
    };
    let (h, rows) = read(file);
    let mut out = Vec::new();
    for r in &rows {
        let model = &r[col(&h, "model")];
        let tp: u32 = r[col(&h, "tensor_parallel")].parse().unwrap();
        let mut measured = r[col(&h, "ms_median")].parse::<f64>().unwrap() / 1e3;
        if tp > 1 {
            // Llama-3.1-70B: hidden 8192, 80 layers.
            let tokens: f64 = r[col(&h, "tokens")].parse().unwrap();
            measured += 2.0 * 80.0 * allreduce_s(tokens * 8192.0 * 2.0);
        }
        let model_set = format!("model.name=\"{model}\"");
        let tp_set = format!("hardware.tensor_parallel={tp}");
        let mut args: Vec<&str> = vec!["--set", "hardware.name=\"h200\"", "--set", &model_set];
        args.extend(["--set", &tp_set]);
        for s in sets {
            args.extend(["--set", s]);
        }
        let step = r[col(&h, "step")].to_string();
        args.extend(step.split_whitespace());
        let predicted = step_cost_json(&args)["step_s"].as_f64().unwrap();
        out.push((step, predicted / measured - 1.0));
    }
    out
}

/// Median and worst absolute relative error.
fn median_and_worst(errs: &[(String, f64)]) -> (f64, f64) {
    let mut a: Vec<f64> = errs.iter().map(|e| e.1.abs()).collect();
    a.sort_by(f64::total_cmp);
    let n = a.len();
    let median = if n % 2 == 1 {
        a[n / 2]
    } else {
        (a[n / 2 - 1] + a[n / 2]) / 2.0
    };
    (median, a[n - 1])
}

/// The H200 tables and the default roofline against 38 whole Llama-3.1-8B steps measured on an H200
/// (decode at uniform and mixed contexts, prefill, chunked prefill, mixed). As measured: table median
/// 2.1%, worst -13.2%; roofline median 3.0%, worst -21.0%; both worst cases are the one decode batch of 15
/// sequences at 256 tokens and one at 16,384, which the split-KV kernel runs at the pace of the long
/// sequence: the table prices it no faster than that sequence alone (-24.0% at the mean context alone),
/// the roofline at the mean context. Every other step is within 9.1% (table) and 14.3% (roofline).
#[test]
fn h200_whole_steps_are_predicted_within_the_measured_errors() {
    let file = "data/profiles/h200/steps/steps-8b.csv";
    let table = whole_step_errors(
        file,
        &[
            "cost.kind=\"table\"",
            "cost.table.dir=\"data/profiles/h200/llama-3.1-8b\"",
        ],
    );
    let roofline = whole_step_errors(file, &[]);
    assert_eq!(table.len(), 38);
    for (name, errs, median_max, worst_max, rest_max) in [
        ("table", &table, 0.05, 0.15, 0.10),
        ("roofline", &roofline, 0.10, 0.25, 0.15),
    ] {
        let (median, worst) = median_and_worst(errs);
        assert!(median <= median_max, "{name}: median {median:.3}");
        assert!(worst <= worst_max, "{name}: worst {worst:.3}");
        for (step, e) in errs.iter() {
            if step != "--decode 15@256 --decode 1@16384" {
                assert!(e.abs() <= rest_max, "{name}: {step}: {e:+.3}");
            }
        }
    }
}

/// The default roofline against 14 steps of Llama-3.1-70B at tensor parallel 2 (one rank's share measured
/// on an H200, plus NCCL's measured all-reduces): measured median 3.1%, worst -10.8% (the target
/// for the default roofline is 10% median, 20% worst).
#[test]
fn h200_tensor_parallel_steps_are_predicted_by_the_roofline() {
    let errs = whole_step_errors("data/profiles/h200/steps/steps-70b-tp2.csv", &[]);
    assert_eq!(errs.len(), 14);
    let (median, worst) = median_and_worst(&errs);
    assert!(
        median <= 0.10 && worst <= 0.20,
        "median {median:.3}, worst {worst:.3}"
    );
}
