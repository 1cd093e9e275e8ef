//! The Kafka record format of PROTOCOL.md §1: one marker byte (`0x00` raw, `0x01` zstd with a
//! declared content size) followed by a protobuf `Envelope`. [`decode_record`] turns a record
//! value into its events, or into an [`InvalidRecord`] whose [`Reason`] is one of a small fixed
//! set (used as a metric label and in DLQ documents). [`encode_record`] is the producer side.

use crate::proto::{envelope::Body, Envelope, Event, EventBatch};
use prost::Message;

pub const MARKER_RAW: u8 = 0x00;
pub const MARKER_ZSTD: u8 = 0x01;
/// The highest `Header.schema_version` this build understands (0 is read as 1).
pub const SUPPORTED_SCHEMA_VERSION: u32 = 1;
pub const MAX_THREAD_ID_BYTES: usize = 256;
pub const MESSAGE_ID_BYTES: usize = 16;

/// Size limits applied while decoding; every one of them is a setting of the ingest tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest record value accepted, as it arrives from Kafka.
    pub max_record_bytes: usize,
    /// Largest protobuf accepted after zstd decompression.
    pub max_decompressed_bytes: usize,
    /// Most events in one `EventBatch`.
    pub max_batch_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_decompressed_bytes: 4 * 1024 * 1024,
            max_batch_events: 1000,
        }
    }
}

/// Why a record was rejected. The string forms are metric label values and DLQ `reason`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Empty,
    TooLarge,
    BadMarker,
    Decompress,
    Decode,
    MissingBody,
    BatchTooLarge,
    MissingHeader,
    MissingThreadId,
    BadThreadId,
    BadMessageId,
    UnsupportedSchemaVersion,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Empty,
        Reason::TooLarge,
        Reason::BadMarker,
        Reason::Decompress,
        Reason::Decode,
        Reason::MissingBody,
        Reason::BatchTooLarge,
        Reason::MissingHeader,
        Reason::MissingThreadId,
        Reason::BadThreadId,
        Reason::BadMessageId,
        Reason::UnsupportedSchemaVersion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::BadMarker => "bad_marker",
            Reason::Decompress => "decompress",
            Reason::Decode => "decode",
            Reason::MissingBody => "missing_body",
            Reason::BatchTooLarge => "batch_too_large",
            Reason::MissingHeader => "missing_header",
            Reason::MissingThreadId => "missing_thread_id",
            Reason::BadThreadId => "bad_thread_id",
            Reason::BadMessageId => "bad_message_id",
            Reason::UnsupportedSchemaVersion => "unsupported_schema_version",
        }
    }
}

/// A record that cannot become events, with the detail for the DLQ document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidRecord {
    pub reason: Reason,
    pub detail: String,
}

impl InvalidRecord {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Decodes one Kafka record value into its events (a batch is split), validating each.
pub fn decode_record(value: &[u8], limits: &Limits) -> Result<Vec<Event>, InvalidRecord> {
    if value.is_empty() {
        return Err(InvalidRecord::new(Reason::Empty, "record value is empty"));
    }
    if value.len() > limits.max_record_bytes {
        return Err(InvalidRecord::new(
            Reason::TooLarge,
            format!(
                "record value is {} bytes; the limit is {}",
                value.len(),
                limits.max_record_bytes
            ),
        ));
    }
    let (marker, body) = (value[0], &value[1..]);
    let envelope = match marker {
        MARKER_RAW => decode_envelope(body)?,
        MARKER_ZSTD => decode_envelope(&decompress(body, limits.max_decompressed_bytes)?)?,
        other => {
            return Err(InvalidRecord::new(
                Reason::BadMarker,
                format!("unknown frame marker 0x{other:02x} (expected 0x00 raw or 0x01 zstd)"),
            ))
        }
    };
    let events = match envelope.body {
        None => {
            return Err(InvalidRecord::new(
                Reason::MissingBody,
                "envelope has neither an event nor a batch",
            ))
        }
        Some(Body::Event(e)) => vec![e],
        Some(Body::Batch(EventBatch { events })) => {
            if events.is_empty() {
                return Err(InvalidRecord::new(
                    Reason::MissingBody,
                    "batch has no events",
                ));
            }
            if events.len() > limits.max_batch_events {
                return Err(InvalidRecord::new(
                    Reason::BatchTooLarge,
                    format!(
                        "batch has {} events; the limit is {}",
                        events.len(),
                        limits.max_batch_events
                    ),
                ));
            }
            events
        }
    };
    for (i, e) in events.iter().enumerate() {
        validate_event(i, e)?;
    }
    Ok(events)
}

fn decode_envelope(bytes: &[u8]) -> Result<Envelope, InvalidRecord> {
    Envelope::decode(bytes).map_err(|e| {
        InvalidRecord::new(
            Reason::Decode,
            format!("protobuf Envelope does not decode: {e}"),
        )
    })
}

fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, InvalidRecord> {
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(InvalidRecord::new(
                Reason::Decompress,
                "zstd frame does not declare its content size",
            ))
        }
        Err(_) => {
            return Err(InvalidRecord::new(
                Reason::Decompress,
                "not a valid zstd frame header",
            ))
        }
    };
    if size > limit as u64 {
        return Err(InvalidRecord::new(
            Reason::TooLarge,
            format!("zstd frame declares {size} bytes; the decompressed limit is {limit}"),
        ));
    }
    zstd::bulk::decompress(body, size as usize)
        .map_err(|e| InvalidRecord::new(Reason::Decompress, format!("zstd: {e}")))
}

fn validate_event(index: usize, event: &Event) -> Result<(), InvalidRecord> {
    let at = |s: String| format!("event {index}: {s}");
    let Some(h) = &event.header else {
        return Err(InvalidRecord::new(
            Reason::MissingHeader,
            at("header is missing".into()),
        ));
    };
    if h.thread_id.is_empty() {
        return Err(InvalidRecord::new(
            Reason::MissingThreadId,
            at("header.thread_id is empty".into()),
        ));
    }
    if h.thread_id.len() > MAX_THREAD_ID_BYTES {
        return Err(InvalidRecord::new(
            Reason::BadThreadId,
            at(format!(
                "header.thread_id is {} bytes; the limit is {MAX_THREAD_ID_BYTES}",
                h.thread_id.len()
            )),
        ));
    }
    if h.message_id.len() != MESSAGE_ID_BYTES {
        return Err(InvalidRecord::new(
            Reason::BadMessageId,
            at(format!(
                "header.message_id is {} bytes; expected {MESSAGE_ID_BYTES}",
                h.message_id.len()
            )),
        ));
    }
    let version = h.schema_version.max(1);
    if version > SUPPORTED_SCHEMA_VERSION {
        return Err(InvalidRecord::new(
            Reason::UnsupportedSchemaVersion,
            at(format!(
                "schema_version {version} is newer than the supported {SUPPORTED_SCHEMA_VERSION}"
            )),
        ));
    }
    Ok(())
}

/// Encodes an envelope as a record value, zstd-compressed (with its content size) or raw.
pub fn encode_record(envelope: &Envelope, compress: bool) -> Vec<u8> {
    let raw = envelope.encode_to_vec();
    if compress {
        // `bulk::compress` writes a single frame whose header declares the content size.
        let mut out = vec![MARKER_ZSTD];
        out.extend(zstd::bulk::compress(&raw, 3).expect("zstd compression of a buffer"));
        out
    } else {
        let mut out = Vec::with_capacity(raw.len() + 1);
        out.push(MARKER_RAW);
        out.extend(raw);
        out
    }
}

/// The JSON object of one event, as clients see it (docs/PROTOCOL.md §2): its position
/// (partition, offset, 1-based index within the record), its header fields, and its payload,
/// embedded as JSON when the content type says JSON and it parses, else as `payload_b64`.
pub fn event_json(partition: i32, offset: i64, index: u32, e: &Event) -> Vec<u8> {
    let h = e.header.clone().unwrap_or_default();
    let mut obj = serde_json::Map::new();
    obj.insert("partition".into(), partition.into());
    obj.insert("offset".into(), offset.into());
    obj.insert("index".into(), index.into());
    obj.insert("message_id".into(), hex::encode(&h.message_id).into());
    obj.insert("tenant".into(), h.tenant_id.into());
    obj.insert("thread".into(), h.thread_id.into());
    obj.insert("sequence".into(), h.sequence.into());
    obj.insert("event_type".into(), h.event_type.into());
    obj.insert("timestamp_us".into(), h.timestamp_us.into());
    obj.insert("content_type".into(), e.content_type.clone().into());
    let json_payload = e
        .content_type
        .contains("json")
        .then(|| serde_json::from_slice::<&serde_json::value::RawValue>(&e.payload).ok())
        .flatten();
    let mut json = serde_json::to_vec(&obj).expect("JSON of a map");
    json.pop(); // reopen the object to append the payload as is
    match json_payload {
        Some(raw) => {
            json.extend_from_slice(b",\"payload\":");
            json.extend_from_slice(raw.get().as_bytes());
        }
        None => {
            use base64::Engine;
            json.extend_from_slice(b",\"payload_b64\":\"");
            json.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(&e.payload)
                    .as_bytes(),
            );
            json.push(b'"');
        }
    }
    json.push(b'}');
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Header;

    fn event(thread: &str, seq: u64) -> Event {
        Event {
            header: Some(Header {
                message_id: vec![7; 16].into(),
                timestamp_us: 1,
                tenant_id: "t".into(),
                thread_id: thread.into(),
                sequence: seq,
                event_type: "token".into(),
                schema_version: 1,
            }),
            payload: b"{}".to_vec().into(),
            content_type: "application/json".into(),
        }
    }

    fn single(e: Event) -> Envelope {
        Envelope {
            body: Some(Body::Event(e)),
        }
    }

    fn reason(value: &[u8]) -> Reason {
        decode_record(value, &Limits::default()).unwrap_err().reason
    }

    #[test]
    fn raw_and_zstd_round_trip() {
        for compress in [false, true] {
            let v = encode_record(&single(event("a", 1)), compress);
            let got = decode_record(&v, &Limits::default()).unwrap();
            assert_eq!(got, vec![event("a", 1)]);
        }
    }

    #[test]
    fn batches_are_split() {
        let env = Envelope {
            body: Some(Body::Batch(EventBatch {
                events: vec![event("a", 1), event("a", 2), event("b", 1)],
            })),
        };
        let got = decode_record(&encode_record(&env, true), &Limits::default()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], event("b", 1));
    }

    #[test]
    fn every_reason_is_reachable() {
        assert_eq!(reason(&[]), Reason::Empty);
        assert_eq!(reason(&[0x07, 1, 2]), Reason::BadMarker);
        assert_eq!(reason(&[0x00, 0xff, 0xff, 0xff]), Reason::Decode);
        assert_eq!(reason(&[0x01, 1, 2, 3, 4, 5]), Reason::Decompress);
        assert_eq!(reason(&[0x00]), Reason::MissingBody);
        let mut e = event("a", 1);
        e.header = None;
        assert_eq!(
            reason(&encode_record(&single(e), false)),
            Reason::MissingHeader
        );
        assert_eq!(
            reason(&encode_record(&single(event("", 1)), false)),
            Reason::MissingThreadId
        );
        let long = "x".repeat(MAX_THREAD_ID_BYTES + 1);
        assert_eq!(
            reason(&encode_record(&single(event(&long, 1)), false)),
            Reason::BadThreadId
        );
        let mut e = event("a", 1);
        e.header.as_mut().unwrap().message_id = vec![1, 2].into();
        assert_eq!(
            reason(&encode_record(&single(e), false)),
            Reason::BadMessageId
        );
        let mut e = event("a", 1);
        e.header.as_mut().unwrap().schema_version = 2;
        assert_eq!(
            reason(&encode_record(&single(e), false)),
            Reason::UnsupportedSchemaVersion
        );
        let limits = Limits {
            max_record_bytes: 10,
            ..Limits::default()
        };
        let big = encode_record(&single(event("a", 1)), false);
        assert_eq!(
            decode_record(&big, &limits).unwrap_err().reason,
            Reason::TooLarge
        );
        let env = Envelope {
            body: Some(Body::Batch(EventBatch {
                events: vec![event("a", 1); 3],
            })),
        };
        let limits = Limits {
            max_batch_events: 2,
            ..Limits::default()
        };
        let v = encode_record(&env, false);
        assert_eq!(
            decode_record(&v, &limits).unwrap_err().reason,
            Reason::BatchTooLarge
        );
    }

    #[test]
    fn schema_version_zero_reads_as_one() {
        let mut e = event("a", 1);
        e.header.as_mut().unwrap().schema_version = 0;
        assert!(decode_record(&encode_record(&single(e), false), &Limits::default()).is_ok());
    }

    #[test]
    fn zstd_bomb_is_refused_by_declared_size() {
        let mut e = event("a", 1);
        e.payload = vec![0u8; 100_000].into();
        let v = encode_record(&single(e), true);
        assert!(v.len() < 2_000, "compresses well");
        let limits = Limits {
            max_decompressed_bytes: 50_000,
            ..Limits::default()
        };
        assert_eq!(
            decode_record(&v, &limits).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn zstd_without_content_size_is_refused() {
        let raw = single(event("a", 1)).encode_to_vec();
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &raw).unwrap();
        let mut v = vec![MARKER_ZSTD];
        v.extend(enc.finish().unwrap());
        assert_eq!(reason(&v), Reason::Decompress);
    }
}
