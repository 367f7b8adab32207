//! A deliberately small Socket.IO v4 client (Engine.IO v4 over a WebSocket, namespace `/`,
//! text packets only). It exists so the integration tests and the load generator talk to the
//! server over real TCP the way a browser's `socket.io-client` does, while staying cheap
//! enough that one process can hold tens of thousands of connections: one task per
//! connection, which answers pings itself and hands events to the owner through a channel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One event received from the server: `42["name", data]`.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// The server's answer to an event emitted with [`Client::emit_with_ack`]: `43<id>[args...]`.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: u64,
    pub args: Vec<Value>,
}

/// Why a connection did not come up.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the namespace CONNECT with a CONNECT_ERROR (`44{"message":..}`).
    Refused(String),
    /// Transport or protocol failure before the namespace was joined.
    Io(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(m) => write!(f, "connect refused: {m}"),
            ConnectError::Io(m) => write!(f, "connect failed: {m}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of the server.
    pub addr: SocketAddr,
    /// The CONNECT auth payload, e.g. `{"token": "..."}`; `None` sends a bare CONNECT.
    pub auth: Option<Value>,
    /// Local address to bind before connecting (spreads load-test sockets over 127.x.y.z).
    pub bind: Option<IpAddr>,
    /// Give up on the handshake after this long.
    pub timeout: Duration,
    /// Extra headers on the WebSocket upgrade request (e.g. a proxy's client-address header).
    pub headers: Vec<(String, String)>,
}

impl Options {
    pub fn new(addr: SocketAddr, auth: Option<Value>) -> Self {
        Options {
            addr,
            auth,
            bind: None,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
        }
    }
}

/// A connected client. Dropping it closes the connection.
pub struct Client {
    /// The Socket.IO socket id the server assigned (the id peers see).
    pub sid: String,
    sender: Sender,
    events: mpsc::UnboundedReceiver<(Event, Instant)>,
    acks: mpsc::UnboundedReceiver<Ack>,
}

/// A cloneable handle that can send on a connection while another task owns the [`Client`]
/// and reads its events (the load generator sends from one task and receives in another).
#[derive(Clone)]
pub struct Sender {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    ack_ids: Arc<AtomicU64>,
}

impl Sender {
    /// Emits `event` with one argument.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) {
        let packet = serde_json::to_string(&(event, data)).map(|body| format!("42{body}"));
        if let Ok(packet) = packet {
            let _ = self.outgoing.send(Outgoing::Text(packet));
        }
    }

    /// Emits `event` with one argument, asking for an acknowledgement; returns its id, which
    /// the server's [`Ack`] carries.
    pub fn emit_with_ack<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> u64 {
        let id = self.ack_ids.fetch_add(1, Ordering::Relaxed);
        let packet = serde_json::to_string(&(event, data)).map(|body| format!("42{id}{body}"));
        if let Ok(packet) = packet {
            let _ = self.outgoing.send(Outgoing::Text(packet));
        }
        id
    }

    /// Sends one Engine.IO text frame exactly as given.
    pub fn send_raw(&self, frame: String) {
        let _ = self.outgoing.send(Outgoing::Text(frame));
    }

    /// Drops the connection without a WebSocket close frame, as a network failure would.
    pub fn abort(&self) {
        let _ = self.outgoing.send(Outgoing::Abort);
    }

    /// Closes the WebSocket politely.
    pub fn close(&self) {
        let _ = self.outgoing.send(Outgoing::Close);
    }

    /// Stops (false) or resumes (true) reading from the socket, as a client on a stalled
    /// network would: what the server sends meanwhile waits in buffers and queues.
    pub fn read(&self, reading: bool) {
        let _ = self.outgoing.send(Outgoing::Read(reading));
    }
}

enum Outgoing {
    Text(String),
    Close,
    Abort,
    Read(bool),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Client {
    pub async fn connect(opts: Options) -> Result<Client, ConnectError> {
        tokio::time::timeout(opts.timeout, Self::handshake(&opts))
            .await
            .map_err(|_| ConnectError::Io("handshake timed out".into()))?
    }

    async fn handshake(opts: &Options) -> Result<Client, ConnectError> {
        let io = |e: &dyn std::fmt::Display| ConnectError::Io(e.to_string());
        let socket = if opts.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io(&e))?;
        if let Some(ip) = opts.bind {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| io(&e))?;
        }
        let stream = socket.connect(opts.addr).await.map_err(|e| io(&e))?;
        stream.set_nodelay(true).map_err(|e| io(&e))?;
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", opts.addr);
        let mut request = url.into_client_request().map_err(|e| io(&e))?;
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| io(&e))?;
            let value = HeaderValue::from_str(value).map_err(|e| io(&e))?;
            request.headers_mut().insert(name, value);
        }
        // tungstenite's default 128 KiB read buffer is zero-filled before every read, which
        // costs the load generator CPU and memory per connection; 4 KiB (engineioxide's own
        // default) holds any signaling frame but large SDP in one or two reads.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .map_err(|e| io(&e))?;

        // Engine.IO OPEN, then the Socket.IO CONNECT for namespace `/`.
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            return Err(ConnectError::Io(format!(
                "expected engine.io open, got {open}"
            )));
        }
        let connect = match &opts.auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_string(),
        };
        ws.send(Message::text(connect)).await.map_err(|e| io(&e))?;
        let sid = loop {
            let reply = next_text(&mut ws).await?;
            if reply == "2" {
                ws.send(Message::text("3")).await.map_err(|e| io(&e))?;
                continue;
            }
            if let Some(body) = reply.strip_prefix("40") {
                let v: Value = serde_json::from_str(body).map_err(|e| io(&e))?;
                break v["sid"]
                    .as_str()
                    .ok_or_else(|| ConnectError::Io(format!("no sid in {reply}")))?
                    .to_string();
            }
            if let Some(body) = reply.strip_prefix("44") {
                let v: Value = serde_json::from_str(body).map_err(|e| io(&e))?;
                let message = v["message"].as_str().unwrap_or(body).to_string();
                return Err(ConnectError::Refused(message));
            }
            return Err(ConnectError::Io(format!("unexpected packet {reply}")));
        };

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(ws, out_rx, ev_tx, ack_tx));
        Ok(Client {
            sid,
            sender: Sender {
                outgoing: out_tx,
                ack_ids: Arc::default(),
            },
            events: ev_rx,
            acks: ack_rx,
        })
    }

    /// Emits `event` with one argument.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) {
        self.sender.emit(event, data);
    }

    /// [`Sender::emit_with_ack`].
    pub fn emit_with_ack<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> u64 {
        self.sender.emit_with_ack(event, data)
    }

    /// The next acknowledgement if one arrives within `wait`.
    pub async fn next_ack_within(&mut self, wait: Duration) -> Option<Ack> {
        tokio::time::timeout(wait, self.acks.recv())
            .await
            .ok()
            .flatten()
    }

    /// A handle that sends on this connection from another task.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Sends one Engine.IO text frame exactly as given (for malformed-input tests).
    pub fn send_raw(&self, frame: String) {
        self.sender.send_raw(frame);
    }

    /// The next event, or `None` once the connection is gone.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await.map(|(event, _)| event)
    }

    /// The next event with the instant its frame was decoded off the socket (for latency
    /// measurements that should not include the hop to the reading task).
    pub async fn next_timed_event(&mut self) -> Option<(Event, Instant)> {
        self.events.recv().await
    }

    /// The next event if one arrives within `wait`.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
            .map(|(event, _)| event)
    }

    /// An event that has already arrived, without waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok().map(|(event, _)| event)
    }

    /// Closes the WebSocket politely (the server sees a transport close).
    pub fn close(&self) {
        self.sender.close();
    }

    /// Drops the connection without a close frame (the server sees a transport error).
    pub fn abort(&self) {
        self.sender.abort();
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, ConnectError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnectError::Io("connection closed".into()));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Io(e.to_string())),
        }
    }
}

/// Owns the socket: forwards outgoing frames, answers pings, decodes events.
async fn pump(
    mut ws: Ws,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::UnboundedSender<(Event, Instant)>,
    acks: mpsc::UnboundedSender<Ack>,
) {
    let mut reading = true;
    loop {
        tokio::select! {
            out = outgoing.recv() => match out {
                Some(Outgoing::Text(frame)) => {
                    if ws.send(Message::text(frame)).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close) | None => {
                    let _ = ws.close(None).await;
                    break;
                }
                Some(Outgoing::Abort) => break,
                Some(Outgoing::Read(resume)) => reading = resume,
            },
            frame = ws.next(), if reading => match frame {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text == "2" {
                        if ws.send(Message::text("3")).await.is_err() {
                            break;
                        }
                    } else if let Some(body) = text.strip_prefix("42") {
                        if let Some(event) = decode_event(body) {
                            let _ = events.send((event, Instant::now()));
                        }
                    } else if let Some(body) = text.strip_prefix("43") {
                        if let Some(ack) = decode_ack(body) {
                            let _ = acks.send(ack);
                        }
                    } else if text.starts_with('1') || text.starts_with("41") {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn decode_event(body: &str) -> Option<Event> {
    let Value::Array(mut parts) = serde_json::from_str::<Value>(body).ok()? else {
        return None;
    };
    if parts.is_empty() {
        return None;
    }
    let name = parts.remove(0).as_str()?.to_string();
    let data = if parts.is_empty() {
        Value::Null
    } else {
        parts.remove(0)
    };
    Some(Event { name, data })
}

fn decode_ack(body: &str) -> Option<Ack> {
    let digits = body.find(|c: char| !c.is_ascii_digit())?;
    let (id, args) = body.split_at(digits);
    Some(Ack {
        id: id.parse().ok()?,
        args: serde_json::from_str(args).ok()?,
    })
}
