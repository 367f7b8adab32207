//! The events a session was sent, numbered, kept for as long as a reconnecting client could
//! still need them replayed.
//!
//! Every event after `session` gets the next number; the client counts what it received, so
//! after a drop it says how far it got and the rest is replayed. While the session is
//! connected an event is needed only until the client could have noticed a dead connection
//! (the Engine.IO ping interval plus timeout): anything older either arrived or the client
//! already knows it is cut off. While the session is away everything is kept, up to the
//! bounds; an overflow makes the session unrecoverable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

/// How much one session may keep.
#[derive(Debug, Clone, Copy)]
pub struct KeepLimits {
    pub events: usize,
    pub bytes: usize,
    /// How old an event may get while the session is connected.
    pub age: Duration,
}

pub struct Kept {
    pub seq: u64,
    pub event: &'static str,
    pub data: Arc<RawValue>,
    at: Instant,
}

#[derive(Default)]
pub struct Outbox {
    /// Number of the last event sent; the first is 1.
    last: u64,
    /// Every event up to this number has been dropped.
    dropped_through: u64,
    kept: VecDeque<Kept>,
    bytes: usize,
}

impl Outbox {
    /// Numbers and keeps an event; false if that pushed out an event the bounds could not
    /// hold.
    pub fn push(
        &mut self,
        event: &'static str,
        data: Arc<RawValue>,
        now: Instant,
        limits: KeepLimits,
    ) -> bool {
        self.last += 1;
        self.bytes += data.get().len();
        self.kept.push_back(Kept {
            seq: self.last,
            event,
            data,
            at: now,
        });
        let mut within = true;
        while self.kept.len() > limits.events || self.bytes > limits.bytes {
            self.drop_front();
            within = false;
        }
        within
    }

    /// The outbox of a session handed over from another node: the events after the first
    /// `received` of `last`, as they were numbered there.
    pub fn handed(
        received: u64,
        last: u64,
        events: impl IntoIterator<Item = (u64, &'static str, Arc<RawValue>)>,
        now: Instant,
    ) -> Outbox {
        let mut outbox = Outbox {
            last,
            dropped_through: received,
            ..Outbox::default()
        };
        for (seq, event, data) in events {
            outbox.bytes += data.get().len();
            outbox.kept.push_back(Kept {
                seq,
                event,
                data,
                at: now,
            });
        }
        outbox
    }

    /// Drops what a connected client can no longer need.
    pub fn forget_older_than(&mut self, now: Instant, limits: KeepLimits) {
        while self
            .kept
            .front()
            .is_some_and(|k| now.saturating_duration_since(k.at) > limits.age)
        {
            self.drop_front();
        }
    }

    fn drop_front(&mut self) {
        if let Some(front) = self.kept.pop_front() {
            self.dropped_through = front.seq;
            self.bytes -= front.data.get().len();
        }
        if self.kept.is_empty() {
            // An idle session holds no buffer at all.
            self.kept = VecDeque::new();
        }
    }

    /// The events after the first `received`, if every one of them is still here.
    pub fn after(&self, received: u64) -> Option<impl Iterator<Item = &Kept>> {
        (self.dropped_through <= received && received <= self.last)
            .then(|| self.kept.iter().filter(move |k| k.seq > received))
    }

    /// Every event up to this number is gone; the rest are here.
    pub fn dropped_through(&self) -> u64 {
        self.dropped_through
    }

    /// Number of the last event sent.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether an event numbered after `seq` has been pushed out by the bounds.
    pub fn lost_after(&self, seq: u64) -> bool {
        self.dropped_through > seq
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KeepLimits = KeepLimits {
        events: 3,
        bytes: 1000,
        age: Duration::from_secs(10),
    };

    fn data(n: u64) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(n.to_string()).expect("json"))
    }

    /// A JSON string exactly `len` bytes long, quotes included.
    fn text(len: usize) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(len - 2))).expect("json"))
    }

    fn seqs(outbox: &Outbox, received: u64) -> Option<Vec<u64>> {
        outbox.after(received).map(|it| it.map(|k| k.seq).collect())
    }

    #[test]
    fn replays_what_the_client_missed_while_it_is_still_kept() {
        let mut outbox = Outbox::default();
        let t0 = Instant::now();
        for n in 1..=3 {
            assert!(outbox.push("e", data(n), t0, LIMITS));
        }
        assert_eq!(seqs(&outbox, 1), Some(vec![2, 3]));
        assert_eq!(seqs(&outbox, 3), Some(vec![]));
        assert_eq!(seqs(&outbox, 4), None, "more than was ever sent");
        assert!(
            !outbox.push("e", data(4), t0, LIMITS),
            "over the event bound"
        );
        assert_eq!(seqs(&outbox, 0), None, "event 1 is gone");
        assert_eq!(seqs(&outbox, 1), Some(vec![2, 3, 4]));
        outbox.forget_older_than(t0 + Duration::from_secs(11), LIMITS);
        assert!(outbox.is_empty());
        assert_eq!(outbox.kept.capacity(), 0, "an idle session keeps no buffer");
        assert_eq!(seqs(&outbox, 4), Some(vec![]));
        assert_eq!(seqs(&outbox, 3), None);
    }

    #[test]
    fn a_handed_outbox_replays_from_where_the_client_got_to() {
        let outbox = Outbox::handed(5, 7, [(6, "e", data(6)), (7, "e", data(7))], Instant::now());
        assert_eq!(seqs(&outbox, 5), Some(vec![6, 7]));
        assert_eq!(seqs(&outbox, 4), None);
        assert_eq!(outbox.last(), 7);
    }

    #[test]
    fn the_byte_bound_holds() {
        let mut outbox = Outbox::default();
        let big =
            Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(600))).expect("json"));
        assert!(outbox.push("e", Arc::clone(&big), Instant::now(), LIMITS));
        assert!(!outbox.push("e", big, Instant::now(), LIMITS));
        assert_eq!(seqs(&outbox, 1), Some(vec![2]));
    }

    #[test]
    fn what_the_bounds_pushed_out_is_counted() {
        let mut outbox = Outbox::default();
        let t0 = Instant::now();
        for n in 1..=3 {
            assert!(outbox.push("e", data(n), t0, LIMITS));
        }
        assert_eq!(outbox.dropped_through(), 0);
        assert!(!outbox.lost_after(0), "nothing pushed out yet");
        assert!(!outbox.push("e", data(4), t0, LIMITS));
        assert!(!outbox.push("e", data(5), t0, LIMITS));
        assert_eq!(outbox.dropped_through(), 2);
        assert!(outbox.lost_after(1), "event 2 is gone");
        assert!(!outbox.lost_after(2), "events 3 to 5 are all here");
        assert!(!outbox.lost_after(3));
    }

    #[test]
    fn the_byte_bound_admits_exactly_its_size_and_frees_what_it_drops() {
        let limits = KeepLimits {
            events: 10,
            ..LIMITS
        };
        let t0 = Instant::now();
        let mut outbox = Outbox::default();
        assert!(
            outbox.push("e", text(1000), t0, limits),
            "exactly the bound"
        );
        let mut outbox = Outbox::default();
        assert!(outbox.push("e", text(600), t0, limits));
        assert!(!outbox.push("e", text(600), t0, limits));
        assert_eq!(seqs(&outbox, 1), Some(vec![2]));
        // 600 still kept, plus 500, is over the bound: event 2 goes as well.
        assert!(!outbox.push("e", text(500), t0, limits));
        assert_eq!(seqs(&outbox, 2), Some(vec![3]));
    }

    #[test]
    fn a_handed_outbox_counts_the_bytes_it_was_handed() {
        let limits = KeepLimits {
            events: 10,
            ..LIMITS
        };
        let t0 = Instant::now();
        let mut outbox = Outbox::handed(0, 1, [(1, "e", text(600))], t0);
        assert!(!outbox.push("e", text(500), t0, limits));
        assert_eq!(seqs(&outbox, 1), Some(vec![2]));
    }

    #[test]
    fn a_connected_session_keeps_an_event_until_it_is_older_than_the_age() {
        let t0 = Instant::now();
        let mut outbox = Outbox::default();
        assert!(outbox.push("e", data(1), t0, LIMITS));
        outbox.forget_older_than(t0 + LIMITS.age, LIMITS);
        assert_eq!(seqs(&outbox, 0), Some(vec![1]), "exactly the age: kept");
        outbox.forget_older_than(t0 + LIMITS.age + Duration::from_millis(1), LIMITS);
        assert_eq!(seqs(&outbox, 0), None);
    }
}
