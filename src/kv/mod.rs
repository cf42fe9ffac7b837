//! KV-cache management: vLLM V1's block pool with its prefix cache, and the per-request operations the
//! scheduler calls (engine-semantics K5-K10, P1).

pub mod block_pool;
mod hash_index;
use hash_index::PREFETCH_AHEAD;
pub mod sizing;

pub use block_pool::{BlockId, BlockPool};

use crate::request::Request;

/// Prefix-cache counters, counted as vLLM counts them (P1): in tokens, per lookup; lookups for requests that
/// were preempted before go to the `preempted_*` counters, which vLLM does not export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub queries: u64,
    pub hits: u64,
    pub preempted_queries: u64,
    pub preempted_hits: u64,
}

/// The result of a prefix lookup: the hit blocks (to be touched on admission) and the tokens they cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheHit {
    pub blocks: Vec<BlockId>,
    pub tokens: u32,
}

/// The KV manager of one replica.
#[derive(Clone, Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: u32,
    caching: bool,
    stats: PrefixStats,
    /// The last lookup: request and hit blocks (see `get_computed_blocks`).
    memo: Option<(crate::request::RequestId, Vec<BlockId>)>,
    /// Emptied block lists kept for reuse (block tables of released requests, spent hits): a request's
    /// table grows to hundreds of blocks, and allocating and growing one per request showed in profiles.
    spare: Vec<Vec<BlockId>>,
}

/// Most block lists `KvCacheManager::spare` keeps.
const MAX_SPARE: usize = 64;

impl KvCacheManager {
    pub fn new(num_blocks: u32, block_size: u32, caching: bool) -> KvCacheManager {
        KvCacheManager {
            pool: if caching {
                BlockPool::new(num_blocks)
            } else {
                BlockPool::anonymous(num_blocks)
            },
            block_size,
            caching,
            stats: PrefixStats::default(),
            memo: None,
            spare: Vec::new(),
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    pub fn caching(&self) -> bool {
        self.caching
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

    /// K5: brings the request's block hashes up to date with its tokens. Hashes serve only the prefix
    /// cache: without it they are never computed.
    pub fn update_block_hashes(&self, req: &mut Request) {
        if self.caching {
            req.update_block_hashes(self.block_size);
        }
    }

    /// K6 + P1: the longest run of cached leading blocks, stopping at the first miss, capped at
    /// floor((num_tokens - 1) / block_size) blocks so the last token is always recomputed. Call only when the
    /// request has computed nothing (new or preempted). Counts the query, as vLLM does, every time it runs.
    pub fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit {
        if !self.caching {
            return CacheHit::default();
        }
        debug_assert_eq!(req.num_computed_tokens, 0);
        req.debug_check_block_hashes(self.block_size);
        req.update_block_hashes(self.block_size);
        let cap = ((req.num_tokens().saturating_sub(1)) / self.block_size) as usize;
        let chain = &req.block_hashes[..cap.min(req.block_hashes.len())];
        // A waiting head that cannot be admitted is looked up again every step (vLLM does, and counts it),
        // as is a preempted request waiting to resume: in an overloaded run those repeats were a third of
        // all time. The last lookup's hit stays valid while none of its blocks has been evicted (the pool
        // watches them; nothing else takes a hash away or changes which block a lookup finds), so only
        // the blocks after it are looked up again.
        let mut blocks = self.take_spare();
        match &self.memo {
            Some((id, b))
                if *id == req.id && self.pool.watch_intact() && b.len() <= chain.len() =>
            {
                blocks.extend_from_slice(b)
            }
            _ => self.pool.watch_new(),
        }
        let reused = blocks.len();
        for (i, &h) in chain.iter().enumerate().skip(reused) {
            if let Some(&ahead) = chain.get(i + PREFETCH_AHEAD) {
                self.pool.prefetch_hash(ahead);
            }
            match self.pool.lookup(h) {
                Some(b) => blocks.push(b),
                None => break,
            }
        }
        self.pool.watch(&blocks[reused..]);
        #[cfg(debug_assertions)]
        {
            let fresh: Vec<BlockId> = chain.iter().map_while(|&h| self.pool.lookup(h)).collect();
            assert_eq!(blocks, fresh, "a reused lookup differs from a fresh one");
        }
        let memo = self.memo.get_or_insert_with(|| (req.id, Vec::new()));
        memo.0 = req.id;
        memo.1.clear();
        memo.1.extend_from_slice(&blocks);
        let tokens = blocks.len() as u32 * self.block_size;
        if req.was_preempted {
            self.stats.preempted_queries += req.num_tokens() as u64;
            self.stats.preempted_hits += tokens as u64;
        } else {
            self.stats.queries += req.num_tokens() as u64;
            self.stats.hits += tokens as u64;
        }
        CacheHit { blocks, tokens }
    }

    /// K7 + K8: makes room for `num_new` more tokens after the computed ones and the cache hit (`hit` is
    /// non-empty only at admission). All or nothing: returns false, changing nothing, when the free queue
    /// (evictable cached blocks included) cannot supply the new blocks plus the hit blocks that must leave it.
    /// On success registers every block the step will fill in the prefix cache, before the forward pass, so
    /// a later request in the same step can hit them.
    pub fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
        let bs = self.block_size as u64;
        // Most decode steps need no block and fill none: the general path below would change nothing.
        // (This runs for every request of every step: full / bs > c is tested as full >= (c + 1) bs, a
        // multiplication instead of a 64-bit division.)
        if hit.blocks.is_empty() {
            let upto = req.num_computed_tokens as u64 + num_new as u64;
            let fills = self.caching
                && upto.min(req.num_tokens() as u64) >= (req.num_cached_blocks as u64 + 1) * bs;
            if upto <= req.block_table.len() as u64 * bs && !fills {
                return true;
            }
        }
        let computed = req.num_computed_tokens as u64 + hit.tokens as u64;
        let needed = (computed + num_new as u64).div_ceil(bs) as usize;
        let held = req.block_table.len() + hit.blocks.len();
        let new_blocks = needed.saturating_sub(held) as u32;
        let hits_leaving_queue = hit
            .blocks
            .iter()
            .filter(|&&b| self.pool.ref_cnt(b) == 0)
            .count() as u32;
        if new_blocks + hits_leaving_queue > self.pool.num_free() {
            self.recycle(hit.blocks);
            return false;
        }
        if !hit.blocks.is_empty() {
            self.pool.touch(&hit.blocks);
            if req.block_table.is_empty() {
                let old = std::mem::replace(&mut req.block_table, hit.blocks);
                self.recycle(old);
            } else {
                req.block_table.extend_from_slice(&hit.blocks);
                self.recycle(hit.blocks);
            }
            req.num_cached_blocks = req.block_table.len();
        } else if req.block_table.capacity() == 0 {
            req.block_table = self.take_spare();
        }
        self.pool.allocate(new_blocks, &mut req.block_table);
        if self.caching {
            let upto = (computed + num_new as u64).min(req.num_tokens() as u64);
            let full = (upto / bs) as usize;
            if full > req.num_cached_blocks {
                req.update_block_hashes(self.block_size);
                for i in req.num_cached_blocks..full {
                    if i + PREFETCH_AHEAD < full {
                        self.pool
                            .prefetch_hash(req.block_hashes[i + PREFETCH_AHEAD]);
                    }
                    self.pool
                        .cache_block(req.block_table[i], req.block_hashes[i]);
                }
                req.num_cached_blocks = full;
            }
        }
        true
    }

    /// K3 / K10: releases every block of the request, last block first.
    pub fn free(&mut self, req: &mut Request) {
        self.pool.free_table(&req.block_table);
        let table = std::mem::take(&mut req.block_table);
        self.recycle(table);
        req.num_cached_blocks = 0;
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
        Request::new(id, id, 1, 0, SimTime::ZERO, prompt, 100 + id, 16, 0)
    }

    /// Without the prefix cache the anonymous pool (a stack of ids) and vLLM's free queue must be
    /// indistinguishable: every allocation succeeds or fails alike and the counts agree, whatever the
    /// sequence of growths and releases (a release frees a request's blocks, as a finish or a preemption).
    #[test]
    fn anonymous_pool_matches_the_free_queue_without_caching() {
        use proptest::prelude::*;
        proptest!(|(ops in proptest::collection::vec((0usize..6, 0u32..40, any::<bool>()), 1..300))| {
            let mut queued = KvCacheManager { pool: BlockPool::new(40), ..KvCacheManager::new(40, 4, false) };
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
                    prop_assert_eq!(qa[i].block_table.len(), qb[i].block_table.len());
                }
                prop_assert_eq!(queued.pool().num_free(), anon.pool().num_free());
                prop_assert_eq!(queued.pool().usage(), anon.pool().usage());
                prop_assert!(anon.pool().check_invariants().is_ok());
                // Held blocks are distinct, and exactly the ones not free.
                let counts = anon.pool().ref_counts();
                let held: usize = qb.iter().map(|r| r.block_table.len()).sum();
                prop_assert_eq!(counts.iter().skip(1).filter(|&&c| c == 1).count(), held);
                for r in &qb {
                    for &b in &r.block_table {
                        prop_assert_eq!(counts[b as usize], 1);
                    }
                }
            }
        });
    }

    /// A repeated lookup reuses the previous hit only while none of its blocks is evicted: evicting a block
    /// outside the hit leaves it whole, evicting one inside shortens it.
    #[test]
    fn repeated_lookup_follows_evictions() {
        // 5 usable blocks of 4 tokens.
        let mut kv = KvCacheManager::new(6, 4, true);
        let mut a = req(1, 12);
        let none = kv.get_computed_blocks(&mut a);
        assert!(kv.allocate_slots(&mut a, 12, none));
        assert_eq!(a.block_table, vec![1, 2, 3]);
        // The first lookup counted 12 queried tokens and no hits.
        kv.free(&mut a); // queue: 4, 5, 3, 2, 1 (1-3 cached)

        let mut b = req(2, 12);
        let hit = kv.get_computed_blocks(&mut b);
        assert_eq!(hit.blocks, vec![1, 2]); // capped below the last token
        let mut taken = Vec::new();
        kv.pool.allocate(3, &mut taken); // 4, 5, 3: evicts block 3, outside b's hit
        assert_eq!(taken, vec![4, 5, 3]);
        assert_eq!(kv.get_computed_blocks(&mut b).blocks, vec![1, 2]);
        kv.pool.allocate(1, &mut taken); // 2: inside the hit
        assert_eq!(kv.get_computed_blocks(&mut b).blocks, vec![1]);
        // Each lookup counted, as vLLM counts them.
        assert_eq!(kv.stats().queries, 12 + 12 + 12 + 12);
        assert_eq!(kv.stats().hits, 8 + 8 + 4);
    }
}
