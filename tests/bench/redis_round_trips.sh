#!/usr/bin/env bash
# Redis round trips per request at a given rate (default 1000 req/s, 10 s):
# a mesh whose registry and telemetry live in a redis-server of this run;
# the gateway counts its own round trips (routemesh_redis_round_trips_total,
# telemetry and registry; the in-process worker's heartbeats share the
# registry's connection and count there too) and its requests.
#
#   tests/bench/redis_round_trips.sh [RATE]
source "$(dirname "$0")/lib.sh"
RATE=${1:-1000}
DURATION=${DURATION:-10s}

build_release
machine_info

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
PIDS+=("$!")
until redis-cli -p "$PORT" ping > /dev/null 2>&1; do sleep 0.05; done

start_mesh rt "registry:
  redis: {url: 'redis://127.0.0.1:$PORT', mesh: bench}
gateway:
  listen: 127.0.0.1:0
  router: {enabled: false}
  max_concurrent_requests: 100000
workers:
  - id: zero-0
    model: zero
    tier: small
    capacity: 4096
    max_queue: 16384
    backend:
      sim: {ttft_ms: {median: 0}, tokens_per_second: {median: 0}, output_tokens: {median: 16}}"
GATEWAY=$(ready_field "$MESH_READY" 'd["gateway"]')
ADMIN=$(ready_field "$MESH_READY" 'd["admin"]')

counters() {
    curl -s "http://$ADMIN/metrics" | python3 -c '
import re, sys
text = sys.stdin.read()
def total(pattern):
    return sum(float(v) for v in re.findall(pattern + r"[^\n]* ([0-9.e+]+)\n", text))
print(total(r"routemesh_redis_round_trips_total\{component=\"telemetry\"\}"),
      total(r"routemesh_redis_round_trips_total\{component=\"registry\"\}"),
      total(r"routemesh_requests_total\{[^}]*method=\"Generate\""))'
}

read -r T0 G0 N0 < <(counters)
bench "$WORK/rt.json" --target generate --url "$GATEWAY" --rate "$RATE" --duration "$DURATION" --warmup 1s
sleep 2.2  # the last telemetry flush (every second) and snapshot (every second)
read -r T1 G1 N1 < <(counters)
python3 - "$T0" "$G0" "$N0" "$T1" "$G1" "$N1" "$RATE" <<'PY'
import sys
t0, g0, n0, t1, g1, n1, rate = map(float, sys.argv[1:])
n = n1 - n0
print(f"requests: {n:.0f} at {rate:.0f} req/s offered")
print(f"telemetry round trips: {t1 - t0:.0f} = {(t1 - t0) / n:.4f} per request")
print(f"registry round trips (discovery + heartbeats): {g1 - g0:.0f} = {(g1 - g0) / n:.4f} per request")
print(f"all Redis round trips: {(t1 - t0 + g1 - g0) / n:.4f} per request")
PY
