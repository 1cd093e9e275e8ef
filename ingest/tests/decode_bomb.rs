//! Review M3(a): a tiny zstd record that declares an `EventBatch` of 2,000,000 empty events
//! (4 MB decompressed, within the decompressed limit; each empty event is 2 bytes on the wire
//! but ~184 bytes decoded) must be rejected before decoding allocates its events: it is
//! dead-lettered as `batch_too_large`, the valid records after it are written, and the ingest's
//! peak RSS stays bounded (the old code allocated 555 MiB+ for it).

mod common;
use common::*;
use dashstream::proto::{envelope::Body, Envelope, Event, EventBatch};
use rdkafka::producer::FutureRecord;
use std::time::Duration;

/// Events in the bomb's batch.
const BOMB_EVENTS: usize = 2_000_000;
/// Bound on the ingest's peak RSS (VmHWM) over the whole run. Measured on the old code (debug
/// build, the binary these tests run): ~20 MiB after the 1000 valid records, 375 MiB after the
/// bomb (its decode allocates ~555 MiB). 150 MiB leaves 7x the normal peak as margin.
const MAX_PEAK_RSS_MIB: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_bomb_is_dead_lettered_without_allocating_its_events() {
    deadline(90, async {
        let h = Harness::new("decode-bomb", 1).await;
        let ingest = h.ingest("i1", &[]);
        let before = h.produce(h.produce_options(1_000, None)).await;
        h.wait_written(&before.deliveries, Duration::from_secs(30))
            .await;
        let baseline_kib = vm_hwm_kib(ingest.pid()).expect("VmHWM of the ingest");

        let bomb = dashstream::codec::encode_record(
            &Envelope {
                body: Some(Body::Batch(EventBatch {
                    events: vec![Event::default(); BOMB_EVENTS],
                })),
            },
            true,
        );
        assert!(bomb.len() < 4_096, "the bomb is tiny: {} bytes", bomb.len());
        let producer = dashstream::produce::producer(&h.conn).expect("producer");
        let delivered = producer
            .send(
                FutureRecord::to(&h.topic).key("bomb").payload(&bomb),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("deliver the bomb");
        let after = h.produce(h.produce_options(20, None)).await;
        assert!(after.deliveries.iter().all(|d| d.offset > delivered.offset));

        let all: Vec<_> = [before, after]
            .into_iter()
            .flat_map(|r| r.deliveries)
            .collect();
        let streams = wait_in_streams(&h, &all, Duration::from_secs(30)).await;
        assert_exactly_once(&all, &streams);

        let docs = read_dlq(&h, 1, Duration::from_secs(30)).await;
        let doc = docs
            .iter()
            .find(|d| d["offset"].as_i64() == Some(delivered.offset))
            .unwrap_or_else(|| {
                panic!(
                    "no DLQ document for the bomb at offset {}: {docs:?}",
                    delivered.offset
                )
            });
        assert_eq!(doc["reason"], "batch_too_large", "{doc}");

        let peak_kib = vm_hwm_kib(ingest.pid()).expect("VmHWM of the ingest");
        eprintln!(
            "ingest peak RSS: {} MiB before the bomb, {} MiB after",
            baseline_kib / 1024,
            peak_kib / 1024
        );
        assert!(
            peak_kib < MAX_PEAK_RSS_MIB * 1024,
            "ingest peak RSS (VmHWM) {} MiB >= {MAX_PEAK_RSS_MIB} MiB (it was {} MiB before the \
             bomb): the {}-byte record's {BOMB_EVENTS} events were allocated before the limit \
             was checked",
            peak_kib / 1024,
            baseline_kib / 1024,
            bomb.len()
        );
    })
    .await;
}
