//! servesim's native trace: one CSV row per request, enough to replay a generated workload exactly.
//!
//! Columns: `session_id, turn, arrival_s, think_time_s, priority, prompt, response_content, output_tokens,
//! max_tokens`.
//! - `turn` counts from 1; a session's rows are consecutive in turn order.
//! - `arrival_s`: seconds from the start; required for turn 1, optional later (used by open-loop replay).
//! - `think_time_s`: the delay between the previous turn's completion and this turn (closed-loop replay);
//!   when empty on a later turn it is derived from the arrival times.
//! - `prompt`: the prompt's segments, space-separated `content:tokens`, content as 16 hex digits. Equal
//!   content ids are equal tokens, so prefixes shared between rows are cache hits.
//! - `response_content`: the content id of the generated tokens (a later turn's prompt may include it).
//! - `output_tokens`: tokens generated; `max_tokens` (optional, default `output_tokens`) the cap the engine
//!   sees; `priority` (optional, default 0), lower first.

use super::{csv_columns, parse_err, Trace, TraceRecord};
use crate::error::{ConfigError, OutputError};
use crate::workload::content::Segment;
use std::collections::HashMap;
use std::path::Path;

pub const COLUMNS: &[&str] = &[
    "session_id",
    "turn",
    "arrival_s",
    "think_time_s",
    "priority",
    "prompt",
    "response_content",
    "output_tokens",
    "max_tokens",
];

fn format_prompt(segs: &[Segment]) -> String {
    segs.iter()
        .map(|s| format!("{:016x}:{}", s.content, s.len))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_prompt(s: &str) -> Option<Vec<Segment>> {
    s.split_whitespace()
        .map(|p| {
            let (c, l) = p.split_once(':')?;
            Some(Segment {
                content: u64::from_str_radix(c, 16).ok()?,
                len: l.parse().ok().filter(|&l: &u32| l > 0)?,
            })
        })
        .collect()
}

/// Writes records in the native format to `out`; `path` names it in errors. Times are written with
/// nanosecond precision, so a replay reproduces them exactly.
pub fn write(
    records: &[TraceRecord],
    out: impl std::io::Write,
    path: &Path,
) -> Result<(), OutputError> {
    let err = OutputError::csv(path);
    let mut w = csv::Writer::from_writer(out);
    w.write_record(COLUMNS).map_err(err)?;
    for r in records {
        // The native format has no failure marker; only generated workloads (which record none) are written.
        debug_assert!(
            !r.failed,
            "a recorded failure cannot be written as a native row"
        );
        let t = |v: Option<f64>| v.map(|x| format!("{x:.9}")).unwrap_or_default();
        w.write_record([
            r.session.to_string(),
            r.turn.to_string(),
            t(r.arrival_s),
            t(r.gap_s),
            r.priority.to_string(),
            format_prompt(&r.prompt),
            format!("{:016x}", r.response_content),
            r.output_tokens.to_string(),
            r.max_tokens.to_string(),
        ])
        .map_err(err)?;
    }
    w.flush().map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn parse(text: &str, path: &Path) -> Result<Trace, ConfigError> {
    let hint = format!("the header must be {}", COLUMNS.join(","));
    let (mut rdr, cols) = csv_columns(text, path, COLUMNS, &hint)?;
    let mut records: Vec<TraceRecord> = Vec::new();
    // Per session: (last turn, nominal arrival of that turn).
    let mut last: HashMap<u64, (u32, f64)> = HashMap::new();
    let mut current: Option<u64> = None;
    let mut done: std::collections::HashSet<u64> = Default::default();
    for (i, row) in rdr.records().enumerate() {
        let n = i + 2;
        let row = row.map_err(|e| parse_err(path, n, format!("malformed CSV row: {e}")))?;
        let get = |k: usize| row.get(cols[k]).map(str::trim).unwrap_or("");
        let bad = |k: usize, what: &str| {
            parse_err(
                path,
                n,
                format!("field `{}` {what}, got {:?}", COLUMNS[k], get(k)),
            )
        };
        let session: u64 = get(0)
            .parse()
            .map_err(|_| bad(0, "must be a session id (integer)"))?;
        let turn: u32 = get(1)
            .parse()
            .ok()
            .filter(|&t| t >= 1)
            .ok_or_else(|| bad(1, "must be a turn number >= 1"))?;
        let opt_time = |k: usize| -> Result<Option<f64>, ConfigError> {
            let v = get(k);
            if v.is_empty() {
                return Ok(None);
            }
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(bad(k, "must be seconds >= 0")),
            }
        };
        let arrival = opt_time(2)?;
        let mut gap = opt_time(3)?;
        let priority: i64 = if get(4).is_empty() {
            0
        } else {
            get(4).parse().map_err(|_| bad(4, "must be an integer"))?
        };
        let prompt = parse_prompt(get(5))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                bad(
                    5,
                    "must be space-separated content:tokens pairs (hex content, tokens > 0)",
                )
            })?;
        let response_content =
            u64::from_str_radix(get(6), 16).map_err(|_| bad(6, "must be a hex content id"))?;
        let output_tokens: u32 = get(7)
            .parse()
            .ok()
            .filter(|&t| t >= 1)
            .ok_or_else(|| bad(7, "must be a token count >= 1"))?;
        let max_tokens: u32 = if get(8).is_empty() {
            output_tokens
        } else {
            get(8)
                .parse()
                .ok()
                .filter(|&t| t >= 1)
                .ok_or_else(|| bad(8, "must be a token count >= 1"))?
        };
        // Turns: consecutive rows, in order.
        if current != Some(session) {
            if done.contains(&session) {
                return Err(bad(
                    0,
                    "has rows apart from its other turns; keep a session's rows together",
                ));
            }
            if let Some(c) = current {
                done.insert(c);
            }
            current = Some(session);
        }
        let expected = last.get(&session).map_or(1, |l| l.0 + 1);
        if turn != expected {
            return Err(bad(
                1,
                &format!("should be {expected} (turns count up from 1)"),
            ));
        }
        let nominal = match (turn, arrival, gap, last.get(&session)) {
            (1, Some(a), _, _) => a,
            (1, None, _, _) => return Err(bad(2, "is required on a session's first turn")),
            (_, Some(a), _, Some(&(_, prev))) => {
                if gap.is_none() {
                    gap = Some((a - prev).max(0.0));
                }
                a
            }
            (_, None, Some(g), Some(&(_, prev))) => prev + g,
            _ => return Err(bad(3, "or `arrival_s` is required after the first turn")),
        };
        last.insert(session, (turn, nominal));
        records.push(TraceRecord {
            session,
            turn,
            arrival_s: arrival,
            gap_s: if turn == 1 { None } else { gap },
            priority,
            prompt,
            response_content,
            output_tokens,
            max_tokens,
            line: n,
            failed: false,
        });
    }
    Ok(Trace {
        records,
        has_sessions: true,
        failed_rows: 0,
        content: "native trace content ids".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let recs = vec![
            TraceRecord {
                session: 0,
                turn: 1,
                arrival_s: Some(1.25),
                gap_s: None,
                priority: 2,
                prompt: vec![
                    Segment {
                        content: 0xabc,
                        len: 600,
                    },
                    Segment {
                        content: 7,
                        len: 30,
                    },
                ],
                response_content: 99,
                output_tokens: 12,
                max_tokens: 2048,
                line: 2,
                failed: false,
            },
            TraceRecord {
                session: 0,
                turn: 2,
                arrival_s: None,
                gap_s: Some(3.5),
                priority: 2,
                prompt: vec![Segment {
                    content: 0xabc,
                    len: 600,
                }],
                response_content: 100,
                output_tokens: 1,
                max_tokens: 1,
                line: 3,
                failed: false,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        write(&recs, std::fs::File::create(&p).unwrap(), &p).unwrap();
        let back = parse(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
        assert_eq!(back.records, recs);
    }

    #[test]
    fn errors_name_line_and_field() {
        let h = "session_id,turn,arrival_s,think_time_s,priority,prompt,response_content,output_tokens,max_tokens\n";
        let e = parse(
            &format!("{h}0,1,0.0,,0,00ff:10,1,5,\n0,3,,1.0,0,00ff:10,1,5,\n"),
            Path::new("n.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("n.csv line 3") && e.contains("turn"), "{e}");
        let e = parse(&format!("{h}0,1,0.0,,0,zz:10,1,5,\n"), Path::new("n.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("prompt"), "{e}");
        let e = parse(&format!("{h}0,1,,,0,00ff:10,1,5,\n"), Path::new("n.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("arrival_s"), "{e}");
    }
}
