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
/// A network stream silent this long is renewed (unix sockets don't need it).
const STREAM_RECYCLE: Duration = Duration::from_secs(300);
/// How often the reader looks for room to send an owed reconciliation.
const DEBT_CHECK: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How far before the cursor a resumed stream starts.
const REPLAY_MARGIN: Duration = Duration::from_secs(2);
/// Identities of recent events remembered to drop the replayed ones.
const RECENT_EVENTS: usize = 1024;
/// Events waiting for the observer. Past this the reader drops events rather than wait (the
/// engine would skip a slow reader anyway) and owes the observer a reconciliation.
pub const EVENT_BUFFER: usize = 16384;

/// The reader's end of the channel to the observer. It never waits.
struct Forward {
    tx: mpsc::Sender<EngineEvent>,
    owes_reconcile: bool,
    dropped: u64,
}

impl Forward {
    /// False once the observer is gone.
    fn send(&mut self, event: EngineEvent, telemetry: &Telemetry) -> bool {
        use mpsc::error::TrySendError;
        if self.owes_reconcile && !self.settle_debt() {
            return !self.tx.is_closed();
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if !self.owes_reconcile {
                    tracing::warn!(buffer = EVENT_BUFFER, "events arrive faster than they can be inspected; dropping them until the backlog clears, then reconciling");
                }
                self.owes_reconcile = true;
                self.dropped += 1;
                telemetry.event_dropped();
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Send the owed reconciliation once the backlog is half cleared (so a flood causes one
    /// reconciliation, not one per free slot); true once nothing is owed.
    fn settle_debt(&mut self) -> bool {
        if !self.owes_reconcile {
            return true;
        }
        if self.tx.capacity() * 2 >= self.tx.max_capacity()
            && self.tx.try_send(EngineEvent::Connected).is_ok()
        {
            tracing::info!(
                dropped = self.dropped,
                "backlog cleared; reconciling the events that were dropped"
            );
            self.owes_reconcile = false;
            self.dropped = 0;
        }
        !self.owes_reconcile
    }
}

/// The last events seen, by identity (id, action, time), to drop duplicates of a replay.
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<(String, &'static str, i64)>,
    set: std::collections::HashSet<(String, &'static str, i64)>,
}

impl Recent {
    /// False if the event was already seen.
    fn insert(&mut self, id: &str, action: &'static str, time_nano: i64) -> bool {
        let identity = (id.to_string(), action, time_nano);
        if !self.set.insert(identity.clone()) {
            return false;
        }
        self.order.push_back(identity);
        if self.order.len() > RECENT_EVENTS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The position in the event stream: the last event handled. A resumed stream replays from a
/// little before it (events of concurrent starts are not published in time order), and
/// events already handled are recognised by their identity and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventCursor {
    pub time_nano: i64,
    pub id: String,
    pub action: String,
}

impl EventCursor {
    /// `since` for resuming after this cursor: `REPLAY_MARGIN` earlier.
    pub fn since_param(&self) -> String {
        let t = (self.time_nano - REPLAY_MARGIN.as_nanos() as i64).max(0);
        format!("{}.{:09}", t / 1_000_000_000, t % 1_000_000_000)
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    /// A new name may mean a new `image.name`.
    Rename,
    /// `die` (Docker) or `died` (some Podman versions).
    Die,
    /// `destroy` (Docker) or `remove` (Podman).
    Destroy,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "start" => Some(Action::Start),
            "rename" => Some(Action::Rename),
            "die" | "died" => Some(Action::Die),
            "destroy" | "remove" => Some(Action::Destroy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Rename => "rename",
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
                ["start", "rename", "die", "died", "destroy", "remove"]
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
    pub async fn run(mut self, tx: mpsc::Sender<EngineEvent>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        let mut recent = Recent::default();
        let mut forward = Forward {
            tx,
            owes_reconcile: false,
            dropped: 0,
        };
        if let Some(c) = &self.cursor {
            if let Some(action) = Action::parse(&c.action) {
                recent.insert(&c.id, action.name(), c.time_nano);
            }
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.telemetry.heartbeat_reader();
            let ping = tokio::time::timeout(PING_TIMEOUT, self.engine.ping()).await;
            match ping.unwrap_or_else(|_| {
                Err(super::EngineError::Unreachable {
                    host: self.engine.host.clone(),
                    reason: "ping timed out".into(),
                })
            }) {
                Ok(()) => {
                    self.telemetry.engine_connected(true);
                    let mut stream = self.engine.stream.events(Some(self.options()));
                    if !forward.send(EngineEvent::Connected, &self.telemetry) {
                        return;
                    }
                    let connected_at = tokio::time::Instant::now();
                    let mut last_read = tokio::time::Instant::now();
                    let mut last_event = last_read;
                    let mut recycled = false;
                    let reason = loop {
                        // While a reconciliation is owed, look for room for it often.
                        let wait = if forward.owes_reconcile {
                            DEBT_CHECK
                        } else {
                            IDLE_CHECK
                        };
                        let next = tokio::select! {
                            next = tokio::time::timeout(wait, stream.next()) => next,
                            _ = shutdown.changed() => return,
                        };
                        self.telemetry.heartbeat_reader();
                        match next {
                            Ok(Some(Ok(msg))) => {
                                last_read = tokio::time::Instant::now();
                                last_event = last_read;
                                let Some(event) = ContainerEvent::from_message(msg) else {
                                    continue;
                                };
                                self.telemetry.event_received(event.action.name());
                                if !recent.insert(&event.id, event.action.name(), event.time_nano) {
                                    continue;
                                }
                                if self
                                    .cursor
                                    .as_ref()
                                    .is_none_or(|c| event.time_nano > c.time_nano)
                                {
                                    self.cursor = Some(event.cursor());
                                }
                                if !forward.send(EngineEvent::Container(event), &self.telemetry) {
                                    return;
                                }
                            }
                            Ok(Some(Err(e))) => {
                                break super::EngineError::from_bollard(&self.engine.host, e)
                                    .to_string()
                            }
                            Ok(None) => break "the engine closed the event stream".to_string(),
                            Err(_idle) => {
                                forward.settle_debt();
                                if last_read.elapsed() < IDLE_CHECK {
                                    continue;
                                }
                                last_read = tokio::time::Instant::now();
                                match tokio::time::timeout(PING_TIMEOUT, self.engine.ping()).await {
                                    // A ping proves the engine, not this connection: over the
                                    // network a NAT or proxy can drop an idle stream silently.
                                    Ok(Ok(()))
                                        if !self.engine.host.starts_with("unix://")
                                            && last_event.elapsed() >= STREAM_RECYCLE =>
                                    {
                                        recycled = true;
                                        break "renewing a long-idle stream".to_string();
                                    }
                                    Ok(Ok(())) => continue,
                                    Ok(Err(e)) => break format!("idle check failed: {e}"),
                                    Err(_) => break "idle check timed out".to_string(),
                                }
                            }
                        }
                    };
                    if recycled {
                        // Resumed from the cursor and reconciled, like any reconnect.
                        tracing::debug!(reason = %reason, "reconnecting the event stream");
                        continue;
                    }
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
        assert_eq!(c.since_param(), "1699999998.000000042");
    }

    #[test]
    fn replayed_events_are_recognised() {
        let mut recent = Recent::default();
        assert!(recent.insert("a", "start", 1));
        assert!(recent.insert("b", "start", 1));
        assert!(recent.insert("a", "die", 2));
        assert!(!recent.insert("a", "start", 1));
        for i in 0..RECENT_EVENTS as i64 {
            recent.insert("x", "start", 100 + i);
        }
        assert!(recent.order.len() <= RECENT_EVENTS);
        assert!(recent.insert("a", "start", 1), "forgotten after the window");
    }

    #[test]
    fn podman_actions() {
        assert_eq!(Action::parse("died"), Some(Action::Die));
        assert_eq!(Action::parse("remove"), Some(Action::Destroy));
        assert_eq!(Action::parse("create"), None);
    }

    #[test]
    fn a_full_buffer_drops_and_then_owes_a_reconciliation() {
        let (tx, mut rx) = mpsc::channel(2);
        let telemetry = Telemetry::new();
        let mut forward = Forward {
            tx,
            owes_reconcile: false,
            dropped: 0,
        };
        let event = |id: &str| {
            EngineEvent::Container(ContainerEvent {
                id: id.into(),
                action: Action::Start,
                time_nano: 1,
                exit_code: None,
                hint: EventHint::default(),
            })
        };
        assert!(forward.send(event("a"), &telemetry));
        assert!(forward.send(event("b"), &telemetry));
        assert!(
            forward.send(event("c"), &telemetry),
            "a full buffer must not look closed"
        );
        assert!(forward.owes_reconcile);
        assert!(matches!(rx.try_recv(), Ok(EngineEvent::Container(e)) if e.id == "a"));
        // Room for one: the reconciliation goes first, so "d" is dropped and owes another.
        assert!(forward.send(event("d"), &telemetry));
        assert!(matches!(rx.try_recv(), Ok(EngineEvent::Container(e)) if e.id == "b"));
        assert!(matches!(rx.try_recv(), Ok(EngineEvent::Connected)));
        assert!(forward.owes_reconcile);
        // Room for both: the reconciliation, then the event.
        assert!(forward.send(event("e"), &telemetry));
        assert!(matches!(rx.try_recv(), Ok(EngineEvent::Connected)));
        assert!(matches!(rx.try_recv(), Ok(EngineEvent::Container(e)) if e.id == "e"));
        assert!(!forward.owes_reconcile);
        drop(rx);
        assert!(!forward.send(event("f"), &telemetry));
    }
}
