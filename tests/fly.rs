//! Several Fly machines in one cluster, reached with socket.io-client's default transports
//! (long-polling, then the WebSocket upgrade) through a stand-in for Fly's proxy that balances
//! every request at random and honours `fly-replay` (`tests/node/fly-replay.mjs`).

mod support;

use support::redis::Redis;
use support::{SECRET, Server};

/// Two Fly machines, `0e286e1c4d3d78` and `d891627b6e3318`, on one Redis.
async fn two_machines() -> (Redis, Server, Server) {
    let redis = Redis::start().await;
    let url = redis.url();
    let machine = |id| {
        [
            ("JWT_SECRET", SECRET),
            ("REDIS_URL", url.as_str()),
            ("FLY_MACHINE_ID", id),
        ]
    };
    let a = Server::start_with(&[], &machine("0e286e1c4d3d78")).await;
    let b = Server::start_with(&[], &machine("d891627b6e3318")).await;
    (redis, a, b)
}

#[tokio::test]
async fn default_transports_work_across_machines_behind_fly_proxy() {
    let (_redis, a, b) = two_machines().await;
    let backends = format!(
        "0e286e1c4d3d78=http://{},d891627b6e3318=http://{}",
        a.addr, b.addr
    );
    let output = tokio::process::Command::new("node")
        .arg("tests/node/fly-replay.mjs")
        .current_dir(support::repo_path(""))
        .env("BACKENDS", backends)
        .env("JWT_SECRET", SECRET)
        .env("ROUNDS", "50")
        .output()
        .await
        .expect("node is installed (run scripts/setup)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}");
    let replays: u32 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("rounds ok 50, replays "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert!(
        replays > 0,
        "the proxy never had to replay a request: {stdout}"
    );
}

/// The routing rule one request at a time: a polling session opened on machine A and asked
/// for on machine B is sent back to A with `fly-replay` (and one opened on B, asked for on A,
/// back to B); the same request once replayed (Fly marks it `fly-replay-src`) is served where
/// it lands, never bounced again.
#[tokio::test]
async fn a_request_is_replayed_to_the_machine_holding_its_session_and_only_once() {
    let (_redis, a, b) = two_machines().await;
    let on_a = polling_session(&a).await;
    let on_b = polling_session(&b).await;

    let elsewhere = support::http_get_raw(b.addr, &on_a, &[]).await;
    assert!(elsewhere.starts_with("HTTP/1.1 409"), "{elsewhere}");
    assert!(
        elsewhere
            .to_ascii_lowercase()
            .contains("fly-replay: instance=0e286e1c4d3d78"),
        "{elsewhere}"
    );
    let other_way = support::http_get_raw(a.addr, &on_b, &[]).await;
    assert!(
        other_way
            .to_ascii_lowercase()
            .contains("fly-replay: instance=d891627b6e3318"),
        "each session is pinned to its own machine: {other_way}"
    );
    let replayed = support::http_get_raw(
        b.addr,
        &on_a,
        &[("fly-replay-src", "instance=d891627b6e3318;region=ams;t=1")],
    )
    .await;
    assert!(
        !replayed.to_ascii_lowercase().contains("fly-replay:"),
        "a replayed request was bounced again: {replayed}"
    );
    assert!(
        replayed.starts_with("HTTP/1.1 400"),
        "B answers it itself (a session it does not know): {replayed}"
    );
}

/// Opens an Engine.IO polling session on `server`; the path that polls it.
async fn polling_session(server: &Server) -> String {
    let handshake =
        support::http_get_raw(server.addr, "/socket.io/?EIO=4&transport=polling", &[]).await;
    let sid = handshake
        .split_once("\"sid\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(sid, _)| sid.to_string())
        .unwrap_or_else(|| panic!("no sid in the handshake: {handshake}"));
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}
