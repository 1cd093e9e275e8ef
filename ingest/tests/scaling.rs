//! Ingest processes in one group scaled 1 -> 3 -> 1 under load: every record exactly once, and
//! after each change every partition is assigned to exactly one process (read from /metrics).

mod common;
use common::*;
use std::time::Duration;

async fn assert_single_owner(procs: &[&IngestProc], partitions: i32) {
    wait_for(
        "every partition owned by exactly one ingest",
        Duration::from_secs(60),
        || async {
            // Settled: each process owns something (12 partitions, at most 3 processes) and the
            // union is every partition exactly once.
            let mut owned = Vec::new();
            for p in procs {
                let mine = p.assigned().await?;
                if mine.is_empty() {
                    return None;
                }
                owned.extend(mine);
            }
            owned.sort();
            (owned == (0..partitions).collect::<Vec<_>>()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_three_one_keeps_exactly_once_and_single_ownership() {
    deadline(300, async {
        let h = Harness::new("scaling", 12).await;
        let mut a = h.ingest("a", &[]);
        let opts = h.produce_options(75_000, Some(2_500.0));
        let producer = tokio::spawn({
            let conn = h.conn.clone();
            async move { dashstream::produce::run(&conn, opts, std::future::pending()).await }
        });
        assert_single_owner(&[&a], 12).await;

        let mut b = h.ingest("b", &[]);
        let mut c = h.ingest("c", &[]);
        assert_single_owner(&[&a, &b, &c], 12).await;

        b.stop().await.expect("b exits");
        c.stop().await.expect("c exits");
        assert_single_owner(&[&a], 12).await;

        let report = producer.await.unwrap().expect("produce");
        h.wait_written(&report.deliveries, Duration::from_secs(120))
            .await;
        assert_exactly_once(&report.deliveries, &h.read_streams().await);
        a.stop().await;
        let committed = h.committed();
        for (p, hw) in h.high_watermarks() {
            assert_eq!(committed[&p], hw, "partition {p} committed");
        }
    })
    .await;
}
