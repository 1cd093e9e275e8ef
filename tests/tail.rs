//! `dashstream tail` against the real Kafka and Redis: tailing Kafka leaves every group's
//! committed offsets untouched unless `--group --commit` is asked for; tailing Redis prints
//! the stream entries.

use dashstream::kafka::KafkaConnection;
use dashstream::provision::{provision, TopicSpec};
use dashstream_testkit::{deadline, services, unique};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn tail(args: &[&str], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_dashstream"))
        .arg("tail")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run dashstream tail");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// Committed offsets for `topic` of every group the broker knows (groups without any are left out).
fn all_committed(
    conn: &KafkaConnection,
    topic: &str,
    partitions: i32,
) -> BTreeMap<String, Vec<i64>> {
    let admin: BaseConsumer = conn
        .client_config()
        .set("group.id", unique("snapshot"))
        .create()
        .unwrap();
    let groups = admin
        .fetch_group_list(None, Duration::from_secs(10))
        .unwrap();
    let mut out = BTreeMap::new();
    for g in groups.groups() {
        let c: BaseConsumer = conn
            .client_config()
            .set("group.id", g.name())
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        let offsets: Vec<i64> = got
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect();
        if offsets.iter().any(|o| *o >= 0) {
            out.insert(g.name().to_string(), offsets);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_kafka_leaves_every_group_offset_untouched_unless_asked() {
    deadline(120, async {
        let s = services();
        let conn = KafkaConnection::plaintext(&s.kafka_brokers);
        let topic = unique("tail-kafka");
        provision(
            &conn,
            &[TopicSpec {
                name: topic.clone(),
                partitions: 2,
                replication: 1,
                retention_ms: 3_600_000,
            }],
        )
        .await
        .unwrap();
        let opts = dashstream::produce::ProduceOptions {
            topic: topic.clone(),
            count: Some(300),
            rate: None,
            ..Default::default()
        };
        dashstream::produce::run(&conn, opts, std::future::pending())
            .await
            .unwrap();
        // A group with committed offsets of its own, as an ingest would have.
        let existing = unique("tail-existing-group");
        let c: BaseConsumer = conn
            .client_config()
            .set("group.id", &existing)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(10))
            .unwrap();
        tpl.add_partition_offset(&topic, 1, Offset::Offset(20))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();

        let env = [
            ("KAFKA_BROKERS", s.kafka_brokers.as_str()),
            ("KAFKA_TOPIC", topic.as_str()),
        ];
        let before = all_committed(&conn, &topic, 2);
        assert_eq!(before.get(&existing), Some(&vec![10, 20]));
        let lines = tail(
            &[
                "kafka",
                "--from",
                "earliest",
                "--count",
                "300",
                "--idle-secs",
                "20",
            ],
            &env,
        );
        assert_eq!(lines.len(), 300);
        assert!(lines
            .iter()
            .all(|l| l["partition"].is_i64() && l["offset"].is_i64() && l["thread"].is_string()));
        assert_eq!(
            all_committed(&conn, &topic, 2),
            before,
            "a default tail commits nothing, anywhere"
        );

        // Opting in commits for the named group only.
        let mine = unique("tail-opt-in");
        let lines = tail(
            &[
                "kafka",
                "--from",
                "earliest",
                "--group",
                &mine,
                "--commit",
                "--count",
                "300",
                "--idle-secs",
                "20",
            ],
            &env,
        );
        assert_eq!(lines.len(), 300);
        let after = all_committed(&conn, &topic, 2);
        assert_eq!(
            after.get(&existing),
            Some(&vec![10, 20]),
            "other groups untouched"
        );
        let committed: i64 = after
            .get(&mine)
            .expect("the opted-in group committed")
            .iter()
            .sum();
        assert_eq!(
            committed, 300,
            "committed offsets are the next to read: 300 records in all"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_redis_prints_the_stream_entries() {
    deadline(60, async {
        let s = services();
        let prefix = unique("tail-redis");
        let keys = dashstream::keys::StreamKeys::new(&prefix, "events");
        let mut c = redis::Client::open(s.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
            .await
            .unwrap();
        let _: () = redis::cmd("SADD")
            .arg(keys.partitions())
            .arg(0)
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        for (p, offset) in [(0, 5), (0, 6), (1, 3)] {
            let ev = dashstream::proto::Event {
                header: Some(dashstream::proto::Header {
                    thread_id: format!("t{p}"),
                    sequence: offset as u64,
                    ..Default::default()
                }),
                payload: br#"{"ok":true}"#.to_vec().into(),
                content_type: "application/json".into(),
            };
            let _: String = redis::cmd("XADD")
                .arg(keys.stream(p))
                .arg(dashstream::keys::entry_id(offset, 0))
                .arg("ev")
                .arg(ev.encode_to_vec())
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let env = [
            ("REDIS_URL", s.redis_url.as_str()),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
            ("KAFKA_TOPIC", "events"),
        ];
        let lines = tail(
            &[
                "redis",
                "--from",
                "earliest",
                "--count",
                "3",
                "--idle-secs",
                "10",
            ],
            &env,
        );
        let got: Vec<(i64, i64, bool)> = lines
            .iter()
            .map(|l| {
                (
                    l["partition"].as_i64().unwrap(),
                    l["offset"].as_i64().unwrap(),
                    l["payload"]["ok"].as_bool().unwrap(),
                )
            })
            .collect();
        let mut got = got;
        got.sort();
        assert_eq!(got, vec![(0, 5, true), (0, 6, true), (1, 3, true)]);
    })
    .await;
}

/// `dashstream tail redis`: an empty or wrong prefix names the set it read, a partition without
/// a stream is named, an undecodable entry is printed as invalid, and an idle stream is waited
/// on (an XREAD BLOCK longer than the client's default reply timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_redis_says_what_is_wrong() {
    deadline(90, async {
        let s = services();
        let prefix = unique("tail-redis-bad");
        let keys = dashstream::keys::StreamKeys::new(&prefix, "events");
        let run = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_dashstream"))
                .arg("tail")
                .arg("redis")
                .args(args)
                .env_clear()
                .envs([
                    ("REDIS_URL", s.redis_url.as_str()),
                    ("REDIS_KEY_PREFIX", prefix.as_str()),
                    ("KAFKA_TOPIC", "events"),
                ])
                .output()
                .expect("run dashstream tail");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, _, err) = run(&["--idle-secs", "1"]);
        assert!(!ok);
        assert!(err.contains(&keys.partitions()), "names the set: {err}");
        assert!(err.contains("REDIS_KEY_PREFIX"), "{err}");

        let mut c = redis::Client::open(s.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
            .await
            .unwrap();
        let _: () = redis::cmd("SADD")
            .arg(keys.partitions())
            .arg(0)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(keys.stream(0))
            .arg(dashstream::keys::entry_id(7, 0))
            .arg("ev")
            .arg(b"\xff\xff\xff".as_slice())
            .query_async(&mut c)
            .await
            .unwrap();
        let (ok, _, err) = run(&["--partition", "9", "--idle-secs", "1"]);
        assert!(!ok);
        assert!(err.contains("partition 9 has no stream"), "{err}");

        let started = std::time::Instant::now();
        let (ok, out, err) = run(&["--from", "earliest", "--idle-secs", "3"]);
        assert!(ok, "an idle stream is waited on, not an error: {err}");
        assert!(started.elapsed() >= Duration::from_secs(3));
        let line: serde_json::Value =
            serde_json::from_str(out.lines().next().expect("a line")).unwrap();
        assert_eq!(line["invalid"], "decode", "{line}");
        assert_eq!(line["partition"], 0);
    })
    .await;
}
