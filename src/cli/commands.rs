//! What each subcommand does. `main` parses the command line, sets up logging and
//! calls [`execute`]; every failure comes back here as a [`Failure`] with its message
//! and exit code, for `main` to print in one place.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::args::{
    AuditArgs, AuditFormat, BackupArgs, Command, DemoArgs, HealthArgs, MockArgs,
    TestCredentialsArgs,
};
use super::mock::MockCoupa;
use crate::config::{Config, ProcessEnv};
use crate::keys::Fingerprint;
use crate::runtime::{ConfigSource, Core};

/// A command that did not succeed: what to print on stderr, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 1,
            message: format!("keybridge: {e:#}"),
        }
    }
}

/// Exit code 1 with `message` as is.
fn invalid(message: String) -> Failure {
    Failure { code: 1, message }
}

/// Runs `command` with the config file at `config`.
pub async fn execute(command: Command, config: &Path) -> Result<(), Failure> {
    match command {
        Command::Run => run(config).await,
        Command::Check => check(config),
        Command::HashKey => hash_key(),
        Command::Audit(args) => audit(config, &args).await,
        Command::BackupAudit(args) => backup_audit(config, &args),
        Command::TestCredentials(args) => test_credentials(config, &args).await,
        Command::Health(args) => health(config, &args).await,
        Command::MockCoupa(args) => mock_coupa(args).await,
        Command::Demo(args) => demo(&args).await,
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path)
        .map_err(|e| invalid(format!("{}: invalid configuration:\n{e}", path.display())))
}

async fn run(path: &Path) -> Result<(), Failure> {
    // A core dump would hold client secrets and live tokens.
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot turn core dumps off");
    }
    // File descriptors are a budget: take all the hard limit allows (the soft limit is
    // often 1024, below server.max_connections plus the pools and the admin listener).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    // What parsing and building the config frees goes back to the OS until it is ready.
    let prompt_release = crate::memory::PromptRelease::start();
    let config =
        Config::load(path).with_context(|| format!("invalid configuration {}", path.display()))?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let source = ConfigSource {
        path: path.to_owned(),
        env: Arc::new(ProcessEnv),
    };
    let running = crate::runtime::start_with_file(config, Some(source))
        .await
        .map_err(anyhow::Error::from)?;
    drop(prompt_release);
    let core = Arc::clone(&running.core);
    let _reloader = tokio::spawn(reload_on_sighup(core));
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn check(path: &Path) -> Result<(), Failure> {
    let config = load(path)?;
    crate::upstream::build_client(&config.upstream)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    use crate::audit::report::plural;
    let summary = format!(
        "{}: OK ({}, {}, {})\n",
        path.display(),
        plural(config.instances.len(), "instance"),
        plural(config.clients.len(), "client"),
        plural(config.integrations.len(), "integration")
    );
    // A closed stdout must not turn a valid config into a failure.
    let _ = write_stdout(&summary);
    Ok(())
}

fn hash_key() -> Result<(), Failure> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the key from stdin")?;
    let key = input.strip_suffix('\n').unwrap_or(&input);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() {
        return Err(anyhow::anyhow!(
            "no key on stdin (try: printf %s \"$KEY\" | keybridge hash-key)"
        )
        .into());
    }
    write_stdout(&format!("{}\n", Fingerprint::of_key(key.as_bytes())))
        .context("writing the fingerprint to stdout")?;
    Ok(())
}

async fn audit(path: &Path, args: &AuditArgs) -> Result<(), Failure> {
    let config = Config::load_without_secrets(path)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    recorded_audit(&config)?;
    let store = crate::audit::open_store(&config.audit, &config.replica)
        .await
        .map_err(anyhow::Error::from)?;
    let snapshot = store.snapshot().await.map_err(anyhow::Error::from)?;
    let report = crate::audit::report::build(&snapshot, &config, crate::audit::unix_now());
    let text = match args.format {
        AuditFormat::Table => crate::audit::report::render_table(&report),
        AuditFormat::Csv => crate::audit::report::render_csv(&report),
        AuditFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&report).context("serialising the report")?
        ),
    };
    write_stdout(&text).context("writing the report")?;
    Ok(())
}

/// Whether there is an audit to read: a SQLite file that exists, or a PostgreSQL URL
/// that is set (reading it says whether it can be reached).
fn recorded_audit(config: &Config) -> Result<(), Failure> {
    match &config.audit.postgres_url {
        Some(url) if url.is_empty() => Err(invalid(
            "audit.postgres_url is empty: set the environment variable it names".to_owned(),
        )),
        Some(_) => Ok(()),
        None if config.audit.path.exists() => Ok(()),
        None => Err(invalid(format!(
            "keybridge: no audit store at {} (has keybridge run with this config, from this directory?)",
            config.audit.path.display()
        ))),
    }
}

fn backup_audit(path: &Path, args: &BackupArgs) -> Result<(), Failure> {
    let config = Config::load_without_secrets(path)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    if config.audit.postgres_url.is_some() {
        return Err(invalid(
            "the audit is in PostgreSQL (audit.postgres_url): back it up with pg_dump --table='keybridge_*'"
                .to_owned(),
        ));
    }
    recorded_audit(&config)?;
    let store_path = &config.audit.path;
    crate::audit::backup(store_path, &args.to).map_err(anyhow::Error::from)?;
    let _ = write_stdout(&format!(
        "backed up {} to {}\n",
        store_path.display(),
        args.to.display()
    ));
    Ok(())
}

async fn test_credentials(path: &Path, args: &TestCredentialsArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let Some(client) = config.clients.get(&args.client) else {
        let known: Vec<&str> = config.clients.keys().map(String::as_str).collect();
        return Err(invalid(format!(
            "no client `{}` in {} (defined: {})",
            args.client,
            path.display(),
            known.join(", ")
        )));
    };
    let mut say = |line: &str| {
        let _ = write_stdout(&format!("{line}\n"));
    };
    let recorded = recorded_endpoints(&config, &args.client).await;
    match super::test_credentials::check(&config, client, &recorded, &mut say).await {
        Ok(()) => {
            say(&format!("OK: client `{}` can call Coupa", args.client));
            Ok(())
        }
        Err(failure) => Err(Failure {
            code: failure.exit_code(),
            message: format!("FAILED: client `{}`: {}", args.client, failure.message()),
        }),
    }
}

async fn health(path: &Path, args: &HealthArgs) -> Result<(), Failure> {
    let addr = match args.addr {
        Some(addr) => addr,
        None => {
            let config = Config::load_without_secrets(path)
                .with_context(|| format!("invalid configuration {}", path.display()))?;
            super::health::target(config.admin_listen)
        }
    };
    match super::health::probe(addr, args.probe, args.timeout).await {
        Ok(summary) => {
            let _ = write_stdout(&format!("{summary}\n"));
            Ok(())
        }
        Err(reason) => Err(invalid(format!("keybridge health: {reason}"))),
    }
}

/// What the audit recorded of the integrations using `client`: empty when there is no
/// audit yet (or it cannot be read: the check then goes on without it).
async fn recorded_endpoints(
    config: &Config,
    client: &str,
) -> Vec<super::test_credentials::Recorded> {
    if !config.audit.enabled || recorded_audit(config).is_err() {
        return Vec::new();
    }
    let snapshot = match crate::audit::open_store(&config.audit, &config.replica).await {
        Ok(store) => store.snapshot().await,
        Err(e) => Err(e),
    };
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the audit; checking without recorded endpoints");
            return Vec::new();
        }
    };
    let report = crate::audit::report::build(&snapshot, config, crate::audit::unix_now());
    report
        .integrations
        .into_iter()
        .filter(|i| i.client.as_deref() == Some(client))
        .flat_map(|i| {
            let name = i.name;
            i.endpoints
                .into_iter()
                .map(move |e| super::test_credentials::Recorded {
                    integration: name.clone(),
                    endpoint: e.endpoint,
                    scope: e.scope,
                })
        })
        .collect()
}

async fn mock_coupa(args: MockArgs) -> Result<(), Failure> {
    let mut mock = MockCoupa::new()
        .expires_in(args.expires_in)
        .settle(args.settle);
    for spec in &args.clients {
        let mut parts = spec.splitn(3, ':');
        let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
            return Err(anyhow::anyhow!("--client must be ID:SECRET[:SCOPE,SCOPE...]").into());
        };
        let scopes: Vec<&str> = parts
            .next()
            .map(|s| s.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        mock = mock.client(id, secret, &scopes);
    }
    for key in &args.api_keys {
        mock = mock.api_key(key);
    }
    let handle = mock
        .start(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %handle.addr, "mock Coupa listening");
    shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

async fn demo(args: &DemoArgs) -> Result<(), Failure> {
    let demo = super::demo::start(args).await?;
    // A closed stdout (piped into `head`, say) must not stop the demo.
    let _ = write_stdout(&super::demo::instructions(&demo));
    shutdown_signal().await;
    demo.proxy.shutdown().await;
    demo.mock.stop().await;
    Ok(())
}

/// Writes to stdout without panicking when it is closed (unlike `println!`).
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// SIGHUP: re-read the config file; a bad one is logged and the old one keeps serving.
async fn reload_on_sighup(core: Arc<Core>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; use POST /reload on the admin listener");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            if let Err(e) = core.reload_from_file().await {
                tracing::error!(error = %e, "reload refused; the previous configuration keeps serving");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = core;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
