//! `ws-load`: WebSocket clients for the gateway benchmarks (bench/gateway.sh). Prints one JSON
//! line of figures. Its WebSocket client is minimal (src/ws.rs: frames parsed in place in one
//! read buffer) and frames are scanned, not parsed into a DOM (src/scan.rs): per event only
//! partition, offset, index and the producer's `timestamp_us` are read. Works against the
//! gateway and against bench/broadcast-ref alike, in `format=json` or `format=protobuf`.
//! - `live`: N clients from `latest`; after a warm-up, a measured window: delivered events/s,
//!   producer-to-client latency percentiles, events per frame, per-partition order, and, with
//!   `--server-pid` / `--metrics-url`, the server's CPU per delivered event (utime+stime from
//!   /proc/<pid>/stat over the window) and bytes per event (its `*_bytes_sent_total` over its
//!   `*_events_sent_total`), sampled at the window's edges; the client's own CPU likewise.
//! - `idle`: N connections held open after their `welcome`, for a duration.
//! - `cursor`: prints the `welcome` cursor of a `from=latest` connection (the position now).
//! - `catchup`: one client from a cursor (or `earliest`) until it holds `expect` events.

mod live;
mod scan;
mod ws;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use scan::Ev;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ws::Conn;

#[derive(Parser)]
struct Cli {
    /// Server WebSocket URL without query, e.g. ws://127.0.0.1:8080/ws
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Protobuf,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
        }
    }
}

#[derive(Subcommand)]
enum Mode {
    Live {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds after every client connected before the window opens.
        #[arg(long, default_value_t = 3)]
        warmup_secs: u64,
        /// Length of the measured window.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Sample this process's CPU (the server) at the window's edges.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The server's Prometheus endpoint, sampled at the window's edges.
        #[arg(long)]
        metrics_url: Option<String>,
        /// Reader threads (each with its own epoll over a share of the connections).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    Idle {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
    },
    Cursor,
    Catchup {
        /// A cursor, or `earliest`.
        #[arg(long, default_value = "earliest")]
        from: String,
        #[arg(long)]
        expect: u64,
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Connects and reads the `welcome` frame; returns the connection and the welcome's cursor.
async fn connect(url: &str, read_size: usize) -> Result<(Conn, String)> {
    let mut c = Conn::connect(url, read_size).await?;
    let cursor = match c.next().await? {
        Some((ws::TEXT, t)) => match scan::json_type_and_cursor(t) {
            Some((b"welcome", c)) => c.map(|c| String::from_utf8_lossy(c).into_owned()),
            _ => bail!(
                "expected a welcome frame, got {}",
                String::from_utf8_lossy(t)
            ),
        },
        Some((_, b)) => match scan::proto_kind_and_cursor(b) {
            Some((1, c)) => c.map(|c| String::from_utf8_lossy(c).into_owned()),
            _ => bail!("expected a protobuf welcome frame"),
        },
        None => bail!("{url}: closed before the welcome frame"),
    };
    Ok((c, cursor.unwrap_or_default()))
}

/// Opens `n` connections, `concurrency` at a time. Returns the streams and the failures.
async fn connect_many(
    url: &str,
    n: usize,
    concurrency: usize,
    read_size: usize,
) -> (Vec<Conn>, Vec<String>) {
    let results: Vec<Result<(Conn, String)>> = futures::stream::iter(0..n)
        .map(|_| connect(url, read_size))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ok = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok((ws, _)) => ok.push(ws),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    (ok, failed)
}

/// What one client saw.
pub struct Stats {
    events: u64,
    frames: u64,
    bytes: u64,
    out_of_order: u64,
    gaps: u64,
    other_frames: u64,
    hist: Histogram<u64>,
    /// Last (offset, index) per partition.
    pos: Vec<(i64, u32)>,
}

impl Stats {
    fn new() -> Self {
        Self {
            events: 0,
            frames: 0,
            bytes: 0,
            out_of_order: 0,
            gaps: 0,
            other_frames: 0,
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("histogram bounds"),
            pos: Vec::new(),
        }
    }

    /// Takes one server frame; counts and times its events when `count` is true.
    fn take(&mut self, opcode: u8, b: &[u8], now: i64, count: bool) {
        let (hist, pos, ooo) = (&mut self.hist, &mut self.pos, &mut self.out_of_order);
        let mut on = |e: Ev| {
            let p = e.partition.max(0) as usize;
            if p >= pos.len() {
                pos.resize(p + 1, (-1, 0));
            }
            if (e.offset, e.index) <= pos[p] {
                *ooo += 1;
            }
            pos[p] = (e.offset, e.index);
            if count {
                let _ = hist.record((now - e.timestamp_us).max(1) as u64);
            }
        };
        let n = if opcode == ws::TEXT {
            let n = scan::json_events(b, &mut on);
            if n.is_none() && matches!(scan::json_type_and_cursor(b), Some((b"gap", _))) {
                self.gaps += 1;
            }
            n
        } else {
            let n = scan::proto_events(b, &mut on);
            if n.is_none() && matches!(scan::proto_kind_and_cursor(b), Some((3, _))) {
                self.gaps += 1;
            }
            n
        };
        let len = b.len();
        match n {
            Some(n) if count => {
                self.events += n as u64;
                self.frames += 1;
                self.bytes += len as u64;
            }
            Some(_) => {}
            None => self.other_frames += 1,
        }
    }

    fn add(&mut self, o: Stats) -> Result<()> {
        self.events += o.events;
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.out_of_order += o.out_of_order;
        self.gaps += o.gaps;
        self.other_frames += o.other_frames;
        self.hist.add(o.hist)?;
        Ok(())
    }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: &str, tck: f64) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat(5); `rest` starts at field 3
    let t: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(t / tck)
}

/// Sums of the server's `*_bytes_sent_total` and `*_events_sent_total`.
async fn server_counters(url: &str) -> Option<(f64, f64)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body))
        .await
        .ok()?
        .ok()?;
    let body = String::from_utf8_lossy(&body);
    let (mut bytes, mut events) = (0.0, 0.0);
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let base = name.split('{').next().unwrap_or(name);
        let v: f64 = v.parse().unwrap_or(0.0);
        if base.ends_with("_bytes_sent_total") {
            bytes += v;
        } else if base.ends_with("_events_sent_total") {
            events += v;
        }
    }
    Some((bytes, events))
}

#[derive(Clone, Copy, Default)]
struct Sample {
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    counters: Option<(f64, f64)>,
}

async fn sample(pid: Option<&str>, metrics: Option<&str>, tck: f64) -> Sample {
    Sample {
        server_cpu: pid.and_then(|p| cpu_seconds(p, tck)),
        client_cpu: cpu_seconds("self", tck),
        counters: match metrics {
            Some(u) => server_counters(u).await,
            None => None,
        },
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1e3, 2)
}

fn url_with(base: &str, from: &str, format: Format) -> String {
    format!("{base}?from={from}&format={}", format.name())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let tck = clk_tck();
    match cli.mode {
        Mode::Live {
            clients,
            warmup_secs,
            duration_secs,
            server_pid,
            metrics_url,
            threads,
        } => {
            let url = url_with(&cli.url, "latest", cli.format);
            let (conns, failed) = connect_many(&url, clients, cli.connect_concurrency, 4096).await;
            if conns.is_empty() {
                bail!("no client could connect: {:?}", failed.first());
            }
            let connected = conns.len();
            eprintln!(
                "ws-load: {connected} clients connected ({} failed)",
                failed.len()
            );
            let t0 = Instant::now();
            let wall0 = now_us();
            let win_start_us = wall0 + warmup_secs as i64 * 1_000_000;
            let win_end_us = win_start_us + duration_secs as i64 * 1_000_000;
            let start_at = t0 + Duration::from_secs(warmup_secs);
            let end_at = start_at + Duration::from_secs(duration_secs);
            let mut shares: Vec<Vec<(std::net::TcpStream, Vec<u8>)>> =
                (0..threads.max(1)).map(|_| Vec::new()).collect();
            for (i, c) in conns.into_iter().enumerate() {
                shares[i % threads.max(1)].push(c.into_parts()?);
            }
            let window = live::Window {
                start_us: win_start_us,
                end_us: win_end_us,
                stop_at: end_at,
            };
            let readers: Vec<_> = shares
                .into_iter()
                .map(|share| std::thread::spawn(move || live::run(share, window)))
                .collect();
            let pid = server_pid.map(|p| p.to_string());
            tokio::time::sleep_until(start_at.into()).await;
            let a = sample(pid.as_deref(), metrics_url.as_deref(), tck).await;
            tokio::time::sleep_until(end_at.into()).await;
            let b = sample(pid.as_deref(), metrics_url.as_deref(), tck).await;
            let secs = duration_secs as f64;
            let mut total = Stats::new();
            let mut closed_early = 0;
            for r in readers {
                let share = r
                    .join()
                    .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
                for (st, early) in share {
                    total.add(st)?;
                    closed_early += early as u64;
                }
            }
            let ev = total.events as f64;
            let per_event = |cpu: Option<f64>, cpu0: Option<f64>| match (cpu, cpu0) {
                (Some(x), Some(y)) if ev > 0.0 => Some(round((x - y) * 1e6 / ev, 3)),
                _ => None,
            };
            let diff = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => Some(round(x - y, 3)),
                _ => None,
            };
            let (bytes_sent, events_sent) = match (b.counters, a.counters) {
                (Some((b1, e1)), Some((b0, e0))) => (Some(b1 - b0), Some(e1 - e0)),
                _ => (None, None),
            };
            let h = &total.hist;
            println!(
                "{}",
                serde_json::json!({
                    "mode": "live", "format": cli.format.name(), "clients": clients,
                    "connected": connected, "connect_failures": failed.len(),
                    "warmup_seconds": warmup_secs, "window_seconds": secs,
                    "events_delivered": total.events,
                    "events_per_second": (ev / secs).round(),
                    "per_client_events_per_second": round(ev / secs / connected as f64, 1),
                    "frames": total.frames,
                    "events_per_frame": if total.frames > 0 { round(ev / total.frames as f64, 2) } else { 0.0 },
                    "bytes_received_per_event": if ev > 0.0 { round(total.bytes as f64 / ev, 1) } else { 0.0 },
                    "latency_ms": {"p50": ms(h.value_at_quantile(0.5)), "p95": ms(h.value_at_quantile(0.95)),
                                   "p99": ms(h.value_at_quantile(0.99)), "max": ms(h.max())},
                    "out_of_order": total.out_of_order, "gap_frames": total.gaps,
                    "clients_closed_early": closed_early,
                    "server": {
                        "cpu_seconds": diff(b.server_cpu, a.server_cpu),
                        "cores": diff(b.server_cpu, a.server_cpu).map(|c| round(c / secs, 3)),
                        "cpu_us_per_event": per_event(b.server_cpu, a.server_cpu),
                        "bytes_sent": bytes_sent, "events_sent": events_sent,
                        "bytes_per_event": match (bytes_sent, events_sent) {
                            (Some(b), Some(e)) if e > 0.0 => Some(round(b / e, 1)), _ => None },
                    },
                    "client": {
                        "cpu_seconds": diff(b.client_cpu, a.client_cpu),
                        "cores": diff(b.client_cpu, a.client_cpu).map(|c| round(c / secs, 3)),
                        "cpu_us_per_event": per_event(b.client_cpu, a.client_cpu),
                    },
                })
            );
        }
        Mode::Idle { clients, hold_secs } => {
            let url = url_with(&cli.url, "latest", cli.format);
            let (conns, failed) = connect_many(&url, clients, cli.connect_concurrency, 4096).await;
            println!(
                "{}",
                serde_json::json!({"mode": "idle", "connected": conns.len(), "failed": failed.len(),
                                   "first_failure": failed.first()})
            );
            // Keep reading (answering pings) while holding.
            let until = Instant::now() + Duration::from_secs(hold_secs);
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut c| {
                    tokio::spawn(async move {
                        while let Ok(Ok(Some(_))) =
                            tokio::time::timeout_at(until.into(), c.next()).await
                        {
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
        }
        Mode::Cursor => {
            let (c, cursor) = connect(&url_with(&cli.url, "latest", Format::Json), 4096).await?;
            c.close().await;
            println!("{cursor}");
        }
        Mode::Catchup {
            from,
            expect,
            server_pid,
        } => {
            let pid = server_pid.map(|p| p.to_string());
            let a = sample(pid.as_deref(), None, tck).await;
            let start = Instant::now();
            let (mut c, _) = connect(&url_with(&cli.url, &from, cli.format), 256 << 10).await?;
            let mut st = Stats::new();
            while st.events < expect {
                match tokio::time::timeout(Duration::from_secs(30), c.next()).await {
                    Ok(Ok(Some((op, m)))) => st.take(op, m, now_us(), true),
                    Ok(Ok(None)) => bail!("closed after {} of {expect} events", st.events),
                    Ok(Err(e)) => bail!("failed after {} of {expect} events: {e:#}", st.events),
                    Err(_) => bail!("nothing for 30 s after {} of {expect} events", st.events),
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let b = sample(pid.as_deref(), None, tck).await;
            c.close().await;
            let ev = st.events as f64;
            let per_event = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => Some(round((x - y) * 1e6 / ev, 3)),
                _ => None,
            };
            println!(
                "{}",
                serde_json::json!({"mode": "catchup", "format": cli.format.name(), "from": if from == "earliest" { "earliest" } else { "cursor" },
                                   "events": st.events, "seconds": round(secs, 3), "events_per_second": (ev / secs).round(),
                                   "frames": st.frames, "events_per_frame": round(ev / st.frames.max(1) as f64, 1),
                                   "out_of_order": st.out_of_order, "gap_frames": st.gaps,
                                   "server_cpu_us_per_event": per_event(b.server_cpu, a.server_cpu),
                                   "client_cpu_us_per_event": per_event(b.client_cpu, a.client_cpu)})
            );
        }
    }
    Ok(())
}
