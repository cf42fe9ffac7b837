//! Leaping over runs of pure-decode steps is exact: byte-identical outputs with and without it, on
//! workloads with prefix hits, preemption, several replicas, priorities and trace replay.

use crate::common::*;
use servesim::config::{Config, EngineKind, KvKind};
use servesim::run::{run, RunOptions};

fn both(name: &str, cfg: &Config) -> u64 {
    both_outcome(name, cfg).leapt_steps
}

/// [`both`], with the run's summary.
fn both_summary(name: &str, cfg: &Config) -> (u64, servesim::metrics::Summary) {
    let a = both_outcome(name, cfg);
    (a.leapt_steps, a.summary)
}

/// The Mooncake conversation trace shipped in `data/` (`max_requests` set by each test).
const MOONCAKE: &str = "name = \"mc\"\n[workload]\nkind = \"trace\"\n\
    trace = { format = \"mooncake\", path = \"data/traces/mooncake/conversation_trace.jsonl\" }\n";

/// Replicas coasted, and something caught many of them up.
fn assert_coasted(name: &str, a: &servesim::run::RunOutcome) {
    assert!(
        a.coasts > 100 && a.catch_ups > 10,
        "{name}: {} coasts, {} caught up",
        a.coasts,
        a.catch_ups
    );
}

/// [`both`], with the leaping run's outcome.
fn both_outcome(name: &str, cfg: &Config) -> servesim::run::RunOutcome {
    let tmp = tempfile::tempdir().unwrap();
    let go = |no_leap: bool, dir: &str| {
        run(
            cfg,
            &RunOptions {
                out: Some(tmp.path().join(dir)),
                progress: false,
                no_leap,
                variant: String::new(),
                save_cache: None,
                format: Default::default(),
            },
        )
        .unwrap()
    };
    let a = go(false, "leap");
    let b = go(true, "step");
    assert_eq!(b.leapt_steps, 0);
    // Leap contract, condition 7: a leap stands in for exactly the events stepping dispatches.
    assert_eq!(a.events, b.events, "{name}: event counts differ");
    for f in [
        "requests.csv",
        "summary.json",
        "summary.csv",
        "timeseries.csv",
        "replicas.csv",
    ] {
        let x = std::fs::read(tmp.path().join("leap").join(f)).unwrap();
        let y = std::fs::read(tmp.path().join("step").join(f)).unwrap();
        assert!(x == y, "{name}: {f} differs between leaping and stepping");
    }
    a
}

/// Every engine kind over every KV store kind, each on a workload with prefix hits and one with
/// preemption. A new kind must be added to `EngineKind::ALL` or `KvKind::ALL` and given its name here (the
/// matches are exhaustive, so the build fails until it is): the leap contract (`replica.rs`) then holds for
/// it, or its `steady_decode` or `decode_rule` declines to leap.
#[test]
fn leap_equals_step_for_every_engine_and_store_kind() {
    for &kind in EngineKind::ALL {
        let engine = match kind {
            EngineKind::Vllm => "vllm",
            EngineKind::Dynamic => "dynamic",
            EngineKind::None => "none",
            EngineKind::Sglang => "sglang",
        };
        for &store in KvKind::ALL {
            let kv = match store {
                KvKind::Paged => "paged",
                KvKind::Conversation => "conversation",
                KvKind::Off => "off",
                KvKind::Radix => "radix",
            };
            if !kind.stores().contains(&store) {
                continue;
            }
            let name = format!("{engine} over {kv}");
            let e = format!("engine.kind=\"{engine}\"");
            let k = format!("engine.kv_cache=\"{kv}\"");
            let leapt = both(
                &name,
                &config(SMALL_CHAT, &[&e, &k, "workload.duration_s=20.0"]),
            );
            // Only a store that predicts its KV events lets the replica leap (not one that recomputes
            // every decode token, nor SGLang's pool, which allocates a slot and whose scheduler moves
            // `new_token_ratio` every decode step).
            assert_eq!(
                leapt > 0,
                !matches!(store, KvKind::Off | KvKind::Radix),
                "{name}: leapt {leapt} steps"
            );
            both(
                &name,
                &config(
                    SMALL_CHAT,
                    &[
                        &e,
                        &k,
                        "workload.duration_s=20.0",
                        "engine.num_gpu_blocks=2100",
                        "workload.doc_probability=0.3",
                        "workload.session_rate=6.0",
                    ],
                ),
            );
        }
    }
}

/// The dynamic batcher with early exit (rows leave as they finish, so the batch keeps leaping) and an
/// adaptive limit (changed only at dispatch, between batches).
#[test]
fn leap_equals_step_for_dynamic_batching_with_early_exit_and_adaptation() {
    let leapt = both(
        "dynamic",
        &config(
            SMALL_CHAT,
            &[
                "engine.kind=\"dynamic\"",
                "batching.early_exit=true",
                "batching.max_batch_size=16",
                "batching.adaptive={interval_s=2.0, target_latency_s=0.5}",
                "workload.duration_s=30.0",
            ],
        ),
    );
    assert!(leapt > 100, "the scenario must leap: {leapt}");
}

#[test]
fn leap_equals_step_with_prefix_hits() {
    let leapt = both(
        "chat",
        &config(SMALL_CHAT, &["output.timeseries_interval_s=10.0"]),
    );
    assert!(leapt > 1000, "the scenario must leap: {leapt}");
}

#[test]
fn leap_equals_step_with_preemption() {
    // 2,100 blocks for a 32k context and long documents: the pool runs out and requests are preempted.
    let cfg = config(
        SMALL_CHAT,
        &[
            "engine.num_gpu_blocks=2100",
            "workload.doc_probability=0.3",
            "workload.session_rate=6.0",
        ],
    );
    let leapt = both("preemption", &cfg);
    let tmp = tempfile::tempdir().unwrap();
    let (o, _) = run_in(tmp.path(), "p", &cfg);
    assert!(o.summary.get_f64("num_preemptions").unwrap() > 0.0);
    assert!(leapt > 100, "{leapt}");
}

#[test]
fn leap_equals_step_with_replicas_priorities_and_no_cache() {
    let cfg = config(
        SMALL_CHAT,
        &[
            "cluster.replicas=3",
            "cluster.router=\"least_loaded\"",
            "engine.policy=\"priority\"",
            "workload.priority={dist=\"uniform\", min=0.0, max=3.0}",
            "engine.prefix_caching=false",
        ],
    );
    assert!(both("replicas", &cfg) > 100);
}

/// Every router, over loaded replicas with admission control, client timeouts that abort requests
/// mid-step, retries, and replicas joining, leaving and draining: aborts, refusals, hand-backs and
/// routing decisions are the same whether steps leap.
#[test]
fn leap_equals_step_for_every_router_with_admission_timeouts_and_retries() {
    for router in [
        "round_robin",
        "least_loaded",
        "session_affinity",
        "power_of_two",
        "consistent_hash",
        "prefix_aware",
        "cache_aware",
    ] {
        let r = format!("cluster.router=\"{router}\"");
        let cfg = config(
            SMALL_CHAT,
            &[
                "cluster.replicas=3",
                &r,
                "cluster.signal_delay_s=0.5",
                "workload.session_rate=30.0",
                "workload.duration_s=30.0",
                "workload.client_timeout_s=1.0",
                "workload.max_retries=1",
                "workload.retry_after_s=0.5",
                "admission.max_waiting=8",
                "admission.max_kv_usage_degraded=0.8",
                "engine.num_gpu_blocks=3000",
                "cluster.events=[{at_s=5, action=\"add_replica\"}, {at_s=10, action=\"remove_replica\", replica=0}, {at_s=15, action=\"drain\", replica=3}, {at_s=20, action=\"restart\", replica=1}]",
                "engine.startup_s=3",
            ],
        );
        let (leapt, s) = both_summary(router, &cfg);
        assert!(leapt > 100, "{router}");
        for k in [
            "requests_timed_out",
            "rejected_queue_full",
            "rejected_unavailable",
            "requests_retried",
            "requests_aborted",
        ] {
            assert!(s.0[k].as_u64().unwrap() > 0, "{router}: no {k}");
        }
    }
}

#[test]
fn leap_equals_step_on_a_trace_replay() {
    let cfg = config(MOONCAKE, &["workload.max_requests=400"]);
    assert!(both("mooncake", &cfg) > 100);
}

#[test]
fn leap_equals_step_when_the_run_stops_early() {
    // Steps that would end after max_sim_time_s never complete one by one; a leap must not run past it.
    let cfg = config(
        SMALL_CHAT,
        &["output.max_sim_time_s=17.3", "workload.session_rate=2.0"],
    );
    assert!(both("stop", &cfg) > 10);
}

#[test]
fn leap_equals_step_with_the_linear_and_table_cost_models() {
    // A leap prices the context-dependent operator alone with every model that offers it
    // (`CostModel::decode_context_time`); the roofline is covered above.
    let linear = config(SMALL_CHAT, &["cost.kind=\"linear\""]);
    assert!(both("linear", &linear) > 100);
    let text = std::fs::read_to_string("workloads/vidur-compare.toml").unwrap();
    let table = config(&text, &["workload.max_sessions=300"]);
    assert!(both("table", &table) > 100);
    // Measured attention and LM-head tables (H200): decode attention interpolated on its grid.
    let h200 = config(
        SMALL_CHAT,
        &[
            "hardware.name=\"h200\"",
            "cost.kind=\"table\"",
            "cost.table.dir=\"data/profiles/h200/llama-3.1-8b\"",
        ],
    );
    assert!(both("h200 tables", &h200) > 100);
}

/// Replicas coast past one another's steps and past arrivals routed elsewhere (`World::coast`), and are
/// caught up by whatever reaches them first: an arrival routed to them, a time-series sample (every
/// 0.05 s here, so most coasts are cut by one), a cluster event (a replica joining, one draining, one
/// restarting), the stop time. On chat with vLLM's engine and with the dynamic batcher over the
/// per-conversation store (whose session ends reach every replica), and on a trace replay, behind the routers that read no loads, the
/// outputs are those of stepping one by one; the counts check that coasts and catch-ups happened.
#[test]
fn coasting_replicas_equal_step_on_chat_and_trace_replay() {
    let events = "cluster.events=[{at_s=4, action=\"add_replica\"}, {at_s=9, action=\"drain\", replica=2}, {at_s=13, action=\"restart\", replica=1}]";
    for router in ["round_robin", "session_affinity"] {
        let r = format!("cluster.router=\"{router}\"");
        for (engine, kv) in [("vllm", "paged"), ("dynamic", "conversation")] {
            let e = format!("engine.kind=\"{engine}\"");
            let k = format!("engine.kv_cache=\"{kv}\"");
            let chat = config(
                SMALL_CHAT,
                &[
                    "cluster.replicas=4",
                    &r,
                    &e,
                    &k,
                    "workload.session_rate=6.0",
                    "output.timeseries_interval_s=0.05",
                    "output.max_sim_time_s=25.3",
                    "engine.startup_s=2",
                    events,
                ],
            );
            let name = format!("chat, {router}, {kv}");
            let a = both_outcome(&name, &chat);
            assert_coasted(&name, &a);
        }
        let trace = config(
            MOONCAKE,
            &["workload.max_requests=300", "cluster.replicas=6", &r],
        );
        let name = format!("trace, {router}");
        let a = both_outcome(&name, &trace);
        assert_coasted(&name, &a);
        // Every step exactly 10 ms and arrivals on the trace's millisecond grid: steps of different
        // replicas end at the same instant, arrivals and 50 ms samples land on step ends, so catch-ups
        // meet the same-instant order (a step end before an arrival, the Schedule after it).
        let ties = config(
            MOONCAKE,
            &[
                "workload.max_requests=300",
                "cluster.replicas=4",
                &r,
                "cost.kind=\"linear\"",
                "cost.linear={step_s=0.01, prefill_token_s=0.0, decode_seq_s=0.0, decode_context_token_s=0.0}",
                "output.timeseries_interval_s=0.05",
            ],
        );
        let name = format!("10 ms steps, {router}");
        let a = both_outcome(&name, &ties);
        assert_coasted(&name, &a);
    }
}

/// Coasting where a replica decodes with requests waiting (the dynamic batcher, no batching): a client's
/// deadline on such a replica aborts the waiting request when the step in flight ends, as one by one.
/// And a restart that drops a coasting replica's work leaves its coast's end queued for nothing: it must
/// neither keep the time series sampling nor carry the run to the stop time.
#[test]
fn coasting_replicas_equal_step_with_timeouts_on_waiting_requests_and_restarts() {
    for (engine, replicas, timeout) in [("dynamic", 4, 2.0), ("none", 2, 1.0)] {
        let cfg = config(
            SMALL_CHAT,
            &[
                &format!("engine.kind=\"{engine}\""),
                &format!("cluster.replicas={replicas}"),
                &format!("workload.client_timeout_s={timeout}"),
                "workload.session_rate=8.0",
                "workload.duration_s=30.0",
            ],
        );
        let name = format!("{engine}, timeouts");
        let a = both_outcome(&name, &cfg);
        assert!(a.coasts > 10, "{name}: {} coasts", a.coasts);
        assert!(
            a.summary.0["requests_timed_out"].as_u64().unwrap() > 0,
            "{name}"
        );
    }
    // Two long requests on two replicas, both restarted at 5 s in the middle of their coasts (cut short
    // by the samples every 0.1 s, so they end within a fraction of a second): the restarts drop both
    // requests and are the last activity, and the coasts' ends, queued past 5 s, stand for nothing (a
    // sample between them must not queue another).
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("two.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\": 0, \"input_length\": 512, \"output_length\": 3000, \"hash_ids\": [1]}\n\
         {\"timestamp\": 0, \"input_length\": 512, \"output_length\": 3000, \"hash_ids\": [2]}\n",
    )
    .unwrap();
    for stop in ["", "output.max_sim_time_s=5.3"] {
        let mut sets = vec![
            "workload.kind=\"trace\"".to_string(),
            format!("workload.trace.path=\"{}\"", trace.display()),
            "cluster.replicas=2".into(),
            "output.timeseries_interval_s=0.1".into(),
            "cluster.events=[{at_s=5.0, action=\"restart\", replica=0}, {at_s=5.0, action=\"restart\", replica=1}]".into(),
            "engine.startup_s=0".into(),
        ];
        if !stop.is_empty() {
            sets.push(stop.into());
        }
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        // The embedded default's engine and hardware (the timings above are theirs).
        let a = both_outcome("restart mid-coast", &default_with(&sets));
        assert!(a.catch_ups > 0);
        // The restarts (at the ends of the steps in flight) are the last activity: the replicas are
        // back at once, with nothing to do.
        let end = a.summary.get_f64("sim_end_s").unwrap();
        assert!((5.0..5.1).contains(&end), "ends at {end}");
    }
}
