//! B1 and B2: the agent against the real Docker Engine.
//!
//! Every container carries `deploytrack.bench.run=<run id>` and is removed at the end,
//! also when a measurement fails (and by scripts/bench.sh if this process dies).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{CreateContainerOptions, EventsOptions, StartContainerOptions};
use bollard::Docker;
use futures_util::stream::{self, StreamExt};
use serde_json::json;

use crate::report::{row, Section, Verdict};
use crate::util::*;
use crate::Ctx;
use deploytrack_test_support::receiver::Receiver;

pub const RUN_LABEL: &str = "deploytrack.bench.run";
const IMAGE: &str = "localhost:5000/deploytrack-test/app:1";
const PATIENCE: Duration = Duration::from_secs(300);
/// Containers started (and reported) before the measured ones, to warm caches and connections.
const WARMUP: usize = 5;
/// Pause after each start in B1, so every start is handled on its own.
const PAUSE: Duration = Duration::from_millis(100);
/// Parallel starts when B2 prepares its containers.
const PARALLEL_STARTS: usize = 8;
/// The agent asks for 5 s of event history at its first start; wait longer than that.
const QUIET_BEFORE_B2: Duration = Duration::from_secs(6);
const B2_REPEATS: usize = 3;

/// The bench's containers on the real engine.
struct Fleet {
    docker: Docker,
    run_id: String,
    sizes: Vec<usize>,
    count: usize,
    last_start: Instant,
}

impl Fleet {
    fn name(&self, i: usize) -> String {
        format!("dtbench-{}-{i}", self.run_id)
    }

    fn subset_label(s: usize) -> String {
        format!("deploytrack.bench.first{s}")
    }

    async fn start(&self, i: usize) -> Result<String, String> {
        let mut labels = HashMap::from([(RUN_LABEL.to_string(), self.run_id.clone())]);
        for &s in &self.sizes {
            if i < s {
                labels.insert(Self::subset_label(s), "yes".into());
            }
        }
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(self.name(i)),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(IMAGE.into()),
                    labels: Some(labels),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        log_config: Some(HostConfigLogConfig {
                            typ: Some("none".into()),
                            config: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("create {}: {e}", self.name(i)))?;
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| format!("start {}: {e}", self.name(i)))?;
        Ok(created.id)
    }

    /// Start containers until `upto` run, `PARALLEL_STARTS` at a time. Returns the seconds taken.
    async fn grow(&mut self, upto: usize) -> Result<f64, String> {
        let t0 = Instant::now();
        let from = self.count;
        if upto <= from {
            return Ok(0.0);
        }
        let this = &*self;
        let results: Vec<Result<String, String>> = stream::iter(from..upto)
            .map(|i| this.start(i))
            .buffer_unordered(PARALLEL_STARTS)
            .collect()
            .await;
        self.count = upto;
        self.last_start = Instant::now();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(e);
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    /// `docker rm -f` every container of this run. Returns (containers, seconds).
    fn remove_all(&self) -> (usize, f64) {
        remove_run(&self.run_id)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.remove_all();
    }
}

pub fn remove_run(run_id: &str) -> (usize, f64) {
    let t0 = Instant::now();
    let ids = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label={RUN_LABEL}={run_id}"),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for chunk in ids.chunks(100) {
        let _ = Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(chunk)
            .output();
    }
    (ids.len(), t0.elapsed().as_secs_f64())
}

/// B1 and B2 share the engine's containers: B1 starts its containers one by one and B2
/// adds the rest in parallel.
pub async fn real(ctx: Ctx, b1: bool, b2: bool) -> Vec<Result<Section, String>> {
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => return vec![Err(format!("cannot reach the Docker engine: {e}"))],
    };
    let host = match docker.info().await {
        Ok(info) => info.name.unwrap_or_default(),
        Err(e) => return vec![Err(format!("docker info: {e}"))],
    };
    let (b1_n, sizes) = if ctx.quick {
        (30, vec![20, 60])
    } else {
        (200, vec![100, 500])
    };
    let mut fleet = Fleet {
        docker,
        run_id: ctx.run_id.clone(),
        sizes: sizes.clone(),
        count: 0,
        last_start: Instant::now(),
    };
    let mut out = Vec::new();
    if b1 {
        out.push(latency(&ctx, &mut fleet, &host, b1_n).await);
    }
    if b2 {
        out.push(reconciliation(&ctx, &mut fleet, &sizes).await);
    }
    say(format!("removing the bench's {} containers", fleet.count));
    let (removed, secs) = fleet.remove_all();
    say(format!("removed {removed} containers in {secs:.0} s"));
    out
}

// ------------------------------------------------------------------------------------ B1

async fn latency(ctx: &Ctx, fleet: &mut Fleet, host: &str, n: usize) -> Result<Section, String> {
    let mut s = Section::new("B1", "Event to report latency (real engine)");
    s.method = format!(
        "The real engine; {WARMUP} warm-up containers, then {n} containers (`{IMAGE}`, `--network none`) created \
         and started one by one through the Engine API, with a {} ms pause after each start. The bench \
         subscribes to the engine's /events itself (filtered on its run label) and takes each `start` \
         event's `timeNano`; the receiver (hyper on loopback) takes the wall clock when a report's body has \
         arrived. Latency = receive time − event time, same clock. Agent with default settings, \
         `--label-selector {RUN_LABEL}=<run>`, state dir on the local disk.",
        PAUSE.as_millis()
    );
    let dir = scratch(&ctx.root, "b1");
    let receiver = Receiver::first_arrivals().await;
    let mut agent = spawn_agent(
        &dir,
        AgentArgs {
            url: Some(receiver.url()),
            state_dir: Some(dir.join("state")),
            selectors: vec![format!("{RUN_LABEL}={}", fleet.run_id)],
            docker_host: engine_host(),
            ..AgentArgs::default()
        },
    );
    agent.ready_within(Duration::from_secs(60)).await?;
    // The image is pulled while the agent runs, as on a host where deployments pull: the
    // pull is the evidence of its repository, so no start needs a registry lookup.
    pull_in_front_of(&agent).await?;
    let lookups_before = registry_manifest_gets();

    // Our own subscription: container name -> event timeNano.
    let events: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["start".to_string()]),
        (
            "label".to_string(),
            vec![format!("{RUN_LABEL}={}", fleet.run_id)],
        ),
    ]);
    let mut stream = fleet.docker.events(Some(EventsOptions {
        since: None,
        until: None,
        filters: Some(filters),
    }));
    let sink = events.clone();
    let listener = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let (Some(actor), Some(nanos)) = (msg.actor, msg.time_nano) else {
                continue;
            };
            if let Some(name) = actor.attributes.and_then(|mut a| a.remove("name")) {
                sink.lock().unwrap().insert(name, nanos);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = WARMUP + n;
    say(format!("B1: starting {total} containers one by one"));
    let t0 = Instant::now();
    for i in 0..total {
        fleet.start(i).await?;
        fleet.count = i + 1;
        tokio::time::sleep(PAUSE).await;
        if i % 50 == 49 {
            say(format!("B1: {} of {total} started", i + 1));
        }
    }
    fleet.last_start = Instant::now();
    let start_secs = t0.elapsed().as_secs_f64();
    if let Err(e) = receiver.wait_distinct(total, PATIENCE).await {
        return Err(format!("{e}:\n{}", agent.stderr_tail()));
    }
    let _ = wait_for(
        "the engine's start events",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (events.lock().unwrap().len() >= total).then_some(()),
    )
    .await;
    listener.abort();
    let hwm = agent.status_kb("VmHWM").unwrap_or(0);
    agent.stop_within(Duration::from_secs(30)).await;
    let lookups = registry_manifest_gets().saturating_sub(lookups_before);

    let events = events.lock().unwrap().clone();
    let mut ms = Vec::new();
    let mut missing = 0;
    for i in WARMUP..total {
        let name = fleet.name(i);
        match (events.get(&name), receiver.hit(&format!("{host}/{name}"))) {
            (Some(&nanos), Some(hit)) => ms.push((hit.wall_ns - nanos as i128) as f64 / 1e6),
            _ => missing += 1,
        }
    }
    if ms.is_empty() {
        return Err("no latency could be measured (no events or no reports)".into());
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p = |q| percentile(&sorted, q);
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    let over = |limit: f64| sorted.iter().filter(|&&v| v > limit).count();
    s.rows.push(row(
        "event → report latency p50",
        format!("{:.1} ms", p(0.50)),
        "≤ 5 ms",
        Verdict::of(p(0.50) <= 5.0),
    ));
    s.rows.push(row(
        "event → report latency p99",
        format!("{:.1} ms", p(0.99)),
        "≤ 25 ms",
        Verdict::of(p(0.99) <= 25.0),
    ));
    s.details.push(format!(
        "| Containers | min | p50 | p90 | p99 | max | mean | > 25 ms | > 50 ms |\n|---|---|---|---|---|---|---|---|---|\n| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
        sorted.len(),
        sorted[0],
        p(0.50),
        p(0.90),
        p(0.99),
        sorted[sorted.len() - 1],
        mean,
        over(25.0),
        over(50.0),
    ));
    s.details.push(String::new());
    s.details.push(format!(
        "{total} containers started in {start_secs:.0} s ({:.2} s each, including the pause). Agent peak RSS {}.{}",
        start_secs / total as f64,
        mib(hwm as f64 * 1024.0),
        if missing > 0 { format!(" {missing} containers had no event or no report and are not counted.") } else { String::new() }
    ));
    s.details.push(String::new());
    s.details.push(format!(
        "Registry manifest requests while the {total} containers started (the registry's access log: what the agent's lookups cost): {lookups}."
    ));
    s.raw = json!({
        "registry_manifest_gets": lookups,
        "containers": sorted.len(),
        "missing": missing,
        "latency_ms": { "min": sorted[0], "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "max": sorted[sorted.len()-1], "mean": mean },
        "samples_ms": ms,
        "start_seconds": start_secs,
        "vmhwm_kb": hwm,
    });
    Ok(s)
}

// ------------------------------------------------------------------------------------ B2

struct Reconcile {
    n: usize,
    runs: Vec<f64>,
    first: Vec<f64>,
    cpu: Vec<f64>,
    hwm_kb: u64,
    prepared_in: f64,
}

async fn reconciliation(ctx: &Ctx, fleet: &mut Fleet, sizes: &[usize]) -> Result<Section, String> {
    let mut s = Section::new("B2", "Reconciliation at start (real engine)");
    s.method = format!(
        "N containers already run on the real engine (those of B1 plus more, started {PARALLEL_STARTS} at a \
         time), all labelled for this run; a subset label picks exactly N. The agent starts with an empty \
         state dir and a fresh receiver, and `--label-selector` for the N containers. Measured from spawning \
         the agent process until the receiver has all N reports; {B2_REPEATS} runs per N, the median is \
         shown. The agent is started only once no container was started for {} s (its first start replays \
         5 s of event history).",
        QUIET_BEFORE_B2.as_secs()
    );
    let mut results = Vec::new();
    for &n in sizes {
        say(format!("B2: preparing {n} running containers"));
        let prepared_in = fleet.grow(n).await?;
        let quiet = fleet.last_start + QUIET_BEFORE_B2;
        tokio::time::sleep_until(quiet.into()).await;
        let mut r = Reconcile {
            n,
            runs: Vec::new(),
            first: Vec::new(),
            cpu: Vec::new(),
            hwm_kb: 0,
            prepared_in,
        };
        for k in 0..B2_REPEATS {
            say(format!("B2: reconciling {n} containers, run {}", k + 1));
            let dir = scratch(&ctx.root, &format!("b2-{n}-{k}"));
            let receiver = Receiver::first_arrivals().await;
            let mut agent = spawn_agent(
                &dir,
                AgentArgs {
                    url: Some(receiver.url()),
                    state_dir: Some(dir.join("state")),
                    selectors: vec![
                        format!("{RUN_LABEL}={}", fleet.run_id),
                        Fleet::subset_label(n),
                    ],
                    docker_host: engine_host(),
                    ..AgentArgs::default()
                },
            );
            if let Err(e) = receiver.wait_distinct(n, PATIENCE).await {
                return Err(format!("{e}:\n{}", agent.stderr_tail()));
            }
            let (first, last) = receiver.span().ok_or("nothing received")?;
            r.runs.push((last - agent.spawned()).as_secs_f64());
            r.first.push((first - agent.spawned()).as_secs_f64());
            r.cpu.push(agent.cpu_seconds().unwrap_or(0.0));
            r.hwm_kb = r.hwm_kb.max(agent.status_kb("VmHWM").unwrap_or(0));
            if receiver.distinct() != n {
                return Err(format!("expected {n} reports, got {}", receiver.distinct()));
            }
            agent.stop_within(Duration::from_secs(30)).await;
        }
        results.push(r);
    }
    for r in &results {
        let med = median(&r.runs);
        s.rows.push(row(
            format!("{} running containers, agent start to all received", r.n),
            format!("{med:.2} s"),
            if r.n >= 500 { "≤ 1 s at 500" } else { "" },
            if r.n >= 500 {
                Verdict::of(med <= 1.0)
            } else {
                Verdict::Info
            },
        ));
    }
    s.details.push("| Containers | Runs (start to all received) | Median | Start to first report (median) | Agent CPU (median) | Agent peak RSS | Containers prepared in |".into());
    s.details.push("|---|---|---|---|---|---|---|".into());
    for r in &results {
        s.details.push(format!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {} | {} |",
            r.n,
            r.runs
                .iter()
                .map(|t| format!("{t:.2} s"))
                .collect::<Vec<_>>()
                .join(", "),
            median(&r.runs),
            median(&r.first),
            median(&r.cpu),
            mib(r.hwm_kb as f64 * 1024.0),
            if r.prepared_in > 0.0 {
                format!("{:.0} s", r.prepared_in)
            } else {
                "-".into()
            },
        ));
    }
    if let [small, large] = &results[..] {
        s.details.push(String::new());
        s.details.push(format!(
            "Growth: {:.1}× the containers took {:.1}× the time ({:.1} ms per container at {}, {:.1} ms at {}).",
            large.n as f64 / small.n as f64,
            median(&large.runs) / median(&small.runs),
            1000.0 * median(&small.runs) / small.n as f64,
            small.n,
            1000.0 * median(&large.runs) / large.n as f64,
            large.n
        ));
    }
    s.raw = serde_json::Value::Array(
        results
            .iter()
            .map(|r| json!({ "n": r.n, "runs_s": r.runs, "first_s": r.first, "agent_cpu_s": r.cpu, "vmhwm_kb": r.hwm_kb, "prepared_s": r.prepared_in }))
            .collect(),
    );
    Ok(s)
}

/// The engine the bench's own client and `docker` commands use (`DOCKER_HOST`), for the agent
/// too: `DOCKER_HOST=unix:///var/run/deploytrack-docker28.sock scripts/bench.sh --only B1,B2`
/// measures the containerd image store.
/// `docker pull` of the bench image on the engine under test, then wait until the agent
/// says it remembered the pull.
async fn pull_in_front_of(agent: &Agent) -> Result<(), String> {
    let mut pull = std::process::Command::new("docker");
    if let Some(host) = engine_host() {
        pull.env("DOCKER_HOST", host);
    }
    let out = pull
        .args(["pull", "-q", IMAGE])
        .output()
        .map_err(|e| format!("docker pull: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker pull {IMAGE}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    wait_for(
        "the agent to remember the pull",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            agent
                .stderr()
                .contains("remembered which repository holds the image")
                .then_some(())
        },
    )
    .await
}

/// Manifest GETs in the log of the registry the engine under test reaches (scripts/test-env.sh
/// runs one per network namespace, each with its own log).
fn registry_manifest_gets() -> usize {
    let log = if engine_host().is_some_and(|h| h.contains("deploytrack-docker28")) {
        "/tmp/deploytrack-registry-d28.log"
    } else {
        "/tmp/deploytrack-registry.log"
    };
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/manifests/"))
        .count()
}

fn engine_host() -> Option<String> {
    std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty())
}
