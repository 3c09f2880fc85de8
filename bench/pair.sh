# bench/pair.sh - sourced by profile.sh and cpu-split.sh: a tunnel between two namespaces.
#
# Expects MODE (plain|enc), BIN (the lametun binary), TAG (a short name) and a caller
# running with `set -euo pipefail`. Makes two namespaces joined by a veth pair
# (10.98.0.1, 10.98.0.2), runs lametun at both ends (the defaults; with MODE=enc the
# chacha20poly1305 stage), inner addresses 172.31.99.1 (server) and .2 (client), and
# waits until a ping crosses. Sets S and C (the namespaces), W (a work directory with the
# logs), SP and CP (the two ends' PIDs) and `pids`, to which the caller adds what it
# starts. On exit everything is ended by PID and removed; W is kept with KEEP_W=1.
S=lt${TAG}S$$; C=lt${TAG}C$$; W=$(mktemp -d "/tmp/lametun-$TAG.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$S" 2>/dev/null || true; ip netns del "$C" 2>/dev/null || true
  if [ "${KEEP_W:-0}" = 1 ]; then echo "data kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
ip netns add "$S"; ip netns add "$C"
ip link add vS netns "$S" type veth peer name vC netns "$C"
ip -n "$S" addr add 10.98.0.1/24 dev vS; ip -n "$C" addr add 10.98.0.2/24 dev vC
ip -n "$S" link set vS up; ip -n "$C" link set vC up
ip -n "$S" link set lo up; ip -n "$C" link set lo up
if [ "$MODE" = enc ]; then
  (umask 077; "$BIN" genkey "$W/psk" >/dev/null 2>&1)
  for role in server client; do
    if [ $role = server ]; then peer="listen: true"; else peer="server: 10.98.0.1"; fi
    printf 'device: { name: tun0, packet_info: false }\npeer: { %s, port: 1234 }\npipeline:\n  - { type: chacha20poly1305, key_file: %s }\n' \
      "$peer" "$W/psk" > "$W/$role.yaml"
  done
fi
cfg() { [ "$MODE" = enc ] && echo "--config $W/$1.yaml" || true; }
ip netns exec "$S" "$BIN" -listen -device ltp0 --address 172.31.99.1/24 $(cfg server) >"$W/server.log" 2>&1 & pids+=($!); SP=$!
ip netns exec "$C" "$BIN" -server 10.98.0.1 -device ltp0 --address 172.31.99.2/24 $(cfg client) >"$W/client.log" 2>&1 & pids+=($!); CP=$!
for _ in $(seq 50); do ip netns exec "$C" ping -c1 -W1 172.31.99.1 >/dev/null 2>&1 && break; sleep 0.1; done
