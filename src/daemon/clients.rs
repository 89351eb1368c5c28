//! Per-client connection caps (`[limits] max_connections_per_client`): how many connections of
//! one protocol each client has open, by peer IP address, or by user id for Unix-socket peers
//! (SO_PEERCRED). Checked by the accept loops after the global cap; a refusal is answered like
//! the global cap's (HTTP 503 with Retry-After, NBD close).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::config::PerClientCap;
use crate::serving::ClientId;

/// Open connections per client of one protocol, shared by that protocol's listeners.
#[derive(Debug)]
pub struct ClientCounts {
    cap: PerClientCap,
    open: Mutex<HashMap<ClientId, usize>>,
}

/// One admitted connection's place in its client's count; given back on drop.
#[derive(Debug)]
pub struct ClientSlot {
    counts: Arc<ClientCounts>,
    client: ClientId,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The client.
    pub client: ClientId,
    /// Its cap.
    pub limit: usize,
}

impl ClientCounts {
    /// Counts under `cap`.
    pub fn new(cap: PerClientCap) -> Arc<ClientCounts> {
        Arc::new(ClientCounts {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one more connection of `client` (`None`: the kernel could not say who it is,
    /// and it is not capped), or says it is at its cap. Uncapped clients are not tracked.
    pub fn admit(
        self: &Arc<Self>,
        client: Option<ClientId>,
    ) -> Result<Option<ClientSlot>, OverCap> {
        let Some(client) = client else {
            return Ok(None);
        };
        let Some(limit) = self.cap.for_client(client) else {
            return Ok(None);
        };
        let mut open = self.lock();
        let n = open.entry(client).or_insert(0);
        if *n >= limit {
            return Err(OverCap { client, limit });
        }
        *n += 1;
        Ok(Some(ClientSlot {
            counts: Arc::clone(self),
            client,
        }))
    }

    /// Clients tracked now (for tests).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ip(last: u8) -> Option<ClientId> {
        Some(ClientId::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))))
    }

    #[test]
    fn a_client_at_its_cap_is_refused_and_others_are_not() {
        let c = ClientCounts::new(PerClientCap {
            limit: 2,
            local_exempt: false,
        });
        let a = c.admit(ip(1)).unwrap();
        let b = c.admit(ip(1)).unwrap();
        assert_eq!(c.admit(ip(1)).unwrap_err().limit, 2);
        let other = c.admit(ip(2)).unwrap();
        assert!(other.is_some());
        drop(a);
        let again = c.admit(ip(1)).unwrap();
        drop((b, again, other));
        assert_eq!(c.tracked(), 0, "counts of gone clients are removed");
    }

    #[test]
    fn by_default_local_peers_are_not_capped_and_remote_ones_are() {
        let c = ClientCounts::new(PerClientCap {
            limit: 1,
            local_exempt: true,
        });
        let local: Vec<_> = (0..5).map(|_| c.admit(ip(1)).unwrap()).collect();
        assert!(local.iter().all(Option::is_none));
        let unix: Vec<_> = (0..5)
            .map(|_| c.admit(Some(ClientId::Uid(0))).unwrap())
            .collect();
        assert!(unix.iter().all(Option::is_none));
        let remote = Some(ClientId::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))));
        let _one = c.admit(remote).unwrap();
        assert!(c.admit(remote).is_err());
    }

    #[test]
    fn zero_means_no_cap() {
        let c = ClientCounts::new(PerClientCap {
            limit: 0,
            local_exempt: false,
        });
        assert!((0..100).all(|_| c.admit(ip(1)).is_ok_and(|s| s.is_none())));
    }
}
