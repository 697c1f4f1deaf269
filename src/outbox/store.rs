//! The queue thread: it owns the connection, applies commands in order, and group-commits
//! the writes (see the module docs of `outbox`).

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use super::schema::{next_version, pending_row, write_evidence, NOT_SUPERSEDED, SETTINGS};
use super::{Batch, EnqueueOutcome, Error, Pending, Settle, Stats};
use crate::clock::now_ms;
use crate::deployment::{Deployment, DeploymentKey};
use crate::evidence::Change;
use crate::telemetry::Telemetry;

/// While changes keep arriving, commit (and sync) at most this often...
const COMMIT_WINDOW: Duration = Duration::from_secs(1);
/// ...unless this many changes are waiting: a flood is committed in slices of this size...
const COMMIT_BATCH: usize = 1024;
/// ...or nothing more arrived for this long: the end of a flood is not held back.
const COMMIT_IDLE: Duration = Duration::from_millis(250);

pub(super) type Reply<T> = oneshot::Sender<Result<T, Error>>;
/// A reply held back until the transaction it depends on is committed.
pub(super) type AfterCommit = Box<dyn FnOnce(Result<(), Error>) + Send>;

pub(super) enum Command {
    Enqueue(Batch, Reply<EnqueueOutcome>),
    Settle(DeploymentKey, i64, Settle),
    Due {
        limit: usize,
        due_only: bool,
        reply: Reply<(Vec<Pending>, Option<i64>)>,
    },
    ResetBackoff,
    /// What the evidence tables remember changed (see `crate::evidence`).
    Evidence(Vec<Change>),
    /// The settings that shape keys, as JSON (see `crate::key_settings`).
    Settings(String, Reply<()>),
    Stats(Reply<Stats>),
    Flush(Reply<()>),
}

impl Command {
    /// Commands that change the file (and so need the write transaction).
    fn writes(&self) -> bool {
        matches!(
            self,
            Command::Enqueue(..)
                | Command::Settle(..)
                | Command::ResetBackoff
                | Command::Evidence(..)
                | Command::Settings(..)
        )
    }
}

/// The queue thread's state.
pub(super) struct Store {
    conn: Connection,
    max_entries: u64,
    pending: i64,
    next_version: i64,
    telemetry: Arc<Telemetry>,
    /// Counted into the metrics once committed.
    uncommitted: EnqueueOutcome,
    /// Rows changed in the open transaction.
    changes: usize,
    /// `PRAGMA data_version` when the counts were last read: another connection (an
    /// operator's `queue retry` or `purge`) that commits changes it.
    data_version: i64,
    last_prune: Instant,
}

/// `delivered` remembers what the endpoint has, so a restart re-sends nothing. A key that
/// no container has run under for this long is forgotten: should it run again, it is sent
/// again (harmless: the API is idempotent).
const DELIVERED_KEPT_MS: i64 = 30 * 24 * 3600 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

impl Store {
    pub(super) fn new(
        conn: Connection,
        max_entries: u64,
        telemetry: Arc<Telemetry>,
    ) -> rusqlite::Result<Self> {
        // A restart is a natural moment to try everything again.
        conn.execute("UPDATE pending SET next_attempt_ms = 0", [])?;
        let pruned = prune_delivered(&conn, now_ms())?;
        if pruned > 0 {
            tracing::info!(
                keys = pruned,
                "forgot what was delivered for names no container has run under for 30 days"
            );
        }
        let mut store = Store {
            conn,
            max_entries,
            pending: 0,
            next_version: 1,
            telemetry,
            uncommitted: EnqueueOutcome::default(),
            changes: 0,
            data_version: -1,
            last_prune: Instant::now(),
        };
        store.reread_counts()?;
        Ok(store)
    }

    /// The pending count and the next version, from the file: at start, and whenever another
    /// connection committed since they were last read. Versions come from one sequence that
    /// the operator commands share (`meta.next_version`), so a report they put back never
    /// takes the version of one the agent queues.
    fn reread_counts(&mut self) -> rusqlite::Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version == self.data_version {
            return Ok(());
        }
        self.data_version = version;
        self.pending = self
            .conn
            .query_row("SELECT count(*) FROM pending", [], |r| r.get(0))?;
        self.next_version = self.next_version.max(next_version(&self.conn)?);
        self.telemetry.queue_depth(self.pending);
        Ok(())
    }

    pub(super) fn serve(&mut self, rx: std_mpsc::Receiver<Command>, work: &Notify) {
        let mut last_commit = Instant::now() - COMMIT_WINDOW;
        let mut last_change = Instant::now();
        // A write transaction is open (reads run inside it when there is one, else alone).
        let mut open = false;
        let mut waiting: Vec<AfterCommit> = Vec::new();
        loop {
            let command = if open {
                let deadline = (last_commit + COMMIT_WINDOW).min(last_change + COMMIT_IDLE);
                let wait = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(c) => Some(c),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        self.commit(&mut waiting);
                        return;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            let Some(command) = command else {
                self.commit(&mut waiting);
                open = false;
                last_commit = Instant::now();
                continue;
            };
            let mut added_work = false;
            let mut wrote = false;
            // This command and whatever else is already waiting, in one transaction.
            let mut next = Some(command);
            while let Some(command) = next.take() {
                if command.writes() && !open {
                    if let Err(e) = self
                        .conn
                        .execute_batch("BEGIN IMMEDIATE")
                        .and_then(|()| self.reread_counts())
                    {
                        tracing::error!(error = %e, "cannot start a queue transaction");
                        if !self.conn.is_autocommit() {
                            let _ = self.conn.execute_batch("ROLLBACK");
                        }
                        fail(command, &Arc::new(e));
                        next = rx.try_recv().ok();
                        continue;
                    }
                    open = true;
                }
                wrote |= command.writes();
                added_work |= self.apply(command, &mut waiting, open);
                // SQLite rolls the whole transaction back by itself on some errors (a full
                // disk, an I/O error): what it held is lost, and so are its waiting replies.
                if open && self.conn.is_autocommit() {
                    self.lost_transaction(&mut waiting);
                    open = false;
                    last_commit = Instant::now();
                }
                next = rx.try_recv().ok();
            }
            if added_work {
                work.notify_one();
            }
            if wrote {
                last_change = Instant::now();
            }
            if open && (last_commit.elapsed() >= COMMIT_WINDOW || self.changes >= COMMIT_BATCH) {
                self.commit(&mut waiting);
                open = false;
                last_commit = Instant::now();
            }
        }
    }

    /// The open transaction is gone (SQLite rolled it back): fail every write that waited
    /// for its commit, and read the counts again.
    fn lost_transaction(&mut self, waiting: &mut Vec<AfterCommit>) {
        tracing::error!("the queue database rolled back a transaction (a full disk or an I/O error); its writes are reported as failed");
        self.uncommitted = EnqueueOutcome::default();
        self.changes = 0;
        self.data_version = -1;
        if let Err(e) = self.reread_counts() {
            tracing::error!(error = %e, "cannot read the queue's counts");
        }
        for reply in waiting.drain(..) {
            reply(Err(Error::RolledBack));
        }
    }

    fn commit(&mut self, waiting: &mut Vec<AfterCommit>) {
        let result = self.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            // The in-memory count may be off after a rollback; re-read it.
            if let Ok(n) = self
                .conn
                .query_row("SELECT count(*) FROM pending", [], |r| r.get(0))
            {
                self.pending = n;
            }
            tracing::error!(error = %e, "cannot commit to the queue database");
            Arc::new(e)
        });
        let counts = std::mem::take(&mut self.uncommitted);
        self.changes = 0;
        if result.is_ok() && self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            if let Err(e) = prune_delivered(&self.conn, now_ms()) {
                tracing::warn!(error = %e, "cannot prune what was delivered");
            }
        }
        if result.is_ok() {
            self.telemetry.queue_commit();
            self.telemetry
                .reports_enqueued(counts.queued as u64, counts.unchanged as u64);
            self.telemetry.reports_dropped(counts.dropped as u64);
        }
        self.telemetry.queue_depth(self.pending);
        if counts.dropped > 0 {
            tracing::warn!(
                dropped = counts.dropped,
                max_entries = self.max_entries,
                "the queue is full: dropped the oldest pending reports"
            );
        }
        for reply in waiting.drain(..) {
            reply(result.clone().map_err(Error::Database));
        }
    }

    /// Run a write as a whole or not at all: inside a savepoint, rolled back to it on an
    /// error, with the in-memory counts restored. (When SQLite rolled the whole transaction
    /// back by itself, the caller sees it and fails what waited for the commit.)
    fn atomically<T>(
        &mut self,
        write: impl FnOnce(&mut Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let saved = (
            self.pending,
            self.next_version,
            self.uncommitted,
            self.changes,
        );
        self.conn.execute_batch("SAVEPOINT command")?;
        match write(self) {
            Ok(value) => {
                self.conn.execute_batch("RELEASE command")?;
                Ok(value)
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self
                        .conn
                        .execute_batch("ROLLBACK TO command; RELEASE command");
                }
                (
                    self.pending,
                    self.next_version,
                    self.uncommitted,
                    self.changes,
                ) = saved;
                Err(e)
            }
        }
    }

    /// Apply one command inside the open transaction. Returns true if it added work.
    fn apply(&mut self, command: Command, waiting: &mut Vec<AfterCommit>, open: bool) -> bool {
        match command {
            Command::Enqueue(batch, reply) => match self.atomically(|s| s.enqueue(batch)) {
                Ok(outcome) => {
                    let added = outcome.queued > 0;
                    waiting.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| outcome));
                    }));
                    added
                }
                Err(e) => {
                    let _ = reply.send(Err(Error::Database(Arc::new(e))));
                    false
                }
            },
            Command::Settle(key, version, settle) => {
                if let Err(e) = self.atomically(|s| s.settle(&key, version, settle)) {
                    tracing::error!(key = %key, error = %e, "cannot record a delivery result");
                }
                false
            }
            Command::Due {
                limit,
                due_only,
                reply,
            } => {
                let _ = reply.send(
                    self.due(limit, due_only)
                        .map_err(|e| Error::Database(Arc::new(e))),
                );
                false
            }
            Command::ResetBackoff => {
                // Reports that failed only a few times failed with the endpoint; those that
                // keep failing keep their own backoff.
                if let Err(e) = self.conn.execute(
                    "UPDATE pending SET next_attempt_ms = 0 WHERE attempts < 3",
                    [],
                ) {
                    tracing::error!(error = %e, "cannot reset retry times");
                }
                true
            }
            Command::Evidence(changes) => {
                match self.atomically(|s| write_evidence(&s.conn, &changes)) {
                    Ok(n) => self.changes += n,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record what shows which registry holds an image")
                    }
                }
                false
            }
            Command::Settings(json, reply) => {
                match self.atomically(|s| s.write_meta(SETTINGS, &json)) {
                    Ok(()) => {
                        self.changes += 1;
                        waiting.push(Box::new(move |r| {
                            let _ = reply.send(r);
                        }));
                    }
                    Err(e) => drop(reply.send(Err(Error::Database(Arc::new(e))))),
                }
                false
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats().map_err(|e| Error::Database(Arc::new(e))));
                false
            }
            Command::Flush(reply) if open => {
                waiting.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
                false
            }
            Command::Flush(reply) => {
                let _ = reply.send(Ok(()));
                false
            }
        }
    }

    fn enqueue(&mut self, batch: Batch) -> rusqlite::Result<EnqueueOutcome> {
        let mut outcome = EnqueueOutcome::default();
        let now = now_ms();
        let latest = last_of_each_key(&batch.reports);
        outcome.unchanged += batch.reports.len() - latest.len();
        for d in latest {
            if self.write_report(d, batch.force, now)? {
                outcome.queued += 1;
            } else {
                outcome.unchanged += 1;
            }
        }
        self.write_running_view(&batch.running, &batch.gone)?;
        if outcome.queued > 0 {
            self.write_meta("next_version", &self.next_version.to_string())?;
        }
        if let Some(cursor) = &batch.cursor {
            self.write_meta("cursor", cursor)?;
        }
        outcome.dropped = self.drop_over_bound()?;
        self.uncommitted.queued += outcome.queued;
        self.uncommitted.unchanged += outcome.unchanged;
        self.uncommitted.dropped += outcome.dropped;
        Ok(outcome)
    }

    /// Queue one report, unless the same report already waits, or was the last the endpoint
    /// answered for its key: delivered, or refused and not superseded since (a refusal is
    /// not asked again by each reconciliation; `queue retry` sends it again). `force` queues
    /// it regardless. Returns whether it was queued.
    fn write_report(&mut self, d: &Deployment, force: bool, now: i64) -> rusqlite::Result<bool> {
        let body = d.report_body();
        let pending: Option<String> = self
            .conn
            .prepare_cached("SELECT body FROM pending WHERE environment = ?1 AND name = ?2")?
            .query_row(params![d.key.environment, d.key.name], |r| r.get(0))
            .optional()?;
        // Unchanged is what the receiver keeps, not the bytes: a release that adds a field
        // re-sends nothing (`Deployment::unchanged_from`).
        let unchanged = !force
            && match &pending {
                Some(p) => d.unchanged_from(p),
                None => self
                    .last_answered(&d.key)?
                    .is_some_and(|sent| d.unchanged_from(&sent)),
            };
        if unchanged {
            return Ok(false);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO pending (environment, name, body, version, enqueued_ms, attempts, next_attempt_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)
                 ON CONFLICT (environment, name) DO UPDATE SET
                   body = excluded.body, version = excluded.version, enqueued_ms = excluded.enqueued_ms,
                   attempts = 0, next_attempt_ms = 0, last_error = NULL",
            )?
            .execute(params![d.key.environment, d.key.name, body, self.next_version, now])?;
        self.next_version += 1;
        if pending.is_none() {
            self.pending += 1;
        }
        tracing::debug!(key = %d.key, image = %d.image_url, "deployment queued");
        self.changes += 1;
        Ok(true)
    }

    /// The body of the last report for `key` that the endpoint answered: its newest dead
    /// letter not superseded by a delivery, else the last delivered.
    fn last_answered(&self, key: &DeploymentKey) -> rusqlite::Result<Option<String>> {
        let refused: Option<String> = self
            .conn
            .prepare_cached(&format!(
                "SELECT body FROM dead WHERE environment = ?1 AND name = ?2 AND {NOT_SUPERSEDED}
                 ORDER BY failed_ms DESC, id DESC LIMIT 1"
            ))?
            .query_row(params![key.environment, key.name], |r| r.get(0))
            .optional()?;
        if refused.is_some() {
            return Ok(refused);
        }
        self.conn
            .prepare_cached("SELECT body FROM delivered WHERE environment = ?1 AND name = ?2")?
            .query_row(params![key.environment, key.name], |r| r.get(0))
            .optional()
    }

    /// The view of running containers that a restart reconciles against.
    fn write_running_view(
        &self,
        running: &[(String, Deployment)],
        gone: &[String],
    ) -> rusqlite::Result<()> {
        for (id, d) in running {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO running (container_id, environment, name, body) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, d.key.environment, d.key.name, d.report_body()])?;
        }
        for id in gone {
            self.conn
                .prepare_cached("DELETE FROM running WHERE container_id = ?1")?
                .execute([id])?;
        }
        Ok(())
    }

    fn write_meta(&self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute([key, value])?;
        Ok(())
    }

    /// Past `max_entries`, the oldest pending reports go. Returns how many.
    fn drop_over_bound(&mut self) -> rusqlite::Result<usize> {
        let excess = self.pending - self.max_entries as i64;
        if excess <= 0 {
            return Ok(0);
        }
        let dropped = self.conn.execute(
            "DELETE FROM pending WHERE version IN (SELECT version FROM pending ORDER BY version LIMIT ?1)",
            [excess],
        )?;
        self.pending -= dropped as i64;
        Ok(dropped)
    }

    fn settle(
        &mut self,
        key: &DeploymentKey,
        version: i64,
        settle: Settle,
    ) -> rusqlite::Result<()> {
        self.changes += 1;
        match settle {
            Settle::Delivered { status } => {
                if let Some(body) = self.take_pending(key, version)? {
                    self.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO delivered (environment, name, body, delivered_ms, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![key.environment, key.name, body, now_ms(), status])?;
                }
            }
            Settle::RetryAt {
                next_attempt_ms,
                error,
            } => {
                self.conn
                    .prepare_cached(
                        "UPDATE pending SET attempts = attempts + 1, next_attempt_ms = ?4, last_error = ?5
                         WHERE environment = ?1 AND name = ?2 AND version = ?3",
                    )?
                    .execute(params![key.environment, key.name, version, next_attempt_ms, error])?;
            }
            Settle::Dead { status, response } => {
                if let Some(body) = self.take_pending(key, version)? {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO dead (environment, name, body, status, response, failed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![key.environment, key.name, body, status, response, now_ms()])?;
                }
            }
        }
        Ok(())
    }

    /// Remove this version of the key's report from `pending`; its body, unless a newer
    /// report replaced it meanwhile.
    fn take_pending(
        &mut self,
        key: &DeploymentKey,
        version: i64,
    ) -> rusqlite::Result<Option<String>> {
        let body: Option<String> = self
            .conn
            .prepare_cached(
                "DELETE FROM pending WHERE environment = ?1 AND name = ?2 AND version = ?3 RETURNING body",
            )?
            .query_row(params![key.environment, key.name, version], |r| r.get(0))
            .optional()?;
        if body.is_some() {
            self.pending -= 1;
        }
        Ok(body)
    }

    fn due(
        &mut self,
        limit: usize,
        due_only: bool,
    ) -> rusqlite::Result<(Vec<Pending>, Option<i64>)> {
        self.reread_counts()?;
        let now = now_ms();
        let horizon = if due_only { now } else { i64::MAX };
        let mut stmt = self.conn.prepare_cached(
            "SELECT environment, name, body, version, attempts, next_attempt_ms, enqueued_ms, last_error
             FROM pending WHERE next_attempt_ms <= ?1 ORDER BY next_attempt_ms, version LIMIT ?2",
        )?;
        let items = stmt
            .query_map(params![horizon, limit as i64], pending_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next: Option<i64> = self
            .conn
            .prepare_cached("SELECT min(next_attempt_ms) FROM pending WHERE next_attempt_ms > ?1")?
            .query_row([now], |r| r.get(0))?;
        Ok((items, next))
    }

    fn stats(&mut self) -> rusqlite::Result<Stats> {
        self.reread_counts()?;
        let dead: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM dead WHERE {NOT_SUPERSEDED}"),
            [],
            |r| r.get(0),
        )?;
        let oldest: Option<i64> =
            self.conn
                .query_row("SELECT min(enqueued_ms) FROM pending", [], |r| r.get(0))?;
        let last_error: Option<String> = self
            .conn
            .query_row(
                "SELECT last_error FROM pending WHERE last_error IS NOT NULL
                 ORDER BY next_attempt_ms DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(Stats {
            pending: self.pending,
            dead,
            oldest_pending_ms: oldest,
            last_error,
        })
    }
}

/// Forget what was delivered for keys that no container in the view runs under and that
/// were last delivered over `DELIVERED_KEPT_MS` ago. Returns how many were forgotten.
pub(super) fn prune_delivered(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM delivered WHERE delivered_ms < ?1 AND NOT EXISTS
           (SELECT 1 FROM running r WHERE r.environment = delivered.environment AND r.name = delivered.name)",
        [now - DELIVERED_KEPT_MS],
    )
}

/// Answer a command that could not start its transaction with the SQLite error.
fn fail(command: Command, error: &Arc<rusqlite::Error>) {
    let e = Error::Database(error.clone());
    match command {
        Command::Enqueue(_, r) => drop(r.send(Err(e))),
        Command::Due { reply, .. } => drop(reply.send(Err(e))),
        Command::Stats(r) => drop(r.send(Err(e))),
        Command::Flush(r) | Command::Settings(_, r) => drop(r.send(Err(e))),
        Command::Settle(..) | Command::ResetBackoff | Command::Evidence(..) => {}
    }
}

/// Within one batch the last report of a key wins; keys keep the order they first came in.
fn last_of_each_key(reports: &[Deployment]) -> Vec<&Deployment> {
    let mut latest: Vec<&Deployment> = Vec::with_capacity(reports.len());
    let mut index: HashMap<&DeploymentKey, usize> = HashMap::new();
    for d in reports {
        match index.get(&d.key) {
            Some(&i) => latest[i] = d,
            None => {
                index.insert(&d.key, latest.len());
                latest.push(d);
            }
        }
    }
    latest
}
