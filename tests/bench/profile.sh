#!/usr/bin/env bash
# Where the gateway spends its CPU: a flamegraph of `routemesh up` (gateway
# plus one zero-delay sim worker, one process) under an open-loop load
# through the gateway, sampled with `perf record` (cpu-clock, DWARF stacks).
#
#   tests/bench/profile.sh [RATE]                  (default 3000 req/s)
#   DURATION=10s OUT=dir ROUTER_EVERY_REQUEST=1 tests/bench/profile.sh
#
# Needs perf (Debian linux-perf) and inferno (`cargo install inferno`).
# Writes $OUT/flamegraph.svg and prints the functions with the most samples
# (self time) and the share of samples under a few subsystems.
source "$(dirname "$0")/lib.sh"

RATE=${1:-3000}
DURATION=${DURATION:-10s}
OUT=${OUT:-$CARGO_TARGET_DIR/bench/profile-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "profile.sh needs $tool" >&2; exit 1; }
done

build_release
machine_info | tee "$OUT/machine.txt"

start_zero_mesh profile
GATEWAY=$(ready_field "$MESH_READY" 'd["gateway"]')

# Warm up (connections, caches), then sample while the load runs.
bench "$OUT/warmup.json" --target generate --url "$GATEWAY" --rate "$RATE" --duration 2s --warmup 0s "${UNIQUE_PROMPTS[@]}"
secs=$(seconds "$DURATION")
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$MESH_PID" -o "$OUT/perf.data" -- sleep "$secs" 2>"$OUT/perf.log" &
PERF_PID=$!
bench "$OUT/load.json" --target generate --url "$GATEWAY" --rate "$RATE" --duration "$DURATION" --warmup 0s "${UNIQUE_PROMPTS[@]}"
wait "$PERF_PID"

perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/stacks.folded"
inferno-flamegraph --title "routemesh up at $RATE req/s (gateway + zero-delay worker)" \
    < "$OUT/stacks.folded" > "$OUT/flamegraph.svg"
python3 - "$OUT/stacks.folded" "$OUT/load.json" <<'PY'
import collections, json, sys
folded, load = sys.argv[1], sys.argv[2]
self_time = collections.Counter()
under = collections.Counter()
total = 0
groups = {
    "router (learned, fast or full path)": "routemesh_router::",
    "tonic/h2/hyper (HTTP/2, gRPC framing)": ("h2::", "hyper::", "tonic::"),
    "prost (protobuf)": "prost::",
    "tokio runtime": "tokio::",
    "gateway service (routing, pool, telemetry)": "routemesh_gateway::",
    "worker agent (sim backend)": "routemesh_worker::",
    "telemetry recorder": "routemesh_telemetry::",
    "tracing": "tracing",
    "memory allocation": ("malloc", "free", "realloc", "_int_", "cfree"),
    "kernel (syscalls, network)": "[unknown]",
}
for line in open(folded):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    frames = stack.split(";")
    self_time[frames[-1]] += n
    for name, keys in groups.items():
        keys = (keys,) if isinstance(keys, str) else keys
        if any(k in f for f in frames for k in keys):
            under[name] += n
r = json.load(open(load))
print(f"samples: {total}; load: {r.get('achieved_rate', 0):.0f} req/s achieved")
print("\n| subsystem (inclusive) | share of samples |\n|---|---|")
for name, n in under.most_common():
    print(f"| {name} | {100 * n / max(total, 1):.1f}% |")
print("\n| function (self) | share |\n|---|---|")
for f, n in self_time.most_common(15):
    print(f"| `{f[:110]}` | {100 * n / max(total, 1):.1f}% |")
PY
echo "flamegraph: $OUT/flamegraph.svg"
