//! Joins at the same instant must look exactly as if they had happened one by one. 200
//! clients join 50 rooms (4 each) at once, over and over, and every round is checked against
//! the contract's invariants (see `support::storm`).

mod support;

use std::collections::HashSet;

use serde_json::json;
use support::Server;

const ROUNDS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_keep_every_invariant() {
    // 200 clients from one address at once, and the last round's may still be closing.
    let env = [
        ("JWT_SECRET", support::SECRET),
        ("MAX_CONNECTIONS_PER_ADDRESS", "400"),
    ];
    let server = Server::start_with(&[], &env).await;
    for round in 0..ROUNDS {
        support::storm::storm(&[&server], 50, 4, &format!("r{round}")).await;
    }
    // Every room of every round emptied when its clients went away.
    server.health_until(|h| h["rooms"] == json!(0)).await;
}

/// Joins and leaves at the same instant in one room: every client's view of the room, built
/// from the `user-connected` and `user-disconnected` it receives in order, never removes a peer
/// it does not have or adds one it has, and ends as exactly who is left. A room's changes take
/// turns from snapshot to last emit; without that, a newcomer could hear a leaver go before
/// hearing it was there, and keep a ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_at_once_keep_every_view_whole() {
    let env = [
        ("JWT_SECRET", support::SECRET),
        ("MAX_CONNECTIONS_PER_ADDRESS", "400"),
    ];
    let server = Server::start_with(&[], &env).await;
    for round in 0..8 {
        let room = format!("churn-{round}");
        let mut leavers = Vec::new();
        for i in 0..20 {
            leavers.push(server.joined(&format!("leaver-{round}-{i}"), &room).await.0);
        }
        let mut newcomers = futures_util::future::join_all(
            (0..20).map(|i| server.client_named(format!("newcomer-{round}-{i}"))),
        )
        .await;
        // All at one instant: twenty joins, twenty leaves.
        for newcomer in &newcomers {
            newcomer.join(&room, "n");
        }
        for leaver in &leavers {
            leaver.emit("leave-room", json!({ "roomId": room }));
        }
        let expected: Vec<String> = newcomers.iter().map(|n| n.id().to_string()).collect();
        let checks = newcomers.iter_mut().map(|peer| {
            let mut others: HashSet<String> = expected.iter().cloned().collect();
            others.remove(peer.id());
            async move { follow_view(peer, &others).await }
        });
        futures_util::future::join_all(checks).await;
    }
}

/// Reads `peer`'s events until its view of the room is `expected`, checking each change.
async fn follow_view(peer: &mut support::Peer, expected: &HashSet<String>) {
    let mut view = HashSet::new();
    let mut joined = false;
    while !(joined && view == *expected) {
        let event = peer.next().await;
        let id = event.data["id"].as_str().map(str::to_string);
        match (event.name.as_str(), id) {
            ("join-ok", _) => joined = true,
            ("user-connected", Some(id)) => {
                assert!(
                    view.insert(id.clone()),
                    "{}: {id} connected twice",
                    peer.id()
                );
            }
            ("user-disconnected", Some(id)) => {
                assert!(view.remove(&id), "{}: {id} left before it came", peer.id());
            }
            _ => {}
        }
    }
}
