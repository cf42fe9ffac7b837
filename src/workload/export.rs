//! Export a generated workload as a native trace, and summary statistics of any trace.

use super::conversation::{ConversationGenerator, Release};
use super::trace::{nominal_arrivals, reuse_ratio, Trace, TraceRecord};
use super::Workload;
use crate::config::Config;
use crate::metrics::stats::percentile;
use crate::rng::RngStreams;
use std::fmt;

/// Every request the conversational workload of `cfg` releases, as trace records, without simulating: each
/// turn's output is what the engine will generate (the true length, capped by `max_tokens`), so the prompts
/// built from it are exactly the ones a run builds. Replaying the result closed loop reproduces the run.
pub fn generate_records(cfg: &Config, max_model_len: u32) -> Vec<TraceRecord> {
    let mut g = ConversationGenerator::new(&cfg.workload, RngStreams::new(cfg.seed), max_model_len);
    let mut out = Vec::new();
    while let Some((id, start)) = g.next_session_start() {
        let mut rel = g.start_session(id, start);
        let mut now = start;
        let mut gap = None;
        while let Some(r) = rel {
            let (nr, rejected) = match r {
                Release::Request(nr) => (nr, false),
                Release::Rejected(nr) => (nr, true),
                Release::Failed(_) => unreachable!("the generator records no failures"),
            };
            let q = &nr.request;
            out.push(TraceRecord {
                session: q.session,
                turn: q.turn,
                arrival_s: (q.turn == 1).then(|| start.as_secs_f64()),
                gap_s: gap,
                priority: q.priority,
                prompt: q.prompt.clone(),
                response_content: q.output_content,
                output_tokens: nr.true_output_tokens,
                max_tokens: q.max_tokens,
                line: out.len() + 2,
                failed: false,
            });
            if rejected {
                break;
            }
            let generated = nr.true_output_tokens.min(q.max_tokens);
            rel = match g.on_turn_complete(id, generated, now).at() {
                Some(t) => {
                    gap = Some(t.since(now).as_secs_f64());
                    now = t;
                    g.release_turn(id, t)
                }
                None => None,
            };
        }
    }
    out
}

/// What a planner checks first about a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadStats {
    pub requests: usize,
    /// Sessions with at least one request to run.
    pub sessions: usize,
    /// Sessions whose every row is a recorded failure (a run counts them among its `sessions`).
    pub failed_only_sessions: usize,
    pub turns_mean: f64,
    pub turns_max: u32,
    /// Recorded failures (kept in a replay as `failed` rows, not run); not in the other counts.
    pub failed_rows: u64,
    pub span_s: f64,
    pub rate_rps: f64,
    /// (mean, p50, p90, p99, max)
    pub input: [f64; 5],
    pub output: [f64; 5],
    pub reuse_ratio: f64,
    pub content: String,
}

fn five(mut v: Vec<f64>) -> [f64; 5] {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let p = |q| percentile(&v, q).unwrap_or(0.0);
    [
        mean,
        p(50.0),
        p(90.0),
        p(99.0),
        v.last().copied().unwrap_or(0.0),
    ]
}

pub fn stats(trace: &Trace, block_size: u32) -> WorkloadStats {
    // Recorded failures are counted apart: everything else describes the requests the engine would run.
    let nominal_all = nominal_arrivals(&trace.records);
    let (r, nominal): (Vec<&TraceRecord>, Vec<f64>) = trace
        .records
        .iter()
        .zip(nominal_all)
        .filter(|(x, _)| !x.failed)
        .unzip();
    let lo = nominal.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = nominal.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if r.is_empty() { 0.0 } else { hi - lo };
    let mut turns: std::collections::HashMap<u64, u32> = Default::default();
    for x in &r {
        *turns.entry(x.session).or_default() += 1;
    }
    let failed_only_sessions = trace
        .records
        .iter()
        .filter(|x| x.failed && !turns.contains_key(&x.session))
        .map(|x| x.session)
        .collect::<std::collections::HashSet<u64>>()
        .len();
    WorkloadStats {
        requests: r.len(),
        sessions: turns.len(),
        failed_only_sessions,
        turns_mean: r.len() as f64 / turns.len().max(1) as f64,
        turns_max: turns.values().copied().max().unwrap_or(0),
        failed_rows: trace.failed_rows,
        span_s: span,
        rate_rps: if span > 0.0 {
            (r.len() - 1) as f64 / span
        } else {
            0.0
        },
        input: five(r.iter().map(|x| x.input_tokens() as f64).collect()),
        output: five(r.iter().map(|x| x.output_tokens as f64).collect()),
        reuse_ratio: reuse_ratio(&trace.records, block_size),
        content: trace.content.clone(),
    }
}

impl fmt::Display for WorkloadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "requests        {}", self.requests)?;
        if self.failed_rows > 0 {
            write!(
                f,
                " (and {} recorded failures, replayed as `failed` rows, not run)",
                self.failed_rows
            )?;
        }
        writeln!(f)?;
        write!(
            f,
            "sessions        {} (turns per session: mean {:.2}, max {})",
            self.sessions, self.turns_mean, self.turns_max
        )?;
        if self.failed_only_sessions > 0 {
            write!(
                f,
                " and {} of recorded failures only",
                self.failed_only_sessions
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "span            {:.1} s (nominal arrivals), rate {:.3} req/s",
            self.span_s, self.rate_rps
        )?;
        for (name, v) in [("input tokens", self.input), ("output tokens", self.output)] {
            writeln!(
                f,
                "{name:<15} mean {:.1}, p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}",
                v[0], v[1], v[2], v[3], v[4]
            )?;
        }
        writeln!(
            f,
            "prefix reuse    {:.2}% of prompt tokens with an infinite cache (16-token blocks, vLLM lookup rule)",
            100.0 * self.reuse_ratio
        )?;
        writeln!(f, "content         {}", self.content)
    }
}
