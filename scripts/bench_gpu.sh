#!/usr/bin/env bash
# The real-scale benchmark in one go: crosslmm-7b-9tok with random bf16 weights on one CUDA GPU,
# 32-256 frames, the paper's Fig. 4 beside ours (docs/efficiency.md, "GPU benchmark at 7B scale").
# Usage: scripts/bench_gpu.sh [DEST] [extra `crosslmm bench speed` options]
# Writes DEST/efficiency_gpu.{json,md,png,log} (DEST default docs). Wheels in .whl/ are installed first
# (a machine whose transformers is older than 5.24); nothing is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-docs}
shift $(($# > 0 ? 1 : 0))
python=${PYTHON:-python3}
if [ -d .whl ]; then
  "$python" -m pip install -q --no-index --find-links .whl "transformers>=5.24,<6"
fi
"$python" -c 'import torch, transformers as t; print("torch", torch.__version__, "transformers", t.__version__,
"cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
mkdir -p "$dest"
PYTHONUNBUFFERED=1 "$python" -m crosslmm.cli bench speed --device cuda --preset crosslmm-7b-9tok \
  --frames 32,64,128,256 --out "$dest" --stem efficiency_gpu "$@" 2>&1 | tee "$dest/efficiency_gpu.log"
