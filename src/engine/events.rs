//! Following the event stream. This task only reads and forwards: the engine skips a
//! subscriber that takes more than 100 ms per event, so nothing slow happens here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptions;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use super::resolve::EventHint;
use super::{Engine, EngineError};
use crate::backoff::Backoff;
use crate::telemetry::Telemetry;

/// How long the stream may be silent before the engine is pinged to prove the link is alive.
const IDLE_CHECK: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// A network stream silent this long is renewed (unix sockets don't need it).
const STREAM_RECYCLE: Duration = Duration::from_secs(300);
/// How often the reader looks for room to send an owed reconciliation.
const DEBT_CHECK: Duration = Duration::from_millis(50);
/// A recurring oddity is logged at most this often (the metric counts every one).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Reconnecting the event stream: 0.25 s doubling to 30 s; a stream that stayed up longer
/// than the max starts again from 0.25 s.
pub const RECONNECT_RETRY: Backoff =
    Backoff::steady(Duration::from_millis(250), Duration::from_secs(30));
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
            // Still draining: this event is dropped too (the reconciliation covers it).
            self.dropped += 1;
            telemetry.event_dropped();
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
        nanos_param(self.time_nano - REPLAY_MARGIN.as_nanos() as i64)
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

/// When an event happened, in Unix nanoseconds: `timeNano`, else `time`. No time, or a
/// nonsensical one, is 0: unknown, never moving a cursor back.
pub(crate) fn time_nano_of(msg: &bollard::models::EventMessage) -> i64 {
    msg.time_nano
        .or(msg.time.map(|t| t.saturating_mul(1_000_000_000)))
        .filter(|t| *t > 0)
        .unwrap_or(0)
}

pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A Unix time in nanoseconds as the API's `since`: `seconds.nanoseconds`.
pub(crate) fn nanos_param(t: i64) -> String {
    let t = t.max(0);
    format!("{}.{:09}", t / 1_000_000_000, t % 1_000_000_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    /// A paused container runs again: like a start (the same digest sends nothing).
    Unpause,
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
            "unpause" => Some(Action::Unpause),
            "rename" => Some(Action::Rename),
            "die" | "died" => Some(Action::Die),
            "destroy" | "remove" => Some(Action::Destroy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Unpause => "unpause",
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
        use bollard::models::EventMessageTypeEnum;
        // The stream is filtered to containers; an engine that ignores the filter must not
        // make a volume's `destroy` look like a container's.
        if msg
            .typ
            .is_some_and(|t| !matches!(t, EventMessageTypeEnum::CONTAINER))
        {
            return None;
        }
        let action = Action::parse(msg.action.as_deref()?)?;
        let time_nano = time_nano_of(&msg);
        let actor = msg.actor?;
        let id = actor.id.filter(|id| !id.is_empty())?;
        Some(Self::from_parts(
            id,
            action,
            time_nano,
            actor.attributes.unwrap_or_default(),
        ))
    }

    /// The event from its actor's attributes: `name` and `image` go to the hint, the exit
    /// code is read, and the rest are the container's labels (plus a few engine keys that
    /// never collide with deploytrack's).
    fn from_parts(
        id: String,
        action: Action,
        time_nano: i64,
        mut attributes: HashMap<String, String>,
    ) -> Self {
        let exit_code = attributes
            .get("exitCode")
            .or(attributes.get("containerExitCode"))
            .and_then(|c| c.parse().ok());
        ContainerEvent {
            id,
            action,
            time_nano,
            exit_code,
            hint: EventHint {
                name: attributes.remove("name"),
                image: attributes.remove("image"),
                labels: attributes,
            },
        }
    }
}

/// What an event line says when bollard's typed model rejects it (a newer engine's new enum
/// value, a number where a string was expected): read field by field, with every field
/// optional, so one odd event never stops the stream.
#[derive(Debug, Default)]
pub struct LenientEvent {
    /// When the event happened, if the line tells: the stream resumes after it.
    pub time_nano: Option<i64>,
    /// The container event, if the line is one the agent acts on.
    pub event: Option<ContainerEvent>,
}

/// Reads one line of the event stream the way the reader does: bollard's model first, then
/// field by field.
pub fn decode_line(line: &[u8]) -> LenientEvent {
    match serde_json::from_slice::<bollard::models::EventMessage>(line) {
        Ok(msg) => {
            let event = ContainerEvent::from_message(msg);
            LenientEvent {
                time_nano: event.as_ref().map(|e| e.time_nano).filter(|t| *t > 0),
                event,
            }
        }
        Err(_) => decode_lenient(line),
    }
}

/// Field-by-field reading of an event line (API 1.22+ shape, plus the older `status`/`id`).
pub fn decode_lenient(line: &[u8]) -> LenientEvent {
    use serde_json::Value;
    let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(line) else {
        return LenientEvent::default();
    };
    let time_nano = msg
        .get("timeNano")
        .and_then(json_i64)
        .or_else(|| {
            msg.get("time")
                .and_then(json_i64)
                .map(|t| t.saturating_mul(1_000_000_000))
        })
        .filter(|t| *t > 0);
    let is_container = msg
        .get("Type")
        .is_none_or(|t| t.as_str() == Some("container"));
    let action = msg
        .get("Action")
        .or_else(|| msg.get("status"))
        .and_then(Value::as_str)
        .and_then(Action::parse);
    let actor = msg.get("Actor").and_then(Value::as_object);
    let id = actor
        .and_then(|a| a.get("ID"))
        .or_else(|| msg.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty());
    let event = match (is_container, action, id) {
        (true, Some(action), Some(id)) => {
            let attributes: HashMap<String, String> = actor
                .and_then(|a| a.get("Attributes"))
                .and_then(Value::as_object)
                .map(|attrs| {
                    attrs
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), json_text(v)?)))
                        .collect()
                })
                .unwrap_or_default();
            Some(ContainerEvent::from_parts(
                id.to_string(),
                action,
                time_nano.unwrap_or(0),
                attributes,
            ))
        }
        _ => None,
    };
    LenientEvent { time_nano, event }
}

fn json_i64(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|_| i64::MAX))
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
        })
        .or_else(|| v.as_str()?.parse().ok())
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Debug)]
pub enum EngineEvent {
    /// The stream is (re)connected, or a periodic resync is due: the running containers must
    /// be listed and reconciled.
    Connected,
    Container(ContainerEvent),
}

pub struct EventReader {
    pub engine: Engine,
    pub label_filters: Vec<String>,
    pub cursor: Option<EventCursor>,
    pub telemetry: Arc<Telemetry>,
    /// How often the running containers are listed again even on a healthy stream, so a
    /// container whose inspection failed (the engine busy) is reported by the next one.
    pub resync: Duration,
}

impl EventReader {
    /// Forward one decoded event unless it was already seen; false once the observer is gone.
    fn accept(
        &mut self,
        event: ContainerEvent,
        recent: &mut Recent,
        forward: &mut Forward,
    ) -> bool {
        self.telemetry.event_received(event.action.name());
        if !recent.insert(&event.id, event.action.name(), event.time_nano) {
            return true;
        }
        if self
            .cursor
            .as_ref()
            .is_none_or(|c| event.time_nano > c.time_nano)
        {
            self.cursor = Some(event.cursor());
        }
        forward.send(EngineEvent::Container(event), &self.telemetry)
    }

    /// `floor`: the time of the last event line that could not be decoded; the stream resumes
    /// after it, so a line that fails every time is read once, not forever.
    fn options(&self, floor: Option<i64>) -> EventsOptions {
        let since = match (&self.cursor, floor) {
            (Some(c), Some(f)) if f >= c.time_nano - REPLAY_MARGIN.as_nanos() as i64 => {
                nanos_param(f.saturating_add(1))
            }
            (None, Some(f)) => nanos_param(f.saturating_add(1)),
            (Some(c), _) => c.since_param(),
            // First start: a little history so nothing between list and subscribe is missed.
            (None, None) => {
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
                [
                    "start", "unpause", "rename", "die", "died", "destroy", "remove",
                ]
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

    /// Read until shutdown, reconnecting with `RECONNECT_RETRY`. Returns when the receiver is
    /// gone or shutdown is signalled.
    pub async fn run(mut self, tx: mpsc::Sender<EngineEvent>, mut shutdown: watch::Receiver<bool>) {
        let mut retries = RECONNECT_RETRY.retries();
        let mut progress = Progress::default();
        let mut forward = Forward {
            tx,
            owes_reconcile: false,
            dropped: 0,
        };
        if let Some(c) = &self.cursor {
            if let Some(action) = Action::parse(&c.action) {
                progress.recent.insert(&c.id, action.name(), c.time_nano);
            }
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.telemetry.heartbeat_reader();
            let delay = match self.handshake().await {
                Ok(()) => {
                    self.telemetry.engine_connected(true);
                    let connected_at = tokio::time::Instant::now();
                    match self
                        .follow(&mut progress, &mut forward, &mut shutdown)
                        .await
                    {
                        StreamEnd::Stop => return,
                        StreamEnd::Renew(reason) => {
                            // Resumed from the cursor and reconciled, like any reconnect.
                            tracing::debug!(reason = %reason, "reconnecting the event stream");
                            continue;
                        }
                        StreamEnd::Lost(reason) => {
                            self.telemetry.engine_connected(false);
                            self.telemetry.engine_reconnect();
                            tracing::warn!(reason = %reason, "lost the engine's event stream; reconnecting");
                            if connected_at.elapsed() > RECONNECT_RETRY.max {
                                retries.reset();
                            }
                            retries.next_delay()
                        }
                    }
                }
                Err(e) => {
                    self.telemetry.engine_connected(false);
                    let delay = retries.next_delay();
                    tracing::warn!(error = %e, retry_in = %crate::clock::human(delay), "engine unreachable");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Every (re)connection negotiates the API version anew: the engine may have been
    /// upgraded or replaced while the stream was down.
    async fn handshake(&self) -> Result<(), EngineError> {
        tokio::time::timeout(PING_TIMEOUT, self.engine.handshake())
            .await
            .unwrap_or_else(|_| {
                Err(EngineError::Unreachable {
                    host: self.engine.host.clone(),
                    reason: "ping timed out".into(),
                })
            })
    }

    /// Follow one connection of the stream: tell the observer to reconcile, forward events,
    /// reconcile again every `resync`, check an idle stream. Returns why it ended.
    async fn follow(
        &mut self,
        progress: &mut Progress,
        forward: &mut Forward,
        shutdown: &mut watch::Receiver<bool>,
    ) -> StreamEnd {
        let mut stream = self
            .engine
            .stream
            .events(Some(self.options(progress.floor)));
        if !forward.send(EngineEvent::Connected, &self.telemetry) {
            return StreamEnd::Stop;
        }
        let mut last_read = tokio::time::Instant::now();
        let mut last_event = last_read;
        let mut next_resync = last_read + self.resync;
        loop {
            // While a reconciliation is owed, look for room for it often.
            let wait = if forward.owes_reconcile {
                DEBT_CHECK
            } else {
                IDLE_CHECK
            };
            let next = tokio::select! {
                next = tokio::time::timeout(wait, stream.next()) => next,
                _ = tokio::time::sleep_until(next_resync) => {
                    next_resync = tokio::time::Instant::now() + self.resync;
                    if !forward.send(EngineEvent::Connected, &self.telemetry) {
                        return StreamEnd::Stop;
                    }
                    continue;
                }
                _ = shutdown.changed() => return StreamEnd::Stop,
            };
            self.telemetry.heartbeat_reader();
            let end = match next {
                Ok(Some(Ok(msg))) => {
                    last_read = tokio::time::Instant::now();
                    last_event = last_read;
                    let event = ContainerEvent::from_message(msg);
                    let gone =
                        event.is_some_and(|e| !self.accept(e, &mut progress.recent, forward));
                    gone.then_some(StreamEnd::Stop)
                }
                Ok(Some(Err(bollard::errors::Error::JsonDataError {
                    message, contents, ..
                }))) => Some(self.step_over(&message, &contents, progress, forward)),
                Ok(Some(Err(e))) => Some(StreamEnd::Lost(
                    EngineError::from_bollard(&self.engine.host, e).to_string(),
                )),
                Ok(None) => Some(StreamEnd::Lost(
                    "the engine closed the event stream".to_string(),
                )),
                Err(_idle) => {
                    forward.settle_debt();
                    if last_read.elapsed() < IDLE_CHECK {
                        None
                    } else {
                        last_read = tokio::time::Instant::now();
                        self.check_idle(last_event).await
                    }
                }
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// The engine sent an event bollard's model rejects. The decoder cannot step over it, so
    /// read it field by field, act on it, and resume the stream just after it.
    fn step_over(
        &mut self,
        message: &str,
        contents: &str,
        progress: &mut Progress,
        forward: &mut Forward,
    ) -> StreamEnd {
        self.telemetry.engine_answer_unexpected("event");
        let lenient = decode_lenient(contents.as_bytes());
        progress.undecodable += 1;
        if progress
            .last_warned
            .is_none_or(|t| t.elapsed() >= WARN_EVERY)
        {
            progress.last_warned = Some(tokio::time::Instant::now());
            tracing::warn!(error = %message, count = progress.undecodable, "the engine sent an event that does not match the API model; read it field by field and resuming after it");
        }
        progress.floor = Some(lenient.time_nano.unwrap_or_else(now_nanos));
        if let Some(event) = lenient.event {
            if !self.accept(event, &mut progress.recent, forward) {
                return StreamEnd::Stop;
            }
        }
        StreamEnd::Renew("resuming after an undecodable event".to_string())
    }

    /// The stream was silent for `IDLE_CHECK`: ping the engine. None while all is well.
    async fn check_idle(&self, last_event: tokio::time::Instant) -> Option<StreamEnd> {
        match tokio::time::timeout(PING_TIMEOUT, self.engine.ping()).await {
            // A ping proves the engine, not this connection: over the network a NAT or proxy
            // can drop an idle stream silently.
            Ok(Ok(()))
                if !self.engine.host.starts_with("unix://")
                    && last_event.elapsed() >= STREAM_RECYCLE =>
            {
                Some(StreamEnd::Renew("renewing a long-idle stream".to_string()))
            }
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(StreamEnd::Lost(format!("idle check failed: {e}"))),
            Err(_) => Some(StreamEnd::Lost("idle check timed out".to_string())),
        }
    }
}

/// What the reader carries from one connection of the stream to the next.
#[derive(Default)]
struct Progress {
    /// Identities of recent events, to drop those a resumed stream replays.
    recent: Recent,
    /// The time of the last event line that could not be decoded; the stream resumes after
    /// it, so a line that fails every time is read once, not forever.
    floor: Option<i64>,
    undecodable: u64,
    last_warned: Option<tokio::time::Instant>,
}

/// Why one connection of the stream ended.
enum StreamEnd {
    /// Shutdown, or the observer is gone.
    Stop,
    /// Reconnect at once (resuming from the cursor): not a fault.
    Renew(String),
    /// The stream failed: reconnect after the backoff.
    Lost(String),
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

    #[test]
    fn events_dropped_while_the_backlog_drains_are_counted() {
        let (tx, _rx) = mpsc::channel(2);
        let telemetry = Telemetry::new();
        let mut forward = Forward {
            tx,
            owes_reconcile: false,
            dropped: 0,
        };
        let event = || {
            EngineEvent::Container(ContainerEvent {
                id: "x".into(),
                action: Action::Start,
                time_nano: 1,
                exit_code: None,
                hint: EventHint::default(),
            })
        };
        for _ in 0..2 {
            assert!(forward.send(event(), &telemetry));
        }
        // Full: dropped. Still full, so still draining: dropped and counted too.
        for _ in 0..3 {
            assert!(forward.send(event(), &telemetry));
        }
        assert_eq!(forward.dropped, 3);
        assert!(telemetry
            .encode()
            .contains("deploytrack_events_dropped_total 3"));
    }

    #[test]
    fn an_event_the_model_rejects_is_read_field_by_field() {
        // A scope value this bollard does not know, and a label whose value is a number.
        let line = br#"{"Type":"container","Action":"start","scope":"cluster","Actor":{"ID":"abc","Attributes":{"name":"web","image":"app:1","tier":3}},"time":1700000000,"timeNano":1700000000000000042}"#;
        assert!(serde_json::from_slice::<bollard::models::EventMessage>(line).is_err());
        let read = decode_line(line);
        assert_eq!(read.time_nano, Some(1_700_000_000_000_000_042));
        let event = read.event.expect("a container start");
        assert_eq!(event.id, "abc");
        assert_eq!(event.action, Action::Start);
        assert_eq!(event.hint.name.as_deref(), Some("web"));
        assert_eq!(event.hint.image.as_deref(), Some("app:1"));
        assert_eq!(event.hint.labels.get("tier").map(String::as_str), Some("3"));
    }

    #[test]
    fn podman_and_old_shapes_and_other_types() {
        let died = br#"{"status":"died","Action":"died","id":"p1","Type":"container","Actor":{"ID":"p1","Attributes":{"containerExitCode":"137"}},"time":1700000000}"#;
        let event = decode_line(died).event.unwrap();
        assert_eq!(
            (event.action, event.exit_code, event.time_nano),
            (Action::Die, Some(137), 1_700_000_000_000_000_000)
        );
        // The pre-1.22 shape: `status` and `id` only.
        let old = br#"{"status":"start","id":"o1","time":3}"#;
        let event = decode_lenient(old).event.unwrap();
        assert_eq!((event.id.as_str(), event.action), ("o1", Action::Start));
        // An event type added by a newer engine: skipped, but its time still moves the stream.
        let other = br#"{"Type":"sandbox","Action":"start","Actor":{"ID":"x"},"timeNano":5}"#;
        let read = decode_line(other);
        assert!(read.event.is_none());
        assert_eq!(read.time_nano, Some(5));
        for junk in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"{\"Action\":7}",
            b"\xff\xfe",
        ] {
            assert!(decode_line(junk).event.is_none());
        }
    }

    #[test]
    fn a_stream_resumes_after_an_undecodable_event() {
        let reader = |cursor| EventReader {
            engine: Engine::new("tcp://127.0.0.1:9").unwrap(),
            label_filters: Vec::new(),
            cursor,
            telemetry: Arc::new(Telemetry::new()),
            resync: Duration::from_secs(600),
        };
        let cursor = EventCursor {
            time_nano: 10_000_000_000,
            id: "a".into(),
            action: "start".into(),
        };
        let r = reader(Some(cursor));
        assert_eq!(r.options(None).since.unwrap(), "8.000000000");
        assert_eq!(
            r.options(Some(10_500_000_000)).since.unwrap(),
            "10.500000001"
        );
        // A floor older than the replay window changes nothing.
        assert_eq!(r.options(Some(1)).since.unwrap(), "8.000000000");
        assert_eq!(reader(None).options(Some(7)).since.unwrap(), "0.000000008");
    }
}
