use super::{ReplicaView, Route, Router};
use crate::config::PrefixAwareConfig;
use crate::request::Request;
use crate::rng::StreamRng;
use crate::time::SimTime;
use crate::workload::content::extend_block_hashes;
use lru::LruCache;
use rand::Rng;

/// GIE's index capacity when it does not know the engine's block count (R1).
pub const DEFAULT_INDEX_BLOCKS: u64 = 31_250;

/// The Gateway API inference extension's scheduler as llm-d configures it (R1, R3, R4).
///
/// - **Prefix score (R1).** The prompt is cut into blocks of `block_size` tokens (the engine's by
///   default, GIE's `autoTune`), at most `max_prefix_blocks`, and chained-hashed. Matching walks the
///   blocks in order and stops at the first block no replica's index holds; each replica scores +1 per
///   earlier block its index holds; score = matched / total blocks. After a pick, the chosen replica's
///   index gets the whole chain (least recently used out past `index_blocks`). The index is the
///   router's guess from what it routed, not the engine's cache: it knows nothing of evictions.
///   Hashes cover full blocks only (GIE also hashes a partial tail, which only an identical prompt
///   shares).
/// - **Queue score (R3):** (max - q) / (max - min) over the candidates, q its waiting requests, 1 when
///   all are equal. **KV-utilisation score:** 1 - KV usage.
/// - **Pick (R4):** the highest weighted sum, ties at random.
pub struct PrefixAware {
    block_size: u32,
    max_blocks: usize,
    weights: [f64; 3],
    /// Blocks each replica's index holds at most.
    cap: usize,
    index: Vec<LruCache<u64, ()>>,
    rng: StreamRng,
    chain: Vec<u64>,
    matched: Vec<u32>,
    best: Vec<usize>,
}

impl PrefixAware {
    pub fn new(
        slots: u32,
        cfg: &PrefixAwareConfig,
        gpu_blocks: u64,
        engine_block_size: u32,
        rng: StreamRng,
    ) -> PrefixAware {
        let block_size = cfg.block_size.unwrap_or(engine_block_size);
        // The index counts blocks of its own size: the engine's pool in those blocks.
        let cap = cfg.index_blocks.unwrap_or_else(|| {
            if gpu_blocks == 0 {
                DEFAULT_INDEX_BLOCKS
            } else {
                (gpu_blocks * engine_block_size as u64 / block_size as u64).max(1)
            }
        });
        PrefixAware {
            cap: cap.max(1).min(usize::MAX as u64) as usize,
            block_size,
            max_blocks: cfg.max_prefix_blocks as usize,
            weights: [cfg.prefix_weight, cfg.queue_weight, cfg.kv_usage_weight],
            // Unbounded maps trimmed by hand: a bounded LruCache allocates its whole capacity up front.
            index: (0..slots).map(|_| LruCache::unbounded()).collect(),
            rng,
            chain: Vec::new(),
            matched: vec![0; slots as usize],
            best: Vec::new(),
        }
    }

    /// Each replica's prefix score for `req` (R1), into `self.matched` as blocks and returned as the
    /// block total.
    fn score_prefix(&mut self, req: &Request, replicas: &[ReplicaView]) -> usize {
        self.chain.clear();
        extend_block_hashes(&req.prompt, self.block_size, 0, &mut self.chain);
        self.chain.truncate(self.max_blocks);
        self.matched.iter_mut().for_each(|m| *m = 0);
        for &h in &self.chain {
            let mut any = false;
            for v in replicas.iter().filter(|v| v.takes_new()) {
                if self.index[v.id as usize].contains(&h) {
                    self.matched[v.id as usize] += 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        self.chain.len()
    }
}

impl Router for PrefixAware {
    fn route(&mut self, req: &Request, _now: SimTime, replicas: &[ReplicaView]) -> Route {
        let total = self.score_prefix(req, replicas);
        let (qmin, qmax) = replicas
            .iter()
            .filter(|v| v.takes_new())
            .fold((usize::MAX, 0), |(lo, hi), v| {
                (lo.min(v.num_waiting), hi.max(v.num_waiting))
            });
        let [wp, wq, wk] = self.weights;
        let mut top = f64::NEG_INFINITY;
        self.best.clear();
        for v in replicas.iter().filter(|v| v.takes_new()) {
            let prefix = if total == 0 {
                0.0
            } else {
                self.matched[v.id as usize] as f64 / total as f64
            };
            let queue = if qmax == qmin {
                1.0
            } else {
                (qmax - v.num_waiting) as f64 / (qmax - qmin) as f64
            };
            let kv = (1.0 - v.kv_usage).clamp(0.0, 1.0);
            let s = wp * prefix + wq * queue + wk * kv;
            if s > top {
                top = s;
                self.best.clear();
            }
            if s == top {
                self.best.push(v.id as usize);
            }
        }
        let pick = match self.best.len() {
            0 => return Route::Reject,
            1 => self.best[0],
            n => self.best[self.rng.random_range(0..n)],
        };
        let idx = &mut self.index[pick];
        for &h in &self.chain {
            idx.put(h, ());
            if idx.len() > self.cap {
                idx.pop_lru();
            }
        }
        Route::To(pick as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request_with, views};
    use super::*;
    use crate::rng::RngStreams;

    fn router(index_blocks: u64) -> PrefixAware {
        let cfg = PrefixAwareConfig {
            block_size: Some(16),
            index_blocks: Some(index_blocks),
            ..PrefixAwareConfig::default()
        };
        PrefixAware::new(3, &cfg, 0, 16, RngStreams::new(3).stream("t"))
    }

    #[test]
    fn follows_the_prefix_unless_load_outweighs_it() {
        let mut r = router(1000);
        let t = SimTime::ZERO;
        // 64 shared tokens (4 blocks) then 32 of its own (2 blocks): 6 blocks.
        let first = request_with(1, &[(7, 64), (1, 32)]);
        let idle = views(&[0; 3], &[]);
        let Route::To(home) = r.route(&first, t, &idle) else {
            panic!()
        };
        // A second request sharing the 4 blocks (of 6): the home scores 2 x 4/6 + 1 + 1 = 3.33, the
        // others 2: the home.
        let second = request_with(2, &[(7, 64), (2, 32)]);
        assert_eq!(r.route(&second, t, &idle), Route::To(home));
        // The home with 4 waiting, another with 2, the third with 0: queue scores 0, 0.5, 1. A request
        // sharing 2 blocks of 6 scores 2 x 2/6 + 0 + 1 = 1.67 at the home, 0 + 1 + 1 = 2 at the idle one.
        let mut v = views(&[0; 3], &[]);
        v[home as usize].num_waiting = 4;
        let other = (home as usize + 1) % 3;
        let idle_one = (home as usize + 2) % 3;
        v[other].num_waiting = 2;
        let third = request_with(3, &[(7, 32), (3, 64)]);
        assert_eq!(r.route(&third, t, &v), Route::To(idle_one as u32));
        // One sharing 4 blocks of 6 scores 2 x 4/6 + 0 + 1 = 2.33 at the home and 2 x 2/6 + 1 + 1 = 2.67
        // at the idle one (it indexed the third's 2 shared blocks), unless that one is 95% full in KV:
        // 0.67 + 1 + 0.05 = 1.72, and the home wins.
        v[idle_one].kv_usage = 0.95;
        let fourth = request_with(4, &[(7, 64), (4, 32)]);
        assert_eq!(r.route(&fourth, t, &v), Route::To(home));
        v[idle_one].kv_usage = 0.0;
        let fifth = request_with(5, &[(7, 64), (5, 32)]);
        assert_eq!(r.route(&fifth, t, &v), Route::To(idle_one as u32));
    }

    #[test]
    fn matching_stops_at_the_first_block_no_replica_holds() {
        let mut r = router(1000);
        let t = SimTime::ZERO;
        let idle = views(&[0; 3], &[]);
        // Replica A indexes blocks of content 5 then 6; a request of content 5 then 8 then 6 matches
        // one block (16 tokens of 5), not the later 6s (their chain differs anyway: hashes chain).
        let a = request_with(1, &[(5, 16), (6, 32)]);
        let Route::To(pa) = r.route(&a, t, &idle) else {
            panic!()
        };
        let b = request_with(2, &[(5, 16), (8, 16), (6, 32)]);
        let total = r.score_prefix(&b, &idle);
        assert_eq!(total, 4);
        assert_eq!(r.matched[pa as usize], 1);
        assert_eq!(r.matched.iter().sum::<u32>(), 1);
    }

    #[test]
    fn the_index_forgets_least_recently_used_blocks() {
        // An index of 4 blocks: after a 6-block prompt only its last 4 blocks are held; the chain's
        // first block is out, so matching stops at once.
        let mut r = router(4);
        let t = SimTime::ZERO;
        let idle = views(&[0; 3], &[]);
        let a = request_with(1, &[(5, 96)]);
        r.route(&a, t, &idle);
        let total = r.score_prefix(&a, &idle);
        assert_eq!(total, 6);
        assert_eq!(r.matched.iter().sum::<u32>(), 0);
    }
}
