//! Faults an operator's host throws at the agent: paused and crash-looping containers.

use crate::common::*;

fn stop_reports(receiver: &Receiver, name: &str) -> usize {
    receiver
        .accepted()
        .iter()
        .filter(|r| r.name() == name && r.body["container"]["state"] == "stopped")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_and_restarting_containers_are_running() {
    let scope = Scope::new("paused");
    let receiver = Receiver::start().await;
    let agent = scope.agent(
        &receiver.url(),
        &["--report-stops", "--resync-interval", "1s"],
    );
    agent.ready().await;
    let host = engine_host_name();
    let paused = scope.name("paused");
    scope.run(&["--name", &paused], APP1);
    // A crash loop under a restart policy: the image's shell, exiting after a moment.
    let looping = scope.name("looping");
    let selector = scope.selector();
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &selector,
        "--name",
        &looping,
        "--restart",
        "always",
        APP1,
        "/bin/sh",
        "-c",
        "sleep 0.3; exit 3",
    ]);
    for name in [&paused, &looping] {
        receiver
            .accepted_report("the container running", &format!("{host}/{name}"))
            .await;
    }
    docker(&["pause", &paused]);
    let reconciled = agent.stderr().matches("reconciled with the engine").count();
    // Three restarts of the loop, and two reconciliations while paused.
    eventually("the crash loop to restart three times", || {
        let count: u32 = docker(&["inspect", "--format", "{{.RestartCount}}", &looping])
            .parse()
            .unwrap_or(0);
        (count >= 3).then_some(())
    })
    .await;
    eventually("two reconciliations after the pause", || {
        (agent.stderr().matches("reconciled with the engine").count() >= reconciled + 2)
            .then_some(())
    })
    .await;
    let marker = scope.name("marker");
    scope.run(&["--name", &marker], APP2);
    receiver
        .accepted_report("the marker", &format!("{host}/{marker}"))
        .await;
    for name in [&paused, &looping] {
        assert_eq!(
            stop_reports(&receiver, &format!("{host}/{name}")),
            0,
            "{name} was reported stopped: {:?}",
            receiver.accepted()
        );
    }
    // Unpaused, then removed: a stop is still a stop.
    docker(&["unpause", &paused]);
    docker(&["rm", "-f", &paused, &looping]);
    for name in [&paused, &looping] {
        eventually("the removal reported as a stop", || {
            (stop_reports(&receiver, &format!("{host}/{name}")) == 1).then_some(())
        })
        .await;
    }
}
