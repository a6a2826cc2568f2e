//! A slow downstream for trying `aggregate` by hand: answers any GET or POST
//! with a little JSON after `?delay_ms=` milliseconds (default 1000).
//!
//! ```sh
//! cargo run --release --example slow_downstream -- 127.0.0.1:9001 crews
//! ```

use std::time::Duration;

use poem::web::{Json, Query};
use poem::{handler, Route, Server};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Params {
    delay_ms: Option<u64>,
}

#[handler]
async fn answer(
    req: &poem::Request,
    Query(p): Query<Params>,
    name: poem::web::Data<&String>,
) -> Json<Value> {
    let delay = p.delay_ms.unwrap_or(1000).min(600_000);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    Json(json!({"system": name.0, "path": req.uri().path(), "delay_ms": delay}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let name = args.next().unwrap_or_else(|| "downstream".to_owned());
    eprintln!("{name} answering on http://{addr}");
    let app = poem::EndpointExt::data(
        Route::new().at("/*path", poem::get(answer).post(answer)),
        name,
    );
    Server::new(poem::listener::TcpListener::bind(addr))
        .run(app)
        .await
}
