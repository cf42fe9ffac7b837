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
    /// A replica's engine step finished: its requests advance (tokens, completions). Also the end of a
    /// replica's coast (see `World`): the end of its last step, queued when the coast began.
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
    /// Cluster event `cluster.events[i]` (a replica joins, leaves, is drained or restarts).
    Cluster(u32),
    /// A restarted replica has loaded its model and serves again.
    ReplicaReady(ReplicaId),
    /// A decode instance's pull of request `id`'s KV from prefill replica `replica` has landed: the
    /// prefill instance frees the blocks it kept for it (disaggregated serving).
    KvTransferDone(ReplicaId, RequestId),
    /// Take a time-series sample of every replica.
    Sample,
}

impl EventClass for Event {
    /// Same-instant order. Cluster events come first: a replica that joins or leaves at an instant does
    /// so before anything else there sees the cluster. Completions come next, so that the blocks and
    /// batch slots they release are visible to everything else at that instant (and a first token at the
    /// very instant of its client's deadline is in time). Arrivals, retries and client timeouts follow,
    /// in the order they were queued, so that a request arriving at the very instant a step ends can join
    /// the next step; scheduling follows, seeing them all; samples come last, so they record the state
    /// the instant settled into. A KV transfer's end releases the prefill instance's blocks among the
    /// arrivals, before the scheduling passes queued at that instant (an instant pull, queued by a pass
    /// itself, runs after it and queues the prefill instance's pass again).
    ///
    /// Within a class, events run in the order they were queued, but for completions, which run in
    /// replica order: a step's end then sorts by the replica alone, not by when its step was planned, so
    /// that a replica may advance over many steps without queueing them (a coast) and its last step still
    /// ends at the place one-by-one stepping would give it.
    fn class(&self) -> u8 {
        match self {
            Event::Cluster(_) => 0,
            Event::ReplicaReady(_) => 0,
            Event::StepDone(_) => 1,
            Event::SessionStart(_) => 2,
            Event::TurnRelease(_) => 2,
            Event::Timeout(..) => 2,
            Event::Retry(_) => 2,
            Event::KvTransferDone(..) => 2,
            Event::Schedule(_) => 3,
            Event::Sample => 4,
        }
    }

    fn tie(&self) -> Option<u64> {
        match self {
            Event::StepDone(r) => Some(*r as u64),
            _ => None,
        }
    }
}
