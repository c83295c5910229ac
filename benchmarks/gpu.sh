#!/usr/bin/env bash
# The one GPU check (about 4 minutes on an H100/H200): the CUDA tests, then the benchmark
# rows 1-4 on the GPU.  Results go to $OUT (default runs/bench): pytest-cuda.txt, bench-cuda.csv
# (+ .json with the machine), nvidia-smi.txt.  No downloads.
#   bash benchmarks/gpu.sh               # on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu.sh    # dry run on a CPU (GPU tests on the CPU, quick rows)
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-runs/bench}"
mkdir -p "$OUT"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PRUNELAB_RUNS="${PRUNELAB_RUNS:-$OUT/runs}"
status=0

if [ "$DEVICE" = cuda ]; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  timeout 150 python -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest-cuda.txt" || status=1
  QUICK=""
else
  # No GPU: the same checks with the CPU standing in for it.
  PRUNELAB_TEST_DEVICE=cpu timeout 300 python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tee "$OUT/pytest-cuda.txt" || status=1
  QUICK="--quick"
fi

timeout 330 python -m prunelab.cli bench --device "$DEVICE" $QUICK --rows 1,2,3,4 \
  --output "$OUT/bench-$DEVICE.csv" 2>&1 | tee "$OUT/bench-$DEVICE.log" || status=1
exit $status
