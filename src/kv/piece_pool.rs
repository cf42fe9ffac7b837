//! vLLM V1's block pool and prefix cache (engine-semantics K2-K4, K6, K8) kept in runs of blocks instead of
//! one record per block: the same behaviour, block for block, at a cost per run.
//!
//! Why: with the prefix cache on, a request computes, registers, frees and later evicts some hundreds of
//! blocks, and the per-block pool (`BlockPool`) spent most of a run's time on those blocks' scattered
//! records and hash-index slots. But the blocks of one request move together: a request registers its blocks
//! in chain order, frees them all at once (last block first, K3), and the free queue then evicts them from
//! the head in that order. So this pool keeps *pieces*: a piece is a range of chain positions of one *run*
//! (the blocks one request registered, in order) whose blocks share a reference count and sit together in
//! the free queue. Block ids are never observable, only which content is cached, which lookups hit and the
//! counts, so a piece needs no block ids; `to_block_pool` assigns some when they are needed.
//!
//! The model rests on one fact about vLLM's pool without duplicates (identical blocks computed separately,
//! K8): **the cached contents are prefix-closed**. If some block holds the hash of chain position i > 0,
//! some block holds the hash of position i - 1. (Blocks are freed last first, so a chain's later blocks
//! queue, and are evicted, before its earlier ones; a hit takes a prefix; only a lookup that found a
//! *different* block for position i - 1, a duplicate, could leave block i held while i - 1 is evicted.)
//! Hence every cached hash has one holder, reachable from the holder of the previous position: either the
//! same run's next block or the first block of another run that starts there (a request that hit up to
//! i - 1 and computed from i). Lookups therefore walk runs sequentially and consult the hash index only at
//! run starts (`anchors`): one index probe per run where the per-block pool made one per block.
//!
//! Duplicates break prefix-closure, so this pool never holds one: `dup_possible` tells, before a
//! registration changes anything, whether the block to be registered might duplicate a cached one (the
//! previous position's holder decides: its run's next block, and at most one index probe for a run
//! starting there), and the KV manager then converts the whole state into a per-block `BlockPool` and
//! carries on there, exactly. None of the shipped workloads registers a
//! duplicate; identical prompts whose length is a multiple of the block size do (the last block is always
//! recomputed, K6).

use super::block_pool::{BlockId, BlockPool};
use super::hash_index::HashIndex;
use crate::workload::content::HashChain;
use std::collections::VecDeque;

pub type PieceId = u32;
const NONE: PieceId = u32::MAX;
const NOT_QUEUED: u64 = u64::MAX;

/// The blocks one request registered, in chain order: positions `start..start + len` of the request's
/// hash chain, which the run shares (positions are the chain's own indices). Its live blocks are the
/// pieces from `head` (whose first block is at `start`) along `next` links to `last`.
#[derive(Clone, Debug, Default)]
struct Run {
    start: u32,
    len: u32,
    /// The registering request's chain (a dead run's slot holds an empty one).
    chain: HashChain,
    head: PieceId,
    last: PieceId,
    /// A hit has reached the run's last registered block since the run last grew. Only then can another
    /// run start right after it (a request that hit up to there and computed on), so only then must a
    /// registration extending the run look for one (`dup_possible`).
    end_touched: bool,
}

impl Run {
    fn end(&self) -> u32 {
        self.start + self.len
    }

    /// The hash of the block at chain position `pos` (a position of the run).
    fn hash(&self, pos: u32) -> u64 {
        debug_assert!(self.start <= pos && pos < self.end());
        self.chain.get(pos as usize)
    }
}

/// Live blocks at chain positions `lo..hi` of run `run`, all with the same reference count; at reference
/// count 0 they are one entry of the free queue (`qpos`), evicted from `hi - 1` down.
#[derive(Clone, Copy, Debug)]
struct Piece {
    run: u32,
    lo: u32,
    hi: u32,
    ref_cnt: u32,
    qpos: u64,
    prev: PieceId,
    next: PieceId,
    /// Watch epoch of the lookup that hit this piece, and the end of its blocks that the hit covers.
    watch: u16,
    watch_hi: u32,
    alive: bool,
}

/// A free-queue entry: `count` empty blocks (no content, indistinguishable), or a piece (stale unless the
/// piece's `qpos` is this entry's position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Empty(u32),
    Piece(PieceId),
}

/// The blocks a request holds, in table order: `segs` (hits, then its own run), then `unhashed` blocks not
/// yet full (at most one: registration keeps up with computed tokens).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PieceTable {
    segs: Vec<Seg>,
    /// The run this request registers into, once it has registered a block (its table's last segment).
    own: Option<u32>,
    unhashed: u32,
    /// Registered blocks held (the segments' lengths).
    registered: u32,
}

impl PieceTable {
    /// Blocks held.
    pub fn blocks(&self) -> u32 {
        self.registered + self.unhashed
    }

    pub fn is_empty(&self) -> bool {
        self.blocks() == 0
    }

    /// Registered blocks held (the leading ones).
    pub fn registered(&self) -> u32 {
        self.registered
    }
}

/// Chain positions `pieces[first].lo..end` of one run, held: `first` and the pieces after it up to `end`.
/// Later splits insert pieces into the chain but never move `first`'s start, so a segment stays valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    first: PieceId,
    end: u32,
}

impl Seg {
    /// The pieces the segment holds, in chain order.
    fn pieces<'a>(&self, pieces: &'a [Piece]) -> impl Iterator<Item = PieceId> + 'a {
        let end = self.end;
        std::iter::successors(Some(self.first), move |&p| {
            Some(pieces[p as usize].next).filter(|&q| q != NONE)
        })
        .take_while(move |&p| pieces[p as usize].lo < end)
    }
}

/// Whether piece `p` is the live head of a run whose first hash is `h` (what makes an anchor entry live).
fn live_head(pieces: &[Piece], runs: &[Run], h: u64, p: PieceId) -> bool {
    let x = &pieces[p as usize];
    let r = &runs[x.run as usize];
    x.alive && r.head == p && r.hash(r.start) == h
}

/// A lookup's hit: (piece, blocks from the piece's start), in chain order.
pub type PieceHit = Vec<(PieceId, u32)>;

/// Block ids for the pieces' blocks, assigned by `to_block_pool`: what requests still holding piece tables
/// translate their tables with.
#[derive(Clone, Debug)]
pub struct Translation {
    pieces: Vec<Piece>,
    base: Vec<BlockId>,
    /// Ids of held empty blocks, handed out as tables are translated.
    spare_empty: Vec<BlockId>,
}

impl Translation {
    /// Ids of the registered blocks a piece table holds, in table order.
    pub fn registered_blocks(&self, table: &PieceTable) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(table.registered as usize);
        for p in table.segs.iter().flat_map(|s| s.pieces(&self.pieces)) {
            let x = &self.pieces[p as usize];
            let b = self.base[p as usize];
            out.extend((0..x.hi - x.lo).map(|k| b + k));
        }
        out
    }

    /// Ids of a hit's blocks (a hit taken before the hand-over).
    pub fn hit_blocks(&self, hit: &PieceHit) -> Vec<BlockId> {
        hit.iter()
            .flat_map(|&(p, n)| (0..n).map(move |k| self.base[p as usize] + k))
            .collect()
    }

    /// Ids of held empty blocks not yet handed to a table.
    pub fn spare_empty(&self) -> &[BlockId] {
        &self.spare_empty
    }

    /// The block table a piece table stands for; `table` is emptied.
    pub fn translate(&mut self, table: &mut PieceTable) -> Vec<BlockId> {
        let mut out = self.registered_blocks(table);
        for _ in 0..table.unhashed {
            out.push(self.spare_empty.pop().expect("an id for every held block"));
        }
        *table = PieceTable::default();
        out
    }
}

#[derive(Clone, Debug)]
pub struct PiecePool {
    pieces: Vec<Piece>,
    free_pieces: Vec<PieceId>,
    runs: Vec<Run>,
    free_runs: Vec<u32>,
    queue: VecDeque<Item>,
    /// Absolute position of `queue.front()`.
    head_pos: u64,
    num_blocks: u32,
    num_free: u32,
    num_free_cached: u32,
    evictions: u64,
    /// Hash of a run's first block -> the run's head piece. Entries of dead runs go stale (see `anchor`).
    anchors: HashIndex,
    watch_epoch: u16,
    watch_broken: bool,
    /// Scratch for `free`.
    scratch: Vec<PieceId>,
}

impl PiecePool {
    /// A pool of `num_blocks` blocks, the null block included (K1): all empty and free.
    pub fn new(num_blocks: u32) -> PiecePool {
        assert!(num_blocks >= 2, "a pool needs the null block and one more");
        PiecePool {
            pieces: Vec::new(),
            free_pieces: Vec::new(),
            runs: Vec::new(),
            free_runs: Vec::new(),
            queue: VecDeque::from([Item::Empty(num_blocks - 1)]),
            head_pos: 0,
            num_blocks,
            num_free: num_blocks - 1,
            num_free_cached: 0,
            evictions: 0,
            anchors: HashIndex::with_max_live(num_blocks as usize),
            watch_epoch: 0,
            watch_broken: true,
            scratch: Vec::new(),
        }
    }

    pub fn num_blocks(&self) -> u32 {
        self.num_blocks
    }

    pub fn num_free(&self) -> u32 {
        self.num_free
    }

    pub fn num_free_cached(&self) -> u32 {
        self.num_free_cached
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    #[inline]
    fn hash_at(&self, x: &Piece, pos: u32) -> u64 {
        self.runs[x.run as usize].hash(pos)
    }

    /// The head piece of a live run starting at `pos` with first hash `h`.
    #[inline]
    fn anchor(&self, h: u64, pos: u32) -> Option<PieceId> {
        self.anchors.get(h).filter(|&p| self.is_anchor(h, p, pos))
    }

    /// Whether a live run starts with hash `h`, wherever it starts (`dup_possible`: a 64-bit collision
    /// between positions must also hand over, or the new run's anchor could not be inserted).
    fn anchored(&self, h: u64) -> bool {
        self.anchors
            .get(h)
            .is_some_and(|p| live_head(&self.pieces, &self.runs, h, p))
    }

    fn is_anchor(&self, h: u64, p: PieceId, pos: u32) -> bool {
        let Some(x) = self.pieces.get(p as usize) else {
            return false;
        };
        x.alive
            && self.runs[x.run as usize].head == p
            && x.lo == pos
            && self.runs[x.run as usize].start == pos
            && self.hash_at(x, pos) == h
    }

    /// Starts watching a new lookup (see `BlockPool::watch_new`).
    pub fn watch_new(&mut self) {
        self.watch_epoch = self.watch_epoch.wrapping_add(1);
        self.watch_broken = false;
    }

    /// True while none of the blocks of the lookup watched since `watch_new` has been evicted, and no
    /// piece of it split.
    pub fn watch_intact(&self) -> bool {
        !self.watch_broken
    }

    /// K6: extends `hit`, the hit for `chain[..n]` where n is the blocks `hit` covers, while cached blocks
    /// hold the chain's hashes. `owner`: the shared chain `chain` is a prefix of, if any; a run on that
    /// very chain agrees with it on every common position without comparing them (a session's next turn
    /// hitting its own history).
    pub fn lookup(&self, owner: Option<&HashChain>, chain: &[u64], hit: &mut PieceHit) {
        let mut i: usize = hit.iter().map(|x| x.1 as usize).sum();
        let mut cur = hit.last().map_or(NONE, |x| x.0);
        while i < chain.len() {
            let (h, pos) = (chain[i], i as u32);
            let mut found = NONE;
            if cur != NONE {
                let x = &self.pieces[cur as usize];
                if pos < x.hi {
                    if self.hash_at(x, pos) == h {
                        found = cur;
                    }
                } else if x.next != NONE {
                    let y = &self.pieces[x.next as usize];
                    debug_assert_eq!(y.lo, pos, "a run's pieces are contiguous");
                    if self.hash_at(y, pos) == h {
                        found = x.next;
                    }
                }
            }
            if found == NONE {
                match self.anchor(h, pos) {
                    Some(p) => found = p,
                    None => break,
                }
            }
            // The block at `pos` is in `found`; so are the following ones while their hashes agree: compare
            // the rest of the piece in one pass.
            let x = &self.pieces[found as usize];
            let r = &self.runs[x.run as usize];
            let (a, b) = (pos as usize, x.hi as usize);
            let same = if owner.is_some_and(|o| o.same(&r.chain)) {
                (b - a).min(chain.len() - i)
            } else {
                r.chain.hashes()[a..b]
                    .iter()
                    .zip(&chain[i..])
                    .take_while(|(u, v)| u == v)
                    .count()
            };
            debug_assert!(same >= 1);
            if found == cur {
                hit.last_mut().expect("a current piece").1 += same as u32;
            } else {
                hit.push((found, same as u32));
                cur = found;
            }
            i += same;
        }
    }

    /// Adds `hit[from..]` to the watched lookup.
    pub fn watch(&mut self, hit: &PieceHit, from: usize) {
        let epoch = self.watch_epoch;
        for &(p, n) in &hit[from..] {
            let x = &mut self.pieces[p as usize];
            if x.watch != epoch {
                x.watch = epoch;
                x.watch_hi = 0;
            }
            x.watch_hi = x.watch_hi.max(x.lo + n);
        }
    }

    /// Hit blocks that are in the free queue (they leave it when the hit is taken, K7).
    pub fn hit_blocks_in_queue(&self, hit: &PieceHit) -> u32 {
        hit.iter()
            .filter(|&&(p, _)| self.pieces[p as usize].ref_cnt == 0)
            .map(|x| x.1)
            .sum()
    }

    /// Whether registering `h` at chain position `pos` for a request whose block at `pos - 1` lies in
    /// `prev` (a piece, or `NONE` at position 0) could register a duplicate: true if a cached block might
    /// hold `h`. By prefix-closure a holder is a child of the previous position's only holder: the same
    /// run's next block, or a run starting at `pos`. Conservative: evictions by the same allocation may
    /// still remove the holder.
    pub fn dup_possible(&self, prev: PieceId, pos: u32, h: u64) -> bool {
        if prev != NONE {
            let x = &self.pieces[prev as usize];
            if pos < x.hi {
                return self.hash_at(x, pos) == h || self.anchored(h);
            }
            if x.next != NONE {
                return self.hash_at(&self.pieces[x.next as usize], pos) == h || self.anchored(h);
            }
            let r = &self.runs[x.run as usize];
            if r.end() == pos && !r.end_touched {
                // No hit has reached the run's end since it grew to `pos`: nothing starts at `pos`.
                return false;
            }
        }
        self.anchored(h)
    }

    /// The piece holding the table's last registered block (of `hit`'s last piece when the table is
    /// empty), or `NONE`.
    pub fn last_piece(&self, table: &PieceTable, hit: &PieceHit) -> PieceId {
        if let Some(&(p, _)) = hit.last() {
            return p;
        }
        match (table.own, table.segs.last()) {
            (Some(run), _) => self.runs[run as usize].last,
            (None, Some(s)) => s.pieces(&self.pieces).last().expect("a held segment"),
            (None, None) => NONE,
        }
    }

    /// K4: takes a reference on every hit block (`table` must be empty); hit blocks at ref 0 leave the
    /// free queue. A hit ending inside a piece splits it.
    pub fn touch(&mut self, hit: &PieceHit, table: &mut PieceTable) {
        debug_assert!(table.is_empty());
        for &(p, n) in hit {
            let (lo, hi) = (self.pieces[p as usize].lo, self.pieces[p as usize].hi);
            debug_assert!(n >= 1 && lo + n <= hi);
            if lo + n < hi {
                self.split(p, lo + n);
            }
            let x = &mut self.pieces[p as usize];
            if x.ref_cnt == 0 {
                x.qpos = NOT_QUEUED;
                self.num_free -= n;
                self.num_free_cached -= n;
            }
            x.ref_cnt += 1;
            let (run, end) = (x.run, x.hi);
            let r = &mut self.runs[run as usize];
            if r.end() == end {
                r.end_touched = true;
            }
            match table.segs.last_mut() {
                Some(s) if s.end == lo && self.pieces[s.first as usize].run == run => s.end = end,
                _ => table.segs.push(Seg { first: p, end }),
            }
            table.registered += n;
        }
    }

    /// Splits `p` at chain position `at`: `p` keeps `lo..at` and its id; a new piece takes `at..hi`, with
    /// `p`'s reference count and, if `p` is queued, its queue entry: the caller takes `p` out of the queue.
    fn split(&mut self, p: PieceId, at: u32) {
        let x = self.pieces[p as usize];
        // A watched hit's (piece, count) may no longer describe it. (Conservative: every admission looks
        // up first, which starts a new watch, so the watched hit is the splitting request's own.)
        if x.watch == self.watch_epoch {
            self.watch_broken = true;
        }
        let s = self.new_piece(Piece {
            lo: at,
            prev: p,
            ..x
        });
        if x.next != NONE {
            self.pieces[x.next as usize].prev = s;
        } else {
            self.runs[x.run as usize].last = s;
        }
        if x.qpos != NOT_QUEUED {
            self.queue[(x.qpos - self.head_pos) as usize] = Item::Piece(s);
        }
        let y = &mut self.pieces[p as usize];
        y.hi = at;
        y.next = s;
    }

    /// Newly registered blocks `lo..hi` of `run`, held by their request alone, after piece `prev`.
    fn fresh_piece(&self, run: u32, lo: u32, hi: u32, prev: PieceId) -> Piece {
        Piece {
            run,
            lo,
            hi,
            ref_cnt: 1,
            qpos: NOT_QUEUED,
            prev,
            next: NONE,
            watch: self.watch_epoch.wrapping_sub(1), // not watched
            watch_hi: 0,
            alive: true,
        }
    }

    fn new_piece(&mut self, x: Piece) -> PieceId {
        match self.free_pieces.pop() {
            Some(p) => {
                self.pieces[p as usize] = x;
                p
            }
            None => {
                self.pieces.push(x);
                (self.pieces.len() - 1) as PieceId
            }
        }
    }

    /// K2: takes `n` blocks from the head of the free queue (the caller checked `n <= num_free()`),
    /// evicting the cached ones; they become the caller's empty blocks.
    pub fn allocate(&mut self, mut n: u32) {
        assert!(n <= self.num_free, "allocate beyond the free queue");
        self.num_free -= n;
        while n > 0 {
            let pos = self.head_pos;
            match *self.queue.front().expect("num_free > 0") {
                Item::Empty(k) => {
                    let t = k.min(n);
                    n -= t;
                    if t == k {
                        self.pop_item();
                    } else {
                        self.queue[0] = Item::Empty(k - t);
                    }
                }
                Item::Piece(p) => {
                    let epoch = self.watch_epoch;
                    let x = &mut self.pieces[p as usize];
                    if x.qpos != pos {
                        self.pop_item();
                        continue;
                    }
                    debug_assert_eq!(x.next, NONE, "prefix-closure: later blocks go first");
                    let t = (x.hi - x.lo).min(n);
                    n -= t;
                    x.hi -= t;
                    let (emptied, broken) = (x.hi == x.lo, x.watch == epoch && x.hi < x.watch_hi);
                    self.evictions += t as u64;
                    self.num_free_cached -= t;
                    self.watch_broken |= broken;
                    if emptied {
                        self.pop_item();
                        self.kill(p);
                    }
                }
            }
        }
    }

    fn pop_item(&mut self) {
        self.queue.pop_front();
        self.head_pos += 1;
    }

    /// Drops a piece all of whose blocks were evicted: the last piece of its run.
    fn kill(&mut self, p: PieceId) {
        let x = self.pieces[p as usize];
        debug_assert_eq!(x.next, NONE);
        self.pieces[p as usize].alive = false;
        self.pieces[p as usize].qpos = NOT_QUEUED;
        self.free_pieces.push(p);
        if x.prev != NONE {
            self.pieces[x.prev as usize].next = NONE;
            self.runs[x.run as usize].last = x.prev;
        } else {
            // The run's head: nothing of the run is left. Its anchor goes stale.
            let r = &mut self.runs[x.run as usize];
            // Let the chain go: it may be the last handle on a finished session's hashes.
            r.chain = HashChain::default();
            r.len = 0;
            r.head = NONE;
            r.last = NONE;
            self.free_runs.push(x.run);
        }
    }

    /// K8: registers chain positions `pos..end` of the request's `chain` as the next blocks of its table,
    /// turning that many of its empty blocks into cached ones. The caller has checked `dup_possible` for
    /// the first of them (the others can have no holder: their previous position's holder is the block
    /// registered just before). A request registers from one chain throughout.
    pub fn register(&mut self, table: &mut PieceTable, pos: u32, chain: &HashChain, end: u32) {
        debug_assert!(pos < end && end as usize <= chain.len());
        let k = end - pos;
        assert!(
            k <= table.unhashed,
            "registering blocks the request does not hold"
        );
        table.unhashed -= k;
        table.registered += k;
        match table.own {
            None => {
                let run = match self.free_runs.pop() {
                    Some(r) => r,
                    None => {
                        self.runs.push(Run::default());
                        (self.runs.len() - 1) as u32
                    }
                };
                let p = self.new_piece(self.fresh_piece(run, pos, pos + k, NONE));
                let r = &mut self.runs[run as usize];
                r.start = pos;
                r.len = k;
                r.chain = chain.share();
                r.end_touched = false;
                r.head = p;
                r.last = p;
                if self.anchors.crowded() {
                    self.purge_anchors();
                }
                let (pieces, runs) = (&self.pieces, &self.runs);
                // `p` may reuse the id a stale entry for this very hash names: that entry is not live.
                let live = |h: u64, q: PieceId| q != p && live_head(pieces, runs, h, q);
                let fresh = self
                    .anchors
                    .insert_unless_live(chain.get(pos as usize), p, live);
                assert!(
                    fresh,
                    "a duplicate run start (dup_possible was not checked)"
                );
                table.segs.push(Seg {
                    first: p,
                    end: pos + k,
                });
                table.own = Some(run);
            }
            Some(run) => {
                let r = &mut self.runs[run as usize];
                debug_assert_eq!(r.end(), pos);
                debug_assert!(r.chain.same(chain), "a request registers from one chain");
                r.len += k;
                r.end_touched = false;
                let last = r.last;
                let x = &mut self.pieces[last as usize];
                debug_assert_eq!(x.hi, pos);
                if x.ref_cnt == 1 {
                    x.hi += k; // held by this request alone: the new blocks join it
                } else {
                    let p = self.new_piece(self.fresh_piece(run, pos, pos + k, last));
                    self.pieces[last as usize].next = p;
                    self.runs[run as usize].last = p;
                }
                table.segs.last_mut().expect("the own run's segment").end = pos + k;
            }
        }
    }

    /// Empties the anchor index of stale entries: live anchors are the heads of live runs.
    fn purge_anchors(&mut self) {
        let live = self
            .runs
            .iter()
            .filter(|r| r.head != NONE)
            .map(|r| (r.hash(r.start), r.head));
        self.anchors.rebuild(live);
    }

    /// Empty blocks the request takes from the queue (`allocate`) join its table.
    pub fn add_empty(&mut self, table: &mut PieceTable, n: u32) {
        table.unhashed += n;
    }

    /// K3: drops one reference from every block of the table, last block first; blocks reaching 0 join
    /// the free queue's tail. The table is emptied.
    pub fn free(&mut self, table: &mut PieceTable) {
        if table.unhashed > 0 {
            self.num_free += table.unhashed;
            match self.queue.back_mut() {
                Some(Item::Empty(k)) => *k += table.unhashed,
                _ => self.queue.push_back(Item::Empty(table.unhashed)),
            }
        }
        let mut ps = std::mem::take(&mut self.scratch);
        for s in table.segs.iter().rev() {
            ps.clear();
            ps.extend(s.pieces(&self.pieces));
            for &p in ps.iter().rev() {
                let x = &mut self.pieces[p as usize];
                debug_assert!(x.ref_cnt > 0 && x.alive);
                x.ref_cnt -= 1;
                if x.ref_cnt == 0 {
                    let n = x.hi - x.lo;
                    x.qpos = self.head_pos + self.queue.len() as u64;
                    self.queue.push_back(Item::Piece(p));
                    self.num_free += n;
                    self.num_free_cached += n;
                }
            }
        }
        self.scratch = ps;
        *table = PieceTable::default();
        if self.queue.len() > 2 * self.num_blocks as usize + 2 {
            self.compact();
        }
    }

    /// Drops stale queue entries, renumbering the live ones in order.
    fn compact(&mut self) {
        let mut q = VecDeque::with_capacity(self.queue.len() / 2);
        for (i, &it) in self.queue.iter().enumerate() {
            let keep = match it {
                Item::Empty(_) => true,
                Item::Piece(p) => self.pieces[p as usize].qpos == self.head_pos + i as u64,
            };
            if keep {
                if let Item::Piece(p) = it {
                    self.pieces[p as usize].qpos = self.head_pos + q.len() as u64;
                }
                q.push_back(it);
            }
        }
        self.queue = q;
    }

    /// Live queue entries from head to tail (tests and checks).
    fn live_queue(&self) -> Vec<Item> {
        self.queue
            .iter()
            .enumerate()
            .filter(|&(i, it)| match *it {
                Item::Empty(k) => k > 0,
                Item::Piece(p) => self.pieces[p as usize].qpos == self.head_pos + i as u64,
            })
            .map(|(_, &it)| it)
            .collect()
    }

    /// The per-block pool this pool stands for, with ids assigned (pieces' blocks in piece order, empty free
    /// blocks in queue order, then held empty blocks), and the translation of piece tables to block tables.
    pub fn to_block_pool(&self) -> (BlockPool, Translation) {
        let mut next: BlockId = 1;
        let mut base = vec![0; self.pieces.len()];
        let mut blocks: Vec<(u32, Option<u64>)> = vec![(1, None); self.num_blocks as usize];
        for (p, x) in self.pieces.iter().enumerate() {
            if !x.alive {
                continue;
            }
            base[p] = next;
            for pos in x.lo..x.hi {
                blocks[next as usize] = (x.ref_cnt, Some(self.hash_at(x, pos)));
                next += 1;
            }
        }
        let mut queue = Vec::with_capacity(self.num_free as usize);
        for it in self.live_queue() {
            match it {
                Item::Empty(k) => {
                    for _ in 0..k {
                        blocks[next as usize] = (0, None);
                        queue.push(next);
                        next += 1;
                    }
                }
                Item::Piece(p) => {
                    let x = &self.pieces[p as usize];
                    queue.extend((0..x.hi - x.lo).rev().map(|k| base[p as usize] + k));
                }
            }
        }
        // The rest are empty blocks held by requests (ref 1 each).
        let spare_empty: Vec<BlockId> = (next..self.num_blocks).rev().collect();
        let pool = BlockPool::restore(self.num_blocks, &blocks, &queue, self.evictions);
        let tr = Translation {
            pieces: self.pieces.clone(),
            base,
            spare_empty,
        };
        (pool, tr)
    }

    /// Reference count of every live piece's blocks as `tables` hold them (tests and checks).
    fn holder_counts<'a>(&self, tables: impl Iterator<Item = &'a PieceTable>) -> Vec<u32> {
        let mut refs = vec![0u32; self.pieces.len()];
        for t in tables {
            for p in t.segs.iter().flat_map(|s| s.pieces(&self.pieces)) {
                refs[p as usize] += 1;
            }
        }
        refs
    }

    /// Invariant 2 for this pool: the queue holds exactly the ref-0 pieces, once each, and the empty free
    /// blocks; counts agree; runs' pieces are contiguous and prefix-closed; every live run's anchor is
    /// found; and the pieces' reference counts are the tables' holdings (`tables`: every request's).
    pub fn check_invariants<'a>(
        &self,
        tables: impl Iterator<Item = &'a PieceTable>,
    ) -> Result<(), String> {
        let tables: Vec<&PieceTable> = tables.collect();
        let refs = self.holder_counts(tables.iter().copied());
        let mut in_queue = vec![false; self.pieces.len()];
        let (mut free, mut free_cached) = (0u32, 0u32);
        for it in self.live_queue() {
            match it {
                Item::Empty(k) => free += k,
                Item::Piece(p) => {
                    let x = &self.pieces[p as usize];
                    if !x.alive
                        || x.ref_cnt != 0
                        || std::mem::replace(&mut in_queue[p as usize], true)
                    {
                        return Err(format!("queue entry for piece {p} is wrong: {x:?}"));
                    }
                    free += x.hi - x.lo;
                    free_cached += x.hi - x.lo;
                }
            }
        }
        if (free, free_cached) != (self.num_free, self.num_free_cached) {
            return Err(format!(
                "queue holds {free} free ({free_cached} cached), counters say {} ({})",
                self.num_free, self.num_free_cached
            ));
        }
        let mut held = 0u32;
        for (p, x) in self.pieces.iter().enumerate() {
            if !x.alive {
                continue;
            }
            if x.lo >= x.hi {
                return Err(format!("piece {p} is empty"));
            }
            if (x.ref_cnt == 0) != in_queue[p] {
                return Err(format!(
                    "piece {p}: ref {} but queued {}",
                    x.ref_cnt, in_queue[p]
                ));
            }
            if x.ref_cnt != refs[p] {
                return Err(format!(
                    "piece {p}: ref {} but {} tables hold it",
                    x.ref_cnt, refs[p]
                ));
            }
            held += if x.ref_cnt > 0 { x.hi - x.lo } else { 0 };
        }
        let unhashed: u32 = tables.iter().map(|t| t.unhashed).sum();
        if held + unhashed + self.num_free != self.num_blocks - 1 {
            return Err(format!(
                "held {held} + held empty {unhashed} + free {} != usable {}",
                self.num_free,
                self.num_blocks - 1
            ));
        }
        // Block hashes are uniform 64-bit values already: the fast hasher, sized up front.
        let mut seen: std::collections::HashSet<
            u64,
            std::hash::BuildHasherDefault<crate::fasthash::FastHasher>,
        > = std::collections::HashSet::with_capacity_and_hasher(
            self.num_blocks as usize,
            Default::default(),
        );
        for (ri, r) in self.runs.iter().enumerate() {
            if r.head == NONE {
                continue;
            }
            let mut p = r.head;
            let mut pos = r.start;
            let mut prev = NONE;
            while p != NONE {
                let x = &self.pieces[p as usize];
                if !x.alive || x.run as usize != ri || x.lo != pos || x.prev != prev {
                    return Err(format!("run {ri}: piece {p} out of chain: {x:?}"));
                }
                for q in x.lo..x.hi {
                    if !seen.insert(self.hash_at(x, q)) {
                        return Err(format!("a duplicate cached block (hash at {q})"));
                    }
                }
                pos = x.hi;
                prev = p;
                p = x.next;
            }
            if prev != r.last {
                return Err(format!("run {ri}: last piece is not {}", r.last));
            }
            if self.anchor(r.hash(r.start), r.start) != Some(r.head) {
                return Err(format!("run {ri}: its start is not found"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding fresh blocks registered as `hashes` (the whole chain, from position 0).
    fn registered(p: &mut PiecePool, hashes: &[u64]) -> PieceTable {
        let mut t = PieceTable::default();
        let n = hashes.len() as u32;
        p.allocate(n);
        p.add_empty(&mut t, n);
        assert!(!p.dup_possible(NONE, 0, hashes[0]));
        p.register(
            &mut t,
            0,
            &HashChain::with_hashes(
                crate::workload::content::ChainTag::new(16, 0),
                hashes.to_vec(),
            ),
            n,
        );
        t
    }

    /// Hit-and-release cycles with no allocation leave a stale queue entry each (the piece leaves the queue
    /// and comes back at the tail), enough to force compactions; the queue must keep K3/K4's order: the
    /// piece released last is evicted last.
    #[test]
    fn queue_compaction_keeps_the_order() {
        let mut p = PiecePool::new(8);
        let mut a = registered(&mut p, &[10, 11]);
        let mut b = registered(&mut p, &[20, 21]);
        p.free(&mut a);
        p.free(&mut b); // queue: 3 empty, a (11, 10), b (21, 20)
        for i in 0..60 {
            let chain = if i % 2 == 0 { [10, 11] } else { [20, 21] };
            let mut hit = PieceHit::new();
            p.lookup(None, &chain, &mut hit);
            assert_eq!(hit.iter().map(|x| x.1).sum::<u32>(), 2);
            let mut t = PieceTable::default();
            p.touch(&hit, &mut t);
            p.free(&mut t);
            p.check_invariants(std::iter::empty()).unwrap();
        }
        assert!(p.queue.len() <= 2 * 8 + 2, "compaction bounds the queue");
        // The last cycle (i = 59) released b's blocks: after the 3 empty blocks, a goes first, from its
        // last block; then b, from its last.
        let hit_len = |p: &PiecePool, chain: &[u64]| {
            let mut hit = PieceHit::new();
            p.lookup(None, chain, &mut hit);
            hit.iter().map(|x| x.1).sum::<u32>()
        };
        let mut taker = PieceTable::default();
        for (n, want) in [(4, (1, 2)), (1, (0, 2)), (1, (0, 1))] {
            p.allocate(n);
            p.add_empty(&mut taker, n);
            assert_eq!((hit_len(&p, &[10, 11]), hit_len(&p, &[20, 21])), want);
            p.check_invariants([&taker].into_iter()).unwrap();
        }
        assert_eq!(p.evictions(), 3);
    }

    /// Many runs with distinct starts crowd the anchor index into purges; every live run must still be
    /// found, every evicted one not.
    #[test]
    fn anchor_purges_keep_live_runs() {
        let mut p = PiecePool::new(6); // 5 usable blocks; the index purges every few dozen runs
        for i in 0..500u64 {
            let mut t = registered(&mut p, &[1000 + i]);
            p.free(&mut t);
            p.check_invariants(std::iter::empty()).unwrap();
            for j in i.saturating_sub(8)..=i {
                let mut hit = PieceHit::new();
                p.lookup(None, &[1000 + j], &mut hit);
                // 5 usable blocks: the last 5 runs are cached, older ones evicted.
                assert_eq!(!hit.is_empty(), j + 5 > i, "run {j} after {i}");
            }
        }
    }
}
