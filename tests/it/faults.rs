//! Faults an operator's host throws at the agent: paused and crash-looping containers.

use deploytrack_test_support::*;

fn stop_reports(receiver: &Receiver, name: &str) -> usize {
    receiver
        .accepted()
        .iter()
        .filter(|r| r.name() == name && r.body["container"]["state"] == "stopped")
        .count()
}

engine_test!(paused_and_restarting_containers_are_running);
async fn paused_and_restarting_containers_are_running(engine: Engine) {
    let scope = Scope::new(engine, "paused");
    let receiver = Receiver::start().await;
    let agent = scope.agent(
        &receiver.url(),
        &["--report-stops", "--resync-interval", "1s"],
    );
    agent.ready().await;
    let host = engine.host_name();
    let paused = scope.name("paused");
    scope.run(&["--name", &paused], APP1);
    // A crash loop under a restart policy: the image's shell, exiting after a moment.
    let looping = scope.name("looping");
    let selector = scope.selector();
    engine.docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &selector,
        "--name",
        &looping,
        "--restart",
        "always",
        APP1,
        "/bin/sh",
        "-c",
        "sleep 0.3; exit 3",
    ]);
    for name in [&paused, &looping] {
        receiver
            .accepted_report("the container running", &format!("{host}/{name}"))
            .await;
    }
    engine.docker(&["pause", &paused]);
    let reconciled = agent.stderr().matches("reconciled with the engine").count();
    // Three restarts of the loop, and two reconciliations while paused.
    eventually("the crash loop to restart three times", || {
        let count: u32 = engine
            .docker(&["inspect", "--format", "{{.RestartCount}}", &looping])
            .parse()
            .unwrap_or(0);
        (count >= 3).then_some(())
    })
    .await;
    eventually("two reconciliations after the pause", || {
        (agent.stderr().matches("reconciled with the engine").count() >= reconciled + 2)
            .then_some(())
    })
    .await;
    let marker = scope.name("marker");
    scope.run(&["--name", &marker], APP2);
    receiver
        .accepted_report("the marker", &format!("{host}/{marker}"))
        .await;
    for name in [&paused, &looping] {
        assert_eq!(
            stop_reports(&receiver, &format!("{host}/{name}")),
            0,
            "{name} was reported stopped: {:?}",
            receiver.accepted()
        );
    }
    // Unpaused, then removed: a stop is still a stop.
    engine.docker(&["unpause", &paused]);
    engine.docker(&["rm", "-f", &paused, &looping]);
    for name in [&paused, &looping] {
        let key = format!("{host}/{name}");
        let stopped = tokio::time::timeout(PATIENCE, async {
            while stop_reports(&receiver, &key) != 1 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await;
        // On failure, what the receiver got for it (a stop a reconciliation found carries no
        // `since`, one from an event does) and what the agent said of it.
        assert!(
            stopped.is_ok(),
            "{key}: {} stop reports, not one, after {PATIENCE:?}; received: {:?}\nagent:\n{}",
            stop_reports(&receiver, &key),
            receiver
                .received()
                .iter()
                .filter(|r| r.name() == key)
                .map(|r| (r.status, r.body["container"].to_string()))
                .collect::<Vec<_>>(),
            agent
                .stderr()
                .lines()
                .filter(|l| l.contains(name.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn chown(path: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn owner(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().uid()
}

engine_test!(a_queue_the_service_user_cannot_open_is_kept_and_named);
async fn a_queue_the_service_user_cannot_open_is_kept_and_named(engine: Engine) {
    // The service's user: nobody, in the Docker socket's group.
    let (uid, gid) = (65534, 65534);
    let scope = Scope::new(engine, "unwritable");
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let state = scope.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    chown(&state, uid, gid);
    let token = scope.token_file();
    chown(&token, uid, gid);
    let (state_text, token_text) = (state.to_str().unwrap(), token.to_str().unwrap());
    let selector = scope.selector();
    let args = |url: &str| -> Vec<String> {
        [
            "run",
            "--url",
            url,
            "--token-file",
            token_text,
            "--state-dir",
            state_text,
            "--label-selector",
            &selector,
            "--retry-initial",
            "200ms",
            "--retry-max",
            "1s",
        ]
        .map(String::from)
        .to_vec()
    };
    let as_user = |args: &[String]| {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn_command(&scope.dir, engine.agent_command_as(uid, gid, &argv), &[])
    };

    // A `sync --once` run as root leaves nothing the service's user cannot open.
    let first = scope.name("first");
    scope.run(&["--name", &first], APP1);
    let sync = scope.sync_once(&receiver.url(), &[]);
    assert!(sync.status.success(), "{}", sync.stderr);
    receiver
        .accepted_report("the report of sync --once", &format!("{host}/{first}"))
        .await;
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            owner(&path),
            uid,
            "{} was left owned by root",
            path.display()
        );
    }

    // The service's user queues a report while the endpoint is down, and stops.
    let down = endpoint_url(unused_addr());
    let mut agent = as_user(&args(&down));
    agent.ready().await;
    let second = scope.name("second");
    scope.run(&["--name", &second], APP2);
    eventually("the report to wait in the queue", || {
        agent
            .stderr()
            .contains("cannot deliver; holding the queue")
            .then_some(())
    })
    .await;
    agent.stop().await;
    // Only the queue can deliver it now.
    engine.docker(&["rm", "-f", &second]);

    // Root takes the queue file: the agent says so and stops, and moves nothing aside.
    let db = state.join("deploytrack.db");
    chown(&db, 0, 0);
    let mut agent = as_user(&args(&receiver.url()));
    let status = agent.wait().await;
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    let stderr = agent.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("chown"))
        .unwrap_or_else(|| panic!("no fix named: {stderr}"));
    assert!(line.contains(&db.display().to_string()), "{line}");
    assert!(
        line.contains("owned by root, and this agent runs as nobody"),
        "{line}"
    );
    assert!(
        line.contains(&format!("chown -R nobody: {state_text}")),
        "{line}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("damaged")),
        "moved aside: {names:?}"
    );

    // Ownership fixed: what was pending is delivered.
    chown(&db, uid, gid);
    let _agent = as_user(&args(&receiver.url()));
    let report = receiver
        .accepted_report("the queued report", &format!("{host}/{second}"))
        .await;
    assert_eq!(
        report.url(),
        engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=2m,mode=0700",
                "tmpfs",
                path.to_str().unwrap(),
            ],
            None,
        );
        SmallDisk(path)
    }

    /// Fill it to the last byte.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .status();
    }
}

engine_test!(a_full_disk_stops_the_agent_and_loses_no_report);
async fn a_full_disk_stops_the_agent_and_loses_no_report(engine: Engine) {
    let scope = Scope::new(engine, "fulldisk");
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let disk = SmallDisk::mount(scope.dir.join("small"));
    let mut agent = scope.agent_in(&disk.0, &receiver.url(), &[], &[]);
    agent.ready().await;
    let before = scope.name("before");
    scope.run(&["--name", &before], APP1);
    receiver
        .accepted_report(
            "a report before the disk fills",
            &format!("{host}/{before}"),
        )
        .await;
    // Empty the write-ahead log (it would take a few more writes in its old space), then
    // fill the disk.
    let conn = rusqlite::Connection::open(disk.0.join("deploytrack.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let filler = disk.fill();
    let during = scope.name("during");
    scope.run(&["--name", &during], APP2);
    let status = agent.wait().await;
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    assert!(
        agent.stderr().contains("cannot write to the queue"),
        "{}",
        agent.stderr()
    );
    // Gone before the agent comes back: only the event, replayed from the cursor, tells.
    engine.docker(&["rm", "-f", &during]);
    std::fs::remove_file(filler).unwrap();
    let agent = scope.agent_in(&disk.0, &receiver.url(), &[], &[]);
    let report = receiver
        .accepted_report(
            "the report the full disk held up",
            &format!("{host}/{during}"),
        )
        .await;
    assert_eq!(
        report.url(),
        engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );
    drop(agent);
}
