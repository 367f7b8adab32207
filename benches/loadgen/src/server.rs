//! Starting, measuring and stopping one server under test.
//!
//! The server runs as `taskset -c 0 <binary>` (taskset execs, so the child's pid is the
//! server's), the load generator is pinned to core 1. Measurements come from /proc:
//! VmRSS from /proc/PID/status and utime+stime (clock ticks) from /proc/PID/stat.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Node,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Node => "node",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub ours_bin: PathBuf,
    pub node_script: PathBuf,
    pub repo_root: PathBuf,
    pub secret: String,
    pub server_core: usize,
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    proc: Proc,
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `taskset -c CORE`, to which the caller appends the program and its arguments (taskset
/// execs, so the child's pid is the program's).
fn pinned(core: usize) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string());
    cmd
}

/// A child process under test (a server or Redis): its stderr goes to a log file in the temp
/// directory, its stdout is read until a ready line and drained afterwards.
struct Proc {
    pid: u32,
    child: Child,
    log_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr to `loadgen-NAME-PID-PORT.log` and waits up to `timeout` for a
    /// stdout line containing `ready_marker`. Spawn errors read "spawning {what}: ..."; if
    /// the line does not come, the child is killed and the error is `not_ready(log path,
    /// stdout lines seen)`.
    async fn spawn_until_ready(
        mut cmd: Command,
        name: &str,
        port: u16,
        ready_marker: &str,
        timeout: Duration,
        what: &str,
        not_ready: impl FnOnce(&Path, Vec<String>) -> String,
    ) -> Result<Proc, String> {
        let log_path =
            std::env::temp_dir().join(format!("loadgen-{name}-{}-{port}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawning {what}: {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{what} exited at once"))?;
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(ready_marker) {
                    return true;
                }
                seen.push(line);
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.kill().await;
            return Err(not_ready(&log_path, seen));
        }
        // Keep draining stdout so a chatty process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Proc {
            pid,
            child,
            log_path,
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 1500 bytes of the log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = log.len().saturating_sub(1500);
        log[log.floor_char_boundary(start)..].to_string()
    }

    /// SIGTERM, then SIGKILL if the process is still there after 5 s; then removes the log,
    /// unless `keep_log` (which prints where it is).
    async fn stop(mut self, keep_log: bool) {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if keep_log {
            println!("  server log kept: {}", self.log_path.display());
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

impl Server {
    pub async fn start(kind: Kind, cfg: &ServerConfig) -> Result<Server, String> {
        Server::start_with_env(kind, cfg, &[]).await
    }

    /// Like `start`, with extra environment variables (e.g. `REDIS_URL` for cluster mode).
    pub async fn start_with_env(
        kind: Kind,
        cfg: &ServerConfig,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = pinned(cfg.server_core);
        match kind {
            Kind::Ours => {
                cmd.arg(&cfg.ours_bin)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    // Up to 19,000 clients, all from this one address, each sending far
                    // faster than a person. Settings as variables, which builds from before
                    // the caps existed ignore.
                    .envs([
                        ("MAX_CONNECTIONS", "100000"),
                        ("MAX_CONNECTIONS_PER_ADDRESS", "100000"),
                        ("RELAY_RATE", "1000000"),
                        ("RELAY_BURST", "1000000"),
                        ("ROOM_EVENT_RATE", "1000000"),
                        ("ROOM_EVENT_BURST", "1000000"),
                        ("ECHO_RATE", "1000000"),
                        ("ECHO_BURST", "1000000"),
                        ("SEND_BYTES_RATE", "1000000000000"),
                        ("SEND_BYTES_BURST", "4000000000"),
                        ("MAX_QUEUED_BYTES", "4000000000"),
                    ])
                    // No per-event logging in either server (the Node reference logs nothing).
                    .env(
                        "RUST_LOG",
                        std::env::var("LOADGEN_RUST_LOG").unwrap_or_else(|_| "warn".into()),
                    );
            }
            Kind::Node => {
                cmd.arg("node")
                    .arg(&cfg.node_script)
                    .env("PORT", port.to_string())
                    .env("HOST", "127.0.0.1");
            }
        }
        cmd.env("JWT_SECRET", &cfg.secret);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.current_dir(&cfg.repo_root);
        let proc = Proc::spawn_until_ready(
            cmd,
            kind.label(),
            port,
            "listening on",
            Duration::from_secs(30),
            &format!("{kind:?} server"),
            |log_path, _stdout| {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                format!(
                    "{} server did not print 'listening on' (log {}):\n{}",
                    kind.label(),
                    log_path.display(),
                    log.chars().take(2000).collect::<String>()
                )
            },
        )
        .await?;
        Ok(Server {
            kind,
            addr,
            pid: proc.pid,
            proc,
        })
    }

    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_rss_kib(self.pid)
    }

    /// utime + stime of the whole process, in microseconds.
    pub fn cpu_us(&self) -> Option<u64> {
        proc_cpu_us(self.pid)
    }

    /// GET /health, parsed as JSON.
    pub async fn health(&self) -> Option<Value> {
        self.get_json("/health").await
    }

    /// The live heap by allocation size, when the server is a `heap-census` build (see
    /// `benches/heap-census`); `None` for every other build and for Node.
    pub async fn heap_census(&self) -> Option<Value> {
        match self.kind {
            Kind::Ours => self.get_json("/debug/heap").await,
            Kind::Node => None,
        }
    }

    /// GET `path` and parse the JSON object in the body (`None` on any failure or non-200).
    async fn get_json(&self, path: &str) -> Option<Value> {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf);
            if !text.starts_with("HTTP/1.1 200") {
                return None;
            }
            let body = &text[text.find("\r\n\r\n")? + 4..];
            let (a, b) = (body.find('{')?, body.rfind('}')?);
            serde_json::from_str(body.get(a..=b)?).ok()
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .ok()
            .flatten()
    }

    /// Samples RSS until it stops moving (or `max` passes); returns the last value.
    pub async fn settled_rss_kib(&self, min: Duration, max: Duration) -> Option<u64> {
        let start = Instant::now();
        tokio::time::sleep(min).await;
        let mut last = self.rss_kib()?;
        while start.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.rss_kib()?;
            let moved = now.abs_diff(last);
            last = now;
            if moved * 200 < now {
                break; // moved less than 0.5 %
            }
        }
        Some(last)
    }

    pub async fn stop(self) {
        self.proc
            .stop(std::env::var_os("LOADGEN_KEEP_LOGS").is_some())
            .await;
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Lines of the server's log (stderr) at WARN or ERROR level: (count, first few).
    pub fn log_warnings(&self) -> (usize, Vec<String>) {
        let hits = self.warning_lines();
        (hits.len(), hits.into_iter().take(3).collect())
    }

    /// Every line of the server's log (stderr) at WARN or ERROR level, and panics.
    pub fn warning_lines(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.proc.log_path).unwrap_or_default();
        // tracing colours the level even into a file: match on the plain text.
        log.lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            .collect()
    }
}

/// Removes terminal colour codes (tracing's fmt layer colours its level names).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `redis-server` for cluster mode: no persistence, loopback only, pinned like the servers
/// (`taskset -c CORE redis-server ...`; taskset execs, so the child's pid is Redis's).
pub struct Redis {
    pub port: u16,
    pub pid: u32,
    proc: Proc,
}

impl Redis {
    pub async fn start(core: usize) -> Result<Redis, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut cmd = pinned(core);
        cmd.arg("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--bind", "127.0.0.1"]);
        let proc = Proc::spawn_until_ready(
            cmd,
            "redis",
            port,
            "Ready to accept connections",
            Duration::from_secs(15),
            "redis-server",
            |_log_path, stdout| format!("redis-server did not get ready:\n{}", stdout.join("\n")),
        )
        .await?;
        Ok(Redis {
            port,
            pid: proc.pid,
            proc,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Stops Redis and removes its log (LOADGEN_KEEP_LOGS keeps only server logs).
    pub async fn stop(self) {
        self.proc.stop(false).await;
    }
}

/// How many times the Redis on `port` has run each command since it started, from `INFO
/// commandstats` (which counts the commands a script runs as well as the script's own call).
/// A raw RESP request, so no Redis client is needed; each call adds one `info` to the counts.
pub async fn redis_command_calls(port: u16) -> Result<BTreeMap<String, u64>, String> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            .await
            .map_err(|e| format!("sending: {e}"))?;
        // The reply is one bulk string: `$LEN\r\n`, LEN bytes, `\r\n`.
        let mut reply = BufReader::new(s);
        let mut header = String::new();
        reply
            .read_line(&mut header)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        let len: usize = header
            .strip_prefix('$')
            .and_then(|n| n.trim_end().parse().ok())
            .ok_or_else(|| format!("unexpected reply {:?}", header.trim_end()))?;
        let mut body = vec![0; len];
        reply
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".to_string()))
        .map_err(|e| format!("INFO commandstats from redis-server: {e}"))
}

/// `cmdstat_NAME:calls=N,usec=...` lines to NAME -> N.
fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

pub fn clk_tck() -> u64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

pub fn proc_cpu_us(pid: u32) -> Option<u64> {
    proc_cpu_split_us(pid).map(|(u, s)| u + s)
}

pub fn proc_cpu_split_us(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let t = clk_tck();
    Some((utime * 1_000_000 / t, stime * 1_000_000 / t))
}

/// This process's own CPU time (user + system) in microseconds.
pub fn self_cpu_us() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resident set size of a process in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_commandstats, strip_ansi};

    #[test]
    fn reads_command_counts() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=18026,usec=64893,usec_per_call=3.60,rejected_calls=0,failed_calls=0\r\ncmdstat_client|setname:calls=2,usec=1,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n";
        let calls = parse_commandstats(info);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls["evalsha"], 18026);
        assert_eq!(calls["client|setname"], 2);
    }

    #[test]
    fn strips_tracing_colours() {
        let line = "\u{1b}[2m2026-11-24T06:42:16.863693Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m \u{1b}[2mrtcio_signal\u{1b}[0m\u{1b}[2m:\u{1b}[0m cannot reach Redis";
        assert_eq!(
            strip_ansi(line),
            "2026-11-24T06:42:16.863693Z ERROR rtcio_signal: cannot reach Redis"
        );
        assert!(strip_ansi(line).contains(" ERROR "));
    }
}
