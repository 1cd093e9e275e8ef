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
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS).
    #[arg(long = "redis-url", env = ENV_REDIS_URL, default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Prefix of every key this deployment writes (`<prefix>:<topic>:<partition>`).
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

/// Validated Redis settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub client: redis::Client,
    pub key_prefix: String,
    pub command_timeout: Duration,
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
        let client = match self.url.as_str().into_connection_info() {
            Ok(info) => {
                if password.is_some() && info.redis_settings().password().is_some() {
                    errors.push(ConfigError::new(
                        ENV_REDIS_PASSWORD_FILE,
                        "redis-password-file",
                        "the URL has a password too: give it once",
                    ));
                }
                let info = match password {
                    Some(p) => {
                        let r = info.redis_settings().clone().set_password(p);
                        info.set_redis_settings(r)
                    }
                    None => info,
                };
                self.open(info, &mut errors)
            }
            Err(e) => {
                // The URL may hold a password: it is not repeated here.
                errors.push(ConfigError::new(
                    ENV_REDIS_URL,
                    "redis-url",
                    format!("{:?} is not a Redis URL: {e}", redact_url(&self.url)),
                ));
                None
            }
        };
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            errors.push(ConfigError::new(
                ENV_REDIS_KEY_PREFIX,
                "redis-key-prefix",
                "must be non-empty and contain no whitespace",
            ));
        }
        let command_timeout = crate::config::positive_ms(
            ENV_REDIS_TIMEOUT_MS,
            "redis-command-timeout-ms",
            self.command_timeout_ms,
            &mut errors,
        );
        match client {
            Some(client) if errors.is_empty() => Ok(RedisSettings {
                client,
                key_prefix: self.key_prefix.clone(),
                command_timeout,
            }),
            _ => Err(errors),
        }
    }
}

impl RedisArgs {
    /// The client for `info`, with the TLS files when any is given.
    fn open(
        &self,
        info: redis::ConnectionInfo,
        errors: &mut ConfigErrors,
    ) -> Option<redis::Client> {
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
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
        if root_cert.is_none() && client_tls.is_none() {
            return redis::Client::open(info).ok();
        }
        let certs = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        match redis::Client::build_with_tls(info, certs) {
            Ok(c) => Some(c),
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

impl RedisSettings {
    /// A multiplexed connection that reconnects by itself; every command has the deadline.
    pub async fn connect(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        self.connect_for_blocking(Duration::ZERO).await
    }

    /// Like [`Self::connect`], for a connection that also runs blocking commands of up to
    /// `block` (its response deadline is the command timeout plus `block`).
    pub async fn connect_for_blocking(
        &self,
        block: Duration,
    ) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.command_timeout + block))
            .set_connection_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
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
        let info = s.client.get_connection_info();
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
