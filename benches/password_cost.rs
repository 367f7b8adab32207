//! What a room password costs the server: one argon2id seal when a locked room is opened and
//! one check per later joiner, each on tokio's blocking pool. Prints the time per operation
//! alone, and the throughput and latency when 8,000 checks arrive at once (the password storm
//! of `benches/run --scenario storm`), on the same runtime shape the server uses.
//!
//!   cargo bench --bench password-cost

use std::time::{Duration, Instant};

use rtcio_signal::protocol::RoomCheck;
use rtcio_signal::room_lock::RoomLock;
use serde_json::value::RawValue;

fn password(text: &str) -> rtcio_signal::protocol::Password {
    let raw =
        RawValue::from_string(format!(r#"{{"roomId":"r","password":"{text}"}}"#)).expect("json");
    RoomCheck::parse(Some(&raw))
        .ok()
        .and_then(|check| check.password)
        .expect("a password")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let pw = password("correct horse battery staple");
    let wrong = password("correct horse battery stapler");

    // Alone: one operation at a time.
    let mut seals = Vec::new();
    let mut checks = Vec::new();
    let lock = RoomLock::seal(&pw).await.expect("seal");
    for i in 0..200 {
        let start = Instant::now();
        let sealed = RoomLock::seal(&pw).await.expect("seal");
        seals.push(start.elapsed());
        let start = Instant::now();
        let opened = lock.opens(if i % 2 == 0 { &pw } else { &wrong }).await;
        checks.push(start.elapsed());
        assert_eq!(opened, i % 2 == 0);
        std::hint::black_box(sealed);
    }
    seals.sort();
    checks.sort();
    println!(
        "argon2id m=4096 KiB, t=1, p=1 (the server's parameters), 200 of each, one at a time:"
    );
    for (what, times) in [("seal", &seals), ("check", &checks)] {
        println!(
            "  {what:<5}  p50 {:>7.2?}  p99 {:>7.2?}  max {:>7.2?}",
            percentile(times, 0.5),
            percentile(times, 0.99),
            times[times.len() - 1]
        );
    }

    // A storm: 8,000 checks submitted at once.
    let start = Instant::now();
    let tasks: Vec<_> = (0..8000)
        .map(|_| {
            let lock = lock.clone();
            let pw = password("correct horse battery staple");
            tokio::spawn(async move {
                let submitted = Instant::now();
                assert!(lock.opens(&pw).await);
                submitted.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::new();
    for task in tasks {
        waits.push(task.await.expect("task"));
    }
    let total = start.elapsed();
    waits.sort();
    println!(
        "8,000 checks at once on {} cores: {:.2?} in all ({:.0}/s); each waited p50 {:.2?}, p99 {:.2?}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        total,
        8000.0 / total.as_secs_f64(),
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
    );
}
