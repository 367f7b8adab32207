//! What an operator does to rooms through the admin API: kick a peer (its client is told why,
//! its connection closed, its departure announced at once, with no recovery window) and close
//! a room (every member kicked). In cluster mode a peer on another node is kicked by that
//! node, asked through its inbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Hub;
use super::handover::Note;
use crate::ids::{CredentialDigest, NodeId, PeerId};
use crate::metrics;
use crate::protocol::{self as p, outbound as out};
use crate::store::{Member, StoreError};

/// How long a kick waits for another node to say it held the peer.
const KICK_DEADLINE: Duration = Duration::from_secs(2);

impl Hub {
    /// Kicks `peer` wherever in the cluster its session is; false if no node holds it.
    pub async fn kick(self: &Arc<Self>, peer: &PeerId, reason: &str) -> Result<bool, StoreError> {
        if self.kick_here(peer, reason) {
            return Ok(true);
        }
        let nodes = self.rooms.other_nodes().await?;
        if nodes.is_empty() {
            return Ok(false);
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (answered, answer) = tokio::sync::oneshot::channel();
        self.kicks.insert(ticket, answered);
        for node in &nodes {
            self.post_note(node, &self.kick_note(ticket, peer, reason))
                .await;
        }
        let found = matches!(
            tokio::time::timeout(KICK_DEADLINE, answer).await,
            Ok(Ok(()))
        );
        self.kicks.remove(&ticket);
        Ok(found)
    }

    /// Kicks every member of `room`, on whichever node; returns who they were.
    pub async fn close_room(
        self: &Arc<Self>,
        room: &str,
        reason: &str,
    ) -> Result<Vec<Member>, StoreError> {
        let members = self.rooms.roster(room).await?;
        for member in &members {
            match &member.node {
                None => {
                    self.kick_here(&member.peer, reason);
                }
                Some(node) => {
                    self.post_note(node, &self.kick_note(0, &member.peer, reason))
                        .await
                }
            }
        }
        Ok(members)
    }

    fn kick_note(&self, ticket: u64, peer: &PeerId, reason: &str) -> Note {
        Note::Kick {
            ticket,
            peer: peer.to_string(),
            reason: reason.to_string(),
            from: self.node.to_string(),
        }
    }

    /// Kicks `peer` if its session is on this node; false if it is not.
    fn kick_here(self: &Arc<Self>, peer: &PeerId, reason: &str) -> bool {
        let Some(session) = self.delivery.session(peer) else {
            return false;
        };
        let socket = {
            let mut link = session.link();
            if link.ended {
                return false;
            }
            // Spoiled first, so the client cannot take the session up again.
            link.credential = CredentialDigest::unmatched();
            link.socket
        };
        metrics::get().admin_actions.inc();
        tracing::info!(%peer, user = %session.identity.user_id, reason, "kicked by an operator");
        self.delivery
            .send(&session, p::KICKED, &out::Kicked { reason });
        // The disconnect goes out behind `kicked`; the session ends at once either way.
        if let Some(socket) = socket.and_then(|sid| self.delivery.socket(sid)) {
            let _ = socket.disconnect();
        }
        self.end(&session, None);
        true
    }

    /// Another node asks for a kick.
    pub(super) async fn read_kick(
        self: &Arc<Self>,
        ticket: u64,
        peer: &str,
        reason: &str,
        from: &str,
    ) {
        let (Some(peer), Some(from)) = (PeerId::parse(peer), NodeId::parse(from)) else {
            return tracing::warn!("malformed kick note");
        };
        if self.kick_here(&peer, reason) && ticket != 0 {
            self.post_note(&from, &Note::Kicked { ticket }).await;
        }
    }

    /// A node says it kicked the peer of `ticket`.
    pub(super) fn kick_answered(&self, ticket: u64) {
        if let Some((_, answered)) = self.kicks.remove(&ticket) {
            let _ = answered.send(());
        }
    }
}
