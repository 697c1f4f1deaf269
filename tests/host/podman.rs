//! Podman's Docker-compatible API: its own event names (`remove`, sometimes `died`), and its
//! RepoDigests, which prove nothing (every local name gets one, pushed or not): a container
//! is reported only when the agent saw the engine pull (or push) its image, or with
//! `--report-unverified`.
//!
//! Only this file uses Podman. Its tests share Podman's copy of APP1 and pull it again
//! (a pull of a tag Podman already has still sends a `pull` event, and leaves the image
//! as it was); none removes it.

use crate::common::receiver::Received;
use crate::common::*;

pub const PODMAN_HOST: &str = "unix:///run/deploytrack-podman.sock";

/// The line the agent logs, once per image, for an image no evidence covers.
const UNVERIFIED: &str = "no evidence that a registry holds this image";

fn podman(args: &[&str]) -> String {
    run_ok("podman", args, None)
}

/// Removes the scope's Podman containers, also when the test fails.
struct PodmanScope(String);

impl Drop for PodmanScope {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args([
                "rm",
                "-f",
                "-t",
                "0",
                "--filter",
                &format!("label={}", self.0),
            ])
            .output();
    }
}

/// Removes a name from Podman's images, also when the test fails: the image itself when
/// it has no other name (`podman rmi -f`), else only the name (`podman untag`).
enum PodmanName {
    Image(String),
    Tag(String),
}

impl Drop for PodmanName {
    fn drop(&mut self) {
        let args = match self {
            PodmanName::Image(name) => vec!["rmi", "-f", name.as_str()],
            PodmanName::Tag(name) => vec!["untag", name.as_str()],
        };
        let _ = std::process::Command::new("podman").args(args).output();
    }
}

/// `podman run -d` of `image` with the scope's label.
fn podman_run(label: &str, name: &str, image: &str) {
    podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--label",
        label,
        "--name",
        name,
        image,
    ]);
}

/// `podman rm -f` without the 10 s grace (`sleep` as pid 1 ignores SIGTERM).
fn podman_rm(name: &str) {
    podman(&["rm", "-f", "-t", "0", name]);
}

/// A pull from the test registry (plain HTTP), with the agent watching: its evidence.
fn podman_pull(image: &str) {
    podman(&["pull", "-q", "--tls-verify=false", image]);
}

/// The repo digest Podman shows for `image` in `repository`.
fn podman_repo_digest(image: &str, repository: &str) -> String {
    let digests = podman(&[
        "image",
        "inspect",
        "--format",
        "{{join .RepoDigests \" \"}}",
        image,
    ]);
    digests
        .split_whitespace()
        .find(|d| d.starts_with(&format!("{repository}@sha256:")))
        .unwrap_or_else(|| panic!("podman shows no digest of {image} in {repository}: {digests}"))
        .to_string()
}

/// The repository of a reference with a tag (`host:port/path:tag`).
fn repository_of(reference: &str) -> &str {
    reference.rsplit_once(':').expect("a tag").0
}

/// The first accepted report for the container `name` that `also` accepts.
fn report_of(
    receiver: &Receiver,
    name: &str,
    also: impl Fn(&Received) -> bool,
) -> Option<Received> {
    let suffix = format!("/{name}");
    receiver
        .accepted()
        .into_iter()
        .find(|r| r.name().ends_with(&suffix) && also(r))
}

async fn reported(what: &str, receiver: &Receiver, name: &str) -> Received {
    eventually(what, || report_of(receiver, name, |_| true)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_starts_stops_and_reconciliation_are_reported() {
    let scope = Scope::new("podman");
    let _cleanup = PodmanScope(scope.selector());
    let receiver = Receiver::start().await;
    let label = scope.selector();
    let args = ["--docker-host", PODMAN_HOST, "--report-stops"];
    let want = podman_repo_digest(APP1, repository_of(APP1));

    // The evidence: a pull the agent sees. Every report below rests on it.
    let mut agent = scope.agent(&receiver.url(), &args);
    agent.ready().await;
    podman_pull(APP1);
    let name = scope.name("pod");
    podman_run(&label, &name, APP1);
    let running = reported("the podman container's report", &receiver, &name).await;
    assert_eq!(running.url(), want);
    assert_eq!(running.body["container"]["state"], "running");
    podman_rm(&name);
    let stopped = eventually("the podman container's stop", || {
        report_of(&receiver, &name, |r| {
            r.body["container"]["state"] == "stopped"
        })
    })
    .await;
    assert_eq!(stopped.url(), want);
    // Podman's start time and event times are read as Docker's are, and order the two.
    let since = |r: &Received| {
        let text = r.body["container"]["since"].as_str().unwrap_or_default();
        humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("since {text:?}: {e}"))
    };
    assert!(
        since(&running) < since(&stopped),
        "{running:#?}\n{stopped:#?}"
    );
    agent.stop().await;

    // Running before the agent: found by the reconciliation at start, and reported on the
    // evidence the queue file kept (the image events resume after the container events
    // seen, so the pull is not replayed to this agent).
    let before = scope.name("before");
    podman_run(&label, &before, APP1);
    let mut agent = scope.agent(&receiver.url(), &args);
    let found = reported("the container running before the agent", &receiver, &before).await;
    assert_eq!(found.url(), want);
    assert_eq!(found.body["container"]["state"], "running");

    // Removed while the agent is down: the reconciliation at the next start reports the stop.
    agent.stop().await;
    podman_rm(&before);
    let _agent = scope.agent(&receiver.url(), &args);
    let stopped = eventually("the stop that happened while the agent was down", || {
        report_of(&receiver, &before, |r| {
            r.body["container"]["state"] == "stopped"
        })
    })
    .await;
    assert_eq!(stopped.url(), want);
    // No event says when that stop happened.
    assert!(
        stopped.body["container"].get("since").is_none(),
        "{stopped:#?}"
    );
}

/// The hazard: an image imported here under a registry's name gets a RepoDigest from
/// Podman although no registry holds it. Without evidence it is not reported (and the
/// agent says why); with `--report-unverified` it is, as the repository it was started as.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_image_on_podman_is_not_reported() {
    let scope = Scope::new("podlocal");
    let suffix = &scope.id[scope.id.len() - 8..];
    let image = format!("localhost:5001/deploytrack-test/podlocal-{suffix}:1");
    let repository = repository_of(&image).to_string();
    // Removed after the containers (locals drop in reverse order).
    let _image = PodmanName::Image(image.clone());
    let _cleanup = PodmanScope(scope.selector());
    let label = scope.selector();

    // A busybox rootfs that sleeps, imported: never pushed anywhere.
    let root = scope.dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sleep")).unwrap();
    let tar = scope.dir.join("rootfs.tar");
    run_ok(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
        None,
    );
    podman(&[
        "import",
        "-q",
        "--change",
        r#"CMD ["/bin/sleep","3600"]"#,
        tar.to_str().unwrap(),
        &image,
    ]);
    let local_digest = podman_repo_digest(&image, &repository);

    let receiver = Receiver::start().await;
    let args = ["--docker-host", PODMAN_HOST];
    let agent = scope.agent(&receiver.url(), &args);
    agent.ready().await;
    let local = scope.name("local");
    podman_run(&label, &local, &image);
    // A marker whose image the agent sees pulled (after the local one started): new
    // evidence reconciles, and re-examines the local container too.
    let marker = scope.name("marker");
    podman_run(&label, &marker, APP1);
    agent
        .logged("the warning about the local image", |l| {
            l.contains(UNVERIFIED) && l.contains(&repository)
        })
        .await;
    podman_pull(APP1);
    let marker_report = reported("the marker's report", &receiver, &marker).await;
    assert_eq!(
        marker_report.url(),
        podman_repo_digest(APP1, repository_of(APP1))
    );

    // Reported as started, with --report-unverified (its own queue and receiver).
    let unverified = Receiver::start().await;
    let extra = ["--docker-host", PODMAN_HOST, "--report-unverified"];
    let _second = scope.agent_in(&scope.dir.join("state2"), &unverified.url(), &extra, &[]);
    let report = reported(
        "the local container's report with --report-unverified",
        &unverified,
        &local,
    )
    .await;
    assert_eq!(report.url(), local_digest);

    // By now the first agent has long handled the local container, twice: never reported.
    let leaked: Vec<Received> = receiver
        .accepted()
        .into_iter()
        .filter(|r| r.name().ends_with(&format!("/{local}")) || r.url().contains(&repository))
        .collect();
    assert!(
        leaked.is_empty(),
        "the local image was reported without evidence: {leaked:#?}"
    );
    let warnings = agent
        .stderr()
        .lines()
        .filter(|l| l.contains(UNVERIFIED) && l.contains(&repository))
        .count();
    assert_eq!(warnings, 1, "once per image:\n{}", agent.stderr());
}

/// A pull seen names the repository pulled from: a container skipped for want of evidence
/// is reported once the pull is seen, and as the repository pulled from, also when it was
/// started under another name Podman gives a RepoDigest (a local tag that sorts first).
#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_while_the_agent_runs_is_reported_as_the_repository_pulled_from() {
    let scope = Scope::new("podpull");
    let suffix = &scope.id[scope.id.len() - 8..];
    let alias = format!("127.0.0.1:5001/deploytrack-test/podalias-{suffix}:1");
    let alias_repository = repository_of(&alias).to_string();
    podman(&["tag", APP1, &alias]);
    let _alias = PodmanName::Tag(alias.clone());
    let _cleanup = PodmanScope(scope.selector());
    let label = scope.selector();
    // The decoy: Podman gives the local tag a RepoDigest, and it sorts before the registry's.
    let decoy = podman_repo_digest(&alias, &alias_repository);
    let want = podman_repo_digest(APP1, repository_of(APP1));
    assert!(decoy < want, "{decoy} {want}");

    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &["--docker-host", PODMAN_HOST]);
    agent.ready().await;
    let tagged = scope.name("tagged");
    podman_run(&label, &tagged, &alias);
    // Skipped for want of evidence. (Unless a pull of APP1 by another test of this file,
    // just before this agent started, was replayed to it: then it is already reported, and
    // the url below still tells evidence from RepoDigests.)
    eventually("the tagged container skipped, or reported", || {
        let stderr = agent.stderr();
        let skipped = stderr
            .lines()
            .any(|l| l.contains(UNVERIFIED) && l.contains(&alias_repository));
        (skipped || report_of(&receiver, &tagged, |_| true).is_some()).then_some(())
    })
    .await;
    podman_pull(APP1);
    let report = reported(
        "the tagged container, once the pull is seen",
        &receiver,
        &tagged,
    )
    .await;
    assert_eq!(report.url(), want, "not the local tag's {decoy}");
    let pulled = scope.name("pulled");
    podman_run(&label, &pulled, APP1);
    let report = reported("the container of the image pulled", &receiver, &pulled).await;
    assert_eq!(report.url(), want);
}

/// Podman leaves `Variant` empty for arm64 (4.3 and 5.8): it is `v8`, the OCI image-spec's
/// default, and Docker, containerd and the receiver spell it out.
#[tokio::test(flavor = "multi_thread")]
async fn an_arm64_image_on_podman_is_reported_as_arm64_v8() {
    let scope = Scope::new("podarm");
    let _cleanup = PodmanScope(scope.selector());
    let label = scope.selector();
    let receiver = Receiver::start().await;
    let agent = scope.agent(&receiver.url(), &["--docker-host", PODMAN_HOST]);
    agent.ready().await;
    podman_pull(ARM1);
    let want = podman_repo_digest(ARM1, repository_of(ARM1));
    let name = scope.name("arm");
    // Its binaries are amd64: it runs here (Podman warns that the platform differs).
    podman_run(&label, &name, ARM1);
    let report = reported("the arm64 container's report", &receiver, &name).await;
    assert_eq!(report.url(), want);
    assert_eq!(
        report.body["platform"],
        serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        "{report:#?}"
    );
}
