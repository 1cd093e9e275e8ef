//! Ingest processes in one group scaled 1 -> 3 -> 1 under load: every record exactly once, and
//! after each change every partition is assigned to exactly one process (read from /metrics).
//! No process reports a sequence gap: every producer thread's sequence is contiguous, so a gap
//! is false (review m1: a tracker kept across a partition moving away and coming back).

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

        // Their last scrape before exiting, drain included, for the sequence check below.
        let (status, b_metrics) = b.stop_with_last_metrics().await;
        status.expect("b exits");
        let (status, c_metrics) = c.stop_with_last_metrics().await;
        status.expect("c exits");
        assert_single_owner(&[&a], 12).await;

        let report = producer.await.unwrap().expect("produce");
        h.wait_written(&report.deliveries, Duration::from_secs(120))
            .await;
        assert_exactly_once(&report.deliveries, &h.read_streams().await);

        // The producer sequences each of its threads 1, 2, 3... (ProduceOptions' generator), and
        // nothing was lost, so no process may count a gap.
        let a_metrics = a.metrics().await;
        let gaps = "dashstream_ingest_sequence_anomalies_total";
        let mut per_process = Vec::new();
        for (name, m) in [("a", &a_metrics), ("b", &b_metrics), ("c", &c_metrics)] {
            let m = m
                .as_ref()
                .unwrap_or_else(|| panic!("no /metrics scrape of {name}"));
            assert!(
                m.iter()
                    .any(|s| s.name == gaps
                        && s.labels.get("kind").map(String::as_str) == Some("gap")),
                "{name} exports no {gaps}{{kind=\"gap\"}} series"
            );
            per_process.push((name, metric(m, gaps, &[("kind", "gap")])));
        }
        let total: f64 = per_process.iter().map(|(_, v)| v).sum();
        assert_eq!(
            total, 0.0,
            "{gaps}{{kind=\"gap\"}} summed over every ingest must be 0 (contiguous producer \
             sequences, nothing lost): {per_process:?}"
        );
        a.stop().await;
        let committed = h.committed();
        for (p, hw) in h.high_watermarks() {
            assert_eq!(committed[&p], hw, "partition {p} committed");
        }
    })
    .await;
}
