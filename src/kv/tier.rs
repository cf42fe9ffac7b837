//! KV offload tiers below GPU memory: a CPU tier, and under LMCache a local-disk tier, wrapped around
//! a replica's paged store ([`Tiered`]).
//!
//! Two backends, each following its engine's rules (engine-semantics §5 and §7):
//! - `native`, vLLM's offloading connector (O1-O3): one CPU tier keyed by GPU block hash (one offloaded
//!   block = one GPU block, `block_size_factor` 1), LRU. Write-through: after
//!   each step, every scheduled request offers the full blocks it has newly computed, prompt and
//!   output alike, in one store; blocks the tier lacks are added at its MRU end after evicting from its
//!   LRU end (never a block of the store itself), and if too few can be evicted the store is skipped
//!   and retried with the next step's blocks; after a store the request's blocks are touched, first
//!   block last (`CPUOffloadingManager`, `OffloadingConnectorScheduler`). Lookup at admission,
//!   after the GPU hit: the request's offloaded blocks are touched (the first block ends most recent,
//!   as `touch` walks the hashes in reverse), then the hit is the run of CPU blocks right after the GPU
//!   hit, at least one block. The load is **asynchronous**: the request gets its GPU blocks and waits
//!   (vLLM's `WAITING_FOR_REMOTE_KVS`) until the copy is done, and is scheduled in a later step.
//! - `lmcache`, LMCache's vLLM connector with its defaults (L1-L3): 256-token chunks keyed by the
//!   prefix they end, a local CPU tier and optionally a local disk tier, each LRU. Only prompt chunks
//!   are stored (`save_decode_cache = false`), full chunks only, written through to every tier, one
//!   chunk after another (a full tier evicts its LRU chunk for each). Lookup
//!   walks the tiers in order, each serving the next run of chunks, the first gap ending the hit; a
//!   chunk loaded from disk is written back into the CPU tier. Tokens loaded = LMCache hit − GPU hit
//!   (less one if the whole prompt hit), and the load is **synchronous**: its time is added to the
//!   step that admits the request (`StepPlan::kv_load`).
//!
//! Load time (L4, a parameter, not in any engine's source): per tier, bytes / bandwidth + one latency,
//! bytes = tokens × the model's KV bytes per token, the CPU tier's bandwidth the host link's times the
//! tensor-parallel size (each GPU copies its share over its own link). Stores are not priced: both
//! engines copy to the host off the forward pass's critical path.
//!
//! Simplifications, stated: a stored unit is visible at the end of the step that computed it (vLLM: when
//! its copy completes); blocks being loaded are not pinned against eviction; a request whose hit is
//! still loading for another request hits the GPU blocks registered at that request's admission instead
//! of waiting (vLLM delays registering them until the load is done), and those blocks stay cached if
//! that request is aborted before its load ends. LMCache's partial last chunk
//! (`save_unfull_chunk`) is not stored: it only ever matches an identical prompt.

use super::lru_set::LruSet;
use super::{CacheHit, KvStats, KvStore};
use crate::event::SessionId;
use crate::request::{Request, RequestId, RequestTable};
use crate::time::SimDuration;

/// Which connector moves KV between GPU and the lower tiers (`kv.offload.backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// vLLM's native offloading connector (O1-O3).
    Native,
    /// LMCache's vLLM connector (L1-L3).
    LmCache,
}

/// A tier below GPU memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TierKind {
    Cpu,
    Disk,
}

impl TierKind {
    pub const ALL: [TierKind; 2] = [TierKind::Cpu, TierKind::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Cpu => "cpu",
            TierKind::Disk => "disk",
        }
    }
}

/// One tier's size and link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierParams {
    /// Units (offloaded blocks or chunks) the tier holds.
    pub capacity_units: u64,
    /// Link bandwidth to the GPU, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Per-load latency, seconds.
    pub latency_s: f64,
    /// Whether the tier keeps its content across a replica restart (local disk does; in-process CPU
    /// memory does not, unless the cache lives in a server of its own).
    pub survives_restart: bool,
}

/// A tiered store's parameters, resolved (`kv.offload` in the config).
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadParams {
    pub backend: Backend,
    /// GPU tokens per block.
    pub block_size: u32,
    /// GPU blocks per offloaded unit: 1 for native, chunk_tokens / block_size for LMCache.
    pub unit_blocks: u32,
    /// KV bytes per token, whole replica (every layer, every tensor-parallel rank).
    pub bytes_per_token: u64,
    /// CPU first, then disk (LMCache only).
    pub tiers: Vec<(TierKind, TierParams)>,
}

impl OffloadParams {
    pub fn unit_tokens(&self) -> u32 {
        self.block_size * self.unit_blocks
    }
}

/// One tier's counters and occupancy (the summary's and time series' per-tier columns).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TierStats {
    pub capacity_units: u64,
    pub used_units: u64,
    /// Tokens loaded from this tier for admitted requests.
    pub hit_tokens: u64,
    /// Bytes copied from this tier to the GPU.
    pub loaded_bytes: u64,
    /// Bytes written into this tier (write-through stores, LMCache's promotions into CPU).
    pub stored_bytes: u64,
    /// Units evicted to make room.
    pub evictions: u64,
    /// Stores skipped because the tier could not hold them (native O2).
    pub skipped_stores: u64,
}

impl TierStats {
    /// Units held over capacity (0 for a tier not configured).
    pub fn usage(&self) -> f64 {
        if self.capacity_units == 0 {
            0.0
        } else {
            self.used_units as f64 / self.capacity_units as f64
        }
    }

    /// Adds `o`'s counters (a restart's retired store); occupancy stays this one's.
    fn add_counters(&mut self, o: &TierStats) {
        self.hit_tokens += o.hit_tokens;
        self.loaded_bytes += o.loaded_bytes;
        self.stored_bytes += o.stored_bytes;
        self.evictions += o.evictions;
        self.skipped_stores += o.skipped_stores;
    }
}

/// A tiered store's counters: vLLM's connector prefix-cache stats (`vllm:external_prefix_cache_*`,
/// tokens, counted once per admitted request) and each tier's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OffloadStats {
    pub queries: u64,
    pub hits: u64,
    /// Indexed by `TierKind as usize`; a tier not configured stays zero.
    pub tiers: [TierStats; 2],
    /// Seconds of load priced into steps (LMCache) or waited for (native), summed over requests.
    pub load_s: f64,
}

impl OffloadStats {
    /// Adds `o`'s counters (a restart's retired store); occupancy stays this one's.
    pub fn add_counters(&mut self, o: &OffloadStats) {
        self.queries += o.queries;
        self.hits += o.hits;
        self.load_s += o.load_s;
        for (t, x) in self.tiers.iter_mut().zip(&o.tiers) {
            t.add_counters(x);
        }
    }
}

/// What the lower tiers add after a request's GPU hit (see [`KvStore::get_external_hit`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExternalHit {
    /// Tokens loaded, by tier (`TierKind as usize`).
    pub tier_tokens: [u32; 2],
    /// Tokens that count as computed once loaded (the loaded tokens, less one when the load would
    /// complete the whole request: its last token must be recomputed to sample).
    pub computed: u32,
    /// How long the copy takes.
    pub load: SimDuration,
    /// True: the request waits for the copy before it is scheduled (native); false: the copy is added
    /// to the admitting step (LMCache).
    pub asynchronous: bool,
    /// LMCache: the units each tier serves (`first..last`, by `Tiered`'s tier order), read back from
    /// the tiers when the request is admitted (`KvStore::record_external`).
    pub(crate) served: [(u32, u32); 2],
}

impl ExternalHit {
    /// Tokens loaded.
    pub fn tokens(&self) -> u32 {
        self.tier_tokens[0] + self.tier_tokens[1]
    }

    /// Tokens counted as computed, by tier: the one token recomputed comes off the last tier loaded.
    pub fn computed_by_tier(&self) -> [u32; 2] {
        let mut t = self.tier_tokens;
        if self.computed < self.tokens() {
            let last = if t[1] > 0 { 1 } else { 0 };
            t[last] -= self.tokens() - self.computed;
        }
        t
    }
}

/// One tier: an LRU set of unit keys.
#[derive(Clone, Debug)]
struct Tier {
    kind: TierKind,
    p: TierParams,
    lru: LruSet,
    stats: TierStats,
}

impl Tier {
    fn new(kind: TierKind, p: TierParams) -> Tier {
        Tier {
            kind,
            p,
            lru: LruSet::default(),
            stats: TierStats {
                capacity_units: p.capacity_units,
                ..TierStats::default()
            },
        }
    }

    /// Native O2 (`CPUOffloadingManager.prepare_store`): adds the `keys` the tier lacks at its MRU end,
    /// in order, after evicting least recent units that are not among `keys` (the whole batch is
    /// protected); all or nothing: None, nothing changed, when too few can be evicted. Returns the
    /// units added.
    fn store_batch(&mut self, keys: &[u64]) -> Option<u64> {
        let new: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| !self.lru.contains(k))
            .collect();
        let n = new.len() as u64;
        let room = self.p.capacity_units - self.lru.len() as u64;
        if n > room {
            let need = (n - room) as usize;
            let protected: crate::fasthash::FastSet<u64> = keys.iter().copied().collect();
            let victims: Vec<u64> = self
                .lru
                .iter_lru()
                .filter(|k| !protected.contains(k))
                .take(need)
                .collect();
            if victims.len() < need {
                self.stats.skipped_stores += 1;
                return None;
            }
            for k in &victims {
                self.lru.remove(k);
            }
            self.stats.evictions += need as u64;
        }
        for k in new {
            self.lru.push(k);
        }
        Some(n)
    }

    /// LMCache put, one chunk after another: a chunk the tier lacks goes in at its MRU end, evicting
    /// its LRU chunk when full. Returns the units added.
    fn put_each(&mut self, keys: &[u64]) -> u64 {
        let mut added = 0;
        for &k in keys {
            if self.lru.contains(&k) {
                continue;
            }
            if self.lru.len() as u64 >= self.p.capacity_units {
                self.lru.pop_lru();
                self.stats.evictions += 1;
            }
            self.lru.push(k);
            added += 1;
        }
        added
    }

    fn load_time(&self, bytes: u64) -> f64 {
        if bytes == 0 {
            return 0.0;
        }
        self.p.latency_s + bytes as f64 / self.p.bandwidth_bytes_per_s
    }
}

/// A cache's content, reference-free, for persistence and restarts: the GPU prefix cache's hashes and
/// each tier's unit keys, each list in eviction order (least recent first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    pub gpu: Vec<u64>,
    /// Indexed by `TierKind as usize`.
    pub tiers: [Vec<u64>; 2],
}

/// A paged store with lower tiers (see the module docs). The GPU side is `inner`, unchanged: the tiers
/// only add hits after its hit, and copies.
#[derive(Clone, Debug)]
pub struct Tiered<K> {
    inner: K,
    p: OffloadParams,
    tiers: Vec<Tier>,
    stats: OffloadStats,
    /// Units (offloaded blocks or chunks) each live request has offered to the tiers so far.
    offered: crate::fasthash::FastMap<RequestId, u32>,
}

impl<K: KvStore> Tiered<K> {
    pub fn new(inner: K, p: OffloadParams) -> Tiered<K> {
        let tiers = p.tiers.iter().map(|&(k, tp)| Tier::new(k, tp)).collect();
        Tiered {
            inner,
            p,
            tiers,
            stats: OffloadStats::default(),
            offered: Default::default(),
        }
    }

    /// The GPU store (tests).
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// A tier's unit keys in eviction order, least recent first (tests).
    pub fn tier_keys(&self, kind: TierKind) -> Vec<u64> {
        self.tier(kind)
            .map(|t| t.lru.iter_lru().collect())
            .unwrap_or_default()
    }

    fn tier(&self, kind: TierKind) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.kind == kind)
    }

    /// Unit `i`'s key: the hash of its last GPU block, which names the whole prefix it ends (K5).
    fn key(&self, hashes: &crate::workload::content::Hashes<'_>, i: usize) -> u64 {
        hashes[(i + 1) * self.p.unit_blocks as usize - 1]
    }

    /// The units of `req` to offer now: full units of what it has computed (native: prompt and output;
    /// LMCache: prompt only).
    fn reached_units(&self, req: &Request) -> u32 {
        let upto = match self.p.backend {
            Backend::Native => req.num_computed_tokens,
            Backend::LmCache => req.num_computed_tokens.min(req.prompt_tokens),
        };
        let by_hashes = req.block_hashes.len() as u32 / self.p.unit_blocks;
        (upto / self.p.unit_tokens()).min(by_hashes)
    }

    fn stats_of(&mut self, kind: TierKind) -> &mut TierStats {
        &mut self.stats.tiers[kind as usize]
    }
}

impl<K: KvStore> KvStore for Tiered<K> {
    fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit {
        self.inner.get_computed_blocks(req)
    }

    fn get_external_hit(&mut self, req: &mut Request, local_tokens: u32) -> ExternalHit {
        req.update_block_hashes(self.p.block_size);
        let ut = self.p.unit_tokens();
        let n = req.num_tokens();
        let full_units =
            ((n / ut) as usize).min(req.block_hashes.len() / self.p.unit_blocks as usize);
        let chain = req.block_hashes.share();
        let hashes = chain.hashes();
        let mut out = ExternalHit::default();
        match self.p.backend {
            Backend::Native => {
                // A unit is one GPU block here (`block_size_factor` 1): its key is its block's hash.
                debug_assert_eq!(self.p.unit_blocks, 1);
                let keys = &hashes[..full_units];
                // Native offload has one tier, CPU memory (the config refuses a disk tier).
                let t = &mut self.tiers[0];
                for k in keys.iter().rev() {
                    t.lru.promote(k);
                }
                // O3: nothing to load unless a whole unit lies past the GPU hit.
                if (full_units as u32 * ut).saturating_sub(local_tokens) < ut {
                    return out;
                }
                let start = (local_tokens / ut) as usize;
                let hits = keys[start..]
                    .iter()
                    .take_while(|k| t.lru.contains(k))
                    .count();
                let tokens = ((start + hits) as u32 * ut).saturating_sub(local_tokens);
                if tokens < ut {
                    return out;
                }
                out.tier_tokens[TierKind::Cpu as usize] = tokens;
                out.asynchronous = true;
                let secs = t.load_time(tokens as u64 * self.p.bytes_per_token);
                out.load = SimDuration::from_secs_f64(secs).max(SimDuration(1));
            }
            Backend::LmCache => {
                // L2: each tier serves the next run of chunks; the first gap ends the hit.
                let mut pos = 0usize;
                let mut runs = [(0usize, 0usize); 2];
                for (ti, t) in self.tiers.iter().enumerate() {
                    let from = pos;
                    while pos < full_units && t.lru.contains(&self.key(&hashes, pos)) {
                        pos += 1;
                    }
                    runs[ti] = (from, pos);
                }
                let hit = pos as u32 * ut;
                // L3: tokens to load = LMCache hit - local hit, less one if the whole prompt hit.
                let upto = if hit == n { hit - 1 } else { hit };
                if upto <= local_tokens {
                    return out;
                }
                let mut secs = 0.0;
                for (ti, &(from, to)) in runs.iter().enumerate() {
                    let lo = (from as u32 * ut).max(local_tokens);
                    let hi = (to as u32 * ut).min(upto);
                    if hi <= lo {
                        continue;
                    }
                    let tokens = hi - lo;
                    let kind = self.tiers[ti].kind;
                    out.tier_tokens[kind as usize] = tokens;
                    out.served[ti] = (lo / ut, hi.div_ceil(ut));
                    secs += self.tiers[ti].load_time(tokens as u64 * self.p.bytes_per_token);
                }
                out.load = SimDuration::from_secs_f64(secs).max(SimDuration(1));
            }
        }
        let tokens = out.tokens();
        out.computed = if local_tokens + tokens >= n {
            tokens - 1
        } else {
            tokens
        };
        out
    }

    fn record_admission(&mut self, req: &Request, hit_tokens: u32) {
        self.inner.record_admission(req, hit_tokens);
    }

    /// vLLM's connector counters follow P1 (a preempted request's lookup is not exported); the tiers'
    /// loaded tokens and bytes count every load.
    ///
    /// LMCache reads the chunks it serves now, at admission: a read refreshes a chunk's recency, and a
    /// chunk read from disk is put into the CPU tier (promotion).
    fn record_external(&mut self, req: &Request, ext: &ExternalHit) {
        if !req.was_preempted {
            self.stats.queries += req.num_tokens() as u64;
            self.stats.hits += ext.tokens() as u64;
        }
        if self.p.backend == Backend::LmCache && ext.tokens() > 0 {
            let chain = req.block_hashes.share();
            let hashes = chain.hashes();
            let unit_bytes = self.p.unit_tokens() as u64 * self.p.bytes_per_token;
            for (ti, &(first, last)) in ext.served.iter().enumerate().take(self.tiers.len()) {
                let keys: Vec<u64> = (first as usize..last as usize)
                    .map(|i| self.key(&hashes, i))
                    .collect();
                for k in &keys {
                    self.tiers[ti].lru.promote(k);
                }
                if self.tiers[ti].kind == TierKind::Disk && self.tiers[0].kind == TierKind::Cpu {
                    let added = self.tiers[0].put_each(&keys);
                    self.stats.tiers[TierKind::Cpu as usize].stored_bytes += added * unit_bytes;
                }
            }
        }
        self.stats.load_s += ext.load.as_secs_f64();
        let bpt = self.p.bytes_per_token;
        for kind in TierKind::ALL {
            let tokens = ext.tier_tokens[kind as usize] as u64;
            let s = self.stats_of(kind);
            s.hit_tokens += tokens;
            s.loaded_bytes += tokens * bpt;
        }
    }

    fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
        self.inner.allocate_slots(req, num_new, hit)
    }

    fn free(&mut self, req: &mut Request) {
        // A preempted request offers its units again as it recomputes them (those still held are skipped).
        self.offered.remove(&req.id);
        self.inner.free(req)
    }

    fn on_enqueue(&mut self, req: &mut Request) {
        self.inner.on_enqueue(req)
    }

    fn on_token(&mut self, req: &mut Request) {
        self.inner.on_token(req)
    }

    /// O2 / L2: write-through of the full units each scheduled request has newly computed. Native: one
    /// store per request, retried with the next step's units when the tier could not take it; after a
    /// store that added units, the request's units are touched (its first ends most recent), as vLLM's
    /// connector does. LMCache: a put per chunk into every tier.
    fn after_step(&mut self, reqs: &mut RequestTable, scheduled: &[(RequestId, u32)]) {
        self.inner.after_step(reqs, scheduled);
        let unit_bytes = self.p.unit_tokens() as u64 * self.p.bytes_per_token;
        for &(id, _) in scheduled {
            let Some(r) = reqs.get_mut(&id) else { continue };
            r.update_block_hashes(self.p.block_size);
            let reached = self.reached_units(r);
            let offered = self.offered.get(&id).copied().unwrap_or(0);
            if reached <= offered {
                continue;
            }
            let chain = r.block_hashes.share();
            let hashes = chain.hashes();
            let keys: Vec<u64> = (offered as usize..reached as usize)
                .map(|i| self.key(&hashes, i))
                .collect();
            match self.p.backend {
                Backend::Native => {
                    let Some(added) = self.tiers[0].store_batch(&keys) else {
                        continue;
                    };
                    self.offered.insert(id, reached);
                    if added > 0 {
                        let t = &mut self.tiers[0];
                        for i in (0..reached as usize).rev() {
                            t.lru
                                .promote(&hashes[(i + 1) * self.p.unit_blocks as usize - 1]);
                        }
                        self.stats.tiers[TierKind::Cpu as usize].stored_bytes += added * unit_bytes;
                    }
                }
                Backend::LmCache => {
                    self.offered.insert(id, reached);
                    for ti in 0..self.tiers.len() {
                        let added = self.tiers[ti].put_each(&keys);
                        let kind = self.tiers[ti].kind;
                        self.stats_of(kind).stored_bytes += added * unit_bytes;
                    }
                }
            }
        }
    }

    fn on_session_end(&mut self, session: SessionId) {
        self.inner.on_session_end(session)
    }

    fn used_blocks(&self) -> u32 {
        self.inner.used_blocks()
    }

    fn stats(&self) -> KvStats {
        let mut s = self.inner.stats();
        let mut o = self.stats;
        for t in &self.tiers {
            let x = &mut o.tiers[t.kind as usize];
            x.capacity_units = t.p.capacity_units;
            x.used_units = t.lru.len() as u64;
            x.evictions = t.stats.evictions;
            x.skipped_stores = t.stats.skipped_stores;
        }
        s.offload = Some(o);
        s
    }

    fn check_invariants(&self, reqs: &RequestTable) -> Result<(), String> {
        for t in &self.tiers {
            if t.lru.len() as u64 > t.p.capacity_units {
                return Err(format!(
                    "{} tier holds {} units, over its capacity {}",
                    t.kind.as_str(),
                    t.lru.len(),
                    t.p.capacity_units
                ));
            }
        }
        self.inner.check_invariants(reqs)
    }

    fn snapshot(&self) -> CacheSnapshot {
        let mut s = self.inner.snapshot();
        for t in &self.tiers {
            s.tiers[t.kind as usize] = t.lru.iter_lru().collect();
        }
        s
    }

    fn restore(&mut self, snap: &CacheSnapshot) {
        self.inner.restore(snap);
        for t in &mut self.tiers {
            let keys = &snap.tiers[t.kind as usize];
            // The most recent units that fit.
            let skip = keys.len().saturating_sub(t.p.capacity_units as usize);
            t.lru.clear();
            for &k in &keys[skip..] {
                t.lru.push(k);
            }
        }
    }

    fn restart_keep(&self) -> CacheSnapshot {
        let mut s = CacheSnapshot::default();
        for t in &self.tiers {
            if t.p.survives_restart {
                s.tiers[t.kind as usize] = t.lru.iter_lru().collect();
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_native_store_never_evicts_a_unit_of_its_own_batch() {
        let mut t = Tier::new(
            TierKind::Cpu,
            TierParams {
                capacity_units: 3,
                bandwidth_bytes_per_s: 1.0,
                latency_s: 0.0,
                survives_restart: false,
            },
        );
        for k in [1, 2, 3] {
            t.lru.push(k);
        }
        // [1, 2, 3], 1 least recent. Storing [1, 9] adds 9 and must evict one unit: 1 is in the batch,
        // so 2 goes.
        assert_eq!(t.store_batch(&[1, 9]), Some(1));
        assert_eq!(t.lru.iter_lru().collect::<Vec<_>>(), [1, 3, 9]);
        // Storing 4 new units into 3: skipped, nothing changed.
        assert_eq!(t.store_batch(&[4, 5, 6, 7]), None);
        assert_eq!(t.lru.iter_lru().collect::<Vec<_>>(), [1, 3, 9]);
        // [3, 9, 5, 6]: 3 and 9 are held, 5 and 6 new; only 1 may go, and 2 must: skipped.
        assert_eq!(t.store_batch(&[3, 9, 5, 6]), None);
        assert_eq!(t.stats.skipped_stores, 2);
    }
}
