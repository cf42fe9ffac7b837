//! KV stores: where a replica keeps the KV cache of the requests it runs, and what it reuses between them.
//!
//! Every store implements [`KvStore`], the narrow interface a scheduler allocates through and a replica
//! reads statistics from. The scheduler owns its replica's store, as vLLM's `Scheduler` owns its
//! `kv_cache_manager` and SGLang's its `tree_cache`: a scheduler generic over its store keeps the
//! per-token allocation calls static, and one that needs a richer store (a radix tree's lock references)
//! holds the concrete type and uses its full API, showing the replica only this trait.
//!
//! What lives here:
//! - `paged.rs`: vLLM V1's `KVCacheManager` ([`KvCacheManager`]): a paged block pool with its prefix
//!   cache (engine-semantics K5-K10, P1), kept in one of two representations, `piece_pool.rs` (runs of
//!   blocks) and `block_pool.rs` (per block), with `hash_index.rs` for hash lookups;
//! - `sizing.rs`: how many blocks a GPU holds and the engine's limits, resolved as vLLM resolves them;
//! - `conversation.rs`: one KV entry per conversation, bounded by sessions, tokens or bytes with LRU
//!   eviction, released when the conversation ends (request-level serving stacks);
//! - `off.rs`: no KV cache; every decode token recomputes the whole context;
//! - `tier.rs`: offload tiers below GPU memory (CPU, local disk; vLLM's native connector or LMCache),
//!   a decorator ([`Tiered`]) around the paged store, with `lru_set.rs` as each tier's index;
//! - `persist.rs`: cache files (`--save-cache`, warm starts), built from [`KvStore::snapshot`];
//! - `radix.rs`: SGLang's radix cache (token-granular tree, lock references, LRU leaf eviction,
//!   deduplicating insertion; engine-semantics G2-G5), and `token_pool.rs`, SGLang's token pool around
//!   it ([`TokenPool`], `engine.kv_cache = "radix"`): slots available, cached in the tree, or owned by a
//!   request, insertion after compute, retraction.
//!
//! To add a store: one file here implementing [`KvStore`], one `KvKind` arm in `config.rs` (the
//! `engine.kv_cache` key), and its construction in `System::build` (`system.rs`); the exhaustive
//! match in `tests/leap.rs` then fails to compile until the leap tests cover it. A new store is correct
//! before it is fast: [`KvStore::decode_rule`] defaults to None, and the replica then steps one by one.
//! To let the replica leap over runs of decode steps, implement it under the leap contract written at
//! the top of `replica.rs` (condition 2).
//!
//! To add an offload tier (a remote store, say): a `TierKind` arm in `tier.rs` with its place in the
//! lookup order, its size and link in `OffloadConfig` (`config.rs`) resolved in `offload_params`
//! (`system.rs`); to add a connector with other rules, a `Backend` arm and its lookup and store in
//! `Tiered`.
//!
//! A store keeps its per-request state either in the request's one KV field ([`KvState`], the paged
//! store's block table) or in a map of its own keyed by request id. The request's block hashes
//! (`Request::block_hashes`) are not store state: they name the request's content, carried from turn to
//! turn and readable by routers; a store decides only whether and under which salt to compute them ([`KvStore::on_enqueue`]).

pub mod block_pool;
pub mod conversation;
mod hash_index;
mod lru_set;
pub mod off;
pub mod paged;
pub mod persist;
pub mod piece_pool;
pub mod radix;
pub mod sizing;
pub mod tier;
pub mod token_pool;

pub use block_pool::{BlockId, BlockPool};
pub use hash_index::{prefetch_ptr, PREFETCH_AHEAD};
pub use paged::{DecodeRule, KvCacheManager};
use piece_pool::PieceHit;
pub use piece_pool::PieceTable;

use crate::event::SessionId;
use crate::request::{Request, RequestId, RequestTable};
pub use tier::{CacheSnapshot, ExternalHit, OffloadStats, Tiered};
pub use token_pool::{RadixCounters, TokenPool};

/// A request's KV state in a paged store: the blocks it holds and how many of them the prefix cache has
/// registered. Other stores leave it empty.
#[derive(Clone, Debug, Default)]
pub struct KvState {
    /// Blocks held, in token order, when the store keeps per-block state (cache off, or after a
    /// duplicate registration; see `piece_pool`).
    pub block_table: Vec<BlockId>,
    /// Blocks held, when the store keeps runs of blocks (the prefix cache on).
    pub piece_table: PieceTable,
    /// How many leading blocks held are registered in the prefix cache.
    pub num_cached_blocks: usize,
}

impl KvState {
    /// KV blocks held.
    pub fn num_blocks_held(&self) -> u32 {
        self.block_table.len() as u32 + self.piece_table.blocks()
    }
}

/// Prefix-cache counters, counted as current vLLM counts them (P1, PR #48860): in tokens, once per admitted
/// request (see [`KvStore::record_admission`]); lookups for requests that were preempted before go to the
/// `preempted_*` counters, which vLLM does not export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub queries: u64,
    pub hits: u64,
    pub preempted_queries: u64,
    pub preempted_hits: u64,
}

/// A store's state at one instant, for the time series and the summary. Stores without blocks report
/// zeros for the block counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvStats {
    /// Tokens per block.
    pub block_size: u32,
    /// Blocks requests can hold (vLLM's `num_gpu_blocks` less its null block).
    pub usable_blocks: u32,
    /// Blocks held by live requests.
    pub used_blocks: u32,
    /// Blocks in the free queue (empty or cached-but-evictable).
    pub free_blocks: u32,
    /// Free blocks that still hold cached content.
    pub free_cached_blocks: u32,
    /// Cached blocks evicted so far (a conversation store: entries evicted).
    pub evictions: u64,
    pub prefix: PrefixStats,
    /// A per-conversation store's entries and counters (zero for other stores).
    pub store: conversation::StoreCounters,
    /// The offload tiers' counters and occupancy, for a store with tiers ([`Tiered`]).
    pub offload: Option<OffloadStats>,
    /// SGLang's cache counters and the tree's occupancy, for the radix store ([`TokenPool`]).
    pub radix: Option<RadixCounters>,
}

impl KvStats {
    /// K11: 1 - free / usable, cached-but-free blocks counting as free (free = usable - used); 0 for a
    /// store without blocks.
    pub fn usage(&self) -> f64 {
        self.usage_at(self.used_blocks)
    }

    /// [`KvStats::usage`] when `used` blocks are held: 1 - free / usable with free = usable - used, as
    /// K11 computes it from the free count. Non-decreasing in `used`, so the peak usage over a run is
    /// the usage at its peak block count.
    pub fn usage_at(&self, used: u32) -> f64 {
        if self.usable_blocks == 0 {
            return 0.0;
        }
        debug_assert!(used <= self.usable_blocks, "more blocks used than usable");
        1.0 - self.usable_blocks.saturating_sub(used) as f64 / self.usable_blocks as f64
    }
}

/// The result of a prefix lookup: the hit blocks (taken on admission by `allocate_slots`) and the tokens
/// they cover. Only the store that made it reads its blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheHit {
    pub(crate) hit: Hit,
    pub tokens: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Hit {
    #[default]
    None,
    Blocks(Vec<BlockId>),
    Pieces(PieceHit),
    /// The radix tree node a match ended on (the root for none).
    Radix(radix::NodeId),
}

impl CacheHit {
    /// The hit blocks' ids, when the pool keeps per-block state (tests).
    pub fn block_ids(&self) -> Option<&[BlockId]> {
        match &self.hit {
            Hit::Blocks(b) => Some(b),
            Hit::None => Some(&[]),
            Hit::Pieces(_) | Hit::Radix(_) => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match &self.hit {
            Hit::None => true,
            Hit::Blocks(b) => b.is_empty(),
            Hit::Pieces(p) => p.is_empty(),
            // A radix hit holds a node to lock, not blocks to take.
            Hit::Radix(_) => true,
        }
    }
}

/// When a decoding request's one-token allocation next does something, in leap steps (see
/// [`DecodeRule::event`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeEvent {
    /// The first step at which `allocate_slots(req, 1)` is not a no-op.
    pub at: u64,
    /// The first step whose token needs a new block (no earlier than `at`).
    pub new_block_at: u64,
}

/// The KV store of one replica.
///
/// Contract:
/// - The scheduler calls [`get_computed_blocks`](KvStore::get_computed_blocks),
///   [`allocate_slots`](KvStore::allocate_slots), [`record_admission`](KvStore::record_admission) and
///   [`free`](KvStore::free) (a preemption) in its own order while it plans a step, so a block
///   registered for one request can be hit by the next in the same step (vLLM K8).
/// - `allocate_slots` is all or nothing: false changes nothing, and the scheduler then preempts or stops
///   admitting. Every request holds its blocks from a successful allocation until `free`, which the
///   replica calls for a request that finished (before it is recorded), was aborted, or is still held
///   when a run stops.
/// - The replica calls the hooks: [`on_enqueue`](KvStore::on_enqueue) when a request arrives,
///   [`on_token`](KvStore::on_token) after a request that goes on samples a token,
///   [`after_step`](KvStore::after_step) at a step's end, [`on_session_end`](KvStore::on_session_end)
///   once a session's last turn has left the system. A leap over decode steps calls none of them per
///   step (see [`decode_rule`](KvStore::decode_rule)).
/// - Nothing here draws a random number (leap contract, condition 9).
pub trait KvStore {
    /// K6 + P1: the cached leading blocks a request with nothing computed (new or preempted) can reuse,
    /// capped so that its last token is always recomputed. Counts nothing (see `record_admission`).
    fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit;

    /// P1: records a lookup's queried and hit tokens once, when the request it was made for is admitted.
    fn record_admission(&mut self, req: &Request, hit_tokens: u32);

    /// K7 + K8: makes room for `num_new` more tokens after the computed ones and the cache hit (`hit` is
    /// non-empty only at admission). All or nothing: false changes nothing.
    fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool;

    /// K3 / K10: releases everything the request holds (finished, preempted or aborted).
    fn free(&mut self, req: &mut Request);

    /// O3 / L3: what lower tiers add after the GPU hit of `local_tokens` for a request with nothing
    /// computed (asked right after [`get_computed_blocks`](KvStore::get_computed_blocks)); nothing for a
    /// store without tiers. May refresh the tiers' recency (the engines touch on lookup). The scheduler
    /// then allocates the loaded tokens with the new ones.
    fn get_external_hit(&mut self, _req: &mut Request, _local_tokens: u32) -> ExternalHit {
        ExternalHit::default()
    }

    /// Records an external hit once, when the request it was made for is admitted (as P1 counts).
    fn record_external(&mut self, _req: &Request, _ext: &ExternalHit) {}

    /// The cache's content, reference-free, in eviction order (`--save-cache`): the GPU prefix cache's
    /// free cached blocks and each tier's units. Empty for a store that keeps none.
    fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot::default()
    }

    /// Fills an idle, empty store from a snapshot (`--warm-start`, or the tiers a restart keeps): the
    /// most recent entries that fit, in the snapshot's order. A store that keeps no cache ignores it.
    fn restore(&mut self, _snap: &CacheSnapshot) {}

    /// What survives a restart of the replica: the tiers that persist (local disk), none of the GPU.
    fn restart_keep(&self) -> CacheSnapshot {
        CacheSnapshot::default()
    }

    /// A request joins the replica: the store may salt it and set up its block hashes (computed
    /// lazily, when a lookup or allocation first needs them).
    fn on_enqueue(&mut self, _req: &mut Request) {}

    /// A request that goes on has sampled a token (K5: its block hashes may grow). At the end of a leap,
    /// once per running request.
    fn on_token(&mut self, _req: &mut Request) {}

    /// A step ended; `scheduled` is its plan (request, tokens), the requests still in `reqs` (finished
    /// ones are freed after this). For a store that inserts after compute, as SGLang does (G5). Not
    /// called inside a leap: a store that acts here must leave `decode_rule` at None.
    fn after_step(&mut self, _reqs: &mut RequestTable, _scheduled: &[(RequestId, u32)]) {}

    /// Session `session` has ended: its last turn left the system (finished, rejected or failed, after
    /// that turn's `free`), so a per-conversation store may drop its entry. Every replica's store is told,
    /// once, whichever replicas ran the session's turns; never for a session still running when a run
    /// stops. Called between events, so a replica may have a step in flight.
    fn on_session_end(&mut self, _session: SessionId) {}

    /// True for a store that keeps no KV between steps, so that every decode token recomputes the whole
    /// context: the replica then prices a decode token of a request with c tokens computed as a prefill
    /// chunk of c tokens at context c. A fixed property of the store (read once, at the replica's start).
    fn recomputes_context(&self) -> bool {
        false
    }

    /// Blocks held by live requests (read once per step: the usage integral and its peak; the usage
    /// itself comes from [`KvStats::usage_at`], monotone in this count).
    fn used_blocks(&self) -> u32;

    /// Counters and occupancy now.
    fn stats(&self) -> KvStats;

    /// Invariant 2: the store's own invariants, and what each of `reqs` (every request of the replica)
    /// holds agreeing with the store. An error describes the first violation.
    fn check_invariants(&self, reqs: &RequestTable) -> Result<(), String>;

    /// Leap contract, condition 2: the rule that says, for a decoding request, at which steps its
    /// one-token `allocate_slots` does something ([`DecodeRule::event`], evaluated by the replica for
    /// every running request without a call per request). The rule reads the blocks a request holds in
    /// its [`KvState`], so only a store that keeps them there can return one. Returning a rule promises that between those
    /// steps the call changes nothing, that `on_token` may be deferred to the leap's end, that
    /// `after_step` does nothing, that decode tokens are not recomputed, and that a step's allocations
    /// fail exactly when [`leap_fits`](KvStore::leap_fits) says no. None (the default) declines: the
    /// replica steps one by one.
    fn decode_rule(&self) -> Option<DecodeRule> {
        None
    }

    /// Whether one decode step's allocations, `new_blocks` new blocks in all, succeed (only asked of a
    /// store that has a `decode_rule`).
    fn leap_fits(&self, _new_blocks: u32) -> bool {
        false
    }
}
