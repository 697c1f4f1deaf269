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
    fn accepts(self, value: &toml::Value) -> bool {
        match (self, value) {
            (Kind::Text, toml::Value::String(_))
            | (Kind::Bool, toml::Value::Boolean(_))
            | (Kind::Integer, toml::Value::Integer(_)) => true,
            (Kind::TextList, toml::Value::Array(items)) => items.iter().all(toml::Value::is_str),
            _ => false,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string in quotes",
            Kind::Bool => "true or false, without quotes",
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
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The file's text, `origin` naming it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = first_line(e.message());
            let at = e
                .span()
                .map(|s| format!(" at line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_default();
            ConfigError::new("--config", format!("{origin}{at}: {msg}"))
        })?;
        for (key, value) in &table {
            let setting = format!("{origin}: key {key}");
            let Some((_, kind)) = FILE_KEYS.iter().find(|(k, _)| k == key) else {
                let hint = closest_key(key)
                    .map(|k| format!("; did you mean {k}?"))
                    .unwrap_or_default();
                return Err(ConfigError::new(
                    setting,
                    format!("there is no such setting (the keys are the long flag names in snake_case){hint}"),
                ));
            };
            if !kind.accepts(value) {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "expected {}, found {}",
                        kind.expected(),
                        describe_value(value)
                    ),
                ));
            }
        }
        let mut config: FileConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError::new("--config", format!("{origin}: {}", first_line(e.message())))
                })?;
        config.origin = Some(origin.to_string());
        Ok(config)
    }

    /// How an error names one of this file's keys: `<file>: key <name>`.
    pub fn key_source(&self, key: &str) -> String {
        match &self.origin {
            Some(origin) => format!("{origin}: key {key}"),
            None => format!("--{}", key.replace('_', "-")),
        }
    }
}
