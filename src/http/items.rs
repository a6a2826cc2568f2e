//! `GET /v1/jobs/{id}/items`: a job's items as pages of JSON, and
//! `GET /v1/kinds`: the kinds this herald runs, with their input schemas.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::jobs::owned_job;
use super::ApiTags;
use super::AppState;
use crate::auth::Tenant;
use crate::domain::JobId;

pub struct ItemsApi;

/// One item of a job's output.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename = "Item")]
pub struct ItemDto {
    /// From 0, gapless, in append order.
    pub index: i64,
    /// The item as the handler appended it.
    pub item: Value,
    /// When it was appended: RFC 3339, UTC, microseconds.
    pub at: String,
}

/// A page of a job's items.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ItemPage")]
pub struct ItemPageDto {
    pub items: Vec<ItemDto>,
    /// Pass as `offset` for the next page; null after the job's last item
    /// so far (a running job may append more).
    #[oai(nullable)]
    pub next_offset: Option<i64>,
}

/// A kind of job this herald runs.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Kind")]
pub struct KindDto {
    /// What to submit as `kind`.
    pub name: String,
    /// Run by a worker outside herald (over the worker API).
    pub remote: bool,
    /// The input's JSON Schema.
    pub input_schema: Value,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "KindList")]
pub struct KindListDto {
    /// By name.
    pub kinds: Vec<KindDto>,
}

#[derive(ApiResponse)]
pub enum ItemPageResponse {
    #[oai(status = 200)]
    Ok(Json<ItemPageDto>),
}

#[derive(ApiResponse)]
pub enum KindListResponse {
    #[oai(status = 200)]
    Ok(Json<KindListDto>),
}

#[OpenApi(tag = "ApiTags::Jobs")]
impl ItemsApi {
    /// List a job's items
    ///
    /// The job's output, piece by piece, in append order (the same items its
    /// event stream carries as `item` events), a page at a time.
    #[oai(path = "/v1/jobs/:id/items", method = "get")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0, job_id = %id.0))]
    async fn items(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        id: Path<Uuid>,
        /// The index of the first item (default 0).
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
        /// Page size, 1 to 500 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<ItemPageResponse, ApiError> {
        let job = owned_job(state.0, tenant.0, JobId(id.0)).await?;
        let offset = offset.0.unwrap_or(0);
        let limit = limit.0.unwrap_or(100);
        let page = if offset < job.items_count {
            state.jobs.items(job.id, offset, limit).await?
        } else {
            Vec::new()
        };
        let items = page
            .iter()
            .map(|data| {
                serde_json::from_str::<ItemDto>(data).map_err(|e| {
                    ApiError::Internal(anyhow::anyhow!(
                        "stored item of job {} is corrupt: {e}",
                        job.id
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Against the count read with the job: a running job may append
        // more later, and a later request will find them.
        let next = offset + items.len() as i64;
        let next_offset = (next < job.items_count).then_some(next);
        Ok(ItemPageResponse::Ok(Json(ItemPageDto {
            items,
            next_offset,
        })))
    }

    /// List the job kinds
    ///
    /// The kinds this herald runs, each with its input's JSON Schema: what
    /// `POST /v1/jobs` accepts as `kind` and `input`.
    #[oai(path = "/v1/kinds", method = "get")]
    async fn kinds(&self, state: Data<&AppState>) -> KindListResponse {
        let kinds = state
            .jobs
            .kinds()
            .schemas()
            .into_iter()
            .map(|(name, input_schema)| KindDto {
                name: name.to_owned(),
                remote: state.jobs.kinds().is_remote(name),
                input_schema,
            })
            .collect();
        KindListResponse::Ok(Json(KindListDto { kinds }))
    }
}
