//! An LRU-ordered set of 64-bit keys: the offload tiers' index (`tier.rs`).
//!
//! A tier stores and evicts a unit per block of every request, millions per run, and the `lru` crate's
//! cache allocates a node per insertion and frees it per eviction: in profiles of offload runs that was
//! half the time. Here the nodes live in one slab and an evicted node's slot is reused by the next
//! insertion; the key -> slot map uses the fast integer hasher. Same behaviour as `lru::LruCache<u64, ()>`
//! for the operations a tier uses (tested against it on random operations).

use crate::fasthash::FastMap;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    key: u64,
    /// Towards the least recent end.
    prev: u32,
    /// Towards the most recent end.
    next: u32,
}

/// Keys in recency order, least recent at the head.
#[derive(Clone, Debug, Default)]
pub struct LruSet {
    map: FastMap<u64, u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Least recent.
    head: Option<u32>,
    /// Most recent.
    tail: Option<u32>,
}

impl LruSet {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn contains(&self, k: &u64) -> bool {
        self.map.contains_key(k)
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        match prev {
            NIL => self.head = (next != NIL).then_some(next),
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = (prev != NIL).then_some(prev),
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn link_tail(&mut self, i: u32) {
        let prev = self.tail.unwrap_or(NIL);
        self.nodes[i as usize].prev = prev;
        self.nodes[i as usize].next = NIL;
        match self.tail {
            Some(t) => self.nodes[t as usize].next = i,
            None => self.head = Some(i),
        }
        self.tail = Some(i);
    }

    /// Makes `k` the most recent, if present; true when it was.
    pub fn promote(&mut self, k: &u64) -> bool {
        let Some(&i) = self.map.get(k) else {
            return false;
        };
        if self.tail != Some(i) {
            self.unlink(i);
            self.link_tail(i);
        }
        true
    }

    /// Adds `k` as the most recent (or makes it so, if present).
    pub fn push(&mut self, k: u64) {
        if self.promote(&k) {
            return;
        }
        let node = Node {
            key: k,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.map.insert(k, i);
        self.link_tail(i);
    }

    /// Removes and returns the least recent key.
    pub fn pop_lru(&mut self) -> Option<u64> {
        let i = self.head?;
        self.unlink(i);
        let k = self.nodes[i as usize].key;
        self.map.remove(&k);
        self.free.push(i);
        Some(k)
    }

    /// Removes `k`; true when it was present.
    pub fn remove(&mut self, k: &u64) -> bool {
        let Some(i) = self.map.remove(k) else {
            return false;
        };
        self.unlink(i);
        self.free.push(i);
        true
    }

    pub fn clear(&mut self) {
        *self = LruSet::default();
    }

    /// The keys from least to most recent.
    pub fn iter_lru(&self) -> impl Iterator<Item = u64> + '_ {
        let mut at = self.head.unwrap_or(NIL);
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let n = self.nodes[at as usize];
            at = n.next;
            Some(n.key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Random pushes, promotions, removals and evictions over a small key space agree with
        /// `lru::LruCache`.
        #[test]
        fn behaves_as_the_lru_crate(ops in proptest::collection::vec((0u8..5, 0u64..12), 0..200)) {
            let mut a = LruSet::default();
            let mut b: lru::LruCache<u64, ()> = lru::LruCache::unbounded();
            for (op, k) in ops {
                match op {
                    0 | 1 => {
                        a.push(k);
                        b.push(k, ());
                    }
                    2 => prop_assert_eq!(a.promote(&k), b.promote(&k)),
                    3 if k % 2 == 0 => prop_assert_eq!(a.remove(&k), b.pop(&k).is_some()),
                    _ => prop_assert_eq!(a.pop_lru(), b.pop_lru().map(|x| x.0)),
                }
                prop_assert_eq!(a.len(), b.len());
                prop_assert_eq!(a.contains(&k), b.contains(&k));
                let order: Vec<u64> = b.iter().rev().map(|(k, _)| *k).collect();
                prop_assert_eq!(a.iter_lru().collect::<Vec<_>>(), order);
            }
        }
    }
}
