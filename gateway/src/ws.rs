//! `/ws`: the upgrade (parameters, limits, cursor check, then HTTP 101) and the connection,
//! one task polling three futures: the writer owning the socket's write half (it writes the
//! pre-framed server frames of the connection's [`OutQueue`], everything queued at once in one
//! vectored write, with a send timeout and heartbeat pings), the reader parsing client frames
//! with tungstenite (ping, errors, size limit, idle timeout, abuse), and the session feeding
//! events. When the writer or the reader ends, the other gets a moment to finish (a close
//! frame to flush, unread input to drain, so the client sees the close instead of a reset),
//! then the connection ends and is counted once in `disconnects_total`.

use crate::auth::{AuthError, Authenticator, Grant};
use crate::cursor::{Cursor, EntryId};
use crate::event::Filter;
use crate::frames::{self, Format, Outgoing, Wire};
use crate::limits::{Limits, Refusal};
use crate::metrics::Metrics;
use crate::outq::{OutQueue, Outbound, Outbox};
use crate::reader::Live;
use crate::session::{observe_sent, Session, Start};
use crate::streams::Streams;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Request header that may carry the resume cursor instead of `from`.
pub const CURSOR_HEADER: &str = "dashstream-cursor";
/// A browser offers `dashstream` plus `cursor.<cursor>` as subprotocols; the gateway answers
/// with `dashstream`.
pub const SUBPROTOCOL: &str = "dashstream";
pub const CURSOR_SUBPROTOCOL_PREFIX: &str = "cursor.";

/// Settings of client connections.
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub server_id: String,
    pub max_client_frame_bytes: usize,
    pub send_queue: usize,
    pub send_queue_bytes: usize,
    pub max_frame_bytes: usize,
    pub history_page: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub max_strikes: u32,
}

/// Everything `/ws` needs.
pub struct Gateway {
    pub live: Arc<Live>,
    pub streams: Streams,
    /// The same streams, as the sessions' history (one shared handle, not one per client).
    pub history: Arc<dyn crate::session::History>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub settings: WsSettings,
    pub drain: CancellationToken,
    /// Every connection's outbound bytes, against the replica's budget.
    pub outbox: Arc<Outbox>,
    /// Every upgraded connection's task, from before the upgrade completes (drain waits).
    pub tracker: TaskTracker,
    /// `GATEWAY_AUTH=jwt`: every upgrade needs a token, whose claims scope the stream.
    pub auth: Option<Arc<Authenticator>>,
    /// Browser origins allowed besides the gateway's own (lower case; `*`: any).
    pub allowed_origins: Vec<String>,
}

enum CursorProblem {
    /// The cursor is not one this system could have given (400, keep nothing of it).
    Bad(String),
    /// Redis could not be asked now (503: keep the cursor and retry).
    Unavailable(String),
}

struct Params {
    start: Start,
    format: Format,
    filter: Filter,
    /// What the client's token grants (with `GATEWAY_AUTH=jwt`).
    grant: Option<Grant>,
}

fn reject(
    metrics: &Metrics,
    status: StatusCode,
    reason: &str,
    code: &str,
    message: &str,
) -> Response<Full<Bytes>> {
    metrics
        .upgrades
        .with_label_values(&["rejected", reason])
        .inc();
    let body = serde_json::json!({"type": "error", "code": code, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// The live viewer page (static; no build step).
fn viewer() -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::from_static(include_bytes!(
            "../static/index.html"
        ))))
        .expect("valid response")
}

/// The query's parameters: `from`, the format, the filter and `access_token`.
pub type Query = (Option<String>, Format, Filter, Option<String>);

/// Parses `/ws`'s query string; `Err((code, message))` is the 400 refusal.
pub fn parse_params(query: &str) -> Result<Query, (&'static str, String)> {
    let mut from = None;
    let mut token = None;
    let mut format = Format::Json;
    let mut filter = Filter::default();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(("BAD_REQUEST", format!("parameter {k} given twice")));
        }
        match k.as_ref() {
            "from" => from = Some(v.into_owned()),
            "format" => {
                format = match v.as_ref() {
                    "json" => Format::Json,
                    "protobuf" => Format::Protobuf,
                    other => {
                        return Err((
                            "BAD_REQUEST",
                            format!("format {other:?} is not json or protobuf"),
                        ))
                    }
                }
            }
            "tenant" => {
                filter.tenants =
                    Some(Filter::parse_values("tenant", &v).map_err(|e| ("BAD_FILTER", e))?)
            }
            "thread" => {
                filter.threads =
                    Some(Filter::parse_values("thread", &v).map_err(|e| ("BAD_FILTER", e))?)
            }
            "type" => {
                filter.types =
                    Some(Filter::parse_values("type", &v).map_err(|e| ("BAD_FILTER", e))?)
            }
            "access_token" => token = Some(v.into_owned()),
            other => return Err(("BAD_REQUEST", format!("unknown parameter {other:?}"))),
        }
    }
    Ok((from, format, filter, token))
}

impl Gateway {
    /// Handles a request for a path the operations server does not serve.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/ws" => {}
            "/" | "/index.html" => return viewer(),
            _ => return dashstream::http::text(StatusCode::NOT_FOUND, "not found\n"),
        }
        let m = &self.metrics;
        if !self.live.started() {
            return reject(
                m,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "UNAVAILABLE",
                "this replica has not read its streams yet; connect again",
            );
        }
        if self.drain.is_cancelled() {
            return reject(
                m,
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "DRAINING",
                "this replica is shutting down; connect again",
            );
        }
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let (ip, ignored) = self.limits.client_ip(peer.ip(), &forwarded);
        if ignored {
            m.untrusted_forwarded.inc();
        }
        let upgrade = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        let Some(key) = header("sec-websocket-key").map(str::to_string) else {
            return reject(
                m,
                StatusCode::BAD_REQUEST,
                "not_websocket",
                "BAD_REQUEST",
                "a WebSocket upgrade is required",
            );
        };
        if !upgrade || header("sec-websocket-version") != Some("13") {
            return reject(
                m,
                StatusCode::BAD_REQUEST,
                "not_websocket",
                "BAD_REQUEST",
                "a WebSocket (version 13) upgrade is required",
            );
        }
        if self.limits.take_upgrade(ip).is_err() {
            return reject(
                m,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit",
                "TOO_MANY_UPGRADES",
                "too many upgrades from your address; wait a moment",
            );
        }
        if let Some(origin) = header("origin") {
            if !self.origin_allowed(origin, header("host")) {
                return reject(
                    m,
                    StatusCode::FORBIDDEN,
                    "origin",
                    "ORIGIN_NOT_ALLOWED",
                    &format!("origin {origin:?} is not in GATEWAY_ALLOWED_ORIGINS"),
                );
            }
        }
        let (mut from, format, filter, query_token) =
            match parse_params(req.uri().query().unwrap_or("")) {
                Ok(p) => p,
                Err((code, msg)) => {
                    return reject(m, StatusCode::BAD_REQUEST, "bad_request", code, &msg)
                }
            };
        // A cursor too large for a URL (HTTP libraries cap a URI at 64 KiB: a topic of a few
        // thousand partitions) travels in a header, or, from a browser, as a subprotocol.
        let offered: Vec<&str> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let carried = header(CURSOR_HEADER).map(str::to_string).or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(CURSOR_SUBPROTOCOL_PREFIX))
                .map(str::to_string)
        });
        if let Some(c) = carried {
            if from.is_some() {
                return reject(
                    m,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "BAD_REQUEST",
                    "give the start position once: `from` or the cursor header, not both",
                );
            }
            from = Some(c);
        }
        let subprotocol = offered.contains(&SUBPROTOCOL).then_some(SUBPROTOCOL);
        // Authentication, then the scope: the filter the token lets the client have.
        let (filter, grant) = match &self.auth {
            None => (filter, None),
            Some(auth) => {
                let checked = crate::auth::token_from(
                    header("authorization"),
                    &offered,
                    query_token.as_deref(),
                )
                .and_then(|t| t.ok_or(AuthError::Missing))
                .and_then(|t| auth.verify(t))
                .and_then(|g| Ok((g.scope(filter)?, g)));
                match checked {
                    Ok((f, g)) => (f, Some(g)),
                    Err(e) => return self.refuse_auth(&e),
                }
            }
        };
        // The connection limits before any Redis work (the cursor check).
        let slot = match self.limits.acquire(ip) {
            Ok(s) => s,
            Err(Refusal::Global) => {
                return reject(
                    m,
                    StatusCode::TOO_MANY_REQUESTS,
                    "global_limit",
                    "OVERLOADED",
                    "too many connections on this replica",
                )
            }
            Err(Refusal::PerIp | Refusal::Rate) => {
                return reject(
                    m,
                    StatusCode::TOO_MANY_REQUESTS,
                    "ip_limit",
                    "TOO_MANY_CONNECTIONS",
                    "too many connections from your address",
                )
            }
        };
        let start = match from.as_deref() {
            None | Some("latest") => Start::Latest,
            Some("earliest") => Start::Earliest,
            Some(c) => match self.check_cursor(c).await {
                Ok(c) => Start::Cursor(c),
                Err(CursorProblem::Bad(msg)) => {
                    m.resumes.with_label_values(&["bad_cursor"]).inc();
                    return reject(m, StatusCode::BAD_REQUEST, "bad_cursor", "BAD_CURSOR", &msg);
                }
                Err(CursorProblem::Unavailable(msg)) => {
                    return reject(
                        m,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "UNAVAILABLE",
                        &msg,
                    );
                }
            },
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let params = Params {
            start,
            format,
            filter,
            grant,
        };
        let gw = self.clone();
        self.tracker.spawn(async move {
            let _slot = slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    gw.metrics
                        .upgrades
                        .with_label_values(&["accepted", "ok"])
                        .inc();
                    // tungstenite only parses client frames: a small read buffer (it grows for
                    // a larger frame, up to the frame limit), and nothing is written through
                    // it (server frames are framed here and written by the writer).
                    let cfg = WebSocketConfig::default()
                        .max_message_size(Some(gw.settings.max_client_frame_bytes))
                        .max_frame_size(Some(gw.settings.max_client_frame_bytes))
                        .read_buffer_size(512)
                        .write_buffer_size(0);
                    let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
                    let ws =
                        WebSocketStream::from_raw_socket(ReadOnly(rd), Role::Server, Some(cfg))
                            .await;
                    gw.connection(ws, wr, params).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let mut resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept);
        if let Some(p) = subprotocol {
            resp = resp.header("sec-websocket-protocol", p);
        }
        resp.body(Full::new(Bytes::new())).expect("valid response")
    }

    /// A browser's `Origin` must be the gateway's own (`Host`, the viewer it serves) or one of
    /// `GATEWAY_ALLOWED_ORIGINS`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let own = host.is_some_and(|h| {
            let h = h.to_ascii_lowercase();
            origin == format!("http://{h}") || origin == format!("https://{h}")
        });
        own || self
            .allowed_origins
            .iter()
            .any(|a| a == "*" || *a == origin)
    }

    /// The refusal of a missing or bad token (401) or of a scope it does not grant (403),
    /// counted by reason.
    fn refuse_auth(&self, e: &AuthError) -> Response<Full<Bytes>> {
        let m = &self.metrics;
        m.auth_failures.with_label_values(&[e.reason()]).inc();
        let (status, reason, code) = if e.forbidden() {
            (StatusCode::FORBIDDEN, "forbidden", "FORBIDDEN")
        } else {
            (StatusCode::UNAUTHORIZED, "unauthorized", "UNAUTHORIZED")
        };
        let mut resp = reject(m, status, reason, code, &e.message());
        if !e.forbidden() {
            resp.headers_mut().insert(
                "www-authenticate",
                hyper::header::HeaderValue::from_static("Bearer realm=\"dashstream\""),
            );
        }
        resp
    }

    /// A cursor must parse and may only name partitions that have a stream, at positions not
    /// beyond what the stream holds in Redis (when the epoch is the same). Redis is asked, not
    /// this replica's view: another replica may have read further.
    async fn check_cursor(&self, s: &str) -> Result<Cursor, CursorProblem> {
        let c = Cursor::decode(s).map_err(|e| CursorProblem::Bad(e.to_string()))?;
        // Partitions this replica does not follow are refused without asking Redis: a forged
        // cursor naming thousands costs one map lookup each, not a script over their keys.
        // (A partition added to the topic in the last seconds, not followed here yet, is
        // refused too: partitions are added rarely, and the topic's keys move then anyway.)
        let known = self.live.tops();
        if let Some(p) = c.parts.keys().find(|p| !known.contains_key(p)) {
            return Err(CursorProblem::Bad(format!(
                "bad cursor: partition {p} has no stream"
            )));
        }
        let from: Vec<(i32, EntryId)> = c.parts.keys().map(|p| (*p, EntryId::ZERO)).collect();
        // In transactions of up to CHECK_CHUNK partitions: a wide topic's check is then
        // several bounded reads, each within the command timeout, not one huge reply.
        let mut reads = Vec::with_capacity(from.len());
        for chunk in from.chunks(CHECK_CHUNK) {
            let part = self.streams.read(chunk, 0).await.map_err(|e| {
                CursorProblem::Unavailable(format!("cannot check the cursor now: {e}"))
            })?;
            reads.extend(part);
        }
        for ((p, pos), r) in c.parts.iter().zip(reads) {
            // A retention gap leaves a position of "all of offset o" (n = u32::MAX).
            let beyond =
                pos.last > r.last && !(pos.last.n == u32::MAX && pos.last.offset <= r.last.offset);
            match r.epoch {
                // The stream's meta is missing while its history is being re-created (Redis
                // flushed, partition quiet): a partition this replica follows is real, so the
                // session starts and gets the reset gap once the new epoch exists.
                None if known.contains_key(p) => {}
                None => {
                    return Err(CursorProblem::Bad(format!(
                        "bad cursor: partition {p} has no stream"
                    )))
                }
                Some(epoch) if epoch == pos.epoch && beyond => {
                    return Err(CursorProblem::Bad(format!(
                        "bad cursor: partition {p} position is beyond the stream"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(c)
    }

    async fn connection<R, W>(
        self: Arc<Self>,
        ws: WebSocketStream<ReadOnly<R>>,
        wr: W,
        params: Params,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let m = &*self.metrics;
        let settings = &self.settings;
        let _connected = Connected::new(m);
        let out = OutQueue::new(
            &self.outbox,
            settings.send_queue,
            settings.send_queue_bytes.max(1024),
        );
        // This connection's own stop: the replica's drain, or its token's end.
        let stop = self.drain.child_token();
        let leave: Arc<std::sync::OnceLock<(u16, &'static str)>> = Default::default();
        let auth = match (&self.auth, params.grant) {
            (Some(a), Some(g)) => Some(ConnAuth {
                auth: a.clone(),
                exp: g.exp,
                filter: params.filter.clone(),
                stop: stop.clone(),
                leave: leave.clone(),
            }),
            _ => None,
        };
        let session = Session {
            leave,
            format: params.format,
            filter: params.filter,
            live: self.live.clone(),
            history: self.history.clone(),
            metrics: self.metrics.clone(),
            out: out.clone(),
            server: settings.server_id.clone(),
            max_frame_bytes: settings.max_frame_bytes.max(1024),
            history_page: settings.history_page.max(1),
            drain: stop,
            progress: Default::default(),
            shard: self.live.next_shard(),
        };
        // One task: the writer, the reader and the session are futures polled together.
        let writer = write_loop(wr, &out, m, settings);
        let reader = read_loop(ws, &out, m, settings, params.format, auth);
        let feeder = session.run(params.start);
        tokio::pin!(writer, reader, feeder);
        // The writer ends the connection (after a close frame, an error, a send timeout, or a
        // shed); the reader ends it when the client leaves. The session only ends by queueing
        // a close (drain) or because its queue closed (shed).
        // A side that ended by closing (a close frame sent or queued) gives the other a moment:
        // the reader drains input under the writer's close frame, the writer flushes the close
        // frame the reader queued. A side that ended because the client is gone does not.
        let ended = tokio::select! {
            w = &mut writer => {
                if w.closing {
                    let _ = tokio::time::timeout(LINGER, &mut reader).await;
                }
                w
            }
            r = &mut reader => {
                if r.closing {
                    tokio::time::timeout(LINGER, &mut writer).await.unwrap_or(r)
                } else {
                    r
                }
            }
            () = &mut feeder => {
                tokio::time::timeout(LINGER, &mut writer)
                    .await
                    .unwrap_or(Ended::new("send_timeout", false))
            }
        };
        out.close();
        m.disconnects.with_label_values(&[ended.reason]).inc();
    }
}

/// Counts a connection in `connected_clients` while it lives (a panic included).
struct Connected<'a>(&'a Metrics);

impl<'a> Connected<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.connected_clients.inc();
        Self(m)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.connected_clients.dec();
    }
}

/// How one side of a connection ended: the `disconnects_total` reason, and whether it closed
/// (so the other side gets a moment to finish).
#[derive(Debug, Clone, Copy)]
struct Ended {
    reason: &'static str,
    closing: bool,
}

impl Ended {
    fn new(reason: &'static str, closing: bool) -> Self {
        Self { reason, closing }
    }
}

/// How long a closing connection waits for its close frame to go out and the client's unread
/// input to be drained.
const LINGER: Duration = Duration::from_secs(2);
/// Partitions per transaction when a cursor is checked.
const CHECK_CHUNK: usize = 256;
/// How long a shed connection's close frame may take.
const SHED_LINGER: Duration = Duration::from_millis(100);
/// Most queued items written in one vectored write.
const MAX_ITEMS_PER_WRITE: usize = 64;

/// The read half for tungstenite: it parses client frames only. What it would write (its
/// automatic replies) is dropped; the reader answers pings and closes through the writer.
pub struct ReadOnly<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes all of `bufs` with as few (vectored) writes as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < bufs.len() {
        let n = {
            let slices: Vec<std::io::IoSlice<'_>> = bufs[first..]
                .iter()
                .take(1024)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 && first < bufs.len() {
            let b = &mut bufs[first];
            let take = left.min(b.len());
            b.advance(take);
            left -= take;
            if b.is_empty() {
                first += 1;
            }
        }
        while first < bufs.len() && bufs[first].is_empty() {
            first += 1;
        }
    }
    w.flush().await
}

/// Counts what one write sent.
fn count_sent(m: &Metrics, frames: &[&Outgoing]) {
    use crate::metrics::FRAME_TYPES;
    let (mut bytes, mut events) = (0u64, 0u64);
    let mut by_type = [0u64; FRAME_TYPES.len()];
    for f in frames {
        bytes += f.wire.len() as u64;
        events += u64::from(f.events);
        observe_sent(m, f.oldest_us);
        if let Some(reason) = f.gap {
            m.gaps.with_label_values(&[reason]).inc();
        }
        match FRAME_TYPES.iter().position(|t| *t == f.kind) {
            Some(i) => by_type[i] += 1,
            None => m.frames_sent.with_label_values(&[f.kind]).inc(),
        }
    }
    for (counter, n) in m.frames_sent_by_type.iter().zip(by_type) {
        if n > 0 {
            counter.inc_by(n);
        }
    }
    m.bytes_sent.inc_by(bytes);
    m.events_sent.inc_by(events);
}

/// Writes until the queue closes, a write fails or times out, or a close frame was sent
/// (`closing`).
async fn write_loop<W>(mut wr: W, out: &OutQueue, m: &Metrics, settings: &WsSettings) -> Ended
where
    W: AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.tick().await;
    let mut held: Vec<Outbound> = Vec::new();
    let mut bufs: Vec<Bytes> = Vec::new();
    loop {
        let got = tokio::select! {
            got = out.take(&mut held, MAX_ITEMS_PER_WRITE) => got,
            _ = ping.tick() => {
                let mut b = [Wire::ping().bytes().clone()];
                match tokio::time::timeout(settings.send_timeout, write_all_vectored(&mut wr, &mut b)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return Ended::new("error", false),
                    Err(_) => return Ended::new("send_timeout", false),
                }
            }
        };
        if !got {
            if out.was_shed() {
                // Over the replica's outbound budget with the most bytes held: say so if the
                // socket takes it at once; the client resumes with its last cursor.
                let mut b = [Wire::close(4009, "slow consumer").bytes().clone()];
                let _ =
                    tokio::time::timeout(SHED_LINGER, write_all_vectored(&mut wr, &mut b)).await;
                return Ended::new("slow", false);
            }
            return Ended::new("error", false);
        }
        let mut close = None;
        let mut sent: Vec<&Outgoing> = Vec::new();
        for o in &held {
            match o {
                Outbound::Frame(f) => sent.push(f),
                Outbound::Shared(fs) => sent.extend(fs.iter()),
                Outbound::Close(code, reason) => {
                    close = Some((*code, *reason));
                    break;
                }
            }
        }
        bufs.clear();
        bufs.extend(sent.iter().map(|f| f.wire.bytes().clone()));
        let bytes: usize = held.iter().map(Outbound::bytes).sum();
        let write = tokio::time::timeout(
            settings.send_timeout,
            write_all_vectored(&mut wr, &mut bufs),
        );
        let written = tokio::select! {
            r = write => r,
            // Shed while its socket was full: stop now (the frame in flight cannot be
            // finished, so no close frame either).
            () = out.closed() => return Ended::new("slow", false),
        };
        match written {
            Ok(Ok(())) => count_sent(m, &sent),
            Ok(Err(_)) => return Ended::new("error", false),
            Err(_) => return Ended::new("send_timeout", false),
        }
        drop(sent);
        // Nothing is kept between wakes: an idle connection holds no buffers.
        held = Vec::new();
        bufs = Vec::new();
        out.written(bytes);
        if let Some((code, reason)) = close {
            let label = match code {
                4012 => "draining",
                4001 => "unauthorized",
                4003 => "forbidden",
                1000 => "client",
                _ if reason == "idle" => "idle",
                _ => "abuse",
            };
            let mut b = [Wire::close(code, reason).bytes().clone()];
            let _ = tokio::time::timeout(LINGER, write_all_vectored(&mut wr, &mut b)).await;
            let _ = tokio::time::timeout(LINGER, wr.shutdown()).await;
            return Ended::new(label, true);
        }
    }
}

/// Reads and discards what the client still sends (the rest of an oversized frame), until
/// the input stays quiet for a moment, the client closes, or `LINGER` passes: closing a socket
/// with unread input resets it, and the client would lose the close frame sent just before.
async fn drain_input<R: AsyncRead + Unpin>(ws: &mut WebSocketStream<ReadOnly<R>>) {
    use tokio::io::AsyncReadExt;
    const QUIET: Duration = Duration::from_millis(200);
    // On the heap: a buffer in the future would be part of every idle connection's state.
    let mut scratch = vec![0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(Ok(n)) = tokio::time::timeout(QUIET, ws.get_mut().0.read(&mut scratch)).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A client's text frame (docs/PROTOCOL.md, Client frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"auth","token":...}` (`None`: no token string).
    Auth(Option<String>),
    /// JSON of another shape.
    Other,
    NotJson,
}

/// Parses a client's text frame; other fields of the object are ignored.
pub fn parse_client_frame(text: &str) -> ClientFrame {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => ClientFrame::NotJson,
        Ok(v) => match v.get("type").and_then(|t| t.as_str()) {
            Some("ping") => ClientFrame::Ping,
            Some("auth") => {
                ClientFrame::Auth(v.get("token").and_then(|t| t.as_str()).map(str::to_string))
            }
            _ => ClientFrame::Other,
        },
    }
}

/// A connection's authentication: its token's `exp`, renewed by `auth` frames whose token
/// covers the connection's filter. At `exp` the connection is ended (4001, with a cursor);
/// a renewal that no longer covers the filter ends it too (4003).
struct ConnAuth {
    auth: Arc<Authenticator>,
    exp: u64,
    filter: Filter,
    stop: CancellationToken,
    leave: Arc<std::sync::OnceLock<(u16, &'static str)>>,
}

impl ConnAuth {
    /// Ends the connection through its session (a `reconnect` frame, then `code`).
    fn end(&self, code: u16, reason: &'static str) {
        let _ = self.leave.set((code, reason));
        self.stop.cancel();
    }

    /// When the token expires, as a tokio instant (`None` once the connection is ending).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        if self.stop.is_cancelled() {
            return None;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left = (self.exp * 1000).saturating_sub(now_ms);
        Some(tokio::time::Instant::now() + Duration::from_millis(left))
    }
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn read_loop<R>(
    mut stream: WebSocketStream<ReadOnly<R>>,
    out: &OutQueue,
    m: &Metrics,
    settings: &WsSettings,
    format: Format,
    mut auth: Option<ConnAuth>,
) -> Ended
where
    R: AsyncRead + Unpin,
{
    let mut strikes = 0u32;
    let reply = |wire: Wire, kind: &'static str| {
        out.try_push(Outbound::Frame(Outgoing::control(wire, kind)));
    };
    loop {
        let expires = until(auth.as_ref().and_then(ConnAuth::deadline));
        let next = tokio::select! {
            n = tokio::time::timeout(settings.idle_timeout, stream.next()) => match n {
                Err(_) => {
                    out.push_close(4008, "idle");
                    return Ended::new("idle", true);
                }
                Ok(n) => n,
            },
            () = expires => {
                m.auth_failures.with_label_values(&["expired"]).inc();
                if let Some(a) = &auth {
                    a.end(4001, "token_expired");
                }
                continue;
            }
        };
        let bad = |kind: &'static str, code: &str, msg: &str| {
            m.client_errors.with_label_values(&[kind]).inc();
            reply(frames::error(format, code, msg), "error");
        };
        match next {
            None => return Ended::new("client", false),
            Some(Err(WsError::Capacity(_))) => {
                bad(
                    "frame_too_large",
                    "FRAME_TOO_LARGE",
                    &format!(
                        "client frames are limited to {} bytes",
                        settings.max_client_frame_bytes
                    ),
                );
                out.push_close(4008, "frame too large");
                drain_input(&mut stream).await;
                return Ended::new("abuse", true);
            }
            Some(Err(_)) => return Ended::new("error", false),
            Some(Ok(Message::Text(t))) => match parse_client_frame(t.as_str()) {
                ClientFrame::Ping => reply(frames::pong(format), "pong"),
                ClientFrame::Auth(token) => match (&mut auth, token.as_deref()) {
                    (None, _) => reply(
                        frames::error(
                            format,
                            "BAD_REQUEST",
                            "this gateway does not authenticate (GATEWAY_AUTH is not jwt)",
                        ),
                        "error",
                    ),
                    (Some(_), None) => {
                        bad("unknown_type", "BAD_REQUEST", "auth needs a token");
                        strikes += 1;
                    }
                    (Some(a), Some(t)) => match a.auth.verify(t) {
                        Ok(g) if g.covers(&a.filter) => {
                            a.exp = g.exp;
                            reply(frames::authenticated(format, g.exp), "authenticated");
                        }
                        Ok(_) => {
                            m.auth_failures.with_label_values(&["forbidden"]).inc();
                            a.end(4003, "forbidden");
                        }
                        Err(e) => {
                            m.auth_failures.with_label_values(&[e.reason()]).inc();
                            reply(frames::error(format, "UNAUTHORIZED", &e.message()), "error");
                            strikes += 1;
                        }
                    },
                },
                ClientFrame::Other => {
                    bad(
                        "unknown_type",
                        "BAD_REQUEST",
                        "the only client frame is {\"type\":\"ping\"}",
                    );
                    strikes += 1;
                }
                ClientFrame::NotJson => {
                    bad("bad_json", "BAD_JSON", "client frames must be JSON");
                    strikes += 1;
                }
            },
            Some(Ok(Message::Binary(_))) => {
                bad("binary", "BAD_REQUEST", "client frames must be JSON text");
                strikes += 1;
            }
            Some(Ok(Message::Ping(data))) => reply(Wire::pong(&data), "pong"),
            Some(Ok(Message::Close(_))) => {
                // Answer the close handshake; the writer then closes the connection.
                out.push_close(1000, "bye");
                return Ended::new("client", true);
            }
            Some(Ok(_)) => {}
        }
        if strikes >= settings.max_strikes {
            out.push_close(4008, "too many bad frames");
            drain_input(&mut stream).await;
            return Ended::new("abuse", true);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    struct NoHistory;
    impl crate::session::History for NoHistory {
        fn read<'a>(
            &'a self,
            _: &'a [(i32, EntryId)],
            _: usize,
        ) -> futures::future::BoxFuture<
            'a,
            Result<Vec<crate::streams::PartRead>, crate::streams::ReadError>,
        > {
            Box::pin(async { Ok(vec![]) })
        }
    }
    /// The futures of a connection are its state at rest (one allocation per connection):
    /// nothing large may live in them (a read buffer on the stack made the reader 5 KiB).
    #[test]
    fn an_idle_connection_state_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let outbox = Outbox::new(1 << 20);
            let q = OutQueue::new(&outbox, 32, 1 << 20);
            let m = Arc::new(Metrics::new(&prometheus::Registry::new()).unwrap());
            let settings = WsSettings {
                server_id: "x".into(),
                max_client_frame_bytes: 4096,
                send_queue: 32,
                send_queue_bytes: 1 << 20,
                max_frame_bytes: 1 << 18,
                history_page: 1000,
                ping_interval: Duration::from_secs(15),
                idle_timeout: Duration::from_secs(60),
                send_timeout: Duration::from_secs(30),
                max_strikes: 10,
            };
            let (a, _b) = tokio::io::duplex(64);
            let (rd, wr) = tokio::io::split(a);
            let ws = WebSocketStream::from_raw_socket(ReadOnly(rd), Role::Server, None).await;
            let w = write_loop(wr, &q, &m, &settings);
            let r = read_loop(ws, &q, &m, &settings, Format::Json, None);
            let live = Live::new(16, 1 << 18);
            let session = Session {
                leave: Default::default(),
                format: Format::Json,
                filter: Filter::default(),
                live: live.clone(),
                history: Arc::new(NoHistory),
                metrics: m.clone(),
                out: q.clone(),
                server: "x".into(),
                max_frame_bytes: 1 << 18,
                history_page: 1000,
                drain: CancellationToken::new(),
                progress: Default::default(),
                shard: 0,
            };
            let f = session.run(Start::Latest);
            let sizes = [
                std::mem::size_of_val(&w),
                std::mem::size_of_val(&r),
                std::mem::size_of_val(&f),
            ];
            eprintln!("writer, reader, session futures: {sizes:?} bytes");
            assert!(sizes.iter().all(|s| *s <= 1536), "{sizes:?}");
            assert!(sizes.iter().sum::<usize>() <= 3584, "{sizes:?}");
        });
    }
}
