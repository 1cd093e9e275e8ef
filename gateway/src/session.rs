//! One client's feed: from its start position, through Redis history while it is behind, to
//! the live broadcast, and back to history whenever it falls behind the live ring. The cursor
//! advances only over events handed to the client's queue, so every frame's cursor is exact.

use crate::cursor::{Cursor, EntryId, PartitionPos};
use crate::event::{Filter, LiveEvent};
use crate::frames::{self, Format, Missed, Wire};
use crate::metrics::Metrics;
use crate::reader::{Live, LiveItem};
use crate::streams::Streams;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// What goes to the client's writer task.
#[derive(Debug)]
pub enum Outbound {
    Frame {
        wire: Wire,
        kind: &'static str,
        /// Events in the frame.
        events: u64,
        /// Producer timestamps of the frame's live events, for the latency histogram (events
        /// read from history are counted but not timed: their age is the client's absence).
        stamps: Vec<i64>,
    },
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// Where a session starts.
#[derive(Debug, Clone)]
pub enum Start {
    Latest,
    Earliest,
    Cursor(Cursor),
}

pub struct Session {
    pub format: Format,
    pub filter: Filter,
    pub live: Arc<Live>,
    pub streams: Streams,
    pub metrics: Arc<Metrics>,
    pub out: mpsc::Sender<Outbound>,
    pub server: String,
    pub max_frame_events: usize,
    pub history_page: usize,
    /// Cancelled when the replica drains: the client is told where to resume.
    pub drain: CancellationToken,
}

/// Why the feed stopped.
enum Stop {
    /// The client is gone (its writer dropped the queue).
    Gone,
    Draining,
}

impl Session {
    /// Feeds the client until it leaves or `drain` fires (then tells it where to resume).
    pub async fn run(self, start: Start) {
        let drain = self.drain.clone();
        let mut rx = self.live.tx.subscribe();
        let resumed = matches!(start, Start::Cursor(_));
        let (mut cursor, behind) = match start {
            Start::Latest => (
                Cursor {
                    parts: self.live.tops(),
                },
                false,
            ),
            Start::Earliest => (Cursor::default(), true),
            Start::Cursor(c) => (c, true),
        };
        let welcome = frames::welcome(self.format, &self.server, &cursor.encode(), resumed);
        if self.send(welcome, "welcome", 0, Vec::new()).await.is_err() {
            return;
        }
        let result: Result<(), Stop> = async {
            if behind {
                rx = self.catch_up(&mut cursor, resumed).await?;
            }
            loop {
                let item = tokio::select! {
                    biased;
                    _ = drain.cancelled() => return Err(Stop::Draining),
                    r = rx.recv() => r,
                };
                match item {
                    Ok(item) => {
                        let mut batch = vec![item];
                        while batch.len() < 64 {
                            match rx.try_recv() {
                                Ok(i) => batch.push(i),
                                Err(_) => break,
                            }
                        }
                        self.deliver_live(&mut cursor, &batch).await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.metrics.catchup_switches.inc();
                        rx = self.catch_up(&mut cursor, false).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Draining),
                }
            }
        }
        .await;
        if let Err(Stop::Draining) = result {
            let _ = self
                .send(
                    frames::reconnect(self.format, &cursor.encode(), "draining"),
                    "reconnect",
                    0,
                    Vec::new(),
                )
                .await;
            let _ = self.out.send(Outbound::Close(4012, "draining")).await;
        }
    }

    async fn send(
        &self,
        wire: Wire,
        kind: &'static str,
        events: u64,
        stamps: Vec<i64>,
    ) -> Result<(), Stop> {
        self.out
            .send(Outbound::Frame {
                wire,
                kind,
                events,
                stamps,
            })
            .await
            .map_err(|_| Stop::Gone)
    }

    async fn gap(
        &self,
        cursor: &Cursor,
        reason: &'static str,
        missed: &[Missed],
    ) -> Result<(), Stop> {
        self.metrics.gaps.with_label_values(&[reason]).inc();
        self.send(
            frames::gap(self.format, &cursor.encode(), reason, missed),
            "gap",
            0,
            Vec::new(),
        )
        .await
    }

    /// Sends `events` (already known to be after the cursor) in frames, advancing the cursor.
    async fn deliver(
        &self,
        cursor: &mut Cursor,
        epoch: &str,
        events: &[Arc<LiveEvent>],
        live: bool,
    ) -> Result<(), Stop> {
        // Every call carries one partition's events of one epoch: set the epoch once, then
        // move only the position per event (no allocation per event and client).
        let Some(first) = events.first() else {
            return Ok(());
        };
        let p = first.partition;
        let pos = cursor.parts.entry(p).or_insert_with(|| PartitionPos {
            epoch: epoch.to_string(),
            last: EntryId::ZERO,
        });
        if pos.epoch != epoch {
            pos.epoch = epoch.to_string();
        }
        let mut pending: Vec<Arc<LiveEvent>> = Vec::new();
        for e in events {
            debug_assert_eq!(e.partition, p);
            if let Some(pos) = cursor.parts.get_mut(&p) {
                pos.last = e.id;
            }
            if self.filter.matches(e) {
                pending.push(e.clone());
            }
            if pending.len() >= self.max_frame_events {
                self.flush(cursor, &mut pending, live).await?;
            }
        }
        self.flush(cursor, &mut pending, live).await
    }

    async fn flush(
        &self,
        cursor: &Cursor,
        pending: &mut Vec<Arc<LiveEvent>>,
        live: bool,
    ) -> Result<(), Stop> {
        if pending.is_empty() {
            return Ok(());
        }
        let wire = frames::events(self.format, &cursor.encode(), pending);
        let stamps = if live {
            pending.iter().map(|e| e.timestamp_us).collect()
        } else {
            Vec::new()
        };
        let n = pending.len() as u64;
        pending.clear();
        self.send(wire, "events", n, stamps).await
    }

    async fn deliver_live(&self, cursor: &mut Cursor, batch: &[Arc<LiveItem>]) -> Result<(), Stop> {
        for item in batch {
            match item.as_ref() {
                LiveItem::Reset { partition, epoch } => {
                    let known = cursor.parts.get(partition).map(|p| p.epoch.clone());
                    if known.as_deref() != Some(epoch) {
                        let from = cursor.parts.get(partition).map_or(0, |p| p.last.offset + 1);
                        cursor.parts.insert(
                            *partition,
                            PartitionPos {
                                epoch: epoch.to_string(),
                                last: EntryId::ZERO,
                            },
                        );
                        self.gap(
                            cursor,
                            "reset",
                            &[Missed {
                                partition: *partition,
                                from,
                                to: -1,
                            }],
                        )
                        .await?;
                    }
                }
                LiveItem::Events {
                    partition,
                    epoch,
                    events,
                } => {
                    let pos = cursor.parts.get(partition);
                    if pos.is_some_and(|p| p.epoch.as_str() != &**epoch) {
                        // An epoch this session has not been told about: re-read from Redis.
                        let mut c = cursor.clone();
                        self.catch_up_partition(&mut c, *partition, None).await?;
                        *cursor = c;
                        continue;
                    }
                    let after = pos.map_or(EntryId::ZERO, |p| p.last);
                    let fresh: Vec<Arc<LiveEvent>> =
                        events.iter().filter(|e| e.id > after).cloned().collect();
                    self.deliver(cursor, epoch, &fresh, true).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads Redis history up to the live position of every partition, then returns a live
    /// receiver subscribed before the positions were taken (so nothing falls between).
    async fn catch_up(
        &self,
        cursor: &mut Cursor,
        resumed: bool,
    ) -> Result<broadcast::Receiver<Arc<LiveItem>>, Stop> {
        let rx = self.live.tx.subscribe();
        let tops = self.live.tops();
        let mut outcome_gap = false;
        for (p, top) in &tops {
            outcome_gap |= self.catch_up_partition(cursor, *p, Some(top)).await?;
        }
        if resumed {
            let outcome = if outcome_gap { "gap" } else { "ok" };
            self.metrics.resumes.with_label_values(&[outcome]).inc();
        }
        Ok(rx)
    }

    /// Reads one partition's history after the cursor, up to `target` (the live top taken
    /// when the live receiver subscribed, which covers what comes after) or, without one, to
    /// the end of the stream; returns whether a gap was reported.
    async fn catch_up_partition(
        &self,
        cursor: &mut Cursor,
        p: i32,
        target: Option<&PartitionPos>,
    ) -> Result<bool, Stop> {
        let mut gapped = false;
        loop {
            if self.drain.is_cancelled() {
                return Err(Stop::Draining);
            }
            let after = cursor.parts.get(&p).map_or(EntryId::ZERO, |c| c.last);
            let read = loop {
                match self.streams.read(&[(p, after)], self.history_page).await {
                    Ok(mut r) => break r.pop().unwrap_or_default(),
                    Err(_) if self.out.is_closed() => return Err(Stop::Gone),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            };
            let Some(epoch) = read.epoch.clone() else {
                return Ok(gapped);
            };
            match cursor.parts.get(&p).cloned() {
                Some(k) if k.epoch != epoch => {
                    // The history this cursor points into is gone (Redis flushed, topic
                    // re-created): say so, then read the new epoch from its start.
                    cursor.parts.insert(
                        p,
                        PartitionPos {
                            epoch: epoch.clone(),
                            last: EntryId::ZERO,
                        },
                    );
                    let missed = Missed {
                        partition: p,
                        from: k.last.offset + 1,
                        to: -1,
                    };
                    self.gap(cursor, "reset", &[missed]).await?;
                    gapped = true;
                    continue;
                }
                Some(k) if read.trimmed && trimmed_after(k.last, read.first, read.last) => {
                    // Retention removed entries after the cursor: report the offsets that can
                    // no longer be delivered, once, and continue after them.
                    let next_kept = read.first.map_or(read.last.offset + 1, |f| f.offset);
                    let (from, to) = (k.last.offset + 1, next_kept - 1);
                    let resume = EntryId {
                        offset: to,
                        n: u32::MAX,
                    };
                    cursor.parts.insert(
                        p,
                        PartitionPos {
                            epoch: epoch.clone(),
                            last: resume,
                        },
                    );
                    self.gap(
                        cursor,
                        "retention",
                        &[Missed {
                            partition: p,
                            from,
                            to,
                        }],
                    )
                    .await?;
                    gapped = true;
                }
                Some(_) => {}
                None => {
                    cursor.parts.insert(
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
            let events: Vec<Arc<LiveEvent>> = read
                .entries
                .into_iter()
                .filter_map(|e| match LiveEvent::from_entry(p, e.id, e.event) {
                    Ok(ev) => Some(Arc::new(ev)),
                    Err(_) => {
                        self.metrics.decode_errors.inc();
                        None
                    }
                })
                .collect();
            let reached = match (&target, events.last()) {
                (Some(t), Some(last)) => t.epoch == epoch && last.id >= t.last,
                _ => false,
            };
            self.deliver(cursor, &epoch, &events, false).await?;
            if let Some(id) = last_read {
                // Past undecodable entries too, so a bad entry is never read forever.
                cursor.parts.insert(
                    p,
                    PartitionPos {
                        epoch: epoch.clone(),
                        last: id,
                    },
                );
            }
            if !page_full || reached {
                return Ok(gapped);
            }
        }
    }
}

/// Whether retention removed entries after `last`: the first kept entry is more than one
/// offset past it (or nothing is kept). An offset that never held an event (a dead-lettered
/// record) just before the first kept entry is reported as missed too: the stream cannot tell.
fn trimmed_after(last: EntryId, first: Option<EntryId>, newest: EntryId) -> bool {
    match first {
        Some(f) => f.offset > last.offset + 1,
        None => newest > last,
    }
}

/// Records producer-to-send latency for the events of a frame just written.
pub fn observe_sent(metrics: &Metrics, stamps: &[i64]) {
    let now = dashstream::now_us();
    for ts in stamps {
        let age = now - ts;
        if age < 0 {
            metrics.clock_skew.inc();
        } else {
            metrics.producer_to_send.observe(age as f64 / 1e6);
        }
    }
}
