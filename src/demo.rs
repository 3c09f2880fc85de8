//! `lametun demo`: a working tunnel on one machine, for a newcomer.
//!
//! Makes two network namespaces joined by a veth pair (two "hosts" and the cable
//! between them), starts this binary in each (a server with `-listen`, a client with
//! `-server`), pings across the tunnel both ways, sends 20 MB over TCP through it and
//! compares checksums, shows what each end logged, and removes everything again, also
//! when a step fails or on Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::testnet::{self, Bench, Side};

fn step(what: &str) {
    println!("\n==> {what}");
}

/// Runs the demo; the error says which step failed.
pub fn run() -> Result<(), String> {
    if let Some(why) = testnet::unavailable() {
        return Err(format!(
            "the demo {why}; run it as root: `sudo lametun demo`"
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    // Ctrl-C also reaches the processes we started (same process group); this process
    // catches it so that the bench is taken down before it exits.
    let interrupted = Arc::new(AtomicBool::new(false));
    // A one-thread runtime that only waits for Ctrl-C, while the steps below block.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let flag = interrupted.clone();
    // Listening from here on, before the first step (in the task, a Ctrl-C in between
    // could still end this process and leave the namespaces behind).
    let mut sigint = rt
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
        .map_err(|e| format!("cannot catch Ctrl-C: {e}"))?;
    rt.spawn(async move {
        if sigint.recv().await.is_some() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    let result = steps(exe, &interrupted);
    // Ctrl-C also ended the processes of the step under way (a ping, `ip`, the two
    // tunnels), so that step failed: say why, not what it failed with.
    if interrupted.load(Ordering::SeqCst) {
        return Err("interrupted: namespaces removed, processes ended".to_owned());
    }
    result
}

/// The demo's steps; the bench they make is taken down when they return.
fn steps(exe: std::path::PathBuf, interrupted: &AtomicBool) -> Result<(), String> {
    let check = || {
        if interrupted.load(Ordering::SeqCst) {
            Err("interrupted".to_owned())
        } else {
            Ok(())
        }
    };

    step("two network namespaces joined by a veth pair");
    let mut bench =
        Bench::new("demo", exe).map_err(|e| format!("creating the namespaces failed: {e}"))?;
    println!(
        "  {} ({} {}) <-> {} ({} {})",
        bench.ns(Side::Server),
        bench.veth(Side::Server),
        testnet::SERVER_UL,
        bench.ns(Side::Client),
        bench.veth(Side::Client),
        testnet::CLIENT_UL
    );

    step("start the server and the client (this binary, the article's flags)");
    let server_addr = format!("{}/24", testnet::SERVER_TUN);
    let client_addr = format!("{}/24", testnet::CLIENT_TUN);
    let server = [
        "-listen",
        "-device",
        "tun0",
        "--address",
        server_addr.as_str(),
    ];
    let client = [
        "-server",
        testnet::SERVER_UL,
        "-device",
        "tun0",
        "--address",
        client_addr.as_str(),
    ];
    println!("  server: lametun {}", server.join(" "));
    println!("  client: lametun {}", client.join(" "));
    bench
        .lametun(Side::Server, "server", &server)
        .map_err(|e| e.to_string())?;
    bench
        .lametun(Side::Client, "client", &client)
        .map_err(|e| e.to_string())?;
    // Up to 10 s, a second at a time, so that Ctrl-C is heard within one.
    let mut up = false;
    for _ in 0..10 {
        check()?;
        if bench.wait_for_ping(Side::Client, testnet::SERVER_TUN, Duration::from_secs(1)) {
            up = true;
            break;
        }
    }
    check()?;
    if !up {
        return Err(format!(
            "the tunnel did not come up within 10 s\nserver log:\n{}\nclient log:\n{}",
            bench.log("server"),
            bench.log("client")
        ));
    }
    for line in bench
        .log("server")
        .lines()
        .filter(|l| l.contains("MTU") || l.contains("fast paths"))
    {
        println!("  server: {}", line.trim());
    }

    step("ping through the tunnel, both ways");
    check()?;
    let there = bench
        .ping(Side::Client, testnet::SERVER_TUN, 5, None, false)
        .map_err(|e| e.to_string())?;
    println!("  client -> {}: {there}/5 replies", testnet::SERVER_TUN);
    check()?;
    let back = bench
        .ping(Side::Server, testnet::CLIENT_TUN, 5, None, false)
        .map_err(|e| e.to_string())?;
    println!("  server -> {}: {back}/5 replies", testnet::CLIENT_TUN);

    step("20 MB over TCP, client -> server, SHA-256 compared");
    check()?;
    let t = bench
        .tcp_transfer(
            Side::Server,
            testnet::addr(testnet::SERVER_TUN, 5001),
            Side::Client,
            20 << 20,
            Duration::from_secs(30),
        )
        .map_err(|e| format!("the TCP transfer failed: {e}"))?;
    println!(
        "  {} bytes in {:.2} s ({:.0} Mbit/s), checksums {}",
        t.bytes,
        t.seconds,
        t.mbit_per_s(),
        if t.intact() { "match" } else { "DIFFER" }
    );

    step("what the server saw");
    for line in bench
        .log("server")
        .lines()
        .filter(|l| l.contains("learned") || l.contains("lametun starting"))
    {
        println!("  {}", line.trim());
    }

    step("clean up");
    drop(bench);
    println!("  namespaces removed, processes ended");
    if there == 5 && back == 5 && t.intact() {
        println!("\nThe tunnel works. Next: README.md, \"Running a tunnel\".");
        Ok(())
    } else {
        Err("some traffic did not get through (see above)".into())
    }
}
