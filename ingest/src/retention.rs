//! How much history each owned partition's stream holds (operability review M4): its number of
//! entries (`XLEN`) and the age of its oldest entry, so a retention (`INGEST_STREAM_MAXLEN`)
//! too short for clients' reconnects is seen before clients get `retention` gaps.
//!
//! Every [`interval`] (the lag monitor's `INGEST_LAG_INTERVAL_MS`, but at most once per
//! [`MIN_INTERVAL`]), one pipelined round trip asks `XLEN` and `XRANGE <stream> - + COUNT 1` of
//! every partition this process owns, within the Redis command timeout. The oldest entry's age
//! is now minus the producer timestamp (`timestamp_us`) of its event, decoded from `ev` as the
//! gateway does; an entry whose `ev` does not decode falls back to its `ts` field (ingest time)
//! when it has one. A failed round trip is counted in `infra_errors_total{system="redis"}` and
//! keeps the last values. An empty or missing stream has 0 entries and no age series.

use crate::consumer::IngestContext;
use crate::metrics::Metrics;
use crate::store::StoreError;
use dashstream::keys::StreamKeys;
use prost::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use redis::streams::StreamRangeReply;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The fastest pace of the measurement, whatever the lag interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// The pace of the measurement for a lag interval.
pub fn interval(lag_interval: Duration) -> Duration {
    lag_interval.max(MIN_INTERVAL)
}

pub struct RetentionMonitor {
    pub redis: dashstream::redis_config::RedisConn,
    pub keys: StreamKeys,
    /// The group consumer, whose context knows the assignment (weak: this task does not keep
    /// the consumer alive).
    pub consumer: Weak<BaseConsumer<IngestContext>>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    /// Deadline of the one round trip.
    pub timeout: Duration,
}

/// What one partition's stream holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamHistory {
    pub entries: i64,
    /// Microseconds since the epoch of the oldest entry's event; `None` when the stream is
    /// empty or its oldest entry has neither a decodable event nor a `ts`.
    pub oldest_us: Option<i64>,
    pub empty: bool,
}

impl RetentionMonitor {
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(consumer) = self.consumer.upgrade() else {
                return;
            };
            let mut partitions: Vec<i32> = consumer
                .context()
                .assigned()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if partitions.is_empty() {
                continue;
            }
            partitions.sort_unstable();
            drop(consumer);
            match self.measure(&partitions).await {
                Ok(found) => self.publish(&partitions, &found),
                Err(e) => {
                    self.metrics.redis_error(e.kind());
                    tracing::debug!(error = %e, "stream retention measurement failed");
                }
            }
        }
    }

    /// One pipelined round trip for all `partitions` (on a cluster, one per partition, all at
    /// once: a pipeline's keys share a slot there).
    async fn measure(&mut self, partitions: &[i32]) -> Result<Vec<StreamHistory>, StoreError> {
        let pipe_of = |ps: &[i32]| {
            let mut pipe = redis::pipe();
            for p in ps {
                let key = self.keys.stream(*p);
                pipe.cmd("XLEN").arg(&key);
                pipe.cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
            }
            pipe
        };
        let pipes: Vec<redis::Pipeline> = if self.redis.is_cluster() {
            partitions
                .iter()
                .map(|p| pipe_of(std::slice::from_ref(p)))
                .collect()
        } else {
            vec![pipe_of(partitions)]
        };
        let conn = &self.redis;
        let all = futures::future::try_join_all(pipes.iter().map(|pipe| {
            let mut c = conn.clone();
            async move { pipe.query_async::<Vec<redis::Value>>(&mut c).await }
        }));
        let replies: Vec<redis::Value> = tokio::time::timeout(self.timeout, all)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??
            .into_iter()
            .flatten()
            .collect();
        if replies.len() != 2 * partitions.len() {
            return Err(StoreError::Reply(format!(
                "{} replies to {} commands",
                replies.len(),
                2 * partitions.len()
            )));
        }
        let mut out = Vec::with_capacity(partitions.len());
        let mut it = replies.into_iter();
        while let (Some(len), Some(range)) = (it.next(), it.next()) {
            let entries: i64 = redis::from_redis_value(len).map_err(redis::RedisError::from)?;
            let range: StreamRangeReply =
                redis::from_redis_value(range).map_err(redis::RedisError::from)?;
            out.push(history(entries, &range));
        }
        Ok(out)
    }

    fn publish(&self, partitions: &[i32], found: &[StreamHistory]) {
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let now = dashstream::now_us();
        for (p, h) in partitions.iter().zip(found) {
            let label = p.to_string();
            // Only while still assigned, holding the assignment lock: a revoke that removed the
            // series is never undone by a measurement made just before it.
            consumer.context().if_assigned(*p, |_| {
                self.metrics
                    .stream_entries
                    .with_label_values(&[&label])
                    .set(h.entries);
                if h.empty {
                    let _ = self
                        .metrics
                        .stream_oldest_age
                        .remove_label_values(&[&label]);
                } else if let Some(us) = h.oldest_us {
                    self.metrics
                        .stream_oldest_age
                        .with_label_values(&[&label])
                        .set((now - us).max(0) as f64 / 1e6);
                }
                // An oldest entry without a usable time keeps the last age.
            });
        }
    }
}

/// What `XLEN` and `XRANGE - + COUNT 1` of one stream say.
pub fn history(entries: i64, first: &StreamRangeReply) -> StreamHistory {
    let Some(e) = first.ids.first() else {
        return StreamHistory {
            entries,
            oldest_us: None,
            empty: true,
        };
    };
    let event_us = match e.map.get("ev") {
        Some(redis::Value::BulkString(b)) => dashstream::proto::Event::decode(b.as_slice())
            .ok()
            .and_then(|ev| ev.header)
            .map(|h| h.timestamp_us)
            .filter(|us| *us > 0),
        _ => None,
    };
    let ts_us = match e.map.get("ts") {
        Some(redis::Value::BulkString(b)) => {
            std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
        }
        Some(redis::Value::Int(n)) => Some(*n),
        _ => None,
    };
    StreamHistory {
        entries: entries.max(1),
        oldest_us: event_us.or(ts_us),
        empty: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dashstream::proto::{Event, Header};
    use std::collections::HashMap;

    fn entry(fields: &[(&str, redis::Value)]) -> StreamRangeReply {
        let map: HashMap<String, redis::Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        StreamRangeReply {
            ids: vec![redis::streams::StreamId {
                id: "5-1".into(),
                map,
                ..Default::default()
            }],
        }
    }

    fn ev(timestamp_us: i64) -> redis::Value {
        let e = Event {
            header: Some(Header {
                timestamp_us,
                ..Default::default()
            }),
            ..Default::default()
        };
        redis::Value::BulkString(e.encode_to_vec())
    }

    #[test]
    fn oldest_time_is_the_events_producer_timestamp() {
        let h = history(
            7,
            &entry(&[("ev", ev(1_000)), ("ts", redis::Value::Int(9))]),
        );
        assert_eq!(
            h,
            StreamHistory {
                entries: 7,
                oldest_us: Some(1_000),
                empty: false
            }
        );
    }

    #[test]
    fn undecodable_event_falls_back_to_ts() {
        let bad = redis::Value::BulkString(vec![0xff, 0xff, 0xff]);
        let h = history(
            3,
            &entry(&[
                ("ev", bad),
                ("ts", redis::Value::BulkString(b"42".to_vec())),
            ]),
        );
        assert_eq!(h.oldest_us, Some(42));
        let h = history(3, &entry(&[("ev", redis::Value::BulkString(vec![0xff]))]));
        assert_eq!(h.oldest_us, None);
        assert!(!h.empty);
    }

    #[test]
    fn empty_stream() {
        let h = history(0, &StreamRangeReply { ids: vec![] });
        assert!(h.empty);
        assert_eq!(h.entries, 0);
        assert_eq!(h.oldest_us, None);
    }

    #[test]
    fn pace() {
        assert_eq!(interval(Duration::from_millis(500)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(30)), Duration::from_secs(30));
    }
}
