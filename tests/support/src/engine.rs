//! The engines the engine-facing tests run against, both started by scripts/test-env.sh.
//! An engine is a value each test is given: every `docker` command and every agent of the
//! test names its host, so that tests of both engines run side by side in one process.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::output_ok;

/// `Classic` is Debian's dockerd 20.10 with the classic image store, on the default socket;
/// `Containerd` is Docker 28.5 with the containerd image store, in a network namespace of
/// its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Classic,
    Containerd,
}

impl Engine {
    pub fn socket(self) -> &'static str {
        match self {
            Engine::Classic => "/var/run/docker.sock",
            Engine::Containerd => "/var/run/deploytrack-docker28.sock",
        }
    }

    pub fn host(self) -> String {
        format!("unix://{}", self.socket())
    }

    /// The engine, once scripts/test-env.sh has run in this process. Without an engine the
    /// tests fail: they never skip (under CI=true or otherwise).
    pub fn ready(self) -> Engine {
        ensure_test_env();
        self
    }

    /// `docker` talking to this engine (`DOCKER_HOST`), whatever the environment says.
    pub fn docker_command(self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env_remove("DOCKER_CONTEXT")
            .env("DOCKER_HOST", self.host());
        cmd
    }

    /// `docker args…` on this engine, to success; its trimmed stdout.
    pub fn docker(self, args: &[&str]) -> String {
        let mut cmd = self.docker_command();
        cmd.args(args);
        output_ok(cmd)
    }

    /// The engine's host name (`docker info`'s Name), as reports carry it.
    pub fn host_name(self) -> String {
        self.docker(&["info", "--format", "{{.Name}}"])
    }

    /// The repo digest of `image` in `repository` (e.g. "localhost:5000/deploytrack-test/app").
    pub fn repo_digest(self, image: &str, repository: &str) -> String {
        let digests = self.docker(&[
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

    /// The line the agent logs, once per image, for a locally made image no report may name.
    pub fn unreportable_line(self) -> &'static str {
        match self {
            Engine::Classic => "image has no repo digest",
            Engine::Containerd => "no evidence that a registry holds this image",
        }
    }

    /// The agent binary with a clean environment, talking to this engine: the classic
    /// engine is the default socket (no `DOCKER_HOST`), the other one is named.
    pub fn agent_command(self, args: &[&str]) -> Command {
        let mut cmd = crate::agent_command(args);
        self.set_host(&mut cmd);
        cmd
    }

    /// The binary as another user: `setpriv` with that uid and gid and the engine socket's
    /// group (root would bypass every file permission a test is about).
    pub fn agent_command_as(self, uid: u32, gid: u32, args: &[&str]) -> Command {
        use std::os::unix::fs::MetadataExt;
        let socket_gid = std::fs::metadata(self.socket())
            .map(|m| m.gid())
            .expect("the engine's socket");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            format!("--groups={socket_gid}"),
            "--".into(),
        ])
        .arg(crate::agent_bin())
        .args(args);
        crate::agent::scrub_environment(&mut cmd);
        self.set_host(&mut cmd);
        cmd
    }

    fn set_host(self, cmd: &mut Command) {
        if self != Engine::Classic {
            cmd.env("DOCKER_HOST", self.host());
        }
    }
}

/// Run scripts/test-env.sh once per test process (a fast no-op when all is up).
pub fn ensure_test_env() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-env.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
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
            "the Docker engines these tests need are not available (CI={}): {e}",
            std::env::var("CI").unwrap_or_default()
        );
    }
}
