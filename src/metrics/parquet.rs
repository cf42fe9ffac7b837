//! `requests.parquet` (`servesim run --format parquet`): the rows of `requests.csv` as an Apache Parquet
//! file, for runs of millions of requests that a notebook reads column by column (pandas, polars,
//! DuckDB, Arrow).
//!
//! The same columns in the same order, with the same names ([`REQUEST_COLUMNS`]), typed: counts and ids
//! `UInt32`/`UInt64`, `priority` `Int64`, `status`, `finish_reason` and `failure_reason` UTF-8 strings,
//! times in seconds `Float64`. A cell the CSV leaves empty is null. Times are the simulation's integer
//! nanoseconds divided by 1e9, at full precision (the CSV rounds them to microseconds); `tpot_s` is the
//! same float the CSV prints with six decimals. Written on the rows' thread ([`super::row_thread`]) in
//! row groups of [`ROW_GROUP`] rows, Snappy-compressed (pandas' and pyarrow's default codec).
//!
//! Errors: the parquet crate's errors become I/O errors, which the thread reports naming the file.

use super::row_thread::{RequestRow, RowWriter};
use super::REQUEST_COLUMNS;
use arrow_array::builder::{
    ArrayBuilder, Float64Builder, Int64Builder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::sync::Arc;

/// Rows per row group: each is built in memory (about 200 bytes a row before encoding), then encoded
/// and written, so memory stays bounded whatever the run's length.
pub const ROW_GROUP: usize = 65_536;

/// Columns of `requests.csv`; a column added there fails to compile here until it has a type below.
const N_COLUMNS: usize = 34;
const _: () = assert!(REQUEST_COLUMNS.len() == N_COLUMNS);

/// Each column's Arrow type, in `REQUEST_COLUMNS` order, and whether it can be null.
fn column_types() -> [(DataType, bool); N_COLUMNS] {
    use DataType::{Float64, Int64, UInt32, UInt64, Utf8};
    [
        (UInt64, false),  // request_id
        (UInt64, false),  // session_id
        (UInt32, false),  // turn
        (UInt32, true),   // replica
        (Utf8, false),    // status
        (Utf8, true),     // finish_reason
        (Float64, false), // arrival_s
        (Float64, true),  // scheduled_s
        (Float64, true),  // first_token_s
        (Float64, true),  // finish_s
        (UInt32, false),  // prompt_tokens
        (UInt32, false),  // cached_tokens
        (UInt32, false),  // cached_tokens_gpu
        (UInt32, false),  // cached_tokens_cpu
        (UInt32, false),  // cached_tokens_disk
        (Float64, false), // kv_load_s
        (UInt64, false),  // prefilled_tokens
        (UInt32, false),  // output_tokens
        (Float64, true),  // ttft_s
        (Float64, true),  // tpot_s
        (Float64, true),  // e2e_s
        (Float64, true),  // queue_s
        (UInt32, false),  // preemptions
        (Int64, false),   // priority
        (UInt64, true),   // batch_id
        (UInt32, false),  // padding_tokens
        (UInt32, false),  // attempt
        (Utf8, true),     // failure_reason
        (UInt32, true),   // prefill_replica
        (Float64, true),  // prefill_queue_s
        (Float64, true),  // prefill_s
        (Float64, true),  // kv_transfer_s
        (Float64, true),  // decode_queue_s
        (Float64, true),  // decode_s
    ]
}

/// The file's schema: `REQUEST_COLUMNS` with their types.
pub fn request_schema() -> SchemaRef {
    Arc::new(Schema::new(
        REQUEST_COLUMNS
            .iter()
            .zip(column_types())
            .map(|(name, (t, nullable))| Field::new(*name, t, nullable))
            .collect::<Vec<_>>(),
    ))
}

/// One builder per column, in `REQUEST_COLUMNS` order.
#[derive(Default)]
struct Columns {
    request_id: UInt64Builder,
    session_id: UInt64Builder,
    turn: UInt32Builder,
    replica: UInt32Builder,
    status: StringBuilder,
    finish_reason: StringBuilder,
    times: [Float64Builder; 4],
    prompt_tokens: UInt32Builder,
    cached: [UInt32Builder; 4],
    kv_load: Float64Builder,
    prefilled_tokens: UInt64Builder,
    output_tokens: UInt32Builder,
    /// ttft, tpot, e2e, queue.
    latencies: [Float64Builder; 4],
    preemptions: UInt32Builder,
    priority: Int64Builder,
    batch_id: UInt64Builder,
    padding_tokens: UInt32Builder,
    attempt: UInt32Builder,
    failure_reason: StringBuilder,
    prefill_replica: UInt32Builder,
    /// The disaggregated timeline's five parts.
    pd_timeline: [Float64Builder; 5],
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Columns {
    fn push(&mut self, r: &RequestRow) {
        self.request_id.append_value(r.id);
        self.session_id.append_value(r.session);
        self.turn.append_value(r.turn);
        self.replica.append_option(r.replica);
        self.status.append_value(r.status.as_str());
        self.finish_reason
            .append_option(r.reason.map(|x| x.as_str()));
        for (b, t) in self.times.iter_mut().zip(r.times) {
            b.append_option(t.map(secs));
        }
        self.prompt_tokens.append_value(r.prompt_tokens);
        let [cpu, disk] = r.cached_tokens_tier;
        for (b, v) in
            self.cached
                .iter_mut()
                .zip([r.cached_tokens, r.cached_tokens - cpu - disk, cpu, disk])
        {
            b.append_value(v);
        }
        self.kv_load.append_value(secs(r.kv_load));
        self.prefilled_tokens.append_value(r.prefilled_tokens);
        self.output_tokens.append_value(r.output_tokens);
        let [ttft, tpot, e2e, queue] = &mut self.latencies;
        ttft.append_option(r.ttft.map(secs));
        tpot.append_option(r.tpot);
        e2e.append_option(r.e2e.map(secs));
        queue.append_option(r.queue.map(secs));
        self.preemptions.append_value(r.preemptions);
        self.priority.append_value(r.priority);
        self.batch_id.append_option(r.batch_id);
        self.padding_tokens.append_value(r.padding_tokens);
        self.attempt.append_value(r.attempt);
        self.failure_reason
            .append_option(r.failure.map(|x| x.as_str()));
        self.prefill_replica.append_option(r.prefill_replica);
        for (i, b) in self.pd_timeline.iter_mut().enumerate() {
            b.append_option(r.pd_timeline.map(|t| secs(t[i])));
        }
    }

    /// The rows pushed so far as one batch, in column order; the builders are left empty.
    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let [arrival, scheduled, first_token, finish] = &mut self.times;
        let [cached, gpu, cpu, disk] = &mut self.cached;
        let [ttft, tpot, e2e, queue] = &mut self.latencies;
        let [pq, pf, tr, dq, dc] = &mut self.pd_timeline;
        // `REQUEST_COLUMNS` order.
        let builders: [&mut dyn ArrayBuilder; N_COLUMNS] = [
            &mut self.request_id,
            &mut self.session_id,
            &mut self.turn,
            &mut self.replica,
            &mut self.status,
            &mut self.finish_reason,
            arrival,
            scheduled,
            first_token,
            finish,
            &mut self.prompt_tokens,
            cached,
            gpu,
            cpu,
            disk,
            &mut self.kv_load,
            &mut self.prefilled_tokens,
            &mut self.output_tokens,
            ttft,
            tpot,
            e2e,
            queue,
            &mut self.preemptions,
            &mut self.priority,
            &mut self.batch_id,
            &mut self.padding_tokens,
            &mut self.attempt,
            &mut self.failure_reason,
            &mut self.prefill_replica,
            pq,
            pf,
            tr,
            dq,
            dc,
        ];
        let cols: Vec<ArrayRef> = builders.into_iter().map(|b| b.finish()).collect();
        RecordBatch::try_new(schema.clone(), cols)
    }
}

/// `requests.parquet` being written: rows gather in [`Columns`] and go out a row group at a time.
pub struct ParquetRows {
    schema: SchemaRef,
    cols: Columns,
    rows: usize,
    /// None once finished.
    writer: Option<ArrowWriter<File>>,
}

fn io(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}

impl ParquetRows {
    /// Starts the file `f` (created by the caller, who names it in errors).
    pub fn new(f: File) -> std::io::Result<ParquetRows> {
        let schema = request_schema();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .set_created_by(format!("servesim {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(f, schema.clone(), Some(props)).map_err(io)?;
        Ok(ParquetRows {
            schema,
            cols: Columns::default(),
            rows: 0,
            writer: Some(writer),
        })
    }

    fn flush_group(&mut self) -> std::io::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let batch = self.cols.finish(&self.schema).map_err(io)?;
        self.rows = 0;
        let w = self.writer.as_mut().expect("rows after finish");
        w.write(&batch).map_err(io)?;
        // The group is complete: encode and write it now, so that only one group is ever in memory.
        w.flush().map_err(io)
    }
}

impl RowWriter for ParquetRows {
    fn write_rows(&mut self, rows: &[RequestRow]) -> std::io::Result<()> {
        for r in rows {
            self.cols.push(r);
            self.rows += 1;
            if self.rows == ROW_GROUP {
                self.flush_group()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.flush_group()?;
        if let Some(w) = self.writer.take() {
            w.close().map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::row_thread::tests::row;
    use super::super::row_thread::RowThread;
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, UInt32Type, UInt64Type};
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Rows over several row groups (a partial last one included) read back as written: every column,
    /// nulls where the CSV leaves a cell empty, times as nanoseconds / 1e9.
    #[test]
    fn rows_read_back_column_by_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.parquet");
        let f = File::create(&path).unwrap();
        let mut t = RowThread::spawn_with(ParquetRows::new(f).unwrap(), path.clone()).unwrap();
        let n = 2 * ROW_GROUP as u64 + 777;
        for i in 0..n {
            t.push(row(i)).unwrap();
        }
        t.finish().unwrap();

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        assert_eq!(reader.schema().as_ref(), request_schema().as_ref());
        let mut i = 0u64;
        for batch in reader.build().unwrap() {
            let b = batch.unwrap();
            let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
            for k in 0..b.num_rows() {
                let want = row(i);
                let u64s = |name: &str| col(name).as_primitive::<UInt64Type>().value(k);
                let u32s = |name: &str| {
                    let c = col(name);
                    let a = c.as_primitive::<UInt32Type>();
                    (!a.is_null(k)).then(|| a.value(k))
                };
                let f64s = |name: &str| {
                    let c = col(name);
                    let a = c.as_primitive::<Float64Type>();
                    (!a.is_null(k)).then(|| a.value(k))
                };
                let strs = |name: &str| {
                    let c = col(name);
                    let a = c.as_string::<i32>();
                    (!a.is_null(k)).then(|| a.value(k).to_string())
                };
                assert_eq!(u64s("request_id"), want.id);
                assert_eq!(u64s("session_id"), want.session);
                assert_eq!(u32s("turn"), Some(want.turn));
                assert_eq!(u32s("replica"), want.replica);
                assert_eq!(strs("status").as_deref(), Some(want.status.as_str()));
                assert_eq!(
                    strs("finish_reason").as_deref(),
                    want.reason.map(|x| x.as_str())
                );
                for (name, t) in ["arrival_s", "scheduled_s", "first_token_s", "finish_s"]
                    .iter()
                    .zip(want.times)
                {
                    assert_eq!(f64s(name), t.map(|ns| ns as f64 / 1e9), "{name}");
                }
                let [cpu, disk] = want.cached_tokens_tier;
                assert_eq!(u32s("cached_tokens"), Some(want.cached_tokens));
                assert_eq!(
                    u32s("cached_tokens_gpu"),
                    Some(want.cached_tokens - cpu - disk)
                );
                assert_eq!(u32s("cached_tokens_cpu"), Some(cpu));
                assert_eq!(u32s("cached_tokens_disk"), Some(disk));
                assert_eq!(f64s("kv_load_s"), Some(want.kv_load as f64 / 1e9));
                assert_eq!(u64s("prefilled_tokens"), want.prefilled_tokens);
                assert_eq!(u32s("output_tokens"), Some(want.output_tokens));
                assert_eq!(f64s("ttft_s"), want.ttft.map(|ns| ns as f64 / 1e9));
                assert_eq!(f64s("tpot_s"), want.tpot);
                assert_eq!(f64s("e2e_s"), want.e2e.map(|ns| ns as f64 / 1e9));
                assert_eq!(f64s("queue_s"), want.queue.map(|ns| ns as f64 / 1e9));
                assert_eq!(u32s("preemptions"), Some(want.preemptions));
                assert_eq!(
                    col("priority").as_primitive::<Int64Type>().value(k),
                    want.priority
                );
                let batch_id = col("batch_id");
                let batch_id = batch_id.as_primitive::<UInt64Type>();
                assert_eq!(
                    (!batch_id.is_null(k)).then(|| batch_id.value(k)),
                    want.batch_id
                );
                assert_eq!(u32s("padding_tokens"), Some(want.padding_tokens));
                assert_eq!(u32s("attempt"), Some(want.attempt));
                assert_eq!(
                    strs("failure_reason").as_deref(),
                    want.failure.map(|x| x.as_str())
                );
                i += 1;
            }
        }
        assert_eq!(i, n);
    }

    /// A full device: the error comes back from `finish` (or a hand-over), naming the file.
    #[test]
    fn a_write_error_names_the_file() {
        let Ok(f) = File::options().write(true).open("/dev/full") else {
            return; // not a Linux machine
        };
        let path = std::path::PathBuf::from("/dev/full");
        let mut t = RowThread::spawn_with(ParquetRows::new(f).unwrap(), path.clone()).unwrap();
        let mut result = Ok(());
        for i in 0..ROW_GROUP as u64 + 10 {
            result = t.push(row(i));
            if result.is_err() {
                break;
            }
        }
        let err = result.and_then(|_| t.finish()).unwrap_err();
        assert!(
            matches!(&err, crate::error::OutputError::Io { path: p, .. } if *p == path),
            "{err:?}"
        );
    }
}
