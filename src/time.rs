//! Virtual time in integer nanoseconds.
//!
//! The clock is a `u64` of nanoseconds so that event ordering is exact and runs are reproducible across
//! platforms; floating-point seconds appear only at the edges (config input, CSV output).

use serde::Serialize;
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// A point on the virtual clock, in nanoseconds since the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SimTime(pub u64);

/// A span of virtual time, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SimDuration(pub u64);

const NS_PER_S: f64 = 1e9;

/// The latest virtual time a run may reach: 2^62 ns, about 146 years, a quarter of the clock's range, so
/// that no sum of times inside a run can saturate it.
pub const HORIZON: SimTime = SimTime(1 << 62);

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NS_PER_S
    }

    /// Saturating difference: `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: SimTime) -> SimDuration {
        SimDuration(self.0.saturating_sub(earlier.0))
    }
}

impl SimDuration {
    pub const ZERO: SimDuration = SimDuration(0);

    /// Converts seconds to nanoseconds, rounding to nearest. Negative and NaN inputs become zero;
    /// callers validate user input before it gets here.
    pub fn from_secs_f64(s: f64) -> SimDuration {
        if s.is_nan() || s <= 0.0 {
            return SimDuration(0);
        }
        let ns = s * NS_PER_S;
        if ns >= u64::MAX as f64 {
            SimDuration(u64::MAX)
        } else {
            SimDuration(round_half_away(ns))
        }
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NS_PER_S
    }
}

/// `x.round() as u64` for `0 <= x < 2^64`, without the libm call (`round` is not an SSE2 instruction, and
/// this runs once per simulated step): the fraction `x - trunc(x)` of such an f64 is exact, so comparing it
/// with one half rounds exactly as `round` does, ties away from zero.
pub fn round_half_away(x: f64) -> u64 {
    debug_assert!((0.0..u64::MAX as f64).contains(&x), "{x}");
    // Through i64 below 2^63: one instruction each way, where u64 takes a dozen. From 2^63 up every f64
    // is an integer.
    if x < 9_223_372_036_854_775_808.0 {
        let i = x as i64;
        (i + (x - i as f64 >= 0.5) as i64) as u64
    } else {
        x as u64
    }
}

impl Add<SimDuration> for SimTime {
    type Output = SimTime;
    fn add(self, d: SimDuration) -> SimTime {
        SimTime(self.0.saturating_add(d.0))
    }
}

impl AddAssign<SimDuration> for SimTime {
    fn add_assign(&mut self, d: SimDuration) {
        self.0 = self.0.saturating_add(d.0);
    }
}

impl Add for SimDuration {
    type Output = SimDuration;
    fn add(self, d: SimDuration) -> SimDuration {
        SimDuration(self.0.saturating_add(d.0))
    }
}

impl AddAssign for SimDuration {
    fn add_assign(&mut self, d: SimDuration) {
        self.0 = self.0.saturating_add(d.0);
    }
}

impl Sub for SimTime {
    type Output = SimDuration;
    fn sub(self, earlier: SimTime) -> SimDuration {
        self.since(earlier)
    }
}

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_trip_at_nanosecond_precision() {
        let d = SimDuration::from_secs_f64(1.234_567_891);
        assert_eq!(d.0, 1_234_567_891);
        assert_eq!(SimDuration::from_secs_f64(-3.0), SimDuration::ZERO);
        assert_eq!(SimDuration::from_secs_f64(f64::NAN), SimDuration::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn rounding_matches_round(bits in proptest::prelude::any::<u64>(), small in 0u64..1 << 40, k in 0u32..4) {
            // Any f64 below 2^64 (from raw bits); quarters (ties among them); the f64s just below a tie
            // and just above an integer.
            let x = f64::from_bits(bits).abs();
            let tie = small as f64 + 0.5;
            for x in [x, small as f64 + k as f64 * 0.25, f64::from_bits(tie.to_bits() - 1), f64::from_bits((small as f64).to_bits() + 1)] {
                if x < u64::MAX as f64 {
                    proptest::prop_assert_eq!(round_half_away(x), x.round() as u64, "{}", x);
                }
            }
        }
    }

    #[test]
    fn since_saturates() {
        assert_eq!(SimTime(5).since(SimTime(9)), SimDuration::ZERO);
        assert_eq!(SimTime(9) - SimTime(5), SimDuration(4));
    }
}
