//! Operator commands (`deploytrack queue ...`) on their own connection, safe beside a
//! running agent: SQLite's locks order them with the agent's queue thread, which re-reads its
//! counts when another connection has committed.

use rusqlite::Connection;

use super::schema::{key_at, next_version, pending_row, NOT_SUPERSEDED};
use super::{DeadLetter, Pending, Sent};

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
            key: key_at(r)?,
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
            key: key_at(r)?,
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
    let max_id: i64 = tx.query_row("SELECT coalesce(max(version), 0) FROM pending", [], |r| {
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
