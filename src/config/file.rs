//! The config file (`--config`): its keys, the kind of value each takes, and errors that
//! name the key, the kind and the closest known key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The config file: the long flag names in snake_case. A typo is an error, not a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub environment: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub docker_host: Option<String>,
    pub dry_run: Option<bool>,
    pub name_template: Option<String>,
    pub host_name: Option<String>,
    pub require_label: Option<bool>,
    pub label_selector: Option<Vec<String>>,
    pub report_stops: Option<bool>,
    pub report_unverified: Option<bool>,
    pub docker_config: Option<PathBuf>,
    pub concurrency: Option<i64>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub queue_max_entries: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub resync_interval: Option<String>,
    pub listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// The file's path, to name it in errors; none without `--config`.
    #[serde(skip)]
    pub origin: Option<String>,
}

/// The kind of value a key of the config file takes, in the words an error uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Bool,
    Integer,
    TextList,
}

/// Every key of the config file (the `FileConfig` fields) and the kind of its value.
pub(super) const FILE_KEYS: &[(&str, Kind)] = &[
    ("url", Kind::Text),
    ("token_file", Kind::Text),
    ("ca_file", Kind::Text),
    ("environment", Kind::Text),
    ("state_dir", Kind::Text),
    ("docker_host", Kind::Text),
    ("dry_run", Kind::Bool),
    ("name_template", Kind::Text),
    ("host_name", Kind::Text),
    ("require_label", Kind::Bool),
    ("label_selector", Kind::TextList),
    ("report_stops", Kind::Bool),
    ("report_unverified", Kind::Bool),
    ("docker_config", Kind::Text),
    ("concurrency", Kind::Integer),
    ("retry_initial", Kind::Text),
    ("retry_max", Kind::Text),
    ("queue_max_entries", Kind::Integer),
    ("shutdown_timeout", Kind::Text),
    ("request_timeout", Kind::Text),
    ("resync_interval", Kind::Text),
    ("listen", Kind::Text),
    ("log_level", Kind::Text),
    ("log_format", Kind::Text),
];

impl Kind {
    /// The value as this kind takes it: a yes-or-no setting takes the words every source
    /// takes (`true`, `"yes"`, `1`, `"0"`...), and becomes a TOML boolean.
    fn accept(self, value: &toml::Value) -> Option<toml::Value> {
        match (self, value) {
            (Kind::Text, toml::Value::String(_)) | (Kind::Integer, toml::Value::Integer(_)) => {
                Some(value.clone())
            }
            (Kind::Bool, toml::Value::Boolean(_)) => Some(value.clone()),
            (Kind::Bool, toml::Value::String(text)) => {
                crate::deployment::parse_bool(text).map(toml::Value::Boolean)
            }
            (Kind::Bool, toml::Value::Integer(n @ (0 | 1))) => Some(toml::Value::Boolean(*n == 1)),
            (Kind::TextList, toml::Value::Array(items))
                if items.iter().all(toml::Value::is_str) =>
            {
                Some(value.clone())
            }
            _ => None,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string in quotes",
            Kind::Bool => "true or false (or 1, 0, \"yes\", \"no\")",
            Kind::Integer => "a whole number, without quotes",
            Kind::TextList => "a list of strings in quotes, like [\"team=payments\"]",
        }
    }
}

/// toml's message spans several lines (it quotes the file); an error keeps the first.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("parse error")
}

/// A TOML value as an error names it.
fn describe_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the number {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(items) => match items.iter().find(|v| !v.is_str()) {
            Some(odd) => format!("a list holding {}", describe_value(odd)),
            None => "a list".into(),
        },
        toml::Value::Table(_) => "a table".into(),
    }
}

/// Why a key is not one: the keys are the long flags' names. The token itself never goes in
/// the file (which is often world-readable and kept in version control): `token_file` names
/// the file that holds it.
fn unknown_key(key: &str) -> String {
    if matches!(key, "token" | "api_token" | "api_key") {
        return "there is no such setting: the token never goes in the config file; write it to a file of its own (mode 0600) and set token_file = \"/path/to/that/file\", or set DEPLOYTRACK_TOKEN".into();
    }
    let hint = closest_key(key)
        .map(|k| format!("; did you mean {k}?"))
        .unwrap_or_default();
    format!("there is no such setting (the keys are the long flag names in snake_case){hint}")
}

/// The known key closest to a misspelt one, if any is close.
fn closest_key(key: &str) -> Option<&'static str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let current = row[j + 1];
                row[j + 1] = (previous + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(current + 1);
                previous = current;
            }
        }
        row[b.len()]
    };
    FILE_KEYS
        .iter()
        .map(|(k, _)| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (config, mut errors) = Self::load_each(path);
        match errors.is_empty() {
            true => Ok(config),
            false => Err(errors.remove(0)),
        }
    }

    /// The file with each bad key left out, and the errors, for `check`; a file that cannot
    /// be read or parsed at all is one error and no settings.
    pub fn load_each(path: Option<&Path>) -> (Self, Vec<ConfigError>) {
        let Some(path) = path else {
            return (Self::default(), Vec::new());
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_each(&text, &path.display().to_string()),
            Err(e) => (
                Self::default(),
                vec![ConfigError::new(
                    "--config",
                    format!("cannot read {}: {e}", path.display()),
                )],
            ),
        }
    }

    /// The file's text, `origin` naming it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let (config, mut errors) = Self::parse_each(text, origin);
        match errors.is_empty() {
            true => Ok(config),
            false => Err(errors.remove(0)),
        }
    }

    /// `parse`, leaving each bad key out and naming it.
    fn parse_each(text: &str, origin: &str) -> (Self, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(e) => {
                let e: toml::de::Error = e;
                let msg = first_line(e.message());
                let at = e
                    .span()
                    .map(|s| format!(" at line {}", text[..s.start].lines().count().max(1)))
                    .unwrap_or_default();
                let error = ConfigError::new("--config", format!("{origin}{at}: {msg}"));
                return (Self::default(), vec![error]);
            }
        };
        let mut accepted = toml::Table::new();
        for (key, value) in table {
            let setting = format!("{origin}: key {key}");
            let Some((_, kind)) = FILE_KEYS.iter().find(|(k, _)| *k == key) else {
                errors.push(ConfigError::new(setting, unknown_key(&key)));
                continue;
            };
            match kind.accept(&value) {
                Some(value) => {
                    accepted.insert(key, value);
                }
                None => errors.push(ConfigError::new(
                    setting,
                    format!(
                        "expected {}, found {}",
                        kind.expected(),
                        describe_value(&value)
                    ),
                )),
            }
        }
        let mut config: FileConfig = match toml::Value::Table(accepted).try_into() {
            Ok(config) => config,
            Err(e) => {
                let e: toml::de::Error = e;
                let error =
                    ConfigError::new("--config", format!("{origin}: {}", first_line(e.message())));
                errors.push(error);
                FileConfig::default()
            }
        };
        config.origin = Some(origin.to_string());
        (config, errors)
    }

    /// How an error names one of this file's keys: `<file>: key <name>`.
    pub fn key_source(&self, key: &str) -> String {
        match &self.origin {
            Some(origin) => format!("{origin}: key {key}"),
            None => format!("--{}", key.replace('_', "-")),
        }
    }
}
