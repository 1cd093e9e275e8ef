//! The Kafka side: one OS thread polls the group consumer (so rebalance callbacks, which run
//! inside `poll`, may block while in-flight work drains), hands each record to its partition's
//! worker through a bounded queue, pauses a partition whose queue is full instead of buffering
//! more, and stores each partition's acknowledged position as the offset to commit.
//!
//! On revoke (and on shutdown) the affected workers' queues are closed; the thread waits up to
//! the drain deadline for them to finish, stores their final positions and commits
//! synchronously before the partitions are given up. A worker that misses the deadline is
//! aborted: its partition's next owner fences it off in Redis (see `store`).

use crate::metrics::Metrics;
use crate::state::{Health, Progress};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Starts the worker of a newly assigned partition: returns its queue and task.
pub type SpawnWorker =
    Box<dyn Fn(i32, Arc<Progress>) -> (mpsc::Sender<OwnedMessage>, JoinHandle<()>) + Send + Sync>;

struct Slot {
    tx: mpsc::Sender<OwnedMessage>,
    join: JoinHandle<()>,
    progress: Arc<Progress>,
    /// Offset last stored for commit.
    stored: i64,
    /// Records taken from Kafka while the queue was full (the partition is paused).
    overflow: VecDeque<OwnedMessage>,
}

/// Consumer context: owns the partition workers and handles rebalances.
pub struct IngestContext {
    topic: String,
    rt: tokio::runtime::Handle,
    slots: Mutex<HashMap<i32, Slot>>,
    spawn: SpawnWorker,
    drain_timeout: Duration,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl IngestContext {
    pub fn new(
        topic: String,
        rt: tokio::runtime::Handle,
        spawn: SpawnWorker,
        drain_timeout: Duration,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            topic,
            rt,
            slots: Mutex::new(HashMap::new()),
            spawn,
            drain_timeout,
            metrics,
            health,
        }
    }

    /// Progress of every assigned partition (for the lag monitor and staleness).
    pub fn assigned(&self) -> Vec<(i32, Arc<Progress>)> {
        let slots = self.slots.lock().expect("slots lock");
        slots
            .iter()
            .map(|(p, s)| (*p, s.progress.clone()))
            .collect()
    }

    /// Runs `f` only if `partition` is still assigned, holding the assignment lock, so a
    /// partition's series are never re-created after its revoke removed them.
    pub fn if_assigned(&self, partition: i32, f: impl FnOnce(&Progress)) {
        let slots = self.slots.lock().expect("slots lock");
        if let Some(s) = slots.get(&partition) {
            f(&s.progress);
        }
    }

    /// Runs `f` for every assigned partition, holding the assignment lock.
    pub fn for_each_assigned(&self, mut f: impl FnMut(i32, &Progress)) {
        let slots = self.slots.lock().expect("slots lock");
        for (p, s) in slots.iter() {
            f(*p, &s.progress);
        }
    }

    fn tpl(&self, partition: i32, offset: Option<i64>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let o = offset.map_or(Offset::Invalid, Offset::Offset);
        let _ = tpl.add_partition_offset(&self.topic, partition, o);
        tpl
    }

    /// Closes the queues of `partitions`, waits for their workers within the deadline, stores
    /// their final positions and commits synchronously.
    fn drain(&self, consumer: &BaseConsumer<IngestContext>, partitions: &[i32]) {
        let drained: Vec<(i32, Slot)> = {
            let mut slots = self.slots.lock().expect("slots lock");
            partitions
                .iter()
                .filter_map(|p| slots.remove(p).map(|s| (*p, s)))
                .collect()
        };
        if drained.is_empty() {
            return;
        }
        let mut joins = Vec::new();
        let mut positions = Vec::new();
        for (p, slot) in drained {
            // Dropping the sender closes the queue: the worker finishes what it holds.
            drop(slot.tx);
            joins.push(slot.join);
            positions.push((p, slot.progress, slot.stored));
        }
        let aborts: Vec<_> = joins.iter().map(JoinHandle::abort_handle).collect();
        let deadline = self.drain_timeout;
        let finished = self.rt.block_on(async move {
            tokio::time::timeout(deadline, futures::future::join_all(joins)).await
        });
        if finished.is_err() {
            self.metrics.drain_timeouts.inc();
            tracing::warn!(
                ?partitions,
                ?deadline,
                "in-flight work did not drain in time; aborting workers (they are fenced in Redis)"
            );
            for a in aborts {
                a.abort();
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, progress, stored) in &positions {
            let acked = progress
                .acked_next
                .load(std::sync::atomic::Ordering::Relaxed);
            if acked > *stored {
                let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(acked));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::warn!(error = %e, "storing final offsets failed");
            }
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.kafka_error("commit");
                tracing::warn!(error = %e, "commit on drain failed");
            }
        }
        for (p, _, _) in &positions {
            self.metrics.forget_partition(*p);
        }
        self.metrics
            .assigned_partitions
            .set(self.slots.lock().expect("slots lock").len() as i64);
        tracing::info!(partitions = ?partitions, "partitions drained and committed");
    }

    /// Hands a record to its partition's worker, pausing the partition when the queue is full.
    fn dispatch(&self, consumer: &BaseConsumer<IngestContext>, msg: OwnedMessage) {
        let p = msg.partition();
        let mut slots = self.slots.lock().expect("slots lock");
        let Some(slot) = slots.get_mut(&p) else {
            tracing::warn!(
                partition = p,
                "record for a partition without a worker; it will be re-read by its owner"
            );
            return;
        };
        if !slot.overflow.is_empty() {
            slot.overflow.push_back(msg);
            return;
        }
        match slot.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                tracing::debug!(
                    partition = p,
                    offset = msg.offset(),
                    "queue full; pausing partition"
                );
                slot.overflow.push_back(msg);
                self.metrics.partition_pauses.inc();
                if let Err(e) = consumer.pause(&self.tpl(p, None)) {
                    tracing::warn!(partition = p, error = %e, "pause failed");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The worker stopped (fenced): another process owns the partition now.
            }
        }
    }

    /// Moves held records into queues with room again, resuming those partitions, and stores
    /// newly acknowledged positions.
    fn housekeeping(&self, consumer: &BaseConsumer<IngestContext>) {
        let mut slots = self.slots.lock().expect("slots lock");
        let mut store = TopicPartitionList::new();
        for (p, slot) in slots.iter_mut() {
            // Hysteresis: refill only once half the queue is free, so a busy partition is not
            // paused and resumed (a fetch round trip each time) for every few records.
            if !slot.overflow.is_empty() && slot.tx.capacity() * 2 >= slot.tx.max_capacity() {
                while let Some(m) = slot.overflow.pop_front() {
                    match slot.tx.try_send(m) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(m)) => {
                            slot.overflow.push_front(m);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            slot.overflow.clear();
                        }
                    }
                }
                if slot.overflow.is_empty() {
                    tracing::debug!(partition = p, "queue has room; resuming partition");
                    if let Err(e) = consumer.resume(&self.tpl(*p, None)) {
                        tracing::warn!(partition = p, error = %e, "resume failed");
                    }
                }
            }
            let acked = slot
                .progress
                .acked_next
                .load(std::sync::atomic::Ordering::Relaxed);
            if acked > slot.stored {
                let _ = store.add_partition_offset(&self.topic, *p, Offset::Offset(acked));
                slot.stored = acked;
            }
        }
        drop(slots);
        if store.count() > 0 {
            if let Err(e) = consumer.store_offsets(&store) {
                tracing::warn!(error = %e, "storing offsets failed");
            }
        }
    }
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_error("client");
        self.health.kafka.failed(format!("{error}: {reason}"));
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.metrics.rebalances.with_label_values(&["revoke"]).inc();
            let parts: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            tracing::info!(partitions = ?parts, lost = consumer.assignment_lost(), "partitions revoked; draining");
            self.drain(consumer, &parts);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let mut slots = self.slots.lock().expect("slots lock");
                let mut added = Vec::new();
                for e in tpl.elements_for_topic(&self.topic) {
                    let p = e.partition();
                    if slots.contains_key(&p) {
                        continue;
                    }
                    let progress = Arc::new(Progress::new());
                    let _guard = self.rt.enter();
                    let (tx, join) = (self.spawn)(p, progress.clone());
                    slots.insert(
                        p,
                        Slot {
                            tx,
                            join,
                            progress,
                            stored: -1,
                            overflow: VecDeque::new(),
                        },
                    );
                    self.metrics
                        .partition_assigned
                        .with_label_values(&[&p.to_string()])
                        .set(1);
                    added.push(p);
                }
                self.metrics.assigned_partitions.set(slots.len() as i64);
                self.health
                    .joined
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(partitions = ?added, total = slots.len(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {
                self.health
                    .joined
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }
}

/// The poll loop; returns after `stop` is set, with every partition drained and committed.
pub fn poll_loop(
    consumer: &BaseConsumer<IngestContext>,
    stop: &tokio_util::sync::CancellationToken,
) {
    let ctx = consumer.context();
    while !stop.is_cancelled() {
        ctx.housekeeping(consumer);
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(m)) => {
                ctx.health.kafka.ok();
                ctx.dispatch(consumer, m.detach());
            }
            Some(Err(e)) => {
                ctx.metrics.kafka_error("consume");
                ctx.health.kafka.failed(e.to_string());
                tracing::warn!(error = %e, "consume error");
            }
        }
    }
    let all: Vec<i32> = ctx.assigned().into_iter().map(|(p, _)| p).collect();
    ctx.drain(consumer, &all);
    consumer.unsubscribe();
}
