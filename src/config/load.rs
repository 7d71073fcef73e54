//! Walks the main file and its includes in order, switching sections and applying each line
//! through the directive table, into drafts that `validate` then checks and resolves.
//!
//! Like php-fpm, an include is read where it stands and in the section that is current there,
//! and the section the included file ends in stays current after it: the files behave as one.
//! Errors do not stop the reading, so one run reports every bad line.

use super::ConfigError;
use super::directives::{self, Apply, Directive, Lookup, Scope, Status, ValueContext};
use super::ini::{self, EnvLookup, Item};
use super::model::{GlobalConfig, PoolConfig};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// php-fpm refuses a sixth file in a chain of includes ("failed to include more than 5 files
/// recursively"); the main file counts.
const MAX_NESTED_FILES: usize = 5;

/// A line in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Location {
    pub file: PathBuf,
    pub line: usize,
}

/// Directive table names (`env[]` for arrays) and where each was last set.
pub(super) type Seen = HashMap<&'static str, Location>;

pub(super) struct PoolDraft {
    /// Starts from the defaults; `listen` holds a placeholder until a `listen` line is seen.
    pub config: PoolConfig,
    /// Where the pool's section first appears.
    pub opened_at: Location,
    pub seen: Seen,
    /// Directives whose value was refused: already reported, so not "missing" as well.
    pub rejected: HashSet<&'static str>,
}

impl PoolDraft {
    /// An error about `key` in this pool, at the line that set it or else at the section.
    pub(super) fn error(&self, key: &str, message: String) -> ConfigError {
        let location = self.seen.get(key).unwrap_or(&self.opened_at);
        error_at(location, Some(&self.config.name), Some(key), message)
    }
}

/// Everything read, before the checks that need the whole picture.
pub(super) struct Draft {
    pub global: GlobalConfig,
    pub pools: Vec<PoolDraft>,
    /// False when the main file itself could not be read.
    pub main_read: bool,
    /// An include was refused or unreadable: what it held (pools, maybe) is unknown.
    pub includes_missing: bool,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

pub(super) fn error_at(
    location: &Location,
    section: Option<&str>,
    key: Option<&str>,
    message: String,
) -> ConfigError {
    ConfigError {
        file: Some(location.file.clone()),
        line: Some(location.line),
        section: Some(section.unwrap_or("global").to_string()),
        key: key.map(str::to_string),
        message,
    }
}

/// Reads `main` and everything it includes. Relative include patterns are taken from
/// `include_base` (the `-p` prefix) when given, else from the directory of the file that
/// names them: php-fpm uses its build prefix there, which we do not have.
pub(super) fn read(main: &Path, include_base: Option<&Path>, env: EnvLookup) -> Draft {
    let mut reader = Reader {
        env,
        include_base,
        draft: Draft {
            global: GlobalConfig::default(),
            pools: Vec::new(),
            main_read: false,
            includes_missing: false,
            errors: Vec::new(),
            warnings: Vec::new(),
        },
        current_pool: None,
        warned_later: HashSet::new(),
        open_files: 0,
    };
    reader.draft.main_read = reader.read_file(main, None);
    reader.draft
}

struct Reader<'a> {
    env: EnvLookup<'a>,
    include_base: Option<&'a Path>,
    draft: Draft,
    /// Index into `draft.pools`; `None` is `[global]`.
    current_pool: Option<usize>,
    /// Directives already warned about as ignored (not implemented yet, or not applicable
    /// here): one warning per key per load.
    warned_later: HashSet<&'static str>,
    open_files: usize,
}

impl Reader<'_> {
    /// Whether the file could be read; the errors in it are collected either way.
    fn read_file(&mut self, path: &Path, included_at: Option<&Location>) -> bool {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                let message = format!("cannot read '{}': {error}", path.display());
                self.draft.errors.push(match included_at {
                    Some(location) => self.error(location, Some("include"), message),
                    None => ConfigError {
                        file: Some(path.to_path_buf()),
                        line: None,
                        section: None,
                        key: None,
                        message: format!("cannot read the configuration file: {error}"),
                    },
                });
                return false;
            }
        };
        self.open_files += 1;
        for line in ini::parse(&bytes, self.env) {
            let location = Location {
                file: path.to_path_buf(),
                line: line.number,
            };
            match line.item {
                Ok(Item::Section(name)) => self.open_section(name, location),
                Ok(Item::Entry(entry)) => self.apply_entry(entry, location),
                Err(message) => {
                    let error = self.error(&location, None, message);
                    self.draft.errors.push(error);
                }
            }
        }
        self.open_files -= 1;
        true
    }

    fn current_section(&self) -> Option<&str> {
        self.current_pool
            .map(|index| self.draft.pools[index].config.name.as_str())
    }

    fn error(&self, location: &Location, key: Option<&str>, message: String) -> ConfigError {
        error_at(location, self.current_section(), key, message)
    }

    /// `[global]` switches back to the global scope; a pool name seen before (in any case)
    /// reopens that pool, as php-fpm does.
    fn open_section(&mut self, name: String, location: Location) {
        if name.eq_ignore_ascii_case("global") {
            self.current_pool = None;
            return;
        }
        let existing = self
            .draft
            .pools
            .iter()
            .position(|pool| pool.config.name.eq_ignore_ascii_case(&name));
        self.current_pool = Some(existing.unwrap_or_else(|| {
            self.draft.pools.push(PoolDraft {
                config: PoolConfig::new(&name, directives::unset_listen()),
                opened_at: location,
                seen: Seen::new(),
                rejected: HashSet::new(),
            });
            self.draft.pools.len() - 1
        }));
    }

    fn apply_entry(&mut self, entry: ini::Entry, location: Location) {
        let scope = match self.current_pool {
            Some(_) => Scope::Pool,
            None => Scope::Global,
        };
        let shown_key = match &entry.index {
            Some(index) => format!("{}[{index}]", entry.key),
            None => entry.key.clone(),
        };
        let problem = match directives::lookup(&entry.key, entry.index.is_some(), scope) {
            Lookup::Found(directive) => {
                return self.apply_directive(directive, entry, &shown_key, location);
            }
            Lookup::Unknown => {
                let hint = match directives::nearest(&entry.key, entry.index.is_some(), scope) {
                    Some(key) => match &entry.index {
                        Some(index) => format!("; did you mean '{key}[{index}]'?"),
                        None => format!("; did you mean '{key}'?"),
                    },
                    None => String::new(),
                };
                format!("unknown entry{hint}")
            }
            Lookup::OtherScope(Scope::Pool) => {
                "unknown entry in [global]: it belongs in a pool section".to_string()
            }
            Lookup::OtherScope(Scope::Global) => {
                "unknown entry in a pool: it belongs in [global]".to_string()
            }
            Lookup::WrongShape(directive) if directive.is_array() => format!(
                "unknown entry: '{}' is an array, write {}[KEY] = value",
                directive.key(),
                directive.key()
            ),
            Lookup::WrongShape(directive) => {
                format!("unknown entry: '{}' is not an array", directive.name)
            }
        };
        let error = self.error(&location, Some(&shown_key), problem);
        self.draft.errors.push(error);
    }

    fn apply_directive(
        &mut self,
        directive: &'static Directive,
        entry: ini::Entry,
        shown_key: &str,
        location: Location,
    ) {
        if let Apply::Include = directive.apply {
            // Read before `$pool` substitution, as php-fpm does.
            return self.include(&entry.value, &location);
        }
        let value = match self.substitute_pool_name(&entry.value) {
            Ok(value) => value,
            Err(message) => {
                let error = self.error(&location, Some(shown_key), message);
                return self.draft.errors.push(error);
            }
        };
        let index = entry.index.as_deref().unwrap_or("");
        let (outcome, notes) = self.run_setter(directive.apply, index, &value);
        if let Err(why) = outcome {
            if let Some(pool) = self.current_pool {
                self.draft.pools[pool].rejected.insert(directive.name);
            }
            let message = format!("invalid value '{value}': {why}");
            let error = self.error(&location, Some(shown_key), message);
            return self.draft.errors.push(error);
        }
        for note in notes {
            let warning = self.error(&location, Some(shown_key), note);
            self.draft.warnings.push(warning.to_string());
        }
        let ignored_because = match directive.status {
            Status::Implemented => None,
            Status::Later => Some("is not implemented yet"),
            Status::NotApplicable(why) => Some(why),
        };
        if let Some(why) = ignored_because
            && self.warned_later.insert(directive.name)
        {
            let message = format!("'{}' {why}; ignored", directive.name);
            let warning = self.error(&location, None, message);
            self.draft.warnings.push(warning.to_string());
        }
        if let Some(pool) = self.current_pool {
            self.draft.pools[pool].seen.insert(directive.name, location);
        }
    }

    /// Stores `value` in the current section; also returns the setter's remarks.
    fn run_setter(
        &mut self,
        apply: Apply,
        index: &str,
        value: &str,
    ) -> (Result<(), String>, Vec<String>) {
        let mut context = ValueContext {
            env: self.env,
            notes: Vec::new(),
        };
        let outcome = match (apply, self.current_pool) {
            (Apply::Global(set), _) => set(&mut self.draft.global, value, &mut context),
            (Apply::Pool(set), Some(pool)) => {
                set(&mut self.draft.pools[pool].config, value, &mut context)
            }
            (Apply::PoolArray(set), Some(pool)) => set(
                &mut self.draft.pools[pool].config,
                index,
                value,
                &mut context,
            ),
            (Apply::Pool(_) | Apply::PoolArray(_), None) | (Apply::Include, _) => {
                unreachable!("lookup only finds pool directives inside a pool")
            }
        };
        (outcome, context.notes)
    }

    /// php-fpm replaces `$pool` with the pool's name in every value, and refuses it where
    /// there is no pool.
    fn substitute_pool_name(&self, value: &str) -> Result<String, String> {
        match self.current_section() {
            Some(pool) => Ok(value.replace("$pool", pool)),
            None if value.contains("$pool") => {
                Err("'$pool' can only be used in a pool section".to_string())
            }
            None => Ok(value.to_string()),
        }
    }

    fn include(&mut self, pattern: &str, location: &Location) {
        if self.open_files >= MAX_NESTED_FILES {
            let message =
                format!("failed to include more than {MAX_NESTED_FILES} files recursively");
            let error = self.error(location, Some("include"), message);
            self.draft.includes_missing = true;
            return self.draft.errors.push(error);
        }
        match self.include_matches(pattern, location) {
            Ok(files) if files.is_empty() => {
                let warning = self.error(
                    location,
                    Some("include"),
                    format!("nothing matches the include pattern '{pattern}'"),
                );
                self.draft.warnings.push(warning.to_string());
            }
            Ok(files) => {
                for file in files {
                    if !self.read_file(&file, Some(location)) {
                        self.draft.includes_missing = true;
                    }
                }
            }
            Err(message) => {
                let error = self.error(location, Some("include"), message);
                self.draft.includes_missing = true;
                self.draft.errors.push(error);
            }
        }
    }

    /// The files `pattern` names, sorted, directories left out; hidden files only when the
    /// pattern spells the dot, as glob(3) does.
    fn include_matches(&self, pattern: &str, location: &Location) -> Result<Vec<PathBuf>, String> {
        let base = match self.include_base {
            Some(prefix) => prefix,
            None => location.file.parent().unwrap_or(Path::new("")),
        };
        let full_pattern = base.join(pattern);
        let Some(full_pattern) = full_pattern.to_str() else {
            return Err(format!(
                "the include path '{}' is not UTF-8",
                full_pattern.display()
            ));
        };
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let matches = glob::glob_with(full_pattern, options)
            .map_err(|error| format!("invalid include pattern '{pattern}': {error}"))?;
        let mut files = Vec::new();
        for found in matches {
            let path = found.map_err(|error| format!("cannot read {error}"))?;
            if !path.is_dir() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}
