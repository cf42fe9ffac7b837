//! `engine.kv_cache = "conversation"`: a per-conversation KV store, as request-level serving stacks keep
//! a `past_key_values` per chat session. Rules:
//!
//! - C1 (store). When a request leaves (finished, or aborted with work done), the KV it computed (its
//!   prompt and every generated token fed back, i.e. all but the last sampled one) becomes its session's
//!   entry, replacing any older one.
//! - C2 (hit). A request's prompt hits its session's entry when it extends the entry's content exactly
//!   (token by token, compared as content segments, not only as a length); it then reuses all of the
//!   entry's tokens, capped so that its last prompt token is recomputed (its logits start generation).
//!   A prompt that does not extend it (the history was truncated or edited) misses, and the stale entry
//!   is dropped. A hit moves the entry to the running request: while it runs, its KV is the request's,
//!   not the store's.
//! - C3 (limits). After each store, least recently used entries (stored or hit longest ago) are
//!   evicted until every limit of `[kv_store]` holds: `max_sessions` entries, `max_tokens` tokens and
//!   `max_bytes` bytes (tokens x the model's KV bytes per token); an entry larger than a limit on its own
//!   is not kept. Unset `max_tokens` defaults to the tokens the GPU's KV memory holds (the paged pool's
//!   `num_gpu_blocks` x `block_size`). The running requests' own KV is not bounded here (the batch size
//!   bounds it).
//! - C4 (release). When a session ends (its last turn has left), its entry is dropped
//!   (`release_on_session_end`, default true). A turn the workload marks as its session's last
//!   (`Request::last_turn`: a closed-loop session's final turn) is not stored at all, so that it evicts
//!   no other session's entry on its way out; it counts as a release.
//! - C5 (disabled). With `enabled = false` every operation is a no-op: nothing is stored, nothing hits,
//!   no memory.
//!
//! The store counts lookups (one per admitted request), hits (admissions that reused tokens), the tokens
//! reused (`prefix_cache_hits`, over `prefix_cache_queries` = prompt tokens, as the paged store counts
//! them), evictions (C3) and releases (C4). It keeps no blocks: the block counts in the time series are
//! zero, and its entries and tokens have columns of their own. A decode token never touches it, so the
//! replica may leap over runs of decode steps ([`super::DecodeRule::never`]).

use super::{CacheHit, KvStats, KvStore, PrefixStats};
use crate::event::SessionId;
use crate::fasthash::FastMap;
use crate::request::{Request, RequestTable};
use crate::workload::content::Segment;
use std::collections::BTreeMap;

/// The limits of a conversation store (rule C3); None: unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_sessions: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// One session's stored KV: the content it covers and when it was last stored or hit.
#[derive(Clone, Debug)]
struct Entry {
    segments: Vec<Segment>,
    tokens: u64,
    last_use: u64,
}

/// A per-conversation KV store (rules C1-C5).
#[derive(Clone, Debug)]
pub struct ConversationStore {
    enabled: bool,
    limits: StoreLimits,
    bytes_per_token: u64,
    release_on_session_end: bool,
    entries: FastMap<SessionId, Entry>,
    /// Entries by last use: (tick, session). Ticks are unique, so the first is the least recently used.
    lru: BTreeMap<u64, SessionId>,
    tick: u64,
    tokens: u64,
    stats: StoreCounters,
}

/// What a conversation store counts (summed into [`KvStats::store`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Sessions with an entry now, and the tokens and bytes their entries hold.
    pub entries: u64,
    pub tokens: u64,
    pub bytes: u64,
    /// The most tokens held at once.
    pub peak_tokens: u64,
    /// Admissions looked up, and those that reused an entry (C2).
    pub lookups: u64,
    pub hits: u64,
    /// Lookups whose session had an entry the prompt did not extend (C2's stale entries).
    pub stale: u64,
    /// Entries evicted by a limit, or not kept because one alone exceeds it (C3).
    pub evictions: u64,
    /// Entries dropped at their session's end (C4).
    pub releases: u64,
    prefix: PrefixStats,
}

impl StoreCounters {
    /// Adds another replica's counters (peaks add: the sum of each replica's own peak).
    pub fn add(&mut self, o: &StoreCounters) {
        self.entries += o.entries;
        self.tokens += o.tokens;
        self.bytes += o.bytes;
        self.peak_tokens += o.peak_tokens;
        self.lookups += o.lookups;
        self.hits += o.hits;
        self.stale += o.stale;
        self.evictions += o.evictions;
        self.releases += o.releases;
    }
}

impl ConversationStore {
    /// A store with `limits` over a model of `bytes_per_token` KV bytes per token (all layers, every
    /// tensor-parallel rank). `enabled = false`: rule C5.
    pub fn new(
        enabled: bool,
        limits: StoreLimits,
        bytes_per_token: u64,
        release_on_session_end: bool,
    ) -> ConversationStore {
        ConversationStore {
            enabled,
            limits,
            bytes_per_token,
            release_on_session_end,
            entries: FastMap::default(),
            lru: BTreeMap::new(),
            tick: 0,
            tokens: 0,
            stats: StoreCounters::default(),
        }
    }

    fn remove(&mut self, session: SessionId) -> Option<Entry> {
        let e = self.entries.remove(&session)?;
        self.lru.remove(&e.last_use);
        self.tokens -= e.tokens;
        Some(e)
    }

    fn over_limit(&self, extra_entries: u64, extra_tokens: u64) -> bool {
        let n = self.entries.len() as u64 + extra_entries;
        let t = self.tokens + extra_tokens;
        self.limits.max_sessions.is_some_and(|m| n > m)
            || self.limits.max_tokens.is_some_and(|m| t > m)
            || self
                .limits
                .max_bytes
                .is_some_and(|m| t.saturating_mul(self.bytes_per_token) > m)
    }

    /// C1 + C3: stores `segments` (`tokens` in all) as `session`'s entry, evicting the least recently used
    /// until the limits hold.
    fn store(&mut self, session: SessionId, segments: Vec<Segment>, tokens: u64) {
        if tokens == 0 {
            return;
        }
        self.remove(session);
        let l = &self.limits;
        let alone_too_big = l.max_sessions == Some(0)
            || l.max_tokens.is_some_and(|m| tokens > m)
            || l.max_bytes
                .is_some_and(|m| tokens.saturating_mul(self.bytes_per_token) > m);
        if alone_too_big {
            self.stats.evictions += 1;
            return;
        }
        while self.over_limit(1, tokens) {
            let (_, &victim) = self.lru.iter().next().expect("an entry to evict");
            self.remove(victim);
            self.stats.evictions += 1;
        }
        self.tick += 1;
        self.lru.insert(self.tick, session);
        self.entries.insert(
            session,
            Entry {
                segments,
                tokens,
                last_use: self.tick,
            },
        );
        self.tokens += tokens;
        self.stats.peak_tokens = self.stats.peak_tokens.max(self.tokens);
    }
}

/// Tokens of `prompt` that `stored` covers, when `prompt` extends `stored` exactly (token for token:
/// every segment equal, the last stored one a prefix of its counterpart); None otherwise.
fn extends(stored: &[Segment], prompt: &[Segment]) -> Option<u64> {
    if stored.len() > prompt.len() {
        return None;
    }
    let mut tokens = 0u64;
    for (i, (s, p)) in stored.iter().zip(prompt).enumerate() {
        let last = i + 1 == stored.len();
        if s.content != p.content || (s.len != p.len && !(last && s.len < p.len)) {
            return None;
        }
        tokens += s.len as u64;
    }
    Some(tokens)
}

/// The content of the first `tokens` tokens of `req`'s prompt and outputs.
fn computed_segments(req: &Request, tokens: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(req.prompt.len() + 1);
    let mut left = tokens;
    for s in req.prompt.iter().chain(std::iter::once(&Segment {
        content: req.output_content,
        len: req.num_output_tokens,
    })) {
        if left == 0 {
            break;
        }
        let len = (s.len as u64).min(left);
        if len > 0 {
            out.push(Segment {
                content: s.content,
                len: len as u32,
            });
        }
        left -= len;
    }
    out
}

impl KvStore for ConversationStore {
    fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit {
        if !self.enabled {
            return CacheHit::default();
        }
        let Some(e) = self.entries.get(&req.session) else {
            return CacheHit::default();
        };
        match extends(&e.segments, &req.prompt) {
            Some(t) => CacheHit {
                tokens: t.min(req.prompt_tokens.saturating_sub(1) as u64) as u32,
                ..CacheHit::default()
            },
            None => CacheHit::default(),
        }
    }

    fn record_admission(&mut self, req: &Request, hit_tokens: u32) {
        if !self.enabled {
            return;
        }
        self.stats.lookups += 1;
        self.stats.hits += (hit_tokens > 0) as u64;
        self.stats.prefix.queries += req.prompt_tokens as u64;
        self.stats.prefix.hits += hit_tokens as u64;
    }

    fn allocate_slots(&mut self, req: &mut Request, _num_new: u32, hit: CacheHit) -> bool {
        // At admission (nothing computed yet) the session's entry moves to the request on a hit, and a
        // stale one (the prompt does not extend it) is dropped (C2).
        if self.enabled && req.num_computed_tokens == 0 && self.entries.contains_key(&req.session) {
            if hit.tokens == 0
                && extends(&self.entries[&req.session].segments, &req.prompt).is_none()
            {
                self.stats.stale += 1;
            }
            self.remove(req.session);
        }
        true
    }

    fn free(&mut self, req: &mut Request) {
        if !self.enabled {
            return;
        }
        if req.last_turn && self.release_on_session_end {
            self.stats.releases += (req.num_computed_tokens > 0) as u64;
            return;
        }
        let tokens = req.num_computed_tokens as u64;
        let segments = computed_segments(req, tokens);
        self.store(req.session, segments, tokens);
    }

    fn on_session_end(&mut self, session: SessionId) {
        if self.release_on_session_end && self.remove(session).is_some() {
            self.stats.releases += 1;
        }
    }

    fn used_blocks(&self) -> u32 {
        0
    }

    /// Leap contract, condition 2: a decode token's allocation is always a no-op here (only an
    /// admission moves an entry), `on_token` and `after_step` do nothing, and nothing fails.
    fn decode_rule(&self) -> Option<super::DecodeRule> {
        Some(super::DecodeRule::never())
    }

    fn leap_fits(&self, _new_blocks: u32) -> bool {
        true
    }

    fn stats(&self) -> KvStats {
        let mut store = self.stats;
        store.entries = self.entries.len() as u64;
        store.tokens = self.tokens;
        store.bytes = self.tokens.saturating_mul(self.bytes_per_token);
        // `evictions` counts cached blocks evicted, which a store without blocks has none of; its
        // entries evicted are `store.evictions`.
        KvStats {
            prefix: store.prefix,
            store,
            ..KvStats::default()
        }
    }

    fn check_invariants(&self, _reqs: &RequestTable) -> Result<(), String> {
        let sum: u64 = self.entries.values().map(|e| e.tokens).sum();
        if sum != self.tokens {
            return Err(format!(
                "entries hold {sum} tokens, counter says {}",
                self.tokens
            ));
        }
        if self.over_limit(0, 0) {
            return Err(format!(
                "{} entries of {} tokens exceed the limits {:?}",
                self.entries.len(),
                self.tokens,
                self.limits
            ));
        }
        if self.lru.len() != self.entries.len()
            || self
                .lru
                .iter()
                .any(|(t, s)| self.entries.get(s).is_none_or(|e| e.last_use != *t))
        {
            return Err("the LRU order and the entries disagree".into());
        }
        for (s, e) in &self.entries {
            let t: u64 = e.segments.iter().map(|x| x.len as u64).sum();
            if t != e.tokens {
                return Err(format!(
                    "session {s}: entry of {} tokens covers {t}",
                    e.tokens
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SimTime;
    use proptest::prelude::*;

    fn seg(content: u64, len: u32) -> Segment {
        Segment { content, len }
    }

    /// A request of `session` with `prompt`, as the engine leaves it after generating `outputs` tokens
    /// (all but the last fed back: prompt + outputs - 1 computed).
    fn done(id: u64, session: u64, prompt: Vec<Segment>, outputs: u32) -> Request {
        let mut r = Request::new(id, session, 1, 0, SimTime::ZERO, prompt, 1000 + id, 64);
        r.num_output_tokens = outputs;
        r.num_computed_tokens = r.prompt_tokens + outputs - 1;
        r
    }

    /// Admits `r` as a scheduler does: lookup, allocation, count. Returns the hit tokens.
    fn admit(s: &mut ConversationStore, r: &mut Request) -> u32 {
        let hit = s.get_computed_blocks(r);
        let t = hit.tokens;
        assert!(s.allocate_slots(r, r.prompt_tokens - t, hit));
        s.record_admission(r, t);
        t
    }

    fn store(limits: StoreLimits) -> ConversationStore {
        ConversationStore::new(true, limits, 2, true)
    }

    #[test]
    fn c2_a_turn_that_extends_the_stored_context_hits_all_of_it() {
        let mut s = store(StoreLimits::default());
        // Turn 1: 10 system + 5 user tokens, 4 generated: 15 + 3 = 18 tokens stored (C1).
        let mut a = done(1, 7, vec![seg(1, 10), seg(2, 5)], 4);
        assert_eq!(admit(&mut s, &mut Request { ..a.clone() }), 0);
        s.free(&mut a);
        assert_eq!((s.stats().store.entries, s.stats().store.tokens), (1, 18));
        // Turn 2 repeats turn 1's prompt and its 4-token answer, then 6 new tokens: 25 tokens, which
        // extend the 18 stored; all 18 are reused (below the cap of 24).
        let mut b = done(
            2,
            7,
            vec![seg(1, 10), seg(2, 5), seg(1001, 4), seg(3, 6)],
            1,
        );
        b.num_computed_tokens = 0;
        assert_eq!(admit(&mut s, &mut b), 18);
        // The entry moved to the running request.
        assert_eq!(s.stats().store.entries, 0);
        // Two admissions looked up, one hit; 15 + 25 prompt tokens queried, 18 reused.
        let st = s.stats();
        assert_eq!((st.store.lookups, st.store.hits), (2, 1));
        assert_eq!((st.prefix.queries, st.prefix.hits), (40, 18));
    }

    #[test]
    fn c2_a_changed_prefix_misses_and_drops_the_stale_entry() {
        let mut s = store(StoreLimits::default());
        let mut a = done(1, 7, vec![seg(1, 10), seg(2, 5)], 4);
        s.free(&mut a);
        // The history was truncated: the system prompt is gone, so the content differs at token 0 even
        // though the prompt is longer than the entry.
        let mut b = done(2, 7, vec![seg(2, 5), seg(1001, 4), seg(3, 30)], 1);
        b.num_computed_tokens = 0;
        assert_eq!(admit(&mut s, &mut b), 0);
        assert_eq!((s.stats().store.stale, s.stats().store.entries), (1, 0));
        // Same length, other content in the last segment: a miss too.
        let mut c = done(3, 8, vec![seg(1, 10), seg(2, 5)], 4);
        s.free(&mut c);
        let mut d = done(4, 8, vec![seg(1, 10), seg(9, 12)], 1);
        d.num_computed_tokens = 0;
        assert_eq!(admit(&mut s, &mut d), 0);
    }

    #[test]
    fn c2_a_prompt_equal_to_the_entry_recomputes_its_last_token() {
        let mut s = store(StoreLimits::default());
        let mut a = done(1, 7, vec![seg(1, 10)], 3); // 12 stored
        s.free(&mut a);
        let mut b = done(2, 7, vec![seg(1, 10), seg(1001, 2)], 1); // exactly the 12
        b.num_computed_tokens = 0;
        assert_eq!(admit(&mut s, &mut b), 11);
    }

    #[test]
    fn c3_evicts_the_least_recently_used_by_each_limit() {
        // Sessions: at most 2 entries; the third store evicts the oldest.
        let mut s = store(StoreLimits {
            max_sessions: Some(2),
            ..StoreLimits::default()
        });
        for (id, sess) in [(1, 1), (2, 2), (3, 3)] {
            s.free(&mut done(id, sess, vec![seg(sess, 10)], 1));
        }
        assert!(s.entries.contains_key(&2) && s.entries.contains_key(&3));
        assert_eq!(s.stats().store.evictions, 1);
        // Tokens: 18 + 10 = 28 fit in 30; 5 more make 33, so the LRU entry (18) goes: 15 left.
        let mut s = store(StoreLimits {
            max_tokens: Some(30),
            ..StoreLimits::default()
        });
        s.free(&mut done(1, 1, vec![seg(1, 18)], 1));
        s.free(&mut done(2, 2, vec![seg(2, 10)], 1));
        s.free(&mut done(3, 3, vec![seg(3, 5)], 1));
        assert_eq!((s.stats().store.tokens, s.stats().store.evictions), (15, 1));
        assert!(!s.entries.contains_key(&1));
        // Bytes: 2 bytes a token and 40 bytes is 20 tokens; 12 + 6 fit, 4 more evict the 12.
        let mut s = store(StoreLimits {
            max_bytes: Some(40),
            ..StoreLimits::default()
        });
        s.free(&mut done(1, 1, vec![seg(1, 12)], 1));
        s.free(&mut done(2, 2, vec![seg(2, 6)], 1));
        s.free(&mut done(3, 3, vec![seg(3, 4)], 1));
        assert_eq!((s.stats().store.bytes, s.stats().store.evictions), (20, 1));
        // An entry larger than a limit on its own is not kept.
        s.free(&mut done(4, 4, vec![seg(4, 21)], 1));
        assert!(!s.entries.contains_key(&4));
        assert_eq!(s.stats().store.evictions, 2);
    }

    #[test]
    fn c3_a_hit_renews_an_entry() {
        let mut s = store(StoreLimits {
            max_sessions: Some(2),
            ..StoreLimits::default()
        });
        s.free(&mut done(1, 1, vec![seg(1, 10)], 1));
        s.free(&mut done(2, 2, vec![seg(2, 10)], 1));
        // Session 1's next turn hits and is stored again: now session 2 is the least recently used.
        let mut b = done(3, 1, vec![seg(1, 10), seg(5, 3)], 1);
        b.num_computed_tokens = 0;
        assert_eq!(admit(&mut s, &mut b), 10);
        b.num_computed_tokens = 13;
        s.free(&mut b);
        s.free(&mut done(4, 3, vec![seg(3, 10)], 1));
        assert!(s.entries.contains_key(&1) && !s.entries.contains_key(&2));
    }

    #[test]
    fn c4_the_entry_is_released_when_its_session_ends() {
        let mut s = store(StoreLimits::default());
        s.free(&mut done(1, 1, vec![seg(1, 10)], 1));
        s.on_session_end(1);
        assert_eq!((s.stats().store.entries, s.stats().store.releases), (0, 1));
        let mut keep = ConversationStore::new(true, StoreLimits::default(), 2, false);
        keep.free(&mut done(1, 1, vec![seg(1, 10)], 1));
        keep.on_session_end(1);
        assert_eq!(keep.stats().store.entries, 1);
    }

    #[test]
    fn c5_a_disabled_store_does_nothing() {
        let mut s = ConversationStore::new(false, StoreLimits::default(), 2, true);
        let mut a = done(1, 7, vec![seg(1, 10)], 4);
        s.free(&mut a);
        let mut b = done(2, 7, vec![seg(1, 10), seg(1001, 4), seg(2, 1)], 1);
        b.num_computed_tokens = 0;
        assert_eq!(admit(&mut s, &mut b), 0);
        assert_eq!(s.stats(), KvStats::default());
        assert!(s.entries.is_empty() && s.lru.is_empty());
    }

    proptest! {
        /// Under any sequence of turns, stores and session ends, the store never exceeds a limit, its
        /// invariants hold, and a hit never exceeds the context its session stored.
        #[test]
        fn never_exceeds_a_limit_and_hits_only_what_was_stored(
            max_sessions in proptest::option::of(1u64..5),
            max_tokens in proptest::option::of(5u64..200),
            max_bytes in proptest::option::of(10u64..400),
            ops in proptest::collection::vec((0u64..6, 1u32..40, 1u32..20, 0u8..4), 1..80),
        ) {
            let limits = StoreLimits { max_sessions, max_tokens, max_bytes };
            let mut s = ConversationStore::new(true, limits, 2, true);
            // Each session's conversation so far (what a next turn's prompt repeats).
            let mut history: FastMap<u64, Vec<Segment>> = FastMap::default();
            for (i, &(sess, user, outputs, op)) in ops.iter().enumerate() {
                let id = i as u64 + 1;
                if op == 0 {
                    s.on_session_end(sess);
                    history.remove(&sess);
                    continue;
                }
                let mut prompt = history.get(&sess).cloned().unwrap_or_default();
                if op == 1 && !prompt.is_empty() {
                    prompt.remove(0); // truncated history
                }
                prompt.push(seg(100 + id, user));
                let stored = s.entries.get(&sess).map(|e| e.tokens).unwrap_or(0);
                let mut r = Request::new(id, sess, 1, 0, SimTime::ZERO, prompt.clone(), 1000 + id, 64);
                let hit = admit(&mut s, &mut r);
                prop_assert!(hit as u64 <= stored);
                prop_assert!(hit < r.prompt_tokens);
                r.num_output_tokens = outputs;
                r.num_computed_tokens = r.prompt_tokens + outputs - 1;
                s.free(&mut r);
                prompt.push(seg(1000 + id, outputs));
                history.insert(sess, prompt);
                prop_assert!(s.check_invariants(&RequestTable::default()).is_ok());
                let st = s.stats().store;
                prop_assert!(max_sessions.is_none_or(|m| st.entries <= m));
                prop_assert!(max_tokens.is_none_or(|m| st.tokens <= m));
                prop_assert!(max_bytes.is_none_or(|m| st.bytes <= m));
            }
        }
    }
}
