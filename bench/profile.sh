#!/usr/bin/env bash
# bench/profile.sh - where lametun's CPU goes during a single-stream TCP transfer.
#
#   sudo bench/profile.sh [plain|enc] [SECONDS]
#
# Two namespaces joined by a veth pair, lametun at both ends, iperf3 client -> server
# for SECONDS (default 8), `perf record -g` of both lametun processes, then `perf report`
# of each end (top symbols) and a syscall count (`perf stat -e raw_syscalls:sys_enter`).
# Everything it made is removed when it ends, also on failure.
set -euo pipefail
MODE=${1:-plain}; SECS=${2:-8}
HERE=$(cd "$(dirname "$0")" && pwd); BIN=$(dirname "$HERE")/target/release/lametun
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
TAG=prof; KEEP_W=1
. "$HERE/pair.sh"
ip netns exec $S timeout $((SECS + 10)) iperf3 -s -1 >/dev/null 2>&1 & pids+=($!)
sleep 0.3
perf record -g -o "$W/server.data" -p $SP -- sleep "$SECS" >/dev/null 2>&1 & pids+=($!)
perf record -g -o "$W/client.data" -p $CP -- sleep "$SECS" >/dev/null 2>&1 & pids+=($!)
perf stat -e raw_syscalls:sys_enter -p $SP,$CP -o "$W/syscalls.txt" -- sleep "$SECS" & pids+=($!)
ip netns exec $C timeout $((SECS + 10)) iperf3 -c 172.31.99.1 -t "$SECS" | tail -4
sleep 1
for end in server client; do
  echo "== $end: top symbols"
  perf report -i "$W/$end.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
done
grep -E 'sys_enter|elapsed' "$W/syscalls.txt"
