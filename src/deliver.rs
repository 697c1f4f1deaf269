//! Delivery: the HTTP client, the classification of answers, and the dispatcher that drains
//! the outbox with bounded concurrency, backoff and an endpoint-wide hold.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{RetryPolicy, Token};
use crate::deployment::DeploymentKey;
use crate::outbox::{now_ms, Outbox, Pending, Settle};
use crate::telemetry::Telemetry;

pub const USER_AGENT_VALUE: &str = concat!("deploytrack/", env!("CARGO_PKG_VERSION"));
/// How much of a refusing answer's body is kept with a dead letter.
const RESPONSE_EXCERPT: usize = 512;
/// The dispatcher looks at the queue at least this often (operators may change it).
const IDLE_POLL: Duration = Duration::from_secs(2);
/// How long delivery waits at start for the first reconciliation.
const RECONCILE_GRACE: Duration = Duration::from_secs(5);
/// A `Retry-After` beyond this is treated as this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Network error, timeout, 408, 425, 429, 5xx: try again later.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 401/403: the credentials are wrong for every report.
    Unauthorized {
        status: u16,
    },
    /// 404/405/410: the URL names no endpoint that takes reports (a mistyped or deleted
    /// endpoint): wrong for every report, like the credentials.
    WrongEndpoint {
        status: u16,
    },
    /// Any other 4xx: this report will never be accepted.
    Rejected {
        status: u16,
        response: String,
    },
}

/// Classify an HTTP answer per the API contract.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let code = status.as_u16();
    match code {
        200..=299 => Outcome::Delivered,
        401 | 403 => Outcome::Unauthorized { status: code },
        404 | 405 | 410 => Outcome::WrongEndpoint { status: code },
        // Redirects are not followed (a client following a 301 turns the POST into a GET):
        // the endpoint is misconfigured for every report, so hold and say where it points.
        300..=399 => Outcome::Transient {
            reason: format!(
                "the endpoint answered {status} and points to {}: set --url to that address",
                headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| "nowhere".to_string(), crate::config::redact_url)
            ),
            retry_after: None,
        },
        408 | 425 | 429 | 500..=599 => Outcome::Transient {
            reason: format!("the endpoint answered {status}"),
            retry_after: headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        },
        _ => Outcome::Rejected {
            status: code,
            response: excerpt(body),
        },
    }
}

/// The start of an answer's body, for the log: a body of any size is read only this far.
async fn excerpt_of(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < RESPONSE_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(RESPONSE_EXCERPT);
    body
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(RESPONSE_EXCERPT)]);
    text.chars()
        .filter(|c| !c.is_control() || *c == ' ')
        .collect()
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

/// Where reports go: the endpoint, or stdout in a dry run.
pub enum Sink {
    Http(HttpSink),
    Stdout,
}

/// What a status of `Outcome::WrongEndpoint` says about the URL.
pub fn wrong_endpoint(status: u16) -> &'static str {
    match status {
        404 => "no endpoint at this URL (404): is --url mistyped?",
        405 => "this URL does not take a POST (405): is --url the endpoint's address?",
        410 => "the endpoint at this URL is gone (410): was it deleted? set --url to the new one",
        _ => "this URL takes no reports",
    }
}

impl Sink {
    /// The endpoint's URL without credentials, for messages; `None` for stdout.
    pub fn shown_url(&self) -> Option<String> {
        match self {
            Sink::Http(http) => Some(crate::config::redact_url(http.url.as_str())),
            Sink::Stdout => None,
        }
    }

    /// The endpoint when one is configured and this is not a dry run, else stdout.
    pub fn for_config(config: &crate::config::Config) -> Result<Self, String> {
        Ok(match (&config.url, &config.token, config.dry_run) {
            (Some(url), Some(token), false) => Sink::Http(HttpSink::new(
                url.clone(),
                token,
                config.request_timeout,
                &config.ca_certificates,
            )?),
            _ => Sink::Stdout,
        })
    }

    pub async fn send(&self, body: &str) -> Outcome {
        match self {
            Sink::Http(http) => http.send(body).await,
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{body}").and_then(|()| out.flush()) {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => Outcome::Transient {
                        reason: format!("cannot write to stdout: {e}"),
                        retry_after: None,
                    },
                }
            }
        }
    }
}

pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    authorization: HeaderValue,
}

impl HttpSink {
    /// `roots`: certificates trusted besides the system's (`--ca-file`).
    pub fn new(
        url: reqwest::Url,
        token: &Token,
        timeout: Duration,
        roots: &[reqwest::Certificate],
    ) -> Result<Self, String> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| "the token holds characters an HTTP header cannot carry".to_string())?;
        authorization.set_sensitive(true);
        let mut builder = reqwest::Client::builder();
        for root in roots {
            builder = builder.add_root_certificate(root.clone());
        }
        let client = builder
            .user_agent(USER_AGENT_VALUE)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            client,
            url,
            authorization,
        })
    }

    pub async fn send(&self, body: &str) -> Outcome {
        let request = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(body.to_string());
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                let body = if status.is_success() {
                    Vec::new()
                } else {
                    excerpt_of(response).await
                };
                classify(status, &headers, &body)
            }
            Err(e) => Outcome::Transient {
                reason: describe_error(&e.without_url()),
                retry_after: None,
            },
        }
    }
}

impl HttpSink {
    /// A GET with the credentials, for `check`: the API defines no probe, but a 401/403
    /// tells a wrong token without sending a deployment. Returns the status.
    pub async fn probe(&self) -> Result<u16, String> {
        let response = self
            .client
            .get(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(|e| describe_error(&e.without_url()))?;
        Ok(response.status().as_u16())
    }
}

/// reqwest's message plus the innermost cause ("connection refused"), without the URL.
fn describe_error(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    format!("{kind}: {cause}")
}

/// Full-jitter exponential backoff: a random delay up to `initial * 2^n`, capped at `max`.
pub fn backoff(policy: &RetryPolicy, failures: u32) -> Duration {
    let cap = policy
        .initial
        .saturating_mul(2u32.saturating_pow(failures.min(30)))
        .min(policy.max);
    let millis = cap.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(millis / 10..=millis))
}

/// The endpoint-wide state: while the endpoint fails, everything waits and one probe at a
/// time tests it, so an outage of hours costs a bounded number of attempts.
#[derive(Debug, Default)]
struct Hold {
    failures: u32,
    until: Option<Instant>,
    probing: bool,
    /// The endpoint-wide fault already logged (credentials, a wrong URL), once per hold.
    logged: Option<u16>,
}

impl Hold {
    /// A request failed. The backoff escalates once per failed probe: the first failure
    /// starts the hold; the other requests already in flight then fail for the same reason
    /// and do not count again. `probe`: the request was sent while held.
    fn failed(&mut self, probe: bool, delay: impl FnOnce(u32) -> Duration) -> Duration {
        if probe || self.until.is_none() {
            self.failures = self.failures.saturating_add(1);
        }
        let delay = delay(self.failures.saturating_sub(1));
        self.probing = false;
        let until = Instant::now() + delay;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
        delay
    }
}

pub struct Dispatcher {
    pub outbox: Outbox,
    /// True once the observer's first reconciliation is queued; delivery waits for it
    /// (at most `RECONCILE_GRACE`).
    pub reconciled: watch::Receiver<bool>,
    pub sink: Arc<Sink>,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub telemetry: Arc<Telemetry>,
}

impl Dispatcher {
    /// Deliver until shutdown; then let in-flight requests finish within `grace`.
    /// With `until_empty`, return as soon as nothing is pending (sync --once).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
        until_empty: bool,
    ) -> Result<(), String> {
        let mut inflight: JoinSet<(Pending, Outcome, bool)> = JoinSet::new();
        let mut inflight_keys: HashSet<DeploymentKey> = HashSet::new();
        let mut buffer: VecDeque<Pending> = VecDeque::new();
        let mut hold = Hold::default();
        let mut stopping: Option<Instant> = None;
        let mut next_due: Option<i64> = None;
        let mut reconciled = self.reconciled.clone();
        tokio::select! {
            _ = tokio::time::timeout(RECONCILE_GRACE, reconciled.wait_for(|done| *done)) => {}
            _ = shutdown.changed() => {}
        }
        loop {
            self.telemetry.heartbeat_dispatcher();
            if stopping.is_none() {
                let now = Instant::now();
                let held = hold.until.is_some_and(|u| u > now);
                let capacity = if hold.until.is_some() {
                    usize::from(!held && !hold.probing && inflight.is_empty())
                } else {
                    self.concurrency.saturating_sub(inflight.len())
                };
                if capacity > 0 && buffer.is_empty() {
                    let probe = hold.until.is_some();
                    let (items, next) = self.outbox.due(64 + inflight.len(), !probe).await?;
                    next_due = next;
                    buffer.extend(
                        items
                            .into_iter()
                            .filter(|p| !inflight_keys.contains(&p.key)),
                    );
                }
                for _ in 0..capacity {
                    let Some(pending) = buffer.pop_front() else {
                        break;
                    };
                    if !inflight_keys.insert(pending.key.clone()) {
                        continue;
                    }
                    let probe = hold.until.is_some();
                    hold.probing |= probe;
                    let sink = self.sink.clone();
                    inflight.spawn(async move {
                        let outcome = sink.send(&pending.body).await;
                        (pending, outcome, probe)
                    });
                }
            }
            if until_empty
                && inflight.is_empty()
                && buffer.is_empty()
                && next_due.is_none()
                && hold.until.is_none()
            {
                // Make sure the acknowledgements are on disk and nothing else arrived.
                self.outbox.flush().await?;
                if self.outbox.due(1, false).await?.0.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if let Some(deadline) = stopping {
                if inflight.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(in_flight = inflight.len(), "shutdown grace period over; abandoning requests in flight (they stay queued)");
                    inflight.abort_all();
                    break;
                }
            }
            let wake = match (stopping, hold.until) {
                (Some(deadline), _) => deadline,
                (None, Some(until)) if !hold.probing => until,
                _ => {
                    let poll = Instant::now() + IDLE_POLL;
                    match next_due {
                        Some(ms) if buffer.is_empty() => {
                            let wait = Duration::from_millis((ms - now_ms()).max(0) as u64);
                            poll.min(Instant::now() + wait)
                        }
                        _ => poll,
                    }
                }
            };
            let busy = !buffer.is_empty() && inflight.len() >= self.concurrency;
            tokio::select! {
                Some(joined) = inflight.join_next() => {
                    if let Ok((pending, outcome, probe)) = joined {
                        inflight_keys.remove(&pending.key);
                        self.settle(pending, outcome, probe, &mut hold);
                    }
                }
                _ = self.outbox.work.notified(), if !busy => {}
                _ = tokio::time::sleep_until(wake), if !busy || stopping.is_some() => {}
                changed = shutdown.changed(), if stopping.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        stopping = Some(Instant::now() + grace);
                    }
                }
            }
        }
        self.outbox.flush().await
    }

    fn settle(&self, pending: Pending, outcome: Outcome, probe: bool, hold: &mut Hold) {
        let key = pending.key.clone();
        match outcome {
            Outcome::Delivered => {
                self.telemetry.delivered();
                match crate::deployment::Deployment::from_body(&pending.body) {
                    Some(d) => {
                        tracing::info!(key = %key, image = %d.image_url, "deployment reported")
                    }
                    None => tracing::info!(key = %key, "deployment reported"),
                }
                if hold.until.is_some() {
                    tracing::info!(
                        after_failures = hold.failures,
                        "the endpoint accepts reports again; draining the queue"
                    );
                    self.outbox.reset_backoff();
                }
                *hold = Hold::default();
                self.outbox.settle(key, pending.version, Settle::Delivered);
            }
            Outcome::Rejected { status, response } => {
                self.telemetry.dead_lettered();
                tracing::warn!(key = %key, status, response = %response, "the endpoint refused this report; moved it to the dead letters (deploytrack queue dead)");
                hold.probing = false;
                self.outbox
                    .settle(key, pending.version, Settle::Dead { status, response });
            }
            Outcome::Transient {
                reason,
                retry_after,
            } => {
                self.telemetry.delivery_failed("transient");
                let started = hold.until.is_none();
                let delay = hold.failed(probe, |n| {
                    backoff(&self.retry, n).max(retry_after.unwrap_or_default())
                });
                // A report that keeps failing on its own (while others succeed) backs off by
                // its own attempts, so it cannot keep the queue in a loop of short holds.
                let own_delay =
                    delay.max(backoff(&self.retry, pending.attempts.clamp(0, 30) as u32));
                if started {
                    tracing::warn!(reason = %reason, retry_in = ?delay, "cannot deliver; holding the queue and retrying with backoff");
                } else {
                    tracing::debug!(reason = %reason, retry_in = ?delay, "endpoint still failing");
                }
                self.outbox.settle(
                    key,
                    pending.version,
                    Settle::RetryAt {
                        next_attempt_ms: now_ms() + own_delay.as_millis() as i64,
                        error: reason,
                    },
                );
            }
            Outcome::Unauthorized { status } => {
                self.telemetry.delivery_failed("unauthorized");
                let delay = hold.failed(probe, |n| backoff(&self.retry, n));
                if hold.logged != Some(status) {
                    tracing::error!(status, retry_in = ?delay, "the endpoint rejected the API token: check --token-file / DEPLOYTRACK_TOKEN; every report stays queued and is retried");
                }
                hold.logged = Some(status);
                let error = format!("the endpoint answered {status}: credentials rejected");
                self.retry_at(key, pending.version, delay, error);
            }
            Outcome::WrongEndpoint { status } => {
                self.telemetry.delivery_failed("wrong_endpoint");
                let delay = hold.failed(probe, |n| backoff(&self.retry, n));
                let url = self.sink.shown_url().unwrap_or_default();
                if hold.logged != Some(status) {
                    tracing::error!(status, url = %url, retry_in = ?delay, "{}; every report stays queued and is retried", wrong_endpoint(status));
                }
                hold.logged = Some(status);
                let error = format!("{url}: {}", wrong_endpoint(status));
                self.retry_at(key, pending.version, delay, error);
            }
        }
    }

    fn retry_at(&self, key: DeploymentKey, version: i64, delay: Duration, error: String) {
        self.outbox.settle(
            key,
            version,
            Settle::RetryAt {
                next_attempt_ms: now_ms() + delay.as_millis() as i64,
                error,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_escalates_once_per_failed_probe() {
        let mut hold = Hold::default();
        let seen = std::cell::RefCell::new(Vec::new());
        let mut fail = |probe| {
            hold.failed(probe, |n| {
                seen.borrow_mut().push(n);
                Duration::from_millis(10)
            })
        };
        // Four requests in flight when the endpoint goes down: one step, not four.
        for probe in [false, false, false, false] {
            fail(probe);
        }
        // Then each failed probe is one more step.
        fail(true);
        fail(true);
        assert_eq!(*seen.borrow(), vec![0, 0, 0, 0, 1, 2]);
        assert_eq!(hold.failures, 3);
        assert!(!hold.probing);
    }

    #[test]
    fn classification() {
        let h = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &h, b""), Outcome::Delivered);
        assert_eq!(classify(StatusCode::ACCEPTED, &h, b""), Outcome::Delivered);
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &h, b""),
            Outcome::Unauthorized { status: 401 }
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &h, b""),
            Outcome::Unauthorized { status: 403 }
        );
        for s in [408, 425, 429, 500, 502, 503] {
            let outcome = classify(StatusCode::from_u16(s).unwrap(), &h, b"");
            assert!(
                matches!(outcome, Outcome::Transient { .. }),
                "{s}: {outcome:?}"
            );
        }
        for s in [404, 405, 410] {
            assert_eq!(
                classify(StatusCode::from_u16(s).unwrap(), &h, b""),
                Outcome::WrongEndpoint { status: s }
            );
        }
        for s in [400, 409, 413, 422] {
            let outcome = classify(StatusCode::from_u16(s).unwrap(), &h, b"");
            assert!(matches!(outcome, Outcome::Rejected { .. }), "{s}");
        }
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &h, b"bad\nimage"),
            Outcome::Rejected {
                status: 400,
                response: "badimage".into()
            }
        );
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h, b""),
            Outcome::Transient {
                reason: "the endpoint answered 503 Service Unavailable".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn redirects_hold_the_queue_and_say_where() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("https://new.example/hook"),
        );
        match classify(StatusCode::MOVED_PERMANENTLY, &h, b"") {
            Outcome::Transient { reason, .. } => {
                assert!(reason.contains("https://new.example/hook"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&soon).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        };
        for n in 0..40 {
            let d = backoff(&p, n);
            assert!(d <= Duration::from_secs(300), "{n}: {d:?}");
        }
        assert!(backoff(&p, 0) <= Duration::from_secs(1));
    }
}
