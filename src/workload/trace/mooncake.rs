//! Mooncake JSONL (engine-semantics MC1): `timestamp` (ms from trace start), `input_length`,
//! `output_length`, `hash_ids` (one id per `block_tokens` tokens, 512 in the published traces; prefix-chained,
//! so equal ids at equal positions are equal content). Each id becomes a segment of that content; the last
//! segment holds the remainder. No sessions: every record is its own request, replayed open loop.

use super::{parse_err, Trace, TraceRecord};
use crate::error::ConfigError;
use crate::rng::mix;
use crate::workload::content::Segment;
use serde::Deserialize;
use std::path::Path;

const NS_BLOCK: u64 = 0x4d43_0001;
const NS_OUTPUT: u64 = 0x4d43_0002;

#[derive(Deserialize)]
struct Line {
    timestamp: f64,
    input_length: i64,
    output_length: i64,
    hash_ids: Vec<u64>,
}

pub fn parse(text: &str, path: &Path, block_tokens: u32) -> Result<Trace, ConfigError> {
    let mut records = Vec::new();
    let mut prev_ts = f64::NEG_INFINITY;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        // serde would also read a JSON array as the record's fields in order: only objects are records.
        if !line.trim_start().starts_with('{') {
            return Err(parse_err(
                path,
                n,
                "not a Mooncake record: each line must be a JSON object with timestamp, input_length, \
                 output_length and hash_ids"
                    .into(),
            ));
        }
        let l: Line = serde_json::from_str(line)
            .map_err(|e| parse_err(path, n, format!("not a Mooncake record: {e}")))?;
        if !(l.timestamp.is_finite() && l.timestamp >= 0.0) {
            return Err(parse_err(
                path,
                n,
                format!("field `timestamp` must be >= 0 ms, got {}", l.timestamp),
            ));
        }
        if l.timestamp < prev_ts {
            return Err(parse_err(
                path,
                n,
                format!(
                    "field `timestamp` goes back in time ({} after {}); sort the trace by timestamp",
                    l.timestamp, prev_ts
                ),
            ));
        }
        prev_ts = l.timestamp;
        let positive = |field: &str, v: i64| {
            if v < 1 || v > u32::MAX as i64 {
                Err(parse_err(
                    path,
                    n,
                    format!("field `{field}` must be a positive token count, got {v}"),
                ))
            } else {
                Ok(v as u32)
            }
        };
        let input = positive("input_length", l.input_length)?;
        let output = positive("output_length", l.output_length)?;
        let blocks = input.div_ceil(block_tokens) as usize;
        if l.hash_ids.len() != blocks {
            return Err(parse_err(
                path,
                n,
                format!(
                    "field `hash_ids` has {} ids but input_length {input} needs ceil({input}/{block_tokens}) = \
                     {blocks}; set workload.trace.block_tokens to the trace's block size",
                    l.hash_ids.len()
                ),
            ));
        }
        let prompt = l
            .hash_ids
            .iter()
            .enumerate()
            .map(|(k, &id)| Segment {
                content: mix(NS_BLOCK, id),
                len: if k + 1 < blocks {
                    block_tokens
                } else {
                    input - block_tokens * (blocks as u32 - 1)
                },
            })
            .collect();
        let idx = records.len() as u64;
        records.push(TraceRecord::single_turn(
            idx,
            l.timestamp / 1000.0,
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
        content: format!("trace hash ids ({block_tokens} tokens per id)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_array_is_not_a_record() {
        // The same four values as an array: serde would map them to the fields in order.
        let e = parse("[0, 10, 5, [1]]\n", Path::new("m.jsonl"), 512)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.jsonl line 1") && e.contains("JSON object"),
            "{e}"
        );
        let ok = parse(
            "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 5, \"hash_ids\": [1]}\n",
            Path::new("m.jsonl"),
            512,
        );
        assert_eq!(ok.unwrap().records.len(), 1);
    }

    fn p(text: &str) -> Result<Trace, ConfigError> {
        parse(text, Path::new("t.jsonl"), 512)
    }

    #[test]
    fn hand_written_fixture() {
        let t = p("{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [0, 1]}\n\
             {\"timestamp\": 3000, \"input_length\": 512, \"output_length\": 7, \"hash_ids\": [0]}\n")
        .unwrap();
        let r = &t.records;
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].prompt[0].len, r[0].prompt[1].len), (512, 88));
        assert_eq!(r[0].prompt[0], r[1].prompt[0]);
        assert_eq!(r[1].arrival_s, Some(3.0));
        assert_eq!((r[1].output_tokens, r[1].line), (7, 2));
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = p("{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n{\"timestamp\": 1}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.jsonl line 2") && e.contains("input_length"),
            "{e}"
        );
        let e =
            p("{\"timestamp\": 0, \"input_length\": -5, \"output_length\": 1, \"hash_ids\": []}")
                .unwrap_err()
                .to_string();
        assert!(e.contains("line 1") && e.contains("input_length"), "{e}");
        let e = p("{\"timestamp\": 5, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n{\"timestamp\": 1, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("timestamp"), "{e}");
        assert!(p("{not json").unwrap_err().to_string().contains("line 1"));
    }
}
