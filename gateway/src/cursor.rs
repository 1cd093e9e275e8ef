//! Client cursors: for each partition, the stream epoch and the last entry ID delivered. The
//! string form is opaque to clients (base64url of `v1|<p>:<epoch>:<offset>-<n>|...`) and any
//! replica can read it, since it only names positions in the shared Redis streams.

use base64::Engine;
use std::collections::BTreeMap;
use std::fmt;

/// Position within one partition's stream: the last delivered entry (offset, n ≥ 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub offset: i64,
    pub n: u32,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { offset: 0, n: 0 };

    pub fn parse(s: &str) -> Option<Self> {
        let (o, n) = s.split_once('-')?;
        Some(Self {
            offset: o.parse().ok().filter(|o: &i64| *o >= 0)?,
            n: n.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.offset, self.n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPos {
    pub epoch: String,
    pub last: EntryId,
}

/// Where a client is: the last entry delivered per partition. A partition that is absent has
/// had nothing delivered yet (its stream is read from the start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub parts: BTreeMap<i32, PartitionPos>,
}

/// Most partitions a cursor may name (bounds parsing work and memory).
pub const MAX_PARTITIONS: usize = 4096;
/// Longest cursor string accepted.
pub const MAX_CURSOR_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cursor: {0}")]
pub struct BadCursor(pub &'static str);

impl Cursor {
    pub fn encode(&self) -> String {
        let mut s = String::from("v1");
        for (p, pos) in &self.parts {
            s.push_str(&format!("|{p}:{}:{}", pos.epoch, pos.last));
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    pub fn decode(s: &str) -> Result<Self, BadCursor> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(BadCursor("too long"));
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| BadCursor("not base64url"))?;
        let text = std::str::from_utf8(&raw).map_err(|_| BadCursor("not UTF-8"))?;
        let mut fields = text.split('|');
        if fields.next() != Some("v1") {
            return Err(BadCursor("unknown version"));
        }
        let mut parts = BTreeMap::new();
        for f in fields {
            let mut it = f.splitn(3, ':');
            let (Some(p), Some(epoch), Some(id)) = (it.next(), it.next(), it.next()) else {
                return Err(BadCursor("malformed partition entry"));
            };
            let p: i32 = p.parse().map_err(|_| BadCursor("bad partition"))?;
            if p < 0 {
                return Err(BadCursor("bad partition"));
            }
            if epoch.is_empty()
                || epoch.len() > 64
                || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(BadCursor("bad epoch"));
            }
            let last = EntryId::parse(id).ok_or(BadCursor("bad entry id"))?;
            if parts
                .insert(
                    p,
                    PartitionPos {
                        epoch: epoch.to_string(),
                        last,
                    },
                )
                .is_some()
            {
                return Err(BadCursor("partition repeated"));
            }
            if parts.len() > MAX_PARTITIONS {
                return Err(BadCursor("too many partitions"));
            }
        }
        Ok(Self { parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut c = Cursor::default();
        c.parts.insert(
            3,
            PartitionPos {
                epoch: "abc123".into(),
                last: EntryId { offset: 42, n: 2 },
            },
        );
        c.parts.insert(
            0,
            PartitionPos {
                epoch: "ff".into(),
                last: EntryId::ZERO,
            },
        );
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert_eq!(
            Cursor::decode(&Cursor::default().encode()).unwrap(),
            Cursor::default()
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "!!!", "dj", "xyz", &"A".repeat(MAX_CURSOR_LEN + 1)] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "v2",
            "v1|x:e:1-1",
            "v1|1:e:1",
            "v1|1::1-1",
            "v1|1:e:-1-1",
            "v1|1:e:1-1|1:e:2-1",
            "v1|-1:e:1-1",
            "v1|1:e$:1-1",
        ] {
            assert!(Cursor::decode(&enc(bad)).is_err(), "{bad:?}");
        }
    }
}
