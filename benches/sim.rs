//! Simulator speed and memory: fixed scenarios run through the release `servesim` binary, one process per
//! run, reporting wall time, simulated requests per wall-second, events and steps per second, and the
//! child's peak RSS. Run with `cargo bench --bench sim` (`SERVESIM_BENCH_REPEATS=N` to change the 5 repeats,
//! of which the long scenarios (d), (s300k), (a8), (a-sglang) and (a-noleap) take at most 3; `SERVESIM_BENCH_ONLY=a,b` to
//! pick scenarios). Nothing here asserts a time: the numbers are reported.
//!
//! `SERVESIM_BENCH_BIN=/path/to/servesim` measures that binary instead of the one `cargo bench` builds
//! (which carries the test-only `toys` kinds; see `main`).
//!
//! `SERVESIM_BENCH_BASELINE=/path/to/an/older/servesim` measures a before/after side by side: each repeat
//! runs the baseline and then this build, alternately, so that both see the same machine (a shared machine
//! drifts by tens of percent within an hour), and a second table gives both medians, their ratio, and
//! whether the two builds wrote the same bytes (requests.csv, summary.json, timeseries.csv).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Scenario {
    key: &'static str,
    what: &'static str,
    args: Vec<String>,
    repeats: usize,
}

fn chat(requests: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--set".into(),
        format!("workload.max_requests={requests}"),
        "--set".into(),
        "workload.duration_s=1e9".into(),
        "--set".into(),
        format!("workload.session_rate={RATE}"),
        "--set".into(),
        "output.timeseries_interval_s=10.0".into(),
    ];
    for e in extra {
        v.push("--set".into());
        v.push(e.to_string());
    }
    v
}

/// Sessions per second for the default-chat scenarios: about 80% of one replica's capacity. One H100 with
/// Llama-3.1-8B saturates near 3.46 requests/s on this workload (measured at 1.6 sessions/s, where its
/// queue grows without bound); 1.0 sessions/s offers 2.77 requests/s (2.77 turns per session). BENCHMARKS.md
/// has the sweep.
const RATE: f64 = 1.0;

/// Summary keys left out of the comparison between builds: `events` (a debug statistic that older
/// builds wrote into the summary), `engine` and `kv_cache` (added when the engine and KV store became
/// choices), `percentiles_exact` and `percentiles_relative_error` (added with the quantile sketch); the
/// values and order of every other key must agree, so they are removed in place.
const SUMMARY_KEYS_NOT_COMPARED: [&str; 5] = [
    "events",
    "engine",
    "kv_cache",
    "percentiles_exact",
    "percentiles_relative_error",
];

/// The output files compared between builds.
const COMPARED: [&str; 3] = ["requests.csv", "summary.json", "timeseries.csv"];

/// FNV-1a over each of a run's compared output files, to tell whether two builds wrote the same bytes.
/// Streamed through a small buffer: a child's peak RSS as `wait4` reports it starts from this process's
/// RSS when it forks, so reading a whole requests.csv here would inflate every later measurement. The
/// summary is small: it is hashed without the keys in `SUMMARY_KEYS_NOT_COMPARED`, so that builds from
/// before and after they moved compare.
fn digest(out: &Path) -> [u64; 3] {
    use std::io::Read;
    let mut buf = [0u8; 1 << 16];
    COMPARED.map(|f| {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        if f == "summary.json" {
            let text = std::fs::read_to_string(out.join(f)).unwrap_or_default();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                for k in SUMMARY_KEYS_NOT_COMPARED {
                    m.shift_remove(k);
                }
            }
            for b in v.to_string().bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
            return h;
        }
        if let Ok(mut file) = std::fs::File::open(out.join(f)) {
            while let Ok(n @ 1..) = file.read(&mut buf) {
                for &b in &buf[..n] {
                    h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        h
    })
}

/// Runs one scenario; returns (wall s, max RSS KiB, summary JSON with the run's event count added as
/// `events`, output digest).
fn run_once(bin: &str, args: &[String], out: &Path) -> (f64, u64, serde_json::Value, [u64; 3]) {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--out")
        .arg(out)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("servesim runs");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills a zeroed rusage.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "servesim failed"
    );
    let _ = child.try_wait();
    // The human summary (a few hundred bytes, within a pipe's buffer) ends "wrote DIR (N events, ...".
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut stdout)
        .expect("stdout");
    let events = stdout
        .rsplit_once(" events,")
        .and_then(|(head, _)| head.rsplit_once('(')?.1.parse::<u64>().ok())
        .expect("the run reports its event count");
    let summary = std::fs::read_to_string(out.join("summary.json")).expect("summary");
    let mut summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    summary["events"] = events.into();
    (wall, usage.ru_maxrss as u64, summary, digest(out))
}

/// "same bytes", or which files differed.
fn outputs_compared(same: &[bool; 3]) -> String {
    if same.iter().all(|&x| x) {
        return "same bytes".into();
    }
    let list = |want: bool| {
        COMPARED
            .iter()
            .zip(same)
            .filter(|(_, &s)| s == want)
            .map(|(f, _)| *f)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match list(true) {
        s if s.is_empty() => format!("{} DIFFER", list(false)),
        s => format!("{s} same; {} DIFFER", list(false)),
    }
}

/// The Mooncake-derived traces of the peer comparison (`../shared/peers/aisimulate/make_mc.py`, which
/// AISimulate replays): mc10k, the trace's first 10,000 rows; mc100k, the trace repeated, copy k shifted by
/// k x 3,600,000 ms and every hash id h != 0 replaced by h + k x (max id + 1), so that copies share only
/// the common first block, cut at 100,000 rows. Written under `dir`; returns their paths.
fn mooncake_derived(trace: &str, dir: &Path) -> (String, String) {
    use std::io::Write;
    // Rows kept as plain numbers and written as they are made: this process's memory shows in every
    // child's peak RSS (see `digest`).
    struct Row {
        timestamp: u64,
        input_length: u64,
        output_length: u64,
        hash_ids: Vec<u64>,
    }
    let text = std::fs::read_to_string(trace).expect("the shipped Mooncake trace");
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a trace row");
            let n = |k: &str| v[k].as_u64().expect("a number");
            Row {
                timestamp: n("timestamp"),
                input_length: n("input_length"),
                output_length: n("output_length"),
                hash_ids: v["hash_ids"]
                    .as_array()
                    .expect("hash_ids")
                    .iter()
                    .map(|h| h.as_u64().expect("an id"))
                    .collect(),
            }
        })
        .collect();
    drop(text);
    let off = rows
        .iter()
        .flat_map(|r| r.hash_ids.iter().copied())
        .max()
        .unwrap_or(0)
        + 1;
    std::fs::create_dir_all(dir).expect("bench dir");
    let write = |name: &str, count: usize| {
        let path = dir.join(name);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).expect("trace file"));
        for i in 0..count {
            let (k, r) = ((i / rows.len()) as u64, &rows[i % rows.len()]);
            let ids: Vec<String> = r
                .hash_ids
                .iter()
                .map(|&h| (if h == 0 { 0 } else { h + k * off }).to_string())
                .collect();
            writeln!(
                w,
                "{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": {}, \"hash_ids\": [{}]}}",
                r.timestamp + k * 3_600_000,
                r.input_length,
                r.output_length,
                ids.join(", ")
            )
            .expect("trace written");
        }
        w.flush().expect("trace written");
        path.display().to_string()
    };
    (write("mc10k.jsonl", 10_000), write("mc100k.jsonl", 100_000))
}

/// The peer comparison's servesim side (`../shared/peers/aisimulate/servesim_mc.toml`): the trace replayed
/// on `replicas` replicas of Llama-3.1-8B on one H100-SXM each, block 16, an 8,192-token budget, 256
/// sequences, prefix caching on, round robin.
fn mc(trace: &str, replicas: u32) -> Vec<String> {
    [
        "workload.kind=\"trace\"".to_string(),
        "workload.trace.format=\"mooncake\"".into(),
        format!("workload.trace.path=\"{trace}\""),
        "workload.trace.block_tokens=512".into(),
        "workload.duration_s=1e9".into(),
        "model.name=\"llama-3.1-8b\"".into(),
        "hardware.name=\"h100-sxm\"".into(),
        "engine.block_size=16".into(),
        "engine.max_num_batched_tokens=8192".into(),
        "engine.max_num_seqs=256".into(),
        "engine.prefix_caching=true".into(),
        "engine.gpu_memory_utilization=0.9".into(),
        format!("cluster.replicas={replicas}"),
        "cluster.router=\"round_robin\"".into(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_string(), kv])
    .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // The binary `cargo bench` builds carries the test-only `toys` kinds (the tests turn that feature on
    // through a dev-dependency, and benches share it), whose extra instantiations change inlining: a
    // few percent. `SERVESIM_BENCH_BIN` measures another binary, such as the plain `cargo build
    // --release` one users run.
    let own = env!("CARGO_BIN_EXE_servesim");
    let bin_var = std::env::var("SERVESIM_BENCH_BIN").ok();
    let bin = bin_var.as_deref().unwrap_or(own);
    let repeats: usize = std::env::var("SERVESIM_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("SERVESIM_BENCH_ONLY").ok();
    let baseline = std::env::var("SERVESIM_BENCH_BASELINE").ok();
    let mut side_by_side = Vec::new();
    let mooncake = "data/traces/mooncake/conversation_trace.jsonl";
    let tmp = std::env::temp_dir().join(format!("servesim-bench-{}", std::process::id()));
    let (mc10k, mc100k) = mooncake_derived(mooncake, &tmp.join("traces"));
    let scenarios = vec![
        Scenario {
            key: "a",
            what: "100k requests, default chat, 1 replica, cache on",
            args: chat(100_000, &[]),
            repeats,
        },
        Scenario {
            key: "b",
            what: "100k requests, default chat, 1 replica, cache off",
            args: chat(100_000, &["engine.prefix_caching=false"]),
            repeats,
        },
        Scenario {
            key: "c",
            what: "Mooncake conversation trace (12,031 requests)",
            args: vec![
                "--set".into(),
                "workload.kind=\"trace\"".into(),
                "--set".into(),
                format!("workload.trace.path=\"{mooncake}\""),
                // The embedded default's 300 s window would cut the hour-long trace.
                "--set".into(),
                "workload.duration_s=1e9".into(),
            ],
            repeats,
        },
        Scenario {
            key: "d",
            what: "1M requests, default chat, 1 replica, cache on",
            args: chat(1_000_000, &[]),
            // A median of three: one run of (d) moved by a tenth with the shared host's speed.
            repeats: repeats.min(3),
        },
        Scenario {
            key: "s10k",
            what: "scaling: 10k requests of (a)",
            args: chat(10_000, &[]),
            repeats,
        },
        Scenario {
            key: "s300k",
            what: "scaling: 300k requests of (a)",
            args: chat(300_000, &[]),
            repeats: repeats.min(3),
        },
        Scenario {
            key: "a8",
            what: "100k requests, default chat, 8 replicas at 8 sessions/s (round robin), cache on",
            args: chat(
                100_000,
                &["cluster.replicas=8", "workload.session_rate=8.0"],
            ),
            repeats: repeats.min(3),
        },
        Scenario {
            key: "a-sglang",
            what: "(a) on engine.kind = \"sglang\" (steps one by one)",
            args: chat(100_000, &["engine.kind=\"sglang\""]),
            repeats: repeats.min(3),
        },
        Scenario {
            key: "a-noleap",
            what: "(a) stepping one by one (--no-leap)",
            args: {
                let mut a = chat(100_000, &[]);
                a.push("--no-leap".into());
                a
            },
            repeats: repeats.min(3),
        },
        Scenario {
            key: "a8-1m",
            what: "(a8) at 1M requests",
            args: chat(
                1_000_000,
                &["cluster.replicas=8", "workload.session_rate=8.0"],
            ),
            repeats: repeats.min(3),
        },
        Scenario {
            key: "mc10k-1",
            what: "mc10k (the peer comparison's first 10k Mooncake rows), 1 replica",
            args: mc(&mc10k, 1),
            repeats,
        },
        Scenario {
            key: "mc10k-8",
            what: "mc10k, 8 replicas",
            args: mc(&mc10k, 8),
            repeats,
        },
        Scenario {
            key: "mc100k-1",
            what: "mc100k (the Mooncake trace repeated to 100k rows), 1 replica",
            args: mc(&mc100k, 1),
            repeats: repeats.min(3),
        },
        Scenario {
            key: "mc100k-8",
            what: "mc100k, 8 replicas",
            args: mc(&mc100k, 8),
            repeats: repeats.min(3),
        },
    ];
    println!("Measuring {bin}\n");
    println!(
        "| scenario | requests | wall s (median of n) | req/s | events/s | steps/s | peak RSS MB |\n|---|---|---|---|---|---|---|"
    );
    for s in scenarios {
        if let Some(o) = &only {
            if !o.split(',').any(|k| k == s.key) {
                continue;
            }
        }
        let mut walls = Vec::new();
        let mut rss = Vec::new();
        let mut last = serde_json::Value::Null;
        let mut base_walls = Vec::new();
        // Per compared file: the same bytes in every repeat.
        let mut same = [true; 3];
        for i in 0..s.repeats {
            let base_digest = baseline.as_ref().map(|b| {
                let out = tmp.join(format!("{}-{i}-baseline", s.key));
                let (w, _, _, d) = run_once(b, &s.args, &out);
                base_walls.push(w);
                let _ = std::fs::remove_dir_all(&out);
                d
            });
            let out = tmp.join(format!("{}-{i}", s.key));
            let (w, r, sum, d) = run_once(bin, &s.args, &out);
            walls.push(w);
            rss.push(r as f64);
            last = sum;
            if let Some(b) = base_digest {
                for (k, ok) in same.iter_mut().enumerate() {
                    *ok &= b[k] == d[k];
                }
            }
            let _ = std::fs::remove_dir_all(&out);
        }
        let wall = median(&mut walls);
        if baseline.is_some() {
            let base = median(&mut base_walls);
            side_by_side.push(format!(
                "| ({}) {} | {:.3} | {:.3} | {:.2}x | {} |",
                s.key,
                s.what,
                base,
                wall,
                base / wall,
                outputs_compared(&same)
            ));
        }
        let rss_mb = median(&mut rss) / 1024.0;
        let f = |k: &str| last[k].as_f64().unwrap_or(0.0);
        let reqs = f("requests");
        println!(
            "| ({}) {} | {:.0} | {:.3} (n={}) | {:.0} | {:.0} | {:.0} | {:.1} |",
            s.key,
            s.what,
            reqs,
            wall,
            s.repeats,
            reqs / wall,
            f("events") / wall,
            f("steps") / wall,
            rss_mb
        );
    }
    if let Some(b) = &baseline {
        println!("\nSide by side with {b} (alternating runs, medians of wall seconds):\n");
        println!("| scenario | baseline | this build | ratio | outputs |\n|---|---|---|---|---|");
        for row in side_by_side {
            println!("{row}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
