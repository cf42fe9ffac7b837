//! SGLang's waiting-queue orders (`python/sglang/srt/managers/schedule_policy.py`; engine-semantics G7),
//! as pure functions over the waiting requests' token keys and the radix cache, for `sglang.rs`.
//!
//! `lpm` (longest prefix match): every waiting request is matched against the tree (which stamps its
//! path: in SGLang just waiting keeps a prefix fresh, G2). A request whose match is at most
//! [`IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD`] tokens is also matched against a temporary tree of the
//! waiting requests before it that were not deprioritized; sharing at least
//! [`IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD`] tokens with one of them, it is moved to the end so
//! that the earlier one warms the cache first; otherwise its key joins the temporary tree. The queue is
//! then sorted by match length, longest first, stably (Python's `sort`), the deprioritized last. With
//! more than [`LPM_FALLBACK_QUEUE_LEN`] waiting, `lpm` is `fcfs` (the matching would cost too much).

use crate::kv::radix::{RadixCache, Run};

/// Waiting requests above which `lpm` falls back to `fcfs` (SGLang: `len(waiting_queue) > 128`).
pub const LPM_FALLBACK_QUEUE_LEN: usize = 128;
/// A device match at most this long is checked against the other waiting requests
/// (`IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD`).
pub const IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD: u32 = 32;
/// Tokens shared with an earlier waiting request from which a request is moved back
/// (`IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD`).
pub const IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD: u32 = 32;

/// The order `lpm` serves `waiting` in (their keys, in queue order): indices into `waiting`. Matches
/// against `cache` stamp `now` on the paths they pass (and may split nodes, as SGLang's do).
pub fn lpm_order(waiting: &[Vec<Run>], cache: &mut RadixCache, now: u64) -> Vec<usize> {
    if waiting.len() > LPM_FALLBACK_QUEUE_LEN {
        return (0..waiting.len()).collect();
    }
    let mut in_batch = RadixCache::new();
    let mut score: Vec<(bool, u32)> = Vec::with_capacity(waiting.len());
    for key in waiting {
        let matched = cache.match_prefix(key, now).tokens;
        let mut deprioritized = false;
        if matched <= IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD {
            if in_batch.match_prefix(key, now).tokens
                >= IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD
            {
                deprioritized = true;
            } else {
                in_batch.insert(key, now);
            }
        }
        score.push((deprioritized, matched));
    }
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    // Stable: equal keys keep queue order. Deprioritized last, then the longest match first.
    order.sort_by_key(|&i| (score[i].0, std::cmp::Reverse(score[i].1)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(content: u64, len: u32) -> Run {
        Run {
            content,
            start: 0,
            len,
        }
    }

    #[test]
    fn g7_lpm_serves_the_longest_cached_prefix_first_and_moves_back_a_sibling_of_an_earlier_request(
    ) {
        let mut cache = RadixCache::new();
        // Cached: a 100-token system prompt S, and 50 tokens of document D.
        cache.insert(&[run(1, 100)], 1);
        cache.insert(&[run(2, 50)], 1);
        let waiting = vec![
            // 0: nothing cached (a fresh 40-token prompt Q, then its own question).
            vec![run(3, 40), run(4, 10)],
            // 1: S + its question: 100 cached.
            vec![run(1, 100), run(5, 20)],
            // 2: D + more: 50 cached.
            vec![run(2, 80)],
            // 3: Q again with another question: 0 cached, but shares 40 >= 32 tokens with request 0,
            //    which comes first: moved to the end.
            vec![run(3, 40), run(6, 10)],
            // 4: 10 cached tokens of D only; shares nothing with the waiting ones before it.
            vec![run(2, 10), run(7, 30)],
        ];
        // Matches 0, 100, 50, 0 (deprioritized), 10: by length, 1, 2, 4, 0; then 3.
        assert_eq!(lpm_order(&waiting, &mut cache, 2), vec![1, 2, 4, 0, 3]);
    }

    #[test]
    fn g7_lpm_falls_back_to_fcfs_past_128_waiting() {
        let mut cache = RadixCache::new();
        cache.insert(&[run(1, 100)], 1);
        // The last request has the only cache hit: served first among 128, in place among 129.
        let make = |n: usize| -> Vec<Vec<Run>> {
            let mut v: Vec<Vec<Run>> = (0..n - 1).map(|i| vec![run(10 + i as u64, 8)]).collect();
            v.push(vec![run(1, 100)]);
            v
        };
        let order = lpm_order(&make(128), &mut cache, 2);
        assert_eq!(order[0], 127);
        assert_eq!(&order[1..], &(0..127).collect::<Vec<_>>()[..]);
        assert_eq!(
            lpm_order(&make(129), &mut cache, 3),
            (0..129).collect::<Vec<_>>()
        );
    }
}
