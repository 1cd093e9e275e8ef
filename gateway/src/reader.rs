//! The tail loop: one per replica, whatever the number of clients. It follows every partition
//! stream (picking up new partitions as they appear), decodes each entry once into a shared
//! [`LiveEvent`], records the newest position per partition, and broadcasts **one [`Pass`] per
//! read** to every session through a bounded ring ([`tokio::sync::broadcast`]): all partitions'
//! new events, and the canonical cursor after them. A pass builds its frames once per format
//! (on first use), so every unfiltered session in step with the tail sends the same bytes. A
//! session that falls behind the ring is told so (`Lagged`) and reads Redis history instead. A
//! stream whose epoch changes (Redis flushed, topic re-created) is re-read from its start and
//! announced as a reset; a stream trimmed past the tail's position (the loop could not read it
//! for longer than retention) is announced as a retention gap. A stream that goes back within
//! its epoch (its last ID or its count of entries ever added falls: a failover or an AOF
//! restart rolled it back, or its key was deleted or evicted while the meta hash stayed) is
//! re-read from its start like a reset, and every session resets that partition: see
//! [`ROLLED_BACK`].

use crate::cursor::{Cursor, EntryId, PartitionPos};
use crate::event::LiveEvent;
use crate::frames::{Format, FrameBuilder, Outgoing};
use crate::metrics::Metrics;
use crate::streams::{Lost, PartRead, Streams};
use dashstream::seq::{SeqOutcome, SequenceTracker};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One partition's change within a pass.
#[derive(Debug)]
pub enum LiveItem {
    /// New events of one partition, in stream order.
    Events {
        partition: i32,
        epoch: Arc<str>,
        events: Vec<Arc<LiveEvent>>,
    },
    /// The partition's stream started a new epoch: history before it is gone.
    Reset { partition: i32, epoch: Arc<str> },
    /// Retention trimmed the stream past the tail's position: offsets `from..=to` are gone;
    /// the stream goes on after `to`.
    Retention {
        partition: i32,
        epoch: Arc<str>,
        from: i64,
        to: i64,
    },
}

/// What the tail loop broadcasts: everything one read found, and the canonical cursor before
/// and after it.
pub struct Pass {
    /// Increases by one per pass.
    pub gen: u64,
    pub items: Vec<LiveItem>,
    /// The tail's positions before this pass.
    pub before: Arc<Cursor>,
    /// The tail's positions after it (what a session in step holds afterwards).
    pub after: Arc<Cursor>,
    /// The pass's frames for an unfiltered session holding `before`, per format, built once.
    shared: [OnceLock<Arc<[Outgoing]>>; 2],
    max_frame_bytes: usize,
    /// Bytes this pass holds, counted in the ring's total until it is dropped (when every
    /// receiver has taken it).
    bytes: usize,
    /// Bytes of the shared frames built so far.
    shared_bytes: AtomicUsize,
    ring_bytes: Option<Arc<AtomicUsize>>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some(r) = &self.ring_bytes {
            r.fetch_sub(
                self.bytes + self.shared_bytes.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("gen", &self.gen)
            .field("items", &self.items.len())
            .finish()
    }
}

impl Pass {
    /// The frames every unfiltered session holding `before` sends for this pass.
    pub fn shared_frames(&self, format: Format) -> Arc<[Outgoing]> {
        let slot = match format {
            Format::Json => &self.shared[0],
            Format::Protobuf => &self.shared[1],
        };
        slot.get_or_init(|| {
            let mut cursor = self.before.clone();
            let mut b = FrameBuilder::new(format, self.max_frame_bytes);
            b.apply_pass(&mut cursor, &self.items, None, true);
            let frames: Arc<[Outgoing]> = b.finish(&cursor, None).into();
            // The frames live as long as the pass: count them in the ring's bytes too.
            let n: usize = frames.iter().map(|f| f.wire.len()).sum();
            self.shared_bytes.fetch_add(n, Ordering::Relaxed);
            if let Some(r) = &self.ring_bytes {
                r.fetch_add(n, Ordering::Relaxed);
            }
            frames
        })
        .clone()
    }

    /// Test support: a pass from items.
    pub fn new(
        gen: u64,
        items: Vec<LiveItem>,
        before: Arc<Cursor>,
        after: Arc<Cursor>,
        max_frame_bytes: usize,
    ) -> Self {
        let bytes = items
            .iter()
            .map(|i| match i {
                LiveItem::Events { events, .. } => events
                    .iter()
                    .map(|e| e.json.len() + e.proto.len() + PER_EVENT_OVERHEAD)
                    .sum(),
                _ => 0,
            })
            .sum::<usize>();
        Self {
            gen,
            items,
            before,
            after,
            shared: [OnceLock::new(), OnceLock::new()],
            max_frame_bytes,
            bytes,
            shared_bytes: AtomicUsize::new(0),
            ring_bytes: None,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The position a pass's `before` gives a partition whose stream went back within its epoch
/// (no session holds it, so every session handles that pass item by item): a session that
/// meets the partition's (empty) events item reads the partition from Redis, and
/// `catch_up_partition` resets the position it held, with a `reset` gap, before reading the
/// stream from its start.
pub const ROLLED_BACK: EntryId = EntryId {
    offset: i64::MAX,
    n: u32::MAX,
};

/// What the tail last saw of a stream (to notice it going back within an epoch).
#[derive(Debug, Clone)]
struct Seen {
    epoch: String,
    added: Option<i64>,
    last: EntryId,
}

/// What an event costs besides its encodings (the `LiveEvent`, its strings, the `Arc`).
const PER_EVENT_OVERHEAD: usize = 160;

/// One shard of the fan-out: a ring of its own, fed from the tail's ring by one task, whose
/// sessions subscribe to it (see [`Live::with_shards`]).
struct Shard {
    tx: RwLock<broadcast::Sender<Arc<Pass>>>,
}

/// Shared live state of the replica.
pub struct Live {
    /// The tail's ring: the shards' feeders (or, unsharded, the sessions) subscribe to it.
    pub tx: broadcast::Sender<Arc<Pass>>,
    shards: Vec<Shard>,
    next_shard: AtomicUsize,
    capacity: usize,
    /// The canonical cursor (the tops as of the last pass) and that pass's generation.
    canonical: RwLock<(u64, Arc<Cursor>)>,
    max_frame_bytes: usize,
    /// Bytes of the passes in the ring (not yet taken by every receiver).
    ring_bytes: Arc<AtomicUsize>,
    ring_budget: usize,
    newest_gen: AtomicU64,
    /// Woken when a pass leaves the ring over its byte budget.
    over_budget: tokio::sync::Notify,
    /// Newest position read per partition (updated before each broadcast).
    pub tops: RwLock<BTreeMap<i32, PartitionPos>>,
    /// Last time the loop completed an iteration (ms since `start`).
    heartbeat_ms: AtomicU64,
    start: Instant,
    /// Last time Redis answered the loop, and the last error.
    redis_ok_ms: AtomicU64,
    redis_error: Mutex<String>,
    /// Since when (ms since `start`) some stream has held entries the loop has not read; 0
    /// when the loop is caught up.
    behind_since_ms: AtomicU64,
    /// Set when the replica drains: `/readyz` fails so load balancers stop sending clients.
    pub draining: std::sync::atomic::AtomicBool,
    /// Per partition, what the tail's last read saw of the stream.
    seen: Mutex<BTreeMap<i32, Seen>>,
    /// Positions the next pass's `before` gives partitions instead of the tops, so that every
    /// session reads them from Redis (set by [`publish`], taken by [`Live::publish_pass`]).
    before_override: Mutex<Vec<(i32, PartitionPos)>>,
}

impl Live {
    pub fn new(capacity: usize, max_frame_bytes: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Arc::new(Self {
            tx,
            shards: Vec::new(),
            next_shard: AtomicUsize::new(0),
            capacity: capacity.max(1),
            canonical: RwLock::new((0, Arc::new(Cursor::default()))),
            max_frame_bytes,
            ring_bytes: Arc::new(AtomicUsize::new(0)),
            ring_budget: usize::MAX,
            newest_gen: AtomicU64::new(0),
            over_budget: tokio::sync::Notify::new(),
            tops: RwLock::new(BTreeMap::new()),
            heartbeat_ms: AtomicU64::new(0),
            start: Instant::now(),
            redis_ok_ms: AtomicU64::new(0),
            redis_error: Mutex::new(String::new()),
            behind_since_ms: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            seen: Mutex::new(BTreeMap::new()),
            before_override: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// The tail loop has completed a first pass (it knows the streams).
    pub fn started(&self) -> bool {
        self.heartbeat_ms.load(Ordering::Relaxed) > 0
    }

    pub fn tops(&self) -> BTreeMap<i32, PartitionPos> {
        self.tops
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the ring's byte budget (see [`Live::should_shed`]).
    pub fn with_byte_budget(self: Arc<Self>, budget: usize) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut me) => {
                me.ring_budget = budget;
                Arc::new(me)
            }
            Err(me) => me,
        }
    }

    /// Splits the fan-out into `n` shards (`n` ≤ 1 keeps one ring). Each shard has a ring of
    /// the same capacity, fed by one task: a pass wakes `n` feeders, and each wakes only its
    /// own sessions, on whichever core it runs, instead of the tail waking every session.
    /// A feeder that falls behind the tail's ring replaces its ring: its sessions see it
    /// closed and catch up from Redis, as if lapped. Must be called inside a tokio runtime.
    pub fn with_shards(self: Arc<Self>, n: usize) -> Arc<Self> {
        if n <= 1 {
            return self;
        }
        let me = match Arc::try_unwrap(self) {
            Ok(mut me) => {
                me.shards = (0..n)
                    .map(|_| Shard {
                        tx: RwLock::new(broadcast::channel(me.capacity).0),
                    })
                    .collect();
                Arc::new(me)
            }
            Err(me) => return me,
        };
        for i in 0..n {
            tokio::spawn(feed_shard(Arc::downgrade(&me), i, me.tx.subscribe()));
        }
        me
    }

    /// A shard for a new session (round robin).
    pub fn next_shard(&self) -> usize {
        self.next_shard.fetch_add(1, Ordering::Relaxed)
    }

    /// A receiver of passes for a session of shard `shard` (taken modulo the shard count).
    pub fn subscribe(&self, shard: usize) -> broadcast::Receiver<Arc<Pass>> {
        if self.shards.is_empty() {
            return self.tx.subscribe();
        }
        self.shards[shard % self.shards.len()]
            .tx
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .subscribe()
    }

    /// Sessions subscribed to the passes (over all shards).
    pub fn receiver_count(&self) -> usize {
        if self.shards.is_empty() {
            return self.tx.receiver_count();
        }
        self.shards
            .iter()
            .map(|s| {
                s.tx.read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .receiver_count()
            })
            .sum()
    }

    /// Bytes held by the ring now.
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes.load(Ordering::Relaxed)
    }

    /// Whether a session that just took pass `gen` should leave the ring for Redis history:
    /// the ring holds more than its byte budget, and the session is behind (a session at the
    /// head would free nothing). The sessions furthest behind hold the oldest passes, so
    /// they are the ones that see this first.
    pub fn should_shed(&self, gen: u64) -> bool {
        self.ring_bytes() > self.ring_budget
            && gen + SHED_BEHIND < self.newest_gen.load(Ordering::Relaxed)
    }

    /// Resolves the next time a pass is published while the ring is over its byte budget.
    pub async fn over_budget(&self) {
        self.over_budget.notified().await
    }

    /// The canonical cursor and its generation.
    pub fn canonical(&self) -> (u64, Arc<Cursor>) {
        self.canonical
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Publishes a pass: the canonical cursor moves to the tops first, then the pass is sent,
    /// so every pass is either in a subscription or covered by the canonical cursor.
    pub(crate) fn publish_pass(&self, items: Vec<LiveItem>) {
        let after = Arc::new(Cursor { parts: self.tops() });
        let (gen, mut before) = {
            let mut c = self
                .canonical
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = std::mem::replace(&mut c.1, after.clone());
            c.0 += 1;
            (c.0, before)
        };
        let overrides = std::mem::take(
            &mut *self
                .before_override
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !overrides.is_empty() {
            let b = Arc::make_mut(&mut before);
            for (p, pos) in overrides {
                b.parts.insert(p, pos);
            }
        }
        let mut pass = Pass::new(gen, items, before, after, self.max_frame_bytes);
        self.ring_bytes.fetch_add(pass.bytes, Ordering::Relaxed);
        pass.ring_bytes = Some(self.ring_bytes.clone());
        self.newest_gen.store(gen, Ordering::Relaxed);
        let _ = self.tx.send(Arc::new(pass));
        if self.ring_bytes() > self.ring_budget {
            self.over_budget.notify_waiters();
        }
    }
}

/// Forwards every pass of the tail's ring to shard `i`'s ring.
async fn feed_shard(live: std::sync::Weak<Live>, i: usize, mut rx: broadcast::Receiver<Arc<Pass>>) {
    loop {
        let next = rx.recv().await;
        let Some(live) = live.upgrade() else { return };
        let shard = &live.shards[i];
        match next {
            Ok(pass) => {
                // No receiver is no error: the pass is dropped.
                let _ = shard
                    .tx
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .send(pass);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    shard = i,
                    passes = n,
                    "a fan-out shard fell behind the tail; its sessions catch up from Redis"
                );
                *shard
                    .tx
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    broadcast::channel(live.capacity).0;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl dashstream::http::Readiness for Live {
    fn check(&self) -> Result<(), Vec<String>> {
        let now = self.now_ms();
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            reasons.push("draining: this replica is shutting down".to_string());
        }
        let ok = self.redis_ok_ms.load(Ordering::Relaxed);
        if ok == 0 || now - ok > 3_000 {
            let err = self
                .redis_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            reasons.push(format!("redis: unreachable: {err}"));
        }
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        if beat == 0 || now - beat > 5_000 {
            reasons.push("tail loop: not running".to_string());
        }
        let behind = self.behind_since_ms.load(Ordering::Relaxed);
        if behind > 0 && now - behind > 5_000 {
            reasons.push(format!(
                "tail loop: streams grew but the loop has not read them for {}s",
                (now - behind) / 1000
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// How many passes behind the newest a session must be to be shed from a ring over budget.
const SHED_BEHIND: u64 = 2;

/// Settings of the tail loop.
pub struct TailOptions {
    pub read_count: usize,
    pub block: Duration,
    pub discover_every: Duration,
    pub sequence_capacity: usize,
}

/// Runs the tail loop until `stop`.
pub async fn run(
    live: Arc<Live>,
    streams: Streams,
    metrics: Arc<Metrics>,
    opts: TailOptions,
    stop: CancellationToken,
) {
    let mut seq = SequenceTracker::new(opts.sequence_capacity);
    let mut last_discover: Option<Instant> = None;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    // The last read stopped before the end of a stream (its count or byte budget): read on at
    // once. A cluster's wake-up announces a write, not what is left to read, so waiting for one
    // would leave a backlog behind by a block time per read.
    let mut behind = false;
    while !stop.is_cancelled() {
        let step = async {
            if last_discover.is_none_or(|t| t.elapsed() >= opts.discover_every) {
                discover(&live, &streams, last_discover.is_none()).await?;
                last_discover = Some(Instant::now());
            }
            let from: Vec<(i32, EntryId)> =
                live.tops().iter().map(|(p, pos)| (*p, pos.last)).collect();
            if from.is_empty() {
                live.redis_ok_ms.store(live.now_ms(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            if !std::mem::take(&mut behind) {
                streams.wait(&from, opts.block).await?;
            }
            let reads = streams.read(&from, opts.read_count).await?;
            live.redis_ok_ms.store(live.now_ms(), Ordering::Relaxed);
            behind = reads.iter().any(stopped_short);
            let mut items = Vec::new();
            for ((p, _), read) in from.iter().zip(reads) {
                publish(&live, &metrics, &mut seq, *p, read, &mut items);
            }
            if !items.is_empty() {
                live.publish_pass(items);
            }
            metrics.live_buffer_bytes.set(live.ring_bytes() as i64);
            Ok::<(), crate::streams::ReadError>(())
        };
        let r = tokio::select! {
            _ = stop.cancelled() => break,
            r = step => r,
        };
        live.heartbeat_ms.store(live.now_ms(), Ordering::Relaxed);
        match r {
            Ok(()) => {
                if failing {
                    metrics.redis_reconnects.inc();
                    tracing::info!("redis tail recovered");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                *live
                    .redis_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_string();
                if !failing {
                    tracing::warn!(error = %e, "redis tail failed; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether a read stopped before the stream's last entry: it returned entries, and the
/// stream's last generated ID is past the newest of them. (A read that returned nothing is no
/// backlog: a stream gone back behind the position is the publisher's to handle.)
fn stopped_short(read: &crate::streams::PartRead) -> bool {
    read.entries.last().is_some_and(|e| e.id < read.last)
}

/// Watches that the tail loop keeps up: every `every`, compares each stream's last ID in Redis
/// with the loop's position. Streams that stay ahead of the loop (same epoch) make `/readyz`
/// fail after 5 s, whatever the reason (a stuck read, a lost position).
pub async fn watch_progress(
    live: Arc<Live>,
    streams: Streams,
    every: Duration,
    stop: CancellationToken,
) {
    // A stream must stay ahead across two checks to count: the loop may simply not have
    // reached the newest entries yet.
    let mut ahead_before: BTreeMap<i32, EntryId> = BTreeMap::new();
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let tops = live.tops();
        let from: Vec<(i32, EntryId)> = tops.keys().map(|p| (*p, EntryId::ZERO)).collect();
        let Ok(reads) = streams.read(&from, 0).await else {
            continue;
        };
        let tops = live.tops();
        let mut ahead = BTreeMap::new();
        for ((p, _), r) in from.iter().zip(reads) {
            if let (Some(epoch), Some(top)) = (r.epoch, tops.get(p)) {
                if epoch == top.epoch && r.last > top.last {
                    ahead.insert(*p, r.last);
                }
            }
        }
        // Behind: a stream was already ahead at the last check, at an ID the loop still has
        // not reached.
        let stuck = ahead_before
            .iter()
            .any(|(p, id)| tops.get(p).is_some_and(|t| t.last < *id) && ahead.contains_key(p));
        if stuck {
            let _ = live.behind_since_ms.compare_exchange(
                0,
                live.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            live.behind_since_ms.store(0, Ordering::Relaxed);
        }
        ahead_before = ahead;
    }
}

/// Adds partitions that appeared. At start-up the loop begins at each stream's end (history
/// is served from Redis); a stream that appears later is read from its beginning, so clients
/// already connected receive all of it.
async fn discover(
    live: &Live,
    streams: &Streams,
    at_start: bool,
) -> Result<(), crate::streams::ReadError> {
    let known = live.tops();
    let new: Vec<(i32, EntryId)> = streams
        .partitions()
        .await?
        .into_iter()
        .filter(|p| !known.contains_key(p))
        .map(|p| (p, EntryId::ZERO))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let reads = streams.read(&new, 0).await?;
    let mut added = false;
    {
        let mut tops = live
            .tops
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((p, _), r) in new.iter().zip(reads) {
            if let Some(epoch) = r.epoch {
                tops.insert(
                    *p,
                    PartitionPos {
                        epoch,
                        last: if at_start { r.last } else { EntryId::ZERO },
                    },
                );
                added = true;
                tracing::info!(partition = p, "following a new partition stream");
            }
        }
    }
    if added {
        // An empty pass moves the canonical cursor to the new set of partitions.
        live.publish_pass(Vec::new());
    }
    Ok(())
}

/// Turns one partition's read into the pass's items and moves the partition's top. Returns
/// whether the read found anything (entries, a reset, a retention gap).
pub(crate) fn publish(
    live: &Live,
    metrics: &Metrics,
    seq: &mut SequenceTracker,
    p: i32,
    mut read: PartRead,
    items: &mut Vec<LiveItem>,
) -> bool {
    let Some(epoch) = read.epoch.take() else {
        return false; // meta missing: a reset in progress; wait for the ingest's new epoch
    };
    let known = live
        .tops
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&p)
        .cloned();
    let Some(known) = known else { return false };
    let seen = live
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            p,
            Seen {
                epoch: epoch.clone(),
                added: read.added,
                last: read.last,
            },
        );
    if known.epoch != epoch {
        tracing::warn!(partition = p, old = %known.epoch, new = %epoch, "stream reset: new epoch");
        live.tops
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                p,
                PartitionPos {
                    epoch: epoch.clone(),
                    last: EntryId::ZERO,
                },
            );
        items.push(LiveItem::Reset {
            partition: p,
            epoch: epoch.into(),
        });
        return true;
    }
    if let Some(reason) = went_back(seen.as_ref(), &epoch, known.last, read.added, read.last) {
        // Same epoch, but the stream is not the one read so far: what it held after some
        // point is gone, and what it holds now may not be what was delivered. Re-read it from
        // its start, and have every session reset the partition (see `ROLLED_BACK`).
        metrics.stream_rollbacks.with_label_values(&[reason]).inc();
        tracing::warn!(
            partition = p,
            epoch = %epoch,
            reason,
            position = %known.last,
            last = %read.last,
            added = ?read.added,
            "stream went back within its epoch: resetting the partition"
        );
        let reset = PartitionPos {
            epoch: epoch.clone(),
            last: EntryId::ZERO,
        };
        live.tops
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(p, reset);
        live.before_override
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((
                p,
                PartitionPos {
                    epoch: epoch.clone(),
                    last: ROLLED_BACK,
                },
            ));
        items.push(LiveItem::Events {
            partition: p,
            epoch: epoch.into(),
            events: Vec::new(),
        });
        return true;
    }
    let epoch: Arc<str> = epoch.into();
    let mut found = false;
    if let Some(Lost { from, to }) = read.lost_after(known.last) {
        // The loop could not read this stream for longer than its retention: the entries
        // between its position and the oldest one kept are gone. Say so to every client
        // (whole offsets, see `PartRead::lost_after`).
        tracing::warn!(
            partition = p,
            from,
            to,
            "the stream was trimmed past the tail's position"
        );
        live.tops
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                p,
                PartitionPos {
                    epoch: epoch.to_string(),
                    last: EntryId {
                        offset: to,
                        n: u32::MAX,
                    },
                },
            );
        items.push(LiveItem::Retention {
            partition: p,
            epoch: epoch.clone(),
            from,
            to,
        });
        found = true;
    }
    let Some(last) = read.entries.last() else {
        return found;
    };
    // The ingest stamps `ts` on the last entry of each write only (older streams: on every
    // entry), so the newest stamp of the read is the one to go by.
    let newest_ingest_us = read
        .entries
        .iter()
        .rev()
        .find(|e| e.ingest_us > 0)
        .map_or(0, |e| e.ingest_us);
    let last_id = last.id;
    let mut events = Vec::with_capacity(read.entries.len());
    for e in read.entries {
        match LiveEvent::from_entry(p, e.id, e.event) {
            Ok(ev) => {
                match seq.observe(&ev.thread, ev.sequence) {
                    SeqOutcome::Gap { .. } => metrics.sequence.with_label_values(&["gap"]).inc(),
                    SeqOutcome::Duplicate => {
                        metrics.sequence.with_label_values(&["duplicate"]).inc()
                    }
                    SeqOutcome::Reorder => metrics.sequence.with_label_values(&["reorder"]).inc(),
                    _ => {}
                }
                events.push(Arc::new(ev));
            }
            Err(err) => {
                metrics.decode_errors.inc();
                tracing::warn!(partition = p, id = %e.id, error = %err, "undecodable stream entry skipped");
            }
        }
    }
    metrics.tail_events.inc_by(events.len() as u64);
    if newest_ingest_us > 0 {
        metrics
            .tail_delay
            .set(((dashstream::now_us() - newest_ingest_us).max(0)) as f64 / 1e6);
    }
    live.tops
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            p,
            PartitionPos {
                epoch: epoch.to_string(),
                last: last_id,
            },
        );
    if !events.is_empty() {
        items.push(LiveItem::Events {
            partition: p,
            epoch,
            events,
        });
    }
    true
}

/// Why a stream read in the same epoch as before is not the stream read so far, if it is not:
/// its last ID is below the tail's position or below the last ID seen before (rolled back;
/// no stream at all: its key was lost), or it has added fewer entries than before, or none
/// (its key was lost, and maybe written again).
fn went_back(
    seen: Option<&Seen>,
    epoch: &str,
    position: EntryId,
    added: Option<i64>,
    last: EntryId,
) -> Option<&'static str> {
    let seen = seen.filter(|s| s.epoch == epoch);
    if crate::streams::beyond(position, last) || seen.is_some_and(|s| last < s.last) {
        return Some(if last == EntryId::ZERO {
            "stream_lost"
        } else {
            "rolled_back"
        });
    }
    let fewer = |s: &Seen| match (s.added, added) {
        (Some(a), Some(b)) => b < a,
        (Some(_), None) => true,
        _ => false,
    };
    seen.is_some_and(fewer).then_some("stream_lost")
}
