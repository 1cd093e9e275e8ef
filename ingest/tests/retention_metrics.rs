//! How much history each stream holds (operability review M4), against the real Kafka and
//! Redis with a small `INGEST_STREAM_MAXLEN`: before any event the owned streams show 0 entries
//! and no age; after a first burst under the max length the entries are exactly what was written
//! and the age grows from the burst's producer timestamps; after a second burst past the max
//! length the entries stay near it and the age is that of the second burst (the first was
//! trimmed); when a second ingest joins, each partition's series are on its owner only.

mod common;
use common::*;
use dashstream_testkit::Sample;
use std::collections::BTreeMap;
use std::time::Duration;

const MAXLEN: f64 = 200.0;
const ENTRIES: &str = "dashstream_ingest_stream_entries";
const AGE: &str = "dashstream_ingest_stream_oldest_entry_age_seconds";

/// The value of `name{partition=p}`, if the series exists.
fn gauge(m: &[Sample], name: &str, p: i32) -> Option<f64> {
    let p = p.to_string();
    m.iter()
        .find(|s| s.name == name && s.labels.get("partition") == Some(&p))
        .map(|s| s.value)
}

fn now_s() -> f64 {
    dashstream::now_us() as f64 / 1e6
}

async fn xlen(h: &Harness, p: i32) -> i64 {
    let mut c = h.redis().await;
    redis::cmd("XLEN")
        .arg(h.keys().stream(p))
        .query_async(&mut c)
        .await
        .expect("XLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_entries_and_oldest_age_follow_retention_and_ownership() {
    deadline(150, async {
        let h = Harness::new("retention-metrics", 2).await;
        let maxlen = [("INGEST_STREAM_MAXLEN", "200")];
        let i1 = h.ingest("i1", &maxlen);

        // 1. Owned, nothing written yet: 0 entries, no age.
        let m = wait_for(
            "i1 to measure its two empty streams",
            Duration::from_secs(60),
            || async {
                let m = i1.metrics().await?;
                (0..2)
                    .all(|p| gauge(&m, ENTRIES, p) == Some(0.0))
                    .then_some(m)
            },
        )
        .await;
        assert_eq!(
            metric(&m, "dashstream_ingest_stream_maxlen", &[]),
            MAXLEN,
            "the configured max length"
        );
        for p in 0..2 {
            assert_eq!(gauge(&m, AGE, p), None, "partition {p}: no age while empty");
        }

        // 2. A burst under the max length: entries are what was written, age from its stamps.
        let t0 = now_s();
        let first = h.produce(h.produce_options(100, None)).await;
        h.wait_written(&first.deliveries, Duration::from_secs(30))
            .await;
        let per = by_partition(&first.deliveries);
        assert_eq!(per.len(), 2, "test setup: both partitions got events: {per:?}");
        let m = wait_for(
            "i1 to show the first burst, at least 3 s old",
            Duration::from_secs(30),
            || async {
                let m = i1.metrics().await?;
                (0..2)
                    .all(|p| {
                        gauge(&m, ENTRIES, p) == Some(per[&p] as f64)
                            && gauge(&m, AGE, p).is_some_and(|a| a >= 3.0)
                    })
                    .then_some(m)
            },
        )
        .await;
        for p in 0..2 {
            let age = gauge(&m, AGE, p).unwrap();
            assert!(
                age <= now_s() - t0 + 0.01,
                "partition {p}: age {age} s, but the first burst started {} s ago",
                now_s() - t0
            );
        }

        // 3. A burst well past the max length: the first burst is trimmed away, the entries
        //    stay near the max length and the oldest entry is from the second burst.
        let t1 = now_s();
        let second = h.produce(h.produce_options(1_500, None)).await;
        let t2 = now_s();
        h.wait_written(&second.deliveries, Duration::from_secs(60))
            .await;
        let per2 = by_partition(&second.deliveries);
        assert!(
            per2.values().all(|n| *n as f64 > 2.0 * MAXLEN),
            "test setup: each partition got more than twice the max length: {per2:?}"
        );
        // Waits for a measurement made after the last write (the gauge equals XLEN) in which
        // the oldest entry is younger than the second burst's start.
        let m = wait_for(
            "i1 to measure the trimmed streams",
            Duration::from_secs(30),
            || async {
                let m = i1.metrics().await?;
                let now = now_s();
                for p in 0..2 {
                    let len = xlen(&h, p).await as f64;
                    let fresh = gauge(&m, ENTRIES, p) == Some(len)
                        && gauge(&m, AGE, p).is_some_and(|a| a <= now - t1);
                    if !fresh {
                        return None;
                    }
                }
                Some(m)
            },
        )
        .await;
        let mut seen = BTreeMap::new();
        for p in 0..2 {
            let (entries, age) = (gauge(&m, ENTRIES, p).unwrap(), gauge(&m, AGE, p).unwrap());
            assert!(
                (MAXLEN..=MAXLEN + 150.0).contains(&entries),
                "partition {p}: {entries} entries, max length {MAXLEN} (MAXLEN ~ trims whole nodes)"
            );
            // Measured at most one tick (5 s) before the scrape, of an event stamped in [t1, t2].
            let now = now_s();
            assert!(
                age >= now - t2 - 6.0 && age <= now - t1,
                "partition {p}: age {age:.3} s, but the second burst was produced {:.3}..{:.3} s ago",
                now - t2,
                now - t1
            );
            seen.insert(p, (entries, age));
        }
        eprintln!("after the second burst (entries, oldest age s) by partition: {seen:?}");

        // 4. A second ingest joins: each partition's series are on its owner only.
        let i2 = h.ingest("i2", &maxlen);
        let (a1, a2) = wait_for(
            "the partitions to be split between i1 and i2",
            Duration::from_secs(60),
            || async {
                let (a1, a2) = (i1.assigned().await?, i2.assigned().await?);
                (a1.len() == 1 && a2.len() == 1).then(|| (a1[0], a2[0]))
            },
        )
        .await;
        wait_for(
            "the stream series to follow the partitions' owners",
            Duration::from_secs(30),
            || async {
                let (m1, m2) = (i1.metrics().await?, i2.metrics().await?);
                let on_owner = |m: &[Sample], p: i32| {
                    gauge(m, ENTRIES, p).is_some_and(|n| n >= MAXLEN) && gauge(m, AGE, p).is_some()
                };
                let absent = |m: &[Sample], p: i32| {
                    gauge(m, ENTRIES, p).is_none() && gauge(m, AGE, p).is_none()
                };
                (on_owner(&m1, a1) && on_owner(&m2, a2) && absent(&m1, a2) && absent(&m2, a1))
                    .then_some(())
            },
        )
        .await;
    })
    .await;
}
