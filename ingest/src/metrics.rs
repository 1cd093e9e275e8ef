//! The ingest tier's metrics, registered in one `prometheus::Registry` (names and meaning in
//! docs/METRICS.md). Labels come only from small fixed sets, plus `partition`, which is bounded
//! by the topic's partition count and removed when the partition is revoked.

use dashstream::codec::Reason;
use prometheus::{
    exponential_buckets, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

const NS: &str = "dashstream_ingest";

pub struct Metrics {
    /// Kafka records by outcome: written | duplicate | dlq.
    pub records: IntCounterVec,
    pub records_written: IntCounter,
    pub records_duplicate: IntCounter,
    pub records_dlq: IntCounter,
    invalid_by_reason: Vec<IntCounter>,
    pub events_written: IntCounter,
    /// Processing errors: records that failed decoding or validation, by reason.
    pub invalid_records: IntCounterVec,
    pub dlq_send_failures: IntCounter,
    /// Infrastructure errors by system (kafka | redis) and kind.
    pub infra_errors: IntCounterVec,
    pub redis_write_seconds: Histogram,
    pub partition_lag: IntGaugeVec,
    pub partition_staleness: GaugeVec,
    pub partition_assigned: IntGaugeVec,
    pub partition_acked_offset: IntGaugeVec,
    /// Entries (`XLEN`) of each owned partition's stream, and the age of its oldest entry
    /// (measured by `retention`); the configured `INGEST_STREAM_MAXLEN`.
    pub stream_entries: IntGaugeVec,
    pub stream_oldest_age: GaugeVec,
    pub stream_maxlen: IntGauge,
    pub assigned_partitions: IntGauge,
    /// Partitions of the topic, as the broker reports them (0 until first measured).
    pub topic_partitions: IntGauge,
    /// 1 while `/readyz` would answer 200, else 0 (set at each scrape).
    pub ready: IntGauge,
    /// Per dependency (`kafka`, `redis`): 1 while it answered recently (the windows `/readyz`
    /// uses), else 0 (set at each scrape).
    pub dependency_up: IntGaugeVec,
    pub lag_poll_failures: IntCounter,
    pub rebalances: IntCounterVec,
    pub e2e_latency: Histogram,
    pub clock_skew: IntCounter,
    pub sequence: IntCounterVec,
    pub sequence_gap: IntCounter,
    pub sequence_duplicate: IntCounter,
    pub sequence_reorder: IntCounter,
    pub sequence_tracked_threads: IntGauge,
    pub stream_resets: IntCounterVec,
    /// Records Kafka's retention deleted before the ingest read them (each such loss also
    /// starts an `offset_reset` epoch).
    pub records_lost: IntCounter,
    pub fenced: IntCounter,
    pub reclaims: IntCounter,
    pub redis_rollbacks: IntCounterVec,
    pub write_conflicts: IntCounterVec,
    pub drain_timeouts: IntCounter,
}

/// Reasons of `stream_resets_total`.
pub const RESET_REASONS: [&str; 5] = [
    "flushed",
    "topic_recreated",
    "meta_lost",
    "redis_rollback",
    "offset_reset",
];

/// One partition worker's handles (labelled series looked up once) and its log limiter.
pub struct PartitionMetrics {
    pub acked_offset: IntGauge,
    tracked: IntGauge,
    log_window: std::time::Instant,
    logged: u32,
}

/// Invalid-record warnings logged per partition per 10 s (the rest are only counted).
const INVALID_LOGS_PER_WINDOW: u32 = 10;

impl PartitionMetrics {
    /// Whether to log one more invalid record now.
    pub fn should_log_invalid(&mut self) -> bool {
        if self.log_window.elapsed() >= std::time::Duration::from_secs(10) {
            self.log_window = std::time::Instant::now();
            self.logged = 0;
        }
        self.logged += 1;
        self.logged <= INVALID_LOGS_PER_WINDOW
    }

    /// The worker's sequence tracker (holding `threads`) is dropped.
    pub fn forget_sequences(&self, threads: usize) {
        self.tracked.sub(threads as i64);
    }
}

pub const REDIS_ERROR_KINDS: [&str; 4] = ["connection", "timeout", "server", "other"];
pub const KAFKA_ERROR_KINDS: [&str; 5] = ["consume", "commit", "client", "watermarks", "seek"];

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
        };
        let records = counter_vec(
            "records_total",
            "Kafka records handled, by outcome (written, duplicate: already in Redis, dlq)",
            &["outcome"],
        )?;
        let invalid_records = counter_vec(
            "invalid_records_total",
            "Processing errors: records that failed decoding or validation, by reason",
            &["reason"],
        )?;
        let sequence = counter_vec(
            "sequence_anomalies_total",
            "Per-thread sequence anomalies seen at ingest, by kind (gap, duplicate, reorder)",
            &["kind"],
        )?;
        let m = Self {
            records_written: records.with_label_values(&["written"]),
            records_duplicate: records.with_label_values(&["duplicate"]),
            records_dlq: records.with_label_values(&["dlq"]),
            records,
            invalid_by_reason: Reason::ALL
                .iter()
                .map(|r| invalid_records.with_label_values(&[r.as_str()]))
                .collect(),
            invalid_records,
            sequence_gap: sequence.with_label_values(&["gap"]),
            sequence_duplicate: sequence.with_label_values(&["duplicate"]),
            sequence_reorder: sequence.with_label_values(&["reorder"]),
            sequence,
            events_written: IntCounter::with_opts(
                Opts::new("events_written_total", "Events appended to Redis streams").namespace(NS),
            )?,
            dlq_send_failures: IntCounter::with_opts(
                Opts::new("dlq_send_failures_total", "Failed attempts to write a DLQ document")
                    .namespace(NS),
            )?,
            infra_errors: counter_vec(
                "infra_errors_total",
                "Infrastructure errors, by system (kafka, redis) and kind",
                &["system", "kind"],
            )?,
            redis_write_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "redis_write_duration_seconds",
                    "Latency of one successful Redis stream write (a batch of records)",
                )
                .namespace(NS)
                .buckets(exponential_buckets(0.0002, 2.0, 16)?),
            )?,
            partition_lag: IntGaugeVec::new(
                Opts::new(
                    "partition_lag",
                    "Records in the partition not yet acknowledged by Redis (high watermark - acknowledged position)",
                )
                .namespace(NS),
                &["partition"],
            )?,
            partition_staleness: GaugeVec::new(
                Opts::new(
                    "partition_staleness_seconds",
                    "Seconds since the partition last advanced or was seen caught up",
                )
                .namespace(NS),
                &["partition"],
            )?,
            partition_assigned: IntGaugeVec::new(
                Opts::new("partition_assigned", "1 for each partition assigned to this process")
                    .namespace(NS),
                &["partition"],
            )?,
            partition_acked_offset: IntGaugeVec::new(
                Opts::new(
                    "partition_acked_offset",
                    "Next offset of the partition whose records Redis has all acknowledged",
                )
                .namespace(NS),
                &["partition"],
            )?,
            stream_entries: IntGaugeVec::new(
                Opts::new(
                    "stream_entries",
                    "Entries (XLEN) of the partition's Redis stream",
                )
                .namespace(NS),
                &["partition"],
            )?,
            stream_oldest_age: GaugeVec::new(
                Opts::new(
                    "stream_oldest_entry_age_seconds",
                    "Now minus the producer timestamp of the oldest entry of the partition's Redis stream",
                )
                .namespace(NS),
                &["partition"],
            )?,
            stream_maxlen: IntGauge::with_opts(
                Opts::new(
                    "stream_maxlen",
                    "The configured approximate maximum entries of each partition stream (INGEST_STREAM_MAXLEN)",
                )
                .namespace(NS),
            )?,
            assigned_partitions: IntGauge::with_opts(
                Opts::new("assigned_partitions", "Partitions assigned to this process").namespace(NS),
            )?,
            topic_partitions: IntGauge::with_opts(
                Opts::new("topic_partitions", "Partitions of the topic, as the broker reports them")
                    .namespace(NS),
            )?,
            ready: IntGauge::with_opts(
                Opts::new("ready", "1 while /readyz answers 200, else 0").namespace(NS),
            )?,
            dependency_up: IntGaugeVec::new(
                Opts::new(
                    "dependency_up",
                    "1 while the dependency (kafka, redis) answered recently, else 0",
                )
                .namespace(NS),
                &["system"],
            )?,
            lag_poll_failures: IntCounter::with_opts(
                Opts::new("lag_poll_failures_total", "Failed watermark fetches for lag").namespace(NS),
            )?,
            rebalances: counter_vec(
                "rebalances_total",
                "Consumer group rebalance events, by kind (assign, revoke, error)",
                &["kind"],
            )?,
            e2e_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "producer_to_redis_seconds",
                    "From the producer's timestamp to the Redis acknowledgement (skewed clocks excluded)",
                )
                .namespace(NS)
                .buckets(exponential_buckets(0.001, 2.0, 18)?),
            )?,
            clock_skew: IntCounter::with_opts(
                Opts::new(
                    "clock_skew_events_total",
                    "Events whose producer timestamp is in the future (excluded from latency)",
                )
                .namespace(NS),
            )?,
            sequence_tracked_threads: IntGauge::with_opts(
                Opts::new("sequence_tracked_threads", "Threads in the bounded sequence tracker")
                    .namespace(NS),
            )?,
            records_lost: IntCounter::with_opts(
                Opts::new(
                    "records_lost_total",
                    "Records deleted by Kafka's retention before they were ingested",
                )
                .namespace(NS),
            )?,
            stream_resets: counter_vec(
                "stream_resets_total",
                "New stream epochs started because history was lost, by reason (flushed, topic_recreated, meta_lost, redis_rollback, offset_reset)",
                &["reason"],
            )?,
            fenced: IntCounter::with_opts(
                Opts::new(
                    "fenced_writes_total",
                    "Writes refused because another ingest process now owns the partition",
                )
                .namespace(NS),
            )?,
            reclaims: IntCounter::with_opts(
                Opts::new(
                    "reclaims_total",
                    "Claims made again after a fence while this process still owned the partition",
                )
                .namespace(NS),
            )?,
            redis_rollbacks: counter_vec(
                "redis_rollbacks_total",
                "Times Redis was found holding less than was acknowledged, by action (reingest: re-read from Kafka; new_epoch: Kafka no longer had it)",
                &["action"],
            )?,
            write_conflicts: counter_vec(
                "write_conflicts_total",
                "Writes whose expected stream position did not match, by kind (done: written by an earlier attempt; ahead: the stream held more)",
                &["kind"],
            )?,
            drain_timeouts: IntCounter::with_opts(
                Opts::new(
                    "drain_timeouts_total",
                    "Revokes or shutdowns whose in-flight work did not finish within the deadline",
                )
                .namespace(NS),
            )?,
        };
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.events_written.clone()))?;
        registry.register(Box::new(m.invalid_records.clone()))?;
        registry.register(Box::new(m.dlq_send_failures.clone()))?;
        registry.register(Box::new(m.infra_errors.clone()))?;
        registry.register(Box::new(m.redis_write_seconds.clone()))?;
        registry.register(Box::new(m.partition_lag.clone()))?;
        registry.register(Box::new(m.partition_staleness.clone()))?;
        registry.register(Box::new(m.partition_assigned.clone()))?;
        registry.register(Box::new(m.partition_acked_offset.clone()))?;
        registry.register(Box::new(m.stream_entries.clone()))?;
        registry.register(Box::new(m.stream_oldest_age.clone()))?;
        registry.register(Box::new(m.stream_maxlen.clone()))?;
        registry.register(Box::new(m.assigned_partitions.clone()))?;
        registry.register(Box::new(m.topic_partitions.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.records_lost.clone()))?;
        registry.register(Box::new(m.dependency_up.clone()))?;
        registry.register(Box::new(m.lag_poll_failures.clone()))?;
        registry.register(Box::new(m.rebalances.clone()))?;
        registry.register(Box::new(m.e2e_latency.clone()))?;
        registry.register(Box::new(m.clock_skew.clone()))?;
        registry.register(Box::new(m.sequence.clone()))?;
        registry.register(Box::new(m.sequence_tracked_threads.clone()))?;
        registry.register(Box::new(m.stream_resets.clone()))?;
        registry.register(Box::new(m.fenced.clone()))?;
        registry.register(Box::new(m.reclaims.clone()))?;
        registry.register(Box::new(m.redis_rollbacks.clone()))?;
        registry.register(Box::new(m.write_conflicts.clone()))?;
        registry.register(Box::new(m.drain_timeouts.clone()))?;
        // Emit every labelled counter from the start, so alerts see 0 rather than nothing.
        for o in ["written", "duplicate", "dlq"] {
            m.records.with_label_values(&[o]);
        }
        for r in Reason::ALL {
            m.invalid_records.with_label_values(&[r.as_str()]);
        }
        for k in REDIS_ERROR_KINDS {
            m.infra_errors.with_label_values(&["redis", k]);
        }
        for k in KAFKA_ERROR_KINDS {
            m.infra_errors.with_label_values(&["kafka", k]);
        }
        for k in ["assign", "revoke", "error"] {
            m.rebalances.with_label_values(&[k]);
        }
        for k in ["gap", "duplicate", "reorder"] {
            m.sequence.with_label_values(&[k]);
        }
        for r in RESET_REASONS {
            m.stream_resets.with_label_values(&[r]);
        }
        for a in ["reingest", "new_epoch"] {
            m.redis_rollbacks.with_label_values(&[a]);
        }
        for k in ["done", "ahead"] {
            m.write_conflicts.with_label_values(&[k]);
        }
        process_collector(registry);
        Ok(m)
    }

    /// Removes the series of a partition this process no longer owns.
    pub fn forget_partition(&self, partition: i32) {
        let p = partition.to_string();
        let _ = self.partition_lag.remove_label_values(&[&p]);
        let _ = self.partition_staleness.remove_label_values(&[&p]);
        let _ = self.partition_assigned.remove_label_values(&[&p]);
        let _ = self.partition_acked_offset.remove_label_values(&[&p]);
        let _ = self.stream_entries.remove_label_values(&[&p]);
        let _ = self.stream_oldest_age.remove_label_values(&[&p]);
    }

    /// The handles of one partition's worker.
    pub fn partition(&self, partition: i32) -> PartitionMetrics {
        PartitionMetrics {
            acked_offset: self
                .partition_acked_offset
                .with_label_values(&[&partition.to_string()]),
            tracked: self.sequence_tracked_threads.clone(),
            log_window: std::time::Instant::now(),
            logged: 0,
        }
    }

    pub fn invalid(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.invalid_by_reason[i].inc();
        }
    }

    pub fn stream_reset(&self, reason: &str) {
        self.stream_resets.with_label_values(&[reason]).inc();
    }

    pub fn redis_error(&self, kind: &str) {
        self.infra_errors.with_label_values(&["redis", kind]).inc();
    }

    pub fn kafka_error(&self, kind: &str) {
        self.infra_errors.with_label_values(&["kafka", kind]).inc();
    }
}

fn process_collector(registry: &Registry) {
    let pc = prometheus::process_collector::ProcessCollector::for_self();
    let _ = registry.register(Box::new(pc));
}
