//! Podman's Docker-compatible API: its own event names (`remove`, sometimes `died`), on each
//! Podman that scripts/test-env.sh starts: bookworm's 4.3 as root and as an ordinary user
//! (rootless, the agent run as that user against that user's socket), sid's 5.8 and
//! experimental's 6.1 (each chrooted in a mount namespace of its own).

use deploytrack_test_support::*;

use crate::ENGINE;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

/// The user whose rootless Podman 4.3 scripts/test-env.sh serves on
/// `/run/user/<uid>/podman/podman.sock`.
const ROOTLESS_USER: &str = "deploytrack-rootless";

/// A Podman under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Podman {
    /// Debian 12's Podman 4.3, rootful, on the host.
    V4,
    /// Podman 4.3 as `deploytrack-rootless` (vfs storage, `Rootless: true`).
    V4Rootless,
    /// Debian sid's Podman 5.8, in /opt/deploytrack-podman5.
    V5,
    /// Debian experimental's Podman 6.1, in /opt/deploytrack-podman6.
    V6,
}

/// The rootless user's uid, gid and home.
fn rootless_user() -> (u32, u32, String) {
    let entry = run_ok("getent", &["passwd", ROOTLESS_USER], None);
    let fields: Vec<&str> = entry.split(':').collect();
    assert!(
        fields.len() >= 6,
        "getent passwd {ROOTLESS_USER}: {entry:?}"
    );
    let number = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|e| panic!("{entry:?}: {e}"))
    };
    (number(fields[2]), number(fields[3]), fields[5].to_string())
}

impl Podman {
    /// The version the engine must answer as (a prefix, e.g. "5.8.").
    fn version(self) -> &'static str {
        match self {
            Podman::V4 | Podman::V4Rootless => "4.3.",
            Podman::V5 => "5.8.",
            Podman::V6 => "6.1.",
        }
    }

    fn socket(self) -> String {
        match self {
            Podman::V4 => "/run/deploytrack-podman.sock".into(),
            Podman::V4Rootless => format!("/run/user/{}/podman/podman.sock", rootless_user().0),
            Podman::V5 => "/run/deploytrack-podman5/podman/podman.sock".into(),
            Podman::V6 => "/run/deploytrack-podman6/podman/podman.sock".into(),
        }
    }

    fn host(self) -> String {
        format!("unix://{}", self.socket())
    }

    /// That Podman's own CLI, on the engine's storage: the host's podman for 4.3 (through
    /// the user's socket when rootless), the chroot's podman in the service's mount
    /// namespace for 5.8 and 6.1.
    fn cli(self) -> Command {
        match self {
            Podman::V4 => Command::new("podman"),
            Podman::V4Rootless => {
                let mut cmd = Command::new("podman");
                cmd.args(["--remote", "--url", &self.host()]);
                cmd
            }
            Podman::V5 | Podman::V6 => {
                let n = if self == Podman::V5 { 5 } else { 6 };
                let pidfile = format!("/run/deploytrack-podman{n}.pid");
                let pid = std::fs::read_to_string(&pidfile)
                    .unwrap_or_else(|e| panic!("{pidfile} (written by scripts/test-env.sh): {e}"));
                let mut cmd = Command::new("nsenter");
                cmd.args([
                    "--target",
                    pid.trim(),
                    "--mount",
                    "--root",
                    "--wd",
                    "podman",
                ])
                .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
                cmd
            }
        }
    }

    /// Run that Podman's CLI to success; its trimmed stdout.
    fn podman(self, args: &[&str]) -> String {
        let out = self
            .cli()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{self:?}: cannot run podman: {e}"));
        assert!(
            out.status.success(),
            "{self:?}: podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The engine answers on its socket as the version under test; else the test fails
    /// (never skips), naming what is wrong.
    fn ensure_up(self) {
        let socket = self.socket();
        match libpod_version(&socket) {
            Ok(version) if version.starts_with(self.version()) => {}
            Ok(version) => panic!(
                "{self:?}: the Podman on {socket} is {version}, not {}x",
                self.version()
            ),
            Err(e) => panic!(
                "{self:?}: no Podman answers on {socket} (CI={}; scripts/test-env.sh starts it): {e}",
                std::env::var("CI").unwrap_or_default()
            ),
        }
    }
}

/// The `Libpod-Api-Version` header of the answer to `GET /_ping` on a Podman socket.
fn libpod_version(socket: &str) -> Result<String, String> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    answer
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("libpod-api-version")
                .then(|| value.trim().to_string())
        })
        .ok_or_else(|| format!("no Libpod-Api-Version in {answer:?}"))
}

/// Removes the scope's containers on that Podman, also when the test fails.
struct PodmanScope(Podman, String);

impl Drop for PodmanScope {
    fn drop(&mut self) {
        let _ = self
            .0
            .cli()
            .args(["rm", "-f", "--filter", &format!("label={}", self.1)])
            .output();
    }
}

/// `podman run -d` of APP1 with the scope's label.
fn podman_run(engine: Podman, label: &str, name: &str) {
    podman_run_image(engine, label, name, APP1);
}

/// How the agent runs: as the test's user (root), or as the rootless Podman's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAs {
    TestUser,
    RootlessUser,
}

/// The scope's agent (as `Scope::agent` builds it), as `run_as`.
fn start_agent(scope: &Scope, run_as: RunAs, url: &str, extra: &[&str]) -> Agent {
    match run_as {
        RunAs::TestUser => scope.agent(url, extra),
        RunAs::RootlessUser => {
            let (uid, gid, home) = rootless_user();
            let state = scope.state_dir();
            std::fs::create_dir_all(&state).unwrap();
            let token = scope.token_file();
            for path in [&state, &token] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
            let args = scope.run_args(&state, &token, url, extra);
            // The user's own groups, not the Docker socket's (agent_command_as adds that).
            let mut cmd = Command::new("setpriv");
            cmd.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--init-groups".into(),
                "--".into(),
                env!("CARGO_BIN_EXE_deploytrack").into(),
            ])
            .args(&args);
            deploytrack_test_support::agent::scrub_environment(&mut cmd);
            cmd.env("HOME", &home)
                .env("USER", ROOTLESS_USER)
                .env("XDG_RUNTIME_DIR", format!("/run/user/{uid}"));
            Agent::spawn_command(&scope.dir, cmd, &[])
        }
    }
}

async fn starts_stops_and_reconciliation_are_reported(engine: Podman, run_as: RunAs) {
    let scope = Scope::new(ENGINE, &format!("podman-{engine:?}").to_lowercase());
    engine.ensure_up();
    let _cleanup = PodmanScope(engine, scope.selector());
    let receiver = Receiver::start().await;
    let label = scope.selector();
    // Running before the agent: found by the reconciliation at start.
    let before = scope.name("before");
    podman_run(engine, &label, &before);
    let host = engine.host();
    let args = ["--docker-host", host.as_str(), "--report-stops"];
    let mut agent = start_agent(&scope, run_as, &receiver.url(), &args);
    agent.ready().await;
    if run_as == RunAs::RootlessUser {
        // Really that user's process (setpriv execs the agent).
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        let uid = rootless_user().0.to_string();
        let uids = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default();
        assert!(
            uids.split_whitespace().skip(1).all(|u| u == uid),
            "the agent runs as {uids:?}, not {ROOTLESS_USER} ({uid})"
        );
    }
    let before_suffix = format!("/{before}");
    eventually("the container running before the agent", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name().ends_with(&before_suffix))
    })
    .await;
    let name = scope.name("pod");
    podman_run(engine, &label, &name);
    let digests = engine.podman(&[
        "image",
        "inspect",
        "--format",
        "{{join .RepoDigests \" \"}}",
        APP1,
    ]);
    let want = digests
        .split_whitespace()
        .find(|d| d.starts_with("localhost:5000/deploytrack-test/app@"))
        .expect("podman has the app digest")
        .to_string();
    let suffix = format!("/{name}");
    let running = eventually("the podman container's report", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name().ends_with(&suffix))
    })
    .await;
    assert_eq!(running.url(), want);
    assert_eq!(running.body["container"]["state"], "running");
    engine.podman(&["rm", "-f", &name]);
    let stopped = eventually("the podman container's stop", || {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.name().ends_with(&suffix) && r.body["container"]["state"] == "stopped")
    })
    .await;
    assert_eq!(stopped.url(), want);
    // Podman's start time and event times are read as Docker's are, and order the two.
    let since = |r: &receiver::Received| {
        let text = r.body["container"]["since"].as_str().unwrap_or_default();
        humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("since {text:?}: {e}"))
    };
    assert!(
        since(&running) < since(&stopped),
        "{running:#?}\n{stopped:#?}"
    );

    // Removed while the agent is down: the reconciliation at the next start reports the stop.
    agent.stop().await;
    engine.podman(&["rm", "-f", &before]);
    let _agent = start_agent(&scope, run_as, &receiver.url(), &args);
    let stopped = eventually("the stop that happened while the agent was down", || {
        receiver.accepted().into_iter().find(|r| {
            r.name().ends_with(&before_suffix) && r.body["container"]["state"] == "stopped"
        })
    })
    .await;
    assert_eq!(stopped.url(), want);
    // No event says when that stop happened.
    assert!(
        stopped.body["container"].get("since").is_none(),
        "{stopped:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_starts_stops_and_reconciliation_are_reported() {
    starts_stops_and_reconciliation_are_reported(Podman::V4, RunAs::TestUser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_rootless_starts_stops_and_reconciliation_are_reported() {
    starts_stops_and_reconciliation_are_reported(Podman::V4Rootless, RunAs::RootlessUser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn podman58_starts_stops_and_reconciliation_are_reported() {
    starts_stops_and_reconciliation_are_reported(Podman::V5, RunAs::TestUser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn podman61_starts_stops_and_reconciliation_are_reported() {
    starts_stops_and_reconciliation_are_reported(Podman::V6, RunAs::TestUser).await;
}

/// `podman run -d` of `image` with the scope's label.
fn podman_run_image(engine: Podman, label: &str, name: &str, image: &str) {
    engine.podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--label",
        label,
        "--name",
        name,
        image,
    ]);
}

/// Removes the test's own image names from that Podman, also when the test fails.
struct PodmanImages(Podman, Vec<String>);

impl Drop for PodmanImages {
    fn drop(&mut self) {
        for image in &self.1 {
            let _ = self.0.cli().args(["rmi", "-f", image]).output();
        }
    }
}

/// Only a repository the registry shows to hold the digest is named: a local image (which
/// Podman gives a repo digest for its local name) is skipped, a second local name of a
/// pulled image is reported as the registry's repository, and an arm64 image as `v8`.
async fn only_what_a_registry_holds_is_reported(engine: Podman) {
    let scope = Scope::new(ENGINE, &format!("podevidence-{engine:?}").to_lowercase());
    engine.ensure_up();
    let _cleanup = PodmanScope(engine, scope.selector());
    let label = scope.selector();
    let unique = scope.name("x");
    let local = format!("localhost:5001/deploytrack-test/podlocal-{unique}:1");
    let alias = format!("127.0.0.1:5001/deploytrack-test/podalias-{unique}:1");
    let _images = PodmanImages(engine, vec![local.clone(), alias.clone()]);
    // A local image: a busybox rootfs, imported, never pushed.
    let rootfs = scope.dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    std::fs::write(rootfs.join("marker"), &unique).unwrap();
    let tar = scope.dir.join("rootfs.tar");
    run_ok(
        "tar",
        &[
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
        None,
    );
    let out = engine
        .cli()
        .args([
            "import",
            "--change",
            r#"CMD ["/bin/sleep","3600"]"#,
            "-",
            &local,
        ])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digests = |image: &str| {
        engine.podman(&[
            "image",
            "inspect",
            "--format",
            "{{join .RepoDigests \" \"}}",
            image,
        ])
    };
    // The hazard: a repo digest for a repository that never held the image.
    assert!(
        digests(&local).contains("localhost:5001/deploytrack-test/podlocal-"),
        "{}",
        digests(&local)
    );
    engine.podman(&["tag", APP1, &alias]);

    let receiver = Receiver::start().await;
    let host = engine.host();
    let agent = scope.agent(&receiver.url(), &["--docker-host", host.as_str()]);
    agent.ready().await;
    // Pulled while the agent runs.
    engine.podman(&["pull", "-q", "--tls-verify=false", ARM1]);
    let (on_local, on_alias, on_arm) =
        (scope.name("local"), scope.name("alias"), scope.name("arm"));
    podman_run_image(engine, &label, &on_local, &local);
    podman_run_image(engine, &label, &on_alias, &alias);
    podman_run_image(engine, &label, &on_arm, ARM1);
    let receiver = &receiver;
    let report = |name: &str| {
        let suffix = format!("/{name}");
        move || {
            receiver
                .accepted()
                .into_iter()
                .find(|r| r.name().ends_with(&suffix))
        }
    };
    let alias_report =
        eventually("the second local name of a pulled image", report(&on_alias)).await;
    let app = digests(APP1)
        .split_whitespace()
        .find(|d| d.starts_with("localhost:5000/deploytrack-test/app@"))
        .expect("podman has the app digest")
        .to_string();
    assert_eq!(
        alias_report.url(),
        app,
        "the registry's repository, not the local name"
    );
    let arm_report = eventually("the arm64 container", report(&on_arm)).await;
    assert!(
        arm_report
            .url()
            .starts_with("localhost:5000/deploytrack-test/arm@"),
        "{}",
        arm_report.url()
    );
    assert_eq!(
        arm_report.body["platform"],
        serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
    );
    agent
        .logged("the local image skipped", |l| {
            l.contains("no evidence that a registry holds this image") && l.contains("podlocal-")
        })
        .await;
    assert!(
        report(&on_local)().is_none(),
        "the local image was reported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_reports_only_what_a_registry_holds() {
    only_what_a_registry_holds_is_reported(Podman::V4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn podman58_reports_only_what_a_registry_holds() {
    only_what_a_registry_holds_is_reported(Podman::V5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn podman61_reports_only_what_a_registry_holds() {
    only_what_a_registry_holds_is_reported(Podman::V6).await;
}
