//! Configuration: one YAML file, parsed into plain serde types, validated once.
//!
//! [`raw`] is the file's shape, [`validate`] its rules, [`model`] what they produce,
//! [`values`] the value syntaxes (sizes, URLs), [`env`] the `${VAR}` expansion.
//!
//! Loading goes YAML text → YAML tree → `${VAR}` expansion (per string, see
//! [`env`]) → raw serde structs (`deny_unknown_fields`, so typos fail) → validated
//! runtime types with parsed URLs, durations, digests and [`Secret`]s. Every error names
//! the field it is about (`clients.erp-sync.instance: ...`), and validation reports all
//! problems it finds, not just the first. Nothing after [`Config::load`] re-checks.

mod env;
mod error;
mod model;
mod raw;
mod secret;
mod validate;
mod values;

use std::path::Path;

pub use env::{Env, ProcessEnv};
pub use error::{ConfigError, FieldError};
pub use model::{Client, Config, Forwarding, Instance, Integration, Percent, Plan};
pub use raw::{
    AuditSettings, BearerRequests, ClientAuth, CutoverSettings, Mode, ServerSettings, TlsSettings,
    TokenSettings, UnknownKeys, UpstreamSettings,
};
pub use secret::Secret;

use raw::RawConfig;

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
        let mut errors = Vec::new();
        let mut expanded = Vec::new();
        env::expand_tree(
            &mut tree,
            &mut String::new(),
            env,
            &mut errors,
            &mut expanded,
        );
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        // Values from the environment may be secrets; an error about a misplaced one
        // (a secret where a struct or an instance name belongs) must not quote it.
        Self::parse_expanded(tree, base_dir, secrets).map_err(|e| match e {
            ConfigError::Invalid(errors) => ConfigError::Invalid(
                errors
                    .into_iter()
                    .map(|mut e| {
                        for value in &expanded {
                            e.message = e
                                .message
                                .replace(value.as_str(), "<value from the environment>");
                        }
                        e
                    })
                    .collect(),
            ),
            other => other,
        })
    }

    fn parse_expanded(
        tree: yaml_serde::Value,
        base_dir: &Path,
        secrets: bool,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                "(top level)".to_owned()
            } else {
                field
            };
            ConfigError::Invalid(vec![FieldError {
                field,
                message: e.into_inner().to_string(),
            }])
        })?;
        validate::validate(raw, base_dir, secrets)
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}
