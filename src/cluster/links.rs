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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, RwLockReadGuard, mpsc, oneshot};

use redis::aio::ConnectionManager;

use crate::hub::Hub;
use crate::ids::{NodeId, PeerId};
use crate::store::redis::link_key;

/// Largest frame a link accepts; a bigger one closes the link (no node of ours writes one).
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Frames queued for one node; beyond this they are dropped, with an error logged.
const LINK_DEPTH: usize = 65_536;
const CHALLENGE_BYTES: usize = 32;
/// How long a connecting node has to answer the challenge, and to connect at all.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node waits for the others' answers to a `sync`.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// Most remote peers whose node is remembered; past it the memory starts over.
const MOST_ROUTES: usize = 100_000;

pub struct Links {
    here: NodeId,
    /// Keyed with the cluster's link secret.
    keyed: Hmac<Sha256>,
    /// Where the other nodes' link addresses are.
    redis: ConnectionManager,
    /// The queue of each node this one writes to (its writer task holds the other end).
    outgoing: DashMap<NodeId, mpsc::Sender<Vec<u8>>>,
    /// The node each remote peer's relays go to.
    routes: DashMap<PeerId, NodeId>,
    gate: RwLock<()>,
    /// `sync`s this node sent and awaits answers to.
    syncs: DashMap<u64, oneshot::Sender<()>>,
    next_sync: AtomicU64,
}

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
    pub fn new(
        here: NodeId,
        secret: &[u8],
        redis: ConnectionManager,
    ) -> Result<Arc<Links>, String> {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|e| e.to_string())?;
        Ok(Arc::new(Links {
            here,
            keyed,
            redis,
            outgoing: DashMap::new(),
            routes: DashMap::new(),
            gate: RwLock::new(()),
            syncs: DashMap::new(),
            next_sync: AtomicU64::new(1),
        }))
    }

    pub fn here(&self) -> &NodeId {
        &self.here
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
        let bytes = frame.encode();
        let queue = match self.outgoing.get(node) {
            Some(queue) => queue.clone(),
            None => self
                .outgoing
                .entry(node.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(LINK_DEPTH);
                    tokio::spawn(write_link(Arc::downgrade(self), node.clone(), rx));
                    tx
                })
                .clone(),
        };
        if let Err(e) = queue.try_send(bytes) {
            tracing::error!(%node, cause = %e, "frame for another node dropped: its link is behind");
        }
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
        for (id, node, answer) in answers {
            if tokio::time::timeout(SYNC_TIMEOUT, answer).await.is_err() {
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
            let links = Arc::clone(&self);
            let hub = hub.clone();
            tokio::spawn(async move {
                if let Err(e) = links.read_link(stream, hub).await {
                    tracing::warn!(%address, cause = %e, "link from another node closed");
                }
            });
        }
    }

    async fn read_link(
        self: Arc<Self>,
        mut stream: TcpStream,
        hub: Weak<Hub>,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let challenge: [u8; CHALLENGE_BYTES] = rand::random();
        let from = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            stream.write_all(&challenge).await?;
            let len = stream.read_u16().await? as usize;
            let mut id = vec![0; len.min(64)];
            stream.read_exact(&mut id).await?;
            let mut mac = [0; 32];
            stream.read_exact(&mut mac).await?;
            let from = std::str::from_utf8(&id).ok().and_then(NodeId::parse);
            match from {
                Some(from) if len <= 64 && self.verify(&challenge, &from, &mac) => Ok(from),
                _ => Err(invalid("the other node did not prove it knows the secret")),
            }
        })
        .await
        .map_err(|_| invalid("no handshake in time"))??;
        stream.write_all(&[1]).await?;
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

    fn mac(&self, challenge: &[u8], from: &NodeId, to: &NodeId) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(b"rtcio-link\n");
        mac.update(challenge);
        mac.update(from.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(to.as_str().as_bytes());
        mac
    }

    fn verify(&self, challenge: &[u8], from: &NodeId, answer: &[u8]) -> bool {
        self.mac(challenge, from, &self.here)
            .verify_slice(answer)
            .is_ok()
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
            let answer = self
                .mac(&challenge, &self.here, node)
                .finalize()
                .into_bytes();
            let mut hello = Vec::with_capacity(2 + self.here.as_str().len() + answer.len());
            put_str(&mut hello, self.here.as_str());
            hello.extend_from_slice(&answer);
            stream.write_all(&hello).await?;
            match stream.read_u8().await? {
                1 => Ok(stream),
                _ => Err(invalid("link refused")),
            }
        })
        .await
        .map_err(|_| invalid("no handshake in time"))?
    }
}

fn invalid(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Writes the frames queued for `node` to its link, connecting (again) as needed. Frames
/// that find the node unreachable are dropped: it is dead or not yet listening, and its
/// peers are announced gone by whoever reaps it.
async fn write_link(links: Weak<Links>, node: NodeId, mut queue: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::new();
    let mut backoff = Duration::from_millis(50);
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
                batch.clear();
                drop(owner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        drop(owner);
        backoff = Duration::from_millis(50);
        let mut stream = BufWriter::with_capacity(64 * 1024, stream);
        loop {
            while batch.len() < 1024
                && let Ok(frame) = queue.try_recv()
            {
                batch.push(frame);
            }
            let written = async {
                for frame in &batch {
                    stream.write_u32(frame.len() as u32).await?;
                    stream.write_all(frame).await?;
                }
                stream.flush().await
            };
            if let Err(e) = written.await {
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
            tracing::warn!(
                "CLUSTER_LINK_ADVERTISE is not set: other nodes can reach this one only from this host"
            );
            format!("127.0.0.1:{}", bound.port())
        }
        None => bound.to_string(),
    };
    Ok((listener, advertised))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> PeerId {
        PeerId::parse(name).expect("valid")
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
