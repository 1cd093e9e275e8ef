//! Kafka's retention overtaking a stopped ingest is an explicit reset, not a silent hole: the
//! group committed offset 100, records 100..149 are deleted before the ingest comes back, so
//! Kafka resets the group's position to 150. The stream must start a new epoch (reset reason
//! `offset_reset`) holding exactly 150..199, rather than keep its epoch with 100..149 missing.

mod common;
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_under_a_stopped_ingest_start_a_new_epoch() {
    deadline(90, async {
        let h = Harness::new("offset-reset", 1).await;
        let mut first_ingest = h.ingest("i1", &[]);
        let first = h.produce(h.produce_options(100, None)).await;
        h.wait_written(&first.deliveries, Duration::from_secs(30))
            .await;
        let old_epoch = h.meta_field(0, "epoch").await.expect("epoch");
        first_ingest.stop().await.expect("i1 exits");
        assert_eq!(
            tokio::task::block_in_place(|| h.committed()).get(&0),
            Some(&100),
            "test setup: the stopped ingest committed offset 100"
        );

        let second = h.produce(h.produce_options(100, None)).await;
        assert_eq!(expected_next(&second.deliveries).get(&0), Some(&200));
        let admin: AdminClient<DefaultClientContext> =
            h.conn.client_config().create().expect("admin client");
        let mut below = TopicPartitionList::new();
        below
            .add_partition_offset(&h.topic, 0, Offset::Offset(150))
            .unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let result = admin
            .delete_records(&below, &opts)
            .await
            .expect("delete records");
        for e in result.elements() {
            assert!(e.error().is_ok(), "delete records: {:?}", e.error());
        }
        let probe: BaseConsumer = h.conn.client_config().create().expect("consumer");
        let (low, _) = tokio::task::block_in_place(|| {
            probe.fetch_watermarks(&h.topic, 0, Duration::from_secs(10))
        })
        .expect("watermarks");
        assert_eq!(low, 150, "test setup: offsets below 150 deleted");

        let ingest = h.ingest("i2", &[]);
        let kept: Vec<_> = second
            .deliveries
            .iter()
            .filter(|d| d.offset >= 150)
            .copied()
            .collect();
        let streams = wait_in_streams(&h, &kept, Duration::from_secs(30)).await;

        // Every expectation at once, so a failure shows the whole picture.
        let mut failures = Vec::new();
        let new_epoch = h.meta_field(0, "epoch").await;
        if new_epoch.as_deref() == Some(old_epoch.as_str()) {
            failures.push(format!(
                "the meta epoch is unchanged ({old_epoch}); offsets 100..149 were lost to \
                 retention, so a new epoch must start"
            ));
        }
        let m = ingest.metrics().await.expect("metrics");
        let resets = metric(
            &m,
            "dashstream_ingest_stream_resets_total",
            &[("reason", "offset_reset")],
        );
        if resets != 1.0 {
            let got = if has_metric(&m, "dashstream_ingest_stream_resets_total") {
                format!("{}", resets + 0.0)
            } else {
                "no such series".into()
            };
            failures.push(format!(
                "expected dashstream_ingest_stream_resets_total{{reason=\"offset_reset\"}} = 1, \
                 got {got}"
            ));
        }
        let lost = metric(&m, "dashstream_ingest_records_lost_total", &[]);
        if lost != 50.0 {
            failures.push(format!(
                "expected dashstream_ingest_records_lost_total = 50 (offsets 100..149), got {lost}"
            ));
        }
        let offsets: Vec<i64> = streams[&0].iter().map(|(o, _)| *o).collect();
        if offsets != (150..200).collect::<Vec<i64>>() {
            failures.push(format!(
                "the stream must hold exactly offsets 150..=199 once each; it holds {} entries \
                 at offsets {}",
                offsets.len(),
                offset_ranges(&offsets)
            ));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}
