# Shared by the benchmark scripts in this folder (sourced, not run).
# Everything listens on 127.0.0.1 only, and every process started here is
# stopped on exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# BENCH_BIN: measure another build (e.g. a copy of an older one) instead.
BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release/routemesh}
WORK=$(mktemp -d -t routemesh-bench.XXXXXX)
PIDS=()

cleanup() {
    # Only the processes this script started, by pid.
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    # Keep the processes' logs with the reports: they explain errors.
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The release binary: benchmarks of a debug build measure the debug build.
build_release() {
    [ -n "${BENCH_BIN:-}" ] && return
    (cd "$ROOT" && cargo build --release --quiet --bin routemesh)
}

# Prints what the numbers should be read with: the machine and its load.
machine_info() {
    echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit:  $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu:     $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory:  $(free -h | awk '/^Mem:/ {print $2}')"
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
}

# wait_for_file FILE SECONDS
wait_for_file() {
    local deadline=$((SECONDS + $2))
    until [ -s "$1" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for $1" >&2
            return 1
        fi
        sleep 0.05
    done
}

# start_routemesh NAME SUBCOMMAND YAML [ARGS...]: runs `routemesh SUBCOMMAND`
# with YAML as its config; sets PROC_PID and PROC_READY (the ready JSON file,
# with the addresses it bound).
start_routemesh() {
    local name=$1 sub=$2 yaml=$3
    shift 3
    echo "$yaml" > "$WORK/$name.yaml"
    # warn: per-request info logs would be measured too.
    RUST_LOG=${RUST_LOG:-warn} "$BIN" "$sub" --config "$WORK/$name.yaml" \
        --ready-file "$WORK/$name.ready.json" "$@" > "$WORK/$name.log" 2>&1 &
    PROC_PID=$!
    PIDS+=("$PROC_PID")
    PROC_READY=$WORK/$name.ready.json
    wait_for_file "$PROC_READY" 60 || { cat "$WORK/$name.log" >&2; return 1; }
}

# start_mesh NAME YAML: `routemesh up` on free ports; sets MESH_PID and
# MESH_READY.
start_mesh() {
    start_routemesh "$1" up "$2" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    MESH_PID=$PROC_PID
    MESH_READY=$PROC_READY
}

# ready_field FILE PYTHON-EXPR-ON-d
ready_field() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# seconds DURATION: a bench duration (e.g. 10s, 500ms) in seconds.
seconds() {
    python3 -c "import sys; s=sys.argv[1]; print(float(s[:-2])/1000 if s.endswith('ms') else float(s.rstrip('s')))" "$1"
}

# cpu_seconds PID...: CPU time (user + system) the processes, their threads
# and their live descendants have used so far, in seconds.
cpu_seconds() {
    python3 - "$@" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += open(f"/proc/{pid}/task/{task}/children").read().split()
        except OSError:
            pass
    return out
total, todo, seen = 0, list(sys.argv[1:]), set()
while todo:
    pid = todo.pop()
    if pid in seen:
        continue
    seen.add(pid)
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    total += int(fields[11]) + int(fields[12])  # utime, stime
    todo += children(pid)
print(f"{total / hz:.2f}")
PY
}

# Resident memory of a process in MiB (now, and the peak since it started).
rss_mib() {
    awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"
}
peak_rss_mib() {
    awk '/^VmHWM:/ {printf "%.1f", $2/1024}' "/proc/$1/status"
}

# bench OUT.json ARGS...: one `routemesh bench` run, JSON kept in OUT.json.
bench() {
    local out=$1
    shift
    "$BIN" bench --json --output "$out" "$@" > /dev/null
}

# start_zero_mesh NAME [WORKERS]: `routemesh up` with one zero-delay sim
# worker (or the YAML list items WORKERS, each given $ZERO_SIM as its
# `backend`) whose capacity and queue are far above what the rates need (the
# benchmarks measure latency, not admission). With ROUTER_EVERY_REQUEST set, the
# gateway loads the default router artifact (ROUTER_PATH: fast or full) and
# UNIQUE_PROMPTS holds the bench flag that makes its prompt cache miss
# (ENCODER_THREADS sets the router's encoder_threads, ROUTER_BATCH its `batch`
# settings as a YAML flow mapping, e.g. '{wait: 0s}' for no batching).
# GATEWAY_EXTRA: more lines of the `gateway:` section (indented two spaces);
# MAX_CONCURRENT its max_concurrent_requests (default 100000: no shedding).
# The gateway reaches the worker through its port (IN_PROCESS_WORKERS=true
# calls it in-process instead): "added" here is the gateway as deployed, with
# its workers on other nodes, so the hop to the worker is part of it.
UNIQUE_PROMPTS=()
ZERO_SIM="{sim: {ttft_ms: {median: 0}, tokens_per_second: {median: 0}, output_tokens: {median: 16}}}"
start_zero_mesh() {
    local router_yaml=""
    if [ -n "${ROUTER_EVERY_REQUEST:-}" ]; then
        router_yaml="  router:
    artifact: $ROOT/router/artifacts/default
    assets: ${ROUTEMESH_ASSETS:-$ROOT/.cache/routemesh/assets}
    path: ${ROUTER_PATH:-fast}${ENCODER_THREADS:+
    encoder_threads: $ENCODER_THREADS}${ROUTER_BATCH:+
    batch: $ROUTER_BATCH}"
        UNIQUE_PROMPTS=(--unique-prompts)
        echo "router:  on every request (${ROUTER_PATH:-fast} path)" >&2
        if [ -n "${OUT:-}" ]; then
            echo "router:  on every request (${ROUTER_PATH:-fast} path)" >> "$OUT/machine.txt"
        fi
    fi
    start_mesh "$1" "gateway:
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  max_concurrent_requests: ${MAX_CONCURRENT:-100000}
  in_process_workers: ${IN_PROCESS_WORKERS:-false}
${GATEWAY_EXTRA:-}
$router_yaml
workers:
${2:-  - {id: zero-0, model: zero, tier: small, input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.2, capacity: 4096, max_queue: 16384, backend: $ZERO_SIM\}}"
}
