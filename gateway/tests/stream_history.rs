//! A stream that is not the history delivered so far, against the real Redis, with streams
//! written directly in the ingest's layout (meta hash, partition set, `<offset>-<n>` entries):
//! - a stream that goes back within its epoch (review m3, m4) is a reset: rolled back to fewer
//!   entries, or its key lost while the meta hash stayed; live and resumed clients get a `reset`
//!   gap, then the stream from its start, never a silent skip;
//! - a meta hash lost while the stream stayed gives a new epoch over the same entries: the
//!   entries come again, announced by a `reset` gap (documented in docs/GATEWAY.md).

mod common;
use common::*;
use dashstream::keys::StreamKeys;
use dashstream::proto::{Event, Header};
use dashstream_gateway::cursor::{Cursor, EntryId, PartitionPos};
use dashstream_testkit::{http_get, metric_sum, parse_metrics};
use prost::Message as _;
use std::time::Duration;

const ROLLBACKS: &str = "dashstream_gateway_stream_rollbacks_total";

/// One thing a client received, in order.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Event(i32, i64, u32),
    Gap(String, Vec<(i32, i64, i64)>),
}

struct Setup {
    keys: StreamKeys,
    prefix: String,
    topic: String,
    redis_url: String,
    conn: redis::aio::MultiplexedConnection,
}

impl Setup {
    async fn new(name: &str, partitions: i32) -> Self {
        let services = dashstream_testkit::services();
        let prefix = unique(name);
        let topic = "t".to_string();
        let keys = StreamKeys::new(&prefix, &topic);
        let mut conn = redis::Client::open(services.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
            .await
            .unwrap();
        for p in 0..partitions {
            let _: () = redis::pipe()
                .cmd("HSET")
                .arg(keys.meta(p))
                .arg("epoch")
                .arg("e1")
                .arg("owner")
                .arg("test")
                .ignore()
                .cmd("SADD")
                .arg(keys.partitions())
                .arg(p)
                .ignore()
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        Self {
            keys,
            prefix,
            topic,
            redis_url: services.redis_url,
            conn,
        }
    }

    /// `XADD`s of the entries `ids` (`(offset, n)`) of partition `p` into `pipe`.
    fn xadds(&self, pipe: &mut redis::Pipeline, p: i32, ids: &[(i64, u32)]) {
        for (o, n) in ids {
            pipe.cmd("XADD")
                .arg(self.keys.stream(p))
                .arg(format!("{o}-{n}"))
                .arg("ev")
                .arg(event(*o as u64 * 10 + *n as u64))
                .ignore();
        }
    }

    async fn add(&mut self, p: i32, ids: &[(i64, u32)]) {
        let mut pipe = redis::pipe();
        self.xadds(&mut pipe, p, ids);
        let _: () = pipe.query_async(&mut self.conn).await.unwrap();
    }

    async fn gateway(&self) -> Running {
        let addr = format!("127.0.0.1:{}", dashstream_testkit::free_port());
        let args = [
            "gateway".to_string(),
            format!("--kafka-topic={}", self.topic),
            format!("--redis-url={}", self.redis_url),
            format!("--redis-key-prefix={}", self.prefix),
            format!("--listen={addr}"),
            "--replica-id=g1".into(),
            "--redis-command-timeout-ms=2000".into(),
            "--drain-timeout-ms=2000".into(),
        ];
        let settings = <dashstream_gateway::GatewayArgs as clap::Parser>::try_parse_from(args)
            .unwrap()
            .validate()
            .unwrap();
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            dashstream_gateway::run(settings, prometheus::Registry::new(), listener, s)
                .await
                .unwrap();
        });
        let a = addr.clone();
        wait_for("gateway ready", Duration::from_secs(30), || {
            let a = a.clone();
            async move { (http_get(&a, "/readyz").await.ok()?.0 == 200).then_some(()) }
        })
        .await;
        Running { addr, stop, handle }
    }
}

/// An `Event` as a producer encodes it.
fn event(seq: u64) -> Vec<u8> {
    Event {
        header: Some(Header {
            message_id: vec![seq as u8; 16].into(),
            timestamp_us: now_us(),
            tenant_id: "tenant-a".into(),
            thread_id: "thread-a".into(),
            sequence: seq,
            event_type: "token".into(),
            schema_version: 1,
        }),
        payload: b"x".to_vec().into(),
        content_type: "application/octet-stream".into(),
    }
    .encode_to_vec()
}

/// A cursor at entry `(offset, n)` of epoch `e1` in each given partition.
fn cursor_at(parts: &[(i32, i64, u32)]) -> String {
    let mut c = Cursor::default();
    for (p, offset, n) in parts {
        c.parts.insert(
            *p,
            PartitionPos {
                epoch: "e1".into(),
                last: EntryId {
                    offset: *offset,
                    n: *n,
                },
            },
        );
    }
    c.encode()
}

/// Reads frames until `done` holds for what was received (or the deadline passes).
async fn read_while(
    c: &mut Client,
    got: &mut Vec<Got>,
    within: Duration,
    done: impl Fn(&[Got]) -> bool,
) {
    let end = tokio::time::Instant::now() + within;
    while !done(got) {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "timed out; received so far: {got:?}");
        match c.next(left).await {
            Some(Frame::Events { events, .. }) => {
                got.extend(events.into_iter().map(|(p, o, i)| Got::Event(p, o, i)))
            }
            Some(Frame::Gap { reason, missed, .. }) => got.push(Got::Gap(reason, missed)),
            Some(Frame::Welcome { .. }) => {}
            Some(f) => panic!("unexpected frame {f:?}; received so far: {got:?}"),
            None => panic!("connection ended; received so far: {got:?}"),
        }
    }
}

fn events(p: i32, ids: &[(i64, u32)]) -> Vec<Got> {
    ids.iter().map(|(o, n)| Got::Event(p, *o, *n)).collect()
}

fn gap(reason: &str, missed: &[(i32, i64, i64)]) -> Got {
    Got::Gap(reason.into(), missed.to_vec())
}

async fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(
        &parse_metrics(&http_get(addr, "/metrics").await.unwrap().1),
        name,
        labels,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_rolled_back_within_its_epoch_is_a_reset_for_live_clients() {
    deadline(60, async {
        let mut s = Setup::new("rollback", 1).await;
        let first: Vec<(i64, u32)> = (1..=10).map(|o| (o, 1)).collect();
        s.add(0, &first).await;
        let gw = s.gateway().await;
        let mut c = connect(&gw.addr, "from=earliest").await.unwrap();
        let mut got = Vec::new();
        read_while(&mut c, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 10, 1))
        })
        .await;
        assert_eq!(got, events(0, &first));
        got.clear();
        // The stream goes back to 5 entries, meta (and epoch) unchanged: a failover to a
        // replica that lagged, or the key deleted and written again with less.
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(s.keys.stream(0)).ignore();
        s.xadds(&mut pipe, 0, &first[..5]);
        let _: () = pipe.query_async(&mut s.conn).await.unwrap();
        read_while(&mut c, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 5, 1))
        })
        .await;
        let mut want = vec![gap("reset", &[(0, 11, -1)])];
        want.extend(events(0, &first[..5]));
        assert_eq!(got, want, "a reset gap, then the stream from its start");
        assert_eq!(
            metric(&gw.addr, ROLLBACKS, &[("reason", "rolled_back")]).await,
            1.0
        );
        // It goes on from there.
        got.clear();
        s.add(0, &[(6, 1), (7, 1)]).await;
        read_while(&mut c, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 7, 1))
        })
        .await;
        assert_eq!(got, events(0, &[(6, 1), (7, 1)]));
        // A cursor from before the rollback, beyond the stream's new end, is refused
        // (docs/PROTOCOL.md, Cursors): the gateway cannot tell it from a forged one.
        let old = cursor_at(&[(0, 10, 1)]);
        match connect(&gw.addr, &format!("from={old}")).await {
            Err((400, body)) => assert!(body.contains("beyond"), "{body}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a cursor beyond the stream was accepted"),
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_key_lost_while_its_meta_stayed_is_a_reset_for_live_and_resumed_clients() {
    deadline(60, async {
        let mut s = Setup::new("key-lost", 1).await;
        let first: Vec<(i64, u32)> = (1..=10).map(|o| (o, 1)).collect();
        s.add(0, &first).await;
        let gw = s.gateway().await;
        let mut live = connect(&gw.addr, "from=earliest").await.unwrap();
        let mut got = Vec::new();
        read_while(&mut live, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 10, 1))
        })
        .await;
        got.clear();
        // The stream key is evicted (or deleted); the meta stays, so the ingest goes on at
        // offset 11 in a new key: 1..=10 are gone, and nothing in the new stream says so.
        let later: Vec<(i64, u32)> = (11..=15).map(|o| (o, 1)).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(s.keys.stream(0)).ignore();
        s.xadds(&mut pipe, 0, &later);
        let _: () = pipe.query_async(&mut s.conn).await.unwrap();
        // The live client had everything before: it is told all the same (the tail cannot
        // know what each client had), then gets the stream from its start.
        read_while(&mut live, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 15, 1))
        })
        .await;
        let mut want = vec![gap("reset", &[(0, 11, -1)])];
        want.extend(events(0, &later));
        assert_eq!(got, want);
        assert_eq!(
            metric(&gw.addr, ROLLBACKS, &[("reason", "stream_lost")]).await,
            1.0
        );
        // A client that had read up to 5-1 resumes: 6..=10 are gone with the old key.
        let from = cursor_at(&[(0, 5, 1)]);
        let mut c = connect(&gw.addr, &format!("from={from}")).await.unwrap();
        let mut got = Vec::new();
        read_while(&mut c, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 15, 1))
        })
        .await;
        let mut want = vec![gap("reset", &[(0, 6, -1)])];
        want.extend(events(0, &later));
        assert_eq!(got, want, "never a silent skip of 6..=10");
        assert_eq!(
            metric(&gw.addr, ROLLBACKS, &[("reason", "stream_lost")]).await,
            2.0
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_meta_hash_gives_a_new_epoch_whose_entries_come_again_announced() {
    deadline(60, async {
        let mut s = Setup::new("meta-lost", 1).await;
        let first: Vec<(i64, u32)> = (1..=5).map(|o| (o, 1)).collect();
        s.add(0, &first).await;
        let gw = s.gateway().await;
        let mut c = connect(&gw.addr, "from=earliest").await.unwrap();
        let mut got = Vec::new();
        read_while(&mut c, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 5, 1))
        })
        .await;
        got.clear();
        // What the ingest's claim does when the meta hash is gone but the stream is not
        // (reason meta_lost): a new epoch over the same entries.
        let _: () = redis::cmd("HSET")
            .arg(s.keys.meta(0))
            .arg("epoch")
            .arg("e2")
            .query_async(&mut s.conn)
            .await
            .unwrap();
        read_while(&mut c, &mut got, Duration::from_secs(20), |g| {
            g.last() == Some(&Got::Event(0, 5, 1))
        })
        .await;
        let mut want = vec![gap("reset", &[(0, 6, -1)])];
        want.extend(events(0, &first));
        assert_eq!(got, want, "the same entries again, after a reset gap");
        gw.shutdown().await;
    })
    .await;
}
