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
//!
//! This file is the kind: its input and the checks on it, the loop over the
//! file's chunks and batches, the checkpoint, progress and row errors. The
//! parsing of bytes into rows (`parse`, no I/O) and the HTTP sending of one
//! batch (`send`) live beside it, each testable and readable on its own.

mod parse;
mod send;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use crate::domain::FieldError;
use crate::downstream::Downstreams;
use crate::kinds::{JobContext, JobFailure, JobKind};
use crate::store::Store;
use parse::{Item, Parser, Row};
use send::Sent;

/// Rows per batch when the upload does not say.
pub const DEFAULT_BATCH_SIZE: i64 = 500;
pub const MAX_BATCH_SIZE: i64 = 10_000;
/// The result lists at most this many row errors (all are counted).
const MAX_ERRORS: usize = 100;

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
///
/// Import jobs are created by `POST /v1/uploads`, which writes this input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportInput {
    pub downstream: String,
    pub path: String,
    pub format: Format,
    pub batch_size: i64,
    /// The stored file's size in bytes.
    pub size: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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

#[async_trait]
impl JobKind for Import {
    type Input = ImportInput;
    type Output = Value;

    fn name(&self) -> &'static str {
        "import"
    }

    fn validate(&self, parsed: &ImportInput) -> Result<(), Vec<FieldError>> {
        check(
            &self.downstreams,
            &parsed.downstream,
            &parsed.path,
            parsed.batch_size,
        )
        .map(|_| ())
    }

    async fn run(&self, input: ImportInput, ctx: &JobContext) -> Result<Value, JobFailure> {
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
        let resumed: Tally = ctx.checkpoint().await?.unwrap_or_default();
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
        match self.send(ctx, url, input, tally.batches, batch).await? {
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

    async fn checkpoint(&self, ctx: &JobContext, tally: &Tally) -> Result<(), JobFailure> {
        ctx.save_checkpoint(tally).await
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
