//! The domain: a `Deployment` is one container instance running one image digest in one
//! environment, and the rules that decide its name, its environment and whether it counts.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const LABEL_ENABLE: &str = "deploytrack.enable";
pub const LABEL_ENVIRONMENT: &str = "deploytrack.environment";
pub const LABEL_NAME: &str = "deploytrack.name";
pub const DEFAULT_NAME_TEMPLATE: &str = "{host}/{container}";

const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_NUMBER: &str = "com.docker.compose.container-number";

/// The receiver keeps one stream per (environment, name); a newer report replaces an older one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeploymentKey {
    pub environment: String,
    pub name: String,
}

/// For logs: control characters (a newline in a label) are escaped, so a name cannot forge
/// a log line.
impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let parts = [self.environment.as_str(), "/", self.name.as_str()];
        for c in parts.iter().flat_map(|p| p.chars()) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, as `docker --platform` spells it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid =
            |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if parts.iter().all(valid) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if parts.iter().all(valid) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(format!(
                "{text:?} is not a platform like linux/amd64 or linux/arm64/v8"
            )),
        }
    }

    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Running,
    Stopped,
}

/// The extension object sent with `--report-stops`; receivers may ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub state: ContainerState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub key: DeploymentKey,
    /// `repository@sha256:...`
    pub image_url: String,
    pub platform: Platform,
    /// Present only when stops are reported.
    pub container: Option<ContainerStatus>,
}

#[derive(Serialize)]
struct Body<'a> {
    image: BodyImage<'a>,
    environment: BodyEnvironment<'a>,
    platform: &'a Platform,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a ContainerStatus>,
}

#[derive(Serialize)]
struct BodyImage<'a> {
    url: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct BodyEnvironment<'a> {
    name: &'a str,
}

impl Deployment {
    /// The request body of `../API.md`, byte for byte what is queued and sent.
    pub fn report_body(&self) -> String {
        let body = Body {
            image: BodyImage {
                url: &self.image_url,
                name: &self.key.name,
            },
            environment: BodyEnvironment {
                name: &self.key.environment,
            },
            platform: &self.platform,
            container: self.container.as_ref(),
        };
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// Read back a body written by `report_body` (the agent's persisted view).
    pub fn from_body(body: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Image {
            url: String,
            name: String,
        }
        #[derive(Deserialize)]
        struct Environment {
            name: String,
        }
        #[derive(Deserialize)]
        struct Stored {
            image: Image,
            environment: Environment,
            platform: Platform,
            container: Option<ContainerStatus>,
        }
        let s: Stored = serde_json::from_str(body).ok()?;
        Some(Deployment {
            key: DeploymentKey {
                environment: s.environment.name,
                name: s.image.name,
            },
            image_url: s.image.url,
            platform: s.platform,
            container: s.container,
        })
    }

    /// The same deployment, now stopped.
    pub fn stopped(&self, exit_code: Option<i64>) -> Self {
        let mut stopped = self.clone();
        if let Some(c) = stopped.container.as_mut() {
            c.state = ContainerState::Stopped;
            c.exit_code = exit_code;
        }
        stopped
    }
}

pub fn validate_environment(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        Err("the environment name is empty".into())
    } else if name.chars().any(char::is_control) {
        Err(format!("{name:?} holds control characters"))
    } else {
        Ok(())
    }
}

/// What a name is made of; the compose facts are absent outside Compose.
#[derive(Debug, Default, Clone)]
pub struct NameFacts<'a> {
    pub host: &'a str,
    pub container: &'a str,
    pub id: &'a str,
    pub labels: Option<&'a HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Host,
    Container,
    Id,
    ComposeProject,
    ComposeService,
    ComposeNumber,
}

/// `image.name` template, parsed once at start so a typo is a config error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate(Vec<Piece>);

impl NameTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(format!("{text:?} has a }} without {{"));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?} has an unclosed {{"))?;
            let placeholder = &rest[open + 1..open + close];
            pieces.push(match placeholder {
                "host" => Piece::Host,
                "container" => Piece::Container,
                "id" => Piece::Id,
                "compose_project" => Piece::ComposeProject,
                "compose_service" => Piece::ComposeService,
                "compose_number" => Piece::ComposeNumber,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} (known: {{host}} {{container}} {{id}} {{compose_project}} {{compose_service}} {{compose_number}})"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?} has a }} without {{"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        if pieces.iter().all(|p| matches!(p, Piece::Text(_))) {
            return Err(format!(
                "{text:?} has no placeholder, so every container would get the same name"
            ));
        }
        Ok(NameTemplate(pieces))
    }

    /// The name for a container. A template naming Compose facts falls back to the default
    /// template for a container that has none, rather than sending names like `web//`.
    pub fn render(&self, facts: &NameFacts<'_>) -> String {
        let label = |key: &str| facts.labels.and_then(|l| l.get(key)).map(String::as_str);
        let mut out = String::new();
        for piece in &self.0 {
            let value = match piece {
                Piece::Text(t) => t.as_str(),
                Piece::Host => facts.host,
                Piece::Container => facts.container,
                // The short id: 12 characters (an id from an event is not always hex).
                Piece::Id => facts
                    .id
                    .char_indices()
                    .nth(12)
                    .map_or(facts.id, |(end, _)| &facts.id[..end]),
                Piece::ComposeProject => match label(COMPOSE_PROJECT) {
                    Some(v) => v,
                    None => return Self::default().render(facts),
                },
                Piece::ComposeService => match label(COMPOSE_SERVICE) {
                    Some(v) => v,
                    None => return Self::default().render(facts),
                },
                Piece::ComposeNumber => match label(COMPOSE_NUMBER) {
                    Some(v) => v,
                    None => return Self::default().render(facts),
                },
            };
            out.push_str(value);
        }
        out
    }
}

impl Default for NameTemplate {
    fn default() -> Self {
        NameTemplate(vec![Piece::Host, Piece::Text("/".into()), Piece::Container])
    }
}

/// `--label-selector`: every entry must match (a bare key matches any value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, Option<String>)>);

impl LabelSelector {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for entry in entries {
            let (key, value) = match entry.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.to_string())),
                None => (entry.trim(), None),
            };
            if key.is_empty() {
                return Err(format!("{entry:?} has no label key (use key=value or key)"));
            }
            out.push((key.to_string(), value));
        }
        Ok(LabelSelector(out))
    }

    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| match (labels.get(k), v) {
            (Some(have), Some(want)) => have == want,
            (Some(_), None) => true,
            (None, _) => false,
        })
    }

    /// The same selector as Engine API `label` filters, so the engine does the filtering.
    pub fn engine_filters(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect()
    }
}

/// Why a container is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    OptedOut,
    NotOptedIn,
    OutOfScope,
    NoDigest,
    /// The image was removed between the event and the inspection.
    ImageGone,
    Unresolvable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "opted_out",
            SkipReason::NotOptedIn => "not_opted_in",
            SkipReason::OutOfScope => "out_of_scope",
            SkipReason::NoDigest => "no_digest",
            SkipReason::ImageGone => "image_gone",
            SkipReason::Unresolvable => "unresolvable",
        }
    }
}

/// Which containers count, decided from labels alone (before any inspection).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub require_label: bool,
    pub selector: LabelSelector,
}

impl Selection {
    pub fn check(&self, labels: &HashMap<String, String>) -> Result<(), SkipReason> {
        let enable = labels
            .get(LABEL_ENABLE)
            .map(|v| v.trim().to_ascii_lowercase());
        if matches!(enable.as_deref(), Some("false" | "0" | "no")) {
            return Err(SkipReason::OptedOut);
        }
        if let Some(value) = enable
            .as_deref()
            .filter(|v| !matches!(*v, "true" | "1" | "yes"))
        {
            warn_unknown_enable(value);
        }
        if self.require_label && !matches!(enable.as_deref(), Some("true" | "1" | "yes")) {
            return Err(SkipReason::NotOptedIn);
        }
        if !self.selector.matches(labels) {
            return Err(SkipReason::OutOfScope);
        }
        Ok(())
    }
}

/// A `deploytrack.enable` value that is neither yes nor no counts as absent; said once per
/// value, as every event of the container would repeat it.
fn warn_unknown_enable(value: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut seen) = SEEN.lock() else {
        return;
    };
    if seen.len() < 64 && !seen.iter().any(|v| v == value) {
        seen.push(value.to_string());
        tracing::warn!(
            "the label {LABEL_ENABLE}={value:?} is neither true nor false; such containers are treated as unlabelled (use true or false)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn body_matches_the_api() {
        let d = Deployment {
            key: DeploymentKey {
                environment: "production".into(),
                name: "edge-1/web".into(),
            },
            image_url: "docker.io/library/nginx@sha256:abc".into(),
            platform: Platform::new("linux", "arm64", Some("v8")),
            container: None,
        };
        assert_eq!(
            d.report_body(),
            r#"{"image":{"url":"docker.io/library/nginx@sha256:abc","name":"edge-1/web"},"environment":{"name":"production"},"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#
        );
        let mut with = d.clone();
        with.container = Some(ContainerStatus {
            id: "c1".into(),
            state: ContainerState::Running,
            exit_code: None,
        });
        assert_eq!(
            Deployment::from_body(&with.report_body()),
            Some(with.clone())
        );
        let stopped = with.stopped(Some(137));
        assert!(stopped
            .report_body()
            .ends_with(r#""container":{"id":"c1","state":"stopped","exit_code":137}}"#));
    }

    #[test]
    fn templates() {
        let l = labels(&[
            (COMPOSE_PROJECT, "shop"),
            (COMPOSE_SERVICE, "web"),
            (COMPOSE_NUMBER, "2"),
        ]);
        let facts = NameFacts {
            host: "edge-1",
            container: "shop-web-2",
            id: "0123456789abcdef",
            labels: Some(&l),
        };
        let t = NameTemplate::parse("{host}/{compose_project}/{compose_service}-{compose_number}")
            .unwrap();
        assert_eq!(t.render(&facts), "edge-1/shop/web-2");
        assert_eq!(
            NameTemplate::parse("{id}@{host}").unwrap().render(&facts),
            "0123456789ab@edge-1"
        );
        let plain = NameFacts {
            labels: None,
            ..facts
        };
        assert_eq!(t.render(&plain), "edge-1/shop-web-2");
        assert!(NameTemplate::parse("{host}/{nope}").is_err());
        assert!(NameTemplate::parse("{host").is_err());
        assert!(NameTemplate::parse("static").is_err());
        assert!(NameTemplate::parse("}{host}").is_err());
        assert!(NameTemplate::parse("{host}}").is_err());
    }

    #[test]
    fn the_short_id_is_twelve_characters_of_any_id() {
        let t = NameTemplate::parse("{id}").unwrap();
        let render = |id| {
            t.render(&NameFacts {
                id,
                ..NameFacts::default()
            })
        };
        assert_eq!(render("0123456789abcdef"), "0123456789ab");
        assert_eq!(render("short"), "short");
        // A multi-byte character across the twelfth byte used to panic the resolver.
        assert_eq!(render("aaaaaaaaaaaŋb"), "aaaaaaaaaaaŋ");
        assert_eq!(render("ŋŋŋŋŋŋŋŋŋŋŋŋŋ"), "ŋŋŋŋŋŋŋŋŋŋŋŋ");
    }

    #[test]
    fn selection_rules() {
        let mut s = Selection::default();
        assert_eq!(
            s.check(&labels(&[(LABEL_ENABLE, "false")])),
            Err(SkipReason::OptedOut)
        );
        assert_eq!(s.check(&labels(&[])), Ok(()));
        s.require_label = true;
        assert_eq!(s.check(&labels(&[])), Err(SkipReason::NotOptedIn));
        assert_eq!(s.check(&labels(&[(LABEL_ENABLE, "true")])), Ok(()));
        s.selector = LabelSelector::parse(&["team=a".into(), "tier".into()]).unwrap();
        assert_eq!(
            s.check(&labels(&[
                (LABEL_ENABLE, "true"),
                ("team", "b"),
                ("tier", "x")
            ])),
            Err(SkipReason::OutOfScope)
        );
        assert_eq!(
            s.check(&labels(&[
                (LABEL_ENABLE, "true"),
                ("team", "a"),
                ("tier", "")
            ])),
            Ok(())
        );
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap(),
            Platform::new("linux", "arm64", Some("v8"))
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
    }
}
