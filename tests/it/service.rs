//! Running it as a service: admin endpoints, the pipeline and doctor commands, unit file.

use std::time::Duration;

use deploytrack_test_support::*;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

engine_test!(admin_endpoints_report_health_metrics_and_deployments);
async fn admin_endpoints_report_health_metrics_and_deployments(engine: Engine) {
    let scope = Scope::new(engine, "admin");
    let receiver = Receiver::start().await;
    let listen = unused_addr();
    let agent = scope.agent(&receiver.url(), &["--listen", &listen.to_string()]);
    agent.ready().await;
    let name = scope.name("web");
    scope.run(&["--name", &name], APP1);
    scope.run(&[], LOCAL1);
    eventually("delivery", || {
        (!receiver.accepted().is_empty()).then_some(())
    })
    .await;
    let base = format!("http://{listen}");
    // The locally made image is skipped: for want of any repo digest on the classic store,
    // for want of a registry that confirms it on the containerd store.
    let skipped = match engine {
        Engine::Classic => "deploytrack_containers_skipped_total{reason=\"no_digest\"} 1",
        Engine::Containerd => "deploytrack_containers_skipped_total{reason=\"unverified\"} 1",
    };
    eventually_async("the local image to be skipped", || async {
        let (_, metrics) = get(&format!("{base}/metrics")).await;
        metrics.lines().any(|l| l == skipped).then_some(())
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready\n".to_string())
    );
    let want = [
        "deploytrack_events_received_total{action=\"start\"} 2",
        "deploytrack_reports_enqueued_total 1",
        "deploytrack_reports_delivered_total 1",
        skipped,
        "deploytrack_queue_depth 0",
        "deploytrack_queue_dead_letters 0",
        "deploytrack_engine_connected 1",
        "deploytrack_engine_reconnects_total 0",
    ];
    // Counted once committed, which may follow the delivery by up to a second.
    let metrics = eventually_async("the metrics of one report and one skip", || async {
        let (status, metrics) = get(&format!("{base}/metrics")).await;
        (status == 200 && want.iter().all(|w| metrics.lines().any(|l| l == *w))).then_some(metrics)
    })
    .await;
    assert!(metrics.contains("deploytrack_last_delivery_timestamp_seconds"));
    assert!(metrics.contains("deploytrack_queue_oldest_pending_age_seconds"));
    let (status, deployments) = get(&format!("{base}/deployments")).await;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&deployments).unwrap();
    let key = format!("{}/{name}", engine.host_name());
    assert_eq!(
        view["deployed"][&key]["image"],
        engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app")
    );
    assert_eq!(get(&format!("{base}/nope")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn report_command_for_pipelines() {
    let scope = Scope::offline("report");
    let receiver = Receiver::start().await;
    let token = scope.token_file();
    let url = receiver.url();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let image = format!("registry.example.com/team/api:1.4@{digest}");
    let report = |url: &str, image: &str, extra: &[&str]| {
        let mut args = vec![
            "report",
            "--url",
            url,
            "--token-file",
            token.to_str().unwrap(),
            "--image",
            image,
        ];
        args.extend_from_slice(extra);
        scope.command(&args)
    };
    let out = report(
        &url,
        &image,
        &[
            "--name",
            "api",
            "--environment",
            "production",
            "--platform",
            "linux/arm64/v8",
        ],
    );
    assert!(out.status.success(), "{}", out.stderr);
    let got = receiver.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body,
        serde_json::json!({
            "image": {"url": format!("registry.example.com/team/api@{digest}"), "name": "api"},
            "environment": {"name": "production"},
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}
        })
    );
    assert_eq!(
        got[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // Not pinned by digest: a usage error, before anything is sent.
    let out = report(&url, "nginx:latest", &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        out.stderr.contains("not pinned by digest"),
        "{}",
        out.stderr
    );
    assert_eq!(receiver.received().len(), 1);
    // A transient failure is retried; a refusal is reported with its status.
    receiver.script([Answer::status(503)]);
    let out = report(&url, &image, &["--retry-initial", "100ms"]);
    assert!(out.status.success(), "{}", out.stderr);
    for (status, message) in [
        (422, "refused the report (422)"),
        (403, "rejected the API token"),
    ] {
        receiver.set_default(Answer::status(status));
        let out = report(&url, &image, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stderr.contains(message), "{}", out.stderr);
    }
    // The endpoint down: gives up after --timeout with the reason.
    let down = endpoint_url(unused_addr());
    let started = std::time::Instant::now();
    let out = report(&down, &image, &["--timeout", "2s", "--retry-initial", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("not delivered within 2s: cannot connect"),
        "{}",
        out.stderr
    );
    // It gives up at the time limit, not before it.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

engine_test!(sync_once_delivers_and_exits);
async fn sync_once_delivers_and_exits(engine: Engine) {
    let scope = Scope::new(engine, "sync");
    let receiver = Receiver::start().await;
    let url = receiver.url();
    for n in ["one", "two"] {
        scope.run(&["--name", &scope.name(n)], APP1);
    }
    let sync = |extra: &[&str]| scope.sync_once(&url, extra);
    let out = sync(&[]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(receiver.accepted().len(), 2);
    let out = sync(&[]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(receiver.received().len(), 2, "an unchanged sync sent again");
    let out = sync(&["--force"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(receiver.accepted().len(), 4);
    let out = scope.command(&["sync", "--url", &url]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
}

engine_test!(check_reports_each_check);
async fn check_reports_each_check(engine: Engine) {
    let scope = Scope::new(engine, "check");
    let receiver = Receiver::start().await;
    let token = scope.token_file();
    let state = scope.state_dir();
    let base = [
        "check",
        "--url",
        &receiver.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let out = scope.command(&base);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for check in [
        "config",
        "token",
        "engine",
        "engine API",
        "state dir",
        "endpoint",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("OK") && l.contains(&format!(" {check}:"))),
            "no OK line for {check}:\n{}",
            out.stdout
        );
    }
    receiver.set_default(Answer::status(401));
    let mut bad: Vec<&str> = base.to_vec();
    bad.extend(["--docker-host", "unix:///nonexistent/docker.sock"]);
    let out = scope.command(&bad);
    assert_eq!(out.status.code(), Some(1));
    let fails: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert_eq!(fails.len(), 2, "{}", out.stdout);
    assert!(fails[0].contains("engine") && fails[0].contains("/nonexistent/docker.sock"));
    assert!(fails[1].contains("endpoint") && fails[1].contains("rejected the API token"));
    assert!(
        out.stderr.contains("deploytrack: 2 checks failed"),
        "{}",
        out.stderr
    );

    // Each line names what it used: the file, the token's source, the engine's address.
    let config = scope.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\nstate_dir = \"{}\"\n",
            receiver.url(),
            state.display()
        ),
    )
    .unwrap();
    receiver.set_default(Answer::status(200));
    let out = engine
        .agent_command(&["--config", config.to_str().unwrap(), "check"])
        .env("DEPLOYTRACK_TOKEN", TOKEN)
        .env("DOCKER_HOST", engine.host())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        format!("OK   config: {} is valid", config.display()),
        "OK   token: from DEPLOYTRACK_TOKEN".to_string(),
        format!(
            "OK   engine: reachable at {} (from DOCKER_HOST)",
            engine.host()
        ),
    ] {
        assert!(
            stdout.lines().any(|l| l == want),
            "no {want:?} in:\n{stdout}"
        );
    }
    let out = scope.command(&[
        "check",
        "--token-file",
        token.to_str().unwrap(),
        "--docker-host",
        "unix:///nonexistent/docker.sock",
    ]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l == format!("OK   token: from --token-file {}", token.display())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(the address is from --docker-host)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("OK   endpoint: none configured: this is a dry run"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("deploytrack: 1 check failed"),
        "{}",
        out.stderr
    );

    let out = scope.command(&["check", "--environment", ""]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.starts_with("FAIL config: invalid --environment"),
        "{}",
        out.stdout
    );
}

engine_test!(check_probes_without_side_effects_and_runs_every_check);
/// `check` probes the endpoint with a POST of a report the API must refuse (no image.url):
/// nothing is recorded, a refusal is the healthy answer, an endpoint that takes it is a
/// warning. Every check runs, whatever failed before it, and one line sums them up.
async fn check_probes_without_side_effects_and_runs_every_check(engine: Engine) {
    use std::os::unix::fs::PermissionsExt;
    let scope = Scope::new(engine, "probe");
    let receiver = Receiver::start().await;
    let token = scope.token_file();
    let state = scope.state_dir();
    let url = receiver.url();
    // Only this test's containers (none): the others' images are no business of its lines.
    let selector = scope.selector();
    let check = |token: &std::path::Path| {
        scope.command(&[
            "check",
            "--url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--label-selector",
            &selector,
        ])
    };
    let out = check(&token);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.contains(&format!("OK   endpoint: {url} is there: it read the probe (a report without image.url) and refused it (400), as it must, without refusing the token").as_str()),
        "{}",
        out.stdout
    );
    let oks = lines.iter().filter(|l| l.starts_with("OK")).count();
    assert_eq!(
        lines.last().copied(),
        Some(format!("all {oks} checks OK").as_str()),
        "{}",
        out.stdout
    );
    let probes = receiver.received();
    assert_eq!(probes.len(), 1, "{probes:#?}");
    assert_eq!(probes[0].method, "POST");
    assert_eq!(
        probes[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(probes[0].url().is_empty(), "{:?}", probes[0].body);
    assert!(receiver.accepted().is_empty());
    assert!(!state.exists(), "check created the state dir");

    // An endpoint that takes an invalid report: a warning, not a failure.
    receiver.accept_invalid(true);
    let out = check(&token);
    assert!(out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout.lines().any(|l| l.starts_with(&format!(
            "WARN endpoint: {url} accepted the probe, a report without image.url (200)"
        ))),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .ends_with("checks OK, 1 warning"),
        "{}",
        out.stdout
    );
    receiver.accept_invalid(false);

    // A token every user can read: its own WARN line beside the OK of its source.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&token);
    assert!(out.status.success(), "{}", out.stdout);
    let warned = format!(
        "WARN token: the token file {} is readable by every user (mode 644): chmod o-r {}",
        token.display(),
        token.display()
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with(&warned)),
        "{}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("readable by every user"),
        "{}",
        out.stderr
    );

    // An empty token file fails its line; the engine, the state dir and the endpoint are
    // still checked, and the endpoint is not sent a request without a token.
    let empty = scope.dir.join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let before = receiver.received().len();
    let out = check(&empty);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    for prefix in [
        "OK   config:",
        "FAIL token: invalid --token-file: the token from --token-file",
        "OK   engine: reachable at",
        "OK   state dir:",
        "FAIL endpoint:",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no {prefix:?} in:\n{}",
            out.stdout
        );
    }
    assert!(
        lines.last().unwrap_or(&"").starts_with("2 checks failed, "),
        "{}",
        out.stdout
    );
    assert_eq!(receiver.received().len(), before);
}

#[test]
fn man_page_and_completions_come_from_the_cli() {
    let out = Scope::command_only(&["man"]);
    assert!(out.status.success());
    assert!(
        out.stdout.starts_with(".ie") || out.stdout.contains(".TH deploytrack"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(out.stdout.contains("report"));
    let out = Scope::command_only(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(out.stdout.contains("--label-selector"));
}

/// The tests and the benchmarks start the binary cargo built for them.
#[test]
fn the_support_library_starts_the_binary_cargo_built() {
    assert_eq!(
        agent_bin(),
        std::path::Path::new(env!("CARGO_BIN_EXE_deploytrack"))
    );
}

#[test]
fn systemd_unit_is_hardened() {
    // scripts/test-env.sh installs systemd-analyze (Debian's package systemd) when missing.
    deploytrack_test_support::engine::ensure_test_env();
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/deploytrack.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install Debian's package systemd, or run scripts/test-env.sh")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure line: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"));
    assert!(score <= 4.0, "{line}");
}

engine_test!(check_warns_of_a_default_host_name_and_the_setting_replaces_it);
async fn check_warns_of_a_default_host_name_and_the_setting_replaces_it(engine: Engine) {
    use deploytrack_test_support::proxy::{EngineProxy, Rule};
    let scope = Scope::new(engine, "hostname");
    let proxy = EngineProxy::start(engine, &scope.dir).await;
    // An engine on a host cloned from a stock image.
    proxy.add(Rule::edit("/info", |info| {
        info["Name"] = "raspberrypi".into()
    }));
    let engine = proxy.host();
    let out = scope.command(&["check", "--docker-host", &engine]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let warning = out
        .stdout
        .lines()
        .find(|l| l.starts_with("WARN host name:"))
        .unwrap_or_else(|| panic!("no warning:\n{}", out.stdout));
    assert!(
        warning.contains("\"raspberrypi\"") && warning.contains("--host-name"),
        "{warning}"
    );
    let out = scope.command(&["check", "--docker-host", &engine, "--host-name", "edge-7"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // (Other tests' containers on the shared engine may draw evidence warnings.)
    assert!(!out.stdout.contains("WARN host name"), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("OK   host name: edge-7")),
        "{}",
        out.stdout
    );

    // The agent names containers by the setting, not by the engine's name.
    let receiver = Receiver::start().await;
    let _agent = scope.agent(
        &receiver.url(),
        &["--docker-host", &engine, "--host-name", "edge-7"],
    );
    let web = scope.name("web");
    scope.run(&["--name", &web], APP1);
    receiver
        .accepted_report(
            "the container under the set host name",
            &format!("edge-7/{web}"),
        )
        .await;
    assert_eq!(receiver.accepted().len(), 1, "{:#?}", receiver.accepted());
}

engine_test!(a_state_dir_remembers_the_settings_that_shape_names);
/// A state dir remembers the settings that shape names: a `sync --once` whose settings
/// differ refuses, naming both values, unless told to go on; `check` shows the difference;
/// the agent says it once at start and remembers the new settings.
async fn a_state_dir_remembers_the_settings_that_shape_names(engine: Engine) {
    let scope = Scope::new(engine, "settings");
    let receiver = Receiver::start().await;
    let url = receiver.url();
    let state = scope.state_dir();
    scope.run(&["--name", &scope.name("web")], APP1);
    let mut agent = scope.agent(&url, &["--environment", "staging"]);
    eventually("the report under staging", || {
        (receiver.accepted().len() == 1).then_some(())
    })
    .await;
    agent.stop().await;

    // An operator's sync that forgets --environment: refused, nothing sent.
    let out = scope.sync_once(&url, &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let refusal = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        refusal,
        format!(
            "deploytrack: sync refused: the state dir {} last delivered with --environment \"staging\", and this sync has --environment \"deployed\": its reports would open new streams at the endpoint, which keeps every stream it was ever sent; give the same settings, or pass --accept-settings to deliver with these and remember them",
            state.display()
        )
    );
    assert_eq!(receiver.received().len(), 1, "{:#?}", receiver.received());

    // `check` shows it, and agrees when the settings are the same.
    let selector = scope.selector();
    let check = |extra: &[&str]| scope.scoped_command("check", &url, extra).stdout;
    let out = check(&[]);
    let warned = format!(
        "WARN settings: {} last delivered with --environment \"staging\", and these have --environment \"deployed\": ",
        state.display()
    );
    assert!(out.lines().any(|l| l.starts_with(&warned)), "{out}");
    let out = check(&["--environment", "staging"]);
    let same = format!(
        "OK   settings: those {} last delivered with: --environment \"staging\", --name-template (the default), --host-name {:?}, --require-label false, --label-selector {selector:?}",
        state.display(),
        engine.host_name()
    );
    assert!(out.lines().any(|l| l == same), "{out}");

    // Told to go on, it delivers under the new settings and remembers them.
    let out = scope.sync_once(&url, &["--accept-settings"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        receiver
            .accepted()
            .iter()
            .any(|r| r.environment() == "deployed"),
        "{:#?}",
        receiver.accepted()
    );

    // The agent back on staging: one warning at start, with both values, then nothing more.
    let changed = format!(
        "the settings that shape report names changed since the state dir {} last delivered: --environment \"deployed\" before, --environment \"staging\" now",
        state.display()
    );
    let mut agent = scope.agent(&url, &["--environment", "staging"]);
    agent.ready().await;
    let said = agent
        .stderr()
        .lines()
        .filter(|l| l.contains(&changed))
        .count();
    assert_eq!(said, 1, "{}", agent.stderr());
    assert!(agent
        .stderr()
        .lines()
        .any(|l| l.contains("WARN") && l.contains(&changed)));
    agent.stop().await;
    let mut agent = scope.agent(&url, &["--environment", "staging"]);
    agent.ready().await;
    assert!(
        !agent.stderr().contains("settings that shape"),
        "{}",
        agent.stderr()
    );
    agent.stop().await;
    let out = scope.sync_once(&url, &["--environment", "staging"]);
    assert!(out.status.success(), "{}", out.stderr);
}
