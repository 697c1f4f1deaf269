//! Support shared by the integration tests (tests/it, tests/host) and the benchmarks
//! (benches/suite): the engines under test, a per-test scope that labels every container,
//! the agent binary as a child process, the report receiver, the simulated engine, the
//! engine proxy, private engines, patience, and the source revision a run measured.
//! Each target imports what it uses from this library (`deploytrack_test_support`).

pub mod agent;
pub mod engine;
pub mod git;
pub mod private;
pub mod proxy;
pub mod receiver;
pub mod scope;
pub mod sim;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub use agent::{agent_bin, agent_command, Agent, Output};
pub use engine::Engine;
pub use private::{make_certificates, Dockerd, PrivateEngine};
pub use receiver::{Answer, Receiver};
pub use scope::Scope;

/// One patience setting for every "eventually" of the tests.
pub const PATIENCE: Duration = Duration::from_secs(45);

pub const APP1: &str = "localhost:5000/deploytrack-test/app:1";
pub const APP2: &str = "localhost:5000/deploytrack-test/app:2";
pub const MIRROR1: &str = "localhost:5000/deploytrack-test/mirror:1";
pub const LOCAL1: &str = "deploytrack-test/local:1";
pub const ARM1: &str = "localhost:5000/deploytrack-test/arm:1";
pub const RUN_LABEL: &str = "deploytrack.test.run";
pub const TOKEN: &str = "tok-Sup3rSecret-7f3a9c";

/// Run a program to success and return its trimmed stdout.
pub fn run_ok(program: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    output_ok(cmd)
}

/// Run `cmd` to success and return its trimmed stdout.
pub fn output_ok(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

/// An engine-facing test, written once as `async fn name(engine: Engine)`, run on both
/// engines: `engine_test!(name);` makes the tests `name::classic` and `name::containerd`
/// (each on a multi-threaded runtime). Attributes given before the name (`#[ignore = "…"]`)
/// go on both.
#[macro_export]
macro_rules! engine_test {
    ($(#[$attr:meta])* $name:ident) => {
        mod $name {
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread")]
            async fn classic() {
                super::$name($crate::Engine::Classic).await
            }

            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread")]
            async fn containerd() {
                super::$name($crate::Engine::Containerd).await
            }
        }
    };
}
