//! One task per assigned partition: takes the partition's records in offset order, decodes and
//! validates them, dead-letters the invalid ones, writes the rest to the partition's stream in
//! one atomic, fenced, idempotent step per batch, and only then publishes the new acknowledged
//! position (which the poll thread stores as the offset to commit). Redis or DLQ failures are
//! retried with backoff for as long as it takes: the partition waits, it never skips.

use crate::dlq::Dlq;
use crate::metrics::Metrics;
use crate::state::{Health, Progress};
use crate::store::{Claim, Entry, PartitionStore, StoreError, WriteOutcome};
use crate::PipelineOptions;
use dashstream::codec::{decode_record, InvalidRecord};
use dashstream::proto::Event;
use dashstream::seq::{SeqOutcome, SequenceTracker};
use prost::Message as _;
use rdkafka::message::{Message, OwnedMessage};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Asks Kafka for the partition's (low, high) watermarks.
pub type Watermarks = Arc<dyn Fn(i32) -> Result<(i64, i64), String> + Send + Sync>;

/// Everything a partition worker needs.
pub struct Worker {
    pub partition: i32,
    pub store: PartitionStore,
    pub owner: String,
    pub dlq: Arc<Dlq>,
    pub metrics: Arc<Metrics>,
    pub options: Arc<PipelineOptions>,
    pub progress: Arc<Progress>,
    pub health: Arc<Health>,
    pub sequences: Arc<Mutex<SequenceTracker>>,
    pub watermarks: Watermarks,
}

/// What one batch did, for the metrics.
struct Counts {
    skipped: u64,
    dlq: u64,
    written_records: u64,
    written_events: u64,
}

enum Flow {
    Continue,
    Stop,
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

impl Worker {
    /// Runs until the channel is closed and empty (drain), or the partition is fenced.
    pub async fn run(mut self, mut rx: mpsc::Receiver<OwnedMessage>) {
        let mut claim: Option<Claim> = None;
        let mut last_seen: i64 = -1;
        while let Some(first) = rx.recv().await {
            let mut bytes = first.payload().map_or(0, <[u8]>::len);
            let mut chunk = vec![first];
            while chunk.len() < self.options.write_batch && bytes < self.options.write_batch_bytes {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.payload().map_or(0, <[u8]>::len);
                        chunk.push(m);
                    }
                    Err(_) => break,
                }
            }
            if let Flow::Stop = self.process(&mut claim, &mut last_seen, chunk).await {
                break;
            }
        }
    }

    async fn claim(&self, reset: bool) -> Claim {
        let mut backoff = Backoff::new();
        loop {
            match self.store.claim(&self.owner, reset).await {
                Ok(c) => {
                    self.health.redis.ok();
                    match c.reason.as_str() {
                        "meta_lost" | "topic_recreated" => {
                            self.metrics
                                .stream_resets
                                .with_label_values(&[&c.reason])
                                .inc();
                            tracing::warn!(partition = self.partition, epoch = %c.epoch, reason = %c.reason, "stream reset: new epoch");
                        }
                        "new" => {
                            tracing::info!(partition = self.partition, epoch = %c.epoch, "stream epoch created")
                        }
                        _ => {}
                    }
                    tracing::debug!(
                        partition = self.partition,
                        next_offset = c.next_offset,
                        "partition claimed"
                    );
                    return c;
                }
                Err(e) => {
                    self.redis_failed(&e);
                    backoff.wait().await;
                }
            }
        }
    }

    fn redis_failed(&self, e: &StoreError) {
        self.metrics.redis_error(e.kind());
        self.health.redis.failed(e.to_string());
        tracing::warn!(partition = self.partition, kind = e.kind(), error = %e, "redis write failed; retrying");
    }

    async fn process(
        &mut self,
        claim: &mut Option<Claim>,
        last_seen: &mut i64,
        chunk: Vec<OwnedMessage>,
    ) -> Flow {
        let first = chunk[0].offset();
        let last = chunk[chunk.len() - 1].offset();
        let fresh_claim = claim.is_none();
        if fresh_claim {
            *claim = Some(self.claim(false).await);
            self.progress.start_offset.store(first, Ordering::Relaxed);
        }
        let c = claim.as_mut().expect("claimed");
        // Offsets going backwards (or starting below what the stream already holds) is either
        // a re-delivery after a crash, or a re-created topic. Kafka's high watermark tells.
        let backwards =
            (*last_seen >= 0 && first <= *last_seen) || (fresh_claim && first < c.next_offset);
        if backwards && self.topic_recreated(c.next_offset).await {
            *c = self.claim(true).await;
        }
        *last_seen = last;

        // Records below next_offset are in Redis already (or were dead-lettered): skip them.
        let skip = |m: &OwnedMessage| m.offset() < c.next_offset;
        let skipped = chunk.iter().filter(|m| skip(m)).count() as u64;
        let mut entries = Vec::new();
        let mut written_events: Vec<Event> = Vec::new();
        let mut invalid: Vec<(&OwnedMessage, InvalidRecord)> = Vec::new();
        for m in chunk.iter().filter(|m| !skip(m)) {
            match decode_record(m.payload().unwrap_or_default(), &self.options.limits) {
                Ok(events) => {
                    for (i, e) in events.into_iter().enumerate() {
                        entries.push(Entry {
                            offset: m.offset(),
                            id: dashstream::keys::entry_id(m.offset(), i),
                            event: e.encode_to_vec().into(),
                        });
                        written_events.push(e);
                    }
                }
                Err(e) => invalid.push((m, e)),
            }
        }
        for (m, e) in &invalid {
            self.metrics
                .invalid_records
                .with_label_values(&[e.reason.as_str()])
                .inc();
            tracing::warn!(partition = m.partition(), offset = m.offset(), reason = e.reason.as_str(), error = %e, "invalid record; dead-lettering");
        }
        // Dead-letter first: next_offset moves past these records only once the DLQ has them.
        futures::future::join_all(invalid.iter().map(|(m, e)| self.dead_letter(m, e))).await;

        let mut backoff = Backoff::new();
        let written = loop {
            let started = std::time::Instant::now();
            match self
                .store
                .write(&self.owner, &entries, last + 1, dashstream::now_us())
                .await
            {
                Ok(WriteOutcome::Ok {
                    written,
                    next_offset,
                }) => {
                    self.metrics
                        .redis_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.health.redis.ok();
                    c.next_offset = next_offset;
                    break written;
                }
                Ok(WriteOutcome::Fenced) => {
                    self.metrics.fenced.inc();
                    tracing::warn!(
                        partition = self.partition,
                        "partition claimed by another ingest; this worker stops"
                    );
                    return Flow::Stop;
                }
                Ok(WriteOutcome::Reset) => {
                    self.metrics
                        .stream_resets
                        .with_label_values(&["flushed"])
                        .inc();
                    tracing::warn!(
                        partition = self.partition,
                        "stream meta vanished (Redis flushed?): starting a new epoch"
                    );
                    *c = self.claim(false).await;
                }
                Err(e) => {
                    self.redis_failed(&e);
                    backoff.wait().await;
                }
            }
        };
        self.progress.acked_next.store(last + 1, Ordering::Relaxed);
        self.progress.touch();
        self.metrics
            .partition_acked_offset
            .with_label_values(&[&self.partition.to_string()])
            .set(last + 1);
        let processed = chunk.len() as u64 - skipped;
        let dlq = invalid.len() as u64;
        let counts = Counts {
            skipped,
            dlq,
            written_records: processed - dlq,
            written_events: written,
        };
        self.account(counts, &written_events);
        Flow::Continue
    }

    async fn dead_letter(&self, m: &OwnedMessage, e: &InvalidRecord) {
        let mut backoff = Backoff::new();
        loop {
            match self.dlq.send(m, e).await {
                Ok(()) => return,
                Err(err) => {
                    self.metrics.dlq_send_failures.inc();
                    tracing::error!(partition = m.partition(), offset = m.offset(), error = %err, "DLQ send failed; retrying (the partition waits)");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn topic_recreated(&self, next_offset: i64) -> bool {
        let wm = self.watermarks.clone();
        let p = self.partition;
        match tokio::task::spawn_blocking(move || wm(p)).await {
            Ok(Ok((_, high))) if next_offset > high => {
                tracing::warn!(
                    partition = p,
                    next_offset,
                    high,
                    "stream is ahead of the topic: the topic was re-created"
                );
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(e)) => {
                self.metrics.kafka_error("watermarks");
                tracing::warn!(partition = p, error = %e, "watermark check failed; assuming re-delivery");
                false
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "watermark check panicked; assuming re-delivery");
                false
            }
        }
    }

    fn account(&self, counts: Counts, events: &[Event]) {
        let m = &self.metrics;
        m.records
            .with_label_values(&["duplicate"])
            .inc_by(counts.skipped);
        m.records.with_label_values(&["dlq"]).inc_by(counts.dlq);
        m.records
            .with_label_values(&["written"])
            .inc_by(counts.written_records);
        m.events_written.inc_by(counts.written_events);
        if counts.written_events == 0 {
            return;
        }
        let now = dashstream::now_us();
        let mut seq = self.sequences.lock().expect("sequence lock");
        for e in events {
            let Some(h) = &e.header else { continue };
            let age_us = now - h.timestamp_us;
            if age_us < 0 {
                m.clock_skew.inc();
            } else {
                m.e2e_latency.observe(age_us as f64 / 1e6);
            }
            match seq.observe(&h.thread_id, h.sequence) {
                SeqOutcome::Gap { .. } => m.sequence.with_label_values(&["gap"]).inc(),
                SeqOutcome::Duplicate => m.sequence.with_label_values(&["duplicate"]).inc(),
                SeqOutcome::Reorder => m.sequence.with_label_values(&["reorder"]).inc(),
                _ => {}
            }
        }
        m.sequence_tracked_threads.set(seq.len() as i64);
    }
}
