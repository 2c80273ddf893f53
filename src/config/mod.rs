//! Configuration: one YAML file, parsed into plain serde types, validated once.
//!
//! [`raw`] is the file's shape, [`validate`] its rules, [`model`] what they produce,
//! [`values`] the value syntaxes (sizes, URLs), [`env`](mod@env) the `${VAR}` expansion.
//!
//! Loading goes YAML text → YAML tree → `${VAR}` expansion (per string, see
//! [`env`](mod@env)) → raw serde structs (`deny_unknown_fields`, so typos fail) → validated
//! runtime types with parsed URLs, durations, digests and [`Secret`]s. Every error names
//! the field it is about (`clients.erp-sync.instance: ...`), and validation reports all
//! problems it finds, not just the first. Nothing after [`Config::load`] re-checks.

mod collect;
mod env;
mod error;
mod locate;
mod model;
mod raw;
mod secret;
mod validate;
mod values;

use std::path::Path;

pub use env::{Env, ProcessEnv};
pub use error::{ConfigError, FieldError};
pub use model::{Client, Config, Forwarding, Instance, Integration, Percent, Plan, RateLimit};
pub use raw::{
    AuditSettings, BearerRequests, ClientAuth, CutoverSettings, FleetSettings, Mode,
    ServerSettings, TlsSettings, TokenSettings, UnknownKeys, UpstreamSettings,
};
pub use secret::Secret;

use collect::Problems;

impl Config {
    /// Reads, expands and validates `path` using the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &ProcessEnv)
    }

    pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base_dir, env)
    }

    /// Loads the file for reading reports: secrets are neither required nor read
    /// (unset variables expand to nothing, secret files are left alone), so
    /// `keybridge audit` works without the proxy's credentials.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        struct Lenient;
        impl Env for Lenient {
            fn var(&self, name: &str) -> Option<String> {
                Some(ProcessEnv.var(name).unwrap_or_default())
            }
        }
        let text = read(path)?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base_dir, &Lenient, false)
    }

    /// Parses a YAML document. Relative `client_secret_file` paths resolve against
    /// `base_dir` (the config file's directory).
    pub fn from_yaml(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, env, true)
    }

    fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Env,
        secrets: bool,
    ) -> Result<Config, ConfigError> {
        let mut tree: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let mut problems = Problems::default();
        let mut unexpanded = Vec::new();
        let mut expanded = Vec::new();
        env::expand_tree(
            &mut tree,
            &mut String::new(),
            env,
            &mut unexpanded,
            &mut expanded,
        );
        for e in unexpanded {
            problems.add(e.field, e.message);
        }
        // Names are read from the file as written, before any repair below.
        let as_written = tree.clone();
        if let Some(raw) = collect::deserialize(&mut tree, &mut problems) {
            match validate::validate(raw, base_dir, secrets) {
                Ok(config) if problems.is_empty() => return Ok(config),
                Ok(_) => {}
                Err(errors) => {
                    for e in errors {
                        problems.add(e.field, e.message);
                    }
                }
            }
        }
        // Values from the environment may be secrets; an error about a misplaced one
        // (a secret where a struct or an instance name belongs) must not quote it.
        let errors = problems
            .into_errors()
            .into_iter()
            .map(|mut e| {
                e.field = locate::by_name(&e.field, &as_written);
                for value in &expanded {
                    e.message = e
                        .message
                        .replace(value.as_str(), "<value from the environment>");
                }
                e
            })
            .collect();
        Err(ConfigError::Invalid(errors))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}
