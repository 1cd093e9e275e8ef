//! Redis key naming, shared by ingest (writer) and gateway (reader):
//! - `<prefix>:<topic>:<partition>`: the stream of one Kafka partition. Entry IDs are
//!   `<kafka offset>-<n>` where n = 1.. is the event's index within its record (a batch record
//!   holds several events), so IDs are ordered like offsets and a cursor is an entry ID.
//! - `<prefix>:<topic>:<partition>:meta`: hash with `epoch`, `next_offset` (the next Kafka
//!   offset the stream expects: everything below it is written or dead-lettered), `owner`
//!   (the fencing token of the ingest that holds the partition) and `epoch_started_ms`.
//! - `<prefix>:<topic>:partitions`: set of partitions that have a stream.

/// Key builder for one deployment (prefix) and topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKeys {
    base: String,
}

impl StreamKeys {
    pub fn new(prefix: &str, topic: &str) -> Self {
        Self {
            base: format!("{prefix}:{topic}"),
        }
    }
    pub fn stream(&self, partition: i32) -> String {
        format!("{}:{partition}", self.base)
    }
    pub fn meta(&self, partition: i32) -> String {
        format!("{}:{partition}:meta", self.base)
    }
    pub fn partitions(&self) -> String {
        format!("{}:partitions", self.base)
    }
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
        assert_eq!(k.stream(3), "ds:events:3");
        assert_eq!(k.meta(3), "ds:events:3:meta");
        assert_eq!(k.partitions(), "ds:events:partitions");
        assert_eq!(entry_id(0, 0), "0-1");
        assert_eq!(parse_entry_id("42-3"), Some((42, 2)));
        assert_eq!(parse_entry_id("42-0"), None);
        assert_eq!(parse_entry_id("x"), None);
    }
}
