//! Shared pieces: the agent as a child process, its metrics, /proc readings, ports, waiting.

pub use deploytrack_test_support::agent::{agent_command_of, Agent};

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "bench-token-0123456789";

/// The agent binary: `DEPLOYTRACK_BIN` (scripts/bench.sh sets it to a copy of the release build),
/// else the one cargo built for this bench.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("DEPLOYTRACK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(deploytrack_test_support::agent_bin)
}

/// Progress on stderr, with the seconds since the suite started.
pub fn say(text: impl AsRef<str>) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!(
        "[bench {:7.1}s] {}",
        start.elapsed().as_secs_f64(),
        text.as_ref()
    );
}

/// A loopback port nothing listens on (an endpoint that is down refuses connections).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Poll `check` every `every` until it answers or `patience` runs out.
pub async fn wait_for<T>(
    what: &str,
    patience: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > patience {
            return Err(format!("timed out after {patience:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// A scratch directory for one measurement, under the run's directory.
pub fn scratch(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Settings of one agent process.
#[derive(Default)]
pub struct AgentArgs {
    pub url: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub docker_host: Option<String>,
    pub selectors: Vec<String>,
    pub listen: Option<SocketAddr>,
    pub extra: Vec<String>,
}

/// The agent as a child process (the wrapper the tests use too), with these settings;
/// output goes to files in `dir`. Killed on drop.
pub fn spawn_agent(dir: &Path, a: AgentArgs) -> Agent {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write the token file");
    let mut args: Vec<String> = vec!["run".into()];
    if let Some(url) = &a.url {
        args.extend(["--url".into(), url.clone()]);
    }
    args.extend(["--token-file".into(), token.display().to_string()]);
    if let Some(state) = &a.state_dir {
        args.extend(["--state-dir".into(), state.display().to_string()]);
    }
    if let Some(host) = &a.docker_host {
        args.extend(["--docker-host".into(), host.clone()]);
    }
    for s in &a.selectors {
        args.extend(["--label-selector".into(), s.clone()]);
    }
    if let Some(listen) = a.listen {
        args.extend(["--listen".into(), listen.to_string()]);
    }
    args.extend(a.extra.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn_command(dir, agent_command_of(&agent_bin(), &argv), &[])
}

/// What the benchmarks read of a running agent: its /proc figures and its /metrics.
pub trait Measured {
    fn cpu_seconds(&self) -> Option<f64>;
    fn status_kb(&self, field: &str) -> Option<u64>;
    fn metrics(
        &self,
        client: &reqwest::Client,
    ) -> impl std::future::Future<Output = Result<Metrics, String>>;
}

impl Measured for Agent {
    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    fn status_kb(&self, field: &str) -> Option<u64> {
        status_kb(self.pid(), field)
    }

    async fn metrics(&self, client: &reqwest::Client) -> Result<Metrics, String> {
        let addr = self.listen().ok_or("the agent has no --listen address")?;
        scrape(client, addr).await
    }
}

/// One scrape of /metrics: every sample, keyed by the series (name and labels).
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.trim().parse::<f64>() {
                    map.insert(series.trim().to_string(), v);
                }
            }
        }
        Metrics(map)
    }

    /// The sum over every series of `name` (whatever the labels).
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name
                    || series
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

pub async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> Result<Metrics, String> {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET /metrics body: {e}"))?;
    Ok(Metrics::parse(&text))
}

/// Clock ticks per second of /proc/PID/stat.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU time of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// CPU seconds per thread name (threads of the same name added up), from /proc/PID/task.
pub fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += ticks / clock_ticks();
    }
    out
}

/// Context switches (voluntary and involuntary) summed over a process's live threads:
/// roughly how often its threads woke up. Also the number of threads.
pub fn context_switches(pid: u32) -> Option<(u64, usize)> {
    let mut total = 0;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        threads += 1;
        for l in status.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some((total, threads))
}

/// This process's own CPU seconds (the simulated engine and the receiver run in it).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// The 1-minute load average, as a hint of how busy the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}
