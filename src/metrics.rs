//! The metrics endpoint shared by the scheduler server, the standby worker and the operator:
//! takes a listener and a function rendering the OpenMetrics text; gives, on axum, `GET
//! /metrics`, `/healthz` and `/readyz` (both "ok" while the process serves), 405 for another
//! method on those paths, 404 for another path, and a graceful stop on the caller's
//! CancellationToken ([`listen`] gives the listener). Gives the callers what they render
//! with, on `prometheus-client`: [`Sorted`] (a family listed in the order given) and
//! [`encode`]. Knows nothing of what the figures mean (the callers render them); must not
//! block on the render (it is a plain function).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The content type of what [`encode`] writes (OpenMetrics text, as prometheus-client gives).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the other answers.
const PLAIN: &str = "text/plain; charset=utf-8";

/// A function rendering the OpenMetrics text of the current figures.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A metric family whose samples are written in the order given: the crate's `Family` writes
/// them in hash order, and a scrape read by a person lists its schedules sorted.
#[derive(Debug)]
pub struct Sorted<S, M>(pub Vec<(S, M)>);

impl<S, M> FromIterator<(S, M)> for Sorted<S, M> {
    fn from_iter<I: IntoIterator<Item = (S, M)>>(iter: I) -> Self {
        Sorted(iter.into_iter().collect())
    }
}

impl<S: EncodeLabelSet, M: EncodeMetric + TypedMetric> EncodeMetric for Sorted<S, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A family of counters from counts kept in a map, one sample per key in the map's order,
/// labelled by `labels`.
pub fn counted<K, L>(
    counts: &BTreeMap<K, u64>,
    labels: impl Fn(&K) -> L,
) -> Sorted<L, ConstCounter> {
    counts
        .iter()
        .map(|(k, n)| (labels(k), ConstCounter::new(*n)))
        .collect()
}

/// The OpenMetrics text of `registry`, its `# EOF` line included. (Label values are escaped
/// by the crate.)
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String does not fail, nor do lifeboat's label values.
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("the metrics text is written to a String");
    out
}

/// The routes: `GET /metrics` (what `render` gives), `GET /healthz` and `GET /readyz`.
pub fn router(render: Render) -> Router {
    let metrics = move || {
        let render = render.clone();
        async move { ([(header::CONTENT_TYPE, OPENMETRICS)], render()) }
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
    ([(header::CONTENT_TYPE, PLAIN)], "ok\n")
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, PLAIN)],
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

    /// The head of the answer to a GET of `path`, lower case.
    async fn head(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&req("GET", path, "")).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_lowercase();
        text.split("\r\n\r\n").next().unwrap().to_string()
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
    async fn the_metrics_are_openmetrics_text_and_the_other_answers_plain_text() {
        let (addr, stop, h) = start().await;
        let want = format!("content-type: {OPENMETRICS}\r\n");
        let metrics = head(addr, "/metrics").await;
        assert!(metrics.contains(&want), "{metrics}");
        for path in ["/healthz", "/other"] {
            let other = head(addr, path).await;
            assert!(
                other.contains("content-type: text/plain; charset=utf-8\r\n"),
                "{other}"
            );
        }
        stop.cancel();
        h.await.unwrap();
    }

    #[test]
    fn a_sorted_family_keeps_its_order_and_counters_get_total_once() {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::counter::ConstCounter;
        #[derive(Debug, EncodeLabelSet)]
        struct L {
            k: String,
        }
        let mut r = Registry::default();
        let family: Sorted<L, ConstCounter> = ["b", "a", "c"]
            .into_iter()
            .enumerate()
            .map(|(i, k)| (L { k: k.into() }, ConstCounter::new(i as u64)))
            .collect();
        r.register("things", "Things seen", family);
        assert_eq!(
            encode(&r),
            "# HELP things Things seen.\n# TYPE things counter\n\
             things_total{k=\"b\"} 0\nthings_total{k=\"a\"} 1\nthings_total{k=\"c\"} 2\n# EOF\n"
        );
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
