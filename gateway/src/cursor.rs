//! Client cursors: for each partition, the stream epoch and the last entry ID delivered. The
//! string form is opaque to clients and any replica can read it, since it only names positions
//! in the shared Redis streams.
//!
//! Version 2 (what the gateway issues) is base64url of a compact binary form: a version byte
//! `0x02`, then per partition in ascending order the partition as a varint delta from the
//! previous one, the epoch (8 bytes when it is the usual 16 hex digits, else its length and
//! bytes), and the entry ID as two varints. About 12-16 bytes per partition, so a cursor of a
//! 12-partition topic is ~200 characters and one of 4,096 partitions ~70 KB. Version 1
//! (base64url of `v1|<p>:<epoch>:<offset>-<n>|...`, issued by earlier releases) is still read.

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
/// Longest cursor string accepted: a version-2 cursor naming `MAX_PARTITIONS` partitions at
/// the largest positions fits.
pub const MAX_CURSOR_LEN: usize = 192 * 1024;

const V2: u8 = 0x02;
/// Epoch tag: 8 bytes follow (16 lowercase hex digits).
const EPOCH_HEX64: u8 = 0xff;
/// Longest epoch accepted.
const MAX_EPOCH_LEN: usize = 64;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

fn hex64(epoch: &str) -> Option<u64> {
    (epoch.len() == 16
        && epoch
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then(|| u64::from_str_radix(epoch, 16).ok())
    .flatten()
}

fn valid_epoch(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH_LEN
        && epoch.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cursor: {0}")]
pub struct BadCursor(pub &'static str);

impl Cursor {
    /// The version-2 string form.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(1 + self.parts.len() * 16);
        raw.push(V2);
        let mut prev = 0i64;
        for (p, pos) in &self.parts {
            put_varint(&mut raw, (i64::from(*p) - prev) as u64);
            prev = i64::from(*p);
            match hex64(&pos.epoch) {
                Some(e) => {
                    raw.push(EPOCH_HEX64);
                    raw.extend_from_slice(&e.to_be_bytes());
                }
                None => {
                    raw.push(pos.epoch.len() as u8);
                    raw.extend_from_slice(pos.epoch.as_bytes());
                }
            }
            put_varint(&mut raw, pos.last.offset.max(0) as u64);
            put_varint(&mut raw, u64::from(pos.last.n));
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(s: &str) -> Result<Self, BadCursor> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(BadCursor("too long"));
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| BadCursor("not base64url"))?;
        match raw.first() {
            Some(&V2) => Self::decode_v2(&raw[1..]),
            _ if raw.starts_with(b"v1") => Self::decode_v1(&raw),
            _ => Err(BadCursor("unknown version")),
        }
    }

    fn insert(&mut self, p: i32, pos: PartitionPos) -> Result<(), BadCursor> {
        if self.parts.insert(p, pos).is_some() {
            return Err(BadCursor("partition repeated"));
        }
        if self.parts.len() > MAX_PARTITIONS {
            return Err(BadCursor("too many partitions"));
        }
        Ok(())
    }

    fn decode_v2(mut b: &[u8]) -> Result<Self, BadCursor> {
        let mut c = Cursor::default();
        let mut prev: i64 = 0;
        let mut first = true;
        while !b.is_empty() {
            let delta = get_varint(&mut b).ok_or(BadCursor("truncated"))?;
            if !first && delta == 0 {
                return Err(BadCursor("partition repeated"));
            }
            first = false;
            let p = prev
                .checked_add(i64::try_from(delta).map_err(|_| BadCursor("bad partition"))?)
                .filter(|p| *p <= i64::from(i32::MAX))
                .ok_or(BadCursor("bad partition"))?;
            prev = p;
            let (&tag, rest) = b.split_first().ok_or(BadCursor("truncated"))?;
            b = rest;
            let epoch = if tag == EPOCH_HEX64 {
                let (e, rest) = b.split_at_checked(8).ok_or(BadCursor("truncated"))?;
                b = rest;
                format!(
                    "{:016x}",
                    u64::from_be_bytes(e.try_into().map_err(|_| BadCursor("truncated"))?)
                )
            } else {
                let (e, rest) = b
                    .split_at_checked(tag as usize)
                    .ok_or(BadCursor("truncated"))?;
                b = rest;
                let e = std::str::from_utf8(e).map_err(|_| BadCursor("bad epoch"))?;
                if !valid_epoch(e) {
                    return Err(BadCursor("bad epoch"));
                }
                e.to_string()
            };
            let offset = get_varint(&mut b).ok_or(BadCursor("truncated"))?;
            let n = get_varint(&mut b).ok_or(BadCursor("truncated"))?;
            let last = EntryId {
                offset: i64::try_from(offset).map_err(|_| BadCursor("bad entry id"))?,
                n: u32::try_from(n).map_err(|_| BadCursor("bad entry id"))?,
            };
            c.insert(p as i32, PartitionPos { epoch, last })?;
        }
        Ok(c)
    }

    fn decode_v1(raw: &[u8]) -> Result<Self, BadCursor> {
        let text = std::str::from_utf8(raw).map_err(|_| BadCursor("not UTF-8"))?;
        let mut fields = text.split('|');
        if fields.next() != Some("v1") {
            return Err(BadCursor("unknown version"));
        }
        let mut c = Cursor::default();
        for f in fields {
            let mut it = f.splitn(3, ':');
            let (Some(p), Some(epoch), Some(id)) = (it.next(), it.next(), it.next()) else {
                return Err(BadCursor("malformed partition entry"));
            };
            let p: i32 = p.parse().map_err(|_| BadCursor("bad partition"))?;
            if p < 0 {
                return Err(BadCursor("bad partition"));
            }
            if !valid_epoch(epoch) {
                return Err(BadCursor("bad epoch"));
            }
            let last = EntryId::parse(id).ok_or(BadCursor("bad entry id"))?;
            c.insert(
                p,
                PartitionPos {
                    epoch: epoch.to_string(),
                    last,
                },
            )?;
        }
        Ok(c)
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
            "v3",
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
        let enc2 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        for bad in [
            &[0x02, 0x01][..],                      // truncated after the partition
            &[0x02, 0x01, 0xff, 1, 2, 3][..],       // truncated epoch
            &[0x02, 0x01, 0x02, b'a', b'b', 5][..], // no n
            &[0x02, 0x01, 0x01, b'$', 1, 1][..],    // bad epoch character
            &[0x02, 0x00, 0x01, b'a', 1, 1, 0x00, 0x01, b'a', 1, 1][..], // repeated
            &[0x02, 0x01, 0x01, b'a', 1, 0xff, 0xff, 0xff, 0xff, 0x7f][..], // n > u32
        ] {
            assert!(Cursor::decode(&enc2(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_1_cursors_are_still_read() {
        let v1 = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("v1|0:3f9a1c2e7b4d6a80:4999-4294967295|1:c41e5f0a9d2b7e13:131-1");
        let c = Cursor::decode(&v1).unwrap();
        assert_eq!(c.parts[&0].epoch, "3f9a1c2e7b4d6a80");
        assert_eq!(
            c.parts[&0].last,
            EntryId {
                offset: 4999,
                n: u32::MAX
            }
        );
        assert_eq!(c.parts[&1].last, EntryId { offset: 131, n: 1 });
        // Re-issued in version 2, it names the same positions.
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn version_2_is_compact_and_fits_the_widest_topic() {
        let mut c = Cursor::default();
        for p in 0..MAX_PARTITIONS as i32 {
            c.parts.insert(
                p,
                PartitionPos {
                    epoch: format!("{:016x}", u64::MAX - p as u64),
                    last: EntryId {
                        offset: i64::MAX / 2,
                        n: u32::MAX,
                    },
                },
            );
        }
        let s = c.encode();
        assert!(s.len() <= MAX_CURSOR_LEN, "{}", s.len());
        assert_eq!(Cursor::decode(&s).unwrap(), c);
        // A typical topic: 12 partitions around offset one million. Version 1 took ~470.
        let twelve = Cursor {
            parts: (0..12)
                .map(|p| {
                    let last = EntryId {
                        offset: 1_000_000 + p as i64,
                        n: 1,
                    };
                    (
                        p,
                        PartitionPos {
                            epoch: format!("{:016x}", 77 * p as u64 + 1),
                            last,
                        },
                    )
                })
                .collect(),
        };
        assert!(twelve.encode().len() < 240, "{}", twelve.encode().len());
    }
}
