//! Load over time: the arrival rate as a function of virtual time (`workload.rate_schedule`).
//!
//! A schedule is a factor f(t) >= 0 on the base rate (`workload.session_rate` for generated sessions,
//! `workload.trace.speedup` for a trace). Arrivals are a time change of the base process (Cinlar, 1972:
//! the standard construction of a non-homogeneous Poisson process from a homogeneous one). With
//! operational time L(t), the integral of f from 0 to t, a gap g drawn for the base process (in seconds
//! at factor 1: exponential for Poisson, gamma otherwise) moves the next arrival from t to the x with
//! L(x) - L(t) = g ([`RateShape::advance`]). Over a window the expected count of a Poisson base at rate
//! R is then R times the integral of f over it.
//!
//! Kinds: `piecewise` (factors at times, held or interpolated linearly), `diurnal` (1 + A sin(2 pi (t -
//! phase) / period)), `bursts` (a two-state Markov-modulated Poisson process: the factor alternates
//! between `high` and `low`, each held for an exponential time of its mean, drawn from the stream
//! `workload.rate_schedule`; the first state is drawn from the chain's stationary law).

use crate::config::{Interpolation, RateSchedule, WorkloadConfig};
use crate::rng::{RngStreams, StreamRng};
use rand::Rng;
use std::f64::consts::TAU;

/// A schedule ready to move arrivals: see the module docs.
pub struct RateShape {
    shape: Shape,
}

enum Shape {
    /// Segments (start time, factor at start, slope) in time order; the last runs for ever.
    Segments(Vec<(f64, f64, f64)>),
    Diurnal {
        period: f64,
        amplitude: f64,
        phase: f64,
    },
    /// The state path drawn so far as (start, factor) segments, extended as time goes on.
    Bursts {
        path: Vec<(f64, f64)>,
        /// The end of the last segment of `path`.
        end: f64,
        factors: [f64; 2],
        means: [f64; 2],
        /// The state of the last segment (0: high, 1: low).
        state: usize,
        rng: Box<StreamRng>,
    },
}

/// The random stream bursts draw their dwell times from.
pub const STREAM: &str = "workload.rate_schedule";

impl RateShape {
    /// The workload's schedule, if it has one, drawing from [`STREAM`].
    pub fn of(w: &WorkloadConfig, streams: RngStreams) -> Option<RateShape> {
        w.rate_schedule
            .as_ref()
            .map(|r| RateShape::new(r, streams.stream(STREAM)))
    }

    pub fn new(cfg: &RateSchedule, mut rng: StreamRng) -> RateShape {
        let shape = match cfg {
            RateSchedule::Piecewise {
                points,
                interpolation,
            } => {
                let mut segs = Vec::with_capacity(points.len());
                for (i, &(t, f)) in points.iter().enumerate() {
                    let slope = match (interpolation, points.get(i + 1)) {
                        (Interpolation::Linear, Some(&(t1, f1))) => (f1 - f) / (t1 - t),
                        _ => 0.0,
                    };
                    segs.push((t, f, slope));
                }
                Shape::Segments(segs)
            }
            RateSchedule::Diurnal {
                period_s,
                amplitude,
                phase_s,
            } => Shape::Diurnal {
                period: *period_s,
                amplitude: *amplitude,
                phase: *phase_s,
            },
            RateSchedule::Bursts {
                high,
                low,
                high_mean_s,
                low_mean_s,
            } => {
                let means = [*high_mean_s, *low_mean_s];
                // Stationary law: the share of time in each state is its mean dwell over both.
                let u: f64 = rng.random();
                let state = usize::from(u >= means[0] / (means[0] + means[1]));
                let mut s = Shape::Bursts {
                    path: Vec::new(),
                    end: 0.0,
                    factors: [*high, *low],
                    means,
                    state: 1 - state,
                    rng: Box::new(rng),
                };
                extend(&mut s);
                s
            }
        };
        RateShape { shape }
    }

    /// Forgets the bursts path before the segment holding `t`: arrivals only move forward, so memory
    /// stays bounded however long the run.
    fn forget_before(&mut self, t: f64) {
        if let Shape::Bursts { path, .. } = &mut self.shape {
            let i = path.partition_point(|p| p.0 <= t).saturating_sub(1);
            if i > 64 {
                path.drain(..i);
            }
        }
    }

    /// The factor at time `t` (seconds; for bursts, no earlier than the last arrival placed).
    pub fn factor(&mut self, t: f64) -> f64 {
        match &self.shape {
            Shape::Diurnal {
                period,
                amplitude,
                phase,
            } => 1.0 + amplitude * (TAU * (t - phase) / period).sin(),
            _ => {
                let (start, f0, slope, _) = self.segment(t);
                f0 + slope * (t - start)
            }
        }
    }

    /// The segment holding `t`: (start, factor at start, slope, end).
    fn segment(&mut self, t: f64) -> (f64, f64, f64, f64) {
        if let Shape::Bursts { end, .. } = &self.shape {
            if t >= *end {
                while matches!(&self.shape, Shape::Bursts { end, .. } if t >= *end) {
                    extend(&mut self.shape);
                }
            }
        }
        match &self.shape {
            Shape::Segments(s) => {
                let i = s.partition_point(|p| p.0 <= t).saturating_sub(1);
                let end = s.get(i + 1).map_or(f64::INFINITY, |p| p.0);
                (s[i].0, s[i].1, s[i].2, end)
            }
            Shape::Bursts { path, end, .. } => {
                let i = path.partition_point(|p| p.0 <= t).saturating_sub(1);
                let e = path.get(i + 1).map_or(*end, |p| p.0);
                (path[i].0, path[i].1, 0.0, e)
            }
            Shape::Diurnal { .. } => unreachable!("no segments"),
        }
    }

    /// The time x >= t at which the integral of the factor from t reaches `area` (factor-seconds), or
    /// None when the factor is 0 from some time on and the area is never reached.
    pub fn advance(&mut self, t: f64, area: f64) -> Option<f64> {
        if let Shape::Diurnal {
            period,
            amplitude,
            phase,
        } = self.shape
        {
            return Some(diurnal_advance(t, area, period, amplitude, phase));
        }
        let mut x = t;
        let mut left = area;
        loop {
            if left <= 0.0 {
                return Some(x);
            }
            let (start, f0, slope, end) = self.segment(x);
            let fx = f0 + slope * (x - start);
            let len = end - x;
            let here = if len.is_infinite() {
                if fx > 0.0 || slope > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                }
            } else {
                fx * len + 0.5 * slope * len * len
            };
            if here >= left && here > 0.0 {
                // fx d + slope d^2 / 2 = left, in the form stable for small slopes.
                let disc = (fx * fx + 2.0 * slope * left).max(0.0);
                let d = 2.0 * left / (fx + disc.sqrt());
                let at = x + d.min(len);
                self.forget_before(at);
                return Some(at);
            }
            if len.is_infinite() {
                return None;
            }
            left -= here;
            x = end;
        }
    }
}

/// Draws the next state's dwell and appends it to the path.
fn extend(shape: &mut Shape) {
    if let Shape::Bursts {
        path,
        end,
        factors,
        means,
        state,
        rng,
    } = shape
    {
        *state = 1 - *state;
        let u: f64 = rng.random();
        let dwell = -(1.0 - u).ln() * means[*state];
        path.push((*end, factors[*state]));
        *end += dwell;
    }
}

/// The x with the integral of 1 + A sin(2 pi (u - phase) / P) over [t, x] equal to `area`: safeguarded
/// Newton on the closed form t..x: (x - t) - A P / 2pi (cos th(x) - cos th(t)).
fn diurnal_advance(t: f64, area: f64, period: f64, amplitude: f64, phase: f64) -> f64 {
    let th = |u: f64| TAU * (u - phase) / period;
    let c0 = th(t).cos();
    let k = amplitude * period / TAU;
    let integral = |x: f64| (x - t) - k * (th(x).cos() - c0);
    let rate = |x: f64| 1.0 + amplitude * th(x).sin();
    // Every full period adds exactly P; the bracket holds the answer.
    let (mut lo, mut hi) = (t, t + ((area / period).floor() + 2.0) * period);
    if amplitude < 0.999 {
        hi = hi.min(t + area / (1.0 - amplitude));
    }
    let mut x = (t + area).clamp(lo, hi);
    for _ in 0..100 {
        let f = integral(x) - area;
        if f.abs() <= 1e-12 * area.max(1.0) {
            break;
        }
        if f > 0.0 {
            hi = x;
        } else {
            lo = x;
        }
        let r = rate(x);
        let newton = x - f / r;
        x = if r > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cfg: &RateSchedule) -> RateShape {
        RateShape::new(cfg, RngStreams::new(5).stream(STREAM))
    }

    /// Poisson arrivals at base rate `rate` through `s`, up to `end` seconds.
    fn arrivals(s: &mut RateShape, rate: f64, end: f64, seed: u64) -> Vec<f64> {
        let mut rng = RngStreams::new(seed).stream("t");
        let mut t = 0.0;
        let mut out = Vec::new();
        loop {
            let u: f64 = rng.random();
            let g = -(1.0 - u).ln() / rate;
            match s.advance(t, g) {
                Some(x) if x < end => {
                    out.push(x);
                    t = x;
                }
                _ => return out,
            }
        }
    }

    fn count(xs: &[f64], a: f64, b: f64) -> f64 {
        xs.iter().filter(|&&x| x >= a && x < b).count() as f64
    }

    /// A Poisson count of mean mu is within 4 sqrt(mu) of it but with probability about 6e-5.
    fn near(n: f64, mu: f64) -> bool {
        (n - mu).abs() <= 4.0 * mu.sqrt()
    }

    #[test]
    fn piecewise_step_and_linear_counts_follow_the_integrated_rate() {
        // Factor 1 on [0, 100), 3 on [100, 200), 0.5 after; base rate 10/s.
        let step = RateSchedule::Piecewise {
            points: vec![(0.0, 1.0), (100.0, 3.0), (200.0, 0.5)],
            interpolation: Interpolation::Step,
        };
        let xs = arrivals(&mut shape(&step), 10.0, 400.0, 1);
        // Expected: 10 x 100 x 1 = 1000, 10 x 100 x 3 = 3000, 10 x 200 x 0.5 = 1000.
        assert!(near(count(&xs, 0.0, 100.0), 1000.0));
        assert!(near(count(&xs, 100.0, 200.0), 3000.0));
        assert!(near(count(&xs, 200.0, 400.0), 1000.0));
        // Linear from 0 at 0 s to 4 at 100 s, 4 after: the integral over [0, 50) is 50 x 2 / 2 = 50,
        // over [50, 100) 50 x (2 + 4) / 2 = 150; base 10/s: 500 and 1500.
        let ramp = RateSchedule::Piecewise {
            points: vec![(0.0, 0.0), (100.0, 4.0)],
            interpolation: Interpolation::Linear,
        };
        let mut s = shape(&ramp);
        assert_eq!(s.factor(25.0), 1.0);
        let xs = arrivals(&mut s, 10.0, 150.0, 2);
        assert!(
            near(count(&xs, 0.0, 50.0), 500.0),
            "{}",
            count(&xs, 0.0, 50.0)
        );
        assert!(near(count(&xs, 50.0, 100.0), 1500.0));
        assert!(near(count(&xs, 100.0, 150.0), 2000.0));
        // The factor 0 after 100 s: the area runs out and arrivals stop.
        let stop = RateSchedule::Piecewise {
            points: vec![(0.0, 1.0), (100.0, 0.0)],
            interpolation: Interpolation::Step,
        };
        let xs = arrivals(&mut shape(&stop), 10.0, 1e9, 3);
        assert!(xs.iter().all(|&x| x < 100.0) && near(xs.len() as f64, 1000.0));
    }

    #[test]
    fn advance_inverts_the_integral_exactly() {
        // Linear 1 -> 3 over [0, 10): the integral over [0, x) is x + x^2 / 10; area 2.4 at x = 2.
        let mut s = shape(&RateSchedule::Piecewise {
            points: vec![(0.0, 1.0), (10.0, 3.0)],
            interpolation: Interpolation::Linear,
        });
        assert!((s.advance(0.0, 2.4).unwrap() - 2.0).abs() < 1e-12);
        // Across the corner: [0, 10) holds 20; 5 more at factor 3 take 5/3 s.
        assert!((s.advance(0.0, 25.0).unwrap() - (10.0 + 5.0 / 3.0)).abs() < 1e-12);
        // Diurnal, amplitude 0.5, period 100: a full period holds exactly 100.
        let d = RateSchedule::Diurnal {
            period_s: 100.0,
            amplitude: 0.5,
            phase_s: 0.0,
        };
        let mut s = shape(&d);
        assert!((s.advance(7.0, 100.0).unwrap() - 107.0).abs() < 1e-9);
        // Over [0, 25): 25 + 0.5 x 100 / 2pi x (1 - cos(pi / 2)) = 25 + 7.9577.
        let a = 25.0 + 50.0 / TAU;
        assert!((s.advance(0.0, a).unwrap() - 25.0).abs() < 1e-9);
    }

    #[test]
    fn diurnal_counts_follow_the_sinusoid() {
        // Base 20/s, amplitude 0.8, period 400 s: the half-periods [0, 200) and [200, 400) hold
        // 20 x (200 +- 0.8 x 400 / pi) = 4000 +- 2037.2 arrivals.
        let d = RateSchedule::Diurnal {
            period_s: 400.0,
            amplitude: 0.8,
            phase_s: 0.0,
        };
        let xs = arrivals(&mut shape(&d), 20.0, 800.0, 4);
        let swing = 20.0 * 0.8 * 400.0 / std::f64::consts::PI;
        for k in 0..2 {
            let base = 400.0 * k as f64;
            assert!(near(count(&xs, base, base + 200.0), 4000.0 + swing));
            assert!(near(count(&xs, base + 200.0, base + 400.0), 4000.0 - swing));
        }
    }

    #[test]
    fn bursts_alternate_with_the_stationary_mean_rate_and_overdispersion() {
        // High factor 4 for 20 s on average, low 0.25 for 60 s: the long-run factor is
        // (4 x 20 + 0.25 x 60) / 80 = 1.1875. Base 10/s over 40,000 s: 475,000 arrivals expected. The
        // modulation dominates the count's spread: its standard deviation over T is about
        // sqrt(2 var(f) tau T) x R with var(f) = 0.25 x 0.75 x 3.75^2 = 2.64 and correlation time
        // tau = 1 / (1/20 + 1/60) = 15 s, i.e. 10 x sqrt(2 x 2.64 x 15 x 40000) = 17,800; the check
        // allows 4 of those.
        let b = RateSchedule::Bursts {
            high: 4.0,
            low: 0.25,
            high_mean_s: 20.0,
            low_mean_s: 60.0,
        };
        let xs = arrivals(&mut shape(&b), 10.0, 40_000.0, 6);
        let n = xs.len() as f64;
        assert!((n - 475_000.0).abs() < 4.0 * 17_800.0, "{n}");
        // Counts per 10 s window are overdispersed: variance over mean (1 for Poisson) well above 1.
        let w: Vec<f64> = (0..4000)
            .map(|k| count(&xs, 10.0 * k as f64, 10.0 * (k + 1) as f64))
            .collect();
        let m = w.iter().sum::<f64>() / w.len() as f64;
        let v = w.iter().map(|x| (x - m).powi(2)).sum::<f64>() / w.len() as f64;
        assert!(v / m > 10.0, "dispersion {}", v / m);
    }
}
