//! What Redis no longer has is said explicitly: a cursor older than retention gets one `gap`
//! naming the missed range, a flushed Redis gets `gap` with reason `reset`; and a Redis
//! outage delays clients without losing anything.

mod common;
use common::*;
use dashstream_testkit::{self as testkit, http_get};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_older_than_retention_gets_one_gap_with_the_range_then_continuous_events() {
    deadline(180, async {
        let sys = System::new("retention", 1, None).await;
        let ingest = sys
            .ingest(&["--stream-maxlen=100", "--write-batch-events=10"])
            .await;
        sys.produce(sys.produce_options(50, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &[]).await;
        let mut c = connect(&gw.addr, "from=earliest").await.unwrap();
        let mut rx = Received::default();
        let first: std::collections::BTreeSet<_> = (0..50).map(|o| (0, o, 1)).collect();
        read_until(&mut c, &mut rx, &first, Duration::from_secs(30)).await;
        let old_cursor = rx.cursor.clone().unwrap();
        let last_seen = rx.last[&0].0;
        drop(c);

        // Enough new events that retention trims far past the cursor.
        let report = sys.produce(sys.produce_options(3_000, None)).await;
        let want_last = report.deliveries.iter().map(|d| d.offset).max().unwrap();
        wait_for("ingest caught up", Duration::from_secs(60), || async {
            let s = testkit::parse_metrics(&http_get(&ingest.addr, "/metrics").await.ok()?.1);
            (testkit::metric_sum(&s, "dashstream_ingest_partition_acked_offset", &[]) as i64
                > want_last)
                .then_some(())
        })
        .await;

        let mut c = connect(&gw.addr, &format!("from={old_cursor}"))
            .await
            .unwrap();
        let mut rx = Received::default();
        rx.take(&c.next(Duration::from_secs(5)).await.unwrap());
        let gap = c.next(Duration::from_secs(5)).await.unwrap();
        let Frame::Gap { reason, missed, .. } = &gap else {
            panic!("expected a gap first, got {gap:?}")
        };
        assert_eq!(reason, "retention");
        assert_eq!(missed.len(), 1, "one range per partition: {missed:?}");
        let (p, from, to) = missed[0];
        assert_eq!(
            (p, from),
            (0, last_seen + 1),
            "the range starts right after the cursor"
        );
        assert!(to > from, "{missed:?}");
        // Then every retained event after the range, continuously, up to the end.
        let want: std::collections::BTreeSet<_> =
            ((to + 1)..=want_last).map(|o| (0, o, 1)).collect();
        read_until(&mut c, &mut rx, &want, Duration::from_secs(30)).await;
        assert_eq!(rx.events, want, "exactly the events after the missed range");
        assert_eq!(rx.duplicates + rx.out_of_order, 0);
        assert!(rx.gaps.is_empty(), "only one gap");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushed_redis_is_announced_as_a_reset_gap() {
    deadline(180, async {
        let redis = RedisServer::start();
        let sys = System::new("reset", 2, Some(redis.url())).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(200, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &[]).await;
        let mut clients = Vec::new();
        for q in ["from=latest", "from=latest&format=protobuf"] {
            let mut c = connect(&gw.addr, q).await.unwrap();
            let mut rx = Received::default();
            rx.take(&c.next(Duration::from_secs(5)).await.unwrap());
            clients.push((c, rx));
        }
        let mut conn = redis::Client::open(redis.url().as_str())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let after = sys.produce(sys.produce_options(500, None)).await;
        let want = expected(&after.deliveries);
        for (c, rx) in clients.iter_mut() {
            read_until(c, rx, &want, Duration::from_secs(60)).await;
            let resets: Vec<_> = rx
                .gaps
                .iter()
                .filter(|g| matches!(g, Frame::Gap { reason, .. } if reason == "reset"))
                .collect();
            assert_eq!(
                resets.len(),
                2,
                "one reset gap per partition: {:?}",
                rx.gaps
            );
            assert_eq!(rx.duplicates, 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_turns_readyz_503_and_clients_continue_without_loss() {
    deadline(240, async {
        let mut redis = RedisServer::start();
        let sys = System::new("gw-outage", 2, Some(redis.url())).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(100, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &[]).await;
        let mut c = connect(&gw.addr, "from=latest").await.unwrap();
        let mut rx = Received::default();
        rx.take(&c.next(Duration::from_secs(5)).await.unwrap());
        let producer = tokio::spawn({
            let (sys, opts) = (sys.clone(), sys.produce_options(10_000, Some(500.0)));
            async move { sys.produce(opts).await }
        });
        // Stop Redis while events flow: once the client has received some.
        while rx.events.len() < 200 {
            let f = c
                .next(Duration::from_secs(30))
                .await
                .expect("events flowing");
            rx.take(&f);
        }
        redis.stop();
        let (status, body) = wait_for("/readyz 503", Duration::from_secs(20), || async {
            http_get(&gw.addr, "/readyz")
                .await
                .ok()
                .filter(|(s, _)| *s == 503)
        })
        .await;
        assert!(body.contains("redis"), "{status}: {body}");
        tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself
        redis.restart();
        wait_for("/readyz 200 again", Duration::from_secs(30), || async {
            (http_get(&gw.addr, "/readyz").await.ok()?.0 == 200).then_some(())
        })
        .await;
        let report = producer.await.unwrap();
        let want = expected(&report.deliveries);
        read_until(&mut c, &mut rx, &want, Duration::from_secs(90)).await;
        assert_eq!(rx.duplicates, 0);
        assert_eq!(rx.out_of_order, 0);
        assert!(rx.gaps.is_empty(), "{:?}", rx.gaps);
    })
    .await;
}
