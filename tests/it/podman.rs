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

#[tokio::test(flavor = "multi_thread")]
async fn podman_starts_and_stops_are_reported() {
    let scope = Scope::new("podman");
    let _cleanup = PodmanScope(scope.selector());
    let receiver = Receiver::start().await;
    let agent = scope.agent(
        &receiver.url(),
        &["--docker-host", PODMAN_HOST, "--report-stops"],
    );
    agent.ready().await;
    let name = scope.name("pod");
    let label = scope.selector();
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
        &label,
        "--name",
        &name,
        APP1,
    ]);
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
}
