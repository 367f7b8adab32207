//! A private `redis-server` per test, on a free loopback port.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A private `redis-server`, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub async fn start() -> Redis {
        let port = free_port();
        Redis::start_on(port).await
    }

    pub async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (run scripts/setup)");
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.connection().await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await; // waiting for a process to listen
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    pub async fn stop(mut self) {
        self.child.kill().await.expect("kill redis");
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
