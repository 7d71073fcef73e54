//! Configuration in php-fpm's INI dialect: `[global]` and pool sections, includes, `$pool`,
//! `${ENV}`, durations and booleans as php-fpm reads them, plus our `cgi.*` keys.

mod directives;
mod dump;
mod ini;
mod load;
mod model;
mod suggest;
#[cfg(test)]
mod tests;
mod validate;
mod values;

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
///
/// `prefix` is `-p`: the base for relative paths and include patterns. Without it, relative
/// paths are taken from the directory of `path`, and include patterns from the directory of
/// the file that names them. On success, [`Config::warnings`] holds the findings that are not
/// fatal; on failure, every error found is returned, not only the first.
pub fn load(path: &Path, prefix: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
    load_reporting(path, prefix).0
}

/// [`load`], and the warnings whether it failed or not (on success they are also in
/// [`Config::warnings`]): `-t` prints them next to the errors.
pub fn load_reporting(
    path: &Path,
    prefix: Option<&Path>,
) -> (Result<Config, Vec<ConfigError>>, Vec<String>) {
    match load_checked(path, prefix, &|name| std::env::var(name).ok()) {
        Ok(config) => {
            let warnings = config.warnings.clone();
            (Ok(config), warnings)
        }
        Err((errors, warnings)) => (Err(errors), warnings),
    }
}

#[cfg(test)]
fn load_with_env(
    path: &Path,
    prefix: Option<&Path>,
    env: ini::EnvLookup,
) -> Result<Config, Vec<ConfigError>> {
    load_checked(path, prefix, env).map_err(|(errors, _)| errors)
}

/// [`load`] with `${VAR}` and `env[X] = $VAR` looked up in `env` instead of the process
/// environment, so tests need not change it; errors come with the warnings found.
fn load_checked(
    path: &Path,
    prefix: Option<&Path>,
    env: ini::EnvLookup,
) -> Result<Config, (Vec<ConfigError>, Vec<String>)> {
    let fail = |message: String| {
        Err((
            vec![ConfigError {
                file: Some(path.to_path_buf()),
                line: None,
                section: None,
                key: None,
                message,
            }],
            Vec::new(),
        ))
    };
    let base = match prefix {
        Some(prefix) if !prefix.is_dir() => {
            let message = format!(
                "the global prefix '{}' does not exist or is not a directory",
                prefix.display()
            );
            return fail(message);
        }
        Some(prefix) => std::path::absolute(prefix),
        None => std::path::absolute(path).map(|main| match main.parent() {
            Some(directory) => directory.to_path_buf(),
            None => PathBuf::from("/"),
        }),
    };
    let base = match base {
        Ok(base) => base,
        Err(error) => return fail(format!("cannot make the base directory absolute: {error}")),
    };
    let include_base = prefix.map(|_| base.as_path());
    let draft = load::read(path, include_base, env);
    let origin = validate::Origin {
        main: path,
        prefix,
        base: &base,
    };
    validate::finish(draft, &origin)
}

/// The effective configuration in php-fpm's `-tt` style: every directive, one per line.
pub fn dump(config: &Config) -> String {
    dump::render(config)
}

/// Every directive the loader knows, array ones written `env[]`, `cgi.interpreter[]`, ...
pub fn directive_names() -> Vec<&'static str> {
    directives::names()
}

/// The directives accepted but not acted on yet (each warns once when set).
pub fn unimplemented_directives() -> Vec<&'static str> {
    directives::unimplemented()
}
