//! `report`: one deployment from a CD pipeline, sent and retried until delivered or
//! `--timeout` passes.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::cli::ReportArgs;
use crate::config::{Config, ConfigError};
use crate::deliver::{Outcome, Sink};
use crate::deployment::{Deployment, DeploymentKey, Platform, PlatformError};
use crate::error::Fatal;
use crate::reference::{ImageRef, ReferenceError};

/// What `report` sends and how long it may try, from its flags; a bad one is a usage error.
pub fn report_request(
    args: &ReportArgs,
    config: &Config,
) -> Result<(Deployment, Duration), ConfigError> {
    let image = ImageRef::parse(&args.image).map_err(|e| ConfigError::new("--image", e))?;
    validate_repository(&image).map_err(|e| ConfigError::new("--image", e))?;
    let Some(url) = image.pinned() else {
        return Err(ConfigError::new(
            "--image",
            ReferenceError::Unpinned(args.image.clone()),
        ));
    };
    let platform = match &args.platform {
        Some(p) => normalize_platform(p).map_err(|e| ConfigError::new("--platform", e))?,
        None => Platform::new("linux", "amd64", None),
    };
    let name = match &args.name {
        Some(name) if name.trim().is_empty() => {
            return Err(ConfigError::new("--name", "the name is empty"))
        }
        Some(name) if name.chars().any(char::is_control) => {
            return Err(ConfigError::new(
                "--name",
                format!("{name:?} holds control characters"),
            ))
        }
        Some(name) => name.clone(),
        None => image.repository.clone(),
    };
    let timeout = crate::config::duration("--timeout", args.timeout.clone(), "2m")?;
    if config.url.is_none() && !config.explicit_dry_run {
        return Err(ConfigError::new(
            "--url",
            "report needs the endpoint: give --url or set DEPLOYTRACK_URL (or pass --dry-run to print the report without sending it)",
        ));
    }
    let deployment = Deployment {
        key: DeploymentKey {
            environment: config.environment.clone(),
            name,
        },
        image_url: url,
        platform,
        container: None,
    };
    Ok((deployment, timeout))
}

/// The repository as Docker accepts it: lowercase path components of letters and digits
/// joined by `.`, `_`, `__` or dashes (the registry host may hold capitals).
fn validate_repository(image: &ImageRef) -> Result<(), ReferenceError> {
    let path = image
        .repository
        .split_once('/')
        .map_or(image.repository.as_str(), |(_, path)| path);
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository(path.to_string()));
    }
    let component_ok = |c: &str| {
        let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
        c.starts_with(alnum)
            && c.ends_with(alnum)
            && c.chars()
                .all(|ch| alnum(ch) || matches!(ch, '.' | '_' | '-'))
            && !c.contains("..")
            && !c.contains("___")
    };
    if let Some(bad) = path.split('/').find(|c| !component_ok(c)) {
        return Err(ReferenceError::BadComponent(bad.to_string()));
    }
    if let Some(tag) = &image.tag {
        let ok = tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(ReferenceError::BadTag(tag.clone()));
        }
    }
    Ok(())
}

/// `--platform` as Docker normalises it: lowercase, `os/arch[/variant]` or an architecture
/// alone (on linux, as `docker --platform arm64` takes it), the common architecture aliases
/// (`x86_64` is `amd64`, `aarch64` is `arm64`, `armhf` is `arm/v7`, `armel` is `arm/v6`,
/// `i386` is `386`) and `7` as `v7`. An OS, an architecture or an arm variant Docker does not
/// know is refused: the receiver would match nothing by it.
fn normalize_platform(text: &str) -> Result<Platform, PlatformError> {
    let lower = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let shape = || PlatformError::Shape(text.to_string());
    let (os, arch, variant) = match parts.as_slice() {
        [arch] if !KNOWN_OSES.contains(arch) => ("linux", *arch, None),
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        _ => return Err(shape()),
    };
    if [os, arch, variant.unwrap_or("x")]
        .iter()
        .any(|p| p.is_empty())
    {
        return Err(shape());
    }
    if !KNOWN_OSES.contains(&os) {
        return Err(PlatformError::UnknownOs {
            text: text.to_string(),
            os: os.to_string(),
        });
    }
    let (architecture, implied) = match arch {
        "x86_64" | "x86-64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "i386" | "i686" => ("386", None),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v6")),
        other if KNOWN_ARCHITECTURES.contains(&other) => (other, None),
        other => {
            return Err(PlatformError::UnknownArchitecture {
                text: text.to_string(),
                architecture: other.to_string(),
            })
        }
    };
    let variant = match variant {
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => Some(format!("v{v}")),
        Some(v) => Some(v.to_string()),
        None => implied.map(str::to_string),
    };
    let known_variant = match (architecture, variant.as_deref()) {
        (_, None) => true,
        ("arm", Some(v)) => matches!(v, "v5" | "v6" | "v7" | "v8"),
        ("arm64", Some(v)) => ["v8", "v9"].iter().any(|major| {
            v == *major
                || v.strip_prefix(major)
                    .and_then(|minor| minor.strip_prefix('.'))
                    .is_some_and(|minor| {
                        minor.len() == 1 && minor.bytes().all(|b| b.is_ascii_digit())
                    })
        }),
        ("amd64", Some(v)) => matches!(v, "v1" | "v2" | "v3" | "v4"),
        (_, Some(v)) => v.bytes().all(|b| b.is_ascii_alphanumeric()),
    };
    if !known_variant {
        return Err(PlatformError::UnknownVariant {
            text: text.to_string(),
            architecture: architecture.to_string(),
            variant: variant.unwrap_or_default(),
        });
    }
    Ok(Platform::new(os, architecture, variant.as_deref()))
}

/// The operating systems of Docker's platforms (Go's GOOS values, as containerd knows them).
const KNOWN_OSES: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// The architectures of Docker's platforms (Go's GOARCH values, as containerd knows them).
const KNOWN_ARCHITECTURES: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// Why `report` did not deliver.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the endpoint refused the report ({status}): {response}")]
    Refused { status: u16, response: String },
    /// The endpoint (its URL without credentials) rejected the token.
    #[error(
        "the endpoint{} rejected the API token ({status}): check --token-file or DEPLOYTRACK_TOKEN",
        at_url(endpoint)
    )]
    Unauthorized {
        status: u16,
        endpoint: Option<String>,
    },
    /// The endpoint cannot take reports until the configuration is fixed; the sentence
    /// names what to fix.
    #[error("{0}")]
    Misconfigured(String),
    /// `--timeout` passed, or will before the endpoint may be asked again: the last
    /// failure's reason, and why no attempt is left.
    #[error("not delivered within {within}: {reason}{gave_up}")]
    NotDelivered {
        within: String,
        reason: String,
        gave_up: GaveUp,
    },
}

/// ` at <URL>`, when the sink has one.
fn at_url(endpoint: &Option<String>) -> String {
    endpoint
        .as_deref()
        .map_or_else(String::new, |url| format!(" at {url}"))
}

/// Why `report` makes no further attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GaveUp {
    /// No further attempt could be answered before `--timeout` passes.
    #[error("")]
    Deadline,
    /// The endpoint asked to be left alone (`Retry-After`) past the deadline.
    #[error(", and it asked to wait {} (Retry-After), longer than what is left of --timeout ({}); try again later, or give a longer --timeout", crate::clock::human(*wait), crate::clock::human(*left))]
    RetryAfterPastDeadline { wait: Duration, left: Duration },
}

/// Send one deployment to the configured sink and wait until it is delivered or `timeout`
/// passes.
pub async fn report(
    deployment: Deployment,
    timeout: Duration,
    config: Config,
) -> Result<(), Fatal> {
    let sink = crate::deliver::sink_for(&config)?;
    let body = deployment.report_body();
    let attempts = Attempts {
        timeout,
        retry: config.retry,
        answer_within: config.request_timeout,
    };
    send_until_delivered(sink.as_ref(), &body, attempts).await?;
    crate::deliver::log_delivered(&deployment.key, &body, sink.is_dry_run());
    Ok(())
}

/// How `report` tries: for `timeout`, with `retry`'s backoff.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    timeout: Duration,
    retry: Backoff,
    /// How long one request may take (`--request-timeout`): the last attempt starts early
    /// enough to have it before the deadline.
    answer_within: Duration,
}

/// `report`'s attempts: again after each transient failure, with the backoff and never
/// before a `Retry-After`, until the timeout passes. A refusal, a rejected token or a
/// misconfigured endpoint fail at once: retrying cannot help them.
async fn send_until_delivered(
    sink: &dyn Sink,
    body: &str,
    attempts: Attempts,
) -> Result<(), ReportError> {
    let Attempts {
        timeout,
        retry,
        answer_within,
    } = attempts;
    let deadline = tokio::time::Instant::now() + timeout;
    let within = humantime::format_duration(timeout).to_string();
    let mut failures = 0;
    let mut last_made = false;
    let mut last_reason: Option<String> = None;
    loop {
        let Ok(outcome) = tokio::time::timeout_at(deadline, sink.send(body)).await else {
            return Err(ReportError::NotDelivered {
                within,
                reason: last_reason.unwrap_or_else(|| "the endpoint did not answer in time".into()),
                gave_up: GaveUp::Deadline,
            });
        };
        match outcome {
            Outcome::Delivered { .. } => return Ok(()),
            Outcome::Rejected { status, response } => {
                return Err(ReportError::Refused { status, response })
            }
            Outcome::Unauthorized { status } => {
                return Err(ReportError::Unauthorized {
                    status,
                    endpoint: sink.endpoint(),
                })
            }
            Outcome::Misconfigured { reason } => return Err(ReportError::Misconfigured(reason)),
            Outcome::Transient {
                reason,
                retry_after,
            } => {
                let delay = retry.delay_at_least(failures, retry_after);
                failures += 1;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let next = match next_attempt(left, delay, retry_after, answer_within) {
                    Ok(_) if last_made => Err(GaveUp::Deadline),
                    next => next,
                };
                let Next { delay, last } = next.map_err(|gave_up| ReportError::NotDelivered {
                    within: within.clone(),
                    reason: reason.clone(),
                    gave_up,
                })?;
                last_made = last;
                tracing::warn!(reason = %reason, retry_in = %crate::clock::human(delay), "report not delivered yet; retrying");
                last_reason = Some(reason);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// When `report` tries again, and whether that is its last attempt.
#[derive(Debug, PartialEq, Eq)]
struct Next {
    delay: Duration,
    last: bool,
}

/// How long `report` waits before it tries again, with `left` until `--timeout`: the
/// backoff's `delay` (never shorter than a `Retry-After`). Where that attempt could not be
/// answered within `answer_within` before the deadline, one last attempt goes early enough
/// to be (never before a `Retry-After`), rather than one cut off at the deadline. With less
/// left than an answer may take (a `--timeout` shorter than `--request-timeout`), the
/// backoff goes on, its last attempt falling on the deadline. An endpoint that asked
/// to be left alone past the deadline is not asked again before its time: `report` gives
/// up at once, saying why.
fn next_attempt(
    left: Duration,
    delay: Duration,
    retry_after: Option<Duration>,
    answer_within: Duration,
) -> Result<Next, GaveUp> {
    match retry_after {
        _ if left.is_zero() => Err(GaveUp::Deadline),
        Some(wait) if wait > left => Err(GaveUp::RetryAfterPastDeadline { wait, left }),
        _ if delay + answer_within <= left => Ok(Next { delay, last: false }),
        _ if left > answer_within => Ok(Next {
            delay: (left - answer_within).max(retry_after.unwrap_or_default()),
            last: true,
        }),
        _ if delay < left => Ok(Next { delay, last: false }),
        _ => Ok(Next {
            delay: left,
            last: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_normalised_as_docker_does() {
        let p = |text: &str| normalize_platform(text).map(|p| serde_json::to_string(&p).unwrap());
        assert_eq!(
            p("Linux/AMD64").unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            p("linux/x86_64").unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            p("linux/aarch64").unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        );
        assert_eq!(
            p("linux/armhf").unwrap(),
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        assert_eq!(
            p("linux/arm/7").unwrap(),
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        let linux = normalize_platform("linux");
        assert!(
            matches!(&linux, Err(PlatformError::Shape(text)) if text == "linux"),
            "{linux:?}"
        );
        // An architecture alone is on linux, as the README promises for aliases.
        assert_eq!(
            p("aarch64").unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        );
        assert_eq!(
            p("x86-64").unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            p("linux/arm64/v8.2").unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8.2"}"#
        );
        // What Docker does not know is refused, naming the part.
        let err = p("linux/amd65").unwrap_err();
        assert_eq!(
            err,
            PlatformError::UnknownArchitecture {
                text: "linux/amd65".into(),
                architecture: "amd65".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with(r#""linux/amd65": "amd65" is not an architecture Docker knows"#),
            "{err}"
        );
        let err = p("lniux/amd64").unwrap_err();
        assert_eq!(
            err,
            PlatformError::UnknownOs {
                text: "lniux/amd64".into(),
                os: "lniux".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#""lniux/amd64": "lniux" is not an operating system Docker knows (linux, windows, ...)"#
        );
        let err = p("linux/arm/v9").unwrap_err();
        assert_eq!(
            err,
            PlatformError::UnknownVariant {
                text: "linux/arm/v9".into(),
                architecture: "arm".into(),
                variant: "v9".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#""linux/arm/v9": "v9" is not a variant of arm Docker knows"#
        );
        for bad in ["linux//v7", "a/b/c/d"] {
            assert_eq!(p(bad), Err(PlatformError::Shape(bad.into())));
        }
    }

    #[test]
    fn repositories_are_validated_as_docker_does() {
        let check = |text: &str| validate_repository(&ImageRef::parse(text).unwrap());
        let digest = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for good in [
            "nginx",
            "Registry.Example:5000/team/app",
            "a/b__c/d-e.f",
            "app:v1.2_x",
        ] {
            assert_eq!(check(&format!("{good}{digest}")), Ok(()), "{good}");
        }
        let err = check(&format!("Nginx{digest}")).unwrap_err();
        assert_eq!(
            err,
            ReferenceError::UppercaseRepository("library/Nginx".into())
        );
        assert_eq!(
            err.to_string(),
            r#"the repository name "library/Nginx" must be lowercase, as Docker requires"#
        );
        for (bad, refusal) in [
            (
                "example.com/-app",
                ReferenceError::BadComponent("-app".into()),
            ),
            (
                "example.com/a..b",
                ReferenceError::BadComponent("a..b".into()),
            ),
            ("app:.tag", ReferenceError::BadTag(".tag".into())),
        ] {
            assert_eq!(check(&format!("{bad}{digest}")), Err(refusal), "{bad}");
        }
    }

    #[test]
    fn the_last_attempt_of_report_respects_retry_after() {
        let s = Duration::from_secs;
        let next = |delay, last| Ok(Next { delay, last });
        // The backoff's delay, with time for an answer before the deadline.
        assert_eq!(next_attempt(s(30), s(5), None, s(15)), next(s(5), false));
        // Else one last attempt, early enough to be answered...
        assert_eq!(next_attempt(s(30), s(20), None, s(15)), next(s(15), true));
        // ...but never before a Retry-After.
        assert_eq!(
            next_attempt(s(20), s(7), Some(s(7)), s(15)),
            next(s(7), true)
        );
        // Less left than an answer may take: the backoff, while it falls before the deadline.
        assert_eq!(
            next_attempt(s(10), s(7), Some(s(7)), s(15)),
            next(s(7), false)
        );
        assert_eq!(next_attempt(s(3), s(2), None, s(15)), next(s(2), false));
        assert_eq!(next_attempt(s(3), s(5), None, s(15)), next(s(3), true));
        // Asked to wait past the deadline: give up now, saying so.
        let why = next_attempt(s(3), s(7), Some(s(7)), s(15)).unwrap_err();
        assert_eq!(
            why,
            GaveUp::RetryAfterPastDeadline {
                wait: s(7),
                left: s(3)
            }
        );
        assert_eq!(
            why.to_string(),
            ", and it asked to wait 7s (Retry-After), longer than what is left of --timeout (3s); try again later, or give a longer --timeout"
        );
        assert_eq!(
            next_attempt(Duration::ZERO, s(1), None, s(15)),
            Err(GaveUp::Deadline)
        );
        assert_eq!(GaveUp::Deadline.to_string(), "");
    }

    /// `report`'s attempts over a scripted sink, on paused time: every instant is exact, in
    /// milliseconds of test time.
    mod attempts {
        use super::*;
        use crate::deliver::script::{ms_since, ok, unavailable, ScriptedSink, Step, URL};
        use crate::deliver::wrong_endpoint;
        use tokio::time::Instant;

        const S: Duration = Duration::from_secs(1);
        const MS: Duration = Duration::from_millis(1);
        /// 1 s doubling up to a minute, without jitter, so that every wait is exact.
        const RETRY: Backoff = Backoff::steady(Duration::from_secs(1), Duration::from_secs(60));
        const UNAVAILABLE: &str = "the endpoint answered 503 Service Unavailable";
        /// `--request-timeout` (the scripted sink's answers come sooner, or never).
        const ANSWER_WITHIN: Duration = Duration::from_secs(1);

        /// The sink answers from `steps`, then with `otherwise`; `report` tries for
        /// `timeout`. What it came to, when (ms), and when each attempt started.
        async fn report_over(
            steps: Vec<Step>,
            otherwise: Step,
            timeout: Duration,
        ) -> (Result<(), ReportError>, u64, Vec<u64>) {
            report_within(steps, otherwise, timeout, ANSWER_WITHIN).await
        }

        /// `report_over` with `--request-timeout` at `answer_within`.
        async fn report_within(
            steps: Vec<Step>,
            otherwise: Step,
            timeout: Duration,
            answer_within: Duration,
        ) -> (Result<(), ReportError>, u64, Vec<u64>) {
            let start = Instant::now();
            let sink = ScriptedSink::new(start, steps, otherwise);
            let attempts = Attempts {
                timeout,
                retry: RETRY,
                answer_within,
            };
            let result = send_until_delivered(sink.as_ref(), "app v1", attempts).await;
            (result, ms_since(start), sink.times())
        }

        fn not_delivered(within: &str, reason: &str, gave_up: GaveUp) -> ReportError {
            ReportError::NotDelivered {
                within: within.into(),
                reason: reason.into(),
                gave_up,
            }
        }

        #[tokio::test(start_paused = true)]
        async fn delivered_at_the_first_try() {
            let (result, at, attempts) = report_over(vec![], (300 * MS, ok()), 120 * S).await;
            assert_eq!((result, at, attempts), (Ok(()), 300, vec![0]));
        }

        #[tokio::test(start_paused = true)]
        async fn transient_failures_are_retried_with_backoff_until_delivered() {
            // Each answer takes 100 ms; three fail, the fourth is delivered.
            let fail = (100 * MS, unavailable(None));
            let (result, at, attempts) =
                report_over(vec![fail; 3], (100 * MS, ok()), 120 * S).await;
            // 1, 2 and 4 s after each failure.
            assert_eq!(
                (result, at, attempts),
                (Ok(()), 7400, vec![0, 1100, 3200, 7300])
            );
        }

        #[tokio::test(start_paused = true)]
        async fn retry_after_is_a_floor_under_the_backoff() {
            // Asked for 5 s where the backoff says 1 s: 5 s. Then asked for 1 s where the
            // backoff says 2 s: 2 s.
            let steps = vec![
                (Duration::ZERO, unavailable(Some(5 * S))),
                (Duration::ZERO, unavailable(Some(S))),
            ];
            let (result, at, attempts) = report_over(steps, (Duration::ZERO, ok()), 120 * S).await;
            assert_eq!((result, at, attempts), (Ok(()), 7000, vec![0, 5000, 7000]));
        }

        #[tokio::test(start_paused = true)]
        async fn a_retry_after_past_the_deadline_gives_up_at_once() {
            // At 1 s, 9 s are left of 10: a Retry-After of 30 s ends it there.
            let steps = vec![
                (Duration::ZERO, unavailable(None)),
                (Duration::ZERO, unavailable(Some(30 * S))),
            ];
            let (result, at, attempts) = report_over(steps, (Duration::ZERO, ok()), 10 * S).await;
            let gave_up = GaveUp::RetryAfterPastDeadline {
                wait: 30 * S,
                left: 9 * S,
            };
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", UNAVAILABLE, gave_up)),
                    1000,
                    vec![0, 1000]
                )
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_refused_report_fails_at_once() {
            let refused = Outcome::Rejected {
                status: 422,
                response: "image.url is required".into(),
            };
            let (result, at, attempts) = report_over(vec![], (100 * MS, refused), 120 * S).await;
            let refused = ReportError::Refused {
                status: 422,
                response: "image.url is required".into(),
            };
            assert_eq!((result, at, attempts), (Err(refused), 100, vec![0]));
        }

        #[tokio::test(start_paused = true)]
        async fn wrong_credentials_or_url_fail_at_once_naming_the_url() {
            for status in [401, 403] {
                // After a transient failure too: a rejection ends the retries.
                let steps = vec![(100 * MS, unavailable(None))];
                let answer = (100 * MS, Outcome::Unauthorized { status });
                let (result, at, attempts) = report_over(steps, answer, 120 * S).await;
                let err = result.unwrap_err();
                assert_eq!(
                    (&err, at, attempts),
                    (
                        &ReportError::Unauthorized {
                            status,
                            endpoint: Some(URL.into())
                        },
                        1200,
                        vec![0, 1100]
                    )
                );
                assert_eq!(
                    err.to_string(),
                    format!("the endpoint at {URL} rejected the API token ({status}): check --token-file or DEPLOYTRACK_TOKEN")
                );
            }
            for status in [404, 410] {
                // The reason as the HTTP sink gives it: the URL, then what it says of it.
                let reason = format!("{URL}: {}", wrong_endpoint(status));
                let answer = Outcome::Misconfigured {
                    reason: reason.clone(),
                };
                let (result, at, attempts) = report_over(vec![], (100 * MS, answer), 120 * S).await;
                let err = result.unwrap_err();
                assert_eq!(
                    (&err, at, attempts),
                    (&ReportError::Misconfigured(reason), 100, vec![0])
                );
                assert!(err.to_string().starts_with(URL), "{err}");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn the_deadline_falls_during_the_backoff() {
            // 1, 2 and 4 s after each failure; the next wait (8 s) would leave no time for an
            // answer: the last attempt goes 1 s (--request-timeout) before the deadline, and
            // its failure ends the attempts.
            let (result, at, attempts) =
                report_over(vec![], (100 * MS, unavailable(None)), 10 * S).await;
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", UNAVAILABLE, GaveUp::Deadline)),
                    9_100,
                    vec![0, 1100, 3200, 7300, 9_000]
                )
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_timeout_shorter_than_an_answer_may_take_keeps_the_backoff() {
            // --timeout 10s, --request-timeout 15s: 1, 2 and 4 s after each failure; the
            // next (8 s) would fall past the deadline: the last attempt falls on it, and
            // `report` gives up at the time limit, not before it.
            let (result, at, attempts) =
                report_within(vec![], (100 * MS, unavailable(None)), 10 * S, 15 * S).await;
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", UNAVAILABLE, GaveUp::Deadline)),
                    10_000,
                    vec![0, 1100, 3200, 7300, 10_000]
                )
            );
        }

        #[tokio::test(start_paused = true)]
        async fn the_last_attempt_has_time_to_be_delivered() {
            let fail = (100 * MS, unavailable(None));
            let (result, at, attempts) = report_over(vec![fail; 4], (100 * MS, ok()), 10 * S).await;
            assert_eq!(
                (result, at, attempts),
                (Ok(()), 9_100, vec![0, 1100, 3200, 7300, 9_000])
            );
        }

        #[tokio::test(start_paused = true)]
        async fn an_endpoint_that_never_answers_ends_at_the_deadline() {
            let (result, at, attempts) = report_over(vec![], (3600 * S, ok()), 10 * S).await;
            let silent = "the endpoint did not answer in time";
            assert_eq!(
                (result, at, attempts),
                (
                    Err(not_delivered("10s", silent, GaveUp::Deadline)),
                    10_000,
                    vec![0]
                )
            );
        }
    }
}
