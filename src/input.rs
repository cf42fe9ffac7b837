//! Reading the files a user names (configs, traces, catalogs, model configs, profiles, tables) safely:
//! only regular files, within a size this machine can hold, as UTF-8 text with any byte-order mark
//! dropped, and with no line longer than [`MAX_LINE_BYTES`]. A device, a FIFO or a directory is an error
//! naming the file, never an endless read.

use crate::error::ConfigError;
use std::path::Path;

/// The longest line any input may have (a Mooncake record with a million hash ids is about 10 MiB).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The largest config-like input (TOML, JSON, profiles, tables): far beyond any real one.
pub const MAX_SMALL_FILE_BYTES: u64 = 64 << 20;

/// What kind of file an input is, for messages ("cannot read trace file x: ...").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Config,
    Trace,
    HardwareCatalog,
    ModelConfig,
    Profile,
    Table,
    CapacityPart,
}

impl InputKind {
    pub fn describe(self) -> &'static str {
        match self {
            InputKind::Config => "config file",
            InputKind::Trace => "trace file",
            InputKind::HardwareCatalog => "hardware catalog",
            InputKind::ModelConfig => "model config.json",
            InputKind::Profile => "calibration profile",
            InputKind::Table => "operator table",
            InputKind::CapacityPart => "capacity shard",
        }
    }

    fn max_bytes(self) -> u64 {
        match self {
            // A trace is held in memory with its parsed records: a Mooncake hash id of 2 characters
            // becomes 24 bytes, so up to 12 times its text. At most a sixteenth of this machine's memory.
            InputKind::Trace | InputKind::CapacityPart => {
                crate::memory::physical_bytes().map_or(u64::MAX, |m| m / 16)
            }
            _ => MAX_SMALL_FILE_BYTES,
        }
    }
}

fn read_error(kind: InputKind, path: &Path, source: std::io::Error) -> ConfigError {
    ConfigError::Read {
        what: kind.describe(),
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(kind: InputKind, path: &Path, message: String) -> ConfigError {
    ConfigError::Parse {
        origin: format!("{} {}", kind.describe(), path.display()),
        message,
    }
}

/// Reads `path` as text after the checks in the module docs.
pub fn read_text(kind: InputKind, path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| read_error(kind, path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(invalid(
            kind,
            path,
            format!("it is {what}; give the path of a regular file"),
        ));
    }
    let max = kind.max_bytes();
    if meta.len() > max {
        return Err(invalid(
            kind,
            path,
            format!(
                "it is {} bytes, more than the limit of {} bytes for a {}{}; cut it (e.g. with head)",
                meta.len(),
                max,
                kind.describe(),
                if kind == InputKind::Trace {
                    " (a sixteenth of this machine's memory)"
                } else {
                    ""
                }
            ),
        ));
    }
    // Bounded by the size checked above (the file could grow meanwhile: read no more than that).
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| read_error(kind, path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(kind, path, e))?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        ConfigError::Parse {
            origin: format!("{} line {line}", path.display()),
            message: format!("not UTF-8 text (byte {at}); is this the right file?"),
        }
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    check_line_lengths(&text, path)?;
    Ok(text)
}

/// Refuses text with a line longer than [`MAX_LINE_BYTES`], naming the line.
pub fn check_line_lengths(text: &str, path: &Path) -> Result<(), ConfigError> {
    if text.len() <= MAX_LINE_BYTES {
        return Ok(());
    }
    for (i, line) in text.split('\n').enumerate() {
        if line.len() > MAX_LINE_BYTES {
            return Err(ConfigError::Parse {
                origin: format!("{} line {}", path.display(), i + 1),
                message: format!(
                    "the line is {} MiB long, over the {} MiB limit; is this the right file?",
                    line.len() >> 20,
                    MAX_LINE_BYTES >> 20
                ),
            });
        }
    }
    Ok(())
}

/// At most `max` characters of `value` for an error message, with how much was cut.
pub fn shorten(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        None => value.to_string(),
        Some((cut, _)) => format!("{}... ({} bytes in all)", &value[..cut], value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_directories_are_refused() {
        let e = read_text(InputKind::Trace, Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a regular file") && e.contains("/dev/zero"),
            "{e}"
        );
        let d = tempfile::tempdir().unwrap();
        let e = read_text(InputKind::Config, d.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a directory") && e.contains("config file"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_names_its_kind() {
        let e = read_text(InputKind::Trace, Path::new("no/such/trace.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read trace file no/such/trace.jsonl"),
            "{e}"
        );
    }

    #[test]
    fn a_bom_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.jsonl");
        std::fs::write(&p, "\u{feff}{\"a\":1}\n").unwrap();
        assert_eq!(read_text(InputKind::Trace, &p).unwrap(), "{\"a\":1}\n");
    }

    #[test]
    fn an_over_long_line_is_named() {
        let mut text = "a\n".to_string();
        text.push_str(&"x".repeat(MAX_LINE_BYTES + 1));
        let e = check_line_lengths(&text, Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t line 2") && e.contains("64 MiB"), "{e}");
    }

    #[test]
    fn shorten_caps_long_values() {
        assert_eq!(shorten("abc", 5), "abc");
        // 10 characters kept of 1,000 bytes.
        let s = shorten(&"y".repeat(1000), 10);
        assert_eq!(s, "yyyyyyyyyy... (1000 bytes in all)");
    }
}
