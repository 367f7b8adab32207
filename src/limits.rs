//! Limits on what clients may do: how many connections they hold ([`ConnectionCaps`]), how
//! fast they may send each class of event ([`EventRates`]), and how often they may try
//! something ([`FixedWindow`]).
//!
//! [`ConnectionCaps`] counts the connections the server holds, in all and per client address,
//! and refuses a connection over either cap. A connection's [`Slot`] gives its place back when
//! dropped, with the socket's handlers, so no path can leak one.
//!
//! [`FixedWindow`] counts attempts: the first counted attempt opens a window, and once `limit`
//! attempts have been counted in it, further ones are refused until it closes. It is used for
//! wrong room passwords, per socket (in the session), and per room and per user on a room (in
//! the store; in Redis in cluster mode, with the same rule as keys that expire with the window). [`WindowMap`]
//! holds one per key in memory and forgets closed ones; [`KeyedWindows`] is one with a single
//! limit (TURN credentials per user).

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::RefMut;

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

/// Wrong-password limits. A socket may try `per_socket` wrong passwords on any rooms, and a
/// user (every socket of one token `sub`, on every node) `per_user` on one room. A room as a
/// whole takes `per_room` from everyone; past that, only users who have not guessed wrong
/// there in this window may still try, so a guesser can lock out neither the members-to-be
/// who know the password nor anyone but itself.
#[derive(Debug, Clone, Copy)]
pub struct GuessLimits {
    pub per_socket: WindowLimit,
    pub per_user: WindowLimit,
    pub per_room: WindowLimit,
}

impl GuessLimits {
    /// How long until a user whose attempts on a room are counted in `user` may try a
    /// password there, the room's own attempts being counted in `room`; `None`: now.
    pub fn room_wait(
        &self,
        now: Instant,
        room: &FixedWindow,
        user: &FixedWindow,
    ) -> Option<Duration> {
        if let Some(wait) = user.blocked_for(now, self.per_user) {
            return Some(wait);
        }
        // A user with a wrong guess here waits for the room's window, or its own, to close.
        let guessed = user.open_for(now, self.per_user)?;
        let room_wait = room.blocked_for(now, self.per_room)?;
        Some(room_wait.min(guessed))
    }
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

    /// How long the window stays open, if it has counted an attempt.
    pub fn open_for(&self, now: Instant, limit: WindowLimit) -> Option<Duration> {
        let closes = self.opened? + limit.window;
        (self.count > 0 && now < closes).then(|| closes - now)
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

/// One [`FixedWindow`] per key. Closed windows are forgotten once the map has doubled since it
/// was last swept, so it holds at most about twice the keys active within one window (or
/// [`WindowMap::SWEEP_FLOOR`]), and a sweep costs amortized O(1) per attempt.
pub struct WindowMap<K> {
    windows: DashMap<K, FixedWindow>,
    sweep_at: AtomicUsize,
}

impl<K: Eq + Hash> Default for WindowMap<K> {
    fn default() -> Self {
        WindowMap {
            windows: DashMap::new(),
            sweep_at: AtomicUsize::new(Self::SWEEP_FLOOR),
        }
    }
}

impl<K: Eq + Hash> WindowMap<K> {
    /// Below this many keys the map is not swept at all.
    pub const SWEEP_FLOOR: usize = 1024;

    /// `key`'s window (a fresh one if it has none), locked until the guard is dropped. Closed
    /// windows (by `limit`) are forgotten first if the map has grown enough.
    pub fn window(&self, key: K, now: Instant, limit: WindowLimit) -> RefMut<'_, K, FixedWindow> {
        if self.windows.len() >= self.sweep_at.load(Ordering::Relaxed) {
            self.windows.retain(|_, window| !window.expired(now, limit));
            let next = (self.windows.len() * 2).max(Self::SWEEP_FLOOR);
            self.sweep_at.store(next, Ordering::Relaxed);
        }
        self.windows.entry(key).or_default()
    }

    /// Takes back one attempt counted for `key`; a window left with none is forgotten, so the
    /// next counted attempt opens a new one.
    pub fn forgive(&self, key: &K) {
        self.windows.remove_if_mut(key, |_, window| {
            window.forgive();
            window.count == 0
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.windows.len()
    }
}

/// A [`WindowMap`] with one limit for every key, such as TURN credentials per user.
pub struct KeyedWindows {
    limit: WindowLimit,
    windows: WindowMap<Arc<str>>,
}

impl KeyedWindows {
    pub fn new(limit: WindowLimit) -> KeyedWindows {
        KeyedWindows {
            limit,
            windows: WindowMap::default(),
        }
    }

    /// Counts one attempt for `key`, or says how long until its window lets one in.
    pub fn take(&self, key: &Arc<str>, now: Instant) -> Result<(), Duration> {
        let mut window = self.windows.window(Arc::clone(key), now, self.limit);
        if let Some(wait) = window.blocked_for(now, self.limit) {
            return Err(wait);
        }
        window.record(now, self.limit);
        Ok(())
    }
}

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The classes of client events, each with its own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// `#rtcio:message`.
    Relay,
    /// `join-room`, `check-room`, `leave-room`.
    Room,
    /// `media-state`, `stopScreenShare`, `chat-message`, and anything else.
    Echo,
}

/// The rate of each class of event, per socket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRates {
    pub relay: Rate,
    pub room: Rate,
    pub echo: Rate,
    /// Bytes of relays and echoes (each event costs its payload's size).
    pub bytes: Rate,
    /// A socket still going over a rate after this long (with no pause of a second) is
    /// disconnected.
    pub flood_for: Duration,
}

/// A token bucket: `burst` tokens, refilled at `per_second`; each event takes one (or, for a
/// budget of bytes, its size).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated: Option<Instant>,
}

impl TokenBucket {
    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant, rate: Rate) -> Result<(), Duration> {
        self.take_many(now, rate, 1)
    }

    /// Takes `cost` tokens, or (taking none) says how long until they are there.
    pub fn take_many(&mut self, now: Instant, rate: Rate, cost: u32) -> Result<(), Duration> {
        let (burst, cost) = (f64::from(rate.burst), f64::from(cost));
        let tokens = match self.updated {
            None => burst,
            Some(then) => {
                let refill = now.saturating_duration_since(then).as_secs_f64() * rate.per_second;
                (self.tokens + refill).min(burst)
            }
        };
        self.updated = Some(now);
        if tokens >= cost {
            self.tokens = tokens - cost;
            return Ok(());
        }
        self.tokens = tokens;
        let wait = if rate.per_second > 0.0 {
            (cost - tokens) / rate.per_second
        } else {
            f64::from(u32::MAX)
        };
        Err(Duration::from_secs_f64(wait.min(f64::from(u32::MAX))))
    }
}

/// One socket's buckets, and how long it has been going over them.
#[derive(Debug, Default)]
pub struct SocketRates {
    relay: TokenBucket,
    room: TokenBucket,
    echo: TokenBucket,
    bytes: TokenBucket,
    /// Since when it has been refused with no pause of a second, and its last refusal.
    flooding: Option<(Instant, Instant)>,
    /// It has been found flooding for too long: it is being disconnected.
    cut_off: bool,
}

impl Default for TokenBucket {
    fn default() -> Self {
        TokenBucket {
            tokens: 0.0,
            updated: None,
        }
    }
}

/// What the rates say about one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Dropped; the client may try again after this long.
    Refused(Duration),
    /// Dropped, and the socket has kept going over its rates for too long.
    Flooding,
    /// Dropped: the socket was found flooding already, and is being disconnected.
    CutOff,
}

/// How long without a refusal ends a flood.
const FLOOD_PAUSE: Duration = Duration::from_secs(1);

impl SocketRates {
    /// Counts one event of `class` whose payload is `size` bytes.
    pub fn check(
        &mut self,
        class: EventClass,
        size: usize,
        now: Instant,
        rates: &EventRates,
    ) -> Verdict {
        if self.cut_off {
            return Verdict::CutOff;
        }
        let (bucket, rate) = match class {
            EventClass::Relay => (&mut self.relay, rates.relay),
            EventClass::Room => (&mut self.room, rates.room),
            EventClass::Echo => (&mut self.echo, rates.echo),
        };
        let taken = bucket.take(now, rate).and_then(|()| match class {
            EventClass::Room => Ok(()),
            EventClass::Relay | EventClass::Echo => {
                let size = u32::try_from(size).unwrap_or(u32::MAX);
                // A refused event costs nothing: its token is given back.
                self.bytes
                    .take_many(now, rates.bytes, size)
                    .inspect_err(|_| bucket.tokens += 1.0)
            }
        });
        let Err(wait) = taken else {
            return Verdict::Allowed;
        };
        let since = match self.flooding {
            Some((since, last)) if now.saturating_duration_since(last) < FLOOD_PAUSE => since,
            _ => now,
        };
        self.flooding = Some((since, now));
        if now.saturating_duration_since(since) >= rates.flood_for {
            self.cut_off = true;
            Verdict::Flooding
        } else {
            Verdict::Refused(wait)
        }
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
    fn relays_and_echoes_also_spend_their_bytes_and_room_events_do_not() {
        let mut rates = SocketRates::default();
        let t0 = Instant::now();
        assert_eq!(
            rates.check(EventClass::Relay, 60, t0, &RATES),
            Verdict::Allowed
        );
        // 40 bytes left: a 41-byte echo waits for one more byte, a millisecond at 1000/s.
        assert_eq!(
            rates.check(EventClass::Echo, 41, t0, &RATES),
            Verdict::Refused(Duration::from_millis(1))
        );
        assert_eq!(
            rates.check(EventClass::Room, 500, t0, &RATES),
            Verdict::Allowed
        );
        assert_eq!(
            rates.check(EventClass::Relay, 40, t0, &RATES),
            Verdict::Allowed
        );
        let t1 = t0 + Duration::from_millis(30);
        assert!(matches!(
            rates.check(EventClass::Relay, 31, t1, &RATES),
            Verdict::Refused(_)
        ));
        assert_eq!(
            rates.check(EventClass::Relay, 30, t1, &RATES),
            Verdict::Allowed
        );
    }

    #[test]
    fn a_refusal_says_exactly_how_long_until_the_next_token() {
        let rate = Rate {
            per_second: 10.0,
            burst: 1,
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.take(start, rate), Ok(()));
        // Half a token has come back after 50 ms: the other half takes 50 ms more.
        let wait = bucket.take(start + Duration::from_millis(50), rate);
        let wait = wait.expect_err("no whole token yet").as_secs_f64();
        assert!((wait - 0.05).abs() < 1e-6, "{wait}");
    }

    #[test]
    fn a_window_expires_only_once_it_has_closed() {
        let limit = WindowLimit {
            limit: 3,
            window: Duration::from_secs(10),
        };
        let start = Instant::now();
        let mut window = FixedWindow::default();
        assert!(window.expired(start, limit), "nothing counted yet");
        window.record(start, limit);
        assert!(!window.expired(start, limit));
        assert!(!window.expired(start + Duration::from_secs(9), limit));
        assert!(window.expired(start + limit.window, limit));
    }

    #[test]
    fn a_window_reopens_when_it_closes_and_limits_again() {
        let limit = WindowLimit {
            limit: 1,
            window: Duration::from_secs(10),
        };
        let start = Instant::now();
        let mut window = FixedWindow::default();
        window.record(start, limit);
        assert_eq!(window.blocked_for(start, limit), Some(limit.window));
        // The attempt at the very instant the window closes opens the next one.
        let next = start + limit.window;
        assert_eq!(window.blocked_for(next, limit), None);
        window.record(next, limit);
        assert_eq!(window.blocked_for(next, limit), Some(limit.window));
        let later = next + limit.window + Duration::from_secs(1);
        window.record(later, limit);
        assert_eq!(window.blocked_for(later, limit), Some(limit.window));
    }

    const RATES: EventRates = EventRates {
        relay: Rate {
            per_second: 10.0,
            burst: 3,
        },
        room: Rate {
            per_second: 1.0,
            burst: 1,
        },
        echo: Rate {
            per_second: 1.0,
            burst: 1,
        },
        bytes: Rate {
            per_second: 1000.0,
            burst: 100,
        },
        flood_for: Duration::from_secs(5),
    };

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut rates = SocketRates::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                rates.check(EventClass::Relay, 1, t0, &RATES),
                Verdict::Allowed
            );
        }
        let Verdict::Refused(wait) = rates.check(EventClass::Relay, 1, t0, &RATES) else {
            panic!("over the burst");
        };
        assert_eq!(wait, Duration::from_millis(100));
        // Each class has its own bucket.
        assert_eq!(
            rates.check(EventClass::Room, 1, t0, &RATES),
            Verdict::Allowed
        );
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            rates.check(EventClass::Relay, 1, t1, &RATES),
            Verdict::Allowed
        );
        assert!(matches!(
            rates.check(EventClass::Relay, 1, t1, &RATES),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn only_a_flood_without_pause_gets_a_socket_disconnected() {
        let mut rates = SocketRates::default();
        let t0 = Instant::now();
        let mut verdict = Verdict::Allowed;
        // Refused every 500 ms for 5 s: a flood, found once; what follows is dropped as the
        // socket goes.
        for step in 0..=10 {
            let now = t0 + Duration::from_millis(500 * step);
            verdict = rates.check(EventClass::Echo, 1, now, &RATES);
            while verdict == Verdict::Allowed {
                verdict = rates.check(EventClass::Echo, 1, now, &RATES);
            }
            assert_eq!(verdict == Verdict::Flooding, step == 10, "step {step}");
        }
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            rates.check(EventClass::Room, 1, later, &RATES),
            Verdict::CutOff
        );
        // A pause of a second starts over.
        let mut rates = SocketRates::default();
        for step in 0..=10 {
            let now = t0 + Duration::from_millis(1500 * step);
            while rates.check(EventClass::Echo, 1, now, &RATES) == Verdict::Allowed {}
            verdict = rates.check(EventClass::Echo, 1, now, &RATES);
        }
        assert!(matches!(verdict, Verdict::Refused(_)));
    }

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
    fn a_window_given_back_its_only_attempt_is_forgotten() {
        let limit = WindowLimit {
            limit: 2,
            window: Duration::from_secs(60),
        };
        let map = WindowMap::<&str>::default();
        let t0 = Instant::now();
        map.window("a", t0, limit).record(t0, limit);
        map.window("a", t0, limit).record(t0, limit);
        map.forgive(&"a");
        assert_eq!(map.len(), 1, "one attempt is still counted");
        map.forgive(&"a");
        assert_eq!(map.len(), 0, "none is: the next attempt opens a new window");
        let later = t0 + Duration::from_secs(50);
        map.window("a", later, limit).record(later, limit);
        assert_eq!(
            map.window("a", later, limit).open_for(later, limit),
            Some(Duration::from_secs(60))
        );
    }

    /// A window is open from its first counted attempt until it closes, and not while it
    /// counts none (every attempt forgiven).
    #[test]
    fn a_window_is_open_while_it_counts_an_attempt() {
        let limit = WindowLimit {
            limit: 5,
            window: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let mut window = FixedWindow::default();
        assert_eq!(window.open_for(t0, limit), None, "nothing counted yet");
        window.record(t0, limit);
        let half = t0 + Duration::from_secs(20);
        assert_eq!(window.open_for(half, limit), Some(Duration::from_secs(40)));
        assert_eq!(
            window.open_for(t0 + limit.window, limit),
            None,
            "closed at its end"
        );
        window.forgive();
        assert_eq!(window.open_for(half, limit), None, "counts none");
    }

    /// A sweep that finds every window open puts the next one off until the map has
    /// doubled, so sweeping stays amortized O(1) per attempt.
    #[test]
    fn the_next_sweep_waits_for_the_map_to_double() {
        let limit = WindowLimit {
            limit: 5,
            window: Duration::from_secs(60),
        };
        let floor = WindowMap::<usize>::SWEEP_FLOOR;
        let map = WindowMap::<usize>::default();
        let t0 = Instant::now();
        for key in 0..floor {
            map.window(key, t0, limit).record(t0, limit);
        }
        assert_eq!(map.sweep_at.load(Ordering::Relaxed), floor, "not swept yet");
        map.window(floor, t0, limit).record(t0, limit);
        assert_eq!(map.len(), floor + 1, "every window is still open");
        assert_eq!(map.sweep_at.load(Ordering::Relaxed), 2 * floor);
    }

    #[test]
    fn keyed_windows_limit_each_key_and_forget_closed_ones() {
        let limit = WindowLimit {
            limit: 2,
            window: Duration::from_secs(60),
        };
        let limiter = KeyedWindows::new(limit);
        let t0 = Instant::now();
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        assert_eq!(limiter.take(&alice, t0), Ok(()));
        assert_eq!(limiter.take(&alice, t0), Ok(()));
        assert_eq!(limiter.take(&alice, t0), Err(Duration::from_secs(60)));
        assert_eq!(
            limiter.take(&bob, t0),
            Ok(()),
            "each key has its own window"
        );

        // Many users once each: the map is swept when it reaches its threshold, keeping only
        // windows still open.
        let later = t0 + Duration::from_secs(61);
        for i in 0..WindowMap::<Arc<str>>::SWEEP_FLOOR * 3 {
            let user: Arc<str> = format!("user-{i}").into();
            limiter.take(&user, later).expect("a fresh user");
        }
        assert!(
            limiter.windows.len() <= WindowMap::<Arc<str>>::SWEEP_FLOOR * 3,
            "{} keys",
            limiter.windows.len()
        );
        let much_later = later + Duration::from_secs(61);
        let last: Arc<str> = "last".into();
        // Reaching the threshold again sweeps every closed window.
        while limiter.windows.len() < limiter.windows.sweep_at.load(Ordering::Relaxed) {
            let user: Arc<str> = format!("filler-{}", limiter.windows.len()).into();
            limiter.take(&user, later).expect("a fresh user");
        }
        limiter.take(&last, much_later).expect("a fresh user");
        assert_eq!(limiter.windows.len(), 1, "only the newest window is open");
        assert_eq!(
            limiter.take(&alice, much_later),
            Ok(()),
            "alice's window closed"
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
    }
}
