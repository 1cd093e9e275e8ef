//! The whole system on a real Redis Cluster (3 masters, a replica each:
//! `deploy/local/redis-cluster.sh`), while events flow:
//! - a master killed (its replica promoted) ends with every client holding every event once,
//!   or with a gap naming what asynchronous replication lost, never a silent hole;
//! - one partition's slot migrated live to another master loses and doubles nothing, with
//!   both tiers connected as their least-privilege ACL users (no Redis error counted);
//! - partitions spread over the masters, and the tail wakes by shard channels (every client
//!   gets every event although no `XREAD BLOCK` can span the cluster's slots);
//! - a backlog larger than one tail read is read on at once, not one read per wake-up.
//!
//! The other cluster tests are the usual ones run with `REDIS_URL` set to the cluster
//! (test.sh): the ingest's exactly-once test, the gateway's fan-out and resume tests.
//! These two change the cluster's shape, so they take turns.

mod common;
use common::*;
use dashstream::keys::{slot, StreamKeys};
use dashstream_testkit as testkit;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cluster tests change the cluster: one at a time.
static SHAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/redis-cluster.sh")
}

fn cluster_cmd(args: &[&str]) {
    let out = std::process::Command::new(script())
        .args(args)
        .output()
        .expect("run redis-cluster.sh");
    assert!(
        out.status.success(),
        "redis-cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    port: u16,
    master: bool,
    slots: Vec<(u16, u16)>,
}

async fn plain(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
        .await
        .expect("a node")
}

/// The cluster as a live node sees it: its healthy nodes.
async fn nodes(ports: &[u16]) -> Vec<Node> {
    for p in ports {
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(2),
            redis::Client::open(format!("redis://127.0.0.1:{p}"))
                .unwrap()
                .get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut c)
            .await
        else {
            continue;
        };
        return text
            .lines()
            .filter(|l| !l.contains("fail"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let slots = f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some(Node {
                    id: f[0].to_string(),
                    port,
                    master: f[2].contains("master"),
                    slots,
                })
            })
            .collect();
    }
    panic!("no cluster node answers");
}

fn owner(nodes: &[Node], s: u16) -> Node {
    nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&s)))
        .cloned()
        .unwrap_or_else(|| panic!("no master serves slot {s}: {nodes:?}"))
}

/// Restarts a killed node when the test ends, passed or not: the next test needs six.
struct Restart(u16);
impl Drop for Restart {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .args(["start-node", &self.0.to_string()])
            .status();
    }
}

/// What a client received, resets taken into account: after a `reset` gap the partition is
/// sent again from its stream's start, so what follows may repeat what came before.
#[derive(Debug, Default)]
struct Tally {
    events: BTreeSet<(i32, i64, u32)>,
    last: BTreeMap<i32, (i64, u32)>,
    /// (partition, from, to) of every gap; to = -1: from `from` on (a reset).
    missed: Vec<(i32, i64, i64)>,
    reasons: Vec<String>,
    duplicates: usize,
    out_of_order: usize,
    /// Partitions reset since their last event: repeats are announced.
    resent: BTreeSet<i32>,
    cursor: Option<String>,
    reconnects: usize,
}

impl Tally {
    fn take(&mut self, f: &Frame) {
        match f {
            Frame::Welcome { cursor, .. } | Frame::Reconnect { cursor, .. } => {
                self.cursor = Some(cursor.clone())
            }
            Frame::Events { cursor, events, .. } => {
                for e in events {
                    let again = self.resent.contains(&e.0);
                    if let Some(prev) = self.last.get(&e.0) {
                        if (e.1, e.2) <= *prev && !again {
                            self.out_of_order += 1;
                        }
                    }
                    self.last.insert(e.0, (e.1, e.2));
                    if !self.events.insert(*e) && !again {
                        self.duplicates += 1;
                    }
                }
                self.cursor = Some(cursor.clone());
            }
            Frame::Gap {
                cursor,
                reason,
                missed,
            } => {
                self.reasons.push(reason.clone());
                for m in missed {
                    self.missed.push(*m);
                    if m.2 == -1 {
                        self.resent.insert(m.0);
                        self.last.remove(&m.0);
                    }
                }
                self.cursor = Some(cursor.clone());
            }
            _ => {}
        }
    }

    fn covered(&self, e: &(i32, i64, u32)) -> bool {
        self.events.contains(e)
            || self
                .missed
                .iter()
                .any(|(p, from, to)| *p == e.0 && e.1 >= *from && (*to == -1 || e.1 <= *to))
    }
}

/// A client that reads all the time (and resumes from its cursor on another replica if its
/// connection ends), so that it is never a slow client while the test does other things.
fn follow(
    addrs: Vec<String>,
    first: usize,
    tally: Arc<Mutex<Tally>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut at = first;
        loop {
            let query = match tally.lock().unwrap().cursor.clone() {
                Some(c) => format!("from={c}&format=json"),
                None => "from=latest&format=json".to_string(),
            };
            let Ok(mut c) = connect(&addrs[at % addrs.len()], &query).await else {
                at += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while let Some(f) = c.next(Duration::from_secs(600)).await {
                if let Frame::Close(_) = f {
                    break;
                }
                tally.lock().unwrap().take(&f);
            }
            let mut t = tally.lock().unwrap();
            t.reconnects += 1;
            drop(t);
            at += 1;
        }
    })
}

struct Run {
    sys: System,
    gateways: Vec<Running>,
    ingest: Running,
    tallies: Vec<Arc<Mutex<Tally>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(name: &str, partitions: i32) -> Run {
    start_as(name, partitions, false).await
}

/// Like [`start`]; with `least_privilege`, the tiers connect as the cluster's ACL users
/// (`deploy/local/redis-acl.sh`, docs/SECURITY.md), on the users' prefix `acl:`.
async fn start_as(name: &str, partitions: i32, least_privilege: bool) -> Run {
    let (url, _) = dashstream_testkit::redis_cluster();
    let mut sys = System::new(name, partitions, Some(url.clone())).await;
    let mut tiers = [(sys.clone(), Vec::new()), (sys.clone(), Vec::new())];
    if least_privilege {
        let s = dashstream_testkit::secure_services();
        sys.prefix = format!("acl:{}", sys.topic);
        for (i, tier) in ["gateway", "ingest"].into_iter().enumerate() {
            let login = format!("redis+cluster://dashstream-{tier}@");
            tiers[i] = (
                System {
                    redis_url: url.replacen("redis+cluster://", &login, 1),
                    ..sys.clone()
                },
                vec![format!(
                    "--redis-password-file={}",
                    s.file(&format!("passwords/redis-{tier}.password"))
                        .display()
                )],
            );
        }
    }
    let [(gw_sys, gw_flags), (in_sys, in_flags)] = &tiers;
    let gw_flags: Vec<&str> = gw_flags.iter().map(String::as_str).collect();
    let in_flags: Vec<&str> = in_flags.iter().map(String::as_str).collect();
    let gateways = vec![
        gw_sys.gateway("g1", &gw_flags).await,
        gw_sys.gateway("g2", &gw_flags).await,
    ];
    let ingest = in_sys.ingest(&in_flags).await;
    let addrs: Vec<String> = gateways.iter().map(|g| g.addr.clone()).collect();
    let mut tallies = Vec::new();
    let mut readers = Vec::new();
    for i in 0..6 {
        let t = Arc::new(Mutex::new(Tally::default()));
        readers.push(follow(addrs.clone(), i, t.clone()));
        tallies.push(t);
    }
    // Every client is welcomed before events flow (from=latest starts at the welcome).
    let ts = tallies.clone();
    testkit::wait_for("every client welcomed", Duration::from_secs(30), || {
        let ts = ts.clone();
        async move {
            ts.iter()
                .all(|t| t.lock().unwrap().cursor.is_some())
                .then_some(())
        }
    })
    .await;
    Run {
        sys,
        gateways,
        ingest,
        tallies,
        readers,
    }
}

impl Run {
    /// Waits until partition `p`'s stream holds more than `n` entries.
    async fn wait_written(&self, p: i32, n: i64) {
        let c = dashstream_testkit::redis_conn(&self.sys.redis_url)
            .await
            .unwrap();
        let k = StreamKeys::new(&self.sys.prefix, &self.sys.topic).stream(p);
        testkit::wait_for(
            &format!("partition {p} written"),
            Duration::from_secs(60),
            || {
                let (mut c, k) = (c.clone(), k.clone());
                async move {
                    let len: i64 = redis::cmd("XLEN").arg(&k).query_async(&mut c).await.ok()?;
                    (len > n).then_some(())
                }
            },
        )
        .await;
    }
    /// Waits until every client holds or was told about every event of `want`.
    async fn wait_covered(&self, want: &BTreeSet<(i32, i64, u32)>) {
        let ts = self.tallies.clone();
        let w = want.clone();
        let lacking = move || {
            ts.iter()
                .map(|t| {
                    let t = t.lock().unwrap();
                    w.iter().filter(|e| !t.covered(e)).count()
                })
                .collect::<Vec<_>>()
        };
        let l = lacking.clone();
        let ok = tokio::time::timeout(
            Duration::from_secs(120),
            testkit::wait_for(
                "every client has every event",
                Duration::from_secs(120),
                || {
                    let l = l.clone();
                    async move { l().iter().all(|n| *n == 0).then_some(()) }
                },
            ),
        )
        .await;
        assert!(ok.is_ok(), "events missing per client: {:?}", lacking());
    }

    /// Neither tier counted a Redis error (a command refused by the ACL is one, retried).
    async fn assert_no_redis_errors(&self) {
        use dashstream_testkit::{http_get, metric_sum, parse_metrics};
        let metrics = |addr: String| async move {
            let (status, text) = http_get(&addr, "/metrics").await.unwrap();
            assert_eq!(status, 200);
            parse_metrics(&text)
        };
        for g in &self.gateways {
            let m = metrics(g.addr.clone()).await;
            assert!(m
                .iter()
                .any(|m| m.name == "dashstream_gateway_redis_errors_total"));
            assert_eq!(
                metric_sum(&m, "dashstream_gateway_redis_errors_total", &[]),
                0.0,
                "gateway {} Redis errors: {:?}",
                g.addr,
                m.iter()
                    .filter(|m| m.name == "dashstream_gateway_redis_errors_total" && m.value > 0.0)
                    .map(|m| (&m.labels, m.value))
                    .collect::<Vec<_>>()
            );
        }
        let m = metrics(self.ingest.addr.clone()).await;
        assert!(metric_sum(&m, "dashstream_ingest_events_written_total", &[]) > 0.0);
        assert_eq!(
            metric_sum(
                &m,
                "dashstream_ingest_infra_errors_total",
                &[("system", "redis")]
            ),
            0.0,
            "ingest Redis errors: {:?}",
            m.iter()
                .filter(|m| m.name == "dashstream_ingest_infra_errors_total" && m.value > 0.0)
                .map(|m| (&m.labels, m.value))
                .collect::<Vec<_>>()
        );
    }

    /// Partitions' streams in Redis: every produced event once.
    async fn assert_streams_exactly_once(&self, want: &BTreeSet<(i32, i64, u32)>) {
        let mut c = dashstream_testkit::redis_conn(&self.sys.redis_url)
            .await
            .unwrap();
        let keys = StreamKeys::new(&self.sys.prefix, &self.sys.topic);
        let mut seen = BTreeSet::new();
        for p in 0..self.sys.partitions {
            let mut start = "-".to_string();
            loop {
                let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(keys.stream(p))
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(5000)
                    .query_async(&mut c)
                    .await
                    .expect("XRANGE");
                let Some(last) = r.ids.last() else { break };
                start = format!("({}", last.id);
                for e in &r.ids {
                    let (o, i) = dashstream::keys::parse_entry_id(&e.id).unwrap();
                    assert!(
                        seen.insert((p, o, i as u32 + 1)),
                        "entry {p}:{} twice",
                        e.id
                    );
                }
            }
        }
        assert_eq!(&seen, want, "the streams hold exactly the produced events");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_spread_over_the_masters_and_every_client_gets_every_event() {
    deadline(240, async {
        let _turn = SHAPE.lock().await;
        let (_, ports) = dashstream_testkit::redis_cluster();
        let run = start("cl-spread", 6).await;
        let keys = StreamKeys::new(&run.sys.prefix, &run.sys.topic);
        let masters: BTreeSet<u16> = {
            let ns = nodes(&ports).await;
            (0..6)
                .map(|p| owner(&ns, slot(&keys.stream(p))).port)
                .collect()
        };
        assert!(
            masters.len() >= 2,
            "6 partitions on one master: {masters:?}"
        );
        let report = run
            .sys
            .produce(run.sys.produce_options(6_000, Some(3_000.0)))
            .await;
        let want = expected(&report.deliveries);
        run.wait_covered(&want).await;
        for (i, t) in run.tallies.iter().enumerate() {
            let t = t.lock().unwrap();
            assert!(
                t.missed.is_empty(),
                "client {i}: gaps {:?} {:?}",
                t.reasons,
                t.missed
            );
            assert_eq!((t.duplicates, t.out_of_order), (0, 0), "client {i}");
            assert_eq!(t.events, want, "client {i}");
        }
        run.assert_streams_exactly_once(&want).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_loses_nothing_silently() {
    deadline(300, async {
        let _turn = SHAPE.lock().await;
        let (_, ports) = dashstream_testkit::redis_cluster();
        cluster_cmd(&["wait-ok", "60"]);
        let run = start("cl-kill", 6).await;
        let keys = StreamKeys::new(&run.sys.prefix, &run.sys.topic);
        let victim = owner(&nodes(&ports).await, slot(&keys.stream(0)));
        let produce = run
            .sys
            .produce(run.sys.produce_options(16_000, Some(2_000.0)));
        let kill = async {
            // Once partition 0 is being written, its master dies.
            run.wait_written(0, 1_000).await;
            cluster_cmd(&["kill-node", &victim.port.to_string()]);
            let restart = Restart(victim.port);
            // Its replica takes over; writes and reads follow without a restart.
            tokio::task::spawn_blocking(|| cluster_cmd(&["wait-ok", "60"]))
                .await
                .unwrap();
            restart
        };
        let (report, restart) = tokio::join!(produce, kill);
        let want = expected(&report.deliveries);
        run.wait_covered(&want).await;
        let mut gaps = 0;
        for (i, t) in run.tallies.iter().enumerate() {
            let t = t.lock().unwrap();
            assert_eq!(
                (t.duplicates, t.out_of_order),
                (0, 0),
                "client {i}: unannounced repeats"
            );
            // Only resets, announced, may be there: what a promoted replica had not received.
            assert!(
                t.reasons.iter().all(|r| r == "reset"),
                "client {i}: gaps {:?}",
                t.reasons
            );
            gaps += t.missed.len();
        }
        eprintln!("master {} killed; gaps announced: {gaps}", victim.port);
        // The ingest wrote again from Kafka whatever the failover lost.
        run.assert_streams_exactly_once(&want).await;
        drop(restart);
        tokio::task::spawn_blocking(|| cluster_cmd(&["wait-ok", "60"]))
            .await
            .unwrap();
    })
    .await;
}

/// Moves slot `s` from `from` to `to` as `redis-cli --cluster reshard` does, key batch by
/// key batch (a partition's stream and meta hash move together: one slot).
async fn migrate_slot(s: u16, from: &Node, to: &Node, all: &[Node]) {
    let (mut src, mut dst) = (plain(from.port).await, plain(to.port).await);
    let setslot = |state: &str, id: &str| {
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(s)
            .arg(state)
            .arg(id)
            .clone()
    };
    let _: () = setslot("IMPORTING", &from.id)
        .query_async(&mut dst)
        .await
        .unwrap();
    let _: () = setslot("MIGRATING", &to.id)
        .query_async(&mut src)
        .await
        .unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(s)
            .arg(10)
            .query_async(&mut src)
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(10_000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut src)
            .await
            .unwrap();
    }
    for n in all.iter().filter(|n| n.master) {
        let mut c = plain(n.port).await;
        let _: () = setslot("NODE", &to.id).query_async(&mut c).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_migrated_live_loses_and_doubles_nothing_with_least_privilege_users() {
    deadline(300, async {
        let _turn = SHAPE.lock().await;
        let (_, ports) = dashstream_testkit::redis_cluster();
        cluster_cmd(&["wait-ok", "60"]);
        // As the ACL users: what the migration needs (ASKING, the slots' refresh, the shard
        // channels' resubscription) is in their rules, and nothing they run is refused.
        let run = start_as("cl-migrate", 4, true).await;
        let keys = StreamKeys::new(&run.sys.prefix, &run.sys.topic);
        let s = slot(&keys.stream(1));
        let ns = nodes(&ports).await;
        let from = owner(&ns, s);
        let to = ns
            .iter()
            .find(|n| n.master && n.id != from.id)
            .cloned()
            .expect("another master");
        let produce = run
            .sys
            .produce(run.sys.produce_options(16_000, Some(2_000.0)));
        let migrate = async {
            run.wait_written(1, 1_000).await;
            migrate_slot(s, &from, &to, &ns).await;
        };
        let (report, ()) = tokio::join!(produce, migrate);
        assert_eq!(
            owner(&nodes(&ports).await, s).id,
            to.id,
            "slot {s} moved to {}",
            to.port
        );
        let want = expected(&report.deliveries);
        run.wait_covered(&want).await;
        for (i, t) in run.tallies.iter().enumerate() {
            let t = t.lock().unwrap();
            assert!(
                t.missed.is_empty(),
                "client {i}: gaps {:?} {:?}",
                t.reasons,
                t.missed
            );
            assert_eq!((t.duplicates, t.out_of_order), (0, 0), "client {i}");
            assert_eq!(t.events, want, "client {i}");
        }
        run.assert_streams_exactly_once(&want).await;
        run.assert_no_redis_errors().await;
    })
    .await;
}

/// Waits for `what` to return within `within`, panicking otherwise.
async fn within<T>(what: &str, within: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(within, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tail_wakes_on_a_write_before_its_block_time_also_after_a_migration() {
    deadline(240, async {
        let _turn = SHAPE.lock().await;
        let (url, ports) = dashstream_testkit::redis_cluster();
        cluster_cmd(&["wait-ok", "60"]);
        let sys = System::new("cl-wake", 1, Some(url.clone())).await;
        let _ingest = sys.ingest(&[]).await;
        let settings = dashstream::redis_config::RedisArgs {
            url,
            key_prefix: sys.prefix.clone(),
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            command_timeout_ms: 5_000,
        }
        .validate()
        .unwrap();
        let waker = dashstream_gateway::streams::ShardWaker::connect(&settings)
            .await
            .unwrap();
        let keys = StreamKeys::new(&sys.prefix, &sys.topic);
        let stream = |p: i32| keys.stream(p);
        // A block far longer than the test waits: only a write's announcement ends the wait.
        let block = Duration::from_secs(600);
        let woken_by_a_write = |round: &'static str| {
            let waker = waker.clone();
            let sys = &sys;
            async move {
                // Subscribed, and any announcement already waiting taken.
                waker
                    .wait(&[0], stream, Duration::from_millis(10))
                    .await
                    .unwrap();
                let wait = waker.wait(&[0], stream, block);
                // An announcement before the wait blocks leaves a permit: no race.
                let produce = sys.produce(sys.produce_options(5, None));
                let (woke, _) = within(round, Duration::from_secs(60), async {
                    tokio::join!(wait, produce)
                })
                .await;
                woke.unwrap();
            }
        };
        woken_by_a_write("woken by a write").await;
        // The partition's slot moves to another master: Redis unsubscribes its channel there,
        // the waker subscribes again on the new master.
        let s = slot(&keys.stream(0));
        let ns = nodes(&ports).await;
        let from = owner(&ns, s);
        let to = ns
            .iter()
            .find(|n| n.master && n.id != from.id)
            .cloned()
            .unwrap();
        migrate_slot(s, &from, &to, &ns).await;
        woken_by_a_write("woken by a write after the migration").await;
    })
    .await;
}

/// A cluster's wake-up announces a write, not what is left to read: a tail that stopped at its
/// read count reads on at once, instead of waiting a block time (1 s) per read for a wake-up no
/// write will send. Here a burst of 1,200 events is read 10 at a time: a block per read would
/// take minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_is_read_on_at_once_not_one_read_per_wake_up() {
    deadline(240, async {
        let _turn = SHAPE.lock().await;
        let (url, _) = dashstream_testkit::redis_cluster();
        cluster_cmd(&["wait-ok", "60"]);
        let sys = System::new("cl-backlog", 1, Some(url)).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(5, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &["--tail-read-count=10"]).await;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let reader = follow(vec![gw.addr.clone()], 0, tally.clone());
        let t = tally.clone();
        testkit::wait_for("the client welcomed", Duration::from_secs(30), || {
            let t = t.clone();
            async move { t.lock().unwrap().cursor.is_some().then_some(()) }
        })
        .await;
        let report = sys.produce(sys.produce_options(1_200, None)).await;
        let want = expected(&report.deliveries);
        let t = tally.clone();
        let w = want.clone();
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            testkit::wait_for("every event", Duration::from_secs(30), || {
                let (t, w) = (t.clone(), w.clone());
                async move { w.iter().all(|e| t.lock().unwrap().covered(e)).then_some(()) }
            }),
        )
        .await;
        let t = tally.lock().unwrap();
        assert!(
            got.is_ok(),
            "{} of {} events within 30 s of the burst",
            want.iter().filter(|e| t.events.contains(e)).count(),
            want.len()
        );
        assert!(t.missed.is_empty(), "gaps {:?} {:?}", t.reasons, t.missed);
        assert_eq!((t.duplicates, t.out_of_order), (0, 0));
        drop(t);
        reader.abort();
    })
    .await;
}
