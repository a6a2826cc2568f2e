//! A small downstream HTTP server for the aggregate tests: real sockets, real
//! delays, and counters of what it was asked and when connections closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Path};
use poem::{handler, EndpointExt, IntoResponse, Response, Route, Server};

#[derive(Default)]
pub struct Counters {
    hits: Mutex<HashMap<String, usize>>,
}

impl Counters {
    fn hit(&self, key: &str) -> usize {
        let mut h = self.hits.lock().unwrap();
        let n = h.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    pub fn hits(&self, key: &str) -> usize {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

pub struct FakeDownstream {
    pub base: String,
    pub counters: Arc<Counters>,
}

/// A raw TCP "downstream" that reads each request and never answers, counting
/// the connections that are open and those the client closed (read → EOF).
pub struct SilentDownstream {
    pub base: String,
    pub open: Arc<AtomicUsize>,
    pub closed_by_client: Arc<AtomicUsize>,
}

impl SilentDownstream {
    pub async fn start() -> SilentDownstream {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (o, c) = (open.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (o, c) = (o.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut counted = false;
                    loop {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) if !counted => {
                                counted = true;
                                o.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => {}
                        }
                    }
                    if counted {
                        o.fetch_sub(1, Ordering::SeqCst);
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        SilentDownstream {
            base,
            open,
            closed_by_client: closed,
        }
    }
}

#[handler]
async fn slow(Path(ms): Path<u64>, c: Data<&Arc<Counters>>) -> poem::web::Json<serde_json::Value> {
    c.hit(&format!("slow/{ms}"));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    poem::web::Json(serde_json::json!({"slept": ms}))
}

#[handler]
async fn flaky(Path(key): Path<String>, c: Data<&Arc<Counters>>) -> Response {
    let n = c.hit(&format!("flaky/{key}"));
    if n <= 2 {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        poem::web::Json(serde_json::json!({"ok": true, "calls": n})).into_response()
    }
}

#[handler]
async fn retry_after(c: Data<&Arc<Counters>>) -> Response {
    if c.hit("retry-after") == 1 {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("Retry-After", "1")
            .finish()
    } else {
        poem::web::Json(serde_json::json!({"ok": true})).into_response()
    }
}

#[handler]
async fn missing(c: Data<&Arc<Counters>>) -> StatusCode {
    c.hit("missing");
    StatusCode::NOT_FOUND
}

#[handler]
async fn big(Path(kib): Path<usize>, c: Data<&Arc<Counters>>) -> String {
    c.hit("big");
    "x".repeat(kib * 1024)
}

#[handler]
async fn text(c: Data<&Arc<Counters>>) -> &'static str {
    c.hit("text");
    "plain words, not JSON"
}

#[handler]
async fn echo(
    body: poem::web::Json<serde_json::Value>,
    c: Data<&Arc<Counters>>,
) -> poem::web::Json<serde_json::Value> {
    c.hit("echo");
    poem::web::Json(serde_json::json!({"echo": body.0}))
}

impl FakeDownstream {
    pub async fn start() -> FakeDownstream {
        let counters = Arc::new(Counters::default());
        let app = Route::new()
            .at("/slow/:ms", poem::get(slow))
            .at("/flaky/:key", poem::get(flaky))
            .at("/retry-after", poem::get(retry_after))
            .at("/missing", poem::get(missing))
            .at("/big/:kib", poem::get(big))
            .at("/text", poem::get(text))
            .at("/echo", poem::post(echo))
            .data(counters.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        FakeDownstream { base, counters }
    }
}
