//! DashStream core crate: the event schema and its codec, the configuration shared by every
//! Kafka and Redis client in the project, Redis key naming, telemetry and shutdown plumbing,
//! the small HTTP server for `/metrics`, `/healthz` and `/readyz`, sequence tracking, and the
//! library side of the `dashstream` command line (provisioning and the synthetic producer).

pub mod backoff;
pub mod codec;
pub mod config;
pub mod http;
pub mod kafka;
pub mod keys;
pub mod produce;
pub mod provision;
pub mod redis_config;
pub mod seq;
pub mod shutdown;
pub mod tail;
pub mod telemetry;

/// Generated from `proto/dashstream/v1/events.proto` (package `dashstream.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.rs"));
}

/// Wall-clock microseconds since the Unix epoch (the unit of `Header.timestamp_us`).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The topic every component uses unless `KAFKA_TOPIC` says otherwise.
pub const DEFAULT_TOPIC: &str = "dashstream-events";
