use super::{ReplicaView, Route, Router};
use crate::config::LoadSignal;
use crate::request::Request;
use crate::rng::StreamRng;
use crate::time::SimTime;
use rand::Rng;

/// Power of two choices (SGLang gateway `power_of_two`, R6): two distinct replicas taking new requests,
/// drawn uniformly, and the one with the lower load (`cluster.load_signal`) wins, the first drawn on a
/// tie. With one such replica, that one.
pub struct PowerOfTwo {
    signal: LoadSignal,
    rng: StreamRng,
    candidates: Vec<usize>,
}

impl PowerOfTwo {
    pub fn new(signal: LoadSignal, rng: StreamRng) -> PowerOfTwo {
        PowerOfTwo {
            signal,
            rng,
            candidates: Vec::new(),
        }
    }
}

impl Router for PowerOfTwo {
    fn route(&mut self, _req: &Request, _now: SimTime, replicas: &[ReplicaView]) -> Route {
        self.candidates.clear();
        self.candidates
            .extend((0..replicas.len()).filter(|&i| replicas[i].takes_new()));
        let n = self.candidates.len();
        match n {
            0 => Route::Reject,
            1 => Route::To(replicas[self.candidates[0]].id),
            _ => {
                let a = self.rng.random_range(0..n);
                // The second is uniform over the other n - 1.
                let b = (a + 1 + self.rng.random_range(0..n - 1)) % n;
                let (va, vb) = (&replicas[self.candidates[a]], &replicas[self.candidates[b]]);
                Route::To(if va.load(self.signal) <= vb.load(self.signal) {
                    va.id
                } else {
                    vb.id
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, views};
    use super::*;
    use crate::rng::RngStreams;

    #[test]
    fn never_picks_the_most_loaded_of_three_and_spreads_over_the_rest() {
        // Of 3 replicas loaded 5, 0, 9, a pair drawn uniformly is one of {0,1}, {0,2}, {1,2}, each with
        // probability 1/3; the winners are 1, 0 and 1: replica 1 wins 2/3 of the time, replica 0 1/3,
        // replica 2 never. Over 3000 draws the share of replica 1 is 2/3 +- 3 sd (sd = 0.0086).
        let mut r = PowerOfTwo::new(LoadSignal::Requests, RngStreams::new(1).stream("t"));
        let v = views(&[5, 0, 9], &[]);
        let mut wins = [0u32; 3];
        for s in 0..3000 {
            let Route::To(i) = r.route(&request(s), SimTime::ZERO, &v) else {
                panic!()
            };
            wins[i as usize] += 1;
        }
        assert_eq!(wins[2], 0);
        let share = wins[1] as f64 / 3000.0;
        assert!((share - 2.0 / 3.0).abs() < 0.026, "{wins:?}");
        // Only one takes new requests: that one; none: a rejection.
        assert_eq!(
            r.route(&request(0), SimTime::ZERO, &views(&[5, 0, 9], &[1, 2])),
            Route::To(0)
        );
        assert_eq!(
            r.route(&request(0), SimTime::ZERO, &views(&[5, 0], &[0, 1])),
            Route::Reject
        );
    }
}
