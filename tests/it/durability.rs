//! Durable delivery: nothing lost across crashes, outages and engine restarts.

use std::time::Duration;

use deploytrack_test_support::*;

fn names(received: &[receiver::Received]) -> Vec<String> {
    let mut n: Vec<String> = received.iter().map(|r| r.name().to_string()).collect();
    n.sort();
    n
}

fn pending_count(scope: &Scope) -> usize {
    let state = scope.state_dir();
    let out = scope.command(&["queue", "list", "--state-dir", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", out.stderr);
    out.stdout
        .lines()
        .next()
        .and_then(|l| l.strip_suffix(" pending"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected queue list output: {}", out.stdout))
}

engine_test!(outage_crash_and_restart_lose_nothing_and_replay_nothing);
async fn outage_crash_and_restart_lose_nothing_and_replay_nothing(engine: Engine) {
    let scope = Scope::new(engine, "crash");
    let addr = unused_addr();
    let url = endpoint_url(addr);
    let host = engine.host_name();
    let mut agent = scope.agent(&url, &[]);
    agent.ready().await;
    let (a, b, gone) = (scope.name("a"), scope.name("b"), scope.name("gone"));
    scope.run(&["--name", &a], APP1);
    let b_id = scope.run(&["--name", &b], APP1);
    let gone_id = scope.run(&["--name", &gone], APP1);
    // Removed once the agent has queued its report (a, b and gone: the endpoint is down).
    eventually("the three starts queued", || {
        (pending_count(&scope) == 3).then_some(())
    })
    .await;
    engine.docker(&["rm", "-f", &gone_id]);
    // b is recreated with a new image while the endpoint is down: only the latest counts.
    engine.docker(&["rm", "-f", &b_id]);
    scope.run(&["--name", &b], APP2);
    // Three keys queued, b's with the recreated container's digest: a crash now must not
    // let the start event of b's removed container, replayed at the restart, win.
    let b_new = engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app");
    let state = scope.state_dir();
    eventually("three reports queued, b's the newest", || {
        let list = scope.command(&["queue", "list", "--state-dir", state.to_str().unwrap()]);
        (pending_count(&scope) == 3 && list.stdout.contains(&b_new)).then_some(())
    })
    .await;
    agent.kill9().await;

    let receiver = Receiver::start_on(addr).await;
    let mut agent = scope.agent(&url, &[]);
    let want: Vec<String> = {
        let mut w = vec![
            format!("{host}/{a}"),
            format!("{host}/{b}"),
            format!("{host}/{gone}"),
        ];
        w.sort();
        w
    };
    eventually("every deployment delivered", || {
        let mut got = names(&receiver.accepted());
        got.dedup();
        (got == want).then_some(())
    })
    .await;
    eventually("the queue to drain", || {
        (pending_count(&scope) == 0).then_some(())
    })
    .await;
    // Each key in its latest state: b's last report is the recreated container's digest.
    let got = receiver.accepted();
    let b_last = got
        .iter()
        .rev()
        .find(|r| r.name() == format!("{host}/{b}"))
        .unwrap();
    assert_eq!(
        b_last.url(),
        engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );
    agent.stop().await;

    // Restarted with everything delivered: nothing reaches the endpoint.
    let before = receiver.received().len();
    let mut agent = scope.agent(&url, &[]);
    agent.ready().await;
    // The reconciliation found everything delivered already (it says so once queued)...
    agent
        .logged("the restart's reconciliation queued nothing", |l| {
            l.contains("reconciled with the engine") && l.contains("queued=0")
        })
        .await;
    // ...and the queue the dispatcher sends from is empty.
    assert_eq!(pending_count(&scope), 0);
    agent.stop().await;
    assert_eq!(
        receiver.received().len(),
        before,
        "a restart re-sent: {:#?}",
        &receiver.received()[before..]
    );
}

engine_test!(a_refused_report_is_dead_lettered_and_can_be_retried);
async fn a_refused_report_is_dead_lettered_and_can_be_retried(engine: Engine) {
    let scope = Scope::new(engine, "dead");
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let bad = scope.name("bad");
    receiver.answer_for_name(&format!("{host}/{bad}"), Answer::status(400));
    let _agent = scope.agent(&receiver.url(), &[]);
    scope.run(&["--name", &bad], APP1);
    let good = scope.name("good");
    scope.run(&["--name", &good], APP1);
    eventually("both attempts", || {
        (receiver.received().len() >= 2).then_some(())
    })
    .await;
    let state = scope.state_dir();
    let state = state.to_str().unwrap();
    let dead = eventually("the dead letter", || {
        let out = scope.command(&["queue", "dead", "--state-dir", state]);
        out.stdout
            .starts_with("1 dead letter\n")
            .then_some(out.stdout)
    })
    .await;
    assert!(dead.contains(&bad) && dead.contains("status=400"), "{dead}");
    // A report queued after the dead letter, delivered: the dispatcher has read the queue
    // since, and the refused report, were it still due, is older and would have gone first.
    let later = scope.name("later");
    scope.run(&["--name", &later], APP1);
    receiver
        .accepted_report(
            "the report queued after the dead letter",
            &format!("{host}/{later}"),
        )
        .await;
    // Nothing is left waiting for a retry either (once the delivery is committed).
    eventually("an empty queue", || {
        (pending_count(&scope) == 0).then_some(())
    })
    .await;
    let attempts = receiver
        .received()
        .iter()
        .filter(|r| r.name().ends_with(&bad))
        .count();
    assert_eq!(attempts, 1, "a 400 was retried");

    receiver.clear_per_name();
    let out = scope.command(&["queue", "retry", "--state-dir", state]);
    assert!(
        out.stdout.contains("1 dead letter moved back"),
        "{}",
        out.stdout
    );
    eventually("the retried report delivered", || {
        receiver
            .accepted()
            .iter()
            .any(|r| r.name().ends_with(&bad))
            .then_some(())
    })
    .await;
}

engine_test!(wrong_credentials_hold_the_queue_without_dropping);
async fn wrong_credentials_hold_the_queue_without_dropping(engine: Engine) {
    let scope = Scope::new(engine, "unauth");
    let receiver = Receiver::start().await;
    receiver.set_default(Answer::status(401));
    let agent = scope.agent(&receiver.url(), &[]);
    for n in ["x", "y", "z"] {
        scope.run(&["--name", &scope.name(n)], APP1);
    }
    eventually("attempts", || {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    // Held, not dropped (the probes while held are the dispatcher's unit tests').
    eventually("three held", || (pending_count(&scope) == 3).then_some(())).await;
    eventually("the rejected token in the log", || {
        agent
            .stderr()
            .contains("rejected the API token")
            .then_some(())
    })
    .await;
    receiver.set_default(Answer::status(200));
    eventually("all delivered", || {
        (receiver.accepted().len() == 3).then_some(())
    })
    .await;
    let dead = scope.command(&[
        "queue",
        "dead",
        "--state-dir",
        scope.state_dir().to_str().unwrap(),
    ]);
    assert!(dead.stdout.starts_with("0 dead letters"), "{}", dead.stdout);
}

engine_test!(engine_restart_is_survived_and_reconciled);
async fn engine_restart_is_survived_and_reconciled(engine: Engine) {
    let scope = Scope::new(engine, "enginerestart");
    let mut engine = PrivateEngine::start(engine).await;
    let receiver = Receiver::start().await;
    let listen = unused_addr();
    let agent = scope.agent(
        &receiver.url(),
        &[
            "--docker-host",
            &engine.host,
            "--listen",
            &listen.to_string(),
        ],
    );
    agent.ready().await;
    let host = engine.host_name();
    let label = scope.selector();
    engine.run(&label, "first");
    receiver
        .accepted_report("the first container", &format!("{host}/first"))
        .await;
    engine.stop().await;
    let readyz = format!("http://{listen}/readyz");
    eventually_async("readiness to drop with the engine", || async {
        let r = reqwest::get(&readyz).await.ok()?;
        let status = r.status().as_u16();
        let body = r.text().await.ok()?;
        (status == 503 && body.contains("engine not connected")).then_some(())
    })
    .await;
    engine.boot().await;
    engine.run(&label, "second");
    receiver
        .accepted_report(
            "the container started around the engine restart",
            &format!("{host}/second"),
        )
        .await;
    assert!(
        agent.stderr().contains("lost the engine's event stream"),
        "{}",
        agent.stderr()
    );
    engine.docker(&["rm", "-f", "first", "second"]);
}

engine_test!(a_damaged_queue_file_is_moved_aside);
async fn a_damaged_queue_file_is_moved_aside(engine: Engine) {
    let scope = Scope::new(engine, "damaged");
    let state = scope.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("deploytrack.db"), vec![0x42u8; 16384]).unwrap();
    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &[]);
    let name = scope.name("after");
    scope.run(&["--name", &name], APP1);
    eventually("delivery with a fresh queue", || {
        receiver
            .accepted()
            .iter()
            .any(|r| r.name().ends_with(&name))
            .then_some(())
    })
    .await;
    let err = agent.stderr();
    assert!(
        err.contains("moved the damaged queue database aside"),
        "{err}"
    );
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("deploytrack.db.damaged-")
        });
    assert!(aside, "no damaged copy kept");
}

engine_test!(a_burst_is_queued_with_few_syncs_and_drains);
async fn a_burst_is_queued_with_few_syncs_and_drains(engine: Engine) {
    let scope = Scope::new(engine, "burst");
    const N: usize = 200;
    let addr = unused_addr();
    let listen = unused_addr();
    let agent = scope.agent(&endpoint_url(addr), &["--listen", &listen.to_string()]);
    agent.ready().await;
    let commits_before = metric(listen, "deploytrack_queue_commits_total")
        .await
        .unwrap_or(0.0);
    // Create first, then start in parallel: the engine's start rate is the limit.
    let ids: Vec<String> = (0..N).map(|_| scope.create(&[], APP1)).collect();
    let chunks: Vec<Vec<String>> = ids.chunks(N / 8).map(|c| c.to_vec()).collect();
    let started = std::time::Instant::now();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                let mut args = vec!["start".to_string()];
                args.extend(chunk);
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                engine.docker(&argv);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let start_time = started.elapsed();
    eventually("the burst queued", || {
        (pending_count(&scope) == N).then_some(())
    })
    .await;
    let queued_within = started.elapsed();
    let commits = eventually("the commits metric", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(metric(listen, "deploytrack_queue_commits_total"))
        })
    })
    .await
        - commits_before;
    // How far the starts batch depends on the engine's pace, which is not the test's (the
    // batching itself is measured at a set pace, on the simulated engine, below). What holds
    // at any pace: while changes keep coming the queue commits once per window (1 s), and a
    // pause commits only after 250 ms without a change, so commits are at least 250 ms apart.
    let bound = 1.0 + queued_within.as_secs_f64() / COMMIT_IDLE.as_secs_f64();
    eprintln!(
        "{N} starts in {start_time:?} were queued within {queued_within:?} with {commits} commits (bound {bound:.0})"
    );
    assert!(
        commits <= bound,
        "{commits} commits for {N} reports queued within {queued_within:?}"
    );

    let receiver = Receiver::start_on(addr).await;
    eventually("the backlog drained", || {
        (receiver.accepted().len() >= N).then_some(())
    })
    .await;
    let mut keys = names(&receiver.accepted());
    keys.dedup();
    assert_eq!(keys.len(), N);
}

/// The queue's idle commit (`COMMIT_IDLE` in src/outbox/store.rs).
const COMMIT_IDLE: Duration = Duration::from_millis(250);

/// Batching where the pace is the test's own: the simulated engine sends 200 starts evenly
/// within one second, the endpoint is down. The group commit holds them to a few syncs.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_at_a_set_pace_is_committed_in_few_syncs() {
    use deploytrack_test_support::sim::{Plan, Sim};
    let scope = Scope::offline("burst-sim");
    const N: usize = 200;
    let sim = Sim::start(&scope.dir, vec![], None);
    let listen = unused_addr().to_string();
    let (token, state) = (scope.token_file(), scope.state_dir());
    let args: Vec<String> = [
        "run",
        "--url",
        &endpoint_url(unused_addr()),
        "--token-file",
        token.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--docker-host",
        &sim.docker_host(),
        "--listen",
        &listen,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = scope.spawn_agent(&args, &[]);
    agent.ready().await;
    let listen: std::net::SocketAddr = listen.parse().unwrap();
    let commits_before = metric(listen, "deploytrack_queue_commits_total")
        .await
        .unwrap_or(0.0);
    sim.fire(Plan {
        first: 0,
        count: N,
        spread: Some(Duration::from_secs(1)),
    })
    .unwrap();
    eventually("the burst queued", || {
        (pending_count(&scope) == N).then_some(())
    })
    .await;
    let commits = metric(listen, "deploytrack_queue_commits_total")
        .await
        .expect("the commits metric")
        - commits_before;
    eprintln!("{N} starts within 1 s were queued with {commits} commits");
    assert!(
        commits * 4.0 <= N as f64,
        "{commits} commits for {N} reports"
    );
}

engine_test!(sigterm_lets_requests_in_flight_finish_and_keeps_the_rest);
async fn sigterm_lets_requests_in_flight_finish_and_keeps_the_rest(engine: Engine) {
    let scope = Scope::new(engine, "shutdown");
    let receiver = Receiver::start().await;
    let slow = |secs| Answer {
        delay: Some(Duration::from_secs(secs)),
        ..Answer::status(200)
    };
    // A request in flight past the grace period (within it, one finishes and counts as
    // delivered: the dispatcher's unit tests): the agent still exits 0 at the deadline, and
    // the report stays queued.
    receiver.set_default(slow(20));
    let mut agent = scope.agent(&receiver.url(), &["--shutdown-timeout", "500ms"]);
    scope.run(&[], APP2);
    eventually("a request in flight", || {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    let stopping = std::time::Instant::now();
    agent.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?}",
        stopping.elapsed()
    );
    assert_eq!(
        pending_count(&scope),
        1,
        "the unfinished report was not kept"
    );
    let summary = agent
        .stderr()
        .lines()
        .find(|l| l.contains("reports stay queued and are sent after the next start"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no shutdown summary: {}", agent.stderr()));
    assert!(summary.contains("queued=1"), "{summary}");
    assert!(summary.contains("dead_letters=0"), "{summary}");
}

/// The agent as a dry run: `run` without --url (or with --dry-run), watching this scope.
fn dry_run_agent(scope: &Scope, extra: &[&str]) -> Agent {
    let mut args = vec![
        "run".to_string(),
        "--label-selector".to_string(),
        scope.selector(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    scope.spawn_agent(&args, &[])
}

engine_test!(a_dry_run_with_a_state_dir_does_not_silence_the_real_run);
async fn a_dry_run_with_a_state_dir_does_not_silence_the_real_run(engine: Engine) {
    let scope = Scope::new(engine, "dryfirst");
    let host = engine.host_name();
    let containers: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|n| scope.name(n))
        .collect();
    for name in &containers {
        scope.run(&["--name", name], APP1);
    }
    let want: Vec<String> = {
        let mut w: Vec<String> = containers.iter().map(|n| format!("{host}/{n}")).collect();
        w.sort();
        w
    };
    let receiver = Receiver::start().await;
    let printed_all = |agent: &Agent| {
        let out = agent.stdout();
        containers
            .iter()
            .all(|n| out.contains(&format!("{host}/{n}")))
    };
    // As the issue did it: a dry run with a state dir, then the real run on that state dir;
    // then the same with --url and an explicit --dry-run.
    for (try_dir, extra) in [
        ("try", vec![]),
        (
            "try-url",
            vec!["--url".to_string(), receiver.url(), "--dry-run".to_string()],
        ),
    ] {
        let state = scope.dir.join(try_dir);
        let state_arg = state.to_str().unwrap().to_string();
        let mut args: Vec<&str> = vec!["--state-dir", &state_arg];
        args.extend(extra.iter().map(String::as_str));
        let sent_before = receiver.received().len();
        let mut dry = dry_run_agent(&scope, &args);
        // Printed on stdout, then logged on stderr once settled: wait for both.
        eventually("every report printed and logged", || {
            (printed_all(&dry)
                && dry
                    .stderr()
                    .contains("dry run: deployment printed, not sent"))
            .then_some(())
        })
        .await;
        let stderr = dry.stderr();
        assert!(stderr.contains("deploytrack started: dry run"), "{stderr}");
        assert!(
            stderr.contains("dry run: deployment printed, not sent"),
            "{stderr}"
        );
        assert!(!stderr.contains("deployment reported"), "{stderr}");
        if !extra.is_empty() {
            assert!(
                stderr.contains("--dry-run is set: this is a dry run, reports are printed on stdout and not sent to http://"),
                "{stderr}"
            );
        }
        dry.stop().await;
        assert!(
            !state.join("deploytrack.db").exists(),
            "the dry run wrote a queue in {}",
            state.display()
        );
        assert_eq!(receiver.received().len(), sent_before, "the dry run sent");

        let before = receiver.accepted().len();
        let mut real = scope.agent_in(&state, &receiver.url(), &[], &[]);
        eventually("every deployment delivered by the real run", || {
            let mut got = names(&receiver.accepted()[before..]);
            got.dedup();
            (got == want).then_some(())
        })
        .await;
        real.stop().await;
    }
}

engine_test!(dead_letters_superseded_by_a_delivery_are_not_listed_counted_or_retried);
async fn dead_letters_superseded_by_a_delivery_are_not_listed_counted_or_retried(engine: Engine) {
    let scope = Scope::new(engine, "superseded");
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let state = scope.state_dir();
    let state = state.to_str().unwrap();
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| scope.name(n)).collect();
    // A wrong URL: every report refused.
    receiver.set_default(Answer::status(400));
    // Started once the agent runs, so each container is reported once, from its start
    // event: containers started just before the agent are seen twice (their replayed events
    // and the reconciliation), and each report of a refused key is a dead letter of its own.
    let mut agent = scope.agent(&receiver.url(), &[]);
    agent.ready().await;
    for name in &names {
        scope.run(&["--name", name], APP1);
    }
    eventually("three dead letters", || {
        let out = scope.command(&["queue", "dead", "--state-dir", state]);
        out.stdout
            .starts_with(
                "3 dead letters
",
            )
            .then_some(())
    })
    .await;
    agent.stop().await;

    // A newer image for each key, and an endpoint that takes it: all three keys are
    // delivered with a newer report. (The refused reports themselves are not sent again by
    // the restart's reconciliation: that is the operator's `queue retry`.)
    receiver.set_default(Answer::status(202));
    for name in &names {
        scope.docker(&["rm", "-f", name]);
        scope.run(&["--name", name], APP2);
    }
    let listen = unused_addr();
    let _agent = scope.agent(&receiver.url(), &["--listen", &listen.to_string()]);
    for name in &names {
        receiver
            .accepted_report("the key delivered", &format!("{host}/{name}"))
            .await;
    }
    let dead = eventually("the dead letters superseded", || {
        let out = scope.command(&["queue", "dead", "--state-dir", state]);
        out.stdout
            .starts_with("0 dead letters")
            .then_some(out.stdout)
    })
    .await;
    assert!(
        dead.starts_with(
            "0 dead letters (3 superseded by a later delivery of their key, not shown)"
        ),
        "{dead}"
    );
    let gauge = eventually_async("the dead-letter gauge", || {
        metric(listen, "deploytrack_queue_dead_letters")
    })
    .await;
    assert_eq!(gauge, 0.0);
    let sent = scope.command(&["queue", "sent", "--state-dir", state]);
    assert!(sent.status.success(), "{}", sent.stderr);
    assert!(
        sent.stdout
            .starts_with("3 sent (the last report of each key)"),
        "{}",
        sent.stdout
    );
    for name in &names {
        let line = sent
            .stdout
            .lines()
            .find(|l| l.contains(&format!("{host}/{name}")))
            .unwrap_or_else(|| panic!("{name} not listed: {}", sent.stdout));
        assert!(line.contains("	status=202	delivered="), "{line}");
        assert!(line.contains(" ago ("), "{line}");
    }
    let before = receiver.received().len();
    let out = scope.command(&["queue", "retry", "--state-dir", state]);
    assert!(
        out.stdout.contains(
            "0 dead letters moved back into the queue; 3 superseded by a later delivery of their key were dropped"
        ),
        "{}",
        out.stdout
    );
    // A marker delivered after the retry: nothing stale went out before it.
    let marker = scope.name("marker");
    scope.run(&["--name", &marker], APP1);
    receiver
        .accepted_report("the marker", &format!("{host}/{marker}"))
        .await;
    assert_eq!(
        receiver.received().len(),
        before + 1,
        "stale duplicates were sent: {:#?}",
        &receiver.received()[before..]
    );
}

engine_test!(sync_once_says_what_it_waits_for_and_ends_with_a_summary);
async fn sync_once_says_what_it_waits_for_and_ends_with_a_summary(engine: Engine) {
    let scope = Scope::new(engine, "syncsummary");
    let addr = unused_addr();
    let url = endpoint_url(addr);
    let host = engine.host_name();
    let name = scope.name("one");
    scope.run(&["--name", &name], APP1);
    scope.run(&["--label", "deploytrack.enable=false"], APP1);
    let sync = |timeout: &str| scope.sync_once(&url, &["--timeout", timeout]);
    // The endpoint down: a reminder after 10 s, then the summary at the time limit.
    let started = std::time::Instant::now();
    let out = sync("15s");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(started.elapsed() >= Duration::from_secs(15));
    let reminder = out
        .stderr
        .lines()
        .find(|l| {
            l.contains(
                "the endpoint still does not accept reports; they stay queued and are retried",
            )
        })
        .unwrap_or_else(|| panic!("no reminder: {}", out.stderr));
    assert!(reminder.contains("queued=1"), "{reminder}");
    assert!(reminder.contains("last_error=cannot connect"), "{reminder}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "deploytrack: sync gave up after 15s: 0 delivered, 0 unchanged (already delivered or queued), 1 container skipped, 0 refused (deploytrack queue dead), 1 still queued; they stay queued for the agent or the next sync"
    );
    // The endpoint back: delivered, and the summary says so.
    let receiver = Receiver::start_on(addr).await;
    let out = sync("30s");
    assert!(out.status.success(), "{}", out.stderr);
    assert!(receiver.reported(&format!("{host}/{name}")));
    assert!(
        out.stderr.contains("sync finished: 1 delivered, 1 unchanged (already delivered or queued), 1 container skipped, 0 refused (deploytrack queue dead), 0 still queued"),
        "{}",
        out.stderr
    );
    let out = sync("30s");
    assert!(
        out.stderr
            .contains("sync finished: 0 delivered, 1 unchanged"),
        "{}",
        out.stderr
    );
}

engine_test!(a_replayed_start_of_a_removed_container_does_not_undo_its_replacement);
async fn a_replayed_start_of_a_removed_container_does_not_undo_its_replacement(engine: Engine) {
    let scope = Scope::new(engine, "replay");
    let addr = unused_addr();
    let url = endpoint_url(addr);
    let host = engine.host_name();
    let mut agent = scope.agent(&url, &[]);
    agent.ready().await;
    // Recreated at once under the same name: both starts fall within the replay margin.
    let web = scope.name("web");
    let old = scope.run(&["--name", &web], APP1);
    engine.docker(&["rm", "-f", &old]);
    scope.run(&["--name", &web], APP2);
    let new_digest = engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app");
    let state = scope.state_dir();
    eventually("the replacement's report queued", || {
        let list = scope.command(&["queue", "list", "--state-dir", state.to_str().unwrap()]);
        list.stdout.contains(&new_digest).then_some(())
    })
    .await;
    // A crash: the restart replays the removed container's start from its event.
    agent.kill9().await;
    let receiver = Receiver::start_on(addr).await;
    let agent = scope.agent(&url, &[]);
    agent.ready().await;
    let name = format!("{host}/{web}");
    receiver.accepted_report("the replacement", &name).await;
    eventually("the queue to drain", || {
        (pending_count(&scope) == 0).then_some(())
    })
    .await;
    let reports: Vec<String> = receiver
        .accepted()
        .iter()
        .filter(|r| r.name() == name)
        .map(|r| r.url().to_string())
        .collect();
    assert_eq!(
        reports.last(),
        Some(&new_digest),
        "the removed container's image won: {reports:?}\n{}",
        agent.stderr()
    );
}
