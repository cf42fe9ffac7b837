//! vLLM V1's `KVCacheManager`: a paged block pool with its prefix cache, and the per-request operations
//! the scheduler calls (engine-semantics K5-K10, P1).
//!
//! Two representations of one behaviour: with the prefix cache on, the pool keeps runs of blocks
//! (`piece_pool`), which costs per run of blocks instead of per block; if a registration could create a
//! duplicate block (K8), which that model cannot hold, the manager hands its whole state over to the
//! per-block pool (`block_pool`) and carries on there. Without the prefix cache the per-block pool is
//! anonymous (a stack of ids). The choice never shows in results: only which content is cached, which
//! lookups hit and the counts are observable, and those are the same.

use super::hash_index::PREFETCH_AHEAD;
use super::piece_pool::{PieceHit, PiecePool, Translation};
use super::{BlockId, BlockPool, CacheHit, DecodeEvent, Hit, KvStats, KvStore, PrefixStats};
use crate::config::CacheScope;
use crate::request::{Request, RequestId, RequestTable};
use crate::workload::content::ChainTag;

#[derive(Clone, Debug)]
enum Pool {
    Pieces(PiecePool),
    Blocks(BlockPool),
}

/// The KV manager of one replica.
#[derive(Clone, Debug)]
pub struct KvCacheManager {
    pool: Pool,
    /// After a hand-over from pieces to blocks: the block ids of tables still in piece form.
    translation: Option<Translation>,
    block_size: u32,
    caching: bool,
    /// `prefix_cache_scope = "session"`: each request is salted with its session (see `on_enqueue`).
    session_scope: bool,
    stats: PrefixStats,
    /// The last lookup: request and hit (see `get_computed_blocks`).
    memo: Option<(RequestId, Hit)>,
    /// Emptied block lists kept for reuse (block tables of released requests, spent hits): a request's
    /// table grows to hundreds of blocks, and allocating and growing one per request showed in profiles.
    spare: Vec<Vec<BlockId>>,
    spare_hits: Vec<PieceHit>,
}

/// Most block lists `KvCacheManager::spare` keeps.
const MAX_SPARE: usize = 64;

impl KvCacheManager {
    pub fn new(num_blocks: u32, block_size: u32, caching: bool) -> KvCacheManager {
        KvCacheManager {
            pool: if caching {
                Pool::Pieces(PiecePool::new(num_blocks))
            } else {
                Pool::Blocks(BlockPool::anonymous(num_blocks))
            },
            translation: None,
            block_size,
            caching,
            session_scope: false,
            stats: PrefixStats::default(),
            memo: None,
            spare: Vec::new(),
            spare_hits: Vec::new(),
        }
    }

    /// A manager that keeps per-block state from the start (tests compare the two representations).
    pub fn per_block(num_blocks: u32, block_size: u32, caching: bool) -> KvCacheManager {
        let mut kv = KvCacheManager::new(num_blocks, block_size, caching);
        kv.pool = Pool::Blocks(if caching {
            BlockPool::new(num_blocks)
        } else {
            BlockPool::anonymous(num_blocks)
        });
        kv
    }

    /// The prefix cache's scope: under `Session` a request hits only blocks its own session produced,
    /// modelled as a per-session cache salt (vLLM's `cache_salt`, K5) that this store sets at arrival.
    pub fn with_scope(mut self, scope: CacheScope) -> KvCacheManager {
        self.session_scope = scope == CacheScope::Session;
        self
    }

    /// True while the pool keeps runs of blocks (see the module docs).
    pub fn keeps_pieces(&self) -> bool {
        matches!(self.pool, Pool::Pieces(_))
    }

    /// The per-block pool, if the manager keeps per-block state (tests).
    pub fn block_pool(&self) -> Option<&BlockPool> {
        match &self.pool {
            Pool::Blocks(p) => Some(p),
            Pool::Pieces(_) => None,
        }
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Prefix-cache counters so far.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.stats
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    /// Total blocks, the null block included.
    pub fn num_blocks(&self) -> u32 {
        match &self.pool {
            Pool::Pieces(p) => p.num_blocks(),
            Pool::Blocks(p) => p.num_blocks(),
        }
    }

    /// Blocks in the free queue (empty or cached-but-evictable).
    pub fn num_free(&self) -> u32 {
        match &self.pool {
            Pool::Pieces(p) => p.num_free(),
            Pool::Blocks(p) => p.num_free(),
        }
    }

    /// Free blocks that still hold cached content.
    pub fn num_free_cached(&self) -> u32 {
        match &self.pool {
            Pool::Pieces(p) => p.num_free_cached(),
            Pool::Blocks(p) => p.num_free_cached(),
        }
    }

    /// Blocks referenced by live requests (the null block excluded).
    pub fn num_used(&self) -> u32 {
        self.num_blocks() - 1 - self.num_free()
    }

    /// Cached blocks evicted so far.
    pub fn evictions(&self) -> u64 {
        match &self.pool {
            Pool::Pieces(p) => p.evictions(),
            Pool::Blocks(p) => p.evictions(),
        }
    }

    /// An empty block list, reused if one is spare.
    fn take_spare(&mut self) -> Vec<BlockId> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(&mut self, mut v: Vec<BlockId>) {
        if v.capacity() > 0 && self.spare.len() < MAX_SPARE {
            v.clear();
            self.spare.push(v);
        }
    }

    fn recycle_hit(&mut self, hit: Hit) {
        match hit {
            Hit::None => {}
            Hit::Blocks(b) => self.recycle(b),
            Hit::Pieces(mut p) => {
                if p.capacity() > 0 && self.spare_hits.len() < MAX_SPARE {
                    p.clear();
                    self.spare_hits.push(p);
                }
            }
            Hit::Radix(_) => unreachable!("a radix hit on the paged pool"),
        }
    }

    /// Hands the piece pool's state over to a per-block pool (see the module docs). Tables in piece form
    /// are translated when their requests next come here (`adopt`).
    fn hand_over(&mut self) {
        let Pool::Pieces(p) = &self.pool else {
            return;
        };
        let (blocks, tr) = p.to_block_pool();
        self.pool = Pool::Blocks(blocks);
        self.translation = Some(tr);
        self.memo = None;
    }

    /// After a hand-over: gives a request still holding a piece table its block table.
    fn adopt(&mut self, req: &mut Request) {
        if req.kv.piece_table.is_empty() {
            return;
        }
        if let Some(tr) = self.translation.as_mut() {
            debug_assert!(req.kv.block_table.is_empty());
            req.kv.block_table = tr.translate(&mut req.kv.piece_table);
        }
    }

    /// `allocate_slots` past its fast path.
    #[inline(never)]
    fn allocate_general(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
        if let Pool::Pieces(_) = self.pool {
            match self.allocate_pieces(req, num_new, hit) {
                Ok(done) => return done,
                Err(hit) => {
                    // A registration could duplicate a cached block: carry on per block, hit included.
                    self.hand_over();
                    let tr = self.translation.as_ref().expect("just handed over");
                    let blocks = match &hit.hit {
                        Hit::Pieces(p) => tr.hit_blocks(p),
                        _ => Vec::new(),
                    };
                    let hit = CacheHit {
                        hit: Hit::Blocks(blocks),
                        tokens: hit.tokens,
                    };
                    return self.allocate_blocks(req, num_new, hit);
                }
            }
        }
        self.allocate_blocks(req, num_new, hit)
    }

    /// `allocate_slots` on the piece pool; gives the hit back, changing nothing, if a registration could
    /// create a duplicate.
    fn allocate_pieces(
        &mut self,
        req: &mut Request,
        num_new: u32,
        hit: CacheHit,
    ) -> Result<bool, CacheHit> {
        let Pool::Pieces(pool) = &mut self.pool else {
            unreachable!("called on the piece pool")
        };
        let bs = self.block_size as u64;
        let empty = PieceHit::new();
        let ph = match &hit.hit {
            Hit::Pieces(p) => p,
            Hit::None => &empty,
            Hit::Blocks(_) | Hit::Radix(_) => {
                unreachable!("a per-block or radix hit on the piece pool")
            }
        };
        let hit_blocks: u32 = ph.iter().map(|x| x.1).sum();
        let computed = req.num_computed_tokens as u64 + hit.tokens as u64;
        let needed = (computed + num_new as u64).div_ceil(bs);
        let held = req.kv.piece_table.blocks() as u64 + hit_blocks as u64;
        let new_blocks = needed.saturating_sub(held) as u32;
        if new_blocks + pool.hit_blocks_in_queue(ph) > pool.num_free() {
            self.recycle_hit(hit.hit);
            return Ok(false);
        }
        let upto = (computed + num_new as u64).min(req.num_tokens() as u64);
        let full = (upto / bs) as usize;
        debug_assert_eq!(
            req.kv.piece_table.registered() as usize,
            req.kv.num_cached_blocks
        );
        let c = req.kv.num_cached_blocks + hit_blocks as usize;
        if full > c {
            req.update_block_hashes(self.block_size);
            let prev = pool.last_piece(&req.kv.piece_table, ph);
            if pool.dup_possible(prev, c as u32, req.block_hashes.get(c)) {
                return Err(hit);
            }
        }
        if !ph.is_empty() {
            pool.touch(ph, &mut req.kv.piece_table);
            req.kv.num_cached_blocks = c;
        }
        pool.allocate(new_blocks);
        pool.add_empty(&mut req.kv.piece_table, new_blocks);
        if full > c {
            pool.register(
                &mut req.kv.piece_table,
                c as u32,
                &req.block_hashes,
                full as u32,
            );
            req.kv.num_cached_blocks = full;
        }
        self.recycle_hit(hit.hit);
        Ok(true)
    }

    /// `allocate_slots` on the per-block pool.
    fn allocate_blocks(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
        self.adopt(req);
        let Pool::Blocks(pool) = &mut self.pool else {
            unreachable!("called on the per-block pool")
        };
        let bs = self.block_size as u64;
        let hit_blocks = match hit.hit {
            Hit::Blocks(b) => b,
            Hit::None => Vec::new(),
            Hit::Pieces(_) | Hit::Radix(_) => {
                unreachable!("a piece or radix hit on the per-block pool")
            }
        };
        let computed = req.num_computed_tokens as u64 + hit.tokens as u64;
        let needed = (computed + num_new as u64).div_ceil(bs) as usize;
        let held = req.kv.block_table.len() + hit_blocks.len();
        let new_blocks = needed.saturating_sub(held) as u32;
        let hits_leaving_queue =
            hit_blocks.iter().filter(|&&b| pool.ref_cnt(b) == 0).count() as u32;
        if new_blocks + hits_leaving_queue > pool.num_free() {
            self.recycle(hit_blocks);
            return false;
        }
        if !hit_blocks.is_empty() {
            pool.touch(&hit_blocks);
            if req.kv.block_table.is_empty() {
                let old = std::mem::replace(&mut req.kv.block_table, hit_blocks);
                self.recycle(old);
            } else {
                req.kv.block_table.extend_from_slice(&hit_blocks);
                self.recycle(hit_blocks);
            }
            req.kv.num_cached_blocks = req.kv.block_table.len();
        } else if req.kv.block_table.capacity() == 0 {
            req.kv.block_table = self.take_spare();
        }
        let Pool::Blocks(pool) = &mut self.pool else {
            unreachable!()
        };
        pool.allocate(new_blocks, &mut req.kv.block_table);
        if self.caching {
            let upto = (computed + num_new as u64).min(req.num_tokens() as u64);
            let full = (upto / bs) as usize;
            if full > req.kv.num_cached_blocks {
                req.update_block_hashes(self.block_size);
                let hashes = req.block_hashes.hashes();
                for i in req.kv.num_cached_blocks..full {
                    if i + PREFETCH_AHEAD < full {
                        pool.prefetch_hash(hashes[i + PREFETCH_AHEAD]);
                    }
                    pool.cache_block(req.kv.block_table[i], hashes[i]);
                }
                drop(hashes);
                req.kv.num_cached_blocks = full;
            }
        }
        true
    }

    /// Invariant 2: the pool's own invariants, and every block's reference count equal to the number of
    /// `holders` (every request of the replica) whose tables hold it.
    pub fn check_holders<'a>(
        &self,
        holders: impl Iterator<Item = &'a Request> + Clone,
    ) -> Result<(), String> {
        match &self.pool {
            Pool::Pieces(p) => p.check_invariants(holders.map(|r| &r.kv.piece_table)),
            Pool::Blocks(pool) => {
                pool.check_invariants()?;
                let mut refs = vec![0u32; pool.num_blocks() as usize];
                let mut untranslated = 0u32;
                for r in holders {
                    for &b in &r.kv.block_table {
                        refs[b as usize] += 1;
                    }
                    if !r.kv.piece_table.is_empty() {
                        let tr = self
                            .translation
                            .as_ref()
                            .ok_or("a piece table, no hand-over")?;
                        for b in tr.registered_blocks(&r.kv.piece_table) {
                            refs[b as usize] += 1;
                        }
                        untranslated += r.kv.piece_table.blocks() - r.kv.piece_table.registered();
                    }
                }
                // Held empty blocks of untranslated tables have no ids yet: they are the spare ids.
                if let Some(tr) = &self.translation {
                    if tr.spare_empty().len() as u32 != untranslated {
                        return Err(format!(
                            "{} spare ids for {untranslated} untranslated empty blocks",
                            tr.spare_empty().len()
                        ));
                    }
                    for &b in tr.spare_empty() {
                        refs[b as usize] += 1;
                    }
                }
                let counts = pool.ref_counts();
                for (b, &held) in refs.iter().enumerate().skip(1) {
                    if held != counts[b] {
                        return Err(format!(
                            "block {b}: ref count {} but {held} holders",
                            counts[b]
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Leap contract, condition 2, for a paged store: a decoding request's one-token `allocate_slots` does
/// nothing until its next token needs a block past those it holds, or (`registers`, the prefix cache on)
/// fills the block after the last one registered. This is `allocate_slots`' fast-path test (below) solved
/// for the step: change the two together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeRule {
    pub block_size: u32,
    /// Full blocks are registered in the prefix cache as they fill.
    pub registers: bool,
    /// The store never acts on a decode token (it allocates nothing per token): no event, ever.
    pub never: bool,
}

impl DecodeRule {
    /// The rule of a store whose one-token `allocate_slots` is always a no-op and that needs no block.
    pub fn never() -> DecodeRule {
        DecodeRule {
            block_size: 0,
            registers: false,
            never: true,
        }
    }

    /// For a request whose counters are those of leap step `from`: the first step at which its
    /// allocation does something, and the first that needs a new block. In step `from + k` it computes
    /// token number `computed + k + 1`.
    #[inline]
    pub fn event(&self, req: &Request, from: u64) -> DecodeEvent {
        if self.never {
            return DecodeEvent {
                at: u64::MAX,
                new_block_at: u64::MAX,
            };
        }
        let bs = self.block_size as u64;
        let next = req.num_computed_tokens as u64 + 1;
        let needs_block = req.kv.num_blocks_held() as u64 * bs + 1;
        let fills = if self.registers {
            (req.kv.num_cached_blocks as u64 + 1) * bs
        } else {
            u64::MAX
        };
        DecodeEvent {
            at: from + needs_block.min(fills).saturating_sub(next),
            new_block_at: from + needs_block.saturating_sub(next),
        }
    }
}

impl KvStore for KvCacheManager {
    /// K6 + P1: the longest run of cached leading blocks, stopping at the first miss, capped at
    /// floor((num_tokens - 1) / block_size) blocks so the last token is always recomputed. Call only when the
    /// request has computed nothing (new or preempted). Counts nothing: the scheduler records the lookup
    /// with `record_admission` when the request is admitted.
    fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit {
        if !self.caching {
            return CacheHit::default();
        }
        debug_assert_eq!(req.num_computed_tokens, 0);
        req.debug_check_block_hashes(self.block_size);
        req.update_block_hashes(self.block_size);
        let cap = ((req.num_tokens().saturating_sub(1)) / self.block_size) as usize;
        let owner = &req.block_hashes;
        let held = owner.hashes();
        let chain = &held[..cap.min(held.len())];
        // A waiting head that cannot be admitted is looked up again every step (vLLM does, and counts it),
        // as is a preempted request waiting to resume: in an overloaded run those repeats were a third of
        // all time. The last lookup's hit stays valid while none of its blocks has been evicted (the pool
        // watches them; nothing else takes a hash away or changes which block a lookup finds), so only
        // the blocks after it are looked up again.
        let memo = self.memo.take();
        let (hit, blocks) = match &mut self.pool {
            Pool::Pieces(pool) => {
                let mut hit = self.spare_hits.pop().unwrap_or_default();
                match &memo {
                    Some((id, Hit::Pieces(m)))
                        if *id == req.id
                            && pool.watch_intact()
                            && m.iter().map(|x| x.1 as usize).sum::<usize>() <= chain.len() =>
                    {
                        hit.extend_from_slice(m)
                    }
                    _ => pool.watch_new(),
                }
                let reused = hit.len();
                pool.lookup(Some(owner), chain, &mut hit);
                pool.watch(&hit, reused.saturating_sub(1));
                #[cfg(debug_assertions)]
                {
                    // Fresh, and comparing every hash (no shared-chain shortcut).
                    let mut fresh = PieceHit::new();
                    pool.lookup(None, chain, &mut fresh);
                    assert_eq!(hit, fresh, "a reused lookup differs from a fresh one");
                }
                let n = hit.iter().map(|x| x.1).sum::<u32>();
                (Hit::Pieces(hit), n)
            }
            Pool::Blocks(pool) => {
                let mut blocks = self.spare.pop().unwrap_or_default();
                match &memo {
                    Some((id, Hit::Blocks(b)))
                        if *id == req.id && pool.watch_intact() && b.len() <= chain.len() =>
                    {
                        blocks.extend_from_slice(b)
                    }
                    _ => pool.watch_new(),
                }
                let reused = blocks.len();
                for (i, &h) in chain.iter().enumerate().skip(reused) {
                    if let Some(&ahead) = chain.get(i + PREFETCH_AHEAD) {
                        pool.prefetch_hash(ahead);
                    }
                    match pool.lookup(h) {
                        Some(b) => blocks.push(b),
                        None => break,
                    }
                }
                pool.watch(&blocks[reused..]);
                #[cfg(debug_assertions)]
                {
                    let fresh: Vec<BlockId> = chain.iter().map_while(|&h| pool.lookup(h)).collect();
                    assert_eq!(blocks, fresh, "a reused lookup differs from a fresh one");
                }
                let n = blocks.len() as u32;
                (Hit::Blocks(blocks), n)
            }
        };
        // Keep the hit for the next lookup, reusing the old memo's storage.
        let mut kept = match memo {
            Some((_, old)) => old,
            None => Hit::None,
        };
        match (&hit, &mut kept) {
            (Hit::Pieces(h), Hit::Pieces(k)) => {
                k.clear();
                k.extend_from_slice(h);
            }
            (Hit::Blocks(h), Hit::Blocks(k)) => {
                k.clear();
                k.extend_from_slice(h);
            }
            _ => kept = hit.clone(),
        }
        self.memo = Some((req.id, kept));
        let tokens = blocks * self.block_size;
        CacheHit { hit, tokens }
    }

    /// P1, current vLLM (PR #48860): records a lookup's queried and hit tokens once, when the request it
    /// was made for is admitted (its `allocate_slots` succeeded). A waiting head looked up again while it
    /// cannot be admitted is not counted again. Lookups of previously preempted requests go to the
    /// `preempted_*` counters, which vLLM does not export. Nothing is counted with caching off.
    fn record_admission(&mut self, req: &Request, hit_tokens: u32) {
        if !self.caching {
            return;
        }
        if req.was_preempted {
            self.stats.preempted_queries += req.num_tokens() as u64;
            self.stats.preempted_hits += hit_tokens as u64;
        } else {
            self.stats.queries += req.num_tokens() as u64;
            self.stats.hits += hit_tokens as u64;
        }
    }

    /// K7 + K8: makes room for `num_new` more tokens after the computed ones and the cache hit (`hit` is
    /// non-empty only at admission). All or nothing: returns false, changing nothing, when the free queue
    /// (evictable cached blocks included) cannot supply the new blocks plus the hit blocks that must leave it.
    /// On success registers every block the step will fill in the prefix cache, before the forward pass, so
    /// a later request in the same step can hit them.
    ///
    /// Its fast path (a step that needs no block and fills none) is mirrored by [`DecodeRule::event`] above,
    /// which predicts the steps of a decode leap where this call does something: change them together (the
    /// leap contract in `replica.rs`, condition 2).
    #[inline]
    fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
        let bs = self.block_size as u64;
        // Most decode steps need no block and fill none: the general path would change nothing. (This
        // runs for every request of every step: full / bs > c is tested as full >= (c + 1) bs, a
        // multiplication instead of a 64-bit division; and the general path is a call of its own.)
        if hit.is_empty() {
            let upto = req.num_computed_tokens as u64 + num_new as u64;
            let fills = self.caching
                && upto.min(req.num_tokens() as u64) >= (req.kv.num_cached_blocks as u64 + 1) * bs;
            if upto <= req.kv.num_blocks_held() as u64 * bs && !fills {
                return true;
            }
        }
        self.allocate_general(req, num_new, hit)
    }

    /// K3 / K10: releases every block of the request, last block first.
    fn free(&mut self, req: &mut Request) {
        self.adopt(req);
        match &mut self.pool {
            Pool::Pieces(pool) => pool.free(&mut req.kv.piece_table),
            Pool::Blocks(pool) => {
                pool.free_table(&req.kv.block_table);
                let table = std::mem::take(&mut req.kv.block_table);
                self.recycle(table);
            }
        }
        req.kv.num_cached_blocks = 0;
    }

    /// Salts the request (its session's id + 1 under session scope, else 0). A chain it carried from its
    /// session's previous turn is kept only if it was made with this block size and salt. Hashes serve
    /// only the prefix cache: without it they are never computed.
    fn on_enqueue(&mut self, req: &mut Request) {
        req.salt = if self.session_scope {
            req.session + 1
        } else {
            0
        };
        req.block_hashes
            .retag(ChainTag::new(self.block_size, req.salt));
        // The hashes are made when the scheduler first looks the request up, not here: they are a pure
        // function of its tokens, and a waiting backlog of long prompts would otherwise hold a list of
        // hashes per request (48 KB for a 100k-token prompt at block 16) before any of it is needed.
    }

    /// K5: brings the request's block hashes up to date with its tokens (prefix cache on only).
    #[inline]
    fn on_token(&mut self, req: &mut Request) {
        if self.caching {
            req.update_block_hashes(self.block_size);
        }
    }

    fn used_blocks(&self) -> u32 {
        self.num_used()
    }

    fn stats(&self) -> KvStats {
        KvStats {
            block_size: self.block_size,
            usable_blocks: self.num_blocks() - 1,
            used_blocks: self.num_used(),
            free_blocks: self.num_free(),
            free_cached_blocks: self.num_free_cached(),
            evictions: self.evictions(),
            prefix: self.stats,
            store: Default::default(),
            offload: None,
            radix: None,
        }
    }

    /// The free cached blocks' hashes in free-queue order (head first). Held blocks are left out: a
    /// snapshot is reference-free, and a run saves it once nothing is held.
    fn snapshot(&self) -> super::CacheSnapshot {
        let gpu = match &self.pool {
            _ if !self.caching => Vec::new(),
            Pool::Blocks(p) => p.cached_in_queue_order(),
            Pool::Pieces(p) => p.to_block_pool().0.cached_in_queue_order(),
        };
        super::CacheSnapshot {
            gpu,
            ..Default::default()
        }
    }

    /// A warm start: the pool becomes a per-block pool (runs of blocks need the chains the hashes came
    /// from, which a snapshot does not keep) with the snapshot's hashes cached and free, the most recent
    /// last in the free queue. Only into an idle, empty manager with the prefix cache on.
    fn restore(&mut self, snap: &super::CacheSnapshot) {
        if !self.caching || snap.gpu.is_empty() {
            return;
        }
        debug_assert_eq!(self.num_used(), 0, "a warm start into a pool in use");
        self.pool = Pool::Blocks(BlockPool::warm(self.num_blocks(), &snap.gpu));
        self.translation = None;
        self.memo = None;
    }

    /// Invariant 2 over every request of the replica, and no request with computed tokens beyond the
    /// blocks it holds.
    fn check_invariants(&self, reqs: &RequestTable) -> Result<(), String> {
        self.check_holders(reqs.values().map(|r| &**r))?;
        let bs = self.block_size as u64;
        for r in reqs.values() {
            if r.num_computed_tokens as u64 > r.kv.num_blocks_held() as u64 * bs {
                return Err(format!("request {} computed tokens without blocks", r.id));
            }
        }
        Ok(())
    }

    fn decode_rule(&self) -> Option<DecodeRule> {
        Some(DecodeRule {
            block_size: self.block_size,
            registers: self.caching,
            never: false,
        })
    }

    /// An allocation fails exactly when the free queue (evictable cached blocks included) is short.
    fn leap_fits(&self, new_blocks: u32) -> bool {
        new_blocks <= self.num_free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SimTime;
    use crate::workload::content::Segment;

    fn req(id: u64, tokens: u32) -> Request {
        let prompt = vec![Segment {
            content: 7,
            len: tokens,
        }];
        Request::new(id, id, 1, 0, SimTime::ZERO, prompt, 100 + id, 16)
    }

    /// A prompt from a few shared pieces: a system prompt, a session's history and a tail, so that
    /// requests share prefixes of many lengths, and identical prompts (duplicates when their length is a
    /// multiple of the block size) occur.
    fn prompt(pick: u8, aligned: bool) -> Vec<Segment> {
        let sys = Segment {
            content: 1,
            len: [if aligned { 8 } else { 9 }, 10][(pick & 1) as usize],
        };
        let hist = Segment {
            content: 2 + (pick as u64 >> 1 & 3),
            len: 12,
        };
        let tail = Segment {
            content: 10 + (pick as u64 >> 3 & 1),
            len: [4, 7][(pick >> 4 & 1) as usize],
        };
        match pick % 3 {
            0 => vec![sys, hist],
            1 => vec![sys, hist, tail],
            _ => vec![sys],
        }
    }

    /// What both representations must agree on after every operation.
    fn observables(kv: &KvCacheManager, rs: &[Request]) -> Vec<u64> {
        let mut v = vec![
            kv.num_free() as u64,
            kv.num_free_cached() as u64,
            kv.evictions(),
            kv.num_used() as u64,
            kv.prefix_stats().queries,
            kv.prefix_stats().hits,
            kv.prefix_stats().preempted_queries,
            kv.prefix_stats().preempted_hits,
        ];
        for r in rs {
            v.extend([
                r.kv.num_blocks_held() as u64,
                r.kv.num_cached_blocks as u64,
                r.num_computed_tokens as u64,
            ]);
        }
        v
    }

    /// The piece pool against the per-block pool, vLLM's rules block by block: the same random admissions
    /// (with hits), prefill chunks, decode steps, preemptions and finishes must give the same hits, the
    /// same allocation outcomes and the same counts, and both keep their invariants. Prompts share
    /// prefixes and repeat, so hits end inside pieces, runs branch, and duplicates force hand-overs to the
    /// per-block pool mid-sequence (translating the tables of requests still running).
    #[test]
    fn piece_pool_matches_the_per_block_pool() {
        use proptest::prelude::*;
        let cfg = ProptestConfig {
            cases: 600,
            ..ProptestConfig::default()
        };
        let op = (0usize..5, 0u8..4, 1u32..24, any::<u8>());
        proptest!(cfg, |(blocks in 8u32..40, aligned: bool, ops in proptest::collection::vec(op, 1..250))| {
            let mut a = KvCacheManager::new(blocks, 4, true);
            let mut b = KvCacheManager::per_block(blocks, 4, true);
            // Unaligned prompts and distinct outputs make duplicates rarer, so the piece pool runs longer.
            let mk = |id: u64, pick: u8| {
                let out = if aligned { 500 + pick as u64 % 3 } else { 500 + id };
                let mut r = Request::new(id, id, 1, 0, SimTime::ZERO, prompt(pick, aligned), out, 64);
                r.update_block_hashes(4);
                r
            };
            let mut ra: Vec<Request> = (0..5).map(|i| mk(i, i as u8 * 7)).collect();
            let mut rb = ra.clone();
            let mut next_id = 5;
            for (i, op, n, pick) in ops {
                match op {
                    // Admission: lookup, then the first chunk.
                    0 if ra[i].kv.num_blocks_held() == 0 => {
                        let ha = a.get_computed_blocks(&mut ra[i]);
                        let hb = b.get_computed_blocks(&mut rb[i]);
                        prop_assert_eq!(ha.tokens, hb.tokens);
                        let t = ha.tokens;
                        let n = n.min(ra[i].num_tokens() - t);
                        let oa = a.allocate_slots(&mut ra[i], n, ha);
                        let ob = b.allocate_slots(&mut rb[i], n, hb);
                        prop_assert_eq!(oa, ob);
                        if oa {
                            a.record_admission(&ra[i], t);
                            b.record_admission(&rb[i], t);
                            for r in [&mut ra[i], &mut rb[i]] {
                                r.num_computed_tokens = t + n;
                            }
                        }
                    }
                    // A prefill chunk, or a decode step (sample a token, then compute it).
                    1 if ra[i].kv.num_blocks_held() > 0 => {
                        let decode = ra[i].num_computed_tokens == ra[i].num_tokens();
                        let left = ra[i].num_tokens() - ra[i].num_computed_tokens;
                        let n = if decode { 1 } else { n.min(left) };
                        if decode {
                            for (kv, r) in [(&a, &mut ra[i]), (&b, &mut rb[i])] {
                                r.num_output_tokens += 1;
                                if kv.caching() {
                                    r.update_block_hashes(kv.block_size());
                                }
                            }
                        }
                        let oa = a.allocate_slots(&mut ra[i], n, CacheHit::default());
                        let ob = b.allocate_slots(&mut rb[i], n, CacheHit::default());
                        prop_assert_eq!(oa, ob);
                        for (ok, r) in [(oa, &mut ra[i]), (ob, &mut rb[i])] {
                            if ok {
                                r.num_computed_tokens += n;
                            } else if decode {
                                r.num_output_tokens -= 1; // not computed: as if not sampled
                            }
                        }
                    }
                    // Preemption: everything freed, recomputed later.
                    2 => {
                        a.free(&mut ra[i]);
                        b.free(&mut rb[i]);
                        for r in [&mut ra[i], &mut rb[i]] {
                            r.num_computed_tokens = 0;
                            r.was_preempted = true;
                        }
                    }
                    // Finish: freed, and a new request takes the slot.
                    3 => {
                        a.free(&mut ra[i]);
                        b.free(&mut rb[i]);
                        ra[i] = mk(next_id, pick);
                        rb[i] = ra[i].clone();
                        next_id += 1;
                    }
                    _ => {}
                }
                prop_assert_eq!(observables(&a, &ra), observables(&b, &rb));
                if let Err(e) = a.check_holders(ra.iter()) {
                    prop_assert!(false, "piece side: {}", e);
                }
                if let Err(e) = b.check_holders(rb.iter()) {
                    prop_assert!(false, "per-block side: {}", e);
                }
            }
        });
    }

    /// A lookup repeated after another request's hit ended inside the piece it hit (splitting it) must
    /// describe its hit by the pieces as they are now: debug builds compare it with a fresh lookup, and
    /// taking a stale description would corrupt the pool.
    #[test]
    fn a_split_invalidates_the_remembered_lookup() {
        let mut kv = KvCacheManager::new(12, 4, true); // 11 usable blocks
        let mut a = req(1, 13);
        let h = kv.get_computed_blocks(&mut a);
        assert!(kv.allocate_slots(&mut a, 13, h));
        kv.free(&mut a); // 3 cached blocks in one piece
        let mut x = req(4, 8);
        x.prompt[0].content = 9;
        x.block_hashes = Default::default();
        x.update_block_hashes(4);
        let h = kv.get_computed_blocks(&mut x);
        // x holds 2 blocks. w shares the 3 cached blocks and needs 8 more: 8 new + 3 leaving the queue
        // > 9 free, so it waits.
        assert!(kv.allocate_slots(&mut x, 8, h));
        let mut w = req(2, 44);
        let h = kv.get_computed_blocks(&mut w);
        assert_eq!(h.tokens, 12);
        assert!(!kv.allocate_slots(&mut w, 32, h));
        // v shares only the first block: its hit splits the piece.
        let mut v = req(3, 13);
        v.prompt = vec![
            Segment { content: 7, len: 4 },
            Segment { content: 8, len: 9 },
        ];
        v.block_hashes = Default::default();
        v.update_block_hashes(4);
        let h = kv.get_computed_blocks(&mut v);
        assert_eq!(h.tokens, 4);
        assert!(kv.allocate_slots(&mut v, 9, h));
        assert_eq!(kv.evictions(), 0, "v's new blocks were empty ones");
        let h = kv.get_computed_blocks(&mut w);
        assert_eq!(h.tokens, 12);
        kv.free(&mut v);
        kv.free(&mut x);
        // The hit is still good to take: w fits now that v and x are gone.
        assert!(kv.allocate_slots(&mut w, 32, h));
        kv.check_holders([&w].into_iter()).unwrap();
    }

    /// Identical prompts whose length is a multiple of the block size: the second request's last block is
    /// recomputed (K6) and registered again, a duplicate (K8), which the piece pool hands over for. The
    /// hand-over must keep every count, translate the first request's table, and leave lookups finding the
    /// first-registered block.
    #[test]
    fn a_duplicate_hands_over_to_the_per_block_pool() {
        let mut kv = KvCacheManager::new(20, 4, true);
        let mut x = req(1, 16);
        let mut y = req(2, 16);
        let mut y2 = req(3, 16);
        for r in [&mut x, &mut y, &mut y2] {
            r.prompt[0].content = 9;
            r.update_block_hashes(4);
        }
        let h = kv.get_computed_blocks(&mut x);
        assert!(kv.allocate_slots(&mut x, 16, h));
        x.num_computed_tokens = 16;
        assert!(kv.keeps_pieces());
        let h = kv.get_computed_blocks(&mut y);
        assert_eq!(h.tokens, 12, "capped: the last block is recomputed");
        assert!(kv.allocate_slots(&mut y, 4, h));
        y.num_computed_tokens = 16;
        assert!(
            !kv.keeps_pieces(),
            "registering the recomputed block is a duplicate"
        );
        kv.check_holders([&x, &y].into_iter()).unwrap();
        let pool = kv.block_pool().unwrap();
        assert_eq!(pool.blocks_with_hash(y.block_hashes.get(3)).len(), 2);
        // x's table is still in piece form until x comes back; freeing translates it.
        assert!(x.kv.block_table.is_empty() && x.kv.num_blocks_held() == 4);
        kv.free(&mut x);
        kv.free(&mut y);
        assert_eq!(kv.num_free(), 19);
        assert_eq!(kv.num_free_cached(), 5);
        kv.check_holders(std::iter::empty()).unwrap();
        let h = kv.get_computed_blocks(&mut y2);
        assert_eq!(h.tokens, 12);
    }

    /// Without the prefix cache the anonymous pool (a stack of ids) and vLLM's free queue must be
    /// indistinguishable: every allocation succeeds or fails alike and the counts agree, whatever the
    /// sequence of growths and releases (a release frees a request's blocks, as a finish or a preemption).
    #[test]
    fn anonymous_pool_matches_the_free_queue_without_caching() {
        use proptest::prelude::*;
        proptest!(|(ops in proptest::collection::vec((0usize..6, 0u32..40, any::<bool>()), 1..300))| {
            let mut queued = KvCacheManager {
                pool: Pool::Blocks(BlockPool::new(40)),
                ..KvCacheManager::new(40, 4, false)
            };
            let mut anon = KvCacheManager::new(40, 4, false);
            let mut qa: Vec<Request> = (0..6).map(|i| req(i, 60)).collect();
            let mut qb = qa.clone();
            for (i, n, release) in ops {
                if release {
                    queued.free(&mut qa[i]);
                    anon.free(&mut qb[i]);
                    qa[i].num_computed_tokens = 0;
                    qb[i].num_computed_tokens = 0;
                } else {
                    let n = n.min(qa[i].num_tokens() - qa[i].num_computed_tokens);
                    let a = queued.allocate_slots(&mut qa[i], n, CacheHit::default());
                    let b = anon.allocate_slots(&mut qb[i], n, CacheHit::default());
                    prop_assert_eq!(a, b);
                    if a {
                        qa[i].num_computed_tokens += n;
                        qb[i].num_computed_tokens += n;
                    }
                    prop_assert_eq!(qa[i].kv.block_table.len(), qb[i].kv.block_table.len());
                }
                prop_assert_eq!(queued.num_free(), anon.num_free());
                prop_assert_eq!(queued.stats().usage(), anon.stats().usage());
                prop_assert!(anon.block_pool().unwrap().check_invariants().is_ok());
                // Held blocks are distinct, and exactly the ones not free.
                let counts = anon.block_pool().unwrap().ref_counts();
                let held: usize = qb.iter().map(|r| r.kv.block_table.len()).sum();
                prop_assert_eq!(counts.iter().skip(1).filter(|&&c| c == 1).count(), held);
                for r in &qb {
                    for &b in &r.kv.block_table {
                        prop_assert_eq!(counts[b as usize], 1);
                    }
                }
            }
        });
    }

    /// Takes `n` blocks from the free queue's head directly (as another request's allocation would).
    fn take(kv: &mut KvCacheManager, n: u32) -> Vec<BlockId> {
        let mut out = Vec::new();
        match &mut kv.pool {
            Pool::Blocks(p) => p.allocate(n, &mut out),
            Pool::Pieces(p) => p.allocate(n),
        }
        out
    }

    /// A repeated lookup reuses the previous hit only while none of its blocks is evicted: evicting a block
    /// outside the hit leaves it whole, evicting one inside shortens it. Both representations.
    /// A chain carried in under another block size or salt (a session's next turn from a replica of
    /// another page size, or scope) is dropped and rehashed here, never extended; a matching one is kept.
    #[test]
    fn an_arriving_chain_of_another_block_size_or_salt_is_rehashed() {
        let fresh = |bs: u32, salt: u64| {
            let mut r = req(1, 100);
            r.salt = salt;
            r.update_block_hashes(bs);
            r.block_hashes.to_vec()
        };
        for (made_bs, made_salt, scope) in [
            (32, 0, CacheScope::Global),
            (16, 0, CacheScope::Session),
            (16, 0, CacheScope::Global),
        ] {
            let mut kv = KvCacheManager::new(64, 16, true).with_scope(scope);
            let mut r = req(1, 100);
            r.salt = made_salt;
            r.update_block_hashes(made_bs);
            let carried = r.block_hashes.share();
            kv.on_enqueue(&mut r);
            // Session scope salts with the session id + 1 (request 1 is session 1).
            let salt = if scope == CacheScope::Session { 2 } else { 0 };
            assert_eq!(r.salt, salt);
            // The hashes are made at the first lookup, not at enqueue.
            let kept = made_bs == 16 && made_salt == salt;
            assert_eq!(r.block_hashes.len(), if kept { 6 } else { 0 });
            kv.get_computed_blocks(&mut r);
            assert_eq!(r.block_hashes.tag(), Some(ChainTag::new(16, salt)));
            // 100 tokens: 6 full blocks of 16.
            assert_eq!(r.block_hashes.to_vec(), fresh(16, salt));
            assert_eq!(r.block_hashes.len(), 6);
            assert_eq!(
                r.block_hashes.same(&carried),
                kept,
                "{made_bs} {made_salt} {scope:?}"
            );
        }
    }

    #[test]
    fn repeated_lookup_follows_evictions() {
        for per_block in [true, false] {
            // 5 usable blocks of 4 tokens.
            let mut kv = if per_block {
                KvCacheManager::per_block(6, 4, true)
            } else {
                KvCacheManager::new(6, 4, true)
            };
            let mut a = req(1, 12);
            let none = kv.get_computed_blocks(&mut a);
            assert!(kv.allocate_slots(&mut a, 12, none));
            if per_block {
                assert_eq!(a.kv.block_table, vec![1, 2, 3]);
            }
            kv.free(&mut a); // queue: 4, 5, 3, 2, 1 (1-3 cached)

            let mut b = req(2, 12);
            let hit = kv.get_computed_blocks(&mut b);
            assert_eq!(hit.tokens, 8); // capped below the last token
            if per_block {
                assert_eq!(hit.block_ids(), Some(&[1, 2][..]));
            }
            let taken = take(&mut kv, 3); // 4, 5, 3: evicts block 3, outside b's hit
            if per_block {
                assert_eq!(taken, vec![4, 5, 3]);
            }
            assert_eq!(kv.evictions(), 1);
            assert_eq!(kv.get_computed_blocks(&mut b).tokens, 8);
            take(&mut kv, 1); // 2: inside the hit
            assert_eq!(kv.get_computed_blocks(&mut b).tokens, 4);
            assert_eq!(kv.evictions(), 2);
            // Lookups count nothing until admission (P1, current vLLM).
            assert_eq!(kv.prefix_stats().queries, 0);
            kv.record_admission(&b, 4);
            assert_eq!((kv.prefix_stats().queries, kv.prefix_stats().hits), (12, 4));
        }
    }
}
