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
pub mod retention;
pub mod state;
pub mod store;
pub mod worker;

pub use config::{IngestArgs, IngestSettings, OffsetReset, PipelineOptions};

use consumer::{IngestContext, PollEnd, SpawnWorker};
use dashstream::backoff::Backoff;
use dashstream::config::ConfigError;
use dashstream::http::OpsState;
use dashstream::kafka::{AccessError, KafkaConnection};
use dashstream::keys::StreamKeys;
use metrics::Metrics;
use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use state::Health;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("KAFKA_DLQ_TOPIC (--kafka-dlq-topic): the dead-letter topic {0:?} does not exist (create it with `dashstream provision`)")]
    DlqTopicMissing(String),
    #[error("a pipeline thread failed: {0}")]
    Thread(String),
    /// The brokers refused the credentials or a certificate.
    #[error("{0}")]
    KafkaRefused(dashstream::config::ConfigError),
    /// Redis refused the login or the TLS handshake.
    #[error("{0}")]
    RedisRefused(String),
}

impl IngestError {
    /// A setting is wrong (the binary exits 64), rather than a failure at run time.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            IngestError::DlqTopicMissing(_)
                | IngestError::KafkaRefused(_)
                | IngestError::RedisRefused(_)
        )
    }
}

/// Runs the ingest until `shutdown` is cancelled, then drains and commits within the drain
/// deadline. `listener` serves the operations endpoints. A pipeline thread or partition
/// worker that dies ends the run with an error (after draining what it can), so the process
/// exits non-zero instead of staying up without making progress.
/// How long the DLQ producer tries to deliver one dead letter before the write fails.
pub const DLQ_MESSAGE_TIMEOUT_MS: &str = "30000";

pub async fn run(
    settings: IngestSettings,
    registry: Registry,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let metrics = Arc::new(Metrics::new(&registry)?);
    metrics
        .stream_maxlen
        .set(i64::try_from(settings.options.stream_maxlen).unwrap_or(i64::MAX));
    let health = Arc::new(Health::default());
    let options = Arc::new(settings.options.clone());
    let keys = StreamKeys::new(&settings.redis.key_prefix, &settings.topic);
    let stop = shutdown.child_token();

    // The operations endpoints answer from the start: /healthz 200, /readyz 503 with reasons.
    let consumer_cell: Arc<std::sync::OnceLock<Arc<BaseConsumer<IngestContext>>>> =
        Arc::new(std::sync::OnceLock::new());
    let ops = Arc::new(OpsState {
        refused: dashstream::http::refusals(&registry)?,
        registry,
        readiness: health.clone(),
        before_gather: Some({
            let (cell, metrics, health) = (consumer_cell.clone(), metrics.clone(), health.clone());
            Arc::new(move || {
                use dashstream::http::Readiness;
                if let Some(c) = cell.get() {
                    lag::update_staleness(c.context(), &metrics)
                }
                metrics.ready.set(i64::from(health.check().is_ok()));
                for (system, up) in health.dependencies_up() {
                    metrics
                        .dependency_up
                        .with_label_values(&[system])
                        .set(i64::from(up));
                }
            })
        }),
        fallback: None,
        serve_ops: true,
        exempt: None,
        max_pending_per_ip: dashstream::http::MAX_CONNECTIONS_PER_IP,
    });
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(dashstream::http::serve(listener, ops, http_stop.clone()));
    let stopped_early = |http_stop: CancellationToken| {
        http_stop.cancel();
        Ok(())
    };

    // Kafka first: a client of the group that never subscribes (lag, watermarks, committed
    // offsets, metadata). The DLQ topic must exist before any record can be dead-lettered.
    let lag_client: Arc<BaseConsumer> = Arc::new(
        settings
            .kafka
            .client_config()
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .create()?,
    );
    let dlq_exists = topic_exists(
        &settings.kafka,
        &settings.dlq_topic,
        options.kafka_timeout,
        &health,
        &metrics,
        &stop,
    )
    .await;
    let dlq_exists = match dlq_exists {
        Ok(Some(exists)) => exists,
        Ok(None) => return stopped_early(http_stop),
        Err(refused) => {
            http_stop.cancel();
            return Err(IngestError::KafkaRefused(refused));
        }
    };
    if !dlq_exists {
        http_stop.cancel();
        return Err(IngestError::DlqTopicMissing(settings.dlq_topic.clone()));
    }

    // Redis: one multiplexed, self-reconnecting connection shared by all partition workers (a
    // cluster connection routes each partition's writes to the master of its slot).
    let redis = tokio::select! {
        _ = stop.cancelled() => return stopped_early(http_stop),
        c = connect_redis(&settings, &health, &metrics) => match c {
            Ok(c) => c,
            Err(refused) => {
                http_stop.cancel();
                return Err(IngestError::RedisRefused(refused));
            }
        },
    };
    let redis_ping = tokio::spawn(ping_redis(
        redis.clone(),
        health.clone(),
        settings.redis.command_timeout,
        stop.clone(),
    ));

    let dlq = Arc::new(dlq::Dlq {
        // A DLQ write that cannot be delivered fails after 30 s instead of librdkafka's 300 s:
        // the worker retries it, and each failure counts (DashStreamDlqSendFailing's pace).
        producer: dashstream::produce::producer_config(&settings.kafka)
            .set("message.timeout.ms", DLQ_MESSAGE_TIMEOUT_MS)
            .create()?,
        topic: settings.dlq_topic.clone(),
        include_value: options.dlq_include_value,
        instance: options.instance_id.clone(),
    });

    let ctx = IngestContext::new(
        settings.topic.clone(),
        tokio::runtime::Handle::current(),
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
        // Each partition has its own queue, so these bound each partition's buffer.
        .set(
            "queued.max.messages.kbytes",
            options.partition_buffer_kb.to_string(),
        )
        .set("queued.min.messages", "100000")
        // A full partition queue is checked again soon, not after librdkafka's default 1 s.
        .set("fetch.queue.backoff.ms", "10")
        .set("enable.partition.eof", "false")
        .create_with_context(ctx)?;
    let consumer = Arc::new(consumer);
    // How much history each owned stream holds (entries, oldest entry's age).
    let retention_monitor = retention::RetentionMonitor {
        redis: redis.clone(),
        keys: keys.clone(),
        consumer: Arc::downgrade(&consumer),
        metrics: metrics.clone(),
        interval: retention::interval(options.lag_interval),
        timeout: settings.redis.command_timeout,
    };
    let owner_base = format!("{}:{}", options.instance_id, uuid::Uuid::new_v4());
    let claims = std::sync::atomic::AtomicU64::new(0);
    let spawn: SpawnWorker = {
        let (metrics, health, options) = (metrics.clone(), health.clone(), options.clone());
        let timeout = settings.redis.command_timeout;
        let weak = Arc::downgrade(&consumer);
        let (lag_client, topic) = (lag_client.clone(), settings.topic.clone());
        Box::new(move |partition, queue, progress, stop| {
            let n = claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(consumer) = weak.upgrade() else {
                return tokio::spawn(async {});
            };
            let w = worker::Worker {
                partition,
                queue,
                kafka: worker::PartitionKafka {
                    consumer,
                    client: lag_client.clone(),
                    topic: topic.clone(),
                    partition,
                    timeout: options.kafka_timeout,
                },
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
            };
            tokio::spawn(w.run(stop))
        })
    };
    consumer.context().attach(&consumer, spawn);
    consumer.subscribe(&[&settings.topic])?;
    tracing::info!(topic = %settings.topic, group = %settings.group_id, "ingest started");
    let _ = consumer_cell.set(consumer.clone());
    let retention = tokio::spawn(retention_monitor.run(stop.clone()));

    // The two pipeline threads report their end; one ending before `stop` is fatal.
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
    let lag_thread = {
        let monitor = lag::LagMonitor {
            client: lag_client,
            topic: settings.topic.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            interval: options.lag_interval,
            timeout: options.kafka_timeout,
            earliest: settings.auto_offset_reset == OffsetReset::Earliest,
        };
        let (consumer, stop, tx) = (consumer.clone(), stop.clone(), ended_tx.clone());
        std::thread::Builder::new()
            .name("lag".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    monitor.run(consumer.context(), &stop)
                }));
                let _ = tx.send((
                    "lag",
                    match r {
                        Ok(()) => "returned".into(),
                        Err(_) => "panicked".into(),
                    },
                ));
            })
            .map_err(|e| IngestError::Thread(e.to_string()))?
    };
    let poll_thread = {
        let (stop, tx, consumer) = (stop.clone(), ended_tx, consumer.clone());
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    consumer::poll_loop(&consumer, &stop)
                }));
                let _ = tx.send((
                    "kafka-poll",
                    match r {
                        Ok(PollEnd::Stopped) => "returned".into(),
                        Ok(PollEnd::DeadWorker(p)) => format!("the worker of partition {p} died"),
                        Err(_) => "panicked".into(),
                    },
                ));
            })
            .map_err(|e| IngestError::Thread(e.to_string()))?
    };
    drop(consumer);
    let failure = tokio::select! {
        _ = stop.cancelled() => None,
        Some((thread, how)) = ended.recv() => {
            let why = format!("the {thread} thread ended ({how}) while the ingest was running");
            health.fail(why.clone());
            tracing::error!("{why}; draining and exiting");
            stop.cancel();
            Some(why)
        }
    };
    let joined = tokio::task::spawn_blocking(move || {
        let a = poll_thread.join();
        let b = lag_thread.join();
        a.and(b)
    })
    .await;
    http_stop.cancel();
    let _ = http.await;
    redis_ping.abort();
    retention.abort();
    tracing::info!("ingest stopped");
    if let Some(why) = failure {
        return Err(IngestError::Thread(why));
    }
    match joined {
        Ok(Ok(())) => Ok(()),
        _ => Err(IngestError::Thread("poll or lag thread panicked".into())),
    }
}

/// Whether `topic` exists; waits (with backoff, counted) while Kafka cannot be asked. `None`
/// when stopped first; the setting to fix when the brokers refuse the credentials or a
/// certificate (librdkafka would only retry).
async fn topic_exists(
    conn: &KafkaConnection,
    topic: &str,
    timeout: Duration,
    health: &Health,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<Option<bool>, ConfigError> {
    let mut backoff = Backoff::new();
    loop {
        let (c, t) = (conn.clone(), topic.to_string());
        let md = tokio::task::spawn_blocking(move || {
            c.check_access(Some(&t), timeout).map(|md| {
                md.topics()
                    .first()
                    .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
            })
        })
        .await;
        match md {
            Ok(Ok(exists)) => {
                health.kafka.ok();
                return Ok(Some(exists));
            }
            Ok(Err(AccessError::Refused(e))) => return Err(e),
            Ok(Err(AccessError::Unreachable(e))) => {
                metrics.kafka_error("client");
                health.kafka.failed(e.to_string());
                tracing::warn!(error = %e, "kafka unreachable at start-up; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "metadata request failed; retrying"),
        }
        if !backoff.wait_or_cancelled(stop).await {
            return Ok(None);
        }
    }
}

async fn connect_redis(
    settings: &IngestSettings,
    health: &Health,
    metrics: &Metrics,
) -> Result<dashstream::redis_config::RedisConn, String> {
    let mut backoff = Backoff::new();
    loop {
        match settings.redis.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => {
                metrics.redis_error("connection");
                if let Some(hint) = dashstream::redis_config::refusal(&e) {
                    return Err(format!("{hint} ({e})"));
                }
                health.redis.failed(e.to_string());
                tracing::warn!(error = %e, "redis unreachable at start-up; retrying");
                backoff.wait().await;
            }
        }
    }
}
async fn ping_redis(
    mut conn: dashstream::redis_config::RedisConn,
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
