//! `POST /v1/uploads`: a file becomes an `import` job.
//!
//! The body (raw `text/csv` / `application/x-ndjson`, or a browser form's
//! `multipart/form-data` field `file`) is streamed into the store in chunks
//! under the job's id, never held whole in memory, and the job is created
//! only once all of it is stored. The parameters are checked first, so a bad
//! one stores nothing; a body over `HERALD_MAX_UPLOAD_BYTES` is deleted again
//! and answered 413.
//!
//! A plain poem route rather than an OpenAPI operation: it reads the body as
//! a stream (and as multipart), which poem-openapi's payloads buffer.

use futures::{Stream, StreamExt};
use poem::http::{header, StatusCode};
use poem::web::{Data, Multipart, Query};
use poem::{handler, Body, FromRequest, Request, Response};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::jobs::job_dto;
use crate::app::AppState;
use crate::auth::Tenant;
use crate::domain::{FieldError, JobId, Submission};
use crate::error::ApiError;
use crate::store::Submitted;
use crate::worker::kinds::import::{Format, ImportInput, DEFAULT_BATCH_SIZE};

/// What one stored chunk holds at most.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
pub struct UploadParams {
    downstream: Option<String>,
    path: Option<String>,
    format: Option<String>,
    batch_size: Option<i64>,
}

fn invalid(errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        code: "validation_failed",
        detail: "the upload's parameters are invalid; see `errors`".to_owned(),
        errors,
    }
}

/// Stores the file and creates the import job; 202 with the job.
#[handler]
pub async fn upload(
    req: &Request,
    body: Body,
    state: Data<&AppState>,
    tenant: Data<&Tenant>,
    Query(params): Query<UploadParams>,
) -> Result<Response, ApiError> {
    let (state, tenant) = (state.0, tenant.0);
    if let Err(wait) = state.submit_rate.take(tenant) {
        return Err(ApiError::RateLimited {
            detail: format!(
                "more than {} submissions a second for this tenant (HERALD_SUBMIT_RATE_PER_SEC); retry shortly",
                state.config.submit_rate_per_sec
            ),
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    // Everything about the parameters is checked before a byte is stored.
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
    let path = params.path.unwrap_or_else(|| "/".to_owned());
    let batch_size = params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    let kind = state
        .kinds
        .get("import")
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the import kind is not registered")))?;
    let mut input = ImportInput {
        downstream,
        path,
        format: format.unwrap_or(Format::Csv),
        batch_size,
        size: 0,
    };
    if errors.is_empty() {
        if let Err(e) = kind.validate(&serde_json::to_value(&input).expect("input serializes")) {
            errors.extend(e);
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }

    let content_type = req
        .header(header::CONTENT_TYPE)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let id = JobId::new();
    let limit = state.config.max_upload_bytes;
    let stored = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &mut poem::RequestBody::new(body))
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "bad_multipart",
                detail: format!("the multipart body could not be read: {e}"),
            })?;
        let mut stored = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "bad_multipart",
                detail: format!("the multipart body could not be read: {e}"),
            })?
        {
            if field.name() == Some("file") {
                let mut reader = field.into_async_read();
                stored = Some(store_reader(state, id, limit, &mut reader).await);
                break;
            }
        }
        stored.ok_or_else(|| {
            invalid(vec![FieldError::new(
                "/file",
                "the form has no field `file`",
            )])
        })?
    } else if content_type.starts_with("text/csv")
        || content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/octet-stream")
        || content_type.is_empty()
    {
        store_stream(state, id, limit, body.into_bytes_stream()).await
    } else {
        return Err(ApiError::Http {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            detail: format!(
                "send the file as text/csv, application/x-ndjson or multipart/form-data (field `file`), not {content_type}"
            ),
        });
    };
    let size = match stored {
        Ok(size) => size,
        Err(e) => {
            // Nothing of a refused upload is kept.
            if let Err(d) = state.store.delete_upload(id).await {
                tracing::warn!(job_id = %id, error = %d, "could not delete a refused upload");
            }
            return Err(e);
        }
    };
    input.size = size as i64;
    let sub = Submission {
        job_id: Some(id),
        kind: "import".to_owned(),
        input: serde_json::to_value(&input).expect("input serializes"),
        idempotency_key: None,
        max_attempts: state.config.default_max_attempts,
        timeout_secs: None,
    };
    let job = match state.store.submit(&tenant.0, &sub).await {
        Ok(Submitted::Created(job)) => job,
        Ok(_) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "an upload's job id was already taken"
            )))
        }
        Err(e) => {
            let _ = state.store.delete_upload(id).await;
            return Err(e.into());
        }
    };
    tracing::info!(job_id = %job.id, bytes = size, "upload stored; import job submitted");
    if let Err(e) = state.queue.push(job.id).await {
        tracing::warn!(job_id = %job.id, error = %e, "queue push failed; the reconciler will retry it");
    }
    let dto = poem_openapi::types::ToJSON::to_json_string(&job_dto(state, tenant, &job));
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .content_type("application/json; charset=utf-8")
        .header(header::LOCATION, format!("/v1/jobs/{}", job.id))
        .body(dto))
}

/// Writes `body` into chunks of [`CHUNK`] bytes; the total size, or 413.
async fn store_stream(
    state: &AppState,
    id: JobId,
    limit: usize,
    mut body: impl Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
) -> Result<usize, ApiError> {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut n = 0;
    let mut total = 0usize;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| ApiError::BadRequest {
            code: "upload_interrupted",
            detail: format!("the upload stopped before its end: {e}"),
        })?;
        total += piece.len();
        if total > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let mut rest = &piece[..];
        while !rest.is_empty() {
            let take = (CHUNK - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == CHUNK {
                state.store.put_upload_chunk(id, n, &buf).await?;
                n += 1;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        state.store.put_upload_chunk(id, n, &buf).await?;
    }
    Ok(total)
}

/// The same, from a reader (a multipart field).
async fn store_reader(
    state: &AppState,
    id: JobId,
    limit: usize,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<usize, ApiError> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut n = 0;
    let mut total = 0usize;
    loop {
        let read = reader
            .read(&mut buf[filled..])
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "upload_interrupted",
                detail: format!("the upload stopped before its end: {e}"),
            })?;
        if read == 0 {
            break;
        }
        filled += read;
        total += read;
        if total > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        if filled == CHUNK {
            state.store.put_upload_chunk(id, n, &buf).await?;
            n += 1;
            filled = 0;
        }
    }
    if filled > 0 {
        state.store.put_upload_chunk(id, n, &buf[..filled]).await?;
    }
    Ok(total)
}
