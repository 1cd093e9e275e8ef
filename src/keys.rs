//! Redis key naming, shared by ingest (writer) and gateway (reader):
//! - `<prefix>:{<topic>:<partition>}`: the stream of one Kafka partition. Entry IDs are
//!   `<kafka offset>-<n>` where n = 1.. is the event's index within its record (a batch record
//!   holds several events), so IDs are ordered like offsets and a cursor is an entry ID.
//! - `<prefix>:{<topic>:<partition>}:meta`: hash with `epoch`, `next_offset` (the next Kafka
//!   offset the stream expects: everything below it is written or dead-lettered), `owner`
//!   (the fencing token of the ingest that holds the partition) and `epoch_started_ms`.
//! - `<prefix>:{<topic>}:partitions`: set of partitions that have a stream.
//!
//! The braces are Redis Cluster hash tags: a partition's stream and meta hash hash to one slot
//! (every script and transaction of a partition runs on one node), and different partitions
//! hash to different slots, so they spread over a cluster's masters. A single Redis ignores
//! them. Hence a key prefix may hold no brace ([`valid_prefix`]), and Kafka topic names cannot.

/// Key builder for one deployment (prefix) and topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKeys {
    prefix: String,
    topic: String,
}

impl StreamKeys {
    pub fn new(prefix: &str, topic: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            topic: topic.to_string(),
        }
    }
    pub fn stream(&self, partition: i32) -> String {
        format!("{}:{{{}:{partition}}}", self.prefix, self.topic)
    }
    pub fn meta(&self, partition: i32) -> String {
        format!("{}:{{{}:{partition}}}:meta", self.prefix, self.topic)
    }
    pub fn partitions(&self) -> String {
        format!("{}:{{{}}}:partitions", self.prefix, self.topic)
    }
}

/// Whether `prefix` can be a key prefix: not empty, no whitespace, and no brace (a brace would
/// change the keys' hash tags, and with them which keys share a Redis Cluster slot).
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty() && !prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
}

/// The Redis Cluster hash slot of `key` (CRC16 of its hash tag, or of the whole key).
pub fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    // The tag: what lies between the first `{` and the next `}`, when not empty.
    let tag = k.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &k[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(k)) % 16384
}

/// The stream entry ID of event `index` (0-based) of the record at `offset`.
pub fn entry_id(offset: i64, index: usize) -> String {
    format!("{offset}-{}", index + 1)
}

/// Splits an entry ID into (offset, index 0-based).
pub fn parse_entry_id(id: &str) -> Option<(i64, usize)> {
    let (o, n) = id.split_once('-')?;
    let n: usize = n.parse().ok()?;
    Some((o.parse().ok()?, n.checked_sub(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        let k = StreamKeys::new("ds", "events");
        assert_eq!(k.stream(3), "ds:{events:3}");
        assert_eq!(k.meta(3), "ds:{events:3}:meta");
        assert_eq!(k.partitions(), "ds:{events}:partitions");
        assert_eq!(entry_id(0, 0), "0-1");
        assert_eq!(parse_entry_id("42-3"), Some((42, 2)));
        assert_eq!(parse_entry_id("42-0"), None);
        assert_eq!(parse_entry_id("x"), None);
    }

    #[test]
    fn a_partition_is_one_slot_and_partitions_spread() {
        let k = StreamKeys::new("ds", "events");
        for p in 0..12 {
            assert_eq!(slot(&k.stream(p)), slot(&k.meta(p)), "partition {p}");
        }
        // Redis's own example: the slot of "foo" is 12182, and a tag decides alone.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{foo}:bar"), 12182);
        // 12 partitions over the three masters of `redis-cli --cluster create` (slots 0-5460,
        // 5461-10922, 10923-16383): each master holds some.
        let masters: std::collections::BTreeSet<u16> =
            (0..12).map(|p| slot(&k.stream(p)) / 5461).collect();
        assert_eq!(masters.len(), 3, "{masters:?}");
        assert!(valid_prefix("dash-stream:prod"));
        assert!(!valid_prefix("a{b"));
        assert!(!valid_prefix("a b"));
        assert!(!valid_prefix(""));
    }
}
