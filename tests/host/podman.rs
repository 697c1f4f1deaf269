//! Podman's Docker-compatible API: its own event names (`remove`, sometimes `died`).

use crate::common::*;

pub const PODMAN_HOST: &str = "unix:///run/deploytrack-podman.sock";

fn podman(args: &[&str]) -> String {
    run_ok("podman", args, None)
}

/// Removes the scope's Podman containers, also when the test fails.
struct PodmanScope(String);

impl Drop for PodmanScope {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rm", "-f", "--filter", &format!("label={}", self.0)])
            .output();
    }
}

/// `podman run -d` of APP1 with the scope's label.
fn podman_run(label: &str, name: &str) {
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
        APP1,
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_starts_stops_and_reconciliation_are_reported() {
    let scope = Scope::new("podman");
    let _cleanup = PodmanScope(scope.selector());
    let receiver = Receiver::start().await;
    let label = scope.selector();
    // Running before the agent: found by the reconciliation at start.
    let before = scope.name("before");
    podman_run(&label, &before);
    let args = ["--docker-host", PODMAN_HOST, "--report-stops"];
    let mut agent = scope.agent(&receiver.url(), &args);
    agent.ready().await;
    let before_suffix = format!("/{before}");
    eventually("the container running before the agent", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name().ends_with(&before_suffix))
    })
    .await;
    let name = scope.name("pod");
    podman_run(&label, &name);
    let digests = podman(&[
        "image",
        "inspect",
        "--format",
        "{{join .RepoDigests \" \"}}",
        APP1,
    ]);
    let want = digests
        .split_whitespace()
        .find(|d| d.starts_with("localhost:5000/deploytrack-test/app@"))
        .expect("podman has the app digest")
        .to_string();
    let suffix = format!("/{name}");
    let running = eventually("the podman container's report", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name().ends_with(&suffix))
    })
    .await;
    assert_eq!(running.url(), want);
    assert_eq!(running.body["container"]["state"], "running");
    podman(&["rm", "-f", &name]);
    let stopped = eventually("the podman container's stop", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name().ends_with(&suffix) && r.body["container"]["state"] == "stopped")
    })
    .await;
    assert_eq!(stopped.url(), want);
    // Podman's start time and event times are read as Docker's are, and order the two.
    let since = |r: &receiver::Received| {
        let text = r.body["container"]["since"].as_str().unwrap_or_default();
        humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("since {text:?}: {e}"))
    };
    assert!(
        since(&running) < since(&stopped),
        "{running:#?}\n{stopped:#?}"
    );

    // Removed while the agent is down: the reconciliation at the next start reports the stop.
    agent.stop().await;
    podman(&["rm", "-f", &before]);
    let _agent = scope.agent(&receiver.url(), &args);
    let stopped = eventually("the stop that happened while the agent was down", || {
        receiver.accepted().into_iter().find(|r| {
            r.name().ends_with(&before_suffix) && r.body["container"]["state"] == "stopped"
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
