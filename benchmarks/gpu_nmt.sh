#!/usr/bin/env bash
# GPU check of the NMT baseline (notebook 10) at the `paper` profile, capped to ~3 minutes:
# trains the 2x512 attention LSTM for MAX_EPOCHS epochs on all of Multi30k En->De, then prints
# validation/test perplexity, test BLEU (beam 5, sacrebleu signature), seconds per epoch and
# the wall time.  The full paper baseline trains up to 20 epochs (early stopping); multiply the
# seconds per epoch printed here to estimate it.
#
#   PRUNELAB_MULTI30K=/path/to/multi30k bash benchmarks/gpu_nmt.sh        # on the GPU machine
#   PROFILE=smoke bash benchmarks/gpu_nmt.sh                               # CPU self-test, seconds
#
# Environment: PROFILE (paper), MAX_EPOCHS (5), AMP (0; 1 = bf16 autocast on CUDA),
# PRUNELAB_MULTI30K (the data folder; default ../shared/data/multi30k), PRUNELAB_RUNS (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-paper}
MAX_EPOCHS=${MAX_EPOCHS:-5}
AMP=${AMP:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PRUNELAB_MULTI30K=${PRUNELAB_MULTI30K:-$(cd .. && pwd)/shared/data/multi30k}
export PRUNELAB_RUNS=${PRUNELAB_RUNS:-$(mktemp -d /tmp/prunelab-gpu-nmt.XXXXXX)}
export MPLBACKEND=Agg
[ -f "$PRUNELAB_MULTI30K/SHA256SUMS" ] || { echo "no Multi30k at $PRUNELAB_MULTI30K: set PRUNELAB_MULTI30K" >&2; exit 2; }
[ -x .venv/bin/python ] && . .venv/bin/activate

python - <<'PY'
import torch
print(f"torch {torch.__version__}; cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""), flush=True)
PY
AMP_FLAG=$([ "$AMP" = 1 ] && echo true || echo false)
start=$(date +%s.%N)
python -m prunelab.cli run 10_nmt_baseline --profile "$PROFILE" --quiet --force \
  -p max_epochs="$MAX_EPOCHS" -p amp="$AMP_FLAG" -p device=auto
end=$(date +%s.%N)

python - "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
from prunelab import results
run = sorted((results.runs_root() / "10_nmt_baseline").glob("*/complete.json"), key=lambda p: p.stat().st_mtime)[-1].parent
params = json.loads((run / "params.json").read_text())
env = json.loads((run / "env.json").read_text())
scores = pd.read_csv(run / "tables" / "scores.csv").set_index("metric").value
history = pd.read_csv(run / "tables" / "history.csv")
signature = pd.read_csv(run / "tables" / "bleu_signature.csv").signature[0]
epoch_s = history[history.epoch > 0].seconds
print(f"\n== NMT baseline, profile {params['profile']}, device {env['device']}, "
      f"{params['layers']}x{params['hidden']}, epochs run {len(epoch_s)} (max_epochs {params['max_epochs']}), amp {params['amp']}")
print(history.to_string(index=False))
for k, v in scores.items():
    print(f"{k:>22}: {v:.4g}")
print(f"  seconds/epoch (mean): {epoch_s.mean():.1f}")
print(f"   sacrebleu signature: {signature}")
print(f"  wall time (script): {float(sys.argv[2]) - float(sys.argv[1]):.1f} s; run folder {run}")
PY
