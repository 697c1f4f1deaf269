//! A fast report receiver: hyper on loopback, answers 200 at once, and remembers when each
//! deployment name first arrived (monotonic and wall clock).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub at: Instant,
    pub wall_ns: i128,
}

#[derive(Default)]
struct Log {
    first: HashMap<String, Hit>,
    requests: usize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    distinct: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct Body {
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    name: String,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, distinct) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let shared = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let log = shared.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, log.clone(), tx.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            log,
            distinct,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/deployments", self.addr)
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

    pub fn distinct(&self) -> usize {
        *self.distinct.borrow()
    }

    pub fn requests(&self) -> usize {
        self.log.lock().unwrap().requests
    }

    pub fn hit(&self, name: &str) -> Option<Hit> {
        self.log.lock().unwrap().first.get(name).copied()
    }

    /// The last first-arrival among the names not in `except`.
    pub fn last_except(&self, except: &std::collections::HashSet<String>) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        log.first
            .iter()
            .filter(|(name, _)| !except.contains(*name))
            .map(|(_, h)| h.at)
            .max()
    }

    /// The first and the last first-arrival.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let log = self.log.lock().unwrap();
        let first = log.first.values().map(|h| h.at).min()?;
        let last = log.first.values().map(|h| h.at).max()?;
        Some((first, last))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Log>>,
    distinct: Arc<watch::Sender<usize>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let hit = Hit {
        at: Instant::now(),
        wall_ns: crate::util::wall_ns(),
    };
    let name = serde_json::from_slice::<Body>(&bytes)
        .map(|b| b.image.name)
        .unwrap_or_default();
    {
        let mut log = log.lock().unwrap();
        log.requests += 1;
        log.first.entry(name).or_insert(hit);
        let n = log.first.len();
        distinct.send_if_modified(|d| {
            let changed = *d != n;
            *d = n;
            changed
        });
    }
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"correlation_id":"bench"}"#,
    ))))
}
