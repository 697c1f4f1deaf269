//! Test doubles for delivery (the dispatcher, `report`'s retries): a sink that answers from a script and records each call
//! on the paused clock, a queue in memory that keeps the outbox's rules, and a capture of
//! the log lines.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Error, Outcome, Queue, Sending, Sink};
use crate::config::Token;
use crate::deployment::DeploymentKey;
use crate::outbox::{Pending, Settle, Stats};

/// Milliseconds of (paused) test time since `start`.
pub fn ms_since(start: Instant) -> u64 {
    Instant::now().duration_since(start).as_millis() as u64
}

/// One request the sink received: the report's body, the token it was sent with, when it
/// started and when it ended (none when it was abandoned), in milliseconds since the test
/// started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub body: String,
    pub token: String,
    pub at: u64,
    pub ended: Option<u64>,
}

/// Where the scripted sink says it sends.
pub const URL: &str = "http://endpoint.test/atomist/resource";

/// How the sink answers a call: after this long, this.
pub type Step = (Duration, Outcome);

pub fn ok() -> Outcome {
    Outcome::Delivered { status: 200 }
}

pub fn unavailable(retry_after: Option<Duration>) -> Outcome {
    Outcome::Transient {
        reason: "the endpoint answered 503 Service Unavailable".into(),
        retry_after,
    }
}

#[derive(Default)]
struct Record {
    calls: Vec<Call>,
    in_flight: Vec<String>,
    most_in_flight: usize,
    /// Bodies of calls that started while a call for the same key was in flight.
    same_key_at_once: Vec<String>,
}

/// The script and the record, which a sink shares with the sinks it makes for a new token.
struct Shared {
    start: Instant,
    steps: Mutex<VecDeque<Step>>,
    otherwise: Step,
    record: Mutex<Record>,
}

/// A sink that answers calls in order from a script, then with `otherwise`. It sends the
/// token `first` until `with_token` gives it another.
pub struct ScriptedSink {
    shared: Arc<Shared>,
    token: String,
}

impl ScriptedSink {
    pub fn new(
        start: Instant,
        steps: impl IntoIterator<Item = Step>,
        otherwise: Step,
    ) -> Arc<Self> {
        Arc::new(ScriptedSink {
            shared: Arc::new(Shared {
                start,
                steps: Mutex::new(steps.into_iter().collect()),
                otherwise,
                record: Mutex::new(Record::default()),
            }),
            token: "first".into(),
        })
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.shared.record.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.record().calls.clone()
    }

    /// When each call started, in milliseconds since the test started.
    pub fn times(&self) -> Vec<u64> {
        self.calls().iter().map(|c| c.at).collect()
    }

    pub fn bodies(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.body).collect()
    }

    pub fn most_in_flight(&self) -> usize {
        self.record().most_in_flight
    }

    pub fn same_key_at_once(&self) -> Vec<String> {
        self.record().same_key_at_once.clone()
    }

    fn begin(&self, body: &str) -> usize {
        let mut r = self.record();
        let key = key_of(body);
        if r.in_flight.iter().any(|b| key_of(b) == key) {
            r.same_key_at_once.push(body.to_string());
        }
        r.in_flight.push(body.to_string());
        r.most_in_flight = r.most_in_flight.max(r.in_flight.len());
        r.calls.push(Call {
            body: body.to_string(),
            token: self.token.clone(),
            at: ms_since(self.shared.start),
            ended: None,
        });
        r.calls.len() - 1
    }
}

/// A call in flight: when dropped (answered or abandoned), it is in flight no more.
struct InFlight<'a> {
    sink: &'a ScriptedSink,
    body: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut r = self.sink.record();
        if let Some(i) = r.in_flight.iter().position(|b| b == self.body) {
            r.in_flight.remove(i);
        }
    }
}

impl Sink for ScriptedSink {
    fn send<'a>(&'a self, body: &'a str) -> Sending<'a> {
        let (delay, outcome) = self
            .shared
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.shared.otherwise.clone());
        let index = self.begin(body);
        Box::pin(async move {
            let _in_flight = InFlight { sink: self, body };
            tokio::time::sleep(delay).await;
            self.record().calls[index].ended = Some(ms_since(self.shared.start));
            outcome
        })
    }

    fn endpoint(&self) -> Option<String> {
        Some(URL.into())
    }

    fn with_token(&self, token: &Token) -> Result<Option<Arc<dyn Sink>>, Error> {
        if token.expose() == self.token {
            return Ok(None);
        }
        Ok(Some(Arc::new(ScriptedSink {
            shared: self.shared.clone(),
            token: token.expose().to_string(),
        })))
    }
}

/// A report's body in these tests is `<name> v<version>`.
fn key_of(body: &str) -> &str {
    body.split(' ').next().unwrap_or(body)
}

pub fn key(name: &str) -> DeploymentKey {
    DeploymentKey {
        environment: "production".into(),
        name: name.into(),
    }
}

/// What the in-memory queue holds.
#[derive(Debug, Default)]
pub struct Memory {
    pub pending: Vec<Pending>,
    /// (name, status, response) of each report moved to the dead letters.
    pub dead: Vec<(String, u16, String)>,
    /// (name, version) of each report recorded as delivered.
    pub delivered: Vec<(String, i64)>,
    next_version: i64,
}

/// A queue in memory, with the outbox's rules for what is due, what a result records and
/// what a reset of the backoff makes due; its clock is the paused one.
#[derive(Clone)]
pub struct MemoryQueue {
    start: Instant,
    /// The queue's clock reads this at `start`.
    start_ms: i64,
    memory: Arc<Mutex<Memory>>,
    work: Arc<Notify>,
    /// How often the dispatcher read the clock: once per turn of its loop.
    turns: Arc<std::sync::atomic::AtomicU64>,
}

/// More turns of the dispatcher's loop than any test needs: it spins (on paused time a
/// spinning loop would stop the clock, and the test would hang rather than fail).
const TURNS_MAX: u64 = 100_000;

impl MemoryQueue {
    pub fn new(start: Instant) -> Self {
        MemoryQueue {
            start,
            start_ms: 1_700_000_000_000,
            memory: Arc::default(),
            work: Arc::default(),
            turns: Arc::default(),
        }
    }

    /// Queue a report for `name` (replacing the one waiting, as the outbox does), with the
    /// body `<name> v<version>`.
    pub fn push(&self, name: &str) {
        let now = self.now_ms();
        let mut m = self.memory.lock().unwrap();
        m.next_version += 1;
        let version = m.next_version;
        m.pending.retain(|p| p.key.name != name);
        m.pending.push(Pending {
            key: key(name),
            body: format!("{name} v{version}"),
            version,
            attempts: 0,
            next_attempt_ms: 0,
            enqueued_ms: now,
            last_error: None,
        });
        drop(m);
        self.work.notify_one();
    }

    pub fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap()
    }

    /// The names of the reports waiting, in the order they were queued.
    pub fn pending_names(&self) -> Vec<String> {
        let mut pending = self.memory().pending.clone();
        pending.sort_by_key(|p| p.version);
        pending.into_iter().map(|p| p.key.name).collect()
    }

    fn take(&self, key: &DeploymentKey, version: i64) -> Option<Pending> {
        let mut m = self.memory();
        let i = m
            .pending
            .iter()
            .position(|p| &p.key == key && p.version == version)?;
        Some(m.pending.remove(i))
    }
}

impl Queue for MemoryQueue {
    fn work(&self) -> &Notify {
        &self.work
    }

    fn now_ms(&self) -> i64 {
        let turns = self
            .turns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(turns < TURNS_MAX, "the dispatcher spins: {turns} turns");
        self.start_ms + ms_since(self.start) as i64
    }

    async fn due(
        &self,
        limit: usize,
        due_only: bool,
    ) -> Result<(Vec<Pending>, Option<i64>), Error> {
        let now = self.now_ms();
        let horizon = if due_only { now } else { i64::MAX };
        let m = self.memory();
        let mut due: Vec<Pending> = m
            .pending
            .iter()
            .filter(|p| p.next_attempt_ms <= horizon)
            .cloned()
            .collect();
        due.sort_by_key(|p| (p.next_attempt_ms, p.version));
        due.truncate(limit);
        let next = m
            .pending
            .iter()
            .map(|p| p.next_attempt_ms)
            .filter(|at| *at > now)
            .min();
        Ok((due, next))
    }

    fn settle(&self, key: DeploymentKey, version: i64, settle: Settle) {
        match settle {
            Settle::Delivered { .. } => {
                if let Some(p) = self.take(&key, version) {
                    self.memory().delivered.push((p.key.name, version));
                }
            }
            Settle::RetryAt {
                next_attempt_ms,
                error,
            } => {
                let mut m = self.memory();
                if let Some(p) = m
                    .pending
                    .iter_mut()
                    .find(|p| p.key == key && p.version == version)
                {
                    p.attempts += 1;
                    p.next_attempt_ms = next_attempt_ms;
                    p.last_error = Some(error);
                }
            }
            Settle::Dead { status, response } => {
                if let Some(p) = self.take(&key, version) {
                    self.memory().dead.push((p.key.name, status, response));
                }
            }
        }
    }

    fn reset_backoff(&self) {
        for p in self.memory().pending.iter_mut().filter(|p| p.attempts < 3) {
            p.next_attempt_ms = 0;
        }
        self.work.notify_one();
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let m = self.memory();
        Ok(Stats {
            pending: m.pending.len() as i64,
            dead: m.dead.len() as i64,
            oldest_pending_ms: m.pending.iter().map(|p| p.enqueued_ms).min(),
            last_error: m
                .pending
                .iter()
                .filter(|p| p.last_error.is_some())
                .max_by_key(|p| p.next_attempt_ms)
                .and_then(|p| p.last_error.clone()),
        })
    }

    async fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// One log line: when (milliseconds since the test started), its level, and its message
/// followed by its fields (`message key=value ...`).
#[derive(Debug, Clone)]
pub struct Line {
    pub at: u64,
    pub level: tracing::Level,
    pub text: String,
}

/// The log lines of this thread (the test's runtime), while the guard lives.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<Line>>>);

impl Logs {
    pub fn capture(start: Instant) -> (Logs, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        let logs = Logs::default();
        let layer = Capture {
            start,
            lines: logs.clone(),
        };
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        (logs, guard)
    }

    /// The lines whose message starts with `message`.
    pub fn find(&self, message: &str) -> Vec<Line> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.text.starts_with(message))
            .cloned()
            .collect()
    }

    /// When each line whose message starts with `message` was logged.
    pub fn times(&self, message: &str) -> Vec<u64> {
        self.find(message).iter().map(|l| l.at).collect()
    }
}

struct Capture {
    start: Instant,
    lines: Logs,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let line = Line {
            at: ms_since(self.start),
            level: *event.metadata().level(),
            text: format!("{}{}", text.message, text.fields),
        };
        self.lines.0.lock().unwrap().push(line);
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Text {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields += &format!(" {}={value:?}", field.name());
        }
    }
}
