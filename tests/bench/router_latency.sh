#!/usr/bin/env bash
# The learned router's decision latency under open-loop load: the Route RPC
# (the routing decision alone, nothing generated) at each rate, with real
# prompts cycled from a data file and made distinct, so the prompt cache never
# hits and the router runs on every request. Also counts the requests the
# gateway routed on priors because every router slot was busy (they would
# flatter the latency).
#
#   tests/bench/router_latency.sh [RATE...]       default: 50
#
#   ROUTER_PATH=full|fast|auto  (default full)   PROMPTS=FILE.jsonl (default
#   ../shared/data/routing/mix9.jsonl)  DURATION=30s  WARMUP=3s
#   ENCODER_THREADS=N (unset: the gateway's default)
#   ROUTER_BATCH='{wait: 0s}' (router.batch as a YAML flow mapping; unset:
#   the gateway's default)
#   POOL=zero (one zero-delay sim worker) | pair (two: GPT-4 and Mixtral, the
#   strong/weak pair the default artifact calibrated, which `auto` predicts
#   with the encoder)
#
# Needs the encoder assets (scripts/fetch-router-assets.sh).
source "$(dirname "$0")/lib.sh"

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(50)
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-3s}
PROMPTS=${PROMPTS:-$ROOT/../shared/data/routing/mix9.jsonl}
export ROUTER_EVERY_REQUEST=1 ROUTER_PATH=${ROUTER_PATH:-full}
OUT=${OUT:-$CARGO_TARGET_DIR/bench/router-latency-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
[ -f "$PROMPTS" ] || { echo "no prompts file $PROMPTS (set PROMPTS)" >&2; exit 1; }

build_release
machine_info | tee "$OUT/machine.txt"
echo "prompts: $PROMPTS" | tee -a "$OUT/machine.txt"

POOL=${POOL:-zero}
echo "pool:    $POOL" | tee -a "$OUT/machine.txt"
if [ "$POOL" = pair ]; then
    start_zero_mesh router-latency "  - {id: strong-0, model: gpt-4-1106-preview, tier: large, input_usd_per_mtok: 10, output_usd_per_mtok: 30, capacity: 4096, max_queue: 16384, backend: $ZERO_SIM}
  - {id: weak-0, model: mistralai/Mixtral-8x7B-Instruct-v0.1, tier: small, input_usd_per_mtok: 0.6, output_usd_per_mtok: 0.6, capacity: 4096, max_queue: 16384, backend: $ZERO_SIM}"
    # Under auto, runs on the pair are counted under path="full".
    METRIC_PATH=full
else
    start_zero_mesh router-latency
    METRIC_PATH=$ROUTER_PATH
fi
GATEWAY=$(ready_field "$MESH_READY" 'd["gateway"]')
ADMIN=$(ready_field "$MESH_READY" 'd["admin"]')

# A counter's value from the gateway's /metrics (0 when absent).
metric() {
    curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m {v = $2} END {print v + 0}'
}

echo "router.batch: ${ROUTER_BATCH:-default}" | tee -a "$OUT/machine.txt"
# Learned decisions/s and the share on priors count warm-up and measured
# requests alike (the counters cover both): runs / (warm-up + duration).
echo "| rate (req/s) | answered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | routed on priors (slots busy) | router runs | learned decisions/s | share on priors | encoder passes (batched) | rows per pass | generator send lag p99 ms | load 1m |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for rate in "${RATES[@]}"; do
    overloaded_before=$(metric routemesh_router_overloaded_total)
    runs_before=$(metric "routemesh_router_inference_seconds_count{path=\"$METRIC_PATH\"}")
    batches_before=$(metric routemesh_router_batches_total)
    bench "$OUT/route-$rate.json" --target route --url "$GATEWAY" --prompts "$PROMPTS" \
        --unique-prompts --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    overloaded=$(($(metric routemesh_router_overloaded_total) - overloaded_before))
    runs=$(($(metric "routemesh_router_inference_seconds_count{path=\"$METRIC_PATH\"}") - runs_before))
    batches=$(($(metric routemesh_router_batches_total) - batches_before))
    python3 - "$OUT/route-$rate.json" "$rate" "$overloaded" "$runs" "$batches" "$WARMUP" "$DURATION" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
def seconds(d):
    m = re.fullmatch(r"([\d.]+)(ms|s|m)", d)
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]
overloaded, runs, batches = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
span = seconds(sys.argv[6]) + seconds(sys.argv[7])
share = overloaded / max(overloaded + runs, 1)
rows = f"{runs / batches:.2f}" if batches else "–"
lat, lag = r["latency_ms"] or {}, r["send_lag_ms"] or {}
errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
load = (r.get("loadavg_after") or [float("nan")])[0]
print(f"| {sys.argv[2]} | {r['achieved_rate']:.1f} | {lat.get('p50', 0):.2f} | {lat.get('p90', 0):.2f} | "
      f"{lat.get('p99', 0):.2f} | {lat.get('p99_9', 0):.2f} | {lat.get('max', 0):.2f} | {errors} | "
      f"{overloaded} | {runs} | {runs / span:.1f} | {share:.1%} | {batches} | {rows} | {lag.get('p99', 0):.2f} | {load:.2f} |")
PY
done
