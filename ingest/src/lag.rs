//! Lag from the assignment, not from what happened to arrive: every interval, for each
//! partition this process owns, lag = the partition's high watermark (asked of Kafka) minus the
//! position Redis has acknowledged. A stuck pipeline therefore shows lag rising while producers
//! write, and its staleness (seconds since the partition last advanced or was seen caught up)
//! rising too: nothing here ever resets them to 0 for a partition that is still assigned.
//! A failed watermark fetch keeps the last value and is counted.

use crate::consumer::IngestContext;
use crate::metrics::Metrics;
use crate::state::Health;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the monitor needs; `client` is a consumer of the same group that never subscribes (it
/// only asks for watermarks, committed offsets and metadata).
pub struct LagMonitor {
    pub client: Arc<BaseConsumer>,
    pub topic: String,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub interval: Duration,
    /// Deadline of one Kafka request.
    pub timeout: Duration,
    pub earliest: bool,
}

impl LagMonitor {
    /// Runs on its own thread (every call here blocks) until `stop`.
    pub fn run(self, ctx: &IngestContext, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            self.tick(ctx);
            let deadline = std::time::Instant::now() + self.interval;
            while !stop.is_cancelled() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn tick(&self, ctx: &IngestContext) {
        match self.client.fetch_metadata(Some(&self.topic), self.timeout) {
            Ok(md) => {
                self.health.kafka.ok();
                let missing = md
                    .topics()
                    .first()
                    .is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
                self.health.topic_missing.store(missing, Ordering::Relaxed);
                if let Some(t) = md.topics().first().filter(|t| t.error().is_none()) {
                    self.metrics
                        .topic_partitions
                        .set(t.partitions().len() as i64);
                }
            }
            Err(e) => {
                self.metrics.kafka_error("watermarks");
                self.health.kafka.failed(e.to_string());
            }
        }
        for (p, progress) in ctx.assigned() {
            let (low, high) = match self.client.fetch_watermarks(&self.topic, p, self.timeout) {
                Ok(w) => w,
                Err(e) => {
                    self.metrics.lag_poll_failures.inc();
                    self.metrics.kafka_error("watermarks");
                    tracing::debug!(partition = p, error = %e, "watermark fetch failed");
                    continue;
                }
            };
            if progress.position().is_none() {
                // Nothing consumed yet: lag counts from the committed offset (or the reset).
                let start = self
                    .committed(p)
                    .unwrap_or(if self.earliest { low } else { high });
                let _ = progress.start_offset.compare_exchange(
                    -1,
                    start.max(low),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            let Some(pos) = progress.position() else {
                continue;
            };
            let lag = (high - pos).max(0);
            ctx.if_assigned(p, |progress| {
                if lag == 0 {
                    progress.touch();
                }
                self.metrics
                    .partition_lag
                    .with_label_values(&[&p.to_string()])
                    .set(lag);
            });
        }
    }

    fn committed(&self, partition: i32) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let got = self.client.committed_offsets(tpl, self.timeout).ok()?;
        match got.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }
}

/// Sets each assigned partition's staleness gauge from the clock; called before each scrape.
pub fn update_staleness(ctx: &IngestContext, metrics: &Metrics) {
    ctx.for_each_assigned(|p, progress| {
        metrics
            .partition_staleness
            .with_label_values(&[&p.to_string()])
            .set(progress.staleness().as_secs_f64());
    });
}
