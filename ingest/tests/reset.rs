//! A lost history is detected and recorded as a new epoch, never written over silently:
//! Redis flushed under a running ingest, and the topic deleted and re-created.

mod common;
use common::*;
use dashstream_testkit as testkit;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;

async fn epoch(h: &Harness, p: i32) -> Option<String> {
    let mut c = h.redis().await;
    redis::cmd("HGET")
        .arg(h.keys().meta(p))
        .arg("epoch")
        .query_async(&mut c)
        .await
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flush_starts_a_new_epoch_and_keeps_writing() {
    deadline(180, async {
        let redis = RedisServer::start();
        let h = Harness::with_redis("flush", 2, testkit::services(), redis.url()).await;
        let ingest = h.ingest("i1", &[]);
        let before = h.produce(h.produce_options(1_000, None)).await;
        h.wait_written(&before.deliveries, Duration::from_secs(60))
            .await;
        let old = (epoch(&h, 0).await.unwrap(), epoch(&h, 1).await.unwrap());

        let mut c = h.redis().await;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        let after = h.produce(h.produce_options(1_000, None)).await;
        h.wait_written(&after.deliveries, Duration::from_secs(60))
            .await;

        // The new epoch holds exactly what came after the flush.
        assert_exactly_once(&after.deliveries, &h.read_streams().await);
        let new = (epoch(&h, 0).await.unwrap(), epoch(&h, 1).await.unwrap());
        assert_ne!(old.0, new.0, "partition 0 has a new epoch");
        assert_ne!(old.1, new.1, "partition 1 has a new epoch");
        let m = ingest.metrics().await.unwrap();
        assert_eq!(
            metric(
                &m,
                "dashstream_ingest_stream_resets_total",
                &[("reason", "flushed")]
            ),
            2.0,
            "one reset per partition"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_starts_a_new_epoch_instead_of_being_skipped() {
    deadline(240, async {
        let h = Harness::new("recreate", 2).await;
        let mut ingest = h.ingest("i1", &[]);
        let before = h.produce(h.produce_options(2_000, None)).await;
        h.wait_written(&before.deliveries, Duration::from_secs(60))
            .await;
        let old = (epoch(&h, 0).await.unwrap(), epoch(&h, 1).await.unwrap());
        ingest.stop().await;

        // Delete and re-create the topic: offsets start again at 0.
        let admin: AdminClient<DefaultClientContext> = h.conn.client_config().create().unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        admin.delete_topics(&[&h.topic], &opts).await.unwrap();
        let spec = dashstream::provision::TopicSpec {
            name: h.topic.clone(),
            partitions: 2,
            replication: 1,
            retention_ms: 3_600_000,
        };
        wait_for("topic re-created", Duration::from_secs(60), || async {
            let r = dashstream::provision::provision(&h.conn, std::slice::from_ref(&spec)).await;
            matches!(r.ok()?.first()?.1, dashstream::provision::Outcome::Created).then_some(())
        })
        .await;
        let after = h.produce(h.produce_options(300, None)).await;
        assert!(
            after.deliveries.iter().all(|d| d.offset < 1_000),
            "offsets restarted"
        );

        let ingest = h.ingest("i2", &[]);
        // The old streams are ahead of the new topic; only a new epoch makes progress visible.
        wait_for(
            "a new epoch on both partitions",
            Duration::from_secs(90),
            || async {
                let now = (epoch(&h, 0).await?, epoch(&h, 1).await?);
                (now.0 != old.0 && now.1 != old.1).then_some(())
            },
        )
        .await;
        h.wait_written(&after.deliveries, Duration::from_secs(90))
            .await;
        assert_exactly_once(&after.deliveries, &h.read_streams().await);
        let m = ingest.metrics().await.unwrap();
        assert_eq!(
            metric(
                &m,
                "dashstream_ingest_stream_resets_total",
                &[("reason", "topic_recreated")]
            ),
            2.0
        );
    })
    .await;
}
