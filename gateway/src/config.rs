//! Settings of the gateway service: one flag and one environment variable each, every problem
//! reported at once (the binary exits 64 on any).

use crate::ws::WsSettings;
use clap::Parser;
use dashstream::config::{positive_ms, ConfigError, ConfigErrors};
use dashstream::kafka::ENV_TOPIC;
use dashstream::redis_config::{RedisArgs, RedisSettings};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "DashStream gateway: Redis Streams -> WebSocket clients"
)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The event topic whose streams are served.
    #[arg(long = "kafka-topic", env = ENV_TOPIC, default_value = dashstream::DEFAULT_TOPIC)]
    pub topic: String,
    /// Address of /ws, /metrics, /healthz and /readyz.
    #[arg(
        long = "listen",
        env = "GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: String,
    /// Address of /metrics, /healthz and /readyz on their own listener; `GATEWAY_LISTEN` then
    /// serves only /ws and the viewer (unset: all on `GATEWAY_LISTEN`).
    #[arg(long = "ops-listen", env = "GATEWAY_OPS_LISTEN")]
    pub ops_listen: Option<String>,
    /// Name of this replica in `welcome` frames (default: hostname-pid).
    #[arg(long = "replica-id", env = "GATEWAY_REPLICA_ID")]
    pub replica_id: Option<String>,
    #[arg(
        long = "max-connections",
        env = "GATEWAY_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,
    #[arg(
        long = "max-connections-per-ip",
        env = "GATEWAY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 100
    )]
    pub max_connections_per_ip: usize,
    /// Connections not yet upgraded (request heads being read) one client address may hold;
    /// more are closed at accept. A trusted proxy (GATEWAY_TRUSTED_PROXIES) is not limited.
    #[arg(
        long = "max-pending-per-ip",
        env = "GATEWAY_MAX_PENDING_PER_IP",
        default_value_t = dashstream::http::MAX_CONNECTIONS_PER_IP
    )]
    pub max_pending_per_ip: usize,
    /// Upgrades per second one client (an address, an IPv6 /64) may make, refilling a bucket of
    /// `GATEWAY_UPGRADE_BURST_PER_IP`; 0: unlimited. Checked before any token or Redis work.
    #[arg(
        long = "upgrade-rate-per-ip",
        env = "GATEWAY_UPGRADE_RATE_PER_IP",
        default_value_t = 20.0
    )]
    pub upgrade_rate_per_ip: f64,
    #[arg(
        long = "upgrade-burst-per-ip",
        env = "GATEWAY_UPGRADE_BURST_PER_IP",
        default_value_t = 100.0
    )]
    pub upgrade_burst_per_ip: f64,
    /// Proxies whose X-Forwarded-For is believed: comma-separated addresses or CIDR ranges.
    #[arg(
        long = "trusted-proxies",
        env = "GATEWAY_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: String,
    /// Largest frame a client may send.
    #[arg(
        long = "max-client-frame-bytes",
        env = "GATEWAY_MAX_CLIENT_FRAME_BYTES",
        default_value_t = 4096
    )]
    pub max_client_frame_bytes: usize,
    /// Frames queued per client; when it is full the client's feed waits, and a client that
    /// falls behind the live buffer meanwhile is fed from Redis history.
    #[arg(long = "send-queue", env = "GATEWAY_SEND_QUEUE", default_value_t = 32)]
    pub send_queue: usize,
    /// Bytes of frames queued per client (the same waiting applies; a single larger frame
    /// takes the whole budget).
    #[arg(
        long = "send-queue-bytes",
        env = "GATEWAY_SEND_QUEUE_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub send_queue_bytes: usize,
    /// Bytes of frames queued to clients (or being written) over all connections; above it
    /// the connection holding the most is closed with 4009 (it resumes with its cursor).
    #[arg(
        long = "outbound-buffer-bytes",
        env = "GATEWAY_OUTBOUND_BUFFER_BYTES",
        default_value_t = 512 * 1024 * 1024
    )]
    pub outbound_buffer_bytes: usize,
    /// Fan-out shards: each has its own copy of the live ring, fed by one task, and wakes only
    /// its own sessions (default: one per core; 1 is one ring for all).
    #[arg(long = "fanout-shards", env = "GATEWAY_FANOUT_SHARDS")]
    pub fanout_shards: Option<usize>,
    /// Tail passes kept in the shared live buffer (its byte budget,
    /// `GATEWAY_LIVE_BUFFER_BYTES`, is what binds under load: at 20k events/s a tail pass
    /// holds few events, and 1024 passes was one second).
    #[arg(
        long = "live-buffer",
        env = "GATEWAY_LIVE_BUFFER",
        default_value_t = 8192
    )]
    pub live_buffer: usize,
    /// Bytes of tail passes the shared live buffer may hold before the sessions furthest
    /// behind leave it for Redis history.
    #[arg(
        long = "live-buffer-bytes",
        env = "GATEWAY_LIVE_BUFFER_BYTES",
        default_value_t = 64 * 1024 * 1024
    )]
    pub live_buffer_bytes: usize,
    /// Largest `events` frame, in bytes (an event larger than this goes alone in its own
    /// frame).
    #[arg(
        long = "max-frame-bytes",
        env = "GATEWAY_MAX_FRAME_BYTES",
        default_value_t = 256 * 1024
    )]
    pub max_frame_bytes: usize,
    /// Entries read per history (XRANGE) request.
    #[arg(
        long = "history-page",
        env = "GATEWAY_HISTORY_PAGE",
        default_value_t = 1000
    )]
    pub history_page: usize,
    #[arg(
        long = "ping-interval-ms",
        env = "GATEWAY_PING_INTERVAL_MS",
        default_value_t = 15_000
    )]
    pub ping_interval_ms: u64,
    /// A client silent this long (not even answering pings) is closed.
    #[arg(
        long = "idle-timeout-ms",
        env = "GATEWAY_IDLE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub idle_timeout_ms: u64,
    /// A frame the socket does not take within this time closes the connection.
    #[arg(
        long = "send-timeout-ms",
        env = "GATEWAY_SEND_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub send_timeout_ms: u64,
    /// Deadline for telling every client to reconnect on shutdown.
    #[arg(
        long = "drain-timeout-ms",
        env = "GATEWAY_DRAIN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub drain_timeout_ms: u64,
    /// Bad client frames tolerated before the connection is closed (4008).
    #[arg(
        long = "max-strikes",
        env = "GATEWAY_MAX_STRIKES",
        default_value_t = 10
    )]
    pub max_strikes: u32,
    #[arg(
        long = "sequence-capacity",
        env = "GATEWAY_SEQUENCE_CAPACITY",
        default_value_t = 100_000
    )]
    pub sequence_capacity: usize,
    /// History pages (catch-ups, resumes) read from Redis at once by this replica; further
    /// sessions wait their turn, so catch-ups never queue ahead of the tail loop.
    #[arg(
        long = "history-concurrency",
        env = "GATEWAY_HISTORY_CONCURRENCY",
        default_value_t = 8
    )]
    pub history_concurrency: usize,
    /// Most entries the tail loop reads per partition per pass.
    #[arg(
        long = "tail-read-count",
        env = "GATEWAY_TAIL_READ_COUNT",
        default_value_t = 1000
    )]
    pub tail_read_count: usize,
    /// Bytes (of entry field values) one tail-loop pass reads, shared evenly by the partitions;
    /// each partition still gets at least one entry.
    #[arg(
        long = "tail-read-bytes",
        env = "GATEWAY_TAIL_READ_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub tail_read_bytes: usize,
    /// `jwt` (a token is required at the upgrade) or `none` (anyone who reaches the port reads
    /// every tenant). Unset: `none` on a loopback address; elsewhere the gateway refuses to
    /// start until it is set.
    #[arg(long = "auth", env = "GATEWAY_AUTH")]
    pub auth: Option<String>,
    /// HS256: a file holding the shared secret (at least 32 bytes).
    #[arg(long = "jwt-hs256-secret-file", env = "GATEWAY_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<std::path::PathBuf>,
    /// RS256 / ES256: comma-separated PEM files of public keys.
    #[arg(
        long = "jwt-public-key-files",
        env = "GATEWAY_JWT_PUBLIC_KEY_FILES",
        default_value = ""
    )]
    pub jwt_public_key_files: String,
    /// A JWKS document (`{"keys":[...]}`) of RS256, ES256 or HS256 keys, matched by `kid`.
    #[arg(long = "jwt-jwks-file", env = "GATEWAY_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,
    /// A URL (https://, or http:// on a loopback host) of a JWKS document, fetched at start
    /// (the gateway is not ready until it has keys) and again every
    /// GATEWAY_JWT_JWKS_REFRESH_SECS; a failed or bad fetch keeps the last good keys.
    #[arg(long = "jwt-jwks-url", env = "GATEWAY_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// A CA bundle (PEM) trusted for GATEWAY_JWT_JWKS_URL besides the system's.
    #[arg(long = "jwt-jwks-ca-file", env = "GATEWAY_JWT_JWKS_CA_FILE")]
    pub jwt_jwks_ca_file: Option<std::path::PathBuf>,
    /// Seconds between fetches of GATEWAY_JWT_JWKS_URL.
    #[arg(
        long = "jwt-jwks-refresh-secs",
        env = "GATEWAY_JWT_JWKS_REFRESH_SECS",
        default_value_t = 300
    )]
    pub jwt_jwks_refresh_secs: u64,
    /// Deadline of one fetch of GATEWAY_JWT_JWKS_URL, in milliseconds.
    #[arg(
        long = "jwt-jwks-timeout-ms",
        env = "GATEWAY_JWT_JWKS_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub jwt_jwks_timeout_ms: u64,
    /// A fetched JWKS document larger than this is refused.
    #[arg(
        long = "jwt-jwks-max-bytes",
        env = "GATEWAY_JWT_JWKS_MAX_BYTES",
        default_value_t = 256 * 1024
    )]
    pub jwt_jwks_max_bytes: usize,
    /// A fetched JWKS document with more keys than this is refused.
    #[arg(
        long = "jwt-jwks-max-keys",
        env = "GATEWAY_JWT_JWKS_MAX_KEYS",
        default_value_t = 32
    )]
    pub jwt_jwks_max_keys: usize,
    /// The `iss` a token must carry (unset: not checked).
    #[arg(long = "jwt-issuer", env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` a token must carry (unset: not checked).
    #[arg(long = "jwt-audience", env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-secs",
        env = "GATEWAY_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub jwt_leeway_secs: u64,
    /// The claim naming the tenants a token may read (a string or a list; `*`: all).
    #[arg(
        long = "jwt-tenants-claim",
        env = "GATEWAY_JWT_TENANTS_CLAIM",
        default_value = "tenants"
    )]
    pub jwt_tenants_claim: String,
    /// A claim naming the event types a token may read (unset: no type scope).
    #[arg(long = "jwt-types-claim", env = "GATEWAY_JWT_TYPES_CLAIM")]
    pub jwt_types_claim: Option<String>,
    /// Browser origins allowed to open `/ws` (comma-separated, like `https://dash.example.com`;
    /// `*` allows any). The gateway's own origin (the viewer it serves) is always allowed; a
    /// request without `Origin` (not a browser) is not checked.
    #[arg(
        long = "allowed-origins",
        env = "GATEWAY_ALLOWED_ORIGINS",
        default_value = ""
    )]
    pub allowed_origins: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub auth: AuthMode,
    /// Lower-case origins allowed besides the gateway's own (`*`: any).
    pub allowed_origins: Vec<String>,
    pub redis: RedisSettings,
    pub topic: String,
    pub listen: SocketAddr,
    pub ops_listen: Option<SocketAddr>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_pending_per_ip: usize,
    /// Upgrades per second and burst per client (0: unlimited).
    pub upgrade_rate: (f64, f64),
    pub trusted_proxies: Vec<IpNet>,
    pub live_buffer: usize,
    pub live_buffer_bytes: usize,
    pub outbound_buffer_bytes: usize,
    pub fanout_shards: usize,
    pub drain_timeout: Duration,
    pub sequence_capacity: usize,
    pub history_concurrency: usize,
    pub tail_read_count: usize,
    pub tail_read_bytes: usize,
    pub ws: WsSettings,
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

impl GatewayArgs {
    pub fn validate(&self) -> Result<GatewaySettings, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let redis = self.redis.validate().map_err(|e| errors.extend(e)).ok();
        let topic_check = dashstream::kafka::TopicArgs {
            topic: self.topic.clone(),
            dlq_topic: None,
        };
        errors.extend(topic_check.validate());
        let listen = self.listen.parse::<SocketAddr>().map_err(|_| {
            errors.push(ConfigError::new(
                "GATEWAY_LISTEN",
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8080", self.listen),
            ))
        });
        let ops_listen = match self.ops_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(ConfigError::new(
                        "GATEWAY_OPS_LISTEN",
                        "ops-listen",
                        format!("{a:?} is not an address like 127.0.0.1:9102"),
                    ));
                    None
                }
            },
        };
        let mut trusted = Vec::new();
        for s in self
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match parse_net(s) {
                Some(n) => trusted.push(n),
                None => errors.push(ConfigError::new(
                    "GATEWAY_TRUSTED_PROXIES",
                    "trusted-proxies",
                    format!("{s:?} is not an address or CIDR range"),
                )),
            }
        }
        if !(self.upgrade_rate_per_ip >= 0.0 && self.upgrade_burst_per_ip >= 1.0) {
            errors.push(ConfigError::new(
                "GATEWAY_UPGRADE_RATE_PER_IP",
                "upgrade-rate-per-ip",
                "the rate must be 0 (unlimited) or more, and GATEWAY_UPGRADE_BURST_PER_IP at least 1",
            ));
        }
        let mut at_least = |env: &str, flag: &str, v: u64, min: u64| {
            if v < min {
                errors.push(ConfigError::new(
                    env,
                    flag,
                    format!("must be at least {min}"),
                ));
            }
        };
        at_least(
            "GATEWAY_MAX_CONNECTIONS",
            "max-connections",
            self.max_connections as u64,
            1,
        );
        at_least(
            "GATEWAY_MAX_CONNECTIONS_PER_IP",
            "max-connections-per-ip",
            self.max_connections_per_ip as u64,
            1,
        );
        at_least(
            "GATEWAY_MAX_CLIENT_FRAME_BYTES",
            "max-client-frame-bytes",
            self.max_client_frame_bytes as u64,
            64,
        );
        at_least(
            "GATEWAY_SEND_QUEUE",
            "send-queue",
            self.send_queue as u64,
            1,
        );
        at_least(
            "GATEWAY_LIVE_BUFFER",
            "live-buffer",
            self.live_buffer as u64,
            1,
        );
        at_least(
            "GATEWAY_LIVE_BUFFER_BYTES",
            "live-buffer-bytes",
            self.live_buffer_bytes as u64,
            1024 * 1024,
        );
        at_least(
            "GATEWAY_MAX_FRAME_BYTES",
            "max-frame-bytes",
            self.max_frame_bytes as u64,
            1024,
        );
        at_least(
            "GATEWAY_SEND_QUEUE_BYTES",
            "send-queue-bytes",
            self.send_queue_bytes as u64,
            1024,
        );
        at_least(
            "GATEWAY_FANOUT_SHARDS",
            "fanout-shards",
            self.fanout_shards.unwrap_or(1) as u64,
            1,
        );
        at_least(
            "GATEWAY_OUTBOUND_BUFFER_BYTES",
            "outbound-buffer-bytes",
            self.outbound_buffer_bytes as u64,
            1024 * 1024,
        );
        at_least(
            "GATEWAY_HISTORY_PAGE",
            "history-page",
            self.history_page as u64,
            1,
        );
        at_least(
            "GATEWAY_MAX_STRIKES",
            "max-strikes",
            self.max_strikes as u64,
            1,
        );
        at_least(
            "GATEWAY_SEQUENCE_CAPACITY",
            "sequence-capacity",
            self.sequence_capacity as u64,
            1,
        );
        at_least(
            "GATEWAY_HISTORY_CONCURRENCY",
            "history-concurrency",
            self.history_concurrency as u64,
            1,
        );
        at_least(
            "GATEWAY_TAIL_READ_COUNT",
            "tail-read-count",
            self.tail_read_count as u64,
            1,
        );
        at_least(
            "GATEWAY_TAIL_READ_BYTES",
            "tail-read-bytes",
            self.tail_read_bytes as u64,
            1024,
        );
        let ping = positive_ms(
            "GATEWAY_PING_INTERVAL_MS",
            "ping-interval-ms",
            self.ping_interval_ms,
            &mut errors,
        );
        let idle = positive_ms(
            "GATEWAY_IDLE_TIMEOUT_MS",
            "idle-timeout-ms",
            self.idle_timeout_ms,
            &mut errors,
        );
        let send = positive_ms(
            "GATEWAY_SEND_TIMEOUT_MS",
            "send-timeout-ms",
            self.send_timeout_ms,
            &mut errors,
        );
        let drain = positive_ms(
            "GATEWAY_DRAIN_TIMEOUT_MS",
            "drain-timeout-ms",
            self.drain_timeout_ms,
            &mut errors,
        );
        let auth = self.auth_settings(&listen, &mut errors);
        if idle <= ping {
            errors.push(ConfigError::new(
                "GATEWAY_IDLE_TIMEOUT_MS",
                "idle-timeout-ms",
                "must be longer than the ping interval",
            ));
        }
        match (redis, listen) {
            (Some(redis), Ok(listen)) if errors.is_empty() => Ok(GatewaySettings {
                auth: auth.expect("checked with the other errors"),
                allowed_origins: self
                    .allowed_origins
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect(),
                redis,
                topic: self.topic.clone(),
                listen,
                ops_listen,
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                max_pending_per_ip: self.max_pending_per_ip.max(1),
                upgrade_rate: (self.upgrade_rate_per_ip, self.upgrade_burst_per_ip),
                trusted_proxies: trusted,
                live_buffer: self.live_buffer,
                live_buffer_bytes: self.live_buffer_bytes,
                outbound_buffer_bytes: self.outbound_buffer_bytes,
                fanout_shards: self.fanout_shards.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
                }),
                drain_timeout: drain,
                sequence_capacity: self.sequence_capacity,
                history_concurrency: self.history_concurrency,
                tail_read_count: self.tail_read_count,
                tail_read_bytes: self.tail_read_bytes,
                ws: WsSettings {
                    server_id: self.replica_id.clone().unwrap_or_else(default_replica_id),
                    max_client_frame_bytes: self.max_client_frame_bytes,
                    send_queue: self.send_queue,
                    send_queue_bytes: self.send_queue_bytes,
                    max_frame_bytes: self.max_frame_bytes,
                    history_page: self.history_page,
                    ping_interval: ping,
                    idle_timeout: idle,
                    send_timeout: send,
                    max_strikes: self.max_strikes,
                },
            }),
            _ => Err(errors),
        }
    }
}

/// How clients are authenticated (`GATEWAY_AUTH`).
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// No token: every client reads every tenant. `explicit`: `GATEWAY_AUTH=none` was set
    /// (a warning is logged); otherwise the default of a loopback listener.
    Off {
        explicit: bool,
    },
    Jwt(Box<crate::auth::JwtSettings>),
}

impl GatewayArgs {
    /// `GATEWAY_JWT_JWKS_URL` and its bounds; `Err` when one is wrong (pushed to `errors`).
    fn jwks_url(&self, errors: &mut ConfigErrors) -> Option<Option<crate::auth::JwksUrl>> {
        let Some(raw) = self.jwt_jwks_url.as_deref().map(str::trim) else {
            if self.jwt_jwks_ca_file.is_some() {
                errors.push(ConfigError::new(
                    "GATEWAY_JWT_JWKS_CA_FILE",
                    "jwt-jwks-ca-file",
                    "is for GATEWAY_JWT_JWKS_URL, which is not set",
                ));
                return None;
            }
            return Some(None);
        };
        let bad = |errors: &mut ConfigErrors, env: &'static str, flag: &str, m: String| {
            errors.push(ConfigError::new(env, flag, m));
            None
        };
        let url = match reqwest::Url::parse(raw) {
            Ok(u) => u,
            Err(e) => {
                return bad(
                    errors,
                    "GATEWAY_JWT_JWKS_URL",
                    "jwt-jwks-url",
                    format!("{raw:?} is not a URL: {e}"),
                )
            }
        };
        let loopback = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return bad(
                    errors,
                    "GATEWAY_JWT_JWKS_URL",
                    "jwt-jwks-url",
                    format!(
                        "{raw:?}: keys over plain http can be replaced on the way; use https \
                         (http is accepted on a loopback host only)"
                    ),
                )
            }
            other => {
                return bad(
                    errors,
                    "GATEWAY_JWT_JWKS_URL",
                    "jwt-jwks-url",
                    format!("{raw:?}: the scheme must be https, not {other}"),
                )
            }
        }
        if self.jwt_jwks_refresh_secs == 0 {
            return bad(
                errors,
                "GATEWAY_JWT_JWKS_REFRESH_SECS",
                "jwt-jwks-refresh-secs",
                "must be at least 1".into(),
            );
        }
        if self.jwt_jwks_timeout_ms == 0 {
            return bad(
                errors,
                "GATEWAY_JWT_JWKS_TIMEOUT_MS",
                "jwt-jwks-timeout-ms",
                "must be at least 1".into(),
            );
        }
        if self.jwt_jwks_max_bytes < 64 || self.jwt_jwks_max_keys == 0 {
            return bad(
                errors,
                "GATEWAY_JWT_JWKS_MAX_BYTES",
                "jwt-jwks-max-bytes",
                "GATEWAY_JWT_JWKS_MAX_BYTES must be at least 64 and GATEWAY_JWT_JWKS_MAX_KEYS at least 1".into(),
            );
        }
        Some(Some(crate::auth::JwksUrl {
            url,
            ca_file: self.jwt_jwks_ca_file.clone(),
            refresh: Duration::from_secs(self.jwt_jwks_refresh_secs),
            timeout: Duration::from_millis(self.jwt_jwks_timeout_ms),
            max_bytes: self.jwt_jwks_max_bytes,
            max_keys: self.jwt_jwks_max_keys,
        }))
    }

    fn auth_settings(
        &self,
        listen: &Result<SocketAddr, ()>,
        errors: &mut ConfigErrors,
    ) -> Option<AuthMode> {
        let mode = match self.auth.as_deref().map(str::trim) {
            Some("jwt") => AuthMode::Jwt(Box::new(crate::auth::JwtSettings {
                hs256_secret_file: self.jwt_hs256_secret_file.clone(),
                public_key_files: self
                    .jwt_public_key_files
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(std::path::PathBuf::from)
                    .collect(),
                jwks_file: self.jwt_jwks_file.clone(),
                jwks_url: self.jwks_url(errors)?,
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
                leeway_secs: self.jwt_leeway_secs,
                tenants_claim: self.jwt_tenants_claim.clone(),
                types_claim: self.jwt_types_claim.clone(),
            })),
            Some("none") => AuthMode::Off { explicit: true },
            None => match listen {
                Ok(a) if !a.ip().is_loopback() => {
                    errors.push(ConfigError::new(
                        "GATEWAY_AUTH",
                        "auth",
                        format!(
                            "the gateway listens on {a}, not a loopback address, and no authentication is set: \
                             set GATEWAY_AUTH=jwt (docs/SECURITY.md), or GATEWAY_AUTH=none to let anyone \
                             who reaches the port read every tenant"
                        ),
                    ));
                    return None;
                }
                _ => AuthMode::Off { explicit: false },
            },
            Some(other) => {
                errors.push(ConfigError::new(
                    "GATEWAY_AUTH",
                    "auth",
                    format!("{other:?} is not jwt or none"),
                ));
                return None;
            }
        };
        if let AuthMode::Jwt(j) = &mode {
            if let Err(e) = crate::auth::Authenticator::load((**j).clone()) {
                let flag = e.setting["GATEWAY_".len()..]
                    .to_ascii_lowercase()
                    .replace('_', "-");
                errors.push(ConfigError::new(e.setting, &flag, e.message));
                return None;
            }
        }
        Some(mode)
    }
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "gateway".into());
    format!("{host}-{}", std::process::id())
}
