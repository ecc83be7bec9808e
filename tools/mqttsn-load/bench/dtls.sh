#!/usr/bin/env bash
# DTLS against plain UDP in one run (issue 12): one gateway (release build) with a plain
# [[udp]] listener and a [[dtls]] PSK listener side by side, Mosquitto on loopback, and
# mqttsn-load's devices publishing through one listener and then the other with the same load:
#   qos0      DEVICES devices, QoS 0 offered at RATE msg/s (default 20000) for SECS seconds
#   qos1      DEVICES devices, QoS 1, 8 in flight each, as fast as possible
#   lockstep  one device, QoS 1 lock-step (round trip through the gateway)
#   setup     HANDSHAKES devices (default 2000) set up at once (DTLS handshake, CONNECT,
#             REGISTER): setup time, and the gateway's VmRSS with that many associations
# then the DTLS listener's handshake cost (handshakes/s, memory per association) from its
# own measurements on virtual time. Results: OUT/summary.txt and one JSON per run.
# Usage: tools/mqttsn-load/bench/dtls.sh [OUT]
#   (after cargo build --release -p mqttsn-gateway -p mqttsn-load)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-out/dtls}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEVICES=${DEVICES:-100}
SECS=${SECS:-10}
GW=target/release/mqttsn-gateway
LOAD=target/release/mqttsn-load
BROKER_PORT=18831
UDP_PORT=18841
DTLS_PORT=18842
KEY=00112233445566778899aabbccddeeff
ulimit -n 20000 || true

cat > "$OUT/mosquitto.conf" <<CONF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
max_inflight_messages 1000
set_tcp_nodelay true
persistence false
log_dest none
CONF
# The load tool's DTLS devices are dtls-0, dtls-1, ...: their ClientIds and PSK identities.
: > "$OUT/psk"
HANDSHAKES=${HANDSHAKES:-2000}
for i in $(seq 0 $(( (DEVICES > HANDSHAKES ? DEVICES : HANDSHAKES) - 1))); do echo "dtls-$i:$KEY" >> "$OUT/psk"; done
chmod 600 "$OUT/psk"
cat > "$OUT/gateway.toml" <<CONF
[gateway]
mode = "aggregating"
[[udp]]
bind = "127.0.0.1:$UDP_PORT"
[[dtls]]
bind = "127.0.0.1:$DTLS_PORT"
psk_file = "$OUT/psk"
[upstream]
url = "mqtt://127.0.0.1:$BROKER_PORT"
[limits]
frame_rate = 0
publish_rate = 0
CONF

cleanup() { kill "${GW_PID:-}" "${MOSQ_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
/usr/sbin/mosquitto -c "$OUT/mosquitto.conf" & MOSQ_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$BROKER_PORT) 2>/dev/null && break; sleep 0.05; done
RUST_LOG=warn,mqttsn_gateway::driver=info "$GW" run --config "$OUT/gateway.toml" > "$OUT/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 200); do grep -q "broker connected" "$OUT/gateway.log" 2>/dev/null && break; sleep 0.05; done
: > "$OUT/summary.txt"

# run NAME ARGS...: one mqttsn-load publish run over each listener.
run() {
  local name=$1; shift
  for via in udp dtls; do
    local port=$UDP_PORT extra=()
    [ "$via" = dtls ] && port=$DTLS_PORT && extra=(--dtls-psk "$KEY")
    "$LOAD" --quiet --json "$OUT/$name-$via.json" publish --gateway 127.0.0.1:$port \
      --broker 127.0.0.1:$BROKER_PORT --gateway-pid "$GW_PID" "$@" "${extra[@]}" \
      > "$OUT/$name-$via.txt" 2>&1
    echo "== $name over $via" >> "$OUT/summary.txt"
    grep -E "^(setup|  sent|  received|  lost|  latency|  CPU|summary)" "$OUT/$name-$via.txt" >> "$OUT/summary.txt" || true
  done
}
run qos0 --devices "$DEVICES" --qos 0 --rate "${RATE:-20000}" --duration "$SECS"
run qos1 --devices "$DEVICES" --qos 1 --window 8 --duration "$SECS"
run lockstep --devices 1 --qos 1 --window 1 --duration "$SECS"
run setup --devices "$HANDSHAKES" --qos 0 --rate 100 --duration 2 --setup-concurrency 256
kill -INT "$GW_PID"; wait "$GW_PID" 2>/dev/null || true

echo "== DTLS listener: handshakes and memory (virtual time, in process)" >> "$OUT/summary.txt"
cargo test --release --lib transport::dtls::tests::measure -- --ignored --nocapture --test-threads=1 \
  2>&1 | grep -E "KiB|/s|ms each" >> "$OUT/summary.txt" || true
cat "$OUT/summary.txt"
