//! The conversational workload: sessions of turns whose context accumulates.
//!
//! Sessions start as a Poisson (or gamma) process. Each session draws, from its own random stream, its
//! system prompt, its number of turns and every turn's message, response length and think time, so a session
//! is the same whatever the engine does; only when its turns are released depends on the engine (turn k+1 is
//! released think-time after turn k completes). `duration_s` bounds session starts and keeps the turns whose
//! nominal release time (session start plus earlier think times, service time ignored) falls inside it, so
//! the set of requests depends only on the seed and the workload, never on the engine: runs that differ in
//! policy serve identical requests. Turn k's prompt is the system prompt, then every earlier
//! user message and response of the session, then the new message: turn k+1 extends turn k exactly.

use crate::config::{ArrivalProcess, WorkloadConfig};
use crate::event::SessionId;
use crate::fasthash::FastMap;
use crate::request::Request;
use crate::rng::{mix, RngStreams, StreamRng};
use crate::time::{SimDuration, SimTime};
use crate::workload::content::{HashChain, Segment};
use crate::workload::dist::Sampler;
use crate::workload::{NextTurn, Workload};
use rand::Rng;
use rand_distr::{Distribution, Gamma};

/// Content-id namespaces, so ids of different kinds never collide.
const NS_SYSTEM: u64 = 1;
const NS_USER: u64 = 2;
const NS_DOC: u64 = 3;
const NS_RESPONSE: u64 = 4;

fn content_id(ns: u64, a: u64, b: u64) -> u64 {
    mix(mix(ns, a), b)
}

/// One turn as drawn when its session starts.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnSpec {
    pub user_tokens: u32,
    /// A pasted document (0 if none).
    pub doc_tokens: u32,
    /// True response length (the model's EOS point); hidden from the engine.
    pub response_tokens: u32,
    /// Delay between this turn's completion and the next turn's release.
    pub think_time: SimDuration,
}

/// An earlier turn kept in the session's history.
#[derive(Clone, Debug)]
struct PastTurn {
    user: Vec<Segment>,
    response: Segment,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    pub priority: i64,
    pub system_prompt: Option<Segment>,
    pub turns: Vec<TurnSpec>,
    /// Index of the next turn to release.
    next_turn: usize,
    history: Vec<PastTurn>,
    /// History turns dropped by truncation (the prefix changed at that point).
    pub truncated_turns: usize,
    /// The last finished turn's block hashes: the next prompt starts with that turn's prompt and response,
    /// so its hashes begin with these (unless truncation drops a turn first).
    carried: HashChain,
    /// Turns were cut at the end of the load (`duration_s` or `max_requests`).
    cut: bool,
    /// The sampling profile every turn sends (index into `workload.sampling`).
    pub sampling: u16,
}

/// A request the generator hands to the world, with its hidden true output length.
#[derive(Debug)]
pub struct NewRequest {
    pub request: Request,
    /// The model's EOS point: the replica's stop oracle uses it; the scheduler never sees it.
    pub true_output_tokens: u32,
}

/// What happened to a released turn.
#[derive(Debug)]
pub enum Release {
    Request(NewRequest),
    /// The prompt cannot fit the model's context even after truncation: a rejected request.
    Rejected(NewRequest),
    /// A request the trace records as failed: it is recorded as such, does no engine work, and (closed loop)
    /// its session goes on after the next turn's gap.
    Failed(NewRequest),
}

struct Samplers {
    turns: Sampler,
    user: Sampler,
    doc: Sampler,
    response: Sampler,
    think: Sampler,
    priority: Sampler,
}

pub struct ConversationGenerator {
    cfg: WorkloadConfig,
    streams: RngStreams,
    arrivals: StreamRng,
    samplers: Samplers,
    gap_gamma: Option<Gamma<f64>>,
    /// `workload.rate_schedule`, with the last session start in float seconds it advances from.
    schedule: Option<(crate::workload::rate::RateShape, f64)>,
    horizon: Option<SimTime>,
    max_model_len: u32,
    next_session: SessionId,
    next_request: u64,
    /// Turns of every session started so far (what `max_requests` bounds).
    reserved_turns: u64,
    sessions: FastMap<SessionId, Session>,
    /// Sessions ended early because the load's end cut their later turns.
    cut_ended: u64,
    last_start: SimTime,
}

impl ConversationGenerator {
    pub fn new(cfg: &WorkloadConfig, streams: RngStreams, max_model_len: u32) -> Self {
        let gap_gamma = match cfg.arrival {
            ArrivalProcess::Poisson => None,
            ArrivalProcess::Gamma => Some(
                Gamma::new(cfg.burstiness, 1.0 / (cfg.session_rate * cfg.burstiness))
                    .expect("validated"),
            ),
        };
        ConversationGenerator {
            samplers: Samplers {
                turns: cfg.turns.sampler(),
                user: cfg.user_tokens.sampler(),
                doc: cfg.doc_tokens.sampler(),
                response: cfg.response_tokens.sampler(),
                think: cfg.think_time_s.sampler(),
                priority: cfg.priority.sampler(),
            },
            cfg: cfg.clone(),
            arrivals: streams.stream("workload.arrivals"),
            streams,
            gap_gamma,
            schedule: crate::workload::rate::RateShape::of(cfg, streams).map(|s| (s, 0.0)),
            horizon: cfg
                .duration_s
                .map(|d| SimTime::ZERO + SimDuration::from_secs_f64(d)),
            max_model_len,
            next_session: 0,
            next_request: 0,
            reserved_turns: 0,
            cut_ended: 0,
            sessions: FastMap::default(),
            last_start: SimTime::ZERO,
        }
    }

    fn within_horizon(&self, t: SimTime) -> bool {
        self.horizon.is_none_or(|h| t < h)
    }

    fn request_budget_left(&self) -> bool {
        self.cfg
            .max_requests
            .is_none_or(|m| self.reserved_turns < m)
    }

    fn draw_gap(&mut self) -> f64 {
        match &self.gap_gamma {
            None => {
                let u: f64 = self.arrivals.random();
                -(1.0 - u).ln() / self.cfg.session_rate
            }
            Some(g) => g.sample(&mut self.arrivals),
        }
    }
}

impl Workload for ConversationGenerator {
    /// The start time of the next session, or None when the workload is exhausted. Call once per session.
    fn next_session_start(&mut self) -> Option<(SessionId, SimTime)> {
        if self
            .cfg
            .max_sessions
            .is_some_and(|m| self.next_session >= m)
            || !self.request_budget_left()
        {
            return None;
        }
        let gap = self.draw_gap();
        // The first session starts at t = 0 so every run opens with traffic.
        let t = if self.next_session == 0 {
            SimTime::ZERO
        } else if let Some((shape, last)) = &mut self.schedule {
            // The gap, in seconds at the base rate, spent at the scheduled rate (`workload/rate.rs`).
            let x = shape.advance(*last, gap)?;
            *last = x;
            (SimTime::ZERO + SimDuration::from_secs_f64(x)).max(self.last_start)
        } else {
            self.last_start + SimDuration::from_secs_f64(gap)
        };
        if !self.within_horizon(t) {
            return None;
        }
        self.last_start = t;
        let id = self.next_session;
        self.next_session += 1;
        Some((id, t))
    }

    fn start_session(&mut self, id: SessionId, now: SimTime) -> Option<Release> {
        let mut s = self.draw_session(id);
        let drawn = s.turns.len();
        // `duration_s` keeps a turn when its nominal release time (the session start plus the preceding think
        // times, ignoring service time) falls inside the window. Deciding on nominal times keeps the request
        // set independent of the engine; releases still happen at completion + think time.
        if let Some(h) = self.horizon {
            let mut nominal = now;
            let mut keep = 0;
            for t in &s.turns {
                if nominal >= h {
                    break;
                }
                keep += 1;
                nominal += t.think_time;
            }
            s.turns.truncate(keep.max(1));
        }
        // `max_requests` cuts the last session's script, never a release at run time, so the set of requests
        // does not depend on how fast the engine serves them.
        if let Some(m) = self.cfg.max_requests {
            let left = m.saturating_sub(self.reserved_turns) as usize;
            s.turns.truncate(left);
        }
        s.cut = s.turns.len() < drawn;
        self.reserved_turns += s.turns.len() as u64;
        self.sessions.insert(id, s);
        self.release_turn(id, now)
    }

    fn release_turn(&mut self, id: SessionId, now: SimTime) -> Option<Release> {
        self.release(id, now)
    }

    fn on_turn_complete(&mut self, id: SessionId, output_tokens: u32, now: SimTime) -> NextTurn {
        match self.complete(id, output_tokens, now) {
            Some(t) => NextTurn::At(t),
            // The last turn, or a rejected one (its session was dropped when it was released).
            None => NextTurn::Ended,
        }
    }

    fn carry_block_hashes(&mut self, id: SessionId, hashes: HashChain) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.carried = hashes;
        }
    }

    fn population(&self) -> Option<u64> {
        Some(self.sessions.len() as u64 + self.cut_ended)
    }

    fn sessions_started(&self) -> u64 {
        self.next_session
    }

    fn content_note(&self) -> &str {
        "generated: shared system prompts and each session's accumulated history"
    }
}

impl ConversationGenerator {
    /// Draws a session's whole script from its own stream.
    pub fn draw_session(&self, id: SessionId) -> Session {
        let mut rng = self.streams.indexed("workload.session", id);
        let c = &self.cfg;
        let system_prompt = if c.system_prompts.is_empty() {
            None
        } else {
            let total: f64 = c.system_prompts.iter().map(|s| s.share).sum();
            let mut u = rng.random::<f64>() * total;
            let mut pick = c.system_prompts.len() - 1;
            for (i, s) in c.system_prompts.iter().enumerate() {
                if u < s.share {
                    pick = i;
                    break;
                }
                u -= s.share;
            }
            let tokens = c.system_prompts[pick].tokens;
            (tokens > 0).then_some(Segment {
                content: content_id(NS_SYSTEM, pick as u64, tokens as u64),
                len: tokens,
            })
        };
        let n_turns = self.samplers.turns.sample_tokens(&mut rng, 1);
        let priority = self.samplers.priority.sample(&mut rng).round() as i64;
        let turns = (0..n_turns)
            .map(|k| {
                let user_tokens = self.samplers.user.sample_tokens(&mut rng, 1);
                let p_doc = match c.first_turn_doc_probability {
                    Some(p) if k == 0 => p,
                    _ => c.doc_probability,
                };
                let doc = rng.random::<f64>() < p_doc;
                let doc_tokens = if doc {
                    self.samplers.doc.sample_tokens(&mut rng, 1)
                } else {
                    0
                };
                TurnSpec {
                    user_tokens,
                    doc_tokens,
                    response_tokens: self.samplers.response.sample_tokens(&mut rng, 1),
                    think_time: SimDuration::from_secs_f64(self.samplers.think.sample(&mut rng)),
                }
            })
            .collect();
        Session {
            id,
            priority,
            system_prompt,
            turns,
            next_turn: 0,
            history: Vec::new(),
            truncated_turns: 0,
            carried: HashChain::default(),
            cut: false,
            sampling: self.draw_sampling(id),
        }
    }

    /// The session's sampling profile, by share, from a stream of its own (so that adding profiles
    /// changes no other draw); 0 without profiles.
    fn draw_sampling(&self, id: SessionId) -> u16 {
        let p = &self.cfg.sampling;
        if p.len() <= 1 {
            return 0;
        }
        let mut rng = self.streams.indexed("workload.sampling", id);
        let total: f64 = p.iter().map(|x| x.share).sum();
        let mut u = rng.random::<f64>() * total;
        for (i, x) in p.iter().enumerate() {
            if u < x.share {
                return i as u16;
            }
            u -= x.share;
        }
        (p.len() - 1) as u16
    }

    /// Releases the session's next turn as a request arriving `now`, or None when the session is over or
    /// the workload's bounds stop it.
    fn release(&mut self, id: SessionId, now: SimTime) -> Option<Release> {
        let max_tokens_cfg = self.cfg.max_tokens;
        let truncate = self.cfg.truncate_context;
        let max_model_len = self.max_model_len as u64;
        let s = self.sessions.get_mut(&id)?;
        let k = s.next_turn;
        let spec = s.turns.get(k)?.clone();
        s.next_turn += 1;
        let mut new_msg = vec![Segment {
            content: content_id(NS_USER, id, k as u64),
            len: spec.user_tokens,
        }];
        if spec.doc_tokens > 0 {
            new_msg.push(Segment {
                content: content_id(NS_DOC, id, k as u64),
                len: spec.doc_tokens,
            });
        }
        let fixed: u64 = s.system_prompt.map_or(0, |p| p.len as u64)
            + new_msg.iter().map(|x| x.len as u64).sum::<u64>();
        let hist_len = |h: &[PastTurn]| -> u64 {
            h.iter()
                .map(|t| t.response.len as u64 + t.user.iter().map(|x| x.len as u64).sum::<u64>())
                .sum()
        };
        // Truncation drops whole oldest turns until the prompt leaves room for max_tokens.
        if truncate {
            while !s.history.is_empty()
                && fixed + hist_len(&s.history) + max_tokens_cfg as u64 > max_model_len
            {
                s.history.remove(0);
                s.truncated_turns += 1;
                // A new chain: the old one's runs in the cache still read it.
                s.carried = HashChain::default();
            }
        }
        let mut prompt = Vec::with_capacity(2 * s.history.len() + 3);
        prompt.extend(s.system_prompt);
        for t in &s.history {
            prompt.extend_from_slice(&t.user);
            prompt.push(t.response);
        }
        prompt.extend_from_slice(&new_msg);
        let prompt_tokens: u64 = prompt.iter().map(|x| x.len as u64).sum();
        s.history.push(PastTurn {
            user: new_msg,
            // Filled with the real response length when the turn completes.
            response: Segment {
                content: content_id(NS_RESPONSE, id, k as u64),
                len: 0,
            },
        });
        let rid = self.next_request;
        self.next_request += 1;
        let rejected = prompt_tokens >= max_model_len;
        let max_tokens = if rejected {
            max_tokens_cfg
        } else {
            (max_tokens_cfg as u64).min(max_model_len - prompt_tokens) as u32
        };
        let mut request = Request::new(
            rid,
            id,
            k as u32 + 1,
            s.priority,
            now,
            prompt,
            content_id(NS_RESPONSE, id, k as u64),
            max_tokens,
        );
        request.block_hashes = std::mem::take(&mut s.carried);
        request.sampling = s.sampling;
        request.last_turn = k + 1 == s.turns.len();
        let nr = NewRequest {
            request,
            true_output_tokens: spec.response_tokens,
        };
        if rejected {
            if self.sessions.remove(&id).is_some_and(|s| s.cut) {
                self.cut_ended += 1;
            }
            Some(Release::Rejected(nr))
        } else {
            Some(Release::Request(nr))
        }
    }

    /// Records a completed turn's real response length and returns when the next turn is released (None if
    /// the session is over).
    fn complete(&mut self, id: SessionId, output_tokens: u32, now: SimTime) -> Option<SimTime> {
        let s = self.sessions.get_mut(&id)?;
        let last = s.history.last_mut().expect("a released turn is in history");
        last.response.len = output_tokens;
        if s.next_turn >= s.turns.len() {
            if s.cut {
                self.cut_ended += 1;
            }
            self.sessions.remove(&id);
            return None;
        }
        let think = s.turns[s.next_turn - 1].think_time;
        Some(now + think)
    }
}
