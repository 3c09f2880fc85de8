//! The TUN edge: opening the device, its queues and offloads, and configuring the link.
//!
//! The article opens `/dev/net/tun` and calls the `TUNSETIFF` ioctl by hand with
//! `unsafe` pointer casts. We let `tun-rs` do that (it also knows multi-queue devices and
//! the virtio-net offload header) and configure the link (MTU, addresses, routes, up)
//! over rtnetlink, the interface `ip` itself uses.
//!
//! Two things differ from the Go program on purpose:
//!
//! - the device is opened with `IFF_NO_PI`: the 4-byte packet-information header that the
//!   Go lametun sends is written by the forwarder instead (see `lametun_core::wire`), which
//!   leaves the kernel free to put the virtio-net header there, the one that carries TCP
//!   and UDP segmentation offload (TSO/USO): reads then return up to 64 KiB "superpackets"
//!   and writes may coalesce many packets into one (GRO);
//! - with several workers the device gets several queues (`IFF_MULTI_QUEUE`) and one
//!   worker thread reads each. The kernel queues a flow's packets on the queue that flow
//!   was last written on, so the inbound threads write each flow on a queue of their
//!   choosing (`gro::flow_queue`), spreading the flows over the workers (and read the
//!   answers to what they wrote from there: see `driver::inbound`).
//!
//! Every feature is probed and falls back: a device created earlier without multi-queue
//! support gets one queue, a kernel without TUN offloads gets plain reads and writes, a
//! process without `CAP_NET_ADMIN` (on a device made for its user) leaves the link as
//! it is, and offloads stay on only where the link's segment cap holds (it cannot set
//! it; root may have).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tun_rs::{DeviceBuilder, SyncDevice};

/// Largest number of segments we let the kernel put in one TUN superpacket. A read is
/// split into that many packet slots at most, so the driver can size its batches;
/// without the cap a peer announcing a tiny TCP MSS could make the kernel build
/// superpackets of hundreds of segments.
pub const GSO_MAX_SEGS: u32 = 64;

/// An open TUN device: one handle per queue.
pub struct Tun {
    /// The queues, one per worker; the inbound path writes to all of them.
    pub queues: Vec<Arc<SyncDevice>>,
    /// The interface name.
    pub name: String,
    /// The interface index.
    pub index: u32,
    /// Whether the virtio-net header (TSO/GRO offload) is on.
    pub offload: bool,
    /// Whether UDP segmentation offload (USO, Linux 6.2+) is on too.
    pub udp_offload: bool,
}

/// A start-up failure with a message for the user.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

fn explain_open(name: &str, e: &io::Error) -> SetupError {
    let hint = match e.raw_os_error() {
        Some(libc_eperm) if libc_eperm == nix::libc::EPERM || libc_eperm == nix::libc::EACCES => {
            format!(
                "no permission to open TUN device {name}: run as root (or with CAP_NET_ADMIN), \
             or create the device for your user first: \
             `sudo ip tuntap add dev {name} mode tun user $USER && sudo ip link set {name} up`"
            )
        }
        Some(nix::libc::EBUSY) => format!(
            "TUN device {name} is in use by another process (is another lametun running on it?)"
        ),
        Some(nix::libc::ENOENT) | Some(nix::libc::ENODEV) => {
            "/dev/net/tun is missing: load the tun module (`modprobe tun`)".to_owned()
        }
        _ => format!("cannot open TUN device {name}: {e}"),
    };
    SetupError(hint)
}

fn build(name: &str, multi_queue: bool, offload: bool) -> io::Result<SyncDevice> {
    DeviceBuilder::new()
        // Not brought up here (an ioctl that needs CAP_NET_ADMIN even on a device made
        // for this user): `configure` does it, when it may.
        .inherit_enable_state()
        .name(name)
        .multi_queue(multi_queue)
        .offload(offload)
        .packet_information(false)
        .build_sync()
}

/// `IFF_PERSIST` in `/sys/class/net/NAME/tun_flags`.
const IFF_PERSIST: u32 = 0x0800;
/// `IFF_TAP` in `/sys/class/net/NAME/tun_flags`.
const IFF_TAP: u32 = 0x0002;
/// `IFF_MULTI_QUEUE` in `/sys/class/net/NAME/tun_flags`.
const IFF_MULTI_QUEUE_FLAG: u32 = 0x0100;

/// Refuses a TUN device that another process holds. A device that is not persistent
/// exists only while some process has it open; a persistent multi-queue one is held if
/// a process of this network namespace has a queue of it open. (The kernel would refuse
/// a second opener of a single-queue device with `EBUSY`, but lets it attach to a
/// multi-queue one as one more queue, silently splitting the traffic between two
/// tunnels.)
fn check_not_in_use(name: &str) -> Result<(), SetupError> {
    let dev = std::path::Path::new("/sys/class/net").join(name);
    if dev.exists() && !dev.join("tun_flags").exists() {
        return Err(SetupError(format!(
            "{name} exists and is not a TUN device: choose another -device name"
        )));
    }
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/tun_flags"));
    if let Ok(flags) = &flags
        && let Ok(flags) = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        && flags & IFF_TAP != 0
    {
        // The kernel would refuse to open it as TUN with a bare EINVAL.
        return Err(SetupError(format!(
            "{name} is a TAP device, not a TUN device: choose another -device name"
        )));
    }
    if let Ok(flags) = flags
        && let Ok(flags) = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        && flags & IFF_PERSIST == 0
    {
        return Err(SetupError(format!(
            "TUN device {name} is in use by another process (is another lametun running on it?)"
        )));
    }
    if let Ok(flags) = std::fs::read_to_string(format!("/sys/class/net/{name}/tun_flags"))
        && let Ok(flags) = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        && flags & IFF_MULTI_QUEUE_FLAG != 0
        && let Some(pid) = holder_of(name)
    {
        return Err(SetupError(format!(
            "TUN device {name} is in use by process {pid} (is another lametun running on it?)"
        )));
    }
    Ok(())
}

/// Another process of this network namespace that has a queue of TUN device `name`
/// open: the kernel names the device of a TUN descriptor in its fdinfo (`iff:`). Only
/// processes this one may inspect are seen (all of them for root).
fn holder_of(name: &str) -> Option<u32> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    let me = std::process::id();
    let want = format!("iff:\t{name}\n");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me || std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()? != ours {
                return None;
            }
            let holds = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
                .ok()?
                .flatten()
                .any(|fd| std::fs::read_to_string(fd.path()).is_ok_and(|t| t.contains(&want)));
            holds.then_some(pid)
        })
}

/// Opens (or creates) TUN device `name` with up to `workers` queues, with offloads if
/// `offload` and the kernel has them. Falls back to one queue and no offload.
pub fn open(name: &str, workers: usize, offload: bool) -> Result<Tun, SetupError> {
    check_not_in_use(name)?;
    // Multi-queue first when several workers want it, single-queue first otherwise;
    // the other one too, because a device that exists already (`ip tuntap add`, with
    // or without `multi_queue`) can only be opened with the flag it was made with.
    let mq_order = if workers > 1 {
        [true, false]
    } else {
        [false, true]
    };
    let mut attempts = Vec::new();
    for off in [offload, false] {
        for mq in mq_order {
            if !attempts.contains(&(mq, off)) {
                attempts.push((mq, off));
            }
        }
    }
    let mut last = None;
    let mut opened = None;
    for (mq, off) in attempts {
        match build(name, mq, off) {
            Ok(dev) => {
                opened = Some((dev, mq));
                break;
            }
            Err(e) => {
                // EINVAL: the device exists with the other multi-queue flag (made by
                // `ip tuntap add` with or without `multi_queue`), or the kernel lacks a
                // feature: try the next combination.
                let retry = matches!(e.raw_os_error(), Some(nix::libc::EINVAL));
                tracing::debug!(multi_queue = mq, offload = off, error = %e, "opening the TUN device failed");
                last = Some(e);
                if !retry {
                    break;
                }
            }
        }
    }
    let Some((first, multi_queue)) = opened else {
        return Err(explain_open(name, &last.expect("at least one attempt")));
    };
    let offload_on = first.tcp_gso();
    let udp_offload = first.udp_gso();
    let index = first
        .if_index()
        .map_err(|e| SetupError(format!("TUN device {name}: cannot read its index: {e}")))?;
    let real_name = first.name().unwrap_or_else(|_| name.to_owned());
    let mut queues = vec![Arc::new(first)];
    if multi_queue {
        while queues.len() < workers {
            match queues[0].try_clone() {
                Ok(q) => queues.push(Arc::new(q)),
                Err(e) => {
                    tracing::warn!(error = %e, queues = queues.len(), "could not open another TUN queue");
                    break;
                }
            }
        }
    }
    for q in &queues {
        q.set_nonblocking(true).map_err(|e| {
            SetupError(format!(
                "TUN device {name}: cannot make it non-blocking: {e}"
            ))
        })?;
    }
    Ok(Tun {
        queues,
        name: real_name,
        index,
        offload: offload_on,
        udp_offload,
    })
}

/// What [`configure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Configured {
    /// MTU, segment cap, addresses, up, routes: all set.
    Done,
    /// Nothing: the process may not change links (no `CAP_NET_ADMIN`), and no address
    /// or route was asked for. The device stays as its owner set it up (a device made
    /// with `ip tuntap add ... user $USER`, as in the article).
    NotPermitted,
}

/// Whether a netlink request failed for lack of permission.
fn not_permitted(e: &rtnetlink::Error) -> bool {
    matches!(error_code(e), Some(nix::libc::EPERM | nix::libc::EACCES))
}

/// The errno of a netlink request that the kernel refused.
fn error_code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The output device of the main table's route to exactly `net`, if there is one.
async fn route_device(handle: &rtnetlink::Handle, net: &IpNet) -> Option<u32> {
    use futures_util::TryStreamExt as _;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
    let query = match net {
        IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    let mut routes = handle.route().get(query).execute();
    while let Ok(Some(route)) = routes.try_next().await {
        let table = route
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(route.header.table));
        let destination = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        });
        let destination = destination.unwrap_or(match net {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        if table == u32::from(RouteHeader::RT_TABLE_MAIN)
            && route.header.destination_prefix_length == net.prefix_len()
            && destination == net.network()
        {
            return route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
        }
    }
    None
}

/// Configures the link: MTU, the GSO segment cap, addresses, up, then routes.
/// Addresses that already exist are left as they are, and so are routes that already
/// go through this device; a route to the same prefix through another device is an
/// error (not taken over: it would be lost when the device goes). Without permission to
/// change links and with no address or route to set, it changes nothing and says so
/// ([`Configured::NotPermitted`]).
pub async fn configure(
    tun: &Tun,
    mtu: u16,
    addresses: &[IpNet],
    routes: &[IpNet],
) -> Result<Configured, SetupError> {
    let fail = |what: &str, e: rtnetlink::Error| {
        let hint = if not_permitted(&e) {
            " (setting up the device needs root or CAP_NET_ADMIN; without an address or \
             route to set, lametun leaves a device made for its user as it is)"
        } else {
            ""
        };
        SetupError(format!("{}: cannot {what}: {e}{hint}", tun.name))
    };
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| SetupError(format!("cannot open a netlink socket: {e}")))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let mut link = LinkUnspec::new_with_index(tun.index)
            .mtu(u32::from(mtu))
            .up();
        if tun.offload {
            link = link.append_extra_attribute(LinkAttribute::GsoMaxSegs(GSO_MAX_SEGS));
        }
        match handle.link().set(link.build()).execute().await {
            Ok(()) => {}
            Err(e) if not_permitted(&e) && addresses.is_empty() && routes.is_empty() => {
                return Ok(Configured::NotPermitted);
            }
            Err(e) => return Err(fail(&format!("set MTU {mtu} and bring it up"), e)),
        }
        for net in addresses {
            handle
                .address()
                .add(tun.index, net.addr(), net.prefix_len())
                .replace()
                .execute()
                .await
                .map_err(|e| fail(&format!("add address {net}"), e))?;
        }
        for net in routes {
            let msg = match net {
                IpNet::V4(n) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(n.network(), n.prefix_len())
                    .output_interface(tun.index)
                    .build(),
                IpNet::V6(n) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(n.network(), n.prefix_len())
                    .output_interface(tun.index)
                    .build(),
            };
            // Not `replace`: that would take over a route the host has to this prefix
            // through another device, which is then gone for good when the device
            // goes. A route through this device already (a persistent device) is kept.
            match handle.route().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if error_code(&e) == Some(nix::libc::EEXIST) => {
                    match route_device(&handle, net).await {
                        Some(oif) if oif == tun.index => {}
                        other => {
                            let via = other
                                .and_then(|i| nix::net::if_::if_indextoname(i).ok())
                                .map(|n| format!(" through {}", n.to_string_lossy()))
                                .unwrap_or_default();
                            return Err(SetupError(format!(
                                "{}: route {net} exists already{via}: lametun does not \
                                 replace it (it would be gone when the tunnel stops); delete \
                                 it (`ip route del {net}`) or leave it out of device.routes",
                                tun.name
                            )));
                        }
                    }
                }
                Err(e) => return Err(fail(&format!("add route {net}"), e)),
            }
        }
        Ok(Configured::Done)
    }
    .await;
    conn.abort();
    result
}

/// The device's `gso_max_segs` when it is above [`GSO_MAX_SEGS`] (the cap did not take:
/// no permission to set it, or a kernel that ignores it), `None` when the cap holds
/// or cannot be read. (Reading a link needs no privilege.)
pub async fn segment_cap_missing(tun: &Tun) -> Option<u32> {
    use futures_util::TryStreamExt as _;
    let (conn, handle, _) = rtnetlink::new_connection().ok()?;
    let conn = tokio::spawn(conn);
    let link = handle
        .link()
        .get()
        .match_index(tun.index)
        .execute()
        .try_next()
        .await;
    conn.abort();
    let segs = link.ok()??.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::GsoMaxSegs(n) => Some(n),
        _ => None,
    })?;
    (segs > GSO_MAX_SEGS).then_some(segs)
}

/// Changes the MTU of the device with index `index` (the listener adapts it to the
/// address family of the peer it learned).
pub async fn set_mtu(index: u32, mtu: u16) -> Result<(), SetupError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| SetupError(format!("cannot open a netlink socket: {e}")))?;
    let conn = tokio::spawn(conn);
    let result = handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .mtu(u32::from(mtu))
                .build(),
        )
        .execute()
        .await
        .map_err(|e| SetupError(format!("cannot set MTU {mtu}: {e}")));
    conn.abort();
    result
}
