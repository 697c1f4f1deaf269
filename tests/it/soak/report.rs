//! The report: the machine, the revision, and the Markdown written to SOAK.md.

use super::*;

pub(super) fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    format!(
        "{}, {cores} CPUs ({cpu}), {memory} RAM",
        first_line("uname", &["-srm"])
    )
}

/// HEAD when the run starts (the binary was built just before it), and the binary's build time.
pub(super) fn revision() -> String {
    let revision = deploytrack_test_support::git::revision();
    let head = revision.head.unwrap_or_default();
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_deploytrack"))
        .and_then(|m| m.modified())
        .map_or("?".into(), |t| {
            humantime::format_rfc3339_seconds(t).to_string()
        });
    if revision.dirty {
        format!("{head} with uncommitted changes under src/ or to Cargo.* (the binary tested, built {built}, is the working tree's)")
    } else {
        format!("{head} (the binary tested was built {built})")
    }
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn clock(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub(super) fn with_footprint(r: &LaneResult, f: impl Fn(&Footprint) -> String) -> String {
    r.footprint.as_ref().map_or("-".into(), f)
}

pub(super) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(super) struct Run {
    pub(super) date: String,
    pub(super) machine: String,
    pub(super) load: String,
    pub(super) revision: String,
    pub(super) engine_version: String,
    pub(super) duration: Duration,
    pub(super) soaked: Duration,
    pub(super) converged_in: Duration,
    pub(super) churn: ChurnStats,
    pub(super) names: usize,
    pub(super) running_at_end: usize,
    pub(super) outages: Vec<(Outage, f64, f64)>,
    pub(super) restarts: Vec<Restart>,
    pub(super) results: Vec<LaneResult>,
    pub(super) failures: Vec<String>,
}

pub(super) const ABOUT: &str = r#"# Soak

`scripts/soak.sh [--duration 30m]` runs the agent for a long while (30 minutes by default)
under container churn, endpoint outages and engine restarts, then checks its final state,
its memory, its file descriptors and its log. It is `tests/it/soak/` (driver, checks, report), an ignored test that
`cargo test` does not run. Each run rewrites this file with its own figures (below).

## What a run does

- **A private engine**: a dockerd of its own in its own network namespace (as the
  engine-restart tests use), so that restarting it disturbs nothing else. It pulls `app:1`
  and `app:2` from the loopback registry.
- **Two agents** watch the same containers: one with `--report-stops`, one with the
  defaults. Each reports to its own receiver through a TCP gate that can close its port.
  Both run with `--retry-initial 200ms --retry-max 10s --request-timeout 3s`.
- **Churn**, one docker command at a time (about one a second), aiming at 10 to 30
  containers running (fewer for a while after an engine restart, which kills most): `docker run` under a fresh or a free name with `app:1` or `app:2`
  (one in five with `--restart unless-stopped`), `docker stop` or `docker kill`,
  `docker start`, `docker restart`, `docker rm -f`, and recreation: removed and run again
  under the same name with the other image, so that the digest under the name changes. A
  third of the removed names are retired for new ones, so the set of names grows. A
  container is left alone for 2 s after a command touched it.
- **Endpoint outages**, one of each kind, at 5-11 %, 30-38 %, 45-50 % and 74-82 % of the
  duration: the endpoint answers 503; the port is closed (connections refused, open
  connections cut); answers come after 6 s, past the request timeout; 503 with
  `Retry-After: 3`.
- **Engine restarts**, at 14 % and 60 %: the churn pauses, the engine gets SIGTERM (its
  containers die with it; those with a restart policy come back when it starts) and stays
  down for a sixtieth of the duration (5 to 30 s).
- The churn stops at 93 %; the endpoints are up from 82 % on.

## What is checked

1. **The endpoint's final view equals the engine's truth.** The final view of an endpoint
   is, per `image.name`, the last report it answered 2xx. The truth, per container name
   that a container ran under during the soak, read from the engine once the churn is
   over: if a container runs under that name, that container (its id, and the digest of
   its image); else the last container that ran under the name, stopped (it was stopped,
   killed, removed, or died with the engine). With `--report-stops` the endpoint must hold
   exactly that: the digest, the container id, and `running` or `stopped`. With the
   defaults, which send no stops, it must hold the digest of that container, without a
   `container` object. Names no container ran under must not be reported. Both agents'
   queues must be empty, with no dead letters, within 3 minutes of the churn's end.
2. **Resident memory** (VmRSS in `/proc/<pid>/status`, sampled every 5 s): the peak over the
   last 30 % of the run may exceed the warm-up level (the peak over the first 25 %, from
   10 s on, which holds an outage and an engine restart) by at most 25 % or 2 MiB,
   whichever is more.
3. **File descriptors** (`/proc/<pid>/fd`), the same way: at most 25 % or 5 more.
4. **The log**: no minute with more than 60 WARN or ERROR lines, at most 30 WARN lines per
   outage or engine restart over the run, and no ERROR line (nothing the soak does is an
   error: the token is right and the queue file sound).

Also: each agent counts at least one engine reconnect per engine restart, and exits 0 on
SIGTERM at the end. Nothing is asserted about speed.
"#;

impl Run {
    pub(super) fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "[soak] {} ({} requested), {} containers started ({} starts), {} recreated with the other image, {} names, {} running at the end, {} churn errors",
            humantime::format_duration(Duration::from_secs(self.soaked.as_secs())),
            humantime::format_duration(self.duration),
            self.churn.created,
            self.churn.starts,
            self.churn.recreates,
            self.names,
            self.running_at_end,
            self.churn.failures
        );
        for r in &self.results {
            let (storm, _) = r.log.max_per_minute();
            let _ = write!(
                s,
                "[soak] {}: {} reports received ({} accepted, {} answered 503), {} engine reconnects, WARN {} ERROR {}, max {storm}/min",
                r.title, r.requests, r.accepted, r.unavailable, r.reconnects, r.log.warn, r.log.error
            );
            if let Some(f) = &r.footprint {
                let _ = write!(
                    s,
                    "; RSS warm-up {} last part {} peak {} final {}; fds warm-up {} last part {} peak {} final {}",
                    mib(f.warm.rss_kib),
                    mib(f.last_part.rss_kib),
                    mib(f.peak.rss_kib),
                    mib(f.last.rss_kib),
                    f.warm.fds,
                    f.last_part.fds,
                    f.peak.fds,
                    f.last.fds
                );
            }
            s.push('\n');
        }
        if self.failures.is_empty() {
            s.push_str("[soak] PASS");
        } else {
            let _ = write!(s, "[soak] FAIL:\n  {}", self.failures.join("\n  "));
        }
        s
    }

    pub(super) fn markdown(&self) -> String {
        let mut m = String::from(ABOUT);
        let short = self.duration < DEFAULT_DURATION;
        let _ = writeln!(m, "\n## The last run\n");
        if short {
            let _ = writeln!(
                m,
                "A **shorter run** than the default: {} instead of {}.\n",
                humantime::format_duration(self.duration),
                humantime::format_duration(DEFAULT_DURATION)
            );
        }
        let verdict = if self.failures.is_empty() {
            "**PASS**".to_string()
        } else {
            format!("**FAIL** ({} findings, below)", self.failures.len())
        };
        let churn = &self.churn;
        let rows: Vec<(&str, String)> = vec![
            ("result", verdict),
            ("date", self.date.clone()),
            ("machine", self.machine.clone()),
            ("load average (1, 5, 15 min)", self.load.clone()),
            ("engine", format!("Docker Engine {}, private instance", self.engine_version)),
            ("revision", self.revision.clone()),
            (
                "duration",
                format!(
                    "{} requested, {} soaked, then {:.0} s until both endpoints held the truth",
                    humantime::format_duration(self.duration),
                    humantime::format_duration(Duration::from_secs(self.soaked.as_secs())),
                    self.converged_in.as_secs_f64()
                ),
            ),
            (
                "containers",
                format!(
                    "{} started with `docker run` ({} starts in all), {} recreated with the other image, {} stops, {} restarts, {} removals; {} names; {}-{} running during the churn, {} at the end",
                    churn.created,
                    churn.starts,
                    churn.recreates,
                    churn.stops,
                    churn.restarts,
                    churn.removes,
                    self.names,
                    churn.running_min.unwrap_or(0),
                    churn.running_max,
                    self.running_at_end
                ),
            ),
            (
                "churn commands that failed",
                match &churn.last_failure {
                    None => "0".into(),
                    Some(e) => format!("{} (last: {e})", churn.failures),
                },
            ),
            (
                "outages",
                self.outages
                    .iter()
                    .map(|(kind, from, to)| {
                        format!("{} from {} to {}", kind.describe(), clock(*from), clock(*to))
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            (
                "engine restarts",
                self.restarts
                    .iter()
                    .map(|r| {
                        format!(
                            "at {}, down {:.1} s (its shutdown took {:.1} s)",
                            clock(r.at),
                            r.down.as_secs_f64(),
                            r.stop_took.as_secs_f64()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ];
        let _ = writeln!(m, "| | |\n|---|---|");
        for (k, v) in rows {
            let _ = writeln!(m, "| {k} | {} |", v.replace('|', "\\|"));
        }
        let _ = writeln!(m, "\nPer agent:\n");
        let titles: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                if r.stops {
                    format!("`--report-stops` ({})", r.title)
                } else {
                    format!("defaults ({})", r.title)
                }
            })
            .collect();
        let _ = writeln!(m, "| | {} |", titles.join(" | "));
        let _ = writeln!(m, "|---|{}", "---|".repeat(self.results.len()));
        let row = |m: &mut String, what: &str, f: &dyn Fn(&LaneResult) -> String| {
            let cells: Vec<String> = self.results.iter().map(f).collect();
            let _ = writeln!(m, "| {what} | {} |", cells.join(" | "));
        };
        row(&mut m, "reports received (requests)", &|r| {
            r.requests.to_string()
        });
        row(&mut m, "answered 2xx / 503", &|r| {
            format!("{} / {}", r.accepted, r.unavailable)
        });
        row(&mut m, "names reported", &|r| r.names.to_string());
        row(&mut m, "agent: enqueued / unchanged / delivered", &|r| {
            format!("{} / {} / {}", r.enqueued, r.unchanged, r.delivered)
        });
        row(&mut m, "agent: transient failures", &|r| {
            r.transient.to_string()
        });
        row(&mut m, "agent: engine reconnects", &|r| {
            r.reconnects.to_string()
        });
        row(&mut m, "agent: events dropped, dead letters", &|r| {
            format!("{}, {}", r.events_dropped, r.dead_letters)
        });
        row(
            &mut m,
            "RSS at start / warm-up level / last part peak / peak / final",
            &|r| {
                with_footprint(r, |f| {
                    format!(
                        "{} / {} / {} / {} / {}",
                        mib(f.first.rss_kib),
                        mib(f.warm.rss_kib),
                        mib(f.last_part.rss_kib),
                        mib(f.peak.rss_kib),
                        mib(f.last.rss_kib)
                    )
                })
            },
        );
        row(
            &mut m,
            "fds at start / warm-up level / last part peak / peak / final",
            &|r| {
                with_footprint(r, |f| {
                    format!(
                        "{} / {} / {} / {} / {}",
                        f.first.fds, f.warm.fds, f.last_part.fds, f.peak.fds, f.last.fds
                    )
                })
            },
        );
        row(&mut m, "RSS (MiB) at each tenth of the run", &|r| {
            with_footprint(r, |f| {
                f.series
                    .iter()
                    .map(|s| format!("{:.1}", s.rss_kib as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        });
        row(&mut m, "fds at each tenth of the run", &|r| {
            with_footprint(r, |f| {
                f.series
                    .iter()
                    .map(|s| s.fds.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        });
        row(&mut m, "log lines; WARN; ERROR", &|r| {
            format!("{}; {}; {}", r.log.lines, r.log.warn, r.log.error)
        });
        row(&mut m, "WARN/ERROR lines per minute, max", &|r| {
            let (n, minute) = r.log.max_per_minute();
            if n == 0 {
                "0".into()
            } else {
                format!("{n} ({minute})")
            }
        });
        row(&mut m, "WARN/ERROR messages", &|r| {
            r.log
                .messages
                .iter()
                .map(|(msg, n)| format!("{n} × {msg}"))
                .collect::<Vec<_>>()
                .join("<br>")
                .replace('|', "\\|")
        });
        row(&mut m, "exit on SIGTERM", &|r| r.exit.clone());
        if !self.failures.is_empty() {
            let _ = writeln!(m, "\nFindings:\n");
            for f in &self.failures {
                let _ = writeln!(m, "- {}", f.replace('\n', "\n  "));
            }
        }
        m
    }
}
