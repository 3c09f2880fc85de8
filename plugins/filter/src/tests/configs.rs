//! The example configs in `configs/` load, build, and do what their comments say.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lametun_core::{BuildContext, DropReason, PacketBuf, PacketMeta, Pipeline, TunnelConfig};

use super::craft::*;

fn pipeline(file: &str) -> Pipeline {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("the file exists");
    let config = TunnelConfig::from_yaml(&text, Some(&path))
        .unwrap_or_else(|e| panic!("{file} does not parse:\n{e}"));
    assert!(config.peer.role.is_some());
    config
        .build_pipeline(&BuildContext::default())
        .unwrap_or_else(|e| panic!("{file} does not build:\n{e}"))
}

/// `Ok(())` if the pipeline passes `packet` inbound (or outbound), else the reason.
fn pass(p: &Pipeline, inbound: bool, packet: &[u8]) -> Result<(), DropReason> {
    let mut storage = packet.to_vec();
    let mut pkt = PacketBuf::with_data(&mut storage, 0, packet);
    let meta = PacketMeta::new(Instant::now(), None);
    let r = if inbound {
        p.inbound(&mut pkt, &meta)
    } else {
        p.outbound(&mut pkt, &meta)
    };
    r.map_err(|d| d.reason)
}

const SERVER: [u8; 4] = [172, 31, 255, 13];
const FILTERED: Result<(), DropReason> = Err(DropReason::Filtered);

#[test]
fn filtered_server_refuses_inbound_ssh_only() {
    let p = pipeline("filtered-server.yaml");
    assert_eq!(
        p.describe()[0].details,
        "default allow, 3 rules (1 allow, 2 deny)"
    );
    let ssh = v4(CLIENT4, SERVER, TCP, &tcp(40000, 22, 0));
    assert_eq!(pass(&p, true, &ssh), FILTERED);
    assert_eq!(
        pass(&p, true, &v4(CLIENT4, SERVER, TCP, &tcp(40000, 80, 0))),
        Ok(())
    );
    assert_eq!(
        pass(&p, true, &v4(CLIENT4, SERVER, ICMP, &icmp(8, 56))),
        Ok(())
    );
    assert_eq!(
        pass(&p, true, &v4(CLIENT4, SERVER, UDP, &udp(1, 445, 0))),
        FILTERED
    );
    // The server's own SSH out, and the replies.
    assert_eq!(
        pass(&p, false, &v4(SERVER, CLIENT4, TCP, &tcp(50000, 22, 0))),
        Ok(())
    );
    assert_eq!(
        pass(&p, true, &v4(CLIENT4, SERVER, TCP, &tcp(22, 50000, 0))),
        Ok(())
    );
    assert_eq!(pass(&p, true, &[]), Ok(()), "keepalive");
}

#[test]
fn filtered_client_allows_web_dns_and_ping_only() {
    let p = pipeline("filtered-client.yaml");
    let web = v4(CLIENT4, SERVER, TCP, &tcp(40000, 443, 0));
    let reply = v4(SERVER, CLIENT4, TCP, &tcp(443, 40000, 0));
    assert_eq!(pass(&p, false, &web), Ok(()));
    assert_eq!(pass(&p, true, &reply), Ok(()));
    assert_eq!(
        pass(&p, true, &web),
        FILTERED,
        "the server may not open web to us"
    );
    assert_eq!(
        pass(&p, false, &v4(CLIENT4, SERVER, UDP, &udp(5000, 53, 30))),
        Ok(())
    );
    assert_eq!(
        pass(&p, true, &v4(SERVER, CLIENT4, UDP, &udp(53, 5000, 30))),
        Ok(())
    );
    assert_eq!(
        pass(&p, false, &v4(CLIENT4, SERVER, TCP, &tcp(40000, 22, 0))),
        FILTERED
    );
    assert_eq!(
        pass(&p, false, &v4(CLIENT4, OTHER4, TCP, &tcp(40000, 443, 0))),
        FILTERED
    );
    assert_eq!(
        pass(&p, true, &v4(SERVER, CLIENT4, ICMP, &icmp(0, 56))),
        Ok(())
    );
    assert_eq!(pass(&p, true, &[]), Ok(()), "keepalive");
}
