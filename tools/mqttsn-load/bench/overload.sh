#!/usr/bin/env bash
# The overload benchmarks of docs/performance.md (issue 10), end to end on this machine:
# Mosquitto and the gateway (release builds) on loopback, mqttsn-load as devices and subscriber.
#   saturation  QoS 0 offered at 0.5x to 3x the broker's own direct rate: delivered, loss, latency
#   fairness    100 devices at QoS 1 (10 msg/s each, lock-step) alone, then beside one device
#               flooding QoS 0 as fast as it can
#   qos0        100 devices at 90% of the broker's direct rate (the no-loss target)
#   lockstep    one device's QoS 1 round trip through the gateway, and directly to the broker
#               (the gateway with limits.frame_rate and limits.publish_rate = 0: a lock-step
#               device exceeds the default per-device budgets of 5000 frames/s and 2000 msg/s,
#               and this measures the path, not the budgets)
# FLOOD_CPUS and REST_CPUS (taskset CPU lists, e.g. 1 and 0) run the fairness flooder apart
# from the broker, the gateway and the other devices, as it would be on a machine of its own.
# Writes one JSON file per run into $OUT (default bench-out/), then draws the plots with plot.py.
# Usage: tools/mqttsn-load/bench/overload.sh [OUT [SECTION...]]
#   (after cargo build --release -p mqttsn-gateway -p mqttsn-load); SECTIONs are the names above,
#   all of them by default. The direct rate is measured every time (the saturation runs need it).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-out}
shift || true
SECTIONS=${*:-saturation fairness qos0 lockstep}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
mkdir -p "$OUT"
GW=${GW:-target/release/mqttsn-gateway}
LOAD=target/release/mqttsn-load
BROKER_PORT=18830
GW_PORT=18840
ulimit -n 20000 || true
PIN_FLOOD=${FLOOD_CPUS:+taskset -c $FLOOD_CPUS}
PIN_REST=${REST_CPUS:+taskset -c $REST_CPUS}

cat > "$OUT/mosquitto.conf" <<CONF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
max_inflight_messages 1000
set_tcp_nodelay true
persistence false
log_dest none
CONF

cleanup() { kill "${GW_PID:-}" "${MOSQ_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

start_broker() {
  $PIN_REST /usr/sbin/mosquitto -c "$OUT/mosquitto.conf" & MOSQ_PID=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$BROKER_PORT) 2>/dev/null && return; sleep 0.05; done
  echo "mosquitto did not start" >&2; exit 1
}
start_gateway() {
  RUST_LOG="warn,mqttsn_gateway::transport::upstream=info" \
    $PIN_REST "$GW" run ${GW_CONFIG:+--config "$GW_CONFIG"} --udp 127.0.0.1:$GW_PORT --broker mqtt://127.0.0.1:$BROKER_PORT --mode aggregating \
    >> "$OUT/gateway.log" 2>&1 & GW_PID=$!
  for _ in $(seq 100); do grep -q "broker connected" "$OUT/gateway.log" 2>/dev/null && return; sleep 0.05; done
  echo "the gateway did not connect" >&2; exit 1
}
restart_gateway() { kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; : > "$OUT/gateway.log"; start_gateway; }
connections() { grep -c "broker connected" "$OUT/gateway.log" || true; }

start_broker
: > "$OUT/gateway.log"
start_gateway
OBS="--gateway-pid $GW_PID --broker-pid $MOSQ_PID"

echo "== direct QoS 0 rate of the broker (the 1x of the saturation runs)"
$LOAD -q --json "$OUT/direct.json" direct --broker 127.0.0.1:$BROKER_PORT --clients 1 --qos 0 --duration 8 --broker-pid $MOSQ_PID | grep summary
RATE=$(python3 -c "import json;print(int(json.load(open('$OUT/direct.json'))['received_per_s']))")

if want saturation; then
echo "== saturation: 300 devices, QoS 0, offered 0.5x..3x of $RATE msg/s"
for f in 0.5 1 1.5 2 2.5 3; do
  restart_gateway
  OBS="--gateway-pid $GW_PID --broker-pid $MOSQ_PID"
  offered=$(python3 -c "print(int($RATE*$f))")
  $LOAD -q --json "$OUT/saturation-$f.json" publish --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
    --devices 300 --qos 0 --rate "$offered" --duration 8 $OBS | grep summary
  echo "   broker connections during the run: $(connections)"
  echo "{\"factor\": $f, \"connections\": $(connections)}" > "$OUT/saturation-$f.meta.json"
done

fi

if want fairness; then
echo "== fairness: 100 QoS 1 devices at 10 msg/s each, alone"
restart_gateway
OBS="--gateway-pid $GW_PID --broker-pid $MOSQ_PID"
$PIN_REST $LOAD -q --json "$OUT/fair-alone.json" publish --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
  --devices 100 --qos 1 --window 1 --rate 1000 --duration 10 $OBS | grep summary
echo "== fairness: the same beside one device flooding QoS 0 as fast as it can"
restart_gateway
OBS="--gateway-pid $GW_PID --broker-pid $MOSQ_PID"
$PIN_FLOOD $LOAD -q --json "$OUT/fair-flood.json" publish --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
  --devices 1 --qos 0 --duration 14 $OBS > "$OUT/fair-flood.txt" &
FLOOD=$!
sleep 2
$PIN_REST $LOAD -q --json "$OUT/fair-steady.json" publish --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
  --devices 100 --qos 1 --window 1 --rate 1000 --duration 10 $OBS | grep summary
wait $FLOOD
grep summary "$OUT/fair-flood.txt"
echo "   broker connections during the run: $(connections)"

fi

if want qos0; then
echo "== QoS 0, 100 devices, at 90% of the broker's direct rate"
restart_gateway
OBS="--gateway-pid $GW_PID --broker-pid $MOSQ_PID"
$LOAD -q --json "$OUT/qos0-90.json" publish --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
  --devices 100 --qos 0 --rate "$(python3 -c "print(int($RATE*0.9))")" --duration 8 $OBS | grep summary

fi

if want lockstep; then
echo "== lock-step QoS 1 round trip, 3 runs each (no per-device budget)"
printf '[limits]\nframe_rate = 0\npublish_rate = 0\n' > "$OUT/unlimited.toml"
GW_CONFIG="$OUT/unlimited.toml" restart_gateway
OBS="--gateway-pid $GW_PID --broker-pid $MOSQ_PID"
for i in 1 2 3; do
  $LOAD -q --json "$OUT/lockstep-gw-$i.json" publish --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
    --devices 1 --qos 1 --window 1 --duration 4 $OBS | grep summary
  $LOAD -q --json "$OUT/lockstep-direct-$i.json" direct --broker 127.0.0.1:$BROKER_PORT --clients 1 --qos 1 --inflight 1 \
    --duration 4 --broker-pid $MOSQ_PID | grep summary
done

fi

if want saturation && want fairness; then python3 tools/mqttsn-load/bench/plot.py "$OUT"; fi
