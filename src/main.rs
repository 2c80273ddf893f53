//! Thin entry point: parse the command line, set up logging, run a subcommand.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use keybridge::cli::{
    AuditArgs, AuditFormat, Cli, Command, LogFormat, MockArgs, TestCredentialsArgs,
};
use keybridge::config::Config;
use keybridge::keys::Fingerprint;
use keybridge::mock::MockCoupa;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.unwrap_or(match cli.command {
        Some(Command::Demo(_)) => LogFormat::Text,
        _ => LogFormat::Json,
    });
    init_tracing(format);
    let command = cli.command.unwrap_or(Command::Run);
    match command {
        Command::Check => check(&cli.config),
        Command::HashKey => report(hash_key()),
        Command::Audit(args) => match runtime() {
            Ok(rt) => report(rt.block_on(audit(&cli.config, &args))),
            Err(code) => code,
        },
        Command::TestCredentials(args) => match runtime() {
            Ok(rt) => rt.block_on(test_credentials(&cli.config, &args)),
            Err(code) => code,
        },
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("keybridge: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            report(runtime.block_on(async_main(command, &cli.config)))
        }
    }
}

async fn async_main(command: Command, config: &std::path::Path) -> anyhow::Result<()> {
    match command {
        Command::Run => run(config).await,
        Command::MockCoupa(args) => mock_coupa(args).await,
        Command::Demo(args) => {
            let demo = keybridge::demo::start(&args).await?;
            // A closed stdout (piped into `head`, say) must not stop the demo.
            let _ = write_stdout(&keybridge::demo::instructions(&demo));
            shutdown_signal().await;
            demo.proxy.shutdown().await;
            demo.mock.stop().await;
            Ok(())
        }
        Command::Check | Command::HashKey | Command::Audit(_) | Command::TestCredentials(_) => {
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("keybridge: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

async fn audit(path: &std::path::Path, args: &AuditArgs) -> anyhow::Result<()> {
    let config = Config::load_without_secrets(path)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    let store_path = &config.audit.path;
    anyhow::ensure!(
        store_path.exists(),
        "no audit store at {} (has keybridge run with this config, from this directory?)",
        store_path.display()
    );
    let store = keybridge::audit::store::Store::open(store_path)?;
    let snapshot = store.snapshot()?;
    let report = keybridge::audit::report::build(&snapshot, &config, keybridge::audit::unix_now());
    let text = match args.format {
        AuditFormat::Table => keybridge::audit::report::render_table(&report),
        AuditFormat::Csv => keybridge::audit::report::render_csv(&report),
        AuditFormat::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
    };
    write_stdout(&text).context("writing the report")
}

async fn test_credentials(path: &std::path::Path, args: &TestCredentialsArgs) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid configuration:\n{e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(client) = config.clients.get(&args.client) else {
        let known: Vec<&str> = config.clients.keys().map(String::as_str).collect();
        eprintln!(
            "no client `{}` in {} (defined: {})",
            args.client,
            path.display(),
            known.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let mut say = |line: &str| {
        let _ = write_stdout(&format!("{line}\n"));
    };
    match keybridge::credentials::check(&config, client, &mut say).await {
        Ok(()) => {
            say(&format!("OK: client `{}` can call Coupa", args.client));
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("FAILED: client `{}`: {}", args.client, failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config =
        Config::load(path).with_context(|| format!("invalid configuration {}", path.display()))?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let source = keybridge::server::ConfigSource {
        path: path.to_owned(),
        env: std::sync::Arc::new(keybridge::config::ProcessEnv),
    };
    let running = keybridge::server::start_with_file(config, Some(source)).await?;
    let core = std::sync::Arc::clone(&running.core);
    let _reloader = tokio::spawn(async move {
        reload_on_sighup(core).await;
    });
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            if let Err(e) = keybridge::upstream::build_client(&config.upstream) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            let summary = format!(
                "{}: OK ({} instances, {} clients, {} integrations)\n",
                path.display(),
                config.instances.len(),
                config.clients.len(),
                config.integrations.len()
            );
            let _ = write_stdout(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid configuration:\n{e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn hash_key() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the key from stdin")?;
    let key = input.strip_suffix('\n').unwrap_or(&input);
    let key = key.strip_suffix('\r').unwrap_or(key);
    anyhow::ensure!(
        !key.is_empty(),
        "no key on stdin (try: printf %s \"$KEY\" | keybridge hash-key)"
    );
    write_stdout(&format!("{}\n", Fingerprint::of_key(key.as_bytes())))
        .context("writing the fingerprint to stdout")
}

/// Writes to stdout without panicking when it is closed (unlike `println!`).
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

async fn mock_coupa(args: MockArgs) -> anyhow::Result<()> {
    let mut mock = MockCoupa::new()
        .expires_in(args.expires_in)
        .settle(args.settle);
    for spec in &args.clients {
        let mut parts = spec.splitn(3, ':');
        let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
            anyhow::bail!("--client must be ID:SECRET[:SCOPE,SCOPE...]");
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
    let handle = mock.start(args.listen).await?;
    tracing::info!(addr = %handle.addr, "mock Coupa listening");
    shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

/// SIGHUP: re-read the config file; a bad one is logged and the old one keeps serving.
async fn reload_on_sighup(core: std::sync::Arc<keybridge::server::Core>) {
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

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
