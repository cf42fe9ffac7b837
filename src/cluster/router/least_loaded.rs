use super::{ReplicaView, Route, Router};
use crate::config::LoadSignal;
use crate::request::Request;
use crate::time::SimTime;

/// The replica taking new requests with the lowest load (`cluster.load_signal`: requests held, prompt
/// tokens held, or KV usage); ties go to the lowest id (deterministic).
pub struct LeastLoaded {
    signal: LoadSignal,
}

impl LeastLoaded {
    pub fn new(signal: LoadSignal) -> LeastLoaded {
        LeastLoaded { signal }
    }
}

impl Router for LeastLoaded {
    fn route(&mut self, _req: &Request, _now: SimTime, replicas: &[ReplicaView]) -> Route {
        super::least_loaded(replicas, self.signal).map_or(Route::Reject, Route::To)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, views};
    use super::*;

    #[test]
    fn picks_min_lowest_id_on_ties_among_up_replicas() {
        let r = request(0);
        let mut ll = LeastLoaded::new(LoadSignal::Requests);
        let t = SimTime::ZERO;
        assert_eq!(ll.route(&r, t, &views(&[3, 1, 1], &[])), Route::To(1));
        assert_eq!(ll.route(&r, t, &views(&[3, 1, 1], &[1])), Route::To(2));
        assert_eq!(ll.route(&r, t, &views(&[3, 1], &[0, 1])), Route::Reject);
    }

    #[test]
    fn each_signal_reads_its_own_load() {
        // Replica 0 holds 1 long request, replica 1 holds 3 short ones; replica 2 is fullest in KV.
        let mut v = views(&[1, 3, 2], &[]);
        v[0].prompt_tokens = 9000;
        v[1].prompt_tokens = 300;
        v[2].prompt_tokens = 5000;
        v[0].kv_usage = 0.5;
        v[1].kv_usage = 0.2;
        v[2].kv_usage = 0.1;
        let r = request(0);
        let t = SimTime::ZERO;
        let pick = |s| LeastLoaded::new(s).route(&r, t, &v);
        assert_eq!(pick(LoadSignal::Requests), Route::To(0));
        assert_eq!(pick(LoadSignal::Tokens), Route::To(1));
        assert_eq!(pick(LoadSignal::KvUsage), Route::To(2));
        // A degraded replica takes nothing, however idle.
        v[2].degraded = true;
        assert_eq!(
            LeastLoaded::new(LoadSignal::KvUsage).route(&r, t, &v),
            Route::To(1)
        );
    }
}
