//! Review C1: Redis comes back with an older state (restarted from an RDB snapshot) while
//! Kafka's committed offsets are past it. The range Redis lost is still in Kafka, so the ingest
//! must notice the rollback and re-ingest it: every offset in the stream exactly once, the
//! rollback counted, and the same epoch (nothing was lost for good, so no reset).

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_rollback_is_re_ingested_from_kafka_without_a_hole() {
    deadline(120, async {
        let mut redis = RdbRedis::start();
        let h = Harness::with_own_redis("rollback", 1, redis.url()).await;
        let ingest = h.ingest("i1", &[]);

        let first = h.produce(h.produce_options(1_000, None)).await;
        h.wait_written(&first.deliveries, Duration::from_secs(30))
            .await;
        let epoch = h.meta_field(0, "epoch").await.expect("epoch after 1000");
        let mut c = h.redis().await;
        let _: () = redis::cmd("SAVE").query_async(&mut c).await.expect("SAVE");

        let second = h.produce(h.produce_options(1_000, None)).await;
        h.wait_written(&second.deliveries, Duration::from_secs(30))
            .await;
        // Kafka must be ahead of the snapshot: the group committed past offset 1000.
        let committed = wait_for(
            "the group's committed offset to pass 1000",
            Duration::from_secs(20),
            || async {
                let c = tokio::task::block_in_place(|| h.committed());
                c.get(&0).copied().filter(|o| *o >= 2_000)
            },
        )
        .await;

        redis.crash_and_restart();
        let restored = h.meta_field(0, "next_offset").await;
        assert_eq!(
            restored.as_deref(),
            Some("1000"),
            "test setup: Redis restarted from the snapshot taken at next_offset 1000"
        );

        let third = h.produce(h.produce_options(1_000, None)).await;
        let all: Vec<_> = [first, second, third]
            .into_iter()
            .flat_map(|r| r.deliveries)
            .collect();
        assert_eq!(all.len(), 3_000);
        let streams = wait_in_streams(&h, &all, Duration::from_secs(30)).await;
        assert_exactly_once(&all, &streams);

        let m = ingest.metrics().await.expect("metrics");
        let rollbacks = metric(
            &m,
            "dashstream_ingest_redis_rollbacks_total",
            &[("action", "reingest")],
        );
        let exported = has_metric(&m, "dashstream_ingest_redis_rollbacks_total");
        assert!(
            rollbacks >= 1.0,
            "expected dashstream_ingest_redis_rollbacks_total{{action=\"reingest\"}} >= 1 \
             (Redis came back at next_offset 1000, Kafka had committed {committed}); got {}",
            if exported {
                format!("{}", rollbacks + 0.0)
            } else {
                "no such series".into()
            }
        );
        assert_eq!(
            h.meta_field(0, "epoch").await.as_deref(),
            Some(epoch.as_str()),
            "Kafka still held the lost range: the epoch must stay the same"
        );
    })
    .await;
}
