use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::schema::{init_schema, SCHEMA_VERSION};
use super::store::prune_delivered;
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
            Err(Error::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
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
    assert!(matches!(second, Err(Error::Locked(_))));
}

/// Queue `d` alone and settle it as `settle` says, on disk.
async fn answered(outbox: &Outbox, d: Deployment, settle: Settle) {
    outbox.enqueue(batch(vec![d])).await.unwrap();
    let (due, _) = outbox.due(10, true).await.unwrap();
    outbox.settle(due[0].key.clone(), due[0].version, settle);
    outbox.flush().await.unwrap();
}

/// Queue `d` and settle it as refused with `status`: a dead letter, on disk.
async fn refused(outbox: &Outbox, d: Deployment, status: u16) {
    let refusal = Settle::Dead {
        status,
        response: "refused".into(),
    };
    answered(outbox, d, refusal).await;
}

#[tokio::test]
async fn dead_letters_come_back() {
    let dir = tempdir();
    let outbox = open(&dir);
    refused(&outbox, deployment("a", "1"), 400).await;
    let mut conn = open_file(&dir.join(DB_FILE)).unwrap();
    assert_eq!(operator::list_dead(&conn).unwrap().len(), 1);
    assert_eq!(operator::retry_dead(&mut conn).unwrap(), (1, 0));
    assert_eq!(operator::list_pending(&conn).unwrap().len(), 1);
}

#[tokio::test]
async fn a_refused_report_is_not_queued_again_unchanged_until_an_operator_retries() {
    let dir = tempdir();
    let outbox = open(&dir);
    refused(&outbox, deployment("a", "1"), 422).await;
    // Each reconciliation finds the same container: the refused report stays a dead letter.
    for _ in 0..3 {
        let out = outbox
            .enqueue(batch(vec![deployment("a", "1")]))
            .await
            .unwrap();
        assert_eq!((out.queued, out.unchanged), (0, 1));
    }
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 1));
    // Other keys still flow, and the operator's retry sends the refused report again.
    let out = outbox
        .enqueue(batch(vec![deployment("b", "1")]))
        .await
        .unwrap();
    assert_eq!(out.queued, 1);
    outbox.flush().await.unwrap();
    let mut conn = open_file(&dir.join(DB_FILE)).unwrap();
    assert_eq!(operator::retry_dead(&mut conn).unwrap(), (1, 0));
    assert_eq!(operator::list_pending(&conn).unwrap().len(), 2);
}

#[tokio::test]
async fn a_key_back_on_its_delivered_image_after_a_refused_one_is_queued() {
    let dir = tempdir();
    let outbox = open(&dir);
    answered(
        &outbox,
        deployment("a", "1"),
        Settle::Delivered { status: 202 },
    )
    .await;
    std::thread::sleep(Duration::from_millis(5));
    refused(&outbox, deployment("a", "2"), 422).await;
    // The last answer for the key is the refusal of image 2: image 1 again is news.
    let out = outbox
        .enqueue(batch(vec![deployment("a", "1")]))
        .await
        .unwrap();
    assert_eq!((out.queued, out.unchanged), (1, 0));
}

#[tokio::test]
async fn a_new_image_for_a_refused_key_is_queued() {
    let dir = tempdir();
    let outbox = open(&dir);
    refused(&outbox, deployment("a", "1"), 422).await;
    let out = outbox
        .enqueue(batch(vec![deployment("a", "2")]))
        .await
        .unwrap();
    assert_eq!((out.queued, out.unchanged), (1, 0));
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
    assert_eq!(operator::retry_dead(&mut conn).unwrap().0, 2);
    let retried: Vec<i64> = operator::list_pending(&conn)
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
    assert_eq!(operator::purge(&mut conn).unwrap(), (3, 0));
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
    // The trigger's refusal comes back as it is, not as a closed or rolled-back queue.
    match outbox.enqueue(failing).await {
        Err(Error::Database(e)) => assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{e}"
        ),
        other => panic!("the failing batch was answered {other:?}"),
    }
    // The next batch commits the transaction: the failed one left nothing in it.
    outbox
        .enqueue(batch(vec![deployment("b", "2")]))
        .await
        .unwrap();
    let conn = open_file(&dir.join(DB_FILE)).unwrap();
    let names: Vec<String> = operator::list_pending(&conn)
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
    let dead = operator::list_dead(&conn).unwrap();
    let names: Vec<_> = dead.iter().map(|d| d.key.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    assert_eq!(operator::count_superseded(&conn).unwrap(), 1);
    // Retry sends only b; a's stale report is dropped.
    assert_eq!(operator::retry_dead(&mut conn).unwrap(), (1, 1));
    let pending = operator::list_pending(&conn).unwrap();
    let names: Vec<_> = pending.iter().map(|p| p.key.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    let sent = operator::list_sent(&conn).unwrap();
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
    let sent = operator::list_sent(&conn).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].delivered_ms, sent[0].status), (1000, None));
    drop(conn);
    // Opened again (already migrated): nothing to do, nothing lost.
    assert_eq!(
        operator::list_sent(&open_file(&path).unwrap())
            .unwrap()
            .len(),
        1
    );
}

/// A queue file as the release before `container.since` (and before arm64's `v8`) left it:
/// schema 1, and the bodies it sent, byte for byte as that release serialised them.
fn previous_release_queue(dir: &Path) {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    // Running, without `since`; the arm64 one without `variant` and without `container`.
    let sent = |name: &str, platform: &str, id: Option<&str>| {
        let container = id.map_or(String::new(), |id| {
            format!(r#","container":{{"id":"{id}","state":"running"}}"#)
        });
        format!(
            r#"{{"image":{{"url":"example.com/app@sha256:1","name":"{name}"}},"environment":{{"name":"test"}},"platform":{platform}{container}}}"#
        )
    };
    let amd64 = r#"{"os":"linux","architecture":"amd64"}"#;
    let arm64 = r#"{"os":"linux","architecture":"arm64"}"#;
    let rows = [
        ("stops", sent("stops", amd64, Some("c1"))),
        ("arm", sent("arm", arm64, None)),
        ("moved", sent("moved", amd64, Some("c2"))),
        ("stopped", sent("stopped", amd64, Some("c3"))),
    ];
    conn.execute_batch(
        "CREATE TABLE pending (environment TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
            version INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            last_error TEXT, PRIMARY KEY (environment, name)) WITHOUT ROWID;
         CREATE TABLE delivered (environment TEXT NOT NULL, name TEXT NOT NULL,
            body TEXT NOT NULL, delivered_ms INTEGER NOT NULL,
            PRIMARY KEY (environment, name)) WITHOUT ROWID;
         CREATE TABLE dead (id INTEGER PRIMARY KEY, environment TEXT NOT NULL,
            name TEXT NOT NULL, body TEXT NOT NULL, status INTEGER NOT NULL,
            response TEXT NOT NULL, failed_ms INTEGER NOT NULL);
         CREATE TABLE running (container_id TEXT PRIMARY KEY, environment TEXT NOT NULL,
            name TEXT NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    for (name, body) in rows {
        conn.execute(
            "INSERT INTO delivered VALUES ('test', ?1, ?2, ?3)",
            rusqlite::params![name, body, crate::clock::now_ms()],
        )
        .unwrap();
    }
}

/// `deployment(name, "1")` as this release reports it with `--report-stops`: running since
/// its start.
fn running(name: &str, id: &str) -> Deployment {
    Deployment {
        container: Some(crate::deployment::ContainerStatus {
            id: id.into(),
            state: crate::deployment::ContainerState::Running,
            exit_code: None,
            since: Some("2026-11-28T23:27:04.422003518Z".into()),
        }),
        ..deployment(name, "1")
    }
}

#[tokio::test]
async fn an_upgrade_re_sends_nothing_the_receiver_already_keeps() {
    let dir = tempdir();
    previous_release_queue(&dir);
    let outbox = open(&dir);
    // The bodies gained `since` and arm64's `v8`: the receiver keeps the same either way.
    let arm = Deployment {
        platform: Platform::new("linux", "arm64", None),
        ..deployment("arm", "1")
    };
    let out = outbox
        .enqueue(batch(vec![running("stops", "c1"), arm]))
        .await
        .unwrap();
    assert_eq!((out.queued, out.unchanged), (0, 2));
    assert!(outbox.due(10, false).await.unwrap().0.is_empty());
    // What the receiver keeps did change: another container under the name, a stop, a
    // digest. Each is sent.
    let stopped = running("stopped", "c3").stopped(Some(0), None);
    let out = outbox
        .enqueue(batch(vec![
            running("moved", "c9"),
            stopped,
            deployment("arm", "2"),
        ]))
        .await
        .unwrap();
    assert_eq!((out.queued, out.unchanged), (3, 0));
}

#[tokio::test]
async fn a_new_start_of_the_same_container_is_sent_when_both_say_since_when() {
    let dir = tempdir();
    let outbox = open(&dir);
    answered(
        &outbox,
        running("a", "c1"),
        Settle::Delivered { status: 200 },
    )
    .await;
    // The same container started again (a restart whose stop was coalesced away): a
    // receiver ordering reports by `since` must see the later start.
    let mut again = running("a", "c1");
    again.container.as_mut().unwrap().since = Some("2026-11-29T08:00:00Z".into());
    let out = outbox.enqueue(batch(vec![again])).await.unwrap();
    assert_eq!((out.queued, out.unchanged), (1, 0));
}

#[tokio::test]
async fn the_settings_that_shape_keys_are_remembered_in_the_queue_file() {
    let dir = tempdir();
    previous_release_queue(&dir);
    // An earlier release's file remembers none.
    assert_eq!(settings_in(&dir).unwrap(), None);
    let (outbox, restored) = Outbox::open(Some(&dir), 10, Arc::new(Telemetry::new())).unwrap();
    assert_eq!(restored.settings, None);
    let settings = KeySettings {
        environment: "staging".into(),
        host_name: "edge-1".into(),
        ..KeySettings::default()
    };
    outbox.remember_settings(&settings).await.unwrap();
    // Read beside the agent (check), and at the next open.
    assert_eq!(settings_in(&dir).unwrap().as_ref(), Some(&settings));
    drop(outbox);
    let reopened = loop {
        match Outbox::open(Some(&dir), 10, Arc::new(Telemetry::new())) {
            Ok((_, restored)) => break restored,
            Err(Error::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(reopened.settings, Some(settings));
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
