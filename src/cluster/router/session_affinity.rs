use super::{ReplicaView, Route, Router};
use crate::request::Request;
use crate::rng::mix;
use crate::time::SimTime;

/// Every turn of a session goes to the same replica: a hash of the session id modulo the number of
/// replicas up, indexing them in id order. Stable while that set is; when it changes (a replica added,
/// drained or down) about n/(n+1) of the sessions move, which is what a consistent-hash ring
/// (`consistent_hash`) avoids. A degraded home (`[admission]`) passes the session to the next replica
/// up that takes new requests, without moving anyone else.
pub struct SessionAffinity;

impl Router for SessionAffinity {
    fn route(&mut self, req: &Request, _now: SimTime, replicas: &[ReplicaView]) -> Route {
        let up: Vec<&ReplicaView> = replicas.iter().filter(|v| v.is_up()).collect();
        let n = up.len();
        if n == 0 {
            return Route::Reject;
        }
        let home = (mix(req.session, 0x5e55) % n as u64) as usize;
        (0..n)
            .map(|k| up[(home + k) % n])
            .find(|v| v.takes_new())
            .map_or(Route::Reject, |v| Route::To(v.id))
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
    fn same_session_same_replica() {
        let mut r = SessionAffinity;
        let t = SimTime::ZERO;
        let a = r.route(&request(17), t, &views(&[0; 4], &[]));
        assert_eq!(a, r.route(&request(17), t, &views(&[5; 4], &[])));
        let spread: std::collections::BTreeSet<_> = (0..64)
            .map(|s| r.route(&request(s), t, &views(&[0; 4], &[])))
            .collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(
            r.route(&request(17), t, &views(&[0; 4], &[0, 1, 2, 3])),
            Route::Reject
        );
        // Its home degraded: the next replica up, and every other session stays put.
        let Route::To(home) = a else { panic!() };
        let mut v = views(&[0; 4], &[]);
        v[home as usize].degraded = true;
        assert_eq!(r.route(&request(17), t, &v), Route::To((home + 1) % 4));
        let idle = views(&[0; 4], &[]);
        for s in 0..64 {
            let before = r.route(&request(s), t, &idle);
            if before != a {
                assert_eq!(r.route(&request(s), t, &v), before);
            }
        }
    }

    #[test]
    fn a_fifth_replica_moves_most_sessions() {
        // By the Chinese remainder theorem h mod 4 == h mod 5 == k forces h mod 20 == k, so the two
        // agree exactly for h mod 20 in 0..4: 4 of 20 residues, so 1/5 of the sessions stay and 4/5
        // move. Over 20,000 sessions the share that stays is 0.2 +- 3 sd
        // (sd = sqrt(0.2 x 0.8 / 20000) = 0.0028).
        let mut r = SessionAffinity;
        let t = SimTime::ZERO;
        let four = views(&[0; 5], &[4]);
        let five = views(&[0; 5], &[]);
        let n = 20_000;
        let stay = (0..n)
            .filter(|&s| r.route(&request(s), t, &four) == r.route(&request(s), t, &five))
            .count() as f64
            / n as f64;
        assert!((stay - 0.2).abs() < 0.009, "{stay}");
    }
}
