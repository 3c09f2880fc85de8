//! The `filter` stage on real devices: the shipped `configs/filtered-*.yaml` at both
//! ends of a tunnel between two network namespaces.
//!
//! The server refuses inbound TCP to port 22; the client allows only ping, web and DNS
//! to the server (and the replies). With listeners on ports 22 and 80 in the server's
//! namespace, a connection to 80 must succeed and one to 22 must fail, while ping works;
//! a connection the server opens toward the client must fail at the client's filter.

use std::net::TcpListener;
use std::time::Duration;

use lametun::testnet::{self, CLIENT_TUN, SERVER_TUN, Side};

use crate::netns::{bench, wait_up};

#[test]
fn a_filtered_port_is_refused_while_ping_and_another_port_work() {
    let Some(mut b) = bench("flt") else { return };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    b.lametun(
        Side::Server,
        "server",
        &["--config", &format!("{dir}/filtered-server.yaml")],
    )
    .unwrap();
    b.lametun(
        Side::Client,
        "client",
        &["--config", &format!("{dir}/filtered-client.yaml")],
    )
    .unwrap();
    wait_up(&b);

    // Listeners on both ports: a refused connection is then the filter's doing, not a
    // closed port. The kernel completes handshakes into the backlog without `accept`.
    let listen = |side: Side, ip: &'static str, port: u16| {
        b.in_netns(side, move || TcpListener::bind(testnet::addr(ip, port)))
            .unwrap()
            .unwrap_or_else(|e| panic!("listening on {ip}:{port}: {e}"))
    };
    let _ssh = listen(Side::Server, SERVER_TUN, 22);
    let _web = listen(Side::Server, SERVER_TUN, 80);
    let _client_web = listen(Side::Client, CLIENT_TUN, 80);

    let connects = |from: Side, ip: &str, port: u16, secs: u64| {
        b.tcp_connects(from, testnet::addr(ip, port), Duration::from_secs(secs))
            .unwrap()
    };
    assert!(
        connects(Side::Client, SERVER_TUN, 80, 5),
        "port 80 is allowed at both ends\nserver:\n{}\nclient:\n{}",
        b.log("server"),
        b.log("client")
    );
    assert!(
        !connects(Side::Client, SERVER_TUN, 22, 2),
        "the server's filter denies inbound TCP to port 22"
    );
    assert!(
        !connects(Side::Server, CLIENT_TUN, 80, 2),
        "the client's filter denies what the server opens"
    );
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    // And port 80 still works after the refusals (nothing got stuck).
    assert!(connects(Side::Client, SERVER_TUN, 80, 5));
}
