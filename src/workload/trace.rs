//! Trace replay (open loop: each record arrives at its recorded time). Formats: `mooncake`.
//!
//! Mooncake (engine-semantics MC1): JSON lines with `timestamp` (ms from trace start), `input_length`,
//! `output_length` and `hash_ids`, one id per `block_tokens` (512) tokens of the prompt, prefix-chained:
//! equal ids at equal positions are equal content. Each id becomes a segment of that content, so requests
//! that share ids share KV blocks; the last segment holds the remainder of the prompt.
//!
//! Replay sets each request's `max_tokens` to its recorded output length (as `vllm bench serve` does with
//! ignore_eos), so the engine generates exactly what was recorded.

use super::content::Segment;
use super::conversation::{NewRequest, Release};
use super::Workload;
use crate::config::{TraceConfig, TraceFormat};
use crate::error::ConfigError;
use crate::event::SessionId;
use crate::request::Request;
use crate::rng::mix;
use crate::time::{SimDuration, SimTime};
use serde::Deserialize;
use std::path::Path;

const NS_TRACE_BLOCK: u64 = 5;
const NS_TRACE_OUTPUT: u64 = 6;

/// One replayable record.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// Arrival, seconds from the trace start.
    pub arrival_s: f64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub prompt: Vec<Segment>,
}

#[derive(Deserialize)]
struct MooncakeLine {
    timestamp: f64,
    input_length: i64,
    output_length: i64,
    hash_ids: Vec<u64>,
}

fn trace_err(path: &Path, line: usize, message: String) -> ConfigError {
    ConfigError::Parse {
        origin: format!("{} line {line}", path.display()),
        message,
    }
}

/// Reads a Mooncake JSONL trace. Errors name the file, the line and the field.
pub fn read_mooncake(path: &Path, block_tokens: u32) -> Result<Vec<TraceRecord>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_mooncake(&text, path, block_tokens)
}

pub fn parse_mooncake(
    text: &str,
    path: &Path,
    block_tokens: u32,
) -> Result<Vec<TraceRecord>, ConfigError> {
    let mut out = Vec::new();
    let mut prev_ts = f64::NEG_INFINITY;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let l: MooncakeLine = serde_json::from_str(line)
            .map_err(|e| trace_err(path, n, format!("not a Mooncake record: {e}")))?;
        if !(l.timestamp.is_finite() && l.timestamp >= 0.0) {
            return Err(trace_err(
                path,
                n,
                format!("field `timestamp` must be >= 0 ms, got {}", l.timestamp),
            ));
        }
        if l.timestamp < prev_ts {
            return Err(trace_err(
                path,
                n,
                format!(
                    "field `timestamp` goes back in time ({} after {}); sort the trace by timestamp",
                    l.timestamp, prev_ts
                ),
            ));
        }
        prev_ts = l.timestamp;
        if l.input_length < 1 || l.input_length > u32::MAX as i64 {
            return Err(trace_err(
                path,
                n,
                format!("field `input_length` must be >= 1, got {}", l.input_length),
            ));
        }
        if l.output_length < 1 || l.output_length > u32::MAX as i64 {
            return Err(trace_err(
                path,
                n,
                format!(
                    "field `output_length` must be >= 1, got {}",
                    l.output_length
                ),
            ));
        }
        let input = l.input_length as u32;
        let expect = input.div_ceil(block_tokens) as usize;
        if l.hash_ids.len() != expect {
            return Err(trace_err(
                path,
                n,
                format!(
                    "field `hash_ids` has {} ids but input_length {} needs ceil({}/{}) = {}; \
                     set workload.trace.block_tokens to the trace's block size",
                    l.hash_ids.len(),
                    input,
                    input,
                    block_tokens,
                    expect
                ),
            ));
        }
        let prompt = l
            .hash_ids
            .iter()
            .enumerate()
            .map(|(k, &id)| Segment {
                content: mix(NS_TRACE_BLOCK, id),
                len: if k + 1 < expect {
                    block_tokens
                } else {
                    input - block_tokens * (expect as u32 - 1)
                },
            })
            .collect();
        out.push(TraceRecord {
            arrival_s: l.timestamp / 1000.0,
            input_tokens: input,
            output_tokens: l.output_length as u32,
            prompt,
        });
    }
    if out.is_empty() {
        return Err(trace_err(
            path,
            1,
            "the trace is empty: it needs at least one record".into(),
        ));
    }
    Ok(out)
}

/// Replays records as single-turn sessions at their recorded (scaled) times.
pub struct TraceWorkload {
    records: Vec<TraceRecord>,
    next: usize,
    speedup: f64,
    horizon: Option<SimTime>,
    max_requests: Option<u64>,
    max_model_len: u32,
    session_salt: bool,
    pending: Option<(SessionId, usize)>,
}

impl TraceWorkload {
    pub fn load(
        cfg: &TraceConfig,
        duration_s: Option<f64>,
        max_requests: Option<u64>,
        max_model_len: u32,
        session_salt: bool,
    ) -> Result<TraceWorkload, ConfigError> {
        let path = Path::new(&cfg.path);
        let records = match cfg.format {
            TraceFormat::Mooncake => read_mooncake(path, cfg.block_tokens)?,
        };
        Ok(TraceWorkload {
            records,
            next: 0,
            speedup: cfg.speedup,
            horizon: duration_s.map(|d| SimTime::ZERO + SimDuration::from_secs_f64(d)),
            max_requests,
            max_model_len,
            session_salt,
            pending: None,
        })
    }

    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }
}

impl Workload for TraceWorkload {
    fn next_session_start(&mut self) -> Option<(SessionId, SimTime)> {
        if self.next >= self.records.len()
            || self.max_requests.is_some_and(|m| self.next as u64 >= m)
        {
            return None;
        }
        let t = SimTime::ZERO
            + SimDuration::from_secs_f64(self.records[self.next].arrival_s / self.speedup);
        if self.horizon.is_some_and(|h| t >= h) {
            return None;
        }
        let id = self.next as SessionId;
        self.pending = Some((id, self.next));
        self.next += 1;
        Some((id, t))
    }

    fn start_session(&mut self, id: SessionId, now: SimTime) -> Option<Release> {
        let rec = &self.records[id as usize];
        let salt = if self.session_salt { id + 1 } else { 0 };
        let fits = rec.input_tokens < self.max_model_len;
        let max_tokens = if fits {
            rec.output_tokens.min(self.max_model_len - rec.input_tokens)
        } else {
            rec.output_tokens
        };
        let request = Request::new(
            id,
            id,
            1,
            0,
            now,
            rec.prompt.clone(),
            mix(NS_TRACE_OUTPUT, id),
            max_tokens,
            salt,
        );
        let nr = NewRequest {
            request,
            true_output_tokens: rec.output_tokens,
        };
        Some(if fits {
            Release::Request(nr)
        } else {
            Release::Rejected(nr)
        })
    }

    fn release_turn(&mut self, _id: SessionId, _now: SimTime) -> Option<Release> {
        None
    }

    fn on_turn_complete(&mut self, _id: SessionId, _out: u32, _now: SimTime) -> Option<SimTime> {
        None
    }

    fn sessions_started(&self) -> u64 {
        self.next as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<TraceRecord>, ConfigError> {
        parse_mooncake(text, Path::new("t.jsonl"), 512)
    }

    #[test]
    fn hand_written_fixture() {
        let recs = parse(
            "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [0, 1]}\n\
             {\"timestamp\": 3000, \"input_length\": 512, \"output_length\": 7, \"hash_ids\": [0]}\n",
        )
        .unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].prompt[0].len, 512);
        assert_eq!(recs[0].prompt[1].len, 88);
        assert_eq!(recs[0].prompt[0], recs[1].prompt[0]);
        assert_eq!(recs[1].arrival_s, 3.0);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse("{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n{\"timestamp\": 1}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.jsonl line 2") && e.contains("input_length"),
            "{e}"
        );
        let e = parse(
            "{\"timestamp\": 0, \"input_length\": -5, \"output_length\": 1, \"hash_ids\": []}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1") && e.contains("input_length"), "{e}");
        let e = parse("{\"timestamp\": 5, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n{\"timestamp\": 1, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("timestamp"), "{e}");
        assert!(parse("").unwrap_err().to_string().contains("empty"));
        assert!(parse("{not json")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
