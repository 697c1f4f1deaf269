//! A test's scope on one engine: a unique label on every container it makes, a temp dir,
//! the agents it starts, and cleanup.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent::{run_to_completion, Agent, Output};
use crate::{Engine, LOCAL1, RUN_LABEL, TOKEN};

/// A test's scope: a unique label on every container it makes, a temp dir, and cleanup.
pub struct Scope {
    pub id: String,
    pub dir: PathBuf,
    engine: Option<Engine>,
}

impl Scope {
    /// A scope on `engine` (ready: scripts/test-env.sh has run).
    pub fn new(engine: Engine, test: &str) -> Scope {
        Self::make(Some(engine.ready()), test)
    }

    /// A scope without an engine, for commands that end before they would reach one (the
    /// agents it starts get the default socket).
    pub fn offline(test: &str) -> Scope {
        Self::make(None, test)
    }

    fn make(engine: Option<Engine>, test: &str) -> Scope {
        let id = format!("{test}-{}-{:x}", std::process::id(), fastrand::u64(..));
        let dir = std::env::temp_dir().join(format!("deploytrack-it-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Scope { id, dir, engine }
    }

    /// The scope's engine.
    pub fn engine(&self) -> Engine {
        self.engine
            .unwrap_or_else(|| panic!("the scope {} has no engine", self.id))
    }

    /// `docker args…` on the scope's engine, to success; its trimmed stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        self.engine().docker(args)
    }

    /// The agent binary with `args`, on the scope's engine (the default socket without one).
    pub fn agent_command(&self, args: &[&str]) -> Command {
        match self.engine {
            Some(engine) => engine.agent_command(args),
            None => crate::agent_command(args),
        }
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
        self.docker(&args)
    }

    /// An image made here under `tag`: a commit of `LOCAL1` with a label of its own, so that
    /// no other image (nor another test's tag of `LOCAL1`) shares its id or digest, and a
    /// push of it gives no other test's image a repo digest. Removed on drop.
    pub fn made_here(&self, tag: &str) -> MadeHere {
        let source = self.create(&[], LOCAL1);
        self.docker(&[
            "commit",
            "--change",
            &format!("LABEL deploytrack.test.made={tag}"),
            &source,
            tag,
        ]);
        MadeHere {
            engine: self.engine(),
            tag: tag.to_string(),
        }
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
        self.spawn_agent(&self.run_args(state, &token, url, extra), env)
    }

    /// The agent with any arguments and `env` added, on the scope's engine (unless `args`
    /// name another with `--docker-host`), its output in the scope's dir.
    pub fn spawn_agent(&self, args: &[String], env: &[(&str, &str)]) -> Agent {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn_command(&self.dir, self.agent_command(&argv), env)
    }

    /// `run` as the scope's agents run: reporting to `url` with `token`, the queue in
    /// `state`, watching only this scope's containers, retrying fast; then `extra`.
    pub fn run_args(&self, state: &Path, token: &Path, url: &str, extra: &[&str]) -> Vec<String> {
        let fast = ["--retry-initial", "200ms", "--retry-max", "2s"];
        let mut args = self.scoped_args("run", state, token, url, &fast);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `command` reporting to `url` with `token`, the queue in `state`, watching only this
    /// scope's containers; then `extra`.
    fn scoped_args(
        &self,
        command: &str,
        state: &Path,
        token: &Path,
        url: &str,
        extra: &[&str],
    ) -> Vec<String> {
        let selector = self.selector();
        let scoped = [
            command,
            "--url",
            url,
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--label-selector",
            &selector,
        ];
        scoped.iter().chain(extra).map(|s| s.to_string()).collect()
    }

    /// `deploytrack <command>` (`sync --once`, `check`) to `url` for this scope's
    /// containers, with the scope's token, the queue in `state_dir()`, and `extra`
    /// arguments, to completion.
    pub fn scoped_command(&self, command: &str, url: &str, extra: &[&str]) -> Output {
        let args = self.scoped_args(command, &self.state_dir(), &self.token_file(), url, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args)
    }

    /// The agent binary with any arguments, to completion.
    pub fn command(&self, args: &[&str]) -> Output {
        run_to_completion(self.agent_command(args))
    }

    /// `deploytrack sync --once` to `url` for this scope's containers, with the queue in
    /// `state_dir()`, and `extra` arguments, to completion.
    pub fn sync_once(&self, url: &str, extra: &[&str]) -> Output {
        let once: Vec<&str> = ["--once"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        self.scoped_command("sync", url, &once)
    }

    /// The agent binary to completion, without an engine or a scope.
    pub fn command_only(args: &[&str]) -> Output {
        run_to_completion(crate::agent_command(args))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(engine) = self.engine else {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        };
        let ids = engine
            .docker_command()
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
                    .env("DOCKER_HOST", engine.host())
                    .args(["120", "docker", "rm", "-f"])
                    .args(chunk)
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An image a test made (`Scope::made_here`), removed from its engine on drop.
pub struct MadeHere {
    engine: Engine,
    tag: String,
}

impl MadeHere {
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn id(&self) -> String {
        self.engine
            .docker(&["image", "inspect", "--format", "{{.Id}}", &self.tag])
    }
}

impl Drop for MadeHere {
    fn drop(&mut self) {
        let _ = self
            .engine
            .docker_command()
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}
