//! `kill -9` of the ingest at random moments while a producer runs: afterwards every produced
//! record is in its stream exactly once.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    deadline(300, async {
        let h = Harness::new("kill9", 6).await;
        let mut ingest = h.ingest("i1", &[]);
        let mut opts = h.produce_options(60_000, Some(2_500.0));
        opts.batch = 2;
        let producer = tokio::spawn({
            let conn = h.conn.clone();
            async move { dashstream::produce::run(&conn, opts, std::future::pending()).await }
        });
        let mut kills = 0;
        while !producer.is_finished() || kills < 10 {
            // Let it get going (written something since the last start), then kill at a random
            // moment within the next 1.5 s.
            let before: i64 = h.next_offsets().await.unwrap_or_default().values().sum();
            wait_for(
                "progress after restart",
                Duration::from_secs(60),
                || async {
                    let now: i64 = h.next_offsets().await?.values().sum();
                    (now > before || producer.is_finished()).then_some(())
                },
            )
            .await;
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1500)).await;
            ingest.restart_after_kill9();
            kills += 1;
        }
        let report = producer.await.unwrap().expect("produce");
        assert!(kills >= 10, "killed {kills} times");
        h.wait_written(&report.deliveries, Duration::from_secs(120))
            .await;
        assert_exactly_once(&report.deliveries, &h.read_streams().await);
        let m = ingest.metrics().await.expect("metrics");
        assert_eq!(
            metric(&m, "dashstream_ingest_invalid_records_total", &[]),
            0.0
        );
    })
    .await;
}
