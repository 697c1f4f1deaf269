//! The endpoint side of bad input: odd answers, silence, TLS and proxies. Each ends in a
//! clear line, a counted failure, no panic, and the report delivered once it can be.

use std::time::Duration;

use deploytrack_test_support::*;

/// The longest line the agent wrote; an answer's body must not flood the log.
fn longest_line(text: &str) -> usize {
    text.lines().map(str::len).max().unwrap_or(0)
}

engine_test!(huge_and_garbage_answers_are_one_short_line_and_the_report_still_arrives);
async fn huge_and_garbage_answers_are_one_short_line_and_the_report_still_arrives(engine: Engine) {
    let scope = Scope::new(engine, "garbage");
    let receiver = Receiver::start().await;
    let mut garbage = String::new();
    while garbage.len() < 8 * 1024 * 1024 {
        garbage.push_str("\u{1b}[31m<html>\n\r\0 ünï 🚀 not json at all\t");
    }
    receiver.script([
        Answer {
            body: garbage.clone(),
            ..Answer::status(503)
        },
        Answer {
            body: garbage.clone(),
            ..Answer::status(400)
        },
    ]);
    receiver.set_default(Answer {
        body: garbage,
        ..Answer::status(200)
    });
    let listen = unused_addr();
    let listen_text = listen.to_string();
    let agent = scope.agent(&receiver.url(), &["--listen", &listen_text]);
    let first = scope.name("first");
    let second = scope.name("second");
    scope.run(&["--name", &first], APP1);
    let host = engine.host_name();
    // The 503 holds the queue, the 400 dead-letters one report; the next is accepted in
    // spite of its 8 MiB of garbage.
    eventually("a dead letter and an accepted report", || {
        (receiver.received().len() >= 2).then_some(())
    })
    .await;
    scope.run(&["--name", &second], APP2);
    receiver
        .accepted_report("the report after the garbage", &format!("{host}/{second}"))
        .await;
    let failures = metric(
        listen,
        "deploytrack_delivery_failures_total{reason=\"http_503\"}",
    )
    .await;
    let stderr = agent.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        longest_line(&stderr) < 2048,
        "a log line of {} bytes",
        longest_line(&stderr)
    );
    assert!(!stderr.contains('\u{1b}'), "escape codes reached the log");
    // The refusal's own line (a scope id in other lines may hold "400" or "503").
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("the endpoint refused this report") && l.contains("status=400")),
        "the refusal is not logged: {stderr}"
    );
    assert!(
        failures.unwrap_or(0.0) >= 1.0 || stderr.contains("the endpoint answered 503"),
        "the 503 was neither counted nor logged"
    );
    // The rejected report waits in the dead letters, to be retried by hand (once the queue
    // has committed it: the dead letter is written in the queue's open transaction).
    let state = scope.state_dir();
    let dead = eventually("the dead letter in the queue file", || {
        let dead = scope.command(&["queue", "dead", "--state-dir", state.to_str().unwrap()]);
        dead.stdout
            .starts_with("1 dead letter\n")
            .then_some(dead.stdout)
    })
    .await;
    assert!(dead.contains("status=400"), "{dead}");
}

engine_test!(an_endpoint_that_never_answers_times_out_and_is_retried);
async fn an_endpoint_that_never_answers_times_out_and_is_retried(engine: Engine) {
    let scope = Scope::new(engine, "silent");
    let receiver = Receiver::start().await;
    receiver.script([Answer {
        delay: Some(Duration::from_secs(3600)),
        ..Answer::status(200)
    }]);
    let agent = scope.agent(&receiver.url(), &["--request-timeout", "1s"]);
    let name = scope.name("silent");
    scope.run(&["--name", &name], APP1);
    let host = engine.host_name();
    // The receiver notes a request when it arrives, so the silent attempt is counted too.
    let attempts = || {
        receiver
            .received()
            .iter()
            .filter(|r| r.name() == format!("{host}/{name}"))
            .count()
    };
    eventually("a second attempt after the silent one", || {
        (attempts() >= 2).then_some(())
    })
    .await;
    let state = scope.state_dir();
    eventually("an empty queue", || {
        let out = scope.command(&["queue", "list", "--state-dir", state.to_str().unwrap()]);
        (!out.stdout.contains(&name)).then_some(())
    })
    .await;
    let stderr = agent.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("timed out") || l.contains("timeout")),
        "the timeout is not logged: {stderr}"
    );
}

engine_test!(a_wrong_endpoint_url_holds_the_queue_and_names_the_url);
async fn a_wrong_endpoint_url_holds_the_queue_and_names_the_url(engine: Engine) {
    let scope = Scope::new(engine, "wrongurl");
    let receiver = Receiver::start().await;
    receiver.set_default(Answer::status(404));
    // A user:password@ in the URL beside the token would be refused (one Authorization
    // header): the agent is told the plain URL.
    let url = receiver.url();
    let agent = scope.agent(&url, &["--concurrency", "4"]);
    let host = engine.host_name();
    let names: Vec<String> = (0..3).map(|i| scope.name(&format!("w{i}"))).collect();
    for name in &names {
        scope.run(&["--name", name], APP1);
    }
    let line = eventually("the wrong URL in the log", || {
        agent
            .stderr()
            .lines()
            .find(|l| l.contains("no endpoint at this URL (404)"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&receiver.url().replace("http://", "")),
        "{line}"
    );
    // Not dead-lettered: delivered once the URL answers.
    receiver.set_default(Answer::status(200));
    for name in &names {
        receiver
            .accepted_report(
                "the report once the URL is right",
                &format!("{host}/{name}"),
            )
            .await;
    }
    assert_eq!(agent.stderr().matches("no endpoint at this URL").count(), 1);
    let state = scope.state_dir();
    let dead = scope.command(&["queue", "dead", "--state-dir", state.to_str().unwrap()]);
    for name in &names {
        assert!(!dead.stdout.contains(name.as_str()), "{}", dead.stdout);
    }
    // `check` POSTs a report without image.url: it fails on 404, 405 and 410 (a URL that
    // takes no POST), and takes the refusal of that report (400, 422) as the healthy answer;
    // `report` fails at once, naming the URL.
    let token = scope.token_file();
    for (status, ok) in [
        (404, false),
        (410, false),
        (405, false),
        (400, true),
        (422, true),
    ] {
        receiver.set_default(Answer::status(status));
        let out = scope.command(&[
            "check",
            "--url",
            &receiver.url(),
            "--token-file",
            token.to_str().unwrap(),
        ]);
        let endpoint = out
            .stdout
            .lines()
            .find(|l| l.contains("endpoint:"))
            .unwrap_or_default()
            .to_string();
        assert_eq!(endpoint.starts_with("OK"), ok, "{status}: {}", out.stdout);
    }
    receiver.set_default(Answer::status(410));
    let digest = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    let before = receiver.received().len();
    let out = scope.command(&[
        "report",
        "--url",
        &receiver.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--image",
        &digest,
        "--timeout",
        "30s",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        receiver.received().len(),
        before + 1,
        "report retried a 410"
    );
    assert!(
        out.stderr.contains(&receiver.url()) && out.stderr.contains("gone (410)"),
        "{}",
        out.stderr
    );
}

engine_test!(a_redirect_holds_the_queue_and_names_where_it_points);
async fn a_redirect_holds_the_queue_and_names_where_it_points(engine: Engine) {
    let scope = Scope::new(engine, "redirect");
    let receiver = Receiver::start().await;
    let moved = "https://user:secret-in-url@elsewhere.example/atomist/resource/new";
    receiver.set_default(Answer {
        location: Some(moved.into()),
        ..Answer::status(301)
    });
    let agent = scope.agent(&receiver.url(), &[]);
    let name = scope.name("moved");
    scope.run(&["--name", &name], APP1);
    let host = engine.host_name();
    let line = agent
        .logged("the redirect in the log", |l| {
            l.contains("the endpoint answered 301") && l.contains("points to")
        })
        .await;
    assert!(
        line.contains("elsewhere.example/atomist/resource/new"),
        "{line}"
    );
    assert!(
        !line.contains("secret-in-url"),
        "credentials in a URL were logged: {line}"
    );
    // Not followed (a POST would become a GET), not dead-lettered: delivered once the
    // endpoint answers again.
    assert!(receiver.received().iter().all(|r| r.method == "POST"));
    receiver.set_default(Answer::status(200));
    receiver
        .accepted_report(
            "the report after the redirect is fixed",
            &format!("{host}/{name}"),
        )
        .await;
    let state = scope.state_dir();
    let dead = scope.command(&["queue", "dead", "--state-dir", state.to_str().unwrap()]);
    assert!(!dead.stdout.contains(&name), "{}", dead.stdout);

    // `check` says where it points; `report` fails at once instead of retrying till --timeout.
    receiver.set_default(Answer {
        location: Some(moved.into()),
        ..Answer::status(301)
    });
    let token = scope.token_file();
    let url = receiver.url();
    let common = [
        "--url",
        url.as_str(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    let mut check = vec!["check", "--docker-host", "unix:///nonexistent.sock"];
    check.extend_from_slice(&common);
    let out = scope.command(&check);
    assert!(
        out.stdout.contains(&format!(
            "FAIL endpoint: {url} answered 301 (a redirect) to https://<redacted>@elsewhere.example/atomist/resource/new: set --url to where it points"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("deploytrack: 2 checks failed"),
        "{}",
        out.stderr
    );
    let mut report = vec![
        "report",
        "--image",
        "registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--timeout",
        "1m",
    ];
    report.extend_from_slice(&common);
    let started = std::time::Instant::now();
    let out = scope.command(&report);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("the endpoint answered 301 Moved Permanently and points to https://<redacted>@elsewhere.example/atomist/resource/new: set --url to that address"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// `report --timeout` and `Retry-After`: no attempt comes before the time the endpoint
/// asked for, the last one included; when that time is past the deadline, `report` gives up
/// at once and says so.
#[tokio::test(flavor = "multi_thread")]
async fn report_never_tries_again_before_retry_after() {
    let scope = Scope::offline("retryafter");
    let receiver = Receiver::start().await;
    receiver.set_default(Answer {
        retry_after: Some("2".into()),
        ..Answer::status(429)
    });
    let token = scope.token_file();
    let out = scope.command(&[
        "report",
        "--url",
        &receiver.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--image",
        "registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--timeout",
        "3s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let got = receiver.received();
    // At 0 s, then at 2 s; the third would fall at 4 s, past the deadline.
    assert_eq!(got.len(), 2, "{got:#?}");
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert!(
        out.stderr.lines().any(
            |l| l.contains("report not delivered yet; retrying") && l.ends_with(" retry_in=2s")
        ),
        "durations print as humantime: {}",
        out.stderr
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("deploytrack: not delivered within 3s: the endpoint answered 429 Too Many Requests, and it asked to wait 2s (Retry-After), longer than what is left of --timeout ("),
        "{last}"
    );
}

engine_test!(an_https_url_to_a_plain_http_endpoint_is_a_configuration_error);
async fn an_https_url_to_a_plain_http_endpoint_is_a_configuration_error(engine: Engine) {
    let scope = Scope::new(engine, "plainhttp");
    let receiver = Receiver::start().await;
    let url = format!("https://{}/atomist/resource/test", receiver.addr);
    let token = scope.token_file();
    let said = "the endpoint answered in plain HTTP to a TLS (https://) request: the URL says https:// but the server at that address speaks http://";
    let out = scope.command(&[
        "check",
        "--url",
        &url,
        "--token-file",
        token.to_str().unwrap(),
        "--docker-host",
        "unix:///nonexistent.sock",
    ]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("FAIL endpoint:") && l.contains(said)),
        "{}",
        out.stdout
    );
    let started = std::time::Instant::now();
    let out = scope.command(&[
        "report",
        "--url",
        &url,
        "--token-file",
        token.to_str().unwrap(),
        "--image",
        "registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(said), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "retried: {:?}",
        started.elapsed()
    );

    // The agent holds the queue with one error, and delivers once the URL is fixed.
    let name = scope.name("plain");
    scope.run(&["--name", &name], APP1);
    let mut agent = scope.agent(&url, &[]);
    let state = scope.state_dir();
    eventually("a few attempts held", || {
        let out = scope.command(&["queue", "list", "--state-dir", state.to_str().unwrap()]);
        out.stdout
            .lines()
            .any(|l| l.contains(&name) && !l.contains("attempts=0") && !l.contains("attempts=1\t"))
            .then_some(())
    })
    .await;
    agent.stop().await;
    let stderr = agent.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(said)).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("ERROR")
            && errors[0]
                .contains("the endpoint cannot take reports until the configuration is fixed"),
        "{}",
        errors[0]
    );
    assert!(!stderr.contains("InvalidContentType"), "{stderr}");
    let _agent = scope.agent(&receiver.url(), &[]);
    let host = engine.host_name();
    receiver
        .accepted_report(
            "the report once the URL is fixed",
            &format!("{host}/{name}"),
        )
        .await;
}

engine_test!(a_private_ca_is_trusted_only_through_ca_file);
async fn a_private_ca_is_trusted_only_through_ca_file(engine: Engine) {
    let scope = Scope::new(engine, "tls");
    let certs = scope.dir.join("certs");
    make_certificates(&certs, "127.0.0.1");
    let receiver = Receiver::start_tls(
        &certs.join("server-cert.pem"),
        &certs.join("server-key.pem"),
    )
    .await;
    let url = receiver.https_url();
    let token = scope.token_file();
    let ca = certs.join("ca.pem");
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--docker-host",
            "unix:///nonexistent.sock",
        ];
        args.extend_from_slice(extra);
        Scope::command_only(&args)
    };
    // Without the CA: verification fails, in one line that says why.
    let out = check(&[]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("endpoint"))
        .unwrap_or_default()
        .to_string();
    assert!(line.starts_with("FAIL"), "{}", out.stdout);
    assert!(
        line.to_lowercase().contains("certificate"),
        "the reason is not named: {line}"
    );
    // With it: the endpoint answers.
    let out = check(&["--ca-file", ca.to_str().unwrap()]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("OK") && l.contains("endpoint")),
        "{}",
        out.stdout
    );
    // A CA file that is not one fails the config check, naming the setting.
    let out = check(&["--ca-file", token.to_str().unwrap()]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("--ca-file")),
        "{}",
        out.stdout
    );

    // The agent: held without the CA, delivered with it, nothing lost in between.
    let name = scope.name("tls");
    scope.run(&["--name", &name], APP1);
    let probes = receiver.received().len();
    let mut agent = scope.agent(&url, &[]);
    eventually("a certificate failure in the log", || {
        agent
            .stderr()
            .to_lowercase()
            .contains("certificate")
            .then_some(())
    })
    .await;
    assert_eq!(
        receiver.received().len(),
        probes,
        "a request crossed unverified TLS"
    );
    agent.stop().await;
    let _agent = scope.agent(&url, &["--ca-file", ca.to_str().unwrap()]);
    let host = engine.host_name();
    receiver
        .accepted_report("the report over verified TLS", &format!("{host}/{name}"))
        .await;
}

engine_test!(proxies_from_the_environment_are_honoured);
async fn proxies_from_the_environment_are_honoured(engine: Engine) {
    let scope = Scope::new(engine, "proxy");
    let proxy = Receiver::start().await;
    let proxy_url = format!("http://{}", proxy.addr);
    let token = scope.token_file();
    // Names under .invalid never resolve: only a proxy can carry these requests.
    let plain = "http://deploytrack-endpoint.invalid/atomist/resource/test";
    let secure = "https://deploytrack-endpoint.invalid/atomist/resource/test";
    let check = |url: &str, env: &[(&str, &str)]| {
        let out = engine
            .agent_command(&[
                "check",
                "--url",
                url,
                "--token-file",
                token.to_str().unwrap(),
                "--docker-host",
                "unix:///nonexistent.sock",
            ])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    check(plain, &[("HTTP_PROXY", &proxy_url)]);
    assert!(
        proxy
            .received()
            .iter()
            .any(|r| r.path == "/atomist/resource/test"),
        "HTTP_PROXY was not used: {:?}",
        proxy.received()
    );
    check(secure, &[("HTTPS_PROXY", &proxy_url)]);
    assert!(
        proxy.received().iter().any(|r| r.method == "CONNECT"),
        "HTTPS_PROXY was not used: {:?}",
        proxy.received()
    );
    let before = proxy.received().len();
    let out = check(
        plain,
        &[
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", "deploytrack-endpoint.invalid"),
        ],
    );
    assert_eq!(proxy.received().len(), before, "NO_PROXY was not honoured");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("endpoint")),
        "{out}"
    );

    // The agent delivers through the proxy.
    let name = scope.name("proxied");
    scope.run(&["--name", &name], APP1);
    let _agent = scope.agent_in(
        &scope.state_dir(),
        plain,
        &[],
        &[("http_proxy", &proxy_url)],
    );
    let host = engine.host_name();
    proxy
        .accepted_report("a report through the proxy", &format!("{host}/{name}"))
        .await;
}

engine_test!(the_state_dir_and_queue_file_are_private);
async fn the_state_dir_and_queue_file_are_private(engine: Engine) {
    let scope = Scope::new(engine, "private");
    let receiver = Receiver::start().await;
    // A state dir whose parent does not exist yet, created under the usual umask.
    let state = scope.dir.join("nested").join("state");
    let agent = scope.agent_in(&state, &receiver.url(), &[], &[]);
    agent.ready().await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state dir");
    for file in ["deploytrack.db", "deploytrack.lock"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    eventually("the write-ahead log", || {
        state.join("deploytrack.db-wal").exists().then_some(())
    })
    .await;
    assert_eq!(mode(&state.join("deploytrack.db-wal")), 0o600, "wal");
}

#[test]
fn risky_settings_draw_one_warning_each() {
    let scope = Scope::offline("risky");
    let token = scope.token_file();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = scope.command(&[
        "check",
        "--url",
        "http://deploytrack-endpoint.invalid/x",
        "--token-file",
        token.to_str().unwrap(),
        "--docker-host",
        "unix:///nonexistent.sock",
    ]);
    // `check` prints them as WARN lines of their own, once each, and does not log them.
    let warnings: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("WARN"))
        .collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.starts_with("WARN token: ") && l.contains("readable by every user"))
            .count(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.starts_with("WARN endpoint: ") && l.contains("plain http://"))
            .count(),
        1,
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    assert!(!out.stderr.contains(TOKEN) && !out.stdout.contains(TOKEN));
    // A private token file and a loopback or https:// endpoint draw none.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    for url in [
        "http://127.0.0.1:1/x",
        "http://localhost:1/x",
        "http://[::1]:1/x",
        "https://deploytrack-endpoint.invalid/x",
    ] {
        let out = scope.command(&[
            "check",
            "--url",
            url,
            "--token-file",
            token.to_str().unwrap(),
            "--docker-host",
            "unix:///nonexistent.sock",
        ]);
        assert!(!out.stderr.contains("WARN"), "{url}: {}", out.stderr);
        assert!(!out.stdout.contains("WARN"), "{url}: {}", out.stdout);
    }
}

engine_test!(a_rotated_token_is_read_again_before_the_next_attempt);
/// A rotated token needs no restart: after a 401 the agent reads the token file again
/// before each attempt, says where at the first rejection, and never logs the token.
async fn a_rotated_token_is_read_again_before_the_next_attempt(engine: Engine) {
    use std::os::unix::fs::PermissionsExt;
    const ROTATED: &str = "tok-Rotated-0b5e2d91";
    let scope = Scope::new(engine, "rotate");
    let receiver = Receiver::start().await;
    receiver.set_default(Answer::status(401));
    let agent = scope.agent(&receiver.url(), &[]);
    let token = scope.dir.join("token");
    scope.run(&[], APP1);
    let rejected = agent
        .logged("the rejection", |l| l.contains("rejected the API token"))
        .await;
    assert!(
        rejected.contains(&format!(
            "the token is read again from --token-file {} before the next attempt: write the new token there, no restart needed",
            token.display()
        )),
        "{rejected}"
    );
    // The operator writes the new token (as an editor does: a new file renamed over).
    let new = scope.dir.join("token.new");
    std::fs::write(&new, format!("{ROTATED}\n")).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&new, &token).unwrap();
    receiver.set_default(Answer::status(200));
    let sent = eventually("a report with the rotated token", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.authorization.as_deref() == Some(&format!("Bearer {ROTATED}")))
    })
    .await;
    assert_eq!(sent.status, 200);
    agent
        .logged("the rotation in the log", |l| {
            l.contains(&format!(
                "read a new API token from --token-file {}; the next attempt sends it",
                token.display()
            ))
        })
        .await;
    let output = format!("{}{}", agent.stdout(), agent.stderr());
    assert!(
        !output.contains(ROTATED) && !output.contains(TOKEN),
        "{output}"
    );
}
