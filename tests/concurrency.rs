//! Joins at the same instant must look exactly as if they had happened one by one. 200
//! clients join 50 rooms (4 each) at once, over and over, and every round is checked against
//! the contract's invariants (see `support::storm`).

mod support;

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
