//! The `servesim._servesim` extension module: the narrow core behind the Python package
//! (`python/servesim/__init__.py` is the API users call and documents it).
//!
//! Two functions, `run` and `compare`, each the CLI command of that name run in-process: the same config
//! loading (`Config::load` with `--set` overrides and `--seed`), the same simulation and the same output
//! directory, written where the caller says. The Python side reads that directory into DataFrames. The
//! GIL is released while a simulation runs. Errors become exceptions carrying the CLI's message (file,
//! line, key and what to do): [`ConfigError`] (a `ValueError`) for what the CLI exits 2 on, bad input;
//! [`ServesimError`] (a `RuntimeError`) for the rest (a failure writing outputs).

use pyo3::create_exception;
use pyo3::prelude::*;
use servesim::config::Config;
use servesim::error::Error;
use std::path::PathBuf;

// A run makes millions of small, short-lived allocations; mimalloc as in the CLI (`src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _servesim,
    ServesimError,
    pyo3::exceptions::PyRuntimeError,
    "A simulation could not complete (its outputs could not be written)."
);
create_exception!(
    _servesim,
    ConfigError,
    pyo3::exceptions::PyValueError,
    "Bad input: a config file, key or value, a trace or a path (the message names it and what to do)."
);

fn to_py(e: Error) -> PyErr {
    // The CLI prints the message as a line of its own; an exception carries it without the newline.
    let msg = e.to_string().trim_end().to_string();
    if e.exit_code() == 2 {
        ConfigError::new_err(msg)
    } else {
        ServesimError::new_err(msg)
    }
}

/// Runs one simulation (`servesim run`) and writes its outputs to `out` (created; a previous run
/// directory there is replaced, anything else refused, as the CLI does), the per-request file as
/// `requests.parquet` with `parquet`. Returns the warnings and the human summary the CLI prints.
#[pyfunction]
#[pyo3(signature = (out, config=None, sets=Vec::new(), seed=None, no_leap=false, parquet=false))]
fn run(
    py: Python<'_>,
    out: PathBuf,
    config: Option<PathBuf>,
    sets: Vec<String>,
    seed: Option<u64>,
    no_leap: bool,
    parquet: bool,
) -> PyResult<(Vec<String>, String)> {
    py.detach(|| -> Result<_, Error> {
        let cfg = Config::load_seeded(config.as_deref(), &sets, seed, "seed")?;
        let warnings = cfg.notices();
        let outcome = servesim::run::run(
            &cfg,
            &servesim::run::RunOptions {
                out: Some(out),
                progress: false,
                no_leap,
                variant: String::new(),
                save_cache: None,
                format: if parquet {
                    servesim::metrics::RowFormat::Parquet
                } else {
                    servesim::metrics::RowFormat::Csv
                },
            },
        )?;
        Ok((warnings, servesim::app::human_summary(&outcome)))
    })
    .map_err(to_py)
}

/// Runs a comparison (`servesim compare`): `varies` are `--vary` arguments (`KEY=V1,V2,...`, values in
/// TOML). Writes its directory to `out`; returns the warnings (plots not drawn) and the terminal table.
#[pyfunction]
#[pyo3(signature = (out, varies, config=None, sets=Vec::new(), seed=None, seeds=1, jobs=0, png=false))]
#[allow(clippy::too_many_arguments)]
fn compare(
    py: Python<'_>,
    out: PathBuf,
    varies: Vec<String>,
    config: Option<PathBuf>,
    sets: Vec<String>,
    seed: Option<u64>,
    seeds: u32,
    jobs: usize,
    png: bool,
) -> PyResult<(Vec<String>, String)> {
    use servesim::report::{compare, plot, CompareOptions, Vary};
    py.detach(|| -> Result<_, Error> {
        let varies = varies
            .iter()
            .map(|v| Vary::parse(v))
            .collect::<Result<Vec<_>, _>>()?;
        let o = compare(&CompareOptions {
            config,
            set: sets,
            varies,
            seeds,
            seed,
            out: Some(out),
            plot_format: if png {
                plot::Format::Png
            } else {
                plot::Format::Svg
            },
            jobs,
        })?;
        let mut warnings = Vec::new();
        if let Err(e) = &o.plots {
            warnings.push(format!("plots not written: {e}"));
        }
        Ok((warnings, o.table))
    })
    .map_err(to_py)
}

#[pymodule]
fn _servesim(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add("ServesimError", m.py().get_type::<ServesimError>())?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
