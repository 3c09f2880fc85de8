//! `lametun stats [ADDR] [--watch]`: read a stats endpoint over HTTP and print a table.
//!
//! The binary's CLI parses the arguments and calls [`run_stats_command`]; everything it
//! does is also here in smaller pieces, so that a test or another tool can use them:
//! [`metrics_url`] (what `ADDR` means), [`fetch`] (one scrape, parsed into a
//! [`Report`]) and [`watch`] (the refresh loop, writing to any `Write`).
//!
//! `ADDR` may be `HOST:PORT`, a bare port (`9100` means `127.0.0.1:9100`), or a full
//! `http://` URL; without a path, `/metrics` is used. The client speaks plain HTTP (the
//! endpoint has no TLS) and ignores `HTTP_PROXY`: the endpoint is local, or at least
//! not behind a web proxy.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::parse;
use crate::report::{self, Report};

/// Where `lametun stats` looks without an `ADDR`: the address the example configs use.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9100";
/// How long one scrape may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest `--watch` interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The URL of the metrics for `addr` (see the [module docs](self)).
pub fn metrics_url(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    let addr = if addr.is_empty() { DEFAULT_ADDR } else { addr };
    if addr.starts_with("https://") {
        return Err(format!(
            "{addr}: the stats endpoint speaks plain HTTP; use http://"
        ));
    }
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    if rest.contains("://") {
        return Err(format!("{addr}: only http:// URLs are supported"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = if !authority.is_empty() && authority.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{authority}")
    } else {
        authority.to_owned()
    };
    if authority.is_empty() {
        return Err(format!("{addr}: no host"));
    }
    let path = if path.is_empty() || path == "/" {
        crate::server::METRICS_PATH
    } else {
        path
    };
    Ok(format!("http://{authority}{path}"))
}

/// Scrapes `url` once and reads the report from it.
pub fn fetch(url: &str) -> Result<Report, String> {
    let text = fetch_text(url)?;
    let samples = parse::parse(&text).map_err(|e| format!("{url}: not a metrics page: {e}"))?;
    if !samples.iter().any(|s| s.name.starts_with("lametun_")) {
        return Err(format!(
            "{url}: no lametun metrics there (is it another exporter?)"
        ));
    }
    Ok(Report::from_samples(&samples))
}

fn fetch_text(url: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .call()
        .map_err(|e| {
            format!(
                "cannot read {url}: {e} (is lametun running, with a `stats` stage that has `listen:` set to this address?)"
            )
        })?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}: {}", body.trim()));
    }
    Ok(body)
}

/// What the binary's `lametun stats [ADDR] [--watch] [--interval SECS]` does: prints
/// the table for `addr` once, or with `watch` refreshes it every `interval` until
/// Ctrl-C (clearing the screen when stdout is a terminal). The error is a message for
/// the user; exit non-zero with it.
pub fn run_stats_command(addr: &str, watch: bool, interval: Duration) -> Result<(), String> {
    let url = metrics_url(addr)?;
    let stdout = std::io::stdout();
    let clear = stdout.is_terminal();
    let mut out = stdout.lock();
    let result = if watch {
        self::watch(&url, interval, None, clear, &mut out)
    } else {
        let report = fetch(&url)?;
        out.write_all(report::render(&report, None, &url).as_bytes())
            .map_err(|e| write_error(&e))
    };
    // `lametun stats | head`: the reader has what it wanted.
    match result {
        Err(e) if e == BROKEN_PIPE => Ok(()),
        other => other,
    }
}

/// The message of a failed write to stdout when the reader went away (`| head`).
const BROKEN_PIPE: &str = "stdout closed";

fn write_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        BROKEN_PIPE.to_owned()
    } else {
        e.to_string()
    }
}

/// Whether `now` was scraped from a tunnel started after `before` was: its uptime is
/// shorter. Its counters began again from zero, so rates against `before` mean nothing.
fn restarted(before: &Report, now: &Report) -> bool {
    matches!((before.uptime, now.uptime), (Some(b), Some(n)) if n < b)
}

/// The `--watch` loop: scrape `url` every `interval` and write the table to `out`, with
/// the rates since the previous scrape. Stops after `rounds` scrapes, or never with
/// `None` (until Ctrl-C). With `clear`, each table replaces the previous one on the
/// screen (`top`-style); without, tables follow each other, separated by a blank line.
///
/// The first scrape must succeed (a wrong address is an error at once); later failures
/// are shown in place of the table and the loop goes on, so a tunnel restart does not
/// end the watch.
pub fn watch(
    url: &str,
    interval: Duration,
    rounds: Option<u64>,
    clear: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    if interval < MIN_INTERVAL {
        return Err(format!(
            "the watch interval must be at least {} ms",
            MIN_INTERVAL.as_millis()
        ));
    }
    let io = |e: std::io::Error| write_error(&e);
    let mut previous: Option<(Report, Instant)> = None;
    let mut round = 0u64;
    while rounds.is_none_or(|r| round < r) {
        if round > 0 {
            std::thread::sleep(interval);
        }
        round += 1;
        let result = fetch(url);
        let taken = Instant::now();
        let screen = match &result {
            Ok(report) => {
                let since = previous
                    .as_ref()
                    .filter(|(p, _)| !restarted(p, report))
                    .map(|(p, at)| (p, taken.saturating_duration_since(*at)));
                report::render(report, since, url)
            }
            Err(e) if previous.is_none() && round == 1 => return Err(e.clone()),
            Err(e) => format!(
                "lametun stats  {url}\n\n{e}\nretrying every {}s…\n",
                interval.as_secs_f64()
            ),
        };
        if clear {
            // Cursor home, clear the screen: the `top` way to redraw.
            out.write_all(b"\x1b[H\x1b[2J").map_err(io)?;
        } else if round > 1 {
            out.write_all(b"\n").map_err(io)?;
        }
        out.write_all(screen.as_bytes()).map_err(io)?;
        if clear {
            let _ = writeln!(
                out,
                "\nrefreshing every {}s · Ctrl-C to quit",
                interval.as_secs_f64()
            );
        }
        out.flush().map_err(io)?;
        previous = match result {
            Ok(report) => Some((report, taken)),
            // After a failure the counters may have restarted: no rates against the old.
            Err(_) => None,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_metrics_urls() {
        let cases = [
            ("", "http://127.0.0.1:9100/metrics"),
            ("9200", "http://127.0.0.1:9200/metrics"),
            ("10.0.0.1:9100", "http://10.0.0.1:9100/metrics"),
            ("[::1]:9100", "http://[::1]:9100/metrics"),
            ("localhost:9100/", "http://localhost:9100/metrics"),
            ("http://h:1/custom", "http://h:1/custom"),
            ("http://h:1", "http://h:1/metrics"),
        ];
        for (addr, url) in cases {
            assert_eq!(metrics_url(addr).as_deref(), Ok(url), "{addr}");
        }
        assert!(
            metrics_url("https://h:1")
                .unwrap_err()
                .contains("plain HTTP")
        );
        assert!(metrics_url("ftp://h:1").is_err());
        assert!(metrics_url("http:///metrics").is_err());
    }

    #[test]
    fn a_shorter_uptime_means_a_restarted_tunnel() {
        let up = |s| Report {
            uptime: Some(Duration::from_secs(s)),
            ..Report::default()
        };
        assert!(restarted(&up(100), &up(3)));
        assert!(!restarted(&up(100), &up(102)));
        assert!(!restarted(&Report::default(), &up(3)));
    }

    #[test]
    fn a_closed_stdout_is_not_an_error_message() {
        let e = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(write_error(&e), BROKEN_PIPE);
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_ne!(write_error(&e), BROKEN_PIPE);
    }

    #[test]
    fn watch_refuses_a_busy_loop_interval() {
        let mut out = Vec::new();
        let err = watch(
            "http://127.0.0.1:9/metrics",
            Duration::ZERO,
            Some(1),
            false,
            &mut out,
        );
        assert!(err.unwrap_err().contains("at least"));
    }
}
