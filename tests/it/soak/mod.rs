//! Soak: the agent for a long while (30 minutes unless `DEPLOYTRACK_SOAK_DURATION`, in
//! humantime format, says otherwise) under container churn, endpoint outages and two engine
//! restarts, then checked: the endpoint's final view equals the engine's truth for every
//! container that ran, resident memory and file descriptors did not grow past their warm-up
//! level, and the log holds no storm of warnings. `cargo test` skips it (`#[ignore]`);
//! `scripts/soak.sh` runs it, and it writes its figures to SOAK.md.
//!
//! Everything happens on a private engine (a dockerd of its own in its own network
//! namespace), so restarting that engine disturbs no other test.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use deploytrack_test_support::receiver::Received;
use deploytrack_test_support::*;

const DEFAULT_DURATION: Duration = Duration::from_secs(30 * 60);
const APP_REPO: &str = "localhost:5000/deploytrack-test/app";

/// Container names in use at a time; a removed name is sometimes retired for a fresh one.
const ACTIVE_NAMES: usize = 40;
const MIN_RUNNING: usize = 10;
const TARGET_RUNNING: usize = 20;
const MAX_RUNNING: usize = 30;
/// A container is left alone this long after a command touched it, so that the agents
/// see every state it goes through (a soak is about endurance, not about races).
const MIN_AGE: Duration = Duration::from_secs(2);
/// Every docker command is bounded: a wedged engine fails the soak instead of stalling it.
const DOCKER_TIMEOUT_SECS: &str = "60";

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Fractions of the duration: the warm-up (an outage and an engine restart included), and
/// the last part whose peak must stay within the tolerance of the warm-up's.
const WARM_UP_END: f64 = 0.25;
const LAST_PART_START: f64 = 0.70;
/// Samples this early are start-up, not a level.
const SETTLE_SECS: f64 = 10.0;
const RSS_TOLERANCE_PERCENT: u64 = 25;
const RSS_TOLERANCE_KIB: u64 = 2048;
const FD_TOLERANCE_PERCENT: usize = 25;
const FD_TOLERANCE: usize = 5;
/// WARN or ERROR lines in one minute that make a storm.
const STORM_PER_MINUTE: usize = 60;
/// WARN lines allowed per outage or engine restart over the whole run.
const WARN_BUDGET_PER_DISTURBANCE: usize = 30;
/// How long after the churn stops the endpoints may take to hold the engine's truth.
const CONVERGENCE: Duration = Duration::from_secs(180);

const REQUEST_TIMEOUT: &str = "3s";
const SLOW_ANSWER: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// The endpoint answers 503.
    Unavailable,
    /// Nothing listens on the endpoint's port: connections are refused.
    Refused,
    /// The endpoint answers after the agent's request timeout.
    Slow,
    /// The endpoint answers 503 with `Retry-After: 3`.
    RetryAfter,
}

impl Outage {
    fn describe(self) -> &'static str {
        match self {
            Outage::Unavailable => "503",
            Outage::Refused => "connection refused",
            Outage::Slow => "answers slower than --request-timeout",
            Outage::RetryAfter => "503 with Retry-After: 3",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    OutageBegins(Outage),
    OutageEnds,
    EngineRestart,
    ChurnEnds,
}

/// When each disturbance happens, as a fraction of the duration. The warm-up holds one
/// outage and one engine restart, so that its level includes what they cost.
const TIMELINE: &[(f64, Step)] = &[
    (0.05, Step::OutageBegins(Outage::Unavailable)),
    (0.11, Step::OutageEnds),
    (0.14, Step::EngineRestart),
    (0.30, Step::OutageBegins(Outage::Refused)),
    (0.38, Step::OutageEnds),
    (0.45, Step::OutageBegins(Outage::Slow)),
    (0.50, Step::OutageEnds),
    (0.60, Step::EngineRestart),
    (0.74, Step::OutageBegins(Outage::RetryAfter)),
    (0.82, Step::OutageEnds),
    (0.93, Step::ChurnEnds),
];

fn soak_duration() -> Duration {
    match std::env::var("DEPLOYTRACK_SOAK_DURATION") {
        Ok(text) if !text.trim().is_empty() => humantime::parse_duration(text.trim())
            .unwrap_or_else(|e| panic!("DEPLOYTRACK_SOAK_DURATION={text:?}: {e}")),
        _ => DEFAULT_DURATION,
    }
}

/// `docker -H host ...`, bounded in time.
fn dk(host: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args([DOCKER_TIMEOUT_SECS, "docker", "-H", host])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {} failed ({}): {}",
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn image_ref(text: &str) -> Option<&'static str> {
    [APP1, APP2].into_iter().find(|i| *i == text)
}

/// A container as the engine lists it.
struct Listed {
    id: String,
    state: String,
    image: Option<&'static str>,
}

/// Every container of the soak on the engine, by name.
fn engine_containers(host: &str, label: &str) -> Result<HashMap<String, Listed>, String> {
    let out = dk(
        host,
        &[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Image}}",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f.len() == 4).then(|| {
                (
                    f[1].to_string(),
                    Listed {
                        id: f[0].to_string(),
                        state: f[2].to_string(),
                        image: image_ref(f[3]),
                    },
                )
            })
        })
        .collect())
}

mod checks;
mod driver;
mod report;

use checks::*;
use driver::*;
use report::*;

engine_test!(
    #[ignore = "a soak of 30 minutes by default: run it with scripts/soak.sh"]
    soak
);
async fn soak(engine: Engine) {
    driver::run(engine).await;
}
