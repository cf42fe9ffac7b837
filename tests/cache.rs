//! Prefix cache on vs off on the identical workload.

use crate::common::*;
use std::collections::BTreeMap;

type Key = (u64, u32);

fn by_key(rows: &[std::collections::HashMap<String, String>]) -> BTreeMap<Key, (u64, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                (num(r, "session_id") as u64, num(r, "turn") as u32),
                (
                    num(r, "prompt_tokens") as u64,
                    num(r, "output_tokens") as u64,
                    num(r, "cached_tokens") as u64,
                ),
            )
        })
        .collect()
}

#[test]
fn cache_on_hits_cache_off_never_on_identical_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let (on, on_dir) = run_in(tmp.path(), "on", &config(SMALL_CHAT, &[]));
    let (off, off_dir) = run_in(
        tmp.path(),
        "off",
        &config(SMALL_CHAT, &["engine.prefix_caching=false"]),
    );
    let a = by_key(&read_rows(&on_dir.join("requests.csv")));
    let b = by_key(&read_rows(&off_dir.join("requests.csv")));
    // Identical requests: same (session, turn) keys, same prompt and output lengths.
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 300, "too small a workload: {}", a.len());
    for (k, (pa, oa, _)) in &a {
        let (pb, ob, _) = b
            .get(k)
            .unwrap_or_else(|| panic!("{k:?} missing with cache off"));
        assert_eq!((pa, oa), (pb, ob), "request {k:?} differs");
    }
    // Off: nothing cached anywhere.
    assert!(b.values().all(|v| v.2 == 0));
    assert_eq!(off.summary.get_f64("prefix_cache_hit_rate"), Some(0.0));
    assert_eq!(off.summary.get_f64("prefix_cache_hits"), Some(0.0));
    // On: follow-up turns reuse their context; the shared 600-token system prompt (37 full blocks, 592
    // tokens) is hit by every request after the first.
    let follow: Vec<_> = a.iter().filter(|(k, _)| k.1 > 1).collect();
    assert!(follow.len() > 50);
    let hit = follow.iter().filter(|(_, v)| v.2 > 0).count();
    assert_eq!(hit, follow.len(), "every follow-up turn hits");
    let deep = follow.iter().filter(|(_, v)| v.2 >= 592 + 16).count() as f64 / follow.len() as f64;
    assert!(
        deep > 0.9,
        "follow-ups hit beyond the system prompt: {deep}"
    );
    assert!(on.summary.get_f64("prefix_cache_hit_rate").unwrap() > 0.3);
    // And the cache saves prefill work and time.
    assert!(
        on.summary.get_f64("prefill_tokens_computed").unwrap()
            < 0.7 * off.summary.get_f64("prefill_tokens_computed").unwrap()
    );
}

#[test]
fn session_scope_hits_only_own_session() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = run_in(
        tmp.path(),
        "session",
        &config(SMALL_CHAT, &["engine.prefix_cache_scope=\"session\""]),
    );
    let rows = by_key(&read_rows(&dir.join("requests.csv")));
    // First turns cannot hit (the system prompt is now private to each session); follow-ups still do,
    // unless their session's blocks were evicted during the think time (this pool is small).
    assert!(rows.iter().filter(|(k, _)| k.1 == 1).all(|(_, v)| v.2 == 0));
    let follow: Vec<_> = rows.iter().filter(|(k, _)| k.1 > 1).collect();
    let hit = follow.iter().filter(|(_, v)| v.2 > 0).count() as f64 / follow.len() as f64;
    assert!(hit > 0.8, "follow-ups hitting their own session: {hit}");
}
