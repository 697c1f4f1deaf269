//! The persistent queue between resolving a deployment and delivering it.
//!
//! SQLite (bundled) in WAL mode with `synchronous=FULL`: a report is on disk before the agent
//! treats it as queued, operators can read the file with the stock `sqlite3` tool, and the
//! crash semantics are the best documented of the embedded stores.
//!
//! One thread owns the connection and applies commands in order. Writes are group-committed:
//! an isolated change commits at once, but while changes keep arriving the thread commits
//! once per `COMMIT_WINDOW`, per `COMMIT_BATCH` changes, or when they stop for `COMMIT_IDLE`,
//! so a burst of hundreds of starts costs a handful of syncs.
//! A write's reply is sent only after its commit; reads answer at once and see every
//! earlier command, committed or not. So the dispatcher may send a report before its commit:
//! that costs nothing in safety, because the event cursor commits in the same transaction
//! as the report, and after a crash the engine replays and reconciles whatever the disk lacks.
//!
//! This file is the handle the agent talks to. The rest, one job a file: `file` (the state
//! dir, its lock, file modes and owners, a damaged file moved aside), `schema` (tables and
//! migrations), `store` (the queue thread: group commit, savepoints, SQL) and `operator`
//! (the `deploytrack queue` commands, on their own connection).

mod file;
pub mod operator;
mod schema;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use crate::deployment::{Deployment, DeploymentKey};
use crate::evidence::{Change, Held, Refused};
use crate::key_settings::KeySettings;
use crate::telemetry::Telemetry;

pub use file::open_file;
use store::{Command, Reply, Store};

pub const DB_FILE: &str = "deploytrack.db";

/// Why the queue could not be opened, or could not answer a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("queue database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the queue is closed")]
    Closed,
    #[error("another deploytrack process is using the state directory {0}")]
    Locked(PathBuf),
    #[error("{0}")]
    Unwritable(String),
    /// A command of the queue thread failed in SQLite. Shared: one failed commit answers
    /// every write that waited for it.
    #[error("{0}")]
    Database(Arc<rusqlite::Error>),
    /// SQLite rolled the open transaction back by itself (a full disk, an I/O error): the
    /// writes that waited for its commit are lost.
    #[error("the queue database rolled the write back")]
    RolledBack,
}

/// A report waiting for delivery. `version` tells a resend of this report from a newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub key: DeploymentKey,
    pub body: String,
    pub version: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub enqueued_ms: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: DeploymentKey,
    pub body: String,
    pub status: u16,
    pub response: String,
    pub failed_ms: i64,
}

/// One step of the observer: new reports, changes to the view of running containers, and the
/// event cursor, committed together so a restart resumes exactly where the disk says.
#[derive(Debug, Default)]
pub struct Batch {
    pub reports: Vec<Deployment>,
    pub running: Vec<(String, Deployment)>,
    pub gone: Vec<String>,
    /// Where the event source stands, in its own encoding: the queue stores it as it is.
    pub cursor: Option<String>,
    /// Re-send even what the endpoint already has (`sync --force`).
    pub force: bool,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
            && self.running.is_empty()
            && self.gone.is_empty()
            && self.cursor.is_none()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueOutcome {
    pub queued: usize,
    pub unchanged: usize,
    pub dropped: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub pending: i64,
    /// Dead letters not superseded by a later delivery of their key.
    pub dead: i64,
    pub oldest_pending_ms: Option<i64>,
    /// The most recent failure recorded on a pending report.
    pub last_error: Option<String>,
}

/// The last report delivered for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub key: DeploymentKey,
    pub body: String,
    pub delivered_ms: i64,
    /// The endpoint's status; none for reports delivered before it was recorded.
    pub status: Option<u16>,
}

/// What a delivery attempt came to, as the queue records it.
#[derive(Debug)]
pub enum Settle {
    Delivered { status: u16 },
    RetryAt { next_attempt_ms: i64, error: String },
    Dead { status: u16, response: String },
}

/// What was found on disk when the queue opened.
#[derive(Debug, Default)]
pub struct Restored {
    /// The event source's position, as it was handed over in a `Batch`.
    pub cursor: Option<String>,
    pub running: Vec<(String, DeploymentKey, String)>,
    /// What shows which repository holds which digest (see `crate::evidence`).
    pub evidence: Vec<Held>,
    pub refusals: Vec<(String, Refused)>,
    /// The settings that shape keys, as the state dir last delivered with them (none in a
    /// new queue, or one an earlier release wrote).
    pub settings: Option<KeySettings>,
    /// Set when a damaged file was moved aside: (damaged, moved to).
    pub moved_aside: Option<(PathBuf, PathBuf)>,
}

/// The evidence and the refusals a queue file remembers.
pub type Remembered = (Vec<Held>, Vec<(String, Refused)>);

/// What the queue file in `state_dir` remembers of which repository holds which digest, read
/// without taking the agent's lock (for `check`, beside a running agent). Empty when there
/// is no queue yet.
pub fn evidence_in(state_dir: &Path) -> rusqlite::Result<Remembered> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let has = |table: &str| -> rusqlite::Result<bool> {
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([table])
    };
    let held = if has("evidence")? {
        schema::read_evidence(&conn)?
    } else {
        Vec::new()
    };
    let refused = if has("refusals")? {
        schema::read_refusals(&conn)?
    } else {
        Vec::new()
    };
    Ok((held, refused))
}

/// The settings the queue file in `state_dir` remembers, read without taking the agent's
/// lock (for `check`). None when there is no queue, or it remembers none.
pub fn settings_in(state_dir: &Path) -> rusqlite::Result<Option<KeySettings>> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let has_meta = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")?
        .exists([])?;
    if !has_meta {
        return Ok(None);
    }
    Ok(schema::read_meta(&conn, schema::SETTINGS)?
        .as_deref()
        .and_then(KeySettings::from_json))
}

/// Handle to the queue thread; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: std_mpsc::Sender<Command>,
    /// Signalled whenever a command added work for the dispatcher.
    pub work: Arc<Notify>,
}

impl Outbox {
    /// Open `state_dir/deploytrack.db` (or an in-memory queue for `None`). A damaged file is
    /// moved aside and a fresh queue started, so a bad disk block never becomes a crash loop.
    pub fn open(
        state_dir: Option<&Path>,
        max_entries: u64,
        telemetry: Arc<Telemetry>,
    ) -> Result<(Outbox, Restored), Error> {
        let opened = match state_dir {
            None => file::Opened::memory()?,
            Some(dir) => file::Opened::state_dir(dir)?,
        };
        let label = opened.label.clone();
        let sql_err = |source| Error::Sqlite {
            path: label.clone(),
            source,
        };
        let restored = Restored {
            cursor: schema::read_meta(&opened.conn, "cursor").map_err(sql_err)?,
            running: schema::read_running(&opened.conn).map_err(sql_err)?,
            evidence: schema::read_evidence(&opened.conn).map_err(sql_err)?,
            refusals: schema::read_refusals(&opened.conn).map_err(sql_err)?,
            settings: schema::read_meta(&opened.conn, schema::SETTINGS)
                .map_err(sql_err)?
                .as_deref()
                .and_then(KeySettings::from_json),
            moved_aside: opened.moved_aside,
        };
        let store = Store::new(opened.conn, max_entries, telemetry).map_err(sql_err)?;
        let (tx, rx) = std_mpsc::channel();
        let work = Arc::new(Notify::new());
        let notify = work.clone();
        let lock = opened.lock;
        std::thread::Builder::new()
            .name("deploytrack-outbox".into())
            .spawn(move || {
                // The state dir stays locked for as long as the queue thread runs, and until
                // its connection is closed, so that the next agent never opens the file
                // while this connection still closes it: locals drop in reverse order, so
                // `store` (the connection) goes before `_lock`.
                let _lock = lock;
                let mut store = store;
                store.serve(rx, &notify)
            })
            .map_err(|source| Error::StateDir {
                path: PathBuf::from(&label),
                source,
            })?;
        Ok((Outbox { tx, work }, restored))
    }

    /// Send a command now (so commands reach the queue thread in the order they are made)
    /// and return the wait for its reply.
    fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> impl std::future::Future<Output = Result<T, Error>> + Send + 'static
    where
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(make(reply)).is_ok();
        async move {
            if !sent {
                return Err(Error::Closed);
            }
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// Queue a batch. The batch is handed to the queue thread at once; the returned future
    /// completes when it is on disk.
    pub fn enqueue(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<EnqueueOutcome, Error>> + Send + 'static {
        self.ask(|r| Command::Enqueue(batch, r))
    }

    /// Record a delivery attempt's result. Not awaited: a crash before the commit only means
    /// the report is sent once more, which the API tolerates.
    pub fn settle(&self, key: DeploymentKey, version: i64, settle: Settle) {
        let _ = self.tx.send(Command::Settle(key, version, settle));
    }

    /// Up to `limit` reports, the most overdue first, and the time the next one falls due.
    /// With `due_only` false, reports not yet due count too (a probe while the endpoint is down).
    pub async fn due(
        &self,
        limit: usize,
        due_only: bool,
    ) -> Result<(Vec<Pending>, Option<i64>), Error> {
        self.ask(|reply| Command::Due {
            limit,
            due_only,
            reply,
        })
        .await
    }

    /// Everything waiting becomes due now (the endpoint is back), but for reports that
    /// failed repeatedly on their own.
    pub fn reset_backoff(&self) {
        let _ = self.tx.send(Command::ResetBackoff);
    }

    /// Record changes to what shows which repository holds which digest. Not awaited: it
    /// commits with the reports queued after it.
    pub fn remember(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            let _ = self.tx.send(Command::Evidence(changes));
        }
    }

    /// Remember the settings that shape keys (see `crate::key_settings`); the returned future
    /// completes when they are on disk.
    pub fn remember_settings(
        &self,
        settings: &KeySettings,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static {
        let json = settings.to_json();
        self.ask(|reply| Command::Settings(json, reply))
    }

    pub async fn stats(&self) -> Result<Stats, Error> {
        self.ask(Command::Stats).await
    }

    /// Returns once every earlier command is committed.
    pub async fn flush(&self) -> Result<(), Error> {
        self.ask(Command::Flush).await
    }
}
