"""How much does streaming add on top of the model? Prints, per model (and for their fusion):

- the graph alone: x real time and per-window latency (``vocalprobe.runtime.field.bench.bench_model``);
- the whole pipeline on a synthetic 48 kHz 16-bit WAV (read, resample, window, batch, model, detections, Raven +
  CSV + JSONL writers): x real time, and the time outside the model as a share of the model time (target < 10 %).

    python benchmarks/bench_stream.py                       # a small test graph (overhead dominates: a floor)
    python benchmarks/bench_stream.py A.onnx B.onnx C.onnx --fuse
    python benchmarks/bench_stream.py --stand-in 3 --stand-in 12   # needs torch + transformers
    python benchmarks/bench_stream.py --stand-in 3 --quantize int8-conv   # the stand-in, quantized as export does

``--stand-in L`` exports a *randomly initialised* HuBERT-base truncated after layer L with vocalprobe's exporter and
a random probe: exactly the graph `vocalprobe export` writes for a base model at layer L, for timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from vocalprobe.runtime.field.bench import bench_model, bench_stream
from vocalprobe.runtime.engine.ensemble import Ensemble
from vocalprobe.runtime.engine.onnx_model import OnnxModel

HERE = Path(__file__).resolve().parent


def small_graph(folder: Path) -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from runtime_graphs import build_band_graph

    return build_band_graph(folder / "band.onnx")


def stand_in(layer: int, folder: Path, n_classes: int = 7) -> Path:
    """A random-init HuBERT-base cut after ``layer``, exported by vocalprobe's own exporter (the deployed graph:
    preprocessing, truncated backbone, mean+std pooling, z-score, MLP probe, softmax, optional state inputs)."""
    import torch
    import transformers

    from vocalprobe.export.metadata import build_metadata
    from vocalprobe.export.onnx_export import export_pipeline
    from vocalprobe.training.deployable import ProbePipeline
    from vocalprobe.training.probe import MLPProbe

    path = folder / f"hubert-base-random-L{layer}.onnx"
    if path.exists():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer)
        backbone = transformers.HubertModel(transformers.HubertConfig()).eval()
        probe = MLPProbe(2 * backbone.config.hidden_size, n_classes).eval()
    pipeline = ProbePipeline(backbone, probe, layer)
    meta = build_metadata(classes=[f"call{i}" for i in range(n_classes)], sample_rate=16_000, sample_duration=1.0,
                          max_chunk_samples=20 * 16_000,
                          extra={"backbone": "random-init hubert-base (benchmark)", "layer": str(layer)})
    with torch.no_grad():
        export_pipeline(pipeline, path, metadata=meta)
    return path


def quantized(path: Path, mode: str) -> Path:
    """``path`` quantized as ``vocalprobe export --quantize mode`` does (cached next to it)."""
    from vocalprobe.export import quantize as q

    out = path.with_name(f"{path.stem}.{mode}.onnx")
    if not out.exists():
        {"int8": q.quantize_dynamic_matmul, "int8-conv": q.quantize_int8_conv}[mode](path, out)
    return out


def report(model, args) -> None:
    window = args.window if args.window is not None else model.sample_duration
    alone = bench_model(model, window_s=window, batch=args.batch, seconds=args.seconds)
    streamed = bench_stream(model, window_s=window, batch=args.batch, seconds=args.seconds)
    memory = f"{alone.peak_rss_mb:.0f} MB" if alone.peak_rss_mb is not None else "n/a"
    print(f"{model.name}\n  graph alone : {alone.x_realtime:8.1f}x real time, window {window:g} s latency "
          f"{alone.latency_ms_median:.1f} ms (p95 {alone.latency_ms_p95:.1f}), peak RSS so far {memory}\n"
          f"  streaming   : {streamed.x_realtime:8.1f}x real time; model {streamed.model_seconds:.2f} s, pipeline "
          f"{streamed.wall_seconds:.2f} s -> overhead {streamed.overhead * 100:.1f}% of model time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, help="exported .onnx graphs")
    parser.add_argument("--stand-in", type=int, action="append", default=[], metavar="L",
                        help="also time a random-init HuBERT-base truncated at layer L (torch needed)")
    parser.add_argument("--quantize", choices=("none", "int8", "int8-conv"), default="none",
                        help="quantize the stand-ins as `vocalprobe export --quantize` does")
    parser.add_argument("--fuse", action="store_true", help="also time the fusion of all the models")
    parser.add_argument("--fuse-copies", type=int, default=0, metavar="N",
                        help="time an N-member fusion of each model with itself (the cost of N models)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of synthetic audio per measurement")
    parser.add_argument("--window", type=float, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vocalprobe-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    stand_ins = [stand_in(layer, args.cache) for layer in args.stand_in]
    if args.quantize != "none":
        stand_ins = [quantized(path, args.quantize) for path in stand_ins]
    paths = list(args.models) + stand_ins
    if not paths:
        paths = [small_graph(args.cache)]
    models = [OnnxModel(p, threads=args.threads) for p in paths]
    print(f"providers: {', '.join(models[0].providers)}; threads {args.threads or 'default'}; batch {args.batch}; "
          f"{args.seconds:g} s of audio per measurement; numpy {np.__version__}")
    for model in models:
        report(model, args)
        if args.fuse_copies > 1:
            copies = [model] + [OnnxModel(model.path, threads=args.threads) for _ in range(args.fuse_copies - 1)]
            report(Ensemble(copies), args)
    if args.fuse and len(models) > 1:
        report(Ensemble(models), args)


if __name__ == "__main__":
    main()
