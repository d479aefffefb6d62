#!/usr/bin/env bash
# One short GPU check, for when a CUDA machine is lent (the `device` tool): Pythia-70m's shape in bfloat16,
# CUDA against CPU sketches of the same rows (lowest cosine ≥ 0.99), tokens/s against a plain forward+backward,
# the Newton step's costs (solver fit, a query's solve, seconds per candidate row; plain and EK-FAC-preconditioned),
# then the tests marked `gpu`. Run from the repository root after `make install`:
#
#     bash bench/gpu_check.sh            # ~2-4 min on one GPU
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1
"$BIN/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$BIN/python" -m bench.pythia_shape --shapes 14m,70m --rows 8 --token-batch-size 32768 --device cuda \
    --dtype bfloat16 --compare-cpu --newton
"$BIN/python" -m bench.pythia_shape --shapes 70m --rows 8 --device cuda --dtype float32 --newton --factoring ekfac
"$BIN/python" -m pytest -q -m gpu tests
