//! Metric sinks: the per-request rows (streamed to `requests.csv` as requests leave, kept in memory, or
//! only folded into the summary), the time series, and the summary. Definitions follow `vllm bench
//! serve` (engine-semantics B1-B5) and vLLM's Prometheus names (P2).
//!
//! What lives here: the [`Collector`] and its row sinks ([`Rows`]), the per-request writer thread (CSV,
//! or Parquet in `parquet.rs`), the row formatter, exact statistics (`stats.rs`), the inter-token
//! histogram (`histogram.rs`), and the run directory with its safety rules (`output.rs`). To add a
//! column: append it to `REQUEST_COLUMNS` or `TIMESERIES_COLUMNS` (existing columns keep their order)
//! and fill it in `RequestRow` or [`Sample`]; a request column also needs its type in `parquet.rs`.

pub mod histogram;
pub mod output;
pub mod parquet;
pub mod quantiles;
mod row;
mod row_thread;
pub mod stats;
pub mod warmup;

use crate::config::SloConfig;
use crate::error::OutputError;
use crate::request::{FailureReason, Request, Status};
use crate::time::SimTime;
use histogram::LogHistogram;
use quantiles::Values;
use row::RowBuf;
pub use row_thread::RequestRow;
use row_thread::RowThread;
pub use row_thread::RowWriter;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `output.exact_percentiles_up_to`'s default (also for collectors built without a config).
pub const DEFAULT_EXACT: u64 = 1_000_000;

/// Column order of `requests.csv` (stable; documented in the README).
pub const REQUEST_COLUMNS: &[&str] = &[
    "request_id",
    "session_id",
    "turn",
    "replica",
    "status",
    "finish_reason",
    "arrival_s",
    "scheduled_s",
    "first_token_s",
    "finish_s",
    "prompt_tokens",
    "cached_tokens",
    "cached_tokens_gpu",
    "cached_tokens_cpu",
    "cached_tokens_disk",
    "kv_load_s",
    "prefilled_tokens",
    "output_tokens",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "queue_s",
    "preemptions",
    "priority",
    "batch_id",
    "padding_tokens",
    "attempt",
    "failure_reason",
    "prefill_replica",
    "prefill_queue_s",
    "prefill_s",
    "kv_transfer_s",
    "decode_queue_s",
    "decode_s",
];

/// Column order of `timeseries.csv`.
pub const TIMESERIES_COLUMNS: &[&str] = &[
    "time_s",
    "replica",
    "num_requests_waiting",
    "num_requests_running",
    "batch_tokens",
    "kv_used_blocks",
    "kv_cached_free_blocks",
    "kv_empty_free_blocks",
    "kv_cache_usage_perc",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "num_preemptions",
    "kv_store_entries",
    "kv_store_tokens",
    "kv_store_bytes",
    "kv_store_hits",
    "kv_store_evictions",
    "batch_size_limit",
    "replica_state",
    "external_prefix_cache_queries",
    "external_prefix_cache_hits",
    "kv_offload_cpu_usage_perc",
    "kv_offload_disk_usage_perc",
    "kv_offload_loaded_bytes",
    "kv_offload_stored_bytes",
];

/// One time-series sample of one replica.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub time: SimTime,
    pub replica: u32,
    pub waiting: usize,
    pub running: usize,
    pub batch_tokens: u64,
    pub used_blocks: u32,
    pub cached_free_blocks: u32,
    pub empty_free_blocks: u32,
    pub usage: f64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
    /// A per-conversation store's entries, the tokens and bytes they hold, and its cumulative hits and
    /// evictions (0 for other stores).
    pub store_entries: u64,
    pub store_tokens: u64,
    pub store_bytes: u64,
    pub store_hits: u64,
    pub store_evictions: u64,
    /// A request-level batcher's batch size limit (0 for other engines).
    pub batch_size_limit: u32,
    /// `up`, `draining` or `down` (`[[cluster.events]]`).
    pub state: crate::cluster::ReplicaState,
    /// The offload tiers (`kv.offload`; zeros without them): cumulative connector lookups and hits in
    /// tokens, each tier's usage (units held / capacity), cumulative bytes loaded and stored, all tiers.
    pub external_queries: u64,
    pub external_hits: u64,
    pub tier_usage: [f64; 2],
    pub loaded_bytes: u64,
    pub stored_bytes: u64,
}

/// Where a run's rows go.
#[derive(Clone, Debug)]
pub enum Rows {
    /// Nowhere: only the summary's aggregates are kept (a capacity probe).
    Discard,
    /// In memory, returned with the summary.
    Keep,
    /// Streamed to `requests` (`REQUEST_COLUMNS`, in `format`) and `timeseries` (CSV,
    /// `TIMESERIES_COLUMNS`).
    Files {
        requests: PathBuf,
        timeseries: PathBuf,
        format: RowFormat,
    },
}

/// The format of a run's per-request file (`servesim run --format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RowFormat {
    /// `requests.csv`.
    #[default]
    Csv,
    /// `requests.parquet` (`parquet.rs`): the same columns, typed.
    Parquet,
}

impl RowFormat {
    /// The per-request file's name in a run directory.
    pub fn requests_file(self) -> &'static str {
        match self {
            RowFormat::Csv => "requests.csv",
            RowFormat::Parquet => "requests.parquet",
        }
    }
}

enum RequestSink {
    Discard,
    Keep(Vec<RequestRow>),
    /// `requests.csv` or `requests.parquet`, written on a thread of its own.
    File(RowThread),
}

enum SampleSink {
    Discard,
    Keep(Vec<Sample>),
    File { w: BufWriter<File>, path: PathBuf },
}

/// Collects per-request metrics and passes rows on to where [`Rows`] says.
pub struct Collector {
    requests: RequestSink,
    timeseries: SampleSink,
    slo: SloConfig,
    pub ttft: Values,
    pub tpot: Values,
    pub e2e: Values,
    pub queue: Values,
    pub itl: LogHistogram,
    pub finished: u64,
    pub rejected: u64,
    /// Recorded failures replayed from a trace (never run).
    pub failed: u64,
    pub unfinished: u64,
    /// Abandoned by their clients (`workload.client_timeout_s`).
    pub timed_out: u64,
    /// Dropped by a restarting replica.
    pub aborted: u64,
    /// Rejected, timed-out and aborted rows by reason, in `FailureReason::ALL` order.
    pub failures: [u64; 6],
    /// Rows of attempts after the first (client retries).
    pub retries: u64,
    pub good: u64,
    /// Token sums over every row of `requests.csv` (whatever its status): the summary's `prompt_tokens`,
    /// `output_tokens`, `prompt_tokens_cached` and `prefill_tokens_computed`.
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// Of `cached_tokens`, loaded from the CPU and disk tiers.
    pub cached_tokens_tier: [u64; 2],
    pub prefilled_tokens: u64,
    /// Prompt and output tokens of finished requests only, the basis of the throughputs (`vllm bench
    /// serve` counts completed requests, B1).
    pub finished_prompt_tokens: u64,
    pub finished_output_tokens: u64,
    /// Prompt tokens of requests that were admitted at least once (their prefix lookup ran): the
    /// denominator of `prefill_tokens_saved_frac`, which a rejected or never-scheduled prompt would skew.
    pub admitted_prompt_tokens: u64,
    pub last_finish: SimTime,
    /// Requests arriving before this are written but left out of the latency statistics and goodput
    /// (`output.warmup_s`).
    pub warmup: SimTime,
    /// Finished requests that arrived after the warm-up (the latency statistics' population).
    pub measured: u64,
    /// The latest arrival of any request: the end of the offered load.
    pub last_arrival: SimTime,
    /// The system's state at each time-series sample, kept whatever the row sink: the stability verdict
    /// and the automatic warm-up read it.
    pub state: Vec<StatePoint>,
    /// `output.warmup_s = "auto"`: every finished request's measures, kept until the warm-up is known
    /// ([`Collector::settle_warmup`]). None: the warm-up is fixed and the measures go straight to the lists.
    pending: Option<Vec<Measures>>,
    /// The time series' row buffer.
    row: RowBuf,
}

/// The system at one time-series sample, summed over replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatePoint {
    /// Virtual time, ns.
    pub t: u64,
    /// Requests waiting.
    pub waiting: u64,
    /// KV in use: blocks held by requests (a paged store), plus the tokens a per-conversation store
    /// holds (a run has one kind of store, so the series keeps one unit).
    pub kv_used_blocks: u64,
    /// Sessions started and not yet ended (the session population).
    pub sessions: u64,
}

/// A finished request's latencies in seconds (None: undefined, e.g. TPOT of a one-token output).
#[derive(Clone, Copy, Debug)]
struct Measures {
    arrival: SimTime,
    ttft: Option<f64>,
    tpot: Option<f64>,
    e2e: Option<f64>,
    queue: Option<f64>,
}

/// The warm-up and whether the run holds steady after it: see [`Collector::settle_warmup`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupFound {
    pub warmup: SimTime,
    /// Both the session population and the KV usage hold steady after the warm-up (None: too few
    /// samples after it to tell).
    pub settled: Option<bool>,
}

/// Whether a run reached a steady state: see [`Collector::stability`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stability {
    /// None when the measurement window holds fewer than 10 samples.
    pub stable: Option<bool>,
    /// Least-squares slope of the waiting requests over the window, requests per second.
    pub queue_growth_per_s: Option<f64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A streamed CSV file (rows from `RowBuf::line`), created with its header.
fn csv_file(
    path: &Path,
    columns: &[&str],
    row: &mut RowBuf,
) -> Result<BufWriter<File>, OutputError> {
    let mut w = BufWriter::with_capacity(1 << 16, File::create(path).map_err(io_err(path))?);
    row.clear();
    for c in columns {
        row.str(c);
    }
    w.write_all(row.line()).map_err(io_err(path))?;
    Ok(w)
}

impl Collector {
    /// A collector sending rows to `rows`; files are created (with their headers) here.
    pub fn new(rows: Rows, slo: SloConfig) -> Result<Collector, OutputError> {
        let mut row = RowBuf::default();
        let (requests, timeseries) = match rows {
            Rows::Discard => (RequestSink::Discard, SampleSink::Discard),
            Rows::Keep => (RequestSink::Keep(Vec::new()), SampleSink::Keep(Vec::new())),
            Rows::Files {
                requests,
                timeseries,
                format,
            } => {
                let r = match format {
                    RowFormat::Csv => {
                        let w = csv_file(&requests, REQUEST_COLUMNS, &mut row)?;
                        RowThread::spawn(w, requests)?
                    }
                    RowFormat::Parquet => {
                        let f = File::create(&requests).map_err(io_err(&requests))?;
                        let w = parquet::ParquetRows::new(f).map_err(io_err(&requests))?;
                        RowThread::spawn_with(w, requests)?
                    }
                };
                let r = RequestSink::File(r);
                let w = csv_file(&timeseries, TIMESERIES_COLUMNS, &mut row)?;
                (
                    r,
                    SampleSink::File {
                        w,
                        path: timeseries,
                    },
                )
            }
        };
        Ok(Collector {
            requests,
            timeseries,
            slo,
            ttft: Values::new(DEFAULT_EXACT),
            tpot: Values::new(DEFAULT_EXACT),
            e2e: Values::new(DEFAULT_EXACT),
            queue: Values::new(DEFAULT_EXACT),
            itl: LogHistogram::default(),
            finished: 0,
            rejected: 0,
            timed_out: 0,
            aborted: 0,
            failures: [0; 6],
            retries: 0,
            failed: 0,
            unfinished: 0,
            good: 0,
            prompt_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cached_tokens_tier: [0; 2],
            prefilled_tokens: 0,
            finished_prompt_tokens: 0,
            finished_output_tokens: 0,
            admitted_prompt_tokens: 0,
            last_finish: SimTime::ZERO,
            warmup: SimTime::ZERO,
            measured: 0,
            last_arrival: SimTime::ZERO,
            state: Vec::new(),
            pending: None,
            row,
        })
    }

    /// Keeps the latency statistics exact up to `limit` finished requests, sketched beyond
    /// (`output.exact_percentiles_up_to`).
    pub fn with_exact_limit(mut self, limit: u64) -> Collector {
        self.ttft = Values::new(limit);
        self.tpot = Values::new(limit);
        self.e2e = Values::new(limit);
        self.queue = Values::new(limit);
        self
    }

    /// Leaves requests arriving before `warmup` out of the statistics (`output.warmup_s`).
    pub fn with_warmup(mut self, warmup: SimTime) -> Collector {
        self.warmup = warmup;
        self
    }

    /// Keeps every finished request's measures until [`Collector::settle_warmup`] decides the warm-up
    /// (`output.warmup_s = "auto"`): 72 bytes per finished request for the run's length.
    pub fn with_auto_warmup(mut self) -> Collector {
        self.warmup = SimTime::ZERO;
        self.pending = Some(Vec::new());
        self
    }

    /// The warm-up and whether the run then holds steady. Both read the session population and the KV
    /// blocks in use, each resampled every `interval` (the last sample carried forward over idle
    /// stretches) from time 0 to `end` or the last arrival, whichever is earlier. With
    /// [`Collector::with_auto_warmup`] the warm-up is the later of MSER-5's two cuts
    /// ([`warmup::mser5`]), and the kept measures of requests arriving from then on become the
    /// statistics and goodput; otherwise it is the fixed one. `settled`: both series hold steady after
    /// the warm-up ([`warmup::holds_steady`]); None when fewer than 20 resampled points follow it.
    pub fn settle_warmup(
        &mut self,
        end: SimTime,
        interval: crate::time::SimDuration,
    ) -> WarmupFound {
        let to = self.last_arrival.0.min(end.0);
        // At most 10^6 grid points whatever the interval: the rule needs the shape, not every sample.
        let step = interval.0.max(to / 1_000_000).max(1);
        let (mut sessions, mut kv) = (Vec::new(), Vec::new());
        let mut i = 0;
        let mut cur = StatePoint::default();
        let mut t = 0;
        while t <= to && !self.state.is_empty() {
            while i < self.state.len() && self.state[i].t <= t {
                cur = self.state[i];
                i += 1;
            }
            sessions.push(cur.sessions as f64);
            kv.push(cur.kv_used_blocks as f64);
            t += step;
        }
        if let Some(pending) = self.pending.take() {
            let cut = warmup::mser5(&sessions).max(warmup::mser5(&kv));
            self.warmup = SimTime(cut as u64 * step);
            for m in pending {
                if m.arrival >= self.warmup {
                    self.measure(m);
                }
            }
        }
        let from = (self.warmup.0.div_ceil(step) as usize).min(sessions.len());
        let settled = match (
            warmup::holds_steady(&sessions[from..]),
            warmup::holds_steady(&kv[from..]),
        ) {
            (Some(a), Some(b)) => Some(a && b),
            _ => None,
        };
        WarmupFound {
            warmup: self.warmup,
            settled,
        }
    }

    /// Folds a finished, measured request into the latency lists and goodput.
    fn measure(&mut self, m: Measures) {
        self.measured += 1;
        self.ttft.extend(m.ttft);
        self.e2e.extend(m.e2e);
        self.queue.extend(m.queue);
        self.tpot.extend(m.tpot);
        // B4: good when every SLO given holds; TPOT counts as 0 for single-token outputs.
        let ok = |slo: Option<f64>, v: Option<f64>| slo.is_none_or(|s| v.unwrap_or(0.0) <= s);
        if ok(self.slo.ttft_s, m.ttft) && ok(self.slo.tpot_s, m.tpot) && ok(self.slo.e2e_s, m.e2e) {
            self.good += 1;
        }
    }

    /// The overload verdict over the measurement window, from the warm-up to `end` (the end of the offered
    /// load: the last session start or trace arrival; later turns of running sessions are the backlog
    /// draining, not load) or the last arrival, whichever is earlier: a run is unstable when its waiting
    /// queue grows through the window, i.e. when the least-squares trend of the waiting requests rises
    /// over the window by more than max(10, twice the scatter of the samples around that trend). Below
    /// capacity the queue fluctuates around a mean and its trend over a long window is flat against its
    /// scatter; past it the queue grows at about (arrival rate - service rate), whatever backlog it
    /// started the window with, and the trend rises by that times the window.
    ///
    /// `limit`, with admission control: (the waiting requests admission holds new arrivals to, the most
    /// that can wait at once with preempted requests too). When the queue reached the first in the
    /// window, a rise within the second is a queue filling to its limit, not growth without bound
    /// (overload then shows as refusals, in `success_rate`); a queue that never reached it is judged as
    /// without a limit.
    pub fn stability(&self, end: SimTime, limit: Option<(u64, u64)>) -> Stability {
        let (from, to) = (self.warmup.0, self.last_arrival.0.min(end.0));
        let pts: Vec<(f64, f64)> = self
            .state
            .iter()
            .filter(|p| p.t >= from && p.t <= to)
            .map(|p| (p.t as f64 / 1e9, p.waiting as f64))
            .collect();
        if pts.len() < 10 {
            return Stability {
                stable: None,
                queue_growth_per_s: None,
            };
        }
        let (slope, resid) = warmup::trend_xy(&pts);
        let span = pts[pts.len() - 1].0 - pts[0].0;
        let peak = pts.iter().map(|p| p.1).fold(0.0, f64::max);
        let cap = limit
            .filter(|&(reached, _)| peak >= reached as f64)
            .map_or(0.0, |(_, most)| most as f64);
        // The scatter around the trend is a stable queue's excursions, which a trend must clearly exceed.
        Stability {
            stable: Some(slope * span <= (2.0 * resid).max(10.0).max(cap)),
            queue_growth_per_s: Some(slope),
        }
    }

    /// Records `count` tokens that each followed their request's previous token by `gap` (ITL pools every
    /// gap of every request, B2).
    pub fn on_tokens(&mut self, gap: crate::time::SimDuration, count: u64) {
        self.itl.record_ns_n(gap.0, count);
    }

    /// Inter-token gaps recorded in a batch (a decode leap's).
    pub fn on_token_gaps(&mut self, gaps: &histogram::Batch) {
        self.itl.merge(gaps);
    }

    /// Writes a request's row and folds it into the summary statistics.
    pub fn on_request_done(&mut self, r: &Request, status: Status) -> Result<(), OutputError> {
        let ttft = r.first_token.map(|t| t.since(r.arrival).as_secs_f64());
        let e2e = r.finish.map(|t| t.since(r.arrival).as_secs_f64());
        let queue = r.first_scheduled.map(|t| t.since(r.arrival).as_secs_f64());
        // B2: TPOT = (E2E - TTFT) / (output - 1), only for output > 1.
        let tpot = match (ttft, e2e) {
            (Some(a), Some(b)) if r.num_output_tokens > 1 => {
                Some((b - a) / (r.num_output_tokens - 1) as f64)
            }
            _ => None,
        };
        self.last_arrival = self.last_arrival.max(r.arrival);
        let measured = r.arrival >= self.warmup;
        self.prompt_tokens += r.prompt_tokens as u64;
        self.output_tokens += r.num_output_tokens as u64;
        self.cached_tokens += r.num_cached_tokens.unwrap_or(0) as u64;
        self.cached_tokens_tier[0] += r.cached_tokens_tier[0] as u64;
        self.cached_tokens_tier[1] += r.cached_tokens_tier[1] as u64;
        self.prefilled_tokens += r.prefilled_tokens;
        if r.num_cached_tokens.is_some() {
            self.admitted_prompt_tokens += r.prompt_tokens as u64;
        }
        match status {
            Status::Finished => {
                self.finished += 1;
                self.finished_prompt_tokens += r.prompt_tokens as u64;
                self.finished_output_tokens += r.num_output_tokens as u64;
                if let Some(f) = r.finish {
                    self.last_finish = self.last_finish.max(f);
                }
            }
            Status::Rejected => self.rejected += 1,
            Status::Unfinished => self.unfinished += 1,
            Status::Failed => self.failed += 1,
            Status::TimedOut => self.timed_out += 1,
            Status::Aborted => self.aborted += 1,
        }
        if let Some(f) = r.failure {
            let i = FailureReason::ALL
                .iter()
                .position(|&x| x == f)
                .expect("listed");
            self.failures[i] += 1;
        }
        if r.attempt > 0 {
            self.retries += 1;
        }
        // The latency statistics and goodput count finished requests that arrived after the warm-up.
        if status == Status::Finished && measured {
            let m = Measures {
                arrival: r.arrival,
                ttft,
                tpot,
                e2e,
                queue,
            };
            match &mut self.pending {
                Some(p) => p.push(m),
                None => self.measure(m),
            }
        }
        let row = RequestRow::new(r, status, tpot);
        match &mut self.requests {
            RequestSink::Discard => Ok(()),
            RequestSink::Keep(v) => {
                v.push(row);
                Ok(())
            }
            RequestSink::File(t) => t.push(row),
        }
    }

    /// The session population at a sample time (after that time's [`Collector::on_sample`] calls).
    pub fn on_population(&mut self, time: SimTime, sessions: u64) {
        match self.state.last_mut() {
            Some(p) if p.t == time.0 => p.sessions = sessions,
            _ => self.state.push(StatePoint {
                t: time.0,
                sessions,
                ..StatePoint::default()
            }),
        }
    }

    pub fn on_sample(&mut self, s: &Sample) -> Result<(), OutputError> {
        match self.state.last_mut() {
            Some(p) if p.t == s.time.0 => {
                p.waiting += s.waiting as u64;
                p.kv_used_blocks += s.used_blocks as u64 + s.store_tokens;
            }
            _ => self.state.push(StatePoint {
                t: s.time.0,
                waiting: s.waiting as u64,
                kv_used_blocks: s.used_blocks as u64 + s.store_tokens,
                sessions: 0,
            }),
        }
        let (w, path) = match &mut self.timeseries {
            SampleSink::Discard => return Ok(()),
            SampleSink::Keep(v) => {
                v.push(*s);
                return Ok(());
            }
            SampleSink::File { w, path } => (w, path),
        };
        let row = &mut self.row;
        row.clear();
        row.secs_ns(s.time.0);
        row.int(s.replica);
        row.int(s.waiting);
        row.int(s.running);
        row.int(s.batch_tokens);
        row.int(s.used_blocks);
        row.int(s.cached_free_blocks);
        row.int(s.empty_free_blocks);
        row.f6(s.usage);
        row.int(s.prefix_queries);
        row.int(s.prefix_hits);
        row.int(s.preemptions);
        row.int(s.store_entries);
        row.int(s.store_tokens);
        row.int(s.store_bytes);
        row.int(s.store_hits);
        row.int(s.store_evictions);
        row.int(s.batch_size_limit);
        row.str(s.state.as_str());
        row.int(s.external_queries);
        row.int(s.external_hits);
        row.f6(s.tier_usage[0]);
        row.f6(s.tier_usage[1]);
        row.int(s.loaded_bytes);
        row.int(s.stored_bytes);
        w.write_all(row.line()).map_err(io_err(path))
    }

    /// Writes out and closes `requests.csv` (no request rows may follow) and flushes the time series.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        if let RequestSink::File(t) = &mut self.requests {
            t.finish()?;
        }
        match &mut self.timeseries {
            SampleSink::File { w, path } => w.flush().map_err(io_err(path)),
            _ => Ok(()),
        }
    }

    /// The rows kept in memory ([`Rows::Keep`]; empty otherwise), leaving none behind.
    pub fn take_rows(&mut self) -> (Vec<RequestRow>, Vec<Sample>) {
        let r = match &mut self.requests {
            RequestSink::Keep(v) => std::mem::take(v),
            _ => Vec::new(),
        };
        let s = match &mut self.timeseries {
            SampleSink::Keep(v) => std::mem::take(v),
            _ => Vec::new(),
        };
        (r, s)
    }
}

/// An ordered summary: key -> value, written as `summary.json` (an object) and `summary.csv` (one row).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary(pub Map<String, Value>);

impl Summary {
    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.0.insert(key.to_string(), v.into());
    }

    pub fn set_opt(&mut self, key: &str, v: Option<f64>) {
        self.0
            .insert(key.to_string(), v.map(Value::from).unwrap_or(Value::Null));
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(Value::as_f64)
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.0).expect("a JSON map serialises");
        s.push('\n');
        s
    }

    pub fn write_csv(&self, path: &Path) -> Result<(), OutputError> {
        let mut w = csv::Writer::from_path(path).map_err(OutputError::csv(path))?;
        w.write_record(self.0.keys())
            .map_err(OutputError::csv(path))?;
        w.write_record(self.0.values().map(|v| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
        .map_err(OutputError::csv(path))?;
        w.flush().map_err(|source| OutputError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting queue climbing steadily from 0 to 30 over 100 samples rises by 30 with no scatter: over
    /// the threshold of 10, unstable; with admission holding it to 30 (32 with preempted requests) it is
    /// a queue filling to its limit, stable.
    #[test]
    fn a_queue_filling_to_its_cap_is_not_growth_without_bound() {
        let mut c = Collector::new(Rows::Discard, SloConfig::default()).unwrap();
        for i in 0..=100u64 {
            c.state.push(StatePoint {
                t: i * 1_000_000_000,
                waiting: (i * 30) / 100,
                ..StatePoint::default()
            });
        }
        c.last_arrival = SimTime(100_000_000_000);
        let end = SimTime(100_000_000_000);
        assert_eq!(c.stability(end, None).stable, Some(false));
        // Admission holds arrivals to 30 waiting (reached), 32 with preempted requests.
        assert_eq!(c.stability(end, Some((30, 32))).stable, Some(true));
        // A cap below the rise does not hide it.
        assert_eq!(c.stability(end, Some((20, 20))).stable, Some(false));
        // A limit the queue never reached (a nominal one, 1000) changes nothing.
        assert_eq!(c.stability(end, Some((1000, 1100))).stable, Some(false));
    }
}
