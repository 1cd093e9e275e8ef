//! Each kind of invalid record produces one DLQ document with the documented fields, counted
//! under its reason, and the good records around it are delivered.

mod common;
use common::*;
use dashstream::produce::Fault;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_record_kind_is_dead_lettered_with_its_reason() {
    deadline(180, async {
        let h = Harness::new("dlq", 2).await;
        let ingest = h.ingest(
            "i1",
            &[
                ("INGEST_MAX_RECORD_BYTES", "65536"),
                ("INGEST_DLQ_INCLUDE_VALUE", "true"),
            ],
        );
        let mut opts = h.produce_options(600, None);
        opts.faults = Fault::ALL.to_vec();
        opts.fault_every = 20; // faults among good records, every kind at least once
        opts.oversize_bytes = 100_000;
        let report = h.produce(opts).await;
        let faults: Vec<_> = report
            .deliveries
            .iter()
            .filter(|d| d.fault.is_some())
            .copied()
            .collect();
        assert!(faults.len() >= Fault::ALL.len());
        h.wait_written(&report.deliveries, Duration::from_secs(60))
            .await;
        assert_exactly_once(&report.deliveries, &h.read_streams().await);

        // Read the DLQ topic back.
        let consumer: BaseConsumer = h
            .conn
            .client_config()
            .set("group.id", unique("dlq-reader"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&h.dlq_topic]).unwrap();
        let mut docs: BTreeMap<(i32, i64), serde_json::Value> = BTreeMap::new();
        let start = std::time::Instant::now();
        while docs.len() < faults.len() && start.elapsed() < Duration::from_secs(60) {
            if let Some(Ok(m)) =
                tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)))
            {
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap()).expect("DLQ value is JSON");
                let key = (
                    v["partition"].as_i64().unwrap() as i32,
                    v["offset"].as_i64().unwrap(),
                );
                assert!(
                    docs.insert(key, v).is_none(),
                    "one document per invalid record"
                );
            }
        }
        assert_eq!(
            docs.len(),
            faults.len(),
            "one DLQ document per injected fault"
        );
        for f in &faults {
            let doc = &docs[&(f.partition, f.offset)];
            let fault = f.fault.unwrap();
            assert_eq!(
                doc["reason"],
                fault.expected_reason().as_str(),
                "{fault:?}: {doc}"
            );
            assert_eq!(doc["source_topic"], h.topic.as_str());
            for field in [
                "error",
                "key",
                "timestamp_ms",
                "size",
                "sha256",
                "head_hex",
                "value_b64",
            ] {
                assert!(
                    !doc[field].is_null(),
                    "{fault:?}: field {field} missing in {doc}"
                );
            }
            assert_eq!(doc["sha256"].as_str().unwrap().len(), 64);
        }
        // Counted under each reason, once per record.
        let m = ingest.metrics().await.expect("metrics");
        for kind in Fault::ALL {
            let want = faults.iter().filter(|d| d.fault == Some(kind)).count() as f64;
            let reason = kind.expected_reason().as_str();
            assert_eq!(
                metric(
                    &m,
                    "dashstream_ingest_invalid_records_total",
                    &[("reason", reason)]
                ),
                want,
                "{reason}"
            );
        }
        assert_eq!(
            metric(&m, "dashstream_ingest_records_total", &[("outcome", "dlq")]),
            faults.len() as f64
        );
        assert_eq!(
            metric(&m, "dashstream_ingest_infra_errors_total", &[]),
            0.0,
            "bad input is not an infrastructure error"
        );
    })
    .await;
}
