//! A proxy on a unix socket in front of the real engine. It records every request the agent
//! makes, can answer some itself or edit the engine's answers (to play a newer or odder
//! engine, down to an API version the real one does not speak: `EngineProxy::play_api`), and
//! can cut every connection (a lost stream).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::Engine;

type Edit = Arc<dyn Fn(&mut serde_json::Value) + Send + Sync>;

/// What the proxy does to requests whose path contains `path`.
#[derive(Clone)]
pub enum Rule {
    /// Answer with this status and body instead of the engine.
    Answer {
        path: String,
        status: u16,
        body: String,
    },
    /// Replace text in the engine's answer (for `/events`, in each chunk of the stream).
    Replace {
        path: String,
        from: String,
        to: String,
    },
    /// Edit the engine's JSON answer (for `/events`, each event: each line of the stream).
    Edit { path: String, edit: Edit },
    /// The engine behind speaks at most API `version`: a request whose path names a newer
    /// one is forwarded with `version` instead. `requests()` keeps the path as asked.
    Speaks { path: String, version: String },
    /// Set a header of the answer (`content-type` as a newer engine sends it).
    Header {
        path: String,
        name: String,
        value: String,
    },
}

impl Rule {
    pub fn edit(path: &str, edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static) -> Self {
        Rule::Edit {
            path: path.to_string(),
            edit: Arc::new(edit),
        }
    }

    /// Every request whose path names an API version newer than `version` is forwarded at
    /// `version`.
    pub fn speaks(version: &str) -> Self {
        Rule::Speaks {
            path: "/v".to_string(),
            version: version.to_string(),
        }
    }

    fn path(&self) -> &str {
        match self {
            Rule::Answer { path, .. }
            | Rule::Replace { path, .. }
            | Rule::Edit { path, .. }
            | Rule::Speaks { path, .. }
            | Rule::Header { path, .. } => path,
        }
    }
}

#[derive(Default)]
struct State {
    /// (method, path without the query)
    requests: Vec<(String, String)>,
    rules: Vec<Rule>,
}

pub struct EngineProxy {
    pub socket: PathBuf,
    engine: Engine,
    state: Arc<Mutex<State>>,
    cut: watch::Sender<u64>,
}

impl EngineProxy {
    /// A proxy in front of `engine`, its socket in `dir`.
    pub async fn start(engine: Engine, dir: &Path) -> EngineProxy {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("engine-proxy.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind the engine proxy");
        let state = Arc::new(Mutex::new(State::default()));
        let (cut, _) = watch::channel(0u64);
        let (shared, cuts) = (state.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, state.clone(), engine.socket())
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        EngineProxy {
            socket,
            engine,
            state,
            cut,
        }
    }

    /// `--docker-host` for the agent.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn add(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    pub fn clear_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Play an engine of API `max` (accepting down to `min`), Docker `release`, in front of
    /// the real one: `/version` says so, and every request is forwarded at the newest
    /// version the real engine speaks. Its answers keep that version's shape; rules that edit
    /// them give them the newer one.
    pub fn play_api(&self, max: &str, min: &str, release: &str) {
        let real = self
            .engine
            .docker(&["version", "--format", "{{.Server.APIVersion}}"]);
        assert!(
            api_version(&real).is_some(),
            "the engine's API version {real:?}"
        );
        self.add(Rule::speaks(&real));
        let (max, min, release) = (max.to_string(), min.to_string(), release.to_string());
        self.add(Rule::edit("/version", move |v| {
            v["ApiVersion"] = max.as_str().into();
            v["MinAPIVersion"] = min.as_str().into();
            v["Version"] = release.as_str().into();
            if let Some(engine) = v
                .get_mut("Components")
                .and_then(|c| c.get_mut(0))
                .filter(|c| c.get("Name").and_then(|n| n.as_str()) == Some("Engine"))
            {
                engine["Version"] = release.as_str().into();
                engine["Details"]["ApiVersion"] = max.as_str().into();
                engine["Details"]["MinAPIVersion"] = min.as_str().into();
            }
        }));
    }

    /// Every request so far, as (method, path).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Close every open connection (the event stream among them).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn answer(status: u16, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    socket: &'static str,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let rules: Vec<Rule> = {
        let mut s = state.lock().unwrap();
        s.requests.push((req.method().to_string(), path.clone()));
        s.rules
            .iter()
            .filter(|r| path.contains(r.path()))
            .cloned()
            .collect()
    };
    if let Some(Rule::Answer { status, body, .. }) =
        rules.iter().find(|r| matches!(r, Rule::Answer { .. }))
    {
        return Ok(answer(*status, body.clone()));
    }
    let mut req = req;
    for rule in &rules {
        if let Rule::Speaks { version, .. } = rule {
            if let Some(spoken) = spoken_as(req.uri(), version) {
                *req.uri_mut() = spoken;
            }
        }
    }
    let response = match forward(req, socket).await {
        Ok(r) => r,
        Err(e) => return Ok(answer(502, format!("{{\"message\":\"proxy: {e}\"}}"))),
    };
    if rules.is_empty() {
        return Ok(response.map(BodyExt::boxed));
    }
    let (mut parts, body) = response.into_parts();
    for rule in &rules {
        if let Rule::Header { name, value, .. } = rule {
            parts.headers.insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
    }
    if path.ends_with("/events") {
        // A stream: edit each chunk as it passes; with `Edit` rules, each event (a line)
        // once it is whole, so the chunks are held until a line ends.
        let edits = rules.iter().any(|r| matches!(r, Rule::Edit { .. }));
        let mut partial: Vec<u8> = Vec::new();
        let body = body
            .map_frame(move |frame| {
                frame.map_data(|data| {
                    let data = if edits {
                        partial.extend_from_slice(&data);
                        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
                            // Not a whole event yet (an empty frame is not sent).
                            return Bytes::new();
                        };
                        let rest = partial.split_off(end + 1);
                        Bytes::from(std::mem::replace(&mut partial, rest))
                    } else {
                        data
                    };
                    let mut text = String::from_utf8_lossy(&data).into_owned();
                    for rule in &rules {
                        if let Rule::Replace { from, to, .. } = rule {
                            text = text.replace(from.as_str(), to);
                        }
                    }
                    if edits {
                        text = text
                            .split_terminator('\n')
                            .map(|line| edit_json(line, &rules) + "\n")
                            .collect();
                    }
                    Bytes::from(text)
                })
            })
            .boxed();
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    for rule in &rules {
        match rule {
            Rule::Replace { from, to, .. } => text = text.replace(from.as_str(), to),
            Rule::Edit { .. } => text = edit_json(&text, std::slice::from_ref(rule)),
            Rule::Answer { .. } | Rule::Speaks { .. } | Rule::Header { .. } => {}
        }
    }
    parts.headers.remove("content-length");
    Ok(Response::from_parts(
        parts,
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    ))
}

/// `text` after the `Edit` rules among `rules`, if it is JSON; else as it is.
fn edit_json(text: &str, rules: &[Rule]) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
        return text.to_string();
    };
    for rule in rules {
        if let Rule::Edit { edit, .. } = rule {
            edit(&mut value);
        }
    }
    value.to_string()
}

/// `major.minor` as numbers, to compare versions.
fn api_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `uri` with its API version replaced by `version`, when it names a newer one.
fn spoken_as(uri: &hyper::Uri, version: &str) -> Option<hyper::Uri> {
    let path = uri.path();
    let rest = unversioned(path);
    let asked = path.strip_prefix("/v")?.strip_suffix(rest)?;
    if api_version(asked)? <= api_version(version)? {
        return None;
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("/v{version}{rest}{query}").parse().ok()
}

async fn forward(req: Request<Incoming>, socket: &str) -> Result<Response<Incoming>, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// `path` without its API version prefix (`/v1.41/info` is `/info`).
pub fn unversioned(path: &str) -> &str {
    match path.strip_prefix("/v") {
        Some(rest) => match rest.find('/') {
            Some(i) if rest[..i].chars().all(|c| c.is_ascii_digit() || c == '.') => &rest[i..],
            _ => path,
        },
        None => path,
    }
}

/// The requests a read-only agent may make: GET or HEAD on these paths (with or without an
/// API version prefix such as `/v1.41`). The README lists the same.
pub fn allowed(method: &str, path: &str) -> bool {
    let path = unversioned(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let path_ok = matches!(
        segments.as_slice(),
        ["_ping"]
            | ["version"]
            | ["info"]
            | ["events"]
            | ["containers", "json"]
            | ["containers", _, "json"]
    ) || (matches!(segments.first(), Some(&"images" | &"distribution"))
        && segments.last() == Some(&"json")
        && segments.len() >= 3);
    matches!(method, "GET" | "HEAD") && path_ok
}
