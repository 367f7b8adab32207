//! Load generator: runs the same scenarios against rtcio-signal ("ours") and the Node
//! rtc.io reference server (benches/node-reference/server.mjs, "node") and prints them side
//! by side. It starts each server itself, pinned to one core (`taskset -c 0`), pins itself to
//! another (core 1), and reads the server's RSS and CPU time from /proc.
//!
//! All traffic goes to 127.0.0.1 from 127.x.y.z source addresses; every loop is bounded in
//! count and time.
//!
//!     loadgen --server ours|node|both --scenario idle|relay|relay-cluster|storm|churn|all [--quick]
//!
//! `relay-cluster` (ours only; part of `all` when ours runs) starts a redis-server and two of
//! our servers sharing it, splits every relay pair across the two nodes, and prints its own
//! table next to a single-node run of the same workload.

mod census;
mod churn;
mod fleet;
mod idle;
mod machine;
mod relay;
mod report;
mod server;
mod storm;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use report::Report;
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
    /// The relay workload across two of our servers sharing a redis-server (ours only).
    RelayCluster,
    Storm,
    Churn,
    All,
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
    /// Churn: join/leave cycles.
    #[arg(long)]
    churn_cycles: Option<u64>,
    /// Before each run, wait up to this many seconds for every core to be under 15 % busy
    /// (other processes skew the numbers); 0 skips the wait.
    #[arg(long)]
    quiet_wait: Option<u64>,
}

pub struct Plan {
    pub quick: bool,
    pub idle_sizes: Vec<usize>,
    pub relay_rates: Vec<u64>,
    pub relay_secs: u64,
    pub relay_pairs: usize,
    pub storm_rooms: Vec<usize>,
    pub storm_reps: usize,
    pub churn_cycles: u64,
    pub idle_hold: u64,
    pub churn_pool: usize,
    pub churn_rooms: usize,
    pub secret: String,
    pub server_core: usize,
    pub loadgen_core: usize,
    /// Bound on the wait for idle cores before a run (zero: no wait).
    pub quiet_wait: std::time::Duration,
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
    let quiet_max =
        std::time::Duration::from_secs(args.quiet_wait.unwrap_or(if q { 5 } else { 300 }));
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
        relay_secs: args.relay_secs.unwrap_or(if q { 1 } else { 10 }),
        relay_pairs: args.relay_pairs.unwrap_or(if q { 20 } else { 100 }),
        storm_rooms: args.storm_rooms.clone().unwrap_or(if q {
            vec![25]
        } else {
            vec![500, 2_000]
        }),
        storm_reps: args.storm_reps.unwrap_or(if q { 1 } else { 3 }),
        churn_cycles: args.churn_cycles.unwrap_or(if q { 2_000 } else { 100_000 }),
        idle_hold: args.idle_hold,
        churn_pool: if q { 100 } else { 1_000 },
        churn_rooms: if q { 25 } else { 250 },
        secret: args.secret.clone(),
        server_core: args.server_core,
        loadgen_core: args.loadgen_core,
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
    let mut cluster_report = report::Report::new(
        "relay-cluster: ours, one node vs two nodes + Redis",
        "single node",
        "cluster",
        true,
    );
    let mut failed = false;
    let quiet = |what: String| async move {
        if quiet_max.is_zero() || machine::wait_quiet(quiet_max, 15.0).await {
            None
        } else {
            Some(format!(
                "{what}: machine was busy with other processes when it started"
            ))
        }
    };
    if wants(Scenario::Idle) {
        for &n in &plan.idle_sizes {
            for &k in &kinds {
                if let Some(n) = quiet(format!("idle N={n}")).await {
                    report.note(k, n);
                }
                if let Err(e) = idle::run(k, &cfg, &plan, n, &mut report).await {
                    report.note(k, format!("idle N={n} FAILED: {e}"));
                    failed = true;
                }
            }
        }
    }
    if wants(Scenario::Relay) {
        for &k in &kinds {
            if let Some(n) = quiet("relay".to_string()).await {
                report.note(k, n);
            }
            if let Err(e) = relay::run(k, &cfg, &plan, &mut report).await {
                report.note(k, format!("relay FAILED: {e}"));
                failed = true;
            }
        }
    }
    // Node has no cluster in this comparison: relay-cluster runs only with ours (and `all`
    // includes it only then).
    if args.scenario.contains(&Scenario::RelayCluster) && !kinds.contains(&Kind::Ours) {
        eprintln!("--scenario relay-cluster needs --server ours (or both); skipped");
        failed = true;
    }
    if wants(Scenario::RelayCluster) && kinds.contains(&Kind::Ours) {
        if let Some(n) = quiet("relay-cluster".to_string()).await {
            cluster_report.note(report::Col::Left, n);
        }
        if let Err(e) = relay::run_cluster(&cfg, &plan, &mut cluster_report).await {
            cluster_report.note(report::Col::Right, format!("relay-cluster FAILED: {e}"));
            failed = true;
        }
    }
    if wants(Scenario::Storm) {
        for &rooms in &plan.storm_rooms {
            for &k in &kinds {
                if let Some(n) = quiet(format!("storm R={rooms}")).await {
                    report.note(k, n);
                }
                if let Err(e) = storm::run(k, &cfg, &plan, rooms, &mut report).await {
                    report.note(k, format!("storm R={rooms} FAILED: {e}"));
                    failed = true;
                }
            }
        }
    }
    if wants(Scenario::Churn) {
        for &k in &kinds {
            if let Some(n) = quiet("churn".to_string()).await {
                report.note(k, n);
            }
            if let Err(e) = churn::run(k, &cfg, &plan, &mut report).await {
                report.note(k, format!("churn FAILED: {e}"));
                failed = true;
            }
        }
    }
    if !report.is_empty() {
        report.print();
    }
    if !cluster_report.is_empty() {
        cluster_report.print();
    }
    println!("\ntotal time {:.0} s", started.elapsed().as_secs_f64());
    let failures = report.failures + cluster_report.failures;
    if failures > 0 {
        println!("{failures} check(s) failed");
    }
    if failed || failures > 0 { 1 } else { 0 }
}
