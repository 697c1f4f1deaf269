//! Which repository holds an image: the `image.url` of a report must name a repository
//! that really holds the digest, or the receiver records an image nobody can pull.
//!
//! On the classic image store RepoDigests are that evidence: the engine records one only when
//! it pulls or pushes. On the containerd image store every local name gets a repo digest,
//! pushed or not (`docker tag registry.example/app:1 app:prod` adds `docker.io/library/app@…`),
//! so a candidate must be confirmed: the engine asks the registry for the manifest
//! (`GET /distribution/{repository}@{digest}/json`). Answers are cached, and each lookup is
//! bounded in time, so a slow or unreachable registry delays a report by at most a few
//! seconds, once per candidate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Engine;

/// How the engine stores images, which decides what RepoDigests prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageStore {
    /// Docker's graph drivers (overlay2 and friends), and Podman: a repo digest is recorded
    /// by a pull or a push.
    #[default]
    Classic,
    /// Docker's containerd image store (`driver-type io.containerd.snapshotter.v1`): every
    /// local name has a repo digest.
    Containerd,
}

impl ImageStore {
    /// From `/info`'s `DriverStatus` pairs.
    pub fn from_driver_status(status: &[Vec<String>]) -> Self {
        let containerd = status.iter().any(|pair| {
            pair.len() == 2
                && pair[0] == "driver-type"
                && pair[1].starts_with("io.containerd.snapshotter")
        });
        if containerd {
            ImageStore::Containerd
        } else {
            ImageStore::Classic
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageStore::Classic => "classic",
            ImageStore::Containerd => "containerd",
        }
    }
}

/// A registry's answer is good for this long; a refusal or an error for much less, so that
/// a registry that was down is asked again.
const HELD_FOR: Duration = Duration::from_secs(24 * 3600);
const REFUSED_FOR: Duration = Duration::from_secs(600);
/// One lookup's bound: a registry round trip through the engine.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 4096;

/// Candidate `repository@digest` references, checked against their registries and remembered.
#[derive(Default)]
pub struct Registries {
    checked: Mutex<HashMap<String, (bool, Instant)>>,
}

impl Registries {
    /// Whether the registry of `pinned` (`repository@sha256:…`) serves that manifest.
    pub async fn holds(&self, engine: &Engine, pinned: &str) -> bool {
        if let Some(held) = self.cached(pinned) {
            return held;
        }
        let path = format!("/distribution/{pinned}/json");
        let held = match tokio::time::timeout(LOOKUP_TIMEOUT, engine.get(&path)).await {
            Ok(Ok((200, _))) => true,
            Ok(Ok((status, body))) => {
                tracing::debug!(image = pinned, status, answer = %super::one_line(&String::from_utf8_lossy(&body)), "the registry does not confirm the digest");
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(image = pinned, error = %e, "cannot ask the registry");
                false
            }
            Err(_) => {
                tracing::debug!(image = pinned, "the registry lookup timed out");
                false
            }
        };
        if let Ok(mut checked) = self.checked.lock() {
            if checked.len() >= CACHE_MAX {
                let now = Instant::now();
                checked.retain(|_, (held, at)| now.duration_since(*at) < ttl(*held));
                if checked.len() >= CACHE_MAX {
                    checked.clear();
                }
            }
            checked.insert(pinned.to_string(), (held, Instant::now()));
        }
        held
    }

    fn cached(&self, pinned: &str) -> Option<bool> {
        let checked = self.checked.lock().ok()?;
        let (held, at) = checked.get(pinned)?;
        (at.elapsed() < ttl(*held)).then_some(*held)
    }
}

fn ttl(held: bool) -> Duration {
    if held {
        HELD_FOR
    } else {
        REFUSED_FOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_from_driver_status() {
        let pairs = |p: &[(&str, &str)]| -> Vec<Vec<String>> {
            p.iter()
                .map(|(k, v)| vec![k.to_string(), v.to_string()])
                .collect()
        };
        assert_eq!(
            ImageStore::from_driver_status(&pairs(&[(
                "driver-type",
                "io.containerd.snapshotter.v1"
            )])),
            ImageStore::Containerd
        );
        assert_eq!(
            ImageStore::from_driver_status(&pairs(&[
                ("Backing Filesystem", "extfs"),
                ("Supports d_type", "true")
            ])),
            ImageStore::Classic
        );
        assert_eq!(ImageStore::from_driver_status(&[]), ImageStore::Classic);
    }
}
