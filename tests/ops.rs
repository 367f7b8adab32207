//! Running it: health, CORS, graceful shutdown, and the deployment files agreeing with the
//! binary's defaults.

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use rtcio_signal::config::Config;
use serde_json::json;
use support::{Server, repo_path};

#[tokio::test]
async fn health_reports_connections_and_rooms() {
    let server = Server::start().await;
    let health = server.health().await;
    assert_eq!(
        health,
        json!({ "status": "ok", "connections": 0, "away": 0, "rooms": 0 })
    );
    let (_alice, _) = server.joined("alice", "h").await;
    let health = server.health().await;
    assert_eq!(
        (health["connections"].clone(), health["rooms"].clone()),
        (json!(1), json!(1))
    );
}

async fn origin_header(server: &Server, origin: &str) -> Option<String> {
    let response = support::http_get_raw(server.addr, "/health", &[("Origin", origin)]).await;
    response.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("access-control-allow-origin: ")
            .map(str::to_string)
    })
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let server = Server::start_with(
        &[
            "--allowed-origins",
            "https://app.example, https://staging.example",
        ],
        &[("JWT_SECRET", support::SECRET)],
    )
    .await;
    assert_eq!(
        origin_header(&server, "https://app.example")
            .await
            .as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        origin_header(&server, "https://staging.example")
            .await
            .as_deref(),
        Some("https://staging.example")
    );
    assert_eq!(origin_header(&server, "https://evil.example").await, None);

    let open = Server::start().await;
    assert_eq!(
        origin_header(&open, "https://anything.example")
            .await
            .as_deref(),
        Some("*")
    );
}

#[tokio::test]
async fn sigterm_disconnects_everyone_and_exits_in_time() {
    let mut server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "bye").await;

    let started = Instant::now();
    server.terminate().await;
    alice.expect_closed().await;
    bob.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(15));
    // Nobody can connect any more.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[test]
fn fly_toml_matches_the_server_defaults() {
    let defaults = Config::try_parse_from(["rtcio-signal"]).expect("defaults parse");
    let text = std::fs::read_to_string(repo_path("fly.toml")).expect("fly.toml");
    let fly: toml::Value = toml::from_str(&text).expect("fly.toml parses");
    let service = &fly["http_service"];
    assert_eq!(
        service["internal_port"].as_integer(),
        Some(i64::from(defaults.port))
    );
    assert_eq!(
        fly["env"]["PORT"].as_str(),
        Some(defaults.port.to_string().as_str())
    );
    assert_eq!(service["auto_stop_machines"].as_str(), Some("off"));
    // Fly's proxy stops sending connections where the server would start refusing them.
    assert_eq!(
        service["concurrency"]["hard_limit"].as_integer(),
        i64::try_from(defaults.max_connections).ok()
    );
    assert_eq!(
        fly["env"]["TRUSTED_CLIENT_IP_HEADER"].as_str(),
        Some("Fly-Client-IP")
    );
    let checks = service["checks"].as_array().expect("health checks");
    assert!(checks.iter().any(|c| c["path"].as_str() == Some("/readyz")));
    // SIGTERM's unready spell and the drain both fit before Fly kills the machine.
    let ms = |name: &str| -> u64 {
        fly["env"][name]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in fly.toml"))
    };
    let kill_timeout_s: u64 = fly["kill_timeout"]
        .as_str()
        .and_then(|t| t.strip_suffix('s')?.parse().ok())
        .expect("kill_timeout in seconds");
    assert!(ms("DRAIN_DELAY_MS") + ms("SHUTDOWN_GRACE_MS") < kill_timeout_s * 1000);
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains(&format!("EXPOSE {}", defaults.port)));
    assert!(dockerfile.contains("USER nonroot"));
}

#[tokio::test]
async fn demo_directory_is_served_at_root() {
    let dir = std::env::temp_dir().join(format!("rtcio-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("index.html"), "<title>demo</title>").expect("write");
    let dir_arg = dir.to_string_lossy().into_owned();
    let server = Server::start_with(
        &["--demo-dir", &dir_arg],
        &[("JWT_SECRET", support::SECRET)],
    )
    .await;
    let (status, body) = support::http_get(server.addr, "/").await;
    assert_eq!((status, body.contains("<title>demo</title>")), (200, true));
    let config = support::http_get_json(server.addr, "/client-config").await;
    assert_eq!(config, json!({ "iceServers": [] }));
    std::fs::remove_dir_all(&dir).ok();

    let ice = r#"[{"urls":"turn:turn.example:3478","username":"u","credential":"c"}]"#;
    let server = Server::start_with(
        &[],
        &[("JWT_SECRET", support::SECRET), ("ICE_SERVERS", ice)],
    )
    .await;
    let config = support::http_get_json(server.addr, "/client-config").await;
    assert_eq!(
        config["iceServers"][0]["urls"],
        json!("turn:turn.example:3478")
    );
}

#[test]
fn every_setting_is_in_the_readme() {
    let readme = std::fs::read_to_string(support::repo_path("README.md")).expect("README");
    let settings = support::server_env();
    assert!(
        settings.len() >= 19,
        "settings read from config.rs: {settings:?}"
    );
    for var in settings {
        assert!(
            readme.contains(&format!("| `{var}` |")),
            "{var} is missing from the README's settings table"
        );
    }
}
