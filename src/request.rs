//! A request: one turn of a session, its progress through the engine, and its lifecycle timestamps.
//!
//! The request's true output length is deliberately absent: the engine sees only `max_tokens`
//! (invariant 6); the replica's stop oracle, which models the model emitting EOS, holds the true length.

use crate::event::{ReplicaId, SessionId};
use crate::kv::KvState;
use crate::time::SimTime;
use crate::workload::content::{extend_block_hashes_tail, ChainTag, HashChain, Segment};

pub type RequestId = u64;

/// The requests of one replica, by id. Boxed, so that a table slot stays 8 bytes while a request is a
/// few hundred.
pub type RequestTable = crate::idtable::IdTable<Box<Request>>;

/// How a request left the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Finished,
    /// Refused at arrival: its prompt does not fit the model's context (the workload's refusal), or the
    /// router placed it nowhere (`cluster::Route::Reject`).
    Rejected,
    /// Still in flight when the run stopped (`output.max_sim_time_s`).
    Unfinished,
    /// Recorded as failed by the replayed trace (BurstGPT rows with 0 response tokens): not run.
    Failed,
    /// Its client gave up with no first token after `workload.client_timeout_s`; aborted.
    TimedOut,
    /// Dropped by its replica: a restart or a model swap aborted it (`failure = ReplicaRestart` or
    /// `ModelSwap`).
    Aborted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Finished => "finished",
            Status::Rejected => "rejected",
            Status::Unfinished => "unfinished",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Aborted => "aborted",
        }
    }
}

/// Why a request was refused or abandoned (`requests.csv` `failure_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Its prompt does not fit the model's context (the workload's refusal).
    ContextLength,
    /// The replica the router chose had `admission.max_waiting` requests waiting (HTTP 429).
    QueueFull,
    /// No replica took new requests: all down, draining or degraded (HTTP 503).
    Unavailable,
    /// No first token within `workload.client_timeout_s`.
    ClientTimeout,
    /// Its replica restarted while holding it (`restart` in `[[cluster.events]]`).
    ReplicaRestart,
    /// Its replica changed model while holding it (`swap_model`).
    ModelSwap,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::ContextLength,
        FailureReason::QueueFull,
        FailureReason::Unavailable,
        FailureReason::ClientTimeout,
        FailureReason::ReplicaRestart,
        FailureReason::ModelSwap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ContextLength => "context_length",
            FailureReason::QueueFull => "queue_full",
            FailureReason::Unavailable => "unavailable",
            FailureReason::ClientTimeout => "client_timeout",
            FailureReason::ReplicaRestart => "replica_restart",
            FailureReason::ModelSwap => "model_swap",
        }
    }
}

/// Why a request stopped generating, as OpenAI-compatible servers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model emitted EOS (the true response length was reached): `stop`.
    Eos,
    /// `max_tokens` or the context length reached: `length`.
    Length,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "stop",
            StopReason::Length => "length",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub id: RequestId,
    pub session: SessionId,
    /// 1-based turn number within the session.
    pub turn: u32,
    pub replica: ReplicaId,
    /// Lower is served first under priority scheduling.
    pub priority: i64,
    pub arrival: SimTime,
    /// The prompt as content segments.
    pub prompt: Vec<Segment>,
    pub prompt_tokens: u32,
    /// Content id of the tokens this request generates (they extend its block hashes, vLLM K5).
    pub output_content: u64,
    /// The generation cap the engine sees.
    pub max_tokens: u32,
    /// Cache salt, set by the replica's KV store at arrival: 0 for a global cache; the session id + 1
    /// under `prefix_cache_scope = "session"`.
    pub salt: u64,

    // Engine progress.
    pub num_output_tokens: u32,
    pub num_computed_tokens: u32,
    /// Chained hashes of every full block of prompt + outputs so far (shared with the prefix-cache runs
    /// holding some of them).
    pub block_hashes: HashChain,
    /// What the replica's KV store keeps for this request (`kv` module docs).
    pub kv: KvState,
    /// True from admission until the step that samples a token: the request's chunks are prefill.
    pub in_prefill: bool,
    /// Has been preempted at least once (its lookups count as `preempted_*`, vLLM P1).
    pub was_preempted: bool,

    // Lifecycle and accounting.
    pub first_scheduled: Option<SimTime>,
    pub first_token: Option<SimTime>,
    pub last_token: Option<SimTime>,
    pub finish: Option<SimTime>,
    /// Tokens counted as computed at first admission, from the GPU prefix cache and lower tiers together
    /// (vLLM `num_cached_tokens`).
    pub num_cached_tokens: Option<u32>,
    /// Of those, tokens loaded from the CPU and disk tiers (`kv.offload`), and how long the load took.
    pub cached_tokens_tier: [u32; 2],
    pub kv_load: crate::time::SimDuration,
    /// Why generation stopped (finished requests only).
    pub finish_reason: Option<StopReason>,
    /// Tokens computed in prefill chunks, recomputation after preemption included.
    pub prefilled_tokens: u64,
    pub preemptions: u32,
    /// The sampling profile (index into `workload.sampling`; 0 without profiles).
    pub sampling: u16,
    /// The request-level batch that ran it (`engine.kind = "dynamic"`), numbered per replica from 0.
    pub batch_id: Option<u64>,
    /// Padding tokens its batch computed to bring its prompt to the batch's longest.
    pub padding_tokens: u32,
    /// The workload knows no turn of its session follows this one (a closed-loop session's last turn),
    /// so a per-conversation store need not keep its KV.
    pub last_turn: bool,
    /// Attempts before this one (client retries, `workload.max_retries`): 0 for the first.
    pub attempt: u32,
    /// Why it was refused or abandoned (rejected and timed-out requests).
    pub failure: Option<FailureReason>,
    /// The probability that one of its draft tokens is accepted (speculative decoding; set by its
    /// replica at enqueue, 0 without speculation).
    pub spec_acceptance_rate: f64,
    /// Disaggregated serving: its stage and its timeline so far (None in an aggregated cluster).
    pub pd: Option<Box<PdState>>,
}

/// Where a request stands in a disaggregated cluster (`cluster.mode = "disaggregated"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdStage {
    /// On a prefill instance, with `max_tokens = 1` (vLLM's proxy): when it samples, its KV waits there
    /// for the decode instance to pull it.
    Prefill,
    /// On a decode instance. `remote_kv`: its prompt's KV is still on the prefill instance (the
    /// connector's `do_remote_prefill`), pulled at admission; false once pulled (a preempted request
    /// recomputes locally, as vLLM's consumed transfer parameters leave it).
    Decode { remote_kv: bool },
}

/// A disaggregated request's state and timeline; the times are when each part began or ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdState {
    pub stage: PdStage,
    /// What the client asked for and what the model will answer, held while the prefill instance runs
    /// it with `max_tokens = 1`.
    pub max_tokens: u32,
    pub true_output: u32,
    pub prefill_replica: ReplicaId,
    /// First scheduled on the prefill instance, and its one sample there.
    pub prefill_start: Option<SimTime>,
    pub prefill_end: Option<SimTime>,
    /// The KV pull: started when the decode instance admitted it, landed when it ended.
    pub transfer_start: Option<SimTime>,
    pub transfer_end: Option<SimTime>,
    pub transfer_bytes: u64,
    /// First scheduled on the decode instance after the pull.
    pub decode_start: Option<SimTime>,
}

impl PdState {
    /// The timeline of a request that finished at `finish`, in nanoseconds: prefill queue, prefill,
    /// transfer, decode queue (waiting for admission before the pull and for a step after it), decode.
    /// They add up to its E2E. None unless every part happened.
    pub fn timeline(&self, arrival: SimTime, finish: SimTime) -> Option<[u64; 5]> {
        let (ps, pe) = (self.prefill_start?, self.prefill_end?);
        let (ts, te, ds) = (self.transfer_start?, self.transfer_end?, self.decode_start?);
        Some([
            ps.since(arrival).0,
            pe.since(ps).0,
            te.since(ts).0,
            ts.since(pe).0 + ds.since(te).0,
            finish.since(ds).0,
        ])
    }
}

impl Request {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: RequestId,
        session: SessionId,
        turn: u32,
        priority: i64,
        arrival: SimTime,
        prompt: Vec<Segment>,
        output_content: u64,
        max_tokens: u32,
    ) -> Request {
        // Only a rejected prompt can exceed u32::MAX tokens (an admitted one is below max_model_len): it
        // is recorded as u32::MAX.
        let prompt_tokens = prompt
            .iter()
            .map(|s| s.len as u64)
            .sum::<u64>()
            .min(u32::MAX as u64) as u32;
        Request {
            id,
            session,
            turn,
            replica: 0,
            priority,
            arrival,
            prompt,
            prompt_tokens,
            output_content,
            max_tokens,
            salt: 0,
            num_output_tokens: 0,
            num_computed_tokens: 0,
            block_hashes: HashChain::default(),
            kv: KvState::default(),
            in_prefill: false,
            was_preempted: false,
            first_scheduled: None,
            first_token: None,
            last_token: None,
            finish: None,
            num_cached_tokens: None,
            cached_tokens_tier: [0; 2],
            kv_load: crate::time::SimDuration(0),
            finish_reason: None,
            prefilled_tokens: 0,
            preemptions: 0,
            sampling: 0,
            batch_id: None,
            padding_tokens: 0,
            last_turn: false,
            attempt: 0,
            failure: None,
            spec_acceptance_rate: 0.0,
            pd: None,
        }
    }

    /// The same request sent again at `now` by its client (a retry): the same id, session, turn, prompt
    /// and parameters, attempt + 1, and none of this attempt's progress.
    pub fn retry(&self, now: SimTime) -> Request {
        let mut r = Request::new(
            self.id,
            self.session,
            self.turn,
            self.priority,
            now,
            self.prompt.clone(),
            self.output_content,
            self.max_tokens,
        );
        r.prompt_tokens = self.prompt_tokens;
        r.sampling = self.sampling;
        r.last_turn = self.last_turn;
        r.attempt = self.attempt + 1;
        r
    }

    /// The same attempt handed back by a leaving replica before it started, to be routed again: its
    /// arrival and attempt kept, nothing else.
    pub fn reroute(&self) -> Request {
        let mut r = self.retry(self.arrival);
        r.attempt = self.attempt;
        r
    }

    /// Prompt plus outputs so far (vLLM `num_tokens`).
    pub fn num_tokens(&self) -> u32 {
        self.prompt_tokens + self.num_output_tokens
    }

    /// Debug builds: the hashes held (possibly carried over from the session's previous turn) are exactly
    /// the hashes of this request's own tokens.
    pub fn debug_check_block_hashes(&self, block_size: u32) {
        if cfg!(debug_assertions) && !self.block_hashes.is_empty() {
            let mut fresh = Vec::new();
            self.extend_hashes(block_size, &mut fresh);
            let held = self.block_hashes.hashes();
            assert_eq!(
                fresh.get(..held.len()),
                Some(&held[..]),
                "request {}: block hashes are not its tokens' hashes",
                self.id
            );
        }
    }

    /// Brings `block_hashes` up to date with every full block of prompt + outputs.
    pub fn update_block_hashes(&mut self, block_size: u32) {
        // Most calls (one per token) find nothing to add: known without reading the shared list.
        let full = self.num_tokens() as u64 / block_size as u64;
        if self.block_hashes.covers(full) {
            return;
        }
        let have = self.block_hashes.len() as u64 * block_size as u64;
        if (self.num_tokens() as u64) < have + block_size as u64 {
            return;
        }
        let mut chain = std::mem::take(&mut self.block_hashes);
        let tag = ChainTag::new(block_size, self.salt);
        chain.append(tag, |hashes| self.extend_hashes(block_size, hashes));
        self.block_hashes = chain;
    }

    /// Extends `hashes` (this request's first `hashes.len()` block hashes) over prompt + outputs so far.
    fn extend_hashes(&self, block_size: u32, hashes: &mut Vec<u64>) {
        let outputs = Segment {
            content: self.output_content,
            len: self.num_output_tokens,
        };
        extend_block_hashes_tail(
            &self.prompt,
            self.prompt_tokens,
            outputs,
            block_size,
            self.salt,
            hashes,
        );
    }
}
