use super::{ReplicaView, Route, Router};
use crate::request::Request;
use crate::time::SimTime;

/// Replicas taking new requests in turn, whatever their load: the first such replica at or after the one
/// after the last pick, in id order, wrapping around (production-stack `roundrobin`, R7).
#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn route(&mut self, _req: &Request, _now: SimTime, replicas: &[ReplicaView]) -> Route {
        let n = replicas.len();
        let start = self.next % n;
        match (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| replicas[i].takes_new())
        {
            Some(i) => {
                self.next = i + 1;
                Route::To(replicas[i].id)
            }
            None => Route::Reject,
        }
    }

    fn reads_loads(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, views};
    use super::*;

    #[test]
    fn cycles_over_up_replicas() {
        let mut r = RoundRobin::default();
        let t = SimTime::ZERO;
        let v = views(&[9, 0, 4], &[]);
        let picks: Vec<_> = (0..5).map(|s| r.route(&request(s), t, &v)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1].map(Route::To));
        // Replica 2 down: 2 is skipped (the next after 1 is 2, down, so 0), then 1, 0, ...
        let v = views(&[9, 0, 4], &[2]);
        let picks: Vec<_> = (0..3).map(|s| r.route(&request(s), t, &v)).collect();
        assert_eq!(picks, [0, 1, 0].map(Route::To));
        assert_eq!(r.route(&request(0), t, &views(&[1], &[0])), Route::Reject);
    }
}
