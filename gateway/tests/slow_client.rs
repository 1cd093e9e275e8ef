//! A client that stops reading long enough for the live buffer to pass it, then reads again,
//! receives everything without a gap (from Redis history). Meanwhile the gateway's memory stays
//! bounded and a fast client on the same replica keeps its latency.

mod common;
use common::*;
use dashstream_testkit::{http_get, metric_sum, parse_metrics};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_catches_up_from_redis_without_gaps_and_costs_no_memory() {
    deadline(300, async {
        let sys = System::new("slow", 2, None).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(100, None)).await;
        sys.wait_streams().await;
        let gw = GatewayProc::spawn(
            &sys,
            &[("GATEWAY_LIVE_BUFFER", "16"), ("GATEWAY_SEND_QUEUE", "4"), ("GATEWAY_MAX_FRAME_BYTES", "16384")],
        )
        .await;

        // Phase A: the fast client alone.
        let mut fast = connect(&gw.addr, "from=latest").await.unwrap();
        let mut fast_rx = Received::default();
        fast_rx.take(&fast.next(Duration::from_secs(5)).await.unwrap());
        let producer = tokio::spawn({
            let (sys, opts) = (sys.clone(), sys.produce_options(6_000, Some(1_000.0)));
            async move { sys.produce(opts).await }
        });
        while !producer.is_finished() {
            if let Some(f) = fast.next(Duration::from_millis(200)).await {
                fast_rx.take(&f);
            }
        }
        let a = producer.await.unwrap();
        read_until(&mut fast, &mut fast_rx, &expected(&a.deliveries), Duration::from_secs(60)).await;
        // The second half only: a new producer's first records wait for its broker session.
        let half = fast_rx.latencies_us.len() / 2;
        let p99_alone = percentile(&fast_rx.latencies_us[half..], 99.0);
        fast_rx.latencies_us.clear();
        let rss_before = gw.rss_kib();

        // Phase B: a slow client joins and stops reading while 20 MB of events flow.
        let mut slow = connect(&gw.addr, "from=latest").await.unwrap();
        let mut slow_rx = Received::default();
        slow_rx.take(&slow.next(Duration::from_secs(5)).await.unwrap());
        let mut opts = sys.produce_options(20_000, Some(2_000.0));
        opts.payload_bytes = 1_000;
        let producer = tokio::spawn({
            let sys = sys.clone();
            async move { sys.produce(opts).await }
        });
        let fast_task = tokio::spawn(async move {
            // Read until the producer's events stop arriving for a while.
            while let Some(f) = fast.next(Duration::from_secs(5)).await {
                fast_rx.take(&f);
            }
            (fast, fast_rx)
        });
        let mut rss_max = rss_before;
        while !producer.is_finished() {
            rss_max = rss_max.max(gw.rss_kib());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let report = producer.await.unwrap();
        let want = expected(&report.deliveries);

        // The slow client reads again: everything, no gap, no duplicate, in order.
        read_until(&mut slow, &mut slow_rx, &want, Duration::from_secs(120)).await;
        assert!(slow_rx.gaps.is_empty(), "no gap while retention holds: {:?}", slow_rx.gaps);
        assert_eq!(slow_rx.duplicates, 0);
        assert_eq!(slow_rx.out_of_order, 0);
        let (_fast, fast_rx) = fast_task.await.unwrap();
        assert!(want.is_subset(&fast_rx.events), "the fast client got everything too");

        let m = parse_metrics(&http_get(&gw.addr, "/metrics").await.unwrap().1);
        assert!(
            metric_sum(&m, "dashstream_gateway_catchup_switches_total", &[]) >= 1.0,
            "the slow client fell behind the live buffer and was fed from Redis"
        );
        // Phase B's second half too, for the same reason as phase A's.
        let half = fast_rx.latencies_us.len() / 2;
        let p99_with_slow = percentile(&fast_rx.latencies_us[half..], 99.0);
        let growth_mib = (rss_max.saturating_sub(rss_before)) as f64 / 1024.0;
        println!(
            "fast client p99: alone {:.1} ms, with a slow client {:.1} ms; gateway RSS {:.1} MiB -> max {:.1} MiB (+{growth_mib:.1} MiB) while 20 MB passed the slow client",
            p99_alone as f64 / 1e3,
            p99_with_slow as f64 / 1e3,
            rss_before as f64 / 1024.0,
            rss_max as f64 / 1024.0
        );
        assert!(growth_mib < 64.0, "gateway memory grew {growth_mib:.1} MiB");
        assert!(
            p99_with_slow < 5 * p99_alone + 250_000,
            "a slow client must not slow a fast one: p99 {p99_alone} us alone, {p99_with_slow} us with it"
        );
    })
    .await;
}
