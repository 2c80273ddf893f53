//! Entry point: parse the command line, set up logging, run the command on one
//! runtime, print a failure in one place and exit with its code.

use std::process::ExitCode;

use clap::Parser as _;
use keybridge::cli::commands::{self, Failure};
use keybridge::cli::{Cli, Command, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn try_main() -> Result<(), Failure> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    init_tracing(cli.log_format.unwrap_or(match command {
        Command::Demo(_) => LogFormat::Text,
        _ => LogFormat::Json,
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("keybridge: cannot start the async runtime: {e}"),
        })?;
    runtime.block_on(commands::execute(command, &cli.config))
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
