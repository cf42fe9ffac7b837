//! Workloads: the conversational session generator (`conversation.rs`), trace replay (`trace/`, one
//! reader per format), their distributions (`dist.rs`), the content model with its tagged hash chains
//! (`content.rs`), and export of a generated workload as a trace (`export.rs`).
//!
//! To add a workload kind: one file implementing [`Workload`], one `WorkloadKind` arm in `config.rs`, and
//! its construction in `System::workload` (`system.rs`). To add a trace format: see `trace/`.

pub mod content;
pub mod conversation;
pub mod dist;
pub mod export;
pub mod trace;

use crate::event::SessionId;
use crate::time::SimTime;
use conversation::Release;

/// A source of sessions and their turns.
///
/// Contract: `next_session_start` yields sessions in non-decreasing start time and is called once after each
/// session starts (and once at the beginning); `start_session` releases the session's first turn at its
/// start; after a turn completes, `on_turn_complete` says when (if ever) the next turn is released, and
/// `release_turn` is then called at that time. Every draw comes from workload streams only, so the
/// requests do not depend on the engine, only their release times do.
pub trait Workload {
    fn next_session_start(&mut self) -> Option<(SessionId, SimTime)>;
    fn start_session(&mut self, id: SessionId, now: SimTime) -> Option<Release>;
    fn release_turn(&mut self, id: SessionId, now: SimTime) -> Option<Release>;
    fn on_turn_complete(
        &mut self,
        id: SessionId,
        output_tokens: u32,
        now: SimTime,
    ) -> Option<SimTime>;
    /// Hands back a finished turn's chained block hashes (prompt + outputs, full blocks), called just before
    /// `on_turn_complete`. A workload whose next turn's prompt starts with exactly these tokens may seed the
    /// next request with them instead of rehashing its whole context; the default drops them.
    fn carry_block_hashes(&mut self, _id: SessionId, _hashes: content::HashChain) {}
    fn sessions_started(&self) -> u64;
    /// How prompts share content (stated in the summary, since traces without content get invented
    /// sharing or none).
    fn content_note(&self) -> &str;
}
