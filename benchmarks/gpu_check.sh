#!/usr/bin/env bash
# The GPU paths end to end, with figures (benchmarks/gpu_check.py --device cuda; its docstring lists the sections and
# how long each takes: ~8 min on one H100): study feature extraction on cuda in float32 and bfloat16, an fp32 graph
# under onnxruntime's CUDAExecutionProvider vs the CPU one (stream), the batched probes on cuda (issue 23), a study
# through the CLI on cuda, and stream with 2 Ray GPU actors when there are 2 GPUs.
# Needs a CUDA build of torch; the onnxruntime parts need onnxruntime-gpu (pip uninstall -y onnxruntime && pip install
# onnxruntime-gpu; without it they are skipped, saying so) and the Ray part `pip install 'vocalprobe[ray]'`.
# Fails at once, saying why, where there is no GPU.
#
#   bash benchmarks/gpu_check.sh [WORKDIR] [--quick]
set -euo pipefail
PY=${PYTHON:-python}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then WORK=$1; shift; else WORK=$(mktemp -d -t vocalprobe-gpu-XXXX); fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cd "$(dirname "$0")/.."

n_gpus=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$n_gpus" -lt 1 ]; then
    echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run this on a GPU machine" >&2
    exit 1
fi
# an onnxruntime without CUDAExecutionProvider: gpu_check.py runs the torch sections and says what it skipped
exec "$PY" benchmarks/gpu_check.py --device cuda --workdir "$WORK" "$@"
