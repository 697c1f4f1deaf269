//! The driver: the churn of containers, the endpoint's outages behind a gate, the engine's
//! restarts, the sampling of each agent, and the run that puts them together.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Absent,
    Running,
    Stopped,
}

/// The last container that ran under a name.
#[derive(Clone, Debug)]
pub(super) struct Ran {
    pub(super) id: String,
    pub(super) image: &'static str,
}

pub(super) struct Slot {
    pub(super) name: String,
    pub(super) state: State,
    pub(super) last: Option<Ran>,
    pub(super) touched: Instant,
    pub(super) active: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    Run,
    Start,
    Stop,
    Restart,
    Remove,
    Recreate,
}

#[derive(Clone, Default)]
pub(super) struct ChurnStats {
    /// Containers created and started (`docker run`).
    pub(super) created: usize,
    /// Every start: runs, `docker start`, `docker restart`.
    pub(super) starts: usize,
    pub(super) stops: usize,
    pub(super) restarts: usize,
    pub(super) removes: usize,
    /// Removed and run again under the same name with the other image (a digest change).
    pub(super) recreates: usize,
    pub(super) failures: usize,
    pub(super) last_failure: Option<String>,
    pub(super) running: usize,
    pub(super) running_min: Option<usize>,
    pub(super) running_max: usize,
    pub(super) names: usize,
}

/// The churn: one docker command at a time against the private engine, keeping between
/// MIN_RUNNING and MAX_RUNNING containers running, with a model of what runs under each name.
pub(super) struct Churn {
    pub(super) host: String,
    pub(super) label: String,
    pub(super) suffix: String,
    pub(super) slots: Vec<Slot>,
    pub(super) stats: ChurnStats,
    pub(super) rng: fastrand::Rng,
}

impl Churn {
    pub(super) fn new(host: &str, label: &str, suffix: &str) -> Churn {
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

    pub(super) fn mint(&mut self) -> usize {
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

    pub(super) fn count(&self, state: State) -> usize {
        self.slots
            .iter()
            .filter(|s| s.active && s.state == state)
            .count()
    }

    /// Until `stop`; each command holds `pause` (an engine restart takes it), and the model
    /// is read back from the engine after each restart (`epoch`) and after any failure.
    pub(super) fn run(
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

    pub(super) fn step(&mut self) {
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

    pub(super) fn apply(&mut self, i: usize, op: Op) -> Result<(), String> {
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

    pub(super) fn create(&mut self, i: usize, image: &'static str) -> Result<(), String> {
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
    pub(super) fn resync(&mut self) {
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
    pub(super) fn truth(&self) -> Result<BTreeMap<String, Truth>, String> {
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

/// A TCP front for an endpoint that can be closed (connections refused) and opened again on
/// the same port; closing it also cuts the connections it carries.
pub(super) struct Gate {
    pub(super) addr: SocketAddr,
    pub(super) up: watch::Sender<bool>,
}

impl Gate {
    pub(super) async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, rx) = watch::channel(true);
        tokio::spawn(gate_loop(Some(listener), addr, target, rx));
        Gate { addr, up }
    }

    pub(super) fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

pub(super) async fn gate_loop(
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
pub(super) struct Sample {
    /// Seconds since the churn began.
    pub(super) at: f64,
    pub(super) rss_kib: u64,
    pub(super) fds: usize,
}

pub(super) fn sample(pid: u32, at: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample { at, rss_kib, fds })
}

/// One agent under test, with its own endpoint.
pub(super) struct Lane {
    pub(super) title: &'static str,
    pub(super) stops: bool,
    pub(super) agent: Agent,
    pub(super) receiver: Receiver,
    pub(super) gate: Gate,
    pub(super) listen: SocketAddr,
    pub(super) state: PathBuf,
    pub(super) samples: Arc<Mutex<Vec<Sample>>>,
}

impl Lane {
    pub(super) async fn start(
        scope: &Scope,
        engine_host: &str,
        title: &'static str,
        stops: bool,
    ) -> Lane {
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
        let agent = scope.spawn_agent(&args, &[]);
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

    pub(super) fn outage(&self, outage: Option<Outage>) {
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

    pub(super) async fn metric(&self, name: &str) -> f64 {
        metric(self.listen, name).await.unwrap_or(f64::NAN)
    }

    pub(super) fn last_sample(&self) -> Option<Sample> {
        self.samples.lock().unwrap().last().copied()
    }
}

/// Removes the soak's containers from the private engine, 20 at a time, each call bounded;
/// declared after the engine, so that it runs before the engine is stopped.
pub(super) struct Cleanup {
    pub(super) host: String,
    pub(super) label: String,
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
pub(super) struct Marker(Option<PathBuf>);

impl Marker {
    pub(super) fn new() -> Marker {
        Marker(
            std::env::var_os("DEPLOYTRACK_SOAK_MARKER")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        )
    }

    pub(super) fn record(&self, lines: &[(&str, String)]) {
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

pub(super) struct Restart {
    pub(super) at: f64,
    pub(super) stop_took: Duration,
    pub(super) down: Duration,
}

pub(super) struct LaneResult {
    pub(super) title: &'static str,
    pub(super) stops: bool,
    pub(super) requests: usize,
    pub(super) accepted: usize,
    pub(super) unavailable: usize,
    pub(super) names: usize,
    pub(super) delivered: f64,
    pub(super) enqueued: f64,
    pub(super) unchanged: f64,
    pub(super) reconnects: f64,
    pub(super) transient: f64,
    pub(super) events_dropped: f64,
    pub(super) dead_letters: f64,
    pub(super) footprint: Option<Footprint>,
    pub(super) log: LogFigures,
    pub(super) exit: String,
}

/// The soak itself: start the private engine and the agents, churn, disturb, sample, then
/// check and write the report.
pub(super) async fn run(engine: Engine) {
    let duration = soak_duration();
    let d = duration.as_secs_f64();
    let revision = revision();
    let marker = Marker::new();
    let scope = Scope::new(engine, "soak");
    let load_before = load_average();
    let mut engine = PrivateEngine::start(engine).await;
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
