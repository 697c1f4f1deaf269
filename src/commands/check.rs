//! `check`: one line per check of the config, the token, the engine, the registries, the
//! state dir and the endpoint, and a summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, Invalid};
use crate::deliver::HttpSink;
use crate::deployment::Selection;
use crate::engine::evidence::Registries;
use crate::engine::resolve::Resolver;
use crate::engine::transport::ApiVersion;
use crate::engine::Engine;
use crate::error::Fatal;
use crate::evidence::Ledger;
use crate::outbox::{self, DB_FILE};

use super::plural;

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
pub fn checks_failed(n: usize) -> String {
    format!("{n} check{} failed", if n == 1 { "" } else { "s" })
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
