//! Routing policies: which replica a new request goes to. One file per policy.
//!
//! A router sees only what a real router could: the request's session and each replica's current load (its
//! own in-flight count). Routing is a direct call at arrival, not an event.

mod least_loaded;
mod round_robin;
mod session_affinity;

pub use least_loaded::LeastLoaded;
pub use round_robin::RoundRobin;
pub use session_affinity::SessionAffinity;

use crate::config::RouterPolicy;
use crate::event::{ReplicaId, SessionId};

/// Contract: `route` returns an index below `loads.len()` and is deterministic given its inputs and its own
/// state; `loads[i]` is the number of requests replica i holds.
pub trait Router {
    fn route(&mut self, session: SessionId, loads: &[usize]) -> ReplicaId;
}

pub fn build(policy: RouterPolicy) -> Box<dyn Router> {
    match policy {
        RouterPolicy::RoundRobin => Box::new(RoundRobin::default()),
        RouterPolicy::LeastLoaded => Box::new(LeastLoaded),
        RouterPolicy::SessionAffinity => Box::new(SessionAffinity),
    }
}
