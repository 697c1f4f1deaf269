//! Soak: the agent for a long while (30 minutes unless `DEPLOYTRACK_SOAK_DURATION`, in
//! humantime format, says otherwise) under container churn, endpoint outages and two engine
//! restarts, then checked: the endpoint's final view equals the engine's truth for every
//! container that ran, resident memory and file descriptors did not grow past their warm-up
//! level, and the log holds no storm of warnings. `cargo test` skips it (`#[ignore]`);
//! `scripts/soak.sh` runs it, and it writes its figures to SOAK.md.
//!
//! Everything happens on a private engine (a dockerd of its own in its own network
//! namespace), so restarting that engine disturbs no other test.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::receiver::Received;
use crate::common::*;

const DEFAULT_DURATION: Duration = Duration::from_secs(30 * 60);
const APP_REPO: &str = "localhost:5000/deploytrack-test/app";

/// Container names in use at a time; a removed name is sometimes retired for a fresh one.
const ACTIVE_NAMES: usize = 40;
const MIN_RUNNING: usize = 10;
const TARGET_RUNNING: usize = 20;
const MAX_RUNNING: usize = 30;
/// A container is left alone this long after a command touched it, so that the agents
/// see every state it goes through (a soak is about endurance, not about races).
const MIN_AGE: Duration = Duration::from_secs(2);
/// Every docker command is bounded: a wedged engine fails the soak instead of stalling it.
const DOCKER_TIMEOUT_SECS: &str = "60";

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Fractions of the duration: the warm-up (an outage and an engine restart included), and
/// the last part whose peak must stay within the tolerance of the warm-up's.
const WARM_UP_END: f64 = 0.25;
const LAST_PART_START: f64 = 0.70;
/// Samples this early are start-up, not a level.
const SETTLE_SECS: f64 = 10.0;
const RSS_TOLERANCE_PERCENT: u64 = 25;
const RSS_TOLERANCE_KIB: u64 = 2048;
const FD_TOLERANCE_PERCENT: usize = 25;
const FD_TOLERANCE: usize = 5;
/// WARN or ERROR lines in one minute that make a storm.
const STORM_PER_MINUTE: usize = 60;
/// WARN lines allowed per outage or engine restart over the whole run.
const WARN_BUDGET_PER_DISTURBANCE: usize = 30;
/// How long after the churn stops the endpoints may take to hold the engine's truth.
const CONVERGENCE: Duration = Duration::from_secs(180);

const REQUEST_TIMEOUT: &str = "3s";
const SLOW_ANSWER: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// The endpoint answers 503.
    Unavailable,
    /// Nothing listens on the endpoint's port: connections are refused.
    Refused,
    /// The endpoint answers after the agent's request timeout.
    Slow,
    /// The endpoint answers 503 with `Retry-After: 3`.
    RetryAfter,
}

impl Outage {
    fn describe(self) -> &'static str {
        match self {
            Outage::Unavailable => "503",
            Outage::Refused => "connection refused",
            Outage::Slow => "answers slower than --request-timeout",
            Outage::RetryAfter => "503 with Retry-After: 3",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    OutageBegins(Outage),
    OutageEnds,
    EngineRestart,
    ChurnEnds,
}

/// When each disturbance happens, as a fraction of the duration. The warm-up holds one
/// outage and one engine restart, so that its level includes what they cost.
const TIMELINE: &[(f64, Step)] = &[
    (0.05, Step::OutageBegins(Outage::Unavailable)),
    (0.11, Step::OutageEnds),
    (0.14, Step::EngineRestart),
    (0.30, Step::OutageBegins(Outage::Refused)),
    (0.38, Step::OutageEnds),
    (0.45, Step::OutageBegins(Outage::Slow)),
    (0.50, Step::OutageEnds),
    (0.60, Step::EngineRestart),
    (0.74, Step::OutageBegins(Outage::RetryAfter)),
    (0.82, Step::OutageEnds),
    (0.93, Step::ChurnEnds),
];

fn soak_duration() -> Duration {
    match std::env::var("DEPLOYTRACK_SOAK_DURATION") {
        Ok(text) if !text.trim().is_empty() => humantime::parse_duration(text.trim())
            .unwrap_or_else(|e| panic!("DEPLOYTRACK_SOAK_DURATION={text:?}: {e}")),
        _ => DEFAULT_DURATION,
    }
}

/// `docker -H host ...`, bounded in time.
fn dk(host: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args([DOCKER_TIMEOUT_SECS, "docker", "-H", host])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {} failed ({}): {}",
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn image_ref(text: &str) -> Option<&'static str> {
    [APP1, APP2].into_iter().find(|i| *i == text)
}

/// A container as the engine lists it.
struct Listed {
    id: String,
    state: String,
    image: Option<&'static str>,
}

/// Every container of the soak on the engine, by name.
fn engine_containers(host: &str, label: &str) -> Result<HashMap<String, Listed>, String> {
    let out = dk(
        host,
        &[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Image}}",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f.len() == 4).then(|| {
                (
                    f[1].to_string(),
                    Listed {
                        id: f[0].to_string(),
                        state: f[2].to_string(),
                        image: image_ref(f[3]),
                    },
                )
            })
        })
        .collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Running,
    Stopped,
}

/// The last container that ran under a name.
#[derive(Clone, Debug)]
struct Ran {
    id: String,
    image: &'static str,
}

struct Slot {
    name: String,
    state: State,
    last: Option<Ran>,
    touched: Instant,
    active: bool,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Run,
    Start,
    Stop,
    Restart,
    Remove,
    Recreate,
}

#[derive(Clone, Default)]
struct ChurnStats {
    /// Containers created and started (`docker run`).
    created: usize,
    /// Every start: runs, `docker start`, `docker restart`.
    starts: usize,
    stops: usize,
    restarts: usize,
    removes: usize,
    /// Removed and run again under the same name with the other image (a digest change).
    recreates: usize,
    failures: usize,
    last_failure: Option<String>,
    running: usize,
    running_min: Option<usize>,
    running_max: usize,
    names: usize,
}

/// The churn: one docker command at a time against the private engine, keeping between
/// MIN_RUNNING and MAX_RUNNING containers running, with a model of what runs under each name.
struct Churn {
    host: String,
    label: String,
    suffix: String,
    slots: Vec<Slot>,
    stats: ChurnStats,
    rng: fastrand::Rng,
}

impl Churn {
    fn new(host: &str, label: &str, suffix: &str) -> Churn {
        let mut churn = Churn {
            host: host.to_string(),
            label: label.to_string(),
            suffix: suffix.to_string(),
            slots: Vec::new(),
            stats: ChurnStats::default(),
            rng: fastrand::Rng::new(),
        };
        for _ in 0..ACTIVE_NAMES {
            churn.mint();
        }
        churn
    }

    fn mint(&mut self) -> usize {
        let name = format!("soak{:04}-{}", self.slots.len(), self.suffix);
        self.slots.push(Slot {
            name,
            state: State::Absent,
            last: None,
            touched: Instant::now(),
            active: true,
        });
        self.stats.names = self.slots.len();
        self.slots.len() - 1
    }

    fn count(&self, state: State) -> usize {
        self.slots
            .iter()
            .filter(|s| s.active && s.state == state)
            .count()
    }

    /// Until `stop`; each command holds `pause` (an engine restart takes it), and the model
    /// is read back from the engine after each restart (`epoch`) and after any failure.
    fn run(
        mut self,
        stop: Arc<AtomicBool>,
        pause: Arc<tokio::sync::Mutex<()>>,
        epoch: Arc<AtomicU64>,
        live: Arc<Mutex<ChurnStats>>,
    ) -> Churn {
        let mut seen_epoch = epoch.load(Ordering::SeqCst);
        while !stop.load(Ordering::SeqCst) {
            {
                let _running = pause.blocking_lock();
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let now = epoch.load(Ordering::SeqCst);
                if now != seen_epoch {
                    seen_epoch = now;
                    self.resync();
                }
                self.step();
                let running = self.count(State::Running);
                self.stats.running = running;
                self.stats.running_max = self.stats.running_max.max(running);
                if self.stats.created >= MIN_RUNNING {
                    self.stats.running_min =
                        Some(self.stats.running_min.map_or(running, |m| m.min(running)));
                }
                *live.lock().unwrap() = self.stats.clone();
            }
            std::thread::sleep(Duration::from_millis(self.rng.u64(200..800)));
        }
        self.resync();
        self
    }

    fn step(&mut self) {
        let running = self.count(State::Running);
        let stopped = self.count(State::Stopped);
        let mut menu: Vec<(Op, u32)> = Vec::new();
        if running < MAX_RUNNING {
            menu.push((Op::Run, if running < TARGET_RUNNING { 5 } else { 1 }));
            if stopped > 0 {
                menu.push((Op::Start, 2));
            }
        }
        if running > MIN_RUNNING {
            menu.push((Op::Stop, if running > TARGET_RUNNING { 3 } else { 1 }));
        }
        if running > 0 {
            menu.push((Op::Restart, 1));
        }
        if running + stopped > 0 {
            menu.push((Op::Recreate, 3));
        }
        if running + stopped > MIN_RUNNING {
            menu.push((Op::Remove, if stopped > 5 { 3 } else { 1 }));
        }
        let total: u32 = menu.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.u32(0..total);
        let op = menu
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(op, _)| *op)
            .unwrap_or(Op::Run);
        let wanted: &[State] = match op {
            Op::Run => &[State::Absent],
            Op::Start => &[State::Stopped],
            Op::Stop | Op::Restart => &[State::Running],
            Op::Remove | Op::Recreate => &[State::Running, State::Stopped],
        };
        let candidates: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.active && wanted.contains(&s.state) && s.touched.elapsed() >= MIN_AGE
            })
            .collect();
        let slot = match (op, candidates.is_empty()) {
            (_, false) => candidates[self.rng.usize(..candidates.len())],
            (Op::Run, true) => self.mint(),
            _ => return,
        };
        if let Err(e) = self.apply(slot, op) {
            self.stats.failures += 1;
            eprintln!("[soak] churn: {e}");
            self.stats.last_failure = Some(e);
            self.resync();
        }
        self.slots[slot].touched = Instant::now();
    }

    fn apply(&mut self, i: usize, op: Op) -> Result<(), String> {
        let name = self.slots[i].name.clone();
        let host = self.host.clone();
        match op {
            Op::Run => {
                let image = if self.rng.bool() { APP1 } else { APP2 };
                self.create(i, image)?;
            }
            Op::Start => {
                dk(&host, &["start", &name])?;
                self.slots[i].state = State::Running;
                self.stats.starts += 1;
            }
            Op::Stop => {
                if self.rng.bool() {
                    dk(&host, &["stop", "-t", "1", &name])?;
                } else {
                    dk(&host, &["kill", &name])?;
                }
                self.slots[i].state = State::Stopped;
                self.stats.stops += 1;
            }
            Op::Restart => {
                dk(&host, &["restart", "-t", "1", &name])?;
                self.stats.restarts += 1;
                self.stats.starts += 1;
            }
            Op::Remove => {
                dk(&host, &["rm", "-f", &name])?;
                self.slots[i].state = State::Absent;
                self.stats.removes += 1;
                // Retire a third of the removed names: the set of names keeps growing.
                if self.rng.u8(..3) == 0 {
                    self.slots[i].active = false;
                    self.mint();
                }
            }
            Op::Recreate => {
                let other = match self.slots[i].last.as_ref().map(|r| r.image) {
                    Some(APP1) => APP2,
                    _ => APP1,
                };
                dk(&host, &["rm", "-f", &name])?;
                self.slots[i].state = State::Absent;
                self.stats.removes += 1;
                self.create(i, other)?;
                self.stats.recreates += 1;
            }
        }
        Ok(())
    }

    fn create(&mut self, i: usize, image: &'static str) -> Result<(), String> {
        let name = self.slots[i].name.clone();
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &self.label,
            "--stop-timeout",
            "2",
            "--name",
            &name,
        ];
        // Some come back by themselves after an engine restart.
        if self.rng.u8(..5) == 0 {
            args.extend(["--restart", "unless-stopped"]);
        }
        args.push(image);
        let id = dk(&self.host, &args)?;
        let slot = &mut self.slots[i];
        slot.state = State::Running;
        slot.last = Some(Ran { id, image });
        self.stats.created += 1;
        self.stats.starts += 1;
        Ok(())
    }

    /// Read the model back from the engine (after an engine restart or a failed command).
    fn resync(&mut self) {
        let listed = match engine_containers(&self.host, &self.label) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("[soak] churn: cannot list the containers: {e}");
                return;
            }
        };
        for slot in self.slots.iter_mut() {
            slot.state = match listed.get(&slot.name) {
                None => State::Absent,
                Some(c) if c.state == "running" => {
                    if slot.last.as_ref().map(|r| &r.id) != Some(&c.id) {
                        // Started although its command reported a failure.
                        if let Some(image) = c.image {
                            slot.last = Some(Ran {
                                id: c.id.clone(),
                                image,
                            });
                        }
                    }
                    State::Running
                }
                Some(c) if c.state == "created" => {
                    // Created by a `docker run` that failed: it never ran.
                    let _ = dk(&self.host, &["rm", "-f", &c.id]);
                    State::Absent
                }
                Some(_) => State::Stopped,
            };
        }
    }

    /// The engine's truth for every name a container ran under: the running container
    /// under that name, else the last one that ran under it, stopped.
    fn truth(&self) -> Result<BTreeMap<String, Truth>, String> {
        let listed = engine_containers(&self.host, &self.label)?;
        let mut truth = BTreeMap::new();
        for slot in &self.slots {
            let Some(ran) = &slot.last else { continue };
            let t = match listed.get(&slot.name) {
                Some(c) if c.state == "running" => Truth {
                    running: true,
                    id: c.id.clone(),
                    image: c
                        .image
                        .ok_or_else(|| format!("{} runs an unknown image", slot.name))?,
                },
                _ => Truth {
                    running: false,
                    id: ran.id.clone(),
                    image: ran.image,
                },
            };
            truth.insert(slot.name.clone(), t);
        }
        if let Some(stray) = listed.keys().find(|n| !truth.contains_key(*n)) {
            if listed[stray].state != "created" {
                return Err(format!(
                    "the engine has {stray}, which the churn lost track of"
                ));
            }
        }
        Ok(truth)
    }
}

#[derive(Debug, Clone)]
struct Truth {
    running: bool,
    id: String,
    image: &'static str,
}

struct Digests {
    app1: String,
    app2: String,
}

impl Digests {
    fn of(&self, image: &str) -> &str {
        if image == APP1 {
            &self.app1
        } else {
            &self.app2
        }
    }
}

/// The repo digest of `image` as the private engine has it.
fn private_digest(engine: &PrivateEngine, image: &str) -> String {
    let json = engine.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        image,
    ]);
    let list: Vec<String> = serde_json::from_str(&json).unwrap();
    list.into_iter()
        .find(|d| d.starts_with(&format!("{APP_REPO}@")))
        .unwrap_or_else(|| panic!("{image} has no digest in {APP_REPO} on the private engine"))
}

/// Differences between what an endpoint holds last per name (its final view) and the truth.
fn compare(
    truth: &BTreeMap<String, Truth>,
    host: &str,
    digests: &Digests,
    received: &[Received],
    stops: bool,
) -> Vec<String> {
    let mut last: HashMap<&str, &Received> = HashMap::new();
    for r in received.iter().filter(|r| r.status < 300) {
        last.insert(r.name(), r);
    }
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let mut wrong = Vec::new();
    for (name, t) in truth {
        let key = format!("{host}/{name}");
        let want_url = digests.of(t.image);
        let want_state = if t.running { "running" } else { "stopped" };
        let Some(r) = last.get(key.as_str()) else {
            wrong.push(format!(
                "{name}: never reported; the engine has {} {} ({want_state})",
                short(&t.id),
                t.image
            ));
            continue;
        };
        let container = &r.body["container"];
        if stops {
            let state = container["state"].as_str().unwrap_or("(no state)");
            let id = container["id"].as_str().unwrap_or("(no id)");
            if r.url() != want_url || state != want_state || id != t.id {
                wrong.push(format!(
                    "{name}: the endpoint has {state} {} {}; the engine has {want_state} {} {want_url}",
                    short(id),
                    r.url(),
                    short(&t.id)
                ));
            }
        } else if r.url() != want_url || !container.is_null() {
            wrong.push(format!(
                "{name}: the endpoint has {} (container {container}); the engine's last is {want_url} ({want_state})",
                r.url()
            ));
        }
    }
    for name in last.keys() {
        let known = name
            .strip_prefix(&format!("{host}/"))
            .is_some_and(|n| truth.contains_key(n));
        if !known {
            wrong.push(format!("{name}: reported, but no container ran as that"));
        }
    }
    wrong.sort();
    wrong
}

/// A TCP front for an endpoint that can be closed (connections refused) and opened again on
/// the same port; closing it also cuts the connections it carries.
struct Gate {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Gate {
    async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, rx) = watch::channel(true);
        tokio::spawn(gate_loop(Some(listener), addr, target, rx));
        Gate { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

async fn gate_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    target: SocketAddr,
    mut up: watch::Receiver<bool>,
) {
    loop {
        let open = match listener.take() {
            Some(l) => l,
            None => {
                while !*up.borrow_and_update() {
                    if up.changed().await.is_err() {
                        return;
                    }
                }
                match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let mut carried = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = open.accept() => {
                    if let Ok((mut inbound, _)) = accepted {
                        carried.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
                changed = up.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !*up.borrow_and_update() {
                        break;
                    }
                }
                Some(_) = carried.join_next(), if !carried.is_empty() => {}
            }
        }
        drop(open);
        carried.abort_all();
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds since the churn began.
    at: f64,
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32, at: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample { at, rss_kib, fds })
}

/// One agent under test, with its own endpoint.
struct Lane {
    title: &'static str,
    stops: bool,
    agent: Agent,
    receiver: Receiver,
    gate: Gate,
    listen: SocketAddr,
    state: PathBuf,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Lane {
    async fn start(scope: &Scope, engine_host: &str, title: &'static str, stops: bool) -> Lane {
        let receiver = Receiver::start().await;
        let gate = Gate::start(receiver.addr).await;
        let listen = unused_addr();
        let state = scope.dir.join(format!("state-{title}"));
        let token = scope.token_file();
        let mut args: Vec<String> = [
            "run",
            "--url",
            &endpoint_url(gate.addr),
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--label-selector",
            &scope.selector(),
            "--docker-host",
            engine_host,
            "--listen",
            &listen.to_string(),
            "--retry-initial",
            "200ms",
            "--retry-max",
            "10s",
            "--request-timeout",
            REQUEST_TIMEOUT,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if stops {
            args.push("--report-stops".into());
        }
        let agent = Agent::spawn(&scope.dir, &args, &[]);
        Lane {
            title,
            stops,
            agent,
            receiver,
            gate,
            listen,
            state,
            samples: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn outage(&self, outage: Option<Outage>) {
        self.gate.set(outage != Some(Outage::Refused));
        self.receiver.set_default(match outage {
            Some(Outage::Unavailable) => Answer::status(503),
            Some(Outage::RetryAfter) => Answer {
                retry_after: Some("3".into()),
                ..Answer::status(503)
            },
            Some(Outage::Slow) => Answer {
                delay: Some(SLOW_ANSWER),
                ..Answer::status(200)
            },
            Some(Outage::Refused) | None => Answer::status(200),
        });
    }

    async fn metric(&self, name: &str) -> f64 {
        metric(self.listen, name).await.unwrap_or(f64::NAN)
    }

    fn last_sample(&self) -> Option<Sample> {
        self.samples.lock().unwrap().last().copied()
    }
}

/// Resident memory and descriptors: the warm-up level (its peak), the peak of the last part,
/// the overall peak and the last sample.
struct Footprint {
    first: Sample,
    warm: Sample,
    last_part: Sample,
    peak: Sample,
    last: Sample,
    series: Vec<Sample>,
}

fn peak_of(samples: &[Sample]) -> Option<Sample> {
    let rss = samples.iter().map(|s| s.rss_kib).max()?;
    let fds = samples.iter().map(|s| s.fds).max()?;
    Some(Sample {
        at: samples.last()?.at,
        rss_kib: rss,
        fds,
    })
}

fn footprint(samples: &[Sample], d: f64) -> Option<Footprint> {
    let settle = SETTLE_SECS.min(d * WARM_UP_END / 2.0);
    let warm: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= settle && s.at <= d * WARM_UP_END)
        .copied()
        .collect();
    let last_part: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= d * LAST_PART_START && s.at <= d)
        .copied()
        .collect();
    // One sample per tenth of the run, for the picture.
    let series = (0..=10)
        .filter_map(|i| {
            let t = d * f64::from(i) / 10.0;
            samples
                .iter()
                .min_by(|a, b| (a.at - t).abs().total_cmp(&(b.at - t).abs()))
                .copied()
        })
        .collect();
    Some(Footprint {
        first: *samples.first()?,
        warm: peak_of(&warm)?,
        last_part: peak_of(&last_part)?,
        peak: peak_of(samples)?,
        last: *samples.last()?,
        series,
    })
}

fn with_footprint(r: &LaneResult, f: impl Fn(&Footprint) -> String) -> String {
    r.footprint.as_ref().map_or("-".into(), f)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// WARN and ERROR lines of an agent's log (text format: timestamp, level, message, fields).
#[derive(Default)]
struct LogFigures {
    lines: usize,
    warn: usize,
    error: usize,
    per_minute: BTreeMap<String, usize>,
    messages: BTreeMap<String, usize>,
    errors: Vec<String>,
}

impl LogFigures {
    fn max_per_minute(&self) -> (usize, String) {
        self.per_minute
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(m, n)| (*n, m.clone()))
            .unwrap_or_default()
    }
}

fn analyse_log(text: &str) -> LogFigures {
    let mut f = LogFigures::default();
    for line in text.lines() {
        f.lines += 1;
        let mut words = line.split_whitespace();
        let (Some(ts), Some(level)) = (words.next(), words.next()) else {
            continue;
        };
        if level != "WARN" && level != "ERROR" {
            continue;
        }
        if level == "WARN" {
            f.warn += 1;
        } else {
            f.error += 1;
            f.errors.push(line.to_string());
        }
        *f.per_minute
            .entry(ts.chars().take(16).collect())
            .or_default() += 1;
        let message: Vec<&str> = words.take_while(|w| !w.contains('=')).collect();
        *f.messages
            .entry(format!("{level} {}", message.join(" ")))
            .or_default() += 1;
    }
    f
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    format!(
        "{}, {cores} CPUs ({cpu}), {memory} RAM",
        first_line("uname", &["-srm"])
    )
}

/// HEAD when the run starts (the binary was built just before it), and the binary's build time.
fn revision() -> String {
    let revision = crate::support::git::revision();
    let head = revision.head.unwrap_or_default();
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_deploytrack"))
        .and_then(|m| m.modified())
        .map_or("?".into(), |t| {
            humantime::format_rfc3339_seconds(t).to_string()
        });
    if revision.dirty {
        format!("{head} with uncommitted changes under src/ or to Cargo.* (the binary tested, built {built}, is the working tree's)")
    } else {
        format!("{head} (the binary tested was built {built})")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Removes the soak's containers from the private engine, 20 at a time, each call bounded;
/// declared after the engine, so that it runs before the engine is stopped.
struct Cleanup {
    host: String,
    label: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = dk(
            &self.host,
            &["ps", "-aq", "--filter", &format!("label={}", self.label)],
        )
        .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for chunk in ids.chunks(20) {
            let mut args = vec!["120", "docker", "-H", &self.host, "rm", "-f"];
            args.extend_from_slice(chunk);
            let _ = Command::new("timeout").args(&args).output();
        }
    }
}

/// A file naming what the soak runs (`DEPLOYTRACK_SOAK_MARKER`), so that scripts/soak.sh can
/// clean up after a soak that was killed before its own cleanup ran. Removed once the
/// engine is gone (declared before it).
struct Marker(Option<PathBuf>);

impl Marker {
    fn new() -> Marker {
        Marker(
            std::env::var_os("DEPLOYTRACK_SOAK_MARKER")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        )
    }

    fn record(&self, lines: &[(&str, String)]) {
        if let Some(path) = &self.0 {
            let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let _ = std::fs::write(path, text);
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Restart {
    at: f64,
    stop_took: Duration,
    down: Duration,
}

struct LaneResult {
    title: &'static str,
    stops: bool,
    requests: usize,
    accepted: usize,
    unavailable: usize,
    names: usize,
    delivered: f64,
    enqueued: f64,
    unchanged: f64,
    reconnects: f64,
    transient: f64,
    events_dropped: f64,
    dead_letters: f64,
    footprint: Option<Footprint>,
    log: LogFigures,
    exit: String,
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a soak of 30 minutes by default: run it with scripts/soak.sh"]
async fn soak() {
    let duration = soak_duration();
    let d = duration.as_secs_f64();
    let revision = revision();
    let marker = Marker::new();
    let scope = Scope::new("soak");
    let load_before = load_average();
    let mut engine = PrivateEngine::start().await;
    let label = scope.selector();
    let _cleanup = Cleanup {
        host: engine.host.clone(),
        label: label.clone(),
    };
    let engine_root = engine
        .host
        .trim_start_matches("unix://")
        .trim_end_matches("/docker.sock")
        .to_string();
    marker.record(&[
        ("engine_root", engine_root.clone()),
        ("scope_dir", scope.dir.display().to_string()),
    ]);
    engine.docker(&["pull", "-q", APP2]);
    let digests = Digests {
        app1: private_digest(&engine, APP1),
        app2: private_digest(&engine, APP2),
    };
    assert_ne!(digests.app1, digests.app2);
    let host = engine.host_name();
    let engine_version = engine.docker(&["version", "--format", "{{.Server.Version}}"]);

    let mut lanes = vec![
        Lane::start(&scope, &engine.host, "report-stops", true).await,
        Lane::start(&scope, &engine.host, "default", false).await,
    ];
    for lane in &lanes {
        lane.agent.ready().await;
    }
    marker.record(&[
        ("engine_root", engine_root.clone()),
        ("scope_dir", scope.dir.display().to_string()),
        (
            "agents",
            lanes
                .iter()
                .map(|l| l.agent.pid().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]);
    let out = std::env::var_os("DEPLOYTRACK_SOAK_REPORT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("SOAK.md"));
    println!(
        "[soak] {} on {engine_version} (private engine {}), agents {}; figures go to {}",
        humantime::format_duration(duration),
        engine.host,
        lanes
            .iter()
            .map(|l| format!("{} pid {}", l.title, l.agent.pid()))
            .collect::<Vec<_>>()
            .join(", "),
        out.display()
    );

    let t0 = Instant::now();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let targets: Vec<(u32, Arc<Mutex<Vec<Sample>>>)> = lanes
            .iter()
            .map(|l| (l.agent.pid(), l.samples.clone()))
            .collect();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                let at = t0.elapsed().as_secs_f64();
                for (pid, samples) in &targets {
                    if let Some(s) = sample(*pid, at) {
                        samples.lock().unwrap().push(s);
                    }
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    let stop_churn = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(tokio::sync::Mutex::new(()));
    let epoch = Arc::new(AtomicU64::new(0));
    let live = Arc::new(Mutex::new(ChurnStats::default()));
    let suffix = scope.id[scope.id.len() - 6..].to_string();
    let mut churn_thread = Some({
        let churn = Churn::new(&engine.host, &label, &suffix);
        let (stop, pause, epoch, live) = (
            stop_churn.clone(),
            pause.clone(),
            epoch.clone(),
            live.clone(),
        );
        std::thread::spawn(move || churn.run(stop, pause, epoch, live))
    });
    let mut churn: Option<Churn> = None;

    let down_for = Duration::from_secs_f64((d / 60.0).clamp(5.0, 30.0));
    let progress_every = if d >= 600.0 { 60.0 } else { 20.0 };
    let mut next_progress = progress_every;
    let mut next_step = 0;
    let mut outages: Vec<(Outage, f64, f64)> = Vec::new();
    let mut restarts: Vec<Restart> = Vec::new();
    loop {
        let now = t0.elapsed().as_secs_f64();
        if let Some(&(at, step)) = TIMELINE.get(next_step) {
            if now >= at * d {
                next_step += 1;
                match step {
                    Step::OutageBegins(kind) => {
                        println!(
                            "[soak {}] endpoint outage {} begins: {}",
                            clock(now),
                            outages.len() + 1,
                            kind.describe()
                        );
                        for lane in &lanes {
                            lane.outage(Some(kind));
                        }
                        outages.push((kind, now, f64::NAN));
                    }
                    Step::OutageEnds => {
                        for lane in &lanes {
                            lane.outage(None);
                        }
                        if let Some(o) = outages.last_mut() {
                            o.2 = now;
                        }
                        println!("[soak {}] endpoint back", clock(now));
                    }
                    Step::EngineRestart => {
                        println!(
                            "[soak {}] engine restart {}",
                            clock(now),
                            restarts.len() + 1
                        );
                        let held = pause.lock().await;
                        // Let the agents see the last command before the engine goes.
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let began = Instant::now();
                        engine.stop().await;
                        let stop_took = began.elapsed();
                        tokio::time::sleep(down_for).await;
                        engine.boot().await;
                        let down = began.elapsed();
                        // Containers with a restart policy come back as the engine starts.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        epoch.fetch_add(1, Ordering::SeqCst);
                        drop(held);
                        println!(
                            "[soak {}] engine back after {:.1} s (its shutdown took {:.1} s)",
                            clock(t0.elapsed().as_secs_f64()),
                            down.as_secs_f64(),
                            stop_took.as_secs_f64()
                        );
                        restarts.push(Restart {
                            at: now,
                            stop_took,
                            down,
                        });
                    }
                    Step::ChurnEnds => {
                        stop_churn.store(true, Ordering::SeqCst);
                        let handle = churn_thread.take().unwrap();
                        churn = Some(
                            tokio::task::spawn_blocking(move || handle.join())
                                .await
                                .unwrap()
                                .expect("the churn thread panicked"),
                        );
                        println!("[soak {}] churn ends", clock(t0.elapsed().as_secs_f64()));
                    }
                }
                continue;
            }
        }
        if now >= next_progress {
            next_progress += progress_every;
            let stats = live.lock().unwrap().clone();
            let mut line = format!(
                "[soak {}/{}] running {}, started {}, churn errors {}",
                clock(now),
                clock(d),
                stats.running,
                stats.created,
                stats.failures
            );
            for lane in &lanes {
                let s = lane.last_sample();
                let _ = write!(
                    line,
                    " | {}: {} accepted, queue {}, {}, {} fds",
                    lane.title,
                    lane.receiver.accepted().len(),
                    lane.metric("deploytrack_queue_depth").await,
                    s.map_or("?".into(), |s| mib(s.rss_kib)),
                    s.map_or(0, |s| s.fds)
                );
            }
            println!("{line}");
        }
        if now >= d && next_step >= TIMELINE.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let soaked = t0.elapsed();

    // The final view: the engine is still now; every endpoint must come to hold its truth.
    let churn = churn.expect("the churn ended");
    let mut failures: Vec<String> = Vec::new();
    let truth = churn
        .truth()
        .unwrap_or_else(|e| panic!("the engine's truth: {e}"));
    let running_at_end = truth.values().filter(|t| t.running).count();
    println!(
        "[soak {}] churn over: {} names ran, {running_at_end} containers run now; waiting for the endpoints to hold that",
        clock(t0.elapsed().as_secs_f64()),
        truth.len()
    );
    let waiting = Instant::now();
    let mut wrong: Vec<Vec<String>>;
    loop {
        wrong = lanes
            .iter()
            .map(|l| compare(&truth, &host, &digests, &l.receiver.received(), l.stops))
            .collect();
        let mut depths = Vec::new();
        for lane in &lanes {
            depths.push(lane.metric("deploytrack_queue_depth").await);
        }
        if wrong.iter().all(Vec::is_empty) && depths.iter().all(|d| *d == 0.0) {
            break;
        }
        if waiting.elapsed() > CONVERGENCE {
            for (lane, depth) in lanes.iter().zip(&depths) {
                if *depth != 0.0 {
                    failures.push(format!(
                        "{}: {depth} reports still queued {CONVERGENCE:?} after the churn ended",
                        lane.title
                    ));
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let converged_in = waiting.elapsed();
    for (lane, wrong) in lanes.iter().zip(&wrong) {
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: the endpoint's final view differs from the engine for {} of {} names:\n    {}",
                lane.title,
                wrong.len(),
                truth.len(),
                wrong
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
    }
    // An idle moment after the drain, for the last sample.
    tokio::time::sleep(SAMPLE_EVERY * 2).await;
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;

    let disturbances = outages.len() + restarts.len();
    let mut results = Vec::new();
    for lane in lanes.iter_mut() {
        let received = lane.receiver.received();
        let samples = lane.samples.lock().unwrap().clone();
        let footprint = footprint(&samples, d);
        let accepted: Vec<&Received> = received.iter().filter(|r| r.status < 300).collect();
        let mut names: Vec<&str> = accepted.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        let mut r = LaneResult {
            title: lane.title,
            stops: lane.stops,
            requests: received.len(),
            accepted: accepted.len(),
            unavailable: received.iter().filter(|r| r.status == 503).count(),
            names: names.len(),
            delivered: lane.metric("deploytrack_reports_delivered_total").await,
            enqueued: lane.metric("deploytrack_reports_enqueued_total").await,
            unchanged: lane.metric("deploytrack_reports_unchanged_total").await,
            reconnects: lane.metric("deploytrack_engine_reconnects_total").await,
            transient: lane
                .metric("deploytrack_delivery_failures_total{reason=\"transient\"}")
                .await,
            events_dropped: lane.metric("deploytrack_events_dropped_total").await,
            dead_letters: lane.metric("deploytrack_queue_dead_letters").await,
            footprint,
            log: LogFigures::default(),
            exit: String::new(),
        };
        lane.agent.signal("TERM");
        let status = lane.agent.wait().await;
        r.exit = status.to_string();
        if !status.success() {
            failures.push(format!(
                "{}: SIGTERM ended the agent with {status}",
                r.title
            ));
        }
        r.log = analyse_log(&lane.agent.stderr());
        let t = r.title;
        if r.dead_letters != 0.0 {
            failures.push(format!("{t}: {} dead letters", r.dead_letters));
        }
        let pending =
            scope.command(&["queue", "list", "--state-dir", lane.state.to_str().unwrap()]);
        if !pending.stdout.starts_with("0 pending") {
            failures.push(format!(
                "{t}: the queue is not empty at the end: {}",
                pending.stdout.lines().next().unwrap_or_default()
            ));
        }
        if r.reconnects < restarts.len() as f64 {
            failures.push(format!(
                "{t}: {} engine reconnects for {} engine restarts",
                r.reconnects,
                restarts.len()
            ));
        }
        match &r.footprint {
            None => failures.push(format!("{t}: too few memory samples")),
            Some(f) => {
                let rss_limit = f.warm.rss_kib
                    + (f.warm.rss_kib * RSS_TOLERANCE_PERCENT / 100).max(RSS_TOLERANCE_KIB);
                if f.last_part.rss_kib > rss_limit {
                    failures.push(format!(
                        "{t}: resident memory grew: {} in the last part against {} after the warm-up (limit {})",
                        mib(f.last_part.rss_kib),
                        mib(f.warm.rss_kib),
                        mib(rss_limit)
                    ));
                }
                let fd_limit =
                    f.warm.fds + (f.warm.fds * FD_TOLERANCE_PERCENT / 100).max(FD_TOLERANCE);
                if f.last_part.fds > fd_limit {
                    failures.push(format!(
                        "{t}: file descriptors grew: {} in the last part against {} after the warm-up (limit {fd_limit})",
                        f.last_part.fds, f.warm.fds
                    ));
                }
            }
        }
        let (storm, minute) = r.log.max_per_minute();
        if storm > STORM_PER_MINUTE {
            failures.push(format!(
                "{t}: {storm} WARN/ERROR lines in the minute {minute} (a storm is more than {STORM_PER_MINUTE})"
            ));
        }
        let budget = WARN_BUDGET_PER_DISTURBANCE * disturbances.max(1);
        if r.log.warn > budget {
            failures.push(format!(
                "{t}: {} WARN lines for {disturbances} outages and restarts (at most {budget})",
                r.log.warn
            ));
        }
        if r.log.error > 0 {
            failures.push(format!(
                "{t}: {} ERROR lines, none expected:\n    {}",
                r.log.error,
                r.log
                    .errors
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
        results.push(r);
    }

    let run = Run {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: machine(),
        load: format!("{load_before} before, {} after", load_average()),
        revision,
        engine_version,
        duration,
        soaked,
        converged_in,
        churn: churn.stats.clone(),
        names: truth.len(),
        running_at_end,
        outages,
        restarts,
        results,
        failures: failures.clone(),
    };
    let report = run.markdown();
    std::fs::write(&out, &report).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    println!("{}", run.summary());
    println!("[soak] figures written to {}", out.display());
    assert!(
        failures.is_empty(),
        "the soak failed:\n  {}",
        failures.join("\n  ")
    );
}

struct Run {
    date: String,
    machine: String,
    load: String,
    revision: String,
    engine_version: String,
    duration: Duration,
    soaked: Duration,
    converged_in: Duration,
    churn: ChurnStats,
    names: usize,
    running_at_end: usize,
    outages: Vec<(Outage, f64, f64)>,
    restarts: Vec<Restart>,
    results: Vec<LaneResult>,
    failures: Vec<String>,
}

const ABOUT: &str = r#"# Soak

`scripts/soak.sh [--duration 30m]` runs the agent for a long while (30 minutes by default)
under container churn, endpoint outages and engine restarts, then checks its final state,
its memory, its file descriptors and its log. It is `tests/it/soak.rs`, an ignored test that
`cargo test` does not run. Each run rewrites this file with its own figures (below).

## What a run does

- **A private engine**: a dockerd of its own in its own network namespace (as the
  engine-restart tests use), so that restarting it disturbs nothing else. It pulls `app:1`
  and `app:2` from the loopback registry.
- **Two agents** watch the same containers: one with `--report-stops`, one with the
  defaults. Each reports to its own receiver through a TCP gate that can close its port.
  Both run with `--retry-initial 200ms --retry-max 10s --request-timeout 3s`.
- **Churn**, one docker command at a time (about one a second), aiming at 10 to 30
  containers running (fewer for a while after an engine restart, which kills most): `docker run` under a fresh or a free name with `app:1` or `app:2`
  (one in five with `--restart unless-stopped`), `docker stop` or `docker kill`,
  `docker start`, `docker restart`, `docker rm -f`, and recreation: removed and run again
  under the same name with the other image, so that the digest under the name changes. A
  third of the removed names are retired for new ones, so the set of names grows. A
  container is left alone for 2 s after a command touched it.
- **Endpoint outages**, one of each kind, at 5-11 %, 30-38 %, 45-50 % and 74-82 % of the
  duration: the endpoint answers 503; the port is closed (connections refused, open
  connections cut); answers come after 6 s, past the request timeout; 503 with
  `Retry-After: 3`.
- **Engine restarts**, at 14 % and 60 %: the churn pauses, the engine gets SIGTERM (its
  containers die with it; those with a restart policy come back when it starts) and stays
  down for a sixtieth of the duration (5 to 30 s).
- The churn stops at 93 %; the endpoints are up from 82 % on.

## What is checked

1. **The endpoint's final view equals the engine's truth.** The final view of an endpoint
   is, per `image.name`, the last report it answered 2xx. The truth, per container name
   that a container ran under during the soak, read from the engine once the churn is
   over: if a container runs under that name, that container (its id, and the digest of
   its image); else the last container that ran under the name, stopped (it was stopped,
   killed, removed, or died with the engine). With `--report-stops` the endpoint must hold
   exactly that: the digest, the container id, and `running` or `stopped`. With the
   defaults, which send no stops, it must hold the digest of that container, without a
   `container` object. Names no container ran under must not be reported. Both agents'
   queues must be empty, with no dead letters, within 3 minutes of the churn's end.
2. **Resident memory** (VmRSS in `/proc/<pid>/status`, sampled every 5 s): the peak over the
   last 30 % of the run may exceed the warm-up level (the peak over the first 25 %, from
   10 s on, which holds an outage and an engine restart) by at most 25 % or 2 MiB,
   whichever is more.
3. **File descriptors** (`/proc/<pid>/fd`), the same way: at most 25 % or 5 more.
4. **The log**: no minute with more than 60 WARN or ERROR lines, at most 30 WARN lines per
   outage or engine restart over the run, and no ERROR line (nothing the soak does is an
   error: the token is right and the queue file sound).

Also: each agent counts at least one engine reconnect per engine restart, and exits 0 on
SIGTERM at the end. Nothing is asserted about speed.
"#;

impl Run {
    fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "[soak] {} ({} requested), {} containers started ({} starts), {} recreated with the other image, {} names, {} running at the end, {} churn errors",
            humantime::format_duration(Duration::from_secs(self.soaked.as_secs())),
            humantime::format_duration(self.duration),
            self.churn.created,
            self.churn.starts,
            self.churn.recreates,
            self.names,
            self.running_at_end,
            self.churn.failures
        );
        for r in &self.results {
            let (storm, _) = r.log.max_per_minute();
            let _ = write!(
                s,
                "[soak] {}: {} reports received ({} accepted, {} answered 503), {} engine reconnects, WARN {} ERROR {}, max {storm}/min",
                r.title, r.requests, r.accepted, r.unavailable, r.reconnects, r.log.warn, r.log.error
            );
            if let Some(f) = &r.footprint {
                let _ = write!(
                    s,
                    "; RSS warm-up {} last part {} peak {} final {}; fds warm-up {} last part {} peak {} final {}",
                    mib(f.warm.rss_kib),
                    mib(f.last_part.rss_kib),
                    mib(f.peak.rss_kib),
                    mib(f.last.rss_kib),
                    f.warm.fds,
                    f.last_part.fds,
                    f.peak.fds,
                    f.last.fds
                );
            }
            s.push('\n');
        }
        if self.failures.is_empty() {
            s.push_str("[soak] PASS");
        } else {
            let _ = write!(s, "[soak] FAIL:\n  {}", self.failures.join("\n  "));
        }
        s
    }

    fn markdown(&self) -> String {
        let mut m = String::from(ABOUT);
        let short = self.duration < DEFAULT_DURATION;
        let _ = writeln!(m, "\n## The last run\n");
        if short {
            let _ = writeln!(
                m,
                "A **shorter run** than the default: {} instead of {}.\n",
                humantime::format_duration(self.duration),
                humantime::format_duration(DEFAULT_DURATION)
            );
        }
        let verdict = if self.failures.is_empty() {
            "**PASS**".to_string()
        } else {
            format!("**FAIL** ({} findings, below)", self.failures.len())
        };
        let churn = &self.churn;
        let rows: Vec<(&str, String)> = vec![
            ("result", verdict),
            ("date", self.date.clone()),
            ("machine", self.machine.clone()),
            ("load average (1, 5, 15 min)", self.load.clone()),
            ("engine", format!("Docker Engine {}, private instance", self.engine_version)),
            ("revision", self.revision.clone()),
            (
                "duration",
                format!(
                    "{} requested, {} soaked, then {:.0} s until both endpoints held the truth",
                    humantime::format_duration(self.duration),
                    humantime::format_duration(Duration::from_secs(self.soaked.as_secs())),
                    self.converged_in.as_secs_f64()
                ),
            ),
            (
                "containers",
                format!(
                    "{} started with `docker run` ({} starts in all), {} recreated with the other image, {} stops, {} restarts, {} removals; {} names; {}-{} running during the churn, {} at the end",
                    churn.created,
                    churn.starts,
                    churn.recreates,
                    churn.stops,
                    churn.restarts,
                    churn.removes,
                    self.names,
                    churn.running_min.unwrap_or(0),
                    churn.running_max,
                    self.running_at_end
                ),
            ),
            (
                "churn commands that failed",
                match &churn.last_failure {
                    None => "0".into(),
                    Some(e) => format!("{} (last: {e})", churn.failures),
                },
            ),
            (
                "outages",
                self.outages
                    .iter()
                    .map(|(kind, from, to)| {
                        format!("{} from {} to {}", kind.describe(), clock(*from), clock(*to))
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            (
                "engine restarts",
                self.restarts
                    .iter()
                    .map(|r| {
                        format!(
                            "at {}, down {:.1} s (its shutdown took {:.1} s)",
                            clock(r.at),
                            r.down.as_secs_f64(),
                            r.stop_took.as_secs_f64()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ];
        let _ = writeln!(m, "| | |\n|---|---|");
        for (k, v) in rows {
            let _ = writeln!(m, "| {k} | {} |", v.replace('|', "\\|"));
        }
        let _ = writeln!(m, "\nPer agent:\n");
        let titles: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                if r.stops {
                    format!("`--report-stops` ({})", r.title)
                } else {
                    format!("defaults ({})", r.title)
                }
            })
            .collect();
        let _ = writeln!(m, "| | {} |", titles.join(" | "));
        let _ = writeln!(m, "|---|{}", "---|".repeat(self.results.len()));
        let row = |m: &mut String, what: &str, f: &dyn Fn(&LaneResult) -> String| {
            let cells: Vec<String> = self.results.iter().map(f).collect();
            let _ = writeln!(m, "| {what} | {} |", cells.join(" | "));
        };
        row(&mut m, "reports received (requests)", &|r| {
            r.requests.to_string()
        });
        row(&mut m, "answered 2xx / 503", &|r| {
            format!("{} / {}", r.accepted, r.unavailable)
        });
        row(&mut m, "names reported", &|r| r.names.to_string());
        row(&mut m, "agent: enqueued / unchanged / delivered", &|r| {
            format!("{} / {} / {}", r.enqueued, r.unchanged, r.delivered)
        });
        row(&mut m, "agent: transient failures", &|r| {
            r.transient.to_string()
        });
        row(&mut m, "agent: engine reconnects", &|r| {
            r.reconnects.to_string()
        });
        row(&mut m, "agent: events dropped, dead letters", &|r| {
            format!("{}, {}", r.events_dropped, r.dead_letters)
        });
        row(
            &mut m,
            "RSS at start / warm-up level / last part peak / peak / final",
            &|r| {
                with_footprint(r, |f| {
                    format!(
                        "{} / {} / {} / {} / {}",
                        mib(f.first.rss_kib),
                        mib(f.warm.rss_kib),
                        mib(f.last_part.rss_kib),
                        mib(f.peak.rss_kib),
                        mib(f.last.rss_kib)
                    )
                })
            },
        );
        row(
            &mut m,
            "fds at start / warm-up level / last part peak / peak / final",
            &|r| {
                with_footprint(r, |f| {
                    format!(
                        "{} / {} / {} / {} / {}",
                        f.first.fds, f.warm.fds, f.last_part.fds, f.peak.fds, f.last.fds
                    )
                })
            },
        );
        row(&mut m, "RSS (MiB) at each tenth of the run", &|r| {
            with_footprint(r, |f| {
                f.series
                    .iter()
                    .map(|s| format!("{:.1}", s.rss_kib as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        });
        row(&mut m, "fds at each tenth of the run", &|r| {
            with_footprint(r, |f| {
                f.series
                    .iter()
                    .map(|s| s.fds.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        });
        row(&mut m, "log lines; WARN; ERROR", &|r| {
            format!("{}; {}; {}", r.log.lines, r.log.warn, r.log.error)
        });
        row(&mut m, "WARN/ERROR lines per minute, max", &|r| {
            let (n, minute) = r.log.max_per_minute();
            if n == 0 {
                "0".into()
            } else {
                format!("{n} ({minute})")
            }
        });
        row(&mut m, "WARN/ERROR messages", &|r| {
            r.log
                .messages
                .iter()
                .map(|(msg, n)| format!("{n} × {msg}"))
                .collect::<Vec<_>>()
                .join("<br>")
                .replace('|', "\\|")
        });
        row(&mut m, "exit on SIGTERM", &|r| r.exit.clone());
        if !self.failures.is_empty() {
            let _ = writeln!(m, "\nFindings:\n");
            for f in &self.failures {
                let _ = writeln!(m, "- {}", f.replace('\n', "\n  "));
            }
        }
        m
    }
}

/// The checks themselves, without an engine: a stale or wrong final view is caught.
#[test]
fn the_final_view_check_catches_stale_and_wrong_reports() {
    let digests = Digests {
        app1: format!("{APP_REPO}@sha256:1"),
        app2: format!("{APP_REPO}@sha256:2"),
    };
    let report = |name: &str, url: &str, container: serde_json::Value| Received {
        at: Instant::now(),
        method: "POST".into(),
        path: "/".into(),
        authorization: None,
        content_type: None,
        user_agent: None,
        body: serde_json::json!({"image": {"url": url, "name": format!("h/{name}")}, "container": container}),
        status: 200,
    };
    let running = |id: &str| serde_json::json!({"id": id, "state": "running"});
    let stopped = |id: &str| serde_json::json!({"id": id, "state": "stopped", "exit_code": 137});
    let truth = BTreeMap::from([
        (
            "a".to_string(),
            Truth {
                running: true,
                id: "c2".into(),
                image: APP2,
            },
        ),
        (
            "b".to_string(),
            Truth {
                running: false,
                id: "c3".into(),
                image: APP1,
            },
        ),
    ]);
    let good = vec![
        report("a", &digests.app1, running("c1")),
        report("b", &digests.app1, running("c3")),
        report("a", &digests.app2, running("c2")),
        report("b", &digests.app1, stopped("c3")),
    ];
    assert!(compare(&truth, "h", &digests, &good, true).is_empty());
    // The stop of b never arrived; a's last report is its previous container.
    let stale = &good[..2];
    let wrong = compare(&truth, "h", &digests, stale, true);
    assert_eq!(wrong.len(), 2, "{wrong:?}");
    // A name nothing ran under, and a refused report that does not count.
    let mut extra = good.clone();
    extra.push(report("ghost", &digests.app1, running("c9")));
    let mut refused = report("b", &digests.app2, running("c4"));
    refused.status = 503;
    extra.push(refused);
    let wrong = compare(&truth, "h", &digests, &extra, true);
    assert!(wrong.len() == 1 && wrong[0].contains("ghost"), "{wrong:?}");
    // Without stops: the digest of the last container, and no container object.
    let plain = |name: &str, url: &str| report(name, url, serde_json::Value::Null);
    let ok = [plain("a", &digests.app2), plain("b", &digests.app1)];
    assert!(compare(&truth, "h", &digests, &ok, false).is_empty());
    let wrong = compare(&truth, "h", &digests, &ok[..1], false);
    assert!(wrong.len() == 1 && wrong[0].contains("never reported"));
}

#[test]
fn the_log_check_counts_warnings_per_minute() {
    let log = "\
2026-01-01T10:00:01.000001Z  INFO deploytrack started engine=x
2026-01-01T10:00:02.000001Z  WARN engine unreachable error=gone retry_in=250ms
2026-01-01T10:00:03.000001Z  WARN engine unreachable error=gone retry_in=500ms
2026-01-01T10:01:03.000001Z ERROR cannot commit to the queue database error=disk
";
    let f = analyse_log(log);
    assert_eq!((f.lines, f.warn, f.error), (4, 2, 1));
    assert_eq!(f.max_per_minute(), (2, "2026-01-01T10:00".to_string()));
    assert_eq!(f.messages["WARN engine unreachable"], 2);
    assert_eq!(f.errors.len(), 1);
}
