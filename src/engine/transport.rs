//! The HTTP transport to the engine, with the API version the agent chose in every path.
//!
//! bollard 0.21.1 builds `/v1.xx/…` paths and then loses the prefix when it joins the path
//! to the address, so left to itself every request would go out unversioned and the engine
//! would answer in its newest format, whatever that is. This transport puts the prefix back:
//! bollard builds requests and decodes answers; which version of the API they speak is
//! decided here, by `negotiate` (see `super::Engine::handshake`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bollard::BollardRequest;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The body type bollard's requests carry (named through the request type, which it exports).
trait BodyOf {
    type Body;
}
impl<B> BodyOf for Request<B> {
    type Body = B;
}
type Body = <BollardRequest as BodyOf>::Body;

/// The newest Engine API version the agent is tested against. Against a newer engine the
/// agent asks for this one, so answers keep the shape it was tested with. Docker 28.5 (1.51)
/// is tested as it is; 1.53 (Docker 29.2, which adds the image's `Identity`) is tested by
/// playing it in front of Docker 28.5 (`hostile::a_docker_29_engine_*` in tests/it): its
/// answers in the 1.52/1.53 shape, events without the legacy `status`, `id` and `from`
/// (1.52) and sent as `application/jsonl` (Docker 29.3), image inspections with `Identity`.
pub const NEWEST_TESTED: ApiVersion = ApiVersion(1, 53);
/// The oldest version tested (Docker 20.10, Podman 4.3's compatible API).
pub const OLDEST_TESTED: ApiVersion = ApiVersion(1, 41);

/// An Engine API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u16, pub u16);

impl ApiVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(ApiVersion(major.parse().ok()?, minor.parse().ok()?))
    }

    fn packed(self) -> u32 {
        (u32::from(self.0) << 16) | u32::from(self.1)
    }

    fn unpacked(v: u32) -> Option<Self> {
        (v != 0).then_some(ApiVersion((v >> 16) as u16, (v & 0xffff) as u16))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The version to speak to an engine that supports `min..=max`: the newest both sides know.
/// An engine newer than any tested one that refuses the newest tested version is spoken to
/// at its minimum (the caller warns); an engine older than the oldest tested, at its maximum.
pub fn choose(max: ApiVersion, min: Option<ApiVersion>) -> ApiVersion {
    let wanted = max.min(NEWEST_TESTED);
    match min {
        Some(min) if min > wanted => min,
        _ => wanted,
    }
}

enum Connector {
    Unix(Client<hyperlocal::UnixConnector, Body>, PathBuf),
    Http(Client<HttpConnector, Body>, String),
    Https(Client<HttpsConnector<HttpConnector>, Body>, String),
}

/// One engine's transport; clones share the connection settings and the version in use.
#[derive(Clone)]
pub struct Transport {
    connector: Arc<Connector>,
    /// The version in use, packed; 0 until negotiated (requests then go out unversioned).
    version: Arc<AtomicU32>,
}

impl Transport {
    /// `unix:///path`, `tcp://host:port` or `http://host:port` (plain, or TLS when `tls` is
    /// given), `https://host:port` (TLS).
    pub fn new(host: &str, tls: Option<rustls::ClientConfig>) -> Result<Self, SetupError> {
        let builder = || Client::builder(TokioExecutor::new());
        let connector = if let Some(path) = host.strip_prefix("unix://") {
            Connector::Unix(builder().build(hyperlocal::UnixConnector), path.into())
        } else {
            let authority = ["tcp://", "http://", "https://"]
                .iter()
                .find_map(|s| host.strip_prefix(s))
                .ok_or_else(|| SetupError::UnsupportedAddress(host.to_string()))?
                .trim_end_matches('/')
                .to_string();
            match tls {
                Some(config) => {
                    let mut http = HttpConnector::new();
                    http.enforce_http(false);
                    Connector::Https(
                        builder().build(HttpsConnector::from((http, config))),
                        authority,
                    )
                }
                None if host.starts_with("https://") => return Err(SetupError::HttpsWithoutTls),
                None => Connector::Http(builder().build(HttpConnector::new()), authority),
            }
        };
        Ok(Transport {
            connector: Arc::new(connector),
            version: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Whether requests go over plain HTTP on a network (not a Unix socket, not TLS).
    pub fn in_clear(&self) -> bool {
        matches!(&*self.connector, Connector::Http(..))
    }

    /// The version requests carry; `None` before negotiation.
    pub fn version(&self) -> Option<ApiVersion> {
        ApiVersion::unpacked(self.version.load(Ordering::Relaxed))
    }

    pub fn set_version(&self, version: ApiVersion) {
        self.version.store(version.packed(), Ordering::Relaxed);
    }

    /// A bollard client whose requests go through this transport.
    pub fn client(&self, timeout_secs: u64) -> bollard::Docker {
        let transport = self.clone();
        bollard::Docker::connect_with_custom_transport(
            move |request: BollardRequest| transport.clone().send(request, true),
            // bollard builds `http://engine/<path>`; `send` keeps only the path and query.
            Some("http://engine"),
            timeout_secs,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("a custom transport needs no I/O to set up")
    }

    /// Send `request`, its path prefixed with the version in use when `versioned`.
    async fn send(
        self,
        request: BollardRequest,
        versioned: bool,
    ) -> Result<Response<Incoming>, bollard::errors::Error> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let path = match self.version().filter(|_| versioned) {
            Some(v) => format!("/v{v}{path}"),
            None => path,
        };
        parts.uri = self.uri(&path)?;
        let request = Request::from_parts(parts, body);
        let answer = match &*self.connector {
            Connector::Unix(client, _) => client.request(request).await,
            Connector::Http(client, _) => client.request(request).await,
            Connector::Https(client, _) => client.request(request).await,
        };
        answer.map_err(|e| {
            // The I/O error underneath (no socket, permission denied) says the most.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(inner) = source {
                if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                    return bollard::errors::Error::IOError {
                        err: std::io::Error::new(io.kind(), io.to_string()),
                    };
                }
                source = inner.source();
            }
            bollard::errors::Error::IOError {
                err: std::io::Error::other(e.to_string()),
            }
        })
    }

    fn uri(&self, path: &str) -> Result<Uri, bollard::errors::Error> {
        let uri: Result<Uri, _> = match &*self.connector {
            Connector::Unix(_, socket) => Ok(hyperlocal::Uri::new(socket, path).into()),
            Connector::Http(_, authority) => format!("http://{authority}{path}").parse(),
            Connector::Https(_, authority) => format!("https://{authority}{path}").parse(),
        };
        uri.map_err(|e| bollard::errors::Error::IOError {
            err: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })
    }

    /// `GET path` (unversioned unless `versioned`), its status and whole body.
    pub async fn get(
        &self,
        path: &str,
        versioned: bool,
    ) -> Result<(u16, Bytes), bollard::errors::Error> {
        self.get_with(path, versioned, None).await
    }

    /// `get` with one more header (`X-Registry-Auth` on a registry lookup).
    pub async fn get_with(
        &self,
        path: &str,
        versioned: bool,
        header: Option<(&str, &str)>,
    ) -> Result<(u16, Bytes), bollard::errors::Error> {
        let mut request = Request::get(path).header("Content-Type", "application/json");
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let request = request
            .body(bollard::body_full(Bytes::new()))
            .map_err(|e| bollard::errors::Error::IOError {
                err: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            })?;
        let response = self.clone().send(request, versioned).await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| bollard::errors::Error::IOError {
                err: std::io::Error::other(e.to_string()),
            })?
            .to_bytes();
        Ok((status, body))
    }

    pub fn socket(&self) -> Option<&Path> {
        match &*self.connector {
            Connector::Unix(_, path) => Some(path),
            _ => None,
        }
    }
}

/// Why the agent cannot set up its connection to the engine.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("unsupported engine address {0:?}")]
    UnsupportedAddress(String),
    #[error("https:// needs the TLS certificates")]
    HttpsWithoutTls,
    #[error("DOCKER_CERT_PATH is not set and there is no home directory")]
    NoCertificateDirectory,
    #[error("cannot read the certificates in {}: {source}", path.display())]
    Certificates {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no usable CA certificate", .0.display())]
    NoCertificateAuthority(PathBuf),
    #[error("cannot read the key in {}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0}")]
    Protocols(rustls::Error),
    #[error("the client certificate and key do not match: {0}")]
    KeyMismatch(rustls::Error),
    /// The engine answered a plain HTTP request as a TLS server.
    #[error(
        "the engine speaks TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (or use https://)"
    )]
    SpeaksTls,
}

/// TLS settings as the Docker CLI reads them: `ca.pem`, `cert.pem` and `key.pem` in
/// `DOCKER_CERT_PATH` (else `~/.docker`); the engine is verified against that CA only.
pub fn tls_from_env() -> Result<rustls::ClientConfig, SetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::env::var_os("DOCKER_CERT_PATH")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .ok_or(SetupError::NoCertificateDirectory)?;
    let file = |name: &str| dir.join(name);
    let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, SetupError> {
        let path = file(name);
        CertificateDer::pem_file_iter(&path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|source| SetupError::Certificates { path, source })
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs("ca.pem")?);
    if added == 0 {
        return Err(SetupError::NoCertificateAuthority(file("ca.pem")));
    }
    let key_path = file("key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| SetupError::Key {
        path: key_path,
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Protocols)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs("cert.pem")?, key)
        .map_err(SetupError::KeyMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_the_transport_cannot_speak_is_refused_by_name() {
        assert!(matches!(
            Transport::new("ftp://engine:2375", None),
            Err(SetupError::UnsupportedAddress(host)) if host == "ftp://engine:2375"
        ));
        assert!(matches!(
            Transport::new("https://engine:2376", None),
            Err(SetupError::HttpsWithoutTls)
        ));
        assert!(Transport::new("tcp://engine:2375", None).is_ok());
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(ApiVersion::parse("1.41"), Some(ApiVersion(1, 41)));
        assert_eq!(ApiVersion::parse(" 1.9 "), Some(ApiVersion(1, 9)));
        assert!(ApiVersion(1, 9) < ApiVersion(1, 41));
        assert_eq!(ApiVersion::parse("1"), None);
        assert_eq!(ApiVersion::parse("v1.41"), None);
        assert_eq!(
            ApiVersion::unpacked(ApiVersion(1, 51).packed()),
            Some(ApiVersion(1, 51))
        );
    }

    #[test]
    fn the_newest_version_both_sides_know() {
        let v = |t| ApiVersion::parse(t).unwrap();
        // Docker 20.10: its maximum.
        assert_eq!(choose(v("1.41"), Some(v("1.12"))), v("1.41"));
        // Docker 28.5, also with DOCKER_MIN_API_VERSION=1.44: its maximum.
        assert_eq!(choose(v("1.51"), Some(v("1.24"))), v("1.51"));
        assert_eq!(choose(v("1.51"), Some(v("1.44"))), v("1.51"));
        // Docker 29.0 (1.52, minimum 1.44): its maximum, below the newest tested.
        assert_eq!(choose(v("1.52"), Some(v("1.44"))), v("1.52"));
        // Docker 29.2 (1.53): the newest tested, where image inspect has `Identity`.
        assert_eq!(choose(v("1.53"), Some(v("1.44"))), v("1.53"));
        assert_eq!(NEWEST_TESTED, v("1.53"));
        // Docker 29.3 (1.54, minimum 1.40) and 29.6 (1.55): the newest tested, which they
        // accept.
        assert_eq!(choose(v("1.54"), Some(v("1.40"))), NEWEST_TESTED);
        assert_eq!(choose(v("1.55"), Some(v("1.40"))), NEWEST_TESTED);
        // A future engine that refuses everything tested: its minimum.
        assert_eq!(choose(v("1.60"), Some(v("1.55"))), v("1.55"));
        // No minimum given (Podman): the newest both know.
        assert_eq!(choose(v("1.41"), None), v("1.41"));
    }

    #[tokio::test]
    async fn requests_carry_the_version_in_use() {
        // A unix socket that answers with the request line it got.
        let dir = std::env::temp_dir().join(format!("dt-transport-{:x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let n = conn.read(&mut buf).await.unwrap();
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{line}",
                    line.len()
                );
                conn.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let t = Transport::new(&format!("unix://{}", socket.display()), None).unwrap();
        let (_, body) = t.get("/version", true).await.unwrap();
        assert_eq!(
            body, "GET /version HTTP/1.1",
            "unversioned before negotiation"
        );
        t.set_version(ApiVersion(1, 44));
        let (_, body) = t.get("/containers/json?all=1", true).await.unwrap();
        assert_eq!(body, "GET /v1.44/containers/json?all=1 HTTP/1.1");
        let (_, body) = t.get("/version", false).await.unwrap();
        assert_eq!(body, "GET /version HTTP/1.1");
        // And through bollard's own requests.
        let text = t.client(5).ping().await.unwrap();
        assert_eq!(text, "GET /v1.44/_ping HTTP/1.1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
