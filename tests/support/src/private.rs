//! Private engines: a dockerd of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::engine::ensure_test_env;
use crate::{eventually, run_ok, Engine, APP1, PATIENCE};

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
    /// The dockerd of `engine`, with its image store.
    pub fn of(engine: Engine) -> Self {
        match engine {
            Engine::Classic => Dockerd::Debian,
            Engine::Containerd => Dockerd::Docker28 {
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
    /// A private engine running `engine`'s dockerd.
    pub async fn start(engine: Engine) -> PrivateEngine {
        Self::start_with(false, Dockerd::of(engine), &[]).await
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
    pub async fn start_with_tls(engine: Engine) -> PrivateEngine {
        Self::start_with(true, Dockerd::of(engine), &[]).await
    }

    async fn start_with(tls: bool, dockerd: Dockerd, args: &[&str]) -> PrivateEngine {
        ensure_test_env();
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
            let octet = next_octet();
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
        run_ok("docker", &all, None)
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

/// The third octet of a TLS engine's 10.213.x.0/30 link: a different one for each private
/// engine of this process (the tests of both engines run side by side), from a random start.
fn next_octet() -> u8 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        fastrand::u32(..250),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    1 + (NEXT.fetch_add(1, Ordering::SeqCst) % 250) as u8
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
