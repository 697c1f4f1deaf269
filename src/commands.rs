//! The commands beside `run`: `report`, `check` and `queue`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::cli::{QueueAction, ReportArgs};
use crate::config::{Config, ConfigError, Invalid};
use crate::deliver::{HttpSink, Outcome, Sink};
use crate::deployment::{Deployment, DeploymentKey, Platform, PlatformError, Selection};
use crate::engine::evidence::Registries;
use crate::engine::resolve::Resolver;
use crate::engine::transport::ApiVersion;
use crate::engine::Engine;
use crate::error::Fatal;
use crate::evidence::Ledger;
use crate::outbox::{self, operator, DB_FILE};
use crate::reference::{ImageRef, ReferenceError};

/// `report`: one deployment from a pipeline, retried on transient failures until `--timeout`.
/// What `report` sends and how long it may try, from its flags; a bad one is a usage error.
pub fn report_request(
    args: &ReportArgs,
    config: &Config,
) -> Result<(Deployment, Duration), ConfigError> {
    let image = ImageRef::parse(&args.image).map_err(|e| ConfigError::new("--image", e))?;
    validate_repository(&image).map_err(|e| ConfigError::new("--image", e))?;
    let Some(url) = image.pinned() else {
        return Err(ConfigError::new(
            "--image",
            ReferenceError::Unpinned(args.image.clone()),
        ));
    };
    let platform = match &args.platform {
        Some(p) => normalize_platform(p).map_err(|e| ConfigError::new("--platform", e))?,
        None => Platform::new("linux", "amd64", None),
    };
    let name = match &args.name {
        Some(name) if name.trim().is_empty() => {
            return Err(ConfigError::new("--name", "the name is empty"))
        }
        Some(name) if name.chars().any(char::is_control) => {
            return Err(ConfigError::new(
                "--name",
                format!("{name:?} holds control characters"),
            ))
        }
        Some(name) => name.clone(),
        None => image.repository.clone(),
    };
    let timeout = crate::config::duration("--timeout", args.timeout.clone(), "2m")?;
    if config.url.is_none() && !config.explicit_dry_run {
        return Err(ConfigError::new(
            "--url",
            "report needs the endpoint: give --url or set DEPLOYTRACK_URL (or pass --dry-run to print the report without sending it)",
        ));
    }
    let deployment = Deployment {
        key: DeploymentKey {
            environment: config.environment.clone(),
            name,
        },
        image_url: url,
        platform,
        container: None,
    };
    Ok((deployment, timeout))
}

/// The repository as Docker accepts it: lowercase path components of letters and digits
/// joined by `.`, `_`, `__` or dashes (the registry host may hold capitals).
fn validate_repository(image: &ImageRef) -> Result<(), ReferenceError> {
    let path = image
        .repository
        .split_once('/')
        .map_or(image.repository.as_str(), |(_, path)| path);
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository(path.to_string()));
    }
    let component_ok = |c: &str| {
        let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
        c.starts_with(alnum)
            && c.ends_with(alnum)
            && c.chars()
                .all(|ch| alnum(ch) || matches!(ch, '.' | '_' | '-'))
            && !c.contains("..")
            && !c.contains("___")
    };
    if let Some(bad) = path.split('/').find(|c| !component_ok(c)) {
        return Err(ReferenceError::BadComponent(bad.to_string()));
    }
    if let Some(tag) = &image.tag {
        let ok = tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(ReferenceError::BadTag(tag.clone()));
        }
    }
    Ok(())
}

/// `--platform` as Docker normalises it: lowercase, `os/arch[/variant]` or an architecture
/// alone (on linux, as `docker --platform arm64` takes it), the common architecture aliases
/// (`x86_64` is `amd64`, `aarch64` is `arm64`, `armhf` is `arm/v7`, `armel` is `arm/v6`,
/// `i386` is `386`) and `7` as `v7`. An OS, an architecture or an arm variant Docker does not
/// know is refused: the receiver would match nothing by it.
fn normalize_platform(text: &str) -> Result<Platform, PlatformError> {
    let lower = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let shape = || PlatformError::Shape(text.to_string());
    let (os, arch, variant) = match parts.as_slice() {
        [arch] if !KNOWN_OSES.contains(arch) => ("linux", *arch, None),
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        _ => return Err(shape()),
    };
    if [os, arch, variant.unwrap_or("x")]
        .iter()
        .any(|p| p.is_empty())
    {
        return Err(shape());
    }
    if !KNOWN_OSES.contains(&os) {
        return Err(PlatformError::UnknownOs {
            text: text.to_string(),
            os: os.to_string(),
        });
    }
    let (architecture, implied) = match arch {
        "x86_64" | "x86-64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "i386" | "i686" => ("386", None),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v6")),
        other if KNOWN_ARCHITECTURES.contains(&other) => (other, None),
        other => {
            return Err(PlatformError::UnknownArchitecture {
                text: text.to_string(),
                architecture: other.to_string(),
            })
        }
    };
    let variant = match variant {
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => Some(format!("v{v}")),
        Some(v) => Some(v.to_string()),
        None => implied.map(str::to_string),
    };
    let known_variant = match (architecture, variant.as_deref()) {
        (_, None) => true,
        ("arm", Some(v)) => matches!(v, "v5" | "v6" | "v7" | "v8"),
        ("arm64", Some(v)) => ["v8", "v9"].iter().any(|major| {
            v == *major
                || v.strip_prefix(major)
                    .and_then(|minor| minor.strip_prefix('.'))
                    .is_some_and(|minor| {
                        minor.len() == 1 && minor.bytes().all(|b| b.is_ascii_digit())
                    })
        }),
        ("amd64", Some(v)) => matches!(v, "v1" | "v2" | "v3" | "v4"),
        (_, Some(v)) => v.bytes().all(|b| b.is_ascii_alphanumeric()),
    };
    if !known_variant {
        return Err(PlatformError::UnknownVariant {
            text: text.to_string(),
            architecture: architecture.to_string(),
            variant: variant.unwrap_or_default(),
        });
    }
    Ok(Platform::new(os, architecture, variant.as_deref()))
}

/// The operating systems of Docker's platforms (Go's GOOS values, as containerd knows them).
const KNOWN_OSES: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// The architectures of Docker's platforms (Go's GOARCH values, as containerd knows them).
const KNOWN_ARCHITECTURES: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// Why `report` did not deliver.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the endpoint refused the report ({status}): {response}")]
    Refused { status: u16, response: String },
    /// The endpoint (its URL without credentials) rejected the token.
    #[error(
        "the endpoint{} rejected the API token ({status}): check --token-file or DEPLOYTRACK_TOKEN",
        at_url(endpoint)
    )]
    Unauthorized {
        status: u16,
        endpoint: Option<String>,
    },
    /// The endpoint cannot take reports until the configuration is fixed; the sentence
    /// names what to fix.
    #[error("{0}")]
    Misconfigured(String),
    /// `--timeout` passed, or will before the endpoint may be asked again: the last
    /// failure's reason, and why no attempt is left.
    #[error("not delivered within {within}: {reason}{gave_up}")]
    NotDelivered {
        within: String,
        reason: String,
        gave_up: GaveUp,
    },
}

/// ` at <URL>`, when the sink has one.
fn at_url(endpoint: &Option<String>) -> String {
    endpoint
        .as_deref()
        .map_or_else(String::new, |url| format!(" at {url}"))
}

/// Why `report` makes no further attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GaveUp {
    /// Nothing is left of `--timeout`.
    #[error("")]
    Deadline,
    /// The endpoint asked to be left alone (`Retry-After`) past the deadline.
    #[error(", and it asked to wait {} (Retry-After), longer than what is left of --timeout ({}); try again later, or give a longer --timeout", crate::clock::human(*wait), crate::clock::human(*left))]
    RetryAfterPastDeadline { wait: Duration, left: Duration },
}

/// Send one deployment to the configured sink and wait until it is delivered or `timeout`
/// passes.
pub async fn report(
    deployment: Deployment,
    timeout: Duration,
    config: Config,
) -> Result<(), Fatal> {
    let sink = crate::deliver::sink_for(&config).map_err(Fatal::Endpoint)?;
    let body = deployment.report_body();
    let attempts = Attempts {
        timeout,
        retry: config.retry,
        answer_within: config.request_timeout,
    };
    send_until_delivered(sink.as_ref(), &body, attempts).await?;
    crate::deliver::log_delivered(&deployment.key, &body, sink.is_dry_run());
    Ok(())
}

/// How `report` tries: for `timeout`, with `retry`'s backoff.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    timeout: Duration,
    retry: Backoff,
    /// How long one request may take (`--request-timeout`): the last attempt starts early
    /// enough to have it before the deadline.
    answer_within: Duration,
}

/// `report`'s attempts: again after each transient failure, with the backoff and never
/// before a `Retry-After`, until the timeout passes. A refusal, a rejected token or a
/// misconfigured endpoint fail at once: retrying cannot help them.
async fn send_until_delivered(
    sink: &dyn Sink,
    body: &str,
    attempts: Attempts,
) -> Result<(), ReportError> {
    let Attempts {
        timeout,
        retry,
        answer_within,
    } = attempts;
    let deadline = tokio::time::Instant::now() + timeout;
    let within = humantime::format_duration(timeout).to_string();
    let mut failures = 0;
    let mut last_made = false;
    let mut last_reason: Option<String> = None;
    loop {
        let Ok(outcome) = tokio::time::timeout_at(deadline, sink.send(body)).await else {
            return Err(ReportError::NotDelivered {
                within,
                reason: last_reason.unwrap_or_else(|| "the endpoint did not answer in time".into()),
                gave_up: GaveUp::Deadline,
            });
        };
        match outcome {
            Outcome::Delivered { .. } => return Ok(()),
            Outcome::Rejected { status, response } => {
                return Err(ReportError::Refused { status, response })
            }
            Outcome::Unauthorized { status } => {
                return Err(ReportError::Unauthorized {
                    status,
                    endpoint: sink.endpoint(),
                })
            }
            Outcome::Misconfigured { reason } => return Err(ReportError::Misconfigured(reason)),
            Outcome::Transient {
                reason,
                retry_after,
            } => {
                let delay = retry.delay_at_least(failures, retry_after);
                failures += 1;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let next = match next_attempt(left, delay, retry_after, answer_within) {
                    Ok(_) if last_made => Err(GaveUp::Deadline),
                    next => next,
                };
                let Next { delay, last } = next.map_err(|gave_up| ReportError::NotDelivered {
                    within: within.clone(),
                    reason: reason.clone(),
                    gave_up,
                })?;
                last_made = last;
                tracing::warn!(reason = %reason, retry_in = %crate::clock::human(delay), "report not delivered yet; retrying");
                last_reason = Some(reason);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// When `report` tries again, and whether that is its last attempt.
#[derive(Debug, PartialEq, Eq)]
struct Next {
    delay: Duration,
    last: bool,
}

/// How long `report` waits before it tries again, with `left` until `--timeout`: the
/// backoff's `delay` (never shorter than a `Retry-After`). Where that attempt could not be
/// answered within `answer_within` before the deadline, one last attempt goes early enough
/// to be (never before a `Retry-After`), rather than none, or one cut off at the deadline.
/// An endpoint that asked to be left alone past the deadline is not asked again before its
/// time: `report` gives up at once, saying why.
fn next_attempt(
    left: Duration,
    delay: Duration,
    retry_after: Option<Duration>,
    answer_within: Duration,
) -> Result<Next, GaveUp> {
    match retry_after {
        _ if left.is_zero() => Err(GaveUp::Deadline),
        Some(wait) if wait > left => Err(GaveUp::RetryAfterPastDeadline { wait, left }),
        _ if delay + answer_within <= left => Ok(Next { delay, last: false }),
        _ => Ok(Next {
            delay: left
                .saturating_sub(answer_within)
                .min(delay)
                .max(retry_after.unwrap_or_default()),
            last: true,
        }),
    }
}

/// `check`: one line per check, OK, WARN or FAIL with the fix, then one line that sums them
/// up; non-zero if anything failed. Each line names what it used: the config file, the
/// token's source, the engine's address. Every check runs: an invalid setting fails the line
/// it belongs to (the token, the engine, the state dir, the endpoint) or a config line, and
/// the others still run.
pub async fn check(config: Config, invalid: Vec<Invalid>) -> Result<(), Fatal> {
    let mut list = Checklist::default();
    let error = |key: &str| {
        invalid
            .iter()
            .find(|i| i.key == key)
            .map(|i| i.error.to_string())
    };
    let general: Vec<&Invalid> = invalid
        .iter()
        .filter(|i| !OWN_LINE.contains(&i.key))
        .collect();
    for i in &general {
        list.line(false, "config", i.error.to_string());
    }
    if general.is_empty() {
        let detail = match &config.config_file {
            Some(file) => format!("{file} is valid"),
            None => "no config file (--config not given): flags, environment and defaults".into(),
        };
        list.line(true, "config", detail);
    }
    match (error("token"), &config.token_source, config.dry_run) {
        (Some(e), _, _) => list.line(false, "token", e),
        (None, Some(source), _) => list.line(true, "token", format!("from {source}")),
        (None, None, true) => list.line(true, "token", "not needed for a dry run".into()),
        (None, None, false) => list.line(false, "token", "missing".into()),
    }
    for warning in config.warnings.iter().filter(|w| w.about == "token") {
        list.warn("token", &warning.message);
    }
    let engine = match error("docker_host") {
        Some(e) => {
            list.line(false, "engine", e);
            None
        }
        None => check_engine(&config, &mut list).await,
    };
    check_registries(&config, error("docker_config"), engine.as_ref(), &mut list).await;
    match error("state_dir") {
        Some(e) => list.line(false, "state dir", e),
        None => check_state_dir_of(&config, &mut list),
    }
    check_settings(&config, engine.as_ref(), &mut list).await;
    match (error("url"), error("token")) {
        (Some(e), _) => list.line(false, "endpoint", e),
        (None, Some(_)) if !config.dry_run => list.line(
            false,
            "endpoint",
            format!(
                "{} not probed: there is no valid token (see the token line)",
                config
                    .url
                    .as_ref()
                    .map_or_else(String::new, |u| crate::config::redact_url(u.as_str()))
            ),
        ),
        _ => check_endpoint(&config, &mut list).await,
    }
    for warning in config.warnings.iter().filter(|w| w.about == "endpoint") {
        list.warn("endpoint", &warning.message);
    }
    println!("{}", list.summary());
    if list.failed > 0 {
        return Err(Fatal::ChecksFailed {
            failed: list.failed,
        });
    }
    Ok(())
}

/// The settings whose error `check` prints on the line of their own check.
const OWN_LINE: &[&str] = &["token", "docker_host", "docker_config", "state_dir", "url"];

/// The lines `check` prints, and how many of each kind.
#[derive(Default)]
struct Checklist {
    ok: usize,
    failed: usize,
    warned: usize,
}

impl Checklist {
    fn line(&mut self, ok: bool, what: &str, detail: String) {
        println!("{} {what}: {detail}", if ok { "OK  " } else { "FAIL" });
        self.ok += usize::from(ok);
        self.failed += usize::from(!ok);
    }

    /// Works, but deserves a look: not a failure.
    fn warn(&mut self, what: &str, detail: &str) {
        println!("WARN {what}: {detail}");
        self.warned += 1;
    }

    /// The closing line: `all 9 checks OK`, `9 checks OK, 1 warning`, `2 checks failed, 1
    /// warning, 6 OK`.
    fn summary(&self) -> String {
        let warnings = match self.warned {
            0 => String::new(),
            1 => ", 1 warning".to_string(),
            n => format!(", {n} warnings"),
        };
        match (self.failed, self.warned) {
            (0, 0) => format!("all {} OK", plural(self.ok, "check")),
            (0, _) => format!("{} OK{warnings}", plural(self.ok, "check")),
            (n, _) => format!("{}{warnings}, {} OK", checks_failed(n), self.ok),
        }
    }
}

/// `1 check failed`, `2 checks failed`: the closing line's start, and the error of `check`.
pub(crate) fn checks_failed(n: usize) -> String {
    format!("{n} check{} failed", if n == 1 { "" } else { "s" })
}

/// `1 check`, `2 checks`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The engine: reachable, its API version, its host name.
/// The engine: reachable, its API version, its host name. The engine, for the checks
/// that ask it more, when it answered.
async fn check_engine(config: &Config, list: &mut Checklist) -> Option<Engine> {
    let engine = match Engine::connect(&config.docker_host, Duration::from_secs(2)).await {
        Ok(engine) => engine,
        Err(e) => {
            list.line(
                false,
                "engine",
                format!("{e} (the address is from {})", config.docker_host_source),
            );
            return None;
        }
    };
    list.line(
        true,
        "engine",
        format!(
            "reachable at {} (from {})",
            config.docker_host, config.docker_host_source
        ),
    );
    match engine.api_version().await {
        Ok(v) => {
            let ok = v.using >= ApiVersion(1, 24);
            list.line(
                ok,
                "engine API",
                format!(
                    "version {v}{}",
                    if ok { "" } else { " (1.24 or newer needed)" }
                ),
            );
        }
        Err(e) => list.line(false, "engine API", e.to_string()),
    }
    match engine.host_name().await {
        Ok(name) => match &config.host_name {
            Some(set) => list.line(
                true,
                "host name",
                format!("{set} (set; the engine's is {name:?})"),
            ),
            // A warning, not a failure: names still work, they may just collide.
            None if looks_like_a_default_host_name(&name) => list.warn(
                "host name",
                &format!("the engine's host name {name:?} looks like a default that other hosts may share, and their containers would report under the same names: set --host-name (DEPLOYTRACK_HOST_NAME, host_name) to a name unique to this host"),
            ),
            None => list.line(true, "host name", format!("{name:?} (the engine's)")),
        },
        Err(e) => list.line(false, "host name", e.to_string()),
    }
    Some(engine)
}

/// The registry credentials, and what runs that no evidence covers (where RepoDigests prove
/// nothing), with what would fix it. Warnings, not failures: the agent still runs.
async fn check_registries(
    config: &Config,
    invalid: Option<String>,
    engine: Option<&Engine>,
    list: &mut Checklist,
) {
    match (invalid, &config.registry_credentials) {
        (Some(e), _) => list.line(false, "registry credentials", e),
        (None, Some(c)) => list.line(true, "registry credentials", c.summary()),
        (None, None) => list.line(true, "registry credentials", "none (no Docker CLI config.json found; give --docker-config DIR for registries that want credentials)".into()),
    }
    let Some(engine) = engine else {
        return;
    };
    let Ok((host, store)) = engine.host_facts().await else {
        return;
    };
    if store.repo_digests_prove() && !config.report_unverified {
        return list.line(
            true,
            "evidence",
            format!(
                "the {} image store's repo digests name the repositories that hold images",
                store.as_str()
            ),
        );
    }
    if config.registry_credentials.is_some() && engine.in_clear() {
        list.warn("registry credentials", "the engine is reached over plain tcp://, so the agent does not send them (they would cross the network in clear)");
    }
    let ledger = config
        .queue_dir()
        .and_then(|dir| crate::outbox::evidence_in(dir).ok())
        .map(|(held, refused)| Ledger::restore(held, refused))
        .unwrap_or_default();
    let resolver = Resolver::new(
        engine.clone(),
        host,
        config.environment.clone(),
        None,
        Selection {
            require_label: config.require_label,
            selector: config.label_selector.clone(),
        },
        false,
    )
    .with_store(store)
    .with_registries(Registries::new(
        ledger,
        None,
        config.registry_credentials.clone(),
    ));
    let Ok(ids) = crate::observe::running_ids(engine, resolver.selection()).await else {
        return;
    };
    for id in &ids {
        let _ = resolver.resolve(id, None).await;
    }
    let unseen = resolver.unseen();
    if unseen.is_empty() {
        return list.line(
            true,
            "evidence",
            format!(
                "every running image has evidence of a repository that holds it ({} containers)",
                ids.len()
            ),
        );
    }
    for line in crate::observe::unseen_summary(&unseen) {
        list.warn("evidence", &line);
    }
}

fn check_state_dir_of(config: &Config, list: &mut Checklist) {
    match (config.queue_dir(), &config.state_dir) {
        (None, Some(dir)) => list.line(
            true,
            "state dir",
            format!(
                "{} is not used: a dry run keeps its queue in memory",
                dir.display()
            ),
        ),
        (None, None) => list.line(
            true,
            "state dir",
            "none (a dry run keeps its queue in memory)".into(),
        ),
        (Some(dir), _) => match check_state_dir(dir) {
            Ok(detail) => list.line(true, "state dir", detail),
            Err(e) => list.line(false, "state dir", e.to_string()),
        },
    }
}

/// The settings that shape keys beside those the state dir last delivered with: a change
/// opens new streams at the endpoint, which the agent logs once and takes, and `sync --once`
/// refuses without `--accept-settings`. A warning, not a failure.
async fn check_settings(config: &Config, engine: Option<&Engine>, list: &mut Checklist) {
    use crate::key_settings::{values, KeySettings};
    let Some(dir) = config.queue_dir() else {
        return;
    };
    // Nothing to compare with: no queue yet, or one an earlier release wrote (the next run
    // remembers these). An unreadable queue is the state dir line's failure.
    let Ok(Some(before)) = outbox::settings_in(dir) else {
        return;
    };
    // Without the engine's host name (the engine line failed), the host is not compared.
    let host = match &config.host_name {
        Some(set) => set.clone(),
        None => match engine {
            Some(engine) => engine.host_name().await.ok(),
            None => None,
        }
        .unwrap_or_else(|| before.host_name.clone()),
    };
    let now = KeySettings::of(config, &host);
    let changes = before.changes(&now);
    if changes.is_empty() {
        return list.line(
            true,
            "settings",
            format!(
                "those {} last delivered with: {}",
                dir.display(),
                now.describe()
            ),
        );
    }
    list.warn(
        "settings",
        &format!(
            "{} last delivered with {}, and these have {}: reports under the new names open new streams at the endpoint; the agent logs the change once and remembers it, sync --once refuses it without --accept-settings",
            dir.display(),
            values(&changes, false),
            values(&changes, true)
        ),
    );
}

/// The endpoint, unless this is a dry run: a POST with the token of a report the API must
/// refuse (no `image.url`), so that the endpoint records nothing and a POST-only webhook is
/// not judged by its answer to a GET.
async fn check_endpoint(config: &Config, list: &mut Checklist) {
    let (url, token) = match (&config.url, &config.token, config.dry_run) {
        (Some(url), Some(token), false) => (url, token),
        (Some(url), _, true) => {
            return list.line(
                true,
                "endpoint",
                format!(
                    "{} not contacted: --dry-run prints reports instead of sending them",
                    crate::config::redact_url(url.as_str())
                ),
            )
        }
        _ => {
            return list.line(
                true,
                "endpoint",
                "none configured: this is a dry run, reports are printed and not sent (give --url, or --config with a file that sets url)".into(),
            )
        }
    };
    let shown = crate::config::redact_url(url.as_str());
    let probe = match HttpSink::new(
        url.clone(),
        token,
        config.request_timeout,
        &config.ca_certificates,
    ) {
        Ok(sink) => sink.probe().await,
        Err(e) => Err(e),
    };
    match probe {
        Ok((status, location)) => match endpoint_verdict(status, location.as_deref()) {
            Verdict::Ok(detail) => list.line(true, "endpoint", format!("{shown} {detail}")),
            Verdict::Warn(detail) => list.warn("endpoint", &format!("{shown} {detail}")),
            Verdict::Fail(detail) => list.line(false, "endpoint", format!("{shown} {detail}")),
        },
        Err(e) => list.line(false, "endpoint", format!("{shown}: {e}")),
    }
}

/// A line of `check`, without the URL in front.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok(String),
    Warn(String),
    Fail(String),
}

/// What the answer to the probe (a report without `image.url`) says about the endpoint.
fn endpoint_verdict(status: u16, location: Option<&str>) -> Verdict {
    match status {
        400 | 422 => Verdict::Ok(format!(
            "is there: it read the probe (a report without image.url) and refused it ({status}), as it must, without refusing the token"
        )),
        200..=299 => Verdict::Warn(format!(
            "accepted the probe, a report without image.url ({status}): the URL takes reports, but this endpoint does not refuse invalid ones (is it the deployment-tracking API?)"
        )),
        401 | 403 => Verdict::Fail(format!(
            "rejected the API token ({status}): check --token-file / DEPLOYTRACK_TOKEN"
        )),
        404 | 405 | 410 => Verdict::Fail(format!(
            "answered the probe with {status}: {}",
            crate::deliver::wrong_endpoint(status)
        )),
        // Delivery does not follow redirects (a POST would become a GET), so neither does
        // the check.
        300..=399 => Verdict::Fail(format!(
            "answered {status} (a redirect) to {}: set --url to where it points",
            location.unwrap_or("nowhere")
        )),
        408 | 425 | 429 | 500..=599 => Verdict::Fail(format!(
            "answered {status}: the endpoint is there but takes no reports now; the agent keeps them queued and retries"
        )),
        _ => Verdict::Warn(format!(
            "answered {status} to the probe (a report without image.url), where 400 or 422 was expected: the agent would move reports it refuses so to the dead letters"
        )),
    }
}

/// Host names that images and installers give every machine they set up: hosts cloned from
/// one image share them.
const DEFAULT_HOST_NAMES: &[&str] = &[
    "localhost",
    "raspberrypi",
    "raspberry",
    "ubuntu",
    "ubuntu-server",
    "debian",
    "orangepi",
    "bananapi",
    "rockpi",
    "dietpi",
    "armbian",
    "alpine",
    "fedora",
    "centos",
    "rocky",
    "almalinux",
    "archlinux",
    "nixos",
    "kali",
    "linux",
    "docker-desktop",
    "moby",
    "rancher-desktop",
];

/// True for a default host name, also with a `.localdomain`, `.local` or `.lan` suffix.
pub fn looks_like_a_default_host_name(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    let bare = [".localdomain", ".local", ".lan", ".home"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(&name);
    DEFAULT_HOST_NAMES.contains(&bare)
}

/// Why `check` fails the state dir.
#[derive(Debug, thiserror::Error)]
enum StateDirError {
    /// `dir`: the state dir, or its nearest existing parent.
    #[error("{} is not writable: {source}", dir.display())]
    NotWritable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", db.display())]
    Queue {
        db: PathBuf,
        source: rusqlite::Error,
    },
}

/// Writable, or creatable: a missing state dir is not created by a check (the agent does
/// that), but the nearest existing parent must let it be.
fn check_state_dir(dir: &Path) -> Result<String, StateDirError> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".deploytrack-check-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|source| StateDirError::NotWritable {
        dir: existing.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(&probe);
    if existing != dir {
        return Ok(format!(
            "{} does not exist yet; it can be created",
            dir.display()
        ));
    }
    let db = dir.join(DB_FILE);
    if db.exists() {
        outbox::open_file(&db).map_err(|source| StateDirError::Queue { db, source })?;
    }
    Ok(format!("{} is writable", dir.display()))
}

/// `queue list|dead|retry|purge` against the queue file in the state dir.
pub fn queue(action: &QueueAction, state_dir: &Path) -> Result<(), QueueCommandError> {
    match queue_to(action, state_dir, &mut std::io::stdout().lock()) {
        // A closed pipe (`| head`) is not an error of ours.
        Err(QueueCommandError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Why a `deploytrack queue` command failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueCommandError {
    /// `purge` without `--yes` (exit 64, before the queue is opened).
    #[error("queue purge deletes every pending report and dead letter: confirm with --yes")]
    PurgeUnconfirmed,
    #[error("no queue at {}: no agent has run with this state dir; give the agent's with --state-dir (or DEPLOYTRACK_STATE_DIR, or --config with the file that sets state_dir; the package's is /var/lib/deploytrack)", .0.display())]
    NoQueue(PathBuf),
    /// This user may not read the queue file; SQLite's refusal when it was the one to say so.
    #[error("permission denied: this user cannot read the queue {}; run the command as the user the agent runs as (for example sudo -u deploytrack), or as root{}", path.display(), sqlite.as_ref().map_or_else(String::new, |e| format!(" ({e})")))]
    Denied {
        path: PathBuf,
        sqlite: Option<rusqlite::Error>,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn queue_to(
    action: &QueueAction,
    state_dir: &Path,
    out: &mut impl std::io::Write,
) -> Result<(), QueueCommandError> {
    if let QueueAction::Purge { yes: false } = action {
        return Err(QueueCommandError::PurgeUnconfirmed);
    }
    let path = state_dir.join(DB_FILE);
    let mut conn = open_queue(&path)?;
    let db_err = |e: rusqlite::Error| queue_db_error(&path, e);
    let now = crate::clock::now_ms();
    match action {
        QueueAction::List => {
            write_pending(&operator::list_pending(&conn).map_err(db_err)?, now, out)?;
        }
        QueueAction::Dead => {
            let dead = operator::list_dead(&conn).map_err(db_err)?;
            let superseded = operator::count_superseded(&conn).map_err(db_err)?;
            write_dead(&dead, superseded, now, out)?;
        }
        QueueAction::Sent => write_sent(&operator::list_sent(&conn).map_err(db_err)?, now, out)?,
        QueueAction::Retry => {
            let (moved, superseded) = operator::retry_dead(&mut conn).map_err(db_err)?;
            let moved = plural(moved, "dead letter");
            if superseded > 0 {
                writeln!(
                    out,
                    "{moved} moved back into the queue; {superseded} superseded by a later delivery of their key {} dropped",
                    if superseded == 1 { "was" } else { "were" }
                )?;
            } else {
                writeln!(out, "{moved} moved back into the queue")?;
            }
        }
        QueueAction::Purge { .. } => {
            let (pending, dead) = operator::purge(&mut conn).map_err(db_err)?;
            writeln!(
                out,
                "purged {} and {}",
                plural(pending, "pending report"),
                plural(dead, "dead letter")
            )?;
        }
    }
    Ok(())
}

/// The queue file for an operator command: it must exist, and this user must be able to read
/// it (else one sentence says as whom to run the command).
fn open_queue(path: &Path) -> Result<rusqlite::Connection, QueueCommandError> {
    let path_buf = || path.to_path_buf();
    match std::fs::File::open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(QueueCommandError::NoQueue(path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(QueueCommandError::Denied {
                path: path_buf(),
                sqlite: None,
            })
        }
        Err(source) => {
            return Err(QueueCommandError::Open {
                path: path_buf(),
                source,
            })
        }
    }
    outbox::open_file(path).map_err(|e| queue_db_error(path, e))
}

/// SQLite's error on the queue file: a refusal to open or write it is a matter of the user
/// the command runs as.
fn queue_db_error(path: &Path, e: rusqlite::Error) -> QueueCommandError {
    match e.sqlite_error_code() {
        Some(
            rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::PermissionDenied
            | rusqlite::ErrorCode::ReadOnly,
        ) => QueueCommandError::Denied {
            path: path.to_path_buf(),
            sqlite: Some(e),
        },
        _ => QueueCommandError::Database {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn ago(now: i64, ms: i64) -> String {
    humantime::format_duration(Duration::from_secs(((now - ms).max(0) / 1000) as u64)).to_string()
}

fn write_pending(
    pending: &[outbox::Pending],
    now: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(out, "{} pending", pending.len())?;
    for p in pending {
        let next = if p.next_attempt_ms <= now {
            "now".to_string()
        } else {
            format!(
                "in {}",
                humantime::format_duration(Duration::from_secs(
                    ((p.next_attempt_ms - now) / 1000) as u64
                ))
            )
        };
        writeln!(
            out,
            "{}\tattempts={}\tnext={}\tqueued={} ago\tlast_error={}\t{}",
            p.key,
            p.attempts,
            next,
            ago(now, p.enqueued_ms),
            p.last_error.as_deref().unwrap_or("-"),
            p.body
        )?;
    }
    Ok(())
}

fn write_dead(
    dead: &[outbox::DeadLetter],
    superseded: i64,
    now: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if superseded > 0 {
        writeln!(
            out,
            "{} ({superseded} superseded by a later delivery of their key, not shown)",
            plural(dead.len(), "dead letter")
        )?;
    } else {
        writeln!(out, "{}", plural(dead.len(), "dead letter"))?;
    }
    for d in dead {
        writeln!(
            out,
            "{}\tstatus={}\tfailed={} ago\tresponse={}\t{}",
            d.key,
            d.status,
            ago(now, d.failed_ms),
            d.response,
            d.body
        )?;
    }
    Ok(())
}

fn write_sent(
    sent: &[outbox::Sent],
    now: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(out, "{} sent (the last report of each key)", sent.len())?;
    for s in sent {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(s.delivered_ms.max(0) as u64);
        writeln!(
            out,
            "{}\tstatus={}\tdelivered={} ago ({})\t{}",
            s.key,
            s.status.map_or("-".to_string(), |c| c.to_string()),
            ago(now, s.delivered_ms),
            humantime::format_rfc3339_seconds(at),
            s.body
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_normalised_as_docker_does() {
        let p = |text: &str| normalize_platform(text).map(|p| serde_json::to_string(&p).unwrap());
        assert_eq!(
            p("Linux/AMD64").unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            p("linux/x86_64").unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            p("linux/aarch64").unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        );
        assert_eq!(
            p("linux/armhf").unwrap(),
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        assert_eq!(
            p("linux/arm/7").unwrap(),
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        assert!(p("linux").is_err());
        // An architecture alone is on linux, as the README promises for aliases.
        assert_eq!(
            p("aarch64").unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        );
        assert_eq!(
            p("x86-64").unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            p("linux/arm64/v8.2").unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8.2"}"#
        );
        // What Docker does not know is refused, naming the part.
        let err = p("linux/amd65").unwrap_err();
        assert_eq!(
            err,
            PlatformError::UnknownArchitecture {
                text: "linux/amd65".into(),
                architecture: "amd65".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with(r#""linux/amd65": "amd65" is not an architecture Docker knows"#),
            "{err}"
        );
        let err = p("lniux/amd64").unwrap_err();
        assert_eq!(
            err,
            PlatformError::UnknownOs {
                text: "lniux/amd64".into(),
                os: "lniux".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#""lniux/amd64": "lniux" is not an operating system Docker knows (linux, windows, ...)"#
        );
        let err = p("linux/arm/v9").unwrap_err();
        assert_eq!(
            err,
            PlatformError::UnknownVariant {
                text: "linux/arm/v9".into(),
                architecture: "arm".into(),
                variant: "v9".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#""linux/arm/v9": "v9" is not a variant of arm Docker knows"#
        );
        for bad in ["linux//v7", "a/b/c/d"] {
            assert_eq!(p(bad), Err(PlatformError::Shape(bad.into())));
        }
    }

    #[test]
    fn repositories_are_validated_as_docker_does() {
        let check = |text: &str| validate_repository(&ImageRef::parse(text).unwrap());
        let digest = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for good in [
            "nginx",
            "Registry.Example:5000/team/app",
            "a/b__c/d-e.f",
            "app:v1.2_x",
        ] {
            assert_eq!(check(&format!("{good}{digest}")), Ok(()), "{good}");
        }
        let err = check(&format!("Nginx{digest}")).unwrap_err();
        assert_eq!(
            err,
            ReferenceError::UppercaseRepository("library/Nginx".into())
        );
        assert_eq!(
            err.to_string(),
            r#"the repository name "library/Nginx" must be lowercase, as Docker requires"#
        );
        for (bad, refusal) in [
            (
                "example.com/-app",
                ReferenceError::BadComponent("-app".into()),
            ),
            (
                "example.com/a..b",
                ReferenceError::BadComponent("a..b".into()),
            ),
            ("app:.tag", ReferenceError::BadTag(".tag".into())),
        ] {
            assert_eq!(check(&format!("{bad}{digest}")), Err(refusal), "{bad}");
        }
    }

    #[test]
    fn the_probe_answer_is_read_as_a_post_of_an_invalid_report() {
        let ok = |status| matches!(endpoint_verdict(status, None), Verdict::Ok(_));
        assert!(
            ok(400) && ok(422),
            "a refusal of the probe is the healthy answer"
        );
        assert_eq!(
            endpoint_verdict(400, None),
            Verdict::Ok("is there: it read the probe (a report without image.url) and refused it (400), as it must, without refusing the token".into())
        );
        match endpoint_verdict(202, None) {
            Verdict::Warn(w) => assert!(
                w.starts_with("accepted the probe, a report without image.url (202)"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
        match endpoint_verdict(401, None) {
            Verdict::Fail(f) => assert!(f.starts_with("rejected the API token (401)"), "{f}"),
            other => panic!("{other:?}"),
        }
        for (status, says) in [
            (404, "(404): is --url mistyped?"),
            (410, "gone (410)"),
            (405, "does not take a POST (405)"),
        ] {
            match endpoint_verdict(status, None) {
                Verdict::Fail(f) => assert!(f.contains(says), "{f}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        assert!(matches!(endpoint_verdict(503, None), Verdict::Fail(_)));
        assert!(
            matches!(endpoint_verdict(301, Some("https://x/")), Verdict::Fail(f) if f.contains("https://x/"))
        );
        assert!(matches!(endpoint_verdict(409, None), Verdict::Warn(_)));
    }

    #[test]
    fn the_closing_line_sums_up() {
        let list = |ok, failed, warned| Checklist { ok, failed, warned }.summary();
        assert_eq!(list(7, 0, 0), "all 7 checks OK");
        assert_eq!(list(7, 0, 1), "7 checks OK, 1 warning");
        assert_eq!(list(5, 1, 2), "1 check failed, 2 warnings, 5 OK");
        assert_eq!(list(4, 2, 0), "2 checks failed, 4 OK");
    }

    #[test]
    fn the_last_attempt_of_report_respects_retry_after() {
        let s = Duration::from_secs;
        let next = |delay, last| Ok(Next { delay, last });
        // The backoff's delay, with time for an answer before the deadline.
        assert_eq!(next_attempt(s(30), s(5), None, s(15)), next(s(5), false));
        // Else one last attempt, early enough to be answered, or at once...
        assert_eq!(next_attempt(s(30), s(20), None, s(15)), next(s(15), true));
        assert_eq!(next_attempt(s(3), s(5), None, s(15)), next(s(0), true));
        // ...but never before a Retry-After.
        assert_eq!(
            next_attempt(s(10), s(7), Some(s(7)), s(15)),
            next(s(7), true)
        );
        // Asked to wait past the deadline: give up now, saying so.
        let why = next_attempt(s(3), s(7), Some(s(7)), s(15)).unwrap_err();
        assert_eq!(
            why,
            GaveUp::RetryAfterPastDeadline {
                wait: s(7),
                left: s(3)
            }
        );
        assert_eq!(
            why.to_string(),
            ", and it asked to wait 7s (Retry-After), longer than what is left of --timeout (3s); try again later, or give a longer --timeout"
        );
        assert_eq!(
            next_attempt(Duration::ZERO, s(1), None, s(15)),
            Err(GaveUp::Deadline)
        );
        assert_eq!(GaveUp::Deadline.to_string(), "");
    }

    #[test]
    fn queue_counts_are_singular_for_one() {
        let dead = outbox::DeadLetter {
            key: DeploymentKey {
                environment: "deployed".into(),
                name: "web".into(),
            },
            status: 400,
            response: "bad".into(),
            failed_ms: 0,
            body: "{}".into(),
        };
        let mut out = Vec::new();
        write_dead(&[dead], 1, 0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "1 dead letter (1 superseded by a later delivery of their key, not shown)\n"
            ),
            "{text}"
        );
        let mut out = Vec::new();
        write_dead(&[], 0, 0, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "0 dead letters\n");
    }

    #[test]
    fn purge_without_yes_is_refused_before_the_queue_is_opened() {
        let dir = std::env::temp_dir().join(format!("deploytrack-nopurge-{}", std::process::id()));
        assert!(matches!(
            queue_to(&QueueAction::Purge { yes: false }, &dir, &mut Vec::new()),
            Err(QueueCommandError::PurgeUnconfirmed)
        ));
        assert!(matches!(
            queue_to(&QueueAction::Purge { yes: true }, &dir, &mut Vec::new()),
            Err(QueueCommandError::NoQueue(path)) if path == dir.join(DB_FILE)
        ));
    }

    #[test]
    fn a_missing_queue_points_to_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("deploytrack-noqueue-{}", std::process::id()));
        let err = match queue_to(&QueueAction::List, &dir, &mut Vec::new()) {
            Err(e @ QueueCommandError::NoQueue(_)) => e.to_string(),
            other => panic!("a missing queue was answered {other:?}"),
        };
        assert!(
            err.starts_with(&format!(
                "no queue at {}/deploytrack.db: no agent has run with this state dir; give the agent's with --state-dir",
                dir.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn default_host_names() {
        for name in [
            "raspberrypi",
            "RaspberryPi",
            "localhost.localdomain",
            "ubuntu",
            "docker-desktop",
            "dietpi.local",
        ] {
            assert!(looks_like_a_default_host_name(name), "{name}");
        }
        for name in ["edge-17", "raspberrypi-kitchen", "web1.example.com", "vm"] {
            assert!(!looks_like_a_default_host_name(name), "{name}");
        }
    }

    /// `report`'s attempts over a scripted sink, on paused time: every instant is exact, in
    /// milliseconds of test time.
    mod attempts {
        use super::*;
        use crate::deliver::script::{ms_since, ok, unavailable, ScriptedSink, Step, URL};
        use crate::deliver::wrong_endpoint;
        use tokio::time::Instant;

        const S: Duration = Duration::from_secs(1);
        const MS: Duration = Duration::from_millis(1);
        /// 1 s doubling up to a minute, without jitter, so that every wait is exact.
        const RETRY: Backoff = Backoff::steady(Duration::from_secs(1), Duration::from_secs(60));
        const UNAVAILABLE: &str = "the endpoint answered 503 Service Unavailable";
        /// `--request-timeout` (the scripted sink's answers come sooner, or never).
        const ANSWER_WITHIN: Duration = Duration::from_secs(1);

        /// The sink answers from `steps`, then with `otherwise`; `report` tries for
        /// `timeout`. What it came to, when (ms), and when each attempt started.
        async fn report_over(
            steps: Vec<Step>,
            otherwise: Step,
            timeout: Duration,
        ) -> (Result<(), ReportError>, u64, Vec<u64>) {
            let start = Instant::now();
            let sink = ScriptedSink::new(start, steps, otherwise);
            let attempts = Attempts {
                timeout,
                retry: RETRY,
                answer_within: ANSWER_WITHIN,
            };
            let result = send_until_delivered(sink.as_ref(), "app v1", attempts).await;
            (result, ms_since(start), sink.times())
        }

        fn not_delivered(within: &str, reason: &str, gave_up: GaveUp) -> ReportError {
            ReportError::NotDelivered {
                within: within.into(),
                reason: reason.into(),
                gave_up,
            }
        }

        #[tokio::test(start_paused = true)]
        async fn delivered_at_the_first_try() {
            let (result, at, attempts) = report_over(vec![], (300 * MS, ok()), 120 * S).await;
            assert_eq!((result, at, attempts), (Ok(()), 300, vec![0]));
        }

        #[tokio::test(start_paused = true)]
        async fn transient_failures_are_retried_with_backoff_until_delivered() {
            // Each answer takes 100 ms; three fail, the fourth is delivered.
            let fail = (100 * MS, unavailable(None));
            let (result, at, attempts) =
                report_over(vec![fail; 3], (100 * MS, ok()), 120 * S).await;
            // 1, 2 and 4 s after each failure.
            assert_eq!(
                (result, at, attempts),
                (Ok(()), 7400, vec![0, 1100, 3200, 7300])
            );
        }

        #[tokio::test(start_paused = true)]
        async fn retry_after_is_a_floor_under_the_backoff() {
            // Asked for 5 s where the backoff says 1 s: 5 s. Then asked for 1 s where the
            // backoff says 2 s: 2 s.
            let steps = vec![
                (Duration::ZERO, unavailable(Some(5 * S))),
                (Duration::ZERO, unavailable(Some(S))),
            ];
            let (result, at, attempts) = report_over(steps, (Duration::ZERO, ok()), 120 * S).await;
            assert_eq!((result, at, attempts), (Ok(()), 7000, vec![0, 5000, 7000]));
        }

        #[tokio::test(start_paused = true)]
        async fn a_retry_after_past_the_deadline_gives_up_at_once() {
            // At 1 s, 9 s are left of 10: a Retry-After of 30 s ends it there.
            let steps = vec![
                (Duration::ZERO, unavailable(None)),
                (Duration::ZERO, unavailable(Some(30 * S))),
            ];
            let (result, at, attempts) = report_over(steps, (Duration::ZERO, ok()), 10 * S).await;
            let gave_up = GaveUp::RetryAfterPastDeadline {
                wait: 30 * S,
                left: 9 * S,
            };
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", UNAVAILABLE, gave_up)),
                    1000,
                    vec![0, 1000]
                )
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_refused_report_fails_at_once() {
            let refused = Outcome::Rejected {
                status: 422,
                response: "image.url is required".into(),
            };
            let (result, at, attempts) = report_over(vec![], (100 * MS, refused), 120 * S).await;
            let refused = ReportError::Refused {
                status: 422,
                response: "image.url is required".into(),
            };
            assert_eq!((result, at, attempts), (Err(refused), 100, vec![0]));
        }

        #[tokio::test(start_paused = true)]
        async fn wrong_credentials_or_url_fail_at_once_naming_the_url() {
            for status in [401, 403] {
                // After a transient failure too: a rejection ends the retries.
                let steps = vec![(100 * MS, unavailable(None))];
                let answer = (100 * MS, Outcome::Unauthorized { status });
                let (result, at, attempts) = report_over(steps, answer, 120 * S).await;
                let err = result.unwrap_err();
                assert_eq!(
                    (&err, at, attempts),
                    (
                        &ReportError::Unauthorized {
                            status,
                            endpoint: Some(URL.into())
                        },
                        1200,
                        vec![0, 1100]
                    )
                );
                assert_eq!(
                    err.to_string(),
                    format!("the endpoint at {URL} rejected the API token ({status}): check --token-file or DEPLOYTRACK_TOKEN")
                );
            }
            for status in [404, 410] {
                // The reason as the HTTP sink gives it: the URL, then what it says of it.
                let reason = format!("{URL}: {}", wrong_endpoint(status));
                let answer = Outcome::Misconfigured {
                    reason: reason.clone(),
                };
                let (result, at, attempts) = report_over(vec![], (100 * MS, answer), 120 * S).await;
                let err = result.unwrap_err();
                assert_eq!(
                    (&err, at, attempts),
                    (&ReportError::Misconfigured(reason), 100, vec![0])
                );
                assert!(err.to_string().starts_with(URL), "{err}");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn the_deadline_falls_during_the_backoff() {
            // 1, 2 and 4 s after each failure; the next wait (8 s) would leave no time for an
            // answer: the last attempt goes 1 s (--request-timeout) before the deadline, and
            // its failure ends the attempts.
            let (result, at, attempts) =
                report_over(vec![], (100 * MS, unavailable(None)), 10 * S).await;
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", UNAVAILABLE, GaveUp::Deadline)),
                    9_100,
                    vec![0, 1100, 3200, 7300, 9_000]
                )
            );
        }

        #[tokio::test(start_paused = true)]
        async fn the_last_attempt_has_time_to_be_delivered() {
            let fail = (100 * MS, unavailable(None));
            let (result, at, attempts) = report_over(vec![fail; 4], (100 * MS, ok()), 10 * S).await;
            assert_eq!(
                (result, at, attempts),
                (Ok(()), 9_100, vec![0, 1100, 3200, 7300, 9_000])
            );
        }

        #[tokio::test(start_paused = true)]
        async fn an_endpoint_that_never_answers_ends_at_the_deadline() {
            let (result, at, attempts) = report_over(vec![], (3600 * S, ok()), 10 * S).await;
            let silent = "the endpoint did not answer in time";
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", silent, GaveUp::Deadline)),
                    10_000,
                    vec![0]
                )
            );
        }
    }
}
