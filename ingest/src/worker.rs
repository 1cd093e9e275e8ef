//! One task per assigned partition. It reads the partition's own librdkafka queue (split from
//! the group consumer when the partition was assigned), so backpressure is simply not reading:
//! librdkafka stops fetching the partition once its queue holds `queued.max.messages.kbytes`.
//!
//! The worker is a small state machine around four steps:
//! 1. **claim** ([`Worker::claim`]): eagerly, as soon as the partition is assigned, and again
//!    after a fence or a reset. It compares the stream's `next_offset` with the group's
//!    committed offset: a committed offset above it means Redis lost acknowledged writes
//!    (restored snapshot, failover to a lagging replica). If Kafka still holds the range, the
//!    partition is sought back and re-ingested; otherwise a new epoch (`redis_rollback`)
//!    tells every reader about the gap.
//! 2. **decode** ([`Worker::take_chunk`]): takes records from the queue without waiting, up to
//!    a bound in events and in bytes, validates them with the zero-copy scanner and appends
//!    the original event bytes straight into the Redis command. Invalid records become DLQ
//!    documents. A chunk ends early at a *boundary*: offsets going backwards (re-delivery, or a
//!    re-created topic) or jumping forwards (Kafka's retention may have deleted records before
//!    they were read); the worker checks Kafka's watermarks before going on.
//! 3. **write** ([`Worker::write`]): dead-letters first, then runs the write script, which
//!    checks ownership and the expected `next_offset` once per batch. Every refusal has one
//!    answer: claim again if needed, seek the partition to the position Redis holds, and read
//!    on from there. Redis errors are retried with jittered backoff for as long as it takes:
//!    the partition waits, it never skips.
//! 4. **ack**: only after Redis acknowledged the batch, its end (last offset + 1) is stored
//!    for commit, and lag, sequence and latency accounting are updated.

use crate::consumer::IngestContext;
use crate::dlq::{DeadLetter, Dlq};
use crate::metrics::{Metrics, PartitionMetrics};
use crate::state::{Health, Progress};
use crate::store::{
    Claim, ClaimReason, NewEpoch, PartitionStore, StoreError, WriteBatch, WriteOutcome,
};
use crate::PipelineOptions;
use dashstream::backoff::Backoff;
use dashstream::codec::scan_record;
use dashstream::seq::{thread_hash, SeqOutcome, SequenceTracker};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often an idle worker wakes to refresh its position (transaction markers, see `idle`).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The partition queue this worker reads.
pub type Queue = rdkafka::consumer::base_consumer::PartitionQueue<IngestContext>;

/// Kafka requests about one partition, made off the async runtime (they block).
#[derive(Clone)]
pub struct PartitionKafka {
    pub consumer: Arc<BaseConsumer<IngestContext>>,
    /// A client of the same group that never subscribes: watermarks and committed offsets.
    pub client: Arc<BaseConsumer>,
    pub topic: String,
    pub partition: i32,
    /// Deadline of one request.
    pub timeout: Duration,
}

impl PartitionKafka {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, String> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || f(&me)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("kafka request task failed: {e}")),
        }
    }

    /// (low, high) watermarks.
    pub async fn watermarks(&self) -> Result<(i64, i64), String> {
        self.blocking(|k| k.client.fetch_watermarks(&k.topic, k.partition, k.timeout))
            .await
    }

    /// The group's committed offset, if any.
    pub async fn committed(&self) -> Result<Option<i64>, String> {
        self.blocking(|k| {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&k.topic, k.partition);
            let got = k.client.committed_offsets(tpl, k.timeout)?;
            Ok(
                match got
                    .find_partition(&k.topic, k.partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
        })
        .await
    }

    /// Moves the partition's fetch position; records already queued are discarded.
    pub async fn seek(&self, offset: i64) -> Result<(), String> {
        self.blocking(move |k| {
            k.consumer
                .seek(&k.topic, k.partition, Offset::Offset(offset), k.timeout)
        })
        .await
    }

    /// Whether this process still holds the partition (and did not lose it to a timeout).
    fn still_owned(&self) -> bool {
        if self.consumer.assignment_lost() {
            return false;
        }
        self.consumer
            .assignment()
            .is_ok_and(|tpl| tpl.find_partition(&self.topic, self.partition).is_some())
    }

    /// The consumer's position in the partition (past transaction markers), if known.
    fn position(&self) -> Option<i64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.topic, self.partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    fn store_offset(&self, next: i64) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(next))?;
        self.consumer.store_offsets(&tpl)
    }
}

/// Why a chunk ended before its bounds.
enum Boundary {
    /// The record's offset is at or below one already seen, or below the stream's position
    /// right after a claim: a re-delivery, or the topic was re-created.
    Backwards(OwnedMessage),
    /// The record's offset is past the expected position: records were skipped (transaction
    /// markers, compaction) or deleted by retention before they were read.
    Jump(OwnedMessage),
}

/// What one pass over the queue took.
struct Chunk {
    batch: WriteBatch,
    /// Offset of the first record taken (not skipped), -1 if none.
    first: i64,
    /// Offset of the last record taken (not skipped), -1 if none.
    last: i64,
    skipped: u64,
    records: u64,
    dlq: Vec<DeadLetter>,
    dlq_bytes: usize,
    boundary: Option<Boundary>,
    /// Anything at all came out of the queue (records, skipped ones or errors).
    polled: bool,
}

/// Where the worker stands in its partition.
struct Position {
    claim: Claim,
    /// The stream's `next_offset` as this worker last learnt it (claim or own writes).
    expected: i64,
    /// Highest offset taken from the queue since the last claim or seek, -1 if none.
    last_seen: i64,
    /// A record held back at a boundary, processed first by the next chunk.
    carry: Option<OwnedMessage>,
}

/// What to do after a step.
enum Next {
    Continue,
    Stop,
}

/// Everything a partition worker needs.
pub struct Worker {
    pub partition: i32,
    pub queue: Queue,
    pub kafka: PartitionKafka,
    pub store: PartitionStore,
    pub owner: String,
    pub dlq: Arc<Dlq>,
    pub metrics: Arc<Metrics>,
    pub options: Arc<PipelineOptions>,
    pub progress: Arc<Progress>,
    pub health: Arc<Health>,
}

/// The worker's own state, created when it starts.
struct Running {
    pm: PartitionMetrics,
    sequences: SequenceTracker,
    /// Per event of the current chunk: (thread hash, sequence, producer timestamp).
    seen: Vec<(u64, u64, i64)>,
    /// Follow-up claims after a reset are not counted as a second reset.
    after_reset: bool,
}

impl Worker {
    /// Runs until `stop` (revoke or shutdown); the in-flight write finishes first.
    pub async fn run(mut self, stop: CancellationToken) {
        let notify = Arc::new(Notify::new());
        {
            let n = notify.clone();
            self.queue.set_nonempty_callback(move || n.notify_one());
        }
        let mut st = Running {
            pm: self.metrics.partition(self.partition),
            sequences: SequenceTracker::new(self.options.sequence_capacity),
            seen: Vec::new(),
            after_reset: false,
        };
        let Some(claim) = self.claim(None, &mut st, &stop).await else {
            return;
        };
        let mut pos = Position {
            expected: claim.next_offset,
            claim,
            last_seen: -1,
            carry: None,
        };
        if let Next::Stop = self.check_rollback_at_claim(&mut pos, &mut st, &stop).await {
            return;
        }
        while !stop.is_cancelled() {
            let chunk = self.take_chunk(&mut pos, &mut st);
            if !chunk.polled {
                self.idle();
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(IDLE_WAKE) => {}
                }
                continue;
            }
            if let Next::Stop = self.commit_chunk(chunk, &mut pos, &mut st, &stop).await {
                break;
            }
        }
        st.pm.forget_sequences(st.sequences.len());
    }

    /// Claims the partition, retrying Redis errors until `stop`. `None` when stopped.
    async fn claim(
        &self,
        new_epoch: Option<NewEpoch>,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Option<Claim> {
        let mut backoff = Backoff::new();
        loop {
            let attempt = tokio::select! {
                r = self.store.claim(&self.owner, new_epoch) => r,
                _ = stop.cancelled() => return None,
            };
            match attempt {
                Ok(c) => {
                    self.health.redis.ok();
                    if c.progress_us >= 0 {
                        let ago = (dashstream::now_us() - c.progress_us).max(0) as u64;
                        self.progress.progressed_ago(Duration::from_micros(ago));
                    }
                    self.report_claim(&c, st).await;
                    st.after_reset = false;
                    return Some(c);
                }
                Err(e) => {
                    self.redis_failed(&e);
                    if !backoff.wait_or_cancelled(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn report_claim(&self, c: &Claim, st: &Running) {
        let p = self.partition;
        match c.reason {
            ClaimReason::Existing => {
                tracing::debug!(
                    partition = p,
                    next_offset = c.next_offset,
                    "partition claimed"
                )
            }
            ClaimReason::Forced(r) => {
                self.metrics.stream_reset(r.as_str());
                tracing::warn!(partition = p, epoch = %c.epoch, reason = r.as_str(), "stream reset: new epoch");
            }
            ClaimReason::MetaLost | ClaimReason::New if st.after_reset => {
                tracing::warn!(partition = p, epoch = %c.epoch, "new epoch after the stream's meta vanished");
            }
            ClaimReason::MetaLost => {
                self.metrics.stream_reset("meta_lost");
                tracing::warn!(partition = p, epoch = %c.epoch, "stream meta lost: new epoch after the stream's last entry");
            }
            ClaimReason::New => {
                // A new stream for a partition the group has consumed before means Redis lost
                // it (flushed while no ingest was running).
                if matches!(self.kafka.committed().await, Ok(Some(_))) {
                    self.metrics.stream_reset("flushed");
                    tracing::warn!(partition = p, epoch = %c.epoch, "stream missing though the group has committed offsets (Redis flushed?): new epoch");
                } else {
                    tracing::info!(partition = p, epoch = %c.epoch, "stream epoch created");
                }
            }
        }
    }

    /// Right after a claim: a committed offset above the stream's `next_offset` means Redis
    /// went backwards.
    async fn check_rollback_at_claim(
        &self,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Next {
        if pos.claim.reason != ClaimReason::Existing || pos.claim.next_offset < 0 {
            return Next::Continue;
        }
        let committed = match self
            .retry_kafka("committed offset", stop, || self.kafka.committed())
            .await
        {
            Some(c) => c,
            None => return Next::Stop,
        };
        match committed {
            Some(c) if c > pos.claim.next_offset => {
                tracing::error!(
                    partition = self.partition,
                    committed = c,
                    next_offset = pos.claim.next_offset,
                    "Redis holds less than Kafka has committed: it lost acknowledged writes"
                );
                self.recover_rollback(pos.claim.next_offset, pos, st, stop)
                    .await
            }
            _ => Next::Continue,
        }
    }

    /// Redis holds the stream up to `held` (exclusive) only. Re-ingest from there if Kafka
    /// still has it, else start a new epoch from the oldest record Kafka has.
    async fn recover_rollback(
        &self,
        held: i64,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Next {
        let Some((low, _)) = self
            .retry_kafka("watermarks", stop, || self.kafka.watermarks())
            .await
        else {
            return Next::Stop;
        };
        if low <= held {
            self.metrics
                .redis_rollbacks
                .with_label_values(&["reingest"])
                .inc();
            tracing::warn!(
                partition = self.partition,
                from = held,
                "re-ingesting what Redis lost from Kafka"
            );
            pos.expected = held;
            self.seek(held, pos, stop).await
        } else {
            self.metrics
                .redis_rollbacks
                .with_label_values(&["new_epoch"])
                .inc();
            tracing::error!(
                partition = self.partition,
                lost_from = held,
                kafka_low = low,
                "Kafka no longer holds what Redis lost: new epoch"
            );
            let Some(c) = self.claim(Some(NewEpoch::RedisRollback), st, stop).await else {
                return Next::Stop;
            };
            pos.expected = c.next_offset;
            pos.claim = c;
            self.seek(low, pos, stop).await
        }
    }

    /// Seeks the partition to `offset`, retrying until `stop`; forgets what was read.
    async fn seek(&self, offset: i64, pos: &mut Position, stop: &CancellationToken) -> Next {
        pos.carry = None;
        pos.last_seen = -1;
        match self
            .retry_kafka("seek", stop, || self.kafka.seek(offset))
            .await
        {
            Some(()) => Next::Continue,
            None => Next::Stop,
        }
    }

    /// Runs a Kafka request until it succeeds (counted and retried) or `stop`.
    async fn retry_kafka<T, F, Fut>(
        &self,
        what: &str,
        stop: &CancellationToken,
        mut f: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut backoff = Backoff::new();
        loop {
            let r = tokio::select! {
                r = f() => r,
                _ = stop.cancelled() => return None,
            };
            match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.metrics
                        .kafka_error(if what == "seek" { "seek" } else { "watermarks" });
                    tracing::warn!(partition = self.partition, error = %e, "{what} request failed; retrying");
                    if !backoff.wait_or_cancelled(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Takes what the queue holds now, up to the chunk bounds (no waiting, no await: records
    /// borrowed from librdkafka never outlive this call).
    fn take_chunk(&self, pos: &mut Position, st: &mut Running) -> Chunk {
        let mut chunk = Chunk {
            batch: self
                .store
                .batch(&self.owner, pos.expected, dashstream::now_us()),
            first: -1,
            last: -1,
            skipped: 0,
            records: 0,
            dlq: Vec::new(),
            dlq_bytes: 0,
            boundary: None,
            polled: false,
        };
        st.seen.clear();
        if let Some(m) = pos.carry.take() {
            chunk.polled = true;
            self.add(&m, pos, st, &mut chunk);
        }
        while chunk.boundary.is_none()
            && chunk.batch.entries() < self.options.write_batch_events
            && chunk.batch.bytes() + chunk.dlq_bytes < self.options.write_batch_bytes
        {
            match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    chunk.polled = true;
                    self.classify(&m, pos, st, &mut chunk);
                }
                Some(Err(e)) => {
                    chunk.polled = true;
                    self.metrics.kafka_error("consume");
                    self.health.kafka.failed(e.to_string());
                    tracing::warn!(partition = self.partition, error = %e, "consume error");
                }
            }
        }
        let after = if chunk.last >= 0 {
            chunk.last + 1
        } else {
            pos.expected
        };
        chunk.batch.finish(after);
        chunk
    }

    /// Takes `m` into the chunk, or ends the chunk before it at a boundary.
    fn classify(
        &self,
        m: &BorrowedMessage<'_>,
        pos: &mut Position,
        st: &mut Running,
        chunk: &mut Chunk,
    ) {
        let o = m.offset();
        let backwards =
            (pos.last_seen >= 0 && o <= pos.last_seen) || (pos.last_seen < 0 && o < pos.expected);
        let ahead_of = pos.expected.max(pos.last_seen + 1);
        let jump = pos.expected >= 0 && o > ahead_of;
        if backwards {
            chunk.boundary = Some(Boundary::Backwards(m.detach()));
        } else if jump {
            chunk.boundary = Some(Boundary::Jump(m.detach()));
        } else {
            self.add(m, pos, st, chunk);
        }
    }

    /// Decodes `m` into the chunk (or skips it: already in Redis).
    fn add<M: Message>(&self, m: &M, pos: &mut Position, st: &mut Running, chunk: &mut Chunk) {
        let o = m.offset();
        pos.last_seen = pos.last_seen.max(o);
        if o < pos.expected {
            chunk.skipped += 1;
            return;
        }
        if chunk.first < 0 {
            chunk.first = o;
        }
        chunk.last = o;
        chunk.records += 1;
        match scan_record(m.payload().unwrap_or_default(), &self.options.limits) {
            Ok(record) => {
                for (i, e) in record.events().iter().enumerate() {
                    chunk.batch.push(o, i, record.event_bytes(e));
                    st.seen
                        .push((thread_hash(record.thread_id(e)), e.sequence, e.timestamp_us));
                }
            }
            Err(err) => {
                self.metrics.invalid(err.reason);
                if st.pm.should_log_invalid() {
                    tracing::warn!(partition = self.partition, offset = o, reason = err.reason.as_str(), error = %err, "invalid record; dead-lettering");
                }
                let dl = self.dlq.letter(m, &err);
                chunk.dlq_bytes += dl.size();
                chunk.dlq.push(dl);
            }
        }
    }

    /// Dead-letters, writes, acknowledges, then handles the boundary the chunk stopped at.
    async fn commit_chunk(
        &self,
        chunk: Chunk,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Next {
        let Chunk {
            batch,
            first,
            last,
            skipped,
            records,
            dlq,
            boundary,
            ..
        } = chunk;
        self.metrics.records_duplicate.inc_by(skipped);
        if records > 0 {
            self.dead_letter(&dlq).await;
            match self.write(&batch, first, pos, st, stop).await {
                Some(true) => self.ack(
                    last + 1,
                    records - dlq.len() as u64,
                    dlq.len() as u64,
                    batch.entries(),
                    st,
                ),
                Some(false) => return Next::Continue, // sought elsewhere: the chunk is re-read
                None => return Next::Stop,
            }
        }
        match boundary {
            None => Next::Continue,
            Some(Boundary::Backwards(m)) => self.on_backwards(m, pos, st, stop).await,
            Some(Boundary::Jump(m)) => self.on_jump(m, pos, st, stop).await,
        }
    }

    /// Sends the chunk's DLQ documents (a few at a time) and waits until Kafka has them all.
    async fn dead_letter(&self, letters: &[DeadLetter]) {
        futures::stream::iter(letters)
            .for_each_concurrent(self.options.dlq_concurrency, |l| async move {
                let mut backoff = Backoff::new();
                while let Err(err) = self.dlq.send(l).await {
                    self.metrics.dlq_send_failures.inc();
                    tracing::error!(partition = self.partition, offset = l.offset, error = %err, "DLQ send failed; retrying (the partition waits)");
                    backoff.wait().await;
                }
            })
            .await;
    }

    /// Runs the write until Redis answers. `Some(true)`: written (or found written);
    /// `Some(false)`: the partition was sought to another position; `None`: stopped.
    async fn write(
        &self,
        batch: &WriteBatch,
        first: i64,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Option<bool> {
        let mut backoff = Backoff::new();
        loop {
            let started = std::time::Instant::now();
            match self.store.write(batch).await {
                Ok(WriteOutcome::Ok { next_offset }) => {
                    self.metrics
                        .redis_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.health.redis.ok();
                    pos.expected = next_offset;
                    return Some(true);
                }
                Ok(WriteOutcome::Done { next_offset }) => {
                    self.health.redis.ok();
                    self.metrics
                        .write_conflicts
                        .with_label_values(&["done"])
                        .inc();
                    pos.expected = next_offset;
                    return Some(true);
                }
                Ok(WriteOutcome::Ahead { next_offset }) => {
                    self.metrics
                        .write_conflicts
                        .with_label_values(&["ahead"])
                        .inc();
                    tracing::warn!(
                        partition = self.partition,
                        expected = pos.expected,
                        next_offset,
                        "the stream already holds more than expected; reading on after it"
                    );
                    pos.expected = next_offset;
                    return self.reread(next_offset.max(first), pos, stop).await;
                }
                Ok(WriteOutcome::Rollback { next_offset }) => {
                    tracing::error!(
                        partition = self.partition,
                        expected = pos.expected,
                        next_offset,
                        "Redis went backwards: it lost acknowledged writes"
                    );
                    return match self.recover_rollback(next_offset, pos, st, stop).await {
                        Next::Continue => Some(false),
                        Next::Stop => None,
                    };
                }
                Ok(WriteOutcome::Fenced) => {
                    self.metrics.fenced.inc();
                    if !self.kafka.still_owned() {
                        tracing::warn!(
                            partition = self.partition,
                            "fenced, and the partition is no longer assigned here: stopping"
                        );
                        return None;
                    }
                    tracing::warn!(partition = self.partition, "fenced by a stale claim while this process owns the partition; claiming again");
                    if !backoff.wait_or_cancelled(stop).await {
                        return None;
                    }
                    self.metrics.reclaims.inc();
                    return self.reclaim(first, None, pos, st, stop).await;
                }
                Ok(WriteOutcome::Reset) => {
                    self.metrics.stream_reset("flushed");
                    tracing::warn!(
                        partition = self.partition,
                        "stream meta vanished (Redis flushed?): starting a new epoch"
                    );
                    st.after_reset = true;
                    return self.reclaim(first, None, pos, st, stop).await;
                }
                Err(e) => {
                    self.redis_failed(&e);
                    if !backoff.wait_or_cancelled(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Claims again and reads on from where the stream now stands (never below `first`, the
    /// chunk's first record, which is not in it yet).
    async fn reclaim(
        &self,
        first: i64,
        new_epoch: Option<NewEpoch>,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Option<bool> {
        let c = self.claim(new_epoch, st, stop).await?;
        pos.expected = c.next_offset;
        let from = c.next_offset.max(first);
        pos.claim = c;
        if let Next::Stop = self.check_rollback_at_claim(pos, st, stop).await {
            return None;
        }
        self.reread(from, pos, stop).await
    }

    async fn reread(
        &self,
        from: i64,
        pos: &mut Position,
        stop: &CancellationToken,
    ) -> Option<bool> {
        match self.seek(from, pos, stop).await {
            Next::Continue => Some(false),
            Next::Stop => None,
        }
    }

    /// Redis has the batch: publish its end for commit, then account for it.
    fn ack(&self, next: i64, written: u64, dlq: u64, events: usize, st: &mut Running) {
        if let Err(e) = self.kafka.store_offset(next) {
            // Not assigned any more (revoked meanwhile): the next owner reads from the last
            // commit and skips what Redis holds.
            tracing::debug!(partition = self.partition, error = %e, "storing the offset failed");
        }
        self.progress.acked_next.store(next, Ordering::Relaxed);
        self.progress.touch();
        st.pm.acked_offset.set(next);
        let m = &self.metrics;
        m.records_written.inc_by(written);
        m.records_dlq.inc_by(dlq);
        m.events_written.inc_by(events as u64);
        let now = dashstream::now_us();
        let before = st.sequences.len();
        for &(thread, seq, ts) in &st.seen {
            let age_us = now - ts;
            if age_us < 0 {
                m.clock_skew.inc();
            } else {
                m.e2e_latency.observe(age_us as f64 / 1e6);
            }
            match st.sequences.observe_hash(thread, seq) {
                SeqOutcome::Gap { .. } => m.sequence_gap.inc(),
                SeqOutcome::Duplicate => m.sequence_duplicate.inc(),
                SeqOutcome::Reorder => m.sequence_reorder.inc(),
                _ => {}
            }
        }
        m.sequence_tracked_threads
            .add(st.sequences.len() as i64 - before as i64);
    }

    /// Offsets went backwards at `m`: a re-delivery, unless the stream is ahead of the topic
    /// (the topic was deleted and re-created, so offsets started again).
    async fn on_backwards(
        &self,
        m: OwnedMessage,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Next {
        let o = m.offset();
        if o < pos.expected {
            let Some((_, high)) = self
                .retry_kafka("watermarks", stop, || self.kafka.watermarks())
                .await
            else {
                return Next::Stop;
            };
            if pos.expected > high {
                tracing::warn!(
                    partition = self.partition,
                    next_offset = pos.expected,
                    high,
                    "the stream is ahead of the topic: the topic was re-created"
                );
                let Some(c) = self.claim(Some(NewEpoch::TopicRecreated), st, stop).await else {
                    return Next::Stop;
                };
                pos.expected = c.next_offset;
                pos.claim = c;
            }
        }
        // Either way, `m` is read next from where it is (skipped if Redis has it).
        pos.last_seen = o - 1;
        pos.carry = Some(m);
        Next::Continue
    }

    /// Offsets jumped forwards at `m`. If Kafka's oldest record is now past the position the
    /// stream expects, retention deleted records before they were read (the consumer's
    /// position was reset): the stream starts a new epoch so readers are told. Otherwise the
    /// skipped offsets held no data (transaction markers, compaction).
    async fn on_jump(
        &self,
        m: OwnedMessage,
        pos: &mut Position,
        st: &mut Running,
        stop: &CancellationToken,
    ) -> Next {
        let expected = pos.expected;
        let Some((low, _)) = self
            .retry_kafka("watermarks", stop, || self.kafka.watermarks())
            .await
        else {
            return Next::Stop;
        };
        if low > expected {
            tracing::error!(
                partition = self.partition,
                expected,
                kafka_low = low,
                next = m.offset(),
                "records were deleted by Kafka's retention before they were ingested: new epoch"
            );
            self.metrics.records_lost.inc_by((low - expected) as u64);
            let Some(c) = self.claim(Some(NewEpoch::OffsetReset), st, stop).await else {
                return Next::Stop;
            };
            pos.expected = c.next_offset;
            pos.claim = c;
        }
        // The stream goes on at `m`: the next write moves `next_offset` past it.
        pos.last_seen = m.offset() - 1;
        pos.carry = Some(m);
        Next::Continue
    }

    /// Nothing to read: when everything taken is acknowledged, the consumer's position (which
    /// moves past transaction markers that are never delivered) is the true progress.
    fn idle(&self) {
        let acked = self.progress.acked_next.load(Ordering::Relaxed);
        if let Some(p) = self.kafka.position() {
            if p > acked && acked >= 0 {
                self.progress.acked_next.store(p, Ordering::Relaxed);
            }
        }
    }

    fn redis_failed(&self, e: &StoreError) {
        self.metrics.redis_error(e.kind());
        self.health.redis.failed(e.to_string());
        tracing::warn!(partition = self.partition, kind = e.kind(), error = %e, "redis write failed; retrying");
    }
}
