//! The one API error type, rendered as RFC 9457 problem+json.
//!
//! Every error has a stable snake_case `code` (also the last segment of `type`),
//! a `title` that names the class of problem and a `detail` that says what went
//! wrong and what to do. Database errors become an opaque 500 whose cause is
//! logged, never echoed.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use crate::domain::FieldError;
use crate::store::StoreError;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body, a path or query parameter, or a header cannot be parsed.
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// 422: it parses but is invalid; each field error points into the body.
    #[error("{detail}")]
    Invalid {
        code: &'static str,
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    NotFound(String),
    /// 401, with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthorized(String),
    /// 429, with `Retry-After`.
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after_secs: u64,
    },
    /// 409: the request conflicts with the job's state or an earlier request.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{detail}")]
    Unavailable { code: &'static str, detail: String },
    /// Anything else poem reports (405, 415 …), kept with its status.
    #[error("{detail}")]
    Http {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        crate::telemetry::store_error();
        if e.is_unavailable() {
            tracing::warn!(error = %e, "request failed: the database is unavailable");
            return ApiError::Unavailable {
                code: "store_unavailable",
                detail: "the database is unavailable (away, or locked by another process); \
                         retry after Retry-After seconds (a submission with an \
                         idempotency_key is safe to repeat)"
                    .to_owned(),
            };
        }
        ApiError::Internal(e.into())
    }
}

/// The `Retry-After` of a 503: a database that went away usually takes some
/// seconds to come back, and a draining node is gone by then.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl From<crate::jobs::SubmitError> for ApiError {
    fn from(e: crate::jobs::SubmitError) -> Self {
        use crate::jobs::SubmitError;
        match e {
            SubmitError::RateLimited {
                per_sec,
                retry_after,
            } => ApiError::RateLimited {
                detail: format!(
                    "more than {per_sec} submissions a second for this tenant (HERALD_SUBMIT_RATE_PER_SEC); retry shortly"
                ),
                retry_after_secs: retry_after.as_secs_f64().ceil() as u64,
            },
            SubmitError::UnknownKind { kind, known } => ApiError::Invalid {
                code: "unknown_kind",
                detail: format!(
                    "there is no job kind `{kind}`; known kinds: {}",
                    known.join(", ")
                ),
                errors: vec![FieldError::new("/kind", "unknown job kind")],
            },
            SubmitError::InvalidInput { kind, errors } => ApiError::Invalid {
                code: "validation_failed",
                detail: format!("the input is invalid for kind `{kind}`; see `errors`"),
                errors: errors
                    .into_iter()
                    .map(|e| FieldError::new(format!("/input{}", e.pointer), e.detail))
                    .collect(),
            },
            SubmitError::Conflict(job) => ApiError::Conflict {
                code: "idempotency_conflict",
                detail: format!(
                    "idempotency key already used for job {} with a different kind, input, max_attempts or timeout_secs; use a new key for a new job",
                    job.id
                ),
            },
            SubmitError::Store(e) => e.into(),
        }
    }
}

/// The problem+json body.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Problem")]
pub struct ProblemBody {
    /// `/problems/<code>`.
    #[oai(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case error code, e.g. `validation_failed`, `not_found`.
    pub code: String,
    /// For 422: one entry per invalid field, with a JSON pointer into the request body.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<ProblemFieldError>>,
}

#[derive(Debug, Clone, Object)]
pub struct ProblemFieldError {
    /// JSON pointer (RFC 6901) into the request body, e.g. `/input/steps`.
    pub pointer: String,
    pub detail: String,
}

impl ApiError {
    pub fn not_found_job(id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!(
            "no job with id {id}; check the id, or list jobs with GET /v1/jobs"
        ))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Http { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Invalid { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unavailable { code, .. }
            | ApiError::Http { code, .. } => code,
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "The request could not be parsed",
            ApiError::Invalid { .. } => "The request is invalid",
            ApiError::NotFound(_) => "Not found",
            ApiError::Unauthorized(_) => "Authentication required",
            ApiError::RateLimited { .. } => "Too many requests",
            ApiError::Conflict { .. } => "The request conflicts with the current state",
            ApiError::PayloadTooLarge { .. } => "The request body is too large",
            ApiError::Unavailable { .. } => "Service unavailable",
            ApiError::Http { status, .. } => status.canonical_reason().unwrap_or("HTTP error"),
            ApiError::Internal(_) => "Internal server error",
        }
    }

    pub fn body(&self) -> ProblemBody {
        let detail = match self {
            ApiError::Internal(_) => {
                "the server failed to handle the request; it has been logged, try again later"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Invalid { errors, .. } => Some(
                errors
                    .iter()
                    .map(|e| ProblemFieldError {
                        pointer: e.pointer.clone(),
                        detail: e.detail.clone(),
                    })
                    .collect(),
            ),
            _ => None,
        };
        ProblemBody {
            type_: format!("/problems/{}", self.code()),
            title: self.title().to_owned(),
            status: self.status().as_u16(),
            detail,
            code: self.code().to_owned(),
            errors,
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = %cause, error.chain = ?cause, "request failed with an internal error");
        }
        let body = serde_json::to_vec(&poem_openapi::types::ToJSON::to_json(&self.body()))
            .expect("problem bodies serialize");
        let mut resp = Response::builder()
            .status(self.status())
            .content_type(PROBLEM_CONTENT_TYPE);
        match self {
            ApiError::Unauthorized(_) => {
                resp = resp.header("WWW-Authenticate", r#"Bearer realm="herald""#);
            }
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                resp = resp.header("Retry-After", retry_after_secs.max(&1).to_string());
            }
            ApiError::Unavailable { .. } => {
                resp = resp.header("Retry-After", UNAVAILABLE_RETRY_AFTER_SECS.to_string());
            }
            _ => {}
        }
        resp.body(body)
    }
}

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        let problem = |status: u16, description: &'static str| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: PROBLEM_CONTENT_TYPE,
                schema: MetaSchemaRef::Reference(ProblemBody::name().into_owned()),
            }],
            headers: vec![],
        };
        MetaResponses {
            responses: vec![
                problem(400, "The body, a parameter or a header cannot be parsed."),
                problem(401, "No valid credentials (see WWW-Authenticate)."),
                problem(404, "No such job."),
                problem(409, "Conflicts with the job's state or an earlier request."),
                problem(413, "The request body is over HERALD_MAX_BODY_BYTES."),
                problem(422, "Parses but is invalid; `errors` points at each field."),
                problem(
                    429,
                    "A per-tenant limit was reached; retry after Retry-After seconds.",
                ),
                problem(500, "Internal error; the cause is logged."),
                problem(
                    503,
                    "This node cannot serve now (it is draining for shutdown, or its database does not answer); retry, or use another node.",
                ),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        ProblemBody::register(registry);
    }
}

/// Renders any error that reaches the top of the route as problem+json: our own
/// errors as they are, poem's (unknown route, bad path parameter, wrong method …)
/// mapped to a code.
pub async fn render_any_error(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return poem::error::ResponseError::as_response(api);
    }
    let status = err.status();
    let detail = err.to_string();
    let api = if err.is::<poem_openapi::error::ParsePathError>() {
        // Job ids are the only path parameters.
        ApiError::BadRequest {
            code: "invalid_parameter",
            detail: "the job id in the path is not a UUID; ids look like 01a1fdd4-83fe-76e7-9f42-50d0d1d16752".to_owned(),
        }
    } else if err.is::<poem_openapi::error::ParseParamError>() {
        ApiError::BadRequest {
            code: "invalid_parameter",
            detail,
        }
    } else {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            s if s.is_server_error() => "internal_error",
            _ => "http_error",
        };
        let detail = if status == StatusCode::NOT_FOUND {
            "no such route; see /docs for the API".to_owned()
        } else {
            detail
        };
        ApiError::Http {
            status,
            code,
            detail,
        }
    };
    poem::error::ResponseError::as_response(&api).into_response()
}
