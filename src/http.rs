//! The operations HTTP server every service runs: `/metrics` (the gathered prometheus
//! `Registry`, never hand-formatted text), `/healthz` (the process runs) and `/readyz` (200, or
//! 503 with a JSON body listing what is not ready). Connections are limited in number, and per
//! client address before they are upgraded (a slowloris from one address cannot take the
//! pool); accept never waits for room, it closes the new connection at once. Request heads are
//! limited in size and must arrive within 3 s; no endpoint reads a body.

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

/// Most concurrent connections not upgraded (requests being read or answered).
const MAX_CONNECTIONS: usize = 256;
/// Most of them from one client address (an IPv6 /64), unless the peer is exempt (a trusted
/// load balancer, whose connections carry many clients).
pub const MAX_CONNECTIONS_PER_IP: usize = 16;
/// A connection must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
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
    /// Whether this listener serves `/metrics`, `/healthz` and `/readyz` (a gateway with
    /// `GATEWAY_OPS_LISTEN` serves them on their own listener only).
    pub serve_ops: bool,
    /// Peers not limited per address (a trusted proxy); `None`: every peer is.
    pub exempt: Option<Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>>,
    /// Connections not yet upgraded one client address may hold ([`MAX_CONNECTIONS_PER_IP`]).
    pub max_pending_per_ip: usize,
    /// Connections closed at accept, by reason ([`refusals`]): one counter per registry, shared
    /// by every listener that registry serves.
    pub refused: prometheus::IntCounterVec,
}

/// `dashstream_http_connections_refused_total`, registered in `registry`. Made once per process
/// and handed to each listener's [`OpsState`]: a second registration of the same name would be
/// refused, and a listener counting into an unregistered copy would count for no one.
pub fn refusals(registry: &Registry) -> prometheus::Result<prometheus::IntCounterVec> {
    let refused = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "dashstream_http_connections_refused_total",
            "Connections closed at accept, by reason: ip_limit (the client address holds its limit of connections not yet upgraded, 16 by default), full (256 such connections in all)",
        ),
        &["reason"],
    )?;
    for r in ["ip_limit", "full"] {
        refused.with_label_values(&[r]);
    }
    registry.register(Box::new(refused.clone()))?;
    Ok(refused)
}

/// The key a client is counted under: its address, or its /64 for IPv6 (the block one host
/// usually holds); an IPv4-mapped address as IPv4.
pub fn client_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections per client key, before their upgrade.
struct PerIp(
    usize,
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
);

/// One connection's place in [`PerIp`]; released on drop.
struct IpGuard(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpGuard> {
        let key = client_key(ip);
        let mut m = self
            .1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(key).or_insert(0);
        if *n >= self.0 {
            return None;
        }
        *n += 1;
        Some(IpGuard(self.clone(), key))
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut m = (self.0)
            .1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<OpsState>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_ip = Arc::new(PerIp(state.max_pending_per_ip.max(1), Default::default()));
    let refused = state.refused.clone();
    loop {
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
        // Never wait for room: a full pool or a client over its share is closed at once, so the
        // kernel's backlog keeps moving for everyone else.
        let exempt = state.exempt.as_ref().is_some_and(|f| f(peer.ip()));
        let guard = if exempt {
            None
        } else {
            match per_ip.enter(peer.ip()) {
                Some(g) => Some(g),
                None => {
                    refused.with_label_values(&["ip_limit"]).inc();
                    drop(stream);
                    continue;
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.with_label_values(&["full"]).inc();
            drop(stream);
            continue;
        };
        // Small frames go out at once: without this, Nagle's algorithm holds a frame written
        // right after another until the first is acknowledged (~tens of ms on a live feed).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
        let state = state.clone();
        tokio::spawn(async move {
            // Both are released when the connection is upgraded (hyper hands it off and this
            // future ends) or closed.
            let _permit = permit;
            let _guard = guard;
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
        "/metrics" | "/healthz" | "/readyz" if !state.serve_ops => match &state.fallback {
            Some(f) => f(req, peer).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Ready;
    impl Readiness for Ready {
        fn check(&self) -> Result<(), Vec<String>> {
            Ok(())
        }
    }

    fn state(registry: &Registry, refused: &prometheus::IntCounterVec) -> Arc<OpsState> {
        Arc::new(OpsState {
            registry: registry.clone(),
            readiness: Arc::new(Ready),
            before_gather: None,
            fallback: None,
            serve_ops: true,
            exempt: None,
            max_pending_per_ip: 1,
            refused: refused.clone(),
        })
    }

    fn ip_limit(registry: &Registry) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "dashstream_http_connections_refused_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == "ip_limit"))
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// Two listeners on one registry (the gateway's public and operations ports): a refusal on
    /// either is in the gathered metrics, whichever listener started first.
    #[tokio::test]
    async fn refusals_on_every_listener_of_a_registry_are_counted() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let registry = Registry::new();
            let refused = refusals(&registry).expect("registered once");
            assert!(
                refusals(&registry).is_err(),
                "a second registration is refused, so one counter is shared"
            );
            let stop = CancellationToken::new();
            let mut addrs = Vec::new();
            for _ in 0..2 {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs.push(l.local_addr().unwrap());
                tokio::spawn(serve(l, state(&registry, &refused), stop.clone()));
            }
            for (i, addr) in addrs.iter().enumerate() {
                // The first connection holds the address's one place; the second is closed.
                let _held = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut buf = [0u8; 1];
                assert_eq!(
                    over.read(&mut buf).await.unwrap_or(0),
                    0,
                    "closed at accept"
                );
                assert_eq!(ip_limit(&registry), i as u64 + 1, "listener {i} counted");
            }
            stop.cancel();
        })
        .await
        .expect("within 30 s");
    }
}
