//! Writing one partition's stream, atomically and idempotently, with fencing.
//!
//! Two Lua scripts do all the work, so every check and write happens in one atomic step:
//! - **claim** (on assignment): makes this process the partition's writer by storing a fresh
//!   owner token in the stream's meta hash. Any write still in flight from a previous owner
//!   carries the old token and is refused (`FENCED`). It creates a new epoch when the meta hash
//!   is missing (new stream, or Redis flushed), or when asked to because the topic was
//!   re-created; in that case the old stream is deleted.
//! - **write**: refuses unless the caller still owns the partition; appends each entry whose
//!   Kafka offset is at or above `next_offset` (so a re-delivered record is skipped, never
//!   doubled); then advances `next_offset` past the batch, dead-lettered records included.
//!   `RESET` means the meta hash vanished (Redis flushed): the caller claims a new epoch.

use bytes::Bytes;
use dashstream::keys::StreamKeys;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local reason = 'existing'
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
  epoch = false
end
if not epoch then
  local next_offset = -1
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        next_offset = tonumber(string.match(info[i + 1], '^(%d+)-')) + 1
      end
    end
    reason = 'meta_lost'
  else
    reason = 'new'
  end
  if ARGV[5] == '1' then reason = 'topic_recreated' end
  epoch = ARGV[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'epoch_started_ms', ARGV[4], 'next_offset', next_offset)
end
redis.call('HSET', KEYS[2], 'owner', ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return {epoch, tonumber(redis.call('HGET', KEYS[2], 'next_offset')), reason}
"#,
    )
});

static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local owner = redis.call('HGET', KEYS[2], 'owner')
if not owner then return {'RESET', 0, 0} end
if owner ~= ARGV[1] then return {'FENCED', 0, 0} end
local nxt = tonumber(redis.call('HGET', KEYS[2], 'next_offset'))
local written = 0
for i = 5, #ARGV, 3 do
  if tonumber(ARGV[i]) >= nxt then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i + 1], 'ev', ARGV[i + 2], 'ts', ARGV[4])
    written = written + 1
  end
end
local after = tonumber(ARGV[3])
if after > nxt then
  redis.call('HSET', KEYS[2], 'next_offset', ARGV[3])
  nxt = after
end
return {'OK', written, nxt}
"#,
    )
});

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub epoch: String,
    /// The next Kafka offset the stream expects; -1 when nothing was written in this epoch.
    pub next_offset: i64,
    /// `existing`, `new`, `meta_lost` or `topic_recreated`.
    pub reason: String,
}

/// One stream entry to append.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: i64,
    pub id: String,
    pub event: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Ok {
        written: u64,
        next_offset: i64,
    },
    /// Another process claimed the partition.
    Fenced,
    /// The stream's meta hash vanished (Redis flushed); claim a new epoch.
    Reset,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis command timed out after {0:?}")]
    Timeout(Duration),
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

impl StoreError {
    /// The metric `kind` of this error (a fixed set: connection, timeout, server, other).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Redis(e) if e.is_timeout() => "timeout",
            StoreError::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                "connection"
            }
            StoreError::Redis(e) if e.code().is_some() => "server",
            _ => "other",
        }
    }
}

/// Writer of one partition's stream.
pub struct PartitionStore {
    conn: ConnectionManager,
    stream: String,
    meta: String,
    partitions: String,
    partition: i32,
    maxlen: u64,
    timeout: Duration,
}

impl PartitionStore {
    pub fn new(
        conn: ConnectionManager,
        keys: &StreamKeys,
        partition: i32,
        maxlen: u64,
        timeout: Duration,
    ) -> Self {
        Self {
            conn,
            stream: keys.stream(partition),
            meta: keys.meta(partition),
            partitions: keys.partitions(),
            partition,
            maxlen,
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Takes ownership of the partition's stream with `owner`; `reset` starts a new epoch and
    /// deletes the old stream (used when the topic was re-created).
    pub async fn claim(&self, owner: &str, reset: bool) -> Result<Claim, StoreError> {
        let new_epoch = format!("{:016x}", rand::random::<u64>());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut conn = self.conn.clone();
        let mut inv = CLAIM.prepare_invoke();
        inv.key(&self.stream)
            .key(&self.meta)
            .key(&self.partitions)
            .arg(owner)
            .arg(&new_epoch)
            .arg(self.partition)
            .arg(now_ms as u64)
            .arg(if reset { "1" } else { "0" });
        let (epoch, next_offset, reason): (String, i64, String) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(Claim {
            epoch,
            next_offset,
            reason,
        })
    }

    /// Appends the entries whose offsets are not yet in the stream and advances `next_offset`
    /// to `next_after` (one past the last record of the batch).
    pub async fn write(
        &self,
        owner: &str,
        entries: &[Entry],
        next_after: i64,
        ingest_ts_us: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = WRITE.prepare_invoke();
        inv.key(&self.stream)
            .key(&self.meta)
            .arg(owner)
            .arg(self.maxlen)
            .arg(next_after)
            .arg(ingest_ts_us);
        for e in entries {
            inv.arg(e.offset).arg(&e.id).arg(e.event.as_ref());
        }
        let (status, written, next_offset): (String, u64, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "OK" => Ok(WriteOutcome::Ok {
                written,
                next_offset,
            }),
            "FENCED" => Ok(WriteOutcome::Fenced),
            "RESET" => Ok(WriteOutcome::Reset),
            other => Err(StoreError::Reply(other.to_string())),
        }
    }
}
