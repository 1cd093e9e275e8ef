//! The replies of the stream reads, consumed by value (an event's bytes are the reply's own
//! buffer), and stream IDs in both directions. A reply whose overall shape is wrong is an
//! error; a single bad entry is not (it is handed on as malformed, or dropped and counted when
//! it has no usable ID).

use super::{Entry, PartRead};
use crate::cursor::EntryId;
use bytes::Bytes;
use redis::Value;

/// The event of a malformed entry: one zero byte, which no protobuf message decodes (field
/// number 0 is invalid), so every reader that decodes skips it as undecodable.
pub const MALFORMED_EVENT: &[u8] = &[0];

/// The largest stream ID: what [`EntryId`]'s last position (`i64::MAX`-`u32::MAX`) stands for.
pub const MAX_ID: &str = "18446744073709551615-18446744073709551615";

/// What is wrong with a reply.
#[derive(Debug)]
pub enum Problem {
    Shape(&'static str),
    Server(redis::ServerError),
}

/// The stream ID to read after `id`. `n == u32::MAX` means "past every entry of this offset"
/// (a position the gateway sets after a gap, or the saturated position of an entry whose
/// sequence does not fit a `u32`), so it is the largest sequence Redis has; the last offset
/// with it is the largest ID.
pub fn redis_id(id: EntryId) -> String {
    match id {
        EntryId {
            offset: i64::MAX,
            n: u32::MAX,
        } => MAX_ID.to_string(),
        EntryId {
            offset,
            n: u32::MAX,
        } => format!("{offset}-{}", u64::MAX),
        EntryId { offset, n } => format!("{offset}-{n}"),
    }
}

/// Whether a read of `count` entries after `after` asks Redis for entries (nothing follows
/// the largest ID, and Redis refuses to start after it).
pub fn reads_entries(after: EntryId, count: usize) -> bool {
    count > 0
        && after
            != (EntryId {
                offset: i64::MAX,
                n: u32::MAX,
            })
}

/// A Redis stream ID as an [`EntryId`], and whether it is exact. IDs beyond what an
/// [`EntryId`] holds saturate: a sequence of `u32::MAX` or more becomes `u32::MAX` (past the
/// whole offset), an offset beyond `i64::MAX` the last position.
pub fn parse_id(b: &[u8]) -> Option<(EntryId, bool)> {
    let s = std::str::from_utf8(b).ok()?;
    let (ms, seq) = s.split_once('-')?;
    if ms.starts_with('+') || seq.starts_with('+') {
        return None;
    }
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    let Ok(offset) = i64::try_from(ms) else {
        let last = EntryId {
            offset: i64::MAX,
            n: u32::MAX,
        };
        return Some((last, false));
    };
    match u32::try_from(seq) {
        Ok(n) if n < u32::MAX => Some((EntryId { offset, n }, true)),
        _ => Some((
            EntryId {
                offset,
                n: u32::MAX,
            },
            false,
        )),
    }
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn id_of(v: Value) -> Option<EntryId> {
    bytes_of(v).and_then(|b| parse_id(&b)).map(|(id, _)| id)
}

/// Key/value pairs of a flat array (RESP2) or a map (RESP3), by value.
fn pairs(v: Value) -> Vec<(Value, Value)> {
    match v {
        Value::Map(m) => m,
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len() / 2);
            let mut it = a.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The read script's reply: one `{epoch, info, entries}` per partition, in order. Returns the
/// reads and the number of entries dropped for lack of a usable ID.
pub fn script_reads(v: Value, parts: usize) -> Result<(Vec<PartRead>, u64), Problem> {
    let Value::Array(list) = v else {
        return Err(Problem::Shape("read script: not an array"));
    };
    if list.len() != parts {
        return Err(Problem::Shape("read script: one answer per partition"));
    }
    let mut dropped = 0;
    let mut out = Vec::with_capacity(parts);
    for p in list {
        let Value::Array(f) = p else {
            return Err(Problem::Shape("read script: a partition is not an array"));
        };
        let Ok::<[Value; 3], _>([epoch, info, entries]) = f.try_into() else {
            return Err(Problem::Shape("read script: a partition is not 3 fields"));
        };
        out.push(part(epoch, info, Some(entries), &mut dropped)?);
    }
    Ok((out, dropped))
}

/// The transaction's reply: per partition `HGET`, `XINFO STREAM` and, when
/// [`reads_entries`], `XRANGE`.
pub fn tx_reads(
    v: Value,
    from: &[(i32, EntryId)],
    count: usize,
) -> Result<(Vec<PartRead>, u64), Problem> {
    let Value::Array(list) = v else {
        return Err(Problem::Shape("read transaction: not an array"));
    };
    let want: usize = from
        .iter()
        .map(|(_, a)| if reads_entries(*a, count) { 3 } else { 2 })
        .sum();
    if list.len() != want {
        return Err(Problem::Shape("read transaction: one answer per command"));
    }
    let mut dropped = 0;
    let mut out = Vec::with_capacity(from.len());
    let mut it = list.into_iter();
    for (_, after) in from {
        let (Some(epoch), Some(info)) = (it.next(), it.next()) else {
            return Err(Problem::Shape("read transaction: too short"));
        };
        let entries = if reads_entries(*after, count) {
            it.next()
        } else {
            None
        };
        out.push(part(epoch, info, entries, &mut dropped)?);
    }
    Ok((out, dropped))
}

fn part(
    epoch: Value,
    info: Value,
    entries: Option<Value>,
    dropped: &mut u64,
) -> Result<PartRead, Problem> {
    let mut read = PartRead {
        epoch: match epoch {
            Value::ServerError(e) => return Err(Problem::Server(e)),
            v => bytes_of(v).and_then(|b| String::from_utf8(b).ok()),
        },
        ..PartRead::default()
    };
    match info {
        // No stream (the script says `false`, XINFO says "no such key").
        Value::Nil => {}
        Value::ServerError(e) if e.details().is_some_and(|d| d.contains("no such key")) => {}
        Value::ServerError(e) => return Err(Problem::Server(e)),
        v @ (Value::Array(_) | Value::Map(_)) => stream_info(v, &mut read),
        _ => return Err(Problem::Shape("stream info is not a list")),
    }
    match entries {
        None | Some(Value::Nil) => {}
        Some(Value::Array(es)) => {
            read.entries.reserve_exact(es.len());
            for e in es {
                match entry(e) {
                    Some(e) => read.entries.push(e),
                    None => *dropped += 1,
                }
            }
        }
        Some(Value::ServerError(e)) => return Err(Problem::Server(e)),
        Some(_) => return Err(Problem::Shape("entries are not a list")),
    }
    Ok(read)
}

/// The fields of `XINFO STREAM` the readers use (others, and fields of the wrong type, are
/// ignored).
fn stream_info(v: Value, read: &mut PartRead) {
    let (mut added, mut length) = (None, None);
    for (k, v) in pairs(v) {
        let Some(k) = bytes_of(k) else { continue };
        match (k.as_slice(), v) {
            (b"first-entry", Value::Array(e)) => {
                read.first = e.into_iter().next().and_then(id_of);
            }
            (b"length", Value::Int(n)) => length = Some(n),
            (b"entries-added", Value::Int(n)) => added = Some(n),
            (b"last-generated-id", v) => read.last = id_of(v).unwrap_or(EntryId::ZERO),
            _ => {}
        }
    }
    read.trimmed = matches!((added, length), (Some(a), Some(l)) if a > l);
    read.added = added;
}

/// One `[id, [field, value, ...]]` entry; `None` when it has no usable ID.
fn entry(v: Value) -> Option<Entry> {
    let Value::Array(pair) = v else { return None };
    let mut it = pair.into_iter();
    let (id, exact) = bytes_of(it.next()?).and_then(|b| parse_id(&b))?;
    let mut event = None;
    let mut ingest_us = 0;
    let mut field = |k: Value, v: Value| match (bytes_of(k).as_deref(), v) {
        (Some(b"ev"), Value::BulkString(b)) if !b.is_empty() => event = Some(Bytes::from(b)),
        (Some(b"ts"), Value::BulkString(b)) => {
            ingest_us = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        }
        (Some(b"ts"), Value::Int(n)) => ingest_us = n,
        _ => {}
    };
    // The fields walked in place (no list of pairs per entry).
    match it.next() {
        Some(Value::Array(a)) => {
            let mut f = a.into_iter();
            while let (Some(k), Some(v)) = (f.next(), f.next()) {
                field(k, v);
            }
        }
        Some(Value::Map(m)) => m.into_iter().for_each(|(k, v)| field(k, v)),
        _ => {}
    }
    Some(match event {
        Some(event) if exact => Entry {
            id,
            event,
            ingest_us,
        },
        _ => Entry {
            id,
            event: Bytes::from_static(MALFORMED_EVENT),
            ingest_us: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn e(id: &str, fields: &[(&str, &[u8])]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), Value::BulkString(v.to_vec())])
                    .collect(),
            ),
        ])
    }

    fn id(offset: i64, n: u32) -> EntryId {
        EntryId { offset, n }
    }

    #[test]
    fn the_malformed_event_never_decodes() {
        assert!(dashstream::proto::Event::decode(MALFORMED_EVENT).is_err());
    }

    #[test]
    fn ids_parse_exactly_or_saturate_and_print_back() {
        assert_eq!(parse_id(b"5-3"), Some((id(5, 3), true)));
        assert_eq!(parse_id(b"5-4294967296"), Some((id(5, u32::MAX), false)));
        assert_eq!(parse_id(b"5-4294967295"), Some((id(5, u32::MAX), false)));
        assert_eq!(
            parse_id(b"9223372036854775808-1"),
            Some((id(i64::MAX, u32::MAX), false))
        );
        for bad in [&b"x"[..], b"5", b"-1-2", b"5-", b"+5-1", b"5-+1", b"\xff-1"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        assert_eq!(redis_id(id(5, 3)), "5-3");
        assert_eq!(redis_id(EntryId::ZERO), "0-0");
        assert_eq!(redis_id(id(5, u32::MAX)), "5-18446744073709551615");
        assert_eq!(redis_id(id(i64::MAX, u32::MAX)), MAX_ID);
        assert!(!reads_entries(id(i64::MAX, u32::MAX), 10));
        assert!(!reads_entries(id(1, 1), 0));
        assert!(reads_entries(id(1, 1), 1));
    }

    #[test]
    fn a_malformed_entry_is_handed_on_at_its_position_and_the_others_are_kept() {
        let es = Value::Array(vec![
            e("1-1", &[("ev", b"a"), ("ts", b"7")]),
            e("2-1", &[("foo", b"bar")]),                   // no ev
            e("3-1", &[("ev", b"")]),                       // empty ev
            Value::Array(vec![bulk("4-1"), Value::Int(1)]), // fields not a list
            Value::Array(vec![
                bulk("5-1"),
                Value::Array(vec![bulk("ev"), Value::Int(3)]),
            ]),
            e("6-4294967296", &[("ev", b"b")]), // sequence out of range
            e("nonsense", &[("ev", b"c")]),     // no usable ID: dropped
            Value::Int(4),                      // not an entry: dropped
            e("7-1", &[("ev", b"d")]),
        ]);
        let mut dropped = 0;
        let r = part(bulk("E"), Value::Nil, Some(es), &mut dropped).unwrap();
        assert_eq!(dropped, 2);
        let got: Vec<(EntryId, bool, i64)> = r
            .entries
            .iter()
            .map(|e| (e.id, e.is_malformed(), e.ingest_us))
            .collect();
        assert_eq!(
            got,
            vec![
                (id(1, 1), false, 7),
                (id(2, 1), true, 0),
                (id(3, 1), true, 0),
                (id(4, 1), true, 0),
                (id(5, 1), true, 0),
                (id(6, u32::MAX), true, 0),
                (id(7, 1), false, 0),
            ]
        );
        assert_eq!(r.entries[0].event.as_ref(), b"a");
        assert_eq!(r.epoch.as_deref(), Some("E"));
    }

    #[test]
    fn stream_info_gives_first_trimmed_and_last() {
        let info = Value::Array(vec![
            bulk("length"),
            Value::Int(10),
            bulk("last-generated-id"),
            bulk("20-1"),
            bulk("entries-added"),
            Value::Int(20),
            bulk("first-entry"),
            e("11-1", &[("ev", b"x")]),
        ]);
        let r = part(Value::Nil, info, None, &mut 0).unwrap();
        assert_eq!(
            (r.epoch, r.first, r.trimmed, r.last),
            (None, Some(id(11, 1)), true, id(20, 1))
        );
        // Nothing removed; an empty stream has no first entry.
        let info = Value::Array(vec![
            bulk("length"),
            Value::Int(0),
            bulk("entries-added"),
            Value::Int(0),
            bulk("first-entry"),
            Value::Nil,
        ]);
        let r = part(Value::Nil, info, None, &mut 0).unwrap();
        assert_eq!((r.first, r.trimmed), (None, false));
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors_and_a_missing_stream_is_not() {
        assert!(matches!(
            script_reads(Value::Int(1), 1),
            Err(Problem::Shape(_))
        ));
        assert!(matches!(
            script_reads(Value::Array(vec![]), 1),
            Err(Problem::Shape(_))
        ));
        assert!(matches!(
            script_reads(Value::Array(vec![Value::Array(vec![Value::Nil])]), 1),
            Err(Problem::Shape(_))
        ));
        let from = [(0, id(1, 1)), (1, id(i64::MAX, u32::MAX))];
        // HGET, XINFO, XRANGE for the first; no XRANGE after the largest ID.
        let ok = Value::Array(vec![
            bulk("E"),
            Value::Array(vec![]),
            Value::Array(vec![e("2-1", &[("ev", b"x")])]),
            Value::Nil,
            Value::Nil,
        ]);
        let (reads, dropped) = tx_reads(ok, &from, 5).unwrap();
        assert_eq!((reads.len(), dropped, reads[0].entries.len()), (2, 0, 1));
        assert!(matches!(
            tx_reads(Value::Array(vec![Value::Nil]), &from, 5),
            Err(Problem::Shape(_))
        ));
    }
}
