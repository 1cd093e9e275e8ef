//! Connection limits (global and per client IP), the per-IP upgrade rate, and the client IP
//! itself: the peer address, or the last `X-Forwarded-For` hop (over every header line: HAProxy
//! adds its own line after the client's) when the peer is a configured trusted proxy. IPv6
//! clients are counted per /64, the block one host usually holds.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct Limits {
    max_total: usize,
    max_per_ip: usize,
    trusted: Vec<IpNet>,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Upgrades per second per client (a token bucket of `rate.1` upgrades, refilled at
    /// `rate.0` per second); `None`: unlimited.
    rate: Option<(f64, f64)>,
    buckets: Mutex<HashMap<IpAddr, (f64, std::time::Instant)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Global,
    PerIp,
    /// Over the client's upgrade rate.
    Rate,
}

pub use dashstream::http::client_key;

/// Most client keys the rate limiter remembers; past it, full buckets are forgotten.
const MAX_BUCKETS: usize = 100_000;

/// Holds one connection's place; released on drop.
pub struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock().expect("limits lock");
        s.0 -= 1;
        if let Some(n) = s.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.1.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    pub fn new(max_total: usize, max_per_ip: usize, trusted: Vec<IpNet>) -> Arc<Self> {
        Self::with_rate(max_total, max_per_ip, trusted, 0.0, 1.0)
    }

    /// Limits each client to `per_sec` upgrades per second, in bursts of up to `burst`.
    pub fn with_rate(
        max_total: usize,
        max_per_ip: usize,
        trusted: Vec<IpNet>,
        per_sec: f64,
        burst: f64,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            trusted,
            state: Mutex::new((0, HashMap::new())),
            rate: (per_sec > 0.0).then_some((per_sec, burst.max(1.0))),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one upgrade from `ip`'s bucket; `Err(Refusal::Rate)` when it is empty.
    pub fn take_upgrade(&self, ip: IpAddr) -> Result<(), Refusal> {
        let Some((per_sec, burst)) = self.rate else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.len() >= MAX_BUCKETS {
            // Forget the clients whose bucket has refilled: they lose nothing.
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = b.entry(client_key(ip)).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        *tokens -= 1.0;
        Ok(())
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The client's address: `peer`, or the last X-Forwarded-For hop from a trusted proxy,
    /// over all of the header's lines (`forwarded_for`, in order). Returns whether a
    /// forwarded header was ignored because the peer is not trusted.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: &[&str]) -> (IpAddr, bool) {
        let Some(last_line) = forwarded_for.last() else {
            return (peer, false);
        };
        if !self.is_trusted(peer) {
            return (peer, true);
        }
        let last = last_line
            .rsplit(',')
            .next()
            .map(str::trim)
            .and_then(|s| s.parse().ok());
        (last.unwrap_or(peer), false)
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = client_key(ip);
        let mut s = self.state.lock().expect("limits lock");
        if s.0 >= self.max_total {
            return Err(Refusal::Global);
        }
        let n = s.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        s.0 += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_forwarding() {
        let l = Limits::new(3, 2, vec!["10.0.0.0/8".parse().unwrap()]);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refusal::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refusal::Global));
        drop(s1);
        assert!(l.acquire(a).is_ok());
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            l.client_ip(proxy, &["1.1.1.1, 2.2.2.2"]),
            ("2.2.2.2".parse().unwrap(), false)
        );
        // HAProxy adds its own line after the client's (spoofed) one: the last line wins.
        assert_eq!(
            l.client_ip(proxy, &["6.6.6.6", "3.3.3.3"]),
            ("3.3.3.3".parse().unwrap(), false)
        );
        assert_eq!(l.client_ip(a, &["2.2.2.2"]), (a, true));
        assert_eq!(l.client_ip(a, &[]), (a, false));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let l = Limits::new(10, 2, vec![]);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = l.acquire(x).unwrap();
        let _b = l.acquire(y).unwrap();
        assert_eq!(l.acquire(x).err(), Some(Refusal::PerIp), "one /64");
        assert!(l.acquire(z).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn upgrades_are_rate_limited_per_client() {
        let l = Limits::with_rate(100, 100, vec![], 1.0, 3.0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.take_upgrade(a).unwrap();
        }
        assert_eq!(l.take_upgrade(a), Err(Refusal::Rate));
        assert!(
            l.take_upgrade(b).is_ok(),
            "another client has its own bucket"
        );
    }
}
