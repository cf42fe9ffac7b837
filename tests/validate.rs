//! `servesim validate --quick`: the pipeline's invariants on a real (tiny) model, not its error bounds
//! (those depend on the machine; the README reports them).

use servesim::validate::{validate, ValidateOptions};

fn quick(
    out: &std::path::Path,
    set: &[&str],
) -> Result<servesim::validate::ValidateOutcome, servesim::error::Error> {
    validate(&ValidateOptions {
        config: None,
        set: set.iter().map(|s| s.to_string()).collect(),
        seed: None,
        quick: true,
        profile: None,
        noise_steps: 3,
        noise_repeats: 3,
        out: Some(out.to_path_buf()),
        progress: false,
    })
}

fn rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            h.iter()
                .zip(rec.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn quick_validation_executes_every_step_and_rebuilds_timelines_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let o = quick(&tmp.path().join("v"), &[]).unwrap();
    // Every simulated step ran on the real kernels.
    assert!(o.steps_simulated > 0);
    assert_eq!(o.steps_executed, o.steps_simulated);
    let s = &o.summary;
    assert_eq!(s["steps"].as_u64().unwrap() as usize, o.steps_simulated);
    // The quick workload: 6 requests, all finished and compared.
    assert_eq!(s["requests"], 6);
    // The rebuild, given the predicted durations, lands every request's first and last token where the
    // simulator put them (up to float rounding of nanoseconds).
    assert!(s["rebuild_gap_s"].as_f64().unwrap() < 1e-6, "{s}");
    // Every cost model prices the executed schedule: the schedule's own, the host's roofline, a linear fit.
    let models = ["calibrated", "roofline", "linear"];
    assert_eq!(s["schedule_cost_model"], "calibrated");
    for m in models {
        let c = &s["cost_models"][m];
        for k in ["ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "e2e_mean_s"] {
            let e = &c["request_errors"][k];
            for f in ["predicted", "measured"] {
                let v = e[f].as_f64().unwrap();
                assert!(v.is_finite() && v > 0.0, "{m} {k} {f} {v}");
            }
            assert!(e["error"].as_f64().unwrap().is_finite(), "{m} {k}");
            // Every model is compared with the same measurement.
            assert_eq!(
                e["measured"],
                s["cost_models"]["calibrated"]["request_errors"][k]["measured"]
            );
        }
    }
    // The linear model is scored on the steps it was not fitted to: the odd ones.
    let n = o.steps_simulated as u64;
    assert_eq!(
        s["cost_models"]["linear"]["step_errors"]["all"]["steps"],
        n / 2
    );
    assert_eq!(
        s["cost_models"]["roofline"]["step_errors"]["all"]["steps"],
        n
    );
    assert_eq!(s["noise"]["repeated_steps"], 3);
    assert!(s["noise"]["median_spread"].as_f64().unwrap() >= 0.0);
    // Files: a row per step, each measured and priced by each model; a row per request whose timelines
    // are ordered.
    let steps = rows(&o.out_dir.join("validation.csv"));
    assert_eq!(steps.len(), o.steps_simulated);
    let mut busy_m = 0.0;
    for m in models {
        let mut busy_p = 0.0;
        for r in &steps {
            let p: f64 = r[&format!("{m}_s")].parse().unwrap();
            assert!(p > 0.0, "{m} {r:?}");
            busy_p += p;
        }
        let want = s["cost_models"][m]["predicted_busy_s"].as_f64().unwrap();
        assert!((busy_p - want).abs() < 1e-6, "{m}");
    }
    for (k, r) in steps.iter().enumerate() {
        let m: f64 = r["measured_s"].parse().unwrap();
        assert!(m > 0.0, "{r:?}");
        busy_m += m;
        assert_eq!(r["linear_scored"], (k % 2 == 1).to_string());
    }
    assert!((busy_m - s["measured_busy_s"].as_f64().unwrap()).abs() < 1e-6);
    // The first step prefills the first arrival's prompt.
    assert_eq!(steps[0]["kind"], "prefill");
    let reqs = rows(&o.out_dir.join("validation_requests.csv"));
    assert_eq!(reqs.len(), 6);
    for r in &reqs {
        let f = |k: &str| r[k].parse::<f64>().unwrap();
        assert!(f("ttft_measured_s") > 0.0);
        assert!(f("e2e_measured_s") >= f("ttft_measured_s"));
        for m in models {
            assert!(
                f(&format!("e2e_{m}_s")) >= f(&format!("ttft_{m}_s"))
                    && f(&format!("ttft_{m}_s")) > 0.0
            );
        }
    }
    // The calibration it took first, and the run's settings, are beside the results.
    for f in ["profile.toml", "resolved.toml", "validation_summary.json"] {
        assert!(o.out_dir.join(f).is_file(), "{f}");
    }
    assert!(
        o.text.contains("per request") && o.text.contains("noise"),
        "{}",
        o.text
    );
    // The settings name the profile where it now is, not the temporary folder it was written in.
    let resolved = std::fs::read_to_string(o.out_dir.join("resolved.toml")).unwrap();
    let profile = o.out_dir.join("profile.toml").display().to_string();
    assert!(
        resolved.contains(&format!("profile = \"{profile}\"")),
        "{resolved}"
    );
}

#[test]
fn validate_refuses_what_it_cannot_execute_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v");
    let e = quick(&out, &["cluster.replicas=2"]).unwrap_err();
    assert!(e.to_string().contains("cluster.replicas = 1"), "{e}");
    assert_eq!(e.exit_code(), 2);
    let e = quick(&out, &["engine.kind=\"dynamic\""]).unwrap_err();
    assert!(e.to_string().contains("engine.kind"), "{e}");
    // A mixture of experts is named as the problem, whatever the divisor.
    for d in ["1", "8"] {
        let e = quick(
            &out,
            &[
                "model.name=\"mixtral-8x7b\"",
                &format!("model.width_divisor={d}"),
            ],
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("model.name") && m.contains("catalog models"),
            "{m}"
        );
    }
    assert!(!out.exists());
}
