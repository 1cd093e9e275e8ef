//! A stalled pipeline (its Redis frozen with SIGSTOP, so writes hang) while the producer
//! continues: the lag metric read from /metrics keeps rising, and so does staleness, for the
//! whole stall; neither is ever reported as 0. After the stall everything is delivered.
//! And a stuck partition that changes owner keeps its staleness: the new owner continues it
//! from the time the last write recorded in the stream's meta (operability review F2).

mod common;
use common::*;
use dashstream_testkit as testkit;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_shows_lag_and_staleness_rising_never_zero() {
    deadline(240, async {
        let redis = RedisServer::start();
        let h = Harness::with_redis("stall", 2, testkit::services(), redis.url()).await;
        let ingest = h.ingest("i1", &[("INGEST_LAG_INTERVAL_MS", "250")]);
        let producer = tokio::spawn({
            let (conn, opts) = (h.conn.clone(), h.produce_options(30_000, Some(1_000.0)));
            async move { dashstream::produce::run(&conn, opts, std::future::pending()).await }
        });
        wait_for("ingest writing", Duration::from_secs(60), || async {
            let n: i64 = h.next_offsets().await?.values().filter(|v| **v > 0).sum();
            (n > 500).then_some(())
        })
        .await;

        redis.pause();
        let sample = || async {
            let m = ingest.metrics().await.expect("metrics during the stall");
            (
                metric(&m, "dashstream_ingest_partition_lag", &[]),
                metric(&m, "dashstream_ingest_partition_staleness_seconds", &[]),
                m.iter()
                    .filter(|s| s.name == "dashstream_ingest_partition_lag")
                    .count(),
            )
        };
        // Give the pipeline a moment to notice (its in-flight write hangs), then watch 12 s.
        let mut last = wait_for("lag to start rising", Duration::from_secs(20), || async {
            let s = sample().await;
            (s.0 > 0.0 && s.1 > 1.0).then_some(s)
        })
        .await;
        let first = last;
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = sample().await;
            assert_eq!(
                now.2, 2,
                "a lag series per assigned partition, all the time"
            );
            assert!(
                now.0 >= last.0 && now.0 > 0.0,
                "lag must never fall while stalled: {last:?} -> {now:?}"
            );
            assert!(
                now.1 > last.1,
                "staleness must keep rising while stalled: {last:?} -> {now:?}"
            );
            last = now;
        }
        assert!(
            last.0 >= first.0 + 5_000.0,
            "lag rose with the producer (1000/s for 12 s): {first:?} -> {last:?}"
        );
        redis.resume();
        let report = producer.await.unwrap().expect("produce");
        h.wait_written(&report.deliveries, Duration::from_secs(120))
            .await;
        assert_exactly_once(&report.deliveries, &h.read_streams().await);
        wait_for(
            "lag back to 0 after the stall",
            Duration::from_secs(30),
            || async {
                let s = sample().await;
                (s.0 == 0.0 && s.1 < 5.0).then_some(())
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_that_changes_owner_keeps_its_staleness() {
    deadline(180, async {
        let h = Harness::new("stuckowner", 1).await;
        let mut first = h.ingest("i1", &[]);
        let report = h.produce(h.produce_options(100, None)).await;
        h.wait_written(&report.deliveries, Duration::from_secs(60))
            .await;
        let progress_us: i64 = h
            .meta_field(0, "progress_us")
            .await
            .expect("a write records its time in the meta")
            .parse()
            .unwrap();
        assert!((dashstream::now_us() - progress_us).abs() < 120_000_000);
        first.stop().await;

        // The partition last moved 10 minutes ago, and its stream cannot be written any more
        // (a key of another type: every write fails, the claim still succeeds).
        h.stick_partition(0, Duration::from_secs(600)).await;
        h.produce(h.produce_options(20, None)).await;

        let second = h.ingest("i2", &[]);
        let (staleness, lag) = wait_for(
            "the new owner's staleness to continue from the meta",
            Duration::from_secs(60),
            || async {
                let m = second.metrics().await?;
                let lag = metric(&m, "dashstream_ingest_partition_lag", &[("partition", "0")]);
                let staleness = metric(
                    &m,
                    "dashstream_ingest_partition_staleness_seconds",
                    &[("partition", "0")],
                );
                (lag > 0.0 && staleness >= 600.0).then_some((staleness, lag))
            },
        )
        .await;
        assert!(staleness < 900.0, "staleness {staleness}");
        assert!(lag >= 20.0, "lag {lag}");
    })
    .await;
}
