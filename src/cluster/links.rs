//! Direct links between the nodes of a cluster. Through Redis, a relay to a peer on another
//! node cost a script call (a round trip the sender waits for), the script's work, and a
//! pub/sub wake-up on the receiving node: four process switches and Redis's CPU per message.
//! Over a link it costs a write on one node and a read on the other.
//!
//! Each node listens on a TCP port of its own and advertises the address in Redis next to its
//! heartbeat. A node sending to another opens one link to it and writes everything for it
//! there, in order: letters, notes, relays, and the two control frames below. A link carries
//! frames one way only; answers go back on the other node's own link, so every node's frames
//! to another arrive in the order it sent them.
//!
//! A link is authenticated: the listening node sends a random challenge, and the connecting
//! node answers with its id and an HMAC-SHA256 of both ids and the challenge under a secret
//! that the first node of the cluster left in Redis. A connection that fails is closed.
//!
//! Where a peer is: a node remembers the node a remote peer's relays went to (looked up in
//! Redis the first time). A session that moves between nodes would leave that stale, and the
//! letters already on their way to the old node would race those sent to the new one. So the
//! old node, before it hands the session over, sends every other node a `sync` naming the
//! new node. Each one waits for its routing in flight (a Redis lookup that may still have
//! found the old node: see [`Links::routing`]), points the peer at the new node, and answers
//! on its own link behind everything it sent before. Once every node has answered, nothing
//! more is on its way to the old node for that peer, and what arrived is in the handed
//! session.
//!
//! Lock story: `routes` and `outgoing` are concurrent maps touched briefly. `gate` is held
//! shared by each routing from the moment it looks a route up until its frames are queued
//! (across a Redis round trip), and exclusively by a `sync` while it repoints a peer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, RwLock, RwLockReadGuard, Semaphore, mpsc, oneshot};

use redis::aio::ConnectionManager;

use crate::hub::Hub;
use crate::ids::{NodeId, PeerId};
use crate::store::redis::link_key;

/// Largest frame a link accepts; a bigger one closes the link (no node of ours writes one).
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Frames, and bytes of them, queued for one node; beyond either they are dropped, with an
/// error logged.
const LINK_DEPTH: usize = 65_536;
const LINK_BYTES: usize = 64 * 1024 * 1024;
/// A link on which a chunk of [`WRITE_CHUNK`] bytes takes this long to write is taken for
/// dead and opened again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_CHUNK: usize = 256 * 1024;
/// How long after its last heartbeat this node still sends to the others. Past it the
/// others may have reaped it and announced its peers gone, so nothing of theirs may reach
/// anyone: less than `store::redis::NODE_TTL`, by a margin for the heartbeat's round trip.
const FRESH_FOR: Duration = Duration::from_secs(4);
/// Most links in their handshake at once (more are closed at once), and how long a node
/// that connects here has to prove itself.
const MOST_HANDSHAKES: usize = 256;
const PROOF_TIMEOUT: Duration = Duration::from_secs(1);
const CHALLENGE_BYTES: usize = 32;
/// How long a node connecting to another has to connect and get through the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node waits for the others' answers to a `sync`, all together: well within the
/// time a node taking a session up waits for it (`hub::handover`).
const SYNC_TIMEOUT: Duration = Duration::from_secs(1);
/// Most remote peers whose node is remembered; past it the memory starts over.
const MOST_ROUTES: usize = 100_000;

pub struct Links {
    here: NodeId,
    /// The cluster's link secret, and the HMAC keyed with it.
    secret: std::sync::RwLock<(String, Hmac<Sha256>)>,
    handshakes: Arc<Semaphore>,
    /// Where the other nodes' link addresses are.
    redis: ConnectionManager,
    /// The queue of each node this one writes to (its writer task holds the other end).
    outgoing: DashMap<NodeId, Outgoing>,
    next_writer: AtomicU64,
    /// The node each remote peer's relays go to.
    routes: DashMap<PeerId, NodeId>,
    gate: RwLock<()>,
    /// `sync`s this node sent and awaits answers to.
    syncs: DashMap<u64, oneshot::Sender<()>>,
    next_sync: AtomicU64,
    freshness: Freshness,
    /// One reader at a time per node, so a link opened again is read only once the one
    /// before it is done and a node's frames stay in order.
    readers: DashMap<NodeId, Arc<tokio::sync::Mutex<()>>>,
}

/// Until when this node may send, from its heartbeats (see [`FRESH_FOR`]); lock-free, as every
/// frame asks.
struct Freshness {
    started: Instant,
    /// Until when (in ms after `started`) this node may send.
    until_ms: AtomicU64,
    /// When the heartbeat that found this node lapsed was sent (ms after `started`): it
    /// counts once the clients are cut off ([`Freshness::resume`]).
    lapsed_beat_ms: AtomicU64,
}

impl Freshness {
    /// A node starting at `started` may send for [`FRESH_FOR`] before its first heartbeat.
    fn new(started: Instant) -> Freshness {
        Freshness {
            started,
            until_ms: AtomicU64::new(FRESH_FOR.as_millis() as u64),
            lapsed_beat_ms: AtomicU64::new(0),
        }
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn beat(&self, at: Instant, lapsed: bool) {
        let at = self.ms_at(at);
        if lapsed {
            self.lapsed_beat_ms.store(at, Ordering::Relaxed);
        } else {
            self.until_ms
                .fetch_max(at + FRESH_FOR.as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn resume(&self) {
        let at = self.lapsed_beat_ms.load(Ordering::Relaxed);
        self.until_ms
            .fetch_max(at + FRESH_FOR.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the node may send at `now`.
    fn at(&self, now: Instant) -> bool {
        self.ms_at(now) <= self.until_ms.load(Ordering::Relaxed)
    }
}

/// The queue of frames for one node, which writer task reads it, and the bytes in it.
#[derive(Clone)]
struct Outgoing {
    writer: u64,
    queue: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// A writer that cannot connect this many times in a row gives up: the node is gone. The
/// next frame for it starts a new writer.
const CONNECT_ATTEMPTS: u32 = 3;

/// A frame on a link, after its length.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Mail as the inbox carries it (`cluster::inbox`): a letter, a note, or a bundle.
    Mail(Vec<u8>),
    /// A relay from `sender`, in `rooms` when it was sent, for `target`: its data.
    Relay {
        sender: PeerId,
        target: PeerId,
        rooms: Vec<String>,
        data: Vec<u8>,
    },
    /// Answer once everything sent before is queued; if a peer moved, point it at its node.
    Sync {
        id: u64,
        moved: Option<(PeerId, NodeId)>,
    },
    Synced(u64),
    /// A relay found `target` in none of the sender's rooms here: tell `sender`.
    Unreachable {
        sender: PeerId,
        target: PeerId,
    },
}

const MAIL: u8 = b'M';
const RELAY: u8 = b'R';
const SYNC: u8 = b'S';
const SYNCED: u8 = b's';
const UNREACHABLE: u8 = b'U';

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Frame::Mail(mail) => {
                out.push(MAIL);
                out.extend_from_slice(mail);
            }
            Frame::Relay {
                sender,
                target,
                rooms,
                data,
            } => {
                out.push(RELAY);
                put_str(&mut out, sender);
                put_str(&mut out, target);
                out.extend_from_slice(&(rooms.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for room in rooms.iter().take(u16::MAX as usize) {
                    put_str(&mut out, room);
                }
                out.extend_from_slice(data);
            }
            Frame::Sync { id, moved } => {
                out.push(SYNC);
                out.extend_from_slice(&id.to_be_bytes());
                if let Some((peer, node)) = moved {
                    put_str(&mut out, peer);
                    put_str(&mut out, node.as_str());
                }
            }
            Frame::Synced(id) => {
                out.push(SYNCED);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::Unreachable { sender, target } => {
                out.push(UNREACHABLE);
                put_str(&mut out, sender);
                put_str(&mut out, target);
            }
        }
        out
    }

    /// `None` for anything a node of ours does not write.
    pub fn decode(bytes: &[u8]) -> Option<Frame> {
        let (&tag, rest) = bytes.split_first()?;
        let mut reader = Reader(rest);
        let frame = match tag {
            MAIL => return Some(Frame::Mail(rest.to_vec())),
            RELAY => {
                let sender = PeerId::parse(reader.str()?)?;
                let target = PeerId::parse(reader.str()?)?;
                let count = u16::from_be_bytes(reader.array()?);
                let rooms = (0..count)
                    .map(|_| reader.str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()?;
                return Some(Frame::Relay {
                    sender,
                    target,
                    rooms,
                    data: reader.0.to_vec(),
                });
            }
            SYNC => {
                let id = u64::from_be_bytes(reader.array()?);
                let moved = if reader.0.is_empty() {
                    None
                } else {
                    let peer = PeerId::parse(reader.str()?)?;
                    Some((peer, NodeId::parse(reader.str()?)?))
                };
                Frame::Sync { id, moved }
            }
            SYNCED => Frame::Synced(u64::from_be_bytes(reader.array()?)),
            UNREACHABLE => Frame::Unreachable {
                sender: PeerId::parse(reader.str()?)?,
                target: PeerId::parse(reader.str()?)?,
            },
            _ => return None,
        };
        reader.0.is_empty().then_some(frame)
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let text = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        std::str::from_utf8(self.bytes(len)?).ok()
    }
}

/// Held by a routing from its lookup until its frames are queued (see the module's comment).
pub struct Routing<'a> {
    _shared: RwLockReadGuard<'a, ()>,
}

impl Links {
    pub fn new(here: NodeId, secret: &str, redis: ConnectionManager) -> Result<Arc<Links>, String> {
        let keyed = keyed(secret)?;
        Ok(Arc::new(Links {
            here,
            secret: std::sync::RwLock::new((secret.to_string(), keyed)),
            handshakes: Arc::new(Semaphore::new(MOST_HANDSHAKES)),
            redis,
            outgoing: DashMap::new(),
            next_writer: AtomicU64::new(1),
            routes: DashMap::new(),
            gate: RwLock::new(()),
            syncs: DashMap::new(),
            next_sync: AtomicU64::new(1),
            freshness: Freshness::new(Instant::now()),
            readers: DashMap::new(),
        }))
    }

    pub fn here(&self) -> &NodeId {
        &self.here
    }

    /// This node's heartbeat, sent at `at`, was taken. If it had not lapsed, the node may
    /// send for [`FRESH_FOR`] more; if it had, only once [`Links::resume`] says its clients
    /// are cut off.
    pub fn beat(&self, at: Instant, lapsed: bool) {
        self.freshness.beat(at, lapsed);
    }

    /// The clients of a node whose heartbeat had lapsed are cut off: it may send again, for
    /// [`FRESH_FOR`] after that heartbeat.
    pub fn resume(&self) {
        self.freshness.resume();
    }

    /// Whether this node's heartbeat is recent enough for it to send (see [`FRESH_FOR`]).
    fn is_fresh(&self) -> bool {
        self.freshness.at(Instant::now())
    }

    /// The link secret this node uses.
    pub fn secret(&self) -> String {
        self.secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Uses `secret` from now on, if it is not the one in use (Redis lost the old one and
    /// another node made a new one).
    pub fn keep_secret(&self, secret: &str) {
        if self.secret() == secret {
            return;
        }
        match keyed(secret) {
            Ok(keyed) => {
                *self.secret.write().unwrap_or_else(|p| p.into_inner()) =
                    (secret.to_string(), keyed);
                tracing::warn!("the cluster's link secret changed; using the new one");
            }
            Err(e) => tracing::error!(cause = %e, "unusable link secret"),
        }
    }

    /// Starts a routing: a `sync` that repoints a peer waits until it is dropped.
    pub async fn routing(&self) -> Routing<'_> {
        Routing {
            _shared: self.gate.read().await,
        }
    }

    /// The node `peer`'s relays went to last, if it is another node.
    pub fn route(&self, peer: &PeerId) -> Option<NodeId> {
        self.routes.get(peer).map(|node| node.clone())
    }

    pub fn remember(&self, peer: &PeerId, node: &NodeId) {
        if self.routes.len() >= MOST_ROUTES {
            self.routes.clear();
        }
        self.routes.insert(peer.clone(), node.clone());
    }

    /// Forgets `peer`'s node if it is `node` (a relay found it gone there).
    pub fn forget(&self, peer: &PeerId, node: &NodeId) {
        self.routes.remove_if(peer, |_, n| n == node);
    }

    /// Queues `frame` for `node`, behind everything queued for it before.
    pub fn send(self: &Arc<Self>, node: &NodeId, frame: &Frame) {
        if !self.is_fresh() {
            return tracing::debug!(%node, "frame dropped: this node's heartbeat is stale");
        }
        let bytes = frame.encode();
        let outgoing = match self.outgoing.get(node) {
            Some(outgoing) => outgoing.clone(),
            None => {
                // Sends can come from drops; with the runtime gone nothing can be written.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                self.outgoing
                    .entry(node.clone())
                    .or_insert_with(|| {
                        let (queue, frames) = mpsc::channel(LINK_DEPTH);
                        let writer = self.next_writer.fetch_add(1, Ordering::Relaxed);
                        let queued = Arc::new(AtomicUsize::new(0));
                        let task = write_link(
                            Arc::downgrade(self),
                            node.clone(),
                            writer,
                            frames,
                            Arc::clone(&queued),
                        );
                        runtime.spawn(task);
                        Outgoing {
                            writer,
                            queue,
                            queued,
                        }
                    })
                    .clone()
            }
        };
        let size = bytes.len();
        if outgoing.queued.fetch_add(size, Ordering::Relaxed) + size > LINK_BYTES {
            outgoing.queued.fetch_sub(size, Ordering::Relaxed);
            return tracing::error!(%node, "frame for another node dropped: its link is behind");
        }
        if let Err(e) = outgoing.queue.try_send(bytes) {
            outgoing.queued.fetch_sub(size, Ordering::Relaxed);
            tracing::error!(%node, cause = %e, "frame for another node dropped: its link is behind");
        }
    }

    /// Waits (up to [`SYNC_TIMEOUT`]) until every node this one has sent to has what it was
    /// sent: before a node stops.
    pub async fn flush(self: &Arc<Self>) {
        let nodes: Vec<NodeId> = self.outgoing.iter().map(|o| o.key().clone()).collect();
        self.sync(&nodes, None).await;
    }

    /// Sends a `sync` to each of `nodes` and waits (up to [`SYNC_TIMEOUT`]) for their answers:
    /// then everything they sent this node before is here. With `moved`, each points that
    /// peer at its new node first.
    pub async fn sync(self: &Arc<Self>, nodes: &[NodeId], moved: Option<(&PeerId, &NodeId)>) {
        let mut answers = Vec::with_capacity(nodes.len());
        for node in nodes.iter().filter(|n| **n != self.here) {
            let id = self.next_sync.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.syncs.insert(id, tx);
            let moved = moved.map(|(peer, to)| (peer.clone(), to.clone()));
            self.send(node, &Frame::Sync { id, moved });
            answers.push((id, node, rx));
        }
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        for (id, node, answer) in answers {
            if tokio::time::timeout_at(deadline, answer).await.is_err() {
                tracing::warn!(%node, "no answer to a sync; going on without it");
            }
            self.syncs.remove(&id);
        }
    }

    /// Reads a `sync` from `from`: repoints the peer once no routing is in flight, then
    /// answers behind everything this node queued for `from` before.
    async fn answer_sync(
        self: &Arc<Self>,
        from: &NodeId,
        id: u64,
        moved: Option<(PeerId, NodeId)>,
    ) {
        if let Some((peer, to)) = moved {
            let _exclusive = self.gate.write().await;
            if to == self.here {
                self.routes.remove(&peer);
            } else {
                self.routes.insert(peer, to);
            }
        }
        self.send(from, &Frame::Synced(id));
    }

    /// Listens for links from other nodes on `listener`, handing their frames to `hub`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, hub: Weak<Hub>) {
        loop {
            let (stream, address) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(cause = %e, "accepting a link failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(handshake) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                tracing::warn!(%address, "too many links in their handshake; closed");
                continue;
            };
            let links = Arc::clone(&self);
            let hub = hub.clone();
            tokio::spawn(async move {
                if let Err(e) = links.read_link(stream, handshake, hub).await {
                    tracing::warn!(%address, cause = %e, "link from another node closed");
                }
            });
        }
    }

    /// Reads a link another node opened: the handshake (each side proves it knows the
    /// secret), then its frames in order.
    async fn read_link(
        self: Arc<Self>,
        mut stream: TcpStream,
        handshake: OwnedSemaphorePermit,
        hub: Weak<Hub>,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let challenge: [u8; CHALLENGE_BYTES] = rand::random();
        let from = tokio::time::timeout(PROOF_TIMEOUT, async {
            stream.write_all(&challenge).await?;
            let len = stream.read_u16().await? as usize;
            let mut id = vec![0; len.min(64)];
            stream.read_exact(&mut id).await?;
            let mut mac = [0; 32];
            stream.read_exact(&mut mac).await?;
            let mut theirs = [0; CHALLENGE_BYTES];
            stream.read_exact(&mut theirs).await?;
            let from = std::str::from_utf8(&id).ok().and_then(NodeId::parse);
            let from = match from {
                Some(from) if len <= 64 && self.verify(&challenge, &from, &self.here, &mac) => from,
                _ => return Err(invalid("the other node did not prove it knows the secret")),
            };
            let mut answer = vec![1];
            answer.extend_from_slice(&self.answer(&theirs, &self.here, &from));
            stream.write_all(&answer).await?;
            Ok(from)
        })
        .await
        .map_err(|_| invalid("no handshake in time"))??;
        drop(handshake);
        let reader = Arc::clone(&self.readers.entry(from.clone()).or_default());
        let _only_reader = reader.lock().await;
        let mut stream = tokio::io::BufReader::new(stream);
        loop {
            let len = match stream.read_u32().await {
                Ok(len) => len as usize,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if len > MAX_FRAME {
                return Err(invalid("frame too large"));
            }
            let mut bytes = vec![0; len];
            stream.read_exact(&mut bytes).await?;
            let Some(frame) = Frame::decode(&bytes) else {
                tracing::warn!(%from, "unreadable frame from another node; dropped");
                continue;
            };
            match frame {
                Frame::Sync { id, moved } => self.answer_sync(&from, id, moved).await,
                Frame::Synced(id) => {
                    if let Some((_, answered)) = self.syncs.remove(&id) {
                        let _ = answered.send(());
                    }
                }
                frame => {
                    let Some(hub) = hub.upgrade() else {
                        return Ok(());
                    };
                    super::inbox::read_frame(&hub, &self, &from, frame).await;
                }
            }
        }
    }

    /// The HMAC that proves `from` knows the secret, answering `to`'s `challenge`.
    fn mac(&self, challenge: &[u8], from: &NodeId, to: &NodeId) -> Hmac<Sha256> {
        let mut mac = self
            .secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        mac.update(b"rtcio-link\n");
        mac.update(challenge);
        mac.update(from.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(to.as_str().as_bytes());
        mac
    }

    fn answer(&self, challenge: &[u8], from: &NodeId, to: &NodeId) -> Vec<u8> {
        self.mac(challenge, from, to)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `answer` proves `from` knows the secret (compared in constant time).
    fn verify(&self, challenge: &[u8], from: &NodeId, to: &NodeId, answer: &[u8]) -> bool {
        self.mac(challenge, from, to).verify_slice(answer).is_ok()
    }

    /// Opens an authenticated link to `node`.
    async fn connect(&self, node: &NodeId) -> std::io::Result<TcpStream> {
        let address: Option<String> = redis::cmd("GET")
            .arg(link_key(node))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(std::io::Error::other)?;
        let address = address.ok_or_else(|| invalid("the node advertises no link address"))?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut stream = TcpStream::connect(&address).await?;
            let _ = stream.set_nodelay(true);
            let mut challenge = [0; CHALLENGE_BYTES];
            stream.read_exact(&mut challenge).await?;
            let ours: [u8; CHALLENGE_BYTES] = rand::random();
            let mut hello = Vec::new();
            put_str(&mut hello, self.here.as_str());
            hello.extend_from_slice(&self.answer(&challenge, &self.here, node));
            hello.extend_from_slice(&ours);
            stream.write_all(&hello).await?;
            if stream.read_u8().await? != 1 {
                return Err(invalid("link refused"));
            }
            let mut answer = [0; 32];
            stream.read_exact(&mut answer).await?;
            if !self.verify(&ours, node, &self.here, &answer) {
                return Err(invalid("the listener did not prove it knows the secret"));
            }
            Ok(stream)
        })
        .await
        .map_err(|_| invalid("no handshake in time"))?
    }
}

fn keyed(secret: &str) -> Result<Hmac<Sha256>, String> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())
}

fn invalid(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Writes the frames queued for `node` to its link, connecting (again) as needed. Frames
/// that find the node unreachable are dropped: it is dead or not yet listening, and its
/// peers are announced gone by whoever reaps it. After [`CONNECT_ATTEMPTS`] failures in a
/// row the writer stops and takes its queue away, so a dead node costs nothing for long.
async fn write_link(
    links: Weak<Links>,
    node: NodeId,
    writer: u64,
    mut queue: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    let mut failures = 0;
    'connect: while let Some(first) = queue.recv().await {
        batch.push(first);
        let Some(owner) = links.upgrade() else { return };
        let stream = match owner.connect(&node).await {
            Ok(stream) => stream,
            Err(e) => {
                while let Ok(frame) = queue.try_recv() {
                    batch.push(frame);
                }
                tracing::warn!(%node, cause = %e, dropped = batch.len(), "cannot reach another node");
                queued.fetch_sub(batch.iter().map(Vec::len).sum(), Ordering::Relaxed);
                batch.clear();
                failures += 1;
                if failures >= CONNECT_ATTEMPTS {
                    owner.outgoing.remove_if(&node, |_, o| o.writer == writer);
                    return;
                }
                drop(owner);
                tokio::time::sleep(Duration::from_millis(50) * 2u32.pow(failures)).await;
                continue;
            }
        };
        drop(owner);
        failures = 0;
        let mut stream = stream;
        let mut bytes = Vec::new();
        loop {
            while batch.len() < 1024
                && let Ok(frame) = queue.try_recv()
            {
                batch.push(frame);
            }
            // Checked again here, as a frame may have waited in the queue.
            let fresh = links.upgrade().is_some_and(|links| links.is_fresh());
            // A burst's buffer is not kept for good.
            if bytes.capacity() > WRITE_CHUNK * 4 {
                bytes = Vec::new();
            }
            bytes.clear();
            for frame in &batch {
                bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                bytes.extend_from_slice(frame);
            }
            let written = async {
                if !fresh {
                    return Ok(());
                }
                for chunk in bytes.chunks(WRITE_CHUNK) {
                    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(chunk))
                        .await
                        .unwrap_or_else(|_| Err(invalid("writes stalled")))?;
                }
                Ok::<_, std::io::Error>(())
            }
            .await;
            let bytes: usize = batch.iter().map(Vec::len).sum();
            queued.fetch_sub(bytes, Ordering::Relaxed);
            if !fresh {
                tracing::debug!(%node, dropped = batch.len(), "frames dropped: heartbeat stale");
                batch.clear();
            } else if let Err(e) = written {
                tracing::warn!(%node, cause = %e, lost = batch.len(), "link to another node broke");
                batch.clear();
                continue 'connect;
            }
            batch.clear();
            match queue.recv().await {
                Some(frame) => batch.push(frame),
                None => return,
            }
        }
    }
}

/// Binds the link listener; the address to advertise is `advertise` if given, else the
/// bound one (an unspecified IP is advertised as loopback, reachable from this host only).
pub async fn bind(
    listen: SocketAddr,
    advertise: Option<&str>,
) -> std::io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    if bound.ip().is_loopback() && advertise.is_some_and(|host| !is_loopback(host)) {
        tracing::warn!(
            %bound,
            "links listen on loopback but are advertised elsewhere: set CLUSTER_LINK_LISTEN so other hosts can reach them"
        );
    }
    let advertised = match advertise {
        Some(host)
            if host.contains(':')
                && !host.starts_with('[')
                && host.parse::<std::net::Ipv6Addr>().is_ok() =>
        {
            format!("[{host}]:{}", bound.port())
        }
        Some(host) => format!("{host}:{}", bound.port()),
        None if bound.ip().is_unspecified() => {
            tracing::info!(
                "CLUSTER_LINK_ADVERTISE is not set: other nodes can reach this one only from this host"
            );
            format!("127.0.0.1:{}", bound.port())
        }
        None => bound.to_string(),
    };
    Ok((listener, advertised))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> PeerId {
        PeerId::parse(name).expect("valid")
    }

    /// A node may send for 4 s after its last heartbeat that had not lapsed. After one that
    /// had, not until its clients are cut off, and then for 4 s after that heartbeat.
    #[test]
    fn a_node_sends_only_within_four_seconds_of_a_heartbeat() {
        let start = Instant::now();
        let s = |secs: f64| start + Duration::from_secs_f64(secs);
        let fresh = Freshness::new(start);
        assert!(
            fresh.at(s(4.0)) && !fresh.at(s(4.1)),
            "before the first heartbeat"
        );
        fresh.beat(s(3.0), false);
        assert!(fresh.at(s(7.0)) && !fresh.at(s(7.1)));
        fresh.beat(s(2.0), false);
        assert!(
            fresh.at(s(7.0)),
            "an older heartbeat taken late shortens nothing"
        );
        fresh.beat(s(6.0), true);
        assert!(
            !fresh.at(s(7.1)),
            "lapsed: not until the clients are cut off"
        );
        fresh.resume();
        assert!(fresh.at(s(10.0)) && !fresh.at(s(10.1)));
    }

    #[test]
    fn frames_round_trip() {
        let node = NodeId::parse("ab12").expect("node");
        for frame in [
            Frame::Mail(b"a\nchat-message\n{}".to_vec()),
            Frame::Relay {
                sender: peer("a"),
                target: peer("b"),
                rooms: vec!["r\n1".into(), "".into()],
                data: br#"{"x":"\n"}"#.to_vec(),
            },
            Frame::Sync { id: 7, moved: None },
            Frame::Sync {
                id: u64::MAX,
                moved: Some((peer("c"), node)),
            },
            Frame::Synced(3),
            Frame::Unreachable {
                sender: peer("a"),
                target: peer("b"),
            },
        ] {
            assert_eq!(Frame::decode(&frame.encode()), Some(frame));
        }
    }

    /// What other nodes are told to connect to: the advertised host with the bound port, an
    /// IPv6 address in brackets, and without a host the bound address (loopback for one
    /// that listens on every address).
    #[tokio::test]
    async fn the_advertised_address_has_the_bound_port() {
        let listen = |addr: &str| addr.parse::<SocketAddr>().expect("address");
        for (at, host, expected) in [
            ("127.0.0.1:0", Some("fdaa:0:1::3"), "[fdaa:0:1::3]"),
            ("127.0.0.1:0", Some("[fdaa:0:1::3]"), "[fdaa:0:1::3]"),
            ("127.0.0.1:0", Some("node-1.internal"), "node-1.internal"),
            ("127.0.0.1:0", None, "127.0.0.1"),
            ("127.0.0.2:0", None, "127.0.0.2"),
            ("0.0.0.0:0", None, "127.0.0.1"),
        ] {
            let (listener, advertised) = bind(listen(at), host).await.expect("bind");
            let port = listener.local_addr().expect("bound").port();
            assert_eq!(advertised, format!("{expected}:{port}"), "{at} {host:?}");
        }
        assert!(is_loopback("localhost") && is_loopback("[::1]") && is_loopback("127.0.0.2"));
        assert!(!is_loopback("fdaa::3") && !is_loopback("node-1.internal"));
    }

    #[test]
    fn anything_else_is_not_a_frame() {
        for bad in [
            &b""[..],
            b"X",
            b"S\0\0",
            b"s\0\0\0\0\0\0\0\x01extra",
            b"U\0\x01a",
            b"U\0\x01a\0\x05b",
            b"R\0\x01a\0\x01b\0\x02\0\x01r",
            b"S\0\0\0\0\0\0\0\x01\0\x01c\0\x02zz",
        ] {
            assert_eq!(Frame::decode(bad), None, "{bad:?}");
        }
    }
}
