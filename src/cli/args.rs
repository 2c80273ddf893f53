//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "keybridge",
    version,
    about = "Swap legacy Coupa API keys for OAuth 2.0 bearer tokens"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "config.yaml",
        env = "KEYBRIDGE_CONFIG"
    )]
    pub config: PathBuf,
    /// Log format (default: json; text for `demo`). Level from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, env = "KEYBRIDGE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default command).
    Run,
    /// Validate the configuration and exit 0 (valid) or 1 (invalid).
    Check,
    /// Read an API key from stdin and print its SHA-256 hex (for `api_key_sha256`).
    HashKey,
    /// Print the migration audit: per integration, mode, state, traffic and scope advice.
    Audit(AuditArgs),
    /// Copy the audit store to a new file: a consistent snapshot, safe while keybridge
    /// runs. Restore by stopping keybridge and putting the copy at `audit.path`.
    BackupAudit(BackupArgs),
    /// Check an OAuth client against its Coupa instance: fetch a token, call a read
    /// endpoint its scopes allow, and compare its scopes with what its integrations'
    /// recorded endpoints need. Exit 0 only on success (2-5: see README).
    TestCredentials(TestCredentialsArgs),
    /// Exit 0 when a running keybridge is ready (its admin `/readyz` answers 200), 1
    /// otherwise with the reason: for container HEALTHCHECKs and scripts.
    Health(HealthArgs),
    /// Run a mock Coupa instance (token endpoint and /api/*).
    MockCoupa(MockArgs),
    /// Run a mock Coupa and the proxy on loopback, and print how to try it with curl.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The backup file to create (never overwritten).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The admin listener to ask (default: `admin_listen` from the config; 0.0.0.0 and
    /// `[::]` are asked on loopback).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// `ready` (`/readyz`: tokens settled, audit writable) or `live` (`/healthz`: the
    /// process answers).
    #[arg(long, value_enum, default_value = "ready")]
    pub probe: HealthProbe,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealthProbe {
    Ready,
    Live,
}

#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// A client as ID:SECRET[:SCOPE,SCOPE,...]; repeatable.
    #[arg(long = "client", value_name = "ID:SECRET[:SCOPES]")]
    pub clients: Vec<String>,
    /// A legacy API key that /api/* still accepts; repeatable.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// Lifetime of issued tokens.
    #[arg(long, default_value = "86399s", value_parser = humantime::parse_duration)]
    pub expires_in: std::time::Duration,
    /// Refuse tokens younger than this.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub settle: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Proxy listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener.
    #[arg(long, default_value = "127.0.0.1:9900")]
    pub admin_listen: SocketAddr,
    /// Mock Coupa listener.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub mock_listen: SocketAddr,
    /// Directory for the demo's config and audit (default: a new one under the system
    /// temp directory, printed at start); `keybridge audit --config DIR/config.yaml`
    /// reads the demo's audit.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: AuditFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct TestCredentialsArgs {
    /// The client (a name under `clients:`).
    #[arg(long)]
    pub client: String,
}
