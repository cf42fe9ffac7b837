//! The block pool + prefix cache against a deliberately naive reference model (plain vectors, linear scans),
//! on random operation sequences.

use proptest::prelude::*;
use servesim::kv::BlockPool;

/// The reference: a list for the free queue, a list of (hash, block) registrations in order.
#[derive(Debug)]
struct Naive {
    refc: Vec<u32>,
    hash: Vec<Option<u64>>,
    free: Vec<u32>,
    regs: Vec<(u64, u32)>,
    evictions: u64,
}

impl Naive {
    fn new(n: u32) -> Naive {
        let mut refc = vec![0; n as usize];
        refc[0] = 1;
        Naive {
            refc,
            hash: vec![None; n as usize],
            free: (1..n).collect(),
            regs: Vec::new(),
            evictions: 0,
        }
    }
    fn lookup(&self, h: u64) -> Option<u32> {
        self.regs.iter().find(|r| r.0 == h).map(|r| r.1)
    }
    fn allocate(&mut self, n: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for _ in 0..n {
            let b = self.free.remove(0);
            if let Some(h) = self.hash[b as usize].take() {
                self.evictions += 1;
                let i = self.regs.iter().position(|r| *r == (h, b)).unwrap();
                self.regs.remove(i);
            }
            self.refc[b as usize] = 1;
            out.push(b);
        }
        out
    }
    fn touch(&mut self, b: u32) {
        if self.refc[b as usize] == 0 {
            let i = self.free.iter().position(|&x| x == b).unwrap();
            self.free.remove(i);
        }
        self.refc[b as usize] += 1;
    }
    fn free_one(&mut self, b: u32) {
        self.refc[b as usize] -= 1;
        if self.refc[b as usize] == 0 {
            self.free.push(b);
        }
    }
    fn cache(&mut self, b: u32, h: u64) {
        if self.hash[b as usize].is_none() {
            self.hash[b as usize] = Some(h);
            self.regs.push((h, b));
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A new holder allocates n blocks and registers the first k under hashes drawn from a small set.
    Alloc { n: u32, k: u32, h0: u64 },
    /// A new holder hits blocks by looking up a chain of hashes, then allocates one more.
    Hit { hashes: Vec<u64> },
    /// Holder i (mod count) frees its blocks, last first.
    Free { i: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..5, 0u32..5, 0u64..6).prop_map(|(n, k, h0)| Op::Alloc { n, k, h0 }),
        prop::collection::vec(0u64..8, 1..4).prop_map(|hashes| Op::Hit { hashes }),
        (0usize..8).prop_map(|i| Op::Free { i }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn pool_matches_naive_model(ops in prop::collection::vec(op(), 1..80)) {
        let n = 12;
        let mut p = BlockPool::new(n);
        let mut m = Naive::new(n);
        let mut holders: Vec<Vec<u32>> = Vec::new();
        for o in ops {
            match o {
                Op::Alloc { n, k, h0 } => {
                    if n > p.num_free() { continue; }
                    let mut got = Vec::new();
                    p.allocate(n, &mut got);
                    let want = m.allocate(n);
                    prop_assert_eq!(&got, &want);
                    for (j, &b) in got.iter().enumerate().take(k as usize) {
                        let h = h0 + j as u64;
                        p.cache_block(b, h);
                        m.cache(b, h);
                    }
                    holders.push(got);
                }
                Op::Hit { hashes } => {
                    let mut hit = Vec::new();
                    for h in hashes {
                        let a = p.lookup(h);
                        prop_assert_eq!(a, m.lookup(h));
                        match a { Some(b) => hit.push(b), None => break }
                    }
                    let leaving = hit.iter().filter(|&&b| p.ref_cnt(b) == 0).count() as u32;
                    if leaving + 1 > p.num_free() { continue; }
                    p.touch(&hit);
                    for &b in &hit { m.touch(b); }
                    let mut got = Vec::new();
                    p.allocate(1, &mut got);
                    prop_assert_eq!(&got, &m.allocate(1));
                    hit.extend(got);
                    holders.push(hit);
                }
                Op::Free { i } => {
                    if holders.is_empty() { continue; }
                    let blocks = holders.remove(i % holders.len());
                    p.free(blocks.iter().rev().copied());
                    for &b in blocks.iter().rev() { m.free_one(b); }
                }
            }
            prop_assert_eq!(p.free_queue(), m.free.clone());
            prop_assert_eq!(p.num_free() as usize, m.free.len());
            prop_assert_eq!(p.evictions(), m.evictions);
            for h in 0..10 {
                prop_assert_eq!(p.lookup(h), m.lookup(h));
            }
            prop_assert!(p.check_invariants().is_ok());
        }
    }
}
