//! Retry pacing shared by every retry loop in the project: exponential backoff with full
//! jitter ("decorrelated" enough that many partition workers retrying against one Redis do
//! not retry in lockstep), between a floor and a cap.

use std::time::Duration;

/// Exponential backoff with jitter: each wait is uniform in `[step/2, step]`, and `step`
/// doubles from `floor` up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    floor: Duration,
    cap: Duration,
    step: Duration,
}

impl Backoff {
    /// The project's default: 100 ms doubling to 5 s.
    pub fn new() -> Self {
        Self::between(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub fn between(floor: Duration, cap: Duration) -> Self {
        Self {
            floor,
            cap: cap.max(floor),
            step: floor,
        }
    }

    /// The next delay (and advances the schedule).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        let half = step / 2;
        half + step.saturating_sub(half).mul_f64(rand::random::<f64>())
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps for the next delay unless `stop` is cancelled first; `false` when it was.
    pub async fn wait_or_cancelled(&mut self, stop: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = self.wait() => true,
            _ = stop.cancelled() => false,
        }
    }

    /// Starts again from the floor (after a success).
    pub fn reset(&mut self) {
        self.step = self.floor;
    }

    /// The largest delay this schedule reaches.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter() {
        let mut b = Backoff::between(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        for x in &d[3..] {
            assert!(*x >= Duration::from_millis(400) && *x <= Duration::from_millis(800));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
