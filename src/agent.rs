//! Wires the stages together and owns shutdown:
//! events -> observer (inspect) -> outbox (durable) -> dispatcher (HTTP) -> ack.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::admin::Admin;
use crate::config::Config;
use crate::deliver::Dispatcher;
use crate::deployment::Selection;
use crate::engine::events::{EngineEvent, EventCursor, EventReader, EVENT_BUFFER};
use crate::engine::evidence::{ImageStore, Registries};
use crate::engine::pulls::ImageEvents;
use crate::engine::resolve::Resolver;
use crate::engine::Engine;
use crate::error::Fatal;
use crate::evidence::Ledger;
use crate::key_settings::KeySettings;
use crate::observe::{Observer, View};
use crate::outbox::Outbox;
use crate::telemetry::Telemetry;

/// How long `run` keeps trying to reach the engine at start before giving up.
const ENGINE_PATIENCE: Duration = Duration::from_secs(10);

struct Parts {
    telemetry: Arc<Telemetry>,
    outbox: Outbox,
    observer: Observer,
    dispatcher: Dispatcher,
    reader: EventReader,
    /// The container stream's cursor time after a restart: where the image events resume.
    since_nano: Option<i64>,
    /// The settings that shape keys: as the state dir last delivered with them, and now.
    settings: (Option<KeySettings>, KeySettings),
}

/// How long the agent waits for the engine before it says what it is waiting for.
const ENGINE_QUIET: Duration = Duration::from_secs(2);
/// The first reminder of `sync --once` while the endpoint fails (the agent's is a minute).
const SYNC_REMINDER: Duration = Duration::from_secs(10);

async fn assemble(config: &Config, force: bool, reminder: Duration) -> Result<Parts, Fatal> {
    let telemetry = Arc::new(Telemetry::new());
    let (outbox, restored) = Outbox::open(
        config.queue_dir(),
        config.queue_max_entries,
        telemetry.clone(),
    )?;
    telemetry.queue_opened();
    if let Some((damaged, aside)) = &restored.moved_aside {
        tracing::error!(
            damaged = %damaged.display(), moved_to = %aside.display(),
            "moved the damaged queue database aside and started a fresh one; deployments are reconciled from the engine"
        );
    }
    let engine = wait_for_engine(config).await?;
    let (host, store) = engine.host_facts().await?;
    log_start(config, &host, store);
    log_credentials(config);
    let settings = (restored.settings, KeySettings::of(config, &host));
    let label_filters = config.label_selector.engine_filters();
    let registries = Registries::new(
        Ledger::restore(restored.evidence, restored.refusals),
        Some(outbox.clone()),
        config.registry_credentials.clone(),
    )
    .with_telemetry(telemetry.clone());
    let resolver = resolver(config, &engine, host, store, registries, &telemetry);
    let sink = crate::deliver::sink_for(config)?;
    let view = Arc::new(View::restore(restored.running));
    let cursor = restored.cursor.as_deref().and_then(EventCursor::decode);
    let cursor_time = cursor.as_ref().map(|c| c.time_nano).filter(|t| *t > 0);
    let (reconciled_tx, reconciled_rx) = watch::channel(false);
    Ok(Parts {
        observer: Observer {
            resolver,
            outbox: outbox.clone(),
            telemetry: telemetry.clone(),
            view,
            retired: Arc::default(),
            report_stops: config.report_stops,
            force,
            reconciled: Arc::new(reconciled_tx),
        },
        dispatcher: Dispatcher {
            outbox: outbox.clone(),
            reconciled: reconciled_rx,
            sink,
            concurrency: config.concurrency,
            retry: config.retry,
            telemetry: telemetry.clone(),
            reminder,
            token_reload: config.token_reload.clone(),
        },
        reader: EventReader {
            engine,
            label_filters,
            cursor,
            telemetry: telemetry.clone(),
            resync: config.resync_interval,
        },
        since_nano: cursor_time,
        settings,
        telemetry,
        outbox,
    })
}

/// What turns a container into a report, as the config says, on the engine found.
fn resolver(
    config: &Config,
    engine: &Engine,
    host: String,
    store: ImageStore,
    registries: Registries,
    telemetry: &Arc<Telemetry>,
) -> Arc<Resolver> {
    let selection = Selection {
        require_label: config.require_label,
        selector: config.label_selector.clone(),
    };
    Arc::new(
        Resolver::new(
            engine.clone(),
            host,
            config.environment.clone(),
            config.name_template.clone(),
            selection,
            config.report_stops,
        )
        .with_report_unverified(config.report_unverified)
        .with_registries(registries)
        .with_store(store)
        .with_host_name(config.host_name.clone())
        .with_telemetry(telemetry.clone()),
    )
}

/// Compare the settings that shape keys with those the state dir last delivered with, and
/// remember them. A change is a warning for the agent (`refuse` false) and, for a one-shot
/// command not told to go on, a refusal that leaves the state dir as it was (exit 64, as for
/// a setting that is wrong).
async fn remember_settings(config: &Config, parts: &Parts, refuse: bool) -> Result<(), Fatal> {
    let Some(dir) = config.queue_dir() else {
        // A dry run's queue is in memory: it delivers nothing under any settings.
        return Ok(());
    };
    let (before, now) = &parts.settings;
    let changes = before.as_ref().map(|b| b.changes(now)).unwrap_or_default();
    let dir = dir.display().to_string();
    if refuse && !changes.is_empty() {
        return Err(Fatal::SettingsChanged {
            state_dir: dir,
            changes,
        });
    }
    if !changes.is_empty() {
        tracing::warn!("{}", crate::key_settings::warning(&dir, &changes));
    }
    if before.as_ref() != Some(now) {
        parts
            .outbox
            .remember_settings(now)
            .await
            .map_err(Fatal::SettingsNotRemembered)?;
    }
    Ok(())
}

/// Connect to the engine within `ENGINE_PATIENCE`, saying so when it is slow to answer.
async fn wait_for_engine(config: &Config) -> Result<Engine, Fatal> {
    let connect = Engine::connect(&config.docker_host, ENGINE_PATIENCE);
    tokio::pin!(connect);
    tokio::select! {
        engine = &mut connect => engine,
        _ = tokio::time::sleep(ENGINE_QUIET) => {
            tracing::warn!(
                engine = %config.docker_host,
                "the Docker Engine does not answer yet; retrying for up to {}",
                humantime::format_duration(ENGINE_PATIENCE - ENGINE_QUIET)
            );
            connect.await
        }
    }
    .map_err(Fatal::Engine)
}

/// What the agent runs against, in one line, after a word on a dry run.
fn log_start(config: &Config, host: &str, store: ImageStore) {
    match (&config.url, config.dry_run) {
        (None, _) => tracing::warn!("no endpoint (--url) is set: this is a dry run, reports are printed on stdout and not sent"),
        (Some(url), true) => tracing::warn!(
            "--dry-run is set: this is a dry run, reports are printed on stdout and not sent to {}",
            crate::config::redact_url(url.as_str())
        ),
        (Some(_), false) => {}
    }
    if let (true, Some(dir)) = (config.dry_run, &config.state_dir) {
        tracing::info!(
            "the dry run keeps its queue in memory and leaves the state dir {} alone, so a later real run sends everything",
            dir.display()
        );
    }
    tracing::info!(
        engine = %config.docker_host, host = %config.host_name.as_deref().unwrap_or(host), image_store = store.as_str(), environment = %config.environment,
        endpoint = %match (&config.url, config.dry_run) {
            (Some(url), false) => crate::config::redact_url(url.as_str()),
            _ => "stdout (dry run)".to_string(),
        },
        state = %config.queue_dir().map_or("memory".to_string(), |d| d.display().to_string()),
        "{}", if config.dry_run { "deploytrack started: dry run" } else { "deploytrack started" }
    );
}

/// The registries the agent has credentials for, and where from (never the secrets).
fn log_credentials(config: &Config) {
    match &config.registry_credentials {
        Some(c) => tracing::info!("registry credentials: {}", c.summary()),
        None => tracing::debug!("registry credentials: none (no Docker CLI config.json found)"),
    }
}

/// The agent: runs until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1).
pub async fn run(config: Config) -> Result<(), Fatal> {
    let parts = assemble(&config, false, crate::deliver::REMINDER_FIRST).await?;
    remember_settings(&config, &parts, false).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<Fatal>();
    let (events_tx, events_rx) = mpsc::channel::<EngineEvent>(EVENT_BUFFER);

    if let Some(addr) = config.listen {
        let listener = Admin::bind(addr).await?;
        tracing::info!(listen = %addr, "admin listener: /healthz /readyz /metrics /deployments");
        let admin = Admin {
            telemetry: parts.telemetry.clone(),
            outbox: parts.outbox.clone(),
            view: parts.observer.view.clone(),
        };
        tokio::spawn(admin.serve(listener, shutdown_rx.clone()));
    }

    let retry = events_tx.downgrade();
    let images = ImageEvents {
        engine: parts.reader.engine.clone(),
        resolver: parts.observer.resolver.clone(),
        since_nano: parts.since_nano,
        reconcile: events_tx.downgrade(),
    };
    let image_events = tokio::spawn(images.run(shutdown_rx.clone()));
    let reader = tokio::spawn(parts.reader.run(events_tx, shutdown_rx.clone()));
    let observer = tokio::spawn(parts.observer.run(events_rx, retry, fatal_tx.clone()));
    let dispatcher = {
        let shutdown = shutdown_rx.clone();
        let fatal = fatal_tx.clone();
        let grace = config.shutdown_timeout;
        tokio::spawn(async move {
            if let Err(e) = parts.dispatcher.run(shutdown, grace, false).await {
                let _ = fatal.send(Fatal::DeliveryStopped(e));
            }
        })
    };
    let watchdog = tokio::spawn(systemd_watchdog(
        parts.telemetry.clone(),
        parts.outbox.clone(),
    ));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let failure = tokio::select! {
        _ = terminate() => None,
        msg = fatal_rx.recv() => msg,
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down: no new events; letting requests in flight finish");
    let _ = shutdown_tx.send(true);
    watchdog.abort();
    // The reader stops, which closes the observer's input; the observer drains and queues.
    let _ = reader.await;
    let _ = image_events.await;
    let _ = observer.await;
    let _ = dispatcher.await;
    if let Err(e) = parts.outbox.flush().await {
        tracing::warn!(error = %e, "could not flush the queue at shutdown");
    }
    log_what_stays_queued(&parts.outbox, config.dry_run).await;
    match failure {
        Some(fatal) => Err(fatal),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// At shutdown: what the next start will send, and what waits for an operator.
async fn log_what_stays_queued(outbox: &Outbox, dry_run: bool) {
    let Ok(stats) = outbox.stats().await else {
        return;
    };
    if dry_run {
        return;
    }
    if stats.pending == 0 && stats.dead == 0 {
        tracing::info!("nothing stays queued: every report was delivered");
        return;
    }
    let oldest = stats.oldest_pending_ms.map_or(Duration::ZERO, |ms| {
        Duration::from_secs(((crate::clock::now_ms() - ms).max(0) / 1000) as u64)
    });
    tracing::info!(
        queued = stats.pending,
        oldest = %humantime::format_duration(oldest),
        dead_letters = stats.dead,
        "reports stay queued and are sent after the next start (dead letters: deploytrack queue dead)"
    );
}

/// `sync --once`: reconcile, deliver everything queued, exit with a one-line summary. Gives
/// up after `timeout`, saying what stays queued. Refuses settings that shape keys otherwise
/// than those the state dir last delivered with, unless `accept_settings`.
pub async fn sync_once(
    config: Config,
    force: bool,
    accept_settings: bool,
    timeout: Duration,
) -> Result<(), Fatal> {
    let started = tokio::time::Instant::now();
    let parts = assemble(&config, force, SYNC_REMINDER).await?;
    remember_settings(&config, &parts, !accept_settings).await?;
    let telemetry = parts.telemetry.clone();
    let outbox = parts.outbox.clone();
    let summary = |pending: i64| {
        let (delivered, unchanged, skipped, refused) = telemetry.totals();
        let sent = if config.dry_run {
            "printed"
        } else {
            "delivered"
        };
        format!(
            "{delivered} {sent}, {unchanged} unchanged (already delivered or queued), {skipped} container{} skipped, {refused} refused (deploytrack queue dead), {pending} still queued",
            if skipped == 1 { "" } else { "s" }
        )
    };
    let work = async {
        let (events_tx, events_rx) = mpsc::channel(1);
        let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<Fatal>();
        let _ = events_tx.try_send(EngineEvent::Connected);
        // One listing: nothing holds the channel open for a retry.
        let retry = events_tx.downgrade();
        drop(events_tx);
        parts.observer.run(events_rx, retry, fatal_tx).await;
        if let Ok(fatal) = fatal_rx.try_recv() {
            return Err(fatal);
        }
        parts.outbox.flush().await?;
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        parts
            .dispatcher
            .run(shutdown_rx, Duration::ZERO, true)
            .await
            .map_err(Fatal::Delivery)
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(remaining, work).await {
        Ok(Ok(())) => {
            let pending = outbox.stats().await.map(|s| s.pending).unwrap_or(-1);
            tracing::info!("sync finished: {}", summary(pending));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let pending = outbox.stats().await.map(|s| s.pending).unwrap_or(-1);
            Err(Fatal::SyncGaveUp {
                after: humantime::format_duration(timeout).to_string(),
                summary: summary(pending),
            })
        }
    }
}

/// SIGTERM or SIGINT. SIGHUP (whose default would end the process abruptly) is answered
/// with a log line: the configuration is not reloaded, a restart re-reads it.
pub async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => tracing::warn!(
                "SIGHUP ignored: the configuration is not reloaded; restart deploytrack to apply changes (nothing is lost or re-sent)"
            ),
        }
    }
}

/// Ping systemd's watchdog only while the loops are alive: the dispatcher and the reader go
/// round at least every 30 s, and the queue thread must answer.
async fn systemd_watchdog(telemetry: Arc<Telemetry>, outbox: Outbox) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    let stale_ms = (Duration::from_micros(usec).as_millis() as i64).max(75_000);
    loop {
        tokio::time::sleep(interval).await;
        let queue_alive = tokio::time::timeout(Duration::from_secs(5), outbox.stats())
            .await
            .is_ok_and(|r| r.is_ok());
        if queue_alive && telemetry.stalest_loop_ms() < stale_ms {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "a loop is stuck; withholding the watchdog ping so systemd restarts the agent"
            );
        }
    }
}
