#!/usr/bin/env bash
# CPU per request, gateway and worker separately, as deployed: a worker agent
# (`routemesh worker`, one zero-delay sim engine) and a gateway (`routemesh
# gateway`, the worker as a static endpoint, in-memory telemetry, fast-path
# router) in two processes, the hop between them over loopback gRPC. Each
# process's CPU time (utime + stime from /proc) over 10 s of open-loop load,
# divided by the requests answered:
#
#   1. straight to the worker (Worker/Generate): the worker's own cost;
#   2. through the gateway, gRPC Gateway/Generate;
#   3. through the gateway, the OpenAI API (POST /v1/chat/completions).
#
#   tests/bench/gateway_cpu.sh [RATE]      (default 2000)
#   DURATION=10s OUT=dir PERF=1 GATEWAY_THREADS=1 tests/bench/gateway_cpu.sh
#       (PERF=1: also `perf record` the gateway during 2 and 3 and print
#       where its CPU goes; needs perf; GATEWAY_THREADS: the gateway's
#       runtime threads, default one per core)
#
# Loopback only; about 40 s. The load generator runs in its own process and
# is not counted. Compare builds in alternating rounds (BENCH_BIN): runs of
# one build differ on a shared two-core machine.
source "$(dirname "$0")/lib.sh"
build_release

RATE=${1:-2000}
DURATION=${DURATION:-10s}
OUT=${OUT:-$CARGO_TARGET_DIR/bench/gateway-cpu-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
machine_info | tee "$OUT/machine.txt"

start_routemesh worker worker "workers:
  - {id: zero-0, model: zero, tier: small, input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.2, capacity: 4096, max_queue: 16384, listen: 127.0.0.1:0, backend: $ZERO_SIM}"
WORKER_PID=$PROC_PID
WORKER=$(ready_field "$PROC_READY" 'd["workers"][0]["endpoint"]')
# GATEWAY_THREADS: the gateway's runtime threads (tokio's default: one per core).
if [ -n "${GATEWAY_THREADS:-}" ]; then export TOKIO_WORKER_THREADS=$GATEWAY_THREADS; fi
start_routemesh gateway gateway "gateway:
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  max_concurrent_requests: 100000
${GATEWAY_EXTRA:-}
static_workers:
  - {id: zero-0, model: zero, tier: small, endpoint: \"$WORKER\", input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.2}"
GATEWAY_PID=$PROC_PID
unset TOKIO_WORKER_THREADS
GATEWAY=$(ready_field "$PROC_READY" 'd["gateway"]')
HTTP=http://$(ready_field "$PROC_READY" 'd["http"]')

secs=$(seconds "$DURATION")

# measure NAME TARGET URL: one warm-up, then the measured run with both
# processes' CPU read around it.
measure() {
    local name=$1 target=$2 url=$3
    bench "$WORK/$name-warm.json" --target "$target" --url "$url" --rate "$RATE" --duration 2s --warmup 0s
    local perf_pid=""
    if [ -n "${PERF:-}" ] && [ "$name" != direct ]; then
        perf record -q -e cpu-clock -F 999 -g -p "$GATEWAY_PID" -o "$OUT/perf-$name.data" \
            -- sleep "$secs" 2>"$OUT/perf-$name.log" &
        perf_pid=$!
    fi
    local g0 w0 g1 w1
    g0=$(cpu_seconds "$GATEWAY_PID"); w0=$(cpu_seconds "$WORKER_PID")
    bench "$OUT/$name.json" --target "$target" --url "$url" --rate "$RATE" --duration "$DURATION" --warmup 0s
    g1=$(cpu_seconds "$GATEWAY_PID"); w1=$(cpu_seconds "$WORKER_PID")
    [ -n "$perf_pid" ] && wait "$perf_pid"
    echo "$name $(python3 -c "print($g1 - $g0, $w1 - $w0)")" >> "$WORK/cpu.txt"
}
: > "$WORK/cpu.txt"
measure direct worker-generate "$WORKER"
measure grpc generate "$GATEWAY"
measure openai http "$HTTP"

python3 - "$WORK/cpu.txt" "$OUT" "$RATE" <<'PY' | tee "$OUT/summary.txt"
import json, sys
cpu_file, out, rate = sys.argv[1], sys.argv[2], sys.argv[3]
labels = {"direct": "worker direct (no gateway)", "grpc": "gateway, gRPC Generate",
          "openai": "gateway, OpenAI API"}
print(f"open loop {rate} req/s; CPU ms per answered request (utime + stime)")
print(f"{'path':<28}{'answered':>10}{'errors':>8}{'gateway':>10}{'worker':>10}{'p50 ms':>9}{'p99 ms':>9}")
for line in open(cpu_file):
    name, g, w = line.split()
    report = json.load(open(f"{out}/{name}.json"))
    ok = max(report["ok"], 1)
    lat = report.get("latency_ms") or {}
    gateway = "-" if name == "direct" else f"{float(g) / ok * 1e3:.3f}"
    worker = f"{float(w) / ok * 1e3:.3f}"
    print(f"{labels[name]:<28}{report['ok']:>10}{sum(report['errors'].values()):>8}{gateway:>10}{worker:>10}"
          f"{lat.get('p50', float('nan')):>9.3f}{lat.get('p99', float('nan')):>9.3f}")
PY

if [ -n "${PERF:-}" ]; then
    for name in grpc openai; do
        echo "== gateway, $name: self time by symbol (top 40)" | tee -a "$OUT/summary.txt"
        perf report -i "$OUT/perf-$name.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | grep '%' | head -40 | tee -a "$OUT/summary.txt"
    done
fi
