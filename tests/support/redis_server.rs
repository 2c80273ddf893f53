//! Redis for the fleet tests: a key prefix of the test's own on the machine's server
//! (127.0.0.1:6379), deleted when the test ends; or a private server on a free port
//! for tests that kill it.

/// The machine's server, as `.ci/run` starts it.
pub const MACHINE: &str = "redis://127.0.0.1:6379/0";

/// A key prefix no other test uses; its keys are deleted on drop.
pub struct TestPrefix(pub String);

impl TestPrefix {
    pub fn new() -> TestPrefix {
        TestPrefix(format!(
            "keybridge-test-{}-{:08x}:",
            std::process::id(),
            fastrand::u32(..)
        ))
    }

    /// The keys under this prefix now.
    pub fn keys(&self) -> Vec<String> {
        let mut conn = redis::Client::open(MACHINE)
            .and_then(|c| c.get_connection())
            .expect("the machine's Redis answers on 127.0.0.1:6379 (.ci/run starts it)");
        redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap()
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if let (false, Ok(mut conn)) = (
            keys.is_empty(),
            redis::Client::open(MACHINE).and_then(|c| c.get_connection()),
        ) {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

/// A Redis server of the test's own (Debian's `redis-server`, nothing on disk).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.start_again();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts it on the same port and waits until it answers (empty: it keeps
    /// nothing on disk, as if wiped).
    pub fn start_again(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .is_ok()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the private redis-server never answered");
    }

    /// Kills it (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
