//! Shared harness of the ingest integration tests: a unique topic, group and key prefix per
//! test on the real Kafka and Redis, the real `ingest` binary as a child process, and checks
//! that read back what Redis and Kafka hold.
#![allow(dead_code, unused_imports)]

use dashstream::kafka::KafkaConnection;
use dashstream::keys::{parse_entry_id, StreamKeys};
use dashstream::produce::{Delivered, ProduceOptions, ProduceReport};
use dashstream::provision::{provision, TopicSpec};
use dashstream_testkit::{self as testkit, free_port, http_get, parse_metrics, Sample, Services};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use dashstream_testkit::{deadline, unique, wait_for, RedisServer};

/// One test's isolated names on the shared services.
#[derive(Clone)]
pub struct Harness {
    pub services: Services,
    pub conn: KafkaConnection,
    pub topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub prefix: String,
    pub redis_url: String,
    pub partitions: i32,
}

impl Harness {
    /// Creates `<name>` topic (and DLQ) with `partitions`, on the shared Redis.
    pub async fn new(name: &str, partitions: i32) -> Self {
        let services = testkit::services();
        let redis_url = services.redis_url.clone();
        Self::with_redis(name, partitions, services, redis_url).await
    }

    /// Same, with a Redis of the test's own.
    pub async fn with_redis(
        name: &str,
        partitions: i32,
        services: Services,
        redis_url: String,
    ) -> Self {
        let conn = KafkaConnection::plaintext(&services.kafka_brokers);
        let topic = unique(name);
        let dlq_topic = format!("{topic}-dlq");
        provision(
            &conn,
            &[
                TopicSpec {
                    name: topic.clone(),
                    partitions,
                    replication: 1,
                    retention_ms: 3_600_000,
                },
                TopicSpec {
                    name: dlq_topic.clone(),
                    partitions: 1,
                    replication: 1,
                    retention_ms: 3_600_000,
                },
            ],
        )
        .await
        .expect("create test topics");
        Self {
            services,
            conn,
            group: format!("{topic}-group"),
            prefix: format!("{topic}-ds"),
            dlq_topic,
            topic,
            redis_url,
            partitions,
        }
    }

    pub fn keys(&self) -> StreamKeys {
        StreamKeys::new(&self.prefix, &self.topic)
    }

    pub fn produce_options(&self, count: u64, rate: Option<f64>) -> ProduceOptions {
        testkit::produce_options(&self.topic, 64, count, rate)
    }

    pub async fn produce(&self, opts: ProduceOptions) -> ProduceReport {
        testkit::produce(&self.conn, opts).await
    }

    /// Starts an ingest process for this test's topic, group and prefix.
    pub fn ingest(&self, name: &str, extra: &[(&str, &str)]) -> IngestProc {
        IngestProc::spawn(self, name, extra)
    }

    /// A connection to the test's Redis (a single server or a cluster).
    pub async fn redis(&self) -> dashstream::redis_config::RedisConn {
        dashstream_testkit::redis_conn(&self.redis_url)
            .await
            .expect("redis connection")
    }

    /// `next_offset` of each partition's meta hash (-1 when absent or unreadable).
    pub async fn next_offsets(&self) -> Option<BTreeMap<i32, i64>> {
        let connect = dashstream_testkit::redis_conn(&self.redis_url);
        let mut c = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .ok()?
            .ok()?;
        let mut out = BTreeMap::new();
        for p in 0..self.partitions {
            let v: Option<i64> = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("HGET")
                    .arg(self.keys().meta(p))
                    .arg("next_offset")
                    .query_async(&mut c),
            )
            .await
            .ok()?
            .ok()?;
            out.insert(p, v.unwrap_or(-1));
        }
        Some(out)
    }

    /// Waits until every partition's stream has moved past the last delivered record.
    pub async fn wait_written(&self, deliveries: &[Delivered], timeout: Duration) {
        let want = expected_next(deliveries);
        wait_for("ingest to write every produced record", timeout, || async {
            let have = self.next_offsets().await?;
            want.iter()
                .all(|(p, o)| have.get(p).copied().unwrap_or(-1) >= *o)
                .then_some(())
        })
        .await;
    }

    /// Every entry ID of every partition stream, in stream order.
    pub async fn read_streams(&self) -> BTreeMap<i32, Vec<(i64, usize)>> {
        let mut c = self.redis().await;
        let mut out = BTreeMap::new();
        for p in 0..self.partitions {
            let key = self.keys().stream(p);
            let mut ids = Vec::new();
            let mut start = "-".to_string();
            loop {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(5000)
                    .query_async(&mut c)
                    .await
                    .expect("XRANGE");
                if reply.ids.is_empty() {
                    break;
                }
                for e in &reply.ids {
                    ids.push(parse_entry_id(&e.id).expect("entry id is <offset>-<n>"));
                }
                start = format!("({}", reply.ids.last().unwrap().id);
            }
            out.insert(p, ids);
        }
        out
    }

    /// Committed offsets of this test's group.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = self
            .conn
            .client_config()
            .set("group.id", &self.group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        got.elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), o)
            })
            .collect()
    }

    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = self.conn.client_config().create().expect("consumer");
        (0..self.partitions)
            .map(|p| {
                (
                    p,
                    c.fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                        .expect("watermarks")
                        .1,
                )
            })
            .collect()
    }
}

/// The next offset each partition must reach: one past its last delivered record.
pub fn expected_next(deliveries: &[Delivered]) -> BTreeMap<i32, i64> {
    let mut want = BTreeMap::new();
    for d in deliveries {
        let e = want.entry(d.partition).or_insert(0);
        *e = (*e).max(d.offset + 1);
    }
    want
}

/// Asserts each partition stream holds exactly the events of the valid delivered records, each
/// once, in offset order, and nothing else.
pub fn assert_exactly_once(deliveries: &[Delivered], streams: &BTreeMap<i32, Vec<(i64, usize)>>) {
    let mut want: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    for d in deliveries.iter().filter(|d| d.fault.is_none()) {
        let v = want.entry(d.partition).or_default();
        for i in 0..d.events as usize {
            v.push((d.offset, i));
        }
    }
    for v in want.values_mut() {
        v.sort();
    }
    let mut total = 0;
    for (p, have) in streams {
        let expect = want.remove(p).unwrap_or_default();
        let mut sorted = have.clone();
        sorted.sort();
        assert_eq!(&sorted, have, "partition {p}: stream not in offset order");
        sorted.dedup();
        assert_eq!(sorted.len(), have.len(), "partition {p}: duplicate entries");
        if have != &expect {
            let hs: std::collections::BTreeSet<_> = have.iter().collect();
            let es: std::collections::BTreeSet<_> = expect.iter().collect();
            let missing: Vec<_> = es.difference(&hs).take(10).collect();
            let extra: Vec<_> = hs.difference(&es).take(10).collect();
            panic!(
                "partition {p}: {} entries, expected {}; missing {missing:?}; unexpected {extra:?}",
                have.len(),
                expect.len()
            );
        }
        total += have.len();
    }
    assert!(
        want.is_empty(),
        "streams missing for partitions {:?}",
        want.keys()
    );
    assert!(total > 0, "no entries at all");
}

/// A running `ingest` process.
pub struct IngestProc {
    pub name: String,
    pub addr: String,
    child: Option<Child>,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl IngestProc {
    /// `INGEST_LISTEN` in `extra` sets the address (a port chosen before the process starts,
    /// e.g. for a Prometheus configured first); otherwise a free port.
    fn spawn(h: &Harness, name: &str, extra: &[(&str, &str)]) -> Self {
        let addr = extra
            .iter()
            .find(|(k, _)| *k == "INGEST_LISTEN")
            .map_or_else(
                || format!("127.0.0.1:{}", free_port()),
                |(_, v)| v.to_string(),
            );
        let mut env: Vec<(String, String)> = vec![
            ("KAFKA_BROKERS".into(), h.services.kafka_brokers.clone()),
            ("KAFKA_TOPIC".into(), h.topic.clone()),
            ("KAFKA_DLQ_TOPIC".into(), h.dlq_topic.clone()),
            ("KAFKA_GROUP_ID".into(), h.group.clone()),
            ("REDIS_URL".into(), h.redis_url.clone()),
            ("REDIS_KEY_PREFIX".into(), h.prefix.clone()),
            ("INGEST_LISTEN".into(), addr.clone()),
            ("INGEST_INSTANCE_ID".into(), name.into()),
            ("INGEST_DRAIN_TIMEOUT_MS".into(), "5000".into()),
            ("INGEST_LAG_INTERVAL_MS".into(), "500".into()),
            ("REDIS_COMMAND_TIMEOUT_MS".into(), "1000".into()),
            (
                "RUST_LOG".into(),
                "info,rdkafka=warn,librdkafka=warn".into(),
            ),
        ];
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("{}-{name}.log", h.topic));
        let mut p = Self {
            name: name.into(),
            addr,
            child: None,
            log,
            env,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ingest"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn ingest");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, no chance to drain.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL then start again on the same port.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.start();
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        testkit::signal(c.id(), "TERM");
        wait_for(
            &format!("{} to exit", self.name),
            Duration::from_secs(30),
            || {
                let r = c.try_wait().ok().flatten();
                async move { r }
            },
        )
        .await
        .into()
    }

    pub async fn metrics(&self) -> Option<Vec<Sample>> {
        match http_get(&self.addr, "/metrics").await {
            Ok((200, body)) => Some(parse_metrics(&body)),
            _ => None,
        }
    }

    pub async fn readyz(&self) -> Option<(u16, String)> {
        http_get(&self.addr, "/readyz").await.ok()
    }

    /// Partitions this process reports as assigned.
    pub async fn assigned(&self) -> Option<Vec<i32>> {
        let m = self.metrics().await?;
        let mut v: Vec<i32> = m
            .iter()
            .filter(|s| s.name == "dashstream_ingest_partition_assigned" && s.value == 1.0)
            .filter_map(|s| s.labels.get("partition")?.parse().ok())
            .collect();
        v.sort();
        Some(v)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for IngestProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sum of samples of `name` with `labels` on one process.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    testkit::metric_sum(samples, name, labels)
}

/// Counts per partition of the valid records delivered.
pub fn by_partition(deliveries: &[Delivered]) -> HashMap<i32, usize> {
    let mut m = HashMap::new();
    for d in deliveries {
        *m.entry(d.partition).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Helpers of the review regressions (rollback, stale pause, fencing, decode bomb, offset reset,
// missing DLQ topic, sequence gaps while scaling). They use only the imports above, which are
// the same before and after the testkit crate moved.
// ---------------------------------------------------------------------------------------------

impl Harness {
    /// [`Harness::with_redis`] on the shared Kafka with a Redis of the test's own at `redis_url`.
    pub async fn with_own_redis(name: &str, partitions: i32, redis_url: String) -> Self {
        Self::with_redis(name, partitions, testkit::services(), redis_url).await
    }

    /// Makes partition `p` stuck: its stream key holds a string, so every write fails
    /// (WRONGTYPE) while claims still succeed, and its meta says it last progressed
    /// `progressed_ago` ago (as a previous owner would have left it).
    pub async fn stick_partition(&self, p: i32, progressed_ago: Duration) {
        let mut redis = self.redis().await;
        let stream = self.keys().stream(p);
        let _: () = redis::pipe()
            .del(&stream)
            .set(&stream, "not a stream")
            .hset(
                self.keys().meta(p),
                "progress_us",
                dashstream::now_us() - progressed_ago.as_micros() as i64,
            )
            .query_async(&mut redis)
            .await
            .expect("make the partition stuck");
    }

    /// One field of partition `p`'s meta hash (`epoch`, `next_offset`, `owner`...), `None` when
    /// absent or Redis does not answer.
    pub async fn meta_field(&self, p: i32, field: &str) -> Option<String> {
        let mut c = tokio::time::timeout(
            Duration::from_secs(2),
            dashstream_testkit::redis_conn(&self.redis_url),
        )
        .await
        .ok()?
        .ok()?;
        tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("HGET")
                .arg(self.keys().meta(p))
                .arg(field)
                .query_async(&mut c),
        )
        .await
        .ok()?
        .ok()?
    }
}

/// Waits until every valid delivered record is in its partition's stream (`next_offset` past
/// the last delivery and an entry for every event), and returns the streams. On timeout it
/// panics with, per partition, the `next_offset` reached and wanted and the missing offsets,
/// so a stuck partition or a hole is named in the failure.
pub async fn wait_in_streams(
    h: &Harness,
    deliveries: &[Delivered],
    timeout: Duration,
) -> BTreeMap<i32, Vec<(i64, usize)>> {
    let want_next = expected_next(deliveries);
    let mut want: BTreeMap<i32, std::collections::BTreeSet<(i64, usize)>> = BTreeMap::new();
    for d in deliveries.iter().filter(|d| d.fault.is_none()) {
        let set = want.entry(d.partition).or_default();
        set.extend((0..d.events as usize).map(|i| (d.offset, i)));
    }
    let holds_all = |streams: &BTreeMap<i32, Vec<(i64, usize)>>| {
        want.iter().all(|(p, w)| {
            let have: std::collections::BTreeSet<_> =
                streams.get(p).into_iter().flatten().collect();
            w.iter().all(|e| have.contains(e))
        })
    };
    let start = std::time::Instant::now();
    loop {
        let next = h.next_offsets().await;
        let caught_up = next.as_ref().is_some_and(|n| {
            want_next
                .iter()
                .all(|(p, o)| n.get(p).copied().unwrap_or(-1) >= *o)
        });
        if caught_up {
            let streams = h.read_streams().await;
            if holds_all(&streams) {
                return streams;
            }
        }
        if start.elapsed() >= timeout {
            let streams = h.read_streams().await;
            let mut report = Vec::new();
            for (p, w) in &want {
                let have: std::collections::BTreeSet<(i64, usize)> =
                    streams.get(p).into_iter().flatten().copied().collect();
                let missing: Vec<i64> = w
                    .iter()
                    .filter(|e| !have.contains(e))
                    .map(|e| e.0)
                    .collect();
                let reached = next.as_ref().and_then(|n| n.get(p).copied());
                report.push(format!(
                    "partition {p}: next_offset {reached:?} (want >= {}), {} entries, \
                     {} expected entries missing at offsets {}",
                    want_next.get(p).copied().unwrap_or(0),
                    streams.get(p).map_or(0, Vec::len),
                    missing.len(),
                    offset_ranges(&missing)
                ));
            }
            panic!(
                "timed out after {timeout:?} waiting for every produced record in its stream:\n  {}",
                report.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sorted offsets as compact ranges, e.g. `[0..=99, 150..=199]` (at most 8 ranges shown).
pub fn offset_ranges(offsets: &[i64]) -> String {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for o in sorted {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == o => *end = o,
            _ => ranges.push((o, o)),
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(8)
        .map(|(a, b)| format!("{a}..={b}"))
        .collect();
    let more = if ranges.len() > 8 { ", ..." } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

/// Scrapes `/metrics` at `addr` (for a process whose [`IngestProc`] is borrowed elsewhere).
pub async fn metrics_at(addr: &str) -> Option<Vec<Sample>> {
    match http_get(addr, "/metrics").await {
        Ok((200, body)) => Some(parse_metrics(&body)),
        _ => None,
    }
}

/// True when `/metrics` exports at least one series of `name`.
pub fn has_metric(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

/// Reads the DLQ topic from its start until `want` documents arrived or `timeout` passed;
/// returns the JSON documents read.
pub async fn read_dlq(h: &Harness, want: usize, timeout: Duration) -> Vec<serde_json::Value> {
    use rdkafka::message::Message as _;
    let consumer: BaseConsumer = h
        .conn
        .client_config()
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("DLQ consumer");
    consumer.subscribe(&[&h.dlq_topic]).expect("subscribe DLQ");
    let mut docs = Vec::new();
    let start = std::time::Instant::now();
    while docs.len() < want && start.elapsed() < timeout {
        if let Some(Ok(m)) =
            tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)))
        {
            docs.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("DLQ JSON"));
        }
    }
    docs
}

/// Peak resident set size (`VmHWM`, KiB) of a running process, from `/proc/<pid>/status`.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl IngestProc {
    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running
    /// (it is left running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            let c = self.child.as_mut()?;
            if let Some(status) = c.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and wait for the exit (like [`IngestProc::stop`]), scraping `/metrics` every
    /// 100 ms meanwhile; returns the exit status and the last scrape, so counters of a stopped
    /// process (including what its drain did) can still be checked.
    pub async fn stop_with_last_metrics(
        &mut self,
    ) -> (Option<std::process::ExitStatus>, Option<Vec<Sample>>) {
        let addr = self.addr.clone();
        let mut last = metrics_at(&addr).await;
        let stop = self.stop();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                status = &mut stop => return (status, last),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(m) = metrics_at(&addr).await {
                        last = Some(m);
                    }
                }
            }
        }
    }
}

/// A `redis-server` of one test with RDB persistence only (no AOF, no automatic snapshots):
/// after [`RdbRedis::crash_and_restart`] it holds exactly what the last `SAVE` wrote, i.e. it
/// comes back with an older state (a rollback), on the same port and directory.
pub struct RdbRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RdbRedis {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("dashstream-rdb"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().expect("utf-8 dir")])
            .args([
                "--dbfilename",
                "dump.rdb",
                "--appendonly",
                "no",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (deploy/local/redis.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // Accepting connections is not enough: answer PING only once the RDB is loaded.
        loop {
            let ready = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (nothing saved), then start again on the same port and directory, loading the
    /// last `SAVE`d snapshot.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for RdbRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
