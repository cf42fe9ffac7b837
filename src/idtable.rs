//! A map from request id to value for the requests a replica holds: a window of slots from the oldest id
//! held to the newest.
//!
//! Request ids grow with arrival and a replica holds a few hundred requests at a time, mostly recent ones,
//! so a slot per id in the window is a short array indexed by `id - base`: a lookup is an index, where a hash
//! map probe was a cache miss of its own, several per running request per step (the scheduler, the step's
//! completion and the leap each look requests up). The window spans the ids between the oldest and the
//! newest request held, holes included (ids served by other replicas, requests already finished): a slot
//! is 8 bytes for boxed values, so even a window of 100,000 ids is under a megabyte. Iteration is in id
//! order.

use crate::request::RequestId;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct IdTable<T> {
    /// The id of `slots[0]`.
    base: RequestId,
    slots: VecDeque<Option<T>>,
    len: usize,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            base: 0,
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> IdTable<T> {
    #[inline]
    fn slot(&self, id: RequestId) -> Option<usize> {
        let i = id.checked_sub(self.base)? as usize;
        (i < self.slots.len()).then_some(i)
    }

    /// Inserts `v` under `id`, returning the value it replaces.
    pub fn insert(&mut self, id: RequestId, v: T) -> Option<T> {
        if self.len == 0 {
            self.slots.clear();
            self.base = id;
        }
        if id < self.base {
            for _ in id..self.base {
                self.slots.push_front(None);
            }
            self.base = id;
        }
        let i = (id - self.base) as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    #[inline]
    pub fn get(&self, id: &RequestId) -> Option<&T> {
        self.slots[self.slot(*id)?].as_ref()
    }

    #[inline]
    pub fn get_mut(&mut self, id: &RequestId) -> Option<&mut T> {
        let i = self.slot(*id)?;
        self.slots[i].as_mut()
    }

    /// Removes `id`'s value; the window shrinks past empty slots at either end.
    pub fn remove(&mut self, id: &RequestId) -> Option<T> {
        let i = self.slot(*id)?;
        let v = self.slots[i].take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        while matches!(self.slots.back(), Some(None)) {
            self.slots.pop_back();
        }
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values in id order.
    pub fn values(&self) -> impl Iterator<Item = &T> + Clone {
        self.slots.iter().flatten()
    }
}

impl<T> std::ops::Index<&RequestId> for IdTable<T> {
    type Output = T;
    fn index(&self, id: &RequestId) -> &T {
        self.get(id).expect("id in table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Against a BTreeMap: the same answers after any inserts and removes, ids in and out of order.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u64..60), 0..300)) {
            let mut t = IdTable::default();
            let mut m = BTreeMap::new();
            for (ins, id) in ops {
                if ins {
                    prop_assert_eq!(t.insert(id, id * 10), m.insert(id, id * 10));
                } else {
                    prop_assert_eq!(t.remove(&id), m.remove(&id));
                }
                prop_assert_eq!(t.len(), m.len());
                for k in 0..60 {
                    prop_assert_eq!(t.get(&k), m.get(&k));
                }
                let tv: Vec<u64> = t.values().copied().collect();
                let mv: Vec<u64> = m.values().copied().collect();
                prop_assert_eq!(tv, mv);
                // The window spans exactly the ids held.
                prop_assert!(t.slots.front().is_none_or(|s| s.is_some()));
                prop_assert!(t.slots.back().is_none_or(|s| s.is_some()));
            }
        }
    }
}
