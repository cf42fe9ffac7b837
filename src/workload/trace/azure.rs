//! Azure LLM inference trace 2023 (Splitwise): CSV `TIMESTAMP` (wall clock, `YYYY-MM-DD HH:MM:SS.fffffff`),
//! `ContextTokens`, `GeneratedTokens`. No sessions and no content: every prompt is unique unless
//! `shared_prefix_tokens` invents a shared prefix, and the run's summary says which.

use super::{csv_columns, parse_err, Trace, TraceRecord};
use crate::error::ConfigError;
use crate::rng::mix;
use crate::workload::content::Segment;
use std::path::Path;

const NS_PROMPT: u64 = 0x415a_0001;
const NS_SHARED: u64 = 0x415a_0002;
const NS_OUTPUT: u64 = 0x415a_0003;

/// Seconds since 1970-01-01 of a `YYYY-MM-DD HH:MM:SS[.fraction]` timestamp (UTC, proleptic Gregorian).
pub fn parse_wall_clock(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d.next().is_some() || !(1..=month_days).contains(&day) {
        return None;
    }
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    if t.next().is_some()
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + sec)
}

pub fn parse(text: &str, path: &Path, shared_prefix_tokens: u32) -> Result<Trace, ConfigError> {
    let (mut rdr, cols) = csv_columns(
        text,
        path,
        &["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
        "an Azure 2023 trace has TIMESTAMP,ContextTokens,GeneratedTokens",
    )?;
    let (c_ts, c_in, c_out) = (cols[0], cols[1], cols[2]);
    let mut records = Vec::new();
    let mut t0 = None;
    let mut prev = f64::NEG_INFINITY;
    for (i, row) in rdr.records().enumerate() {
        let n = i + 2;
        let row = row.map_err(|e| parse_err(path, n, format!("malformed CSV row: {e}")))?;
        let field = |c: usize, name: &str| {
            row.get(c)
                .ok_or_else(|| parse_err(path, n, format!("field `{name}` is missing")))
        };
        let ts_s = field(c_ts, "TIMESTAMP")?;
        let ts = parse_wall_clock(ts_s).ok_or_else(|| {
            parse_err(
                path,
                n,
                format!("field `TIMESTAMP` = {ts_s:?} is not YYYY-MM-DD HH:MM:SS.fraction"),
            )
        })?;
        if ts < prev {
            return Err(parse_err(
                path,
                n,
                "field `TIMESTAMP` goes back in time; sort the trace by TIMESTAMP".into(),
            ));
        }
        prev = ts;
        let t0 = *t0.get_or_insert(ts);
        let count = |c: usize, name: &str| -> Result<u32, ConfigError> {
            let v = field(c, name)?;
            match v.trim().parse::<i64>() {
                Ok(x) if x >= 1 && x <= u32::MAX as i64 => Ok(x as u32),
                _ => Err(parse_err(
                    path,
                    n,
                    format!("field `{name}` must be a positive token count, got {v:?}"),
                )),
            }
        };
        let input = count(c_in, "ContextTokens")?;
        let output = count(c_out, "GeneratedTokens")?;
        let idx = records.len() as u64;
        let shared = shared_prefix_tokens.min(input);
        let mut prompt = Vec::with_capacity(2);
        if shared > 0 {
            prompt.push(Segment {
                content: mix(NS_SHARED, 0),
                len: shared,
            });
        }
        if input > shared {
            prompt.push(Segment {
                content: mix(NS_PROMPT, idx),
                len: input - shared,
            });
        }
        records.push(TraceRecord::single_turn(
            idx,
            ts - t0,
            prompt,
            mix(NS_OUTPUT, idx),
            output,
            n,
        ));
    }
    Ok(Trace {
        records,
        has_sessions: false,
        failed_rows: 0,
        content: if shared_prefix_tokens > 0 {
            format!(
                "invented: every prompt starts with one shared {shared_prefix_tokens}-token prefix (the Azure \
                 trace has no content)"
            )
        } else {
            "none: every prompt is unique (the Azure trace has no content)".into()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_parses_with_seven_digits() {
        let a = parse_wall_clock("2023-11-16 18:15:46.6805900").unwrap();
        let b = parse_wall_clock("2023-11-16 18:15:50.9951690").unwrap();
        assert!((b - a - 4.314579).abs() < 1e-6);
        // 2023-11-16 is day 19,677 since the epoch.
        assert_eq!(
            parse_wall_clock("2023-11-16 00:00:00").unwrap(),
            19_677.0 * 86_400.0
        );
        assert!(parse_wall_clock("2023-13-01 00:00:00").is_none());
        // Days past the month's end are errors, not the next month (2023-02-31 is not March 3).
        assert!(parse_wall_clock("2023-02-31 00:00:00").is_none());
        assert!(parse_wall_clock("2023-02-29 00:00:00").is_none());
        assert!(parse_wall_clock("2023-04-31 00:00:00").is_none());
        // 2024 and 2000 are leap years (divisible by 4, and 2000 by 400); 1900 is not.
        assert!(parse_wall_clock("2024-02-29 00:00:00").is_some());
        assert!(parse_wall_clock("2000-02-29 00:00:00").is_some());
        assert!(parse_wall_clock("1900-02-29 00:00:00").is_none());
        assert!(parse_wall_clock("yesterday").is_none());
    }

    #[test]
    fn fixture_and_sharing_model() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:15:46.5000000,374,44\n\
                    2023-11-16 18:15:47.0000000,100,9\n";
        let t = parse(text, Path::new("a.csv"), 0).unwrap();
        assert_eq!(t.records.len(), 2);
        assert_eq!(t.records[1].arrival_s, Some(0.5));
        assert_ne!(
            t.records[0].prompt[0].content,
            t.records[1].prompt[0].content
        );
        assert!(t.content.starts_with("none"));
        let t = parse(text, Path::new("a.csv"), 200).unwrap();
        // Both start with the shared content: 200 tokens of it for the 374-token prompt, and all 100 tokens
        // of the 100-token prompt.
        assert_eq!(
            t.records[0].prompt[0].content,
            t.records[1].prompt[0].content
        );
        assert_eq!(t.records[0].prompt[0].len, 200);
        assert_eq!(t.records[1].prompt.len(), 1);
        assert_eq!(t.records[1].prompt[0].len, 100);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,374,44\n2023-11-16 18:15:47,-3,9\n",
            Path::new("a.csv"),
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a.csv line 3") && e.contains("ContextTokens"),
            "{e}"
        );
        let e = parse("TIMESTAMP,Context\n", Path::new("a.csv"), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ContextTokens"), "{e}");
    }
}
