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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use crate::clock::now_ms;
use crate::deployment::{Deployment, DeploymentKey};
use crate::engine::events::EventCursor;
use crate::telemetry::Telemetry;

pub const DB_FILE: &str = "deploytrack.db";
/// While changes keep arriving, commit (and sync) at most this often...
const COMMIT_WINDOW: Duration = Duration::from_secs(1);
/// ...unless this many changes are waiting: a flood is committed in slices of this size...
const COMMIT_BATCH: usize = 1024;
/// ...or nothing more arrived for this long: the end of a flood is not held back.
const COMMIT_IDLE: Duration = Duration::from_millis(250);
/// 1: the first release. 2: `delivered.status`, the endpoint's answer (null in rows
/// written before it).
const SCHEMA_VERSION: i64 = 2;
/// A dead letter is superseded once its key was delivered after it failed: the endpoint has
/// a newer state of that key, so the dead letter is no longer pending work.
const NOT_SUPERSEDED: &str = "NOT EXISTS (SELECT 1 FROM delivered
    WHERE delivered.environment = dead.environment AND delivered.name = dead.name
      AND delivered.delivered_ms >= dead.failed_ms)";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
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
    pub cursor: Option<EventCursor>,
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

type Reply<T> = oneshot::Sender<Result<T, String>>;
/// A reply held back until the transaction it depends on is committed.
type AfterCommit = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Command {
    Enqueue(Batch, Reply<EnqueueOutcome>),
    Settle(DeploymentKey, i64, Settle),
    Due {
        limit: usize,
        due_only: bool,
        reply: Reply<(Vec<Pending>, Option<i64>)>,
    },
    ResetBackoff,
    Stats(Reply<Stats>),
    Flush(Reply<()>),
}

impl Command {
    /// Commands that change the file (and so need the write transaction).
    fn writes(&self) -> bool {
        matches!(
            self,
            Command::Enqueue(..) | Command::Settle(..) | Command::ResetBackoff
        )
    }
}

/// What was found on disk when the queue opened.
#[derive(Debug, Default)]
pub struct Restored {
    pub cursor: Option<EventCursor>,
    pub running: Vec<(String, DeploymentKey, String)>,
    /// Set when a damaged file was moved aside: (damaged, moved to).
    pub moved_aside: Option<(PathBuf, PathBuf)>,
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
    ) -> Result<(Outbox, Restored), OutboxError> {
        let mut lock = None;
        let (conn, moved_aside, label) = match state_dir {
            None => (open_memory()?, None, ":memory:".to_string()),
            Some(dir) => {
                make_private_dir(dir).map_err(|source| OutboxError::StateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let path = dir.join(DB_FILE);
                if !writable(&path) {
                    return Err(OutboxError::Unwritable(unwritable_message(
                        dir,
                        &path,
                        "permission denied",
                    )));
                }
                lock = Some(lock_state_dir(dir)?);
                // Not fatal: a file that cannot be opened is dealt with below.
                if let Err(e) = make_private_file(&path) {
                    tracing::debug!(error = %e, path = %path.display(), "cannot set the queue file's mode");
                }
                let label = path.display().to_string();
                match open_file(&path) {
                    Ok(conn) => {
                        take_dir_owner(dir, &path);
                        (conn, None, label)
                    }
                    Err(e) if is_unwritable(&e) => {
                        return Err(OutboxError::Unwritable(unwritable_message(
                            dir,
                            &path,
                            &e.to_string(),
                        )))
                    }
                    Err(e) if path.exists() && is_damage(&e) => {
                        let aside = move_aside(&path).map_err(|source| OutboxError::StateDir {
                            path: path.clone(),
                            source,
                        })?;
                        tracing::error!(error = %e, "the queue database is damaged");
                        make_private_file(&path).map_err(|source| OutboxError::StateDir {
                            path: path.clone(),
                            source,
                        })?;
                        let conn = open_file(&path).map_err(|source| OutboxError::Sqlite {
                            path: label.clone(),
                            source,
                        })?;
                        (conn, Some((path, aside)), label)
                    }
                    Err(source) => {
                        return Err(OutboxError::Sqlite {
                            path: label,
                            source,
                        })
                    }
                }
            }
        };
        let sql_err = |source| OutboxError::Sqlite {
            path: label.clone(),
            source,
        };
        let restored = Restored {
            cursor: read_meta(&conn, "cursor")
                .map_err(sql_err)?
                .and_then(|c| EventCursor::decode(&c)),
            running: read_running(&conn).map_err(sql_err)?,
            moved_aside,
        };
        let mut store = Store::new(conn, max_entries, telemetry).map_err(sql_err)?;
        let (tx, rx) = std_mpsc::channel();
        let work = Arc::new(Notify::new());
        let notify = work.clone();
        std::thread::Builder::new()
            .name("deploytrack-outbox".into())
            .spawn(move || {
                // The state dir stays locked for as long as the queue thread runs.
                let _lock = lock;
                store.serve(rx, &notify)
            })
            .map_err(|source| OutboxError::StateDir {
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
    ) -> impl std::future::Future<Output = Result<T, String>> + Send + 'static
    where
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(make(reply)).is_ok();
        async move {
            if !sent {
                return Err(OutboxError::Closed.to_string());
            }
            rx.await.map_err(|_| OutboxError::Closed.to_string())?
        }
    }

    /// Queue a batch. The batch is handed to the queue thread at once; the returned future
    /// completes when it is on disk.
    pub fn enqueue(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<EnqueueOutcome, String>> + Send + 'static {
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
    ) -> Result<(Vec<Pending>, Option<i64>), String> {
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

    pub async fn stats(&self) -> Result<Stats, String> {
        self.ask(Command::Stats).await
    }

    /// Returns once every earlier command is committed.
    pub async fn flush(&self) -> Result<(), String> {
        self.ask(Command::Flush).await
    }
}

/// The state dir holds what runs where on this host: created 0700 (its parents too, when
/// missing). An existing directory keeps its mode (systemd's `StateDirectory=` sets 0700, an
/// operator may have chosen otherwise), but one that others can enter draws a warning.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o007 != 0 {
                tracing::warn!(path = %dir.display(), mode = format_args!("{:o}", meta.permissions().mode() & 0o7777), "the state dir is open to other users; chmod 700 it");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// The queue file is created 0600, before SQLite opens it: SQLite gives its `-wal` and
/// `-shm` files the database file's mode. A queue file others can read is tightened.
fn make_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// One agent per state dir: a second one would deliver the same queue twice over.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, OutboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("deploytrack.lock");
    let file = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OutboxError::StateDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OutboxError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(OutboxError::StateDir { path, source }),
    }
}

fn open_memory() -> Result<Connection, OutboxError> {
    let conn = Connection::open_in_memory().map_err(|source| OutboxError::Sqlite {
        path: ":memory:".into(),
        source,
    })?;
    init_schema(&conn).map_err(|source| OutboxError::Sqlite {
        path: ":memory:".into(),
        source,
    })?;
    Ok(conn)
}

/// Open a queue file for the agent or for an operator command, checking it is sound.
pub fn open_file(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, "the queue database could not switch to WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("integrity check failed: {check}")),
        ));
    }
    init_schema(&conn)?;
    Ok(conn)
}

/// A file SQLite itself finds damaged: not a database, or corrupt. Only such a file is
/// moved aside. Not "busy" (another process holds it), not a full disk, and not a file this
/// user may not open or write: moving those aside would strand what they hold.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// The queue cannot be opened or written by this user (a file left by root, a read-only
/// mount): a fault of the host, not of the file.
fn is_unwritable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::PermissionDenied
                | rusqlite::ErrorCode::ReadOnly
        )
    )
}

/// Whether this process may write `path` and its directory (the WAL and lock files live there).
fn writable(path: &Path) -> bool {
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    let dir_ok = path.parent().is_none_or(access_write);
    let lock = path.with_file_name("deploytrack.lock");
    dir_ok
        && [path.to_path_buf(), side("-wal"), side("-shm"), lock]
            .iter()
            .all(|f| !f.exists() || access_write(f))
}

fn access_write(path: &Path) -> bool {
    std::fs::OpenOptions::new().append(true).open(path).is_ok()
        || (path.is_dir() && {
            let probe = path.join(format!(".deploytrack-probe-{}", std::process::id()));
            let ok = std::fs::write(&probe, b"").is_ok();
            let _ = std::fs::remove_file(&probe);
            ok
        })
}

/// One sentence: the file, its owner, this process's user, and the fix.
fn unwritable_message(dir: &Path, path: &Path, e: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let owner_of = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| user_name(m.uid()))
            .unwrap_or_else(|_| "unknown".into())
    };
    let me = std::fs::metadata("/proc/self")
        .map(|m| user_name(m.uid()))
        .unwrap_or_else(|_| "this user".into());
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    let culprit = [
        path.to_path_buf(),
        side("-wal"),
        side("-shm"),
        dir.join("deploytrack.lock"),
        dir.to_path_buf(),
    ]
    .into_iter()
    .find(|p| p.exists() && !access_write(p))
    .unwrap_or_else(|| path.to_path_buf());
    format!(
        "the queue {} is owned by {}, and this agent runs as {me}, which cannot write it ({e}): nothing was moved aside or lost; run `chown -R {me}: {}` as root and start the agent again",
        culprit.display(),
        owner_of(&culprit),
        dir.display()
    )
}

/// A user id's name from /etc/passwd, else the number.
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id = fields.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// Files the agent creates take the state dir's owner: a `sync --once` run as root must not
/// leave a queue the service's user cannot open. (SQLite itself gives its `-wal` and `-shm`
/// files the database file's owner when it runs as root.)
fn take_dir_owner(dir: &Path, db: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Ok(dir_meta)) = (std::fs::metadata("/proc/self"), std::fs::metadata(dir)) else {
        return;
    };
    if me.uid() != 0 || dir_meta.uid() == 0 {
        return;
    }
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let shm = PathBuf::from(format!("{}-shm", db.display()));
    for file in [db.to_path_buf(), wal, shm, dir.join("deploytrack.lock")] {
        if let Ok(meta) = std::fs::metadata(&file) {
            if meta.uid() != dir_meta.uid() {
                if let Err(e) =
                    std::os::unix::fs::chown(&file, Some(dir_meta.uid()), Some(dir_meta.gid()))
                {
                    tracing::warn!(path = %file.display(), error = %e, "cannot give the file the state dir's owner");
                }
            }
        }
    }
}

/// Rename the file (and its WAL and shared-memory files) to `<file>.damaged-<unix time>`.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    std::fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
        }
    }
    Ok(aside)
}

fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "the queue was written by a newer deploytrack (schema {version}, this one knows {SCHEMA_VERSION})"
            )),
        ));
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS pending (
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            version INTEGER NOT NULL,
            enqueued_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (environment, name)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS pending_due ON pending (next_attempt_ms, version);
        CREATE INDEX IF NOT EXISTS pending_age ON pending (version);
        CREATE TABLE IF NOT EXISTS delivered (
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            delivered_ms INTEGER NOT NULL,
            status INTEGER,
            PRIMARY KEY (environment, name)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS dead (
            id INTEGER PRIMARY KEY,
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            status INTEGER NOT NULL,
            response TEXT NOT NULL,
            failed_ms INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS running (
            container_id TEXT PRIMARY KEY,
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
    )?;
    // Schema 1 to 2: a queue written by an earlier release gains the status column.
    let has_status = conn
        .prepare("SELECT 1 FROM pragma_table_info('delivered') WHERE name = 'status'")?
        .exists([])?;
    if !has_status {
        conn.execute_batch("ALTER TABLE delivered ADD COLUMN status INTEGER")?;
    }
    if version < SCHEMA_VERSION {
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    }
    Ok(())
}

fn read_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn read_running(conn: &Connection) -> rusqlite::Result<Vec<(String, DeploymentKey, String)>> {
    let mut stmt = conn.prepare("SELECT container_id, environment, name, body FROM running")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            DeploymentKey {
                environment: r.get(1)?,
                name: r.get(2)?,
            },
            r.get::<_, String>(3)?,
        ))
    })?;
    rows.collect()
}

/// The queue thread's state.
struct Store {
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
    fn new(
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

    fn serve(&mut self, rx: std_mpsc::Receiver<Command>, work: &Notify) {
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
                        fail(command, &e.to_string());
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
            reply(Err("the queue database rolled the write back".into()));
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
            e.to_string()
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
            reply(result.clone());
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
                    let _ = reply.send(Err(e.to_string()));
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
                let _ = reply.send(self.due(limit, due_only).map_err(|e| e.to_string()));
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
            Command::Stats(reply) => {
                let _ = reply.send(self.stats().map_err(|e| e.to_string()));
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
        // Within one batch the last report of a key wins.
        let mut latest: Vec<&Deployment> = Vec::with_capacity(batch.reports.len());
        let mut index: HashMap<&DeploymentKey, usize> = HashMap::new();
        for d in &batch.reports {
            match index.get(&d.key) {
                Some(&i) => latest[i] = d,
                None => {
                    index.insert(&d.key, latest.len());
                    latest.push(d);
                }
            }
        }
        outcome.unchanged += batch.reports.len() - latest.len();
        for d in latest {
            let body = d.report_body();
            let pending: Option<String> = self
                .conn
                .prepare_cached("SELECT body FROM pending WHERE environment = ?1 AND name = ?2")?
                .query_row(params![d.key.environment, d.key.name], |r| r.get(0))
                .optional()?;
            let unchanged =
                match &pending {
                    Some(p) => *p == body && !batch.force,
                    None => !batch.force
                        && self
                            .conn
                            .prepare_cached(
                                "SELECT body FROM delivered WHERE environment = ?1 AND name = ?2",
                            )?
                            .query_row(params![d.key.environment, d.key.name], |r| {
                                r.get::<_, String>(0)
                            })
                            .optional()?
                            .is_some_and(|delivered| delivered == body),
                };
            if unchanged {
                outcome.unchanged += 1;
                continue;
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
            outcome.queued += 1;
        }
        for (id, d) in &batch.running {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO running (container_id, environment, name, body) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, d.key.environment, d.key.name, d.report_body()])?;
        }
        for id in &batch.gone {
            self.conn
                .prepare_cached("DELETE FROM running WHERE container_id = ?1")?
                .execute([id])?;
        }
        if outcome.queued > 0 {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_version', ?1)",
                )?
                .execute([self.next_version.to_string()])?;
        }
        if let Some(cursor) = &batch.cursor {
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('cursor', ?1)")?
                .execute([cursor.encode()])?;
        }
        let excess = self.pending - self.max_entries as i64;
        if excess > 0 {
            let dropped = self.conn.execute(
                "DELETE FROM pending WHERE version IN (SELECT version FROM pending ORDER BY version LIMIT ?1)",
                [excess],
            )?;
            self.pending -= dropped as i64;
            outcome.dropped = dropped;
        }
        self.uncommitted.queued += outcome.queued;
        self.uncommitted.unchanged += outcome.unchanged;
        self.uncommitted.dropped += outcome.dropped;
        Ok(outcome)
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
                let body: Option<String> = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM pending WHERE environment = ?1 AND name = ?2 AND version = ?3 RETURNING body",
                    )?
                    .query_row(params![key.environment, key.name, version], |r| r.get(0))
                    .optional()?;
                if let Some(body) = body {
                    self.pending -= 1;
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
                let body: Option<String> = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM pending WHERE environment = ?1 AND name = ?2 AND version = ?3 RETURNING body",
                    )?
                    .query_row(params![key.environment, key.name, version], |r| r.get(0))
                    .optional()?;
                if let Some(body) = body {
                    self.pending -= 1;
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

/// The next report version: past every version in the file and past the shared sequence.
fn next_version(conn: &Connection) -> rusqlite::Result<i64> {
    let in_pending: i64 = conn.query_row(
        "SELECT coalesce(max(version), 0) + 1 FROM pending",
        [],
        |r| r.get(0),
    )?;
    let sequence: i64 = read_meta(conn, "next_version")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(in_pending.max(sequence))
}

/// Forget what was delivered for keys that no container in the view runs under and that
/// were last delivered over `DELIVERED_KEPT_MS` ago. Returns how many were forgotten.
fn prune_delivered(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM delivered WHERE delivered_ms < ?1 AND NOT EXISTS
           (SELECT 1 FROM running r WHERE r.environment = delivered.environment AND r.name = delivered.name)",
        [now - DELIVERED_KEPT_MS],
    )
}

fn fail(command: Command, error: &str) {
    let e = error.to_string();
    match command {
        Command::Enqueue(_, r) => drop(r.send(Err(e))),
        Command::Due { reply, .. } => drop(reply.send(Err(e))),
        Command::Stats(r) => drop(r.send(Err(e))),
        Command::Flush(r) => drop(r.send(Err(e))),
        Command::Settle(..) | Command::ResetBackoff => {}
    }
}

fn pending_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pending> {
    Ok(Pending {
        key: DeploymentKey {
            environment: r.get(0)?,
            name: r.get(1)?,
        },
        body: r.get(2)?,
        version: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt_ms: r.get(5)?,
        enqueued_ms: r.get(6)?,
        last_error: r.get(7)?,
    })
}

/// Operator commands (`deploytrack queue ...`) on their own connection, safe beside a running agent.
pub mod admin {
    use super::*;

    pub fn list_pending(conn: &Connection) -> rusqlite::Result<Vec<Pending>> {
        let mut stmt = conn.prepare(
            "SELECT environment, name, body, version, attempts, next_attempt_ms, enqueued_ms, last_error
             FROM pending ORDER BY version",
        )?;
        let rows = stmt.query_map([], pending_row)?;
        rows.collect()
    }

    /// Dead letters still pending work: those superseded by a later delivery of their key
    /// are left out (see `count_superseded`).
    pub fn list_dead(conn: &Connection) -> rusqlite::Result<Vec<DeadLetter>> {
        let mut stmt = conn.prepare(&format!(
            "SELECT environment, name, body, status, response, failed_ms FROM dead
             WHERE {NOT_SUPERSEDED} ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetter {
                key: DeploymentKey {
                    environment: r.get(0)?,
                    name: r.get(1)?,
                },
                body: r.get(2)?,
                status: r.get(3)?,
                response: r.get(4)?,
                failed_ms: r.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Dead letters whose key was delivered after they failed.
    pub fn count_superseded(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row(
            &format!("SELECT count(*) FROM dead WHERE NOT {NOT_SUPERSEDED}"),
            [],
            |r| r.get(0),
        )
    }

    /// The last report delivered for each key, the most recent first.
    pub fn list_sent(conn: &Connection) -> rusqlite::Result<Vec<Sent>> {
        let mut stmt = conn.prepare(
            "SELECT environment, name, body, delivered_ms, status FROM delivered
             ORDER BY delivered_ms DESC, environment, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Sent {
                key: DeploymentKey {
                    environment: r.get(0)?,
                    name: r.get(1)?,
                },
                body: r.get(2)?,
                delivered_ms: r.get(3)?,
                status: r.get(4)?,
            })
        })?;
        rows.collect()
    }

    /// Move dead letters back into the queue; a newer pending report of the same key stays,
    /// and a dead letter superseded by a later delivery is dropped, not sent again.
    /// Returns (moved, superseded).
    pub fn retry_dead(conn: &mut Connection) -> rusqlite::Result<(usize, usize)> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let next = next_version(&tx)?;
        let superseded = tx.execute(&format!("DELETE FROM dead WHERE NOT {NOT_SUPERSEDED}"), [])?;
        let moved = tx.execute(
            "INSERT INTO pending (environment, name, body, version, enqueued_ms, attempts, next_attempt_ms)
             SELECT environment, name, body, ?1 + id, failed_ms, 0, 0 FROM dead WHERE id IN
               (SELECT max(id) FROM dead GROUP BY environment, name)
             ON CONFLICT (environment, name) DO NOTHING",
            [next],
        )?;
        tx.execute("DELETE FROM dead", [])?;
        // Past every version just used (the ids of the dead letters moved).
        let max_id: i64 =
            tx.query_row("SELECT coalesce(max(version), 0) FROM pending", [], |r| {
                r.get(0)
            })?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_version', ?1)",
            [(max_id + 1).max(next).to_string()],
        )?;
        tx.commit()?;
        Ok((moved, superseded))
    }

    pub fn purge(conn: &mut Connection) -> rusqlite::Result<(usize, usize)> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let pending = tx.execute("DELETE FROM pending", [])?;
        let dead = tx.execute("DELETE FROM dead", [])?;
        tx.commit()?;
        Ok((pending, dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::Platform;

    fn deployment(name: &str, digest: &str) -> Deployment {
        Deployment {
            key: DeploymentKey {
                environment: "test".into(),
                name: name.into(),
            },
            image_url: format!("example.com/app@sha256:{digest}"),
            platform: Platform::new("linux", "amd64", None),
            container: None,
        }
    }

    /// Open, waiting for a previous handle's thread to let go of the lock.
    fn open(dir: &Path) -> Outbox {
        for _ in 0..100 {
            match Outbox::open(Some(dir), 3, Arc::new(Telemetry::new())) {
                Ok((outbox, _)) => return outbox,
                Err(OutboxError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the state dir stayed locked");
    }

    fn batch(reports: Vec<Deployment>) -> Batch {
        Batch {
            reports,
            ..Batch::default()
        }
    }

    #[tokio::test]
    async fn coalesces_acknowledges_and_remembers() {
        let dir = tempdir();
        let outbox = open(&dir);
        let out = outbox
            .enqueue(batch(vec![deployment("a", "1"), deployment("a", "2")]))
            .await
            .unwrap();
        assert_eq!((out.queued, out.unchanged), (1, 1));
        let (due, _) = outbox.due(10, true).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].body.contains("sha256:2"));
        // A newer report arrives while the older is in flight: the ack removes only the older.
        outbox
            .enqueue(batch(vec![deployment("a", "3")]))
            .await
            .unwrap();
        outbox.settle(
            due[0].key.clone(),
            due[0].version,
            Settle::Delivered { status: 200 },
        );
        let (due, _) = outbox.due(10, true).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].body.contains("sha256:3"));
        outbox.settle(
            due[0].key.clone(),
            due[0].version,
            Settle::Delivered { status: 200 },
        );
        outbox.flush().await.unwrap();
        drop(outbox);
        // Reopened: the delivered state is remembered, so the same report is not queued again.
        let outbox = open(&dir);
        let out = outbox
            .enqueue(batch(vec![deployment("a", "3")]))
            .await
            .unwrap();
        assert_eq!((out.queued, out.unchanged), (0, 1));
        let out = outbox
            .enqueue(Batch {
                force: true,
                ..batch(vec![deployment("a", "3")])
            })
            .await
            .unwrap();
        assert_eq!(out.queued, 1);
    }

    #[tokio::test]
    async fn bounded_drops_the_oldest() {
        let dir = tempdir();
        let outbox = open(&dir);
        let reports = (0..5).map(|i| deployment(&format!("n{i}"), "1")).collect();
        let out = outbox.enqueue(batch(reports)).await.unwrap();
        assert_eq!(out.dropped, 2);
        let (due, _) = outbox.due(10, true).await.unwrap();
        let names: Vec<_> = due.iter().map(|p| p.key.name.as_str()).collect();
        assert_eq!(names, ["n2", "n3", "n4"]);
    }

    #[tokio::test]
    async fn damaged_file_is_moved_aside() {
        let dir = tempdir();
        std::fs::write(dir.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let (outbox, restored) = Outbox::open(Some(&dir), 10, Arc::new(Telemetry::new())).unwrap();
        let (damaged, aside) = restored.moved_aside.expect("moved aside");
        assert_eq!(damaged, dir.join(DB_FILE));
        assert!(aside.exists());
        outbox
            .enqueue(batch(vec![deployment("a", "1")]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn one_agent_per_state_dir() {
        let dir = tempdir();
        let _first = open(&dir);
        let second = Outbox::open(Some(&dir), 3, Arc::new(Telemetry::new()));
        assert!(matches!(second, Err(OutboxError::Locked(_))));
    }

    #[tokio::test]
    async fn dead_letters_come_back() {
        let dir = tempdir();
        let outbox = open(&dir);
        outbox
            .enqueue(batch(vec![deployment("a", "1")]))
            .await
            .unwrap();
        let (due, _) = outbox.due(10, true).await.unwrap();
        outbox.settle(
            due[0].key.clone(),
            due[0].version,
            Settle::Dead {
                status: 400,
                response: "bad".into(),
            },
        );
        outbox.flush().await.unwrap();
        let mut conn = open_file(&dir.join(DB_FILE)).unwrap();
        assert_eq!(admin::list_dead(&conn).unwrap().len(), 1);
        assert_eq!(admin::retry_dead(&mut conn).unwrap(), (1, 0));
        assert_eq!(admin::list_pending(&conn).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_retry_beside_the_agent_never_takes_the_version_of_a_newer_report() {
        let dir = tempdir();
        let outbox = open(&dir);
        for digest in ["1", "2"] {
            outbox
                .enqueue(batch(vec![deployment(&format!("k{digest}"), digest)]))
                .await
                .unwrap();
        }
        let (due, _) = outbox.due(10, true).await.unwrap();
        for p in &due {
            let dead = Settle::Dead {
                status: 400,
                response: "bad".into(),
            };
            outbox.settle(p.key.clone(), p.version, dead);
        }
        outbox.flush().await.unwrap();
        // An operator's retry on its own connection, while the agent runs.
        let mut conn = open_file(&dir.join(DB_FILE)).unwrap();
        assert_eq!(admin::retry_dead(&mut conn).unwrap().0, 2);
        let retried: Vec<i64> = admin::list_pending(&conn)
            .unwrap()
            .iter()
            .map(|p| p.version)
            .collect();
        // A newer report for k1 arrives: it replaces the retried one, with a newer version.
        outbox
            .enqueue(batch(vec![deployment("k1", "3")]))
            .await
            .unwrap();
        let (due, _) = outbox.due(10, false).await.unwrap();
        let k1 = due.iter().find(|p| p.key.name == "k1").unwrap();
        assert!(k1.body.contains("sha256:3"));
        assert!(
            retried.iter().all(|v| k1.version > *v),
            "{} vs {retried:?}",
            k1.version
        );
        // The ack of the retried k1 (in flight before the newer arrived) removes nothing.
        outbox.settle(
            k1.key.clone(),
            retried[0].min(retried[1]),
            Settle::Delivered { status: 200 },
        );
        let (due, _) = outbox.due(10, false).await.unwrap();
        assert!(due.iter().any(|p| p.body.contains("sha256:3")));
        assert_eq!(outbox.stats().await.unwrap().pending, 2);
    }

    #[tokio::test]
    async fn a_purge_beside_the_agent_is_seen_in_its_counts() {
        let dir = tempdir();
        let outbox = open(&dir);
        let reports = (0..3).map(|i| deployment(&format!("n{i}"), "1")).collect();
        outbox.enqueue(batch(reports)).await.unwrap();
        assert_eq!(outbox.stats().await.unwrap().pending, 3);
        let mut conn = open_file(&dir.join(DB_FILE)).unwrap();
        assert_eq!(admin::purge(&mut conn).unwrap(), (3, 0));
        assert_eq!(outbox.stats().await.unwrap().pending, 0);
        // And the bound (3 entries here) counts from the real depth: nothing is dropped.
        let reports = (3..6).map(|i| deployment(&format!("n{i}"), "1")).collect();
        let out = outbox.enqueue(batch(reports)).await.unwrap();
        assert_eq!((out.queued, out.dropped), (3, 0));
    }

    #[tokio::test]
    async fn a_batch_is_written_whole_or_not_at_all() {
        let dir = tempdir();
        let outbox = open(&dir);
        // A statement that fails part-way through a batch: after its report was written.
        let conn = open_file(&dir.join(DB_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON running WHEN NEW.container_id = 'refused'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        drop(conn);
        let failing = Batch {
            running: vec![("refused".into(), deployment("a", "1"))],
            ..batch(vec![deployment("a", "1")])
        };
        assert!(outbox.enqueue(failing).await.is_err());
        // The next batch commits the transaction: the failed one left nothing in it.
        outbox
            .enqueue(batch(vec![deployment("b", "2")]))
            .await
            .unwrap();
        let conn = open_file(&dir.join(DB_FILE)).unwrap();
        let names: Vec<String> = admin::list_pending(&conn)
            .unwrap()
            .into_iter()
            .map(|p| p.key.name)
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(outbox.stats().await.unwrap().pending, 1);
    }

    #[test]
    fn what_was_delivered_is_forgotten_after_30_days_unless_it_runs() {
        let conn = Connection::open_in_memory().unwrap();
        init_schema(&conn).unwrap();
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        conn.execute_batch(&format!(
            "INSERT INTO delivered (environment, name, body, delivered_ms) VALUES
               ('e', 'old', 'b', {old}), ('e', 'old-running', 'b', {old}), ('e', 'recent', 'b', {recent});
             INSERT INTO running VALUES ('c1', 'e', 'old-running', 'b');",
            old = now - 31 * day,
            recent = now - 29 * day
        ))
        .unwrap();
        assert_eq!(prune_delivered(&conn, now).unwrap(), 1);
        let left: Vec<String> = conn
            .prepare("SELECT name FROM delivered ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["old-running", "recent"]);
    }

    #[tokio::test]
    async fn a_dead_letter_superseded_by_a_later_delivery_is_no_longer_pending_work() {
        let dir = tempdir();
        let outbox = open(&dir);
        let settle_first = |status| async {
            let (due, _) = outbox.due(10, true).await.unwrap();
            outbox.settle(due[0].key.clone(), due[0].version, status);
            outbox.flush().await.unwrap();
        };
        outbox
            .enqueue(batch(vec![deployment("a", "1"), deployment("b", "1")]))
            .await
            .unwrap();
        for _ in 0..2 {
            settle_first(Settle::Dead {
                status: 404,
                response: "wrong url".into(),
            })
            .await;
        }
        assert_eq!(outbox.stats().await.unwrap().dead, 2);
        // The URL is fixed: a's newer report is delivered, b's is not yet.
        std::thread::sleep(Duration::from_millis(5));
        outbox
            .enqueue(batch(vec![deployment("a", "2")]))
            .await
            .unwrap();
        settle_first(Settle::Delivered { status: 202 }).await;
        assert_eq!(outbox.stats().await.unwrap().dead, 1);
        let mut conn = open_file(&dir.join(DB_FILE)).unwrap();
        let dead = admin::list_dead(&conn).unwrap();
        let names: Vec<_> = dead.iter().map(|d| d.key.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(admin::count_superseded(&conn).unwrap(), 1);
        // Retry sends only b; a's stale report is dropped.
        assert_eq!(admin::retry_dead(&mut conn).unwrap(), (1, 1));
        let pending = admin::list_pending(&conn).unwrap();
        let names: Vec<_> = pending.iter().map(|p| p.key.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        let sent = admin::list_sent(&conn).unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].key.name.as_str(), sent[0].status),
            ("a", Some(202))
        );
        assert!(sent[0].body.contains("sha256:2"));
    }

    #[test]
    fn a_queue_of_schema_1_is_migrated_and_keeps_what_it_delivered() {
        let dir = tempdir();
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE delivered (environment TEXT NOT NULL, name TEXT NOT NULL,
                body TEXT NOT NULL, delivered_ms INTEGER NOT NULL,
                PRIMARY KEY (environment, name)) WITHOUT ROWID;
             INSERT INTO delivered VALUES ('test', 'a', '{}', 1000);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let conn = open_file(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let sent = admin::list_sent(&conn).unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].delivered_ms, sent[0].status), (1000, None));
        drop(conn);
        // Opened again (already migrated): nothing to do, nothing lost.
        assert_eq!(
            admin::list_sent(&open_file(&path).unwrap()).unwrap().len(),
            1
        );
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "deploytrack-outbox-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
