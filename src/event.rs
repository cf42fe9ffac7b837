//! The closed set of simulation events and their same-instant order, defined once.
//!
//! Events carry ids only; the world owns the state they refer to.

use crate::engine::EventClass;

/// Index of a replica (serving instance) in the cluster.
pub type ReplicaId = u32;
/// Index of a conversational session.
pub type SessionId = u64;

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
    /// Take a time-series sample of every replica.
    Sample,
}

impl EventClass for Event {
    /// Same-instant order. Completions come first so that the blocks and batch slots they release are visible
    /// to everything else at that instant; arrivals come next so that a request arriving at the very instant a
    /// step ends can join the next step; scheduling follows, seeing both; samples come last so they record
    /// the state the instant settled into.
    fn class(&self) -> u8 {
        match self {
            Event::StepDone(_) => 0,
            Event::SessionStart(_) => 1,
            Event::TurnRelease(_) => 1,
            Event::Schedule(_) => 2,
            Event::Sample => 3,
        }
    }
}
