//! The observer: turns engine events into outbox batches. Inspections run concurrently but
//! their results are applied in event order, so a start is always seen before its stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use bollard::query_parameters::ListContainersOptions;
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backoff::Backoff;
use crate::deployment::{time_from_nanos, Deployment, DeploymentKey};
use crate::engine::events::{Action, ContainerEvent, EngineEvent, RECONNECT_RETRY};
use crate::engine::resolve::{Resolution, Resolver};
use crate::engine::EngineError;
use crate::error::Fatal;
use crate::outbox::{Batch, Outbox};
use crate::telemetry::Telemetry;

/// Inspections in flight at once; enough to hide the engine's latency, few enough to be polite.
const INSPECT_CONCURRENCY: usize = 16;
/// A failed listing of the running containers is tried again after 0.25 s, doubling up to
/// 30 s: the event reader's reconnect backoff.
const SNAPSHOT_RETRY: Backoff = RECONNECT_RETRY;

/// What the agent believes runs now: container id -> deployment. Shared with `/deployments`.
#[derive(Default)]
pub struct View(RwLock<HashMap<String, Deployment>>);

impl View {
    pub fn restore(entries: Vec<(String, DeploymentKey, String)>) -> Self {
        let map = entries
            .into_iter()
            .filter_map(|(id, _, body)| Deployment::from_body(&body).map(|d| (id, d)))
            .collect();
        View(RwLock::new(map))
    }

    /// Per environment, per name: the image and platform, as JSON for `/deployments`.
    pub fn to_json(&self) -> String {
        let map = self.0.read().map(|m| m.clone()).unwrap_or_default();
        let mut out: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
        for (id, d) in map {
            out.entry(d.key.environment.clone()).or_default().insert(
                d.key.name.clone(),
                serde_json::json!({ "image": d.image_url, "platform": d.platform, "container_id": id }),
            );
        }
        serde_json::to_string_pretty(&out).unwrap_or_default()
    }

    /// Returns what the container was in the view as before.
    fn insert(&self, id: &str, d: Deployment) -> Option<Deployment> {
        self.0
            .write()
            .ok()
            .and_then(|mut m| m.insert(id.to_string(), d))
    }

    fn remove(&self, id: &str) -> Option<Deployment> {
        self.0.write().ok().and_then(|mut m| m.remove(id))
    }

    fn contains(&self, id: &str) -> bool {
        self.0.read().is_ok_and(|m| m.contains_key(id))
    }

    /// True if some container in the view reports under `key`.
    fn runs(&self, key: &DeploymentKey) -> bool {
        self.0
            .read()
            .is_ok_and(|m| m.values().any(|d| d.key == *key))
    }

    /// True if a container other than `id` reports under `key`.
    fn runs_other(&self, id: &str, key: &DeploymentKey) -> bool {
        self.0
            .read()
            .is_ok_and(|m| m.iter().any(|(other, d)| other != id && d.key == *key))
    }

    fn ids(&self) -> Vec<String> {
        self.0
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Every running container in scope, each resolved (or not).
pub struct Snapshot {
    /// The engine's clock just before it listed them (Unix nanoseconds, as its events carry
    /// times), if it said.
    pub listed_at: Option<i64>,
    pub running: Vec<(String, Result<Resolution, EngineError>)>,
}

/// Past this many retired containers, all are forgotten (a start older than the
/// reconciliation that retired its container is then applied, as any other).
const RETIRED_MAX: usize = 4096;

/// The containers a reconciliation retired (in the view, no longer running), by id: when it
/// listed, by the engine's clock.
///
/// The reader forwards a reconciliation in stream order, but the listing runs when the
/// observer gets to it: events that happened before the listing may still be behind it in
/// the channel. A start among them is superseded by the listing: applied, it would report
/// as running a container the reconciliation just reported stopped (and its die or destroy
/// would report the stop a second time).
#[derive(Default)]
pub struct Retired(Mutex<HashMap<String, i64>>);

impl Retired {
    fn retire(&self, id: &str, listed_at: i64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= RETIRED_MAX && !m.contains_key(id) {
                m.clear();
            }
            m.insert(id.to_string(), listed_at);
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }

    /// True if an event of container `id` at `time_nano` happened before the listing that
    /// retired it. An event without a time is never older.
    fn superseded(&self, id: &str, time_nano: i64) -> bool {
        time_nano > 0
            && self
                .0
                .lock()
                .is_ok_and(|m| m.get(id).is_some_and(|listed| time_nano <= *listed))
    }
}

enum Outcome {
    Snapshot(Result<Snapshot, EngineError>),
    Started(ContainerEvent, Result<Resolution, EngineError>),
    Stopped(ContainerEvent),
    /// A `die` after which the container still counts as running: a restart policy brings
    /// it back, or it already has. Only the cursor moves.
    StillRunning(ContainerEvent),
    /// Matters only for a container in the view (a stopped one is not reported); decided
    /// when applied, in order, as the view may not hold its start yet when resolving.
    Renamed(ContainerEvent, Result<Resolution, EngineError>),
}

#[derive(Clone)]
pub struct Observer {
    pub resolver: Arc<Resolver>,
    pub outbox: Outbox,
    pub telemetry: Arc<Telemetry>,
    pub view: Arc<View>,
    /// What reconciliations retired, for the events behind them (see `Retired`).
    pub retired: Arc<Retired>,
    pub report_stops: bool,
    /// Replaced by `sync --force`: re-send what the endpoint already has.
    pub force: bool,
    /// Set once the first reconciliation is handed to the queue, so that delivery after a
    /// restart starts from the engine's current state rather than from older reports.
    pub reconciled: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Observer {
    /// Process events until the sender closes. Enqueue failures (a full disk, a broken file)
    /// are fatal: they are sent on `fatal` and the agent exits, to restart from the engine's truth.
    ///
    /// A failed listing of the running containers is tried again on `retry` (the reader's
    /// channel, held weakly so that it still closes at shutdown), with the reconnect backoff.
    pub async fn run(
        self,
        rx: mpsc::Receiver<EngineEvent>,
        retry: mpsc::WeakSender<EngineEvent>,
        fatal: mpsc::UnboundedSender<Fatal>,
    ) {
        let mut snapshot_retries = SNAPSHOT_RETRY.retries();
        let me = self.clone();
        let mut outcomes = ReceiverStream::new(rx)
            .map(move |event| me.clone().process(event))
            .buffered(INSPECT_CONCURRENCY * 2)
            .ready_chunks(512);
        let mut writes = tokio::task::JoinSet::new();
        while let Some(chunk) = outcomes.next().await {
            let reconciles = chunk.iter().any(|o| matches!(o, Outcome::Snapshot(_)));
            let listed = chunk.iter().any(|o| matches!(o, Outcome::Snapshot(Ok(_))));
            let failed = chunk.iter().find_map(|o| match o {
                Outcome::Snapshot(Err(e)) => Some(e.to_string()),
                _ => None,
            });
            match (listed, failed) {
                (true, _) => snapshot_retries.reset(),
                (false, Some(error)) => {
                    let delay = snapshot_retries.next_delay();
                    tracing::warn!(error = %error, retry_in = %crate::clock::human(delay), "cannot list the running containers; trying again");
                    let retry = retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(tx) = retry.upgrade() {
                            let _ = tx.send(EngineEvent::Connected).await;
                        }
                    });
                }
                (false, None) => {}
            }
            // The containers a reconciliation found; what it queued is known once written.
            let running = chunk.iter().rev().find_map(|o| match o {
                Outcome::Snapshot(Ok(snapshot)) => Some(snapshot.running.len()),
                _ => None,
            });
            let batch = self.apply(chunk);
            if batch.is_empty() {
                if let Some(running) = running {
                    tracing::info!(running, queued = 0, "reconciled with the engine");
                }
                if reconciles {
                    self.first_reconciled();
                }
                continue;
            }
            // Handed over now, in order; the wait for the sync is not awaited here, as it
            // would stall the inspections behind it.
            let written = self.outbox.enqueue(batch);
            let fatal = fatal.clone();
            writes.spawn(async move {
                match written.await {
                    Ok(outcome) => {
                        if let Some(running) = running {
                            tracing::info!(
                                running,
                                queued = outcome.queued,
                                unchanged = outcome.unchanged,
                                "reconciled with the engine"
                            );
                        }
                    }
                    Err(e) => {
                        let _ = fatal.send(Fatal::QueueWrite(e));
                    }
                }
            });
            if reconciles {
                self.first_reconciled();
            }
            while writes.try_join_next().is_some() {}
        }
        while writes.join_next().await.is_some() {}
    }

    /// A reconciliation was handed to the queue. After the first, the log says what runs
    /// that cannot be reported for want of evidence, and what would fix it.
    fn first_reconciled(&self) {
        if !self.reconciled.send_replace(true) {
            for line in unseen_summary(&self.resolver.unseen()) {
                tracing::warn!("{line}");
            }
        }
    }

    async fn process(self, event: EngineEvent) -> Outcome {
        match event {
            EngineEvent::Connected => Outcome::Snapshot(self.snapshot().await),
            EngineEvent::Container(ev) => match ev.action {
                Action::Start | Action::Unpause => {
                    let result = self.resolver.resolve(&ev.id, Some(&ev.hint)).await;
                    Outcome::Started(ev, result)
                }
                Action::Rename => {
                    let result = self.resolver.resolve(&ev.id, Some(&ev.hint)).await;
                    Outcome::Renamed(ev, result)
                }
                // A crash loop under a restart policy is one deployment, not a flapping one.
                Action::Die => match self.resolver.still_alive(&ev.id).await {
                    Ok(true) => Outcome::StillRunning(ev),
                    _ => Outcome::Stopped(ev),
                },
                Action::Destroy => Outcome::Stopped(ev),
            },
        }
    }

    /// List and resolve every running (or paused, or restarting) container in scope.
    pub async fn snapshot(&self) -> Result<Snapshot, EngineError> {
        let engine = self.resolver.engine();
        self.resolver.forget_unseen();
        let mut listed_at = None;
        if let Ok((host, store, clock)) = engine.host_facts_and_clock().await {
            self.resolver.set_host(host);
            self.resolver.set_store(store);
            listed_at = clock;
        }
        let ids = running_ids(engine, self.resolver.selection()).await?;
        let resolver = self.resolver.clone();
        let running = stream::iter(ids)
            .map(|id| {
                let resolver = resolver.clone();
                async move {
                    let r = resolver.resolve(&id, None).await;
                    (id, r)
                }
            })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        Ok(Snapshot { listed_at, running })
    }

    /// Apply outcomes in order to the view and collect what must be queued.
    fn apply(&self, outcomes: Vec<Outcome>) -> Batch {
        let mut batch = Batch {
            force: self.force,
            ..Batch::default()
        };
        for outcome in outcomes {
            match outcome {
                Outcome::Started(ev, _) if self.retired.superseded(&ev.id, ev.time_nano) => {
                    tracing::debug!(container = %ev.id, action = ev.action.name(), "a start from before the reconciliation that found the container stopped; not applied");
                    batch.cursor = Some(ev.cursor().encode());
                }
                Outcome::Started(ev, mut result) => {
                    // Newer than what retired it: the container ran again.
                    self.retired.forget(&ev.id);
                    // A container removed before its inspection has no start time but its event's.
                    if let Ok(Resolution::Report(d) | Resolution::Recalled(d)) = &mut result {
                        if let Some(c) = d.container.as_mut().filter(|c| c.since.is_none()) {
                            c.since = time_from_nanos(ev.time_nano);
                        }
                    }
                    self.started(&ev.id, result, ev.time_nano, &mut batch);
                    batch.cursor = Some(ev.cursor().encode());
                }
                Outcome::Stopped(ev) => {
                    if ev.action == Action::Destroy {
                        self.telemetry.container_removed(&ev.id);
                        self.retired.forget(&ev.id);
                    }
                    self.stopped(&ev.id, ev.exit_code, ev.time_nano, &mut batch);
                    batch.cursor = Some(ev.cursor().encode());
                }
                Outcome::StillRunning(ev) => {
                    tracing::debug!(container = %ev.id, "container died and is restarting");
                    batch.cursor = Some(ev.cursor().encode());
                }
                Outcome::Renamed(ev, result) => {
                    if self.view.contains(&ev.id) {
                        self.started(&ev.id, result, ev.time_nano, &mut batch);
                    }
                    batch.cursor = Some(ev.cursor().encode());
                }
                // Logged, and tried again, by `run`.
                Outcome::Snapshot(Err(_)) => {}
                Outcome::Snapshot(Ok(Snapshot { listed_at, running })) => {
                    let seen: HashSet<String> = running.iter().map(|(id, _)| id.clone()).collect();
                    // No event tells when: a time of 0 is sent as none.
                    for (id, result) in running {
                        self.retired.forget(&id);
                        self.started(&id, result, 0, &mut batch);
                    }
                    for id in self.view.ids() {
                        if !seen.contains(&id) {
                            self.stopped(&id, None, 0, &mut batch);
                            if let Some(listed_at) = listed_at {
                                self.retired.retire(&id, listed_at);
                            }
                        }
                    }
                }
            }
        }
        batch
    }

    /// `at`: the event's time (Unix nanoseconds), 0 when there is none; a name the container
    /// leaves is stopped at that time.
    fn started(
        &self,
        id: &str,
        result: Result<Resolution, EngineError>,
        at: i64,
        batch: &mut Batch,
    ) {
        match result {
            // A container already gone, known from its start event: when another container
            // runs under its name, that event is older than the one running (replayed after a
            // restart), and reporting it would undo the newer deployment.
            Ok(Resolution::Recalled(d)) if self.view.runs_other(id, &d.key) => {
                tracing::debug!(container = id, key = %d.key, "a gone container's start, superseded by the container running under its name; not reported");
            }
            Ok(Resolution::Report(d) | Resolution::Recalled(d)) => {
                tracing::debug!(container = id, key = %d.key, image = %d.image_url, "container running");
                let before = self.view.insert(id, d.clone());
                // A running container under a new name (`docker rename`, or a rename a
                // reconciliation finds): its old name no longer runs.
                if let Some(old) = before.filter(|old| old.key != d.key) {
                    tracing::debug!(container = id, from = %old.key, to = %d.key, "container renamed");
                    if self.report_stops && !self.view.runs(&old.key) {
                        batch.reports.push(old.stopped(None, time_from_nanos(at)));
                    }
                }
                // A restart within one batch: the stop before it must not delete it on disk.
                batch.gone.retain(|g| g != id);
                batch.running.push((id.to_string(), d.clone()));
                batch.reports.push(d);
            }
            Ok(Resolution::Skip(reason)) => {
                self.telemetry.skipped(id, reason.as_str());
                tracing::debug!(
                    container = id,
                    reason = reason.as_str(),
                    "container not reported"
                );
            }
            Err(e) if e.is_not_found() => {
                self.telemetry
                    .skipped(id, crate::deployment::SkipReason::Unresolvable.as_str());
                tracing::debug!(
                    container = id,
                    "container gone before it could be inspected"
                );
            }
            Err(e) => {
                self.telemetry
                    .skipped(id, crate::deployment::SkipReason::Unresolvable.as_str());
                tracing::warn!(container = id, error = %e, "cannot inspect container; the next reconciliation (--resync-interval) picks it up");
            }
        }
    }

    fn stopped(&self, id: &str, exit_code: Option<i64>, at: i64, batch: &mut Batch) {
        if let Some(d) = self.view.remove(id) {
            tracing::debug!(container = id, key = %d.key, ?exit_code, "container stopped");
            batch.gone.push(id.to_string());
            // The start may sit in this same batch: it must not be re-added by it.
            batch.running.retain(|(rid, _)| rid != id);
            // Another container may already run under the same name (a rolling replacement
            // that starts the new one first): then the stop would overwrite it.
            if self.report_stops && !self.view.runs(&d.key) {
                batch
                    .reports
                    .push(d.stopped(exit_code, time_from_nanos(at)));
            }
        }
    }
}

/// The ids of the running (or paused, or restarting) containers the selection's labels
/// allow. Without `all`, the engine lists what runs, paused containers and those between
/// restart-policy attempts included: each still runs a deployment. (A `status` filter would
/// name states Podman does not know, `restarting` among them.)
pub async fn running_ids(
    engine: &crate::engine::Engine,
    selection: &crate::deployment::Selection,
) -> Result<Vec<String>, EngineError> {
    let mut filters = HashMap::new();
    let labels = selection.selector.engine_filters();
    if !labels.is_empty() {
        filters.insert("label".to_string(), labels);
    }
    let list = engine
        .api
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| EngineError::from_bollard(&engine.host, e))?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

/// What runs without evidence of a repository that holds it, one line per reason: how many
/// images, which, and what would fix it. Empty when everything can be reported.
pub fn unseen_summary(unseen: &[(String, crate::engine::evidence::Unseen)]) -> Vec<String> {
    let mut by_reason: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (reference, why) in unseen {
        by_reason
            .entry(why.advice())
            .or_default()
            .push(reference.as_str());
    }
    by_reason
        .into_iter()
        .map(|(advice, mut images)| {
            images.sort_unstable();
            images.dedup();
            format!(
                "{} running image{} cannot be reported for want of evidence that a registry holds {} ({}): {advice}",
                images.len(),
                if images.len() == 1 { "" } else { "s" },
                if images.len() == 1 { "it" } else { "them" },
                images.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{ContainerState, ContainerStatus, Platform, Selection};
    use crate::engine::events::{Action, ContainerEvent};
    use crate::engine::resolve::EventHint;
    use crate::engine::Engine;

    fn observer(report_stops: bool) -> Observer {
        let telemetry = Arc::new(Telemetry::new());
        // Never contacted: these tests feed resolved outcomes directly.
        let engine = Engine::new("tcp://127.0.0.1:9").unwrap();
        let resolver = Arc::new(Resolver::new(
            engine,
            "host".into(),
            "deployed".into(),
            None,
            Selection::default(),
            report_stops,
        ));
        let (outbox, _) = Outbox::open(None, 100, telemetry.clone()).unwrap();
        Observer {
            resolver,
            outbox,
            telemetry,
            view: Arc::new(View::default()),
            retired: Arc::default(),
            report_stops,
            force: false,
            reconciled: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    fn deployment(id: &str, stops: bool) -> Deployment {
        Deployment {
            key: DeploymentKey {
                environment: "deployed".into(),
                name: format!("host/{id}"),
            },
            image_url: "example.com/app@sha256:1".into(),
            platform: Platform::new("linux", "amd64", None),
            container: stops.then(|| ContainerStatus {
                id: id.into(),
                state: ContainerState::Running,
                exit_code: None,
                since: None,
            }),
        }
    }

    fn event(id: &str, action: Action, exit_code: Option<i64>) -> ContainerEvent {
        ContainerEvent {
            id: id.into(),
            action,
            time_nano: 1,
            exit_code,
            hint: EventHint::default(),
        }
    }

    fn started(id: &str, stops: bool) -> Outcome {
        Outcome::Started(
            event(id, Action::Start, None),
            Ok(Resolution::Report(deployment(id, stops))),
        )
    }

    #[tokio::test]
    async fn a_restart_in_one_batch_stays_running() {
        let o = observer(false);
        let batch = o.apply(vec![
            started("c1", false),
            Outcome::Stopped(event("c1", Action::Die, Some(0))),
            started("c1", false),
        ]);
        assert!(batch.gone.is_empty(), "{:?}", batch.gone);
        assert_eq!(batch.running.len(), 1);
        assert_eq!(o.view.ids(), vec!["c1".to_string()]);
    }

    #[tokio::test]
    async fn a_brief_container_reports_its_stop() {
        let o = observer(true);
        let batch = o.apply(vec![
            started("c1", true),
            Outcome::Stopped(event("c1", Action::Die, Some(3))),
            Outcome::Stopped(event("c1", Action::Destroy, None)),
        ]);
        assert!(batch.running.is_empty());
        assert_eq!(batch.gone, vec!["c1".to_string()]);
        let states: Vec<_> = batch
            .reports
            .iter()
            .map(|d| d.container.as_ref().map(|c| (c.state, c.exit_code)))
            .collect();
        assert_eq!(
            states,
            vec![
                Some((ContainerState::Running, None)),
                Some((ContainerState::Stopped, Some(3)))
            ]
        );
        assert!(o.view.ids().is_empty());
    }

    #[tokio::test]
    async fn a_rename_counts_only_for_a_running_container() {
        let o = observer(false);
        let renamed = |id: &str| {
            Outcome::Renamed(
                event(id, Action::Rename, None),
                Ok(Resolution::Report(deployment(id, false))),
            )
        };
        let batch = o.apply(vec![renamed("stopped")]);
        assert!(batch.reports.is_empty() && o.view.ids().is_empty());
        let batch = o.apply(vec![started("c1", false), renamed("c1")]);
        assert_eq!(batch.reports.len(), 2);
    }

    fn renamed(id: &str, name: &str, time_nano: i64) -> Outcome {
        let mut d = deployment(id, true);
        d.key.name = name.into();
        let mut ev = event(id, Action::Rename, None);
        ev.time_nano = time_nano;
        Outcome::Renamed(ev, Ok(Resolution::Report(d)))
    }

    #[tokio::test]
    async fn a_rename_retires_the_old_name() {
        let o = observer(true);
        o.apply(vec![started("c1", true)]);
        let batch = o.apply(vec![renamed("c1", "host/new", 1_700_000_000_000_000_000)]);
        let reports: Vec<_> = batch
            .reports
            .iter()
            .map(|d| {
                let c = d.container.as_ref().unwrap();
                (d.key.name.as_str(), c.state, c.since.as_deref())
            })
            .collect();
        assert_eq!(
            reports,
            vec![
                (
                    "host/c1",
                    ContainerState::Stopped,
                    Some("2023-11-14T22:13:20.000000000Z")
                ),
                ("host/new", ContainerState::Running, None),
            ]
        );
        assert_eq!(batch.running.len(), 1);
        // The same name again (a rename back and forth within the view) retires nothing.
        let batch = o.apply(vec![renamed("c1", "host/new", 2)]);
        assert_eq!(batch.reports.len(), 1);
    }

    #[tokio::test]
    async fn a_rename_keeps_a_name_another_container_runs_under() {
        let o = observer(true);
        let mut twin = deployment("c2", true);
        twin.key = deployment("c1", true).key;
        o.apply(vec![
            started("c1", true),
            Outcome::Started(
                event("c2", Action::Start, None),
                Ok(Resolution::Report(twin)),
            ),
        ]);
        let batch = o.apply(vec![renamed("c1", "host/new", 5)]);
        assert_eq!(batch.reports.len(), 1, "{:?}", batch.reports);
        assert_eq!(batch.reports[0].key.name, "host/new");
    }

    #[tokio::test]
    async fn without_report_stops_a_rename_sends_only_the_new_name() {
        let o = observer(false);
        o.apply(vec![started("c1", false)]);
        let batch = o.apply(vec![renamed("c1", "host/new", 5)]);
        let names: Vec<_> = batch.reports.iter().map(|d| d.key.name.as_str()).collect();
        assert_eq!(names, vec!["host/new"]);
    }

    #[tokio::test]
    async fn a_stop_carries_its_event_time() {
        let o = observer(true);
        o.apply(vec![started("c1", true)]);
        let mut die = event("c1", Action::Die, Some(0));
        die.time_nano = 1_700_000_000_000_000_000;
        let batch = o.apply(vec![Outcome::Stopped(die)]);
        let c = batch.reports[0].container.as_ref().unwrap();
        assert_eq!(c.state, ContainerState::Stopped);
        assert_eq!(c.since.as_deref(), Some("2023-11-14T22:13:20.000000000Z"));
    }

    #[tokio::test]
    async fn a_stop_does_not_overwrite_its_replacement() {
        let o = observer(true);
        let mut replacement = deployment("new", true);
        replacement.key = deployment("old", true).key;
        o.apply(vec![started("old", true)]);
        let batch = o.apply(vec![
            Outcome::Started(
                event("new", Action::Start, None),
                Ok(Resolution::Report(replacement)),
            ),
            Outcome::Stopped(event("old", Action::Die, Some(0))),
        ]);
        assert_eq!(batch.reports.len(), 1, "{:?}", batch.reports);
        assert_eq!(
            batch.reports[0].container.as_ref().unwrap().state,
            ContainerState::Running
        );
    }

    #[tokio::test]
    async fn a_skipped_container_is_counted_once() {
        let o = observer(false);
        let skip = || Ok(Resolution::Skip(crate::deployment::SkipReason::NoDigest));
        // Its start, a reconciliation that lists it, and a restart: one container.
        o.apply(vec![
            Outcome::Started(event("local", Action::Start, None), skip()),
            Outcome::Snapshot(Ok(Snapshot {
                listed_at: None,
                running: vec![("local".to_string(), skip())],
            })),
        ]);
        o.apply(vec![Outcome::Started(
            event("local", Action::Start, None),
            skip(),
        )]);
        assert_eq!(o.telemetry.totals().2, 1);
        let metrics = o.telemetry.encode();
        assert!(
            metrics.contains("deploytrack_containers_skipped_total{reason=\"no_digest\"} 1\n"),
            "{metrics}"
        );
        // Removed, its id is forgotten: another container of that id would count.
        o.apply(vec![
            Outcome::Stopped(event("local", Action::Destroy, None)),
            Outcome::Started(event("local", Action::Start, None), skip()),
        ]);
        assert_eq!(o.telemetry.totals().2, 2);
    }

    fn at(outcome: Outcome, time_nano: i64) -> Outcome {
        match outcome {
            Outcome::Started(mut ev, r) => {
                ev.time_nano = time_nano;
                Outcome::Started(ev, r)
            }
            Outcome::Stopped(mut ev) => {
                ev.time_nano = time_nano;
                Outcome::Stopped(ev)
            }
            other => other,
        }
    }

    fn states(batch: &Batch) -> Vec<(&str, ContainerState)> {
        batch
            .reports
            .iter()
            .map(|d| (d.key.name.as_str(), d.container.as_ref().unwrap().state))
            .collect()
    }

    #[tokio::test]
    async fn a_start_behind_the_reconciliation_that_retired_it_is_not_applied() {
        let o = observer(true);
        o.apply(vec![started("c1", true)]);
        // Unpaused at 50 and removed at 60; the reconciliation forwarded before those events
        // listed at 100, and found it gone.
        let nothing_runs = || {
            Outcome::Snapshot(Ok(Snapshot {
                listed_at: Some(100),
                running: Vec::new(),
            }))
        };
        let batch = o.apply(vec![nothing_runs()]);
        assert_eq!(states(&batch), vec![("host/c1", ContainerState::Stopped)]);
        // Its events, behind the reconciliation: the unpause (resolved from the event, the
        // container being gone) neither runs it again nor lets the die report a second stop.
        let gone = Ok(Resolution::Recalled(deployment("c1", true)));
        let batch = o.apply(vec![
            at(
                Outcome::Started(event("c1", Action::Unpause, None), gone),
                50,
            ),
            at(Outcome::Stopped(event("c1", Action::Die, Some(137))), 60),
        ]);
        assert!(batch.reports.is_empty(), "{:?}", batch.reports);
        assert!(batch.running.is_empty() && o.view.ids().is_empty());
        assert!(batch.cursor.is_some(), "the cursor still moves");

        // A start after the listing is a new run: reported, and its stop too.
        let batch = o.apply(vec![
            at(started("c1", true), 150),
            at(Outcome::Stopped(event("c1", Action::Die, Some(0))), 160),
        ]);
        assert_eq!(
            states(&batch),
            vec![
                ("host/c1", ContainerState::Running),
                ("host/c1", ContainerState::Stopped)
            ]
        );

        // A start without a time, or of a container no reconciliation retired, is applied.
        o.apply(vec![started("c2", true)]);
        o.apply(vec![nothing_runs()]);
        let batch = o.apply(vec![
            at(started("c2", true), 0),
            at(started("c3", true), 50),
        ]);
        assert_eq!(batch.reports.len(), 2, "{:?}", batch.reports);

        // A reconciliation that cannot read the engine's clock retires nothing.
        let o = observer(true);
        o.apply(vec![started("c1", true)]);
        o.apply(vec![Outcome::Snapshot(Ok(Snapshot {
            listed_at: None,
            running: Vec::new(),
        }))]);
        let batch = o.apply(vec![at(started("c1", true), 50)]);
        assert_eq!(batch.reports.len(), 1);
    }

    #[tokio::test]
    async fn a_snapshot_retires_what_no_longer_runs() {
        let o = observer(true);
        o.apply(vec![started("old", true)]);
        let batch = o.apply(vec![Outcome::Snapshot(Ok(Snapshot {
            listed_at: None,
            running: vec![(
                "new".to_string(),
                Ok(Resolution::Report(deployment("new", true))),
            )],
        }))]);
        assert_eq!(batch.gone, vec!["old".to_string()]);
        assert_eq!(o.view.ids(), vec!["new".to_string()]);
        assert!(batch.reports.iter().any(|d| d.key.name == "host/old"
            && d.container.as_ref().unwrap().state == ContainerState::Stopped));
    }
}
