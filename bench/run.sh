#!/usr/bin/env bash
# bench/run.sh - lametun side by side with the anchors, in one run per underlay.
#
#   sudo bench/run.sh                  # veth and nic-like, 3 reps each: ~25 min on a quiet machine
#   sudo bench/run.sh --quick          # smoke test: 1 rep, short tests, veth only
#   sudo bench/run.sh --reps 5 --modes nic-like
#
# It builds the release binary, then calls ../shared/bench/anchors.sh (the harness that measures
# the raw veth, the Go lametun and boringtun; see its README) with two extra kinds:
#   lametun-rs      plaintext, the Go lametun's flags and wire format (packet-info header, MTU 1468)
#   lametun-rs-enc  the chacha20poly1305 stage from a config file (MTU 1440)
#   lametun-rs-aes  the same stage with `cipher: aes-256-gcm` (MTU 1440)
# and writes bench/results.md: the medians of every kind, and our figures as ratios against
# the anchors measured in the same run (the machine is noisy; absolute numbers drift).
# Everything runs in the harness's two namespaces; it deletes them when it ends.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
HARNESS=${HARNESS:-$ROOT/../shared/bench/anchors.sh}
OUT=${OUT:-$HERE/results.md}
REPS=3
MODES="veth nic-like"
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --modes) MODES=${2//,/ }; shift 2 ;;
    --quick) EXTRA+=(--quick); REPS=1; MODES=${MODES_QUICK:-veth}; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (it makes network namespaces)" >&2; exit 2; }
[ -x "$HARNESS" ] || { echo "bench/run.sh: harness not found at $HARNESS (set HARNESS=)" >&2; exit 2; }

(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/lametun
WORK=$(mktemp -d /tmp/lametun-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp "$BIN" "$WORK/lametun"   # a rebuild during the run does not change what is measured
BIN=$WORK/lametun

# The encrypted kind's config: written per end by --cmd-setup into the harness's run dir.
enc_setup() {  # $1: extra keys of the stage
  echo 'umask 077; '"$BIN"' genkey psk >/dev/null
for role in server client; do
  if [ $role = server ]; then peer="listen: true"; else peer="server: $UL_S"; fi
  cat > $role.yaml <<YAML
device: { name: tun0, mtu: auto, packet_info: false }   # -device overrides the name
peer: { $peer, port: $PORT }
pipeline:
  - { type: chacha20poly1305, key_file: $RUNDIR/psk'"$1"' }
YAML
done'
}
# Each end configures its own device (address and MTU): --no-ifconfig.
PLAIN_S='exec '"$BIN"' -listen -device $DEV -port $PORT --address $LOCAL_TUN/$TUN_PREFIX'
PLAIN_C='exec '"$BIN"' -server $PEER_UL -device $DEV -port $PORT --address $LOCAL_TUN/$TUN_PREFIX'
ENC_S='exec '"$BIN"' --config $RUNDIR/server.yaml -device $DEV --address $LOCAL_TUN/$TUN_PREFIX'
ENC_C='exec '"$BIN"' --config $RUNDIR/client.yaml -device $DEV --address $LOCAL_TUN/$TUN_PREFIX'

reports=()
for mode in $MODES; do
  flag=(); [ "$mode" = nic-like ] && flag=(--nic-like)
  md=$WORK/anchors-$mode.md
  RUST_LOG=warn "$HARNESS" "${flag[@]}" --reps "$REPS" --kinds veth,lametun-go,boringtun --out "$md" "${EXTRA[@]}" \
    --custom lametun-rs --mtu 1468 --no-ifconfig \
      --cmd-server "$PLAIN_S" --cmd-client "$PLAIN_C" --version-cmd "$BIN --version" \
    --custom lametun-rs-enc --mtu 1440 --no-ifconfig --cmd-setup "$(enc_setup '')" \
      --cmd-server "$ENC_S" --cmd-client "$ENC_C" --version-cmd "$BIN --version" \
    --custom lametun-rs-aes --mtu 1440 --no-ifconfig --cmd-setup "$(enc_setup ', cipher: aes-256-gcm')" \
      --cmd-server "$ENC_S" --cmd-client "$ENC_C" --version-cmd "$BIN --version"
  reports+=("$mode=$md")
done
python3 "$HERE/report.py" "${reports[@]}" > "$OUT"
# The harness's own reports (every run, raw) beside ours.
for r in "${reports[@]}"; do
  md=${r#*=}
  cp "$md" "${OUT%.md}-${r%%=*}.md"
  cp "${md%.md}.tsv" "${OUT%.md}-${r%%=*}.tsv"
done
echo "bench/run.sh: wrote $OUT"
