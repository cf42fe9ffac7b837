//! The queueing core against M/D/1: one request at a time (vLLM with max_num_seqs = 1, or no batching), a
//! constant service time (one step of S seconds: a 16-token prompt whose single output token ends the
//! request), Poisson arrivals. Theory (Pollaczek-Khinchine): mean wait Wq = rho S / (2 (1 - rho)).

use crate::common::*;

#[test]
fn md1_mean_wait_matches_theory() {
    md1_check(&[]);
}

#[test]
fn md1_holds_without_batching() {
    md1_check(&["engine.kind=\"none\""]);
    md1_check(&["engine.kind=\"none\"", "engine.kv_cache=\"off\""]);
}

fn md1_check(overrides: &[&str]) {
    let s = 0.1; // service seconds, as common::md1 sets it
    let lambda = 7.0; // arrivals per second
    let rho: f64 = lambda * s;
    let theory = rho * s / (2.0 * (1.0 - rho)); // 0.11667 s
    let n = 100_000;
    let text = md1(
        lambda,
        &format!("max_sessions = {n}"),
        "timeseries_interval_s = 1000.0",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (o, dir) = run_in(tmp.path(), "md1", &config(&text, overrides));
    let rows = read_rows(&dir.join("requests.csv"));
    assert_eq!(rows.len(), n);
    // Service is exactly S for every request: E2E - queue = S.
    for r in rows.iter().take(1000) {
        assert!((num(r, "e2e_s") - num(r, "queue_s") - s).abs() < 2e-6);
    }
    // Waits in arrival order; batch means give a standard error that accounts for their autocorrelation.
    let mut waits: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| (num(r, "request_id") as u64, num(r, "queue_s")))
        .collect();
    waits.sort_by_key(|w| w.0);
    let w: Vec<f64> = waits.iter().map(|w| w.1).collect();
    let batches = 50;
    let size = w.len() / batches;
    let means: Vec<f64> = (0..batches)
        .map(|b| w[b * size..(b + 1) * size].iter().sum::<f64>() / size as f64)
        .collect();
    let mean = means.iter().sum::<f64>() / batches as f64;
    let var = means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (batches - 1) as f64;
    let se = (var / batches as f64).sqrt();
    // 4 standard errors: a false alarm about 1 time in 16,000 if the simulator is right; and the estimate
    // must be tight enough (SE under 3% of theory) for the check to mean something.
    assert!(se < 0.03 * theory, "standard error too large: {se}");
    assert!(
        (mean - theory).abs() < 4.0 * se,
        "M/D/1 mean wait {mean:.5} vs theory {theory:.5} (se {se:.5})"
    );
    // Utilisation: the server is busy rho of the time.
    let busy = n as f64 * s / o.summary.get_f64("duration_s").unwrap();
    assert!((busy - rho).abs() < 0.02, "utilisation {busy}");
}
