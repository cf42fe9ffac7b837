use super::Router;
use crate::event::{ReplicaId, SessionId};

/// The replica holding the fewest requests; ties go to the lowest index (deterministic).
pub struct LeastLoaded;

impl Router for LeastLoaded {
    fn route(&mut self, _session: SessionId, loads: &[usize]) -> ReplicaId {
        let (i, _) = loads
            .iter()
            .enumerate()
            .min_by_key(|&(i, &l)| (l, i))
            .expect("at least one replica");
        i as ReplicaId
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn picks_min_lowest_index_on_ties() {
        assert_eq!(LeastLoaded.route(0, &[3, 1, 1]), 1);
    }
}
