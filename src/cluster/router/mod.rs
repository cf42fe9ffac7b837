//! Routing policies: which replica a new request goes to. One file per policy.
//!
//! Routing is a direct call at arrival, not an event. To add a policy: one file here implementing
//! [`Router`], one `RouterPolicy` arm in `config.rs` (with its `[cluster.<policy>]` table there when it
//! has settings), and its construction in [`build`].
//!
//! Every policy routes only to replicas that take new requests ([`ReplicaView::takes_new`]: up and not
//! degraded) and rejects when there is none; the world records such a rejection as `unavailable`.

mod cache_aware;
mod consistent_hash;
mod least_loaded;
mod power_of_two;
mod prefix_aware;
mod round_robin;
mod session_affinity;

pub use cache_aware::CacheAware;
pub use consistent_hash::ConsistentHash;
pub use least_loaded::LeastLoaded;
pub use power_of_two::PowerOfTwo;
pub use prefix_aware::PrefixAware;
pub use round_robin::RoundRobin;
pub use session_affinity::SessionAffinity;

use super::{ReplicaView, Route};
use crate::config::{ClusterConfig, LoadSignal, RouterPolicy};
use crate::event::ReplicaId;
use crate::request::Request;
use crate::rng::RngStreams;
use crate::time::SimTime;

/// A routing policy.
///
/// Contract: `route` is deterministic given its inputs, its own state and its own random stream
/// (`cluster.router`, drawn only here, at arrivals, so the draws are the same whether the engine leaps
/// or not: leap contract, condition 9); it returns [`Route::To`] only with the id of a view that takes
/// new requests, and [`Route::Reject`] when it will not place the request (always when no view takes
/// new requests). `replicas` is every replica of the cluster, `replicas[i].id == i`, never empty; their
/// loads may be as old as `cluster.signal_delay_s`. `now` is the arrival time.
pub trait Router {
    fn route(&mut self, req: &Request, now: SimTime, replicas: &[ReplicaView]) -> Route;

    /// Whether `route` reads the views' loads (waiting, running, prompt tokens, KV usage), not only their
    /// ids and states (`takes_new` reads the state and `degraded`, which the world sets from the loads
    /// only under `admission.max_kv_usage_degraded`). A router that does not lets replicas coast past its
    /// arrivals (see `world.rs`). True, the default, is always safe.
    fn reads_loads(&self) -> bool {
        true
    }
}

/// What a router needs besides its config: the replica slots it routes over and the engine's sizes.
#[derive(Clone, Copy, Debug)]
pub struct RouterContext {
    /// Replica slots over the whole run (ids 0..slots), whatever their state.
    pub slots: u32,
    pub seed: u64,
    /// Each replica's GPU KV blocks and tokens per block.
    pub gpu_blocks: u64,
    pub block_size: u32,
}

/// The router of the configured policy.
pub fn build(cfg: &ClusterConfig, ctx: RouterContext) -> Box<dyn Router> {
    let rng = || RngStreams::new(ctx.seed).stream("cluster.router");
    match cfg.router {
        RouterPolicy::RoundRobin => Box::new(RoundRobin::default()),
        RouterPolicy::LeastLoaded => Box::new(LeastLoaded::new(cfg.load_signal)),
        RouterPolicy::SessionAffinity => Box::new(SessionAffinity),
        RouterPolicy::PowerOfTwo => Box::new(PowerOfTwo::new(cfg.load_signal, rng())),
        RouterPolicy::ConsistentHash => Box::new(ConsistentHash::new(
            ctx.slots,
            &cfg.consistent_hash,
            cfg.load_signal,
        )),
        RouterPolicy::PrefixAware => Box::new(PrefixAware::new(
            ctx.slots,
            &cfg.prefix_aware,
            ctx.gpu_blocks,
            ctx.block_size,
            rng(),
        )),
        RouterPolicy::CacheAware => Box::new(CacheAware::new(&cfg.cache_aware, cfg.load_signal)),
    }
}

/// The replica taking new requests with the lowest `signal`; ties go to the lowest id.
pub fn least_loaded(replicas: &[ReplicaView], signal: LoadSignal) -> Option<ReplicaId> {
    replicas
        .iter()
        .filter(|v| v.takes_new())
        .min_by(|a, b| {
            a.load(signal)
                .total_cmp(&b.load(signal))
                .then(a.id.cmp(&b.id))
        })
        .map(|v| v.id)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::cluster::ReplicaState;
    use crate::time::SimTime;

    /// Views of replicas holding `loads` requests each (all running), up unless listed in `down`.
    pub fn views(loads: &[usize], down: &[usize]) -> Vec<ReplicaView> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &l)| ReplicaView {
                id: i as u32,
                state: if down.contains(&i) {
                    ReplicaState::Down
                } else {
                    ReplicaState::Up
                },
                degraded: false,
                num_waiting: 0,
                num_running: l,
                prompt_tokens: 0,
                kv_usage: 0.0,
            })
            .collect()
    }

    /// A one-segment request of session `session`.
    pub fn request(session: u64) -> Request {
        let prompt = vec![crate::workload::content::Segment {
            content: session,
            len: 10,
        }];
        Request::new(session, session, 1, 0, SimTime::ZERO, prompt, 0, 8)
    }

    /// A request of session `session` whose prompt is `segments` as (content, tokens).
    pub fn request_with(session: u64, segments: &[(u64, u32)]) -> Request {
        let prompt = segments
            .iter()
            .map(|&(content, len)| crate::workload::content::Segment { content, len })
            .collect();
        Request::new(session, session, 1, 0, SimTime::ZERO, prompt, 0, 8)
    }
}
