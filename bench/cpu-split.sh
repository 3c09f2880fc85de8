#!/usr/bin/env bash
# bench/cpu-split.sh - how much of lametun's CPU per GB is user space and how much the kernel.
#
#   sudo bench/cpu-split.sh [plain|enc] [SECONDS] [ROUNDS]
#
# Two namespaces joined by a veth pair, lametun at both ends (the defaults), and ROUNDS
# (default 3) single-stream iperf3 transfers of SECONDS (default 5) each, client ->
# server. For each: Gbit/s, and each end's user and system CPU seconds per GB received
# (utime and stime of /proc/<pid>/stat: everything the process's threads did, the work
# the kernel does inside their system calls included). Everything it made is removed
# when it ends, also on failure. README, "Which targets this machine allows", uses it.
set -euo pipefail
MODE=${1:-plain}; SECS=${2:-5}; ROUNDS=${3:-3}
HERE=$(cd "$(dirname "$0")" && pwd); BIN=$(dirname "$HERE")/target/release/lametun
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
TAG=split; KEEP_W=0
. "$HERE/pair.sh"
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }   # utime stime, in clock ticks
HZ=$(getconf CLK_TCK)
echo "mode $MODE, $ROUNDS x $SECS s, one TCP stream; CPU seconds per GB received"
printf '%-6s %8s %11s %11s %11s %11s %8s\n' round Gbit/s "srv user" "srv kernel" "cli user" "cli kernel" total
for r in $(seq "$ROUNDS"); do
  ip netns exec $S timeout $((SECS + 10)) iperf3 -s -1 >/dev/null 2>&1 & srv=$!; pids+=($srv)
  sleep 0.3
  read -r su0 ss0 < <(ticks $SP); read -r cu0 cs0 < <(ticks $CP)
  ip netns exec $C timeout $((SECS + 10)) iperf3 -c 172.31.99.1 -t "$SECS" -J >"$W/iperf.json"
  read -r su1 ss1 < <(ticks $SP); read -r cu1 cs1 < <(ticks $CP)
  wait $srv 2>/dev/null || true
  python3 - "$W/iperf.json" "$r" "$HZ" $((su1 - su0)) $((ss1 - ss0)) $((cu1 - cu0)) $((cs1 - cs0)) <<'PY'
import json, sys
r, hz = sys.argv[2], int(sys.argv[3])
su, ss, cu, cs = (int(x) / hz for x in sys.argv[4:8])
end = json.load(open(sys.argv[1]))["end"]["sum_received"]
gb = end["bytes"] / 1e9
print(f"{r:<6} {end['bits_per_second'] / 1e9:8.2f} {su / gb:11.3f} {ss / gb:11.3f} {cu / gb:11.3f} {cs / gb:11.3f} {(su + ss + cu + cs) / gb:8.2f}")
PY
done
