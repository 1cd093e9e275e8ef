//! Checks of the Redis server made once at start-up, before the tail loop runs:
//! - **version 7.0 or later** (`INFO server`, else `HELLO`): the reads rely on `XINFO STREAM`'s
//!   `entries-added` (has retention removed anything? has the key been lost?), which older
//!   servers do not report: retention gaps would never be sent. An older server, or one whose
//!   version cannot be learned, stops the gateway.
//! - **`maxmemory-policy noeviction`** (`CONFIG GET`): a policy that evicts keys would drop
//!   stream keys or meta hashes under memory pressure. Another policy stops the gateway. A
//!   server that refuses `CONFIG` (an ACL without `@admin`, a renamed command: usual on
//!   managed Redis) cannot be checked: the gateway logs a warning and starts, because refusing
//!   would make it unusable there, and a key lost anyway is detected while running and
//!   announced to clients as a reset (docs/GATEWAY.md, "Resets and retention").
//!
//! Connection errors and timeouts are retried (once a second, until `stop`); answers decide.

use dashstream::redis_config::RedisConn;
use redis::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The oldest Redis the gateway runs on.
pub const MIN_VERSION: (u32, u32) = (7, 0);

/// Runs the checks; `Err` is the message to stop the gateway with.
pub async fn check(
    conn: RedisConn,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<(), String> {
    let version = match query(&conn, redis::cmd("INFO").arg("server"), timeout, stop).await {
        // A cluster answers with every node's: the oldest decides.
        Some(Ok(Value::Map(nodes))) => nodes
            .iter()
            .map(|(_, v)| text(v).and_then(|t| version_in_info(&t)))
            .min_by_key(|v| v.as_deref().and_then(parse_version))
            .flatten(),
        Some(Ok(v)) => text(&v).and_then(|t| version_in_info(&t)),
        Some(Err(_)) | None => None,
    };
    let version = match version {
        Some(v) => Some(v),
        None => match query(&conn, &redis::cmd("HELLO"), timeout, stop).await {
            Some(Ok(v)) => version_in_hello(v),
            _ => None,
        },
    };
    if stop.is_cancelled() {
        return Ok(());
    }
    require_version(version.as_deref())?;
    let policy = query(
        &conn,
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"),
        timeout,
        stop,
    )
    .await;
    match policy {
        None => Ok(()),
        Some(Ok(v)) => match policy_in_reply(v) {
            Some(p) => require_noeviction(&p),
            None => {
                tracing::warn!(
                    "redis: CONFIG GET maxmemory-policy gave no policy; eviction not checked"
                );
                Ok(())
            }
        },
        Some(Err(e)) => {
            tracing::warn!(
                error = %e,
                "redis: CONFIG GET maxmemory-policy refused; make sure the policy is noeviction \
                 (an evicting policy can drop stream keys: clients would get reset gaps)"
            );
            Ok(())
        }
    }
}

/// Sends `cmd`, retrying connection errors and timeouts until `stop` (then `None`).
async fn query(
    conn: &RedisConn,
    cmd: &redis::Cmd,
    timeout: Duration,
    stop: &CancellationToken,
) -> Option<Result<Value, redis::RedisError>> {
    loop {
        let mut c = conn.clone();
        let r = tokio::select! {
            _ = stop.cancelled() => return None,
            r = tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut c)) => r,
        };
        match r {
            Ok(Ok(Value::ServerError(e))) => return Some(Err(e.into())),
            Ok(Ok(v)) => return Some(Ok(v)),
            // An answer: the server refused the command (ACL, unknown or renamed command).
            Ok(Err(e)) if e.code().is_some() => return Some(Err(e)),
            Ok(Err(e)) => tracing::warn!(error = %e, "redis: start-up check failed; retrying"),
            Err(_) => tracing::warn!("redis: start-up check timed out; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    }
}

/// `redis_version` from `INFO server` text.
pub fn version_in_info(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}

/// `version` from a `HELLO` reply (a flat list in RESP2, a map in RESP3).
fn version_in_hello(v: Value) -> Option<String> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(a) => {
            let mut it = a.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        _ => return None,
    };
    pairs
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("version"))
        .and_then(|(_, v)| text(&v))
}

/// The policy from a `CONFIG GET maxmemory-policy` reply (`[name, value]` or a map).
fn policy_in_reply(v: Value) -> Option<String> {
    match v {
        Value::Array(a) => a.get(1).and_then(text),
        Value::Map(m) => m.first().and_then(|(_, v)| text(v)),
        _ => None,
    }
}

/// `major.minor` of a version string such as `7.0.15`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Refuses a server older than [`MIN_VERSION`], or one whose version is unknown.
pub fn require_version(version: Option<&str>) -> Result<(), String> {
    let (maj, min) = MIN_VERSION;
    match version.map(|v| (v, parse_version(v))) {
        Some((_, Some(v))) if v >= MIN_VERSION => Ok(()),
        Some((v, Some(_))) => Err(format!(
            "redis: server version {v} is too old: the gateway needs Redis {maj}.{min} or later \
             (XINFO STREAM entries-added tells it what retention removed)"
        )),
        Some((v, None)) => Err(format!(
            "redis: cannot read the server version {v:?}: the gateway needs Redis {maj}.{min} or later"
        )),
        None => Err(format!(
            "redis: cannot learn the server version (INFO server and HELLO both failed): \
             the gateway needs Redis {maj}.{min} or later"
        )),
    }
}

/// Refuses an eviction policy other than `noeviction`.
pub fn require_noeviction(policy: &str) -> Result<(), String> {
    if policy.eq_ignore_ascii_case("noeviction") {
        Ok(())
    } else {
        Err(format!(
            "redis: maxmemory-policy is {policy}: the gateway needs noeviction (an evicting \
             policy drops stream keys and meta hashes under memory pressure, losing history)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_7_or_unknown_are_refused() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0)));
        assert_eq!(parse_version("7.2"), Some((7, 2)));
        assert_eq!(parse_version("10.1.0"), Some((10, 1)));
        assert_eq!(parse_version("x"), None);
        for ok in ["7.0.0", "7.0.15", "7.2.4", "8.0.1"] {
            assert!(require_version(Some(ok)).is_ok(), "{ok}");
        }
        for old in ["6.2.14", "6.0.0", "5.0.7"] {
            let e = require_version(Some(old)).unwrap_err();
            assert!(e.contains("too old") && e.contains(old), "{e}");
        }
        assert!(require_version(Some("garbage")).is_err());
        assert!(require_version(None).is_err());
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(version_in_info(info).as_deref(), Some("6.2.14"));
        assert_eq!(version_in_info("# Server\r\n"), None);
    }

    #[test]
    fn only_noeviction_passes() {
        assert!(require_noeviction("noeviction").is_ok());
        for p in [
            "allkeys-lru",
            "volatile-lru",
            "allkeys-lfu",
            "volatile-ttl",
            "allkeys-random",
        ] {
            assert!(require_noeviction(p).unwrap_err().contains(p));
        }
        let reply = Value::Array(vec![
            Value::BulkString(b"maxmemory-policy".to_vec()),
            Value::BulkString(b"allkeys-lru".to_vec()),
        ]);
        assert_eq!(policy_in_reply(reply).as_deref(), Some("allkeys-lru"));
    }
}
