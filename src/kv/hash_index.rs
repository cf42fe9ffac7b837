//! The prefix cache's index from block hash to block: an open-addressing table with lazy deletion.
//!
//! Every KV block allocated on a miss is registered here and, usually, evicted later: two table operations
//! per computed block, the hottest map traffic of a run (a profile put hashbrown's insert and remove at a
//! third of all time, each a cache miss at a random slot). Eviction therefore does not touch the table: an
//! entry whose block no longer holds its key is *stale*, the caller tells live from stale with a predicate
//! (the block pool checks the block's current hash, an array read it makes anyway), an insert overwrites its
//! key's own stale entry, and a purge sweeps the other stale entries out when the table reaches half full.
//! Each key has at most one slot; key, value and the slot's generation share one 16-byte slot (one miss per
//! probe, no separate control bytes); linear probing, and deletion (duplicates only) by backward shift, so
//! no tombstones.

use super::BlockId;

/// A slot is occupied only if it carries the table's current generation: emptying the whole table (each
/// purge) is one increment, not a 2 MB fill, which had been much of a purge's cost. Generation 0 is never
/// current, so zeroed slots are empty.
#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u64,
    val: u32,
    gen: u32,
}

const VACANT: Slot = Slot {
    key: 0,
    val: 0,
    gen: 0,
};

/// How many entries ahead the per-block loops prefetch (table slots, block records): a few cache misses in
/// flight at once.
pub const PREFETCH_AHEAD: usize = 8;

/// A prefetch hint for the cache line at `p` (no-op off x86-64).
#[inline]
pub fn prefetch_ptr<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults or reads into the program, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Map from 64-bit block hash to block id that may hold stale entries (see the module docs). Contract: the
/// caller's `is_live(key, val)` is true for at most one block per key at a time, for no more than
/// `max_live` entries at once, and an entry that went stale never becomes live again unless re-inserted.
#[derive(Clone, Debug)]
pub struct HashIndex {
    slots: Vec<Slot>,
    /// The generation of occupied slots (never 0).
    gen: u32,
    shift: u32,
    mask: usize,
    /// Occupied slots, stale ones included.
    len: usize,
    /// Purge when `len` reaches this (half the slots).
    max_len: usize,
}

impl HashIndex {
    /// A table for at most `max_live` live entries; it has room for as many stale ones again and more.
    pub fn with_max_live(max_live: usize) -> HashIndex {
        let cap = (max_live.max(4) * 4).next_power_of_two();
        HashIndex {
            slots: vec![VACANT; cap],
            gen: 1,
            shift: 64 - cap.trailing_zeros(),
            mask: cap - 1,
            len: 0,
            max_len: cap / 2,
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // The high bits; the multiply spreads keys that are not already mixed (tests use small ints).
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    #[inline]
    fn occupied(&self, s: &Slot) -> bool {
        s.gen == self.gen
    }

    /// The slot holding `key`, live or stale.
    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if !self.occupied(&s) {
                return None;
            }
            if s.key == key {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Hints the CPU to load `key`'s home slot: callers that know the next keys (a request's chain of block
    /// hashes) prefetch a few ahead, so the table's cache misses overlap instead of queueing.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        prefetch_ptr(self.slots.as_ptr().wrapping_add(self.home(key)));
    }

    /// The block under `key`, live or stale: the caller checks.
    #[inline]
    pub fn get(&self, key: u64) -> Option<BlockId> {
        self.find(key).map(|i| self.slots[i].val)
    }

    /// True when the table is half full of live and stale entries: the caller should `rebuild` before the
    /// next insert.
    pub fn crowded(&self) -> bool {
        self.len >= self.max_len
    }

    /// Points `key` at `val` unless a live entry holds it: returns true if it did, false (changing nothing)
    /// if `key` is live. The table must not be `crowded`.
    #[inline]
    pub fn insert_unless_live(
        &mut self,
        key: u64,
        val: BlockId,
        is_live: impl Fn(u64, BlockId) -> bool,
    ) -> bool {
        assert!(self.len < self.max_len, "insert into a crowded hash index");
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if !self.occupied(&s) {
                self.slots[i] = Slot {
                    key,
                    val,
                    gen: self.gen,
                };
                self.len += 1;
                return true;
            }
            if s.key == key {
                if is_live(key, s.val) {
                    return false;
                }
                self.slots[i].val = val;
                return true;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Points a present `key` at `val` (the caller promotes a duplicate).
    pub fn set(&mut self, key: u64, val: BlockId) {
        let i = self.find(key).expect("the key is present");
        self.slots[i].val = val;
    }

    /// Removes `key`, live or stale.
    pub fn remove(&mut self, key: u64) {
        let Some(mut hole) = self.find(key) else {
            return;
        };
        self.len -= 1;
        // Backward shift: pull later entries of the probe run into the hole while that does not move one
        // before its home slot (so no tombstones are needed).
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if !self.occupied(&s) {
                break;
            }
            let home = self.home(s.key);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = VACANT;
    }

    /// Empties the table and inserts `live`, the caller's live entries (distinct keys, at most `max_live`):
    /// drops every stale entry. The pool calls it once per at least `slots/2 - max_live` insertions.
    pub fn rebuild(&mut self, live: impl IntoIterator<Item = (u64, BlockId)>) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            // After 4 billion purges: generation 0 means vacant, so really empty the slots once.
            self.slots.fill(VACANT);
            self.gen = 1;
        }
        self.len = 0;
        for (key, val) in live {
            assert!(self.len < self.max_len / 2, "hash index over capacity");
            let mut i = self.home(key);
            while self.occupied(&self.slots[i]) {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = Slot {
                key,
                val,
                gen: self.gen,
            };
            self.len += 1;
        }
    }

    /// Every occupied (key, value), live or stale, in slot order (invariant checks).
    pub fn iter(&self) -> impl Iterator<Item = (u64, BlockId)> + '_ {
        self.slots
            .iter()
            .filter(|s| self.occupied(s))
            .map(|s| (s.key, s.val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A purge empties the table by moving to the next generation; when the generation counter wraps, the
    /// slots must really be emptied, or entries from 4 billion purges ago would come back.
    #[test]
    fn purge_across_the_generation_wrap_forgets_dropped_entries() {
        let mut t = HashIndex::with_max_live(8);
        for k in 0..6u64 {
            assert!(t.insert_unless_live(k, k as u32 + 100, |_, _| true));
        }
        // Skip to the last generation before the wrap: the slots written in generation 1 read as vacant.
        t.gen = u32::MAX;
        assert_eq!(t.iter().count(), 0);
        t.rebuild([(1, 101), (4, 104)]);
        assert_eq!(t.gen, 1);
        for k in 0..6u64 {
            let want = [1, 4].contains(&k).then_some(k as u32 + 100);
            assert_eq!(t.get(k), want, "key {k}");
        }
        assert_eq!(t.iter().count(), 2);
        // One more ordinary purge.
        t.rebuild([(4, 104)]);
        assert_eq!((t.get(1), t.get(4), t.gen), (None, Some(104), 2));
    }

    proptest! {
        /// Against std's HashMap with eager deletion: the same live answers after any sequence of inserts,
        /// lazy deletes (the value goes stale), eager removes and lookups. Keys come from a small range so
        /// probe runs collide, wrap and shift, and the table is small so purges run.
        #[test]
        fn agrees_with_hashmap(ops in proptest::collection::vec((0u8..4, 0u64..40, 0u32..1000), 0..600)) {
            let mut t = HashIndex::with_max_live(40);
            let mut m: HashMap<u64, u32> = HashMap::new();
            // Liveness as the block pool defines it: the value currently "holds" the key. Values are
            // versioned so a stale value is never live again.
            let mut version = 1000u32;
            for (op, k, _) in ops {
                match op {
                    0 => {
                        version += 1;
                        let live_before = m.contains_key(&k);
                        if t.crowded() {
                            t.rebuild(m.iter().map(|(&k, &v)| (k, v)));
                        }
                        let mm = m.clone();
                        let did = t.insert_unless_live(k, version, |key, v| mm.get(&key) == Some(&v));
                        prop_assert_eq!(did, !live_before);
                        m.entry(k).or_insert(version);
                    }
                    1 => {
                        m.remove(&k); // lazy: the entry goes stale
                    }
                    2 => {
                        t.remove(k);
                        m.remove(&k);
                    }
                    _ => {
                        let got = t.get(k).filter(|v| m.get(&k) == Some(v));
                        prop_assert_eq!(got, m.get(&k).copied());
                    }
                }
            }
            for k in 0..40 {
                let got = t.get(k).filter(|v| m.get(&k) == Some(v));
                prop_assert_eq!(got, m.get(&k).copied());
            }
        }
    }
}
