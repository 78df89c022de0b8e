#!/usr/bin/env bash
# The GPU check in one command, also on a GPU machine without network or a project install:
#   bash scripts/gpu_check.sh OUT_DIR [--dry] [--budget-s S] [--commit SHA]
# Dependencies the machine's Python lacks are installed from the wheels in $GPU_CHECK_WHEELS (default .whl/,
# filled by `make gpu-wheels` on a machine with network) into a private folder; the project runs from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [--dry] [options of benchmarks/gpu_check.py]}
shift
PYTHON=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-.whl}
site=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/meta_kd_sr_gpu_site}

# import name:wheel name of what the project needs beyond torch
deps="hydra:hydra_core omegaconf:omegaconf antlr4:antlr4_python3_runtime higher:higher"
deps="$deps bicubic_pytorch:bicubic_pytorch lightning:lightning torchmetrics:torchmetrics skimage:scikit_image"
deps="$deps yaml:PyYAML PIL:pillow pytest:pytest"
files=()
for pair in $deps; do
  module=${pair%%:*}
  wheel=${pair#*:}
  if ! "$PYTHON" -c "import $module" >/dev/null 2>&1; then
    found=$(ls "$wheels"/"$wheel"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$found" ]; then
      echo "gpu-check: $PYTHON cannot import $module and $wheels/ has no $wheel wheel (make gpu-wheels)" >&2
      exit 2
    fi
    files+=("$found")
  fi
done
if [ ${#files[@]} -gt 0 ]; then
  echo "gpu-check: installing ${files[*]##*/} into $site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${files[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py --out "$out" "$@"
