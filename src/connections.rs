//! Connection caps at accept: the number open at once overall and from one peer
//! address, so one client (a slow-loris, a flood of idle sockets) cannot take every
//! slot. Trusted proxies are exempt from the per-address cap: every request behind a
//! load balancer comes from its address.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `WABRIDGE_MAX_CONNECTIONS` are open.
    Overall,
    /// `WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS` are open from this address.
    PerAddress,
}

impl Refused {
    /// The cap's label in `wabridge_connections_refused_total{cap}`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Overall => "overall",
            Refused::PerAddress => "per_address",
        }
    }
}

/// The caps, shared by the accept loop.
pub struct ConnectionCaps {
    overall: Arc<Semaphore>,
    per_address: usize,
    exempt: Vec<IpAddr>,
    open: PerAddress,
}

/// One accepted connection's places under the caps, given back when dropped.
pub struct Slot {
    _overall: OwnedSemaphorePermit,
    address: Option<(IpAddr, PerAddress)>,
}

/// Open connections by client address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

impl ConnectionCaps {
    /// Caps of `overall` connections and `per_address` from one address, not
    /// counting addresses in `exempt`.
    pub fn new(overall: usize, per_address: usize, exempt: Vec<IpAddr>) -> Self {
        ConnectionCaps {
            overall: Arc::new(Semaphore::new(overall)),
            per_address,
            exempt,
            open: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`, or why there is none.
    pub fn admit(&self, peer: IpAddr) -> Result<Slot, Refused> {
        let peer = canonical(peer);
        let address = if self.exempt.iter().any(|e| canonical(*e) == peer) {
            None
        } else {
            let mut open = self.open.lock().expect("connection table");
            let n = open.entry(peer).or_insert(0);
            if *n >= self.per_address {
                return Err(Refused::PerAddress);
            }
            *n += 1;
            Some((peer, self.open.clone()))
        };
        match self.overall.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                _overall: permit,
                address,
            }),
            Err(_) => {
                if let Some((peer, open)) = address {
                    release(&open, peer);
                }
                Err(Refused::Overall)
            }
        }
    }

    /// Addresses with a connection open now (for tests and diagnostics).
    pub fn addresses_open(&self) -> usize {
        self.open.lock().expect("connection table").len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((peer, open)) = self.address.take() {
            release(&open, peer);
        }
    }
}

fn release(open: &Mutex<HashMap<IpAddr, usize>>, peer: IpAddr) {
    let mut open = open.lock().expect("connection table");
    if let Some(n) = open.get_mut(&peer) {
        *n -= 1;
        if *n == 0 {
            open.remove(&peer);
        }
    }
}

/// An IPv4 peer seen on a dual-stack socket (`::ffff:a.b.c.d`) is the same peer.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let caps = ConnectionCaps::new(4, 2, vec![]);
        let a1 = caps.admit(ip("10.0.0.1")).unwrap();
        let _a2 = caps.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(caps.admit(ip("10.0.0.1")).err(), Some(Refused::PerAddress));
        // The same peer over IPv4-mapped IPv6 is the same address.
        assert_eq!(
            caps.admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refused::PerAddress)
        );
        let _b1 = caps.admit(ip("10.0.0.2")).unwrap();
        let _b2 = caps.admit(ip("10.0.0.2")).unwrap();
        // Four open: the overall cap refuses a third address, and gives nothing
        // of its per-address count away.
        assert_eq!(caps.admit(ip("10.0.0.3")).err(), Some(Refused::Overall));
        assert_eq!(caps.addresses_open(), 2);
        drop(a1);
        let _a3 = caps.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_address_cap() {
        let caps = ConnectionCaps::new(3, 1, vec![ip("10.9.9.9")]);
        let _p: Vec<Slot> = (0..3)
            .map(|_| caps.admit(ip("10.9.9.9")).unwrap())
            .collect();
        assert_eq!(caps.admit(ip("10.9.9.9")).err(), Some(Refused::Overall));
        assert_eq!(caps.addresses_open(), 0);
    }

    #[test]
    fn closed_connections_give_their_places_back() {
        let caps = ConnectionCaps::new(2, 2, vec![]);
        for _ in 0..100 {
            let a = caps.admit(ip("10.0.0.1")).unwrap();
            let b = caps.admit(ip("10.0.0.1")).unwrap();
            drop((a, b));
        }
        assert_eq!(caps.addresses_open(), 0);
        let _ = caps.admit(ip("10.0.0.1")).unwrap();
        let _ = caps.admit(ip("10.0.0.2")).unwrap();
    }
}
