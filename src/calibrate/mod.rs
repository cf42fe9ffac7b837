//! `servesim calibrate`: times the operators the cost model uses with candle on this machine, fits the
//! calibrated cost model, and writes a profile with the raw timings and the fit's held-out error.
//!
//! Measured with warm-up runs, then repeats; the median is fitted. Every fourth point of each operator (in
//! measurement order) is held out of the fit and used only to report the error, so the reported error is
//! the error on shapes the fit did not see.

pub mod forward;

use crate::cost::calibrated::{
    fit_relative_nonneg, fit_weighted_nonneg, residual_features, Fit, FitError, Host, HostHardware,
    LinearSegment, LogCurve, Profile, RawTiming,
};
use crate::cost::catalog::ModelShape;
use crate::error::{ConfigError, Error, OutputError};
use crate::metrics::output::write_file_atomically;
use crate::metrics::stats::percentile;
use candle_core::{DType, Device, Tensor, D};
use std::path::PathBuf;
use std::time::Instant;

/// What to calibrate.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Catalog name or config.json path.
    pub model: String,
    /// Divide the model's widths by this (1 = full size).
    pub scale: u32,
    /// A small grid that runs in well under a minute.
    pub quick: bool,
    pub threads: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub repeats: usize,
    pub out: PathBuf,
    pub progress: bool,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

type CErr = candle_core::Error;

/// Opens `cpu`, `cuda` or `cuda:N`. CUDA needs a build with the `cuda` feature (candle's CUDA backend,
/// compiled with nvcc); without it the error says how to build one.
pub fn open_device(spec: &str) -> Result<Device, ConfigError> {
    let gpu = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(ConfigError::invalid(
                    "--device",
                    format!(
                        "\"{}\" is not a device; use cpu, cuda or cuda:N",
                        crate::input::shorten(s, 40)
                    ),
                ))
            }
        },
    };
    open_cuda(gpu)
}

#[cfg(feature = "cuda")]
fn open_cuda(gpu: usize) -> Result<Device, ConfigError> {
    Device::new_cuda(gpu).map_err(|e| {
        ConfigError::invalid(
            "--device",
            format!(
                "CUDA device {gpu} could not be opened ({e}); check nvidia-smi, CUDA_VISIBLE_DEVICES, and \
                 that libcuda, libcublas, libcublasLt, libcurand and libnvrtc are on LD_LIBRARY_PATH"
            ),
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(gpu: usize) -> Result<Device, ConfigError> {
    Err(ConfigError::invalid(
        "--device",
        format!(
            "cuda:{gpu} needs a servesim built with CUDA: `cargo build --release --features cuda` with nvcc \
             on PATH (README, \"Calibration on a GPU\")"
        ),
    ))
}

/// Times `f` on `dev`: `warmup` unmeasured runs, then `repeats` measured; returns (median, min) seconds.
/// A GPU runs kernels asynchronously, so there each measurement is [`GPU_BURST`] calls back to back and
/// one wait for the device, divided by the calls: the time per call as an engine issuing kernels
/// eagerly sees it, without a host round trip per kernel.
fn time<F: FnMut() -> Result<(), CErr>>(
    dev: &Device,
    mut f: F,
    warmup: usize,
    repeats: usize,
) -> Result<(f64, f64), CErr> {
    let burst = if dev.is_cpu() { 1 } else { GPU_BURST };
    for _ in 0..warmup.max(1) * burst {
        f()?;
    }
    dev.synchronize()?;
    let mut v = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        for _ in 0..burst {
            f()?;
        }
        dev.synchronize()?;
        v.push(t.elapsed().as_secs_f64() / burst as f64);
    }
    v.sort_by(f64::total_cmp);
    Ok((percentile(&v, 50.0).unwrap_or(0.0), v[0]))
}

/// Calls per measurement on a GPU (see [`time`]).
const GPU_BURST: usize = 10;

/// The GPU's name and memory as `nvidia-smi` reports them, for the profile's hardware entry.
fn gpu_facts(device: &str) -> Option<(String, f64)> {
    let index = device.strip_prefix("cuda:").unwrap_or("0");
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            index,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (name, mib) = text.trim().split_once(',')?;
    Some((
        name.trim().to_string(),
        mib.trim().parse::<f64>().ok()? / 1024.0,
    ))
}

/// Normal random values of `shape`: f32 on the CPU, bf16 on a GPU (what GPUs serve in).
fn randn(shape: &[usize], dev: &Device) -> Result<Tensor, CErr> {
    Tensor::randn(0f32, 1f32, shape, dev)?.to_dtype(dtype_on(dev))
}

/// Bytes of distinct operands a timed operator cycles through: several times a server CPU's last-level
/// cache (32 MiB here) and a GPU's L2, so each call reads its operand from memory, as a forward pass
/// does (every layer's weights and every sequence's KV cache are its own). Timing one operand again and
/// again measures a hot cache instead: a T = 1 projection then ran 3x faster than in a real step.
const COLD_BYTES: usize = 96 << 20;

/// `make()` called often enough that the results together pass [`COLD_BYTES`] (at least once, at most
/// 1,024 times), each `bytes` large.
fn cold_copies<T>(bytes: usize, mut make: impl FnMut() -> Result<T, CErr>) -> Result<Vec<T>, CErr> {
    let n = (COLD_BYTES / bytes.max(1)).clamp(1, 1024);
    (0..n).map(|_| make()).collect()
}

fn dtype_on(dev: &Device) -> DType {
    if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// Softmax over the last dimension (max-subtracted), as an attention kernel does it.
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor, CErr> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// The additive causal mask of a chunk of `qn` queries that end a context of `c` keys, repeated for `g`
/// query heads per KV head: 0 where a query may attend, -inf after its own position.
pub(crate) fn causal_mask(qn: usize, c: usize, g: usize, dev: &Device) -> Result<Tensor, CErr> {
    let mask: Vec<f32> = (0..qn)
        .flat_map(|r| {
            (0..c).map(move |col| {
                if col <= c - qn + r {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (qn, c), dev)?
        .to_dtype(dtype_on(dev))?
        .repeat((g, 1))
}

/// RMSNorm over the last dimension.
pub(crate) fn rmsnorm(x: &Tensor, w: &Tensor) -> Result<Tensor, CErr> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + 1e-5)?.sqrt()?)?.broadcast_mul(w)
}

struct Plan {
    tokens: Vec<usize>,
    decode: Vec<(usize, usize)>,
    prefill: Vec<(usize, usize)>,
    elementwise: Vec<usize>,
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            tokens: vec![
                1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
            ],
            decode: vec![
                (1, 128),
                (1, 512),
                (1, 2048),
                (2, 256),
                (4, 128),
                (4, 512),
                (4, 2048),
                (8, 256),
                (8, 1024),
                (16, 128),
                (16, 512),
                (32, 256),
            ],
            prefill: vec![
                (16, 16),
                (32, 32),
                (64, 64),
                (128, 128),
                (32, 256),
                (128, 512),
                (256, 256),
                (64, 320),
                (512, 512),
                (256, 1024),
                (96, 96),
                (384, 384),
            ],
            elementwise: vec![1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        }
    } else {
        Plan {
            tokens: vec![
                1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                1536, 2048,
            ],
            decode: vec![
                (1, 256),
                (1, 1024),
                (1, 4096),
                (4, 256),
                (4, 1024),
                (8, 512),
                (8, 2048),
                (16, 256),
                (16, 1024),
                (32, 512),
                (32, 2048),
                (64, 1024),
            ],
            prefill: vec![
                (64, 64),
                (128, 128),
                (256, 256),
                (512, 512),
                (256, 1024),
                (128, 2048),
                (1024, 1024),
                (512, 2048),
                (2048, 2048),
                (64, 4096),
            ],
            elementwise: vec![1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        }
    }
}

/// Runs the calibration and writes the profile.
pub fn calibrate(o: &CalibrateOptions) -> Result<Profile, Error> {
    let started = Instant::now();
    let full = ModelShape::load(&o.model)?;
    if !full.is_dense_full_attention() {
        return Err(ConfigError::invalid(
            "--model",
            format!(
                "calibration times dense, full-attention, unquantized layers, and {} has {}; calibrate a \
                 dense model, or price this one with cost.kind = \"roofline\"",
                full.name,
                full.features()
            ),
        )
        .into());
    }
    let m = full.scaled(o.scale, "--scale")?;
    let threads = o
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Before the first candle call: unset, every matmul re-reads /proc/cpuinfo (tens of microseconds).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let repeats = o.repeats.max(1);
    let p = plan(o.quick);
    let dev = open_device(&o.device)?;
    let (h, q, kv, i, v) = (
        m.hidden_size as usize,
        m.q_dim() as usize,
        m.kv_dim() as usize,
        m.intermediate_size as usize,
        m.vocab_size as usize,
    );
    let (heads, kvh, hd) = (
        m.num_heads as usize,
        m.num_kv_heads as usize,
        m.head_dim as usize,
    );
    let linears = [
        ("qkv", h, q + 2 * kv),
        ("o", q, h),
        ("mlp_up", h, 2 * i),
        ("mlp_down", i, h),
        ("lm_head", h, v),
    ];
    let total =
        linears.len() * p.tokens.len() + p.decode.len() + p.prefill.len() + 3 * p.elementwise.len();
    let bar = if o.progress {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "calibrating {bar:40} {pos}/{len} {msg} [{elapsed}]",
        )
        .expect("static template"),
    );
    let mut raw: Vec<RawTiming> = Vec::new();
    let push =
        |raw: &mut Vec<RawTiming>, op: &str, features: Vec<f64>, shape: String, t: (f64, f64)| {
            raw.push(RawTiming {
                op: op.into(),
                features,
                shape,
                median_s: t.0,
                min_s: t.1,
                held_out: false,
            });
        };
    // Linear layers, W stored [out, in] (the candle_nn::Linear layout).
    for (name, inp, out) in linears {
        bar.set_message(name.to_string());
        let w = randn(&[out, inp], &dev).map_err(cerr)?;
        let ws =
            cold_copies(out * inp * w.dtype().size_in_bytes(), || w.copy()?.t()).map_err(cerr)?;
        let mut next = 0;
        for &t in &p.tokens {
            let x = randn(&[t, inp], &dev).map_err(cerr)?;
            let timing = time(
                &dev,
                || {
                    next += 1;
                    x.matmul(&ws[next % ws.len()]).map(drop)
                },
                1,
                repeats,
            )
            .map_err(cerr)?;
            let e = (inp * out) as f64;
            push(
                &mut raw,
                "linear",
                vec![e, t as f64],
                format!("{name} {t}x{inp} . [{out},{inp}]^T"),
                timing,
            );
            bar.inc(1);
        }
    }
    // Attention as a step executes it (`forward::attend`, one sequence at a time over its own KV cache:
    // the new keys and values written in, then the queries over the context), so the fit's per-sequence
    // and per-chunk terms carry what each sequence costs beyond its arithmetic.
    // Decode: `b` sequences of one query each at context `c`.
    bar.set_message("attn_decode");
    let g = heads / kvh;
    let cache = |c: usize| -> Result<(Tensor, Tensor), CErr> {
        Ok((
            Tensor::ones((kvh, c, hd), dtype_on(&dev), &dev)?,
            Tensor::ones((kvh, c, hd), dtype_on(&dev), &dev)?,
        ))
    };
    let kv_bytes = |c: usize| 2 * kvh * c * hd * dtype_on(&dev).size_in_bytes();
    let mut next = 0;
    for &(b, c) in &p.decode {
        let part = randn(&[b, q + 2 * kv], &dev).map_err(cerr)?;
        let sets = cold_copies(b * kv_bytes(c), || {
            (0..b).map(|_| cache(c)).collect::<Result<Vec<_>, _>>()
        })
        .map_err(cerr)?;
        let timing = time(
            &dev,
            || {
                next += 1;
                let outs = sets[next % sets.len()]
                    .iter()
                    .enumerate()
                    .map(|(i, (kc, vc))| {
                        forward::attend(&m, &part.narrow(0, i, 1)?, kc, vc, c, None)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::cat(&outs, 0).map(drop)
            },
            1,
            repeats,
        )
        .map_err(cerr)?;
        push(
            &mut raw,
            "attn_decode",
            vec![b as f64, (b * c) as f64 * q as f64],
            format!("batch {b} context {c}"),
            timing,
        );
        bar.inc(1);
    }
    // Prefill: a chunk of `qn` queries ending a context of `c` keys, with its causal mask (made before
    // the clock starts, as the executor makes it).
    bar.set_message("attn_prefill");
    for &(qn, c) in &p.prefill {
        let part = randn(&[qn, q + 2 * kv], &dev).map_err(cerr)?;
        let caches = cold_copies(kv_bytes(c), || cache(c)).map_err(cerr)?;
        let mask = causal_mask(qn, c, g, &dev)
            .and_then(|t| t.to_dtype(dtype_on(&dev)))
            .map_err(cerr)?;
        let timing = time(
            &dev,
            || {
                next += 1;
                let (kc, vc) = &caches[next % caches.len()];
                let o = forward::attend(&m, &part, kc, vc, c, Some(&mask))?;
                Tensor::cat(&[o], 0).map(drop)
            },
            1,
            repeats,
        )
        .map_err(cerr)?;
        let rect = (qn * c) as f64;
        push(
            &mut raw,
            "attn_prefill",
            vec![rect * q as f64],
            format!("chunk {qn} context {c}"),
            timing,
        );
        bar.inc(1);
    }
    // Element-wise operators.
    bar.set_message("elementwise");
    let wn = Tensor::ones(h, dtype_on(&dev), &dev).map_err(cerr)?;
    for &t in &p.elementwise {
        let x = randn(&[t, h], &dev).map_err(cerr)?;
        let y = randn(&[t, h], &dev).map_err(cerr)?;
        let timing = time(&dev, || rmsnorm(&x, &wn).map(drop), 1, repeats).map_err(cerr)?;
        push(
            &mut raw,
            "rmsnorm",
            vec![(t * h) as f64],
            format!("{t}x{h}"),
            timing,
        );
        let timing = time(&dev, || (&x + &y).map(drop), 1, repeats).map_err(cerr)?;
        push(
            &mut raw,
            "add",
            vec![(t * h) as f64],
            format!("{t}x{h}"),
            timing,
        );
        let up = randn(&[t, 2 * i], &dev).map_err(cerr)?;
        let timing = time(&dev, || forward::gated(&up, i).map(drop), 1, repeats).map_err(cerr)?;
        push(
            &mut raw,
            "silu_mul",
            vec![(t * i) as f64],
            format!("{t}x{i}"),
            timing,
        );
        bar.inc(3);
    }
    bar.finish_and_clear();
    let mut profile = fit_profile(raw, &full, o, threads, started.elapsed().as_secs_f64())?;
    if dev.is_cpu() && m.weight_bytes() <= MAX_STEP_WEIGHT_BYTES {
        fit_step_residual(&mut profile, &m, o.quick, repeats)?;
        profile.host.seconds = started.elapsed().as_secs_f64();
    }
    let text = toml::to_string(&profile).expect("a profile serialises");
    if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let header = format!(
        "# servesim calibration profile: {} (scale 1/{}) on {} ({}) with {} thread(s), candle {}.\n\
         # Held-out relative error: median {:.1}%, max {:.1}%. Use with cost.kind = \"calibrated\", cost.profile = <this file>.\n\n",
        full.name,
        o.scale,
        profile.host.device,
        profile.host.cpu,
        threads,
        profile.host.candle_version,
        100.0 * profile.median_rel_error,
        100.0 * profile.max_rel_error
    );
    write_file_atomically(&o.out, |tmp| {
        std::fs::write(tmp, header + &text).map_err(|source| OutputError::Io {
            path: o.out.clone(),
            source,
        })
    })?;
    Ok(profile)
}

fn cerr(e: CErr) -> Error {
    ConfigError::invalid("calibrate", format!("candle failed: {e}")).into()
}

/// Largest weights (bytes, f32) whose whole steps calibration executes for the step residual; a larger
/// shape's profile has none (`--scale` makes one that fits).
const MAX_STEP_WEIGHT_BYTES: u64 = 2 << 30;

/// Times whole steps through the executor `validate` uses, in rounds, and fits what their operators,
/// timed alone, miss ([`Profile::step_residual`]): by least squares on the remainder, each step weighted by
/// 1 / its time squared (relative errors), coefficients kept >= 0. The steps are recorded in `raw` as
/// op `step` (features [`residual_features`]).
fn fit_step_residual(
    profile: &mut Profile,
    m: &ModelShape,
    quick: bool,
    repeats: usize,
) -> Result<(), Error> {
    let (ctx, chunks) = if quick {
        (64, [16, 32, 48, 64, 96])
    } else {
        (256, [32, 64, 96, 160, 256])
    };
    let mut steps: Vec<forward::Step> = [1, 2, 4, 8]
        .into_iter()
        .map(|n| forward::Step {
            prefill: vec![],
            decode: vec![ctx; n],
        })
        .collect();
    steps.extend(chunks.into_iter().map(|c| forward::Step {
        prefill: vec![(c, c)],
        decode: vec![],
    }));
    steps.push(forward::Step {
        prefill: vec![(chunks[1], chunks[1])],
        decode: vec![ctx; 2],
    });
    let stack = forward::Stack::new(m).map_err(cerr)?;
    use crate::cost::CostModel as _;
    let cost = crate::cost::calibrated::CalibratedCost {
        profile: profile.clone(),
        model: m.clone(),
    };
    // Timed in rounds, each step once a round after a different one, as steps follow each other in a
    // run: a step repeated back to back can keep its working set in cache, which no step of a schedule
    // does.
    let prepared = steps
        .iter()
        .map(|s| stack.prepare(s))
        .collect::<Result<Vec<_>, CErr>>()
        .map_err(cerr)?;
    let mut timings = vec![Vec::new(); steps.len()];
    for round in 0..=repeats {
        for ((rows, caches), t) in prepared.iter().zip(&mut timings) {
            let s = stack.execute(rows, caches).map_err(cerr)?;
            // The first round warms up.
            if round > 0 {
                t.push(s);
            }
        }
    }
    let mut rows = Vec::new();
    for (step, mut t) in steps.iter().zip(timings) {
        t.sort_by(f64::total_cmp);
        let measured = percentile(&t, 50.0).unwrap_or(0.0);
        let shape = step.shape();
        let modeled = cost.step_time(&shape).as_secs_f64();
        let features = residual_features(m, &shape.sums).to_vec();
        rows.push((
            features.clone(),
            measured - modeled,
            1.0 / (measured * measured),
        ));
        profile.raw.push(RawTiming {
            op: "step".into(),
            features,
            shape: format!(
                "prefill {:?} + decode {} x ctx {ctx}",
                step.prefill,
                step.decode.len()
            ),
            median_s: measured,
            min_s: t[0],
            held_out: false,
        });
    }
    profile.step_residual = fit_weighted_nonneg(&rows).unwrap_or_default();
    Ok(())
}

const ELEMENTWISE: [&str; 3] = ["rmsnorm", "add", "silu_mul"];

/// Linear-model token ranges: T = 1 apart (gemv), then these lower bounds.
const SEGMENTS: [u64; 6] = [2, 3, 8, 32, 128, 512];

fn fit_profile(
    raw: Vec<RawTiming>,
    full: &ModelShape,
    o: &CalibrateOptions,
    threads: usize,
    seconds: f64,
) -> Result<Profile, Error> {
    let bad = |op: &str| -> Error {
        ConfigError::invalid(
            "calibrate",
            format!("the {op} fit is singular: too few distinct points; run without --quick"),
        )
        .into()
    };
    // Each group: (name, selector, feature map with the constant first).
    type Sel = Box<dyn Fn(&RawTiming) -> bool>;
    type Feat = Box<dyn Fn(&RawTiming) -> Vec<f64>>;
    let mut groups: Vec<(String, Sel, Feat)> = vec![(
        "linear T=1".into(),
        Box::new(|r: &RawTiming| r.op == "linear" && r.features[1] < 1.5),
        Box::new(|r: &RawTiming| vec![1.0, r.features[0]]),
    )];
    for (k, &lo) in SEGMENTS.iter().enumerate() {
        let hi = SEGMENTS.get(k + 1).copied().unwrap_or(u64::MAX) as f64;
        groups.push((
            if hi == (lo + 1) as f64 {
                format!("linear T={lo}")
            } else {
                format!("linear T>={lo}")
            },
            Box::new(move |r: &RawTiming| {
                r.op == "linear" && r.features[1] >= lo as f64 && r.features[1] < hi
            }),
            Box::new(|r: &RawTiming| vec![1.0, r.features[0], r.features[0] * r.features[1]]),
        ));
    }
    for op in ["attn_decode", "attn_prefill", "rmsnorm", "add", "silu_mul"] {
        groups.push((
            op.into(),
            Box::new(move |r: &RawTiming| r.op == op),
            Box::new(|r: &RawTiming| {
                let mut f = vec![1.0];
                f.extend(&r.features);
                f
            }),
        ));
    }
    // Hold out every fourth point of each group, in measurement order.
    let mut raw = raw;
    for (_, sel, _) in &groups {
        for (k, r) in raw.iter_mut().filter(|r| sel(r)).enumerate() {
            r.held_out = k % 4 == 3;
        }
    }
    let mut fits = Vec::new();
    let mut curves = Vec::new();
    let mut errors = Vec::new();
    let mut all_err = Vec::new();
    for (name, sel, feat) in &groups {
        let pts: Vec<&RawTiming> = raw.iter().filter(|r| sel(r)).collect();
        let train: Vec<(Vec<f64>, f64)> = pts
            .iter()
            .filter(|r| !r.held_out)
            .map(|r| (feat(r), r.median_s))
            .collect();
        // Element-wise kernels: a measured curve; everything else: a non-negative linear fit.
        let predict: Box<dyn Fn(&RawTiming) -> f64> = if ELEMENTWISE.contains(&name.as_str()) {
            let c = LogCurve::from_points(train.iter().map(|(x, y)| (x[1], *y)).collect())
                .ok_or_else(|| bad(name))?;
            curves.push(c.clone());
            Box::new(move |r: &RawTiming| c.eval(r.features[0]))
        } else {
            let fit = fit_relative_nonneg(&train).ok_or_else(|| bad(name))?;
            fits.push(fit.clone());
            Box::new(move |r: &RawTiming| fit.eval(&feat(r)))
        };
        let errs: Vec<f64> = pts
            .iter()
            .filter(|r| r.held_out)
            .map(|r| (predict(r) / r.median_s - 1.0).abs())
            .collect();
        let mut sorted = errs.clone();
        sorted.sort_by(f64::total_cmp);
        errors.push(FitError {
            op: name.clone(),
            fitted_points: train.len(),
            held_out_points: errs.len(),
            median_rel_error: percentile(&sorted, 50.0).unwrap_or(0.0),
            max_rel_error: sorted.last().copied().unwrap_or(0.0),
        });
        all_err.extend(errs);
    }
    all_err.sort_by(f64::total_cmp);
    let mut it = fits.into_iter();
    let gemv = it.next().expect("group");
    let linear = SEGMENTS
        .iter()
        .map(|&t_min| LinearSegment {
            t_min,
            fit: it.next().expect("group"),
        })
        .collect();
    let mut next = || -> Fit { it.next().expect("group") };
    let attn_decode = next();
    let attn_prefill = next();
    let mut c = curves.into_iter();
    let (rmsnorm, add, silu_mul) = (
        c.next().expect("group"),
        c.next().expect("group"),
        c.next().expect("group"),
    );
    // The host as a hardware entry: best GEMM FLOP/s (T >= 128) and best T = 1 streaming rate.
    let gemm = raw
        .iter()
        .filter(|r| r.op == "linear" && r.features[1] >= 128.0)
        .map(|r| 2.0 * r.features[0] * r.features[1] / r.median_s)
        .fold(0.0, f64::max);
    let on_gpu = o.device != "cpu";
    // The T = 1 products stream their weights: f32 on the CPU, bf16 on a GPU.
    let weight_bytes = if on_gpu { 2.0 } else { 4.0 };
    let stream = raw
        .iter()
        .filter(|r| r.op == "linear" && r.features[1] < 1.5)
        .map(|r| weight_bytes * r.features[0] / r.median_s)
        .fold(0.0, f64::max);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let (device_name, memory_gib) = if on_gpu {
        let (name, gib) = gpu_facts(&o.device).unwrap_or_else(|| (o.device.clone(), 0.0));
        (format!("{name} ({}, bf16 via candle)", o.device), gib)
    } else {
        (
            format!("{} ({threads} threads, f32 via candle)", cpu_model()),
            mem_gib,
        )
    };
    let hardware = HostHardware {
        device_name,
        peak_bf16_tflops: gemm / 1e12,
        memory_bandwidth_gbps: stream / 1e9,
        memory_gib,
    };
    Ok(Profile {
        hardware,
        host: Host {
            cpu: cpu_model(),
            device: o.device.clone(),
            threads,
            candle_version: env!("SERVESIM_CANDLE_VERSION").into(),
            servesim_version: env!("CARGO_PKG_VERSION").into(),
            calibrated_model: full.name.clone(),
            scale: o.scale,
            repeats: o.repeats,
            seconds,
        },
        gemv,
        linear,
        attn_decode,
        attn_prefill,
        rmsnorm,
        silu_mul,
        add,
        step_residual: Fit::default(),
        errors,
        median_rel_error: percentile(&all_err, 50.0).unwrap_or(0.0),
        max_rel_error: all_err.last().copied().unwrap_or(0.0),
        raw,
    })
}
