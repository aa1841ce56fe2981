#!/usr/bin/env bash
# routemesh's OpenAI HTTP path against LiteLLM's proxy, both in front of the
# same OpenAI-compatible mock upstream (mock_openai.py), same machine, same
# open-loop load. Added latency = through the proxy - direct to the mock,
# quantile by quantile, at each rate.
#
#   tests/bench/litellm.sh [RATE...]        (default: 25 50 100 200)
#   DURATION=10s WARMUP=3s OUT=dir LITELLM_VERSION=1.108.7 tests/bench/litellm.sh
#
# LiteLLM is installed by this script into its own venv
# ($CARGO_TARGET_DIR/bench/litellm-venv, kept for the next run; ~1 min the
# first time). routemesh runs `up` with one worker whose backend is `openai`
# pointed at the mock, so both products call the same mock the same way. The
# gateway calls that worker in-process (IN_PROCESS_WORKERS=false: through its
# gRPC port, the topology of runs 1-3 in docs/BENCHMARKS.md section 2).
# Loopback only; bounded: about (WARMUP + DURATION) x 3 x rates.
source "$(dirname "$0")/lib.sh"

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(25 50 100 200)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
LITELLM_VERSION=${LITELLM_VERSION:-1.108.7}
OUT=${OUT:-$CARGO_TARGET_DIR/bench/litellm-$(date -u +%Y%m%dT%H%M%S)}
VENV=${LITELLM_VENV:-$CARGO_TARGET_DIR/bench/litellm-venv}
mkdir -p "$OUT"

build_release
if ! "$VENV/bin/litellm" --version 2>/dev/null | grep -q "$LITELLM_VERSION"; then
    echo "installing litellm[proxy]==$LITELLM_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi
machine_info | tee "$OUT/machine.txt"
echo "litellm: $("$VENV/bin/pip" show litellm 2>/dev/null | awk '/^Version/ {print $2}') (1 worker process)" | tee -a "$OUT/machine.txt"

# The mock upstream.
python3 "$(dirname "$0")/mock_openai.py" "$WORK/mock.port" > "$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_for_file "$WORK/mock.port" 10
MOCK=http://127.0.0.1:$(cat "$WORK/mock.port")

# routemesh: gateway + one openai-backend worker in front of the mock.
IN_PROCESS_WORKERS=${IN_PROCESS_WORKERS:-true}
echo "routemesh: gateway -> worker $( [ "$IN_PROCESS_WORKERS" = true ] && echo in-process || echo 'over gRPC (loopback TCP)')" | tee -a "$OUT/machine.txt"
start_mesh litellm-peer "gateway:
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  in_process_workers: $IN_PROCESS_WORKERS
workers:
  - id: mock-0
    model: mock
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    capacity: 1024
    max_queue: 4096
    backend:
      openai:
        base_url: $MOCK/v1"
ROUTEMESH=http://$(ready_field "$MESH_READY" 'd["http"]')

# LiteLLM, configured as measured in DESIGN.md (no spend logs, no telemetry).
LITELLM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      api_base: $MOCK/v1
      api_key: dummy
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  disable_spend_logs: true
YAML
KEY=sk-bench-$RANDOM
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_MASTER_KEY=$KEY \
    "$VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" \
    > "$WORK/litellm.log" 2>&1 &
LITELLM_PID=$!
PIDS+=("$LITELLM_PID")
LITELLM=http://127.0.0.1:$LITELLM_PORT
deadline=$((SECONDS + 120))
until curl -sf -o /dev/null "$LITELLM/health/liveliness"; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$LITELLM_PID" 2>/dev/null; then
        echo "LiteLLM did not start:" >&2
        tail -30 "$WORK/litellm.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "servers: mock $MOCK, routemesh $ROUTEMESH, litellm $LITELLM"

# CPU per request of each proxy (process, threads and children), warm-up
# included: CPU seconds over the requests sent in warm-up and measurement.
cpu_per_request() { # NAME RATE CPU_BEFORE CPU_AFTER
    python3 -c "import sys; n, r, a, b, t = sys.argv[1:]; print(f'cpu per request, {n} at {r} req/s: {(float(b) - float(a)) / (float(r) * float(t)) * 1e3:.3f} ms')" \
        "$1" "$2" "$3" "$4" "$(python3 -c "print($(seconds "$WARMUP") + $(seconds "$DURATION"))")" | tee -a "$OUT/machine.txt" >&2
}
for rate in "${RATES[@]}"; do
    echo "rate $rate req/s: direct to the mock, routemesh, LiteLLM" >&2
    bench "$OUT/direct-$rate.json" --target http --url "$MOCK" --model mock \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    c0=$(cpu_seconds "$MESH_PID")
    bench "$OUT/routemesh-$rate.json" --target http --url "$ROUTEMESH" --model router \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    cpu_per_request "routemesh (gateway + worker)" "$rate" "$c0" "$(cpu_seconds "$MESH_PID")"
    c0=$(cpu_seconds "$LITELLM_PID")
    bench "$OUT/litellm-$rate.json" --target http --url "$LITELLM" --model mock --api-key "$KEY" \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    cpu_per_request "LiteLLM" "$rate" "$c0" "$(cpu_seconds "$LITELLM_PID")"
    echo "rss after $rate req/s: routemesh (gateway + worker) $(rss_mib "$MESH_PID") MiB, litellm $(rss_mib "$LITELLM_PID") MiB" | tee -a "$OUT/machine.txt" >&2
done

# A rate is held by a proxy when its p99 added stays within 50 ms (LiteLLM's
# own published figure at 500 req/s is 40 ms) with no errors.
LIMIT_MS=${LIMIT_MS:-50} python3 "$(dirname "$0")/report.py" compare "$OUT" "${RATES[@]}"
