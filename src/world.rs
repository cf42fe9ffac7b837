//! The world owns everything in a run and dispatches each event with one `match`. It knows the loop,
//! not how the parts are built: [`crate::system`] wires them from the config.
//!
//! Coasting. A replica that stands between steps with a run of pure-decode steps ahead (a leap, see the
//! leap contract in `replica.rs`) would have to stop leaping at the next event anywhere; on many replicas
//! that is almost always another replica's step end, so leaps would be one step long. Instead, when the
//! next event passes it by, the replica coasts ([`World::coast`]): the leap's extent is priced and its
//! last step's end queued, and the steps are taken at that end ([`World::end_coast`]), or earlier, up to
//! the instant of whatever reaches the replica first ([`World::catch_up`]): an arrival routed to it, a
//! router that reads every replica's load, a client timeout, a cluster event, a time-series sample.
//! Completions at one instant run in replica order (`event.rs`), so a coast's end sorts where its last
//! step's would have.
//!
//! Disaggregated serving (`cluster.mode = "disaggregated"`, [`PdPools`]): `router` routes arrivals
//! over the prefill pool; a request the prefill instance is done with is handed to the decode pool's
//! router (`World::hand_off`), the decode instance's scheduler starts the KV pull
//! (`Replica::take_transfers`), and its landing (`Event::KvTransferDone`) frees the blocks the
//! prefill instance kept.

use crate::cluster::router::Router;
use crate::cluster::{ReplicaView, Route};
use crate::config::Config;
use crate::cost::CostModel;
use crate::engine::EventQueue;
use crate::error::{ConfigError, Error, OutputError};
use crate::event::{Event, ReplicaId, SessionId};
use crate::fasthash::FastMap;
use crate::metrics::{Collector, Sample};
use crate::replica::{Leapt, Replica, StepStart};
use crate::request::{FailureReason, Request, RequestId, Status};
use crate::scheduler::Scheduler;
use crate::time::{SimDuration, SimTime};
use crate::workload::conversation::Release;
use crate::workload::{NextTurn, Workload};
use std::io::IsTerminal;
use std::time::Instant;

use crate::time::HORIZON;

const SECONDS_PER_YEAR: f64 = 365.25 * 86_400.0;

/// Counts the run loop keeps beyond the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCounts {
    /// Steps advanced by leaps rather than one by one (not an output: leaping must not change outputs).
    pub leapt_steps: u64,
    /// Coasts begun ([`World::coast`]), and those something reached before their end.
    pub coasts: u64,
    pub catch_ups: u64,
    pub released: u64,
    /// Sessions whose last turn has left the system.
    pub sessions_ended: u64,
    pub events: u64,
    /// The time of the last event other than a time-series sample: the end of the last activity, so that
    /// nothing computed from it depends on `output.timeseries_interval_s`.
    pub end: SimTime,
    pub stopped_early: bool,
}

/// A run whose replicas run policy `S` (with its store): generic, so that the loop is compiled for each
/// engine and store pair and no per-step call goes through a virtual table.
pub struct World<'a, S> {
    cfg: &'a Config,
    queue: EventQueue<Event>,
    pub replicas: Vec<Replica<S>>,
    router: Box<dyn Router>,
    /// The replicas as the router sees them: loads as of `views_at` (see `cluster.signal_delay_s`),
    /// states as of the last arrival.
    views: Vec<ReplicaView>,
    views_at: Option<SimTime>,
    signal_delay: SimDuration,
    /// `admission.max_kv_usage_degraded`, when set.
    degraded_above: Option<f64>,
    /// `admission.max_waiting`, when set.
    max_waiting: Option<usize>,
    client_timeout: Option<SimDuration>,
    retry_after: SimDuration,
    /// Requests refused or abandoned whose clients will send them again (`Event::Retry`), with their
    /// true output lengths.
    retrying: FastMap<RequestId, (Request, u32)>,
    /// The slot the next `add_replica` event brings up.
    next_slot: u32,
    /// The time of the last sample that wrote rows.
    last_sample: Option<SimTime>,
    /// Makes a fresh replica for a slot serving a model (a restart's, a model swap's), when the world
    /// was given one.
    factory: Option<&'a dyn Fn(ReplicaId, usize) -> Replica<S>>,
    workload: Box<dyn Workload>,
    /// One cost model per model of the run (`System::of_model` order); a replica steps with its model's.
    costs: Vec<Box<dyn CostModel>>,
    pub metrics: Collector,
    sample_interval: SimDuration,
    /// Per replica, the earliest time its scheduler asked to be woken (`Next::WakeAt`), while queued.
    wake_at: Vec<Option<SimTime>>,
    /// True when an event other than a sample ran since the last sample.
    active_since_sample: bool,
    /// True while sampling is suspended over an idle stretch (see `Event::Sample`).
    sampling_suspended: bool,
    stop_at: Option<SimTime>,
    pub counts: RunCounts,
    progress: Progress,
    /// Advance runs of pure-decode steps at once (exact; `--no-leap` steps one by one).
    leap: bool,
    /// The same-instant place (class, tie) of the event being dispatched: whether a coasting replica's
    /// step ending at this instant has run yet ([`World::catch_up`]).
    at: (u8, u64),
    /// Coast ends queued that a catch-up made moot (the run loop drops them): the queue holds real
    /// events only when it holds more than these.
    moot: usize,
    /// Disaggregated serving's pools and decode router; None in an aggregated cluster (`router`
    /// then routes over every replica; here over the prefill pool).
    pd: Option<PdPools>,
}

/// A disaggregated cluster: replicas 0..prefill are the prefill pool, the rest the decode pool.
pub struct PdPools {
    pub prefill: u32,
    pub decode_router: Box<dyn Router>,
    pub first_token: crate::config::FirstToken,
}

/// Which replicas a routing decision picks among.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    /// Every replica (aggregated), or the prefill pool.
    First,
    /// The decode pool.
    Decode,
}

impl<'a, S: Scheduler> World<'a, S> {
    /// A run of `replicas` (made by the factory [`crate::system::System::build`] gives, ids 0..n in order) behind
    /// `router`, fed by `workload`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a Config,
        replicas: Vec<Replica<S>>,
        router: Box<dyn Router>,
        workload: Box<dyn Workload>,
        cost: Box<dyn CostModel>,
        metrics: Collector,
        show_progress: bool,
        leap: bool,
    ) -> World<'a, S> {
        let mut replicas = replicas;
        // Slots past the starting replicas join with `add_replica` events.
        for r in replicas.iter_mut().skip(cfg.cluster.replicas as usize) {
            r.state = crate::cluster::ReplicaState::Down;
            r.stats.up.clear();
        }
        World {
            next_slot: cfg.cluster.replicas,
            last_sample: None,
            factory: None,
            cfg,
            wake_at: vec![None; replicas.len()],
            queue: EventQueue::new(),
            replicas,
            views: Vec::new(),
            views_at: None,
            signal_delay: SimDuration::from_secs_f64(cfg.cluster.signal_delay_s),
            degraded_above: cfg.admission.as_ref().and_then(|a| a.max_kv_usage_degraded),
            max_waiting: cfg
                .admission
                .as_ref()
                .and_then(|a| a.max_waiting)
                .map(|m| m as usize),
            client_timeout: cfg
                .workload
                .client_timeout_s
                .map(SimDuration::from_secs_f64),
            retry_after: SimDuration::from_secs_f64(cfg.workload.retry_after_s),
            retrying: FastMap::default(),
            router,
            workload,
            costs: vec![cost],
            metrics,
            sample_interval: SimDuration::from_secs_f64(cfg.output.timeseries_interval_s),
            active_since_sample: true,
            sampling_suspended: false,
            stop_at: cfg
                .output
                .max_sim_time_s
                .map(|s| SimTime::ZERO + SimDuration::from_secs_f64(s)),
            counts: RunCounts::default(),
            progress: Progress::new(show_progress, cfg.workload.duration_s),
            leap,
            at: (0, 0),
            moot: 0,
            pd: None,
        }
    }

    /// Makes the cluster disaggregated: `router` (given to [`World::new`]) routes over the prefill pool,
    /// `pools.decode_router` over the decode pool.
    pub fn set_pd_pools(&mut self, pools: PdPools) {
        self.pd = Some(pools);
    }

    /// Gives the world the factory that made its replicas, for restarts (`restart` and `swap_model`
    /// events need it).
    pub fn set_factory(&mut self, make: &'a dyn Fn(ReplicaId, usize) -> Replica<S>) {
        self.factory = Some(make);
    }

    /// Gives the world the cost models of the models `swap_model` events bring, after the first's (the
    /// one [`World::new`] took), in `System::of_model` order.
    pub fn add_swap_costs(&mut self, costs: Vec<Box<dyn CostModel>>) {
        self.costs.extend(costs);
    }

    /// Runs to the end: every released request finished, or `max_sim_time_s` reached. Virtual time past
    /// [`HORIZON`] is an input error (a step, think time or trace gap of centuries), reported before the
    /// clock could saturate.
    pub fn run(&mut self) -> Result<(), Error> {
        if let Some((id, t)) = self.workload.next_session_start() {
            self.queue.push(t, Event::SessionStart(id));
        }
        for (i, e) in self.cfg.cluster.events_in_order() {
            let at = SimTime::ZERO + SimDuration::from_secs_f64(e.at_s);
            self.queue.push(at, Event::Cluster(i as u32));
        }
        self.queue.push(SimTime::ZERO, Event::Sample);
        while let Some((t, &head)) = self.queue.peek() {
            // The end of a coast that a catch-up made moot stands for nothing: dropped and uncounted.
            if let Event::StepDone(rid) = head {
                let rep = &self.replicas[rid as usize];
                if rep.step_ends() != Some(t) && rep.coast.is_none_or(|c| c.end != t) {
                    self.queue.pop();
                    self.queue.uncount_popped();
                    self.moot -= 1;
                    continue;
                }
            }
            // A client deadline for a request that has left, or has its first token, does nothing:
            // dropped here, it neither ends nor stops nor extends the run.
            if let Event::Timeout(rid, id) = head {
                if !self.timeout_due(rid, id, t) {
                    self.queue.pop();
                    continue;
                }
            }
            if let Some(stop) = self.stop_at.filter(|&s| t > s) {
                // Coasts end no later than the stop time (their extent is the leap's, bounded by it).
                debug_assert!(self.replicas.iter().all(|r| r.coast.is_none()));
                self.counts.stopped_early = true;
                // Time-weighted means then cover exactly [0, stop].
                self.counts.end = stop;
                for r in &mut self.replicas {
                    r.trim_after(stop);
                }
                break;
            }
            if t >= HORIZON {
                return Err(ConfigError::invalid(
                    "virtual time",
                    format!(
                        "the run reached {:.3e} s ({:.0} years) of virtual time, past the clock's horizon of \
                         {:.0} years: a step time, think time, session start or trace gap is far too \
                         late. Check cost.roofline.step_overhead_s and the other cost.* times, \
                         workload.think_time_s, workload.duration_s, workload.trace.speedup; or stop \
                         earlier with output.max_sim_time_s",
                        t.as_secs_f64(),
                        t.as_secs_f64() / SECONDS_PER_YEAR,
                        HORIZON.as_secs_f64() / SECONDS_PER_YEAR
                    ),
                )
                .into());
            }
            let (now, ev) = self.queue.pop().expect("peeked");
            if !matches!(ev, Event::Sample) {
                self.counts.end = now;
                self.active_since_sample = true;
                if self.sampling_suspended {
                    // The first sample time on the grid at or after now; it runs after this instant's
                    // other events (samples come last in the same-instant order).
                    self.sampling_suspended = false;
                    let k = now.0.div_ceil(self.sample_interval.0);
                    let at = SimTime(k.saturating_mul(self.sample_interval.0));
                    if at < HORIZON {
                        self.queue.push(at, Event::Sample);
                    }
                }
            }
            self.dispatch(now, ev)?;
            #[cfg(debug_assertions)]
            self.check_work_conservation();
            self.progress.tick(now, self.queue.events_processed());
        }
        self.counts.events = self.queue.events_processed();
        self.progress.finish();
        // Whatever is still held when the run stops is reported as unfinished.
        for i in 0..self.replicas.len() {
            let end = self.counts.end;
            for r in self.replicas[i].drain(end) {
                self.metrics.on_request_done(&r, Status::Unfinished)?;
            }
        }
        let m = &self.metrics;
        assert_eq!(
            self.counts.released,
            m.finished + m.rejected + m.unfinished + m.failed + m.timed_out + m.aborted,
            "invariant 1: request conservation"
        );
        Ok(self.metrics.flush()?)
    }

    fn dispatch(&mut self, now: SimTime, ev: Event) -> Result<(), OutputError> {
        use crate::engine::EventClass;
        self.at = (ev.class(), ev.tie().unwrap_or(0));
        match ev {
            Event::SessionStart(id) => {
                let rel = self.workload.start_session(id, now);
                self.admit(now, rel)?;
                if let Some((next, t)) = self.workload.next_session_start() {
                    self.queue.push(t, Event::SessionStart(next));
                }
            }
            Event::TurnRelease(id) => {
                let rel = self.workload.release_turn(id, now);
                self.admit(now, rel)?;
            }
            Event::StepDone(rid) if !self.replicas[rid as usize].is_busy() => {
                // Not a step in flight: the end of a coast (the run loop dropped moot ones).
                self.end_coast(rid, now)?;
            }
            Event::StepDone(rid) => {
                let metrics = &mut self.metrics;
                // Most tokens of a step follow their previous ones by the same gap (the previous step's):
                // they are recorded together, as the histogram's integer sums do not depend on order.
                let mut same_gap: Option<(SimTime, u64)> = None;
                let done = self.replicas[rid as usize].finish_step(now, |_, prev| {
                    let Some(p) = prev else { return };
                    match &mut same_gap {
                        Some((q, n)) if *q == p => *n += 1,
                        _ => {
                            if let Some((q, n)) = same_gap.replace((p, 1)) {
                                metrics.on_tokens(now.since(q), n);
                            }
                        }
                    }
                });
                if let Some((q, n)) = same_gap {
                    self.metrics.on_tokens(now.since(q), n);
                }
                self.after_step(rid, now, done)?;
            }
            Event::Schedule(rid) => {
                // A leap must end before the next event, and no later than the stop time: one by one, a
                // step ending after `max_sim_time_s` never completes.
                let stop = self.stop_at.map(|s| s + SimDuration(1));
                let horizon = match (self.queue.peek_time(), stop) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if self.wake_at[rid as usize].is_some_and(|w| w <= now) {
                    self.wake_at[rid as usize] = None;
                }
                let next_passes = self.queue.peek().is_some_and(|(_, e)| passes_by(e, rid));
                let rep = &mut self.replicas[rid as usize];
                rep.schedule_pending = false;
                // A coasting replica is between steps only as far as the rest of the run has seen.
                if !rep.is_busy() && rep.coast.is_none() && rep.has_work() {
                    let metrics = &mut self.metrics;
                    let leapt = if self.leap {
                        rep.leap(now, horizon, self.costs[rep.model].as_ref(), |gaps| {
                            metrics.on_token_gaps(gaps)
                        })
                    } else {
                        None
                    };
                    if let Some(Leapt { steps, end, done }) = leapt {
                        // Stepping one by one, these steps' StepDone and Schedule events would have run,
                        // all but the last Schedule, which is queued now (by `after_step` when the last
                        // step finished requests: their StepDone's work, done now with its time, `end`;
                        // no event lies between, so nothing could see the difference).
                        self.queue.count_skipped(2 * steps - 1);
                        self.counts.leapt_steps += steps;
                        // The leap's last step ended at `end`: the last activity, as its StepDone would be.
                        self.counts.end = self.counts.end.max(end);
                        if !done.is_empty() {
                            self.after_step(rid, end, done)?;
                        } else if next_passes && self.coast(rid, end) {
                            // Its Schedule at `end` is the coast's start.
                            self.queue.count_skipped(1);
                        } else {
                            let rep = &mut self.replicas[rid as usize];
                            rep.schedule_pending = true;
                            self.queue.push(end, Event::Schedule(rid));
                        }
                    } else if !(self.leap && next_passes && self.coast(rid, now)) {
                        let rep = &mut self.replicas[rid as usize];
                        let start = rep.start_step(now, self.costs[rep.model].as_ref());
                        for (id, prefill, lands) in rep.take_transfers() {
                            self.queue.push(lands, Event::KvTransferDone(prefill, id));
                        }
                        match start {
                            StepStart::Started(d) => self.queue.push(now + d, Event::StepDone(rid)),
                            StepStart::Idle => {}
                            // The earliest wake per replica is queued; a later one would be redundant
                            // (the pass it triggers asks the scheduler again).
                            StepStart::WakeAt(t) => {
                                let w = &mut self.wake_at[rid as usize];
                                if w.is_none_or(|w| t < w) {
                                    *w = Some(t);
                                    self.queue.push(t, Event::Schedule(rid));
                                }
                            }
                        }
                    }
                }
            }
            Event::KvTransferDone(prefill, id) => {
                self.catch_up(prefill, now)?;
                self.replicas[prefill as usize].release_parked(id);
                self.request_schedule(prefill, now);
            }
            Event::Timeout(rid, id) => {
                // Only due deadlines reach here (`run` drops the others). A coasting replica may hold
                // the request waiting (the dynamic batcher decodes with requests waiting): it is caught
                // up, so the abort waits for the step in flight as it would.
                debug_assert!(self.timeout_due(rid, id, now));
                self.catch_up(rid, now)?;
                let rep = &mut self.replicas[rid as usize];
                if rep.is_busy() {
                    rep.pending_aborts.push(id);
                } else {
                    let (r, out) = rep.abort(id).expect("held between steps");
                    self.give_up(now, r, out, Status::TimedOut, FailureReason::ClientTimeout)?;
                    self.settle_leaving(rid, now)?;
                    self.request_schedule(rid, now);
                }
            }
            Event::Cluster(i) => {
                use crate::cluster::ReplicaState;
                use crate::config::ClusterAction;
                self.catch_up_all(now)?;
                let e = &self.cfg.cluster.events[i as usize];
                match e.action {
                    ClusterAction::AddReplica => {
                        let id = self.next_slot;
                        self.next_slot += 1;
                        self.replicas[id as usize].set_state(ReplicaState::Up, now);
                    }
                    ClusterAction::RemoveReplica | ClusterAction::Drain
                        if self.replicas[e.replica.expect("validated") as usize]
                            .ready_at
                            .is_some() =>
                    {
                        // Still down from a restart (which took effect at the end of the step in
                        // flight, after its event): it does not come back.
                        self.replicas[e.replica.expect("validated") as usize].ready_at = None;
                    }
                    ClusterAction::RemoveReplica | ClusterAction::Drain => {
                        let id = e.replica.expect("validated");
                        let rep = &mut self.replicas[id as usize];
                        rep.set_state(ReplicaState::Draining, now);
                        rep.reroute_pending = e.action == ClusterAction::RemoveReplica;
                        self.settle_leaving(id, now)?;
                    }
                    ClusterAction::Restart | ClusterAction::SwapModel => {
                        let id = e.replica.expect("validated");
                        let startup = self.cfg.engine.startup_s;
                        let swap = (e.action == ClusterAction::SwapModel)
                            .then(|| (self.cfg.cluster.model_index(e), e.down_s(startup)));
                        let rep = &mut self.replicas[id as usize];
                        rep.swap_pending = swap;
                        if rep.ready_at.is_some() {
                            // Still down from a restart: this one starts over from now.
                            self.restart(id, now)?;
                        } else {
                            // It stops taking requests now; what it holds goes at the step's end.
                            rep.set_state(ReplicaState::Draining, now);
                            rep.restart_pending = true;
                            self.settle_leaving(id, now)?;
                        }
                    }
                }
            }
            Event::ReplicaReady(id) => {
                // Only the restart it was queued for: a later restart or a removal replaced it.
                let rep = &mut self.replicas[id as usize];
                if rep.ready_at == Some(now) {
                    rep.ready_at = None;
                    rep.set_state(crate::cluster::ReplicaState::Up, now);
                }
            }
            Event::Retry(id) => {
                let (r, out) = self.retrying.remove(&id).expect("queued with its retry");
                self.counts.released += 1;
                self.send(now, r, out)?;
            }
            Event::Sample => {
                // Every value a row holds changes only at an event. When none ran since the last sample
                // (an idle stretch, or one long step in flight) the rows would repeat the last ones but
                // for their time: none are written, and sampling resumes at the first interval boundary
                // at or after the next event, so the time series costs in proportion to activity, not
                // to virtual time.
                // A coasting replica began its coast after the last sample (which caught up every
                // replica), at an event that made the interval active.
                self.catch_up_all(now)?;
                if !self.active_since_sample {
                    self.sampling_suspended = true;
                    return Ok(());
                }
                self.active_since_sample = false;
                // Replicas not yet joined, or gone, write no rows, but for one row saying `down` at the
                // first sample after they left.
                let last = self.last_sample;
                self.last_sample = Some(now);
                for rep in self.replicas.iter().filter(|r| {
                    r.state != crate::cluster::ReplicaState::Down
                        || r.has_work()
                        || r.stats
                            .up
                            .last()
                            .and_then(|u| u.1)
                            .is_some_and(|end| last.is_none_or(|l| end > l.0))
                }) {
                    let kv = rep.kv_stats();
                    let off = kv.offload.unwrap_or_default();
                    self.metrics.on_sample(&Sample {
                        time: now,
                        replica: rep.id,
                        waiting: rep.num_waiting(),
                        running: rep.num_running(),
                        batch_tokens: if rep.is_busy() {
                            rep.stats.last_batch_tokens
                        } else {
                            0
                        },
                        used_blocks: kv.used_blocks,
                        cached_free_blocks: kv.free_cached_blocks,
                        empty_free_blocks: kv.free_blocks - kv.free_cached_blocks,
                        usage: kv.usage(),
                        prefix_queries: kv.prefix.queries,
                        prefix_hits: kv.prefix.hits,
                        preemptions: rep.stats.preemptions,
                        store_entries: kv.store.entries,
                        store_tokens: kv.store.tokens,
                        store_bytes: kv.store.bytes,
                        store_hits: kv.store.hits,
                        store_evictions: kv.store.evictions,
                        batch_size_limit: rep.batch_limit().unwrap_or(0),
                        state: rep.state,
                        external_queries: off.queries,
                        external_hits: off.hits,
                        tier_usage: off.tiers.map(|t| t.usage()),
                        loaded_bytes: off.tiers.iter().map(|t| t.loaded_bytes).sum(),
                        stored_bytes: off.tiers.iter().map(|t| t.stored_bytes).sum(),
                    })?;
                }
                let population = self.workload.population().unwrap_or_else(|| {
                    self.workload.sessions_started() - self.counts.sessions_ended
                });
                self.metrics.on_population(now, population);
                let next = now + self.sample_interval;
                if self.queue.len() > self.moot && next < HORIZON {
                    self.queue.push(next, Event::Sample);
                }
            }
        }
        Ok(())
    }

    fn admit(&mut self, now: SimTime, rel: Option<Release>) -> Result<(), OutputError> {
        match rel {
            None => Ok(()),
            Some(Release::Rejected(mut nr)) => {
                self.counts.released += 1;
                nr.request.failure = Some(FailureReason::ContextLength);
                self.metrics
                    .on_request_done(&nr.request, Status::Rejected)?;
                // The workload ends a session whose prompt cannot fit (closed loop: the next turn
                // would need this one's answer); open loop, its other turns go on.
                self.turn_done(nr.request.session, 0, now);
                Ok(())
            }
            Some(Release::Failed(nr)) => {
                self.counts.released += 1;
                self.metrics.on_request_done(&nr.request, Status::Failed)?;
                // The recorded user went on after the failure: the next turn follows its gap.
                self.turn_done(nr.request.session, 0, now);
                Ok(())
            }
            Some(Release::Request(nr)) => {
                self.counts.released += 1;
                self.send(now, nr.request, nr.true_output_tokens)
            }
        }
    }

    /// Routes a request (a first attempt or a retry) and queues it at its replica, or refuses it: no
    /// replica takes new requests (`unavailable`), or the chosen one's queue is full (`queue_full`).
    fn send(
        &mut self,
        now: SimTime,
        mut req: Request,
        true_output: u32,
    ) -> Result<(), OutputError> {
        if self.reads_loads() {
            self.catch_up_all(now)?;
        }
        self.refresh_views(now);
        match self.route(&req, now, Pool::First) {
            Route::To(rid) => {
                self.catch_up(rid, now)?;
                debug_assert!(
                    self.views.get(rid as usize).is_some_and(|v| v.takes_new()),
                    "a router routes only to a replica that takes new requests"
                );
                let rep = &mut self.replicas[rid as usize];
                if self.max_waiting.is_some_and(|m| rep.num_waiting() >= m) {
                    rep.stats.refused += 1;
                    req.replica = rid;
                    return self.give_up(
                        now,
                        req,
                        true_output,
                        Status::Rejected,
                        FailureReason::QueueFull,
                    );
                }
                if let Some(t) = self.client_timeout {
                    self.queue
                        .push(req.arrival + t, Event::Timeout(rid, req.id));
                }
                if self.pd.is_some() {
                    // vLLM's proxy sends the prefill instance the request with max_tokens = 1.
                    req.pd = Some(Box::new(crate::request::PdState {
                        stage: crate::request::PdStage::Prefill,
                        max_tokens: req.max_tokens,
                        true_output,
                        prefill_replica: rid,
                        prefill_start: None,
                        prefill_end: None,
                        transfer_start: None,
                        transfer_end: None,
                        transfer_bytes: 0,
                        decode_start: None,
                    }));
                    req.max_tokens = 1;
                }
                rep.enqueue(req, true_output);
                self.request_schedule(rid, now);
                Ok(())
            }
            Route::Reject => self.give_up(
                now,
                req,
                true_output,
                Status::Rejected,
                FailureReason::Unavailable,
            ),
        }
    }

    /// Whether routing reads replica loads (a router does, or `admission.max_kv_usage_degraded` is set),
    /// so that coasting replicas must be caught up first: a scrape serves every router (with
    /// `cluster.signal_delay_s`, later arrivals and hand-offs too).
    fn reads_loads(&self) -> bool {
        self.router.reads_loads()
            || self.degraded_above.is_some()
            || self
                .pd
                .as_ref()
                .is_some_and(|p| p.decode_router.reads_loads())
    }

    /// The router's pick for `req` among `pool`'s replicas (views as of the last refresh). A pool's
    /// router sees its replicas as ids 0..n (the router contract) and its pick is mapped back.
    fn route(&mut self, req: &Request, now: SimTime, pool: Pool) -> Route {
        let Some(pd) = &mut self.pd else {
            return self.router.route(req, now, &self.views);
        };
        let (base, router) = match pool {
            Pool::First => (0, &mut self.router),
            Pool::Decode => (pd.prefill, &mut pd.decode_router),
        };
        let end = match pool {
            Pool::First => pd.prefill as usize,
            Pool::Decode => self.views.len(),
        };
        let local: Vec<ReplicaView> = self.views[base as usize..end]
            .iter()
            .enumerate()
            .map(|(i, v)| ReplicaView {
                id: i as ReplicaId,
                ..*v
            })
            .collect();
        match router.route(req, now, &local) {
            Route::To(i) => Route::To(base + i),
            Route::Reject => Route::Reject,
        }
    }

    /// A prefill instance is done with `r` at `now` (disaggregated): it goes to a decode instance,
    /// which pulls its KV; its prefill instance keeps the blocks until then. Under `first_token =
    /// "prefill"` the prefill's token is the client's first and the decode instance starts after it
    /// (and a request that wanted one token is finished here).
    fn hand_off(&mut self, now: SimTime, r: Request) -> Result<(), OutputError> {
        let pd = self.pd.as_ref().expect("a disaggregated cluster");
        let first_from_prefill = pd.first_token == crate::config::FirstToken::Prefill;
        let mut state = r.pd.clone().expect("a disaggregated request");
        state.stage = crate::request::PdStage::Decode { remote_kv: true };
        let prefill_rid = state.prefill_replica;
        let true_output = state.true_output;
        let mut d = r.reroute();
        d.max_tokens = state.max_tokens;
        d.first_scheduled = r.first_scheduled;
        d.num_cached_tokens = r.num_cached_tokens;
        d.prefilled_tokens = r.prefilled_tokens;
        d.preemptions = r.preemptions;
        d.was_preempted = r.was_preempted;
        if first_from_prefill {
            d.num_output_tokens = 1;
            d.first_token = r.first_token;
            d.last_token = r.first_token;
            if true_output <= 1 || d.max_tokens <= 1 {
                // Nothing to decode: finished with the prefill's token, no pull.
                state.transfer_start = Some(now);
                state.transfer_end = Some(now);
                state.decode_start = Some(now);
                d.pd = Some(state);
                d.finish = Some(now);
                d.finish_reason = r.finish_reason;
                d.replica = prefill_rid;
                self.replicas[prefill_rid as usize].release_parked(d.id);
                self.metrics.on_request_done(&d, Status::Finished)?;
                self.turn_done(d.session, d.num_output_tokens, now);
                return Ok(());
            }
        }
        d.pd = Some(state);
        if self.reads_loads() {
            self.catch_up_all(now)?;
        }
        self.refresh_views(now);
        match self.route(&d, now, Pool::Decode) {
            Route::To(rid) => {
                self.catch_up(rid, now)?;
                self.replicas[rid as usize].enqueue(d, true_output);
                self.request_schedule(rid, now);
                Ok(())
            }
            Route::Reject => {
                self.replicas[prefill_rid as usize].release_parked(d.id);
                self.request_schedule(prefill_rid, now);
                self.give_up(
                    now,
                    d,
                    true_output,
                    Status::Rejected,
                    FailureReason::Unavailable,
                )
            }
        }
    }

    /// Records a refused or abandoned attempt; its client sends it again after `retry_after_s` while it
    /// has retries left, else goes on to the session's next turn as after a failed one.
    fn give_up(
        &mut self,
        now: SimTime,
        mut req: Request,
        true_output: u32,
        status: Status,
        reason: FailureReason,
    ) -> Result<(), OutputError> {
        req.failure = Some(reason);
        // An abandoned request leaves the system when its abort takes effect.
        req.finish = (status == Status::TimedOut).then_some(now);
        self.metrics.on_request_done(&req, status)?;
        if req.attempt < self.cfg.workload.max_retries {
            let at = now + self.retry_after;
            self.retrying.insert(req.id, (req.retry(at), true_output));
            self.queue.push(at, Event::Retry(req.id));
        } else {
            self.turn_done(req.session, 0, now);
        }
        Ok(())
    }

    /// What follows a step of replica `rid` that ended at `now` and finished `done`: their rows, their
    /// sessions' next turns, and the replica's next schedule.
    fn after_step(
        &mut self,
        rid: ReplicaId,
        now: SimTime,
        done: Vec<Request>,
    ) -> Result<(), OutputError> {
        let pending = std::mem::take(&mut self.replicas[rid as usize].pending_aborts);
        for mut r in done {
            if pending.contains(&r.id) {
                // Its client had left before this step ended. It stopped at its true length (or was
                // cut at the same cap a retry would be), so a retry generates as many tokens.
                let out = r.num_output_tokens;
                self.give_up(now, r, out, Status::TimedOut, FailureReason::ClientTimeout)?;
                continue;
            }
            if r.pd
                .as_ref()
                .is_some_and(|p| p.stage == crate::request::PdStage::Prefill)
            {
                self.hand_off(now, r)?;
                continue;
            }
            self.metrics.on_request_done(&r, Status::Finished)?;
            self.workload
                .carry_block_hashes(r.session, std::mem::take(&mut r.block_hashes));
            self.turn_done(r.session, r.num_output_tokens, now);
        }
        for id in pending {
            if let Some((r, out)) = self.replicas[rid as usize].abort(id) {
                self.give_up(now, r, out, Status::TimedOut, FailureReason::ClientTimeout)?;
            }
        }
        self.settle_leaving(rid, now)?;
        self.request_schedule(rid, now);
        Ok(())
    }

    /// A leaving replica between steps: a removed one hands its unstarted requests back to the router
    /// (their arrival kept, so their clients' deadlines stand); one that holds nothing more is down.
    fn settle_leaving(&mut self, rid: ReplicaId, now: SimTime) -> Result<(), OutputError> {
        let rep = &mut self.replicas[rid as usize];
        if rep.state != crate::cluster::ReplicaState::Draining || rep.is_busy() {
            return Ok(());
        }
        if rep.restart_pending {
            return self.restart(rid, now);
        }
        if std::mem::take(&mut rep.reroute_pending) {
            for id in rep.unstarted() {
                let (r, out) = self.replicas[rid as usize]
                    .abort(id)
                    .expect("held between steps");
                self.send(now, r.reroute(), out)?;
            }
        }
        let rep = &mut self.replicas[rid as usize];
        if !rep.has_work() {
            rep.set_state(crate::cluster::ReplicaState::Down, now);
        }
        Ok(())
    }

    /// Restarts replica `rid` between steps: every request it holds is aborted (its client retries as
    /// after a refusal), a fresh replica from the factory takes its place with an empty GPU cache, the
    /// persistent offload tiers of the old one and its history (`Replica::succeed`), down until
    /// `engine.startup_s` from now.
    /// A pending `swap_model` makes it a swap: the new replica serves the other model, no cache is kept
    /// (the tiers hold the old model's KV), and it is down for the swap's `swap_s`.
    fn restart(&mut self, rid: ReplicaId, now: SimTime) -> Result<(), OutputError> {
        let make = self
            .factory
            .expect("a world that runs restart events is given its replica factory");
        let rep = &self.replicas[rid as usize];
        let (model, down_s) = rep
            .swap_pending
            .unwrap_or((rep.model, self.cfg.engine.startup_s));
        let swap = rep.swap_pending.is_some();
        for id in self.replicas[rid as usize].held() {
            let (r, out) = self.replicas[rid as usize]
                .abort(id)
                .expect("held between steps");
            let reason = if swap {
                FailureReason::ModelSwap
            } else {
                FailureReason::ReplicaRestart
            };
            self.give_up(now, r, out, Status::Aborted, reason)?;
        }
        let old = std::mem::replace(&mut self.replicas[rid as usize], make(rid, model));
        let rep = &mut self.replicas[rid as usize];
        // The tiers that persist (local disk; CPU memory only in a cache server of its own) keep their
        // content; the GPU cache is lost.
        if !swap {
            rep.restore_cache(&crate::kv::KvStore::restart_keep(old.kv()));
        }
        rep.succeed(old);
        rep.set_state(crate::cluster::ReplicaState::Down, now);
        self.wake_at[rid as usize] = None;
        let ready = now + SimDuration::from_secs_f64(down_s);
        rep.ready_at = Some(ready);
        self.queue.push(ready, Event::ReplicaReady(rid));
        Ok(())
    }

    /// A turn of `session` left the system at `now` with `output_tokens` generated: its next turn is
    /// queued, or, when the session has ended, every replica's KV store is told (a turn may have run on
    /// any).
    fn turn_done(&mut self, session: SessionId, output_tokens: u32, now: SimTime) {
        match self.workload.on_turn_complete(session, output_tokens, now) {
            NextTurn::At(t) => self.queue.push(t, Event::TurnRelease(session)),
            NextTurn::OwnSchedule => {}
            NextTurn::Ended => {
                self.counts.sessions_ended += 1;
                for rep in &mut self.replicas {
                    rep.on_session_end(session);
                }
            }
        }
    }

    /// Whether the client deadline `Event::Timeout(rid, id)` at `now` aborts anything: replica `rid`
    /// still holds request `id`, with no first token, and this is its attempt's deadline (another
    /// attempt's, or a handed-back request's old replica's, finds nothing).
    fn timeout_due(&self, rid: ReplicaId, id: RequestId, now: SimTime) -> bool {
        self.client_timeout.is_some_and(|deadline| {
            self.replicas[rid as usize]
                .request(id)
                .is_some_and(|r| r.first_token.is_none() && r.arrival + deadline <= now)
        })
    }

    /// Brings the router's view up to `now`: a fresh scrape of every replica's load when the last is
    /// `cluster.signal_delay_s` old or more (at every arrival when it is 0), else only their states,
    /// which a front end always knows.
    fn refresh_views(&mut self, now: SimTime) {
        if self
            .views_at
            .is_none_or(|at| now.since(at) >= self.signal_delay)
        {
            self.views_at = Some(now);
            self.views.clear();
            self.views.extend(self.replicas.iter().map(Replica::view));
            if let Some(u) = self.degraded_above {
                for v in &mut self.views {
                    v.degraded = v.kv_usage > u;
                }
            }
        } else {
            for (v, r) in self.views.iter_mut().zip(&self.replicas) {
                v.state = r.state;
            }
        }
    }

    /// Starts replica `rid` coasting from `since`, where it stands idle between steps with a leap
    /// ahead: the leap's extent is priced now and only its end queued (as the `StepDone` its last step
    /// would have). False, changing nothing, when no leap step lies ahead before the stop time.
    ///
    /// Coasting lets a replica's leap pass events that cannot reach it: other replicas' steps, and the
    /// arrivals routed elsewhere. Anything that reaches it first (an arrival routed to it, a router
    /// that reads loads, a client timeout, a cluster event, a time-series sample) catches it up to that
    /// instant ([`World::catch_up`]), so every event sees the replica as one-by-one stepping would have
    /// left it.
    /// The one call that reaches every replica, `KvStore::on_session_end`, commutes with decode steps:
    /// stores act on it only outside of decode allocation (the conversation store drops an entry; the
    /// paged pool does nothing), and a coasting replica admits nothing.
    fn coast(&mut self, rid: ReplicaId, since: SimTime) -> bool {
        let stop = self.stop_at.map(|s| s + SimDuration(1));
        let rep = &mut self.replicas[rid as usize];
        let cap = rep.coast_cap;
        let Some((steps, end)) = rep.leap_extent(since, stop, cap, self.costs[rep.model].as_ref())
        else {
            return false;
        };
        rep.coast = Some(crate::replica::Coast { since, end, steps });
        self.queue.push(end, Event::StepDone(rid));
        self.counts.coasts += 1;
        true
    }

    /// The end of replica `rid`'s coast, at `now`: its steps taken as one leap, and what follows its last
    /// step (finished requests, the next `Schedule`) done as after any step.
    fn end_coast(&mut self, rid: ReplicaId, now: SimTime) -> Result<(), OutputError> {
        let rep = &mut self.replicas[rid as usize];
        let c = rep
            .coast
            .take()
            .expect("the run loop passes only live coast ends");
        debug_assert_eq!(c.end, now);
        let metrics = &mut self.metrics;
        let Leapt { steps, end, done } = rep
            .leap(
                c.since,
                Some(now + SimDuration(1)),
                self.costs[rep.model].as_ref(),
                |gaps| metrics.on_token_gaps(gaps),
            )
            .expect("a coast's steps are a leap's");
        debug_assert_eq!((steps, end), (c.steps, c.end), "a coast ends as priced");
        let cap = &mut self.replicas[rid as usize].coast_cap;
        *cap = (2 * *cap).min(COAST_MAX_STEPS);
        // The Schedule that began the coast ran, and this event is its last step's end: the steps
        // between stand for a StepDone and a Schedule each.
        self.queue.count_skipped(2 * (steps - 1));
        self.counts.leapt_steps += steps;
        self.after_step(rid, now, done)
    }

    /// Brings coasting replica `rid` (if it is) up to the event being dispatched at `now`: the steps that
    /// ended before it, in the same-instant order, are taken as one leap, and the step in flight at `now`
    /// is started at its own start (or, when the replica stands at a step end at `now` whose `Schedule`
    /// comes later in the instant, that `Schedule` is queued).
    fn catch_up(&mut self, rid: ReplicaId, now: SimTime) -> Result<(), OutputError> {
        let rep = &mut self.replicas[rid as usize];
        let Some(c) = rep.coast.take() else {
            return Ok(());
        };
        self.counts.catch_ups += 1;
        self.moot += 1;
        // Whether a StepDone of this replica at `now` (class 1, in replica order), and the Schedule it
        // queues (class 3), have run before the event being dispatched.
        let (class, tie) = self.at;
        let end_ran = class > 1 || (class == 1 && tie > rid as u64);
        let schedule_ran = class > 3;
        let horizon = if end_ran { now + SimDuration(1) } else { now };
        let metrics = &mut self.metrics;
        let cost = self.costs[rep.model].as_ref();
        let (steps, at) = match rep.leap(c.since, Some(horizon), cost, |g| metrics.on_token_gaps(g))
        {
            Some(l) => {
                // Short of the coast's end, which is the first step that could finish a request.
                assert!(
                    l.done.is_empty() && l.steps < c.steps,
                    "a catch-up ends mid-coast"
                );
                (l.steps, l.end)
            }
            None => (0, c.since),
        };
        let cap = &mut self.replicas[rid as usize].coast_cap;
        *cap = (2 * steps).clamp(COAST_MIN_STEPS, COAST_MAX_STEPS);
        self.counts.leapt_steps += steps;
        self.counts.end = self.counts.end.max(at);
        if at == now && !schedule_ran {
            // Its last step ended at this instant, before this event; its Schedule is still to come
            // (queued after the Schedules other replicas' step ends queued at this instant, which one
            // by one it would precede: harmless, as a scheduling pass reads and changes only its own
            // replica, and whichever pass leaps or coasts does so exactly).
            assert!(steps > 0, "the coast began before this instant");
            self.queue.count_skipped(2 * steps - 1);
            return self.after_step(rid, now, Vec::new());
        }
        self.queue.count_skipped(2 * steps);
        let rep = &mut self.replicas[rid as usize];
        let start = rep.start_step(at, cost);
        let pulls = rep.take_transfers();
        debug_assert!(
            pulls.is_empty(),
            "a coast's next step admits nothing, so it starts no KV pull"
        );
        for (id, prefill, lands) in pulls {
            self.queue.push(lands, Event::KvTransferDone(prefill, id));
        }
        match start {
            StepStart::Started(d) => self.queue.push(at + d, Event::StepDone(rid)),
            _ => unreachable!("a coast's next step is a leap step"),
        }
        Ok(())
    }

    /// [`World::catch_up`] for every coasting replica.
    fn catch_up_all(&mut self, now: SimTime) -> Result<(), OutputError> {
        for rid in 0..self.replicas.len() {
            if self.replicas[rid].coast.is_some() {
                self.catch_up(rid as ReplicaId, now)?;
            }
        }
        Ok(())
    }

    /// Queues a `Schedule` for an idle replica (once): it runs after every arrival at this instant.
    fn request_schedule(&mut self, rid: ReplicaId, now: SimTime) {
        let rep = &mut self.replicas[rid as usize];
        if !rep.schedule_pending && !rep.is_busy() && rep.has_work() {
            rep.schedule_pending = true;
            self.queue.push(now, Event::Schedule(rid));
        }
    }

    /// Invariant 5: a replica with work has a step in flight, a coast, a scheduling pass pending, a wake
    /// time, or a scheduler that said it waits for an arrival.
    #[cfg(debug_assertions)]
    fn check_work_conservation(&self) {
        for r in &self.replicas {
            assert!(
                !r.has_work()
                    || r.is_busy()
                    || r.coast.is_some()
                    || r.schedule_pending
                    || self.wake_at[r.id as usize].is_some()
                    || r.waits_for_arrival,
                "invariant 5: replica {} holds work with no step pending",
                r.id
            );
        }
    }

    pub fn sessions_started(&self) -> u64 {
        self.workload.sessions_started()
    }

    pub fn workload_content(&self) -> &str {
        self.workload.content_note()
    }

    pub fn cost_model_name(&self) -> &'static str {
        self.costs[0].name()
    }

    pub fn config(&self) -> &Config {
        self.cfg
    }
}

/// The fewest and the most steps a coast prices ahead (`Replica::coast_cap` moves between them). A coast
/// is priced when it begins and anything that reaches the replica cuts it short, wasting the rest: the
/// cap doubles after a coast that ran to its end and falls to twice what a cut one took, so that a replica
/// cut every few steps (by samples, or arrivals under a router that reads loads) prices only a few steps
/// ahead, while one left alone prices long runs.
pub const COAST_MIN_STEPS: u64 = 32;
pub const COAST_MAX_STEPS: u64 = 1 << 16;

/// Whether queued event `e` cannot reach replica `rid`: another replica's step end or scheduling pass
/// (a coast may pass it; see [`World::coast`]).
fn passes_by(e: &Event, rid: ReplicaId) -> bool {
    matches!(e, Event::StepDone(r) | Event::Schedule(r) if *r != rid)
}

/// A progress bar on stderr for runs longer than about a second, only when stderr is a terminal.
struct Progress {
    enabled: bool,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    horizon_s: Option<f64>,
}

impl Progress {
    fn new(enabled: bool, horizon_s: Option<f64>) -> Progress {
        Progress {
            enabled: enabled && std::io::stderr().is_terminal(),
            started: Instant::now(),
            bar: None,
            horizon_s,
        }
    }

    fn tick(&mut self, now: SimTime, events: u64) {
        if !self.enabled || !events.is_multiple_of(4096) {
            return;
        }
        if self.bar.is_none() && self.started.elapsed().as_secs_f64() > 1.0 {
            let len = self.horizon_s.map_or(0, |h| h.ceil() as u64);
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(len),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} virtual {pos}/{len} s  [{elapsed_precise}] {msg}",
                )
                .expect("static template"),
            );
            self.bar = Some(bar);
        }
        if let Some(b) = &self.bar {
            b.set_position(now.as_secs_f64() as u64);
            b.set_message(format!("{events} events"));
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{CacheHit, KvCacheManager, KvStore};
    use crate::request::RequestId;
    use crate::scheduler::{Next, RequestTable, Scheduler, StepPlan};
    use crate::system::{System, WithReplicas};

    /// A toy request-level batcher: a batch starts when two requests wait or the oldest has waited
    /// `timeout`, and runs to completion (whole prompts in one step, then one token per step) while
    /// arrivals wait. It exercises `Next::WakeAt`, an arrival cutting a wait short, and the world's
    /// bookkeeping of wake times (invariant 5 is checked after every event in debug builds).
    struct BatchWithTimeout {
        kv: KvCacheManager,
        timeout: SimDuration,
        waiting: Vec<RequestId>,
        running: Vec<RequestId>,
    }

    impl Scheduler for BatchWithTimeout {
        type Kv = KvCacheManager;
        fn add_request(&mut self, req: &Request) {
            self.waiting.push(req.id);
        }
        fn schedule(&mut self, now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
            plan.clear();
            if self.running.is_empty() {
                let Some(&first) = self.waiting.first() else {
                    return Next::Idle;
                };
                let due = reqs[&first].arrival + self.timeout;
                if self.waiting.len() < 2 && now < due {
                    return Next::WakeAt(due);
                }
                self.running = std::mem::take(&mut self.waiting);
                for id in &self.running {
                    reqs.get_mut(id).unwrap().in_prefill = true;
                }
            }
            for &id in &self.running {
                let r = reqs.get_mut(&id).unwrap();
                let n = r.num_tokens() - r.num_computed_tokens;
                assert!(self.kv.allocate_slots(r, n, CacheHit::default()));
                r.num_computed_tokens += n;
                plan.scheduled.push((id, n));
            }
            Next::Run
        }
        fn kv(&self) -> &KvCacheManager {
            &self.kv
        }
        fn kv_mut(&mut self) -> &mut KvCacheManager {
            &mut self.kv
        }
        fn finish_requests(&mut self, finished: &[RequestId], _now: SimTime) {
            self.running.retain(|id| !finished.contains(id));
        }
        fn abort(&mut self, req: &Request) -> bool {
            let n = self.waiting.len() + self.running.len();
            self.waiting.retain(|&id| id != req.id);
            self.running.retain(|&id| id != req.id);
            self.waiting.len() + self.running.len() < n
        }
        fn num_waiting(&self) -> usize {
            self.waiting.len()
        }
        fn num_running(&self) -> usize {
            self.running.len()
        }
        fn all_requests(&self) -> Vec<RequestId> {
            self.waiting.iter().chain(&self.running).copied().collect()
        }
    }

    /// Runs `sessions` single-turn sessions, `gap_s` apart, of 31 prompt and 2 output tokens, on the toy
    /// batcher with a 50 ms timeout and 10 ms steps; returns each request's (arrival, TTFT, E2E) by id.
    fn run_toy(sessions: u64, gap_s: f64) -> Vec<(f64, f64, f64)> {
        let o: Vec<String> = [
            format!("workload.max_sessions={sessions}"),
            "workload.arrival=\"gamma\"".into(),
            "workload.burstiness=1e6".into(),
            format!("workload.session_rate={}", 1.0 / gap_s),
            "workload.turns={dist=\"constant\", value=1}".into(),
            "workload.user_tokens={dist=\"constant\", value=31}".into(),
            "workload.response_tokens={dist=\"constant\", value=2}".into(),
            "workload.doc_probability=0".into(),
            "workload.system_prompts=[]".into(),
            "cost.kind=\"linear\"".into(),
            "cost.linear.step_s=0.01".into(),
            "cost.linear.prefill_token_s=0".into(),
            "cost.linear.decode_seq_s=0".into(),
            "engine.num_gpu_blocks=100".into(),
            "engine.max_model_len=64".into(),
        ]
        .to_vec();
        let cfg = Config::load(None, &o).unwrap();
        let sys = System::resolve(&cfg).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Collector::new(
            crate::metrics::Rows::Files {
                requests: tmp.path().join("r.csv"),
                timeseries: tmp.path().join("t.csv"),
                format: crate::metrics::RowFormat::Csv,
            },
            cfg.slo.clone(),
        )
        .unwrap();
        let toy = BatchWithTimeout {
            kv: KvCacheManager::new(100, 16, true),
            timeout: SimDuration::from_secs_f64(0.05),
            waiting: Vec::new(),
            running: Vec::new(),
        };
        let replica = Replica::new(0, toy, 64);
        let mut w = World::new(
            &cfg,
            vec![replica],
            sys.router(&cfg),
            sys.workload(&cfg).unwrap(),
            sys.cost_model(&cfg).unwrap(),
            metrics,
            false,
            true,
        );
        w.run().unwrap();
        drop(w);
        let rows = std::fs::read_to_string(tmp.path().join("r.csv")).unwrap();
        let mut rdr = csv::Reader::from_reader(rows.as_bytes());
        let h = rdr.headers().unwrap().clone();
        let col = |name: &str| h.iter().position(|x| x == name).unwrap();
        let (a, t, e) = (col("arrival_s"), col("ttft_s"), col("e2e_s"));
        let mut out: Vec<(f64, f64, f64)> = rdr
            .records()
            .map(|r| {
                let r = r.unwrap();
                let f = |i: usize| r[i].parse::<f64>().unwrap();
                (f(a), f(t), f(e))
            })
            .collect();
        out.sort_by(|x, y| x.0.total_cmp(&y.0));
        out
    }

    /// Rejects every request of an odd session; the rest go to replica 0.
    struct RejectOddSessions;

    impl Router for RejectOddSessions {
        fn route(&mut self, req: &Request, _now: SimTime, _replicas: &[ReplicaView]) -> Route {
            if req.session % 2 == 1 {
                Route::Reject
            } else {
                Route::To(0)
            }
        }
    }

    #[test]
    fn a_rejected_turn_is_recorded_and_its_session_goes_on() {
        // 4 sessions of 3 turns: sessions 1 and 3 have every turn rejected, and each rejection is
        // followed by the session's next turn, so 2 x 3 = 6 rows are rejected (turns 1, 2, 3 of each) and
        // 6 finish.
        let o: Vec<String> = [
            "workload.max_sessions=4",
            "workload.turns={dist=\"constant\", value=3}",
            "workload.think_time_s={dist=\"constant\", value=1}",
            "cost.kind=\"linear\"",
            "cluster.replicas=2",
        ]
        .map(String::from)
        .to_vec();
        let cfg = Config::load(None, &o).unwrap();
        let sys = System::resolve(&cfg).unwrap();

        /// Runs the configured replicas behind `RejectOddSessions`, keeping the rows in memory.
        struct Go<'c> {
            cfg: &'c Config,
            sys: &'c System,
        }
        impl WithReplicas for Go<'_> {
            type Out = Vec<crate::metrics::RequestRow>;
            fn with<S: Scheduler + 'static>(
                self,
                make: &dyn Fn(ReplicaId, usize) -> Replica<S>,
            ) -> Self::Out {
                let metrics =
                    Collector::new(crate::metrics::Rows::Keep, self.cfg.slo.clone()).unwrap();
                let mut w = World::new(
                    self.cfg,
                    (0..2).map(|id| make(id, 0)).collect(),
                    Box::new(RejectOddSessions),
                    self.sys.workload(self.cfg).unwrap(),
                    self.sys.cost_model(self.cfg).unwrap(),
                    metrics,
                    false,
                    true,
                );
                w.run().unwrap();
                w.metrics.take_rows().0
            }
        }
        let mut rows: Vec<(u64, u32, &str, Option<ReplicaId>)> = sys
            .build(
                &cfg,
                Go {
                    cfg: &cfg,
                    sys: &sys,
                },
            )
            .iter()
            .map(|r| (r.session, r.turn, r.status.as_str(), r.replica))
            .collect();
        rows.sort();
        let rejected: Vec<(u64, u32)> = rows
            .iter()
            .filter(|r| r.2 == "rejected")
            .map(|r| (r.0, r.1))
            .collect();
        assert_eq!(rejected, [(1, 1), (1, 2), (1, 3), (3, 1), (3, 2), (3, 3)]);
        let finished = rows.iter().filter(|r| r.2 == "finished");
        assert_eq!(finished.clone().count(), 6);
        assert!(finished.into_iter().all(|r| r.0 % 2 == 0 && r.3 == Some(0)));
    }

    /// The paged store, recording the session ends it is told of.
    struct CountingEnds {
        inner: KvCacheManager,
        ended: Vec<SessionId>,
    }

    impl KvStore for CountingEnds {
        fn get_computed_blocks(&mut self, req: &mut Request) -> CacheHit {
            self.inner.get_computed_blocks(req)
        }
        fn record_admission(&mut self, req: &Request, hit_tokens: u32) {
            self.inner.record_admission(req, hit_tokens)
        }
        fn allocate_slots(&mut self, req: &mut Request, num_new: u32, hit: CacheHit) -> bool {
            self.inner.allocate_slots(req, num_new, hit)
        }
        fn free(&mut self, req: &mut Request) {
            self.inner.free(req)
        }
        fn on_enqueue(&mut self, req: &mut Request) {
            self.inner.on_enqueue(req)
        }
        fn on_token(&mut self, req: &mut Request) {
            self.inner.on_token(req)
        }
        fn on_session_end(&mut self, session: SessionId) {
            self.ended.push(session);
        }
        fn used_blocks(&self) -> u32 {
            self.inner.used_blocks()
        }
        fn stats(&self) -> crate::kv::KvStats {
            self.inner.stats()
        }
        fn check_invariants(&self, reqs: &RequestTable) -> Result<(), String> {
            self.inner.check_invariants(reqs)
        }
        fn decode_rule(&self) -> Option<crate::kv::DecodeRule> {
            self.inner.decode_rule()
        }
        fn leap_fits(&self, new_blocks: u32) -> bool {
            self.inner.leap_fits(new_blocks)
        }
    }

    #[test]
    fn every_store_is_told_once_of_each_session_end() {
        // 5 sessions of 3 turns on 2 replicas: each session ends after its third turn, and both stores
        // hear of each end exactly once (a turn may have run on either); a call after every turn would
        // give each store 15.
        let o: Vec<String> = [
            "workload.max_sessions=5",
            "workload.turns={dist=\"constant\", value=3}",
            "workload.think_time_s={dist=\"constant\", value=1}",
            "cost.kind=\"linear\"",
            "cluster.replicas=2",
            "cluster.router=\"round_robin\"",
        ]
        .map(String::from)
        .to_vec();
        let cfg = Config::load(None, &o).unwrap();
        let sys = System::resolve(&cfg).unwrap();
        let s = &sys.sizing;
        let limits = crate::scheduler::vllm_v1::Limits {
            max_num_batched_tokens: s.max_num_batched_tokens,
            max_num_seqs: s.max_num_seqs,
            max_model_len: s.max_model_len,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            policy: cfg.engine.policy,
        };
        let replicas = (0..2)
            .map(|id| {
                let kv = CountingEnds {
                    inner: KvCacheManager::new(s.num_gpu_blocks, 16, true),
                    ended: Vec::new(),
                };
                let sched = crate::scheduler::vllm_v1::VllmScheduler::new(limits.clone(), kv);
                Replica::new(id, sched, s.max_model_len)
            })
            .collect();
        let metrics = Collector::new(crate::metrics::Rows::Keep, cfg.slo.clone()).unwrap();
        let mut w = World::new(
            &cfg,
            replicas,
            sys.router(&cfg),
            sys.workload(&cfg).unwrap(),
            sys.cost_model(&cfg).unwrap(),
            metrics,
            false,
            true,
        );
        w.run().unwrap();
        let rows = w.metrics.take_rows().0;
        assert_eq!(rows.len(), 15);
        for r in &w.replicas {
            let mut ended = r.kv().ended.clone();
            ended.sort();
            assert_eq!(ended, [0, 1, 2, 3, 4], "replica {}", r.id);
        }
    }

    #[test]
    fn a_scheduler_that_waits_is_woken_at_its_time() {
        // One request alone: the batcher waits its 50 ms timeout (nothing else arrives), then prefills
        // (10 ms, first token) and decodes (10 ms): TTFT 0.050 + 0.010 = 0.060 s, E2E 0.070 s.
        let r = run_toy(1, 1.0);
        assert_eq!(r.len(), 1);
        assert!((r[0].1 - 0.060).abs() < 1e-9, "{r:?}");
        assert!((r[0].2 - 0.070).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn an_arrival_starts_a_waiting_batch_before_its_timeout() {
        // Gaps of about 20 ms (gamma of shape 1e6: within a fraction of a percent): the second request
        // fills the batch at ~20 ms, before the first's timeout at 50 ms, and both run at once; the first
        // waits ~20 ms, the second none. The third arrives at ~40 ms while the batch runs (until ~40 ms),
        // so its own wait starts then; the fourth fills it at ~60 ms.
        let r = run_toy(4, 0.02);
        assert_eq!(r.len(), 4);
        let wait = |i: usize| r[i].1 - 0.010;
        assert!((wait(0) - (r[1].0 - r[0].0)).abs() < 1e-9, "{r:?}");
        assert!(wait(1).abs() < 1e-9, "{r:?}");
        assert!(
            wait(0) < 0.05 && wait(2) < 0.05,
            "no timeout was needed: {r:?}"
        );
    }
}
