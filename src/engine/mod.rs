//! The Docker Engine side: connecting, following events and resolving containers.

pub mod events;
pub mod lenient;
pub mod resolve;

use std::io::ErrorKind;
use std::time::Duration;

use bollard::Docker;

/// Requests other than the event stream must answer within this.
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// The event stream may legitimately stay silent for days (and Podman sends no headers
/// until the first event), so its request has no practical timeout; idleness is watched instead.
const STREAM_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the Docker socket {0} does not exist: is the Docker Engine running? (--docker-host selects another engine)")]
    NoSocket(String),
    #[error("permission denied on the Docker socket {0}: add the user running deploytrack to the `docker` group (usermod -aG docker USER, then log in again) or run it as root")]
    Permission(String),
    #[error("cannot reach the Docker Engine at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the Docker Engine answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the Docker Engine's answer could not be read: {0}")]
    Decode(String),
    #[error("cannot use the Docker Engine at {host}: {reason}")]
    Setup { host: String, reason: String },
}

impl EngineError {
    pub fn from_bollard(host: &str, err: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match err {
            B::SocketNotFoundError(path) => EngineError::NoSocket(path),
            B::DockerResponseServerError { message, .. }
                if message.contains("HTTP request to an HTTPS server") => EngineError::Setup {
                host: host.to_string(),
                reason: "the engine speaks TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (or use https://)".into(),
            },
            B::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Api {
                status: status_code,
                message: one_line(&message),
            },
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

    fn from_io(host: &str, io: &std::io::Error) -> Self {
        match io.kind() {
            ErrorKind::PermissionDenied => {
                EngineError::Permission(socket_path(host).unwrap_or(host).to_string())
            }
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
        matches!(self, EngineError::Permission(_) | EngineError::Setup { .. })
    }
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

/// Checked at config time: a scheme bollard can speak.
pub fn validate_host(host: &str) -> Result<(), String> {
    let ok = ["unix://", "tcp://", "http://", "https://"]
        .iter()
        .any(|scheme| {
            host.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not unix:///path, tcp://host:port, http://host:port or https://host:port"
        ))
    }
}

/// The two clients the agent uses: one for requests, one for the long-lived event stream.
#[derive(Clone, Debug)]
pub struct Engine {
    pub host: String,
    pub api: Docker,
    pub stream: Docker,
}

impl Engine {
    /// Build the clients. `tcp://` with `DOCKER_TLS_VERIFY`, and `https://`, use TLS with the
    /// certificates in `DOCKER_CERT_PATH` (else ~/.docker), as the Docker CLI does.
    pub fn new(host: &str) -> Result<Self, EngineError> {
        let client = |timeout| -> Result<Docker, EngineError> {
            let docker = Docker::connect_with_host(host).map_err(|e| match e {
                bollard::errors::Error::SocketNotFoundError(path) => EngineError::NoSocket(path),
                other => EngineError::Setup {
                    host: host.to_string(),
                    reason: other.to_string(),
                },
            })?;
            Ok(docker.with_timeout(Duration::from_secs(timeout)))
        };
        Ok(Engine {
            host: host.to_string(),
            api: client(REQUEST_TIMEOUT_SECS)?,
            stream: client(STREAM_TIMEOUT_SECS)?,
        })
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
        let info = self
            .api
            .info()
            .await
            .map_err(|e| EngineError::from_bollard(&self.host, e))?;
        Ok(info
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "unknown-host".into()))
    }

    /// Engine API version, e.g. "1.41".
    pub async fn api_version(&self) -> Result<String, EngineError> {
        let v = self
            .api
            .version()
            .await
            .map_err(|e| EngineError::from_bollard(&self.host, e))?;
        Ok(v.api_version.unwrap_or_else(|| "unknown".into()))
    }

    /// Connect and ping, retrying for `patience` before giving up with the last error.
    pub async fn connect(host: &str, patience: Duration) -> Result<Self, EngineError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = async {
                let engine = Engine::new(host)?;
                engine.ping().await?;
                Ok::<_, EngineError>(engine)
            };
            match attempt.await {
                Ok(engine) => return Ok(engine),
                Err(e) if e.is_permanent() || tokio::time::Instant::now() + delay > deadline => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "engine not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
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

    #[test]
    fn hosts() {
        assert!(validate_host("unix:///var/run/docker.sock").is_ok());
        assert!(validate_host("tcp://10.0.0.1:2376").is_ok());
        assert!(validate_host("unix://").is_err());
        assert!(validate_host("/var/run/docker.sock").is_err());
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
        let err = EngineError::from_bollard(
            "unix:///var/run/docker.sock",
            bollard::errors::Error::IOError {
                err: std::io::Error::from(ErrorKind::PermissionDenied),
            },
        );
        assert!(err.to_string().contains("`docker` group"), "{err}");
    }
}
