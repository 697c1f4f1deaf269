//! The queue's place on disk: the state dir and its lock, file modes and owners, and a
//! damaged file moved aside so that a bad disk block never becomes a crash loop.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::schema::init_schema;
use super::{Error, DB_FILE};

/// A queue connection, checked and with its schema, and what opening it took.
pub(super) struct Opened {
    pub conn: Connection,
    /// The file's name for messages (`:memory:` for a dry run's queue).
    pub label: String,
    /// Held for as long as the queue runs; none for an in-memory queue.
    pub lock: Option<std::fs::File>,
    /// (damaged, moved to), when a damaged file was moved aside.
    pub moved_aside: Option<(PathBuf, PathBuf)>,
}

impl Opened {
    pub fn memory() -> Result<Self, Error> {
        let sql_err = |source| Error::Sqlite {
            path: ":memory:".into(),
            source,
        };
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        init_schema(&conn).map_err(sql_err)?;
        Ok(Opened {
            conn,
            label: ":memory:".into(),
            lock: None,
            moved_aside: None,
        })
    }

    /// `dir/deploytrack.db`: the directory made private, locked for this agent, the file
    /// opened, or moved aside and started afresh when SQLite finds it damaged. A file this
    /// user cannot write is an error naming its owner; it is never moved aside.
    pub fn state_dir(dir: &Path) -> Result<Self, Error> {
        make_private_dir(dir).map_err(|source| Error::StateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        if !writable(&path) {
            return Err(Error::Unwritable(unwritable_message(
                dir,
                &path,
                "permission denied",
            )));
        }
        let lock = Some(lock_state_dir(dir)?);
        // Not fatal: a file that cannot be opened is dealt with below.
        if let Err(e) = make_private_file(&path) {
            tracing::debug!(error = %e, path = %path.display(), "cannot set the queue file's mode");
        }
        let label = path.display().to_string();
        let (conn, moved_aside) = match open_file(&path) {
            Ok(conn) => {
                take_dir_owner(dir, &path);
                (conn, None)
            }
            Err(e) if is_unwritable(&e) => {
                return Err(Error::Unwritable(unwritable_message(
                    dir,
                    &path,
                    &e.to_string(),
                )))
            }
            Err(e) if path.exists() && is_damage(&e) => {
                let (conn, aside) = start_afresh(&path, &e)?;
                (conn, Some((path, aside)))
            }
            Err(source) => {
                return Err(Error::Sqlite {
                    path: label,
                    source,
                })
            }
        };
        Ok(Opened {
            conn,
            label,
            lock,
            moved_aside,
        })
    }
}

/// Move the damaged file aside and open a fresh one in its place.
fn start_afresh(path: &Path, damage: &rusqlite::Error) -> Result<(Connection, PathBuf), Error> {
    let dir_err = |source| Error::StateDir {
        path: path.to_path_buf(),
        source,
    };
    let aside = move_aside(path).map_err(dir_err)?;
    tracing::error!(error = %damage, "the queue database is damaged");
    make_private_file(path).map_err(dir_err)?;
    let conn = open_file(path).map_err(|source| Error::Sqlite {
        path: path.display().to_string(),
        source,
    })?;
    Ok((conn, aside))
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
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("deploytrack.lock");
    let file = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::StateDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::StateDir { path, source }),
    }
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

/// The files of the queue whose database is `db`: the database, SQLite's write-ahead log and
/// shared memory, and the agent's lock.
fn queue_files(db: &Path) -> [PathBuf; 4] {
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", db.display()));
    [
        db.to_path_buf(),
        side("-wal"),
        side("-shm"),
        db.with_file_name("deploytrack.lock"),
    ]
}

/// Whether this process may write `path` and its directory (the WAL and lock files live there).
fn writable(path: &Path) -> bool {
    let dir_ok = path.parent().is_none_or(access_write);
    dir_ok
        && queue_files(path)
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
    let culprit = queue_files(path)
        .into_iter()
        .chain([dir.to_path_buf()])
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
    for file in queue_files(db) {
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
