use super::{ReplicaView, Route, Router};
use crate::config::{CacheAwareConfig, LoadSignal};
use crate::event::ReplicaId;
use crate::fasthash::FastMap;
use crate::request::Request;
use crate::time::{SimDuration, SimTime};

/// Characters per token, as GIE counts them (R1): tree sizes are in characters.
const CHARS_PER_TOKEN: u64 = 4;

/// The SGLang gateway's cache-aware policy (R5).
///
/// - **Imbalanced** (max - min load > `balance_abs_threshold` and max > `balance_rel_threshold` x min,
///   over the replicas taking new requests, load by `cluster.load_signal`): the least loaded.
/// - Otherwise the prompt is matched in a radix tree shared by all replicas, each node listing the
///   replicas (tenants) whose routed prompts passed through it. If the matched share of the prompt
///   exceeds `cache_threshold`, a tenant of the deepest matched node (the one that took that prefix
///   most recently, the lowest id on a tie); else the least loaded.
/// - The prompt is inserted under the pick either way. Every `eviction_interval_s` (checked at arrivals,
///   not as an event), each replica holding more than `max_tree_size` characters loses its least
///   recently used leaves until it holds no more.
///
/// The tree's edges are prompt segments (a content id and its length): servesim's prompts share
/// prefixes at segment boundaries, so this matches what SGLang's character tree matches, in tokens.
pub struct CacheAware {
    cfg: CacheAwareConfig,
    signal: LoadSignal,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Characters each replica holds in the tree, by id.
    size: Vec<u64>,
    next_eviction: SimTime,
}

struct Node {
    parent: u32,
    /// The edge into this node: (content id, tokens).
    key: (u64, u32),
    depth: u32,
    children: FastMap<(u64, u32), u32>,
    /// (tenant, last time a prompt routed to it passed here).
    tenants: Vec<(ReplicaId, SimTime)>,
}

const ROOT: u32 = 0;

impl CacheAware {
    pub fn new(cfg: &CacheAwareConfig, signal: LoadSignal) -> CacheAware {
        CacheAware {
            cfg: cfg.clone(),
            signal,
            nodes: vec![Node {
                parent: ROOT,
                key: (0, 0),
                depth: 0,
                children: FastMap::default(),
                tenants: Vec::new(),
            }],
            free: Vec::new(),
            size: Vec::new(),
            next_eviction: SimTime::ZERO + SimDuration::from_secs_f64(cfg.eviction_interval_s),
        }
    }

    /// The deepest node on `req`'s path with a tenant taking new requests, and the tokens matched to it.
    fn longest_match(&self, req: &Request, replicas: &[ReplicaView]) -> Option<(u32, u64)> {
        let mut node = ROOT;
        let mut matched = 0u64;
        let mut best = None;
        for s in &req.prompt {
            let Some(&c) = self.nodes[node as usize].children.get(&(s.content, s.len)) else {
                break;
            };
            node = c;
            matched += s.len as u64;
            let eligible = self.nodes[c as usize]
                .tenants
                .iter()
                .any(|&(t, _)| replicas[t as usize].takes_new());
            if eligible {
                best = Some((c, matched));
            }
        }
        best
    }

    fn insert(&mut self, req: &Request, tenant: ReplicaId, now: SimTime) {
        if self.size.len() <= tenant as usize {
            self.size.resize(tenant as usize + 1, 0);
        }
        let mut node = ROOT;
        for s in &req.prompt {
            let key = (s.content, s.len);
            let child = match self.nodes[node as usize].children.get(&key) {
                Some(&c) => c,
                None => {
                    let n = Node {
                        parent: node,
                        key,
                        depth: self.nodes[node as usize].depth + 1,
                        children: FastMap::default(),
                        tenants: Vec::new(),
                    };
                    let c = match self.free.pop() {
                        Some(c) => {
                            self.nodes[c as usize] = n;
                            c
                        }
                        None => {
                            self.nodes.push(n);
                            (self.nodes.len() - 1) as u32
                        }
                    };
                    self.nodes[node as usize].children.insert(key, c);
                    c
                }
            };
            let ts = &mut self.nodes[child as usize].tenants;
            match ts.iter_mut().find(|(t, _)| *t == tenant) {
                Some(e) => e.1 = now,
                None => {
                    ts.push((tenant, now));
                    self.size[tenant as usize] += s.len as u64 * CHARS_PER_TOKEN;
                }
            }
            node = child;
        }
    }

    /// Evicts each oversized tenant's least recently used leaves. A parent's time is at least each
    /// child's (an insert stamps the whole path), so in (time, deeper first) order every node comes
    /// after its descendants of the same tenant: it is a leaf of that tenant when its turn comes.
    fn evict(&mut self) {
        for tenant in 0..self.size.len() as u32 {
            if self.size[tenant as usize] <= self.cfg.max_tree_size {
                continue;
            }
            let mut held: Vec<(SimTime, std::cmp::Reverse<u32>, u32)> = self
                .nodes
                .iter()
                .enumerate()
                .skip(1)
                .filter_map(|(i, n)| {
                    n.tenants
                        .iter()
                        .find(|(t, _)| *t == tenant)
                        .map(|&(_, at)| (at, std::cmp::Reverse(n.depth), i as u32))
                })
                .collect();
            held.sort_unstable();
            for (_, _, i) in held {
                if self.size[tenant as usize] <= self.cfg.max_tree_size {
                    break;
                }
                let n = &mut self.nodes[i as usize];
                n.tenants.retain(|(t, _)| *t != tenant);
                self.size[tenant as usize] -= n.key.1 as u64 * CHARS_PER_TOKEN;
                if n.tenants.is_empty() {
                    debug_assert!(
                        n.children.is_empty(),
                        "a node's tenants cover its children's"
                    );
                    let (parent, key) = (n.parent, n.key);
                    self.nodes[parent as usize].children.remove(&key);
                    self.free.push(i);
                }
            }
        }
    }

    /// Nodes in the tree, the root excluded.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len() - 1 - self.free.len()
    }
}

impl Router for CacheAware {
    fn route(&mut self, req: &Request, now: SimTime, replicas: &[ReplicaView]) -> Route {
        if now >= self.next_eviction {
            self.evict();
            let every =
                SimDuration::from_secs_f64(self.cfg.eviction_interval_s).max(SimDuration(1));
            // The first tick of the interval's grid after now.
            let k = now.since(self.next_eviction).0 / every.0 + 1;
            self.next_eviction += SimDuration(k.saturating_mul(every.0));
        }
        let signal = self.signal;
        let (lo, hi) = replicas
            .iter()
            .filter(|v| v.takes_new())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v.load(signal)), hi.max(v.load(signal)))
            });
        if lo > hi {
            return Route::Reject;
        }
        let imbalanced =
            hi - lo > self.cfg.balance_abs_threshold && hi > self.cfg.balance_rel_threshold * lo;
        let cached = if imbalanced {
            None
        } else {
            self.longest_match(req, replicas)
                .and_then(|(node, matched)| {
                    let share = matched as f64 / (req.prompt_tokens as f64).max(1.0);
                    (share > self.cfg.cache_threshold).then(|| {
                        self.nodes[node as usize]
                            .tenants
                            .iter()
                            .filter(|&&(t, _)| replicas[t as usize].takes_new())
                            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                            .expect("an eligible tenant")
                            .0
                    })
                })
        };
        let pick = cached
            .or_else(|| super::least_loaded(replicas, signal))
            .expect("a replica takes new requests");
        self.insert(req, pick, now);
        Route::To(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request_with, views};
    use super::*;

    fn secs(s: f64) -> SimTime {
        SimTime::ZERO + SimDuration::from_secs_f64(s)
    }

    #[test]
    fn follows_a_match_over_the_threshold_else_least_loaded() {
        let cfg = CacheAwareConfig {
            cache_threshold: 0.5,
            ..CacheAwareConfig::default()
        };
        let mut r = CacheAware::new(&cfg, LoadSignal::Requests);
        // First turn: nothing matched, least loaded (replica 1 of loads 3, 1, 2).
        let t1 = request_with(1, &[(9, 600), (1, 100)]);
        assert_eq!(
            r.route(&t1, secs(0.0), &views(&[3, 1, 2], &[])),
            Route::To(1)
        );
        // Second turn extends it: 700 of 900 tokens matched (0.78 > 0.5): replica 1, though now the
        // most loaded of three balanced ones (loads 1, 2, 1: max - min = 1 is no imbalance).
        let t2 = request_with(1, &[(9, 600), (1, 100), (2, 200)]);
        assert_eq!(
            r.route(&t2, secs(1.0), &views(&[1, 2, 1], &[])),
            Route::To(1)
        );
        // Another session with the same system prompt: 600 of 1400 matched (0.43): least loaded (0).
        let other = request_with(2, &[(9, 600), (5, 800)]);
        assert_eq!(
            r.route(&other, secs(2.0), &views(&[0, 2, 1], &[])),
            Route::To(0)
        );
        // Imbalanced (max - min = 70 > 64 and 71 > 1.5 x 1): the least loaded whatever the match.
        let t3 = request_with(1, &[(9, 600), (1, 100), (2, 200), (3, 50)]);
        assert_eq!(
            r.route(&t3, secs(3.0), &views(&[71, 71, 1], &[])),
            Route::To(2)
        );
        // Balanced again: the deepest matched node is the third turn's last segment, whose only tenant
        // is 2 (950 of 1000 tokens matched).
        let t4 = request_with(1, &[(9, 600), (1, 100), (2, 200), (3, 50), (4, 50)]);
        assert_eq!(
            r.route(&t4, secs(4.0), &views(&[0, 0, 0], &[])),
            Route::To(2)
        );
        // Replica 2 down: the deepest node with an up tenant is the second turn's, tenant 1.
        assert_eq!(
            r.route(&t4, secs(5.0), &views(&[0, 0, 0], &[2])),
            Route::To(1)
        );
    }

    #[test]
    fn eviction_trims_each_replica_to_its_budget_oldest_leaves_first() {
        // 1000 characters (250 tokens) per replica, evicted every 10 s.
        let cfg = CacheAwareConfig {
            cache_threshold: 0.5,
            eviction_interval_s: 10.0,
            max_tree_size: 1000,
            ..CacheAwareConfig::default()
        };
        let mut r = CacheAware::new(&cfg, LoadSignal::Requests);
        let one = views(&[0], &[]);
        // Three prompts of 100 tokens (400 characters) each on the only replica: 1200 characters.
        for (i, at) in [(1u64, 0.0), (2, 1.0), (3, 2.0)] {
            r.route(&request_with(i, &[(i, 100)]), secs(at), &one);
        }
        assert_eq!(r.size[0], 1200);
        assert_eq!(r.num_nodes(), 3);
        // At 10 s the eviction runs before routing: the oldest (content 1) goes, 800 remain, then the
        // new 100-token prompt is inserted (1200 again).
        r.route(&request_with(4, &[(4, 100)]), secs(10.0), &one);
        assert_eq!(r.size[0], 1200);
        assert!(r
            .longest_match(&request_with(9, &[(1, 100)]), &one)
            .is_none());
        assert!(r
            .longest_match(&request_with(9, &[(2, 100)]), &one)
            .is_some());
        // A path's inner node outlives its leaf: [a, b] then, at the next eviction, a is newer than b.
        let mut r = CacheAware::new(&cfg, LoadSignal::Requests);
        r.route(&request_with(1, &[(7, 100), (8, 100)]), secs(0.0), &one);
        r.route(&request_with(2, &[(7, 100), (6, 60)]), secs(1.0), &one);
        // 400 + 400 + 240 = 1040 > 1000: the oldest leaf, (8, 100), goes first; 640 remain.
        r.route(&request_with(3, &[(5, 1)]), secs(10.0), &one);
        assert_eq!(r.size[0], 640 + 4);
        assert_eq!(r.num_nodes(), 3);
    }
}
