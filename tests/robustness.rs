//! No data loss, no panic, no unbounded allocation, no hang, clean interrupts, clear errors and right
//! numbers, each as a user meets it through the CLI (the kinds of issue 15), and a fuzzer that drives
//! random and mutated configs and traces through the real binary.

use crate::common::*;
use assert_cmd::Command;
use predicates::str::contains;
use rand::{Rng, SeedableRng};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn servesim() -> Command {
    Command::cargo_bin("servesim").unwrap()
}

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("servesim")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A short run of the embedded default.
const SHORT: [&str; 2] = ["--set", "workload.duration_s=3"];

/// `servesim run ARGS --out DIR/out` must exit 2 with every `expect` in stderr and leave nothing behind.
fn refused(args: &[&str], expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a = servesim()
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2);
    for e in expect {
        a = a.stderr(contains(*e));
    }
    assert!(
        names(tmp.path()).is_empty(),
        "left behind: {:?}",
        names(tmp.path())
    );
}

// ---- 1. Data loss -------------------------------------------------------------------------------------

#[test]
fn out_at_the_working_directory_or_its_parent_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    // A directory that looks like a run (resolved.toml) beside the user's own files.
    for d in [tmp.path(), cwd.as_path()] {
        std::fs::write(d.join("resolved.toml"), "").unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
    }
    for out in [".", "..", "../work", "./"] {
        servesim()
            .current_dir(&cwd)
            .args(["run"])
            .args(SHORT)
            .args(["--out", out])
            .assert()
            .code(2)
            .stderr(contains("will not write to"));
    }
    assert_eq!(names(&cwd), ["notes.txt", "resolved.toml"]);
    assert_eq!(names(tmp.path()), ["notes.txt", "resolved.toml", "work"]);
}

#[test]
fn an_ancestor_of_the_working_directory_is_refused_even_if_it_looks_like_a_run() {
    // Every entry is a servesim name, so only the ancestor rule stands between the run and the
    // working directory.
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("top");
    let cwd = top.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(top.join("resolved.toml"), "").unwrap();
    std::fs::write(cwd.join("resolved.toml"), "").unwrap();
    servesim()
        .current_dir(&cwd)
        .args(["run"])
        .args(SHORT)
        .arg("--out")
        .arg(&top)
        .assert()
        .code(2)
        .stderr(contains("the working directory or one of its ancestors"));
    assert_eq!(names(&cwd), ["resolved.toml"]);
}

#[test]
fn a_run_directory_holding_a_foreign_file_is_kept_and_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    servesim()
        .args(["run", "-q"])
        .args(SHORT)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    // Replacing its own output works...
    servesim()
        .args(["run", "-q"])
        .args(SHORT)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    // ...until the user puts a file of their own into it.
    std::fs::write(out.join("analysis.ipynb"), "{}").unwrap();
    servesim()
        .args(["run", "-q"])
        .args(SHORT)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("analysis.ipynb"));
    assert!(out.join("analysis.ipynb").is_file());
    assert!(out.join("requests.csv").is_file());
    assert_eq!(names(tmp.path()), ["r"]);
}

#[test]
fn run_names_cannot_leave_results() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("a/b");
    std::fs::create_dir_all(&cwd).unwrap();
    for name in ["..", "../../x", ".", "x/y"] {
        servesim()
            .current_dir(&cwd)
            .args(["run"])
            .args(SHORT)
            .arg("--set")
            .arg(format!("name={name:?}"))
            .assert()
            .code(2)
            .stderr(contains("not a plain file name"));
    }
    assert!(names(&cwd).is_empty(), "{:?}", names(&cwd));
    assert_eq!(names(tmp.path()), ["a"]);
}

#[test]
fn export_writes_only_regular_files_or_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    servesim()
        .args(["workload", "export"])
        .args(SHORT)
        .args(["--out", "/dev/null"])
        .assert()
        .code(2)
        .stderr(contains("not a regular file"));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    servesim()
        .args(["workload", "export"])
        .args(SHORT)
        .arg("--out")
        .arg(tmp.path())
        .assert()
        .code(2);
    // `-` is standard output: the same bytes as the file.
    let f = tmp.path().join("t.csv");
    servesim()
        .args(["workload", "export"])
        .args(SHORT)
        .arg("--out")
        .arg(&f)
        .assert()
        .success();
    let out = servesim()
        .args(["workload", "export"])
        .args(SHORT)
        .args(["--out", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(&f).unwrap());
    assert_eq!(names(tmp.path()), ["t.csv"]);
}

// ---- 2. Panics ----------------------------------------------------------------------------------------

#[test]
fn seeds_beyond_toml_integers_are_refused_up_front() {
    // 2^63 = 9223372036854775808 does not fit a TOML integer (i64); 2^63 - 1 does.
    refused(
        &["--seed", "9223372036854775808"],
        &["--seed", "9223372036854775807"],
    );
    let tmp = tempfile::tempdir().unwrap();
    servesim()
        .args(["run", "-q", "--seed", "9223372036854775807"])
        .args(SHORT)
        .arg("--out")
        .arg(tmp.path().join("r"))
        .assert()
        .success();
    let resolved = std::fs::read_to_string(tmp.path().join("r/resolved.toml")).unwrap();
    assert!(
        resolved.contains("seed = 9223372036854775807"),
        "{resolved}"
    );
    // compare's seeds seed..seed+N-1 must stay in range too.
    servesim()
        .args(["compare", "--seed", "9223372036854775807", "--seeds", "2"])
        .args(["--vary", "engine.prefix_caching=true,false", "--out"])
        .arg(tmp.path().join("c"))
        .assert()
        .code(2)
        .stderr(contains("--seeds"));
}

#[test]
fn stats_with_zero_block_tokens_is_an_error() {
    servesim()
        .args([
            "workload",
            "stats",
            "data/traces/mooncake/synthetic_trace.jsonl",
        ])
        .args(["--block-tokens", "0"])
        .assert()
        .code(2)
        .stderr(contains("--block-tokens"));
}

#[test]
fn a_closed_pipe_ends_quietly_and_a_full_device_fails_cleanly() {
    // The reader is gone before servesim writes: EPIPE, exit 0, nothing on stderr.
    for args in [
        &["catalog", "models"][..],
        &[
            "workload",
            "stats",
            "data/traces/burstgpt/burstgpt3_first400.csv",
        ][..],
        &[
            "workload",
            "export",
            "--set",
            "workload.duration_s=3",
            "--out",
            "-",
        ][..],
    ] {
        // A pipe whose read end is closed before servesim starts: every write fails with EPIPE.
        let mut fds = [0; 2];
        // SAFETY: pipe fills two new descriptors; the read end is closed at once, and the write end is
        // handed to the child as its standard output, owned by the OwnedFd.
        let write_end = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[0]);
            std::os::fd::OwnedFd::from_raw_fd(fds[1])
        };
        let out = std::process::Command::new(bin())
            .args(args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
    // A full standard output: exit 1 and a message.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(bin())
        .args(["catalog", "hardware"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write to standard output"));
}

// ---- 3. Unbounded allocation --------------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const LLAMA_8B: &str = include_str!("../catalog/models/llama-3.1-8b.json");

/// The Llama-3.1-8B config.json with `field` replaced by (or given) `value`.
fn model_json(field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(LLAMA_8B).unwrap();
    v[field] = serde_json::from_str(value).unwrap();
    v.to_string()
}

#[test]
fn sizes_that_drive_allocations_are_range_checked() {
    refused(
        &["--set", "engine.num_gpu_blocks=4294967295"],
        &["engine.num_gpu_blocks", "MiB"],
    );
    refused(
        &["--set", "cluster.replicas=100000"],
        &["lower cluster.replicas"],
    );
    refused(
        &["--set", "workload.turns={dist=\"constant\", value=1e9}"],
        &["workload.turns", "10000"],
    );
    let tmp = tempfile::tempdir().unwrap();
    for (field, value) in [
        ("head_dim", "0"),
        ("num_hidden_layers", "4611686018427387904"),
        ("hidden_size", "0"),
        ("vocab_size", "1000000000000"),
    ] {
        let p = write(
            tmp.path(),
            &format!("{field}.json"),
            &model_json(field, value),
        );
        refused(
            &["--set", &format!("model.name={p:?}")],
            &[field, "out of range", &format!("{field}.json")],
        );
    }
    for mem in ["1e12", "inf", "0"] {
        let p = write(
            tmp.path(),
            "hw.toml",
            &format!(
                "[big]\ndevice_name = \"x\"\npeak_bf16_tflops = 989.0\nmemory_bandwidth_gbps = 3350.0\n\
                 memory_gib = {mem}\n"
            ),
        );
        refused(
            &[
                "--set",
                &format!("hardware.catalog={p:?}"),
                "--set",
                "hardware.name=\"big\"",
            ],
            &["memory_gib", "hw.toml"],
        );
    }
}

#[test]
fn model_fields_that_change_the_answer_are_refused_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    // Fields servesim models but cannot use as given: refused, naming what to fix.
    for (field, value, expect) in [
        ("num_local_experts", "8", "num_experts_per_tok"),
        ("sliding_window", "\"long\"", "sliding_window"),
        (
            "quantization_config",
            "{\"quant_method\": \"bitsandbytes\"}",
            "quant_method",
        ),
        ("dtype", "\"float8_e4m3fn\"", "dtype"),
    ] {
        let p = write(tmp.path(), "m.json", &model_json(field, value));
        refused(&["--set", &format!("model.name={p:?}")], &[expect]);
    }
    // Fields it models change the step's price: eight experts of which each token uses two double a
    // prefill's MLP work (compute-bound at 4096 tokens) against the dense model.
    let step = |json: &str| -> f64 {
        let p = write(tmp.path(), "s.json", json);
        let v = step_cost_json(&[
            "--prefill",
            "4096",
            "--set",
            "hardware.name=\"h200\"",
            "--set",
            &format!("model.name={p:?}"),
        ]);
        v["ops"]["mlp_up"].as_f64().unwrap() + v["ops"]["mlp_down"].as_f64().unwrap()
    };
    let mut moe: serde_json::Value = serde_json::from_str(LLAMA_8B).unwrap();
    moe["num_local_experts"] = serde_json::json!(8);
    moe["num_experts_per_tok"] = serde_json::json!(2);
    let ratio = step(&moe.to_string()) / step(LLAMA_8B);
    assert!(ratio > 1.9 && ratio < 2.1, "{ratio}");
    // A float32 model cannot be priced by the roofline (bf16 peak); the `dtype` key is read.
    let p = write(tmp.path(), "m.json", &model_json("dtype", "\"float32\""));
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("torch_dtype");
    std::fs::write(&p, v.to_string()).unwrap();
    refused(
        &["--set", &format!("model.name={p:?}")],
        &["cost.kind", "32-bit"],
    );
    // Sliding window off (Qwen2's configs) or as long as the context: full attention, accepted.
    let mut v: serde_json::Value = serde_json::from_str(LLAMA_8B).unwrap();
    v["sliding_window"] = serde_json::json!(4096);
    v["use_sliding_window"] = serde_json::json!(false);
    let p = write(tmp.path(), "ok.json", &v.to_string());
    servesim()
        .args(["run", "-q"])
        .args(SHORT)
        .arg("--set")
        .arg(format!("model.name={p:?}"))
        .arg("--out")
        .arg(tmp.path().join("r"))
        .assert()
        .success();
}

// ---- 4. Hangs -----------------------------------------------------------------------------------------

const LINEAR: [&str; 10] = [
    "--set",
    "cost.kind=\"linear\"",
    "--set",
    "cost.linear.step_s=0.01",
    "--set",
    "cost.linear.prefill_token_s=0",
    "--set",
    "cost.linear.decode_seq_s=0",
    "--set",
    "engine.num_gpu_blocks=10",
];

/// Runs the Mooncake trace at `path` with the LINEAR cost model and `extra` arguments into `out`.
fn linear_trace_run(path: &str, extra: &[&str], out: &Path) {
    servesim()
        .args(["run", "-q"])
        .args(LINEAR)
        .args(mooncake_args(path))
        .args(extra)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
}

/// The `time_s` column of a run's time series.
fn sample_times(out: &Path) -> Vec<String> {
    let ts = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
    ts.lines()
        .skip(1)
        .map(|r| r.split(',').next().unwrap().to_string())
        .collect()
}

/// A run's summary.json.
fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn mooncake_args(path: &str) -> Vec<String> {
    [
        "workload.kind=\"trace\"",
        "workload.trace.format=\"mooncake\"",
        &format!("workload.trace.path={path:?}"),
        "engine.max_model_len=64",
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

#[test]
fn the_time_series_costs_activity_not_virtual_time() {
    // Two requests 1e12 ms (31.7 years) apart: two short bursts of activity and nothing between.
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.jsonl",
        "{\"timestamp\": 0, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [1]}\n\
         {\"timestamp\": 1e12, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [2]}\n",
    );
    let out = tmp.path().join("r");
    linear_trace_run(&p, &["--set", "workload.duration_s=2e9"], &out);
    // Each burst writes its rows (at 0 s and 1 s, at 1e9 s and 1e9 + 1 s), the idle stretch between
    // none: one row per interval would be 1e9 rows.
    let rows = sample_times(&out);
    assert_eq!(
        rows,
        [
            "0.000000",
            "1.000000",
            "1000000000.000000",
            "1000000001.000000"
        ]
    );
    // A long step in flight changes nothing either: 100 s steps, one row per step boundary, not per second.
    let out = tmp.path().join("long");
    linear_trace_run(&p, &["--set", "cost.linear.step_s=100"], &out);
    assert_eq!(sample_times(&out), ["0.000000", "100.000000"]);
}

#[test]
fn times_past_the_clock_horizon_are_input_errors() {
    // 1e9 s steps (host time, added to every step without async scheduling): the fifth passes 2^62 ns
    // (4.6e9 s).
    refused(
        &[
            "--set",
            "cost.roofline.step_overhead_s=1e9",
            "--set",
            "engine.async_scheduling=false",
        ],
        &["virtual time", "step_overhead_s"],
    );
    refused(
        &[
            "--set",
            "workload.duration_s=1e10",
            "--set",
            "workload.session_rate=0.01",
        ],
        &["workload.duration_s", "horizon"],
    );
    refused(
        &["--set", "output.timeseries_interval_s=1e300"],
        &["output.timeseries_interval_s", "horizon"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.jsonl",
        "{\"timestamp\": 0, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [1]}\n\
         {\"timestamp\": 5, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [2]}\n",
    );
    let mut args = mooncake_args(&p);
    args.extend(
        [
            "--set",
            "workload.trace.speedup=1e-300",
            "--set",
            "workload.duration_s=4e9",
        ]
        .map(String::from),
    );
    // The second request lands past the replay window (its time saturates): the first runs alone, fast,
    // and the time series stays small.
    let out = tmp.path().join("r");
    servesim()
        .args(["run", "-q"])
        .args(&args)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let ts = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
    assert!(ts.lines().count() <= 3, "{ts}");
}

#[test]
fn arrival_processes_the_clock_cannot_follow_are_refused() {
    refused(
        &["--set", "workload.session_rate=1e12"],
        &["session_rate", "1 ns"],
    );
    refused(
        &[
            "--set",
            "workload.arrival=\"gamma\"",
            "--set",
            "workload.burstiness=1e-300",
        ],
        &["workload.burstiness", "1 ns"],
    );
}

#[test]
fn a_trace_that_is_not_a_regular_file_is_an_error() {
    refused(
        &[
            "--set",
            "workload.kind=\"trace\"",
            "--set",
            "workload.trace.path=\"/dev/zero\"",
        ],
        &["/dev/zero", "not a regular file"],
    );
    servesim()
        .args(["workload", "stats", "/dev/zero"])
        .assert()
        .code(2)
        .stderr(contains("not a regular file"));
}

// ---- 5. Interrupted runs ------------------------------------------------------------------------------

/// Starts `args`, writing into a folder `dir/a/b` it must create, waits until its temporary output
/// exists, sends `signal`, and checks that the signal ended the process (a shell reports 128 + signal)
/// and that nothing is left in `dir`, the created folders included.
fn interrupt(args: &[&str], signal: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let mut child = std::process::Command::new(bin())
        .args(args)
        .arg("--out")
        .arg(dir.join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = format!(".out.servesim-partial-{}", child.id());
    let started = Instant::now();
    while !dir.join(&partial).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no temporary output appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(signal),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        names(tmp.path()).is_empty(),
        "left behind: {:?}",
        names(tmp.path())
    );
}

#[test]
fn interrupts_remove_the_temporary_output() {
    // Long enough to be interrupted mid-run: a day of sessions at 50 per second.
    let long = [
        "--set",
        "workload.duration_s=86400",
        "--set",
        "workload.session_rate=50",
    ];
    let run: Vec<&str> = ["run", "-q"].iter().chain(long.iter()).copied().collect();
    interrupt(&run, libc::SIGINT);
    interrupt(&run, libc::SIGTERM);
    interrupt(&run, libc::SIGHUP);
    let cmp: Vec<&str> = [
        "compare",
        "-q",
        "-j",
        "2",
        "--vary",
        "engine.prefix_caching=true,false",
    ]
    .iter()
    .chain(long.iter())
    .copied()
    .collect();
    interrupt(&cmp, libc::SIGINT);
}

#[test]
fn stale_temporaries_of_killed_runs_are_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    // A run killed by SIGKILL left these; no process has PID 4194304 (Linux's pid_max is at most 2^22).
    std::fs::create_dir(tmp.path().join(".out.servesim-partial-4194304")).unwrap();
    std::fs::create_dir(tmp.path().join(".out.servesim-old-4194304")).unwrap();
    std::fs::create_dir(tmp.path().join(".other.servesim-partial-4194304")).unwrap();
    // The user's own hidden backup of the same name is not ours to judge.
    std::fs::create_dir(tmp.path().join(".out.old-20240501")).unwrap();
    servesim()
        .args(["run", "-q"])
        .args(SHORT)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .assert()
        .success();
    assert_eq!(
        names(tmp.path()),
        [
            ".other.servesim-partial-4194304",
            ".out.old-20240501",
            "out"
        ]
    );
}

// ---- 6. Duplicate --vary values -----------------------------------------------------------------------

#[test]
fn duplicate_vary_values_are_named() {
    for vary in [
        "engine.prefix_caching=true,true",
        "engine.max_num_seqs=1,1",
        "engine.max_num_seqs=8, 8",
        "engine.policy=\"fcfs\",fcfs",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        servesim()
            .args(["compare", "--vary", vary, "--out"])
            .arg(tmp.path().join("c"))
            .assert()
            .code(2)
            .stderr(contains("repeats value 1"));
        assert!(names(tmp.path()).is_empty());
    }
    servesim()
        .args([
            "compare",
            "--vary",
            "engine.max_num_seqs=1,2",
            "--vary",
            "engine.max_num_seqs=3,4",
        ])
        .assert()
        .code(2)
        .stderr(contains("varied twice"));
}

// ---- 7. Bad input accepted ----------------------------------------------------------------------------

#[test]
fn malformed_records_that_parsed_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "m.jsonl",
        "{\"timestamp\": 0, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [1]}\n[5, 31, 1, [1]]\n",
    );
    let args = mooncake_args(&p);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, &["m.jsonl line 2", "JSON object"]);
    let p = write(
        tmp.path(),
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-28 10:00:00.0,100,10\n2023-02-31 10:00:00.0,100,10\n",
    );
    refused(
        &[
            "--set",
            "workload.kind=\"trace\"",
            "--set",
            "workload.trace.format=\"azure\"",
            "--set",
            &format!("workload.trace.path={p:?}"),
        ],
        &["a.csv line 3", "TIMESTAMP", "2023-02-31"],
    );
}

// ---- 8. Error messages --------------------------------------------------------------------------------

#[test]
fn error_messages_name_the_file_kind_where_it_was_set_and_the_fix() {
    refused(
        &[
            "--set",
            "workload.kind=\"trace\"",
            "--set",
            "workload.trace.path=\"no/such.jsonl\"",
        ],
        &[
            "workload.trace.path",
            "cannot read trace file no/such.jsonl",
            "working directory",
        ],
    );
    refused(
        &["--set", "hardware.catalog=\"no/such.toml\""],
        &["cannot read hardware catalog no/such.toml"],
    );
    refused(
        &["--set", "model.name=\"no/such/config.json\""],
        &["cannot read model config.json no/such/config.json"],
    );
    refused(
        &["--set", "workload.session_rate=-2"],
        &["(set by --set workload.session_rate=-2)"],
    );
    // No advice to lower max_model_len to 0.
    let tmp = tempfile::tempdir().unwrap();
    let a = servesim()
        .args(["run", "--set", "engine.num_gpu_blocks=0", "--out"])
        .arg(tmp.path().join("o"))
        .assert()
        .code(2)
        .stderr(contains("raise engine.num_gpu_blocks"));
    assert!(!String::from_utf8_lossy(&a.get_output().stderr).contains("at most 0"));
    refused(
        &["--set", "model.name=\"llama-3.1-70b\""],
        &["hardware.tensor_parallel"],
    );
    refused(
        &["--set", "hardware.name=\"my-gpus.toml\""],
        &["hardware.catalog"],
    );
    // A 4 MB field is not echoed whole.
    let p = write(
        tmp.path(),
        "big.jsonl",
        &format!("{{\"timestamp\": \"{}\"}}\n", "9".repeat(4 << 20)),
    );
    let args = mooncake_args(&p);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = servesim()
        .arg("run")
        .args(&args)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.len() < 4000,
        "{} bytes of error",
        out.stderr.len()
    );
}

#[test]
fn workload_stats_describes_what_the_run_replays() {
    // The shipped Mooncake workload replays a 600 s window of the hour: stats must count that window.
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--config",
        "workloads/mooncake-conversation.toml",
        "--set",
        "workload.duration_s=60",
    ];
    let out = servesim()
        .args(["workload", "stats"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("requests")).unwrap();
    let stated: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let r = tmp.path().join("r");
    servesim()
        .args(["run", "-q"])
        .args(args)
        .arg("--out")
        .arg(&r)
        .assert()
        .success();
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["requests"].as_u64().unwrap(), stated, "{text}");
    assert!(stated < 12_031, "the window was not applied: {text}");
}

#[test]
fn a_byte_order_mark_is_accepted_in_every_trace_format() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "bom.jsonl",
        "\u{feff}{\"timestamp\": 0, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [1]}\n",
    );
    servesim()
        .args(["run", "-q"])
        .args(mooncake_args(&p))
        .arg("--out")
        .arg(tmp.path().join("r"))
        .assert()
        .success();
    servesim()
        .args(["workload", "stats", &p])
        .assert()
        .success()
        .stdout(contains("requests        1"));
}

// ---- 9. Wrong numbers ---------------------------------------------------------------------------------

#[test]
fn time_weighted_means_do_not_depend_on_the_sampling_interval() {
    // Two requests of 31 prompt tokens and 1 output token, at 0 s and 1 s, on 10 blocks of 16 tokens
    // (9 usable), with 10 ms steps: each holds ceil(31/16) = 2 blocks for one 10 ms step. The last
    // activity ends at 1.01 s, so the mean usage is (2 x 2 blocks x 0.01 s) / (9 blocks x 1.01 s) =
    // 0.04 / 9.09 = 0.0044004..., whatever the time series' interval.
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.jsonl",
        "{\"timestamp\": 0, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [1]}\n\
         {\"timestamp\": 1000, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [2]}\n",
    );
    let expected = 0.04 / (9.0 * 1.01);
    for interval in ["0.001", "1", "100"] {
        let out = tmp.path().join(format!("r{interval}"));
        let set = format!("output.timeseries_interval_s={interval}");
        linear_trace_run(&p, &["--set", &set], &out);
        let s = summary(&out);
        let mean = s["kv_cache_usage_perc_mean"].as_f64().unwrap();
        assert!(
            (mean - expected).abs() < 1e-12,
            "interval {interval}: {mean} vs {expected}"
        );
        assert_eq!(
            s["sim_end_s"].as_f64().unwrap(),
            1.01,
            "interval {interval}"
        );
    }
}

#[test]
fn a_run_stopped_early_averages_over_the_time_until_the_stop() {
    // One request (the replay starts at its time, 0) whose 100 s step holds 2 of 9 usable blocks and is
    // cut by the stop at 50 s: its blocks count for 50 s of the 50, so the mean usage is 2 x 50 / (9 x 50)
    // = 2/9, and the run ends at 50 s. Counting the whole step over the time to the last event (0 s)
    // gave no mean at all; over a sample-stretched end, 2 x 100 / (9 x 51).
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.jsonl",
        "{\"timestamp\": 0, \"input_length\": 31, \"output_length\": 1, \"hash_ids\": [1]}\n",
    );
    let out = tmp.path().join("r");
    let stop = [
        "--set",
        "cost.linear.step_s=100",
        "--set",
        "output.max_sim_time_s=50",
    ];
    linear_trace_run(&p, &stop, &out);
    let s = summary(&out);
    let mean = s["kv_cache_usage_perc_mean"].as_f64().unwrap();
    assert!((mean - 2.0 / 9.0).abs() < 1e-12, "{mean}");
    assert_eq!(s["sim_end_s"].as_f64().unwrap(), 50.0);
    assert_eq!(s["requests_unfinished"], 1);
}

#[test]
fn summary_token_sums_are_sums_over_requests_csv() {
    // Stopped early, so rows are finished, unfinished and (with a short context) rejected.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = default_with(&[
        "workload.duration_s=20",
        "output.max_sim_time_s=15",
        "engine.max_model_len=2048",
        "workload.truncate_context=false",
    ]);
    let (o, out) = run_in(tmp.path(), "r", &cfg);
    let rows = read_rows(&out.join("requests.csv"));
    let statuses: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["status"].as_str()).collect();
    assert!(
        statuses.contains("unfinished") && statuses.contains("finished"),
        "{statuses:?}"
    );
    for (col, key) in [
        ("prompt_tokens", "prompt_tokens"),
        ("output_tokens", "output_tokens"),
        ("cached_tokens", "prompt_tokens_cached"),
        ("prefilled_tokens", "prefill_tokens_computed"),
    ] {
        let sum: f64 = rows.iter().map(|r| num(r, col)).sum();
        assert_eq!(o.summary.get_f64(key).unwrap(), sum, "{key}");
    }
    // Throughputs stay over finished requests (`vllm bench serve`).
    let finished_out: f64 = rows
        .iter()
        .filter(|r| r["status"] == "finished")
        .map(|r| num(r, "output_tokens"))
        .sum();
    let dur = o.summary.get_f64("duration_s").unwrap();
    let tps = o.summary.get_f64("output_throughput_tps").unwrap();
    assert!((tps - finished_out / dur).abs() < 1e-9 * tps, "{tps}");
}

// ---- 10. Summary tables that concatenate ---------------------------------------------------------------

#[test]
fn summary_csv_has_one_column_set_whatever_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let header = |name: &str, extra: &[&str]| {
        let mut o = vec!["workload.duration_s=3"];
        o.extend_from_slice(extra);
        let (_, out) = run_in(tmp.path(), name, &default_with(&o));
        let text = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        text.lines().next().unwrap().to_string()
    };
    let a = header("a", &[]);
    let b = header(
        "b",
        &[
            "hardware.tensor_parallel=2",
            "cluster.router=\"least_loaded\"",
        ],
    );
    let c = header("c", &["cost.kind=\"linear\"", "cluster.replicas=2"]);
    let d = header("d", &["engine.kind=\"sglang\""]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d, "an SGLang run's summary has the same columns");
    for col in [
        "variant",
        "router",
        "tensor_parallel",
        "session_rate",
        "cost_allreduce_s",
        "cost_step_s",
    ] {
        assert!(a.split(',').any(|h| h == col), "{col} missing from {a}");
    }
}

#[test]
fn sglang_settings_it_cannot_honour_are_refused_naming_the_key() {
    refused(
        &[
            "--set",
            "engine.kind=\"sglang\"",
            "--set",
            "engine.kv_cache=\"paged\"",
        ],
        &["engine.kv_cache", "\"radix\""],
    );
    refused(
        &[
            "--set",
            "engine.kind=\"sglang\"",
            "--set",
            "engine.policy=\"priority\"",
        ],
        &["engine.policy", "not modelled"],
    );
    refused(
        &[
            "--set",
            "engine.kind=\"sglang\"",
            "--set",
            "sglang.chunked_prefill_size=0",
        ],
        &["sglang.chunked_prefill_size", "-1"],
    );
    refused(
        &[
            "--set",
            "engine.kind=\"sglang\"",
            "--set",
            "sglang.max_total_tokens=1000",
        ],
        &["sglang.max_total_tokens", "max_model_len"],
    );
    refused(
        &["--set", "engine.kind=\"sglang\"", "--save-cache", "c.json"],
        &["--save-cache", "not modelled"],
    );
    refused(
        &[
            "--set",
            "engine.kind=\"sglang\"",
            "--set",
            "sglang.enable_hierarchical_cache=true",
            "--set",
            "sglang.hicache_ratio=0.5",
        ],
        &["sglang.hicache_ratio", "larger than the"],
    );
}

/// An SGLang run's `resolved.toml` states SGLang's derived limits (not vLLM's, which it ignores) and
/// re-runs to the same bytes without a warning.
#[test]
fn an_sglang_runs_resolved_config_reruns_it_without_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    servesim()
        .args(["run", "-q", "--set", "engine.kind=\"sglang\""])
        .args(["--set", "workload.duration_s=10", "--out"])
        .arg(&a)
        .assert()
        .success()
        .stderr("");
    let resolved = std::fs::read_to_string(a.join("resolved.toml")).unwrap();
    assert!(
        resolved.contains("max_running_requests = 2048"),
        "{resolved}"
    );
    assert!(!resolved.contains("max_num_seqs"), "{resolved}");
    let b = tmp.path().join("b");
    servesim()
        .args(["run", "-q", "--config"])
        .arg(a.join("resolved.toml"))
        .arg("--out")
        .arg(&b)
        .assert()
        .success()
        .stderr("");
    assert_eq!(
        std::fs::read(a.join("requests.csv")).unwrap(),
        std::fs::read(b.join("requests.csv")).unwrap()
    );
    let s = summary(&b);
    assert_eq!(s["sglang_max_running_requests"], 2048);
    assert_eq!(s["sglang_chunked_prefill_size"], 8192);
    assert!(s["max_num_seqs"].is_null());
}

// ---- The fuzzer -----------------------------------------------------------------------------------------

/// Config mutations: a key and values from the plausible to the absurd.
const MUTATIONS: &[(&str, &[&str])] = &[
    (
        "workload.session_rate",
        &["0", "-1", "1e-300", "1e300", "5", "inf", "nan", "1e8"],
    ),
    ("workload.duration_s", &["0", "1e-9", "1e12", "5", "-3"]),
    (
        "workload.turns",
        &[
            "{dist=\"constant\", value=1e9}",
            "{dist=\"zipf\", alpha=0.1, min=1, max=1000000}",
            "{dist=\"uniform\", min=5, max=1}",
            "{dist=\"lognormal\", median=3, sigma=50, max=100}",
            "{dist=\"exponential\", mean=3}",
            "{dist=\"constant\", value=3}",
        ],
    ),
    (
        "workload.user_tokens",
        &[
            "{dist=\"constant\", value=0}",
            "{dist=\"constant\", value=4e9}",
            "{dist=\"lognormal\", median=1e300, sigma=1}",
            "{dist=\"gamma\", shape=1e-300, mean=10}",
        ],
    ),
    (
        "workload.response_tokens",
        &[
            "{dist=\"constant\", value=0}",
            "{dist=\"constant\", value=1e12}",
        ],
    ),
    (
        "workload.think_time_s",
        &[
            "{dist=\"constant\", value=1e300}",
            "{dist=\"constant\", value=0}",
        ],
    ),
    ("workload.max_tokens", &["0", "1", "4294967295"]),
    ("workload.arrival", &["\"gamma\""]),
    ("workload.burstiness", &["1e-300", "1e300", "0.01", "0"]),
    (
        "workload.system_prompts",
        &[
            "[{tokens=4294967295, share=1.0}]",
            "[]",
            "[{tokens=10, share=-1}]",
        ],
    ),
    ("workload.doc_probability", &["1.0", "2.0"]),
    (
        "workload.priority",
        &["{dist=\"uniform\", min=0, max=1e300}"],
    ),
    (
        "engine.num_gpu_blocks",
        &["0", "1", "2", "3", "4294967295", "100"],
    ),
    ("engine.block_size", &["0", "1", "4294967295", "7"]),
    (
        "engine.max_model_len",
        &["0", "1", "2", "4294967295", "100"],
    ),
    ("engine.max_num_batched_tokens", &["1", "4294967295"]),
    ("engine.max_num_seqs", &["1", "4294967295"]),
    ("engine.gpu_memory_utilization", &["0", "1e-9", "1", "2"]),
    ("engine.long_prefill_token_threshold", &["1"]),
    ("engine.enable_chunked_prefill", &["false"]),
    ("engine.policy", &["\"priority\""]),
    ("engine.prefix_caching", &["false"]),
    ("engine.prefix_cache_scope", &["\"session\""]),
    ("engine.kind", &["\"sglang\"", "\"none\""]),
    (
        "sglang.schedule_policy",
        &["\"lpm\"", "\"dfs-weight\"", "\"nope\""],
    ),
    ("sglang.chunked_prefill_size", &["-1", "1", "0", "-2"]),
    ("sglang.max_running_requests", &["1", "0"]),
    (
        "sglang.max_total_tokens",
        &["1", "200000", "18446744073709551615"],
    ),
    ("sglang.schedule_conservativeness", &["0.01", "0", "1e300"]),
    ("sglang.enable_hierarchical_cache", &["true"]),
    ("sglang.hicache_ratio", &["0.001", "0", "1e300"]),
    (
        "sglang.hicache_write_policy",
        &["\"write_back\"", "\"write_through_selective\""],
    ),
    ("cluster.replicas", &["0", "3", "100000", "4294967295"]),
    (
        "cluster.router",
        &["\"least_loaded\"", "\"session_affinity\""],
    ),
    ("hardware.tensor_parallel", &["0", "3", "8", "4294967295"]),
    ("hardware.name", &["\"l4\"", "\"nope\"", "\"a100-80gb\""]),
    (
        "model.name",
        &["\"tiny\"", "\"llama-3.1-70b\"", "\"qwen2.5-7b\""],
    ),
    ("cost.kind", &["\"linear\""]),
    ("cost.linear.step_s", &["0", "1e300"]),
    ("cost.roofline.step_overhead_s", &["1e9", "0"]),
    ("cost.roofline.kernel_latency_s", &["0"]),
    ("engine.async_scheduling", &["false"]),
    ("output.timeseries_interval_s", &["0.001", "1e300", "0"]),
    ("output.max_sim_time_s", &["1e-9", "1e300"]),
    ("seed", &["-1", "9223372036854775807"]),
    ("name", &["\"..\"", "\"a/b\"", "\"ok\""]),
];

const TRACES: &[(&str, &str)] = &[
    (
        "mooncake",
        "{\"timestamp\": 0, \"input_length\": 700, \"output_length\": 20, \"hash_ids\": [1, 2]}\n\
         {\"timestamp\": 30, \"input_length\": 1200, \"output_length\": 9, \"hash_ids\": [1, 2, 3]}\n\
         {\"timestamp\": 31, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [4]}\n",
    ),
    (
        "azure",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n\
         2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:51.0000000,10,1\n",
    ),
    (
        "burstgpt",
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
         10,s1,2,GPT-4,100,50,150,Conversation log\n15,s1,1,GPT-4,160,0,160,Conversation log\n\
         20,s1,3,GPT-4,170,40,210,Conversation log\n21,s2,1,GPT-4,5,5,10,Conversation log\n",
    ),
    (
        "servesim",
        "session_id,turn,arrival_s,think_time_s,priority,prompt,response_content,output_tokens,max_tokens\n\
         1,1,0.5,,0,00000000000000aa:40 00000000000000bb:8,00000000000000cc,12,64\n\
         1,2,,2.0,0,00000000000000aa:40 00000000000000bb:8 00000000000000cc:12 00000000000000dd:5,00000000000000ee,3,64\n",
    ),
];

/// Byte-level mutations of a valid trace: flips, deletions, insertions of extreme tokens, repeats.
fn mutate_trace(text: &str, rng: &mut impl Rng) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    const INSERTS: &[&str] = &[
        "-1",
        "0",
        "1e308",
        "NaN",
        "4294967296",
        "18446744073709551616",
        "\n",
        ",",
        "[",
        "{",
        "\"",
        "\u{feff}",
        "2023-02-31",
        "99999999999999999999",
        ":",
        " ",
    ];
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..4) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let end = (at + rng.random_range(1..8)).min(b.len());
                b.drain(at.min(end)..end);
            }
            2 => {
                let s = INSERTS[rng.random_range(0..INSERTS.len())];
                b.splice(at..at, s.bytes());
            }
            _ => {
                let line_end = b[at..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| at + p + 1);
                let line = b[at..line_end].to_vec();
                b.splice(line_end..line_end, line);
            }
        }
    }
    b
}

/// Runs servesim with `args` for at most `limit`; returns (exit code, stderr) or fails on a hang.
fn run_limited(args: &[String], cwd: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hang: servesim {} ran past {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Random and mutated configs and trace bytes through the real binary: every case ends within its limit
/// with exit 0, or exit 2 and an `error:` line, and never a panic or a signal. Deterministic for a given
/// `SERVESIM_FUZZ_SEED` (default 15); `SERVESIM_FUZZ_CASES` sets the number of cases (default 100).
#[test]
fn fuzz_configs_and_traces_through_the_cli() {
    let seed: u64 = std::env::var("SERVESIM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let cases: usize = std::env::var("SERVESIM_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut ok, mut refused) = (0, 0);
    for case in 0..cases {
        // The workload stays bounded (a fuzzed run must end), by a bound the mutations do not touch.
        let mut sets: Vec<String> = vec![
            "workload.max_requests=200".into(),
            "workload.duration_s=20".into(),
        ];
        let trace = case % 3 == 2;
        if trace {
            let (format, text) = TRACES[rng.random_range(0..TRACES.len())];
            let bytes = mutate_trace(text, &mut rng);
            let p = tmp.path().join(format!("case{case}.trace"));
            std::fs::write(&p, bytes).unwrap();
            sets.push("workload.kind=\"trace\"".into());
            sets.push(format!("workload.trace.format=\"{format}\""));
            sets.push(format!("workload.trace.path={:?}", p.display().to_string()));
        }
        for _ in 0..rng.random_range(if trace { 0..2 } else { 1..4 }) {
            let (key, values) = MUTATIONS[rng.random_range(0..MUTATIONS.len())];
            sets.push(format!(
                "{key}={}",
                values[rng.random_range(0..values.len())]
            ));
        }
        let out = tmp.path().join(format!("out{case}"));
        let mut args: Vec<String> = vec!["run".into(), "-q".into()];
        for s in &sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        args.push("--out".into());
        args.push(out.display().to_string());
        let (code, stderr) = run_limited(&args, tmp.path(), Duration::from_secs(60));
        let shown = format!("case {case}: servesim {}\n{stderr}", args.join(" "));
        assert!(!stderr.contains("panicked"), "panic: {shown}");
        match code {
            Some(0) => {
                ok += 1;
                assert!(out.join("summary.json").is_file(), "{shown}");
            }
            Some(2) => {
                refused += 1;
                // Warnings about the config (settings it ignores) may come first, one line each.
                let rest: String = stderr
                    .lines()
                    .skip_while(|l| l.starts_with("warning: "))
                    .collect::<Vec<_>>()
                    .join("\n");
                assert!(rest.starts_with("error: "), "{shown}");
                assert!(!out.exists(), "output left after an input error: {shown}");
            }
            other => panic!("exit {other:?}: {shown}"),
        }
    }
    let left: Vec<String> = names(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
    eprintln!(
        "fuzz: {cases} cases (seed {seed}): {ok} ran, {refused} refused, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        ok > 0 && refused > 0,
        "{ok} ran, {refused} refused: the mix tests nothing"
    );
}
