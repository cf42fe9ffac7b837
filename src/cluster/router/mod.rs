//! Routing policies: which replica a new request goes to. One file per policy.
//!
//! Routing is a direct call at arrival, not an event. To add a policy: one file here implementing
//! [`Router`], one `RouterPolicy` arm in `config.rs`, and its construction in [`build`].

mod least_loaded;
mod round_robin;
mod session_affinity;

pub use least_loaded::LeastLoaded;
pub use round_robin::RoundRobin;
pub use session_affinity::SessionAffinity;

use super::{ReplicaView, Route};
use crate::config::RouterPolicy;
use crate::request::Request;

/// A routing policy.
///
/// Contract: `route` is deterministic given its inputs and its own state (it draws no random number:
/// leap contract, condition 9); it returns [`Route::To`] only with the id of a view that is up, and
/// [`Route::Reject`] when it will not place the request (always when no replica is up). `replicas` is
/// every replica of the cluster, `replicas[i].id == i`, never empty.
pub trait Router {
    fn route(&mut self, req: &Request, replicas: &[ReplicaView]) -> Route;
}

/// The router of a policy.
pub fn build(policy: RouterPolicy) -> Box<dyn Router> {
    match policy {
        RouterPolicy::RoundRobin => Box::new(RoundRobin::default()),
        RouterPolicy::LeastLoaded => Box::new(LeastLoaded),
        RouterPolicy::SessionAffinity => Box::new(SessionAffinity),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::cluster::ReplicaState;
    use crate::time::SimTime;

    /// Views of replicas holding `loads` requests each (all running), up unless listed in `down`.
    pub fn views(loads: &[usize], down: &[usize]) -> Vec<ReplicaView> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &l)| ReplicaView {
                id: i as u32,
                state: if down.contains(&i) {
                    ReplicaState::Down
                } else {
                    ReplicaState::Up
                },
                num_waiting: 0,
                num_running: l,
                prompt_tokens: 0,
                kv_usage: 0.0,
            })
            .collect()
    }

    /// A one-segment request of session `session`.
    pub fn request(session: u64) -> Request {
        let prompt = vec![crate::workload::content::Segment {
            content: session,
            len: 10,
        }];
        Request::new(session, session, 1, 0, SimTime::ZERO, prompt, 0, 8)
    }
}
