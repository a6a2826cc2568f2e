//! Uploads: a file becomes an `import` job.
//!
//! The file is streamed into the store in chunks under the job's id, never
//! held whole in memory, and the job is created only once all of it is
//! stored. The parameters are checked first, so a bad one stores nothing; a
//! file over `HERALD_MAX_UPLOAD_BYTES`, or one cut off, is deleted again.
//! The HTTP layer reads the request (raw body or multipart) and hands the
//! bytes over; this module knows what an upload turns into.

use std::sync::Arc;

use futures::{Stream, StreamExt};

use crate::domain::{FieldError, JobId, JobRecord, Submission};
use crate::jobs::{Accepted, Jobs, SubmitError};
use crate::kinds::import::{Format, ImportInput, DEFAULT_BATCH_SIZE};
use crate::store::{Store, StoreError};

/// What one stored chunk holds at most.
const CHUNK: usize = 256 * 1024;

/// The upload's parameters, as the client gave them.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UploadParams {
    pub downstream: Option<String>,
    pub path: Option<String>,
    pub format: Option<String>,
    pub batch_size: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The parameters are invalid (pointers name the query parameters).
    #[error("the upload's parameters are invalid")]
    Invalid(Vec<FieldError>),
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the upload stopped before its end: {0}")]
    Interrupted(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An upload whose parameters were accepted: its file goes under `id`.
#[derive(Debug)]
pub struct Upload {
    pub id: JobId,
    input: ImportInput,
}

pub struct Uploads {
    jobs: Arc<Jobs>,
    store: Arc<dyn Store>,
    max_bytes: usize,
    default_max_attempts: i32,
}

impl Uploads {
    pub(crate) fn new(
        jobs: Arc<Jobs>,
        store: Arc<dyn Store>,
        max_bytes: usize,
        default_max_attempts: i32,
    ) -> Arc<Uploads> {
        Arc::new(Uploads {
            jobs,
            store,
            max_bytes,
            default_max_attempts,
        })
    }

    /// Takes the tenant's submission for this second and checks every
    /// parameter, before a byte is stored.
    pub fn begin(&self, tenant: &str, params: UploadParams) -> Result<Upload, UploadError> {
        self.jobs.admit(tenant)?;
        let mut errors = Vec::new();
        let format = match params.format.as_deref() {
            Some(f) => Format::parse(f).or_else(|| {
                errors.push(FieldError::new("/format", "must be `csv` or `ndjson`"));
                None
            }),
            None => {
                errors.push(FieldError::new("/format", "required: `csv` or `ndjson`"));
                None
            }
        };
        let downstream = params.downstream.unwrap_or_default();
        if downstream.is_empty() {
            errors.push(FieldError::new(
                "/downstream",
                "required: the name of a configured downstream",
            ));
        }
        let input = ImportInput {
            downstream,
            path: params.path.unwrap_or_else(|| "/".to_owned()),
            format: format.unwrap_or(Format::Csv),
            batch_size: params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            size: 0,
        };
        let upload = Upload {
            id: JobId::new(),
            input,
        };
        if errors.is_empty() {
            match self.jobs.check(&self.submission(&upload)) {
                Ok(()) => {}
                Err(SubmitError::InvalidInput { errors: e, .. }) => errors.extend(e),
                Err(e) => return Err(e.into()),
            }
        }
        if errors.is_empty() {
            Ok(upload)
        } else {
            Err(UploadError::Invalid(errors))
        }
    }

    fn submission(&self, upload: &Upload) -> Submission {
        Submission {
            job_id: Some(upload.id),
            kind: "import".to_owned(),
            input: serde_json::to_value(&upload.input).expect("input serializes"),
            idempotency_key: None,
            max_attempts: self.default_max_attempts,
            timeout_secs: None,
            remote: false,
            start: false,
        }
    }

    /// Stores the file from `body` and submits its import job. Nothing of a
    /// refused or failed upload is kept.
    pub async fn finish(
        &self,
        tenant: &str,
        mut upload: Upload,
        body: impl Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    ) -> Result<JobRecord, UploadError> {
        let stored = match self.store_file(upload.id, body).await {
            Ok(size) => size,
            Err(e) => {
                self.discard(upload.id).await;
                return Err(e);
            }
        };
        upload.input.size = stored as i64;
        let submitted = self.jobs.submit(tenant, self.submission(&upload)).await;
        match submitted {
            Ok(Accepted::Created(job)) => {
                tracing::info!(job_id = %job.id, bytes = stored, "upload stored; import job submitted");
                Ok(job)
            }
            Ok(Accepted::Existing(_)) => {
                self.discard(upload.id).await;
                Err(SubmitError::Store(StoreError::WriteFailed(
                    "an upload's job id was already taken".to_owned(),
                ))
                .into())
            }
            Err(e) => {
                self.discard(upload.id).await;
                Err(e.into())
            }
        }
    }

    /// Writes `body` into chunks of [`CHUNK`] bytes; the total size.
    async fn store_file(
        &self,
        id: JobId,
        mut body: impl Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    ) -> Result<usize, UploadError> {
        let mut buf = Vec::with_capacity(CHUNK);
        let mut n = 0;
        let mut total = 0usize;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(UploadError::Interrupted)?;
            total += piece.len();
            if total > self.max_bytes {
                return Err(UploadError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let take = (CHUNK - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == CHUNK {
                    self.store.put_upload_chunk(id, n, &buf).await?;
                    n += 1;
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            self.store.put_upload_chunk(id, n, &buf).await?;
        }
        Ok(total)
    }

    async fn discard(&self, id: JobId) {
        if let Err(e) = self.store.delete_upload(id).await {
            tracing::warn!(job_id = %id, error = %e, "could not delete a refused upload");
        }
    }
}
