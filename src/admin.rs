//! The admin listener (`--listen`): health, readiness, Prometheus metrics and the agent's view.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::observe::View;
use crate::outbox::Outbox;
use crate::telemetry::Telemetry;

/// The admin listener's address cannot be bound (in use, or not this host's).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--listen): {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

#[derive(Clone)]
pub struct Admin {
    pub telemetry: Arc<Telemetry>,
    pub outbox: Outbox,
    pub view: Arc<View>,
}

impl Admin {
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError { addr, source })
    }

    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn route(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET\n".into(),
            );
        }
        match req.uri().path() {
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                let mut problems = Vec::new();
                if !self.telemetry.is_engine_connected() {
                    problems.push("engine not connected");
                }
                if !self.telemetry.is_queue_open() || self.outbox.stats().await.is_err() {
                    problems.push("queue not open");
                }
                if problems.is_empty() {
                    reply(StatusCode::OK, "text/plain", "ready\n".into())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("{}\n", problems.join("; ")),
                    )
                }
            }
            "/metrics" => {
                if let Ok(stats) = self.outbox.stats().await {
                    self.telemetry.queue_depth(stats.pending);
                    self.telemetry.oldest_pending(stats.oldest_pending_ms);
                    self.telemetry.dead_letters(stats.dead);
                }
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.telemetry.encode(),
                )
            }
            "/deployments" => reply(StatusCode::OK, "application/json", self.view.to_json()),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
