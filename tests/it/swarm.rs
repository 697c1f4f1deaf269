//! Swarm services on the test engine as a single-node swarm: names that follow the slot
//! through updates and scaling, global services, stacks, and stops.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use deploytrack_test_support::*;

/// The test engine as a swarm manager. Left active: later runs (and other tests) reuse it.
fn ensure_swarm(engine: Engine) {
    static CLASSIC: OnceLock<()> = OnceLock::new();
    static CONTAINERD: OnceLock<()> = OnceLock::new();
    let ready = match engine {
        Engine::Classic => &CLASSIC,
        Engine::Containerd => &CONTAINERD,
    };
    ready.get_or_init(|| {
        if engine.docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) == "active" {
            return;
        }
        let out = engine
            .docker_command()
            .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .output()
            .expect("run docker swarm init");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Another test process may have won the race.
        assert!(
            out.status.success() || stderr.contains("already part of a swarm"),
            "docker swarm init failed: {stderr}"
        );
    });
}

/// A test's services and stacks, removed when it ends, however it ends; then its scope
/// removes any container left.
struct Swarm {
    scope: Scope,
    services: std::cell::RefCell<Vec<String>>,
    stacks: std::cell::RefCell<Vec<String>>,
}

impl Swarm {
    fn new(engine: Engine, test: &str) -> Swarm {
        let scope = Scope::new(engine, test);
        ensure_swarm(engine);
        Swarm {
            scope,
            services: Default::default(),
            stacks: Default::default(),
        }
    }

    /// `docker service create` of `image` with the scope's label on its containers
    /// (`--label` would label the service only). Returns the service's name.
    fn service(&self, short: &str, extra: &[&str], image: &str) -> String {
        let name = self.scope.name(short);
        let label = self.scope.selector();
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--container-label",
            &label,
            // The image is local: no registry lookup.
            "--no-resolve-image",
            // busybox's sleep ignores SIGTERM: don't wait 10 s for each stop.
            "--stop-signal",
            "KILL",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        self.services.borrow_mut().push(name.clone());
        self.scope.docker(&args);
        name
    }

    /// `docker stack deploy` of `file`, named `stack`.
    fn stack(&self, stack: &str, file: &std::path::Path) {
        self.stacks.borrow_mut().push(stack.to_string());
        self.scope.docker(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            file.to_str().unwrap(),
            stack,
        ]);
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let engine = self.scope.engine();
        for service in self.services.borrow().iter() {
            let _ = engine
                .docker_command()
                .args(["service", "rm", service])
                .output();
        }
        for stack in self.stacks.borrow().iter() {
            let _ = engine
                .docker_command()
                .args(["stack", "rm", stack])
                .output();
        }
    }
}

/// Every name reported so far.
fn names(receiver: &Receiver) -> BTreeSet<String> {
    receiver
        .accepted()
        .iter()
        .map(|r| r.name().to_string())
        .collect()
}

/// The last accepted report for `name`.
fn last(receiver: &Receiver, name: &str) -> Option<receiver::Received> {
    receiver
        .accepted()
        .into_iter()
        .rev()
        .find(|r| r.name() == name)
}

/// The ids of every task the service ever had (running or shut down).
fn task_ids(engine: Engine, service: &str) -> Vec<String> {
    engine
        .docker(&["service", "ps", "-q", "--no-trunc", service])
        .split_whitespace()
        .map(String::from)
        .collect()
}

engine_test!(replicated_slots_keep_their_names_through_an_update_and_a_scale);
async fn replicated_slots_keep_their_names_through_an_update_and_a_scale(engine: Engine) {
    let swarm = Swarm::new(engine, "swarm-replicated");
    let receiver = Receiver::start().await;
    let agent = swarm.scope.agent(&receiver.url(), &[]);
    agent.ready().await;
    let web = swarm.service("web", &["--replicas", "2"], APP1);
    let (one, two) = (format!("{web}.1"), format!("{web}.2"));
    let app1 = engine.repo_digest(APP1, "localhost:5000/deploytrack-test/app");
    let app2 = engine.repo_digest(APP2, "localhost:5000/deploytrack-test/app");
    for slot in [&one, &two] {
        let report = receiver.accepted_report("a report per slot", slot).await;
        assert_eq!(report.url(), app1);
    }

    // An update replaces every task: new containers, new task ids, the same two names.
    engine.docker(&[
        "service",
        "update",
        "--detach",
        "--no-resolve-image",
        "--image",
        APP2,
        &web,
    ]);
    eventually("both slots to report the new digest", || {
        [&one, &two]
            .iter()
            .all(|slot| last(&receiver, slot).is_some_and(|r| r.url() == app2))
            .then_some(())
    })
    .await;
    assert_eq!(names(&receiver), BTreeSet::from([one.clone(), two.clone()]));
    let tasks = task_ids(engine, &web);
    assert!(tasks.len() >= 4, "{tasks:?}");
    for name in names(&receiver) {
        for task in &tasks {
            assert!(!name.contains(task.as_str()), "{name} holds task id {task}");
        }
    }

    // Scaling to three adds exactly one name.
    engine.docker(&["service", "scale", "--detach", &format!("{web}=3")]);
    let three = format!("{web}.3");
    let report = receiver.accepted_report("the third slot", &three).await;
    assert_eq!(report.url(), app2);
    assert_eq!(names(&receiver), BTreeSet::from([one, two, three]));
}

engine_test!(a_global_service_is_named_by_its_host);
async fn a_global_service_is_named_by_its_host(engine: Engine) {
    let swarm = Swarm::new(engine, "swarm-global");
    let receiver = Receiver::start().await;
    let agent = swarm.scope.agent(&receiver.url(), &[]);
    // The same containers with the host named by the setting, from the environment.
    let renamed = Receiver::start().await;
    let state = swarm.scope.dir.join("state-renamed");
    let overridden = swarm.scope.agent_in(
        &state,
        &renamed.url(),
        &[],
        &[("DEPLOYTRACK_HOST_NAME", "edge-7")],
    );
    agent.ready().await;
    overridden.ready().await;
    let agents = swarm.service("agents", &["--mode", "global"], APP1);
    let host = engine.host_name();
    let want = format!("{host}/{agents}");
    receiver.accepted_report("the global task", &want).await;
    renamed
        .accepted_report(
            "the global task, host overridden",
            &format!("edge-7/{agents}"),
        )
        .await;
    assert_eq!(names(&receiver), BTreeSet::from([want]));
    assert_eq!(renamed.accepted().len(), 1, "{:#?}", renamed.accepted());
}

engine_test!(a_stack_fills_swarm_stack);
async fn a_stack_fills_swarm_stack(engine: Engine) {
    let swarm = Swarm::new(engine, "swarm-stack");
    let receiver = Receiver::start().await;
    let agent = swarm.scope.agent(
        &receiver.url(),
        &[
            "--name-template",
            "{swarm_stack}/{swarm_service}.{swarm_slot|host}",
        ],
    );
    agent.ready().await;
    let stack = swarm.scope.name("shop");
    let file = swarm.scope.dir.join("stack.yaml");
    // `labels:` under the service label its containers; `deploy.labels` would label the
    // service only.
    std::fs::write(
        &file,
        format!(
            r#"version: "3.8"
services:
  web:
    image: {APP1}
    stop_signal: SIGKILL
    labels:
      {RUN_LABEL}: "{id}"
    deploy:
      replicas: 1
"#,
            id = swarm.scope.id
        ),
    )
    .unwrap();
    swarm.stack(&stack, &file);
    let want = format!("{stack}/{stack}_web.1");
    receiver.accepted_report("the stack's task", &want).await;
    assert_eq!(names(&receiver), BTreeSet::from([want]));
}

engine_test!(removing_a_service_stops_every_name);
async fn removing_a_service_stops_every_name(engine: Engine) {
    let swarm = Swarm::new(engine, "swarm-rm");
    let receiver = Receiver::start().await;
    let agent = swarm.scope.agent(&receiver.url(), &["--report-stops"]);
    agent.ready().await;
    let web = swarm.service("web", &["--replicas", "2"], APP1);
    let slots = [format!("{web}.1"), format!("{web}.2")];
    for slot in &slots {
        receiver.accepted_report("a report per slot", slot).await;
    }
    engine.docker(&["service", "rm", &web]);
    let state = |r: &receiver::Received| r.body["container"]["state"].as_str().map(String::from);
    eventually("every slot's last report to say stopped", || {
        slots
            .iter()
            .all(|slot| {
                last(&receiver, slot).is_some_and(|r| state(&r).as_deref() == Some("stopped"))
            })
            .then_some(())
    })
    .await;
    for slot in &slots {
        let reports: Vec<_> = receiver
            .accepted()
            .into_iter()
            .filter(|r| r.name() == slot.as_str())
            .collect();
        let (first, stop) = (&reports[0], &reports[reports.len() - 1]);
        assert_eq!(state(first).as_deref(), Some("running"), "{reports:#?}");
        // Both carry the engine's time, and the stop comes after the start.
        let since = |r: &receiver::Received| {
            humantime::parse_rfc3339(r.body["container"]["since"].as_str().unwrap()).unwrap()
        };
        assert!(since(first) < since(stop), "{reports:#?}");
    }
    assert_eq!(names(&receiver), slots.into_iter().collect());
}
