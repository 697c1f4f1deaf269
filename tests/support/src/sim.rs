//! A simulated Docker Engine on a unix socket, for the benchmarks and for tests that set the
//! pace of events themselves: the few Engine API calls the agent makes (GET /_ping, /info,
//! /version, /containers/json, /containers/{id}/json, /images/{id}/json and the /events
//! stream), answered at once. Container `i` has a fixed id, the name
//! `sim-i` and one image with a repo digest. Start events are sent as fast as the agent
//! reads them, or spread evenly over a given time.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

pub const HOST: &str = "bench-sim";
pub const LABEL: &str = "deploytrack.bench.sim";
const IMAGE_REF: &str = "localhost:5000/deploytrack-bench/app:1";
const IMAGE_ID: &str = "sha256:5f0c7a9ed1a3b0a5e6c3d9f1b2e4a6c8d0f1e3a5c7b9d1f3e5a7c9b1d3f5e7a9";
const REPO_DIGEST: &str =
    "localhost:5000/deploytrack-bench/app@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// Events per frame of the stream when sending as fast as possible.
const EVENTS_PER_FRAME: usize = 32;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Start events for containers `first..first + count`, evenly over `spread` (None: at once).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub first: usize,
    pub count: usize,
    pub spread: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SimStats {
    pub first_event: Option<Instant>,
    pub last_event: Option<Instant>,
    pub last_inspect: Option<Instant>,
}

struct State {
    running: Mutex<Vec<usize>>,
    auto: Mutex<Option<Plan>>,
    subscriber: Mutex<Option<mpsc::Sender<Bytes>>>,
    stats: Mutex<SimStats>,
    events_sent: AtomicUsize,
    inspects: AtomicUsize,
}

pub struct Sim {
    pub path: PathBuf,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

pub fn container_id(i: usize) -> String {
    format!("b0b0b0b0{i:056x}")
}

pub fn container_name(i: usize) -> String {
    format!("sim-{i}")
}

pub fn index_of(id: &str) -> Option<usize> {
    let rest = id.strip_prefix("b0b0b0b0")?;
    if rest.len() != 56 {
        return None;
    }
    usize::from_str_radix(rest, 16).ok()
}

impl Sim {
    /// Listen on `dir/engine.sock`; `running` are listed as running; `auto` is sent to the
    /// first subscriber of /events.
    pub fn start(dir: &Path, running: Vec<usize>, auto: Option<Plan>) -> Sim {
        let path = dir.join("engine.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the simulated engine socket");
        let state = Arc::new(State {
            running: Mutex::new(running),
            auto: Mutex::new(auto),
            subscriber: Mutex::new(None),
            stats: Mutex::new(SimStats::default()),
            events_sent: AtomicUsize::new(0),
            inspects: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(&state, req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sim { path, state, task }
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn stats(&self) -> SimStats {
        *self.state.stats.lock().unwrap()
    }

    pub fn events_sent(&self) -> usize {
        self.state.events_sent.load(Ordering::Relaxed)
    }

    pub fn inspects(&self) -> usize {
        self.state.inspects.load(Ordering::Relaxed)
    }

    /// Send `plan` to the current subscriber; returns at once.
    pub fn fire(&self, plan: Plan) -> Result<(), String> {
        let tx = self
            .state
            .subscriber
            .lock()
            .unwrap()
            .clone()
            .ok_or("nobody subscribed to /events")?;
        tokio::spawn(emit(self.state.clone(), tx, plan));
        Ok(())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn event_line(i: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let id = container_id(i);
    format!(
        concat!(
            r#"{{"status":"start","id":"{id}","from":"{image}","Type":"container","Action":"start","#,
            r#""Actor":{{"ID":"{id}","Attributes":{{"image":"{image}","name":"sim-{i}","{label}":"yes"}}}},"#,
            r#""scope":"local","time":{secs},"timeNano":{nanos}}}"#,
            "\n"
        ),
        id = id,
        image = IMAGE_REF,
        i = i,
        label = LABEL,
        secs = now.as_secs(),
        nanos = now.as_nanos(),
    )
}

async fn emit(state: Arc<State>, tx: mpsc::Sender<Bytes>, plan: Plan) {
    let t0 = Instant::now();
    state.stats.lock().unwrap().first_event.get_or_insert(t0);
    let end = plan.first + plan.count;
    match plan.spread {
        None => {
            let mut i = plan.first;
            while i < end {
                let n = EVENTS_PER_FRAME.min(end - i);
                let mut frame = String::with_capacity(n * 400);
                for k in i..i + n {
                    frame.push_str(&event_line(k));
                }
                // Started containers are listed as running, as an engine lists them.
                state.running.lock().unwrap().extend(i..i + n);
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
                state.events_sent.fetch_add(n, Ordering::Relaxed);
                i += n;
            }
        }
        Some(spread) => {
            for (k, i) in (plan.first..end).enumerate() {
                let at = t0 + spread.mul_f64(k as f64 / plan.count as f64);
                tokio::time::sleep_until(at.into()).await;
                state.running.lock().unwrap().push(i);
                if tx.send(Bytes::from(event_line(i))).await.is_err() {
                    return;
                }
                state.events_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    state.stats.lock().unwrap().last_event = Some(Instant::now());
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn not_found(what: &str) -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "message": format!("No such {what}") }).to_string(),
    )
}

fn route(state: &Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let full = req.uri().path();
    // Accept both /v1.41/... and unversioned paths.
    let path = match full.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or(full, |i| &rest[i..])
        }
        _ => full,
    };
    match path {
        "/_ping" => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"OK")).boxed_unsync());
            r.headers_mut().insert(
                "api-version",
                hyper::header::HeaderValue::from_static("1.41"),
            );
            r
        }
        "/info" => json(
            StatusCode::OK,
            serde_json::json!({ "ID": "BENCH:SIM", "Name": HOST, "Containers": state.running.lock().unwrap().len() })
                .to_string(),
        ),
        "/version" => json(
            StatusCode::OK,
            serde_json::json!({
                "Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12",
                "Os": "linux", "Arch": "amd64"
            })
            .to_string(),
        ),
        "/containers/json" => {
            let running = state.running.lock().unwrap().clone();
            let list: Vec<serde_json::Value> = running
                .into_iter()
                .map(|i| {
                    serde_json::json!({
                        "Id": container_id(i),
                        "Names": [format!("/{}", container_name(i))],
                        "Image": IMAGE_REF,
                        "ImageID": IMAGE_ID,
                        "Labels": { LABEL: "yes" },
                    })
                })
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(list).to_string())
        }
        "/events" => {
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            *state.subscriber.lock().unwrap() = Some(tx.clone());
            if let Some(plan) = state.auto.lock().unwrap().take() {
                tokio::spawn(emit(state.clone(), tx, plan));
            }
            let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => {
            if let Some(id) = path
                .strip_prefix("/containers/")
                .and_then(|p| p.strip_suffix("/json"))
            {
                let Some(i) = index_of(id) else {
                    return not_found("container");
                };
                state.inspects.fetch_add(1, Ordering::Relaxed);
                state.stats.lock().unwrap().last_inspect = Some(Instant::now());
                return json(
                    StatusCode::OK,
                    serde_json::json!({
                        "Id": container_id(i),
                        "Name": format!("/{}", container_name(i)),
                        "Image": IMAGE_ID,
                        "Config": { "Image": IMAGE_REF, "Labels": { LABEL: "yes" } },
                        "State": { "Running": true },
                    })
                    .to_string(),
                );
            }
            if let Some(name) = path
                .strip_prefix("/images/")
                .and_then(|p| p.strip_suffix("/json"))
            {
                if name != IMAGE_ID && name != IMAGE_REF {
                    return not_found("image");
                }
                return json(
                    StatusCode::OK,
                    serde_json::json!({
                        "Id": IMAGE_ID,
                        "RepoTags": [IMAGE_REF],
                        "RepoDigests": [REPO_DIGEST],
                        "Os": "linux",
                        "Architecture": "amd64",
                    })
                    .to_string(),
                );
            }
            not_found("endpoint")
        }
    }
}
