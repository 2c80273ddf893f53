//! A lazily connecting Redis connection for `fleet.redis_url`, shared by the token cache
//! and the rate limit: Redis may be down at start, and errors never quote the URL (it
//! may carry a password).

use std::time::Duration;

use crate::config::Secret;

/// A connection manager whose calls give up after `timeout`, and which tries at most
/// `retries` times to reconnect once it finds its connection dropped (the command that
/// found it fails: callers retry it if they need to); and the `host:port` it talks to,
/// for logs.
pub fn connect(
    url: &Secret,
    timeout: Duration,
    retries: usize,
) -> Result<(redis::aio::ConnectionManager, String), String> {
    let client = redis::Client::open(url.expose()).map_err(|_| {
        "fleet.redis_url is not a Redis URL (redis://[:password@]host:6379[/db])".to_owned()
    })?;
    let target = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        other => format!("{other:?}"),
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(retries)
        .set_max_delay(Duration::from_secs(1));
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("fleet.redis_url: {e}"))?;
    Ok((conn, target))
}
