#!/usr/bin/env bash
# The GPU paths end to end, with figures (benchmarks/gpu_check.py --device cuda; its docstring lists the sections and
# how long each takes: ~8 min on one H100): study feature extraction on cuda in float32 and bfloat16, an fp32 graph
# under onnxruntime's CUDAExecutionProvider vs the CPU one (stream), the batched probes on cuda (issue 23), a study
# through the CLI on cuda, and stream with 2 Ray GPU actors when there are 2 GPUs.
# Needs a CUDA build of torch and onnxruntime-gpu (pip uninstall -y onnxruntime && pip install onnxruntime-gpu),
# plus `pip install 'vocalprobe[ray]'` for the Ray part. Fails at once, saying why, where there is no GPU.
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
if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    echo "gpu_check: this onnxruntime has no CUDAExecutionProvider: pip uninstall -y onnxruntime && pip install onnxruntime-gpu" >&2
    exit 1
fi
exec "$PY" benchmarks/gpu_check.py --device cuda --workdir "$WORK" "$@"
