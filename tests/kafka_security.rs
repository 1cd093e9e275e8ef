//! `dashstream provision`, `produce` and `tail kafka` over the local broker's SASL_SSL
//! (SCRAM-SHA-512) and mTLS listeners (deploy/local/kafka.sh, certificates from tls.sh); and a
//! wrong password, an untrusted client certificate or a CA that does not trust the broker make
//! every one of them exit 64 naming the setting to check, instead of retrying forever.

use dashstream_testkit::{secure_services, unique, SecureServices};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `dashstream ARGS` with only `env`; kills it and panics after `deadline`.
fn dashstream(
    args: &[&str],
    env: &[(String, String)],
    deadline: Duration,
) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dashstream"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dashstream");
    // Read both pipes on threads so a full pipe never blocks the child.
    let pipe = |r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut r = r;
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for dashstream") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dashstream {args:?} still running after {deadline:?}; stderr: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// SASL_SSL as `dashstream` with the password in a file.
fn sasl_env(
    s: &SecureServices,
    password_file: &std::path::Path,
    ca: &str,
) -> Vec<(String, String)> {
    env(&[
        ("KAFKA_BROKERS", s.kafka_sasl_ssl_brokers.clone()),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("KAFKA_SASL_USERNAME", "dashstream".into()),
        (
            "KAFKA_SASL_PASSWORD_FILE",
            password_file.display().to_string(),
        ),
        ("KAFKA_SSL_CA_LOCATION", s.file(ca).display().to_string()),
    ])
}

/// mTLS with the client certificate `client` (`client` or `rogue-client`) and the CA bundle `ca`.
fn mtls_env(s: &SecureServices, client: &str, ca: &str) -> Vec<(String, String)> {
    env(&[
        ("KAFKA_BROKERS", s.kafka_mtls_brokers.clone()),
        ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
        ("KAFKA_SSL_CA_LOCATION", s.file(ca).display().to_string()),
        (
            "KAFKA_SSL_CERTIFICATE_LOCATION",
            s.file(&format!("{client}.pem")).display().to_string(),
        ),
        (
            "KAFKA_SSL_KEY_LOCATION",
            s.file(&format!("{client}.key")).display().to_string(),
        ),
    ])
}

fn password_file(s: &SecureServices) -> std::path::PathBuf {
    s.file("passwords/kafka-dashstream.password")
}

/// A file holding a password the broker does not know.
fn wrong_password_file() -> std::path::PathBuf {
    let f = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("wrong-password"));
    std::fs::write(&f, "not-the-password\n").unwrap();
    f
}

/// provision creates the topics, produce delivers, tail reads back what was produced.
fn round_trip(name: &str, mut conn_env: Vec<(String, String)>) {
    let topic = unique(name);
    conn_env.push(("KAFKA_TOPIC".into(), topic.clone()));
    let minute = Duration::from_secs(60);
    let (code, out, err) = dashstream(&["provision", "--partitions", "2"], &conn_env, minute);
    assert_eq!(code, 0, "provision: {err}");
    assert!(out.contains(&format!("{topic}: created")), "{out}");
    assert!(out.contains(&format!("{topic}-dlq: created")), "{out}");

    let (code, out, err) = dashstream(
        &["produce", "--count", "40", "--rate", "0", "--threads", "4"],
        &conn_env,
        minute,
    );
    assert_eq!(code, 0, "produce: {err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON summary");
    assert_eq!(report["events"], 40, "{report}");

    let (code, out, err) = dashstream(
        &[
            "tail",
            "kafka",
            "--from",
            "earliest",
            "--count",
            "40",
            "--idle-secs",
            "30",
        ],
        &conn_env,
        minute,
    );
    assert_eq!(code, 0, "tail kafka: {err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(events.len(), 40, "tail printed {out}");
}

#[test]
fn provision_produce_and_tail_over_sasl_ssl() {
    let s = secure_services();
    round_trip("sec-cli-sasl", sasl_env(&s, &password_file(&s), "ca.pem"));
}

#[test]
fn provision_produce_and_tail_over_mtls() {
    let s = secure_services();
    round_trip("sec-cli-mtls", mtls_env(&s, "client", "ca.pem"));
}

#[test]
fn every_kafka_command_exits_64_naming_what_the_broker_refused() {
    let s = secure_services();
    let wrong = wrong_password_file();
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
            sasl_env(&s, &password_file(&s), "rogue-ca.pem"),
            "KAFKA_SSL_CA_LOCATION (--kafka-ssl-ca-location)",
        ),
    ];
    let topic = unique("sec-cli-refused");
    let commands: [&[&str]; 3] = [
        &["provision"],
        &["produce", "--count", "1"],
        &["tail", "kafka", "--count", "1"],
    ];
    for (what, mut conn_env, setting) in cases {
        conn_env.push(("KAFKA_TOPIC".into(), topic.clone()));
        for cmd in commands {
            let (code, _, err) = dashstream(cmd, &conn_env, Duration::from_secs(30));
            assert_eq!(code, 64, "{cmd:?} with {what}: {err}");
            assert!(err.contains(setting), "{cmd:?} with {what}: {err}");
            assert!(
                !err.contains("not-the-password"),
                "never the password: {err}"
            );
        }
    }
    let _ = std::fs::remove_file(wrong);
}
