//! `ws-load`: WebSocket clients for the gateway benchmarks. Prints one JSON line of figures.
//! - `live`: N clients from `latest` for a duration; delivered events/s and producer-to-client
//!   latency percentiles (from each event's `timestamp_us`).
//! - `idle`: N connections held open after their `welcome`, until stdin closes or a duration.
//! - `catchup`: one client from `earliest` until it holds `expect` events; events/s.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    /// Gateway WebSocket URL without query, e.g. ws://127.0.0.1:8080/ws
    #[arg(long)]
    url: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Live {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        duration_secs: u64,
    },
    Idle {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
    },
    Catchup {
        #[arg(long)]
        expect: u64,
    },
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str().contains("\"welcome\"") => Ok(ws),
        other => bail!("expected a welcome frame, got {other:?}"),
    }
}

/// Counts the events of an `events` frame and records their latencies.
fn take(text: &str, hist: &mut Histogram<u64>) -> u64 {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return 0;
    };
    if v["type"] != "events" {
        return 0;
    }
    let now = now_us();
    let events = v["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for e in events {
        if let Some(ts) = e["timestamp_us"].as_i64() {
            let _ = hist.record((now - ts).max(0) as u64);
        }
    }
    events.len() as u64
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Live {
            clients,
            duration_secs,
        } => {
            let url = format!("{}?from=latest", cli.url);
            let mut conns = Vec::with_capacity(clients);
            for _ in 0..clients {
                conns.push(connect(&url).await?);
            }
            let start = Instant::now();
            let until = start + Duration::from_secs(duration_secs);
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut ws| {
                    tokio::spawn(async move {
                        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                            .expect("histogram");
                        let mut n = 0u64;
                        while let Ok(Some(Ok(m))) =
                            tokio::time::timeout_at(until.into(), ws.next()).await
                        {
                            if let Message::Text(t) = m {
                                n += take(t.as_str(), &mut hist);
                            }
                        }
                        (n, hist)
                    })
                })
                .collect();
            let mut total = 0;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            for t in tasks {
                let (n, h) = t.await?;
                total += n;
                hist.add(h)?;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "mode": "live", "clients": clients, "seconds": secs, "events_delivered": total,
                    "events_per_second": (total as f64 / secs).round(),
                    "latency_ms": {"p50": hist.value_at_quantile(0.5) as f64 / 1e3, "p95": hist.value_at_quantile(0.95) as f64 / 1e3,
                                   "p99": hist.value_at_quantile(0.99) as f64 / 1e3, "max": hist.max() as f64 / 1e3},
                })
            );
        }
        Mode::Idle { clients, hold_secs } => {
            let url = format!("{}?from=latest", cli.url);
            let mut conns = Vec::with_capacity(clients);
            for i in 0..clients {
                conns.push(
                    connect(&url)
                        .await
                        .with_context(|| format!("connection {i}"))?,
                );
            }
            println!(
                "{}",
                serde_json::json!({"mode": "idle", "connected": conns.len()})
            );
            // Keep reading (answering pings) while holding.
            let until = Instant::now() + Duration::from_secs(hold_secs);
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut ws| {
                    tokio::spawn(async move {
                        while let Ok(Some(Ok(_))) =
                            tokio::time::timeout_at(until.into(), ws.next()).await
                        {
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
        }
        Mode::Catchup { expect } => {
            let start = Instant::now();
            let mut ws = connect(&format!("{}?from=earliest", cli.url)).await?;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut n = 0;
            while n < expect {
                match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => n += take(t.as_str(), &mut hist),
                    Ok(Some(Ok(_))) => {}
                    other => bail!("stream ended after {n} of {expect} events: {other:?}"),
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"mode": "catchup", "events": n, "seconds": secs, "events_per_second": (n as f64 / secs).round()})
            );
        }
    }
    Ok(())
}
