//! `broadcast-ref`: the trivial broadcast server the gateway benchmark compares the gateway with
//! (bench/gateway.sh). It reads the same Redis streams as the gateway (`<prefix>:<topic>:<p>`,
//! entries `ev` = protobuf `dashstream.v1.Event`, partitions from `<prefix>:<topic>:partitions`)
//! with one `XREAD BLOCK` over all partitions, and for each read builds ONE frame per format in
//! the gateway's wire shape (`{"type":"events","cursor":"x","events":[...]}` with each event as
//! `dashstream::codec::event_json`, or a protobuf `ServerFrame`), with its WebSocket header
//! pre-built, then writes the same bytes to every client: one `write` per client per read, no
//! per-client encoding. A client whose socket does not take the frame at once gets it queued and
//! flushed by its own task with `writev`; one with more than `--max-pending-bytes` queued is
//! dropped. No resume, no filters, no pings, no cursor (the cursor is the constant `"x"`).
//!
//! HTTP on the one port: `GET /ws?...` (any query; `format=protobuf` selects binary frames) and
//! `GET /metrics` (Prometheus text: `broadcast_ref_bytes_sent_total` counts payload bytes like
//! the gateway's `dashstream_gateway_bytes_sent_total`, `broadcast_ref_events_sent_total` one per
//! event per client, `broadcast_ref_connected_clients`, ...). Totals are also printed on exit.

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use dashstream::keys::StreamKeys;
use dashstream::proto::{server_frame::Frame, Event, Events, ServerFrame, StreamEvent, Welcome};
use prost::Message;
use redis::Value;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Parser, Clone)]
struct Args {
    /// Address for `/ws` and `/metrics`.
    #[arg(long, env = "BROADCAST_REF_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[arg(long = "kafka-topic", env = "KAFKA_TOPIC", default_value = dashstream::DEFAULT_TOPIC)]
    topic: String,
    #[command(flatten)]
    redis: dashstream::redis_config::RedisArgs,
    /// `XREAD COUNT` (per stream).
    #[arg(long, default_value_t = 1000)]
    read_count: usize,
    /// `XREAD BLOCK`, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    block_ms: u64,
    /// A client with more than this many bytes queued is dropped.
    #[arg(long, default_value_t = 8 << 20)]
    max_pending_bytes: usize,
}

/// A frame ready for the socket: the WebSocket header and the payload in one buffer.
struct Wire {
    bytes: Bytes,
    payload_len: u64,
}

/// Puts an unmasked, final WebSocket frame header (`opcode` 1 text, 2 binary) in front of the
/// payload that `buf` holds after `HEADROOM` reserved bytes.
const HEADROOM: usize = 10;
fn finish_frame(mut buf: BytesMut, opcode: u8) -> Wire {
    let len = buf.len() - HEADROOM;
    let mut h = [0u8; HEADROOM];
    h[0] = 0x80 | opcode;
    let hl = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    buf[HEADROOM - hl..HEADROOM].copy_from_slice(&h[..hl]);
    let mut bytes = buf.freeze();
    bytes.advance(HEADROOM - hl);
    Wire {
        bytes,
        payload_len: len as u64,
    }
}

fn payload_buf(capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADROOM + capacity);
    b.put_bytes(0, HEADROOM);
    b
}

/// One stream entry of a read.
struct Entry {
    partition: i32,
    offset: i64,
    n: u32,
    ev: Bytes,
}

fn json_frame(entries: &[(Entry, Event)]) -> Wire {
    let mut b = payload_buf(64 + entries.len() * 512);
    b.put_slice(br#"{"type":"events","cursor":"x","events":["#);
    for (i, (en, e)) in entries.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(&dashstream::codec::event_json(
            en.partition,
            en.offset,
            en.n,
            e,
        ));
    }
    b.put_slice(b"]}");
    finish_frame(b, 1)
}

fn proto_frame(entries: &[(Entry, Event)]) -> Wire {
    let f = ServerFrame {
        frame: Some(Frame::Events(Events {
            cursor: "x".into(),
            events: entries
                .iter()
                .map(|(en, _)| StreamEvent {
                    partition: en.partition,
                    offset: en.offset,
                    index: en.n,
                    event: en.ev.clone(),
                })
                .collect(),
        })),
    };
    let mut b = payload_buf(f.encoded_len());
    f.encode(&mut b).expect("BytesMut grows");
    finish_frame(b, 2)
}

#[derive(Default)]
struct Pending {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

struct Client {
    stream: TcpStream,
    proto: bool,
    pending: Mutex<Pending>,
    wake: Notify,
    dead: AtomicBool,
}

impl Client {
    fn kill(&self) {
        self.dead.store(true, Relaxed);
        self.wake.notify_one();
    }

    /// Hands `frame` to the socket (one `write`) or, when the socket is full or something is
    /// already queued, to the queue its task flushes. False: the client is gone or dropped.
    fn offer(&self, frame: &Bytes, max_pending: usize) -> bool {
        let mut p = self.pending.lock().expect("pending lock");
        if p.frames.is_empty() {
            let rest = match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return true,
                Ok(n) => frame.slice(n..),
                Err(e) if e.kind() == ErrorKind::WouldBlock => frame.clone(),
                Err(_) => {
                    drop(p);
                    self.kill();
                    return false;
                }
            };
            p.bytes += rest.len();
            p.frames.push_back(rest);
            drop(p);
            self.wake.notify_one();
            return true;
        }
        if p.bytes + frame.len() > max_pending {
            drop(p);
            self.kill();
            return false;
        }
        p.bytes += frame.len();
        p.frames.push_back(frame.clone());
        true
    }

    /// Writes the queue out (`writev`), waiting for the socket as needed.
    async fn flush(&self) -> std::io::Result<()> {
        loop {
            self.stream.writable().await?;
            let mut p = self.pending.lock().expect("pending lock");
            if self.dead.load(Relaxed) {
                return Err(ErrorKind::BrokenPipe.into());
            }
            if p.frames.is_empty() {
                return Ok(());
            }
            let iov: Vec<IoSlice> = p.frames.iter().take(64).map(|b| IoSlice::new(b)).collect();
            match self.stream.try_write_vectored(&iov) {
                Ok(mut n) => {
                    p.bytes -= n;
                    while n > 0 {
                        let f = p.frames.front_mut().expect("written bytes were queued");
                        if n >= f.len() {
                            n -= f.len();
                            p.frames.pop_front();
                        } else {
                            f.advance(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[derive(Default)]
struct Hub {
    clients: Mutex<Vec<Arc<Client>>>,
    max_pending: usize,
    connected: AtomicU64,
    accepted: AtomicU64,
    dropped: AtomicU64,
    reads: AtomicU64,
    events_read: AtomicU64,
    frames_sent: AtomicU64,
    events_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

impl Hub {
    /// (some JSON client, some protobuf client)
    fn formats(&self) -> (bool, bool) {
        let c = self.clients.lock().expect("clients lock");
        (c.iter().any(|c| !c.proto), c.iter().any(|c| c.proto))
    }

    fn broadcast(&self, json: Option<&Wire>, proto: Option<&Wire>, events: u64) {
        let (mut frames, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        {
            let mut clients = self.clients.lock().expect("clients lock");
            clients.retain(|c| !c.dead.load(Relaxed));
            for c in clients.iter() {
                let Some(w) = (if c.proto { proto } else { json }) else {
                    continue;
                };
                if c.offer(&w.bytes, self.max_pending) {
                    frames += 1;
                    bytes += w.payload_len;
                } else {
                    dropped += 1;
                }
            }
        }
        self.frames_sent.fetch_add(frames, Relaxed);
        self.events_sent.fetch_add(frames * events, Relaxed);
        self.bytes_sent.fetch_add(bytes, Relaxed);
        self.dropped.fetch_add(dropped, Relaxed);
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        for (name, kind, v) in [
            ("connected_clients", "gauge", self.connected.load(Relaxed)),
            ("accepted_total", "counter", self.accepted.load(Relaxed)),
            (
                "dropped_clients_total",
                "counter",
                self.dropped.load(Relaxed),
            ),
            ("reads_total", "counter", self.reads.load(Relaxed)),
            (
                "events_read_total",
                "counter",
                self.events_read.load(Relaxed),
            ),
            (
                "frames_sent_total",
                "counter",
                self.frames_sent.load(Relaxed),
            ),
            (
                "events_sent_total",
                "counter",
                self.events_sent.load(Relaxed),
            ),
            ("bytes_sent_total", "counter", self.bytes_sent.load(Relaxed)),
        ] {
            s.push_str(&format!(
                "# TYPE broadcast_ref_{name} {kind}\nbroadcast_ref_{name} {v}\n"
            ));
        }
        s
    }
}

fn welcome(proto: bool) -> Wire {
    if proto {
        let f = ServerFrame {
            frame: Some(Frame::Welcome(Welcome {
                server: "broadcast-ref".into(),
                cursor: "x".into(),
                resumed: false,
            })),
        };
        let mut b = payload_buf(f.encoded_len());
        f.encode(&mut b).expect("BytesMut grows");
        finish_frame(b, 2)
    } else {
        let mut b = payload_buf(80);
        b.put_slice(br#"{"cursor":"x","resumed":false,"server":"broadcast-ref","type":"welcome"}"#);
        finish_frame(b, 1)
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve(hub: Arc<Hub>, mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if head.len() > 16 * 1024 {
            bail!("request head too large");
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/ws" => {}
        "/metrics" => {
            let body = hub.metrics();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        _ => {
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
    }
    let key = header(&head, "sec-websocket-key").context("no Sec-WebSocket-Key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let proto = query.split('&').any(|kv| kv == "format=protobuf");
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(&welcome(proto).bytes);
    s.write_all(&out).await?;
    drop((out, head));

    let c = Arc::new(Client {
        stream: s,
        proto,
        pending: Mutex::default(),
        wake: Notify::new(),
        dead: AtomicBool::new(false),
    });
    hub.clients.lock().expect("clients lock").push(c.clone());
    hub.connected.fetch_add(1, Relaxed);
    // Client frames (pongs, close) are read and discarded; EOF or an error ends the client.
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = c.stream.readable() => {
                if r.is_err() { break }
                match c.stream.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = c.wake.notified() => {
                if c.dead.load(Relaxed) || c.flush().await.is_err() { break }
            }
        }
    }
    c.kill();
    hub.connected.fetch_sub(1, Relaxed);
    Ok(())
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn parse_id(id: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(id).ok()?;
    let (o, n) = s.split_once('-')?;
    Some((o.parse().ok()?, n.parse().ok()?))
}

/// The entries of one stream in an `XREAD` reply: [[id, [field, value, ...]], ...].
fn stream_entries(partition: i32, v: Value, out: &mut Vec<Entry>, last: &mut String) {
    let Value::Array(entries) = v else { return };
    for e in entries {
        let Value::Array(mut pair) = e else { continue };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop().expect("two items");
        let Some((offset, n)) = bulk(&pair[0]).and_then(parse_id) else {
            continue;
        };
        *last = format!("{offset}-{n}");
        let Value::Array(fields) = fields else {
            continue;
        };
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if bulk(&k) == Some(b"ev") {
                if let Value::BulkString(ev) = v {
                    out.push(Entry {
                        partition,
                        offset,
                        n,
                        ev: Bytes::from(ev),
                    });
                }
                break;
            }
        }
    }
}

fn partition_of(key: &[u8]) -> Option<i32> {
    let i = key.iter().rposition(|b| *b == b':')?;
    std::str::from_utf8(&key[i + 1..]).ok()?.parse().ok()
}

struct Part {
    partition: i32,
    key: String,
    last: String,
}

async fn tail(hub: Arc<Hub>, args: Args) -> Result<()> {
    let settings = args
        .redis
        .validate()
        .map_err(|e| anyhow::anyhow!("redis settings: {e:?}"))?;
    let keys = StreamKeys::new(&settings.key_prefix, &args.topic);
    let block = Duration::from_millis(args.block_ms);
    let mut conn = settings.connect_for_blocking(block).await?;
    let mut parts: Vec<Part> = Vec::new();
    let mut discovered: Option<Instant> = None;
    loop {
        if discovered.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            let ps: Vec<i32> = redis::cmd("SMEMBERS")
                .arg(keys.partitions())
                .query_async(&mut conn)
                .await?;
            for p in ps {
                if parts.iter().any(|x| x.partition == p) {
                    continue;
                }
                let key = keys.stream(p);
                // Streams known at start are followed from their end; later ones from 0.
                let mut last = "0-0".to_string();
                if discovered.is_none() {
                    let v: Value = redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut conn)
                        .await?;
                    if let Value::Array(es) = v {
                        if let Some(Value::Array(pair)) = es.first() {
                            if let Some(id) = pair.first().and_then(bulk) {
                                last = String::from_utf8_lossy(id).into_owned();
                            }
                        }
                    }
                }
                parts.push(Part {
                    partition: p,
                    key,
                    last,
                });
            }
            discovered = Some(Instant::now());
        }
        if parts.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(args.read_count)
            .arg("BLOCK")
            .arg(args.block_ms)
            .arg("STREAMS");
        for p in &parts {
            cmd.arg(&p.key);
        }
        for p in &parts {
            cmd.arg(&p.last);
        }
        let reply: Value = cmd.query_async(&mut conn).await?;
        let streams: Vec<(Value, Value)> = match reply {
            Value::Array(a) => a
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut kv) if kv.len() == 2 => {
                        let v = kv.pop().expect("two items");
                        Some((kv.pop().expect("two items"), v))
                    }
                    _ => None,
                })
                .collect(),
            Value::Map(m) => m,
            _ => continue,
        };
        let mut entries = Vec::new();
        for (k, v) in streams {
            let Some(p) = bulk(&k).and_then(partition_of) else {
                continue;
            };
            let Some(part) = parts.iter_mut().find(|x| x.partition == p) else {
                continue;
            };
            stream_entries(p, v, &mut entries, &mut part.last);
        }
        hub.reads.fetch_add(1, Relaxed);
        hub.events_read.fetch_add(entries.len() as u64, Relaxed);
        let (want_json, want_proto) = hub.formats();
        if entries.is_empty() || !(want_json || want_proto) {
            continue;
        }
        let decoded: Vec<(Entry, Event)> = entries
            .into_iter()
            .filter_map(|en| Event::decode(en.ev.clone()).ok().map(|e| (en, e)))
            .collect();
        let json = want_json.then(|| json_frame(&decoded));
        let proto = want_proto.then(|| proto_frame(&decoded));
        hub.broadcast(json.as_ref(), proto.as_ref(), decoded.len() as u64);
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let hub = Arc::new(Hub {
        max_pending: args.max_pending_bytes,
        ..Hub::default()
    });
    eprintln!("broadcast-ref: listening on {}", args.listen);
    let h = hub.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    h.accepted.fetch_add(1, Relaxed);
                    let h = h.clone();
                    tokio::spawn(async move {
                        let _ = serve(h, s).await;
                    });
                }
                Err(e) => {
                    eprintln!("broadcast-ref: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let h = hub.clone();
    let tail = tokio::spawn(async move {
        loop {
            if let Err(e) = tail(h.clone(), args.clone()).await {
                eprintln!("broadcast-ref: redis: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tail.abort();
    eprint!(
        "{}",
        hub.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("broadcast-ref: {l}\n"))
            .collect::<String>()
    );
    Ok(())
}
