//! vLLM's waiting queues (S1): a deque in arrival order under FCFS, an ordered set by
//! (priority, arrival, id) under priority scheduling.

use crate::request::{Request, RequestId};
use crate::time::SimTime;
use std::collections::{BTreeSet, VecDeque};

#[derive(Clone, Debug)]
pub enum WaitingQueue {
    Fcfs(VecDeque<RequestId>),
    Priority(BTreeSet<(i64, SimTime, RequestId)>),
}

impl WaitingQueue {
    pub fn peek(&self) -> Option<RequestId> {
        match self {
            WaitingQueue::Fcfs(q) => q.front().copied(),
            WaitingQueue::Priority(s) => s.first().map(|e| e.2),
        }
    }

    pub fn pop(&mut self) -> Option<RequestId> {
        match self {
            WaitingQueue::Fcfs(q) => q.pop_front(),
            WaitingQueue::Priority(s) => s.pop_first().map(|e| e.2),
        }
    }

    pub fn push_back(&mut self, r: &Request) {
        match self {
            WaitingQueue::Fcfs(q) => q.push_back(r.id),
            WaitingQueue::Priority(s) => {
                s.insert((r.priority, r.arrival, r.id));
            }
        }
    }

    /// A preempted request goes to the head (S4); under priority the order decides where "head" is.
    pub fn push_front(&mut self, r: &Request) {
        match self {
            WaitingQueue::Fcfs(q) => q.push_front(r.id),
            WaitingQueue::Priority(s) => {
                s.insert((r.priority, r.arrival, r.id));
            }
        }
    }

    /// Removes `r` wherever it waits (an abort); false when it is not here.
    pub fn remove(&mut self, r: &Request) -> bool {
        match self {
            WaitingQueue::Fcfs(q) => match q.iter().position(|&id| id == r.id) {
                Some(i) => q.remove(i).is_some(),
                None => false,
            },
            WaitingQueue::Priority(s) => s.remove(&(r.priority, r.arrival, r.id)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            WaitingQueue::Fcfs(q) => q.len(),
            WaitingQueue::Priority(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ids(&self) -> Vec<RequestId> {
        match self {
            WaitingQueue::Fcfs(q) => q.iter().copied().collect(),
            WaitingQueue::Priority(s) => s.iter().map(|e| e.2).collect(),
        }
    }
}
