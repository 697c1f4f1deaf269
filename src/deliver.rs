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

use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::config::{Token, TokenFile};
use crate::deployment::DeploymentKey;
use crate::outbox::{Outbox, Pending, Settle};
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
/// While the queue is held, a reminder is logged after this long at first...
pub const REMINDER_FIRST: Duration = Duration::from_secs(60);
/// ...then at twice the previous interval, up to this: a day-long outage writes about 30.
const REMINDER_MAX: Duration = Duration::from_secs(3600);
/// What a TLS client reads when the server speaks plain HTTP.
const PLAIN_HTTP_ANSWER: &str = "the endpoint answered in plain HTTP to a TLS (https://) request: \
    the URL says https:// but the server at that address speaks http://; use an http:// URL, \
    or the address of the endpoint's TLS listener";

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    /// Network error, timeout, 408, 425, 429, 5xx: try again later.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 401/403: the credentials are wrong for every report.
    Unauthorized {
        status: u16,
    },
    /// The endpoint cannot take any report until the configuration changes (a redirect, an
    /// https:// URL to a plain-HTTP server): held and retried like `Unauthorized`.
    Misconfigured {
        reason: String,
    },
    /// Any other 4xx: this report will never be accepted.
    Rejected {
        status: u16,
        response: String,
    },
}

fn is_wrong_endpoint(status: u16) -> bool {
    matches!(status, 404 | 405 | 410)
}

/// What a 404, 405 or 410 says about the URL.
pub fn wrong_endpoint(status: u16) -> &'static str {
    match status {
        404 => "no endpoint at this URL (404): is --url mistyped?",
        405 => "this URL does not take a POST (405): is --url the endpoint's address?",
        410 => "the endpoint at this URL is gone (410): was it deleted? set --url to the new one",
        _ => "this URL takes no reports",
    }
}

/// Classify an HTTP answer per the API contract.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let code = status.as_u16();
    match code {
        200..=299 => Outcome::Delivered { status: code },
        401 | 403 => Outcome::Unauthorized { status: code },
        // A mistyped or deleted endpoint URL: wrong for every report, like the credentials.
        404 | 405 | 410 => Outcome::Misconfigured {
            reason: wrong_endpoint(code).into(),
        },
        // Redirects are not followed (a client following a 301 turns the POST into a GET):
        // the endpoint is misconfigured for every report, so hold and say where it points.
        300..=399 => Outcome::Misconfigured {
            reason: format!(
                "the endpoint answered {status} and points to {}: set --url to that address",
                headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| "nowhere".to_string(), crate::config::redact_url)
            ),
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

impl Sink {
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

    /// A dry run prints instead of sending.
    pub fn is_dry_run(&self) -> bool {
        matches!(self, Sink::Stdout)
    }

    pub async fn send(&self, body: &str) -> Outcome {
        match self {
            Sink::Http(http) => http.send(body).await,
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{body}").and_then(|()| out.flush()) {
                    Ok(()) => Outcome::Delivered { status: 0 },
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
        let authorization = bearer(token)?;
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

    /// The same endpoint and client with another token (a rotated one); none when `token` is
    /// the one this sink sends.
    pub fn with_token(&self, token: &Token) -> Result<Option<HttpSink>, String> {
        let authorization = bearer(token)?;
        if authorization == self.authorization {
            return Ok(None);
        }
        Ok(Some(HttpSink {
            client: self.client.clone(),
            url: self.url.clone(),
            authorization,
        }))
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
                match classify(status, &headers, &body) {
                    // The URL is the likely fault: name it (without credentials).
                    Outcome::Misconfigured { reason } if is_wrong_endpoint(status.as_u16()) => {
                        Outcome::Misconfigured {
                            reason: format!(
                                "{}: {reason}",
                                crate::config::redact_url(self.url.as_str())
                            ),
                        }
                    }
                    outcome => outcome,
                }
            }
            Err(e) if answered_in_plain_http(&e) => Outcome::Misconfigured {
                reason: PLAIN_HTTP_ANSWER.into(),
            },
            Err(e) => Outcome::Transient {
                reason: describe_error(&e.without_url()),
                retry_after: None,
            },
        }
    }
}

impl HttpSink {
    /// For `check`: a POST, with the credentials, of a report the API must refuse (it has
    /// no `image.url`), so that nothing is recorded: many POST-only webhooks answer a GET
    /// with 404. Returns the status and, for a redirect, where it points (without
    /// credentials).
    pub async fn probe(&self) -> Result<(u16, Option<String>), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(PROBE_BODY)
            .send()
            .await
            .map_err(|e| {
                if answered_in_plain_http(&e) {
                    PLAIN_HTTP_ANSWER.to_string()
                } else {
                    describe_error(&e.without_url())
                }
            })?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(crate::config::redact_url);
        Ok((response.status().as_u16(), location))
    }
}

/// The body of `check`'s probe: a report without the required `image.url`.
pub const PROBE_BODY: &str = r#"{"image":{"name":"deploytrack-check"}}"#;

/// The `Authorization` header of `token`, marked sensitive (never logged by the HTTP stack).
fn bearer(token: &Token) -> Result<HeaderValue, String> {
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| "the token holds characters an HTTP header cannot carry".to_string())?;
    authorization.set_sensitive(true);
    Ok(authorization)
}

/// rustls reading an HTTP answer as a TLS record: "received corrupt message of type
/// InvalidContentType".
fn answered_in_plain_http(e: &reqwest::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("InvalidContentType") {
            return true;
        }
        cause = c.source();
    }
    false
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

/// The endpoint-wide state: while the endpoint fails, everything waits and one probe at a
/// time tests it, so an outage of hours costs a bounded number of attempts.
#[derive(Debug, Default)]
struct Hold {
    failures: u32,
    until: Option<Instant>,
    probing: bool,
    unauthorized: bool,
    /// The token could not be read again (said once per hold).
    token_unreadable: bool,
    misconfigured: bool,
    /// When the next reminder that the queue is held is due, and the interval after it.
    remind_at: Option<Instant>,
    remind_every: Duration,
}

impl Hold {
    /// A request failed. The backoff escalates once per failed probe: the first failure
    /// starts the hold; the other requests already in flight then fail for the same reason
    /// and do not count again. `probe`: the request was sent while held.
    fn count_failure(&mut self, probe: bool) {
        if probe || self.until.is_none() {
            self.failures = self.failures.saturating_add(1);
        }
    }
}

/// The interval after a reminder: twice the one before, up to `REMINDER_MAX`.
fn next_reminder_interval(every: Duration) -> Duration {
    (every * 2).min(REMINDER_MAX)
}

/// The dispatcher's requests: in flight, fetched and waiting, and the hold over them.
#[derive(Default)]
struct Flights {
    inflight: JoinSet<(Pending, Outcome, bool)>,
    inflight_keys: HashSet<DeploymentKey>,
    buffer: VecDeque<Pending>,
    hold: Hold,
    /// Set at shutdown: the time the requests in flight must end by.
    stopping: Option<Instant>,
    /// When the next report not yet due falls due (Unix milliseconds).
    next_due: Option<i64>,
    /// The sink with a token read again after a rejection, in place of `Dispatcher::sink`.
    sink: Option<Arc<Sink>>,
}

impl Flights {
    /// Nothing in flight, waiting, due later or held.
    fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.buffer.is_empty()
            && self.next_due.is_none()
            && self.hold.until.is_none()
    }

    /// When the loop must look again, at the latest.
    fn wake_at(&self) -> Instant {
        let wake = match (self.stopping, self.hold.until) {
            (Some(deadline), _) => deadline,
            (None, Some(until)) if !self.hold.probing => until,
            _ => {
                let poll = Instant::now() + IDLE_POLL;
                match self.next_due {
                    Some(ms) if self.buffer.is_empty() => {
                        let wait = Duration::from_millis((ms - now_ms()).max(0) as u64);
                        poll.min(Instant::now() + wait)
                    }
                    _ => poll,
                }
            }
        };
        match self.hold.remind_at {
            Some(at) if self.stopping.is_none() => wake.min(at),
            _ => wake,
        }
    }
}

pub struct Dispatcher {
    pub outbox: Outbox,
    /// True once the observer's first reconciliation is queued; delivery waits for it
    /// (at most `RECONCILE_GRACE`).
    pub reconciled: watch::Receiver<bool>,
    pub sink: Arc<Sink>,
    pub concurrency: usize,
    pub retry: Backoff,
    pub telemetry: Arc<Telemetry>,
    /// The first reminder while the queue is held (`REMINDER_FIRST` for the agent).
    pub reminder: Duration,
    /// Where the token is read again while the endpoint rejects it.
    pub token_reload: Option<TokenFile>,
}

impl Dispatcher {
    /// Deliver until shutdown; then let in-flight requests finish within `grace`.
    /// With `until_empty`, return as soon as nothing is pending (sync --once).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
        until_empty: bool,
    ) -> Result<(), crate::outbox::Error> {
        let mut f = Flights::default();
        let mut reconciled = self.reconciled.clone();
        tokio::select! {
            _ = tokio::time::timeout(RECONCILE_GRACE, reconciled.wait_for(|done| *done)) => {}
            _ = shutdown.changed() => {}
        }
        loop {
            self.telemetry.heartbeat_dispatcher();
            self.remind(&mut f.hold).await?;
            if f.stopping.is_none() {
                self.send_more(&mut f).await?;
            }
            if until_empty && f.is_idle() {
                // Make sure the acknowledgements are on disk and nothing else arrived.
                self.outbox.flush().await?;
                if self.outbox.due(1, false).await?.0.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if let Some(deadline) = f.stopping {
                if f.inflight.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(in_flight = f.inflight.len(), "shutdown grace period over; abandoning requests in flight (they stay queued)");
                    f.inflight.abort_all();
                    break;
                }
            }
            let wake = f.wake_at();
            let busy = !f.buffer.is_empty() && f.inflight.len() >= self.concurrency;
            tokio::select! {
                Some(joined) = f.inflight.join_next() => {
                    if let Ok((pending, outcome, probe)) = joined {
                        f.inflight_keys.remove(&pending.key);
                        self.settle(pending, outcome, probe, &mut f.hold);
                    }
                }
                _ = self.outbox.work.notified(), if !busy => {}
                _ = tokio::time::sleep_until(wake), if !busy || f.stopping.is_some() => {}
                changed = shutdown.changed(), if f.stopping.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        f.stopping = Some(Instant::now() + grace);
                    }
                }
            }
        }
        self.outbox.flush().await
    }

    /// While the queue is held, a reminder with the queue depth, the oldest report's age and
    /// the last error, at growing intervals.
    async fn remind(&self, hold: &mut Hold) -> Result<(), crate::outbox::Error> {
        let Some(at) = hold.remind_at.filter(|at| *at <= Instant::now()) else {
            return Ok(());
        };
        let stats = self.outbox.stats().await?;
        let oldest = stats.oldest_pending_ms.map_or(Duration::ZERO, |ms| {
            Duration::from_secs(((now_ms() - ms).max(0) / 1000) as u64)
        });
        tracing::warn!(
            queued = stats.pending,
            oldest = %humantime::format_duration(oldest),
            last_error = %stats.last_error.as_deref().unwrap_or("-"),
            "the endpoint still does not accept reports; they stay queued and are retried"
        );
        hold.remind_every = next_reminder_interval(hold.remind_every);
        hold.remind_at = Some(at.max(Instant::now()) + hold.remind_every);
        Ok(())
    }

    /// Start as many requests as there is room for: `concurrency` at a time, one probe at a
    /// time while held, never two of one key at once.
    async fn send_more(&self, f: &mut Flights) -> Result<(), crate::outbox::Error> {
        let now = Instant::now();
        let held = f.hold.until.is_some_and(|u| u > now);
        let capacity = if f.hold.until.is_some() {
            usize::from(!held && !f.hold.probing && f.inflight.is_empty())
        } else {
            self.concurrency.saturating_sub(f.inflight.len())
        };
        if capacity > 0 && f.buffer.is_empty() {
            let probe = f.hold.until.is_some();
            let (items, next) = self.outbox.due(64 + f.inflight.len(), !probe).await?;
            f.next_due = next;
            let inflight_keys = &f.inflight_keys;
            f.buffer.extend(
                items
                    .into_iter()
                    .filter(|p| !inflight_keys.contains(&p.key)),
            );
        }
        for _ in 0..capacity {
            let Some(pending) = f.buffer.pop_front() else {
                break;
            };
            if !f.inflight_keys.insert(pending.key.clone()) {
                continue;
            }
            let probe = f.hold.until.is_some();
            if probe && f.hold.unauthorized {
                self.read_token_again(f);
            }
            f.hold.probing |= probe;
            let sink = f.sink.clone().unwrap_or_else(|| self.sink.clone());
            f.inflight.spawn(async move {
                let outcome = sink.send(&pending.body).await;
                (pending, outcome, probe)
            });
        }
        Ok(())
    }

    /// Before a probe while the endpoint rejects the token: read the token's file again, and
    /// send the probe with the token it holds now (rotated without a restart).
    fn read_token_again(&self, f: &mut Flights) {
        let Some(file) = &self.token_reload else {
            return;
        };
        let Sink::Http(http) = f.sink.as_deref().unwrap_or(&self.sink) else {
            return;
        };
        match file
            .read()
            .map_err(|e| e.to_string())
            .and_then(|token| http.with_token(&token))
        {
            Ok(Some(rotated)) => {
                tracing::info!(
                    "read a new API token from {}; the next attempt sends it",
                    file.source
                );
                f.sink = Some(Arc::new(Sink::Http(rotated)));
                f.hold.token_unreadable = false;
            }
            Ok(None) => tracing::debug!("the token from {} is unchanged", file.source),
            Err(e) if !f.hold.token_unreadable => {
                f.hold.token_unreadable = true;
                tracing::warn!(error = %e, "cannot read the API token again; the next attempts send the one read before");
            }
            Err(_) => {}
        }
    }

    /// What the agent does about a rejected token, for the log: where it reads the token
    /// again, or why it cannot.
    fn rejected_token_advice(&self) -> String {
        match &self.token_reload {
            Some(file) if file.credential => format!(
                "the token is read again from {} before the next attempt, but systemd copies a credential only at start: after writing the new token to the file LoadCredential= names, run systemctl restart deploytrack",
                file.source
            ),
            Some(file) => format!(
                "the token is read again from {} before the next attempt: write the new token there, no restart needed",
                file.source
            ),
            None => "the token came from DEPLOYTRACK_TOKEN, which cannot change while the agent runs: set the new token and restart the agent".into(),
        }
    }

    fn settle(&self, pending: Pending, outcome: Outcome, probe: bool, hold: &mut Hold) {
        let key = pending.key.clone();
        match outcome {
            Outcome::Delivered { status } => {
                self.telemetry.delivered();
                log_delivered(&key, &pending.body, self.sink.is_dry_run());
                if hold.until.is_some() {
                    tracing::info!(
                        after_failures = hold.failures,
                        "the endpoint accepts reports again; draining the queue"
                    );
                    self.outbox.reset_backoff();
                }
                *hold = Hold::default();
                self.outbox
                    .settle(key, pending.version, Settle::Delivered { status });
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
                let delay = self.retry.delay_at_least(hold.failures, retry_after);
                // A report that keeps failing on its own (while others succeed) backs off by
                // its own attempts, so it cannot keep the queue in a loop of short holds.
                let own_delay = delay.max(self.retry.delay(pending.attempts.clamp(0, 30) as u32));
                if hold.until.is_none() {
                    tracing::warn!(reason = %reason, retry_in = %crate::clock::human(delay), "cannot deliver; holding the queue and retrying with backoff");
                } else {
                    tracing::debug!(reason = %reason, retry_in = %crate::clock::human(delay), "endpoint still failing");
                }
                self.retry_later(
                    hold,
                    probe,
                    (key, pending.version),
                    delay,
                    own_delay,
                    reason,
                );
            }
            Outcome::Misconfigured { reason } => {
                self.telemetry.delivery_failed("misconfigured");
                let delay = self.retry.delay(hold.failures);
                if !hold.misconfigured {
                    tracing::error!(reason = %reason, retry_in = %crate::clock::human(delay), "the endpoint cannot take reports until the configuration is fixed; every report stays queued and is retried");
                }
                hold.misconfigured = true;
                self.retry_later(hold, probe, (key, pending.version), delay, delay, reason);
            }
            Outcome::Unauthorized { status } => {
                self.telemetry.delivery_failed("unauthorized");
                let delay = self.retry.delay(hold.failures);
                if !hold.unauthorized {
                    tracing::error!(
                        status, retry_in = %crate::clock::human(delay),
                        "the endpoint rejected the API token; every report stays queued and is retried; {}",
                        self.rejected_token_advice()
                    );
                }
                hold.unauthorized = true;
                let error = format!("the endpoint answered {status}: credentials rejected");
                self.retry_later(hold, probe, (key, pending.version), delay, delay, error);
            }
        }
    }

    /// A failed attempt: hold the queue for `hold_for`, and try this report again after
    /// `retry_in`.
    fn retry_later(
        &self,
        hold: &mut Hold,
        probe: bool,
        (key, version): (DeploymentKey, i64),
        hold_for: Duration,
        retry_in: Duration,
        error: String,
    ) {
        self.hold(hold, hold_for, probe);
        self.outbox.settle(
            key,
            version,
            Settle::RetryAt {
                next_attempt_ms: now_ms() + retry_in.as_millis() as i64,
                error,
            },
        );
    }

    fn hold(&self, hold: &mut Hold, delay: Duration, probe: bool) {
        if hold.remind_at.is_none() {
            hold.remind_every = self.reminder;
            hold.remind_at = Some(Instant::now() + self.reminder);
        }
        hold.count_failure(probe);
        hold.probing = false;
        let until = Instant::now() + delay;
        hold.until = Some(hold.until.map_or(until, |u| u.max(until)));
    }
}

/// One line per delivery: a stop is logged as a stop, and a dry run says it sent nothing.
pub fn log_delivered(key: &DeploymentKey, body: &str, dry_run: bool) {
    let deployment = crate::deployment::Deployment::from_body(body);
    let image = deployment.as_ref().map_or("-", |d| d.image_url.as_str());
    let stopped = deployment
        .as_ref()
        .and_then(|d| d.container.as_ref())
        .is_some_and(|c| c.state == crate::deployment::ContainerState::Stopped);
    match (dry_run, stopped) {
        (false, false) => tracing::info!(key = %key, image, "deployment reported"),
        (false, true) => tracing::info!(key = %key, image, "stop reported"),
        (true, false) => {
            tracing::info!(key = %key, image, "dry run: deployment printed, not sent")
        }
        (true, true) => tracing::info!(key = %key, image, "dry run: stop printed, not sent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_takes_a_token_read_again_only_when_it_changed() {
        let path = std::env::temp_dir().join(format!(
            "deploytrack-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = TokenFile {
            path: path.clone(),
            source: format!("--token-file {}", path.display()),
            credential: false,
        };
        std::fs::write(&path, "first\n").unwrap();
        let url = reqwest::Url::parse("http://127.0.0.1:1/hook").unwrap();
        let sink = HttpSink::new(url, &file.read().unwrap(), Duration::from_secs(1), &[]).unwrap();
        assert!(sink.with_token(&file.read().unwrap()).unwrap().is_none());
        std::fs::write(&path, "second").unwrap();
        let rotated = sink.with_token(&file.read().unwrap()).unwrap().unwrap();
        assert_eq!(rotated.authorization, "Bearer second");
        assert!(rotated.authorization.is_sensitive());
        std::fs::write(&path, " \n").unwrap();
        assert_eq!(
            file.read().unwrap_err().to_string(),
            format!("the token from --token-file {} is empty", path.display())
        );
        std::fs::remove_file(&path).unwrap();
        assert!(file
            .read()
            .unwrap_err()
            .to_string()
            .starts_with(&format!("cannot read {}: ", path.display())));
    }

    #[test]
    fn classification() {
        let h = HeaderMap::new();
        assert_eq!(
            classify(StatusCode::OK, &h, b""),
            Outcome::Delivered { status: 200 }
        );
        assert_eq!(
            classify(StatusCode::ACCEPTED, &h, b""),
            Outcome::Delivered { status: 202 }
        );
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
    fn a_wrong_url_holds_the_queue() {
        let h = HeaderMap::new();
        for (s, says) in [(404, "(404)"), (405, "(405)"), (410, "(410)")] {
            match classify(StatusCode::from_u16(s).unwrap(), &h, b"") {
                Outcome::Misconfigured { reason } => assert!(reason.contains(says), "{reason}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        for s in [400, 409, 413, 422] {
            let outcome = classify(StatusCode::from_u16(s).unwrap(), &h, b"");
            assert!(matches!(outcome, Outcome::Rejected { .. }), "{s}");
        }
    }

    #[test]
    fn backoff_escalates_once_per_failed_probe() {
        let mut hold = Hold::default();
        // Four requests in flight when the endpoint goes down: one step, not four.
        hold.count_failure(false);
        hold.until = Some(Instant::now());
        for _ in 0..3 {
            hold.count_failure(false);
        }
        assert_eq!(hold.failures, 1);
        // Then each failed probe is one more step.
        hold.count_failure(true);
        hold.count_failure(true);
        assert_eq!(hold.failures, 3);
    }

    #[test]
    fn redirects_hold_the_queue_and_say_where() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("https://new.example/hook"),
        );
        match classify(StatusCode::MOVED_PERMANENTLY, &h, b"") {
            Outcome::Misconfigured { reason } => {
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

    /// When each reminder of a hold falls, from its start, over `over`.
    fn reminder_times(first: Duration, over: Duration) -> Vec<Duration> {
        let (mut at, mut every, mut times) = (first, first, Vec::new());
        while at <= over {
            times.push(at);
            every = next_reminder_interval(every);
            at += every;
        }
        times
    }

    #[test]
    fn a_day_long_outage_writes_a_few_dozen_reminders() {
        let day = reminder_times(REMINDER_FIRST, Duration::from_secs(24 * 3600));
        assert!((20..=40).contains(&day.len()), "{} reminders", day.len());
        let secs: Vec<u64> = day.iter().take(4).map(Duration::as_secs).collect();
        assert_eq!(secs, [60, 180, 420, 900]);
        let gaps: Vec<Duration> = day.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= REMINDER_MAX));
        assert_eq!(gaps.last(), Some(&REMINDER_MAX));
    }
}
