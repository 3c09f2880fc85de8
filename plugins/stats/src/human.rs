//! Numbers for people: `1.23 kpkt/s`, `14.5 Mbit/s`, `17.3 MiB`, `12,345`.
//!
//! The conventions are the ones network tools use: rates in bits per second with SI
//! prefixes (a link is "1 Gbit/s", 10⁹ bits), byte totals with binary prefixes (`MiB`,
//! 2²⁰ bytes, what `ls -h` and `ip -s -h` mean by `M`), and three significant digits,
//! which is as many as a rate that moves every second deserves.

use std::time::Duration;

/// `v` with three significant digits and the largest unit that keeps it below 1000
/// (so 1000 KiB is shown as `0.98 MiB`, not `1000 KiB`). Whole numbers in the base unit
/// are shown without decimals (`512 B`, `7 pkt/s`).
fn scaled(v: f64, base: f64, units: &[&str]) -> String {
    if !v.is_finite() || v < 0.0 {
        return format!("? {}", units[0]);
    }
    let mut x = v;
    let mut i = 0;
    while x >= 999.5 && i + 1 < units.len() {
        x /= base;
        i += 1;
    }
    let unit = units[i];
    if i == 0 && x.fract() == 0.0 {
        return format!("{x:.0} {unit}");
    }
    if x >= 99.95 {
        format!("{x:.0} {unit}")
    } else if x >= 9.995 {
        format!("{x:.1} {unit}")
    } else {
        format!("{x:.2} {unit}")
    }
}

/// A byte count with binary prefixes: `512 B`, `1.50 KiB`, `17.3 MiB`, `2.00 GiB`.
pub fn bytes(n: u64) -> String {
    scaled(
        n as f64,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
    )
}

/// A rate given in bytes per second, shown in bits per second with SI prefixes:
/// `0 bit/s`, `96.0 kbit/s`, `14.5 Mbit/s`, `1.20 Gbit/s`.
pub fn bit_rate(bytes_per_sec: f64) -> String {
    scaled(
        bytes_per_sec * 8.0,
        1000.0,
        &["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"],
    )
}

/// A packet rate: `0 pkt/s`, `12.5 pkt/s`, `1.23 kpkt/s`, `2.40 Mpkt/s`.
pub fn packet_rate(per_sec: f64) -> String {
    scaled(per_sec, 1000.0, &["pkt/s", "kpkt/s", "Mpkt/s", "Gpkt/s"])
}

/// A packet count, short: `980 pkt`, `12.3 kpkt`, `4.50 Mpkt`.
pub fn packets(n: u64) -> String {
    scaled(n as f64, 1000.0, &["pkt", "kpkt", "Mpkt", "Gpkt", "Tpkt"])
}

/// An exact count with thousands separators: `12,345,678`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration to the second: `45s`, `5m 12s`, `3h 2m 1s`, `2days 1h`.
pub fn duration(d: Duration) -> String {
    let secs = Duration::from_secs(d.as_secs());
    if secs.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(secs).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_prefixes_and_three_digits() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "0.98 KiB");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(18_140_000), "17.3 MiB");
        assert_eq!(bytes(150 << 20), "150 MiB");
        assert_eq!(bytes(2 << 30), "2.00 GiB");
    }

    #[test]
    fn rates_are_bits_per_second_with_si_prefixes() {
        assert_eq!(bit_rate(0.0), "0 bit/s");
        assert_eq!(bit_rate(100.0), "800 bit/s");
        assert_eq!(bit_rate(12_000.0), "96.0 kbit/s");
        assert_eq!(bit_rate(1_812_500.0), "14.5 Mbit/s");
        assert_eq!(bit_rate(150_000_000.0), "1.20 Gbit/s");
        assert_eq!(bit_rate(f64::NAN), "? bit/s");
        assert_eq!(packet_rate(0.0), "0 pkt/s");
        assert_eq!(packet_rate(7.0), "7 pkt/s");
        assert_eq!(packet_rate(0.5), "0.50 pkt/s");
        assert_eq!(packet_rate(12.54), "12.5 pkt/s");
        assert_eq!(packet_rate(1234.0), "1.23 kpkt/s");
        assert_eq!(packet_rate(999.7), "1.00 kpkt/s");
        assert_eq!(packets(12_345), "12.3 kpkt");
    }

    #[test]
    fn exact_counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(12_345_678), "12,345,678");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn durations_are_whole_seconds() {
        assert_eq!(duration(Duration::from_millis(400)), "0s");
        assert_eq!(duration(Duration::from_secs(312)), "5m 12s");
        assert_eq!(duration(Duration::from_secs_f64(3661.7)), "1h 1m 1s");
    }
}
