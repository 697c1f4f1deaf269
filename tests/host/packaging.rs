//! The agent's own deployment paths, run for real: the container image and its contract
//! (packaging/build-image.sh, packaging/Dockerfile), Compose (packaging/compose.yaml), Swarm
//! (packaging/swarm.yaml), and the .deb under systemd (packaging/build-deb.sh,
//! systemd/deploytrack.service). scripts/test-artifacts.sh builds the release binary, the
//! .deb and the image when they are missing or stale.
//!
//! These tests use the classic engine (Docker 20.10, /var/run/docker.sock) only: the agents
//! share the host's network to reach the receiver on loopback, and the other engine lives in
//! a network namespace of its own. So they live in tests/host, which runs once, on 20.10.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use deploytrack_test_support::*;

use crate::ENGINE;

pub(crate) const CLASSIC: &str = "unix:///var/run/docker.sock";
const SYSTEMD_IMAGE: &str = "deploytrack-test/systemd:bookworm";
pub(crate) const STATE: &str = "/var/lib/deploytrack";
pub(crate) const NONROOT: u32 = 65532;

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What scripts/test-artifacts.sh built.
struct Artifacts {
    version: String,
    deb: PathBuf,
    image: String,
}

fn artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    assert_eq!(
        ENGINE,
        Engine::Classic,
        "the packaging tests use the classic engine only (tests/host runs on it)"
    );
    ENGINE.ready();
    let built = BUILT.get_or_init(|| {
        let field = build_artifacts(&[])?;
        Ok(Artifacts {
            version: field("version")?,
            deb: PathBuf::from(field("deb")?),
            image: field("image")?,
        })
    });
    match built {
        Ok(artifacts) => artifacts,
        Err(e) => panic!(
            "the packaging tests need the release binary, the .deb and the image (CI={}): {e}",
            std::env::var("CI").unwrap_or_default()
        ),
    }
}

/// Run scripts/test-artifacts.sh with `args`; what it printed, as a lookup of its `key=value`
/// lines that names the script in its error.
pub(crate) fn build_artifacts(
    args: &[&str],
) -> Result<impl Fn(&str) -> Result<String, String>, String> {
    let script = repo().join("scripts/test-artifacts.sh");
    let run = format!("{} {}", script.display(), args.join(" "));
    let out = Command::new(&script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {run}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{run} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(move |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .ok_or_else(|| format!("{run} printed no {key}=: {text}"))
    })
}

/// Run a command to success; its trimmed stdout.
pub(crate) fn succeed(mut command: Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) fn docker_on(host: &str, args: &[&str]) -> Command {
    let mut command = ENGINE.docker_command();
    command.env("DOCKER_HOST", host).args(args);
    command
}

pub(crate) fn inspect(host: &str, what: &str) -> Value {
    let text = succeed(docker_on(host, &["inspect", what]));
    let list: Value = serde_json::from_str(&text).unwrap();
    list[0].clone()
}

/// A container's log, both streams.
pub(crate) fn logs(host: &str, id: &str) -> String {
    let out = docker_on(host, &["logs", id]).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) fn socket_gid(socket: &Path) -> u32 {
    std::fs::metadata(socket)
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
        .gid()
}

/// The token as an operator gives it to a Compose service: mode 0440, the socket's group.
pub(crate) fn group_token_file(scope: &Scope, gid: u32) -> PathBuf {
    let path = scope.token_file();
    std::os::unix::fs::chown(&path, Some(0), Some(gid)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    path
}

/// The registry that wants credentials (scripts/test-env.sh), and its user's password.
const PRIVATE_REGISTRY: &str = "127.0.0.1:5002";
const PRIVATE_PASSWORD: &str = "Pr1vate-Pa55word";

/// A Docker CLI config.json with `auths` for the private registry.
fn docker_config_json() -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("deploytrack-test:{PRIVATE_PASSWORD}"));
    serde_json::json!({"auths": {PRIVATE_REGISTRY: {"auth": auth}}}).to_string()
}

/// That config in the scope, readable by the socket's group (as INSTALL.md says for Compose).
fn group_docker_config(scope: &Scope, gid: u32) -> PathBuf {
    let path = scope.dir.join("docker-config.json");
    std::fs::write(&path, docker_config_json()).unwrap();
    std::os::unix::fs::chown(&path, Some(0), Some(gid)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    path
}

/// The agent's log names the registry it has credentials for, and never the secret.
fn assert_credentials_logged(log: &str) {
    use base64::Engine as _;
    assert!(
        log.lines()
            .any(|l| l.contains("registry credentials: ") && l.contains(PRIVATE_REGISTRY)),
        "no credentials line:\n{log}"
    );
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("deploytrack-test:{PRIVATE_PASSWORD}"));
    assert!(
        !log.contains(PRIVATE_PASSWORD) && !log.contains(&basic),
        "{log}"
    );
}

/// Real and effective user and group ids and the supplementary groups of a process.
fn process_ids(pid: u64) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    (ids("Uid:"), ids("Gid:"), ids("Groups:"))
}

/// What every agent container is, however it was started: not root, in the socket's group,
/// a read-only root file system, and its queue in the named volume, which a fresh volume
/// made writable for it by taking the image directory's owner and mode.
pub(crate) fn check_agent_container(host: &str, id: &str, socket_gid: u32, volume: &str) {
    let container = inspect(host, id);
    assert_eq!(container["State"]["Running"], true, "{container}");
    assert_eq!(
        container["HostConfig"]["ReadonlyRootfs"], true,
        "not read-only"
    );
    let pid = container["State"]["Pid"].as_u64().unwrap();
    let (uids, gids, groups) = process_ids(pid);
    assert!(
        uids.iter().all(|&u| u == NONROOT) && uids.len() == 4,
        "uids {uids:?}"
    );
    assert!(
        gids.first() == Some(&socket_gid) || groups.contains(&socket_gid),
        "the agent is not in the socket's group {socket_gid}: gids {gids:?}, groups {groups:?}"
    );
    let mount = container["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == STATE)
        .unwrap_or_else(|| panic!("nothing mounted on {STATE}: {}", container["Mounts"]));
    assert_eq!(mount["Type"], "volume", "{mount}");
    assert_eq!(mount["Name"], volume, "{mount}");
    let source = Path::new(mount["Source"].as_str().unwrap());
    let dir = std::fs::metadata(source).unwrap();
    assert_eq!(
        (dir.uid(), dir.mode() & 0o7777),
        (NONROOT, 0o700),
        "{}",
        source.display()
    );
    let db = std::fs::metadata(source.join("deploytrack.db"))
        .unwrap_or_else(|e| panic!("the queue is not in the volume: {e}"));
    assert_eq!(db.uid(), NONROOT);
}

/// A container started after the agent (in container `agent`, whose own host name is
/// `agent_hostname`) is reported under the engine's host name, in `environment`, with the
/// token from the secret; the agent's own container is not. Returns the engine's host name,
/// the name of the container started, and the agent container's own name.
async fn reports_others_not_itself(
    scope: &Scope,
    receiver: &Receiver,
    agent_hostname: &str,
    environment: &str,
    agent: &str,
) -> (String, String, String) {
    let host = ENGINE.host_name();
    assert_ne!(host, agent_hostname);
    let marker = scope.name("web");
    scope.run(&["--name", &marker], APP1);
    let report = receiver
        .accepted_report(
            "a container started after the agent",
            &format!("{host}/{marker}"),
        )
        .await;
    assert_eq!(report.environment(), environment);
    assert_eq!(
        report.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str()),
        "the token from the secret"
    );
    let own_name = inspect(CLASSIC, agent)["Name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_not_reported(receiver, &own_name);
    (host, marker, own_name)
}

/// No report names the agent's own container.
pub(crate) fn assert_not_reported(receiver: &Receiver, container_name: &str) {
    let own = format!("/{}", container_name.trim_start_matches('/'));
    let got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    assert!(
        !got.iter().any(|n| n.ends_with(&own)),
        "the agent reported itself: {got:?}"
    );
}

fn count(receiver: &Receiver, name: &str) -> usize {
    receiver
        .accepted()
        .iter()
        .filter(|r| r.name() == name)
        .count()
}

pub(crate) async fn admin_ready(listen: std::net::SocketAddr) {
    eventually_async("the agent's /readyz", || async move {
        let answer = reqwest::get(format!("http://{listen}/readyz")).await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
}

/// An image's files, as `docker export` of a container of it (created, never started)
/// writes them: the tar, kept to read files out of, and its listing.
pub(crate) struct ImageFiles {
    tar: PathBuf,
    listing: String,
}

impl ImageFiles {
    pub(crate) fn export(host: &str, image: &str, dir: &Path) -> ImageFiles {
        let id = succeed(docker_on(
            host,
            &[
                "create",
                "--label",
                &format!("{RUN_LABEL}=image-contract"),
                image,
            ],
        ));
        let tar = dir.join(format!("export-{id}.tar"));
        let mut export = docker_on(host, &["export", "-o", tar.to_str().unwrap(), &id]);
        let exported = export.output().unwrap();
        let _ = docker_on(host, &["rm", "-f", &id]).output();
        assert!(
            exported.status.success(),
            "docker export of {image}: {}",
            String::from_utf8_lossy(&exported.stderr)
        );
        let mut list = Command::new("tar");
        list.args(["-tv", "--numeric-owner", "-f"]).arg(&tar);
        let listing = succeed(list);
        ImageFiles { tar, listing }
    }

    /// The mode string and owner of `path` ("drwx------", "65532/65532"), if it is there.
    pub(crate) fn entry(&self, path: &str) -> Option<(String, String)> {
        // "drwx------ 65532/65532 0 2026-01-01 00:00 var/lib/deploytrack/"
        self.listing.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = fields.get(5)?.trim_end_matches('/');
            (name == path).then(|| (fields[0].to_string(), fields[1].to_string()))
        })
    }

    /// The content of a regular file.
    pub(crate) fn read(&self, path: &str) -> Vec<u8> {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&self.tar)
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{path} is not in the image");
        out.stdout
    }

    /// The files of the contract: the state directory, the CA certificates, no shell, and
    /// the dpkg status entries.
    pub(crate) fn keep_the_contract(&self) {
        assert_eq!(
            self.entry("var/lib/deploytrack"),
            Some(("drwx------".into(), "65532/65532".into())),
            "the state directory"
        );
        let certs = self
            .entry("etc/ssl/certs/ca-certificates.crt")
            .expect("no CA certificates");
        assert!(certs.0.starts_with('-'), "{certs:?}");
        for shell in [
            "bin/sh",
            "usr/bin/sh",
            "bin/bash",
            "usr/bin/bash",
            "bin/busybox",
        ] {
            assert_eq!(self.entry(shell), None, "{shell} is in the image");
        }
        for package in ["libc6", "libgcc-s1", "ca-certificates"] {
            assert!(
                self.entry(&format!("var/lib/dpkg/status.d/{package}"))
                    .is_some(),
                "no dpkg status entry for {package}:\n{}",
                self.listing
            );
        }
    }
}

impl Drop for ImageFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tar);
    }
}

// ------------------------------------------------------------------------------- the image

#[test]
fn image_keeps_its_contract() {
    let artifacts = artifacts();
    let latest = artifacts.image.replace(&artifacts.version, "latest");
    let ids: Vec<String> = [&artifacts.image, &latest]
        .iter()
        .map(|image| inspect(CLASSIC, image)["Id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids[0], ids[1], "{} and {latest} differ", artifacts.image);
    for image in [&artifacts.image, &latest] {
        let config = &inspect(CLASSIC, image)["Config"];
        assert_eq!(config["User"], "65532:65532", "{image}");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!(["/usr/bin/deploytrack"])
        );
        assert_eq!(config["Cmd"], serde_json::json!(["run"]));
        assert_eq!(config["Labels"]["deploytrack.enable"], "false");
        assert_eq!(
            config["Labels"]["org.opencontainers.image.version"],
            artifacts.version
        );
        assert!(config["Volumes"].get(STATE).is_some(), "{config}");
        let env: Vec<&str> = config["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(env.contains(&"DEPLOYTRACK_STATE_DIR=/var/lib/deploytrack"));
    }

    // The files, as `docker export` of a container of it lists them.
    let files = ImageFiles::export(CLASSIC, &artifacts.image, &std::env::temp_dir());
    files.keep_the_contract();
    // The status entries are dpkg's own, so scanners read a package and its version.
    let run = docker_on(
        CLASSIC,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &artifacts.image,
            "--version",
        ],
    );
    assert_eq!(
        succeed(run),
        format!("deploytrack {}", artifacts.version),
        "the binary runs in the image"
    );
}

/// The Dockerfile cannot be built here (its bases come from registries), so its runtime
/// settings are compared with the image that build-image.sh makes.
#[test]
fn dockerfile_declares_the_same_contract() {
    let artifacts = artifacts();
    let text = std::fs::read_to_string(repo().join("packaging/Dockerfile")).unwrap();
    // Instructions with their continuation lines joined, of the last stage only.
    let mut instructions: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && pending.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(&format!("{} ", head.trim())),
            None => {
                pending.push_str(line);
                instructions.push(std::mem::take(&mut pending));
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap();
    let runtime = &instructions[last_from..];
    let values = |keyword: &str| -> Vec<String> {
        runtime
            .iter()
            .filter_map(|i| i.strip_prefix(&format!("{keyword} ")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    assert!(
        !text.contains("# syntax="),
        "a syntax line makes BuildKit pull a frontend image"
    );
    let config = &inspect(CLASSIC, &artifacts.image)["Config"];
    assert_eq!(values("USER"), vec![config["User"].as_str().unwrap()]);
    let json = |v: &Value| serde_json::to_string(v).unwrap().replace(',', ", ");
    assert_eq!(values("ENTRYPOINT"), vec![json(&config["Entrypoint"])]);
    assert_eq!(values("CMD"), vec![json(&config["Cmd"])]);
    assert_eq!(values("VOLUME"), vec![format!("[\"{STATE}\"]")]);
    let exposed: Vec<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .map(|p| p.trim_end_matches("/tcp").to_string())
        .collect();
    assert_eq!(values("EXPOSE"), exposed);
    let mut env = values("ENV");
    env.sort();
    let mut image_env: Vec<String> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter(|v| !v.starts_with("PATH="))
        .collect();
    image_env.sort();
    assert_eq!(env, image_env);
    // Every label of the image but its version, with the same value.
    let labels = values("LABEL").join(" ");
    for (key, value) in config["Labels"].as_object().unwrap() {
        if key == "org.opencontainers.image.version" {
            continue;
        }
        let want = format!("{key}=\"{}\"", value.as_str().unwrap());
        assert!(labels.contains(&want), "the Dockerfile lacks {want}");
    }
    // The state directory: made 0700 in the build stage, copied with nonroot's ownership.
    assert!(text.contains("install -d -m 0700 /out/state/deploytrack"));
    assert!(text.contains("COPY --from=build --chown=65532:65532 /out/state/ /var/lib/"));
    assert!(
        runtime[0].contains("distroless/cc-debian12"),
        "{}",
        runtime[0]
    );
}

// ----------------------------------------------------------------------------- Compose

/// A Compose project of packaging/compose.yaml and a test override. Dropping it tears it
/// down with its volume, the way an operator would: with no variable set.
pub(crate) struct ComposeProject {
    name: String,
    host: String,
    override_file: PathBuf,
    env: Vec<(String, String)>,
    /// Also packaging/compose.credentials.yaml.
    credentials: bool,
}

impl ComposeProject {
    pub(crate) fn new(
        scope: &Scope,
        host: &str,
        override_yaml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let override_file = scope.dir.join("compose.override.yaml");
        std::fs::write(&override_file, override_yaml).unwrap();
        ComposeProject {
            name: scope.name("dt"),
            host: host.to_string(),
            override_file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            credentials: false,
        }
    }

    /// With packaging/compose.credentials.yaml, as INSTALL.md gives registry credentials.
    fn with_credentials(mut self) -> Self {
        self.credentials = true;
        self
    }

    fn command(&self, configured: bool, args: &[&str]) -> Command {
        let mut command = ENGINE.docker_command();
        command.args(["compose", "-p", &self.name, "-f"]);
        command.arg(repo().join("packaging/compose.yaml"));
        if configured && self.credentials {
            command
                .arg("-f")
                .arg(repo().join("packaging/compose.credentials.yaml"));
        }
        if configured {
            command.arg("-f").arg(&self.override_file);
        }
        command.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("DEPLOYTRACK_") || key == "DOCKER_GID" {
                command.env_remove(key);
            }
        }
        command.env("DOCKER_HOST", &self.host);
        if configured {
            command.envs(self.env.iter().map(|(k, v)| (k, v)));
        }
        command
    }

    pub(crate) fn up(&self, extra: &[&str]) {
        let mut args = vec!["up", "-d", "--quiet-pull"];
        args.extend_from_slice(extra);
        succeed(self.command(true, &args));
    }

    /// The running agent container's id, once there is exactly one.
    pub(crate) async fn container(&self, not: Option<&str>) -> String {
        eventually("the agent container", || {
            let out = docker_on(
                &self.host,
                &[
                    "ps",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    &format!("label=com.docker.compose.project={}", self.name),
                ],
            )
            .output()
            .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!text.is_empty() && !text.contains('\n') && Some(text.as_str()) != not).then_some(text)
        })
        .await
    }

    pub(crate) fn volume(&self) -> String {
        format!("{}_deploytrack-state", self.name)
    }

    fn down(&self) -> std::process::Output {
        self.command(false, &["down", "-v", "--timeout", "30"])
            .output()
            .unwrap()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_the_agent_as_packaged() {
    let artifacts = artifacts();
    let scope = Scope::new(ENGINE, "compose");
    let receiver = Receiver::start().await;
    let gid = socket_gid(Path::new("/var/run/docker.sock"));
    let token = group_token_file(&scope, gid);
    let docker_config = group_docker_config(&scope, gid);
    let listen = unused_addr();
    let agent_hostname = scope.name("agent-host");
    // The host's network, so the agent reaches the receiver on loopback; a hostname of its
    // own, so a report named after the container's host name would show.
    let project = ComposeProject::new(
        &scope,
        CLASSIC,
        &format!(
            r#"services:
  deploytrack:
    network_mode: host
    hostname: {agent_hostname}
    ports: !reset []
    environment:
      DEPLOYTRACK_LISTEN: "{listen}"
      DEPLOYTRACK_LABEL_SELECTOR: "{selector}"
      DEPLOYTRACK_RETRY_INITIAL: 200ms
    labels:
      {RUN_LABEL}: "{id}"
"#,
            selector = scope.selector(),
            id = scope.id
        ),
        &[
            ("DEPLOYTRACK_IMAGE", &artifacts.image),
            ("DEPLOYTRACK_URL", &receiver.url()),
            ("DEPLOYTRACK_ENVIRONMENT", "compose-test"),
            ("DEPLOYTRACK_TOKEN_PATH", token.to_str().unwrap()),
            (
                "DEPLOYTRACK_DOCKER_CONFIG_PATH",
                docker_config.to_str().unwrap(),
            ),
            ("DOCKER_GID", &gid.to_string()),
        ],
    )
    .with_credentials();
    project.up(&[]);
    let first = project.container(None).await;
    admin_ready(listen).await;
    assert_credentials_logged(&logs(CLASSIC, &first));

    let (host, marker, own_name) =
        reports_others_not_itself(&scope, &receiver, &agent_hostname, "compose-test", &first).await;
    check_agent_container(CLASSIC, &first, gid, &project.volume());

    // A new container with the same volume: the queue remembers what was delivered.
    project.up(&["--force-recreate"]);
    let second = project.container(Some(&first)).await;
    eventually("the new agent to reconcile", || {
        logs(CLASSIC, &second)
            .contains("reconciled with the engine")
            .then_some(())
    })
    .await;
    let marker2 = scope.name("api");
    scope.run(&["--name", &marker2], APP2);
    receiver
        .accepted_report(
            "a container started after the re-creation",
            &format!("{host}/{marker2}"),
        )
        .await;
    assert_eq!(
        count(&receiver, &format!("{host}/{marker}")),
        1,
        "re-sent after --force-recreate: {:?}",
        receiver.accepted()
    );
    assert_not_reported(&receiver, &own_name);
    check_agent_container(CLASSIC, &second, gid, &project.volume());

    // Torn down without any of the variables `up` needed.
    let out = project.down();
    assert!(
        out.status.success(),
        "down without DEPLOYTRACK_URL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !docker_on(CLASSIC, &["volume", "inspect", &project.volume()])
            .output()
            .unwrap()
            .status
            .success(),
        "down -v left the volume"
    );
}

/// The `/var/run` directory mount lets the agent outlive an engine restart that recreates
/// the socket. Only with live restore do containers outlive their engine, so this runs on a
/// private engine with `--live-restore` (which swarm mode would refuse).
#[tokio::test(flavor = "multi_thread")]
async fn compose_agent_follows_a_live_restored_engine_through_its_restart() {
    let artifacts = artifacts();
    let scope = Scope::new(ENGINE, "live-restore");
    let mut engine = PrivateEngine::start_with_args(Dockerd::Debian, &["--live-restore"]).await;
    let engine_host = engine.host.clone();
    // Containers outlive a live-restore engine: remove them before it goes.
    struct Containers(String);
    impl Drop for Containers {
        fn drop(&mut self) {
            if let Ok(out) = docker_on(&self.0, &["ps", "-aq"]).output() {
                let ids = String::from_utf8_lossy(&out.stdout).to_string();
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.split_whitespace());
                if args.len() > 3 {
                    let _ = docker_on(&self.0, &args).output();
                }
            }
        }
    }
    let _containers = Containers(engine_host.clone());
    let mut save = docker_on(CLASSIC, &["save", &artifacts.image])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut load = docker_on(&engine_host, &["load", "-q"]);
    load.stdin(save.stdout.take().unwrap());
    succeed(load);
    assert!(save.wait().unwrap().success());

    let socket_dir = engine.socket_dir().to_path_buf();
    let gid = socket_gid(&socket_dir.join("docker.sock"));
    let token = group_token_file(&scope, gid);
    // No network at all: a dry run prints each report to the container's log.
    let project = ComposeProject::new(
        &scope,
        &engine_host,
        &format!(
            r#"services:
  deploytrack:
    network_mode: none
    ports: !reset []
    volumes:
      - {dir}:/host/run:ro
    environment:
      DEPLOYTRACK_DRY_RUN: "true"
      DEPLOYTRACK_LABEL_SELECTOR: "{selector}"
    labels:
      {RUN_LABEL}: "{id}"
"#,
            dir = socket_dir.display(),
            selector = scope.selector(),
            id = scope.id
        ),
        &[
            ("DEPLOYTRACK_IMAGE", &artifacts.image),
            ("DEPLOYTRACK_URL", "http://127.0.0.1:9/unused-in-a-dry-run"),
            ("DEPLOYTRACK_TOKEN_PATH", token.to_str().unwrap()),
            ("DOCKER_GID", &gid.to_string()),
        ],
    );
    project.up(&[]);
    let agent = project.container(None).await;
    let host = engine.host_name();
    let printed = |name: &str| {
        let line = format!("\"name\":\"{host}/{name}\"");
        let agent = agent.clone();
        let engine_host = engine_host.clone();
        move || logs(&engine_host, &agent).contains(&line).then_some(())
    };
    let before = scope.name("before");
    engine.run(&scope.selector(), &before);
    eventually("the report before the restart", printed(&before)).await;
    let state = |key: &str| inspect(&engine_host, &agent)["State"][key].clone();
    let (pid, started) = (state("Pid"), state("StartedAt"));

    engine.stop().await;
    let pid_path = format!("/proc/{}", pid.as_u64().unwrap());
    assert!(
        Path::new(&pid_path).exists(),
        "the agent did not outlive its engine"
    );
    engine.boot().await;
    let after = scope.name("after");
    engine.run(&scope.selector(), &after);
    eventually("the report after the restart", printed(&after)).await;
    assert_eq!(
        (state("Pid"), state("StartedAt"), state("Running")),
        (pid, started, Value::Bool(true)),
        "the agent was restarted, so the restart proved nothing"
    );
    assert_eq!(inspect(&engine_host, &agent)["RestartCount"], 0);
}

// ------------------------------------------------------------------------------- Swarm

/// A stack and what it needs, removed when dropped, even after a failure.
struct Stack {
    name: String,
    secret: String,
    /// The registry credentials' secret.
    credentials: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = docker_on(CLASSIC, &["stack", "rm", &self.name]).output();
        let filter = format!("label=com.docker.stack.namespace={}", self.name);
        for _ in 0..600 {
            let out = docker_on(CLASSIC, &["ps", "-aq", "--filter", &filter]).output();
            if out.map(|o| o.stdout.is_empty()).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let volume = format!("{}_deploytrack-state", self.name);
        let _ = docker_on(CLASSIC, &["volume", "rm", &volume]).output();
        let _ = docker_on(CLASSIC, &["secret", "rm", &self.secret]).output();
        let _ = docker_on(CLASSIC, &["secret", "rm", &self.credentials]).output();
    }
}

/// The classic engine as a swarm manager: joined if it is not one yet, left as it is
/// afterwards (other tests may use the same swarm).
fn swarm_manager() {
    let state = succeed(docker_on(
        CLASSIC,
        &[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ],
    ));
    match state.as_str() {
        "active true" => {}
        "inactive false" => {
            let mut init = docker_on(CLASSIC, &["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            let out = init.output().unwrap();
            // Another test may have made it a manager meanwhile.
            let again = succeed(docker_on(
                CLASSIC,
                &["info", "--format", "{{.Swarm.ControlAvailable}}"],
            ));
            assert!(
                out.status.success() || again == "true",
                "docker swarm init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        other => panic!("the classic engine's swarm state is {other:?}: it must be a manager or no swarm member"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_runs_the_agent_as_a_global_service() {
    let artifacts = artifacts();
    let scope = Scope::new(ENGINE, "swarm");
    let receiver = Receiver::start().await;
    swarm_manager();
    let gid = socket_gid(Path::new("/var/run/docker.sock"));
    let listen = unused_addr();
    let agent_hostname = scope.name("agent-host");
    let stack = Stack {
        name: scope.name("dts"),
        secret: scope.name("dts-token"),
        credentials: scope.name("dts-docker-config"),
    };
    let docker_config = scope.dir.join("docker-config.json");
    std::fs::write(&docker_config, docker_config_json()).unwrap();
    succeed(docker_on(
        CLASSIC,
        &[
            "secret",
            "create",
            &stack.credentials,
            docker_config.to_str().unwrap(),
        ],
    ));
    succeed(docker_on(
        CLASSIC,
        &[
            "secret",
            "create",
            &stack.secret,
            scope.token_file().to_str().unwrap(),
        ],
    ));
    let override_file = scope.dir.join("swarm.override.yaml");
    std::fs::write(
        &override_file,
        format!(
            r#"version: "3.8"
services:
  deploytrack:
    hostname: {agent_hostname}
    networks: [hostnet]
    environment:
      DEPLOYTRACK_LISTEN: "{listen}"
      DEPLOYTRACK_LABEL_SELECTOR: "{selector}"
      DEPLOYTRACK_RETRY_INITIAL: 200ms
    labels:
      {RUN_LABEL}: "{id}"
networks:
  hostnet:
    external: true
    name: host
secrets:
  deploytrack_token:
    external: true
    name: {secret}
  deploytrack_docker_config:
    external: true
    name: {credentials}
"#,
            selector = scope.selector(),
            id = scope.id,
            secret = stack.secret,
            credentials = stack.credentials
        ),
    )
    .unwrap();
    let mut deploy = docker_on(
        CLASSIC,
        &["stack", "deploy", "--resolve-image", "never", "-c"],
    );
    deploy
        .arg(repo().join("packaging/swarm.yaml"))
        .arg("-c")
        .arg(repo().join("packaging/swarm.credentials.yaml"))
        .arg("-c")
        .arg(&override_file)
        .arg(&stack.name)
        .env("DEPLOYTRACK_IMAGE", &artifacts.image)
        .env("DEPLOYTRACK_URL", receiver.url())
        .env("DEPLOYTRACK_ENVIRONMENT", "swarm-test")
        .env("DOCKER_GID", gid.to_string());
    succeed(deploy);
    let service = format!("{}_deploytrack", stack.name);
    let task = eventually("the global task's container", || {
        let out = docker_on(
            CLASSIC,
            &[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
            ],
        )
        .output()
        .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty() && !text.contains('\n')).then_some(text)
    })
    .await;
    admin_ready(listen).await;
    assert_credentials_logged(&logs(CLASSIC, &task));

    let (_, _, own_name) =
        reports_others_not_itself(&scope, &receiver, &agent_hostname, "swarm-test", &task).await;
    assert!(own_name.starts_with(&format!("/{service}.")), "{own_name}");
    check_agent_container(
        CLASSIC,
        &task,
        gid,
        &format!("{}_deploytrack-state", stack.name),
    );
}

// ----------------------------------------------------------------------------- systemd

/// A Debian 12 machine booted with systemd in a container on the host's network, with the
/// host's Docker socket: the .deb is installed there as on a server.
struct Machine {
    name: String,
}

impl Machine {
    async fn boot(scope: &Scope) -> Machine {
        let name = scope.name("debian");
        // Docker makes the container's mounts private, and systemd leaves them so inside a
        // container. Credentials (LoadCredential=) are mounted in a helper's namespace and
        // reach the service only through shared propagation, as on a booted host: make `/`
        // shared first, or every credential directory stays empty, root 0700.
        succeed(docker_on(
            CLASSIC,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                &scope.selector(),
                "--label",
                "deploytrack.enable=false",
                "--network",
                "host",
                "--cgroupns=host",
                "--cap-add",
                "SYS_ADMIN",
                "--cap-add",
                "NET_ADMIN",
                "--cap-add",
                "SYS_PTRACE",
                "--security-opt",
                "seccomp=unconfined",
                "--security-opt",
                "apparmor=unconfined",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/tmp",
                "--entrypoint",
                "/bin/sh",
                SYSTEMD_IMAGE,
                "-c",
                "mount --make-rshared / && exec /lib/systemd/systemd",
            ],
        ));
        let machine = Machine { name };
        eventually("systemd to boot", || {
            let state = machine.try_sh("systemctl is-system-running").ok()?;
            matches!(state.as_str(), "running" | "degraded").then_some(())
        })
        .await;
        machine
    }

    fn try_sh(&self, script: &str) -> Result<String, String> {
        let out = docker_on(CLASSIC, &["exec", &self.name, "sh", "-c", script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn sh(&self, script: &str) -> String {
        self.try_sh(script)
            .unwrap_or_else(|e| panic!("in the systemd machine, `{script}` failed: {e}"))
    }

    /// A file into the machine (`docker cp` cannot: /var/run is a link there).
    fn put(&self, from: &Path, to: &str) {
        let mut command = docker_on(
            CLASSIC,
            &["exec", "-i", &self.name, "sh", "-c", &format!("cat > {to}")],
        );
        command.stdin(std::fs::File::open(from).unwrap());
        succeed(command);
    }

    fn show(&self, property: &str) -> String {
        self.sh(&format!("systemctl show -p {property} --value deploytrack"))
    }
}

/// The same package with a higher version, as the next release would be.
fn newer_package(deb: &Path, dir: &Path) -> (PathBuf, String) {
    let tree = dir.join("deb-tree");
    let run = |args: &[&str]| {
        let mut command = Command::new("dpkg-deb");
        command.args(args);
        succeed(command)
    };
    run(&["-R", deb.to_str().unwrap(), tree.to_str().unwrap()]);
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).unwrap();
    let version = control
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap()
        .to_string();
    let newer = format!("{version}+upgrade1");
    std::fs::write(
        &control_path,
        control.replace(&format!("Version: {version}"), &format!("Version: {newer}")),
    )
    .unwrap();
    let out = dir.join("deploytrack-newer.deb");
    run(&[
        "--root-owner-group",
        "-b",
        tree.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    (out, newer)
}

/// A line that starts with a date and a time, as a logger adds.
fn starts_with_timestamp(line: &str) -> bool {
    let b = line.trim_start().as_bytes();
    b.len() >= 16
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
}

#[tokio::test(flavor = "multi_thread")]
async fn deb_under_systemd_keeps_what_install_promises() {
    let artifacts = artifacts();
    let scope = Scope::new(ENGINE, "systemd");
    let receiver = Receiver::start().await;
    let gid = socket_gid(Path::new("/var/run/docker.sock"));
    let machine = Machine::boot(&scope).await;
    let host = ENGINE.host_name();

    // Installed before it is configured: enabled, skipped until the token exists.
    machine.sh(&format!("groupadd -g {gid} docker"));
    machine.put(&artifacts.deb, "/root/deploytrack.deb");
    machine.sh("dpkg -i /root/deploytrack.deb");
    assert_eq!(machine.sh("systemctl is-enabled deploytrack"), "enabled");
    assert_eq!(machine.show("ConditionResult"), "no");
    assert_eq!(machine.show("ActiveState"), "inactive");

    // Configured as INSTALL.md says. The engine's socket is reached through a link made only
    // after the start, to see that READY=1 waits for the engine.
    let late_socket = "/run/deploytrack-test/docker.sock";
    machine.sh(&format!(
        "cat >> /etc/deploytrack/config.toml <<'EOF'
url = \"{url}\"
environment = \"systemd-test\"
label_selector = [\"{selector}\"]
retry_initial = \"200ms\"
retry_max = \"1s\"
docker_host = \"unix://{late_socket}\"
EOF
printf '%s\\n' '{TOKEN}' | install -m 0600 /dev/stdin /etc/deploytrack/token
mkdir -p /etc/systemd/system/deploytrack.service.d
printf '[Service]\\nWatchdogSec=4s\\nRestartSec=1s\\n' > /etc/systemd/system/deploytrack.service.d/test.conf
systemctl daemon-reload",
        url = receiver.url(),
        selector = scope.selector(),
    ));

    // Activating until the engine answers, active after READY=1, without a restart.
    machine.sh("systemctl start --no-block deploytrack");
    // The agent runs and says it waits for the engine (after 2 s without an answer).
    eventually("the agent waiting for the engine", || {
        machine
            .sh("journalctl -u deploytrack -o cat --no-pager _COMM=deploytrack")
            .contains("does not answer yet")
            .then_some(())
    })
    .await;
    assert_eq!(machine.show("ActiveState"), "activating");
    let first_pid = machine.show("MainPID");
    machine.sh(&format!(
        "mkdir -p /run/deploytrack-test && ln -s /run/docker.sock {late_socket}"
    ));
    eventually("the unit to turn active", || {
        (machine.show("ActiveState") == "active").then_some(())
    })
    .await;
    assert_eq!(machine.show("MainPID"), first_pid);
    assert_eq!(machine.show("NRestarts"), "0");

    // A report, with the token the unit's credential carries (LoadCredential=).
    let one = scope.name("one");
    scope.run(&["--name", &one], APP1);
    let report = receiver
        .accepted_report("a report from the service", &format!("{host}/{one}"))
        .await;
    assert_eq!(report.environment(), "systemd-test");
    assert_eq!(
        report.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // journald adds its own timestamp: the agent's lines carry none.
    let journal = machine.sh("journalctl -u deploytrack -o cat --no-pager _COMM=deploytrack");
    assert!(journal.contains("reconciled with the engine"), "{journal}");
    let stamped: Vec<&str> = journal
        .lines()
        .filter(|l| starts_with_timestamp(l))
        .collect();
    assert!(stamped.is_empty(), "a second timestamp: {stamped:?}");

    // The package made the registry credentials' file, empty and root-only: no
    // credentials until one is put there, as INSTALL.md says; then a restart loads them.
    assert_eq!(
        machine.sh("stat -c '%a %U %s' /etc/deploytrack/docker-config.json && cat /etc/deploytrack/docker-config.json"),
        "600 root 3\n{}"
    );
    machine.sh(&format!(
        "printf '%s' '{}' > /etc/deploytrack/docker-config.json",
        docker_config_json()
    ));

    // A restart re-sends nothing.
    machine.sh("systemctl restart deploytrack");
    let two = scope.name("two");
    scope.run(&["--name", &two], APP1);
    receiver
        .accepted_report("a report after the restart", &format!("{host}/{two}"))
        .await;
    assert_eq!(count(&receiver, &format!("{host}/{one}")), 1);
    assert_credentials_logged(
        &machine.sh("journalctl -u deploytrack -o cat --no-pager _COMM=deploytrack"),
    );

    // A hung agent (SIGSTOP) stops its watchdog pings; systemd restarts it. First the
    // acknowledgement must be in the queue file: a kill between the endpoint's 2xx and that
    // commit would rightly send the report again (at least once).
    let queue = "runuser -u deploytrack -- deploytrack queue --state-dir /var/lib/deploytrack list";
    let sent = "runuser -u deploytrack -- deploytrack queue --state-dir /var/lib/deploytrack sent";
    // Committed as delivered, not merely gone from the queue: a report queued and
    // acknowledged within one group commit never shows as pending at all.
    eventually("the acknowledgement in the queue file", || {
        machine
            .sh(sent)
            .contains(&format!("{host}/{two}"))
            .then_some(())
    })
    .await;
    assert!(machine.sh(queue).starts_with("0 pending"));
    let hung = machine.show("MainPID");
    machine.sh("systemctl kill --kill-who=main -s SIGSTOP deploytrack");
    eventually("the watchdog to restart the agent", || {
        let pid = machine.show("MainPID");
        (pid != hung && pid != "0" && machine.show("ActiveState") == "active").then_some(())
    })
    .await;
    let journal = machine.sh("journalctl -u deploytrack --no-pager");
    assert!(journal.contains("Watchdog timeout"), "{journal}");

    // A clean stop.
    machine.sh("systemctl stop deploytrack");
    assert_eq!(machine.show("Result"), "success");
    assert_eq!(machine.show("ExecMainStatus"), "0");
    assert_eq!(machine.show("ExecMainCode"), "1", "not exited (CLD_EXITED)");

    // Upgrade while it runs, with a report waiting in the queue: the unit restarts, the
    // queue and the configuration stay.
    machine.sh("systemctl start deploytrack");
    receiver.set_default(Answer::status(503));
    let three = scope.name("three");
    scope.run(&["--name", &three], APP1);
    let three_name = format!("{host}/{three}");
    eventually("the report to be refused once", || {
        receiver
            .received()
            .iter()
            .any(|r| r.name() == three_name)
            .then_some(())
    })
    .await;
    // Sent before its write is committed (the queue's group commit): wait for the file.
    eventually("the refused report in the queue file", || {
        machine.sh(queue).contains(&three_name).then_some(())
    })
    .await;
    let before = (machine.show("MainPID"), machine.show("InvocationID"));
    let (newer, version) = newer_package(&artifacts.deb, &scope.dir);
    machine.put(&newer, "/root/deploytrack-newer.deb");
    machine.sh("dpkg -i /root/deploytrack-newer.deb");
    assert_eq!(
        machine.sh("dpkg-query -W -f '${Version}' deploytrack"),
        version
    );
    eventually("the upgraded unit to run again", || {
        (machine.show("ActiveState") == "active").then_some(())
    })
    .await;
    assert_ne!(
        (machine.show("MainPID"), machine.show("InvocationID")),
        before,
        "not restarted by the upgrade"
    );
    assert!(machine
        .sh("cat /etc/deploytrack/config.toml")
        .contains(&receiver.url()));
    assert!(
        machine.sh(queue).contains(&three_name),
        "the queue was lost"
    );
    receiver.set_default(Answer::status(200));
    receiver
        .accepted_report("the queued report after the upgrade", &three_name)
        .await;
    for name in [&one, &two] {
        assert_eq!(
            count(&receiver, &format!("{host}/{name}")),
            1,
            "{name} re-sent"
        );
    }

    // apt remove: the agent goes, its configuration, token and queue stay.
    machine.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y deploytrack");
    // debhelper masks the unit of a removed package until it is purged or installed again.
    assert_eq!(machine.show("ActiveState"), "inactive");
    assert!(
        ["masked", "not-found"].contains(&machine.show("LoadState").as_str()),
        "{}",
        machine.show("LoadState")
    );
    machine.sh(&format!(
        "! test -e /usr/bin/deploytrack && test -s /etc/deploytrack/config.toml \
         && test -s /etc/deploytrack/token && test -s {STATE}/deploytrack.db"
    ));
    // apt purge: the configuration, token and queue go; the system user stays.
    machine.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y deploytrack");
    machine.sh(&format!(
        "! test -e /etc/deploytrack && ! test -e {STATE} && getent passwd deploytrack"
    ));
    assert_eq!(machine.show("LoadState"), "not-found");
}
