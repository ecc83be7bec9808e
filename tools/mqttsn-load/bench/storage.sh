#!/usr/bin/env bash
# The durability benchmarks of docs/performance.md (issue 11): Mosquitto and the gateway
# (release builds) on loopback, mqttsn-load as devices and applications, the gateway's state
# directory on this machine's disk (STATE_DIR, default $OUT/state). Each run gets a fresh
# gateway (and a fresh store), started under `strace -c` counting its fsync/fdatasync calls;
# the kernel's write_bytes of the gateway (/proc/PID/io) is read around the run, and the
# gateway's own "storage totals" (commits, records and bytes written) come from its log.
#   rates     QoS 1 at 1,000 and 10,000 msg/s, devices to the broker and the broker to devices
#   max       QoS 1 as fast as possible, both directions, storage off and on
#   lockstep  one device's QoS 1 round trip towards the broker, and one device's QoS 1
#             deliveries at 200 msg/s (end-to-end latency), storage off and on
#   idle      100 connected devices (half of them asleep with buffered messages) for 10 s
# Usage: tools/mqttsn-load/bench/storage.sh [OUT [SECTION...]]
#   (after cargo build --release -p mqttsn-gateway -p mqttsn-load; needs strace)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-out/storage}
shift || true
SECTIONS=${*:-rates max lockstep idle}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATE_DIR=${STATE_DIR:-$OUT/state}
GW=${GW:-target/release/mqttsn-gateway}
LOAD=target/release/mqttsn-load
BROKER_PORT=18830
GW_PORT=18840
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
# The per-device budgets are above these loads anyway; lift them so that the runs measure
# the path and the store, not the limits.
cat > "$OUT/gateway.toml" <<CONF
[limits]
frame_rate = 0
publish_rate = 0
CONF

cleanup() { kill "${GW_PID:-}" "${STRACE_PID:-}" "${MOSQ_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

/usr/sbin/mosquitto -c "$OUT/mosquitto.conf" & MOSQ_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$BROKER_PORT) 2>/dev/null && break; sleep 0.05; done

# start_gateway NAME on|off
start_gateway() {
  local name=$1 storage=$2 args=()
  rm -rf "$STATE_DIR"
  [ "$storage" = on ] && args=(--state-dir "$STATE_DIR")
  : > "$OUT/$name.log"
  RUST_LOG="warn,mqttsn_gateway::driver=info,mqttsn_gateway::transport::upstream=info" \
    strace -f -c -e trace=fsync,fdatasync -o "$OUT/$name.strace" \
    "$GW" run --config "$OUT/gateway.toml" --udp 127.0.0.1:$GW_PORT \
    --broker mqtt://127.0.0.1:$BROKER_PORT --mode aggregating "${args[@]}" >> "$OUT/$name.log" 2>&1 &
  STRACE_PID=$!
  for _ in $(seq 200); do grep -q "broker connected" "$OUT/$name.log" 2>/dev/null && break; sleep 0.05; done
  GW_PID=$(pgrep -P "$STRACE_PID" -f mqttsn-gateway | head -1)
}
write_bytes() { awk '/^write_bytes/ {print $2}' "/proc/$GW_PID/io"; }
stop_gateway() {
  local name=$1
  kill -INT "$GW_PID"; wait "$STRACE_PID" 2>/dev/null || true
  local fsyncs
  fsyncs=$(awk '$NF ~ /^(fsync|fdatasync)$/ {n += $4} END {print n + 0}' "$OUT/$name.strace")
  local totals
  totals=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/$name.log" | grep -o 'StorageTotals {[^}]*}' || echo "storage off")
  echo "$name: fsyncs=$fsyncs write_bytes=$((AFTER - BEFORE)) $totals" | tee -a "$OUT/summary.txt"
}

# run NAME on|off LOAD-ARGS...
run() {
  local name=$1 storage=$2; shift 2
  start_gateway "$name" "$storage"
  BEFORE=$(write_bytes)
  $LOAD -q --json "$OUT/$name.json" "$@" --gateway 127.0.0.1:$GW_PORT --broker 127.0.0.1:$BROKER_PORT \
    | grep summary | sed "s/^/$name: /" | tee -a "$OUT/summary.txt"
  AFTER=$(write_bytes)
  stop_gateway "$name"
}

if want rates; then
  for storage in off on; do
    for rate in 1000 10000; do
      run "up-$rate-$storage" $storage publish --devices 100 --qos 1 --window 1 --rate $rate --duration 10
      run "down-$rate-$storage" $storage downstream --devices 100 --qos 1 --rate $rate --duration 10
    done
  done
fi
if want max; then
  for i in 1 2 3; do
    for storage in off on; do
      run "up-max-$storage-$i" $storage publish --devices 100 --qos 1 --window 1 --duration 10
      run "down-max-$storage-$i" $storage downstream --devices 100 --qos 1 --inflight 100 --duration 10
    done
  done
fi
if want lockstep; then
  for i in 1 2 3; do
    for storage in off on; do
      run "lockstep-up-$storage-$i" $storage publish --devices 1 --qos 1 --window 1 --duration 5
      run "lockstep-down-$storage-$i" $storage downstream --devices 1 --qos 1 --rate 200 --duration 5
    done
  done
fi
if want idle; then
  # 100 sessions stay (CleanSession=0), half of them asleep holding 5 QoS 1 messages each;
  # then nothing happens for 10 s, so nothing may be written.
  start_gateway idle on
  python3 tools/mqttsn-load/bench/idle_devices.py $GW_PORT 100
  for i in $(seq 1 2 99); do
    for m in 1 2 3 4 5; do mosquitto_pub -p $BROKER_PORT -t "idle/$i" -q 1 -m "held $m"; done
  done
  sleep 1
  "$GW" state "$STATE_DIR" | head -1 | tee -a "$OUT/summary.txt"
  BEFORE=$(write_bytes)
  file_before=$(stat -c '%s %y' "$STATE_DIR/sessions.log")
  sleep 10
  AFTER=$(write_bytes)
  file_after=$(stat -c '%s %y' "$STATE_DIR/sessions.log")
  same=$([ "$file_before" = "$file_after" ] && echo "unchanged" || echo "CHANGED")
  echo "idle: 10 s: write_bytes=$((AFTER - BEFORE)), sessions.log $same ($file_after)" \
    | tee -a "$OUT/summary.txt"
  AFTER=$BEFORE
  stop_gateway idle
fi
