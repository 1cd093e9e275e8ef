//! The `dashstream` command line against the real Kafka broker: provisioning is idempotent and
//! reports differences (exit 3); produce delivers what it says, under a thread prefix of its
//! own per run; bad settings exit 64 naming the setting; `tail kafka` refuses the ingest's group
//! and a missing topic.

use dashstream_testkit::{services, unique};
use std::process::Command;

fn dashstream(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dashstream"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run dashstream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn provision_is_idempotent_and_reports_differences() {
    let s = services();
    let topic = unique("cli-provision");
    let env = [
        ("KAFKA_BROKERS", s.kafka_brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
    ];
    let (code, out, err) = dashstream(&["provision", "--partitions", "3"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{topic}: created")), "{out}");
    assert!(out.contains(&format!("{topic}-dlq: created")), "{out}");

    let (code, out, _) = dashstream(&["provision", "--partitions", "3"], &env);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{topic}: exists, as asked")), "{out}");

    let (code, out, err) = dashstream(
        &["provision", "--partitions", "4", "--retention-hours", "48"],
        &env,
    );
    assert_eq!(code, 3, "differences are not success: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(out.contains("partitions: has 3, asked 4"), "{out}");
    assert!(
        out.contains("retention.ms: has 86400000, asked 172800000"),
        "{out}"
    );
}

#[test]
fn produce_reports_what_it_delivered() {
    let s = services();
    let topic = unique("cli-produce");
    let env = [
        ("KAFKA_BROKERS", s.kafka_brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
    ];
    assert_eq!(dashstream(&["provision", "--partitions", "2"], &env).0, 0);
    let (code, out, err) = dashstream(
        &[
            "produce",
            "--count",
            "500",
            "--rate",
            "0",
            "--batch",
            "5",
            "--compress",
            "--fault",
            "garbage,oversize",
            "--fault-every",
            "10",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON summary");
    assert_eq!(report["events"], 500);
    assert!(report["faults"].as_u64().unwrap() >= 10, "{report}");
}

#[test]
fn every_kafka_command_names_a_bad_setting_and_exits_64() {
    for cmd in ["provision", "produce"] {
        let (code, _, err) = dashstream(&[cmd], &[]);
        assert_eq!(code, 64, "{cmd}: {err}");
        assert!(
            err.contains("KAFKA_BROKERS (--kafka-brokers)"),
            "{cmd}: {err}"
        );
        let (code, _, err) = dashstream(
            &[cmd],
            &[
                ("KAFKA_BROKERS", "127.0.0.1:9"),
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ],
        );
        assert_eq!(code, 64, "{cmd}: {err}");
        assert!(err.contains("KAFKA_SASL_USERNAME"), "{cmd}: {err}");
    }
}

#[test]
fn provision_needs_a_replication_factor_for_brokers_elsewhere() {
    // Refused before any connection is made (the address is never contacted).
    let (code, _, err) = dashstream(
        &["provision"],
        &[("KAFKA_BROKERS", "10.255.255.1:9092"), ("KAFKA_TOPIC", "t")],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("KAFKA_REPLICATION_FACTOR (--replication-factor)"),
        "{err}"
    );
}

#[test]
fn tail_kafka_refuses_the_ingest_group_and_a_missing_topic() {
    let s = services();
    let base = [("KAFKA_BROKERS", s.kafka_brokers.as_str())];
    for (group, env_group) in [
        ("dashstream-ingest", None),
        ("my-ingest", Some("my-ingest")),
    ] {
        let mut env = base.to_vec();
        env.extend(env_group.map(|g| ("KAFKA_GROUP_ID", g)));
        let (code, _, err) = dashstream(&["tail", "kafka", "--group", group], &env);
        assert_ne!(code, 0, "{group}");
        assert!(err.contains("is the ingest's consumer group"), "{err}");
    }
    let missing = unique("cli-no-such-topic");
    let started = std::time::Instant::now();
    let (code, _, err) = dashstream(&["tail", "kafka", "--kafka-topic", &missing], &base);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("topic {missing:?} does not exist")),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "fails at once, not after a timeout"
    );
}

#[test]
fn produce_names_its_threads_with_a_prefix_new_per_run() {
    let s = services();
    let topic = unique("cli-prefix");
    let env = [
        ("KAFKA_BROKERS", s.kafka_brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
    ];
    assert_eq!(dashstream(&["provision", "--partitions", "1"], &env).0, 0);
    for args in [
        &[
            "produce",
            "--count",
            "3",
            "--threads",
            "1",
            "--thread-prefix",
            "mine",
        ][..],
        &["produce", "--count", "3", "--threads", "1"][..],
        &["produce", "--count", "3", "--threads", "1"][..],
    ] {
        let (code, _, err) = dashstream(args, &env);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = dashstream(
        &[
            "tail",
            "kafka",
            "--from",
            "earliest",
            "--count",
            "9",
            "--idle-secs",
            "20",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let threads: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["thread"].as_str().map(str::to_string))
        .collect();
    assert!(threads.contains("mine-0"), "{threads:?}");
    let others: Vec<_> = threads.iter().filter(|t| *t != "mine-0").collect();
    assert_eq!(others.len(), 2, "two runs, two prefixes: {threads:?}");
    assert!(
        others.iter().all(|t| t.starts_with("thread-")),
        "{threads:?}"
    );
}

#[test]
fn token_mints_a_jwt_the_gateway_settings_accept() {
    let dir = std::env::temp_dir().join(unique("cli-token"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let (code, out, err) = dashstream(
        &[
            "token",
            "--secret-file",
            secret.to_str().unwrap(),
            "--tenants",
            "acme,globex",
            "--audience",
            "dashstream",
            "--ttl-secs",
            "120",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&["dashstream"]);
    let key = jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
    let claims = jsonwebtoken::decode::<serde_json::Value>(out.trim(), &key, &v)
        .expect("a valid HS256 token, secret without its newline")
        .claims;
    assert_eq!(claims["tenants"], serde_json::json!(["acme", "globex"]));
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp > jsonwebtoken::get_current_timestamp() + 60);
    // Neither key given: a clear error, not a token.
    let (code, _, err) = dashstream(&["token", "--tenants", "a"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--secret-file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
