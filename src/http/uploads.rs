//! `POST /v1/uploads`: a file becomes an `import` job (see [`crate::uploads`]).
//!
//! The body is raw `text/csv` / `application/x-ndjson`, or a browser form's
//! `multipart/form-data` field `file`; either way it is handed over as a
//! stream of bytes, never held whole in memory.
//!
//! A plain poem route rather than an OpenAPI operation: it reads the body as
//! a stream (and as multipart), which poem-openapi's payloads buffer.

use futures::StreamExt;
use poem::http::{header, StatusCode};
use poem::web::{Data, Multipart, Query};
use poem::{handler, Body, FromRequest, Request, Response};

use super::error::ApiError;
use super::jobs::job_dto;
use super::AppState;
use crate::auth::Tenant;
use crate::domain::FieldError;
use crate::uploads::{UploadError, UploadParams};

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Submit(e) => e.into(),
            UploadError::Invalid(errors) => ApiError::Invalid {
                code: "validation_failed",
                detail: "the upload's parameters are invalid; see `errors`".to_owned(),
                errors,
            },
            UploadError::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
            UploadError::Interrupted(e) => ApiError::BadRequest {
                code: "upload_interrupted",
                detail: format!("the upload stopped before its end: {e}"),
            },
            UploadError::Store(e) => e.into(),
        }
    }
}

fn bad_multipart(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest {
        code: "bad_multipart",
        detail: format!("the multipart body could not be read: {e}"),
    }
}

/// Stores the file and creates the import job; 202 with the job.
#[handler]
#[tracing::instrument(skip_all)]
pub async fn upload(
    req: &Request,
    body: Body,
    state: Data<&AppState>,
    tenant: Data<&Tenant>,
    Query(params): Query<UploadParams>,
) -> Result<Response, ApiError> {
    let (state, tenant) = (state.0, tenant.0);
    // Everything about the parameters is checked before a byte is stored.
    let upload = state.uploads.begin(&tenant.0, params)?;
    let content_type = req
        .header(header::CONTENT_TYPE)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let job = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &mut poem::RequestBody::new(body))
            .await
            .map_err(bad_multipart)?;
        let file = loop {
            match multipart.next_field().await.map_err(bad_multipart)? {
                Some(field) if field.name() == Some("file") => break field,
                Some(_) => continue,
                None => {
                    let missing = FieldError::new("/file", "the form has no field `file`");
                    return Err(UploadError::Invalid(vec![missing]).into());
                }
            }
        };
        let bytes = Box::pin(tokio_util::io::ReaderStream::new(file.into_async_read()));
        state.uploads.finish(&tenant.0, upload, bytes).await?
    } else if content_type.starts_with("text/csv")
        || content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/octet-stream")
        || content_type.is_empty()
    {
        let bytes = body.into_bytes_stream().boxed();
        state.uploads.finish(&tenant.0, upload, bytes).await?
    } else {
        return Err(ApiError::Http {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            detail: format!(
                "send the file as text/csv, application/x-ndjson or multipart/form-data (field `file`), not {content_type}"
            ),
        });
    };
    let dto = poem_openapi::types::ToJSON::to_json_string(&job_dto(state, tenant, &job));
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .content_type("application/json; charset=utf-8")
        .header(header::LOCATION, format!("/v1/jobs/{}", job.id))
        .body(dto))
}
