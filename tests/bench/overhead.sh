#!/usr/bin/env bash
# Gateway overhead: one zero-delay sim worker, called directly
# (routemesh.v1.Worker/Generate) and through the gateway
# (routemesh.v1.Gateway/Generate) in the same run, at rising open-loop rates.
# Overhead = quantile through the gateway - the same quantile direct.
#
#   tests/bench/overhead.sh [RATE...]        (default: 500 1000 2000 3000 5000)
#   DURATION=10s WARMUP=2s OUT=dir tests/bench/overhead.sh
#   ROUTER_EVERY_REQUEST=1 tests/bench/overhead.sh   (distinct prompts: the
#       learned router runs on every request instead of answering from its
#       prompt cache; needs scripts/fetch-router-assets.sh)
#
# Loopback only; about (WARMUP + DURATION) x 2 x rates, ~2.5 min by default.
# Prints a Markdown table; the raw JSON reports stay in $OUT.
source "$(dirname "$0")/lib.sh"

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(500 1000 2000 3000 5000)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
OUT=${OUT:-$CARGO_TARGET_DIR/bench/overhead-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"

build_release
machine_info | tee "$OUT/machine.txt"

start_zero_mesh overhead
GATEWAY=$(ready_field "$MESH_READY" 'd["gateway"]')
WORKER=$(ready_field "$MESH_READY" 'd["workers"][0]["endpoint"]')
echo "mesh:    gateway $GATEWAY, worker $WORKER (one process: routemesh up), pid $MESH_PID"
echo "hop:     gateway -> worker $( [ "${IN_PROCESS_WORKERS:-false}" = true ] && echo in-process || echo 'over gRPC (loopback TCP), as deployed')" | tee -a "$OUT/machine.txt"
echo "rss:     $(rss_mib "$MESH_PID") MiB idle (gateway + worker in one process)" | tee -a "$OUT/machine.txt"

for rate in "${RATES[@]}"; do
    echo "rate $rate req/s: direct, then through the gateway" >&2
    bench "$OUT/direct-$rate.json" --target worker-generate --url "$WORKER" \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    bench "$OUT/gateway-$rate.json" --target generate --url "$GATEWAY" \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" "${UNIQUE_PROMPTS[@]}"
    echo "rss after $rate req/s: $(rss_mib "$MESH_PID") MiB" | tee -a "$OUT/machine.txt" >&2
done
echo "rss:     $(rss_mib "$MESH_PID") MiB after the load" | tee -a "$OUT/machine.txt"

python3 "$(dirname "$0")/report.py" overhead "$OUT" "${RATES[@]}"
