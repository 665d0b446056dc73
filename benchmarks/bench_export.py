"""Export benchmark: a base-size backbone (random weights) truncated at several layers, several ways to run it.

For each layer L it builds the probe pipeline (HuBERT-base geometry: 768 wide, 12 layers, 512-channel CNN; random
weights saved with save_pretrained and loaded through the normal loader), exports it, quantizes it, and prints
audio-seconds per second (x real time) on this CPU for the chosen ``--variants``:

* ``eager``: PyTorch (``ProbePipeline.predict``), * ``fp32``: onnxruntime fp32,
* ``int8``: dynamic int8, MatMul only (``--quantize int8``),
* ``int8-static``: ``static_qdq.DEFAULT_STATIC_RECIPE`` (what was ``--quantize int8-static``; the static recipes
  live in static_qdq.py): static QDQ of every Conv but the input conv, dynamic int8 MatMul, fp32 head,
* ``static-all``: static QDQ of every Conv and MatMul (the first recipe: the input conv quantized too),
* ``static-qdq-matmul``: as ``int8-static`` but the MatMuls static QDQ too,
* ``static-conv1`` / ``static-conv12`` / ``static-conv123`` / ``static-conv456``: as ``int8-static`` but only those
  CNN conv layers static (``cnn_layers``; 1 and 2 are the stride-2 convs after the input conv, at 1600 and 800
  frames/s, most of the CNN's FLOPs), the other convs (positional conv included) fp32,
* ``static-a16``: as ``int8-static`` with 16-bit activations (A16W8, ``activations="uint16"``),

calibrated on a few synthetic calls. Each cell is timed ``--rounds`` times, interleaved with the other variants, and
the best round is reported (on shared cores the best round is the least disturbed one).

Accuracy proxies of each graph against ORT fp32 (random weights say nothing about real accuracy; the UAR change is
measured with ``vocalprobe validate`` on a study's graphs): max |Δprobability| of a random probe, and the error of the
pooled embedding relative to its between-clip standard deviation over ``--accuracy-clips`` different synthetic calls
(median and 95th percentile over clips x features; a probe z-scores its features by such a spread, so ~0.1 already
moves decisions). Usage: ``python benchmarks/bench_export.py [--layers 0,3,6,12] [--variants ...] [--threads 2]``
(about 5 minutes on 2 cores with the defaults).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import rate

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


_PARTIAL = {"static-conv1": (1,), "static-conv12": (1, 2), "static-conv123": (1, 2, 3), "static-conv456": (4, 5, 6)}
VARIANTS = ("eager", "fp32", "int8", "int8-conv", "int8-static", "static-all", "static-qdq-matmul", *_PARTIAL,
            "static-a16")


def static_recipes():
    from static_qdq import DEFAULT_STATIC_RECIPE, StaticRecipe

    return {"int8-static": DEFAULT_STATIC_RECIPE,
            "static-all": StaticRecipe(matmul="static", fp32_input_conv=False, fp32_head=False),
            "static-qdq-matmul": DEFAULT_STATIC_RECIPE.with_(matmul="static"),
            **{name: DEFAULT_STATIC_RECIPE.with_(cnn_layers=layers, fp32_positional_conv=True)
               for name, layers in _PARTIAL.items()},
            "static-a16": DEFAULT_STATIC_RECIPE.with_(activations="uint16")}


def main() -> None:
    # torch's OpenMP workers busy-wait after each op by default; in this one process they then compete with
    # onnxruntime's threads (int8-conv measured 35x instead of 43x at L=3). Deployed graphs run without torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="0,3,6,12")
    parser.add_argument("--variants", default="eager,fp32,int8,int8-conv,int8-static",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="length of the timed clip")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per cell and round")
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds per cell (best reported)")
    parser.add_argument("--calibration-clips", type=int, default=8)
    parser.add_argument("--accuracy-clips", type=int, default=16)
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    import onnxruntime as ort
    import torch
    import transformers

    from vocalprobe.export.metadata import build_metadata
    from vocalprobe.export.onnx_export import export_pipeline
    from static_qdq import quantize_static_qdq

    from vocalprobe.export.quantize import quantize_dynamic_matmul, quantize_int8_conv
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.deployable import ProbePipeline
    from vocalprobe.training.probe import MLPProbe

    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)  # the quantizer's own sessions warn about the optional inputs
    clip = calls(1, args.clip_seconds, seed=0)  # [1, samples]
    calibration = calls(args.calibration_clips, 2.0, seed=1)
    probe_clips = calls(4, 3.0, seed=2)
    accuracy_clips = calls(args.accuracy_clips, 2.0, seed=3)
    recipes = static_recipes()
    graphs = [v for v in variants if v != "eager"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformers.HubertModel(transformers.HubertConfig()).save_pretrained(tmp / "hubert-base-random")
        backbone = load_backbone(tmp / "hubert-base-random")
        parameters = sum(p.numel() for p in backbone.model.parameters())
        print(f"backbone: HuBERT-base geometry, random weights ({parameters / 1e6:.1f} M "
              f"parameters); clip {args.clip_seconds:g} s, batch 1; torch {torch.__version__}, onnxruntime "
              f"{ort.__version__}, {args.threads} threads, best of {args.rounds} round(s)", flush=True)
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
            paths = {"fp32": fp32}
            for name in graphs:
                if name == "int8":
                    paths[name] = quantize_dynamic_matmul(fp32, tmp / f"L{layer}-int8.onnx")
                elif name == "int8-conv":
                    paths[name] = quantize_int8_conv(fp32, tmp / f"L{layer}-int8-conv.onnx")
                elif name in recipes:
                    class Reader:
                        def __init__(self):
                            self.items = iter([{"waveform": c[None]} for c in calibration])

                        def get_next(self):
                            return next(self.items, None)

                    paths[name] = quantize_static_qdq(fp32, tmp / f"L{layer}-{name}.onnx", Reader(), recipes[name])
            sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                        for name, path in paths.items()}
            x = torch.from_numpy(clip)
            runs = {name: (lambda s=session: s.run(["probabilities"], {"waveform": clip}))
                    for name, session in sessions.items()}
            runs["eager"] = lambda: pipeline.predict(x)
            cells: dict[str, float] = {}
            for _ in range(args.rounds):
                for name in variants:
                    cells[name] = max(cells.get(name, 0.0), rate(runs[name], args.clip_seconds, args.budget))
            probs, embeddings = {}, {}
            for name, session in sessions.items():
                probs[name] = session.run(["probabilities"], {"waveform": probe_clips})[0]
                embeddings[name] = np.concatenate([session.run(["embedding"], {"waveform": c[None]})[0]
                                                   for c in accuracy_clips])
            spread = embeddings["fp32"].std(axis=0) + 1e-12
            accuracy = {}
            for name in graphs:
                if name == "fp32":
                    continue
                rel = np.abs(embeddings[name] - embeddings["fp32"]) / spread
                accuracy[name] = (float(np.abs(probs[name] - probs["fp32"]).max()), float(np.median(rel)),
                                  float(np.percentile(rel, 95)), paths[name].stat().st_size / 1e6)
            rows.append((layer, cells, accuracy, paths["fp32"].stat().st_size / 1e6))
            print(f"L={layer:2d}: " + "  ".join(f"{name} {cells[name]:5.1f}x" for name in variants)
                  + f"  (export {export_s:.0f} s)", flush=True)
    print("\n| L | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for layer, cells, _, _ in rows:
        print(f"| {layer} | " + " | ".join(f"{cells[name]:.1f}x" for name in variants) + " |")
    print("\n| L | graph | MB | max dp | emb err / spread: median | p95 |")
    print("|---|---|---|---|---|---|")
    for layer, _, accuracy, fp32_mb in rows:
        print(f"| {layer} | fp32 | {fp32_mb:.0f} | - | - | - |")
        for name, (dp, med, p95, mb) in accuracy.items():
            print(f"| {layer} | {name} | {mb:.0f} | {dp:.3f} | {med:.3f} | {p95:.3f} |")


if __name__ == "__main__":
    main()
