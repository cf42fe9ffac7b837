//! The world owns everything in a run and dispatches each event with one `match`. It knows the loop,
//! not how the parts are built: [`crate::system`] wires them from the config.

use crate::config::Config;
use crate::cost::CostModel;
use crate::engine::EventQueue;
use crate::error::{ConfigError, Error, OutputError};
use crate::event::{Event, ReplicaId};
use crate::metrics::{Collector, Sample};
use crate::replica::{Leapt, Replica};
use crate::request::{Request, Status};
use crate::router::{self, Router};
pub use crate::system::System;
use crate::time::{SimDuration, SimTime};
use crate::workload::conversation::Release;
use crate::workload::Workload;
use std::io::IsTerminal;
use std::time::Instant;

pub use crate::time::HORIZON;

const SECONDS_PER_YEAR: f64 = 365.25 * 86_400.0;

/// Counts the run loop keeps beyond the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCounts {
    /// Steps advanced by leaps rather than one by one (not an output: leaping must not change outputs).
    pub leapt_steps: u64,
    pub released: u64,
    pub events: u64,
    /// The time of the last event other than a time-series sample: the end of the last activity, so that
    /// nothing computed from it depends on `output.timeseries_interval_s`.
    pub end: SimTime,
    pub stopped_early: bool,
}

pub struct World<'a> {
    cfg: &'a Config,
    queue: EventQueue<Event>,
    pub replicas: Vec<Replica>,
    router: Box<dyn Router>,
    workload: Box<dyn Workload>,
    cost: Box<dyn CostModel>,
    pub metrics: Collector,
    sample_interval: SimDuration,
    /// True when an event other than a sample ran since the last sample.
    active_since_sample: bool,
    /// True while sampling is suspended over an idle stretch (see `Event::Sample`).
    sampling_suspended: bool,
    stop_at: Option<SimTime>,
    pub counts: RunCounts,
    progress: Progress,
    /// Advance runs of pure-decode steps at once (exact; `--no-leap` steps one by one).
    leap: bool,
}

impl<'a> World<'a> {
    pub fn new(
        cfg: &'a Config,
        sys: &System,
        workload: Box<dyn Workload>,
        cost: Box<dyn CostModel>,
        metrics: Collector,
        show_progress: bool,
        leap: bool,
    ) -> World<'a> {
        let replicas = (0..cfg.cluster.replicas)
            .map(|id| sys.replica(cfg, id))
            .collect();
        World {
            cfg,
            queue: EventQueue::new(),
            replicas,
            router: router::build(cfg.cluster.router),
            workload,
            cost,
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
        }
    }

    /// Runs to the end: every released request finished, or `max_sim_time_s` reached. Virtual time past
    /// [`HORIZON`] is an input error (a step, think time or trace gap of centuries), reported before the
    /// clock could saturate.
    pub fn run(&mut self) -> Result<(), Error> {
        if let Some((id, t)) = self.workload.next_session_start() {
            self.queue.push(t, Event::SessionStart(id));
        }
        self.queue.push(SimTime::ZERO, Event::Sample);
        while let Some(t) = self.queue.peek_time() {
            if let Some(stop) = self.stop_at.filter(|&s| t > s) {
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
            for r in self.replicas[i].drain() {
                self.metrics.on_request_done(&r, Status::Unfinished)?;
            }
        }
        let m = &self.metrics;
        assert_eq!(
            self.counts.released,
            m.finished + m.rejected + m.unfinished + m.failed,
            "invariant 1: request conservation"
        );
        Ok(self.metrics.flush()?)
    }

    fn dispatch(&mut self, now: SimTime, ev: Event) -> Result<(), OutputError> {
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
                let rep = &mut self.replicas[rid as usize];
                rep.schedule_pending = false;
                if !rep.is_busy() && rep.has_work() {
                    let metrics = &mut self.metrics;
                    let leapt = if self.leap {
                        rep.leap(now, horizon, self.cost.as_ref(), |gaps| {
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
                        if done.is_empty() {
                            rep.schedule_pending = true;
                            self.queue.push(end, Event::Schedule(rid));
                        } else {
                            self.after_step(rid, end, done)?;
                        }
                    } else if let Some(d) = rep.start_step(now, self.cost.as_ref()) {
                        self.queue.push(now + d, Event::StepDone(rid));
                    }
                }
            }
            Event::Sample => {
                // Every value a row holds changes only at an event. When none ran since the last sample
                // (an idle stretch, or one long step in flight) the rows would repeat the last ones but
                // for their time: none are written, and sampling resumes at the first interval boundary
                // at or after the next event, so the time series costs in proportion to activity, not
                // to virtual time.
                if !self.active_since_sample {
                    self.sampling_suspended = true;
                    return Ok(());
                }
                self.active_since_sample = false;
                for rep in &self.replicas {
                    let pool = rep.kv();
                    let st = rep.kv().stats();
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
                        used_blocks: pool.num_used(),
                        cached_free_blocks: pool.num_free_cached(),
                        empty_free_blocks: pool.num_free() - pool.num_free_cached(),
                        usage: pool.usage(),
                        prefix_queries: st.queries,
                        prefix_hits: st.hits,
                        preemptions: rep.stats.preemptions,
                    })?;
                }
                let next = now + self.sample_interval;
                if !self.queue.is_empty() && next < HORIZON {
                    self.queue.push(next, Event::Sample);
                }
            }
        }
        Ok(())
    }

    fn admit(&mut self, now: SimTime, rel: Option<Release>) -> Result<(), OutputError> {
        match rel {
            None => Ok(()),
            Some(Release::Rejected(nr)) => {
                self.counts.released += 1;
                self.metrics.on_request_done(&nr.request, Status::Rejected)
            }
            Some(Release::Failed(nr)) => {
                self.counts.released += 1;
                self.metrics.on_request_done(&nr.request, Status::Failed)?;
                // The recorded user went on after the failure: the next turn follows its gap.
                if let Some(t) = self.workload.on_turn_complete(nr.request.session, 0, now) {
                    self.queue.push(t, Event::TurnRelease(nr.request.session));
                }
                Ok(())
            }
            Some(Release::Request(nr)) => {
                self.counts.released += 1;
                let loads: Vec<usize> = self.replicas.iter().map(Replica::load).collect();
                let rid = self.router.route(nr.request.session, &loads);
                self.replicas[rid as usize].enqueue(nr.request, nr.true_output_tokens);
                self.request_schedule(rid, now);
                Ok(())
            }
        }
    }

    /// What follows a step of replica `rid` that ended at `now` and finished `done`: their rows, their
    /// sessions' next turns, and the replica's next schedule.
    fn after_step(
        &mut self,
        rid: ReplicaId,
        now: SimTime,
        done: Vec<Request>,
    ) -> Result<(), OutputError> {
        for mut r in done {
            self.metrics.on_request_done(&r, Status::Finished)?;
            self.workload
                .carry_block_hashes(r.session, std::mem::take(&mut r.block_hashes));
            if let Some(t) = self
                .workload
                .on_turn_complete(r.session, r.num_output_tokens, now)
            {
                self.queue.push(t, Event::TurnRelease(r.session));
            }
        }
        self.request_schedule(rid, now);
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

    /// Invariant 5: a replica with work has a step in flight or a schedule pending.
    #[cfg(debug_assertions)]
    fn check_work_conservation(&self) {
        for r in &self.replicas {
            assert!(
                !r.has_work() || r.is_busy() || r.schedule_pending,
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
        self.cost.name()
    }

    pub fn config(&self) -> &Config {
        self.cfg
    }
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
        if !self.enabled || events % 4096 != 0 {
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
