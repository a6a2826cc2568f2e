//! `import`: sends the rows of an uploaded file (`POST /v1/uploads`) to a
//! configured downstream in JSON batches, with progress row by row.
//!
//! The file is read from the store a chunk at a time (it never sits whole in
//! memory) and parsed as it arrives: CSV with a header row (each row becomes an
//! object keyed by the header's names), or NDJSON (one object per line). A
//! malformed row is a row error (its line number and why), never a job
//! failure. Good rows go out as JSON arrays of at most `batch_size`, retried on
//! 5xx and timeouts with backoff; a 4xx fails that batch's rows.
//!
//! After each acknowledged batch the job's checkpoint records the counts and
//! the last line sent. A later attempt (after a crash, say) parses the file
//! again but sends only the rows after that line, so no batch goes out again
//! once its acknowledgement is recorded. The one window left, a crash between
//! the downstream's answer and the checkpoint's write, re-sends that one
//! batch: each batch carries an `Idempotency-Key` (job id and batch number,
//! the same in every attempt) so the downstream can drop the repeat. A cancel
//! stops before the next batch.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use url::Url;

use crate::domain::FieldError;
use crate::downstream::Downstreams;
use crate::store::Store;
use crate::worker::{JobContext, JobFailure, JobKind};

/// Rows per batch when the upload does not say.
pub const DEFAULT_BATCH_SIZE: i64 = 500;
pub const MAX_BATCH_SIZE: i64 = 10_000;
/// The result lists at most this many row errors (all are counted).
const MAX_ERRORS: usize = 100;
/// Tries per batch: the first and two retries.
const TRIES: u32 = 3;

pub struct Import {
    downstreams: Arc<Downstreams>,
    store: Arc<dyn Store>,
    http: reqwest::Client,
}

impl Import {
    pub fn new(downstreams: Arc<Downstreams>, store: Arc<dyn Store>) -> anyhow::Result<Import> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Import {
            downstreams,
            store,
            http,
        })
    }
}

/// The import's input, as the upload endpoint writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportInput {
    pub downstream: String,
    pub path: String,
    pub format: Format,
    pub batch_size: i64,
    /// The stored file's size in bytes.
    pub size: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "csv" => Some(Format::Csv),
            "ndjson" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// One row error, as the result lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// Where the import stands: the checkpoint after each acknowledged batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Tally {
    rows_ok: u64,
    rows_failed: u64,
    batches: u64,
    /// Every row on or before this line has been dealt with.
    line: u64,
    errors: Vec<RowError>,
}

impl Tally {
    fn error(&mut self, line: u64, reason: String) {
        self.rows_failed += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(RowError { line, reason });
        }
    }
}

/// Checks an upload's parameters; the same rules for the endpoint and the kind.
pub fn check(
    downstreams: &Downstreams,
    downstream: &str,
    path: &str,
    batch_size: i64,
) -> Result<Url, Vec<FieldError>> {
    let mut errors = Vec::new();
    let url = match downstreams.resolve(downstream, path) {
        Ok((url, _)) => Some(url),
        Err(e) => {
            errors.push(FieldError::new("/downstream", e));
            None
        }
    };
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        errors.push(FieldError::new(
            "/batch_size",
            format!("must be 1 to {MAX_BATCH_SIZE}"),
        ));
    }
    match url {
        Some(url) if errors.is_empty() => Ok(url),
        _ => Err(errors),
    }
}

/// A row ready to send, with its line.
struct Row {
    line: u64,
    value: Value,
}

/// What the parser finds, in file order.
enum Item {
    Row(Row),
    Bad(RowError),
}

impl Item {
    fn line(&self) -> u64 {
        match self {
            Item::Row(r) => r.line,
            Item::Bad(e) => e.line,
        }
    }
}

/// Splits the file into rows as its bytes arrive.
enum Parser {
    Ndjson {
        partial: Vec<u8>,
        line: u64,
    },
    Csv {
        // Boxed: the CSV reader's state is large, the NDJSON one small.
        reader: Box<csv_core::Reader>,
        out: Vec<u8>,
        out_len: usize,
        ends: Vec<usize>,
        ends_len: usize,
        header: Option<Vec<String>>,
        /// Newlines consumed so far, and the line the current record began on.
        newlines: u64,
        record_line: u64,
    },
}

impl Parser {
    fn new(format: Format) -> Parser {
        match format {
            Format::Ndjson => Parser::Ndjson {
                partial: Vec::new(),
                line: 0,
            },
            Format::Csv => Parser::Csv {
                reader: Box::new(csv_core::Reader::new()),
                out: vec![0; 4096],
                out_len: 0,
                ends: vec![0; 64],
                ends_len: 0,
                header: None,
                newlines: 0,
                record_line: 1,
            },
        }
    }

    /// Feeds `input` (empty: the end of the file); good rows and row errors
    /// go to the callbacks in file order.
    fn feed(&mut self, input: &[u8], items: &mut Vec<Item>) {
        match self {
            Parser::Ndjson { partial, line } => {
                let mut rest = input;
                loop {
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            partial.extend_from_slice(&rest[..i]);
                            rest = &rest[i + 1..];
                            *line += 1;
                            ndjson_line(*line, partial, items);
                            partial.clear();
                        }
                        None => {
                            partial.extend_from_slice(rest);
                            break;
                        }
                    }
                }
                if input.is_empty() && !partial.is_empty() {
                    *line += 1;
                    ndjson_line(*line, partial, items);
                    partial.clear();
                }
            }
            Parser::Csv {
                reader,
                out,
                out_len,
                ends,
                ends_len,
                header,
                newlines,
                record_line,
            } => {
                let mut pos = 0;
                loop {
                    let (res, nin, nout, nend) = reader.read_record(
                        &input[pos..],
                        &mut out[*out_len..],
                        &mut ends[*ends_len..],
                    );
                    *newlines += input[pos..pos + nin]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64;
                    pos += nin;
                    *out_len += nout;
                    *ends_len += nend;
                    match res {
                        csv_core::ReadRecordResult::InputEmpty => {
                            if input.is_empty() {
                                continue; // the reader finishes the last record
                            }
                            return;
                        }
                        csv_core::ReadRecordResult::OutputFull => {
                            let n = out.len() * 2;
                            out.resize(n, 0);
                        }
                        csv_core::ReadRecordResult::OutputEndsFull => {
                            let n = ends.len() * 2;
                            ends.resize(n, 0);
                        }
                        csv_core::ReadRecordResult::Record => {
                            let mut fields_: Vec<&[u8]> = Vec::with_capacity(*ends_len);
                            let mut start = 0;
                            for &end in &ends[..*ends_len] {
                                fields_.push(&out[start..end]);
                                start = end;
                            }
                            let line = *record_line;
                            let blank = fields_.len() == 1 && fields_[0].is_empty();
                            match header {
                                None => {
                                    *header = Some(
                                        fields_
                                            .iter()
                                            .map(|f| String::from_utf8_lossy(f).trim().to_owned())
                                            .collect(),
                                    );
                                }
                                Some(_) if blank => {}
                                Some(names) => csv_row(line, names, &fields_, items),
                            }
                            *out_len = 0;
                            *ends_len = 0;
                            *record_line = *newlines + 1;
                        }
                        csv_core::ReadRecordResult::End => return,
                    }
                }
            }
        }
    }
}

fn ndjson_line(line: u64, bytes: &[u8], items: &mut Vec<Item>) {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim(),
        Err(_) => {
            items.push(Item::Bad(RowError {
                line,
                reason: "not UTF-8".to_owned(),
            }));
            return;
        }
    };
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => items.push(Item::Row(Row { line, value: v })),
        Ok(_) => items.push(Item::Bad(RowError {
            line,
            reason: "not a JSON object".to_owned(),
        })),
        Err(e) => items.push(Item::Bad(RowError {
            line,
            reason: format!("not JSON: {e}"),
        })),
    }
}

fn csv_row(line: u64, names: &[String], values: &[&[u8]], items: &mut Vec<Item>) {
    if values.len() != names.len() {
        items.push(Item::Bad(RowError {
            line,
            reason: format!(
                "{} fields where the header has {}",
                values.len(),
                names.len()
            ),
        }));
        return;
    }
    let mut obj = Map::with_capacity(names.len());
    for (name, v) in names.iter().zip(values) {
        match std::str::from_utf8(v) {
            Ok(s) => {
                obj.insert(name.clone(), Value::String(s.to_owned()));
            }
            Err(_) => {
                items.push(Item::Bad(RowError {
                    line,
                    reason: format!("field `{name}` is not UTF-8"),
                }));
                return;
            }
        }
    }
    items.push(Item::Row(Row {
        line,
        value: Value::Object(obj),
    }));
}

/// 200 ms, 400 ms … scaled by a random factor in [0.5, 1.5).
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(2u32.saturating_pow(attempt - 1));
    base.mul_f64(rand::rng().random_range(0.5..1.5))
        .min(Duration::from_secs(10))
}

enum Sent {
    Ok,
    /// A 4xx: these rows failed.
    Refused(String),
}

impl Import {
    /// POSTs one batch, retrying 5xx, timeouts and connection errors.
    async fn send(
        &self,
        ctx: &JobContext,
        key: &str,
        url: &Url,
        input: &ImportInput,
        batch: &[Row],
    ) -> Result<Sent, JobFailure> {
        let ds = self.downstreams.get(&input.downstream).ok_or_else(|| {
            JobFailure::permanent(
                "unknown_downstream",
                format!(
                    "the downstream `{}` is no longer configured",
                    input.downstream
                ),
            )
        })?;
        let body: Vec<&Value> = batch.iter().map(|r| &r.value).collect();
        let timeout = ds.timeout.unwrap_or(Duration::from_secs(30));
        let mut last = String::new();
        for attempt in 1..=TRIES {
            let mut req = self
                .http
                .post(url.clone())
                .header("idempotency-key", key)
                .json(&body)
                .timeout(timeout);
            for (k, v) in &ds.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(Sent::Ok),
                Ok(resp) if resp.status().is_client_error() => {
                    return Ok(Sent::Refused(format!(
                        "the downstream refused the batch: HTTP {}",
                        resp.status().as_u16()
                    )))
                }
                Ok(resp) => last = format!("HTTP {}", resp.status().as_u16()),
                Err(e) if e.is_timeout() => {
                    last = format!("no answer within {} ms", timeout.as_millis())
                }
                Err(e) => last = format!("request failed: {e}"),
            }
            if attempt < TRIES {
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
                }
            }
        }
        // Still failing after the retries: the attempt fails (and is retried
        // as a whole, from the checkpoint).
        Err(JobFailure::retryable(
            "downstream_unavailable",
            format!("a batch could not be delivered after {TRIES} tries: {last}"),
        ))
    }

    async fn checkpoint(&self, ctx: &JobContext, tally: &Tally) -> Result<(), JobFailure> {
        let cp = serde_json::to_string(tally).expect("a tally serializes");
        self.store
            .set_checkpoint(ctx.job_id, &cp)
            .await
            .map_err(|e| {
                JobFailure::retryable(
                    "store_error",
                    format!("could not record the checkpoint: {e}"),
                )
            })
    }

    async fn report(
        &self,
        ctx: &JobContext,
        input: &ImportInput,
        consumed: u64,
        tally: &Tally,
    ) -> Result<(), JobFailure> {
        let percent = if input.size > 0 {
            (consumed as f64 / input.size as f64 * 100.0).min(100.0)
        } else {
            100.0
        };
        ctx.progress(
            Some(percent),
            Some("import"),
            Some(&format!("{} rows sent, {} failed", tally.rows_ok, tally.rows_failed)),
            Some(json!({"rows_ok": tally.rows_ok, "rows_failed": tally.rows_failed, "batches_sent": tally.batches})),
        )
        .await
    }
}

#[async_trait]
impl JobKind for Import {
    fn name(&self) -> &'static str {
        "import"
    }

    fn validate(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        let parsed: ImportInput = serde_json::from_value(input.clone()).map_err(|e| {
            vec![FieldError::new(
                "",
                format!("import jobs are created by POST /v1/uploads ({e})"),
            )]
        })?;
        check(
            &self.downstreams,
            &parsed.downstream,
            &parsed.path,
            parsed.batch_size,
        )
        .map(|_| ())
    }

    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let input: ImportInput = serde_json::from_value(ctx.input.clone())
            .map_err(|e| JobFailure::permanent("bad_input", e.to_string()))?;
        let url = check(
            &self.downstreams,
            &input.downstream,
            &input.path,
            input.batch_size,
        )
        .map_err(|e| JobFailure::permanent("bad_input", format!("{e:?}")))?;
        let store_err =
            |e: crate::store::StoreError| JobFailure::retryable("store_error", e.to_string());
        // Resume after the last acknowledged batch, if an earlier attempt got that far.
        let resumed: Tally = match self.store.checkpoint(ctx.job_id).await.map_err(store_err)? {
            Some(cp) => serde_json::from_str(&cp).unwrap_or_default(),
            None => Tally::default(),
        };
        let done_line = resumed.line;
        let mut tally = resumed;
        let mut parser = Parser::new(input.format);
        let mut batch: Vec<Row> = Vec::with_capacity(input.batch_size as usize);
        let mut consumed: u64 = 0;
        let mut n = 0;
        loop {
            let chunk = self
                .store
                .upload_chunk(ctx.job_id, n)
                .await
                .map_err(store_err)?;
            let end = chunk.is_none();
            let bytes = chunk.unwrap_or_default();
            consumed += bytes.len() as u64;
            n += 1;
            let mut items = Vec::new();
            parser.feed(&bytes, &mut items);
            // In file order; what is at or before the checkpoint was dealt
            // with by an earlier attempt.
            for item in items.into_iter().filter(|i| i.line() > done_line) {
                match item {
                    Item::Bad(e) => {
                        tally.line = tally.line.max(e.line);
                        tally.error(e.line, e.reason);
                    }
                    Item::Row(row) => {
                        batch.push(row);
                        if batch.len() as i64 >= input.batch_size {
                            self.flush(ctx, &url, &input, &mut batch, &mut tally)
                                .await?;
                            self.report(ctx, &input, consumed, &tally).await?;
                        }
                    }
                }
            }
            if end {
                break;
            }
        }
        if !batch.is_empty() {
            self.flush(ctx, &url, &input, &mut batch, &mut tally)
                .await?;
        }
        self.report(ctx, &input, consumed, &tally).await?;
        tally.errors.sort_by_key(|e| e.line);
        Ok(json!({
            "rows_ok": tally.rows_ok,
            "rows_failed": tally.rows_failed,
            "batches": tally.batches,
            "errors": tally.errors,
        }))
    }
}

impl Import {
    /// Sends the batch (after a cancel check) and records the checkpoint.
    async fn flush(
        &self,
        ctx: &JobContext,
        url: &Url,
        input: &ImportInput,
        batch: &mut Vec<Row>,
        tally: &mut Tally,
    ) -> Result<(), JobFailure> {
        if ctx.is_cancelled() {
            return Err(JobFailure::cancelled());
        }
        let last_line = batch.last().map_or(tally.line, |r| r.line);
        // The same batch (same rows) gets the same key in every attempt: the
        // checkpoint falls on batch boundaries, so batches are cut alike.
        let key = format!("{}:{}", ctx.job_id, tally.batches);
        match self.send(ctx, &key, url, input, batch).await? {
            Sent::Ok => tally.rows_ok += batch.len() as u64,
            Sent::Refused(reason) => {
                for row in batch.iter() {
                    tally.error(row.line, reason.clone());
                }
            }
        }
        tally.batches += 1;
        tally.line = tally.line.max(last_line);
        batch.clear();
        self.checkpoint(ctx, tally).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: Format, chunks: &[&[u8]]) -> (Vec<(u64, Value)>, Vec<RowError>) {
        let mut p = Parser::new(format);
        let mut items = Vec::new();
        for c in chunks {
            p.feed(c, &mut items);
        }
        p.feed(&[], &mut items);
        let (mut rows, mut bad) = (Vec::new(), Vec::new());
        for i in items {
            match i {
                Item::Row(r) => rows.push((r.line, r.value)),
                Item::Bad(e) => bad.push(e),
            }
        }
        (rows, bad)
    }

    #[test]
    fn csv_rows_by_header_across_chunk_boundaries_with_line_numbers() {
        let (rows, bad) = parse(
            Format::Csv,
            &[b"id,name\n1,a", b"da\n2,\"b\nc\"\n3\n4,d,x\n5,e"],
        );
        assert_eq!(
            rows,
            vec![
                (2, json!({"id": "1", "name": "ada"})),
                (3, json!({"id": "2", "name": "b\nc"})),
                (7, json!({"id": "5", "name": "e"})),
            ]
        );
        let lines: Vec<u64> = bad.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![5, 6], "{bad:?}");
    }

    #[test]
    fn ndjson_lines_and_their_errors() {
        let (rows, bad) = parse(
            Format::Ndjson,
            &[b"{\"a\":1}\n{bro", b"ken\n\n[1]\n{\"b\":2}"],
        );
        assert_eq!(rows, vec![(1, json!({"a": 1})), (5, json!({"b": 2}))]);
        let lines: Vec<u64> = bad.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4]);
    }
}
