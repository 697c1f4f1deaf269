//! A real HTTP endpoint for the agent's reports, on loopback: scriptable answers per test,
//! and the arrival of each deployment name (monotonic and wall clock) for the benchmarks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub body: serde_json::Value,
    pub status: u16,
}

impl Received {
    pub fn name(&self) -> &str {
        self.body["image"]["name"].as_str().unwrap_or_default()
    }
    pub fn url(&self) -> &str {
        self.body["image"]["url"].as_str().unwrap_or_default()
    }
    pub fn environment(&self) -> &str {
        self.body["environment"]["name"]
            .as_str()
            .unwrap_or_default()
    }
}

/// When a deployment name first arrived.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub at: Instant,
    pub wall_ns: i128,
}

/// What to answer: a scripted queue first, then the default.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// A `Location` header (with a 3xx).
    pub location: Option<String>,
    pub body: String,
    /// Answer only after this long (a slow endpoint).
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            retry_after: None,
            location: None,
            delay: None,
            body: if status < 300 {
                r#"{"correlation_id":"test"}"#.into()
            } else {
                format!(r#"{{"error":"status {status}"}}"#)
            },
        }
    }
}

/// What the receiver keeps of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Every request, headers and body (the tests).
    Everything,
    /// The first arrival of each name only, read without building a JSON tree: the
    /// benchmarks' receiver shares the cores with the agent it measures.
    FirstArrivals,
}

struct State {
    keep: Keep,
    received: Vec<Received>,
    first: HashMap<String, Hit>,
    requests: usize,
    script: VecDeque<Answer>,
    default: Answer,
    /// Bodies whose image.name equals this get this answer, always.
    per_name: Vec<(String, Answer)>,
    /// Take a report without `image.url` as any other (a lenient endpoint); by default it is
    /// refused with 400, as the API requires the field.
    accept_invalid: bool,
}

/// Ends the accept loop when the last handle to the receiver is dropped.
struct Serving(tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    distinct: watch::Receiver<usize>,
    _serving: Arc<Serving>,
}

impl Receiver {
    /// A receiver on a fresh loopback port.
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on a given address (to bring an endpoint "back" on the port it had).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        Self::serve(addr, None, Keep::Everything).await
    }

    /// A receiver that keeps only when each name first arrived (for many thousands of reports).
    pub async fn first_arrivals() -> Receiver {
        Self::first_arrivals_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn first_arrivals_on(addr: SocketAddr) -> Receiver {
        Self::serve(addr, None, Keep::FirstArrivals).await
    }

    /// An https:// receiver on loopback with this certificate and key (PEM files).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::serve(
            "127.0.0.1:0".parse().unwrap(),
            Some(acceptor),
            Keep::Everything,
        )
        .await
    }

    async fn serve(
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        keep: Keep,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            keep,
            received: Vec::new(),
            first: HashMap::new(),
            requests: 0,
            script: VecDeque::new(),
            default: Answer::status(200),
            per_name: Vec::new(),
            accept_invalid: false,
        }));
        let (distinct_tx, distinct) = watch::channel(0usize);
        let distinct_tx = Arc::new(distinct_tx);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = shared.clone();
                let distinct = distinct_tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, state.clone(), distinct.clone()));
                    let http = http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            // A client that refuses the certificate ends the handshake here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            state,
            distinct,
            _serving: Arc::new(Serving(task)),
        }
    }

    /// `https://127.0.0.1:PORT/...` for a receiver started with `start_tls`.
    pub fn https_url(&self) -> String {
        format!("https://{}/atomist/resource/test", self.addr)
    }

    pub fn url(&self) -> String {
        format!("http://{}/atomist/resource/test", self.addr)
    }

    pub fn set_default(&self, answer: Answer) {
        self.state.lock().unwrap().default = answer;
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    /// Accept reports without `image.url` too, as a lenient endpoint would.
    pub fn accept_invalid(&self, accept: bool) {
        self.state.lock().unwrap().accept_invalid = accept;
    }

    pub fn answer_for_name(&self, name: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .per_name
            .push((name.to_string(), answer));
    }

    pub fn clear_per_name(&self) {
        self.state.lock().unwrap().per_name.clear();
    }

    /// Every request, in the order they came (empty for `first_arrivals`).
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// True once a report for `name` (image.name) was accepted.
    pub fn reported(&self, name: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .any(|r| r.status < 300 && r.name() == name)
    }

    /// The first accepted report for `name` (image.name), once it arrives; the test fails
    /// after `crate::PATIENCE`.
    pub async fn accepted_report(&self, what: &str, name: &str) -> Received {
        let start = Instant::now();
        loop {
            if let Some(r) = self.accepted().into_iter().find(|r| r.name() == name) {
                return r;
            }
            if start.elapsed() > crate::PATIENCE {
                panic!("timed out after {:?} waiting for: {what}", crate::PATIENCE);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Accepted (2xx) reports only.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status < 300)
            .collect()
    }

    /// Wait until `n` distinct deployment names arrived.
    pub async fn wait_distinct(&self, n: usize, patience: Duration) -> Result<(), String> {
        let mut rx = self.distinct.clone();
        let result = tokio::time::timeout(patience, rx.wait_for(|d| *d >= n)).await;
        match result {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "the receiver got {} of {n} reports within {patience:?}",
                self.distinct()
            )),
        }
    }

    /// How many distinct deployment names arrived.
    pub fn distinct(&self) -> usize {
        *self.distinct.borrow()
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// When `name` first arrived.
    pub fn hit(&self, name: &str) -> Option<Hit> {
        self.state.lock().unwrap().first.get(name).copied()
    }

    /// The last first-arrival among the names not in `except`.
    pub fn last_except(&self, except: &HashSet<String>) -> Option<Instant> {
        let state = self.state.lock().unwrap();
        state
            .first
            .iter()
            .filter(|(name, _)| !except.contains(*name))
            .map(|(_, h)| h.at)
            .max()
    }

    /// The first and the last first-arrival.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let state = self.state.lock().unwrap();
        let first = state.first.values().map(|h| h.at).min()?;
        let last = state.first.values().map(|h| h.at).max()?;
        Some((first, last))
    }
}

/// Only `image.name`, for `Keep::FirstArrivals`.
#[derive(serde::Deserialize)]
struct NameOnly {
    image: ImageName,
}

#[derive(serde::Deserialize)]
struct ImageName {
    name: String,
}

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    distinct: Arc<watch::Sender<usize>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let (authorization, content_type, user_agent) = (
        header("authorization"),
        header("content-type"),
        header("user-agent"),
    );
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let hit = Hit {
        at: Instant::now(),
        wall_ns: wall_ns(),
    };
    let keep = state.lock().unwrap().keep;
    let (name, body) = match keep {
        Keep::FirstArrivals => (
            serde_json::from_slice::<NameOnly>(&bytes)
                .map(|b| b.image.name)
                .unwrap_or_default(),
            serde_json::Value::Null,
        ),
        Keep::Everything => {
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let name = body["image"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (name, body)
        }
    };
    // What the API requires; checked only where the tests keep bodies (not the benchmarks').
    let invalid = keep == Keep::Everything && method == "POST" && body["image"]["url"].is_null();
    let answer = {
        let mut s = state.lock().unwrap();
        let answer = s
            .per_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.clone())
            .or_else(|| s.script.pop_front())
            .unwrap_or_else(|| s.default.clone());
        // An endpoint that takes the report otherwise refuses it for the missing field.
        let answer = match answer.status {
            200..=299 if invalid && !s.accept_invalid => Answer {
                body: r#"{"error":"image.url is required"}"#.into(),
                ..Answer::status(400)
            },
            _ => answer,
        };
        s.requests += 1;
        if s.keep == Keep::Everything {
            s.received.push(Received {
                at,
                method,
                path,
                authorization,
                content_type,
                user_agent,
                body,
                status: answer.status,
            });
        }
        if answer.status < 300 {
            s.first.entry(name).or_insert(hit);
        }
        let n = s.first.len();
        distinct.send_if_modified(|d| {
            let changed = *d != n;
            *d = n;
            changed
        });
        answer
    };
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    if let Some(l) = answer.location {
        response
            .headers_mut()
            .insert("location", l.parse().unwrap());
    }
    if let Some(r) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", r.parse().unwrap());
    }
    Ok(response)
}
