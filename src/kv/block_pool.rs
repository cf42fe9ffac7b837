//! vLLM V1's block pool (engine-semantics K1-K4, K8, K11): ref-counted blocks, one free queue holding every
//! block with ref count 0 (cached or empty), and a map from block hash to the cached blocks.
//!
//! Without the prefix cache the pool is *anonymous* (`BlockPool::anonymous`): no block ever holds content
//! past its release, so which free block an allocation gets, and so the free queue's order, can change
//! nothing observable. Free blocks are then a plain stack of ids and per-block records are not kept: on a
//! cache-off run the queue's bookkeeping was a third of all time.
//!
//! The free queue is a ring of block ids in queue order with lazy removal: a block taken out of the middle
//! (a hit, K4) only forgets its position, and its stale ring entry is skipped when it reaches the head, so
//! removal is O(1) and popping the head reads the ring sequentially. (An intrusive linked list, the obvious
//! alternative, made every allocation a dependent cache miss on the next block: the allocator's hottest
//! line in a profile.) The ring is compacted when stale entries outnumber the blocks.

pub type BlockId = u32;
/// `Meta::qpos` of a block not in the free queue.
const NOT_QUEUED: u64 = u64::MAX;

use super::hash_index::{prefetch_ptr, HashIndex, PREFETCH_AHEAD};
use crate::fasthash::FastMap;
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug)]
struct Meta {
    /// The block's hash while it is registered in `cached` (`hashed`).
    hash: u64,
    /// The block's absolute position in the free queue (see `BlockPool::ring`), or `NOT_QUEUED`.
    qpos: u64,
    ref_cnt: u32,
    hashed: bool,
    /// The watch epoch of the lookup whose hit holds this block (see `BlockPool::watch`).
    watch: u16,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            hash: 0,
            qpos: NOT_QUEUED,
            ref_cnt: 0,
            hashed: false,
            watch: 0,
        }
    }
}

impl Meta {
    #[inline]
    fn hash(&self) -> Option<u64> {
        self.hashed.then_some(self.hash)
    }

    #[inline]
    fn take_hash(&mut self) -> Option<u64> {
        let h = self.hash();
        self.hashed = false;
        h
    }
}

/// The pool. Block 0 is the null block and is never handed out (K1).
#[derive(Clone, Debug)]
pub struct BlockPool {
    /// Per-block state in one array of 24-byte records: a block operation touches one cache line, not four
    /// (block ids are effectively random after warm-up, so each array access would be its own miss).
    m: Vec<Meta>,
    /// The free queue, head at the front: every ref-0 block once, at the entry its `qpos` names, plus stale
    /// entries of blocks that left the queue from the middle (or left and came back, further on).
    ring: VecDeque<BlockId>,
    /// Absolute position of `ring.front()`: entry i is at position `head_pos + i`.
    head_pos: u64,
    num_free: u32,
    /// Free blocks that still hold a hash (evictable cached blocks).
    num_free_cached: u32,
    /// Hash -> the first registered block with that hash. Entries of evicted blocks stay behind, stale, until
    /// overwritten or purged: an entry is live only while its block still holds that hash.
    cached: HashIndex,
    /// Hash -> later duplicates, in registration order. No dedup (K8): identical blocks computed separately
    /// are all registered; duplicates are rare, so they live apart from the hot map.
    dups: FastMap<u64, VecDeque<BlockId>>,
    evictions: u64,
    /// The watched lookup: its blocks carry `watch_epoch`; evicting one breaks the watch. Epochs wrap,
    /// which can only break a watch spuriously (a block left from an older epoch), never miss an eviction.
    watch_epoch: u16,
    watch_broken: bool,
    num_blocks: u32,
    /// Some in an anonymous pool: the free blocks, in no meaningful order (`m`, `ring` and `cached` unused).
    stack: Option<Vec<BlockId>>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks (ids 0..num_blocks), all free but the null block, in ascending order (K2).
    pub fn new(num_blocks: u32) -> BlockPool {
        assert!(num_blocks >= 2, "a pool needs the null block and one more");
        let n = num_blocks as usize;
        let mut m = vec![Meta::default(); n];
        for (b, x) in m.iter_mut().enumerate().skip(1) {
            x.qpos = (b - 1) as u64;
        }
        m[0].ref_cnt = 1; // the null block is permanently referenced
        BlockPool {
            m,
            ring: (1..num_blocks).collect(),
            head_pos: 0,
            num_free: num_blocks - 1,
            num_free_cached: 0,
            cached: HashIndex::with_max_live(n),
            dups: FastMap::default(),
            evictions: 0,
            watch_epoch: 0,
            watch_broken: true,
            num_blocks,
            stack: None,
        }
    }

    /// A pool in a given state (the piece pool's hand-over, `PiecePool::to_block_pool`): each block's
    /// reference count and hash by id (entry 0, the null block, is ignored), the free queue from head to
    /// tail, and the evictions so far. The hashes must be distinct: a piece pool holds no duplicates.
    pub fn restore(
        num_blocks: u32,
        blocks: &[(u32, Option<u64>)],
        queue: &[BlockId],
        evictions: u64,
    ) -> BlockPool {
        let mut p = BlockPool::new(num_blocks);
        for (b, x) in p.m.iter_mut().enumerate().skip(1) {
            let (r, h) = blocks[b];
            *x = Meta {
                hash: h.unwrap_or(0),
                qpos: NOT_QUEUED,
                ref_cnt: r,
                hashed: h.is_some(),
                watch: 0,
            };
        }
        p.ring = queue.iter().copied().collect();
        p.num_free = queue.len() as u32;
        p.num_free_cached = 0;
        for (i, &b) in queue.iter().enumerate() {
            let x = &mut p.m[b as usize];
            assert_eq!(x.ref_cnt, 0, "a queued block is held");
            x.qpos = i as u64;
            p.num_free_cached += x.hashed as u32;
        }
        let live =
            p.m.iter()
                .enumerate()
                .filter(|(_, x)| x.hashed)
                .map(|(b, x)| (x.hash, b as BlockId));
        p.cached.rebuild(live);
        p.evictions = evictions;
        p
    }

    /// The hashes of the free cached blocks, from the head of the free queue (evicted first) to its
    /// tail; a hash registered twice (K8) is listed once, at its later position.
    pub fn cached_in_queue_order(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .ring
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| {
                let x = &self.m[b as usize];
                (x.qpos == self.head_pos + i as u64 && x.ref_cnt == 0)
                    .then(|| x.hash())
                    .flatten()
            })
            .collect();
        let mut seen = crate::fasthash::FastSet::default();
        out.reverse();
        out.retain(|h| seen.insert(*h));
        out.reverse();
        out
    }

    /// A pool whose free queue holds its empty blocks first, then blocks cached with `hashes` (distinct),
    /// in order: a warm start's GPU cache, the last hash evicted last. Extra hashes beyond the pool's
    /// usable blocks are dropped from the front (the least recent).
    pub fn warm(num_blocks: u32, hashes: &[u64]) -> BlockPool {
        let usable = num_blocks as usize - 1;
        let hashes = &hashes[hashes.len().saturating_sub(usable)..];
        let empty = usable - hashes.len();
        let mut blocks = vec![(0u32, None); num_blocks as usize];
        for (i, &h) in hashes.iter().enumerate() {
            blocks[1 + empty + i] = (0, Some(h));
        }
        let queue: Vec<BlockId> = (1..num_blocks).collect();
        BlockPool::restore(num_blocks, &blocks, &queue, 0)
    }

    /// A pool for a replica without the prefix cache (see the module docs): every block is held by at
    /// most one request, nothing is ever registered or touched, and blocks are told apart only so that
    /// invariant checks can account for them.
    pub fn anonymous(num_blocks: u32) -> BlockPool {
        assert!(num_blocks >= 2, "a pool needs the null block and one more");
        BlockPool {
            m: Vec::new(),
            ring: VecDeque::new(),
            head_pos: 0,
            num_free: num_blocks - 1,
            num_free_cached: 0,
            cached: HashIndex::with_max_live(0),
            dups: FastMap::default(),
            evictions: 0,
            watch_epoch: 0,
            watch_broken: true,
            num_blocks,
            // Popped from the end: ascending ids first, as a fresh vLLM pool hands them out.
            stack: Some((1..num_blocks).rev().collect()),
        }
    }

    /// Reference counts of all blocks, by id (the null block's is 1). In an anonymous pool a block is held
    /// once or free.
    pub fn ref_counts(&self) -> Vec<u32> {
        match &self.stack {
            None => self.m.iter().map(|x| x.ref_cnt).collect(),
            Some(stack) => {
                let mut r = vec![1u32; self.num_blocks() as usize];
                for &b in stack {
                    r[b as usize] = 0;
                }
                r
            }
        }
    }

    /// Total blocks, the null block included.
    pub fn num_blocks(&self) -> u32 {
        self.num_blocks
    }

    /// Blocks in the free queue (empty or cached-but-evictable).
    pub fn num_free(&self) -> u32 {
        self.num_free
    }

    /// Free blocks that still hold cached content.
    pub fn num_free_cached(&self) -> u32 {
        self.num_free_cached
    }

    /// Blocks referenced by live requests (the null block excluded).
    pub fn num_used(&self) -> u32 {
        self.num_blocks() - 1 - self.num_free
    }

    /// Cached blocks evicted so far (a cached block popped from the free queue's head).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// K11: 1 - free / usable. Cached-but-free blocks count as free.
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free as f64 / (self.num_blocks() - 1) as f64
    }

    /// Not for anonymous pools (which hold no hits, the only reason to ask); see `ref_counts`.
    pub fn ref_cnt(&self, b: BlockId) -> u32 {
        self.m[b as usize].ref_cnt
    }

    pub fn block_hash(&self, b: BlockId) -> Option<u64> {
        self.m.get(b as usize).and_then(|x| x.hash())
    }

    /// The first registered block with this hash, if any (K6: "the first one found is used").
    pub fn lookup(&self, hash: u64) -> Option<BlockId> {
        if self.stack.is_some() {
            return None;
        }
        self.cached
            .get(hash)
            .filter(|&b| self.m[b as usize].hash() == Some(hash))
    }

    /// Starts watching a new lookup (forgetting the previous one); add its blocks with `watch`.
    pub fn watch_new(&mut self) {
        self.watch_epoch = self.watch_epoch.wrapping_add(1);
        self.watch_broken = false;
    }

    /// Adds blocks to the watched lookup.
    pub fn watch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            self.m[b as usize].watch = self.watch_epoch;
        }
    }

    /// True while no watched block has been evicted since `watch_new`: every block of the watched lookup
    /// still holds its hash and is still the block a lookup of that hash finds.
    pub fn watch_intact(&self) -> bool {
        !self.watch_broken
    }

    /// Prefetch hint for a coming `lookup(hash)` or `cache_block(_, hash)`.
    #[inline]
    pub fn prefetch_hash(&self, hash: u64) {
        self.cached.prefetch(hash);
    }

    /// Prefetch hint for a coming operation on block `b`.
    #[inline]
    pub fn prefetch_block(&self, b: BlockId) {
        prefetch_ptr(self.m.as_ptr().wrapping_add(b as usize));
    }

    /// The free queue from head to tail (tests and invariant checks).
    pub fn free_queue(&self) -> Vec<BlockId> {
        if let Some(stack) = &self.stack {
            return stack.iter().rev().copied().collect();
        }
        let mut out = Vec::with_capacity(self.num_free as usize);
        for (i, &b) in self.ring.iter().enumerate() {
            if self.m[b as usize].qpos == self.head_pos + i as u64 {
                out.push(b);
            }
        }
        out
    }

    /// K4: takes a reference on each block; a block at ref 0 leaves the free queue (the LRU refresh).
    pub fn touch(&mut self, blocks: &[BlockId]) {
        assert!(
            self.stack.is_none() || blocks.is_empty(),
            "a hit in an anonymous pool"
        );
        for (i, &b) in blocks.iter().enumerate() {
            if let Some(&ahead) = blocks.get(i + PREFETCH_AHEAD) {
                self.prefetch_block(ahead);
            }
            if self.m[b as usize].ref_cnt == 0 {
                self.unlink(b);
                if self.m[b as usize].hashed {
                    self.num_free_cached -= 1;
                }
            }
            self.m[b as usize].ref_cnt += 1;
        }
    }

    /// K2: pops `n` blocks from the head of the free queue, evicting any cached content they hold.
    /// The caller must have checked `n <= num_free()`.
    pub fn allocate(&mut self, n: u32, out: &mut Vec<BlockId>) {
        assert!(n <= self.num_free, "allocate beyond the free queue");
        if let Some(stack) = &mut self.stack {
            out.extend(stack.drain(stack.len() - n as usize..).rev());
            self.num_free -= n;
            return;
        }
        out.reserve(n as usize);
        for _ in 0..n {
            let b = self.pop_head();
            self.num_free -= 1;
            if let Some(h) = self.m[b as usize].take_hash() {
                self.num_free_cached -= 1;
                self.evictions += 1;
                if self.m[b as usize].watch == self.watch_epoch {
                    self.watch_broken = true;
                }
                self.unregister(b, h);
            }
            self.m[b as usize].ref_cnt = 1;
            out.push(b);
        }
    }

    /// K3: drops one reference from each block, in the order given; blocks reaching 0 join the tail.
    /// Callers pass a request's blocks last block first.
    pub fn free<I: IntoIterator<Item = BlockId>>(&mut self, blocks: I) {
        if let Some(stack) = &mut self.stack {
            let before = stack.len();
            stack.extend(blocks);
            self.num_free += (stack.len() - before) as u32;
            return;
        }
        for b in blocks {
            let r = &mut self.m[b as usize].ref_cnt;
            assert!(*r > 0, "invariant 2: ref count would go negative");
            *r -= 1;
            if *r == 0 {
                self.push_tail(b);
                if self.m[b as usize].hashed {
                    self.num_free_cached += 1;
                }
            }
        }
    }

    /// K3 for one request: frees `table` last block first (what `free` does with the reversed table),
    /// prefetching the blocks ahead.
    pub fn free_table(&mut self, table: &[BlockId]) {
        if self.stack.is_some() {
            return self.free(table.iter().rev().copied());
        }
        for i in (0..table.len()).rev() {
            if i >= PREFETCH_AHEAD {
                self.prefetch_block(table[i - PREFETCH_AHEAD]);
            }
            self.free([table[i]]);
        }
    }

    /// K8: registers a held block under `hash`. Registering a block that already has a hash is a no-op.
    pub fn cache_block(&mut self, b: BlockId, hash: u64) {
        assert!(self.stack.is_none(), "registering in an anonymous pool");
        debug_assert!(
            self.m[b as usize].ref_cnt > 0,
            "only held blocks are registered"
        );
        if self.m[b as usize].hashed {
            return;
        }
        if self.cached.crowded() {
            self.purge_stale();
        }
        // `b` takes its hash only after the insert: a stale entry of its own earlier registration under the
        // same hash must read as stale and be overwritten, not make `b` a duplicate of itself.
        let m = &self.m;
        let live = |h: u64, x: BlockId| m[x as usize].hash() == Some(h);
        if !self.cached.insert_unless_live(hash, b, live) {
            self.dups.entry(hash).or_default().push_back(b);
        }
        self.m[b as usize].hash = hash;
        self.m[b as usize].hashed = true;
    }

    /// Rebuilds the hash index from its live entries. Without duplicates those are simply every hashed
    /// block, found by one sequential pass over the blocks (no random reads); with duplicates, the blocks
    /// lookups find are kept as they are.
    fn purge_stale(&mut self) {
        let m = &self.m;
        if self.dups.is_empty() {
            let live = m
                .iter()
                .enumerate()
                .filter(|(_, x)| x.hashed)
                .map(|(b, x)| (x.hash, b as BlockId));
            self.cached.rebuild(live);
        } else {
            let live: Vec<(u64, BlockId)> = self
                .cached
                .iter()
                .filter(|&(h, b)| m[b as usize].hash() == Some(h))
                .collect();
            self.cached.rebuild(live);
        }
    }

    /// Unregisters the evicted block `b` from hash `h`: the oldest duplicate, if any, becomes the one lookups
    /// find; without duplicates the index entry is left to go stale.
    fn unregister(&mut self, b: BlockId, h: u64) {
        // Without duplicates the entry simply goes stale (the caller has cleared the block's hash).
        if self.dups.is_empty() || !self.dups.contains_key(&h) {
            return;
        }
        let first = self.cached.get(h).expect("a hashed block is in the map");
        if first == b {
            match self.dups.get_mut(&h).and_then(|d| d.pop_front()) {
                Some(next) => self.cached.set(h, next),
                None => self.cached.remove(h),
            }
        } else {
            let d = self.dups.get_mut(&h).expect("a duplicate is listed");
            let pos = d.iter().position(|&x| x == b).expect("listed");
            d.remove(pos);
        }
        if self.dups.get(&h).is_some_and(|d| d.is_empty()) {
            self.dups.remove(&h);
        }
    }

    /// Every block registered under `hash`, first (the one lookups find) to last.
    pub fn blocks_with_hash(&self, hash: u64) -> Vec<BlockId> {
        let mut v: Vec<BlockId> = self.lookup(hash).into_iter().collect();
        if let Some(d) = self.dups.get(&hash) {
            v.extend(d.iter().copied());
        }
        v
    }

    /// The first live block of the ring, removed (the caller updates `num_free`). Stale entries before it
    /// are dropped. Blocks a few entries ahead are prefetched: ring order is sequential, block records are
    /// not.
    fn pop_head(&mut self) -> BlockId {
        loop {
            if let Some(&ahead) = self.ring.get(PREFETCH_AHEAD) {
                self.prefetch_block(ahead);
            }
            let b = self.ring.pop_front().expect("num_free > 0");
            let pos = self.head_pos;
            self.head_pos += 1;
            let x = &mut self.m[b as usize];
            if x.qpos == pos {
                x.qpos = NOT_QUEUED;
                return b;
            }
        }
    }

    /// Takes `b` out of the middle of the free queue: its ring entry goes stale.
    fn unlink(&mut self, b: BlockId) {
        self.m[b as usize].qpos = NOT_QUEUED;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, b: BlockId) {
        if self.ring.len() >= 2 * self.m.len() {
            self.compact();
        }
        self.m[b as usize].qpos = self.head_pos + self.ring.len() as u64;
        self.ring.push_back(b);
        self.num_free += 1;
    }

    /// Drops the stale entries (at least half the ring when called from `push_tail`, as live entries are
    /// fewer than the blocks) and renumbers the live ones, keeping their order.
    fn compact(&mut self) {
        let mut live = VecDeque::with_capacity(self.m.len());
        for (i, &b) in self.ring.iter().enumerate() {
            if self.m[b as usize].qpos == self.head_pos + i as u64 {
                live.push_back(b);
            }
        }
        for (i, &b) in live.iter().enumerate() {
            self.m[b as usize].qpos = self.head_pos + i as u64;
        }
        self.ring = live;
    }

    /// Invariant 2 in full: the free queue holds exactly the ref-0 blocks, counts agree, and the hash map
    /// and the per-block hashes agree. O(blocks); called after every step in debug builds.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(stack) = &self.stack {
            let mut seen = vec![false; self.num_blocks as usize];
            for &b in stack {
                if b == 0 || b >= self.num_blocks || std::mem::replace(&mut seen[b as usize], true)
                {
                    return Err(format!("block {b} free twice or out of range"));
                }
            }
            if stack.len() as u32 != self.num_free || self.num_free_cached != 0 {
                return Err("anonymous pool counts disagree".into());
            }
            return Ok(());
        }
        let q = self.free_queue();
        if q.len() as u32 != self.num_free {
            return Err(format!(
                "free queue length {} != num_free {}",
                q.len(),
                self.num_free
            ));
        }
        let mut in_q = vec![false; self.m.len()];
        for &b in &q {
            if in_q[b as usize] {
                return Err(format!("block {b} twice in the free queue"));
            }
            in_q[b as usize] = true;
        }
        let mut free_cached = 0;
        for (b, x) in self.m.iter().enumerate().skip(1) {
            let zero = x.ref_cnt == 0;
            if zero != in_q[b] {
                return Err(format!(
                    "block {b}: ref {} but in free queue = {}",
                    x.ref_cnt, in_q[b]
                ));
            }
            if zero && x.hashed {
                free_cached += 1;
            }
            if let Some(h) = x.hash() {
                if !self.blocks_with_hash(h).contains(&(b as u32)) {
                    return Err(format!("block {b} has a hash but is not in the map"));
                }
            }
        }
        if free_cached != self.num_free_cached {
            return Err(format!(
                "free cached {} != counter {}",
                free_cached, self.num_free_cached
            ));
        }
        if self.num_used() + self.num_free != self.num_blocks() - 1 {
            return Err("used + free != usable blocks".into());
        }
        let hashed = self.m.iter().filter(|x| x.hashed).count();
        let live = self
            .cached
            .iter()
            .filter(|&(h, b)| self.m[b as usize].hash() == Some(h))
            .count();
        let dups: usize = self.dups.values().map(|d| d.len()).sum();
        if hashed != live + dups {
            return Err(format!(
                "{hashed} hashed blocks but {live} live map entries and {dups} duplicates"
            ));
        }
        let listed = self
            .cached
            .iter()
            .filter(|&(h, b)| self.m[b as usize].hash() == Some(h))
            .chain(
                self.dups
                    .iter()
                    .flat_map(|(h, d)| d.iter().map(move |b| (*h, *b))),
            );
        for (h, b) in listed {
            if self.m[b as usize].hash() != Some(h) {
                return Err(format!("map lists block {b} under a hash it does not hold"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k1_null_block_reserved_and_k2_initial_order() {
        let p = BlockPool::new(5);
        assert_eq!(p.free_queue(), vec![1, 2, 3, 4]);
        assert_eq!(p.num_free(), 4);
        assert_eq!(p.ref_cnt(0), 1);
        p.check_invariants().unwrap();
    }

    #[test]
    fn k2_allocate_from_head_evicting_cached() {
        let mut p = BlockPool::new(4);
        let mut a = Vec::new();
        p.allocate(1, &mut a); // block 1
        p.cache_block(1, 77);
        p.free([1]); // queue: 2, 3, 1 (1 cached)
        assert_eq!(p.free_queue(), vec![2, 3, 1]);
        assert_eq!(p.lookup(77), Some(1));
        let mut b = Vec::new();
        p.allocate(3, &mut b);
        // Head first: 2, 3, then 1, whose cached content is evicted on the way out.
        assert_eq!(b, vec![2, 3, 1]);
        assert_eq!(p.lookup(77), None);
        assert_eq!(p.evictions(), 1);
        p.check_invariants().unwrap();
    }

    #[test]
    fn k3_release_order_tail_first() {
        let mut p = BlockPool::new(6);
        let mut t = Vec::new();
        p.allocate(3, &mut t); // a request holds 1, 2, 3
        p.free(t.iter().rev().copied());
        // Remaining free 4, 5, then the request's blocks last block first: 3, 2, 1.
        assert_eq!(p.free_queue(), vec![4, 5, 3, 2, 1]);
    }

    #[test]
    fn k4_touch_unlinks_and_refree_goes_to_tail() {
        let mut p = BlockPool::new(5);
        let mut t = Vec::new();
        p.allocate(2, &mut t);
        p.cache_block(1, 10);
        p.cache_block(2, 20);
        p.free([2, 1]); // queue: 3, 4, 2, 1
        assert_eq!(p.num_free_cached(), 2);
        p.touch(&[2]); // hit: 2 leaves the queue
        assert_eq!(p.free_queue(), vec![3, 4, 1]);
        assert_eq!(p.num_free_cached(), 1);
        p.touch(&[2]); // a hit on a held block moves nothing, ref goes to 2
        assert_eq!(p.ref_cnt(2), 2);
        p.free([2]);
        assert_eq!(p.free_queue(), vec![3, 4, 1]);
        p.free([2]); // refreshed: rejoins at the tail
        assert_eq!(p.free_queue(), vec![3, 4, 1, 2]);
        p.check_invariants().unwrap();
    }

    #[test]
    fn k4_ring_compaction_keeps_queue_order() {
        // Hit-and-release the same two blocks many times without allocating: each cycle leaves stale ring
        // entries behind, enough to force several compactions; the queue order must be what K3/K4 say.
        let mut p = BlockPool::new(6);
        let mut t = Vec::new();
        p.allocate(2, &mut t); // 1, 2
        p.cache_block(1, 10);
        p.cache_block(2, 20);
        p.free([2, 1]); // queue: 3, 4, 5, 2, 1
        for i in 0..50 {
            let (a, b) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            p.touch(&[a, b]);
            p.free([b, a]);
            p.check_invariants().unwrap();
        }
        // The last cycle (i = 49) released 1 then 2.
        assert_eq!(p.free_queue(), vec![3, 4, 5, 1, 2]);
        let mut x = Vec::new();
        p.allocate(4, &mut x);
        assert_eq!(x, vec![3, 4, 5, 1]);
        assert_eq!(p.lookup(10), None);
        assert_eq!(p.lookup(20), Some(2));
        assert!(p.ring.len() <= 2 * 6, "compaction bounds the ring");
        p.check_invariants().unwrap();
    }

    #[test]
    fn k8_no_dedup_first_registered_wins() {
        let mut p = BlockPool::new(4);
        let mut t = Vec::new();
        p.allocate(2, &mut t);
        p.cache_block(1, 5);
        p.cache_block(2, 5);
        assert_eq!(p.lookup(5), Some(1));
        p.free([1]);
        let mut x = Vec::new();
        p.allocate(2, &mut x); // 3, then 1 (evicted): the duplicate 2 still answers
        assert_eq!(p.lookup(5), Some(2));
        p.check_invariants().unwrap();
    }

    #[test]
    fn k11_usage_counts_cached_free_as_free() {
        let mut p = BlockPool::new(5);
        let mut t = Vec::new();
        p.allocate(2, &mut t);
        assert!((p.usage() - 0.5).abs() < 1e-12);
        p.cache_block(1, 1);
        p.free([1]);
        assert!((p.usage() - 0.25).abs() < 1e-12);
    }
}
