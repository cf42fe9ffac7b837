//! Speculative decoding (`[engine.speculative]`): vLLM V1's verification chunks, rollback and counters.
//! Timed cases use the linear cost model of `common::replay`: 10 ms a step, 0.1 ms a prefill token
//! (a verification chunk of k + 1 tokens is priced as k + 1 chunk tokens), 1 ms a decode row; n-gram
//! drafts cost no GPU time.

use crate::common::*;
use servesim::config::SchedulingPolicy;
use servesim::cost::linear::LinearCost;
use servesim::kv::{KvCacheManager, KvStore};
use servesim::replica::{Replica, StepStart};
use servesim::request::Request;
use servesim::run::{simulate, SimOptions};
use servesim::scheduler::vllm_v1::{Limits, SpecDecode, VllmScheduler};
use servesim::time::SimTime;
use servesim::workload::content::Segment;

fn spec(method: &str, k: u32, a: f64) -> String {
    format!(
        "[engine.speculative]\nmethod = \"{method}\"\nnum_speculative_tokens = {k}\nacceptance_rate = {a}"
    )
}

fn secs(ns: Option<u64>) -> f64 {
    ns.unwrap() as f64 / 1e9
}

#[test]
fn every_draft_accepted_emits_k_plus_one_tokens_per_step() {
    // One request: 100 prompt tokens, 9 output tokens. The prefill, 0.01 + 100 x 0.0001 = 0.02 s,
    // samples token 1; each later step verifies 1 + 3 tokens, 0.01 + 4 x 0.0001 = 0.0104 s. With
    // a = 1 tokens 2-5 end at 0.0304 and 6-9 at 0.0408; with a = 0 one token a step, 8 steps:
    // 0.02 + 8 x 0.0104 = 0.1032. Without speculation: 8 decode steps of 0.011 s, 0.108.
    let row = [(1, 1, 0.0, &[(1u64, 100u32)][..], 11, 9, 9)];
    for (a, finish, accepted) in [(1.0, 0.0408, 6.0), (0.0, 0.1032, 0.0)] {
        let (rows, s) = replay(&row, "", &spec("ngram", 3, a));
        let r = &rows[0];
        assert!((secs(r.times[2]) - 0.02).abs() < 1e-9, "a={a}");
        assert!(
            (secs(r.times[3]) - finish).abs() < 1e-9,
            "a={a}: {:?}",
            r.times
        );
        assert_eq!(r.output_tokens, 9);
        // TPOT is per token: (E2E - TTFT) / 8.
        assert!((r.tpot.unwrap() - (finish - 0.02) / 8.0).abs() < 1e-9);
        let steps = if a == 1.0 { 2.0 } else { 8.0 };
        assert_eq!(s.get_f64("spec_decode_num_drafts"), Some(steps));
        assert_eq!(s.get_f64("spec_decode_num_draft_tokens"), Some(3.0 * steps));
        assert_eq!(s.get_f64("spec_decode_num_accepted_tokens"), Some(accepted));
        assert_eq!(s.get_f64("spec_decode_acceptance_rate"), Some(a));
    }
    let (rows, s) = replay(&row, "", "");
    assert!((secs(rows[0].times[3]) - 0.108).abs() < 1e-9);
    assert_eq!(s.get_f64("spec_decode_num_drafts"), Some(0.0));
    assert_eq!(s.get_f64("spec_decode_acceptance_rate"), None);
}

#[test]
fn a_stop_inside_an_accepted_run_drops_the_tokens_after_it() {
    // 6 output tokens with k = 3, a = 1: token 1 from the prefill, 2-5 in one step, and the next
    // step's four tokens are cut at 6 (EOS): 0.02 + 2 x 0.0104 = 0.0408 s, 6 tokens.
    let (rows, s) = replay(
        &[(1, 1, 0.0, &[(1u64, 100u32)][..], 11, 6, 50)],
        "",
        &spec("ngram", 3, 1.0),
    );
    assert_eq!(rows[0].output_tokens, 6);
    assert!((secs(rows[0].times[3]) - 0.0408).abs() < 1e-9);
    assert_eq!(rows[0].reason.map(|r| r.as_str()), Some("stop"));
    // vLLM counts what the rejection sampler accepted, before the stop check.
    assert_eq!(s.get_f64("spec_decode_num_accepted_tokens"), Some(6.0));
}

#[test]
fn drafts_share_the_token_budget_and_are_cut_by_it() {
    // A budget of 3 tokens a step: a decoding request wants 1 + 3 and gets 1 + 2 (vLLM drops the
    // drafts the budget cannot hold); with a = 1 it emits 3 tokens a step.
    let (rows, s) = replay(
        &[
            (1, 1, 0.0, &[(1u64, 2u32)][..], 11, 7, 7),
            (2, 1, 0.0, &[(2u64, 1u32)][..], 12, 1, 1),
        ],
        "max_num_batched_tokens = 3\nmax_num_seqs = 2",
        &spec("ngram", 3, 1.0),
    );
    // Step 1: prefills of 2 and 1 tokens (0.01 + 3 x 0.0001 = 0.0103); request 2 ends (1 token).
    // Steps 2 and 3: request 1 verifies 1 + 2 (0.0103 each), 3 tokens each: 7 tokens at 0.0309.
    assert!((secs(rows[1].times[3]) - 0.0103).abs() < 1e-9);
    assert!(
        (secs(rows[0].times[3]) - 0.0309).abs() < 1e-9,
        "{:?}",
        rows[0].times
    );
    assert_eq!(s.get_f64("spec_decode_num_draft_tokens"), Some(4.0));
}

fn request(id: u64, tokens: u32, max: u32) -> Request {
    let prompt = vec![Segment {
        content: id,
        len: tokens,
    }];
    Request::new(id, id, 1, 0, SimTime::ZERO, prompt, 1000 + id, max)
}

/// A replica of 4-token blocks with EAGLE-style speculation (k = 3 lookahead slots) at rate `a`.
fn eagle_replica(a: f64) -> Replica<VllmScheduler<KvCacheManager>> {
    let limits = Limits {
        max_num_batched_tokens: 1000,
        max_num_seqs: 16,
        max_model_len: 1000,
        enable_chunked_prefill: true,
        long_prefill_token_threshold: 0,
        policy: SchedulingPolicy::Fcfs,
    };
    let sched = VllmScheduler::new(limits, KvCacheManager::new(101, 4, true)).with_speculation(
        SpecDecode {
            num_speculative_tokens: 3,
            num_lookahead_tokens: 3,
        },
    );
    let cfg = servesim::config::SpeculativeConfig {
        method: servesim::config::SpecMethod::Eagle,
        num_speculative_tokens: 3,
        acceptance_rate: Some(a),
        acceptance_rate_dist: None,
        model: None,
    };
    Replica::new(0, sched, 1000).with_speculation(servesim::speculative::Acceptance::new(&cfg, 1))
}

#[test]
fn rejected_drafts_roll_back_the_computed_tokens_and_keep_their_slots() {
    // vLLM: after a verification, num_computed_tokens -= rejected drafts; the request keeps the blocks
    // it was given (the next step's drafts overwrite the slots), and the prefix cache registers only
    // blocks of verified tokens. Prompt 10, block 4: the prefill holds ceil(10 / 4) = 3 blocks (no
    // lookahead for a fresh prefill). Each decode step then schedules 1 + 3 tokens and 3 lookahead
    // slots: ceil((computed + 4 + 3) / 4) blocks.
    let cost = LinearCost {
        p: servesim::config::LinearConfig::default(),
    };
    for a in [0.0, 1.0] {
        let mut rep = eagle_replica(a);
        rep.enqueue(request(1, 10, 200), 200);
        let mut now = SimTime::ZERO;
        let mut step = |rep: &mut Replica<_>| {
            let StepStart::Started(d) = rep.start_step(now, &cost) else {
                panic!("a step starts")
            };
            now += d;
            rep.finish_step(now, |_, _| {});
        };
        step(&mut rep);
        assert_eq!(rep.kv().used_blocks(), 3);
        for _ in 0..5 {
            let (tokens, computed) = {
                let r = rep.request(1).unwrap();
                (r.num_tokens(), r.num_computed_tokens)
            };
            assert_eq!(computed + 1, tokens);
            step(&mut rep);
            let r = rep.request(1).unwrap();
            // a = 0: one token a step; a = 1: four.
            let emitted = if a == 0.0 { 1 } else { 4 };
            assert_eq!(r.num_tokens(), tokens + emitted);
            // Rolled back to the verified tokens: the new last token has no KV yet.
            assert_eq!(r.num_computed_tokens + 1, r.num_tokens());
            // The blocks given for the step stay held (rejected drafts free none).
            let held = (computed + 4 + 3).div_ceil(4);
            assert_eq!(rep.kv().used_blocks(), held, "a={a}");
            assert_eq!(r.kv.num_blocks_held(), held);
            // Only blocks full of verified tokens (before the step) are cached.
            assert!(r.kv.num_cached_blocks <= (tokens / 4) as usize, "a={a}");
        }
    }
}

#[test]
fn mean_acceptance_length_matches_the_truncated_geometric_mean_on_a_chat_run() {
    // E[tokens per verification] = (1 - a^(k+1)) / (1 - a): a = 0.6, k = 4 gives
    // (1 - 0.07776) / 0.4 = 2.3056; the acceptance rate (accepted / drafted) is
    // (0.6 + 0.36 + 0.216 + 0.1296) / 4 = 0.3264. Tens of thousands of verifications: the standard
    // error is below 0.01.
    let base = [
        "workload.duration_s = 60.0",
        "engine.speculative.method = \"eagle\"",
        "engine.speculative.num_speculative_tokens = 4",
    ];
    let mut sets = base.to_vec();
    sets.push("engine.speculative.acceptance_rate = 0.6");
    let cfg = config(SMALL_CHAT, &sets);
    let s = simulate(&cfg, &SimOptions::default()).unwrap().summary;
    let n = s.get_f64("spec_decode_num_drafts").unwrap();
    assert!(n > 10_000.0, "{n} verifications");
    let len = s.get_f64("spec_decode_mean_acceptance_length").unwrap();
    assert!((len - 2.3056).abs() < 0.03, "{len}");
    let rate = s.get_f64("spec_decode_acceptance_rate").unwrap();
    assert!((rate - 0.3264).abs() < 0.01, "{rate}");
    // Position i is reached with probability 0.6^(i+1): 0.6, 0.36, 0.216, 0.1296.
    let per_pos: Vec<f64> = s.0["spec_decode_acceptance_rate_per_pos"]
        .as_str()
        .unwrap()
        .split(';')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(per_pos.len(), 4);
    for (i, p) in per_pos.iter().enumerate() {
        assert!((p - 0.6f64.powi(i as i32 + 1)).abs() < 0.01, "{per_pos:?}");
    }
    assert!(s.get_f64("cost_spec_draft_s").unwrap() > 0.0);
    // Speculation shortens TPOT against the same run without it.
    let off = simulate(
        &config(SMALL_CHAT, &["workload.duration_s = 60.0"]),
        &SimOptions::default(),
    )
    .unwrap()
    .summary;
    let tpot = |s: &servesim::metrics::Summary| s.get_f64("tpot_median_s").unwrap();
    assert!(tpot(&s) < tpot(&off), "{} vs {}", tpot(&s), tpot(&off));
}

#[test]
fn per_request_rates_are_drawn_once_and_reproducibly() {
    let cfg = servesim::config::SpeculativeConfig {
        method: servesim::config::SpecMethod::Ngram,
        num_speculative_tokens: 2,
        acceptance_rate: None,
        acceptance_rate_dist: Some(servesim::workload::dist::Dist::Uniform { min: 0.3, max: 0.9 }),
        model: None,
    };
    let a = servesim::speculative::Acceptance::new(&cfg, 5);
    let rates: Vec<f64> = (0..1000).map(|id| a.rate_for(id)).collect();
    assert!(rates.iter().all(|r| (0.3..=0.9).contains(r)));
    let mean = rates.iter().sum::<f64>() / 1000.0;
    // Uniform on [0.3, 0.9]: mean 0.6, standard error 0.173 / sqrt(1000) = 0.0055.
    assert!((mean - 0.6).abs() < 0.02, "{mean}");
    let again = servesim::speculative::Acceptance::new(&cfg, 5);
    assert!((0..1000).all(|id| again.rate_for(id) == rates[id as usize]));
}

#[test]
fn speculative_runs_are_deterministic_and_the_same_without_leaps() {
    let sets = [
        "workload.duration_s = 30.0",
        "engine.speculative.method = \"ngram\"",
        "engine.speculative.num_speculative_tokens = 3",
        "engine.speculative.acceptance_rate = 0.7",
    ];
    let cfg = config(SMALL_CHAT, &sets);
    let run = |leap: bool| {
        let out = simulate(
            &cfg,
            &SimOptions {
                rows: servesim::metrics::Rows::Keep,
                no_leap: !leap,
                ..SimOptions::default()
            },
        )
        .unwrap();
        (format!("{:?}", out.requests), out.summary.to_json())
    };
    let a = run(true);
    assert_eq!(a, run(true));
    assert_eq!(a, run(false));
}

#[test]
fn bad_speculative_settings_are_refused_naming_the_key() {
    let m = "engine.speculative.method=\"eagle\"";
    let k = "engine.speculative.num_speculative_tokens=3";
    let refused = |sets: &[&str], key: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = servesim::config::Config::load(None, &sets)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{sets:?}: {e}");
    };
    refused(
        &[m, k, "engine.speculative.acceptance_rate=1.5"],
        "acceptance_rate",
    );
    refused(&[m, k], "acceptance_rate");
    refused(
        &[
            m,
            "engine.speculative.num_speculative_tokens=0",
            "engine.speculative.acceptance_rate=0.5",
        ],
        "num_speculative_tokens",
    );
    refused(
        &[
            "engine.speculative.method=\"draft_model\"",
            k,
            "engine.speculative.acceptance_rate=0.5",
        ],
        "engine.speculative.model",
    );
    refused(
        &[
            m,
            k,
            "engine.speculative.acceptance_rate=0.5",
            "engine.kind=\"dynamic\"",
        ],
        "engine.kind (set by --set engine.kind",
    );
    refused(
        &[
            m,
            k,
            "engine.speculative.acceptance_rate=0.5",
            "engine.kv_cache=\"off\"",
        ],
        "engine.kv_cache (set by --set engine.kv_cache",
    );
    // Rates are probabilities: a distribution that can draw above 1 is refused.
    for d in [
        "{dist=\"uniform\",min=0.5,max=1.5}",
        "{dist=\"lognormal\",median=0.7,sigma=1.0}",
    ] {
        refused(
            &[
                m,
                k,
                &format!("engine.speculative.acceptance_rate_dist={d}"),
            ],
            "acceptance_rate_dist",
        );
    }
    // A draft model must share the target's vocabulary (Qwen's 152,064 tokens against Llama-3's 128,256).
    let cfg = default_with(&[
        "engine.speculative.method=\"draft_model\"",
        k,
        "engine.speculative.acceptance_rate=0.5",
        "engine.speculative.model=\"qwen2.5-7b\"",
    ]);
    let e = simulate(&cfg, &SimOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("engine.speculative.model") && e.contains("vocabulary"),
        "{e}"
    );
    // The draft model is looked up when the run is built, before any output exists.
    let cfg = default_with(&[
        "engine.speculative.method=\"draft_model\"",
        k,
        "engine.speculative.acceptance_rate=0.5",
        "engine.speculative.model=\"no-such-model\"",
    ]);
    let e = simulate(&cfg, &SimOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("engine.speculative.model") && e.contains("no-such-model"),
        "{e}"
    );
}

#[test]
fn a_drafter_takes_its_weights_and_kv_layers_out_of_the_kv_cache() {
    // vLLM loads the drafter beside the target and allocates one KV cache over every attention layer,
    // the drafter's included. Llama-3.1-8B's EAGLE head is one of its decoder layers: q and o 4096 x
    // 4096, k and v 4096 x 1024, the MLP 3 x 4096 x 14336, two norms of 4096: 218,112,000 parameters,
    // 436,224,000 bytes; its KV is 2 x 8 x 128 x 2 = 4,096 bytes a token beside the target's 131,072.
    // So the blocks go from A / (16 x 131,072) to (A - 436,224,000) / (16 x 135,168), where A is the
    // memory left for the KV cache (known from the plain run to within one block).
    let plain = servesim::system::System::resolve(&default_with(&[])).unwrap();
    let eagle = servesim::system::System::resolve(&default_with(&[
        "engine.speculative.method=\"eagle\"",
        "engine.speculative.num_speculative_tokens=3",
        "engine.speculative.acceptance_rate=0.7",
    ]))
    .unwrap();
    let a = plain.sizing.num_gpu_blocks as f64 * 16.0 * 131_072.0;
    let want = (a - 436_224_000.0) / (16.0 * 135_168.0);
    let got = eagle.sizing.num_gpu_blocks as f64;
    assert!(
        (got - want).abs() <= 1.5,
        "{got} blocks, expected {want:.1}"
    );
    // n-gram drafts take no GPU memory.
    let ngram = servesim::system::System::resolve(&default_with(&[
        "engine.speculative.method=\"ngram\"",
        "engine.speculative.num_speculative_tokens=3",
        "engine.speculative.acceptance_rate=0.7",
    ]))
    .unwrap();
    assert_eq!(ngram.sizing.num_gpu_blocks, plain.sizing.num_gpu_blocks);
    // Llama-3.2-1B as a draft model: 262,668,288 embedding parameters (tied with the LM head), 16
    // layers of 60,821,504 (q, o 2048 x 2048; k, v 2048 x 512; MLP 3 x 2048 x 8192; two norms) and a
    // final norm of 2048: 1,235,814,400 parameters, 2,471,628,800 bytes; KV 2 x 8 x 64 x 2 x 16 =
    // 32,768 bytes a token.
    let draft = servesim::system::System::resolve(&default_with(&[
        "engine.speculative.method=\"draft_model\"",
        "engine.speculative.model=\"llama-3.2-1b\"",
        "engine.speculative.num_speculative_tokens=3",
        "engine.speculative.acceptance_rate=0.7",
    ]))
    .unwrap();
    let want = (a - 2_471_628_800.0) / (16.0 * (131_072.0 + 32_768.0));
    let got = draft.sizing.num_gpu_blocks as f64;
    assert!(
        (got - want).abs() <= 3.0,
        "{got} blocks, expected {want:.1}"
    );
}

#[test]
fn the_readme_speculation_example_runs_as_printed() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let run = |a: Option<&str>| {
        let mut s = Vec::new();
        if let Some(a) = a {
            s = vec![
                "engine.speculative.method=\"eagle\"".to_string(),
                "engine.speculative.num_speculative_tokens=3".to_string(),
                format!("engine.speculative.acceptance_rate={a}"),
            ];
        }
        let s: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
        simulate(&default_with(&s), &SimOptions::default())
            .unwrap()
            .summary
    };
    let (off, a6, a8) = (run(None), run(Some("0.6")), run(Some("0.8")));
    for (name, keys) in [
        ("TPOT median / p99", &["tpot_median_s", "tpot_p99_s"][..]),
        ("TTFT median / p99", &["ttft_median_s", "ttft_p99_s"][..]),
    ] {
        let row = crate::disaggregated::readme_row(name, keys, &[&off, &a6, &a8]);
        assert!(readme.contains(&row), "README lacks: {row}");
    }
    // (1 - a^4) / (1 - a): 2.176 at 0.6, 2.952 at 0.8.
    let len =
        |s: &servesim::metrics::Summary| s.get_f64("spec_decode_mean_acceptance_length").unwrap();
    let row = format!(
        "| mean acceptance length | | {:.3} (theory 2.176) | {:.3} (theory 2.952) |",
        len(&a6),
        len(&a8)
    );
    assert!(readme.contains(&row), "README lacks: {row}");
}

#[test]
fn speculation_under_preemption_keeps_every_invariant() {
    // A pool too small for the load: requests are preempted and resumed (no lookahead for the resumed
    // prefill, drafts again after it), with the debug builds' invariant checks after every step.
    let cfg = config(
        SMALL_CHAT,
        &[
            "workload.duration_s = 30.0",
            "engine.num_gpu_blocks = 2100",
            "engine.speculative.method = \"eagle\"",
            "engine.speculative.num_speculative_tokens = 4",
            "engine.speculative.acceptance_rate = 0.5",
        ],
    );
    let s = simulate(&cfg, &SimOptions::default()).unwrap().summary;
    assert!(s.get_f64("num_preemptions").unwrap() > 0.0);
    assert!(s.get_f64("spec_decode_num_drafts").unwrap() > 0.0);
    assert_eq!(
        s.get_f64("requests_finished"),
        s.get_f64("requests")
            .map(|n| n - s.get_f64("requests_rejected").unwrap())
    );
}
