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

mod frames;
mod hub;
mod tail;

use anyhow::{Context, Result};
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser, Clone)]
pub struct Args {
    /// Address for `/ws` and `/metrics`.
    #[arg(long, env = "BROADCAST_REF_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    #[arg(long = "kafka-topic", env = "KAFKA_TOPIC", default_value = dashstream::DEFAULT_TOPIC)]
    pub topic: String,
    #[command(flatten)]
    pub redis: dashstream::redis_config::RedisArgs,
    /// `XREAD COUNT` (per stream).
    #[arg(long, default_value_t = 1000)]
    pub read_count: usize,
    /// `XREAD BLOCK`, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub block_ms: u64,
    /// A client with more than this many bytes queued is dropped.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_pending_bytes: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let hub = Arc::new(hub::Hub::new(args.max_pending_bytes)?);
    eprintln!("broadcast-ref: listening on {}", args.listen);
    let h = hub.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    h.metrics.accepted.inc();
                    let h = h.clone();
                    tokio::spawn(async move {
                        let _ = hub::serve(h, s).await;
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
            if let Err(e) = tail::run(h.clone(), args.clone()).await {
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
    for l in hub.metrics.text().lines().filter(|l| !l.starts_with('#')) {
        eprintln!("broadcast-ref: {l}");
    }
    Ok(())
}
