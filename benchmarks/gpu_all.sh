#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (H100/H200; nothing can be downloaded there).
# Carry: .whl (papermill, ipykernel, sacremoses, torch-pruning wheels for its Python 3.12) and
# .devcopy/multi30k (a copy of the data).  Every step is time-boxed and logs into $OUT:
#   1. CUDA-marked tests (GPU vs CPU results)         -> pytest-cuda.txt
#   2. benchmark rows 1-4 on CUDA                       -> bench-cuda.csv / .log
#   3. AlexNet latency, pruned vs unpruned, batch 256   -> cnn-latency.txt
#   4. NMT baseline at the paper profile, capped epochs -> nmt-paper.txt
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# `python` runs the interpreter that holds torch (a wrapper: a symlink would lose its venv).
PY=$(python3 -c "import sys; print(sys.executable)")
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$PY" > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PRUNELAB_RUNS=/tmp/prunelab-runs PRUNELAB_MULTI30K="$PWD/.devcopy/multi30k"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"

timeout -k 10 "${T_TESTS:-90}" python -m pytest -m cuda -q -p no:cacheprovider -o addopts="" tests 2>&1 | tail -40 > "$OUT/pytest-cuda.txt"
timeout -k 10 "${T_BENCH:-150}" python -m prunelab.cli bench --device cuda --rows 1,2,3,4 --output "$OUT/bench-cuda.csv" > "$OUT/bench-cuda.log" 2>&1
timeout -k 10 "${T_CNN:-45}" python benchmarks/gpu_cnn.py --batch 256 --size 224 --repeats 20 > "$OUT/cnn-latency.txt" 2>&1
MAX_EPOCHS="${NMT_EPOCHS:-8}" AMP="${NMT_AMP:-1}" timeout -k 10 "${T_NMT:-150}" bash benchmarks/gpu_nmt.sh > "$OUT/nmt-paper.txt" 2>&1
for f in "$OUT"/*.txt "$OUT"/*.log; do echo "== $f"; tail -n 8 "$f"; done
exit 0
