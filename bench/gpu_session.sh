#!/usr/bin/env bash
# One lent-GPU session: CUDA tests, then the demo trained on the GPU (bf16 autocast) with its held-out numbers.
# Run from the repo root on the device machine (the device tool's `run`, carrying .whl with transformers 5.24).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_prefix_sharing.py 2>&1 | tail -5
python3 -m train.run --out "$OUT/demo-gpu" --eval-pairs 256 2>&1 | tr '\r' '\n' | grep -v '^train: .*[0-9]%|' | tail -15
rm -f "$OUT/demo-gpu/optimizer.safetensors"
