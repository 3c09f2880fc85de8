//! What lametun puts on the wire, and the checks on what comes back.
//!
//! The Go lametun opens its TUN device without `IFF_NO_PI`, so each read returns the
//! kernel's 4-byte packet-information header (`struct tun_pi` in `<linux/if_tun.h>`)
//! in front of the IP packet, and it sends those bytes unchanged as the UDP payload:
//!
//! ```text
//!  0               1               2               3
//!  +---------------+---------------+---------------+---------------+
//!  |     flags (0, big-endian)     |  EtherType: 0x0800 IPv4,      |
//!  |                               |             0x86DD IPv6       |
//!  +---------------+---------------+---------------+---------------+
//!  |  the IP packet ...
//! ```
//!
//! We open the device with `IFF_NO_PI` (which leaves the kernel free to give us the
//! virtio-net offload header instead) and write these four bytes ourselves from the IP
//! version nibble, so the datagrams are the same bytes the Go program sends and either
//! end of a tunnel can be the Go program.

use crate::DropReason;

/// EtherType of IPv4 in the packet-information header.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6 in the packet-information header.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;

/// IP version of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// The EtherType the kernel puts in the packet-information header for this version.
    pub const fn ethertype(self) -> u16 {
        match self {
            Self::V4 => ETHERTYPE_IPV4,
            Self::V6 => ETHERTYPE_IPV6,
        }
    }

    /// The version an EtherType stands for, if it is IPv4 or IPv6.
    pub const fn from_ethertype(ethertype: u16) -> Option<Self> {
        match ethertype {
            ETHERTYPE_IPV4 => Some(Self::V4),
            ETHERTYPE_IPV6 => Some(Self::V6),
            _ => None,
        }
    }

    /// The version in the first nibble of `packet`, if it is 4 or 6.
    pub fn of(packet: &[u8]) -> Option<Self> {
        match packet.first()? >> 4 {
            4 => Some(Self::V4),
            6 => Some(Self::V6),
            _ => None,
        }
    }
}

/// The packet-information header the kernel would write for a packet of `version`.
pub const fn packet_info(version: IpVersion) -> [u8; 4] {
    let [hi, lo] = version.ethertype().to_be_bytes();
    [0, 0, hi, lo]
}

/// Reads a packet-information header: the EtherType, whatever the flags say (the
/// kernel ignores them on write, and only sets `TUN_PKT_STRIP` on a truncated read).
pub fn parse_packet_info(header: &[u8; 4]) -> u16 {
    u16::from_be_bytes([header[2], header[3]])
}

/// Checks that `packet` is a plausible IPv4 or IPv6 packet before it is written to the
/// TUN device: the version nibble, a complete fixed header, and a length field that does
/// not claim more bytes than arrived. (The kernel checks the rest, such as the IPv4
/// header checksum, and silently drops what fails; we check enough to count garbage.)
pub fn check_ip(packet: &[u8]) -> Result<IpVersion, DropReason> {
    let version = IpVersion::of(packet).ok_or(if packet.is_empty() {
        DropReason::TooShort
    } else {
        DropReason::Malformed
    })?;
    match version {
        IpVersion::V4 => {
            if packet.len() < crate::mtu::IPV4_HEADER_LEN {
                return Err(DropReason::TooShort);
            }
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if ihl < crate::mtu::IPV4_HEADER_LEN || total < ihl || total > packet.len() {
                return Err(DropReason::Malformed);
            }
        }
        IpVersion::V6 => {
            if packet.len() < crate::mtu::IPV6_HEADER_LEN {
                return Err(DropReason::TooShort);
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            // A zero payload length with a hop-by-hop jumbogram option is legal in
            // theory; no TUN MTU allows one, so it is treated as an ordinary length.
            if crate::mtu::IPV6_HEADER_LEN + payload > packet.len() {
                return Err(DropReason::Malformed);
            }
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4 header (20 bytes) with total length `total`.
    fn v4(total: u16) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(total.max(20))];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p
    }

    #[test]
    fn packet_info_matches_what_the_kernel_writes() {
        assert_eq!(packet_info(IpVersion::V4), [0, 0, 0x08, 0x00]);
        assert_eq!(packet_info(IpVersion::V6), [0, 0, 0x86, 0xdd]);
        assert_eq!(parse_packet_info(&[0, 1, 0x86, 0xdd]), ETHERTYPE_IPV6);
        assert_eq!(IpVersion::from_ethertype(0x0806), None);
    }

    #[test]
    fn check_ip_accepts_real_headers_and_refuses_garbage() {
        assert_eq!(check_ip(&v4(20)), Ok(IpVersion::V4));
        assert_eq!(check_ip(&v4(84)), Ok(IpVersion::V4));
        let mut truncated = v4(84);
        truncated.truncate(60);
        assert_eq!(check_ip(&truncated), Err(DropReason::Malformed));
        assert_eq!(check_ip(&v4(20)[..19]), Err(DropReason::TooShort));
        assert_eq!(check_ip(&[]), Err(DropReason::TooShort));
        assert_eq!(check_ip(&[0x15; 40]), Err(DropReason::Malformed));
        let mut bad_ihl = v4(20);
        bad_ihl[0] = 0x44;
        assert_eq!(check_ip(&bad_ihl), Err(DropReason::Malformed));

        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        assert_eq!(check_ip(&v6), Ok(IpVersion::V6));
        v6[5] = 9;
        assert_eq!(check_ip(&v6), Err(DropReason::Malformed));
        assert_eq!(check_ip(&v6[..39]), Err(DropReason::TooShort));
    }
}
