//! The engine's image `pull` and `push` events: what the engine did is the best evidence of
//! which repository holds a digest, and it needs no registry lookup, so it works for
//! registries that want credentials. A second subscription beside the container stream, as
//! the container stream's label filter would drop image events.
//!
//! On Docker an event names the reference as typed (`busybox:latest`), not the image, so
//! the reference is inspected at once; an event older than `FRESH` (replayed after a
//! reconnect) is not trusted, as the tag may have moved since. Podman's events are no
//! evidence (see `ImageEvents::handle`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::EventMessageTypeEnum;
use bollard::query_parameters::EventsOptions;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use super::events::{nanos_param, now_nanos, time_nano_of, EngineEvent, RECONNECT_RETRY};
use super::resolve::Resolver;
use super::Engine;
use crate::evidence::{self, Source};

/// A Docker event older than this when read is not evidence: its tag may have moved.
const FRESH: Duration = Duration::from_secs(60);
/// A silent stream is renewed this often (from where it was), so a connection a NAT or proxy
/// dropped silently costs at most this much.
const RENEW: Duration = Duration::from_secs(300);
/// How often what is remembered is checked against the images on the host.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const FIRST_PRUNE: Duration = Duration::from_secs(60);

/// One image event the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEvent {
    pub source: Source,
    /// `Actor.ID`: the reference as typed (Docker) or the image's id (Podman).
    pub actor: String,
    /// The `name` attribute: the repository (Docker) or the reference (Podman).
    pub name: Option<String>,
    pub time_nano: i64,
}

impl ImageEvent {
    pub fn from_message(msg: bollard::models::EventMessage) -> Option<Self> {
        if msg.typ != Some(EventMessageTypeEnum::IMAGE) {
            return None;
        }
        let source = match msg.action.as_deref()? {
            "pull" => Source::Pull,
            "push" => Source::Push,
            _ => return None,
        };
        let time_nano = time_nano_of(&msg);
        let actor = msg.actor?;
        let id = actor.id.filter(|id| !id.is_empty())?;
        let name = actor
            .attributes
            .and_then(|mut a| a.remove("name"))
            .filter(|n| !n.is_empty());
        Some(ImageEvent {
            source,
            actor: id,
            name,
            time_nano,
        })
    }

    /// Whether the event can be trusted at `now_nano`: Podman's names the image itself; a
    /// Docker event must be fresh.
    pub fn trusted(&self, now_nano: i64) -> bool {
        evidence::is_image_id(&self.actor)
            || now_nano.saturating_sub(self.time_nano) <= FRESH.as_nanos() as i64
    }
}

pub struct ImageEvents {
    pub engine: Engine,
    pub resolver: Arc<Resolver>,
    /// Where the first subscription starts (Unix nanoseconds): the container stream's cursor
    /// after a restart, else a few seconds ago.
    pub since_nano: Option<i64>,
    /// The observer's channel: new evidence may name an image skipped before, so it asks
    /// for a reconciliation.
    pub reconcile: mpsc::WeakSender<EngineEvent>,
}

impl ImageEvents {
    fn options(&self, since_nano: i64) -> EventsOptions {
        EventsOptions {
            since: Some(nanos_param(since_nano)),
            until: None,
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["image".to_string()]),
                (
                    "event".to_string(),
                    vec!["pull".to_string(), "push".to_string()],
                ),
            ])),
        }
    }

    /// Follow the image events until shutdown, reconnecting with the container stream's
    /// backoff; check what is remembered against the host's images every hour.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut since = self
            .since_nano
            .unwrap_or_else(|| now_nanos().saturating_sub(5_000_000_000));
        let mut retries = RECONNECT_RETRY.retries();
        let mut next_prune = tokio::time::Instant::now() + FIRST_PRUNE;
        loop {
            let mut stream = self.engine.stream.events(Some(self.options(since)));
            let lost = loop {
                let next = tokio::select! {
                    next = tokio::time::timeout(RENEW, stream.next()) => next,
                    _ = tokio::time::sleep_until(next_prune) => {
                        self.resolver.registries().prune(&self.engine).await;
                        next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                        continue;
                    }
                    _ = shutdown.changed() => return,
                };
                match next {
                    Ok(Some(Ok(msg))) => {
                        retries.reset();
                        if let Some(event) = ImageEvent::from_message(msg) {
                            since = since.max(event.time_nano.saturating_add(1));
                            self.handle(event).await;
                        }
                    }
                    // Renewed from where it was.
                    Err(_silent) => break false,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "the image event stream failed; reconnecting");
                        break true;
                    }
                    Ok(None) => break true,
                }
            };
            if lost {
                tokio::select! {
                    _ = tokio::time::sleep(retries.next_delay()) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Remember what the event proves, and ask for a reconciliation when it is new and some
    /// image waits for evidence.
    async fn handle(&self, event: ImageEvent) {
        // Podman sends `pull` also when `podman run` finds the image locally (and 4.3 even
        // for a pull that failed), so its events prove nothing; an image it pulled is
        // confirmed by its registry at the reconciliation this asks for.
        if self.engine.is_podman() {
            self.reconcile_if_waiting();
            return;
        }
        if !event.trusted(now_nanos()) {
            tracing::debug!(reference = %event.actor, "an old image event replayed: its tag may have moved since, so it is not evidence");
            return;
        }
        let repo_digests = match self.engine.api.inspect_image(&event.actor).await {
            Ok(image) => image.repo_digests.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(reference = %event.actor, error = %e, "cannot inspect the image an event names");
                return;
            }
        };
        let proved = evidence::proved_by_event(&event.actor, event.name.as_deref(), &repo_digests);
        if !self.resolver.registries().saw(&proved, event.source) {
            return;
        }
        tracing::info!(
            images = %proved.join(" "), evidence = event.source.as_str(),
            "remembered which repository holds the image: the engine {} it",
            if event.source == Source::Pull { "pulled" } else { "pushed" }
        );
        self.reconcile_if_waiting();
    }

    /// A reconciliation, when some image waits for evidence.
    fn reconcile_if_waiting(&self) {
        if self.resolver.has_unseen() {
            if let Some(tx) = self.reconcile.upgrade() {
                let _ = tx.try_send(EngineEvent::Connected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(
        typ: &str,
        action: &str,
        id: &str,
        name: Option<&str>,
    ) -> bollard::models::EventMessage {
        let mut value = serde_json::json!({
            "Type": typ, "Action": action, "time": 1_700_000_000,
            "timeNano": 1_700_000_000_000_000_000i64,
            "Actor": {"ID": id, "Attributes": {}}
        });
        if let Some(n) = name {
            value["Actor"]["Attributes"]["name"] = serde_json::json!(n);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn pull_and_push_events_of_both_engines() {
        let docker =
            ImageEvent::from_message(message("image", "pull", "busybox:latest", Some("busybox")))
                .unwrap();
        assert_eq!(docker.source, Source::Pull);
        assert_eq!(docker.actor, "busybox:latest");
        assert_eq!(docker.name.as_deref(), Some("busybox"));
        let push = ImageEvent::from_message(message(
            "image",
            "push",
            "127.0.0.1:5002/a/b:1",
            Some("127.0.0.1:5002/a/b"),
        ))
        .unwrap();
        assert_eq!(push.source, Source::Push);
        assert!(
            ImageEvent::from_message(message("image", "tag", "busybox:latest", None)).is_none()
        );
        assert!(ImageEvent::from_message(message("container", "pull", "abc", None)).is_none());
    }

    #[test]
    fn an_old_docker_event_is_not_trusted_but_podman_names_the_image() {
        let t = 1_700_000_000_000_000_000i64;
        let docker =
            ImageEvent::from_message(message("image", "pull", "busybox:latest", Some("busybox")))
                .unwrap();
        assert!(docker.trusted(t + 1_000_000_000));
        assert!(!docker.trusted(t + 61_000_000_000));
        let podman = ImageEvent::from_message(message(
            "image",
            "pull",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Some("localhost:5000/app:1"),
        ))
        .unwrap();
        assert!(podman.trusted(t + 3_600_000_000_000));
    }
}
