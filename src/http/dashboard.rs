//! The dashboard at `/`: static files from `assets/dashboard/`, compiled into
//! the binary (no front-end server, no CDN). Public, like `/docs`: the page
//! asks for an API key itself when the API wants one.

use poem::http::{header, StatusCode};
use poem::web::Path;
use poem::{handler, IntoResponse, Response};
use poem_openapi::payload::Html;
use poem_openapi::OpenApi;

/// `(path under /js/, file)` for one file of `assets/dashboard/js/`.
macro_rules! module {
    ($path:literal) => {
        (
            $path,
            include_str!(concat!("../../assets/dashboard/js/", $path)),
        )
    };
}

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
const STYLE: &str = include_str!("../../assets/dashboard/style.css");

/// The page's script, native ES modules served under `/js/` by their path
/// there (`main.js` imports the others). A fixed table: any other name is a
/// 404, and nothing is read from disk.
const MODULES: &[(&str, &str)] = &[
    module!("main.js"),
    module!("api.js"),
    module!("dom.js"),
    module!("feed.js"),
    module!("format.js"),
    module!("history.js"),
    module!("list.js"),
    module!("model.js"),
    module!("schema.js"),
    module!("views/conn.js"),
    module!("views/detail.js"),
    module!("views/items.js"),
    module!("views/submit.js"),
    module!("views/table.js"),
    module!("views/upload.js"),
];

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // The files change with the binary; revalidate rather than cache long.
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Content-Type-Options", "nosniff")
        .body(body)
}

/// `/js/*path`: one of `MODULES`, or 404.
#[handler]
pub fn script(Path(path): Path<String>) -> Response {
    match MODULES.iter().find(|(name, _)| *name == path) {
        Some((_, body)) => asset(body, "text/javascript; charset=utf-8"),
        None => StatusCode::NOT_FOUND.into(),
    }
}

#[handler]
pub fn style() -> impl IntoResponse {
    asset(STYLE, "text/css; charset=utf-8")
}
