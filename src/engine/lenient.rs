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
    /// `ImageManifestDescriptor` (API >= 1.48, containerd image store): the manifest the
    /// container runs, with its platform when the engine knows it.
    pub manifest: Option<ManifestFacts>,
    /// `State`: running, paused or between restart-policy attempts (all "running" to a
    /// deployment); `None` when the answer has no state.
    pub alive: Option<bool>,
    /// `State.StartedAt`, as the engine wrote it.
    pub started_at: Option<String>,
}

/// The platform manifest a container runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ManifestFacts {
    pub digest: String,
    /// `(os, architecture, variant)`.
    pub platform: Option<(String, String, Option<String>)>,
}

impl ManifestFacts {
    fn from_value(v: &Value) -> Option<Self> {
        let digest = v.get("digest").and_then(Value::as_str)?.to_string();
        Some(ManifestFacts {
            digest,
            platform: v.get("platform").and_then(platform_of),
        })
    }
}

/// `{"os": …, "architecture": …, "variant": …}` (an OCI platform); `None` without both of
/// the first two.
pub fn platform_of(v: &Value) -> Option<(String, String, Option<String>)> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Some((text("os")?, text("architecture")?, text("variant")))
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
            manifest: c
                .image_manifest_descriptor
                .and_then(|d| serde_json::to_value(d).ok())
                .and_then(|d| ManifestFacts::from_value(&d)),
            alive: c.state.as_ref().map(|s| {
                s.running.unwrap_or(false)
                    || s.paused.unwrap_or(false)
                    || s.restarting.unwrap_or(false)
            }),
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
            manifest: c
                .get("ImageManifestDescriptor")
                .and_then(ManifestFacts::from_value),
            alive: c.get("State").and_then(Value::as_object).map(|s| {
                ["Running", "Paused", "Restarting"]
                    .iter()
                    .any(|k| s.get(*k).and_then(Value::as_bool) == Some(true))
            }),
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
    /// `Identity.Pull[].Repository` (Docker 29.3, API 1.53), normalised; bollard's model has
    /// no such field, so only `from_text` fills it.
    pub identity_pulls: Vec<String>,
}

impl ImageFields {
    pub fn from_model(i: bollard::models::ImageInspect) -> Self {
        ImageFields {
            repo_digests: i.repo_digests.unwrap_or_default(),
            os: i.os,
            architecture: i.architecture,
            variant: i.variant,
            identity_pulls: Vec::new(),
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
            identity_pulls: identity_pulls(&i),
        })
    }
}

/// The repositories an image was pulled from, as `Identity.Pull` lists them, normalised
/// (`busybox` is `docker.io/library/busybox`); entries that are not a repository are skipped.
fn identity_pulls(image: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = image
        .get("Identity")
        .and_then(|i| i.get("Pull"))
        .and_then(Value::as_array)
        .map(|pulls| {
            pulls
                .iter()
                .filter_map(|p| p.get("Repository")?.as_str())
                .filter_map(|r| crate::reference::ImageRef::parse(r).ok())
                .filter(|r| r.tag.is_none() && r.digest.is_none())
                .map(|r| r.repository)
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
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
        assert_eq!(facts.manifest, None);
        assert_eq!(facts.alive, Some(false));
        let restarting = ContainerFacts::from_text(
            r#"{"State":{"Status":"restarting","Running":false,"Restarting":true}}"#,
        )
        .unwrap();
        assert_eq!(restarting.alive, Some(true));
        assert_eq!(ContainerFacts::from_text("{}").unwrap().alive, None);
    }

    #[test]
    fn the_manifest_a_container_runs() {
        let text = r#"{"Name":"/web","Image":"sha256:1234","Config":{"Image":"app:1"},
            "ImageManifestDescriptor":{"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "digest":"sha256:0ce1","size":482,
            "platform":{"architecture":"arm","os":"linux","variant":"v7"}}}"#;
        let from_text = ContainerFacts::from_text(text).unwrap();
        let model: bollard::models::ContainerInspectResponse = serde_json::from_str(text).unwrap();
        assert_eq!(ContainerFacts::from_model(model), from_text);
        let manifest = from_text.manifest.unwrap();
        assert_eq!(manifest.digest, "sha256:0ce1");
        assert_eq!(
            manifest.platform,
            Some(("linux".into(), "arm".into(), Some("v7".into())))
        );
        // The platform is optional in the descriptor.
        let bare = ContainerFacts::from_text(
            r#"{"ImageManifestDescriptor":{"digest":"sha256:0ce1","size":1}}"#,
        )
        .unwrap();
        assert_eq!(bare.manifest.unwrap().platform, None);
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
