//! Typed errors. Every message says what is wrong, where, and what to do about it.

use std::path::PathBuf;
use thiserror::Error;

/// The most characters of one user-supplied text an error message repeats: a message echoes what was
/// wrong, never a whole 150 MB field.
pub const MAX_ECHO_CHARS: usize = 1000;

fn cap(s: &str) -> String {
    crate::input::shorten(s, MAX_ECHO_CHARS)
}

/// Errors from user input: configuration files, overrides, catalogs, traces. They exit with code 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// An input file that cannot be opened or read; `what` says which kind ("trace file", ...).
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A TOML syntax or schema error; `message` carries the key path and, for files, the line and column.
    #[error("{}: {}", cap(origin), cap(message))]
    Parse { origin: String, message: String },
    #[error(
        "--set {}: {}. Write overrides as key.path=value, e.g. --set engine.prefix_caching=false",
        cap(arg),
        cap(message)
    )]
    BadOverride { arg: String, message: String },
    /// A value that parsed but makes no sense.
    #[error("{}: {}", cap(key), cap(message))]
    Invalid { key: String, message: String },
    #[error(
        "{key} = \"{}\" is not in the catalog; known: {known}. To fix: {hint}",
        cap(name)
    )]
    UnknownCatalogEntry {
        key: String,
        name: String,
        known: String,
        /// What to do instead (catalog-specific).
        hint: &'static str,
    },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Errors while writing a run's outputs.
#[derive(Debug, Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write CSV {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("output directory {path} exists and is not a servesim run directory (no resolved.toml); choose another --out or remove it")]
    NotARunDir { path: PathBuf },
    /// An output location servesim will not write to (it would destroy something not its own).
    #[error("will not write to {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

impl OutputError {
    /// Wraps a CSV error with the file it came from (`.map_err(OutputError::csv(&path))`).
    pub fn csv(path: &std::path::Path) -> impl Fn(csv::Error) -> OutputError + Copy + '_ {
        move |source| OutputError::Csv {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Any error servesim reports.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Standard output could not be written. A closed pipe (`servesim ... | head -1`) is not a failure:
    /// the command ends quietly with exit code 0.
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),
}

impl Error {
    /// The process exit code: 2 for bad input (the user can fix it; an output location that servesim
    /// refuses is one), 1 for failures while writing.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            Error::Output(OutputError::NotARunDir { .. } | OutputError::Refused { .. }) => 2,
            Error::Output(_) => 1,
            Error::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Error::Stdout(_) => 1,
        }
    }
}
