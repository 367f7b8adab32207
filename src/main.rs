//! The binary: reads the configuration, sets up logging, and runs the server until SIGINT or
//! SIGTERM.

use clap::Parser;
use rtcio_signal::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
    match rtcio_signal::server::run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rtcio-signal: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` (default `info`), except that the WebSocket library never logs below `info`: its
/// trace lines carry whole frames, and with them tokens and room passwords. (socketioxide is
/// built without its `tracing` feature for the same reason: it logs every packet at `debug`.)
fn log_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    ["tungstenite=info", "tokio_tungstenite=info"]
        .into_iter()
        .filter_map(|directive| directive.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the server");
            let _ = interrupt.await;
        }
    }
}
