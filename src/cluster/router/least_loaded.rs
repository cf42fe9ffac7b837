use super::{ReplicaView, Route, Router};
use crate::request::Request;

/// The up replica holding the fewest requests; ties go to the lowest id (deterministic).
pub struct LeastLoaded;

impl Router for LeastLoaded {
    fn route(&mut self, _req: &Request, replicas: &[ReplicaView]) -> Route {
        replicas
            .iter()
            .filter(|v| v.is_up())
            .min_by_key(|v| (v.num_requests(), v.id))
            .map_or(Route::Reject, |v| Route::To(v.id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, views};
    use super::*;

    #[test]
    fn picks_min_lowest_id_on_ties_among_up_replicas() {
        let r = request(0);
        assert_eq!(LeastLoaded.route(&r, &views(&[3, 1, 1], &[])), Route::To(1));
        assert_eq!(
            LeastLoaded.route(&r, &views(&[3, 1, 1], &[1])),
            Route::To(2)
        );
        assert_eq!(
            LeastLoaded.route(&r, &views(&[3, 1], &[0, 1])),
            Route::Reject
        );
    }
}
