"""Soak: a season of short recordings and one very long one through `stream`, with the journal and every table.

    python benchmarks/bench_soak.py                                # 20,000 files of 0.5 s and a 24 h file
    python benchmarks/bench_soak.py --files 2000 --hours 2         # a smaller run
    python benchmarks/bench_soak.py --model my.onnx --formats raven,csv,jsonl,parquet

The audio is generated (noise at ``--rate``) in a temporary folder under ``build/`` and removed afterwards. Each
phase runs in its own process, so its peak RSS is its own, and prints:
- per-file overhead: wall time per file outside the model's ``predict`` calls (reading, resampling, windowing, the
  journal, the tables);
- disk bytes written, from ``/proc/self/io`` (``write_bytes``: what reached the storage layer, journal and tables);
- peak RSS (``ru_maxrss``).
``--min-conf 0`` (the default) makes the long file dense: every window reports every class, the worst case for
memory. Without ``--model`` the band-energy test graph (``tests/runtime_graphs.py``, needs onnx) stands in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from measure import write_bytes

ROOT = Path(__file__).resolve().parents[1]


class TimedModel:
    """The model, with the seconds spent in ``predict`` counted (to tell the stream's own cost from the model's)."""

    def __init__(self, model):
        self.model = model
        self.predict_s = 0.0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, batch):
        started = time.perf_counter()
        try:
            return self.model.predict(batch)
        finally:
            self.predict_s += time.perf_counter() - started


def make_short_files(folder: Path, n: int, seconds: float, rate: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"site{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        samples = (0.05 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
        sf.write(sub / f"2021{(i // 1440) % 12 + 1:02d}01_{i % 24:02d}{i % 60:02d}{i % 7:02d}_{i}.wav", samples, rate,
                 subtype="PCM_16")


def make_long_file(path: Path, hours: float, rate: int) -> None:
    rng = np.random.default_rng(1)
    minutes = int(round(hours * 60))
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as handle:
        for _ in range(minutes):
            handle.write((0.05 * rng.standard_normal(60 * rate)).astype(np.float32))


def phase(args: argparse.Namespace) -> None:
    """One phase in this process: stream ``args.input`` into ``args.out`` as `vocalprobe stream` does."""
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.outputs import Outputs
    from vocalprobe.runtime.field.run_state import RunState
    from vocalprobe.runtime.engine.sources import collect_files
    from vocalprobe.runtime.field.stream import DetectConfig, output_options, run_settings, run_sources
    from vocalprobe.runtime.engine.windows import WindowPlan
    from vocalprobe.runtime.core.detections.tables import parse_formats

    formats = parse_formats(args.formats)
    model = TimedModel(OnnxModel(args.model, threads=args.threads))
    plan = WindowPlan.from_seconds(args.window or model.sample_duration, args.hop, model.sample_rate)
    config = DetectConfig(plan, batch=args.batch, min_conf=args.min_conf)
    files = collect_files([args.input])
    bytes_before, started = write_bytes(), time.perf_counter()
    with Outputs(args.out, formats, model.sample_rate / 2) as outputs, \
            RunState(args.out, run_settings(model.model, config), output_options(config, formats)) as state:
        summary = run_sources(state.todo(files), model, config, outputs, state)
    wall = time.perf_counter() - started
    bytes_after = write_bytes()
    disk = bytes_after - bytes_before if bytes_before is not None else None
    print(json.dumps({"files": len(summary.done), "failed": len(summary.failed), "detections": summary.detections,
                      "audio_s": summary.audio_seconds, "wall_s": wall, "predict_s": model.predict_s,
                      "disk_bytes": disk, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_phase(label: str, input_path: Path, out: Path, args: argparse.Namespace) -> None:
    command = [sys.executable, __file__, "--phase", "--input", str(input_path), "--out", str(out),
               "--model", str(args.model), "--formats", args.formats, "--min-conf", str(args.min_conf),
               "--batch", str(args.batch), "--threads", str(args.threads)]
    command += ["--hop", str(args.hop)] if args.hop is not None else []
    command += ["--window", str(args.window)] if args.window is not None else []
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{label}: failed\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    n = max(r["files"], 1)
    overhead_ms = (r["wall_s"] - r["predict_s"]) / n * 1e3
    disk = f"{r['disk_bytes'] / n / 1024:.1f} KiB/file ({r['disk_bytes'] / 1e6:.0f} MB)" if r["disk_bytes"] else "n/a"
    print(f"{label}: {r['files']:,} file(s), {r['audio_s'] / 3600:.2f} h audio, {r['detections']:,} detections; "
          f"wall {r['wall_s']:.1f} s ({r['predict_s']:.1f} s in the model); overhead {overhead_ms:.2f} ms per file; "
          f"disk written {disk}; peak RSS {r['peak_rss_kb'] / 1024:.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="Short recordings (0 skips the phase).")
    parser.add_argument("--file-seconds", type=float, default=0.5, help="Length of each short recording.")
    parser.add_argument("--hours", type=float, default=24.0, help="Length of the long recording (0 skips it).")
    parser.add_argument("--rate", type=int, default=8_000, help="Sample rate of the generated audio.")
    parser.add_argument("--model", type=Path, default=None, help="ONNX graph (default: the band-energy test graph).")
    parser.add_argument("--formats", default="raven,csv,jsonl")
    parser.add_argument("--window", type=float, default=None, help="Seconds (default: the model's).")
    parser.add_argument("--hop", type=float, default=0.5, help="Seconds between windows.")
    parser.add_argument("--min-conf", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=ROOT / "build", help="Where the temporary folder goes.")
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="soak-", dir=args.dir))
    try:
        if args.model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from runtime_graphs import build_band_graph

            args.model = build_band_graph(root / "band.onnx")
        print(f"soak in {root}: {args.files:,} files of {args.file_seconds:g} s and a {args.hours:g} h file at "
              f"{args.rate} Hz; formats {args.formats}, hop {args.hop} s, min-conf {args.min_conf:g}", flush=True)
        if args.files:
            started = time.perf_counter()
            make_short_files(root / "short", args.files, args.file_seconds, args.rate)
            print(f"  generated the short files in {time.perf_counter() - started:.0f} s", flush=True)
            run_phase("short files", root / "short", root / "out-short", args)
        if args.hours:
            started = time.perf_counter()
            make_long_file(root / "long.wav", args.hours, args.rate)
            print(f"  generated the long file in {time.perf_counter() - started:.0f} s", flush=True)
            run_phase(f"{args.hours:g} h file", root / "long.wav", root / "out-long", args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()
