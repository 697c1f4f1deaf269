//! The HTTP half of delivery: the client that POSTs a report, what its answer means per the
//! API contract (`classify`), and the dry run's printer.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use reqwest::StatusCode;

use super::{Error, Outcome, RequestFailure, Sending, Sink};
use crate::config::Token;

pub const USER_AGENT_VALUE: &str = concat!("deploytrack/", env!("CARGO_PKG_VERSION"));
/// How much of a refusing answer's body is kept with a dead letter.
const RESPONSE_EXCERPT: usize = 512;
/// A `Retry-After` beyond this is treated as this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// What a TLS client reads when the server speaks plain HTTP.
pub(super) const PLAIN_HTTP_ANSWER: &str =
    "the endpoint answered in plain HTTP to a TLS (https://) request: \
    the URL says https:// but the server at that address speaks http://; use an http:// URL, \
    or the address of the endpoint's TLS listener";

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

/// The dry run's sink: each report is printed on stdout, one line each.
pub struct DryRun;

impl Sink for DryRun {
    fn send<'a>(&'a self, body: &'a str) -> Sending<'a> {
        Box::pin(async move {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{body}").and_then(|()| out.flush()) {
                Ok(()) => Outcome::Delivered { status: 0 },
                Err(e) => Outcome::Transient {
                    reason: format!("cannot write to stdout: {e}"),
                    retry_after: None,
                },
            }
        })
    }

    fn is_dry_run(&self) -> bool {
        true
    }
}

/// The endpoint.
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
    ) -> Result<Self, Error> {
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
            .map_err(Error::Client)?;
        Ok(HttpSink {
            client,
            url,
            authorization,
        })
    }

    /// The same endpoint and client with another token (a rotated one); none when `token` is
    /// the one this sink sends.
    pub fn rotated(&self, token: &Token) -> Result<Option<HttpSink>, Error> {
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

    async fn post(&self, body: &str) -> Outcome {
        let request = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(body.to_string());
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return match no_answer(e) {
                    Error::PlainHttp => Outcome::Misconfigured {
                        reason: PLAIN_HTTP_ANSWER.into(),
                    },
                    e => Outcome::Transient {
                        reason: e.to_string(),
                        retry_after: None,
                    },
                }
            }
        };
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
                    reason: format!("{}: {reason}", crate::config::redact_url(self.url.as_str())),
                }
            }
            outcome => outcome,
        }
    }

    /// For `check`: a POST, with the credentials, of a report the API must refuse (it has
    /// no `image.url`), so that nothing is recorded: many POST-only webhooks answer a GET
    /// with 404. Returns the status and, for a redirect, where it points (without
    /// credentials).
    pub async fn probe(&self) -> Result<(u16, Option<String>), Error> {
        let response = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(PROBE_BODY)
            .send()
            .await
            .map_err(no_answer)?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(crate::config::redact_url);
        Ok((response.status().as_u16(), location))
    }
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, body: &'a str) -> Sending<'a> {
        Box::pin(self.post(body))
    }

    fn endpoint(&self) -> Option<String> {
        Some(crate::config::redact_url(self.url.as_str()))
    }

    fn with_token(&self, token: &Token) -> Result<Option<Arc<dyn Sink>>, Error> {
        Ok(self
            .rotated(token)?
            .map(|sink| Arc::new(sink) as Arc<dyn Sink>))
    }
}

/// The body of `check`'s probe: a report without the required `image.url`.
pub const PROBE_BODY: &str = r#"{"image":{"name":"deploytrack-check"}}"#;

/// The `Authorization` header of `token`, marked sensitive (never logged by the HTTP stack).
fn bearer(token: &Token) -> Result<HeaderValue, Error> {
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| Error::TokenNotAHeader)?;
    authorization.set_sensitive(true);
    Ok(authorization)
}

/// What a request that got no HTTP answer failed with.
fn no_answer(e: reqwest::Error) -> Error {
    if answered_in_plain_http(&e) {
        return Error::PlainHttp;
    }
    let e = e.without_url();
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let kind = if e.is_timeout() {
        RequestFailure::TimedOut
    } else if e.is_connect() {
        RequestFailure::Connect
    } else {
        RequestFailure::Other
    };
    Error::Request {
        kind,
        cause: cause.to_string(),
    }
}

/// rustls read an HTTP answer as a TLS record: `InvalidMessage::InvalidContentType`. The
/// connector hands it up inside `io::Error`s (one in another), and `io::Error::source` skips
/// the error it wraps, so the walk opens each `io::Error` with `get_ref` instead.
fn answered_in_plain_http(e: &reqwest::Error) -> bool {
    use rustls::{Error as Tls, InvalidMessage};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(Tls::InvalidMessage(InvalidMessage::InvalidContentType)) = c.downcast_ref() {
            return true;
        }
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TokenError, TokenFile};

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
        assert!(sink.rotated(&file.read().unwrap()).unwrap().is_none());
        std::fs::write(&path, "second").unwrap();
        let rotated = sink.rotated(&file.read().unwrap()).unwrap().unwrap();
        assert_eq!(rotated.authorization, "Bearer second");
        assert!(rotated.authorization.is_sensitive());
        std::fs::write(&path, " \n").unwrap();
        let from = format!("--token-file {}", path.display());
        assert!(
            matches!(file.read(), Err(TokenError::Empty { from: f }) if f == from),
            "{:?}",
            file.read()
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(file.read(), Err(TokenError::Unreadable { path: p, .. }) if p == path),
            "{:?}",
            file.read()
        );
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

    /// A server on 127.0.0.1 that answers every connection with `answer` (none: it reads
    /// and never answers); it keeps the first line of each request it read.
    async fn server(
        answer: Option<&'static [u8]>,
    ) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let first = text.lines().next().unwrap_or_default().to_string();
                    seen.lock().unwrap().push(first);
                    match answer {
                        Some(answer) => drop(conn.write_all(answer).await),
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (addr, requests)
    }

    fn sink_to(url: &str, timeout: Duration) -> HttpSink {
        let url = reqwest::Url::parse(url).unwrap();
        let path = std::env::temp_dir().join(format!(
            "deploytrack-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, "secret-token").unwrap();
        let file = TokenFile {
            source: format!("--token-file {}", path.display()),
            path,
            credential: false,
        };
        let token = file.read().unwrap();
        std::fs::remove_file(&file.path).unwrap();
        HttpSink::new(url, &token, timeout, &[]).unwrap()
    }

    #[tokio::test]
    async fn an_https_url_to_a_plain_http_server_is_a_configuration_error() {
        let (addr, _) = server(Some(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let sink = sink_to(&format!("https://{addr}/hook"), Duration::from_secs(10));
        assert_eq!(
            sink.send("{}").await,
            Outcome::Misconfigured {
                reason: PLAIN_HTTP_ANSWER.into()
            }
        );
        let probe = sink.probe().await.unwrap_err();
        assert!(matches!(probe, Error::PlainHttp), "{probe:?}");
        assert_eq!(probe.to_string(), PLAIN_HTTP_ANSWER);
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_is_transient() {
        let (addr, _) = server(None).await;
        let sink = sink_to(&format!("http://{addr}/hook"), Duration::from_millis(200));
        assert_eq!(
            sink.send("{}").await,
            Outcome::Transient {
                reason: "timed out: operation timed out".into(),
                retry_after: None
            }
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_transient_and_the_error_names_no_url() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let sink = sink_to(
            &format!("http://{addr}/secret-path"),
            Duration::from_secs(5),
        );
        let probe = sink.probe().await.unwrap_err();
        assert!(
            matches!(
                &probe,
                Error::Request {
                    kind: RequestFailure::Connect,
                    ..
                }
            ),
            "{probe:?}"
        );
        let outcome = sink.send("{}").await;
        let Outcome::Transient {
            reason,
            retry_after: None,
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(reason, &probe.to_string());
        assert!(!reason.contains("secret-path"), "{reason}");
    }

    #[tokio::test]
    async fn a_wrong_url_is_named_in_the_reason() {
        let (addr, _) = server(Some(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")).await;
        let sink = sink_to(&format!("http://{addr}/hook"), Duration::from_secs(10));
        assert_eq!(
            sink.send("{}").await,
            Outcome::Misconfigured {
                reason: format!(
                    "http://{addr}/hook: no endpoint at this URL (404): is --url mistyped?"
                )
            }
        );
    }

    #[test]
    fn the_endpoint_is_named_without_credentials() {
        let sink = sink_to(
            "https://deploy:s3cret@example.com/hook",
            Duration::from_secs(1),
        );
        assert_eq!(
            sink.endpoint().as_deref(),
            Some("https://<redacted>@example.com/hook")
        );
        assert_eq!(DryRun.endpoint(), None);
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (addr, requests) = server(Some(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://user:secret@new.example/hook\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let sink = sink_to(&format!("http://{addr}/hook"), Duration::from_secs(10));
        assert_eq!(
            sink.send("{}").await,
            Outcome::Misconfigured {
                reason: "the endpoint answered 301 Moved Permanently and points to https://<redacted>@new.example/hook: set --url to that address".into()
            }
        );
        assert_eq!(*requests.lock().unwrap(), ["POST /hook HTTP/1.1"]);
    }
}
