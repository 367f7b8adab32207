//! Limits on what a client may do in a span of time.
//!
//! [`FixedWindow`] counts attempts: the first counted attempt opens a window, and once `limit`
//! attempts have been counted in it, further ones are refused until it closes. It is used for
//! wrong room passwords, per socket (in the session) and per room (in the store; in Redis in
//! cluster mode, with the same rule as a key that expires with the window).

use std::time::{Duration, Instant};

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
