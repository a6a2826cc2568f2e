//! What every request passes before its route, as one layer: the state the
//! handlers read, problem+json for every error, and `Allow` on a 405.
//!
//! poem's `data`, `catch_all_error` and `around` would be a layer each, and
//! each layer moves the request and builds a future around the next one's:
//! the copies were a measurable part of a job's CPU (two requests a job).

use std::sync::Arc;

use poem::http::{header, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

use super::allow::AllowTable;
use super::body::BodyLimit;
use super::error::render_any_error;
use super::AppState;

pub(super) struct Edge<E> {
    pub inner: E,
    pub state: AppState,
    pub limit: usize,
    pub allow: Arc<AllowTable>,
}

impl<E: Endpoint> Endpoint for Edge<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        // Only a 405 needs the path again; the URI's parts are shared bytes.
        let uri = req.uri().clone();
        req.extensions_mut().insert(self.state.clone());
        req.extensions_mut().insert(BodyLimit(self.limit));
        let mut resp = match self.inner.call(req).await {
            Ok(resp) => resp.into_response(),
            Err(err) => render_any_error(err).await,
        };
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            if let Some(allow) = self.allow.allowed(uri.path()) {
                resp.headers_mut().insert(header::ALLOW, allow.clone());
            }
        }
        Ok(resp)
    }
}
