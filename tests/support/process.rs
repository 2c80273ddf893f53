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
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every stderr line so far is sent here by a reader thread.
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// `keybridge` as a command, for the caller to add arguments and environment to.
pub fn keybridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keybridge"))
}

impl Process {
    /// Spawns `command` and waits (up to 30 s) for it to listen. Panics with its output
    /// when it exits or never listens.
    pub fn spawn(mut command: Command) -> Process {
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
                    let listening = listening(&line);
                    seen.push(line);
                    if let Some((proxy, admin)) = listening {
                        return Process {
                            child,
                            proxy,
                            admin,
                            lines,
                            seen,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "keybridge never listened (exit: {status:?}); it said:\n{}",
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

fn listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let log: serde_json::Value = serde_json::from_str(line).ok()?;
    if log["message"] != "keybridge listening" {
        return None;
    }
    Some((
        log["proxy"].as_str()?.parse().ok()?,
        log["admin"].as_str()?.parse().ok()?,
    ))
}
