//! `dashstream tail`: print events as JSON lines (the objects of docs/PROTOCOL.md §2) from
//! Kafka, from the Redis streams, or from a gateway WebSocket. Tailing Kafka mutates nothing by
//! default: partitions are assigned (no group membership) under a throwaway group id and no
//! offset is committed; `--group` joins a named group and `--commit` commits what was printed.

use crate::codec::{decode_record, event_json, Limits};
use crate::kafka::KafkaConnection;
use crate::keys::{parse_entry_id, StreamKeys};
use crate::proto::Event;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// When a tail stops: after `count` events, or after `idle` without one (both optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stop {
    pub count: Option<u64>,
    pub idle: Option<Duration>,
}

impl Stop {
    fn done(&self, n: u64) -> bool {
        self.count.is_some_and(|c| n >= c)
    }
    /// How long to wait for the next event (a long time when no idle limit is set).
    fn wait(&self) -> Duration {
        self.idle.unwrap_or(Duration::from_secs(3600 * 24 * 365))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Earliest,
    Latest,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("websocket: {0}")]
    Ws(String),
    #[error("{0}")]
    Usage(String),
}

/// Options of a Kafka tail.
#[derive(Debug, Clone)]
pub struct KafkaTail {
    pub topic: String,
    pub from: From,
    /// Join this consumer group (default: assign partitions under a throwaway group id).
    pub group: Option<String>,
    /// Commit the offsets of printed records (needs `group`).
    pub commit: bool,
    pub limits: Limits,
}

/// Tails the topic; returns the number of events printed.
pub async fn kafka(
    conn: &KafkaConnection,
    t: &KafkaTail,
    stop: Stop,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<u64, TailError> {
    if t.commit && t.group.is_none() {
        return Err(TailError::Usage("--commit needs --group".into()));
    }
    let group = t
        .group
        .clone()
        .unwrap_or_else(|| format!("dashstream-tail-{}", uuid::Uuid::new_v4()));
    let reset = match t.from {
        From::Earliest => "earliest",
        From::Latest => "latest",
    };
    let consumer: StreamConsumer = conn
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", reset)
        .create()?;
    // A missing or mistyped topic is said at once (otherwise nothing ever arrives).
    let md = consumer.fetch_metadata(Some(&t.topic), Duration::from_secs(10))?;
    let exists = md
        .topics()
        .iter()
        .any(|x| x.name() == t.topic && x.error().is_none() && !x.partitions().is_empty());
    if !exists {
        return Err(TailError::Usage(format!(
            "topic {:?} does not exist (KAFKA_TOPIC / --kafka-topic)",
            t.topic
        )));
    }
    if t.group.is_some() {
        consumer.subscribe(&[&t.topic])?;
    } else {
        let mut tpl = TopicPartitionList::new();
        let start = match t.from {
            From::Earliest => Offset::Beginning,
            From::Latest => Offset::End,
        };
        for topic in md.topics() {
            for p in topic.partitions() {
                tpl.add_partition_offset(&t.topic, p.id(), start)?;
            }
        }
        consumer.assign(&tpl)?;
    }
    let mut n = 0;
    while !stop.done(n) {
        let m = match tokio::time::timeout(stop.wait(), consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m?,
        };
        match decode_record(m.payload().unwrap_or_default(), &t.limits) {
            Ok(events) => {
                for (i, e) in events.iter().enumerate() {
                    out(String::from_utf8_lossy(&event_json(m.partition(), m.offset(), i as u32 + 1, e)).into_owned());
                    n += 1;
                }
            }
            Err(e) => out(
                serde_json::json!({"partition": m.partition(), "offset": m.offset(), "invalid": e.reason.as_str(), "error": e.detail})
                    .to_string(),
            ),
        }
        if t.commit {
            consumer.commit_message(&m, CommitMode::Async)?;
        }
    }
    if t.commit {
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
    }
    Ok(n)
}

/// Tails the partition streams of `topic` in Redis (all partitions unless given).
pub async fn redis(
    settings: &crate::redis_config::RedisSettings,
    keys: &StreamKeys,
    partitions: Option<Vec<i32>>,
    from: From,
    stop: Stop,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<u64, TailError> {
    let block = stop.wait().min(Duration::from_secs(5));
    // The reply of an XREAD BLOCK comes after up to `block`: wait longer than that for it.
    let mut c = settings.connect_for_blocking(block).await?;
    // A cluster cannot block on streams of several slots at once: it reads them one at a time
    // without blocking, and pauses briefly when none had anything.
    let cluster = c.is_cluster();
    let parts: Vec<i32> = match partitions {
        Some(p) => p,
        None => {
            let mut v: Vec<i32> = redis::cmd("SMEMBERS")
                .arg(keys.partitions())
                .query_async(&mut c)
                .await?;
            v.sort();
            v
        }
    };
    if parts.is_empty() {
        return Err(TailError::Usage(format!(
            "no partition streams found: the set {} is empty or missing. Check \
             REDIS_KEY_PREFIX and KAFKA_TOPIC (the ingest's), or that the ingest has run",
            keys.partitions()
        )));
    }
    for p in &parts {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.stream(*p))
            .query_async(&mut c)
            .await?;
        if !exists {
            return Err(TailError::Usage(format!(
                "partition {p} has no stream ({} does not exist)",
                keys.stream(*p)
            )));
        }
    }
    let mut ids: Vec<String> = Vec::new();
    for p in &parts {
        let id = match from {
            From::Earliest => "0-0".to_string(),
            From::Latest => {
                let r: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(keys.stream(*p))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await?;
                r.ids.first().map_or("0-0".to_string(), |e| e.id.clone())
            }
        };
        ids.push(id);
    }
    let mut n = 0;
    let started = tokio::time::Instant::now();
    let mut last_event = started;
    while !stop.done(n) {
        let xread = |which: &[usize], block: Option<Duration>| {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(1000);
            if let Some(b) = block {
                cmd.arg("BLOCK").arg(b.as_millis() as u64);
            }
            cmd.arg("STREAMS");
            for i in which {
                cmd.arg(keys.stream(parts[*i]));
            }
            for i in which {
                cmd.arg(&ids[*i]);
            }
            cmd
        };
        let mut found = Vec::new();
        if cluster {
            for i in 0..parts.len() {
                let r: Option<redis::streams::StreamReadReply> =
                    xread(&[i], None).query_async(&mut c).await?;
                found.extend(r.map(|r| r.keys).unwrap_or_default());
            }
            if found.is_empty() {
                tokio::time::sleep(Duration::from_millis(100).min(block)).await;
            }
        } else {
            let all: Vec<usize> = (0..parts.len()).collect();
            let r: Option<redis::streams::StreamReadReply> =
                xread(&all, Some(block)).query_async(&mut c).await?;
            found.extend(r.map(|r| r.keys).unwrap_or_default());
        }
        let mut got = false;
        for k in found {
            let Some(i) = parts.iter().position(|p| keys.stream(*p) == k.key) else {
                continue;
            };
            for e in k.ids {
                ids[i] = e.id.clone();
                let Some((offset, index)) = parse_entry_id(&e.id) else {
                    continue;
                };
                let Some(redis::Value::BulkString(b)) = e.map.get("ev") else {
                    out(serde_json::json!({"partition": parts[i], "id": e.id, "invalid": "no_event_field"}).to_string());
                    continue;
                };
                let decoded = Event::decode(b.as_slice());
                if let Err(err) = &decoded {
                    // Said, like `tail kafka` says invalid records: a stream entry the gateway
                    // would skip.
                    out(serde_json::json!({"partition": parts[i], "id": e.id, "invalid": "decode", "error": err.to_string()}).to_string());
                }
                if let Ok(ev) = decoded {
                    out(String::from_utf8_lossy(&event_json(
                        parts[i],
                        offset,
                        index as u32 + 1,
                        &ev,
                    ))
                    .into_owned());
                    n += 1;
                    got = true;
                    if stop.done(n) {
                        return Ok(n);
                    }
                }
            }
        }
        if got {
            last_event = tokio::time::Instant::now();
        } else if stop.idle.is_some_and(|idle| last_event.elapsed() >= idle) {
            break;
        }
    }
    Ok(n)
}

/// Tails a gateway WebSocket (`url` like ws://host:port/ws, `query` extra parameters such as
/// `tenant=a`), resuming with the last cursor after a disconnect or a `reconnect` frame.
/// The URL to connect to: `url` (which may carry a query already), `from`, then `query`.
fn ws_url(url: &str, from: &str, query: &str) -> String {
    let mut full = url.to_string();
    full.push(if url.contains('?') { '&' } else { '?' });
    full.push_str("from=");
    full.push_str(from);
    if !query.is_empty() {
        full.push('&');
        full.push_str(query.trim_start_matches(['?', '&']));
    }
    full
}

/// Prints each event, and each `gap` frame, as one JSON line. `token` goes in an
/// `Authorization: Bearer` header; a refusal of it (401, 403, or a close 4001 / 4003 because
/// it expired or does not grant the filter) ends the tail with the gateway's message.
pub async fn ws(
    url: &str,
    from: &str,
    query: &str,
    token: Option<&str>,
    stop: Stop,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<u64, TailError> {
    let mut cursor = from.to_string();
    let mut n = 0;
    let mut failures = 0;
    while !stop.done(n) {
        let full = ws_url(url, &cursor, query);
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                full.as_str(),
            )
            .map_err(|e| TailError::Ws(format!("{full}: {e}")))?;
        if let Some(t) = token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| TailError::Ws("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let mut ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                failures = 0;
                ws
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp))
                if matches!(resp.status().as_u16(), 400 | 401 | 403) =>
            {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(TailError::Ws(format!("refused: {body}")));
            }
            Err(e) => {
                failures += 1;
                if failures > 30 {
                    return Err(TailError::Ws(e.to_string()));
                }
                tokio::time::sleep(Duration::from_millis(200 * failures.min(10))).await;
                continue;
            }
        };
        loop {
            let msg = match tokio::time::timeout(stop.wait(), ws.next()).await {
                Err(_) => return Ok(n),
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(m))) => m,
            };
            let text = match msg {
                tokio_tungstenite::tungstenite::Message::Text(t) => t,
                tokio_tungstenite::tungstenite::Message::Close(Some(f))
                    if matches!(u16::from(f.code), 4001 | 4003) =>
                {
                    return Err(TailError::Ws(format!(
                        "closed by the gateway ({}): {}",
                        u16::from(f.code),
                        f.reason
                    )));
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                continue;
            };
            if let Some(c) = v["cursor"].as_str() {
                cursor = c.to_string();
            }
            match v["type"].as_str() {
                Some("events") => {
                    for e in v["events"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        out(e.to_string());
                        n += 1;
                    }
                    if stop.done(n) {
                        let _ = ws.close(None).await;
                        return Ok(n);
                    }
                }
                Some("gap") | Some("error") => out(v.to_string()),
                Some("reconnect") => break,
                _ => {}
            }
        }
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::Close(None))
            .await;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn the_ws_url_keeps_a_query_it_already_has() {
        assert_eq!(ws_url("ws://h/ws", "latest", ""), "ws://h/ws?from=latest");
        assert_eq!(
            ws_url("ws://h/ws?tenant=a", "c1", "type=t"),
            "ws://h/ws?tenant=a&from=c1&type=t"
        );
        assert_eq!(
            ws_url("ws://h/ws", "earliest", "tenant=a"),
            "ws://h/ws?from=earliest&tenant=a"
        );
    }
}
