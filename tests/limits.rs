//! Caps on what clients may hold: connections per client address and in all, refused at
//! CONNECT with a clear message while the server goes on answering everyone else.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sioclient::{Client, ConnectError, Options};
use support::{SECRET, Server};

/// Connects from the loopback address `from` (each 127.x.y.z is another client address).
async fn connect_from(server: &Server, from: &str, sub: &str) -> Result<Client, ConnectError> {
    let mut options = Options::new(server.addr, Some(json!({ "token": server.token(sub) })));
    options.bind = Some(from.parse().expect("an address"));
    Client::connect(options).await
}

fn refusal(result: Result<Client, ConnectError>) -> String {
    match result {
        Err(ConnectError::Refused(message)) => message,
        Err(e) => panic!("not refused at CONNECT: {e}"),
        Ok(_) => panic!("connected over the cap"),
    }
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_all() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("MAX_CONNECTIONS_PER_ADDRESS", "2"),
            ("MAX_CONNECTIONS", "3"),
        ],
    )
    .await;
    let first = connect_from(&server, "127.0.0.2", "a")
        .await
        .expect("first");
    let _second = connect_from(&server, "127.0.0.2", "b")
        .await
        .expect("second");
    assert_eq!(
        refusal(connect_from(&server, "127.0.0.2", "c").await),
        "too many connections from your address"
    );
    let _elsewhere = connect_from(&server, "127.0.0.3", "d")
        .await
        .expect("another address");
    assert_eq!(
        refusal(connect_from(&server, "127.0.0.4", "e").await),
        "the server is at its connection limit; try again later"
    );
    assert_eq!(server.health().await["status"], json!("ok"));

    // A connection that goes gives its place back.
    first.close();
    let deadline = Instant::now() + support::WAIT;
    loop {
        match connect_from(&server, "127.0.0.2", "f").await {
            Ok(_) => break,
            Err(ConnectError::Refused(_)) if Instant::now() < deadline => {
                // Polling: the place comes back when the server drops the socket.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the place never came back: {e}"),
        }
    }
}

#[tokio::test]
async fn a_handshake_without_connect_is_closed() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("CONNECT_TIMEOUT_MS", "300"),
            ("PING_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let open = support::http_get_raw(server.addr, "/socket.io/?EIO=4&transport=polling", &[]).await;
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no Engine.IO session: {open}"))
        .to_string();
    // Each poll returns within a ping interval; the session must be gone well before
    // socketioxide's own 45 s.
    let poll = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::http_get_raw(server.addr, &poll, &[])
        .await
        .contains("Session ID unknown")
    {
        assert!(
            Instant::now() < deadline,
            "the half-done handshake is still open"
        );
    }
}
