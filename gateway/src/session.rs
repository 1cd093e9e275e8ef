//! One client's feed: from its start position, through Redis history while it is behind, to
//! the live passes of the tail loop, and back to history whenever it falls behind the ring.
//!
//! A session whose cursor is the tail's canonical cursor before a pass is *in step*: if it has
//! no filter, it sends the pass's shared frames (built once per replica and format) and takes
//! the canonical cursor after the pass, with no per-client encoding at all. A filtered session
//! in step builds its own frames from the pass. A session out of step (just caught up, or
//! holding a position the tail does not) takes each partition's new events after its own
//! position and rejoins the shared path as soon as its cursor equals the canonical one.
//!
//! Frames go to the connection's writer through a queue bounded in bytes (see
//! [`crate::outq`]; a frame counts until it is written): when the client reads too
//! slowly the session waits, the ring laps it, and it continues from Redis history. The cursor
//! advances only over events handed to the queue, so every frame's cursor is exact.

use crate::cursor::{Cursor, EntryId, PartitionPos};
use crate::event::{Filter, LiveEvent};
use crate::frames::{self, Format, FrameBuilder, Outgoing, Progress};
use crate::metrics::Metrics;
use crate::outq::OutQueue;
pub use crate::outq::Outbound;
use crate::reader::{Live, LiveItem, Pass};
use crate::streams::{PartRead, ReadError, Streams};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

type ReadResult = Result<Vec<PartRead>, ReadError>;

/// Where a session reads history: the Redis streams, or a fake in the state-machine tests.
pub trait History: Send + Sync + 'static {
    /// Up to `count` entries after each position, with each stream's epoch and bounds (see
    /// [`Streams::read`]).
    fn read<'a>(
        &'a self,
        from: &'a [(i32, EntryId)],
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<PartRead>, ReadError>>;
}

impl History for Streams {
    fn read<'a>(
        &'a self,
        from: &'a [(i32, EntryId)],
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<PartRead>, ReadError>> {
        Box::pin(Streams::read(self, from, count))
    }
}

/// Where a session starts.
#[derive(Debug, Clone)]
pub enum Start {
    Latest,
    Earliest,
    Cursor(Cursor),
}

/// Most passes taken from the ring in one wake.
const MAX_PASSES_PER_WAKE: usize = 64;
/// Wait before retrying a failed history read.
const HISTORY_RETRY: Duration = Duration::from_millis(250);

pub struct Session {
    pub format: Format,
    pub filter: Filter,
    pub live: Arc<Live>,
    pub history: Arc<dyn History>,
    pub metrics: Arc<Metrics>,
    /// The connection's outbound queue (bounded in frames and bytes, see [`OutQueue`]).
    pub out: Arc<OutQueue>,
    pub server: String,
    pub max_frame_bytes: usize,
    pub history_page: usize,
    /// Cancelled when the replica drains, or the connection must end (its token expired): the
    /// client is told where to resume.
    pub drain: CancellationToken,
    /// Why the connection ends when `drain` fires for it alone: the close code and the
    /// `reconnect` frame's reason (unset: the replica drains, 4012 `draining`).
    pub leave: Arc<std::sync::OnceLock<(u16, &'static str)>>,
    /// What a filter skipped without a frame (see [`Progress`]).
    pub progress: std::sync::Mutex<Progress>,
    /// The fan-out shard whose ring it takes passes from ([`Live::with_shards`]).
    pub shard: usize,
}

/// Why the feed stopped.
enum Stop {
    /// The client is gone (its writer dropped the queue).
    Gone,
    Draining,
}

impl Session {
    fn filtered(&self) -> bool {
        self.filter != Filter::default()
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Feeds the client until it leaves or `drain` fires (then tells it where to resume).
    pub async fn run(self, start: Start) {
        let drain = self.drain.clone();
        let mut rx = self.live.subscribe(self.shard);
        let resumed = matches!(start, Start::Cursor(_));
        let (mut cursor, behind) = match start {
            Start::Latest => (self.live.canonical().1, false),
            Start::Earliest => (Arc::new(Cursor::default()), true),
            Start::Cursor(c) => (Arc::new(c), true),
        };
        let welcome = frames::welcome(self.format, &self.server, &cursor.encode(), resumed);
        if self
            .send(vec![Outgoing::control(welcome, "welcome")])
            .await
            .is_err()
        {
            return;
        }
        let result: Result<(), Stop> = async {
            if behind {
                rx = Box::pin(self.catch_up(&mut cursor, resumed)).await?;
            }
            loop {
                let first = tokio::select! {
                    biased;
                    _ = drain.cancelled() => return Err(Stop::Draining),
                    r = rx.recv() => r,
                };
                match first {
                    Ok(pass) => {
                        let mut passes = vec![pass];
                        let mut lagged = false;
                        while passes.len() < MAX_PASSES_PER_WAKE {
                            match rx.try_recv() {
                                Ok(p) => passes.push(p),
                                // The only notice of a lap: what was lapped is read from
                                // Redis right after what was taken is delivered.
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let newest = passes.last().map_or(0, |p| p.gen);
                        let mut ring = Some(rx);
                        // Boxed, like the catch-up: the session's idle state stays small.
                        Box::pin(self.deliver_passes(&mut cursor, &passes, &mut ring, newest))
                            .await?;
                        drop(passes);
                        if !lagged && ring.is_some() && self.live.should_shed(newest) {
                            // The ring is over its byte budget and this session is behind:
                            // it leaves the ring (freeing what it held) and reads history.
                            self.metrics.ring_sheds.inc();
                            ring = None;
                        }
                        match ring {
                            Some(r) => rx = r,
                            None => {
                                // Left the ring while it waited for its client (see
                                // `push_live`): what it missed is read from Redis.
                                lagged = true;
                                rx = self.live.subscribe(self.shard);
                            }
                        }
                        if lagged {
                            self.metrics.catchup_switches.inc();
                            rx = Box::pin(self.catch_up(&mut cursor, false)).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.metrics.catchup_switches.inc();
                        rx = Box::pin(self.catch_up(&mut cursor, false)).await?;
                    }
                    // The shard's ring was replaced (its feeder fell behind the tail): like a
                    // lap, read what was missed from Redis.
                    Err(broadcast::error::RecvError::Closed) => {
                        if self.drain.is_cancelled() {
                            return Err(Stop::Draining);
                        }
                        self.metrics.catchup_switches.inc();
                        rx = Box::pin(self.catch_up(&mut cursor, false)).await?;
                    }
                }
            }
        }
        .await;
        if let Err(Stop::Draining) = result {
            let (code, reason) = self.leave.get().copied().unwrap_or((4012, "draining"));
            let bye = frames::reconnect(self.format, &cursor.encode(), reason);
            let _ = self.send(vec![Outgoing::control(bye, "reconnect")]).await;
            self.out.push_close(code, reason);
        }
    }

    /// Queues `o`, waiting for room. While it waits, a session holding `ring` at pass `gen`
    /// lets go of the ring (`ring` becomes `None`) when the ring is over its byte budget, so
    /// the passes it has not taken yet are freed.
    async fn push_live(
        &self,
        o: Outbound,
        ring: &mut Option<broadcast::Receiver<Arc<Pass>>>,
        gen: u64,
    ) -> Result<(), Stop> {
        let push = self.out.push(o);
        tokio::pin!(push);
        loop {
            if ring.is_none() {
                return push.await.map_err(|_| Stop::Gone);
            }
            tokio::select! {
                p = &mut push => return p.map_err(|_| Stop::Gone),
                _ = self.live.over_budget() => {
                    if self.live.should_shed(gen) {
                        self.metrics.ring_sheds.inc();
                        *ring = None;
                    }
                }
            }
        }
    }

    async fn send_live(
        &self,
        frames: Vec<Outgoing>,
        ring: &mut Option<broadcast::Receiver<Arc<Pass>>>,
        gen: u64,
    ) -> Result<(), Stop> {
        for f in frames {
            self.push_live(Outbound::Frame(f), ring, gen).await?;
        }
        Ok(())
    }

    async fn send(&self, frames: Vec<Outgoing>) -> Result<(), Stop> {
        for f in frames {
            self.out
                .push(Outbound::Frame(f))
                .await
                .map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    async fn send_shared(
        &self,
        frames: Arc<[Outgoing]>,
        ring: &mut Option<broadcast::Receiver<Arc<Pass>>>,
        gen: u64,
    ) -> Result<(), Stop> {
        if frames.is_empty() {
            return Ok(());
        }
        self.push_live(Outbound::Shared(frames), ring, gen).await
    }

    /// Delivers the passes of one wake: shared frames while in step, its own frames (merged
    /// across partitions and passes, bounded in bytes) otherwise.
    async fn deliver_passes(
        &self,
        cursor: &mut Arc<Cursor>,
        passes: &[Arc<Pass>],
        ring: &mut Option<broadcast::Receiver<Arc<Pass>>>,
        gen: u64,
    ) -> Result<(), Stop> {
        let filtered = self.filtered();
        let mut b = FrameBuilder::new(self.format, self.max_frame_bytes);
        for pass in passes {
            let in_step = Arc::ptr_eq(cursor, &pass.before) || **cursor == *pass.before;
            if in_step && !filtered {
                self.flush_own(&mut b, cursor, ring, gen).await?;
                self.send_shared(pass.shared_frames(self.format), ring, gen)
                    .await?;
                *cursor = pass.after.clone();
                continue;
            }
            if in_step {
                b.apply_pass(cursor, &pass.items, Some(&self.filter), true);
            } else {
                for item in &pass.items {
                    match item {
                        LiveItem::Events {
                            partition,
                            epoch,
                            events,
                        } => {
                            let pos = cursor.parts.get(partition);
                            if pos.is_some_and(|p| p.epoch.as_str() != &**epoch) {
                                // An epoch this session has not been told about: re-read the
                                // partition from Redis (the reset gap comes from there).
                                self.flush_own(&mut b, cursor, ring, gen).await?;
                                self.catch_up_partition(cursor, *partition, None).await?;
                                continue;
                            }
                            // The pass follows the tail's position before it: a session behind
                            // that (a catch-up that stopped early, e.g. on a stream whose meta
                            // was missing for a moment) reads the difference from Redis first,
                            // or leaves these events to its next catch-up (they stay in Redis).
                            if let Some(b4) = pass.before.parts.get(partition) {
                                let after = pos.map_or(EntryId::ZERO, |p| p.last);
                                if b4.epoch.as_str() == &**epoch && after < b4.last {
                                    self.flush_own(&mut b, cursor, ring, gen).await?;
                                    self.catch_up_partition(cursor, *partition, Some(b4))
                                        .await?;
                                    let now = cursor.parts.get(partition);
                                    if now.is_none_or(|n| {
                                        n.epoch.as_str() != &**epoch || n.last < b4.last
                                    }) {
                                        continue;
                                    }
                                }
                            }
                            let after = cursor
                                .parts
                                .get(partition)
                                .map_or(EntryId::ZERO, |p| p.last);
                            for e in events.iter().filter(|e| e.id > after) {
                                b.event(cursor, epoch, e, self.filter.matches(e), true);
                            }
                        }
                        LiveItem::Reset { partition, epoch } => {
                            let mine = cursor.parts.get(partition).map(|k| k.epoch.clone());
                            let tails = pass.before.parts.get(partition).map(|k| &k.epoch);
                            match mine {
                                // On the epoch the reset ends (the tail's before it): the gap.
                                Some(m) if Some(&m) == tails => b.reset(cursor, *partition, epoch),
                                // Already on the new epoch: nothing to say.
                                Some(m) if m.as_str() == &**epoch => {}
                                // On another epoch (one read from history that the tail has
                                // not seen, or an older one): Redis says which is current.
                                Some(_) => {
                                    self.flush_own(&mut b, cursor, ring, gen).await?;
                                    self.catch_up_partition(cursor, *partition, None).await?;
                                }
                                None => b.reset(cursor, *partition, epoch),
                            }
                        }
                        LiveItem::Retention {
                            partition,
                            epoch,
                            from,
                            to,
                        } => {
                            // Like events: a session behind the tail's position reads the
                            // difference from Redis first (which names what is gone itself).
                            if let Some(b4) = pass.before.parts.get(partition) {
                                let pos = cursor.parts.get(partition);
                                let after = pos.map_or(EntryId::ZERO, |p| p.last);
                                if b4.epoch.as_str() == &**epoch
                                    && pos.is_none_or(|p| p.epoch == b4.epoch)
                                    && after < b4.last
                                {
                                    self.flush_own(&mut b, cursor, ring, gen).await?;
                                    self.catch_up_partition(cursor, *partition, Some(b4))
                                        .await?;
                                }
                            }
                            b.retention(cursor, *partition, epoch, *from, *to)
                        }
                    }
                }
            }
            if **cursor == *pass.after {
                // In step again: share the canonical cursor from here on.
                *cursor = pass.after.clone();
            }
        }
        let frames = b.finish_progress(cursor, &mut self.progress());
        self.send_live(frames, ring, gen).await
    }

    /// Sends what `b` holds (its cursor is `cursor`) and leaves it empty.
    async fn flush_own(
        &self,
        b: &mut FrameBuilder,
        cursor: &Arc<Cursor>,
        ring: &mut Option<broadcast::Receiver<Arc<Pass>>>,
        gen: u64,
    ) -> Result<(), Stop> {
        let own = std::mem::replace(b, FrameBuilder::new(self.format, self.max_frame_bytes));
        let frames = own.finish_progress(cursor, &mut self.progress());
        self.send_live(frames, ring, gen).await
    }

    /// Reads Redis history up to the live position of every partition, then returns a live
    /// receiver subscribed before the positions were taken (so nothing falls between).
    async fn catch_up(
        &self,
        cursor: &mut Arc<Cursor>,
        resumed: bool,
    ) -> Result<broadcast::Receiver<Arc<Pass>>, Stop> {
        let rx = self.live.subscribe(self.shard);
        let (_, tops) = self.live.canonical();
        let mut outcome_gap = false;
        for (p, top) in &tops.parts {
            outcome_gap |= self.catch_up_partition(cursor, *p, Some(top)).await?;
        }
        if resumed {
            let outcome = if outcome_gap { "gap" } else { "ok" };
            self.metrics.resumes.with_label_values(&[outcome]).inc();
        }
        if **cursor == *tops {
            *cursor = tops;
        }
        Ok(rx)
    }

    /// Reads one partition's history after the cursor, up to `target` (the live top taken
    /// when the live receiver subscribed, which covers what comes after) or, without one, to
    /// the end of the stream; returns whether a gap was reported.
    async fn catch_up_partition(
        &self,
        cursor: &mut Arc<Cursor>,
        p: i32,
        target: Option<&PartitionPos>,
    ) -> Result<bool, Stop> {
        let mut gapped = false;
        // The tail found this stream gone back within its epoch (see `reader::ROLLED_BACK`):
        // the position held before is reset once, whatever this read shows.
        let mut rolled_back = target.is_some_and(|t| t.last == crate::reader::ROLLED_BACK);
        let mut prefetched: Option<(EntryId, AbortOnDropHandle<ReadResult>)> = None;
        loop {
            if self.drain.is_cancelled() {
                return Err(Stop::Draining);
            }
            let after = cursor.parts.get(&p).map_or(EntryId::ZERO, |c| c.last);
            // The page read ahead while the last one was encoded and sent, if it starts here.
            let ahead = match prefetched.take() {
                Some((from, read)) if from == after => match read.await {
                    Ok(Ok(mut r)) => Some(r.pop().unwrap_or_default()),
                    _ => None,
                },
                _ => None,
            };
            let read = if let Some(r) = ahead {
                r
            } else {
                loop {
                    match self.history.read(&[(p, after)], self.history_page).await {
                        Ok(mut r) => break r.pop().unwrap_or_default(),
                        Err(_) if self.out.is_closed() => return Err(Stop::Gone),
                        Err(_) => {
                            tokio::select! {
                                _ = self.drain.cancelled() => return Err(Stop::Draining),
                                _ = tokio::time::sleep(HISTORY_RETRY) => {}
                            }
                        }
                    }
                }
            };
            let Some(epoch) = read.epoch.clone() else {
                return Ok(gapped);
            };
            let mut b = FrameBuilder::new(self.format, self.max_frame_bytes);
            let told_rolled_back = std::mem::take(&mut rolled_back);
            match cursor.parts.get(&p).cloned() {
                Some(k) if k.epoch != epoch => {
                    // The history this cursor points into is gone (Redis flushed, topic
                    // re-created): say so, then read the new epoch from its start.
                    b.reset(cursor, p, &epoch);
                    self.send(b.finish(cursor, None)).await?;
                    gapped = true;
                    continue;
                }
                Some(k)
                    if k.last != EntryId::ZERO
                        && (told_rolled_back || read.lost_position(k.last).is_some()) =>
                {
                    // The stream went back within its epoch (rolled back, or its key lost
                    // and written again): what the position was in is gone. Like a reset:
                    // say so, then read the stream from its start.
                    // Counted where it is found: by the tail once, or here (a resumed
                    // cursor, or a session catching up).
                    if let Some(reason) = read.lost_position(k.last).filter(|_| !told_rolled_back) {
                        self.metrics
                            .stream_rollbacks
                            .with_label_values(&[reason])
                            .inc();
                    }
                    let before = cursor.clone();
                    Arc::make_mut(cursor).parts.insert(
                        p,
                        PartitionPos {
                            epoch: epoch.clone(),
                            last: EntryId::ZERO,
                        },
                    );
                    let missed = crate::frames::Missed {
                        partition: p,
                        from: next_offset(k.last),
                        to: -1,
                    };
                    b.gap(&before, cursor, "reset", missed);
                    self.send(b.finish(cursor, None)).await?;
                    gapped = true;
                    continue;
                }
                Some(k) => {
                    if let Some(lost) = read.lost_after(k.last) {
                        // Retention removed entries after the cursor: report the offsets that
                        // can no longer be delivered, once, and continue after them.
                        b.retention(cursor, p, &epoch, lost.from, lost.to);
                        gapped = true;
                    }
                }
                None => {
                    Arc::make_mut(cursor).parts.insert(
                        p,
                        PartitionPos {
                            epoch: epoch.clone(),
                            last: EntryId::ZERO,
                        },
                    );
                }
            }
            let page_full = read.entries.len() >= self.history_page;
            let last_read = read.entries.last().map(|e| e.id);
            if let Some(last) = last_read.filter(|_| page_full) {
                // A full page that does not reach the target: read the next one while this
                // one is encoded and sent (it starts where this one ends).
                if !target.is_some_and(|t| t.epoch == epoch && last >= t.last) {
                    let (history, count) = (self.history.clone(), self.history_page);
                    let read = tokio::spawn(async move { history.read(&[(p, last)], count).await });
                    prefetched = Some((last, AbortOnDropHandle::new(read)));
                }
            }
            let mut newest = None;
            for entry in read.entries {
                match LiveEvent::from_entry_as(p, entry.id, entry.event, self.format) {
                    Ok(ev) => {
                        let ev = Arc::new(ev);
                        b.event(cursor, &epoch, &ev, self.filter.matches(&ev), false);
                        newest = Some(ev.id);
                    }
                    Err(_) => self.metrics.decode_errors.inc(),
                }
            }
            let reached = match (&target, newest) {
                (Some(t), Some(last)) => t.epoch == epoch && last >= t.last,
                _ => false,
            };
            if let Some(id) = last_read {
                // Past undecodable entries too, so a bad entry is never read forever.
                if let Some(pos) = Arc::make_mut(cursor).parts.get_mut(&p) {
                    pos.last = pos.last.max(id);
                }
            }
            let frames = b.finish_progress(cursor, &mut self.progress());
            self.send(frames).await?;
            if !page_full || reached {
                return Ok(gapped);
            }
        }
    }
}

/// Whether retention removed entries after `last`: the first kept entry is more than one
/// offset past it (or nothing is kept). An offset that never held an event (a dead-lettered
/// record) just before the first kept entry is reported as missed too: the stream cannot tell.
pub fn trimmed_after(last: EntryId, first: Option<EntryId>, newest: EntryId) -> bool {
    match first {
        Some(f) => f.offset > next_offset(last),
        None => newest > last,
    }
}

/// The first offset after position `last`: offset 0 for a position at the start of an epoch
/// (`0-0`, nothing delivered: a re-created topic starts at offset 0), else the next one.
pub fn next_offset(last: EntryId) -> i64 {
    if last == EntryId::ZERO {
        0
    } else {
        last.offset.saturating_add(1)
    }
}

/// Records producer-to-send latency of a frame just written (its oldest live event).
pub fn observe_sent(metrics: &Metrics, oldest_us: i64) {
    if oldest_us == 0 {
        return;
    }
    let age = dashstream::now_us() - oldest_us;
    if age < 0 {
        metrics.clock_skew.inc();
    } else {
        metrics.producer_to_send.observe(age as f64 / 1e6);
    }
}

/// The session state machine driven against a fake history and the real live ring.
#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
