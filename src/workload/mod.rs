//! Workloads: the conversational session generator (`conversation.rs`), trace replay (`trace/`, one
//! reader per format), their distributions (`dist.rs`), the content model with its tagged hash chains
//! (`content.rs`), load over time (`rate.rs`), and export of a generated workload as a trace (`export.rs`).
//!
//! To add a workload kind: one file implementing [`Workload`], one `WorkloadKind` arm in `config.rs`, and
//! its construction in `System::workload` (`system.rs`). To add a trace format: see `trace/`.

pub mod content;
pub mod conversation;
pub mod dist;
pub mod export;
pub mod rate;
pub mod trace;

use crate::event::SessionId;
use crate::time::SimTime;
use conversation::Release;

/// What follows a session's turn (see [`Workload::on_turn_complete`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTurn {
    /// Release the session's next turn at this time (`release_turn`).
    At(SimTime),
    /// The session's other turns are released on their own schedule (open-loop replay): nothing to do.
    OwnSchedule,
    /// The session has no turn left to release or to complete: it has ended.
    Ended,
}

impl NextTurn {
    /// The next turn's release time, if the session goes on by completion (closed loop).
    pub fn at(self) -> Option<SimTime> {
        match self {
            NextTurn::At(t) => Some(t),
            _ => None,
        }
    }
}

/// A source of sessions and their turns.
///
/// Contract: `next_session_start` yields sessions in non-decreasing start time and is called once after each
/// session starts (and once at the beginning); `start_session` releases the session's first turn at its
/// start; `on_turn_complete` is called once for every released turn when it leaves the system (finished,
/// rejected or recorded as failed; not for turns still running when a run stops) and says what follows:
/// the next turn's release time (`release_turn` is then called at that time), nothing (open loop), or
/// the session's end. Every draw comes from workload streams only, so the requests do not depend on the
/// engine, only their release times do.
pub trait Workload {
    fn next_session_start(&mut self) -> Option<(SessionId, SimTime)>;
    fn start_session(&mut self, id: SessionId, now: SimTime) -> Option<Release>;
    fn release_turn(&mut self, id: SessionId, now: SimTime) -> Option<Release>;
    fn on_turn_complete(&mut self, id: SessionId, output_tokens: u32, now: SimTime) -> NextTurn;
    /// Hands back a finished turn's chained block hashes (prompt + outputs, full blocks), called just before
    /// `on_turn_complete`. A workload whose next turn's prompt starts with exactly these tokens may seed the
    /// next request with them instead of rehashing its whole context; the default drops them.
    fn carry_block_hashes(&mut self, _id: SessionId, _hashes: content::HashChain) {}
    fn sessions_started(&self) -> u64;
    /// The session population: sessions started and not ended, where a session whose later turns the
    /// load's end cut counts as alive (under an endless load it would be), so that the population does
    /// not fall as the load's end approaches (the automatic warm-up reads it up to that end). None:
    /// sessions started less sessions ended.
    fn population(&self) -> Option<u64> {
        None
    }
    /// How prompts share content (stated in the summary, since traces without content get invented
    /// sharing or none).
    fn content_note(&self) -> &str;
}
