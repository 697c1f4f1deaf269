//! Inspection: a container id becomes a `Deployment` (or a reason to skip it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;

use super::evidence::{ImageStore, Registries, Unseen};
use super::lenient::{ContainerFacts, ImageFields, ManifestFacts};
use super::transport::ApiVersion;
use super::{Engine, EngineError};
use crate::backoff::Backoff;
use crate::deployment::{
    default_name, time_from_engine, ContainerState, ContainerStatus, Deployment, DeploymentKey,
    NameFacts, NameTemplate, Platform, Selection, SkipReason, LABEL_ENVIRONMENT, LABEL_NAME,
};
use crate::evidence::{pick_repo_digest, Picked};
use crate::telemetry::Telemetry;

/// Images are immutable by id, so their facts are cached; the cache is small and bounded.
const IMAGE_CACHE_MAX: usize = 4096;
/// What was warned about once (images, containers) is remembered up to this many; then the
/// memory starts over, so container churn cannot grow it without end.
const WARNED_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
// Short-lived and moved once, to the observer: boxing the deployment would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Resolution {
    Report(Deployment),
    /// The container was gone before it could be inspected: reported from its start event.
    /// Such an event may be an old one, replayed after a restart: its report must not undo
    /// a container that runs under the same name now.
    Recalled(Deployment),
    Skip(SkipReason),
}

#[derive(Debug, Clone)]
struct ImageFacts {
    repo_digests: Vec<String>,
    platform: Platform,
    /// The repositories the engine says the image was pulled from (`Identity.Pull`, Docker
    /// 29.3 and later), normalised.
    identity_pulls: Vec<String>,
}

/// What the resolver needs from an event when the container is already gone (`--rm`).
#[derive(Debug, Clone, Default)]
pub struct EventHint {
    pub name: Option<String>,
    pub image: Option<String>,
    pub labels: HashMap<String, String>,
}

pub struct Resolver {
    engine: Engine,
    host: RwLock<String>,
    /// `--host-name`: replaces the engine's host name in names.
    host_name: Option<String>,
    default_environment: String,
    /// `--name-template`; without one, `default_name`.
    template: Option<NameTemplate>,
    selection: Selection,
    report_stops: bool,
    images: Mutex<HashMap<String, ImageFacts>>,
    warned: Mutex<HashSet<String>>,
    telemetry: Option<Arc<Telemetry>>,
    store: RwLock<ImageStore>,
    registries: Registries,
    report_unverified: bool,
    /// Images running now that no evidence covers, and why: for the start-up summary and
    /// `check`. Bounded like `warned`.
    unseen: Mutex<HashMap<String, (String, Unseen)>>,
}

/// `ImageManifestDescriptor` is in container inspect from this Engine API version on.
const MANIFEST_DESCRIPTOR_SINCE: ApiVersion = ApiVersion(1, 48);

impl Resolver {
    pub fn new(
        engine: Engine,
        host: String,
        default_environment: String,
        template: Option<NameTemplate>,
        selection: Selection,
        report_stops: bool,
    ) -> Self {
        Resolver {
            engine,
            host: RwLock::new(host),
            host_name: None,
            default_environment,
            template,
            selection,
            report_stops,
            images: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            telemetry: None,
            store: RwLock::new(ImageStore::default()),
            registries: Registries::default(),
            report_unverified: false,
            unseen: Mutex::new(HashMap::new()),
        }
    }

    /// Report images whose repository cannot be shown to hold the digest, as the repository
    /// they were started as (`--report-unverified`).
    pub fn with_report_unverified(mut self, report_unverified: bool) -> Self {
        self.report_unverified = report_unverified;
        self
    }

    /// What shows which repository holds a digest (restored from the queue file), with the
    /// credentials for lookups.
    pub fn with_registries(mut self, registries: Registries) -> Self {
        self.registries = registries;
        self
    }

    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// The images that run now without evidence of a repository that holds them: the
    /// reference each was started as, and why, sorted by reference.
    pub fn unseen(&self) -> Vec<(String, Unseen)> {
        let mut all: Vec<(String, Unseen)> = self
            .unseen
            .lock()
            .map(|u| u.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether some image was skipped for want of evidence (new evidence may name it).
    pub fn has_unseen(&self) -> bool {
        self.unseen.lock().is_ok_and(|u| !u.is_empty())
    }

    pub fn with_store(self, store: ImageStore) -> Self {
        if let Ok(mut s) = self.store.write() {
            *s = store;
        }
        self
    }

    /// The engine's image store, which decides what its RepoDigests prove.
    pub fn set_store(&self, store: ImageStore) {
        if let Ok(mut s) = self.store.write() {
            if *s != store {
                tracing::info!(store = store.as_str(), "the engine's image store");
            }
            *s = store;
        }
    }

    pub fn store(&self) -> ImageStore {
        self.store.read().map(|s| *s).unwrap_or_default()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The engine's host name may change (an engine restart on another machine behind tcp://).
    pub fn set_host(&self, host: String) {
        if let Ok(mut h) = self.host.write() {
            *h = host;
        }
    }

    /// Resolve container `id`. The hint (from the event) lets a container removed before it
    /// could be inspected still be reported, from its image reference.
    pub async fn resolve(
        &self,
        id: &str,
        hint: Option<&EventHint>,
    ) -> Result<Resolution, EngineError> {
        if let Some(hint) = hint {
            if let Err(reason) = self.selection.check(&hint.labels) {
                return Ok(Resolution::Skip(reason));
            }
        }
        let (container, recalled) = self.inspect_or_recall(id, hint).await?;
        if hint.is_none() {
            if let Err(reason) = self.selection.check(&container.labels) {
                return Ok(Resolution::Skip(reason));
            }
        }
        let image_id = &container.image_id;
        if image_id.is_empty() {
            self.warn_once(&format!("no image {id}"), || {
                tracing::warn!(
                    container = id,
                    "the engine's answer names no image for the container; it cannot be reported"
                );
            });
            return Ok(Resolution::Skip(SkipReason::Unresolvable));
        }
        let facts = match self.image_facts(image_id).await {
            Ok(facts) => facts,
            // Removed (`docker rmi -f`) between the event and the inspection.
            Err(e) if e.is_not_found() => {
                self.warn_once(image_id, || {
                    tracing::warn!(container = id, image = %container.reference, image_id = %image_id, "the container's image is gone from the engine, so its digest cannot be read; skipped");
                });
                return Ok(Resolution::Skip(SkipReason::ImageGone));
            }
            Err(e) => return Err(e),
        };
        let image_url = match self.image_url(&container.reference, image_id, &facts).await {
            Ok(url) => url,
            Err(reason) => return Ok(Resolution::Skip(reason)),
        };
        let platform = self
            .platform(image_id, container.manifest.clone(), &facts)
            .await;
        let deployment = self.deployment(id, hint, &container, image_url, platform);
        Ok(if recalled {
            Resolution::Recalled(deployment)
        } else {
            Resolution::Report(deployment)
        })
    }

    /// The container's inspection; for a container already gone, what its event said (and
    /// `true`).
    async fn inspect_or_recall(
        &self,
        id: &str,
        hint: Option<&EventHint>,
    ) -> Result<(ContainerFacts, bool), EngineError> {
        match self.inspect_container(id).await {
            Ok(c) => Ok((c, false)),
            Err(e) if e.is_not_found() => match hint {
                Some(EventHint {
                    name: Some(name),
                    image: Some(image),
                    labels,
                }) => {
                    tracing::debug!(
                        container = id,
                        "container gone before inspection; resolving from its event"
                    );
                    let facts = ContainerFacts {
                        name: name.clone(),
                        reference: image.clone(),
                        image_id: image.clone(),
                        labels: labels.clone(),
                        manifest: None,
                        alive: None,
                        started_at: None,
                    };
                    Ok((facts, true))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The report: the environment and name from the labels or the template, and with
    /// `--report-stops` the container's state.
    fn deployment(
        &self,
        id: &str,
        hint: Option<&EventHint>,
        container: &ContainerFacts,
        image_url: String,
        platform: Platform,
    ) -> Deployment {
        let labels = &container.labels;
        let environment = match labels
            .get(LABEL_ENVIRONMENT)
            .map(|e| (e, crate::deployment::validate_environment(e)))
        {
            Some((e, Ok(()))) => e.clone(),
            // The flag's rule, but a label is the container's: one warning, and the default.
            Some((_, Err(reason))) => {
                let name = match container.name.trim_start_matches('/') {
                    "" => id,
                    name => name,
                };
                self.warn_once(&format!("environment {id}"), || {
                    tracing::warn!(
                        container = %name.escape_default(), environment = %self.default_environment,
                        // `reason` quotes the value escaped (`"prod\t"`).
                        "the label {LABEL_ENVIRONMENT} of the container is not an environment name: {reason}; reported under the default environment"
                    );
                });
                self.default_environment.clone()
            }
            None => self.default_environment.clone(),
        };
        let name = match labels.get(LABEL_NAME).filter(|n| !n.trim().is_empty()) {
            Some(n) => n.clone(),
            // An answer without a name: the event's, else the short id.
            None if container.name.is_empty() => {
                let name = hint
                    .and_then(|h| h.name.clone())
                    .unwrap_or_else(|| id.chars().take(12).collect());
                self.name(id, &name, labels)
            }
            None => self.name(id, &container.name, labels),
        };
        Deployment {
            key: DeploymentKey { environment, name },
            image_url,
            platform,
            container: self.report_stops.then(|| ContainerStatus {
                id: id.to_string(),
                state: ContainerState::Running,
                exit_code: None,
                since: container.started_at.as_deref().and_then(time_from_engine),
            }),
        }
    }

    /// `image.url`: a repo digest of the image in a repository shown to hold it, else why
    /// there is none to report (logged once per image).
    async fn image_url(
        &self,
        reference: &str,
        image_id: &str,
        facts: &ImageFacts,
    ) -> Result<String, SkipReason> {
        if !self.store().repo_digests_prove() && !self.report_unverified {
            return self
                .verified_url(reference, image_id, facts)
                .await
                .ok_or(SkipReason::Unverified);
        }
        match pick_repo_digest(reference, &facts.repo_digests) {
            Some(Picked::Matching(url)) | Some(Picked::Only(url)) => {
                self.seen(image_id);
                Ok(url)
            }
            Some(Picked::Arbitrary(url)) => {
                self.warn_once(image_id, || {
                    tracing::info!(
                        image = %reference, chosen = %url, candidates = facts.repo_digests.len(),
                        "no repo digest of the image matches the repository it was started as; reporting the first in sorted order"
                    )
                });
                self.seen(image_id);
                Ok(url)
            }
            None => {
                self.warn_once(image_id, || {
                    tracing::warn!(
                        image = %reference, image_id = %image_id,
                        "image has no repo digest (built or imported locally, never pushed or pulled): its containers cannot be reported by digest and are skipped"
                    )
                });
                self.not_seen(image_id, reference, Unseen::Local);
                Err(SkipReason::NoDigest)
            }
        }
    }

    /// Where RepoDigests prove nothing: the first candidate with evidence (a pull or push
    /// seen, the engine's identity, a registry's confirmation), in the order of `candidates`.
    async fn verified_url(
        &self,
        reference: &str,
        image_id: &str,
        facts: &ImageFacts,
    ) -> Option<String> {
        let candidates = crate::evidence::candidates(reference, &facts.repo_digests);
        let preferred = crate::evidence::preferred(reference, &candidates);
        let named = self
            .registries
            .name(
                &self.engine,
                self.store(),
                &candidates,
                preferred,
                &facts.identity_pulls,
            )
            .await;
        let why = match named {
            Ok((url, source)) => {
                self.seen(image_id);
                tracing::debug!(image = %reference, url = %url, evidence = source.as_str(), "the repository holds the image");
                return Some(url);
            }
            Err(why) => why,
        };
        self.warn_once(&format!("unverified {image_id}"), || {
            tracing::warn!(
                image = %reference, image_id = %image_id, candidates = %candidates.join(" "),
                "no evidence that a registry holds this image: its containers are skipped; {}", why.advice()
            )
        });
        self.not_seen(image_id, reference, why);
        None
    }

    /// The image is reported: no longer among those waiting for evidence.
    fn seen(&self, image_id: &str) {
        if let Ok(mut unseen) = self.unseen.lock() {
            unseen.remove(image_id);
        }
    }

    fn not_seen(&self, image_id: &str, reference: &str, why: Unseen) {
        if let Ok(mut unseen) = self.unseen.lock() {
            if unseen.len() >= WARNED_MAX && !unseen.contains_key(image_id) {
                unseen.clear();
            }
            unseen.insert(image_id.to_string(), (reference.to_string(), why));
        }
    }

    /// A reconciliation starts: what waits for evidence is found again among what runs.
    pub fn forget_unseen(&self) {
        if let Ok(mut unseen) = self.unseen.lock() {
            unseen.clear();
        }
    }

    /// The platform the container runs: its manifest's, where the engine names it (API >=
    /// 1.48, containerd store), else the manifest's config's (as moby reads it), else the
    /// image's.
    async fn platform(
        &self,
        image_id: &str,
        manifest: Option<ManifestFacts>,
        facts: &ImageFacts,
    ) -> Platform {
        let known = self
            .engine
            .api_in_use()
            .is_some_and(|v| v >= MANIFEST_DESCRIPTOR_SINCE);
        let Some(manifest) = manifest.filter(|_| known) else {
            return facts.platform.clone();
        };
        let platform = match manifest.platform {
            Some(p) => Some(p),
            None => {
                self.manifest_config_platform(image_id, &manifest.digest)
                    .await
            }
        };
        match platform {
            Some((os, architecture, variant)) => {
                Platform::new(&os, &architecture, variant.as_deref())
            }
            None => facts.platform.clone(),
        }
    }

    /// `GET /images/{id}/json?manifests=1`: the platform in the config of manifest `digest`.
    async fn manifest_config_platform(
        &self,
        image_id: &str,
        digest: &str,
    ) -> Option<(String, String, Option<String>)> {
        let (status, body) = self
            .engine
            .get(&format!("/images/{image_id}/json?manifests=1"))
            .await
            .ok()?;
        if status != 200 {
            return None;
        }
        platform_in_manifests(&serde_json::from_slice(&body).ok()?, digest)
    }

    /// Whether container `id` still counts as running after a `die`: restarted already,
    /// between restart-policy attempts (`restarting`), or paused. Gone is not alive.
    pub async fn still_alive(&self, id: &str) -> Result<bool, EngineError> {
        match self.inspect_container(id).await {
            Ok(c) => Ok(c.alive.unwrap_or(false)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `--host-name`: `{host}` is this, whatever the engine says.
    pub fn with_host_name(mut self, host_name: Option<String>) -> Self {
        self.host_name = host_name;
        self
    }

    /// `image.name` from the template, else the built-in default. A placeholder the
    /// container has no value for (and no fallback) gives the built-in default instead,
    /// logged once per container.
    fn name(&self, id: &str, container: &str, labels: &HashMap<String, String>) -> String {
        let host = match &self.host_name {
            Some(h) => h.clone(),
            None => self.host.read().map(|h| h.clone()).unwrap_or_default(),
        };
        let facts = NameFacts {
            host: &host,
            container,
            id,
            labels: Some(labels),
        };
        let Some(template) = &self.template else {
            return default_name(&facts);
        };
        template.render(&facts).unwrap_or_else(|unfilled| {
            let fallback = default_name(&facts);
            self.warn_once(&format!("unfilled {id}"), || {
                tracing::info!(
                    container = %facts.container.escape_default(), placeholder = %unfilled.0, name = %fallback.escape_default(),
                    "--name-template: the container has no value for a placeholder, which has no fallback (write one as {{a|b}}); named by the built-in default"
                );
            });
            fallback
        })
    }

    /// Count the answers bollard's model rejects in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    fn warn_once(&self, image_id: &str, log: impl FnOnce()) {
        let first = self
            .warned
            .lock()
            .map(|mut w| {
                // Bounded: past this many, the set starts over (a warning may repeat).
                if w.len() >= WARNED_MAX && !w.contains(image_id) {
                    w.clear();
                }
                w.insert(image_id.to_string())
            })
            .unwrap_or(true);
        if first {
            log();
        }
    }

    /// `GET /containers/{id}/json`, read field by field if the model rejects the answer, and
    /// tried again briefly when the engine stumbles (a reconciliation catches the rest).
    async fn inspect_container(&self, id: &str) -> Result<ContainerFacts, EngineError> {
        let answer = retry_briefly(|| {
            self.engine
                .api
                .inspect_container(id, None::<InspectContainerOptions>)
        })
        .await;
        self.read(
            "container",
            answer,
            ContainerFacts::from_model,
            ContainerFacts::from_text,
        )
    }

    /// `GET /images/{id}/json`, like `inspect_container`; from API 1.53 on, read field by
    /// field (`inspect_image_text`), for its `Identity`.
    async fn inspect_image(&self, image: &str) -> Result<ImageFields, EngineError> {
        /// `Identity` is in image inspect from this Engine API version on (Docker 29.2).
        const IDENTITY_SINCE: ApiVersion = ApiVersion(1, 53);
        if self
            .engine
            .api_in_use()
            .is_some_and(|v| v >= IDENTITY_SINCE)
        {
            return self.inspect_image_text(image).await;
        }
        let answer = retry_briefly(|| self.engine.api.inspect_image(image)).await;
        self.read(
            "image",
            answer,
            ImageFields::from_model,
            ImageFields::from_text,
        )
    }

    /// `GET /images/{id}/json` read field by field: `ImageFields::from_model` has no
    /// `Identity.Pull`, and the `Identity.Signature` part of bollard's model is strict
    /// enough (closed enums) that a newer engine's answer would be refused over a field the
    /// agent does not read. Retried, and its failures told, as the model path does; an answer
    /// the model would refuse is still counted.
    async fn inspect_image_text(&self, image: &str) -> Result<ImageFields, EngineError> {
        let path = format!("/images/{image}/json");
        let mut retries = INSPECT_RETRY.retries();
        let (status, body) = loop {
            let answer = self.engine.get(&path).await;
            // What may pass: the engine busy or restarting (5xx), or not answering.
            let passing = match &answer {
                Ok((status, _)) => *status >= 500,
                Err(e) => matches!(e, EngineError::Unreachable { .. }),
            };
            if !passing || retries.failures() >= INSPECT_RETRIES {
                break answer?;
            }
            tokio::time::sleep(retries.next_delay()).await;
        };
        let text = String::from_utf8_lossy(&body);
        if !(200..300).contains(&status) {
            return Err(EngineError::from_status(
                &self.engine.host,
                status,
                &super::answer_message(&text),
            ));
        }
        if let Err(e) = serde_json::from_str::<bollard::models::ImageInspect>(&text) {
            if e.is_data() {
                self.unexpected("image", &e.to_string());
            }
        }
        ImageFields::from_text(&text).ok_or_else(|| {
            EngineError::Decode(format!(
                "GET {path} is not a JSON object: {}",
                super::one_line(&text)
            ))
        })
    }

    /// An answer through bollard's model, or its text field by field when the model rejects it.
    fn read<M, F>(
        &self,
        what: &str,
        answer: Result<M, bollard::errors::Error>,
        from_model: impl FnOnce(M) -> F,
        from_text: impl FnOnce(&str) -> Option<F>,
    ) -> Result<F, EngineError> {
        match answer {
            Ok(model) => Ok(from_model(model)),
            Err(bollard::errors::Error::JsonDataError {
                message, contents, ..
            }) => {
                self.unexpected(what, &message);
                from_text(&contents).ok_or(EngineError::Decode(message))
            }
            Err(e) => Err(EngineError::from_bollard(&self.engine.host, e)),
        }
    }

    fn unexpected(&self, what: &str, message: &str) {
        if let Some(t) = &self.telemetry {
            t.engine_answer_unexpected(what);
        }
        self.warn_once(&format!("unexpected {what}"), || {
            tracing::warn!(answer = what, error = %message, "the engine's answer does not match the API model; reading the fields deploytrack needs one by one");
        });
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts, EngineError> {
        let cacheable = image.starts_with("sha256:");
        if cacheable {
            if let Some(f) = self.images.lock().ok().and_then(|c| c.get(image).cloned()) {
                return Ok(f);
            }
        }
        let inspect = self.inspect_image(image).await?;
        let facts = ImageFacts {
            repo_digests: inspect.repo_digests,
            platform: Platform::new(
                inspect
                    .os
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("linux"),
                inspect
                    .architecture
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("amd64"),
                inspect.variant.as_deref(),
            ),
            identity_pulls: inspect.identity_pulls,
        };
        // An image without digests may get one when pushed: only cache the reportable.
        if cacheable && !facts.repo_digests.is_empty() {
            if let Ok(mut cache) = self.images.lock() {
                if cache.len() >= IMAGE_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(image.to_string(), facts.clone());
            }
        }
        Ok(facts)
    }
}

/// Tries again of an engine request that failed for a reason that may pass (the engine busy
/// or restarting): two, within about a second (0.4 s, then 0.8 s). Short: events wait behind
/// the inspection.
const INSPECT_RETRY: Backoff =
    Backoff::steady(Duration::from_millis(400), Duration::from_millis(800));
const INSPECT_RETRIES: u32 = 2;

async fn retry_briefly<T, F, Fut>(mut call: F) -> Result<T, bollard::errors::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
{
    use bollard::errors::Error as B;
    let mut retries = INSPECT_RETRY.retries();
    loop {
        match call().await {
            Err(e) => {
                let passing = match &e {
                    B::DockerResponseServerError { status_code, .. } => *status_code >= 500,
                    B::JsonDataError { .. } | B::JsonSerdeError { .. } => false,
                    B::SocketNotFoundError(_) => false,
                    _ => true,
                };
                if !passing || retries.failures() >= INSPECT_RETRIES {
                    return Err(e);
                }
                tokio::time::sleep(retries.next_delay()).await;
            }
            ok => return ok,
        }
    }
}

/// The platform of manifest `digest` in an image inspection with `manifests=1`: the one in
/// its config, else its descriptor's.
fn platform_in_manifests(
    answer: &serde_json::Value,
    digest: &str,
) -> Option<(String, String, Option<String>)> {
    let manifest = answer
        .get("Manifests")?
        .as_array()?
        .iter()
        .find(|m| m.get("ID").and_then(serde_json::Value::as_str) == Some(digest))?;
    let from_config = manifest
        .get("ImageData")
        .and_then(|d| d.get("Platform"))
        .and_then(super::lenient::platform_of);
    from_config.or_else(|| {
        manifest
            .get("Descriptor")
            .and_then(|d| d.get("platform"))
            .and_then(super::lenient::platform_of)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_platform_from_its_config() {
        // As `GET /images/{id}/json?manifests=1` answers (API 1.48), abridged.
        let answer = serde_json::json!({"Manifests": [
            {"ID": "sha256:amd", "Kind": "image",
             "Descriptor": {"platform": {"os": "linux", "architecture": "amd64"}},
             "ImageData": {"Platform": {"os": "linux", "architecture": "amd64"}}},
            {"ID": "sha256:arm", "Kind": "image",
             "Descriptor": {"digest": "sha256:arm"},
             "ImageData": {"Platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}},
            {"ID": "sha256:att", "Kind": "attestation",
             "Descriptor": {"platform": {"os": "unknown", "architecture": "unknown"}}}
        ]});
        let p = |d| platform_in_manifests(&answer, d);
        assert_eq!(
            p("sha256:arm"),
            Some(("linux".into(), "arm".into(), Some("v7".into())))
        );
        assert_eq!(
            p("sha256:amd"),
            Some(("linux".into(), "amd64".into(), None))
        );
        assert_eq!(
            p("sha256:att"),
            Some(("unknown".into(), "unknown".into(), None))
        );
        assert_eq!(p("sha256:none"), None);
        assert_eq!(
            platform_in_manifests(&serde_json::json!({}), "sha256:arm"),
            None
        );
    }
}
