"""Export benchmark: a base-size backbone (random weights) truncated at several layers, four ways to run it.

For each layer L it builds the probe pipeline (HuBERT-base geometry: 768 wide, 12 layers, 512-channel CNN; random
weights saved with save_pretrained and loaded through the normal loader), exports it, quantizes it twice, and
prints audio-seconds per second (x real time) on this CPU for:

* PyTorch eager (``ProbePipeline.predict``), * onnxruntime fp32, * int8 dynamic (MatMul only),
* int8 static (QDQ, Conv + MatMul, calibrated on a few synthetic calls),

plus each graph's file size and the max |Δprobability| of the int8 graphs against fp32 on the timed clips. Random
weights say nothing about accuracy: the UAR change of quantization is measured with ``vocalprobe validate`` on a
study's graphs. Usage: ``python benchmarks/bench_export.py [--layers 0,3,6,12] [--threads 2]`` (about 5 minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16_000


def calls(n: int, seconds: float, seed: int) -> np.ndarray:
    """``n`` synthetic call-like clips ``[n, samples]``: FM tones with harmonics and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        f0 = rng.uniform(400, 4000)
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(1, 6) * t))) / SR
        out.append(0.5 * np.sin(phase) + 0.2 * np.sin(3 * phase) + 0.05 * rng.standard_normal(t.size))
    return np.asarray(out, dtype=np.float32)


def rate(run, audio_seconds: float, budget: float) -> float:
    """Audio seconds processed per wall second, over at least ``budget`` seconds (after one warm-up run)."""
    run()
    runs, start = 0, time.perf_counter()
    while True:
        run()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return runs * audio_seconds / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="0,3,6,12")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="length of the timed clip")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per cell")
    parser.add_argument("--calibration-clips", type=int, default=8)
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]

    import onnxruntime as ort
    import torch
    import transformers

    from vocalprobe.export.metadata import build_metadata
    from vocalprobe.export.onnx_export import export_pipeline
    from vocalprobe.export.quantize import quantize_dynamic_matmul, quantize_static_qdq
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.pipeline import ProbePipeline
    from vocalprobe.training.probe import MLPProbe

    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)  # the quantizer's own sessions warn about the optional inputs
    clip = calls(1, args.clip_seconds, seed=0)  # [1, samples]
    calibration = calls(args.calibration_clips, 2.0, seed=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformers.HubertModel(transformers.HubertConfig()).save_pretrained(tmp / "hubert-base-random")
        backbone = load_backbone(tmp / "hubert-base-random")
        print(f"backbone: HuBERT-base geometry, random weights ({sum(p.numel() for p in backbone.model.parameters()) / 1e6:.1f} M "
              f"parameters); clip {args.clip_seconds:g} s, batch 1; torch {torch.__version__}, onnxruntime "
              f"{ort.__version__}, {args.threads} threads", flush=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        for layer in layers:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(layer)
                probe = MLPProbe(2 * backbone.dim, 7).eval()
            pipeline = ProbePipeline(backbone.model, probe, layer)
            meta = build_metadata(classes=[f"c{i}" for i in range(7)], sample_rate=SR, sample_duration=4.0,
                                  max_chunk_samples=20 * SR, extra={"layer": str(layer)})
            t0 = time.perf_counter()
            fp32 = export_pipeline(pipeline, tmp / f"L{layer}.onnx", metadata=meta)
            export_s = time.perf_counter() - t0
            dyn = quantize_dynamic_matmul(fp32, tmp / f"L{layer}-int8.onnx")

            class Reader:
                def __init__(self):
                    self.items = iter([{"waveform": c[None]} for c in calibration])

                def get_next(self):
                    return next(self.items, None)

            static = quantize_static_qdq(fp32, tmp / f"L{layer}-int8-static.onnx", Reader())
            x = torch.from_numpy(clip)
            cells = {"eager": rate(lambda: pipeline.predict(x), args.clip_seconds, args.budget)}
            probs = {}
            for name, path in (("fp32", fp32), ("int8", dyn), ("int8-static", static)):
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                cells[name] = rate(lambda: session.run(["probabilities"], {"waveform": clip}), args.clip_seconds,
                                   args.budget)
                probs[name] = session.run(["probabilities"], {"waveform": calls(4, 3.0, seed=2)})[0]
                cells[name + "_mb"] = path.stat().st_size / 1e6
            row = (layer, cells, export_s, float(np.abs(probs["int8"] - probs["fp32"]).max()),
                   float(np.abs(probs["int8-static"] - probs["fp32"]).max()))
            rows.append(row)
            print(f"L={layer:2d}: eager {cells['eager']:5.1f}x  ort fp32 {cells['fp32']:5.1f}x  int8 {cells['int8']:5.1f}x"
                  f"  int8-static {cells['int8-static']:5.1f}x  (export {export_s:.0f} s)", flush=True)
    print("\n| L | eager | ORT fp32 | int8 MatMul | int8 static | MB fp32 / int8 / static | max dp int8 / static |")
    print("|---|---|---|---|---|---|---|")
    for layer, c, _, d_dyn, d_static in rows:
        print(f"| {layer} | {c['eager']:.1f}x | {c['fp32']:.1f}x | {c['int8']:.1f}x | {c['int8-static']:.1f}x | "
              f"{c['fp32_mb']:.0f} / {c['int8_mb']:.0f} / {c['int8-static_mb']:.0f} | {d_dyn:.3f} / {d_static:.3f} |")


if __name__ == "__main__":
    main()
