//! Run-level behaviour: stopping early, several replicas, priority scheduling end to end.

use crate::common::*;

#[test]
fn stopping_early_reports_unfinished_requests_and_conserves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, dir) = run_in(
        tmp.path(),
        "stop",
        &config(SMALL_CHAT, &["output.max_sim_time_s=20.0"]),
    );
    let s = &o.summary;
    let unfinished = s.get_f64("requests_unfinished").unwrap();
    assert!(unfinished > 0.0);
    let rows = read_rows(&dir.join("requests.csv"));
    assert_eq!(rows.len() as f64, s.get_f64("requests").unwrap());
    let n_unf = rows.iter().filter(|r| r["status"] == "unfinished").count();
    assert_eq!(n_unf as f64, unfinished);
    // Unfinished rows have no finish time and no E2E.
    assert!(rows
        .iter()
        .filter(|r| r["status"] == "unfinished")
        .all(|r| r["finish_s"].is_empty() && r["e2e_s"].is_empty()));
    assert!(rows.iter().all(|r| num(r, "arrival_s") <= 20.0));
}

#[test]
fn session_affinity_keeps_a_session_on_one_replica_and_round_robin_spreads() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = run_in(
        tmp.path(),
        "aff",
        &config(
            SMALL_CHAT,
            &["cluster.replicas=3", "cluster.router=\"session_affinity\""],
        ),
    );
    let rows = read_rows(&dir.join("requests.csv"));
    let mut home = std::collections::HashMap::new();
    for r in &rows {
        let prev = home.insert(r["session_id"].clone(), r["replica"].clone());
        if let Some(p) = prev {
            assert_eq!(p, r["replica"], "session {} moved", r["session_id"]);
        }
    }
    let (_, dir) = run_in(
        tmp.path(),
        "rr",
        &config(SMALL_CHAT, &["cluster.replicas=3"]),
    );
    let rows = read_rows(&dir.join("requests.csv"));
    for rep in ["0", "1", "2"] {
        let n = rows.iter().filter(|r| r["replica"] == rep).count();
        assert!(
            n > rows.len() / 4,
            "replica {rep} got {n} of {}",
            rows.len()
        );
    }
}

#[test]
fn priority_policy_serves_high_priority_faster_under_load() {
    // Two priority classes (0 and 1, half each) on an overloaded replica: class 0 waits less.
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = run_in(
        tmp.path(),
        "prio",
        &config(
            SMALL_CHAT,
            &[
                "engine.policy=\"priority\"",
                "workload.priority={dist=\"uniform\", min=0.0, max=1.0}",
                "workload.session_rate=20.0",
                "workload.duration_s=30.0",
            ],
        ),
    );
    let rows = read_rows(&dir.join("requests.csv"));
    let mean_queue = |p: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r["priority"] == p && r["status"] == "finished")
            .map(|r| num(r, "queue_s"))
            .collect();
        assert!(v.len() > 50);
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (q0, q1) = (mean_queue("0"), mean_queue("1"));
    assert!(q0 < q1, "priority 0 waited {q0:.3} s, priority 1 {q1:.3} s");
}

/// `simulate` is `run` without files: the same summary whether the rows are discarded, kept in memory or
/// streamed to files; the kept rows are the file's rows (one per request, same ids in the same order); and
/// the public parallel map gives the same summaries on one thread or three.
#[test]
fn simulate_without_files_gives_runs_summary_and_rows() {
    use servesim::metrics::Rows;
    use servesim::report::parallel_map;
    use servesim::run::{simulate, SimOptions};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(SMALL_CHAT, &["workload.duration_s=20.0"]);
    let (o, dir) = run_in(tmp.path(), "files", &cfg);
    let discard = simulate(&cfg, &SimOptions::default()).unwrap();
    assert_eq!(discard.summary, o.summary);
    assert!(discard.requests.is_empty() && discard.timeseries.is_empty());
    let keep = simulate(
        &cfg,
        &SimOptions {
            rows: Rows::Keep,
            ..SimOptions::default()
        },
    )
    .unwrap();
    assert_eq!(keep.summary, o.summary);
    assert!(
        o.summary.0.get("events").is_none(),
        "events is a debug statistic"
    );
    let rows = read_rows(&dir.join("requests.csv"));
    assert_eq!(keep.requests.len(), rows.len());
    for (k, r) in keep.requests.iter().zip(&rows) {
        assert_eq!(k.id.to_string(), r["request_id"]);
        assert_eq!(k.status.as_str(), r["status"]);
    }
    let samples = std::fs::read_to_string(dir.join("timeseries.csv")).unwrap();
    assert_eq!(keep.timeseries.len(), samples.lines().count() - 1);
    // Nothing was written by the in-memory runs: the temporary directory holds only the file run.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    let seeds = [1u64, 2, 3];
    let go = |&seed: &u64| {
        let c = config(
            SMALL_CHAT,
            &["workload.duration_s=10.0", &format!("seed={seed}")],
        );
        simulate(&c, &SimOptions::default()).unwrap().summary
    };
    let one = parallel_map(&seeds, 1, go);
    assert_eq!(one, parallel_map(&seeds, 3, go));
    assert_ne!(one[0], one[1], "different seeds, different runs");
}

#[test]
fn the_resolved_header_labels_figures_per_gpu_or_per_replica_and_counts_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = default_with(&[
        "model.name=\"llama-3.1-70b\"",
        "hardware.tensor_parallel=2",
        "cluster.replicas=3",
        "engine.max_model_len=16384",
        "workload.duration_s=5",
    ]);
    let (_, out) = run_in(tmp.path(), "tp2", &cfg);
    let text = std::fs::read_to_string(out.join("resolved.toml")).unwrap();
    // KV per token, whole replica: 80 layers x 2 (K, V) x 8 KV heads x 128 x 2 bytes = 327,680.
    assert!(
        text.contains("KV 327680 bytes per token per replica"),
        "{text}"
    );
    assert!(text.contains("GiB per GPU; KV"), "{text}");
    assert!(text.contains("h100-sxm, per GPU: 79.19 GiB"), "{text}");
    assert!(
        text.contains("2 GPU(s) per replica (tensor_parallel) x 3 replica(s) = 6 GPU(s)"),
        "{text}"
    );
    assert!(text.contains("# KV cache per replica: "), "{text}");
}

/// Past `output.exact_percentiles_up_to` finished requests the latency percentiles come from the sketch:
/// each within 0.1% of the order statistic at rank floor(q (n - 1)) of the `requests.csv` column (an
/// independent count: the rows are written whatever the summary does), the means exact to rounding, and
/// the summary says so; below the limit they are numpy's, and the rows are the same bytes either way.
#[test]
fn latency_percentiles_are_sketched_past_the_limit_within_the_stated_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (exact, dir_e) = run_in(tmp.path(), "exact", &config(SMALL_CHAT, &[]));
    let (sk, dir_s) = run_in(
        tmp.path(),
        "sketch",
        &config(SMALL_CHAT, &["output.exact_percentiles_up_to=100"]),
    );
    assert_eq!(
        std::fs::read(dir_e.join("requests.csv")).unwrap(),
        std::fs::read(dir_s.join("requests.csv")).unwrap()
    );
    let (e, s) = (&exact.summary.0, &sk.summary.0);
    assert_eq!(e["percentiles_exact"], serde_json::json!(true));
    assert_eq!(e["percentiles_relative_error"], serde_json::Value::Null);
    assert_eq!(s["percentiles_exact"], serde_json::json!(false));
    assert_eq!(s["percentiles_relative_error"], serde_json::json!(0.001));
    let rows = read_rows(&dir_s.join("requests.csv"));
    let n = s["requests_measured"].as_u64().unwrap();
    assert!(n > 300, "{n} measured");
    for col in ["ttft", "e2e", "queue"] {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r["status"] == "finished")
            .map(|r| num(r, &format!("{col}_s")))
            .collect();
        v.sort_by(f64::total_cmp);
        assert_eq!(v.len() as u64, n);
        for (q, key) in [(0.5, "median"), (0.9, "p90"), (0.99, "p99")] {
            let at = v[(q * (v.len() - 1) as f64) as usize];
            let got = s[&format!("{col}_{key}_s")].as_f64().unwrap();
            // The CSV rounds to the microsecond: allow that beside the sketch's 0.1%.
            assert!(
                (got - at).abs() <= 0.001 * at + 1e-6,
                "{col} {key}: {got} vs {at}"
            );
            // Below the limit: numpy's linear interpolation over the same values.
            let pos = q * (v.len() - 1) as f64;
            let (lo, hi) = (v[pos.floor() as usize], v[pos.ceil() as usize]);
            let numpy = lo + (hi - lo) * (pos - pos.floor());
            let ex = e[&format!("{col}_{key}_s")].as_f64().unwrap();
            assert!((ex - numpy).abs() <= 1e-6, "{col} {key}: {ex} vs {numpy}");
        }
        let mean = s[&format!("{col}_mean_s")].as_f64().unwrap();
        let exact_mean = e[&format!("{col}_mean_s")].as_f64().unwrap();
        assert!((mean - exact_mean).abs() <= 1e-9 * exact_mean);
    }
}

/// `--format parquet` writes `requests.parquet` instead of `requests.csv`: the same columns, in order,
/// holding the same rows (integers and strings equal, times within the CSV's rounding to microseconds,
/// null exactly where the CSV cell is empty), and every other file the same bytes. The workload rejects
/// some prompts (max_model_len below the longest), so nullable columns hold nulls.
#[test]
fn parquet_requests_hold_the_csv_rows() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, UInt32Type, UInt64Type};
    use arrow_array::Array;
    use arrow_schema::DataType;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("small.toml");
    std::fs::write(
        &cfg,
        SMALL_CHAT.replace("max_model_len = 32768", "max_model_len = 2048"),
    )
    .unwrap();
    let run = |format: &str| {
        let out = dir.path().join(format);
        assert_cmd::Command::cargo_bin("servesim")
            .unwrap()
            .args(["run", "-q", "--format", format, "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        out
    };
    let (csv_dir, pq_dir) = (run("csv"), run("parquet"));
    assert!(!pq_dir.join("requests.csv").exists());
    for f in [
        "summary.json",
        "timeseries.csv",
        "replicas.csv",
        "resolved.toml",
    ] {
        assert_eq!(
            std::fs::read(csv_dir.join(f)).unwrap(),
            std::fs::read(pq_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    let rows = read_rows(&csv_dir.join("requests.csv"));
    let file = std::fs::File::open(pq_dir.join("requests.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut i = 0;
    let mut nulls = 0;
    for batch in reader {
        let b = batch.unwrap();
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, servesim::metrics::REQUEST_COLUMNS);
        for k in 0..b.num_rows() {
            for (c, name) in names.iter().enumerate() {
                let a = b.column(c);
                let want = &rows[i][name];
                if a.is_null(k) {
                    assert_eq!(want, "", "row {i} {name}");
                    nulls += 1;
                    continue;
                }
                match a.data_type() {
                    DataType::Float64 => {
                        let v = a.as_primitive::<Float64Type>().value(k);
                        let w: f64 = want.parse().unwrap();
                        // Half a microsecond (the CSV's rounding), plus the floats' own error.
                        assert!(
                            (v - w).abs() <= 0.5e-6 + 1e-9,
                            "row {i} {name}: {v} vs {want}"
                        );
                    }
                    DataType::UInt64 => {
                        let v = a.as_primitive::<UInt64Type>().value(k);
                        assert_eq!(v.to_string(), *want, "row {i} {name}")
                    }
                    DataType::UInt32 => {
                        let v = a.as_primitive::<UInt32Type>().value(k);
                        assert_eq!(v.to_string(), *want, "row {i} {name}")
                    }
                    DataType::Int64 => {
                        let v = a.as_primitive::<Int64Type>().value(k);
                        assert_eq!(v.to_string(), *want, "row {i} {name}")
                    }
                    DataType::Utf8 => {
                        assert_eq!(a.as_string::<i32>().value(k), want, "row {i} {name}")
                    }
                    t => panic!("{name}: unexpected type {t}"),
                }
            }
            i += 1;
        }
    }
    assert_eq!(i, rows.len());
    let rejected = rows.iter().filter(|r| r["status"] == "rejected").count();
    assert!(
        rejected > 0 && nulls > 0,
        "{rejected} rejected, {nulls} nulls"
    );
}
