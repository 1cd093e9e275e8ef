//! Harness of the gateway tests: the real Kafka and Redis, the real ingest and gateway run
//! in this process through their library entry points (each with its own shutdown token), a
//! unique topic, group and key prefix per test, and a WebSocket client that understands both
//! frame formats.
#![allow(dead_code, unused_imports)]

use dashstream::kafka::KafkaConnection;
use dashstream::produce::{Delivered, ProduceOptions, ProduceReport};
use dashstream::proto::{server_frame::Frame as PFrame, ServerFrame};
use dashstream::provision::{provision, TopicSpec};
use dashstream_testkit::{self as testkit, Services};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub use dashstream_testkit::{deadline, unique, wait_for, RedisServer};

/// A service running in this process.
pub struct Running {
    pub addr: String,
    pub stop: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

#[derive(Clone)]
pub struct System {
    pub services: Services,
    pub conn: KafkaConnection,
    pub topic: String,
    pub prefix: String,
    pub redis_url: String,
    pub partitions: i32,
}

impl System {
    pub async fn new(name: &str, partitions: i32, redis_url: Option<String>) -> Self {
        let services = testkit::services();
        let conn = KafkaConnection::plaintext(&services.kafka_brokers);
        let topic = unique(name);
        provision(
            &conn,
            &[
                TopicSpec {
                    name: topic.clone(),
                    partitions,
                    replication: 1,
                    retention_ms: 3_600_000,
                },
                TopicSpec {
                    name: format!("{topic}-dlq"),
                    partitions: 1,
                    replication: 1,
                    retention_ms: 3_600_000,
                },
            ],
        )
        .await
        .expect("create test topics");
        Self {
            redis_url: redis_url.unwrap_or_else(|| services.redis_url.clone()),
            services,
            conn,
            prefix: format!("{topic}-ds"),
            topic,
            partitions,
        }
    }

    /// Starts an ingest for this topic (extra flags override).
    pub async fn ingest(&self, extra: &[&str]) -> Running {
        let port = testkit::free_port();
        let addr = format!("127.0.0.1:{port}");
        let settings = self.ingest_settings(&addr, extra);
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            dashstream_ingest::run(settings, prometheus::Registry::new(), listener, s)
                .await
                .unwrap();
        });
        Running { addr, stop, handle }
    }

    /// The ingest's settings for this topic, listening on `addr` (extra flags override).
    pub fn ingest_settings(&self, addr: &str, extra: &[&str]) -> dashstream_ingest::IngestSettings {
        let mut args = vec![
            "ingest".to_string(),
            format!("--kafka-brokers={}", self.services.kafka_brokers),
            format!("--kafka-topic={}", self.topic),
            format!("--kafka-group-id={}-group", self.topic),
            format!("--redis-url={}", self.redis_url),
            format!("--redis-key-prefix={}", self.prefix),
            format!("--listen={addr}"),
            "--redis-command-timeout-ms=1000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        <dashstream_ingest::IngestArgs as clap::Parser>::try_parse_from(args)
            .unwrap()
            .validate()
            .unwrap()
    }

    /// Starts a gateway replica named `name` (extra flags override).
    pub async fn gateway(&self, name: &str, extra: &[&str]) -> Running {
        let port = testkit::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![
            "gateway".to_string(),
            format!("--kafka-topic={}", self.topic),
            format!("--redis-url={}", self.redis_url),
            format!("--redis-key-prefix={}", self.prefix),
            format!("--listen={addr}"),
            format!("--replica-id={name}"),
            "--redis-command-timeout-ms=1000".into(),
            "--drain-timeout-ms=5000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let settings = <dashstream_gateway::GatewayArgs as clap::Parser>::try_parse_from(args)
            .unwrap()
            .validate()
            .unwrap();
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            dashstream_gateway::run(settings, prometheus::Registry::new(), listener, s)
                .await
                .unwrap();
        });
        let gw = Running { addr, stop, handle };
        // With --ops-listen, /readyz is there only.
        let addr = extra
            .iter()
            .find_map(|a| a.strip_prefix("--ops-listen="))
            .map_or_else(|| gw.addr.clone(), str::to_string);
        wait_for("gateway ready", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { (testkit::http_get(&addr, "/readyz").await.ok()?.0 == 200).then_some(()) }
        })
        .await;
        gw
    }

    pub fn produce_options(&self, count: u64, rate: Option<f64>) -> ProduceOptions {
        testkit::produce_options(&self.topic, 40, count, rate)
    }

    pub async fn produce(&self, opts: ProduceOptions) -> ProduceReport {
        testkit::produce(&self.conn, opts).await
    }

    /// Waits until the gateway follows a stream for every partition.
    pub async fn wait_streams(&self) {
        let url = self.redis_url.clone();
        let key = dashstream::keys::StreamKeys::new(&self.prefix, &self.topic).partitions();
        let n = self.partitions as usize;
        wait_for("a stream per partition", Duration::from_secs(60), || {
            let (url, key) = (url.clone(), key.clone());
            async move {
                let mut c = dashstream_testkit::redis_conn(&url).await.ok()?;
                let v: Vec<i32> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (v.len() == n).then_some(())
            }
        })
        .await;
    }
}

/// Every (partition, offset, index) the valid delivered records hold.
pub fn expected(deliveries: &[Delivered]) -> BTreeSet<(i32, i64, u32)> {
    let mut s = BTreeSet::new();
    for d in deliveries.iter().filter(|d| d.fault.is_none()) {
        for i in 1..=d.events {
            s.insert((d.partition, d.offset, i));
        }
    }
    s
}

/// A server frame, whichever the format.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Welcome {
        server: String,
        cursor: String,
        resumed: bool,
    },
    Events {
        cursor: String,
        events: Vec<(i32, i64, u32)>,
        stamps: Vec<i64>,
    },
    Gap {
        cursor: String,
        reason: String,
        missed: Vec<(i32, i64, i64)>,
    },
    Reconnect {
        cursor: String,
        reason: String,
    },
    Error {
        code: String,
    },
    Pong,
    Authenticated {
        exp: u64,
    },
    Close(u16),
}

pub struct Client {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// Connects to `/ws?<query>`; `Err((status, body))` when the upgrade is refused.
pub async fn connect(addr: &str, query: &str) -> Result<Client, (u16, String)> {
    connect_with(addr, query, &[]).await
}

/// [`connect`] with extra request headers.
pub async fn connect_with(
    addr: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{addr}/ws?{query}");
    let mut req = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => return Err((0, e.to_string())),
    };
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

impl Client {
    /// A client over a TCP stream the caller set up (e.g. with a small receive buffer).
    pub async fn over(addr: &str, query: &str, stream: tokio::net::TcpStream) -> Self {
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}/ws?{query}"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("upgrade");
        Self { ws }
    }

    pub async fn send_text(&mut self, t: &str) {
        let _ = self.ws.send(Message::Text(t.into())).await;
    }
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(b.into())).await;
    }

    /// The next frame, or `None` when the connection ended without a close frame.
    pub async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        // One deadline for the whole wait: server pings must not extend it.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => return Some(parse_json(t.as_str())),
                Ok(Message::Binary(b)) => return Some(parse_proto(&b)),
                Ok(Message::Close(c)) => {
                    return Some(Frame::Close(c.map_or(1005, |c| u16::from(c.code))))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn parse_json(t: &str) -> Frame {
    let v: serde_json::Value = serde_json::from_str(t).expect("server frames are JSON");
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match v["type"].as_str() {
        Some("welcome") => Frame::Welcome {
            server: s("server"),
            cursor: s("cursor"),
            resumed: v["resumed"].as_bool().unwrap(),
        },
        Some("events") => Frame::Events {
            stamps: v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["timestamp_us"].as_i64().unwrap())
                .collect(),
            cursor: s("cursor"),
            events: v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["partition"].as_i64().unwrap() as i32,
                        e["offset"].as_i64().unwrap(),
                        e["index"].as_u64().unwrap() as u32,
                    )
                })
                .collect(),
        },
        Some("gap") => Frame::Gap {
            cursor: s("cursor"),
            reason: s("reason"),
            missed: v["missed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["partition"].as_i64().unwrap() as i32,
                        m["from"].as_i64().unwrap(),
                        m["to"].as_i64().unwrap(),
                    )
                })
                .collect(),
        },
        Some("reconnect") => Frame::Reconnect {
            cursor: s("cursor"),
            reason: s("reason"),
        },
        Some("error") => Frame::Error { code: s("code") },
        Some("pong") => Frame::Pong,
        Some("authenticated") => Frame::Authenticated {
            exp: v["exp"].as_u64().expect("exp"),
        },
        other => panic!("unknown frame type {other:?}: {t}"),
    }
}

fn parse_proto(b: &[u8]) -> Frame {
    match ServerFrame::decode(b)
        .expect("protobuf ServerFrame")
        .frame
        .expect("a frame")
    {
        PFrame::Welcome(w) => Frame::Welcome {
            server: w.server,
            cursor: w.cursor,
            resumed: w.resumed,
        },
        PFrame::Events(e) => Frame::Events {
            cursor: e.cursor,
            stamps: e
                .events
                .iter()
                .map(|se| {
                    let ev = dashstream::proto::Event::decode(se.event.clone())
                        .expect("original Event bytes");
                    ev.header.unwrap_or_default().timestamp_us
                })
                .collect(),
            events: e
                .events
                .into_iter()
                .map(|se| (se.partition, se.offset, se.index))
                .collect(),
        },
        PFrame::Gap(g) => Frame::Gap {
            cursor: g.cursor,
            reason: g.reason,
            missed: g
                .missed
                .into_iter()
                .map(|m| (m.partition, m.from, m.to))
                .collect(),
        },
        PFrame::Reconnect(r) => Frame::Reconnect {
            cursor: r.cursor,
            reason: r.reason,
        },
        PFrame::Error(e) => Frame::Error { code: e.code },
        PFrame::Pong(_) => Frame::Pong,
        PFrame::Authenticated(a) => Frame::Authenticated { exp: a.exp },
    }
}

/// What one client received, checked as it arrives: per-partition order, no duplicates.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub events: BTreeSet<(i32, i64, u32)>,
    pub last: BTreeMap<i32, (i64, u32)>,
    pub cursor: Option<String>,
    pub gaps: Vec<Frame>,
    pub duplicates: usize,
    pub out_of_order: usize,
    /// Producer-to-client latency of every event received, in microseconds.
    pub latencies_us: Vec<i64>,
}

pub use dashstream::now_us;

/// The p-th percentile (0..=100) of `v`.
pub fn percentile(v: &[i64], p: f64) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    v[(((v.len() - 1) as f64) * p / 100.0).round() as usize]
}

/// A gateway as a child process (for memory measurements), with `GATEWAY_*` overrides.
pub struct GatewayProc {
    pub addr: String,
    pub child: std::process::Child,
}

impl GatewayProc {
    pub async fn spawn(sys: &System, env: &[(&str, &str)]) -> Self {
        let addr = format!("127.0.0.1:{}", testkit::free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("KAFKA_TOPIC", &sys.topic)
            .env("REDIS_URL", &sys.redis_url)
            .env("REDIS_KEY_PREFIX", &sys.prefix)
            .env("GATEWAY_LISTEN", &addr)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn gateway");
        let a = addr.clone();
        wait_for("gateway process ready", Duration::from_secs(30), || {
            let a = a.clone();
            async move { (testkit::http_get(&a, "/readyz").await.ok()?.0 == 200).then_some(()) }
        })
        .await;
        Self { addr, child }
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Received {
    pub fn take(&mut self, f: &Frame) {
        match f {
            Frame::Welcome { cursor, .. } | Frame::Reconnect { cursor, .. } => {
                self.cursor = Some(cursor.clone())
            }
            Frame::Events {
                cursor,
                events,
                stamps,
            } => {
                let now = now_us();
                self.latencies_us.extend(stamps.iter().map(|t| now - t));
                for e in events {
                    if let Some(prev) = self.last.get(&e.0) {
                        if (e.1, e.2) <= *prev {
                            self.out_of_order += 1;
                        }
                    }
                    self.last.insert(e.0, (e.1, e.2));
                    if !self.events.insert(*e) {
                        self.duplicates += 1;
                    }
                }
                self.cursor = Some(cursor.clone());
            }
            Frame::Gap { cursor, .. } => {
                self.gaps.push(f.clone());
                self.cursor = Some(cursor.clone());
            }
            _ => {}
        }
    }
}

/// Reads frames into `rx` until it holds every expected event (or the deadline passes).
pub async fn read_until(
    client: &mut Client,
    rx: &mut Received,
    want: &BTreeSet<(i32, i64, u32)>,
    timeout: Duration,
) {
    let end = tokio::time::Instant::now() + timeout;
    while !want.is_subset(&rx.events) {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "timed out: {} of {} events",
            want.intersection(&rx.events).count(),
            want.len()
        );
        match client.next(left).await {
            Some(f) => rx.take(&f),
            None => panic!(
                "connection ended: {} of {} events",
                want.intersection(&rx.events).count(),
                want.len()
            ),
        }
    }
}
