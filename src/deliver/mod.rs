//! Delivery, in two parts behind one small trait:
//!
//! - `http`: the HTTP client and what it makes of each answer (`Outcome`), plus the dry
//!   run's printer; a `Sink` each.
//! - `dispatch`: the state machine that drains the outbox into a `Sink`: bounded
//!   concurrency, never two requests for one key at once, an endpoint-wide hold with one
//!   probe at a time, backoff with `Retry-After` as a floor, reminders while held, and the
//!   shutdown grace. It never touches the network, so it is tested in-process with a
//!   scripted sink and paused time.
//!
//! The dispatcher reads the queue through the `Queue` trait (`queue`): the outbox in the
//! agent, an in-memory queue in the tests (`script`, with the scripted sink, which the
//! tests of `report`'s attempts use too).

mod dispatch;
mod http;
mod queue;
#[cfg(test)]
pub(crate) mod script;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Token;
use crate::deployment::DeploymentKey;

pub use dispatch::{Dispatcher, REMINDER_FIRST};
pub use http::{
    classify, parse_retry_after, wrong_endpoint, DryRun, HttpSink, PROBE_BODY, USER_AGENT_VALUE,
};
pub use queue::Queue;

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
    /// The endpoint cannot take any report until the configuration changes (a wrong URL, a
    /// redirect, an https:// URL to a plain-HTTP server): held and retried like
    /// `Unauthorized`.
    Misconfigured {
        reason: String,
    },
    /// Any other 4xx: this report will never be accepted.
    Rejected {
        status: u16,
        response: String,
    },
}

/// What the delivery layer fails with. Answers of the endpoint are not errors: they are
/// `Outcome`s.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the token holds characters an HTTP header cannot carry")]
    TokenNotAHeader,
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The TLS client read a plain-HTTP answer: the URL's scheme is wrong.
    #[error("{}", http::PLAIN_HTTP_ANSWER)]
    PlainHttp,
    /// No answer: what failed, and the innermost cause's words, without the URL.
    #[error("{kind}: {cause}")]
    Request { kind: RequestFailure, cause: String },
    /// The queue under the dispatcher failed.
    #[error(transparent)]
    Queue(#[from] crate::outbox::Error),
}

/// How a request that got no HTTP answer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    #[error("timed out")]
    TimedOut,
    #[error("cannot connect")]
    Connect,
    #[error("request failed")]
    Other,
}

/// A sink's answer to come: boxed, so that the dispatcher holds any sink as `dyn Sink` (the
/// endpoint or the dry run's printer, chosen at start). One allocation per report is
/// nothing beside the request it stands for.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Where reports go.
pub trait Sink: Send + Sync {
    /// Deliver one report's body, and say what came of it.
    fn send<'a>(&'a self, body: &'a str) -> Sending<'a>;

    /// A dry run prints instead of sending.
    fn is_dry_run(&self) -> bool {
        false
    }

    /// Where reports go, for messages: the URL without credentials; none for the dry run.
    fn endpoint(&self) -> Option<String> {
        None
    }

    /// The same sink sending `token` (a rotated one) instead of its own; none when the token
    /// is the one it sends, or it sends none.
    fn with_token(&self, _token: &Token) -> Result<Option<Arc<dyn Sink>>, Error> {
        Ok(None)
    }
}

/// The endpoint when one is configured and this is not a dry run, else stdout.
pub fn sink_for(config: &crate::config::Config) -> Result<Arc<dyn Sink>, Error> {
    Ok(match (&config.url, &config.token, config.dry_run) {
        (Some(url), Some(token), false) => Arc::new(HttpSink::new(
            url.clone(),
            token,
            config.request_timeout,
            &config.ca_certificates,
        )?),
        _ => Arc::new(DryRun),
    })
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
