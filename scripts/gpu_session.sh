#!/usr/bin/env bash
# Both GPU runs in one go, for a machine with a CUDA card (about 5-6 minutes on an H100):
#   scripts/gpu_check_training.py  -> training checks (resume, AMP, SyncBN/NCCL, speed)  [docs/training.md]
#   benchmarks/gpu_bench.py        -> latency and training images/s vs R50-FPN           [docs/benchmarks.md]
# Results go to ${OUT:-gpu-results}/ as .txt (the printed tables) and .json.
# The training check needs pycocotools; if it does not import and a wheel lies in .whl/, it is
# installed into a private folder (no network needed).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pycocotools" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/ts-site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/ts-site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/card.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/card.txt" 2>&1
rc=0
timeout 280 "$PY" scripts/gpu_check_training.py --json "$OUT/training_check.json" > "$OUT/training_check.txt" 2>&1 || rc=1
timeout 280 "$PY" benchmarks/gpu_bench.py --json "$OUT/gpu_bench.json" > "$OUT/gpu_bench.txt" 2>&1 || rc=1
tail -n 12 "$OUT/training_check.txt"; tail -n 30 "$OUT/gpu_bench.txt"
exit $rc
