//! What differs between engines and image stores: the platform a container runs, the
//! repository that holds its image, and Compose v2's way of recreating containers. Each test
//! runs on both engines (`engine_test!`).

use std::process::Command;

use deploytrack_test_support::*;

const MULTI: &str = "localhost:5000/deploytrack-test/multi:1";

/// The digest the test registry serves for `repository:tag` (an index for `multi:1`).
async fn registry_digest(repository: &str, tag: &str) -> String {
    let answer = reqwest::Client::new()
        .head(format!(
            "http://127.0.0.1:5000/v2/{repository}/manifests/{tag}"
        ))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("the test registry answers");
    assert!(
        answer.status().is_success(),
        "{repository}:{tag}: {answer:?}"
    );
    answer.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string()
}

engine_test!(each_platform_of_a_multi_platform_image_is_reported_as_it_runs);
async fn each_platform_of_a_multi_platform_image_is_reported_as_it_runs(engine: Engine) {
    let scope = Scope::new(engine, "platforms");
    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &[]);
    agent.ready().await;
    let host = engine.host_name();
    let index = registry_digest("deploytrack-test/multi", "1").await;
    let want_url = format!("localhost:5000/deploytrack-test/multi@{index}");
    // arm64 is always reported as `v8`, whether the image says so or not.
    let platforms: [(&str, &str, &[Option<&str>]); 3] = [
        ("linux/amd64", "amd64", &[None]),
        ("linux/arm64", "arm64", &[Some("v8")]),
        ("linux/arm/v7", "arm", &[Some("v7")]),
    ];
    for (i, (platform, architecture, variants)) in platforms.into_iter().enumerate() {
        let name = scope.name(&format!("on-{architecture}"));
        scope.run(&["--name", &name, "--platform", platform], MULTI);
        let want_name = format!("{host}/{name}");
        // The classic store keeps one image per index digest: a second platform pulled from
        // the same index has no repo digest, so its containers cannot be reported.
        if engine == Engine::Classic && i > 0 {
            let marker = scope.name(&format!("after-{architecture}"));
            scope.run(&["--name", &marker], APP2);
            receiver
                .accepted_report("the marker container", &format!("{host}/{marker}"))
                .await;
            assert!(
                !receiver.reported(&want_name),
                "{platform} has no repo digest on the classic store: {:?}",
                receiver.accepted()
            );
            continue;
        }
        let report = receiver
            .accepted_report(&format!("the container running {platform}"), &want_name)
            .await;
        assert_eq!(report.url(), want_url, "{platform}: the index digest");
        let reported = &report.body["platform"];
        assert_eq!(reported["os"], "linux", "{platform}: {reported}");
        assert_eq!(
            reported["architecture"], architecture,
            "{platform}: {reported}"
        );
        let variant = reported["variant"].as_str();
        assert!(
            variants.contains(&variant),
            "{platform}: variant {variant:?}, expected one of {variants:?}"
        );
    }
    if engine == Engine::Classic {
        assert!(agent.stderr().contains("image has no repo digest"));
    }
}

engine_test!(only_a_repository_that_holds_the_image_is_reported);
async fn only_a_repository_that_holds_the_image_is_reported(engine: Engine) {
    let scope = Scope::new(engine, "evidence");
    let receiver = Receiver::start().await;
    // A pulled image under a second, local name that no registry holds.
    let retag = format!("deploytrack-test/retag-{}:1", scope.name("x"));
    engine.docker(&["tag", APP1, &retag]);
    let agent = scope.agent(&receiver.url(), &[]);
    agent.ready().await;
    let host = engine.host_name();
    let local = scope.name("local");
    scope.run(&["--name", &local], LOCAL1);
    let retagged = scope.name("retagged");
    scope.run(&["--name", &retagged], &retag);
    let marker = scope.name("marker");
    scope.run(&["--name", &marker], APP2);

    let report = receiver
        .accepted_report("the retagged container", &format!("{host}/{retagged}"))
        .await;
    let digest = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    let (_, at) = digest.split_once('@').unwrap();
    let holders = [
        digest.clone(),
        format!("localhost:5000/deploytrack-test/mirror@{at}"),
    ];
    assert!(
        holders.contains(&report.url().to_string()),
        "{} names a repository that does not hold the image",
        report.url()
    );
    receiver
        .accepted_report("the marker container", &format!("{host}/{marker}"))
        .await;
    eventually(
        "the locally made image to be logged as unreportable",
        || {
            agent
                .stderr()
                .contains(engine.unreportable_line())
                .then_some(())
        },
    )
    .await;
    assert!(
        !receiver.reported(&format!("{host}/{local}")),
        "a locally made image was reported: {:?}",
        receiver.accepted()
    );
    // Once per image, however many containers.
    let again = scope.name("local-again");
    scope.run(&["--name", &again], LOCAL1);
    let marker2 = scope.name("marker2");
    scope.run(&["--name", &marker2], APP2);
    receiver
        .accepted_report("the second marker", &format!("{host}/{marker2}"))
        .await;
    assert_eq!(
        agent.stderr().matches(engine.unreportable_line()).count(),
        1
    );
    assert!(!receiver.reported(&format!("{host}/{again}")));
    engine.docker(&["rmi", &retag]);
}

engine_test!(report_unverified_names_the_repository_started_as);
async fn report_unverified_names_the_repository_started_as(engine: Engine) {
    let scope = Scope::new(engine, "unverified");
    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &["--report-unverified"]);
    agent.ready().await;
    let host = engine.host_name();
    let local = scope.name("local");
    scope.run(&["--name", &local], LOCAL1);
    let marker = scope.name("marker");
    scope.run(&["--name", &marker], APP2);
    receiver
        .accepted_report("the marker container", &format!("{host}/{marker}"))
        .await;
    match engine {
        // Every local name has a repo digest on this store: the opt-in reports it.
        Engine::Containerd => {
            let report = receiver
                .accepted_report("the local image, unverified", &format!("{host}/{local}"))
                .await;
            assert!(
                report
                    .url()
                    .starts_with("docker.io/deploytrack-test/local@sha256:"),
                "{}",
                report.url()
            );
        }
        // No digest at all: nothing to report, opt-in or not.
        Engine::Classic => {
            eventually("the local image to be logged as unreportable", || {
                agent
                    .stderr()
                    .contains(engine.unreportable_line())
                    .then_some(())
            })
            .await;
            assert!(!receiver.reported(&format!("{host}/{local}")));
        }
    }
}

/// `docker compose` (v2) in `dir`, for project `project`, with `IMAGE` set.
fn compose(engine: Engine, dir: &std::path::Path, project: &str, image: &str, args: &[&str]) {
    let out = engine
        .docker_command()
        .args(["compose", "-p", project, "-f", "compose.yaml"])
        .args(args)
        .env("IMAGE", image)
        .current_dir(dir)
        .output()
        .expect("run docker compose");
    assert!(
        out.status.success(),
        "docker compose {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

engine_test!(compose_v2_scale_recreate_and_down_leave_every_name_right);
async fn compose_v2_scale_recreate_and_down_leave_every_name_right(engine: Engine) {
    let scope = Scope::new(engine, "compose2");
    let receiver = Receiver::start().await;
    let project = format!("dt{}", scope.name("c").replace('-', ""));
    std::fs::write(
        scope.dir.join("compose.yaml"),
        format!(
            "services:\n  web:\n    image: ${{IMAGE}}\n    network_mode: none\n    \
             labels:\n      {RUN_LABEL}: \"{}\"\n",
            scope.id
        ),
    )
    .unwrap();
    let agent = scope.agent(&receiver.url(), &["--report-stops"]);
    agent.ready().await;
    let host = engine.host_name();
    let names = [1, 2].map(|n| format!("{host}/{project}-web-{n}"));
    let digest1 = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    let digest2 = engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app");
    // The last accepted report per name.
    let last = |name: &str| receiver.accepted().into_iter().rfind(|r| r.name() == name);
    let state = |r: &receiver::Received| r.body["container"]["state"].as_str().map(str::to_string);

    compose(
        engine,
        &scope.dir,
        &project,
        APP1,
        &["up", "-d", "--scale", "web=2"],
    );
    for name in &names {
        eventually(&format!("{name} running app:1"), || {
            last(name).filter(|r| r.url() == digest1 && state(r).as_deref() == Some("running"))
        })
        .await;
    }
    // A new image: Compose recreates each container (a temporary name, a rename, a start).
    compose(
        engine,
        &scope.dir,
        &project,
        APP2,
        &["up", "-d", "--scale", "web=2"],
    );
    for name in &names {
        eventually(&format!("{name} running app:2"), || {
            last(name).filter(|r| r.url() == digest2 && state(r).as_deref() == Some("running"))
        })
        .await;
    }
    compose(engine, &scope.dir, &project, APP2, &["down"]);
    for name in &names {
        eventually(&format!("{name} stopped"), || {
            last(name).filter(|r| state(r).as_deref() == Some("stopped"))
        })
        .await;
    }
    // Whatever names the recreation passed through, none is left running.
    let mut seen: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    seen.sort();
    seen.dedup();
    for name in &seen {
        let word = last(name).and_then(|r| state(&r));
        assert_eq!(
            word.as_deref(),
            Some("stopped"),
            "{name}'s last word after down (names seen: {seen:?})"
        );
    }
    assert!(!agent.stderr().contains("ERROR"), "{}", agent.stderr());
}

engine_test!(the_api_version_is_negotiated_again_when_the_engine_is_upgraded);
async fn the_api_version_is_negotiated_again_when_the_engine_is_upgraded(engine: Engine) {
    let scope = Scope::new(engine, "upgrade");
    let receiver = Receiver::start().await;
    // Docker 20.10 knows no API version above 1.41.
    let mut engine = PrivateEngine::start_as(Dockerd::Debian).await;
    let agent = scope.agent(&receiver.url(), &["--docker-host", &engine.host]);
    agent.ready().await;
    assert!(
        agent
            .stderr()
            .contains("Engine API version 1.41 (Docker Engine 20.10"),
        "{}",
        agent.stderr()
    );
    let host = engine.host_name();
    let before = scope.name("before");
    engine.run(&scope.selector(), &before);
    receiver
        .accepted_report("a container on Docker 20.10", &format!("{host}/{before}"))
        .await;

    // Upgraded under the running agent to Docker 28.5, which refuses anything below 1.44.
    engine.stop().await;
    engine.dockerd = Dockerd::Docker28 {
        containerd: false,
        min_api: Some("1.44"),
    };
    engine.boot().await;
    let refused = Command::new("docker")
        .args(["-H", &engine.host, "version"])
        .env("DOCKER_API_VERSION", "1.41")
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the upgraded engine must refuse 1.41 for this test to mean anything"
    );
    eventually("the agent to negotiate with the new engine", || {
        agent
            .stderr()
            .contains("the engine changed: Engine API version 1.51 (Docker Engine 28.5")
            .then_some(())
    })
    .await;
    assert!(agent.stderr().contains("API 1.44 to 1.51), was 1.41"));
    let after = scope.name("after");
    engine.run(&scope.selector(), &after);
    receiver
        .accepted_report("a container on Docker 28.5", &format!("{host}/{after}"))
        .await;
    let check = agent_command(&["check", "--docker-host", &engine.host])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("OK   engine API: version 1.51 (Docker Engine 28.5"),
        "{stdout}"
    );
    assert!(!agent.stderr().contains("ERROR"), "{}", agent.stderr());
}
