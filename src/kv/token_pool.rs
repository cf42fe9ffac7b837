//! `engine.kv_cache = "radix"`: SGLang's token pool with its radix cache, the store of
//! `engine.kind = "sglang"` (engine-semantics G1-G5, G10, G11; SGLang's
//! `mem_cache/{radix_cache,allocator,common}.py`).
//!
//! The pool has `max_total_tokens` slots of one token each (SGLang's default `page_size` = 1). Every
//! slot is in exactly one place (invariant 2 of this store):
//! - **available**: free (`token_to_kv_pool_allocator.available_size()`);
//! - **in the tree** ([`RadixCache`]): cached tokens, *evictable* when no request locks their node,
//!   *protected* when one does;
//! - **owned** by a request: KV it computed that is not in the tree yet (SGLang inserts after compute,
//!   G5), so that available + tree + owned = `max_total_tokens` at every instant.
//!
//! A request's state here ([`Held`]) is the node its tree prefix ends on (locked), that prefix's length
//! and the tokens it owns; prefix + owned = its computed tokens. The operations, in SGLang's terms:
//! - admission ([`KvStore::get_computed_blocks`] then [`KvStore::allocate_slots`] with the hit):
//!   `match_prefix` on the request's tokens less its last one, then `inc_lock_ref` on the node;
//! - allocation ([`KvStore::allocate_slots`], [`TokenPool::alloc_decode`]): `alloc_token_slots`,
//!   which evicts from the tree **the whole amount asked** when fewer slots are available
//!   (`evict_from_tree_cache`, G4);
//! - after a prefill chunk ([`KvStore::after_step`]): `cache_unfinished_req`, which inserts the
//!   computed tokens, frees the request's copies of tokens the tree already held (SGLang deduplicates),
//!   and moves the lock to the new last node;
//! - finish or abort ([`KvStore::free`]): `cache_finished_req`, the same insertion, then the lock
//!   released: the request's KV stays in the tree, evictable;
//! - retraction ([`TokenPool::retract`], G10): the request's own slots freed *without* insertion, its
//!   lock released, then the tree evicts 20 tokens per request still running if fewer are available.
//!
//! With HiCache ([`TokenPool::with_hicache`]) the tree has a host tier (see `radix.rs`): the pool times
//! the copies to host on the host link, one after another, and unlocks each node when its copy ends
//! ([`TokenPool::advance`], each round, as SGLang's `writing_check`); at admission a host hit of at least
//! [`LOAD_BACK_THRESHOLD`] tokens is loaded back into GPU slots, all or nothing
//! ([`TokenPool::load_back`]).
//!
//! With the radix cache disabled (`engine.prefix_caching = false`, SGLang's `--disable-radix-cache`,
//! its `ChunkCache`) nothing is matched or inserted: a request owns all its tokens until it ends.
//!
//! Accounting: tree access times are a counter advanced by every match and insertion (SGLang stamps
//! `time.monotonic()`, distinct for every call), so eviction order follows call order exactly.
//! Statistics: vLLM-named prefix counters (queries = tokens of each admitted request, hits = its match,
//! as P1 counts), and SGLang's `cache_hit_rate` (G11: hit tokens / (hit + new input tokens) over prefill
//! batches, continuation chunks counting input only) in [`RadixCounters`]. Usage is SGLang's
//! `token_usage` (G11): a "block" is one token, used = total - available - evictable.

use super::radix::{Match, NodeId, RadixCache, Run, TierMatch, WritePolicy, ROOT};
use super::{CacheHit, Hit, KvStats, KvStore, PrefixStats};
use crate::fasthash::FastMap;
use crate::request::{Request, RequestId, RequestTable};

/// Host tokens below which a host hit is recomputed rather than loaded (SGLang HiRadixCache
/// `load_back_threshold`, H4).
pub const LOAD_BACK_THRESHOLD: u32 = 10;

/// SGLang's hierarchical cache (HiCache, H1-H4): a host pool below the GPU's, and the link between.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HiCacheParams {
    /// Host pool, tokens (`hicache_ratio` x the GPU pool, or `hicache_size`).
    pub host_tokens: u64,
    pub write_policy: WritePolicy,
    /// KV bytes per token (all layers), and the GPU-host link's bytes per second each way.
    pub bytes_per_token: u64,
    pub link_bytes_per_s: f64,
}

/// Tokens per request still running that a retraction makes available (SGLang
/// `SGLANG_RETRACT_DECODE_STEPS`, G9/G10).
pub const RETRACT_DECODE_STEPS: u64 = 20;

/// A request's state in the pool (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The node its tree prefix ends on, locked by it (the root for none).
    pub node: NodeId,
    /// Tokens of that prefix.
    pub prefix: u32,
    /// Slots it owns beyond the prefix.
    pub owned: u32,
    /// It computed a prefill chunk in the step under way: the chunk is inserted at the step's end.
    pub extend: bool,
}

/// SGLang's cache counters (G11) and the pool's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RadixCounters {
    /// Tokens matched in the tree at admission, over prefill batches (`log_hit_tokens`).
    pub hit_tokens: u64,
    /// Tokens computed in prefill batches (`log_input_tokens`), continuation chunks included.
    pub input_tokens: u64,
    /// Tokens evicted from the tree.
    pub evicted_tokens: u64,
    /// Duplicate tokens freed at insertion (a request computed what the tree already held).
    pub deduplicated_tokens: u64,
    /// Tokens in the tree now, and of those evictable.
    pub tree_tokens: u64,
    pub evictable_tokens: u64,
    /// HiCache: host tokens matched after the GPU match at admission and worth loading (at least
    /// [`LOAD_BACK_THRESHOLD`]), those loaded back (the rest, without GPU room, recomputed), tokens
    /// copied to host, host tokens deleted, host tokens held now, and the loads' nanoseconds.
    pub host_hit_tokens: u64,
    pub loaded_tokens: u64,
    pub written_tokens: u64,
    pub host_evicted_tokens: u64,
    pub host_tokens: u64,
    pub load_ns: u64,
}

impl RadixCounters {
    /// SGLang's `cache_hit_rate`: hit / (hit + input) tokens; None before any prefill.
    pub fn cache_hit_rate(&self) -> Option<f64> {
        let d = self.hit_tokens + self.input_tokens;
        (d > 0).then(|| self.hit_tokens as f64 / d as f64)
    }

    /// Adds another replica's (or an earlier store's) counters; the occupancy fields add too.
    pub fn add(&mut self, o: &RadixCounters) {
        self.hit_tokens += o.hit_tokens;
        self.input_tokens += o.input_tokens;
        self.evicted_tokens += o.evicted_tokens;
        self.deduplicated_tokens += o.deduplicated_tokens;
        self.tree_tokens += o.tree_tokens;
        self.evictable_tokens += o.evictable_tokens;
        self.host_hit_tokens += o.host_hit_tokens;
        self.loaded_tokens += o.loaded_tokens;
        self.written_tokens += o.written_tokens;
        self.host_evicted_tokens += o.host_evicted_tokens;
        self.host_tokens += o.host_tokens;
        self.load_ns += o.load_ns;
    }
}

/// SGLang's token pool and radix cache (module docs). Sizes in tokens.
#[derive(Clone, Debug)]
pub struct TokenPool {
    tree: RadixCache,
    total: u64,
    available: u64,
    /// Every request that holds slots or a lock.
    held: FastMap<RequestId, Held>,
    owned: u64,
    /// The radix cache is on (else SGLang's `ChunkCache`: no matching, no insertion).
    enabled: bool,
    /// Salt requests by session (`prefix_cache_scope = "session"`, SGLang's `extra_key` namespace).
    session_scope: bool,
    /// The tree's clock (module docs).
    tick: u64,
    prefix: PrefixStats,
    counters: RadixCounters,
    /// HiCache's link, when on.
    hicache: Option<HiCacheParams>,
    /// Write-throughs in flight, in the order they were begun: the node (locked), its tokens, and when
    /// its copy ends (None until the first [`TokenPool::advance`] after it began, at the step's end).
    writes: Vec<(NodeId, u64, Option<crate::time::SimTime>)>,
    /// When the GPU-to-host direction of the link is free: copies to host run one after another.
    link_free: crate::time::SimTime,
}

impl TokenPool {
    /// An empty pool of `max_total_tokens` slots; `enabled` turns the radix cache on.
    pub fn new(max_total_tokens: u64, enabled: bool) -> TokenPool {
        TokenPool {
            tree: RadixCache::new(),
            total: max_total_tokens,
            available: max_total_tokens,
            held: FastMap::default(),
            owned: 0,
            enabled,
            session_scope: false,
            tick: 0,
            prefix: PrefixStats::default(),
            counters: RadixCounters::default(),
            hicache: None,
            writes: Vec::new(),
            link_free: crate::time::SimTime::ZERO,
        }
    }

    /// The same (empty) pool with SGLang's host tier below it (HiCache; only with the radix cache on).
    pub fn with_hicache(mut self, p: HiCacheParams) -> TokenPool {
        if self.enabled {
            self.tree = std::mem::take(&mut self.tree).with_host(p.host_tokens, p.write_policy);
            self.hicache = Some(p);
        }
        self
    }

    /// Seconds to move `tokens` tokens' KV over the host link.
    fn link_time(&self, tokens: u64) -> crate::time::SimDuration {
        let p = self.hicache.expect("HiCache on");
        crate::time::SimDuration::from_secs_f64(
            tokens as f64 * p.bytes_per_token as f64 / p.link_bytes_per_s,
        )
    }

    /// Brings the write-throughs up to `now` (SGLang's `writing_check`, each round): the copies begun
    /// since the last call queue on the GPU-to-host link from `now` (one at a time, each its bytes over
    /// the link), and a finished one unlocks its node.
    pub fn advance(&mut self, now: crate::time::SimTime) {
        if self.hicache.is_none() {
            return;
        }
        for (node, len) in self.tree.take_writes() {
            self.writes.push((node, len as u64, None));
        }
        let mut i = 0;
        while i < self.writes.len() {
            let (node, len, done) = self.writes[i];
            let done = done.unwrap_or_else(|| {
                let end = self.link_free.max(now) + self.link_time(len);
                self.link_free = end;
                end
            });
            if done <= now {
                self.tree.dec_lock_ref(node);
                self.writes.remove(i);
            } else {
                self.writes[i].2 = Some(done);
                i += 1;
            }
        }
    }

    /// When the earliest copy to host in flight ends (its node unlocks), if any.
    pub fn next_write_done(&self) -> Option<crate::time::SimTime> {
        self.writes.iter().filter_map(|w| w.2).min()
    }

    /// The same pool, salting each request's tokens with its session when `scope` is `session`.
    pub fn with_scope(mut self, scope: crate::config::CacheScope) -> TokenPool {
        self.session_scope = scope == crate::config::CacheScope::Session;
        self
    }

    /// Whether the radix cache is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Free slots (`available_size()`).
    pub fn available(&self) -> u64 {
        self.available
    }

    /// Tokens in unlocked tree nodes (`evictable_size()`).
    pub fn evictable(&self) -> u64 {
        self.tree.evictable_size()
    }

    /// `max_total_tokens`.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The request's state, if it holds anything.
    pub fn held(&self, id: RequestId) -> Option<&Held> {
        self.held.get(&id)
    }

    /// The tree (read-only: tests and checks).
    pub fn tree(&self) -> &RadixCache {
        &self.tree
    }

    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The request's first `n` tokens as runs: its prompt's segments, then its output, each content id
    /// salted when the cache is scoped to sessions.
    pub fn key(&self, req: &Request, n: u32) -> Vec<Run> {
        let salt = req.salt;
        let name = |c: u64| {
            if salt == 0 {
                c
            } else {
                // Any fixed bijection of the content for a given salt keeps sessions apart.
                (c ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17)
            }
        };
        let mut out = Vec::with_capacity(req.prompt.len() + 1);
        let mut left = n;
        let segs = req
            .prompt
            .iter()
            .map(|s| (s.content, s.len))
            .chain(std::iter::once((req.output_content, req.num_output_tokens)));
        for (content, len) in segs {
            if left == 0 {
                break;
            }
            let take = len.min(left);
            if take > 0 {
                out.push(Run {
                    content: name(content),
                    start: 0,
                    len: take,
                });
            }
            left -= take;
        }
        out
    }

    /// The longest cached prefix of the request's tokens less its last one (SGLang matches
    /// `adjust_max_prefix_ids`, so the last token is always computed), stamping its path (G2). The
    /// root and 0 tokens with the cache off.
    pub fn match_request(&mut self, req: &Request) -> Match {
        self.match_tiers(req).device
    }

    /// The waiting requests' keys for the `lpm` order, each less its last token, and the tree with a
    /// fresh stamp to match them against.
    pub fn lpm_scene(&mut self, reqs: &[&Request]) -> (Vec<Vec<Run>>, &mut RadixCache, u64) {
        let keys = reqs
            .iter()
            .map(|r| self.key(r, r.num_tokens().saturating_sub(1)))
            .collect();
        let now = self.tick();
        (keys, &mut self.tree, now)
    }

    /// A match as the hit [`KvStore::allocate_slots`] takes at admission (it locks the node).
    pub fn hit(m: Match) -> CacheHit {
        CacheHit {
            hit: Hit::Radix(m.node),
            tokens: m.tokens,
        }
    }

    /// The request's match through both tiers (HiCache), capped as [`TokenPool::match_request`].
    pub fn match_tiers(&mut self, req: &Request) -> TierMatch {
        if !self.enabled {
            let none = Match {
                tokens: 0,
                node: ROOT,
            };
            return TierMatch {
                device: none,
                host_tokens: 0,
                host_node: ROOT,
            };
        }
        let key = self.key(req, req.num_tokens().saturating_sub(1));
        let now = self.tick();
        self.tree.match_tiers(&key, now)
    }

    /// Whether a host hit of `tokens` is worth loading (HiCache on, at least
    /// [`LOAD_BACK_THRESHOLD`] tokens).
    pub fn loads(&self, tokens: u32) -> bool {
        self.hicache.is_some() && tokens >= LOAD_BACK_THRESHOLD
    }

    /// SGLang's `load_back` for match `m` (whose GPU node the caller holds locked): GPU slots for its
    /// host tokens, evicting as needed, then the copy. All or nothing: None, changing nothing but
    /// evictions, when the slots cannot be had. Returns the whole match, now on the GPU, and the copy's
    /// time.
    pub fn load_back(&mut self, m: &TierMatch) -> Option<(Match, crate::time::SimDuration)> {
        let n = m.host_tokens as u64;
        self.evict_if_needed(n);
        // Under write_back the eviction copies nodes to host, which may delete host-only leaves: the
        // match's own, if it was the least recently used. (Leaves go first, so its path is whole while
        // its last node lives, and an eviction allocates no node, so the id was not reused.)
        if self.available < n || !self.tree.is_live(m.host_node) {
            return None;
        }
        self.available -= n;
        let loaded = self.tree.load_back(m.host_node);
        debug_assert_eq!(loaded as u64, n);
        let t = self.link_time(n);
        self.counters.loaded_tokens += n;
        self.counters.load_ns += t.0;
        Some((
            Match {
                tokens: m.device.tokens + m.host_tokens,
                node: m.host_node,
            },
            t,
        ))
    }

    /// Pins `node`'s path (the budget check of SGLang's `add_one_req` runs under a temporary lock).
    pub fn lock(&mut self, node: NodeId) {
        self.tree.inc_lock_ref(node);
    }

    /// Releases a pin taken by [`TokenPool::lock`].
    pub fn unlock(&mut self, node: NodeId) {
        self.tree.dec_lock_ref(node);
    }

    /// SGLang's `evict_from_tree_cache`: if fewer than `tokens` slots are available, evicts `tokens`
    /// (the whole amount, not the shortfall) from the tree (G4).
    pub fn evict_if_needed(&mut self, tokens: u64) {
        if self.available < tokens {
            let freed = self.tree.evict(tokens);
            self.available += freed;
            self.counters.evicted_tokens += freed;
        }
    }

    /// Counts host tokens an admitted request matched and was to load (HiCache).
    pub fn note_host_hit(&mut self, tokens: u32) {
        self.counters.host_hit_tokens += tokens as u64;
    }

    /// Counts a prefill batch's tokens for `cache_hit_rate` (G11): `hit` matched at admission (0 for
    /// a continuation chunk) and `input` computed.
    pub fn log_prefill(&mut self, hit: u32, input: u32) {
        self.counters.hit_tokens += hit as u64;
        self.counters.input_tokens += input as u64;
    }

    /// One decode token's slot for `req` (SGLang's `prepare_for_decode` allocates the batch's slots
    /// after [`TokenPool::evict_if_needed`] made room); false, changing nothing, when none is free.
    pub fn alloc_decode(&mut self, req: &Request) -> bool {
        self.alloc(req.id, 1)
    }

    fn alloc(&mut self, id: RequestId, n: u32) -> bool {
        self.evict_if_needed(n as u64);
        if self.available < n as u64 {
            return false;
        }
        let h = self
            .held
            .get_mut(&id)
            .expect("allocation for a held request");
        h.owned += n;
        self.available -= n as u64;
        self.owned += n as u64;
        true
    }

    /// Retraction (G10): frees the request's own slots without inserting them, drops its lock, then
    /// evicts [`RETRACT_DECODE_STEPS`] tokens for each of the `remaining` requests still running if
    /// fewer are available.
    pub fn retract(&mut self, req: &Request, remaining: usize) {
        if let Some(h) = self.held.remove(&req.id) {
            self.available += h.owned as u64;
            self.owned -= h.owned as u64;
            if h.node != ROOT {
                self.tree.dec_lock_ref(h.node);
            }
        }
        self.evict_if_needed(RETRACT_DECODE_STEPS * remaining as u64);
    }

    /// SGLang's `cache_unfinished_req` / `cache_finished_req` for request `req` with `computed` tokens
    /// of KV: inserts them, frees its copies of what the tree held, and returns the node the inserted
    /// key ends on (unlocked; the caller moves the lock). With the cache off, nothing.
    fn insert_computed(&mut self, req: &Request, h: &mut Held, chunked: bool) -> Option<NodeId> {
        if !self.enabled {
            return None;
        }
        let computed = h.prefix + h.owned;
        debug_assert_eq!(computed, req.num_computed_tokens);
        let key = self.key(req, computed);
        let now = self.tick();
        let present = self.tree.insert_counting(&key, now, chunked);
        // Tokens [prefix, present) were computed again: the request's copies are duplicates.
        let dup = present.saturating_sub(h.prefix);
        self.available += dup as u64;
        self.counters.deduplicated_tokens += dup as u64;
        self.owned -= h.owned as u64;
        h.owned = 0;
        let m = self.tree.match_prefix(&key, now);
        debug_assert_eq!(m.tokens, computed, "an inserted key matches whole");
        Some(m.node)
    }
}

impl KvStore for TokenPool {
    /// The request's cached prefix (G2), its node carried in the hit for [`KvStore::allocate_slots`]
    /// to lock. Stamps the path; counts nothing.
    fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit {
        let m = self.match_request(req);
        TokenPool::hit(m)
    }

    fn record_admission(&mut self, req: &Request, hit_tokens: u32) {
        let p = &mut self.prefix;
        if req.was_preempted {
            p.preempted_queries += req.num_tokens() as u64;
            p.preempted_hits += hit_tokens as u64;
        } else {
            p.queries += req.num_tokens() as u64;
            p.hits += hit_tokens as u64;
        }
    }

    /// With a hit (admission): locks the hit's node and starts the request's state. Then `num_new`
    /// slots for a prefill chunk (inserted at the step's end), evicting first if needed; all or
    /// nothing.
    fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
        if let Hit::Radix(node) = hit.hit {
            debug_assert!(!self.held.contains_key(&req.id), "admitted twice");
            if node != ROOT {
                self.tree.inc_lock_ref(node);
            }
            self.held.insert(
                req.id,
                Held {
                    node,
                    prefix: hit.tokens,
                    owned: 0,
                    extend: false,
                },
            );
        }
        if num_new == 0 {
            return true;
        }
        if !self.alloc(req.id, num_new) {
            return false;
        }
        self.held.get_mut(&req.id).expect("held").extend = true;
        true
    }

    /// `cache_finished_req`: the request's computed tokens join the tree, its lock is released.
    fn free(&mut self, req: &mut Request) {
        let Some(mut h) = self.held.remove(&req.id) else {
            return;
        };
        // A request that computed nothing since its last insertion (it finished in the step whose end
        // inserted its prompt) adds nothing: SGLang inserts it once, at its finish, so no second hit is
        // counted.
        let fresh = h.owned > 0 && self.insert_computed(req, &mut h, false).is_some();
        if !fresh {
            self.available += h.owned as u64;
            self.owned -= h.owned as u64;
        }
        if h.node != ROOT {
            self.tree.dec_lock_ref(h.node);
        }
    }

    /// Salts the request by session under `prefix_cache_scope = "session"`.
    fn on_enqueue(&mut self, req: &mut Request) {
        req.salt = if self.session_scope {
            req.session + 1
        } else {
            0
        };
    }

    /// `cache_unfinished_req` for every request that computed a prefill chunk in the step (G5): its
    /// computed tokens become matchable, and its lock moves to their last node.
    fn after_step(&mut self, reqs: &mut RequestTable, scheduled: &[(RequestId, u32)]) {
        for &(id, _) in scheduled {
            let Some(mut h) = self.held.get(&id).copied() else {
                continue;
            };
            if !h.extend {
                continue;
            }
            h.extend = false;
            let r = &reqs[&id];
            // A chunk that leaves the prompt unfinished (no token sampled) is SGLang's `chunked`
            // insertion.
            let chunked = r.in_prefill;
            if let Some(node) = self.insert_computed(r, &mut h, chunked) {
                self.tree.inc_lock_ref(node);
                if h.node != ROOT {
                    self.tree.dec_lock_ref(h.node);
                }
                h.node = node;
                h.prefix = r.num_computed_tokens;
            }
            self.held.insert(id, h);
        }
    }

    /// Slots neither free nor evictable (SGLang's `token_usage` numerator).
    fn used_blocks(&self) -> u32 {
        (self.total - self.available - self.tree.evictable_size()) as u32
    }

    fn stats(&self) -> KvStats {
        let evictable = self.tree.evictable_size();
        KvStats {
            block_size: 1,
            usable_blocks: self.total as u32,
            used_blocks: self.used_blocks(),
            free_blocks: (self.available + evictable) as u32,
            free_cached_blocks: evictable as u32,
            evictions: self.counters.evicted_tokens,
            prefix: self.prefix,
            radix: Some(RadixCounters {
                tree_tokens: self.tree.total_size(),
                evictable_tokens: evictable,
                written_tokens: self.tree.host_tier().map_or(0, |h| h.written),
                host_evicted_tokens: self.tree.host_tier().map_or(0, |h| h.evicted),
                host_tokens: self.tree.host_tier().map_or(0, |h| h.used),
                ..self.counters
            }),
            ..KvStats::default()
        }
    }

    fn check_invariants(&self, reqs: &RequestTable) -> Result<(), String> {
        self.tree.debug_check();
        let owned: u64 = self.held.values().map(|h| h.owned as u64).sum();
        if owned != self.owned {
            return Err(format!(
                "requests own {owned} slots, counter says {}",
                self.owned
            ));
        }
        let sum = self.available + self.tree.total_size() + self.owned;
        if sum != self.total {
            return Err(format!(
                "available {} + tree {} + owned {} = {sum} slots, pool has {}",
                self.available,
                self.tree.total_size(),
                self.owned,
                self.total
            ));
        }
        for (id, h) in &self.held {
            let Some(r) = reqs.get(id) else {
                return Err(format!("request {id} holds slots but is not held"));
            };
            if h.prefix + h.owned != r.num_computed_tokens {
                return Err(format!(
                    "request {id}: prefix {} + owned {} != {} computed",
                    h.prefix, h.owned, r.num_computed_tokens
                ));
            }
        }
        match reqs
            .values()
            .find(|r| r.num_computed_tokens > 0 && !self.held.contains_key(&r.id))
        {
            Some(r) => Err(format!(
                "request {} computed {} tokens but holds no slots",
                r.id, r.num_computed_tokens
            )),
            None => Ok(()),
        }
    }
}
