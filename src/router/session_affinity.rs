use super::Router;
use crate::event::{ReplicaId, SessionId};
use crate::rng::mix;

/// Every turn of a session goes to the same replica (hash of the session id), so its prefix stays local.
pub struct SessionAffinity;

impl Router for SessionAffinity {
    fn route(&mut self, session: SessionId, loads: &[usize]) -> ReplicaId {
        (mix(session, 0x5e55) % loads.len() as u64) as ReplicaId
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn same_session_same_replica() {
        let mut r = SessionAffinity;
        let a = r.route(17, &[0; 4]);
        assert_eq!(a, r.route(17, &[5, 5, 5, 5]));
        let spread: std::collections::BTreeSet<_> = (0..64).map(|s| r.route(s, &[0; 4])).collect();
        assert_eq!(spread.len(), 4);
    }
}
