//! Engine answers read field by field, for when bollard's typed model rejects one: a newer
//! engine's new enum value, a number where a string was expected. Only the fields the agent
//! needs are read, each optional, so an answer the model refuses still reports the container.

use std::collections::HashMap;

use serde_json::Value;

/// What the agent needs of a container inspect answer (`GET /containers/{id}/json`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    /// Without the leading `/`.
    pub name: String,
    /// `Config.Image`: the reference the container was started as.
    pub reference: String,
    /// `Image`: the image ID, else the reference.
    pub image_id: String,
    /// `Config.Labels`.
    pub labels: HashMap<String, String>,
    /// `State.StartedAt`, as the engine wrote it.
    pub started_at: Option<String>,
}

impl ContainerFacts {
    pub fn from_model(c: bollard::models::ContainerInspectResponse) -> Self {
        let config = c.config.unwrap_or_default();
        let reference = config.image.unwrap_or_default();
        ContainerFacts {
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image_id: c
                .image
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| reference.clone()),
            reference,
            labels: config.labels.unwrap_or_default(),
            started_at: c.state.and_then(|s| s.started_at),
        }
    }

    /// The answer's text read field by field; `None` if it is not a JSON object.
    pub fn from_text(text: &str) -> Option<Self> {
        let Ok(Value::Object(c)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        let config = c.get("Config").and_then(Value::as_object);
        let reference = config
            .and_then(|c| c.get("Image"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Some(ContainerFacts {
            name: c
                .get("Name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image_id: c
                .get("Image")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty())
                .map_or_else(|| reference.clone(), str::to_string),
            reference,
            labels: config
                .and_then(|c| c.get("Labels"))
                .map(string_map)
                .unwrap_or_default(),
            started_at: c
                .get("State")
                .and_then(|s| s.get("StartedAt"))
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// What the agent needs of an image inspect answer (`GET /images/{id}/json`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageFields {
    pub repo_digests: Vec<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
}

impl ImageFields {
    pub fn from_model(i: bollard::models::ImageInspect) -> Self {
        ImageFields {
            repo_digests: i.repo_digests.unwrap_or_default(),
            os: i.os,
            architecture: i.architecture,
            variant: i.variant,
        }
    }

    pub fn from_text(text: &str) -> Option<Self> {
        let Ok(Value::Object(i)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        let text_of = |key: &str| i.get(key).and_then(Value::as_str).map(str::to_string);
        Some(ImageFields {
            repo_digests: i
                .get("RepoDigests")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            os: text_of("Os"),
            architecture: text_of("Architecture"),
            variant: text_of("Variant"),
        })
    }
}

/// A JSON object of labels; values that are not strings are written as JSON text.
fn string_map(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.clone(), s.clone())),
                    Value::Null => None,
                    other => Some((k.clone(), other.to_string())),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_fields_survive_what_the_model_rejects() {
        // A state the model does not know, and a label that is a number.
        let text = r#"{"Id":"abc","Name":"/web","Image":"sha256:1234","State":{"Status":"hibernating"},"Config":{"Image":"app:1","Labels":{"tier":3,"team":"core","gone":null}}}"#;
        assert!(serde_json::from_str::<bollard::models::ContainerInspectResponse>(text).is_err());
        let facts = ContainerFacts::from_text(text).unwrap();
        assert_eq!(facts.name, "web");
        assert_eq!(facts.reference, "app:1");
        assert_eq!(facts.image_id, "sha256:1234");
        assert_eq!(facts.labels.get("tier").map(String::as_str), Some("3"));
        assert_eq!(facts.labels.len(), 2);
    }

    #[test]
    fn missing_fields_are_empty_not_errors() {
        let facts = ContainerFacts::from_text(r#"{"Config":{"Image":"app:1"}}"#).unwrap();
        assert_eq!(
            (facts.name.as_str(), facts.image_id.as_str()),
            ("", "app:1")
        );
        assert_eq!(
            ContainerFacts::from_text("{}").unwrap(),
            ContainerFacts::default()
        );
        assert!(ContainerFacts::from_text("[1]").is_none());
        assert!(ContainerFacts::from_text("<html>").is_none());
        let image =
            ImageFields::from_text(r#"{"RepoDigests":["a@sha256:x",7],"Os":"linux"}"#).unwrap();
        assert_eq!(image.repo_digests, vec!["a@sha256:x".to_string()]);
        assert_eq!(image.architecture, None);
    }
}
