//! Reading the partition streams. Every read returns, for each partition asked about, the
//! stream's epoch, its first entry, whether retention trimmed it, its last ID, and the entries
//! after a given ID, all from one atomic step in Redis: an entry is never attributed to the
//! wrong epoch across a reset, and `first`/`trimmed` describe the same stream as the entries.
//!
//! Who reads decides the connection (review M2): the tail loop and the progress watcher each
//! have a connection of their own, `XREAD BLOCK` has one too, and history pages and cursor
//! checks share a small pool, with at most `GATEWAY_HISTORY_CONCURRENCY` history pages in
//! flight per replica. So catch-ups queue behind each other, never ahead of live events.
//!
//! How (review §2.4): history pages and metadata reads are a `MULTI`/`EXEC` of plain commands
//! (`HGET`, `XINFO STREAM`, `XRANGE`), whose replies Redis writes straight out; only the tail's
//! reads use a Lua script, because they stop at a byte budget. Replies are consumed by value:
//! an event's bytes are the reply's own buffer.
//!
//! A malformed entry (no `ev`, an `ev` that is not a string or is empty, an ID that does not fit
//! `<i64>-<u32>`) never fails a read (review M4): it is handed on at its position with an event
//! that cannot decode ([`Entry::is_malformed`]), so readers skip it, count it in
//! `stream_decode_errors_total` and move past it exactly like an undecodable `ev`.

mod reply;
pub mod wake;

use crate::cursor::EntryId;
use crate::metrics::Metrics;
use bytes::Bytes;
use dashstream::keys::StreamKeys;
use dashstream::redis_config::RedisConn;
use redis::{Script, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub use reply::MALFORMED_EVENT;
pub use wake::ShardWaker;

/// The tail's read: for each partition, `{epoch, info, entries}` where `info` holds the
/// `XINFO STREAM` fields the reader needs (`false` when there is no stream) and `entries` stops
/// at `count` entries or once the partition's byte budget is reached, whichever comes first
/// (always at least one entry when there is one). Bytes are those of the entries' field values.
///
/// It only reads: it runs with `EVALSHA_RO` (falling back to `EVAL_RO` after a Redis restart
/// emptied the script cache), so a read-only ACL user (`-@write`, `%R~<prefix>:*`) can serve
/// the gateway; docs/SECURITY.md lists that user's rules.
const TAIL_READ_SRC: &str = r#"#!lua flags=no-writes
local count, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local MAX = '18446744073709551615-18446744073709551615'
local out = {}
for i = 1, #KEYS, 2 do
  local stream, meta, after = KEYS[i], KEYS[i + 1], ARGV[(i + 1) / 2 + 2]
  local epoch = redis.call('HGET', meta, 'epoch')
  local info, entries = false, {}
  if redis.call('EXISTS', stream) == 1 then
    local x = redis.call('XINFO', 'STREAM', stream)
    info = {}
    for j = 1, #x, 2 do
      local k, v = x[j], x[j + 1]
      if k == 'first-entry' then
        info[#info + 1] = k
        info[#info + 1] = v and {v[1]} or false
      elseif k == 'length' or k == 'entries-added' or k == 'last-generated-id' then
        info[#info + 1] = k
        info[#info + 1] = v
      end
    end
    if after ~= MAX then
      local from, bytes = '(' .. after, 0
      while #entries < count and bytes < budget do
        local want = math.min(count - #entries, 64)
        local chunk = redis.call('XRANGE', stream, from, '+', 'COUNT', want)
        for _, e in ipairs(chunk) do
          entries[#entries + 1] = e
          local f = e[2]
          for j = 2, #f, 2 do bytes = bytes + #f[j] end
          if bytes >= budget then break end
        end
        if #chunk < want then break end
        from = '(' .. chunk[#chunk][1]
      end
    end
  end
  out[#out + 1] = {epoch, info, entries}
end
return out
"#;

static TAIL_READ_SHA: LazyLock<String> =
    LazyLock::new(|| Script::new(TAIL_READ_SRC).get_hash().to_string());

/// Connections in a pool at most (history pages and cursor checks); the concurrency limit is
/// the semaphore, a connection carries several requests at once.
pub const MAX_POOL: usize = 4;

/// Size of the history pool for a concurrency limit.
pub fn pool_size(history_concurrency: usize) -> usize {
    history_concurrency.clamp(1, MAX_POOL)
}

/// One entry of a stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: EntryId,
    /// The stored `Event` bytes ([`MALFORMED_EVENT`] for a malformed entry).
    pub event: Bytes,
    /// Ingest time, microseconds (0 when the entry carries none: the ingest stamps only the
    /// last entry of each write).
    pub ingest_us: i64,
}

impl Entry {
    /// The entry had no usable event (or an ID out of range): it stands only for its position.
    /// Its `event` never decodes, so a reader that decodes skips it like any bad `ev`.
    pub fn is_malformed(&self) -> bool {
        self.event.as_ref() == MALFORMED_EVENT
    }
}

/// What one read found in one partition.
#[derive(Debug, Clone, Default)]
pub struct PartRead {
    pub epoch: Option<String>,
    pub first: Option<EntryId>,
    /// Retention has removed entries (all of them below `first`): the stream has ever added
    /// more entries than it holds.
    pub trimmed: bool,
    /// The stream's last generated ID.
    pub last: EntryId,
    /// Entries the stream has ever added (`entries-added`, Redis 7); `None` without a stream.
    pub added: Option<i64>,
    pub entries: Vec<Entry>,
}

/// What a stream no longer holds after a position: offsets `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub from: i64,
    pub to: i64,
}

/// Whether `id` is at or past position `pos` (a position `(o, u32::MAX)` stands for all of
/// offset `o`, so any ID of offset `o` reaches it).
pub fn reaches(id: EntryId, pos: EntryId) -> bool {
    id >= pos || (pos.n == u32::MAX && id.offset >= pos.offset)
}

/// Whether position `pos` lies beyond a stream whose last generated ID is `last`: a position
/// no continuous history of that stream can have issued.
pub fn beyond(pos: EntryId, last: EntryId) -> bool {
    !reaches(last, pos)
}

impl PartRead {
    /// What retention removed after position `last` of this epoch: whole offsets, from the one
    /// after the position to the one before the first entry held
    /// ([`crate::session::trimmed_after`]). Not exact (docs/GATEWAY.md, Known limits): an
    /// offset there that never had an entry (a dead-lettered record) is named too, the
    /// trimmed head of the first record held and the rest of a record the position stopped
    /// inside are not. Redis cannot tell more: `max-deleted-entry-id` moves on `XDEL`, not
    /// when trimming (redis/redis#13473), and a gap names whole offsets.
    pub fn lost_after(&self, last: EntryId) -> Option<Lost> {
        if !(self.trimmed && crate::session::trimmed_after(last, self.first, self.last)) {
            return None;
        }
        let next_kept = self.first.map_or(self.last.offset + 1, |f| f.offset);
        Some(Lost {
            from: crate::session::next_offset(last),
            to: next_kept - 1,
        })
    }

    /// Whether position `last`, of this read's epoch, cannot come from this stream's history:
    /// the stream ends before it (rolled back: a failover, an AOF restart, the key deleted and
    /// written again), or it has never removed an entry (`entries-added` equals its length)
    /// yet starts after the position (its key was lost and the stream started again after
    /// it). Either way what the position was in is gone.
    pub fn lost_position(&self, last: EntryId) -> Option<&'static str> {
        if last == EntryId::ZERO {
            return None;
        }
        if beyond(last, self.last) {
            // No last ID at all: there is no stream (its key was deleted or evicted).
            return Some(if self.last == EntryId::ZERO {
                "stream_lost"
            } else {
                "rolled_back"
            });
        }
        // Only with `entries-added` (Redis 7): a stream that removed nothing holds every
        // entry it ever had, so a position before its first entry is not from it.
        let starts_after = self.first.is_some_and(|f| !reaches(last, f));
        (self.added.is_some() && !self.trimmed && starts_after).then_some("stream_lost")
    }
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

/// The Redis connections of one replica, one per kind of reader.
pub struct Connections {
    /// The tail loop's reads and partition discovery.
    pub tail: RedisConn,
    /// The progress watcher, so that it still answers while a tail read is stuck.
    pub watch: RedisConn,
    /// `XREAD BLOCK` only: a blocked command holds its connection.
    pub blocking: RedisConn,
    /// On a Redis Cluster, the tail's wake-ups instead of `XREAD BLOCK` ([`wake`]).
    pub waker: Option<Arc<ShardWaker>>,
    /// History pages and cursor checks, used in turn (at least one).
    pub pool: Vec<RedisConn>,
}

/// Settings of [`Streams`].
#[derive(Debug, Clone)]
pub struct StreamsOptions {
    /// Deadline of one command (the blocking `XREAD` gets its block time more).
    pub timeout: Duration,
    /// History pages in flight at once, per replica (`GATEWAY_HISTORY_CONCURRENCY`).
    pub history_concurrency: usize,
    /// Bytes one tail read may return, shared evenly by the partitions it reads
    /// (`GATEWAY_TAIL_READ_BYTES`).
    pub tail_read_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Tail,
    Watch,
    History,
}

/// Access to the streams of one topic. [`Streams::new`] gives the handle for sessions and
/// cursor checks; [`Streams::tail`] and [`Streams::watcher`] the tail loop's and the progress
/// watcher's.
#[derive(Clone)]
pub struct Streams {
    shared: Arc<Shared>,
    role: Role,
}

struct Shared {
    conns: Connections,
    next: AtomicUsize,
    history: Semaphore,
    keys: Keys,
    opts: StreamsOptions,
    metrics: Arc<Metrics>,
}

impl Streams {
    /// One connection for everything but `XREAD BLOCK` (tests and tools); the service uses
    /// [`Streams::with_connections`].
    pub fn new(
        conn: RedisConn,
        blocking: RedisConn,
        keys: StreamKeys,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_connections(
            Connections {
                tail: conn.clone(),
                watch: conn.clone(),
                blocking,
                waker: None,
                pool: vec![conn],
            },
            keys,
            StreamsOptions {
                timeout,
                history_concurrency: 8,
                tail_read_bytes: 1 << 20,
            },
            metrics,
        )
    }

    pub fn with_connections(
        conns: Connections,
        keys: StreamKeys,
        opts: StreamsOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        assert!(
            !conns.pool.is_empty(),
            "the history pool needs a connection"
        );
        Self {
            shared: Arc::new(Shared {
                conns,
                next: AtomicUsize::new(0),
                history: Semaphore::new(opts.history_concurrency.max(1)),
                keys: Keys::new(keys),
                opts,
                metrics,
            }),
            role: Role::History,
        }
    }

    /// The tail loop's handle: its own connection, reads bounded in bytes as well as entries.
    pub fn tail(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            role: Role::Tail,
        }
    }

    /// The progress watcher's handle: its own connection.
    pub fn watcher(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            role: Role::Watch,
        }
    }

    /// With a cluster's wake-ups (tests and tools; the service passes them in [`Connections`]).
    pub fn with_waker(self, waker: Arc<ShardWaker>) -> Self {
        let mut shared = Arc::into_inner(self.shared).expect("a waker is set before sharing");
        shared.conns.waker = Some(waker);
        Self {
            shared: Arc::new(shared),
            role: self.role,
        }
    }

    fn cluster(&self) -> bool {
        self.shared.conns.tail.is_cluster()
    }

    fn conn(&self) -> RedisConn {
        let c = &self.shared.conns;
        match self.role {
            Role::Tail => c.tail.clone(),
            Role::Watch => c.watch.clone(),
            Role::History => {
                let i = self.shared.next.fetch_add(1, Ordering::Relaxed);
                c.pool[i % c.pool.len()].clone()
            }
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
        self.shared
            .metrics
            .redis_seconds
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        match &r {
            // Read again by script at once ([`Self::tx_read`]): not a failure.
            Err(ReadError::Redis(e)) if redirected(e) => {}
            Err(e) => self
                .shared
                .metrics
                .redis_errors
                .with_label_values(&[e.kind()])
                .inc(),
            Ok(_) => {}
        }
        r
    }

    /// Partitions that have a stream.
    pub async fn partitions(&self) -> Result<Vec<i32>, ReadError> {
        let mut c = self.conn();
        let cmd = redis::cmd("SMEMBERS")
            .arg(&self.shared.keys.partitions)
            .clone();
        let v: Vec<i32> = self
            .timed(
                "smembers",
                self.shared.opts.timeout,
                cmd.query_async(&mut c),
            )
            .await?;
        Ok(v)
    }

    /// Reads up to `count` entries after each given position (0 reads only the metadata).
    /// The tail's handle stops earlier at its byte budget (at least one entry per partition);
    /// a history page always holds `count` entries unless the stream has fewer.
    pub async fn read(
        &self,
        from: &[(i32, EntryId)],
        count: usize,
    ) -> Result<Vec<PartRead>, ReadError> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        // The tail's entry reads are the script's; everything else is a transaction.
        let (reads, dropped) = match (self.role, count) {
            (Role::Tail, n) if n > 0 => {
                parsed(Answer::Script(self.tail_read(from, n).await?), from, n)?
            }
            (Role::History, n) if n > 0 => {
                let waited = Instant::now();
                let _permit = self
                    .shared
                    .history
                    .acquire()
                    .await
                    .map_err(|_| ReadError::Reply("history semaphore closed"))?;
                self.shared
                    .metrics
                    .history_wait
                    .observe(waited.elapsed().as_secs_f64());
                self.tx_read("history", from, n).await?
            }
            (Role::Tail, _) => self.tx_read("read", from, 0).await?,
            (Role::Watch, n) => self.tx_read("watch", from, n).await?,
            (Role::History, _) => self.tx_read("check", from, 0).await?,
        };
        if dropped > 0 {
            // Entries without a usable ID cannot be handed on at a position: count them here.
            self.shared.metrics.decode_errors.inc_by(dropped);
            tracing::warn!(dropped, "stream entries without a usable ID skipped");
        }
        Ok(reads)
    }

    async fn tail_read(&self, from: &[(i32, EntryId)], count: usize) -> Result<Value, ReadError> {
        let budget = (self.shared.opts.tail_read_bytes / from.len()).max(1);
        if self.cluster() && from.len() > 1 {
            // A script's keys share a slot on a cluster: one script per partition.
            return per_partition(from, "read script: not an array", |one| {
                self.tail_script("read", one, count, budget)
            })
            .await;
        }
        self.tail_script("read", from, count, budget).await
    }

    async fn tail_script(
        &self,
        label: &'static str,
        from: &[(i32, EntryId)],
        count: usize,
        budget: usize,
    ) -> Result<Value, ReadError> {
        // EVALSHA_RO sha numkeys keys... args...; the same with the source for EVAL_RO.
        let call = |head: &str, body: &str| {
            let mut cmd = redis::cmd(head);
            cmd.arg(body).arg(from.len() * 2);
            for (p, _) in from {
                let k = self.shared.keys.part(*p);
                cmd.arg(&k.stream).arg(&k.meta);
            }
            cmd.arg(count).arg(budget);
            for (_, after) in from {
                cmd.arg(reply::redis_id(*after));
            }
            cmd
        };
        let mut c = self.conn();
        let read = async {
            match call("EVALSHA_RO", &TAIL_READ_SHA).query_async(&mut c).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    call("EVAL_RO", TAIL_READ_SRC).query_async(&mut c).await
                }
                other => other,
            }
        };
        self.timed(label, self.shared.opts.timeout, read).await
    }

    /// `MULTI`, then per partition `HGET epoch`, `XINFO STREAM` and (with a count) `XRANGE`,
    /// then `EXEC`. `XINFO` fails on a missing stream: that answer is kept, not raised. On a
    /// cluster, one transaction per partition; one whose slot has moved is read by script.
    async fn tx_read(
        &self,
        label: &'static str,
        from: &[(i32, EntryId)],
        count: usize,
    ) -> Result<(Vec<PartRead>, u64), ReadError> {
        if !self.cluster() {
            return parsed(
                Answer::Tx(self.tx_one(label, from, count).await?),
                from,
                count,
            );
        }
        // A transaction's keys share a slot on a cluster: one per partition, all at once.
        let parts = futures::future::try_join_all(from.iter().map(|one| async move {
            let one = std::slice::from_ref(one);
            match self.tx_one(label, one, count).await {
                // The slot moved: the client follows MOVED and ASK for a command, not for
                // the commands of a MULTI. The read script reads the same and is one command,
                // so it is redirected (and the client learns the slot's new node).
                Err(ReadError::Redis(e)) if redirected(&e) => parsed(
                    Answer::Script(self.tail_script(label, one, count, usize::MAX).await?),
                    one,
                    count,
                ),
                r => parsed(Answer::Tx(r?), one, count),
            }
        }))
        .await?;
        let mut reads = Vec::with_capacity(from.len());
        let mut dropped = 0;
        for (r, d) in parts {
            reads.extend(r);
            dropped += d;
        }
        Ok((reads, dropped))
    }

    async fn tx_one(
        &self,
        label: &'static str,
        from: &[(i32, EntryId)],
        count: usize,
    ) -> Result<Value, ReadError> {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        for (p, after) in from {
            let k = self.shared.keys.part(*p);
            pipe.cmd("HGET").arg(&k.meta).arg("epoch");
            pipe.cmd("XINFO").arg("STREAM").arg(&k.stream);
            if reply::reads_entries(*after, count) {
                pipe.cmd("XRANGE")
                    .arg(&k.stream)
                    .arg(format!("({}", reply::redis_id(*after)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count);
            }
        }
        let mut c = self.conn();
        self.timed(label, self.shared.opts.timeout, pipe.query_async(&mut c))
            .await
    }

    /// Blocks up to `block` until any stream has an entry after its position (on a cluster,
    /// until a write to any of them is announced: [`wake`]).
    pub async fn wait(&self, from: &[(i32, EntryId)], block: Duration) -> Result<(), ReadError> {
        if let Some(w) = &self.shared.conns.waker {
            let parts: Vec<i32> = from.iter().map(|(p, _)| *p).collect();
            let keys = &self.shared.keys;
            let started = Instant::now();
            let r = w
                .wait(&parts, |p| keys.part(p).stream.clone(), block)
                .await
                .map_err(ReadError::from);
            self.shared
                .metrics
                .redis_seconds
                .with_label_values(&["wake"])
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &r {
                self.shared
                    .metrics
                    .redis_errors
                    .with_label_values(&[e.kind()])
                    .inc();
            }
            return r;
        }
        if self.cluster() {
            // No wake-ups (a tool's handle): read again soon.
            tokio::time::sleep(block.min(Duration::from_millis(50))).await;
            return Ok(());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS");
        for (p, _) in from {
            cmd.arg(&self.shared.keys.part(*p).stream);
        }
        for (_, id) in from {
            cmd.arg(reply::redis_id(*id));
        }
        let mut c = self.shared.conns.blocking.clone();
        let _: Value = self
            .timed(
                "xread",
                self.shared.opts.timeout + block,
                cmd.query_async(&mut c),
            )
            .await?;
        Ok(())
    }
}

/// A read's reply, by the kind of read that made it.
enum Answer {
    Script(Value),
    Tx(Value),
}

fn parsed(
    a: Answer,
    from: &[(i32, EntryId)],
    count: usize,
) -> Result<(Vec<PartRead>, u64), ReadError> {
    match a {
        Answer::Script(v) => reply::script_reads(v, from.len()),
        Answer::Tx(v) => reply::tx_reads(v, from, count),
    }
    .map_err(|e| match e {
        reply::Problem::Shape(s) => ReadError::Reply(s),
        reply::Problem::Server(e) => ReadError::Redis(e.into()),
    })
}

/// A transaction refused whole because its slot is served elsewhere now, or is moving
/// (`MOVED` or `ASK` for its commands): only on a cluster.
fn redirected(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{Ask, ExecAbort, Moved};
    e.kind() == redis::ErrorKind::Server(ExecAbort)
        && e.clone().into_server_errors().is_some_and(|errs| {
            !errs.is_empty()
                && errs
                    .iter()
                    .all(|(_, se)| matches!(se.kind(), Some(Moved | Ask)))
        })
}

/// Runs `read` for each partition of `from` on its own, all at once (each node's connection
/// pipelines them), and joins the answers in the partitions' order into one array.
async fn per_partition<'a, F, Fut>(
    from: &'a [(i32, EntryId)],
    shape: &'static str,
    read: F,
) -> Result<Value, ReadError>
where
    F: Fn(&'a [(i32, EntryId)]) -> Fut,
    Fut: std::future::Future<Output = Result<Value, ReadError>>,
{
    let parts =
        futures::future::try_join_all(from.iter().map(|one| read(std::slice::from_ref(one))))
            .await?;
    let mut all = Vec::with_capacity(from.len());
    for v in parts {
        match v {
            Value::Array(a) => all.extend(a),
            _ => return Err(ReadError::Reply(shape)),
        }
    }
    Ok(Value::Array(all))
}

/// Key names, built once per partition.
struct Keys {
    keys: StreamKeys,
    partitions: String,
    parts: RwLock<HashMap<i32, Arc<PartKeys>>>,
}

struct PartKeys {
    stream: String,
    meta: String,
}

/// Partitions whose key names are kept (a forged cursor may name many that do not exist).
const MAX_CACHED_KEYS: usize = crate::cursor::MAX_PARTITIONS;

impl Keys {
    fn new(keys: StreamKeys) -> Self {
        Self {
            partitions: keys.partitions(),
            keys,
            parts: RwLock::new(HashMap::new()),
        }
    }

    fn part(&self, p: i32) -> Arc<PartKeys> {
        if let Some(k) = self
            .parts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&p)
        {
            return k.clone();
        }
        let k = Arc::new(PartKeys {
            stream: self.keys.stream(p),
            meta: self.keys.meta(p),
        });
        let mut parts = self
            .parts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if parts.len() < MAX_CACHED_KEYS {
            parts.insert(p, k.clone());
        }
        k
    }
}
