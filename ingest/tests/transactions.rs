//! A transactional producer's control records (commit markers) take offsets that are never
//! delivered to consumers. Lag must still reach 0 once everything is in Redis, so the stall
//! alert does not page for an idle, caught-up partition (review m10), and every record must be
//! in its stream once.

mod common;
use common::*;
use dashstream::produce::{Generator, ProduceOptions};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_of_a_caught_up_transactional_partition_is_zero() {
    deadline(120, async {
        let h = Harness::new("txn", 1).await;
        let producer: FutureProducer = h
            .conn
            .client_config()
            .set("transactional.id", format!("{}-tx", h.topic))
            .set("enable.idempotence", "true")
            .create()
            .expect("transactional producer");
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init transactions");
        let mut gen = Generator::new(ProduceOptions {
            threads: 3,
            ..h.produce_options(0, None)
        });
        let (transactions, per_txn) = (5, 20);
        for _ in 0..transactions {
            producer.begin_transaction().expect("begin");
            for _ in 0..per_txn {
                let (key, value, _, _) = gen.next_record();
                producer
                    .send(
                        FutureRecord::to(&h.topic).key(&key).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("send in transaction");
            }
            producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit");
        }
        let ingest = h.ingest("i1", &[]);
        // 100 records, 5 commit markers: the high watermark is 105.
        assert_eq!(h.high_watermarks().get(&0), Some(&105));
        let expected: Vec<i64> = (0..transactions)
            .flat_map(|t| (0..per_txn).map(move |i| t * (per_txn + 1) + i))
            .collect();
        wait_for(
            "every transactional record in Redis",
            Duration::from_secs(60),
            || async {
                let got: Vec<i64> = h.read_streams().await[&0].iter().map(|(o, _)| *o).collect();
                (got == expected).then_some(())
            },
        )
        .await;
        let lag = wait_for(
            "lag 0 on the caught-up partition",
            Duration::from_secs(30),
            || async {
                let m = ingest.metrics().await?;
                let lag = metric(&m, "dashstream_ingest_partition_lag", &[("partition", "0")]);
                (has_metric(&m, "dashstream_ingest_partition_lag") && lag == 0.0).then_some(lag)
            },
        )
        .await;
        assert_eq!(lag, 0.0);
    })
    .await;
}
