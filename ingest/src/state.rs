//! State shared between the poll thread, the partition workers, the lag monitor and the HTTP
//! readiness check: per-partition progress and the health of each dependency.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Monotonic milliseconds since the process started (never 0: 0 means "never").
pub fn now_ms() -> u64 {
    CLOCK.elapsed().as_millis() as u64 + 1
}

/// Progress of one assigned partition.
#[derive(Debug)]
pub struct Progress {
    /// Next offset whose predecessors Redis has all acknowledged; -1 until known.
    pub acked_next: AtomicI64,
    /// Where consumption started (committed offset or reset position); -1 until known.
    pub start_offset: AtomicI64,
    /// Last time the partition advanced or was seen caught up ([`now_ms`]; below 0 when that
    /// was before this process started, as carried over from a previous owner).
    last_progress_ms: AtomicI64,
    /// Whether the partition has moved (or been seen caught up) since this process got it.
    moved: AtomicBool,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            acked_next: AtomicI64::new(-1),
            start_offset: AtomicI64::new(-1),
            last_progress_ms: AtomicI64::new(now_ms() as i64),
            moved: AtomicBool::new(false),
        }
    }

    pub fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
        self.last_progress_ms
            .store(now_ms() as i64, Ordering::Relaxed);
    }

    /// The partition last moved `ago` (as a previous owner recorded it): staleness continues
    /// from there, unless this process has seen it move (or caught up) since it got it.
    pub fn progressed_ago(&self, ago: Duration) {
        let at = now_ms() as i64 - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX / 4);
        if !self.moved.load(Ordering::Relaxed) {
            self.last_progress_ms.fetch_min(at, Ordering::Relaxed);
        }
    }

    pub fn staleness(&self) -> Duration {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        Duration::from_millis((now_ms() as i64).saturating_sub(last).max(0) as u64)
    }

    /// The position lag is measured from: acknowledged, else where consumption started.
    pub fn position(&self) -> Option<i64> {
        let a = self.acked_next.load(Ordering::Relaxed);
        if a >= 0 {
            return Some(a);
        }
        let s = self.start_offset.load(Ordering::Relaxed);
        (s >= 0).then_some(s)
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Last success and last error of one dependency.
#[derive(Debug, Default)]
pub struct DependencyHealth {
    ok_ms: AtomicU64,
    error: Mutex<String>,
}

impl DependencyHealth {
    pub fn ok(&self) {
        self.ok_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn failed(&self, error: impl Into<String>) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = error.into();
    }
    /// `None` when healthy within `window`, else the reason.
    pub fn problem(&self, name: &str, window: Duration) -> Option<String> {
        let ok = self.ok_ms.load(Ordering::Relaxed);
        let fresh = ok > 0 && now_ms().saturating_sub(ok) <= window.as_millis() as u64;
        if fresh {
            return None;
        }
        let err = self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some(if ok == 0 {
            format!("{name}: not reached yet {err}")
                .trim_end()
                .to_string()
        } else {
            format!(
                "{name}: unreachable for {}s: {err}",
                now_ms().saturating_sub(ok) / 1000
            )
        })
    }
}

/// Health of the process's dependencies, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    pub redis: DependencyHealth,
    pub kafka: DependencyHealth,
    /// A first rebalance happened: the group knows this member and its assignment.
    pub joined: AtomicBool,
    /// The topic exists in the cluster metadata.
    pub topic_missing: AtomicBool,
    /// Set when a pipeline thread or worker died: the process is about to exit.
    fatal: OnceLock<String>,
}

impl Health {
    /// Marks the process as failed for good (readiness fails from now on).
    pub fn fail(&self, why: String) {
        let _ = self.fatal.set(why);
    }
}

/// How recently Redis and Kafka must have answered for the process to be ready.
const REDIS_WINDOW: Duration = Duration::from_secs(3);
const KAFKA_WINDOW: Duration = Duration::from_secs(10);

impl Health {
    /// Each dependency and whether it answered within its window (`/readyz`'s rule).
    pub fn dependencies_up(&self) -> [(&'static str, bool); 2] {
        [
            ("redis", self.redis.problem("redis", REDIS_WINDOW).is_none()),
            ("kafka", self.kafka.problem("kafka", KAFKA_WINDOW).is_none()),
        ]
    }
}

impl dashstream::http::Readiness for Health {
    fn check(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        reasons.extend(self.fatal.get().map(|w| format!("failed: {w}")));
        reasons.extend(self.redis.problem("redis", REDIS_WINDOW));
        reasons.extend(self.kafka.problem("kafka", KAFKA_WINDOW));
        if self.topic_missing.load(Ordering::Relaxed) {
            reasons.push("kafka: the topic does not exist".into());
        }
        if !self.joined.load(Ordering::Relaxed) {
            reasons.push("kafka: no partition assignment received yet".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_continues_from_a_previous_owner_until_the_partition_moves_here() {
        let p = Progress::new();
        p.progressed_ago(Duration::from_secs(600));
        assert!(p.staleness() >= Duration::from_secs(600));
        p.touch();
        assert!(p.staleness() < Duration::from_secs(1));
        // Once it has moved here, an older record does not make it stale again.
        p.progressed_ago(Duration::from_secs(900));
        assert!(p.staleness() < Duration::from_secs(1));
    }
}
