//! One simulation run from a config to its output directory.

use crate::config::{Config, Warmup, WorkloadKind};
use crate::cost::CostModel;
use crate::cost::OPERATOR_CLASSES;
use crate::error::{Error, OutputError};
use crate::event::ReplicaId;
use crate::metrics::output::RunDir;
use crate::metrics::stats::describe;
use crate::metrics::{Collector, RequestRow, RowFormat, Rows, Sample, Summary};
use crate::replica::{Replica, StepRecord};
use crate::scheduler::Scheduler;
use crate::system::{System, WithReplicas};
use crate::workload::Workload;
use crate::world::World;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Output directory; `results/<name>` when None.
    pub out: Option<PathBuf>,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal and the run lasts over ~1 s).
    pub progress: bool,
    /// Step one by one instead of leaping over runs of pure-decode steps (same outputs, slower).
    pub no_leap: bool,
    /// The variant's label in a comparison (its directory name), recorded in the summary's `variant`;
    /// empty for a plain run.
    pub variant: String,
    /// Where to save every replica's cache at the end (`--save-cache`; see `kv::persist`).
    pub save_cache: Option<PathBuf>,
    /// The per-request file's format: `requests.csv` or `requests.parquet` (`--format`).
    pub format: RowFormat,
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub out_dir: PathBuf,
    pub summary: Summary,
    pub system: System,
    pub wall_seconds: f64,
    /// Events dispatched, those a leap stood in for included (a debug statistic: not in the summary).
    pub events: u64,
    /// Engine steps advanced by leaps (0 with `no_leap`).
    pub leapt_steps: u64,
    /// Coasts begun, and coasts that something reached before their end (see `world.rs`; debug
    /// statistics, 0 with `no_leap`).
    pub coasts: u64,
    pub catch_ups: u64,
}

/// How to simulate without an output directory.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Where the rows go (`Rows::Discard` for a probe that needs only the summary).
    pub rows: Rows,
    pub progress: bool,
    pub no_leap: bool,
    /// Recorded in the summary's `variant`.
    pub variant: String,
    /// Keep every replica's cache content at the end ([`Simulation::cache`]).
    pub keep_cache: bool,
    /// Record every engine step ([`Simulation::steps`]); the run is stepped one by one (no leaps).
    pub record_steps: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            rows: Rows::Discard,
            progress: false,
            no_leap: false,
            variant: String::new(),
            keep_cache: false,
            record_steps: false,
        }
    }
}

/// What a simulation produced.
#[derive(Debug)]
pub struct Simulation {
    pub summary: Summary,
    pub system: System,
    pub wall_seconds: f64,
    /// Events dispatched, those a leap stood in for included (a debug statistic).
    pub events: u64,
    /// Engine steps advanced by leaps.
    pub leapt_steps: u64,
    /// Coasts begun, and those caught up before their end.
    pub coasts: u64,
    pub catch_ups: u64,
    /// Every request's row, in the order `requests.csv` lists them ([`Rows::Keep`] only).
    pub requests: Vec<RequestRow>,
    /// Every time-series sample, in file order ([`Rows::Keep`] only).
    pub timeseries: Vec<Sample>,
    /// Each replica's totals, by id (`replicas.csv`).
    pub replicas: Vec<ReplicaSummary>,
    /// Every replica slot's cache content at the end, by id ([`SimOptions::keep_cache`] only; else
    /// empty), and the header a cache file of it carries.
    pub cache: Vec<crate::kv::CacheSnapshot>,
    pub cache_header: crate::kv::persist::Header,
    /// Every replica's steps in order, by id ([`SimOptions::record_steps`] only; else empty).
    pub steps: Vec<Vec<StepRecord>>,
}

/// One replica's totals over the run: a row of `replicas.csv` (columns in [`REPLICA_COLUMNS`] order).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaSummary {
    pub replica: u32,
    /// The model it serves at the end (`model.name`, or a `swap_model` event's).
    pub model: String,
    /// Requests routed to it and queued (retries and hand-backs included) and their prompt tokens.
    pub requests: u64,
    pub prompt_tokens: u64,
    /// Requests routed to it and refused, its queue full (`queue_full`).
    pub refused_queue_full: u64,
    /// Prefix-cache lookups and hits in tokens (vLLM's `prefix_cache_queries` / `_hits`), and their ratio
    /// (empty with no lookup).
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub prefix_cache_hit_rate: Option<f64>,
    /// Seconds with a step in flight.
    pub busy_s: f64,
    pub steps: u64,
    pub num_preemptions: u64,
    /// `prefill` or `decode` in a disaggregated cluster, empty in an aggregated one.
    pub role: &'static str,
}

/// Column order of `replicas.csv`.
pub const REPLICA_COLUMNS: &[&str] = &[
    "replica",
    "model",
    "requests",
    "prompt_tokens",
    "refused_queue_full",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "prefix_cache_hit_rate",
    "busy_s",
    "steps",
    "num_preemptions",
    "role",
];

impl ReplicaSummary {
    fn of<S: Scheduler>(r: &crate::replica::Replica<S>, cfg: &Config) -> ReplicaSummary {
        let kv = r.kv_stats();
        let models = cfg.cluster.swap_models();
        ReplicaSummary {
            replica: r.id,
            // A disaggregated cluster's pools serve `model` (their indices are 1 and 2).
            model: match r.model {
                m if m == 0 || cfg.cluster.pd_pools().is_some() => cfg.model.name.clone(),
                m => models[m - 1].to_string(),
            },
            role: match System::model_of_slot(cfg, r.id) {
                1 => "prefill",
                2 => "decode",
                _ => "",
            },
            requests: r.stats.requests,
            prompt_tokens: r.stats.prompt_tokens,
            refused_queue_full: r.stats.refused,
            prefix_cache_queries: kv.prefix.queries,
            prefix_cache_hits: kv.prefix.hits,
            prefix_cache_hit_rate: (kv.prefix.queries > 0)
                .then(|| kv.prefix.hits as f64 / kv.prefix.queries as f64),
            busy_s: r.stats.busy.as_secs_f64(),
            steps: r.stats.steps,
            num_preemptions: r.stats.preemptions,
        }
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.replica.to_string(),
            self.model.clone(),
            self.requests.to_string(),
            self.prompt_tokens.to_string(),
            self.refused_queue_full.to_string(),
            self.prefix_cache_queries.to_string(),
            self.prefix_cache_hits.to_string(),
            self.prefix_cache_hit_rate
                .map_or(String::new(), |v| v.to_string()),
            self.busy_s.to_string(),
            self.steps.to_string(),
            self.num_preemptions.to_string(),
            self.role.to_string(),
        ]
    }
}

/// Writes `replicas.csv`.
fn write_replicas(path: &Path, rows: &[ReplicaSummary]) -> Result<(), OutputError> {
    let err = OutputError::csv(path);
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    w.write_record(REPLICA_COLUMNS).map_err(err)?;
    for r in rows {
        w.write_record(r.record()).map_err(err)?;
    }
    w.flush().map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A config resolved into the parts of a run, before anything runs or is written: resolving is where a
/// config that cannot run is refused.
pub struct Prepared<'a> {
    cfg: &'a Config,
    system: System,
    workload: Box<dyn Workload>,
    /// One per model of the run (`System::of_model` order).
    costs: Vec<Box<dyn CostModel>>,
    /// `kv.warm_start`'s snapshots, one per replica slot.
    warm: Vec<crate::kv::CacheSnapshot>,
}

/// Resolves `cfg` (model, hardware, sizing, workload files, cost tables, a warm start's cache file).
pub fn prepare(cfg: &Config) -> Result<Prepared<'_>, Error> {
    let system = System::resolve(cfg)?;
    let workload = system.workload(cfg)?;
    let costs = system.cost_models(cfg)?;
    let warm = match cfg.kv.warm_start.as_deref() {
        None | Some("") => Vec::new(),
        Some(path) => crate::kv::persist::read(
            Path::new(path),
            &cache_header(cfg, &system),
            cfg.cluster.slots(),
        )?,
    };
    Ok(Prepared {
        cfg,
        system,
        workload,
        costs,
        warm,
    })
}

/// The header of a cache file a run of `cfg` writes or reads.
fn cache_header(cfg: &Config, system: &System) -> crate::kv::persist::Header {
    crate::kv::persist::Header::of(cfg, system.offload.as_ref().map(|o| o.unit_tokens()))
}

impl Prepared<'_> {
    /// Runs the simulation to its end. With `Rows::Files` the two row files are created and written (and
    /// left for the caller to keep or discard); otherwise nothing touches the file system.
    pub fn simulate(self, opts: &SimOptions) -> Result<Simulation, Error> {
        let wall = Instant::now();
        let Prepared {
            cfg,
            system,
            workload,
            costs,
            warm,
        } = self;
        let metrics = Collector::new(opts.rows.clone(), cfg.slo.clone())?
            .with_exact_limit(cfg.output.exact_percentiles_up_to);
        let metrics = match cfg.output.warmup_s {
            Warmup::Seconds(w) => metrics.with_warmup(crate::time::SimTime(
                crate::time::SimDuration::from_secs_f64(w).0,
            )),
            Warmup::Auto => metrics.with_auto_warmup(),
        };
        let run = RunWorld {
            cfg,
            system: &system,
            workload,
            costs,
            metrics,
            opts,
            warm,
        };
        let done = system.build(cfg, run)?;
        let cache_header = cache_header(cfg, &system);
        Ok(Simulation {
            summary: done.summary,
            system,
            wall_seconds: wall.elapsed().as_secs_f64(),
            events: done.events,
            leapt_steps: done.leapt_steps,
            coasts: done.coasts,
            catch_ups: done.catch_ups,
            requests: done.requests,
            timeseries: done.timeseries,
            replicas: done.replicas,
            cache: done.cache,
            steps: done.steps,
            cache_header,
        })
    }
}

/// The run itself, given the replicas' types by [`System::build`].
struct RunWorld<'a> {
    cfg: &'a Config,
    system: &'a System,
    workload: Box<dyn Workload>,
    /// One per model of the run (`System::of_model` order).
    costs: Vec<Box<dyn CostModel>>,
    metrics: Collector,
    opts: &'a SimOptions,
    warm: Vec<crate::kv::CacheSnapshot>,
}

/// What [`RunWorld`] returns.
struct Ran {
    summary: Summary,
    events: u64,
    leapt_steps: u64,
    coasts: u64,
    catch_ups: u64,
    requests: Vec<RequestRow>,
    timeseries: Vec<Sample>,
    replicas: Vec<ReplicaSummary>,
    cache: Vec<crate::kv::CacheSnapshot>,
    steps: Vec<Vec<StepRecord>>,
}

impl WithReplicas for RunWorld<'_> {
    type Out = Result<Ran, Error>;

    fn with<S: Scheduler + 'static>(
        self,
        make: &dyn Fn(ReplicaId, usize) -> Replica<S>,
    ) -> Self::Out {
        let cfg = self.cfg;
        let mut replicas: Vec<Replica<S>> = (0..cfg.cluster.slots())
            .map(|id| make(id, System::model_of_slot(cfg, id)))
            .collect();
        for (r, snap) in replicas.iter_mut().zip(&self.warm) {
            r.restore_cache(snap);
        }
        if self.opts.record_steps {
            for r in &mut replicas {
                r.step_log = Some(Vec::new());
            }
        }
        let mut costs = self.costs.into_iter();
        let mut world = World::new(
            cfg,
            replicas,
            self.system.router(cfg),
            self.workload,
            costs.next().expect("the first model's cost"),
            self.metrics,
            self.opts.progress,
            !self.opts.no_leap && !self.opts.record_steps,
        );
        world.set_factory(make);
        world.add_swap_costs(costs.collect());
        if let (Some(decode_router), Some((prefill, _))) =
            (self.system.decode_router(cfg), cfg.cluster.pd_pools())
        {
            world.set_pd_pools(crate::world::PdPools {
                prefill,
                decode_router,
                first_token: cfg
                    .cluster
                    .kv_transfer
                    .clone()
                    .unwrap_or_default()
                    .first_token,
            });
        }
        world.run()?;
        let replicas: Vec<ReplicaSummary> = world
            .replicas
            .iter()
            .map(|r| ReplicaSummary::of(r, cfg))
            .collect();
        let summary = summarize(&mut world, self.system, &self.opts.variant, &replicas);
        let (requests, timeseries) = world.metrics.take_rows();
        let cache = if self.opts.keep_cache {
            world
                .replicas
                .iter()
                .map(|r| crate::kv::KvStore::snapshot(r.kv()))
                .collect()
        } else {
            Vec::new()
        };
        let steps = world
            .replicas
            .iter_mut()
            .map(|r| r.step_log.take().unwrap_or_default())
            .collect();
        Ok(Ran {
            steps,
            cache,
            replicas,
            summary,
            events: world.counts.events,
            leapt_steps: world.counts.leapt_steps,
            coasts: world.counts.coasts,
            catch_ups: world.counts.catch_ups,
            requests,
            timeseries,
        })
    }
}

/// Runs `cfg` in memory: the summary and, with `Rows::Keep`, the rows. The library form of `run`, for
/// callers that run many configurations (a capacity search) and need no files.
pub fn simulate(cfg: &Config, opts: &SimOptions) -> Result<Simulation, Error> {
    prepare(cfg)?.simulate(opts)
}

/// Runs `cfg` and writes `requests.csv` (or `requests.parquet`), `summary.json`, `summary.csv`, `timeseries.csv` and
/// `resolved.toml`: [`simulate`] with a file sink around it. Nothing is written when the config cannot be
/// resolved, and nothing is left behind when a run fails.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<RunOutcome, Error> {
    if opts.save_cache.is_some() && !cfg.cluster.swap_models().is_empty() {
        return Err(crate::error::ConfigError::invalid(
            "--save-cache",
            "a cache file holds one model's KV, and this run's swap_model events change a replica's model; \
             save the cache of a run without them",
        )
        .into());
    }
    if (opts.save_cache.is_some() || cfg.kv.warm_start.as_deref().is_some_and(|p| !p.is_empty()))
        && cfg.engine.kv_kind() == crate::config::KvKind::Radix
    {
        return Err(crate::error::ConfigError::invalid(
            if opts.save_cache.is_some() { "--save-cache" } else { "kv.warm_start" },
            "saving and restoring SGLang's radix cache is not modelled; run engine.kind = \"sglang\" \
             without --save-cache and --warm-start",
        )
        .into());
    }
    let prepared = prepare(cfg)?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(&cfg.name));
    if let Some(path) = &opts.save_cache {
        check_cache_path(path, &out)?;
    }
    let dir = RunDir::create(&out)?;
    let sim = prepared.simulate(&SimOptions {
        rows: Rows::Files {
            requests: dir.file(opts.format.requests_file()),
            timeseries: dir.file("timeseries.csv"),
            format: opts.format,
        },
        progress: opts.progress,
        no_leap: opts.no_leap,
        variant: opts.variant.clone(),
        keep_cache: opts.save_cache.is_some(),
        record_steps: false,
    })?;
    write(&dir.file("summary.json"), &sim.summary.to_json())?;
    sim.summary.write_csv(&dir.file("summary.csv"))?;
    write_replicas(&dir.file("replicas.csv"), &sim.replicas)?;
    write(&dir.file("resolved.toml"), &resolved_toml(cfg, &sim.system))?;
    // Last, so that a failure before leaves no cache file, and one here leaves no run directory.
    if let Some(path) = &opts.save_cache {
        crate::kv::persist::write(path, &sim.cache_header, &sim.cache)?;
    }
    let out_dir = dir.commit().inspect_err(|_| {
        if let Some(path) = &opts.save_cache {
            let _ = std::fs::remove_file(path);
        }
    })?;
    Ok(RunOutcome {
        out_dir,
        summary: sim.summary,
        system: sim.system,
        wall_seconds: sim.wall_seconds,
        events: sim.events,
        leapt_steps: sim.leapt_steps,
        coasts: sim.coasts,
        catch_ups: sim.catch_ups,
    })
}

/// `--save-cache`'s path, checked before the run: its folder must exist, and it may not lie in the run
/// directory (which is replaced as a whole, and would then hold a file that is not a run output).
fn check_cache_path(path: &Path, out: &Path) -> Result<(), crate::error::ConfigError> {
    let bad = |m: String| crate::error::ConfigError::invalid("--save-cache", m);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if abs(path).starts_with(abs(out)) {
        return Err(bad(format!(
            "{} lies in the run directory {}, which a run replaces as a whole; save it beside it",
            path.display(),
            out.display()
        )));
    }
    if !parent.is_dir() {
        return Err(bad(format!(
            "{}: folder {} does not exist; create it or save elsewhere",
            path.display(),
            parent.display()
        )));
    }
    if path.is_dir() {
        return Err(bad(format!(
            "{} is a folder; give a file name",
            path.display()
        )));
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), OutputError> {
    std::fs::write(path, text).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The config with every derived value filled in, re-runnable as is; derived facts as comments.
pub fn resolved_toml(cfg: &Config, sys: &System) -> String {
    let mut c = cfg.clone();
    // Pools on other GPUs than the top level's each derive their own limits and blocks: those stay
    // unset (stated in the comments), so that the file re-runs as this run did.
    let pools: Vec<(&str, &System)> = match cfg.cluster.pd_pools() {
        Some(_) => vec![("prefill", sys.of_model(1)), ("decode", sys.of_model(2))],
        None => Vec::new(),
    };
    let pools_differ = pools.iter().any(|(_, p)| {
        p.sizing.num_gpu_blocks != sys.sizing.num_gpu_blocks
            || p.sizing.max_num_batched_tokens != sys.sizing.max_num_batched_tokens
            || p.sizing.max_num_seqs != sys.sizing.max_num_seqs
            || p.sizing.activation_reserve_gib != sys.sizing.activation_reserve_gib
    });
    let pool_lines: String = pools
        .iter()
        .map(|(name, p)| {
            format!(
                "# {name} pool, per instance: {} x {}; {} KV blocks; max_num_batched_tokens {}, max_num_seqs {}\n",
                p.hardware.name,
                match name {
                    &"prefill" => cfg.cluster.prefill.as_ref(),
                    _ => cfg.cluster.decode.as_ref(),
                }
                .and_then(|x| x.tensor_parallel)
                .unwrap_or(cfg.hardware.tensor_parallel),
                p.sizing.num_gpu_blocks,
                p.sizing.max_num_batched_tokens,
                p.sizing.max_num_seqs
            )
        })
        .collect();
    let s = &sys.sizing;
    match &sys.sglang {
        // SGLang's limits replace vLLM's, which it ignores (left as the user set them).
        Some(g) => {
            c.sglang.max_total_tokens = Some(g.max_total_tokens);
            c.sglang.max_running_requests = Some(g.limits.max_running_requests);
            c.sglang.chunked_prefill_size =
                Some(g.limits.chunked_prefill_size.map_or(-1, i64::from));
        }
        None if pools_differ => {}
        None => {
            c.engine.max_num_batched_tokens = Some(s.max_num_batched_tokens);
            c.engine.max_num_seqs = Some(s.max_num_seqs);
        }
    }
    c.engine.max_model_len = Some(s.max_model_len);
    if !pools_differ {
        c.engine.num_gpu_blocks = Some(s.num_gpu_blocks);
        c.engine.activation_reserve_gib = Some(s.activation_reserve_gib);
    }
    c.engine.kv_cache = Some(c.engine.kv_kind());
    // A disaggregated cluster's pools with what they inherit, and the link's bandwidth, written out.
    if c.cluster.pd_pools().is_some() {
        let (hw, tp, router) = (
            c.hardware.name.clone(),
            c.hardware.tensor_parallel,
            c.cluster.router,
        );
        for pool in [&mut c.cluster.prefill, &mut c.cluster.decode]
            .into_iter()
            .flatten()
        {
            pool.hardware.get_or_insert(hw.clone());
            pool.tensor_parallel.get_or_insert(tp);
            pool.router.get_or_insert(router);
        }
        let t = c.cluster.kv_transfer.get_or_insert_with(Default::default);
        t.bandwidth_gbps.get_or_insert(t.link.default_gbps());
    }
    let mut body = toml::to_string(&c).expect("a config serialises");
    if c.cluster.pd_pools().is_some() {
        // The pools give the replica count; written, it would read as a count set beside them.
        body = without_cluster_replicas(&body);
    }
    format!(
        "# servesim {VERSION}: the resolved configuration of this run (re-run it with --config).\n\
         # model {}: {:.3} B parameters; weights {:.2} GiB per GPU; KV {} bytes per token per replica\n\
         # hardware {}, per GPU: {} GiB, {} GB/s, {} TFLOP/s bf16; {}\n\
         # KV cache per replica: {}; {:.2} GiB per GPU\n{pool_lines}\n{body}",
        sys.model.name,
        sys.model.total_params() as f64 / 1e9,
        s.weights_gib,
        sys.model.kv_bytes_per_token(),
        sys.hardware.name,
        sys.hardware.memory_gib,
        sys.hardware.memory_bandwidth_gbps,
        sys.hardware.peak_bf16_tflops,
        match cfg.cluster.pd_pools() {
            Some(_) => format!(
                "{} GPU(s) in the pools below, whose instances inherit this hardware unless they name \
                 their own",
                cfg.gpus()
            ),
            None => format!(
                "{} GPU(s) per replica (tensor_parallel) x {} replica(s) = {} GPU(s)",
                cfg.hardware.tensor_parallel,
                cfg.cluster.replicas,
                cfg.gpus()
            ),
        },
        match &sys.sglang {
            Some(g) => format!("SGLang's token pool of {} tokens", g.max_total_tokens),
            None => format!(
                "{} blocks of {} tokens, {} tokens usable",
                s.num_gpu_blocks,
                cfg.engine.block_size,
                (s.num_gpu_blocks as u64 - 1) * cfg.engine.block_size as u64
            ),
        },
        s.kv_cache_gib,
    )
}

/// `text` (a serialised config) without the `replicas` line of its `[cluster]` table.
fn without_cluster_replicas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_cluster = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_cluster = line == "[cluster]";
        } else if in_cluster && line.starts_with("replicas = ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The most requests a replica runs at once: vLLM's `max_num_seqs`, SGLang's `max_running_requests`.
fn running_limit(sys: &System) -> u32 {
    sys.sglang
        .as_ref()
        .map_or(sys.sizing.max_num_seqs, |g| g.limits.max_running_requests)
}

/// A config enum as the summary records it: its name in the config (`"least_loaded"`).
pub(crate) fn enum_name(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("a config enum serialises")
}

/// The run's summary; `replicas` is each replica's [`ReplicaSummary`], by id.
fn summarize<S: Scheduler>(
    world: &mut World<S>,
    sys: &System,
    variant: &str,
    replicas: &[ReplicaSummary],
) -> Summary {
    let cfg = world.config().clone();
    let mut s = Summary::default();
    s.set("name", cfg.name.clone());
    s.set("variant", variant);
    s.set("seed", cfg.seed);
    s.set("servesim_version", VERSION);
    s.set("model", cfg.model.name.clone());
    s.set("hardware", cfg.hardware.name.clone());
    s.set("cost_model", world.cost_model_name());
    s.set("replicas", cfg.cluster.replicas);
    s.set("cluster_events", cfg.cluster.events.len());
    s.set("router", enum_name(cfg.cluster.router));
    s.set("tensor_parallel", cfg.hardware.tensor_parallel);
    // Disaggregated: each pool's instances, GPU, tensor parallelism and KV blocks (null otherwise);
    // `gpus` counts every pool's GPUs.
    s.set("cluster_mode", enum_name(cfg.cluster.mode));
    s.set("gpus", cfg.gpus());
    for (name, pool, m) in [
        ("prefill", &cfg.cluster.prefill, 1),
        ("decode", &cfg.cluster.decode, 2),
    ] {
        let pool = pool.as_ref().filter(|_| cfg.cluster.pd_pools().is_some());
        let v = |f: &dyn Fn(&crate::config::PoolConfig) -> serde_json::Value| {
            pool.map_or(serde_json::Value::Null, f)
        };
        s.set(&format!("{name}_replicas"), v(&|p| p.replicas.into()));
        s.set(
            &format!("{name}_hardware"),
            v(&|p| {
                p.hardware
                    .clone()
                    .unwrap_or(cfg.hardware.name.clone())
                    .into()
            }),
        );
        s.set(
            &format!("{name}_tensor_parallel"),
            v(&|p| {
                p.tensor_parallel
                    .unwrap_or(cfg.hardware.tensor_parallel)
                    .into()
            }),
        );
        s.set(
            &format!("{name}_num_gpu_blocks"),
            v(&|_| sys.of_model(m).sizing.num_gpu_blocks.into()),
        );
    }
    s.set("engine", enum_name(cfg.engine.kind));
    s.set("kv_cache", enum_name(cfg.engine.kv_kind()));
    s.set("policy", enum_name(cfg.engine.policy));
    s.set("workload_kind", enum_name(cfg.workload.kind));
    // The offered load: sessions per second for a generated workload, empty for a trace replay.
    s.set_opt(
        "session_rate",
        (cfg.workload.kind == WorkloadKind::Conversational).then_some(cfg.workload.session_rate),
    );
    s.set(
        "rate_schedule",
        cfg.workload.rate_schedule.as_ref().map_or("", |r| r.kind()),
    );
    s.set("block_size", cfg.engine.block_size);
    s.set("max_model_len", sys.sizing.max_model_len);
    s.set("num_gpu_blocks", sys.sizing.num_gpu_blocks);
    // vLLM's limits, or SGLang's (each null for the other engine).
    match &sys.sglang {
        Some(g) => {
            s.set_opt("max_num_batched_tokens", None);
            s.set_opt("max_num_seqs", None);
            s.set("sglang_max_total_tokens", g.max_total_tokens);
            s.set("sglang_max_running_requests", g.limits.max_running_requests);
            s.set(
                "sglang_chunked_prefill_size",
                g.limits.chunked_prefill_size.map_or(-1, i64::from),
            );
        }
        None => {
            s.set("max_num_batched_tokens", sys.sizing.max_num_batched_tokens);
            s.set("max_num_seqs", sys.sizing.max_num_seqs);
            for k in [
                "sglang_max_total_tokens",
                "sglang_max_running_requests",
                "sglang_chunked_prefill_size",
            ] {
                s.set_opt(k, None);
            }
        }
    }
    // The prefix cache switch applies to the paged store and to the radix cache (SGLang's
    // `--disable-radix-cache`); null for the others.
    match cfg.engine.kv_kind() {
        crate::config::KvKind::Paged | crate::config::KvKind::Radix => {
            s.set("prefix_caching", cfg.engine.prefix_caching)
        }
        _ => s.set("prefix_caching", serde_json::Value::Null),
    }
    s.set(
        "prefix_cache_scope",
        enum_name(cfg.engine.prefix_cache_scope),
    );
    s.set("workload_content", world.workload_content().to_string());
    s.set("warm_start", cfg.kv.warm_start.clone().unwrap_or_default());
    // The backend of the tiers this run has (null without any: no [kv.offload], or both sizes 0).
    s.set(
        "kv_offload",
        match (&cfg.kv.offload, &sys.offload) {
            (Some(o), Some(_)) => enum_name(o.backend),
            _ => serde_json::Value::Null,
        },
    );
    s.set("sessions", world.sessions_started());
    let load_end = cfg
        .workload
        .duration_s
        .map_or(u64::MAX, |d| crate::time::SimDuration::from_secs_f64(d).0);
    let load_end = crate::time::SimTime(load_end);
    let m = &mut world.metrics;
    let warmup = m.settle_warmup(
        load_end,
        crate::time::SimDuration::from_secs_f64(cfg.output.timeseries_interval_s),
    );
    let warmup_s = warmup.warmup.as_secs_f64();
    s.set("requests", world.counts.released);
    s.set("requests_finished", m.finished);
    s.set("requests_rejected", m.rejected);
    s.set("requests_unfinished", m.unfinished);
    s.set("requests_failed", m.failed);
    s.set("requests_timed_out", m.timed_out);
    s.set("requests_aborted", m.aborted);
    // Overload: refusals and abandonments by reason, retries, and the share of the requests offered
    // (first attempts, the trace's recorded failures left out) that finished.
    for (reason, n) in crate::request::FailureReason::ALL.iter().zip(m.failures) {
        if !matches!(
            reason,
            crate::request::FailureReason::ClientTimeout
                | crate::request::FailureReason::ReplicaRestart
                | crate::request::FailureReason::ModelSwap
        ) {
            s.set(&format!("rejected_{}", reason.as_str()), n);
        }
    }
    s.set("requests_retried", m.retries);
    let offered = world.counts.released - m.retries - m.failed;
    s.set("requests_offered", offered);
    s.set_opt(
        "success_rate",
        (offered > 0).then(|| m.finished as f64 / offered as f64),
    );
    // B3: duration runs from the start (first arrival at t = 0) to the last completion.
    let dur = m.last_finish.as_secs_f64();
    s.set("duration_s", dur);
    s.set("sim_end_s", world.counts.end.as_secs_f64());
    let per_s = |x: f64| if dur > 0.0 { Some(x / dur) } else { None };
    s.set_opt("request_throughput_rps", per_s(m.finished as f64));
    s.set_opt(
        "output_throughput_tps",
        per_s(m.finished_output_tokens as f64),
    );
    s.set_opt(
        "total_token_throughput_tps",
        per_s((m.finished_prompt_tokens + m.finished_output_tokens) as f64),
    );
    let slo_set = cfg.slo.ttft_s.is_some() || cfg.slo.tpot_s.is_some() || cfg.slo.e2e_s.is_some();
    // Goodput counts the requests after the warm-up, over the time after it.
    let window = dur - warmup_s;
    s.set_opt(
        "goodput_rps",
        if slo_set && window > 0.0 {
            Some(m.good as f64 / window)
        } else {
            None
        },
    );
    s.set_opt("slo_ttft_s", cfg.slo.ttft_s);
    s.set_opt("slo_tpot_s", cfg.slo.tpot_s);
    s.set_opt("slo_e2e_s", cfg.slo.e2e_s);
    // Exact statistics sort each list (a million values in the largest benchmark): the four sorts run
    // side by side. Each result is the same whichever thread computes it.
    let lists = [
        ("ttft", &mut m.ttft),
        ("tpot", &mut m.tpot),
        ("e2e", &mut m.e2e),
        ("queue", &mut m.queue),
    ];
    let exact = lists.iter().all(|(_, v)| v.is_exact());
    let described = std::thread::scope(|scope| {
        let jobs = lists.map(|(name, values)| (name, scope.spawn(|| values.describe())));
        jobs.map(|(name, job)| (name, job.join().expect("describe does not panic")))
    });
    // Which statistics are exact: the four lists' percentiles up to `output.exact_percentiles_up_to`
    // finished requests (their means and stds always are); ITL's come from its histogram.
    s.set("percentiles_exact", exact);
    s.set_opt(
        "percentiles_relative_error",
        (!exact).then_some(crate::metrics::quantiles::SKETCH_RELATIVE_ERROR),
    );
    for (name, d) in described {
        s.set_opt(&format!("{name}_mean_s"), d.mean);
        s.set_opt(&format!("{name}_median_s"), d.median);
        s.set_opt(&format!("{name}_std_s"), d.std);
        s.set_opt(&format!("{name}_p90_s"), d.p90);
        s.set_opt(&format!("{name}_p99_s"), d.p99);
    }
    s.set_opt("itl_mean_s", m.itl.mean());
    s.set_opt("itl_median_s", m.itl.quantile(0.5));
    s.set_opt("itl_std_s", m.itl.std());
    s.set_opt("itl_p90_s", m.itl.quantile(0.9));
    s.set_opt("itl_p99_s", m.itl.quantile(0.99));
    // Steady state: the warm-up left out, the overload verdict, and each SLO criterion.
    s.set("warmup_s", warmup_s);
    // Whether the session population and the KV usage hold steady after the warm-up.
    match warmup.settled {
        Some(b) => s.set("warmup_settled", b),
        None => s.set("warmup_settled", serde_json::Value::Null),
    }
    s.set("requests_measured", m.measured);
    // Admission holds new arrivals to max_waiting per replica; preempted requests wait too, at most as
    // many as can run at once (max_num_seqs).
    let limit = cfg.admission.as_ref().and_then(|a| a.max_waiting).map(|w| {
        let n = cfg.cluster.slots() as u64;
        (w as u64 * n, (w as u64 + running_limit(sys) as u64) * n)
    });
    let st = m.stability(load_end, limit);
    match st.stable {
        Some(b) => s.set("stable", b),
        None => s.set("stable", serde_json::Value::Null),
    }
    s.set_opt("queue_growth_per_s", st.queue_growth_per_s);
    // The criteria as one column ("ttft_p99_s<=2;queue_mean_s<=0.1"), those missed as another, so that
    // every summary has the same columns; each measured value is in its own column above. A criterion
    // with no value (no request finished after the warm-up) is missed; so is every one of an unstable run.
    let mut failed = Vec::new();
    for (key, &target) in &cfg.slo.criteria {
        if !s.get_f64(key).is_some_and(|v| v <= target) {
            failed.push(key.as_str());
        }
    }
    let mut listed: Vec<String> = cfg
        .slo
        .criteria
        .iter()
        .map(|(k, v)| format!("{k}<={v}"))
        .collect();
    if let Some(min) = cfg.slo.min_success_rate {
        listed.push(format!("success_rate>={min}"));
        if !s.get_f64("success_rate").is_some_and(|v| v >= min) {
            failed.push("success_rate");
        }
    }
    s.set("slo_criteria", listed.join(";"));
    if st.stable == Some(false) {
        failed.push("stable");
    }
    s.set("slo_missed", failed.join(";"));
    if cfg.slo.criteria.is_empty() && cfg.slo.min_success_rate.is_none() {
        s.set("slo_met", serde_json::Value::Null);
    } else {
        s.set("slo_met", failed.is_empty());
    }
    s.set("prompt_tokens", m.prompt_tokens);
    s.set("output_tokens", m.output_tokens);
    s.set("prompt_tokens_cached", m.cached_tokens);
    s.set("prefill_tokens_computed", m.prefilled_tokens);
    s.set_opt(
        "prefill_tokens_saved_frac",
        (m.admitted_prompt_tokens > 0)
            .then(|| m.cached_tokens as f64 / m.admitted_prompt_tokens as f64),
    );
    let (mut q, mut h, mut pq, mut ph, mut pre, mut ev, mut steps) = (0, 0, 0, 0, 0, 0, 0);
    let (mut usage_s, mut peak) = (0.0, 0.0f64);
    let mut ev_tokens = 0u64;
    // Stores with blocks (a radix store's block is one token, SGLang's `token_usage`): usage and
    // evicted tokens mean something.
    let blocks = matches!(
        cfg.engine.kv_kind(),
        crate::config::KvKind::Paged | crate::config::KvKind::Radix
    );
    let mut store = crate::kv::conversation::StoreCounters::default();
    let mut radix = crate::kv::RadixCounters::default();
    // The offload tiers' counters, and each tier's units held and capacity, summed over replicas.
    let mut off = crate::kv::OffloadStats::default();
    let (mut used, mut cap) = ([0u64; 2], [0u64; 2]);
    for r in &world.replicas {
        let kv = r.kv_stats();
        store.add(&kv.store);
        if let Some(x) = &kv.radix {
            radix.add(x);
        }
        if let Some(o) = &kv.offload {
            off.add_counters(o);
            for i in 0..2 {
                used[i] += o.tiers[i].used_units;
                cap[i] += o.tiers[i].capacity_units;
            }
        }
        q += kv.prefix.queries;
        h += kv.prefix.hits;
        pq += kv.prefix.preempted_queries;
        ph += kv.prefix.preempted_hits;
        pre += r.stats.preemptions;
        ev += kv.evictions;
        ev_tokens += kv.evictions * kv.block_size as u64;
        steps += r.stats.steps;
        // Block-nanoseconds over usable blocks: usage-seconds.
        if kv.usable_blocks > 0 {
            usage_s += r.stats.used_block_ns as f64 / (kv.usable_blocks as f64 * 1e9);
        }
        peak = peak.max(kv.usage_at(r.stats.peak_used_blocks));
    }
    s.set("prefix_cache_queries", q);
    s.set("prefix_cache_hits", h);
    s.set_opt(
        "prefix_cache_hit_rate",
        Some(if q > 0 { h as f64 / q as f64 } else { 0.0 }),
    );
    s.set("preempted_prefix_cache_queries", pq);
    s.set("preempted_prefix_cache_hits", ph);
    s.set("num_preemptions", pre);
    s.set("kv_cache_evictions", ev);
    // In tokens, comparable across block sizes and engines (a radix store's block is one token); null
    // for stores whose evictions are whole conversations.
    if blocks {
        s.set("kv_cache_evicted_tokens", ev_tokens);
    } else {
        s.set_opt("kv_cache_evicted_tokens", None);
    }
    // The per-conversation store (zero for other stores), summed over replicas.
    s.set("kv_store_lookups", store.lookups);
    s.set("kv_store_hits", store.hits);
    s.set("kv_store_stale", store.stale);
    s.set("kv_store_evictions", store.evictions);
    s.set("kv_store_releases", store.releases);
    s.set("kv_store_entries", store.entries);
    s.set("kv_store_tokens", store.tokens);
    s.set("kv_store_bytes", store.bytes);
    s.set("kv_store_tokens_peak", store.peak_tokens);
    // SGLang's radix cache (`kv_cache = "radix"`), summed over replicas: its `cache_hit_rate` (G11:
    // hit / (hit + new input) tokens over prefill batches), evicted and deduplicated tokens, and the
    // tree's tokens at the end; HiCache's host hits, loads, copies to host, host evictions, host tokens
    // at the end and load seconds (zero without it). Null for other stores, so that every summary has
    // the same keys.
    let is_radix = cfg.engine.kv_kind() == crate::config::KvKind::Radix;
    for (key, v) in [
        ("sglang_cache_hit_tokens", radix.hit_tokens),
        ("sglang_prefill_input_tokens", radix.input_tokens),
        ("radix_evicted_tokens", radix.evicted_tokens),
        ("radix_deduplicated_tokens", radix.deduplicated_tokens),
        ("radix_tree_tokens", radix.tree_tokens),
        ("radix_evictable_tokens", radix.evictable_tokens),
        ("hicache_host_hit_tokens", radix.host_hit_tokens),
        ("hicache_loaded_tokens", radix.loaded_tokens),
        ("hicache_written_tokens", radix.written_tokens),
        ("hicache_host_evicted_tokens", radix.host_evicted_tokens),
        ("hicache_host_tokens", radix.host_tokens),
    ] {
        if is_radix {
            s.set(key, v);
        } else {
            s.set_opt(key, None);
        }
    }
    s.set_opt(
        "sglang_cache_hit_rate",
        is_radix.then(|| radix.cache_hit_rate()).flatten(),
    );
    s.set_opt(
        "hicache_load_s",
        is_radix.then(|| radix.load_ns as f64 / 1e9),
    );
    // The offload tiers (`kv.offload`), summed over replicas: vLLM's connector counters, and per tier
    // the tokens loaded from it, the bytes moved and its usage at the end (units held / capacity).
    if cfg.kv.offload.is_some() {
        s.set("external_prefix_cache_queries", off.queries);
        s.set("external_prefix_cache_hits", off.hits);
        s.set_opt(
            "external_prefix_cache_hit_rate",
            (off.queries > 0).then(|| off.hits as f64 / off.queries as f64),
        );
        s.set(
            "prompt_tokens_cached_gpu",
            m.cached_tokens - m.cached_tokens_tier[0] - m.cached_tokens_tier[1],
        );
        s.set("kv_offload_load_s", off.load_s);
        for kind in crate::kv::tier::TierKind::ALL {
            let (i, name) = (kind as usize, kind.as_str());
            let t = &off.tiers[i];
            s.set(
                &format!("prompt_tokens_cached_{name}"),
                m.cached_tokens_tier[i],
            );
            s.set(&format!("kv_offload_{name}_hit_tokens"), t.hit_tokens);
            s.set(&format!("kv_offload_{name}_loaded_bytes"), t.loaded_bytes);
            s.set(&format!("kv_offload_{name}_stored_bytes"), t.stored_bytes);
            s.set(&format!("kv_offload_{name}_evictions"), t.evictions);
            s.set(
                &format!("kv_offload_{name}_skipped_stores"),
                t.skipped_stores,
            );
            s.set(&format!("kv_offload_{name}_capacity_units"), cap[i]);
            s.set_opt(
                &format!("kv_offload_{name}_usage_perc"),
                (cap[i] > 0).then(|| used[i] as f64 / cap[i] as f64),
            );
        }
    }
    // Replica-seconds within [0, t]: every replica up all along without cluster events, else each one's
    // up (or draining) time.
    let replica_seconds = |t: crate::time::SimTime| {
        if cfg.cluster.events.is_empty() {
            t.as_secs_f64() * cfg.cluster.replicas as f64
        } else {
            world
                .replicas
                .iter()
                .map(|r| r.stats.up_within(t))
                .sum::<u64>() as f64
                / 1e9
        }
    };
    let span = replica_seconds(world.counts.end);
    // Block usage means nothing for a store without blocks (conversation, off): null, not 0.

    s.set_opt(
        "kv_cache_usage_perc_mean",
        (blocks && span > 0.0).then(|| usage_s / span),
    );
    s.set_opt("kv_cache_usage_perc_peak", blocks.then_some(peak));
    s.set("steps", steps);
    // Request-level batching (zero for continuous batching): batches, their mean size, and the share
    // of the computed tokens that were padding (padding over padding + prompt tokens computed + output
    // tokens).
    let (mut batches, mut batched, mut padding) = (0u64, 0u64, 0u64);
    for r in &world.replicas {
        batches += r.stats.batches;
        batched += r.stats.batched_requests;
        padding += r.stats.padding_tokens;
    }
    s.set("batches", batches);
    s.set_opt(
        "batch_size_mean",
        (batches > 0).then(|| batched as f64 / batches as f64),
    );
    s.set("padding_tokens", padding);
    // Speculative decoding, as vLLM's `SpecDecodingStats` (zero and null without it).
    let mut spec = crate::speculative::SpecStats::default();
    for r in &world.replicas {
        spec.merge(&r.stats.spec);
    }
    s.set("spec_decode_num_drafts", spec.num_drafts);
    s.set("spec_decode_num_draft_tokens", spec.num_draft_tokens);
    s.set("spec_decode_num_accepted_tokens", spec.num_accepted_tokens);
    s.set_opt("spec_decode_acceptance_rate", spec.acceptance_rate());
    s.set_opt(
        "spec_decode_mean_acceptance_length",
        spec.mean_acceptance_length(),
    );
    // By draft position, `;`-separated as the summary's other lists (empty without speculation).
    s.set(
        "spec_decode_acceptance_rate_per_pos",
        spec.acceptance_rate_per_pos()
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(";"),
    );
    // Disaggregated serving's KV pulls (zero and null in an aggregated cluster).
    let (mut pulls, mut pull_bytes, mut pull_ns) = (0u64, 0u64, 0u64);
    for r in &world.replicas {
        pulls += r.stats.kv_transfers;
        pull_bytes += r.stats.kv_transfer_bytes;
        pull_ns += r.stats.kv_transfer_ns;
    }
    s.set("pd_kv_transfers", pulls);
    s.set("pd_kv_transfer_bytes", pull_bytes);
    s.set_opt(
        "pd_kv_transfer_mean_s",
        (pulls > 0).then(|| pull_ns as f64 / 1e9 / pulls as f64),
    );
    let m = &world.metrics;
    let real = m.prefilled_tokens + m.output_tokens;
    s.set_opt(
        "padding_waste_frac",
        (padding + real > 0).then(|| padding as f64 / (padding + real) as f64),
    );
    // The share of the run the engines were computing (a step in flight), averaged over replicas.
    let busy: f64 = world
        .replicas
        .iter()
        .map(|r| r.stats.busy.as_secs_f64())
        .sum();
    s.set_opt(
        "busy_frac",
        (dur > 0.0).then(|| busy / replica_seconds(m.last_finish)),
    );
    // Balance across replicas: requests and prompt tokens routed to each (mean, max, coefficient of
    // variation = population standard deviation / mean), and the spread of their prefix-cache hit rates.
    // Over the replicas that were ever up (a slot whose add_replica never came is left out).
    let per: Vec<&ReplicaSummary> = world
        .replicas
        .iter()
        .zip(replicas)
        .filter(|(r, _)| !r.stats.up.is_empty())
        .map(|(_, p)| p)
        .collect();
    for (key, mut xs) in [
        (
            "replica_requests",
            per.iter().map(|r| r.requests as f64).collect::<Vec<_>>(),
        ),
        (
            "replica_prompt_tokens",
            per.iter().map(|r| r.prompt_tokens as f64).collect(),
        ),
    ] {
        let d = describe(&mut xs);
        s.set_opt(&format!("{key}_mean"), d.mean);
        s.set_opt(&format!("{key}_max"), xs.last().copied());
        s.set_opt(
            &format!("{key}_cv"),
            d.mean
                .zip(d.std)
                .filter(|m| m.0 > 0.0)
                .map(|(m, sd)| sd / m),
        );
    }
    let rates: Vec<f64> = per.iter().filter_map(|r| r.prefix_cache_hit_rate).collect();
    s.set_opt(
        "replica_hit_rate_min",
        rates.iter().copied().reduce(f64::min),
    );
    s.set_opt(
        "replica_hit_rate_max",
        rates.iter().copied().reduce(f64::max),
    );
    // Where the engine's time went, by operator class (seconds summed over steps and replicas).
    // Every class is listed, zero where absent, so that summaries of any runs stack into one table.
    let mut ops: std::collections::BTreeMap<&str, u128> = Default::default();
    for r in &world.replicas {
        for &(op, fs) in &r.stats.op_fs {
            debug_assert!(
                OPERATOR_CLASSES.contains(&op),
                "operator class {op} is missing from cost::OPERATOR_CLASSES"
            );
            *ops.entry(op).or_default() += fs;
        }
    }
    for op in OPERATOR_CLASSES {
        let fs = ops.get(op).copied().unwrap_or(0);
        s.set(&format!("cost_{op}_s"), fs as f64 / 1e15);
    }
    s
}
