//! Server frames of PROTOCOL.md §2 in both formats, framed for the socket here: a server frame
//! is unmasked, so a [`Wire`] is the complete WebSocket frame (header and payload in one
//! buffer), built once and sent as is by every writer that holds it, with no copy.
//!
//! `events` frames are assembled from the events' pre-encoded bytes (JSON array elements, or
//! protobuf `StreamEvent`s as repeated field entries) by a [`FrameBuilder`], which merges the
//! events of a whole wake, across partitions, into frames of at most `max_bytes` (an event
//! larger than that goes alone in its own frame). Each frame carries the cursor just after it.

use crate::cursor::{Cursor, EntryId, PartitionPos};
use crate::event::{Filter, LiveEvent};
use crate::reader::LiveItem;
use bytes::{BufMut, Bytes, BytesMut};
use dashstream::proto::{self, server_frame::Frame, ServerFrame};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Room kept in front of a payload for the longest frame header.
const HEADROOM: usize = 10;

/// A complete WebSocket server frame, ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    frame: Bytes,
    head: u8,
}

impl Wire {
    /// Frames `buf`, whose first [`HEADROOM`] bytes were reserved for the header.
    fn seal(opcode: u8, mut buf: BytesMut) -> Self {
        let len = buf.len() - HEADROOM;
        let mut hdr = [0u8; HEADROOM];
        hdr[0] = 0x80 | opcode;
        let hlen = if len < 126 {
            hdr[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            hdr[1] = 126;
            hdr[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            hdr[1] = 127;
            hdr[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let start = HEADROOM - hlen;
        buf[start..HEADROOM].copy_from_slice(&hdr[..hlen]);
        let frame = buf.freeze().slice(start..);
        Self {
            frame,
            head: hlen as u8,
        }
    }

    fn from_payload(opcode: u8, payload: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(HEADROOM + payload.len());
        buf.put_bytes(0, HEADROOM);
        buf.put_slice(payload);
        Self::seal(opcode, buf)
    }

    pub fn text(payload: &str) -> Self {
        Self::from_payload(OP_TEXT, payload.as_bytes())
    }

    pub fn binary(payload: &[u8]) -> Self {
        Self::from_payload(OP_BINARY, payload)
    }

    pub fn ping() -> Self {
        Self::from_payload(OP_PING, &[])
    }

    pub fn pong(data: &[u8]) -> Self {
        Self::from_payload(OP_PONG, &data[..data.len().min(125)])
    }

    pub fn close(code: u16, reason: &str) -> Self {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        Self::from_payload(OP_CLOSE, &p)
    }

    /// The whole frame, as it goes on the socket.
    pub fn bytes(&self) -> &Bytes {
        &self.frame
    }

    /// The frame's payload.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.head as usize..]
    }

    pub fn is_text(&self) -> bool {
        self.frame[0] & 0x0f == OP_TEXT
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
}

/// A frame with what the writer counts when it is sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub wire: Wire,
    pub kind: &'static str,
    /// Events in the frame.
    pub events: u32,
    /// Producer timestamp of the frame's oldest live event (0: none, or read from history,
    /// whose age is the client's absence, not a delay).
    pub oldest_us: i64,
    /// The gap reason, for a gap frame.
    pub gap: Option<&'static str>,
}

impl Outgoing {
    pub fn control(wire: Wire, kind: &'static str) -> Self {
        Self {
            wire,
            kind,
            events: 0,
            oldest_us: 0,
            gap: None,
        }
    }
}

/// A missed range of one partition, for `gap` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

fn proto_frame(frame: Frame) -> Wire {
    Wire::binary(&ServerFrame { frame: Some(frame) }.encode_to_vec())
}

fn text(v: serde_json::Value) -> Wire {
    Wire::text(&v.to_string())
}

pub fn welcome(f: Format, server: &str, cursor: &str, resumed: bool) -> Wire {
    match f {
        Format::Json => {
            text(json!({"type":"welcome","server":server,"cursor":cursor,"resumed":resumed}))
        }
        Format::Protobuf => proto_frame(Frame::Welcome(proto::Welcome {
            server: server.into(),
            cursor: cursor.into(),
            resumed,
        })),
    }
}

pub fn gap(f: Format, cursor: &str, reason: &str, missed: &[Missed]) -> Wire {
    match f {
        Format::Json => text(json!({
            "type": "gap",
            "cursor": cursor,
            "reason": reason,
            "missed": missed.iter().map(|m| json!({"partition": m.partition, "from": m.from, "to": m.to})).collect::<Vec<_>>(),
        })),
        Format::Protobuf => proto_frame(Frame::Gap(proto::Gap {
            cursor: cursor.into(),
            reason: reason.into(),
            missed: missed
                .iter()
                .map(|m| proto::MissedRange {
                    partition: m.partition,
                    from: m.from,
                    to: m.to,
                })
                .collect(),
        })),
    }
}

pub fn reconnect(f: Format, cursor: &str, reason: &str) -> Wire {
    match f {
        Format::Json => text(json!({"type":"reconnect","cursor":cursor,"reason":reason})),
        Format::Protobuf => proto_frame(Frame::Reconnect(proto::Reconnect {
            cursor: cursor.into(),
            reason: reason.into(),
        })),
    }
}

pub fn error(f: Format, code: &str, message: &str) -> Wire {
    match f {
        Format::Json => text(json!({"type":"error","code":code,"message":message})),
        Format::Protobuf => proto_frame(Frame::Error(proto::Error {
            code: code.into(),
            message: message.into(),
        })),
    }
}

/// The reply to an accepted `auth` frame: the connection may continue until `exp`.
pub fn authenticated(f: Format, exp: u64) -> Wire {
    match f {
        Format::Json => text(json!({"type":"authenticated","exp":exp})),
        Format::Protobuf => proto_frame(Frame::Authenticated(proto::Authenticated { exp })),
    }
}

pub fn pong(f: Format) -> Wire {
    match f {
        Format::Json => Wire::text(r#"{"type":"pong"}"#),
        Format::Protobuf => proto_frame(Frame::Pong(proto::Pong {})),
    }
}

/// The size an event adds to a frame of `format`.
fn event_size(format: Format, e: &LiveEvent) -> usize {
    match format {
        Format::Json => e.json.len() + 1,
        Format::Protobuf => key_len(2) + encoded_len_varint(e.proto.len() as u64) + e.proto.len(),
    }
}

/// An `events` frame carrying `events` (in order), with the cursor just after them.
pub fn events(f: Format, cursor: &str, events: &[Arc<LiveEvent>]) -> Wire {
    let body: usize = events.iter().map(|e| event_size(f, e)).sum();
    match f {
        Format::Json => {
            let mut buf = BytesMut::with_capacity(HEADROOM + body + cursor.len() + 40);
            buf.put_bytes(0, HEADROOM);
            buf.put_slice(br#"{"type":"events","cursor":""#);
            // A cursor is base64url: nothing in it needs escaping.
            buf.put_slice(cursor.as_bytes());
            buf.put_slice(br#"","events":["#);
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b',');
                }
                buf.put_slice(&e.json);
            }
            buf.put_slice(b"]}");
            Wire::seal(OP_TEXT, buf)
        }
        Format::Protobuf => {
            // ServerFrame { events = 2: Events { cursor = 1; repeated StreamEvent events = 2 } },
            // written by hand around the stored bytes.
            let inner = key_len(1) + encoded_len_varint(cursor.len() as u64) + cursor.len() + body;
            let mut buf = BytesMut::with_capacity(HEADROOM + inner + 8);
            buf.put_bytes(0, HEADROOM);
            encode_key(2, WireType::LengthDelimited, &mut buf);
            encode_varint(inner as u64, &mut buf);
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint(cursor.len() as u64, &mut buf);
            buf.put_slice(cursor.as_bytes());
            for e in events {
                encode_key(2, WireType::LengthDelimited, &mut buf);
                encode_varint(e.proto.len() as u64, &mut buf);
                buf.put_slice(&e.proto);
            }
            Wire::seal(OP_BINARY, buf)
        }
    }
}

/// A filtered session sends an `events` frame with no events (just the cursor) after skipping
/// this many events without sending a frame...
pub const PROGRESS_EVENTS: u64 = 1000;
/// ...or when events were skipped this long ago without a frame since (checked when it next
/// skips one). A reconnecting client then re-reads at most that much.
pub const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Events a session's cursor moved over without a frame telling its client (a filter skipped
/// them), and since when.
#[derive(Debug, Default)]
pub struct Progress {
    skipped: u64,
    since: Option<std::time::Instant>,
}

/// Collects a wake's events into byte-bounded frames, gaps in between, for one cursor.
pub struct FrameBuilder {
    format: Format,
    max_bytes: usize,
    pending: Vec<Arc<LiveEvent>>,
    pending_bytes: usize,
    oldest_us: i64,
    /// Events skipped since the last frame.
    skipped: u64,
    out: Vec<Outgoing>,
}

impl FrameBuilder {
    pub fn new(format: Format, max_bytes: usize) -> Self {
        Self {
            format,
            max_bytes: max_bytes.max(1),
            pending: Vec::new(),
            pending_bytes: 0,
            oldest_us: 0,
            skipped: 0,
            out: Vec::new(),
        }
    }

    /// Closes the pending events into a frame whose cursor is `cursor`.
    fn flush(&mut self, cursor: &Cursor, encoded: Option<&str>) {
        if self.pending.is_empty() {
            return;
        }
        let owned;
        let c = match encoded {
            Some(s) => s,
            None => {
                owned = cursor.encode();
                &owned
            }
        };
        self.out.push(Outgoing {
            wire: events(self.format, c, &self.pending),
            kind: "events",
            events: self.pending.len() as u32,
            oldest_us: self.oldest_us,
            gap: None,
        });
        self.pending.clear();
        self.pending_bytes = 0;
        self.oldest_us = 0;
        self.skipped = 0;
    }

    /// Moves `cursor` over `e` (of `epoch`), and includes `e` when it `matches`.
    pub fn event(
        &mut self,
        cursor: &mut Arc<Cursor>,
        epoch: &str,
        e: &Arc<LiveEvent>,
        matches: bool,
        live: bool,
    ) {
        let size = if matches {
            event_size(self.format, e)
        } else {
            0
        };
        if matches && !self.pending.is_empty() && self.pending_bytes + size > self.max_bytes {
            self.flush(cursor, None);
        }
        let c = Arc::make_mut(cursor);
        match c.parts.get_mut(&e.partition) {
            Some(pos) if pos.epoch == epoch => pos.last = e.id,
            Some(pos) => {
                pos.epoch = epoch.to_string();
                pos.last = e.id;
            }
            None => {
                c.parts.insert(
                    e.partition,
                    PartitionPos {
                        epoch: epoch.to_string(),
                        last: e.id,
                    },
                );
            }
        }
        if !matches {
            self.skipped += 1;
        }
        if matches {
            if live && (self.oldest_us == 0 || e.timestamp_us < self.oldest_us) {
                self.oldest_us = e.timestamp_us;
            }
            self.pending.push(e.clone());
            self.pending_bytes += size;
            if self.pending_bytes >= self.max_bytes {
                self.flush(cursor, None);
            }
        }
    }

    /// A gap frame; `cursor` must already hold the position after the gap.
    pub fn gap(&mut self, before: &Cursor, cursor: &Cursor, reason: &'static str, missed: Missed) {
        self.flush(before, None);
        self.skipped = 0;
        self.out.push(Outgoing {
            wire: gap(self.format, &cursor.encode(), reason, &[missed]),
            kind: "gap",
            events: 0,
            oldest_us: 0,
            gap: Some(reason),
        });
    }

    /// Applies a pass's items to a session that holds the pass's `before` positions: every
    /// event is new to it. `filter` selects what is included (all events move the cursor).
    pub fn apply_pass(
        &mut self,
        cursor: &mut Arc<Cursor>,
        items: &[LiveItem],
        filter: Option<&Filter>,
        live: bool,
    ) {
        for item in items {
            match item {
                LiveItem::Events { epoch, events, .. } => {
                    for e in events {
                        let m = filter.is_none_or(|f| f.matches(e));
                        self.event(cursor, epoch, e, m, live);
                    }
                }
                LiveItem::Reset { partition, epoch } => {
                    self.reset(cursor, *partition, epoch);
                }
                LiveItem::Retention {
                    partition,
                    epoch,
                    from,
                    to,
                } => {
                    self.retention(cursor, *partition, epoch, *from, *to);
                }
            }
        }
    }

    /// The partition started epoch `epoch`: a reset gap unless the cursor is already on it.
    pub fn reset(&mut self, cursor: &mut Arc<Cursor>, partition: i32, epoch: &str) {
        let known = cursor.parts.get(&partition);
        if known.is_some_and(|k| k.epoch == epoch) {
            return;
        }
        let before = cursor.clone();
        let from = known.map_or(0, |k| crate::session::next_offset(k.last));
        Arc::make_mut(cursor).parts.insert(
            partition,
            PartitionPos {
                epoch: epoch.to_string(),
                last: EntryId::ZERO,
            },
        );
        self.gap(
            &before,
            cursor,
            "reset",
            Missed {
                partition,
                from,
                to: -1,
            },
        );
    }

    /// Offsets `from..=to` of the partition were trimmed before they could be read.
    pub fn retention(
        &mut self,
        cursor: &mut Arc<Cursor>,
        partition: i32,
        epoch: &str,
        from: i64,
        to: i64,
    ) {
        let Some(k) = cursor.parts.get(&partition) else {
            return;
        };
        if k.epoch != epoch || crate::session::next_offset(k.last) > to {
            return;
        }
        let before = cursor.clone();
        let from = from.max(crate::session::next_offset(k.last));
        Arc::make_mut(cursor).parts.insert(
            partition,
            PartitionPos {
                epoch: epoch.to_string(),
                last: EntryId {
                    offset: to,
                    n: u32::MAX,
                },
            },
        );
        self.gap(
            &before,
            cursor,
            "retention",
            Missed {
                partition,
                from,
                to,
            },
        );
    }

    /// Closes the last frame (its cursor is `cursor`; `encoded` is its string form when the
    /// caller has it) and returns the frames.
    pub fn finish(mut self, cursor: &Cursor, encoded: Option<&str>) -> Vec<Outgoing> {
        self.flush(cursor, encoded);
        self.out
    }

    /// Like [`finish`](Self::finish), for a session that may skip events (a filter): once
    /// `progress` says enough were skipped without a frame (see [`PROGRESS_EVENTS`]), an
    /// `events` frame with no events carries the cursor.
    pub fn finish_progress(mut self, cursor: &Cursor, progress: &mut Progress) -> Vec<Outgoing> {
        self.flush(cursor, None);
        if !self.out.is_empty() {
            *progress = Progress::default();
        }
        if self.skipped > 0 {
            progress.skipped += self.skipped;
            let since = *progress.since.get_or_insert_with(std::time::Instant::now);
            if progress.skipped >= PROGRESS_EVENTS || since.elapsed() >= PROGRESS_AFTER {
                self.out.push(Outgoing {
                    wire: events(self.format, &cursor.encode(), &[]),
                    kind: "events",
                    events: 0,
                    oldest_us: 0,
                    gap: None,
                });
                *progress = Progress::default();
            }
        }
        self.out
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::EntryId;
    use dashstream::proto::{Event, Header};

    fn ev(offset: i64, payload: usize) -> Arc<LiveEvent> {
        let bytes = Event {
            header: Some(Header {
                thread_id: "t".into(),
                sequence: offset as u64,
                timestamp_us: 100 + offset,
                ..Default::default()
            }),
            payload: format!("{{\"x\":\"{}\"}}", "y".repeat(payload))
                .into_bytes()
                .into(),
            content_type: "application/json".into(),
        }
        .encode_to_vec();
        Arc::new(LiveEvent::from_entry(1, EntryId { offset, n: 1 }, bytes.into()).unwrap())
    }

    /// Decodes a server frame as a client would (via tungstenite's frame parser).
    fn parse(w: &Wire) -> (u8, Vec<u8>) {
        let b = w.bytes();
        let op = b[0] & 0x0f;
        assert_eq!(b[0] & 0x80, 0x80, "FIN set");
        assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
        let (len, start) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(b.len(), start + len);
        (op, b[start..].to_vec())
    }

    #[test]
    fn headers_of_every_length_class() {
        for n in [0usize, 125, 126, 65_535, 65_536, 200_000] {
            let w = Wire::binary(&vec![7u8; n]);
            let (op, p) = parse(&w);
            assert_eq!((op, p.len()), (OP_BINARY, n));
            assert_eq!(w.payload(), &p[..]);
        }
        let (op, p) = parse(&Wire::close(4008, "idle"));
        assert_eq!(op, OP_CLOSE);
        assert_eq!(&p[..2], &4008u16.to_be_bytes());
    }

    #[test]
    fn json_and_protobuf_events_frames_carry_the_same_events() {
        let evs = vec![ev(5, 1), ev(6, 1)];
        let w = events(Format::Json, "c1", &evs);
        let v: serde_json::Value = serde_json::from_slice(w.payload()).unwrap();
        assert_eq!(v["type"], "events");
        assert_eq!(v["cursor"], "c1");
        assert_eq!(v["events"][1]["offset"], 6);
        let w = events(Format::Protobuf, "c1", &evs);
        let f = ServerFrame::decode(w.payload()).unwrap();
        let Some(Frame::Events(e)) = f.frame else {
            panic!()
        };
        assert_eq!(e.cursor, "c1");
        assert_eq!(e.events.len(), 2);
        assert_eq!(e.events[1].offset, 6);
        let inner = Event::decode(e.events[0].event.clone()).unwrap();
        assert_eq!(inner.header.unwrap().sequence, 5);
    }

    #[test]
    fn frames_are_bounded_in_bytes_and_a_large_event_goes_alone() {
        let mut b = FrameBuilder::new(Format::Json, 1000);
        let mut c = Arc::new(Cursor::default());
        for o in 0..10 {
            b.event(&mut c, "e", &ev(o, 200), true, true);
        }
        b.event(&mut c, "e", &ev(10, 5000), true, true);
        b.event(&mut c, "e", &ev(11, 10), true, true);
        let frames = b.finish(&c, None);
        let counts: Vec<u32> = frames.iter().map(|f| f.events).collect();
        assert_eq!(counts.iter().sum::<u32>(), 12);
        for f in &frames {
            let v: serde_json::Value = serde_json::from_slice(f.wire.payload()).unwrap();
            let n = v["events"].as_array().unwrap().len() as u32;
            assert_eq!(n, f.events);
            assert!(
                f.wire.len() <= 1200 || n == 1,
                "{} bytes, {n} events",
                f.wire.len()
            );
            // Every frame's cursor names its last event.
            let cur = Cursor::decode(v["cursor"].as_str().unwrap()).unwrap();
            let last = v["events"][n as usize - 1]["offset"].as_i64().unwrap();
            assert_eq!(cur.parts[&1].last.offset, last);
        }
        assert!(frames.iter().any(|f| f.events == 1 && f.wire.len() > 5000));
        assert_eq!(frames[0].oldest_us, 100);
    }
}
