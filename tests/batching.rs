//! Request-level batching (`engine.kind = "dynamic"`, rules D1-D6 in `scheduler/dynamic.rs`) and the
//! per-conversation store (`engine.kv_cache = "conversation"`, C1-C5), on hand-made native traces with
//! the linear cost model: 10 ms a step, 0.1 ms a prefill token (padding included), 1 ms a decode row,
//! nothing per context token. Every expected time below is that arithmetic.

use crate::common::*;
use servesim::metrics::RequestRow;

fn secs(ns: Option<u64>) -> f64 {
    ns.unwrap() as f64 / 1e9
}

/// (scheduled, first token, finish) in seconds.
fn times(r: &RequestRow) -> (f64, f64, f64) {
    (secs(r.times[1]), secs(r.times[2]), secs(r.times[3]))
}

fn close(a: (f64, f64, f64), b: (f64, f64, f64)) -> bool {
    (a.0 - b.0).abs() < 1e-6 && (a.1 - b.1).abs() < 1e-6 && (a.2 - b.2).abs() < 1e-6
}

/// Dynamic batching with no KV cache: decode tokens recompute their context.
const DYNAMIC_OFF: &str = "kind = \"dynamic\"\nkv_cache = \"off\"";
/// Dynamic batching keeping each request's KV (one-turn sessions: nothing to reuse between them).
const DYNAMIC: &str = "kind = \"dynamic\"\nkv_cache = \"conversation\"";

#[test]
fn d2_a_batch_dispatches_when_full_or_when_its_oldest_has_waited() {
    // Batches of 2, a 10 s delay. A (0 s) waits for B (0.5 s): the pair dispatches at 0.5 and its
    // one-token outputs end with the prefill, 0.01 + 0.0001 x 200 = 0.03 s later. C (0.6 s) waits alone
    // for its delay: it runs at 10.6, for 0.01 + 0.0001 x 100 = 0.02 s.
    let (rows, s) = replay(
        &[
            (1, 1, 0.0, &[(1, 100)], 11, 1, 1),
            (2, 1, 0.5, &[(2, 100)], 12, 1, 1),
            (3, 1, 0.6, &[(3, 100)], 13, 1, 1),
        ],
        DYNAMIC_OFF,
        "[batching]\nmax_batch_size = 2\nmax_queue_delay_s = 10.0",
    );
    assert!(
        close(times(&rows[0]), (0.5, 0.53, 0.53)),
        "{:?}",
        times(&rows[0])
    );
    assert!(close(times(&rows[1]), (0.5, 0.53, 0.53)));
    assert!(
        close(times(&rows[2]), (10.6, 10.62, 10.62)),
        "{:?}",
        times(&rows[2])
    );
    assert_eq!(
        rows.iter().map(|r| r.batch_id).collect::<Vec<_>>(),
        [Some(0), Some(0), Some(1)]
    );
    assert_eq!(s.get_f64("batches"), Some(2.0));
    assert_eq!(s.get_f64("batch_size_mean"), Some(1.5));
}

#[test]
fn d1_incompatible_requests_run_in_separate_batches() {
    // Grouped by max_tokens: A (max 5, 0 s) and C (max 5, 0.2 s) fill a batch of 2 at 0.2 s; B (max 9,
    // 0.1 s) waits for its 1 s delay and runs at 1.1 s, after the pair: prefill 0.03 s, then 4 decode
    // steps of 0.01 + 0.001 x 2 = 0.012 s (A and C end at 0.23 + 0.048 = 0.278 s).
    let (rows, _) = replay(
        &[
            (1, 1, 0.0, &[(1, 100)], 11, 5, 5),
            (2, 1, 0.1, &[(2, 100)], 12, 5, 9),
            (3, 1, 0.2, &[(3, 100)], 13, 5, 5),
        ],
        DYNAMIC,
        "[batching]\nmax_batch_size = 2\nmax_queue_delay_s = 1.0\ngroup_by = [\"max_tokens\"]",
    );
    assert!(
        close(times(&rows[0]), (0.2, 0.23, 0.278)),
        "{:?}",
        times(&rows[0])
    );
    assert!(close(times(&rows[2]), (0.2, 0.23, 0.278)));
    assert_eq!(rows[1].times[1], Some(1_100_000_000));
    assert_eq!(
        (rows[0].batch_id, rows[1].batch_id, rows[2].batch_id),
        (Some(0), Some(1), Some(0))
    );
    // Without grouping, A and B fill the first batch at 0.1 s.
    let (rows, _) = replay(
        &[
            (1, 1, 0.0, &[(1, 100)], 11, 5, 5),
            (2, 1, 0.1, &[(2, 100)], 12, 5, 9),
            (3, 1, 0.2, &[(3, 100)], 13, 5, 5),
        ],
        DYNAMIC,
        "[batching]\nmax_batch_size = 2\nmax_queue_delay_s = 1.0",
    );
    assert_eq!((rows[0].batch_id, rows[1].batch_id), (Some(0), Some(0)));
}

#[test]
fn d3_prompts_are_padded_to_the_longest_and_the_padding_is_priced() {
    // A (100 tokens) and B (40) dispatch together at 0: B carries 60 padding tokens, and the prefill is
    // priced on 100 + 40 + 60 = 200 tokens: 0.01 + 0.02 = 0.03 s.
    let (rows, s) = replay(
        &[
            (1, 1, 0.0, &[(1, 100)], 11, 1, 1),
            (2, 1, 0.0, &[(2, 40)], 12, 1, 1),
        ],
        DYNAMIC_OFF,
        "[batching]\nmax_batch_size = 2",
    );
    assert_eq!((rows[0].padding_tokens, rows[1].padding_tokens), (0, 60));
    assert!(
        close(times(&rows[1]), (0.0, 0.03, 0.03)),
        "{:?}",
        times(&rows[1])
    );
    assert_eq!(s.get_f64("padding_tokens"), Some(60.0));
    // 60 padding of 60 + 140 prompt tokens computed + 2 generated.
    let waste = s.get_f64("padding_waste_frac").unwrap();
    assert!((waste - 60.0 / 202.0).abs() < 1e-12, "{waste}");
}

#[test]
fn d4_lockstep_decode_with_and_without_early_exit() {
    // A (3 tokens) and B (6) decode in lockstep after a 0.03 s prefill; C (0.01 s) never joins them and
    // runs when the batch ends. Without early exit every decode step has two rows (A's padding once it
    // is done): 0.012 s each; A ends after 2 (0.054 s), B after 5 (0.09 s), with 3 padding rows. With
    // early exit B's last 3 steps have one row: 0.011 s each, B ends at 0.054 + 0.033 = 0.087 s.
    let rows_of = |early: bool| {
        replay(
            &[
                (1, 1, 0.0, &[(1, 100)], 11, 3, 3),
                (2, 1, 0.0, &[(2, 100)], 12, 6, 6),
                (3, 1, 0.01, &[(3, 100)], 13, 1, 1),
            ],
            DYNAMIC,
            &format!(
                "[batching]\nmax_batch_size = 2\nmax_queue_delay_s = 0.0\nearly_exit = {early}"
            ),
        )
    };
    let (rows, s) = rows_of(false);
    assert!(
        close(times(&rows[0]), (0.0, 0.03, 0.054)),
        "{:?}",
        times(&rows[0])
    );
    assert!(
        close(times(&rows[1]), (0.0, 0.03, 0.09)),
        "{:?}",
        times(&rows[1])
    );
    assert!((secs(rows[2].times[1]) - 0.09).abs() < 1e-6);
    assert_eq!(s.get_f64("padding_tokens"), Some(3.0));
    let (rows, s) = rows_of(true);
    assert!(
        close(times(&rows[1]), (0.0, 0.03, 0.087)),
        "{:?}",
        times(&rows[1])
    );
    assert!((secs(rows[2].times[1]) - 0.087).abs() < 1e-6);
    assert_eq!(s.get_f64("padding_tokens"), Some(0.0));
}

#[test]
fn d4_a_finished_row_attends_over_the_padded_length() {
    // With 1 us per decode context token: A (100 tokens, 1 output) ends with the prefill; B (40 tokens,
    // 3 outputs) was padded to 100, so the batch's padded length is 100. B's decode steps price B's own
    // row at its context (41, then 42) and A's padding row at the padded length plus the steps (101,
    // 102): 0.01 + 0.002 + 142e-6 and 0.01 + 0.002 + 144e-6 after the 0.03 s prefill.
    let (rows, s) = replay_set(
        &[
            (1, 1, 0.0, &[(1, 100)], 11, 1, 1),
            (2, 1, 0.0, &[(2, 40)], 12, 3, 3),
        ],
        DYNAMIC,
        "[batching]\nmax_batch_size = 2",
        &["cost.linear.decode_context_token_s=0.000001"],
    );
    assert!(
        close(times(&rows[1]), (0.0, 0.03, 0.054286)),
        "{:?}",
        times(&rows[1])
    );
    // 60 tokens of prompt padding and two padding rows.
    assert_eq!(s.get_f64("padding_tokens"), Some(62.0));
}

#[test]
fn kv_off_recomputes_the_context_in_a_batch_too() {
    // One request of 100 prompt tokens and 3 outputs alone (batches of 1): prefill 0.02 s, then decode
    // tokens 2 and 3 recompute 101 and 102 tokens: 0.01 + 0.0101 and 0.01 + 0.0102 s.
    let (rows, _) = replay(
        &[(1, 1, 0.0, &[(1, 100)], 11, 3, 3)],
        DYNAMIC_OFF,
        "[batching]\nmax_batch_size = 1",
    );
    assert!(
        close(times(&rows[0]), (0.0, 0.02, 0.0603)),
        "{:?}",
        times(&rows[0])
    );
}

#[test]
fn c1_c2_c4_a_conversation_store_serves_the_next_turn_and_releases_at_the_end() {
    // Turn 1: 100 prompt tokens, 10 generated, so 109 are stored (the last token is never fed back).
    // Turn 2, 1 s later, repeats turn 1's prompt and answer and adds 20 tokens (130): 109 reused, 21
    // computed. The session then ends and its entry is released.
    let turns: [Row; 2] = [
        (1, 1, 0.0, &[(1, 100)], 11, 10, 10),
        (1, 2, 1.0, &[(1, 100), (11, 10), (2, 20)], 12, 5, 5),
    ];
    for kind in ["none", "dynamic"] {
        let engine = format!("kind = \"{kind}\"\nkv_cache = \"conversation\"");
        let (rows, s) = replay(&turns, &engine, "");
        assert_eq!(
            (rows[1].cached_tokens, rows[1].prefilled_tokens),
            (109, 21),
            "{kind}"
        );
        assert_eq!(s.get_f64("kv_store_hits"), Some(1.0));
        assert_eq!(s.get_f64("kv_store_releases"), Some(1.0));
        // Block figures do not apply to a store without blocks.
        assert!(s.0["kv_cache_usage_perc_mean"].is_null() && s.0["prefix_caching"].is_null());
        assert_eq!(s.get_f64("kv_cache_evictions"), Some(0.0));
        assert_eq!(s.get_f64("kv_store_entries"), Some(0.0));
        // Stored: 109 after turn 1; turn 2 is the session's last, so it is released, not stored.
        assert_eq!(s.get_f64("kv_store_tokens_peak"), Some(109.0));
        // Disabled, nothing is reused.
        let (rows, s) = replay(&turns, &engine, "[kv_store]\nenabled = false");
        assert_eq!(rows[1].cached_tokens, 0);
        assert_eq!(s.get_f64("kv_store_tokens_peak"), Some(0.0));
    }
}

#[test]
fn bad_batching_settings_are_refused_by_key() {
    assert_refused_by_key(&[
        ("batching.max_batch_size=0", "batching.max_batch_size"),
        (
            "batching.max_queue_delay_s=-1",
            "batching.max_queue_delay_s",
        ),
        (
            "batching.max_queue_delay_s=1e30",
            "batching.max_queue_delay_s",
        ),
        ("batching.group_by=[\"colour\"]", "batching.group_by"),
        (
            "batching.adaptive={min_batch_size=9}",
            "batching.adaptive.min_batch_size",
        ),
        (
            "batching.adaptive={decrease_factor=1.5}",
            "batching.adaptive.decrease_factor",
        ),
        (
            "batching.adaptive={interval_s=1e-12}",
            "batching.adaptive.interval_s",
        ),
        ("kv_store.max_tokens=0", "kv_store.max_tokens"),
        (
            "workload.sampling=[{name=\"a\", share=0}]",
            "workload.sampling[0].share",
        ),
        (
            "workload.sampling=[{name=\"a\", temperature=-3}]",
            "workload.sampling[0].temperature",
        ),
        (
            "workload.sampling=[{name=\"a\"}, {name=\"b\", top_p=7}]",
            "workload.sampling[1].top_p",
        ),
        (
            "workload.sampling=[{name=\"a\", top_k=0}]",
            "workload.sampling[0].top_k",
        ),
        // The embedded workload lasts 300 s.
        ("output.warmup_s=400", "output.warmup_s"),
    ]);
}

/// Sampling profiles are drawn from a stream of their own: adding them changes nothing for an engine
/// that ignores them.
#[test]
fn sampling_profiles_change_no_other_draw() {
    let tmp = tempfile::tempdir().unwrap();
    let base = default_with(&["workload.duration_s=30"]);
    let with = default_with(&[
        "workload.duration_s=30",
        "workload.sampling=[{name=\"greedy\", temperature=0.0}, {name=\"creative\", temperature=1.2, share=3}]",
    ]);
    let (_, a) = run_in(tmp.path(), "a", &base);
    let (_, b) = run_in(tmp.path(), "b", &with);
    assert_eq!(
        std::fs::read(a.join("requests.csv")).unwrap(),
        std::fs::read(b.join("requests.csv")).unwrap()
    );
}

/// A dynamic run's terminal summary shows its store and batches, and nothing undefined.
#[test]
fn a_dynamic_run_prints_its_store_and_batches() {
    let tmp = tempfile::tempdir().unwrap();
    for (kind, store, line) in [
        ("dynamic", "conversation", "KV store"),
        ("dynamic", "off", "KV cache   off"),
    ] {
        let out = assert_cmd::Command::cargo_bin("servesim")
            .unwrap()
            .args([
                "run",
                "--set",
                "workload.duration_s=5",
                "--set",
                &format!("engine.kind=\"{kind}\""),
                "--set",
                &format!("engine.kv_cache=\"{store}\""),
                "--out",
            ])
            .arg(tmp.path().join(store))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(line) && text.contains("  batches    "),
            "{text}"
        );
        assert!(!text.contains("NaN"), "{text}");
    }
}

/// Settings the chosen engine or store ignores are run, with a warning naming them.
#[test]
fn ignored_settings_are_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    assert_cmd::Command::cargo_bin("servesim")
        .unwrap()
        .args([
            "run",
            "-q",
            "--set",
            "workload.duration_s=5",
            "--set",
            "batching.max_batch_size=4",
            "--set",
            "kv_store.max_sessions=10",
            "--out",
        ])
        .arg(tmp.path().join("w"))
        .assert()
        .success()
        .stderr(predicates::str::contains("ignored: [batching]"))
        .stderr(predicates::str::contains("ignored: [kv_store]"));
}

#[test]
fn unsupported_engine_and_store_pairs_are_refused_by_name() {
    for (kind, store) in [
        ("vllm", "off"),
        ("vllm", "conversation"),
        ("dynamic", "paged"),
    ] {
        let e = servesim::config::Config::load(
            None,
            &[
                format!("engine.kind=\"{kind}\""),
                format!("engine.kv_cache=\"{store}\""),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("engine.kv_cache") && e.contains("supports"),
            "{e}"
        );
    }
}

/// The README's two engine comparisons give the numbers it prints.
#[test]
fn the_readme_engine_comparisons_run_as_printed() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = assert_cmd::Command::cargo_bin("servesim")
            .unwrap()
            .current_dir(root)
            .args(args)
            .arg("-q")
            .arg("--out")
            .arg(tmp.path().join(args[0]))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "compare",
        "--config",
        "workloads/kv-off.toml",
        "--vary",
        "engine.kv_cache=paged,off",
        "--vary",
        "workload.user_tokens.value=128,1024,4000",
    ]);
    let rows = read_rows(&tmp.path().join("compare").join("comparison.csv"));
    let tpot = |v: &str| {
        num(
            rows.iter().find(|r| r["variant"] == v).unwrap(),
            "tpot_mean_s",
        )
    };
    for c in ["128", "1024", "4000"] {
        let (on, off) = (
            tpot(&format!("kv_cache=paged+value={c}")),
            tpot(&format!("kv_cache=off+value={c}")),
        );
        let row = format!(
            "| {} | {:.2} ms ({:.0} tokens/s) | {:.2} ms ({:.0} tokens/s) | {:.1}x |",
            c.parse::<u32>()
                .map(|n| if n >= 1000 {
                    format!("{},{:03}", n / 1000, n % 1000)
                } else {
                    n.to_string()
                })
                .unwrap(),
            on * 1000.0,
            1.0 / on,
            off * 1000.0,
            1.0 / off,
            off / on
        );
        assert!(readme.contains(&row), "README lacks: {row}");
    }
    run(&[
        "capacity",
        "--config",
        "workloads/chat-slo.toml",
        "--goal",
        "max-rate",
        "--seeds",
        "3",
        "--grid",
        "engine.kind=vllm,dynamic",
    ]);
    let text = std::fs::read_to_string(tmp.path().join("capacity").join("capacity.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let a = &v["answers"];
    let f = |i: usize, k: &str| a[i][k].as_f64().unwrap();
    let vllm = format!(
        "sustains {:.2} [{:.2}, {:.2}] sessions/s",
        f(0, "answer"),
        f(0, "ci95_low"),
        f(0, "ci95_high")
    );
    let dynamic = format!(
        "sustains {:.3} [{:.3}, {:.3}] (95% intervals",
        f(1, "answer"),
        f(1, "ci95_low"),
        f(1, "ci95_high")
    );
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&vllm), "README lacks: {vllm}");
    assert!(flat.contains(&dynamic), "README lacks: {dynamic}");
}
