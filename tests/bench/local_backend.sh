#!/usr/bin/env bash
# The local backend against llama.cpp on this machine: single-stream decode
# tokens/s and time to first token for a 32-token prompt (SmolLM2-135M-Instruct
# Q4_1), plus each engine's greedy answer to the golden prompt. Results go in
# docs/BENCHMARKS.md.
#
#   tests/bench/local_backend.sh [THREADS] [DECODE_TOKENS] [ROUNDS]
#
# With LLAMA_PY pointing at a Python that has llama-cpp-python 0.3.36 (build it
# in a throwaway venv outside the repo, with DESIGN.md's CMAKE_ARGS, and
# -DGGML_AVX512=OFF on a CPU without AVX-512: docs/BENCHMARKS.md 18.6), the
# reference runs too, alternating with ours so both see the same machine load.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${ROUTEMESH_LOCAL_MODEL:-.cache/routemesh/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
THREADS="${1:-2}"
DECODE="${2:-128}"
ROUNDS="${3:-3}"
[ -f "$MODEL" ] || bash scripts/fetch-local-model.sh
cargo build --release --quiet -p routemesh-worker --example local_bench
echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# commit $(git rev-parse --short HEAD), threads $THREADS, $DECODE decoded tokens, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  echo "## round $round: routemesh local backend"
  target/release/examples/local_bench "$MODEL" "$THREADS" "$DECODE"
  if [ -n "${LLAMA_PY:-}" ]; then
    echo "## round $round: llama.cpp"
    "$LLAMA_PY" tests/bench/llama_cpp_reference.py "$MODEL" "$THREADS" "$DECODE"
  fi
done
