//! Registries that want credentials: a pull or push the agent saw is evidence, the Docker
//! CLI's credentials confirm an image pulled before the agent started, and confirmations
//! survive a restart without asking the registry again. The registry on 127.0.0.1:5002
//! (scripts/test-env.sh) wants `deploytrack-test` and its password; its access log counts
//! the manifest requests the engine makes for the agent's lookups.
//!
//! The tests share one image in that registry, so they run one at a time.

use std::path::{Path, PathBuf};

use deploytrack_test_support::*;

const PRIVATE1: &str = "127.0.0.1:5002/deploytrack-test/private:1";
const PRIVATE_REPO: &str = "127.0.0.1:5002/deploytrack-test/private";
/// A DOCKER_CONFIG logged in to the registry (by scripts/test-env.sh).
const LOGGED_IN: &str = "/tmp/deploytrack-authreg/docker-config";
const USER: &str = "deploytrack-test";
const PASSWORD: &str = "Pr1vate-Pa55word";

/// One test at a time per engine: the tests count the requests in the engine's registry log.
async fn one_at_a_time(engine: Engine) -> tokio::sync::MutexGuard<'static, ()> {
    static CLASSIC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static CONTAINERD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    match engine {
        Engine::Classic => CLASSIC.lock().await,
        Engine::Containerd => CONTAINERD.lock().await,
    }
}

/// `docker` with the logged-in config.
fn docker_logged_in(engine: Engine, args: &[&str]) -> String {
    let mut all = vec!["--config", LOGGED_IN];
    all.extend_from_slice(args);
    engine.docker(&all)
}

/// Removes an image from the engine under test, also when the test fails.
struct Image(Engine, String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = self
            .0
            .docker_command()
            .args(["rmi", "-f", &self.1])
            .output();
    }
}

/// The registry's access log as the engine under test reaches it.
fn registry_log(engine: Engine) -> &'static str {
    match engine {
        Engine::Classic => "/tmp/deploytrack-authreg.log",
        Engine::Containerd => "/tmp/deploytrack-authreg-d28.log",
    }
}

/// Requests for the manifests of `repository` (path in the registry) so far.
fn manifest_requests(engine: Engine, repository: &str) -> usize {
    let log = std::fs::read_to_string(registry_log(engine)).unwrap_or_default();
    let needle = format!(" /v2/{repository}/manifests/");
    log.lines()
        .filter(|l| l.contains(&needle) && (l.contains("\"GET") || l.contains("\"HEAD")))
        .count()
}

/// A config dir without credentials, so the agent cannot fall back to the user's own.
fn no_credentials(scope: &Scope) -> PathBuf {
    let dir = scope.dir.join("no-docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The credentials as a config dir of the scope's own, the CLI's `auths` form.
fn auths_config(scope: &Scope) -> PathBuf {
    use base64::Engine as _;
    let dir = scope.dir.join("docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {"127.0.0.1:5002": {"auth": auth}}}).to_string(),
    )
    .unwrap();
    dir
}

/// Pull PRIVATE1 as before the agent was installed: an agent's first subscription replays
/// the last 5 s of events, so the pull must be older than that when the agent starts.
fn pull_out_of_sight(engine: Engine) {
    docker_logged_in(engine, &["pull", PRIVATE1]);
    std::thread::sleep(std::time::Duration::from_secs(6));
}

fn path_of(p: &Path) -> &str {
    p.to_str().unwrap()
}

engine_test!(a_pull_seen_is_evidence_and_survives_a_restart_without_credentials);
async fn a_pull_seen_is_evidence_and_survives_a_restart_without_credentials(engine: Engine) {
    let _one = one_at_a_time(engine).await;
    let scope = Scope::new(engine, "pullseen");
    let receiver = Receiver::start().await;
    let _ = engine
        .docker_command()
        .args(["rmi", "-f", PRIVATE1])
        .output();
    let image = Image(engine, PRIVATE1.to_string());
    let empty = no_credentials(&scope);
    let env = [("DOCKER_CONFIG", path_of(&empty))];
    let mut agent = scope.agent_in(
        &scope.state_dir(),
        &receiver.url(),
        &["--log-level", "debug"],
        &env,
    );
    agent.ready().await;
    docker_logged_in(engine, &["pull", PRIVATE1]);
    agent
        .logged("the pull remembered as evidence", |l| {
            l.contains("remembered which repository holds the image") && l.contains(PRIVATE_REPO)
        })
        .await;
    let want = engine.repo_digest(PRIVATE1, PRIVATE_REPO);
    let host = engine.host_name();
    let first = scope.name("first");
    scope.run(&["--name", &first], PRIVATE1);
    let report = receiver
        .accepted_report(
            "the container of the pulled image",
            &format!("{host}/{first}"),
        )
        .await;
    assert_eq!(report.url(), want);

    // Restarted, still without credentials: the queue file remembers the pull.
    agent.stop().await;
    let manifests = manifest_requests(engine, "deploytrack-test/private");
    let agent = scope.agent_in(&scope.state_dir(), &receiver.url(), &[], &env);
    agent.ready().await;
    let second = scope.name("second");
    scope.run(&["--name", &second], PRIVATE1);
    let report = receiver
        .accepted_report(
            "the container started after the restart",
            &format!("{host}/{second}"),
        )
        .await;
    assert_eq!(report.url(), want);
    assert_eq!(
        manifest_requests(engine, "deploytrack-test/private"),
        manifests,
        "a report backed by a pull seen asks the registry nothing"
    );

    // Retagged to a name no registry holds: still reported as the repository pulled from.
    let retag = format!("deploytrack-test/retag-private-{}:1", scope.name("r"));
    let _retag = Image(engine, retag.clone());
    engine.docker(&["tag", PRIVATE1, &retag]);
    let retagged = scope.name("retagged");
    scope.run(&["--name", &retagged], &retag);
    let report = receiver
        .accepted_report("the retagged container", &format!("{host}/{retagged}"))
        .await;
    assert_eq!(report.url(), want, "never the retagged name");
    drop(image);
}

engine_test!(credentials_confirm_an_image_pulled_before_the_agent_once_across_restarts);
async fn credentials_confirm_an_image_pulled_before_the_agent_once_across_restarts(engine: Engine) {
    let _one = one_at_a_time(engine).await;
    let scope = Scope::new(engine, "creds");
    let receiver = Receiver::start().await;
    let image = Image(engine, PRIVATE1.to_string());
    pull_out_of_sight(engine);
    let want = engine.repo_digest(PRIVATE1, PRIVATE_REPO);
    let host = engine.host_name();
    let before = scope.name("before");
    scope.run(&["--name", &before], PRIVATE1);

    if engine == Engine::Containerd {
        // Without credentials the registry refuses the lookup: skipped, and the log says why.
        let empty = no_credentials(&scope);
        let state = scope.dir.join("state-none");
        let mut agent = scope.agent_in(
            &state,
            &receiver.url(),
            &[],
            &[("DOCKER_CONFIG", path_of(&empty))],
        );
        agent.ready().await;
        // (Refused for want of credentials; under load the 5 s lookup may time out instead.)
        agent
            .logged("the skip of the image without credentials", |l| {
                l.contains("no evidence that a registry holds this image") && l.contains(PRIVATE1)
            })
            .await;
        assert!(!receiver.reported(&format!("{host}/{before}")));
        agent.stop().await;
    }

    // The CLI's `auths`, given with --docker-config; traced, to show no secret is logged.
    let config = auths_config(&scope);
    let mut agent = scope.agent(
        &receiver.url(),
        &["--docker-config", path_of(&config), "--log-level", "trace"],
    );
    agent.ready().await;
    let report = receiver
        .accepted_report(
            "the container running before the agent",
            &format!("{host}/{before}"),
        )
        .await;
    assert_eq!(report.url(), want);
    agent.stop().await;
    let lookups = manifest_requests(engine, "deploytrack-test/private");

    // Restarted: the confirmation is in the queue file; the registry is not asked again.
    let agent = scope.agent(&receiver.url(), &["--docker-config", path_of(&config)]);
    agent.ready().await;
    let after = scope.name("after");
    scope.run(&["--name", &after], PRIVATE1);
    receiver
        .accepted_report("a container after the restart", &format!("{host}/{after}"))
        .await;
    assert_eq!(
        manifest_requests(engine, "deploytrack-test/private"),
        lookups
    );
    drop(agent);

    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for log in std::fs::read_dir(&scope.dir).unwrap().flatten() {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        if log
            .path()
            .extension()
            .is_some_and(|e| e == "err" || e == "out")
        {
            assert!(
                !text.contains(PASSWORD),
                "{}: the password",
                log.path().display()
            );
            assert!(
                !text.contains(&basic),
                "{}: user:password in base64",
                log.path().display()
            );
        }
    }
    drop(image);
}

engine_test!(a_credential_helper_gives_the_credentials);
async fn a_credential_helper_gives_the_credentials(engine: Engine) {
    let _one = one_at_a_time(engine).await;
    let scope = Scope::new(engine, "helper");
    let receiver = Receiver::start().await;
    let image = Image(engine, PRIVATE1.to_string());
    pull_out_of_sight(engine);
    let want = engine.repo_digest(PRIVATE1, PRIVATE_REPO);
    let host = engine.host_name();
    let name = scope.name("helped");
    scope.run(&["--name", &name], PRIVATE1);
    // A stub `docker-credential-dttest` on the agent's PATH, named by credHelpers.
    let bin = scope.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-dttest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = scope.dir.join("helper-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        r#"{"credHelpers": {"127.0.0.1:5002": "dttest"}}"#,
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let agent = scope.agent_in(
        &scope.state_dir(),
        &receiver.url(),
        &["--log-level", "trace"],
        &[("DOCKER_CONFIG", path_of(&config)), ("PATH", &path)],
    );
    agent.ready().await;
    let report = receiver
        .accepted_report(
            "the container, confirmed with the helper's credentials",
            &format!("{host}/{name}"),
        )
        .await;
    assert_eq!(report.url(), want);
    assert!(!agent.stderr().contains(PASSWORD));
    drop(image);
}

engine_test!(an_image_built_here_and_pushed_is_reported_as_the_repository_pushed_to);
async fn an_image_built_here_and_pushed_is_reported_as_the_repository_pushed_to(engine: Engine) {
    let _one = one_at_a_time(engine).await;
    let scope = Scope::new(engine, "pushed");
    let receiver = Receiver::start().await;
    let empty = no_credentials(&scope);
    let repo = format!("127.0.0.1:5002/deploytrack-test/pushed-{}", scope.name("p"));
    let tag = format!("{repo}:1");
    // An image of the test's own: a push of LOCAL1 itself would give it a repo digest, and
    // other tests' containers of LOCAL1 would then be reported rather than skipped.
    let _image = scope.made_here(&tag);
    let agent = scope.agent_in(
        &scope.state_dir(),
        &receiver.url(),
        &[],
        &[("DOCKER_CONFIG", path_of(&empty))],
    );
    agent.ready().await;
    let host = engine.host_name();
    let name = scope.name("built");
    scope.run(&["--name", &name], &tag);
    if engine == Engine::Containerd {
        // Not pushed yet: a local name, skipped.
        agent
            .logged("the skip of the image not yet pushed", |l| {
                l.contains("no evidence that a registry holds this image") && l.contains(&repo)
            })
            .await;
    }
    docker_logged_in(engine, &["push", &tag]);
    let want = engine.repo_digest(&tag, &repo);
    let report = receiver
        .accepted_report(
            "the container of the pushed image",
            &format!("{host}/{name}"),
        )
        .await;
    assert_eq!(report.url(), want);
}

engine_test!(a_refused_lookup_is_not_asked_again_at_every_reconciliation);
async fn a_refused_lookup_is_not_asked_again_at_every_reconciliation(engine: Engine) {
    if engine == Engine::Classic {
        // RepoDigests are the evidence there: no lookup at all, refused or not.
        return;
    }
    let _one = one_at_a_time(engine).await;
    let scope = Scope::new(engine, "refused");
    let receiver = Receiver::start().await;
    let image = Image(engine, PRIVATE1.to_string());
    pull_out_of_sight(engine);
    let name = scope.name("refused");
    scope.run(&["--name", &name], PRIVATE1);
    let empty = no_credentials(&scope);
    let listen = unused_addr();
    let listen_text = listen.to_string();
    // A reconciliation every second: each would ask again without the refusal schedule.
    let agent = scope.agent_in(
        &scope.state_dir(),
        &receiver.url(),
        &["--resync-interval", "1s", "--listen", &listen_text],
        &[("DOCKER_CONFIG", path_of(&empty))],
    );
    agent.ready().await;
    let refused = "deploytrack_registry_lookups_total{reason=\"credentials\"}";
    eventually_async("the first lookup, refused", || async {
        metric(listen, refused).await.filter(|n| *n >= 1.0)
    })
    .await;
    // Five more reconciliations, each of which resolves the container again.
    let reconciled = |text: &str| text.matches("reconciled with the engine").count();
    let after_first = reconciled(&agent.stderr());
    eventually("five more reconciliations", || {
        (reconciled(&agent.stderr()) >= after_first + 5).then_some(())
    })
    .await;
    assert_eq!(metric(listen, refused).await, Some(1.0));
    assert!(!receiver.reported(&format!("{}/{name}", engine.host_name())));
    drop(image);
}
