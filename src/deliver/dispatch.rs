//! The dispatcher: drains the queue into a `Sink` with bounded concurrency, never two
//! requests for one key at once, backoff with `Retry-After` as a floor, and an
//! endpoint-wide hold with one probe at a time; reminds while held; lets requests in flight
//! finish within a grace period at shutdown.
//!
//! What ends a hold: a success that shows the endpoint takes reports now. The probe, sent
//! when the hold's time is up and so after the hold began, always does. A request sent
//! before the hold began (in flight when another failed) does too, unless the endpoint
//! asked for the pause with `Retry-After`: that request was sent before the answer that
//! asked, so its success says nothing of the endpoint since. `Retry-After` is a floor for
//! the whole endpoint: nothing is sent before it, and only the probe's answer ends that
//! hold. Without `Retry-After` (a timeout, a 5xx), and for a rejected token or a wrong URL,
//! any success ends the hold: the endpoint took a report, with the same token at the same
//! URL.
//!
//! Its timers are tokio's, and the queue's times are read on the queue's clock, so that
//! its tests drive it with a scripted sink and an in-memory queue on paused time.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{log_delivered, Error, Outcome, Queue, Sink};
use crate::backoff::Backoff;
use crate::config::TokenFile;
use crate::deployment::DeploymentKey;
use crate::outbox::{Outbox, Pending, Settle};
use crate::telemetry::Telemetry;

#[cfg(test)]
mod tests;

/// The dispatcher looks at the queue at least this often (operators may change it).
const IDLE_POLL: Duration = Duration::from_secs(2);
/// How long delivery waits at start for the first reconciliation.
const RECONCILE_GRACE: Duration = Duration::from_secs(5);
/// While the queue is held, a reminder is logged after this long at first...
pub const REMINDER_FIRST: Duration = Duration::from_secs(60);
/// ...then at twice the previous interval, up to this: a day-long outage writes about 30.
const REMINDER_MAX: Duration = Duration::from_secs(3600);

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
    /// The endpoint asked (`Retry-After`) not to be asked again before this: only the probe's
    /// answer ends the hold.
    asked_until: Option<Instant>,
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
    /// When the next report not yet due falls due (Unix milliseconds, on the queue's clock).
    next_due: Option<i64>,
    /// The sink with a token read again after a rejection, in place of `Dispatcher::sink`.
    sink: Option<Arc<dyn Sink>>,
}

impl Flights {
    /// Nothing in flight, waiting, due later or held.
    fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.buffer.is_empty()
            && self.next_due.is_none()
            && self.hold.until.is_none()
    }

    /// When the loop must look again, at the latest; `now_ms` on the queue's clock.
    fn wake_at(&self, now_ms: i64) -> Instant {
        let now = Instant::now();
        let wake = match (self.stopping, self.hold.until) {
            (Some(deadline), _) => deadline,
            // Held: the probe goes when the hold's time is up...
            (None, Some(until))
                if !self.hold.probing && (until > now || self.inflight.is_empty()) =>
            {
                until
            }
            // ...or, with a probe or an earlier request still in flight, once that ends
            // (the loop wakes on it); until then, nothing to do.
            (None, Some(_)) => now + IDLE_POLL,
            _ => {
                let poll = now + IDLE_POLL;
                match self.next_due {
                    Some(ms) if self.buffer.is_empty() => {
                        let wait = Duration::from_millis((ms - now_ms).max(0) as u64);
                        poll.min(now + wait)
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

pub struct Dispatcher<Q: Queue = Outbox> {
    pub outbox: Q,
    /// True once the observer's first reconciliation is queued; delivery waits for it
    /// (at most `RECONCILE_GRACE`).
    pub reconciled: watch::Receiver<bool>,
    pub sink: Arc<dyn Sink>,
    pub concurrency: usize,
    pub retry: Backoff,
    pub telemetry: Arc<Telemetry>,
    /// The first reminder while the queue is held (`REMINDER_FIRST` for the agent).
    pub reminder: Duration,
    /// Where the token is read again while the endpoint rejects it.
    pub token_reload: Option<TokenFile>,
}

impl<Q: Queue> Dispatcher<Q> {
    /// Deliver until shutdown; then let in-flight requests finish within `grace`.
    /// With `until_empty`, return as soon as nothing is pending (sync --once).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
        until_empty: bool,
    ) -> Result<(), Error> {
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
            if f.stopping
                .is_some_and(|deadline| self.stopped(&mut f, deadline))
            {
                break;
            }
            let wake = f.wake_at(self.outbox.now_ms());
            let busy = !f.buffer.is_empty() && f.inflight.len() >= self.concurrency;
            tokio::select! {
                Some(joined) = f.inflight.join_next() => {
                    if let Ok((pending, outcome, probe)) = joined {
                        f.inflight_keys.remove(&pending.key);
                        self.settle(pending, outcome, probe, &mut f.hold);
                    }
                }
                _ = self.outbox.work().notified(), if !busy => {}
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

    /// While stopping: true once nothing is in flight, or the grace period is over (then
    /// what is still in flight is abandoned, and stays queued).
    fn stopped(&self, f: &mut Flights, deadline: Instant) -> bool {
        if f.inflight.is_empty() {
            return true;
        }
        if Instant::now() < deadline {
            return false;
        }
        tracing::warn!(
            in_flight = f.inflight.len(),
            "shutdown grace period over; abandoning requests in flight (they stay queued)"
        );
        f.inflight.abort_all();
        true
    }

    /// While the queue is held, a reminder with the queue depth, the oldest report's age and
    /// the last error, at growing intervals.
    async fn remind(&self, hold: &mut Hold) -> Result<(), Error> {
        let Some(at) = hold.remind_at.filter(|at| *at <= Instant::now()) else {
            return Ok(());
        };
        let stats = self.outbox.stats().await?;
        let oldest = stats.oldest_pending_ms.map_or(Duration::ZERO, |ms| {
            Duration::from_secs(((self.outbox.now_ms() - ms).max(0) / 1000) as u64)
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
    async fn send_more(&self, f: &mut Flights) -> Result<(), Error> {
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
        let sink = f.sink.as_ref().unwrap_or(&self.sink);
        match file.read().map(|token| sink.with_token(&token)) {
            Ok(Ok(Some(rotated))) => {
                tracing::info!(
                    "read a new API token from {}; the next attempt sends it",
                    file.source
                );
                f.sink = Some(rotated);
                f.hold.token_unreadable = false;
            }
            Ok(Ok(None)) => tracing::debug!("the token from {} is unchanged", file.source),
            Ok(Err(e)) => token_unreadable(&mut f.hold, &e),
            Err(e) => token_unreadable(&mut f.hold, &e),
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
}

/// The token could not be read again: said once per hold.
fn token_unreadable(hold: &mut Hold, e: &dyn std::fmt::Display) {
    if !hold.token_unreadable {
        hold.token_unreadable = true;
        tracing::warn!(error = %e, "cannot read the API token again; the next attempts send the one read before");
    }
}

/// What came of each request: recorded in the queue, and the hold updated.
impl<Q: Queue> Dispatcher<Q> {
    fn settle(&self, pending: Pending, outcome: Outcome, probe: bool, hold: &mut Hold) {
        match outcome {
            Outcome::Delivered { status } => self.delivered(pending, status, probe, hold),
            Outcome::Rejected { status, response } => {
                self.telemetry.dead_lettered();
                tracing::warn!(key = %pending.key, status, response = %response, "the endpoint refused this report; moved it to the dead letters (deploytrack queue dead)");
                hold.probing = false;
                self.outbox.settle(
                    pending.key,
                    pending.version,
                    Settle::Dead { status, response },
                );
            }
            Outcome::Transient {
                reason,
                retry_after,
            } => self.transient(pending, reason, retry_after, probe, hold),
            Outcome::Misconfigured { reason } => {
                self.telemetry.delivery_failed("misconfigured");
                let delay = self.retry.delay(hold.failures);
                if !hold.misconfigured {
                    tracing::error!(reason = %reason, retry_in = %crate::clock::human(delay), "the endpoint cannot take reports until the configuration is fixed; every report stays queued and is retried");
                }
                hold.misconfigured = true;
                self.retry_later(hold, probe, &pending, (delay, delay), reason);
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
                self.retry_later(hold, probe, &pending, (delay, delay), error);
            }
        }
    }

    /// `probe`: the request was sent while held, so after the hold began.
    fn delivered(&self, pending: Pending, status: u16, probe: bool, hold: &mut Hold) {
        self.telemetry.delivered();
        log_delivered(&pending.key, &pending.body, self.sink.is_dry_run());
        match hold.asked_until {
            // Sent before the endpoint asked for a pause: the pause stands.
            Some(asked_until) if !probe => tracing::debug!(
                key = %pending.key,
                wait = %crate::clock::human(asked_until.saturating_duration_since(Instant::now())),
                "delivered a report sent before the endpoint asked to wait (Retry-After); the queue stays held"
            ),
            _ => {
                if hold.until.is_some() {
                    tracing::info!(
                        after_failures = hold.failures,
                        "the endpoint accepts reports again; draining the queue"
                    );
                    self.outbox.reset_backoff();
                }
                *hold = Hold::default();
            }
        }
        self.outbox
            .settle(pending.key, pending.version, Settle::Delivered { status });
    }

    fn transient(
        &self,
        pending: Pending,
        reason: String,
        retry_after: Option<Duration>,
        probe: bool,
        hold: &mut Hold,
    ) {
        self.telemetry.delivery_failed("transient");
        let delay = self.retry.delay_at_least(hold.failures, retry_after);
        // A report that keeps failing on its own (while others succeed) backs off by its own
        // attempts, so it cannot keep the queue in a loop of short holds.
        let own_delay = delay.max(self.retry.delay(pending.attempts.clamp(0, 30) as u32));
        if hold.until.is_none() {
            tracing::warn!(reason = %reason, retry_in = %crate::clock::human(delay), "cannot deliver; holding the queue and retrying with backoff");
        } else {
            tracing::debug!(reason = %reason, retry_in = %crate::clock::human(delay), "endpoint still failing");
        }
        self.retry_later(hold, probe, &pending, (delay, own_delay), reason);
        if let Some(wait) = retry_after.filter(|wait| !wait.is_zero()) {
            let asked_until = Instant::now() + wait;
            hold.asked_until = Some(hold.asked_until.map_or(asked_until, |u| u.max(asked_until)));
        }
    }

    /// A failed attempt: hold the queue for `hold_for`, and try this report again after
    /// `retry_in`.
    fn retry_later(
        &self,
        hold: &mut Hold,
        probe: bool,
        pending: &Pending,
        (hold_for, retry_in): (Duration, Duration),
        error: String,
    ) {
        self.hold(hold, hold_for, probe);
        self.outbox.settle(
            pending.key.clone(),
            pending.version,
            Settle::RetryAt {
                next_attempt_ms: self.outbox.now_ms() + retry_in.as_millis() as i64,
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
