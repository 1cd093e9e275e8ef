//! `/readyz` reports a tail loop that stopped advancing although the streams grew (the failure
//! of centrifugo#1189): the progress watcher compares Redis with the loop's position.

mod common;
use common::*;
use dashstream::http::Readiness;
use dashstream::keys::StreamKeys;
use dashstream_gateway::cursor::{EntryId, PartitionPos};
use dashstream_gateway::metrics::Metrics;
use dashstream_gateway::reader::{watch_progress, Live};
use dashstream_gateway::streams::Streams;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_loop_left_behind_by_growing_streams_is_not_ready() {
    deadline(60, async {
        let services = dashstream_testkit::services();
        let prefix = unique("readiness");
        let keys = StreamKeys::new(&prefix, "t");
        let client = redis::Client::open(services.redis_url.as_str()).unwrap();
        let mut c = client
            .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(keys.meta(0))
            .arg("epoch")
            .arg("e1")
            .query_async(&mut c)
            .await
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(keys.stream(0))
            .arg("5-1")
            .arg("ev")
            .arg("x")
            .query_async(&mut c)
            .await
            .unwrap();

        let metrics = Arc::new(Metrics::new(&prometheus::Registry::new()).unwrap());
        let cm = dashstream::redis_config::RedisConn::Single(
            redis::aio::ConnectionManager::new(client.clone())
                .await
                .unwrap(),
        );
        let streams = Streams::new(
            cm.clone(),
            cm,
            keys.clone(),
            Duration::from_secs(2),
            metrics,
        );
        let live = Live::new(16, 256 * 1024);
        // A loop that "read" up to 1-1 and then stopped.
        live.tops.write().unwrap().insert(
            0,
            PartitionPos {
                epoch: "e1".into(),
                last: EntryId { offset: 1, n: 1 },
            },
        );
        let stop = CancellationToken::new();
        tokio::spawn(watch_progress(
            live.clone(),
            streams,
            Duration::from_millis(300),
            stop.clone(),
        ));
        let reasons = wait_for(
            "readiness to report the stalled loop",
            Duration::from_secs(30),
            || {
                let live = live.clone();
                async move {
                    live.check()
                        .err()
                        .filter(|r| r.iter().any(|r| r.contains("streams grew")))
                }
            },
        )
        .await;
        assert!(
            reasons.iter().any(|r| r.contains("has not read them")),
            "{reasons:?}"
        );

        // Once the loop catches up, that reason goes away.
        live.tops.write().unwrap().insert(
            0,
            PartitionPos {
                epoch: "e1".into(),
                last: EntryId { offset: 5, n: 1 },
            },
        );
        wait_for("the stall reason to clear", Duration::from_secs(10), || {
            let live = live.clone();
            async move {
                live.check()
                    .err()
                    .is_none_or(|r| !r.iter().any(|r| r.contains("streams grew")))
                    .then_some(())
            }
        })
        .await;
        stop.cancel();
    })
    .await;
}
