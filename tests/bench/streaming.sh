#!/usr/bin/env bash
# Streaming through the gateway, and the gateway's memory. A worker process
# and a gateway process (separate, as deployed; the gateway dials the worker
# as a static worker), two sim models on the worker:
#   paced:   first token at once, then 200 tokens/s, 32 tokens (a stream
#            lasts ~155 ms, so many are open at once);
#   instant: 256 tokens with no delay (the relay's throughput ceiling).
# 1. time to first token added: open loop at each rate, paced model, the
#    worker's GenerateStream directly vs the gateway's GenerateStream (gRPC)
#    and the OpenAI HTTP API with stream: true;
# 2. tokens/s passed through: closed loop (CONCURRENCY streams back to back)
#    on the instant model, direct vs through the gateway, in deltas/s;
# 3. the gateway process's resident memory idle, and its peak under load.
#
#   tests/bench/streaming.sh [RATE...]      (default: 100 300 600)
#   DURATION=10s WARMUP=2s CONCURRENCY=16 OUT=dir tests/bench/streaming.sh
source "$(dirname "$0")/lib.sh"

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(100 300 600)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-16}
OUT=${OUT:-$CARGO_TARGET_DIR/bench/streaming-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"

build_release
machine_info | tee "$OUT/machine.txt"

start_routemesh workers worker "workers:
  - id: paced-0
    model: paced
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    capacity: 4096
    max_queue: 16384
    backend:
      sim: {ttft_ms: {median: 0}, tokens_per_second: {median: 200}, output_tokens: {median: 32}}
  - id: instant-0
    model: instant
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    capacity: 4096
    max_queue: 16384
    backend:
      sim: {ttft_ms: {median: 0}, tokens_per_second: {median: 0}, output_tokens: {median: 256}}"
PACED=$(ready_field "$PROC_READY" '[w["endpoint"] for w in d["workers"] if w["id"]=="paced-0"][0]')
INSTANT=$(ready_field "$PROC_READY" '[w["endpoint"] for w in d["workers"] if w["id"]=="instant-0"][0]')

start_routemesh gateway gateway "gateway:
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  max_concurrent_requests: 100000
static_workers:
  - {id: paced-0, model: paced, tier: small, endpoint: \"$PACED\", input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.2}
  - {id: instant-0, model: instant, tier: small, endpoint: \"$INSTANT\", input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.2}" \
    --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
GW_PID=$PROC_PID
GATEWAY=$(ready_field "$PROC_READY" 'd["gateway"]')
HTTP=http://$(ready_field "$PROC_READY" 'd["http"]')
# Let the first load reports mark both workers healthy.
sleep 2
IDLE_RSS=$(rss_mib "$GW_PID")
echo "gateway: $GATEWAY (http $HTTP), pid $GW_PID, RSS idle $IDLE_RSS MiB" | tee -a "$OUT/machine.txt"

for rate in "${RATES[@]}"; do
    echo "rate $rate streams/s: direct, gateway gRPC, gateway HTTP" >&2
    bench "$OUT/direct-stream-$rate.json" --target worker-generate-stream --url "$PACED" \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    bench "$OUT/gateway-stream-$rate.json" --target generate-stream --url "$GATEWAY" --model paced \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    bench "$OUT/http-stream-$rate.json" --target http-stream --url "$HTTP" --model paced \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP"
    echo "gateway RSS after $rate streams/s: $(rss_mib "$GW_PID") MiB" | tee -a "$OUT/machine.txt" >&2
done

echo "throughput: $CONCURRENCY streams back to back, 256 instant tokens each" >&2
bench "$OUT/direct-tput.json" --target worker-generate-stream --url "$INSTANT" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP"
bench "$OUT/gateway-tput.json" --target generate-stream --url "$GATEWAY" --model instant \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP"
bench "$OUT/http-tput.json" --target http-stream --url "$HTTP" --model instant \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP"
echo "gateway RSS: idle $IDLE_RSS MiB, now $(rss_mib "$GW_PID") MiB, peak $(peak_rss_mib "$GW_PID") MiB" | tee -a "$OUT/machine.txt"

python3 "$(dirname "$0")/report.py" streaming "$OUT" "${RATES[@]}"
