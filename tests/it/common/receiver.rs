//! A real HTTP receiver for the agent's reports, scriptable per test.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

/// What to answer: a scripted queue first, then the default.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// A `Location` header (with a 3xx).
    pub location: Option<String>,
    pub body: String,
    /// Answer only after this long (a slow endpoint).
    pub delay: Option<std::time::Duration>,
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

struct State {
    received: Vec<Received>,
    script: VecDeque<Answer>,
    default: Answer,
    /// Bodies whose image.name equals this get this answer, always.
    per_name: Vec<(String, Answer)>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// A receiver on a fresh loopback port.
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on a given address (to bring an endpoint "back" on the port it had).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        Self::serve(addr, None).await
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
        Self::serve("127.0.0.1:0".parse().unwrap(), Some(acceptor)).await
    }

    async fn serve(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            received: Vec::new(),
            script: VecDeque::new(),
            default: Answer::status(200),
            per_name: Vec::new(),
        }));
        let shared = state.clone();
        // The task ends with the test's runtime.
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
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
        Receiver { addr, state }
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

    /// The first accepted report for `name` (image.name), once it arrives.
    pub async fn accepted_report(&self, what: &str, name: &str) -> Received {
        super::eventually(what, || {
            self.accepted().into_iter().find(|r| r.name() == name)
        })
        .await
    }

    /// Accepted (2xx) reports only.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status < 300)
            .collect()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
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
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let answer = {
        let mut s = state.lock().unwrap();
        let name = body["image"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let answer = s
            .per_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.clone())
            .or_else(|| s.script.pop_front())
            .unwrap_or_else(|| s.default.clone());
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
