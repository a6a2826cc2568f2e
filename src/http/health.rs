//! `/healthz` (the process is alive) and `/readyz` (it can serve: the store
//! answers and it is not draining for shutdown).

use std::sync::atomic::Ordering;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::error::ApiError;
use super::models::HealthDto;
use super::ApiTags;
use super::AppState;

pub struct HealthApi;

#[derive(ApiResponse)]
pub enum HealthResponse {
    #[oai(status = 200)]
    Ok(Json<HealthDto>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> HealthResponse {
        HealthResponse::Ok(Json(HealthDto {
            status: "ok".to_owned(),
        }))
    }

    /// Readiness
    ///
    /// 503 while the store is unreachable or while the process drains for shutdown.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self, state: Data<&AppState>) -> Result<HealthResponse, ApiError> {
        if state.draining.load(Ordering::SeqCst) {
            return Err(ApiError::Unavailable {
                code: "draining",
                detail: "this node is shutting down; send requests to another node".to_owned(),
            });
        }
        // A database that does not answer at all must not hang the probe.
        let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping());
        let failed = match ping.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 2 s".to_owned()),
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "readiness check: store unreachable");
            return Err(ApiError::Unavailable {
                code: "store_unavailable",
                detail: "the database does not answer; this node cannot serve until it does"
                    .to_owned(),
            });
        }
        Ok(HealthResponse::Ok(Json(HealthDto {
            status: "ready".to_owned(),
        })))
    }
}
