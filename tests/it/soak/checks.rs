//! The checks: the endpoint's final view against the engine's truth, the footprint's
//! growth past its warm-up level, and the log's warnings.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Truth {
    pub(super) running: bool,
    pub(super) id: String,
    pub(super) image: &'static str,
}

pub(super) struct Digests {
    pub(super) app1: String,
    pub(super) app2: String,
}

impl Digests {
    pub(super) fn of(&self, image: &str) -> &str {
        if image == APP1 {
            &self.app1
        } else {
            &self.app2
        }
    }
}

/// The repo digest of `image` as the private engine has it.
pub(super) fn private_digest(engine: &PrivateEngine, image: &str) -> String {
    let json = engine.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        image,
    ]);
    let list: Vec<String> = serde_json::from_str(&json).unwrap();
    list.into_iter()
        .find(|d| d.starts_with(&format!("{APP_REPO}@")))
        .unwrap_or_else(|| panic!("{image} has no digest in {APP_REPO} on the private engine"))
}

/// Differences between what an endpoint holds last per name (its final view) and the truth.
pub(super) fn compare(
    truth: &BTreeMap<String, Truth>,
    host: &str,
    digests: &Digests,
    received: &[Received],
    stops: bool,
) -> Vec<String> {
    let mut last: HashMap<&str, &Received> = HashMap::new();
    for r in received.iter().filter(|r| r.status < 300) {
        last.insert(r.name(), r);
    }
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let mut wrong = Vec::new();
    for (name, t) in truth {
        let key = format!("{host}/{name}");
        let want_url = digests.of(t.image);
        let want_state = if t.running { "running" } else { "stopped" };
        let Some(r) = last.get(key.as_str()) else {
            wrong.push(format!(
                "{name}: never reported; the engine has {} {} ({want_state})",
                short(&t.id),
                t.image
            ));
            continue;
        };
        let container = &r.body["container"];
        if stops {
            let state = container["state"].as_str().unwrap_or("(no state)");
            let id = container["id"].as_str().unwrap_or("(no id)");
            if r.url() != want_url || state != want_state || id != t.id {
                wrong.push(format!(
                    "{name}: the endpoint has {state} {} {}; the engine has {want_state} {} {want_url}",
                    short(id),
                    r.url(),
                    short(&t.id)
                ));
            }
        } else if r.url() != want_url || !container.is_null() {
            wrong.push(format!(
                "{name}: the endpoint has {} (container {container}); the engine's last is {want_url} ({want_state})",
                r.url()
            ));
        }
    }
    for name in last.keys() {
        let known = name
            .strip_prefix(&format!("{host}/"))
            .is_some_and(|n| truth.contains_key(n));
        if !known {
            wrong.push(format!("{name}: reported, but no container ran as that"));
        }
    }
    wrong.sort();
    wrong
}

/// Resident memory and descriptors: the warm-up level (its peak), the peak of the last part,
/// the overall peak and the last sample.
pub(super) struct Footprint {
    pub(super) first: Sample,
    pub(super) warm: Sample,
    pub(super) last_part: Sample,
    pub(super) peak: Sample,
    pub(super) last: Sample,
    pub(super) series: Vec<Sample>,
}

pub(super) fn peak_of(samples: &[Sample]) -> Option<Sample> {
    let rss = samples.iter().map(|s| s.rss_kib).max()?;
    let fds = samples.iter().map(|s| s.fds).max()?;
    Some(Sample {
        at: samples.last()?.at,
        rss_kib: rss,
        fds,
    })
}

pub(super) fn footprint(samples: &[Sample], d: f64) -> Option<Footprint> {
    let settle = SETTLE_SECS.min(d * WARM_UP_END / 2.0);
    let warm: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= settle && s.at <= d * WARM_UP_END)
        .copied()
        .collect();
    let last_part: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= d * LAST_PART_START && s.at <= d)
        .copied()
        .collect();
    // One sample per tenth of the run, for the picture.
    let series = (0..=10)
        .filter_map(|i| {
            let t = d * f64::from(i) / 10.0;
            samples
                .iter()
                .min_by(|a, b| (a.at - t).abs().total_cmp(&(b.at - t).abs()))
                .copied()
        })
        .collect();
    Some(Footprint {
        first: *samples.first()?,
        warm: peak_of(&warm)?,
        last_part: peak_of(&last_part)?,
        peak: peak_of(samples)?,
        last: *samples.last()?,
        series,
    })
}

/// WARN and ERROR lines of an agent's log (text format: timestamp, level, message, fields).
#[derive(Default)]
pub(super) struct LogFigures {
    pub(super) lines: usize,
    pub(super) warn: usize,
    pub(super) error: usize,
    pub(super) per_minute: BTreeMap<String, usize>,
    pub(super) messages: BTreeMap<String, usize>,
    pub(super) errors: Vec<String>,
}

impl LogFigures {
    pub(super) fn max_per_minute(&self) -> (usize, String) {
        self.per_minute
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(m, n)| (*n, m.clone()))
            .unwrap_or_default()
    }
}

pub(super) fn analyse_log(text: &str) -> LogFigures {
    let mut f = LogFigures::default();
    for line in text.lines() {
        f.lines += 1;
        let mut words = line.split_whitespace();
        let (Some(ts), Some(level)) = (words.next(), words.next()) else {
            continue;
        };
        if level != "WARN" && level != "ERROR" {
            continue;
        }
        if level == "WARN" {
            f.warn += 1;
        } else {
            f.error += 1;
            f.errors.push(line.to_string());
        }
        *f.per_minute
            .entry(ts.chars().take(16).collect())
            .or_default() += 1;
        let message: Vec<&str> = words.take_while(|w| !w.contains('=')).collect();
        *f.messages
            .entry(format!("{level} {}", message.join(" ")))
            .or_default() += 1;
    }
    f
}

/// The checks themselves, without an engine: a stale or wrong final view is caught.
#[test]
pub(super) fn the_final_view_check_catches_stale_and_wrong_reports() {
    let digests = Digests {
        app1: format!("{APP_REPO}@sha256:1"),
        app2: format!("{APP_REPO}@sha256:2"),
    };
    let report = |name: &str, url: &str, container: serde_json::Value| Received {
        at: Instant::now(),
        method: "POST".into(),
        path: "/".into(),
        authorization: None,
        content_type: None,
        user_agent: None,
        body: serde_json::json!({"image": {"url": url, "name": format!("h/{name}")}, "container": container}),
        status: 200,
    };
    let running = |id: &str| serde_json::json!({"id": id, "state": "running"});
    let stopped = |id: &str| serde_json::json!({"id": id, "state": "stopped", "exit_code": 137});
    let truth = BTreeMap::from([
        (
            "a".to_string(),
            Truth {
                running: true,
                id: "c2".into(),
                image: APP2,
            },
        ),
        (
            "b".to_string(),
            Truth {
                running: false,
                id: "c3".into(),
                image: APP1,
            },
        ),
    ]);
    let good = vec![
        report("a", &digests.app1, running("c1")),
        report("b", &digests.app1, running("c3")),
        report("a", &digests.app2, running("c2")),
        report("b", &digests.app1, stopped("c3")),
    ];
    assert!(compare(&truth, "h", &digests, &good, true).is_empty());
    // The stop of b never arrived; a's last report is its previous container.
    let stale = &good[..2];
    let wrong = compare(&truth, "h", &digests, stale, true);
    assert_eq!(wrong.len(), 2, "{wrong:?}");
    // A name nothing ran under, and a refused report that does not count.
    let mut extra = good.clone();
    extra.push(report("ghost", &digests.app1, running("c9")));
    let mut refused = report("b", &digests.app2, running("c4"));
    refused.status = 503;
    extra.push(refused);
    let wrong = compare(&truth, "h", &digests, &extra, true);
    assert!(wrong.len() == 1 && wrong[0].contains("ghost"), "{wrong:?}");
    // Without stops: the digest of the last container, and no container object.
    let plain = |name: &str, url: &str| report(name, url, serde_json::Value::Null);
    let ok = [plain("a", &digests.app2), plain("b", &digests.app1)];
    assert!(compare(&truth, "h", &digests, &ok, false).is_empty());
    let wrong = compare(&truth, "h", &digests, &ok[..1], false);
    assert!(wrong.len() == 1 && wrong[0].contains("never reported"));
}

#[test]
pub(super) fn the_log_check_counts_warnings_per_minute() {
    let log = "\
2026-01-01T10:00:01.000001Z  INFO deploytrack started engine=x
2026-01-01T10:00:02.000001Z  WARN engine unreachable error=gone retry_in=250ms
2026-01-01T10:00:03.000001Z  WARN engine unreachable error=gone retry_in=500ms
2026-01-01T10:01:03.000001Z ERROR cannot commit to the queue database error=disk
";
    let f = analyse_log(log);
    assert_eq!((f.lines, f.warn, f.error), (4, 2, 1));
    assert_eq!(f.max_per_minute(), (2, "2026-01-01T10:00".to_string()));
    assert_eq!(f.messages["WARN engine unreachable"], 2);
    assert_eq!(f.errors.len(), 1);
}
