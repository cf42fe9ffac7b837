//! Request timelines rebuilt from a recorded step schedule and a duration per step: the same schedule
//! (which requests each step computes, in order), other durations (measured ones). Pure arithmetic, so the
//! rebuild is checked against the simulator's own timeline when given the predicted durations.

use crate::replica::StepRecord;
use crate::request::RequestId;
use std::collections::BTreeMap;

/// Each step's (start, end), seconds, when step k takes `durations[k]`. A step that followed the previous
/// one back to back in the simulation starts when the previous one ends; one that started after an idle
/// gap (at an arrival or a wake-up) starts at that same time, or when the previous step ends if that is
/// later. Either way no step starts before the arrival of a request it computes (`arrival`, seconds): one
/// that arrived while the previous step ran joins when that step ends, however short it measured.
pub fn step_times(
    steps: &[StepRecord],
    durations: &[f64],
    arrival: impl Fn(RequestId) -> f64,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(steps.len());
    let mut prev_end_ns: Option<u64> = None;
    let mut prev_end = f64::NEG_INFINITY;
    for (s, &d) in steps.iter().zip(durations) {
        let predicted = s.start.0 as f64 * 1e-9;
        let start = match prev_end_ns {
            Some(e) if s.start.0 <= e => prev_end,
            _ => predicted.max(prev_end),
        };
        let start = s
            .rows
            .iter()
            .map(|r| arrival(r.request))
            .fold(start, f64::max);
        out.push((start, start + d));
        prev_end_ns = Some(s.start.0 + s.duration.0);
        prev_end = start + d;
    }
    out
}

/// A request's first token and its last, seconds: the ends of the first and the last steps that sample
/// for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tokens {
    pub first: f64,
    pub last: f64,
}

/// Every request's [`Tokens`] under `times` ([`step_times`]).
pub fn request_tokens(steps: &[StepRecord], times: &[(f64, f64)]) -> BTreeMap<RequestId, Tokens> {
    let mut out: BTreeMap<RequestId, Tokens> = BTreeMap::new();
    for (s, &(_, end)) in steps.iter().zip(times) {
        for r in s.rows.iter().filter(|r| r.samples) {
            out.entry(r.request)
                .and_modify(|t| t.last = end)
                .or_insert(Tokens {
                    first: end,
                    last: end,
                });
        }
    }
    out
}

/// What kind of work a step did: only decodes, only prefill chunks, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StepKind {
    Decode,
    Prefill,
    Mixed,
}

impl StepKind {
    pub fn of(s: &StepRecord) -> StepKind {
        let decodes = s.rows.iter().filter(|r| r.decode).count();
        match (decodes, s.rows.len() - decodes) {
            (_, 0) => StepKind::Decode,
            (0, _) => StepKind::Prefill,
            _ => StepKind::Mixed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StepKind::Decode => "decode",
            StepKind::Prefill => "prefill",
            StepKind::Mixed => "mixed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::StepRow;
    use crate::time::{SimDuration, SimTime};

    fn step(start_ms: u64, dur_ms: u64, rows: &[(u64, bool, bool)]) -> StepRecord {
        StepRecord {
            start: SimTime(start_ms * 1_000_000),
            duration: SimDuration(dur_ms * 1_000_000),
            rows: rows
                .iter()
                .map(|&(request, decode, samples)| StepRow {
                    request,
                    tokens: if decode { 1 } else { 8 },
                    context: 8,
                    decode,
                    samples,
                })
                .collect(),
            preempted: vec![],
        }
    }

    fn close(got: &[(f64, f64)], want: &[(f64, f64)]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g.0 - w.0).abs() < 1e-12 && (g.1 - w.1).abs() < 1e-12,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn measured_durations_shift_back_to_back_steps_and_keep_idle_starts() {
        // Simulated: steps at 0-10, 10-20 (back to back), then idle until an arrival at 50: 50-60.
        let steps = [
            step(0, 10, &[(1, false, false)]),
            step(10, 10, &[(1, false, true)]),
            step(50, 10, &[(1, true, true), (2, false, true)]),
        ];
        // Requests 1 and 2 arrive at 0 and 50 ms.
        let arrival = |id: u64| if id == 2 { 0.050 } else { 0.0 };
        // Predicted durations give back the simulated times.
        let t = step_times(&steps, &[0.010, 0.010, 0.010], arrival);
        close(&t, &[(0.0, 0.010), (0.010, 0.020), (0.050, 0.060)]);
        // Measured 30 ms each: the second follows the first (30-60), the third starts when the second
        // ends (60 > its arrival at 50).
        let t = step_times(&steps, &[0.030, 0.030, 0.030], arrival);
        close(&t, &[(0.0, 0.030), (0.030, 0.060), (0.060, 0.090)]);
        // Measured 5 ms: the third still waits for its arrival at 50.
        let t = step_times(&steps, &[0.005, 0.005, 0.005], arrival);
        close(&t, &[(0.0, 0.005), (0.005, 0.010), (0.050, 0.055)]);
        // Request 1: first token at the end of step 2, last at the end of step 3; request 2: step 3 only.
        let r = request_tokens(&steps, &t);
        close(&[(r[&1].first, r[&1].last)], &[(0.010, 0.055)]);
        close(&[(r[&2].first, r[&2].last)], &[(0.055, 0.055)]);
        // Request 3 arrives at 15 ms, while the simulated step 0-20 runs, and joins the step that follows
        // it back to back (20-30). Measured at 5 ms each, the first step ends at 5: the second may not
        // start before request 3 arrives at 15.
        let joined = [
            step(0, 20, &[(1, false, true)]),
            step(20, 10, &[(1, true, true), (3, false, true)]),
        ];
        let arrival = |id: u64| if id == 3 { 0.015 } else { 0.0 };
        close(
            &step_times(&joined, &[0.005, 0.005], arrival),
            &[(0.0, 0.005), (0.015, 0.020)],
        );
        assert_eq!(StepKind::of(&steps[0]), StepKind::Prefill);
        assert_eq!(StepKind::of(&steps[2]), StepKind::Mixed);
    }
}
