//! Load generator: runs the same scenarios against rtcio-signal ("ours") and the Node
//! rtc.io reference server (benches/node-reference/server.mjs, "node") and prints them side
//! by side. It starts each server itself, pinned to one core (`taskset -c 0`), pins itself to
//! another (core 1), and reads the server's RSS and CPU time from /proc.
//!
//! All traffic goes to 127.0.0.1 from 127.x.y.z source addresses; every loop is bounded in
//! count and time.
//!
//!     loadgen --server ours|node|both --scenario idle|relay|relay-cluster|storm|churn|soak|all [--quick]
//!
//! `--storm-passwords on` locks every storm room with a password; `both` runs each storm
//! without and then with passwords, each on a fresh server, and prints the two side by side.
//!
//! `relay-cluster` (ours only; part of `all` when ours runs) runs the relay workload on one of
//! our servers, then on 2, 3 and 4 of them sharing a redis-server (a fresh one per size), with
//! every pair split across two nodes. It prints a table per size next to the single-node run,
//! with Redis's commands per message, and a summary of the CPU per message by node count.
//!
//! `soak` (ours only; not part of `all`) runs honest calls beside hostile clients for
//! `--soak-minutes` on one node and on a two-node cluster, minute by minute (see `soak`).

mod census;
mod churn;
mod fleet;
mod idle;
mod machine;
mod relay;
mod report;
mod server;
mod soak;
mod storm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use report::{Col, Report};
use server::{Kind, ServerConfig};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Which {
    Ours,
    Node,
    Both,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Idle,
    Relay,
    /// The relay workload on one, then 2, 3 and 4 of our servers sharing a redis-server (ours
    /// only).
    RelayCluster,
    Storm,
    Churn,
    /// Honest calls beside hostile clients for `--soak-minutes`, on one node and a two-node
    /// cluster (ours only; not part of `all`: it is long).
    Soak,
    All,
}

/// What the soak runs against.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SoakTarget {
    Single,
    Cluster,
    /// One node, then a two-node cluster.
    Both,
}

/// How a fixed relay rate is offered.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Pacing {
    /// Every millisecond, the messages that fell due in it, back to back (tokio's timer
    /// granularity): at 5,000 msg/s a burst of 5 each millisecond.
    Tick,
    /// Each message at its own instant, evenly spaced (a thread that sleeps between sends), as
    /// many independent clients look to a server.
    Even,
}

/// Whether the storm's rooms have passwords.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Passwords {
    Off,
    On,
    /// Without, then with passwords, side by side.
    Both,
}

#[derive(Parser, Debug)]
#[command(about = "Side-by-side load tests: rtcio-signal vs the Node rtc.io reference server")]
struct Args {
    /// Which server(s) to run against.
    #[arg(long, value_enum, default_value = "both")]
    server: Which,
    /// Which scenario(s) to run (repeatable).
    #[arg(long, value_enum, default_values = ["all"])]
    scenario: Vec<Scenario>,
    /// Short smoke run of each scenario (seconds, small N), for CI.
    #[arg(long)]
    quick: bool,
    /// Our server binary.
    #[arg(long)]
    ours_bin: Option<PathBuf>,
    /// The Node reference server script.
    #[arg(long)]
    node_script: Option<PathBuf>,
    /// HS256 secret handed to both servers as JWT_SECRET.
    #[arg(long, default_value = "loadgen-bench-secret-0123456789abcdef")]
    secret: String,
    /// Core the servers are pinned to (`taskset -c`).
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core the load generator pins itself to.
    #[arg(long, default_value_t = 1)]
    loadgen_core: usize,
    /// Idle: connection counts (each on a fresh server).
    #[arg(long, value_delimiter = ',')]
    idle_sizes: Option<Vec<usize>>,
    /// Idle: keep the clients connected this many seconds after measuring (for profiling the
    /// server with an outside tool, e.g. `vgdb --pid PID detailed_snapshot`).
    #[arg(long, default_value_t = 0)]
    idle_hold: u64,
    /// Relay: fixed offered rates in msg/s (saturation is always run too).
    #[arg(long, value_delimiter = ',')]
    relay_rates: Option<Vec<u64>>,
    /// Relay: how the fixed rates are offered.
    #[arg(long, value_enum, default_value_t = Pacing::Tick)]
    relay_pacing: Pacing,
    /// Relay: measured window per rate, seconds.
    #[arg(long)]
    relay_secs: Option<u64>,
    /// Relay: number of room pairs.
    #[arg(long)]
    relay_pairs: Option<usize>,
    /// Storm: room counts (4 peers each).
    #[arg(long, value_delimiter = ',')]
    storm_rooms: Option<Vec<usize>>,
    /// Storm: repetitions per room count.
    #[arg(long)]
    storm_reps: Option<usize>,
    /// Storm: lock every room with a password (`on`: each joiner sends `password:
    /// "pw-<room index>"`, so whichever joins first seals the room and the other three are
    /// checked against the seal), or run each storm without and then with (`both`). The Node
    /// reference ignores passwords.
    #[arg(long, value_enum, default_value = "off")]
    storm_passwords: Passwords,
    /// Churn: join/leave cycles.
    #[arg(long)]
    churn_cycles: Option<u64>,
    /// Soak: minutes per target.
    #[arg(long, default_value_t = 30)]
    soak_minutes: u64,
    /// Soak: one node, a two-node cluster on a redis-server, or both in turn.
    #[arg(long, value_enum, default_value = "both")]
    soak_target: SoakTarget,
    /// Soak: honest calls going on at once (2 to 6 peers each, a new one when one ends).
    #[arg(long, default_value_t = 30)]
    soak_calls: usize,
    /// Soak: relays per second the flooder sends (the server allows 100 a second).
    #[arg(long, default_value_t = 2_000)]
    soak_flood_rate: u64,
    /// Before each run, wait up to this many seconds for every core to be under 15 % busy
    /// (other processes skew the numbers); 0 skips the wait.
    #[arg(long)]
    quiet_wait: Option<u64>,
}

pub struct Plan {
    pub quick: bool,
    pub idle_sizes: Vec<usize>,
    pub relay_rates: Vec<u64>,
    pub relay_pacing: Pacing,
    pub relay_secs: u64,
    pub relay_pairs: usize,
    pub storm_rooms: Vec<usize>,
    pub storm_reps: usize,
    /// Storm: without (false) and/or with (true) room passwords, in this order.
    pub storm_passwords: Vec<bool>,
    pub churn_cycles: u64,
    pub idle_hold: u64,
    pub churn_pool: usize,
    pub churn_rooms: usize,
    pub loadgen_core: usize,
    pub soak_minutes: u64,
    /// Soak: the node counts to run against, in this order.
    pub soak_nodes: Vec<usize>,
    pub soak_calls: usize,
    pub soak_flood_rate: u64,
    /// Bound on the wait for idle cores before a run (zero: no wait).
    pub quiet_wait: Duration,
}

/// Waits (at most `quiet_max`; zero: not at all) for every core to be quiet before `what`
/// starts; a note for the report if the machine stayed busy.
async fn busy_note(what: &str, quiet_max: Duration) -> Option<String> {
    if quiet_max.is_zero() || machine::wait_quiet(quiet_max, 15.0).await {
        None
    } else {
        Some(format!(
            "{what}: machine was busy with other processes when it started"
        ))
    }
}

/// Runs one scenario after waiting for a quiet machine (see `busy_note`), noting in `col` of
/// `report` a busy start and a failure. Returns whether it failed.
async fn run_noted(
    report: &mut Report,
    col: impl Into<Col>,
    what: &str,
    quiet_max: Duration,
    scenario: impl AsyncFnOnce(&mut Report) -> Result<(), String>,
) -> bool {
    let col = col.into();
    if let Some(note) = busy_note(what, quiet_max).await {
        report.note(col, note);
    }
    match scenario(report).await {
        Ok(()) => false,
        Err(e) => {
            report.note(col, format!("{what} FAILED: {e}"));
            true
        }
    }
}

fn pin_self(core: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("warning: could not pin the load generator to core {core}");
        }
    }
}

fn raise_nofile() -> u64 {
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur as u64
    }
}

fn repo_root() -> PathBuf {
    let from_manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    if from_manifest
        .join("benches/node-reference/server.mjs")
        .exists()
    {
        return from_manifest.canonicalize().unwrap_or(from_manifest);
    }
    std::env::current_dir().unwrap()
}

fn main() {
    let args = Args::parse();
    pin_self(args.loadgen_core);
    let nofile = raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(args, nofile));
    // Client pump tasks may still be alive; don't wait for them.
    rt.shutdown_background();
    std::process::exit(code);
}

async fn run(args: Args, nofile: u64) -> i32 {
    let root = repo_root();
    let cfg = ServerConfig {
        ours_bin: args
            .ours_bin
            .clone()
            .unwrap_or_else(|| root.join("target/release/rtcio-signal")),
        node_script: args
            .node_script
            .clone()
            .unwrap_or_else(|| root.join("benches/node-reference/server.mjs")),
        repo_root: root.clone(),
        secret: args.secret.clone(),
        server_core: args.server_core,
    };
    let q = args.quick;
    let quiet_max = Duration::from_secs(args.quiet_wait.unwrap_or(if q { 5 } else { 300 }));
    let plan = Plan {
        quick: q,
        idle_sizes: args.idle_sizes.clone().unwrap_or(if q {
            vec![200, 400]
        } else {
            vec![10_000, 19_000]
        }),
        relay_rates: args.relay_rates.clone().unwrap_or(if q {
            vec![2_000, 5_000]
        } else {
            vec![2_000, 5_000, 20_000]
        }),
        relay_pacing: args.relay_pacing,
        relay_secs: args.relay_secs.unwrap_or(if q { 1 } else { 10 }),
        relay_pairs: args.relay_pairs.unwrap_or(if q { 20 } else { 100 }),
        storm_rooms: args.storm_rooms.clone().unwrap_or(if q {
            vec![25]
        } else {
            vec![500, 2_000]
        }),
        storm_reps: args.storm_reps.unwrap_or(if q { 1 } else { 3 }),
        storm_passwords: match args.storm_passwords {
            Passwords::Off => vec![false],
            Passwords::On => vec![true],
            Passwords::Both => vec![false, true],
        },
        churn_cycles: args.churn_cycles.unwrap_or(if q { 2_000 } else { 100_000 }),
        idle_hold: args.idle_hold,
        churn_pool: if q { 100 } else { 1_000 },
        churn_rooms: if q { 25 } else { 250 },
        loadgen_core: args.loadgen_core,
        soak_minutes: args.soak_minutes,
        soak_nodes: match args.soak_target {
            SoakTarget::Single => vec![1],
            SoakTarget::Cluster => vec![2],
            SoakTarget::Both => vec![1, 2],
        },
        soak_calls: args.soak_calls,
        soak_flood_rate: args.soak_flood_rate,
        quiet_wait: quiet_max,
    };
    let kinds: Vec<Kind> = match args.server {
        Which::Ours => vec![Kind::Ours],
        Which::Node => vec![Kind::Node],
        Which::Both => vec![Kind::Ours, Kind::Node],
    };
    let all = args.scenario.contains(&Scenario::All);
    let wants = |s: Scenario| all || args.scenario.contains(&s);

    println!(
        "loadgen: servers {:?}, quick={}, open-file limit {}, server core {}, loadgen core {}",
        kinds.iter().map(|k| k.label()).collect::<Vec<_>>(),
        q,
        nofile,
        args.server_core,
        args.loadgen_core
    );
    println!("  ours: {}", cfg.ours_bin.display());
    println!("  node: node {}", cfg.node_script.display());
    if kinds.contains(&Kind::Ours) && !cfg.ours_bin.exists() {
        eprintln!(
            "our server binary {} is missing: cargo build --release -p rtcio-signal",
            cfg.ours_bin.display()
        );
        return 2;
    }

    let started = Instant::now();
    let mut report = Report::default();
    let mut cluster_report = relay::ClusterReport::new(&plan);
    let mut storm_report = report::Report::new(
        "storm: rooms without vs with passwords",
        "no passwords",
        "passwords",
        true,
    );
    let mut failed = false;
    if wants(Scenario::Idle) {
        for &n in &plan.idle_sizes {
            for &k in &kinds {
                failed |= run_noted(
                    &mut report,
                    k,
                    &format!("idle N={n}"),
                    quiet_max,
                    async |r| idle::run(k, &cfg, &plan, n, r).await,
                )
                .await;
            }
        }
    }
    if wants(Scenario::Relay) {
        for &k in &kinds {
            failed |= run_noted(&mut report, k, "relay", quiet_max, async |r| {
                relay::run(k, &cfg, &plan, r).await
            })
            .await;
        }
    }
    // Node has no cluster in this comparison: relay-cluster runs only with ours (and `all`
    // includes it only then).
    if args.scenario.contains(&Scenario::RelayCluster) && !kinds.contains(&Kind::Ours) {
        eprintln!("--scenario relay-cluster needs --server ours (or both); skipped");
        failed = true;
    }
    if wants(Scenario::RelayCluster) && kinds.contains(&Kind::Ours) {
        if let Some(note) = busy_note("relay-cluster", quiet_max).await {
            cluster_report.baseline.note(Col::Left, note);
        }
        failed |= relay::run_cluster(&cfg, &plan, &mut cluster_report).await;
    }
    if wants(Scenario::Storm) {
        // Without and with passwords side by side get their own report, a section per server.
        let side_by_side = plan.storm_passwords.len() > 1;
        for &rooms in &plan.storm_rooms {
            for &k in &kinds {
                for &passwords in &plan.storm_passwords {
                    let with = if passwords { " with passwords" } else { "" };
                    let (r, col, section) = if side_by_side {
                        let col = if passwords { Col::Right } else { Col::Left };
                        let section = format!("{}, {}", storm::section(rooms), k.label());
                        (&mut storm_report, col, section)
                    } else {
                        let section = format!("{}{with}", storm::section(rooms));
                        (&mut report, k.into(), section)
                    };
                    let run = storm::Storm {
                        rooms,
                        passwords,
                        col,
                        section,
                    };
                    failed |= run_noted(
                        r,
                        run.col,
                        &format!("storm R={rooms}{with}"),
                        quiet_max,
                        async |r| storm::run(k, &cfg, &plan, &run, r).await,
                    )
                    .await;
                }
            }
        }
    }
    if wants(Scenario::Churn) {
        for &k in &kinds {
            failed |= run_noted(&mut report, k, "churn", quiet_max, async |r| {
                churn::run(k, &cfg, &plan, r).await
            })
            .await;
        }
    }
    // Not part of `all`: it runs for `--soak-minutes` per target.
    if args.scenario.contains(&Scenario::Soak) {
        if kinds.contains(&Kind::Ours) {
            if let Some(note) = busy_note("soak", quiet_max).await {
                println!("  NOTE {note}");
            }
            failed |= soak::run(&cfg, &plan).await;
        } else {
            eprintln!("--scenario soak needs --server ours (or both); skipped");
            failed = true;
        }
    }
    if !report.is_empty() {
        report.print();
    }
    if !cluster_report.is_empty() {
        cluster_report.print();
    }
    if !storm_report.is_empty() {
        storm_report.print();
    }
    println!("\ntotal time {:.0} s", started.elapsed().as_secs_f64());
    let failures = report.failures + cluster_report.failures() + storm_report.failures;
    if failures > 0 {
        println!("{failures} check(s) failed");
    }
    if failed || failures > 0 { 1 } else { 0 }
}
