//! 50k events over 12 partitions reach Redis exactly once, in offset order, and the committed
//! offset of each partition is the next offset to read (o + 1), not the last one read.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_events_over_twelve_partitions_arrive_exactly_once() {
    deadline(240, async {
        let h = Harness::new("exactly-once", 12).await;
        let mut ingest = h.ingest("i1", &[]);
        // Half before the ingest is ready, half while it runs; batches and compression mixed in.
        let mut first = h.produce_options(25_000, None);
        first.compress = true;
        let a = h.produce(first).await;
        let mut second = h.produce_options(25_000, Some(10_000.0));
        second.batch = 5;
        let b = h.produce(second).await;
        let deliveries: Vec<_> = a.deliveries.iter().chain(&b.deliveries).copied().collect();
        assert_eq!(a.events + b.events, 50_000);
        h.wait_written(&deliveries, Duration::from_secs(120)).await;
        assert_exactly_once(&deliveries, &h.read_streams().await);

        // A clean stop commits exactly the next offset to read: the high watermark.
        let status = ingest.stop().await.expect("ingest exits");
        assert!(
            status.success(),
            "clean exit: {status:?}\n{}",
            ingest.log_tail()
        );
        assert_eq!(
            h.committed(),
            h.high_watermarks(),
            "committed offsets must be o + 1"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_buffers_and_writes_lose_nothing() {
    deadline(180, async {
        let h = Harness::new("tiny", 2).await;
        let report = h.produce(h.produce_options(2_000, None)).await;
        let ingest = h.ingest(
            "i1",
            &[
                ("INGEST_PARTITION_BUFFER_KB", "64"),
                ("INGEST_WRITE_BATCH_EVENTS", "4"),
            ],
        );
        h.wait_written(&report.deliveries, Duration::from_secs(120))
            .await;
        assert_exactly_once(&report.deliveries, &h.read_streams().await);
        let m = ingest.metrics().await.expect("metrics");
        assert!(
            metric(
                &m,
                "dashstream_ingest_redis_write_duration_seconds_count",
                &[]
            ) >= 500.0,
            "writes of at most 4 events each"
        );
    })
    .await;
}
