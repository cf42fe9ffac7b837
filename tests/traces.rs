//! Trace readers on the real public traces, replay controls, export -> replay equality, and fuzzing.

use crate::common::*;
use proptest::prelude::*;
use servesim::config::{ReplayMode, TraceConfig, TraceFormat};
use servesim::workload::trace::{self, TraceWorkload};
use std::path::Path;

const T: &str = "data/traces";

fn read(format: TraceFormat, file: &str) -> trace::Trace {
    trace::read(&TraceConfig {
        format,
        path: format!("{T}/{file}"),
        ..TraceConfig::default()
    })
    .unwrap()
}

fn totals(t: &trace::Trace) -> (usize, u64, u64) {
    (
        t.records.len(),
        t.records.iter().map(|r| r.input_tokens()).sum(),
        t.records.iter().map(|r| r.output_tokens as u64).sum(),
    )
}

#[test]
fn mooncake_real_file_rows_totals_and_exact_rows() {
    let t = read(TraceFormat::Mooncake, "mooncake/conversation_trace.jsonl");
    // Counted independently with Python's json module: 12,031 rows, 144,793,823 input and 4,122,048
    // output tokens; the last row is at 3,536,999 ms with 20,774 input tokens.
    assert_eq!(totals(&t), (12_031, 144_793_823, 4_122_048));
    let first = &t.records[0];
    assert_eq!((first.input_tokens(), first.output_tokens), (6758, 500));
    assert_eq!(first.prompt.len(), 14);
    let last = t.records.last().unwrap();
    assert_eq!(last.arrival_s, Some(3536.999));
    assert_eq!(last.input_tokens(), 20_774);
    // Every request opens with hash id 0: the same first segment.
    assert!(t.records.iter().all(|r| r.prompt[0] == first.prompt[0]));
    let s = read(TraceFormat::Mooncake, "mooncake/synthetic_trace.jsonl");
    assert_eq!(s.records.len(), 3_993);
}

#[test]
fn azure_real_files_rows_totals_and_exact_rows() {
    let t = read(
        TraceFormat::Azure,
        "azure2023/AzureLLMInferenceTrace_conv.csv",
    );
    // Python's csv module: 19,366 rows, 22,361,870 context and 4,088,665 generated tokens.
    assert_eq!(totals(&t), (19_366, 22_361_870, 4_088_665));
    let r = &t.records;
    assert_eq!((r[0].input_tokens(), r[0].output_tokens), (374, 44));
    assert_eq!(r[0].arrival_s, Some(0.0));
    // 18:15:50.9951690 - 18:15:46.6805900 = 4.314579 s.
    assert!((r[1].arrival_s.unwrap() - 4.314579).abs() < 1e-6);
    // Last row 19:14:08.4025270: 3,501.721937 s after the first.
    assert!((r.last().unwrap().arrival_s.unwrap() - 3501.721937).abs() < 1e-6);
    assert!(t.content.starts_with("none"));
    let c = read(
        TraceFormat::Azure,
        "azure2023/AzureLLMInferenceTrace_code.csv",
    );
    assert_eq!(c.records.len(), 8_819);
}

#[test]
fn burstgpt_real_file_sessions_and_failures() {
    let t = read(TraceFormat::Burstgpt, "burstgpt/burstgpt3_first400.csv");
    // 400 rows, one with 0 response (and 0 request) tokens: a failure, kept and marked; the other 399
    // carry 246,941 request and 68,350 response tokens.
    assert_eq!(t.failed_rows, 1);
    assert_eq!(totals(&t), (400, 246_941, 68_350));
    let failed: Vec<_> = t.records.iter().filter(|r| r.failed).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].input_tokens(), failed[0].output_tokens), (0, 0));
    let r0 = &t.records[0];
    assert_eq!(
        (r0.input_tokens(), r0.output_tokens, r0.turn),
        (906, 446, 1)
    );
    // The longest session (24 rows) has turns 1..=24.
    let max_turn = t.records.iter().map(|r| r.turn).max().unwrap();
    assert_eq!(max_turn, 24);
    // Some follow-up turns extend their predecessor: their prompt starts with it.
    let extended = t
        .records
        .iter()
        .filter(|r| r.turn > 1 && r.prompt.len() > 1)
        .count();
    assert!(extended > 20, "{extended}");
}

#[test]
fn replay_controls_window_rate_and_mode() {
    let t = read(TraceFormat::Mooncake, "mooncake/conversation_trace.jsonl");
    let cfg = TraceConfig {
        start_s: 600.0,
        target_rate: Some(10.0),
        ..TraceConfig::default()
    };
    let w = TraceWorkload::new(t.clone(), &cfg, Some(60.0), None, 131_072).unwrap();
    // The trace runs at 3.4 req/s; at 10 req/s a 60 s window holds about 600 requests.
    assert!((550..=650).contains(&w.len()), "{}", w.len());
    let w =
        TraceWorkload::new(t.clone(), &TraceConfig::default(), None, Some(100), 131_072).unwrap();
    assert_eq!(w.len(), 100);
    let closed = TraceConfig {
        mode: ReplayMode::Closed,
        ..TraceConfig::default()
    };
    let e = TraceWorkload::new(t, &closed, None, None, 131_072)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("open"), "{e}");
}

#[test]
fn export_then_replay_equals_generate_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("exported.csv");
    let path = trace.display().to_string();
    let gen = config(SMALL_CHAT, &[]);
    // Export through the CLI, as a user would.
    let small = tmp.path().join("small.toml");
    std::fs::write(&small, SMALL_CHAT).unwrap();
    assert_cmd::Command::cargo_bin("servesim")
        .unwrap()
        .args(["workload", "export", "--config"])
        .arg(&small)
        .arg("--out")
        .arg(&trace)
        .assert()
        .success();
    let replay = config(
        SMALL_CHAT,
        &[
            "workload.kind=\"trace\"",
            "workload.trace.format=\"servesim\"",
            &format!("workload.trace.path=\"{path}\""),
        ],
    );
    let (a, da) = run_in(tmp.path(), "generated", &gen);
    let (_, db) = run_in(tmp.path(), "replayed", &replay);
    let ra = std::fs::read(da.join("requests.csv")).unwrap();
    let rb = std::fs::read(db.join("requests.csv")).unwrap();
    assert!(a.summary.get_f64("requests").unwrap() > 300.0);
    assert!(
        ra == rb,
        "requests.csv differs between generating and replaying"
    );
    // And the replayed workload's statistics match the generated one's.
    assert_eq!(
        std::fs::read(da.join("timeseries.csv")).unwrap(),
        std::fs::read(db.join("timeseries.csv")).unwrap()
    );
}

#[test]
fn stats_on_the_mooncake_trace() {
    let out = assert_cmd::Command::cargo_bin("servesim")
        .unwrap()
        .args(["workload", "stats"])
        .arg(format!("{T}/mooncake/conversation_trace.jsonl"))
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("requests        12031"), "{text}");
    // The same ratio as the independent oracle in tests/mooncake.rs: 54,097,440 / 144,793,823.
    assert!(text.contains("prefix reuse    37.36%"), "{text}");
    assert!(text.contains("rate 3.401 req/s"), "{text}");
}

#[test]
fn malformed_traces_exit_2_and_write_nothing() {
    let cases: [(&str, &str, &str); 4] = [
        ("azure", "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,x,44\n"),
        (
            "burstgpt",
            "b.csv",
            "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,s,1,m,5,-2,3,x\n",
        ),
        (
            "servesim",
            "n.csv",
            "session_id,turn,arrival_s,think_time_s,priority,prompt,response_content,output_tokens,max_tokens\n",
        ),
        ("mooncake", "m.jsonl", "{\"timestamp\": 0, \"input_length\": 5}\n"),
    ];
    for (format, file, text) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(file);
        std::fs::write(&p, text).unwrap();
        let out = tmp.path().join("out");
        let a = assert_cmd::Command::cargo_bin("servesim")
            .unwrap()
            .args(["run", "--set", "workload.kind=trace", "--set"])
            .arg(format!("workload.trace.format={format}"))
            .arg("--set")
            .arg(format!("workload.trace.path={}", p.display()))
            .arg("--out")
            .arg(&out)
            .assert()
            .code(2);
        let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
        assert!(err.contains(file), "{format}: {err}");
        assert!(err.contains("line"), "{format}: {err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}

fn parse_any(format: TraceFormat, text: &str) {
    let cfg = TraceConfig {
        format,
        ..TraceConfig::default()
    };
    let _ = trace::parse(text, Path::new("fuzz"), &cfg);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Random bytes never panic a reader: they parse or give an error.
    #[test]
    fn readers_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        for f in [TraceFormat::Mooncake, TraceFormat::Azure, TraceFormat::Burstgpt, TraceFormat::Servesim] {
            parse_any(f, &text);
        }
    }

    /// Near-valid input (a real header, then fields of random numbers and junk) never panics either.
    #[test]
    fn readers_never_panic_on_near_valid_rows(
        rows in prop::collection::vec(
            prop::collection::vec(prop_oneof![
                Just("".to_string()), Just("-1".to_string()), Just("0".to_string()),
                Just("1e308".to_string()), Just("NaN".to_string()), Just("ff:0".to_string()),
                Just("00:4294967295".to_string()), Just("2023-11-16 18:15:46.5".to_string()),
                any::<u32>().prop_map(|v| v.to_string()), "[a-z0-9:. ]{0,12}",
            ], 0..10),
            0..12,
        )
    ) {
        let body: String = rows.iter().map(|r| r.join(",") + "\n").collect();
        parse_any(TraceFormat::Azure, &format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{body}"));
        parse_any(TraceFormat::Burstgpt, &format!("Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n{body}"));
        parse_any(TraceFormat::Servesim, &format!("{}\n{body}", servesim::workload::trace::native::COLUMNS.join(",")));
        let json: String = rows.iter().map(|r| format!("{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": 3, \"hash_ids\": [{}]}}\n",
            r.first().map_or("0", |s| s.as_str()), r.get(1).map_or("1", |s| s.as_str()), r.get(2).map_or("", |s| s.as_str()))).collect();
        parse_any(TraceFormat::Mooncake, &json);
    }
}

#[test]
fn burstgpt_failures_are_replayed_marked_and_their_session_goes_on() {
    // s1: answered, failed, answered (extends the first), in closed loop (the default for sessions).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("b.csv");
    std::fs::write(
        &path,
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
         10,s1,2,GPT-4,100,50,150,Conversation log\n\
         15,s1,1,GPT-4,160,0,160,Conversation log\n\
         20,s1,3,GPT-4,170,40,210,Conversation log\n",
    )
    .unwrap();
    let p = path.display().to_string();
    let cfg = default_with(&[
        "workload.kind=\"trace\"",
        "workload.trace.format=\"burstgpt\"",
        &format!("workload.trace.path={p:?}"),
        "workload.duration_s=1e9",
    ]);
    let (_, out) = run_in(tmp.path(), "run", &cfg);
    let rows = read_rows(&out.join("requests.csv"));
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(status, ["finished", "failed", "finished"]);
    let turns: Vec<&str> = rows.iter().map(|r| r["turn"].as_str()).collect();
    assert_eq!(turns, ["1", "2", "3"]);
    let failed = &rows[1];
    assert_eq!(
        failed["replica"], "",
        "a failed request never reaches a replica"
    );
    assert_eq!(
        (num(failed, "output_tokens"), failed["ttft_s"].as_str()),
        (0.0, "")
    );
    // The session went on: its last turn (170 tokens, extending the first turn's 150) ran after the
    // failed row's 4 s gap, and hit the first turn's cached prompt and answer.
    assert_eq!(num(&rows[2], "prompt_tokens"), 170.0);
    assert!(num(&rows[2], "arrival_s") >= num(failed, "arrival_s") + 4.0);
    assert!(num(&rows[2], "cached_tokens") >= 144.0, "{:?}", rows[2]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["requests_failed"], 1);
    assert_eq!(summary["requests_finished"], 2);
    assert_eq!(summary["requests"], 3);
}

/// A session ends (`NextTurn::Ended`) exactly when its last turn leaves, in both replay modes: open loop,
/// when the last of its replayed records completes (the others answer `OwnSchedule`); closed loop, when
/// the turn that has no successor completes (the others give the next release time).
#[test]
fn a_session_ends_when_its_last_turn_leaves_in_either_mode() {
    use servesim::time::SimTime;
    use servesim::workload::{NextTurn, Workload};
    // Session 7: three turns; session 9: one.
    let text = "session_id,turn,arrival_s,think_time_s,priority,prompt,response_content,output_tokens,max_tokens\n\
        7,1,0.0,,0,0000000000000001:40,00000000000000a1,5,5\n\
        7,2,1.0,2.0,0,0000000000000001:40 00000000000000a1:5 0000000000000002:10,00000000000000a2,5,5\n\
        7,3,2.0,2.0,0,0000000000000001:40 00000000000000a1:5 0000000000000002:10 00000000000000a2:5 0000000000000003:10,00000000000000a3,5,5\n\
        9,1,0.5,,0,0000000000000004:40,00000000000000b1,5,5\n";
    let t = trace::native::parse(text, Path::new("t.csv")).unwrap();
    let now = SimTime::ZERO;
    let open_cfg = TraceConfig {
        mode: ReplayMode::Open,
        ..TraceConfig::default()
    };
    let mut open = TraceWorkload::new(t.clone(), &open_cfg, None, None, 4096).unwrap();
    let ends: Vec<NextTurn> = [7, 9, 7, 7]
        .iter()
        .map(|&s| open.on_turn_complete(s, 5, now))
        .collect();
    assert_eq!(
        ends,
        [
            NextTurn::OwnSchedule,
            NextTurn::Ended,
            NextTurn::OwnSchedule,
            NextTurn::Ended
        ]
    );
    let closed = TraceConfig {
        mode: ReplayMode::Closed,
        ..TraceConfig::default()
    };
    let mut w = TraceWorkload::new(t, &closed, None, None, 4096).unwrap();
    w.start_session(7, now).unwrap();
    let mut seen = Vec::new();
    loop {
        match w.on_turn_complete(7, 5, now) {
            NextTurn::At(t) => {
                seen.push(t);
                w.release_turn(7, t).unwrap();
            }
            other => {
                assert_eq!(other, NextTurn::Ended);
                break;
            }
        }
    }
    // Two more turns, each 2 s of think time after the previous completion (at 0 here).
    assert_eq!(seen.len(), 2);
}
