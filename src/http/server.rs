//! The HTTP/1.1 server: our own accept loop over hyper, serving the poem app.
//!
//! Why not `poem::Server`: measured on this kind of machine, it costs about
//! 28 KiB per idle SSE connection. It sniffs every connection for HTTP/2 (which
//! grows hyper's read buffer from 8 to 16 KiB) and stores the whole request
//! future inline in each connection task. Serving each connection with
//! `hyper::server::conn::http1` and a *boxed* service future, with routes,
//! middleware and poem-openapi unchanged, brings it near hyper's own floor.
//! HTTP/2 without TLS is given up; the gateway in front terminates TLS and
//! speaks HTTP/1.1 to us.
//!
//! Hostile clients: a request line and headers over [`BUFFER_BYTES`] get 431,
//! malformed ones 400 (hyper answers both and closes); a client that does not
//! finish its headers within the header timeout is cut (slowloris); one that
//! does not read its response costs at most [`BUFFER_BYTES`] of hyper's write
//! buffer plus one chunk of the stream (see `stream`); running out of file
//! descriptors refuses new connections until some close, and says so once in
//! a while, not at every accept.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// hyper's read and write buffers' limit, per connection (its default is
/// about 400 KiB). The write buffer is what a client that does not read
/// costs: hyper takes body chunks until it is full. The read buffer bounds a
/// request's line and headers. 8 KiB is hyper's floor; 16 KiB leaves room for
/// large cookies and tokens.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// While accepting fails (out of file descriptors, say), the pause before
/// the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// While accepting fails, how often it is logged again.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

type App = Arc<BoxEndpoint<'static, Response>>;
type ResponseFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    hyper::Response<
                        http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>,
                    >,
                    Infallible,
                >,
            > + Send,
    >,
>;

/// How long connections may take to finish their responses after `stop`.
const GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` fires, then lets connections finish
/// their responses (streams end on their own tokens) for up to [`GRACE`], and
/// closes whatever is still open. A client that has not sent a request's
/// headers whole within `header_timeout` is disconnected.
pub async fn serve(
    listener: TcpListener,
    app: BoxEndpoint<'static, Response>,
    stop: CancellationToken,
    header_timeout: Duration,
) {
    let app: App = Arc::new(app);
    let local = listener.local_addr().ok();
    let connections = TaskTracker::new();
    let force_close = CancellationToken::new();
    let mut failing = AcceptFailures::default();
    loop {
        let (socket, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: the connection waits in
                    // the backlog. Wait a little rather than spin.
                    failing.failed(&e, connections.len());
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        failing.recovered(connections.len());
        let _ = socket.set_nodelay(true);
        connections.spawn(serve_connection(
            socket,
            local,
            remote,
            app.clone(),
            stop.clone(),
            force_close.clone(),
            header_timeout,
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "closing connections still open after the grace"
        );
        force_close.cancel();
        connections.wait().await;
    }
}

/// A run of failed accepts, logged when it starts, every [`ACCEPT_LOG_EVERY`]
/// while it lasts (with how many failures went unlogged since the last line)
/// and when it ends: not at every try.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// When the run started, and when it was last logged.
    since: Option<(Instant, Instant)>,
    /// Failures in the run.
    total: u64,
    /// Failures since the last line.
    unsaid: u64,
}

impl AcceptFailures {
    fn failed(&mut self, e: &std::io::Error, open: usize) {
        self.total += 1;
        let now = Instant::now();
        let Some((_, said)) = &mut self.since else {
            self.since = Some((now, now));
            tracing::warn!(error = %e, open_connections = open,
                "accept failed; new connections wait until it works again");
            return;
        };
        if now.duration_since(*said) < ACCEPT_LOG_EVERY {
            self.unsaid += 1;
            return;
        }
        *said = now;
        tracing::warn!(error = %e, open_connections = open, suppressed = self.unsaid,
            failed = self.total, "accept still failing");
        self.unsaid = 0;
    }

    fn recovered(&mut self, open: usize) {
        if let Some((start, _)) = self.since.take() {
            tracing::info!(
                failed = self.total,
                suppressed = self.unsaid,
                open_connections = open,
                after_ms = start.elapsed().as_millis() as u64,
                "accepting connections again"
            );
            self.total = 0;
            self.unsaid = 0;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    socket: tokio::net::TcpStream,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    app: App,
    stop: CancellationToken,
    force_close: CancellationToken,
    header_timeout: Duration,
) {
    let local = LocalAddr(local.map(Into::into).unwrap_or_default());
    let remote = RemoteAddr(remote.into());
    let service =
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| -> ResponseFuture {
            let app = app.clone();
            let req = poem::Request::from((req, local.clone(), remote.clone(), Scheme::HTTP));
            // Boxed, so the connection does not carry the largest request future inline.
            Box::pin(async move { Ok(app.get_response(req).await.into()) })
        });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(BUFFER_BYTES)
        .serve_connection(TokioIo::new(socket), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => {}
    }
    // Finish the response in flight, then close.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = force_close.cancelled() => {}
    }
}
