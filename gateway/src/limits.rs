//! Connection limits (global and per client IP) and the client IP itself: the peer address,
//! or the last `X-Forwarded-For` hop when the peer is a configured trusted proxy.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct Limits {
    max_total: usize,
    max_per_ip: usize,
    trusted: Vec<IpNet>,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Global,
    PerIp,
}

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
        Arc::new(Self {
            max_total,
            max_per_ip,
            trusted,
            state: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The client's address: `peer`, or the last X-Forwarded-For hop from a trusted proxy.
    /// Returns whether a forwarded header was ignored because the peer is not trusted.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> (IpAddr, bool) {
        match forwarded_for {
            None => (peer, false),
            Some(xff) if self.is_trusted(peer) => {
                let last = xff
                    .rsplit(',')
                    .next()
                    .map(str::trim)
                    .and_then(|s| s.parse().ok());
                (last.unwrap_or(peer), false)
            }
            Some(_) => (peer, true),
        }
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
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
            l.client_ip(proxy, Some("1.1.1.1, 2.2.2.2")),
            ("2.2.2.2".parse().unwrap(), false)
        );
        assert_eq!(l.client_ip(a, Some("2.2.2.2")), (a, true));
        assert_eq!(l.client_ip(a, None), (a, false));
    }
}
