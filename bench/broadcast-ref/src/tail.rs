//! Following the streams: the partitions from `<prefix>:<topic>:partitions` (every 2 s), one
//! `XREAD BLOCK` over all of them, and per read one frame per format wanted, broadcast.

use crate::frames::{json_frame, proto_frame, Entry};
use crate::hub::Hub;
use crate::Args;
use anyhow::Result;
use bytes::Bytes;
use dashstream::keys::StreamKeys;
use dashstream::proto::Event;
use prost::Message;
use redis::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn parse_id(id: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(id).ok()?;
    let (o, n) = s.split_once('-')?;
    Some((o.parse().ok()?, n.parse().ok()?))
}

/// The entries of one stream in an `XREAD` reply: [[id, [field, value, ...]], ...].
fn stream_entries(partition: i32, v: Value, out: &mut Vec<Entry>, last: &mut String) {
    let Value::Array(entries) = v else { return };
    for e in entries {
        let Value::Array(mut pair) = e else { continue };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop().expect("two items");
        let Some((offset, n)) = bulk(&pair[0]).and_then(parse_id) else {
            continue;
        };
        *last = format!("{offset}-{n}");
        let Value::Array(fields) = fields else {
            continue;
        };
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if bulk(&k) == Some(b"ev") {
                if let Value::BulkString(ev) = v {
                    out.push(Entry {
                        partition,
                        offset,
                        n,
                        ev: Bytes::from(ev),
                    });
                }
                break;
            }
        }
    }
}

fn partition_of(key: &[u8]) -> Option<i32> {
    let i = key.iter().rposition(|b| *b == b':')?;
    std::str::from_utf8(&key[i + 1..]).ok()?.parse().ok()
}

struct Part {
    partition: i32,
    key: String,
    last: String,
}

pub async fn run(hub: Arc<Hub>, args: Args) -> Result<()> {
    let settings = args
        .redis
        .validate()
        .map_err(|e| anyhow::anyhow!("redis settings: {e:?}"))?;
    let keys = StreamKeys::new(&settings.key_prefix, &args.topic);
    let block = Duration::from_millis(args.block_ms);
    let mut conn = settings.connect_for_blocking(block).await?;
    let mut parts: Vec<Part> = Vec::new();
    let mut discovered: Option<Instant> = None;
    loop {
        if discovered.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            let ps: Vec<i32> = redis::cmd("SMEMBERS")
                .arg(keys.partitions())
                .query_async(&mut conn)
                .await?;
            for p in ps {
                if parts.iter().any(|x| x.partition == p) {
                    continue;
                }
                let key = keys.stream(p);
                // Streams known at start are followed from their end; later ones from 0.
                let mut last = "0-0".to_string();
                if discovered.is_none() {
                    let v: Value = redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut conn)
                        .await?;
                    if let Value::Array(es) = v {
                        if let Some(Value::Array(pair)) = es.first() {
                            if let Some(id) = pair.first().and_then(bulk) {
                                last = String::from_utf8_lossy(id).into_owned();
                            }
                        }
                    }
                }
                parts.push(Part {
                    partition: p,
                    key,
                    last,
                });
            }
            discovered = Some(Instant::now());
        }
        if parts.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(args.read_count)
            .arg("BLOCK")
            .arg(args.block_ms)
            .arg("STREAMS");
        for p in &parts {
            cmd.arg(&p.key);
        }
        for p in &parts {
            cmd.arg(&p.last);
        }
        let reply: Value = cmd.query_async(&mut conn).await?;
        let streams: Vec<(Value, Value)> = match reply {
            Value::Array(a) => a
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut kv) if kv.len() == 2 => {
                        let v = kv.pop().expect("two items");
                        Some((kv.pop().expect("two items"), v))
                    }
                    _ => None,
                })
                .collect(),
            Value::Map(m) => m,
            _ => continue,
        };
        let mut entries = Vec::new();
        for (k, v) in streams {
            let Some(p) = bulk(&k).and_then(partition_of) else {
                continue;
            };
            let Some(part) = parts.iter_mut().find(|x| x.partition == p) else {
                continue;
            };
            stream_entries(p, v, &mut entries, &mut part.last);
        }
        hub.metrics.reads.inc();
        hub.metrics.events_read.inc_by(entries.len() as u64);
        let (want_json, want_proto) = hub.formats();
        if entries.is_empty() || !(want_json || want_proto) {
            continue;
        }
        let decoded: Vec<(Entry, Event)> = entries
            .into_iter()
            .filter_map(|en| Event::decode(en.ev.clone()).ok().map(|e| (en, e)))
            .collect();
        let json = want_json.then(|| json_frame(&decoded));
        let proto = want_proto.then(|| proto_frame(&decoded));
        hub.broadcast(json.as_ref(), proto.as_ref(), decoded.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys() {
        assert_eq!(parse_id(b"42-3"), Some((42, 3)));
        assert_eq!(parse_id(b"x"), None);
        assert_eq!(partition_of(b"pre:topic:11"), Some(11));
        assert_eq!(partition_of(b"nocolon"), None);
    }
}
