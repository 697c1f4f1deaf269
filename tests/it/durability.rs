//! Durable delivery: nothing lost across crashes, outages and engine restarts.

use std::time::Duration;

use crate::common::*;

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

#[tokio::test(flavor = "multi_thread")]
async fn outage_crash_and_restart_lose_nothing_and_replay_nothing() {
    let scope = Scope::new("crash");
    let addr = unused_addr();
    let url = endpoint_url(addr);
    let host = engine_host_name();
    let mut agent = scope.agent(&url, &[]);
    agent.ready().await;
    let (a, b, gone) = (scope.name("a"), scope.name("b"), scope.name("gone"));
    scope.run(&["--name", &a], APP1);
    let b_id = scope.run(&["--name", &b], APP1);
    let gone_id = scope.run(&["--name", &gone], APP1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    docker(&["rm", "-f", &gone_id]);
    // b is recreated with a new image while the endpoint is down: only the latest counts.
    docker(&["rm", "-f", &b_id]);
    scope.run(&["--name", &b], APP2);
    eventually("three reports queued", || {
        (pending_count(&scope) == 3).then_some(())
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
        repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );
    agent.stop().await;

    // Restarted with everything delivered: nothing reaches the endpoint.
    let before = receiver.received().len();
    let mut agent = scope.agent(&url, &[]);
    agent.ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.stop().await;
    assert_eq!(
        receiver.received().len(),
        before,
        "a restart re-sent: {:#?}",
        &receiver.received()[before..]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let scope = Scope::new("retryafter");
    let receiver = Receiver::start().await;
    receiver.script([Answer {
        retry_after: Some("2".into()),
        ..Answer::status(503)
    }]);
    let _agent = scope.agent(&receiver.url(), &[]);
    scope.run(&[], APP1);
    let got = eventually("the retry", || {
        let r = receiver.received();
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert_eq!(got[0].status, 503);
    assert_eq!(got[1].status, 200);
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_report_is_dead_lettered_and_can_be_retried() {
    let scope = Scope::new("dead");
    let receiver = Receiver::start().await;
    let host = engine_host_name();
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
            .starts_with("1 dead letters")
            .then_some(out.stdout)
    })
    .await;
    assert!(dead.contains(&bad) && dead.contains("status=400"), "{dead}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = receiver
        .received()
        .iter()
        .filter(|r| r.name().ends_with(&bad))
        .count();
    assert_eq!(attempts, 1, "a 400 was retried");

    receiver.clear_per_name();
    let out = scope.command(&["queue", "retry", "--state-dir", state]);
    assert!(
        out.stdout.contains("1 dead letters moved back"),
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

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_hold_the_queue_without_dropping() {
    let scope = Scope::new("unauth");
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
    eventually("three held", || (pending_count(&scope) == 3).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pending_count(&scope), 3);
    assert!(agent.stderr().contains("rejected the API token"));
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

#[tokio::test(flavor = "multi_thread")]
async fn engine_restart_is_survived_and_reconciled() {
    let scope = Scope::new("enginerestart");
    let mut engine = PrivateEngine::start().await;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_queue_file_is_moved_aside() {
    let scope = Scope::new("damaged");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_queued_with_few_syncs_and_drains() {
    let scope = Scope::new("burst");
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
                docker(&argv);
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
    let commits = eventually("the commits metric", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(metric(listen, "deploytrack_queue_commits_total"))
        })
    })
    .await
        - commits_before;
    eprintln!("{N} starts in {start_time:?} were queued with {commits} commits");
    assert!(
        commits * 4.0 <= N as f64,
        "{commits} commits for {N} reports"
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

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_in_flight_finish_and_keeps_the_rest() {
    let scope = Scope::new("shutdown");
    let receiver = Receiver::start().await;
    let slow = |secs| Answer {
        delay: Some(Duration::from_secs(secs)),
        ..Answer::status(200)
    };
    // Within the grace period: the request finishes, the report counts as delivered.
    receiver.set_default(slow(1));
    let mut agent = scope.agent(&receiver.url(), &["--shutdown-timeout", "5s"]);
    scope.run(&[], APP1);
    eventually("a request in flight", || {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    agent.stop().await;
    assert_eq!(
        pending_count(&scope),
        0,
        "the finished request was not recorded"
    );
    // Past it: the agent still exits 0 at the deadline, and the report stays queued.
    receiver.set_default(slow(20));
    let mut agent = scope.agent(&receiver.url(), &["--shutdown-timeout", "500ms"]);
    scope.run(&[], APP2);
    eventually("a second request in flight", || {
        (receiver.received().len() >= 2).then_some(())
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
}
