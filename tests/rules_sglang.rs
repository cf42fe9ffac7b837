//! SGLang's rules G2-G7 (read from `python/sglang/srt/mem_cache/radix_cache.py` and
//! `managers/schedule_policy.py`), one test per rule, on hand-built scenes;
//! and the radix cache against a naive reference.

use proptest::prelude::*;
use servesim::kv::radix::{RadixCache, Run, Token, ROOT};

fn run(content: u64, start: u32, len: u32) -> Run {
    Run {
        content,
        start,
        len,
    }
}

#[test]
fn g2_a_match_ending_inside_a_node_splits_it_and_stamps_the_whole_node() {
    let mut c = RadixCache::new();
    c.insert(&[run(1, 0, 10)], 1);
    c.insert(&[run(2, 0, 5)], 3);
    // Matches 4 of the 10 tokens, then diverges: the node splits after 4.
    let m = c.match_prefix(&[run(1, 0, 4), run(9, 0, 3)], 5);
    assert_eq!(m.tokens, 4);
    assert_ne!(m.node, ROOT);
    // Splitting moves no tokens.
    assert_eq!(c.total_size(), 15);
    c.debug_check();
    // The unmatched remainder (6 tokens) was stamped 5 with the rest of its node, so the leaf inserted at
    // 3 is the least recently used: evicting one token frees it whole (5 tokens), not the remainder.
    assert_eq!(c.evict(1), 5);
    assert_eq!(c.leaf_keys(), vec![vec![run(1, 0, 10)]]);
}

#[test]
fn g3_a_locked_path_is_protected_and_never_evicted() {
    let mut c = RadixCache::new();
    c.insert(&[run(1, 0, 8)], 1);
    // 8 already cached, 4 new below them.
    assert_eq!(c.insert(&[run(1, 0, 8), run(2, 0, 4)], 2), 8);
    let m = c.match_prefix(&[run(1, 0, 8), run(2, 0, 4)], 3);
    assert_eq!(m.tokens, 12);
    c.inc_lock_ref(m.node);
    assert_eq!((c.evictable_size(), c.protected_size()), (0, 12));
    assert_eq!(c.evict(100), 0);
    c.insert(&[run(3, 0, 5)], 4);
    assert_eq!(c.evict(100), 5);
    c.dec_lock_ref(m.node);
    assert_eq!((c.evictable_size(), c.protected_size()), (12, 0));
    c.debug_check();
}

#[test]
fn g4_evicts_the_lru_leaf_first_then_a_parent_left_childless() {
    let mut c = RadixCache::new();
    // A shared 6-token prefix S with two 4-token branches A (t = 1) and B (t = 2); C alone (t = 3).
    c.insert(&[run(1, 0, 6), run(2, 0, 4)], 1);
    c.insert(&[run(1, 0, 6), run(3, 0, 4)], 2);
    c.insert(&[run(4, 0, 3)], 3);
    assert_eq!(c.total_size(), 17);
    // Asked for 5: A (oldest leaf, 4) goes; S still has B, so B (t = 2, 4) goes next: 8 freed, whole
    // nodes, more than asked.
    assert_eq!(c.evict(5), 8);
    assert_eq!(c.leaf_keys(), vec![vec![run(1, 0, 6)], vec![run(4, 0, 3)]]);
    // S, childless now and stamped 2 by B's insertion, is older than C (3).
    assert_eq!(c.evict(1), 6);
    assert_eq!(c.leaf_keys(), vec![vec![run(4, 0, 3)]]);
    c.debug_check();
}

#[test]
fn g5_insertion_deduplicates_and_reports_the_cached_prefix() {
    let mut c = RadixCache::new();
    assert_eq!(c.insert(&[run(1, 0, 10)], 1), 0);
    assert_eq!(c.insert(&[run(1, 0, 10), run(2, 0, 5)], 2), 10);
    assert_eq!(c.total_size(), 15);
    // A key ending inside a node: all of it was cached; the node splits, nothing is added.
    assert_eq!(c.insert(&[run(1, 0, 4)], 3), 4);
    assert_eq!(c.total_size(), 15);
    // Runs are tokens: (1, 0..4) + (1, 4..10) is the same 10 tokens as (1, 0..10).
    assert_eq!(c.insert(&[run(1, 0, 4), run(1, 4, 6)], 4), 10);
    assert_eq!(c.match_prefix(&[run(1, 0, 10), run(2, 0, 7)], 5).tokens, 15);
    c.debug_check();
}

/// The naive reference: the cached token sequences as a list, with linear scans.
#[derive(Default)]
struct Naive {
    seqs: Vec<Vec<Token>>,
}

fn tokens(key: &[Run]) -> Vec<Token> {
    key.iter()
        .flat_map(|r| (r.start..r.start + r.len).map(move |k| (r.content, k)))
        .collect()
}

fn lcp(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Naive {
    fn longest(&self, key: &[Token]) -> usize {
        self.seqs.iter().map(|s| lcp(s, key)).max().unwrap_or(0)
    }
    fn insert(&mut self, key: Vec<Token>) -> usize {
        let present = self.longest(&key);
        if !self
            .seqs
            .iter()
            .any(|s| s.len() >= key.len() && s[..key.len()] == key[..])
        {
            self.seqs
                .retain(|s| !(s.len() <= key.len() && key[..s.len()] == s[..]));
            self.seqs.push(key);
        }
        present
    }
    /// Distinct cached token prefixes: the tokens a token-granular tree holds.
    fn size(&self) -> usize {
        let mut all: Vec<&[Token]> = Vec::new();
        for s in &self.seqs {
            for k in 1..=s.len() {
                all.push(&s[..k]);
            }
        }
        all.sort();
        all.dedup();
        all.len()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<Run>),
    Match(Vec<Run>),
    Lock(Vec<Run>),
    Unlock(usize),
    Evict(u64),
}

fn key() -> impl Strategy<Value = Vec<Run>> {
    // Few contents and short runs from a few offsets: keys share prefixes and diverge mid-run often.
    prop::collection::vec((1u64..4, 0u32..3, 1u32..5), 1..5).prop_map(|v| {
        v.into_iter()
            .map(|(content, s, len)| run(content, s * 2, len))
            .collect()
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => key().prop_map(Op::Insert),
        3 => key().prop_map(Op::Match),
        1 => key().prop_map(Op::Lock),
        1 => (0usize..8).prop_map(Op::Unlock),
        1 => (1u64..12).prop_map(Op::Evict),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_radix_cache_agrees_with_a_naive_list_of_sequences(ops in prop::collection::vec(op(), 1..60)) {
        let mut c = RadixCache::new();
        let mut naive = Naive::default();
        // Locked (node, token sequence) pairs.
        let mut locks: Vec<(u32, Vec<Token>)> = Vec::new();
        for (t, op) in ops.into_iter().enumerate() {
            let now = t as u64 + 1;
            match op {
                Op::Insert(k) => {
                    let want = naive.insert(tokens(&k));
                    prop_assert_eq!(c.insert(&k, now) as usize, want);
                }
                Op::Match(k) => {
                    prop_assert_eq!(c.match_prefix(&k, now).tokens as usize, naive.longest(&tokens(&k)));
                }
                Op::Lock(k) => {
                    let m = c.match_prefix(&k, now);
                    let toks = tokens(&k);
                    prop_assert_eq!(m.tokens as usize, naive.longest(&toks));
                    c.inc_lock_ref(m.node);
                    locks.push((m.node, toks[..m.tokens as usize].to_vec()));
                }
                Op::Unlock(i) => {
                    if !locks.is_empty() {
                        let (node, _) = locks.remove(i % locks.len());
                        c.dec_lock_ref(node);
                    }
                }
                Op::Evict(n) => {
                    let (before, evictable) = (c.total_size(), c.evictable_size());
                    let freed = c.evict(n);
                    // Frees at least what was asked, or everything evictable; only evictable tokens.
                    prop_assert!(freed >= n.min(evictable) && freed <= evictable);
                    if freed < n {
                        prop_assert_eq!(c.evictable_size(), 0);
                    }
                    prop_assert_eq!(c.total_size(), before - freed);
                    // What remains was cached before; every locked sequence is still whole.
                    let remaining: Vec<Vec<Token>> = c.leaf_keys().iter().map(|k| tokens(k)).collect();
                    for s in &remaining {
                        prop_assert_eq!(naive.longest(s), s.len());
                    }
                    naive.seqs = remaining;
                    for (_, s) in &locks {
                        prop_assert_eq!(naive.longest(s), s.len());
                    }
                }
            }
            c.debug_check();
            // Token counts: the tree holds every distinct cached prefix once (SGLang deduplicates), and
            // the locked ones are exactly the prefixes of locked sequences.
            prop_assert_eq!(c.total_size() as usize, naive.size());
            let mut locked: Vec<&[Token]> = Vec::new();
            for (_, s) in &locks {
                for k in 1..=s.len() {
                    locked.push(&s[..k]);
                }
            }
            locked.sort();
            locked.dedup();
            prop_assert_eq!(c.protected_size() as usize, locked.len());
        }
    }
}
