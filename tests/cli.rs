//! The `dashstream` command line against the real Kafka broker: provisioning is idempotent and
//! reports differences; produce delivers what it says; bad settings exit 64 naming the setting.

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

    let (code, out, _) = dashstream(
        &["provision", "--partitions", "4", "--retention-hours", "48"],
        &env,
    );
    assert_eq!(code, 0);
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
