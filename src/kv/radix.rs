//! SGLang's radix cache (`python/sglang/srt/mem_cache/radix_cache.py`; engine-semantics G2-G5): a tree of
//! token segments whose paths from the root are the cached token sequences, token-granular (SGLang's
//! default `page_size` = 1).
//!
//! - **Match** (G2): walk down from the root by each child's first token; a match that ends inside a
//!   node's segment splits the node there. Every match stamps the same access time on the root and on
//!   every node it passes, the split-off remainder of the last one included.
//! - **Locks** (G3): a request pins the path from its last matched node up to the root (root excluded),
//!   adding 1 to each node's `lock_ref`. `evictable_size` counts tokens in nodes with `lock_ref` = 0,
//!   `protected_size` the rest.
//! - **Eviction** (G4, `lru`): a min-heap of evictable leaves (unlocked, no child on the GPU) by last
//!   access time, oldest first (ties: the node created first); pop one, free its tokens, delete it; a
//!   parent left childless and unlocked joins the heap. Stops once at least the asked-for tokens are freed or nothing
//!   is evictable. Whole nodes go, so it may free more than asked.
//! - **Insertion** (G5): after compute; the part of the key already in the tree is not added again
//!   (SGLang deduplicates: the caller frees its own copy of those tokens), and `insert` returns its length.
//!
//! - **Host tier** (HiCache, H1-H4; `with_host`, SGLang's `HiRadixCache`): a node may have its KV on the
//!   GPU, a copy in host memory, or both. Insertions count hits and copy a node to host at its first
//!   (`write_through`) or second (`write_through_selective`) hit, locking it until the caller says the
//!   copy is done ([`RadixCache::take_writes`]); `write_back` copies at eviction. GPU eviction takes the
//!   least recently used unlocked node with no child on the GPU, keeps it host-only if it has a copy and
//!   deletes it otherwise; a full host tier deletes its least recently used host-only leaves. GPU nodes
//!   always sit above host-only ones, so a match ([`RadixCache::match_tiers`]) is a GPU part then a host
//!   part, which [`RadixCache::load_back`] brings back to the GPU. Sizes (`evictable_size`,
//!   `protected_size`, `total_size`) count GPU tokens; the host tier counts its own.
//!
//! The tree stores no KV slot indices: a token's slot is accounted for by the pool that owns the tree
//! (its free-token count), which is all the simulator needs. Keys are runs of content tokens ([`Run`]):
//! token k of a content stream is `(content, k)`, so the run (c, s, n) stands for tokens (c, s) ..
//! (c, s + n - 1) and two requests share a token exactly where both hold the same offset of the same
//! content, as their block hashes say in the paged store. Runs keep a node's segment small whatever its
//! token count; matching compares run against run, never token by token.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// One token: (content stream, offset in it).
pub type Token = (u64, u32);

/// Tokens `start .. start + len` of content stream `content`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    pub content: u64,
    pub start: u32,
    pub len: u32,
}

impl Run {
    fn first(&self) -> Token {
        (self.content, self.start)
    }
}

/// A node of the tree, by index.
pub type NodeId = u32;

/// The root: never evicted, never locked, holds no tokens.
pub const ROOT: NodeId = 0;

#[derive(Clone, Debug)]
struct Node {
    parent: NodeId,
    /// Children by the first token of their segment.
    children: BTreeMap<Token, NodeId>,
    /// The segment, normalised ([`normalize`]); empty only for the root.
    key: Vec<Run>,
    /// Tokens in `key`.
    len: u32,
    lock_ref: u32,
    last_access: u64,
    /// Creation order (arena slots are reused, so the index is not it): breaks ties in eviction order.
    created: u64,
    /// Its place among its parent's children, in the order SGLang's children dict keeps them
    /// (insertion order; a node split off in a child's place takes that child's place).
    slot: u64,
    live: bool,
    /// Its KV is on the GPU (SGLang: not `evicted`). Without a host tier every live node's is.
    device: bool,
    /// A copy of its KV is in host memory (SGLang: `backuped`).
    host: bool,
    /// Insertions that passed it since its creation (SGLang `hit_count`, for write-through).
    hits: u32,
}

/// A match: the tokens matched from the key's start and the node the match ended on (the root for none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub tokens: u32,
    pub node: NodeId,
}

/// A match through both tiers: the GPU part, and the host-only tokens after it, ending on `host_node`
/// (the GPU match's node when there are none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierMatch {
    pub device: Match,
    pub host_tokens: u32,
    pub host_node: NodeId,
}

/// SGLang's `RadixCache` (see the module docs). Sizes are in tokens.
#[derive(Clone, Debug)]
pub struct RadixCache {
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    created: u64,
    evictable_size: u64,
    protected_size: u64,
    /// The host tier (HiCache), if any.
    host: Option<HostTier>,
    /// Write-throughs started since [`RadixCache::take_writes`] was last called, with their tokens:
    /// each node is locked until its copy is done (the caller unlocks it).
    writes: Vec<(NodeId, u32)>,
}

/// When a node's KV is copied to host memory (SGLang `--hicache-write-policy`, H2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritePolicy {
    /// At its first hit (its insertion counts).
    WriteThrough,
    /// At its second hit.
    WriteThroughSelective,
    /// When the GPU evicts it.
    WriteBack,
}

/// The host tier's size and counters, in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTier {
    pub capacity: u64,
    pub used: u64,
    pub policy: WritePolicy,
    /// Tokens copied to host, and deleted from host (host-only nodes evicted).
    pub written: u64,
    pub evicted: u64,
}

impl Default for RadixCache {
    fn default() -> Self {
        RadixCache::new()
    }
}

/// `runs` with empty runs dropped and runs that continue each other (same content, next offset) merged.
pub fn normalize(runs: &[Run]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs.iter().filter(|r| r.len > 0) {
        match out.last_mut() {
            Some(last) if last.content == r.content && last.start + last.len == r.start => {
                last.len += r.len
            }
            _ => out.push(*r),
        }
    }
    out
}

/// Tokens `a` and `b` share from their starts (both normalised), `b` read from `b_offset` tokens into
/// its first run.
fn common_prefix(a: &[Run], b: &[Run], b_offset: u32) -> u32 {
    let (mut i, mut j, mut oi, mut oj, mut n) = (0, 0, 0u32, b_offset, 0u32);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        if x.content != y.content || x.start + oi != y.start + oj {
            break;
        }
        // Equal tokens stay equal to the end of the shorter remainder: both runs count up one content.
        let step = (x.len - oi).min(y.len - oj);
        n += step;
        oi += step;
        oj += step;
        if oi == x.len {
            i += 1;
            oi = 0;
        }
        if oj == y.len {
            j += 1;
            oj = 0;
        }
    }
    n
}

/// `key` split after `k` tokens.
fn split_at(key: &[Run], k: u32) -> (Vec<Run>, Vec<Run>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = k;
    for r in key {
        if left >= r.len {
            head.push(*r);
            left -= r.len;
        } else if left > 0 {
            head.push(Run { len: left, ..*r });
            tail.push(Run {
                start: r.start + left,
                len: r.len - left,
                ..*r
            });
            left = 0;
        } else {
            tail.push(*r);
        }
    }
    (head, tail)
}

fn total(key: &[Run]) -> u32 {
    key.iter().map(|r| r.len).sum()
}

impl RadixCache {
    pub fn new() -> RadixCache {
        RadixCache {
            nodes: vec![Node {
                parent: ROOT,
                children: BTreeMap::new(),
                key: Vec::new(),
                len: 0,
                lock_ref: 0,
                last_access: 0,
                created: 0,
                slot: 0,
                live: true,
                device: true,
                host: false,
                hits: 0,
            }],
            free: Vec::new(),
            created: 1,
            evictable_size: 0,
            protected_size: 0,
            host: None,
            writes: Vec::new(),
        }
    }

    /// The same (empty) tree with a host tier of `capacity` tokens written by `policy` (SGLang's
    /// `HiRadixCache`, H1-H4).
    pub fn with_host(mut self, capacity: u64, policy: WritePolicy) -> RadixCache {
        self.host = Some(HostTier {
            capacity,
            used: 0,
            policy,
            written: 0,
            evicted: 0,
        });
        self
    }

    /// Whether `node` is in the tree.
    pub fn is_live(&self, node: NodeId) -> bool {
        self.nodes.get(node as usize).is_some_and(|n| n.live)
    }

    /// The host tier, if any.
    pub fn host_tier(&self) -> Option<&HostTier> {
        self.host.as_ref()
    }

    /// The write-throughs started since the last call (each node locked until the caller, once the
    /// copy is done, calls [`RadixCache::dec_lock_ref`] on it).
    pub fn take_writes(&mut self) -> Vec<(NodeId, u32)> {
        std::mem::take(&mut self.writes)
    }

    /// Tokens in unlocked nodes (SGLang `evictable_size()`).
    pub fn evictable_size(&self) -> u64 {
        self.evictable_size
    }

    /// Tokens in locked nodes (SGLang `protected_size()`).
    pub fn protected_size(&self) -> u64 {
        self.protected_size
    }

    /// Tokens in the tree with their KV on the GPU (host-only nodes are in the host tier's `used`).
    pub fn total_size(&self) -> u64 {
        self.evictable_size + self.protected_size
    }

    fn alloc(&mut self, parent: NodeId, key: Vec<Run>, lock_ref: u32, now: u64) -> NodeId {
        let node = Node {
            parent,
            children: BTreeMap::new(),
            len: total(&key),
            key,
            lock_ref,
            last_access: now,
            created: self.created,
            slot: self.created,
            live: true,
            device: true,
            host: false,
            hits: 0,
        };
        self.created += 1;
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    /// Splits `child` after `k` tokens (0 < k < its length): a new node takes the first `k` tokens, the
    /// parent link and the locks (SGLang `_split_node`); `child` keeps the rest below it. Returns the new
    /// node. Sizes do not change: the same tokens, under the same locks.
    fn split(&mut self, child: NodeId, k: u32, now: u64) -> NodeId {
        let c = &self.nodes[child as usize];
        let (parent, lock_ref) = (c.parent, c.lock_ref);
        let (device, host, hits) = (c.device, c.host, c.hits);
        let (head, tail) = split_at(&c.key, k);
        let first = head[0].first();
        let mid = self.alloc(parent, head, lock_ref, now);
        let m = &mut self.nodes[mid as usize];
        (m.device, m.host, m.hits) = (device, host, hits);
        // The new node takes the child's place in the parent's dict; the child is its only child.
        let child_slot = self.nodes[child as usize].slot;
        self.nodes[child as usize].slot = self.nodes[mid as usize].slot;
        self.nodes[mid as usize].slot = child_slot;
        let c = &mut self.nodes[child as usize];
        c.key = tail;
        c.len -= k;
        c.parent = mid;
        let tail_first = c.key[0].first();
        self.nodes[mid as usize].children.insert(tail_first, child);
        self.nodes[parent as usize].children.insert(first, mid);
        mid
    }

    /// One step down from `node` along the key `rest` (its first run read from `offset`): the child filed
    /// under the key's next token, stamped `now`, and the tokens its segment shares with the key; None at
    /// the key's end or where no child continues it.
    fn descend(
        &mut self,
        node: NodeId,
        rest: &[Run],
        offset: u32,
        now: u64,
    ) -> Option<(NodeId, u32)> {
        let r = rest.first()?;
        let child = *self.nodes[node as usize]
            .children
            .get(&(r.content, r.start + offset))?;
        let c = &mut self.nodes[child as usize];
        c.last_access = now;
        Some((child, common_prefix(&c.key, rest, offset)))
    }

    /// The longest cached prefix of `key` on the GPU (SGLang `match_prefix`), stamping `now` on the path
    /// (module docs). Splits the last node if the match ends inside it, so that the returned node ends
    /// exactly at the match.
    pub fn match_prefix(&mut self, key: &[Run], now: u64) -> Match {
        self.match_tiers(key, now).device
    }

    /// [`RadixCache::match_prefix`] through the host tier too (SGLang `HiRadixCache.match_prefix`):
    /// the GPU match, then the host-only nodes that continue it (`host_hit_length`).
    pub fn match_tiers(&mut self, key: &[Run], now: u64) -> TierMatch {
        let key = normalize(key);
        let (mut rest, mut offset) = (&key[..], 0u32);
        let (mut node, mut matched) = (ROOT, 0u32);
        let mut device = Match {
            tokens: 0,
            node: ROOT,
        };
        self.nodes[ROOT as usize].last_access = now;
        while let Some((child, k)) = self.descend(node, rest, offset, now) {
            matched += k;
            let partial = k < self.nodes[child as usize].len;
            node = if partial {
                self.split(child, k, now)
            } else {
                child
            };
            // GPU nodes sit above host-only ones: the GPU match is the walk's leading part.
            if self.nodes[node as usize].device {
                device = Match {
                    tokens: matched,
                    node,
                };
            }
            if partial {
                break;
            }
            (rest, offset) = advance(rest, offset, k);
        }
        TierMatch {
            device,
            host_tokens: matched - device.tokens,
            host_node: node,
        }
    }

    /// Adds `key` to the tree (SGLang `insert`), stamping `now` on the nodes it passes; returns how many
    /// of its leading tokens were already cached on the GPU (the caller's copy of those is the duplicate
    /// to free; a host-only node it passes takes the caller's copy as its GPU copy). With a host tier,
    /// every GPU node passed and the new one count a hit for write-through, unless `chunked` (a
    /// continuation chunk's insertion, SGLang's `cache_unfinished_req(chunked=True)`, counts none).
    pub fn insert(&mut self, key: &[Run], now: u64) -> u32 {
        self.insert_counting(key, now, false)
    }

    /// [`RadixCache::insert`] with the `chunked` flag.
    pub fn insert_counting(&mut self, key: &[Run], now: u64, chunked: bool) -> u32 {
        let key = normalize(key);
        let (mut rest, mut offset) = (&key[..], 0u32);
        let (mut node, mut present) = (ROOT, 0u32);
        self.nodes[ROOT as usize].last_access = now;
        // Ends at the key's end, or where no child continues it (after a split, the split-off remainder
        // differs from the key at its first token).
        while let Some((child, k)) = self.descend(node, rest, offset, now) {
            (rest, offset) = advance(rest, offset, k);
            node = if k < self.nodes[child as usize].len {
                self.split(child, k, now)
            } else {
                child
            };
            let n = &mut self.nodes[node as usize];
            if n.device {
                present += k;
                self.hit(node, chunked);
            } else {
                // Recomputed: the caller's KV becomes the node's GPU copy.
                n.device = true;
                self.evictable_size += n.len as u64;
            }
        }
        if rest.is_empty() {
            return present;
        }
        let mut tail = rest.to_vec();
        tail[0].start += offset;
        tail[0].len -= offset;
        let first = tail[0].first();
        let len = total(&tail) as u64;
        let new = self.alloc(node, tail, 0, now);
        self.nodes[node as usize].children.insert(first, new);
        self.evictable_size += len;
        if self
            .host
            .is_some_and(|h| h.policy != WritePolicy::WriteBack)
        {
            self.hit(new, chunked);
        }
        present
    }

    /// SGLang `_inc_hit_count`: a write-through copies a node to host at its first (selective: second)
    /// hit.
    fn hit(&mut self, node: NodeId, chunked: bool) {
        let Some(h) = self.host else { return };
        let n = &mut self.nodes[node as usize];
        if h.policy == WritePolicy::WriteBack || n.host || chunked {
            return;
        }
        n.hits += 1;
        let threshold = match h.policy {
            WritePolicy::WriteThroughSelective => 2,
            _ => 1,
        };
        if n.hits >= threshold && self.backup(node) {
            // Locked until the copy is done (the caller unlocks it).
            self.inc_lock_ref(node);
            let len = self.nodes[node as usize].len;
            self.writes.push((node, len));
        }
    }

    /// Copies `node` to host (SGLang `write_backup`), evicting host-only nodes for room; false when the
    /// host tier cannot hold it.
    fn backup(&mut self, node: NodeId) -> bool {
        let len = self.nodes[node as usize].len as u64;
        let Some(h) = self.host else { return false };
        if h.used + len > h.capacity {
            self.evict_host(len);
        }
        let h = self.host.as_mut().expect("a host tier");
        if h.used + len > h.capacity {
            return false;
        }
        h.used += len;
        h.written += len;
        self.nodes[node as usize].host = true;
        true
    }

    /// Loads the host-only nodes from `node` up to the GPU match back to the GPU (SGLang `load_back`;
    /// the caller has allocated their slots); returns their tokens.
    pub fn load_back(&mut self, mut node: NodeId) -> u32 {
        let mut loaded = 0;
        while node != ROOT && !self.nodes[node as usize].device {
            let n = &mut self.nodes[node as usize];
            debug_assert!(n.host && n.lock_ref == 0);
            n.device = true;
            loaded += n.len;
            self.evictable_size += n.len as u64;
            node = n.parent;
        }
        loaded
    }

    /// Pins the path from `node` up to the root (root excluded): SGLang `inc_lock_ref`.
    pub fn inc_lock_ref(&mut self, mut node: NodeId) {
        while node != ROOT {
            let n = &mut self.nodes[node as usize];
            if n.lock_ref == 0 {
                self.evictable_size -= n.len as u64;
                self.protected_size += n.len as u64;
            }
            n.lock_ref += 1;
            node = n.parent;
        }
    }

    /// Releases a pin taken by [`RadixCache::inc_lock_ref`] on the same node: SGLang `dec_lock_ref`.
    /// Panics if the path is not locked (a caller's bug).
    pub fn dec_lock_ref(&mut self, mut node: NodeId) {
        while node != ROOT {
            let n = &mut self.nodes[node as usize];
            assert!(n.lock_ref > 0, "dec_lock_ref on an unlocked node");
            n.lock_ref -= 1;
            if n.lock_ref == 0 {
                self.evictable_size += n.len as u64;
                self.protected_size -= n.len as u64;
            }
            node = n.parent;
        }
    }

    /// A GPU leaf SGLang may evict: on the GPU, unlocked, no child on the GPU.
    fn evictable_leaf(&self, id: NodeId) -> bool {
        let n = &self.nodes[id as usize];
        id != ROOT
            && n.live
            && n.device
            && n.lock_ref == 0
            && n.children.values().all(|&c| !self.nodes[c as usize].device)
    }

    /// Frees at least `tokens` GPU tokens by evicting least recently used evictable leaves (SGLang
    /// `evict`, policy `lru`), or every evictable token if there are fewer; returns the tokens freed. A
    /// node with a host copy keeps it and stays in the tree, host-only (H3); under `write_back` one
    /// without is copied first when the host tier has room; any other is deleted.
    pub fn evict(&mut self, tokens: u64) -> u64 {
        self.evict_lru(tokens, RadixCache::evictable_leaf, |t, id| {
            let len = t.nodes[id as usize].len as u64;
            let write_back = t.host.is_some_and(|h| h.policy == WritePolicy::WriteBack);
            if !t.nodes[id as usize].host && write_back {
                t.backup(id);
            }
            t.evictable_size -= len;
            if t.nodes[id as usize].host {
                t.nodes[id as usize].device = false;
            } else {
                t.delete(id);
            }
        })
    }

    /// The LRU loop both evictions share: a min-heap of the nodes `leaf` accepts, by (last access,
    /// creation); pop one, `remove` it, and push its parent if `leaf` now accepts it; until at least
    /// `tokens` tokens are gone or the heap is empty. Returns the tokens removed (whole nodes).
    fn evict_lru(
        &mut self,
        tokens: u64,
        leaf: fn(&RadixCache, NodeId) -> bool,
        remove: fn(&mut RadixCache, NodeId),
    ) -> u64 {
        let key = |t: &RadixCache, id: NodeId| {
            let n = &t.nodes[id as usize];
            Reverse((n.last_access, n.created, id))
        };
        let mut heap: BinaryHeap<_> = (0..self.nodes.len() as NodeId)
            .filter(|&id| leaf(self, id))
            .map(|id| key(self, id))
            .collect();
        let mut freed = 0u64;
        while freed < tokens {
            let Some(Reverse((_, _, id))) = heap.pop() else {
                break;
            };
            let (parent, len) = {
                let n = &self.nodes[id as usize];
                (n.parent, n.len as u64)
            };
            remove(self, id);
            freed += len;
            if leaf(self, parent) {
                heap.push(key(self, parent));
            }
        }
        freed
    }

    /// Removes node `id` (already off the GPU's counts) and the host-only nodes below it from the tree.
    fn delete(&mut self, id: NodeId) {
        let (parent, first) = {
            let n = &self.nodes[id as usize];
            (n.parent, n.key[0].first())
        };
        self.nodes[parent as usize].children.remove(&first);
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            let n = &mut self.nodes[x as usize];
            stack.extend(n.children.values().copied());
            if n.host {
                let h = self.host.as_mut().expect("a host copy needs a host tier");
                h.used -= n.len as u64;
                if x != id {
                    h.evicted += n.len as u64;
                }
            }
            n.live = false;
            n.key = Vec::new();
            n.children = BTreeMap::new();
            self.free.push(x);
        }
    }

    /// Frees at least `tokens` host tokens by deleting least recently used host-only leaves (SGLang
    /// `evict_host`); a parent left childless and host-only joins the candidates.
    pub fn evict_host(&mut self, tokens: u64) -> u64 {
        let leaf = |t: &RadixCache, id: NodeId| {
            let n = &t.nodes[id as usize];
            id != ROOT && n.live && !n.device && n.children.is_empty()
        };
        self.evict_lru(tokens, leaf, |t, id| {
            let len = t.nodes[id as usize].len as u64;
            t.delete(id);
            t.host
                .as_mut()
                .expect("host-only nodes need a host tier")
                .evicted += len;
        })
    }

    /// SGLang's `dfs-weight` order (`schedule_policy.py::_sort_by_dfs_weight`) of waiting requests
    /// whose matches ended on `last_nodes` (in queue order): a node's weight is the number of requests
    /// ending on it or below it; the tree is walked depth first from the root, children by weight,
    /// heaviest first (ties in the children dict's order), and each node's requests, in queue order,
    /// come after those of its subtree. Returns indices into `last_nodes`.
    pub fn dfs_weight_order(&self, last_nodes: &[NodeId]) -> Vec<usize> {
        let n = self.nodes.len();
        let mut own: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, &node) in last_nodes.iter().enumerate() {
            own[node as usize].push(i);
        }
        // Weights bottom up: a post-order from the root (iterative: the tree may be deep).
        let mut weight: Vec<u64> = own.iter().map(|v| v.len() as u64).collect();
        let mut order = Vec::with_capacity(n);
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            order.push(id);
            stack.extend(self.nodes[id as usize].children.values().copied());
        }
        for &id in order.iter().rev() {
            if id != ROOT {
                let p = self.nodes[id as usize].parent;
                weight[p as usize] += weight[id as usize];
            }
        }
        // The walk: children heaviest first, then the node's own requests.
        let mut out = Vec::with_capacity(last_nodes.len());
        let mut stack: Vec<(NodeId, bool)> = vec![(ROOT, false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                out.extend_from_slice(&own[id as usize]);
                continue;
            }
            stack.push((id, true));
            let mut kids: Vec<NodeId> =
                self.nodes[id as usize].children.values().copied().collect();
            kids.sort_by_key(|&c| (Reverse(weight[c as usize]), self.nodes[c as usize].slot));
            // Pushed in reverse so that the heaviest is walked first.
            stack.extend(kids.into_iter().rev().map(|c| (c, false)));
        }
        out
    }

    /// Every cached token sequence ending at a leaf, as runs, in a fixed order (for tests and checks).
    pub fn leaf_keys(&self) -> Vec<Vec<Run>> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, Vec::new())];
        while let Some((id, path)) = stack.pop() {
            let n = &self.nodes[id as usize];
            if id != ROOT && n.children.is_empty() {
                out.push(normalize(&path));
            }
            for &c in n.children.values().rev() {
                let mut p = path.clone();
                p.extend_from_slice(&self.nodes[c as usize].key);
                stack.push((c, p));
            }
        }
        out
    }

    /// Debug builds: the sizes equal the tokens in unlocked and locked nodes, every child is filed under
    /// its first token, every non-root node holds tokens, and a child is locked no more than its parent.
    pub fn debug_check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let (mut ev, mut pr, mut host) = (0u64, 0u64, 0u64);
        for (id, n) in self.nodes.iter().enumerate() {
            if !n.live || id as NodeId == ROOT {
                continue;
            }
            assert!(n.len > 0 && n.len == total(&n.key), "node {id}");
            let p = &self.nodes[n.parent as usize];
            assert_eq!(p.children.get(&n.key[0].first()), Some(&(id as NodeId)));
            // Tiers: a node is on the GPU or in host memory; GPU nodes sit above host-only ones, and
            // only GPU nodes are locked.
            assert!(n.device || n.host, "node {id} in neither tier");
            assert!(n.device || n.lock_ref == 0, "host-only node {id} locked");
            assert!(
                n.parent == ROOT || p.device || !n.device,
                "GPU node {id} below a host-only one"
            );
            if n.host {
                host += n.len as u64;
            }
            if !n.device {
                continue;
            }
            if n.lock_ref == 0 {
                ev += n.len as u64;
            } else {
                pr += n.len as u64;
            }
            if n.parent != ROOT {
                assert!(
                    p.lock_ref >= n.lock_ref,
                    "node {id} locked more than its parent"
                );
            }
        }
        assert_eq!((ev, pr), (self.evictable_size, self.protected_size));
        assert_eq!(host, self.host.map_or(0, |h| h.used));
        assert!(self.host.is_none_or(|h| h.used <= h.capacity));
    }
}

/// `(rest, offset)` advanced by `k` tokens.
fn advance(mut rest: &[Run], mut offset: u32, mut k: u32) -> (&[Run], u32) {
    while k > 0 {
        let left = rest[0].len - offset;
        if k >= left {
            k -= left;
            rest = &rest[1..];
            offset = 0;
        } else {
            offset += k;
            k = 0;
        }
    }
    (rest, offset)
}
