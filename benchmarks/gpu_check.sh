#!/usr/bin/env bash
# The GPU paths end to end, with figures: study feature extraction on cuda in float32 and bfloat16, an fp32 graph
# under onnxruntime's CUDAExecutionProvider (stream), and stream with 2 Ray GPU actors when there are 2 GPUs.
# Needs a CUDA build of torch and onnxruntime-gpu (pip uninstall -y onnxruntime && pip install onnxruntime-gpu),
# plus `pip install 'vocalprobe[ray]'` for the Ray part. Fails at once, saying why, where there is no GPU.
#
#   bash benchmarks/gpu_check.sh [WORKDIR]
set -euo pipefail
PY=${PYTHON:-python}
WORK=${1:-$(mktemp -d -t vocalprobe-gpu-XXXX)}
mkdir -p "$WORK"

n_gpus=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$n_gpus" -lt 1 ]; then
    echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run this on a GPU machine" >&2
    exit 1
fi
if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    echo "gpu_check: this onnxruntime has no CUDAExecutionProvider: pip uninstall -y onnxruntime && pip install onnxruntime-gpu" >&2
    exit 1
fi
echo "== $n_gpus GPU(s): $("$PY" -c "import torch; print(', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))")"

echo "== study feature extraction on cuda (a random-init HuBERT-base, 64 clips of 5 s): float32 vs bfloat16"
"$PY" - "$WORK" <<'PY'
import sys, time
from pathlib import Path
import numpy as np, soundfile as sf, torch, transformers
from vocalprobe.runtime.core.manifest import ManifestRow, write_manifest
from vocalprobe.training.backbones import Backbone, load_backbone
from vocalprobe.training.extract import extract_features
work = Path(sys.argv[1]); data = work / "clips"; data.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
rows = []
for i in range(64):
    sf.write(data / f"c{i}.wav", (0.1 * rng.standard_normal(80_000)).astype(np.float32), 16_000)
    rows.append(ManifestRow(f"c{i}.wav", f"k{i % 4}", split=("train", "val", "test")[i % 3]))
write_manifest(data / "manifest.csv", rows)
folder = work / "hubert-random"
if not folder.exists():
    torch.manual_seed(0)
    transformers.HubertModel(transformers.HubertConfig()).save_pretrained(folder)
backbone = load_backbone(str(folder), device="cuda")
for dtype in ("float32", "bfloat16"):
    started = time.perf_counter()
    fs = extract_features(data / "manifest.csv", backbone, device="cuda", dtype=dtype, progress=False)
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    extra = f"; vs float32: max abs diff {fs.precision['max_abs_diff']:.3g}" if fs.precision else ""
    print(f"  {dtype}: {fs.stats['audio_seconds'] / wall:.0f}x real time ({len(fs.rows)} clips in {wall:.1f} s){extra}")
PY

echo "== an fp32 graph under CUDAExecutionProvider (stream, 4 files of 60 s)"
"$PY" - "$WORK" <<'PY'
import sys, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_stream import stand_in
from bench_scale import make_folder
from vocalprobe.runtime.field.onnx_model import OnnxModel
from vocalprobe.runtime.field.stream import DetectConfig, Outputs, run_sources
from vocalprobe.runtime.field.sources import collect_files
from vocalprobe.runtime.field.windows import WindowPlan
work = Path(sys.argv[1])
graph = stand_in(3, work)
folder = make_folder(work / "rec", 4, 60.0)
for provider in ("cuda", "cpu"):
    model = OnnxModel(graph, provider=provider)
    config = DetectConfig(WindowPlan.from_seconds(1.0, None, 16_000), batch=32)
    started = time.perf_counter()
    summary = run_sources(collect_files([folder]), model, config, Outputs(work / f"out-{provider}", ("csv",), 8000))
    wall = time.perf_counter() - started
    print(f"  {provider}: providers in use {', '.join(model.providers)}: {summary.audio_seconds / wall:.0f}x real time")
PY

if [ "$n_gpus" -ge 2 ]; then
    echo "== stream with 2 Ray GPU actors"
    "$PY" -m vocalprobe stream "$WORK/rec" -m "$WORK/hubert-base-random-L3.onnx" -o "$WORK/out-ray" \
        --engine ray --num-gpus 1 --concurrency 2 --provider cuda --batch 32 --format csv 2>&1 | grep -E "providers|done:"
else
    echo "== stream with 2 Ray GPU actors: skipped (1 GPU)"
fi
