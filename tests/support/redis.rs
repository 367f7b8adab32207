//! A private `redis-server` per test, on a free loopback port.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{SECRET, Server};

/// A private `redis-server`, killed on drop. It saves its data only when told to
/// ([`Redis::shut_down_saving`]), into a directory of its own.
pub struct Redis {
    pub port: u16,
    /// Removed on drop, unless handed on to the next server by [`Redis::shut_down_saving`].
    dir: Option<PathBuf>,
    child: Child,
}

impl Redis {
    pub async fn start() -> Redis {
        let port = free_port();
        Redis::start_on(port).await
    }

    /// A new, empty Redis on `port`.
    pub async fn start_on(port: u16) -> Redis {
        let dir = std::env::temp_dir().join(format!("rtcio-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        Redis::start_in(port, dir).await
    }

    /// Stops the server after it saved its data; [`Redis::start_again`] brings it back.
    pub async fn shut_down_saving(mut self) -> (u16, PathBuf) {
        let mut conn = self.connection().await.expect("redis");
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query_async::<()>(&mut conn)
            .await;
        self.child.wait().await.expect("redis exits");
        (self.port, self.dir.take().expect("its own directory"))
    }

    /// The server [`Redis::shut_down_saving`] stopped, with its data, on the same port.
    pub async fn start_again((port, dir): (u16, PathBuf)) -> Redis {
        Redis::start_in(port, dir).await
    }

    async fn start_in(port: u16, dir: PathBuf) -> Redis {
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
                "--dbfilename",
                "dump.rdb",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (run scripts/setup)");
        let redis = Redis {
            port,
            dir: Some(dir),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.connection().await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await; // waiting for a process to listen
        }
        redis
    }

    /// A server node of a cluster on this Redis, with default settings.
    pub async fn node(&self) -> Server {
        Server::start_with(&[], &[("JWT_SECRET", SECRET), ("REDIS_URL", &self.url())]).await
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

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
