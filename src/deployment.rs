//! The domain: a `Deployment` is one container instance running one image digest in one
//! environment, and the rules that decide its name, its environment and whether it counts.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const LABEL_ENABLE: &str = "deploytrack.enable";
pub const LABEL_ENVIRONMENT: &str = "deploytrack.environment";
pub const LABEL_NAME: &str = "deploytrack.name";

const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_NUMBER: &str = "com.docker.compose.container-number";
const SWARM_SERVICE: &str = "com.docker.swarm.service.name";
const SWARM_TASK: &str = "com.docker.swarm.task.name";
const SWARM_NODE: &str = "com.docker.swarm.node.id";
const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

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

/// Why a platform is refused; `text` is the platform as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Not `os/arch[/variant]`.
    #[error("{0:?} is not a platform like linux/amd64 or linux/arm64/v8")]
    NotOsArch(String),
    /// Not `os/arch[/variant]`, nor an architecture alone (`report --platform`).
    #[error("{0:?} is not a platform like linux/amd64, linux/arm64/v8 or arm64")]
    Shape(String),
    #[error("{text:?}: {os:?} is not an operating system Docker knows (linux, windows, ...)")]
    UnknownOs { text: String, os: String },
    #[error("{text:?}: {architecture:?} is not an architecture Docker knows (amd64, arm64, arm, 386, ppc64le, s390x, riscv64, ...; aliases x86_64, aarch64, armhf, armel, i386)")]
    UnknownArchitecture { text: String, architecture: String },
    #[error("{text:?}: {variant:?} is not a variant of {architecture} Docker knows")]
    UnknownVariant {
        text: String,
        architecture: String,
        variant: String,
    },
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
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid =
            |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if parts.iter().all(valid) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if parts.iter().all(valid) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(PlatformError::NotOsArch(text.to_string())),
        }
    }

    /// arm64 without a variant is `v8`: the OCI image spec's only arm64 variant, which
    /// Docker reports for arm64 images and Podman leaves out. One form whatever the engine,
    /// so a receiver matching an index's `linux/arm64/v8` entry finds it.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let variant = variant.filter(|v| !v.is_empty());
        let variant = match (architecture, variant) {
            ("arm64", None) => Some("v8"),
            (_, v) => v,
        };
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
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
    /// When the container entered `state`, by its engine's clock (RFC 3339, UTC, to the
    /// nanosecond): its start for `running`; the stop's (or the rename's) event for
    /// `stopped`. A receiver orders one name's reports from several hosts by it (a slot that
    /// moves may see its old host's stop arrive after the new host's start). Absent when
    /// unknown (a stop found by a reconciliation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// An event's time (Unix nanoseconds) as the `since` of a report; `None` when unknown (0).
pub fn time_from_nanos(time_nano: i64) -> Option<String> {
    let nanos = u64::try_from(time_nano).ok().filter(|t| *t > 0)?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
    Some(humantime::format_rfc3339_nanos(at).to_string())
}

/// An engine's timestamp (`State.StartedAt`: RFC 3339, `Z` or an offset) in the form of
/// `time_from_nanos`; `None` for the zero time of a container never started, or an odd one.
pub fn time_from_engine(text: &str) -> Option<String> {
    time_from_nanos(nanos_from_engine(text)?)
}

/// An engine's timestamp (RFC 3339, `Z` or an offset) in Unix nanoseconds, as its events
/// carry them; `None` for the zero time, a time before 1970, or an odd one.
pub fn nanos_from_engine(text: &str) -> Option<i64> {
    let text = text.trim();
    // humantime reads UTC only: apply an offset such as +02:00 by hand.
    // (The text is untrusted: split only at a character boundary, read the offset as ASCII.)
    let split = text
        .len()
        .checked_sub(6)
        .filter(|i| text.is_char_boundary(*i))
        .map(|i| text.split_at(i));
    let (local, offset_secs) = match split {
        Some((local, offset))
            if offset.is_ascii() && matches!(&offset[..1], "+" | "-") && &offset[3..4] == ":" =>
        {
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            let secs = (hours * 60 + minutes) * 60;
            (local, if &offset[..1] == "+" { -secs } else { secs })
        }
        _ => (text.strip_suffix('Z').unwrap_or(text), 0),
    };
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    let at = if offset_secs >= 0 {
        at.checked_add(std::time::Duration::from_secs(offset_secs as u64))?
    } else {
        at.checked_sub(std::time::Duration::from_secs(offset_secs.unsigned_abs()))?
    };
    let nanos = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    i64::try_from(nanos).ok().filter(|t| *t > 0)
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

    /// The same deployment, now stopped (`since`: when, if known).
    pub fn stopped(&self, exit_code: Option<i64>, since: Option<String>) -> Self {
        let mut stopped = self.clone();
        if let Some(c) = stopped.container.as_mut() {
            c.state = ContainerState::Stopped;
            c.exit_code = exit_code;
            c.since = since;
        }
        stopped
    }

    /// True when sending this report after `body` (one sent or queued before, by this
    /// release or an earlier one) would leave the receiver as it is: it keeps, per stream,
    /// the image (digest), the platform, and with `--report-stops` the container and its
    /// state. A field a later release added (`since`) or a spelling it settled on (arm64 as
    /// `v8`) is not a change; `since` counts only when both reports carry it, as a new start
    /// of the same container. A body that cannot be read is compared byte for byte.
    pub fn unchanged_from(&self, body: &str) -> bool {
        if body == self.report_body() {
            return true;
        }
        let Some(before) = Deployment::from_body(body) else {
            return false;
        };
        let platform = |p: &Platform| Platform::new(&p.os, &p.architecture, p.variant.as_deref());
        let container = match (&self.container, &before.container) {
            (None, None) => true,
            (Some(now), Some(then)) => {
                now.id == then.id
                    && now.state == then.state
                    && (now.since.is_none() || then.since.is_none() || now.since == then.since)
            }
            _ => false,
        };
        before.key == self.key
            && before.image_url == self.image_url
            && platform(&before.platform) == platform(&self.platform)
            && container
    }
}

/// The one rule for an environment name, whatever its source (flag, environment variable,
/// file, label): not empty, no control characters, no space at either end. A name is refused
/// rather than trimmed: `" prod "` and `"prod"` would be two streams at the receiver.
pub fn validate_environment(name: &str) -> Result<(), EnvironmentError> {
    if name.trim().is_empty() {
        Err(EnvironmentError::Empty)
    } else if name.chars().any(char::is_control) {
        Err(EnvironmentError::ControlCharacters(name.to_string()))
    } else if name.trim() != name {
        Err(EnvironmentError::Spaces {
            name: name.to_string(),
        })
    } else {
        Ok(())
    }
}

/// Why an environment name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvironmentError {
    #[error("the environment name is empty")]
    Empty,
    #[error("{0:?} holds control characters")]
    ControlCharacters(String),
    #[error("{name:?} begins or ends with a space (the receiver would keep it as another environment than {trimmed:?})", trimmed = name.trim())]
    Spaces { name: String },
}

/// The words a yes-or-no setting takes, whatever its source (flag, environment variable,
/// file, label), in any case.
pub const BOOL_WORDS: [&str; 6] = ["true", "false", "1", "0", "yes", "no"];

/// `true`/`1`/`yes` or `false`/`0`/`no`, in any case and with spaces around; else none.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// What a name is made of. The Compose and Swarm facts are read from the labels, and are
/// absent for a container without them.
#[derive(Debug, Default, Clone)]
pub struct NameFacts<'a> {
    pub host: &'a str,
    pub container: &'a str,
    pub id: &'a str,
    pub labels: Option<&'a HashMap<String, String>>,
}

impl<'a> NameFacts<'a> {
    /// A label's value; an empty one counts as missing (it would leave a name like `web.`).
    fn label(&self, key: &str) -> Option<&'a str> {
        self.labels
            .and_then(|l| l.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The container's place in a Swarm service, if Swarm started it.
    pub fn swarm_task(&self) -> Option<SwarmTask<'a>> {
        let service = self.label(SWARM_SERVICE)?;
        let task = self.label(SWARM_TASK)?;
        // `<service>.<slot>.<task id>`, where a global task has its node id for the slot.
        let middle = task
            .strip_prefix(service)?
            .strip_prefix('.')?
            .rsplit_once('.')?
            .0;
        if middle.is_empty() {
            return None;
        }
        let node = self.label(SWARM_NODE);
        Some(SwarmTask {
            service,
            slot: (Some(middle) != node).then_some(middle),
        })
    }
}

/// A Swarm task as its container's labels describe it. Swarm has no slot label: the slot is
/// the middle part of `com.docker.swarm.task.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmTask<'a> {
    pub service: &'a str,
    /// The slot of a replicated task; `None` for a global task, which has one per node.
    pub slot: Option<&'a str>,
}

/// The built-in name, used when no template is set: a replicated Swarm task is named by its
/// slot (`web.2`, the same after an update and on whichever node it runs), a global one by
/// its host and service, and any other container by its host and name.
pub fn default_name(facts: &NameFacts<'_>) -> String {
    match facts.swarm_task() {
        Some(SwarmTask {
            service,
            slot: Some(slot),
        }) => format!("{service}.{slot}"),
        Some(SwarmTask {
            service,
            slot: None,
        }) => format!("{}/{service}", facts.host),
        None => format!("{}/{}", facts.host, facts.container),
    }
}

/// One fact a placeholder names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fact {
    Host,
    Container,
    Id,
    ComposeProject,
    ComposeService,
    ComposeNumber,
    SwarmService,
    SwarmSlot,
    SwarmNode,
    SwarmStack,
    Label(String),
}

const KNOWN_PLACEHOLDERS: &str = "{host} {container} {id} {compose_project} {compose_service} {compose_number} {swarm_service} {swarm_slot} {swarm_node} {swarm_stack} {label:KEY}";

/// Why one placeholder, or one alternative of a placeholder, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("a placeholder or one of its alternatives is empty")]
    Empty,
    #[error("{{label:}} names no label key")]
    NoLabelKey,
    #[error("the label key {0:?} holds control characters")]
    LabelKeyControlCharacters(String),
    #[error("unknown placeholder {{{0}}} (known: {KNOWN_PLACEHOLDERS})")]
    Unknown(String),
}

/// Why a `--name-template` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0:?} has a }} without {{")]
    UnopenedBrace(String),
    #[error("{0:?} has an unclosed {{")]
    UnclosedBrace(String),
    #[error("{0:?} has no placeholder, so every container would get the same name")]
    NoPlaceholder(String),
    /// `written`: the placeholder, braces included.
    #[error("{written} has a {{ inside a placeholder")]
    BraceInPlaceholder { written: String },
    #[error("{written}: a literal alternative is text in double quotes, like \"none\"")]
    UnquotedLiteral { written: String },
    #[error("{written}: a literal alternative may only come last, after a placeholder")]
    LiteralNotLast { written: String },
    /// A placeholder alone is named by its error; one among alternatives, with its slot.
    #[error("{}{error}", within.as_ref().map_or_else(String::new, |w| format!("{w}: ")))]
    Placeholder {
        within: Option<String>,
        error: PlaceholderError,
    },
}

impl Fact {
    fn parse(text: &str) -> Result<Self, PlaceholderError> {
        Ok(match text {
            "host" => Fact::Host,
            "container" => Fact::Container,
            "id" => Fact::Id,
            "compose_project" => Fact::ComposeProject,
            "compose_service" => Fact::ComposeService,
            "compose_number" => Fact::ComposeNumber,
            "swarm_service" => Fact::SwarmService,
            "swarm_slot" => Fact::SwarmSlot,
            "swarm_node" => Fact::SwarmNode,
            "swarm_stack" => Fact::SwarmStack,
            "" => return Err(PlaceholderError::Empty),
            other => match other.strip_prefix("label:") {
                Some("") => return Err(PlaceholderError::NoLabelKey),
                Some(key) if key.chars().any(char::is_control) => {
                    return Err(PlaceholderError::LabelKeyControlCharacters(key.to_string()))
                }
                Some(key) => Fact::Label(key.to_string()),
                None => return Err(PlaceholderError::Unknown(other.to_string())),
            },
        })
    }

    /// The fact's value for a container; `None` when it has none.
    fn value<'a>(&self, facts: &NameFacts<'a>) -> Option<&'a str> {
        match self {
            Fact::Host => Some(facts.host),
            Fact::Container => Some(facts.container),
            // The short id: 12 characters (an id from an event is not always hex).
            Fact::Id => Some(
                facts
                    .id
                    .char_indices()
                    .nth(12)
                    .map_or(facts.id, |(end, _)| &facts.id[..end]),
            ),
            Fact::ComposeProject => facts.label(COMPOSE_PROJECT),
            Fact::ComposeService => facts.label(COMPOSE_SERVICE),
            Fact::ComposeNumber => facts.label(COMPOSE_NUMBER),
            Fact::SwarmService => facts.label(SWARM_SERVICE),
            Fact::SwarmSlot => facts.swarm_task().and_then(|t| t.slot),
            Fact::SwarmNode => facts.label(SWARM_NODE),
            Fact::SwarmStack => facts.label(STACK_NAMESPACE),
            Fact::Label(key) => facts.label(key),
        }
    }
}

/// `{a|b|"text"}`: the first alternative with a value, else the quoted text, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    alternatives: Vec<Fact>,
    otherwise: Option<String>,
    /// As written, braces included, for messages.
    written: String,
}

impl Slot {
    fn parse(body: &str) -> Result<Self, TemplateError> {
        let written = format!("{{{body}}}");
        if body.contains('{') {
            return Err(TemplateError::BraceInPlaceholder { written });
        }
        let parts: Vec<&str> = body.split('|').collect();
        let mut alternatives = Vec::new();
        let mut otherwise = None;
        for (i, part) in parts.iter().enumerate() {
            if let Some(quoted) = part.strip_prefix('"') {
                let text = quoted
                    .strip_suffix('"')
                    .filter(|t| !t.contains('"'))
                    .ok_or_else(|| TemplateError::UnquotedLiteral {
                        written: written.clone(),
                    })?;
                if i + 1 != parts.len() || alternatives.is_empty() {
                    return Err(TemplateError::LiteralNotLast { written });
                }
                otherwise = Some(text.to_string());
            } else {
                // An alternative among several is named with its placeholder.
                let fact = Fact::parse(part).map_err(|error| TemplateError::Placeholder {
                    within: (parts.len() > 1).then(|| written.clone()),
                    error,
                })?;
                alternatives.push(fact);
            }
        }
        Ok(Slot {
            alternatives,
            otherwise,
            written,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Slot(Slot),
}

/// A placeholder that has no value for a container, and no alternative that has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfilled(pub String);

/// `image.name` template, parsed once at start so a typo is a config error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate(Vec<Piece>);

impl NameTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(TemplateError::UnopenedBrace(text.to_string()));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| TemplateError::UnclosedBrace(text.to_string()))?;
            pieces.push(Piece::Slot(Slot::parse(&rest[open + 1..open + close])?));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(TemplateError::UnopenedBrace(text.to_string()));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        if pieces.iter().all(|p| matches!(p, Piece::Text(_))) {
            return Err(TemplateError::NoPlaceholder(text.to_string()));
        }
        Ok(NameTemplate(pieces))
    }

    /// The template as it was written (what `parse` read).
    pub fn as_written(&self) -> String {
        self.0
            .iter()
            .map(|piece| match piece {
                Piece::Text(t) => t.as_str(),
                Piece::Slot(slot) => slot.written.as_str(),
            })
            .collect()
    }

    /// The name for a container, or the first placeholder it has no value for (the caller
    /// then names it by `default_name`, rather than sending names like `web//`).
    pub fn render(&self, facts: &NameFacts<'_>) -> Result<String, Unfilled> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(slot) => {
                    let value = slot
                        .alternatives
                        .iter()
                        .find_map(|f| f.value(facts))
                        .or(slot.otherwise.as_deref())
                        .ok_or_else(|| Unfilled(slot.written.clone()))?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

/// A `--label-selector` entry without a key (`=value`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0:?} has no label key (use key=value or key)")]
    NoKey(String),
}

/// `--label-selector`: every entry must match (a bare key matches any value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, Option<String>)>);

impl LabelSelector {
    pub fn parse(entries: &[String]) -> Result<Self, SelectorError> {
        let mut out = Vec::new();
        for entry in entries {
            let (key, value) = match entry.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.to_string())),
                None => (entry.trim(), None),
            };
            if key.is_empty() {
                return Err(SelectorError::NoKey(entry.clone()));
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
    /// Containerd image store: no registry confirms that it holds the image.
    Unverified,
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
            SkipReason::Unverified => "unverified",
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
        let label = labels.get(LABEL_ENABLE);
        let enable = label.and_then(|v| parse_bool(v));
        if enable == Some(false) {
            return Err(SkipReason::OptedOut);
        }
        if let (Some(value), None) = (label, enable) {
            warn_unknown_enable(&value.trim().to_ascii_lowercase());
        }
        if self.require_label && enable != Some(true) {
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
            "the label {LABEL_ENABLE}={value:?} is neither yes nor no; such containers are treated as unlabelled (use true, false, 1, 0, yes or no)"
        );
    }
}

#[cfg(test)]
mod tests;
