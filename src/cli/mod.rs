//! The binary's faces, on the top floor: nothing in the crate imports them but
//! `main.rs`. [`args`] is the command line (clap); [`commands`] runs each subcommand —
//! `run` (the proxy, [`crate::runtime`]), `check`, `audit`, `test-credentials`
//! ([`test_credentials`]), `health` ([`health`]), `demo` ([`demo`]) and `mock-coupa`
//! ([`mock`], the mock Coupa the tests and the demo run against).

pub mod args;
pub mod commands;
pub mod demo;
mod health;
pub mod mock;
mod test_credentials;

pub use args::{Cli, Command, LogFormat};
