//! Admission control, client timeouts and retries (`[admission]`, `workload.client_timeout_s`,
//! `workload.max_retries`), on hand-made native traces with the linear cost model: 10 ms a step, 0.1 ms
//! a prefill token, 1 ms a decode row, nothing per context token. Every expected time below is that
//! arithmetic.

use crate::common::*;
use servesim::metrics::RequestRow;

fn secs(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| n as f64 / 1e9)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-6)
}

/// (status, failure reason, attempt) of each row, in id then attempt order.
fn outcomes(rows: &[RequestRow]) -> Vec<(u64, &'static str, &'static str, u32)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.id,
                r.status.as_str(),
                r.failure.map_or("", |f| f.as_str()),
                r.attempt,
            )
        })
        .collect();
    v.sort_by_key(|&(id, _, _, a)| (id, a));
    v
}

/// No batching (one request at a time): A runs from 0 s, B and C wait behind it.
const ONE_AT_A_TIME: &str = "kind = \"none\"";

/// A (0 s), B (1 ms) and C (2 ms), one session each: 100-token prompts and 10 output tokens, 0.119 s
/// alone (0.02 s prefill, 9 decode steps of 0.011 s); then `rest`.
fn abc_then(rest: &[Row<'static>]) -> Vec<Row<'static>> {
    let mut v: Vec<Row<'static>> = vec![
        (1, 1, 0.0, &[(1, 100)], 11, 10, 10),
        (2, 1, 0.001, &[(2, 100)], 12, 10, 10),
        (3, 1, 0.002, &[(3, 100)], 13, 10, 10),
    ];
    v.extend_from_slice(rest);
    v
}

#[test]
fn a_full_queue_refuses_with_queue_full_and_names_the_replica() {
    // A (0 s) runs; B (1 ms) waits: 1 waiting. C (2 ms) finds the queue at max_waiting = 1: refused.
    // D (2 s) arrives after A (0.02 + 9 x 0.011 = 0.119 s) and B (done by 0.238 s): it runs.
    let trace = abc_then(&[(4, 1, 2.0, &[(4, 100)], 14, 10, 10)]);
    let (rows, s) = replay(&trace, ONE_AT_A_TIME, "[admission]\nmax_waiting = 1");
    assert_eq!(
        outcomes(&rows)
            .iter()
            .map(|o| (o.1, o.2))
            .collect::<Vec<_>>(),
        [
            ("finished", ""),
            ("finished", ""),
            ("rejected", "queue_full"),
            ("finished", "")
        ]
    );
    // Request ids count from 0: C is 2.
    let c = rows.iter().find(|r| r.id == 2).unwrap();
    assert_eq!(c.replica, Some(0), "a 429 names the replica");
    assert_eq!(s.0["rejected_queue_full"], 1);
    assert_eq!(s.0["requests_offered"], 4);
    assert_eq!(s.0["success_rate"], 0.75);
    assert_eq!(s.0["slo_met"], serde_json::Value::Null);
    // A success-rate criterion of 0.8 is missed (0.75); 0.75 is met.
    for (min, met) in [(0.8, false), (0.75, true)] {
        let (_, s) = replay(
            &trace,
            ONE_AT_A_TIME,
            &format!("[admission]\nmax_waiting = 1\n[slo]\nmin_success_rate = {min}"),
        );
        assert_eq!(s.0["slo_met"], met, "{min}");
        assert_eq!(s.0["slo_missed"] == "success_rate", !met);
        assert_eq!(s.0["slo_criteria"], format!("success_rate>={min}"));
    }
}

#[test]
fn every_replica_degraded_refuses_with_unavailable() {
    // Two replicas in turn, 21 blocks of 16 tokens each (20 usable). A 200-token prompt holds 13 blocks:
    // 65% usage, over max_kv_usage_degraded = 0.5. A (0 s) goes to replica 0, B (0.1 s) to replica 1;
    // each decodes 100 tokens (0.04 + 99 x 0.011 = 1.129 s). C (0.2 s) finds both degraded: refused.
    // D (5 s) finds both idle: the turn goes on to replica 0.
    let (rows, s) = replay_set(
        &[
            (1, 1, 0.0, &[(1, 200)], 11, 100, 100),
            (2, 1, 0.1, &[(2, 200)], 12, 100, 100),
            (3, 1, 0.2, &[(3, 200)], 13, 100, 100),
            (4, 1, 5.0, &[(4, 200)], 14, 100, 100),
        ],
        "",
        "[cluster]\nreplicas = 2\n[admission]\nmax_kv_usage_degraded = 0.5",
        &["engine.num_gpu_blocks=21", "engine.max_model_len=320"],
    );
    let o = outcomes(&rows);
    assert_eq!(o[2].1, "rejected");
    assert_eq!(o[2].2, "unavailable");
    let replicas: Vec<_> = rows.iter().map(|r| r.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1), None, Some(0)]);
    assert_eq!(s.0["rejected_unavailable"], 1);
    // Without admission control all four run.
    let (rows, _) = replay_set(
        &[
            (1, 1, 0.0, &[(1, 200)], 11, 100, 100),
            (2, 1, 0.1, &[(2, 200)], 12, 100, 100),
            (3, 1, 0.2, &[(3, 200)], 13, 100, 100),
        ],
        "",
        "[cluster]\nreplicas = 2",
        &["engine.num_gpu_blocks=21", "engine.max_model_len=320"],
    );
    assert!(rows.iter().all(|r| r.status.as_str() == "finished"));
}

#[test]
fn a_client_timeout_aborts_at_the_step_end_and_a_retry_succeeds() {
    // A (0 s) runs alone: prefill 0.01 + 0.0001 x 100 = 0.02 s, then 99 decode steps of 0.011 s, done
    // at 0.02 + 99 x 0.011 = 1.109 s. B (1 ms) waits behind it with a 0.5 s timeout: its deadline,
    // 0.501 s, falls in A's decode step from 0.493 (0.02 + 43 x 0.011) to 0.504; the abort takes effect
    // when that step ends, 0.504 s. Its retry goes 1 s later, 1.504 s, and runs at once: first token
    // 0.02 s later, 1.524 s.
    let trace = [
        (1, 1, 0.0, &[(1, 100)][..], 11, 100, 100),
        (2, 1, 0.001, &[(2, 100)][..], 12, 5, 5),
    ];
    let (rows, s) = replay(&trace, ONE_AT_A_TIME, "");
    assert!(rows.iter().all(|r| r.status.as_str() == "finished"));
    assert_eq!(s.0["success_rate"], 1.0);
    let (rows, s) = replay_set(
        &trace,
        ONE_AT_A_TIME,
        "",
        &["workload.client_timeout_s=0.5"],
    );
    let o = outcomes(&rows);
    // Request ids count from 0: B is 1.
    assert_eq!(o[1], (1, "timed_out", "client_timeout", 0));
    let b = rows.iter().find(|r| r.id == 1).unwrap();
    assert!(close(secs(b.times[3]), 0.504), "{:?}", b.times);
    assert_eq!(b.times[2], None, "no first token");
    assert_eq!(s.0["requests_timed_out"], 1);
    assert_eq!(s.0["success_rate"], 0.5);
    let (rows, s) = replay_set(
        &trace,
        ONE_AT_A_TIME,
        "",
        &["workload.client_timeout_s=0.5", "workload.max_retries=2"],
    );
    let o = outcomes(&rows);
    assert_eq!(
        o,
        [
            (0, "finished", "", 0),
            (1, "timed_out", "client_timeout", 0),
            (1, "finished", "", 1)
        ]
    );
    let retry = rows.iter().find(|r| r.id == 1 && r.attempt == 1).unwrap();
    assert!(close(secs(retry.times[0]), 1.504), "{:?}", retry.times);
    assert!(close(secs(retry.times[2]), 1.524), "{:?}", retry.times);
    assert_eq!(s.0["requests_retried"], 1);
    assert_eq!(s.0["requests_offered"], 2);
    assert_eq!(s.0["success_rate"], 1.0);
    // A deadline no request reaches changes nothing, not even the run's end (its timeout events, left
    // behind by requests that got their first tokens, do nothing).
    let (_, base) = replay(&trace, ONE_AT_A_TIME, "");
    let (_, late) = replay_set(
        &trace,
        ONE_AT_A_TIME,
        "",
        &["workload.client_timeout_s=1000"],
    );
    for k in [
        "sim_end_s",
        "kv_cache_usage_perc_mean",
        "busy_frac",
        "ttft_mean_s",
    ] {
        assert_eq!(base.0[k], late.0[k], "{k}");
    }
}

#[test]
fn bad_cluster_admission_and_client_settings_are_refused_by_key() {
    assert_refused_by_key(&[
        ("cluster.router=\"fastest\"", "cluster.router"),
        ("cluster.load_signal=\"vibes\"", "cluster.load_signal"),
        ("cluster.signal_delay_s=-1", "cluster.signal_delay_s"),
        ("cluster.signal_delay_s=1e30", "cluster.signal_delay_s"),
        (
            "cluster.consistent_hash.load_bound=0.5",
            "cluster.consistent_hash.load_bound",
        ),
        (
            "cluster.consistent_hash.virtual_nodes=0",
            "cluster.consistent_hash.virtual_nodes",
        ),
        (
            "cluster.consistent_hash.key=\"user\"",
            "cluster.consistent_hash.key",
        ),
        (
            "cluster.prefix_aware.block_size=0",
            "cluster.prefix_aware.block_size",
        ),
        (
            "cluster.prefix_aware.queue_weight=-1",
            "cluster.prefix_aware.queue_weight",
        ),
        (
            "cluster.cache_aware.cache_threshold=1.5",
            "cluster.cache_aware.cache_threshold",
        ),
        (
            "admission.max_kv_usage_degraded=0",
            "admission.max_kv_usage_degraded",
        ),
        ("admission.max_queue=3", "admission"),
        ("workload.client_timeout_s=0", "workload.client_timeout_s"),
        ("workload.retry_after_s=-2", "workload.retry_after_s"),
        ("workload.max_retries=1000", "workload.max_retries"),
        (
            "workload.rate_schedule={kind=\"piecewise\", points=[[5, 1.0]]}",
            "workload.rate_schedule.points",
        ),
        (
            "workload.rate_schedule={kind=\"piecewise\", points=[[0, 1.0], [0, 2.0]]}",
            "workload.rate_schedule.points[1]",
        ),
        (
            "workload.rate_schedule={kind=\"diurnal\", period_s=100, amplitude=2}",
            "workload.rate_schedule.amplitude",
        ),
        (
            "workload.rate_schedule={kind=\"bursts\", high=0, low=0, high_mean_s=1, low_mean_s=1}",
            "workload.rate_schedule.high",
        ),
        (
            "workload.rate_schedule={kind=\"weekly\"}",
            "workload.rate_schedule",
        ),
    ]);
}

/// Single-turn sessions at 2/s over 600 s, the rate tripled from 300 s: the session starts per window
/// match the integrated rate, 2 x 300 = 600 and 2 x 3 x 300 = 1800, each a Poisson count within 4
/// standard deviations (4 sqrt(mu)); the same schedule on a trace moves each record to where the
/// integrated speed reaches its recorded time.
#[test]
fn a_rate_schedule_shapes_arrivals_of_sessions_and_of_a_trace() {
    let cfg = default_with(&[
        "workload.session_rate=2",
        "workload.duration_s=600",
        "workload.turns={dist=\"constant\", value=1}",
        "workload.rate_schedule={kind=\"piecewise\", points=[[0, 1.0], [300, 3.0]]}",
        "engine.kind=\"none\"",
        "cost.kind=\"linear\"",
    ]);
    let sim = servesim::run::simulate(
        &cfg,
        &servesim::run::SimOptions {
            rows: servesim::metrics::Rows::Keep,
            ..Default::default()
        },
    )
    .unwrap();
    let arrivals: Vec<f64> = sim
        .requests
        .iter()
        .map(|r| r.times[0].unwrap() as f64 / 1e9)
        .collect();
    let n = |a: f64, b: f64| arrivals.iter().filter(|&&t| t >= a && t < b).count() as f64;
    for (a, b, mu) in [(0.0, 300.0, 600.0), (300.0, 600.0, 1800.0)] {
        let got = n(a, b);
        assert!((got - mu).abs() <= 4.0 * f64::sqrt(mu), "[{a}, {b}): {got}");
    }
    assert_eq!(sim.summary.0["rate_schedule"], "piecewise");
    // A trace of one arrival a second; speed 1 until 50 s, then 2: a record at 80 s arrives at
    // 50 + 30 / 2 = 65 s.
    let prompts: Vec<[(u64, u32); 1]> = (0..100).map(|i| [(i as u64 + 1, 10)]).collect();
    let trace: Vec<_> = (0..100)
        .map(|i| (i as u64 + 1, 1, i as f64, &prompts[i][..], 99, 1, 1))
        .collect();
    let (rows, _) = replay(
        &trace,
        "",
        "[workload.rate_schedule]\nkind = \"piecewise\"\npoints = [[0, 1.0], [50, 2.0]]",
    );
    for r in &rows {
        let x = r.id as f64;
        let expect = if x < 50.0 { x } else { 50.0 + (x - 50.0) / 2.0 };
        assert!(close(secs(r.times[0]), expect), "{x}: {:?}", r.times[0]);
    }
    // A linear ramp from speed 0 at 0 s to 4 at 100 s: the integral to t is 0.02 t^2, so a record at
    // x s arrives at sqrt(x / 0.02): the one at 0 s at 0, the one at 5 s at 15.811 s.
    let (rows, _) = replay(
        &trace,
        "",
        "[workload.rate_schedule]\nkind = \"piecewise\"\npoints = [[0, 0.0], [100, 4.0]]\ninterpolation = \"linear\"",
    );
    for r in rows.iter().filter(|r| r.id <= 40) {
        let expect = (r.id as f64 / 0.02).sqrt();
        assert!(
            close(secs(r.times[0]), expect),
            "{}: {:?}",
            r.id,
            r.times[0]
        );
    }
}

/// Three requests on two replicas in turn, one at a time each (A on 0, B on 1, C behind A on 0), and
/// replica 0 leaving at 50 ms, mid-way through A's decode step from 42 to 53 ms.
fn leaving(action: &str) -> (Vec<RequestRow>, servesim::metrics::Summary) {
    let events = format!(
        "[cluster]\nreplicas = 2\nevents = [{{ at_s = 0.05, action = \"{action}\", replica = 0 }}]"
    );
    replay(
        &abc_then(&[(4, 1, 5.0, &[(4, 100)], 14, 10, 10)]),
        ONE_AT_A_TIME,
        &events,
    )
}

#[test]
fn a_removed_replica_finishes_what_started_and_hands_back_the_rest() {
    // Each request: prefill 0.01 + 0.0001 x 100 = 0.02 s, then 9 decode steps of 0.011 s: 0.119 s.
    // A (0 s) finishes on replica 0 at 0.119. C never started: at the end of the step in flight (53 ms)
    // it goes back to the router, which has only replica 1: it waits behind B (done at 0.120), first
    // token at 0.140, done at 0.239, its arrival still 2 ms. D (5 s) goes to replica 1.
    let (rows, _) = leaving("remove_replica");
    let replicas: Vec<_> = rows.iter().map(|r| r.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1), Some(1), Some(1)]);
    let c = &rows[2];
    assert!(close(secs(c.times[0]), 0.002));
    assert!(close(secs(c.times[1]), 0.120), "{:?}", c.times);
    assert!(close(secs(c.times[3]), 0.239), "{:?}", c.times);
    assert!(close(secs(rows[0].times[3]), 0.119));
    assert!(rows.iter().all(|r| r.status.as_str() == "finished"));
}

#[test]
fn a_drained_replica_finishes_everything_it_holds() {
    // C stays on replica 0 and runs after A: from 0.119 to 0.238. D (5 s) goes to replica 1.
    let (rows, _) = leaving("drain");
    let replicas: Vec<_> = rows.iter().map(|r| r.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1), Some(0), Some(1)]);
    assert!(close(secs(rows[2].times[1]), 0.119), "{:?}", rows[2].times);
    assert!(close(secs(rows[2].times[3]), 0.238));
}

#[test]
fn an_added_replica_takes_requests_from_when_it_joins() {
    // One replica, a second joining at 1 s; round robin. A (0 s) on 0; B (2 s) on the new replica 1.
    // Each is busy 0.119 s. Busy share over the replicas' up time: 0.238 / (2.119 + 1.119) = 0.0735
    // (the run ends with B's finish, 2.119 s; replica 1 is up from 1 s).
    let (rows, s) = replay(
        &[
            (1, 1, 0.0, &[(1, 100)], 11, 10, 10),
            (2, 1, 2.0, &[(2, 100)], 12, 10, 10),
        ],
        ONE_AT_A_TIME,
        "[cluster]\nreplicas = 1\nevents = [{ at_s = 1.0, action = \"add_replica\" }]",
    );
    let replicas: Vec<_> = rows.iter().map(|r| r.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1)]);
    let busy = s.get_f64("busy_frac").unwrap();
    assert!((busy - 0.238 / 3.238).abs() < 1e-9, "{busy}");
    assert_eq!(s.0["cluster_events"], 1);
}

#[test]
fn bad_cluster_events_are_refused_by_key() {
    assert_refused_by_key(&[
        (
            "cluster.events=[{at_s=1, action=\"drain\"}]",
            "cluster.events[0].replica",
        ),
        (
            "cluster.events=[{at_s=1, action=\"drain\", replica=3}]",
            "cluster.events[0].replica",
        ),
        (
            "cluster.events=[{at_s=2, action=\"drain\", replica=0}, {at_s=1, action=\"drain\", replica=0}]",
            "cluster.events[0].replica",
        ),
        (
            "cluster.events=[{at_s=-1, action=\"add_replica\"}]",
            "cluster.events[0].at_s",
        ),
        (
            "cluster.events=[{at_s=1, action=\"add_replica\", replica=0}]",
            "cluster.events[0].replica",
        ),
        (
            "cluster.events=[{at_s=1, action=\"explode\"}]",
            "cluster.events",
        ),
        (
            "cluster.events=[{at_s=1, action=\"restart\", replica=0}, {at_s=30, action=\"drain\", replica=0}]",
            "cluster.events[1].at_s",
        ),
        ("engine.startup_s=-1", "engine.startup_s"),
    ]);
    // Added replicas get the next ids, in time order: the one added at 1 s is 1, at 2 s is 2.
    servesim::config::Config::load(
        None,
        &[
            "cluster.events=[{at_s=2, action=\"add_replica\"}, {at_s=1, action=\"add_replica\"}, \
           {at_s=3, action=\"remove_replica\", replica=2}]"
                .to_string(),
        ],
    )
    .unwrap();
}

/// Share of sessions with turns on both sides of `t` whose first turn after it ran on another replica.
fn moved_share(rows: &[RequestRow], t: f64) -> (f64, usize) {
    let mut by: std::collections::BTreeMap<u64, Vec<&RequestRow>> = Default::default();
    for r in rows.iter().filter(|r| r.replica.is_some()) {
        by.entry(r.session).or_default().push(r);
    }
    let (mut moved, mut n) = (0, 0);
    for v in by.values_mut() {
        v.sort_by_key(|r| r.turn);
        for w in v.windows(2) {
            let (a, b) = (secs(w[0].times[0]).unwrap(), secs(w[1].times[0]).unwrap());
            if a < t && b >= t {
                n += 1;
                moved += usize::from(w[0].replica != w[1].replica);
            }
        }
    }
    (moved as f64 / n as f64, n)
}

/// Scaling out from 4 to 5 replicas: hash-mod-N moves 4/5 of the sessions (h mod 4 == h mod 5 only for
/// h mod 20 < 4), a ring about 1/5 (the new replica's share). With a few hundred sessions across the
/// event, a binomial share's standard deviation is under 0.03: 0.1 is over 3 of them.
#[test]
fn scaling_out_moves_four_fifths_of_sessions_by_modulo_and_a_fifth_on_a_ring() {
    let run = |router: &str| {
        let r = format!("cluster.router=\"{router}\"");
        let cfg = default_with(&[
            "cluster.replicas=4",
            &r,
            "cluster.consistent_hash.load_bound=inf",
            "workload.session_rate=4",
            "workload.duration_s=600",
            "cluster.events=[{at_s=300, action=\"add_replica\"}]",
        ]);
        let sim = servesim::run::simulate(
            &cfg,
            &servesim::run::SimOptions {
                rows: servesim::metrics::Rows::Keep,
                ..Default::default()
            },
        )
        .unwrap();
        moved_share(&sim.requests, 300.0)
    };
    let (modulo, n) = run("session_affinity");
    assert!(n > 150, "{n}");
    assert!((modulo - 0.8).abs() < 0.1, "{modulo}");
    let (ring, _) = run("consistent_hash");
    assert!((ring - 0.2).abs() < 0.1, "{ring}");
}

/// Stale load signals herd: two idle replicas behind `least_loaded`, four requests 0.5 s apart, each
/// taking 0.02 + 99 x 0.011 = 1.109 s alone. Seeing live loads the router spreads them; seeing loads
/// scraped at 0 s (both idle) and not again for 10 s, it sends every one to replica 0.
#[test]
fn stale_load_signals_herd_requests_onto_one_replica() {
    let trace: Vec<Row> = (0..4)
        .map(|i| {
            (
                i as u64 + 1,
                1,
                0.5 * i as f64,
                &[(7, 100)][..],
                11,
                100,
                100,
            )
        })
        .collect();
    let live = replay(
        &trace,
        ONE_AT_A_TIME,
        "[cluster]\nreplicas = 2\nrouter = \"least_loaded\"",
    )
    .0;
    // Live: at 0 s both idle: 0. At 0.5 s replica 0 holds A: 1. At 1.0 s each holds one (A, B): the
    // lowest id, 0. At 1.5 s A is done (1.109 s), so 0 holds C and 1 holds B: a tie again, 0.
    let live: Vec<_> = live.iter().map(|r| r.replica.unwrap()).collect();
    assert_eq!(live, [0, 1, 0, 0]);
    let stale = replay(
        &trace,
        ONE_AT_A_TIME,
        "[cluster]\nreplicas = 2\nrouter = \"least_loaded\"\nsignal_delay_s = 10.0",
    )
    .0;
    let stale: Vec<_> = stale.iter().map(|r| r.replica.unwrap()).collect();
    assert_eq!(stale, [0, 0, 0, 0]);
}

#[test]
fn a_restart_drops_what_the_replica_holds_and_its_cache_then_serves_again() {
    // Two replicas in turn, one request at a time each, 100-token prompts (6 full 16-token blocks) and
    // 10 output tokens (0.119 s each). A (0 s) on 0, B (1 ms) on 1, C (2 ms) behind A
    // on 0. Replica 0 restarts at 50 ms: at the end of the step in flight (53 ms) A and C are aborted,
    // and it is down for 1 s, until 1.053 s. D (0.5 s) goes to replica 1, the only one up. E (2 s) goes
    // to replica 0 (round robin, after 1), which serves again, cold: E repeats A's prompt, which replica
    // 0 had cached before the restart, and finds nothing.
    let trace = abc_then(&[
        (4, 1, 0.5, &[(4, 100)], 14, 10, 10),
        (5, 1, 2.0, &[(1, 100)], 15, 10, 10),
    ]);
    let (rows, s) = replay_set(
        &trace,
        ONE_AT_A_TIME,
        "[cluster]\nreplicas = 2\nevents = [{ at_s = 0.05, action = \"restart\", replica = 0 }]",
        &["engine.startup_s=1.0"],
    );
    let o = outcomes(&rows);
    assert_eq!(o[0], (0, "aborted", "replica_restart", 0));
    assert_eq!(o[2], (2, "aborted", "replica_restart", 0));
    let replicas: Vec<_> = rows.iter().map(|r| r.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1), Some(0), Some(1), Some(0)]);
    let e = rows.iter().find(|r| r.id == 4).unwrap();
    assert_eq!(e.status.as_str(), "finished");
    assert_eq!(e.cached_tokens, 0, "the cache was lost");
    assert_eq!(s.0["requests_aborted"], 2);
    // The prefix-cache counters carry across the restart: A's lookup (before it), B, D and E were
    // admitted, 100 tokens each; C never was.
    assert_eq!(s.0["prefix_cache_queries"], 400);
    // Without the restart, E would hit A's 96 cached tokens (6 full blocks).
    let (rows, _) = replay(&trace, ONE_AT_A_TIME, "[cluster]\nreplicas = 2");
    let e = rows.iter().find(|r| r.id == 4).unwrap();
    assert_eq!((e.replica, e.cached_tokens), (Some(0), 96));
}

#[test]
fn a_model_swap_aborts_what_the_replica_holds_flushes_its_cache_and_serves_the_other_model() {
    // As the restart above, priced by the roofline (Llama-3.1-8B on an H100: A's 10 tokens take about
    // 50 ms, so A is in flight at 20 ms), replica 0 swapping to the 4-layer `tiny` model at 20 ms, down
    // for 1 s. A and C are aborted (model_swap); D (0.5 s) goes to replica 1; E (2 s) to replica 0,
    // which serves `tiny` from an empty cache: it misses A's prompt, and decodes faster than D did on
    // Llama-3.1-8B.
    let trace = abc_then(&[
        (4, 1, 0.5, &[(4, 100)], 14, 10, 10),
        (5, 1, 2.0, &[(1, 100)], 15, 10, 10),
    ]);
    let swap =
        "[cluster]\nreplicas = 2\nevents = [{ at_s = 0.02, action = \"swap_model\", replica = 0, \
                model = \"tiny\", swap_s = 1.0 }]";
    let sets = ["cost.kind=\"roofline\"", "model.dtype=\"bfloat16\""];
    let (rows, s) = replay_set(&trace, ONE_AT_A_TIME, swap, &sets);
    let o = outcomes(&rows);
    assert_eq!(o[0], (0, "aborted", "model_swap", 0));
    assert_eq!(o[2], (2, "aborted", "model_swap", 0));
    assert_eq!(s.0["requests_aborted"], 2);
    let d = rows.iter().find(|r| r.id == 3).unwrap();
    let e = rows.iter().find(|r| r.id == 4).unwrap();
    assert_eq!((d.replica, e.replica), (Some(1), Some(0)));
    assert_eq!(e.cached_tokens, 0, "the cache was flushed");
    assert!(
        e.tpot.unwrap() < 0.5 * d.tpot.unwrap(),
        "{:?} {:?}",
        e.tpot,
        d.tpot
    );
}

#[test]
fn swap_model_settings_are_checked_by_key() {
    let event = |e: &str| format!("cluster.events=[{e}]");
    crate::common::assert_refused_by_key(&[
        (
            &event("{at_s=1.0, action=\"swap_model\", replica=0}"),
            "cluster.events[0].model",
        ),
        (
            &event("{at_s=1.0, action=\"restart\", replica=0, model=\"tiny\"}"),
            "cluster.events[0].model",
        ),
        (
            &event("{at_s=1.0, action=\"swap_model\", replica=0, model=\"tiny\", swap_s=-1.0}"),
            "cluster.events[0].swap_s",
        ),
    ]);
}

#[test]
fn an_event_on_a_replica_still_down_from_a_restart_applies_at_once() {
    // As the restart test: replica 0 restarts at 50 ms, which takes effect at the end of A's step in
    // flight (53 ms), so it is down until 1.053 s. A removal at 1.05 s (allowed: startup_s after the
    // event) finds it still down: it stays down, and E (2 s) goes to replica 1, not to replica 0
    // coming back at 1.053 s.
    let trace = abc_then(&[
        (4, 1, 0.5, &[(4, 100)], 14, 10, 10),
        (5, 1, 2.0, &[(1, 100)], 15, 10, 10),
    ]);
    let events =
        "[cluster]\nreplicas = 2\nevents = [{ at_s = 0.05, action = \"restart\", replica = 0 }, \
                  { at_s = 1.05, action = \"remove_replica\", replica = 0 }]";
    let (rows, _) = replay_set(&trace, ONE_AT_A_TIME, events, &["engine.startup_s=1.0"]);
    let e = rows.iter().find(|r| r.id == 4).unwrap();
    assert_eq!((e.replica, e.status.as_str()), (Some(1), "finished"));
    // A second restart at 1.05 s instead starts the down time over: replica 0 is back at 2.05 s, so E
    // (2 s) still goes to replica 1.
    let events =
        "[cluster]\nreplicas = 2\nevents = [{ at_s = 0.05, action = \"restart\", replica = 0 }, \
                  { at_s = 1.05, action = \"restart\", replica = 0 }]";
    let (rows, _) = replay_set(&trace, ONE_AT_A_TIME, events, &["engine.startup_s=1.0"]);
    let e = rows.iter().find(|r| r.id == 4).unwrap();
    assert_eq!(e.replica, Some(1));
}
