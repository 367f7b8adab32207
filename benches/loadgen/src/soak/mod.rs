//! Soak (ours only, not part of `all`: it is long): for `--soak-minutes`, on one node and on a
//! two-node cluster sharing a redis-server, a steady population of honest calls (see `calls`)
//! runs beside hostile clients (see `hostile`). Every minute it prints the honest traffic and
//! its latency, each process's RSS, the open connections and the hostile outcomes; at the end,
//! the totals and a PASS/FAIL line: honest p99 under 5 ms, nothing honest lost, duplicated or
//! reordered, no invariant violated, RSS bounded.
//!
//! The servers run with TRUSTED_CLIENT_IP_HEADER: each client names its own address in that
//! header, the connection spammer one shared address, so the per-address cap applies to the
//! spammer alone.

mod calls;
mod hostile;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sioclient::{Client, ConnectError};

use crate::Plan;
use crate::fleet;
use crate::machine;
use crate::relay::{self, Bodies, Target};
use crate::server::{self, Kind, Redis, Server, ServerConfig};
use stats::{Counts, Stats};

/// The server settings the soak's load is sized against, set explicitly on every node.
pub mod limits {
    pub const CLIENT_IP_HEADER: &str = "X-Client-Ip";
    /// The connection spammer's address (TEST-NET-2); honest clients get 10.x.y.z each.
    pub const SPAMMER: &str = "198.51.100.7";
    pub const MAX_PER_ADDRESS: usize = 64;
    pub const MAX_PAYLOAD_BYTES: usize = 65_536;
    pub const RELAY_RATE: u64 = 100;
    pub const RELAY_BURST: u64 = 250;
    /// Shorter than the default 10 s, so a minute sees several floods cut off.
    pub const FLOOD_DISCONNECT_MS: u64 = 5_000;
    pub const MAX_ROOMS_PER_SOCKET: usize = 16;
    pub const WRONG_PASSWORDS: u32 = 5;
    /// Shorter than the default minute, so the vault's lockout opens and closes often.
    pub const WRONG_PASSWORD_WINDOW_MS: u64 = 20_000;

    /// The environment of every node.
    pub fn env() -> Vec<(&'static str, String)> {
        vec![
            ("TRUSTED_CLIENT_IP_HEADER", CLIENT_IP_HEADER.to_string()),
            ("MAX_CONNECTIONS", "4000".to_string()),
            ("MAX_CONNECTIONS_PER_ADDRESS", MAX_PER_ADDRESS.to_string()),
            ("MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES.to_string()),
            ("MAX_PEERS_PER_ROOM", "50".to_string()),
            ("RELAY_RATE", RELAY_RATE.to_string()),
            ("RELAY_BURST", RELAY_BURST.to_string()),
            ("ROOM_EVENT_RATE", "5".to_string()),
            ("ROOM_EVENT_BURST", "50".to_string()),
            ("ECHO_RATE", "60".to_string()),
            ("ECHO_BURST", "140".to_string()),
            ("SEND_BYTES_RATE", "32768".to_string()),
            ("SEND_BYTES_BURST", "1048576".to_string()),
            ("MAX_QUEUED_BYTES", "8388608".to_string()),
            ("FLOOD_DISCONNECT_MS", FLOOD_DISCONNECT_MS.to_string()),
            ("MAX_ROOMS_PER_SOCKET", MAX_ROOMS_PER_SOCKET.to_string()),
            ("WRONG_PASSWORDS_PER_SOCKET", WRONG_PASSWORDS.to_string()),
            ("WRONG_PASSWORDS_PER_USER", WRONG_PASSWORDS.to_string()),
            ("WRONG_PASSWORDS_PER_ROOM", WRONG_PASSWORDS.to_string()),
            (
                "WRONG_PASSWORD_WINDOW_MS",
                WRONG_PASSWORD_WINDOW_MS.to_string(),
            ),
            ("RECOVERY_WINDOW_MS", "30000".to_string()),
        ]
    }
}

/// The flood victim's room and name (its call lasts the whole run, open to the flooders).
const VICTIM_ROOM: &str = "soak-victim";
const VICTIM_NAME: &str = "victim-0";
/// The locked room the guessers try; its one member must hear nothing of them.
const VAULT_ROOM: &str = "soak-vault";
/// The vault's password, which the guessers never try and its guests know.
const VAULT_PASSWORD: &str = "the vault's password";
/// Outcome names the summary checks.
const FLOODS: &str = "flood: rounds";
const FLOOD_REACHED: &str = "flood: relays that reached the victim";
/// The `data` of the relay that ends a trickle of candidates.
const END_OF_CANDIDATES: &str = r#""candidate":{"candidate":"","sdpMid":"0","sdpMLineIndex":0}"#;

/// Honest p99 latency the run must stay under, microseconds.
const P99_LIMIT_US: f64 = 5_000.0;
/// RSS is judged by its peaks, which a leak keeps raising (between them the allocator gives
/// memory back, so any one minute may dip): the second half's peak may be at most this times
/// the first half's, in runs of at least `RSS_JUDGED_FROM` minutes.
const RSS_GROWTH_LIMIT: f64 = 1.25;
const RSS_JUDGED_FROM: usize = 6;

/// What every task of one run shares.
pub struct Ctx {
    nodes: Vec<SocketAddr>,
    secret: String,
    stats: Stats,
    /// Relay send times are nanoseconds since this.
    epoch: Instant,
    /// No call or hostile round starts after this.
    deadline: Instant,
    bodies: Bodies,
    /// `bodies.offer` as an answer.
    answer: String,
    flood_rate: u64,
    next: AtomicU64,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// A number never handed out before in this run (room and client names).
    fn unique(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A client address of its own, 10.x.y.z.
    fn own_address(&self) -> String {
        let k = self.unique();
        format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255)
    }

    /// Connects `sub` to node `node`, from `address` (in the trusted header).
    async fn connect(&self, node: usize, sub: &str, address: &str) -> Result<Client, ConnectError> {
        let header = [(limits::CLIENT_IP_HEADER.to_string(), address.to_string())];
        fleet::connect_from(self.nodes[node], &self.secret, sub, &header).await
    }
}

/// The processes of one soak target: one node, or nodes sharing a redis-server.
struct Processes {
    servers: Vec<Server>,
    redis: Option<Redis>,
}

impl Processes {
    async fn start(cfg: &ServerConfig, nodes: usize) -> Result<Processes, String> {
        let env = limits::env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if nodes == 1 {
            let server = Server::start_with_env(Kind::Ours, cfg, &env).await?;
            return Ok(Processes {
                servers: vec![server],
                redis: None,
            });
        }
        let (servers, redis) = relay::start_cluster(cfg, nodes, &env).await?;
        Ok(Processes {
            servers,
            redis: Some(redis),
        })
    }

    async fn stop(self) {
        match self.redis {
            Some(redis) => relay::stop_cluster(self.servers, redis).await,
            None => {
                for s in self.servers {
                    s.stop().await;
                }
            }
        }
    }

    fn target(&mut self) -> Target<'_> {
        Target {
            servers: &mut self.servers,
            redis: self.redis.as_mut(),
        }
    }
}

/// The `soak` scenario: each target of the plan in turn. Returns whether one failed.
pub async fn run(cfg: &ServerConfig, plan: &Plan) -> bool {
    let mut failed = false;
    for &nodes in &plan.soak_nodes {
        let label = if nodes == 1 {
            "single node".to_string()
        } else {
            format!("{nodes}-node cluster + redis-server")
        };
        println!(
            "\n--- soak, {label}, {} min, {} calls, flood {} relays/s ---",
            plan.soak_minutes, plan.soak_calls, plan.soak_flood_rate
        );
        let mut procs = match Processes::start(cfg, nodes).await {
            Ok(p) => p,
            Err(e) => {
                println!("FAIL [soak, {label}]: could not start: {e}");
                failed = true;
                continue;
            }
        };
        failed |= !soak(&mut procs, cfg, plan, &label).await;
        procs.stop().await;
    }
    failed
}

/// One soak against started processes; true if it passed.
async fn soak(procs: &mut Processes, cfg: &ServerConfig, plan: &Plan, label: &str) -> bool {
    let started = Instant::now();
    let bodies = relay::bodies();
    let ctx = Arc::new(Ctx {
        nodes: procs.servers.iter().map(|s| s.addr).collect(),
        secret: cfg.secret.clone(),
        stats: Stats::default(),
        epoch: started,
        deadline: started + Duration::from_secs(plan.soak_minutes * 60),
        answer: bodies
            .offer
            .replacen(r#""type":"offer""#, r#""type":"answer""#, 1),
        bodies,
        flood_rate: plan.soak_flood_rate,
        next: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    // The victim and the vault holder stay the whole run.
    let talk = Duration::from_secs(plan.soak_minutes * 60);
    let standing = [
        calls::Spec {
            room: VICTIM_ROOM.to_string(),
            password: None,
            first: 2,
            late: 0,
            talk,
            open_door: true,
            node0: 0,
            names: "victim".to_string(),
        },
        calls::Spec {
            room: VAULT_ROOM.to_string(),
            password: Some(VAULT_PASSWORD.to_string()),
            first: 1,
            late: 0,
            talk,
            open_door: true,
            node0: 0,
            names: "vault".to_string(),
        },
    ];
    for spec in standing {
        let ctx = ctx.clone();
        tasks.spawn(async move { calls::run(&ctx, spec, 7).await });
    }
    for slot in 0..plan.soak_calls {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            // Staggered, so the calls do not all start (and end) together.
            tokio::time::sleep(Duration::from_millis(300 * slot as u64)).await;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(slot as u64 + 1);
            while ctx.running() {
                let spec = calls::Spec::random(&ctx, &mut rng);
                calls::run(&ctx, spec, fleet::xorshift(&mut rng)).await;
            }
        });
    }
    // The hostile clients start once the victim and the vault holder are in their rooms.
    let actors: [fn(Arc<Ctx>) -> tokio::task::JoinHandle<()>; 6] = [
        |c| tokio::spawn(async move { hostile::flood(&c).await }),
        |c| tokio::spawn(async move { hostile::oversize(&c).await }),
        |c| tokio::spawn(async move { hostile::garbage(&c).await }),
        |c| tokio::spawn(async move { hostile::join_spam(&c).await }),
        |c| tokio::spawn(async move { hostile::guess(&c).await }),
        |c| tokio::spawn(async move { hostile::conn_spam(&c).await }),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hostile: Vec<_> = actors.iter().map(|spawn| spawn(ctx.clone())).collect();

    let mut total = Counts::default();
    let mut rss: Vec<Vec<Option<u64>>> = Vec::new();
    let mut died = None;
    let mut cpu = machine::snap();
    for minute in 1..=plan.soak_minutes {
        tokio::time::sleep_until((started + Duration::from_secs(minute * 60)).into()).await;
        let counts = ctx.stats.take_minute(&mut total);
        rss.push(print_minute(&format!("minute {minute}"), counts, procs).await);
        // A shared host's stolen time lengthens every wake-up: the tail is read beside it.
        let now = machine::snap();
        let cores = [cfg.server_core, plan.loadgen_core]
            .map(|core| {
                let (busy, stolen) = machine::core_busy(&cpu, &now, core);
                format!("core {core} {busy:.0} % busy, {stolen:.0} % stolen")
            })
            .join("; ");
        println!("    cpu: {cores}");
        cpu = now;
        if let Some(why) = procs.target().dead() {
            died = Some(why);
            break;
        }
    }
    // Bounded: every step of a call and every hostile round has its own time limit.
    let wind_down = async {
        for h in hostile {
            let _ = h.await;
        }
        while tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(120), wind_down)
        .await
        .is_err()
    {
        ctx.stats
            .violation("the load did not wind down within 120 s of the deadline".to_string());
    }
    let counts = ctx.stats.take_minute(&mut total);
    print_minute("wind-down", counts, procs).await;
    summary(label, &ctx, total, &rss, procs, died)
}

/// Prints one minute's counts and samples; returns the RSS of each process (KiB).
async fn print_minute(what: &str, mut c: Counts, procs: &Processes) -> Vec<Option<u64>> {
    let (p50, p99, max) = c.latency();
    println!(
        "  {what}: honest relays {} sent, {} delivered, latency p50 {} / p99 {} / max {} us; \
         echoes {} sent, {} delivered; calls {} started, {} ended; violations {}",
        c.relays_sent,
        c.relays_delivered,
        fmt_us(p50),
        fmt_us(p99),
        fmt_us(max),
        c.echoes_sent,
        c.echoes_delivered,
        c.calls_started,
        c.calls_ended,
        c.violations
    );
    let mut sizes = Vec::new();
    let mut rss_line = Vec::new();
    let mut conns = Vec::new();
    for (i, s) in procs.servers.iter().enumerate() {
        let kib = s.rss_kib();
        sizes.push(kib);
        rss_line.push(format!("node {} {}", i + 1, fmt_mib(kib)));
        let open = s
            .health()
            .await
            .and_then(|h| h["connections"].as_u64())
            .map_or("?".to_string(), |n| n.to_string());
        conns.push(format!("node {} {open}", i + 1));
    }
    if let Some(r) = &procs.redis {
        let kib = server::proc_rss_kib(r.pid);
        sizes.push(kib);
        rss_line.push(format!("redis-server {}", fmt_mib(kib)));
    }
    println!(
        "    RSS (MiB): {}; connections: {}",
        rss_line.join(", "),
        conns.join(", ")
    );
    let hostile: Vec<String> = c.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("    hostile: {}", hostile.join("; "));
    sizes
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.0}"))
}

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// The totals and the PASS/FAIL line; true on PASS.
fn summary(
    label: &str,
    ctx: &Ctx,
    mut t: Counts,
    rss: &[Vec<Option<u64>>],
    procs: &mut Processes,
    died: Option<String>,
) -> bool {
    let (p50, p99, max) = t.latency();
    println!("\n=== soak, {label}: summary ===");
    println!(
        "honest relays: {} sent, {} delivered; echoes: {} sent, {} delivered; calls: {} started, {} ended",
        t.relays_sent,
        t.relays_delivered,
        t.echoes_sent,
        t.echoes_delivered,
        t.calls_started,
        t.calls_ended
    );
    println!(
        "honest relay latency (us): p50 {}, p99 {}, max {}",
        fmt_us(p50),
        fmt_us(p99),
        fmt_us(max)
    );
    println!(
        "honest messages lost {}, duplicated {}, out of order {}",
        t.lost, t.duplicated, t.out_of_order
    );
    let names: Vec<String> = procs.target().parts().into_iter().map(|p| p.0).collect();
    let mut rss_ok = true;
    let judged = rss.len() >= RSS_JUDGED_FROM;
    for (p, name) in names.iter().enumerate() {
        let series: Vec<u64> = rss
            .iter()
            .filter_map(|m| m.get(p).copied().flatten())
            .collect();
        let (first, last) = (series.first().copied(), series.last().copied());
        let peak = series.iter().max().copied();
        let mut line = format!(
            "RSS {name} (MiB): first {}, last {}, max {}",
            fmt_mib(first),
            fmt_mib(last),
            fmt_mib(peak)
        );
        let (early, late) = series.split_at(series.len() / 2);
        if let (true, Some(early), Some(late)) = (judged, early.iter().max(), late.iter().max()) {
            let growth = *late as f64 / (*early).max(1) as f64;
            line.push_str(&format!(
                ", peak of the second half / the first {growth:.2}"
            ));
            rss_ok &= growth <= RSS_GROWTH_LIMIT;
        }
        println!("{line}");
    }
    let hostile: Vec<String> = t.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("hostile outcomes: {}", hostile.join("; "));
    // What reached the victim over all floods: at most a burst plus the rate for as long as
    // each flood may last (FLOOD_DISCONNECT_MS, a second's grace).
    let floods = t.outcome_count(FLOODS);
    let allowed = floods
        * (limits::RELAY_BURST + limits::RELAY_RATE * (limits::FLOOD_DISCONNECT_MS / 1000 + 1));
    let reached = t.outcome_count(FLOOD_REACHED);
    if reached > allowed {
        ctx.stats.violation(format!(
            "{reached} flood relays reached the victim in {floods} floods, more than the rate allows ({allowed})"
        ));
        t.violations += 1;
    }
    for (i, s) in procs.servers.iter().enumerate() {
        let (floods, others): (Vec<String>, Vec<String>) = s
            .warning_lines()
            .into_iter()
            .partition(|l| l.contains("kept flooding"));
        println!(
            "node {} log: {} flood disconnects, {} other WARN/ERROR lines{}",
            i + 1,
            floods.len(),
            others.len(),
            others
                .first()
                .map_or(String::new(), |l| format!(", first: {l}"))
        );
    }
    let kept = ctx.stats.kept_violations();
    println!("invariant violations: {}", t.violations);
    for v in &kept {
        println!("  - {v}");
    }
    let mut fails = Vec::new();
    if let Some(why) = died {
        fails.push(why);
    }
    match p99 {
        Some(p) if p < P99_LIMIT_US => {}
        _ => fails.push(format!(
            "honest p99 {} us, not under {P99_LIMIT_US} us",
            fmt_us(p99)
        )),
    }
    if t.lost + t.duplicated + t.out_of_order > 0 || t.relays_delivered == 0 {
        fails.push(format!(
            "honest messages lost {}, duplicated {}, out of order {}, relays delivered {}",
            t.lost, t.duplicated, t.out_of_order, t.relays_delivered
        ));
    }
    if t.violations > 0 {
        fails.push(format!("{} invariant violations", t.violations));
    }
    if !rss_ok {
        fails.push(format!(
            "RSS peaked more than {RSS_GROWTH_LIMIT}x higher in the second half than in the first"
        ));
    }
    let rss_note = if judged {
        "RSS bounded"
    } else {
        "RSS not judged (run under 6 minutes)"
    };
    if fails.is_empty() {
        println!(
            "PASS [soak, {label}]: honest p99 {} us < 5 ms, nothing honest lost, no invariant violated, {rss_note}",
            fmt_us(p99)
        );
        true
    } else {
        println!("FAIL [soak, {label}]: {}", fails.join("; "));
        false
    }
}
