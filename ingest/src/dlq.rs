//! Dead-letter documents (PROTOCOL.md §1): one JSON document per invalid record, keyed like
//! the original, with enough to investigate it: reason, error text, where it came from, size,
//! SHA-256 and the first bytes of the value, and the whole value only when the operator asked.

use base64::Engine;
use dashstream::codec::InvalidRecord;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How many leading bytes of the value are shown in hex.
pub const HEAD_BYTES: usize = 64;

/// Builds the DLQ document of `msg`.
pub fn document<M: Message>(
    msg: &M,
    err: &InvalidRecord,
    include_value: bool,
    instance: &str,
) -> Value {
    let value = msg.payload().unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut doc = json!({
        "reason": err.reason.as_str(),
        "error": err.detail,
        "source_topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp_ms": msg.timestamp().to_millis(),
        "size": value.len(),
        "sha256": hex::encode(Sha256::digest(value)),
        "head_hex": hex::encode(&value[..value.len().min(HEAD_BYTES)]),
        "ingest_instance": instance,
        "dead_lettered_at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    });
    match msg.key() {
        None => doc["key"] = Value::Null,
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => doc["key"] = json!(s),
            Err(_) => doc["key_b64"] = json!(b64.encode(k)),
        },
    }
    if include_value {
        doc["value_b64"] = json!(b64.encode(value));
    }
    doc
}

/// One invalid record, ready to be dead-lettered: its document is built while the record is
/// still borrowed from librdkafka, so nothing else of it is kept.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub doc: String,
}

impl DeadLetter {
    /// Bytes held (counted against the write chunk's byte bound).
    pub fn size(&self) -> usize {
        self.doc.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// The DLQ producer.
pub struct Dlq {
    pub producer: FutureProducer,
    pub topic: String,
    pub include_value: bool,
    pub instance: String,
}

impl Dlq {
    /// The dead letter of `msg`.
    pub fn letter<M: Message>(&self, msg: &M, err: &InvalidRecord) -> DeadLetter {
        DeadLetter {
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            doc: document(msg, err, self.include_value, &self.instance).to_string(),
        }
    }

    /// Sends one document and waits for the broker's acknowledgement.
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), String> {
        let mut rec: FutureRecord<'_, [u8], str> =
            FutureRecord::to(&self.topic).payload(&letter.doc);
        if let Some(k) = &letter.key {
            rec = rec.key(k);
        }
        self.producer
            .send(rec, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dashstream::codec::Reason;
    use rdkafka::message::{OwnedMessage, Timestamp};

    #[test]
    fn document_has_the_documented_fields() {
        let msg = OwnedMessage::new(
            Some(vec![0x00, 0xff, 0xfe]),
            Some(b"thread-1".to_vec()),
            "events".into(),
            Timestamp::CreateTime(1234),
            2,
            77,
            None,
        );
        let err = InvalidRecord {
            reason: Reason::Decode,
            detail: "bad".into(),
        };
        let d = document(&msg, &err, false, "i-1");
        assert_eq!(d["reason"], "decode");
        assert_eq!(d["partition"], 2);
        assert_eq!(d["offset"], 77);
        assert_eq!(d["key"], "thread-1");
        assert_eq!(d["size"], 3);
        assert_eq!(d["head_hex"], "00fffe");
        assert_eq!(d["timestamp_ms"], 1234);
        assert_eq!(d["sha256"].as_str().unwrap().len(), 64);
        assert!(d.get("value_b64").is_none());
        assert_eq!(document(&msg, &err, true, "i")["value_b64"], "AP/+");
    }
}
