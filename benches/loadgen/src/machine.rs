//! Is the machine quiet? Per-core busy time from /proc/stat, so a measurement taken while
//! something else (a compiler, another test) ran on the server's or the load generator's
//! core can be recognised and flagged.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct CpuSnap {
    /// Per core: (busy, steal, total) in clock ticks.
    cores: Vec<(u64, u64, u64)>,
}

pub fn snap() -> CpuSnap {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut cores = Vec::new();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let g = |i: usize| f.get(i).copied().unwrap_or(0);
        let busy = g(0) + g(1) + g(2) + g(5) + g(6);
        let steal = g(7);
        let total = busy + g(3) + g(4) + steal;
        cores.push((busy, steal, total));
    }
    CpuSnap { cores }
}

/// Busy and steal percentage of `core` between two snapshots.
pub fn core_busy(a: &CpuSnap, b: &CpuSnap, core: usize) -> (f64, f64) {
    match (a.cores.get(core), b.cores.get(core)) {
        (Some(x), Some(y)) => {
            let total = y.2.saturating_sub(x.2).max(1) as f64;
            (
                y.0.saturating_sub(x.0) as f64 * 100.0 / total,
                y.1.saturating_sub(x.1) as f64 * 100.0 / total,
            )
        }
        _ => (0.0, 0.0),
    }
}

/// Waits (bounded by `max`) until every core has been under `busy_pct` busy for a second.
/// Returns false if the machine never got quiet.
pub async fn wait_quiet(max: Duration, busy_pct: f64) -> bool {
    let start = Instant::now();
    let mut last_print = start - Duration::from_secs(60);
    loop {
        let a = snap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = snap();
        let busy: Vec<f64> = (0..a.cores.len()).map(|c| core_busy(&a, &b, c).0).collect();
        if busy.iter().all(|&x| x < busy_pct) {
            return true;
        }
        if start.elapsed() >= max {
            println!(
                "  machine still busy ({busy:.0?} % per core) after {max:?}; measuring anyway"
            );
            return false;
        }
        if last_print.elapsed() >= Duration::from_secs(15) {
            println!("  waiting for a quiet machine: cores busy {busy:.0?} % (other processes)");
            last_print = Instant::now();
        }
    }
}
