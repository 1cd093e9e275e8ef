//! Settings of the ingest service: one flag and one environment variable per setting, all
//! problems reported at once by [`IngestArgs::validate`] (the binary exits 64 on any).

use clap::{ArgAction, Parser};
use dashstream::codec::Limits;
use dashstream::config::{positive_ms, ConfigError, ConfigErrors};
use dashstream::kafka::{KafkaArgs, KafkaConnection, TopicArgs};
use dashstream::redis_config::{RedisArgs, RedisSettings};
use std::net::SocketAddr;
use std::time::Duration;

pub const ENV_GROUP_ID: &str = "KAFKA_GROUP_ID";
pub const ENV_AUTO_OFFSET_RESET: &str = "KAFKA_AUTO_OFFSET_RESET";
pub const ENV_LISTEN: &str = "INGEST_LISTEN";
pub const ENV_STREAM_MAXLEN: &str = "INGEST_STREAM_MAXLEN";
pub const ENV_MAX_RECORD_BYTES: &str = "INGEST_MAX_RECORD_BYTES";
pub const ENV_MAX_DECOMPRESSED_BYTES: &str = "INGEST_MAX_DECOMPRESSED_BYTES";
pub const ENV_MAX_BATCH_EVENTS: &str = "INGEST_MAX_BATCH_EVENTS";
pub const ENV_DLQ_INCLUDE_VALUE: &str = "INGEST_DLQ_INCLUDE_VALUE";
pub const ENV_PARTITION_BUFFER_KB: &str = "INGEST_PARTITION_BUFFER_KB";
pub const ENV_WRITE_BATCH_EVENTS: &str = "INGEST_WRITE_BATCH_EVENTS";
pub const ENV_WRITE_BATCH_BYTES: &str = "INGEST_WRITE_BATCH_BYTES";
pub const ENV_DLQ_CONCURRENCY: &str = "INGEST_DLQ_CONCURRENCY";
pub const ENV_DRAIN_TIMEOUT_MS: &str = "INGEST_DRAIN_TIMEOUT_MS";
pub const ENV_LAG_INTERVAL_MS: &str = "INGEST_LAG_INTERVAL_MS";
pub const ENV_KAFKA_REQUEST_TIMEOUT_MS: &str = "INGEST_KAFKA_REQUEST_TIMEOUT_MS";
pub const ENV_SEQUENCE_CAPACITY: &str = "INGEST_SEQUENCE_CAPACITY";
pub const ENV_INSTANCE_ID: &str = "INGEST_INSTANCE_ID";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ingest",
    version,
    about = "DashStream ingest: Kafka consumer group -> Redis Streams"
)]
pub struct IngestArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Consumer group shared by every ingest replica.
    #[arg(long = "kafka-group-id", env = ENV_GROUP_ID, default_value = "dashstream-ingest")]
    pub group_id: String,
    /// Where a group without committed offsets starts: earliest | latest.
    #[arg(long = "kafka-auto-offset-reset", env = ENV_AUTO_OFFSET_RESET, default_value = "earliest")]
    pub auto_offset_reset: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long = "listen", env = ENV_LISTEN, default_value = "127.0.0.1:9101")]
    pub listen: String,
    /// Approximate number of entries each partition stream keeps (XADD MAXLEN ~).
    #[arg(long = "stream-maxlen", env = ENV_STREAM_MAXLEN, default_value_t = 1_000_000)]
    pub stream_maxlen: u64,
    /// Largest record value accepted; larger ones go to the DLQ.
    #[arg(long = "max-record-bytes", env = ENV_MAX_RECORD_BYTES, default_value_t = 512 * 1024)]
    pub max_record_bytes: usize,
    /// Largest zstd content size accepted.
    #[arg(long = "max-decompressed-bytes", env = ENV_MAX_DECOMPRESSED_BYTES, default_value_t = 4 * 1024 * 1024)]
    pub max_decompressed_bytes: usize,
    /// Most events in one batch record.
    #[arg(long = "max-batch-events", env = ENV_MAX_BATCH_EVENTS, default_value_t = 1000)]
    pub max_batch_events: usize,
    /// Put the whole invalid value (base64) in DLQ documents.
    #[arg(long = "dlq-include-value", env = ENV_DLQ_INCLUDE_VALUE, action = ArgAction::Set, default_value_t = false)]
    pub dlq_include_value: bool,
    /// KiB of fetched records librdkafka buffers per partition before it stops fetching it.
    #[arg(long = "partition-buffer-kb", env = ENV_PARTITION_BUFFER_KB, default_value_t = 4096)]
    pub partition_buffer_kb: usize,
    /// Most events in one Redis write (a record is never split: one may pass it).
    #[arg(long = "write-batch-events", env = ENV_WRITE_BATCH_EVENTS, default_value_t = 2000)]
    pub write_batch_events: usize,
    /// Most decoded bytes (events plus DLQ documents) in one Redis write (a record is never
    /// split: one may pass it).
    #[arg(long = "write-batch-bytes", env = ENV_WRITE_BATCH_BYTES, default_value_t = 4 * 1024 * 1024)]
    pub write_batch_bytes: usize,
    /// DLQ documents of one write sent at once.
    #[arg(long = "dlq-concurrency", env = ENV_DLQ_CONCURRENCY, default_value_t = 8)]
    pub dlq_concurrency: usize,
    /// Deadline for finishing in-flight work on revoke and shutdown, in milliseconds.
    #[arg(long = "drain-timeout-ms", env = ENV_DRAIN_TIMEOUT_MS, default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// How often lag is measured from the partition watermarks, in milliseconds.
    #[arg(long = "lag-interval-ms", env = ENV_LAG_INTERVAL_MS, default_value_t = 1_000)]
    pub lag_interval_ms: u64,
    /// Deadline of one Kafka request of the ingest's own (watermarks, committed offsets,
    /// metadata, seek), in milliseconds.
    #[arg(long = "kafka-request-timeout-ms", env = ENV_KAFKA_REQUEST_TIMEOUT_MS, default_value_t = 5_000)]
    pub kafka_request_timeout_ms: u64,
    /// Threads whose last sequence number is remembered per partition (LRU).
    #[arg(long = "sequence-capacity", env = ENV_SEQUENCE_CAPACITY, default_value_t = 100_000)]
    pub sequence_capacity: usize,
    /// Name of this replica in logs and DLQ documents (default: hostname-pid).
    #[arg(long = "instance-id", env = ENV_INSTANCE_ID)]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Tuning of the pipeline; every field has a flag above.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub stream_maxlen: u64,
    pub limits: Limits,
    pub dlq_include_value: bool,
    pub partition_buffer_kb: usize,
    pub write_batch_events: usize,
    pub write_batch_bytes: usize,
    pub dlq_concurrency: usize,
    pub drain_timeout: Duration,
    pub lag_interval: Duration,
    pub kafka_timeout: Duration,
    pub sequence_capacity: usize,
    pub instance_id: String,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            stream_maxlen: 1_000_000,
            limits: Limits::default(),
            dlq_include_value: false,
            partition_buffer_kb: 4096,
            write_batch_events: 2000,
            write_batch_bytes: 4 * 1024 * 1024,
            dlq_concurrency: 8,
            drain_timeout: Duration::from_secs(10),
            lag_interval: Duration::from_secs(1),
            kafka_timeout: Duration::from_secs(5),
            sequence_capacity: 100_000,
            instance_id: default_instance_id(),
        }
    }
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ingest".into());
    format!("{host}-{}", std::process::id())
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub kafka: KafkaConnection,
    pub topic: String,
    pub dlq_topic: String,
    pub group_id: String,
    pub auto_offset_reset: OffsetReset,
    pub redis: RedisSettings,
    pub listen: SocketAddr,
    pub options: PipelineOptions,
}

impl IngestArgs {
    pub fn validate(&self) -> Result<IngestSettings, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let kafka = self.kafka.validate().map_err(|e| errors.extend(e)).ok();
        errors.extend(self.topic.validate());
        let redis = self.redis.validate().map_err(|e| errors.extend(e)).ok();
        if self.group_id.trim().is_empty() {
            errors.push(ConfigError::new(
                ENV_GROUP_ID,
                "kafka-group-id",
                "must not be empty",
            ));
        }
        let reset = match self.auto_offset_reset.as_str() {
            "earliest" => OffsetReset::Earliest,
            "latest" => OffsetReset::Latest,
            other => {
                errors.push(ConfigError::new(
                    ENV_AUTO_OFFSET_RESET,
                    "kafka-auto-offset-reset",
                    format!("{other:?} is not one of earliest, latest"),
                ));
                OffsetReset::Earliest
            }
        };
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(ConfigError::new(
                    ENV_LISTEN,
                    "listen",
                    format!("{:?} is not an address like 127.0.0.1:9101", self.listen),
                ));
                None
            }
        };
        let mut at_least = |env: &str, flag: &str, v: u64, min: u64| {
            if v < min {
                errors.push(ConfigError::new(
                    env,
                    flag,
                    format!("must be at least {min}"),
                ));
            }
        };
        at_least(ENV_STREAM_MAXLEN, "stream-maxlen", self.stream_maxlen, 100);
        at_least(
            ENV_MAX_RECORD_BYTES,
            "max-record-bytes",
            self.max_record_bytes as u64,
            64,
        );
        at_least(
            ENV_MAX_DECOMPRESSED_BYTES,
            "max-decompressed-bytes",
            self.max_decompressed_bytes as u64,
            64,
        );
        at_least(
            ENV_MAX_BATCH_EVENTS,
            "max-batch-events",
            self.max_batch_events as u64,
            1,
        );
        at_least(
            ENV_PARTITION_BUFFER_KB,
            "partition-buffer-kb",
            self.partition_buffer_kb as u64,
            64,
        );
        at_least(
            ENV_WRITE_BATCH_EVENTS,
            "write-batch-events",
            self.write_batch_events as u64,
            1,
        );
        at_least(
            ENV_WRITE_BATCH_BYTES,
            "write-batch-bytes",
            self.write_batch_bytes as u64,
            1024,
        );
        at_least(
            ENV_DLQ_CONCURRENCY,
            "dlq-concurrency",
            self.dlq_concurrency as u64,
            1,
        );
        at_least(
            ENV_SEQUENCE_CAPACITY,
            "sequence-capacity",
            self.sequence_capacity as u64,
            1,
        );
        let drain_timeout = positive_ms(
            ENV_DRAIN_TIMEOUT_MS,
            "drain-timeout-ms",
            self.drain_timeout_ms,
            &mut errors,
        );
        let lag_interval = positive_ms(
            ENV_LAG_INTERVAL_MS,
            "lag-interval-ms",
            self.lag_interval_ms,
            &mut errors,
        );
        let kafka_timeout = positive_ms(
            ENV_KAFKA_REQUEST_TIMEOUT_MS,
            "kafka-request-timeout-ms",
            self.kafka_request_timeout_ms,
            &mut errors,
        );
        match (kafka, redis, listen) {
            (Some(kafka), Some(redis), Some(listen)) if errors.is_empty() => Ok(IngestSettings {
                kafka,
                topic: self.topic.topic.clone(),
                dlq_topic: self.topic.dlq_topic(),
                group_id: self.group_id.clone(),
                auto_offset_reset: reset,
                redis,
                listen,
                options: PipelineOptions {
                    stream_maxlen: self.stream_maxlen,
                    limits: Limits {
                        max_record_bytes: self.max_record_bytes,
                        max_decompressed_bytes: self.max_decompressed_bytes,
                        max_batch_events: self.max_batch_events,
                    },
                    dlq_include_value: self.dlq_include_value,
                    partition_buffer_kb: self.partition_buffer_kb,
                    write_batch_events: self.write_batch_events,
                    write_batch_bytes: self.write_batch_bytes,
                    dlq_concurrency: self.dlq_concurrency,
                    drain_timeout,
                    lag_interval,
                    kafka_timeout,
                    sequence_capacity: self.sequence_capacity,
                    instance_id: self.instance_id.clone().unwrap_or_else(default_instance_id),
                },
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<IngestSettings, ConfigErrors> {
        let mut v = vec!["ingest"];
        v.extend_from_slice(args);
        IngestArgs::try_parse_from(v).unwrap().validate()
    }

    #[test]
    fn good_settings_pass() {
        let s = parse(&["--kafka-brokers", "127.0.0.1:9092"]).unwrap();
        assert_eq!(s.topic, "dashstream-events");
        assert_eq!(s.dlq_topic, "dashstream-events-dlq");
        assert_eq!(s.auto_offset_reset, OffsetReset::Earliest);
    }

    #[test]
    fn every_problem_is_named() {
        let e = parse(&[
            "--kafka-brokers",
            "",
            "--kafka-auto-offset-reset",
            "smallest",
            "--listen",
            "nowhere",
            "--write-batch-events",
            "0",
        ])
        .unwrap_err();
        let s: Vec<_> = e.0.iter().map(|e| e.setting.as_str()).collect();
        assert!(s.contains(&"KAFKA_BROKERS (--kafka-brokers)"), "{s:?}");
        assert!(s.contains(&"KAFKA_AUTO_OFFSET_RESET (--kafka-auto-offset-reset)"));
        assert!(s.contains(&"INGEST_LISTEN (--listen)"));
        assert!(s.contains(&"INGEST_WRITE_BATCH_EVENTS (--write-batch-events)"));
    }
}
