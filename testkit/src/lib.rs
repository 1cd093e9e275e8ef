//! Helpers for the integration tests of every crate: where the real Kafka and Redis started by
//! `deploy/local/services.sh` are, unique names per test, waiting for a condition with a
//! deadline, a private `redis-server` a test may stop, pause and restart, and reading
//! Prometheus text from a `/metrics` endpoint. Not used by the services themselves.

pub mod prometheus;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Kafka brokers and Redis URL of the shared services.
#[derive(Debug, Clone)]
pub struct Services {
    pub kafka_brokers: String,
    pub redis_url: String,
}

/// Reads `KAFKA_BROKERS` / `REDIS_URL` from the environment, else from `.local/services.env`
/// written by `deploy/local/services.sh up`.
pub fn services() -> Services {
    match (service_var("KAFKA_BROKERS"), service_var("REDIS_URL")) {
        (Some(kafka_brokers), Some(redis_url)) => Services {
            kafka_brokers,
            redis_url,
        },
        _ => panic!(
            "no Kafka/Redis for the tests: run `deploy/local/services.sh up` (or ./test.sh), \
             or set KAFKA_BROKERS and REDIS_URL"
        ),
    }
}

/// The encrypted, authenticated listeners of the shared services (`deploy/local/tls.sh`,
/// `kafka.sh`, `redis.sh`): the broker's SASL_SSL (SCRAM-SHA-512) and mTLS listeners, Redis's
/// TLS port, and the directory with the CA, certificates and the local users' passwords.
#[derive(Debug, Clone)]
pub struct SecureServices {
    pub kafka_sasl_ssl_brokers: String,
    pub kafka_mtls_brokers: String,
    pub redis_tls_url: String,
    pub tls_dir: PathBuf,
}

impl SecureServices {
    /// A file in the TLS directory (`ca.pem`, `client.key`, `passwords/redis-ingest.password`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.tls_dir.join(name)
    }

    /// The password in `passwords/<user>.password`.
    pub fn password(&self, user: &str) -> String {
        let f = self.file(&format!("passwords/{user}.password"));
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .to_string()
    }
}

/// Reads the secure listeners like [`services`] reads the plain ones.
pub fn secure_services() -> SecureServices {
    let need = |k: &str| {
        service_var(k).unwrap_or_else(|| {
            panic!("{k} is not set: run `deploy/local/services.sh up` (or ./test.sh) again")
        })
    };
    SecureServices {
        kafka_sasl_ssl_brokers: need("KAFKA_SASL_SSL_BROKERS"),
        kafka_mtls_brokers: need("KAFKA_MTLS_BROKERS"),
        redis_tls_url: need("REDIS_TLS_URL"),
        tls_dir: PathBuf::from(need("DASHSTREAM_TLS_DIR")),
    }
}

/// `name` from the environment, else from the services file.
/// The local Redis Cluster (`deploy/local/redis-cluster.sh`, started by `services.sh up`):
/// its URL (`redis+cluster://…`) and every node's port.
pub fn redis_cluster() -> (String, Vec<u16>) {
    match (
        service_var("REDIS_CLUSTER_URL"),
        service_var("REDIS_CLUSTER_PORTS"),
    ) {
        (Some(url), Some(ports)) => (
            url,
            ports
                .split(',')
                .map(|p| p.trim().parse().expect("a port"))
                .collect(),
        ),
        _ => panic!(
            "no Redis Cluster for the tests: run `deploy/local/services.sh up` (or ./test.sh), \
             or set REDIS_CLUSTER_URL and REDIS_CLUSTER_PORTS"
        ),
    }
}

fn service_var(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let file = find_services_env()?;
    std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

fn find_services_env() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("DASHSTREAM_STATE_DIR") {
        return Some(Path::new(&dir).join("services.env"));
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let f = dir.join(".local/services.env");
        if f.is_file() {
            return Some(f);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// A name unique to this test run: `<base>-<pid>-<n>-<random>`.
pub fn unique(base: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{base}-{}-{}-{:06x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() & 0xffffff
    )
}

/// Options for a test's producer: `count` events (`rate` per second, or as fast as possible)
/// over `threads` threads named after the test's topic, recording every delivery.
pub fn produce_options(
    topic: &str,
    threads: usize,
    count: u64,
    rate: Option<f64>,
) -> dashstream::produce::ProduceOptions {
    dashstream::produce::ProduceOptions {
        topic: topic.to_string(),
        threads,
        count: Some(count),
        rate,
        record_deliveries: true,
        thread_prefix: format!("{topic}-thread"),
        ..Default::default()
    }
}

/// Produces with `opts` until done, panicking on a delivery failure.
pub async fn produce(
    conn: &dashstream::kafka::KafkaConnection,
    opts: dashstream::produce::ProduceOptions,
) -> dashstream::produce::ProduceReport {
    dashstream::produce::run(conn, opts, std::future::pending())
        .await
        .expect("produce")
}

/// Runs a test body with a deadline, panicking when it is exceeded.
pub async fn deadline<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {secs}s deadline"));
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `redis-server` owned by one test, on its own port and directory, with AOF persistence so
/// a stop and restart keeps the data (a Redis outage, not a flush).
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("dashstream-redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().expect("utf-8 dir")])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (deploy/local/redis.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful shutdown (data persisted); the port stays reserved for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGSTOP: the server hangs without closing connections.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "CONT");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) with kill(1).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// GETs `path` from `addr` (HTTP/1.0); returns (status, body).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("http timeout")))
}

/// One sample of Prometheus text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (the subset prometheus-rs writes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let value: f64 = match value.parse() {
            Ok(v) => v,
            Err(_) => continue,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), HashMap::new()),
            Some((n, rest)) => {
                let body = rest.trim_end_matches('}');
                let mut labels = HashMap::new();
                for kv in body.split("\",") {
                    if let Some((k, v)) = kv.split_once('=') {
                        labels.insert(k.trim().to_string(), v.trim_matches('"').to_string());
                    }
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of every sample of `name` whose labels include all of `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Connection settings for a test's own Redis commands: redis-rs gives up on a reply after
/// 500 ms by default, which a loaded machine (a whole suite on 2 cores) exceeds now and then.
/// A test waits longer, within its own deadline.
pub fn redis_patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(10)))
}

/// A test's own connection to the Redis at `url`, a single server or a cluster (any URL
/// `REDIS_URL` accepts), reconnecting by itself, with patient deadlines like [`redis_patient`].
pub async fn redis_conn(url: &str) -> redis::RedisResult<dashstream::redis_config::RedisConn> {
    let args = dashstream::redis_config::RedisArgs {
        url: url.to_string(),
        key_prefix: "test".into(),
        password_file: None,
        tls_ca_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        command_timeout_ms: 30_000,
    };
    let settings = args.validate().map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "bad Redis URL", e.to_string()))
    })?;
    settings.connect().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let t = "# HELP x y\nx_total{a=\"1\",b=\"two\"} 3\ny 4.5\n";
        let s = parse_metrics(t);
        assert_eq!(metric_sum(&s, "x_total", &[("b", "two")]), 3.0);
        assert_eq!(metric_sum(&s, "y", &[]), 4.5);
        assert_eq!(metric_sum(&s, "x_total", &[("b", "one")]), 0.0);
    }
}
