//! Relay: pairs of clients, each pair in its own room, exchanging `#rtcio:message` at fixed
//! offered rates (open loop) and at saturation (closed loop: every delivery is answered by
//! a new message from the receiver, with a fixed number in flight per client).
//!
//! One message in ten carries a ~3 KB SDP offer `{description:{type,sdp}}`, the rest a
//! ~250-byte ICE candidate `{candidate:{candidate,sdpMid,sdpMLineIndex}}`. The payload's
//! `data` also holds `t` (send time, ns since the load generator's epoch), `n` (sequence)
//! and `p` (phase), so latency is measured on receipt (at frame decode, see
//! sioclient::Client::next_timed_event).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sioclient::{Client, Sender};
use tokio::sync::watch;

use crate::Plan;
use crate::fleet::{self, Then};
use crate::machine;
use crate::report::{Col, Report, quantile};
use crate::server::{self, Kind, Redis, Server, ServerConfig};

const EVENT: &str = "#rtcio:message";

/// Saturation (closed loop): messages kept in flight per client.
const IN_FLIGHT: usize = 4;

struct Phase {
    echo: bool,
    running: bool,
    window_start: Instant,
    window_end: Instant,
    sent: u64,
    sent_in_window: u64,
    recv: u64,
    recv_in_window: u64,
    lat_us: Vec<u32>,
    wrong_source: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Phase {
    fn record_send(&mut self, now: Instant) {
        self.sent += 1;
        if now >= self.window_start && now < self.window_end {
            self.sent_in_window += 1;
        }
    }
}

struct Shared {
    epoch: Instant,
    phases: Mutex<Vec<Phase>>,
    seq: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn ns(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_nanos() as u64
    }
}

/// Pre-built payload bodies (the part of `data` after t/n/p).
struct Bodies {
    candidate: String,
    offer: String,
}

fn bodies() -> Bodies {
    // ~250-byte data object with a trickled ICE candidate.
    let mut cand = String::from(
        "candidate:1467250027 1 udp 2122260223 192.168.1.42 54321 typ host generation 0 ufrag Xs9v network-id 1 network-cost 10",
    );
    let candidate_body = |c: &str| {
        format!(
            r#""candidate":{{"candidate":"{c}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Xs9v"}}"#
        )
    };
    while candidate_body(&cand).len() + 40 < 250 {
        cand.push_str(" x");
    }
    // ~3 KB SDP offer, JSON-escaped (\r\n line ends as in real SDP).
    let mut sdp = String::from(
        "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0 1\\r\\na=extmap-allow-mixed\\r\\na=msid-semantic: WMS stream\\r\\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\\r\\nc=IN IP4 0.0.0.0\\r\\na=rtcp:9 IN IP4 0.0.0.0\\r\\na=ice-ufrag:Xs9v\\r\\na=ice-pwd:by4GZGG1lw+040DWA6hXM5Bz\\r\\na=ice-options:trickle\\r\\n\
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\\r\\na=setup:actpass\\r\\na=mid:0\\r\\na=sendrecv\\r\\na=rtcp-mux\\r\\na=rtpmap:111 opus/48000/2\\r\\na=fmtp:111 minptime=10;useinbandfec=1\\r\\n",
    );
    let mut k = 96;
    while sdp.len() < 3000 {
        sdp.push_str(&format!(
            "a=rtpmap:{k} VP8/90000\\r\\na=rtcp-fb:{k} goog-remb\\r\\na=rtcp-fb:{k} transport-cc\\r\\na=rtcp-fb:{k} ccm fir\\r\\na=rtcp-fb:{k} nack\\r\\n"
        ));
        k += 1;
    }
    Bodies {
        candidate: candidate_body(&cand),
        offer: format!(r#""description":{{"type":"offer","sdp":"{sdp}"}}"#),
    }
}

fn frame(b: &Bodies, src: &str, dst: &str, t: u64, n: u64, p: usize) -> String {
    let body = if n.is_multiple_of(10) {
        &b.offer
    } else {
        &b.candidate
    };
    let mut s = String::with_capacity(body.len() + 128);
    s.push_str("42[\"#rtcio:message\",{\"source\":\"");
    s.push_str(src);
    s.push_str("\",\"target\":\"");
    s.push_str(dst);
    s.push_str("\",\"data\":{\"t\":");
    s.push_str(&t.to_string());
    s.push_str(",\"n\":");
    s.push_str(&n.to_string());
    s.push_str(",\"p\":");
    s.push_str(&p.to_string());
    s.push(',');
    s.push_str(body);
    s.push_str("}}]");
    s
}

struct Peer {
    sid: String,
    sender: Sender,
}

/// Sends one message of phase `p` from client `i` to its partner (`i ^ 1`), stamped `now`
/// (which the caller has already counted with `Phase::record_send`).
fn send_to_partner(
    peers: &[Peer],
    shared: &Shared,
    bodies: &Bodies,
    i: usize,
    p: usize,
    now: Instant,
) {
    let seq = shared
        .seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let f = frame(
        bodies,
        &peers[i].sid,
        &peers[i ^ 1].sid,
        shared.ns(now),
        seq,
        p,
    );
    peers[i].sender.send_raw(f);
}

async fn reader(
    mut client: Client,
    me: usize,
    peers: Arc<Vec<Peer>>,
    shared: Arc<Shared>,
    bodies: Arc<Bodies>,
    mut stop: watch::Receiver<bool>,
) {
    let partner = me ^ 1;
    loop {
        let (ev, at) = tokio::select! {
            ev = client.next_timed_event() => match ev { Some(x) => x, None => break },
            _ = stop.changed() => break,
        };
        if ev.name != EVENT {
            if ev.name == "error" {
                let mut ph = shared.phases.lock().unwrap();
                if let Some(last) = ph.last_mut() {
                    last.errors += 1;
                    last.first_error.get_or_insert_with(|| ev.data.to_string());
                }
            }
            continue;
        }
        let d = &ev.data["data"];
        let (Some(p), Some(t)) = (d["p"].as_u64(), d["t"].as_u64()) else {
            continue;
        };
        let wrong = ev.data["source"].as_str() != Some(peers[partner].sid.as_str());
        let sent_at = shared.epoch + Duration::from_nanos(t);
        let mut phases = shared.phases.lock().unwrap();
        let Some(ph) = phases.get_mut(p as usize) else {
            continue;
        };
        ph.recv += 1;
        if wrong {
            ph.wrong_source += 1;
        }
        if at >= ph.window_start && at < ph.window_end {
            ph.recv_in_window += 1;
        }
        if sent_at >= ph.window_start && sent_at < ph.window_end {
            let us = at.saturating_duration_since(sent_at).as_micros();
            ph.lat_us.push(us.min(u32::MAX as u128) as u32);
        }
        if ph.echo && ph.running {
            let now = Instant::now();
            ph.record_send(now);
            drop(phases);
            send_to_partner(&peers, &shared, &bodies, me, p as usize, now);
        }
    }
}

/// `rate` None = saturation (closed loop).
async fn phase(
    pids: &[u32],
    peers: &Arc<Vec<Peer>>,
    shared: &Arc<Shared>,
    bodies: &Arc<Bodies>,
    rate: Option<u64>,
    cfg: &ServerConfig,
    plan: &Plan,
) -> PhaseResult {
    let warmup = Duration::from_millis(if plan.quick { 300 } else { 1000 });
    let window = Duration::from_secs(plan.relay_secs);
    let drain = Duration::from_secs(if plan.quick { 1 } else { 2 });
    let start = Instant::now();
    let ws = start + warmup;
    let we = ws + window;
    let p = {
        let mut phases = shared.phases.lock().unwrap();
        phases.push(Phase {
            echo: rate.is_none(),
            running: true,
            window_start: ws,
            window_end: we,
            sent: 0,
            sent_in_window: 0,
            recv: 0,
            recv_in_window: 0,
            lat_us: Vec::with_capacity(200_000),
            wrong_source: 0,
            errors: 0,
            first_error: None,
        });
        phases.len() - 1
    };
    let n = peers.len();
    let sender = {
        let peers = peers.clone();
        let shared = shared.clone();
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let send_one = |i: usize| {
                let now = Instant::now();
                shared.phases.lock().unwrap()[p].record_send(now);
                send_to_partner(&peers, &shared, &bodies, i, p, now);
            };
            match rate {
                None => {
                    // Closed loop: seed `IN_FLIGHT` messages per client; readers answer.
                    for _ in 0..IN_FLIGHT {
                        for i in 0..n {
                            send_one(i);
                        }
                    }
                }
                Some(rate) => {
                    let mut sent = 0u64;
                    let mut rr = 0usize;
                    let mut tick = start;
                    loop {
                        let now = Instant::now();
                        if now >= we {
                            break;
                        }
                        let due = (now.duration_since(start).as_secs_f64() * rate as f64) as u64;
                        while sent < due {
                            send_one(rr % n);
                            rr += 1;
                            sent += 1;
                        }
                        tick += Duration::from_millis(1);
                        if tick < now {
                            tick = now;
                        }
                        tokio::time::sleep_until(tick.into()).await;
                    }
                }
            }
        })
    };
    tokio::time::sleep_until(ws.into()).await;
    let (s0, l0, t0, m0) = (
        cpu_of(pids),
        server::self_cpu_us(),
        Instant::now(),
        machine::snap(),
    );
    tokio::time::sleep_until(we.into()).await;
    let (s1, l1, t1, m1) = (
        cpu_of(pids),
        server::self_cpu_us(),
        Instant::now(),
        machine::snap(),
    );
    let _ = sender.await;
    shared.phases.lock().unwrap()[p].running = false;
    tokio::time::sleep(drain).await;
    // A rate the system did not hold leaves a backlog: let it arrive (bounded) so it does not
    // spill into the next phase.
    let backlog_until = Instant::now() + Duration::from_secs(30);
    let counts = || {
        let ph = &shared.phases.lock().unwrap()[p];
        (ph.sent, ph.recv)
    };
    let (sent, mut last) = counts();
    while last < sent && Instant::now() < backlog_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let recv = counts().1;
        if recv == last {
            break;
        }
        last = recv;
    }
    let mut phases = shared.phases.lock().unwrap();
    let ph = &mut phases[p];
    ph.lat_us.sort_unstable();
    if std::env::var_os("LOADGEN_DEBUG").is_some() {
        let qs = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999];
        let v: Vec<String> = qs
            .iter()
            .map(|&q| format!("p{}={}", q * 100.0, quantile(&ph.lat_us, q).unwrap_or(0.0)))
            .collect();
        println!("  debug latency quantiles (us): {}", v.join(" "));
    }
    let secs = t1.duration_since(t0).as_secs_f64();
    let win = window.as_secs_f64();
    PhaseResult {
        target: rate,
        offered: ph.sent_in_window as f64 / win,
        delivered: ph.recv_in_window as f64 / win,
        sent: ph.sent,
        lost: ph.sent.saturating_sub(ph.recv),
        p50: quantile(&ph.lat_us, 0.50),
        p90: quantile(&ph.lat_us, 0.90),
        p99: quantile(&ph.lat_us, 0.99),
        p999: quantile(&ph.lat_us, 0.999),
        max: ph.lat_us.last().map(|&x| x as f64),
        parts_cpu_us: s0
            .iter()
            .zip(&s1)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Some(((b.0 - a.0) as f64, (b.1 - a.1) as f64)),
                _ => None,
            })
            .collect(),
        secs,
        loadgen_cpu_pct: (l1 - l0) as f64 / (secs * 1e4),
        server_core: machine::core_busy(&m0, &m1, cfg.server_core),
        loadgen_core: machine::core_busy(&m0, &m1, plan.loadgen_core),
        recv_in_window: ph.recv_in_window,
        wrong_source: ph.wrong_source,
        errors: ph.errors,
        first_error: ph.first_error.take(),
    }
}

struct PhaseResult {
    target: Option<u64>,
    offered: f64,
    delivered: f64,
    sent: u64,
    lost: u64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
    /// (user, kernel) CPU time of each measured process over the window.
    parts_cpu_us: Vec<Option<(f64, f64)>>,
    /// Length of the window as measured, seconds.
    secs: f64,
    loadgen_cpu_pct: f64,
    /// (busy %, steal %) of the server's and the load generator's core over the window.
    server_core: (f64, f64),
    loadgen_core: (f64, f64),
    recv_in_window: u64,
    wrong_source: u64,
    errors: u64,
    first_error: Option<String>,
}

impl PhaseResult {
    /// (user, kernel) CPU time of all measured processes together over the window.
    fn server_cpu_us(&self) -> Option<(f64, f64)> {
        self.parts_cpu_us
            .iter()
            .try_fold((0.0, 0.0), |acc, p| p.map(|p| (acc.0 + p.0, acc.1 + p.1)))
    }

    /// CPU of all measured processes together, in % of one core.
    fn server_cpu_pct(&self) -> Option<f64> {
        self.server_cpu_us()
            .map(|(u, k)| (u + k) / (self.secs * 1e4))
    }

    /// Did the system keep up with a fixed rate: offered and delivered within 5 % of the
    /// target, and at most 0.1 % of the messages lost.
    fn held(&self) -> bool {
        match self.target {
            Some(t) => {
                self.offered >= 0.95 * t as f64
                    && self.delivered >= 0.95 * t as f64
                    && self.lost as f64 <= 0.001 * self.sent as f64
            }
            None => true,
        }
    }
}

/// (utime, stime) of each process, in microseconds.
fn cpu_of(pids: &[u32]) -> Vec<Option<(u64, u64)>> {
    pids.iter()
        .map(|&pid| server::proc_cpu_split_us(pid))
        .collect()
}

/// The system under test for one relay run: the servers the clients connect to (client `i`
/// to `servers[i % len]`) and, in cluster mode, the Redis they share. The CPU of all of them
/// is charged to the relayed messages.
pub struct Target<'a> {
    pub servers: &'a mut [Server],
    pub redis: Option<&'a mut Redis>,
}

impl Target<'_> {
    /// (label, pid) of each measured process.
    fn parts(&self) -> Vec<(String, u32)> {
        let mut parts: Vec<(String, u32)> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("node {}", i + 1), s.pid))
            .collect();
        if let Some(r) = &self.redis {
            parts.push(("redis-server".to_string(), r.pid));
        }
        parts
    }

    /// Why the system is no longer usable, if a process died.
    fn dead(&mut self) -> Option<String> {
        for (i, s) in self.servers.iter_mut().enumerate() {
            if !s.alive() {
                return Some(format!("server {} died: {}", i + 1, s.log_tail()));
            }
        }
        if let Some(r) = self.redis.as_mut()
            && !r.alive()
        {
            return Some(format!("redis-server died: {}", r.log_tail()));
        }
        None
    }
}

/// How one relay run is reported.
pub struct RunOpts {
    /// Report column.
    pub col: Col,
    /// Client subs and room names start with this.
    pub tag: &'static str,
    /// Also report the CPU per message of each process separately, in rows with these labels
    /// (matched to `Target::parts`; a label without a process gets "-"), so two runs with
    /// different parts line up in one table.
    pub breakdown: &'static [&'static str],
    /// Skip the higher fixed rates once one is not held (see `PhaseResult::held`).
    pub stop_when_not_held: bool,
}

/// Connects the pairs (each pair's two clients to consecutive servers of `target`, so with two
/// nodes every pair is split across them), then runs each fixed rate and saturation and
/// reports them in `opts.col` of `report`.
pub async fn bench(
    target: &mut Target<'_>,
    cfg: &ServerConfig,
    plan: &Plan,
    opts: &RunOpts,
    report: &mut Report,
) -> Result<(), String> {
    let col = opts.col;
    let pairs = plan.relay_pairs;
    let addrs: Vec<_> = target.servers.iter().map(|s| s.addr).collect();
    let connected = fleet::connect_many_spread(
        &addrs,
        &cfg.secret,
        opts.tag,
        pairs * 2,
        64,
        Then::Join(|i| format!("relay-{}", i / 2)),
    )
    .await?;
    let mut clients = connected.clients;
    // Let the join fan-out land, then forget it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet::drain(&mut clients);

    let peers: Arc<Vec<Peer>> = Arc::new(
        clients
            .iter()
            .map(|c| Peer {
                sid: c.sid.clone(),
                sender: c.sender(),
            })
            .collect(),
    );
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        phases: Mutex::new(Vec::new()),
        seq: Default::default(),
    });
    let bodies = Arc::new(bodies());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        readers.push(tokio::spawn(reader(
            c,
            i,
            peers.clone(),
            shared.clone(),
            bodies.clone(),
            stop_rx.clone(),
        )));
    }

    let parts = target.parts();
    let pids: Vec<u32> = parts.iter().map(|p| p.1).collect();
    let mut modes: Vec<Option<u64>> = plan.relay_rates.iter().map(|&r| Some(r)).collect();
    modes.push(None);
    let mut skipping = false;
    for rate in modes {
        let label = match rate {
            Some(r) => format!("relay {r} msg/s"),
            None => "relay saturation".to_string(),
        };
        if skipping && rate.is_some() {
            report.note(col, format!("{label}: not run, a lower rate was not held"));
            continue;
        }
        // A window during which other processes ran on either core is repeated (bounded:
        // three attempts), keeping the quietest one.
        let noise = |r: &PhaseResult| {
            let s = r.server_core.0 - r.server_cpu_pct().unwrap_or(0.0);
            let l = r.loadgen_core.0 - r.loadgen_cpu_pct;
            s.max(l).max(r.server_core.1).max(r.loadgen_core.1)
        };
        let mut r = phase(&pids, &peers, &shared, &bodies, rate, cfg, plan).await;
        for attempt in 2..=3 {
            if noise(&r) <= 10.0 {
                break;
            }
            println!(
                "  {label}: other processes took up to {:.0}% of a core during the window; repeating (attempt {attempt} of 3)",
                noise(&r)
            );
            machine::wait_quiet(Duration::from_secs(120), 15.0).await;
            let again = phase(&pids, &peers, &shared, &bodies, rate, cfg, plan).await;
            if noise(&again) < noise(&r) {
                r = again;
            }
        }
        report_phase(report, col, &label, &r, &parts, opts.breakdown);
        if !r.held() {
            report.note(
                col,
                format!(
                    "{label}: NOT HELD: offered {:.0}, delivered {:.0} msg/s, {} of {} lost",
                    r.offered, r.delivered, r.lost, r.sent
                ),
            );
            if opts.stop_when_not_held {
                skipping = true;
            }
        }
        if let Some(why) = target.dead() {
            report.fail(col, format!("{label}: {why}"));
            break;
        }
    }
    let _ = stop_tx.send(true);
    for r in readers {
        let _ = r.await;
    }
    Ok(())
}

fn report_phase(
    report: &mut Report,
    col: Col,
    label: &str,
    r: &PhaseResult,
    parts: &[(String, u32)],
    breakdown: &[&str],
) {
    report.set(col, label, "offered (msg/s)", Some(r.offered), 0);
    report.set(col, label, "delivered (msg/s)", Some(r.delivered), 0);
    report.set(col, label, "lost (msgs)", Some(r.lost as f64), 0);
    report.set(col, label, "latency p50 (us)", r.p50, 0);
    report.set(col, label, "latency p90 (us)", r.p90, 0);
    report.set(col, label, "latency p99 (us)", r.p99, 0);
    report.set(col, label, "latency p99.9 (us)", r.p999, 0);
    report.set(col, label, "latency max (us)", r.max, 0);
    let per = |c: f64| c / r.recv_in_window.max(1) as f64;
    let total = r.server_cpu_us();
    report.set(
        col,
        label,
        "server CPU per msg (us)",
        total.map(|c| per(c.0 + c.1)),
        2,
    );
    report.set(col, label, "  user part (us)", total.map(|c| per(c.0)), 2);
    report.set(col, label, "  kernel part (us)", total.map(|c| per(c.1)), 2);
    for name in breakdown {
        let cpu = parts
            .iter()
            .position(|(n, _)| n == name)
            .and_then(|i| r.parts_cpu_us[i]);
        report.set(
            col,
            label,
            &format!("  {name} (us)"),
            cpu.map(|c| per(c.0 + c.1)),
            2,
        );
    }
    let server_pct = r.server_cpu_pct();
    report.set(col, label, "server CPU (% of core)", server_pct, 0);
    report.set(
        col,
        label,
        "loadgen CPU (% of core)",
        Some(r.loadgen_cpu_pct),
        0,
    );
    let other_s = (r.server_core.0 - server_pct.unwrap_or(0.0)).max(0.0);
    let other_l = (r.loadgen_core.0 - r.loadgen_cpu_pct).max(0.0);
    report.set(col, label, "other CPU on server core (%)", Some(other_s), 0);
    report.set(
        col,
        label,
        "other CPU on loadgen core (%)",
        Some(other_l),
        0,
    );
    if other_s > 10.0 || other_l > 10.0 || r.server_core.1 > 5.0 || r.loadgen_core.1 > 5.0 {
        report.note(
            col,
            format!(
                "{label}: NOISY: other processes used {other_s:.0}% of the server core and {other_l:.0}% of the \
                 load generator core (steal {:.0}% / {:.0}%); numbers are skewed",
                r.server_core.1, r.loadgen_core.1
            ),
        );
    }
    let mut limits = Vec::new();
    if r.loadgen_cpu_pct >= 90.0 {
        limits.push(format!(
            "load generator CPU at {:.0}% of its core",
            r.loadgen_cpu_pct
        ));
    }
    if let Some(t) = r.target
        && r.offered < 0.95 * t as f64
    {
        limits.push(format!("offered {:.0} msg/s of {t} targeted", r.offered));
    }
    if !limits.is_empty() {
        report.note(
            col,
            format!("{label}: LOADGEN-LIMITED: {}", limits.join("; ")),
        );
    }
    if r.lost > 0 {
        report.note(
            col,
            format!("{label}: {} of {} messages not delivered", r.lost, r.sent),
        );
    }
    if r.wrong_source > 0 {
        report.fail(
            col,
            format!("{label}: {} messages with a wrong source", r.wrong_source),
        );
    }
    if r.errors > 0 {
        report.note(
            col,
            format!(
                "{label}: {} error events, first: {}",
                r.errors,
                r.first_error.as_deref().unwrap_or_default()
            ),
        );
    }
}

/// Notes the WARN/ERROR lines a server logged during a run.
fn note_warnings(report: &mut Report, col: Col, name: &str, server: &Server) {
    let (n, first) = server.log_warnings();
    if n > 0 {
        report.note(
            col,
            format!(
                "{name} logged {n} WARN/ERROR line(s), first: {}",
                first.join(" | ")
            ),
        );
    }
}

/// The `relay` scenario against one server.
pub async fn run(
    kind: Kind,
    cfg: &ServerConfig,
    plan: &Plan,
    report: &mut Report,
) -> Result<(), String> {
    println!(
        "\n--- relay ({} pairs) on {} ---",
        plan.relay_pairs,
        kind.label()
    );
    let opts = RunOpts {
        col: kind.into(),
        tag: "relay",
        breakdown: &[],
        stop_when_not_held: false,
    };
    bench_one_server(kind, cfg, plan, &opts, report, false).await
}

/// The relay workload against one freshly started server, stopped afterwards.
async fn bench_one_server(
    kind: Kind,
    cfg: &ServerConfig,
    plan: &Plan,
    opts: &RunOpts,
    report: &mut Report,
    note_server_warnings: bool,
) -> Result<(), String> {
    let mut server = Server::start(kind, cfg).await?;
    let result = bench(
        &mut Target {
            servers: std::slice::from_mut(&mut server),
            redis: None,
        },
        cfg,
        plan,
        opts,
        report,
    )
    .await;
    if note_server_warnings {
        note_warnings(report, opts.col, "the server", &server);
    }
    server.stop().await;
    result
}

/// The `relay-cluster` scenario (ours only): the relay workload on one server (left column of
/// `report`), then on two servers sharing one redis-server (right column), every pair split
/// across the two nodes. All processes run on the server core; the CPU per message counts
/// both servers and Redis.
pub async fn run_cluster(
    cfg: &ServerConfig,
    plan: &Plan,
    report: &mut Report,
) -> Result<(), String> {
    let pairs = plan.relay_pairs;
    println!("\n--- relay-cluster, single-node baseline ({pairs} pairs) on ours ---");
    let opts = RunOpts {
        col: Col::Left,
        tag: "relay",
        breakdown: &["node 1", "node 2", "redis-server"],
        stop_when_not_held: true,
    };
    bench_one_server(Kind::Ours, cfg, plan, &opts, report, true).await?;

    if !plan.quiet_wait.is_zero() {
        machine::wait_quiet(plan.quiet_wait, 15.0).await;
    }
    println!(
        "\n--- relay-cluster, 2 nodes + redis-server ({pairs} pairs, each split across the nodes) on ours ---"
    );
    let mut redis = Redis::start(cfg.server_core).await?;
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let mut servers = Vec::new();
    for _ in 0..2 {
        match Server::start_with_env(Kind::Ours, cfg, &env).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                for s in servers {
                    s.stop().await;
                }
                redis.stop().await;
                return Err(e);
            }
        }
    }
    let opts = RunOpts {
        col: Col::Right,
        tag: "relay-x",
        ..opts
    };
    let cluster = bench(
        &mut Target {
            servers: &mut servers,
            redis: Some(&mut redis),
        },
        cfg,
        plan,
        &opts,
        report,
    )
    .await;
    for (i, s) in servers.iter().enumerate() {
        note_warnings(report, Col::Right, &format!("node {}", i + 1), s);
    }
    for s in servers {
        s.stop().await;
    }
    redis.stop().await;
    cluster
}
