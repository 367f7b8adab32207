//! A private `redis-server` per test, on a free loopback port: plain, or (as managed Redis
//! offerings are) over TLS only with a private CA and an ACL user.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{SECRET, Server};

/// A private `redis-server`, killed on drop. It saves its data only when told to
/// ([`Redis::shut_down_saving`]), into a directory of its own.
pub struct Redis {
    pub port: u16,
    /// Removed on drop, unless handed on to the next server by [`Redis::shut_down_saving`].
    dir: Option<PathBuf>,
    child: Child,
    /// Over TLS: the CA that signed its certificate.
    ca: Option<PathBuf>,
}

/// The ACL user of a TLS Redis (its default user is off).
const TLS_USER: &str = "rtcio";
const TLS_PASSWORD: &str = "tls-test-password-0f3a";

impl Redis {
    pub async fn start() -> Redis {
        Redis::on_a_free_port(|port| (fresh_dir(port), None)).await
    }

    /// A new, empty Redis on `port`.
    pub async fn start_on(port: u16) -> Redis {
        Redis::start_in(port, fresh_dir(port), None)
            .await
            .unwrap_or_else(|| panic!("port {port} is taken"))
    }

    /// Another test may take a free port between our look and redis-server's bind (its
    /// `redis-server` would then answer for ours): try again on another.
    async fn on_a_free_port(setup: impl Fn(u16) -> (PathBuf, Option<PathBuf>)) -> Redis {
        for _ in 0..10 {
            let port = free_port();
            let (dir, ca) = setup(port);
            if let Some(redis) = Redis::start_in(port, dir, ca).await {
                return redis;
            }
        }
        panic!("no free port for redis-server in 10 tries");
    }

    /// A new, empty Redis that speaks only TLS, with a certificate from a private CA (made
    /// with the `openssl` command line) and only an ACL user.
    pub async fn start_tls() -> Redis {
        Redis::on_a_free_port(|port| {
            let dir = fresh_dir(port);
            let ca = make_certificates(&dir);
            (dir, Some(ca))
        })
        .await
    }

    /// A CA that did not sign this Redis's certificate (TLS only).
    pub fn other_ca(&self) -> PathBuf {
        let dir = self.dir.as_ref().expect("its directory").join("other");
        std::fs::create_dir_all(&dir).expect("dir");
        make_certificates(&dir)
    }

    /// Stops the server after it saved its data; [`Redis::start_again`] brings it back.
    pub async fn shut_down_saving(mut self) -> (u16, PathBuf) {
        let mut conn = self.connection().await.expect("redis");
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query_async::<()>(&mut conn)
            .await;
        self.child.wait().await.expect("redis exits");
        (self.port, self.dir.take().expect("its own directory"))
    }

    /// The server [`Redis::shut_down_saving`] stopped, with its data, on the same port.
    pub async fn start_again((port, dir): (u16, PathBuf)) -> Redis {
        Redis::start_in(port, dir, None)
            .await
            .unwrap_or_else(|| panic!("port {port} was taken meanwhile"))
    }

    /// `None` if another process answers on `port`.
    async fn start_in(port: u16, dir: PathBuf, ca: Option<PathBuf>) -> Option<Redis> {
        let mut command = Command::new("redis-server");
        match &ca {
            None => command.args(["--port", &port.to_string()]),
            Some(ca) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no", "--user", "default", "off"])
                .args(["--user", TLS_USER, "on", &format!(">{TLS_PASSWORD}")])
                .args(["~*", "&*", "+@all"]),
        };
        let child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (run scripts/setup)");
        let mut redis = Redis {
            port,
            dir: Some(dir),
            child,
            ca,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            if let Ok(conn) = redis.connection().await {
                break conn;
            }
            if let Ok(Some(_)) = redis.child.try_wait() {
                return None; // it could not bind the port
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await; // waiting for a process to listen
        };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let ours = redis.child.id().map(|pid| format!("process_id:{pid}"));
        ours.is_some_and(|ours| info.lines().any(|l| l.trim() == ours))
            .then_some(redis)
    }

    /// A server node of a cluster on this Redis, with default settings.
    pub async fn node(&self) -> Server {
        self.node_with(&[]).await
    }

    /// A server node of a cluster on this Redis, with these settings too.
    pub async fn node_with(&self, settings: &[(&str, &str)]) -> Server {
        self.node_logging_to(settings, Stdio::inherit()).await
    }

    /// [`Redis::node_with`], its log going to `log`.
    pub async fn node_logging_to(&self, settings: &[(&str, &str)], log: Stdio) -> Server {
        let url = self.url();
        let mut env = vec![("JWT_SECRET", SECRET), ("REDIS_URL", url.as_str())];
        env.extend_from_slice(settings);
        let ca = self.ca.as_ref().map(|ca| ca.display().to_string());
        if let Some(ca) = &ca {
            env.push(("REDIS_CA_FILE", ca));
        }
        Server::start_logging_to(&[], &env, log).await
    }

    /// A node whose links from other nodes all come through a [`LinkGate`]. The node picks
    /// its own port (one picked for it could be taken by another test's node meanwhile), and
    /// the gate listens on that port of the address the node advertises.
    pub async fn node_behind_gate(&self) -> (Server, LinkGate) {
        let node = self
            .node_with(&[
                ("CLUSTER_LINK_LISTEN", "127.0.0.2:0"),
                ("CLUSTER_LINK_ADVERTISE", "127.0.0.3"),
            ])
            .await;
        let mut conn = self.connection().await.expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("rtcio:node:*:link")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut gate_at = None;
        for key in keys {
            let address: String = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            if address.starts_with("127.0.0.3:") {
                gate_at = Some(address);
            }
        }
        let gate_at = gate_at.expect("the gated node advertises its link");
        let listen = gate_at.replacen("127.0.0.3", "127.0.0.2", 1);
        (node, LinkGate::start(&gate_at, &listen).await)
    }

    pub fn url(&self) -> String {
        match self.ca {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://{TLS_USER}:{TLS_PASSWORD}@localhost:{}", self.port),
        }
    }

    pub fn password(&self) -> &'static str {
        TLS_PASSWORD
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = match &self.ca {
            None => redis::Client::open(self.url())?,
            Some(ca) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let root_cert = std::fs::read(ca).expect("CA file");
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(self.url(), certificates)?
            }
        };
        client.get_multiplexed_async_connection().await
    }

    pub async fn stop(mut self) {
        self.child.kill().await.expect("kill redis");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn fresh_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtcio-redis-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("redis dir");
    dir
}

/// Makes a CA and a certificate it signs for `localhost` and 127.0.0.1 in `dir`
/// (`ca.pem`, `server.pem`, `server.key`); returns the CA's file.
pub fn make_certificates(dir: &std::path::Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=rtcio test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca);
    let mut request = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key"];
    request.extend(ec);
    request.extend(["-out", "server.csr"]);
    openssl(&request);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    dir.join("ca.pem")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A proxy in front of a Redis that can hold back a reply on a node's command connections
/// while letting its subscriber connection through, as a busy network or a slow task can:
/// Redis ran the command, but the node reads its answer later than the pub/sub messages
/// Redis sent after it.
pub struct ReplyGate {
    pub port: u16,
    /// `Some(marker)`: hold back, on every command connection, the first reply that contains
    /// `marker` and everything after it; `None`: let everything through.
    hold: tokio::sync::watch::Sender<Option<&'static [u8]>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// What a [`ReplyGate`] does with the connections it turns away instead of carrying them.
#[derive(Clone, Copy)]
pub enum TurnAway {
    /// Accepts and never answers, as a Redis too busy to finish a handshake in time.
    Silently,
    /// Sends this reply and closes, as Redis does at its client limit.
    Saying(&'static [u8]),
}

impl ReplyGate {
    /// Open, in front of `redis`.
    pub async fn start(redis: &Redis) -> ReplyGate {
        ReplyGate::start_turning_away(redis, 0..=0, TurnAway::Silently).await
    }

    /// Open, in front of `redis`, except that its connections numbered `numbers` (counted
    /// from 1) are turned away `how`.
    pub async fn start_turning_away(
        redis: &Redis,
        numbers: std::ops::RangeInclusive<usize>,
        how: TurnAway,
    ) -> ReplyGate {
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gate");
        let port = listener.local_addr().expect("its address").port();
        let (hold, _) = tokio::sync::watch::channel(None);
        let accepted: std::sync::Arc<std::sync::atomic::AtomicUsize> = std::sync::Arc::default();
        let (gate, counted) = (hold.clone(), std::sync::Arc::clone(&accepted));
        let upstream = redis.port;
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if numbers.contains(&(counted.fetch_add(1, Ordering::SeqCst) + 1)) {
                    match how {
                        TurnAway::Silently => unanswered.push(client),
                        TurnAway::Saying(reply) => {
                            let _ = client.write_all(reply).await;
                        }
                    }
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                tokio::spawn(pass_through(client, server, gate.subscribe()));
            }
        });
        ReplyGate {
            port,
            hold,
            accepted,
        }
    }

    /// How many connections the gate has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on the first reply containing `marker` waits, and what comes after it.
    pub fn hold_from(&self, marker: &'static [u8]) {
        self.hold.send_replace(Some(marker));
    }

    /// Replies held back go through, in order, and the next ones at once.
    pub fn open(&self) {
        self.hold.send_replace(None);
    }
}

/// Carries one connection both ways. What the server sends is held back as the gate says,
/// unless the client has subscribed (its connection carries pub/sub messages).
async fn pass_through(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mut hold: tokio::sync::watch::Receiver<Option<&'static [u8]>>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let subscriber = Arc::new(AtomicBool::new(false));
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut server_reads, mut server_writes) = server.into_split();
    let marks = Arc::clone(&subscriber);
    let requests = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = client_reads.read(&mut buf).await {
            let chunk = &buf[..n];
            if chunk
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                marks.store(true, Ordering::SeqCst);
            }
            if server_writes.write_all(chunk).await.is_err() {
                break;
            }
        }
    };
    let replies = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut holding = false;
        while let Ok(n @ 1..) = server_reads.read(&mut buf).await {
            let chunk = &buf[..n];
            if !subscriber.load(Ordering::SeqCst) {
                let marker = *hold.borrow_and_update();
                holding |= marker.is_some_and(|m| chunk.windows(m.len()).any(|w| w == m));
                if holding {
                    if hold.wait_for(Option::is_none).await.is_err() {
                        break;
                    }
                    holding = false;
                }
            }
            if client_writes.write_all(chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(requests, replies);
}

/// A proxy in front of a node's link listener that can hold back what the first link into
/// it (or every link) carries, as a stalled sender would: the bytes wait, in order, until it
/// opens. Other links pass freely. It can also break the links it carries, and turn new ones away, as a
/// network fault would. It listens on `at` and carries to `to` (same port, another loopback
/// address: a node advertises its link's host, not its port).
pub struct LinkGate {
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    hold: tokio::sync::watch::Sender<bool>,
    /// Bumped to break every link carried so far.
    breaks: tokio::sync::watch::Sender<u64>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Links opened from now on are held too, not only the first.
    holding_every: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LinkGate {
    pub async fn start(at: &str, to: &str) -> LinkGate {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind(at)
            .await
            .expect("bind the gate");
        let gate = LinkGate {
            accepted: Arc::default(),
            hold: tokio::sync::watch::channel(false).0,
            breaks: tokio::sync::watch::channel(0).0,
            refusing: Arc::default(),
            refused: Arc::default(),
            holding_every: Arc::default(),
        };
        let (hold, breaks, to) = (gate.hold.clone(), gate.breaks.clone(), to.to_string());
        let (count, refusing, refused, every) = (
            Arc::clone(&gate.accepted),
            Arc::clone(&gate.refusing),
            Arc::clone(&gate.refused),
            Arc::clone(&gate.holding_every),
        );
        tokio::spawn(async move {
            while let Ok((from, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(node) = tokio::net::TcpStream::connect(&to).await else {
                    continue;
                };
                // The first link can be held; later ones only once `hold_every` was called.
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                let hold = (first || every.load(Ordering::SeqCst)).then(|| hold.subscribe());
                tokio::spawn(carry(from, node, hold, breaks.subscribe()));
            }
        });
        gate
    }

    /// How many links came through so far.
    pub fn links(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Holds back what the first link carries from now on.
    pub fn hold_first(&self) {
        self.hold.send_replace(true);
    }

    /// Holds back what every link carries from now on, those opened later too.
    pub fn hold_every(&self) {
        self.holding_every
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.hold.send_replace(true);
    }

    pub fn open(&self) {
        self.hold.send_replace(false);
    }

    /// Breaks every link carried so far: both ends see their connection close.
    pub fn break_links(&self) {
        self.breaks.send_modify(|n| *n += 1);
    }

    /// While `refusing`, a link opened through the gate is closed as soon as it connects.
    pub fn refuse(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many links the gate has turned away.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Carries one link both ways, until the gate breaks it; what its sender writes waits while
/// `hold` says so.
async fn carry(
    from: tokio::net::TcpStream,
    to: tokio::net::TcpStream,
    mut hold: Option<tokio::sync::watch::Receiver<bool>>,
    mut breaks: tokio::sync::watch::Receiver<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_reads, mut from_writes) = from.into_split();
    let (mut to_reads, mut to_writes) = to.into_split();
    let forth = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from_reads.read(&mut buf).await {
            if let Some(hold) = &mut hold
                && hold.wait_for(|held| !held).await.is_err()
            {
                break;
            }
            if to_writes.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let back = async move {
        let _ = tokio::io::copy(&mut to_reads, &mut from_writes).await;
    };
    tokio::select! {
        _ = async { tokio::join!(forth, back) } => {}
        _ = breaks.changed() => {}
    }
}
