//! deploytrack's benchmark suite: measurements of the release binary, not tests (nothing here
//! asserts on timing). Run it with `scripts/bench.sh` (see BENCHMARKS.md); by hand:
//!
//!     cargo bench --bench suite -- [--quick] [--only B1,B3] [--out FILE] [--keep]
//!
//! B1 and B2 drive the real Docker Engine (scripts/test-env.sh prepares it); B3 to B6 use a
//! simulated engine on a unix socket. The results go to BENCHMARKS.md (a full run) or to
//! target/bench/BENCHMARKS.partial.md (--quick or --only), and as JSON to
//! target/bench/results.json (results.partial.json).

mod real;
mod report;
mod simulated;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use report::Section;
use util::say;

const ALL: [&str; 6] = ["B1", "B2", "B3", "B4", "B5", "B6"];

#[derive(Clone)]
pub struct Ctx {
    pub quick: bool,
    pub root: PathBuf,
    pub run_id: String,
    pub http: reqwest::Client,
}

struct Opts {
    quick: bool,
    only: Vec<String>,
    out: Option<PathBuf>,
    keep: bool,
}

fn usage() -> &'static str {
    "usage: scripts/bench.sh [--quick] [--only B1,B2,...] [--out FILE] [--keep]\n\
     \n\
     --quick   smaller N (B1 30 containers, B2 at 20 and 60, B3 10,000 events, B6 15 s idle)\n\
     --only    run only these benchmarks (B1 to B6)\n\
     --out     write the Markdown report here (default: BENCHMARKS.md for a full run,\n\
     \x20         target/bench/BENCHMARKS.partial.md otherwise)\n\
     --keep    keep the scratch directory (agent logs, queue files)"
}

fn parse(args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut opts = Opts {
        quick: false,
        only: Vec::new(),
        out: None,
        keep: false,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--keep" => opts.keep = true,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--only" => {
                let list = args.next().ok_or("--only needs a list like B1,B3")?;
                for id in list.split(',') {
                    let id = id.trim().to_ascii_uppercase();
                    if !ALL.contains(&id.as_str()) {
                        return Err(format!(
                            "unknown benchmark {id:?} (known: {})",
                            ALL.join(", ")
                        ));
                    }
                    opts.only.push(id);
                }
            }
            "--out" => opts.out = Some(PathBuf::from(args.next().ok_or("--out needs a file")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(if e.is_empty() { 0 } else { 64 });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(opts))
}

async fn run(opts: Opts) -> ExitCode {
    let started = Instant::now();
    say("deploytrack benchmark suite");
    let run_id = std::env::var("BENCH_RUN_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{:08x}", fastrand::u32(..)));
    let root = std::env::temp_dir().join(format!("deploytrack-bench-{run_id}"));
    std::fs::create_dir_all(&root).expect("create the scratch directory");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let machine = report::Machine::collect(&util::agent_bin(), &root);
    let load_before = util::loadavg();
    say(format!(
        "agent {} ({} bytes); scratch {}; run id {run_id}",
        machine.binary,
        machine.binary_bytes,
        root.display()
    ));
    let ctx = Ctx {
        quick: opts.quick,
        root: root.clone(),
        run_id,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client"),
    };
    let want = |id: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == id);
    let mut sections: Vec<Section> = Vec::new();

    // The simulated engine first (a quiet machine for B6's idle figures), then the real engine.
    type Job = fn(Ctx) -> tokio::task::JoinHandle<Result<Section, String>>;
    let simulated: [(&'static str, &'static str, Job); 4] = [
        ("B3", "Pipeline throughput (simulated engine)", |c| {
            tokio::spawn(simulated::b3(c))
        }),
        ("B4", "Backlog drain", |c| tokio::spawn(simulated::b4(c))),
        ("B5", "Burst durability cost", |c| {
            tokio::spawn(simulated::b5(c))
        }),
        ("B6", "Footprint", |c| tokio::spawn(simulated::b6(c))),
    ];
    for (id, title, job) in simulated {
        if !want(id) {
            continue;
        }
        let section = match job(ctx.clone()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => Section::failed(id, title, e),
            Err(panic) => Section::failed(id, title, format!("the benchmark panicked: {panic}")),
        };
        report_progress(&section);
        sections.push(section);
    }
    if want("B1") || want("B2") {
        let titles = [
            ("B1", "Event to report latency (real engine)"),
            ("B2", "Reconciliation at start (real engine)"),
        ];
        let picked: Vec<_> = titles.iter().filter(|(id, _)| want(id)).collect();
        let handle = tokio::spawn(real::real(ctx.clone(), want("B1"), want("B2")));
        match handle.await {
            Ok(results) => {
                for (k, result) in results.into_iter().enumerate() {
                    let (id, title) = picked.get(k).copied().copied().unwrap_or(titles[0]);
                    let section = result.unwrap_or_else(|e| Section::failed(id, title, e));
                    report_progress(&section);
                    sections.push(section);
                }
            }
            Err(panic) => {
                real::remove_run(&ctx.run_id);
                for (id, title) in picked {
                    sections.push(Section::failed(
                        id,
                        title,
                        format!("the benchmark panicked: {panic}"),
                    ));
                }
            }
        }
    }
    sections.sort_by_key(|s| s.id);

    let mut command = String::from("scripts/bench.sh");
    if opts.quick {
        command.push_str(" --quick");
    }
    if !opts.only.is_empty() {
        command.push_str(&format!(" --only {}", opts.only.join(",")));
    }
    let md = report::markdown(&report::Run {
        command,
        machine: &machine,
        load_before,
        load_after: util::loadavg(),
        seconds: started.elapsed().as_secs_f64(),
        sections: &sections,
    });
    let bench_dir = manifest.join("target/bench");
    let _ = std::fs::create_dir_all(&bench_dir);
    let full = !opts.quick && opts.only.is_empty();
    let out = opts.out.clone().unwrap_or_else(|| {
        if full {
            manifest.join("BENCHMARKS.md")
        } else {
            bench_dir.join("BENCHMARKS.partial.md")
        }
    });
    let raw = serde_json::json!({
        "machine": machine,
        "quick": opts.quick,
        "seconds": started.elapsed().as_secs_f64(),
        "results": sections.iter().map(|s| serde_json::json!({
            "id": s.id,
            "rows": s.rows.iter().map(|r| serde_json::json!({"what": r.what, "measured": r.measured, "target": r.target, "verdict": format!("{:?}", r.verdict)})).collect::<Vec<_>>(),
            "raw": s.raw,
            "error": s.error,
        })).collect::<Vec<_>>(),
    });
    let json_path = bench_dir.join(if full {
        "results.json"
    } else {
        "results.partial.json"
    });
    let _ = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&raw).unwrap_or_default(),
    );
    if let Err(e) = report::write_into(&out, &md, "# Benchmarks") {
        eprintln!("bench: cannot write {}: {e}", out.display());
    }
    println!("{md}");
    say(format!(
        "wrote {} and {} in {:.0} s",
        out.display(),
        json_path.display(),
        started.elapsed().as_secs_f64()
    ));
    if opts.keep {
        say(format!("scratch kept in {}", root.display()));
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    if sections.iter().any(|s| s.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn report_progress(s: &Section) {
    match &s.error {
        Some(e) => say(format!("{} failed: {e}", s.id)),
        None => {
            for r in &s.rows {
                say(format!("{}: {}: {}", s.id, r.what, r.measured));
            }
        }
    }
}
