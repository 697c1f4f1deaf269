//! Metrics, liveness heartbeats and log setup. Each recording method is the one place a
//! thing is counted, so `/metrics` and the logs describe the same events.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::clock::now_ms;

/// How many skipped containers are remembered, so that each is counted once.
const SKIPPED_REMEMBERED: usize = 100_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

pub struct Telemetry {
    registry: Registry,
    events: Family<ActionLabel, Counter>,
    events_dropped: Counter,
    enqueued: Counter,
    unchanged: Counter,
    delivered: Counter,
    failed: Family<ReasonLabel, Counter>,
    dead_lettered: Counter,
    dropped: Counter,
    skipped: Family<ReasonLabel, Counter>,
    lookups: Family<ReasonLabel, Counter>,
    queue_depth: Gauge,
    dead_letters: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    queue_commits: Counter,
    engine_up: Gauge,
    reconnects: Counter,
    unexpected: Family<ReasonLabel, Counter>,
    last_delivery: Gauge<f64, AtomicU64>,
    skipped_total: AtomicU64,
    /// The containers counted as skipped, with the reason: each is counted once, however
    /// many events and reconciliations decide on it again.
    skipped_containers: Mutex<HashSet<(String, &'static str)>>,
    connected: AtomicBool,
    queue_open: AtomicBool,
    reader_beat: AtomicI64,
    dispatcher_beat: AtomicI64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let t = Telemetry {
            events: Family::default(),
            events_dropped: Counter::default(),
            enqueued: Counter::default(),
            unchanged: Counter::default(),
            delivered: Counter::default(),
            failed: Family::default(),
            dead_lettered: Counter::default(),
            dropped: Counter::default(),
            skipped: Family::default(),
            lookups: Family::default(),
            queue_depth: Gauge::default(),
            dead_letters: Gauge::default(),
            oldest_pending: Gauge::default(),
            queue_commits: Counter::default(),
            engine_up: Gauge::default(),
            reconnects: Counter::default(),
            unexpected: Family::default(),
            last_delivery: Gauge::default(),
            skipped_total: AtomicU64::new(0),
            skipped_containers: Mutex::new(HashSet::new()),
            connected: AtomicBool::new(false),
            queue_open: AtomicBool::new(false),
            reader_beat: AtomicI64::new(now_ms()),
            dispatcher_beat: AtomicI64::new(now_ms()),
            registry: Registry::default(),
        };
        let mut registry = Registry::with_prefix("deploytrack");
        t.register_reports(&mut registry);
        t.register_queue(&mut registry);
        t.register_engine(&mut registry);
        Telemetry { registry, ..t }
    }

    /// Along the flow: events, reports queued, delivered, refused, dropped, skipped.
    fn register_reports(&self, registry: &mut Registry) {
        let t = self;
        registry.register(
            "events_dropped",
            "Events dropped because inspection fell behind (a reconciliation follows)",
            t.events_dropped.clone(),
        );
        registry.register(
            "events_received",
            "Container events received from the engine, by action",
            t.events.clone(),
        );
        registry.register(
            "reports_enqueued",
            "Reports written to the persistent queue",
            t.enqueued.clone(),
        );
        registry.register(
            "reports_unchanged",
            "Reports not queued because the endpoint already has them or they are already queued",
            t.unchanged.clone(),
        );
        registry.register(
            "reports_delivered",
            "Reports the endpoint accepted",
            t.delivered.clone(),
        );
        registry.register(
            "delivery_failures",
            "Failed delivery attempts, by reason",
            t.failed.clone(),
        );
        registry.register(
            "reports_dead_lettered",
            "Reports the endpoint refused permanently",
            t.dead_lettered.clone(),
        );
        registry.register(
            "reports_dropped",
            "Pending reports dropped because the queue was full",
            t.dropped.clone(),
        );
        registry.register(
            "containers_skipped",
            "Containers not reported, by reason",
            t.skipped.clone(),
        );
        registry.register(
            "registry_lookups",
            "Registry lookups through the engine (GET /distribution), by result: each costs a manifest request at the registry",
            t.lookups.clone(),
        );
    }

    fn register_queue(&self, registry: &mut Registry) {
        let t = self;
        registry.register(
            "queue_depth",
            "Reports waiting for delivery",
            t.queue_depth.clone(),
        );
        registry.register(
            "queue_dead_letters",
            "Reports in the dead-letter table",
            t.dead_letters.clone(),
        );
        registry.register(
            "queue_oldest_pending_age_seconds",
            "Age of the oldest report waiting for delivery",
            t.oldest_pending.clone(),
        );
        registry.register(
            "queue_commits",
            "Transactions committed (each one sync) to the queue file",
            t.queue_commits.clone(),
        );
    }

    /// The engine's stream, and the endpoint's last delivery.
    fn register_engine(&self, registry: &mut Registry) {
        let t = self;
        registry.register(
            "engine_connected",
            "1 while the engine's event stream is connected",
            t.engine_up.clone(),
        );
        registry.register(
            "engine_reconnects",
            "Times the event stream was lost and reconnected",
            t.reconnects.clone(),
        );
        registry.register(
            "engine_answers_unexpected",
            "Engine answers that did not match the API model and were read leniently, by what was asked",
            t.unexpected.clone(),
        );
        registry.register(
            "last_delivery_timestamp_seconds",
            "Unix time of the last successful delivery",
            t.last_delivery.clone(),
        );
    }

    pub fn event_received(&self, action: &str) {
        self.events
            .get_or_create(&ActionLabel {
                action: action.to_string(),
            })
            .inc();
    }

    /// An engine answer (`event`, `container`, `image`) that bollard's model rejected.
    pub fn engine_answer_unexpected(&self, what: &str) {
        self.unexpected
            .get_or_create(&ReasonLabel {
                reason: what.to_string(),
            })
            .inc();
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn reports_enqueued(&self, queued: u64, unchanged: u64) {
        self.enqueued.inc_by(queued);
        self.unchanged.inc_by(unchanged);
    }

    pub fn delivered(&self) {
        self.delivered.inc();
        self.last_delivery.set(now_ms() as f64 / 1000.0);
    }

    pub fn delivery_failed(&self, reason: &str) {
        self.failed
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    pub fn reports_dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }

    /// A container not reported, for `reason`: counted once per container and reason.
    pub fn skipped(&self, container: &str, reason: &'static str) {
        let first = self
            .skipped_containers
            .lock()
            .map(|mut seen| {
                // Bounded: past this many, the set starts over (a container may count twice).
                if seen.len() >= SKIPPED_REMEMBERED {
                    seen.clear();
                }
                seen.insert((container.to_string(), reason))
            })
            .unwrap_or(true);
        if !first {
            return;
        }
        self.skipped_total.fetch_add(1, Ordering::Relaxed);
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A container was removed: should its id come back, it counts again.
    pub fn container_removed(&self, container: &str) {
        if let Ok(mut seen) = self.skipped_containers.lock() {
            seen.retain(|(id, _)| id != container);
        }
    }

    /// A registry lookup's result: `confirmed`, `credentials`, `unknown` or `unreachable`.
    pub fn registry_lookup(&self, result: &str) {
        self.lookups
            .get_or_create(&ReasonLabel {
                reason: result.to_string(),
            })
            .inc();
    }

    /// What this process did so far, for a summary: (delivered, unchanged, skipped, refused).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.delivered.get(),
            self.unchanged.get(),
            self.skipped_total.load(Ordering::Relaxed),
            self.dead_lettered.get(),
        )
    }

    pub fn queue_depth(&self, n: i64) {
        self.queue_depth.set(n);
    }

    pub fn queue_commit(&self) {
        self.queue_commits.inc();
    }

    pub fn dead_letters(&self, n: i64) {
        self.dead_letters.set(n);
    }

    pub fn queue_opened(&self) {
        self.queue_open.store(true, Ordering::Relaxed);
    }

    pub fn is_queue_open(&self) -> bool {
        self.queue_open.load(Ordering::Relaxed)
    }

    pub fn oldest_pending(&self, enqueued_ms: Option<i64>) {
        let age = enqueued_ms.map_or(0.0, |t| ((now_ms() - t).max(0)) as f64 / 1000.0);
        self.oldest_pending.set(age);
    }

    pub fn engine_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.engine_up.set(i64::from(up));
    }

    pub fn is_engine_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn engine_reconnect(&self) {
        self.reconnects.inc();
    }

    pub fn heartbeat_reader(&self) {
        self.reader_beat.store(now_ms(), Ordering::Relaxed);
    }

    pub fn heartbeat_dispatcher(&self) {
        self.dispatcher_beat.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the slower of the two loops last went round.
    pub fn stalest_loop_ms(&self) -> i64 {
        let oldest = self
            .reader_beat
            .load(Ordering::Relaxed)
            .min(self.dispatcher_beat.load(Ordering::Relaxed));
        now_ms() - oldest
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Text logs by default (without timestamps under journald, which adds its own), JSON on request.
/// `level` and `format` come with the name of where they were set, for errors.
pub fn init_logging(
    level: Option<(String, String)>,
    format: Option<(String, String)>,
) -> Result<(), crate::config::ConfigError> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        // A bare word is a target name to tracing ("loud" would enable nothing of ours):
        // accept only the level names, alone or as `target=level` directives.
        Some((l, source))
            if l.split(',').any(|d| {
                !d.contains('=')
                    && !matches!(
                        d.trim().to_ascii_lowercase().as_str(),
                        "error" | "warn" | "info" | "debug" | "trace" | "off"
                    )
            }) =>
        {
            return Err(crate::config::ConfigError::new(
                source,
                format!(
                    "{l:?} is not a level (error, warn, info, debug, trace) or target=level list"
                ),
            ));
        }
        Some((l, source)) => EnvFilter::try_new(&l)
            .map_err(|e| crate::config::ConfigError::new(source, format!("{l:?}: {e}")))?,
        None => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let (format, source) = format.unwrap_or_else(|| ("text".into(), "--log-format".into()));
    match format.as_str() {
        "json" => builder.json().flatten_event(true).init(),
        "text" => {
            let journald = std::env::var_os("JOURNAL_STREAM").is_some();
            let ansi = !journald && std::io::IsTerminal::is_terminal(&std::io::stderr());
            if journald {
                builder.without_time().with_ansi(false).init()
            } else {
                builder.with_ansi(ansi).init()
            }
        }
        other => {
            return Err(crate::config::ConfigError::new(
                source,
                format!("{other:?} is neither text nor json"),
            ))
        }
    }
    Ok(())
}
