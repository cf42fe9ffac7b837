//! Cost models: calibration on this machine, a real forward pass against the calibrated prediction, the
//! measured-table model, and the roofline against real GPU operator tables.

use crate::common::*;
use servesim::config::RooflineConfig;
use servesim::cost::catalog::{HardwareSpec, ModelShape};
use servesim::cost::roofline::Roofline;
use servesim::cost::table::{read_mlp_table, roofline_vs_table};
use std::path::Path;

const VIDUR: &str = "data/profiles/vidur/compute";

fn roofline(model: &str, hw: &str) -> Roofline {
    Roofline::new(
        ModelShape::load(model).unwrap(),
        HardwareSpec::load(hw).unwrap(),
        RooflineConfig::default(),
        1,
        450.0,
        1e-5,
    )
}

#[test]
fn roofline_linear_layers_within_35_percent_of_measured_h100_and_a100() {
    for (gpu, hw) in [("h100", "h100-sxm"), ("a100", "a100-80gb")] {
        let r = roofline("llama-2-7b", hw);
        let path = format!("{VIDUR}/{gpu}/meta-llama/Llama-2-7b-hf/mlp.csv");
        let table = read_mlp_table(Path::new(&path), &r.model, 1).unwrap();
        let rows = roofline_vs_table(&table, &r, &[1, 64, 512, 2048, 4096]);
        assert_eq!(rows.len(), 5 * 7);
        for row in rows
            .iter()
            .filter(|r| ["qkv_proj", "o_proj", "mlp_up", "mlp_down"].contains(&r.op))
        {
            // The GEMM efficiencies are one fit over this H100 table and the H200 one
            // (`tools/fit_roofline.py`); this table's GEMMs at 2,048-4,096 tokens run up to 31% faster
            // than the fit.
            let ratio = row.roofline_s / row.measured_s;
            assert!(
                (0.7..=1.35).contains(&ratio),
                "{gpu} {} at {} tokens: roofline/measured = {ratio:.2}",
                row.op,
                row.tokens
            );
        }
    }
}

#[test]
fn table_cost_model_runs_and_rejects_a_table_for_another_model() {
    let tmp = tempfile::tempdir().unwrap();
    let table = format!("{VIDUR}/h100/meta-llama/Llama-2-7b-hf/mlp.csv");
    let cfg = config(
        SMALL_CHAT,
        &[
            "model.name=\"llama-2-7b\"",
            "engine.max_model_len=4096",
            "cost.kind=\"table\"",
            &format!("cost.table.mlp=\"{table}\""),
            "workload.truncate_context=true",
        ],
    );
    let (o, _) = run_in(tmp.path(), "table", &cfg);
    assert_eq!(o.summary.0["cost_model"], "table");
    assert!(o.summary.get_f64("requests_finished").unwrap() > 100.0);
    let bad = config(
        SMALL_CHAT,
        &[
            "cost.kind=\"table\"",
            &format!("cost.table.mlp=\"{table}\""),
        ],
    );
    let e = servesim::run::run(
        &bad,
        &servesim::run::RunOptions {
            out: Some(tmp.path().join("bad")),
            progress: false,
            no_leap: false,
            variant: String::new(),
            save_cache: None,
            format: Default::default(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("mlp.csv") && e.contains("hidden_size"), "{e}");
    assert!(!tmp.path().join("bad").exists());
}

#[cfg(feature = "calibrate")]
mod calibrated {
    use super::*;
    use servesim::calibrate::forward::{Stack, Step};
    use servesim::calibrate::{calibrate, CalibrateOptions};
    use servesim::cost::calibrated::{CalibratedCost, Profile};
    use servesim::cost::CostModel;

    #[test]
    fn quick_calibration_writes_a_sane_profile_and_predicts_a_real_forward_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("tiny.toml");
        let p = calibrate(&CalibrateOptions {
            model: "tiny".into(),
            scale: 1,
            quick: true,
            threads: Some(1),
            device: "cpu".into(),
            repeats: 5,
            out: out.clone(),
            progress: false,
        })
        .unwrap();
        let back = Profile::load(&out).unwrap();
        assert_eq!(back.host.device, "cpu");
        assert_eq!(back.linear.len(), p.linear.len());
        assert_eq!(back.host.candle_version, p.host.candle_version);
        assert!(!p.raw.is_empty() && p.raw.iter().any(|r| r.held_out));
        assert!(p.median_rel_error.is_finite() && p.max_rel_error >= p.median_rel_error);
        // Sane: every coefficient non-negative; a bigger matmul never predicted cheaper.
        for f in p
            .linear
            .iter()
            .map(|s| &s.fit)
            .chain([&p.gemv, &p.attn_decode, &p.attn_prefill])
        {
            assert!(f.coef.iter().all(|c| *c >= 0.0 && c.is_finite()), "{f:?}");
        }
        assert!(p.linear(1e6, 256.0) > p.linear(1e6, 16.0));
        println!(
            "calibration held-out error: median {:.1}%, max {:.1}%",
            100.0 * p.median_rel_error,
            100.0 * p.max_rel_error
        );

        // A real forward pass of the tiny model's 4 layers, measured, against the calibrated prediction.
        // Recorded, not gated: timing on a shared machine is noisy.
        let model = ModelShape::load("tiny").unwrap();
        let cost = CalibratedCost {
            profile: back,
            model: model.clone(),
        };
        let stack = Stack::new(&model).unwrap();
        let steps = [
            (
                "prefill 64",
                Step {
                    prefill: vec![(64, 64)],
                    decode: vec![],
                },
            ),
            (
                "prefill 256",
                Step {
                    prefill: vec![(256, 256)],
                    decode: vec![],
                },
            ),
            (
                "decode 8 x ctx 256",
                Step {
                    prefill: vec![],
                    decode: vec![256; 8],
                },
            ),
            (
                "chunk 32 @ 96 + decode 4 x ctx 128",
                Step {
                    prefill: vec![(32, 96)],
                    decode: vec![128; 4],
                },
            ),
        ];
        for (_, step) in &steps {
            // A leap prices decode attention alone (`CostModel::decode_context_time`): exactly the
            // breakdown's.
            let shape = step.shape();
            let priced = servesim::cost::check_decode_context_contract(&cost, &shape, 8 * 50);
            assert_eq!(priced, Ok(shape.sums.decode_seqs > 0), "{shape:?}");
        }
        for (name, step) in steps {
            let measured = stack.time_step(&step, 5).unwrap();
            let predicted = cost.step_time(&step.shape()).as_secs_f64();
            assert!(measured > 0.0 && predicted > 0.0 && predicted.is_finite());
            println!(
                "forward {name}: measured {:.3} ms, predicted {:.3} ms, error {:+.1}%",
                measured * 1e3,
                predicted * 1e3,
                100.0 * (predicted / measured - 1.0)
            );
        }

        // And a simulation runs on the profile.
        let cfg = config(
            SMALL_CHAT,
            &[
                "model.name=\"tiny\"",
                "engine.max_model_len=4096",
                "engine.num_gpu_blocks=4000",
                "workload.duration_s=10.0",
                "cost.kind=\"calibrated\"",
                &format!("cost.profile=\"{}\"", out.display()),
            ],
        );
        let (o, _) = run_in(tmp.path(), "calibrated", &cfg);
        assert_eq!(o.summary.0["cost_model"], "calibrated");
        assert!(o.summary.get_f64("ttft_mean_s").unwrap() > 0.0);
    }
}

const H200: &str = "data/profiles/h200/llama-3.1-8b";

/// The H200 table model of Llama-3.1-8B (32 layers), with `extra` config keys.
fn h200_tables(extra: &[&str]) -> Box<dyn servesim::cost::CostModel> {
    let mut o = vec![
        "model.name=\"llama-3.1-8b\"".to_string(),
        "hardware.name=\"h200\"".to_string(),
        "cost.kind=\"table\"".to_string(),
        format!("cost.table.dir=\"{H200}\""),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = o.iter().map(String::as_str).collect();
    let cfg = config(SMALL_CHAT, &refs);
    let sys = servesim::system::System::resolve(&cfg).unwrap();
    sys.cost_model(&cfg).unwrap()
}

fn op_time(m: &dyn servesim::cost::CostModel, s: &servesim::cost::StepShape, op: &str) -> f64 {
    m.breakdown(s)
        .iter()
        .find(|o| o.op == op)
        .map(|o| o.seconds)
        .unwrap()
}

/// Attention and the LM head from the measured H200 tables, on and between their grid points. Expected
/// values are the CSV rows (ms per layer, x 32 layers):
/// - decode B64 L2048, triton_splitkv: 0.14368; B64 L4096: 0.26428; B256 L1024: 0.27092;
/// - chunk T1024 C4096, flash: 0.20040; cudnn: 0.13716;
/// - LM head, 64 rows: 0.34415 ms per call; 128 rows: 0.36826.
#[test]
fn h200_tables_price_attention_and_the_lm_head_from_their_rows() {
    use servesim::cost::StepShape;
    let m = h200_tables(&[]);
    let decode = |b: u32, l: u32| {
        let mut s = StepShape::default();
        for _ in 0..b {
            s.add(1, l, true, true);
        }
        op_time(m.as_ref(), &s, "attn_decode")
    };
    let close = |x: f64, want_ms: f64| (x * 1e3 - want_ms).abs() < 1e-9;
    assert!(close(decode(64, 2048), 32.0 * 0.14368));
    // Halfway in log2 context between 2048 and 4096 (context 2896.3, priced at 2896): the geometric mean
    // of the two rows (log time is interpolated) to within the rounding of the context,
    // sqrt(0.14368 x 0.26428) = 0.19486 ms per layer.
    let mid = decode(64, 2896) / 32.0 * 1e3;
    assert!((mid - 0.19486).abs() < 2e-4, "{mid}");
    // Past the largest batch (256) the time grows with the KV tokens read: 512 sequences cost twice 256.
    assert!(close(decode(512, 1024), 2.0 * 32.0 * 0.27092));
    let chunk = |m: &dyn servesim::cost::CostModel| {
        let mut s = StepShape::default();
        s.add(1024, 4096, false, true);
        op_time(m, &s, "attn_prefill")
    };
    assert!(close(chunk(m.as_ref()), 32.0 * 0.20040));
    let cudnn = h200_tables(&["cost.table.prefill_attention=\"cudnn\""]);
    assert!(close(chunk(cudnn.as_ref()), 32.0 * 0.13716));
    // Past the largest row, in proportion to the causal pairs: a 16,384-token prefill has 16,384 x
    // 16,385 / 2 = 134,225,920 pairs, 3.99976 times prefill_T8192's 33,558,528 (flash: 1.73875 ms).
    let mut big = StepShape::default();
    big.add(16384, 16384, false, false);
    let want = 32.0 * 1.73875 * 134_225_920.0 / 33_558_528.0;
    assert!(close(op_time(m.as_ref(), &big, "attn_prefill"), want));
    // 65 sampled rows (64 decodes and the chunk): 0.34415 + (0.36826 - 0.34415) / 64 ms, plus their gather
    // (2 x 65 x 4096 bf16 bytes) priced on the add curve at the token count moving as many bytes (3 x t x
    // 4096 x 2): t = 2 x 65 / 3 = 43.333, between mlp.csv's add rows at 32 (0.001414 ms) and 48 (0.001437):
    // 0.001414 + 0.000023 x 11.333 / 16.
    let mut s = StepShape::default();
    s.add(1024, 4096, false, true);
    for _ in 0..64 {
        s.add(1, 2048, true, true);
    }
    assert!(close(
        op_time(m.as_ref(), &s, "lm_head"),
        0.34415 + (0.36826 - 0.34415) / 64.0 + 0.001414 + 0.000023 * (130.0 / 3.0 - 32.0) / 16.0
    ));
    // The leap's re-pricing contract holds with the decode table.
    let mut d = StepShape::default();
    for _ in 0..7 {
        d.add(1, 3000, true, true);
    }
    assert_eq!(
        servesim::cost::check_decode_context_contract(m.as_ref(), &d, 7 * 500),
        Ok(true)
    );
    // And for a skewed batch, priced at its longest sequence (15 at 256 and one at 16,384).
    let mut skew = StepShape::default();
    for _ in 0..15 {
        skew.add(1, 256, true, true);
    }
    skew.add(1, 16_384, true, true);
    assert_eq!(
        servesim::cost::check_decode_context_contract(m.as_ref(), &skew, 16 * 40),
        Ok(true)
    );
}

#[test]
fn an_unknown_attention_backend_is_an_error_listing_the_known_ones() {
    let cfg = config(
        SMALL_CHAT,
        &[
            "hardware.name=\"h200\"",
            "cost.kind=\"table\"",
            &format!("cost.table.dir=\"{H200}\""),
            "cost.table.decode_attention=\"fa3\"",
        ],
    );
    let sys = servesim::system::System::resolve(&cfg).unwrap();
    let e = sys.cost_model(&cfg).err().unwrap().to_string();
    assert!(e.contains("cost.table.decode_attention"), "{e}");
    assert!(e.contains("flash") && e.contains("triton_splitkv"), "{e}");
}

/// Models beyond dense bf16 run end to end: each sized as vLLM sizes it and simulated on a short chat
/// workload, with its features changing the answer where they should.
#[test]
fn moe_latent_windowed_and_quantized_models_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, tp) in [
        ("mixtral-8x7b", 2),
        ("qwen3-30b-a3b", 1),
        ("deepseek-v3", 8),
        ("gemma-2-9b", 1),
        ("llama-3.1-70b-awq", 1),
    ] {
        let cfg = config(
            SMALL_CHAT,
            &[
                &format!("model.name=\"{model}\""),
                "hardware.name=\"h200\"",
                &format!("hardware.tensor_parallel={tp}"),
                "workload.duration_s=20",
                "engine.max_model_len=8192",
            ],
        );
        let (o, _) = run_in(tmp.path(), model, &cfg);
        assert!(
            o.summary.0["requests_finished"].as_u64().unwrap() > 0,
            "{model}"
        );
    }
}

#[test]
fn an_fp8_kv_cache_holds_twice_the_blocks() {
    let blocks = |dtype: &str| {
        let cfg = default_with(&[
            "hardware.name=\"h200\"",
            &format!("engine.kv_cache_dtype=\"{dtype}\""),
        ]);
        servesim::system::System::resolve(&cfg)
            .unwrap()
            .sizing
            .num_gpu_blocks
    };
    // The same memory over pages of half the bytes (16 x 8 x 128 x 2 x 1 B per layer instead of 2 B):
    // floor(avail / (P / 2)) is 2 floor(avail / P) or one more.
    let (auto, fp8) = (blocks("auto"), blocks("fp8"));
    assert!(fp8 == 2 * auto || fp8 == 2 * auto + 1, "{auto} {fp8}");
    // The table model's attention was timed on a 16-bit cache: an fp8 one is refused there.
    let cfg = default_with(&[
        "hardware.name=\"h200\"",
        "engine.kv_cache_dtype=\"fp8\"",
        "cost.kind=\"table\"",
        "cost.table.dir=\"data/profiles/h200/llama-3.1-8b\"",
    ]);
    let sys = servesim::system::System::resolve(&cfg).unwrap();
    let e = sys.cost_model(&cfg).err().unwrap().to_string();
    assert!(e.contains("engine.kv_cache_dtype"), "{e}");
    let cfg = default_with(&["engine.kv_cache_dtype=\"int4\""]);
    let e = servesim::system::System::resolve(&cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("engine.kv_cache_dtype"), "{e}");
}

/// The profile `servesim calibrate --device cuda` wrote on an H200 (candle's CUDA backend, bf16) against
/// the operator tables PyTorch measured on an H200: candle's matmuls are cuBLAS GEMMs, so the calibrated
/// model's projections and MLP must price what the tables measured. (Its norms and attention are candle's
/// unfused kernels, not vLLM's, and are not compared.)
#[test]
fn a_candle_gpu_profile_prices_the_gemms_the_h200_tables_measured() {
    let ops = |kind: &str, extra: &str, t: u32, names: &[&str]| -> f64 {
        let v = step_cost_json(&[
            "--prefill",
            &format!("{t}"),
            "--set",
            "hardware.name=\"h200\"",
            "--set",
            &format!("cost.kind=\"{kind}\""),
            "--set",
            extra,
        ]);
        names
            .iter()
            .map(|n| v["ops"][n].as_f64().unwrap_or(0.0))
            .sum()
    };
    for t in [1, 64, 512, 2048, 4096] {
        let candle = ops(
            "calibrated",
            "cost.profile=\"data/profiles/h200/candle/profile-llama-3.1-8b.toml\"",
            t,
            &["qkv_proj", "o_proj", "mlp_up", "mlp_down"],
        );
        let torch = ops(
            "table",
            "cost.table.dir=\"data/profiles/h200/llama-3.1-8b\"",
            t,
            &[
                "attn_pre_proj",
                "attn_post_proj",
                "mlp_up_proj",
                "mlp_down_proj",
            ],
        );
        // Measured when the profile was taken: ratios 1.035, 1.032, 1.014, 0.989, 0.982.
        let ratio = candle / torch;
        assert!((ratio - 1.0).abs() < 0.05, "{t} tokens: {ratio}");
    }
}

/// Without the `cuda` feature (the default build, and CI), `--device cuda` says how to get one; a device
/// that is not one is named. Neither leaves a profile behind.
#[test]
fn calibrating_on_a_gpu_without_the_cuda_build_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.toml");
    for (device, expect) in [
        ("cuda:1", "--features cuda"),
        ("tpu", "cpu, cuda or cuda:N"),
    ] {
        assert_cmd::Command::cargo_bin("servesim")
            .unwrap()
            .args(["calibrate", "--quick", "-q", "--device", device, "--out"])
            .arg(&out)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(expect));
        assert!(!out.exists());
    }
}
