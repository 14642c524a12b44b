//! The metrics endpoint shared by the scheduler server, the standby worker and the operator:
//! takes a listener and a function rendering the Prometheus text; gives, on axum, `GET
//! /metrics`, `/healthz` and `/readyz` (both "ok" while the process serves), 405 for another
//! method on those paths, 404 for another path, and a graceful stop on the caller's
//! CancellationToken ([`listen`] gives the listener). Knows nothing of what the figures mean
//! (the callers render them); must not block on the render (it is a plain function).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// A function rendering the Prometheus text of the current figures.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The routes: `GET /metrics` (what `render` gives), `GET /healthz` and `GET /readyz`.
pub fn router(render: Render) -> Router {
    let metrics = move || {
        let render = render.clone();
        async move { ([(header::CONTENT_TYPE, TEXT_FORMAT)], render()) }
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .fallback(not_found)
        .layer(axum::middleware::map_response(close))
}

/// One request a connection, as scrapers that read to the end expect (and as before).
async fn close(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

async fn ok() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], "ok\n")
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT_FORMAT)],
        "not found; try /metrics, /healthz or /readyz\n",
    )
}

/// Serves [`router`] on `listener` until `shutdown`; requests under way then are answered
/// before it returns.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: Render,
    shutdown: CancellationToken,
) {
    let stop = async move { shutdown.cancelled().await };
    if let Err(e) = axum::serve(listener, router(render))
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for metrics: {source}")]
pub struct MetricsError {
    pub addr: std::net::SocketAddr,
    pub source: std::io::Error,
}

impl MetricsError {
    /// The address is taken (by a server still stopping, say): it may be free later.
    pub fn is_retryable(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::AddrInUse
    }
}

/// The listener [`serve_metrics`] takes, on `addr`.
pub async fn listen(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let render: Render = Arc::new(|| "# TYPE x gauge\nx 1\n".to_string());
        let h = tokio::spawn(serve_metrics(listener, render, stop.clone()));
        (addr, stop, h)
    }

    /// Sends `request` as is and gives the status code and the body of the answer.
    async fn send(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }

    fn req(method: &str, path: &str, extra: &str) -> Vec<u8> {
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n")
            .into_bytes()
    }

    #[tokio::test]
    async fn methods_and_paths() {
        let (addr, stop, h) = start().await;
        assert_eq!(
            send(addr, &req("GET", "/metrics", "")).await,
            (200, "# TYPE x gauge\nx 1\n".into())
        );
        assert_eq!(
            send(addr, &req("GET", "/healthz", "")).await,
            (200, "ok\n".into())
        );
        assert_eq!(
            send(addr, &req("GET", "/readyz", "")).await,
            (200, "ok\n".into())
        );
        assert_eq!(
            send(addr, &req("POST", "/metrics", "content-length: 0\r\n"))
                .await
                .0,
            405
        );
        assert_eq!(send(addr, &req("DELETE", "/healthz", "")).await.0, 405);
        let (code, body) = send(addr, &req("GET", "/other", "")).await;
        assert_eq!(code, 404);
        assert!(body.contains("try /metrics"), "{body}");
        assert_eq!(send(addr, &req("GET", "/metrics/x", "")).await.0, 404);
        // No `connection: close` from the client (the it tests' scrapers): still closed.
        assert_eq!(send(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await.0, 200);
        stop.cancel();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_larger_than_4_kib_is_read_whole() {
        let (addr, stop, h) = start().await;
        // The old hand-written reader saw only the first 4 KiB: a long header pushed the
        // request line's end out of it. axum reads the whole head.
        let long = format!("x-padding: {}\r\n", "a".repeat(16 * 1024));
        assert_eq!(
            send(addr, &req("GET", "/metrics", &long)).await,
            (200, "# TYPE x gauge\nx 1\n".into())
        );
        let body = "b".repeat(10 * 1024);
        let post = format!("POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        assert_eq!(send(addr, post.as_bytes()).await.0, 405);
        stop.cancel();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn the_token_stops_the_server_and_frees_the_port() {
        let (addr, stop, h) = start().await;
        assert_eq!(send(addr, &req("GET", "/healthz", "")).await.0, 200);
        stop.cancel();
        h.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still accepting after the stop"
        );
        listen(addr).await.expect("the port is free again");
    }
}
