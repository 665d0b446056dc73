"""Re-thresholding from stored scores against streaming again: one long recording through `stream --scores`, then
`rethreshold` with another --min-conf, and `stream` with that --min-conf for comparison.

    python benchmarks/bench_rethreshold.py                      # 6 h of 16 kHz noise, 1 s windows, hop 0.5 s
    python benchmarks/bench_rethreshold.py --hours 24 --model my.onnx

Prints the wall time of each, the scores table's size, and whether rethreshold's tables are stream's, byte for byte.
Without ``--model`` the band-energy test graph (``tests/runtime_graphs.py``, needs onnx) stands in: a real model makes
streaming slower and leaves rethreshold's time unchanged. The audio is generated under ``build/`` and removed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and ".scores." not in p.name and
            not p.name.startswith("scores.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--hop", type=float, default=0.5)
    args = parser.parse_args()

    from vocalprobe.runtime.core.detections.scores import score_classes
    from vocalprobe.runtime.field.rethreshold import Rethreshold, rethreshold
    from vocalprobe.runtime.field.run import StreamJob, run_stream

    (ROOT / "build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-rethreshold-", dir=ROOT / "build"))
    try:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from runtime_graphs import build_band_graph

            model = build_band_graph(work / "band.onnx")
        audio = work / "long.wav"
        rng = np.random.default_rng(1)
        with sf.SoundFile(audio, "w", 16_000, 1, subtype="PCM_16") as handle:
            for _ in range(int(round(args.hours * 60))):
                handle.write((0.05 * rng.standard_normal(60 * 16_000)).astype(np.float32))
        common = dict(models=(model,), inputs=(str(audio),), hop_s=args.hop, formats=("raven", "csv", "jsonl"))
        started = time.perf_counter()
        run_stream(StreamJob(out=work / "scored", scores=True, min_conf=0.5, **common))
        streamed_s = time.perf_counter() - started
        table = next((work / "scored").glob("long.scores.*"))
        started = time.perf_counter()
        summary = rethreshold(work / "scored", work / "again", Rethreshold(min_conf=0.35))
        again_s = time.perf_counter() - started
        started = time.perf_counter()
        run_stream(StreamJob(out=work / "direct", min_conf=0.35, **common))
        direct_s = time.perf_counter() - started
        same = tree(work / "again") == tree(work / "direct")
        classes = score_classes(table)
        print(f"{args.hours:g} h, {summary.windows} windows x {len(classes)} classes; scores table {table.name}: "
              f"{table.stat().st_size / 2 ** 20:.1f} MiB")
        print(f"stream --scores: {streamed_s:.1f} s; rethreshold --min-conf 0.35: {again_s:.2f} s "
              f"({summary.detections} detections); stream --min-conf 0.35: {direct_s:.1f} s; "
              f"tables byte-identical: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
