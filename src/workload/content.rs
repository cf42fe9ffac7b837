//! The content model: prompts as segment lists, KV blocks as chained hashes. No token ids are stored.
//!
//! A segment is a run of tokens of one piece of content (a system prompt, a user message, a response),
//! named by a content id. Two token sequences share a prefix exactly where their segment lists agree, so the
//! hash of block i — chained over the previous block's hash and the (content, offset, length) pieces that
//! cover tokens [i*bs, (i+1)*bs) — is equal exactly when the prefixes through that block are equal
//! (up to 64-bit hash collisions). Memory is O(segments) per request plus one u64 per full block.

use crate::rng::mix;
use std::cell::{Ref, RefCell};
use std::ops::Deref;
use std::rc::Rc;

/// A token sequence's chained block hashes, shareable: a request appends to its chain as blocks fill, and
/// the prefix-cache runs that registered some of its blocks read their positions from the same list
/// (`share`), where they used to copy them (the copies and their lists' growth were about 5% of a
/// profile of (d)'s workload). A session's turns carry the chain on, since each turn's tokens extend the
/// previous turn's.
///
/// Contract: append-only. Positions once written never change or go away (`append` checks in debug
/// builds that the chain did not shrink and kept its last hash), so a reader's positions stay valid
/// however the chain grows. `clone` copies the hashes into a chain of its own, so a cloned request
/// extending its chain never extends the original's; `share` is the only way to a second handle on the
/// same chain.
///
/// Tagged: a chain's hashes depend on the block size, the cache salt and the hash scheme as much as on
/// the tokens, so a chain records all three ([`ChainTag`]) when it is first appended to, and appending
/// under another tag panics. A chain carried to a place with another tag (a session's next turn on a
/// replica of another page size) is dropped and rehashed there ([`HashChain::retag`]), never mixed.
///
/// Memory: a chain lives while its session's current request holds it or a cached run holds a block of
/// it, so it is bounded by what is cached and in flight (a run keeps its whole chain: at most
/// `max_model_len / block_size` hashes), not by the run's length.
#[derive(Debug, Default)]
pub struct HashChain(Option<Rc<Chain>>, Seen);

/// How many hashes this handle has seen the chain hold: a lower bound of its length (another handle may
/// have appended since), read without touching the shared list, which a request checks after every token
/// ([`HashChain::covers`]).
#[derive(Clone, Copy, Debug, Default)]
struct Seen(u32);

#[derive(Debug)]
struct Chain {
    tag: ChainTag,
    hashes: RefCell<Vec<u64>>,
}

impl Clone for HashChain {
    fn clone(&self) -> Self {
        match &self.0 {
            None => HashChain(None, Seen(0)),
            Some(c) => HashChain::with_hashes(c.tag, self.to_vec()),
        }
    }
}

/// The version of the block-hash scheme: the chain seed, the link function and the words pieces are
/// hashed as. Change it whenever any of them changes, so that hashes of two schemes are never compared
/// (a chain records it; anything persisted must).
pub const HASH_SCHEME: u32 = 1;

/// What a chain's hashes depend on besides the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainTag {
    /// [`HASH_SCHEME`] when the chain was made.
    pub scheme: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// The cache salt mixed into the chain's seed ([`chain_seed`]).
    pub salt: u64,
}

impl ChainTag {
    /// The tag of chains hashed now with `block_size` and `salt`.
    pub fn new(block_size: u32, salt: u64) -> ChainTag {
        ChainTag {
            scheme: HASH_SCHEME,
            block_size,
            salt,
        }
    }
}

/// A chain's hashes, borrowed (`HashChain::hashes`).
pub enum Hashes<'a> {
    /// A chain never appended to: nothing allocated, nothing borrowed.
    Empty,
    Held(Ref<'a, [u64]>),
}

impl Deref for Hashes<'_> {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        match self {
            Hashes::Empty => &[],
            Hashes::Held(r) => r,
        }
    }
}

impl HashChain {
    /// A chain of `hashes`, made under `tag`.
    pub fn with_hashes(tag: ChainTag, hashes: Vec<u64>) -> HashChain {
        let seen = Seen(hashes.len() as u32);
        HashChain(
            Some(Rc::new(Chain {
                tag,
                hashes: RefCell::new(hashes),
            })),
            seen,
        )
    }

    /// Whether the chain surely holds at least `n` hashes, known without reading the shared list (false
    /// may mean only that this handle has not seen them).
    #[inline]
    pub fn covers(&self, n: u64) -> bool {
        n <= self.1 .0 as u64
    }

    /// The tag the chain was made under (None for a chain never appended to).
    pub fn tag(&self) -> Option<ChainTag> {
        self.0.as_ref().map(|c| c.tag)
    }

    /// Keeps the chain if it was made under `tag` (or is empty); otherwise drops this handle on it, so
    /// that the holder rehashes from scratch. Returns whether it was dropped.
    pub fn retag(&mut self, tag: ChainTag) -> bool {
        if self.tag().is_some_and(|t| t != tag) {
            *self = HashChain::default();
            return true;
        }
        false
    }

    /// A second handle on this chain. (A chain never appended to allocates nothing and so is not shared:
    /// appending to one handle does not show in the other. No reader needs that: readers read positions
    /// that exist.)
    pub fn share(&self) -> HashChain {
        HashChain(self.0.clone(), self.1)
    }

    /// Whether both handles are on one chain (then their common positions hold the same hashes).
    pub fn same(&self, other: &HashChain) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.hashes.borrow().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of block `i` (which must exist).
    pub fn get(&self, i: usize) -> u64 {
        self.hashes()[i]
    }

    /// The hashes, borrowed (no `append` while the borrow lives).
    pub fn hashes(&self) -> Hashes<'_> {
        match &self.0 {
            None => Hashes::Empty,
            Some(c) => Hashes::Held(Ref::map(c.hashes.borrow(), |v| &v[..])),
        }
    }

    /// A copy of the hashes.
    pub fn to_vec(&self) -> Vec<u64> {
        self.hashes().to_vec()
    }

    /// The list, created under `tag` if the chain has none yet.
    #[inline]
    fn list(&mut self, tag: ChainTag) -> std::cell::RefMut<'_, Vec<u64>> {
        let c = self.0.get_or_insert_with(|| {
            Rc::new(Chain {
                tag,
                hashes: RefCell::new(Vec::new()),
            })
        });
        if c.tag != tag {
            mixed_tags(c.tag, tag);
        }
        c.hashes.borrow_mut()
    }

    /// Room for `additional` more hashes (the chain is made under `tag` if it has none).
    pub fn reserve(&mut self, tag: ChainTag, additional: usize) {
        if additional > 0 {
            self.list(tag).reserve(additional);
        }
    }

    /// Appends hashes made under `tag` through `f`, which may only push. Panics if the chain was made
    /// under another tag (see [`HashChain::retag`]).
    pub fn append(&mut self, tag: ChainTag, f: impl FnOnce(&mut Vec<u64>)) {
        let mut v = self.list(tag);
        let (n, last) = (v.len(), v.last().copied());
        f(&mut v);
        debug_assert!(
            v.len() >= n && (n == 0 || v.get(n - 1).copied() == last),
            "a hash chain is append-only"
        );
        let len = v.len() as u32;
        drop(v);
        self.1 = Seen(len);
    }
}

#[cold]
#[inline(never)]
fn mixed_tags(made: ChainTag, now: ChainTag) -> ! {
    panic!("a hash chain extended under another block size, salt or scheme: made {made:?}, now {now:?}")
}

/// A run of `len` tokens of the content named `content`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    pub content: u64,
    pub len: u32,
}

/// The seed of the hash chain (vLLM's NONE_HASH); a cache salt is mixed into it, which keeps a salted
/// request's blocks apart from everyone else's.
pub fn chain_seed(salt: u64) -> u64 {
    mix(0x4e4f_4e45_4841_5348, salt)
}

/// One link of the hash chain: the parent's hash and one piece's word. The chain runs serially through
/// every block of every prompt, so the link is one rotate, one xor and one multiply (a full `mix` is three
/// multiplies deep; the chain was 6-7% of a profile of (d)'s workload). It is a bijection of the parent for a given
/// word and of the word for a given parent, so chains that differ in one link differ in every later one;
/// the multiply carries each bit into all higher bits and the rotation brings the well-mixed high bits
/// down for the next link. Inputs are mixed ids, so collisions are those of random 64-bit values.
#[inline]
fn link(parent: u64, word: u64) -> u64 {
    (parent.rotate_left(26) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Total tokens of a segment list.
pub fn total_tokens(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len as u64).sum()
}

/// Extends `hashes` (the chained hashes of the first `hashes.len()` full blocks of `segments`) with the
/// hashes of every further full block. Only full blocks are hashed (vLLM K5).
///
/// Cost: O(new blocks + segments crossed).
pub fn extend_block_hashes(
    segments: &[Segment],
    block_size: u32,
    salt: u64,
    hashes: &mut Vec<u64>,
) {
    extend_chain(
        segments.len(),
        |i| segments[i],
        total_tokens(segments),
        block_size,
        salt,
        hashes,
    );
}

/// As [`extend_block_hashes`] over `prompt` (of `prompt_tokens` tokens) followed by `tail` (a request's
/// outputs so far), without building the concatenated list: this runs every time an output block fills,
/// so it costs O(new blocks + segments crossed from the end), not O(prompt segments).
pub fn extend_block_hashes_tail(
    prompt: &[Segment],
    prompt_tokens: u32,
    tail: Segment,
    block_size: u32,
    salt: u64,
    hashes: &mut Vec<u64>,
) {
    debug_assert_eq!(total_tokens(prompt), prompt_tokens as u64);
    let n = prompt.len();
    extend_chain(
        n + 1,
        |i| if i < n { prompt[i] } else { tail },
        prompt_tokens as u64 + tail.len as u64,
        block_size,
        salt,
        hashes,
    );
}

fn extend_chain(
    n: usize,
    seg_at: impl Fn(usize) -> Segment,
    total: u64,
    block_size: u32,
    salt: u64,
    hashes: &mut Vec<u64>,
) {
    let bs = block_size as u64;
    let full = (total / bs) as usize;
    if hashes.len() >= full {
        return;
    }
    // Locate the segment holding the first token of the first block to hash, walking back from the end:
    // new blocks are near the end (a request's new outputs), and from the front this walk crossed every
    // segment of a long conversation each time an output block filled.
    let mut start = hashes.len() as u64 * bs;
    let mut seg = n - 1;
    let mut seg_start = total - seg_at(seg).len as u64;
    while seg_start > start {
        seg -= 1;
        seg_start -= seg_at(seg).len as u64;
    }
    hashes.reserve(full - hashes.len());
    let mut parent = hashes.last().copied().unwrap_or_else(|| chain_seed(salt));
    while hashes.len() < full {
        let s = seg_at(seg);
        let seg_end = seg_start + s.len as u64;
        if start + bs <= seg_end {
            // The usual case, blocks inside one segment: each is the one-piece link of the loop below,
            // taken without re-reading the segment per block.
            let blocks = ((seg_end - start) / bs).min((full - hashes.len()) as u64);
            let mut h = parent;
            for b in 0..blocks {
                let piece = ((start + b * bs - seg_start) << 32) | bs;
                h = link(h, s.content ^ piece.wrapping_mul(0xd6e8_feb8_6659_fd93));
                hashes.push(h);
            }
            parent = h;
            start += blocks * bs;
            if start == seg_end {
                seg_start = seg_end;
                seg += 1;
            }
            continue;
        }
        let end = start + bs;
        let mut h = parent;
        let mut pos = start;
        while pos < end {
            debug_assert!(seg < n);
            let s = seg_at(seg);
            let seg_end = seg_start + s.len as u64;
            let piece_end = seg_end.min(end);
            let offset = pos - seg_start;
            if piece_end > pos {
                // One link per piece over (content, offset, length). The odd multiplier spreads the
                // (offset, length) word upwards, so distinct pieces of one content differ; contents are
                // themselves mixed ids.
                let piece = (offset << 32) | (piece_end - pos);
                h = link(h, s.content ^ piece.wrapping_mul(0xd6e8_feb8_6659_fd93));
            }
            pos = piece_end;
            if pos == seg_end {
                seg_start = seg_end;
                seg += 1;
            }
        }
        hashes.push(h);
        parent = h;
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(c: u64, len: u32) -> Segment {
        Segment { content: c, len }
    }

    /// `share` is a second handle on one chain; `clone` is a chain of its own, so a cloned request
    /// extending its hashes never extends the original's (which the prefix cache's runs may read).
    #[test]
    fn share_shares_and_clone_copies() {
        let t = ChainTag::new(16, 0);
        let a = HashChain::with_hashes(t, vec![1, 2]);
        let mut shared = a.share();
        let mut copy = a.clone();
        shared.append(t, |v| v.push(3));
        copy.append(t, |v| v.push(9));
        assert_eq!(copy.tag(), Some(t));
        assert_eq!(a.to_vec(), [1, 2, 3]);
        assert_eq!(copy.to_vec(), [1, 2, 9]);
        assert!(a.same(&shared) && !a.same(&copy));
        assert_eq!((a.len(), a.get(2)), (3, 3));
        let empty = HashChain::default();
        assert!(empty.is_empty() && empty.hashes().is_empty() && !empty.same(&empty.share()));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "append-only")]
    fn a_chain_cannot_be_rewritten() {
        let t = ChainTag::new(16, 0);
        let mut a = HashChain::with_hashes(t, vec![1, 2]);
        a.append(t, |v| v[1] = 5);
    }

    /// A chain made with one block size, salt or scheme is never extended under another: appending
    /// panics, and `retag` drops a mismatched chain (keeping a matching or empty one).
    #[test]
    fn a_chain_is_tagged_and_never_mixed() {
        let t16 = ChainTag::new(16, 0);
        let mut a = HashChain::with_hashes(t16, vec![1, 2]);
        assert!(!a.retag(t16));
        assert_eq!(a.len(), 2);
        for other in [
            ChainTag::new(32, 0),
            ChainTag::new(16, 7),
            ChainTag {
                scheme: HASH_SCHEME + 1,
                ..t16
            },
        ] {
            let mut b = a.clone();
            let mixed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.share().append(other, |v| v.push(3))
            }));
            assert!(mixed.is_err(), "{other:?} extended a {t16:?} chain");
            assert!(b.retag(other) && b.is_empty() && b.tag().is_none());
        }
        let mut empty = HashChain::default();
        assert!(!empty.retag(t16));
        a.append(t16, |v| v.push(3));
        assert_eq!(a.to_vec(), [1, 2, 3]);
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        let mut h = Vec::new();
        extend_block_hashes(&[seg(1, 40)], 16, 0, &mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn equal_prefixes_give_equal_hashes_and_diverge_after() {
        let a = [seg(1, 20), seg(2, 30)];
        let b = [seg(1, 20), seg(3, 30)];
        let (mut ha, mut hb) = (Vec::new(), Vec::new());
        extend_block_hashes(&a, 16, 0, &mut ha);
        extend_block_hashes(&b, 16, 0, &mut hb);
        assert_eq!(ha.len(), 3);
        // Block 0 is tokens 0..16, all of content 1: equal. Block 1 covers tokens 16..32, which cross into
        // the differing second segment: different, and so is every later block (the chain).
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        assert_ne!(ha[2], hb[2]);
    }

    #[test]
    fn incremental_extension_equals_one_shot() {
        let full = [seg(7, 33), seg(8, 5), seg(9, 100)];
        let mut one = Vec::new();
        extend_block_hashes(&full, 16, 5, &mut one);
        // Grow the last segment step by step, as output tokens arrive.
        let mut inc = Vec::new();
        for n in 0..=100 {
            let partial = [seg(7, 33), seg(8, 5), seg(9, n)];
            extend_block_hashes(&partial, 16, 5, &mut inc);
        }
        assert_eq!(one, inc);
    }

    #[test]
    fn salt_separates_chains() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        extend_block_hashes(&[seg(1, 32)], 16, 1, &mut a);
        extend_block_hashes(&[seg(1, 32)], 16, 2, &mut b);
        assert_ne!(a[0], b[0]);
    }

    #[test]
    fn segment_split_does_not_matter_within_one_content_but_offsets_do() {
        // The same content at a different offset is different tokens.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        extend_block_hashes(&[seg(1, 16)], 16, 0, &mut a);
        extend_block_hashes(&[seg(2, 16), seg(1, 16)], 16, 0, &mut b);
        assert_ne!(a[0], b[1]);
    }

    /// The chain against a token-by-token restatement of its rule (each block links one word per run of
    /// its tokens from one segment: content ^ mix(offset in the segment, run length)), on random segment
    /// lists with empty, short, block-aligned and long segments, in one shot and grown as the tail does.
    #[test]
    fn chain_equals_the_token_by_token_rule() {
        fn by_tokens(segs: &[Segment], bs: usize, salt: u64) -> Vec<u64> {
            let toks: Vec<(usize, u64, u64)> = segs
                .iter()
                .enumerate()
                .flat_map(|(i, s)| (0..s.len as u64).map(move |o| (i, s.content, o)))
                .collect();
            let mut h = chain_seed(salt);
            let mut out = Vec::new();
            for block in toks.chunks_exact(bs) {
                let mut j = 0;
                while j < block.len() {
                    let (i, content, offset) = block[j];
                    let run = block[j..].iter().take_while(|t| t.0 == i).count();
                    let piece = (offset << 32) | run as u64;
                    h = link(h, content ^ piece.wrapping_mul(0xd6e8_feb8_6659_fd93));
                    j += run;
                }
                out.push(h);
            }
            out
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for case in 0..300 {
            let bs = [1, 4, 16][case % 3];
            let segs: Vec<Segment> = (0..1 + next(8))
                .map(|_| {
                    let len = [0, 1 + next(20), 16 * (1 + next(4)), next(300)][next(4) as usize];
                    seg(next(5), len as u32)
                })
                .collect();
            let want = by_tokens(&segs, bs, case as u64);
            let mut one = Vec::new();
            extend_block_hashes(&segs, bs as u32, case as u64, &mut one);
            assert_eq!(one, want, "{segs:?} block {bs}");
            let (prompt, tail) = segs.split_at(segs.len() - 1);
            let prompt_tokens = total_tokens(prompt) as u32;
            let mut grown = Vec::new();
            for n in 0..=tail[0].len {
                let t = seg(tail[0].content, n);
                extend_block_hashes_tail(
                    prompt,
                    prompt_tokens,
                    t,
                    bs as u32,
                    case as u64,
                    &mut grown,
                );
            }
            assert_eq!(grown, want, "{segs:?} block {bs}, grown");
        }
    }
}
