//! The admin API: off without `ADMIN_TOKEN`, 401 without the right bearer token, and rooms
//! listed, shown, closed and peers kicked as real clients see it, on one node and across two.

mod support;

use std::net::SocketAddr;

use serde_json::{Value, json};
use support::redis::Redis;
use support::{Peer, Server, http_request, unix_now};

const TOKEN: &str = "admin-token-for-the-tests-0123456789";

async fn admin_server() -> Server {
    Server::start_with(
        &[],
        &[("JWT_SECRET", support::SECRET), ("ADMIN_TOKEN", TOKEN)],
    )
    .await
}

/// An admin request with `token` (none: no Authorization header); status and JSON body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let (status, text) = http_request(addr, method, path, &headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    call(addr, method, path, Some(TOKEN), "").await
}

/// What `peer` was told when kicked (whatever came before it skipped).
async fn kicked(peer: &mut Peer) -> Value {
    let events = peer.until("kicked").await;
    events.last().map(|e| e.data.clone()).unwrap_or_default()
}

const ROUTES: [(&str, &str); 4] = [
    ("GET", "/admin/rooms"),
    ("GET", "/admin/rooms/any"),
    ("DELETE", "/admin/rooms/any"),
    ("POST", "/admin/peers/someone/kick"),
];

#[tokio::test]
async fn every_route_needs_the_token_and_the_api_is_off_without_one() {
    let server = admin_server().await;
    for (method, path) in ROUTES {
        let (missing, _) = call(server.addr, method, path, None, "").await;
        let (wrong, body) = call(server.addr, method, path, Some("not-the-token"), "").await;
        assert_eq!((missing, wrong), (401, 401), "{method} {path}");
        assert_eq!(body["error"], "a valid admin token is required");
        let (right, _) = admin(server.addr, method, path).await;
        assert_ne!(right, 401, "{method} {path} with the token");
    }
    let off = Server::start().await;
    for (method, path) in ROUTES {
        let (status, _) = call(off.addr, method, path, Some(TOKEN), "").await;
        assert_eq!(status, 404, "{method} {path} with the API off");
    }
}

/// `peer` joins `room`, sealing it with `password` if it is the first.
async fn join_with_password(peer: &mut Peer, room: &str, name: &str, password: &str) {
    peer.emit(
        "join-room",
        json!({ "roomId": room, "name": name, "password": password }),
    );
    peer.until("join-ok").await;
}

#[tokio::test]
async fn rooms_are_listed_shown_closed_and_peers_kicked() {
    let server = admin_server().await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let before = unix_now() * 1000;
    join_with_password(&mut alice, "standup", "Alice", "s3cret").await;
    join_with_password(&mut bob, "standup", "Bob", "s3cret").await;
    let (_carol, _) = server.joined("carol", "open-room").await;
    alice.emit(
        "media-state",
        json!({ "roomId": "standup", "mic": false, "cam": true }),
    );
    bob.until("media-state").await;

    let (status, list) = admin(server.addr, "GET", "/admin/rooms").await;
    assert_eq!(status, 200);
    let rooms = list["rooms"].as_array().expect("rooms");
    assert_eq!(rooms.len(), 2);
    let standup = rooms
        .iter()
        .find(|r| r["roomId"] == "standup")
        .expect("standup");
    assert_eq!(
        (&standup["members"], &standup["locked"]),
        (&json!(2), &json!(true))
    );
    let created = standup["createdAt"].as_u64().expect("createdAt");
    assert!(created >= before && created <= unix_now() * 1000 + 1000);
    let open = rooms
        .iter()
        .find(|r| r["roomId"] == "open-room")
        .expect("open");
    assert_eq!(
        (&open["members"], &open["locked"]),
        (&json!(1), &json!(false))
    );

    let (status, room) = admin(server.addr, "GET", "/admin/rooms/standup").await;
    assert_eq!(status, 200);
    let members = room["members"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["id"], alice.id());
    assert_eq!(members[0]["name"], "Alice");
    assert_eq!(members[0]["userId"], "alice");
    assert_eq!(
        (&members[0]["mic"], &members[0]["cam"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(members[1]["id"], bob.id());
    assert_eq!(members[1]["mic"], Value::Null, "bob sent no media state");
    assert!(members[0]["node"].is_string());
    assert_eq!(
        admin(server.addr, "GET", "/admin/rooms/nobody-here")
            .await
            .0,
        404
    );

    // A kick: bob is told why and cut off; alice hears him leave at once (no recovery window).
    let path = format!("/admin/peers/{}/kick", bob.id());
    let (status, answer) = call(
        server.addr,
        "POST",
        &path,
        Some(TOKEN),
        r#"{"reason":"spam"}"#,
    )
    .await;
    assert_eq!((status, &answer["kicked"]), (200, &json!(true)));
    assert_eq!(kicked(&mut bob).await, json!({ "reason": "spam" }));
    bob.expect_closed().await;
    let gone = alice.until("user-disconnected").await;
    assert_eq!(
        gone.last().map(|e| e.data["id"].clone()),
        Some(json!(bob.id()))
    );
    let (status, _) = admin(server.addr, "POST", &path).await;
    assert_eq!(status, 404, "kicked peers are gone");
    let (status, _) = call(server.addr, "POST", &path, Some(TOKEN), "not json").await;
    assert_eq!(status, 400);

    // Closing: every member is kicked, and the room is gone.
    let (status, closed) = admin(server.addr, "DELETE", "/admin/rooms/standup").await;
    assert_eq!((status, &closed["kicked"]), (200, &json!(1)));
    assert_eq!(kicked(&mut alice).await["reason"], "the room was closed");
    alice.expect_closed().await;
    assert_eq!(
        admin(server.addr, "DELETE", "/admin/rooms/standup").await.0,
        404
    );
    let (_, list) = admin(server.addr, "GET", "/admin/rooms").await;
    assert_eq!(list["rooms"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn kicks_and_closings_reach_peers_on_other_nodes() {
    let redis = Redis::start().await;
    let settings = [("ADMIN_TOKEN", TOKEN)];
    let (one, two) = (
        redis.node_with(&settings).await,
        redis.node_with(&settings).await,
    );
    let (mut alice, mut bob) = support::pair(&one, &two, "across").await;
    let (mut carol, _) = two.joined("carol", "across").await;
    alice.until("user-connected").await;
    bob.until("user-connected").await;

    for node in [&one, &two] {
        let (_, list) = admin(node.addr, "GET", "/admin/rooms").await;
        assert_eq!(
            list["rooms"][0]["members"], 3,
            "every node sees the whole cluster"
        );
    }
    let (_, room) = admin(one.addr, "GET", "/admin/rooms/across").await;
    let node_of = |i: usize| room["members"][i]["node"].as_str().map(str::to_string);
    assert_ne!(
        node_of(0),
        node_of(1),
        "alice and bob are on different nodes"
    );
    assert_eq!(node_of(1), node_of(2));

    // Node one kicks bob, whose session is on node two.
    let path = format!("/admin/peers/{}/kick", bob.id());
    let (status, _) = admin(one.addr, "POST", &path).await;
    assert_eq!(status, 200);
    assert_eq!(kicked(&mut bob).await["reason"], "removed by an operator");
    bob.expect_closed().await;
    for peer in [&mut alice, &mut carol] {
        let gone = peer.until("user-disconnected").await;
        assert_eq!(
            gone.last().map(|e| e.data["id"].clone()),
            Some(json!(bob.id()))
        );
    }
    let unknown = admin(one.addr, "POST", "/admin/peers/nobody/kick").await.0;
    assert_eq!(unknown, 404);

    // Node two closes the room: alice (node one) and carol (node two) are kicked.
    let (status, closed) = admin(two.addr, "DELETE", "/admin/rooms/across").await;
    assert_eq!((status, &closed["kicked"]), (200, &json!(2)));
    for peer in [&mut alice, &mut carol] {
        assert_eq!(kicked(peer).await["reason"], "the room was closed");
        peer.expect_closed().await;
    }

    // Each room keeps its own creation time in Redis, for as long as it has members.
    let before_first = unix_now_ms();
    let (_dave, _) = one.joined("dave", "first").await;
    let after_first = unix_now_ms();
    while unix_now_ms() <= after_first {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await; // the clock must move on
    }
    let (mut erin, _) = two.joined("erin", "second").await;
    let first = created_at(&two, "first").await;
    assert!((before_first..=after_first).contains(&first), "{first}");
    assert!(created_at(&two, "second").await > after_first);
    erin.emit("leave-room", json!({ "roomId": "second" }));
    erin.emit("leave-room", json!({ "roomId": "nowhere" }));
    erin.expect_error("not-in-room").await;
    assert_eq!(
        created_at(&one, "first").await,
        first,
        "another room emptying leaves it be"
    );

    // With Redis gone, the API says so rather than answer from nothing.
    redis.shut_down_saving().await;
    let (status, body) = admin(one.addr, "GET", "/admin/rooms").await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("room state unavailable"))
    );
}

fn unix_now_ms() -> u64 {
    (support::unix_now_nanos() / 1_000_000) as u64
}

/// `room`'s `createdAt` as the admin API on `node` lists it.
async fn created_at(node: &Server, room: &str) -> u64 {
    let (_, list) = admin(node.addr, "GET", "/admin/rooms").await;
    let rooms = list["rooms"].as_array().expect("rooms");
    let found = rooms.iter().find(|r| r["roomId"] == room);
    found
        .and_then(|r| r["createdAt"].as_u64())
        .unwrap_or_else(|| panic!("{room}'s createdAt in {list}"))
}
