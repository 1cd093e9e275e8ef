//! The ingest tier: consumes the event topic in one shared consumer group and writes each
//! partition's valid events to that partition's Redis stream, exactly once per
//! (partition, offset); invalid records go to the DLQ topic. A Kafka offset is stored for
//! commit only after Redis acknowledged the record and everything before it.
//!
//! Threads and tasks: a poll thread owns the group consumer ([`consumer`]), one tokio task per
//! assigned partition does the work ([`worker`]), a lag thread measures lag from Kafka's
//! watermarks ([`lag`]), a task pings Redis for `/readyz`, and the operations HTTP server
//! serves `/metrics`, `/healthz` and `/readyz`.

pub mod config;
pub mod consumer;
pub mod dlq;
pub mod lag;
pub mod metrics;
pub mod state;
pub mod store;
pub mod worker;

pub use config::{IngestArgs, IngestSettings, OffsetReset, PipelineOptions};

use consumer::{IngestContext, SpawnWorker};
use dashstream::http::OpsState;
use dashstream::keys::StreamKeys;
use dashstream::seq::SequenceTracker;
use metrics::Metrics;
use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use state::Health;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("a pipeline thread failed: {0}")]
    Thread(String),
}

/// Runs the ingest until `shutdown` is cancelled, then drains and commits within the drain
/// deadline. `listener` serves the operations endpoints.
pub async fn run(
    settings: IngestSettings,
    registry: Registry,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let metrics = Arc::new(Metrics::new(&registry)?);
    let health = Arc::new(Health::default());
    let options = Arc::new(settings.options.clone());
    let keys = StreamKeys::new(&settings.redis.key_prefix, &settings.topic);

    // The operations endpoints answer from the start: /healthz 200, /readyz 503 with reasons.
    let consumer_cell: Arc<std::sync::OnceLock<Arc<BaseConsumer<IngestContext>>>> =
        Arc::new(std::sync::OnceLock::new());
    let ops = Arc::new(OpsState {
        registry,
        readiness: health.clone(),
        before_gather: Some({
            let (cell, metrics) = (consumer_cell.clone(), metrics.clone());
            Arc::new(move || {
                if let Some(c) = cell.get() {
                    lag::update_staleness(c.context(), &metrics)
                }
            })
        }),
        fallback: None,
    });
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(dashstream::http::serve(listener, ops, http_stop.clone()));

    // Redis: one multiplexed, self-reconnecting connection shared by all partition workers.
    let redis = tokio::select! {
        _ = shutdown.cancelled() => {
            http_stop.cancel();
            return Ok(());
        }
        c = connect_redis(&settings, &health, &metrics) => c,
    };
    let redis_ping = tokio::spawn(ping_redis(
        redis.clone(),
        health.clone(),
        settings.redis.command_timeout,
        shutdown.clone(),
    ));

    let dlq = Arc::new(dlq::Dlq {
        producer: dashstream::produce::producer(&settings.kafka)?,
        topic: settings.dlq_topic.clone(),
        include_value: options.dlq_include_value,
        instance: options.instance_id.clone(),
    });
    let lag_client: Arc<BaseConsumer> = Arc::new(
        settings
            .kafka
            .client_config()
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .create()?,
    );
    let watermark_client = lag_client.clone();
    let topic_for_wm = settings.topic.clone();
    let watermarks: worker::Watermarks = Arc::new(move |p| {
        watermark_client
            .fetch_watermarks(&topic_for_wm, p, Duration::from_secs(5))
            .map_err(|e| e.to_string())
    });

    let sequences = Arc::new(Mutex::new(SequenceTracker::new(options.sequence_capacity)));
    let owner_base = format!("{}:{}", options.instance_id, uuid::Uuid::new_v4());
    let claims = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let spawn: SpawnWorker = {
        let (metrics, health, options) = (metrics.clone(), health.clone(), options.clone());
        let timeout = settings.redis.command_timeout;
        Box::new(move |partition, progress| {
            let (tx, rx) = tokio::sync::mpsc::channel(options.partition_queue);
            let n = claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let w = worker::Worker {
                partition,
                store: store::PartitionStore::new(
                    redis.clone(),
                    &keys,
                    partition,
                    options.stream_maxlen,
                    timeout,
                ),
                owner: format!("{owner_base}:{n}"),
                dlq: dlq.clone(),
                metrics: metrics.clone(),
                options: options.clone(),
                progress,
                health: health.clone(),
                sequences: sequences.clone(),
                watermarks: watermarks.clone(),
            };
            (tx, tokio::spawn(w.run(rx)))
        })
    };
    let ctx = IngestContext::new(
        settings.topic.clone(),
        tokio::runtime::Handle::current(),
        spawn,
        options.drain_timeout,
        metrics.clone(),
        health.clone(),
    );
    let consumer: BaseConsumer<IngestContext> = settings
        .kafka
        .client_config()
        .set("group.id", &settings.group_id)
        .set("client.id", &options.instance_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", settings.auto_offset_reset.as_str())
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("queued.max.messages.kbytes", "65536")
        .set("enable.partition.eof", "false")
        .create_with_context(ctx)?;
    consumer.subscribe(&[&settings.topic])?;
    let consumer = Arc::new(consumer);
    tracing::info!(topic = %settings.topic, group = %settings.group_id, "ingest started");

    let _ = consumer_cell.set(consumer.clone());

    let lag_thread = {
        let monitor = lag::LagMonitor {
            client: lag_client,
            topic: settings.topic.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            interval: options.lag_interval,
            earliest: settings.auto_offset_reset == OffsetReset::Earliest,
        };
        let (consumer, stop) = (consumer.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("lag".into())
            .spawn(move || monitor.run(consumer.context(), &stop))
            .map_err(|e| IngestError::Thread(e.to_string()))?
    };
    let poll_thread = {
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                consumer::poll_loop(&consumer, &stop);
                drop(consumer);
            })
            .map_err(|e| IngestError::Thread(e.to_string()))?
    };
    shutdown.cancelled().await;
    let joined = tokio::task::spawn_blocking(move || {
        let a = poll_thread.join();
        let b = lag_thread.join();
        a.and(b)
    })
    .await;
    http_stop.cancel();
    let _ = http.await;
    redis_ping.abort();
    tracing::info!("ingest stopped");
    match joined {
        Ok(Ok(())) => Ok(()),
        _ => Err(IngestError::Thread("poll or lag thread panicked".into())),
    }
}

async fn connect_redis(
    settings: &IngestSettings,
    health: &Health,
    metrics: &Metrics,
) -> redis::aio::ConnectionManager {
    let mut delay = Duration::from_millis(100);
    loop {
        match settings.redis.connect().await {
            Ok(c) => return c,
            Err(e) => {
                metrics.redis_error("connection");
                health.redis.failed(e.to_string());
                tracing::warn!(error = %e, "redis unreachable at start-up; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn ping_redis(
    mut conn: redis::aio::ConnectionManager,
    health: Arc<Health>,
    timeout: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(timeout.min(Duration::from_secs(2)), ping).await {
            Ok(Ok(_)) => health.redis.ok(),
            Ok(Err(e)) => health.redis.failed(e.to_string()),
            Err(_) => health.redis.failed("PING timed out"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
