//! Review M2: a stale claim landing after the real owner's (simulated by overwriting the meta
//! hash's `owner`) fences the legitimate owner's next write. The process still owns the
//! partition in Kafka, so the partition must recover without a restart: every record exactly
//! once, the fenced write counted, and the partition's lag back to 0.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_claim_fences_a_write_but_the_legitimate_owner_recovers() {
    deadline(120, async {
        let h = Harness::new("fencing", 2).await;
        let ingest = h.ingest("i1", &[]);
        let producer = tokio::spawn({
            let (conn, opts) = (h.conn.clone(), h.produce_options(6_000, Some(400.0)));
            async move { dashstream::produce::run(&conn, opts, std::future::pending()).await }
        });
        wait_for(
            "partition 0 written past offset 300",
            Duration::from_secs(30),
            || async { (*h.next_offsets().await?.get(&0)? > 300).then_some(()) },
        )
        .await;

        // A stale claim: another owner token, while this process still owns partition 0.
        let mut c = h.redis().await;
        let _: () = redis::cmd("HSET")
            .arg(h.keys().meta(0))
            .arg("owner")
            .arg("stale-owner-token")
            .query_async(&mut c)
            .await
            .expect("HSET owner");
        let injected_at = h.next_offsets().await.expect("next_offsets")[&0];

        let report = producer.await.unwrap().expect("produce");
        assert!(
            report.deliveries.iter().any(|d| d.partition == 0
                && d.offset > injected_at + 100),
            "test setup: records kept coming to partition 0 after the stale claim"
        );
        let streams = wait_in_streams(&h, &report.deliveries, Duration::from_secs(30)).await;
        assert_exactly_once(&report.deliveries, &streams);

        let m = ingest.metrics().await.expect("metrics");
        let fenced = metric(&m, "dashstream_ingest_fenced_writes_total", &[]);
        assert!(
            fenced >= 1.0,
            "expected dashstream_ingest_fenced_writes_total >= 1 after the stale claim, got {fenced}"
        );
        wait_for(
            "partition 0's lag back to 0",
            Duration::from_secs(20),
            || async {
                let m = ingest.metrics().await?;
                let lag = "dashstream_ingest_partition_lag";
                let series = m.iter().any(|s| {
                    s.name == lag && s.labels.get("partition").map(String::as_str) == Some("0")
                });
                (series && metric(&m, lag, &[("partition", "0")]) == 0.0).then_some(())
            },
        )
        .await;
    })
    .await;
}
