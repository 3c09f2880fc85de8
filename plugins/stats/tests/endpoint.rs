//! The HTTP endpoint over real TCP on 127.0.0.1 (an ephemeral port), and the client
//! that reads it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lametun_core::{BuildContext, Forwarder, Pipeline, TelemetryHandle};
use lametun_stage_stats::client;

/// A client tunnel with `[stats]` whose endpoint listens on an ephemeral port; the
/// endpoint's task runs on the test's runtime.
fn tunnel() -> (Arc<Forwarder>, SocketAddr, tokio::task::JoinHandle<()>) {
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry.clone());
    let stats = build("interval: off\nlisten: 127.0.0.1:0", &cx).unwrap();
    let addr = stats.local_addr().unwrap();
    let mut p = Pipeline::new();
    p.push("stats", "stats", Box::new(stats));
    let f = client(p, &telemetry);
    let mut tasks = f.pipeline().background_tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].0, "stats");
    let (_, task) = tasks.pop().unwrap();
    assert!(
        f.pipeline().background_tasks().is_empty(),
        "the listener is handed out once"
    );
    (f, addr, tokio::spawn(task))
}

/// A raw HTTP/1.1 exchange, to see status lines and headers as a scraper does.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_counters_of_the_running_tunnel() {
    let (f, addr, server) = tunnel();
    for _ in 0..5 {
        send(&f, &ping(1000));
    }
    receive(&f, &with_packet_info(&ping(84)));
    receive(&f, &[0, 0, 8, 0]);

    let url = format!("http://{addr}/metrics");
    let report = blocking(move || client::fetch(&url)).await.unwrap();
    let point = &report.points[0];
    assert_eq!((point.outbound.packets, point.outbound.bytes), (5, 5000));
    assert_eq!((point.inbound.packets, point.inbound.bytes), (1, 84));
    assert_eq!(point.inbound.keepalives, 1);
    assert_eq!(report.tunnel.tun_rx_packets, 5);
    assert_eq!(report.tunnel.keepalives_received, 1);
    assert_eq!(report.peer.as_deref(), Some(SERVER));
    assert!(report.uptime.is_some());

    // What a scraper sees: the negotiated format, its content type, no caching.
    let open = blocking(move || {
        raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n",
        )
    })
    .await;
    assert!(open.starts_with("HTTP/1.1 200 OK\r\n"), "{open}");
    assert!(
        open.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{open}"
    );
    assert!(open.contains("cache-control: no-store"), "{open}");
    assert!(
        open.contains("\nlametun_stats_packets_total{stage=\"stats\",direction=\"outbound\"} 5\n"),
        "{open}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    let classic = blocking(move || {
        raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await;
    assert!(
        classic.contains("content-type: text/plain; version=0.0.4"),
        "{classic}"
    );
    assert!(!classic.contains("# EOF"), "{classic}");

    server.abort();
    assert!(server.await.unwrap_err().is_cancelled());
    // Dropping the task closed the socket: nothing listens there any more.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_and_methods_are_refused_politely() {
    let (_f, addr, server) = tunnel();
    let cases = [
        (
            "GET / HTTP/1.1",
            "HTTP/1.1 200 OK",
            "the metrics are at /metrics",
        ),
        ("GET /nope HTTP/1.1", "HTTP/1.1 404 Not Found", "not found"),
        (
            "POST /metrics HTTP/1.1",
            "HTTP/1.1 405 Method Not Allowed",
            "only GET and HEAD",
        ),
        ("HEAD /metrics HTTP/1.1", "HTTP/1.1 200 OK", ""),
    ];
    for (line, status, body) in cases {
        let answer = blocking(move || {
            raw(
                addr,
                &format!("{line}\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            )
        })
        .await;
        assert!(answer.starts_with(status), "{line}: {answer}");
        assert!(answer.contains(body), "{line}: {answer}");
        if line.starts_with("HEAD") {
            assert!(!answer.contains("lametun_"), "HEAD has no body: {answer}");
        }
        if line.starts_with("POST") {
            assert!(answer.contains("allow: GET, HEAD"), "{answer}");
        }
    }
    // Garbage is answered with an error, and the endpoint goes on serving.
    let answer = blocking(move || raw(addr, "\x16\x03\x01 not http\r\n\r\n")).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let url = format!("http://{addr}/metrics");
    assert!(blocking(move || client::fetch(&url)).await.is_ok());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_tunnel_runs_the_endpoint_says_so() {
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry);
    let stats = build("interval: off\nlisten: 127.0.0.1:0", &cx).unwrap();
    let addr = stats.local_addr().unwrap();
    let server = tokio::spawn(lametun_core::Stage::background(&stats).unwrap());
    let url = format!("http://{addr}/metrics");
    let err = blocking(move || client::fetch(&url)).await.unwrap_err();
    assert!(err.contains("503") && err.contains("not running"), "{err}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_with_rates_and_stops_after_the_rounds_asked() {
    let (f, addr, server) = tunnel();
    let url = format!("http://{addr}/metrics");
    let sending = f.clone(); // the tunnel must outlive the sender, or the endpoint says 503
    let sender = std::thread::spawn(move || {
        let f = sending;
        for _ in 0..20 {
            send(&f, &ping(500));
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let out = blocking(move || {
        let mut out = Vec::new();
        client::watch(&url, Duration::from_millis(150), Some(3), true, &mut out).map(|()| out)
    })
    .await
    .unwrap();
    sender.join().unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("\x1b[H\x1b[2J").count(), 3, "{out}");
    assert_eq!(out.matches("average rates since start").count(), 1, "{out}");
    assert_eq!(out.matches("rates over the last").count(), 2, "{out}");
    assert!(out.contains("Ctrl-C to quit"));
    assert!(!out.contains("retrying"), "{out}");
    drop(f);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_explains_what_is_wrong() {
    // Nothing listens: the error says what to check.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = blocking(move || {
        client::run_stats_command(&free.to_string(), false, Duration::from_secs(1))
    })
    .await
    .unwrap_err();
    assert!(
        err.contains("cannot read") && err.contains("listen:"),
        "{err}"
    );
    // A watch whose first scrape fails ends at once with that error.
    let err = blocking(move || {
        client::watch(
            &format!("http://{free}/metrics"),
            Duration::from_millis(100),
            None,
            false,
            &mut Vec::new(),
        )
    })
    .await
    .unwrap_err();
    assert!(err.contains("cannot read"), "{err}");

    // An HTTP server that is not lametun.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let page = "node_cpu_seconds_total{cpu=\"0\"} 1\n".to_owned();
    let fake = tokio::spawn(serve_pages(other, vec![page.clone(), page]));
    let url = format!("http://{other_addr}/metrics");
    let err = blocking(move || client::fetch(&url)).await.unwrap_err();
    assert!(err.contains("no lametun metrics"), "{err}");
    let url = format!("http://{other_addr}/metrics");
    let _ = blocking(move || client::fetch(&url)).await;
    fake.await.unwrap();
}

/// A tunnel that restarted between two scrapes (its uptime went back) gets averages
/// since its start, not rates and changes against the old tunnel's counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_does_not_compare_a_restarted_tunnel_with_the_old_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Three scrapes: up 100 s, then (restarted) up 2 s, then up 3 s.
    let pages = [(100, 5000), (2, 10), (3, 20)]
        .map(|(uptime, packets)| {
            format!("lametun_uptime_seconds {uptime}\nlametun_tun_rx_packets_total {packets}\n")
        })
        .to_vec();
    let server = tokio::spawn(serve_pages(listener, pages));
    let url = format!("http://{addr}/metrics");
    let out = blocking(move || {
        let mut out = Vec::new();
        client::watch(&url, Duration::from_millis(100), Some(3), false, &mut out).map(|()| out)
    })
    .await
    .unwrap();
    server.await.unwrap();
    let out = String::from_utf8(out).unwrap();
    // The first table and the one after the restart: averages; the third: rates.
    assert_eq!(out.matches("average rates since start").count(), 2, "{out}");
    assert_eq!(out.matches("rates over the last").count(), 1, "{out}");
}

/// An HTTP server that answers one request per connection with each of `pages` in turn,
/// then stops.
async fn serve_pages(listener: tokio::net::TcpListener, pages: Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for body in pages {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    }
}
