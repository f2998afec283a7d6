#!/usr/bin/env bash
# GPU check: a paper-scale LeADER step (Swin-B student, two ResNet-50-sized teachers, stage 2, bf16)
# on one GPU; prints images/s, peak memory and model FLOP utilisation. Finishes in < 5 minutes.
#
#   benchmarks/gpu_check.sh                     # defaults: batch 64 pairs, 12 timed steps
#   benchmarks/gpu_check.sh --compile           # with torch.compile
#   NPROC=8 benchmarks/gpu_check.sh             # the same with DDP on 8 GPUs (torchrun)
#
# Extra arguments go to benchmarks/bench_gpu_step.py. Results are also written to gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
if [ "${NPROC:-1}" -gt 1 ]; then
  timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" benchmarks/bench_gpu_step.py --json gpu_check.json "$@"
else
  timeout 300 "$PY" benchmarks/bench_gpu_step.py --json gpu_check.json "$@"
fi
