//! Limits on what clients may do: how many connections they hold ([`ConnectionCaps`]) and how
//! often they may try something ([`FixedWindow`]).
//!
//! [`ConnectionCaps`] counts the connections the server holds, in all and per client address,
//! and refuses a connection over either cap. A connection's [`Slot`] gives its place back when
//! dropped, with the socket's handlers, so no path can leak one.
//!
//! [`FixedWindow`] counts attempts: the first counted attempt opens a window, and once `limit`
//! attempts have been counted in it, further ones are refused until it closes. It is used for
//! wrong room passwords, per socket (in the session) and per room (in the store; in Redis in
//! cluster mode, with the same rule as a key that expires with the window).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// The caps on connections, and what is held against them.
pub struct ConnectionCaps {
    pub max_total: usize,
    pub max_per_address: usize,
    total: AtomicUsize,
    per_address: DashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRefusal {
    ServerFull,
    TooManyFromAddress,
}

/// A connection's place under the caps, given back when dropped.
pub struct Slot {
    caps: Arc<ConnectionCaps>,
    address: Option<IpAddr>,
}

impl ConnectionCaps {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            max_total,
            max_per_address,
            total: AtomicUsize::new(0),
            per_address: DashMap::new(),
        })
    }

    /// A place for one more connection from `address` (unknown: counted in the total only).
    pub fn admit(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Slot, CapRefusal> {
        let reserved = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(CapRefusal::ServerFull);
        }
        if let Some(address) = address {
            let mut held = self.per_address.entry(address).or_insert(0);
            if *held >= self.max_per_address {
                drop(held);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(CapRefusal::TooManyFromAddress);
            }
            *held += 1;
        }
        Ok(Slot {
            caps: Arc::clone(self),
            address,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(address) = self.address
            && let Entry::Occupied(mut held) = self.caps.per_address.entry(address)
        {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most `limit` counted attempts per `window`.
#[derive(Debug, Clone, Copy)]
pub struct WindowLimit {
    pub limit: u32,
    pub window: Duration,
}

/// Wrong-password limits: per socket and per room.
#[derive(Debug, Clone, Copy)]
pub struct GuessLimits {
    pub per_socket: WindowLimit,
    pub per_room: WindowLimit,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FixedWindow {
    opened: Option<Instant>,
    count: u32,
}

impl FixedWindow {
    /// How long until another attempt may be made, if the limit has been reached.
    pub fn blocked_for(&self, now: Instant, limit: WindowLimit) -> Option<Duration> {
        let closes = self.opened? + limit.window;
        (self.count >= limit.limit && now < closes).then(|| closes - now)
    }

    /// Counts one attempt.
    pub fn record(&mut self, now: Instant, limit: WindowLimit) {
        match self.opened {
            Some(opened) if now < opened + limit.window => self.count += 1,
            _ => {
                *self = FixedWindow {
                    opened: Some(now),
                    count: 1,
                }
            }
        }
    }

    /// Takes back one counted attempt (one that turned out not to count, such as a right
    /// password).
    pub fn forgive(&mut self) {
        self.count = self.count.saturating_sub(1);
    }

    /// Whether the window has closed, so the counter can be forgotten.
    pub fn expired(&self, now: Instant, limit: WindowLimit) -> bool {
        self.opened
            .is_none_or(|opened| now >= opened + limit.window)
    }
}

/// A wait as the `retryAfterMs` of a reply: whole milliseconds, at least 1.
pub fn retry_after_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_hold_and_give_back() {
        let caps = ConnectionCaps::new(3, 2);
        let here: Option<IpAddr> = "10.0.0.1".parse().ok();
        let there: Option<IpAddr> = "10.0.0.2".parse().ok();
        let a = caps.admit(here).expect("first");
        let _b = caps.admit(here).expect("second");
        assert_eq!(caps.admit(here).err(), Some(CapRefusal::TooManyFromAddress));
        let _c = caps.admit(there).expect("another address");
        assert_eq!(caps.admit(None).err(), Some(CapRefusal::ServerFull));
        drop(a);
        assert_eq!(caps.held(), 2);
        let _d = caps.admit(here).expect("a place was given back");
        assert_eq!(caps.per_address.len(), 2);
    }

    #[test]
    fn a_window_blocks_after_its_limit_until_it_closes() {
        let limit = WindowLimit {
            limit: 3,
            window: Duration::from_secs(60),
        };
        let start = Instant::now();
        let mut window = FixedWindow::default();
        assert!(window.expired(start, limit));
        for i in 0..3 {
            assert_eq!(window.blocked_for(start, limit), None, "attempt {i}");
            window.record(start + Duration::from_secs(i), limit);
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(
            window.blocked_for(later, limit),
            Some(Duration::from_secs(40))
        );
        let closed = start + Duration::from_secs(60);
        assert_eq!(window.blocked_for(closed, limit), None);
        assert!(window.expired(closed, limit));
        window.record(closed, limit);
        assert_eq!(
            window.blocked_for(closed, limit),
            None,
            "a new window counts from 1"
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
    }
}
