//! A session's life: opened fresh or taken up again with a resume credential, greeted,
//! kept away for the recovery window when its connection drops, and ended (its departure
//! announced) when the client leaves on purpose, the window runs out, or it kept more than
//! its bounds while away.
//!
//! Telling a drop from a departure: a WebSocket close frame, a polling close packet or a
//! Socket.IO namespace disconnect is the client leaving (socketioxide reports
//! `TransportClose` or `ClientNSDisconnect`); a connection that just ends or goes silent is a
//! drop (`TransportError`, `HeartbeatTimeout`). Anything the server itself closes is final.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socketioxide::extract::SocketRef;
use socketioxide::socket::{DisconnectReason, Sid};

use super::Hub;
use crate::auth::Identity;
use crate::ids::{Credential, CredentialDigest, PeerId, Presented};
use crate::metrics;
use crate::session::Session;

/// What a reconnecting client presents: `auth: { token, resume, received }`.
pub struct Resume {
    pub(crate) presented: Presented,
    pub(crate) received: u64,
}

impl Resume {
    /// The resume fields of a CONNECT auth payload; `None` when absent or malformed (the
    /// connection is then a fresh session, as the protocol says).
    pub fn parse(auth: &serde_json::Value) -> Option<Resume> {
        Some(Resume {
            presented: Presented::parse(auth.get("resume")?.as_str()?)?,
            received: auth.get("received")?.as_u64()?,
        })
    }
}

/// How long a socket admitted by the middleware may go without its greeting.
const GREETING_DEADLINE: Duration = Duration::from_secs(10);

/// A socket admitted by the middleware and not yet greeted by the connect handler.
pub(crate) struct Pending {
    session: Arc<Session>,
    credential: Credential,
    /// How many of the session's events the client says it received (0 when fresh).
    received: u64,
    recovered: bool,
    /// Fired once greeted; the session's events wait for it.
    greeted: tokio::sync::oneshot::Sender<()>,
}

impl Hub {
    /// The session `sid` will serve: the one `resume` names, if it may be taken up (here, or
    /// handed over by the node holding it), else a fresh one.
    pub(crate) async fn open_session(
        self: &Arc<Self>,
        sid: Sid,
        identity: Identity,
        resume: Option<Resume>,
    ) -> Arc<Session> {
        if let Some(resume) = resume {
            let taken = match self.take_up(sid, &identity, &resume) {
                Some(session) => Some(session),
                None => self.take_over(sid, &identity, &resume).await,
            };
            if let Some(session) = taken {
                return session;
            }
        }
        let peer = PeerId::of_socket(sid);
        let (credential, digest) = Credential::issue(&peer, &self.node);
        let session = Arc::new(Session::new(
            peer,
            identity,
            digest,
            Arc::clone(&self.connected),
        ));
        self.delivery.register(Arc::clone(&session));
        tracing::debug!(peer = %session.peer, user = %session.identity.user_id, "session opened");
        self.await_greeting(sid, &session, credential, 0, false);
        session
    }

    /// Holds the session's events back until `sid` has been greeted. If socketioxide drops
    /// the connection before answering its CONNECT, neither the connect nor the disconnect
    /// handler runs: after [`GREETING_DEADLINE`] a fresh session nobody heard of is ended (a
    /// recovered one stays away for its window).
    pub(super) fn await_greeting(
        self: &Arc<Self>,
        sid: Sid,
        session: &Arc<Session>,
        credential: Credential,
        received: u64,
        recovered: bool,
    ) {
        let (greeted, greeting) = tokio::sync::oneshot::channel();
        let (hub, job_session) = (Arc::clone(self), Arc::clone(session));
        session.run_always(async move {
            if tokio::time::timeout(GREETING_DEADLINE, greeting)
                .await
                .is_err()
                && hub
                    .pending
                    .remove(&sid)
                    .is_some_and(|(_, pending)| !pending.recovered)
            {
                hub.end(&job_session, None);
            }
        });
        let pending = Pending {
            session: Arc::clone(session),
            credential,
            received,
            recovered,
            greeted,
        };
        self.pending.insert(sid, pending);
    }

    /// Takes up the session `resume` names for socket `sid`, if the credential is its current
    /// one, the token is the same user's, the session has not ended, and every event the
    /// client missed is still kept. A connection still serving it is closed without any
    /// announcement.
    pub(super) fn take_up(
        self: &Arc<Self>,
        sid: Sid,
        identity: &Identity,
        resume: &Resume,
    ) -> Option<Arc<Session>> {
        let window = self.limits.recovery_window?;
        let session = self.delivery.session(&resume.presented.peer)?;
        if session.identity.user_id != identity.user_id {
            return None;
        }
        let (credential, digest) = Credential::issue(&session.peer, &self.node);
        let (generation, replaced) = {
            let mut link = session.link();
            if link.ended || !link.credential.matches(&resume.presented.digest) {
                return None;
            }
            if link.outbox.after(resume.received).is_none() {
                let old = link.socket.take();
                drop(link);
                self.end_uncaught_up(&session, old);
                return None;
            }
            link.credential = digest;
            link.generation += 1;
            let last = link.outbox.last();
            link.away_from.get_or_insert(last);
            (link.generation, link.socket.take())
        };
        // Should this socket never be greeted, the session still ends when the window runs out.
        self.keep_away(&session, generation, window);
        self.await_greeting(sid, &session, credential, resume.received, true);
        if let Some(old) = replaced {
            tracing::info!(peer = %session.peer, %old, new = %sid, "session taken over");
            self.close(Some(old));
        }
        tracing::debug!(peer = %session.peer, received = resume.received, "session recovered");
        Some(session)
    }

    /// Ends a session whose owner is back but cannot be caught up (an event it missed is no
    /// longer kept), closing the socket that still served it: announced gone now, instead of
    /// left in its rooms as a silent duplicate of the peer for the rest of the window.
    pub(super) fn end_uncaught_up(self: &Arc<Self>, session: &Arc<Session>, old: Option<Sid>) {
        self.close(old);
        self.end(session, None);
    }

    /// Closes a socket of this node that no longer serves its session (nothing is announced:
    /// its disconnect finds the session's link pointing elsewhere).
    pub(super) fn close(&self, socket: Option<Sid>) {
        if let Some(socket) = socket.and_then(|sid| self.delivery.socket(sid)) {
            let _ = socket.disconnect();
        }
    }

    /// The connect handler: `session` is the first event of every connection.
    pub(crate) fn greet(self: &Arc<Self>, socket: &SocketRef) {
        let Some((_, pending)) = self.pending.remove(&socket.id) else {
            return;
        };
        let greeted = self.delivery.greet(
            socket,
            &pending.session,
            &pending.credential,
            pending.received,
            pending.recovered,
        );
        let _ = pending.greeted.send(());
        if greeted && pending.recovered {
            metrics::get().sessions_resumed.inc();
        }
        if !greeted {
            // The session ended, or the socket closed, in the meantime: the client reconnects
            // to a fresh session. A fresh session nobody heard of ends with it; a recovered one
            // stays away for its window.
            if !pending.recovered {
                self.end(&pending.session, None);
            }
            let _ = socket.clone().disconnect();
        }
    }

    /// The socket `sid` that served `session` is gone: a drop keeps the session away for the
    /// recovery window; anything else ends it now.
    pub(crate) fn socket_gone(
        self: &Arc<Self>,
        session: &Arc<Session>,
        sid: Sid,
        reason: DisconnectReason,
    ) {
        let never_greeted = self.pending.remove(&sid);
        let dropped = matches!(
            reason,
            DisconnectReason::TransportError | DisconnectReason::HeartbeatTimeout
        );
        let window = self.limits.recovery_window.filter(|_| dropped);
        let generation = {
            let mut link = session.link();
            if link.socket != Some(sid) {
                // Taken over by another connection, or gone before its greeting: a fresh
                // session nobody ever heard of ends; a recovered one is still away.
                if never_greeted.is_some_and(|(_, pending)| !pending.recovered) {
                    drop(link);
                    self.end(session, None);
                }
                return;
            }
            link.socket = None;
            link.generation += 1;
            if window.is_some() {
                let last = link.outbox.last();
                link.away_from = Some(last);
            } else {
                // Leaving on purpose: spoil the credential, so no resume slips in before the
                // end runs.
                link.credential = CredentialDigest::unmatched();
            }
            link.generation
        };
        match window {
            Some(window) => {
                tracing::debug!(peer = %session.peer, %reason, "connection dropped; session kept");
                self.keep_away(session, generation, window);
            }
            None => self.end(session, Some(generation)),
        }
    }

    /// Ends the session once `window` has passed, unless it was taken up again meanwhile.
    pub(super) fn keep_away(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        window: Duration,
    ) {
        let (hub, session) = (Arc::clone(self), Arc::clone(session));
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let expired = {
                let link = session.link();
                link.generation == generation && link.socket.is_none() && !link.ended
            };
            if expired {
                metrics::get().sessions_expired.inc();
            }
            hub.end(&session, Some(generation));
        });
    }

    /// Ends the session, behind everything it already queued: if `generation` is given, only
    /// if it is still away in that generation (nobody took it up since).
    pub(crate) fn end(self: &Arc<Self>, session: &Arc<Session>, generation: Option<u64>) {
        let (hub, job_session) = (Arc::clone(self), Arc::clone(session));
        session.run_always(async move {
            hub.end_now(&job_session, generation).await;
        });
    }

    /// Ends every session of this node, those away too: on a node shutting down with nobody
    /// to take them over, none can be taken up again, and their departures are what peers and
    /// webhooks still have to hear. Waits, up to `within`, until their leaves are recorded;
    /// whether they all were.
    pub async fn end_all(self: &Arc<Self>, within: Duration) -> bool {
        for session in self.delivery.sessions() {
            self.end(&session, None);
        }
        self.drained(within).await
    }

    async fn end_now(&self, session: &Session, generation: Option<u64>) {
        {
            let mut link = session.link();
            let stale = generation.is_some_and(|g| g != link.generation || link.socket.is_some());
            if link.ended || stale {
                return;
            }
            link.ended = true;
            link.socket = None;
            link.outbox = Default::default();
        }
        let _ending = Ending::count(&self.ending);
        self.delivery.unregister(session);
        for room in session.rooms() {
            self.leave(session, &room).await;
        }
        tracing::debug!(peer = %session.peer, "session ended");
    }
}

/// Counts a session among those ending while it is (see `Hub::drained`), even if the end is
/// cut short.
struct Ending(Arc<AtomicUsize>);

impl Ending {
    fn count(ending: &Arc<AtomicUsize>) -> Ending {
        ending.fetch_add(1, Ordering::SeqCst);
        Ending(Arc::clone(ending))
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
