//! The closed set of simulation events and their same-instant order, defined once.
//!
//! Events carry ids only; the world owns the state they refer to.

use crate::engine::EventClass;

/// Index of a replica (serving instance) in the cluster.
pub type ReplicaId = u32;
/// Index of a conversational session.
pub type SessionId = u64;
pub use crate::request::RequestId;

/// Everything that can happen in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A replica's engine step finished: its requests advance (tokens, completions).
    StepDone(ReplicaId),
    /// The next session of the workload starts (its first turn arrives).
    SessionStart(SessionId),
    /// A session's next turn is released after the user's think time.
    TurnRelease(SessionId),
    /// A replica should plan its next step, if it is idle and has work.
    Schedule(ReplicaId),
    /// A client's deadline for its request's first token (`workload.client_timeout_s`): the request
    /// held by the replica is aborted if it has no first token yet.
    Timeout(ReplicaId, RequestId),
    /// A client sends a refused or abandoned request again (`workload.max_retries`).
    Retry(RequestId),
    /// Take a time-series sample of every replica.
    Sample,
}

impl EventClass for Event {
    /// Same-instant order. Completions come first so that the blocks and batch slots they release are visible
    /// to everything else at that instant (a first token at the very instant of its client's deadline is in
    /// time); arrivals, retries and client timeouts come next, in the order they were queued, so that a
    /// request arriving at the very instant a step ends can join the next step; scheduling follows, seeing
    /// them all; samples come last so they record the state the instant settled into.
    fn class(&self) -> u8 {
        match self {
            Event::StepDone(_) => 0,
            Event::SessionStart(_) => 1,
            Event::TurnRelease(_) => 1,
            Event::Timeout(..) => 1,
            Event::Retry(_) => 1,
            Event::Schedule(_) => 2,
            Event::Sample => 3,
        }
    }
}
