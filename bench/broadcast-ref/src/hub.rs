//! The connected clients and what is sent to them: the HTTP upgrade (and `/metrics`) on one
//! port, one task per connection that reads and discards client frames and flushes a queue
//! only when the socket did not take a frame at once, and the broadcast of one frame to all.

use crate::frames::{welcome, Wire};
use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes};
use prometheus::{IntCounter, IntGauge, Registry, TextEncoder};
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

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

/// Counters, registered under `broadcast_ref_`.
pub struct Metrics {
    registry: Registry,
    pub connected: IntGauge,
    pub accepted: IntCounter,
    pub dropped: IntCounter,
    pub reads: IntCounter,
    pub events_read: IntCounter,
    pub frames_sent: IntCounter,
    pub events_sent: IntCounter,
    pub bytes_sent: IntCounter,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("broadcast_ref".into()), None)?;
        let c = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let connected = IntGauge::new("connected_clients", "Open WebSocket connections")?;
        registry.register(Box::new(connected.clone()))?;
        Ok(Self {
            connected,
            accepted: c("accepted_total", "TCP connections accepted")?,
            dropped: c(
                "dropped_clients_total",
                "Clients dropped: gone, or too far behind",
            )?,
            reads: c("reads_total", "XREAD replies")?,
            events_read: c("events_read_total", "Stream entries read")?,
            frames_sent: c("frames_sent_total", "Frames handed to clients")?,
            events_sent: c(
                "events_sent_total",
                "Events handed to clients (one per client)",
            )?,
            bytes_sent: c(
                "bytes_sent_total",
                "Payload bytes of frames handed to clients",
            )?,
            registry,
        })
    }

    pub fn text(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

pub struct Hub {
    clients: Mutex<Vec<Arc<Client>>>,
    max_pending: usize,
    pub metrics: Metrics,
}

impl Hub {
    pub fn new(max_pending: usize) -> prometheus::Result<Self> {
        Ok(Self {
            clients: Mutex::default(),
            max_pending,
            metrics: Metrics::new()?,
        })
    }

    /// (some JSON client, some protobuf client)
    pub fn formats(&self) -> (bool, bool) {
        let c = self.clients.lock().expect("clients lock");
        (c.iter().any(|c| !c.proto), c.iter().any(|c| c.proto))
    }

    pub fn broadcast(&self, json: Option<&Wire>, proto: Option<&Wire>, events: u64) {
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
        let m = &self.metrics;
        m.frames_sent.inc_by(frames);
        m.events_sent.inc_by(frames * events);
        m.bytes_sent.inc_by(bytes);
        m.dropped.inc_by(dropped);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub async fn serve(hub: Arc<Hub>, mut s: TcpStream) -> Result<()> {
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
            let body = hub.metrics.text();
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
    hub.metrics.connected.inc();
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
    hub.metrics.connected.dec();
    Ok(())
}
