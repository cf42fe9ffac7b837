//! Trace replay: readers (one file per format), replay controls, and the replaying workload.
//!
//! To add a format: one reader file here returning a [`Trace`], one `TraceFormat` arm in `config.rs`, and
//! its call in `parse`; the reader's errors name the file, line and field.
//!
//! Every reader turns a file into [`TraceRecord`]s: one request each, with its session and turn where the
//! trace has sessions, its recorded arrival, its prompt as content segments and its output length. Errors
//! name the file, the line and the field.
//!
//! Replay is open loop (each request at its recorded time) or closed loop (a session's next turn is sent
//! the recorded gap after the previous turn *completes*). Closed loop is the default for traces with
//! sessions: a follow-up turn's prompt contains the previous answer, so a real user could not send it before
//! that answer arrived, and on a slower simulated system an open-loop replay would send it anyway.

pub mod azure;
pub mod burstgpt;
pub mod mooncake;
pub mod native;

use super::content::{extend_block_hashes, Segment};
use super::conversation::{NewRequest, Release};
use super::{NextTurn, Workload};
use crate::config::{ReplayMode, TraceConfig, TraceFormat};
use crate::error::ConfigError;
use crate::event::SessionId;
use crate::request::Request;
use crate::time::{SimDuration, SimTime};
use crate::workload::rate::RateShape;
use std::collections::HashSet;
use std::path::Path;

/// One request of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// Dense session index (0..sessions), in order of first appearance.
    pub session: u64,
    /// 1-based turn within the session.
    pub turn: u32,
    /// Recorded arrival, seconds from the trace start (None for later turns of a native closed-loop trace).
    pub arrival_s: Option<f64>,
    /// Closed-loop delay between the previous turn's completion and this turn (turns after the first).
    pub gap_s: Option<f64>,
    pub priority: i64,
    pub prompt: Vec<Segment>,
    /// Content id of the tokens this request generates.
    pub response_content: u64,
    /// Recorded output length: the replayed request generates exactly this many tokens.
    pub output_tokens: u32,
    /// The cap the engine sees (defaults to the recorded output length, as `vllm bench serve` does with
    /// ignore_eos).
    pub max_tokens: u32,
    /// Line of the source file (1-based, header = line 1 for CSV).
    pub line: usize,
    /// A request the trace records as failed (BurstGPT: 0 response tokens). It is replayed as a `failed`
    /// row of `requests.csv` at its arrival, with no engine work, and its session goes on.
    pub failed: bool,
}

impl TraceRecord {
    /// A request of a trace without sessions: its own session, turn 1, generating exactly its recorded
    /// output.
    pub fn single_turn(
        index: u64,
        arrival_s: f64,
        prompt: Vec<Segment>,
        response_content: u64,
        output_tokens: u32,
        line: usize,
    ) -> TraceRecord {
        TraceRecord {
            session: index,
            turn: 1,
            arrival_s: Some(arrival_s),
            gap_s: None,
            priority: 0,
            prompt,
            response_content,
            output_tokens,
            max_tokens: output_tokens,
            line,
            failed: false,
        }
    }

    pub fn input_tokens(&self) -> u64 {
        super::content::total_tokens(&self.prompt)
    }
}

/// A parsed trace.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub records: Vec<TraceRecord>,
    /// True when the format carries session ids (closed-loop replay is possible).
    pub has_sessions: bool,
    /// Records of recorded failures (`TraceRecord::failed`), kept in the replay and marked.
    pub failed_rows: u64,
    /// How prompts share content: stated in every run's summary.
    pub content: String,
}

pub(crate) fn parse_err(path: &Path, line: usize, message: String) -> ConfigError {
    ConfigError::Parse {
        origin: format!("{} line {line}", path.display()),
        message,
    }
}

/// A CSV reader over `text` and the positions of the `names` columns in its header. A missing column is an
/// error naming the file and `hint` (what the format's header holds).
pub(crate) fn csv_columns<'a>(
    text: &'a str,
    path: &Path,
    names: &[&str],
    hint: &str,
) -> Result<(csv::Reader<&'a [u8]>, Vec<usize>), ConfigError> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| parse_err(path, 1, format!("cannot read the header: {e}")))?
        .clone();
    let cols = names
        .iter()
        .map(|name| {
            headers
                .iter()
                .position(|h| h.trim() == *name)
                .ok_or_else(|| parse_err(path, 1, format!("missing column `{name}`; {hint}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((rdr, cols))
}

/// Reads a trace in the given format.
pub fn read(cfg: &TraceConfig) -> Result<Trace, ConfigError> {
    let path = Path::new(&cfg.path);
    let text =
        crate::input::read_text(crate::input::InputKind::Trace, path).map_err(|e| match e {
            // A relative path is read from the working directory, which a user running a shipped config
            // from elsewhere may not expect.
            ConfigError::Read { source, .. } => ConfigError::invalid(
                "workload.trace.path",
                format!(
                    "cannot read trace file {}: {source}{}",
                    path.display(),
                    if path.is_relative() {
                        format!(
                        " (a relative path is read from the working directory, {}; run from the \
                         directory the path is relative to, or give an absolute path)",
                        std::env::current_dir()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|_| "unknown".into())
                    )
                    } else {
                        String::new()
                    }
                ),
            ),
            other => other,
        })?;
    parse(&text, path, cfg)
}

/// Parses trace text already in memory (tests and fuzzing use this).
pub fn parse(text: &str, path: &Path, cfg: &TraceConfig) -> Result<Trace, ConfigError> {
    // A byte-order mark is dropped whatever the format (spreadsheet exports write one).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    crate::input::check_line_lengths(text, path)?;
    let trace = match cfg.format {
        TraceFormat::Mooncake => mooncake::parse(text, path, cfg.block_tokens)?,
        TraceFormat::Azure => azure::parse(text, path, cfg.shared_prefix_tokens)?,
        TraceFormat::Burstgpt => burstgpt::parse(text, path)?,
        TraceFormat::Servesim => native::parse(text, path)?,
    };
    if trace.records.is_empty() {
        return Err(parse_err(
            path,
            1,
            "the trace is empty: it needs at least one request".into(),
        ));
    }
    Ok(trace)
}

/// Guesses a trace file's format from its first line.
pub fn detect_format(path: &Path) -> Result<TraceFormat, ConfigError> {
    let text = crate::input::read_text(crate::input::InputKind::Trace, path)?;
    let first = text
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches('\u{feff}');
    if first.trim_start().starts_with('{') {
        Ok(TraceFormat::Mooncake)
    } else if first.starts_with("TIMESTAMP,") {
        Ok(TraceFormat::Azure)
    } else if first.starts_with("Timestamp,") {
        Ok(TraceFormat::Burstgpt)
    } else if first.starts_with("session_id,") {
        Ok(TraceFormat::Servesim)
    } else {
        Err(parse_err(
            path,
            1,
            "cannot tell the trace format from the first line; pass --format mooncake|azure|burstgpt|servesim"
                .into(),
        ))
    }
}

/// The nominal arrival of every record: recorded where known, else the previous turn's nominal arrival
/// plus the gap (service time ignored). Records must be grouped by session in turn order for this.
pub fn nominal_arrivals(records: &[TraceRecord]) -> Vec<f64> {
    let mut last: std::collections::HashMap<u64, f64> = std::collections::HashMap::new();
    records
        .iter()
        .map(|r| {
            let t = match (r.arrival_s, r.gap_s) {
                (Some(a), _) => a,
                (None, g) => last.get(&r.session).copied().unwrap_or(0.0) + g.unwrap_or(0.0),
            };
            last.insert(r.session, t);
            t
        })
        .collect()
}

/// The infinite-cache prefix reuse ratio: with a cache that never evicts and requests in nominal arrival
/// order, the share of prompt tokens a vLLM lookup would hit (leading blocks seen before, capped at
/// floor((tokens - 1) / block) blocks). Generated tokens are cached too, so a follow-up turn reuses the
/// previous answer.
pub fn reuse_ratio(records: &[TraceRecord], block_size: u32) -> f64 {
    let nominal = nominal_arrivals(records);
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|&a, &b| nominal[a].total_cmp(&nominal[b]));
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut queried, mut hit) = (0u64, 0u64);
    for i in order {
        let r = &records[i];
        if r.failed {
            continue; // never run: neither queried nor cached
        }
        let len = r.input_tokens();
        let mut hashes = Vec::new();
        extend_block_hashes(&r.prompt, block_size, 0, &mut hashes);
        let cap = (len.saturating_sub(1) / block_size as u64) as usize;
        let h = hashes
            .iter()
            .take(cap)
            .take_while(|h| seen.contains(*h))
            .count();
        queried += len;
        hit += h as u64 * block_size as u64;
        let mut full = r.prompt.clone();
        full.push(Segment {
            content: r.response_content,
            len: r.output_tokens,
        });
        extend_block_hashes(&full, block_size, 0, &mut hashes);
        seen.extend(hashes);
    }
    if queried == 0 {
        0.0
    } else {
        hit as f64 / queried as f64
    }
}

/// Replays a trace, open or closed loop.
pub struct TraceWorkload {
    records: Vec<TraceRecord>,
    /// Per session (dense index), its records in turn order (closed loop).
    sessions: Vec<Vec<usize>>,
    /// Session id as the trace names it -> dense index.
    dense: std::collections::HashMap<u64, usize>,
    /// Event ids in start order, with their start times: sessions (closed) or records (open).
    starts: Vec<(u64, SimTime)>,
    next_start: usize,
    /// Per session, the index (into its records) of the next turn to release.
    next_turn: Vec<usize>,
    /// Open loop, per session: replayed records that have not left the system yet.
    open_left: Vec<u32>,
    /// Open loop, per session: a record of it has been queued; and how many sessions have one.
    open_started: Vec<bool>,
    open_started_count: u64,
    closed: bool,
    max_model_len: u32,
    next_request: u64,
    content: String,
    has_sessions: bool,
    /// Each record's replay time in seconds (None: not replayed).
    replay_s: Vec<Option<f64>>,
}

impl TraceWorkload {
    /// Reads the trace and prepares its replay; `shape` (`workload.rate_schedule`) reshapes its speed
    /// over time.
    pub fn load(
        cfg: &TraceConfig,
        duration_s: Option<f64>,
        max_requests: Option<u64>,
        max_model_len: u32,
        shape: Option<RateShape>,
    ) -> Result<TraceWorkload, ConfigError> {
        let trace = read(cfg)?;
        Self::with_schedule(trace, cfg, duration_s, max_requests, max_model_len, shape)
    }

    /// The replay of `trace` at a constant speed.
    pub fn new(
        trace: Trace,
        cfg: &TraceConfig,
        duration_s: Option<f64>,
        max_requests: Option<u64>,
        max_model_len: u32,
    ) -> Result<TraceWorkload, ConfigError> {
        Self::with_schedule(trace, cfg, duration_s, max_requests, max_model_len, None)
    }

    /// The replay of `trace`, its speed a factor `shape` on `speedup` over replay time: a record
    /// `x` seconds (at the base speed) after the replay's origin arrives at the time the integral of
    /// the factor reaches `x` (`workload/rate.rs`). Think times keep the base speed.
    pub fn with_schedule(
        trace: Trace,
        cfg: &TraceConfig,
        duration_s: Option<f64>,
        max_requests: Option<u64>,
        max_model_len: u32,
        mut shape: Option<RateShape>,
    ) -> Result<TraceWorkload, ConfigError> {
        let closed = match cfg.mode {
            ReplayMode::Closed => {
                if !trace.has_sessions {
                    return Err(ConfigError::invalid(
                        "workload.trace.mode",
                        "closed-loop replay needs session ids; this format has none, use mode = \"open\"",
                    ));
                }
                true
            }
            ReplayMode::Open => false,
            ReplayMode::Auto => trace.has_sessions,
        };
        let mut records = trace.records;
        // Window and bounds act on nominal arrival times, so the replayed set of requests does not depend on
        // the engine.
        let nominal = nominal_arrivals(&records);
        let start = cfg.start_s;
        let first = nominal.iter().copied().fold(f64::INFINITY, f64::min);
        let origin = first.max(start);
        let mut order: Vec<usize> = (0..records.len())
            .filter(|&i| nominal[i] >= start)
            .collect();
        order.sort_by(|&a, &b| nominal[a].total_cmp(&nominal[b]));
        // Target rate rescales gaps so the replayed mean rate matches.
        let mut scale = 1.0 / cfg.speedup;
        if let Some(rate) = cfg.target_rate {
            let n = order.len();
            let span = if n > 1 {
                nominal[order[n - 1]] - nominal[order[0]]
            } else {
                0.0
            };
            if n < 2 || span <= 0.0 {
                return Err(ConfigError::invalid(
                    "workload.trace.target_rate",
                    "the trace window spans no time, so it has no rate to rescale",
                ));
            }
            scale = ((n - 1) as f64 / span) / rate;
        }
        // Each record's replay time in seconds, in time order (so a schedule advances step by step);
        // None past a schedule's end (a factor of 0 for ever).
        let mut replay_s: Vec<Option<f64>> = vec![None; records.len()];
        let mut last = (0.0, 0.0);
        for &i in &order {
            let x = ((nominal[i] - origin) * scale).max(0.0);
            replay_s[i] = match &mut shape {
                None => Some(x),
                Some(s) => s.advance(last.1, x - last.0).inspect(|&t| last = (x, t)),
            };
            if replay_s[i].is_none() {
                break;
            }
        }
        let mut keep = vec![false; records.len()];
        for (k, &i) in order.iter().enumerate() {
            if max_requests.is_some_and(|m| k as u64 >= m) {
                break;
            }
            match replay_s[i] {
                Some(t) if duration_s.is_none_or(|d| t < d) => keep[i] = true,
                _ => break,
            }
        }
        // Closed loop: a session keeps its turns up to its first dropped one.
        let mut dense = std::collections::HashMap::new();
        for r in &records {
            let next = dense.len();
            dense.entry(r.session).or_insert(next);
        }
        let n_sessions = dense.len();
        let mut sessions: Vec<Vec<usize>> = vec![Vec::new(); n_sessions];
        let mut broken = vec![false; n_sessions];
        for (i, r) in records.iter().enumerate() {
            let s = dense[&r.session];
            if !keep[i] || broken[s] {
                if closed {
                    broken[s] = true;
                }
                keep[i] = false;
                continue;
            }
            sessions[s].push(i);
        }
        let at = |i: usize| {
            SimTime::ZERO
                + SimDuration::from_secs_f64(replay_s[i].expect("kept records have times"))
        };
        let mut starts: Vec<(u64, SimTime)> = if closed {
            sessions
                .iter()
                .filter(|v| !v.is_empty())
                .map(|v| (records[v[0]].session, at(v[0])))
                .collect()
        } else {
            (0..records.len())
                .filter(|&i| keep[i])
                .map(|i| (i as u64, at(i)))
                .collect()
        };
        starts.sort_by_key(|&(id, t)| (t, id));
        for r in &mut records {
            if let Some(g) = r.gap_s.as_mut() {
                *g *= scale;
            }
        }
        Ok(TraceWorkload {
            next_turn: vec![0; n_sessions],
            open_left: sessions.iter().map(|v| v.len() as u32).collect(),
            open_started: vec![false; n_sessions],
            open_started_count: 0,
            records,
            sessions,
            dense,
            starts,
            next_start: 0,
            closed,
            max_model_len,
            next_request: 0,
            content: trace.content,
            has_sessions: trace.has_sessions,
            replay_s,
        })
    }

    /// The records this replay releases (the window, bounds and closed-loop cuts applied), in trace order,
    /// with recorded times shifted to the replay's start and scaled as the replay scales them: what
    /// `workload stats --config` describes, so it describes what `run` replays.
    pub fn into_trace(self) -> Trace {
        let mut kept = vec![false; self.records.len()];
        for &i in self.sessions.iter().flatten() {
            kept[i] = true;
        }
        let replay_s = self.replay_s;
        let out: Vec<TraceRecord> = self
            .records
            .into_iter()
            .zip(kept)
            .enumerate()
            .filter(|(_, (_, k))| *k)
            .map(|(i, (mut r, _))| {
                if r.arrival_s.is_some() {
                    r.arrival_s = replay_s[i];
                }
                r
            })
            .collect();
        Trace {
            failed_rows: out.iter().filter(|r| r.failed).count() as u64,
            records: out,
            has_sessions: self.has_sessions,
            content: self.content,
        }
    }

    /// Requests the replay will release.
    pub fn len(&self) -> usize {
        if self.closed {
            self.sessions.iter().map(Vec::len).sum()
        } else {
            self.starts.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release_record(&mut self, i: usize, now: SimTime) -> Release {
        let rec = &self.records[i];
        let input = rec.input_tokens();
        let fits = input < self.max_model_len as u64;
        let max_tokens = if fits {
            (rec.max_tokens as u64).min(self.max_model_len as u64 - input) as u32
        } else {
            rec.max_tokens
        };
        let id = self.next_request;
        self.next_request += 1;
        let request = Request::new(
            id,
            rec.session,
            rec.turn,
            rec.priority,
            now,
            rec.prompt.clone(),
            rec.response_content,
            max_tokens,
        );
        let nr = NewRequest {
            request,
            true_output_tokens: rec.output_tokens,
        };
        if rec.failed {
            Release::Failed(nr)
        } else if fits {
            Release::Request(nr)
        } else {
            Release::Rejected(nr)
        }
    }
}

impl Workload for TraceWorkload {
    fn next_session_start(&mut self) -> Option<(SessionId, SimTime)> {
        let s = self.starts.get(self.next_start).copied();
        self.next_start += 1;
        if let (Some((i, _)), false) = (s, self.closed) {
            let d = self.dense[&self.records[i as usize].session];
            if !std::mem::replace(&mut self.open_started[d], true) {
                self.open_started_count += 1;
            }
        }
        s
    }

    fn start_session(&mut self, id: SessionId, now: SimTime) -> Option<Release> {
        if self.closed {
            self.release_turn(id, now)
        } else {
            Some(self.release_record(id as usize, now))
        }
    }

    fn release_turn(&mut self, id: SessionId, now: SimTime) -> Option<Release> {
        let s = *self.dense.get(&id)?;
        let i = *self.sessions.get(s)?.get(self.next_turn[s])?;
        self.next_turn[s] += 1;
        let mut rel = self.release_record(i, now);
        if let Release::Request(nr) = &mut rel {
            nr.request.last_turn = self.next_turn[s] == self.sessions[s].len();
        }
        if matches!(rel, Release::Rejected(_)) {
            // The session cannot go on without this turn's answer.
            self.next_turn[s] = usize::MAX / 2;
        }
        Some(rel)
    }

    fn on_turn_complete(&mut self, id: SessionId, _out: u32, now: SimTime) -> NextTurn {
        let Some(&s) = self.dense.get(&id) else {
            return NextTurn::Ended;
        };
        if !self.closed {
            // Open loop: the session ends when the last of its replayed records leaves.
            let left = &mut self.open_left[s];
            *left = left.saturating_sub(1);
            return if *left == 0 {
                NextTurn::Ended
            } else {
                NextTurn::OwnSchedule
            };
        }
        match self.sessions[s].get(self.next_turn[s]) {
            Some(&i) => {
                let gap = self.records[i].gap_s.unwrap_or(0.0).max(0.0);
                NextTurn::At(now + SimDuration::from_secs_f64(gap))
            }
            None => NextTurn::Ended,
        }
    }

    fn sessions_started(&self) -> u64 {
        if self.closed {
            self.next_start.min(self.starts.len()) as u64
        } else {
            self.open_started_count
        }
    }

    fn content_note(&self) -> &str {
        &self.content
    }
}
