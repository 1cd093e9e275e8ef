//! Review M1: partitions that were held back (queues full because Redis is slow) when they were
//! revoked, and later given back to the same process, must be consumed again. Ingest A runs
//! with tiny queues while Redis refuses writes (`CLIENT PAUSE WRITE`); B joins, takes some
//! partitions and leaves again before it could write anything; once Redis accepts writes,
//! every offset of every partition must reach Redis exactly once.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_when_revoked_are_consumed_again_when_they_come_back() {
    deadline(150, async {
        let redis = RedisServer::start();
        let h = Harness::with_own_redis("stale-pause", 4, redis.url()).await;
        // INGEST_PARTITION_QUEUE is the old design's per-partition queue (harmless if unknown).
        let a = h.ingest(
            "a",
            &[
                ("INGEST_PARTITION_QUEUE", "8"),
                ("INGEST_DRAIN_TIMEOUT_MS", "1000"),
            ],
        );
        // A owns and has claimed every partition before Redis stops taking writes.
        let warmup = h.produce(h.produce_options(400, None)).await;
        h.wait_written(&warmup.deliveries, Duration::from_secs(30))
            .await;
        assert_eq!(a.assigned().await, Some(vec![0, 1, 2, 3]));

        let mut c = h.redis().await;
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(120_000)
            .arg("WRITE")
            .query_async(&mut c)
            .await
            .expect("CLIENT PAUSE WRITE");
        let backlog = h.produce(h.produce_options(400, None)).await;
        // Old design: every queue full, so every partition paused (counted once each, since no
        // worker can make progress). A design that never pauses (no such series, or one that
        // stays 0) has nothing to wait for: go on after at most 10 s.
        let pauses = "dashstream_ingest_partition_pauses_total";
        let held_back = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(m) = a.metrics().await {
                    if !has_metric(&m, pauses) || metric(&m, pauses, &[]) >= 4.0 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        eprintln!(
            "A paused all 4 partitions, or exports no pause counter: {}",
            held_back.is_ok()
        );

        // B joins, takes some partitions, and leaves; its drain cannot finish (Redis paused).
        let mut b = h.ingest("b", &[("INGEST_DRAIN_TIMEOUT_MS", "1000")]);
        let taken = wait_for("B to own partitions", Duration::from_secs(30), || async {
            b.assigned().await.filter(|v| !v.is_empty())
        })
        .await;
        b.stop().await.expect("B exits");
        wait_for(
            "A to own all 4 partitions again",
            Duration::from_secs(30),
            || async { (a.assigned().await? == vec![0, 1, 2, 3]).then_some(()) },
        )
        .await;

        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut c)
            .await
            .expect("CLIENT UNPAUSE");
        let after = h.produce(h.produce_options(2_000, None)).await;
        let all: Vec<_> = [warmup, backlog, after]
            .into_iter()
            .flat_map(|r| r.deliveries)
            .collect();
        eprintln!("B took partitions {taken:?} and gave them back to A");
        // 45 s: the old design with 8-record queues needs about 30 s for the other partitions.
        let streams = wait_in_streams(&h, &all, Duration::from_secs(45)).await;
        assert_exactly_once(&all, &streams);
    })
    .await;
}
