//! Server frames of PROTOCOL.md §2 in both formats. An `events` frame is assembled from the
//! events' pre-encoded bytes (JSON array elements, or protobuf `StreamEvent`s as repeated
//! field entries), so a frame costs a copy, not an encoding, per client.

use crate::event::LiveEvent;
use bytes::{BufMut, Bytes, BytesMut};
use dashstream::proto::{self, server_frame::Frame, ServerFrame};
use prost::Message;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

/// A frame ready for the socket: text (JSON) or binary (protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Text(String),
    Binary(Bytes),
}

impl Wire {
    pub fn len(&self) -> usize {
        match self {
            Wire::Text(s) => s.len(),
            Wire::Binary(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    Wire::Binary(ServerFrame { frame: Some(frame) }.encode_to_vec().into())
}

fn text(v: serde_json::Value) -> Wire {
    Wire::Text(v.to_string())
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

pub fn pong(f: Format) -> Wire {
    match f {
        Format::Json => Wire::Text(r#"{"type":"pong"}"#.into()),
        Format::Protobuf => proto_frame(Frame::Pong(proto::Pong {})),
    }
}

/// An `events` frame carrying `events` (in order), with the cursor just after them.
pub fn events(f: Format, cursor: &str, events: &[Arc<LiveEvent>]) -> Wire {
    match f {
        Format::Json => {
            let size: usize = events.iter().map(|e| e.json.len() + 1).sum();
            let mut s = String::with_capacity(size + cursor.len() + 40);
            s.push_str(r#"{"type":"events","cursor":"#);
            s.push_str(&serde_json::to_string(cursor).expect("JSON string"));
            s.push_str(r#","events":["#);
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(std::str::from_utf8(&e.json).expect("event JSON is UTF-8"));
            }
            s.push_str("]}");
            Wire::Text(s)
        }
        Format::Protobuf => {
            // Events { cursor = 1; repeated StreamEvent events = 2; } by hand, reusing bytes.
            let mut inner = BytesMut::new();
            prost::encoding::string::encode(1, &cursor.to_string(), &mut inner);
            for e in events {
                prost::encoding::encode_key(
                    2,
                    prost::encoding::WireType::LengthDelimited,
                    &mut inner,
                );
                prost::encoding::encode_varint(e.proto.len() as u64, &mut inner);
                inner.put_slice(&e.proto);
            }
            let mut out = BytesMut::with_capacity(inner.len() + 8);
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
            prost::encoding::encode_varint(inner.len() as u64, &mut out);
            out.put_slice(&inner);
            Wire::Binary(out.freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::EntryId;
    use dashstream::proto::{Event, Header};

    fn ev(offset: i64) -> Arc<LiveEvent> {
        let bytes = Event {
            header: Some(Header {
                thread_id: "t".into(),
                sequence: offset as u64,
                ..Default::default()
            }),
            payload: b"{\"x\":1}".to_vec().into(),
            content_type: "application/json".into(),
        }
        .encode_to_vec();
        Arc::new(LiveEvent::from_entry(1, EntryId { offset, n: 1 }, bytes.into()).unwrap())
    }

    #[test]
    fn json_and_protobuf_events_frames_carry_the_same_events() {
        let evs = vec![ev(5), ev(6)];
        let Wire::Text(t) = events(Format::Json, "c1", &evs) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["type"], "events");
        assert_eq!(v["cursor"], "c1");
        assert_eq!(v["events"][1]["offset"], 6);
        let Wire::Binary(b) = events(Format::Protobuf, "c1", &evs) else {
            panic!()
        };
        let f = ServerFrame::decode(b).unwrap();
        let Some(Frame::Events(e)) = f.frame else {
            panic!()
        };
        assert_eq!(e.cursor, "c1");
        assert_eq!(e.events.len(), 2);
        assert_eq!(e.events[1].offset, 6);
        let inner = Event::decode(e.events[0].event.clone()).unwrap();
        assert_eq!(inner.header.unwrap().sequence, 5);
    }
}
