//! BurstGPT (release v2.0): CSV `Timestamp` (s), `Session ID`, `Elapsed time` (s, submit to full response),
//! `Model`, `Request tokens` (conversation history included), `Response tokens`, `Total tokens`, `Log Type`.
//!
//! The rows of a session are its turns. Turn k+1's prompt extends turn k's (its prompt and its response)
//! when the token counts allow it (request tokens of k+1 >= request + response tokens of k); otherwise the
//! history was cut and the prompt is new content. Rows with zero response tokens are failed requests: they
//! are kept as records marked `failed` (replayed as `failed` rows of `requests.csv`, with no engine work),
//! numbered as turns of their session, but a later turn extends the last *answered* turn, since a failure
//! added nothing to the conversation. The closed-loop gap before a turn is its timestamp minus the previous
//! row's timestamp plus elapsed time (a failed row's included: the user waited for it), clamped at zero.

use super::{csv_columns, parse_err, Trace, TraceRecord};
use crate::error::ConfigError;
use crate::rng::mix;
use crate::workload::content::Segment;
use std::collections::HashMap;
use std::path::Path;

const NS_NEW: u64 = 0x4247_0001;
const NS_OUTPUT: u64 = 0x4247_0002;

/// The last answered turn of a session (what a later prompt can extend).
struct Prev {
    prompt: Vec<Segment>,
    prompt_len: u64,
    response: Segment,
}

/// The last row of a session, answered or failed (turn numbers and gaps).
struct Last {
    end_s: f64,
    turn: u32,
}

pub fn parse(text: &str, path: &Path) -> Result<Trace, ConfigError> {
    let (mut rdr, cols) = csv_columns(
        text,
        path,
        &[
            "Timestamp",
            "Session ID",
            "Elapsed time",
            "Request tokens",
            "Response tokens",
        ],
        "a BurstGPT trace has Timestamp, Session ID, Elapsed time, Request tokens, Response tokens",
    )?;
    let (c_ts, c_sid, c_el, c_req, c_resp) = (cols[0], cols[1], cols[2], cols[3], cols[4]);
    let mut records = Vec::new();
    let mut session_index: HashMap<String, u64> = HashMap::new();
    let mut prev: HashMap<u64, Prev> = HashMap::new();
    let mut last: HashMap<u64, Last> = HashMap::new();
    let mut t0 = None;
    let mut last_ts = f64::NEG_INFINITY;
    let mut failed = 0;
    for (i, row) in rdr.records().enumerate() {
        let n = i + 2;
        let row = row.map_err(|e| parse_err(path, n, format!("malformed CSV row: {e}")))?;
        let field = |c: usize, name: &str| {
            row.get(c)
                .map(str::trim)
                .ok_or_else(|| parse_err(path, n, format!("field `{name}` is missing")))
        };
        let num = |c: usize, name: &str| -> Result<f64, ConfigError> {
            let v = field(c, name)?;
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(parse_err(
                    path,
                    n,
                    format!("field `{name}` must be a number >= 0, got {v:?}"),
                )),
            }
        };
        let ts = num(c_ts, "Timestamp")?;
        if ts < last_ts {
            return Err(parse_err(
                path,
                n,
                "field `Timestamp` goes back in time; sort the trace by Timestamp".into(),
            ));
        }
        last_ts = ts;
        let t = ts - *t0.get_or_insert(ts);
        let elapsed = num(c_el, "Elapsed time")?;
        let tokens = |c: usize, name: &str| -> Result<u32, ConfigError> {
            let v = num(c, name)?;
            if v.fract() != 0.0 || v > u32::MAX as f64 {
                return Err(parse_err(
                    path,
                    n,
                    format!("field `{name}` must be a whole token count, got {v}"),
                ));
            }
            Ok(v as u32)
        };
        let req = tokens(c_req, "Request tokens")?;
        let resp = tokens(c_resp, "Response tokens")?;
        if req == 0 && resp > 0 {
            return Err(parse_err(
                path,
                n,
                "field `Request tokens` is 0 for a request that has a response".into(),
            ));
        }
        let sid_raw = field(c_sid, "Session ID")?;
        let next_index = session_index.len() as u64;
        let session = if sid_raw.is_empty() {
            // A row without a session is a session of its own.
            session_index.insert(format!("\u{0}row{n}"), next_index);
            next_index
        } else {
            *session_index
                .entry(sid_raw.to_string())
                .or_insert(next_index)
        };
        let idx = records.len() as u64;
        // (A failed row may record no request tokens at all: an empty prompt.)
        let fresh = || {
            (req > 0)
                .then_some(Segment {
                    content: mix(NS_NEW, idx),
                    len: req,
                })
                .into_iter()
                .collect::<Vec<_>>()
        };
        let prompt = match prev.get(&session) {
            Some(p) if req as u64 >= p.prompt_len + p.response.len as u64 => {
                let mut v = p.prompt.clone();
                v.push(p.response);
                let new = req as u64 - p.prompt_len - p.response.len as u64;
                if new > 0 {
                    v.push(Segment {
                        content: mix(NS_NEW, idx),
                        len: new as u32,
                    });
                }
                v
            }
            _ => fresh(),
        };
        let (gap_s, turn) = match last.get(&session) {
            Some(l) => (Some((t - l.end_s).max(0.0)), l.turn + 1),
            None => (None, 1),
        };
        last.insert(
            session,
            Last {
                end_s: t + elapsed,
                turn,
            },
        );
        let response = Segment {
            content: mix(NS_OUTPUT, idx),
            len: resp,
        };
        if resp == 0 {
            failed += 1;
        } else {
            prev.insert(
                session,
                Prev {
                    prompt: prompt.clone(),
                    prompt_len: req as u64,
                    response,
                },
            );
        }
        records.push(TraceRecord {
            session,
            turn,
            arrival_s: Some(t),
            gap_s,
            priority: 0,
            prompt,
            response_content: response.content,
            output_tokens: resp,
            max_tokens: resp,
            line: n,
            failed: resp == 0,
        });
    }
    Ok(Trace {
        records,
        has_sessions: true,
        failed_rows: failed,
        content: format!(
            "session history: a turn extends its predecessor where the token counts allow; {failed} failed \
             rows (0 response tokens) replayed as `failed` rows, not run"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n";

    #[test]
    fn turns_extend_where_counts_allow_and_failures_are_kept_marked() {
        let text = format!(
            "{H}10,s1,2,GPT-4,100,50,150,Conversation log\n\
             11,s2,1,GPT-4,30,0,30,Conversation log\n\
             15,s1,1,GPT-4,160,0,160,Conversation log\n\
             20,s1,3,GPT-4,170,40,210,Conversation log\n\
             30,s1,1,GPT-4,90,10,100,Conversation log\n"
        );
        let t = parse(&text, Path::new("b.csv")).unwrap();
        assert_eq!(t.failed_rows, 2);
        let r = &t.records;
        assert_eq!(r.len(), 5);
        assert!(!r[0].failed && r[1].failed && r[2].failed && !r[3].failed);
        // s1's failed row is its turn 2; the next row is turn 3 and extends turn 1, the last answered one:
        // turn 1's 100 prompt tokens + its 50-token response + 20 new tokens.
        assert_eq!((r[2].turn, r[3].turn), (2, 3));
        assert_eq!(r[3].prompt[0], r[0].prompt[0]);
        assert_eq!(r[3].prompt[1].content, r[0].response_content);
        assert_eq!(r[3].prompt[1].len, 50);
        assert_eq!(r[3].prompt[2].len, 20);
        // Gaps run from the previous row's end, the failed one's included: 15 - (10 + 2) = 3 s, then
        // 20 - (15 + 1) = 4 s.
        assert_eq!(r[2].gap_s, Some(3.0));
        assert_eq!(r[3].gap_s, Some(4.0));
        // Turn 4 has fewer tokens than turn 3's context (the history was cut): new content.
        assert_eq!(r[4].prompt.len(), 1);
        assert_eq!(r[4].turn, 4);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse(
            &format!("{H}10,s1,2,GPT-4,abc,50,150,Conversation log\n"),
            Path::new("b.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("b.csv line 2") && e.contains("Request tokens"),
            "{e}"
        );
        let e = parse(
            &format!("{H}10,s1,2,GPT-4,5,5,10,x\n9,s1,2,GPT-4,5,5,10,x\n"),
            Path::new("b.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && e.contains("Timestamp"), "{e}");
    }
}
