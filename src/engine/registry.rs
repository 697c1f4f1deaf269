//! Asking a registry itself whether it holds a digest, for Podman, which has no
//! `/distribution` endpoint and whose image events cannot tell a pull from a local hit (a
//! `podman run` of a local image sends `pull` too). `HEAD /v2/{name}/manifests/{digest}` on the
//! registry: 200 is the evidence; the answer is kept like the engine's lookups.
//!
//! A registry answers with a challenge when it wants credentials: `Basic` (the credentials
//! themselves) or `Bearer` (a token from its token service, for the repository's `pull`
//! scope). The Docker CLI's credentials for that registry answer either. Loopback registries
//! are asked over plain HTTP when HTTPS fails, as engines treat 127.0.0.0/8 as insecure;
//! others only over HTTPS.

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::credentials::RegistryAuth;
use super::evidence::LOOKUP_TIMEOUT;
use crate::evidence::Refusal;

/// Every manifest type a digest may name.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Where `registry` (a reference's domain) answers the registry API.
fn endpoint(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Whether `registry` is on this host, where plain HTTP is allowed.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Reads `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(text: &str) -> Option<Challenge> {
    let (scheme, rest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    for part in split_params(rest) {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// Comma-separated parameters, where a quoted value may hold commas (`scope="a,b"`).
fn split_params(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Asks registries directly. One client for every lookup.
pub struct RegistryClient {
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("deploytrack/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RegistryClient { http })
    }

    /// Whether the registry of `pinned` (`registry/name@sha256:…`) holds it. Err: why not.
    pub async fn holds(&self, pinned: &str, auth: Option<&RegistryAuth>) -> Result<(), Refusal> {
        let Some((repository, digest)) = pinned.rsplit_once('@') else {
            return Err(Refusal::Unknown);
        };
        let (registry, name) = repository.split_once('/').ok_or(Refusal::Unknown)?;
        let host = endpoint(registry);
        let https = format!("https://{host}/v2/{name}/manifests/{digest}");
        match self.ask(&https, name, auth).await {
            Err(Refusal::Unreachable) if is_loopback(registry) => {
                let http = format!("http://{host}/v2/{name}/manifests/{digest}");
                self.ask(&http, name, auth).await
            }
            other => other,
        }
    }

    /// HEAD the manifest; answer a challenge once.
    async fn ask(&self, url: &str, name: &str, auth: Option<&RegistryAuth>) -> Result<(), Refusal> {
        let first = self.head(url, None).await?;
        let challenge = match first.status() {
            s if s.is_success() => return Ok(()),
            StatusCode::UNAUTHORIZED => first
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge),
            other => return Err(classify(other)),
        };
        let authorization = match (challenge, auth.and_then(RegistryAuth::basic)) {
            (Some(Challenge::Basic), Some((user, password))) => basic(user, password),
            (
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }),
                basic_auth,
            ) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{name}:pull"));
                let token = self
                    .token(&realm, service.as_deref(), &scope, basic_auth)
                    .await?;
                format!("Bearer {token}")
            }
            _ => return Err(Refusal::Credentials),
        };
        let second = self.head(url, Some(&authorization)).await?;
        match second.status() {
            s if s.is_success() => Ok(()),
            other => Err(classify(other)),
        }
    }

    async fn head(
        &self,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, Refusal> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            reqwest::header::HeaderValue::from_static(MANIFEST_TYPES),
        );
        if let Some(a) = authorization {
            let mut value =
                reqwest::header::HeaderValue::from_str(a).map_err(|_| Refusal::Credentials)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        self.http
            .head(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| {
                // The error names the URL, which holds no secret.
                tracing::debug!(url, error = %e, "cannot ask the registry");
                Refusal::Unreachable
            })
    }

    /// A token from the registry's token service for `scope`, with the credentials if any.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<String, Refusal> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        let answer = request.send().await.map_err(|e| {
            tracing::debug!(realm, error = %e, "cannot reach the registry's token service");
            Refusal::Unreachable
        })?;
        if !answer.status().is_success() {
            return Err(classify(answer.status()));
        }
        let bytes = answer.bytes().await.map_err(|_| Refusal::Unreachable)?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| Refusal::Unreachable)?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or(Refusal::Unreachable)
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn classify(status: StatusCode) -> Refusal {
    match status.as_u16() {
        401 | 403 => Refusal::Credentials,
        404 => Refusal::Unknown,
        _ => Refusal::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_as_registries_send_them() {
        assert_eq!(
            parse_challenge(r#"Basic realm="test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        // A scope with several actions holds a comma inside its quotes.
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://ghcr.io/token",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn plain_http_only_on_this_host() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:5002"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("docker.io"));
        assert_eq!(endpoint("docker.io"), "registry-1.docker.io");
    }
}
