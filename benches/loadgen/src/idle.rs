//! Idle: N clients connected and joined to rooms of 4; server RSS per connection.

use std::time::Duration;

use sioclient::Client;

use crate::fleet::{self, Then};
use crate::report::Report;
use crate::server::{Kind, Server, ServerConfig};
use crate::{Plan, census};

fn room_of(i: usize) -> String {
    format!("idle-{}", i / 4)
}

pub async fn run(
    kind: Kind,
    cfg: &ServerConfig,
    plan: &Plan,
    n: usize,
    report: &mut Report,
) -> Result<(), String> {
    println!("\n--- idle N={n} on {} ---", kind.label());
    let mut server = Server::start(kind, cfg).await?;
    let result = run_on(&mut server, kind, cfg, plan, n, report).await;
    server.stop().await;
    // The clients are closed after the server stopped.
    fleet::close_all(result?, Duration::from_millis(100)).await;
    Ok(())
}

/// Connects and joins `n` clients to a started server (stopped by the caller) and measures;
/// returns the clients, still connected.
async fn run_on(
    server: &mut Server,
    kind: Kind,
    cfg: &ServerConfig,
    plan: &Plan,
    n: usize,
    report: &mut Report,
) -> Result<Vec<Client>, String> {
    let settle = if plan.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let max_settle = if plan.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let before = server
        .settled_rss_kib(settle, max_settle)
        .await
        .ok_or("no RSS")?;
    let heap_before = server.heap_census().await;
    let cpu0 = server.cpu_us().unwrap_or(0);
    let res = fleet::connect_many(
        server.addr,
        &cfg.secret,
        &format!("idle{n}"),
        n,
        256,
        Then::Join(room_of),
    )
    .await;
    let mut clients = match res {
        Ok(c) => c,
        Err(e) => {
            let alive = server.alive();
            let tail = server.log_tail();
            return Err(format!("{e} (server alive: {alive}; log tail: {tail})"));
        }
    };
    let cpu1 = server.cpu_us().unwrap_or(0);
    let after = server
        .settled_rss_kib(settle, max_settle)
        .await
        .ok_or("no RSS")?;
    fleet::drain(&mut clients.clients);
    if let (Some(before), Some(after)) = (heap_before, server.heap_census().await) {
        census::print_growth("connected and joined", &before, &after, n);
    }
    let sec = format!("idle N={n}");
    report.set(
        kind,
        &sec,
        "RSS before clients (MiB)",
        Some(before as f64 / 1024.0),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS after join (MiB)",
        Some(after as f64 / 1024.0),
        1,
    );
    report.set(
        kind,
        &sec,
        "RSS per joined conn (KiB)",
        Some((after as f64 - before as f64) / n as f64),
        2,
    );
    report.set(
        kind,
        &sec,
        "connect+join rate (conn/s)",
        Some(n as f64 / clients.elapsed.as_secs_f64()),
        0,
    );
    report.set(
        kind,
        &sec,
        "server CPU per connect+join (us)",
        Some((cpu1 - cpu0) as f64 / n as f64),
        1,
    );
    if plan.idle_hold > 0 {
        println!(
            "  holding {n} clients for {} s (server pid {})",
            plan.idle_hold, server.pid
        );
        tokio::time::sleep(Duration::from_secs(plan.idle_hold)).await;
    }
    if !server.alive() {
        report.fail(kind, format!("idle N={n}: server died"));
    }
    Ok(clients.clients)
}
