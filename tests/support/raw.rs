//! A deliberately broken "Coupa" API on a raw TCP socket: it answers by path with the
//! framing faults, resets and hangs a well-behaved HTTP library would never produce.
//! Its token endpoint is not here: tests point `token_url` at a real mock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the raw upstream received (head parsed, body read as framed).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move { serve(stream, log).await });
            }
        });
        RawUpstream { addr, seen, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests for `path` arrived (heads; bodies may still be on their way).
    pub fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }
}

const OK_BODY: &str = r#"{"id":1,"status":"approved"}"#;

/// Serves requests on one connection until a fault path ends it.
async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some((seen, body_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        // Recorded as soon as the head arrives, so tests can tell streaming from buffering.
        let path = seen.path.clone();
        log.lock().unwrap().push(seen.clone());
        // Read (and discard) the body as framed by Content-Length; chunked uploads are
        // read until the terminating chunk.
        if let Some(n) = body_len {
            while buf.len() < n {
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            buf.drain(..n);
        } else if seen.header("transfer-encoding").is_some() {
            while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            buf.clear();
        }
        let reply: Vec<u8> = match path.as_str() {
            "/api/hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            "/api/slow" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                ok_response().into_bytes()
            }
            "/api/reset-before-head" => return reset(stream),
            "/api/close-before-head" => return,
            "/api/reset-mid-body" => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 1000]).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return reset(stream);
            }
            "/api/stall-mid-body" => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 1000]).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            "/api/close-mid-body" => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 1000]).await;
                return;
            }
            "/api/cl-te" => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{OK_BODY}\r\n0\r\n\r\n",
                OK_BODY.len()
            )
            .into_bytes(),
            "/api/two-lengths" => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 28\r\n\r\n{OK_BODY}")
                    .into_bytes()
            }
            "/api/bad-chunk" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec()
            }
            "/api/unauthorized" => {
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec()
            }
            _ => ok_response().into_bytes(),
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn ok_response() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{OK_BODY}",
        OK_BODY.len()
    )
}

/// Closes with RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads one request head; returns it and its Content-Length, leaving any body bytes
/// already read in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Seen, Option<usize>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let method = start.next()?.to_owned();
    let path = start.next()?.split('?').next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok());
    Some((
        Seen {
            method,
            path,
            headers,
        },
        len,
    ))
}
