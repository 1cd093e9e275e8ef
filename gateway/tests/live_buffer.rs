//! The live buffer is bounded in bytes (review M5): a client that stops reading cannot keep
//! the replica's shared ring growing. Once the ring holds more than
//! `GATEWAY_LIVE_BUFFER_BYTES`, the sessions behind let go of it and later read what they
//! missed from Redis, so the stalled client still gets every event once, and a reading client
//! is not affected. The streams are written straight into Redis in the ingest's layout.

mod common;
use common::*;
use dashstream::keys::StreamKeys;
use dashstream::proto::{Event, Header};
use dashstream_testkit::{http_get, metric_sum, parse_metrics};
use prost::Message as _;
use std::collections::BTreeSet;
use std::time::Duration;

const EVENTS: i64 = 20_000;
const BUDGET: usize = 1024 * 1024;

fn event(o: i64) -> Vec<u8> {
    Event {
        header: Some(Header {
            message_id: vec![1; 16].into(),
            timestamp_us: dashstream::now_us(),
            tenant_id: "t".into(),
            thread_id: "thread".into(),
            sequence: o as u64 + 1,
            event_type: "token".into(),
            schema_version: 1,
        }),
        payload: format!("{{\"pad\":\"{}\"}}", "x".repeat(1000))
            .into_bytes()
            .into(),
        content_type: "application/json".into(),
    }
    .encode_to_vec()
}

async fn gauge(addr: &str, name: &str) -> f64 {
    metric_sum(
        &parse_metrics(&http_get(addr, "/metrics").await.unwrap().1),
        name,
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_client_cannot_grow_the_live_buffer_past_its_byte_budget() {
    deadline(240, async {
        let sys = System::new("ringbytes", 1, None).await;
        let client = redis::Client::open(sys.redis_url.as_str()).unwrap();
        let mut c = client
            .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
            .await
            .unwrap();
        let keys = StreamKeys::new(&sys.prefix, &sys.topic);
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(keys.meta(0))
            .arg("epoch")
            .arg("00000000feedbeef")
            .arg("next_offset")
            .arg(-1)
            .ignore()
            .cmd("SADD")
            .arg(keys.partitions())
            .arg(0)
            .ignore()
            .cmd("XADD")
            .arg(keys.stream(0))
            .arg("0-1")
            .arg("ev")
            .arg(event(0))
            .ignore()
            .query_async(&mut c)
            .await
            .unwrap();
        let gw = sys
            .gateway(
                "g",
                &[
                    &format!("--live-buffer-bytes={BUDGET}"),
                    "--send-queue-bytes=65536",
                    // Passes of at most ~64 KiB of events, so the budget spans several.
                    "--tail-read-bytes=65536",
                ],
            )
            .await;

        // A client that reads, and one that stops reading (a tiny receive buffer, so the
        // kernel cannot absorb the stream for it).
        let mut reading = connect(&gw.addr, "from=latest").await.unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(gw.addr.parse().unwrap()).await.unwrap();
        let mut stalled = Client::over(&gw.addr, "from=latest", stream).await;

        let writer = {
            let mut c = c.clone();
            let key = keys.stream(0);
            tokio::spawn(async move {
                for chunk in (1..EVENTS).collect::<Vec<_>>().chunks(50) {
                    let mut pipe = redis::pipe();
                    for o in chunk {
                        pipe.cmd("XADD")
                            .arg(&key)
                            .arg(format!("{o}-1"))
                            .arg("ev")
                            .arg(event(*o))
                            .ignore();
                    }
                    let _: () = pipe.query_async(&mut c).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let want: BTreeSet<(i32, i64, u32)> = (1..EVENTS).map(|o| (0, o, 1)).collect();
        let mut fast = Received::default();
        let mut peak = 0.0f64;
        let watch = {
            let addr = gw.addr.clone();
            tokio::spawn(async move {
                let mut peak = 0.0f64;
                for _ in 0..400 {
                    peak = peak.max(gauge(&addr, "dashstream_gateway_live_buffer_bytes").await);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                peak
            })
        };
        read_until(&mut reading, &mut fast, &want, Duration::from_secs(120)).await;
        writer.await.unwrap();
        assert_eq!(fast.duplicates, 0);
        assert!(fast.gaps.is_empty(), "{:?}", fast.gaps);

        let sheds = gauge(&gw.addr, "dashstream_gateway_live_buffer_sheds_total").await;
        assert!(
            sheds >= 1.0,
            "the stalled session let go of the ring ({sheds})"
        );
        peak = peak.max(watch.await.unwrap());
        // The budget, plus what was in flight when it was crossed (a few passes).
        assert!(
            peak <= (BUDGET * 4) as f64,
            "the live buffer peaked at {peak} bytes with a budget of {BUDGET}"
        );

        // The stalled client reads again: everything, once, from Redis where it left the ring.
        let mut slow = Received::default();
        read_until(&mut stalled, &mut slow, &want, Duration::from_secs(120)).await;
        assert_eq!(slow.duplicates, 0);
        assert_eq!(slow.out_of_order, 0);
        assert!(slow.gaps.is_empty(), "{:?}", slow.gaps);
    })
    .await;
}
