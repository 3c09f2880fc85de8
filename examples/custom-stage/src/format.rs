//! The classic pcap file format, as bytes: no IO here, so every byte is unit-tested.
//!
//! A pcap file is a 24-byte header followed by records, each a 16-byte header and the
//! captured bytes (<https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html>):
//!
//! ```text
//!  file header (24 bytes)                      record header (16 bytes)
//!  0  magic 0xa1b2c3d4 (µs timestamps)          0  seconds since 1970
//!  4  version 2.4                               4  microseconds
//!  8  reserved (thiszone, sigfigs): 0           8  captured length (≤ snaplen)
//!  16 snaplen                                   12 original length
//!  20 link type: 101 = LINKTYPE_RAW             16 … the captured bytes
//! ```
//!
//! Every field is written in the byte order of the magic number; readers (Wireshark,
//! tcpdump) recognise either order from it. We write little-endian.
//!
//! **Why `LINKTYPE_RAW`**: a TUN device carries bare IP packets, no Ethernet header.
//! Link type 101 says "the packet starts with an IPv4 or IPv6 header; look at the
//! version nibble", which is exactly what a stage sees at the TUN end of the chain.

use std::fmt;
use std::time::Duration;

/// Magic number of a pcap file with microsecond timestamps.
pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Magic number of a pcap file with nanosecond timestamps (read, never written).
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_RAW`: every packet is an IPv4 or IPv6 packet without a link-layer header.
pub const LINKTYPE_RAW: u32 = 101;
/// Length of the file header.
pub const FILE_HEADER_LEN: usize = 24;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// The largest snaplen readers accept for most link types (tcpdump's and Wireshark's).
pub const MAX_SNAPLEN: u32 = 262_144;

/// The file header for packets cut to `snaplen` bytes.
pub fn file_header(snaplen: u32) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // 8..16: thiszone and sigfigs, always 0.
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
    h
}

/// The header of a record captured at `ts` (since 1970-01-01 UTC), holding `caplen`
/// bytes of a packet that was `orig_len` bytes long.
pub fn record_header(ts: Duration, caplen: u32, orig_len: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    // Seconds wrap in 2106, as in every classic pcap file.
    h[0..4].copy_from_slice(&(ts.as_secs() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
    h[8..12].copy_from_slice(&caplen.to_le_bytes());
    h[12..16].copy_from_slice(&orig_len.to_le_bytes());
    h
}

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When it passed, since 1970-01-01 UTC.
    pub ts: Duration,
    /// Its length on the wire (the captured bytes may be fewer: see the snaplen).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

impl Record {
    /// Bytes this record takes in a file.
    pub fn file_len(&self) -> usize {
        RECORD_HEADER_LEN + self.data.len()
    }
}

/// A whole capture file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// The snaplen the file declares.
    pub snaplen: u32,
    /// The link type (101 for the files this crate writes).
    pub linktype: u32,
    /// The records, in file order.
    pub records: Vec<Record>,
}

/// Why a byte string is not a pcap file this module can read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Shorter than the 24-byte file header.
    NoHeader,
    /// The magic number is not pcap's (a pcapng file starts with `0a0d0d0a`).
    BadMagic(u32),
    /// The last record is cut short (the writer was killed mid-write).
    Truncated {
        /// Offset of the record in the file.
        offset: usize,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHeader => f.write_str("shorter than a pcap file header"),
            Self::BadMagic(m) => write!(f, "magic number {m:#010x} is not pcap's"),
            Self::Truncated { offset } => write!(f, "the record at offset {offset} is cut short"),
        }
    }
}

impl std::error::Error for FormatError {}

/// Parses a pcap file (either byte order, micro- or nanosecond timestamps). Tests use
/// it to look into what the stage wrote.
pub fn parse(bytes: &[u8]) -> Result<Capture, FormatError> {
    let header = bytes.get(..FILE_HEADER_LEN).ok_or(FormatError::NoHeader)?;
    let magic_le = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let (little, nanos) = match magic_le {
        MAGIC_MICROS => (true, false),
        MAGIC_NANOS => (true, true),
        m if m.swap_bytes() == MAGIC_MICROS => (false, false),
        m if m.swap_bytes() == MAGIC_NANOS => (false, true),
        m => return Err(FormatError::BadMagic(m)),
    };
    let u32_at = |b: &[u8], at: usize| {
        let v: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let mut capture = Capture {
        snaplen: u32_at(header, 16),
        linktype: u32_at(header, 20),
        records: Vec::new(),
    };
    let mut at = FILE_HEADER_LEN;
    while at < bytes.len() {
        let truncated = FormatError::Truncated { offset: at };
        let h = bytes
            .get(at..at + RECORD_HEADER_LEN)
            .ok_or(truncated.clone())?;
        let (secs, frac) = (u32_at(h, 0), u32_at(h, 4));
        let caplen = u32_at(h, 8) as usize;
        let data = bytes
            .get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + caplen)
            .ok_or(truncated)?;
        let frac = if nanos {
            Duration::from_nanos(u64::from(frac))
        } else {
            Duration::from_micros(u64::from(frac))
        };
        capture.records.push(Record {
            ts: Duration::from_secs(u64::from(secs)) + frac,
            orig_len: u32_at(h, 12),
            data: data.to_vec(),
        });
        at += RECORD_HEADER_LEN + caplen;
    }
    Ok(capture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_header_is_what_libpcap_writes_on_a_little_endian_host() {
        assert_eq!(
            file_header(65535),
            [
                0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101,
                0, 0, 0
            ]
        );
    }

    #[test]
    fn records_round_trip_through_the_parser() {
        let ts = Duration::new(1_700_000_000, 123_456_000);
        let mut file = file_header(100).to_vec();
        for (data, orig) in [(&b"\x45abc"[..], 4), (&b"\x60"[..], 1500)] {
            file.extend_from_slice(&record_header(ts, data.len() as u32, orig));
            file.extend_from_slice(data);
        }
        let c = parse(&file).unwrap();
        assert_eq!((c.snaplen, c.linktype), (100, LINKTYPE_RAW));
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.records[0].ts, ts);
        assert_eq!(c.records[0].data, b"\x45abc");
        assert_eq!(c.records[1].orig_len, 1500);
        assert_eq!(c.records[1].file_len(), 17);
    }

    #[test]
    fn big_endian_and_nanosecond_files_are_read_too() {
        let mut file = vec![0xa1, 0xb2, 0x3c, 0x4d, 0, 2, 0, 4];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&64u32.to_be_bytes());
        file.extend_from_slice(&101u32.to_be_bytes());
        for v in [5u32, 7, 1, 1] {
            file.extend_from_slice(&v.to_be_bytes());
        }
        file.push(0x45);
        let c = parse(&file).unwrap();
        assert_eq!(c.snaplen, 64);
        assert_eq!(c.records[0].ts, Duration::new(5, 7));
    }

    #[test]
    fn damaged_files_are_refused() {
        assert_eq!(parse(&[0; 10]), Err(FormatError::NoHeader));
        assert!(matches!(
            parse(&[
                0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            Err(FormatError::BadMagic(_))
        ));
        let mut file = file_header(100).to_vec();
        file.extend_from_slice(&record_header(Duration::ZERO, 10, 10));
        file.extend_from_slice(b"short");
        assert_eq!(parse(&file), Err(FormatError::Truncated { offset: 24 }));
    }
}
