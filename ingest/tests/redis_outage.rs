//! Redis stopped for 10 s under load: no loss, no duplicate; committed offsets never pass
//! what Redis holds; /readyz goes 503 and back; the infrastructure-error metric rises and the
//! processing-error metric does not.

mod common;
use common::*;
use dashstream_testkit as testkit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_delays_events_but_never_loses_or_doubles_them() {
    deadline(300, async {
        let mut redis = RedisServer::start();
        let h = Harness::with_redis("redis-outage", 4, testkit::services(), redis.url()).await;
        let ingest = h.ingest("i1", &[]);
        wait_for("ready", Duration::from_secs(60), || async {
            (ingest.readyz().await?.0 == 200).then_some(())
        })
        .await;
        let opts = h.produce_options(40_000, Some(2_000.0));
        let producer = tokio::spawn({
            let conn = h.conn.clone();
            async move { dashstream::produce::run(&conn, opts, std::future::pending()).await }
        });

        // Committed offsets sampled all along must never pass Redis's next_offset, read after.
        let done = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (done, h) = (done.clone(), h.clone());
            async move {
                let mut checked = 0;
                while !done.load(Ordering::Relaxed) {
                    let committed = tokio::task::spawn_blocking({
                        let h = h.clone();
                        move || h.committed()
                    })
                    .await
                    .unwrap();
                    let redis_next = loop {
                        if let Some(n) = h.next_offsets().await {
                            break n;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    };
                    for (p, c) in &committed {
                        assert!(
                            *c <= redis_next[p],
                            "partition {p}: committed {c} > Redis next_offset {}",
                            redis_next[p]
                        );
                    }
                    checked += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                checked
            }
        });

        wait_for("some events written", Duration::from_secs(60), || async {
            let n: i64 = h.next_offsets().await?.values().filter(|v| **v > 0).sum();
            (n > 2_000).then_some(())
        })
        .await;
        let before = ingest.metrics().await.expect("metrics");
        redis.stop();
        let (status, body) = wait_for("/readyz 503", Duration::from_secs(20), || async {
            ingest.readyz().await.filter(|(s, _)| *s == 503)
        })
        .await;
        assert_eq!(status, 503);
        assert!(body.contains("redis"), "the reason names redis: {body}");
        tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself
        let during = ingest.metrics().await.expect("metrics while Redis is down");
        redis.restart();
        wait_for("/readyz 200 again", Duration::from_secs(30), || async {
            (ingest.readyz().await?.0 == 200).then_some(())
        })
        .await;

        let report = producer.await.unwrap().expect("produce");
        h.wait_written(&report.deliveries, Duration::from_secs(120))
            .await;
        done.store(true, Ordering::Relaxed);
        let checks = sampler.await.expect("committed offsets never passed Redis");
        assert!(checks > 5, "only {checks} offset samples");
        assert_exactly_once(&report.deliveries, &h.read_streams().await);

        let after = ingest.metrics().await.expect("metrics");
        let infra = |m: &[_]| {
            metric(
                m,
                "dashstream_ingest_infra_errors_total",
                &[("system", "redis")],
            )
        };
        assert!(
            infra(&during) > infra(&before),
            "redis infrastructure errors rose during the outage"
        );
        assert_eq!(
            metric(&after, "dashstream_ingest_invalid_records_total", &[]),
            0.0
        );
        // The health gauges the dependency and readiness alerts read, during and after.
        let up =
            |m: &[_], system| metric(m, "dashstream_ingest_dependency_up", &[("system", system)]);
        assert_eq!(up(&during, "redis"), 0.0, "redis down while it is stopped");
        assert_eq!(up(&during, "kafka"), 1.0);
        assert_eq!(metric(&during, "dashstream_ingest_ready", &[]), 0.0);
        assert_eq!(up(&after, "redis"), 1.0, "and up again");
        assert_eq!(metric(&after, "dashstream_ingest_ready", &[]), 1.0);
    })
    .await;
}
