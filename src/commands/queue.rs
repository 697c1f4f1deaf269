//! `queue`: the operator's view of the persistent queue beside a running agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::QueueAction;
use crate::outbox::{self, operator, DB_FILE};

use super::plural;

/// `queue list|dead|retry|purge` against the queue file in the state dir.
pub fn queue(action: &QueueAction, state_dir: &Path) -> Result<(), QueueCommandError> {
    match queue_to(action, state_dir, &mut std::io::stdout().lock()) {
        // A closed pipe (`| head`) is not an error of ours.
        Err(QueueCommandError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Why a `deploytrack queue` command failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueCommandError {
    /// `purge` without `--yes` (exit 64, before the queue is opened).
    #[error("queue purge deletes every pending report and dead letter: confirm with --yes")]
    PurgeUnconfirmed,
    #[error("no queue at {}: no agent has run with this state dir; give the agent's with --state-dir (or DEPLOYTRACK_STATE_DIR, or --config with the file that sets state_dir; the package's is /var/lib/deploytrack)", .0.display())]
    NoQueue(PathBuf),
    /// This user may not read the queue file; SQLite's refusal when it was the one to say so.
    #[error("permission denied: this user cannot read the queue {}; run the command as the user the agent runs as (for example sudo -u deploytrack), or as root{}", path.display(), sqlite.as_ref().map_or_else(String::new, |e| format!(" ({e})")))]
    Denied {
        path: PathBuf,
        sqlite: Option<rusqlite::Error>,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn queue_to(
    action: &QueueAction,
    state_dir: &Path,
    out: &mut impl std::io::Write,
) -> Result<(), QueueCommandError> {
    if let QueueAction::Purge { yes: false } = action {
        return Err(QueueCommandError::PurgeUnconfirmed);
    }
    let path = state_dir.join(DB_FILE);
    let mut conn = open_queue(&path)?;
    let db_err = |e: rusqlite::Error| queue_db_error(&path, e);
    let now = crate::clock::now_ms();
    match action {
        QueueAction::List => {
            write_pending(&operator::list_pending(&conn).map_err(db_err)?, now, out)?;
        }
        QueueAction::Dead => {
            let dead = operator::list_dead(&conn).map_err(db_err)?;
            let superseded = operator::count_superseded(&conn).map_err(db_err)?;
            write_dead(&dead, superseded, now, out)?;
        }
        QueueAction::Sent => write_sent(&operator::list_sent(&conn).map_err(db_err)?, now, out)?,
        QueueAction::Retry => {
            let (moved, superseded) = operator::retry_dead(&mut conn).map_err(db_err)?;
            let moved = plural(moved, "dead letter");
            if superseded > 0 {
                writeln!(
                    out,
                    "{moved} moved back into the queue; {superseded} superseded by a later delivery of their key {} dropped",
                    if superseded == 1 { "was" } else { "were" }
                )?;
            } else {
                writeln!(out, "{moved} moved back into the queue")?;
            }
        }
        QueueAction::Purge { .. } => {
            let (pending, dead) = operator::purge(&mut conn).map_err(db_err)?;
            writeln!(
                out,
                "purged {} and {}",
                plural(pending, "pending report"),
                plural(dead, "dead letter")
            )?;
        }
    }
    Ok(())
}

/// The queue file for an operator command: it must exist, and this user must be able to read
/// it (else one sentence says as whom to run the command).
fn open_queue(path: &Path) -> Result<rusqlite::Connection, QueueCommandError> {
    let path_buf = || path.to_path_buf();
    match std::fs::File::open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(QueueCommandError::NoQueue(path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(QueueCommandError::Denied {
                path: path_buf(),
                sqlite: None,
            })
        }
        Err(source) => {
            return Err(QueueCommandError::Open {
                path: path_buf(),
                source,
            })
        }
    }
    outbox::open_file(path).map_err(|e| queue_db_error(path, e))
}

/// SQLite's error on the queue file: a refusal to open or write it is a matter of the user
/// the command runs as.
fn queue_db_error(path: &Path, e: rusqlite::Error) -> QueueCommandError {
    match e.sqlite_error_code() {
        Some(
            rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::PermissionDenied
            | rusqlite::ErrorCode::ReadOnly,
        ) => QueueCommandError::Denied {
            path: path.to_path_buf(),
            sqlite: Some(e),
        },
        _ => QueueCommandError::Database {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn ago(now: i64, ms: i64) -> String {
    humantime::format_duration(Duration::from_secs(((now - ms).max(0) / 1000) as u64)).to_string()
}

fn write_pending(
    pending: &[outbox::Pending],
    now: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(out, "{} pending", pending.len())?;
    for p in pending {
        let next = if p.next_attempt_ms <= now {
            "now".to_string()
        } else {
            format!(
                "in {}",
                humantime::format_duration(Duration::from_secs(
                    ((p.next_attempt_ms - now) / 1000) as u64
                ))
            )
        };
        writeln!(
            out,
            "{}\tattempts={}\tnext={}\tqueued={} ago\tlast_error={}\t{}",
            p.key,
            p.attempts,
            next,
            ago(now, p.enqueued_ms),
            p.last_error.as_deref().unwrap_or("-"),
            p.body
        )?;
    }
    Ok(())
}

fn write_dead(
    dead: &[outbox::DeadLetter],
    superseded: i64,
    now: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if superseded > 0 {
        writeln!(
            out,
            "{} ({superseded} superseded by a later delivery of their key, not shown)",
            plural(dead.len(), "dead letter")
        )?;
    } else {
        writeln!(out, "{}", plural(dead.len(), "dead letter"))?;
    }
    for d in dead {
        writeln!(
            out,
            "{}\tstatus={}\tfailed={} ago\tresponse={}\t{}",
            d.key,
            d.status,
            ago(now, d.failed_ms),
            d.response,
            d.body
        )?;
    }
    Ok(())
}

fn write_sent(
    sent: &[outbox::Sent],
    now: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(out, "{} sent (the last report of each key)", sent.len())?;
    for s in sent {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(s.delivered_ms.max(0) as u64);
        writeln!(
            out,
            "{}\tstatus={}\tdelivered={} ago ({})\t{}",
            s.key,
            s.status.map_or("-".to_string(), |c| c.to_string()),
            ago(now, s.delivered_ms),
            humantime::format_rfc3339_seconds(at),
            s.body
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::DeploymentKey;

    #[test]
    fn queue_counts_are_singular_for_one() {
        let dead = outbox::DeadLetter {
            key: DeploymentKey {
                environment: "deployed".into(),
                name: "web".into(),
            },
            status: 400,
            response: "bad".into(),
            failed_ms: 0,
            body: "{}".into(),
        };
        let mut out = Vec::new();
        write_dead(&[dead], 1, 0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "1 dead letter (1 superseded by a later delivery of their key, not shown)\n"
            ),
            "{text}"
        );
        let mut out = Vec::new();
        write_dead(&[], 0, 0, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "0 dead letters\n");
    }

    #[test]
    fn purge_without_yes_is_refused_before_the_queue_is_opened() {
        let dir = std::env::temp_dir().join(format!("deploytrack-nopurge-{}", std::process::id()));
        assert!(matches!(
            queue_to(&QueueAction::Purge { yes: false }, &dir, &mut Vec::new()),
            Err(QueueCommandError::PurgeUnconfirmed)
        ));
        assert!(matches!(
            queue_to(&QueueAction::Purge { yes: true }, &dir, &mut Vec::new()),
            Err(QueueCommandError::NoQueue(path)) if path == dir.join(DB_FILE)
        ));
    }

    #[test]
    fn a_missing_queue_points_to_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("deploytrack-noqueue-{}", std::process::id()));
        let err = match queue_to(&QueueAction::List, &dir, &mut Vec::new()) {
            Err(e @ QueueCommandError::NoQueue(_)) => e.to_string(),
            other => panic!("a missing queue was answered {other:?}"),
        };
        assert!(
            err.starts_with(&format!(
                "no queue at {}/deploytrack.db: no agent has run with this state dir; give the agent's with --state-dir",
                dir.display()
            )),
            "{err}"
        );
    }
}
