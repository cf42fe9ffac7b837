//! Prefill/decode disaggregation (`cluster.mode = "disaggregated"`): the KV pull's time, the decode
//! instance's admission, the prefill instance's delayed free, and the request's timeline. Timed cases
//! use `common::replay`'s linear cost model: 10 ms a step, 0.1 ms a prefill token, 1 ms a decode row.
//! Llama-3.1-8B's KV is 2 (K, V) x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 bytes a token, so
//! at 1.31072 GB/s a 1000-token prompt's 131,072,000 bytes take 0.1 s.

use crate::common::*;
use servesim::metrics::RequestRow;
use servesim::run::{simulate, SimOptions};

fn secs(ns: Option<u64>) -> f64 {
    ns.unwrap() as f64 / 1e9
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// One prefill and one decode instance over a link of `gbps` GB/s with `latency_s`.
fn pd(gbps: f64, latency_s: f64, first_token: &str) -> String {
    format!(
        "[cluster]\nmode = \"disaggregated\"\n[cluster.prefill]\nreplicas = 1\n[cluster.decode]\nreplicas = 1\n\
         [cluster.kv_transfer]\nbandwidth_gbps = {gbps}\nlatency_s = {latency_s}\nfirst_token = \"{first_token}\""
    )
}

/// The timeline columns in seconds: prefill queue, prefill, transfer, decode queue, decode.
fn timeline(r: &RequestRow) -> [f64; 5] {
    r.pd_timeline
        .expect("a finished disaggregated request")
        .map(|ns| ns as f64 / 1e9)
}

#[test]
fn the_pull_takes_bytes_over_bandwidth_plus_latency_and_decode_starts_when_it_lands() {
    // Prompt 1000, 5 output tokens. The prefill instance's step: 0.01 + 1000 x 0.0001 = 0.11 s. The
    // decode instance pulls 1000 tokens: 0.05 + 131,072,000 / 1.31072e9 = 0.15 s, landing at 0.26; it
    // recomputes the last prompt token as a decode row (0.01 + 0.001 = 0.011) and samples token 1 at
    // 0.271, then 4 decode steps: 0.315.
    let (rows, s) = replay(
        &[(1, 1, 0.0, &[(1u64, 1000u32)][..], 11, 5, 5)],
        "",
        &pd(1.31072, 0.05, "decode"),
    );
    let r = &rows[0];
    assert_eq!((r.prefill_replica, r.replica), (Some(0), Some(1)));
    assert!(near(secs(r.times[2]), 0.271), "{:?}", r.times);
    assert!(near(secs(r.times[3]), 0.315), "{:?}", r.times);
    let t = timeline(r);
    for (got, want) in t.iter().zip([0.0, 0.11, 0.15, 0.0, 0.055]) {
        assert!(near(*got, want), "{t:?}");
    }
    assert!(near(t.iter().sum::<f64>(), secs(r.e2e)));
    assert_eq!(s.get_f64("pd_kv_transfer_bytes"), Some(131_072_000.0));
    assert_eq!(s.get_f64("pd_kv_transfers"), Some(1.0));
    assert_eq!(s.get_f64("pd_kv_transfer_mean_s"), Some(0.15));
    // Two GPUs an instance on both sides: each rank sends its shard over its own link, 0.05 + 0.1 / 2.
    let (rows, _) = replay_set(
        &[(1, 1, 0.0, &[(1u64, 1000u32)][..], 11, 5, 5)],
        "",
        &pd(1.31072, 0.05, "decode"),
        &[
            "cluster.prefill.tensor_parallel = 2",
            "cluster.decode.tensor_parallel = 2",
        ],
    );
    assert!(near(timeline(&rows[0])[2], 0.1), "{:?}", timeline(&rows[0]));
}

#[test]
fn each_pool_is_sized_and_priced_for_its_own_hardware() {
    // Prefill on A100s (312 dense bf16 TFLOP/s) against H100s (989): the same prompts prefill slower;
    // the decode pool, on H100s both times, is the same hardware.
    let run = |prefill_hw: &str| {
        let cfg = config(
            SMALL_CHAT,
            &[
                "workload.duration_s = 30.0",
                "cluster.mode = \"disaggregated\"",
                "cluster.prefill.replicas = 1",
                &format!("cluster.prefill.hardware = \"{prefill_hw}\""),
                "cluster.decode.replicas = 1",
            ],
        );
        let sim = simulate(
            &cfg,
            &SimOptions {
                rows: servesim::metrics::Rows::Keep,
                ..SimOptions::default()
            },
        )
        .unwrap();
        let prefill: Vec<f64> = sim
            .requests
            .iter()
            .filter_map(|r| r.pd_timeline)
            .map(|t| t[1] as f64)
            .collect();
        prefill.iter().sum::<f64>() / prefill.len() as f64
    };
    let (h100, a100) = (run("h100-sxm"), run("a100-80gb"));
    assert!(
        a100 > 1.5 * h100,
        "mean prefill {a100} ns on A100 vs {h100} on H100"
    );
}

#[test]
fn a_full_decode_instance_admits_the_pull_when_blocks_free_and_the_prefill_instance_holds_its_blocks_until_then(
) {
    // 70 blocks of 16 tokens (69 usable) on each instance: one 1000-token prompt (63 blocks) at a time.
    // A and B arrive at 0. Prefill: A runs 0-0.11; B does not fit while A's blocks wait for the pull,
    // which lands at 0.26 (as above); B then runs 0.26-0.37. Decode: A's first token at 0.271, then 19
    // decode steps to 0.48 (20 tokens, 64 blocks). B, handed over at 0.37, does not fit until A
    // finishes: its pull runs 0.48-0.63, its token 1 at 0.641, its 5th at 0.685.
    let (rows, _) = replay_set(
        &[
            (1, 1, 0.0, &[(1u64, 1000u32)][..], 11, 20, 20),
            (2, 1, 0.0, &[(2u64, 1000u32)][..], 12, 5, 5),
        ],
        "",
        &pd(1.31072, 0.05, "decode"),
        &["engine.num_gpu_blocks = 70", "engine.max_model_len = 1100"],
    );
    let (a, b) = (&rows[0], &rows[1]);
    assert!(near(secs(a.times[3]), 0.48), "{:?}", a.times);
    assert!(near(secs(b.times[1]), 0.26), "{:?}", b.times);
    assert!(near(secs(b.times[2]), 0.641), "{:?}", b.times);
    assert!(near(secs(b.times[3]), 0.685), "{:?}", b.times);
    // Prefill queue 0.26, prefill 0.11, decode queue 0.48 - 0.37 = 0.11 before the pull and none
    // after, transfer 0.15, decode 0.685 - 0.63 = 0.055.
    let t = timeline(b);
    for (got, want) in t.iter().zip([0.26, 0.11, 0.15, 0.11, 0.055]) {
        assert!(near(*got, want), "{t:?}");
    }
    for r in &rows {
        assert!(near(timeline(r).iter().sum::<f64>(), secs(r.e2e)));
    }
}

#[test]
fn with_an_unbounded_link_the_split_adds_only_what_the_first_token_rule_says() {
    // Aggregated: token 1 at 0.11 (prefill), tokens 2-5 at 0.011 each: 0.154, TPOT 0.011.
    let row = [(1, 1, 0.0, &[(1u64, 1000u32)][..], 11, 5, 5)];
    let (agg, _) = replay(&row, "", "");
    assert!(near(secs(agg[0].times[2]), 0.11) && near(secs(agg[0].times[3]), 0.154));
    let unbounded = 1e12;
    // The prefill's first token is the client's (SGLang, Splitwise): the same TTFT and TPOT.
    let (split, _) = replay(&row, "", &pd(unbounded, 0.0, "prefill"));
    assert_eq!(split[0].ttft, agg[0].ttft);
    assert_eq!(split[0].tpot, agg[0].tpot);
    assert_eq!(split[0].e2e, agg[0].e2e);
    assert_eq!(split[0].output_tokens, 5);
    // vLLM's proxy: the decode instance recomputes the last prompt token, one decode step (0.011 s)
    // more to the first token; the tokens after it come as fast.
    let (vllm, _) = replay(&row, "", &pd(unbounded, 0.0, "decode"));
    assert!(near(secs(vllm[0].ttft), 0.11 + 0.011), "{:?}", vllm[0].ttft);
    assert!(near(vllm[0].tpot.unwrap(), agg[0].tpot.unwrap()));
}

#[test]
fn a_chat_run_splits_every_finished_request_into_parts_that_sum_to_its_e2e() {
    let cfg = config(
        SMALL_CHAT,
        &[
            "workload.duration_s = 60.0",
            "cluster.mode = \"disaggregated\"",
            "cluster.prefill.replicas = 1",
            "cluster.decode.replicas = 2",
            "cluster.decode.router = \"least_loaded\"",
        ],
    );
    let run = |no_leap: bool| {
        simulate(
            &cfg,
            &SimOptions {
                rows: servesim::metrics::Rows::Keep,
                no_leap,
                ..SimOptions::default()
            },
        )
        .unwrap()
    };
    let sim = run(false);
    let finished: Vec<&RequestRow> = sim
        .requests
        .iter()
        .filter(|r| r.status == servesim::request::Status::Finished)
        .collect();
    assert!(finished.len() > 100, "{} finished", finished.len());
    for r in &finished {
        let t = r
            .pd_timeline
            .expect("every finished request has a timeline");
        // Integer nanoseconds: exact.
        assert_eq!(t.iter().sum::<u64>(), r.e2e.unwrap(), "request {}", r.id);
        assert_eq!(r.prefill_replica, Some(0));
        assert!(matches!(r.replica, Some(1) | Some(2)));
    }
    let roles: Vec<&str> = sim.replicas.iter().map(|r| r.role).collect();
    assert_eq!(roles, ["prefill", "decode", "decode"]);
    // The prefill instance runs no decode step: one step per request at most (prompts fit one chunk).
    assert!(sim.replicas[0].steps <= sim.replicas[0].requests);
    // Leaps on the decode instances change nothing.
    let slow = run(true);
    assert_eq!(
        format!("{:?}", sim.requests),
        format!("{:?}", slow.requests)
    );
    assert_eq!(sim.summary.to_json(), slow.summary.to_json());
}

#[test]
fn bad_disaggregated_settings_are_refused_naming_the_key() {
    let d = "cluster.mode=\"disaggregated\"";
    let p = "cluster.prefill.replicas=1";
    let q = "cluster.decode.replicas=1";
    let refused = |sets: &[&str], key: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = servesim::config::Config::load(None, &sets)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{sets:?}: {e}");
    };
    // A pool not described has one instance.
    let one = servesim::config::Config::load(None, &[d.into(), p.into()]).unwrap();
    assert_eq!(one.cluster.pd_pools(), Some((1, 1)));
    refused(
        &[d, p, "cluster.decode.replicas=0"],
        "cluster.decode.replicas",
    );
    refused(
        &[d, p, q, "cluster.kv_transfer.bandwidth_gbps=0"],
        "bandwidth_gbps",
    );
    refused(&[d, p, q, "engine.kind=\"sglang\""], "engine.kind");
    refused(
        &[d, p, q, "workload.client_timeout_s=5.0"],
        "client_timeout_s",
    );
    // Pools in an aggregated cluster are reported as ignored (one config compares both modes).
    let agg = servesim::config::Config::load(None, &[p.into(), q.into()]).unwrap();
    assert!(
        agg.notices()
            .iter()
            .any(|n| n.contains("[cluster.prefill] applies with")),
        "{:?}",
        agg.notices()
    );
    // The replicas are the pools' sum; a different count set is reported as ignored.
    let load = |n: &str| {
        servesim::config::Config::load(None, &[d.into(), p.into(), q.into(), n.into()]).unwrap()
    };
    assert_eq!(load("cluster.replicas=2").cluster.replicas, 2);
    assert!(load("cluster.replicas=2").notices().is_empty());
    let cfg = load("cluster.replicas=5");
    assert_eq!(cfg.cluster.replicas, 2);
    assert!(
        cfg.notices()
            .iter()
            .any(|n| n.contains("cluster.replicas = 5")),
        "{:?}",
        cfg.notices()
    );
}

/// The README's table rows for `runs` (each a summary), as `| name | a / b ms | ... |`, in ms to 0.1.
pub fn readme_row(name: &str, keys: &[&str], runs: &[&servesim::metrics::Summary]) -> String {
    let cells: Vec<String> = runs
        .iter()
        .map(|s| {
            keys.iter()
                .map(|k| format!("{:.1}", s.get_f64(k).unwrap() * 1000.0))
                .collect::<Vec<_>>()
                .join(" / ")
                + " ms"
        })
        .collect();
    format!("| {name} | {} |", cells.join(" | "))
}

#[test]
fn the_readme_disaggregation_example_runs_as_printed() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let sets = [
        "cluster.replicas=4",
        "cluster.prefill.replicas=2",
        "cluster.decode.replicas=2",
    ];
    let run = |mode: &str| {
        let mut s = sets.to_vec();
        let m = format!("cluster.mode=\"{mode}\"");
        s.push(&m);
        simulate(&default_with(&s), &SimOptions::default())
            .unwrap()
            .summary
    };
    let (agg, pd) = (run("aggregated"), run("disaggregated"));
    for (name, keys) in [
        (
            "TTFT median / p90 / p99",
            &["ttft_median_s", "ttft_p90_s", "ttft_p99_s"][..],
        ),
        ("TPOT mean / p99", &["tpot_mean_s", "tpot_p99_s"][..]),
        ("E2E median / p99", &["e2e_median_s", "e2e_p99_s"][..]),
    ] {
        let row = readme_row(name, keys, &[&agg, &pd]);
        assert!(readme.contains(&row), "README lacks: {row}");
    }
    let mean_ms = pd.get_f64("pd_kv_transfer_mean_s").unwrap() * 1000.0;
    let gb = pd.get_f64("pd_kv_transfer_bytes").unwrap() / 1e9;
    let text = format!("({mean_ms:.1} ms on average, {gb:.0} GB in all)");
    assert!(
        readme.replace('\n', " ").contains(&text),
        "README lacks: {text}"
    );
}

#[test]
fn a_heterogeneous_split_reruns_from_its_resolved_config() {
    // Prefill on two A100s an instance (their own block count, limits and activation reserve), decode
    // on H100s: resolved.toml leaves the per-pool values derived, so it re-runs to the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = default_with(&[
        "workload.duration_s = 20.0",
        "cluster.mode = \"disaggregated\"",
        "cluster.prefill.replicas = 1",
        "cluster.prefill.hardware = \"a100-80gb\"",
        "cluster.prefill.tensor_parallel = 2",
        "cluster.decode.replicas = 2",
    ]);
    let (first, dir) = run_in(tmp.path(), "first", &cfg);
    let s = &first.summary;
    assert_eq!(s.0["prefill_hardware"], "a100-80gb");
    assert_eq!(s.get_f64("prefill_tensor_parallel"), Some(2.0));
    assert_eq!(s.get_f64("gpus"), Some(4.0));
    assert_ne!(
        s.get_f64("prefill_num_gpu_blocks"),
        s.get_f64("decode_num_gpu_blocks")
    );
    let resolved = dir.join("resolved.toml");
    let again = servesim::config::Config::load(Some(&resolved), &[]).unwrap();
    assert!(again.notices().is_empty(), "{:?}", again.notices());
    // Other pools on top of it: the replica count follows them, with nothing to report.
    let more =
        servesim::config::Config::load(Some(&resolved), &["cluster.decode.replicas=3".into()])
            .unwrap();
    assert_eq!(more.cluster.replicas, 4);
    assert!(more.notices().is_empty(), "{:?}", more.notices());
    let (_, dir2) = run_in(tmp.path(), "again", &again);
    for f in ["requests.csv", "summary.json", "replicas.csv"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(dir2.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_one_token_answer_ends_on_the_prefill_instance_under_the_prefill_first_token_rule() {
    // The prefill's token is the answer (0.01 + 1000 x 0.0001 = 0.11 s); nothing is pulled.
    let (rows, s) = replay(
        &[(1, 1, 0.0, &[(1u64, 1000u32)][..], 11, 1, 5)],
        "",
        &pd(1.31072, 0.05, "prefill"),
    );
    let r = &rows[0];
    assert_eq!(
        (r.output_tokens, r.replica, r.prefill_replica),
        (1, Some(0), Some(0))
    );
    assert!(near(secs(r.times[3]), 0.11) && near(secs(r.ttft), 0.11));
    assert_eq!(
        timeline(r).map(|t| (t * 1e9).round()),
        [0.0, 1.1e8, 0.0, 0.0, 0.0]
    );
    assert_eq!(s.get_f64("pd_kv_transfers"), Some(0.0));
}

#[test]
fn a_one_token_prompt_is_pulled_whole_and_its_token_recomputed() {
    // Prefill 0.01 + 0.0001 = 0.0101 s; the pull 0.05 + 131,072 / 1.31072e9 = 0.0501 s lands at
    // 0.0602; the decode instance recomputes the token as a decode row (0.011) and samples token 1 at
    // 0.0712, token 2 at 0.0822. Looked up once on each instance.
    let (rows, s) = replay(
        &[(1, 1, 0.0, &[(1u64, 1u32)][..], 11, 2, 2)],
        "",
        &pd(1.31072, 0.05, "decode"),
    );
    let r = &rows[0];
    assert!(near(secs(r.times[2]), 0.0712), "{:?}", r.times);
    assert!(near(secs(r.times[3]), 0.0822), "{:?}", r.times);
    assert_eq!(s.get_f64("prefix_cache_queries"), Some(2.0));
}

#[test]
fn a_decode_pool_that_takes_nothing_rejects_the_hand_off_and_frees_the_prefill_blocks() {
    // Every instance with any KV in use is degraded. A (20 tokens) is pulled at 0.11 and decodes until
    // 0.48; B, arriving at 0.3, is prefilled by 0.41 and finds the one decode instance degraded: it is
    // rejected as unavailable, and the prefill instance serves C (arriving at 0.5) at once.
    let (rows, _) = replay_set(
        &[
            (1, 1, 0.0, &[(1u64, 1000u32)][..], 11, 20, 20),
            (2, 1, 0.3, &[(2u64, 1000u32)][..], 12, 5, 5),
            (3, 1, 0.5, &[(3u64, 1000u32)][..], 13, 5, 5),
        ],
        "",
        &(pd(1.31072, 0.05, "decode") + "\n[admission]\nmax_kv_usage_degraded = 0.000001"),
        &["engine.num_gpu_blocks = 70", "engine.max_model_len = 1100"],
    );
    assert_eq!(rows[1].status.as_str(), "rejected");
    assert_eq!(rows[1].failure.map(|f| f.as_str()), Some("unavailable"));
    assert_eq!(rows[1].prefill_replica, Some(0));
    // C's prefill starts on arrival: B's 63 blocks were released (69 usable, 63 a prompt).
    assert!(near(secs(rows[2].times[1]), 0.5), "{:?}", rows[2].times);
}

#[test]
fn leaps_stay_exact_when_only_the_decode_router_reads_loads() {
    // Round robin in front of the prefill pool reads nothing; least-loaded by KV usage in front of the
    // decode pool does, through a delayed scrape: coasting decode instances must be caught up before
    // any scrape. Speculation on top, and a stop with pulls in flight.
    for spec in [false, true] {
        let mut sets = vec![
            "workload.duration_s = 40.0",
            "workload.session_rate = 6.0",
            "output.max_sim_time_s = 45.0",
            "cluster.mode = \"disaggregated\"",
            "cluster.signal_delay_s = 0.5",
            "cluster.prefill.replicas = 2",
            "cluster.decode.replicas = 3",
            "cluster.decode.router = \"least_loaded\"",
            "cluster.load_signal = \"kv_usage\"",
        ];
        if spec {
            sets.extend([
                "engine.speculative.method = \"eagle\"",
                "engine.speculative.num_speculative_tokens = 2",
                "engine.speculative.acceptance_rate = 0.7",
            ]);
        }
        let cfg = config(SMALL_CHAT, &sets);
        let run = |no_leap: bool| {
            simulate(
                &cfg,
                &SimOptions {
                    rows: servesim::metrics::Rows::Keep,
                    no_leap,
                    ..SimOptions::default()
                },
            )
            .unwrap()
        };
        let (a, b) = (run(false), run(true));
        assert_eq!(format!("{:?}", a.requests), format!("{:?}", b.requests));
        assert_eq!(a.summary.to_json(), b.summary.to_json());
        if !spec {
            assert!(a.leapt_steps > 0, "the decode instances leapt");
        } else {
            assert!(a.summary.get_f64("spec_decode_num_drafts").unwrap() > 0.0);
        }
        let unfinished = a
            .requests
            .iter()
            .filter(|r| r.status == servesim::request::Status::Unfinished)
            .count();
        assert!(unfinished > 0, "the stop cut requests short");
        for r in &a.requests {
            match (r.status, r.pd_timeline) {
                (servesim::request::Status::Finished, Some(t)) => {
                    assert_eq!(t.iter().sum::<u64>(), r.e2e.unwrap())
                }
                (servesim::request::Status::Finished, None) => panic!("{} has no timeline", r.id),
                (_, t) => assert!(t.is_none()),
            }
        }
    }
}
