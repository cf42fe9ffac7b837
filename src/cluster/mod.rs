//! The cluster: the replicas as the front end sees them, and the routers that place each arriving request.
//!
//! The boundary: a router is given the request (its session, prompt segments and any block hashes its
//! session carried from the replica that ran its previous turn, made under that replica's block size
//! and salt: see `HashChain::tag`) and a read-only [`ReplicaView`] of every replica, and answers a [`Route`]: a
//! replica's id, or a rejection. It sees only what a real front end could observe (counts, token load,
//! KV usage, state), never a replica's queues or pool. Replica ids are stable for the whole run: a
//! replica keeps its id and its place in the list whatever its state, so `views[i].id == i`.
//!
//! What lives here: `router/`, one file per routing policy. To add a router: one file under `router/`
//! implementing [`router::Router`], one `RouterPolicy` arm in `config.rs` (the `cluster.router` key),
//! and its construction in [`router::build`].
//!
//! Admission control (`[admission]`), client timeouts and retries, and cluster events
//! (`[[cluster.events]]`: a replica added, removed or drained) are applied by the world
//! (`world.rs`), which sets each replica's [`ReplicaState`] and `degraded` flag; routers only honour
//! them ([`ReplicaView::takes_new`]).

pub mod router;

use crate::config::LoadSignal;
use crate::event::ReplicaId;

/// Whether a replica takes new requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaState {
    /// Serving and taking new requests.
    #[default]
    Up,
    /// Finishing what it holds, taking nothing new.
    Draining,
    /// Not serving.
    Down,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Up => "up",
            ReplicaState::Draining => "draining",
            ReplicaState::Down => "down",
        }
    }
}

/// What a router sees of one replica at an arrival.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplicaView {
    /// The replica's stable id (its index in the list).
    pub id: ReplicaId,
    pub state: ReplicaState,
    /// Reports itself degraded (KV usage over `admission.max_kv_usage_degraded`): routers pass it over.
    pub degraded: bool,
    /// Requests waiting to be scheduled.
    pub num_waiting: usize,
    /// Requests running (admitted, holding KV).
    pub num_running: usize,
    /// Prompt tokens of every request the replica holds: the work a front end has sent it and not yet
    /// seen finish, in tokens.
    pub prompt_tokens: u64,
    /// KV-cache usage, 0 to 1 (vLLM's `kv_cache_usage_perc`, K11).
    pub kv_usage: f64,
}

impl ReplicaView {
    /// Requests held, waiting or running.
    pub fn num_requests(&self) -> usize {
        self.num_waiting + self.num_running
    }

    /// True when the replica is up (it may still be degraded).
    pub fn is_up(&self) -> bool {
        self.state == ReplicaState::Up
    }

    /// True when routers may send it a request: up and not degraded.
    pub fn takes_new(&self) -> bool {
        self.is_up() && !self.degraded
    }

    /// Its load as `signal` reads it: requests held, prompt tokens held, or KV usage.
    pub fn load(&self, signal: LoadSignal) -> f64 {
        match signal {
            LoadSignal::Requests => self.num_requests() as f64,
            LoadSignal::Tokens => self.prompt_tokens as f64,
            LoadSignal::KvUsage => self.kv_usage,
        }
    }
}

/// A router's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// Send the request to the replica with this id (one that is up).
    To(ReplicaId),
    /// Refuse it: no replica can take it (recorded with status `rejected`, reason `unavailable`; its
    /// client retries if it has retries left, else its session goes on after the next think time, as
    /// after a failed turn).
    Reject,
}
