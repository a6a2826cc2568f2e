//! Who is calling: the middleware that turns credentials into the request's
//! [`Tenant`](crate::auth::Tenant) (the checks themselves live in [`crate::auth`]).

use std::sync::Arc;

use poem::http::header;
use poem::{Endpoint, IntoResponse, Request, Response};

use super::error::ApiError;
use super::AppState;
use crate::auth::{AuthError, AuthMode, TokenScope};
use crate::domain::JobId;
use crate::remote::WorkerPrincipal;

/// Puts the caller's [`Tenant`] into the request, or answers 401. A job's
/// stream also accepts `?token=` (a stream token for that job), and the feed
/// a feed token, since a browser's EventSource cannot send headers.
pub(super) async fn authenticate<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path();
    // The dashboard page is public (it asks for a key itself), as the probes are.
    let public = matches!(path, "/healthz" | "/readyz" | "/");
    if public {
        return Ok(ep.call(req).await?.into_response());
    }
    let state = req.data::<AppState>().expect("state is attached").clone();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Worker keys open the worker API and nothing else; tenants'
    // credentials never open it.
    let worker = bearer
        .as_deref()
        .and_then(bearer_token)
        .and_then(|token| state.worker_keys.find(token));
    if path.starts_with("/v1/worker/") {
        let worker = match worker {
            Some(w) => w,
            None if state.auth.mode == AuthMode::None => WorkerPrincipal::anyone(),
            None => {
                return Err(match state.auth.authenticate(bearer.as_deref()) {
                    Ok(_) => forbidden(
                        "tenant credentials cannot use the worker API: send a worker key (HERALD_WORKER_KEYS)",
                    ),
                    Err(_) => ApiError::Unauthorized(
                        "the worker API needs a worker key: send Authorization: Bearer <worker key> (HERALD_WORKER_KEYS)"
                            .to_owned(),
                    ),
                }
                .into());
            }
        };
        req.extensions_mut().insert(worker);
        return Ok(ep.call(req).await?.into_response());
    }
    if worker.is_some() {
        return Err(forbidden(
            "a worker key opens only the worker API (/v1/worker/*); use a tenant's API key or JWT here",
        )
        .into());
    }
    let stream_scope = if path == "/v1/events" {
        Some(TokenScope::Feed)
    } else {
        path.strip_prefix("/v1/jobs/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .and_then(|id| id.parse::<JobId>().ok())
            .map(TokenScope::Job)
    };
    let query_token = req.uri().query().and_then(|q| url_param(q, "token"));
    let tenant = match (stream_scope, query_token, bearer) {
        (Some(scope), Some(token), None) if state.auth.mode != AuthMode::None => {
            state.auth.verify_stream_token(&token, scope)
        }
        (_, _, bearer) => state.auth.authenticate(bearer.as_deref()),
    };
    match tenant {
        Ok(tenant) => {
            req.extensions_mut().insert(tenant);
            Ok(ep.call(req).await?.into_response())
        }
        Err(e) => Err(ApiError::Unauthorized(match e {
            AuthError::Missing => "no credentials: send Authorization: Bearer <API key or JWT>".to_owned(),
            AuthError::Invalid => "the credentials are not valid".to_owned(),
            AuthError::Expired => "the token has expired; get a fresh one (POST /v1/jobs/{id}/stream-token, or POST /v1/events/stream-token for the feed) and reconnect with Last-Event-ID".to_owned(),
        })
        .into()),
    }
}

/// The token of an `Authorization: Bearer …` value.
fn bearer_token(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn forbidden(detail: &str) -> ApiError {
    ApiError::Http {
        status: poem::http::StatusCode::FORBIDDEN,
        code: "forbidden",
        detail: detail.to_owned(),
    }
}

/// The value of `name` in a query string, percent-decoded.
fn url_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
