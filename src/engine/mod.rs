//! The Docker Engine side: connecting, following events and resolving containers.

pub mod credentials;
pub mod events;
pub mod evidence;
pub mod lenient;
pub mod pulls;
pub mod registry;
pub mod resolve;
pub mod transport;

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;

use crate::backoff::Backoff;

use transport::{ApiVersion, Transport};

/// Requests other than the event stream must answer within this.
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// The event stream may legitimately stay silent for days (and Podman sends no headers
/// until the first event), so its request has no practical timeout; idleness is watched instead.
const STREAM_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the Docker socket {0} does not exist: is the Docker Engine running? (--docker-host selects another engine)")]
    NoSocket(String),
    #[error("permission denied on the Docker socket {socket}: {}", if *.in_container { SOCKET_FIX_IN_CONTAINER } else { SOCKET_FIX_ON_HOST })]
    Permission { socket: String, in_container: bool },
    #[error("cannot reach the Docker Engine at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the Docker Engine answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the Docker Engine's answer could not be read: {0}")]
    Decode(String),
    #[error("cannot use the Docker Engine at {host}: {reason}")]
    Setup {
        host: String,
        reason: transport::SetupError,
    },
}

impl EngineError {
    pub fn from_bollard(host: &str, err: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match err {
            B::SocketNotFoundError(path) => EngineError::NoSocket(path),
            B::DockerResponseServerError {
                status_code,
                message,
            } => Self::from_status(host, status_code, &message),
            B::JsonDataError { message, .. } => EngineError::Decode(message),
            B::JsonSerdeError { err } => EngineError::Decode(err.to_string()),
            B::RequestTimeoutError => EngineError::Unreachable {
                host: host.to_string(),
                reason: "the request timed out".into(),
            },
            B::IOError { err } => Self::from_io(host, &err),
            other => {
                // Find the I/O error underneath hyper's layers to say something useful.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&other);
                while let Some(e) = source {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        return Self::from_io(host, io);
                    }
                    source = e.source();
                }
                EngineError::Unreachable {
                    host: host.to_string(),
                    reason: other.to_string(),
                }
            }
        }
    }

    /// An answer other than 2xx.
    fn from_status(host: &str, status: u16, message: &str) -> Self {
        if message.contains("HTTP request to an HTTPS server") {
            return EngineError::Setup {
                host: host.to_string(),
                reason: transport::SetupError::SpeaksTls,
            };
        }
        EngineError::Api {
            status,
            message: one_line(message),
        }
    }

    fn from_io(host: &str, io: &std::io::Error) -> Self {
        match io.kind() {
            ErrorKind::PermissionDenied => EngineError::Permission {
                socket: socket_path(host).unwrap_or(host).to_string(),
                in_container: runs_in_container(host),
            },
            ErrorKind::NotFound if socket_path(host).is_some() => {
                EngineError::NoSocket(socket_path(host).unwrap_or(host).to_string())
            }
            _ => EngineError::Unreachable {
                host: host.to_string(),
                reason: io.to_string(),
            },
        }
    }

    /// 404: the container or image is gone (removed between event and inspect).
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::Api { status: 404, .. })
    }

    /// Errors that retrying cannot fix.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            EngineError::Permission { .. } | EngineError::Setup { .. }
        )
    }
}

const SOCKET_FIX_ON_HOST: &str = "add the user running deploytrack to the `docker` group (usermod -aG docker USER, then log in again) or run it as root";
const SOCKET_FIX_IN_CONTAINER: &str = "the agent runs in a container, whose user needs the socket's group: set DOCKER_GID to it (stat -c %g /var/run/docker.sock on the host) for packaging/compose.yaml, which adds it with group_add (docker run: --group-add \"$DOCKER_GID\"; Swarm: user: \"65532:${DOCKER_GID}\"), then recreate the container";

/// Whether the agent runs in a container, where the fix of a permission is the container's
/// groups rather than the host's: an engine reached where packaging/compose.yaml and
/// swarm.yaml mount the host's /var/run (`unix:///host/run/docker.sock`), or the marker
/// file Docker (`/.dockerenv`) or Podman (`/run/.containerenv`) puts in every container.
pub fn runs_in_container(docker_host: &str) -> bool {
    static MARKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    docker_host.starts_with("unix:///host/")
        || *MARKED.get_or_init(|| {
            std::path::Path::new("/.dockerenv").exists()
                || std::path::Path::new("/run/.containerenv").exists()
        })
}

/// The parts of a `/version` answer that decide the API version.
fn negotiated_from(text: &str) -> Option<Negotiated> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    let engine_max = ApiVersion::parse(field("ApiVersion")?)?;
    let engine_min = field("MinAPIVersion").and_then(ApiVersion::parse);
    let product = v
        .get("Components")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("Name"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("Engine");
    Some(Negotiated {
        using: transport::choose(engine_max, engine_min),
        engine_max,
        engine_min,
        product: one_line(product),
        engine_version: one_line(field("Version").unwrap_or("unknown")),
    })
}

/// An engine's error answer as bollard reads it: its JSON `message`, else the whole answer.
pub(crate) fn answer_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

/// An engine's message as one short line: its answers are untrusted input.
fn one_line(message: &str) -> String {
    const MAX: usize = 300;
    let mut line: String = message
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if message.trim().chars().count() > MAX {
        line.push('…');
    }
    line
}

fn socket_path(host: &str) -> Option<&str> {
    host.strip_prefix("unix://")
}

/// Waiting for the engine at start: 0.2 s doubling to 2 s, within the caller's patience.
const CONNECT_RETRY: Backoff = Backoff::steady(Duration::from_millis(200), Duration::from_secs(2));

/// The two clients the agent uses: one for requests, one for the long-lived event stream.
/// Both go through one transport, which carries the negotiated API version.
#[derive(Clone)]
pub struct Engine {
    pub host: String,
    pub api: Docker,
    pub stream: Docker,
    transport: Transport,
    /// Set by the handshake when `/version` names Podman, whose RepoDigests prove nothing.
    podman: Arc<AtomicBool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("host", &self.host)
            .field("api_version", &self.transport.version())
            .finish()
    }
}

/// What `/version` said, and the version the agent chose to speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub using: ApiVersion,
    pub engine_max: ApiVersion,
    pub engine_min: Option<ApiVersion>,
    /// `Podman Engine`, `Engine` (Docker), as `/version` names its first component.
    pub product: String,
    pub engine_version: String,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let product = match self.product.as_str() {
            "Engine" => "Docker Engine",
            other => other,
        };
        write!(f, "{} ({product} {}: API ", self.using, self.engine_version)?;
        match self.engine_min {
            Some(min) => write!(f, "{min} to {})", self.engine_max),
            None => write!(f, "up to {})", self.engine_max),
        }
    }
}

impl Engine {
    /// Build the clients. `tcp://` with `DOCKER_TLS_VERIFY`, and `https://`, use TLS with the
    /// certificates in `DOCKER_CERT_PATH` (else ~/.docker), as the Docker CLI does.
    pub fn new(host: &str) -> Result<Self, EngineError> {
        let setup = |reason| EngineError::Setup {
            host: host.to_string(),
            reason,
        };
        let tls = host.starts_with("https://")
            || (std::env::var_os("DOCKER_TLS_VERIFY").is_some()
                && (host.starts_with("tcp://") || host.starts_with("http://")));
        let tls = if tls {
            Some(transport::tls_from_env().map_err(setup)?)
        } else {
            None
        };
        let transport = Transport::new(host, tls).map_err(setup)?;
        if let Some(socket) = transport.socket() {
            if !socket.exists() {
                return Err(EngineError::NoSocket(socket.display().to_string()));
            }
        }
        Ok(Engine {
            host: host.to_string(),
            api: transport.client(REQUEST_TIMEOUT_SECS),
            stream: transport.client(STREAM_TIMEOUT_SECS),
            transport,
            podman: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether the engine is Podman (known after the first handshake).
    pub fn is_podman(&self) -> bool {
        self.podman.load(Ordering::Relaxed)
    }

    /// Whether plain HTTP carries requests to the engine (`tcp://` without TLS): a secret in a
    /// header would cross the network in clear.
    pub fn in_clear(&self) -> bool {
        self.transport.in_clear()
    }

    /// The API version requests carry now (`None` before the first handshake).
    pub fn api_in_use(&self) -> Option<ApiVersion> {
        self.transport.version()
    }

    /// Ask the engine which API versions it speaks (`GET /version`, unversioned, which every
    /// engine answers) and choose the newest that both the engine and the agent know. Done at
    /// every (re)connection: an engine upgraded under a running agent may refuse the version
    /// the old one spoke. A change is logged.
    pub async fn negotiate(&self) -> Result<Negotiated, EngineError> {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(REQUEST_TIMEOUT_SECS),
            self.transport.get("/version", false),
        )
        .await
        .map_err(|_| EngineError::Unreachable {
            host: self.host.clone(),
            reason: "GET /version timed out".into(),
        })?
        .map_err(|e| EngineError::from_bollard(&self.host, e))?;
        let text = String::from_utf8_lossy(&body);
        if !(200..300).contains(&status) {
            return Err(EngineError::from_status(
                &self.host,
                status,
                &answer_message(&text),
            ));
        }
        let negotiated = negotiated_from(&text).ok_or_else(|| {
            EngineError::Decode(format!(
                "GET /version names no usable ApiVersion: {}",
                one_line(&text)
            ))
        })?;
        let before = self.transport.version();
        self.transport.set_version(negotiated.using);
        self.podman
            .store(negotiated.product.contains("Podman"), Ordering::Relaxed);
        if before != Some(negotiated.using) {
            let note = if negotiated.using > transport::NEWEST_TESTED {
                "; the engine refuses every version deploytrack is tested with, so answers may hold surprises"
            } else if negotiated.using < transport::OLDEST_TESTED {
                "; older than any engine deploytrack is tested with"
            } else {
                ""
            };
            match before {
                None => {
                    tracing::info!(engine = %self.host, "Engine API version {negotiated}{note}")
                }
                Some(old) => tracing::warn!(
                    engine = %self.host,
                    "the engine changed: Engine API version {negotiated}, was {old}{note}"
                ),
            }
        }
        Ok(negotiated)
    }

    /// Negotiate the API version, then ping with it.
    pub async fn handshake(&self) -> Result<(), EngineError> {
        self.negotiate().await?;
        self.ping().await
    }

    pub async fn ping(&self) -> Result<(), EngineError> {
        self.api
            .ping()
            .await
            .map(drop)
            .map_err(|e| EngineError::from_bollard(&self.host, e))
    }

    /// The engine's host name (right even when the agent itself runs in a container).
    pub async fn host_name(&self) -> Result<String, EngineError> {
        Ok(self.host_facts().await?.0)
    }

    /// The engine's host name and its image store, from `/info`.
    pub async fn host_facts(&self) -> Result<(String, evidence::ImageStore), EngineError> {
        self.host_facts_and_clock()
            .await
            .map(|(name, store, _)| (name, store))
    }

    /// `host_facts`, and the engine's clock when it answered (`SystemTime`, in Unix
    /// nanoseconds as its events carry them), if it says.
    pub async fn host_facts_and_clock(
        &self,
    ) -> Result<(String, evidence::ImageStore, Option<i64>), EngineError> {
        let info = self
            .api
            .info()
            .await
            .map_err(|e| EngineError::from_bollard(&self.host, e))?;
        // Podman gives every local name a repo digest, as the containerd store does.
        let store = if self.is_podman() {
            evidence::ImageStore::Podman
        } else {
            evidence::ImageStore::from_driver_status(
                info.driver_status.as_deref().unwrap_or_default(),
            )
        };
        let name = info
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "unknown-host".into());
        let clock = info
            .system_time
            .as_deref()
            .and_then(crate::deployment::nanos_from_engine);
        Ok((name, store, clock))
    }

    /// `GET path` with the negotiated version: the status and the whole answer. For the few
    /// requests bollard has no call for (or no option of).
    pub async fn get(&self, path: &str) -> Result<(u16, hyper::body::Bytes), EngineError> {
        self.get_with(path, None).await
    }

    /// `get` with one more header. The value may be a secret: it appears in no error.
    pub async fn get_with(
        &self,
        path: &str,
        header: Option<(&str, &str)>,
    ) -> Result<(u16, hyper::body::Bytes), EngineError> {
        tokio::time::timeout(
            Duration::from_secs(REQUEST_TIMEOUT_SECS),
            self.transport.get_with(path, true, header),
        )
        .await
        .map_err(|_| EngineError::Unreachable {
            host: self.host.clone(),
            reason: format!("GET {path} timed out"),
        })?
        .map_err(|e| EngineError::from_bollard(&self.host, e))
    }

    /// The negotiated Engine API version and what the engine offers.
    pub async fn api_version(&self) -> Result<Negotiated, EngineError> {
        self.negotiate().await
    }

    /// Connect and ping, retrying for `patience` before giving up with the last error.
    pub async fn connect(host: &str, patience: Duration) -> Result<Self, EngineError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut retries = CONNECT_RETRY.retries();
        loop {
            let attempt = async {
                let engine = Engine::new(host)?;
                engine.handshake().await?;
                Ok::<_, EngineError>(engine)
            };
            let e = match attempt.await {
                Ok(engine) => return Ok(engine),
                Err(e) => e,
            };
            let delay = retries.next_delay();
            if e.is_permanent() || tokio::time::Instant::now() + delay > deadline {
                return Err(e);
            }
            tracing::debug!(error = %e, "engine not reachable yet; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_messages_are_one_short_line() {
        let err = EngineError::from_bollard(
            "unix:///var/run/docker.sock",
            bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message: format!("boom\nforged line\x1b[31m{}", "x".repeat(10_000)),
            },
        );
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1);
        assert!(!text.contains('\x1b'));
        assert!(text.len() < 400, "{} bytes", text.len());
    }

    #[tokio::test]
    async fn missing_socket_is_one_sentence() {
        let err = Engine::connect(
            "unix:///nonexistent/docker.sock",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EngineError::NoSocket(_)), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/docker.sock"));
    }

    #[tokio::test]
    async fn permission_denied_names_the_group() {
        // On a host: the user's groups.
        let err = EngineError::Permission {
            socket: "/var/run/docker.sock".into(),
            in_container: false,
        };
        assert!(err.to_string().contains("`docker` group"), "{err}");
        assert!(err.to_string().contains("usermod -aG docker"), "{err}");
        // Where packaging/compose.yaml mounts the host's socket: the container's groups.
        let err = EngineError::from_bollard(
            "unix:///host/run/docker.sock",
            bollard::errors::Error::IOError {
                err: std::io::Error::from(ErrorKind::PermissionDenied),
            },
        );
        let text = err.to_string();
        assert!(
            text.starts_with("permission denied on the Docker socket /host/run/docker.sock: the agent runs in a container")
                && text.contains("DOCKER_GID")
                && text.contains("group_add")
                && !text.contains("usermod"),
            "{text}"
        );
    }
}
