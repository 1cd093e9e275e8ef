//! End-to-end alerts (operability review): a real Prometheus loads the shipped alert rules and
//! scrapes real ingest processes while a failure is induced; the test waits for the alert to be
//! firing in Prometheus's API. The one change to the rules is the documented test override:
//! every `for:` shortened to 5 s (testkit `shipped_rules_with_for`, docs/RUNBOOK.md "Testing the
//! rules"). Thresholds, rate windows and expressions are the shipped ones.
//!
//! Three deployments in one Prometheus, each a failure of its own, so each alert must also be
//! scoped to the deployment it happened in:
//! - `redis-down`: the ingest's Redis stops -> DashStreamIngestDependencyDown{system="redis"}
//!   from the ingest and DashStreamRedisDown from Debian's prometheus-redis-exporter in front
//!   of that Redis (job `redis`); both clear when Redis is back.
//! - `stuck`: a partition whose stream cannot be written (a key of another type: every write
//!   fails) and whose owner changed after it had been stuck for 10 minutes (the progress time
//!   in the stream's meta, as a previous owner left it) -> DashStreamPartitionStalled from the
//!   new owner's series.
//! - `dlq-refused`: the DLQ topic refuses every write (max.message.bytes 1) and invalid records
//!   arrive -> DashStreamDlqSendFailing; once the topic accepts writes again every record is
//!   delivered.
//!
//! Before each failure the deployment has been scraped and evaluated for 10 s with no alert
//! pending or firing for it.

mod common;
use common::*;
use dashstream::produce::Fault;
use dashstream_testkit::free_port;
use dashstream_testkit::prometheus::{shipped_rules_with_for, Prometheus};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;

const FOR: &str = "5s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_alerts_fire_in_a_real_prometheus_on_induced_failures() {
    deadline(300, async {
        let addrs = [(); 5].map(|_| format!("127.0.0.1:{}", free_port()));
        let [redis_down, exporter, stuck_first, stuck_second, dlq_refused] = addrs.clone();
        let target = |addr: &str, deployment: &str| {
            format!("      - targets: [{addr:?}]\n        labels: {{deployment: {deployment}}}\n")
        };
        let prom = Prometheus::start(
            &shipped_rules_with_for(FOR),
            &format!(
                "  - job_name: dashstream-ingest\n    static_configs:\n{}{}{}{}  - job_name: redis\n    static_configs:\n{}",
                target(&redis_down, "redis-down"),
                target(&stuck_first, "stuck"),
                target(&stuck_second, "stuck"),
                target(&dlq_refused, "dlq-refused"),
                target(&exporter, "redis-down"),
            ),
        );
        let in_file = std::fs::read_to_string(dashstream_testkit::prometheus::RULES)
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with("- alert:"))
            .count();
        wait_for(
            "Prometheus to load every rule",
            Duration::from_secs(60),
            || async { (prom.rules_loaded().await? == in_file).then_some(()) },
        )
        .await;

        tokio::join!(
            redis_goes_down(&prom, &redis_down, &exporter),
            a_partition_stays_stuck_across_owners(&prom, &stuck_first, &stuck_second),
            the_dlq_refuses_writes(&prom, &dlq_refused),
        );
    })
    .await;
}

async fn redis_goes_down(prom: &Prometheus, addr: &str, exporter: &str) {
    let mut redis = RedisServer::start();
    let _exporter = Exporter::start(&redis.url(), exporter);
    let h = Harness::with_own_redis("alert-redis", 2, redis.url()).await;
    let _ingest = h.ingest("i1", &[("INGEST_LISTEN", addr)]);
    let producer = tokio::spawn({
        let (conn, opts) = (h.conn.clone(), h.produce_options(1_500, Some(20.0)));
        async move { dashstream::produce::run(&conn, opts, std::future::pending()).await }
    });
    wait_for("the ingest writing", Duration::from_secs(60), || async {
        let n: i64 = h.next_offsets().await?.values().filter(|v| **v > 0).sum();
        (n > 20).then_some(())
    })
    .await;
    // A Redis seconds old is one that (re)started in the last 15 minutes: that warning is right.
    quiet(
        prom,
        "redis-down",
        &[addr, exporter],
        &["DashStreamRedisRestarted"],
    )
    .await;

    redis.stop();
    let alert = firing(prom, "DashStreamIngestDependencyDown", "redis-down", 60).await;
    assert_eq!(alert.label("system"), "redis", "{alert:?}");
    assert_eq!(alert.label("instance"), addr);
    let alert = firing(prom, "DashStreamRedisDown", "redis-down", 60).await;
    assert_eq!(alert.label("instance"), exporter, "{alert:?}");

    redis.restart();
    wait_for(
        "DashStreamIngestDependencyDown and DashStreamRedisDown to clear once Redis is back",
        Duration::from_secs(60),
        || async {
            let alerts = prom.alerts().await?;
            (!alerts.iter().any(|a| {
                ["DashStreamIngestDependencyDown", "DashStreamRedisDown"].contains(&a.name.as_str())
                    && a.label("deployment") == "redis-down"
            }))
            .then_some(())
        },
    )
    .await;
    producer.abort();
}

async fn a_partition_stays_stuck_across_owners(prom: &Prometheus, first: &str, second: &str) {
    let h = Harness::new("alert-stuck", 1).await;
    let mut owner = h.ingest("i1", &[("INGEST_LISTEN", first)]);
    let report = h.produce(h.produce_options(100, None)).await;
    h.wait_written(&report.deliveries, Duration::from_secs(60))
        .await;
    quiet(prom, "stuck", &[first], &[]).await;

    // The owner goes; the partition is then stuck (its stream key holds a string) and had last
    // progressed 10 minutes ago when the next owner claims it.
    owner.stop().await;
    h.stick_partition(0, Duration::from_secs(600)).await;
    h.produce(h.produce_options(20, None)).await;
    let _next = h.ingest("i2", &[("INGEST_LISTEN", second)]);

    let alert = firing(prom, "DashStreamPartitionStalled", "stuck", 90).await;
    assert_eq!(alert.label("partition"), "0", "{alert:?}");
}

async fn the_dlq_refuses_writes(prom: &Prometheus, addr: &str) {
    let h = Harness::new("alert-dlq", 1).await;
    let _ingest = h.ingest("i1", &[("INGEST_LISTEN", addr)]);
    let valid = h.produce(h.produce_options(50, None)).await;
    h.wait_written(&valid.deliveries, Duration::from_secs(60))
        .await;
    quiet(prom, "dlq-refused", &[addr], &[]).await;

    set_dlq_max_message_bytes(&h, "1").await;
    let mut opts = h.produce_options(100, None);
    opts.faults = vec![Fault::Garbage];
    opts.fault_every = 10;
    let mixed = h.produce(opts).await;
    firing(prom, "DashStreamDlqSendFailing", "dlq-refused", 90).await;

    // The DLQ accepts writes again: the partition continues, nothing lost.
    set_dlq_max_message_bytes(&h, "1048588").await;
    let mut all = valid.deliveries.clone();
    all.extend(mixed.deliveries.iter().copied());
    wait_in_streams(&h, &all, Duration::from_secs(90)).await;
    assert_eq!(read_dlq(&h, 10, Duration::from_secs(60)).await.len(), 10);
}

async fn set_dlq_max_message_bytes(h: &Harness, bytes: &str) {
    let admin: AdminClient<DefaultClientContext> = h.conn.client_config().create().unwrap();
    let config =
        AlterConfig::new(ResourceSpecifier::Topic(&h.dlq_topic)).set("max.message.bytes", bytes);
    let results = admin
        .alter_configs(&[config], &AdminOptions::new())
        .await
        .expect("alter the DLQ topic");
    for r in results {
        r.expect("alter the DLQ topic's max.message.bytes");
    }
}

/// Waits until targets `addrs` of `deployment` have been up for 10 s (10 scrapes and rule
/// evaluations), then asserts that the alerts pending or firing for the deployment are exactly
/// `expected`, leaving out its other targets' (the stuck partition's second owner, not started
/// yet, is down).
async fn quiet(prom: &Prometheus, deployment: &str, addrs: &[&str], expected: &[&str]) {
    for addr in addrs {
        let up = format!("up{{deployment={deployment:?}, instance={addr:?}}}");
        wait_for(
            &format!("{deployment}: {addr} up for 10 s"),
            Duration::from_secs(60),
            || async {
                let q =
                    format!("min_over_time({up}[10s]) == 1 and count_over_time({up}[10s]) >= 9");
                prom.value(&q).await
            },
        )
        .await;
    }
    let alerts = prom.alerts().await.expect("Prometheus answers");
    let (seen, loud): (Vec<_>, Vec<_>) = alerts
        .iter()
        .filter(|a| a.label("deployment") == deployment)
        .filter(|a| a.label("instance").is_empty() || addrs.contains(&a.label("instance")))
        .partition(|a| expected.contains(&a.name.as_str()));
    assert!(
        loud.is_empty(),
        "{deployment} is healthy, yet these alerts are pending or firing: {loud:#?}"
    );
    for name in expected {
        assert!(
            seen.iter().any(|a| a.name == *name),
            "{deployment}: {name} should be pending or firing; alerts: {alerts:#?}"
        );
    }
}

/// Waits (up to `secs`) for alert `name` of `deployment` to be firing, and returns it.
async fn firing(
    prom: &Prometheus,
    name: &str,
    deployment: &str,
    secs: u64,
) -> dashstream_testkit::prometheus::Alert {
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Some(a) = prom.alerts().await.and_then(|alerts| {
                alerts.into_iter().find(|a| {
                    a.name == name && a.label("deployment") == deployment && a.state == "firing"
                })
            }) {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    match found {
        Ok(a) => a,
        Err(_) => {
            let now = prom.alerts().await.unwrap_or_default();
            panic!(
                "{name} for {deployment} not firing after {secs} s; alerts now: {now:#?}\n\
                 Prometheus log:\n{}",
                prom.log_tail()
            )
        }
    }
}

/// Debian's prometheus-redis-exporter (monitoring/check.sh installs it) in front of one Redis,
/// stopped on drop.
struct Exporter(std::process::Child);

impl Exporter {
    fn start(redis_url: &str, listen: &str) -> Self {
        let child = std::process::Command::new("/usr/bin/prometheus-redis-exporter")
            .args(["-redis.addr", redis_url, "-web.listen-address", listen])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus-redis-exporter (monitoring/check.sh installs it)");
        Self(child)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
