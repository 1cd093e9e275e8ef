//! The gateway's metrics, registered in one `prometheus::Registry` (docs/METRICS.md). Labels
//! come only from small fixed sets.

use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

const NS: &str = "dashstream_gateway";

pub struct Metrics {
    pub connected_clients: IntGauge,
    /// Upgrades by result (accepted, rejected) and reason.
    pub upgrades: IntCounterVec,
    pub frames_sent: IntCounterVec,
    /// `frames_sent` of each of [`FRAME_TYPES`], resolved once (the writer counts per write).
    pub frames_sent_by_type: [prometheus::IntCounter; FRAME_TYPES.len()],
    pub events_sent: IntCounter,
    pub bytes_sent: IntCounter,
    pub catchup_switches: IntCounter,
    /// Sessions that left a live buffer over its byte budget for Redis history.
    pub ring_sheds: IntCounter,
    /// Bytes held by the live buffer.
    pub live_buffer_bytes: IntGauge,
    pub outbound_bytes: IntGauge,
    /// 1 while `/readyz` would answer 200, else 0 (set at each scrape).
    pub ready: IntGauge,
    pub gaps: IntCounterVec,
    pub resumes: IntCounterVec,
    pub client_errors: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub sequence: IntCounterVec,
    pub redis_seconds: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub redis_reconnects: IntCounter,
    pub tail_delay: Gauge,
    pub tail_events: IntCounter,
    pub decode_errors: IntCounter,
    pub producer_to_send: Histogram,
    pub clock_skew: IntCounter,
    pub untrusted_forwarded: IntCounter,
    /// Time history reads waited for one of the `GATEWAY_HISTORY_CONCURRENCY` slots.
    pub history_wait: Histogram,
    /// Streams found gone back within their epoch, by reason (see [`ROLLBACK_REASONS`]).
    pub stream_rollbacks: IntCounterVec,
    /// Tokens refused (at the upgrade or in an `auth` frame), by [`AUTH_FAILURES`] reason.
    pub auth_failures: IntCounterVec,
    /// Fetches of `GATEWAY_JWT_JWKS_URL`, by result (`ok`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// Keys in the last JWKS document fetched.
    pub jwks_keys: IntGauge,
    /// When a JWKS fetch last succeeded, in seconds since the epoch (0: never).
    pub jwks_last_success: Gauge,
}

/// Why a stream is not the history read so far though its epoch is the same:
/// `rolled_back`, its last ID went back (a failover to a lagging replica, an AOF restart, the
/// key deleted and written again with less); `stream_lost`, its key is gone or was written
/// again from scratch (deleted or evicted while the meta hash stayed).
pub const ROLLBACK_REASONS: [&str; 2] = ["rolled_back", "stream_lost"];

pub const REJECT_REASONS: [&str; 11] = [
    "global_limit",
    "ip_limit",
    "bad_request",
    "bad_cursor",
    "draining",
    "not_websocket",
    "unavailable",
    "unauthorized",
    "forbidden",
    "origin",
    "rate_limit",
];
/// Why a token was refused (`crate::auth::AuthError::reason`).
pub const AUTH_FAILURES: [&str; 9] = [
    "missing",
    "malformed",
    "bad_algorithm",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_issuer",
    "bad_audience",
    "forbidden",
];
/// The frame types a server sends.
pub const FRAME_TYPES: [&str; 7] = [
    "welcome",
    "events",
    "gap",
    "reconnect",
    "error",
    "pong",
    "authenticated",
];
pub const CLIENT_ERRORS: [&str; 4] = ["bad_json", "unknown_type", "binary", "frame_too_large"];
pub const DISCONNECTS: [&str; 9] = [
    "client",
    "unauthorized",
    "forbidden",
    "slow",
    "abuse",
    "idle",
    "send_timeout",
    "draining",
    "error",
];

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
        };
        let c = |name: &str, help: &str| IntCounter::with_opts(Opts::new(name, help).namespace(NS));
        let frames_sent = cv(
            "frames_sent_total",
            "Frames sent to clients, by frame type",
            &["type"],
        )?;
        let frames_sent_by_type = FRAME_TYPES.map(|t| frames_sent.with_label_values(&[t]));
        let m = Self {
            connected_clients: IntGauge::with_opts(Opts::new("connected_clients", "Open WebSocket connections").namespace(NS))?,
            upgrades: cv("upgrades_total", "WebSocket upgrade requests, by result and reason", &["result", "reason"])?,
            frames_sent,
            frames_sent_by_type,
            events_sent: c("events_sent_total", "Events sent to clients (one per client that received it)")?,
            bytes_sent: c("bytes_sent_total", "Payload bytes of frames sent to clients")?,
            catchup_switches: c("catchup_switches_total", "Times a client fell behind the live buffer and was switched to reading Redis history")?,
            ring_sheds: c("live_buffer_sheds_total", "Times a client behind the live buffer left it because the buffer held more than GATEWAY_LIVE_BUFFER_BYTES (it reads Redis history instead)")?,
            live_buffer_bytes: IntGauge::with_opts(Opts::new("live_buffer_bytes", "Bytes of tail passes held by the live buffer (not yet taken by every client)").namespace(NS))?,
            gaps: cv("gaps_total", "gap frames sent, by reason (retention, reset)", &["reason"])?,
            resumes: cv("resumes_total", "Connections that asked to resume from a cursor, by outcome (ok, gap, bad_cursor)", &["outcome"])?,
            client_errors: cv("client_errors_total", "Bad client input, by kind", &["kind"])?,
            ready: IntGauge::with_opts(Opts::new("ready", "1 while /readyz answers 200, else 0").namespace(NS))?,
            outbound_bytes: IntGauge::with_opts(Opts::new("outbound_bytes", "Bytes of frames queued to clients or being written, over all connections").namespace(NS))?,
            disconnects: cv("disconnects_total", "Connections closed, by reason", &["reason"])?,
            sequence: cv("sequence_anomalies_total", "Per-thread sequence anomalies seen by the gateway's reader, by kind (gap, duplicate, reorder)", &["kind"])?,
            redis_seconds: HistogramVec::new(
                HistogramOpts::new("redis_command_duration_seconds", "Latency of Redis commands, by command")
                    .namespace(NS)
                    .buckets(exponential_buckets(0.0001, 2.0, 18)?),
                &["command"],
            )?,
            redis_errors: cv("redis_errors_total", "Redis errors, by kind (connection, timeout, server, other)", &["kind"])?,
            redis_reconnects: c("redis_reconnects_total", "Times the Redis tail recovered after an error")?,
            tail_delay: Gauge::with_opts(Opts::new("tail_delay_seconds", "Age (since ingest) of the newest entry the tail loop read").namespace(NS))?,
            tail_events: c("tail_events_total", "Events the tail loop read from Redis (once per replica)")?,
            decode_errors: c("stream_decode_errors_total", "Stream entries that could not be decoded (skipped)")?,
            producer_to_send: Histogram::with_opts(
                HistogramOpts::new("producer_to_send_seconds", "From the producer's timestamp to the frame being handed to the client's socket (skewed clocks excluded)")
                    .namespace(NS)
                    .buckets(exponential_buckets(0.001, 2.0, 18)?),
            )?,
            clock_skew: c("clock_skew_events_total", "Events whose producer timestamp is in the gateway's future (excluded from latency)")?,
            untrusted_forwarded: c("untrusted_forwarded_for_total", "X-Forwarded-For headers ignored because the peer is not a trusted proxy")?,
            history_wait: Histogram::with_opts(
                HistogramOpts::new("history_wait_seconds", "Time a history page waited for one of the GATEWAY_HISTORY_CONCURRENCY slots before being read")
                    .namespace(NS)
                    .buckets(exponential_buckets(0.0001, 2.0, 18)?),
            )?,
            stream_rollbacks: cv("stream_rollbacks_total", "Streams found gone back within their epoch (rolled back, or their key lost while the meta stayed): the partition is reset for clients, by reason (rolled_back, stream_lost)", &["reason"])?,
            jwks_fetches: cv("jwks_fetches_total", "Fetches of the JWKS document at GATEWAY_JWT_JWKS_URL, by result (ok, error: unreachable, an HTTP error, too large, not a JWKS document or too many keys; the last good keys stay in use)", &["result"])?,
            jwks_keys: IntGauge::with_opts(Opts::new("jwks_keys", "Keys of the JWKS document in use (from GATEWAY_JWT_JWKS_URL)").namespace(NS))?,
            jwks_last_success: Gauge::with_opts(Opts::new("jwks_last_success_timestamp_seconds", "When a fetch of GATEWAY_JWT_JWKS_URL last succeeded, seconds since the epoch (0: never)").namespace(NS))?,
            auth_failures: cv("auth_failures_total", "Tokens refused, at the upgrade or in an auth frame, by reason (missing, malformed, bad_algorithm, bad_signature, expired, not_yet_valid, bad_issuer, bad_audience, forbidden)", &["reason"])?,
        };
        registry.register(Box::new(m.connected_clients.clone()))?;
        registry.register(Box::new(m.upgrades.clone()))?;
        registry.register(Box::new(m.frames_sent.clone()))?;
        registry.register(Box::new(m.events_sent.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.catchup_switches.clone()))?;
        registry.register(Box::new(m.ring_sheds.clone()))?;
        registry.register(Box::new(m.live_buffer_bytes.clone()))?;
        registry.register(Box::new(m.outbound_bytes.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.gaps.clone()))?;
        registry.register(Box::new(m.resumes.clone()))?;
        registry.register(Box::new(m.client_errors.clone()))?;
        registry.register(Box::new(m.disconnects.clone()))?;
        registry.register(Box::new(m.sequence.clone()))?;
        registry.register(Box::new(m.redis_seconds.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.redis_reconnects.clone()))?;
        registry.register(Box::new(m.tail_delay.clone()))?;
        registry.register(Box::new(m.tail_events.clone()))?;
        registry.register(Box::new(m.decode_errors.clone()))?;
        registry.register(Box::new(m.producer_to_send.clone()))?;
        registry.register(Box::new(m.clock_skew.clone()))?;
        registry.register(Box::new(m.untrusted_forwarded.clone()))?;
        registry.register(Box::new(m.history_wait.clone()))?;
        registry.register(Box::new(m.stream_rollbacks.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.jwks_fetches.clone()))?;
        registry.register(Box::new(m.jwks_keys.clone()))?;
        registry.register(Box::new(m.jwks_last_success.clone()))?;
        m.upgrades.with_label_values(&["accepted", "ok"]);
        for r in REJECT_REASONS {
            m.upgrades.with_label_values(&["rejected", r]);
        }
        for r in ["retention", "reset"] {
            m.gaps.with_label_values(&[r]);
        }
        for o in ["ok", "gap", "bad_cursor"] {
            m.resumes.with_label_values(&[o]);
        }
        for k in CLIENT_ERRORS {
            m.client_errors.with_label_values(&[k]);
        }
        for d in DISCONNECTS {
            m.disconnects.with_label_values(&[d]);
        }
        for k in ["gap", "duplicate", "reorder"] {
            m.sequence.with_label_values(&[k]);
        }
        for k in ["connection", "timeout", "server", "other"] {
            m.redis_errors.with_label_values(&[k]);
        }
        for r in ROLLBACK_REASONS {
            m.stream_rollbacks.with_label_values(&[r]);
        }
        for r in AUTH_FAILURES {
            m.auth_failures.with_label_values(&[r]);
        }
        for r in ["ok", "error"] {
            m.jwks_fetches.with_label_values(&[r]);
        }
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Ok(m)
    }
}
