//! Writing one partition's stream, atomically and idempotently, with fencing.
//!
//! Two Lua scripts do all the work, so every check and write happens in one atomic step:
//! - **claim** (when the partition is assigned, and again after a fence or a reset): makes this
//!   process the partition's writer by storing a fresh owner token in the stream's meta hash.
//!   Any write still in flight from a previous owner carries the old token and is refused
//!   (`FENCED`). It creates a new epoch when the meta hash is missing (new stream, or Redis
//!   flushed), or when the caller asks for one ([`NewEpoch`]): the old stream is then
//!   `UNLINK`ed (freed in the background, so Redis is not blocked by a large stream).
//! - **write**: checks once per batch that the caller still owns the partition and that the
//!   stream's `next_offset` is the one the caller expects, then `XADD`s every entry with its
//!   explicit ID (`ev` only; the batch's last entry also carries `ts`), moves `next_offset`
//!   past the batch (dead-lettered records included), notes the time in `progress_us` (so a
//!   next owner knows how long the partition has been still) and trims once with `MAXLEN ~`. When
//!   `next_offset` is not the expected one, nothing is written and the reply says why:
//!   [`WriteOutcome::Done`] (this very batch was written already: a retry after a timeout),
//!   [`WriteOutcome::Rollback`] (Redis went backwards: it lost acknowledged writes) or
//!   [`WriteOutcome::Ahead`] (the stream already holds more; the caller continues after it).
//!
//! The write command is built directly into one `redis::Cmd` buffer (`EVALSHA`, falling back
//! to loading the script on `NOSCRIPT`), with no intermediate argument vectors.

use dashstream::keys::StreamKeys;
use dashstream::redis_config::RedisConn;
use redis::{Cmd, Script};
use std::sync::LazyLock;
use std::time::Duration;

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local reason = 'existing'
if ARGV[5] ~= '' then
  redis.call('UNLINK', KEYS[1], KEYS[2])
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
  if ARGV[5] ~= '' then reason = ARGV[5] end
  epoch = ARGV[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'epoch_started_ms', ARGV[4], 'next_offset', next_offset)
end
redis.call('HSET', KEYS[2], 'owner', ARGV[1])
local m = redis.call('HMGET', KEYS[2], 'next_offset', 'progress_us')
return {epoch, tonumber(m[1]), reason, tonumber(m[2] or '-1')}
"#,
    )
});

/// KEYS: stream, meta. ARGV: owner, expected next_offset, maxlen, ingest time (us), then
/// (id, event) pairs in ID order, and last the next_offset after the batch.
const WRITE_SRC: &str = r#"
local m = redis.call('HMGET', KEYS[2], 'owner', 'next_offset')
if not m[1] then return {'RESET', 0} end
if m[1] ~= ARGV[1] then return {'FENCED', 0} end
local n = #ARGV
local after = tonumber(ARGV[n])
local nxt = tonumber(m[2])
local expected = tonumber(ARGV[2])
if nxt ~= expected then
  if nxt == after then return {'DONE', nxt} end
  if nxt < expected then return {'ROLLBACK', nxt} end
  return {'AHEAD', nxt}
end
if n >= 7 then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if top then
    local last = tonumber(string.match(top[1], '^(%d+)-'))
    if last >= tonumber(string.match(ARGV[5], '^(%d+)-')) then return {'AHEAD', last + 1} end
  end
  for i = 5, n - 3, 2 do
    redis.call('XADD', KEYS[1], ARGV[i], 'ev', ARGV[i + 1])
  end
  redis.call('XADD', KEYS[1], ARGV[n - 2], 'ev', ARGV[n - 1], 'ts', ARGV[4])
end
redis.call('HSET', KEYS[2], 'next_offset', after, 'progress_us', ARGV[4])
if n >= 7 then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3]) end
return {'OK', after}
"#;

static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_SRC));

/// The write on a Redis Cluster: the same, and a write that added entries then publishes the
/// next offset on the shard channel named like the stream (same slot), which wakes the
/// gateways' tails (one subscription connection per node; a single Redis wakes them with
/// `XREAD BLOCK` instead, which a cluster cannot run across slots).
static WRITE_NOTIFY_SRC: LazyLock<String> = LazyLock::new(|| {
    let src = WRITE_SRC.replace(
        "return {'OK', after}",
        "if n >= 7 then redis.call('SPUBLISH', KEYS[1], after) end\nreturn {'OK', after}",
    );
    assert_ne!(src, WRITE_SRC, "the write script's last line moved");
    src
});

static WRITE_NOTIFY: LazyLock<Script> = LazyLock::new(|| Script::new(&WRITE_NOTIFY_SRC));

/// Why a claim found the stream the way it did (the script's reason, parsed in one place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimReason {
    /// The epoch goes on.
    Existing,
    /// No stream and no meta: a first claim (or everything was flushed).
    New,
    /// The meta hash was gone but the stream remained: the new epoch continues after it.
    MetaLost,
    /// A new epoch the caller asked for.
    Forced(NewEpoch),
}

/// Why the caller starts a new epoch (deleting the old stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewEpoch {
    /// The topic was deleted and re-created: offsets started again.
    TopicRecreated,
    /// Redis lost acknowledged writes and Kafka no longer holds them.
    RedisRollback,
    /// Kafka's retention deleted records before they were ingested (the consumer's position
    /// was reset).
    OffsetReset,
}

impl NewEpoch {
    pub const ALL: [NewEpoch; 3] = [
        NewEpoch::TopicRecreated,
        NewEpoch::RedisRollback,
        NewEpoch::OffsetReset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NewEpoch::TopicRecreated => "topic_recreated",
            NewEpoch::RedisRollback => "redis_rollback",
            NewEpoch::OffsetReset => "offset_reset",
        }
    }
}

impl ClaimReason {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "existing" => Self::Existing,
            "new" => Self::New,
            "meta_lost" => Self::MetaLost,
            other => Self::Forced(NewEpoch::ALL.into_iter().find(|r| r.as_str() == other)?),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Existing => "existing",
            Self::New => "new",
            Self::MetaLost => "meta_lost",
            Self::Forced(r) => r.as_str(),
        }
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub epoch: String,
    /// The next Kafka offset the stream expects; -1 when nothing was written in this epoch.
    pub next_offset: i64,
    pub reason: ClaimReason,
    /// When a write last moved the stream on (ingest wall clock, µs; -1: never in this
    /// epoch). Kept in the meta hash so that a new owner continues the partition's staleness
    /// instead of starting it at 0 (operability review F2).
    pub progress_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; `next_offset` is now the batch's end.
    Ok { next_offset: i64 },
    /// This batch was written before (a retry whose first attempt succeeded late).
    Done { next_offset: i64 },
    /// Redis holds less than the caller acknowledged: it went backwards (restored snapshot,
    /// failover to a lagging replica). `next_offset` is what it holds.
    Rollback { next_offset: i64 },
    /// The stream already holds entries up to `next_offset` (exclusive) beyond the expected
    /// position; the caller continues from there.
    Ahead { next_offset: i64 },
    /// Another process claimed the partition.
    Fenced,
    /// The stream's meta hash vanished (Redis flushed); claim a new epoch.
    Reset,
}

impl WriteOutcome {
    fn parse(status: &str, next_offset: i64) -> Option<Self> {
        Some(match status {
            "OK" => Self::Ok { next_offset },
            "DONE" => Self::Done { next_offset },
            "ROLLBACK" => Self::Rollback { next_offset },
            "AHEAD" => Self::Ahead { next_offset },
            "FENCED" => Self::Fenced,
            "RESET" => Self::Reset,
            _ => return None,
        })
    }
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

/// One write, built in place: the command's header is written when the batch is started,
/// entries are appended straight into the command's buffer as records are decoded, and
/// [`finish`](Self::finish) adds the batch's end. The finished command is sent as is, again
/// on a retry.
pub struct WriteBatch {
    cmd: Cmd,
    entries: usize,
    bytes: usize,
    finished: bool,
    id: String,
}

impl WriteBatch {
    /// Appends the entry `<offset>-<index + 1>` holding `event`.
    pub fn push(&mut self, offset: i64, index: usize, event: &[u8]) {
        use std::fmt::Write;
        debug_assert!(!self.finished);
        self.id.clear();
        let _ = write!(self.id, "{offset}-{}", index + 1);
        self.cmd.arg(self.id.as_bytes()).arg(event);
        self.entries += 1;
        self.bytes += event.len();
    }

    /// Closes the batch: `after` is one past its last record (dead-lettered ones included).
    pub fn finish(&mut self, after: i64) {
        debug_assert!(!self.finished);
        self.cmd.arg(after);
        self.finished = true;
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes of event data appended.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Writer of one partition's stream.
pub struct PartitionStore {
    conn: RedisConn,
    /// Cluster: the write script that also publishes ([`WRITE_NOTIFY_SRC`]).
    notify: bool,
    stream: String,
    meta: String,
    partitions: String,
    partition: i32,
    maxlen: u64,
    timeout: Duration,
}

impl PartitionStore {
    pub fn new(
        conn: RedisConn,
        keys: &StreamKeys,
        partition: i32,
        maxlen: u64,
        timeout: Duration,
    ) -> Self {
        Self {
            notify: conn.is_cluster(),
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

    /// Takes ownership of the partition's stream with `owner`; `new_epoch` starts a new epoch
    /// and unlinks the old stream.
    pub async fn claim(
        &self,
        owner: &str,
        new_epoch: Option<NewEpoch>,
    ) -> Result<Claim, StoreError> {
        let epoch = format!("{:016x}", rand::random::<u64>());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut conn = self.conn.clone();
        // The partition set first (its own slot on a cluster): a listed partition without a
        // stream yet reads as empty.
        let add = redis::cmd("SADD")
            .arg(&self.partitions)
            .arg(self.partition)
            .clone();
        self.bounded(add.query_async::<i64>(&mut conn)).await?;
        let mut inv = CLAIM.prepare_invoke();
        inv.key(&self.stream)
            .key(&self.meta)
            .arg(owner)
            .arg(&epoch)
            .arg(self.partition)
            .arg(now_ms)
            .arg(new_epoch.map_or("", NewEpoch::as_str));
        let (epoch, next_offset, reason, progress_us): (String, i64, String, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        let reason = ClaimReason::parse(&reason).ok_or(StoreError::Reply(reason))?;
        Ok(Claim {
            epoch,
            next_offset,
            reason,
            progress_us,
        })
    }

    /// Starts a write for `owner` that applies only while the stream's `next_offset` is
    /// `expected`; fill it with [`WriteBatch::push`], close it with [`WriteBatch::finish`].
    pub fn batch(&self, owner: &str, expected: i64, ingest_ts_us: i64) -> WriteBatch {
        let mut cmd = Cmd::new();
        let script = if self.notify { &*WRITE_NOTIFY } else { &*WRITE };
        cmd.arg("EVALSHA")
            .arg(script.get_hash())
            .arg(2)
            .arg(&self.stream)
            .arg(&self.meta)
            .arg(owner)
            .arg(expected)
            .arg(self.maxlen)
            .arg(ingest_ts_us);
        WriteBatch {
            cmd,
            entries: 0,
            bytes: 0,
            finished: false,
            id: String::with_capacity(24),
        }
    }

    /// Runs a finished batch.
    pub async fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome, StoreError> {
        debug_assert!(batch.finished);
        let mut conn = self.conn.clone();
        let first = tokio::time::timeout(
            self.timeout,
            batch.cmd.query_async::<(String, i64)>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))?;
        let (status, next_offset) = match first {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut load = redis::cmd("SCRIPT");
                // On a cluster, SCRIPT LOAD goes to every master.
                let src = if self.notify {
                    WRITE_NOTIFY_SRC.as_str()
                } else {
                    WRITE_SRC
                };
                load.arg("LOAD").arg(src);
                self.bounded(load.query_async::<String>(&mut conn)).await?;
                self.bounded(batch.cmd.query_async::<(String, i64)>(&mut conn))
                    .await?
            }
            other => other?,
        };
        WriteOutcome::parse(&status, next_offset).ok_or(StoreError::Reply(status))
    }
}
