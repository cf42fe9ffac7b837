//! The event queue and its total order. Knows nothing about LLMs.
//!
//! Events are ordered by (time, class, tie): the class (from [`EventClass`]) fixes the order of different
//! kinds of event at one instant, and the tie fixes the order of events of one class: the event's own key
//! when its class gives one ([`EventClass::tie`]), else its sequence number (insertion order), so the
//! order is total and runs are reproducible.

use crate::time::SimTime;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// An event type tells the queue its same-instant class: lower classes run first.
pub trait EventClass {
    fn class(&self) -> u8;
    /// The order of this event among its class's events at one instant, when the class fixes it by a key
    /// of the event (every event of such a class must give one; equal keys are then equivalent events, in
    /// no particular order). None, the default: insertion order.
    fn tie(&self) -> Option<u64> {
        None
    }
}

/// An event and its place in the order: (time, class, sequence number) packed into one integer, most
/// significant first, so that the heap compares one `u128` per probe (the queue's pops were several
/// percent of a run's time).
#[derive(Debug)]
struct Entry<E> {
    key: u128,
    event: E,
}

/// Bits of the sequence number (below the class's 8 bits); 2^56 events would take centuries to simulate.
const SEQ_BITS: u32 = 56;

impl<E> PartialEq for Entry<E> {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}
impl<E> Entry<E> {
    fn new(time: SimTime, class: u8, seq: u64, event: E) -> Self {
        debug_assert!(seq < 1 << SEQ_BITS);
        let low = ((class as u64) << SEQ_BITS) | seq;
        Entry {
            key: ((time.0 as u128) << 64) | low as u128,
            event,
        }
    }

    fn key(&self) -> u128 {
        self.key
    }

    fn time(&self) -> SimTime {
        SimTime((self.key >> 64) as u64)
    }
}

/// A priority queue of future events with a monotone clock.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    seq: u64,
    now: SimTime,
    popped: u64,
}

impl<E: EventClass> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: EventClass> EventQueue<E> {
    pub fn new() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            seq: 0,
            now: SimTime::ZERO,
            popped: 0,
        }
    }

    /// The time of the last event popped (the simulation's "now").
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// Number of events popped so far.
    pub fn events_processed(&self) -> u64 {
        self.popped
    }

    /// Counts events that a caller handled without queueing them (a leap over steps whose events are known
    /// to change nothing else), so event counts do not depend on whether it leapt.
    pub fn count_skipped(&mut self, n: u64) {
        self.popped += n;
    }

    /// Uncounts the event just popped: one queued that turned out to stand for nothing (a replica's
    /// coasting end that an earlier catch-up made moot), so event counts do not depend on coasting.
    pub fn uncount_popped(&mut self) {
        self.popped -= 1;
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `event` at `time`. Scheduling in the past is a logic error (invariant 3): the time is clamped to
    /// now in release builds and panics in debug builds.
    pub fn push(&mut self, time: SimTime, event: E) {
        debug_assert!(time >= self.now, "event scheduled in the past");
        let time = time.max(self.now);
        let class = event.class();
        let tie = event.tie().unwrap_or_else(|| {
            self.seq += 1;
            self.seq
        });
        self.heap.push(Reverse(Entry::new(time, class, tie, event)));
    }

    /// Removes the earliest event and advances the clock to it.
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        let Reverse(e) = self.heap.pop()?;
        let time = e.time();
        assert!(time >= self.now, "invariant 3: the clock went back");
        self.now = time;
        self.popped += 1;
        Some((time, e.event))
    }

    /// The earliest pending event and its time.
    pub fn peek(&self) -> Option<(SimTime, &E)> {
        self.heap.peek().map(|Reverse(e)| (e.time(), &e.event))
    }

    /// The time of the earliest pending event.
    pub fn peek_time(&self) -> Option<SimTime> {
        self.heap.peek().map(|Reverse(e)| e.time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ev(u8, &'static str);
    impl EventClass for Ev {
        fn class(&self) -> u8 {
            self.0
        }
    }

    #[test]
    fn order_is_time_then_class_then_insertion() {
        let mut q = EventQueue::new();
        q.push(SimTime(10), Ev(2, "t10 c2"));
        q.push(SimTime(10), Ev(0, "t10 c0 first"));
        q.push(SimTime(5), Ev(3, "t5"));
        q.push(SimTime(10), Ev(0, "t10 c0 second"));
        let order: Vec<&str> = std::iter::from_fn(|| q.pop().map(|(_, e)| e.1)).collect();
        assert_eq!(order, ["t5", "t10 c0 first", "t10 c0 second", "t10 c2"]);
        assert_eq!(q.now(), SimTime(10));
    }

    /// A class with a key orders its events at one instant by the key, whatever their insertion order.
    #[test]
    fn a_keyed_class_orders_by_key() {
        #[derive(Debug)]
        struct Keyed(u8, u64);
        impl EventClass for Keyed {
            fn class(&self) -> u8 {
                self.0
            }
            fn tie(&self) -> Option<u64> {
                (self.0 == 1).then_some(self.1)
            }
        }
        let mut q = EventQueue::new();
        for (c, k) in [(1, 7), (2, 9), (1, 3), (2, 1), (1, 5)] {
            q.push(SimTime(4), Keyed(c, k));
        }
        let order: Vec<(u8, u64)> =
            std::iter::from_fn(|| q.pop().map(|(_, e)| (e.0, e.1))).collect();
        // Class 1 by key; class 2 in insertion order.
        assert_eq!(order, [(1, 3), (1, 5), (1, 7), (2, 9), (2, 1)]);
    }
}
