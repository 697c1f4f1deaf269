//! The agent binary as a child process, for the tests and the benchmarks alike. It starts
//! from a clean environment: nothing the developer's shell or a CI runner set may change
//! what a test or a benchmark runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{eventually, PATIENCE};

/// The agent binary cargo built with the running test or bench target: `deploytrack` in the
/// target directory whose `deps/` holds the running executable (where cargo's
/// `CARGO_BIN_EXE_deploytrack` points; tests/it checks that they agree).
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("the executable's directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    dir.join(format!("deploytrack{}", std::env::consts::EXE_SUFFIX))
}

/// The agent binary with `args` and a clean environment: no inherited DEPLOYTRACK_* or
/// DOCKER_* settings (so the default engine socket, unless the caller names another).
pub fn agent_command(args: &[&str]) -> Command {
    agent_command_of(&agent_bin(), args)
}

/// `agent_command` for another build of the agent (the benchmarks' release copy).
pub fn agent_command_of(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    scrub_environment(&mut cmd);
    cmd
}
/// Whether an inherited variable would change the agent: its own settings (`DEPLOYTRACK_*`,
/// `RUST_LOG`), the engine's (`DOCKER_*`), systemd's (state dir, credentials, readiness
/// and watchdog), and proxies (the endpoints and engines here are on loopback).
pub fn inherited_setting(name: &str) -> bool {
    name.starts_with("DEPLOYTRACK_")
        || name.starts_with("DOCKER_")
        || matches!(
            name,
            "STATE_DIRECTORY"
                | "CREDENTIALS_DIRECTORY"
                | "RUST_LOG"
                | "NOTIFY_SOCKET"
                | "WATCHDOG_USEC"
        )
        || name.to_ascii_lowercase().ends_with("_proxy")
}

/// Remove every inherited setting from `cmd`'s environment; what the caller sets after
/// this (`cmd.env`) is what the agent sees.
pub fn scrub_environment(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(inherited_setting) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// An agent command run to completion.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `cmd` (an agent command) to completion, its output read from files; a command that
/// should end but runs on for 120 s fails the test rather than hang the suite.
pub fn run_to_completion(mut cmd: Command) -> Output {
    let base = std::env::temp_dir().join(format!(
        "deploytrack-cmd-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run deploytrack");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 120 s");
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

/// A running agent process; its output goes to files in a directory of the caller's.
/// Killed on drop.
pub struct Agent {
    child: Mutex<Option<Child>>,
    pid: u32,
    spawned: Instant,
    listen: Option<SocketAddr>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Agent {
    /// Any command that runs the agent (`Engine::agent_command`, `Scope::agent_command`,
    /// `Engine::agent_command_as`, `agent_command_of`), with `env` added.
    /// Its `--listen` address, if any, is where `metrics` scrapes.
    pub fn spawn_command(dir: &Path, mut cmd: Command, env: &[(&str, &str)]) -> Agent {
        let n = fastrand::u32(..);
        let stdout = dir.join(format!("agent-{n}.out"));
        let stderr = dir.join(format!("agent-{n}.err"));
        let listen = {
            let args: Vec<_> = cmd.get_args().collect();
            args.windows(2)
                .find(|w| w[0] == "--listen")
                .and_then(|w| w[1].to_str()?.parse().ok())
        };
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Agent {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            spawned,
            listen,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When the process was started.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// The exit status, once the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap();
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait until the agent has reconciled (it logs that once connected and subscribed);
    /// the test fails if it exits first or takes longer than PATIENCE.
    pub async fn ready(&self) {
        if let Err(e) = self.ready_within(PATIENCE).await {
            panic!("{e}");
        }
    }

    /// `ready` within `patience`, as a result.
    pub async fn ready_within(&self, patience: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.stderr().contains("reconciled with the engine") {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "the agent exited ({status}) before it reconciled:\n{}",
                    self.stderr_tail()
                ));
            }
            if start.elapsed() > patience {
                return Err(format!(
                    "the agent did not reconcile within {patience:?}:\n{}",
                    self.stderr_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Wait for exit (at most PATIENCE); returns the status.
    pub async fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
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

    /// SIGTERM, then wait for the exit: its status, or none when it took longer than
    /// `patience` (then SIGKILL).
    pub async fn stop_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if start.elapsed() > patience {
                if let Some(mut c) = self.child.lock().unwrap().take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `--listen` address the agent was started with.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().ok().and_then(Option::as_mut) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
