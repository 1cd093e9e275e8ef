//! One stream entry, decoded once and encoded once per format; every client that receives it
//! shares the same bytes. Also the filters a client may ask for.

use crate::cursor::EntryId;
use bytes::Bytes;
use dashstream::proto::{Event, StreamEvent};
use prost::Message;
use std::collections::HashSet;

/// An event ready to send: its identity, the fields filters look at, and both wire forms.
#[derive(Debug)]
pub struct LiveEvent {
    pub partition: i32,
    pub id: EntryId,
    pub tenant: String,
    pub thread: String,
    pub event_type: String,
    pub sequence: u64,
    pub timestamp_us: i64,
    /// The JSON object of this event (an element of an `events` frame's array).
    pub json: Bytes,
    /// The encoded `StreamEvent` (an element of a protobuf `Events` frame).
    pub proto: Bytes,
}

impl LiveEvent {
    /// Builds the event of stream entry `id` of `partition` from its stored `Event` bytes,
    /// in both wire forms (the tail's events go to clients of either format).
    pub fn from_entry(
        partition: i32,
        id: EntryId,
        event: Bytes,
    ) -> Result<Self, prost::DecodeError> {
        Self::build(partition, id, event, None)
    }

    /// Like [`from_entry`](Self::from_entry), in `format` only (a history read for one
    /// client): the other form is left empty.
    pub fn from_entry_as(
        partition: i32,
        id: EntryId,
        event: Bytes,
        format: crate::frames::Format,
    ) -> Result<Self, prost::DecodeError> {
        Self::build(partition, id, event, Some(format))
    }

    fn build(
        partition: i32,
        id: EntryId,
        event: Bytes,
        only: Option<crate::frames::Format>,
    ) -> Result<Self, prost::DecodeError> {
        use crate::frames::Format;
        let mut e = Event::decode(event.clone())?;
        let json = match only {
            Some(Format::Protobuf) => Bytes::new(),
            _ => dashstream::codec::event_json(partition, id.offset, id.n, &e).into(),
        };
        let proto = match only {
            Some(Format::Json) => Bytes::new(),
            _ => StreamEvent {
                partition,
                offset: id.offset,
                index: id.n,
                event,
            }
            .encode_to_vec()
            .into(),
        };
        let h = e.header.take().unwrap_or_default();
        Ok(Self {
            partition,
            id,
            tenant: h.tenant_id,
            thread: h.thread_id,
            event_type: h.event_type,
            sequence: h.sequence,
            timestamp_us: h.timestamp_us,
            json,
            proto,
        })
    }
}

/// A client's filters: an event passes when each given set contains its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub tenants: Option<HashSet<String>>,
    pub threads: Option<HashSet<String>>,
    pub types: Option<HashSet<String>>,
}

/// Most values in one filter, and the longest value.
pub const MAX_FILTER_VALUES: usize = 100;
pub const MAX_FILTER_VALUE_BYTES: usize = 256;

impl Filter {
    pub fn matches(&self, e: &LiveEvent) -> bool {
        let ok =
            |set: &Option<HashSet<String>>, v: &str| set.as_ref().is_none_or(|s| s.contains(v));
        ok(&self.tenants, &e.tenant)
            && ok(&self.threads, &e.thread)
            && ok(&self.types, &e.event_type)
    }

    /// Parses one comma-separated filter parameter.
    pub fn parse_values(name: &str, v: &str) -> Result<HashSet<String>, String> {
        let values: HashSet<String> = v.split(',').map(str::to_string).collect();
        if values.iter().any(String::is_empty) {
            return Err(format!("{name}: empty value"));
        }
        if values.len() > MAX_FILTER_VALUES {
            return Err(format!("{name}: more than {MAX_FILTER_VALUES} values"));
        }
        if values.iter().any(|v| v.len() > MAX_FILTER_VALUE_BYTES) {
            return Err(format!(
                "{name}: a value is longer than {MAX_FILTER_VALUE_BYTES} bytes"
            ));
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dashstream::proto::Header;

    fn event(payload: &[u8], content_type: &str) -> Bytes {
        Event {
            header: Some(Header {
                message_id: vec![1; 16].into(),
                timestamp_us: 5,
                tenant_id: "acme".into(),
                thread_id: "t-1".into(),
                sequence: 3,
                event_type: "token".into(),
                schema_version: 1,
            }),
            payload: payload.to_vec().into(),
            content_type: content_type.into(),
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn json_payload_is_embedded_and_other_payloads_are_base64() {
        let id = EntryId { offset: 9, n: 1 };
        let e = LiveEvent::from_entry(2, id, event(br#"{"a":1}"#, "application/json")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(v["payload"]["a"], 1);
        assert_eq!(v["offset"], 9);
        assert_eq!(v["thread"], "t-1");
        let e =
            LiveEvent::from_entry(2, id, event(b"\xff\x00", "application/octet-stream")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(v["payload_b64"], "/wA=");
        let bad_json = LiveEvent::from_entry(2, id, event(b"{nope", "application/json")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bad_json.json).unwrap();
        assert!(v.get("payload_b64").is_some());
    }

    #[test]
    fn filters() {
        let e = LiveEvent::from_entry(
            0,
            EntryId { offset: 1, n: 1 },
            event(b"{}", "application/json"),
        )
        .unwrap();
        let mut f = Filter::default();
        assert!(f.matches(&e));
        f.tenants = Some(Filter::parse_values("tenant", "x,acme").unwrap());
        assert!(f.matches(&e));
        f.types = Some(Filter::parse_values("type", "node_start").unwrap());
        assert!(!f.matches(&e));
        assert!(Filter::parse_values("type", "a,,b").is_err());
    }
}
