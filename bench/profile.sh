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
S=ltprofS$$; C=ltprofC$$; W=$(mktemp -d /tmp/lametun-profile.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true
  echo "profile data kept in $W"
}
trap cleanup EXIT
ip netns add $S; ip netns add $C
ip link add vS netns $S type veth peer name vC netns $C
ip -n $S addr add 10.98.0.1/24 dev vS; ip -n $C addr add 10.98.0.2/24 dev vC
ip -n $S link set vS up; ip -n $C link set vC up; ip -n $S link set lo up; ip -n $C link set lo up
extra=()
if [ "$MODE" = enc ]; then
  (umask 077; "$BIN" genkey "$W/psk" >/dev/null)
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
