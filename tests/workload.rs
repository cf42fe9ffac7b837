//! The conversational generator: exact context accumulation, truncation, and the default shape.

use crate::common::*;
use servesim::request::Request;
use servesim::rng::RngStreams;
use servesim::time::SimTime;
use servesim::workload::content::total_tokens;
use servesim::workload::conversation::{ConversationGenerator, Release};
use servesim::workload::Workload;

fn req(r: Option<Release>) -> (Request, u32) {
    match r {
        Some(Release::Request(nr)) => (nr.request, nr.true_output_tokens),
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Hashes of a request's prompt followed by `out` generated tokens.
fn hashes_with_output(r: &Request, out: u32) -> Vec<u64> {
    let mut r = r.clone();
    r.num_output_tokens = out;
    r.update_block_hashes(16);
    r.block_hashes.to_vec()
}

#[test]
fn turn_k_plus_1_extends_turn_k_exactly_in_tokens_and_hashes() {
    let cfg = default_with(&[
        "workload.turns={dist=\"constant\", value=6}",
        "workload.think_time_s={dist=\"constant\", value=1.0}",
    ]);
    let mut g = ConversationGenerator::new(&cfg.workload, RngStreams::new(3), 131_072);
    let script = g.draw_session(0);
    let (mut prev, mut out) = req(g.start_session(0, SimTime::ZERO));
    let mut now = SimTime::ZERO;
    for k in 1..6 {
        // The engine generated `out` tokens (the true length, under max_tokens).
        let generated = out.min(prev.max_tokens);
        now = g
            .on_turn_complete(0, generated, now)
            .at()
            .expect("more turns");
        let (next, next_out) = req(g.release_turn(0, now));
        let new_msg = script.turns[k].user_tokens + script.turns[k].doc_tokens;
        assert_eq!(
            next.prompt_tokens,
            prev.prompt_tokens + generated + new_msg,
            "turn {} tokens",
            k + 1
        );
        assert_eq!(next.prompt_tokens as u64, total_tokens(&next.prompt));
        // Every full block of turn k's prompt + response is a block of turn k+1 with the same hash.
        let a = hashes_with_output(&prev, generated);
        let b = hashes_with_output(&next, 0);
        assert!(!a.is_empty());
        assert_eq!(&b[..a.len()], &a[..], "turn {} hashes", k + 1);
        assert_eq!(a.len(), (prev.prompt_tokens + generated) as usize / 16);
        prev = next;
        out = next_out;
    }
}

#[test]
fn truncation_drops_oldest_turns_and_changes_the_prefix() {
    // A 600-token system prompt, 500-token messages, 500-token responses, a 4096-token context with
    // max_tokens 500: turn 4 would need 600 + 3 x 1000 + 500 + 500 = 4600 > 4096, so turn 1 is dropped.
    let cfg = default_with(&[
        "workload.turns={dist=\"constant\", value=4}",
        "workload.user_tokens={dist=\"constant\", value=500}",
        "workload.doc_probability=0.0",
        "workload.max_tokens=500",
        "workload.think_time_s={dist=\"constant\", value=1.0}",
    ]);
    let mut g = ConversationGenerator::new(&cfg.workload, RngStreams::new(1), 4096);
    let (mut r, _) = req(g.start_session(0, SimTime::ZERO));
    let mut prompts = vec![r.clone()];
    let mut now = SimTime::ZERO;
    for _ in 1..4 {
        now = g.on_turn_complete(0, 500, now).at().unwrap();
        r = req(g.release_turn(0, now)).0;
        prompts.push(r.clone());
    }
    let t: Vec<u32> = prompts.iter().map(|p| p.prompt_tokens).collect();
    assert_eq!(t, vec![1100, 2100, 3100, 3100]);
    // Turn 4 keeps the system prompt (37 full blocks = 592 tokens) but not turn 1, so its hashes agree
    // with turn 3's through block 36 and differ from block 37 on: the cache sees the changed prefix.
    let h3 = hashes_with_output(&prompts[2], 500);
    let h4 = hashes_with_output(&prompts[3], 0);
    assert_eq!(h3[..37], h4[..37]);
    assert_ne!(h3[37], h4[37]);
}

#[test]
fn default_session_shape_matches_the_published_statistics() {
    // Zipf(2) on 1..50: 61.5% single-turn sessions, mean 2.77 turns (the "about 2.8, 61%").
    let cfg = default_with(&[]);
    let g = ConversationGenerator::new(&cfg.workload, RngStreams::new(5), 131_072);
    let n = 20_000u64;
    let turns: Vec<usize> = (0..n).map(|i| g.draw_session(i).turns.len()).collect();
    let single = turns.iter().filter(|&&t| t == 1).count() as f64 / n as f64;
    let mean = turns.iter().sum::<usize>() as f64 / n as f64;
    // Standard errors at n = 20k: 0.0034 for the share, about 0.05 for the mean (std of Zipf(2) on 1..50
    // is about 5.5): 4-5 standard errors of room.
    assert!((single - 0.615).abs() < 0.015, "single-turn share {single}");
    assert!((mean - 2.77).abs() < 0.25, "mean turns {mean}");
    // User messages: lognormal median 60.
    let mut user: Vec<u32> = (0..n)
        .flat_map(|i| g.draw_session(i).turns.into_iter().map(|t| t.user_tokens))
        .collect();
    user.sort();
    let med = user[user.len() / 2];
    assert!((57..=63).contains(&med), "median user tokens {med}");
}
