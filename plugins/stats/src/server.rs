//! The HTTP endpoint: `GET /metrics` on the `listen` address, served by hyper.
//!
//! The socket is bound in [`StatsConfig::build`](crate::StatsConfig) by [`bind`], so that
//! a port in use is a config error at start-up rather than a log line later. The stage's
//! [`background`](lametun_core::Stage::background) hands it to [`serve`], a future that
//! the driver runs on the tunnel's tokio runtime and drops at shutdown; every
//! connection is a task of a [`JoinSet`] owned by that future, so dropping it closes
//! them all.
//!
//! Each scrape takes a fresh `TunnelSnapshot` through
//! the [`TelemetryHandle`] (reads of relaxed atomics) and encodes it; nothing is cached
//! and the packet path is never waited on. The limits keep a misbehaving client from
//! costing more than a few sockets: at most [`MAX_CONNECTIONS`] at once, request headers
//! within [`HEADER_TIMEOUT`], and a connection lives at most [`CONNECTION_LIFETIME`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use lametun_core::{TelemetryHandle, TunnelSnapshot};
use tokio::task::JoinSet;

use crate::exposition::{self, Format};

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one (keep-alive) connection. Prometheus reconnects as needed.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// The path of the metrics.
pub const METRICS_PATH: &str = "/metrics";

/// Binds the endpoint's socket (non-blocking, ready for tokio). The error says what
/// usually causes it.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (the port is in use: another lametun, or an exporter such as node_exporter, which also defaults to 9100?)"
            }
            io::ErrorKind::AddrNotAvailable => " (the address is not one of this host's)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
            _ => "",
        };
        format!("cannot listen on {addr}: {e}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok(listener)
}

/// Serves the metrics on `listener` until the future is dropped.
pub async fn serve(listener: std::net::TcpListener, telemetry: TelemetryHandle) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "stats endpoint: cannot use the bound socket");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("stats: serving metrics at http://{addr}{METRICS_PATH}");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "stats: the metrics endpoint {addr} is not on loopback and has no authentication: anyone who can reach it sees the tunnel's counters"
            );
        }
    }
    let started = Instant::now();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::debug!(%from, "stats endpoint: too many connections, closing one");
                        continue;
                    }
                    connections.spawn(connection(stream, telemetry.clone(), started));
                }
                Err(e) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::debug!(error = %e, "stats endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, telemetry: TelemetryHandle, started: Instant) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let snapshot = telemetry.snapshot();
        let response = respond(&req, snapshot.as_ref(), started.elapsed());
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    // A timeout (`Err(Elapsed)`) just ends an idle keep-alive connection.
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        tracing::debug!(error = %e, "stats endpoint: connection error");
    }
}

/// The answer to one request: the metrics at [`METRICS_PATH`] (503 before the tunnel
/// runs), a pointer to them at `/`, 404 elsewhere, 405 for methods other than GET and
/// HEAD.
pub fn respond<B>(
    req: &Request<B>,
    snapshot: Option<&TunnelSnapshot>,
    uptime: Duration,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        METRICS_PATH => {}
        "/" => {
            return text(
                StatusCode::OK,
                "lametun stats endpoint: the metrics are at /metrics\n",
            );
        }
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found; the metrics are at /metrics\n",
            );
        }
    }
    let Some(snapshot) = snapshot else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the tunnel is not running (yet)\n",
        );
    };
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let body = exposition::encode(snapshot, Some(uptime), format);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(format.content_type()),
    );
    r.headers_mut().insert(
        CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}
