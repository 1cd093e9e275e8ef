//! The gateway tier: serves every WebSocket client the full stream (or its filter) from the
//! per-partition Redis streams, resumable from a cursor on any replica. Stateless: every
//! replica reads every stream with one tail loop ([`reader`]) and fans the decoded events out
//! to its clients ([`session`], [`ws`]); a client that falls behind reads Redis history.

pub mod auth;
pub mod config;
pub mod cursor;
pub mod event;
pub mod frames;
pub mod limits;
pub mod metrics;
pub mod outq;
pub mod preflight;
pub mod reader;
pub mod session;
pub mod streams;
pub mod ws;

pub use config::{GatewayArgs, GatewaySettings};

use dashstream::http::OpsState;
use dashstream::keys::StreamKeys;
use prometheus::Registry;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why [`run`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    /// A setting is wrong, or a backend refused it (login, certificate, ACL, policy): the
    /// message names the setting; the binary exits 64 as for any bad setting.
    #[error("{0}")]
    Config(String),
}

impl GatewayError {
    /// A setting to fix, rather than a failure at run time.
    pub fn is_config(&self) -> bool {
        matches!(self, GatewayError::Config(_))
    }
}

/// Runs the gateway until `shutdown`; then refuses new clients, tells every client to
/// reconnect elsewhere with its cursor, and returns once they are gone or the drain deadline
/// passed. `listener` serves `/ws` and the operations endpoints.
pub async fn run(
    settings: GatewaySettings,
    registry: Registry,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let metrics = Arc::new(metrics::Metrics::new(&registry)?);
    // One counter for both listeners (the public one and GATEWAY_OPS_LISTEN's).
    let refused = dashstream::http::refusals(&registry)?;
    let outbox = outq::Outbox::new(settings.outbound_buffer_bytes);
    let live = reader::Live::new(settings.live_buffer, settings.ws.max_frame_bytes)
        .with_byte_budget(settings.live_buffer_bytes)
        .with_shards(settings.fanout_shards);
    // The operations endpoints answer from the start (/healthz 200, /readyz 503 until Redis
    // is reached); /ws answers 503 until the gateway is built.
    let gateway_cell: Arc<OnceLock<Arc<ws::Gateway>>> = Arc::new(OnceLock::new());
    let before_gather: Arc<dyn Fn() + Send + Sync> = {
        let (outbox, metrics, live) = (outbox.clone(), metrics.clone(), live.clone());
        Arc::new(move || {
            use dashstream::http::Readiness;
            metrics.outbound_bytes.set(outbox.bytes() as i64);
            metrics.ready.set(i64::from(live.check().is_ok()));
        })
    };
    // A trusted proxy's connections carry many clients: not limited per address at accept.
    let exempt: Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync> = {
        let trusted = settings.trusted_proxies.clone();
        Arc::new(move |ip| trusted.iter().any(|n| n.contains(&ip)))
    };
    // GATEWAY_OPS_LISTEN: the operations endpoints on their own listener; the public one then
    // serves only /ws and the viewer.
    let ops_http = match settings.ops_listen {
        None => None,
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                GatewayError::Config(format!("GATEWAY_OPS_LISTEN: cannot bind {addr}: {e}"))
            })?;
            let state = Arc::new(OpsState {
                registry: registry.clone(),
                readiness: live.clone(),
                before_gather: Some(before_gather.clone()),
                fallback: None,
                serve_ops: true,
                exempt: None,
                max_pending_per_ip: dashstream::http::MAX_CONNECTIONS_PER_IP,
                refused: refused.clone(),
            });
            Some((l, state))
        }
    };
    let ops = Arc::new(OpsState {
        serve_ops: ops_http.is_none(),
        exempt: Some(exempt),
        max_pending_per_ip: settings.max_pending_per_ip,
        refused,
        registry,
        readiness: live.clone(),
        before_gather: Some(before_gather),
        fallback: Some({
            let cell = gateway_cell.clone();
            Arc::new(move |req, peer| {
                let gw = cell.get().cloned();
                Box::pin(async move {
                    match gw {
                        Some(gw) => gw.handle(req, peer).await,
                        None => dashstream::http::text(
                            hyper::StatusCode::SERVICE_UNAVAILABLE,
                            "starting: Redis not reached yet\n",
                        ),
                    }
                })
            })
        }),
    });
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(dashstream::http::serve(listener, ops, http_stop.clone()));
    let ops_http = ops_http
        .map(|(l, state)| tokio::spawn(dashstream::http::serve(l, state, http_stop.clone())));
    // Keys first: with GATEWAY_JWT_JWKS_URL the gateway stays unready (and /ws answers 503)
    // until it has fetched a good document, then keeps it fresh in the background.
    let auth = match &settings.auth {
        config::AuthMode::Jwt(j) => match auth::Authenticator::load((**j).clone()) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                http_stop.cancel();
                return Err(GatewayError::Config(e.to_string()));
            }
        },
        config::AuthMode::Off { .. } => None,
    };
    if let Some(a) = auth.as_ref().filter(|a| a.fetches_keys()) {
        let mut wait = Duration::from_millis(500);
        loop {
            match a.fetch_keys().await {
                Ok(n) => {
                    auth::record_fetch(&metrics, Some(n));
                    tracing::info!(keys = n, "JWKS fetched");
                    break;
                }
                Err(e) => {
                    auth::record_fetch(&metrics, None);
                    tracing::warn!(error = %e, "GATEWAY_JWT_JWKS_URL: no keys yet; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    http_stop.cancel();
                    return Ok(());
                }
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        tokio::spawn(
            a.clone()
                .keep_keys_fresh(metrics.clone(), http_stop.clone()),
        );
    }
    let block = Duration::from_millis(1000);
    let connect = |blocking: bool| {
        let redis = settings.redis.clone();
        async move {
            if blocking {
                redis.connect_for_blocking(block).await
            } else {
                redis.connect().await
            }
        }
    };
    // One connection each for XREAD BLOCK, the tail loop and the progress watcher, then the
    // history pool (docs/GATEWAY.md, "Redis connections").
    let pool = streams::pool_size(settings.history_concurrency);
    let mut conns = Vec::new();
    for blocking in [true, false, false]
        .into_iter()
        .chain((0..pool).map(|_| false))
    {
        let c = loop {
            match connect(blocking).await {
                Ok(c) => break c,
                Err(e) => {
                    metrics
                        .redis_errors
                        .with_label_values(&["connection"])
                        .inc();
                    if let Some(hint) = dashstream::redis_config::refusal(&e) {
                        http_stop.cancel();
                        return Err(GatewayError::Config(format!("{hint} ({e})")));
                    }
                    tracing::warn!(error = %e, "redis unreachable at start-up; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            http_stop.cancel();
                            return Ok(());
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        conns.push(c);
    }
    let mut conns = conns.into_iter();
    let mut next = || conns.next().expect("a connection");
    let (blocking, tail, watch) = (next(), next(), next());
    // A cluster wakes the tail by shard channels instead of XREAD BLOCK (streams::wake).
    let waker = if settings.redis.is_cluster() {
        loop {
            match streams::ShardWaker::connect(&settings.redis).await {
                Ok(w) => break Some(w),
                Err(e) => {
                    metrics
                        .redis_errors
                        .with_label_values(&["connection"])
                        .inc();
                    tracing::warn!(error = %e, "redis: cluster subscriptions failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            http_stop.cancel();
                            return Ok(());
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    } else {
        None
    };
    if let Err(e) = preflight::check(tail.clone(), settings.redis.command_timeout, &shutdown).await
    {
        http_stop.cancel();
        return Err(GatewayError::Config(e));
    }
    let streams = streams::Streams::with_connections(
        streams::Connections {
            blocking,
            tail,
            watch,
            waker,
            pool: conns.collect(),
        },
        StreamKeys::new(&settings.redis.key_prefix, &settings.topic),
        streams::StreamsOptions {
            timeout: settings.redis.command_timeout,
            history_concurrency: settings.history_concurrency,
            tail_read_bytes: settings.tail_read_bytes,
        },
        metrics.clone(),
    );
    let tail_stop = CancellationToken::new();
    let tail = tokio::spawn(reader::run(
        live.clone(),
        streams.tail(),
        metrics.clone(),
        reader::TailOptions {
            read_count: settings.tail_read_count,
            block,
            discover_every: Duration::from_secs(2),
            sequence_capacity: settings.sequence_capacity,
        },
        tail_stop.clone(),
    ));
    let watcher = tokio::spawn(reader::watch_progress(
        live.clone(),
        streams.watcher(),
        Duration::from_secs(2),
        tail_stop.clone(),
    ));
    let drain = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let gateway = Arc::new(ws::Gateway {
        outbox: outbox.clone(),
        tracker: tracker.clone(),
        live: live.clone(),
        history: Arc::new(streams.clone()),
        streams,
        metrics: metrics.clone(),
        limits: limits::Limits::with_rate(
            settings.max_connections,
            settings.max_connections_per_ip,
            settings.trusted_proxies.clone(),
            settings.upgrade_rate.0,
            settings.upgrade_rate.1,
        ),
        settings: settings.ws.clone(),
        drain: drain.clone(),
        auth,
        allowed_origins: settings.allowed_origins.clone(),
    });
    let _ = gateway_cell.set(gateway);
    match &settings.auth {
        config::AuthMode::Off { explicit: true } => tracing::warn!(
            listen = %settings.listen,
            "GATEWAY_AUTH=none: no authentication; anyone who reaches the port reads every tenant"
        ),
        config::AuthMode::Off { explicit: false } => tracing::info!(
            listen = %settings.listen,
            "no authentication (a loopback listener); GATEWAY_AUTH=jwt requires tokens"
        ),
        config::AuthMode::Jwt(_) => tracing::info!("GATEWAY_AUTH=jwt: a token is required"),
    }
    tracing::info!(replica = %settings.ws.server_id, topic = %settings.topic, "gateway started");

    shutdown.cancelled().await;
    tracing::info!(
        clients = metrics.connected_clients.get(),
        "draining: telling clients to reconnect"
    );
    live.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drain.cancel();
    // Every connection, upgrades in flight included, is a task of the tracker.
    tracker.close();
    let _ = tokio::time::timeout(settings.drain_timeout, tracker.wait()).await;
    http_stop.cancel();
    tail_stop.cancel();
    let _ = http.await;
    if let Some(h) = ops_http {
        let _ = h.await;
    }
    let _ = tail.await;
    let _ = watcher.await;
    tracing::info!(left = metrics.connected_clients.get(), "gateway stopped");
    Ok(())
}
