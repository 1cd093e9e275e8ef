//! The metrics contract, against the real ingest and gateway on the real Kafka and Redis, with
//! traffic that includes a bad record, a slow client and a rejected connection:
//! - every metric name used by the alert rules and the dashboard is emitted;
//! - every label value comes from a bounded set (no thread, client, tenant or topic names);
//! - counters only go up between two scrapes.
//!
//! And a real Prometheus (Debian's package) scrapes both tiers and loads the alert rules.

mod common;
use common::*;
use dashstream::produce::Fault;
use dashstream_testkit::prometheus::Prometheus;
use dashstream_testkit::{http_get, parse_metrics, Sample};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitoring/alert_rules.yml");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../monitoring/grafana/dashstream.json"
);

/// `dashstream_*` metric names mentioned in a file.
fn names_used(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("dashstream_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // Names in prose ("dashstream_ingest_*") and the job label are not metric names.
        if name.starts_with("dashstream_ingest_") || name.starts_with("dashstream_gateway_") {
            out.insert(name.trim_end_matches('_').to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The raw text and samples of one scrape.
async fn scrape(addr: &str) -> (String, Vec<Sample>) {
    let (status, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let samples = parse_metrics(&body);
    (body, samples)
}

fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(n, t)| (n.to_string(), t.to_string()))
        })
        .collect()
}

fn series_key(s: &Sample) -> String {
    let mut l: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{}{{{}}}", s.name, l.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_used_by_alerts_and_dashboard_exist_are_bounded_and_counters_only_rise() {
    deadline(240, async {
        let sys = System::new("contract", 2, None).await;
        let ingest = sys.ingest(&[]).await;
        let mut opts = sys.produce_options(400, None);
        opts.faults = vec![Fault::Garbage]; // one bad record every 100
        opts.fault_every = 100;
        sys.produce(opts).await;
        sys.wait_streams().await;
        let gw = sys
            .gateway("g1", &["--live-buffer=4", "--send-queue=2"])
            .await;
        let (_, before_ingest) = scrape(&ingest.addr).await;
        let (_, before_gw) = scrape(&gw.addr).await;

        // A rejected connection, a fast client and a slow one.
        assert_eq!(
            connect(&gw.addr, "from=garbage").await.err().unwrap().0,
            400
        );
        let mut slow = connect(&gw.addr, "from=latest").await.unwrap();
        let mut fast = connect(&gw.addr, "from=latest").await.unwrap();
        let mut slow_rx = Received::default();
        slow_rx.take(&slow.next(Duration::from_secs(5)).await.unwrap());
        let mut opts = sys.produce_options(15_000, None);
        opts.payload_bytes = 1_000;
        let fast_task =
            tokio::spawn(async move { while fast.next(Duration::from_secs(5)).await.is_some() {} });
        let report = sys.produce(opts).await;
        // Let the whole burst pass the live buffer before the slow client reads again.
        wait_for(
            "the gateway to read the burst",
            Duration::from_secs(60),
            || async {
                let (_, s) = scrape(&gw.addr).await;
                (dashstream_testkit::metric_sum(&s, "dashstream_gateway_tail_events_total", &[])
                    >= 15_000.0)
                    .then_some(())
            },
        )
        .await;
        read_until(
            &mut slow,
            &mut slow_rx,
            &expected(&report.deliveries),
            Duration::from_secs(120),
        )
        .await;
        fast_task.await.unwrap();
        // The streams' retention is measured on a slow tick (at most every 5 s), not at scrape.
        wait_for(
            "the ingest to measure its streams' oldest entries",
            Duration::from_secs(30),
            || async {
                let (_, s) = scrape(&ingest.addr).await;
                s.iter()
                    .any(|s| s.name == "dashstream_ingest_stream_oldest_entry_age_seconds")
                    .then_some(())
            },
        )
        .await;

        let (ingest_text, after_ingest) = scrape(&ingest.addr).await;
        let (gw_text, after_gw) = scrape(&gw.addr).await;
        let mut emitted: BTreeSet<String> = families(&ingest_text).into_keys().collect();
        emitted.extend(families(&gw_text).into_keys());
        emitted.extend(after_ingest.iter().chain(&after_gw).map(|s| s.name.clone()));

        // 1. Every name the alerts and the dashboard use is emitted.
        let mut used = names_used(RULES);
        used.extend(names_used(DASHBOARD));
        assert!(used.len() > 20, "found the names: {used:?}");
        let missing: Vec<_> = used.iter().filter(|n| !emitted.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "used by alerts or the dashboard but not emitted: {missing:?}"
        );

        // 2. Labels come from bounded sets.
        let allowed: BTreeSet<&str> = [
            "partition",
            "outcome",
            "reason",
            "system",
            "kind",
            "result",
            "type",
            "command",
            "action",
            "le",
            "quantile",
        ]
        .into();
        // Each metric's label takes few values (a fixed set), whatever other metrics use.
        let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for s in after_ingest.iter().chain(&after_gw) {
            for (k, v) in &s.labels {
                assert!(
                    allowed.contains(k.as_str()),
                    "{}: unexpected label {k}",
                    s.name
                );
                // Thread ids here are "<topic>-thread-N" and tenants "tenant-N".
                assert!(
                    !v.contains(&sys.topic) && !v.starts_with("tenant-"),
                    "{}: unbounded label value {k}={v}",
                    s.name
                );
                if k == "partition" {
                    let p: i32 = v
                        .parse()
                        .unwrap_or_else(|_| panic!("{}: partition={v}", s.name));
                    assert!(
                        (0..sys.partitions).contains(&p),
                        "{}: partition={v}",
                        s.name
                    );
                }
                values
                    .entry((s.name.clone(), k.clone()))
                    .or_default()
                    .insert(v.clone());
            }
        }
        for ((name, k), v) in &values {
            assert!(
                v.len() <= 40,
                "{name}: label {k} has {} values: {v:?}",
                v.len()
            );
        }

        // 3. Counters (and histogram counts) never go back.
        for (before, after, text) in [
            (&before_ingest, &after_ingest, &ingest_text),
            (&before_gw, &after_gw, &gw_text),
        ] {
            let kinds = families(text);
            let old: BTreeMap<String, f64> =
                before.iter().map(|s| (series_key(s), s.value)).collect();
            for s in after {
                let family = s
                    .name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                let monotonic = kinds.get(&s.name).is_some_and(|t| t == "counter")
                    || (kinds.get(family).is_some_and(|t| t == "histogram") && s.name != family);
                if let (true, Some(o)) = (monotonic, old.get(&series_key(s))) {
                    assert!(
                        s.value >= *o,
                        "{} went from {o} to {}",
                        series_key(s),
                        s.value
                    );
                }
            }
        }
        // The traffic really produced what the alerts watch.
        let m = |samples: &[Sample], name: &str, labels: &[(&str, &str)]| {
            dashstream_testkit::metric_sum(samples, name, labels)
        };
        assert!(
            m(
                &after_ingest,
                "dashstream_ingest_invalid_records_total",
                &[("reason", "decode")]
            ) >= 1.0
        );
        assert!(
            m(
                &after_gw,
                "dashstream_gateway_upgrades_total",
                &[("reason", "bad_cursor")]
            ) >= 1.0
        );
        assert!(
            m(&after_gw, "dashstream_gateway_catchup_switches_total", &[]) >= 1.0,
            "the slow client fell behind"
        );

        // The health gauges the alerts read: both processes ready, and the ingest knows the
        // topic's partition count (DashStreamPartitionsUnowned compares it with the owners).
        assert_eq!(m(&after_ingest, "dashstream_ingest_ready", &[]), 1.0);
        for system in ["kafka", "redis"] {
            assert_eq!(
                m(
                    &after_ingest,
                    "dashstream_ingest_dependency_up",
                    &[("system", system)]
                ),
                1.0,
                "{system}"
            );
        }
        assert_eq!(m(&after_gw, "dashstream_gateway_ready", &[]), 1.0);
        assert_eq!(
            m(&after_ingest, "dashstream_ingest_topic_partitions", &[]),
            f64::from(sys.partitions)
        );

        // A real Prometheus scrapes both tiers and loads the alert rules.
        prometheus_scrapes(&ingest.addr, &gw.addr).await;
    })
    .await;
}

async fn prometheus_scrapes(ingest: &str, gateway: &str) {
    let rules = std::fs::read_to_string(RULES).unwrap();
    let prom = Prometheus::start(
        &rules,
        &format!(
            "  - job_name: dashstream-ingest\n    static_configs: [{{targets: [{ingest:?}]}}]\n  - job_name: dashstream-gateway\n    static_configs: [{{targets: [{gateway:?}]}}]\n"
        ),
    );
    wait_for(
        "Prometheus to have the ingest's series",
        Duration::from_secs(60),
        || prom.query("dashstream_ingest_events_written_total"),
    )
    .await;
    wait_for(
        "Prometheus to have the gateway's series",
        Duration::from_secs(60),
        || prom.query("dashstream_gateway_events_sent_total"),
    )
    .await;
    wait_for("both targets up", Duration::from_secs(60), || async {
        (prom.value("sum(up)").await? == 2.0).then_some(())
    })
    .await;
    let in_file = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(in_file >= 23, "{in_file} rules in the file");
    let loaded = wait_for("the rules loaded", Duration::from_secs(30), || async {
        prom.rules_loaded().await.filter(|n| *n > 0)
    })
    .await;
    assert_eq!(
        loaded, in_file,
        "every alert rule loads in a real Prometheus"
    );
}
