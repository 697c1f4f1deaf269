//! Asking the engine which repository holds an image: the rules are `crate::evidence`'s;
//! this side fetches the facts. On the classic image store RepoDigests are the evidence: the
//! engine records one only when it pulls or pushes. On the containerd image store and on
//! Podman every local name gets a repo digest, pushed or not (`docker tag
//! registry.example/app:1 app:prod` adds `docker.io/library/app@…`), so a candidate needs
//! evidence: a pull or push the agent saw (Docker), the engine's `Identity`, or the registry's
//! confirmation, asked through the engine on Docker (`GET
//! /distribution/{repository}@{digest}/json`, with the Docker CLI's credentials for that
//! registry in `X-Registry-Auth`) and of the registry itself on Podman, which has no such
//! endpoint (`engine::registry`). Each lookup is bounded in time, so a slow or unreachable
//! registry delays a report by a few seconds at most.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::credentials::{Credentials, RegistryAuth};
use super::registry::RegistryClient;
use super::Engine;
use crate::clock::now_ms;
use crate::evidence::{self, Change, Ledger, Refusal, Source, Wait};
use crate::outbox::Outbox;

/// How the engine stores images, which decides what its RepoDigests prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageStore {
    /// Docker's graph drivers (overlay2 and friends): a repo digest is recorded by a pull or
    /// a push.
    #[default]
    Classic,
    /// Docker's containerd image store (`driver-type io.containerd.snapshotter.v1`): every
    /// local name has a repo digest.
    Containerd,
    /// Podman: every local name has a repo digest; there is no `/distribution`, so the
    /// registry itself is asked.
    Podman,
}

impl ImageStore {
    /// From `/info`'s `DriverStatus` pairs (Docker).
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
            ImageStore::Podman => "podman",
        }
    }

    /// Whether RepoDigests alone name a repository that holds the digest.
    pub fn repo_digests_prove(self) -> bool {
        self == ImageStore::Classic
    }
}

/// One lookup's bound: a registry round trip through the engine, or to the registry itself
/// (its token request included).
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a resolution waiting for another's lookup of the same candidate looks again.
const ASK_POLL: Duration = Duration::from_millis(50);

/// Why no repository can be named for an image, as far as the agent can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unseen {
    /// No candidate, or every registry asked says it has no such manifest: built, imported
    /// or retagged here.
    Local,
    /// The registry wants credentials: none are configured for it (`false`) or it refused
    /// those sent (`true`).
    Credentials { registry: String, had: bool },
    /// The registry did not answer; asked again later.
    Unreachable { registry: String },
    /// Refused before, or the registry's hourly lookup budget is spent: asked again later.
    Later,
}

impl Unseen {
    /// What would fix it, for the log and `check`.
    pub fn advice(&self) -> String {
        match self {
            Unseen::Local => "built, imported or retagged here, and no registry holds it: push it (while the agent runs) or start it from the registry's name; --report-unverified reports it as started".to_string(),
            Unseen::Credentials { registry, had: false } => format!("{registry} refused the lookup without credentials, and none are configured for it (a registry that does not hold the repository may say the same): docker login, then give the agent that config with --docker-config, or pull the image again while the agent runs"),
            Unseen::Credentials { registry, had: true } => format!("{registry} refused the configured credentials: docker login again (or pull the image again while the agent runs)"),
            Unseen::Unreachable { registry } => format!("{registry} did not answer the lookup; asked again later"),
            Unseen::Later => "a registry refused it before or its hourly lookup budget is spent; asked again later (or pull it again while the agent runs)".to_string(),
        }
    }
}

/// What shows which repository holds a digest: the ledger (mirrored in the queue file), the
/// Docker CLI's credentials, and the lookups.
pub struct Registries {
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Podman's lookups go to the registry itself (made at the first).
    direct: std::sync::OnceLock<Option<RegistryClient>>,
    ledger: Mutex<Ledger>,
    outbox: Option<Outbox>,
    credentials: Option<Arc<Credentials>>,
    warned_clear: Mutex<bool>,
}

impl Default for Registries {
    fn default() -> Self {
        Registries::new(Ledger::default(), None, None)
    }
}

impl Registries {
    pub fn new(
        ledger: Ledger,
        outbox: Option<Outbox>,
        credentials: Option<Arc<Credentials>>,
    ) -> Self {
        Registries {
            telemetry: None,
            direct: std::sync::OnceLock::new(),
            ledger: Mutex::new(ledger),
            outbox,
            credentials,
            warned_clear: Mutex::new(false),
        }
    }

    /// Count the lookups in `/metrics`.
    pub fn with_telemetry(mut self, telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    fn keep(&self, changes: Vec<Change>) {
        if let Some(outbox) = &self.outbox {
            outbox.remember(changes);
        }
    }

    /// Remember what a pull or push proved. True if any of it is new.
    pub fn saw(&self, proved: &[String], source: Source) -> bool {
        let now = now_ms();
        let mut changes = Vec::new();
        if let Ok(mut ledger) = self.ledger.lock() {
            for pinned in proved {
                if let Some((repository, digest)) = evidence::split_pinned(pinned) {
                    changes.extend(ledger.hold(repository, digest, source, now));
                }
            }
        }
        let new = changes.iter().any(|c| matches!(c, Change::Hold(_)));
        self.keep(changes);
        new
    }

    /// The first candidate with evidence, looking it up where the store allows; else why none.
    /// The candidates that name what the container was started as (`preferred`, the first
    /// of `candidates`) come first, each with its evidence or its lookup; then any other
    /// candidate with evidence; only then lookups of the others.
    pub async fn name(
        &self,
        engine: &Engine,
        store: ImageStore,
        candidates: &[String],
        preferred: usize,
        identity_pulls: &[String],
    ) -> Result<(String, Source), Unseen> {
        if candidates.is_empty() {
            return Err(Unseen::Local);
        }
        let (first, rest) = candidates.split_at(preferred.min(candidates.len()));
        let mut why: Option<Unseen> = None;
        for pinned in first {
            match self
                .evidence_or_lookup(engine, store, pinned, candidates, identity_pulls)
                .await
            {
                Ok(named) => return Ok(named),
                Err(w) => why = Some(worst(why, w)),
            }
        }
        if let Some(named) = self.known(rest, candidates, identity_pulls) {
            return Ok(named);
        }
        for pinned in rest {
            match self
                .evidence_or_lookup(engine, store, pinned, candidates, identity_pulls)
                .await
            {
                Ok(named) => return Ok(named),
                Err(w) => why = Some(worst(why, w)),
            }
        }
        Err(why.unwrap_or(Unseen::Local))
    }

    /// One of `subset` with evidence, if any; identity evidence is remembered. The identity
    /// rule weighs every candidate of the image (`all`): an entry without a port names none
    /// of two candidates that differ only by their port.
    fn known(
        &self,
        subset: &[String],
        all: &[String],
        identity_pulls: &[String],
    ) -> Option<(String, Source)> {
        let held = self.ledger.lock().ok().and_then(|l| {
            subset
                .iter()
                .find_map(|c| l.holds(c).map(|s| (c.clone(), s)))
        });
        let known = held.or_else(|| {
            evidence::named_by_identity(all, identity_pulls)
                .filter(|pinned| subset.contains(pinned))
                .map(|pinned| (pinned.clone(), Source::Identity))
        });
        if let Some((pinned, Source::Identity)) = &known {
            self.saw(std::slice::from_ref(pinned), Source::Identity);
        }
        known
    }

    /// One candidate: its evidence, else a lookup where the store has them and its schedule
    /// and budget allow.
    async fn evidence_or_lookup(
        &self,
        engine: &Engine,
        store: ImageStore,
        pinned: &String,
        all: &[String],
        identity_pulls: &[String],
    ) -> Result<(String, Source), Unseen> {
        if let Some(named) = self.known(std::slice::from_ref(pinned), all, identity_pulls) {
            return Ok(named);
        }
        // Another resolution asking the same now (two containers of one image): its answer
        // is this one's too, so wait for it rather than name another candidate.
        let mut waited = Duration::ZERO;
        let allowed = loop {
            let allowed = self
                .ledger
                .lock()
                .map(|mut l| l.may_look_up(pinned, now_ms()))
                .unwrap_or(Err(Wait::Budget { until_ms: 0 }));
            if allowed != Err(Wait::Asking) || waited >= LOOKUP_TIMEOUT * 2 {
                break allowed;
            }
            tokio::time::sleep(ASK_POLL).await;
            waited += ASK_POLL;
            if let Some(named) = self.known(std::slice::from_ref(pinned), all, identity_pulls) {
                return Ok(named);
            }
        };
        let registry = evidence::registry_of(pinned);
        let (refusal, had) = match allowed {
            Ok(()) => match self.look_up(engine, store, pinned, &registry).await {
                Ok(()) => return Ok((pinned.clone(), Source::Lookup)),
                Err(refused) => refused,
            },
            Err(Wait::Refused(r)) => (r.why, false),
            Err(Wait::Budget { .. } | Wait::Asking) => return Err(Unseen::Later),
        };
        Err(match refusal {
            Refusal::Credentials => Unseen::Credentials { registry, had },
            Refusal::Unreachable => Unseen::Unreachable { registry },
            Refusal::Unknown => Unseen::Local,
        })
    }

    /// Ask the engine whether `pinned`'s registry serves it, with that registry's credentials.
    /// Remembers the answer. Err: the refusal, and whether credentials were sent.
    async fn look_up(
        &self,
        engine: &Engine,
        store: ImageStore,
        pinned: &str,
        registry: &str,
    ) -> Result<(), (Refusal, bool)> {
        if store == ImageStore::Podman {
            let auth = match &self.credentials {
                Some(c) => c.for_registry(registry).await,
                None => None,
            };
            let refusal = self.ask_registry(pinned, auth.as_ref()).await;
            return self.settle(pinned, refusal, auth.is_some());
        }
        let auth = match &self.credentials {
            Some(_) if engine.in_clear() => {
                self.warn_clear(engine);
                None
            }
            Some(c) => c.for_registry(registry).await,
            None => None,
        };
        let header = auth.as_ref().map(|a| a.header());
        let path = format!("/distribution/{pinned}/json");
        let answer = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            engine.get_with(&path, header.as_deref().map(|h| ("X-Registry-Auth", h))),
        )
        .await;
        let refusal = match answer {
            Ok(Ok((200, _))) => None,
            Ok(Ok((status, body))) => {
                let text = super::one_line(&String::from_utf8_lossy(&body));
                tracing::debug!(image = pinned, status, answer = %text, credentials = auth.is_some(), "the registry does not confirm the digest");
                Some(classify(status, &text))
            }
            Ok(Err(e)) => {
                tracing::debug!(image = pinned, error = %e, "cannot ask the registry");
                Some(Refusal::Unreachable)
            }
            Err(_) => {
                tracing::debug!(image = pinned, "the registry lookup timed out");
                Some(Refusal::Unreachable)
            }
        };
        self.settle(pinned, refusal, auth.is_some())
    }

    /// Podman: the registry itself, as `engine::registry` asks it.
    async fn ask_registry(&self, pinned: &str, auth: Option<&RegistryAuth>) -> Option<Refusal> {
        let client = self
            .direct
            .get_or_init(|| RegistryClient::new().ok())
            .as_ref()?;
        client.holds(pinned, auth).await.err()
    }

    /// Count and remember a lookup's answer. Err: the refusal, and whether credentials were
    /// sent.
    fn settle(
        &self,
        pinned: &str,
        refusal: Option<Refusal>,
        had: bool,
    ) -> Result<(), (Refusal, bool)> {
        if let Some(t) = &self.telemetry {
            t.registry_lookup(refusal.map_or("confirmed", Refusal::as_str));
        }
        let now = now_ms();
        let changes = match self.ledger.lock() {
            Ok(mut ledger) => match (refusal, evidence::split_pinned(pinned)) {
                (None, Some((repository, digest))) => {
                    ledger.hold(repository, digest, Source::Lookup, now)
                }
                (Some(r), _) => ledger.refuse(pinned, r, now),
                (None, None) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        self.keep(changes);
        match refusal {
            None => Ok(()),
            Some(r) => Err((r, had)),
        }
    }

    fn warn_clear(&self, engine: &Engine) {
        if let Ok(mut warned) = self.warned_clear.lock() {
            if !*warned {
                *warned = true;
                tracing::warn!(engine = %engine.host, "the engine is reached over plain tcp://: registry credentials are not sent to it, as they would cross the network in clear; use the Unix socket or TLS");
            }
        }
    }

    /// Forget what is remembered about digests no local image has any more, so the ledger
    /// stays the size of the host's images.
    pub async fn prune(&self, engine: &Engine) {
        let remembered = match self.ledger.lock() {
            Ok(l) => l.remembered(),
            Err(_) => return,
        };
        let mut gone = Vec::new();
        for pinned in remembered {
            if let Ok((404, _)) = engine.get(&format!("/images/{pinned}/json")).await {
                gone.push(pinned);
            }
        }
        if gone.is_empty() {
            return;
        }
        let changes: Vec<Change> = match self.ledger.lock() {
            Ok(mut l) => gone.iter().flat_map(|p| l.forget(p)).collect(),
            Err(_) => return,
        };
        tracing::debug!(
            references = gone.len(),
            "forgot what was known of references no local image has"
        );
        self.keep(changes);
    }

    /// The registries credentials are configured for, and where from (for `check`).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_deref()
    }
}

/// The most telling of two reasons: credentials, then the network, then a wait, then none.
fn worst(a: Option<Unseen>, b: Unseen) -> Unseen {
    let rank = |u: &Unseen| match u {
        Unseen::Credentials { .. } => 0,
        Unseen::Unreachable { .. } => 1,
        Unseen::Later => 2,
        Unseen::Local => 3,
    };
    match a {
        Some(a) if rank(&a) <= rank(&b) => a,
        _ => b,
    }
}

/// What a `/distribution` answer other than 200 says. The engine wraps the registry's
/// answer: 28.5 says 500 with the registry's `401 Unauthorized` in the message.
fn classify(status: u16, message: &str) -> Refusal {
    let m = message.to_ascii_lowercase();
    let wants_credentials = [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
        "401",
        "403",
    ];
    let unknown = ["manifest unknown", "not found", "name unknown", "404"];
    if matches!(status, 401 | 403) || wants_credentials.iter().any(|w| m.contains(w)) {
        Refusal::Credentials
    } else if status == 404 || unknown.iter().any(|w| m.contains(w)) {
        Refusal::Unknown
    } else {
        Refusal::Unreachable
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
