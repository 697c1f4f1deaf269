//! The engine side of least privilege and bad input: every request the agent makes goes
//! through a recording proxy in front of the real engine, which can also play an engine
//! whose answers are odd, incomplete or newer than the API model.

use deploytrack_test_support::proxy::{allowed, unversioned, EngineProxy, Rule};
use deploytrack_test_support::*;

/// The agent on the proxy, with an admin listener for its metrics.
fn agent_on(
    scope: &Scope,
    proxy: &EngineProxy,
    receiver: &Receiver,
    extra: &[&str],
) -> (Agent, std::net::SocketAddr) {
    let listen = unused_addr();
    let host = proxy.host();
    let listen_text = listen.to_string();
    let mut args = vec!["--docker-host", &host, "--listen", &listen_text];
    args.extend_from_slice(extra);
    (scope.agent(&receiver.url(), &args), listen)
}

fn name_of(host: &str, container: &str) -> String {
    format!("{host}/{container}")
}

engine_test!(the_agent_only_reads_allowlisted_engine_paths);
async fn the_agent_only_reads_allowlisted_engine_paths(engine: Engine) {
    let scope = Scope::new(engine, "allowlist");
    let proxy = EngineProxy::start(engine, &scope.dir).await;
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let before = scope.name("before");
    scope.run(&["--name", &before], APP1);
    let (agent, _) = agent_on(&scope, &proxy, &receiver, &["--report-stops"]);
    agent.ready().await;
    receiver
        .accepted_report("the container running at start", &name_of(&host, &before))
        .await;
    let started = scope.name("started");
    scope.run(&["--name", &started], APP2);
    receiver
        .accepted_report("a container started later", &name_of(&host, &started))
        .await;
    engine.docker(&["stop", "-t", "0", &started]);
    eventually("its stop", || {
        receiver
            .accepted()
            .iter()
            .any(|r| {
                r.name() == name_of(&host, &started) && r.body["container"]["state"] == "stopped"
            })
            .then_some(())
    })
    .await;
    // A lost stream: the agent reconnects and reconciles through the proxy again.
    let reconciled = agent.stderr().matches("reconciled with the engine").count();
    proxy.cut();
    let after = scope.name("after");
    scope.run(&["--name", &after], APP1);
    receiver
        .accepted_report(
            "a container started across the reconnect",
            &name_of(&host, &after),
        )
        .await;
    eventually("a reconciliation after the reconnect", || {
        (agent.stderr().matches("reconciled with the engine").count() > reconciled).then_some(())
    })
    .await;

    let requests = proxy.requests();
    // Every request but the version negotiation names the API version it speaks.
    let unpinned: Vec<_> = requests
        .iter()
        .filter(|(_, p)| unversioned(p) == p.as_str() && p != "/version")
        .collect();
    assert!(
        unpinned.is_empty(),
        "requests without an API version: {unpinned:?}"
    );
    assert!(
        requests.iter().any(|(_, p)| p == "/version"),
        "no version negotiation among {requests:?}"
    );
    let requests: Vec<(String, String)> = requests
        .iter()
        .map(|(m, p)| (m.clone(), unversioned(p).to_string()))
        .collect();
    let refused: Vec<_> = requests.iter().filter(|(m, p)| !allowed(m, p)).collect();
    assert!(
        refused.is_empty(),
        "requests outside the allowlist: {refused:?}"
    );
    // The proxy saw the whole scenario, so the check above covered it.
    for needed in ["/_ping", "/events", "/containers/json", "/info"] {
        assert!(
            requests.iter().any(|(_, p)| p.ends_with(needed)),
            "no {needed} request among {requests:?}"
        );
    }
    assert!(requests
        .iter()
        .any(|(_, p)| p.starts_with("/containers/") && p.ends_with("/json") && p.len() > 20));
    assert!(requests.iter().any(|(_, p)| p.starts_with("/images/")));
    assert!(
        requests
            .iter()
            .filter(|(_, p)| p.ends_with("/events"))
            .count()
            >= 2,
        "the stream was not reopened: {requests:?}"
    );
    // The allowlist itself refuses what a writer would do.
    for (m, p) in [
        ("POST", "/containers/create"),
        ("POST", "/containers/abc/start"),
        ("DELETE", "/containers/abc"),
        ("POST", "/v1.41/containers/abc/exec"),
        ("GET", "/containers/abc/archive"),
        ("GET", "/secrets"),
        ("POST", "/images/create"),
    ] {
        assert!(!allowed(m, p), "{m} {p} must not be allowed");
    }
    assert!(allowed("GET", "/v1.41/containers/abc/json"));
}

engine_test!(answers_the_api_model_rejects_still_report_and_never_end_the_stream);
async fn answers_the_api_model_rejects_still_report_and_never_end_the_stream(engine: Engine) {
    let scope = Scope::new(engine, "newer-engine");
    let proxy = EngineProxy::start(engine, &scope.dir).await;
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    // A newer engine: an event scope, a container state and a label type the model does not
    // know. bollard rejects each of these answers outright.
    proxy.add(Rule::Replace {
        path: "/events".into(),
        from: "\"scope\":\"local\"".into(),
        to: "\"scope\":\"galaxy\"".into(),
    });
    proxy.add(Rule::edit("/containers/", |v| {
        if v.get("State").is_some() {
            v["State"]["Status"] = "hibernating".into();
        }
    }));
    proxy.add(Rule::edit("/images/", |v| {
        v["Descriptor"] = serde_json::json!({"mediaType": 7});
    }));
    let (agent, listen) = agent_on(&scope, &proxy, &receiver, &[]);
    agent.ready().await;
    let digest1 = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    let digest2 = engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app");
    let first = scope.name("first");
    scope.run(&["--name", &first], APP1);
    let got = receiver
        .accepted_report(
            "a container started on the odd engine",
            &name_of(&host, &first),
        )
        .await;
    assert_eq!(got.url(), digest1);
    // The stream goes on: a second start is reported too.
    let second = scope.name("second");
    scope.run(&["--name", &second], APP2);
    let got = receiver
        .accepted_report("a second container", &name_of(&host, &second))
        .await;
    assert_eq!(got.url(), digest2);
    for what in ["event", "container", "image"] {
        let counted = metric(
            listen,
            &format!("deploytrack_engine_answers_unexpected_total{{reason=\"{what}\"}}"),
        )
        .await
        .unwrap_or(0.0);
        assert!(counted >= 1.0, "unexpected {what} answers not counted");
    }
    let stderr = agent.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("does not match the API model"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "one warning per kind of answer, not one per answer: {stderr}"
    );
}

engine_test!(missing_fields_and_vanished_objects);
async fn missing_fields_and_vanished_objects(engine: Engine) {
    let scope = Scope::new(engine, "missing");
    let proxy = EngineProxy::start(engine, &scope.dir).await;
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let (agent, listen) = agent_on(&scope, &proxy, &receiver, &[]);
    agent.ready().await;

    // An inspect answer without the name, the image id and the platform: the event's name,
    // the reference and the defaults fill in.
    let bare = scope.name("bare");
    let id = scope.create(&["--name", &bare], APP1);
    proxy.add(Rule::edit(&format!("/containers/{id}/json"), |v| {
        if let Some(o) = v.as_object_mut() {
            o.remove("Name");
            o.remove("Image");
        }
    }));
    engine.docker(&["start", &id]);
    let got = receiver
        .accepted_report(
            "a container whose inspect lacks fields",
            &name_of(&host, &bare),
        )
        .await;
    assert_eq!(
        got.url(),
        engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app")
    );

    // The container vanished before its inspection: resolved from the start event.
    let vanished = scope.name("vanished");
    let id = scope.create(&["--name", &vanished], APP2);
    proxy.add(Rule::Answer {
        path: format!("/containers/{id}/json"),
        status: 404,
        body: format!("{{\"message\":\"No such container: {id}\"}}"),
    });
    engine.docker(&["start", &id]);
    let got = receiver
        .accepted_report(
            "a container gone before its inspection",
            &name_of(&host, &vanished),
        )
        .await;
    assert_eq!(
        got.url(),
        engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app")
    );

    // The image was deleted between the event and the inspection: one warning, counted,
    // and the agent goes on.
    let orphan = scope.name("orphan");
    proxy.add(Rule::Answer {
        path: "/images/".into(),
        status: 404,
        body: "{\"message\":\"No such image\"}".into(),
    });
    scope.run(&["--name", &orphan], ARM1);
    eventually("the skip to be counted", || {
        let stderr = agent.stderr();
        stderr.contains("image is gone").then_some(())
    })
    .await;
    let skipped = metric(
        listen,
        "deploytrack_containers_skipped_total{reason=\"image_gone\"}",
    )
    .await;
    assert!(skipped.unwrap_or(0.0) >= 1.0, "image_gone not counted");
    proxy.clear_rules();
    let after = scope.name("after");
    scope.run(&["--name", &after], APP1);
    receiver
        .accepted_report("a container after the odd answers", &name_of(&host, &after))
        .await;
    let stderr = agent.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

engine_test!(an_inspection_the_engine_fails_is_caught_by_the_next_resync);
async fn an_inspection_the_engine_fails_is_caught_by_the_next_resync(engine: Engine) {
    let scope = Scope::new(engine, "resync");
    let proxy = EngineProxy::start(engine, &scope.dir).await;
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    let (agent, _) = agent_on(&scope, &proxy, &receiver, &["--resync-interval", "2s"]);
    agent.ready().await;
    let busy = scope.name("busy");
    let id = scope.create(&["--name", &busy], APP1);
    proxy.add(Rule::Answer {
        path: format!("/containers/{id}/json"),
        status: 500,
        body: "{\"message\":\"engine busy\"}".into(),
    });
    engine.docker(&["start", &id]);
    eventually("the failed inspection in the log", || {
        agent
            .stderr()
            .contains("cannot inspect container")
            .then_some(())
    })
    .await;
    assert!(!receiver.reported(&name_of(&host, &busy)));
    let attempts = proxy
        .requests()
        .iter()
        .filter(|(_, p)| p.contains(&id))
        .count();
    assert!(attempts >= 3, "not retried: {attempts} inspections");
    proxy.clear_rules();
    receiver
        .accepted_report("the container, at the next resync", &name_of(&host, &busy))
        .await;
}

engine_test!(huge_labels_odd_unicode_and_names_that_need_escaping);
async fn huge_labels_odd_unicode_and_names_that_need_escaping(engine: Engine) {
    let scope = Scope::new(engine, "odd-labels");
    let receiver = Receiver::start().await;
    let mut agent = scope.agent(&receiver.url(), &["--log-level", "trace"]);
    agent.ready().await;
    let big = "x".repeat(64 * 1024);
    let odd_name =
        "prod/\"quoted\" back\\slash ünïcødé 🚀 \u{202e}rtl tab\there\nERROR forged log line";
    let secret = "pw-Sekr1t-in-env-5d1e";
    scope.run(
        &[
            "--label",
            &format!("deploytrack.name={odd_name}"),
            "--label",
            &format!("big={big}"),
            "--label",
            "deploytrack.environment=staging-ü",
            "--label",
            "emoji.🚀=yes",
            "-e",
            &format!("DB_PASSWORD={secret}"),
        ],
        APP1,
    );
    let got = receiver
        .accepted_report("the oddly labelled container", odd_name)
        .await;
    assert_eq!(
        got.url(),
        engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app")
    );
    assert_eq!(got.environment(), "staging-ü");
    // The log has the delivery too: everything the agent wrote about this container.
    agent
        .logged("the delivery in the log", |l| {
            l.contains("deployment reported") && l.contains("staging-ü/prod/")
        })
        .await;
    agent.stop().await;
    let output = format!("{}{}", agent.stdout(), agent.stderr());
    assert!(!output.contains("panicked"), "{output}");
    assert!(
        !output.contains(secret),
        "a container's environment reached the log"
    );
    assert!(
        !output.contains(&big[..1024]),
        "a 64 KiB label was written to the log"
    );
    assert!(
        output.lines().all(|l| !l.starts_with("ERROR forged")),
        "a label forged a log line:\n{output}"
    );
}

engine_test!(a_failed_listing_is_tried_again_with_backoff);
async fn a_failed_listing_is_tried_again_with_backoff(engine: Engine) {
    let scope = Scope::new(engine, "relist");
    let receiver = Receiver::start().await;
    let proxy = EngineProxy::start(engine, &scope.dir.join("proxy")).await;
    let running = scope.name("running");
    scope.run(&["--name", &running], APP1);
    // The engine fails to list containers when the agent starts.
    proxy.add(Rule::Answer {
        path: "/containers/json".into(),
        status: 500,
        body: "{\"message\":\"the engine is busy\"}".into(),
    });
    let (agent, _) = agent_on(&scope, &proxy, &receiver, &[]);
    let line = eventually("the failed listing in the log", || {
        agent
            .stderr()
            .lines()
            .find(|l| l.contains("cannot list the running containers"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains("retry_in="), "the log says when: {line}");
    // Not at the next resync (10 minutes away): with the reconnect backoff.
    proxy.clear_rules();
    receiver
        .accepted_report(
            "the running container, listed on a retry",
            &name_of(&engine.host_name(), &running),
        )
        .await;
}

engine_test!(a_docker_29_engine_is_spoken_to_at_1_53_and_its_identity_names_the_repository);
/// Docker 29.2 and later (API 1.53), played in front of the real engine: `/version` claims
/// 1.53, every request is forwarded at the version the real engine speaks, events come in
/// the 1.52 shape (without `status`, `id`, `from`) as `application/jsonl` (Docker 29.3), and
/// image inspections carry `Identity` (containerd store only, as in moby).
async fn a_docker_29_engine_is_spoken_to_at_1_53_and_its_identity_names_the_repository(
    engine: Engine,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let scope = Scope::new(engine, "identity");
    let proxy = EngineProxy::start(engine, &scope.dir).await;
    let receiver = Receiver::start().await;
    let host = engine.host_name();
    proxy.play_api("1.53", "1.40", "29.2.1");
    // API 1.52 dropped the legacy fields of events; Docker 29.3 sends the stream as JSON lines.
    let legacy_dropped = Arc::new(AtomicUsize::new(0));
    let dropped = legacy_dropped.clone();
    proxy.add(Rule::edit("/events", move |event| {
        if let Some(event) = event.as_object_mut() {
            let before = event.len();
            for legacy in ["status", "id", "from"] {
                event.remove(legacy);
            }
            if event.len() < before {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    proxy.add(Rule::Header {
        path: "/events".into(),
        name: "content-type".into(),
        value: "application/jsonl".into(),
    });

    // Two images made here and never pushed, on the containerd store (the only one whose
    // inspections have `Identity`): the engine says the first was pulled from its repository,
    // written as containerd writes it, without the registry's port; the second has no
    // Identity, so nothing shows a registry holds it.
    let containerd = engine == Engine::Containerd;
    let repo = |which: &str| {
        format!(
            "localhost:5000/deploytrack-test/identity-{}",
            scope.name(which)
        )
    };
    let (named_repo, unnamed_repo) = (repo("named"), repo("other"));
    let made = containerd.then(|| {
        let named = scope.made_here(&format!("{named_repo}:1"));
        let unnamed = scope.made_here(&format!("{unnamed_repo}:1"));
        let named_id = named.id();
        let pulled_from = named_repo.replacen("localhost:5000/", "localhost/", 1);
        proxy.add(Rule::edit("/images/", move |image| {
            if image.get("Id").and_then(|i| i.as_str()) != Some(named_id.as_str()) {
                return;
            }
            // As the swagger of v29 has it: Identity.Pull[].Repository.
            image["Identity"] = serde_json::json!({"Pull": [{"Repository": pulled_from}]});
            // What API 1.52 leaves out on the containerd store.
            if let Some(image) = image.as_object_mut() {
                image.remove("GraphDriver");
            }
        }));
        (named, unnamed)
    });

    let (agent, _) = agent_on(&scope, &proxy, &receiver, &[]);
    agent.ready().await;
    let chosen = agent
        .logged("the version chosen", |l| l.contains("Engine API version"))
        .await;
    assert!(
        chosen.contains("Engine API version 1.53 (Docker Engine 29.2.1: API 1.40 to 1.53)"),
        "{chosen}"
    );
    assert!(!chosen.contains("surprises"), "{chosen}");

    // A pulled image, from the 1.52-shaped events.
    let pulled = scope.name("pulled");
    scope.run(&["--name", &pulled], APP1);
    let got = receiver
        .accepted_report("a container of a pulled image", &name_of(&host, &pulled))
        .await;
    assert_eq!(
        got.url(),
        engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app")
    );
    eventually("an event without its legacy fields", || {
        (legacy_dropped.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;

    // The classic store has no Identity (moby fills it on the containerd store only): there
    // the test ends with the version and the events above.
    if let Some((named, unnamed)) = &made {
        let by_identity = scope.name("by-identity");
        scope.run(&["--name", &by_identity], named.tag());
        let got = receiver
            .accepted_report(
                "the container of the image its Identity names",
                &name_of(&host, &by_identity),
            )
            .await;
        // The repository with its port, as the image's repo digest has it.
        assert_eq!(got.url(), engine.repo_digest(named.tag(), &named_repo));
        let without = scope.name("without-identity");
        scope.run(&["--name", &without], unnamed.tag());
        agent
            .logged("the skip of the image without Identity", |l| {
                l.contains("no evidence that a registry holds this image")
                    && l.contains(&unnamed_repo)
            })
            .await;
        assert!(!receiver.reported(&name_of(&host, &without)));
        let stderr = agent.stderr();
        assert!(
            !stderr
                .lines()
                .any(|l| l.contains("no evidence") && l.contains(&named_repo)),
            "{stderr}"
        );
        // Named by its Identity, not by a registry: its repository was never looked up,
        // the other one's was.
        let lookups: Vec<String> = proxy
            .requests()
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p.contains("/distribution/"))
            .collect();
        assert!(
            !lookups.iter().any(|p| p.contains(&named_repo)),
            "{lookups:?}"
        );
        assert!(
            lookups.iter().any(|p| p.contains(&unnamed_repo)),
            "{lookups:?}"
        );
        let inspected = format!("/v1.53/images/{}/json", named.id());
        assert!(
            proxy.requests().iter().any(|(_, p)| *p == inspected),
            "no {inspected}"
        );
    }

    // Every versioned request asked for 1.53, which the proxy forwarded at the version the
    // real engine speaks.
    let requests = proxy.requests();
    let versions: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter_map(|(_, p)| {
            let rest = unversioned(p);
            (rest.len() < p.len()).then(|| &p[..p.len() - rest.len()])
        })
        .collect();
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["/v1.53"],
        "{requests:?}"
    );
    for needed in ["/_ping", "/events", "/info", "/containers/json"] {
        assert!(
            requests
                .iter()
                .any(|(_, p)| *p == format!("/v1.53{needed}")),
            "no /v1.53{needed} among {requests:?}"
        );
    }
    assert!(requests
        .iter()
        .any(|(_, p)| p.starts_with("/v1.53/images/") && p.ends_with("/json")));
    let stderr = agent.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("does not match the API model"), "{stderr}");
}
