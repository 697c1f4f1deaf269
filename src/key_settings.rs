//! The settings that decide which streams the receiver gets: a report's key (environment,
//! name) comes from the environment, the host name and the name template, and the selection
//! decides which containers report at all. The receiver never deletes a stream, so the queue
//! file remembers the settings its state dir delivered with, and a change is said (by the
//! agent, once) or refused (by `sync --once`, unless accepted) rather than opening new
//! streams without a word.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// What the state dir remembers. Stored as JSON in the queue file's `meta` table (key
/// `settings`); a field a later release adds reads as its default in this one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeySettings {
    pub environment: String,
    /// The host name in names: `--host-name`, else the engine's.
    pub host_name: String,
    /// As written; none for the built-in default.
    pub name_template: Option<String>,
    pub require_label: bool,
    /// `key=value` or `key`, sorted.
    pub label_selector: Vec<String>,
}

/// One setting that differs, its values as a message shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The flag that sets it.
    pub setting: &'static str,
    pub before: String,
    pub now: String,
}

impl KeySettings {
    /// The settings `config` reports with on an engine whose host name is `engine_host`.
    pub fn of(config: &Config, engine_host: &str) -> Self {
        KeySettings {
            environment: config.environment.clone(),
            host_name: config
                .host_name
                .clone()
                .unwrap_or_else(|| engine_host.to_string()),
            name_template: config.name_template.as_ref().map(|t| t.as_written()),
            require_label: config.require_label,
            label_selector: {
                // Every entry must match, whatever their order.
                let mut entries = config.label_selector.engine_filters();
                entries.sort();
                entries
            },
        }
    }

    /// Read back what `to_json` wrote; none for a value this release cannot read.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Each setting with its value as a message shows it, in the order of the README's table.
    fn shown(&self) -> [(&'static str, String); 5] {
        let quoted = |s: &str| format!("{s:?}");
        [
            ("--environment", quoted(&self.environment)),
            (
                "--name-template",
                self.name_template
                    .as_deref()
                    .map_or("(the default)".into(), quoted),
            ),
            ("--host-name", quoted(&self.host_name)),
            ("--require-label", self.require_label.to_string()),
            (
                "--label-selector",
                if self.label_selector.is_empty() {
                    "(none)".into()
                } else {
                    quoted(&self.label_selector.join(","))
                },
            ),
        ]
    }

    /// Each setting whose value in `now` differs from this one's.
    pub fn changes(&self, now: &KeySettings) -> Vec<Change> {
        self.shown()
            .into_iter()
            .zip(now.shown())
            .filter(|((_, before), (_, now))| before != now)
            .map(|((setting, before), (_, now))| Change {
                setting,
                before,
                now,
            })
            .collect()
    }

    /// Every setting with its value, for `check`: `--environment "staging", ...`.
    pub fn describe(&self) -> String {
        self.shown()
            .iter()
            .map(|(setting, value)| format!("{setting} {value}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `--environment "staging" and --host-name "edge-1"`: each change's setting and its value
/// before (or `now`).
pub fn values(changes: &[Change], now: bool) -> String {
    let parts: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.setting, if now { &c.now } else { &c.before }))
        .collect();
    match parts.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Why a one-shot command does not deliver: one line naming both values and the way on.
pub fn refusal(state_dir: &str, changes: &[Change]) -> String {
    format!(
        "the state dir {state_dir} last delivered with {}, and this sync has {}: its reports would open new streams at the endpoint, which keeps every stream it was ever sent; give the same settings, or pass --accept-settings to deliver with these and remember them",
        values(changes, false),
        values(changes, true)
    )
}

/// The agent's warning at start, once: the change is taken, and remembered.
pub fn warning(state_dir: &str, changes: &[Change]) -> String {
    format!(
        "the settings that shape report names changed since the state dir {state_dir} last delivered: {} before, {} now; reports under the new names open new streams at the endpoint (the old ones stay there), and the state dir remembers the new settings",
        values(changes, false),
        values(changes, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KeySettings {
        KeySettings {
            environment: "staging".into(),
            host_name: "edge-1".into(),
            name_template: None,
            require_label: false,
            label_selector: vec!["app=web".into()],
        }
    }

    #[test]
    fn a_refusal_names_each_changed_setting_with_both_values() {
        let before = settings();
        assert!(before.changes(&before).is_empty());
        let now = KeySettings {
            environment: "deployed".into(),
            host_name: "edge-2".into(),
            ..settings()
        };
        assert_eq!(
            refusal("/var/lib/deploytrack", &before.changes(&now)),
            "the state dir /var/lib/deploytrack last delivered with --environment \"staging\" and --host-name \"edge-1\", and this sync has --environment \"deployed\" and --host-name \"edge-2\": its reports would open new streams at the endpoint, which keeps every stream it was ever sent; give the same settings, or pass --accept-settings to deliver with these and remember them"
        );
        let now = KeySettings {
            name_template: Some("{host}/{label:app}".into()),
            require_label: true,
            label_selector: Vec::new(),
            ..settings()
        };
        assert_eq!(
            values(&before.changes(&now), false),
            "--name-template (the default), --require-label false and --label-selector \"app=web\""
        );
        assert_eq!(
            values(&before.changes(&now), true),
            "--name-template \"{host}/{label:app}\", --require-label true and --label-selector (none)"
        );
    }

    #[test]
    fn a_template_is_remembered_as_it_was_written() {
        for text in [
            "{host}/{container}",
            "eu/{swarm_service}.{swarm_slot|host}",
            "{label:app|compose_service|\"none\"}-x",
        ] {
            let template = crate::deployment::NameTemplate::parse(text).unwrap();
            assert_eq!(template.as_written(), text);
        }
    }

    #[test]
    fn what_a_later_release_adds_reads_as_its_default() {
        let stored = r#"{"environment":"staging","host_name":"edge-1","label_selector":["app=web"],"added_later":1}"#;
        assert_eq!(KeySettings::from_json(stored), Some(settings()));
        assert_eq!(
            KeySettings::from_json(&settings().to_json()),
            Some(settings())
        );
        assert_eq!(KeySettings::from_json("not json"), None);
        assert_eq!(
            settings().describe(),
            "--environment \"staging\", --name-template (the default), --host-name \"edge-1\", --require-label false, --label-selector \"app=web\""
        );
    }
}
