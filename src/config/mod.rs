//! Configuration in php-fpm's INI dialect: `[global]` and pool sections, includes, `$pool`,
//! `${ENV}`, durations and booleans as php-fpm reads them, plus our `cgi.*` keys.

mod model;

pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One configuration error, with enough context to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in, when it is in a file.
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// `global` or the pool name, when known.
    pub section: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "[{}:{}] ", file.display(), line)?,
            (Some(file), None) => write!(f, "[{}] ", file.display())?,
            _ => {}
        }
        match self.section.as_deref() {
            Some("global") => write!(f, "[global] ")?,
            Some(pool) => write!(f, "[pool {pool}] ")?,
            None => {}
        }
        if let Some(key) = &self.key {
            write!(f, "'{key}': ")?;
        }
        f.write_str(&self.message)
    }
}

/// Load, validate and resolve the configuration at `path`.
pub fn load(path: &Path, prefix: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
    let _ = (path, prefix);
    todo!("config loader")
}

/// The effective configuration in php-fpm's `-tt` style: every directive, one per line.
pub fn dump(config: &Config) -> String {
    let _ = config;
    todo!("config dump")
}
