//! The operations HTTP server every service runs: `/metrics` (the gathered prometheus
//! `Registry`, never hand-formatted text), `/healthz` (the process runs) and `/readyz` (200, or
//! 503 with a JSON body listing what is not ready). Connections are limited in number, requests
//! in header size and time; no endpoint reads a body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most concurrent connections to the operations endpoints.
const MAX_CONNECTIONS: usize = 256;
/// A connection must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head: a resume cursor naming 4,096 partitions (the gateway's limit) fits.
/// Heads above it get hyper's own `431` with an empty body.
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// What `/readyz` asks: `Ok` when ready, otherwise the reasons.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Result<(), Vec<String>>;
}

/// Handles every path the operations server does not (e.g. the gateway's `/ws`).
pub type Fallback = Arc<
    dyn Fn(
            Request<Incoming>,
            SocketAddr,
        ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// Everything the operations server needs.
pub struct OpsState {
    pub registry: Registry,
    pub readiness: Arc<dyn Readiness>,
    /// Runs before each gather, for gauges derived from the clock (e.g. staleness).
    pub before_gather: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Other paths; 404 when absent.
    pub fallback: Option<Fallback>,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<OpsState>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the operations port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small frames go out at once: without this, Nagle's algorithm holds a frame written
        // right after another until the first is acknowledged (~tens of ms on a live feed).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&state, req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

async fn route(
    state: &OpsState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            if let Some(f) = &state.before_gather {
                f();
            }
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            if let Err(e) = encoder.encode(&state.registry.gather(), &mut buf) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
            }
            Response::builder()
                .header("content-type", encoder.format_type())
                .body(Full::new(Bytes::from(buf)))
                .expect("valid response")
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.readiness.check() {
            Ok(()) => json(StatusCode::OK, serde_json::json!({"ready": true})),
            Err(reasons) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"ready": false, "reasons": reasons}),
            ),
        },
        _ => match &state.fallback {
            Some(f) => f(req, peer).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

pub fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}
