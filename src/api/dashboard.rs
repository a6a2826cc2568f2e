//! The dashboard at `/`: static files from `assets/dashboard/`, compiled into
//! the binary (no front-end server, no CDN). Public, like `/docs`: the page
//! asks for an API key itself when the API wants one.

use poem::http::header;
use poem::{handler, IntoResponse, Response};
use poem_openapi::payload::Html;
use poem_openapi::OpenApi;

/// `/` itself sits among the API's routes (the API is nested at the root, so
/// a plain route for `/` would be shadowed); it is hidden from the document.
pub struct DashboardApi;

#[OpenApi]
impl DashboardApi {
    #[oai(path = "/", method = "get", hidden)]
    async fn index(&self) -> Html<&'static str> {
        Html(INDEX)
    }
}

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../../assets/dashboard/app.js");
const STYLE: &str = include_str!("../../assets/dashboard/style.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // The files change with the binary; revalidate rather than cache long.
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Content-Type-Options", "nosniff")
        .body(body)
}

#[handler]
pub fn script() -> impl IntoResponse {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[handler]
pub fn style() -> impl IntoResponse {
    asset(STYLE, "text/css; charset=utf-8")
}
