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
