"""Measured speed of every layer of a finished study: the x real time beside ``cost.csv``'s arithmetic.

For each (dataset, backbone, layer) of the study it exports the layer's probe as the fp32 graph ``vocalprobe export``
writes (``export_from_study``, parity check off: the export tests check parity), then times onnxruntime on
``--seconds`` of synthetic call audio cut into ``--window`` s windows, one window per call as a stream feeds them,
with ``--threads`` intra-op threads, over at least ``--budget`` wall seconds after a warm-up (``measure.rate``). It
writes ``frontier_speed.csv`` into the study folder and rewrites the study's report, whose "Cost beside accuracy"
section then shows the measured x real time beside the GMACs per audio second.

Run it from the folder the study ran in (the study's manifest paths are relative to it), e.g. after ``vocalprobe
study`` (the demo): ``python benchmarks/bench_frontier.py artifacts/studies/default``. Figures: docs/frontier.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import rate

SR = 16_000


def calls(seconds: float, seed: int = 0) -> np.ndarray:
    """Synthetic call-like audio (FM tone with a harmonic and noise), ``seconds`` long, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(1500 * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))) / SR
    return (0.5 * np.sin(phase) + 0.2 * np.sin(3 * phase) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per timed run")
    parser.add_argument("--window", type=float, default=1.0, help="window length in seconds (one per call)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=3.0, help="minimum timed wall seconds per layer")
    parser.add_argument("--dataset", default=None, help="only this dataset (default: every dataset)")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from vocalprobe.export.onnx_export import export_from_study
    from vocalprobe.runtime.core.atomic import atomic_write_text
    from vocalprobe.runtime.core.graph_contract import WAVEFORM
    from vocalprobe.training.study.frontier import SPEED_COLUMNS, SPEED_FILE, layer_costs
    from vocalprobe.training.study.report import write_report
    from vocalprobe.training.study.results import load_summary

    torch.set_num_threads(args.threads)
    summary = load_summary(args.study_dir)
    costs = {(r.dataset, r.backbone, r.layer): r.macs_per_s for r in layer_costs(args.study_dir, summary)}
    window = int(round(args.window * SR))
    audio = calls(args.seconds)
    windows = [audio[i:i + window][None] for i in range(0, audio.size - window + 1, window)]  # [1, window] each
    audio_seconds = len(windows) * args.window
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3

    rows = []
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {len(windows)} windows of {args.window:g} s, "
          f"{os.cpu_count()} CPUs")
    print(f"{'dataset':<12} {'backbone':<14} {'layer':>5} {'GMACs/s':>9} {'x real time':>12} {'export s':>9}")
    with tempfile.TemporaryDirectory(prefix="bench-frontier-") as tmp:
        for choice in summary.choices:
            if args.dataset is not None and choice.dataset != args.dataset:
                continue
            for layer in choice.layers:
                path = Path(tmp) / f"{choice.backbone}_L{layer}.onnx"
                start = time.perf_counter()
                export_from_study(args.study_dir, path, dataset=choice.dataset, backbone=choice.backbone,
                                  layer=str(layer), parity=False)
                exported = time.perf_counter() - start
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

                def run(session=session):
                    for x in windows:
                        session.run(None, {WAVEFORM: x})

                x_rt = rate(run, audio_seconds, args.budget)
                wall = audio_seconds / x_rt
                rows.append((choice.dataset, choice.backbone, layer, args.window, args.threads, audio_seconds,
                             f"{wall:.6f}", f"{x_rt:.3f}"))
                cost = costs.get((choice.dataset, choice.backbone, layer))
                shown = "" if cost is None else f"{cost / 1e9:.3f}"
                print(f"{choice.dataset:<12} {choice.backbone:<14} {layer:>5} {shown:>9} {x_rt:>12.1f} "
                      f"{exported:>9.1f}", flush=True)
                path.unlink()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SPEED_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(args.study_dir / SPEED_FILE, buffer.getvalue())
    report = write_report(args.study_dir, summary)
    print(f"wrote {args.study_dir / SPEED_FILE}; report rewritten: {report}", file=sys.stderr)


if __name__ == "__main__":
    main()
