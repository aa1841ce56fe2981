#!/usr/bin/env bash
# Redis commands per served request, from the Redis side (INFO commandstats
# of a redis-server started for the run, nothing else using it), at each
# offered rate (default 100 500 1000 req/s): one `routemesh up` (a gateway
# and a zero-delay sim worker) with registry.redis, an open-loop
# `routemesh bench` load with a fresh prompt per request (so each request
# is also a new conversation whose session is shared), and the counters
# read twice while the load runs (steady state: warm-up and the last flush
# are outside the window). Prints commands per request by command, Redis's
# own CPU per request, and the gateway's routemesh_redis_commands_total by
# component when the binary exports it.
#
#   tests/bench/redis_load.sh [RATE...]
#   LIMITS=1 tests/bench/redis_load.sh 1000   # the requests' tenant has limits (ADMIT/SETTLE scripts)
#   BENCH_BIN=target/debug/routemesh ...      # measure another build
source "$(dirname "$0")/lib.sh"
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(100 500 1000)
WINDOW=${WINDOW:-10}

build_release
machine_info

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
until redis-cli -p "$PORT" ping > /dev/null 2>&1; do sleep 0.05; done

TENANTS=""
if [ -n "${LIMITS:-}" ]; then
    # Limits far above the load: every request runs ADMIT and SETTLE, none is refused.
    TENANTS="  tenants:
    default: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, budget_usd_per_day: 1000000}"
    echo "limits:  the requests' tenant has requests, tokens and budget limits"
fi

start_mesh load "registry:
  redis: {url: 'redis://127.0.0.1:$PORT', mesh: bench}
gateway:
  listen: 127.0.0.1:0
  router: {enabled: false}
  max_concurrent_requests: 100000
$TENANTS
workers:
  - id: zero-0
    model: zero
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    capacity: 4096
    max_queue: 16384
    backend: $ZERO_SIM"
GATEWAY=$(ready_field "$MESH_READY" 'd["gateway"]')
ADMIN=$(ready_field "$MESH_READY" 'd["admin"]')

# One sample: JSON of Redis's commandstats and CPU, and the gateway's
# counters, at one moment.
sample() {
    {
        redis-cli -p "$PORT" info commandstats
        redis-cli -p "$PORT" info cpu
        redis-cli -p "$PORT" info memory
        echo "#gateway"
        curl -s "http://$ADMIN/metrics"
    } | python3 -c '
import json, re, sys
text = sys.stdin.read()
redis_part, gateway = text.split("#gateway", 1)
calls = {m[0]: int(m[1]) for m in re.findall(r"cmdstat_(\w+):calls=(\d+)", redis_part)}
cpu = sum(float(v) for v in re.findall(r"used_cpu_(?:sys|user):([0-9.]+)", redis_part))
memory = int(re.search(r"used_memory:(\d+)", redis_part).group(1))
def total(pattern):
    return sum(float(v) for v in re.findall(pattern + r"[^\n]* ([0-9.e+]+)\n", gateway))
components = {c: total(r"routemesh_redis_commands_total\{component=\"%s\"\}" % c)
              for c in ("telemetry", "served_requests", "sessions")}
trips = {c: total(r"routemesh_redis_round_trips_total\{component=\"%s\"\}" % c)
         for c in ("telemetry", "served_requests", "sessions")}
print(json.dumps({"calls": calls, "cpu": cpu, "memory": memory, "components": components, "trips": trips,
                  "requests": total(r"routemesh_requests_total\{[^}]*method=\"Generate\"")}))'
}

for RATE in "${RATES[@]}"; do
    "$BIN" bench --json --output "$WORK/load-$RATE.json" --target generate --url "$GATEWAY" \
        --rate "$RATE" --duration "$((WINDOW + 4))s" --warmup 2s --unique-prompts > /dev/null &
    LOAD_PID=$!
    PIDS+=("$LOAD_PID")
    sleep 4  # warm-up, and the first flushes of this rate
    A=$(sample)
    sleep "$WINDOW"
    B=$(sample)
    wait "$LOAD_PID"
    python3 - "$RATE" "$A" "$B" "$WORK/load-$RATE.json" "$(cut -d' ' -f1 /proc/loadavg)" "$WINDOW" <<'PY'
import json, sys
rate, a, b, report, load = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
window = float(sys.argv[6])
n = b["requests"] - a["requests"]
calls = {k: v - a["calls"].get(k, 0) for k, v in b["calls"].items()}
calls = {k: v for k, v in calls.items() if v > 0 and k not in ("info", "ping")}
total = sum(calls.values())
cpu = b["cpu"] - a["cpu"]
errors = json.load(open(report)).get("errors", {})
print(f"\n== {rate} req/s offered: {n:.0f} requests in the window, load {load}, bench errors {errors or 0}")
print(f"Redis commands per request: {total / n:.4f} ({total} commands, {total / window:.0f}/s)")
for cmd, c in sorted(calls.items(), key=lambda kv: -kv[1]):
    print(f"  {cmd:<16} {c / n:.4f}")
print(f"Redis CPU per request: {cpu / n * 1e6:.1f} us ({cpu:.3f} s over the window)")
print(f"Redis memory per request: {(b['memory'] - a['memory']) / n:.0f} B (what the TTLs then keep)")
comp = {k: v - a["components"][k] for k, v in b["components"].items()}
if any(comp.values()):
    print("gateway's routemesh_redis_commands_total per request: " +
          ", ".join(f"{k} {v / n:.4f}" for k, v in comp.items()))
# The cadence the counts rest on: a gateway short of CPU runs its timers
# late, flushes less often and looks cheaper than it is.
trips = {k: (v - a["trips"][k]) / window for k, v in b["trips"].items()}
if any(trips.values()):
    print("round trips per second (telemetry: 4 when one flush and one refresh run each second; "
          "served_requests and sessions: 1 per flush when busy): " +
          ", ".join(f"{k} {v:.2f}" for k, v in trips.items()))
PY
done
