//! The one Kafka connection configuration of the project. Every Kafka client (the ingest
//! consumer, the DLQ producer, the CLI's producer, admin and tail clients) is built from a
//! [`KafkaConnection`], which only exists once [`KafkaArgs::validate`] accepted the settings:
//! brokers, security protocol, SASL mechanism and credentials, TLS CA/certificate/key.

use crate::config::{ConfigError, ConfigErrors};
use clap::Args;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientConfig;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const ENV_BROKERS: &str = "KAFKA_BROKERS";
pub const ENV_TOPIC: &str = "KAFKA_TOPIC";
pub const ENV_DLQ_TOPIC: &str = "KAFKA_DLQ_TOPIC";
pub const ENV_SECURITY_PROTOCOL: &str = "KAFKA_SECURITY_PROTOCOL";
pub const ENV_SASL_MECHANISM: &str = "KAFKA_SASL_MECHANISM";
pub const ENV_SASL_USERNAME: &str = "KAFKA_SASL_USERNAME";
pub const ENV_SASL_PASSWORD: &str = "KAFKA_SASL_PASSWORD";
pub const ENV_SSL_CA_LOCATION: &str = "KAFKA_SSL_CA_LOCATION";
pub const ENV_SSL_CERTIFICATE_LOCATION: &str = "KAFKA_SSL_CERTIFICATE_LOCATION";
pub const ENV_SSL_KEY_LOCATION: &str = "KAFKA_SSL_KEY_LOCATION";
pub const ENV_SSL_KEY_PASSWORD: &str = "KAFKA_SSL_KEY_PASSWORD";
pub const ENV_SASL_PASSWORD_FILE: &str = "KAFKA_SASL_PASSWORD_FILE";
pub const ENV_SSL_KEY_PASSWORD_FILE: &str = "KAFKA_SSL_KEY_PASSWORD_FILE";

/// Connection flags shared by every Kafka command and service.
#[derive(Args, Debug, Clone, Default)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port (required).
    #[arg(long = "kafka-brokers", env = ENV_BROKERS)]
    pub brokers: Option<String>,
    /// plaintext | ssl | sasl_plaintext | sasl_ssl
    #[arg(long = "kafka-security-protocol", env = ENV_SECURITY_PROTOCOL, default_value = "plaintext")]
    pub security_protocol: String,
    /// PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with a sasl_* protocol)
    #[arg(long = "kafka-sasl-mechanism", env = ENV_SASL_MECHANISM)]
    pub sasl_mechanism: Option<String>,
    #[arg(long = "kafka-sasl-username", env = ENV_SASL_USERNAME)]
    pub sasl_username: Option<String>,
    #[arg(long = "kafka-sasl-password", env = ENV_SASL_PASSWORD, hide_env_values = true)]
    pub sasl_password: Option<String>,
    /// The SASL password from a file (a mounted secret), instead of KAFKA_SASL_PASSWORD.
    #[arg(long = "kafka-sasl-password-file", env = ENV_SASL_PASSWORD_FILE)]
    pub sasl_password_file: Option<PathBuf>,
    /// CA bundle (PEM) to verify the brokers (with an ssl protocol).
    #[arg(long = "kafka-ssl-ca-location", env = ENV_SSL_CA_LOCATION)]
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs the key too.
    #[arg(long = "kafka-ssl-certificate-location", env = ENV_SSL_CERTIFICATE_LOCATION)]
    pub ssl_certificate_location: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs the certificate too.
    #[arg(long = "kafka-ssl-key-location", env = ENV_SSL_KEY_LOCATION)]
    pub ssl_key_location: Option<PathBuf>,
    #[arg(long = "kafka-ssl-key-password", env = ENV_SSL_KEY_PASSWORD, hide_env_values = true)]
    pub ssl_key_password: Option<String>,
    /// The key's password from a file, instead of KAFKA_SSL_KEY_PASSWORD.
    #[arg(long = "kafka-ssl-key-password-file", env = ENV_SSL_KEY_PASSWORD_FILE)]
    pub ssl_key_password_file: Option<PathBuf>,
}

/// The topic flags shared by every command and service.
#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    /// The event topic.
    #[arg(long = "kafka-topic", env = ENV_TOPIC, default_value = crate::DEFAULT_TOPIC)]
    pub topic: String,
    /// The dead-letter topic (default: `<topic>-dlq`).
    #[arg(long = "kafka-dlq-topic", env = ENV_DLQ_TOPIC)]
    pub dlq_topic: Option<String>,
}

impl TopicArgs {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.topic))
    }

    pub fn validate(&self) -> ConfigErrors {
        let mut errors = ConfigErrors::default();
        for (env, flag, name) in [
            (ENV_TOPIC, "kafka-topic", Some(self.topic.clone())),
            (ENV_DLQ_TOPIC, "kafka-dlq-topic", self.dlq_topic.clone()),
        ] {
            if let Some(name) = name {
                if let Err(problem) = valid_topic_name(&name) {
                    errors.push(ConfigError::new(env, flag, problem));
                }
            }
        }
        if self.dlq_topic() == self.topic {
            errors.push(ConfigError::new(
                ENV_DLQ_TOPIC,
                "kafka-dlq-topic",
                "must differ from the event topic",
            ));
        }
        errors
    }
}

fn valid_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name must be 1..249 characters, got {:?}",
            name
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; allowed: [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Some(Self::Plaintext),
            "ssl" => Some(Self::Ssl),
            "sasl_plaintext" => Some(Self::SaslPlaintext),
            "sasl_ssl" => Some(Self::SaslSsl),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// A validated connection: the only way to build a Kafka client in this project.
#[derive(Clone)]
pub struct KafkaConnection {
    brokers: String,
    protocol: SecurityProtocol,
    sasl: Option<(String, String, String)>,
    ssl_ca: Option<PathBuf>,
    ssl_cert_key: Option<(PathBuf, PathBuf)>,
    ssl_key_password: Option<String>,
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("protocol", &self.protocol)
            .field("sasl_user", &self.sasl.as_ref().map(|s| &s.1))
            .finish_non_exhaustive()
    }
}

impl KafkaArgs {
    /// Checks every setting and reports all problems at once.
    pub fn validate(&self) -> Result<KafkaConnection, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        // Secrets from files: each read once here, never logged.
        let mut this = self.clone();
        for (value, file, env, flag, env_file, flag_file) in [
            (
                &mut this.sasl_password,
                &self.sasl_password_file,
                ENV_SASL_PASSWORD,
                "kafka-sasl-password",
                ENV_SASL_PASSWORD_FILE,
                "kafka-sasl-password-file",
            ),
            (
                &mut this.ssl_key_password,
                &self.ssl_key_password_file,
                ENV_SSL_KEY_PASSWORD,
                "kafka-ssl-key-password",
                ENV_SSL_KEY_PASSWORD_FILE,
                "kafka-ssl-key-password-file",
            ),
        ] {
            let Some(f) = file else { continue };
            if value.is_some() {
                errors.push(ConfigError::new(
                    env_file,
                    flag_file,
                    format!("give {env} (--{flag}) or this, not both"),
                ));
                continue;
            }
            match crate::config::read_secret(f) {
                Ok(p) => *value = Some(p),
                Err(e) => errors.push(ConfigError::new(env_file, flag_file, e)),
            }
        }
        let result = this.validate_values();
        if errors.is_empty() {
            return result;
        }
        if let Err(e) = result {
            errors.extend(e);
        }
        Err(errors)
    }

    fn validate_values(&self) -> Result<KafkaConnection, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let brokers = self.brokers.clone().unwrap_or_default();
        if brokers.trim().is_empty() {
            errors.push(ConfigError::new(
                ENV_BROKERS,
                "kafka-brokers",
                "is required (comma-separated host:port list)",
            ));
        } else {
            for b in brokers.split(',') {
                let b = b.trim();
                let ok = b
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    errors.push(ConfigError::new(
                        ENV_BROKERS,
                        "kafka-brokers",
                        format!("{b:?} is not host:port"),
                    ));
                }
            }
        }
        let protocol = SecurityProtocol::parse(&self.security_protocol);
        if protocol.is_none() {
            errors.push(ConfigError::new(
                ENV_SECURITY_PROTOCOL,
                "kafka-security-protocol",
                format!(
                    "{:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl",
                    self.security_protocol
                ),
            ));
        }
        let protocol = protocol.unwrap_or(SecurityProtocol::Plaintext);
        let mut sasl = None;
        if protocol.sasl() {
            let mech = self.sasl_mechanism.clone().unwrap_or_default();
            if !matches!(mech.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                errors.push(ConfigError::new(
                    ENV_SASL_MECHANISM,
                    "kafka-sasl-mechanism",
                    format!(
                        "{mech:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (required by {})",
                        protocol.as_str()
                    ),
                ));
            }
            let user = self.sasl_username.clone().unwrap_or_default();
            let pass = self.sasl_password.clone().unwrap_or_default();
            if user.is_empty() {
                errors.push(ConfigError::new(
                    ENV_SASL_USERNAME,
                    "kafka-sasl-username",
                    format!("is required with {}", protocol.as_str()),
                ));
            }
            if pass.is_empty() {
                errors.push(ConfigError::new(
                    ENV_SASL_PASSWORD,
                    "kafka-sasl-password",
                    format!("is required with {}", protocol.as_str()),
                ));
            }
            sasl = Some((mech, user, pass));
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            errors.push(ConfigError::new(
                ENV_SECURITY_PROTOCOL,
                "kafka-security-protocol",
                "SASL settings are given but the protocol is not sasl_plaintext or sasl_ssl",
            ));
        }
        // A password alone counts too: silently ignoring it hides a wrong protocol.
        let tls_given = self.ssl_ca_location.is_some()
            || self.ssl_certificate_location.is_some()
            || self.ssl_key_location.is_some()
            || self.ssl_key_password.is_some();
        if tls_given && !protocol.tls() {
            errors.push(ConfigError::new(
                ENV_SECURITY_PROTOCOL,
                "kafka-security-protocol",
                "TLS files are given but the protocol is not ssl or sasl_ssl",
            ));
        }
        for (env, flag, path) in [
            (
                ENV_SSL_CA_LOCATION,
                "kafka-ssl-ca-location",
                &self.ssl_ca_location,
            ),
            (
                ENV_SSL_CERTIFICATE_LOCATION,
                "kafka-ssl-certificate-location",
                &self.ssl_certificate_location,
            ),
            (
                ENV_SSL_KEY_LOCATION,
                "kafka-ssl-key-location",
                &self.ssl_key_location,
            ),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    errors.push(ConfigError::new(
                        env,
                        flag,
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        let ssl_cert_key = match (&self.ssl_certificate_location, &self.ssl_key_location) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => {
                errors.push(ConfigError::new(
                    ENV_SSL_KEY_LOCATION,
                    "kafka-ssl-key-location",
                    "is required when a client certificate is given",
                ));
                None
            }
            (None, Some(_)) => {
                errors.push(ConfigError::new(
                    ENV_SSL_CERTIFICATE_LOCATION,
                    "kafka-ssl-certificate-location",
                    "is required when a client key is given",
                ));
                None
            }
        };
        errors.into_result(KafkaConnection {
            brokers: brokers.trim().to_string(),
            protocol,
            sasl,
            ssl_ca: self.ssl_ca_location.clone(),
            ssl_cert_key,
            ssl_key_password: self.ssl_key_password.clone(),
        })
    }
}

impl KafkaConnection {
    /// A plaintext connection to `brokers` (tests and tools that already know the brokers).
    pub fn plaintext(brokers: &str) -> Self {
        KafkaArgs {
            brokers: Some(brokers.to_string()),
            security_protocol: "plaintext".into(),
            ..KafkaArgs::default()
        }
        .validate()
        .expect("valid plaintext broker list")
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A client config carrying the connection settings; callers add their role's settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.protocol.as_str())
            .set("client.dns.lookup", "use_all_dns_ips");
        if let Some((mech, user, pass)) = &self.sasl {
            c.set("sasl.mechanism", mech)
                .set("sasl.username", user)
                .set("sasl.password", pass);
        }
        if let Some(ca) = &self.ssl_ca {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((cert, key)) = &self.ssl_cert_key {
            c.set("ssl.certificate.location", cert.display().to_string())
                .set("ssl.key.location", key.display().to_string());
        }
        if let Some(p) = &self.ssl_key_password {
            c.set("ssl.key.password", p);
        }
        c
    }

    /// A refusal by the brokers, from one of librdkafka's errors (`code`, `reason`), as the
    /// setting to check: a failed SASL login names the password, a broker certificate the CA
    /// bundle does not verify names the CA, and a TLS alert from the broker (it refused our
    /// client certificate, or wants one) names the certificate. `None` for everything else
    /// (an unreachable broker is an outage, not a setting).
    pub fn refusal(&self, code: RDKafkaErrorCode, reason: &str) -> Option<ConfigError> {
        let r = reason.to_ascii_lowercase();
        let sasl_refused = matches!(
            code,
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed
        );
        if sasl_refused && self.protocol.sasl() {
            let (mech, user, _) = self.sasl.as_ref()?;
            return Some(ConfigError::new(
                ENV_SASL_PASSWORD,
                "kafka-sasl-password",
                format!(
                    "the brokers refused the {mech} login of user {user:?} (check {ENV_SASL_USERNAME}, {ENV_SASL_PASSWORD} or {ENV_SASL_PASSWORD_FILE}, {ENV_SASL_MECHANISM}): {reason}"
                ),
            ));
        }
        // A failed handshake is SSL; an alert after it (TLS 1.3: the broker checks the client
        // certificate once the client is done) arrives as a transport failure.
        let tls_failure = code == RDKafkaErrorCode::SSL
            || (self.protocol.tls()
                && (r.contains("ssl handshake failed") || r.contains("ssl alert")));
        if !tls_failure {
            return None;
        }
        if r.contains("certificate verify failed") || r.contains("could not be verified") {
            let ca = self.ssl_ca.as_ref().map_or_else(
                || "the system's CA certificates".to_string(),
                |p| p.display().to_string(),
            );
            return Some(ConfigError::new(
                ENV_SSL_CA_LOCATION,
                "kafka-ssl-ca-location",
                format!("the broker's certificate is not signed by a CA in {ca}: {reason}"),
            ));
        }
        // The broker ended the handshake with an alert: it did not accept (or got no) client
        // certificate.
        if r.contains("alert") {
            let problem = match &self.ssl_cert_key {
                Some((cert, _)) => format!(
                    "the broker refused the client certificate {} (not signed by a CA it trusts, expired, or not for client authentication): {reason}",
                    cert.display()
                ),
                None => format!(
                    "the broker wants a client certificate (set it and {ENV_SSL_KEY_LOCATION}): {reason}"
                ),
            };
            return Some(ConfigError::new(
                ENV_SSL_CERTIFICATE_LOCATION,
                "kafka-ssl-certificate-location",
                problem,
            ));
        }
        Some(ConfigError::new(
            ENV_SECURITY_PROTOCOL,
            "kafka-security-protocol",
            format!(
                "the TLS handshake with the brokers failed (is {} a TLS listener?): {reason}",
                self.brokers
            ),
        ))
    }

    /// Connects and fetches the metadata (of `topic`, or of the cluster) within `timeout`,
    /// serving librdkafka's errors meanwhile, so a refusal of the credentials or certificates
    /// is reported at once (librdkafka itself only logs it and retries forever). Blocking.
    pub fn check_access(
        &self,
        topic: Option<&str>,
        timeout: Duration,
    ) -> Result<Metadata, AccessError> {
        let probe: BaseProducer<RecordErrors> = self
            .client_config()
            .create_with_context(RecordErrors::default())
            .map_err(|e| AccessError::Unreachable(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            let attempt = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(50), Duration::from_millis(500));
            match probe.client().fetch_metadata(topic, attempt) {
                Ok(md) => return Ok(md),
                Err(e) => last = e.to_string(),
            }
            probe.poll(Duration::ZERO);
            let errors = std::mem::take(&mut *probe.context().0.lock().unwrap());
            for (code, reason) in errors {
                if let Some(refusal) = self.refusal(code, &reason) {
                    return Err(AccessError::Refused(refusal));
                }
                last = reason;
            }
            if Instant::now() >= deadline {
                return Err(AccessError::Unreachable(format!(
                    "no metadata from {} within {timeout:?}: {last}",
                    self.brokers
                )));
            }
        }
    }
}

/// Why [`KafkaConnection::check_access`] got no metadata.
#[derive(Debug)]
pub enum AccessError {
    /// The brokers refused this client: a setting is wrong (named).
    Refused(ConfigError),
    /// No answer in time (the brokers may be down or starting): worth retrying.
    Unreachable(String),
}

/// A client context that keeps librdkafka's errors (code and reason) for the caller.
#[derive(Default)]
struct RecordErrors(Mutex<Vec<(RDKafkaErrorCode, String)>>);

impl ClientContext for RecordErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error during the access check");
        if let Some(code) = error.rdkafka_error_code() {
            self.0.lock().unwrap().push((code, reason.to_string()));
        }
    }
}

impl ProducerContext for RecordErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: Option<&str>) -> KafkaArgs {
        KafkaArgs {
            brokers: brokers.map(String::from),
            security_protocol: "plaintext".into(),
            ..KafkaArgs::default()
        }
    }

    fn settings(e: ConfigErrors) -> Vec<String> {
        e.0.into_iter().map(|e| e.setting).collect()
    }

    #[test]
    fn brokers_are_required_and_checked() {
        let e = args(None).validate().unwrap_err();
        assert_eq!(settings(e), vec!["KAFKA_BROKERS (--kafka-brokers)"]);
        assert!(args(Some("localhost")).validate().is_err());
        assert!(args(Some("a:1,b:2")).validate().is_ok());
    }

    #[test]
    fn the_sasl_password_comes_from_a_file_once() {
        let f = std::env::temp_dir().join(format!("kafka-secret-{}", std::process::id()));
        std::fs::write(&f, "s3cret\n").unwrap();
        let mut a = args(Some("a:1"));
        a.security_protocol = "sasl_plaintext".into();
        a.sasl_mechanism = Some("SCRAM-SHA-512".into());
        a.sasl_username = Some("ingest".into());
        a.sasl_password_file = Some(f.clone());
        let conn = a.validate().expect("password from the file");
        assert!(
            !format!("{conn:?}").contains("s3cret"),
            "never in Debug output"
        );
        a.sasl_password = Some("other".into());
        let s = settings(a.validate().unwrap_err());
        assert_eq!(
            s,
            vec!["KAFKA_SASL_PASSWORD_FILE (--kafka-sasl-password-file)"]
        );
        a.sasl_password = None;
        a.sasl_password_file = Some(f.with_extension("missing"));
        let e = a.validate().unwrap_err();
        assert!(e.to_string().contains("KAFKA_SASL_PASSWORD_FILE"), "{e}");
        let _ = std::fs::remove_file(f);
    }

    #[test]
    fn sasl_needs_mechanism_and_credentials() {
        let mut a = args(Some("a:1"));
        a.security_protocol = "sasl_ssl".into();
        let s = settings(a.validate().unwrap_err());
        assert!(s.contains(&"KAFKA_SASL_MECHANISM (--kafka-sasl-mechanism)".to_string()));
        assert!(s.contains(&"KAFKA_SASL_USERNAME (--kafka-sasl-username)".to_string()));
        assert!(s.contains(&"KAFKA_SASL_PASSWORD (--kafka-sasl-password)".to_string()));
        a.sasl_mechanism = Some("SCRAM-SHA-512".into());
        a.sasl_username = Some("u".into());
        a.sasl_password = Some("p".into());
        let c = a.validate().unwrap().client_config();
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
    }

    #[test]
    fn a_password_for_a_protocol_not_in_use_is_refused_not_ignored() {
        let mut a = args(Some("a:1"));
        a.sasl_password = Some("p".into());
        let s = settings(a.validate().unwrap_err());
        assert_eq!(
            s,
            vec!["KAFKA_SECURITY_PROTOCOL (--kafka-security-protocol)"]
        );
        let mut a = args(Some("a:1"));
        a.ssl_key_password = Some("p".into());
        let s = settings(a.validate().unwrap_err());
        assert_eq!(
            s,
            vec!["KAFKA_SECURITY_PROTOCOL (--kafka-security-protocol)"]
        );
    }

    #[test]
    fn tls_files_must_exist_and_pair() {
        let mut a = args(Some("a:1"));
        a.security_protocol = "ssl".into();
        a.ssl_certificate_location = Some("/nonexistent.pem".into());
        let s = settings(a.validate().unwrap_err());
        assert!(s.contains(
            &"KAFKA_SSL_CERTIFICATE_LOCATION (--kafka-ssl-certificate-location)".to_string()
        ));
        assert!(s.contains(&"KAFKA_SSL_KEY_LOCATION (--kafka-ssl-key-location)".to_string()));
    }

    /// A TLS connection as `validate` builds it (the classification only reads the paths).
    fn tls_connection(protocol: &str) -> KafkaConnection {
        let dir = std::env::temp_dir();
        let mut conn = KafkaConnection::plaintext("127.0.0.1:9093");
        conn.protocol = SecurityProtocol::parse(protocol).unwrap();
        if conn.protocol.sasl() {
            conn.sasl = Some(("SCRAM-SHA-512".into(), "ingest".into(), "wrong".into()));
        }
        conn.ssl_ca = Some(dir.join("ca.pem"));
        conn.ssl_cert_key = Some((dir.join("client.pem"), dir.join("client.key")));
        conn
    }

    fn refused_setting(conn: &KafkaConnection, code: RDKafkaErrorCode, reason: &str) -> String {
        conn.refusal(code, reason)
            .map(|e| e.setting)
            .unwrap_or_default()
    }

    #[test]
    fn refusals_name_the_setting_to_check() {
        // Reasons as librdkafka 2.12 reports them.
        let sasl = tls_connection("sasl_ssl");
        let e = sasl
            .refusal(
                RDKafkaErrorCode::Authentication,
                "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication \
                 failed during authentication due to invalid credentials with SASL mechanism \
                 SCRAM-SHA-512 (after 12ms in state AUTH_REQ)",
            )
            .expect("a refusal");
        assert_eq!(e.setting, "KAFKA_SASL_PASSWORD (--kafka-sasl-password)");
        assert!(e.problem.contains("\"ingest\""), "{e}");
        assert!(!e.to_string().contains("wrong"), "never the password: {e}");

        let ca = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL \
                  routines::certificate verify failed: broker certificate could not be verified, \
                  verify that ssl.ca.location is correctly configured";
        let mtls = tls_connection("ssl");
        for conn in [&sasl, &mtls] {
            assert_eq!(
                refused_setting(conn, RDKafkaErrorCode::SSL, ca),
                "KAFKA_SSL_CA_LOCATION (--kafka-ssl-ca-location)"
            );
        }
        let alert = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: \
                     ssl/record/rec_layer_s3.c:1605: error:0A000418:SSL routines::tlsv1 alert \
                     unknown ca: SSL alert number 48";
        let after_handshake = "ssl://127.0.0.1:9093/bootstrap: Receive failed: \
             error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 \
             (after 0ms in state APIVERSION_QUERY)";
        assert_eq!(
            refused_setting(
                &mtls,
                RDKafkaErrorCode::BrokerTransportFailure,
                after_handshake
            ),
            "KAFKA_SSL_CERTIFICATE_LOCATION (--kafka-ssl-certificate-location)"
        );
        assert_eq!(
            refused_setting(&mtls, RDKafkaErrorCode::SSL, alert),
            "KAFKA_SSL_CERTIFICATE_LOCATION (--kafka-ssl-certificate-location)"
        );
        assert_eq!(
            refused_setting(
                &mtls,
                RDKafkaErrorCode::SSL,
                "SSL handshake failed: wrong version number"
            ),
            "KAFKA_SECURITY_PROTOCOL (--kafka-security-protocol)"
        );
        // An outage is not a setting: it is waited out.
        for (code, reason) in [
            (RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"),
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                "ssl://127.0.0.1:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: \
                 Connection refused",
            ),
        ] {
            assert!(mtls.refusal(code, reason).is_none(), "{reason}");
            assert!(sasl.refusal(code, reason).is_none(), "{reason}");
        }
        // Without SASL, an authentication error is not about a password.
        assert!(mtls
            .refusal(
                RDKafkaErrorCode::Authentication,
                "SASL authentication error"
            )
            .is_none());
    }

    #[test]
    fn unknown_protocol_is_named() {
        let mut a = args(Some("a:1"));
        a.security_protocol = "tls".into();
        let s = settings(a.validate().unwrap_err());
        assert_eq!(
            s,
            vec!["KAFKA_SECURITY_PROTOCOL (--kafka-security-protocol)"]
        );
    }

    #[test]
    fn topic_names_are_checked() {
        let t = TopicArgs {
            topic: "bad topic".into(),
            dlq_topic: None,
        };
        assert_eq!(t.validate().0.len(), 1);
        let t = TopicArgs {
            topic: "x".into(),
            dlq_topic: Some("x".into()),
        };
        assert_eq!(t.validate().0.len(), 1);
        let t = TopicArgs {
            topic: crate::DEFAULT_TOPIC.into(),
            dlq_topic: None,
        };
        assert!(t.validate().is_empty());
        assert_eq!(t.dlq_topic(), "dashstream-events-dlq");
    }
}
