//! B3 to B6: the agent against the simulated engine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::report::{row, Section, Verdict};
use crate::util::*;
use crate::Ctx;
use deploytrack_test_support::receiver::Receiver;
use deploytrack_test_support::sim::{Plan, Sim};

const ENQUEUED: &str = "deploytrack_reports_enqueued_total";
const COMMITS: &str = "deploytrack_queue_commits_total";
const DEPTH: &str = "deploytrack_queue_depth";
const FAILURES: &str = "deploytrack_delivery_failures_total";
const PATIENCE: Duration = Duration::from_secs(180);

fn down_url() -> String {
    format!("http://127.0.0.1:{}/deployments", free_port())
}

/// An agent on the simulated engine, ready (reconciled and serving /metrics).
async fn agent_on(ctx: &Ctx, dir: &Path, sim: &Sim, url: String) -> Result<Agent, String> {
    let agent = spawn_agent(
        dir,
        AgentArgs {
            url: Some(url),
            state_dir: Some(dir.join("state")),
            docker_host: Some(sim.docker_host()),
            listen: Some(free_addr()),
            ..AgentArgs::default()
        },
    );
    agent.ready_within(Duration::from_secs(60)).await?;
    for _ in 0..100 {
        if agent.metrics(&ctx.http).await.is_ok() {
            return Ok(agent);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "no /metrics from the agent:\n{}",
        agent.stderr_tail()
    ))
}

/// Scrape every `every` until `done` holds; returns the scrape and when it was taken.
async fn poll_metrics(
    ctx: &Ctx,
    agent: &mut Agent,
    what: &str,
    every: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> Result<(Metrics, Instant), String> {
    let start = Instant::now();
    loop {
        let m = agent.metrics(&ctx.http).await?;
        let at = Instant::now();
        if done(&m) {
            return Ok((m, at));
        }
        if let Some(status) = agent.exited() {
            return Err(format!(
                "the agent exited ({status}) before {what}:\n{}",
                agent.stderr_tail()
            ));
        }
        if start.elapsed() > PATIENCE {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

fn count_rows(db: &Path, table: &str) -> Result<i64, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("open {}: {e}", db.display()))?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .map_err(|e| format!("count {table}: {e}"))
}

/// How reports reached the queue file during a run.
struct Progress {
    /// When `deploytrack_reports_enqueued_total` reached n (written, maybe not yet committed).
    applied_at: Option<Instant>,
    /// When n reports were committed (seen by another connection to the file).
    durable_at: Instant,
    /// The first scrape that showed a new commit.
    first_commit_at: Option<Instant>,
    /// Scrapes: (seconds since `t0`, enqueued counter, commits counter, committed rows).
    samples: Vec<(f64, f64, f64, i64)>,
}

/// Poll /metrics and the queue file every `every` until `n` reports are committed (pending
/// plus delivered rows, read through a separate read-only connection, which sees commits only).
async fn until_durable(
    ctx: &Ctx,
    agent: &mut Agent,
    db: &Path,
    n: usize,
    t0: Instant,
    every: Duration,
) -> Result<Progress, String> {
    let mut conn: Option<rusqlite::Connection> = None;
    let mut p = Progress {
        applied_at: None,
        durable_at: t0,
        first_commit_at: None,
        samples: Vec::new(),
    };
    let commits0 = agent.metrics(&ctx.http).await?.get(COMMITS);
    loop {
        let m = agent.metrics(&ctx.http).await?;
        if conn.is_none() {
            conn = rusqlite::Connection::open_with_flags(
                db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok();
        }
        let committed: i64 = conn
            .as_ref()
            .and_then(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM pending) + (SELECT count(*) FROM delivered)",
                    [],
                    |r| r.get(0),
                )
                .ok()
            })
            .unwrap_or(0);
        let at = Instant::now();
        p.samples.push((
            (at - t0).as_secs_f64(),
            m.get(ENQUEUED),
            m.get(COMMITS),
            committed,
        ));
        if p.applied_at.is_none() && m.get(ENQUEUED) >= n as f64 {
            p.applied_at = Some(at);
        }
        if p.first_commit_at.is_none() && m.get(COMMITS) > commits0 {
            p.first_commit_at = Some(at);
        }
        if committed >= n as i64 {
            p.durable_at = at;
            return Ok(p);
        }
        if let Some(status) = agent.exited() {
            return Err(format!(
                "the agent exited ({status}) with {committed} of {n} reports committed:\n{}",
                agent.stderr_tail()
            ));
        }
        if t0.elapsed() > PATIENCE {
            return Err(format!(
                "{committed} of {n} reports committed after {PATIENCE:?}"
            ));
        }
        tokio::time::sleep(every).await;
    }
}

/// The longest stretch between two scrapes that showed a new commit while reports were
/// being written but not all committed (seconds), from `Progress::samples`.
fn longest_commit_gap(p: &Progress) -> f64 {
    let mut longest = 0.0f64;
    let mut last: Option<(f64, f64)> = None;
    for &(t, _, commits, _) in &p.samples {
        match last {
            Some((since, c)) if commits == c => longest = longest.max(t - since),
            _ => last = Some((t, commits)),
        }
    }
    longest
}

// ------------------------------------------------------------------------------------ B3

struct Throughput {
    events: usize,
    /// First event to n reports committed.
    durable_secs: f64,
    /// First event to n reports written (counted by the agent, maybe not yet committed).
    applied_secs: Option<f64>,
    /// First event to the first commit seen.
    first_commit_secs: Option<f64>,
    longest_gap: f64,
    received_secs: Option<f64>,
    agent_cpu: f64,
    bench_cpu: f64,
    commits: f64,
    hwm_kb: u64,
    samples: Vec<(f64, f64, f64, i64)>,
    /// CPU seconds per agent thread name over the run.
    threads: Vec<(String, f64)>,
    /// (reports queued out of event order, event index of the saved cursor).
    order: Option<(usize, Option<usize>)>,
}

/// How far the queue's order (the `version` the queue gives each report as it writes it)
/// departs from the order the events were sent in, and which event the saved cursor names.
fn queue_order(db: &Path) -> Result<(usize, Option<usize>), String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT name FROM pending ORDER BY version")
        .map_err(|e| e.to_string())?;
    let indices: Vec<usize> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| e.to_string())?
        .filter_map(|name| name.ok()?.rsplit("sim-").next()?.parse().ok())
        .collect();
    let out_of_order = indices.windows(2).filter(|w| w[1] < w[0]).count();
    let cursor: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
            r.get(0)
        })
        .ok();
    let at = cursor.and_then(|c| deploytrack_test_support::sim::index_of(c.split(' ').nth(1)?));
    Ok((out_of_order, at))
}

async fn throughput(ctx: &Ctx, n: usize, deliver: bool) -> Result<Throughput, String> {
    let dir = scratch(&ctx.root, if deliver { "b3-deliver" } else { "b3-queue" });
    let sim = Sim::start(&dir, vec![], None);
    let receiver = if deliver {
        Some(Receiver::first_arrivals().await)
    } else {
        None
    };
    let url = receiver.as_ref().map_or_else(down_url, Receiver::url);
    let mut agent = agent_on(ctx, &dir, &sim, url).await?;
    let before = agent.metrics(&ctx.http).await?;
    let cpu0 = agent.cpu_seconds().unwrap_or(0.0);
    let threads0 = thread_cpu(agent.pid());
    let own0 = own_cpu_seconds();
    let t0 = Instant::now();
    sim.fire(Plan {
        first: 0,
        count: n,
        spread: None,
    })?;
    let db = dir.join("state/deploytrack.db");
    let p = until_durable(ctx, &mut agent, &db, n, t0, Duration::from_millis(20)).await?;
    let after = agent.metrics(&ctx.http).await?;
    let cpu1 = agent.cpu_seconds().unwrap_or(0.0);
    let threads: Vec<(String, f64)> = thread_cpu(agent.pid())
        .into_iter()
        .map(|(name, secs)| {
            let before = threads0.get(&name).copied().unwrap_or(0.0);
            (name, secs - before)
        })
        .filter(|(_, secs)| *secs > 0.0)
        .collect();
    let own1 = own_cpu_seconds();
    let first = sim.stats().first_event.ok_or("no event was sent")?;
    let received_secs = match &receiver {
        Some(r) => {
            r.wait_distinct(n, PATIENCE).await?;
            let (_, last) = r.span().ok_or("nothing received")?;
            Some((last - first).as_secs_f64())
        }
        None => None,
    };
    let order = if deliver { None } else { queue_order(&db).ok() };
    let since = |t: Instant| t.saturating_duration_since(first).as_secs_f64();
    let result = Throughput {
        events: sim.events_sent(),
        durable_secs: since(p.durable_at),
        applied_secs: p.applied_at.map(since),
        first_commit_secs: p.first_commit_at.map(since),
        longest_gap: longest_commit_gap(&p),
        received_secs,
        agent_cpu: cpu1 - cpu0,
        bench_cpu: own1 - own0,
        commits: after.get(COMMITS) - before.get(COMMITS),
        hwm_kb: agent.status_kb("VmHWM").unwrap_or(0),
        samples: p.samples,
        threads,
        order,
    };
    agent.stop_within(Duration::from_secs(30)).await;
    Ok(result)
}

pub async fn b3(ctx: Ctx) -> Result<Section, String> {
    let n = if ctx.quick { 10_000 } else { 50_000 };
    let mut s = Section::new("B3", "Pipeline throughput (simulated engine)");
    s.method = format!(
        "The simulated engine (a hyper server on a unix socket in the bench process, `--docker-host unix://...`) \
         sends {n} container `start` events on /events as fast as the agent reads them and answers every \
         container and image inspect at once. Measured from the first event sent until {n} reports are \
         committed to the SQLite queue (a second, read-only connection to the queue file counts the rows \
         every 20 ms; it sees committed transactions only), while `/metrics` (`--listen`) is scraped at the \
         same pace. *Queue only*: the endpoint is down (a port that \
         refuses), so delivery stays on hold and takes no CPU. *With delivery*: a live loopback receiver, so \
         delivery competes for the same two cores; the second figure is until the receiver has all {n}. \
         The simulated engine and the receiver run in the bench process and share the machine's cores with the agent."
    );
    say(format!("B3: {n} events, endpoint down"));
    let q = throughput(&ctx, n, false).await?;
    say(format!("B3: {n} events, live receiver"));
    let d = throughput(&ctx, n, true).await?;
    let rate = |secs: f64| n as f64 / secs;
    s.rows.push(row(
        "events into the durable queue, endpoint down",
        format!("{:.0} events/s", rate(q.durable_secs)),
        "≥ 10,000 events/s",
        Verdict::of(rate(q.durable_secs) >= 10_000.0),
    ));
    if let Some(applied) = q.applied_secs {
        s.rows.push(row(
            "events resolved and written (before the final commit), endpoint down",
            format!("{:.0} events/s", rate(applied)),
            "",
            Verdict::Info,
        ));
    }
    s.rows.push(row(
        "events through queue and delivery (live receiver)",
        format!(
            "{:.0} events/s committed, {:.0} reports/s received",
            rate(d.durable_secs),
            rate(d.received_secs.unwrap_or(f64::NAN))
        ),
        "",
        Verdict::Info,
    ));
    s.details.push("| Run | Events | All committed after | Rate | All written (counter) after | First commit seen after | Longest stretch without a commit | Queue commits | Agent CPU | per event | Bench process CPU | Agent peak RSS |".into());
    s.details
        .push("|---|---|---|---|---|---|---|---|---|---|---|---|".into());
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2} s"));
    for (name, t) in [("queue only", &q), ("with delivery", &d)] {
        s.details.push(format!(
            "| {name} | {} | {:.2} s{} | {:.0}/s | {} | {} | {:.2} s | {:.0} | {:.2} s | {:.0} µs | {:.2} s | {} |",
            t.events,
            t.durable_secs,
            t.received_secs
                .map(|r| format!(" (all received after {r:.2} s)"))
                .unwrap_or_default(),
            rate(t.durable_secs),
            opt(t.applied_secs),
            opt(t.first_commit_secs),
            t.longest_gap,
            t.commits,
            t.agent_cpu,
            1e6 * t.agent_cpu / n as f64,
            t.bench_cpu,
            mib(t.hwm_kb as f64 * 1024.0),
        ));
    }
    s.details.push(String::new());
    for (name, t) in [("queue only", &q), ("with delivery", &d)] {
        s.details.push(format!(
            "Agent CPU by thread, {name}: {}.",
            t.threads
                .iter()
                .map(|(thread, secs)| format!("`{thread}` {secs:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s.details.push(String::new());
    }
    if let Some((out_of_order, cursor)) = q.order {
        s.details.push(format!(
            "Queue order (queue only run): {out_of_order} times a report was queued after one of a later \
             event (the queue's write order compared with the event order); the saved event cursor \
             names event {} of 0 to {}.",
            cursor.map_or("?".to_string(), |c| c.to_string()),
            n - 1
        ));
        s.details.push(String::new());
    }
    s.details.push(
        "*All written (counter)*: when `deploytrack_reports_enqueued_total` reached N; the agent counts a \
         report when it is written into the open transaction, before the commit. *Longest stretch \
         without a commit*: between scrapes (every 20 ms) while the run lasted."
            .into(),
    );
    let timeline = |t: &Throughput| {
        t.samples
            .iter()
            .map(|(at, enq, commits, rows)| json!([at, enq, commits, rows]))
            .collect::<Vec<_>>()
    };
    s.raw = json!({
        "events": n,
        "queue_only": { "out_of_order": q.order.map(|o| o.0), "cursor_event": q.order.and_then(|o| o.1), "durable_s": q.durable_secs, "applied_s": q.applied_secs, "first_commit_s": q.first_commit_secs, "agent_cpu_s": q.agent_cpu, "bench_cpu_s": q.bench_cpu, "commits": q.commits, "vmhwm_kb": q.hwm_kb, "timeline_s_enqueued_commits_rows": timeline(&q) },
        "with_delivery": { "durable_s": d.durable_secs, "received_s": d.received_secs, "applied_s": d.applied_secs, "first_commit_s": d.first_commit_secs, "agent_cpu_s": d.agent_cpu, "bench_cpu_s": d.bench_cpu, "commits": d.commits, "vmhwm_kb": d.hwm_kb, "timeline_s_enqueued_commits_rows": timeline(&d) },
    });
    Ok(s)
}

// ------------------------------------------------------------------------------------ B4

struct Drain {
    n: usize,
    /// Agent start to every report received.
    total: f64,
    /// Agent start to every report received except those still in their own retry backoff.
    due_total: f64,
    /// Reports that were tried (and failed) during the outage, so wait for their retry time.
    backed_off: usize,
    first: f64,
    span: f64,
    reconciled: Option<f64>,
    inspects: usize,
    requests: usize,
    agent_cpu: f64,
    build: f64,
}

async fn drain(ctx: &Ctx, n: usize) -> Result<Drain, String> {
    let dir = scratch(&ctx.root, &format!("b4-{n}"));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/deployments");
    let db = dir.join("state/deploytrack.db");
    // Build the backlog: the endpoint is down while n containers start.
    let build_start = Instant::now();
    {
        let p1 = scratch(&dir, "engine1");
        let sim = Sim::start(&p1, vec![], None);
        let mut agent = agent_on(ctx, &dir, &sim, url.clone()).await?;
        sim.fire(Plan {
            first: 0,
            count: n,
            spread: None,
        })?;
        until_durable(
            ctx,
            &mut agent,
            &db,
            n,
            Instant::now(),
            Duration::from_millis(50),
        )
        .await?;
        let status = agent.stop_within(Duration::from_secs(30)).await;
        if !status.is_some_and(|s| s.success()) {
            return Err(format!(
                "the agent did not stop cleanly ({status:?}):\n{}",
                agent.stderr_tail()
            ));
        }
    }
    let build = build_start.elapsed().as_secs_f64();
    let queued = count_rows(&db, "pending")?;
    if queued as usize != n {
        return Err(format!("{queued} reports on disk after the stop, not {n}"));
    }
    // Reports the agent tried while the endpoint was down keep their own retry time.
    let backed_off: std::collections::HashSet<String> = {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| e.to_string())?;
        let mut stmt = conn
            .prepare("SELECT name FROM pending WHERE attempts > 0")
            .map_err(|e| e.to_string())?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        names
    };
    // The endpoint is back; the agent restarts; the containers still run.
    let receiver =
        Receiver::first_arrivals_on(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    let p2 = scratch(&dir, "engine2");
    let sim = Sim::start(&p2, (0..n).collect(), None);
    let mut agent = spawn_agent(
        &dir,
        AgentArgs {
            url: Some(url),
            state_dir: Some(dir.join("state")),
            docker_host: Some(sim.docker_host()),
            ..AgentArgs::default()
        },
    );
    let t0 = agent.spawned();
    if let Err(e) = receiver.wait_distinct(n, PATIENCE).await {
        return Err(format!("{e}:\n{}", agent.stderr_tail()));
    }
    let (first, last) = receiver.span().ok_or("nothing received")?;
    let last_due = receiver.last_except(&backed_off).unwrap_or(last);
    let result = Drain {
        n,
        total: (last - t0).as_secs_f64(),
        due_total: (last_due - t0).as_secs_f64(),
        backed_off: backed_off.len(),
        first: (first - t0).as_secs_f64(),
        span: (last_due - first).as_secs_f64(),
        reconciled: sim.stats().last_inspect.map(|t| (t - t0).as_secs_f64()),
        inspects: sim.inspects(),
        requests: receiver.requests(),
        agent_cpu: agent.cpu_seconds().unwrap_or(0.0),
        build,
    };
    agent.stop_within(Duration::from_secs(30)).await;
    Ok(result)
}

pub async fn b4(ctx: Ctx) -> Result<Section, String> {
    let sizes = [1_000, 10_000];
    let mut s = Section::new("B4", "Backlog drain");
    s.method = "The backlog is built with the simulated engine: the agent runs with its endpoint down (a loopback \
        port that refuses) while N containers start, and is stopped with SIGTERM once all N reports are queued \
        (checked in the SQLite file). Then a fast receiver (hyper, answers 200 at once) listens on that port and \
        the agent is started again on the same state dir, against an engine that still runs the N containers, \
        so the agent reconciles them while it drains (as after a real restart). Measured from the agent \
        process start until the receiver has every report that is due (see *Tried during the outage* \
        below); the drain rate between the first and the last of them is also given. Default settings \
        (`--concurrency 4`)."
        .into();
    let mut runs = Vec::new();
    for n in sizes {
        say(format!("B4: backlog of {n}"));
        runs.push(drain(&ctx, n).await?);
    }
    for d in &runs {
        let due = d.n - d.backed_off;
        let rate = due as f64 / d.due_total;
        s.rows.push(row(
            format!(
                "{} queued reports, agent start to all due reports received",
                d.n
            ),
            format!(
                "{:.2} s = {:.0} reports/s (drain alone {:.0}/s)",
                d.due_total,
                rate,
                due as f64 / d.span
            ),
            "≥ 5,000 reports/s",
            Verdict::of(rate >= 5_000.0),
        ));
    }
    s.details.push("| Backlog | Start to all due received | Start to first | First to last due | Tried during the outage (own backoff) | Start to all N received | Reconciliation done at (container inspects) | Requests | Agent CPU | Backlog built in |".into());
    s.details
        .push("|---|---|---|---|---|---|---|---|---|---|".into());
    for d in &runs {
        let due = d.n - d.backed_off;
        s.details.push(format!(
            "| {} | {:.2} s ({:.0}/s) | {:.2} s | {:.2} s ({:.0}/s) | {} | {:.2} s | {} ({}) | {} | {:.2} s | {:.1} s |",
            d.n,
            d.due_total,
            due as f64 / d.due_total,
            d.first,
            d.span,
            due as f64 / d.span,
            d.backed_off,
            d.total,
            d.reconciled.map_or("-".into(), |r| format!("{r:.2} s")),
            d.inspects,
            d.requests,
            d.agent_cpu,
            d.build
        ));
    }
    s.details.push(String::new());
    s.details.push(
        "*Tried during the outage*: while the endpoint was down the agent probed it with a few \
         reports, one at a time; each failed probe gave that report a retry time. The agent makes \
         every report due again when it starts, so these are counted in the rate too; *Start to all \
         N received* shows when the last of them arrived."
            .into(),
    );
    if let [small, large] = &runs[..] {
        s.details.push(String::new());
        s.details.push(format!(
            "Growth: {}× the backlog took {:.1}× the time.",
            large.n / small.n,
            large.due_total / small.due_total
        ));
    }
    s.raw = serde_json::Value::Array(
        runs.iter()
            .map(|d| json!({ "n": d.n, "start_to_all_due_s": d.due_total, "backed_off": d.backed_off, "start_to_all_s": d.total, "start_to_first_s": d.first, "first_to_last_s": d.span, "reconciled_s": d.reconciled, "requests": d.requests, "agent_cpu_s": d.agent_cpu }))
            .collect(),
    );
    Ok(s)
}

// ------------------------------------------------------------------------------------ B5

struct Burst {
    commits: f64,
    failures: f64,
    window: f64,
    queued_in: f64,
    on_disk: i64,
    syncs: Option<(u64, u64)>,
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// fsync and fdatasync calls in an `strace -c` summary.
fn parse_strace(text: &str) -> (u64, u64) {
    let mut fsync = 0;
    let mut fdatasync = 0;
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = t.last() else { continue };
        let calls = t.get(3).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
        match *name {
            "fsync" => fsync += calls,
            "fdatasync" => fdatasync += calls,
            _ => {}
        }
    }
    (fsync, fdatasync)
}

async fn burst(ctx: &Ctx, n: usize, traced: bool) -> Result<Burst, String> {
    let dir = scratch(&ctx.root, if traced { "b5-strace" } else { "b5" });
    let sim = Sim::start(&dir, vec![], None);
    let mut agent = agent_on(ctx, &dir, &sim, down_url()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut strace = None;
    let trace_file = dir.join("strace.txt");
    if traced {
        let err = dir.join("strace.err");
        let child = Command::new("strace")
            .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace_file)
            .args(["-p", &agent.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("strace: {e}"))?;
        wait_for(
            "strace to attach",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                std::fs::read_to_string(&err)
                    .ok()
                    .filter(|t| t.contains("attached"))
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        strace = Some(child);
    }
    let before = agent.metrics(&ctx.http).await?;
    let t0 = Instant::now();
    sim.fire(Plan {
        first: 0,
        count: n,
        spread: Some(Duration::from_secs(1)),
    })?;
    // Only the queue file is watched during the burst: a /metrics scrape is itself a
    // (read-only) transaction on the queue thread.
    let db = dir.join("state/deploytrack.db");
    let queued = wait_for(
        "the burst to be committed",
        PATIENCE,
        Duration::from_millis(50),
        || (count_rows(&db, "pending").unwrap_or(0) >= n as i64).then(Instant::now),
    )
    .await?;
    // Let the last group commit and any delivery attempt settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = agent.metrics(&ctx.http).await?;
    let window = t0.elapsed().as_secs_f64();
    let syncs = match strace.take() {
        Some(child) => {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let mut child = child;
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            Some(parse_strace(
                &std::fs::read_to_string(&trace_file).unwrap_or_default(),
            ))
        }
        None => None,
    };
    agent.stop_within(Duration::from_secs(30)).await;
    Ok(Burst {
        commits: after.get(COMMITS) - before.get(COMMITS),
        failures: after.get(FAILURES) - before.get(FAILURES),
        window,
        queued_in: (queued - t0).as_secs_f64(),
        on_disk: count_rows(&dir.join("state/deploytrack.db"), "pending")?,
        syncs,
    })
}

pub async fn b5(ctx: Ctx) -> Result<Section, String> {
    let n = 1_000;
    let mut s = Section::new("B5", "Burst durability cost");
    s.method = format!(
        "The simulated engine sends {n} `start` events spread evenly over one second while the endpoint is \
         down. Counted from just before the burst until 300 ms after the last report is queued: \
         `deploytrack_queue_commits_total`, and in a second, identical run the agent's `fsync` and \
         `fdatasync` calls under `strace -f -c` (attached to the running agent just before the burst; \
         tracing slows syscalls, so that run batches a little differently). During the burst only the \
         queue file is watched (a /metrics scrape is itself a transaction on the queue thread); the \
         scrape just before the burst may add one empty commit to the count. *Nothing lost*: after a \
         SIGTERM, the `pending` table of the queue file holds every report."
    );
    say("B5: burst of 1000 starts in 1 s, endpoint down");
    let plain = burst(&ctx, n, false).await?;
    let traced = if strace_available() {
        say("B5: the same burst under strace");
        Some(burst(&ctx, n, true).await?)
    } else {
        s.details.push("`strace` is not installed: syncs were not counted at the system-call level (`apt-get install -y strace`).".into());
        None
    };
    let syncs = traced.as_ref().and_then(|t| t.syncs).map(|(a, b)| a + b);
    s.rows.push(row(
        format!("syncs for {n} starts in 1 s"),
        match syncs {
            Some(k) => format!(
                "{:.0} commits; {k} fsync+fdatasync calls (traced run)",
                plain.commits
            ),
            None => format!("{:.0} commits", plain.commits),
        },
        "≤ 20 syncs",
        Verdict::of(syncs.map_or(plain.commits, |k| k as f64) <= 20.0),
    ));
    let lost = n as i64
        - plain
            .on_disk
            .min(traced.as_ref().map_or(plain.on_disk, |t| t.on_disk));
    s.rows.push(row(
        "reports in the queue after the burst",
        format!(
            "{} of {n}{}",
            plain.on_disk,
            traced
                .as_ref()
                .map(|t| format!(" ({} in the traced run)", t.on_disk))
                .unwrap_or_default()
        ),
        "all 1,000",
        Verdict::of(lost == 0),
    ));
    s.details.push("| Run | Queued within | Window counted | Queue commits | fsync | fdatasync | Failed delivery attempts in the window | Pending on disk |".into());
    s.details.push("|---|---|---|---|---|---|---|---|".into());
    for (name, b) in [("plain", Some(&plain)), ("under strace", traced.as_ref())] {
        let Some(b) = b else { continue };
        s.details.push(format!(
            "| {name} | {:.2} s | {:.2} s | {:.0} | {} | {} | {:.0} | {} |",
            b.queued_in,
            b.window,
            b.commits,
            b.syncs.map_or("-".into(), |(f, _)| f.to_string()),
            b.syncs.map_or("-".into(), |(_, d)| d.to_string()),
            b.failures,
            b.on_disk
        ));
    }
    s.raw = json!({
        "events": n,
        "plain": { "commits": plain.commits, "failures": plain.failures, "window_s": plain.window, "pending_on_disk": plain.on_disk },
        "traced": traced.as_ref().map(|t| json!({ "commits": t.commits, "fsync": t.syncs.map(|s| s.0), "fdatasync": t.syncs.map(|s| s.1), "pending_on_disk": t.on_disk })),
    });
    Ok(s)
}

// ------------------------------------------------------------------------------------ B6

struct Footprint {
    n: usize,
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    hwm_kb: u64,
    idle_cpu: f64,
    idle: f64,
    startup_cpu: f64,
    switches: u64,
    threads: usize,
}

async fn footprint(ctx: &Ctx, n: usize, idle: Duration) -> Result<Footprint, String> {
    let dir = scratch(&ctx.root, &format!("b6-{n}"));
    let sim = Sim::start(&dir, (0..n).collect(), None);
    let receiver = Receiver::first_arrivals().await;
    let mut agent = agent_on(ctx, &dir, &sim, receiver.url()).await?;
    receiver.wait_distinct(n, PATIENCE).await?;
    poll_metrics(
        ctx,
        &mut agent,
        "an empty queue",
        Duration::from_millis(100),
        |m| m.get(DEPTH) == 0.0,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let startup_cpu = agent.cpu_seconds().unwrap_or(0.0);
    let (switches0, _) = context_switches(agent.pid()).unwrap_or((0, 0));
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_cpu = agent.cpu_seconds().unwrap_or(0.0) - startup_cpu;
    let (switches1, threads) = context_switches(agent.pid()).unwrap_or((0, 0));
    let idle_secs = t0.elapsed().as_secs_f64();
    let result = Footprint {
        n,
        rss_kb: agent.status_kb("VmRSS").unwrap_or(0),
        anon_kb: agent.status_kb("RssAnon").unwrap_or(0),
        file_kb: agent.status_kb("RssFile").unwrap_or(0),
        hwm_kb: agent.status_kb("VmHWM").unwrap_or(0),
        idle_cpu,
        idle: idle_secs,
        startup_cpu,
        switches: switches1.saturating_sub(switches0),
        threads,
    };
    agent.stop_within(Duration::from_secs(30)).await;
    Ok(result)
}

pub async fn b6(ctx: Ctx) -> Result<Section, String> {
    let idle = Duration::from_secs(if ctx.quick { 15 } else { 60 });
    let mut s = Section::new("B6", "Footprint");
    s.method = format!(
        "N running containers on the simulated engine (the agent's work per container is the same as with \
         the real engine: one inspect, one report, one row in the view), reported to a live receiver. Once \
         the queue is empty, the agent idles for {} s: RSS is VmRSS at the end and VmHWM (peak, including \
         start-up and reconciliation) from /proc/PID/status, idle CPU is utime+stime from /proc/PID/stat \
         across the idle window. Both N run at the same time, each with its own engine and receiver. \
         Binary: the stripped release build (`[profile.release]` strip = true).",
        idle.as_secs()
    );
    say(format!(
        "B6: footprint at 100 and 500 containers, {} s idle",
        idle.as_secs()
    ));
    let (a, b) = tokio::join!(footprint(&ctx, 100, idle), footprint(&ctx, 500, idle));
    let runs = [a?, b?];
    let bytes = std::fs::metadata(agent_bin()).map(|m| m.len()).unwrap_or(0);
    for f in &runs {
        let rss = f.rss_kb.max(f.hwm_kb) as f64 * 1024.0;
        s.rows.push(row(
            format!("RSS with {} containers (now / peak)", f.n),
            format!(
                "{} / {}",
                mib(f.rss_kb as f64 * 1024.0),
                mib(f.hwm_kb as f64 * 1024.0)
            ),
            "≤ 10 MB",
            Verdict::of(rss <= 10.0 * 1024.0 * 1024.0),
        ));
    }
    for f in &runs {
        let per_min = f.idle_cpu * 60.0 / f.idle;
        s.rows.push(row(
            format!("idle CPU with {} containers", f.n),
            if f.idle_cpu == 0.0 {
                format!(
                    "< {:.3} s/min (no clock tick in {:.0} s)",
                    0.01 * 60.0 / f.idle,
                    f.idle
                )
            } else {
                format!("{per_min:.3} s/min")
            },
            "≤ 0.1 s/min",
            Verdict::of(per_min <= 0.1),
        ));
    }
    s.rows.push(row(
        "stripped release binary",
        format!("{} ({bytes} bytes)", mib(bytes as f64)),
        "≤ 10 MB",
        Verdict::of(bytes as f64 <= 10.0 * 1024.0 * 1024.0),
    ));
    s.details.push("| Containers | VmRSS after idle (anonymous + file) | VmHWM | CPU until idle (start-up, reconciliation, delivery) | CPU while idle | Wake-ups while idle | Threads |".into());
    s.details.push("|---|---|---|---|---|---|---|".into());
    for f in &runs {
        s.details.push(format!(
            "| {} | {} ({} + {}) | {} | {:.2} s | {:.2} s in {:.0} s | {:.0}/min | {} |",
            f.n,
            mib(f.rss_kb as f64 * 1024.0),
            mib(f.anon_kb as f64 * 1024.0),
            mib(f.file_kb as f64 * 1024.0),
            mib(f.hwm_kb as f64 * 1024.0),
            f.startup_cpu,
            f.idle_cpu,
            f.idle,
            f.switches as f64 * 60.0 / f.idle,
            f.threads,
        ));
    }
    s.details.push(String::new());
    s.details.push(
        "*File* is the part of the binary (and shared libraries) mapped in memory; *anonymous* is \
         heap, stacks and SQLite's page cache. CPU comes from /proc in clock ticks (10 ms). \
         *Wake-ups*: context switches summed over the agent's threads."
            .into(),
    );
    let [small, large] = &runs;
    s.details.push(String::new());
    s.details.push(format!(
        "Growth: {:.1} KiB of RSS per extra container ({} to {}).",
        (large.rss_kb as f64 - small.rss_kb as f64) / (large.n - small.n) as f64,
        small.n,
        large.n
    ));
    s.raw = json!({
        "binary_bytes": bytes,
        "runs": runs.iter().map(|f| json!({ "n": f.n, "vmrss_kb": f.rss_kb, "rss_anon_kb": f.anon_kb, "rss_file_kb": f.file_kb, "context_switches": f.switches, "threads": f.threads, "vmhwm_kb": f.hwm_kb, "idle_cpu_s": f.idle_cpu, "idle_s": f.idle, "cpu_before_idle_s": f.startup_cpu })).collect::<Vec<_>>(),
    });
    Ok(s)
}
