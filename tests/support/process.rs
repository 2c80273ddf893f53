//! The release-style way to run keybridge: the binary as a child process, as systemd,
//! Docker or a user's shell would start it. Its listeners are read from the
//! "keybridge listening" log line, so configs can use port 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::leak;

/// A keybridge process; killed (and its output kept for the leak scan) when dropped.
pub struct Process {
    child: Child,
    /// The log line it was waited for (JSON).
    pub started: serde_json::Value,
    /// Every stderr line so far is sent here by a reader thread.
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// `keybridge` as a command, for the caller to add arguments and environment to.
pub fn keybridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keybridge"))
}

impl Process {
    /// Spawns `command` (`keybridge run`) and waits (up to 30 s) for it to listen.
    /// Panics with its output when it exits or never listens.
    pub fn spawn(command: Command) -> Process {
        Self::spawn_until(command, "keybridge listening")
    }

    /// The proxy listener's address.
    pub fn proxy(&self) -> SocketAddr {
        self.addr("proxy")
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.addr("admin")
    }

    /// The address in `field` of the start line.
    pub fn addr(&self, field: &str) -> SocketAddr {
        self.started[field]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address `{field}` in {}", self.started))
    }

    /// Spawns `command` and waits (up to 30 s) for a JSON log line whose `message` is
    /// `message`. Panics with its output when it exits or never says it.
    pub fn spawn_until(mut command: Command, message: &str) -> Process {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the keybridge binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                leak::append("log", format!("{line}\n").as_bytes());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let log = serde_json::from_str::<serde_json::Value>(&line).ok();
                    seen.push(line);
                    if let Some(started) = log.filter(|log| log["message"] == message) {
                        return Process {
                            child,
                            started,
                            lines,
                            seen,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "never logged `{message}` (exit: {status:?}); it said:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Everything it wrote to stderr so far.
    pub fn output(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and the output.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(term.success());
        let status = self.child.wait().expect("the child can be waited for");
        // The reader thread ends at EOF, so this collects the last lines too.
        self.seen.extend(self.lines.iter());
        (status.code(), self.seen.join("\n"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
