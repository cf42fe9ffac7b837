use super::Router;
use crate::event::{ReplicaId, SessionId};

/// Replicas in turn, whatever their load.
#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn route(&mut self, _session: SessionId, loads: &[usize]) -> ReplicaId {
        let r = self.next % loads.len();
        self.next = r + 1;
        r as ReplicaId
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cycles() {
        let mut r = RoundRobin::default();
        let picks: Vec<_> = (0..5).map(|s| r.route(s, &[9, 0, 4])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1]);
    }
}
