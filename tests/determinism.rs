//! Invariant 7: same seed, same bytes; a different seed, a different workload.

use crate::common::*;

#[test]
fn same_seed_same_bytes_different_seed_different_workload() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(SMALL_CHAT, &[]);
    let (_, a) = run_in(tmp.path(), "a", &cfg);
    let (_, b) = run_in(tmp.path(), "b", &cfg);
    for f in [
        "requests.csv",
        "summary.json",
        "summary.csv",
        "timeseries.csv",
        "resolved.toml",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between identical runs"
        );
    }
    let cfg2 = config(SMALL_CHAT, &["seed=8"]);
    let (_, c) = run_in(tmp.path(), "c", &cfg2);
    let ra = read_rows(&a.join("requests.csv"));
    let rc = read_rows(&c.join("requests.csv"));
    let prompts = |rows: &[std::collections::HashMap<String, String>]| -> Vec<String> {
        rows.iter().map(|r| r["prompt_tokens"].clone()).collect()
    };
    assert_ne!(prompts(&ra), prompts(&rc));
}

/// SGLang's engine (a scheduler with fractional budgets and a tree keyed by content) is deterministic too.
#[test]
fn sglang_same_seed_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        SMALL_CHAT,
        &["engine.kind=\"sglang\"", "sglang.schedule_policy=\"lpm\""],
    );
    let (_, a) = run_in(tmp.path(), "a", &cfg);
    let (_, b) = run_in(tmp.path(), "b", &cfg);
    for f in ["requests.csv", "summary.json", "timeseries.csv"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between identical runs"
        );
    }
}
