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
S=ltsplitS$$; C=ltsplitC$$; W=$(mktemp -d /tmp/lametun-split.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add $S; ip netns add $C
ip link add vS netns $S type veth peer name vC netns $C
ip -n $S addr add 10.98.0.1/24 dev vS; ip -n $C addr add 10.98.0.2/24 dev vC
ip -n $S link set vS up; ip -n $C link set vC up; ip -n $S link set lo up; ip -n $C link set lo up
if [ "$MODE" = enc ]; then
  (umask 077; "$BIN" genkey "$W/psk" >/dev/null 2>&1)
  for role in server client; do
    if [ $role = server ]; then peer="listen: true"; else peer="server: 10.98.0.1"; fi
    printf 'device: { name: tun0, packet_info: false }\npeer: { %s, port: 1234 }\npipeline:\n  - { type: chacha20poly1305, key_file: %s }\n' \
      "$peer" "$W/psk" > "$W/$role.yaml"
  done
fi
cfg() { [ "$MODE" = enc ] && echo "--config $W/$1.yaml" || true; }
ip netns exec $S "$BIN" -listen -device ltp0 --address 172.31.99.1/24 $(cfg server) >"$W/server.log" 2>&1 & pids+=($!); SP=$!
ip netns exec $C "$BIN" -server 10.98.0.1 -device ltp0 --address 172.31.99.2/24 $(cfg client) >"$W/client.log" 2>&1 & pids+=($!); CP=$!
for _ in $(seq 50); do ip netns exec $C ping -c1 -W1 172.31.99.1 >/dev/null 2>&1 && break; sleep 0.1; done
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }   # utime stime, in clock ticks
HZ=$(getconf CLK_TCK)
echo "mode $MODE, $ROUNDS x $SECS s, one TCP stream; CPU seconds per GB received"
printf '%-6s %8s %11s %11s %11s %11s %8s\n' round Gbit/s "srv user" "srv kernel" "cli user" "cli kernel" total
for r in $(seq "$ROUNDS"); do
  ip netns exec $S timeout $((SECS + 10)) iperf3 -s -1 >/dev/null 2>&1 & srv=$!
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
