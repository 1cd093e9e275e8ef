//! The ingest over the local broker's SASL_SSL (SCRAM-SHA-512, password from
//! `KAFKA_SASL_PASSWORD_FILE`) and mTLS listeners writes every produced event to Redis exactly
//! once; a wrong password, an untrusted client certificate or a CA that does not trust the
//! broker stops it at start-up with exit code 64 and a message naming the setting to check
//! (librdkafka alone would log the refusal and retry forever).

mod common;
use common::*;
use dashstream_testkit::{secure_services, SecureServices};
use std::path::Path;
use std::time::Duration;

/// SASL_SSL as `dashstream`, the password in `password_file`, trusting `ca`.
fn sasl_env(s: &SecureServices, password_file: &Path, ca: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BROKERS".into(), s.kafka_sasl_ssl_brokers.clone()),
        ("KAFKA_SECURITY_PROTOCOL".into(), "sasl_ssl".into()),
        ("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
        ("KAFKA_SASL_USERNAME".into(), "dashstream".into()),
        (
            "KAFKA_SASL_PASSWORD_FILE".into(),
            password_file.display().to_string(),
        ),
        (
            "KAFKA_SSL_CA_LOCATION".into(),
            s.file(ca).display().to_string(),
        ),
    ]
}

/// mTLS with the certificate `client` (`client` or `rogue-client`), trusting `ca`.
fn mtls_env(s: &SecureServices, client: &str, ca: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BROKERS".into(), s.kafka_mtls_brokers.clone()),
        ("KAFKA_SECURITY_PROTOCOL".into(), "ssl".into()),
        (
            "KAFKA_SSL_CA_LOCATION".into(),
            s.file(ca).display().to_string(),
        ),
        (
            "KAFKA_SSL_CERTIFICATE_LOCATION".into(),
            s.file(&format!("{client}.pem")).display().to_string(),
        ),
        (
            "KAFKA_SSL_KEY_LOCATION".into(),
            s.file(&format!("{client}.key")).display().to_string(),
        ),
    ]
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Produces (over the plaintext listener) and waits until the ingest connected with
/// `conn_env` wrote every event to its stream, exactly once.
async fn consumes_over(name: &str, conn_env: Vec<(String, String)>) {
    let h = Harness::new(name, 2).await;
    let mut ingest = h.ingest("i1", &pairs(&conn_env));
    let log = ingest.log.clone();
    let report = h.produce(h.produce_options(300, None)).await;
    let streams = tokio::select! {
        s = wait_in_streams(&h, &report.deliveries, Duration::from_secs(60)) => s,
        // An ingest that exits (a refused connection) fails the test at once, with its log.
        status = ingest.wait_exit(Duration::from_secs(3600)) => panic!(
            "the ingest exited ({status:?}); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    assert_exactly_once(&report.deliveries, &streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_consumes_over_sasl_ssl_with_scram_sha_512() {
    deadline(120, async {
        let s = secure_services();
        let password = s.file("passwords/kafka-dashstream.password");
        consumes_over("sec-sasl", sasl_env(&s, &password, "ca.pem")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_consumes_over_mtls() {
    deadline(120, async {
        let s = secure_services();
        consumes_over("sec-mtls", mtls_env(&s, "client", "ca.pem")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_or_certificate_stops_the_ingest_with_exit_64_naming_the_setting() {
    deadline(150, async {
        let s = secure_services();
        let h = Harness::new("sec-refused", 1).await;
        let wrong = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("wrong-password"));
        std::fs::write(&wrong, "not-the-password\n").unwrap();
        let password = s.file("passwords/kafka-dashstream.password");
        let cases = [
            (
                "wrong SASL password",
                sasl_env(&s, &wrong, "ca.pem"),
                "KAFKA_SASL_PASSWORD",
            ),
            (
                "untrusted client certificate",
                mtls_env(&s, "rogue-client", "ca.pem"),
                "KAFKA_SSL_CERTIFICATE_LOCATION (--kafka-ssl-certificate-location)",
            ),
            (
                "a CA that does not trust the broker (mTLS)",
                mtls_env(&s, "client", "rogue-ca.pem"),
                "KAFKA_SSL_CA_LOCATION (--kafka-ssl-ca-location)",
            ),
            (
                "a CA that does not trust the broker (SASL_SSL)",
                sasl_env(&s, &password, "rogue-ca.pem"),
                "KAFKA_SSL_CA_LOCATION (--kafka-ssl-ca-location)",
            ),
        ];
        for (i, (what, conn_env, setting)) in cases.into_iter().enumerate() {
            let mut ingest = h.ingest(&format!("refused-{i}"), &pairs(&conn_env));
            let status = ingest.wait_exit(Duration::from_secs(30)).await;
            let log = std::fs::read_to_string(&ingest.log).unwrap_or_default();
            let status = status.unwrap_or_else(|| {
                panic!("{what}: still running after 30 s, expected exit 64; log:\n{log}")
            });
            assert_eq!(status.code(), Some(64), "{what}: log:\n{log}");
            assert!(
                log.contains(setting),
                "{what}: must name {setting}; log:\n{log}"
            );
            assert!(
                !log.contains("not-the-password"),
                "never the password: {log}"
            );
        }
        let _ = std::fs::remove_file(wrong);
    })
    .await;
}
