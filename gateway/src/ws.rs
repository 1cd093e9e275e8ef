//! `/ws`: the upgrade (parameters, limits, cursor check, then HTTP 101) and the connection:
//! a writer task owning the socket's sink (bounded queue, send timeout, heartbeat pings), a
//! reader task handling client frames (ping, errors, size limit, idle timeout, abuse), and the
//! session feeding events. When any of them ends, the others are stopped.

use crate::cursor::{Cursor, EntryId};
use crate::event::Filter;
use crate::frames::{self, Format, Wire};
use crate::limits::{Limits, Refusal};
use crate::metrics::Metrics;
use crate::reader::Live;
use crate::session::{observe_sent, Outbound, Session, Start};
use crate::streams::Streams;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Settings of client connections.
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub server_id: String,
    pub max_client_frame_bytes: usize,
    pub send_queue: usize,
    pub max_frame_events: usize,
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
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub settings: WsSettings,
    pub drain: CancellationToken,
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

fn parse_params(query: &str) -> Result<(Option<String>, Format, Filter), (&'static str, String)> {
    let mut from = None;
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
            "access_token" => {}
            other => return Err(("BAD_REQUEST", format!("unknown parameter {other:?}"))),
        }
    }
    Ok((from, format, filter))
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
        let (ip, ignored) = self.limits.client_ip(peer.ip(), header("x-forwarded-for"));
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
        let (from, format, filter) = match parse_params(req.uri().query().unwrap_or("")) {
            Ok(p) => p,
            Err((code, msg)) => {
                return reject(m, StatusCode::BAD_REQUEST, "bad_request", code, &msg)
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
            Err(Refusal::PerIp) => {
                return reject(
                    m,
                    StatusCode::TOO_MANY_REQUESTS,
                    "ip_limit",
                    "TOO_MANY_CONNECTIONS",
                    "too many connections from your address",
                )
            }
        };
        m.upgrades.with_label_values(&["accepted", "ok"]).inc();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let params = Params {
            start,
            format,
            filter,
        };
        let gw = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    // Small buffers: the defaults (128 KiB each way) cost ~140 KiB per idle
                    // connection; client frames are small and each server frame is flushed.
                    let cfg = WebSocketConfig::default()
                        .max_message_size(Some(gw.settings.max_client_frame_bytes))
                        .max_frame_size(Some(gw.settings.max_client_frame_bytes))
                        // Twice the frame limit, so an oversized frame is usually read whole
                        // and the client gets FRAME_TOO_LARGE and 4008 rather than a reset.
                        .read_buffer_size(gw.settings.max_client_frame_bytes.max(4096) * 2)
                        .write_buffer_size(0)
                        .max_write_buffer_size(16 * 1024 * 1024);
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(cfg),
                    )
                    .await;
                    gw.connection(ws, params).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .expect("valid response")
    }

    /// A cursor must parse and may only name partitions that have a stream, at positions not
    /// beyond what the stream holds in Redis (when the epoch is the same). Redis is asked, not
    /// this replica's view: another replica may have read further.
    async fn check_cursor(&self, s: &str) -> Result<Cursor, CursorProblem> {
        let c = Cursor::decode(s).map_err(|e| CursorProblem::Bad(e.to_string()))?;
        let from: Vec<(i32, EntryId)> = c.parts.keys().map(|p| (*p, EntryId::ZERO)).collect();
        let reads =
            self.streams.read(&from, 0).await.map_err(|e| {
                CursorProblem::Unavailable(format!("cannot check the cursor now: {e}"))
            })?;
        for ((p, pos), r) in c.parts.iter().zip(reads) {
            match r.epoch {
                None => {
                    return Err(CursorProblem::Bad(format!(
                        "bad cursor: partition {p} has no stream"
                    )))
                }
                Some(epoch) if epoch == pos.epoch && pos.last > r.last => {
                    return Err(CursorProblem::Bad(format!(
                        "bad cursor: partition {p} position is beyond the stream"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(c)
    }

    async fn connection<S>(self: Arc<Self>, ws: WebSocketStream<S>, params: Params)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let m = self.metrics.clone();
        m.connected_clients.inc();
        let (sink, stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(self.settings.send_queue.max(1));
        let session = Session {
            format: params.format,
            filter: params.filter,
            live: self.live.clone(),
            streams: self.streams.clone(),
            metrics: m.clone(),
            out: out_tx.clone(),
            server: self.settings.server_id.clone(),
            max_frame_events: self.settings.max_frame_events.max(1),
            history_page: self.settings.history_page.max(1),
            drain: self.drain.clone(),
        };
        let mut writer = tokio::spawn(write_loop(sink, out_rx, m.clone(), self.settings.clone()));
        let mut reader = tokio::spawn(read_loop(
            stream,
            out_tx,
            m.clone(),
            self.settings.clone(),
            params.format,
        ));
        let feeder = tokio::spawn(session.run(params.start));
        // The writer ends the connection (after a close frame, an error or a send timeout);
        // the reader ends it when the client leaves; the feeder only ends by asking the writer
        // to close, so the writer is what everything waits for.
        tokio::select! {
            _ = &mut writer => {}
            _ = &mut reader => {
                // Give the writer a moment to flush a close frame the reader queued.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            }
        }
        reader.abort();
        feeder.abort();
        writer.abort();
        m.connected_clients.dec();
    }
}

async fn write_loop<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    m: Arc<Metrics>,
    settings: WsSettings,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            o = rx.recv() => o,
            _ = ping.tick() => {
                if tokio::time::timeout(settings.send_timeout, sink.send(Message::Ping(Bytes::new()))).await.is_err() {
                    m.disconnects.with_label_values(&["send_timeout"]).inc();
                    return;
                }
                continue;
            }
        };
        match msg {
            None => return,
            Some(Outbound::Frame {
                wire,
                kind,
                events,
                stamps,
            }) => {
                let len = wire.len() as u64;
                let message = match wire {
                    Wire::Text(t) => Message::Text(t.into()),
                    Wire::Binary(b) => Message::Binary(b),
                };
                match tokio::time::timeout(settings.send_timeout, sink.send(message)).await {
                    Ok(Ok(())) => {
                        m.frames_sent.with_label_values(&[kind]).inc();
                        m.bytes_sent.inc_by(len);
                        m.events_sent.inc_by(events);
                        observe_sent(&m, &stamps);
                    }
                    Ok(Err(_)) => {
                        m.disconnects.with_label_values(&["error"]).inc();
                        return;
                    }
                    Err(_) => {
                        m.disconnects.with_label_values(&["send_timeout"]).inc();
                        return;
                    }
                }
            }
            Some(Outbound::Close(code, reason)) => {
                let label = match code {
                    4012 => "draining",
                    1000 => "client",
                    _ if reason == "idle" => "idle",
                    _ => "abuse",
                };
                m.disconnects.with_label_values(&[label]).inc();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    sink.send(Message::Close(Some(frame))),
                )
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                return;
            }
        }
    }
}

async fn read_loop<S>(
    mut stream: futures::stream::SplitStream<WebSocketStream<S>>,
    out: mpsc::Sender<Outbound>,
    m: Arc<Metrics>,
    settings: WsSettings,
    format: Format,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut strikes = 0u32;
    let reply = |wire: Wire, kind: &'static str| {
        let _ = out.try_send(Outbound::Frame {
            wire,
            kind,
            events: 0,
            stamps: Vec::new(),
        });
    };
    loop {
        let next = match tokio::time::timeout(settings.idle_timeout, stream.next()).await {
            Err(_) => {
                let _ = out.try_send(Outbound::Close(4008, "idle"));
                return;
            }
            Ok(n) => n,
        };
        let bad = |kind: &'static str, code: &str, msg: &str| {
            m.client_errors.with_label_values(&[kind]).inc();
            reply(frames::error(format, code, msg), "error");
        };
        match next {
            None => {
                m.disconnects.with_label_values(&["client"]).inc();
                return;
            }
            Some(Err(WsError::Capacity(_))) => {
                bad(
                    "frame_too_large",
                    "FRAME_TOO_LARGE",
                    &format!(
                        "client frames are limited to {} bytes",
                        settings.max_client_frame_bytes
                    ),
                );
                let _ = out.try_send(Outbound::Close(4008, "frame too large"));
                return;
            }
            Some(Err(_)) => {
                m.disconnects.with_label_values(&["error"]).inc();
                return;
            }
            Some(Ok(Message::Text(t))) => {
                match serde_json::from_str::<serde_json::Value>(t.as_str()) {
                    Ok(v) if v.get("type").and_then(|t| t.as_str()) == Some("ping") => {
                        reply(frames::pong(format), "pong")
                    }
                    Ok(_) => {
                        bad(
                            "unknown_type",
                            "BAD_REQUEST",
                            "the only client frame is {\"type\":\"ping\"}",
                        );
                        strikes += 1;
                    }
                    Err(_) => {
                        bad("bad_json", "BAD_JSON", "client frames must be JSON");
                        strikes += 1;
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => {
                bad("binary", "BAD_REQUEST", "client frames must be JSON text");
                strikes += 1;
            }
            Some(Ok(Message::Close(_))) => {
                m.disconnects.with_label_values(&["client"]).inc();
                return;
            }
            Some(Ok(_)) => {}
        }
        if strikes >= settings.max_strikes {
            let _ = out.try_send(Outbound::Close(4008, "too many bad frames"));
            return;
        }
    }
}
