//! How the gateway reads the Redis streams, against the real Redis:
//! - one malformed entry (review M4) is skipped, counted once per reader that meets it and
//!   passed, by the tail loop and by history reads; it never stalls a partition;
//! - fifty clients catching up a 200k-entry stream (review M2) do not delay the live tail:
//!   the tail and the watcher have connections of their own, history pages take turns;
//! - the tail's reads stop at their byte budget (review M5), history pages do not;
//! - the metadata every read reports (missing streams, trimming, the largest ID) and entries
//!   whose ID does not fit a cursor.

mod common;
use common::*;
use dashstream::keys::StreamKeys;
use dashstream::proto::{Event, Header};
use dashstream_gateway::cursor::EntryId;
use dashstream_gateway::metrics::Metrics;
use dashstream_gateway::streams::{Connections, Streams, StreamsOptions};
use dashstream_testkit::{http_get, metric_sum, parse_metrics};
use futures::StreamExt;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;

const DECODE_ERRORS: &str = "dashstream_gateway_stream_decode_errors_total";

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
        .await
        .unwrap()
}

async fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(
        &parse_metrics(&http_get(addr, "/metrics").await.unwrap().1),
        name,
        labels,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_entry_between_good_ones_is_skipped_counted_and_passed() {
    deadline(240, async {
        let sys = System::new("malformed", 1, None).await;
        let _ingest = sys.ingest(&[]).await;
        let first = sys.produce(sys.produce_options(200, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &[]).await;
        let mut live = connect(&gw.addr, "from=earliest").await.unwrap();
        let mut live_rx = Received::default();
        read_until(
            &mut live,
            &mut live_rx,
            &expected(&first.deliveries),
            Duration::from_secs(60),
        )
        .await;

        // An operator's XADD right after the last entry: no `ev`.
        let keys = StreamKeys::new(&sys.prefix, &sys.topic);
        let mut c = redis_conn(&sys.redis_url).await;
        let top: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
            .arg(keys.stream(0))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        let (o, n) = top[0].0.split_once('-').unwrap();
        let bad = format!("{o}-{}", n.parse::<u64>().unwrap() + 1);
        let _: String = redis::cmd("XADD")
            .arg(keys.stream(0))
            .arg(&bad)
            .arg("foo")
            .arg("bar")
            .query_async(&mut c)
            .await
            .unwrap();
        wait_for(
            "the tail to meet the entry",
            Duration::from_secs(30),
            || async { (metric(&gw.addr, DECODE_ERRORS, &[]).await >= 1.0).then_some(()) },
        )
        .await;
        // The entry is the newest of its stream: the loop must pass it, not re-read it. Two
        // more passes (each one blocks up to 1 s in XREAD) must not count it again.
        let xreads = |addr: String| async move {
            metric(
                &addr,
                "dashstream_gateway_redis_command_duration_seconds_count",
                &[("command", "xread")],
            )
            .await
        };
        let passes = xreads(gw.addr.clone()).await;
        wait_for("two more tail passes", Duration::from_secs(30), || {
            let addr = gw.addr.clone();
            async move { (xreads(addr).await >= passes + 2.0).then_some(()) }
        })
        .await;
        assert_eq!(metric(&gw.addr, DECODE_ERRORS, &[]).await, 1.0);

        // The events after it reach the live client; the counter stays at one.
        let second = sys.produce(sys.produce_options(200, None)).await;
        read_until(
            &mut live,
            &mut live_rx,
            &expected(&second.deliveries),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(live_rx.duplicates + live_rx.out_of_order, 0);
        assert!(live_rx.gaps.is_empty(), "{:?}", live_rx.gaps);
        assert_eq!(metric(&gw.addr, DECODE_ERRORS, &[]).await, 1.0);

        // A history read meets it too (counted once more) and delivers everything around it.
        let mut all = expected(&first.deliveries);
        all.extend(expected(&second.deliveries));
        let mut late = connect(&gw.addr, "from=earliest&format=protobuf")
            .await
            .unwrap();
        let mut late_rx = Received::default();
        read_until(&mut late, &mut late_rx, &all, Duration::from_secs(60)).await;
        assert_eq!(late_rx.events, all);
        assert!(late_rx.gaps.is_empty(), "{:?}", late_rx.gaps);
        assert_eq!(metric(&gw.addr, DECODE_ERRORS, &[]).await, 2.0);
    })
    .await;
}

/// An `Event` as the producer encodes it, stamped now.
fn event(seq: u64, payload: usize) -> Vec<u8> {
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
        payload: vec![b'x'; payload].into(),
        content_type: "application/octet-stream".into(),
    }
    .encode_to_vec()
}

/// A stream in the ingest's layout (meta hash, partition set), written directly.
async fn stream_with_meta(c: &mut redis::aio::MultiplexedConnection, keys: &StreamKeys, p: i32) {
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
        .query_async(c)
        .await
        .unwrap();
}

/// Entries `offsets` (each `<offset>-1`), `ts` on the last of every 1000 as the ingest does.
async fn xadd_range(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    offsets: std::ops::RangeInclusive<i64>,
    payload: usize,
) {
    let offsets: Vec<i64> = offsets.collect();
    for chunk in offsets.chunks(1000) {
        let mut pipe = redis::pipe();
        for (i, o) in chunk.iter().enumerate() {
            let cmd = pipe
                .cmd("XADD")
                .arg(key)
                .arg(format!("{o}-1"))
                .arg("ev")
                .arg(event(*o as u64, payload));
            if i + 1 == chunk.len() {
                cmd.arg("ts").arg(now_us());
            }
            cmd.ignore();
        }
        let _: () = pipe.query_async(c).await.unwrap();
    }
}

/// A WebSocket client that reads and discards frames as fast as it can.
async fn drain_client(addr: String, query: &str) {
    let url = format!("ws://{addr}/ws?{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("load client connects");
    while let Some(Ok(_)) = ws.next().await {}
}

/// A TCP proxy to Redis whose every connection carries at most `rate` bytes per second from
/// Redis back to its client (with a 16 KiB burst), like a link shared by the TCP flows over
/// it. Returns the URL to give the gateway.
async fn throttled_redis(redis_url: &str, rate: f64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let burst = Duration::from_secs_f64(buf.len() as f64 / rate);
                let mut paid_until = tokio::time::Instant::now();
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let now = tokio::time::Instant::now();
                    paid_until = paid_until.max(now) + Duration::from_secs_f64(n as f64 / rate);
                    if paid_until > now + burst {
                        tokio::time::sleep_until(paid_until - burst).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("redis://{addr}")
}

/// Producer-to-client latencies (us) of a live client's events, in arrival order, recorded by
/// a task that reads the client continuously (a client not read meanwhile would measure its
/// own backlog).
#[derive(Clone, Default)]
struct Latencies(Arc<std::sync::Mutex<Vec<i64>>>);

impl Latencies {
    fn follow(mut c: Client) -> (Self, tokio::task::JoinHandle<()>) {
        let l = Self::default();
        let task = tokio::spawn({
            let l = l.clone();
            async move {
                let mut rx = Received::default();
                while let Some(f) = c.next(Duration::from_secs(60)).await {
                    rx.take(&f);
                    l.0.lock().unwrap().append(&mut rx.latencies_us);
                }
            }
        });
        (l, task)
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The `n` latencies after the first `from`, once they have arrived within `within`; or
    /// how many did.
    async fn window(&self, from: usize, n: usize, within: Duration) -> Result<Vec<i64>, usize> {
        let end = tokio::time::Instant::now() + within;
        loop {
            {
                let v = self.0.lock().unwrap();
                if v.len() >= from + n {
                    return Ok(v[from..from + n].to_vec());
                }
                if tokio::time::Instant::now() >= end {
                    return Err(v.len().saturating_sub(from));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Redis calls other than the tail loop's (one `XREAD` and one read per pass) and discovery:
/// history pages, cursor checks and the watcher, whatever their label.
async fn other_redis_calls(addr: &str) -> f64 {
    let m = parse_metrics(&http_get(addr, "/metrics").await.unwrap().1);
    let n = |labels: &[(&str, &str)]| {
        metric_sum(
            &m,
            "dashstream_gateway_redis_command_duration_seconds_count",
            labels,
        )
    };
    n(&[]) - 2.0 * n(&[("command", "xread")]) - n(&[("command", "smembers")])
}

/// Review M2: a catch-up's pages are hundreds of kilobytes each, and a Redis connection
/// answers in order. The gateway reaches Redis over a link of 256 KiB/s per connection (a
/// proxy in this test): what a catch-up costs is bytes on a connection, as in production
/// behind a busy network, rather than this test machine's CPU. Fifty clients then resume from
/// the start of a 200k-entry stream (66 MB each); a live client on the same replica must keep
/// its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_catch_ups_of_a_200k_stream_do_not_delay_the_live_tail() {
    deadline(600, async {
        const HISTORY: i64 = 200_000;
        const LOAD_CLIENTS: usize = 50;
        const LIVE_EVENTS: usize = 1_000;
        let services = dashstream_testkit::services();
        let topic = unique("isolation");
        let sys = System {
            conn: dashstream::kafka::KafkaConnection::plaintext(&services.kafka_brokers),
            redis_url: throttled_redis(&services.redis_url, 256.0 * 1024.0).await,
            services,
            prefix: format!("{topic}-ds"),
            topic,
            partitions: 1,
        };
        let keys = StreamKeys::new(&sys.prefix, &sys.topic);
        let mut c = redis_conn(&sys.services.redis_url).await;
        stream_with_meta(&mut c, &keys, 0).await;
        xadd_range(&mut c, &keys.stream(0), 1..=HISTORY, 200).await;
        // 50 clients connect at once from one address: past the default share of connections
        // not yet upgraded and the upgrade rate (abuse limits, tested in slowloris.rs and
        // limits.rs), not what this measures.
        let gw = GatewayProc::spawn(
            &sys,
            &[
                ("GATEWAY_MAX_PENDING_PER_IP", "200"),
                ("GATEWAY_UPGRADE_RATE_PER_IP", "0"),
            ],
        )
        .await;

        // A live event every 10 ms, stamped when written (straight to Redis).
        let writer = tokio::spawn({
            let (url, key) = (sys.services.redis_url.clone(), keys.stream(0));
            async move {
                let mut c = redis_conn(&url).await;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for o in HISTORY + 1.. {
                    tick.tick().await;
                    let _: String = redis::cmd("XADD")
                        .arg(&key)
                        .arg(format!("{o}-1"))
                        .arg("ev")
                        .arg(event(o as u64, 200))
                        .arg("ts")
                        .arg(now_us())
                        .query_async(&mut c)
                        .await
                        .unwrap();
                }
            }
        });
        let mut live = connect(&gw.addr, "from=latest").await.unwrap();
        assert!(matches!(
            live.next(Duration::from_secs(10)).await,
            Some(Frame::Welcome { .. })
        ));
        let (live, reader) = Latencies::follow(live);
        let window = Duration::from_secs(60);

        // Baseline: the live client alone (after a warm-up).
        let alone = live.window(100, LIVE_EVENTS, window).await.unwrap();

        // Fifty clients catch up the whole stream from its start.
        let before = other_redis_calls(&gw.addr).await;
        let load: Vec<_> = (0..LOAD_CLIENTS)
            .map(|_| {
                tokio::spawn(drain_client(
                    gw.addr.clone(),
                    "from=earliest&format=protobuf",
                ))
            })
            .collect();
        wait_for("the catch-ups to read history", Duration::from_secs(120), || async {
            (other_redis_calls(&gw.addr).await >= before + 2.0).then_some(())
        })
        .await;
        let (started, from) = (other_redis_calls(&gw.addr).await, live.len());
        let loaded = live.window(from, LIVE_EVENTS, window).await;
        let pages = other_redis_calls(&gw.addr).await - started;
        let still_loading = load.iter().filter(|t| !t.is_finished()).count();
        for t in load.iter().chain([&reader]) {
            t.abort();
        }
        writer.abort();
        let loaded = loaded.unwrap_or_else(|got| {
            panic!(
                "catch-ups starved the live tail: {got} of {LIVE_EVENTS} live events in {window:?}"
            )
        });
        let (p50a, p99a) = (percentile(&alone, 50.0), percentile(&alone, 99.0));
        let (p50l, p99l) = (percentile(&loaded, 50.0), percentile(&loaded, 99.0));
        println!(
            "live producer-to-client latency: alone p50 {:.1} ms p99 {:.1} ms; with {LOAD_CLIENTS} catch-ups p50 {:.1} ms p99 {:.1} ms; {pages} history reads meanwhile",
            p50a as f64 / 1e3,
            p99a as f64 / 1e3,
            p50l as f64 / 1e3,
            p99l as f64 / 1e3,
        );
        assert_eq!(still_loading, LOAD_CLIENTS, "the load lasted the whole measurement");
        assert!(
            pages >= 2.0,
            "history kept being read while the live client was measured: {pages} reads"
        );
        // The typical live event is not delayed at all. The catch-ups also take some of the
        // replica's CPU (and this machine is shared): the tail may lag a page's decoding now
        // and then, never the catch-ups' transfers (before review M2 it waited behind all of
        // them, over a minute here).
        assert!(
            p50l < 5 * p50a + 50_000,
            "catch-ups delayed the live tail: p50 {p50a} us alone, {p50l} us with {LOAD_CLIENTS} catch-ups"
        );
        assert!(
            p99l < 5 * p99a + 1_000_000,
            "catch-ups delayed the live tail: p99 {p99a} us alone, {p99l} us with {LOAD_CLIENTS} catch-ups"
        );
    })
    .await;
}

fn streams_for(
    url: &str,
    keys: &StreamKeys,
    tail_read_bytes: usize,
) -> impl std::future::Future<Output = Streams> {
    let (url, keys) = (url.to_string(), keys.clone());
    async move {
        let client = redis::Client::open(url.as_str()).unwrap();
        let cm = || async {
            dashstream::redis_config::RedisConn::Single(
                redis::aio::ConnectionManager::new(client.clone())
                    .await
                    .unwrap(),
            )
        };
        Streams::with_connections(
            Connections {
                tail: cm().await,
                watch: cm().await,
                blocking: cm().await,
                waker: None,
                pool: vec![cm().await, cm().await],
            },
            keys,
            StreamsOptions {
                timeout: Duration::from_secs(5),
                history_concurrency: 2,
                tail_read_bytes,
            },
            Arc::new(Metrics::new(&prometheus::Registry::new()).unwrap()),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reads_stop_at_their_byte_budget_and_history_pages_do_not() {
    deadline(60, async {
        let services = dashstream_testkit::services();
        let keys = StreamKeys::new(&unique("budget"), "t");
        let mut c = redis_conn(&services.redis_url).await;
        for p in [0, 1] {
            stream_with_meta(&mut c, &keys, p).await;
            xadd_range(&mut c, &keys.stream(p), 1..=100, 10_000).await;
        }
        // 64 KiB per pass over two partitions: 32 KiB each, i.e. four 10 KB entries (the one
        // that crosses the budget is the last).
        let streams = streams_for(&services.redis_url, &keys, 64 * 1024).await;
        let from = [(0, EntryId::ZERO), (1, EntryId { offset: 50, n: 1 })];
        let reads = streams.tail().read(&from, 1000).await.unwrap();
        let got: Vec<Vec<i64>> = reads
            .iter()
            .map(|r| r.entries.iter().map(|e| e.id.offset).collect())
            .collect();
        assert_eq!(got, vec![vec![1, 2, 3, 4], vec![51, 52, 53, 54]]);
        assert!(reads
            .iter()
            .all(|r| r.entries.iter().all(|e| !e.is_malformed())));
        // The count still applies below the budget; a budget smaller than one entry still
        // returns one.
        let reads = streams.tail().read(&from, 2).await.unwrap();
        assert_eq!(reads[0].entries.len(), 2);
        let tiny = streams_for(&services.redis_url, &keys, 1024).await;
        let reads = tiny.tail().read(&from, 1000).await.unwrap();
        assert_eq!(reads[0].entries.len(), 1);
        // History pages are full pages whatever their size (sessions rely on it).
        let page = streams.read(&from, 80).await.unwrap();
        assert_eq!(page[0].entries.len(), 80);
        assert_eq!(page[1].entries.len(), 50);
        assert_eq!(
            page[0].entries[0].ingest_us, 0,
            "ts only on the last entry of a write"
        );
        assert!(page[0].entries.last().unwrap().ingest_us == 0);
        assert!(page[1].entries.last().unwrap().ingest_us > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_report_missing_streams_trimming_and_ids_beyond_a_cursor() {
    deadline(60, async {
        let services = dashstream_testkit::services();
        let keys = StreamKeys::new(&unique("meta"), "t");
        let mut c = redis_conn(&services.redis_url).await;
        stream_with_meta(&mut c, &keys, 0).await;
        xadd_range(&mut c, &keys.stream(0), 1..=20, 10).await;
        let _: () = redis::cmd("XTRIM")
            .arg(keys.stream(0))
            .arg("MAXLEN")
            .arg(10)
            .query_async(&mut c)
            .await
            .unwrap();
        // An entry whose sequence does not fit a cursor, then a good one.
        for (id, ev) in [("20-4294967296", event(1, 10)), ("21-1", event(2, 10))] {
            let _: String = redis::cmd("XADD")
                .arg(keys.stream(0))
                .arg(id)
                .arg("ev")
                .arg(ev)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let streams = streams_for(&services.redis_url, &keys, 1 << 20).await;
        let id = |offset, n| EntryId { offset, n };
        for handle in [streams.clone(), streams.tail(), streams.watcher()] {
            // Partition 7 has neither stream nor meta.
            let r = handle
                .read(&[(0, EntryId::ZERO), (7, EntryId::ZERO)], 100)
                .await
                .unwrap();
            assert_eq!(r[0].epoch.as_deref(), Some("e1"));
            assert_eq!(r[0].first, Some(id(11, 1)));
            assert!(r[0].trimmed);
            assert_eq!(r[0].last, id(21, 1));
            let got: Vec<(EntryId, bool)> = r[0]
                .entries
                .iter()
                .map(|e| (e.id, e.is_malformed()))
                .collect();
            let mut want: Vec<(EntryId, bool)> = (11..=20).map(|o| (id(o, 1), false)).collect();
            want.extend([(id(20, u32::MAX), true), (id(21, 1), false)]);
            assert_eq!(got, want);
            assert_eq!(
                (
                    r[1].epoch.clone(),
                    r[1].first,
                    r[1].trimmed,
                    r[1].last,
                    r[1].entries.len()
                ),
                (None, None, false, EntryId::ZERO, 0)
            );
            // Reading on after the saturated position, and after the largest position.
            let r = handle
                .read(&[(0, id(20, u32::MAX)), (0, id(i64::MAX, u32::MAX))], 100)
                .await
                .unwrap();
            assert_eq!(
                r[0].entries.iter().map(|e| e.id).collect::<Vec<_>>(),
                vec![id(21, 1)]
            );
            assert!(r[1].entries.is_empty());
            // Metadata only.
            let r = handle.read(&[(0, EntryId::ZERO)], 0).await.unwrap();
            assert!(r[0].entries.is_empty() && r[0].trimmed && r[0].last == id(21, 1));
        }
        // XREAD from the saturated position waits for what follows it.
        let s = streams.tail();
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            s.wait(&[(0, id(20, u32::MAX))], Duration::from_millis(2000)),
        )
        .await;
        assert!(matches!(waited, Ok(Ok(()))), "{waited:?}");
    })
    .await;
}
