//! Unit tests of the session state machine (see `session.rs`).
//!
//! Sessions run against [`FakeHistory`] (in-memory partition streams with epochs, retention
//! and resets, answering reads exactly as Redis does, see `streams.rs`) and against the real
//! live ring, fed by [`Tail`], which plays the tail loop of `reader.rs` one iteration at a
//! time. Test clients read their session's queue at their own pace (stalling at times, so the
//! ring laps them), parse every frame in both formats, follow drains (`reconnect`, then close
//! 4012) and abrupt disconnects by resuming from the cursor they hold, and keep one record
//! across all their sessions.
//!
//! The invariant, checked exactly at the end of every run: per partition and epoch, a client
//! receives events in stream order and none twice (across resumes too), and every event after
//! its start position that its filter selects is either received or named by a gap frame
//! (`retention`: offsets `from..=to` of the epoch; `reset`: the old epoch from offset `from`
//! on, and any epoch that came and went in between). Frames are checked as they arrive: a
//! cursor never goes back, an epoch never changes without a `reset` gap, and a gap names only
//! what is really gone (trimmed, or of an epoch that ended).
//!
//! Runtimes are current-thread and driven by yields, not timers: `tokio::time::pause` needs
//! tokio's `test-util` feature, which the workspace does not enable. The one place a session
//! sleeps (250 ms before retrying a failed history read) is cut short by the drains of the
//! final phase, and has a test of its own. The lap that only `try_recv` sees (review C1)
//! cannot happen on one thread: see [`a_lap_seen_by_try_recv_is_caught_up`].
//!
//! Random runs: `random_runs_whole_records` (one event per record) and
//! `random_runs_batched_records` (records of up to 3 events, retention that splits them,
//! epochs from offset 0), 200 seeds each. Knobs: `SESSION_TEST_SEED=<n>` runs one seed,
//! `SESSION_TEST_TRACE=<lines>` prints a journal of the run (driver, tail passes, reads,
//! frames) with a failure, `SESSION_TEST_ALL=1` runs every seed and lists the failures,
//! `SESSION_TEST_C1_ROUNDS=<n>` sets the rounds of the C1 test.

use super::{History, Outbound, Session, Start};
use crate::cursor::{Cursor, EntryId, PartitionPos};
use crate::event::{Filter, LiveEvent};
use crate::frames::{Format, Outgoing, Wire};
use crate::metrics::Metrics;
use crate::outq::{OutQueue, Outbox};
use crate::reader::{Live, LiveItem};
use crate::streams::{Entry, PartRead, ReadError, MALFORMED_EVENT};
use bytes::Bytes;
use dashstream::proto::{server_frame::Frame, Event, Header, ServerFrame};
use dashstream::seq::SequenceTracker;
use futures::future::BoxFuture;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const THREADS: [&str; 4] = ["t0", "t1", "t2", "t3"];
const TENANTS: [&str; 2] = ["acme", "globex"];
/// The position past every entry (nothing is read after it).
const PAST_ALL: EntryId = EntryId {
    offset: i64::MAX,
    n: u32::MAX,
};

// ---------------------------------------------------------------------------------------------
// The fake history
// ---------------------------------------------------------------------------------------------

/// One stream entry, with what the checks need to know about its event.
#[derive(Debug, Clone)]
struct Rec {
    id: EntryId,
    /// Unique per event (0: a malformed entry, with no event).
    serial: u64,
    thread: &'static str,
    tenant: &'static str,
    sequence: u64,
    bytes: Bytes,
}

impl Rec {
    fn is_event(&self) -> bool {
        self.serial != 0
    }
}

/// Every entry one epoch of a partition's stream ever held.
struct EpochLog {
    epoch: String,
    recs: Vec<Rec>,
    /// `recs[..gone]` are no longer in the stream: trimmed, or all of them once the epoch ended.
    gone: usize,
    /// First entries held after a trim that split a record (its head trimmed, the rest kept).
    splits: Vec<EntryId>,
}

impl EpochLog {
    fn held(&self) -> &[Rec] {
        &self.recs[self.gone..]
    }

    fn find(&self, id: EntryId) -> Option<usize> {
        self.recs.binary_search_by(|r| r.id.cmp(&id)).ok()
    }
}

struct Part {
    /// In order; the last one is the stream's current epoch when `current`.
    epochs: Vec<EpochLog>,
    /// The meta hash names the last epoch (false while a reset is under way).
    current: bool,
    /// The stream key exists (after a reset, from its first entry on).
    exists: bool,
    /// The stream's last generated ID.
    last: EntryId,
    next_offset: i64,
}

/// Partition streams in memory. Entries are `(offset, n)` with n = 1..k for the k events of a
/// record; offsets may skip (records that went to the DLQ); retention drops the oldest
/// entries; a reset deletes the stream and its meta, and a new epoch starts (at once, or some
/// steps later).
struct Store {
    parts: BTreeMap<i32, Part>,
    rng: StdRng,
    serial: u64,
    sequences: BTreeMap<&'static str, u64>,
    /// Chance that a history read fails, and reads that fail next whatever the chance.
    fail_rate: f64,
    fail_next: u32,
    /// Most yields before a read's snapshot and after it (a reply in flight).
    max_yields: u32,
    /// While set, history reads wait for a permit before they read (scripted interleavings).
    gate: Option<Arc<Semaphore>>,
    /// History reads waiting at the gate.
    waiting: usize,
    reads: u64,
    failures: u64,
}

fn event_bytes(serial: u64, thread: &str, tenant: &str, sequence: u64) -> Bytes {
    Event {
        header: Some(Header {
            message_id: [serial.to_be_bytes(), (!serial).to_be_bytes()]
                .concat()
                .into(),
            timestamp_us: 1_700_000_000_000_000 + serial as i64,
            tenant_id: tenant.into(),
            thread_id: thread.into(),
            sequence,
            event_type: "token".into(),
            schema_version: 1,
        }),
        payload: format!("{{\"s\":{serial}}}").into_bytes().into(),
        content_type: "application/json".into(),
    }
    .encode_to_vec()
    .into()
}

impl Store {
    fn new(seed: u64) -> Self {
        Self {
            parts: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            serial: 0,
            sequences: BTreeMap::new(),
            fail_rate: 0.0,
            fail_next: 0,
            max_yields: 3,
            gate: None,
            waiting: 0,
            reads: 0,
            failures: 0,
        }
    }

    fn new_epoch(&mut self) -> EpochLog {
        EpochLog {
            epoch: format!("{:016x}", self.rng.random::<u64>()),
            recs: Vec::new(),
            gone: 0,
            splits: Vec::new(),
        }
    }

    fn add_partition(&mut self, p: i32, first_offset: i64) {
        let log = self.new_epoch();
        self.parts.insert(
            p,
            Part {
                epochs: vec![log],
                current: true,
                exists: false,
                last: EntryId::ZERO,
                next_offset: first_offset,
            },
        );
    }

    fn part(&self, p: i32) -> &Part {
        &self.parts[&p]
    }

    /// Appends a record of `events` entries at the next offset, after `skip` offsets that
    /// held no event; each entry is malformed with chance `malformed`. False (nothing written)
    /// while a reset is under way.
    fn append(&mut self, p: i32, events: u32, skip: i64, malformed: f64) -> bool {
        let Some(part) = self.parts.get(&p) else {
            return false;
        };
        if !part.current {
            return false;
        }
        let offset = part.next_offset + skip;
        let mut recs = Vec::new();
        for n in 1..=events {
            let id = EntryId { offset, n };
            if self.rng.random_bool(malformed) {
                recs.push(Rec {
                    id,
                    serial: 0,
                    thread: "",
                    tenant: "",
                    sequence: 0,
                    bytes: Bytes::from_static(MALFORMED_EVENT),
                });
                continue;
            }
            self.serial += 1;
            let thread = THREADS[self.rng.random_range(0..THREADS.len())];
            let tenant = TENANTS[self.rng.random_range(0..TENANTS.len())];
            let seq = self.sequences.entry(thread).or_insert(0);
            *seq += 1;
            let sequence = *seq;
            recs.push(Rec {
                id,
                serial: self.serial,
                thread,
                tenant,
                sequence,
                bytes: event_bytes(self.serial, thread, tenant, sequence),
            });
        }
        note(|| {
            let ids: Vec<String> = recs
                .iter()
                .map(|r| {
                    format!(
                        "{}{}",
                        r.id,
                        if r.is_event() {
                            format!("#{}", r.serial)
                        } else {
                            "(bad)".into()
                        }
                    )
                })
                .collect();
            format!("append {p}: {}", ids.join(" "))
        });
        let part = self.parts.get_mut(&p).expect("partition");
        part.next_offset = offset + 1;
        part.exists = true;
        part.last = recs.last().map_or(part.last, |r| r.id);
        part.epochs.last_mut().expect("epoch").recs.extend(recs);
        true
    }

    /// Retention removes the `n` oldest entries still held (it may split a record).
    fn trim(&mut self, p: i32, n: usize) {
        let part = self.parts.get_mut(&p).expect("partition");
        if !part.exists {
            return;
        }
        let log = part.epochs.last_mut().expect("epoch");
        log.gone = (log.gone + n).min(log.recs.len());
        if let Some(first) = log.held().first().filter(|r| r.id.n > 1) {
            log.splits.push(first.id);
        }
        note(|| {
            format!(
                "trim {p}: first held {:?}",
                log.held().first().map(|r| r.id)
            )
        });
    }

    /// Retention removes the `n` oldest records still held, whole.
    fn trim_records(&mut self, p: i32, n: usize) {
        let part = self.parts.get_mut(&p).expect("partition");
        if !part.exists {
            return;
        }
        let log = part.epochs.last_mut().expect("epoch");
        for _ in 0..n {
            let Some(first) = log.recs.get(log.gone).map(|r| r.id.offset) else {
                break;
            };
            while log.recs.get(log.gone).is_some_and(|r| r.id.offset == first) {
                log.gone += 1;
            }
        }
        note(|| {
            format!(
                "trim {p}: first held {:?}",
                log.held().first().map(|r| r.id)
            )
        });
    }

    /// The stream and its meta are deleted: the epoch's history is gone.
    fn reset_begin(&mut self, p: i32) {
        let part = self.parts.get_mut(&p).expect("partition");
        if !part.current {
            return;
        }
        let log = part.epochs.last_mut().expect("epoch");
        log.gone = log.recs.len();
        part.current = false;
        part.exists = false;
        part.last = EntryId::ZERO;
        note(|| format!("reset {p}: epoch #{} ends", part.epochs.len() - 1));
    }

    /// The ingest writes a new epoch; the stream starts again at `first_offset`.
    fn reset_end(&mut self, p: i32, first_offset: i64) {
        if self.part(p).current {
            return;
        }
        let log = self.new_epoch();
        let part = self.parts.get_mut(&p).expect("partition");
        part.epochs.push(log);
        part.current = true;
        part.next_offset = first_offset;
        note(|| {
            format!(
                "reset {p}: epoch #{} begins at offset {first_offset}",
                part.epochs.len() - 1
            )
        });
    }

    fn epoch_index(&self, p: i32, epoch: &str) -> Option<usize> {
        self.parts
            .get(&p)?
            .epochs
            .iter()
            .position(|e| e.epoch == epoch)
    }

    fn current_epoch(&self, p: i32) -> Option<&EpochLog> {
        let part = self.part(p);
        part.current.then(|| part.epochs.last()).flatten()
    }

    /// One atomic read, as `Streams::read` answers it: per partition the epoch (`None` when the
    /// meta is missing), the first entry held, whether retention removed entries, the last ID,
    /// and up to `count` entries after the position.
    fn read(&mut self, from: &[(i32, EntryId)], count: usize) -> Vec<PartRead> {
        self.reads += 1;
        from.iter()
            .map(|(p, after)| {
                let Some(part) = self.parts.get(p) else {
                    return PartRead::default();
                };
                let log = part.epochs.last().expect("epoch");
                let mut r = PartRead {
                    epoch: part.current.then(|| log.epoch.clone()),
                    ..PartRead::default()
                };
                if part.exists {
                    let held = log.held();
                    r.first = held.first().map(|e| e.id);
                    r.trimmed = log.gone > 0;
                    r.last = part.last;
                    if count > 0 && *after != PAST_ALL {
                        let start = held.partition_point(|e| e.id <= *after);
                        r.entries = held[start..]
                            .iter()
                            .take(count)
                            .map(|e| Entry {
                                id: e.id,
                                event: e.bytes.clone(),
                                ingest_us: 0,
                            })
                            .collect();
                    }
                }
                r
            })
            .collect()
    }

    /// How a history read goes: yields before its snapshot, yields after, and whether it fails.
    fn plan_read(&mut self) -> (u32, u32, bool) {
        let fail = if self.fail_next > 0 {
            self.fail_next -= 1;
            true
        } else {
            self.rng.random_bool(self.fail_rate)
        };
        if fail {
            self.failures += 1;
        }
        let m = self.max_yields;
        (
            self.rng.random_range(0..=m),
            self.rng.random_range(0..=m),
            fail,
        )
    }
}

thread_local! {
    /// What happened in the current run, when `SESSION_TEST_TRACE` is set: printed with a
    /// failure (a run is on one thread).
    static JOURNAL: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

fn journal_start() {
    let on = std::env::var_os("SESSION_TEST_TRACE").is_some();
    JOURNAL.with(|j| *j.borrow_mut() = on.then(Vec::new));
}

fn note(f: impl FnOnce() -> String) {
    JOURNAL.with(|j| {
        if let Some(j) = j.borrow_mut().as_mut() {
            j.push(f());
        }
    });
}

fn journal_tail() -> String {
    JOURNAL.with(|j| match j.borrow().as_ref() {
        Some(j) => {
            let n: usize = std::env::var("SESSION_TEST_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            let from = j.len().saturating_sub(n);
            format!(
                "\n--- last {} of {} journal lines ---\n{}",
                j.len() - from,
                j.len(),
                j[from..].join("\n")
            )
        }
        None => "\n(set SESSION_TEST_TRACE=<lines> for a journal of the run)".into(),
    })
}

async fn yields(n: u32) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// The sessions' view of the store.
struct FakeHistory(Arc<Mutex<Store>>, String);

fn read_summary(store: &Store, from: &[(i32, EntryId)], reads: &[PartRead]) -> String {
    from.iter()
        .zip(reads)
        .map(|((p, after), r)| {
            let e = r.epoch.as_ref().and_then(|e| store.epoch_index(*p, e));
            format!(
                "[{p} after {after}: epoch {e:?} first {:?} trimmed {} last {} entries {}]",
                r.first,
                r.trimmed,
                r.last,
                match (r.entries.first(), r.entries.last()) {
                    (Some(a), Some(b)) => format!("{}..{} ({})", a.id, b.id, r.entries.len()),
                    _ => "none".into(),
                }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl History for FakeHistory {
    fn read<'a>(
        &'a self,
        from: &'a [(i32, EntryId)],
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<PartRead>, ReadError>> {
        Box::pin(async move {
            let gate = lock(&self.0).gate.clone();
            if let Some(gate) = gate {
                lock(&self.0).waiting += 1;
                gate.acquire().await.expect("gate").forget();
                lock(&self.0).waiting -= 1;
            }
            let (before, after, fail) = lock(&self.0).plan_read();
            yields(before).await;
            if fail {
                note(|| format!("{}: read fails", self.1));
                return Err(ReadError::Timeout);
            }
            let reads = {
                let mut store = lock(&self.0);
                let reads = store.read(from, count);
                note(|| format!("{}: read {}", self.1, read_summary(&store, from, &reads)));
                reads
            };
            yields(after).await;
            Ok(reads)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The tail loop, one iteration at a time (reader.rs's own `publish` per partition)
// ---------------------------------------------------------------------------------------------

/// The tail's metrics (counted, never read here).
static TAIL_METRICS: std::sync::LazyLock<Metrics> =
    std::sync::LazyLock::new(|| Metrics::new(&prometheus::Registry::new()).expect("metrics"));

struct Tail {
    live: Arc<Live>,
    store: Arc<Mutex<Store>>,
}

impl Tail {
    /// The loop's start (`discover` at start-up): every stream is followed from its end.
    fn start(&self) {
        let mut store = lock(&self.store);
        let from: Vec<(i32, EntryId)> = store.parts.keys().map(|p| (*p, EntryId::ZERO)).collect();
        let reads = store.read(&from, 0);
        drop(store);
        {
            let mut tops = self.live.tops.write().unwrap();
            for ((p, _), r) in from.iter().zip(reads) {
                if let Some(epoch) = r.epoch {
                    tops.insert(
                        *p,
                        PartitionPos {
                            epoch,
                            last: r.last,
                        },
                    );
                }
            }
        }
        self.live.publish_pass(Vec::new());
    }

    /// One read of up to `count` entries per partition, published as one pass. Returns whether
    /// it found anything (entries, a reset, a retention gap).
    fn step(&self, count: usize) -> bool {
        let from: Vec<(i32, EntryId)> = self
            .live
            .tops()
            .iter()
            .map(|(p, pos)| (*p, pos.last))
            .collect();
        if from.is_empty() {
            return false;
        }
        let reads = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(&from, count);
        let mut items = Vec::new();
        let mut found = false;
        for ((p, _), read) in from.iter().zip(reads) {
            found |= crate::reader::publish(
                &self.live,
                &TAIL_METRICS,
                &mut SequenceTracker::new(1),
                *p,
                read,
                &mut items,
            );
        }
        if !items.is_empty() {
            note(|| {
                let store = lock(&self.store);
                let its: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        LiveItem::Events {
                            partition,
                            epoch,
                            events,
                        } => format!(
                            "events {partition}#{:?} {}..{}",
                            store.epoch_index(*partition, epoch),
                            events[0].id,
                            events[events.len() - 1].id
                        ),
                        LiveItem::Reset { partition, epoch } => {
                            format!(
                                "reset {partition}#{:?}",
                                store.epoch_index(*partition, epoch)
                            )
                        }
                        LiveItem::Retention {
                            partition,
                            from,
                            to,
                            ..
                        } => {
                            format!("retention {partition} {from}..={to}")
                        }
                    })
                    .collect();
                format!(
                    "tail pass {}: {}",
                    self.live.canonical().0 + 1,
                    its.join(", ")
                )
            });
            self.live.publish_pass(items);
        }
        found
    }
}

// ---------------------------------------------------------------------------------------------
// Frames as a client reads them
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Ev {
    partition: i32,
    offset: i64,
    index: u32,
    thread: String,
    tenant: String,
    sequence: u64,
    serial: u64,
}

#[derive(Debug)]
enum Msg {
    Welcome {
        cursor: String,
        resumed: bool,
    },
    Events {
        cursor: String,
        events: Vec<Ev>,
    },
    Gap {
        cursor: String,
        reason: String,
        missed: Vec<(i32, i64, i64)>,
    },
    Reconnect {
        cursor: String,
        reason: String,
    },
}

fn parse(format: Format, w: &Wire) -> Result<Msg, String> {
    let b = w.bytes();
    if b[0] & 0x80 == 0 || b[1] & 0x80 != 0 {
        return Err("not a final unmasked frame".into());
    }
    match format {
        Format::Json => {
            if !w.is_text() {
                return Err("a JSON session sent a binary frame".into());
            }
            parse_json(w.payload())
        }
        Format::Protobuf => {
            if b[0] & 0x0f != 0x2 {
                return Err("a protobuf session sent a non-binary frame".into());
            }
            parse_proto(w.payload())
        }
    }
}

fn parse_json(payload: &[u8]) -> Result<Msg, String> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let s = |v: &serde_json::Value, k: &str| -> Result<String, String> {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no string {k} in {v}"))
    };
    let i = |v: &serde_json::Value, k: &str| -> Result<i64, String> {
        v[k].as_i64()
            .ok_or_else(|| format!("no integer {k} in {v}"))
    };
    Ok(match v["type"].as_str() {
        Some("welcome") => Msg::Welcome {
            cursor: s(&v, "cursor")?,
            resumed: v["resumed"].as_bool().ok_or("no resumed")?,
        },
        Some("events") => {
            let list = v["events"].as_array().ok_or("no events array")?;
            let mut events = Vec::new();
            for e in list {
                events.push(Ev {
                    partition: i(e, "partition")? as i32,
                    offset: i(e, "offset")?,
                    index: i(e, "index")? as u32,
                    thread: s(e, "thread")?,
                    tenant: s(e, "tenant")?,
                    sequence: i(e, "sequence")? as u64,
                    serial: i(&e["payload"], "s")? as u64,
                });
            }
            Msg::Events {
                cursor: s(&v, "cursor")?,
                events,
            }
        }
        Some("gap") => {
            let list = v["missed"].as_array().ok_or("no missed array")?;
            let mut missed = Vec::new();
            for m in list {
                missed.push((i(m, "partition")? as i32, i(m, "from")?, i(m, "to")?));
            }
            Msg::Gap {
                cursor: s(&v, "cursor")?,
                reason: s(&v, "reason")?,
                missed,
            }
        }
        Some("reconnect") => Msg::Reconnect {
            cursor: s(&v, "cursor")?,
            reason: s(&v, "reason")?,
        },
        other => return Err(format!("unexpected frame type {other:?}")),
    })
}

fn parse_proto(payload: &[u8]) -> Result<Msg, String> {
    let f = ServerFrame::decode(payload).map_err(|e| e.to_string())?;
    Ok(match f.frame.ok_or("empty server frame")? {
        Frame::Welcome(w) => Msg::Welcome {
            cursor: w.cursor,
            resumed: w.resumed,
        },
        Frame::Events(e) => {
            let mut events = Vec::new();
            for se in e.events {
                let ev = Event::decode(se.event).map_err(|e| e.to_string())?;
                let h = ev.header.unwrap_or_default();
                let p: serde_json::Value =
                    serde_json::from_slice(&ev.payload).map_err(|e| e.to_string())?;
                events.push(Ev {
                    partition: se.partition,
                    offset: se.offset,
                    index: se.index,
                    thread: h.thread_id,
                    tenant: h.tenant_id,
                    sequence: h.sequence,
                    serial: p["s"].as_u64().ok_or("no serial in the payload")?,
                });
            }
            Msg::Events {
                cursor: e.cursor,
                events,
            }
        }
        Frame::Gap(g) => Msg::Gap {
            cursor: g.cursor,
            reason: g.reason,
            missed: g
                .missed
                .iter()
                .map(|m| (m.partition, m.from, m.to))
                .collect(),
        },
        Frame::Reconnect(r) => Msg::Reconnect {
            cursor: r.cursor,
            reason: r.reason,
        },
        other => return Err(format!("unexpected frame {other:?}")),
    })
}

fn selects(filter: &Filter, r: &Rec) -> bool {
    r.is_event()
        && filter.tenants.as_ref().is_none_or(|s| s.contains(r.tenant))
        && filter.threads.as_ref().is_none_or(|s| s.contains(r.thread))
        && filter.types.as_ref().is_none_or(|s| s.contains("token"))
}

// ---------------------------------------------------------------------------------------------
// A client's record, across all its sessions
// ---------------------------------------------------------------------------------------------

/// Where a partition's owed events begin for a client.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Named by the first welcome: the events of epoch #j after this entry, and all of later epochs.
    After(usize, EntryId),
    /// First named by a later frame (a partition the start did not name is read "from the
    /// oldest event Redis holds"): the entries of epoch #j still held then, and all of later
    /// epochs.
    Held(usize, usize),
}

#[derive(Debug, Clone)]
struct GapRec {
    p: i32,
    reset: bool,
    from: i64,
    to: i64,
    /// The client's position in the partition before the gap.
    prev: Option<(usize, EntryId)>,
    /// The epoch after the gap.
    epoch: usize,
}

impl GapRec {
    fn covers(&self, p: i32, j: usize, id: EntryId) -> bool {
        if self.p != p {
            return false;
        }
        if !self.reset {
            return self.epoch == j && self.from <= id.offset && id.offset <= self.to;
        }
        match self.prev {
            Some((pj, _)) => (pj == j && id.offset >= self.from) || (pj < j && j < self.epoch),
            None => j < self.epoch,
        }
    }
}

type Positions = BTreeMap<i32, (usize, EntryId)>;

#[derive(Default)]
struct Record {
    tag: String,
    origin: BTreeMap<i32, Origin>,
    /// The client's position: the last cursor received, as (epoch index, entry) per partition.
    pos: Positions,
    last_cursor: Option<Cursor>,
    /// Events received per partition, in order.
    events: BTreeMap<i32, Vec<(usize, EntryId)>>,
    gaps: Vec<GapRec>,
    sessions: usize,
    /// The welcome the current session owes (cursor, resumed), until it came.
    welcome: Option<(Option<Cursor>, bool)>,
    /// The current session's reconnect cursor, once it came.
    reconnect: Option<Cursor>,
    frames: u64,
    delivered: u64,
}

impl Record {
    fn fail(&self, msg: impl Display) -> ! {
        panic!("{}: {msg}{}", self.tag, journal_tail())
    }

    /// A new session, whose welcome names `welcome` (`None`: the canonical cursor of when it
    /// started, from=latest).
    fn begin(&mut self, welcome: Option<Cursor>, resumed: bool) {
        self.sessions += 1;
        self.welcome = Some((welcome, resumed));
        self.reconnect = None;
    }

    fn positions(&self, store: &Store, c: &Cursor) -> Positions {
        c.parts
            .iter()
            .map(|(p, pos)| {
                let j = store.epoch_index(*p, &pos.epoch).unwrap_or_else(|| {
                    self.fail(format!(
                        "a cursor names epoch {} of partition {p}, which never existed",
                        pos.epoch
                    ))
                });
                (*p, (j, pos.last))
            })
            .collect()
    }

    fn decode(&self, s: &str) -> Cursor {
        Cursor::decode(s).unwrap_or_else(|e| self.fail(format!("cursor {s:?}: {e}")))
    }

    /// One frame of the current session.
    fn frame(&mut self, store: &Store, format: Format, filter: &Filter, f: &Outgoing) {
        self.frames += 1;
        let msg = parse(format, &f.wire).unwrap_or_else(|e| self.fail(format!("frame: {e}")));
        note(|| {
            let show = |c: &str| match Cursor::decode(c) {
                Ok(c) => c
                    .parts
                    .iter()
                    .map(|(p, pos)| {
                        format!("{p}#{:?}@{}", store.epoch_index(*p, &pos.epoch), pos.last)
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Err(e) => e.to_string(),
            };
            let what = match &msg {
                Msg::Welcome { cursor, resumed } => {
                    format!("welcome resumed={resumed} [{}]", show(cursor))
                }
                Msg::Events { cursor, events } => format!(
                    "events {} [{}]",
                    events
                        .iter()
                        .map(|e| format!("{}/{}-{}", e.partition, e.offset, e.index))
                        .collect::<Vec<_>>()
                        .join(" "),
                    show(cursor)
                ),
                Msg::Gap {
                    cursor,
                    reason,
                    missed,
                } => format!("gap {reason} {missed:?} [{}]", show(cursor)),
                Msg::Reconnect { cursor, .. } => format!("reconnect [{}]", show(cursor)),
            };
            format!("{} s{}: {what}", self.tag, self.sessions)
        });
        if self.reconnect.is_some() {
            self.fail(format!("a frame after reconnect: {msg:?}"));
        }
        let kind = match &msg {
            Msg::Welcome { .. } => "welcome",
            Msg::Events { .. } => "events",
            Msg::Gap { .. } => "gap",
            Msg::Reconnect { .. } => "reconnect",
        };
        if f.kind != kind {
            self.fail(format!("a {kind} frame labelled {}", f.kind));
        }
        if self.welcome.is_some() != matches!(msg, Msg::Welcome { .. }) {
            self.fail(format!("welcome is not (only) the first frame: {msg:?}"));
        }
        match msg {
            Msg::Welcome { cursor, resumed } => {
                let (want, want_resumed) = self.welcome.take().expect("expected welcome");
                let c = self.decode(&cursor);
                if want.as_ref().is_some_and(|w| *w != c) || resumed != want_resumed {
                    self.fail(format!(
                        "welcome {c:?} resumed={resumed}, expected {want:?} resumed={want_resumed}"
                    ));
                }
                let new = self.positions(store, &c);
                if self.sessions == 1 {
                    for (p, (j, last)) in &new {
                        self.origin.insert(*p, Origin::After(*j, *last));
                    }
                } else if new != self.pos {
                    self.fail(format!(
                        "resumed at {new:?}, but the client was at {:?}",
                        self.pos
                    ));
                }
                self.advance(store, c, None);
            }
            Msg::Events { cursor, events } => {
                if f.events as usize != events.len() || events.is_empty() {
                    self.fail(format!(
                        "an events frame of {} events counted {}",
                        events.len(),
                        f.events
                    ));
                }
                let c = self.decode(&cursor);
                let new = self.positions(store, &c);
                let mut at = self.pos.clone();
                for e in &events {
                    let p = e.partition;
                    let id = EntryId {
                        offset: e.offset,
                        n: e.index,
                    };
                    let Some(&(j, upto)) = new.get(&p) else {
                        self.fail(format!(
                            "event {p}/{id}: the frame's cursor omits partition {p}"
                        ));
                    };
                    if let Some(&(pj, pid)) = at.get(&p) {
                        if pj != j {
                            self.fail(format!(
                                "event {p}/{id} of epoch #{j} while at epoch #{pj}, with no reset gap"
                            ));
                        }
                        if id <= pid {
                            self.fail(format!(
                                "event {p}/{id} (epoch #{j}) after {pid}: out of order or twice"
                            ));
                        }
                    }
                    if id > upto {
                        self.fail(format!("event {p}/{id} beyond its frame's cursor {upto}"));
                    }
                    let log = &store.part(p).epochs[j];
                    let Some(i) = log.find(id) else {
                        self.fail(format!("event {p}/{id} is not an entry of epoch #{j}"));
                    };
                    let r = &log.recs[i];
                    if !r.is_event()
                        || r.serial != e.serial
                        || r.thread != e.thread
                        || r.tenant != e.tenant
                        || r.sequence != e.sequence
                    {
                        self.fail(format!("event {p}/{id} is {e:?}, the stream holds {r:?}"));
                    }
                    if !selects(filter, r) {
                        self.fail(format!(
                            "event {p}/{id} does not match the filter {filter:?}"
                        ));
                    }
                    at.insert(p, (j, id));
                    self.events.entry(p).or_default().push((j, id));
                    self.delivered += 1;
                }
                self.advance(store, c, None);
            }
            Msg::Gap {
                cursor,
                reason,
                missed,
            } => {
                if f.gap != Some(reason.as_str()) {
                    self.fail(format!("a {reason} gap labelled {:?}", f.gap));
                }
                let [(p, from, to)] = missed[..] else {
                    self.fail(format!("a gap frame names {} ranges", missed.len()));
                };
                let c = self.decode(&cursor);
                let new = self.positions(store, &c);
                let Some(&(j, last)) = new.get(&p) else {
                    self.fail(format!("a gap of partition {p} whose cursor omits it"));
                };
                let prev = self.pos.get(&p).copied();
                let log = &store.part(p).epochs[j];
                let reset = match reason.as_str() {
                    "retention" => {
                        // The client's position may be behind the session's, by events the
                        // filter skipped or entries that held no event (no frame carried those
                        // moves); what lies between is checked at the end.
                        let past = EntryId {
                            offset: to,
                            n: u32::MAX,
                        };
                        if prev.is_some_and(|(pj, _)| pj != j) || last != past || from > to {
                            self.fail(format!(
                                "retention gap {from}..={to} of {p}: from {prev:?} to #{j} at {last}"
                            ));
                        }
                        if let Some((_, pid)) =
                            prev.filter(|(_, pid)| *pid != EntryId::ZERO && from <= pid.offset)
                        {
                            self.fail(format!(
                                "retention gap {from}..={to} of {p} names offsets already delivered (at {pid})"
                            ));
                        }
                        // Only what is gone: every entry of those offsets was trimmed.
                        if let Some(r) = log.recs[log.gone..]
                            .iter()
                            .find(|r| from <= r.id.offset && r.id.offset <= to)
                        {
                            self.fail(format!(
                                "retention gap {from}..={to} of partition {p} epoch #{j} names entry {}, still held",
                                r.id
                            ));
                        }
                        false
                    }
                    "reset" => {
                        if last != EntryId::ZERO || to != -1 {
                            self.fail(format!("reset gap {from}..={to} of {p}: cursor at {last}"));
                        }
                        match prev {
                            Some((pj, pid)) => {
                                if pj >= j || from < crate::session::next_offset(pid) {
                                    self.fail(format!(
                                        "reset gap of {p} from {from}: from epoch #{pj} at {pid} to #{j}"
                                    ));
                                }
                            }
                            None => {
                                if from < 0 {
                                    self.fail(format!(
                                        "reset gap of unknown partition {p} from {from}"
                                    ));
                                }
                            }
                        }
                        true
                    }
                    other => self.fail(format!("gap reason {other:?}")),
                };
                self.gaps.push(GapRec {
                    p,
                    reset,
                    from,
                    to,
                    prev,
                    epoch: j,
                });
                self.advance(store, c, reset.then_some(p));
            }
            Msg::Reconnect { cursor, reason } => {
                if reason != "draining" {
                    self.fail(format!("reconnect reason {reason:?}"));
                }
                let c = self.decode(&cursor);
                self.advance(store, c.clone(), None);
                self.reconnect = Some(c);
            }
        }
    }

    /// Moves the client's position to cursor `c`, which must not go back, nor change an epoch
    /// (but for the partition of a reset gap, checked by the caller).
    fn advance(&mut self, store: &Store, c: Cursor, reset_of: Option<i32>) {
        let new = self.positions(store, &c);
        for (p, &(oj, olast)) in &self.pos {
            let Some(&(j, last)) = new.get(p) else {
                self.fail(format!("partition {p} vanished from the cursor"));
            };
            if Some(*p) != reset_of && (j != oj || last < olast) {
                self.fail(format!(
                    "partition {p} moved from epoch #{oj} at {olast} to #{j} at {last} without a reset gap"
                ));
            }
        }
        for (p, &(j, _)) in &new {
            if !self.origin.contains_key(p) {
                let gone = store.part(*p).epochs[j].gone;
                self.origin.insert(*p, Origin::Held(j, gone));
            }
        }
        self.pos = new;
        self.last_cursor = Some(c);
    }

    /// Every event owed was received or named by a gap.
    fn check_complete(&self, store: &Store, filter: &Filter) {
        let received: HashSet<(i32, usize, EntryId)> = self
            .events
            .iter()
            .flat_map(|(p, evs)| evs.iter().map(move |(j, id)| (*p, *j, *id)))
            .collect();
        for (p, part) in &store.parts {
            let Some(origin) = self.origin.get(p) else {
                self.fail(format!("never told about partition {p}"));
            };
            for (j, log) in part.epochs.iter().enumerate() {
                for (i, r) in log.recs.iter().enumerate() {
                    let owed = match *origin {
                        Origin::After(oj, oid) => j > oj || (j == oj && r.id > oid),
                        Origin::Held(oj, gone) => j > oj || (j == oj && i >= gone),
                    };
                    if !owed || !selects(filter, r) || received.contains(&(*p, j, r.id)) {
                        continue;
                    }
                    if self.gaps.iter().any(|g| g.covers(*p, j, r.id)) {
                        continue;
                    }
                    let got: Vec<String> = self
                        .events
                        .get(p)
                        .map(|v| {
                            v.iter()
                                .filter(|(ej, _)| *ej == j)
                                .map(|(_, id)| id.to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    let gaps: Vec<&GapRec> = self.gaps.iter().filter(|g| g.p == *p).collect();
                    let all: Vec<String> = log
                        .recs
                        .iter()
                        .map(|r| format!("{}{}", r.id, if r.is_event() { "" } else { "(bad)" }))
                        .collect();
                    // The known ways to get here (see the tests named in the hint).
                    let id = r.id;
                    if is_documented_limit(log, i, id, &received, *p, j, filter, origin) {
                        // docs/GATEWAY.md, known limits: a gap names offsets, so retention
                        // that splits a batch record, or trims the rest of a record whose first
                        // events were delivered, is named by offset only.
                        continue;
                    }
                    let hint = if id.offset == 0 {
                        "an entry at offset 0 after position 0-0 \
                         (an_entry_at_offset_zero_trimmed_before_it_was_read_is_named_by_no_gap)"
                    } else if log
                        .splits
                        .iter()
                        .any(|f| f.offset == id.offset && f.n > id.n)
                    {
                        "the trimmed head of a record whose rest was kept \
                         (a_record_trimmed_in_part_loses_its_first_events_silently)"
                    } else if log.recs[..i].iter().rev().take_while(|h| h.id.offset == id.offset).count() > 0
                        && log.recs[..i].iter().rev().take_while(|h| h.id.offset == id.offset).all(|h| {
                            // The record's head was passed: received, skipped by the filter,
                            // no event, or at the client's start.
                            received.contains(&(*p, j, h.id))
                                || !selects(filter, h)
                                || matches!(*origin, Origin::After(oj, oid) if oj == j && h.id <= oid)
                        })
                    {
                        "the rest of a record after a position inside it \
                         (the_rest_of_a_record_after_the_cursor_is_left_out_of_the_gap)"
                    } else {
                        "none known (not one of the entry/offset boundary cases)"
                    };
                    self.fail(format!(
                        "event {p}/{} of epoch #{j} (serial {}) was neither received nor named by a gap\n  \
                         hint: {hint}\n  \
                         origin {origin:?}\n  epoch #{j} held {all:?}, {} of them gone\n  \
                         received of epoch #{j}: {got:?}\n  gaps of partition {p}: {gaps:?}",
                        r.id, r.serial, log.gone
                    ));
                }
            }
        }
    }
}

/// Whether the unreceived, ungapped entry `i` (`id`) of `log` is one of the two documented
/// limits of offset-named gaps: the trimmed head of a record whose rest was kept, or the rest
/// of a record after a position inside it.
#[allow(clippy::too_many_arguments)]
fn is_documented_limit(
    log: &EpochLog,
    i: usize,
    id: EntryId,
    received: &HashSet<(i32, usize, EntryId)>,
    p: i32,
    j: usize,
    filter: &Filter,
    origin: &Origin,
) -> bool {
    let split_head = log
        .splits
        .iter()
        .any(|f| f.offset == id.offset && f.n > id.n);
    let head: Vec<&Rec> = log.recs[..i]
        .iter()
        .rev()
        .take_while(|h| h.id.offset == id.offset)
        .collect();
    // The client was inside this record: it received (or started after) an earlier event of
    // it, and a gap after its position starts at the next offset.
    let rest_after_inside = head.iter().any(|h| {
        received.contains(&(p, j, h.id))
            || !h.is_event()
            || !selects(filter, h)
            || matches!(*origin, Origin::After(oj, oid) if oj == j && h.id <= oid)
    });
    split_head || rest_after_inside
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Spec {
    format: Format,
    filter: Filter,
    start: Start,
    queue: usize,
    budget: usize,
    history_page: usize,
    max_frame_bytes: usize,
}

/// How the driver steers a client.
#[derive(Default)]
struct Ctl {
    /// The current session's drain token.
    drain: Mutex<CancellationToken>,
    /// Leave abruptly after the next item, and resume from the last cursor received.
    disconnect: AtomicBool,
    /// Per item, the chance (percent) of stalling while holding it, and the longest stall.
    stall_pct: AtomicU32,
    stall_max: AtomicU32,
    /// Stop at the next drain whose cursor is the canonical one.
    finishing: AtomicBool,
    /// Hold the item received until this is cleared (scripted stalls).
    paused: AtomicBool,
}

impl Ctl {
    fn drain(&self) {
        self.drain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
    }
}

struct Client {
    spec: Spec,
    live: Arc<Live>,
    store: Arc<Mutex<Store>>,
    metrics: Arc<Metrics>,
    /// Each client's own: the replica-wide budget is not what these tests drive.
    outbox: Arc<Outbox>,
    ctl: Arc<Ctl>,
    rng: StdRng,
    rec: Record,
}

impl Client {
    fn frame(&mut self, f: &Outgoing) {
        let store = lock(&self.store);
        self.rec
            .frame(&store, self.spec.format, &self.spec.filter, f);
    }

    async fn stall(&mut self) {
        while self.ctl.paused.load(Relaxed) {
            tokio::task::yield_now().await;
        }
        let pct = self.ctl.stall_pct.load(Relaxed);
        if pct > 0 && self.rng.random_range(0..100) < pct {
            let n = self
                .rng
                .random_range(1..=self.ctl.stall_max.load(Relaxed).max(1));
            note(|| format!("{} stalls for {n} yields", self.rec.tag));
            yields(n).await;
        }
    }

    /// Sessions one after the other, each resumed from where the last one left the client.
    async fn run(mut self) -> Record {
        let mut start = self.spec.start.clone();
        loop {
            let q = OutQueue::new(&self.outbox, self.spec.queue, self.spec.budget);
            let drain = CancellationToken::new();
            *self
                .ctl
                .drain
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = drain.clone();
            let (welcome, resumed) = match &start {
                Start::Latest => (None, false),
                Start::Earliest => (Some(Cursor::default()), false),
                Start::Cursor(c) => (Some(c.clone()), true),
            };
            self.rec.begin(welcome, resumed);
            let session = Session {
                format: self.spec.format,
                filter: self.spec.filter.clone(),
                live: self.live.clone(),
                history: Arc::new(FakeHistory(
                    self.store.clone(),
                    format!("{} s{}", self.rec.tag, self.rec.sessions),
                )),
                metrics: self.metrics.clone(),
                out: q.clone(),
                server: "gw-test".into(),
                max_frame_bytes: self.spec.max_frame_bytes,
                history_page: self.spec.history_page,
                drain,
                progress: Default::default(),
                leave: Default::default(),
                shard: self.rng.random_range(0..4),
            };
            let mut task = tokio::spawn(session.run(start));
            let mut ended = false;
            let closed = loop {
                let mut got = Vec::new();
                if ended {
                    if !q.try_take(&mut got, 1) {
                        self.rec.fail("the session ended without a close");
                    }
                } else {
                    tokio::select! {
                        biased;
                        _ = q.take(&mut got, 1) => {}
                        r = &mut task => {
                            r.expect("the session task");
                            ended = true;
                            continue;
                        }
                    }
                }
                let Some(item) = got.pop() else {
                    self.rec.fail("the queue closed under the client");
                };
                let bytes = item.bytes();
                match item {
                    Outbound::Frame(f) => {
                        self.frame(&f);
                        self.stall().await;
                    }
                    Outbound::Shared(frames) => {
                        if frames.is_empty() {
                            self.rec.fail("empty shared frames");
                        }
                        for f in frames.iter() {
                            self.frame(f);
                        }
                        self.stall().await;
                    }
                    Outbound::Close(code, reason) => {
                        if (code, reason) != (4012, "draining") || self.rec.reconnect.is_none() {
                            self.rec.fail(format!(
                                "close {code} {reason:?} (after reconnect: {})",
                                self.rec.reconnect.is_some()
                            ));
                        }
                        break true;
                    }
                }
                q.written(bytes);
                if self.ctl.disconnect.swap(false, Relaxed) {
                    break false;
                }
            };
            if closed {
                if !ended {
                    task.await.expect("the session task");
                }
                if q.try_take(&mut Vec::new(), 1) {
                    self.rec.fail("something after the close");
                }
                let cursor = self.rec.reconnect.clone().expect("reconnect before close");
                if self.ctl.finishing.load(Relaxed) && cursor == *self.live.canonical().1 {
                    return self.rec;
                }
                start = Start::Cursor(cursor);
            } else {
                // Gone: the session ends when it next sends.
                q.close();
                drop(task);
                start = Start::Cursor(self.rec.last_cursor.clone().expect("welcome came"));
            }
        }
    }
}

fn spawn_client(
    tag: String,
    spec: Spec,
    live: &Arc<Live>,
    store: &Arc<Mutex<Store>>,
    metrics: &Arc<Metrics>,
    ctl: Arc<Ctl>,
    seed: u64,
) -> Running {
    let filter = spec.filter.clone();
    let client = Client {
        spec,
        live: live.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        outbox: Outbox::new(usize::MAX),
        ctl: ctl.clone(),
        rng: StdRng::seed_from_u64(seed),
        rec: Record {
            tag,
            ..Record::default()
        },
    };
    Running {
        ctl,
        filter,
        task: tokio::spawn(client.run()),
    }
}

struct Running {
    ctl: Arc<Ctl>,
    filter: Filter,
    task: JoinHandle<Record>,
}

async fn finish(task: JoinHandle<Record>) -> Record {
    match task.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("client task: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Random runs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Gen {
    /// Records of up to 3 events, retention that may split a record, and epochs whose offsets
    /// start at 0 (a re-created topic). Without: one event per record, whole records trimmed,
    /// offsets from 1.
    batches: bool,
    steps: usize,
}

#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    appended: u64,
    delivered: u64,
    retention_gaps: u64,
    reset_gaps: u64,
    sessions: u64,
    laps: u64,
    failed_reads: u64,
    filtered_clients: u64,
}

fn first_offset(rng: &mut StdRng, gen: Gen) -> i64 {
    if gen.batches && rng.random_bool(0.4) {
        0
    } else {
        rng.random_range(1..40)
    }
}

fn append_random(store: &mut Store, rng: &mut StdRng, gen: Gen, p: i32) {
    for _ in 0..rng.random_range(1..=3) {
        let events = if gen.batches {
            rng.random_range(1..=3)
        } else {
            1
        };
        let skip = if rng.random_bool(0.1) {
            rng.random_range(1..=3)
        } else {
            0
        };
        store.append(p, events, skip, 0.03);
    }
}

fn trim_random(store: &mut Store, rng: &mut StdRng, gen: Gen, p: i32) {
    let held = store.part(p).epochs.last().expect("epoch").held().len();
    if held == 0 {
        return;
    }
    let n = rng.random_range(1..=held);
    if gen.batches {
        store.trim(p, n);
    } else {
        store.trim_records(p, n);
    }
}

/// A cursor another replica could have issued: per partition an entry held, one trimmed, the
/// start or the end of the epoch, a position in an epoch that ended, or nothing.
fn random_cursor(store: &Store, rng: &mut StdRng) -> Cursor {
    let mut c = Cursor::default();
    for (p, part) in &store.parts {
        let cur = store.current_epoch(*p);
        let pick = |log: &EpochLog, rng: &mut StdRng, held: bool| -> EntryId {
            let range = if held {
                log.gone..log.recs.len()
            } else {
                0..log.gone
            };
            if range.is_empty() {
                EntryId::ZERO
            } else {
                log.recs[rng.random_range(range)].id
            }
        };
        let pos = match rng.random_range(0..6) {
            0 => None,
            1 => cur.map(|l| (l.epoch.clone(), EntryId::ZERO)),
            2 => cur.map(|l| (l.epoch.clone(), pick(l, rng, true))),
            3 => cur.map(|l| (l.epoch.clone(), pick(l, rng, false))),
            4 => {
                let dead = part.epochs.len() - usize::from(part.current);
                (dead > 0).then(|| {
                    let l = &part.epochs[rng.random_range(0..dead)];
                    let all = rng.random_bool(0.5);
                    let id = if all && !l.recs.is_empty() {
                        l.recs[rng.random_range(0..l.recs.len())].id
                    } else {
                        EntryId::ZERO
                    };
                    (l.epoch.clone(), id)
                })
            }
            _ => cur.map(|l| (l.epoch.clone(), part.last)),
        };
        if let Some((epoch, last)) = pos {
            c.parts.insert(*p, PartitionPos { epoch, last });
        }
    }
    c
}

fn random_spec(rng: &mut StdRng, store: &Store, max_frame_bytes: usize) -> Spec {
    let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<HashSet<_>>());
    let filter = match rng.random_range(0..6) {
        0 => Filter {
            tenants: set(&["acme"]),
            ..Filter::default()
        },
        1 => Filter {
            threads: set(&["t1", "t2"]),
            ..Filter::default()
        },
        2 => Filter {
            tenants: set(&["globex"]),
            threads: set(&["t0", "t3"]),
            ..Filter::default()
        },
        _ => Filter::default(),
    };
    let start = match rng.random_range(0..10) {
        0..=3 => Start::Latest,
        4..=5 => Start::Earliest,
        _ => Start::Cursor(random_cursor(store, rng)),
    };
    Spec {
        format: if rng.random_bool(0.5) {
            Format::Json
        } else {
            Format::Protobuf
        },
        filter,
        start,
        queue: rng.random_range(1..=4),
        budget: rng.random_range(200..4000),
        history_page: rng.random_range(1..=6),
        max_frame_bytes,
    }
}

async fn random_run(seed: u64, gen: Gen) -> Totals {
    journal_start();
    let mut rng = StdRng::seed_from_u64(seed);
    let store = Arc::new(Mutex::new(Store::new(rng.random())));
    let nparts: i32 = rng.random_range(1..=3);
    {
        let mut s = lock(&store);
        for p in 0..nparts {
            let first = first_offset(&mut rng, gen);
            s.add_partition(p, first);
            if rng.random_bool(0.3) {
                // An earlier history, gone before the replica started.
                for _ in 0..rng.random_range(0..4) {
                    append_random(&mut s, &mut rng, gen, p);
                }
                s.reset_begin(p);
                let first = first_offset(&mut rng, gen);
                s.reset_end(p, first);
            }
            for _ in 0..rng.random_range(0..5) {
                append_random(&mut s, &mut rng, gen, p);
            }
            if rng.random_bool(0.3) {
                trim_random(&mut s, &mut rng, gen, p);
            }
        }
    }
    let max_frame_bytes = rng.random_range(200..1500);
    // Small rings, so that stalled clients are lapped.
    // Half the runs with the fan-out in shards (each session's ring fed by a shard's task).
    let live = Live::new([1, 2, 2, 3, 4, 8][rng.random_range(0..6)], max_frame_bytes)
        .with_shards([1, 3][rng.random_range(0..2)]);
    let tail = Tail {
        live: live.clone(),
        store: store.clone(),
    };
    tail.start();
    let metrics = Arc::new(Metrics::new(&prometheus::Registry::new()).unwrap());
    let nclients = rng.random_range(1..=3);
    let spawn_at: Vec<usize> = (0..nclients)
        .map(|_| rng.random_range(0..gen.steps / 2))
        .collect();
    let mut clients: Vec<Running> = Vec::new();
    let mut resetting: Vec<i32> = Vec::new();
    for step in 0..gen.steps {
        for (i, _) in spawn_at.iter().enumerate().filter(|(_, at)| **at == step) {
            let spec = random_spec(&mut rng, &lock(&store), max_frame_bytes);
            note(|| {
                format!(
                    "client {i}: {:?} filter {:?} start {:?} queue {} budget {} page {} frame {}",
                    spec.format,
                    spec.filter,
                    spec.start,
                    spec.queue,
                    spec.budget,
                    spec.history_page,
                    spec.max_frame_bytes
                )
            });
            let ctl = Arc::new(Ctl::default());
            ctl.stall_pct.store(rng.random_range(0..100), Relaxed);
            ctl.stall_max.store(rng.random_range(20..300), Relaxed);
            clients.push(spawn_client(
                format!("seed {seed} {gen:?}: client {i}"),
                spec,
                &live,
                &store,
                &metrics,
                ctl,
                rng.random(),
            ));
        }
        let p = rng.random_range(0..nparts);
        match rng.random_range(0..100) {
            0..=34 => append_random(&mut lock(&store), &mut rng, gen, p),
            35..=69 => {
                tail.step(rng.random_range(1..=6));
            }
            70..=74 => trim_random(&mut lock(&store), &mut rng, gen, p),
            75..=76 => {
                let mut s = lock(&store);
                if s.part(p).current {
                    s.reset_begin(p);
                    if rng.random_bool(0.5) {
                        let first = first_offset(&mut rng, gen);
                        s.reset_end(p, first);
                    } else {
                        resetting.push(p);
                    }
                }
            }
            77..=81 => {
                if let Some(p) = resetting.pop() {
                    let first = first_offset(&mut rng, gen);
                    store
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .reset_end(p, first);
                }
            }
            82 => {
                let i = rng.random_range(0..clients.len().max(1));
                if let Some(c) = clients.get(i) {
                    note(|| format!("drain client {i}"));
                    c.ctl.drain();
                }
            }
            84 => {
                let i = rng.random_range(0..clients.len().max(1));
                if let Some(c) = clients.get(i) {
                    note(|| format!("disconnect client {i}"));
                    c.ctl.disconnect.store(true, Relaxed);
                }
            }
            86 => {
                // A failed read makes the session wait 250 ms of real time (the rest of the
                // run, most often), until a drain: keep them rare.
                let mut s = lock(&store);
                s.fail_rate = if s.fail_rate > 0.0 { 0.0 } else { 0.05 };
            }
            88..=91 => {
                if let Some(c) = clients.get(rng.random_range(0..clients.len().max(1))) {
                    c.ctl.stall_pct.store(rng.random_range(0..100), Relaxed);
                    c.ctl.stall_max.store(rng.random_range(20..400), Relaxed);
                }
            }
            _ => {}
        }
        yields(rng.random_range(0..=4)).await;
    }

    {
        let mut s = lock(&store);
        s.fail_rate = 0.0;
        for p in resetting.drain(..) {
            let first = first_offset(&mut rng, gen);
            s.reset_end(p, first);
        }
    }
    let mut totals = Totals {
        runs: 1,
        ..Totals::default()
    };
    for (rec, filter) in settle(&store, &tail, clients, &format!("seed {seed} {gen:?}")).await {
        totals.delivered += rec.delivered;
        totals.sessions += rec.sessions as u64;
        totals.retention_gaps += rec.gaps.iter().filter(|g| !g.reset).count() as u64;
        totals.reset_gaps += rec.gaps.iter().filter(|g| g.reset).count() as u64;
        totals.filtered_clients += u64::from(filter != Filter::default());
    }
    if std::env::var_os("SESSION_TEST_TRACE").is_some()
        && std::env::var_os("SESSION_TEST_SEED").is_some()
    {
        eprintln!("seed {seed}:{}", journal_tail());
    }
    let s = lock(&store);
    totals.laps = metrics.catchup_switches.get();
    totals.appended = s.serial;
    totals.failed_reads = s.failures;
    totals
}

/// The end of a run: every reset completes, a last event per partition (so the tail's last
/// read is published), the tail reads everything, then clients read fast and are drained
/// until each holds the canonical cursor; then every client's record is checked.
async fn settle(
    store: &Arc<Mutex<Store>>,
    tail: &Tail,
    clients: Vec<Running>,
    tag: &str,
) -> Vec<(Record, Filter)> {
    {
        let mut s = lock(store);
        s.fail_rate = 0.0;
        s.fail_next = 0;
        if let Some(gate) = s.gate.take() {
            gate.add_permits(1 << 20);
        }
        let parts: Vec<i32> = s.parts.keys().copied().collect();
        for p in parts {
            s.reset_end(p, 1);
            s.append(p, 1, 0, 0.0);
        }
    }
    while tail.step(6) {
        yields(2).await;
    }
    for c in &clients {
        c.ctl.stall_pct.store(0, Relaxed);
        c.ctl.disconnect.store(false, Relaxed);
        c.ctl.finishing.store(true, Relaxed);
    }
    let mut round = 0;
    while clients.iter().any(|c| !c.task.is_finished()) {
        round += 1;
        assert!(round < 3000, "{tag}: sessions never catch up");
        yields(10 + round).await;
        for c in clients.iter().filter(|c| !c.task.is_finished()) {
            c.ctl.drain();
        }
    }
    if std::env::var_os("SESSION_TEST_TRACE").is_some()
        && std::env::var_os("SESSION_TEST_SEED").is_none()
    {
        eprintln!("{tag}:{}", journal_tail());
    }
    let mut out = Vec::new();
    for c in clients {
        let rec = finish(c.task).await;
        rec.check_complete(&lock(store), &c.filter);
        out.push((rec, c.filter));
    }
    out
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn random_runs(gen: Gen, seeds: std::ops::Range<u64>) -> Totals {
    let mut t = Totals::default();
    let one: Option<u64> = std::env::var("SESSION_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds = match one {
        Some(s) => s..s + 1,
        None => seeds,
    };
    // SESSION_TEST_ALL: run every seed and list the failures, one line each.
    let all = std::env::var_os("SESSION_TEST_ALL").is_some();
    let mut failed = Vec::new();
    for seed in seeds {
        let r = if all {
            let run = std::panic::catch_unwind(|| runtime().block_on(random_run(seed, gen)));
            match run {
                Ok(r) => r,
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.push(msg.lines().next().unwrap_or_default().to_string());
                    continue;
                }
            }
        } else {
            runtime().block_on(random_run(seed, gen))
        };
        t.runs += r.runs;
        t.appended += r.appended;
        t.delivered += r.delivered;
        t.retention_gaps += r.retention_gaps;
        t.reset_gaps += r.reset_gaps;
        t.sessions += r.sessions;
        t.laps += r.laps;
        t.failed_reads += r.failed_reads;
        t.filtered_clients += r.filtered_clients;
    }
    eprintln!("{gen:?}: {t:?}");
    assert!(
        failed.is_empty(),
        "{} runs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // The runs reach every path they are meant to.
    assert!(
        one.is_some()
            || (t.retention_gaps > t.runs
                && t.reset_gaps > t.runs
                && t.laps > t.runs / 2
                && t.failed_reads > 0
                && t.filtered_clients > t.runs / 4
                && t.sessions > 5 * t.runs),
        "{t:?}"
    );
    t
}

#[test]
fn random_runs_whole_records() {
    random_runs(
        Gen {
            batches: false,
            steps: 400,
        },
        0..200,
    );
}

#[test]
fn random_runs_batched_records() {
    random_runs(
        Gen {
            batches: true,
            steps: 400,
        },
        0..200,
    );
}

// ---------------------------------------------------------------------------------------------
// Scripted scenarios
// ---------------------------------------------------------------------------------------------

/// A store, the live ring and the tail, for scripted scenarios.
struct World {
    store: Arc<Mutex<Store>>,
    live: Arc<Live>,
    tail: Tail,
    metrics: Arc<Metrics>,
}

impl World {
    fn new(ring: usize) -> Self {
        journal_start();
        let store = Arc::new(Mutex::new(Store::new(7)));
        lock(&store).max_yields = 0;
        let live = Live::new(ring, 4096);
        Self {
            tail: Tail {
                live: live.clone(),
                store: store.clone(),
            },
            store,
            live,
            metrics: Arc::new(Metrics::new(&prometheus::Registry::new()).unwrap()),
        }
    }

    /// Adds partition `p`, its stream starting at `first_offset`, with `records` (the number
    /// of events of each, one offset after the other); returns its epoch.
    fn partition(&self, p: i32, first_offset: i64, records: &[u32]) -> String {
        let mut s = lock(&self.store);
        s.add_partition(p, first_offset);
        for n in records {
            s.append(p, *n, 0, 0.0);
        }
        s.part(p).epochs[0].epoch.clone()
    }

    fn client(&self, name: &str, start: Start) -> Running {
        self.client_with(
            name,
            Spec {
                format: Format::Json,
                filter: Filter::default(),
                start,
                queue: 4,
                budget: 1 << 20,
                history_page: 10,
                max_frame_bytes: 4096,
            },
        )
    }

    fn client_with(&self, name: &str, spec: Spec) -> Running {
        spawn_client(
            name.into(),
            spec,
            &self.live,
            &self.store,
            &self.metrics,
            Arc::new(Ctl::default()),
            1,
        )
    }

    /// Holds every history read at the gate until [`World::release`].
    fn hold_reads(&self) {
        lock(&self.store).gate = Some(Arc::new(Semaphore::new(0)));
    }

    fn release(&self) {
        if let Some(gate) = lock(&self.store).gate.take() {
            gate.add_permits(1 << 20);
        }
    }

    /// Lets the other tasks run until `cond` holds (for at most 10 s).
    async fn until(&self, cond: impl Fn(&Store) -> bool) {
        let started = std::time::Instant::now();
        while !cond(&lock(&self.store)) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the condition never held"
            );
            tokio::task::yield_now().await;
        }
    }

    async fn settle(&self, clients: Vec<Running>) -> Vec<(Record, Filter)> {
        settle(&self.store, &self.tail, clients, "scenario").await
    }
}

fn at(p: i32, epoch: &str, offset: i64, n: u32) -> Cursor {
    Cursor {
        parts: [(
            p,
            PartitionPos {
                epoch: epoch.into(),
                last: EntryId { offset, n },
            },
        )]
        .into(),
    }
}

/// A session catching up reads a partition whose meta is missing (a reset in progress: the
/// ingest deleted the stream and has not written the new epoch yet). `catch_up_partition`
/// returns as if the partition were read to its end, and the session goes live from a position
/// behind the tail's: the passes it then takes hold only what came after the tail's position
/// when it subscribed, and it delivers them, so the events in between are skipped, and the
/// reset gap that follows starts after them. Here: at 2-1 while the tail is at 6-1, the pass
/// with 7-1..8-1 is delivered and 3-1..6-1 are lost with no gap.
#[test]
fn a_reset_in_progress_during_catch_up_loses_events_silently() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 1, &[1, 1, 1, 1, 1, 1]);
        w.tail.start();
        w.hold_reads();
        let c = w.client("resumed at 2-1", Start::Cursor(at(0, &e0, 2, 1)));
        // The session subscribed to the ring, took the tops (6-1) and waits for its read.
        w.until(|s| s.waiting == 1).await;
        {
            let mut s = lock(&w.store);
            s.append(0, 1, 0, 0.0);
            s.append(0, 1, 0, 0.0);
        }
        assert!(w.tail.step(10), "a pass with 7-1..8-1");
        lock(&w.store).reset_begin(0);
        let reads = lock(&w.store).reads;
        w.release();
        // The read finds no meta; the session goes live and delivers 7-1 and 8-1.
        w.until(|s| s.reads > reads).await;
        yields(100).await;
        w.settle(vec![c]).await;
    });
}

/// A session that read a newer epoch from history than the tail has seen takes the tail's
/// `Reset` for the epoch in between from the ring and applies it (`FrameBuilder::reset` only
/// skips the epoch it is on): a reset gap back to an epoch that has already ended, then the
/// current epoch again from its start.
#[test]
fn a_stale_reset_in_the_ring_takes_a_session_back_to_an_ended_epoch() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 1, &[1, 1, 1]);
        w.tail.start();
        w.hold_reads();
        let c = w.client("resumed at 3-1", Start::Cursor(at(0, &e0, 3, 1)));
        w.until(|s| s.waiting == 1).await;
        {
            let mut s = lock(&w.store);
            s.reset_begin(0);
            s.reset_end(0, 1);
            s.append(0, 1, 0, 0.0);
        }
        assert!(w.tail.step(10), "the tail's Reset to epoch #1");
        {
            let mut s = lock(&w.store);
            s.reset_begin(0);
            s.reset_end(0, 1);
            s.append(0, 1, 0, 0.0);
            s.append(0, 1, 0, 0.0);
        }
        // The session reads epoch #2 (reset gap #0 -> #2), then takes the Reset to #1.
        w.release();
        w.settle(vec![c]).await;
    });
}

/// After a reset a partition's position is `(epoch, 0-0)`: nothing delivered, so the next
/// entry may be at offset 0 (a re-created topic starts there). `trimmed_after(0-0, first)`
/// asks `first.offset > 1`, and a retention gap starts at `0-0.offset + 1 = 1`: when
/// retention removed the entry at offset 0 before the session read the new epoch, it is lost
/// with no gap (first kept 1-1), or left out of the gap's range (first kept 2-1: gap 1..=1).
#[test]
fn an_entry_at_offset_zero_trimmed_before_it_was_read_is_named_by_no_gap() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 0, &[1, 1, 1]);
        w.tail.start();
        lock(&w.store).trim(0, 1);
        let c = w.client("at the start of the epoch", Start::Cursor(at(0, &e0, 0, 0)));
        w.settle(vec![c]).await;
    });
}

/// Retention trims by entries, so it can remove the first events of a record and keep the
/// rest (here 2-1 goes, 2-2 and 2-3 stay). `trimmed_after(1-1, first = 2-2)` compares offsets
/// only (2 > 1 + 1 is false): no gap, and 2-1 is lost silently. With more trimmed, the gap
/// ends at `first.offset - 1` and leaves the trimmed head of the first kept record out.
#[test]
fn a_record_trimmed_in_part_loses_its_first_events_silently() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 1, &[1, 3, 1]);
        w.tail.start();
        lock(&w.store).trim(0, 2);
        let c = w.client("at 1-1", Start::Cursor(at(0, &e0, 1, 1)));
        w.settle(vec![c]).await;
    });
}

/// A cursor may stop inside a record (a frame, page or tail read ends there: here 1-1 of
/// 1-1..1-3). A retention gap after it starts at the next offset (`last.offset + 1`), so the
/// rest of that record (1-2, 1-3), trimmed, is named by no gap. A reset gap has the same
/// `from`.
#[test]
fn the_rest_of_a_record_after_the_cursor_is_left_out_of_the_gap() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 1, &[3, 1, 1]);
        w.tail.start();
        lock(&w.store).trim(0, 4);
        let c = w.client("at 1-1", Start::Cursor(at(0, &e0, 1, 1)));
        w.settle(vec![c]).await;
    });
}

/// A failed history read is retried after 250 ms (real time: the workspace's tokio has no
/// `test-util`), and nothing is lost or repeated.
#[test]
fn a_failed_history_read_is_retried() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 1, &[1, 1, 1, 1]);
        w.tail.start();
        lock(&w.store).fail_next = 2;
        let c = w.client("resumed at 1-1", Start::Cursor(at(0, &e0, 1, 1)));
        let reads = lock(&w.store).reads;
        // The third read, 2 x 250 ms later, succeeds: 2-1..4-1 arrive with no drain.
        w.until(|s| s.failures == 2 && s.reads > reads).await;
        let records = w.settle(vec![c]).await;
        assert_eq!(records[0].0.delivered, 4, "2-1..4-1 and the last event");
        assert_eq!(records[0].0.sessions, 1);
    });
}

/// Review C1: a lap noticed by `try_recv` (not by `recv`) must send the session to Redis
/// history, like any lap. On one thread that lap cannot happen: `recv` and the `try_recv`s
/// after it run in one poll, so a lap is always seen by `recv` first. It takes a tail that
/// publishes *while* the session is between its `recv` and its `try_recv`: here a real thread,
/// with a ring of one pass. Each round, once the session has taken everything, the tail
/// publishes pass A, waits until the session has taken A (`Sender::len` drops to 0, inside
/// `recv`), and at once publishes B and C, C replacing B in the ring. When B and C land in that
/// window, `try_recv` reports `Lagged(1)`; a session that treats it like `Empty` delivers A,
/// then takes C from `recv` (out of step, its events are newer) and B's event is lost with no
/// gap; the invariant check at the end names it. Thousands of rounds make the window likely on
/// any machine with two cores; on one core the test passes without proving anything.
#[test]
fn a_lap_seen_by_try_recv_is_caught_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = World::new(1);
        w.partition(0, 1, &[]);
        w.tail.start();
        let c = w.client("live", Start::Latest);
        while w.live.tx.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        let tail = Tail {
            live: w.live.clone(),
            store: w.store.clone(),
        };
        let rounds = try_recv_rounds();
        let thread = std::thread::spawn(move || {
            let taken = |tail: &Tail| {
                let started = std::time::Instant::now();
                while !tail.live.tx.is_empty() {
                    if started.elapsed() > std::time::Duration::from_secs(1) {
                        return false;
                    }
                    std::hint::spin_loop();
                }
                true
            };
            // At most 20 s however slow the machine; the rounds done are counted.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut done = 0u64;
            while done < rounds && std::time::Instant::now() < deadline {
                done += 1;
                // B and C are written and decoded beforehand, so that they go out within
                // microseconds of A being taken (each is what one tail read would publish).
                let (b, c) = {
                    let mut s = lock(&tail.store);
                    for _ in 0..3 {
                        s.append(0, 1, 0, 0.0);
                    }
                    let log = s.part(0).epochs.last().expect("epoch");
                    let pass = |r: &Rec| {
                        let ev = LiveEvent::from_entry(0, r.id, r.bytes.clone()).expect("event");
                        let pos = PartitionPos {
                            epoch: log.epoch.clone(),
                            last: r.id,
                        };
                        let item = LiveItem::Events {
                            partition: 0,
                            epoch: log.epoch.as_str().into(),
                            events: vec![Arc::new(ev)],
                        };
                        (pos, item)
                    };
                    let n = log.recs.len();
                    (pass(&log.recs[n - 2]), pass(&log.recs[n - 1]))
                };
                taken(&tail);
                tail.step(1); // A
                let window = taken(&tail);
                for (pos, item) in [b, c] {
                    if !window {
                        break;
                    }
                    tail.live
                        .tops
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(0, pos);
                    tail.live.publish_pass(vec![item]);
                }
                // When the window was missed, the tail reads B and C the usual way.
                while tail.step(10) {}
            }
            done
        });
        let done = tokio::task::spawn_blocking(move || thread.join().expect("tail thread"))
            .await
            .unwrap();
        let records = w.settle(vec![c]).await;
        assert_eq!(records[0].0.delivered, 3 * done + 1);
    });
}

fn try_recv_rounds() -> u64 {
    std::env::var("SESSION_TEST_C1_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000)
}

/// A client that stops reading: its queue fills, the ring (two passes) laps its session,
/// `recv` reports it, and the session reads what it missed from history, then goes live again
/// (both formats, with and without a filter).
#[test]
fn a_lapped_session_reads_what_it_missed_from_history() {
    let acme = Filter {
        tenants: Some(["acme".to_string()].into()),
        ..Filter::default()
    };
    for (format, filter) in [
        (Format::Json, Filter::default()),
        (Format::Protobuf, Filter::default()),
        (Format::Json, acme.clone()),
        (Format::Protobuf, acme),
    ] {
        runtime().block_on(async {
            let w = World::new(2);
            w.partition(0, 1, &[1, 1, 1]);
            w.partition(1, 1, &[1]);
            w.tail.start();
            let spec = Spec {
                format,
                filter,
                start: Start::Latest,
                queue: 1,
                budget: 1,
                history_page: 3,
                max_frame_bytes: 300,
            };
            let c = w.client_with("slow", spec);
            w.until(|_| w.live.tx.receiver_count() > 0).await;
            c.ctl.paused.store(true, Relaxed);
            for i in 0..12 {
                lock(&w.store).append(i % 2, 1, 0, 0.0);
                w.tail.step(10);
                yields(3).await;
            }
            c.ctl.paused.store(false, Relaxed);
            w.until(|_| w.metrics.catchup_switches.get() > 0).await;
            for i in 0..4 {
                lock(&w.store).append(i % 2, 1, 0, 0.0);
                w.tail.step(10);
                yields(3).await;
            }
            w.settle(vec![c]).await;
        });
    }
}

/// Drains while a session reads history: each time it sends `reconnect` with the cursor of
/// what it sent, closes with 4012, and the next session resumes from there exactly.
#[test]
fn drains_during_catch_up_resume_exactly() {
    runtime().block_on(async {
        let w = World::new(8);
        let e0 = w.partition(0, 1, &[1; 30]);
        w.partition(1, 5, &[1; 10]);
        w.tail.start();
        let spec = Spec {
            format: Format::Protobuf,
            filter: Filter::default(),
            start: Start::Cursor(at(0, &e0, 3, 1)),
            queue: 2,
            budget: 1 << 20,
            history_page: 2,
            max_frame_bytes: 200,
        };
        w.hold_reads();
        let c = w.client_with("resumed", spec);
        for _ in 0..6 {
            // Two pages, then a drain.
            for _ in 0..2 {
                let reads = lock(&w.store).reads;
                lock(&w.store).gate.as_ref().expect("gate").add_permits(1);
                w.until(|s| s.reads > reads).await;
            }
            c.ctl.drain();
            w.until(|s| s.waiting == 1).await;
        }
        w.release();
        let records = w.settle(vec![c]).await;
        assert!(records[0].0.sessions > 6, "{}", records[0].0.sessions);
    });
}
