//! The command-line application: parse, dispatch, print, choose the exit code.

use crate::cli::{
    CalibrateArgs, CatalogKind, Cli, Command, CompareArgs, ConfigArgs, FormatArg,
    RooflineCheckArgs, RunArgs, StepCostArgs, ValidateArgs, WorkloadCommand,
};
use crate::config::{Config, TraceConfig, TraceFormat, WorkloadKind};
use crate::cost::catalog::{hardware_names, model_names, HardwareSpec, ModelShape};
use crate::error::{ConfigError, Error, OutputError};
use crate::metrics::output::write_file_atomically;
use crate::report::{compare, plot, CompareOptions, Vary};
use crate::run::{run, RunOptions, RunOutcome};
use crate::system::System;
use crate::workload::export::{generate_records, stats};
use crate::workload::trace::{self, native, Trace};
use clap::Parser;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Runs the CLI and returns the process exit code (0 ok, 2 bad input, 1 failure while writing). An
/// interrupt (SIGINT, SIGTERM, SIGHUP) removes the temporary outputs and exits with 128 + the signal from
/// the signal thread this installs.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    crate::metrics::output::install_signal_cleanup();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let result = match cli.command {
        Command::Run(a) => run_command(&a),
        Command::Catalog { what } => emit(&catalog_table(what)),
        Command::Workload { command } => workload_command(command),
        Command::Compare(a) => compare_command(&a),
        Command::Capacity(a) => capacity_command(&a),
        Command::Merge(a) => merge_command(&a),
        Command::Calibrate(a) => calibrate_command(&a),
        Command::Validate(a) => validate_command(&a),
        Command::RooflineCheck(a) => roofline_check_command(&a),
        Command::StepCost(a) => step_cost_command(&a),
    };
    match result {
        Ok(()) => 0,
        // The reader went away (`servesim ... | head -1`): what it read is all it wanted.
        Err(Error::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            warn(&format!("error: {e}"));
            e.exit_code()
        }
    }
}

/// Writes a command's report to standard output. A failure (a closed pipe, a full device) comes back as
/// [`Error::Stdout`]; no `print!`, which would panic.
fn emit(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

/// A CSV written to standard output failed: report it as [`Error::Stdout`], so that a closed pipe ends
/// the command quietly.
fn stdout_error(e: OutputError) -> Error {
    match &e {
        OutputError::Csv { source, .. } => {
            if let csv::ErrorKind::Io(io) = source.kind() {
                return Error::Stdout(std::io::Error::new(io.kind(), io.to_string()));
            }
        }
        OutputError::Io { source, .. } => {
            return Error::Stdout(std::io::Error::new(source.kind(), source.to_string()))
        }
        _ => {}
    }
    e.into()
}

/// A line on standard error, best effort: when stderr itself cannot be written there is no one to tell.
fn warn(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn run_command(a: &RunArgs) -> Result<(), Error> {
    let mut cfg = load_config(&a.source)?;
    if let Some(p) = &a.warm_start {
        cfg.kv.warm_start = Some(p.to_string_lossy().into_owned());
    }
    for w in cfg.notices() {
        warn(&format!("warning: {w}"));
    }
    let outcome = run(
        &cfg,
        &RunOptions {
            out: a.out.clone(),
            progress: !a.quiet,
            no_leap: a.no_leap,
            variant: String::new(),
            save_cache: a.save_cache.clone(),
            format: match a.format {
                crate::cli::RowFormatArg::Csv => crate::metrics::RowFormat::Csv,
                crate::cli::RowFormatArg::Parquet => crate::metrics::RowFormat::Parquet,
            },
        },
    )?;
    if !a.quiet {
        emit(&human_summary(&outcome))?;
    }
    Ok(())
}

fn capacity_command(a: &crate::cli::CapacityArgs) -> Result<(), Error> {
    use crate::capacity::{capacity, CapacityOptions, Goal};
    let cfg = load_config(&a.source)?;
    let goal = match (a.goal, a.rate) {
        (crate::cli::GoalArg::MaxRate, _) => Goal::MaxRate,
        (crate::cli::GoalArg::MinReplicas, Some(rate)) if rate.is_finite() && rate > 0.0 => {
            Goal::MinReplicas { rate }
        }
        (crate::cli::GoalArg::MinReplicas, r) => {
            return Err(ConfigError::invalid(
                "--rate",
                match r {
                    Some(r) => format!("--goal min-replicas needs a positive rate, got {r}"),
                    None => "--goal min-replicas needs --rate".to_string(),
                },
            )
            .into())
        }
    };
    let grid = a
        .grid
        .iter()
        .map(|g| crate::report::Vary::parse_flag(g, "--grid"))
        .collect::<Result<Vec<_>, _>>()?;
    let shard = match &a.shard {
        None => None,
        Some(t) => {
            let parsed = t.split_once('/').and_then(|(i, n)| {
                Some((i.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?))
            });
            match parsed {
                Some(s) => Some(s),
                None => {
                    return Err(ConfigError::invalid(
                        "--shard",
                        format!(
                            "\"{}\" is not I/N (e.g. --shard 2/8)",
                            crate::input::shorten(t, 40)
                        ),
                    )
                    .into())
                }
            }
        }
    };
    let o = capacity(
        &cfg,
        &CapacityOptions {
            shard,
            grid,
            goal,
            seeds: a.seeds,
            precision: a.precision,
            max_replicas: a.max_replicas,
            jobs: a.jobs,
            out: a.out.clone(),
            plot: Some(plot_format(a.png)),
            progress: !a.quiet,
        },
    )?;
    if !a.quiet {
        emit(&format!(
            "servesim capacity: {} probes\n{}\nwrote {}\n",
            o.probes.len(),
            o.answer,
            o.out_dir.display()
        ))?;
    }
    warn_plot(&o.plot);
    Ok(())
}

fn plot_format(png: bool) -> plot::Format {
    if png {
        plot::Format::Png
    } else {
        plot::Format::Svg
    }
}

/// A capacity plot that could not be drawn is a warning: the answer and its files are written.
fn warn_plot(p: &Option<Result<PathBuf, String>>) {
    if let Some(Err(why)) = p {
        warn(&format!("warning: no capacity plot: {why}"));
    }
}

fn merge_command(a: &crate::cli::MergeArgs) -> Result<(), Error> {
    let o = crate::capacity::merge(&a.dirs, a.out.clone(), Some(plot_format(a.png)))?;
    if !a.quiet {
        emit(&format!(
            "servesim merge: {} shards, {} probes\n{}\nwrote {}\n",
            a.dirs.len(),
            o.probes.len(),
            o.answer,
            o.out_dir.display()
        ))?;
    }
    warn_plot(&o.plot);
    Ok(())
}

fn compare_command(a: &CompareArgs) -> Result<(), Error> {
    let varies = a
        .vary
        .iter()
        .map(|v| Vary::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    let o = compare(&CompareOptions {
        config: a.source.config.clone(),
        set: a.source.set.clone(),
        varies,
        seeds: a.seeds,
        seed: a.source.seed,
        out: a.out.clone(),
        plot_format: plot_format(a.png),
        jobs: a.jobs,
    })?;
    if let Err(e) = &o.plots {
        warn(&format!("warning: plots not written: {e}"));
    }
    if !a.quiet {
        emit(&format!(
            "servesim compare: {} variants x {} seed(s); {} requests paired, {} unpaired\n{}wrote {}\n",
            o.variants.len(),
            o.seeds.len(),
            o.paired,
            o.unpaired,
            o.table,
            o.out_dir.display()
        ))?;
    }
    Ok(())
}

#[cfg(feature = "calibrate")]
fn calibrate_command(a: &CalibrateArgs) -> Result<(), Error> {
    use crate::calibrate::{calibrate, CalibrateOptions};
    let (scale, repeats) = if a.quick {
        (8, a.repeats)
    } else {
        (a.scale, a.repeats)
    };
    let out = a.out.clone().unwrap_or_else(|| {
        std::path::Path::new("results").join(format!(
            "profile-{}.toml",
            a.model.replace(['/', '\\'], "_")
        ))
    });
    crate::metrics::output::check_file_target(&out)?;
    let p = calibrate(&CalibrateOptions {
        model: a.model.clone(),
        scale,
        quick: a.quick,
        threads: a.threads,
        device: a.device.clone(),
        repeats,
        out: out.clone(),
        progress: !a.quiet,
    })?;
    if !a.quiet {
        let mut out_text = String::new();
        let w = &mut out_text;
        let _ = writeln!(
            w,
            "calibrated {} (widths / {scale}) on {} with {} thread(s), candle {}, in {:.1} s",
            a.model, p.host.cpu, p.host.threads, p.host.candle_version, p.host.seconds
        );
        let _ = writeln!(
            w,
            "{:<16} {:>7} {:>9} {:>14} {:>11}",
            "operator", "fitted", "held out", "median error", "max error"
        );
        for e in &p.errors {
            let _ = writeln!(
                w,
                "{:<16} {:>7} {:>9} {:>13.1}% {:>10.1}%",
                e.op,
                e.fitted_points,
                e.held_out_points,
                100.0 * e.median_rel_error,
                100.0 * e.max_rel_error
            );
        }
        let _ = writeln!(
            w,
            "all held-out points: median {:.1}%, max {:.1}%",
            100.0 * p.median_rel_error,
            100.0 * p.max_rel_error
        );
        let steps = p.raw.iter().filter(|r| r.op == "step").count();
        if let ([a0, a1, a2], Ok(m)) = (
            p.step_residual.coef.as_slice(),
            crate::cost::catalog::ModelShape::load(&a.model)
                .and_then(|m| m.scaled(scale, "--scale")),
        ) {
            // The features of one layer-step, one decode sequence, one prefill token.
            let mut one = crate::cost::BatchShape::default();
            one.add(1, 1, false, false);
            let f = crate::cost::calibrated::residual_features(&m, &one);
            let _ = writeln!(
                w,
                "step residual, fitted to {steps} whole steps: {:.3} ms a step + {:.3} ms a decode sequence + \
                 {:.4} ms a prefill token",
                1e3 * a0 * f[0],
                1e3 * a1 * f[0],
                1e3 * a2 * f[2]
            );
        }
        let _ = writeln!(
            w,
            "wrote {} (use: --set cost.kind=calibrated --set cost.profile={})",
            out.display(),
            out.display()
        );
        emit(&out_text)?;
    }
    Ok(())
}

#[cfg(feature = "calibrate")]
fn validate_command(a: &ValidateArgs) -> Result<(), Error> {
    let o = crate::validate::validate(&crate::validate::ValidateOptions {
        config: a.source.config.clone(),
        set: a.source.set.clone(),
        seed: a.source.seed,
        quick: a.quick,
        profile: a.profile.clone(),
        noise_steps: a.noise_steps,
        noise_repeats: a.noise_repeats,
        out: a.out.clone(),
        progress: !a.quiet,
    })?;
    if !a.quiet {
        emit(&format!("{}wrote {}\n", o.text, o.out_dir.display()))?;
    }
    Ok(())
}

#[cfg(not(feature = "calibrate"))]
fn validate_command(_a: &ValidateArgs) -> Result<(), Error> {
    Err(ConfigError::invalid(
        "validate",
        "this servesim was built without the `calibrate` feature; rebuild with default features",
    )
    .into())
}

#[cfg(not(feature = "calibrate"))]
fn calibrate_command(_a: &CalibrateArgs) -> Result<(), Error> {
    Err(ConfigError::invalid(
        "calibrate",
        "this servesim was built without the `calibrate` feature; rebuild with default features",
    )
    .into())
}

fn roofline_check_command(a: &RooflineCheckArgs) -> Result<(), Error> {
    let mut set = a.source.set.clone();
    set.push(format!("model.name=\"{}\"", a.model));
    set.push(format!("hardware.name=\"{}\"", a.hardware));
    let cfg = load_config(&ConfigArgs {
        config: a.source.config.clone(),
        set,
        seed: a.source.seed,
    })?;
    let sys = System::resolve(&cfg)?;
    let roof = sys.roofline(&cfg)?;
    let mut out_text = String::new();
    let w = &mut out_text;
    if let Some(path) = &a.attention {
        attention_check(w, path, &roof, a)?;
    }
    let Some(table_path) = &a.table else {
        return emit(&out_text);
    };
    let table = crate::cost::table::read_mlp_table(table_path, &sys.model, 1)?;
    let rows = crate::cost::table::roofline_vs_table(&table, &roof, &[1, 8, 64, 512, 2048, 4096]);
    let _ = writeln!(
        w,
        "roofline vs measured, per layer: {} on {} (compute eff {}, memory eff {}); table {}",
        a.model,
        a.hardware,
        cfg.cost.roofline.compute_efficiency,
        cfg.cost.roofline.memory_efficiency,
        table_path.display()
    );
    let _ = writeln!(
        w,
        "{:<10} {:>7} {:>12} {:>12} {:>8}",
        "operator", "tokens", "measured_ms", "roofline_ms", "ratio"
    );
    for r in &rows {
        let _ = writeln!(
            w,
            "{:<10} {:>7} {:>12.4} {:>12.4} {:>8.2}",
            r.op,
            r.tokens,
            r.measured_s * 1e3,
            r.roofline_s * 1e3,
            r.roofline_s / r.measured_s
        );
    }
    emit(&out_text)
}

/// `servesim step-cost`: one step's predicted duration and breakdown.
fn step_cost_command(a: &StepCostArgs) -> Result<(), Error> {
    let cfg = load_config(&a.source)?;
    let shape = step_shape(&a.prefill, &a.decode)?;
    let sys = System::resolve(&cfg)?;
    let cost = sys.cost_model(&cfg)?;
    let ops = cost.breakdown(&shape);
    let step_s = crate::cost::step_duration(crate::cost::total_seconds(&ops)).as_secs_f64();
    if a.json {
        let mut m = serde_json::Map::new();
        for o in ops.iter() {
            m.insert(o.op.to_string(), o.seconds.into());
        }
        let v = serde_json::json!({ "step_s": step_s, "ops": m });
        return emit(&format!("{v}\n"));
    }
    let b = &shape.sums;
    let mut text = String::new();
    let w = &mut text;
    let _ = writeln!(
        w,
        "step of {} on {} ({} cost model, tensor parallel {}): {} prefill tokens in {} chunk{}, {} \
         decode sequence{} reading {} context tokens",
        cfg.model.name,
        cfg.hardware.name,
        cost.name(),
        cfg.hardware.tensor_parallel,
        b.prefill_tokens,
        b.prefill_seqs,
        if b.prefill_seqs == 1 { "" } else { "s" },
        b.decode_seqs,
        if b.decode_seqs == 1 { "" } else { "s" },
        b.decode_context_tokens
    );
    let _ = writeln!(w, "  step time {:.6} ms", step_s * 1e3);
    for o in ops.iter().filter(|o| o.seconds != 0.0) {
        let _ = writeln!(
            w,
            "  {:<26} {:>12.6} ms {:>6.1}%",
            o.op,
            o.seconds * 1e3,
            100.0 * o.seconds / step_s
        );
    }
    emit(&text)
}

/// The step `--prefill` and `--decode` describe (every chunk and sequence samples a row). Errors name
/// the flag and the form expected.
fn step_shape(
    prefill: &[String],
    decode: &[String],
) -> Result<crate::cost::StepShape, ConfigError> {
    // A step of at most 2^24 prefill tokens, contexts of at most 2^24 tokens and 2^20 decode sequences:
    // far past any engine, and the step's sums stay exact in 64 bits.
    const MAX_TOKENS: u32 = 1 << 24;
    const MAX_SEQS: u64 = 1 << 20;
    fn number(flag: &str, arg: &str, part: &str, what: &str) -> Result<u32, ConfigError> {
        match part.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_TOKENS).contains(&n) => Ok(n),
            _ => Err(ConfigError::invalid(
                format!("{flag} {arg}"),
                format!("{what} must be a whole number from 1 to {MAX_TOKENS}, not \"{part}\""),
            )),
        }
    }
    if prefill.is_empty() && decode.is_empty() {
        return Err(ConfigError::invalid(
            "step-cost",
            "the step is empty: give at least one --prefill T[@C] or --decode B@L",
        ));
    }
    let mut shape = crate::cost::StepShape::default();
    for arg in prefill {
        let (t, c) = match arg.split_once('@') {
            None => {
                let t = number("--prefill", arg, arg, "the chunk's tokens T")?;
                (t, t)
            }
            Some((t, c)) => (
                number("--prefill", arg, t, "the chunk's tokens T")?,
                number("--prefill", arg, c, "the context C")?,
            ),
        };
        if c < t {
            return Err(ConfigError::invalid(
                format!("--prefill {arg}"),
                format!("the context C ({c}) includes the chunk, so it cannot be below T ({t})"),
            ));
        }
        shape.add(t, c, false, true);
        if shape.sums.prefill_tokens > MAX_TOKENS as u64 {
            return Err(ConfigError::invalid(
                format!("--prefill {arg}"),
                format!("at most {MAX_TOKENS} prefill tokens in one step"),
            ));
        }
    }
    for arg in decode {
        let Some((b, l)) = arg.split_once('@') else {
            return Err(ConfigError::invalid(
                format!("--decode {arg}"),
                "expected B@L: B sequences at context L, e.g. --decode 64@2048",
            ));
        };
        let b = number("--decode", arg, b, "the sequence count B")? as u64;
        let l = number("--decode", arg, l, "the context L")? as u64;
        let s = &mut shape.sums;
        if s.decode_seqs + b > MAX_SEQS {
            return Err(ConfigError::invalid(
                format!("--decode {arg}"),
                format!("at most {MAX_SEQS} decode sequences in one step"),
            ));
        }
        // As B calls of `add(1, L, decode, samples)`.
        s.decode_seqs += b;
        s.decode_context_tokens += b * l;
        s.decode_max_context = s.decode_max_context.max(l);
        s.sampled += b;
    }
    Ok(shape)
}

/// `roofline-check --attention`: the roofline's attention against each measured row, with the median and
/// worst error per (kind, backend).
fn attention_check(
    w: &mut String,
    path: &Path,
    roof: &crate::cost::roofline::Roofline,
    a: &RooflineCheckArgs,
) -> Result<(), Error> {
    let rows = crate::cost::table::read_attention_rows(path)?;
    let roofline = crate::cost::table::roofline_attention(&rows, roof);
    let _ = writeln!(
        w,
        "roofline vs measured attention, per layer: {} on {}; table {}",
        a.model,
        a.hardware,
        path.display()
    );
    let mut groups: std::collections::BTreeMap<(bool, &str), Vec<f64>> = Default::default();
    for (r, rf) in rows.iter().zip(&roofline) {
        groups
            .entry((r.is_decode(), r.backend.as_str()))
            .or_default()
            .push(rf / r.secs - 1.0);
    }
    let _ = writeln!(
        w,
        "{:<8} {:<16} {:>5} {:>18} {:>14}",
        "kind", "backend", "rows", "median |error| %", "worst error %"
    );
    for ((decode, backend), errs) in &groups {
        let mut abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let n = abs.len();
        let median = if n % 2 == 1 {
            abs[n / 2]
        } else {
            (abs[n / 2 - 1] + abs[n / 2]) / 2.0
        };
        let worst = errs
            .iter()
            .copied()
            .fold(0.0f64, |m, e| if e.abs() > m.abs() { e } else { m });
        let _ = writeln!(
            w,
            "{:<8} {:<16} {:>5} {:>18.1} {:>+14.1}",
            if *decode { "decode" } else { "prefill" },
            backend,
            errs.len(),
            100.0 * median,
            100.0 * worst
        );
    }
    let _ = writeln!(
        w,
        "{:<22} {:<16} {:>12} {:>12} {:>8}",
        "case", "backend", "measured_ms", "roofline_ms", "ratio"
    );
    for (r, rf) in rows.iter().zip(&roofline) {
        let _ = writeln!(
            w,
            "{:<22} {:<16} {:>12.5} {:>12.5} {:>8.2}",
            r.case,
            r.backend,
            r.secs * 1e3,
            rf * 1e3,
            rf / r.secs
        );
    }
    let _ = writeln!(w);
    Ok(())
}

fn load_config(a: &ConfigArgs) -> Result<Config, ConfigError> {
    Config::load_seeded(a.config.as_deref(), &a.set, a.seed, "--seed")
}

fn workload_command(c: WorkloadCommand) -> Result<(), Error> {
    match c {
        WorkloadCommand::Export { source, out } => {
            if out.as_os_str() != "-" {
                crate::metrics::output::check_file_target(&out)?;
            }
            let cfg = load_config(&source)?;
            if cfg.workload.kind != WorkloadKind::Conversational {
                return Err(ConfigError::invalid(
                    "workload.kind",
                    "export writes generated (conversational) workloads; a trace is already a trace",
                )
                .into());
            }
            let sys = System::resolve(&cfg)?;
            let records = generate_records(&cfg, sys.sizing.max_model_len);
            if out.as_os_str() == "-" {
                native::write(&records, std::io::stdout().lock(), Path::new("-"))
                    .map_err(stdout_error)?;
                warn(&format!(
                    "wrote {} requests to standard output",
                    records.len()
                ));
                return Ok(());
            }
            // Written beside the target and renamed, so a failure leaves no partial file.
            write_file_atomically(&out, |tmp| {
                let f = std::fs::File::create(tmp).map_err(|source| OutputError::Io {
                    path: out.clone(),
                    source,
                })?;
                native::write(&records, std::io::BufWriter::new(f), &out)
            })?;
            emit(&format!(
                "wrote {} requests to {}\n",
                records.len(),
                out.display()
            ))
        }
        WorkloadCommand::Stats {
            file,
            format,
            block_tokens,
            source,
        } => {
            if block_tokens == 0 {
                return Err(ConfigError::invalid(
                    "--block-tokens",
                    "must be at least 1 (Mooncake traces use 512 tokens per hash id)",
                )
                .into());
            }
            let (trace, what) = match file {
                Some(path) => {
                    let format = match format {
                        Some(FormatArg::Mooncake) => TraceFormat::Mooncake,
                        Some(FormatArg::Azure) => TraceFormat::Azure,
                        Some(FormatArg::Burstgpt) => TraceFormat::Burstgpt,
                        Some(FormatArg::Servesim) => TraceFormat::Servesim,
                        None => trace::detect_format(&path)?,
                    };
                    let tc = TraceConfig {
                        format,
                        path: path.display().to_string(),
                        block_tokens,
                        ..TraceConfig::default()
                    };
                    (
                        trace::read(&tc)?,
                        format!("{} ({format:?})", path.display()),
                    )
                }
                None => {
                    let cfg = load_config(&source)?;
                    let sys = System::resolve(&cfg)?;
                    let trace = match cfg.workload.kind {
                        // What the run replays: the window and bounds applied.
                        WorkloadKind::Trace => trace::TraceWorkload::load(
                            &cfg.workload.trace,
                            cfg.workload.duration_s,
                            cfg.workload.max_requests,
                            sys.sizing.max_model_len,
                            crate::system::rate_shape(&cfg),
                        )?
                        .into_trace(),
                        WorkloadKind::Conversational => Trace {
                            records: generate_records(&cfg, sys.sizing.max_model_len),
                            has_sessions: true,
                            failed_rows: 0,
                            content: "generated: shared system prompts and session history".into(),
                        },
                    };
                    let name = source
                        .config
                        .as_ref()
                        .map_or("the embedded default".into(), |p| p.display().to_string());
                    (trace, format!("workload of {name}"))
                }
            };
            emit(&format!("workload stats: {what}\n{}", stats(&trace, 16)))
        }
    }
}

/// The `servesim catalog` table.
fn catalog_table(what: CatalogKind) -> String {
    let mut out = String::new();
    let w = &mut out;
    match what {
        CatalogKind::Models => {
            let _ = writeln!(
                w,
                "{:<18} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>8} {:>10} {:>9}  features",
                "name",
                "params_B",
                "active_B",
                "weights_GB",
                "layers",
                "heads",
                "kv",
                "hidden",
                "kv_B/token",
                "max_len"
            );
            for n in model_names() {
                let m = ModelShape::load(n).expect("catalog models load (tested)");
                let mut features = m.features();
                if let Some(w) = &m.sliding_window {
                    features = features.replace(
                        "sliding-window attention",
                        &format!("window {} on {} layers", w.window, w.layers),
                    );
                }
                if let Some(e) = &m.moe {
                    features = features.replace(
                        "mixture of experts",
                        &format!("{} experts, top {}", e.num_experts, e.top_k),
                    );
                }
                if let Some(q) = &m.quant {
                    features = features
                        .replace("quantized weights", &format!("{} {}-bit", q.method, q.bits));
                }
                let _ = writeln!(
                    w,
                    "{:<18} {:>9.2} {:>9.2} {:>10.1} {:>7} {:>6} {:>6} {:>8} {:>10} {:>9}  {}",
                    n,
                    m.total_params() as f64 / 1e9,
                    m.active_params() as f64 / 1e9,
                    m.weight_bytes() as f64 / 1e9,
                    m.num_layers,
                    m.num_heads,
                    m.num_kv_heads,
                    m.hidden_size,
                    m.kv_bytes_per_token(),
                    m.max_position_embeddings,
                    if features.is_empty() {
                        "dense".to_string()
                    } else {
                        features
                    }
                );
            }
        }
        CatalogKind::Hardware => {
            let _ = writeln!(
                w,
                "{:<12} {:>12} {:>10} {:>11}  device",
                "name", "bf16_TFLOPs", "mem_GB/s", "memory_GiB"
            );
            for n in hardware_names() {
                let h = HardwareSpec::load(&n).expect("catalog hardware loads (tested)");
                let _ = writeln!(
                    w,
                    "{:<12} {:>12.1} {:>10.0} {:>11.2}  {}",
                    n, h.peak_bf16_tflops, h.memory_bandwidth_gbps, h.memory_gib, h.device_name
                );
            }
        }
    }
    out
}

/// A short human-readable summary of a run.
/// The warm-up and the overload verdict, in words.
fn steady_state_line(s: &crate::metrics::Summary) -> String {
    let w = s.get_f64("warmup_s").unwrap_or(0.0);
    let warmup = if w > 0.0 {
        format!("warm-up {w:.0} s left out")
    } else {
        "no warm-up left out".to_string()
    };
    let settled = match s.0.get("warmup_settled").and_then(serde_json::Value::as_bool) {
        Some(true) => "sessions and KV usage steady",
        Some(false) => {
            "sessions or KV usage STILL TRENDING (not in steady state: lengthen workload.duration_s)"
        }
        None => "steadiness unknown (fewer than 20 samples after the warm-up)",
    };
    let queue = match (
        s.0.get("stable").and_then(serde_json::Value::as_bool),
        s.get_f64("queue_growth_per_s"),
    ) {
        (Some(true), _) => "queue stable".to_string(),
        (Some(false), Some(g)) => {
            format!("UNSTABLE: the waiting queue grows {g:.2} requests/s (overloaded)")
        }
        _ => "stability unknown (fewer than 10 samples after the warm-up)".to_string(),
    };
    format!("steady     {warmup}; {settled}; {queue}")
}

pub fn human_summary(o: &RunOutcome) -> String {
    let s = &o.summary;
    let f = |k: &str| s.get_f64(k).unwrap_or(f64::NAN);
    let ms = |k: &str| f(k) * 1e3;
    let mut out = String::new();
    use std::fmt::Write;
    if s.0["cluster_mode"].as_str() == Some("disaggregated") {
        let pool = |p: &str| {
            format!(
                "{} {p} x {} ({} GPU(s) each; {} KV blocks each)",
                s.0[format!("{p}_replicas").as_str()],
                s.0[format!("{p}_hardware").as_str()]
                    .as_str()
                    .unwrap_or("?"),
                s.0[format!("{p}_tensor_parallel").as_str()],
                s.0[format!("{p}_num_gpu_blocks").as_str()],
            )
        };
        let _ = writeln!(
            out,
            "servesim run: {} on {} + {} = {} GPU(s), disaggregated, cost model {}",
            s.0["model"].as_str().unwrap_or("?"),
            pool("prefill"),
            pool("decode"),
            s.0["gpus"],
            s.0["cost_model"].as_str().unwrap_or("?"),
        );
    } else {
        let _ = writeln!(
            out,
            "servesim run: {} on {} ({} replica(s) x {} GPU(s) = {} GPU(s); {} KV blocks per replica), cost model {}",
            s.0["model"].as_str().unwrap_or("?"),
            s.0["hardware"].as_str().unwrap_or("?"),
            s.0["replicas"],
            s.0["tensor_parallel"],
            s.0["gpus"],
            s.0["num_gpu_blocks"],
            s.0["cost_model"].as_str().unwrap_or("?"),
        );
    }
    let failed = match s.0["requests_failed"].as_u64() {
        Some(n) if n > 0 => format!(", {n} recorded failures (not run)"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  requests   {} finished, {} rejected, {} unfinished{failed}, from {} sessions over {:.1} s of virtual time",
        s.0["requests_finished"], s.0["requests_rejected"], s.0["requests_unfinished"], s.0["sessions"], f("duration_s")
    );
    // Overload: shown only when something was refused, abandoned or retried.
    let n = |k: &str| s.0.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let overload = n("rejected_queue_full")
        + n("rejected_unavailable")
        + n("requests_timed_out")
        + n("requests_aborted")
        + n("requests_retried");
    if overload > 0 {
        let _ = writeln!(
            out,
            "  overload   success rate {:.1}% of {} offered: {} queue full (429), {} unavailable (503), {} \
             timed out, {} aborted by restarts or model swaps, {} retries",
            100.0 * f("success_rate"),
            n("requests_offered"),
            n("rejected_queue_full"),
            n("rejected_unavailable"),
            n("requests_timed_out"),
            n("requests_aborted"),
            n("requests_retried"),
        );
    }
    let _ = writeln!(
        out,
        "  throughput {:.2} req/s, {:.0} output tok/s, {:.0} total tok/s",
        f("request_throughput_rps"),
        f("output_throughput_tps"),
        f("total_token_throughput_tps")
    );
    for (name, key) in [
        ("TTFT", "ttft"),
        ("TPOT", "tpot"),
        ("ITL", "itl"),
        ("E2E", "e2e"),
    ] {
        let _ = writeln!(
            out,
            "  {:<4} ms    mean {:>9.2}  median {:>9.2}  p90 {:>9.2}  p99 {:>9.2}",
            name,
            ms(&format!("{key}_mean_s")),
            ms(&format!("{key}_median_s")),
            ms(&format!("{key}_p90_s")),
            ms(&format!("{key}_p99_s")),
        );
    }
    if s.0.get("percentiles_exact") == Some(&serde_json::Value::Bool(false)) {
        let _ = writeln!(
            out,
            "  (TTFT, TPOT, E2E and queue percentiles from a quantile sketch, 0.1% relative error: more \
             finished requests than output.exact_percentiles_up_to; means and stds exact)"
        );
    }
    if let Some(g) = s.get_f64("goodput_rps") {
        let _ = writeln!(out, "  goodput    {g:.2} req/s within the SLOs");
    }
    let _ = writeln!(out, "  {}", steady_state_line(s));
    if let Some(Some(met)) = s.0.get("slo_met").map(serde_json::Value::as_bool) {
        let missed = s.0["slo_missed"].as_str().unwrap_or_default();
        let line = if met {
            format!("met ({})", s.0["slo_criteria"].as_str().unwrap_or_default())
        } else {
            let each: Vec<String> = missed
                .split(';')
                .map(|k| match s.get_f64(k) {
                    Some(v) => format!("{k} = {v:.4}"),
                    None if k == "stable" => "queue not stable".into(),
                    None => format!("{k} (no value)"),
                })
                .collect();
            format!(
                "missed: {} (criteria {})",
                each.join(", "),
                s.0["slo_criteria"].as_str().unwrap_or_default()
            )
        };
        let _ = writeln!(out, "  SLO        {line}");
    }
    match s.0["kv_cache"].as_str() {
        Some("conversation") => {
            let _ = writeln!(
                out,
                "  KV store   {} of {} turns reused their conversation's KV ({} of {} prompt tokens), {} \
                 evictions, {} releases, peak {} tokens",
                s.0["kv_store_hits"],
                s.0["kv_store_lookups"],
                s.0["prefix_cache_hits"],
                s.0["prefix_cache_queries"],
                s.0["kv_store_evictions"],
                s.0["kv_store_releases"],
                s.0["kv_store_tokens_peak"]
            );
        }
        Some("off") => {
            let _ = writeln!(out, "  KV cache   off: every token recomputes its context");
        }
        _ => {
            let _ = writeln!(
                out,
                "  prefix cache hit rate {:.1}% ({} of {} queried tokens), prefill saved {:.1}%, {} \
                 evictions{}",
                100.0 * f("prefix_cache_hit_rate"),
                s.0["prefix_cache_hits"],
                s.0["prefix_cache_queries"],
                100.0 * f("prefill_tokens_saved_frac"),
                s.0["kv_cache_evictions"],
                if s.0["kv_cache"].as_str() == Some("radix") {
                    " (tokens)"
                } else {
                    " (blocks)"
                }
            );
            if let Some(rate) = s.get_f64("sglang_cache_hit_rate") {
                let _ = writeln!(
                    out,
                    "  radix      SGLang cache_hit_rate {:.1}% (hit / (hit + new input) tokens over prefill \
                     batches); {} tokens deduplicated at insertion, {} in the tree at the end",
                    100.0 * rate,
                    s.0["radix_deduplicated_tokens"],
                    s.0["radix_tree_tokens"]
                );
                if f("hicache_written_tokens") > 0.0 {
                    let _ = writeln!(
                        out,
                        "  hicache    {} host tokens matched, {} loaded ({:.3} s of copies), {} copied to host, \
                         {} deleted from host, {} held at the end",
                        s.0["hicache_host_hit_tokens"],
                        s.0["hicache_loaded_tokens"],
                        f("hicache_load_s"),
                        s.0["hicache_written_tokens"],
                        s.0["hicache_host_evicted_tokens"],
                        s.0["hicache_host_tokens"]
                    );
                }
            }
            if let Some(ext) = s.get_f64("external_prefix_cache_hits") {
                let cached = f("prompt_tokens_cached").max(1.0);
                let _ = writeln!(
                    out,
                    "  offload    {} tokens loaded from tiers ({:.1}% of the cached tokens from CPU, {:.1}% from \
                     disk), {:.3} s of loads, {:.2} GB loaded",
                    ext,
                    100.0 * f("prompt_tokens_cached_cpu") / cached,
                    100.0 * f("prompt_tokens_cached_disk") / cached,
                    f("kv_offload_load_s"),
                    (f("kv_offload_cpu_loaded_bytes") + f("kv_offload_disk_loaded_bytes")) / 1e9
                );
            }
            let _ = writeln!(
                out,
                "  KV usage mean {:.1}%, peak {:.1}%; {} preemptions{}; {} steps",
                100.0 * f("kv_cache_usage_perc_mean"),
                100.0 * f("kv_cache_usage_perc_peak"),
                s.0["num_preemptions"],
                if s.0["kv_cache"].as_str() == Some("radix") {
                    " (retractions)"
                } else {
                    ""
                },
                s.0["steps"]
            );
        }
    }
    if let Some(b) = s.get_f64("batch_size_mean") {
        let _ = writeln!(
            out,
            "  batches    {}, mean size {b:.2}, padding {:.1}% of the tokens computed",
            s.0["batches"],
            100.0 * f("padding_waste_frac")
        );
    }
    // The stores with blocks print their steps on the KV usage line.
    if !matches!(s.0["kv_cache"].as_str(), Some("paged" | "radix")) {
        let _ = writeln!(out, "  steps      {}", s.0["steps"]);
    }
    let _ = writeln!(
        out,
        "  wrote {} ({} events, {} steps advanced by leaps, in {:.2} s wall)",
        o.out_dir.display(),
        o.events,
        o.leapt_steps,
        o.wall_seconds
    );
    out
}
