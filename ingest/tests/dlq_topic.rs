//! Review m7: the DLQ topic is checked at start-up. A `KAFKA_DLQ_TOPIC` naming a topic that does
//! not exist (the broker does not auto-create topics) stops the ingest with exit code 64 and a
//! message naming the setting, instead of blocking a partition at its first invalid record.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dlq_topic_stops_the_ingest_at_start_up_with_exit_64() {
    deadline(60, async {
        let h = Harness::new("no-dlq", 1).await;
        let missing = format!("{}-no-such-dlq", h.topic);
        let mut ingest = h.ingest("i1", &[("KAFKA_DLQ_TOPIC", &missing)]);
        let status = ingest.wait_exit(Duration::from_secs(30)).await;
        let log = std::fs::read_to_string(&ingest.log).unwrap_or_default();
        let status = status.unwrap_or_else(|| {
            panic!(
                "expected exit code 64 at start-up (KAFKA_DLQ_TOPIC={missing} does not exist); \
                 still running after 30 s. Log:\n{}",
                ingest.log_tail()
            )
        });
        assert_eq!(status.code(), Some(64), "exit status; log:\n{log}");
        assert!(
            log.contains("KAFKA_DLQ_TOPIC"),
            "the message must name KAFKA_DLQ_TOPIC; log:\n{log}"
        );
    })
    .await;
}
