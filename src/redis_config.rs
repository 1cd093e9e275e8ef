//! Redis settings shared by the ingest and gateway tiers, and the connection they open.

use crate::config::{ConfigError, ConfigErrors};
use clap::Args;
use std::time::Duration;

pub const ENV_REDIS_URL: &str = "REDIS_URL";
pub const ENV_REDIS_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";
pub const ENV_REDIS_TIMEOUT_MS: &str = "REDIS_COMMAND_TIMEOUT_MS";
pub const ENV_REDIS_PASSWORD_FILE: &str = "REDIS_PASSWORD_FILE";
pub const ENV_REDIS_TLS_CA_FILE: &str = "REDIS_TLS_CA_FILE";
pub const ENV_REDIS_TLS_CERT_FILE: &str = "REDIS_TLS_CERT_FILE";
pub const ENV_REDIS_TLS_KEY_FILE: &str = "REDIS_TLS_KEY_FILE";

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS). A Redis Cluster is given
    /// by its seed nodes: redis+cluster://[user@]host:port,host:port (rediss+cluster:// for
    /// TLS), or several redis:// URLs separated by commas.
    #[arg(long = "redis-url", env = ENV_REDIS_URL, default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Prefix of every key this deployment writes (`<prefix>:{<topic>:<partition>}`).
    #[arg(long = "redis-key-prefix", env = ENV_REDIS_KEY_PREFIX, default_value = "dashstream")]
    pub key_prefix: String,
    /// A file holding the Redis password (AUTH), instead of one in the URL: a mounted secret,
    /// read at start (a trailing newline removed), never logged.
    #[arg(long = "redis-password-file", env = ENV_REDIS_PASSWORD_FILE)]
    pub password_file: Option<std::path::PathBuf>,
    /// With a rediss:// URL: the CA bundle (PEM) that verifies the server, instead of the
    /// system's trust store.
    #[arg(long = "redis-tls-ca-file", env = ENV_REDIS_TLS_CA_FILE)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// With a rediss:// URL and a server that asks for client certificates: this client's
    /// certificate (PEM), with REDIS_TLS_KEY_FILE.
    #[arg(long = "redis-tls-cert-file", env = ENV_REDIS_TLS_CERT_FILE)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM, unencrypted) of REDIS_TLS_CERT_FILE.
    #[arg(long = "redis-tls-key-file", env = ENV_REDIS_TLS_KEY_FILE)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Deadline of one Redis command, in milliseconds.
    #[arg(long = "redis-command-timeout-ms", env = ENV_REDIS_TIMEOUT_MS, default_value_t = 5000)]
    pub command_timeout_ms: u64,
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split_once(':').map_or("", |(u, _)| u);
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Where Redis is: one server, or a cluster given by its seed nodes. Built once per process,
/// so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Single(redis::Client),
    Cluster(ClusterSeeds),
}

/// A Redis Cluster's seed nodes, with the login every node gets.
#[derive(Debug, Clone)]
pub struct ClusterSeeds {
    pub nodes: Vec<redis::ConnectionInfo>,
}

/// Validated Redis settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub key_prefix: String,
    pub command_timeout: Duration,
}

/// The seed URLs of a cluster URL (`redis+cluster://a:1,b:2`, `rediss+cluster://…`, or several
/// comma-separated URLs), each a plain redis:// or rediss:// URL with the first one's login,
/// path and query; `None` for a single server's URL.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        "redis" | "rediss" if url.contains(',') => {
            return Some(url.split(',').map(|u| u.trim().to_string()).collect());
        }
        _ => return None,
    };
    let (login, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, tail) = match hosts.find(['/', '?']) {
        Some(i) => hosts.split_at(i),
        None => (hosts, ""),
    };
    Some(
        hosts
            .split(',')
            .map(|h| format!("{scheme}://{login}{}{tail}", h.trim()))
            .collect(),
    )
}

impl RedisArgs {
    pub fn validate(&self) -> Result<RedisSettings, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        use redis::IntoConnectionInfo;
        let password = match &self.password_file {
            None => None,
            Some(f) => match crate::config::read_secret(f) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(ConfigError::new(
                        ENV_REDIS_PASSWORD_FILE,
                        "redis-password-file",
                        e,
                    ));
                    None
                }
            },
        };
        let urls = cluster_seeds(&self.url);
        let urls: Vec<&str> = match &urls {
            Some(u) => u.iter().map(String::as_str).collect(),
            None => vec![self.url.as_str()],
        };
        let mut infos = Vec::with_capacity(urls.len());
        for u in &urls {
            match u.into_connection_info() {
                Ok(info) => infos.push(info),
                Err(e) => {
                    // The URL may hold a password: it is not repeated here.
                    errors.push(ConfigError::new(
                        ENV_REDIS_URL,
                        "redis-url",
                        format!("{:?} is not a Redis URL: {e}", redact_url(u)),
                    ));
                }
            }
        }
        let tls = infos
            .iter()
            .map(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }))
            .collect::<std::collections::BTreeSet<_>>();
        if tls.len() > 1 {
            errors.push(ConfigError::new(
                ENV_REDIS_URL,
                "redis-url",
                "the cluster's seed nodes mix redis:// and rediss://",
            ));
        }
        if infos
            .iter()
            .any(|i| i.redis_settings().password().is_some())
            && password.is_some()
        {
            errors.push(ConfigError::new(
                ENV_REDIS_PASSWORD_FILE,
                "redis-password-file",
                "the URL has a password too: give it once",
            ));
        }
        let infos: Vec<redis::ConnectionInfo> = infos
            .into_iter()
            .map(|info| match &password {
                Some(p) => {
                    let r = info.redis_settings().clone().set_password(p.clone());
                    info.set_redis_settings(r)
                }
                None => info,
            })
            .map(|info| info.set_tcp_settings(tcp_settings()))
            .collect();
        let client = if infos.len() == urls.len() && tls.len() == 1 {
            self.open(
                infos,
                urls.len() > 1 || self.url.contains("+cluster://"),
                &mut errors,
            )
        } else {
            None
        };
        if !crate::keys::valid_prefix(&self.key_prefix) {
            errors.push(ConfigError::new(
                ENV_REDIS_KEY_PREFIX,
                "redis-key-prefix",
                "must be non-empty and contain no whitespace and no brace",
            ));
        }
        let command_timeout = crate::config::positive_ms(
            ENV_REDIS_TIMEOUT_MS,
            "redis-command-timeout-ms",
            self.command_timeout_ms,
            &mut errors,
        );
        match client {
            Some(target) if errors.is_empty() => Ok(RedisSettings {
                target,
                key_prefix: self.key_prefix.clone(),
                command_timeout,
            }),
            _ => Err(errors),
        }
    }
}

impl RedisArgs {
    /// The client for `infos` (one server, or a cluster's seeds), with the TLS files when any
    /// is given.
    fn open(
        &self,
        mut infos: Vec<redis::ConnectionInfo>,
        cluster: bool,
        errors: &mut ConfigErrors,
    ) -> Option<RedisTarget> {
        let tls = matches!(infos[0].addr(), redis::ConnectionAddr::TcpTls { .. });
        let mut read =
            |file: &Option<std::path::PathBuf>, env: &'static str, flag: &'static str| {
                let f = file.as_ref()?;
                if !tls {
                    errors.push(ConfigError::new(
                        env,
                        flag,
                        "a TLS file needs a rediss:// URL (REDIS_URL)",
                    ));
                    return None;
                }
                match std::fs::read(f) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            env,
                            flag,
                            format!("cannot read {}: {e}", f.display()),
                        ));
                        None
                    }
                }
            };
        let root_cert = read(
            &self.tls_ca_file,
            ENV_REDIS_TLS_CA_FILE,
            "redis-tls-ca-file",
        );
        let cert = read(
            &self.tls_cert_file,
            ENV_REDIS_TLS_CERT_FILE,
            "redis-tls-cert-file",
        );
        let key = read(
            &self.tls_key_file,
            ENV_REDIS_TLS_KEY_FILE,
            "redis-tls-key-file",
        );
        let client_tls = match (cert, key) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: c,
                client_key: k,
            }),
            (None, None) => None,
            (c, _) => {
                let (env, flag) = if c.is_some() {
                    (ENV_REDIS_TLS_KEY_FILE, "redis-tls-key-file")
                } else {
                    (ENV_REDIS_TLS_CERT_FILE, "redis-tls-cert-file")
                };
                errors.push(ConfigError::new(
                    env,
                    flag,
                    "a client certificate and its key are given together",
                ));
                None
            }
        };
        let certs =
            (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
                client_tls,
                root_cert,
            });
        if cluster && certs.is_some() {
            // redis-rs takes a cluster's CA and client certificates only with rustls; with
            // native TLS the system's trust store verifies every node.
            errors.push(ConfigError::new(
                ENV_REDIS_TLS_CA_FILE,
                "redis-tls-ca-file",
                "not supported with a Redis Cluster: the system's trust store verifies its nodes (docs/SECURITY.md)",
            ));
            return None;
        }
        if cluster {
            // Built here once so that a bad seed or TLS file is a setting error; the service
            // builds its clients from the seeds (RedisSettings::connect).
            let seeds = ClusterSeeds { nodes: infos };
            return match seeds.builder().build() {
                Ok(_) => Some(RedisTarget::Cluster(seeds)),
                Err(e) => {
                    errors.push(ConfigError::new(
                        ENV_REDIS_URL,
                        "redis-url",
                        format!("not a usable cluster: {e}"),
                    ));
                    None
                }
            };
        }
        let info = infos.remove(0);
        let Some(certs) = certs else {
            return redis::Client::open(info).ok().map(RedisTarget::Single);
        };
        match redis::Client::build_with_tls(info, certs) {
            Ok(c) => Some(RedisTarget::Single(c)),
            Err(e) => {
                errors.push(ConfigError::new(
                    ENV_REDIS_TLS_CA_FILE,
                    "redis-tls-ca-file",
                    format!("the TLS files are not usable: {e}"),
                ));
                None
            }
        }
    }
}

/// For a Redis error met while connecting that retrying cannot mend, the message naming the
/// setting to check: a refused login (user or password), a refused command (the ACL user lacks
/// it), or a failed TLS handshake (an untrusted certificate, TLS against a plaintext port).
/// Both tiers stop with it at start-up instead of retrying.
pub fn refusal(e: &redis::RedisError) -> Option<&'static str> {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    // redis-rs turns a refused AUTH/HELLO into `AuthenticationFailed` ("Password
    // authentication failed"); the server's codes are kept for errors it passes through.
    let login = matches!(e.kind(), redis::ErrorKind::AuthenticationFailed);
    let acl = matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    );
    if login || has("WRONGPASS") || has("invalid username-password") || has("NOAUTH") {
        Some("Redis refused the login: check the user in REDIS_URL and the password (REDIS_URL or REDIS_PASSWORD_FILE)")
    } else if acl || has("NOPERM") {
        Some("the Redis ACL user may not run a command this tier needs: see docs/SECURITY.md for its rules")
    } else if has("certificate") || has("handshake") || has("ssl") || has("SSL") || has("tls") {
        Some("TLS to Redis failed: check REDIS_TLS_CA_FILE (the CA that signed the server's certificate) and, for client certificates, REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE")
    } else {
        None
    }
}

/// Every connection to Redis: `TCP_NODELAY`, so that a command written while an earlier one's
/// reply is due goes out at once. (Nagle's algorithm holds it until the earlier segment is
/// acknowledged: with several commands in flight on one multiplexed connection, e.g. a
/// cluster's per-partition reads of one node, each waited for a delayed ACK, ~40 ms.)
pub fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

impl ClusterSeeds {
    /// A cluster client builder with the seeds' login; the nodes it discovers get the seeds'
    /// [`tcp_settings`].
    pub fn builder(&self) -> redis::cluster::ClusterClientBuilder {
        let mut b = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
            .tcp_settings(tcp_settings());
        let first = self.nodes[0].redis_settings();
        if let Some(u) = first.username() {
            b = b.username(u);
        }
        if let Some(p) = first.password() {
            b = b.password(p);
        }
        b
    }
}

/// A connection to Redis: one server's multiplexed, self-reconnecting connection, or a
/// cluster connection that routes each command to the master of its keys' slot and follows
/// `MOVED`/`ASK` redirections, failovers and slot migrations. Either runs any command whose
/// keys share one slot (every script and transaction of a partition).
#[derive(Clone)]
pub enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisSettings {
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, RedisTarget::Cluster(_))
    }

    /// A connection that reconnects by itself; every command has the deadline.
    pub async fn connect(&self) -> redis::RedisResult<RedisConn> {
        self.connect_for_blocking(Duration::ZERO).await
    }

    /// Like [`Self::connect`], for a connection that also runs blocking commands of up to
    /// `block` (its response deadline is the command timeout plus `block`).
    pub async fn connect_for_blocking(&self, block: Duration) -> redis::RedisResult<RedisConn> {
        match &self.target {
            RedisTarget::Single(client) => {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(self.command_timeout + block))
                    .set_connection_timeout(Some(self.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                redis::aio::ConnectionManager::new_with_config(client.clone(), cfg)
                    .await
                    .map(RedisConn::Single)
            }
            RedisTarget::Cluster(seeds) => {
                let client = self.cluster_builder(seeds, block).build()?;
                client.get_async_connection().await.map(RedisConn::Cluster)
            }
        }
    }

    /// A cluster client builder with this deployment's deadlines. Redirections and
    /// reconnections are retried a few times within a command; the callers retry the rest.
    pub fn cluster_builder(
        &self,
        seeds: &ClusterSeeds,
        block: Duration,
    ) -> redis::cluster::ClusterClientBuilder {
        seeds
            .builder()
            .connection_timeout(self.command_timeout)
            .response_timeout(self.command_timeout + block)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_fills_the_url_and_no_message_shows_a_password() {
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let f = std::env::temp_dir().join(format!("redis-secret-{}", std::process::id()));
        std::fs::write(&f, "pw-from-file\n").unwrap();
        let a = RedisArgs {
            url: "redis://gateway@127.0.0.1:6379".into(),
            key_prefix: "p".into(),
            password_file: Some(f.clone()),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            command_timeout_ms: 1000,
        };
        let s = a.validate().expect("valid");
        let RedisTarget::Single(client) = &s.target else {
            panic!("one server")
        };
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("pw-from-file"));
        let both = RedisArgs {
            url: "redis://gateway:pw@127.0.0.1:6379".into(),
            ..a
        };
        let e = both.validate().unwrap_err();
        assert!(e.to_string().contains("REDIS_PASSWORD_FILE"), "{e}");
        assert!(!e.to_string().contains("pw-from-file"));
        let _ = std::fs::remove_file(f);
    }

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(cluster_seeds("redis://h:1/0"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://u:pw@a:1,b:2/?protocol=3").unwrap(),
            [
                "redis://u:pw@a:1/?protocol=3",
                "redis://u:pw@b:2/?protocol=3"
            ]
        );
        assert_eq!(
            cluster_seeds("rediss+cluster://a:1").unwrap(),
            ["rediss://a:1"]
        );
        assert_eq!(
            cluster_seeds("redis://a:1, redis://b:2").unwrap(),
            ["redis://a:1", "redis://b:2"]
        );
        let a = |url: &str| RedisArgs {
            url: url.into(),
            key_prefix: "p".into(),
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            command_timeout_ms: 1000,
        };
        let s = a("redis+cluster://u:pw@127.0.0.1:7000,127.0.0.1:7001")
            .validate()
            .unwrap();
        let RedisTarget::Cluster(seeds) = &s.target else {
            panic!("a cluster")
        };
        assert_eq!(seeds.nodes.len(), 2);
        assert_eq!(seeds.nodes[1].redis_settings().password(), Some("pw"));
        assert!(a("redis+cluster://127.0.0.1:7000")
            .validate()
            .unwrap()
            .is_cluster());
        let e = a("redis://127.0.0.1:1,rediss://127.0.0.1:2")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("mix"), "{e}");
        let e = a("redis+cluster://u:pw@127.0.0.1:x,h:2")
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("REDIS_URL") && !e.to_string().contains("pw@"),
            "{e}"
        );
        let e = RedisArgs {
            key_prefix: "p{x}".into(),
            ..a("redis://h:1")
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("brace"), "{e}");
    }

    #[test]
    fn tls_files_need_a_tls_url_and_come_in_pairs() {
        let f = std::env::temp_dir().join(format!("redis-ca-{}", std::process::id()));
        std::fs::write(&f, "not a certificate").unwrap();
        let a = RedisArgs {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "p".into(),
            password_file: None,
            tls_ca_file: Some(f.clone()),
            tls_cert_file: None,
            tls_key_file: None,
            command_timeout_ms: 1000,
        };
        let e = a.validate().unwrap_err().to_string();
        assert!(
            e.contains("REDIS_TLS_CA_FILE") && e.contains("rediss://"),
            "{e}"
        );
        let half = RedisArgs {
            url: "rediss://127.0.0.1:6379".into(),
            tls_ca_file: None,
            tls_cert_file: Some(f.clone()),
            ..a.clone()
        };
        let e = half.validate().unwrap_err().to_string();
        assert!(e.contains("REDIS_TLS_KEY_FILE"), "{e}");
        let missing = RedisArgs {
            url: "rediss://127.0.0.1:6379".into(),
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..a.clone()
        };
        let e = missing.validate().unwrap_err().to_string();
        assert!(
            e.contains("REDIS_TLS_CA_FILE") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let _ = std::fs::remove_file(f);
    }

    #[test]
    fn refusals_name_the_setting_and_outages_are_not_refusals() {
        let server = |code: &str, msg: &str| -> redis::RedisError {
            redis::RedisError::from((redis::ErrorKind::Io, "", format!("{code} {msg}")))
        };
        let pw = server(
            "WRONGPASS",
            "invalid username-password pair or user is disabled.",
        );
        assert!(refusal(&pw).unwrap().contains("REDIS_PASSWORD_FILE"));
        // What redis-rs 1.x really returns for a refused login.
        let auth = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert!(refusal(&auth).unwrap().contains("REDIS_PASSWORD_FILE"));
        let tls = redis::RedisError::from(std::io::Error::other(
            "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed",
        ));
        assert!(refusal(&tls).unwrap().contains("REDIS_TLS_CA_FILE"));
        let down =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(refusal(&down), None);
    }
}
