//! What the soak counts, per minute and in total: honest traffic (sent, delivered, latency,
//! lost, duplicated, out of order), hostile outcomes by name, and invariant violations. Every
//! task of the run writes here; the minute reporter takes a minute's counts and folds them
//! into the totals.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::report::quantile;

/// Violations kept verbatim for the summary (all are counted and printed as they happen).
const KEPT_VIOLATIONS: usize = 20;

#[derive(Default)]
pub struct Counts {
    /// Honest `#rtcio:message` relays.
    pub relays_sent: u64,
    pub relays_delivered: u64,
    /// Honest echoes (`media-state`, `chat-message`), one per receiver.
    pub echoes_sent: u64,
    pub echoes_delivered: u64,
    /// Honest relays and echoes that never arrived, arrived twice, or overtook an earlier one.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Latency of each honest relay delivered, microseconds.
    pub relay_lat_us: Vec<u32>,
    pub calls_started: u64,
    pub calls_ended: u64,
    /// Hostile outcomes ("flood: rate-limited replies", "conn spam: refused ...", ...).
    pub outcomes: BTreeMap<String, u64>,
    pub violations: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.relays_sent += o.relays_sent;
        self.relays_delivered += o.relays_delivered;
        self.echoes_sent += o.echoes_sent;
        self.echoes_delivered += o.echoes_delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.relay_lat_us.extend(o.relay_lat_us);
        self.calls_started += o.calls_started;
        self.calls_ended += o.calls_ended;
        for (k, v) in o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.violations += o.violations;
    }

    /// (p50, p99, max) of the relay latencies, microseconds; sorts them.
    pub fn latency(&mut self) -> (Option<f64>, Option<f64>, Option<f64>) {
        self.relay_lat_us.sort_unstable();
        let l = &self.relay_lat_us;
        (
            quantile(l, 0.50),
            quantile(l, 0.99),
            l.last().map(|&x| x as f64),
        )
    }

    pub fn outcome_count(&self, name: &str) -> u64 {
        self.outcomes.get(name).copied().unwrap_or(0)
    }
}

#[derive(Default)]
pub struct Stats {
    minute: Mutex<Counts>,
    violations: Mutex<Vec<String>>,
}

impl Stats {
    /// Updates the current minute's counts.
    pub fn with(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.minute.lock().unwrap());
    }

    pub fn outcome(&self, name: &str, n: u64) {
        self.with(|c| *c.outcomes.entry(name.to_string()).or_default() += n);
    }

    /// An invariant violated: printed at once, counted, the first few kept.
    pub fn violation(&self, what: String) {
        println!("  VIOLATION: {what}");
        self.with(|c| c.violations += 1);
        let mut kept = self.violations.lock().unwrap();
        if kept.len() < KEPT_VIOLATIONS {
            kept.push(what);
        }
    }

    /// The counts since the last call, folded into `total` too.
    pub fn take_minute(&self, total: &mut Counts) -> Counts {
        let minute = std::mem::take(&mut *self.minute.lock().unwrap());
        let copy = Counts {
            relay_lat_us: minute.relay_lat_us.clone(),
            outcomes: minute.outcomes.clone(),
            ..minute
        };
        total.add(copy);
        minute
    }

    pub fn kept_violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}
