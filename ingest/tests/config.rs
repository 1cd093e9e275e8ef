//! Bad settings stop the process at start-up with exit code 64 and a message naming the
//! setting.

use std::process::Command;

fn run(env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run ingest");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_exit_64_naming_the_setting() {
    let brokers = ("KAFKA_BROKERS", "127.0.0.1:9");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "KAFKA_BROKERS"),
        (
            &[brokers, ("KAFKA_AUTO_OFFSET_RESET", "smallest")],
            "KAFKA_AUTO_OFFSET_RESET",
        ),
        (
            &[
                brokers,
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ],
            "KAFKA_SASL_USERNAME",
        ),
        (
            &[brokers, ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")],
            "KAFKA_SASL_MECHANISM",
        ),
        (&[brokers, ("REDIS_URL", "http://nope")], "REDIS_URL"),
        (
            &[brokers, ("INGEST_STREAM_MAXLEN", "ten")],
            "INGEST_STREAM_MAXLEN",
        ),
        (&[brokers, ("KAFKA_TOPIC", "bad topic")], "KAFKA_TOPIC"),
    ];
    for (env, setting) in cases {
        let (code, stderr) = run(env);
        assert_eq!(code, 64, "{env:?}: exit code; stderr: {stderr}");
        assert!(
            stderr.contains(setting),
            "{env:?}: message must name {setting}: {stderr}"
        );
    }
}
