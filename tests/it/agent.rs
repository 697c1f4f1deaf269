//! The agent end to end: engine events to deployment reports.

use deploytrack_test_support::*;

fn by_name<'a>(received: &'a [receiver::Received], name: &str) -> Vec<&'a receiver::Received> {
    received.iter().filter(|r| r.name() == name).collect()
}

engine_test!(reports_running_and_started_containers_in_the_api_format);
async fn reports_running_and_started_containers_in_the_api_format(engine: Engine) {
    let scope = Scope::new(engine, "basic");
    let receiver = Receiver::start().await;
    let before = scope.name("before");
    let before_id = scope.run(&["--name", &before], APP1);
    let agent = scope.agent(&receiver.url(), &[]);
    let host = engine.host_name();
    let want_before = format!("{host}/{before}");
    let first = eventually("the container running before start", || {
        by_name(&receiver.accepted(), &want_before)
            .first()
            .cloned()
            .cloned()
    })
    .await;
    let digest = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/atomist/resource/test");
    assert_eq!(
        first.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert!(first
        .user_agent
        .as_deref()
        .unwrap_or_default()
        .starts_with("deploytrack/"));
    assert_eq!(
        first.body,
        serde_json::json!({
            "image": {"url": digest, "name": want_before},
            "environment": {"name": "deployed"},
            "platform": {"os": "linux", "architecture": "amd64"}
        })
    );

    let after = scope.name("after");
    scope.run(&["--name", &after], APP2);
    let want_after = format!("{host}/{after}");
    let second = eventually("the container started after", || {
        by_name(&receiver.accepted(), &want_after)
            .first()
            .cloned()
            .cloned()
    })
    .await;
    assert_eq!(
        second.url(),
        engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );
    assert!(!before_id.is_empty());
    assert!(!agent.stderr().contains(TOKEN));
}

engine_test!(replicas_get_distinct_names_and_labels_fill_placeholders);
async fn replicas_get_distinct_names_and_labels_fill_placeholders(engine: Engine) {
    let scope = Scope::new(engine, "names");
    let receiver = Receiver::start().await;
    let agent = scope.agent(
        &receiver.url(),
        &[
            "--name-template",
            "{host}/{compose_project}/{compose_service}/{compose_number}",
        ],
    );
    let host = engine.host_name();
    let project = scope.name("shop");
    for n in ["1", "2"] {
        scope.run(
            &[
                "--label",
                &format!("com.docker.compose.project={project}"),
                "--label",
                "com.docker.compose.service=web",
                "--label",
                &format!("com.docker.compose.container-number={n}"),
            ],
            APP1,
        );
    }
    // Not a Compose container: the template falls back to {host}/{container}, and says why.
    let plain = scope.name("plain");
    scope.run(&["--name", &plain], APP1);
    let names = eventually("three reports", || {
        let got = receiver.accepted();
        (got.len() >= 3).then(|| {
            let mut n: Vec<String> = got.iter().map(|r| r.name().to_string()).collect();
            n.sort();
            n
        })
    })
    .await;
    let mut want = vec![
        format!("{host}/{project}/web/1"),
        format!("{host}/{project}/web/2"),
        format!("{host}/{plain}"),
    ];
    want.sort();
    assert_eq!(names, want);
    let stderr = agent.stderr();
    let told: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("no value for a placeholder"))
        .collect();
    assert_eq!(told.len(), 1, "{stderr}");
    assert!(
        told[0].contains("{compose_project}") && told[0].contains(&plain),
        "{stderr}"
    );
}

engine_test!(labels_override_and_select);
async fn labels_override_and_select(engine: Engine) {
    let scope = Scope::new(engine, "labels");
    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &["--environment", "staging"]);
    let host = engine.host_name();
    let prod = scope.name("prod");
    scope.run(
        &[
            "--name",
            &prod,
            "--label",
            "deploytrack.environment=production",
        ],
        APP1,
    );
    let custom = scope.name("custom");
    scope.run(&["--label", &format!("deploytrack.name={custom}")], APP1);
    let out = scope.name("optout");
    scope.run(
        &["--name", &out, "--label", "deploytrack.enable=false"],
        APP1,
    );
    // Out of scope: not labelled with this test's selector.
    let stranger = scope.name("stranger");
    let stranger_id = engine.docker(&["run", "-d", "--name", &stranger, APP1]);
    let local = scope.name("local");
    scope.run(&["--name", &local], LOCAL1);
    let last = scope.name("last");
    scope.run(&["--name", &last], APP1);

    receiver
        .accepted_report("the last container", &format!("{host}/{last}"))
        .await;
    agent.ready().await;
    let got = receiver.accepted();
    let prod_report = by_name(&got, &format!("{host}/{prod}"));
    assert_eq!(prod_report.len(), 1);
    assert_eq!(prod_report[0].environment(), "production");
    let custom_report = by_name(&got, &custom);
    assert_eq!(custom_report.len(), 1);
    assert_eq!(custom_report[0].environment(), "staging");
    assert!(
        by_name(&got, &format!("{host}/{out}")).is_empty(),
        "opted out was reported"
    );
    assert!(
        by_name(&got, &format!("{host}/{stranger}")).is_empty(),
        "out of scope was reported"
    );
    assert!(
        by_name(&got, &format!("{host}/{local}")).is_empty(),
        "local image was reported"
    );
    assert_eq!(got.len(), 3, "{got:#?}");
    // One warning per image, naming it.
    let warnings = agent.stderr().matches(engine.unreportable_line()).count();
    assert_eq!(warnings, 1, "{}", agent.stderr());
    assert!(agent.stderr().contains(LOCAL1));
    engine.docker(&["rm", "-f", &stranger_id]);
}

engine_test!(require_label_reports_only_opted_in);
async fn require_label_reports_only_opted_in(engine: Engine) {
    let scope = Scope::new(engine, "optin");
    let receiver = Receiver::start().await;
    let listen = unused_addr();
    let _agent = scope.agent(
        &receiver.url(),
        &["--require-label", "--listen", &listen.to_string()],
    );
    let host = engine.host_name();
    let plain = scope.name("plain");
    scope.run(&["--name", &plain], APP1);
    let opted = scope.name("opted");
    scope.run(
        &["--name", &opted, "--label", "deploytrack.enable=true"],
        APP1,
    );
    receiver
        .accepted_report("the opted-in container", &format!("{host}/{opted}"))
        .await;
    // The plain container was decided on: skipped, never to be reported.
    eventually_async("the plain container skipped", || async {
        metric(
            listen,
            "deploytrack_containers_skipped_total{reason=\"not_opted_in\"}",
        )
        .await
        .filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(receiver.accepted().len(), 1, "{:#?}", receiver.accepted());
}

engine_test!(digest_references_and_the_matching_repository);
async fn digest_references_and_the_matching_repository(engine: Engine) {
    let scope = Scope::new(engine, "digests");
    let receiver = Receiver::start().await;
    let _agent = scope.agent(&receiver.url(), &[]);
    let host = engine.host_name();
    let app_digest = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    let mirror_digest = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/mirror");
    let pinned = scope.name("pinned");
    scope.run(&["--name", &pinned], &app_digest);
    let mirror = scope.name("mirror");
    scope.run(&["--name", &mirror], MIRROR1);
    let app = scope.name("app");
    scope.run(&["--name", &app], APP1);
    // Labelled linux/arm64/v8 (its busybox is amd64, so it runs here).
    let arm = scope.name("arm");
    scope.run(&["--name", &arm], ARM1);
    let got = eventually("four reports", || {
        let got = receiver.accepted();
        (got.len() >= 4).then_some(got)
    })
    .await;
    let arm_report = by_name(&got, &format!("{host}/{arm}"))[0];
    assert_eq!(
        arm_report.url(),
        engine.repo_digest(ARM1, "localhost:5000/deploytrack-test/arm")
    );
    assert_eq!(
        arm_report.body["platform"],
        serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
    );
    assert_eq!(
        by_name(&got, &format!("{host}/{pinned}"))[0].url(),
        app_digest
    );
    assert_eq!(
        by_name(&got, &format!("{host}/{mirror}"))[0].url(),
        mirror_digest
    );
    assert_eq!(by_name(&got, &format!("{host}/{app}"))[0].url(), app_digest);
}

engine_test!(restart_sends_nothing_and_recreate_sends_the_new_digest);
async fn restart_sends_nothing_and_recreate_sends_the_new_digest(engine: Engine) {
    let scope = Scope::new(engine, "recreate");
    let receiver = Receiver::start().await;
    let _agent = scope.agent(&receiver.url(), &[]);
    let host = engine.host_name();
    let web = scope.name("web");
    let id = scope.run(&["--name", &web], APP1);
    let key = format!("{host}/{web}");
    eventually("the first report", || {
        (by_name(&receiver.accepted(), &key).len() == 1).then_some(())
    })
    .await;
    engine.docker(&["restart", "-t", "0", &id]);
    // A marker container started after the restart proves the restart's events were handled.
    let marker = scope.name("marker");
    scope.run(&["--name", &marker], APP1);
    receiver
        .accepted_report("the marker", &format!("{host}/{marker}"))
        .await;
    assert_eq!(
        by_name(&receiver.accepted(), &key).len(),
        1,
        "a restart re-sent the report"
    );
    // Compose-style recreate: same name, new image.
    engine.docker(&["rm", "-f", &id]);
    scope.run(&["--name", &web], APP2);
    let reports = eventually("the recreate's report", || {
        let r: Vec<_> = by_name(&receiver.accepted(), &key)
            .into_iter()
            .cloned()
            .collect();
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(
        reports[1].url(),
        engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );
}

engine_test!(report_stops_handles_a_container_removed_at_once);
async fn report_stops_handles_a_container_removed_at_once(engine: Engine) {
    let scope = Scope::new(engine, "stops");
    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &["--report-stops"]);
    agent.ready().await;
    let host = engine.host_name();
    let brief = scope.name("brief");
    // Started with --rm and removed right away.
    scope.run(&["--rm", "--name", &brief], APP1);
    engine.docker(&["rm", "-f", &brief]);
    let once = scope.name("once");
    let label = scope.selector();
    // Exits by itself (code 3) and is removed by the engine at once.
    let status = engine
        .docker_command()
        .args([
            "run", "--rm", "--label", &label, "--name", &once, APP1, "/bin/sh", "-c", "exit 3",
        ])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let key = format!("{host}/{once}");
    let stop = eventually("the --rm container's stop", || {
        by_name(&receiver.accepted(), &key)
            .into_iter()
            .find(|r| r.body["container"]["state"] == "stopped")
            .cloned()
    })
    .await;
    assert_eq!(stop.body["container"]["exit_code"], 3);
    assert_eq!(
        stop.url(),
        engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app")
    );
    assert!(stop.body["container"]["id"].as_str().unwrap().len() >= 12);
    let brief_reports = by_name(&receiver.accepted(), &format!("{host}/{brief}")).len();
    assert!(brief_reports >= 1, "the removed container was not reported");
    // Logged as a stop, not as a deployment.
    let stderr = agent.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&key)).collect();
    assert!(
        lines.iter().any(|l| l.contains("stop reported")),
        "{stderr}"
    );
    let running = by_name(&receiver.accepted(), &key)
        .into_iter()
        .filter(|r| r.body["container"]["state"] == "running")
        .count();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("deployment reported"))
            .count(),
        running,
        "{stderr}"
    );
}

engine_test!(a_restart_that_sends_nothing_says_so_and_odd_enable_labels_are_named);
async fn a_restart_that_sends_nothing_says_so_and_odd_enable_labels_are_named(engine: Engine) {
    let scope = Scope::new(engine, "quietrestart");
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let plain = scope.name("plain");
    let odd = scope.name("odd");
    scope.run(&["--name", &plain], APP1);
    scope.run(
        &["--name", &odd, "--label", "deploytrack.enable=maybe"],
        APP1,
    );
    let mut agent = scope.agent(&receiver.url(), &[]);
    agent.ready().await;
    for name in [&plain, &odd] {
        receiver
            .accepted_report("the first run's report", &format!("{host}/{name}"))
            .await;
    }
    assert!(
        agent.stderr().contains(
            "the label deploytrack.enable=\"maybe\" is neither yes nor no; such containers are treated as unlabelled (use true, false, 1, 0, yes or no)"
        ),
        "{}",
        agent.stderr()
    );
    agent.stop().await;
    let agent = scope.agent(&receiver.url(), &[]);
    agent.ready().await;
    let line = agent
        .stderr()
        .lines()
        .find(|l| l.contains("reconciled with the engine"))
        .map(str::to_string)
        .unwrap();
    // Nothing was sent, so nothing is called queued (replayed events add to unchanged).
    assert!(line.contains("running=2 queued=0 unchanged="), "{line}");
}

engine_test!(an_environment_label_that_breaks_the_rule_is_named_once_and_the_default_applies);
/// A `deploytrack.environment` label that breaks the rule of `--environment` (a tab, a
/// space at either end): one warning naming the container and the label, however often the
/// container is seen, and the report goes to the default environment.
async fn an_environment_label_that_breaks_the_rule_is_named_once_and_the_default_applies(
    engine: Engine,
) {
    let scope = Scope::new(engine, "envlabel");
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let tabbed = scope.name("tabbed");
    let spaced = scope.name("spaced");
    scope.run(
        &[
            "--name",
            &tabbed,
            "--label",
            "deploytrack.environment=prod\t",
        ],
        APP1,
    );
    let listen = unused_addr();
    let listen_text = listen.to_string();
    let agent = scope.agent(
        &receiver.url(),
        &["--environment", "staging", "--listen", &listen_text],
    );
    let got = receiver
        .accepted_report("the tabbed container", &format!("{host}/{tabbed}"))
        .await;
    assert_eq!(got.environment(), "staging");
    scope.run(
        &[
            "--name",
            &spaced,
            "--label",
            "deploytrack.environment= prod",
        ],
        APP1,
    );
    let got = receiver
        .accepted_report("the spaced container", &format!("{host}/{spaced}"))
        .await;
    assert_eq!(got.environment(), "staging");
    // Resolved again after a restart (unchanged: nothing sent): still one warning each.
    engine.docker(&["restart", "-t", "0", &tabbed]);
    eventually_async("the restart resolved as unchanged", || async {
        metric(listen, "deploytrack_reports_unchanged_total")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    let warned = |name: &str| {
        agent
            .stderr()
            .lines()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains(
                        "the label deploytrack.environment of the container is not an environment name",
                    )
                    && l.contains(&format!("container={name}"))
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let tab = warned(&tabbed);
    assert_eq!(tab.len(), 1, "{}", agent.stderr());
    assert!(
        tab[0].contains(r#"not an environment name: "prod\t" holds control characters; reported under the default environment"#)
            && tab[0].ends_with("environment=staging"),
        "{}",
        tab[0]
    );
    let space = warned(&spaced);
    assert_eq!(space.len(), 1, "{}", agent.stderr());
    assert!(
        space[0].contains(r#"" prod" begins or ends with a space"#),
        "{}",
        space[0]
    );
}

engine_test!(token_never_appears_in_output_at_any_level);
async fn token_never_appears_in_output_at_any_level(engine: Engine) {
    let scope = Scope::new(engine, "secret");
    let receiver = Receiver::start().await;
    receiver.set_default(Answer::status(401));
    let mut agent = scope.agent(&receiver.url(), &["--log-level", "trace"]);
    scope.run(&[], APP1);
    eventually("a rejected attempt", || {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    agent
        .logged("the rejection in the log", |l| {
            l.contains("rejected the API token")
        })
        .await;
    agent.stop().await;
    let output = format!("{}{}", agent.stdout(), agent.stderr());
    assert!(output.contains("rejected the API token"), "{output}");
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "no verbose logs were written"
    );
    assert!(!output.contains(TOKEN), "the token leaked:\n{output}");
    // Config errors and the doctor don't print it either.
    let token = scope.token_file();
    let out = scope.command(&[
        "check",
        "--url",
        "http://127.0.0.1:1/x",
        "--token-file",
        token.to_str().unwrap(),
        "--docker-host",
        "unix:///nonexistent.sock",
        "--state-dir",
        scope.state_dir().to_str().unwrap(),
    ]);
    assert!(!format!("{}{}", out.stdout, out.stderr).contains(TOKEN));
}

engine_test!(dry_run_prints_reports);
async fn dry_run_prints_reports(engine: Engine) {
    let scope = Scope::new(engine, "dry");
    let selector = scope.selector();
    let mut agent = scope.spawn_agent(&["run".into(), "--label-selector".into(), selector], &[]);
    agent.ready().await;
    // SIGHUP does not end it (the default action would) and says what to do instead.
    agent.signal("HUP");
    eventually("the SIGHUP answer", || {
        agent.stderr().contains("SIGHUP ignored").then_some(())
    })
    .await;
    let name = scope.name("dry");
    scope.run(&["--name", &name], APP1);
    let line = eventually("a report on stdout", || {
        agent
            .stdout()
            .lines()
            .find(|l| l.contains(&name))
            .map(str::to_string)
    })
    .await;
    let body: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        body["image"]["url"],
        engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app")
    );
    assert!(agent.stderr().contains("dry run"));
    agent.stop().await;
}

engine_test!(a_rename_reports_the_new_name);
async fn a_rename_reports_the_new_name(engine: Engine) {
    let scope = Scope::new(engine, "rename");
    let receiver = Receiver::start().await;
    let _agent = scope.agent(&receiver.url(), &[]);
    let host = engine.host_name();
    let (before, after) = (scope.name("before"), scope.name("after"));
    let id = scope.run(&["--name", &before], APP1);
    receiver
        .accepted_report("the first name", &format!("{host}/{before}"))
        .await;
    engine.docker(&["rename", &id, &after]);
    receiver
        .accepted_report("the new name", &format!("{host}/{after}"))
        .await;
}

engine_test!(with_report_stops_a_rename_retires_the_old_name);
async fn with_report_stops_a_rename_retires_the_old_name(engine: Engine) {
    let scope = Scope::new(engine, "rename-stops");
    let receiver = Receiver::start().await;
    let _agent = scope.agent(&receiver.url(), &["--report-stops"]);
    let host = engine.host_name();
    let (before, after) = (scope.name("before"), scope.name("after"));
    let (old, new) = (format!("{host}/{before}"), format!("{host}/{after}"));
    let id = scope.run(&["--name", &before], APP1);
    let running = receiver.accepted_report("the first name", &old).await;
    engine.docker(&["rename", &id, &after]);
    let renamed = receiver.accepted_report("the new name", &new).await;
    let stop = eventually("the old name to stop", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name() == old && r.body["container"]["state"] == "stopped")
    })
    .await;
    let container = |r: &receiver::Received| r.body["container"].clone();
    assert_eq!(container(&running)["state"], "running");
    assert_eq!(container(&renamed)["state"], "running");
    for r in [&running, &renamed, &stop] {
        assert_eq!(container(r)["id"], id.as_str(), "{:#?}", r.body);
    }
    // The container still runs: no exit code; the new name keeps the start time, the old
    // one stops at the rename.
    assert!(
        container(&stop).get("exit_code").is_none(),
        "{:#?}",
        stop.body
    );
    assert_eq!(container(&renamed)["since"], container(&running)["since"]);
    let since = |r: &receiver::Received| {
        humantime::parse_rfc3339(container(r)["since"].as_str().unwrap()).unwrap()
    };
    assert!(since(&running) < since(&stop));
    let names: Vec<_> = receiver
        .accepted()
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == old).count(), 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == new).count(), 1, "{names:?}");
}

engine_test!(a_tls_engine_is_reached_with_the_docker_cli_settings);
async fn a_tls_engine_is_reached_with_the_docker_cli_settings(engine: Engine) {
    let scope = Scope::new(engine, "tls");
    let engine = PrivateEngine::start_with_tls(engine).await;
    let (addr, certs) = engine.tls.clone().unwrap();
    let receiver = Receiver::start().await;
    let selector = scope.selector();
    let token = scope.token_file();
    let state = scope.state_dir();
    let args: Vec<String> = [
        "run",
        "--state-dir",
        state.to_str().unwrap(),
        "--url",
        &receiver.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--docker-host",
        &addr,
        "--label-selector",
        &selector,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let certs = certs.to_str().unwrap();
    let agent = scope.spawn_agent(
        &args,
        &[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", certs)],
    );
    agent.ready().await;
    let host = engine.host_name();
    engine.run(&selector, "over-tls");
    receiver
        .accepted_report(
            "the container reported over TLS",
            &format!("{host}/over-tls"),
        )
        .await;
    // https:// means TLS too; plain tcp:// to a TLS engine says what it got.
    let https = addr.replace("tcp://", "https://");
    let out = agent_command(&["check", "--docker-host", &https])
        .env("DOCKER_CERT_PATH", certs)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK   engine: reachable"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = agent_command(&["check", "--docker-host", &addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL engine") && stdout.contains("DOCKER_TLS_VERIFY"),
        "{stdout}"
    );
    engine.docker(&["rm", "-f", "over-tls"]);
}
