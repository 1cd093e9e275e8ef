//! The Kafka side: one OS thread polls the group consumer, which serves rebalances, errors and
//! commits (rebalance callbacks run inside `poll` and may block while work drains). Records do
//! not pass through it: when partitions are assigned, each one's librdkafka queue is split off
//! *before* the assignment takes effect (so not one record can land in the shared queue) and
//! handed to that partition's worker, which reads it at its own pace. Backpressure is the
//! worker not reading; librdkafka stops fetching a partition whose queue is full. There is no
//! pause and no resume, so no pause flag can outlive an assignment.
//!
//! On revoke (and on shutdown) the affected workers are told to stop; the thread waits up to
//! the drain deadline for their in-flight writes to finish and commits synchronously before the
//! partitions are given up. A worker that misses the deadline is aborted: its partition's next
//! owner fences it off in Redis (see `store`).

use crate::metrics::Metrics;
use crate::state::{Health, Progress};
use crate::worker::Queue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the worker of a newly assigned partition on its queue; returns its task.
pub type SpawnWorker =
    Box<dyn Fn(i32, Queue, Arc<Progress>, CancellationToken) -> JoinHandle<()> + Send + Sync>;

struct Slot {
    join: JoinHandle<()>,
    stop: CancellationToken,
    progress: Arc<Progress>,
}

/// Consumer context: owns the partition workers and handles rebalances.
pub struct IngestContext {
    topic: String,
    rt: tokio::runtime::Handle,
    slots: Mutex<HashMap<i32, Slot>>,
    spawn: OnceLock<SpawnWorker>,
    consumer: OnceLock<Weak<BaseConsumer<IngestContext>>>,
    drain_timeout: Duration,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl IngestContext {
    pub fn new(
        topic: String,
        rt: tokio::runtime::Handle,
        drain_timeout: Duration,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            topic,
            rt,
            slots: Mutex::new(HashMap::new()),
            spawn: OnceLock::new(),
            consumer: OnceLock::new(),
            drain_timeout,
            metrics,
            health,
        }
    }

    /// Completes the context once the consumer exists (the queues are split from it).
    pub fn attach(&self, consumer: &Arc<BaseConsumer<IngestContext>>, spawn: SpawnWorker) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
        let _ = self.spawn.set(spawn);
    }

    /// The assignment table. A panic while it was held cannot leave it half-updated (every
    /// change is one insert or remove), so a poisoned lock is taken over, not fatal.
    fn slots(&self) -> MutexGuard<'_, HashMap<i32, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Progress of every assigned partition (for the lag monitor and staleness).
    pub fn assigned(&self) -> Vec<(i32, Arc<Progress>)> {
        self.slots()
            .iter()
            .map(|(p, s)| (*p, s.progress.clone()))
            .collect()
    }

    /// Runs `f` only if `partition` is still assigned, holding the assignment lock, so a
    /// partition's series are never re-created after its revoke removed them.
    pub fn if_assigned(&self, partition: i32, f: impl FnOnce(&Progress)) {
        if let Some(s) = self.slots().get(&partition) {
            f(&s.progress);
        }
    }

    /// Runs `f` for every assigned partition, holding the assignment lock.
    pub fn for_each_assigned(&self, mut f: impl FnMut(i32, &Progress)) {
        for (p, s) in self.slots().iter() {
            f(*p, &s.progress);
        }
    }

    /// A partition whose worker ended while still assigned (it panicked): the process can no
    /// longer make progress on it.
    pub fn dead_worker(&self) -> Option<i32> {
        self.slots()
            .iter()
            .find(|(_, s)| s.join.is_finished() && !s.stop.is_cancelled())
            .map(|(p, _)| *p)
    }

    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Splits each new partition's queue off the shared consumer queue. Done before the
    /// assignment, so fetching starts straight into the partition's own queue.
    fn split(&self, partitions: &[i32]) -> Vec<(i32, Queue)> {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return Vec::new();
        };
        let slots = self.slots();
        partitions
            .iter()
            .filter(|p| !slots.contains_key(p))
            .filter_map(|&p| match consumer.split_partition_queue(&self.topic, p) {
                Some(q) => Some((p, q)),
                None => {
                    tracing::error!(partition = p, "could not split the partition's queue");
                    None
                }
            })
            .collect()
    }

    fn start_workers(&self, queues: Vec<(i32, Queue)>) {
        let Some(spawn) = self.spawn.get() else {
            return;
        };
        let mut slots = self.slots();
        let mut added = Vec::new();
        for (p, queue) in queues {
            let progress = Arc::new(Progress::new());
            let stop = CancellationToken::new();
            let _guard = self.rt.enter();
            let join = spawn(p, queue, progress.clone(), stop.clone());
            slots.insert(
                p,
                Slot {
                    join,
                    stop,
                    progress,
                },
            );
            self.metrics
                .partition_assigned
                .with_label_values(&[&p.to_string()])
                .set(1);
            added.push(p);
        }
        self.metrics.assigned_partitions.set(slots.len() as i64);
        tracing::info!(partitions = ?added, total = slots.len(), "partitions assigned");
    }

    /// Stops the workers of `partitions`, waits for their in-flight writes within the
    /// deadline (their acknowledged offsets are stored as they go) and commits synchronously.
    fn drain(&self, consumer: &BaseConsumer<IngestContext>, partitions: &[i32]) {
        let drained: Vec<(i32, Slot)> = {
            let mut slots = self.slots();
            partitions
                .iter()
                .filter_map(|p| slots.remove(p).map(|s| (*p, s)))
                .collect()
        };
        if drained.is_empty() {
            return;
        }
        let mut joins = Vec::new();
        for (_, slot) in &drained {
            slot.stop.cancel();
        }
        for (_, slot) in drained {
            joins.push(slot.join);
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
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.kafka_error("commit");
                tracing::warn!(error = %e, "commit on drain failed");
            }
        }
        for p in partitions {
            self.metrics.forget_partition(*p);
        }
        self.metrics
            .assigned_partitions
            .set(self.slots().len() as i64);
        tracing::info!(partitions = ?partitions, "partitions drained and committed");
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> KafkaResult<()> {
        match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        }
    }

    fn unassign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> KafkaResult<()> {
        match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        }
    }

    fn joined(&self) {
        self.health
            .joined
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions = self.partitions_of(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let queues = self.split(&partitions);
                if let Err(e) = self.assign(consumer, tpl) {
                    self.metrics.kafka_error("client");
                    tracing::error!(error = %e, ?partitions, "assign failed");
                }
                self.start_workers(queues);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                tracing::info!(
                    ?partitions,
                    lost = consumer.assignment_lost(),
                    "partitions revoked; draining"
                );
                self.drain(consumer, &partitions);
                if let Err(e) = self.unassign(consumer, tpl) {
                    tracing::warn!(error = %e, ?partitions, "unassign failed");
                }
            }
            other => {
                // librdkafka gives the partitions up (as rdkafka's default handler does): the
                // workers must not outlive them.
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = ?other, ?partitions, "rebalance error; giving the partitions up");
                self.drain(consumer, &partitions);
                if let Err(e) = self.unassign(consumer, tpl) {
                    tracing::warn!(error = %e, "unassign after a rebalance error failed");
                }
            }
        }
        self.joined();
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.kafka_error("commit");
                tracing::warn!(error = %e, "offset commit failed (it is retried with the next one)");
            }
        }
    }
}

/// Why the poll loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PollEnd {
    /// `stop` was set; every partition was drained and committed.
    Stopped,
    /// A partition's worker ended while still assigned (a bug): the process must restart.
    DeadWorker(i32),
}

/// The poll loop; returns after `stop` is set (or a worker died), with every partition drained
/// and committed.
pub fn poll_loop(consumer: &BaseConsumer<IngestContext>, stop: &CancellationToken) -> PollEnd {
    let ctx = consumer.context();
    let mut end = PollEnd::Stopped;
    let mut last_check = std::time::Instant::now();
    while !stop.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                // Every assigned partition has its own queue; a record here is a bug.
                ctx.metrics.kafka_error("consume");
                tracing::error!(
                    partition = rdkafka::Message::partition(&m),
                    "record on the shared queue; it will be re-read by its owner"
                );
            }
            Some(Err(e)) => {
                ctx.metrics.kafka_error("consume");
                ctx.health.kafka.failed(e.to_string());
                tracing::warn!(error = %e, "consume error");
            }
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            if let Some(p) = ctx.dead_worker() {
                tracing::error!(
                    partition = p,
                    "a partition worker ended while its partition is assigned"
                );
                end = PollEnd::DeadWorker(p);
                break;
            }
        }
    }
    let all: Vec<i32> = ctx.assigned().into_iter().map(|(p, _)| p).collect();
    ctx.drain(consumer, &all);
    consumer.unsubscribe();
    end
}
