use super::{ReplicaView, Route, Router};
use crate::request::Request;
use crate::rng::mix;

/// Every turn of a session goes to the same replica (a hash of the session id modulo the replica
/// count), so its prefix stays local; if that replica is not up, the next up one in id order.
pub struct SessionAffinity;

impl Router for SessionAffinity {
    fn route(&mut self, req: &Request, replicas: &[ReplicaView]) -> Route {
        let n = replicas.len();
        let home = (mix(req.session, 0x5e55) % n as u64) as usize;
        (0..n)
            .map(|k| (home + k) % n)
            .find(|&i| replicas[i].is_up())
            .map_or(Route::Reject, |i| Route::To(replicas[i].id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, views};
    use super::*;

    #[test]
    fn same_session_same_replica() {
        let mut r = SessionAffinity;
        let a = r.route(&request(17), &views(&[0; 4], &[]));
        assert_eq!(a, r.route(&request(17), &views(&[5; 4], &[])));
        let spread: std::collections::BTreeSet<_> = (0..64)
            .map(|s| r.route(&request(s), &views(&[0; 4], &[])))
            .collect();
        assert_eq!(spread.len(), 4);
        // Its home down, a session moves to the next up replica, and only then.
        let Route::To(home) = a else { panic!() };
        let next = Route::To((home + 1) % 4);
        assert_eq!(
            r.route(&request(17), &views(&[0; 4], &[home as usize])),
            next
        );
        assert_eq!(
            r.route(&request(17), &views(&[0; 4], &[0, 1, 2, 3])),
            Route::Reject
        );
    }
}
