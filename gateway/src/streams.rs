//! Reading the partition streams. One Lua script reads any number of partitions atomically:
//! for each, the stream's epoch, its first entry, whether retention trimmed it, its last ID,
//! and the entries after a given ID. Reading the epoch in the same atomic step as the entries
//! means an entry is never attributed to the wrong epoch across a reset.

use crate::cursor::EntryId;
use crate::metrics::Metrics;
use bytes::Bytes;
use dashstream::keys::StreamKeys;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
local count = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  local stream, meta, after = KEYS[i], KEYS[i + 1], ARGV[(i + 1) / 2 + 1]
  local epoch = redis.call('HGET', meta, 'epoch')
  local first, trimmed, last = false, 0, '0-0'
  local entries = {}
  if redis.call('EXISTS', stream) == 1 then
    local info = redis.call('XINFO', 'STREAM', stream)
    local added, length = 0, 0
    for j = 1, #info, 2 do
      local k = info[j]
      if k == 'first-entry' and info[j + 1] then first = info[j + 1][1]
      elseif k == 'entries-added' then added = info[j + 1]
      elseif k == 'length' then length = info[j + 1]
      elseif k == 'last-generated-id' then last = info[j + 1] end
    end
    if added > length then trimmed = 1 end
    if count > 0 then
      entries = redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', count)
    end
  end
  out[#out + 1] = {epoch, first, trimmed, last, entries}
end
return out
"#,
    )
});

/// One entry of a stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: EntryId,
    pub event: Bytes,
    /// Ingest time, microseconds.
    pub ingest_us: i64,
}

/// What one read found in one partition.
#[derive(Debug, Clone, Default)]
pub struct PartRead {
    pub epoch: Option<String>,
    pub first: Option<EntryId>,
    /// Retention has removed entries (all of them below `first`).
    pub trimmed: bool,
    pub last: EntryId,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis command timed out")]
    Timeout,
    #[error("unexpected reply: {0}")]
    Reply(&'static str),
}

impl ReadError {
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::Timeout => "timeout",
            ReadError::Redis(e) if e.is_timeout() => "timeout",
            ReadError::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                "connection"
            }
            ReadError::Redis(e) if e.code().is_some() => "server",
            _ => "other",
        }
    }
}

/// Access to the streams of one topic.
#[derive(Clone)]
pub struct Streams {
    conn: ConnectionManager,
    /// A connection of its own for `XREAD BLOCK`: a blocked command holds its connection, and
    /// nothing else may queue behind it.
    blocking: ConnectionManager,
    keys: StreamKeys,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Streams {
    pub fn new(
        conn: ConnectionManager,
        blocking: ConnectionManager,
        keys: StreamKeys,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            conn,
            blocking,
            keys,
            timeout,
            metrics,
        }
    }

    async fn timed<T>(
        &self,
        command: &str,
        timeout: Duration,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ReadError> {
        let started = Instant::now();
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(ReadError::from),
            Err(_) => Err(ReadError::Timeout),
        };
        self.metrics
            .redis_seconds
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.metrics
                .redis_errors
                .with_label_values(&[e.kind()])
                .inc();
        }
        r
    }

    /// Partitions that have a stream.
    pub async fn partitions(&self) -> Result<Vec<i32>, ReadError> {
        let mut c = self.conn.clone();
        let cmd = redis::cmd("SMEMBERS").arg(self.keys.partitions()).clone();
        let v: Vec<i32> = self
            .timed("smembers", self.timeout, cmd.query_async(&mut c))
            .await?;
        Ok(v)
    }

    /// Reads up to `count` entries after each given position (0 reads only the metadata).
    pub async fn read(
        &self,
        from: &[(i32, EntryId)],
        count: usize,
    ) -> Result<Vec<PartRead>, ReadError> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = READ.prepare_invoke();
        inv.arg(count);
        for (p, after) in from {
            inv.key(self.keys.stream(*p))
                .key(self.keys.meta(*p))
                .arg(after.to_string());
        }
        let mut c = self.conn.clone();
        let v: Value = self
            .timed("read", self.timeout, inv.invoke_async(&mut c))
            .await?;
        parse_reads(v).ok_or(ReadError::Reply("read script"))
    }

    /// Blocks up to `block` until any stream has an entry after its position.
    pub async fn wait(&self, from: &[(i32, EntryId)], block: Duration) -> Result<(), ReadError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS");
        for (p, _) in from {
            cmd.arg(self.keys.stream(*p));
        }
        for (_, id) in from {
            cmd.arg(id.to_string());
        }
        let mut c = self.blocking.clone();
        let _: Value = self
            .timed("xread", self.timeout + block, cmd.query_async(&mut c))
            .await?;
        Ok(())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_reads(v: Value) -> Option<Vec<PartRead>> {
    let Value::Array(parts) = v else { return None };
    parts
        .into_iter()
        .map(|p| {
            let Value::Array(f) = p else { return None };
            if f.len() != 5 {
                return None;
            }
            let epoch = text(&f[0]);
            let first = text(&f[1]).and_then(|s| EntryId::parse(&s));
            let trimmed = matches!(f[2], Value::Int(1));
            let last = text(&f[3])
                .and_then(|s| EntryId::parse(&s))
                .unwrap_or(EntryId::ZERO);
            let mut entries = Vec::new();
            if let Value::Array(es) = &f[4] {
                for e in es {
                    let Value::Array(pair) = e else { return None };
                    let id = EntryId::parse(&text(pair.first()?)?)?;
                    let Value::Array(fields) = pair.get(1)? else {
                        return None;
                    };
                    let mut event = None;
                    let mut ingest_us = 0;
                    for kv in fields.chunks(2) {
                        match (text(&kv[0]).as_deref(), kv.get(1)) {
                            (Some("ev"), Some(Value::BulkString(b))) => {
                                event = Some(Bytes::from(b.clone()))
                            }
                            (Some("ts"), Some(v)) => {
                                ingest_us = text(v).and_then(|s| s.parse().ok()).unwrap_or(0)
                            }
                            _ => {}
                        }
                    }
                    entries.push(Entry {
                        id,
                        event: event?,
                        ingest_us,
                    });
                }
            }
            Some(PartRead {
                epoch,
                first,
                trimmed,
                last,
                entries,
            })
        })
        .collect()
}
