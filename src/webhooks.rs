//! Webhooks: an application's backend learns when rooms start and finish and who joins and
//! leaves them (for billing, audit, presence) without polling, from signed JSON POSTs.
//!
//! Each event is recorded in the same atomic step as the membership change it describes: in
//! memory mode under the room's map entry (`store::memory`), in cluster mode by the Lua
//! script itself (`store::redis`), onto one list in Redis. The queue's order is therefore the
//! order of the changes, per room, whichever node made them. One delivery loop reads either
//! queue: it peeks at the head, POSTs it until the receiver answers 2xx (retrying with
//! exponential backoff; later events wait behind it), and only then removes it. In a cluster
//! only the node holding the delivery lease sends, so each event goes out once, in order; a
//! sender that crashes between a POST and its removal makes the next sender repeat that one
//! event, which its `Webhook-Id` lets receivers recognise.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::config::Config;
use crate::server::StartError;
use crate::store::Member;
use crate::store::StoreError;
use crate::store::redis::WebhookList;

/// Shortest secret accepted: a short HMAC key is a guessable one.
const MIN_SECRET_BYTES: usize = 16;
/// The first retry of a failed delivery waits this long; each next one twice as long, up to
/// [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// How often dropped events are looked for, so a full queue logs a line per period, not one
/// per event.
const DROP_CHECK_EVERY: Duration = Duration::from_secs(10);
/// (Cluster mode) how often an empty list is looked at again: other nodes' events arrive
/// without a local wake-up.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// (Cluster mode) the delivery lease's lifetime, and how often its holder renews it (or any
/// node tries to take it): a sender that dies is replaced within the lifetime.
const LEASE_FOR: Duration = Duration::from_secs(5);
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(1);

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RoomStarted,
    RoomFinished,
    ParticipantJoined,
    ParticipantLeft,
}

impl Kind {
    /// The `event` field; the Lua scripts of `store::redis` spell the same names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RoomStarted => "room_started",
            Kind::RoomFinished => "room_finished",
            Kind::ParticipantJoined => "participant_joined",
            Kind::ParticipantLeft => "participant_left",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    id: String,
    event: &'static str,
    room_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    participant: Option<Participant<'a>>,
    created_at: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Participant<'a> {
    id: &'a str,
    name: &'a str,
    user_id: &'a str,
}

/// The events of one membership change: ids `<random base>-<n>`, one timestamp.
pub struct Batch {
    base: String,
    at: u64,
    count: u32,
}

/// Random bytes in an id base: event ids never repeat across nodes and restarts.
const ID_BASE_BYTES: usize = 16;

impl Batch {
    pub fn new() -> Batch {
        Batch {
            base: crate::auth::random_hex(ID_BASE_BYTES),
            at: unix_millis(),
            count: 0,
        }
    }

    /// Ids of this batch's events start with this; the Redis scripts append `-<n>` themselves.
    pub fn id_base(&self) -> &str {
        &self.base
    }

    /// `createdAt`, unix milliseconds.
    pub fn created_at(&self) -> u64 {
        self.at
    }

    /// The next event of the batch, as the JSON body to POST.
    pub fn event(&mut self, kind: Kind, room: &str, participant: Option<&Member>) -> String {
        self.count += 1;
        let event = Event {
            id: format!("{}-{}", self.base, self.count),
            event: kind.as_str(),
            room_id: room,
            participant: participant.map(|m| Participant {
                id: m.peer.as_str(),
                name: &m.name,
                user_id: &m.user_id,
            }),
            created_at: self.at,
        };
        // Strings and integers only: serializing cannot fail.
        serde_json::to_string(&event).unwrap_or_default()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `Webhook-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(key: &Hmac<Sha256>, t: u64, body: &str) -> String {
    let mut mac = key.clone();
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={digest}")
}

/// Events waiting in this process (memory mode), oldest first, at most `cap` of them.
pub struct LocalQueue {
    events: std::sync::Mutex<VecDeque<String>>,
    cap: usize,
    dropped: AtomicU64,
    more: Notify,
}

impl LocalQueue {
    pub fn new(cap: usize) -> LocalQueue {
        LocalQueue {
            events: Default::default(),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
            more: Notify::new(),
        }
    }

    /// Adds an event behind the others; a full queue drops its oldest.
    pub fn push(&self, body: String) {
        let mut events = self.events();
        if events.len() >= self.cap {
            events.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        events.push_back(body);
        drop(events);
        self.more.notify_one();
    }

    fn events(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn head(&self) -> Option<String> {
        self.events().front().cloned()
    }

    /// Removes the head if it is still `body` (a full queue may have dropped it meanwhile).
    fn pop(&self, body: &str) {
        let mut events = self.events();
        if events.front().is_some_and(|head| head == body) {
            events.pop_front();
        }
    }

    fn len(&self) -> usize {
        self.events().len()
    }
}

/// Where events wait: this process (memory mode) or Redis (cluster mode).
pub enum Queue {
    Local(Arc<LocalQueue>),
    Redis(WebhookList),
}

impl Queue {
    async fn head(&self) -> Result<Option<String>, StoreError> {
        match self {
            Queue::Local(queue) => Ok(queue.head()),
            Queue::Redis(list) => list.head().await,
        }
    }

    async fn pop(&self, body: &str) -> Result<(), StoreError> {
        match self {
            Queue::Local(queue) => {
                queue.pop(body);
                Ok(())
            }
            Queue::Redis(list) => list.pop(body).await,
        }
    }

    /// Returns once there may be more to deliver.
    async fn wait_for_more(&self) {
        match self {
            Queue::Local(queue) => queue.more.notified().await,
            Queue::Redis(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }

    async fn dropped(&self) -> Result<u64, StoreError> {
        match self {
            Queue::Local(queue) => Ok(queue.dropped.load(Ordering::Relaxed)),
            Queue::Redis(list) => list.dropped().await,
        }
    }
}

/// Where and how events are POSTed, from the settings.
pub struct Settings {
    target: Target,
    key: Hmac<Sha256>,
    timeout: Duration,
    /// Most events waiting.
    pub queue: usize,
}

impl Settings {
    /// The webhook settings, `None` without `WEBHOOK_URL`; a URL without a usable secret, or
    /// one that is not `http(s)://host…`, is a start error.
    pub fn from_config(config: &Config) -> Result<Option<Settings>, StartError> {
        let Some(url) = &config.webhook_url else {
            return Ok(None);
        };
        let Some(secret) = &config.webhook_secret else {
            return Err(StartError(
                "WEBHOOK_URL is set but WEBHOOK_SECRET is not: webhooks are signed, so set a \
                 secret of at least 16 bytes"
                    .into(),
            ));
        };
        if secret.expose().len() < MIN_SECRET_BYTES {
            return Err(StartError(format!(
                "WEBHOOK_SECRET must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        if config.webhook_queue == 0 {
            return Err(StartError("WEBHOOK_QUEUE must be at least 1".into()));
        }
        let key = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .map_err(|e| StartError(format!("WEBHOOK_SECRET is not usable: {e}")))?;
        Ok(Some(Settings {
            target: Target::parse(url)?,
            key,
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            queue: config.webhook_queue,
        }))
    }
}

/// The receiver's address, split for a connection and its request.
struct Target {
    /// For connecting (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    path: String,
    /// `https://`: the connector, trusting the system's roots.
    tls: Option<TlsConnector>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, StartError> {
        let bad = |why: &str| StartError(format!("WEBHOOK_URL {url:?} is not usable: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (None, 80),
            Some("https") => (Some(tls_connector()?), 443),
            _ => return Err(bad("it must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority.host();
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port: authority.port_u16().unwrap_or(default_port),
            authority: authority.as_str().into(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).into(),
            tls,
        })
    }
}

fn tls_connector() -> Result<TlsConnector, StartError> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(StartError(
            "WEBHOOK_URL is https:// but this system has no CA certificates to verify it with"
                .into(),
        ));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError(format!("TLS for webhooks: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The only field the sender reads back from a body.
#[derive(Deserialize)]
struct EventId {
    id: String,
}

/// Delivers the events of one queue, once each and in order.
pub struct Webhooks {
    queue: Queue,
    settings: Settings,
    /// Whether this node may send now: always in memory mode; in cluster mode while it holds
    /// the delivery lease.
    holding: watch::Receiver<bool>,
}

impl Webhooks {
    /// Starts delivering from `queue` (and, in cluster mode, competing for the lease).
    pub fn start(settings: Settings, queue: Queue) -> Arc<Webhooks> {
        let (lease_tx, holding) = watch::channel(matches!(queue, Queue::Local(_)));
        let webhooks = Arc::new(Webhooks {
            queue,
            settings,
            holding,
        });
        if let Queue::Redis(list) = &webhooks.queue {
            tokio::spawn(keep_lease(list.clone(), lease_tx));
        }
        tokio::spawn(Arc::clone(&webhooks).deliver());
        tokio::spawn(Arc::clone(&webhooks).watch_drops());
        webhooks
    }

    /// (Memory mode) waits until every waiting event is delivered or `deadline` passes (then
    /// logs how many were left).
    pub async fn flush(&self, deadline: tokio::time::Instant) {
        let Queue::Local(queue) = &self.queue else {
            return;
        };
        loop {
            let left = queue.len();
            if left == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(left, "shutting down with webhook events undelivered");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (Cluster mode) gives the lease up, so another node takes the sending over at once.
    pub async fn release(&self) {
        if let Queue::Redis(list) = &self.queue
            && let Err(e) = list.release().await
        {
            tracing::warn!(cause = %e, "could not release the webhook lease; it will lapse");
        }
    }

    async fn deliver(self: Arc<Self>) {
        let mut holding = self.holding.clone();
        loop {
            if holding.wait_for(|held| *held).await.is_err() {
                return;
            }
            let body = match self.queue.head().await {
                Ok(Some(body)) => body,
                Ok(None) => {
                    self.queue.wait_for_more().await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "webhook queue unreadable");
                    tokio::time::sleep(FIRST_RETRY).await;
                    continue;
                }
            };
            let delivered = match serde_json::from_str::<EventId>(&body) {
                Ok(event) => self.send_until_accepted(&event.id, &body, &holding).await,
                Err(e) => {
                    tracing::error!(cause = %e, "dropping a webhook event that is not JSON");
                    true
                }
            };
            if delivered && let Err(e) = self.queue.pop(&body).await {
                // It stays at the head and is sent again: receivers dedupe by its id.
                tracing::warn!(cause = %e, "could not remove a delivered webhook event");
            }
        }
    }

    /// POSTs one event until the receiver takes it; false if this node lost the lease
    /// meanwhile (the new holder sends it).
    async fn send_until_accepted(
        &self,
        id: &str,
        body: &str,
        holding: &watch::Receiver<bool>,
    ) -> bool {
        let mut wait = FIRST_RETRY;
        loop {
            if !*holding.borrow() {
                return false;
            }
            let outcome = tokio::time::timeout(self.settings.timeout, self.post(id, body)).await;
            let why = match outcome {
                Ok(Ok(status)) if status.is_success() => return true,
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {:?}", self.settings.timeout),
            };
            tracing::warn!(id, cause = %why, retry_in = ?wait, "webhook not delivered");
            tokio::time::sleep(wait).await;
            wait = next_retry(wait);
        }
    }

    /// One POST on a fresh connection (events are few; a pooled connection would need
    /// keeping alive for little gain).
    async fn post(&self, id: &str, body: &str) -> Result<StatusCode, String> {
        let target = &self.settings.target;
        let t = unix_millis() / 1000;
        let request = Request::post(target.path.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "rtcio-signal")
            .header("Webhook-Id", id)
            .header("Webhook-Signature", signature(&self.settings.key, t, body))
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| format!("request: {e}"))?;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &target.tls {
            None => exchange(TokioIo::new(tcp), request).await,
            Some(tls) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| format!("TLS name: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                exchange(TokioIo::new(stream), request).await
            }
        }
    }

    /// Counts and logs events dropped from a full queue, at most once per
    /// [`DROP_CHECK_EVERY`]. In a cluster the count is shared and only the lease holder
    /// reports it, counting from when it took the lease: what was dropped before was its
    /// predecessor's to report.
    async fn watch_drops(self: Arc<Self>) {
        let mut holding = self.holding.clone();
        loop {
            if holding.wait_for(|held| *held).await.is_err() {
                return;
            }
            let mut seen = None;
            let mut tick = tokio::time::interval(DROP_CHECK_EVERY);
            while *holding.borrow() {
                tick.tick().await;
                let Ok(total) = self.queue.dropped().await else {
                    continue;
                };
                if let Some(before) = seen
                    && total > before
                {
                    crate::metrics::get()
                        .webhooks_dropped
                        .inc_by(total - before);
                    tracing::warn!(
                        dropped = total - before,
                        total,
                        "webhook queue full: the oldest events were dropped"
                    );
                }
                seen = Some(total);
            }
        }
    }
}

/// The wait before the retry after one that waited `wait`: retries back off, doubling up to
/// [`LAST_RETRY`], so a receiver that is down is not hammered.
fn next_retry(wait: Duration) -> Duration {
    (wait * 2).min(LAST_RETRY)
}

/// Sends `request` on `io` and reads the status of the answer.
async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender.send_request(request);
    tokio::pin!(connection);
    tokio::select! {
        response = response => response.map(|r| r.status()).map_err(|e| format!("HTTP: {e}")),
        ended = &mut connection => Err(match ended {
            Ok(()) => "connection closed without an answer".into(),
            Err(e) => format!("HTTP: {e}"),
        }),
    }
}

/// (Cluster mode) takes the delivery lease when it is free and renews it while held.
async fn keep_lease(list: WebhookList, holding: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(LEASE_RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let held = match list.claim(LEASE_FOR).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(cause = %e, "webhook lease unknown: Redis unreachable");
                false
            }
        };
        if holding.send_replace(held) != held {
            tracing::info!(
                held,
                "webhook sending {}",
                if held { "taken up" } else { "given up" }
            );
        }
        if holding.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The webhook settings from flags naming a receiver and `secret`.
    fn settings_with_secret(secret: &str) -> Result<Option<Settings>, StartError> {
        let config = Config::try_parse_from([
            "rtcio-signal",
            "--webhook-url",
            "http://127.0.0.1:9/hooks",
            "--webhook-secret",
            secret,
        ])
        .expect("settings parse");
        Settings::from_config(&config)
    }

    #[test]
    fn a_secret_of_fewer_than_min_secret_bytes_is_refused() {
        let accepted = |secret: &str| matches!(settings_with_secret(secret), Ok(Some(_)));
        assert!(
            accepted(&"s".repeat(MIN_SECRET_BYTES)),
            "exactly the minimum"
        );
        assert!(accepted(&"s".repeat(MIN_SECRET_BYTES + 1)), "longer");
        // Bytes, not characters: eight two-byte characters are enough.
        assert!(accepted(&"é".repeat(MIN_SECRET_BYTES / 2)), "multi-byte");
        match settings_with_secret(&"s".repeat(MIN_SECRET_BYTES - 1)) {
            Err(StartError(why)) => {
                assert_eq!(why, "WEBHOOK_SECRET must be at least 16 bytes");
            }
            Ok(_) => panic!("a secret one byte short of the minimum was accepted"),
        }
    }

    #[test]
    fn retries_double_from_the_first_wait_up_to_the_last() {
        let waits: Vec<Duration> =
            std::iter::successors(Some(FIRST_RETRY), |wait| Some(next_retry(*wait)))
                .take(9)
                .collect();
        let millis = [
            500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000,
        ];
        assert_eq!(waits, millis.map(Duration::from_millis));
    }

    /// The delivery loop parks on an empty local queue until a push wakes it, rather than
    /// spinning on `head`.
    #[tokio::test]
    async fn an_empty_local_queue_waits_until_an_event_is_pushed() {
        let local = Arc::new(LocalQueue::new(4));
        let queue = Queue::Local(Arc::clone(&local));
        let waiting = queue.wait_for_more();
        tokio::pin!(waiting);
        let still_waiting = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(still_waiting.is_err(), "returned with nothing pushed");
        local.push("e1".into());
        tokio::time::timeout(Duration::from_secs(5), &mut waiting)
            .await
            .expect("the push wakes the waiting loop");
    }

    #[test]
    fn a_signature_is_the_hmac_of_the_timestamp_and_body() {
        let key = Hmac::<Sha256>::new_from_slice(b"webhook-secret-0123456789").expect("key");
        let body = r#"{"id":"a-1","event":"room_started"}"#;
        let signed = signature(&key, 1_700_000_000, body);
        let (t, v1) = signed
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=…,v1=…");
        assert_eq!(t, "1700000000");
        assert_eq!(v1.len(), 64);
        assert!(
            v1.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let mut mac = key.clone();
        mac.update(format!("1700000000.{body}").as_bytes());
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected);
        assert_ne!(signature(&key, 1_700_000_001, body), signed);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_them() {
        let queue = LocalQueue::new(3);
        for n in 1..=5 {
            queue.push(format!("e{n}"));
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(queue.head().as_deref(), Some("e3"));
        queue.pop("e2");
        assert_eq!(queue.head().as_deref(), Some("e3"), "only the head it was");
        queue.pop("e3");
        assert_eq!(queue.head().as_deref(), Some("e4"));
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn events_of_a_batch_share_a_base_and_time_and_count_up() {
        let member = Member {
            peer: crate::ids::PeerId::parse("p1").expect("peer"),
            name: "Ann \"A\"".into(),
            user_id: "u1".into(),
            media: None,
            node: None,
        };
        let mut batch = Batch::new();
        let started: serde_json::Value =
            serde_json::from_str(&batch.event(Kind::RoomStarted, "r", None)).expect("json");
        let joined: serde_json::Value =
            serde_json::from_str(&batch.event(Kind::ParticipantJoined, "r", Some(&member)))
                .expect("json");
        assert_eq!(started["id"], format!("{}-1", batch.id_base()));
        assert_eq!(joined["id"], format!("{}-2", batch.id_base()));
        assert_eq!(started.get("participant"), None);
        assert_eq!(
            joined["participant"],
            serde_json::json!({ "id": "p1", "name": "Ann \"A\"", "userId": "u1" })
        );
        assert_eq!(joined["createdAt"], batch.created_at());
        assert_eq!(joined["roomId"], "r");
        assert_eq!(joined["event"], "participant_joined");
    }
}
