//! Churn: a pool of connected clients runs a bounded number of join/leave cycles in random
//! rooms (join-room, wait for join-ok, sometimes a media-state, leave-room). Server RSS at
//! start and end, and what is left in memory (GET /health `rooms`) once every client left.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sioclient::Client;

use crate::fleet::{self, Then};
use crate::report::Report;
use crate::server::{Kind, Server, ServerConfig};
use crate::{Plan, census};

#[derive(Default)]
struct Tally {
    cycles: u64,
    timeouts: u64,
    self_events: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    mut client: Client,
    seed: u64,
    rooms: usize,
    next: Arc<AtomicU64>,
    total: u64,
) -> (Client, Tally) {
    let mut t = Tally::default();
    let mut rng = seed | 1;
    let me = client.sid.clone();
    let mut last = usize::MAX;
    let name = format!("churner-{seed}");
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let mut room = fleet::xorshift(&mut rng) as usize % rooms;
        if room == last {
            room = (room + 1) % rooms;
        }
        last = room;
        let room_id = format!("churn-{room}");
        client.emit("join-room", &json!({ "roomId": room_id, "name": name }));
        let join_ok = fleet::wait_for(&mut client, Duration::from_secs(10), |ev| {
            if fleet::peer_of(ev) == Some(me.as_str()) {
                t.self_events += 1;
            }
            match ev.name.as_str() {
                "join-ok" if ev.data["roomId"] == room_id.as_str() => return true,
                "join-ok" if std::env::var_os("LOADGEN_DEBUG").is_some() => {
                    println!(
                        "  debug: {me} got a late join-ok {} while waiting for {room_id}",
                        ev.data
                    );
                }
                "join-error" | "error" => {
                    t.errors += 1;
                    t.first_error
                        .get_or_insert_with(|| format!("{} {}", ev.name, ev.data));
                }
                _ => {}
            }
            false
        })
        .await;
        if join_ok.is_none() {
            t.timeouts += 1;
            if std::env::var_os("LOADGEN_DEBUG").is_some() {
                println!("  debug: {me} got no join-ok for {room_id} (cycle of {name})");
            }
        }
        let r = fleet::xorshift(&mut rng);
        if r.is_multiple_of(4) {
            client.emit(
                "media-state",
                &json!({ "roomId": room_id, "mic": r & 16 != 0, "cam": r & 32 != 0 }),
            );
        }
        client.emit("leave-room", &json!({ "roomId": room_id }));
        t.cycles += 1;
    }
    (client, t)
}

pub async fn run(
    kind: Kind,
    cfg: &ServerConfig,
    plan: &Plan,
    report: &mut Report,
) -> Result<(), String> {
    let total = plan.churn_cycles;
    let pool = plan.churn_pool;
    println!(
        "\n--- churn {total} cycles, pool {pool}, {} rooms, on {} ---",
        plan.churn_rooms,
        kind.label()
    );
    let mut server = Server::start(kind, cfg).await?;
    let result = run_on(&mut server, kind, cfg, plan, report).await;
    server.stop().await;
    result
}

/// The churn workload against a started server (stopped by the caller).
async fn run_on(
    server: &mut Server,
    kind: Kind,
    cfg: &ServerConfig,
    plan: &Plan,
    report: &mut Report,
) -> Result<(), String> {
    let total = plan.churn_cycles;
    let pool = plan.churn_pool;
    let clients = fleet::connect_many(server.addr, &cfg.secret, "churn", pool, 128, Then::Nothing)
        .await?
        .clients;
    let settle = Duration::from_secs(if plan.quick { 1 } else { 3 });
    let rss_start = server
        .settled_rss_kib(settle, settle * 4)
        .await
        .ok_or("no RSS")?;
    let heap_start = server.heap_census().await;
    let cpu0 = server.cpu_us().unwrap_or(0);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let seed = 0x2545_F491_4F6C_DD1Du64.wrapping_mul(i as u64 + 1);
        tasks.push(tokio::spawn(worker(
            c,
            seed,
            plan.churn_rooms,
            next.clone(),
            total,
        )));
    }
    // RSS when half the cycles are done: with the end value it tells growth from a plateau.
    let half = {
        let next = next.clone();
        let pid = server.pid;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(3600);
            while next.load(Ordering::Relaxed) < total / 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            crate::server::proc_rss_kib(pid)
        })
    };
    let mut clients = Vec::new();
    let mut tally = Tally::default();
    // Bounded: every cycle waits at most 10 s for its join-ok.
    for task in tasks {
        let (c, t) = task.await.map_err(|e| e.to_string())?;
        clients.push(c);
        tally.cycles += t.cycles;
        tally.timeouts += t.timeouts;
        tally.self_events += t.self_events;
        tally.errors += t.errors;
        if tally.first_error.is_none() {
            tally.first_error = t.first_error;
        }
    }
    let elapsed = started.elapsed();
    let rss_half = half.await.ok().flatten();
    let cpu1 = server.cpu_us().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet::drain(&mut clients);
    let rss_end = server
        .settled_rss_kib(settle, settle * 4)
        .await
        .ok_or("no RSS")?;
    let health_end = server.health().await;
    if let (Some(start), Some(end)) = (heap_start, server.heap_census().await) {
        census::print_growth("start to end of the cycles", &start, &end, pool);
    }
    fleet::close_all(clients, settle).await;
    let rss_closed = server.rss_kib();
    let health_closed = server.health().await;

    let sec = format!("churn {total} cycles");
    report.set(
        kind,
        &sec,
        "cycles/s",
        Some(tally.cycles as f64 / elapsed.as_secs_f64()),
        0,
    );
    report.set(
        kind,
        &sec,
        "server CPU per cycle (us)",
        Some((cpu1 - cpu0) as f64 / tally.cycles.max(1) as f64),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS start (MiB)",
        Some(rss_start as f64 / 1024.0),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS at half the cycles (MiB)",
        rss_half.map(|r| r as f64 / 1024.0),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS end (MiB)",
        Some(rss_end as f64 / 1024.0),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS end/start (%)",
        Some(rss_end as f64 * 100.0 / rss_start as f64),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS after pool closed (MiB)",
        rss_closed.map(|r| r as f64 / 1024.0),
        1,
    );
    let rooms = |h: &Option<Value>| h.as_ref().and_then(|h| h["rooms"].as_f64());
    report.set(
        kind,
        &sec,
        "rooms left, pool connected",
        rooms(&health_end),
        0,
    );
    report.set(
        kind,
        &sec,
        "rooms left, pool closed",
        rooms(&health_closed),
        0,
    );
    report.note(
        kind,
        format!(
            "{sec}: /health after cycles {}, after pool closed {}",
            health_end
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or("unavailable".into()),
            health_closed
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or("unavailable".into())
        ),
    );
    if tally.timeouts > 0 || tally.self_events > 0 {
        report.fail(
            kind,
            format!(
                "{sec}: {} joins without join-ok, {} events about self",
                tally.timeouts, tally.self_events
            ),
        );
    }
    if tally.errors > 0 {
        report.note(
            kind,
            format!(
                "{sec}: {} error events, first: {}",
                tally.errors,
                tally.first_error.unwrap_or_default()
            ),
        );
    }
    if rooms(&health_end).is_some_and(|r| r > 0.0) {
        report.fail(
            kind,
            format!("{sec}: rooms left in memory after every client left them"),
        );
    }
    if !server.alive() {
        report.fail(kind, format!("{sec}: server died: {}", server.log_tail()));
    }
    Ok(())
}
