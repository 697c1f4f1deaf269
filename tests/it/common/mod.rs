//! Test harness: the real engine (set up by scripts/test-env.sh), a per-test label that
//! scopes every container, the real agent binary as a child process, and patience.
#![allow(dead_code)] // shared by tests/it and tests/host, each uses its own part of it

pub mod proxy;

pub use crate::support::receiver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use crate::support::PATIENCE;
pub use receiver::{Answer, Receiver};

pub const APP1: &str = "localhost:5000/deploytrack-test/app:1";
pub const APP2: &str = "localhost:5000/deploytrack-test/app:2";
pub const MIRROR1: &str = "localhost:5000/deploytrack-test/mirror:1";
pub const LOCAL1: &str = "deploytrack-test/local:1";
pub const ARM1: &str = "localhost:5000/deploytrack-test/arm:1";
pub const RUN_LABEL: &str = "deploytrack.test.run";
pub const TOKEN: &str = "tok-Sup3rSecret-7f3a9c";

/// The engine the engine-facing tests run against, chosen by `DEPLOYTRACK_TEST_ENGINE`:
/// `classic` (the default: Debian's dockerd 20.10, classic image store) or `containerd`
/// (Docker 28.5 with the containerd image store, in its own network namespace). Both are
/// started by scripts/test-env.sh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestEngine {
    Classic,
    Containerd,
}

impl TestEngine {
    pub fn socket(self) -> &'static str {
        match self {
            TestEngine::Classic => "/var/run/docker.sock",
            TestEngine::Containerd => "/var/run/deploytrack-docker28.sock",
        }
    }

    pub fn host(self) -> String {
        format!("unix://{}", self.socket())
    }
}

/// The line the agent logs, once per image, for a locally made image no report may name.
pub fn unreportable_line() -> &'static str {
    match test_engine() {
        TestEngine::Classic => "image has no repo digest",
        TestEngine::Containerd => "no evidence that a registry holds this image",
    }
}

pub fn test_engine() -> TestEngine {
    match std::env::var("DEPLOYTRACK_TEST_ENGINE").as_deref() {
        // The suite built as it_containerd (tests/it_containerd) runs on the containerd engine.
        Err(_) | Ok("") if env!("CARGO_CRATE_NAME") == "it_containerd" => TestEngine::Containerd,
        Err(_) | Ok("" | "classic") => TestEngine::Classic,
        Ok("containerd") => TestEngine::Containerd,
        Ok(other) => panic!("DEPLOYTRACK_TEST_ENGINE={other:?}: expected classic or containerd"),
    }
}

/// Run scripts/test-env.sh once per test binary. Without an engine the tests fail: they
/// never skip (under CI=true or otherwise).
pub fn ensure_engine() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-env.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            // Every `docker` command of the tests, and every agent (see `agent_command`),
            // talks to the engine under test.
            std::env::set_var("DOCKER_HOST", test_engine().host());
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = ready {
        panic!(
            "the Docker engine these tests need is not available (CI={}): {e}",
            std::env::var("CI").unwrap_or_default()
        );
    }
}

/// Run a program to success and return its trimmed stdout.
pub fn run_ok(program: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker(args: &[&str]) -> String {
    run_ok("docker", args, None)
}

pub fn engine_host_name() -> String {
    docker(&["info", "--format", "{{.Name}}"])
}

/// The repo digest of `image` in `repository` (e.g. "localhost:5000/deploytrack-test/app").
pub fn repo_digest(image: &str, repository: &str) -> String {
    let digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        image,
    ]);
    let list: Vec<String> = serde_json::from_str(&digests).unwrap();
    list.into_iter()
        .find(|d| d.starts_with(&format!("{repository}@")))
        .unwrap_or_else(|| panic!("{image} has no digest in {repository}"))
}

pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > PATIENCE {
            panic!("timed out after {PATIENCE:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `eventually` for checks that await (an HTTP request).
pub async fn eventually_async<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > PATIENCE {
            panic!("timed out after {PATIENCE:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A test's scope: a unique label on every container it makes, a temp dir, and cleanup.
pub struct Scope {
    pub id: String,
    pub dir: PathBuf,
}

impl Scope {
    pub fn new(test: &str) -> Scope {
        ensure_engine();
        let id = format!("{test}-{}-{:x}", std::process::id(), fastrand::u64(..));
        let dir = std::env::temp_dir().join(format!("deploytrack-it-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Scope { id, dir }
    }

    pub fn selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.id)
    }

    /// `docker run -d` with this scope's label; returns the container id.
    pub fn run(&self, extra: &[&str], image: &str) -> String {
        self.docker_with_label(&["run", "-d"], extra, image)
    }

    /// `docker create` with this scope's label (started later with `docker start`).
    pub fn create(&self, extra: &[&str], image: &str) -> String {
        self.docker_with_label(&["create"], extra, image)
    }

    fn docker_with_label(&self, command: &[&str], extra: &[&str], image: &str) -> String {
        let label = self.selector();
        // No network: the tests need none, and starts are faster without a veth pair.
        let mut args = command.to_vec();
        args.extend_from_slice(&["--network", "none", "--label", &label]);
        args.extend_from_slice(extra);
        args.push(image);
        docker(&args)
    }

    /// A unique container name within this scope.
    pub fn name(&self, short: &str) -> String {
        format!("{short}-{}", &self.id[self.id.len() - 8..])
    }

    /// The token in a private file, with the trailing newline an editor leaves (stripped).
    pub fn token_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The agent, reporting to `url`, watching only this scope's containers.
    pub fn agent(&self, url: &str, extra: &[&str]) -> Agent {
        self.agent_in(&self.state_dir(), url, extra, &[])
    }

    /// The agent with its queue in `state` and `env` added to its environment.
    pub fn agent_in(&self, state: &Path, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let token = self.token_file();
        Agent::spawn(&self.dir, &self.run_args(state, &token, url, extra), env)
    }

    /// `run` as the scope's agents run: reporting to `url` with `token`, the queue in
    /// `state`, watching only this scope's containers, retrying fast; then `extra`.
    pub fn run_args(&self, state: &Path, token: &Path, url: &str, extra: &[&str]) -> Vec<String> {
        let selector = self.selector();
        let mut args: Vec<String> = [
            "run",
            "--url",
            url,
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--label-selector",
            &selector,
            "--retry-initial",
            "200ms",
            "--retry-max",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The agent binary with any arguments, to completion.
    pub fn command(&self, args: &[&str]) -> Output {
        Self::command_only(args)
    }

    /// `deploytrack sync --once` to `url` for this scope's containers, with the queue in
    /// `state_dir()`, and `extra` arguments, to completion.
    pub fn sync_once(&self, url: &str, extra: &[&str]) -> Output {
        let token = self.token_file();
        let state = self.state_dir();
        let selector = self.selector();
        let mut args = vec![
            "sync",
            "--once",
            "--url",
            url,
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--label-selector",
            &selector,
        ];
        args.extend_from_slice(extra);
        self.command(&args)
    }

    /// The agent binary to completion, without an engine or a scope.
    pub fn command_only(args: &[&str]) -> Output {
        let base = std::env::temp_dir().join(format!(
            "deploytrack-cmd-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
        let mut child = agent_command(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("run deploytrack");
        // A command that should end but runs on must fail the test, not hang the suite.
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("deploytrack {args:?} did not exit within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |p: &Path| {
            let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
            let _ = std::fs::remove_file(p);
            text
        };
        Output {
            status,
            stdout: read(&out_path),
            stderr: read(&err_path),
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={}", self.selector()),
            ])
            .output();
        if let Ok(out) = ids {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            // A few at a time, each call bounded: hundreds of parallel kills in one call have
            // wedged dockerd 20.10 here, and a stuck cleanup must not hang the suite.
            for chunk in ids.chunks(20) {
                let _ = Command::new("timeout")
                    .args(["120", "docker", "rm", "-f"])
                    .args(chunk)
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The binary with a clean environment: no inherited DEPLOYTRACK_* or DOCKER_* settings.
pub fn agent_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deploytrack"));
    cmd.args(args);
    scrub(cmd)
}

/// The binary as another user: `setpriv` with that uid and gid and the Docker socket's group
/// (root would bypass every file permission a test is about).
pub fn agent_command_as(uid: u32, gid: u32, args: &[&str]) -> Command {
    use std::os::unix::fs::MetadataExt;
    let socket_gid = std::fs::metadata(test_engine().socket())
        .map(|m| m.gid())
        .expect("the engine's socket");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        format!("--groups={socket_gid}"),
        "--".into(),
        env!("CARGO_BIN_EXE_deploytrack").into(),
    ])
    .args(args);
    scrub(cmd)
}

fn scrub(mut cmd: Command) -> Command {
    crate::support::agent::scrub_environment(&mut cmd);
    if test_engine() != TestEngine::Classic {
        cmd.env("DOCKER_HOST", test_engine().host());
    }
    cmd
}

/// A running agent process; its output goes to files in the scope's dir.
pub struct Agent {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Agent {
    pub fn spawn(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Agent {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn_command(dir, agent_command(&argv), env)
    }

    /// Any command that runs the agent (e.g. `agent_command_as`).
    pub fn spawn_command(dir: &Path, mut cmd: Command, env: &[(&str, &str)]) -> Agent {
        let n = fastrand::u32(..);
        let stdout = dir.join(format!("agent-{n}.out"));
        let stderr = dir.join(format!("agent-{n}.err"));
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        Agent {
            child: Some(cmd.spawn().expect("spawn deploytrack")),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait until the agent has reconciled (it logs that once connected).
    pub async fn ready(&self) {
        self.logged("the agent to reconcile", |l| {
            l.contains("reconciled with the engine")
        })
        .await;
    }

    /// Wait until the agent's log has a line that `line` accepts; returns it.
    pub async fn logged(&self, what: &str, line: impl Fn(&str) -> bool) -> String {
        eventually(what, || {
            self.stderr().lines().find(|l| line(l)).map(str::to_string)
        })
        .await
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Wait for exit (at most PATIENCE); returns the status.
    pub async fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > PATIENCE {
                panic!("the agent did not exit; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn kill9(&mut self) {
        self.signal("KILL");
        self.wait().await;
    }

    /// SIGTERM and expect a clean exit 0.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait().await;
        assert!(
            status.success(),
            "agent exited with {status}; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback address nothing listens on (yet): an endpoint that is down, that a test may
/// start a receiver on later. Its port lies below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 and up here), so no other test's listener on port 0, and
/// no outgoing connection, can take it in the meantime.
pub fn unused_addr() -> std::net::SocketAddr {
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

pub fn endpoint_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}/atomist/resource/test")
}

/// Fetch a metric's value from the agent's admin listener.
pub async fn metric(listen: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A second dockerd of the test's own, so restarting it disturbs no other test. It lives in
/// its own network namespace (an engine rewrites bridges and firewall rules), with its own
/// registry process there serving the test images' storage.
/// Which dockerd a private engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dockerd {
    /// Debian's docker.io (20.10, API 1.41), classic image store.
    Debian,
    /// Docker 28.5 from scripts/test-env.sh, classic store unless `containerd`, refusing API
    /// versions below `min_api` when given (`DOCKER_MIN_API_VERSION`).
    Docker28 {
        containerd: bool,
        min_api: Option<&'static str>,
    },
}

impl Dockerd {
    /// The engine the tests run against (`DEPLOYTRACK_TEST_ENGINE`).
    pub fn under_test() -> Self {
        match test_engine() {
            TestEngine::Classic => Dockerd::Debian,
            TestEngine::Containerd => Dockerd::Docker28 {
                containerd: true,
                min_api: None,
            },
        }
    }
}

const DOCKER28: &str = "/opt/deploytrack-docker28";

pub struct PrivateEngine {
    pub dockerd: Dockerd,
    pub host: String,
    /// With TLS: the engine's `tcp://` address, reached over a veth pair, and the directory
    /// of the client's `ca.pem`, `cert.pem` and `key.pem` (a `DOCKER_CERT_PATH`).
    pub tls: Option<(String, PathBuf)>,
    root: PathBuf,
    netns: String,
    /// Further dockerd flags, e.g. `--live-restore`.
    args: Vec<String>,
    registry: Option<Child>,
    child: Option<Child>,
}

impl PrivateEngine {
    pub async fn start() -> PrivateEngine {
        Self::start_with(false, Dockerd::under_test(), &[]).await
    }

    /// A private engine running the given dockerd.
    pub async fn start_as(dockerd: Dockerd) -> PrivateEngine {
        Self::start_with(false, dockerd, &[]).await
    }

    /// A private engine running the given dockerd with further flags (`--live-restore`).
    pub async fn start_with_args(dockerd: Dockerd, args: &[&str]) -> PrivateEngine {
        Self::start_with(false, dockerd, args).await
    }

    /// The engine also listening on `tcp://` with mutual TLS, as `dockerd --tlsverify` does.
    pub async fn start_with_tls() -> PrivateEngine {
        Self::start_with(true, Dockerd::under_test(), &[]).await
    }

    async fn start_with(tls: bool, dockerd: Dockerd, args: &[&str]) -> PrivateEngine {
        ensure_engine();
        let tag = format!("{:x}", fastrand::u32(..));
        let root = PathBuf::from(format!("/tmp/dt-e{tag}"));
        std::fs::create_dir_all(&root).unwrap();
        let netns = format!("dt-e{tag}");
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            ok(Command::new("ip").args(["netns", "add", &netns])),
            "ip netns add failed"
        );
        assert!(ok(Command::new("ip").args([
            "netns", "exec", &netns, "ip", "link", "set", "lo", "up"
        ])));
        // nsenter, not `ip netns exec`: only the network is private; the engine needs the
        // host's cgroup and /sys mounts, which `ip netns exec` replaces.
        let registry = Command::new("nsenter")
            .args([
                &format!("--net=/var/run/netns/{netns}"),
                "docker-registry",
                "serve",
                "/tmp/deploytrack-registry.yml",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a registry in the namespace");
        let tls = tls.then(|| {
            let octet = 1 + fastrand::u8(..250);
            let (host_if, ns_if) = (format!("dt{tag}h"), format!("dt{tag}n"));
            let run =
                |args: &[&str]| assert!(ok(Command::new("ip").args(args)), "ip {args:?} failed");
            run(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ]);
            run(&["link", "set", &ns_if, "netns", &netns]);
            run(&[
                "addr",
                "add",
                &format!("10.213.{octet}.1/30"),
                "dev",
                &host_if,
            ]);
            run(&["link", "set", &host_if, "up"]);
            let engine_ip = format!("10.213.{octet}.2");
            run(&[
                "netns",
                "exec",
                &netns,
                "ip",
                "addr",
                "add",
                &format!("{engine_ip}/30"),
                "dev",
                &ns_if,
            ]);
            run(&["netns", "exec", &netns, "ip", "link", "set", &ns_if, "up"]);
            let certs = root.join("certs");
            make_certificates(&certs, &engine_ip);
            (format!("tcp://{engine_ip}:2376"), certs)
        });
        let host = format!("unix://{}/docker.sock", root.display());
        let mut engine = PrivateEngine {
            dockerd,
            host,
            tls,
            root,
            netns,
            args: args.iter().map(|a| a.to_string()).collect(),
            registry: Some(registry),
            child: None,
        };
        engine.boot().await;
        let host = engine.host.clone();
        eventually("the private engine to pull the test image", || {
            Command::new("docker")
                .args(["-H", &host, "pull", "-q", APP1])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        })
        .await;
        engine
    }

    pub async fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .unwrap();
        let r = &self.root;
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/var/run/netns/{}", self.netns));
        match self.dockerd {
            Dockerd::Debian => {
                command.arg("dockerd");
            }
            Dockerd::Docker28 {
                containerd,
                min_api,
            } => {
                let path = std::env::var("PATH").unwrap_or_default();
                command
                    .arg(format!("{DOCKER28}/usr/sbin/dockerd"))
                    .env("PATH", format!("{DOCKER28}/path:{path}"));
                if containerd {
                    command.args(["--config-file", "/etc/deploytrack-docker28/daemon.json"]);
                }
                if let Some(min) = min_api {
                    command.env("DOCKER_MIN_API_VERSION", min);
                }
            }
        }
        let child = command
            .args([
                "--data-root",
                &format!("{}/data", r.display()),
                "--exec-root",
                &format!("{}/x", r.display()),
                "--pidfile",
                &format!("{}/docker.pid", r.display()),
                "-H",
                &self.host,
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ])
            .args(&self.args)
            .args(self.tls.iter().flat_map(|(addr, certs)| {
                let file = |f: &str| certs.join(f).display().to_string();
                [
                    "-H".to_string(),
                    addr.clone(),
                    "--tlsverify".into(),
                    "--tlscacert".into(),
                    file("ca.pem"),
                    "--tlscert".into(),
                    file("server-cert.pem"),
                    "--tlskey".into(),
                    file("server-key.pem"),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a private dockerd");
        self.child = Some(child);
        let host = self.host.clone();
        eventually("the private engine to answer", || {
            Command::new("docker")
                .args(["-H", &host, "version"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        })
        .await;
    }

    pub fn docker(&self, args: &[&str]) -> String {
        let mut all = vec!["-H", &self.host];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// The directory that holds the engine's socket (`docker.sock`), which `stop` and
    /// `boot` remove and create again.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn host_name(&self) -> String {
        self.docker(&["info", "--format", "{{.Name}}"])
    }

    /// Start a container of the test image named `name`, labelled with `label`.
    pub fn run(&self, label: &str, name: &str) -> String {
        self.docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            label,
            "--name",
            name,
            APP1,
        ])
    }

    /// Stop the engine (SIGTERM, as systemd would); `boot` starts it again.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if start.elapsed() > PATIENCE {
                    let _ = child.kill();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A CA, a server certificate for `ip` and a client certificate, with openssl.
pub fn make_certificates(dir: &Path, ip: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| run_ok("openssl", args, Some(dir));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=deploytrack test CA",
    ]);
    // A key and a certificate signed by the CA, with the given extensions.
    let sign = |key: &str, cert: &str, subject: &str, extensions: &str| {
        std::fs::write(dir.join("ext"), extensions).unwrap();
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", "req.csr", "-subj",
            subject,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
    };
    sign(
        "server-key.pem",
        "server-cert.pem",
        "/CN=engine",
        &format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"),
    );
    sign(
        "key.pem",
        "cert.pem",
        "/CN=client",
        "extendedKeyUsage=clientAuth\n",
    );
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..300 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut registry) = self.registry.take() {
            let _ = registry.kill();
            let _ = registry.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
