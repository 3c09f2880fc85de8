#!/usr/bin/env python3
"""bench/report.py MODE=anchors.md [MODE=anchors.md ...] > results.md

Reads the raw runs (the .tsv beside each anchors.sh report), takes the median of the kept
runs of every kind and figure, and prints lametun's figures as ratios against the anchors
of the same run, with the targets of issue 6. Stdlib only.
"""
import csv
import datetime
import os
import platform
import statistics
import sys

OURS, OURS_ENC, OURS_AES = "lametun-rs", "lametun-rs-enc", "lametun-rs-aes"
GO, BT, VETH = "lametun-go", "boringtun", "veth"

COLUMNS = [  # (tsv column, heading, format)
    ("mtu", "MTU", "{:.0f}"),
    ("tcp1_gbps", "TCP 1 Gbit/s", "{:.2f}"),
    ("tcp4_gbps", "TCP 4 Gbit/s", "{:.2f}"),
    ("udp_rx_kpps", "UDP64 rx kpps", "{:.0f}"),
    ("udp_fwd_kpps", "UDP64 fwd kpps", "{:.0f}"),
    ("ping_avg_us", "ping avg µs", "{:.0f}"),
    ("ping_p99_us", "ping p99 µs", "{:.0f}"),
    ("tun_cpu_s_per_gb", "tun CPU s/GB", "{:.2f}"),
    ("sys_cpu_s_per_gb", "sys CPU s/GB", "{:.2f}"),
    ("rss_mib", "RSS MiB", "{:.1f}"),
    ("frags", "frags", "{:.0f}"),
    ("tcp1_retr", "TCP 1 retr", "{:.0f}"),
]


def load(path):
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r.get("kept") != "1":
                continue
            rows.setdefault(r["kind"], []).append(r)
    return rows


def median(rows, kind, col):
    vals = []
    for r in rows.get(kind, []):
        try:
            vals.append(float(r[col]))
        except (KeyError, ValueError):
            pass
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, f="{:.2f}"):
    return "n/a" if v is None else f.format(v)


def targets(rows, mode):
    m = lambda k, c: median(rows, k, c)
    nic = mode == "nic-like"
    out = []
    r = ratio(m(OURS_ENC, "tcp1_gbps"), m(BT, "tcp1_gbps"))
    out.append(("TCP 1 stream, encrypted / boringtun", r, 6.0 if nic else 10.0, ">="))
    r = ratio(m(OURS, "tcp1_gbps"), m(GO, "tcp1_gbps"))
    out.append(("TCP 1 stream, plaintext / Go lametun", r, 10.0 if nic else 15.0, ">="))
    r = ratio(m(OURS, "tcp1_gbps"), m(VETH, "tcp1_gbps"))
    out.append(("TCP 1 stream, plaintext / raw veth", r, None if nic else 0.5, ">="))
    r = ratio(m(OURS_ENC, "tun_cpu_s_per_gb"), m(BT, "tun_cpu_s_per_gb"))
    out.append(("CPU s/GB, encrypted / boringtun", r, 0.15, "<="))
    r = ratio(m(OURS, "tun_cpu_s_per_gb"), m(BT, "tun_cpu_s_per_gb"))
    out.append(("CPU s/GB, plaintext / boringtun", r, 0.08, "<="))
    r = ratio(m(OURS_ENC, "udp_rx_kpps"), m(BT, "udp_rx_kpps"))
    out.append(("UDP 64 B rx pps, encrypted / boringtun", r, 2.0, ">="))
    r = ratio(m(OURS_ENC, "ping_avg_us"), m(BT, "ping_avg_us"))
    out.append(("ping avg, encrypted / boringtun", r, 1.0, "<="))
    r = ratio(m(OURS, "ping_avg_us"), m(BT, "ping_avg_us"))
    out.append(("ping avg, plaintext / boringtun", r, 1.0, "<="))
    rss = max(filter(None, [m(k, "rss_mib") for k in (OURS, OURS_ENC, OURS_AES)]), default=None)
    out.append(("peak RSS per end, MiB (absolute)", rss, 16.0, "<="))
    # Not a target (the targets are for ChaCha20-Poly1305): the other cipher, for scale.
    r = ratio(m(OURS_AES, "tcp1_gbps"), m(BT, "tcp1_gbps"))
    out.append(("TCP 1 stream, AES-256-GCM / boringtun", r, None, ">="))
    r = ratio(m(OURS_AES, "tun_cpu_s_per_gb"), m(BT, "tun_cpu_s_per_gb"))
    out.append(("CPU s/GB, AES-256-GCM / boringtun", r, None, "<="))
    return out


def main():
    modes = [a.split("=", 1) for a in sys.argv[1:]]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    p = print
    p("# lametun benchmark results\n")
    p(f"- date: {now}; kernel `{platform.release()}`; {os.cpu_count()} CPUs")
    p("- made by `sudo bench/run.sh`: `../shared/bench/anchors.sh` with three extra kinds, "
      "`lametun-rs` (plaintext, the Go lametun's flags and wire format), `lametun-rs-enc` "
      "(the chacha20poly1305 stage) and `lametun-rs-aes` (the same stage with `cipher: "
      "aes-256-gcm`); every figure is a median of the kept runs, kinds interleaved")
    p("- ratios are taken between kinds of the same run; absolute numbers drift with the machine's load")
    p("- `veth`: a UDP GSO batch crosses the veth pair whole; `nic-like`: the kernel segments it "
      "before the link and GRO merges on receive, as with a real NIC (see the harness README)\n")
    p("## Against the targets (issue 6)\n")
    p("| figure | target | " + " | ".join(mode for mode, _ in modes) + " |")
    p("|---|--:|" + "--:|" * len(modes))
    per_mode = {mode: targets(load(path[:-3] + ".tsv"), mode) for mode, path in modes}
    first = per_mode[modes[0][0]]
    for i, (name, _, _, _) in enumerate(first):
        cells, goals = [], []
        for mode, _ in modes:
            _, val, tgt, op = per_mode[mode][i]
            if tgt is None:
                cells.append(fmt(val))
                continue
            goals.append((mode, f"{op} {tgt:g}"))
            ok = val is not None and (val >= tgt if op == ">=" else val <= tgt)
            cells.append(f"{fmt(val)} {'met' if ok else '**missed**'}")
        if not goals:
            goal = "none"
        elif len({g for _, g in goals}) == 1:
            goal = goals[0][1]
        else:
            goal = ", ".join(f"{mode} {g}" for mode, g in goals)
        p(f"| {name} | {goal} | " + " | ".join(cells) + " |")
    for mode, path in modes:
        rows = load(path[:-3] + ".tsv")
        p(f"\n## Medians, underlay `{mode}`\n")
        p("| kind | runs | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
        p("|---|--:|" + "--:|" * len(COLUMNS))
        for kind in [VETH, GO, BT, OURS, OURS_ENC, OURS_AES]:
            if kind not in rows:
                continue
            cells = [fmt(median(rows, kind, c), f) for c, _, f in COLUMNS]
            p(f"| `{kind}` | {len(rows[kind])} | " + " | ".join(cells) + " |")
        p(f"\nEvery run, the sanity checks (DF ping, cleartext marker, TSO) and the column meanings: "
          f"`results-{mode}.md`; raw figures: `results-{mode}.tsv`.")


if __name__ == "__main__":
    main()
