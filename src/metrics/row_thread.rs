//! `requests.csv` written on a thread of its own. A run writes a row per request, a million in the largest
//! benchmark, and formatting them was about a twentieth of the run's time on the simulation's thread; the
//! simulation now only copies each row's fields into a batch and hands full batches over. The rows are
//! formatted by the same code in the same order, so the file is the same bytes as when written inline.
//!
//! The thread writes through a [`RowWriter`]: CSV here, Parquet in `parquet.rs` (`run --format parquet`).
//!
//! Errors: a write error ends the thread, which keeps the error; the next hand-over (or `finish`) finds
//! the thread gone and returns that error, naming the file.

use super::io_err;
use super::row::RowBuf;
use crate::error::OutputError;
use crate::event::{ReplicaId, SessionId};
use crate::request::{FailureReason, Request, RequestId, Status, StopReason};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Rows per hand-over: large enough that the channel costs nothing per row, small enough to stay in cache.
const BATCH: usize = 1024;
/// Full batches that may wait for the writer before the simulation blocks (bounds the memory held).
const IN_FLIGHT: usize = 4;

/// The fields of one `requests.csv` row (column order: `REQUEST_COLUMNS`; the README defines each).
/// Times and spans are integer nanoseconds of virtual time, the file writes them in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestRow {
    pub id: RequestId,
    pub session: SessionId,
    pub turn: u32,
    /// None for requests that never reached a replica (rejected by the workload or the router,
    /// recorded failures); a `queue_full` rejection names the replica that refused it.
    pub replica: Option<ReplicaId>,
    pub status: Status,
    pub reason: Option<StopReason>,
    /// Arrival, first scheduled, first token and finish, in nanoseconds.
    pub times: [Option<u64>; 4],
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    /// Of `cached_tokens`, those loaded from the CPU and disk tiers.
    pub cached_tokens_tier: [u32; 2],
    /// Nanoseconds the tier load took.
    pub kv_load: u64,
    pub prefilled_tokens: u64,
    pub output_tokens: u32,
    /// TTFT, E2E and queueing time, in nanoseconds.
    pub ttft: Option<u64>,
    pub e2e: Option<u64>,
    pub queue: Option<u64>,
    /// Seconds per output token after the first (B2), for requests with more than one.
    pub tpot: Option<f64>,
    pub preemptions: u32,
    pub priority: i64,
    /// The request-level batch that ran it, and the padding its prompt carried there.
    pub batch_id: Option<u64>,
    pub padding_tokens: u32,
    pub attempt: u32,
    pub failure: Option<FailureReason>,
    /// Disaggregated serving: the prefill instance, and the finished request's timeline in
    /// nanoseconds (prefill queue, prefill, KV transfer, decode queue, decode; they add up to E2E).
    pub prefill_replica: Option<ReplicaId>,
    pub pd_timeline: Option<[u64; 5]>,
}

impl RequestRow {
    pub fn new(r: &Request, status: Status, tpot: Option<f64>) -> RequestRow {
        let span = |t: Option<crate::time::SimTime>| t.map(|t| t.since(r.arrival).0);
        RequestRow {
            id: r.id,
            session: r.session,
            turn: r.turn,
            replica: match status {
                Status::Failed => None,
                Status::Rejected => {
                    (r.failure == Some(FailureReason::QueueFull)).then_some(r.replica)
                }
                _ => Some(r.replica),
            },
            status,
            reason: r.finish_reason,
            times: [
                Some(r.arrival.0),
                r.first_scheduled.map(|t| t.0),
                r.first_token.map(|t| t.0),
                r.finish.map(|t| t.0),
            ],
            prompt_tokens: r.prompt_tokens,
            cached_tokens: r.num_cached_tokens.unwrap_or(0),
            cached_tokens_tier: r.cached_tokens_tier,
            kv_load: r.kv_load.0,
            prefilled_tokens: r.prefilled_tokens,
            output_tokens: r.num_output_tokens,
            ttft: span(r.first_token),
            e2e: span(r.finish),
            queue: span(r.first_scheduled),
            tpot,
            preemptions: r.preemptions,
            priority: r.priority,
            batch_id: r.batch_id,
            padding_tokens: r.padding_tokens,
            attempt: r.attempt,
            failure: r.failure,
            prefill_replica: r.pd.as_ref().map(|p| p.prefill_replica),
            pd_timeline: match (&r.pd, r.finish, status) {
                (Some(p), Some(f), Status::Finished) => p.timeline(r.arrival, f),
                _ => None,
            },
        }
    }

    /// The row's CSV line. Times and spans are integer nanoseconds, written in seconds
    /// (`RowBuf::secs_ns`); TPOT is a quotient, written from its float.
    pub(crate) fn format(&self, row: &mut RowBuf) {
        row.clear();
        row.int(self.id);
        row.int(self.session);
        row.int(self.turn);
        match self.replica {
            Some(i) => row.int(i),
            None => row.empty(),
        }
        row.str(self.status.as_str());
        row.str(self.reason.map(|f| f.as_str()).unwrap_or(""));
        for v in self.times {
            opt_secs_ns(row, v);
        }
        row.int(self.prompt_tokens);
        row.int(self.cached_tokens);
        let [cpu, disk] = self.cached_tokens_tier;
        row.int(self.cached_tokens - cpu - disk);
        row.int(cpu);
        row.int(disk);
        row.secs_ns(self.kv_load);
        row.int(self.prefilled_tokens);
        row.int(self.output_tokens);
        opt_secs_ns(row, self.ttft);
        match self.tpot {
            Some(v) => row.f6(v),
            None => row.empty(),
        }
        opt_secs_ns(row, self.e2e);
        opt_secs_ns(row, self.queue);
        row.int(self.preemptions);
        row.int(self.priority);
        match self.batch_id {
            Some(b) => row.int(b),
            None => row.empty(),
        }
        row.int(self.padding_tokens);
        row.int(self.attempt);
        row.str(self.failure.map(|f| f.as_str()).unwrap_or(""));
        match self.prefill_replica {
            Some(i) => row.int(i),
            None => row.empty(),
        }
        for i in 0..5 {
            opt_secs_ns(row, self.pd_timeline.map(|t| t[i]));
        }
    }
}

/// Nanoseconds written as seconds, or an empty field.
fn opt_secs_ns(row: &mut RowBuf, ns: Option<u64>) {
    match ns {
        Some(v) => row.secs_ns(v),
        None => row.empty(),
    }
}

/// Where the writer thread puts rows: a file format. Called on the writer thread, in row order.
pub trait RowWriter: Send + 'static {
    /// Writes `rows` (a batch, in order).
    fn write_rows(&mut self, rows: &[RequestRow]) -> std::io::Result<()>;
    /// Writes what is buffered and completes the file; called once, after the last batch.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// `requests.csv`: each row formatted by [`RequestRow::format`].
struct CsvRows {
    w: BufWriter<File>,
    row: RowBuf,
}

impl RowWriter for CsvRows {
    fn write_rows(&mut self, rows: &[RequestRow]) -> std::io::Result<()> {
        for x in rows {
            x.format(&mut self.row);
            self.w.write_all(self.row.line())?;
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// The simulation's end of the writer thread.
pub struct RowThread {
    path: PathBuf,
    batch: Vec<RequestRow>,
    /// None once finished.
    to_writer: Option<SyncSender<Vec<RequestRow>>>,
    /// Emptied batches coming back, reused.
    spare: Receiver<Vec<RequestRow>>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
}

impl RowThread {
    /// Starts the thread that writes CSV rows to `w` (the file at `path`, its header written).
    pub fn spawn(w: BufWriter<File>, path: PathBuf) -> Result<RowThread, OutputError> {
        RowThread::spawn_with(
            CsvRows {
                w,
                row: RowBuf::default(),
            },
            path,
        )
    }

    /// Starts the thread that writes rows through `out` (the file at `path`).
    pub fn spawn_with(mut out: impl RowWriter, path: PathBuf) -> Result<RowThread, OutputError> {
        let (to_writer, rows) = sync_channel::<Vec<RequestRow>>(IN_FLIGHT);
        let (give_back, spare) = channel();
        let writer = std::thread::Builder::new()
            .name("requests".into())
            .spawn(move || -> std::io::Result<()> {
                for mut batch in rows {
                    out.write_rows(&batch)?;
                    batch.clear();
                    // The simulation may have finished and stopped taking batches back.
                    let _ = give_back.send(batch);
                }
                out.finish()
            })
            .map_err(io_err(&path))?;
        Ok(RowThread {
            path,
            batch: Vec::with_capacity(BATCH),
            to_writer: Some(to_writer),
            spare,
            writer: Some(writer),
        })
    }

    /// Queues a row. Errors are the writer's: the file could not be written.
    pub fn push(&mut self, row: RequestRow) -> Result<(), OutputError> {
        self.batch.push(row);
        if self.batch.len() == BATCH {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> Result<(), OutputError> {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        let to_writer = self.to_writer.as_ref().expect("no rows after finish");
        if to_writer.send(full).is_err() {
            // The writer stopped: it failed. `join` has its error.
            return self.join();
        }
        Ok(())
    }

    /// Writes the remaining rows, flushes the file and stops the thread.
    pub fn finish(&mut self) -> Result<(), OutputError> {
        if !self.batch.is_empty() {
            self.hand_over()?;
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), OutputError> {
        self.to_writer = None;
        match self.writer.take().map(|h| h.join()) {
            None => Ok(()),
            Some(Ok(result)) => result.map_err(io_err(&self.path)),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for RowThread {
    /// A run that stops on an error drops its collector unfinished: the thread is stopped before the
    /// run's temporary directory is removed. Its result no longer matters.
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(i: u64) -> RequestRow {
        RequestRow {
            id: i,
            session: i / 3,
            turn: (i % 3) as u32 + 1,
            replica: (!i.is_multiple_of(5)).then_some((i % 2) as u32),
            status: if i.is_multiple_of(5) {
                Status::Rejected
            } else {
                Status::Finished
            },
            reason: (!i.is_multiple_of(5)).then_some(StopReason::Eos),
            times: [
                Some(i * 1_000_003),
                Some(i * 1_000_007),
                None,
                Some(i * 2_000_011),
            ],
            prompt_tokens: i as u32 * 7,
            cached_tokens: i as u32,
            cached_tokens_tier: [i as u32 / 2, 0],
            kv_load: i * 11,
            prefilled_tokens: i * 6,
            output_tokens: (i % 300) as u32,
            ttft: None,
            e2e: Some(i * 17),
            queue: Some(i),
            tpot: (i.is_multiple_of(2)).then_some(i as f64 / 7.0),
            preemptions: (i % 4) as u32,
            priority: -(i as i64 % 3),
            batch_id: (i.is_multiple_of(3)).then_some(i / 3),
            padding_tokens: (i % 7) as u32,
            attempt: (i % 2) as u32,
            failure: (i.is_multiple_of(5)).then_some(FailureReason::QueueFull),
            prefill_replica: i.is_multiple_of(3).then_some(7),
            pd_timeline: i
                .is_multiple_of(3)
                .then_some([i, 2 * i, 3 * i + 1, 5, i * 1_000_001]),
        }
    }

    /// Rows over several batches, a partial last one included, are the bytes the same rows formatted
    /// inline would be, in order.
    #[test]
    fn rows_are_written_in_order_as_formatted_inline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.csv");
        let w = BufWriter::new(File::create(&path).unwrap());
        let mut t = RowThread::spawn(w, path.clone()).unwrap();
        let n = 2 * BATCH as u64 + 123;
        let mut expected = Vec::new();
        let mut buf = RowBuf::default();
        for i in 0..n {
            t.push(row(i)).unwrap();
            row(i).format(&mut buf);
            expected.extend_from_slice(buf.line());
        }
        t.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    /// A write error (a full device) comes back from the hand-over or from `finish`, naming the file.
    #[test]
    fn a_write_error_names_the_file() {
        let Ok(f) = File::options().write(true).open("/dev/full") else {
            return; // not a Linux machine
        };
        let path = PathBuf::from("/dev/full");
        let mut t = RowThread::spawn(BufWriter::with_capacity(64, f), path.clone()).unwrap();
        let mut result = Ok(());
        for i in 0..(IN_FLIGHT as u64 + 3) * BATCH as u64 {
            result = t.push(row(i));
            if result.is_err() {
                break;
            }
        }
        let err = result.and_then(|_| t.finish()).unwrap_err();
        assert!(
            matches!(&err, OutputError::Io { path: p, .. } if *p == path),
            "{err:?}"
        );
    }
}
