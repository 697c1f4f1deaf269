//! Following the event stream. This task only reads and forwards: the engine skips a
//! subscriber that takes more than 100 ms per event, so nothing slow happens here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptions;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use super::resolve::EventHint;
use super::Engine;
use crate::telemetry::Telemetry;

/// How long the stream may be silent before the engine is pinged to prove the link is alive.
const IDLE_CHECK: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The position in the event stream: the last event handled. `since` is inclusive, so the
/// event at exactly this time is recognised and dropped when the stream is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventCursor {
    pub time_nano: i64,
    pub id: String,
    pub action: String,
}

impl EventCursor {
    pub fn since_param(&self) -> String {
        format!(
            "{}.{:09}",
            self.time_nano / 1_000_000_000,
            self.time_nano % 1_000_000_000
        )
    }

    /// Encoded for the state file: `time_nano id action`.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.time_nano, self.id, self.action)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ' ');
        Some(EventCursor {
            time_nano: parts.next()?.parse().ok()?,
            id: parts.next()?.to_string(),
            action: parts.next()?.to_string(),
        })
    }

    /// True for an event at or before this cursor (already handled).
    fn covers(&self, event: &ContainerEvent) -> bool {
        event.time_nano < self.time_nano
            || (event.time_nano == self.time_nano
                && event.id == self.id
                && event.action.name() == self.action)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    /// `die` (Docker) or `died` (some Podman versions).
    Die,
    /// `destroy` (Docker) or `remove` (Podman).
    Destroy,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "start" => Some(Action::Start),
            "die" | "died" => Some(Action::Die),
            "destroy" | "remove" => Some(Action::Destroy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Die => "die",
            Action::Destroy => "destroy",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub id: String,
    pub action: Action,
    pub time_nano: i64,
    pub exit_code: Option<i64>,
    pub hint: EventHint,
}

impl ContainerEvent {
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            time_nano: self.time_nano,
            id: self.id.clone(),
            action: self.action.name().to_string(),
        }
    }

    fn from_message(msg: bollard::models::EventMessage) -> Option<Self> {
        let action = Action::parse(msg.action.as_deref()?)?;
        let actor = msg.actor?;
        let id = actor.id?;
        let mut attributes = actor.attributes.unwrap_or_default();
        let time_nano = msg
            .time_nano
            .or(msg.time.map(|t| t.saturating_mul(1_000_000_000)))
            .unwrap_or(0);
        let exit_code = attributes
            .get("exitCode")
            .or(attributes.get("containerExitCode"))
            .and_then(|c| c.parse().ok());
        let name = attributes.remove("name");
        let image = attributes.remove("image");
        // The remaining attributes are the container's labels (plus a few engine keys that
        // never collide with deploytrack's).
        Some(ContainerEvent {
            id,
            action,
            time_nano,
            exit_code,
            hint: EventHint {
                name,
                image,
                labels: attributes,
            },
        })
    }
}

#[derive(Debug)]
pub enum EngineEvent {
    /// The stream is (re)connected: the running containers must be listed and reconciled.
    Connected,
    Container(ContainerEvent),
}

pub struct EventReader {
    pub engine: Engine,
    pub label_filters: Vec<String>,
    pub cursor: Option<EventCursor>,
    pub telemetry: Arc<Telemetry>,
}

impl EventReader {
    fn options(&self) -> EventsOptions {
        let since = match &self.cursor {
            Some(c) => c.since_param(),
            // First start: a little history so nothing between list and subscribe is missed.
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                (now.as_secs().saturating_sub(5)).to_string()
            }
        };
        let mut filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ["start", "die", "died", "destroy", "remove"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        if !self.label_filters.is_empty() {
            filters.insert("label".to_string(), self.label_filters.clone());
        }
        EventsOptions {
            since: Some(since),
            until: None,
            filters: Some(filters),
        }
    }

    /// Read until shutdown, reconnecting with capped exponential backoff. Returns when the
    /// receiver is gone or shutdown is signalled.
    pub async fn run(
        mut self,
        tx: mpsc::UnboundedSender<EngineEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(250);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.engine.ping().await {
                Ok(()) => {
                    self.telemetry.engine_connected(true);
                    let mut stream = self.engine.stream.events(Some(self.options()));
                    if tx.send(EngineEvent::Connected).is_err() {
                        return;
                    }
                    let connected_at = tokio::time::Instant::now();
                    let reason = loop {
                        let next = tokio::select! {
                            next = tokio::time::timeout(IDLE_CHECK, stream.next()) => next,
                            _ = shutdown.changed() => return,
                        };
                        self.telemetry.heartbeat_reader();
                        match next {
                            Ok(Some(Ok(msg))) => {
                                let Some(event) = ContainerEvent::from_message(msg) else {
                                    continue;
                                };
                                self.telemetry.event_received(event.action.name());
                                if self.cursor.as_ref().is_some_and(|c| c.covers(&event)) {
                                    continue;
                                }
                                self.cursor = Some(event.cursor());
                                if tx.send(EngineEvent::Container(event)).is_err() {
                                    return;
                                }
                            }
                            Ok(Some(Err(e))) => {
                                break super::EngineError::from_bollard(&self.engine.host, e)
                                    .to_string()
                            }
                            Ok(None) => break "the engine closed the event stream".to_string(),
                            Err(_idle) => {
                                match tokio::time::timeout(PING_TIMEOUT, self.engine.ping()).await {
                                    Ok(Ok(())) => continue,
                                    Ok(Err(e)) => break format!("idle check failed: {e}"),
                                    Err(_) => break "idle check timed out".to_string(),
                                }
                            }
                        }
                    };
                    self.telemetry.engine_connected(false);
                    self.telemetry.engine_reconnect();
                    tracing::warn!(reason = %reason, "lost the engine's event stream; reconnecting");
                    if connected_at.elapsed() > BACKOFF_MAX {
                        backoff = Duration::from_millis(250);
                    }
                }
                Err(e) => {
                    self.telemetry.engine_connected(false);
                    tracing::warn!(error = %e, retry_in = ?backoff, "engine unreachable");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_since() {
        let c = EventCursor {
            time_nano: 1_700_000_000_000_000_042,
            id: "abc".into(),
            action: "start".into(),
        };
        assert_eq!(EventCursor::decode(&c.encode()), Some(c.clone()));
        assert_eq!(c.since_param(), "1700000000.000000042");
        let same = ContainerEvent {
            id: "abc".into(),
            action: Action::Start,
            time_nano: c.time_nano,
            exit_code: None,
            hint: EventHint::default(),
        };
        assert!(c.covers(&same));
        let other = ContainerEvent {
            id: "def".into(),
            ..same.clone()
        };
        assert!(!c.covers(&other));
        let later = ContainerEvent {
            time_nano: c.time_nano + 1,
            ..same
        };
        assert!(!c.covers(&later));
    }

    #[test]
    fn podman_actions() {
        assert_eq!(Action::parse("died"), Some(Action::Die));
        assert_eq!(Action::parse("remove"), Some(Action::Destroy));
        assert_eq!(Action::parse("create"), None);
    }
}
