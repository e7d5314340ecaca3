//! The operations endpoint (`--metrics-addr`), on axum: `/metrics` (Prometheus text),
//! `/health` (200 while the process runs), `/ready` (200 while every part it depends on is
//! connected, else 503 with the reason on one line) and 404 for anything else.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::readiness::Readiness;
use crate::registry::{Registry, CONTENT_TYPE};

#[derive(Clone)]
struct Ops {
    registry: Registry,
    readiness: Readiness,
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        ops.registry.render(),
    )
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    match ops.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this endpoint serves /metrics, /health and /ready\n",
    )
}

/// Binds `addr` and serves the operations endpoint until the process exits. Returns the
/// bound address (useful with port 0) or the bind error.
pub async fn serve_ops(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(not_found)
        .with_state(Ops {
            registry,
            readiness,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint on {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_ready_and_404() {
        let registry = Registry::with_labels(&[("program", "t")]);
        registry.counter("things_total", "Things.", &[]).add(2);
        let readiness = Readiness::default();
        readiness.not_ready("engine", "not connected yet");
        let addr = serve_ops("127.0.0.1:0".parse().unwrap(), registry, readiness.clone())
            .await
            .unwrap();
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("things_total{program=\"t\"} 2"), "{m}");
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/ready").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("not ready: engine: not connected yet"), "{r}");
        readiness.ready("engine");
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    }
}
