//! KV-cache management: vLLM V1's block pool with its prefix cache, and the per-request operations the
//! scheduler calls (engine-semantics K5-K10, P1).

pub mod block_pool;
mod hash_index;
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

/// How many blocks ahead the per-block loops prefetch (a few cache misses in flight at once).
const PREFETCH_AHEAD: usize = 8;

/// The KV manager of one replica.
#[derive(Clone, Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: u32,
    caching: bool,
    stats: PrefixStats,
}

impl KvCacheManager {
    pub fn new(num_blocks: u32, block_size: u32, caching: bool) -> KvCacheManager {
        KvCacheManager {
            pool: BlockPool::new(num_blocks),
            block_size,
            caching,
            stats: PrefixStats::default(),
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
        let mut blocks = Vec::new();
        let chain = &req.block_hashes[..cap.min(req.block_hashes.len())];
        for (i, &h) in chain.iter().enumerate() {
            if let Some(&ahead) = chain.get(i + PREFETCH_AHEAD) {
                self.pool.prefetch_hash(ahead);
            }
            match self.pool.lookup(h) {
                Some(b) => blocks.push(b),
                None => break,
            }
        }
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
    pub fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: &CacheHit) -> bool {
        let bs = self.block_size as u64;
        // Most decode steps need no block and fill none: the general path below would change nothing.
        if hit.blocks.is_empty() {
            let upto = req.num_computed_tokens as u64 + num_new as u64;
            let fills = self.caching
                && (upto.min(req.num_tokens() as u64) / bs) as usize > req.num_cached_blocks;
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
            return false;
        }
        if !hit.blocks.is_empty() {
            self.pool.touch(&hit.blocks);
            req.block_table.extend_from_slice(&hit.blocks);
            req.num_cached_blocks = req.block_table.len();
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
        req.block_table.clear();
        req.num_cached_blocks = 0;
    }
}
