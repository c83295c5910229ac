#!/usr/bin/env bash
# GPU check for the filter-pruning study (issue 5); about 1-2 minutes on an H100/H200.
# Latency of torchvision AlexNet (random init, 224x224) vs 25/50/75%-filter-pruned copies at batch
# 256 on CUDA in fp32 and bf16+channels_last, then the CUDA-marked tests. Nothing is downloaded.
# On a CPU-only machine:  BATCH=4 SIZE=64 bash benchmarks/gpu_cnn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python benchmarks/gpu_cnn.py --batch "${BATCH:-256}" --size "${SIZE:-224}" --repeats "${REPEATS:-20}"
python -m pytest -q -m cuda -p no:nbval tests/test_cnn_cuda.py -o addopts="" || test $? -eq 5
