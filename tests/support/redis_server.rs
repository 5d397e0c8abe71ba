//! A private `redis-server` for a test: its own free port on 127.0.0.1, no persistence (or
//! snapshots in its own directory, taken only on `SAVE`), killed when dropped. Needs `redis-server` on PATH (`apt-get install -y redis-server`;
//! scripts/test.sh installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::WAIT;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Where a persistent server keeps its snapshot (loaded again on restart).
    dir: Option<PathBuf>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = super::free_addr().port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: None,
        };
        server.spawn().await;
        server
    }

    /// A server that writes a snapshot on `SAVE` (only) into a directory of its own, and
    /// loads it when restarted: a restart from an older snapshot, as after a crash.
    pub async fn start_persistent() -> RedisServer {
        let port = super::free_addr().port();
        let dir = std::env::temp_dir().join(format!("wshub-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the snapshot directory");
        let mut server = RedisServer {
            port,
            child: None,
            dir: Some(dir),
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(dir) = &self.dir {
            command.arg("--dir").arg(dir);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        // A reply that is not PONG (a connect to a free port can connect the socket to
        // itself, which echoes the command) is no server yet.
        while !matches!(
            self.query(&["PING"]).await,
            Ok(redis::Value::SimpleString(ref pong)) if pong == "PONG"
        ) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (as a crash would: no shutdown handshake).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Runs one command and returns its reply.
    pub async fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.query_bytes(&args).await
    }

    /// Runs one command with binary arguments and returns its reply.
    pub async fn query_bytes(&self, args: &[&[u8]]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// `PUBSUB CHANNELS`, sorted.
    pub async fn channels(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .unwrap();
        v.sort();
        v
    }

    /// The text of `INFO section`.
    pub async fn info(&self, section: &str) -> String {
        match self.query(&["INFO", section]).await.unwrap() {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("INFO {section}: {other:?}"),
        }
    }

    /// Waits until `n` clients are blocked (with `CLIENT PAUSE WRITE`: held back with a write
    /// or a script, which Redis runs in the order they came once unpaused).
    pub async fn wait_blocked(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let info = self.info("clients").await;
            let blocked: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("blocked_clients:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("blocked_clients in INFO clients");
            if blocked >= n {
                assert_eq!(blocked, n, "more clients blocked than expected");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {blocked} of {n} clients got blocked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
