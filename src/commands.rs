//! The commands beside `run`: `report`, `check` and `queue`.

use std::path::Path;
use std::time::Duration;

use crate::agent::Fatal;
use crate::cli::{QueueAction, ReportArgs};
use crate::config::{Config, ConfigError};
use crate::deliver::{backoff, HttpSink, Outcome, Sink};
use crate::deployment::{Deployment, DeploymentKey, Platform};
use crate::engine::Engine;
use crate::outbox::{self, admin, DB_FILE};
use crate::reference::ImageRef;

/// `report`: one deployment from a pipeline, retried on transient failures until `--timeout`.
/// What `report` sends and how long it may try, from its flags; a bad one is a usage error.
pub fn report_request(
    args: &ReportArgs,
    config: &Config,
) -> Result<(Deployment, Duration), ConfigError> {
    let image =
        ImageRef::parse(&args.image).map_err(|e| ConfigError::new("--image", e.to_string()))?;
    let Some(url) = image.pinned() else {
        return Err(ConfigError::new(
            "--image",
            format!(
                "{:?} is not pinned by digest (REPOSITORY[:TAG]@sha256:...)",
                args.image
            ),
        ));
    };
    let platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(|e| ConfigError::new("--platform", e))?,
        None => Platform::new("linux", "amd64", None),
    };
    let timeout = crate::config::duration("--timeout", args.timeout.clone(), "2m")?;
    let deployment = Deployment {
        key: DeploymentKey {
            environment: config.environment.clone(),
            name: args
                .name
                .clone()
                .unwrap_or_else(|| image.repository.clone()),
        },
        image_url: url,
        platform,
        container: None,
    };
    Ok((deployment, timeout))
}

/// Send one deployment and wait until it is delivered or `timeout` passes.
pub async fn report(
    deployment: Deployment,
    timeout: Duration,
    config: Config,
) -> Result<(), Fatal> {
    let sink = Sink::for_config(&config)?;
    let body = deployment.report_body();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut failures = 0;
    loop {
        match sink.send(&body).await {
            Outcome::Delivered => {
                tracing::info!(key = %deployment.key, image = %deployment.image_url, "deployment reported");
                return Ok(());
            }
            Outcome::Rejected { status, response } => {
                return Err(Fatal(format!("the endpoint refused the report ({status}): {response}")))
            }
            Outcome::Unauthorized { status } => {
                return Err(Fatal(format!(
                    "the endpoint rejected the API token ({status}): check --token-file or DEPLOYTRACK_TOKEN"
                )))
            }
            Outcome::Transient { reason, retry_after } => {
                let delay = backoff(&config.retry, failures).max(retry_after.unwrap_or_default());
                failures += 1;
                if tokio::time::Instant::now() + delay >= deadline {
                    return Err(Fatal(format!(
                        "not delivered within {}: {reason}",
                        humantime::format_duration(timeout)
                    )));
                }
                tracing::warn!(reason = %reason, retry_in = ?delay, "report not delivered yet; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `check`: one line per check, OK or FAIL with the fix; non-zero if anything failed.
pub async fn check(config: Result<Config, ConfigError>) -> Result<(), Fatal> {
    let mut failed = 0;
    let mut line = |ok: bool, what: &str, detail: String| {
        println!("{} {what}: {detail}", if ok { "OK  " } else { "FAIL" });
        failed += usize::from(!ok);
    };
    let config = match config {
        Ok(c) => {
            line(true, "config", "valid".into());
            c
        }
        Err(e) => {
            line(false, "config", e.to_string());
            return Err(Fatal("1 check failed".into()));
        }
    };
    match (&config.token, config.dry_run) {
        (Some(_), _) => line(true, "token", "present".into()),
        (None, true) => line(true, "token", "not needed for a dry run (no --url)".into()),
        (None, false) => line(false, "token", "missing".into()),
    }
    match Engine::connect(&config.docker_host, Duration::from_secs(2)).await {
        Ok(engine) => {
            line(
                true,
                "engine",
                format!("reachable at {}", config.docker_host),
            );
            match engine.api_version().await {
                Ok(v) => {
                    let ok = version_at_least(&v, (1, 24));
                    line(
                        ok,
                        "engine API",
                        format!(
                            "version {v}{}",
                            if ok { "" } else { " (1.24 or newer needed)" }
                        ),
                    );
                }
                Err(e) => line(false, "engine API", e.to_string()),
            }
            match engine.host_name().await {
                Ok(name) => match &config.host_name {
                    Some(set) => line(
                        true,
                        "host name",
                        format!("{set} (set; the engine's is {name:?})"),
                    ),
                    // A warning, not a failure: names still work, they may just collide.
                    None if looks_like_a_default_host_name(&name) => println!(
                        "WARN host name: the engine's host name {name:?} looks like a default that other hosts may share, and their containers would report under the same names: set --host-name (DEPLOYTRACK_HOST_NAME, host_name) to a name unique to this host"
                    ),
                    None => line(true, "host name", format!("{name:?} (the engine's)")),
                },
                Err(e) => line(false, "host name", e.to_string()),
            }
        }
        Err(e) => line(false, "engine", e.to_string()),
    }
    match &config.state_dir {
        None => line(
            true,
            "state dir",
            "none (dry run keeps the queue in memory)".into(),
        ),
        Some(dir) => match check_state_dir(dir) {
            Ok(detail) => line(true, "state dir", detail),
            Err(e) => line(false, "state dir", e),
        },
    }
    match (&config.url, &config.token) {
        (Some(url), Some(token)) => {
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
                Ok(401 | 403) => line(false, "endpoint", format!("{shown} rejected the API token")),
                // Delivery does not follow redirects (a POST would become a GET), so neither
                // does the check.
                Ok(status @ 300..=399) => line(
                    false,
                    "endpoint",
                    format!("{shown} answered {status} (a redirect): set --url to where it points"),
                ),
                Ok(status) => line(
                    true,
                    "endpoint",
                    format!("{shown} reachable (answered {status} to GET)"),
                ),
                Err(e) => line(false, "endpoint", format!("{shown}: {e}")),
            }
        }
        _ => line(
            true,
            "endpoint",
            "none configured: reports are printed (dry run)".into(),
        ),
    }
    if failed > 0 {
        return Err(Fatal(format!("{failed} check(s) failed")));
    }
    Ok(())
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

fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= min
}

/// Writable, or creatable: a missing state dir is not created by a check (the agent does
/// that), but the nearest existing parent must let it be.
fn check_state_dir(dir: &Path) -> Result<String, String> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".deploytrack-check-{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .map_err(|e| format!("{} is not writable: {e}", existing.display()))?;
    let _ = std::fs::remove_file(&probe);
    if existing != dir {
        return Ok(format!(
            "{} does not exist yet; it can be created",
            dir.display()
        ));
    }
    let db = dir.join(DB_FILE);
    if db.exists() {
        outbox::open_file(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    }
    Ok(format!("{} is writable", dir.display()))
}

/// `queue list|dead|retry|purge` against the queue file in the state dir.
pub fn queue(action: &QueueAction, state_dir: &Path) -> Result<(), Fatal> {
    match queue_to(action, state_dir, &mut std::io::stdout().lock()) {
        Err(QueueError::Fatal(f)) => Err(f),
        // A closed pipe (`| head`) is not an error of ours.
        Err(QueueError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(QueueError::Io(e)) => Err(Fatal(format!("cannot write the output: {e}"))),
        Ok(()) => Ok(()),
    }
}

enum QueueError {
    Fatal(Fatal),
    Io(std::io::Error),
}

impl From<Fatal> for QueueError {
    fn from(f: Fatal) -> Self {
        QueueError::Fatal(f)
    }
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        QueueError::Io(e)
    }
}

fn queue_to(
    action: &QueueAction,
    state_dir: &Path,
    out: &mut impl std::io::Write,
) -> Result<(), QueueError> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Err(Fatal(format!("no queue at {}", path.display())).into());
    }
    let db_err = |e: rusqlite::Error| Fatal(format!("{}: {e}", path.display()));
    let mut conn = outbox::open_file(&path).map_err(db_err)?;
    let now = outbox::now_ms();
    let ago = |ms: i64| {
        humantime::format_duration(Duration::from_secs(((now - ms).max(0) / 1000) as u64))
            .to_string()
    };
    match action {
        QueueAction::List => {
            let pending = admin::list_pending(&conn).map_err(db_err)?;
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
                    ago(p.enqueued_ms),
                    p.last_error.as_deref().unwrap_or("-"),
                    p.body
                )?;
            }
        }
        QueueAction::Dead => {
            let dead = admin::list_dead(&conn).map_err(db_err)?;
            writeln!(out, "{} dead letters", dead.len())?;
            for d in dead {
                writeln!(
                    out,
                    "{}\tstatus={}\tfailed={} ago\tresponse={}\t{}",
                    d.key,
                    d.status,
                    ago(d.failed_ms),
                    d.response,
                    d.body
                )?;
            }
        }
        QueueAction::Retry => {
            let moved = admin::retry_dead(&mut conn).map_err(db_err)?;
            writeln!(out, "{moved} dead letters moved back into the queue")?;
        }
        QueueAction::Purge { yes } => {
            if !yes {
                return Err(Fatal(
                    "purge deletes every pending report and dead letter: confirm with --yes".into(),
                )
                .into());
            }
            let (pending, dead) = admin::purge(&mut conn).map_err(db_err)?;
            writeln!(
                out,
                "purged {pending} pending reports and {dead} dead letters"
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
