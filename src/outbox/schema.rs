//! The queue file's tables, and the migrations from earlier releases' files.

use rusqlite::{Connection, OptionalExtension};

use super::Pending;
use crate::deployment::DeploymentKey;
use crate::evidence::{Change, Held, Refusal, Refused, Source};

/// 1: the first release. 2: `delivered.status`, the endpoint's answer (null in rows
/// written before it). The `evidence` and `refusals` tables came later without a new
/// version: a release that does not know them leaves them alone.
pub(super) const SCHEMA_VERSION: i64 = 2;
/// A dead letter is superseded once its key was delivered after it failed: the endpoint has
/// a newer state of that key, so the dead letter is no longer pending work.
pub(super) const NOT_SUPERSEDED: &str = "NOT EXISTS (SELECT 1 FROM delivered
    WHERE delivered.environment = dead.environment AND delivered.name = dead.name
      AND delivered.delivered_ms >= dead.failed_ms)";

pub(super) fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
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
        -- The last refusal of a key, read for every report queued (an index, not a scan of
        -- every dead letter; earlier releases ignore it).
        CREATE INDEX IF NOT EXISTS dead_key ON dead (environment, name, failed_ms);
        CREATE TABLE IF NOT EXISTS running (
            container_id TEXT PRIMARY KEY,
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS evidence (
            repository TEXT NOT NULL,
            digest TEXT NOT NULL,
            source TEXT NOT NULL,
            seen_ms INTEGER NOT NULL,
            PRIMARY KEY (repository, digest)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS refusals (
            pinned TEXT PRIMARY KEY,
            why TEXT NOT NULL,
            failures INTEGER NOT NULL,
            next_ms INTEGER NOT NULL
        ) WITHOUT ROWID;",
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

/// The `meta` key of the settings that shape keys (`crate::key_settings`), as JSON.
pub(super) const SETTINGS: &str = "settings";

pub(super) fn read_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub(super) fn read_running(
    conn: &Connection,
) -> rusqlite::Result<Vec<(String, DeploymentKey, String)>> {
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

/// What the evidence tables remember (see `crate::evidence`); rows this release cannot read
/// are skipped.
pub(super) fn read_evidence(conn: &Connection) -> rusqlite::Result<Vec<Held>> {
    let mut stmt = conn.prepare("SELECT repository, digest, source, seen_ms FROM evidence")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (repository, digest, source, seen_ms) = row?;
        if let Some(source) = Source::parse(&source) {
            out.push(Held {
                repository,
                digest,
                source,
                seen_ms,
            });
        }
    }
    Ok(out)
}

pub(super) fn read_refusals(conn: &Connection) -> rusqlite::Result<Vec<(String, Refused)>> {
    let mut stmt = conn.prepare("SELECT pinned, why, failures, next_ms FROM refusals")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (pinned, why, failures, next_ms) = row?;
        if let Some(why) = Refusal::parse(&why) {
            out.push((
                pinned,
                Refused {
                    why,
                    failures,
                    next_ms,
                },
            ));
        }
    }
    Ok(out)
}

/// Apply changes to what the evidence tables remember.
pub(super) fn write_evidence(conn: &Connection, changes: &[Change]) -> rusqlite::Result<usize> {
    let mut n = 0;
    for change in changes {
        n += match change {
            Change::Hold(h) => conn.execute(
                "INSERT OR REPLACE INTO evidence (repository, digest, source, seen_ms) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![h.repository, h.digest, h.source.as_str(), h.seen_ms],
            )?,
            Change::Forget { repository, digest } => conn.execute(
                "DELETE FROM evidence WHERE repository = ?1 AND digest = ?2",
                [repository, digest],
            )?,
            Change::Refuse { pinned, refused } => conn.execute(
                "INSERT OR REPLACE INTO refusals (pinned, why, failures, next_ms) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![pinned, refused.why.as_str(), refused.failures, refused.next_ms],
            )?,
            Change::Unrefuse { pinned } => {
                conn.execute("DELETE FROM refusals WHERE pinned = ?1", [pinned])?
            }
        };
    }
    Ok(n)
}

/// The next report version: past every version in the file and past the shared sequence.
pub(super) fn next_version(conn: &Connection) -> rusqlite::Result<i64> {
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

/// The key of a row whose first two columns are `environment, name`.
pub(super) fn key_at(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentKey> {
    Ok(DeploymentKey {
        environment: r.get(0)?,
        name: r.get(1)?,
    })
}

pub(super) fn pending_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pending> {
    Ok(Pending {
        key: key_at(r)?,
        body: r.get(2)?,
        version: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt_ms: r.get(5)?,
        enqueued_ms: r.get(6)?,
        last_error: r.get(7)?,
    })
}
